//! Every payload value is hostile, in every place it flows out of kabar: log lines (text
//! and JSON, dry-run spaces included), the URLs kabar builds, Markdown in text messages,
//! and the dates that key threads.

use std::time::Duration;

use crate::common::config::{ConfigBuilder, Space};
use crate::common::fake_chat::{Failure, FakeChat};
use crate::common::kabar::{KabarProcess, TestConfig, notification, post_alerts};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// A forged log line, a carriage return, ANSI colours, NEL (a C1 line break), a Unicode
/// line separator, a bidi override, BEL and DEL.
const FORGERY: &str = "\n2026-12-01T00:00:00Z  WARN kabar::delivery: FORGED line\r\u{1b}[31mred\u{1b}[0m\u{85}nel\u{2028}ls\u{202e}bidi\u{7}bell\u{7f}del";

fn hostile_notification(receiver: &str) -> Value {
    let mut body = notification(receiver, &[("Hostile", "firing")]);
    let alert = &mut body["alerts"][0];
    alert["labels"]["alertname"] = json!(format!("Hostile{FORGERY}"));
    alert["labels"]["instance"] = json!(format!("db1{FORGERY}"));
    alert["annotations"]["summary"] = json!(format!("summary{FORGERY}"));
    alert["annotations"]["description"] = json!(format!("description{FORGERY}"));
    body["groupKey"] = json!(format!("{{}}:{{x=\"{FORGERY}\"}}"));
    body
}

