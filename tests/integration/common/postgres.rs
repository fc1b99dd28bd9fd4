//! A throwaway PostgreSQL cluster for the tests: initdb in a temp dir on a free 127.0.0.1
//! port (as the `postgres` user when the tests run as root, since initdb refuses root),
//! password authentication, and a fresh database per test. Removed when the tests end.
//!
//! `KABAR_TEST_STORE=postgres` makes every config the builder writes use it, which is how
//! the service, fault and end-to-end suites run on both backends (see postgres_suites).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::tools::tools_required;

/// The password of the tests' database user: a secret the log scans look for.
pub const TEST_PASSWORD: &str = "pg-test-secret-4c1d9b";
const USER: &str = "kabar";

/// Whether this run's configs use PostgreSQL (the parametrised pass).
pub fn on_postgres() -> bool {
    std::env::var("KABAR_TEST_STORE").is_ok_and(|v| v.eq_ignore_ascii_case("postgres"))
}

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_postgres_user: bool,
    databases: AtomicUsize,
}

/// Where Debian puts the server binaries: the newest /usr/lib/postgresql/N/bin.
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

impl PgCluster {
    /// A new cluster, or None (with a loud SKIPPED) when PostgreSQL is not installed and
    /// the tools are not required; panics when they are.
    pub fn start() -> Option<PgCluster> {
        let Some(bin) = server_bin() else {
            let hint = "apt-get install -y --no-install-recommends postgresql";
            if tools_required() {
                panic!(
                    "PostgreSQL's server is not installed: {hint} (KABAR_REQUIRE_E2E makes this test mandatory)"
                );
            }
            eprintln!(
                "\n==================================================================\n\
                 SKIPPED: this test needs PostgreSQL's server (initdb, pg_ctl).\n\
                 Install it with:\n    {hint}\n\
                 ==================================================================\n"
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("kabar-pg-")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        let as_postgres_user = is_root();
        let cluster = PgCluster {
            dir,
            bin,
            port: free_port(),
            as_postgres_user,
            databases: AtomicUsize::new(0),
        };
        std::fs::write(cluster.dir.path().join("pwfile"), TEST_PASSWORD).expect("pwfile");
        if as_postgres_user {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(cluster.dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster dir to postgres");
        }
        let data = cluster.data_dir();
        let pwfile = cluster.dir.path().join("pwfile");
        cluster.run(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                USER,
                "--pwfile",
                &pwfile.display().to_string(),
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        cluster.start_server();
        Some(cluster)
    }

    /// The cluster every test of this process shares (each with its own database).
    pub fn shared() -> Option<&'static PgCluster> {
        static SHARED: OnceLock<Option<PgCluster>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let cluster = PgCluster::start()?;
                cluster.watch_for_exit();
                Some(cluster)
            })
            .as_ref()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let output = self
            .command(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"));
        assert!(
            output.status.success(),
            "{tool} failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts (or restarts) the server on its port, waiting until it accepts connections.
    pub fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 \
             -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir().display().to_string(),
                "-o",
                &options,
                "-l",
                &log.display().to_string(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    /// Stops the server at once, as a crash would (`immediate`): connections drop.
    pub fn stop_server(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir().display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// A fresh, empty database; its URL (with the password).
    pub fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("kabar_test_{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{TEST_PASSWORD}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// Runs SQL with psql; its output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = Command::new("psql")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
                .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-XAtqc", sql])
                .env("PGPASSWORD", TEST_PASSWORD)
                .stdin(Stdio::null())
                .output()
                .expect("run psql (Debian package postgresql-client)");
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout).into_owned();
            }
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            // A server that is starting up refuses for a moment.
            if Instant::now() > deadline || !stderr.contains("starting up") {
                panic!("psql {sql:?} failed: {stderr}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The shared cluster outlives every test but not the test process: a watchdog stops
    /// it and removes its files once this process is gone, however it ended.
    fn watch_for_exit(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let runuser = if self.as_postgres_user {
            "runuser -u postgres --"
        } else {
            ""
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {runuser} {pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = self.data_dir().display(),
            dir = self.dir.path().display(),
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

impl PgCluster {
    /// The cluster's folder (data, socket, server.log).
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data_dir().display().to_string()])
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Rows of `sql` run on the database at `url`, each a list of its columns as text (NULL
/// as None). Separated by ASCII unit and record separators, which message bodies (JSON)
/// never hold raw.
pub fn rows(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let output = Command::new("psql")
        .args(["-d", url, "-v", "ON_ERROR_STOP=1", "-XAtq"])
        .args([
            "-F",
            "\u{1f}",
            "-R",
            "\u{1e}",
            "-P",
            "null=\u{1a}",
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run psql (Debian package postgresql-client)");
    assert!(
        output.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim_end_matches('\n')
        .split('\u{1e}')
        .filter(|row| !row.is_empty())
        .map(|row| {
            row.split('\u{1f}')
                .map(|column| (column != "\u{1a}").then(|| column.to_owned()))
                .collect()
        })
        .collect()
}
