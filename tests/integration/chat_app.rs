//! App mode (`space: spaces/…`) against the fake Google servers: the token grant, creates
//! posted once whatever answers are lost, the opening card edited on resolve, token expiry
//! and outages, a revoked key, refused edits, and a webhook space beside an app space.

use std::time::Duration;

use serde_json::Value;

use crate::common::config::{ConfigBuilder, Space};
use crate::common::fake_chat::FakeChat;
use crate::common::fake_google::{FakeGoogle, TokenMode};
use crate::common::kabar::{
    InProcess, KabarProcess, TestConfig, dead_letters_cli, metric_value, metrics_text,
    notification, post_alerts, wait_for_metric,
};

const SPACE: &str = "spaces/AAAAappTest";
const WAIT: Duration = Duration::from_secs(20);

/// kabar with one app-mode space `ops` posting to the fake.
async fn start(
    google: &FakeGoogle,
    tune: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
) -> InProcess {
    // The key lives beside the config, where the CLI reading the config later finds it.
    let placeholder = TestConfig::build(ConfigBuilder::new().space("x", Space::dry_run()));
    let key = google.write_key(placeholder.dir.path());
    let builder = ConfigBuilder::new()
        .allow_any_host()
        .backoff("100ms", "500ms")
        .chat_app(&key, &google.api_url())
        .space("ops", Space::app(SPACE).receivers(&["ops"]));
    placeholder.rewrite_with(tune(builder));
    InProcess::start(placeholder).await
}

fn creates(google: &FakeGoogle) -> Vec<crate::common::fake_google::Seen> {
    google
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/messages"))
        .collect()
}

fn title(message: &Value) -> String {
    message["cardsV2"][0]["card"]["header"]["title"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn fire_then_resolve_edits_the_opening_card_and_replies_in_its_thread() {
    let google = FakeGoogle::start().await;
    let kabar = start(&google, |b| b).await;
    let (status, _) = post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("DiskFull", "firing")]),
    )
    .await;
    assert_eq!(status, 200);
    google
        .wait_until("the firing card", WAIT, |g| g.messages(SPACE).len() == 1)
        .await;
    let create = &creates(&google)[0];
    let message_id = create.query["messageId"].clone();
    assert!(
        message_id.starts_with("client-") && message_id.len() <= 63,
        "{message_id}"
    );
    assert!(create.query["requestId"].starts_with("kabar-"));
    assert_eq!(
        create.query["messageReplyOption"],
        "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
    );
    assert_eq!(create.body["markupSyntax"], "MARKUP_SYNTAX_CHAT");
    assert!(title(&google.messages(SPACE)[0].body).starts_with("🔴"));

    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("DiskFull", "resolved")]),
    )
    .await;
    google
        .wait_until("the edit and the reply", WAIT, |g| {
            let m = g.messages(SPACE);
            m.len() == 2 && m[0].edits == 1
        })
        .await;
    let messages = google.messages(SPACE);
    let card = &messages[0];
    assert!(title(&card.body).starts_with("✅"), "{}", card.body);
    let shown = card.body.to_string();
    assert!(shown.contains("Resolved after"), "{shown}");
    assert!(
        shown.contains("Started") && shown.contains("\"Resolved\""),
        "{shown}"
    );
    assert!(shown.contains("openLink"), "link buttons are kept: {shown}");
    assert_eq!(card.body["text"], "", "the firing mention line is cleared");
    let reply = &messages[1];
    assert_eq!(
        reply.thread_name, card.thread_name,
        "the reply is in the card's thread"
    );
    // The edit addressed the message by the name Chat gave it, which kabar stored.
    let patch = google
        .seen()
        .into_iter()
        .find(|s| s.method == "PATCH")
        .expect("a PATCH");
    assert_eq!(patch.path, format!("/v1/{}", card.name));
    assert_eq!(patch.query["updateMask"], "text,cards_v2");
    assert!(patch.body.get("thread").is_none());
    // Creates and edits share the space's one write a second.
    let times = google.write_times(SPACE);
    assert_eq!(times.len(), 3);
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(950), "{times:?}");
    }
    let text = metrics_text(&kabar.url("")).await;
    assert_eq!(
        metric_value(
            &text,
            "kabar_chat_app_edits_total{result=\"sent\",space=\"ops\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "kabar_chat_app_token_refreshes_total"),
        Some(1.0)
    );
    assert_eq!(google.tokens_issued(), 1, "one token serves every write");
    assert!(google.assertion_errors().is_empty());
    kabar.stop().await;
}

