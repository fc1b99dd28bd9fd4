//! `kabar store copy` (the real binary): a single-replica SQLite store with a queue, open
//! episodes, a per_group thread, an app episode's state and a dead letter moves into
//! PostgreSQL; replicas on it deliver the queue in order and continue every thread. A non-empty target, a running
//! source and a config without PostgreSQL are refused; the password is never printed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::config::{ConfigBuilder, Space};
use crate::common::fake_chat::{Failure, FakeChat, Mode};
use crate::common::kabar::{
    InProcess, KabarProcess, TestConfig, dead_letters_cli, notification, post_alerts,
    stored_dead_letters, wait_for_metric,
};
use crate::common::postgres::{PgCluster, TEST_PASSWORD};

const WAIT: Duration = Duration::from_secs(30);

struct CopyOutput {
    success: bool,
    stdout: String,
    stderr: String,
}

async fn store_copy(config: &Path, from: &Path, force: bool) -> CopyOutput {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kabar"));
    command
        .args(["store", "copy", "--config"])
        .arg(config)
        .arg("--from-sqlite")
        .arg(from);
    if force {
        command.arg("--force");
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run kabar store copy");
    let out = CopyOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    for text in [&out.stdout, &out.stderr] {
        assert!(
            !text.contains(TEST_PASSWORD),
            "the password was printed: {text}"
        );
    }
    out
}

fn spaces(chat: &FakeChat, config: ConfigBuilder) -> ConfigBuilder {
    config
        .allow_any_host()
        .rate_limit_per_second(50.0)
        .backoff("50ms", "200ms")
        .default_format("text")
        .space("ops", Space::webhook(&chat.webhook_url("ops")))
        .space(
            "team",
            Space::webhook(&chat.webhook_url("team")).threading("per_group"),
        )
        .space("rejects", Space::webhook(&chat.webhook_url("rejects")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_moves_into_postgres_and_its_threads_continue() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    // Chat is down while the single replica takes notifications in: they stay queued.
    chat.set_mode(Some("ops"), Mode::Fail(Failure::status(503)));
    chat.set_mode(Some("team"), Mode::Fail(Failure::status(503)));
    // And one space's message is refused for good: a dead letter to carry over.
    chat.set_mode(Some("rejects"), Mode::Fail(Failure::status(400)));
    let sqlite = TestConfig::build(spaces(&chat, ConfigBuilder::new().store_sqlite()));
    // A real process: serve holds the state_dir lock the copy must respect.
    let single = KabarProcess::spawn(&sqlite.path, &sqlite.dir.path().join("kabar.log"));
    let (code, _) = post_alerts(
        &single.url("/alerts"),
        &notification("rejects", &[("Doomed", "firing")]),
    )
    .await;
    assert_eq!(code, 200);
    wait_for_metric(
        &single.url(""),
        "kabar_dead_letters{space=\"rejects\"}",
        1.0,
        WAIT,
    )
    .await;
    for name in ["Copy1", "Copy2", "Copy3"] {
        let (code, _) = post_alerts(
            &single.url("/alerts"),
            &notification("ops", &[(name, "firing")]),
        )
        .await;
        assert_eq!(code, 200);
    }
    let (code, _) = post_alerts(
        &single.url("/alerts"),
        &notification("team", &[("Grouped1", "firing"), ("Grouped2", "firing")]),
    )
    .await;
    assert_eq!(code, 200);
    let state_dir = sqlite.state_dir();

    // While the single replica runs, its state_dir is locked: the copy refuses.
    let url = cluster.database();
    let target = TestConfig::build(spaces(
        &chat,
        ConfigBuilder::new().postgres(&url, Some("3s")),
    ));
    let running = store_copy(&target.path, &state_dir, false).await;
    assert!(
        !running.success,
        "copied from a running kabar: {}",
        running.stdout
    );
    assert!(running.stderr.contains("kabar"), "{}", running.stderr);
    single.signal("TERM");
    assert_eq!(
        single.wait_exit(WAIT),
        Some(0),
        "the single replica stops cleanly"
    );
    let before = stored_dead_letters(&sqlite);
    // An app-mode episode's action state (the Chat app's buttons), as the store holds it.
    rusqlite::Connection::open(state_dir.join("kabar.db"))
        .expect("open kabar.db")
        .execute(
            "INSERT INTO app_episodes (episode_id, space, state, seen_ms)
             VALUES ('0123456789abcdef01234567', 'spaces/AAA', '{\"acked_by\":\"a\"}', 42)",
            [],
        )
        .expect("an app episode");

    let copied = store_copy(&target.path, &state_dir, false).await;
    assert!(copied.success, "store copy failed: {}", copied.stderr);
    assert!(
        copied.stdout.contains("queued message(s)")
            && copied.stdout.contains("1 app episode state(s)"),
        "{}",
        copied.stdout
    );
    assert_eq!(
        crate::common::postgres::rows(
            &url,
            "SELECT episode_id, space, state, seen_ms FROM kabar_app_episodes"
        ),
        vec![vec![
            Some("0123456789abcdef01234567".to_owned()),
            Some("spaces/AAA".to_owned()),
            Some(r#"{"acked_by":"a"}"#.to_owned()),
            Some("42".to_owned()),
        ]],
        "the app episode was copied whole"
    );
    // Copying again into the now non-empty database is refused, unless forced.
    let again = store_copy(&target.path, &state_dir, false).await;
    assert!(!again.success);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    let dead = stored_dead_letters(&target);
    assert_eq!(dead.len(), before.len(), "dead letters copied: {dead:?}");

    // A replica on PostgreSQL delivers the copied queue, in order, once Chat is back.
    chat.reset_modes();
    let replica = InProcess::start(target).await;
    let ops = chat.wait_for_messages("ops", 3, WAIT).await;
    let texts: Vec<String> = ops
        .iter()
        .map(|m| m.text.clone().unwrap_or_default())
        .collect();
    let position = |name: &str| texts.iter().position(|t| t.contains(name));
    assert!(
        position("Copy1") < position("Copy2") && position("Copy2") < position("Copy3"),
        "{texts:?}"
    );
    assert!(position("Copy1").is_some(), "{texts:?}");
    assert!(
        chat.messages("rejects").is_empty(),
        "a dead letter was sent"
    );
    chat.wait_for_messages("team", 1, WAIT).await;

    // The copied episodes continue: a resolve is a reply in the alert's thread, not a
    // new firing message, and the group's thread takes its resolve too.
    let (code, _) = post_alerts(
        &replica.url("/alerts"),
        &notification("ops", &[("Copy2", "resolved")]),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = post_alerts(
        &replica.url("/alerts"),
        &notification(
            "team",
            &[("Grouped1", "resolved"), ("Grouped2", "resolved")],
        ),
    )
    .await;
    assert_eq!(code, 200);
    wait_for_metric(
        &replica.url(""),
        "kabar_outbox_messages{space=\"team\"}",
        0.0,
        WAIT,
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let threads = chat.threads("ops");
        let copy2: Vec<_> = threads
            .iter()
            .filter(|t| {
                t.messages
                    .iter()
                    .any(|m| m.text.as_deref().unwrap_or("").contains("Copy2"))
            })
            .collect();
        if copy2.len() == 1 && copy2[0].messages.len() == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Copy2's resolve is not a reply in its thread:\n{}",
            chat.describe("ops")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let team = chat.threads("team");
    assert_eq!(
        team.len(),
        1,
        "the group kept one thread:\n{}",
        chat.describe("team")
    );

    // The dead letter is there for the CLI on PostgreSQL too.
    let listed = dead_letters_cli(&replica.config.path, &["list"]).await;
    assert!(listed.success, "{}", listed.stderr);
    assert!(!listed.stdout.contains(TEST_PASSWORD));
    assert_eq!(
        before.len(),
        1,
        "the refused message was dead-lettered before the copy"
    );
    replica.stop().await;
}

#[tokio::test]
async fn copy_needs_a_postgres_config_and_a_source_store() {
    let chat = FakeChat::start().await;
    let sqlite = TestConfig::build(spaces(&chat, ConfigBuilder::new().store_sqlite()));
    let refused = store_copy(&sqlite.path, &sqlite.state_dir(), false).await;
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("store.postgres"),
        "{}",
        refused.stderr
    );
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let target = TestConfig::build(spaces(
        &chat,
        ConfigBuilder::new().postgres(&cluster.database(), None),
    ));
    let empty = tempfile::tempdir().expect("tempdir");
    let missing = store_copy(&target.path, empty.path(), false).await;
    assert!(!missing.success);
    assert!(
        missing.stderr.contains("no kabar store"),
        "{}",
        missing.stderr
    );
}
