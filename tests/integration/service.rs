//! Integration tests: kabar in-process against the in-process fake Chat.

use std::time::Duration;

use crate::common::config::{ConfigBuilder, Space};
use crate::common::fake_chat::{Failure, FakeChat, Mode};
use crate::common::kabar::{
    InProcess, TEST_TOKEN, TestConfig, age_recorded_resolves, client, metric_value, metrics_text,
    notification, post_alerts, stored_dead_letters, wait_for_metric,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// A space on the fake Chat named `name`, for the receiver of the same name.
fn chat_space(chat: &FakeChat, name: &str) -> Space {
    Space::webhook(&chat.webhook_url(name)).receivers(&[name])
}

/// These tests follow messages by their text, so their spaces post text; cards have their
/// own suite (tests/integration/cards.rs).
fn config() -> ConfigBuilder {
    ConfigBuilder::new().allow_any_host().default_format("text")
}

/// The config with space `ops` on the fake Chat.
fn ops_config(chat: &FakeChat) -> ConfigBuilder {
    config().space("ops", chat_space(chat, "ops"))
}

#[tokio::test]
async fn alert_life_lives_in_one_thread_and_only_changes_are_posted() {
    let chat = FakeChat::start().await;
    let kabar = InProcess::start(TestConfig::build(ops_config(&chat))).await;
    let url = kabar.url("/alerts");

    let firing = notification("ops", &[("DiskFull", "firing"), ("HighLoad", "firing")]);
    let (status, body) = post_alerts(&url, &firing).await;
    assert_eq!(
        (status, body.clone()),
        (200, json!({"queued": 2, "suppressed": 0}))
    );

    // Alertmanager re-sends the unchanged group: nothing new to say.
    let (status, body) = post_alerts(&url, &firing).await;
    assert_eq!((status, body), (200, json!({"queued": 0, "suppressed": 2})));

    let resolved = notification("ops", &[("DiskFull", "resolved"), ("HighLoad", "firing")]);
    let (status, body) = post_alerts(&url, &resolved).await;
    assert_eq!((status, body), (200, json!({"queued": 1, "suppressed": 1})));
    let (_, body) = post_alerts(&url, &resolved).await;
    assert_eq!(body["queued"], 0, "a resolved alert is announced once");

    let messages = chat.wait_for_messages("ops", 3, WAIT).await;
    let threads = chat.threads("ops");
    assert_eq!(threads.len(), 2, "{}", chat.describe("ops"));
    let disk = threads
        .iter()
        .find(|t| {
            t.messages[0]
                .text
                .as_deref()
                .unwrap_or("")
                .contains("DiskFull")
        })
        .expect("DiskFull thread");
    assert_eq!(disk.messages.len(), 2);
    let reply = disk.messages[1].text.as_deref().unwrap_or("");
    assert!(reply.starts_with("✅ *RESOLVED* · *DiskFull*"), "{reply}");
    assert!(!disk.messages[1].opened_thread);
    assert!(
        messages
            .iter()
            .all(|m| m.reply_option.as_deref() == Some("REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"))
    );
    assert!(
        chat.requests_for("ops").iter().all(|r| r.status == 200),
        "kabar stayed within Chat's 1 write/s: {}",
        chat.describe("ops")
    );

    let metrics = wait_for_metric(
        &kabar.url(""),
        "kabar_messages_sent_total{space=\"ops\"}",
        3.0,
        WAIT,
    )
    .await;
    // Both identical re-sends came within the duplicate window; HighLoad in the changed
    // notification was unchanged.
    assert_eq!(
        metric_value(
            &metrics,
            "kabar_alerts_suppressed_total{reason=\"duplicate\",space=\"ops\"}"
        ),
        Some(4.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "kabar_alerts_suppressed_total{reason=\"unchanged\",space=\"ops\"}"
        ),
        Some(1.0)
    );
    // The gauge is read from the store at scrape time, so it may lag a scrape behind.
    wait_for_metric(
        &kabar.url(""),
        "kabar_outbox_messages{space=\"ops\"}",
        0.0,
        WAIT,
    )
    .await;
    kabar.stop().await;
}

#[tokio::test]
async fn concurrent_copies_from_an_ha_pair_post_once() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let kabar = InProcess::start(TestConfig::build(
        ops_config(&chat).rate_limit_per_second(50.0),
    ))
    .await;
    let url = kabar.url("/alerts");
    let payload = notification("ops", &[("A", "firing"), ("B", "firing"), ("C", "firing")]);
    let mut copy = payload.clone();
    copy["externalURL"] = json!("http://alertmanager-2.local:9093");
    let posts: Vec<_> = (0..8)
        .map(|i| {
            let (url, body) = (
                url.clone(),
                if i % 2 == 0 {
                    payload.clone()
                } else {
                    copy.clone()
                },
            );
            tokio::spawn(async move { post_alerts(&url, &body).await })
        })
        .collect();
    let mut queued = 0;
    for post in posts {
        let (status, body) = post.await.expect("task");
        assert_eq!(status, 200);
        queued += body["queued"].as_u64().expect("queued");
    }
    assert_eq!(queued, 3, "each alert opens its thread exactly once");
    chat.wait_for_messages("ops", 3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(chat.messages("ops").len(), 3);
    kabar.stop().await;
}

#[tokio::test]
async fn receiver_fans_out_and_explicit_space_routes() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let spaces = config()
        .rate_limit_per_second(50.0)
        .space(
            "a",
            chat_space(&chat, "a").receivers(&["team", "ns/cfg/team"]),
        )
        .space("b", chat_space(&chat, "b").receivers(&["team"]));
    let kabar = InProcess::start(TestConfig::build(spaces)).await;
    let (status, body) = post_alerts(
        &kabar.url("/alerts"),
        &notification("team", &[("X", "firing")]),
    )
    .await;
    assert_eq!((status, body["queued"].clone()), (200, json!(2)));
    let (status, _) = post_alerts(
        &kabar.url("/alerts"),
        &notification("ns/cfg/team", &[("Y", "firing")]),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = post_alerts(
        &kabar.url("/alerts/b"),
        &notification("anything", &[("Z", "firing")]),
    )
    .await;
    assert_eq!((status, body["queued"].clone()), (200, json!(1)));
    chat.wait_for_messages("a", 2, WAIT).await;
    chat.wait_for_messages("b", 2, WAIT).await;
    kabar.stop().await;
}

#[tokio::test]
async fn retries_429_and_5xx_honouring_retry_after() {
    let chat = FakeChat::start().await;
    let kabar = InProcess::start(TestConfig::build(ops_config(&chat).backoff("100ms", "5s"))).await;
    chat.fail_next(
        "ops",
        1,
        Failure::Status {
            status: 429,
            retry_after: Some("2".into()),
        },
    );
    chat.fail_next("ops", 2, Failure::status(503));
    chat.fail_next("ops", 1, Failure::ResetConnection);
    let (status, _) = post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("A", "firing")]),
    )
    .await;
    assert_eq!(status, 200);
    chat.wait_for_messages("ops", 1, WAIT).await;
    let requests = chat.requests_for("ops");
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 503, 503, 0, 200]);
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(1900),
        "Retry-After: 2 honoured, waited {waited:?}"
    );
    let metrics = metrics_text(&kabar.url("")).await;
    for (reason, count) in [("rateLimited", 1.0), ("serverError", 2.0), ("network", 1.0)] {
        let series = format!("kabar_messages_failed_total{{reason=\"{reason}\",space=\"ops\"}}");
        assert_eq!(metric_value(&metrics, &series), Some(count), "{series}");
    }
    kabar.stop().await;
}

