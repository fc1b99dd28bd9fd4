//! Proves the fake Chat server behaves as documented in tests/common/fake_chat.rs, so that
//! tests of kabar built on it test kabar and not the fake. Everything is loopback and bounded
//! in time; the whole file runs in a few seconds.

use crate::common::fake_chat::*;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        // Environment proxies must never see loopback test traffic.
        .no_proxy()
        .timeout(WAIT)
        .build()
        .expect("build reqwest client")
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.text))
    }

    /// The Google error status string, asserting the error body has Google's shape.
    fn error_status(&self) -> String {
        let body = self.json();
        assert_eq!(
            body["error"]["code"].as_u64(),
            Some(u64::from(self.status)),
            "error.code must equal the HTTP status: {body}"
        );
        assert!(body["error"]["message"].is_string(), "no message: {body}");
        body["error"]["status"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.status: {body}"))
            .to_owned()
    }
}

async fn post_raw(url: &str, content_type: &str, body: impl Into<reqwest::Body>) -> Answer {
    let response = client()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST to the fake failed: {e}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = response.status().as_u16();
    let retry_after = header("retry-after");
    let content_type = header("content-type").unwrap_or_default();
    let text = response.text().await.expect("read answer body");
    Answer {
        status,
        retry_after,
        content_type,
        text,
    }
}

async fn post(url: &str, body: &Value) -> Answer {
    post_raw(url, "application/json; charset=UTF-8", body.to_string()).await
}

fn text(s: &str) -> Value {
    json!({ "text": s })
}

fn threaded(url: &str, option: &str) -> String {
    format!("{url}&messageReplyOption={option}")
}

/// A fake with rate limiting off, for tests about something else.
async fn unlimited() -> FakeChat {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    chat
}

#[tokio::test]
async fn accepts_a_message_and_answers_like_chat() {
    let chat = FakeChat::start().await;
    let url = chat.webhook_url("AAA");
    let answer = post(&url, &json!({"text": "hello", "fallbackText": "hi"})).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let body = answer.json();
    let name = body["name"].as_str().expect("name");
    assert!(name.starts_with("spaces/AAA/messages/"), "{name}");
    let thread = body["thread"]["name"].as_str().expect("thread.name");
    assert!(thread.starts_with("spaces/AAA/threads/"), "{thread}");
    assert_eq!(body["space"]["name"], "spaces/AAA");
    assert_eq!(body["text"], "hello");
    assert!(
        body["createTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    let msgs = chat.wait_for_messages("AAA", 1, WAIT).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].name, name);
    assert_eq!(msgs[0].text.as_deref(), Some("hello"));
    assert!(msgs[0].opened_thread);
    assert_eq!(chat.all_messages().len(), 1);
    assert!(chat.messages("other").is_empty());
}

#[tokio::test]
async fn rate_limit_is_one_per_second_per_space_and_429_has_no_retry_after() {
    let chat = FakeChat::start().await;
    let (a, b) = (chat.webhook_url("A"), chat.webhook_url("B"));
    assert_eq!(post(&a, &text("1")).await.status, 200);
    let limited = post(&a, &text("2")).await;
    assert_eq!(limited.status, 429, "{}", limited.text);
    assert_eq!(limited.error_status(), "RESOURCE_EXHAUSTED");
    assert_eq!(limited.retry_after, None);
    // Another space has its own allowance.
    assert_eq!(post(&b, &text("other space")).await.status, 200);

    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(post(&a, &text("2 again")).await.status, 200);

    let msgs = chat.messages("A");
    let texts: Vec<_> = msgs.iter().filter_map(|m| m.text.as_deref()).collect();
    assert_eq!(
        texts,
        ["1", "2 again"],
        "the 429'd message must not be recorded"
    );
    assert!(msgs[1].at.duration_since(msgs[0].at) >= Duration::from_millis(990));
    let statuses: Vec<u16> = chat.requests_for("A").iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 429, 200]);

    // Rejected requests do not spend the allowance: a 400 right after the window opens
    // leaves the next valid message free to pass.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(post(&a, &json!({"bogus": 1})).await.status, 400);
    assert_eq!(post(&a, &text("3")).await.status, 200);
}

#[tokio::test]
async fn rate_limit_can_be_disabled_or_changed() {
    let chat = FakeChat::start().await;
    let url = chat.webhook_url("S");
    chat.set_rate_limit(None);
    for i in 0..5 {
        assert_eq!(post(&url, &text(&format!("burst {i}"))).await.status, 200);
    }
    chat.set_rate_limit(Some(10.0));
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(post(&url, &text("a")).await.status, 200);
    assert_eq!(post(&url, &text("b")).await.status, 429);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(post(&url, &text("c")).await.status, 200);
}

