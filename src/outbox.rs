//! The durable store: outbox, dead letters and alert episode state in one SQLite file.
//!
//! One writer thread owns the write connection. Writes arrive as jobs; the writer runs all
//! jobs waiting at that moment inside one transaction (each in its own savepoint, so one
//! failing job does not undo the others), commits once, and only then tells each caller
//! its result. Callers answer Alertmanager after that, so every acknowledged message is on
//! disk, while a burst of requests shares one fsync instead of paying one each.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{oneshot, watch};

use crate::state::{Episode, EpisodeKey, EpisodeStore, GroupEpisode};

pub const DATABASE_FILE: &str = "kabar.db";
/// Upper bound of jobs in one transaction, so one commit never waits on an endless queue.
const MAX_BATCH: usize = 512;
const READER_POOL: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store is shut down")]
    Closed,
    /// A write job panicked (a bug in kabar): its savepoint was rolled back, the other
    /// jobs of its transaction committed, and the writer carries on.
    #[error("the write panicked and was rolled back (a bug in kabar; please report it)")]
    JobPanicked,
    /// The writer thread itself died: nothing can be written until kabar restarts.
    #[error("the store's writer thread died; kabar must be restarted")]
    WriterDied,
    #[error("{0}")]
    Internal(String),
    #[error("database schema version {found} is newer than this kabar understands ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
}

impl StoreError {
    /// The disk is full or read-only: the caller should retry later, not give up.
    pub fn is_disk_problem(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::ReadOnly
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::CannotOpen
            ),
            StoreError::CreateDir { .. } => true,
            _ => false,
        }
    }
}

/// A message waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedMessage {
    pub id: i64,
    pub space: String,
    pub kind: String,
    pub thread_key: Option<String>,
    pub body: String,
    /// A text body to send instead if Chat rejects a card body as invalid (400).
    pub fallback_body: Option<String>,
    /// When kabar received the notification that produced it (Unix ms).
    pub received_ms: i64,
    pub attempts: i64,
}

/// A message to put in the outbox.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub space: &'a str,
    pub kind: &'a str,
    pub thread_key: Option<&'a str>,
    pub body: &'a str,
    pub fallback_body: Option<&'a str>,
    pub received_ms: i64,
}

/// A message that will not be delivered, kept for the operator.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: i64,
    pub space: String,
    pub kind: String,
    pub thread_key: Option<String>,
    pub body: String,
    /// A card's text version, kept so a retried card can still fall back to it.
    pub fallback_body: Option<String>,
    pub received_ms: i64,
    pub dead_ms: i64,
    pub attempts: i64,
    pub reason: String,
    pub status: Option<u16>,
    pub detail: String,
}

/// Depth of one space's queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    pub space: String,
    pub messages: i64,
    pub oldest_received_ms: Option<i64>,
}

trait WriteJob: Send {
    /// Runs inside the batch transaction; false if the job's own work failed.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Whether the job's failure came from the disk (full, read-only, I/O), not its own logic.
    fn failed_for_storage(&self) -> bool;
    /// Reports the job's result once the batch's commit is known.
    fn complete(self: Box<Self>, commit: Result<(), &rusqlite::Error>);
}

struct Job<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    done: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = match conn.execute_batch("SAVEPOINT job") {
            Ok(()) => {
                // A panic in one job must not take the writer thread down with it: the
                // store would stay open and answer nothing, a zombie. The job's savepoint
                // is rolled back below like any failed job; the connection is left as
                // SQLite left it, which a rollback to the savepoint makes consistent.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn)))
                    .unwrap_or(Err(StoreError::JobPanicked));
                let end = if result.is_ok() {
                    conn.execute_batch("RELEASE job")
                } else {
                    conn.execute_batch("ROLLBACK TO job; RELEASE job")
                };
                match end {
                    Ok(()) => result,
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn failed_for_storage(&self) -> bool {
        matches!(&self.result, Some(Err(e)) if e.is_disk_problem())
    }

    fn complete(self: Box<Self>, commit: Result<(), &rusqlite::Error>) {
        let outcome = match (commit, self.result) {
            (_, None) => Err(StoreError::Closed),
            (Ok(()), Some(result)) => result,
            (Err(_), Some(Err(job_error))) => Err(job_error),
            (Err(commit_error), Some(Ok(_))) => Err(clone_error(commit_error)),
        };
        // The caller may have gone away (request cancelled); the data is committed anyway.
        let _ = self.done.send(outcome);
    }
}

fn clone_error(e: &rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(*code, message.clone()))
        }
        other => StoreError::Internal(other.to_string()),
    }
}