#[tokio::test]
async fn a_faster_config_than_chat_allows_still_delivers_everything_in_order() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(Some(4.0));
    let kabar = InProcess::start(TestConfig::build(
        ops_config(&chat)
            .rate_limit_per_second(20.0)
            .backoff("100ms", "1s"),
    ))
    .await;
    let names: Vec<String> = (0..8).map(|i| format!("Alert{i}")).collect();
    for name in &names {
        let (status, _) = post_alerts(
            &kabar.url("/alerts"),
            &notification("ops", &[(name, "firing")]),
        )
        .await;
        assert_eq!(status, 200);
    }
    let messages = chat.wait_for_messages("ops", 8, WAIT).await;
    let order: Vec<String> = messages
        .iter()
        .map(|m| {
            let text = m.text.clone().unwrap_or_default();
            names
                .iter()
                .find(|n| text.contains(&format!("*{n}*")))
                .cloned()
                .unwrap_or(text)
        })
        .collect();
    assert_eq!(order, names, "FIFO per space");
    assert!(
        chat.requests_for("ops").iter().any(|r| r.status == 429),
        "the fake's limit was hit, so the retry path ran"
    );
    kabar.stop().await;
}

#[tokio::test]
async fn permanent_rejections_are_dead_lettered_and_the_space_moves_on() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    chat.reject_when_text_contains("*Broken*", 400);
    chat.reject_when_text_contains("*Revoked*", 403);
    let kabar = InProcess::start(TestConfig::build(
        ops_config(&chat).rate_limit_per_second(50.0),
    ))
    .await;
    for name in ["Broken", "Revoked", "Fine"] {
        let (status, _) = post_alerts(
            &kabar.url("/alerts"),
            &notification("ops", &[(name, "firing")]),
        )
        .await;
        assert_eq!(status, 200);
    }
    let delivered = chat.wait_for_messages("ops", 1, WAIT).await;
    assert!(
        delivered[0]
            .text
            .as_deref()
            .unwrap_or("")
            .contains("*Fine*")
    );
    let base = kabar.url("");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = metrics_text(&base).await;
        let client_errors = metric_value(
            &metrics,
            "kabar_messages_dead_lettered_total{reason=\"clientError\",space=\"ops\"}",
        );
        let auth_errors = metric_value(
            &metrics,
            "kabar_messages_dead_lettered_total{reason=\"authError\",space=\"ops\"}",
        );
        if client_errors == Some(1.0) && auth_errors == Some(1.0) {
            assert_eq!(
                metric_value(&metrics, "kabar_dead_letters{space=\"ops\"}"),
                Some(2.0)
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters not counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = stored_dead_letters(&kabar.config);
    let reasons: Vec<(&str, Option<u16>)> =
        dead.iter().map(|d| (d.reason.as_str(), d.status)).collect();
    assert_eq!(
        reasons,
        [("clientError", Some(400)), ("authError", Some(403))]
    );
    assert!(
        dead[0].detail.contains("INVALID_ARGUMENT"),
        "{}",
        dead[0].detail
    );
    for secret in chat.secrets() {
        assert!(
            !dead.iter().any(|d| d.detail.contains(&secret)),
            "dead letter detail holds a secret"
        );
    }
    kabar.stop().await;
}

#[tokio::test]
async fn slow_answers_time_out_and_are_retried() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let kabar = InProcess::start(TestConfig::build(
        ops_config(&chat)
            .request_timeout("300ms")
            .backoff("100ms", "200ms")
            .rate_limit_per_second(50.0),
    ))
    .await;
    // On PostgreSQL the sender starts once this replica holds the space's lease.
    wait_for_metric(
        &kabar.url(""),
        "kabar_space_lease_held{space=\"ops\"}",
        1.0,
        WAIT,
    )
    .await;
    chat.set_mode(
        Some("ops"),
        Mode::Slow {
            delay: Duration::from_secs(2),
            accept: false,
        },
    );
    let (status, _) = post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("Slow", "firing")]),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(900)).await;
    chat.set_mode(Some("ops"), Mode::Normal);
    chat.wait_for_messages("ops", 1, WAIT).await;
    let metrics = metrics_text(&kabar.url("")).await;
    let timeouts = metric_value(
        &metrics,
        "kabar_messages_failed_total{reason=\"timeout\",space=\"ops\"}",
    );
    assert!(timeouts.is_some_and(|t| t >= 1.0), "{timeouts:?}");
    kabar.stop().await;
}