/// A create whose answer never arrives (kabar times out) was made: the retry carries the
/// same requestId and messageId, and the space ends with one message, whether Chat answers
/// the repeat with the existing message or with 409 ALREADY_EXISTS.
#[tokio::test]
async fn a_create_whose_answer_is_lost_is_posted_once() {
    for remember in [true, false] {
        let google = FakeGoogle::start().await;
        google.remember_request_ids(remember);
        google.lose_next_answers(1, Duration::from_secs(3));
        let kabar = start(&google, |b| b.request_timeout("1s")).await;
        post_alerts(
            &kabar.url("/alerts"),
            &notification("ops", &[("DiskFull", "firing")]),
        )
        .await;
        google
            .wait_until("the retried create", WAIT, |g| creates(g).len() >= 2)
            .await;
        wait_for_metric(
            &kabar.url(""),
            "kabar_messages_sent_total{space=\"ops\"}",
            1.0,
            WAIT,
        )
        .await;
        let sent = creates(&google);
        assert!(sent.len() >= 2, "the create was retried: {sent:?}");
        assert!(
            sent.windows(2)
                .all(|w| w[0].query["messageId"] == w[1].query["messageId"]
                    && w[0].query["requestId"] == w[1].query["requestId"]),
            "every try names the same message"
        );
        if !remember {
            assert!(sent.iter().any(|s| s.status == 409), "{sent:?}");
        }
        assert_eq!(
            google.messages(SPACE).len(),
            1,
            "posted once (remember={remember})"
        );
        kabar.stop().await;
    }
}

#[tokio::test]
async fn a_token_that_goes_stale_mid_run_is_replaced_once_and_the_message_delivered() {
    let google = FakeGoogle::start().await;
    let kabar = start(&google, |b| b).await;
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("A", "firing")]),
    )
    .await;
    google
        .wait_until("the first card", WAIT, |g| g.messages(SPACE).len() == 1)
        .await;
    google.expire_tokens();
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("B", "firing")]),
    )
    .await;
    google
        .wait_until("the second card", WAIT, |g| g.messages(SPACE).len() == 2)
        .await;
    assert_eq!(google.tokens_issued(), 2);
    let unauthorized = google.seen().iter().filter(|s| s.status == 401).count();
    assert_eq!(unauthorized, 1, "one 401, then the fresh token");
    kabar.stop().await;
}

#[tokio::test]
async fn a_token_endpoint_outage_is_retried_and_counted_until_it_is_back() {
    let google = FakeGoogle::start().await;
    google.set_token_mode(TokenMode::Down);
    let kabar = start(&google, |b| b).await;
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("A", "firing")]),
    )
    .await;
    wait_for_metric(
        &kabar.url(""),
        "kabar_chat_app_token_failures_total{class=\"serverError\"}",
        2.0,
        WAIT,
    )
    .await;
    assert!(google.messages(SPACE).is_empty());
    google.set_token_mode(TokenMode::Normal);
    google
        .wait_until("the card after the outage", WAIT, |g| {
            g.messages(SPACE).len() == 1
        })
        .await;
    kabar.stop().await;
}

#[tokio::test]
async fn a_revoked_key_dead_letters_the_message_with_the_reason() {
    let google = FakeGoogle::start().await;
    google.set_token_mode(TokenMode::Revoked);
    let kabar = start(&google, |b| b).await;
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("A", "firing")]),
    )
    .await;
    wait_for_metric(
        &kabar.url(""),
        "kabar_messages_dead_lettered_total{reason=\"authError\",space=\"ops\"}",
        1.0,
        WAIT,
    )
    .await;
    let config = kabar.stop().await;
    let listed = dead_letters_cli(&config.path, &["list", "--json"]).await;
    assert!(listed.success, "{}", listed.stderr);
    assert!(
        listed.stdout.contains("refused the service account key")
            && listed.stdout.contains("invalid_grant"),
        "{}",
        listed.stdout
    );
    assert!(!listed.stdout.contains("PRIVATE KEY"), "{}", listed.stdout);
}

