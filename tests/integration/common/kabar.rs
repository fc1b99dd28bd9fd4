//! Starting kabar for tests: in-process (the library's `Service`, on a random port) or as
//! a child process of the real binary (for kill -9, signals and log inspection).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::config::ConfigBuilder;
use kabar::Runtime;
use kabar::Service;
use serde_json::Value;

/// The bearer token tests configure on kabar; tests grep logs for it.
pub const TEST_TOKEN: &str = "kabar-test-token-0f9e8d7c";

/// A temp dir with a kabar config whose state_dir is inside it.
pub struct TestConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    /// The PostgreSQL database of this config in the parametrised pass (a rewrite keeps it).
    pub store_url: Option<String>,
}

/// A fresh database on the shared cluster when this pass runs on PostgreSQL.
fn pass_store_url() -> Option<String> {
    if !super::postgres::on_postgres() {
        return None;
    }
    let cluster = super::postgres::PgCluster::shared()
        .expect("KABAR_TEST_STORE=postgres needs PostgreSQL installed");
    Some(cluster.database())
}

impl TestConfig {
    /// `body` is YAML for everything but listen and state_dir (and auth, added unless
    /// `body` has its own).
    pub fn new(body: &str) -> TestConfig {
        let dir = tempfile::tempdir().expect("create a temp dir for kabar");
        let path = dir.path().join("kabar.yaml");
        let auth = if body.contains("auth:") {
            String::new()
        } else {
            format!("auth:\n  bearer_token: {TEST_TOKEN}\n")
        };
        let store_url = if body.contains("store:") {
            None
        } else {
            pass_store_url()
        };
        let store = match &store_url {
            Some(url) => format!("store:\n  postgres:\n    url: '{url}'\n"),
            None => String::new(),
        };
        let text = format!(
            "listen: 127.0.0.1:0\nstate_dir: {}\n{auth}{store}{body}",
            dir.path().join("state").display()
        );
        std::fs::write(&path, text).expect("write kabar config");
        TestConfig {
            dir,
            path,
            store_url,
        }
    }

    /// A config from the builder, listening on a random 127.0.0.1 port with its state_dir
    /// in the temp dir, and the test bearer token unless the builder sets its own auth.
    pub fn build(config: ConfigBuilder) -> TestConfig {
        let dir = tempfile::tempdir().expect("create a temp dir for kabar");
        let path = dir.path().join("kabar.yaml");
        let store_url = if config.has(&["store"]) {
            config.string_at(&["store", "postgres", "url"])
        } else {
            pass_store_url()
        };
        std::fs::write(
            &path,
            Self::complete(config, &dir.path().join("state"), store_url.as_deref()),
        )
        .expect("write kabar config");
        TestConfig {
            dir,
            path,
            store_url,
        }
    }

    /// Replaces the config file with the builder's config (same listen, state_dir, auth,
    /// store).
    pub fn rewrite_with(&self, config: ConfigBuilder) {
        std::fs::write(
            &self.path,
            Self::complete(config, &self.state_dir(), self.store_url.as_deref()),
        )
        .expect("rewrite kabar config");
    }

    fn complete(config: ConfigBuilder, state_dir: &Path, store_url: Option<&str>) -> String {
        let config = if config.has(&["auth"]) {
            config
        } else {
            config.auth_bearer(TEST_TOKEN)
        };
        let config = match store_url {
            Some(url) if !config.has(&["store"]) => config.postgres(url, None),
            _ => config,
        };
        config.listen("127.0.0.1:0").state_dir(state_dir).to_yaml()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn rewrite(&self, body: &str) {
        let fresh = TestConfig::new(body);
        let mut text = std::fs::read_to_string(&fresh.path)
            .expect("read config")
            .replace(
                &fresh.state_dir().display().to_string(),
                &self.state_dir().display().to_string(),
            );
        if let (Some(old), Some(new)) = (&self.store_url, &fresh.store_url) {
            text = text.replace(new.as_str(), old);
        }
        std::fs::write(&self.path, text).expect("rewrite kabar config");
    }
}

/// kabar running inside the test process.
pub struct InProcess {
    pub service: Service,
    pub config: TestConfig,
}

impl InProcess {
    pub async fn start(config: TestConfig) -> InProcess {
        let runtime = Runtime::load(&config.path).expect("test config is valid");
        let service = Service::start(runtime, Some(config.path.clone()))
            .await
            .expect("kabar starts");
        InProcess { service, config }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.service.local_addr())
    }

    pub async fn stop(self) -> TestConfig {
        self.service.shutdown().await.expect("clean shutdown");
        self.config
    }
}

/// An HTTP client for talking to kabar.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build HTTP client")
}

