//! The real binary as a child process: kill -9 loses nothing acknowledged, SIGTERM stops
//! cleanly, SIGHUP reloads, and no secret reaches the logs.

use std::time::Duration;

use crate::common::config::{ConfigBuilder, Space};
use crate::common::fake_chat::{Failure, FakeChat, Mode};
use crate::common::kabar::{
    KabarProcess, TEST_TOKEN, TestConfig, assert_no_secrets, notification, post_alerts,
};

const WAIT: Duration = Duration::from_secs(30);

fn config_for(chat: &FakeChat) -> TestConfig {
    TestConfig::build(
        ConfigBuilder::new()
            .allow_any_host()
            .rate_limit_per_second(50.0)
            .backoff("100ms", "500ms")
            .default_format("text")
            .space("ops", Space::webhook(&chat.webhook_url("ops"))),
    )
}

fn all_secrets(chat: &FakeChat) -> Vec<String> {
    let mut secrets = chat.secrets();
    secrets.push(TEST_TOKEN.to_owned());
    secrets
}

#[tokio::test]
async fn kill_9_while_chat_fails_loses_nothing_acknowledged() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    chat.set_mode(Some("ops"), Mode::Fail(Failure::status(503)));
    let config = config_for(&chat);
    let log = config.dir.path().join("kabar.log");

    let kabar = KabarProcess::spawn(&config.path, &log);
    let names: Vec<String> = (0..30).map(|i| format!("Crash{i:02}")).collect();
    for name in &names {
        let (status, body) = post_alerts(
            &kabar.url("/alerts"),
            &notification("ops", &[(name, "firing")]),
        )
        .await;
        assert_eq!((status, body["queued"].as_u64()), (200, Some(1)), "{name}");
    }
    chat.wait_for_requests("ops", 3, WAIT).await;
    kabar.kill_9();

    // While kabar is down Chat recovers; the restarted kabar drains the queue from disk.
    chat.set_mode(Some("ops"), Mode::Normal);
    let kabar = KabarProcess::spawn(&config.path, &log);
    let messages = chat.wait_for_messages("ops", names.len(), WAIT).await;
    for name in &names {
        let count = messages
            .iter()
            .filter(|m| {
                m.text
                    .as_deref()
                    .unwrap_or("")
                    .contains(&format!("*{name}*"))
            })
            .count();
        assert_eq!(count, 1, "{name} delivered exactly once");
    }
    // Acknowledged state survived too: a re-send after the restart posts nothing new.
    let (_, body) = post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[(&names[0], "firing")]),
    )
    .await;
    assert_eq!(body["queued"], 0);
    assert_no_secrets(&kabar.logs(), &all_secrets(&chat));
}

