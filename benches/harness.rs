//! The benchmark driver for what criterion cannot measure: it runs the release binary of
//! kabar as a child process against the in-process fake Google Chat of the tests, and
//! measures it from outside (HTTP, /metrics, /proc/PID).
//!
//!   cargo bench --bench harness -- fake-chat --dir D --spaces N [--rate R]
//!       writes D/kabar.yaml (spaces s0..s{N-1} on the fake Chat) and serves until killed
//!   cargo bench --bench harness -- paced --url U --rate R --seconds S [--alerts A] [--spaces N]
//!       open-loop load at R notifications/s of A new alerts; latency from the scheduled send
//!   cargo bench --bench harness -- delivery --spaces N --per-space M
//!       M messages queued per space, then kabar started: delivered/s and CPU per message
//!   cargo bench --bench harness -- sustain --spaces N --seconds S
//!       N notifications/s (1 new alert each, one per space per second) while delivering
//!   cargo bench --bench harness -- startup --messages M [--runs K]
//!       time to /readyz and RSS with M messages queued, K restarts; and idle RSS
//!   cargo bench --bench harness -- takeover --postgres URL [--spaces N] [--lease 5s]
//!       three replicas delivering; kill -9 of the one holding most spaces: time from its
//!       death (and from its leases' expiry) to the first delivery by a new holder
//!   cargo bench --bench harness -- events [--seconds S] [--connections C]
//!       the Chat events endpoint: garbage and forged tokens, valid MESSAGE events and
//!       Acknowledge presses, C closed-loop clients for S seconds each
//!
//! With --postgres URL, the kabar-starting commands put the store in that PostgreSQL
//! database (store.postgres) instead of SQLite under the work dir, and delivery takes
//! --replicas N (default 1): that many kabar processes share it.
//!
//! Options shared by the kabar-starting commands: --kabar PATH (default
//! target/release/kabar), --work DIR (state and configs; default bench/work, on the real
//! disk, so commits pay for fsync). bench/run.sh calls these; see bench/README.md.

// The Chat events endpoint under load (needs the tests' fake of Chat's event side).
#[path = "harness/events.rs"]
mod events;

// The integration tests' fake Chat; the benchmarks use part of it.
#[path = "../tests/integration/common/fake_chat.rs"]
#[allow(dead_code)]
mod fake_chat;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::{Value, json};

use kabar::Config;
use kabar::MemoryEpisodes;
use kabar::Notification;
use kabar::Runtime;
use kabar::open_store;
use kabar::preview;
use kabar::{NewMessage, transact};

use fake_chat::{Failure, FakeChat, Mode};

const TOKEN: &str = "kabar-bench-token-5d1c";

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args(HashMap<String, String>);

impl Args {
    fn parse(raw: &[String]) -> Result<Args, Error> {
        let mut map = HashMap::new();
        let mut iter = raw.iter();
        while let Some(key) = iter.next() {
            let Some(name) = key.strip_prefix("--") else {
                return Err(format!("unexpected argument {key:?}").into());
            };
            // cargo bench appends a bare --bench; it takes no value.
            if name == "bench" {
                continue;
            }
            let value = iter
                .next()
                .ok_or_else(|| format!("--{name} needs a value"))?;
            map.insert(name.to_owned(), value.clone());
        }
        Ok(Args(map))
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, Error> {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: cannot parse {v:?}").into()),
        }
    }

    fn path(&self, name: &str, default: &str) -> PathBuf {
        PathBuf::from(self.0.get(name).map_or(default, String::as_str))
    }