#[tokio::test]
async fn messages_past_give_up_after_are_dead_lettered_as_expired() {
    let chat = FakeChat::start().await;
    chat.set_mode(Some("ops"), Mode::Fail(Failure::status(503)));
    let kabar = InProcess::start(TestConfig::build(
        ops_config(&chat)
            .give_up_after("1s")
            .backoff("100ms", "200ms")
            .rate_limit_per_second(20.0),
    ))
    .await;
    let (status, _) = post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("Doomed", "firing")]),
    )
    .await;
    assert_eq!(status, 200);
    let base = kabar.url("");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = metrics_text(&base).await;
        // One scrape is not atomic across series: the outbox gauge is read from the store
        // just before the counters, so a dead-lettering in between shows up in the counter
        // first and in the gauge on the next scrape.
        if metric_value(
            &metrics,
            "kabar_messages_dead_lettered_total{reason=\"expired\",space=\"ops\"}",
        ) == Some(1.0)
            && metric_value(&metrics, "kabar_outbox_messages{space=\"ops\"}") == Some(0.0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never expired:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kabar.stop().await;
}

#[tokio::test]
async fn threading_off_posts_top_level_messages() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let kabar = InProcess::start(TestConfig::build(
        config()
            .rate_limit_per_second(50.0)
            .space("ops", chat_space(&chat, "ops").threading("off")),
    ))
    .await;
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
    let messages = chat.wait_for_messages("ops", 2, WAIT).await;
    assert!(
        messages
            .iter()
            .all(|m| m.opened_thread && m.thread_key.is_none() && m.reply_option.is_none())
    );
    kabar.stop().await;
}

