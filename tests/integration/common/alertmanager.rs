//! Runs the real Prometheus Alertmanager (Debian's 0.25 package) for end-to-end tests: one
//! private, unclustered instance per test on a free loopback port, configured with a single
//! webhook receiver, killed and reaped on drop.
//!
//! Alertmanager is a real process with real timers: with group_wait 1s / group_interval 2s a
//! first notification arrives about 1 s after `fire`, and a change (such as `resolve`) is sent
//! at the group's next interval tick, so waits in tests should allow several seconds.

use std::collections::HashMap;
use std::fs::File;
use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};
use tempfile::TempDir;

/// How long `start` waits for `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Paths of the Alertmanager binaries found on this machine.
#[derive(Debug, Clone)]
pub struct AlertmanagerBinaries {
    pub alertmanager: PathBuf,
}

/// Finds `prometheus-alertmanager` (Debian's name; upstream's `alertmanager` also works) on
/// PATH or in /usr/bin.
///
/// When Alertmanager is missing: panics if `KABAR_REQUIRE_E2E=1` or `CI=true` (so a green CI
/// can never mean "skipped"), otherwise prints a loud warning and returns `None`; the test
/// should then return early.
pub fn require_binaries() -> Option<AlertmanagerBinaries> {
    let alertmanager = super::tools::require_tool(
        &["prometheus-alertmanager", "alertmanager"],
        "prometheus-alertmanager",
    )?;
    Some(AlertmanagerBinaries { alertmanager })
}

/// How the single route and webhook receiver are configured.
#[derive(Debug, Clone)]
pub struct AlertmanagerOptions {
    pub webhook_url: String,
    /// Sent as `Authorization: Bearer <token>` (`http_config.authorization`).
    pub bearer_token: Option<String>,
    /// Sent as HTTP Basic auth (`http_config.basic_auth`). Alertmanager refuses both at once.
    pub basic_auth: Option<(String, String)>,
    /// `[]` puts every alert in one group; `["..."]` groups by all labels.
    pub group_by: Vec<String>,
    pub group_wait: &'static str,
    pub group_interval: &'static str,
    /// Alertmanager 0.25 accepts any non-zero duration ("0s" is refused: "repeat_interval
    /// cannot be zero"). Repeats only happen on group_interval ticks, so the effective period
    /// is repeat_interval rounded up to a multiple of group_interval.
    pub repeat_interval: &'static str,
    pub send_resolved: bool,
    pub receiver: String,
    /// Webhook `max_alerts`: 0 sends all; more are cut and counted in `truncatedAlerts`.
    pub max_alerts: u64,
}

impl AlertmanagerOptions {
    /// Test-friendly defaults: group by alertname, group_wait 1s, group_interval 2s,
    /// repeat_interval 1h (no repeats within a test), send_resolved, receiver "gchat".
    pub fn new(webhook_url: impl Into<String>) -> AlertmanagerOptions {
        AlertmanagerOptions {
            webhook_url: webhook_url.into(),
            bearer_token: None,
            basic_auth: None,
            group_by: vec!["alertname".to_owned()],
            group_wait: "1s",
            group_interval: "2s",
            repeat_interval: "1h",
            send_resolved: true,
            receiver: "gchat".to_owned(),
            max_alerts: 0,
        }
    }

    fn config(&self) -> Value {
        let mut http_config = Map::new();
        if let Some(token) = &self.bearer_token {
            http_config.insert(
                "authorization".into(),
                json!({"type": "Bearer", "credentials": token}),
            );
        }
        if let Some((username, password)) = &self.basic_auth {
            http_config.insert(
                "basic_auth".into(),
                json!({"username": username, "password": password}),
            );
        }
        json!({
            "route": {
                "receiver": self.receiver,
                "group_by": self.group_by,
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [{
                "name": self.receiver,
                "webhook_configs": [{
                    "url": self.webhook_url,
                    "send_resolved": self.send_resolved,
                    "max_alerts": self.max_alerts,
                    "http_config": http_config,
                }],
            }],
        })
    }
}

/// An alert to post to Alertmanager's API.
#[derive(Debug, Clone, Default)]
pub struct TestAlert {
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    /// RFC 3339. `None`: `fire` uses now and `resolve` reuses what `fire` sent. A start
    /// older than group_wait makes Alertmanager notify at once instead of after group_wait.
    pub starts_at: Option<String>,
}

impl TestAlert {
    /// An alert with just the `alertname` label.
    pub fn new(alertname: &str) -> TestAlert {
        TestAlert::default().label("alertname", alertname)
    }

