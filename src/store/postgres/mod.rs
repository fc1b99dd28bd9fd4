//! The PostgreSQL adapter of the store port: one database shared by any number of replicas,
//! for operators who need more than one. All of its SQL lives in this folder.
//!
//! `connect` (URL, TLS, pool), `schema` (migrations under an advisory lock), `transaction`
//! (the port's `Transaction`, serialised per episode and group by advisory locks), `queue`
//! (outbox and dead letters), `leases` (one sender per space in the fleet) and `listen`
//! (LISTEN/NOTIFY wake-ups across replicas).

mod connect;
pub(crate) mod import;
mod leases;
mod listen;
mod queue;
mod schema;
mod transaction;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Object, Pool, PoolError};
use tokio::sync::{mpsc, watch};

use self::connect::OPERATION_TIMEOUT;
use crate::config::Postgres;
use crate::store::{
    DeadLetter, DeadLetterRecord, LeaseClaim, QueueStats, QueuedMessage, Store, StoreError,
    StoreFuture, Wakeup, Work, now_ms,
};

/// An error of the database or of reaching it; the port sees it as `StoreError::Postgres`.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    #[error("no database connection: {0}")]
    Pool(String),
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("TLS: {0}")]
    Tls(String),
}

impl PostgresError {
    /// What kind of trouble, for `kabar_store_errors_total{kind}` and for the answer
    /// ingest gives.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            PostgresError::Db(e) => match e.code().map(|code| code.code()) {
                Some("40001" | "40P01") => "conflict",
                Some("57014") => "timeout",
                // Connection exceptions, the server shutting down or starting, full.
                Some(code)
                    if code.starts_with("08")
                        || matches!(code, "57P01" | "57P02" | "57P03" | "53300") =>
                {
                    "unavailable"
                }
                Some(_) => "other",
                // No SQLSTATE: the socket, TLS or the protocol failed.
                None => "unavailable",
            },
            PostgresError::Pool(_) | PostgresError::Tls(_) => "unavailable",
            PostgresError::Timeout(_) => "timeout",
        }
    }
}

/// A driver error as the port sees it: for `map_err` on every statement of the adapter.
pub(super) fn db(error: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(PostgresError::from(error))
}

impl From<PostgresError> for StoreError {
    fn from(error: PostgresError) -> StoreError {
        StoreError::Postgres(error)
    }
}

impl From<PoolError> for PostgresError {
    fn from(error: PoolError) -> PostgresError {
        match error {
            PoolError::Backend(e) => PostgresError::Db(e),
            PoolError::Timeout(_) => PostgresError::Timeout(OPERATION_TIMEOUT),
            other => PostgresError::Pool(other.to_string()),
        }
    }
}

/// The PostgreSQL store of one replica: a pool, and the wake-ups its listener hears.
pub struct PostgresStore {
    pool: Pool,
    writable: AtomicBool,
    jobs: AtomicU64,
    commits: AtomicU64,
    wakeups: Mutex<Option<mpsc::Receiver<Wakeup>>>,
    stop_listening: watch::Sender<bool>,
}

impl std::fmt::Debug for PostgresStore {
    // The pool's own Debug would show the connection settings, password included.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("writable", &self.writable.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The server and database `settings` name, for messages; never the URL, which may carry
/// the password.
pub(crate) fn describe(settings: &Postgres) -> String {
    let Ok(config) = connect::client_config(settings) else {
        return "PostgreSQL (store.postgres.url)".to_owned();
    };
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "?".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().unwrap_or("(default)");
    format!("PostgreSQL database {database} on {host}:{port}")
}

/// Whether `open` also listens for new messages (the service does; the CLI has no senders).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listen {
    Yes,
    No,
}

impl PostgresStore {
    /// Connects, migrates under the migration lock and (for the service) starts listening.
    pub(crate) async fn open(
        settings: &Postgres,
        listen: Listen,
    ) -> Result<PostgresStore, StoreError> {
        let mut client = connect::dedicated(settings).await?;
        schema::migrate(&mut client).await?;
        drop(client);
        Self::with_pool(settings, listen)
    }

    /// Connects to a database kabar already ran on, without creating its schema there:
    /// None if it holds none. A newer schema is refused; an older one is migrated.
    pub(crate) async fn open_existing(
        settings: &Postgres,
        listen: Listen,
    ) -> Result<Option<PostgresStore>, StoreError> {
        let mut client = connect::dedicated(settings).await?;
        if schema::version(&client).await?.is_none() {
            return Ok(None);
        }
        schema::migrate(&mut client).await?;
        drop(client);
        Self::with_pool(settings, listen).map(Some)
    }