/// Every line one log event: no raw control character but the line break between events,
/// no line separator or bidi control, and (text) each line starts like kabar's own.
fn assert_one_event_per_line(logs: &str, json: bool) {
    assert!(
        logs.contains("FORGED"),
        "the hostile values reached the log, so the scan means something"
    );
    for (n, line) in logs.lines().enumerate() {
        let bad: Vec<char> = line
            .chars()
            .filter(|&c| {
                c.is_control()
                    || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
            })
            .collect();
        assert!(bad.is_empty(), "line {n} carries {bad:?}: {line:?}");
        if json {
            let event: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("line {n} is not one JSON event ({e}): {line:?}"));
            assert!(event["timestamp"].is_string(), "{line}");
        } else {
            let starts_like_kabar = line.len() > 30
                && line.as_bytes()[4] == b'-'
                && line.as_bytes()[10] == b'T'
                && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                    .iter()
                    .any(|level| line[..40.min(line.len())].contains(level));
            assert!(
                starts_like_kabar,
                "line {n} is not a log event of its own: {line:?}"
            );
            assert!(
                !line.starts_with("2026-12-01T00:00:00Z"),
                "line {n} is forged: {line:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_forge_no_log_line_in_text_or_json_logs() {
    for json_logs in [false, true] {
        let chat = FakeChat::start().await;
        chat.set_rate_limit(None);
        let config = TestConfig::build(
            ConfigBuilder::new()
                .allow_any_host()
                .rate_limit_per_second(50.0)
                .space("drytext", Space::dry_run().format("text"))
                .space("drycard", Space::dry_run().format("card"))
                .space(
                    "ops",
                    Space::webhook(&chat.webhook_url("ops")).format("text"),
                ),
        );
        // Chat's answer is outside text too: an error message with the same forgery.
        let error = json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
            "message": format!("denied{FORGERY}")}});
        chat.fail_next(
            "ops",
            1,
            Failure::Body {
                status: 403,
                body: error.to_string(),
            },
        );
        let log = config.dir.path().join("kabar.log");
        let kabar = if json_logs {
            KabarProcess::spawn_json_logs(&config.path, &log)
        } else {
            KabarProcess::spawn(&config.path, &log)
        };
        for space in ["drytext", "drycard", "ops"] {
            let (status, body) = post_alerts(
                &kabar.url(&format!("/alerts/{space}")),
                &hostile_notification(space),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
        kabar.wait_for_log("message dead-lettered", WAIT).await;
        let deadline = std::time::Instant::now() + WAIT;
        while kabar.logs().matches("dry run, would post").count() < 2 {
            assert!(std::time::Instant::now() < deadline, "{}", kabar.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        kabar.signal("TERM");
        let code = tokio::task::spawn_blocking(move || kabar.wait_exit(Duration::from_secs(15)))
            .await
            .expect("wait for kabar");
        assert_eq!(code, Some(0));
        let logs = std::fs::read_to_string(&log).expect("read the log");
        assert_one_event_per_line(&logs, json_logs);
    }
}

/// The filter of a silence link, percent-decoded.
fn silence_filter(url: &str) -> String {
    let encoded = url.split_once("?filter=").expect("a filter").1;
    percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .expect("UTF-8")
        .into_owned()
}

fn links_in_text(text: &str) -> Vec<String> {
    text.split('<')
        .skip(1)
        .filter_map(|chunk| chunk.split_once('|').map(|(url, _)| url.to_owned()))
        .collect()
}

fn links_in_card(body: &Value) -> Vec<String> {
    let mut found = Vec::new();
    fn walk(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    if (key == "url" || key == "openLink")
                        && let Some(url) = v.as_str()
                    {
                        found.push(url.to_owned());
                    }
                    walk(v, found);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    walk(body, &mut found);
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_labels_and_links_stay_inert_in_every_url_and_in_text() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let config = TestConfig::build(
        ConfigBuilder::new()
            .allow_any_host()
            .rate_limit_per_second(50.0)
            .space(
                "text",
                Space::webhook(&chat.webhook_url("text")).format("text"),
            )
            .space(
                "card",
                Space::webhook(&chat.webhook_url("card")).format("card"),
            ),
    );
    let kabar = crate::common::kabar::InProcess::start(config).await;
    for space in ["text", "card"] {
        let mut body = notification(space, &[("Md", "firing")]);
        let alert = &mut body["alerts"][0];
        alert["labels"]["alertname"] =
            json!("Md *bold* _it_ ~gone~ `code` [click](https://evil.example)");
        alert["labels"]["service.name"] = json!("api");
        alert["labels"]["weird\"}, x=\"1"] = json!("v");
        alert["annotations"]["summary"] =
            json!("see ![img](https://evil.example/i.png) and [a][ref]");
        alert["annotations"]["description"] = json!("[ref]: https://evil.example");
        alert["annotations"]["runbook_url"] = json!("javascript:alert(1)");
        alert["annotations"]["dashboard_url"] =
            json!("https://grafana.example/d/a_b/_x?var=~re*&t=`now`");
        alert["generatorURL"] = json!("data:text/html,<script>alert(1)</script>");
        let (status, answer) = post_alerts(&kabar.url(&format!("/alerts/{space}")), &body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let text = chat.wait_for_messages("text", 1, WAIT).await[0]
        .text
        .clone()
        .expect("a text message");
    for live in [
        "*bold*",
        "_it_",
        "~gone~",
        "`code`",
        "](https://evil",
        "][ref]",
        "\n[ref]:",
    ] {
        assert!(!text.contains(live), "{live:?} is live Markdown in {text}");
    }
    assert!(
        text.contains("∗bold∗"),
        "the text still reads the same: {text}"
    );
    let card = chat.wait_for_messages("card", 1, WAIT).await[0]
        .body
        .clone();

    let mut silences = Vec::new();
    let text_links = links_in_text(&text);
    let card_links = links_in_card(&card);
    assert!(
        text_links.len() >= 2 && card_links.len() >= 2,
        "{text_links:?} {card_links:?}"
    );
    for link in text_links.iter().chain(&card_links) {
        let lower = link.to_ascii_lowercase();
        assert!(
            lower.starts_with("https://") || lower.starts_with("http://"),
            "a link with another scheme: {link}"
        );
        assert!(
            !lower.contains("javascript") && !lower.contains("data:text"),
            "{link}"
        );
        assert!(
            !link.contains(['"', ' ', '|', '<', '>', '`', '*', '~']),
            "{link}"
        );
        if link.contains("/#/silences/new") {
            silences.push(silence_filter(link));
        }
    }
    assert!(
        text_links
            .iter()
            .any(|l| l.starts_with("https://grafana.example/d/a_b/%5Fx?var=%7Ere%2A")),
        "the dashboard link survives, only encoded: {text_links:?}"
    );
    assert_eq!(silences.len(), 2, "one Silence link each");
    for filter in &silences {
        assert!(filter.contains(r#""service.name"="api""#), "{filter}");
        assert!(filter.contains(r#""weird\"}, x=\"1"="v""#), "{filter}");
        assert!(filter.contains(r#"instance="Md-host""#), "{filter}");
    }
    kabar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_start_dates_are_episodes_of_their_own_end_to_end() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let config = TestConfig::build(
        ConfigBuilder::new()
            .allow_any_host()
            .rate_limit_per_second(50.0)
            .space(
                "ops",
                Space::webhook(&chat.webhook_url("ops")).format("text"),
            ),
    );
    let kabar = crate::common::kabar::InProcess::start(config).await;
    // The same alert (same fingerprint) starting at dates a 64-bit nanosecond count cannot
    // tell apart (2026 and 2^64 ns later), and at the ends of what RFC 3339 can say.
    let starts = [
        "2026-11-28T00:52:38Z",
        "2611-06-19T00:27:11.709551616Z",
        "0001-01-01T00:00:00Z",
        // the last instant jiff represents (it keeps room for offsets up to ±25:59)
        "9999-12-30T21:59:59.999999999Z",
    ];
    for starts_at in starts {
        let mut body = notification("ops", &[("Far", "firing")]);
        body["alerts"][0]["startsAt"] = json!(starts_at);
        let (status, answer) = post_alerts(&kabar.url("/alerts/ops"), &body).await;
        assert_eq!(status, 200, "{starts_at}: {answer}");
        assert_eq!(
            answer["queued"], 1,
            "{starts_at} is a new episode: {answer}"
        );
    }
    let messages = chat.wait_for_messages("ops", starts.len(), WAIT).await;
    for odd in [
        "2026-11-28T00:52:38.123456789123456789Z",
        "2016-12-31T23:59:60Z",
        "2026-11-28T00:52:38+23:59",
        "10000-01-01T00:00:00Z",
        "9999-12-31T23:59:59-23:59",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999Z",
    ] {
        let mut body = notification("ops", &[("Odd", "firing")]);
        body["alerts"][0]["startsAt"] = json!(odd);
        let (status, answer) = post_alerts(&kabar.url("/alerts/ops"), &body).await;
        assert!(status == 200 || status == 400, "{odd}: {status} {answer}");
    }
    let far: Vec<&str> = messages
        .iter()
        .filter(|m| m.text.as_deref().is_some_and(|t| t.contains("*Far*")))
        .filter_map(|m| m.thread_key.as_deref())
        .collect();
    assert_eq!(far.len(), starts.len(), "{far:?}");
    let mut distinct = far.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        starts.len(),
        "one thread per episode: {far:?}"
    );
    for (key, starts_at) in far.iter().zip(starts) {
        assert!(key.contains(&starts_at[..19]), "{key} names {starts_at}");
    }
    kabar.stop().await;
}

/// Each sender runs in a span naming its space, so every line it writes (the Chat
/// client's and the store's included) says which space it is about, in JSON as a field of
/// the span and in text as `sender{space=...}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sender_line_carries_a_span_naming_its_space() {
    let config = TestConfig::build(
        ConfigBuilder::new()
            .space("ops", Space::dry_run())
            .space("dev", Space::dry_run()),
    );
    let log = config.dir.path().join("kabar.log");
    let kabar = KabarProcess::spawn_json_logs(&config.path, &log);
    for space in ["ops", "dev"] {
        let (status, body) = post_alerts(
            &kabar.url(&format!("/alerts/{space}")),
            &notification(space, &[("Spanned", "firing")]),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let deadline = std::time::Instant::now() + WAIT;
    while kabar.logs().matches("dry run, would post").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", kabar.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = kabar.logs();
    let mut spaces_seen = Vec::new();
    for line in logs.lines() {
        let event: Value = serde_json::from_str(line).expect("every line is JSON");
        let message = event["fields"]["message"].as_str().unwrap_or("");
        if message.starts_with("dry run, would post") || message == "sender started" {
            let space = event["fields"]["space"]
                .as_str()
                .expect("the line names its space");
            assert_eq!(event["span"]["name"], "sender", "{line}");
            assert_eq!(event["span"]["space"], space, "{line}");
            spaces_seen.push(space.to_owned());
        }
    }
    spaces_seen.sort();
    assert_eq!(spaces_seen, ["dev", "dev", "ops", "ops"], "{logs}");
}
