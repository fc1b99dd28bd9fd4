//! Copies and the shared store: one notification at two replicas (and through an
//! Alertmanager HA pair) posts once; dead letters are listed and retried from any replica.

use super::*;
use crate::common::alertmanager::{Alertmanager, AlertmanagerOptions, TestAlert, require_binaries};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_copies_at_two_replicas_post_once() {
    let Some(pg) = cluster() else { return };
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let url = pg.database();
    let spaces = spaces(&chat, 2);
    let config = fleet_config(&url, &spaces, |c| c.rate_limit_per_second(20.0));
    let replicas = start_fleet(2, &config, &url).await;
    let (a, b) = (replicas[0].url(""), replicas[1].url(""));
    let mut acked = Vec::new();
    for round in 0..8 {
        let space = &spaces[round % spaces.len()].0;
        let alert = format!("Ha{round}");
        for kind in [Kind::Firing, Kind::Resolved] {
            let (left, right) =
                tokio::join!(post(&a, space, &alert, kind), post(&b, space, &alert, kind));
            assert_eq!((left.0, right.0), (200, 200), "{left:?} {right:?}");
            let queued =
                left.1["queued"].as_u64().unwrap_or(9) + right.1["queued"].as_u64().unwrap_or(9);
            assert_eq!(
                queued, 1,
                "one copy queued, one a duplicate: {left:?} {right:?}"
            );
            acked.push((space.clone(), alert.clone(), kind));
        }
    }
    let duplicates = verify(&chat, &replicas[0].config, &acked, false).await;
    assert!(duplicates.values().all(|n| *n == 0), "{duplicates:?}");
    let total: usize = spaces.iter().map(|(s, _)| chat.messages(s).len()).sum();
    assert_eq!(total, acked.len(), "one message per alert and kind");
    logs_clean(&replicas, &chat, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_ha_pair_through_two_replicas() {
    let Some(pg) = cluster() else { return };
    let Some(bins) = require_binaries() else {
        return;
    };
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let url = pg.database();
    let webhook = chat.webhook_url("ops");
    let config = ConfigBuilder::new()
        .postgres(&url, Some("3s"))
        .allow_any_host()
        .backoff("50ms", "500ms")
        .default_format("text")
        .default_reminder_interval("0s")
        .rate_limit_per_second(20.0)
        .space("ops", Space::webhook(&webhook).receivers(&["gchat"]));
    let replicas = start_fleet(2, &config, &url).await;
    let mut managers = Vec::new();
    for replica in &replicas {
        let mut options = AlertmanagerOptions::new(replica.url("/alerts"));
        options.bearer_token = Some(TEST_TOKEN.to_owned());
        managers.push(Alertmanager::start(&bins, options).await);
    }
    let alerts: Vec<TestAlert> = ["PairOne", "PairTwo", "PairThree"]
        .iter()
        .map(|name| {
            TestAlert::new(name)
                .label("severity", "critical")
                .starts_at("2026-12-01T00:00:00Z")
        })
        .collect();
    for manager in &managers {
        manager.fire(&alerts).await;
    }
    let count = |kind: Kind| {
        let messages = chat.messages("ops");
        ["PairOne", "PairTwo", "PairThree"].map(|name| {
            messages
                .iter()
                .filter(|m| is_message_for(m.text.as_deref().unwrap_or(""), name, kind))
                .count()
        })
    };
    // Both Alertmanagers notify each replica once per group: wait for both copies to be
    // received (so a second post would have happened by now), then count.
    let received = |at_least: f64| {
        move |texts: &[String]| {
            texts
                .iter()
                .all(|t| metric_sum(t, "kabar_notifications_received_total") >= at_least)
        }
    };
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_metrics(
        &all,
        "both replicas got the firing notifications",
        received(3.0),
    )
    .await;
    chat.wait_for_messages("ops", 3, WAIT).await;
    for manager in &managers {
        manager.resolve(&alerts).await;
    }
    wait_metrics(
        &all,
        "both replicas got the resolved notifications",
        received(6.0),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while count(Kind::Resolved) != [1, 1, 1] {
        assert!(Instant::now() < deadline, "{}", chat.describe("ops"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both copies were answered, so nothing more is queued: the counts are final.
    wait_metrics(&all, "the outbox drained", |texts| {
        texts
            .iter()
            .all(|t| metric_sum(t, "kabar_outbox_messages") == 0.0)
    })
    .await;
    assert_eq!(count(Kind::Firing), [1, 1, 1], "{}", chat.describe("ops"));
    assert_eq!(count(Kind::Resolved), [1, 1, 1], "{}", chat.describe("ops"));
    logs_clean(&replicas, &chat, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_cli_on_postgres() {
    let Some(pg) = cluster() else { return };
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let url = pg.database();
    let spaces = spaces(&chat, 1);
    let config = fleet_config(&url, &spaces, |c| c.rate_limit_per_second(20.0));
    let replicas = start_fleet(2, &config, &url).await;
    let space = &spaces[0].0;
    chat.set_mode(Some(space), Mode::Fail(Failure::status(400)));
    let acked = vec![post_acked(&replicas[0].url(""), space, "Rejected", Kind::Firing).await];
    let deadline = Instant::now() + WAIT;
    while stored_dead_letters(&replicas[0].config).is_empty() {
        assert!(Instant::now() < deadline, "{}", chat.describe(space));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let letters = stored_dead_letters(&replicas[1].config);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].status, Some(400));

    // Through the other replica's config: the store is shared.
    let CliOutput {
        success,
        stdout,
        stderr,
    } = dead_letters_cli(&replicas[1].config.path, &["list"]).await;
    assert!(success, "{stderr}");
    assert!(
        stdout.contains(space.as_str())
            && stdout.contains("400")
            && stdout.contains("1 dead letter"),
        "{stdout}"
    );
    let mut printed = format!("{stdout}{stderr}");
    chat.set_mode(Some(space), Mode::Normal);
    let retried = dead_letters_cli(&replicas[1].config.path, &["retry", "--space", space]).await;
    assert!(retried.success, "{}", retried.stderr);
    assert!(
        retried.stdout.starts_with("1 dead letter"),
        "{}",
        retried.stdout
    );
    printed.push_str(&retried.stdout);
    printed.push_str(&retried.stderr);
    assert!(stored_dead_letters(&replicas[0].config).is_empty());
    let duplicates = verify(&chat, &replicas[0].config, &acked, false).await;
    assert!(duplicates.values().all(|n| *n == 0), "{duplicates:?}");
    let listed = dead_letters_cli(&replicas[0].config.path, &["list"]).await;
    assert_eq!(listed.stdout.trim(), "no dead letters");
    let mut secrets = crate::common::logscan::config_secrets(&replicas[0].config.path);
    secrets.extend(encoded_forms(TEST_PASSWORD));
    assert_no_secrets(&printed, &secrets);
    logs_clean(&replicas, &chat, &printed);
}

/// A message queued on the replica that does not hold its space wakes the holder's idle
/// sender at once (LISTEN/NOTIFY), well under the senders' 5 s poll: five rounds, each
/// delivered within 2 s of its 200, so a lost wake-up cannot pass by luck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_queued_on_another_replica_wakes_the_idle_holder_at_once() {
    let Some(pg) = cluster() else { return };
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let url = pg.database();
    let spaces = spaces(&chat, 1);
    let config = fleet_config(&url, &spaces, |c| c.rate_limit_per_second(20.0));
    let replicas = start_fleet(2, &config, &url).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    let held = wait_every_space_held_once(&all, 1).await;
    let other = held
        .iter()
        .position(BTreeSet::is_empty)
        .expect("one replica holds nothing");
    let space = &spaces[0].0;
    for round in 0..5 {
        // Idle: past the sender's last read, so only a wake-up (or the 5 s poll) finds it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = chat.messages(space).len();
        let alert = format!("Wake{round}");
        let (status, _, _) = post(&replicas[other].url(""), space, &alert, Kind::Firing).await;
        assert_eq!(status, 200);
        let acked = Instant::now();
        chat.wait_for_messages(space, before + 1, Duration::from_secs(10))
            .await;
        let took = acked.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "round {round}: delivered {took:?} after the 200 at the other replica"
        );
    }
    logs_clean(&replicas, &chat, "");
}
