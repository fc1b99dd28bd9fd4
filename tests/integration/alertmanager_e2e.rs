//! End to end: the real Alertmanager → kabar → the fake Chat.
//!
//! Needs Debian's prometheus-alertmanager. Without it these tests say SKIPPED loudly;
//! with KABAR_REQUIRE_E2E=1 (CI) a missing binary fails them.

use std::time::Duration;

use serde_json::json;

use crate::common::alertmanager::{
    Alertmanager, AlertmanagerBinaries, AlertmanagerOptions, TestAlert, require_binaries,
};
use crate::common::config::{ConfigBuilder, Space};
use crate::common::fake_chat::FakeChat;
use crate::common::kabar::{
    InProcess, TEST_TOKEN, TestConfig, age_recorded_resolves, metric_value, metrics_text,
};

const WAIT: Duration = Duration::from_secs(30);

fn kabar_config(chat: &FakeChat) -> TestConfig {
    kabar_config_with(chat, ConfigBuilder::new(), |space| space)
}

/// One space "ops" for receiver gchat on top of `base` (e.g. its auth), shaped by `space`.
fn kabar_config_with(
    chat: &FakeChat,
    base: ConfigBuilder,
    space: impl FnOnce(Space) -> Space,
) -> TestConfig {
    let ops = Space::webhook(&chat.webhook_url("ops")).receivers(&["gchat"]);
    TestConfig::build(base.allow_any_host().space("ops", space(ops)))
}

fn disk_alerts(hosts: &[&str]) -> Vec<TestAlert> {
    hosts
        .iter()
        .map(|host| {
            TestAlert::new("DiskFull")
                .label("instance", host)
                .label("severity", "critical")
                .annotation("summary", &format!("Disk almost full on {host}"))
        })
        .collect()
}

/// Waits until Alertmanager has sent `more` notifications beyond those received so far.
async fn wait_for_more_notifications(kabar: &InProcess, more: f64) {
    let metrics = metrics_text(&kabar.url("")).await;
    let so_far = metric_value(
        &metrics,
        "kabar_notifications_received_total{space=\"ops\"}",
    )
    .unwrap_or(0.0);
    wait_for_notifications(kabar, so_far + more).await;
}

/// Alertmanager sending to `kabar` with its test token; `repeat_interval` "1s" re-sends
/// an unchanged group on every group_interval tick (2 s).
async fn alertmanager_for(
    binaries: &AlertmanagerBinaries,
    kabar: &InProcess,
    repeat_interval: &'static str,
) -> Alertmanager {
    let mut options = AlertmanagerOptions::new(kabar.url("/alerts"));
    options.bearer_token = Some(TEST_TOKEN.to_owned());
    options.repeat_interval = repeat_interval;
    Alertmanager::start(binaries, options).await
}