#[tokio::test]
async fn unknown_fields_are_rejected_with_400() {
    let chat = unlimited().await;
    let url = chat.webhook_url("S");
    let answer = post(&url, &json!({"text": "x", "color": "red"})).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.error_status(), "INVALID_ARGUMENT");
    assert!(
        answer
            .text
            .contains(r#"Unknown name \"color\" at 'message': Cannot find field."#),
        "{}",
        answer.text
    );
    let answer = post(
        &url,
        &json!({"text": "x", "thread": {"threadKey": "k", "id": 1}}),
    )
    .await;
    assert_eq!(answer.status, 400, "thread holds only threadKey and name");
    // snake_case is not accepted either: kabar must send the camelCase names.
    assert_eq!(
        post(&url, &json!({"text": "x", "fallback_text": "y"}))
            .await
            .status,
        400
    );
    // Wrong types and non-objects.
    assert_eq!(post(&url, &json!({"text": 5})).await.status, 400);
    assert_eq!(post(&url, &json!(["text"])).await.status, 400);
    assert_eq!(
        post_raw(&url, "application/json", "{not json").await.status,
        400
    );
    // Content type must be JSON (parameters allowed, case-insensitive).
    assert_eq!(
        post_raw(&url, "text/plain", r#"{"text":"x"}"#).await.status,
        400
    );
    assert_eq!(
        post_raw(&url, "Application/JSON;charset=utf-8", r#"{"text":"x"}"#)
            .await
            .status,
        200
    );
    // Unknown query parameters are refused as Google APIs do.
    assert_eq!(post(&format!("{url}&foo=1"), &text("x")).await.status, 400);
    assert_eq!(chat.messages("S").len(), 1);
}

#[tokio::test]
async fn text_limit_counts_characters() {
    let chat = unlimited().await;
    let url = chat.webhook_url("S");
    // 4,096 two-byte characters: 8,192 bytes but within the character limit.
    let at_limit = "é".repeat(TEXT_LIMIT_CHARS);
    assert_eq!(post(&url, &text(&at_limit)).await.status, 200);
    let over = "x".repeat(TEXT_LIMIT_CHARS + 1);
    let answer = post(&url, &text(&over)).await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.text.contains("Maximum length of the field is 4096"),
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn body_limit_is_32000_bytes() {
    let chat = unlimited().await;
    let url = chat.webhook_url("S");
    let card_with_text = |len: usize| {
        json!({"text": "t", "cardsV2": [{"cardId": "c", "card": {"sections": [
            {"widgets": [{"textParagraph": {"text": "y".repeat(len)}}]}
        ]}}]})
    };
    let small = card_with_text(100);
    let overhead = small.to_string().len() - 100;
    let fits = card_with_text(BODY_LIMIT_BYTES - overhead);
    assert_eq!(fits.to_string().len(), BODY_LIMIT_BYTES);
    assert_eq!(post(&url, &fits).await.status, 200);
    let answer = post(&url, &card_with_text(BODY_LIMIT_BYTES - overhead + 1)).await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert_eq!(answer.error_status(), "INVALID_ARGUMENT");
}

#[tokio::test]
async fn empty_messages_and_broken_cards_are_rejected() {
    let chat = unlimited().await;
    let url = chat.webhook_url("S");
    let card = |card: Value| json!({"cardsV2": [{"cardId": "c", "card": card}]});
    let widget = json!({"decoratedText": {"text": "w"}});

    let empty = post(&url, &json!({"fallbackText": "only fallback"})).await;
    assert_eq!(empty.status, 400);
    assert!(
        empty.text.contains("Message cannot be empty"),
        "{}",
        empty.text
    );
    assert_eq!(post(&url, &json!({"text": ""})).await.status, 400);
    assert_eq!(post(&url, &json!({"cardsV2": []})).await.status, 400);

    // Valid card without text.
    let ok = card(json!({"header": {"title": "T"}, "sections": [{"widgets": [widget]}]}));
    assert_eq!(post(&url, &ok).await.status, 200);
    // Header without title, section without widgets, entry without card, widget typos.
    for bad in [
        card(json!({"header": {"subtitle": "s"}, "sections": [{"widgets": [widget]}]})),
        card(json!({"sections": [{"widgets": []}]})),
        card(json!({"sections": [{"header": "h"}]})),
        json!({"cardsV2": [{"cardId": "c"}]}),
        card(json!({"sections": [{"widgets": [{"decoratedtext": {"text": "w"}}]}]})),
        card(json!({"sections": [{"widgets": [{}]}]})),
    ] {
        let answer = post(&url, &bad).await;
        assert_eq!(answer.status, 400, "should reject {bad}: {}", answer.text);
    }
    // Several cards need ids.
    let section = json!({"sections": [{"widgets": [widget]}]});
    let two = json!({"cardsV2": [{"card": section}, {"card": section}]});
    assert_eq!(post(&url, &two).await.status, 400);
    let two_with_ids =
        json!({"cardsV2": [{"cardId": "a", "card": section}, {"cardId": "b", "card": section}]});
    assert_eq!(post(&url, &two_with_ids).await.status, 200);

    // More than 100 widgets is accepted; the surplus is only recorded.
    let many = card(json!({"sections": [
        {"widgets": vec![widget.clone(); 60]},
        {"widgets": vec![widget.clone(); 90]},
    ]}));
    assert_eq!(post(&url, &many).await.status, 200);
    let msgs = chat.messages("S");
    assert_eq!(msgs.last().map(|m| m.ignored_widgets), Some(50));
    assert_eq!(msgs[0].ignored_widgets, 0);
}

#[tokio::test]
async fn thread_keys_reply_or_open_threads() {
    let chat = unlimited().await;
    let url = chat.webhook_url("S");
    let fallback = threaded(&url, "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD");
    let or_fail = threaded(&url, "REPLY_MESSAGE_OR_FAIL");
    let keyed = |key: &str, t: &str| json!({"text": t, "thread": {"threadKey": key}});

    let first = post(&fallback, &keyed("alert-1", "open 1")).await.json();
    let reply = post(&fallback, &keyed("alert-1", "reply 1")).await.json();
    assert_eq!(first["thread"]["name"], reply["thread"]["name"]);
    let other = post(&fallback, &keyed("alert-2", "open 2")).await.json();
    assert_ne!(first["thread"]["name"], other["thread"]["name"]);

    // OR_FAIL: unknown key → 404, known key → reply.
    let missing = post(&or_fail, &keyed("nope", "x")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_status(), "NOT_FOUND");
    let answer = post(&or_fail, &keyed("alert-2", "reply 2")).await.json();
    assert_eq!(answer["thread"]["name"], other["thread"]["name"]);
    // Replying by thread name works too.
    let by_name = json!({"text": "by name", "thread": {"name": first["thread"]["name"]}});
    assert_eq!(
        post(&or_fail, &by_name).await.json()["thread"]["name"],
        first["thread"]["name"]
    );

    // An unknown reply option is a bad request.
    assert_eq!(
        post(&threaded(&url, "REPLY_SOMEHOW"), &keyed("k", "x"))
            .await
            .status,
        400
    );

    let threads = chat.threads("S");
    assert_eq!(threads.len(), 2);
    assert_eq!(threads[0].thread_key.as_deref(), Some("alert-1"));
    let texts =
        |t: &Thread| -> Vec<String> { t.messages.iter().filter_map(|m| m.text.clone()).collect() };
    assert_eq!(texts(&threads[0]), ["open 1", "reply 1", "by name"]);
    assert_eq!(texts(&threads[1]), ["open 2", "reply 2"]);
    assert!(threads[0].messages[0].opened_thread);
    assert!(!threads[0].messages[1].opened_thread);
    assert_eq!(
        threads[0].messages[1].reply_option.as_deref(),
        Some("REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD")
    );

    // Keys are per space.
    let elsewhere = chat.webhook_url("T");
    let answer = post(
        &threaded(&elsewhere, "REPLY_MESSAGE_OR_FAIL"),
        &keyed("alert-1", "x"),
    )
    .await;
    assert_eq!(answer.status, 404);
}

#[tokio::test]
async fn without_reply_option_the_key_is_ignored() {
    let chat = unlimited().await;
    let url = chat.webhook_url("S");
    let keyed = json!({"text": "x", "thread": {"threadKey": "same"}});
    post(&url, &keyed).await;
    post(&url, &keyed).await;
    let msgs = chat.wait_for_messages("S", 2, WAIT).await;
    assert!(msgs.iter().all(|m| m.opened_thread));
    assert!(msgs.iter().all(|m| m.thread_key.as_deref() == Some("same")));
    assert_ne!(msgs[0].thread_name, msgs[1].thread_name);
    let threads = chat.threads("S");
    assert_eq!(threads.len(), 2);
    assert!(threads.iter().all(|t| t.thread_key.is_none()));

    // Those threads never took the key, so a later reply opens a third one.
    let fallback = threaded(&url, "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD");
    post(&fallback, &keyed).await;
    assert_eq!(chat.threads("S").len(), 3);
}

#[tokio::test]
async fn bad_key_is_400_bad_token_is_403_and_no_secret_is_echoed() {
    let chat = unlimited().await;
    let url = chat.webhook_url("S");
    let secrets = chat.secrets();
    assert_eq!(secrets, ["FAKEKEY-S", "FAKETOKEN-S-s3cr3t"]);

    let bad_token = url.replace("s3cr3t", "s3cr3X");
    let answer = post(&bad_token, &text("x")).await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.error_status(), "PERMISSION_DENIED");
    let bad_key = url.replace("FAKEKEY-S", "FAKEKEY-X");
    let answer_key = post(&bad_key, &text("x")).await;
    assert_eq!(answer_key.status, 400);
    assert_eq!(answer_key.error_status(), "INVALID_ARGUMENT");
    assert!(
        answer_key.text.contains("API key not valid"),
        "{}",
        answer_key.text
    );
    // A URL meant for another space does not work here.
    let crossed = chat.webhook_url("T").replace("/spaces/T/", "/spaces/S/");
    assert_eq!(post(&crossed, &text("x")).await.status, 400);
    let no_token = url
        .split("&token=")
        .next()
        .expect("url has a token")
        .to_owned();
    assert_eq!(post(&no_token, &text("x")).await.status, 403);

    for body in [&answer.text, &answer_key.text] {
        for secret in ["s3cr3", "FAKEKEY", "FAKETOKEN"] {
            assert!(!body.contains(secret), "error body leaks {secret}: {body}");
        }
    }
    assert!(chat.messages("S").is_empty());
    assert_eq!(chat.secrets().len(), 4);
}

#[tokio::test]
async fn unknown_paths_get_html_404_and_other_methods_405() {
    let chat = unlimited().await;
    let url = chat.webhook_url("S");
    let answer = post(
        &format!("{}/v1/spaces/S/message?key=k", chat.base_url()),
        &text("x"),
    )
    .await;
    assert_eq!(answer.status, 404);
    assert!(
        answer.content_type.starts_with("text/html"),
        "{}",
        answer.content_type
    );
    assert!(answer.text.contains("<html"));
    assert!(
        !answer.text.contains("key=k"),
        "the query must not be echoed"
    );

    let get = client().get(&url).send().await.expect("GET");
    assert_eq!(get.status().as_u16(), 405);
    let body: Value = get.json().await.expect("405 body is JSON");
    assert_eq!(body["error"]["code"], 405);
    let recorded: Vec<(String, u16)> = chat
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert_eq!(
        recorded,
        [("POST".to_owned(), 404), ("GET".to_owned(), 405)]
    );
}

#[tokio::test]
async fn fail_next_fails_then_recovers_without_spending_the_rate() {
    let chat = FakeChat::start().await; // rate limit on: failures must not consume it
    let url = chat.webhook_url("S");
    chat.fail_next(
        "S",
        2,
        Failure::Status {
            status: 503,
            retry_after: Some("3".into()),
        },
    );
    chat.fail_next("S", 1, Failure::Html404);
    for _ in 0..2 {
        let answer = post(&url, &text("retry me")).await;
        assert_eq!(answer.status, 503);
        assert_eq!(answer.retry_after.as_deref(), Some("3"));
        assert_eq!(answer.error_status(), "UNAVAILABLE");
    }
    let html = post(&url, &text("retry me")).await;
    assert_eq!(html.status, 404);
    assert!(html.content_type.starts_with("text/html"));
    assert_eq!(post(&url, &text("retry me")).await.status, 200);

    // Another space is unaffected.
    chat.fail_next("S", 1, Failure::status(500));
    assert_eq!(
        post(&chat.webhook_url("T"), &text("fine")).await.status,
        200
    );

    let requests = chat.requests_for("S");
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 404, 200]);
    assert!(
        requests
            .iter()
            .all(|r| r.text.as_deref() == Some("retry me"))
    );
    assert_eq!(requests[0].error_status.as_deref(), Some("UNAVAILABLE"));
    assert_eq!(chat.messages("S").len(), 1);
}