    fn with_pool(settings: &Postgres, listen: Listen) -> Result<PostgresStore, StoreError> {
        let pool = connect::pool(settings)?;
        let (stop_listening, stopped) = watch::channel(false);
        let wakeups = match listen {
            Listen::Yes => {
                let (sender, receiver) = mpsc::channel(listen::WAKEUP_BUFFER);
                tokio::spawn(listen::run(Arc::new(settings.clone()), sender, stopped));
                Some(receiver)
            }
            Listen::No => None,
        };
        Ok(PostgresStore {
            pool,
            writable: AtomicBool::new(true),
            jobs: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            wakeups: Mutex::new(wakeups),
            stop_listening,
        })
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Postgres(PostgresError::from(e)))
    }

    /// Runs one operation within OPERATION_TIMEOUT and records whether writes go through.
    /// A connection the server closed is not reused: the pool checks each one it takes back.
    async fn guard<T>(
        &self,
        write: bool,
        operation: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        let result = tokio::time::timeout(OPERATION_TIMEOUT, operation)
            .await
            .unwrap_or(Err(StoreError::Postgres(PostgresError::Timeout(
                OPERATION_TIMEOUT,
            ))));
        self.note(write, &result);
        result
    }

    fn note<T>(&self, write: bool, result: &Result<T, StoreError>) {
        match result {
            Ok(_) if write => self.writable.store(true, Ordering::Relaxed),
            Err(e) if e.kind() == "unavailable" || e.kind() == "timeout" => {
                self.writable.store(false, Ordering::Relaxed)
            }
            _ => {}
        }
    }

    async fn run_transaction(&self, work: Work) -> Result<(), StoreError> {
        self.jobs.fetch_add(1, Ordering::Relaxed);
        let mut client = self.client().await?;
        let handle = tokio::runtime::Handle::current();
        // The work is synchronous: it runs on a blocking thread, each statement blocking
        // on the runtime, and the whole transaction commits or rolls back there.
        let joined = tokio::task::spawn_blocking(move || {
            let result = transaction_on(&mut client, &handle, work);
            (client, result)
        })
        .await;
        match joined {
            Ok((client, result)) => {
                if result.is_err() || client.is_closed() {
                    // Rolled back (or the connection's state unknown): not reused.
                    let _ = Object::take(client);
                }
                if result.is_ok() {
                    self.commits.fetch_add(1, Ordering::Relaxed);
                }
                result
            }
            // The work panicked: its transaction was dropped, which rolls it back.
            Err(_) => Err(StoreError::JobPanicked),
        }
    }
}

fn transaction_on(
    client: &mut Object,
    handle: &tokio::runtime::Handle,
    work: Work,
) -> Result<(), StoreError> {
    let transaction = handle
        .block_on(tokio::time::timeout(
            OPERATION_TIMEOUT,
            client.transaction(),
        ))
        .map_err(|_| StoreError::Postgres(PostgresError::Timeout(OPERATION_TIMEOUT)))?
        .map_err(PostgresError::from)?;
    let mut unit = transaction::PgTransaction {
        transaction: &transaction,
        handle,
        announced: HashSet::new(),
        timed_out: false,
        pending: Vec::new(),
    };
    let outcome = work(&mut unit).and_then(|()| unit.flush());
    let timed_out = unit.timed_out;
    outcome?;
    if timed_out {
        return Err(StoreError::Postgres(PostgresError::Timeout(
            OPERATION_TIMEOUT,
        )));
    }
    handle
        .block_on(tokio::time::timeout(
            OPERATION_TIMEOUT,
            transaction.commit(),
        ))
        .map_err(|_| StoreError::Postgres(PostgresError::Timeout(OPERATION_TIMEOUT)))?
        .map_err(PostgresError::from)?;
    Ok(())
}

