//! Several kabar replicas on one PostgreSQL: migrations run once, each space has one sender,
//! HA copies post once, and kill -9, SIGSTOP and a PostgreSQL restart lose nothing acknowledged.
//!
//! Each test runs real `kabar serve` processes with a 3 s lease against the fake Chat on
//! 127.0.0.1 and checks the delivery guarantee from the fake's side: every acknowledged
//! message posted (or dead-lettered), duplicates and pacing violations counted against what
//! docs/reliability.md allows per event, and no PostgreSQL password or webhook secret in any
//! log line or error body. Without PostgreSQL installed the tests print SKIPPED and pass.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::config::{ConfigBuilder, Space};
use crate::common::fake_chat::{Failure, FakeChat, Mode, RequestRecord};
use crate::common::kabar::{
    CliOutput, KabarProcess, TEST_TOKEN, TestConfig, assert_no_secrets, client, dead_letters_cli,
    metrics_text, notification, stored_dead_letters,
};
use crate::common::logscan::{assert_logs_clean, encoded_forms};
use crate::common::postgres::{PgCluster, TEST_PASSWORD, rows};
use serde_json::Value;

const LEASE: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(40);
/// Requests to one space closer than 95% of kabar's interval break its pacing (the fake's
/// clock is not kabar's, hence a little tolerance).
fn pacing(rate_per_second: f64) -> Duration {
    Duration::from_secs_f64(0.95 / rate_per_second)
}
/// The pace of the takeover tests: slower than a takeover (lease 3 s), so a new holder
/// that ignored the stored time of the last answer would send too early.
const SLOW_RATE: f64 = 0.2;

/// One `kabar serve` of the fleet, with its own config file and log.
struct Replica {
    config: TestConfig,
    process: Option<KabarProcess>,
}

impl Replica {
    fn log_path(&self) -> PathBuf {
        self.config.dir.path().join("kabar.log")
    }

    fn process(&self) -> &KabarProcess {
        self.process.as_ref().expect("the replica is running")
    }