#[tokio::test]
async fn reset_connection_gives_a_connection_error() {
    let chat = unlimited().await;
    let url = chat.webhook_url("S");
    chat.fail_next("S", 1, Failure::ResetConnection);
    let err = client()
        .post(&url)
        .json(&text("x"))
        .send()
        .await
        .expect_err("the connection should have been reset");
    assert!(!err.is_timeout(), "{err}");
    assert_eq!(post(&url, &text("x")).await.status, 200);
    let statuses: Vec<u16> = chat.requests_for("S").iter().map(|r| r.status).collect();
    assert_eq!(statuses, [0, 200]);
}

#[tokio::test]
async fn modes_apply_globally_and_per_space() {
    let chat = unlimited().await;
    let (a, b) = (chat.webhook_url("A"), chat.webhook_url("B"));
    chat.set_mode(None, Mode::Fail(Failure::status(500)));
    chat.set_mode(Some("B"), Mode::Normal);
    let answer = post(&a, &text("x")).await;
    assert_eq!(answer.status, 500);
    assert_eq!(answer.error_status(), "INTERNAL");
    assert_eq!(
        post(&b, &text("x")).await.status,
        200,
        "per-space mode wins"
    );
    chat.set_mode(Some("A"), Mode::Fail(Failure::status(429)));
    assert_eq!(post(&a, &text("x")).await.status, 429);
    chat.reset_modes();
    assert_eq!(post(&a, &text("x")).await.status, 200);
}