/// An edit Chat refuses for good (the card was deleted) is dropped and counted; the reply
/// and later messages still go out.
#[tokio::test]
async fn an_edit_of_a_deleted_card_is_dropped_and_the_space_moves_on() {
    let google = FakeGoogle::start().await;
    let kabar = start(&google, |b| b).await;
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("A", "firing")]),
    )
    .await;
    google
        .wait_until("the card", WAIT, |g| g.messages(SPACE).len() == 1)
        .await;
    let name = google.messages(SPACE)[0].name.clone();
    google.delete_message(SPACE, &name);
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("A", "resolved")]),
    )
    .await;
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("B", "firing")]),
    )
    .await;
    google
        .wait_until("the reply and the next card", WAIT, |g| {
            g.messages(SPACE).len() == 2
        })
        .await;
    let text = wait_for_metric(
        &kabar.url(""),
        "kabar_chat_app_edits_total{result=\"refused\",space=\"ops\"}",
        1.0,
        WAIT,
    )
    .await;
    assert_eq!(
        metric_value(&text, "kabar_dead_letters{space=\"ops\"}"),
        Some(0.0),
        "{text}"
    );
    let patches: Vec<_> = google
        .seen()
        .into_iter()
        .filter(|s| s.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1, "tried once: {patches:?}");
    assert_eq!(patches[0].status, 404);
    kabar.stop().await;
}

#[tokio::test]
async fn a_webhook_space_and_an_app_space_serve_side_by_side() {
    let google = FakeGoogle::start().await;
    let chat = FakeChat::start().await;
    let webhook = chat.webhook_url("hooks");
    let kabar = start(&google, |b| {
        b.space("web", Space::webhook(&webhook).receivers(&["ops"]))
    })
    .await;
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("A", "firing")]),
    )
    .await;
    google
        .wait_until("the app card", WAIT, |g| g.messages(SPACE).len() == 1)
        .await;
    chat.wait_for_messages("hooks", 1, WAIT).await;
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("A", "resolved")]),
    )
    .await;
    google
        .wait_until("the edit", WAIT, |g| g.messages(SPACE)[0].edits == 1)
        .await;
    chat.wait_for_messages("hooks", 2, WAIT).await;
    let webhook_bodies: Vec<String> = chat
        .messages("hooks")
        .iter()
        .map(|m| m.body.to_string())
        .collect();
    assert!(
        webhook_bodies.iter().all(|b| !b.contains("markupSyntax")),
        "webhook bodies are as before: {webhook_bodies:?}"
    );
    kabar.stop().await;
}

#[tokio::test]
async fn kabar_check_validates_the_key_file_without_printing_it() {
    let google = FakeGoogle::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let key = google.write_key(dir.path());
    let base = |key: &std::path::Path| {
        ConfigBuilder::new()
            .allow_any_host()
            .chat_app(key, &google.api_url())
            .space("ops", Space::app(SPACE))
    };
    let good = TestConfig::build(base(&key));
    assert!(kabar::Runtime::load(&good.path).is_ok());

    let mut value: Value = serde_json::from_str(&google.key.json).expect("json");
    value
        .as_object_mut()
        .expect("object")
        .remove("client_email");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, value.to_string()).expect("write");
    let pkcs1 = dir.path().join("pkcs1.json");
    let mut pkcs1_value: Value = serde_json::from_str(&google.key.json).expect("json");
    pkcs1_value["private_key"] = google
        .key
        .pem
        .replace("PRIVATE KEY", "RSA PRIVATE KEY")
        .into();
    std::fs::write(&pkcs1, pkcs1_value.to_string()).expect("write");
    let secret_line = google
        .key
        .pem
        .lines()
        .nth(1)
        .expect("a base64 line")
        .to_owned();
    for (path, expected) in [(&broken, "client_email"), (&pkcs1, "PKCS#8")] {
        let config = TestConfig::build(base(path));
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_kabar"))
            .args(["check", "--config"])
            .arg(&config.path)
            .output()
            .expect("run kabar check");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{all}");
        assert!(
            all.contains("chat_app.credentials_file") && all.contains(expected),
            "{all}"
        );
        assert!(!all.contains(&secret_line), "the key leaked: {all}");
    }
    let no_app = TestConfig::build(ConfigBuilder::new().space("ops", Space::app(SPACE)));
    let err = kabar::Runtime::load(&no_app.path).expect_err("space without chat_app");
    assert!(err.to_string().contains("chat_app"), "{err}");
    let both = TestConfig::build(
        ConfigBuilder::new()
            .allow_any_host()
            .chat_app(&key, &google.api_url())
            .space(
                "ops",
                Space::app(SPACE).option("dry_run", Value::Bool(true)),
            ),
    );
    let err = kabar::Runtime::load(&both.path).expect_err("space and dry_run");
    assert!(err.to_string().contains("exactly one"), "{err}");
}

