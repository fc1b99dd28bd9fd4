//! `kabar dead-letters` (the real binary) against the store of a running kabar: a revoked
//! webhook dead-letters messages, the operator lists them, fixes Chat, retries them and the
//! running senders deliver them; drop removes them; filters select; no secret is printed.

use std::time::Duration;

use crate::common::config::{ConfigBuilder, Space};
use crate::common::fake_chat::{Failure, FakeChat, Mode};
use crate::common::kabar::{
    InProcess, TEST_TOKEN, TestConfig, assert_no_secrets, dead_letters_cli as cli, metric_value,
    metrics_text, notification, post_alerts, wait_for_metric,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn secrets(chat: &FakeChat) -> Vec<String> {
    let mut all = chat.secrets();
    all.push(TEST_TOKEN.to_owned());
    all
}

async fn wait_dead_letters(base: &str, space: &str, n: f64) {
    wait_for_metric(
        base,
        &format!("kabar_dead_letters{{space=\"{space}\"}}"),
        n,
        WAIT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_webhook_messages_are_listed_retried_and_delivered_by_the_running_kabar() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    chat.set_mode(Some("ops"), Mode::Fail(Failure::status(403)));
    let config = TestConfig::build(
        ConfigBuilder::new()
            .allow_any_host()
            .rate_limit_per_second(50.0)
            .default_format("text")
            .space("ops", Space::webhook(&chat.webhook_url("ops")))
            .space("dev", Space::webhook(&chat.webhook_url("dev"))),
    );
    let kabar = InProcess::start(config).await;
    let path = kabar.config.path.clone();
    let base = kabar.url("");

    for (name, status) in [
        ("Revoked1", "firing"),
        ("Revoked2", "firing"),
        ("Revoked1", "resolved"),
    ] {
        let (code, _) = post_alerts(
            &kabar.url("/alerts"),
            &notification("ops", &[(name, status)]),
        )
        .await;
        assert_eq!(code, 200);
    }
    wait_dead_letters(&base, "ops", 3.0).await;

    let list = cli(&path, &["list"]).await;
    assert!(list.success, "{}", list.stderr);
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("THREAD KEY"),
        "{}",
        list.stdout
    );
    assert_eq!(lines.len(), 5, "header, 3 rows, total:\n{}", list.stdout);
    for row in &lines[1..4] {
        assert!(
            row.contains("ops")
                && row.contains("authError")
                && row.contains("403")
                && row.contains("kabar:ops:"),
            "{row}"
        );
    }
    assert_eq!(lines[4], "3 dead letters");

    let json = cli(&path, &["list", "--json", "--space", "ops"]).await;
    let parsed: Value = serde_json::from_str(&json.stdout).expect("list --json is JSON");
    let kinds: Vec<&str> = parsed
        .as_array()
        .expect("array")
        .iter()
        .map(|l| l["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["firing", "firing", "resolved"]);
    assert!(
        parsed[0]["body"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("Revoked1")
    );
    let ids: Vec<i64> = parsed
        .as_array()
        .expect("array")
        .iter()
        .map(|l| l["id"].as_i64().expect("id"))
        .collect();

    let other = cli(&path, &["list", "--space", "dev"]).await;
    assert_eq!(other.stdout.trim(), "no dead letters");
    let too_recent = cli(&path, &["list", "--older-than", "1h"]).await;
    assert_eq!(too_recent.stdout.trim(), "no dead letters");

    // No filter: refused, and nothing moved.
    let refused = cli(&path, &["retry"]).await;
    assert!(!refused.success);
    assert!(refused.stderr.contains("--all"), "{}", refused.stderr);

    // The webhook is fixed; retry while kabar runs. It cannot be woken from outside, so
    // this also proves the senders find work put in the outbox by another process.
    chat.set_mode(Some("ops"), Mode::Normal);
    let retried = cli(&path, &["retry", "--space", "ops", "--newer-than", "1h"]).await;
    assert!(retried.success, "{}", retried.stderr);
    assert!(
        retried
            .stdout
            .starts_with("3 dead letters moved back to the outbox: ops 3"),
        "{}",
        retried.stdout
    );
    let delivered = chat.wait_for_messages("ops", 3, WAIT).await;
    let texts: Vec<String> = delivered
        .iter()
        .map(|m| m.text.clone().unwrap_or_default())
        .collect();
    assert!(
        texts[0].contains("FIRING") && texts[0].contains("*Revoked1*"),
        "{texts:?}"
    );
    assert!(texts[1].contains("*Revoked2*"), "{texts:?}");
    assert!(
        texts[2].contains("RESOLVED") && texts[2].contains("*Revoked1*"),
        "{texts:?}"
    );
    assert_eq!(
        delivered[2].thread_name, delivered[0].thread_name,
        "the resolved reply still lands in the alert's thread"
    );
    wait_dead_letters(&base, "ops", 0.0).await;

    // Drop: dead-letter two more, drop one by id, then the rest by space.
    chat.set_mode(Some("ops"), Mode::Fail(Failure::status(404)));
    for name in ["Gone1", "Gone2"] {
        post_alerts(
            &kabar.url("/alerts"),
            &notification("ops", &[(name, "firing")]),
        )
        .await;
    }
    wait_dead_letters(&base, "ops", 2.0).await;
    let listed = cli(&path, &["list", "--json"]).await;
    let listed: Value = serde_json::from_str(&listed.stdout).expect("json");
    let first = listed[0]["id"].as_i64().expect("id");
    assert!(
        !ids.contains(&first),
        "retried letters are gone from the table"
    );
    let dropped = cli(&path, &["drop", "--id", &first.to_string()]).await;
    assert!(dropped.success, "{}", dropped.stderr);
    assert_eq!(
        dropped.stdout.trim(),
        format!("1 dead letter deleted: ops 1 (ids {first})")
    );
    wait_dead_letters(&base, "ops", 1.0).await;
    let rest = cli(&path, &["drop", "--all"]).await;
    assert!(
        rest.stdout.starts_with("1 dead letter deleted"),
        "{}",
        rest.stdout
    );
    wait_dead_letters(&base, "ops", 0.0).await;
    chat.set_mode(Some("ops"), Mode::Normal);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        chat.messages("ops").len(),
        3,
        "dropped messages are never sent"
    );
    let metrics = metrics_text(&base).await;
    assert_eq!(
        metric_value(&metrics, "kabar_outbox_messages{space=\"ops\"}"),
        Some(0.0)
    );

    let everything = [list, json, other, refused, retried, dropped, rest];
    for output in &everything {
        assert_no_secrets(&output.stdout, &secrets(&chat));
        assert_no_secrets(&output.stderr, &secrets(&chat));
        assert!(!output.stdout.contains("/v1/spaces/"), "{}", output.stdout);
    }
    kabar.stop().await;
}

#[tokio::test]
async fn the_cli_explains_a_missing_store_and_bad_filters() {
    let config = TestConfig::build(ConfigBuilder::new().space("demo", Space::dry_run()));
    let missing = cli(&config.path, &["list"]).await;
    assert!(!missing.success);
    assert!(
        missing.stderr.contains("no kabar store at"),
        "{}",
        missing.stderr
    );
    let bad = cli(&config.path, &["drop", "--older-than", "yesterday"]).await;
    assert!(!bad.success);
    assert!(
        bad.stderr.contains("--older-than is not a duration"),
        "{}",
        bad.stderr
    );
}