impl Store for PostgresStore {
    fn transact(&self, work: Work) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let result = self.run_transaction(work).await;
            self.note(true, &result);
            result
        })
    }

    fn next_messages(
        &self,
        space: &str,
        skip: Vec<i64>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<QueuedMessage>> {
        let space = space.to_owned();
        Box::pin(self.guard(false, async move {
            let client = self.client().await?;
            queue::next_messages(&client, &space, &skip, limit).await
        }))
    }

    fn mark_delivered(&self, id: i64, answered_ms: i64) -> StoreFuture<'_, ()> {
        Box::pin(self.guard(true, async move {
            let client = self.client().await?;
            queue::mark_delivered(&client, id, answered_ms).await
        }))
    }

    fn record_failure(&self, id: i64, error: &str, answered_ms: i64) -> StoreFuture<'_, ()> {
        let error = error.to_owned();
        Box::pin(self.guard(true, async move {
            let client = self.client().await?;
            queue::record_failure(&client, id, &error, answered_ms).await
        }))
    }

    fn switch_to_fallback(&self, id: i64, error: &str) -> StoreFuture<'_, ()> {
        let error = error.to_owned();
        Box::pin(self.guard(true, async move {
            let client = self.client().await?;
            queue::switch_to_fallback(&client, id, &error).await
        }))
    }

    fn dead_letter(&self, id: i64, record: DeadLetterRecord) -> StoreFuture<'_, Option<i64>> {
        Box::pin(self.guard(true, async move {
            let client = self.client().await?;
            queue::dead_letter(&client, id, &record).await
        }))
    }

    fn dead_letters(&self, space: Option<&str>) -> StoreFuture<'_, Vec<DeadLetter>> {
        let space = space.map(str::to_owned);
        Box::pin(self.guard(false, async move {
            let client = self.client().await?;
            queue::dead_letters(&client, space.as_deref()).await
        }))
    }

    fn dead_letter_counts(&self) -> StoreFuture<'_, Vec<(String, i64)>> {
        Box::pin(self.guard(false, async move {
            let client = self.client().await?;
            queue::dead_letter_counts(&client).await
        }))
    }

    fn retry_dead_letters(&self, ids: Vec<i64>, now_ms: i64) -> StoreFuture<'_, Vec<DeadLetter>> {
        Box::pin(self.guard(true, async move {
            let mut client = self.client().await?;
            queue::retry(&mut client, &ids, now_ms).await
        }))
    }

    fn drop_dead_letters(&self, ids: Vec<i64>) -> StoreFuture<'_, Vec<DeadLetter>> {
        Box::pin(self.guard(true, async move {
            let client = self.client().await?;
            queue::drop_letters(&client, &ids).await
        }))
    }

    fn queue_stats(&self) -> StoreFuture<'_, Vec<QueueStats>> {
        Box::pin(self.guard(false, async move {
            let client = self.client().await?;
            queue::queue_stats(&client).await
        }))
    }

    fn prune(&self, now_ms: i64) -> StoreFuture<'_, (usize, usize)> {
        Box::pin(self.guard(true, async move {
            let client = self.client().await?;
            queue::prune(&client, now_ms).await
        }))
    }

    fn record_message_name(
        &self,
        space: &str,
        message_id: &str,
        name: &str,
        now_ms: i64,
    ) -> StoreFuture<'_, ()> {
        let (space, message_id, name) = (space.to_owned(), message_id.to_owned(), name.to_owned());
        Box::pin(self.guard(true, async move {
            let client = self.client().await?;
            queue::record_name(&client, &space, &message_id, &name, now_ms).await
        }))
    }

    fn message_name(&self, space: &str, message_id: &str) -> StoreFuture<'_, Option<String>> {
        let (space, message_id) = (space.to_owned(), message_id.to_owned());
        Box::pin(self.guard(false, async move {
            let client = self.client().await?;
            queue::name(&client, &space, &message_id).await
        }))
    }

    fn app_episode(&self, episode_id: &str) -> StoreFuture<'_, Option<String>> {
        let episode_id = episode_id.to_owned();
        Box::pin(self.guard(false, async move {
            let client = self.client().await?;
            queue::app_episode(&client, &episode_id).await
        }))
    }

    fn probe(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.guard(true, async move {
            let client = self.client().await?;
            queue::probe(&client, now_ms()).await
        }))
    }

    fn writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    fn mark_unresponsive(&self) {
        self.writable.store(false, Ordering::Relaxed);
    }

    // Nothing in this adapter fails for good: a lost database is waited out.
    fn broken(&self) -> bool {
        false
    }

    fn until_broken(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::pending())
    }

    fn write_stats(&self) -> (u64, u64) {
        (
            self.jobs.load(Ordering::Relaxed),
            self.commits.load(Ordering::Relaxed),
        )
    }

    fn close(&self) {
        let _ = self.stop_listening.send(true);
        self.pool.close();
    }

    fn exclusive(&self) -> bool {
        false
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn claim_spaces(
        &self,
        holder: &str,
        spaces: Vec<String>,
        lease: Duration,
    ) -> StoreFuture<'_, Vec<LeaseClaim>> {
        let holder = holder.to_owned();
        Box::pin(self.guard(true, async move {
            let mut client = self.client().await?;
            leases::claim(&mut client, &holder, &spaces, lease).await
        }))
    }

    fn release_spaces(&self, holder: &str, spaces: Vec<String>) -> StoreFuture<'_, ()> {
        let holder = holder.to_owned();
        Box::pin(self.guard(true, async move {
            let client = self.client().await?;
            leases::release(&client, &holder, &spaces).await
        }))
    }

    fn take_wakeups(&self) -> Option<mpsc::Receiver<Wakeup>> {
        self.wakeups
            .lock()
            .ok()
            .and_then(|mut wakeups| wakeups.take())
    }

    #[cfg(test)]
    fn break_for_test(&self) {
        self.pool.close();
    }
}
