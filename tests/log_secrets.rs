//! No secret in any log line. The faults and hostile suites scan the debug logs of every
//! kabar they spawn (common::logscan); this file proves the scanner can fail, and drives one
//! kabar with basic auth through everything that tends to log a URL or a credential:
//! wrong credentials, every Chat failure class, dead letters, a reload that fails on a
//! broken webhook URL, SIGHUP and SIGTERM.

mod common;

use std::time::Duration;

use common::fake_chat::{Failure, FakeChat, Mode};
use common::kabar::{KabarProcess, TestConfig, assert_no_secrets, client, notification};
use common::logscan::{assert_logs_clean, config_secrets};

const WAIT: Duration = Duration::from_secs(30);
const USERNAME: &str = "alertmanager";
const PASSWORD: &str = "basic-pass-7d1c0e55aa";

fn basic_config(chat: &FakeChat) -> String {
    format!(
        "auth:\n  basic:\n    username: {USERNAME}\n    password: {PASSWORD}\n\
         delivery:\n  allow_any_host: true\n  rate_limit_per_second: 50\n  \
         request_timeout: 300ms\n  backoff: {{initial: 50ms, max: 200ms}}\n\
         defaults:\n  format: text\nspaces:\n  ops:\n    webhook_url: \"{}\"\n  \
         broken:\n    webhook_url: \"{}\"\n",
        chat.webhook_url("ops"),
        chat.webhook_url("broken"),
    )
}

#[tokio::test]
async fn the_scanner_reads_the_real_secrets_and_finds_a_planted_one() {
    let chat = FakeChat::start().await;
    let config = TestConfig::new(&basic_config(&chat));
    let secrets = config_secrets(&config.path);
    let url = chat.webhook_url("ops");
    let (_, query) = url.split_once('?').expect("webhook URL has a query");
    let path_and_query = &url[url.find("/v1/").expect("path")..];
    let path = path_and_query.split('?').next().expect("path");
    for want in [PASSWORD, url.as_str(), path_and_query, path] {
        assert!(
            secrets.iter().any(|s| s == want),
            "{want:?} not among {} secrets",
            secrets.len()
        );
    }
    for pair in query.split('&') {
        let value = pair.split_once('=').expect("key=value").1;
        assert!(secrets.iter().any(|s| s == value), "query value {value:?}");
    }
    for issued in chat.secrets() {
        assert!(
            secrets.contains(&issued),
            "fake Chat's {issued:?} is scanned"
        );
    }

    // Each secret planted in an otherwise clean log is caught (the panics printed below
    // are the scanner doing its job).
    let clean = "2026-11-28T00:00:00Z  INFO kabar::delivery: delivered space=ops id=1\n";
    assert_logs_clean(clean, &config.path, &chat);
    for planted in &secrets {
        let log = format!("{clean}2026-11-28T00:00:01Z  WARN kabar: oops {planted}\n");
        let caught = std::panic::catch_unwind(|| assert_no_secrets(&log, &secrets));
        assert!(caught.is_err(), "the scanner missed a planted secret");
    }
}

async fn post_with(
    base: &str,
    auth: Option<(&str, &str)>,
    body: &serde_json::Value,
) -> (u16, String) {
    let mut request = client().post(format!("{base}/alerts")).json(body);
    if let Some((user, password)) = auth {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await.expect("kabar answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_log_line_through_failures_reloads_and_signals() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let config = TestConfig::new(&basic_config(&chat));
    let log = config.dir.path().join("kabar.log");
    let kabar = KabarProcess::spawn(&config.path, &log);
    let base = kabar.url("");
    let good = Some((USERNAME, PASSWORD));

    // Wrong and missing credentials.
    let body = notification("ops", &[("Secretive", "firing")]);
    for auth in [
        None,
        Some((USERNAME, "not-the-password")),
        Some(("", PASSWORD)),
    ] {
        let (status, answer) = post_with(&base, auth, &body).await;
        assert_eq!(status, 401, "{answer}");
        assert!(!answer.contains(PASSWORD));
    }

    // Every failure class Chat can produce, then delivery.
    for failure in [
        Failure::status(429),
        Failure::status(500),
        Failure::status(503),
        Failure::ResetConnection,
        Failure::Html404,
    ] {
        chat.fail_next("ops", 1, failure);
    }
    chat.set_mode(
        Some("broken"),
        Mode::Slow {
            delay: Duration::from_millis(600),
            accept: false,
        },
    );
    let (status, answer) = post_with(&base, good, &body).await;
    assert_eq!(status, 200, "{answer}");
    let broken = notification("broken", &[("Stalled", "firing")]);
    assert_eq!(post_with(&base, good, &broken).await.0, 200);
    chat.wait_for_requests("broken", 2, WAIT).await;
    // 404 above dead-letters the first message; 400 and 403 the next ones.
    chat.set_mode(Some("broken"), Mode::Fail(Failure::status(403)));
    chat.reject_when_text_contains("Rejected", 400);
    let rejected = notification("ops", &[("Rejected", "firing")]);
    assert_eq!(post_with(&base, good, &rejected).await.0, 200);
    let delivered = notification("ops", &[("Delivered", "firing")]);
    assert_eq!(post_with(&base, good, &delivered).await.0, 200);
    chat.wait_for_messages("ops", 1, WAIT).await;
    kabar.wait_for_log("message dead-lettered", WAIT).await;

    // A reload that fails on a webhook URL carrying a credential must not echo it.
    let leaky_token = "reload-token-3b9f0c2d71";
    let good_text = std::fs::read_to_string(&config.path).expect("read config");
    let broken_text = good_text.replace(
        &chat.webhook_url("broken"),
        &format!("ftp://user:{leaky_token}@chat.invalid/v1/spaces/x/messages?token={leaky_token}"),
    );
    std::fs::write(&config.path, &broken_text).expect("write broken config");
    let reload = client()
        .post(format!("{base}/-/reload"))
        .send()
        .await
        .expect("reload answers");
    let reload_status = reload.status().as_u16();
    let reload_body = reload.text().await.unwrap_or_default();
    assert!(
        reload_status >= 400,
        "a broken webhook URL fails the reload"
    );
    assert!(!reload_body.contains(leaky_token), "{reload_body}");
    kabar.signal("HUP");
    kabar
        .wait_for_log("configuration reload failed", WAIT)
        .await;
    std::fs::write(&config.path, &good_text).expect("restore config");
    kabar.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;

    kabar.signal("TERM");
    let code = tokio::task::spawn_blocking(move || kabar.wait_exit(Duration::from_secs(15)))
        .await
        .expect("wait for kabar");
    assert_eq!(code, Some(0));

    let logs = std::fs::read_to_string(&log).expect("read the log");
    for expected in [
        "delivery failed; will retry",
        "message dead-lettered",
        "reload",
    ] {
        assert!(
            logs.contains(expected),
            "the run logged {expected:?}, so the scan covered it"
        );
    }
    assert_logs_clean(&logs, &config.path, &chat);
    let extra = [
        leaky_token.to_owned(),
        "not-the-password".to_owned(),
        // What a logged Authorization header would show.
        "YWxlcnRtYW5hZ2Vy".to_owned(),
    ];
    assert_no_secrets(&logs, &extra);
}