/// End to end through the real Alertmanager: three alerts fire, one resolves — three
/// cards, one of them edited to resolved, one reply in its thread, nothing else, even as
/// Alertmanager re-sends the group.
#[tokio::test]
async fn through_the_real_alertmanager_three_fire_one_resolves() {
    use crate::common::alertmanager::{
        Alertmanager, AlertmanagerOptions, TestAlert, require_binaries,
    };
    use crate::common::kabar::TEST_TOKEN;
    let Some(binaries) = require_binaries() else {
        return;
    };
    let google = FakeGoogle::start().await;
    let kabar = start(&google, |b| {
        b.space("ops", Space::app(SPACE).receivers(&["gchat"]))
    })
    .await;
    let mut options = AlertmanagerOptions::new(kabar.url("/alerts"));
    options.bearer_token = Some(TEST_TOKEN.to_owned());
    options.repeat_interval = "1s";
    let am = Alertmanager::start(&binaries, options).await;
    let alerts: Vec<TestAlert> = ["db1", "db2", "db3"]
        .iter()
        .map(|host| {
            TestAlert::new("DiskFull")
                .label("instance", host)
                .label("severity", "critical")
                .annotation("summary", &format!("Disk almost full on {host}"))
        })
        .collect();
    am.fire(&alerts).await;
    google
        .wait_until("three cards", Duration::from_secs(30), |g| {
            g.messages(SPACE).len() == 3
        })
        .await;
    am.resolve(&alerts[1..2]).await;
    google
        .wait_until("the edit and the reply", Duration::from_secs(30), |g| {
            let m = g.messages(SPACE);
            m.len() == 4 && m.iter().filter(|m| m.edits == 1).count() == 1
        })
        .await;
    // Alertmanager re-sends the group (two firing, one resolved) every couple of seconds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let messages = google.messages(SPACE);
    assert_eq!(
        messages.len(),
        4,
        "three cards and one reply: {messages:#?}"
    );
    let edited: Vec<&crate::common::fake_google::ChatMessage> =
        messages.iter().filter(|m| m.edits > 0).collect();
    assert_eq!(edited.len(), 1, "one card edited, once");
    assert_eq!(edited[0].edits, 1);
    assert!(
        title(&edited[0].body).starts_with("✅"),
        "{}",
        edited[0].body
    );
    assert!(edited[0].body.to_string().contains("db2"));
    let reply = &messages[3];
    assert_eq!(
        reply.thread_name, edited[0].thread_name,
        "the reply is in the edited card's thread"
    );
    for card in messages.iter().take(3).filter(|m| m.edits == 0) {
        assert!(title(&card.body).starts_with("🔴"), "{}", card.body);
    }
    let creates = creates(&google);
    assert_eq!(
        creates.iter().filter(|c| c.status == 200).count(),
        4,
        "every message created once"
    );
    kabar.stop().await;
}