    fn url(&self, path: &str) -> String {
        self.process().url(path)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// The config every replica of a fleet shares: the database, a 3 s lease, fast backoff,
/// text messages, no reminders, and a space per (name, webhook URL).
fn fleet_config(
    url: &str,
    spaces: &[(String, String)],
    tune: impl Fn(ConfigBuilder) -> ConfigBuilder,
) -> ConfigBuilder {
    let base = ConfigBuilder::new()
        .postgres(url, Some("3s"))
        .allow_any_host()
        .backoff("50ms", "500ms")
        .default_format("text")
        .default_reminder_interval("0s");
    spaces.iter().fold(tune(base), |config, (name, webhook)| {
        config.space(name, Space::webhook(webhook))
    })
}

/// `n` replicas started at once (each waits for its own "listening" line), all ready.
async fn start_fleet(n: usize, config: &ConfigBuilder, url: &str) -> Vec<Replica> {
    let configs: Vec<TestConfig> = (0..n)
        .map(|_| {
            let mut built = TestConfig::build(config.clone());
            // The builder's own store: tell the helpers which database to read.
            built.store_url = Some(url.to_owned());
            built
        })
        .collect();
    let mut replicas: Vec<Replica> = std::thread::scope(|scope| {
        let started: Vec<_> = configs
            .into_iter()
            .map(|config| {
                scope.spawn(move || {
                    let log = config.dir.path().join("kabar.log");
                    let process = KabarProcess::spawn(&config.path, &log);
                    Replica {
                        config,
                        process: Some(process),
                    }
                })
            })
            .collect();
        started
            .into_iter()
            .map(|handle| handle.join().expect("a replica starts"))
            .collect()
    });
    for replica in &mut replicas {
        wait_ready(replica, true).await;
    }
    replicas
}

/// Waits until /readyz answers 200 (`ready`) or 503 (not); the last answer's body.
async fn wait_ready(replica: &Replica, ready: bool) -> String {
    let want = if ready { 200 } else { 503 };
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = client().get(replica.url("/readyz")).send().await;
        if let Ok(answer) = answer {
            let status = answer.status().as_u16();
            let body = answer.text().await.unwrap_or_default();
            if status == want {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz stayed {status} ({body}), wanted {want}:\n{}",
                replica.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spaces(chat: &FakeChat, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let name = format!("s{i:02}");
            let url = chat.webhook_url(&name);
            (name, url)
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Firing,
    Resolved,
}

impl Kind {
    fn status(self) -> &'static str {
        match self {
            Kind::Firing => "firing",
            Kind::Resolved => "resolved",
        }
    }

    fn marker(self) -> &'static str {
        match self {
            Kind::Firing => "*FIRING*",
            Kind::Resolved => "*RESOLVED*",
        }
    }
}

/// A message kabar acknowledged: (space, alert, kind).
type Acked = (String, String, Kind);

/// Posts one alert's notification to `base`; its HTTP status and answer.
async fn post(base: &str, space: &str, alert: &str, kind: Kind) -> (u16, Value, Option<String>) {
    let body = notification(space, &[(alert, kind.status())]);
    let Ok(response) = client()
        .post(format!("{base}/alerts"))
        .bearer_auth(TEST_TOKEN)
        .json(&body)
        .send()
        .await
    else {
        return (0, Value::Null, None);
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json, retry_after)
}

/// Posts and insists on a 200 that queued one message.
async fn post_acked(base: &str, space: &str, alert: &str, kind: Kind) -> Acked {
    let (status, answer, _) = post(base, space, alert, kind).await;
    assert_eq!(status, 200, "{space} {alert} {kind:?}: {answer}");
    assert_eq!(answer["queued"], 1, "{space} {alert} {kind:?}: {answer}");
    (space.to_owned(), alert.to_owned(), kind)
}

fn is_message_for(text: &str, alert: &str, kind: Kind) -> bool {
    text.contains(kind.marker()) && text.contains(&format!("*{alert}*"))
}

/// Waits until every acknowledged message is in Chat (or, with `allow_dead`, dead-lettered),
/// checks order within each thread (no firing after its resolved reply, one alert per
/// thread) and answers the duplicates per space.
async fn verify(
    chat: &FakeChat,
    config: &TestConfig,
    acked: &[Acked],
    allow_dead: bool,
) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + WAIT;
    loop {
        let dead: Vec<String> = if allow_dead {
            stored_dead_letters(config)
                .into_iter()
                .map(|d| d.body)
                .collect()
        } else {
            Vec::new()
        };
        let missing: Vec<&Acked> = acked
            .iter()
            .filter(|(space, alert, kind)| {
                let in_chat = chat
                    .messages(space)
                    .iter()
                    .any(|m| is_message_for(m.text.as_deref().unwrap_or(""), alert, *kind));
                !in_chat && !dead.iter().any(|d| is_message_for(d, alert, *kind))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged message(s) never delivered, e.g. {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            chat.describe(&missing[0].0)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spaces: BTreeSet<&String> = acked.iter().map(|a| &a.0).collect();
    let mut duplicates = BTreeMap::new();
    for space in spaces {
        let of_space: Vec<&Acked> = acked.iter().filter(|a| &a.0 == space).collect();
        let find = |text: &str| {
            of_space
                .iter()
                .find(|(_, alert, kind)| is_message_for(text, alert, *kind))
                .map(|(_, alert, kind)| (alert.clone(), *kind))
        };
        for thread in chat.threads(space) {
            let kinds: Vec<(String, Kind)> = thread
                .messages
                .iter()
                .filter_map(|m| find(m.text.as_deref().unwrap_or("")))
                .collect();
            let alerts: BTreeSet<&String> = kinds.iter().map(|k| &k.0).collect();
            assert!(alerts.len() <= 1, "thread {} mixes {alerts:?}", thread.name);
            if let Some(first_resolved) = kinds.iter().position(|k| k.1 == Kind::Resolved) {
                assert!(
                    kinds[first_resolved..]
                        .iter()
                        .all(|k| k.1 == Kind::Resolved),
                    "space {space}, thread {}: firing after resolved: {kinds:?}",
                    thread.name
                );
            }
        }
        let mut copies: BTreeMap<(String, Kind), usize> = BTreeMap::new();
        for message in chat.messages(space) {
            if let Some(key) = find(message.text.as_deref().unwrap_or("")) {
                *copies.entry(key).or_default() += 1;
            }
        }
        duplicates.insert(space.clone(), copies.values().map(|n| n - 1).sum::<usize>());
    }
    duplicates
}

/// Pairs of consecutive requests to `space` (at or after `from`) closer than the pacing,
/// and 429s among them.
fn pacing_violations(requests: &[RequestRecord], from: Instant, rate: f64) -> usize {
    let mut times: Vec<Instant> = requests
        .iter()
        .filter(|r| r.at >= from)
        .map(|r| r.at)
        .collect();
    times.sort();
    let close = times
        .windows(2)
        .filter(|w| w[1].duration_since(w[0]) < pacing(rate))
        .count();
    close.max(
        requests
            .iter()
            .filter(|r| r.at >= from && r.status == 429)
            .count(),
    )
}

/// The sum of every series of `name` in an exposition.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The spaces whose `kabar_space_lease_held` is 1 in an exposition.
fn held_spaces(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("kabar_space_lease_held{space=\""))
        .filter_map(|rest| {
            let (space, value) = rest.split_once("\"} ")?;
            (value.trim() == "1").then(|| space.to_owned())
        })
        .collect()
}

/// Polls the replicas' metrics until `done` says yes about them (one exposition each).
async fn wait_metrics(
    replicas: &[&Replica],
    what: &str,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut texts = Vec::new();
        for replica in replicas {
            texts.push(metrics_text(&replica.url("")).await);
        }
        if done(&texts) {
            return texts;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never happened; metrics:\n{}",
            texts.join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Until every space is held by exactly one replica: the held sets, per replica.
async fn wait_every_space_held_once(replicas: &[&Replica], n: usize) -> Vec<BTreeSet<String>> {
    let texts = wait_metrics(replicas, "every space held by one replica", |texts| {
        let sets: Vec<BTreeSet<String>> = texts.iter().map(|t| held_spaces(t)).collect();
        let total: usize = sets.iter().map(BTreeSet::len).sum();
        let union: BTreeSet<&String> = sets.iter().flatten().collect();
        total == n && union.len() == n
    })
    .await;
    for text in &texts {
        assert_eq!(
            metric_sum(text, "kabar_spaces_held") as usize,
            held_spaces(text).len(),
            "kabar_spaces_held agrees with kabar_space_lease_held:\n{text}"
        );
    }
    texts.iter().map(|t| held_spaces(t)).collect()
}

/// Every replica's log (and `extra`, e.g. error bodies) holds no secret: the config's
/// bearer token and webhook keys, and the PostgreSQL password in any encoding.
fn logs_clean(replicas: &[Replica], chat: &FakeChat, extra: &str) {
    let password = encoded_forms(TEST_PASSWORD);
    for replica in replicas {
        let logs = replica.logs();
        assert_logs_clean(&logs, &replica.config.path, chat);
        assert_no_secrets(&logs, &password);
    }
    assert_no_secrets(extra, &password);
}

fn cluster() -> Option<&'static PgCluster> {
    PgCluster::shared()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_starting_at_once_migrate_once() {
    let Some(pg) = cluster() else { return };
    let chat = FakeChat::start().await;
    let url = pg.database();
    let config = fleet_config(&url, &spaces(&chat, 2), |c| c);
    let mut replicas = start_fleet(3, &config, &url).await;
    let schema = rows(&url, "SELECT version FROM kabar_schema");
    assert_eq!(schema.len(), 1, "one schema row: {schema:?}");
    let version: i64 = schema[0][0]
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("a version");
    assert!(version >= 1, "{schema:?}");
    logs_clean(&replicas, &chat, "");
    for replica in &mut replicas {
        let process = replica.process.take().expect("running");
        process.signal("TERM");
        let code = tokio::task::spawn_blocking(move || process.wait_exit(Duration::from_secs(15)))
            .await
            .expect("join");
        assert_eq!(code, Some(0));
    }

    // A newer kabar migrated the database: this one refuses it, clearly and without panic.
    rows(
        &url,
        "UPDATE kabar_schema SET version = version + 1 RETURNING 1",
    );
    let path = replicas[0].config.path.clone();
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kabar"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kabar");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for kabar") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kabar serve kept running on a newer schema");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        (status.code(), stderr)
    })
    .await
    .expect("join");
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {stderr}");
    assert!(
        stderr.contains("newer") && stderr.contains(&(version + 1).to_string()),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_no_secrets(&stderr, &encoded_forms(TEST_PASSWORD));
    assert_eq!(
        rows(&url, "SELECT version FROM kabar_schema"),
        vec![vec![Some((version + 1).to_string())]],
        "the refused database is left as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_twenty_spaces() {
    let Some(pg) = cluster() else { return };
    let chat = FakeChat::start().await;
    chat.set_rate_limit(Some(1.0));
    let url = pg.database();
    let spaces = spaces(&chat, 20);
    let config = fleet_config(&url, &spaces, |c| c.rate_limit_per_second(1.0));
    let replicas = start_fleet(3, &config, &url).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_every_space_held_once(&all, spaces.len()).await;
    // The spaces even out over the replicas: each holds at most its share (20 / 3, rounded
    // up), so every replica sends for some, whichever claimed first.
    let texts = wait_metrics(&all, "the spaces spread over the three replicas", |texts| {
        let sets: Vec<BTreeSet<String>> = texts.iter().map(|t| held_spaces(t)).collect();
        let total: usize = sets.iter().map(BTreeSet::len).sum();
        total == spaces.len() && sets.iter().all(|set| (1..=7).contains(&set.len()))
    })
    .await;
    let counts: Vec<usize> = texts.iter().map(|t| held_spaces(t).len()).collect();
    println!("spaces held per replica: {counts:?}");

    let started = Instant::now();
    let mut acked = Vec::new();
    let mut next = 0;
    // Two alerts per space; the first resolves after both fired: 3 messages per space.
    for (kind, alert) in [
        (Kind::Firing, "A"),
        (Kind::Firing, "B"),
        (Kind::Resolved, "A"),
    ] {
        for (space, _) in &spaces {
            let base = replicas[next % replicas.len()].url("");
            next += 1;
            acked.push(post_acked(&base, space, &format!("{alert}{space}"), kind).await);
        }
    }
    let duplicates = verify(&chat, &replicas[0].config, &acked, false).await;
    println!(
        "60 messages over 20 spaces delivered in {:?}",
        started.elapsed()
    );
    for (space, n) in &duplicates {
        assert_eq!(
            *n,
            0,
            "space {space} got a duplicate:\n{}",
            chat.describe(space)
        );
    }
    for (space, _) in &spaces {
        let requests = chat.requests_for(space);
        assert_eq!(requests.len(), 3, "{}", chat.describe(space));
        assert_eq!(
            pacing_violations(&requests, started, 1.0),
            0,
            "space {space} above 1 write/s:\n{}",
            chat.describe(space)
        );
    }
    // Still one holder per space after the traffic.
    wait_every_space_held_once(&all, spaces.len()).await;
    logs_clean(&replicas, &chat, "");
}

mod clicks;
mod copies;
mod takeovers;