/// Handle to the store; clones share the writer thread and reader pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
    /// Becomes true if the writer thread dies (a panic outside any job).
    writer_died: Arc<watch::Sender<bool>>,
    /// Transactions committed by the writer: with `writes`, how well batching works.
    commits: Arc<AtomicU64>,
    /// Whether the last write transaction committed (kabar_store_writable).
    writable: Arc<AtomicBool>,
    writes: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // WAL lets readers (metrics, senders, the dead-letter CLI) run beside the writer;
    // synchronous=FULL makes each commit durable against power loss, not just crashes.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Schema changes, in order: entry `i` takes the database from version `i` to `i + 1`.
/// Each runs in its own transaction and sets `user_version`, so a crash mid-way leaves a
/// consistent version behind.
const MIGRATIONS: [&str; 3] = [
    // v1: outbox, dead letters, episode state, duplicate detection.
    "BEGIN;
             CREATE TABLE outbox (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 space TEXT NOT NULL,
                 kind TEXT NOT NULL,
                 thread_key TEXT,
                 body TEXT NOT NULL,
                 received_ms INTEGER NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0,
                 last_error TEXT
             );
             CREATE INDEX outbox_by_space ON outbox (space, id);
             CREATE TABLE dead_letters (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 space TEXT NOT NULL,
                 kind TEXT NOT NULL,
                 thread_key TEXT,
                 body TEXT NOT NULL,
                 received_ms INTEGER NOT NULL,
                 dead_ms INTEGER NOT NULL,
                 attempts INTEGER NOT NULL,
                 reason TEXT NOT NULL,
                 status INTEGER,
                 detail TEXT NOT NULL
             );
             CREATE INDEX dead_letters_by_space ON dead_letters (space, id);
             CREATE TABLE episodes (
                 space TEXT NOT NULL,
                 fingerprint TEXT NOT NULL,
                 starts_at_ns INTEGER NOT NULL,
                 firing_posted INTEGER NOT NULL,
                 resolved INTEGER NOT NULL,
                 last_post_ms INTEGER NOT NULL,
                 seen_ms INTEGER NOT NULL,
                 PRIMARY KEY (space, fingerprint, starts_at_ns)
             ) WITHOUT ROWID;
             CREATE INDEX episodes_by_seen ON episodes (seen_ms);
             CREATE TABLE recent_notifications (
                 space TEXT NOT NULL,
                 digest INTEGER NOT NULL,
                 received_ms INTEGER NOT NULL,
                 PRIMARY KEY (space, digest)
             ) WITHOUT ROWID;
             CREATE INDEX recent_by_time ON recent_notifications (received_ms);
             CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             PRAGMA user_version = 1;
             COMMIT;",
    // v2: cards carry a text body to fall back to; digests send an alert's replies to
    // the digest's thread; per_group threads live as long as their group.
    "BEGIN;
             ALTER TABLE outbox ADD COLUMN fallback_body TEXT;
             ALTER TABLE dead_letters ADD COLUMN fallback_body TEXT;
             ALTER TABLE episodes ADD COLUMN thread_key TEXT;
             CREATE TABLE group_episodes (
                 space TEXT NOT NULL,
                 group_key TEXT NOT NULL,
                 thread_key TEXT NOT NULL,
                 open INTEGER NOT NULL,
                 seen_ms INTEGER NOT NULL,
                 PRIMARY KEY (space, group_key)
             ) WITHOUT ROWID;
             CREATE INDEX group_episodes_by_seen ON group_episodes (seen_ms);
             PRAGMA user_version = 2;
             COMMIT;",
    // v3: an episode that fires again after its resolve reopens, so episodes remember
    // when kabar recorded the resolve and the resolve's endsAt (episodes resolved before
    // this count from their last post). Duplicate detection compares a notification with
    // the latest one of its group only, so the table is keyed by group.
    "BEGIN;
             ALTER TABLE episodes ADD COLUMN resolved_ms INTEGER;
             ALTER TABLE episodes ADD COLUMN resolved_ends_ms INTEGER;
             UPDATE episodes SET resolved_ms = last_post_ms WHERE resolved = 1;
             DROP TABLE recent_notifications;
             CREATE TABLE recent_notifications (
                 space TEXT NOT NULL,
                 group_hash INTEGER NOT NULL,
                 digest INTEGER NOT NULL,
                 received_ms INTEGER NOT NULL,
                 PRIMARY KEY (space, group_hash)
             ) WITHOUT ROWID;
             CREATE INDEX recent_by_time ON recent_notifications (received_ms);
             PRAGMA user_version = 3;
             COMMIT;",
];
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for step in &MIGRATIONS[version.max(0) as usize..] {
        conn.execute_batch(step)?;
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the store under `state_dir` and starts its writer.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::CreateDir {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(DATABASE_FILE);
        let conn = open_connection(&path)?;
        migrate(&conn)?;
        let (jobs, receiver) = mpsc::channel::<Box<dyn WriteJob>>();
        let commits = Arc::new(AtomicU64::new(0));
        let writer_commits = Arc::clone(&commits);
        let writer_died = Arc::new(watch::Sender::new(false));
        let death = WriterDeath(Arc::clone(&writer_died));
        let writable = Arc::new(AtomicBool::new(true));
        let writer_writable = Arc::clone(&writable);
        let writer = std::thread::Builder::new()
            .name("kabar-store-writer".into())
            .spawn(move || writer_loop(conn, receiver, &writer_commits, &writer_writable, death))
            .map_err(|e| StoreError::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                jobs: Mutex::new(Some(jobs)),
                writer_died,
                commits,
                writable,
                writes: AtomicU64::new(0),
                writer: Mutex::new(Some(writer)),
                readers: Mutex::new(Vec::new()),
                path,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `work` in the next write transaction and returns its result once committed.
    pub async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(Job {
            work: Some(work),
            result: None,
            done,
        });
        self.inner.writes.fetch_add(1, Ordering::Relaxed);
        {
            let jobs = self.inner.jobs.lock().map_err(|_| StoreError::Closed)?;
            jobs.as_ref()
                .ok_or(StoreError::Closed)?
                .send(job)
                .map_err(|_| self.gone())?;
        }
        result.await.map_err(|_| self.gone())?
    }

    /// Why the writer no longer answers: it died, or the store was closed.
    fn gone(&self) -> StoreError {
        if self.writer_died() {
            StoreError::WriterDied
        } else {
            StoreError::Closed
        }
    }

    /// True once the writer thread died; the store then takes no writes until restart.
    pub fn writer_died(&self) -> bool {
        *self.inner.writer_died.borrow()
    }

    /// Resolves when the writer thread dies (never, normally).
    pub async fn writer_death(&self) {
        let mut died = self.inner.writer_died.subscribe();
        let _ = died.wait_for(|died| *died).await;
    }

    /// Runs `work` on a read-only connection off the async runtime.
    pub async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_blocking(work))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// `read` for callers outside the async runtime (the CLI).
    pub fn read_blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError>,
    {
        let pooled = self
            .inner
            .readers
            .lock()
            .ok()
            .and_then(|mut pool| pool.pop());
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = open_connection(&self.inner.path)?;
                conn.pragma_update(None, "query_only", true)?;
                conn
            }
        };
        let result = work(&conn);
        if let Ok(mut pool) = self.inner.readers.lock()
            && pool.len() < READER_POOL
        {
            pool.push(conn);
        }
        result
    }

    /// (write jobs submitted, transactions committed) since the store was opened.
    pub fn write_stats(&self) -> (u64, u64) {
        (
            self.inner.writes.load(Ordering::Relaxed),
            self.inner.commits.load(Ordering::Relaxed),
        )
    }

    /// Whether the store's last write transaction committed: false from a failed commit
    /// (disk full, read-only, I/O error) or a probe that timed out, until a write commits.
    pub fn writable(&self) -> bool {
        self.inner.writable.load(Ordering::Relaxed)
    }

    /// A probe write got no answer in time: the writer is stuck, so nothing commits.
    pub fn mark_unresponsive(&self) {
        self.inner.writable.store(false, Ordering::Relaxed);
    }

    /// Stops accepting writes, lets the writer finish what it has, and waits for it.
    pub fn close(&self) {
        if let Ok(mut jobs) = self.inner.jobs.lock() {
            jobs.take();
        }
        let writer = self.inner.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }

    /// Makes the writer thread die the way a bug outside any job would: for the tests of
    /// what notices a dead writer. Not in the shipped binary.
    #[cfg(test)]
    pub(crate) fn kill_writer_for_test(&self) {
        struct PanicsOnCompletion;
        impl WriteJob for PanicsOnCompletion {
            fn run(&mut self, _conn: &Connection) -> bool {
                true
            }
            fn failed_for_storage(&self) -> bool {
                false
            }
            fn complete(self: Box<Self>, _commit: Result<(), &rusqlite::Error>) {
                panic!("injected: the writer thread fails outside any job");
            }
        }
        if let Ok(jobs) = self.inner.jobs.lock()
            && let Some(jobs) = jobs.as_ref()
        {
            let _ = jobs.send(Box::new(PanicsOnCompletion));
        }
    }

    /// A real, committed write: proves the disk takes writes right now.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let now = now_ms();
        self.write(move |conn| {
            conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', ?1)")?
                .execute(params![now.to_string()])?;
            Ok(())
        })
        .await
    }
}