    fn required(&self, name: &str) -> Result<String, Error> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| format!("--{name} is required").into())
    }
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = raw.split_first() else {
        eprintln!(
            "usage: harness fake-chat|paced|delivery|sustain|startup|takeover|events [--option value]..."
        );
        std::process::exit(2);
    };
    // `cargo bench` without a command (as in a plain `cargo bench`) runs nothing here.
    if command == "--bench" {
        return;
    }
    let result = Args::parse(rest).and_then(|args| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            match command.as_str() {
                "fake-chat" => serve_fake_chat(&args).await,
                "paced" => paced_command(&args).await,
                "delivery" => delivery(&args).await,
                "sustain" => sustain(&args).await,
                "startup" => startup(&args).await,
                "takeover" => takeover(&args).await,
                "events" => events::events(&args).await,
                other => Err(format!("unknown command {other:?}").into()),
            }
        })
    });
    if let Err(e) = result {
        eprintln!("harness: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// kabar as a child process

fn free_port() -> Result<u16, Error> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes a config with spaces s0..s{n-1} on the fake Chat; returns its path.
fn write_config(
    dir: &Path,
    chat: &FakeChat,
    spaces: usize,
    rate: f64,
    listen: &str,
    store: &Store,
) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(dir)?;
    let mut yaml = format!(
        "listen: \"{listen}\"\nstate_dir: \"{}\"\nauth:\n  bearer_token: \"{TOKEN}\"\n\
         delivery:\n  rate_limit_per_second: {rate}\n  allow_any_host: true\n\
         defaults:\n  format: card\n  threading: per_alert\n{}spaces:\n",
        dir.join("state").display(),
        store.yaml()
    );
    for i in 0..spaces {
        let name = format!("s{i}");
        // The first space also takes POST /alerts (receiver "bench") for the ingest runs.
        let receivers = if i == 0 {
            "bench, s0".to_owned()
        } else {
            name.clone()
        };
        yaml.push_str(&format!(
            "  {name}:\n    webhook_url: \"{}\"\n    receivers: [{receivers}]\n",
            chat.webhook_url(&name)
        ));
    }
    let path = dir.join("kabar.yaml");
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// Where the kabar under test keeps its state.
enum Store {
    Sqlite,
    Postgres { url: String, lease: String },
}

impl Store {
    fn from_args(args: &Args) -> Store {
        match args.0.get("postgres") {
            Some(url) => Store::Postgres {
                url: url.clone(),
                lease: args
                    .0
                    .get("lease")
                    .cloned()
                    .unwrap_or_else(|| "15s".to_owned()),
            },
            None => Store::Sqlite,
        }
    }

    fn yaml(&self) -> String {
        match self {
            Store::Sqlite => String::new(),
            Store::Postgres { url, lease } => {
                format!("store:\n  postgres:\n    url: \"{url}\"\n    lease: {lease}\n")
            }
        }
    }
}

/// The config of one more replica: `config` with its own listen address.
fn replica_config(config: &Path, n: usize) -> Result<PathBuf, Error> {
    let text = std::fs::read_to_string(config)?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let text: String = text
        .lines()
        .map(|line| {
            if line.starts_with("listen: ") {
                format!("listen: \"{listen}\"\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    let path = config.with_file_name(format!("kabar-{n}.yaml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

struct Kabar {
    child: Child,
    base: String,
}

impl Kabar {
    fn spawn(binary: &Path, config: &Path, log: &Path) -> Result<Kabar, Error> {
        let text = std::fs::read_to_string(config)?;
        let listen = text
            .lines()
            .find_map(|l| l.strip_prefix("listen: "))
            .ok_or("config has no listen line")?
            .trim_matches('"')
            .to_owned();
        let child = Command::new(binary)
            .args(["serve", "--config"])
            .arg(config)
            // The default log level (info), as in production.
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log)?))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        Ok(Kabar {
            child,
            base: format!("http://{listen}"),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls /readyz until 200; returns the time from `since`.
    async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        since: Instant,
    ) -> Result<Duration, Error> {
        let deadline = since + Duration::from_secs(120);
        loop {
            if let Ok(response) = http.get(format!("{}/readyz", self.base)).send().await
                && response.status().is_success()
            {
                return Ok(since.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("kabar exited during start-up: {status}").into());
            }
            if Instant::now() > deadline {
                return Err("kabar not ready after 120 s".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn metrics(&self, http: &reqwest::Client) -> Result<String, Error> {
        Ok(http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .text()
            .await?)
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of every series of `name` in a Prometheus exposition.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = stat.rsplit_once(')').ok_or("odd /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).ok_or("no utime")?.parse()?;
    let stime: f64 = fields.get(12).ok_or("no stime")?.parse()?;
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    Ok((utime + stime) / 100.0)
}

/// VmRSS and VmHWM of a process, in MiB.
fn rss_mib(pid: u32) -> Result<(f64, f64), Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64, Error> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| format!("no {name} in /proc status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .ok_or("odd /proc status")?
            .parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------
// Alert payloads

/// A notification of `alerts` firing alerts no earlier request used (by `id`).
fn notification_json(receiver: &str, id: &str, alerts: usize) -> Value {
    let alerts: Vec<Value> = (0..alerts)
        .map(|i| {
            json!({
                "status": "firing",
                "labels": {"alertname": format!("Bench{id}-{i}"), "instance": "db1:9100",
                           "job": "node", "severity": "critical"},
                "annotations": {"summary": "Disk almost full on db1", "description": "/var is 97% full"},
                "startsAt": "2026-11-28T00:52:38Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.local/graph?g0.expr=up",
                "fingerprint": format!("{id}-{i}"),
            })
        })
        .collect();
    json!({
        "version": "4", "receiver": receiver, "status": "firing", "alerts": alerts,
        "groupLabels": {"alertname": format!("Bench{id}")}, "commonLabels": {"job": "node"},
        "commonAnnotations": {}, "externalURL": "http://alertmanager.local:9093",
        "groupKey": format!("{{}}:{{alertname=\"Bench{id}\"}}"), "truncatedAlerts": 0
    })
}

/// Queues `per_space` messages in each space exactly as ingest would have: planned and
/// rendered by kabar's own code, inserted with kabar's outbox functions.
async fn prequeue(config_path: &Path, spaces: usize, per_space: usize) -> Result<(), Error> {
    let runtime = Arc::new(Runtime::load(config_path)?);
    let store = open_store(&runtime.config).await?;
    let now = Timestamp::now();
    let config: &Config = &runtime.config;
    let mut rows = Vec::with_capacity(spaces * per_space);
    // Interleaved by space, as arrivals from many Alertmanager groups would be.
    for n in 0..per_space {
        for s in 0..spaces {
            let name = format!("s{s}");
            let space = config.spaces.get(&name).ok_or("space missing")?;
            let bytes = serde_json::to_vec(&notification_json(&name, &format!("q{s}x{n}"), 1))?;
            let notification = Notification::parse(&bytes)?;
            let preview = preview(
                &mut MemoryEpisodes::default(),
                &runtime,
                space,
                &notification,
                now,
            );
            for message in preview.messages {
                rows.push((
                    message.space,
                    message.kind.as_str(),
                    message.thread_key,
                    message.body,
                    message.fallback_body,
                ));
            }
        }
    }
    let received_ms = now.as_millisecond();
    for chunk in rows.chunks(5_000) {
        let chunk = chunk.to_vec();
        transact(store.as_ref(), move |transaction| {
            for (space, kind, thread_key, body, fallback) in &chunk {
                transaction.enqueue(&NewMessage {
                    space,
                    kind,
                    thread_key: thread_key.as_deref(),
                    body,
                    fallback_body: fallback.as_deref(),
                    received_ms,
                    app: None,
                })?;
            }
            Ok(())
        })
        .await?;
    }
    store.close();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Commands

async fn serve_fake_chat(args: &Args) -> Result<(), Error> {
    let dir = args.path("dir", "bench/work/ingest");
    let spaces: usize = args.get("spaces", 1)?;
    let rate: f64 = args.get("rate", 1.0)?;
    let listen = args.required("listen")?;
    let chat = FakeChat::start().await;
    let config = write_config(&dir, &chat, spaces, rate, &listen, &Store::from_args(args))?;
    println!("{}", config.display());
    // Runs until killed by bench/run.sh.
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

struct PacedResult {
    sent: u64,
    ok: u64,
    failed: u64,
    achieved_rate: f64,
    latencies_ms: Vec<f64>,
}

impl PacedResult {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (self.latencies_ms.len() as f64 - 1.0)).round() as usize;
        self.latencies_ms[rank.min(self.latencies_ms.len() - 1)]
    }

    fn json(&self, rate: f64, alerts: usize) -> Value {
        json!({
            "target_rate": rate, "alerts_per_notification": alerts,
            "sent": self.sent, "ok": self.ok, "failed": self.failed,
            "achieved_rate": (self.achieved_rate * 10.0).round() / 10.0,
            "p50_ms": self.percentile(50.0), "p90_ms": self.percentile(90.0),
            "p99_ms": self.percentile(99.0), "p999_ms": self.percentile(99.9),
            "max_ms": self.latencies_ms.last().copied().unwrap_or(f64::NAN),
        })
    }
}

/// Open-loop load: request `i` is due at `start + i / rate`, whoever sends it. Latency
/// counts from when it was due, not when it left, so a stalled server is not flattered by
/// the load generator waiting for it (coordinated omission).
async fn paced(
    base: &str,
    rate: f64,
    seconds: f64,
    alerts: usize,
    spaces: usize,
    workers: usize,
) -> Result<PacedResult, Error> {
    let total = (rate * seconds).round() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let run = format!("{:x}", Timestamp::now().as_millisecond());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(workers)
        .build()?;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (next, http, run, base) = (
            Arc::clone(&next),
            http.clone(),
            run.clone(),
            base.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut ok, mut failed) = (0u64, 0u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due).await;
                let (url, receiver) = if spaces > 0 {
                    let space = format!("s{}", i as usize % spaces);
                    (format!("{base}/alerts/{space}"), space)
                } else {
                    (format!("{base}/alerts"), "bench".to_owned())
                };
                let body = notification_json(&receiver, &format!("{run}p{i}"), alerts);
                let answer = http.post(url).bearer_auth(TOKEN).json(&body).send().await;
                let answered = tokio::time::Instant::now();
                match answer {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        ok += 1;
                    }
                    _ => failed += 1,
                }
                latencies.push((answered - due).as_secs_f64() * 1000.0);
            }
            (latencies, ok, failed)
        }));
    }
    let mut result = PacedResult {
        sent: total,
        ok: 0,
        failed: 0,
        achieved_rate: 0.0,
        latencies_ms: Vec::with_capacity(total as usize),
    };
    for task in tasks {
        let (latencies, ok, failed) = task.await?;
        result.latencies_ms.extend(latencies);
        result.ok += ok;
        result.failed += failed;
    }
    result.achieved_rate = result.ok as f64 / start.elapsed().as_secs_f64();
    result.latencies_ms.sort_by(f64::total_cmp);
    Ok(result)
}

async fn paced_command(args: &Args) -> Result<(), Error> {
    let url = args.required("url")?;
    let rate: f64 = args.get("rate", 1000.0)?;
    let seconds: f64 = args.get("seconds", 30.0)?;
    let alerts: usize = args.get("alerts", 1)?;
    let spaces: usize = args.get("spaces", 0)?;
    let workers: usize = args.get("connections", 64)?;
    let result = paced(&url, rate, seconds, alerts, spaces, workers).await?;
    println!("{}", result.json(rate, alerts));
    Ok(())
}

/// A fresh work dir (old state removed) and a started fake Chat with a config for it.
async fn setup(
    args: &Args,
    name: &str,
    spaces: usize,
    rate: f64,
) -> Result<(FakeChat, PathBuf, PathBuf), Error> {
    let dir = args.path("work", "bench/work").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let chat = FakeChat::start().await;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let config = write_config(&dir, &chat, spaces, rate, &listen, &Store::from_args(args))?;
    Ok((chat, dir, config))
}

/// Sum of `name` over every replica's /metrics.
async fn fleet_metric(fleet: &[Kabar], http: &reqwest::Client, name: &str) -> Result<f64, Error> {
    let mut sum = 0.0;
    for kabar in fleet {
        sum += metric_sum(&kabar.metrics(http).await?, name);
    }
    Ok(sum)
}

fn fleet_cpu(fleet: &[Kabar]) -> Result<f64, Error> {
    fleet.iter().map(|kabar| cpu_seconds(kabar.pid())).sum()
}

async fn delivery(args: &Args) -> Result<(), Error> {
    let spaces: usize = args.get("spaces", 100)?;
    let per_space: usize = args.get("per-space", 30)?;
    let rate: f64 = args.get("rate", 1.0)?;
    let replicas: usize = args.get("replicas", 1)?;
    let binary = args.path("kabar", "target/release/kabar");
    let (chat, dir, config) = setup(args, &format!("delivery-{spaces}"), spaces, rate).await?;
    if rate > 1.0 {
        chat.set_rate_limit(Some(rate));
    }
    prequeue(&config, spaces, per_space).await?;
    let total = (spaces * per_space) as f64;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut fleet = Vec::with_capacity(replicas);
    for n in 0..replicas {
        let config = if n == 0 {
            config.clone()
        } else {
            replica_config(&config, n)?
        };
        fleet.push(Kabar::spawn(
            &binary,
            &config,
            &dir.join(format!("kabar-{n}.log")),
        )?);
    }
    let mut ready = Duration::ZERO;
    for kabar in &mut fleet {
        ready = ready.max(kabar.wait_ready(&http, started).await?);
    }
    let (t0, cpu0, sent0) = (
        Instant::now(),
        fleet_cpu(&fleet)?,
        fleet_metric(&fleet, &http, "kabar_messages_sent_total").await?,
    );
    let mut per_second = Vec::new();
    let mut last = sent0;
    let deadline = t0 + Duration::from_secs_f64(per_space as f64 / rate * 3.0 + 60.0);
    let sent = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sent = fleet_metric(&fleet, &http, "kabar_messages_sent_total").await?;
        per_second.push(sent - last);
        last = sent;
        if sent >= total || Instant::now() > deadline {
            break sent;
        }
    };
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = fleet_cpu(&fleet)? - cpu0;
    let (mut rss, mut hwm) = (0.0, 0.0);
    for kabar in &fleet {
        let (r, h) = rss_mib(kabar.pid())?;
        rss += r;
        hwm += h;
    }
    let failed = fleet_metric(&fleet, &http, "kabar_messages_failed_total").await?;
    let held: Vec<f64> = {
        let mut held = Vec::new();
        for kabar in &fleet {
            held.push(metric_sum(
                &kabar.metrics(&http).await?,
                "kabar_spaces_held",
            ));
        }
        held
    };
    for kabar in fleet {
        kabar.kill();
    }
    let requests = chat.requests();
    let rate_limited = requests.iter().filter(|r| r.status == 429).count();
    let delivered_in_window = sent - sent0;
    // The window ends at the first poll that saw the queue empty; the rate of the full
    // seconds only (the last one is partial) is what a sustained sender achieves.
    let full: Vec<f64> = per_second
        .iter()
        .copied()
        .take(per_second.len().saturating_sub(1))
        .collect();
    let mut sorted = full.clone();
    let messages = chat.all_messages().len();
    println!(
        "{}",
        json!({
            "spaces": spaces, "rate_limit_per_second": rate, "queued": total,
            "replicas": replicas, "spaces_held": held,
            "delivered": sent, "delivered_in_window": delivered_in_window,
            "window_s": (elapsed * 100.0).round() / 100.0,
            "msgs_per_s": (delivered_in_window / elapsed * 10.0).round() / 10.0,
            "median_msgs_per_s_full_seconds": median(&mut sorted),
            "cpu_s": cpu, "cpu_us_per_msg": (cpu / delivered_in_window * 1e6).round(),
            "cpu_utilisation": (cpu / elapsed * 1000.0).round() / 1000.0,
            "ready_ms": ready.as_millis(), "rss_mib": rss, "hwm_mib": hwm,
            "chat_429": rate_limited, "chat_messages": messages,
            "duplicates": messages as f64 - total,
            "failed_total": failed,
            "per_second": per_second,
        })
    );
    chat.shutdown().await;
    Ok(())
}

/// Three replicas deliver a backlog; the one holding most spaces is killed with SIGKILL.
/// For each space it held: the time from the kill to the first message Chat received for
/// it afterwards (a new holder's first send), and from the lease's expiry (at most
/// `lease` after the kill) to that send. Also duplicates and pacing after the takeover.
async fn takeover(args: &Args) -> Result<(), Error> {
    let spaces: usize = args.get("spaces", 20)?;
    let binary = args.path("kabar", "target/release/kabar");
    let lease: f64 = kabar::config::parse_duration(
        &args
            .0
            .get("lease")
            .cloned()
            .unwrap_or_else(|| "5s".to_owned()),
    )
    .map_err(|e| format!("--lease: {e}"))?
    .as_secs_f64();
    if !matches!(Store::from_args(args), Store::Postgres { .. }) {
        return Err("takeover needs --postgres URL".into());
    }
    let (chat, dir, config) = setup(args, &format!("takeover-{spaces}"), spaces, 1.0).await?;
    let per_space = 60;
    prequeue(&config, spaces, per_space).await?;
    let http = reqwest::Client::new();
    let mut fleet = Vec::new();
    for n in 0..3 {
        let config = if n == 0 {
            config.clone()
        } else {
            replica_config(&config, n)?
        };
        fleet.push(Kabar::spawn(
            &binary,
            &config,
            &dir.join(format!("kabar-{n}.log")),
        )?);
    }
    for kabar in &mut fleet {
        kabar.wait_ready(&http, Instant::now()).await?;
    }
    // Let the leases settle and delivery run for a while.
    tokio::time::sleep(Duration::from_secs_f64(lease + 3.0)).await;
    let mut holdings = Vec::new();
    for kabar in &fleet {
        let text = kabar.metrics(&http).await?;
        let held: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("kabar_space_lease_held{") && l.ends_with(" 1"))
            .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
            .collect();
        holdings.push(held);
    }
    let (victim, held) = holdings
        .iter()
        .enumerate()
        .max_by_key(|(_, held)| held.len())
        .map(|(n, held)| (n, held.clone()))
        .ok_or("no replica")?;
    let killed_at = std::time::Instant::now();
    fleet.remove(victim).kill();
    // Wait until every one of its spaces got a message from a new holder.
    let deadline = killed_at + Duration::from_secs_f64(lease * 3.0 + 30.0);
    let firsts = loop {
        let requests = chat.requests();
        let firsts: Vec<Option<Duration>> = held
            .iter()
            .map(|space| {
                requests
                    .iter()
                    .filter(|r| &r.space == space && r.status == 200 && r.at > killed_at)
                    .map(|r| r.at - killed_at)
                    .min()
            })
            .collect();
        if firsts.iter().all(Option::is_some) || std::time::Instant::now() > deadline {
            break firsts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut after_kill: Vec<f64> = firsts.iter().flatten().map(Duration::as_secs_f64).collect();
    after_kill.sort_by(f64::total_cmp);
    // Pacing across the handover: the gap between a space's last send before the kill
    // and the first after it (1/s allows no gap under 1 s).
    let requests = chat.requests();
    let mut min_gap = f64::INFINITY;
    for space in &held {
        let before = requests
            .iter()
            .filter(|r| &r.space == space && r.at <= killed_at)
            .map(|r| r.at)
            .max();
        let after = requests
            .iter()
            .filter(|r| &r.space == space && r.at > killed_at)
            .map(|r| r.at)
            .min();
        if let (Some(before), Some(after)) = (before, after) {
            min_gap = min_gap.min((after - before).as_secs_f64());
        }
    }
    let takeovers = fleet_metric(&fleet, &http, "kabar_lease_takeovers_total").await?;
    for kabar in fleet {
        kabar.kill();
    }
    println!(
        "{}",
        json!({
            "spaces": spaces, "lease_s": lease, "victim_held": held.len(),
            "taken_over": after_kill.len(),
            "kill_to_first_send_s": {
                "min": after_kill.first(), "median": median(&mut after_kill.clone()),
                "max": after_kill.last(),
            },
            "expiry_to_first_send_s_max": after_kill.last().map(|max| (max - lease).max(0.0)),
            "target_s": lease + 2.0,
            "min_gap_across_handover_s": min_gap,
            "survivor_takeovers_total": takeovers,
        })
    );
    chat.shutdown().await;
    Ok(())
}

async fn sustain(args: &Args) -> Result<(), Error> {
    let spaces: usize = args.get("spaces", 1000)?;
    let seconds: f64 = args.get("seconds", 60.0)?;
    let binary = args.path("kabar", "target/release/kabar");
    let (chat, dir, config) = setup(args, &format!("sustain-{spaces}"), spaces, 1.0).await?;
    let http = reqwest::Client::new();
    let mut kabar = Kabar::spawn(&binary, &config, &dir.join("kabar.log"))?;
    kabar.wait_ready(&http, Instant::now()).await?;
    let cpu0 = cpu_seconds(kabar.pid())?;
    let base = kabar.base.clone();
    let rate = spaces as f64;
    let load = tokio::spawn(async move { paced(&base, rate, seconds, 1, spaces, 64).await });
    let t0 = Instant::now();
    let mut samples = Vec::new();
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let text = kabar.metrics(&http).await?;
        samples.push(json!({
            "t_s": t0.elapsed().as_secs(),
            "queued_total": metric_sum(&text, "kabar_messages_queued_total"),
            "sent_total": metric_sum(&text, "kabar_messages_sent_total"),
            "outbox": metric_sum(&text, "kabar_outbox_messages"),
        }));
    }
    let load = load.await??;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(kabar.pid())? - cpu0;
    let text = kabar.metrics(&http).await?;
    let (rss, hwm) = rss_mib(kabar.pid())?;
    kabar.kill();
    let sent = metric_sum(&text, "kabar_messages_sent_total");
    println!(
        "{}",
        json!({
            "spaces": spaces, "seconds": seconds,
            "ingest": load.json(rate, 1),
            "sent": sent, "sent_per_s": (sent / elapsed * 10.0).round() / 10.0,
            "outbox_at_end": metric_sum(&text, "kabar_outbox_messages"),
            "cpu_utilisation": (cpu / elapsed * 1000.0).round() / 1000.0,
            "rss_mib": rss, "hwm_mib": hwm,
            "chat_429": chat.requests().iter().filter(|r| r.status == 429).count(),
            "samples": samples,
        })
    );
    chat.shutdown().await;
    Ok(())
}

async fn startup(args: &Args) -> Result<(), Error> {
    let messages: usize = args.get("messages", 100_000)?;
    let runs: usize = args.get("runs", 5)?;
    let spaces = 100;
    let binary = args.path("kabar", "target/release/kabar");
    let http = reqwest::Client::new();

    // Idle: an empty store, one space, nothing to do.
    let (idle_chat, idle_dir, idle_config) = setup(args, "idle", 1, 1.0).await?;
    let mut idle_rss = Vec::new();
    let mut empty_ready = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut kabar = Kabar::spawn(&binary, &idle_config, &idle_dir.join("kabar.log"))?;
        empty_ready.push(kabar.wait_ready(&http, started).await?.as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_secs(3)).await;
        idle_rss.push(rss_mib(kabar.pid())?.0);
        kabar.kill();
    }
    idle_chat.shutdown().await;

    // Queued: every request fails with 503 so nothing leaves the queue between restarts.
    let (chat, dir, config) = setup(args, "startup", spaces, 1.0).await?;
    chat.set_mode(None, Mode::Fail(Failure::status(503)));
    prequeue(&config, spaces, messages / spaces).await?;
    let mut ready_ms = Vec::new();
    let mut rss_ready = Vec::new();
    let mut rss_settled = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut kabar = Kabar::spawn(&binary, &config, &dir.join("kabar.log"))?;
        ready_ms.push(kabar.wait_ready(&http, started).await?.as_secs_f64() * 1000.0);
        rss_ready.push(rss_mib(kabar.pid())?.0);
        tokio::time::sleep(Duration::from_secs(5)).await;
        rss_settled.push(rss_mib(kabar.pid())?.0);
        let text = kabar.metrics(&http).await?;
        let queued = metric_sum(&text, "kabar_outbox_messages");
        if queued < (messages / spaces * spaces) as f64 {
            return Err(format!("only {queued} messages queued; expected {messages}").into());
        }
        // SIGKILL, as a crash would: the next start finds the queue as it was.
        kabar.kill();
    }
    chat.shutdown().await;
    println!(
        "{}",
        json!({
            "runs": runs,
            "idle_rss_mib_median": median(&mut idle_rss),
            "empty_ready_ms_median": median(&mut empty_ready),
            "queued_messages": messages / spaces * spaces, "queued_spaces": spaces,
            "queued_ready_ms_median": median(&mut ready_ms.clone()),
            "queued_ready_ms": ready_ms,
            "queued_rss_at_ready_mib_median": median(&mut rss_ready),
            "queued_rss_after_5s_mib_median": median(&mut rss_settled),
        })
    );
    Ok(())
}
