//! The `store` section: which store backend serves (SQLite under state_dir by default, or
//! PostgreSQL for several replicas) and its settings. It must not connect to anything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::durations::RawDuration;
use super::raw::RawSecret;
use super::resolve::one_secret;
use super::{ConfigError, invalid};
use crate::secret::Secret;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) postgres: Option<RawPostgres>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPostgres {
    pub(super) url: Option<RawSecret>,
    pub(super) url_file: Option<PathBuf>,
    pub(super) max_connections: Option<u64>,
    pub(super) lease: Option<RawDuration>,
    pub(super) ca_file: Option<PathBuf>,
}

/// Where kabar keeps its state.
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    /// Set: PostgreSQL, shared by every replica. Unset: SQLite under state_dir.
    pub postgres: Option<Postgres>,
}

/// A PostgreSQL store shared by any number of replicas.
#[derive(Debug, Clone)]
pub struct Postgres {
    /// A libpq URL or key=value string; it carries the password, so it is a secret.
    pub url: Secret,
    /// Connections each replica's pool may open (one more listens for new messages).
    pub max_connections: usize,
    /// How long a space stays with a replica that stopped renewing its lease.
    pub lease: Duration,
    /// PEM certificates to verify the server with instead of the system's roots.
    pub ca_file: Option<PathBuf>,
}

pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 8;
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(15);

pub(super) fn resolve_store(
    raw: Option<RawStore>,
    base_dir: &Path,
) -> Result<StoreConfig, ConfigError> {
    let Some(raw) = raw.and_then(|raw| raw.postgres) else {
        return Ok(StoreConfig::default());
    };
    let url =
        one_secret("store.postgres.url", raw.url, raw.url_file, base_dir)?.ok_or_else(|| {
            invalid(
                "store.postgres",
                "needs url or url_file (remove store.postgres to use SQLite under state_dir)",
            )
        })?;
    check_url(&url)?;
    let max_connections = raw
        .max_connections
        .unwrap_or(DEFAULT_MAX_CONNECTIONS as u64);
    if !(1..=256).contains(&max_connections) {
        return Err(invalid(
            "store.postgres.max_connections",
            "must be between 1 and 256",
        ));
    }
    let lease = raw.lease.map_or(DEFAULT_LEASE, |RawDuration(lease)| lease);
    if !(Duration::from_secs(3)..=Duration::from_secs(600)).contains(&lease) {
        return Err(invalid(
            "store.postgres.lease",
            "must be between 3s and 10m",
        ));
    }
    Ok(StoreConfig {
        postgres: Some(Postgres {
            url,
            max_connections: max_connections as usize,
            lease,
            ca_file: raw.ca_file.map(|path| base_dir.join(path)),
        }),
    })
}

/// The URL parses as tokio-postgres reads it, names a host and a database user, and asks
/// for no TLS mode kabar cannot honour. The parser's own words may quote the text, so
/// only its kind of complaint is repeated, with the secret scrubbed.
fn check_url(url: &Secret) -> Result<(), ConfigError> {
    let parsed: tokio_postgres::Config = url.expose().parse().map_err(|e: tokio_postgres::Error| {
        let reason = crate::secret::scrub(&e.to_string(), &[url.expose()]);
        invalid(
            "store.postgres.url",
            format!("is not a PostgreSQL URL such as postgres://kabar:PASSWORD@db:5432/kabar ({reason})"),
        )
    })?;
    if parsed.get_hosts().is_empty() {
        return Err(invalid("store.postgres.url", "names no host"));
    }
    if parsed.get_user().is_none_or(str::is_empty) {
        return Err(invalid("store.postgres.url", "names no user"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(store: &str) -> Result<Config, ConfigError> {
        let yaml = format!("{store}\nspaces:\n  ops:\n    dry_run: true\n");
        Config::parse(&yaml, Path::new("."), &|_| None)
    }

    #[test]
    fn without_a_store_section_sqlite_serves() {
        let config = parse("").expect("parses");
        assert!(config.store.postgres.is_none());
    }

    #[test]
    fn postgres_takes_its_defaults() {
        let config = parse("store:\n  postgres:\n    url: postgres://kabar:pw@db:5432/kabar\n")
            .expect("parses");
        let postgres = config.store.postgres.expect("postgres");
        assert_eq!(postgres.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(postgres.lease, DEFAULT_LEASE);
        assert_eq!(postgres.url.expose(), "postgres://kabar:pw@db:5432/kabar");
    }

    #[test]
    fn bad_postgres_settings_name_their_key_and_never_the_password() {
        for (store, key) in [
            ("store:\n  postgres: {}\n", "store.postgres"),
            (
                "store:\n  postgres: {url: 'postgres://kabar:hunter2@db:notaport/kabar'}\n",
                "store.postgres.url",
            ),
            (
                "store:\n  postgres: {url: 'postgres://kabar:hunter2@db/kabar?sslmode=hunter2'}\n",
                "store.postgres.url",
            ),
            (
                "store:\n  postgres: {url: 'postgres://kabar@db/kabar', lease: 1s}\n",
                "store.postgres.lease",
            ),
            (
                "store:\n  postgres: {url: 'postgres://kabar@db/kabar', max_connections: 0}\n",
                "store.postgres.max_connections",
            ),
            (
                "store:\n  postgres: {url: 'postgres://hunter2@db/kabar?user='}\n",
                "store.postgres.url",
            ),
            (
                "store:\n  postgres: {url: 'postgres://kabar:hunter2@db/kabar', url_file: x}\n",
                "store.postgres.url",
            ),
        ] {
            let error = parse(store).expect_err(store).to_string();
            assert!(error.starts_with(key), "{store}: {error}");
            assert!(!error.contains("hunter2"), "{store}: {error}");
        }
    }
}