#[tokio::test]
async fn kabar_render_shows_the_app_mode_request() {
    let google = FakeGoogle::start().await;
    let placeholder = TestConfig::build(ConfigBuilder::new().space("x", Space::dry_run()));
    let key = google.write_key(placeholder.dir.path());
    placeholder.rewrite_with(
        ConfigBuilder::new()
            .allow_any_host()
            .chat_app(&key, &google.api_url())
            .space("ops", Space::app(SPACE).receivers(&["ops"])),
    );
    let payload = placeholder.dir.path().join("firing.json");
    std::fs::write(
        &payload,
        notification("ops", &[("DiskFull", "firing")]).to_string(),
    )
    .expect("write payload");
    let shown = kabar::commands::render(&placeholder.path, &payload, None).expect("renders");
    let requests: Value = serde_json::from_str(&shown).expect("JSON");
    let request = &requests[0];
    assert_eq!(request["method"], "POST");
    assert_eq!(request["path"], format!("/v1/{SPACE}/messages"));
    let query = request["query"].as_str().expect("query");
    assert!(
        query.starts_with("messageId=client-")
            && query.contains("&requestId=kabar-")
            && query.ends_with("&messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"),
        "{query}"
    );
    assert_eq!(request["body"]["markupSyntax"], "MARKUP_SYNTAX_CHAT");
    assert!(google.seen().is_empty(), "render sends nothing");
}

/// per_group: each change of the group is posted in its thread, and the group's opening
/// card is edited to the group's current counts.
#[tokio::test]
async fn per_group_the_opening_card_shows_the_current_counts_after_each_change() {
    let google = FakeGoogle::start().await;
    let kabar = start(&google, |b| {
        b.space(
            "ops",
            Space::app(SPACE).receivers(&["ops"]).threading("per_group"),
        )
    })
    .await;
    let alerts = kabar.url("/alerts");
    post_alerts(
        &alerts,
        &notification("ops", &[("A", "firing"), ("B", "firing")]),
    )
    .await;
    google
        .wait_until("the group card", WAIT, |g| g.messages(SPACE).len() == 1)
        .await;
    assert!(title(&google.messages(SPACE)[0].body).contains("2 firing"));
    post_alerts(
        &alerts,
        &notification("ops", &[("A", "resolved"), ("B", "firing")]),
    )
    .await;
    google
        .wait_until("the first change", WAIT, |g| {
            let m = g.messages(SPACE);
            m.len() == 2 && m[0].edits == 1
        })
        .await;
    let opening = google.messages(SPACE)[0].body["cardsV2"].to_string();
    assert!(
        opening.contains("1 firing") && opening.contains("1 resolved"),
        "{opening}"
    );
    post_alerts(
        &alerts,
        &notification("ops", &[("A", "resolved"), ("B", "resolved")]),
    )
    .await;
    google
        .wait_until("the second change", WAIT, |g| {
            let m = g.messages(SPACE);
            m.len() == 3 && m[0].edits == 2
        })
        .await;
    let messages = google.messages(SPACE);
    // The card (updateMask text,cards_v2; Chat cannot edit fallbackText).
    let opening = messages[0].body["cardsV2"].to_string();
    assert!(
        opening.contains("2 resolved") && !opening.contains("firing"),
        "{opening}"
    );
    assert!(
        messages
            .iter()
            .all(|m| m.thread_name == messages[0].thread_name),
        "one thread"
    );
    kabar.stop().await;
}

