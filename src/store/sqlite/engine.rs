//! The SQLite adapter's engine: one writer thread with group commit (each job in a savepoint,
//! one fsync per batch), panic containment, writer death, and the reader pool. No SQL of rows.
//!
//! Writes arrive as jobs; the writer runs all jobs waiting at that moment inside one
//! transaction, commits once, and only then tells each caller its result. Callers answer
//! Alertmanager after that, so every acknowledged message is on disk, while a burst of
//! requests shares one fsync instead of paying one each.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use tokio::sync::{oneshot, watch};

use super::DATABASE_FILE;
use super::schema::{migrate, open_connection};
use crate::store::{StoreError, now_ms};

/// Upper bound of jobs in one transaction, so one commit never waits on an endless queue.
const MAX_BATCH: usize = 512;
const READER_POOL: usize = 4;

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
            StoreError::from(rusqlite::Error::SqliteFailure(*code, message.clone()))
        }
        other => StoreError::Internal(other.to_string()),
    }
}

/// Handle to the store; clones share the writer thread and reader pool.

#[derive(Clone)]
pub struct SqliteStore {
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

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store under `state_dir` and starts its writer.
    pub fn open(state_dir: &Path) -> Result<SqliteStore, StoreError> {
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
        Ok(SqliteStore {
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

    /// Runs `work` in the next write transaction and returns its result once committed.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
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
    pub(crate) fn writer_died(&self) -> bool {
        *self.inner.writer_died.borrow()
    }

    /// Resolves when the writer thread dies (never, normally).
    pub(crate) async fn writer_death(&self) {
        let mut died = self.inner.writer_died.subscribe();
        let _ = died.wait_for(|died| *died).await;
    }

    /// Runs `work` on a read-only connection off the async runtime.
    pub(crate) async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
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
    pub(crate) fn read_blocking<T, F>(&self, work: F) -> Result<T, StoreError>
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
    pub(crate) fn write_stats(&self) -> (u64, u64) {
        (
            self.inner.writes.load(Ordering::Relaxed),
            self.inner.commits.load(Ordering::Relaxed),
        )
    }

    /// Whether the store's last write transaction committed: false from a failed commit
    /// (disk full, read-only, I/O error) or a probe that timed out, until a write commits.
    pub(crate) fn writable(&self) -> bool {
        self.inner.writable.load(Ordering::Relaxed)
    }

    /// A probe write got no answer in time: the writer is stuck, so nothing commits.
    pub(crate) fn mark_unresponsive(&self) {
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
    pub(crate) async fn probe(&self) -> Result<(), StoreError> {
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