#[tokio::test]
async fn kill_9_during_a_burst_then_restart_delivers_every_acknowledged_alert() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let config = config_for(&chat);
    let log = config.dir.path().join("kabar.log");
    let kabar = KabarProcess::spawn(&config.path, &log);
    let url = kabar.url("/alerts");

    // Fire requests concurrently and kill kabar while they are in flight, once a few
    // have been acknowledged.
    let acked_so_far = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let posts: Vec<_> = (0..60)
        .map(|i| {
            let url = url.clone();
            let acked_so_far = acked_so_far.clone();
            tokio::spawn(async move {
                let name = format!("Burst{i:02}");
                let body = notification("ops", &[(&name, "firing")]);
                let acked = reqwest::Client::new()
                    .post(&url)
                    .bearer_auth(TEST_TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16() == 200)
                    .unwrap_or(false);
                if acked {
                    acked_so_far.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                (name, acked)
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while acked_so_far.load(std::sync::atomic::Ordering::SeqCst) < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "kabar acknowledged nothing"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    kabar.kill_9();
    let mut acknowledged = Vec::new();
    for post in posts {
        let (name, acked) = post.await.expect("task");
        if acked {
            acknowledged.push(name);
        }
    }

    eprintln!(
        "{} of 60 requests acknowledged around the kill",
        acknowledged.len()
    );
    let kabar = KabarProcess::spawn(&config.path, &log);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let texts: Vec<String> = chat
            .messages("ops")
            .iter()
            .filter_map(|m| m.text.clone())
            .collect();
        let missing: Vec<&String> = acknowledged
            .iter()
            .filter(|name| !texts.iter().any(|t| t.contains(&format!("*{name}*"))))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acknowledged but never delivered: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(kabar);
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_and_exits_cleanly() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    chat.set_mode(
        Some("ops"),
        Mode::Slow {
            delay: Duration::from_millis(800),
            accept: false,
        },
    );
    let config = config_for(&chat);
    let log = config.dir.path().join("kabar.log");
    let kabar = KabarProcess::spawn(&config.path, &log);
    let (status, _) = post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("Term", "firing")]),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    kabar.signal("TERM");
    let code = tokio::task::spawn_blocking(move || kabar.wait_exit(Duration::from_secs(10)))
        .await
        .expect("wait");
    assert_eq!(code, Some(0));
    let delivered = chat.messages("ops");
    assert_eq!(
        delivered.len(),
        1,
        "the request in flight was finished, not abandoned"
    );
    assert!(
        std::fs::read_to_string(&log)
            .expect("log")
            .contains("stopped")
    );
}

#[tokio::test]
async fn sighup_reloads_and_a_bad_file_keeps_the_old_config() {
    let chat = FakeChat::start().await;
    let config = config_for(&chat);
    let log = config.dir.path().join("kabar.log");
    let kabar = KabarProcess::spawn(&config.path, &log);

    std::fs::write(&config.path, "spaces: [not, a, map]\n").expect("write");
    kabar.signal("HUP");
    kabar
        .wait_for_log("configuration reload failed", WAIT)
        .await;
    let (status, _) = post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("Still", "firing")]),
    )
    .await;
    assert_eq!(status, 200);

    config.rewrite_with(
        ConfigBuilder::new()
            .allow_any_host()
            .space("ops", Space::webhook(&chat.webhook_url("ops")))
            .space("added", Space::dry_run()),
    );
    kabar.signal("HUP");
    kabar.wait_for_log("configuration reloaded", WAIT).await;
    let (status, _) = post_alerts(
        &kabar.url("/alerts/added"),
        &notification("x", &[("New", "firing")]),
    )
    .await;
    assert_eq!(status, 200);
    kabar.wait_for_log("dry run, would post", WAIT).await;
    assert_no_secrets(&kabar.logs(), &all_secrets(&chat));
}

#[test]
fn cli_check_render_and_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("kabar.yaml");
    std::fs::write(
        &config,
        "auth: {bearer_token: cli-s3cret-token}\nspaces:\n  ops:\n    webhook_url: https://chat.googleapis.com/v1/spaces/AAA/messages?key=cli-KEY-123&token=cli-TOKEN-456\n    receivers: [gchat]\n",
    )
    .expect("write");
    let kabar = env!("CARGO_BIN_EXE_kabar");
    let run = |args: &[&str]| {
        std::process::Command::new(kabar)
            .args(args)
            .output()
            .expect("run kabar")
    };
    let secrets = ["cli-s3cret-token", "cli-KEY-123", "cli-TOKEN-456"];

    let out = run(&["check", "--config", config.to_str().expect("path")]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("space ops: webhook on chat.googleapis.com"),
        "{text}"
    );
    for secret in secrets {
        assert!(!text.contains(secret), "check printed a secret");
    }

    let payload = format!(
        "{}/tests/fixtures/alertmanager/firing.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = run(&[
        "render",
        "--config",
        config.to_str().expect("path"),
        "--payload",
        &payload,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rendered: serde_json::Value = serde_json::from_str(&stdout).expect("render prints JSON");
    assert_eq!(
        rendered[0]["threadKey"],
        "kabar:ops:efb0c6c488e007da:2026-11-28T00:52:38Z"
    );
    assert_eq!(
        rendered[0]["body"]["cardsV2"][0]["card"]["header"]["title"], "🔴 DiskFull",
        "a card by default: {}",
        rendered[0]["body"]
    );
    for secret in secrets {
        assert!(!stdout.contains(secret), "render printed a secret");
    }

    std::fs::write(&config, "spaces:\n  ops:\n    webhook_url: https://chat.googleapis.com/v1/spaces/AAA/messages?token=cli-TOKEN-456\n    dry_run: true\n")
        .expect("write");
    let out = run(&["check", "--config", config.to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("spaces.ops"), "{stderr}");
    assert!(!stderr.contains("cli-TOKEN-456"), "{stderr}");

    let out = run(&["--version"]);
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(&format!("kabar {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(version.contains("revision"), "{version}");
}