/// A digest (a storm of alerts in one message) is edited as the alerts it announced
/// resolve: its card shows which are still firing and which resolved.
#[tokio::test]
async fn the_digest_card_is_updated_as_its_alerts_resolve() {
    let google = FakeGoogle::start().await;
    let kabar = start(&google, |b| {
        b.space(
            "ops",
            Space::app(SPACE)
                .receivers(&["ops"])
                .option("max_new_threads_per_notification", serde_json::json!(2)),
        )
    })
    .await;
    let alerts = kabar.url("/alerts");
    let storm = [("A", "firing"), ("B", "firing"), ("C", "firing")];
    post_alerts(&alerts, &notification("ops", &storm)).await;
    google
        .wait_until("the digest", WAIT, |g| g.messages(SPACE).len() == 1)
        .await;
    let before = google.messages(SPACE)[0].body["cardsV2"].to_string();
    assert!(!before.contains("resolved"), "{before}");
    post_alerts(
        &alerts,
        &notification(
            "ops",
            &[("A", "resolved"), ("B", "firing"), ("C", "firing")],
        ),
    )
    .await;
    google
        .wait_until("the digest edit and the reply", WAIT, |g| {
            let m = g.messages(SPACE);
            m.len() == 2 && m[0].edits == 1
        })
        .await;
    let messages = google.messages(SPACE);
    let card = messages[0].body["cardsV2"].to_string();
    assert!(card.contains("resolved"), "{card}");
    for name in ["<b>A</b>", "<b>B</b>", "<b>C</b>"] {
        assert!(card.contains(name), "{name} in {card}");
    }
    assert_eq!(messages[1].thread_name, messages[0].thread_name);
    kabar.stop().await;
}

/// The name Chat gave the opening card is kept in the store: after a restart the resolve
/// still edits that card by name, and the episode is not posted again.
#[tokio::test]
async fn the_opening_cards_name_survives_a_restart() {
    let google = FakeGoogle::start().await;
    let kabar = start(&google, |b| b).await;
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("A", "firing")]),
    )
    .await;
    google
        .wait_until("the card", WAIT, |g| g.messages(SPACE).len() == 1)
        .await;
    let config = kabar.stop().await;
    let kabar = InProcess::start(config).await;
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("A", "firing")]),
    )
    .await;
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("A", "resolved")]),
    )
    .await;
    google
        .wait_until("the edit and reply", WAIT, |g| {
            let m = g.messages(SPACE);
            m.len() == 2 && m[0].edits == 1
        })
        .await;
    let name = google.messages(SPACE)[0].name.clone();
    let patch = google
        .seen()
        .into_iter()
        .find(|s| s.method == "PATCH")
        .expect("a PATCH");
    assert_eq!(patch.path, format!("/v1/{name}"));
    kabar.stop().await;
}

/// `chat_app.dry_run` needs no Google account: each app-mode request is printed (method,
/// path, query, body) instead of sent, a resolve prints the PATCH of the opening card
/// (addressed by the name Chat would have given it) before the reply, and nothing leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_prints_the_app_requests_without_credentials() {
    let config = TestConfig::build(
        ConfigBuilder::new()
            .chat_app_dry_run()
            .space("ops", Space::app(SPACE).receivers(&["ops"])),
    );
    let log = config.dir.path().join("kabar.log");
    let kabar = KabarProcess::spawn(&config.path, &log);
    for status in ["firing", "resolved"] {
        let (code, _) = post_alerts(
            &kabar.url("/alerts"),
            &notification("ops", &[("DryRunApp", status)]),
        )
        .await;
        assert_eq!(code, 200);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let logs = loop {
        let logs = kabar.logs();
        let count = logs.matches("dry run, the Chat app would send").count();
        if count >= 3 || tokio::time::Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let printed: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("dry run, the Chat app would send"))
        .collect();
    assert_eq!(printed.len(), 3, "create, edit, reply:\n{logs}");
    assert!(
        printed[0].contains("method=\"POST\"") || printed[0].contains("method=POST"),
        "{}",
        printed[0]
    );
    assert!(
        printed[0].contains(&format!("/v1/{SPACE}/messages")),
        "{}",
        printed[0]
    );
    assert!(printed[0].contains("messageId=client-"), "{}", printed[0]);
    assert!(printed[0].contains("MARKUP_SYNTAX"), "{}", printed[0]);
    // The edit addresses the card the create made, by its client- id's name.
    assert!(printed[1].contains("PATCH"), "{}", printed[1]);
    assert!(
        printed[1].contains(&format!("{SPACE}/messages/client-")),
        "{}",
        printed[1]
    );
    assert!(printed[1].contains("updateMask"), "{}", printed[1]);
    assert!(printed[2].contains("POST"), "{}", printed[2]);
    assert!(
        printed[2].contains("REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"),
        "{}",
        printed[2]
    );
}