    pub fn label(mut self, name: &str, value: &str) -> TestAlert {
        self.labels.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn annotation(mut self, name: &str, value: &str) -> TestAlert {
        self.annotations.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn starts_at(mut self, rfc3339: &str) -> TestAlert {
        self.starts_at = Some(rfc3339.to_owned());
        self
    }

    /// The label set as Alertmanager identifies an alert by it (order-independent).
    fn identity(&self) -> Vec<(String, String)> {
        let mut labels = self.labels.clone();
        labels.sort();
        labels
    }
}

fn pairs_to_object(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// A running Alertmanager. Dropping it kills and reaps the process and removes its
/// directory (config, storage, log).
pub struct Alertmanager {
    child: Child,
    port: u16,
    /// Held for its Drop, which removes the config, storage and log.
    _dir: TempDir,
    log_path: PathBuf,
    client: reqwest::Client,
    /// The startsAt `fire` chose for alerts without their own, by label set, for `resolve`.
    fired: Mutex<HashMap<Vec<(String, String)>, SystemTime>>,
}

impl Alertmanager {
    /// Writes the config, starts Alertmanager on a free 127.0.0.1 port without clustering,
    /// and waits (at most 20 s) until `/-/ready` answers 200. Panics with the process's
    /// output when it does not come up.
    pub async fn start(bins: &AlertmanagerBinaries, opts: AlertmanagerOptions) -> Alertmanager {
        assert!(
            !(opts.bearer_token.is_some() && opts.basic_auth.is_some()),
            "Alertmanager accepts only one of bearer_token and basic_auth"
        );
        let dir = tempfile::Builder::new()
            .prefix("kabar-alertmanager-")
            .tempdir()
            .expect("create a temp dir for Alertmanager");
        // YAML is a superset of JSON, so the config is written as JSON: no YAML quoting
        // pitfalls for URLs or credentials.
        let config =
            serde_json::to_string_pretty(&opts.config()).expect("Alertmanager config serializes");
        let config_path = dir.path().join("am.yml");
        std::fs::write(&config_path, &config).expect("write Alertmanager config");
        let storage = dir.path().join("data");
        std::fs::create_dir(&storage).expect("create Alertmanager storage dir");
        let log_path = dir.path().join("alertmanager.log");
        let client = reqwest::Client::builder()
            // Loopback traffic must not go through an environment proxy.
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("build reqwest client");

        // The free port is found by binding port 0 and releasing it, so another process can
        // grab it before Alertmanager binds: retry a few times when that happens.
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let log = File::create(&log_path).expect("create Alertmanager log file");
            let log_err = log.try_clone().expect("clone Alertmanager log handle");
            let mut command = Command::new(&bins.alertmanager);
            command
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.path={}", storage.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg(format!("--web.external-url=http://127.0.0.1:{port}"))
                // Empty address disables clustering: no gossip port, no peer wait.
                .arg("--cluster.listen-address=")
                .arg("--log.level=debug")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log_err));
            for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                command.env_remove(var);
            }
            let mut child = command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bins.alertmanager.display()));
            match wait_ready(&mut child, &client, port).await {
                Ok(()) => {
                    return Alertmanager {
                        child,
                        port,
                        _dir: dir,
                        log_path,
                        client,
                        fired: Mutex::new(HashMap::new()),
                    };
                }
                Err(failure) => {
                    kill_and_reap(&mut child);
                    let logs = read_log(&log_path);
                    if !logs.contains("address already in use") {
                        panic!(
                            "{failure}\n--- config ---\n{config}\n--- Alertmanager output \
                             ---\n{logs}"
                        );
                    }
                    last_failure = format!("{failure}\n{logs}");
                }
            }
        }
        panic!("Alertmanager could not bind a free port in 3 attempts:\n{last_failure}");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything Alertmanager printed so far (debug level), for failure messages.
    pub fn logs(&self) -> String {
        read_log(&self.log_path)
    }

    /// Posts firing alerts (no endsAt), with the alert's own startsAt or else now.
    ///
    /// Now, rather than a moment ago, because Alertmanager flushes a new group at once when
    /// its first alert started more than group_wait ago: a past startsAt skips group_wait, and
    /// alerts fired by separate calls would then not be grouped together.
    pub async fn fire(&self, alerts: &[TestAlert]) {
        let now = SystemTime::now();
        let body: Vec<Value> = {
            // Scoped so the (std) lock is released before the await below.
            let mut fired = self.fired.lock().unwrap_or_else(|p| p.into_inner());
            alerts
                .iter()
                .map(|alert| {
                    let starts_at = match &alert.starts_at {
                        Some(given) => given.clone(),
                        None => {
                            fired.insert(alert.identity(), now);
                            rfc3339(now)
                        }
                    };
                    json!({
                        "labels": pairs_to_object(&alert.labels),
                        "annotations": pairs_to_object(&alert.annotations),
                        "startsAt": starts_at,
                    })
                })
                .collect()
        };
        self.post_alerts(&body).await;
    }

    /// Resolves alerts: the same labels, the startsAt they were fired with (the alert's own,
    /// else the one `fire` chose) and endsAt one second ago, or the start itself when the
    /// alert was fired less than a second ago (Alertmanager refuses an end before the start;
    /// an end equal to the start is fine and already past).
    pub async fn resolve(&self, alerts: &[TestAlert]) {
        let a_second_ago = SystemTime::now() - Duration::from_secs(1);
        let body: Vec<Value> = {
            let fired = self.fired.lock().unwrap_or_else(|p| p.into_inner());
            alerts
                .iter()
                .map(|alert| {
                    let (starts_at, ends_at) =
                        match (&alert.starts_at, fired.get(&alert.identity())) {
                            (Some(given), _) => (Some(given.clone()), a_second_ago),
                            (None, Some(&start)) => (Some(rfc3339(start)), a_second_ago.max(start)),
                            // Never fired through this handle: without a startsAt Alertmanager takes
                            // endsAt as the start.
                            (None, None) => (None, a_second_ago),
                        };
                    let mut posted = json!({
                        "labels": pairs_to_object(&alert.labels),
                        "annotations": pairs_to_object(&alert.annotations),
                        "endsAt": rfc3339(ends_at),
                    });
                    if let Some(starts_at) = starts_at {
                        posted["startsAt"] = json!(starts_at);
                    }
                    posted
                })
                .collect()
        };
        self.post_alerts(&body).await;
    }

    async fn post_alerts(&self, body: &[Value]) {
        let url = format!("{}/api/v2/alerts", self.url());
        let response = self
            .client
            .post(&url)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}\n{}", self.logs()));
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            panic!(
                "Alertmanager refused the alerts: {status} {text}\nposted: {}\n--- \
                 Alertmanager output ---\n{}",
                Value::from(body.to_vec()),
                self.logs()
            );
        }
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// Polls `/-/ready` until it answers 200, the process exits, or READY_TIMEOUT passes.
async fn wait_ready(child: &mut Child, client: &reqwest::Client, port: u16) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{port}/-/ready");
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("Alertmanager exited during startup ({status})"));
        }
        let ready = client
            .get(&url)
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "Alertmanager did not answer 200 on {url} within {READY_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kill_and_reap(child: &mut Child) {
    // SIGKILL: nothing of Alertmanager's state matters after a test, and a kill cannot hang.
    // An error means it already exited; wait() reaps it either way, so no zombie is left.
    let _ = child.kill();
    let _ = child.wait();
}

fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("find a free port on 127.0.0.1")
}

/// RFC 3339 UTC with milliseconds, as Alertmanager's API takes it.
fn rfc3339(time: SystemTime) -> String {
    let timestamp = jiff::Timestamp::try_from(time).expect("system time within jiff's range");
    format!("{:.3}", timestamp)
}