/// One request straight to kabar's router (no socket): its status, headers and JSON body.
async fn raw_post(
    kabar: &InProcess,
    path: &str,
    content_type: Option<&str>,
    auth: Option<&str>,
    body: Vec<u8>,
) -> (u16, axum::http::HeaderMap, Value) {
    let mut request = axum::http::Request::post(path);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let request = request
        .body(axum::body::Body::from(body))
        .expect("a valid request");
    let (status, headers, body) = oneshot(kabar, request).await;
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// Sends `request` to kabar's router and reads the whole answer.
async fn oneshot(
    kabar: &InProcess,
    request: axum::http::Request<axum::body::Body>,
) -> (u16, axum::http::HeaderMap, Vec<u8>) {
    use tower::ServiceExt as _;
    let response = kabar
        .service
        .router()
        .oneshot(request)
        .await
        .expect("the router always answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("the body");
    (status, headers, body.to_vec())
}

fn get(path: &str) -> axum::http::Request<axum::body::Body> {
    axum::http::Request::get(path)
        .body(axum::body::Body::empty())
        .expect("a valid request")
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let chat = FakeChat::start().await;
    let cfg = TestConfig::build(
        ConfigBuilder::new()
            .max_body_bytes(2048)
            .allow_any_host()
            .space(
                "ops",
                chat_space(&chat, "ops").receivers(&["ops", "monitoring/team/ops"]),
            ),
    );
    let kabar = InProcess::start(cfg).await;
    let url = "/alerts";
    let bearer = format!("Bearer {TEST_TOKEN}");
    let good = serde_json::to_vec(&notification("ops", &[("A", "firing")])).expect("json");

    let (status, headers, body) =
        raw_post(&kabar, url, Some("application/json"), None, good.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"kabar\"");
    assert!(body["hint"].as_str().is_some());
    let (status, _, _) = raw_post(
        &kabar,
        url,
        Some("application/json"),
        Some("Bearer wrong"),
        good.clone(),
    )
    .await;
    assert_eq!(status, 401);

    let (status, _, body) =
        raw_post(&kabar, url, Some("text/plain"), Some(&bearer), good.clone()).await;
    assert_eq!(status, 415, "{body}");

    let (status, _, body) = raw_post(
        &kabar,
        url,
        Some("application/json"),
        Some(&bearer),
        vec![b' '; 4096],
    )
    .await;
    assert_eq!(status, 413, "{body}");

    let (status, _, body) = raw_post(
        &kabar,
        url,
        Some("application/json"),
        Some(&bearer),
        b"{\"receiver\": ".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let bad_time = br#"{"receiver":"ops","status":"firing","alerts":[{"status":"firing","labels":{},"startsAt":"noon"}]}"#;
    let (status, _, body) = raw_post(
        &kabar,
        url,
        Some("application/json"),
        Some(&bearer),
        bad_time.to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("alerts[0].startsAt"),
        "{body}"
    );

    let (status, _, body) = raw_post(
        &kabar,
        url,
        Some("application/json"),
        Some(&bearer),
        b"[{\"labels\":{}}]".to_vec(),
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        body["hint"].as_str().expect("hint").contains("Prometheus"),
        "{body}"
    );

    let other = serde_json::to_vec(&notification("monitoring/other/ops", &[("A", "firing")]))
        .expect("json");
    let (status, _, body) =
        raw_post(&kabar, url, Some("application/json"), Some(&bearer), other).await;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("monitoring/team/ops"),
        "{body}"
    );
    assert!(
        body["hint"]
            .as_str()
            .expect("hint")
            .contains("namespace/config/receiver"),
        "{body}"
    );

    let (status, _, body) = raw_post(
        &kabar,
        "/alerts/nope",
        Some("application/json"),
        Some(&bearer),
        good.clone(),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().expect("error").contains("ops"),
        "{body}"
    );

    let (status, _, _) = oneshot(&kabar, get(url)).await;
    assert_eq!(status, 405);
    let (status, _, _) = oneshot(&kabar, get("/nowhere")).await;
    assert_eq!(status, 404);

    let metrics = metrics_text(&kabar.url("")).await;
    for (reason, count) in [
        ("unauthorized", 2.0),
        ("unsupportedMediaType", 1.0),
        ("tooLarge", 1.0),
        ("badRequest", 2.0),
        ("bareAlertArray", 1.0),
        ("unknownReceiver", 2.0),
    ] {
        let series = format!("kabar_requests_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(&metrics, &series), Some(count), "{series}");
    }
    let (status, _, body) =
        raw_post(&kabar, url, Some("application/json"), Some(&bearer), good).await;
    assert_eq!((status, body["queued"].clone()), (200, json!(1)));
    kabar.stop().await;
}

#[tokio::test]
async fn health_metrics_landing_and_reload() {
    let chat = FakeChat::start().await;
    let kabar = InProcess::start(TestConfig::build(ops_config(&chat))).await;
    let http = client();
    assert_eq!(oneshot(&kabar, get("/healthz")).await.0, 200);
    assert_eq!(oneshot(&kabar, get("/readyz")).await.0, 200);
    let (status, _, landing) = oneshot(&kabar, get("/")).await;
    let landing = String::from_utf8(landing).expect("text");
    assert_eq!(status, 200);
    assert!(landing.contains("ops") && landing.contains("kabar"));

    let metrics = metrics_text(&kabar.url("")).await;
    assert!(metrics.contains("kabar_notifications_received_total{space=\"ops\"} 0"));
    assert!(metrics.contains("kabar_build_info{"));
    assert!(metrics.contains("process_resident_memory_bytes"));
    // The parametrised pass (postgres_suites) must really run on PostgreSQL.
    let backend = if crate::common::postgres::on_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(
        metric_value(
            &metrics,
            &format!("kabar_store_backend_info{{backend=\"{backend}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    // The only replica holds the space: for good on SQLite, by its first claim on
    // PostgreSQL.
    wait_for_metric(
        &kabar.url(""),
        "kabar_space_lease_held{space=\"ops\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        metric_value(&metrics, "kabar_config_last_reload_successful"),
        Some(1.0)
    );
    for secret in chat.secrets() {
        assert!(
            !landing.contains(&secret) && !metrics.contains(&secret),
            "a webhook secret leaked"
        );
    }

    // A broken file keeps the running config and says why.
    std::fs::write(&kabar.config.path, "spaces:\n  ops:\n    dry_run: maybe\n").expect("write");
    let response = http
        .post(kabar.url("/-/reload"))
        .bearer_auth(TEST_TOKEN)
        .send()
        .await
        .expect("reload");
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("spaces.ops.dry_run"),
        "{body}"
    );
    let metrics = metrics_text(&kabar.url("")).await;
    assert_eq!(
        metric_value(&metrics, "kabar_config_last_reload_successful"),
        Some(0.0)
    );
    let (status, _) = post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("A", "firing")]),
    )
    .await;
    assert_eq!(status, 200, "still serving the old config");

    // A good file adds a space, live.
    kabar.config.rewrite_with(
        ConfigBuilder::new()
            .allow_any_host()
            .space("ops", chat_space(&chat, "ops"))
            .space("extra", Space::dry_run()),
    );
    let response = http
        .post(kabar.url("/-/reload"))
        .bearer_auth(TEST_TOKEN)
        .send()
        .await
        .expect("reload");
    assert_eq!(response.status(), 200);
    let (status, body) = post_alerts(
        &kabar.url("/alerts/extra"),
        &notification("x", &[("B", "firing")]),
    )
    .await;
    assert_eq!((status, body["queued"].clone()), (200, json!(1)));
    let metrics = metrics_text(&kabar.url("")).await;
    assert!(
        metrics.contains("kabar_notifications_received_total{space=\"extra\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "kabar_config_last_reload_successful"),
        Some(1.0)
    );
    kabar.stop().await;
}

/// The exposition passes Prometheus's own linter. promtool comes from Debian's
/// `prometheus` package; CI installs it and sets KABAR_REQUIRE_E2E so this cannot skip.
#[tokio::test]
async fn metrics_pass_promtool_check() {
    let Some(promtool) = crate::common::tools::require_tool(&["promtool"], "prometheus") else {
        return;
    };
    let chat = FakeChat::start().await;
    let kabar = InProcess::start(TestConfig::build(
        ops_config(&chat).space("demo", Space::dry_run()),
    ))
    .await;
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("A", "firing")]),
    )
    .await;
    chat.wait_for_messages("ops", 1, WAIT).await;
    let metrics = metrics_text(&kabar.url("")).await;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("promtool finishes");
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    kabar.stop().await;
}