/// Lives on the writer thread's stack: unwinding past it (a panic outside any job) marks
/// the writer dead, so /healthz fails and serve exits for the supervisor to restart it.
struct WriterDeath(Arc<watch::Sender<bool>>);

impl Drop for WriterDeath {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "the store's writer thread died; kabar stops so that it can be restarted"
            );
            self.0.send_replace(true);
        }
    }
}

fn writer_loop(
    conn: Connection,
    jobs: mpsc::Receiver<Box<dyn WriteJob>>,
    commits: &AtomicU64,
    writable: &AtomicBool,
    death: WriterDeath,
) {
    // Dropped before the parameters: the death is flagged before the job queue closes, so
    // a write that finds the queue closed already sees why.
    let _death = death;
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            writable.store(false, Ordering::Relaxed);
            for job in batch {
                job.complete(Err(&e));
            }
            continue;
        }
        // A job refused for lack of room or write access fails inside its savepoint while
        // the (then empty) commit succeeds: that counts as a failed write too.
        // Only a job that did its work makes a commit proof that the disk takes writes.
        let mut storage_failed = false;
        let mut any_done = false;
        for job in batch.iter_mut() {
            if job.run(&conn) {
                any_done = true;
            } else {
                storage_failed |= job.failed_for_storage();
            }
        }
        let commit = conn.execute_batch("COMMIT");
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
            writable.store(false, Ordering::Relaxed);
        } else {
            commits.fetch_add(1, Ordering::Relaxed);
            if storage_failed {
                writable.store(false, Ordering::Relaxed);
            } else if any_done {
                writable.store(true, Ordering::Relaxed);
            }
        }
        for job in batch {
            job.complete(commit.as_ref().map(|_| ()));
        }
    }
}

pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

// ---------------------------------------------------------------------------------------
// Outbox

pub fn enqueue(conn: &Connection, message: &NewMessage<'_>) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO outbox (space, kind, thread_key, body, fallback_body, received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        message.space,
        message.kind,
        message.thread_key,
        message.body,
        message.fallback_body,
        message.received_ms
    ])?;
    Ok(conn.last_insert_rowid())
}

/// The oldest messages of a space after `after_id`, in queue order.
pub fn next_messages(
    conn: &Connection,
    space: &str,
    after_id: i64,
    limit: usize,
) -> Result<Vec<QueuedMessage>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, space, kind, thread_key, body, fallback_body, received_ms, attempts FROM outbox
         WHERE space = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![space, after_id, limit as i64], |row| {
        Ok(QueuedMessage {
            id: row.get(0)?,
            space: row.get(1)?,
            kind: row.get(2)?,
            thread_key: row.get(3)?,
            body: row.get(4)?,
            fallback_body: row.get(5)?,
            received_ms: row.get(6)?,
            attempts: row.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Chat accepted it: it leaves the outbox.
pub fn remove(conn: &Connection, id: i64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
        .execute(params![id])?;
    Ok(())
}

pub fn record_failure(conn: &Connection, id: i64, error: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
    )?
    .execute(params![id, error])?;
    Ok(())
}

/// Chat refused the message's card: from now on it is its text fallback, which the
/// sender tries once. Recorded in the store so a restart does not try the card again.
pub fn switch_to_fallback(conn: &Connection, id: i64, error: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE outbox SET body = fallback_body, fallback_body = NULL, attempts = attempts + 1,
         last_error = ?2 WHERE id = ?1 AND fallback_body IS NOT NULL",
    )?
    .execute(params![id, error])?;
    Ok(())
}

/// Moves a message from the outbox to the dead letters, with why; the new dead letter's id
/// (None when the message had already left the outbox).
pub fn dead_letter(
    conn: &Connection,
    id: i64,
    reason: &str,
    status: Option<u16>,
    detail: &str,
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO dead_letters
             (space, kind, thread_key, body, fallback_body, received_ms, dead_ms, attempts, reason, status, detail)
             SELECT space, kind, thread_key, body, fallback_body, received_ms, ?2, attempts, ?3, ?4, ?5
             FROM outbox WHERE id = ?1",
        )?
        .execute(params![id, now_ms, reason, status, detail])?;
    // Read before the DELETE: the rowid of the dead letter this call inserted.
    let dead_letter_id = (inserted == 1).then(|| conn.last_insert_rowid());
    remove(conn, id)?;
    Ok(dead_letter_id)
}