#[tokio::test]
async fn reject_when_text_contains_is_permanent() {
    let chat = unlimited().await;
    let url = chat.webhook_url("S");
    chat.reject_when_text_contains("poison", 400);
    chat.reject_when_text_contains("forbidden", 403);
    for _ in 0..2 {
        let answer = post(&url, &text("this is poison")).await;
        assert_eq!(answer.status, 400);
        assert_eq!(answer.error_status(), "INVALID_ARGUMENT");
    }
    let in_card = json!({"cardsV2": [{"cardId": "c", "card": {"sections": [
        {"widgets": [{"textParagraph": {"text": "forbidden words"}}]}
    ]}}]});
    assert_eq!(post(&url, &in_card).await.status, 403);
    assert_eq!(post(&url, &text("harmless")).await.status, 200);
    let texts: Vec<_> = chat
        .messages("S")
        .into_iter()
        .filter_map(|m| m.text)
        .collect();
    assert_eq!(texts, ["harmless"]);
}

#[tokio::test]
async fn slow_mode_delays_and_optionally_accepts_first() {
    let chat = unlimited().await;
    let (a, b, c) = (
        chat.webhook_url("A"),
        chat.webhook_url("B"),
        chat.webhook_url("C"),
    );
    let delay = Duration::from_millis(400);
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(100))
        .build()
        .expect("client");

    // accept: true → Chat created it although the client timed out.
    chat.set_mode(
        Some("A"),
        Mode::Slow {
            delay,
            accept: true,
        },
    );
    let err = impatient.post(&a).json(&text("created")).send().await;
    assert!(
        err.as_ref().is_err_and(reqwest::Error::is_timeout),
        "{err:?}"
    );
    assert_eq!(chat.messages("A").len(), 1);

    // accept: false → nothing is created when the client gives up first.
    chat.set_mode(
        Some("B"),
        Mode::Slow {
            delay,
            accept: false,
        },
    );
    let err = impatient.post(&b).json(&text("lost")).send().await;
    assert!(
        err.as_ref().is_err_and(reqwest::Error::is_timeout),
        "{err:?}"
    );

    // A patient client gets the answer after the delay.
    chat.set_mode(
        Some("C"),
        Mode::Slow {
            delay,
            accept: false,
        },
    );
    let started = Instant::now();
    assert_eq!(post(&c, &text("eventually")).await.status, 200);
    assert!(started.elapsed() >= delay);

    let a_requests = chat.wait_for_requests("A", 1, WAIT).await;
    assert_eq!(a_requests[0].status, 0, "the client never saw the answer");
    let b_requests = chat.wait_for_requests("B", 1, WAIT).await;
    assert_eq!(b_requests[0].status, 0);
    tokio::time::sleep(delay).await;
    assert!(chat.messages("B").is_empty(), "{}", chat.describe("B"));
    assert_eq!(chat.messages("C").len(), 1);
}

#[tokio::test]
#[should_panic(expected = "expected at least 2 message(s) in space \"S\"")]
async fn wait_for_messages_panics_with_what_arrived() {
    let chat = unlimited().await;
    let url = chat.webhook_url("S");
    post(&url, &text("only one")).await;
    chat.wait_for_messages("S", 2, Duration::from_millis(200))
        .await;
}

#[tokio::test]
async fn shutdown_and_last_drop_stop_the_server() {
    let chat = FakeChat::start().await;
    let addr = chat.addr();
    let clone = chat.clone();
    drop(chat);
    // A clone still serves.
    assert_eq!(post(&clone.webhook_url("S"), &text("x")).await.status, 200);
    clone.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // Records survive shutdown.
    assert_eq!(clone.messages("S").len(), 1);

    let other = FakeChat::start().await;
    let addr = other.addr();
    drop(other);
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "server still listening after last drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