/// POSTs a webhook body with the test token; returns status and JSON body.
pub async fn post_alerts(url: &str, body: &Value) -> (u16, Value) {
    let response = client()
        .post(url)
        .bearer_auth(TEST_TOKEN)
        .json(body)
        .send()
        .await
        .expect("kabar answers");
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(Value::Null);
    (status, json)
}

pub async fn metrics_text(base: &str) -> String {
    client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text")
}

/// The value of one series in a metrics exposition, e.g.
/// `kabar_messages_sent_total{space="ops"}`; labels must be in exposition order.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls /metrics until `series` has `value`; panics with the exposition if it never does.
pub async fn wait_for_metric(base: &str, series: &str, value: f64, timeout: Duration) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let text = metrics_text(base).await;
        if metric_value(&text, series) == Some(value) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {value}; it is {:?}:\n{text}",
            metric_value(&text, series)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An Alertmanager-shaped notification with the given (alertname, status) alerts.
pub fn notification(receiver: &str, alerts: &[(&str, &str)]) -> Value {
    let alerts: Vec<Value> = alerts
        .iter()
        .map(|(name, status)| {
            serde_json::json!({
                "status": status,
                "labels": {"alertname": name, "severity": "critical", "instance": format!("{name}-host")},
                "annotations": {"summary": format!("{name} summary")},
                "startsAt": "2026-11-28T00:52:38Z",
                "endsAt": if *status == "resolved" { "2026-11-28T01:00:00Z" } else { "0001-01-01T00:00:00Z" },
                "generatorURL": "http://prometheus.local/graph",
                "fingerprint": format!("fp{name}"),
            })
        })
        .collect();
    let status = if alerts.iter().any(|a| a["status"] == "firing") {
        "firing"
    } else {
        "resolved"
    };
    serde_json::json!({
        "version": "4", "receiver": receiver, "status": status, "alerts": alerts,
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager.local:9093", "groupKey": format!("{{}}:{{receiver=\"{receiver}\"}}"),
        "truncatedAlerts": 0
    })
}

/// kabar as a child process of the real binary; killed on drop.
pub struct KabarProcess {
    child: Child,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
}

impl KabarProcess {
    /// Starts `kabar serve` and waits until it logs its address.
    pub fn spawn(config: &Path, log_path: &Path) -> KabarProcess {
        KabarProcess::spawn_with(config, log_path, "debug", &[])
    }

    /// `spawn` with `--log-format json`.
    pub fn spawn_json_logs(config: &Path, log_path: &Path) -> KabarProcess {
        KabarProcess::spawn_with_args(config, log_path, "debug", &[], &["--log-format", "json"])
    }

    /// Like `spawn`, with `RUST_LOG` set to `filter` (e.g. to quiet a chatty dependency
    /// while kabar itself logs at debug).
    pub fn spawn_with_log_filter(config: &Path, log_path: &Path, filter: &str) -> KabarProcess {
        KabarProcess::spawn_with(config, log_path, filter, &[])
    }

    /// `spawn` with extra environment variables for the child (HTTPS_PROXY, ...).
    pub fn spawn_with_env(config: &Path, log_path: &Path, envs: &[(&str, &str)]) -> KabarProcess {
        KabarProcess::spawn_with(config, log_path, "debug", envs)
    }

    fn spawn_with(
        config: &Path,
        log_path: &Path,
        filter: &str,
        envs: &[(&str, &str)],
    ) -> KabarProcess {
        KabarProcess::spawn_with_args(config, log_path, filter, envs, &[])
    }

    fn spawn_with_args(
        config: &Path,
        log_path: &Path,
        filter: &str,
        envs: &[(&str, &str)],
        args: &[&str],
    ) -> KabarProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("open kabar log file");
        let start_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let child = Command::new(env!("CARGO_BIN_EXE_kabar"))
            .args(["serve", "--config"])
            .arg(config)
            .args(args)
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn the kabar binary");
        // Owned by the struct from here on, so a failed start still kills and reaps it.
        let mut process = KabarProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_path: log_path.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(log_path) {
                let _ = f.read_to_string(&mut text);
            }
            let text = text.get(start_offset as usize..).unwrap_or("");
            if let Some(addr) = parse_listening(text) {
                process.addr = addr;
                return process;
            }
            let exited = matches!(process.child.try_wait(), Ok(Some(_)));
            assert!(
                !exited && Instant::now() < deadline,
                "kabar did not start (exited: {exited}); log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (TERM, HUP) with the system's kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("kabar did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log if it never does.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} never logged:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for KabarProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_listening(log: &str) -> Option<SocketAddr> {
    let line = log
        .lines()
        .find(|line| line.contains("kabar is listening"))?;
    // Text logs: `addr=127.0.0.1:PORT`; JSON logs: `"addr":"127.0.0.1:PORT"`.
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .map(str::to_owned)
        .or_else(|| {
            let json: Value = serde_json::from_str(line).ok()?;
            json["fields"]["addr"].as_str().map(str::to_owned)
        })
        .and_then(|addr| addr.parse().ok())
}

/// Fails the test if any secret appears in `text`.
pub fn assert_no_secrets(text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a secret ({} characters starting {:?}) appears in the logs",
            secret.len(),
            &secret[..secret.len().min(4)]
        );
    }
}

