//! No secret in any log line. The faults and hostile suites scan the debug logs of every
//! kabar they spawn (common::logscan); this file proves the scanner can fail, and drives one
//! kabar with basic auth through everything that tends to log a URL or a credential:
//! wrong credentials, every Chat failure class, dead letters, a reload that fails on a
//! broken webhook URL, SIGHUP and SIGTERM.

use std::time::Duration;

use crate::common::fake_chat::{Failure, FakeChat, Mode};
use crate::common::kabar::{
    CliOutput, KabarProcess, TestConfig, assert_no_secrets, client, dead_letters_cli, notification,
};
use crate::common::logscan::{assert_logs_clean, config_secrets, percent_encode_every_byte};

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

/// A real webhook's credentials: the key, and the token as it sits in the URL (`%3D`).
const ECHO_KEY: &str = "AIzaSyEchoKEYq1w2e3r4t5y6u7i8o9p0aSdFgHjK";
const ECHO_TOKEN: &str = "EchoTOKEN-Zq8vT3xWm1LkP0aBcD9e%3D";
const ECHO_TOKEN_DECODED: &str = "EchoTOKEN-Zq8vT3xWm1LkP0aBcD9e=";

/// Error bodies that echo the webhook URL, or parts of it, in every encoding a server may
/// use; half Google-style JSON errors, half plain text, each with a forged log line.
fn echoing_bodies(url: &str) -> Vec<String> {
    let (_, target) = url.split_at(url.find("/v1/").expect("path"));
    let full_encoded = percent_encode_every_byte(url);
    let echoes = [
        format!("No webhook at {url}"),
        format!("No webhook at {target}"),
        format!("token {ECHO_TOKEN} is not valid"),
        format!("token {} is not valid", ECHO_TOKEN.replace("%3D", "%3d")),
        format!("token {ECHO_TOKEN_DECODED} is not valid"),
        format!("token {} is not valid", ECHO_TOKEN.replace('%', "%25")),
        format!("<a href=\"{}\">webhook</a>", url.replace('&', "&amp;")),
        format!("see {}", url.replace('=', "&#61;").replace('&', "&#38;")),
        target.replace('=', "\\u003d").replace('&', "\\u0026"),
        format!("continue={full_encoded}"),
        format!("continue={}", full_encoded.to_lowercase()),
        format!("API key {ECHO_KEY} not valid"),
    ];
    let mut bodies = Vec::new();
    for (i, echo) in echoes.iter().enumerate() {
        let forged = "\n2026-12-01T00:00:00Z  INFO kabar: forged \u{1b}[31mline";
        bodies.push(if i % 2 == 0 {
            serde_json::json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
                "message": format!("{echo}{forged}")}})
            .to_string()
        } else {
            format!("{echo}{forged}")
        });
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_errors_echoing_the_token_in_any_encoding_reach_no_log_row_or_cli_output() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let url = |space: &str| {
        format!(
            "{}/v1/spaces/{space}/messages?key={ECHO_KEY}&token={ECHO_TOKEN}",
            chat.base_url()
        )
    };
    let (text_url, card_url) = (url("ECHOTEXT1"), url("ECHOCARD2"));
    let config = TestConfig::new(&format!(
        "auth:\n  basic:\n    username: {USERNAME}\n    password: {PASSWORD}\n\
         delivery:\n  allow_any_host: true\n  rate_limit_per_second: 50\n\
         spaces:\n  ops:\n    webhook_url: \"{text_url}\"\n    format: text\n  \
         cards:\n    webhook_url: \"{card_url}\"\n    format: card\n",
    ));
    let log = config.dir.path().join("kabar.log");
    let kabar = KabarProcess::spawn(&config.path, &log);
    let base = kabar.url("");
    let good = Some((USERNAME, PASSWORD));

    // Each text message meets one echoing 400 or 403 and is dead-lettered; the card meets
    // a 400 (kabar logs it and falls back to text), then its text a 403.
    let bodies = echoing_bodies(&text_url);
    for (i, body) in bodies.iter().enumerate() {
        let status = if i % 2 == 0 { 403 } else { 400 };
        chat.fail_next(
            "ECHOTEXT1",
            1,
            Failure::Body {
                status,
                body: body.clone(),
            },
        );
    }
    let card_bodies = echoing_bodies(&card_url);
    for (status, body) in [(400, &card_bodies[0]), (403, &card_bodies[5])] {
        chat.fail_next(
            "ECHOCARD2",
            1,
            Failure::Body {
                status,
                body: body.clone(),
            },
        );
    }
    for i in 0..bodies.len() {
        let alert = format!("Echo{i}");
        let (status, answer) =
            post_with(&base, good, &notification("ops", &[(&alert, "firing")])).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, answer) = post_with(
        &base,
        good,
        &notification("cards", &[("EchoCard", "firing")]),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let expected = bodies.len() + 1;
    for (space, n) in [("ops", bodies.len()), ("cards", 1)] {
        crate::common::kabar::wait_for_metric(
            &base,
            &format!("kabar_dead_letters{{space=\"{space}\"}}"),
            n as f64,
            WAIT,
        )
        .await;
    }

    // A row as an older release stored it, detail unscrubbed: the CLI must clean it too.
    let database = config.state_dir().join("kabar.db");
    let planted = format!(
        "HTTP 403 at {text_url} token {ECHO_TOKEN_DECODED} {}",
        text_url.replace('&', "&amp;")
    );
    {
        let conn = rusqlite::Connection::open(&database).expect("open the store");
        conn.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        conn.execute(
            "INSERT INTO dead_letters (space, kind, thread_key, body, received_ms, dead_ms, attempts, reason, status, detail)
             VALUES ('ops', 'firing', 'kabar:ops:planted', '{\"text\":\"planted\"}', 0, 0, 1, 'authError', 403, ?1)",
            [&planted],
        )
        .expect("plant a dead letter");
    }

    kabar.signal("TERM");
    let code = tokio::task::spawn_blocking(move || kabar.wait_exit(Duration::from_secs(15)))
        .await
        .expect("wait for kabar");
    assert_eq!(code, Some(0));

    let secrets = config_secrets(&config.path);
    for must_scan in [ECHO_KEY, ECHO_TOKEN, ECHO_TOKEN_DECODED] {
        assert!(
            secrets.iter().any(|s| s == must_scan),
            "{must_scan} is scanned for"
        );
    }

    let logs = std::fs::read_to_string(&log).expect("read the log");
    assert_eq!(
        logs.matches("message dead-lettered").count(),
        expected,
        "every echoing answer was logged"
    );
    assert!(
        logs.contains("Chat refused the card"),
        "the fallback path logged its detail"
    );
    assert_no_secrets(&logs, &secrets);
    assert!(
        !logs
            .lines()
            .any(|line| line.starts_with("2026-12-01T00:00:00Z")),
        "a forged line in the log"
    );

    let conn = rusqlite::Connection::open(&database).expect("open the store");
    let mut query = conn
        .prepare("SELECT detail FROM dead_letters WHERE thread_key != 'kabar:ops:planted'")
        .expect("query");
    let details: Vec<String> = query
        .query_map([], |row| row.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("details");
    assert_eq!(details.len(), expected);
    for detail in &details {
        assert!(detail.starts_with("HTTP 40"), "{detail}");
        assert!(!detail.chars().any(char::is_control), "{detail:?}");
    }
    assert_no_secrets(&details.join("\n"), &secrets);

    for args in [&["list"][..], &["list", "--json"][..]] {
        let CliOutput {
            success: ok,
            stdout,
            stderr,
        } = dead_letters_cli(&config.path, args).await;
        assert!(ok, "{stderr}");
        assert!(stdout.contains("planted"), "{stdout}");
        let rows = if args.len() == 1 {
            stdout.lines().filter(|l| l.contains("kabar:")).count()
        } else {
            let parsed: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
            parsed.as_array().map_or(0, Vec::len)
        };
        assert_eq!(rows, expected + 1, "{stdout}");
        assert_no_secrets(&stdout, &secrets);
        assert_no_secrets(&stderr, &secrets);
    }
}

/// App mode: the private key, the JWT assertions and the access tokens stay out of every
/// debug log line (kabar's and its HTTP stack's) through token refreshes, a stale token,
/// an edit, a refused key and a dead letter; the scanner knows all three kinds of secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_assertion_or_token_in_any_log_line_in_app_mode() {
    use crate::common::config::{ConfigBuilder, Space};
    use crate::common::fake_google::{FakeGoogle, TokenMode};
    const SPACE: &str = "spaces/AAAAlogScan";
    let google = FakeGoogle::start().await;
    let placeholder = TestConfig::build(ConfigBuilder::new().space("x", Space::dry_run()));
    let key = google.write_key(placeholder.dir.path());
    placeholder.rewrite_with(
        ConfigBuilder::new()
            .allow_any_host()
            .backoff("50ms", "200ms")
            .chat_app(&key, &google.api_url())
            .space("ops", Space::app(SPACE).receivers(&["ops"])),
    );
    let config = placeholder;
    let log = config.dir.path().join("kabar.log");
    let kabar = KabarProcess::spawn(&config.path, &log);
    let base = kabar.url("");
    let post = |alerts: &'static [(&'static str, &'static str)]| {
        let base = base.clone();
        async move {
            let (status, _) = crate::common::kabar::post_alerts(
                &format!("{base}/alerts"),
                &notification("ops", alerts),
            )
            .await;
            assert_eq!(status, 200);
        }
    };
    post(&[("Secretive", "firing")]).await;
    google
        .wait_until("the card", WAIT, |g| g.messages(SPACE).len() == 1)
        .await;
    google.expire_tokens();
    post(&[("Secretive", "resolved")]).await;
    google
        .wait_until("the edit and reply", WAIT, |g| g.messages(SPACE).len() == 2)
        .await;
    google.expire_tokens();
    google.set_token_mode(TokenMode::Revoked);
    post(&[("Refused", "firing")]).await;
    kabar.wait_for_log("message dead-lettered", WAIT).await;
    let listed = dead_letters_cli(&config.path, &["list", "--json"]).await;

    let mut secrets = config_secrets(&config.path);
    let pem_line = google
        .key
        .pem
        .lines()
        .nth(1)
        .expect("a PEM line")
        .to_owned();
    assert!(
        secrets.contains(&pem_line),
        "the scanner knows the private key"
    );
    let issued = google.secrets();
    assert!(
        issued.len() >= 4,
        "two tokens and their assertions: {}",
        issued.len()
    );
    secrets.extend(issued);
    let planted = format!("WARN kabar: oops {pem_line}\n");
    assert!(std::panic::catch_unwind(|| assert_no_secrets(&planted, &secrets)).is_err());
    let logs = kabar.logs();
    assert!(
        logs.contains("Chat app request"),
        "debug lines were written"
    );
    assert_no_secrets(&logs, &secrets);
    assert_no_secrets(&listed.stdout, &secrets);
    assert_no_secrets(&listed.stderr, &secrets);
}