pub fn dead_letters(conn: &Connection, space: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, space, kind, thread_key, body, fallback_body, received_ms, dead_ms, attempts,
         reason, status, detail
         FROM dead_letters WHERE ?1 IS NULL OR space = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![space], |row| {
        Ok(DeadLetter {
            id: row.get(0)?,
            space: row.get(1)?,
            kind: row.get(2)?,
            thread_key: row.get(3)?,
            body: row.get(4)?,
            fallback_body: row.get(5)?,
            received_ms: row.get(6)?,
            dead_ms: row.get(7)?,
            attempts: row.get(8)?,
            reason: row.get(9)?,
            status: row.get(10)?,
            detail: row.get(11)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn queue_stats(conn: &Connection) -> Result<Vec<QueueStats>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT space, COUNT(*), MIN(received_ms) FROM outbox GROUP BY space")?;
    let rows = stmt.query_map([], |row| {
        Ok(QueueStats {
            space: row.get(0)?,
            messages: row.get(1)?,
            oldest_received_ms: row.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn dead_letter_counts(conn: &Connection) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT space, COUNT(*) FROM dead_letters GROUP BY space")?;
    let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How long episode state is kept after an alert was last seen. Alertmanager re-sends a
/// firing alert every repeat_interval, which refreshes it; a week covers any sane setting.
pub const EPISODE_RETENTION_MS: i64 = 7 * 24 * 3_600_000;

/// Forgets episodes not seen for the retention and notification digests past the
/// duplicate window.
pub fn prune(conn: &Connection, now_ms: i64) -> Result<(usize, usize), StoreError> {
    let episodes = conn
        .prepare_cached("DELETE FROM episodes WHERE seen_ms < ?1")?
        .execute(params![now_ms - EPISODE_RETENTION_MS])?;
    conn.prepare_cached("DELETE FROM group_episodes WHERE seen_ms < ?1")?
        .execute(params![now_ms - EPISODE_RETENTION_MS])?;
    let window = crate::state::DUPLICATE_WINDOW.as_millis() as i64;
    let digests = conn
        .prepare_cached("DELETE FROM recent_notifications WHERE received_ms < ?1")?
        .execute(params![now_ms - window])?;
    Ok((episodes, digests))
}

// ---------------------------------------------------------------------------------------
// Episode state

/// Episode state inside the current write transaction.
pub struct SqlEpisodes<'a>(pub &'a Connection);

/// Refreshing `seen_ms` on every re-send would turn each unchanged alert into a write;
/// once an hour is plenty to keep it clear of the retention.
const SEEN_REFRESH_MS: i64 = 3_600_000;

impl EpisodeStore for SqlEpisodes<'_> {
    type Error = StoreError;

    fn episode(&mut self, key: &EpisodeKey) -> Result<Option<Episode>, StoreError> {
        let row = self
            .0
            .prepare_cached(
                "SELECT firing_posted, resolved, last_post_ms, thread_key, seen_ms, resolved_ms,
                 resolved_ends_ms FROM episodes
                 WHERE space = ?1 AND fingerprint = ?2 AND starts_at_ns = ?3",
            )?
            .query_row(
                params![key.space, key.fingerprint, key.starts_at_ns],
                |row| {
                    Ok((
                        Episode {
                            firing_posted: row.get(0)?,
                            resolved: row.get(1)?,
                            last_post_ms: row.get(2)?,
                            thread_key: row.get(3)?,
                            resolved_ms: row.get(5)?,
                            resolved_ends_ms: row.get(6)?,
                        },
                        row.get::<_, i64>(4)?,
                    ))
                },
            )
            .optional()?;
        let now = now_ms();
        if let Some((_, seen)) = row
            && now - seen > SEEN_REFRESH_MS
        {
            self.0
                .prepare_cached(
                    "UPDATE episodes SET seen_ms = ?4 WHERE space = ?1 AND fingerprint = ?2 AND starts_at_ns = ?3",
                )?
                .execute(params![key.space, key.fingerprint, key.starts_at_ns, now])?;
        }
        Ok(row.map(|(episode, _)| episode))
    }

    fn save_episode(
        &mut self,
        key: &EpisodeKey,
        episode: &Episode,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.0
            .prepare_cached(
                "INSERT OR REPLACE INTO episodes
                 (space, fingerprint, starts_at_ns, firing_posted, resolved, last_post_ms, thread_key,
                  seen_ms, resolved_ms, resolved_ends_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                key.space,
                key.fingerprint,
                key.starts_at_ns,
                episode.firing_posted,
                episode.resolved,
                episode.last_post_ms,
                episode.thread_key,
                now_ms,
                episode.resolved_ms,
                episode.resolved_ends_ms
            ])?;
        Ok(())
    }

    // SQLite integers are signed: the hashes are stored bit for bit.
    fn latest_notification(
        &mut self,
        space: &str,
        group: u64,
    ) -> Result<Option<(u64, i64)>, StoreError> {
        let latest: Option<(i64, i64)> = self
            .0
            .prepare_cached(
                "SELECT digest, received_ms FROM recent_notifications
                 WHERE space = ?1 AND group_hash = ?2",
            )?
            .query_row(params![space, group as i64], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        Ok(latest.map(|(digest, at)| (digest as u64, at)))
    }

    fn record_notification(
        &mut self,
        space: &str,
        group: u64,
        digest: u64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.0
            .prepare_cached(
                "INSERT OR REPLACE INTO recent_notifications (space, group_hash, digest, received_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![space, group as i64, digest as i64, now_ms])?;
        Ok(())
    }

    fn group_episode(
        &mut self,
        space: &str,
        group_key: &str,
    ) -> Result<Option<GroupEpisode>, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT thread_key, open FROM group_episodes WHERE space = ?1 AND group_key = ?2",
            )?
            .query_row(params![space, group_key], |row| {
                Ok(GroupEpisode {
                    thread_key: row.get(0)?,
                    open: row.get(1)?,
                })
            })
            .optional()?)
    }

    fn save_group_episode(
        &mut self,
        space: &str,
        group_key: &str,
        group: &GroupEpisode,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.0
            .prepare_cached(
                "INSERT OR REPLACE INTO group_episodes (space, group_key, thread_key, open, seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![space, group_key, group.thread_key, group.open, now_ms])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message<'a>(space: &'a str, body: &'a str) -> NewMessage<'a> {
        NewMessage {
            space,
            kind: "firing",
            thread_key: Some("k"),
            body,
            fallback_body: None,
            received_ms: 1,
        }
    }

    #[tokio::test]
    async fn queued_messages_survive_reopen_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        for body in ["one", "two", "three"] {
            store
                .write(move |conn| enqueue(conn, &message("ops", body)))
                .await
                .expect("enqueue");
        }
        store
            .write(|conn| enqueue(conn, &message("dev", "other")))
            .await
            .expect("enqueue");
        store.close();
        drop(store);

        let store = Store::open(dir.path()).expect("reopen");
        let queued = store
            .read(|conn| next_messages(conn, "ops", 0, 10))
            .await
            .expect("read");
        let bodies: Vec<&str> = queued.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["one", "two", "three"]);
        let after = store
            .read(move |conn| next_messages(conn, "ops", queued[0].id, 1))
            .await
            .expect("read");
        assert_eq!(after[0].body, "two");
        let stats = store.read(queue_stats).await.expect("stats");
        assert_eq!(stats.len(), 2);
    }

    #[tokio::test]
    async fn a_failing_job_does_not_undo_its_batch_neighbours() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let good = store.write(|conn| enqueue(conn, &message("ops", "kept")));
        let bad = store.write(|conn| {
            enqueue(conn, &message("ops", "undone"))?;
            conn.execute("INSERT INTO no_such_table VALUES (1)", [])?;
            Ok(())
        });
        let (good, bad) = tokio::join!(good, bad);
        assert!(good.is_ok());
        assert!(bad.is_err());
        let queued = store
            .read(|conn| next_messages(conn, "ops", 0, 10))
            .await
            .expect("read");
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].body, "kept");
    }

    #[tokio::test]
    async fn dead_letters_keep_the_message_and_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let id = store
            .write(|conn| enqueue(conn, &message("ops", "body")))
            .await
            .expect("enqueue");
        store
            .write(move |conn| {
                record_failure(conn, id, "HTTP 503")?;
                dead_letter(conn, id, "clientError", Some(400), "INVALID_ARGUMENT", 99)
            })
            .await
            .expect("dead letter");
        assert!(
            store
                .read(|c| next_messages(c, "ops", 0, 10))
                .await
                .expect("read")
                .is_empty()
        );
        let dead = store
            .read(|c| dead_letters(c, Some("ops")))
            .await
            .expect("read");
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].body, "body");
        assert_eq!(dead[0].attempts, 1);
        assert_eq!(dead[0].status, Some(400));
        assert_eq!(dead[0].reason, "clientError");
        assert_eq!(
            store.read(dead_letter_counts).await.expect("count"),
            vec![("ops".to_owned(), 1)]
        );
    }

    #[tokio::test]
    async fn episodes_round_trip_and_prune() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let key = EpisodeKey {
            space: "ops".into(),
            fingerprint: "abc".into(),
            starts_at_ns: 42,
        };
        let episode = Episode {
            firing_posted: true,
            resolved: false,
            last_post_ms: 7,
            thread_key: Some("kabar:ops:digest:1".into()),
            resolved_ms: Some(5),
            resolved_ends_ms: Some(-62_135_596_800_000),
        };
        let group = GroupEpisode {
            thread_key: "kabar:ops:group:1".into(),
            open: true,
        };
        let (k, e, g) = (key.clone(), episode.clone(), group.clone());
        let (loaded, loaded_group) = store
            .write(move |conn| {
                let mut episodes = SqlEpisodes(conn);
                episodes.save_episode(&k, &e, now_ms())?;
                episodes.save_group_episode("ops", "{}:{a=\"b\"}", &g, now_ms())?;
                assert_eq!(episodes.latest_notification("ops", 9)?, None);
                episodes.record_notification("ops", 9, u64::MAX, 1_000)?;
                episodes.record_notification("ops", u64::MAX, 1, 2_000)?;
                assert_eq!(
                    episodes.latest_notification("ops", 9)?,
                    Some((u64::MAX, 1_000)),
                    "hashes survive SQLite's signed integers; groups are separate"
                );
                episodes.record_notification("ops", 9, 2, 3_000)?;
                assert_eq!(episodes.latest_notification("ops", 9)?, Some((2, 3_000)));
                Ok((
                    episodes.episode(&k)?,
                    episodes.group_episode("ops", "{}:{a=\"b\"}")?,
                ))
            })
            .await
            .expect("write");
        assert_eq!(loaded, Some(episode));
        assert_eq!(loaded_group, Some(group));
        let (episodes, digests) = store
            .write(|conn| prune(conn, now_ms() + EPISODE_RETENTION_MS + 1))
            .await
            .expect("prune");
        assert_eq!((episodes, digests), (1, 2));
        let group_left = store
            .read(|conn| SqlEpisodes(conn).group_episode("ops", "{}:{a=\"b\"}"))
            .await
            .expect("read");
        assert_eq!(group_left, None, "pruned with the episodes");
    }

    #[tokio::test]
    async fn a_refused_card_becomes_its_text_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let id = store
            .write(|conn| {
                enqueue(
                    conn,
                    &NewMessage {
                        fallback_body: Some("{\"text\":\"t\"}"),
                        ..message("ops", "{\"cardsV2\":[]}")
                    },
                )
            })
            .await
            .expect("enqueue");
        store
            .write(move |conn| switch_to_fallback(conn, id, "400 invalid card"))
            .await
            .expect("switch");
        // Only once: a second switch finds no fallback and leaves the text alone.
        store
            .write(move |conn| switch_to_fallback(conn, id, "again"))
            .await
            .expect("switch");
        let queued = store
            .read(|conn| next_messages(conn, "ops", 0, 10))
            .await
            .expect("read");
        assert_eq!(queued[0].body, "{\"text\":\"t\"}");
        assert_eq!(queued[0].fallback_body, None);
        assert_eq!(queued[0].attempts, 1);
    }

    #[tokio::test]
    async fn a_version_1_store_is_migrated_with_its_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let conn = Connection::open(dir.path().join(DATABASE_FILE)).expect("open");
            conn.execute_batch(MIGRATIONS[0]).expect("v1 schema");
            conn.execute(
                "INSERT INTO outbox (space, kind, thread_key, body, received_ms) VALUES ('ops', 'firing', 'k', '{}', 5)",
                [],
            )
            .expect("insert");
            conn.execute(
                "INSERT INTO episodes VALUES ('ops', 'fp', 1, 1, 0, 2, 3), ('ops', 'gone', 1, 1, 1, 9, 3)",
                [],
            )
            .expect("insert");
        }
        let store = Store::open(dir.path()).expect("migrates");
        let queued = store
            .read(|conn| next_messages(conn, "ops", 0, 10))
            .await
            .expect("read");
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].fallback_body, None);
        let key = EpisodeKey {
            space: "ops".into(),
            fingerprint: "fp".into(),
            starts_at_ns: 1,
        };
        let episode = store
            .write(move |conn| SqlEpisodes(conn).episode(&key))
            .await
            .expect("read")
            .expect("kept");
        assert!(episode.firing_posted && episode.thread_key.is_none());
        assert_eq!(episode.resolved_ms, None);
        let key = EpisodeKey {
            space: "ops".into(),
            fingerprint: "gone".into(),
            starts_at_ns: 1,
        };
        let resolved = store
            .write(move |conn| SqlEpisodes(conn).episode(&key))
            .await
            .expect("read")
            .expect("kept");
        assert_eq!(
            (resolved.resolved_ms, resolved.resolved_ends_ms),
            (Some(9), None),
            "a resolve from before v3 counts from its last post"
        );
        let version: i64 = store
            .read(|conn| Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?))
            .await
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
    }

    /// kabar_store_writable follows the writer: a write the disk refuses turns it false,
    /// the next write that commits turns it true again. (tests/faults.rs does this with a
    /// real full and read-only tmpfs; this runs without root.)
    #[tokio::test]
    async fn writable_follows_the_results_of_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        assert!(store.writable());
        // What an INSERT into a full disk returns; the batch's (empty) commit succeeds.
        let refused = store
            .write(|_| -> Result<(), StoreError> {
                Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                    Some("database or disk is full".into()),
                )))
            })
            .await
            .expect_err("the job fails");
        assert!(refused.is_disk_problem(), "{refused}");
        assert!(
            !store.writable(),
            "a write the disk refused leaves the store unwritable"
        );
        // A job failing for its own reasons says nothing about the disk.
        store
            .write(|_| -> Result<(), StoreError> {
                Err(StoreError::Internal("no such row".into()))
            })
            .await
            .expect_err("the job fails");
        assert!(
            !store.writable(),
            "still unwritable: nothing has committed since"
        );
        store.probe().await.expect("the probe commits");
        assert!(store.writable());
        store
            .write(|_| -> Result<(), StoreError> {
                Err(StoreError::Internal("no such row".into()))
            })
            .await
            .expect_err("the job fails");
        assert!(store.writable(), "a logic error is not a disk problem");
        store.mark_unresponsive();
        assert!(
            !store.writable(),
            "a probe that timed out counts as unwritable"
        );
        store.probe().await.expect("the probe commits");
        assert!(store.writable());
        // The writer connection refusing to begin a transaction at all.
        store
            .write(|conn| Ok(conn.pragma_update(None, "query_only", true)?))
            .await
            .expect("switch the writer connection to read-only");
        store.probe().await.expect_err("no transaction can begin");
        assert!(!store.writable());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let writes: Vec<_> = (0..300)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let body = format!("m{i}");
                    store
                        .write(move |conn| enqueue(conn, &message("ops", &body)))
                        .await
                })
            })
            .collect();
        for write in writes {
            write.await.expect("task").expect("write");
        }
        let (submitted, commits) = store.write_stats();
        assert_eq!(submitted, 300);
        assert!(
            commits < 300,
            "300 concurrent writes took {commits} commits: no batching"
        );
        let queued = store
            .read(|c| next_messages(c, "ops", 0, 1000))
            .await
            .expect("read");
        assert_eq!(queued.len(), 300, "every acknowledged write is there");
    }

    #[tokio::test]
    async fn a_panicking_job_is_rolled_back_and_the_writer_carries_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store
            .write(|conn| enqueue(conn, &message("ops", "before")))
            .await
            .expect("write");
        let panicked = store
            .write(|conn| -> Result<(), StoreError> {
                enqueue(conn, &message("ops", "half-done"))?;
                panic!("injected: a bug inside a write job");
            })
            .await
            .expect_err("the job panicked");
        assert!(matches!(panicked, StoreError::JobPanicked), "{panicked:?}");
        // Jobs in one batch: the panicking one does not undo the others.
        let (a, b, c) = tokio::join!(
            store.write(|conn| enqueue(conn, &message("ops", "same-batch-1"))),
            store.write(|_| -> Result<(), StoreError> { panic!("injected again") }),
            store.write(|conn| enqueue(conn, &message("ops", "same-batch-2"))),
        );
        assert!(a.is_ok() && c.is_ok(), "{a:?} {c:?}");
        assert!(matches!(b, Err(StoreError::JobPanicked)), "{b:?}");
        store
            .write(|conn| enqueue(conn, &message("ops", "after")))
            .await
            .expect("the writer still takes writes");
        assert!(!store.writer_died());
        let bodies: Vec<String> = store
            .read(|conn| next_messages(conn, "ops", 0, 10))
            .await
            .expect("read")
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(bodies, ["before", "same-batch-1", "same-batch-2", "after"]);
    }

    #[tokio::test]
    async fn a_dead_writer_is_reported_not_hidden() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        assert!(!store.writer_died());
        store.kill_writer_for_test();
        tokio::time::timeout(std::time::Duration::from_secs(10), store.writer_death())
            .await
            .expect("the death is signalled");
        assert!(store.writer_died());
        let err = store.write(|_| Ok(())).await.expect_err("no writer");
        assert!(matches!(err, StoreError::WriterDied), "{err:?}");
        store.close();
    }

    #[tokio::test]
    async fn writes_after_close_fail_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.close();
        let err = store.write(|_| Ok(())).await.expect_err("closed");
        assert!(matches!(err, StoreError::Closed));
    }
}
