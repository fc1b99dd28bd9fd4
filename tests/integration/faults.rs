//! The fault suite: kabar (the real binary) against a fake Chat that goes down, rate-limits,
//! fails, rejects and stalls, while kabar itself is killed, stopped and starved of disk.
//!
//! Every scenario checks the delivery guarantee the same way: each notification kabar
//! acknowledged with 200 reaches Chat, in order within its thread, or sits in the
//! `dead_letters` table with its reason; duplicates happen only where Chat accepted a request
//! whose answer was lost, and are counted. Each scenario also scans its logs for secrets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::config::{ConfigBuilder, Space};
use crate::common::fake_chat::{Failure, FakeChat, Mode, RequestRecord};
use crate::common::kabar::{
    KabarProcess, TEST_TOKEN, TestConfig, client, metric_value, metrics_text, notification,
    stored_dead_letters, wait_for_metric,
};
use crate::common::logscan::assert_logs_clean;
use crate::common::tools::tools_required;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// A config with fast backoff so the suite runs in seconds, text messages and no
/// reminders; `tune` changes the delivery settings, `spaces` lists (space, webhook URL).
fn config(
    tune: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
    spaces: &[(&str, String)],
) -> TestConfig {
    let base = ConfigBuilder::new()
        .allow_any_host()
        .backoff("50ms", "500ms")
        .default_format("text")
        .default_reminder_interval("0s");
    let config = spaces.iter().fold(tune(base), |config, (name, url)| {
        config.space(name, Space::webhook(url))
    });
    TestConfig::build(config)
}

fn log_path(config: &TestConfig) -> PathBuf {
    config.dir.path().join("kabar.log")
}

/// What kabar said 200 to: one message per (alert, kind).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Acked {
    space: String,
    alert: String,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Firing,
    Resolved,
}

impl Kind {
    fn marker(self) -> &'static str {
        match self {
            Kind::Firing => "*FIRING*",
            Kind::Resolved => "*RESOLVED*",
        }
    }

    fn status(self) -> &'static str {
        match self {
            Kind::Firing => "firing",
            Kind::Resolved => "resolved",
        }
    }
}

fn is_message_for(text: &str, alert: &str, kind: Kind) -> bool {
    text.contains(kind.marker()) && text.contains(&format!("*{alert}*"))
}

/// Posts one alert's notification; `Some(acked)` on 200 with one message queued, `None` when
/// kabar did not acknowledge (refused, or the connection died with it).
async fn post_one(base: &str, space: &str, alert: &str, kind: Kind) -> Option<Acked> {
    let body = notification(space, &[(alert, kind.status())]);
    let response = client()
        .post(format!("{base}/alerts"))
        .bearer_auth(TEST_TOKEN)
        .json(&body)
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    let answer: Value = response.json().await.ok()?;
    assert_eq!(answer["queued"], 1, "{alert} {kind:?}: {answer}");
    Some(Acked {
        space: space.to_owned(),
        alert: alert.to_owned(),
        kind,
    })
}