/// What a kabar command printed, and whether it succeeded.
pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `kabar dead-letters ARGS --config CONFIG` off the async runtime.
pub async fn dead_letters_cli(config: &Path, args: &[&str]) -> CliOutput {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kabar"));
    command
        .arg("dead-letters")
        .args(args)
        .arg("--config")
        .arg(config);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run kabar dead-letters");
    CliOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Moves the resolve times kabar recorded `ms` into the past, as if that long had passed
/// (the re-fire window is 60 s of kabar's clock; tests do not wait a minute).
pub fn age_recorded_resolves(config: &TestConfig, ms: i64) {
    if let Some(url) = &config.store_url {
        let aged = super::postgres::rows(
            url,
            &format!(
                "UPDATE kabar_episodes SET resolved_ms = resolved_ms - {ms} \
                 WHERE resolved_ms IS NOT NULL RETURNING 1"
            ),
        );
        assert_eq!(aged.len(), 1, "one episode has a recorded resolve");
        return;
    }
    let conn =
        rusqlite::Connection::open(config.state_dir().join("kabar.db")).expect("open kabar.db");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    let aged = conn
        .execute(
            "UPDATE episodes SET resolved_ms = resolved_ms - ?1 WHERE resolved_ms IS NOT NULL",
            [ms],
        )
        .expect("age the recorded resolve");
    assert_eq!(aged, 1, "one episode has a recorded resolve");
}

/// Moves every episode's last post, and the notifications recorded against copies, `ms`
/// into the past behind kabar's back: the same notification again is then a reminder
/// without waiting out reminder_interval (1m at least) and the duplicate window.
pub fn age_last_posts(config: &TestConfig, ms: i64) {
    if let Some(url) = &config.store_url {
        let aged = super::postgres::rows(
            url,
            &format!("UPDATE kabar_episodes SET last_post_ms = last_post_ms - {ms} RETURNING 1"),
        );
        assert!(!aged.is_empty(), "there are episodes to age");
        super::postgres::rows(
            url,
            &format!(
                "UPDATE kabar_recent_notifications SET received_ms = received_ms - {ms} RETURNING 1"
            ),
        );
        return;
    }
    let conn =
        rusqlite::Connection::open(config.state_dir().join("kabar.db")).expect("open kabar.db");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    let aged = conn
        .execute("UPDATE episodes SET last_post_ms = last_post_ms - ?1", [ms])
        .expect("age the last posts");
    assert!(aged > 0, "there are episodes to age");
    conn.execute(
        "UPDATE recent_notifications SET received_ms = received_ms - ?1",
        [ms],
    )
    .expect("age the recorded notifications");
}

/// A dead letter as the store holds it, read behind kabar's back.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub space: String,
    pub reason: String,
    pub status: Option<u16>,
    pub body: String,
    pub detail: String,
}

/// The dead letters of the config's store, oldest first, whichever backend it is.
pub fn stored_dead_letters(config: &TestConfig) -> Vec<StoredDeadLetter> {
    if let Some(url) = &config.store_url {
        return super::postgres::rows(
            url,
            "SELECT space, reason, status, body, detail FROM kabar_dead_letters ORDER BY id",
        )
        .into_iter()
        .map(|row| StoredDeadLetter {
            space: row[0].clone().unwrap_or_default(),
            reason: row[1].clone().unwrap_or_default(),
            status: row[2].as_deref().and_then(|s| s.parse().ok()),
            body: row[3].clone().unwrap_or_default(),
            detail: row[4].clone().unwrap_or_default(),
        })
        .collect();
    }
    let path = config.state_dir().join("kabar.db");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open kabar.db read-only");
    let mut statement = conn
        .prepare("SELECT space, reason, status, body, detail FROM dead_letters ORDER BY id")
        .expect("dead_letters table");
    statement
        .query_map([], |row| {
            Ok(StoredDeadLetter {
                space: row.get(0)?,
                reason: row.get(1)?,
                status: row.get(2)?,
                body: row.get(3)?,
                detail: row.get(4)?,
            })
        })
        .expect("query dead letters")
        .collect::<Result<_, _>>()
        .expect("read dead letters")
}
