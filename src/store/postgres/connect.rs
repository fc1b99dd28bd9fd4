//! Connections to PostgreSQL: the URL read as libpq would, TLS with verified certificates,
//! the pool, and synchronous_commit forced on. It must not run kabar's queries.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::Config as ClientConfig;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::PostgresError;
use crate::config::Postgres;
use crate::store::StoreError;

/// How long a connection attempt may take before the database counts as unreachable.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one store operation may take, from the pool's wait to its last answer. A
/// database cut off by the network never answers; this turns that into an error.
pub(super) const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// The client settings of the URL, with kabar's own on top: a connect timeout, TCP
/// keepalives so a dead peer is noticed, and an application name for pg_stat_activity.
pub(super) fn client_config(settings: &Postgres) -> Result<ClientConfig, StoreError> {
    let mut config: ClientConfig = settings.url.expose().parse().map_err(|_| {
        // Validated when the config was read; the parser's words may quote the secret.
        StoreError::Internal("store.postgres.url no longer parses".to_owned())
    })?;
    config
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(OPERATION_TIMEOUT);
    if config.get_application_name().is_none() {
        config.application_name("kabar");
    }
    Ok(config)
}

/// TLS that verifies the server against `ca_file`, or the system's roots without one. The
/// URL's sslmode decides whether it is used (disable, prefer, require).
pub(super) fn tls(settings: &Postgres) -> Result<MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match &settings.ca_file {
        Some(path) => {
            use rustls_pki_types::pem::PemObject as _;
            let certificates = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| tls_error(format!("cannot read ca_file {}: {e}", path.display())))?;
            for certificate in certificates {
                let certificate = certificate.map_err(|e| {
                    tls_error(format!(
                        "ca_file {} is not PEM certificates: {e}",
                        path.display()
                    ))
                })?;
                roots
                    .add(certificate)
                    .map_err(|e| tls_error(format!("ca_file {}: {e}", path.display())))?;
            }
        }
        None => {
            // Unreadable system certificates leave TLS unusable, not kabar: sslmode=disable
            // and prefer still connect, and require fails with a clear handshake error.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn tls_error(message: String) -> StoreError {
    StoreError::Postgres(PostgresError::Tls(message))
}

/// The pool of connections each replica's store operations share.
pub(super) fn pool(settings: &Postgres) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        client_config(settings)?,
        tls(settings)?,
        ManagerConfig {
            // The cheap check: a connection the driver saw close is replaced. One that died
            // silently fails its next query, which the caller retries.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(settings.max_connections)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(OPERATION_TIMEOUT),
            create: Some(CONNECT_TIMEOUT),
            recycle: Some(CONNECT_TIMEOUT),
        })
        .post_create(deadpool_postgres::Hook::async_fn(|client, _| {
            Box::pin(async move {
                // A 200 to Alertmanager must mean committed to disk, whatever the server's
                // or the role's default says.
                client
                    .batch_execute("SET synchronous_commit = on")
                    .await
                    .map_err(deadpool_postgres::HookError::Backend)
            })
        }))
        .build()
        .map_err(|e| StoreError::Postgres(PostgresError::Pool(e.to_string())))
}

/// A connection of its own, outside the pool: for the migration lock and for LISTEN.
pub(super) async fn dedicated(settings: &Postgres) -> Result<tokio_postgres::Client, StoreError> {
    let (client, connection) = client_config(settings)?
        .connect(tls(settings)?)
        .await
        .map_err(PostgresError::from)?;
    tokio::spawn(async move {
        // Ends when the client is dropped or the server goes; errors surface on the client.
        let _ = connection.await;
    });
    Ok(client)
}