/// Posts firing then resolved for each alert, sequentially, all acknowledged.
async fn post_all(base: &str, space: &str, alerts: &[String], resolve: bool) -> Vec<Acked> {
    let mut acked = Vec::new();
    for alert in alerts {
        let kinds: &[Kind] = if resolve {
            &[Kind::Firing, Kind::Resolved]
        } else {
            &[Kind::Firing]
        };
        for kind in kinds {
            let one = post_one(base, space, alert, *kind).await;
            acked.push(one.unwrap_or_else(|| panic!("kabar refused {alert} {kind:?}")));
        }
    }
    acked
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

/// A row of the dead_letters table, read through a read-only connection.
#[derive(Debug)]
struct DeadLetter {
    space: String,
    reason: String,
    status: Option<u16>,
    text: String,
}

fn dead_letters(config: &TestConfig) -> Vec<DeadLetter> {
    stored_dead_letters(config)
        .into_iter()
        .map(|letter| DeadLetter {
            text: serde_json::from_str::<Value>(&letter.body)
                .ok()
                .and_then(|b| b["text"].as_str().map(str::to_owned))
                .unwrap_or(letter.body),
            space: letter.space,
            reason: letter.reason,
            status: letter.status,
        })
        .collect()
}

/// The verdict on one scenario's deliveries.
#[derive(Debug, Default)]
struct Verdict {
    delivered: usize,
    dead_lettered: usize,
    /// Messages Chat holds more than once.
    duplicates: usize,
}

/// Waits until every acknowledged message is in Chat or in the dead letters, then checks
/// order within each thread and counts duplicates. Panics with the evidence otherwise.
async fn verify(chat: &FakeChat, config: &TestConfig, acked: &[Acked]) -> Verdict {
    let deadline = tokio::time::Instant::now() + WAIT;
    let spaces: Vec<String> = {
        let mut s: Vec<String> = acked.iter().map(|a| a.space.clone()).collect();
        s.sort();
        s.dedup();
        s
    };
    loop {
        let dead = dead_letters(config);
        let missing: Vec<&Acked> = acked
            .iter()
            .filter(|a| {
                let in_chat = chat
                    .messages(&a.space)
                    .iter()
                    .any(|m| is_message_for(m.text.as_deref().unwrap_or(""), &a.alert, a.kind));
                let in_dead = dead
                    .iter()
                    .any(|d| d.space == a.space && is_message_for(&d.text, &a.alert, a.kind));
                !in_chat && !in_dead
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let described: String = spaces.iter().map(|s| chat.describe(s)).collect();
            panic!(
                "{} acknowledged message(s) neither delivered nor dead-lettered, e.g. {:?}\n\
                 dead letters: {dead:?}\n{described}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let dead = dead_letters(config);
    let mut verdict = Verdict::default();
    for space in &spaces {
        let space_acked: Vec<&Acked> = acked.iter().filter(|a| &a.space == space).collect();
        // Order within a thread: once a resolved reply is in, no firing message follows.
        for thread in chat.threads(space) {
            let kinds: Vec<(String, Kind)> = thread
                .messages
                .iter()
                .filter_map(|m| {
                    let text = m.text.as_deref().unwrap_or("");
                    space_acked
                        .iter()
                        .find(|a| is_message_for(text, &a.alert, a.kind))
                        .map(|a| (a.alert.clone(), a.kind))
                })
                .collect();
            let mut seen_resolved = false;
            for (alert, kind) in &kinds {
                assert!(
                    !(seen_resolved && *kind == Kind::Firing),
                    "thread {} of {alert}: a firing message after the resolved one: {kinds:?}",
                    thread.name
                );
                seen_resolved |= *kind == Kind::Resolved;
            }
            let alerts: std::collections::BTreeSet<&String> = kinds.iter().map(|k| &k.0).collect();
            assert!(
                alerts.len() <= 1,
                "thread {} mixes alerts {alerts:?}",
                thread.name
            );
        }
        let mut copies: BTreeMap<(String, Kind), usize> = BTreeMap::new();
        for message in chat.messages(space) {
            let text = message.text.as_deref().unwrap_or("");
            if let Some(a) = space_acked
                .iter()
                .find(|a| is_message_for(text, &a.alert, a.kind))
            {
                *copies.entry((a.alert.clone(), a.kind)).or_default() += 1;
            }
        }
        verdict.delivered += copies.len();
        verdict.duplicates += copies.values().map(|n| n - 1).sum::<usize>();
        verdict.dead_lettered += dead.iter().filter(|d| &d.space == space).count();
    }
    verdict
}

/// Requests that reached the fake in any one-second window starting at or after `from`.
fn max_requests_per_second(requests: &[RequestRecord], from: Instant) -> usize {
    let mut times: Vec<Instant> = requests
        .iter()
        .map(|r| r.at)
        .filter(|at| *at >= from)
        .collect();
    times.sort();
    let mut best = 0;
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
            .count();
        best = best.max(in_window);
    }
    best
}

fn logs_clean(config: &TestConfig, chat: &FakeChat) {
    let logs = std::fs::read_to_string(log_path(config)).unwrap_or_default();
    assert_logs_clean(&logs, &config.path, chat);
}

/// SIGTERM, a clean exit, an intact database and no secret in the logs.
async fn stop_cleanly(kabar: KabarProcess, config: &TestConfig, chat: &FakeChat) {
    kabar.signal("TERM");
    let exited = tokio::task::spawn_blocking(move || kabar.wait_exit(Duration::from_secs(15)))
        .await
        .expect("wait for kabar");
    assert_eq!(exited, Some(0));
    if config.store_url.is_none() {
        assert_eq!(integrity_check(&config.state_dir()), "ok");
    }
    logs_clean(config, chat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_down_for_a_while_then_back_delivers_everything_in_order() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    chat.set_mode(None, Mode::Fail(Failure::ResetConnection));
    let config = config(
        |c| c.rate_limit_per_second(50.0),
        &[("ops", chat.webhook_url("ops"))],
    );
    let kabar = KabarProcess::spawn(&config.path, &log_path(&config));
    let acked = post_all(&kabar.url(""), "ops", &names("Down", 10), true).await;
    // Several connection failures in a row, so kabar is deep in its backoff when Chat
    // comes back.
    chat.wait_for_requests("ops", 5, WAIT).await;
    chat.set_mode(None, Mode::Normal);
    let verdict = verify(&chat, &config, &acked).await;
    assert_eq!(verdict.delivered, acked.len());
    assert_eq!(verdict.duplicates, 0, "no answer was lost, so no duplicate");
    let metrics = metrics_text(&kabar.url("")).await;
    assert!(
        metric_value(
            &metrics,
            "kabar_messages_failed_total{reason=\"network\",space=\"ops\"}"
        )
        .unwrap_or(0.0)
            >= 5.0,
        "connection failures are counted:\n{metrics}"
    );
    drop(kabar);
    logs_clean(&config, &chat);
}

/// kabar configured at 5/s against a space that allows 1/s: after the first 429 it must
/// settle to the space's allowance instead of spending most requests on 429s.
async fn rate_limit_storm(retry_after: Option<&str>) {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(Some(1.0));
    chat.set_rate_limit_retry_after(retry_after);
    let config = config(
        |c| c.rate_limit_per_second(5.0).backoff("50ms", "2s"),
        &[("ops", chat.webhook_url("ops"))],
    );
    let kabar = KabarProcess::spawn(&config.path, &log_path(&config));
    let acked = post_all(&kabar.url(""), "ops", &names("Storm", 5), true).await;
    let verdict = verify(&chat, &config, &acked).await;
    assert_eq!((verdict.delivered, verdict.duplicates), (acked.len(), 0));

    let requests = chat.requests_for("ops");
    let first_429 = requests
        .iter()
        .filter(|r| r.status == 429)
        .map(|r| r.at)
        .min()
        .expect("kabar at 5/s against 1/s met a 429");
    let rejected = requests.iter().filter(|r| r.status == 429).count();
    let peak = max_requests_per_second(&requests, first_429);
    eprintln!(
        "rate-limit storm (Retry-After {retry_after:?}): {} requests for {} messages, {rejected} \
         answered 429, at most {peak} request(s) in any second after the first 429",
        requests.len(),
        acked.len()
    );
    assert!(
        peak <= 2,
        "after a 429 kabar must slow to the space's allowance (1/s); it sent {peak} requests \
         in one second:\n{}",
        chat.describe("ops")
    );
    // Halving the pace per 429 finds 1/s from 5/s in three steps; before kabar learned
    // from 429s it spent 36 requests on them for these 10 messages.
    assert!(
        rejected <= 5,
        "kabar keeps hitting the rate limit: {rejected} answers were 429 for {} messages",
        acked.len()
    );
    drop(kabar);
    logs_clean(&config, &chat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_storm_without_retry_after_slows_to_the_allowance() {
    rate_limit_storm(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_storm_with_retry_after_slows_to_the_allowance() {
    rate_limit_storm(Some("1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_503_are_retried_in_order_without_duplicates() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let config = config(
        |c| c.rate_limit_per_second(50.0),
        &[("ops", chat.webhook_url("ops"))],
    );
    let kabar = KabarProcess::spawn(&config.path, &log_path(&config));
    chat.fail_next("ops", 4, Failure::status(503));
    let acked = post_all(&kabar.url(""), "ops", &names("Flaky", 10), true).await;
    // Two more bursts while the queue drains, one of them naming a wait.
    chat.wait_for_messages("ops", 5, WAIT).await;
    chat.fail_next("ops", 5, Failure::status(503));
    chat.wait_for_messages("ops", 10, WAIT).await;
    chat.fail_next(
        "ops",
        3,
        Failure::Status {
            status: 503,
            retry_after: Some("1".to_owned()),
        },
    );
    let verdict = verify(&chat, &config, &acked).await;
    assert_eq!(
        (verdict.delivered, verdict.duplicates, verdict.dead_lettered),
        (acked.len(), 0, 0)
    );
    let failed_503 = chat
        .requests_for("ops")
        .iter()
        .filter(|r| r.status == 503)
        .count();
    assert_eq!(failed_503, 12, "every injected 503 was met by a retry");
    let metrics = metrics_text(&kabar.url("")).await;
    assert_eq!(
        metric_value(
            &metrics,
            "kabar_messages_failed_total{reason=\"serverError\",space=\"ops\"}"
        ),
        Some(12.0)
    );
    drop(kabar);
    logs_clean(&config, &chat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanently_rejected_messages_are_dead_lettered_and_the_space_moves_on() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    // One poisoned message among many in `ops`; `revoked` lost its webhook (403 on all).
    chat.reject_when_text_contains("Poison", 400);
    chat.set_mode(Some("revoked"), Mode::Fail(Failure::status(403)));
    let config = config(
        |c| c.rate_limit_per_second(50.0),
        &[
            ("ops", chat.webhook_url("ops")),
            ("revoked", chat.webhook_url("revoked")),
        ],
    );
    let kabar = KabarProcess::spawn(&config.path, &log_path(&config));
    let base = kabar.url("");
    let mut alerts = names("Good", 10);
    alerts.insert(5, "Poison".to_owned());
    let mut acked = post_all(&base, "ops", &alerts, true).await;
    acked.extend(post_all(&base, "revoked", &names("Gone", 3), true).await);

    let verdict = verify(&chat, &config, &acked).await;
    assert_eq!(verdict.duplicates, 0);
    let dead = dead_letters(&config);
    let summary: Vec<(String, String, Option<u16>)> = dead
        .iter()
        .map(|d| (d.space.clone(), d.reason.clone(), d.status))
        .collect();
    let poison: Vec<_> = dead
        .iter()
        .filter(|d| d.text.contains("*Poison*"))
        .collect();
    assert_eq!(
        poison.len(),
        2,
        "firing and resolved of Poison: {summary:?}"
    );
    assert!(
        poison
            .iter()
            .all(|d| d.space == "ops" && d.reason == "clientError" && d.status == Some(400)),
        "{summary:?}"
    );
    let revoked: Vec<_> = dead.iter().filter(|d| d.space == "revoked").collect();
    assert_eq!(revoked.len(), 6, "{summary:?}");
    assert!(
        revoked
            .iter()
            .all(|d| d.reason == "authError" && d.status == Some(403)),
        "{summary:?}"
    );
    assert_eq!(dead.len(), 8, "nothing else is dead-lettered: {summary:?}");
    // Everything after the poisoned message still went out.
    assert_eq!(chat.messages("ops").len(), 20);
    assert!(chat.messages("revoked").is_empty());

    let metrics = metrics_text(&base).await;
    for (series, value) in [
        (
            "kabar_messages_dead_lettered_total{reason=\"clientError\",space=\"ops\"}",
            2.0,
        ),
        (
            "kabar_messages_dead_lettered_total{reason=\"authError\",space=\"revoked\"}",
            6.0,
        ),
    ] {
        assert_eq!(metric_value(&metrics, series), Some(value), "{series}");
    }
    drop(kabar);
    logs_clean(&config, &chat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_slower_than_request_timeout_are_retried_and_only_lost_answers_duplicate() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let config = config(
        |c| c.rate_limit_per_second(50.0).request_timeout("300ms"),
        &[("ops", chat.webhook_url("ops"))],
    );
    let kabar = KabarProcess::spawn(&config.path, &log_path(&config));
    // First Chat stalls without creating anything, then stalls after creating the message
    // (the answer is lost: kabar cannot know it went through), then recovers.
    chat.set_mode(
        Some("ops"),
        Mode::Slow {
            delay: Duration::from_millis(800),
            accept: false,
        },
    );
    let acked = post_all(&kabar.url(""), "ops", &names("Slow", 5), true).await;
    chat.wait_for_requests("ops", 2, WAIT).await;
    chat.set_mode(
        Some("ops"),
        Mode::Slow {
            delay: Duration::from_millis(800),
            accept: true,
        },
    );
    chat.wait_for_requests("ops", 4, WAIT).await;
    chat.set_mode(Some("ops"), Mode::Normal);

    let verdict = verify(&chat, &config, &acked).await;
    assert_eq!(verdict.delivered, acked.len());
    let lost_answers = chat
        .requests_for("ops")
        .iter()
        .filter(|r| r.status == 0 && r.message_name.is_some())
        .count();
    eprintln!(
        "slow Chat: {lost_answers} message(s) accepted with the answer lost, {} duplicate(s)",
        verdict.duplicates
    );
    assert!(lost_answers >= 1, "the accept-then-stall phase ran");
    assert_eq!(
        verdict.duplicates, lost_answers,
        "duplicates only where Chat accepted a request whose answer was lost"
    );
    let metrics = metrics_text(&kabar.url("")).await;
    assert!(
        metric_value(
            &metrics,
            "kabar_messages_failed_total{reason=\"timeout\",space=\"ops\"}"
        )
        .unwrap_or(0.0)
            >= 3.0,
        "{metrics}"
    );
    drop(kabar);
    logs_clean(&config, &chat);
}

/// The seed for the kill rounds: KABAR_FAULT_SEED if set (to replay a failure), else the
/// clock.
fn fault_seed() -> u64 {
    std::env::var("KABAR_FAULT_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_during_bursts_loses_nothing_acknowledged() {
    let seed = fault_seed();
    eprintln!("kill rounds: seed {seed} (replay with KABAR_FAULT_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let config = config(
        |c| c.rate_limit_per_second(50.0),
        &[("ops", chat.webhook_url("ops"))],
    );
    let log = log_path(&config);
    let rounds = rng.usize(8..=12);
    let mut acked: Vec<Acked> = Vec::new();
    let mut kills = 0;
    for round in 0..rounds {
        let kabar = KabarProcess::spawn(&config.path, &log);
        let base = kabar.url("");
        let done = Arc::new(AtomicUsize::new(0));
        let burst: Vec<_> = (0..12)
            .map(|i| {
                let (base, done) = (base.clone(), Arc::clone(&done));
                let alert = format!("Kill{round:02}x{i:02}");
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for kind in [Kind::Firing, Kind::Resolved] {
                        match post_one(&base, "ops", &alert, kind).await {
                            Some(one) => acked.push(one),
                            None => break,
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    acked
                })
            })
            .collect();
        // Somewhere in the burst: before the first answer, among the posts, or while the
        // sender drains the queue (up to 24 posts per round).
        let after_acks = rng.usize(0..=24);
        let extra = Duration::from_millis(rng.u64(0..30));
        let deadline = tokio::time::Instant::now() + WAIT;
        while done.load(Ordering::SeqCst) < after_acks && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(extra).await;
        kabar.kill_9();
        kills += 1;
        let mut round_acked = 0;
        for task in burst {
            let got = task.await.expect("burst task");
            round_acked += got.len();
            acked.extend(got);
        }
        eprintln!(
            "round {round}: killed {extra:?} after {after_acks} answers, {round_acked} acknowledged, \
             {} delivered so far",
            chat.messages("ops").len()
        );
    }
    let kabar = KabarProcess::spawn(&config.path, &log);
    assert!(!acked.is_empty(), "no round acknowledged anything");
    let verdict = verify(&chat, &config, &acked).await;
    eprintln!(
        "kill rounds (seed {seed}): {kills} kills, {} acknowledged, {} delivered, {} duplicate(s)",
        acked.len(),
        verdict.delivered,
        verdict.duplicates
    );
    assert_eq!(verdict.delivered, acked.len());
    assert!(
        verdict.duplicates <= kills,
        "at most one duplicate per kill (the request in flight): {} > {kills}",
        verdict.duplicates
    );
    drop(kabar);
    logs_clean(&config, &chat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_delivery_finishes_the_request_in_flight_and_loses_nothing() {
    const STALL: Duration = Duration::from_secs(2);
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    chat.set_mode(
        Some("ops"),
        Mode::Slow {
            delay: STALL,
            accept: false,
        },
    );
    let config = config(
        |c| c.rate_limit_per_second(50.0).request_timeout("5s"),
        &[("ops", chat.webhook_url("ops"))],
    );
    let log = log_path(&config);
    let kabar = KabarProcess::spawn(&config.path, &log);
    // On PostgreSQL the sender starts once this replica holds the space's lease.
    wait_for_metric(
        &kabar.url(""),
        "kabar_space_lease_held{space=\"ops\"}",
        1.0,
        WAIT,
    )
    .await;
    let acked = post_all(&kabar.url(""), "ops", &names("Term", 4), true).await;
    // A message is now in flight, stalled at Chat.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let term_at = Instant::now();
    kabar.signal("TERM");
    let code = tokio::task::spawn_blocking(move || kabar.wait_exit(Duration::from_secs(15)))
        .await
        .expect("wait for kabar");
    assert_eq!(code, Some(0), "SIGTERM exits cleanly");
    let requests = chat.requests_for("ops");
    assert!(
        requests
            .iter()
            .any(|r| r.at <= term_at && term_at < r.at + STALL),
        "a request was in flight at SIGTERM:\n{}",
        chat.describe("ops")
    );
    assert!(
        requests.iter().all(|r| r.status == 200) && requests.iter().all(|r| r.at <= term_at),
        "the request in flight was finished, not abandoned, and nothing new was sent after \
         SIGTERM:\n{}",
        chat.describe("ops")
    );

    chat.set_mode(Some("ops"), Mode::Normal);
    let kabar = KabarProcess::spawn(&config.path, &log);
    let verdict = verify(&chat, &config, &acked).await;
    assert_eq!(
        (verdict.delivered, verdict.duplicates),
        (acked.len(), 0),
        "a clean stop sends nothing twice"
    );
    drop(kabar);
    logs_clean(&config, &chat);
}

/// A small tmpfs mounted on a state_dir, so a test can fill it or make it read-only;
/// unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts `size` (e.g. "8m") on `path`. Without the privilege to mount, the test skips
    /// loudly, or fails under KABAR_REQUIRE_E2E/CI (the tools.rs policy).
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("create the state_dir mount point");
        let root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
            })
            .unwrap_or(false);
        let mounted = root
            && Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0755"),
                    "tmpfs",
                ])
                .arg(path)
                .status()
                .is_ok_and(|s| s.success());
        if mounted {
            return Some(Tmpfs {
                path: path.to_owned(),
            });
        }
        let why = if root {
            "mount -t tmpfs failed (no CAP_SYS_ADMIN in this container?)"
        } else {
            "it must run as root to mount a tmpfs"
        };
        assert!(
            !tools_required(),
            "this test needs a small tmpfs as state_dir, but {why} (KABAR_REQUIRE_E2E/CI \
             makes it mandatory)"
        );
        eprintln!(
            "\n==================================================================\n\
             SKIPPED: this test needs a small tmpfs as state_dir, but {why}.\n\
             Run the tests as root, or set KABAR_REQUIRE_E2E=1 to make this fail.\n\
             ==================================================================\n"
        );
        None
    }

    fn remount(&self, options: &str) {
        let output = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "mount -o remount,{options} {:?}: {}",
            self.path,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Writes a file until the filesystem is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path.join("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler file");
        let chunk = vec![0x5a_u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a process still holding a file there cannot keep the mount alive.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn integrity_check(state_dir: &Path) -> String {
    let conn = rusqlite::Connection::open(state_dir.join("kabar.db")).expect("open kabar.db");
    conn.query_row("PRAGMA integrity_check", [], |row| row.get::<_, String>(0))
        .expect("integrity_check runs")
}

/// Posts a notification and returns status, Retry-After and body.
async fn post_raw(base: &str, body: &Value) -> (u16, Option<String>, Value) {
    let response = client()
        .post(format!("{base}/alerts"))
        .bearer_auth(TEST_TOKEN)
        .json(body)
        .send()
        .await
        .expect("kabar answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn readyz(base: &str) -> u16 {
    client()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn wait_ready(base: &str, want: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = readyz(base).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_store_refusal(status: u16, retry_after: Option<&str>, body: &Value) {
    assert_eq!(status, 503, "{body}");
    assert!(
        retry_after.is_some_and(|v| v.parse::<u64>().is_ok()),
        "a 503 names when to retry: {retry_after:?}"
    );
    let (error, hint) = (body["error"].as_str(), body["hint"].as_str());
    assert!(
        error.is_some_and(|e| !e.is_empty()) && hint.is_some_and(|h| h.contains("state_dir")),
        "JSON error with a hint about state_dir: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_dir_full_refuses_with_503_then_recovers_without_losing_or_corrupting() {
    if crate::common::postgres::on_postgres() {
        // The disk under state_dir: PostgreSQL's own faults are postgres_replicas' cases.
        eprintln!("not applicable on PostgreSQL: this test is about SQLite's disk");
        return;
    }
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let config = config(
        |c| c.rate_limit_per_second(50.0),
        &[("ops", chat.webhook_url("ops"))],
    );
    let Some(tmpfs) = Tmpfs::mount(&config.state_dir(), "6m") else {
        return;
    };
    // Chat is down: what kabar acknowledges stays queued on the filling disk.
    chat.set_mode(Some("ops"), Mode::Fail(Failure::status(503)));
    let kabar = KabarProcess::spawn(&config.path, &log_path(&config));
    let base = kabar.url("");
    let mut acked = post_all(&base, "ops", &names("BeforeFull", 5), false).await;

    let filler = tmpfs.fill();
    // Big annotations make each notification need new pages, so the full disk shows even
    // though SQLite reuses the space its WAL already holds.
    let mut refused = None;
    for i in 0..200 {
        let alert = format!("WhileFull{i:03}");
        let mut body = notification("ops", &[(&alert, "firing")]);
        body["alerts"][0]["annotations"]["description"] = Value::from("x".repeat(16 * 1024));
        let (status, retry_after, answer) = post_raw(&base, &body).await;
        if status == 200 {
            acked.push(Acked {
                space: "ops".to_owned(),
                alert,
                kind: Kind::Firing,
            });
        } else {
            refused = Some((status, retry_after, answer));
            break;
        }
    }
    let (status, retry_after, answer) = refused.expect("a full state_dir refuses a write");
    assert_store_refusal(status, retry_after.as_deref(), &answer);
    wait_ready(&base, 503).await;
    let metrics = metrics_text(&base).await;
    assert!(
        metric_value(
            &metrics,
            "kabar_requests_rejected_total{reason=\"storeUnavailable\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    // The gauge that KabarStoreNotWritable alerts on, scraped from the pod while /readyz
    // keeps it out of the Service.
    assert_eq!(
        metric_value(&metrics, "kabar_store_writable"),
        Some(0.0),
        "{metrics}"
    );

    // Space comes back: kabar is ready again, takes new notifications and delivers
    // everything it acknowledged, before and after.
    std::fs::remove_file(&filler).expect("remove the filler");
    wait_ready(&base, 200).await;
    assert_eq!(
        metric_value(&metrics_text(&base).await, "kabar_store_writable"),
        Some(1.0)
    );
    acked.extend(post_all(&base, "ops", &names("AfterFull", 3), false).await);
    chat.set_mode(Some("ops"), Mode::Normal);
    let verdict = verify(&chat, &config, &acked).await;
    assert_eq!((verdict.delivered, verdict.duplicates), (acked.len(), 0));
    stop_cleanly(kabar, &config, &chat).await;
    drop(tmpfs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_dir_read_only_refuses_with_503_then_recovers_without_losing_or_corrupting() {
    if crate::common::postgres::on_postgres() {
        // The disk under state_dir: PostgreSQL's own faults are postgres_replicas' cases.
        eprintln!("not applicable on PostgreSQL: this test is about SQLite's disk");
        return;
    }
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let config = config(
        |c| c.rate_limit_per_second(50.0),
        &[("ops", chat.webhook_url("ops"))],
    );
    let Some(tmpfs) = Tmpfs::mount(&config.state_dir(), "8m") else {
        return;
    };
    chat.set_mode(Some("ops"), Mode::Fail(Failure::status(503)));
    let log = log_path(&config);
    let kabar = KabarProcess::spawn(&config.path, &log);
    let mut acked = post_all(&kabar.url(""), "ops", &names("BeforeRo", 5), false).await;
    // Linux refuses to remount read-only while a file is open for writing, so this is the
    // crash-then-restart story: kabar dies, the disk comes back read-only, kabar restarts.
    kabar.kill_9();
    tmpfs.remount("ro");
    chat.set_mode(Some("ops"), Mode::Normal);
    let kabar = KabarProcess::spawn(&config.path, &log);
    let base = kabar.url("");
    let (status, retry_after, answer) =
        post_raw(&base, &notification("ops", &[("WhileRo", "firing")])).await;
    assert_store_refusal(status, retry_after.as_deref(), &answer);
    assert_eq!(readyz(&base).await, 503);
    let metrics = metrics_text(&base).await;
    assert_eq!(
        metric_value(&metrics, "kabar_store_writable"),
        Some(0.0),
        "{metrics}"
    );
    // Give the sender time to try what it can while the disk is read-only.
    tokio::time::sleep(Duration::from_secs(1)).await;

    kabar.kill_9();
    tmpfs.remount("rw");
    let kabar = KabarProcess::spawn(&config.path, &log);
    let base = kabar.url("");
    wait_ready(&base, 200).await;
    acked.extend(post_all(&base, "ops", &names("AfterRo", 3), false).await);
    let verdict = verify(&chat, &config, &acked).await;
    eprintln!(
        "read-only state_dir: {} delivered, {} duplicate(s)",
        verdict.delivered, verdict.duplicates
    );
    assert_eq!(verdict.delivered, acked.len());
    assert!(
        verdict.duplicates <= 1,
        "at most the one message sent while its delivery could not be recorded"
    );
    stop_cleanly(kabar, &config, &chat).await;
    drop(tmpfs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_down_past_give_up_after_dead_letters_as_expired_and_the_space_recovers() {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    chat.set_mode(Some("ops"), Mode::Fail(Failure::status(503)));
    let config = config(
        |c| c.rate_limit_per_second(50.0).give_up_after("1s"),
        &[("ops", chat.webhook_url("ops"))],
    );
    let kabar = KabarProcess::spawn(&config.path, &log_path(&config));
    let base = kabar.url("");
    let mut acked = post_all(&base, "ops", &names("Expiring", 3), false).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while dead_letters(&config).len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never expired: {:?}",
            dead_letters(&config)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = dead_letters(&config);
    assert!(
        dead.iter()
            .all(|d| d.reason == "expired" && d.status.is_none()),
        "{dead:?}"
    );
    // Chat back: the next notification goes straight out.
    chat.set_mode(Some("ops"), Mode::Normal);
    acked.extend(post_all(&base, "ops", &names("Fresh", 1), false).await);
    let verdict = verify(&chat, &config, &acked).await;
    assert_eq!(
        (verdict.delivered, verdict.dead_lettered, verdict.duplicates),
        (1, 3, 0)
    );
    drop(kabar);
    logs_clean(&config, &chat);
}