#[tokio::test]
async fn an_alert_firing_again_after_its_resolve_gets_a_firing_again_reply() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let kabar = InProcess::start(TestConfig::build(
        ops_config(&chat).rate_limit_per_second(50.0),
    ))
    .await;
    let url = kabar.url("/alerts");
    let firing = notification("ops", &[("DiskFull", "firing")]);
    let resolved = notification("ops", &[("DiskFull", "resolved")]);
    let queued = |body: Value| body["queued"].as_u64();

    assert_eq!(queued(post_alerts(&url, &firing).await.1), Some(1));
    assert_eq!(queued(post_alerts(&url, &resolved).await.1), Some(1));
    // An HA peer's late copy of the firing notification, right after the resolve: stale.
    let mut late_copy = firing.clone();
    late_copy["externalURL"] = json!("http://alertmanager-2.local:9093");
    let (status, body) = post_alerts(&url, &late_copy).await;
    assert_eq!((status, body), (200, json!({"queued": 0, "suppressed": 1})));

    // A minute later it fires again with the same startsAt (Prometheus restarted).
    age_recorded_resolves(&kabar.config, 61_000);
    let (status, body) = post_alerts(&url, &firing).await;
    assert_eq!((status, body), (200, json!({"queued": 1, "suppressed": 0})));
    let (_, body) = post_alerts(&url, &firing).await;
    assert_eq!(queued(body), Some(0), "its copy is a duplicate");

    // It resolves again, later: a resolved reply again.
    let mut resolved_again = resolved.clone();
    resolved_again["alerts"][0]["endsAt"] = json!("2026-11-28T02:00:00Z");
    assert_eq!(queued(post_alerts(&url, &resolved_again).await.1), Some(1));

    chat.wait_for_messages("ops", 4, WAIT).await;
    let threads = chat.threads("ops");
    assert_eq!(threads.len(), 1, "{}", chat.describe("ops"));
    let texts: Vec<String> = threads[0]
        .messages
        .iter()
        .map(|m| m.text.clone().unwrap_or_default())
        .collect();
    assert!(texts[0].contains("*FIRING*"), "{texts:?}");
    assert!(texts[1].starts_with("✅ *RESOLVED*"), "{texts:?}");
    assert!(
        texts[2].starts_with("🔴 *Firing again* · *DiskFull*"),
        "{texts:?}"
    );
    assert!(texts[3].starts_with("✅ *RESOLVED*"), "{texts:?}");
    let metrics = metrics_text(&kabar.url("")).await;
    assert_eq!(
        metric_value(
            &metrics,
            "kabar_messages_queued_total{kind=\"firingAgain\",space=\"ops\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    kabar.stop().await;
}

#[tokio::test]
async fn a_space_removed_and_re_added_mid_request_never_has_two_senders() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    chat.set_mode(
        Some("ops"),
        Mode::Slow {
            delay: Duration::from_millis(1500),
            accept: true,
        },
    );
    let without_ops = config()
        .rate_limit_per_second(50.0)
        .space("other", Space::dry_run());
    let with_ops = without_ops.clone().space("ops", chat_space(&chat, "ops"));
    let kabar = InProcess::start(TestConfig::build(with_ops.clone())).await;
    let firing = notification("ops", &[("A", "firing"), ("B", "firing"), ("C", "firing")]);
    let (status, body) = post_alerts(&kabar.url("/alerts"), &firing).await;
    assert_eq!((status, body["queued"].clone()), (200, json!(3)));

    // The first message is in flight (Chat is slow to answer): remove ops, add it back.
    let deadline = tokio::time::Instant::now() + WAIT;
    while chat.in_flight("ops") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing was sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kabar.config.rewrite_with(without_ops);
    kabar.service.reload().await.expect("reload without ops");
    kabar.config.rewrite_with(with_ops);
    kabar.service.reload().await.expect("reload with ops again");

    chat.wait_for_messages("ops", 3, WAIT).await;
    wait_for_metric(
        &kabar.url(""),
        "kabar_outbox_messages{space=\"ops\"}",
        0.0,
        WAIT,
    )
    .await;
    assert_eq!(
        chat.max_in_flight("ops"),
        1,
        "one request in flight per space: {}",
        chat.describe("ops")
    );
    assert_eq!(
        chat.messages("ops").len(),
        3,
        "each message posted once: {}",
        chat.describe("ops")
    );
    kabar.stop().await;
}

#[tokio::test]
async fn a_storm_of_resolves_never_seen_firing_is_one_digest_message() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let kabar = InProcess::start(TestConfig::build(
        ops_config(&chat).rate_limit_per_second(50.0),
    ))
    .await;
    let names: Vec<String> = (0..200).map(|i| format!("Gone{i}")).collect();
    let alerts: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "resolved")).collect();
    let storm = notification("ops", &alerts);
    let (status, body) = post_alerts(&kabar.url("/alerts"), &storm).await;
    assert_eq!((status, body), (200, json!({"queued": 1, "suppressed": 0})));
    let messages = chat.wait_for_messages("ops", 1, WAIT).await;
    let text = messages[0].text.as_deref().unwrap_or("");
    assert!(text.starts_with("✅ *200 alerts resolved*"), "{text}");
    assert!(text.contains("✅ *Gone0*"), "listed as resolved: {text}");
    assert!(text.contains("+180 more"), "{text}");
    // The state of every alert moved on: the re-send posts nothing.
    let (_, body) = post_alerts(&kabar.url("/alerts"), &storm).await;
    assert_eq!(body["queued"], 0);
    kabar.stop().await;
}