async fn wait_for_notifications(kabar: &InProcess, at_least: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = metrics_text(&kabar.url("")).await;
        let received = metric_value(
            &metrics,
            "kabar_notifications_received_total{space=\"ops\"}",
        )
        .unwrap_or(0.0);
        if received >= at_least {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Alertmanager sent only {received} notifications, expected {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn group_fires_one_resolves_and_resends_post_only_what_changed() {
    let Some(binaries) = require_binaries() else {
        return;
    };
    let chat = FakeChat::start().await;
    let kabar = InProcess::start(kabar_config(&chat)).await;
    let am = alertmanager_for(&binaries, &kabar, "1s").await;

    let alerts = disk_alerts(&["db1", "db2", "db3"]);
    am.fire(&alerts).await;
    chat.wait_for_messages("ops", 3, WAIT).await;

    am.resolve(&alerts[1..2]).await;
    chat.wait_for_messages("ops", 4, WAIT).await;
    // Let Alertmanager re-send the group (now two firing, one resolved) a few times.
    wait_for_more_notifications(&kabar, 2.0).await;

    let messages = chat.messages("ops");
    let threads = chat.threads("ops");
    let opened = messages.iter().filter(|m| m.opened_thread).count();
    assert_eq!(
        opened,
        3,
        "three thread-opening messages:\n{}",
        chat.describe("ops")
    );
    assert_eq!(
        messages.len(),
        4,
        "nothing but the resolve was posted again:\n{}",
        chat.describe("ops")
    );
    assert_eq!(threads.len(), 3);
    let db2 = threads
        .iter()
        .find(|t| t.messages[0].shown().contains("db2"))
        .expect("db2's thread");
    assert_eq!(db2.messages.len(), 2, "{}", chat.describe("ops"));
    let reply = &db2.messages[1].body;
    assert_eq!(
        reply["cardsV2"][0]["card"]["header"]["title"], "✅ DiskFull",
        "a resolved card: {reply}"
    );
    assert!(
        chat.requests_for("ops").iter().all(|r| r.status == 200),
        "kabar kept to Chat's rate limit:\n{}",
        chat.describe("ops")
    );
    let metrics = metrics_text(&kabar.url("")).await;
    let unchanged = metric_value(
        &metrics,
        "kabar_alerts_suppressed_total{reason=\"unchanged\",space=\"ops\"}",
    );
    assert!(
        unchanged.is_some_and(|n| n >= 2.0),
        "re-sends were suppressed: {unchanged:?}"
    );
    drop(am);
    kabar.stop().await;
}

#[tokio::test]
async fn basic_auth_from_alertmanager_is_accepted() {
    let Some(binaries) = require_binaries() else {
        return;
    };
    let chat = FakeChat::start().await;
    let kabar = InProcess::start(kabar_config_with(
        &chat,
        ConfigBuilder::new().auth_basic("alertmanager", "pa:ss word"),
        |space| space,
    ))
    .await;
    let mut options = AlertmanagerOptions::new(kabar.url("/alerts"));
    options.basic_auth = Some(("alertmanager".to_owned(), "pa:ss word".to_owned()));
    let am = Alertmanager::start(&binaries, options).await;
    am.fire(&[TestAlert::new("BasicAuth").label("severity", "warning")])
        .await;
    let messages = chat.wait_for_messages("ops", 1, WAIT).await;
    assert!(messages[0].shown().contains("BasicAuth"));
    drop(am);
    kabar.stop().await;
}

#[tokio::test]
async fn per_group_three_fire_one_resolves_two_messages_in_one_thread() {
    let Some(binaries) = require_binaries() else {
        return;
    };
    let chat = FakeChat::start().await;
    let kabar = InProcess::start(kabar_config_with(&chat, ConfigBuilder::new(), |space| {
        space.threading("per_group")
    }))
    .await;
    let am = alertmanager_for(&binaries, &kabar, "1s").await;

    let alerts = disk_alerts(&["db1", "db2", "db3"]);
    am.fire(&alerts).await;
    chat.wait_for_messages("ops", 1, WAIT).await;
    am.resolve(&alerts[1..2]).await;
    chat.wait_for_messages("ops", 2, WAIT).await;
    // Unchanged re-sends of the group post nothing more.
    wait_for_more_notifications(&kabar, 2.0).await;

    let threads = chat.threads("ops");
    assert_eq!(threads.len(), 1, "one thread:\n{}", chat.describe("ops"));
    let messages = &threads[0].messages;
    assert_eq!(messages.len(), 2, "two messages:\n{}", chat.describe("ops"));
    let first = &messages[0].body["cardsV2"][0]["card"];
    assert_eq!(first["header"]["title"], "🔴 3 firing");
    let shown = messages[0].shown();
    for host in ["db1", "db2", "db3"] {
        assert!(shown.contains(host), "{host} listed: {shown}");
    }
    let second = &messages[1].body["cardsV2"][0]["card"];
    assert_eq!(second["header"]["title"], "✅ 1 resolved");
    let shown = messages[1].shown();
    assert!(
        shown.contains("db2") && !shown.contains("db1"),
        "only the change: {shown}"
    );
    drop(am);
    kabar.stop().await;
}

#[tokio::test]
async fn a_storm_posts_one_digest_and_its_alerts_reply_there() {
    let Some(binaries) = require_binaries() else {
        return;
    };
    let chat = FakeChat::start().await;
    let kabar = InProcess::start(kabar_config_with(&chat, ConfigBuilder::new(), |space| {
        space.option("max_new_threads_per_notification", json!(2))
    }))
    .await;
    let am = alertmanager_for(&binaries, &kabar, "4h").await;

    let alerts = disk_alerts(&["db1", "db2", "db3", "db4", "db5"]);
    am.fire(&alerts).await;
    let messages = chat.wait_for_messages("ops", 1, WAIT).await;
    let digest = &messages[0];
    assert_eq!(
        digest.body["cardsV2"][0]["card"]["header"]["title"],
        "🚨 5 alerts started firing",
        "{}",
        chat.describe("ops")
    );
    let digest_key = digest.thread_key.clone().expect("the digest has a thread");

    am.resolve(&alerts[2..3]).await;
    chat.wait_for_messages("ops", 2, WAIT).await;
    let threads = chat.threads("ops");
    assert_eq!(
        threads.len(),
        1,
        "no thread per alert:\n{}",
        chat.describe("ops")
    );
    let reply = &threads[0].messages[1];
    assert_eq!(reply.thread_key.as_deref(), Some(digest_key.as_str()));
    assert_eq!(
        reply.body["cardsV2"][0]["card"]["header"]["title"],
        "✅ DiskFull"
    );
    assert!(reply.shown().contains("db3"), "{}", reply.shown());
    let metrics = metrics_text(&kabar.url("")).await;
    assert_eq!(
        metric_value(
            &metrics,
            "kabar_messages_queued_total{kind=\"digest\",space=\"ops\"}"
        ),
        Some(1.0)
    );
    drop(am);
    kabar.stop().await;
}

#[tokio::test]
async fn an_alert_firing_again_with_its_old_start_replies_firing_again() {
    let Some(binaries) = require_binaries() else {
        return;
    };
    let chat = FakeChat::start().await;
    let kabar = InProcess::start(kabar_config_with(&chat, ConfigBuilder::new(), |space| {
        space.format("text")
    }))
    .await;
    let am = alertmanager_for(&binaries, &kabar, "1h").await;
    // A start in the past, as a restarted Prometheus restores it: the same episode each
    // time it is fired (and Alertmanager notifies without waiting for group_wait).
    let started = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(10);
    let alert = disk_alerts(&["db1"])
        .remove(0)
        .starts_at(&started.to_string());

    am.fire(std::slice::from_ref(&alert)).await;
    chat.wait_for_messages("ops", 1, WAIT).await;
    am.resolve(std::slice::from_ref(&alert)).await;
    chat.wait_for_messages("ops", 2, WAIT).await;

    age_recorded_resolves(&kabar.config, 61_000);
    am.fire(std::slice::from_ref(&alert)).await;
    let messages = chat.wait_for_messages("ops", 3, WAIT).await;
    let threads = chat.threads("ops");
    assert_eq!(threads.len(), 1, "{}", chat.describe("ops"));
    let again = messages[2].text.as_deref().unwrap_or("");
    assert!(
        again.starts_with("🔴 *Firing again* · *DiskFull*"),
        "{again}\n{}",
        chat.describe("ops")
    );
    assert!(!messages[2].opened_thread, "a reply in the alert's thread");
}
