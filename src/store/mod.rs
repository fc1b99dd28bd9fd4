//! The store port: what kabar needs from durable state (episodes, the outbox, dead letters),
//! as traits the adapters implement. It must not hold SQL or know which adapter runs.
//!
//! A notification's episode updates and the messages they queue are one unit of work
//! ([`Transaction`]): they commit together before Alertmanager gets its 200, or not at all.
//! Senders read a space's queue in order and record what became of each message; the CLI
//! lists, retries and drops dead letters. SQLite under `state_dir` is the adapter kabar
//! serves with ([`sqlite`]); [`memory`] keeps episodes in a map for `kabar render`.

pub(crate) mod copy;
pub(crate) mod memory;
pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::plan::{Episode, EpisodeKey, GroupEpisode};

pub use memory::MemoryEpisodes;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[source] sqlite::SqliteError),
    #[error("PostgreSQL: {0}")]
    Postgres(#[source] postgres::PostgresError),
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
    pub(crate) fn is_disk_problem(&self) -> bool {
        match self {
            StoreError::Sqlite(e) => e.is_disk_problem(),
            StoreError::CreateDir { .. } => true,
            _ => false,
        }
    }

    /// What kind of trouble, for `kabar_store_errors_total{kind}`: unavailable (the
    /// database or disk cannot be reached or written), conflict (two writers collided; the
    /// work is retried), timeout, or other.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            StoreError::Postgres(e) => e.kind(),
            e if e.is_disk_problem() => "unavailable",
            StoreError::Closed | StoreError::WriterDied => "unavailable",
            _ => "other",
        }
    }

    /// Two transactions collided (a deadlock or serialization failure): running the same
    /// work again is expected to succeed.
    pub(crate) fn is_conflict(&self) -> bool {
        self.kind() == "conflict"
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
    /// App-mode spaces: how the message is written (None: a webhook or dry-run message).
    pub app: Option<AppWrite>,
}

/// How a message is written to an app-mode space (`space: spaces/…`), kept with it in the
/// queue and the dead letters so every retry writes the same message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppWrite {
    /// Created with `messageId` = this `client-…` id (and the requestId derived from it).
    Create { message_id: String },
    /// An edit (PATCH) of the message created under this `client-…` id.
    Edit { message_id: String },
}

impl AppWrite {
    /// The `client-…` id the write creates or edits.
    pub fn message_id(&self) -> &str {
        match self {
            AppWrite::Create { message_id } | AppWrite::Edit { message_id } => message_id,
        }
    }

    pub fn is_edit(&self) -> bool {
        matches!(self, AppWrite::Edit { .. })
    }

    /// The two stored columns of a message's write (`app_write`, `app_message_id`), as
    /// every adapter keeps them; (None, None) for a webhook message.
    pub(crate) fn columns(app: Option<&AppWrite>) -> (Option<&'static str>, Option<&str>) {
        match app {
            None => (None, None),
            Some(AppWrite::Create { message_id }) => (Some("create"), Some(message_id)),
            Some(AppWrite::Edit { message_id }) => (Some("edit"), Some(message_id)),
        }
    }

    /// The write two stored columns describe; None for webhook rows. Only "create" is
    /// written besides "edit"; a create is the safe reading, its messageId keeps it from
    /// posting twice.
    pub(crate) fn from_columns(
        write: Option<String>,
        message_id: Option<String>,
    ) -> Option<AppWrite> {
        let message_id = message_id?;
        match write.as_deref() {
            Some("edit") => Some(AppWrite::Edit { message_id }),
            _ => Some(AppWrite::Create { message_id }),
        }
    }
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
    /// App-mode spaces: how the message is written.
    pub app: Option<AppWrite>,
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
    /// App-mode spaces: how the message is written, kept for a retry.
    pub app: Option<AppWrite>,
}

/// Depth of one space's queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    pub space: String,
    pub messages: i64,
    pub oldest_received_ms: Option<i64>,
}

/// A space's lease, as a claim answered it: held by the claiming replica from now on.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseClaim {
    pub space: String,
    /// Taken over from another replica whose lease ran out (it died, hung or lost the
    /// database), rather than renewed, free or handed over on shutdown.
    pub takeover: bool,
    /// When Chat last answered a request for the space, by whichever replica (Unix ms):
    /// a new holder keeps the space's pace from there.
    pub last_answer_ms: Option<i64>,
}

/// Why the senders should look at their queues again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// Messages were queued for this space, by this replica or another.
    Space(String),
    /// Wake-ups may have been missed (the listener reconnected): every sender looks.
    All,
}

/// An episode as a store holds it, for copying a whole store.
#[derive(Debug, Clone)]
pub(crate) struct StoredEpisode {
    pub key: EpisodeKey,
    pub episode: Episode,
    pub seen_ms: i64,
}

/// A per_group thread as a store holds it, for copying a whole store.
#[derive(Debug, Clone)]
pub(crate) struct StoredGroup {
    pub space: String,
    pub group_key: String,
    pub group: GroupEpisode,
    pub seen_ms: i64,
}

/// A group's latest notification digest as a store holds it, for copying a whole store.
#[derive(Debug, Clone)]
pub(crate) struct StoredDigest {
    pub space: String,
    pub group: u64,
    pub digest: u64,
    pub received_ms: i64,
}

/// The name Chat gave an app-mode message, as a store holds it, for copying a store.
#[derive(Debug, Clone)]
pub(crate) struct StoredName {
    pub space: String,
    pub message_id: String,
    pub name: String,
    pub created_ms: i64,
}

/// An app-mode episode's action state as a store holds it, for copying a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredAppEpisode {
    pub episode_id: String,
    pub space: String,
    pub state: String,
    pub seen_ms: i64,
}

/// How long episode state is kept after an alert was last seen. Alertmanager re-sends a
/// firing alert every repeat_interval, which refreshes it; a week covers any sane setting.
pub(crate) const EPISODE_RETENTION_MS: i64 = 7 * 24 * 3_600_000;

/// Reads and writes episode state: the SQLite transaction in the service, a map for
/// `kabar render`. Planning calls it; it only reads and writes the keys it is given.
pub trait EpisodeStore {
    type Error;
    fn episode(&mut self, key: &EpisodeKey) -> Result<Option<Episode>, Self::Error>;
    fn save_episode(
        &mut self,
        key: &EpisodeKey,
        episode: &Episode,
        now_ms: i64,
    ) -> Result<(), Self::Error>;
    /// The latest notification recorded for `group` (a hash of its group key) in
    /// `space`: its digest and when it was recorded (Unix ms).
    fn latest_notification(
        &mut self,
        space: &str,
        group: u64,
    ) -> Result<Option<(u64, i64)>, Self::Error>;
    /// Records `digest` as the latest notification of `group` in `space`.
    fn record_notification(
        &mut self,
        space: &str,
        group: u64,
        digest: u64,
        now_ms: i64,
    ) -> Result<(), Self::Error>;
    fn group_episode(
        &mut self,
        space: &str,
        group_key: &str,
    ) -> Result<Option<GroupEpisode>, Self::Error>;
    fn save_group_episode(
        &mut self,
        space: &str,
        group_key: &str,
        group: &GroupEpisode,
        now_ms: i64,
    ) -> Result<(), Self::Error>;
    /// The app-mode action state of the episode whose id (the 24 hex of its opening
    /// card's `client-` id) is `episode_id`: an opaque JSON document (who acknowledged or
    /// silenced it, the clicks already handled, the card to answer with). Where replicas
    /// share the store, reading it makes other transactions reading the same episode wait
    /// for this one, so two copies of one click take turns.
    fn app_episode(&mut self, episode_id: &str) -> Result<Option<String>, Self::Error>;
    /// Records `state` as the action state of `episode_id`, an episode of `space`. Kept
    /// as long as episodes are, counted from `now_ms`.
    fn save_app_episode(
        &mut self,
        episode_id: &str,
        space: &str,
        state: &str,
        now_ms: i64,
    ) -> Result<(), Self::Error>;
}

/// One unit of work of the pipeline: episode reads and writes, and the messages they
/// queue. Everything done through it commits as one, or nothing does.
pub trait Transaction: EpisodeStore<Error = StoreError> {
    /// Appends a message to the end of its space's queue; returns its queue id.
    fn enqueue(&mut self, message: &NewMessage<'_>) -> Result<i64, StoreError>;
}

/// The synchronous work a [`Store::transact`] runs. Synchronous on purpose: an adapter runs
/// it where its transaction lives (SQLite: on its writer thread, inside a savepoint).
pub type Work = Box<dyn FnOnce(&mut dyn Transaction) -> Result<(), StoreError> + Send>;

/// A future an adapter returns; boxed so `dyn Store` works.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Durable state, as the pipeline, the senders, the server and the CLI use it.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Runs `work` in a transaction and resolves once it committed (durably).
    fn transact(&self, work: Work) -> StoreFuture<'_, ()>;
    /// The oldest messages of `space` in queue order, leaving out `skip` (messages this
    /// process finished with but could not remove). Not "after an id": with several
    /// writers a lower id may commit after a higher one, and must not be passed over.
    fn next_messages(
        &self,
        space: &str,
        skip: Vec<i64>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<QueuedMessage>>;
    /// Chat accepted the message, answering at `answered_ms`: it leaves the queue.
    fn mark_delivered(&self, id: i64, answered_ms: i64) -> StoreFuture<'_, ()>;
    /// A failed attempt, answered (or given up on) at `answered_ms`: counted, with its
    /// error, for the next try.
    fn record_failure(&self, id: i64, error: &str, answered_ms: i64) -> StoreFuture<'_, ()>;
    /// Chat refused the card: from now on the message is its text fallback.
    fn switch_to_fallback(&self, id: i64, error: &str) -> StoreFuture<'_, ()>;
    /// Moves the message from the queue to the dead letters, with why; the new dead
    /// letter's id (None when the message had already left the queue).
    fn dead_letter(&self, id: i64, record: DeadLetterRecord) -> StoreFuture<'_, Option<i64>>;
    /// Dead letters, oldest first, of one space or all.
    fn dead_letters(&self, space: Option<&str>) -> StoreFuture<'_, Vec<DeadLetter>>;
    /// Dead letters per space.
    fn dead_letter_counts(&self) -> StoreFuture<'_, Vec<(String, i64)>>;
    /// Moves the dead letters `ids` back to the end of their spaces' queues, oldest first,
    /// as fresh messages received at `now_ms`. Returns the ones moved.
    fn retry_dead_letters(&self, ids: Vec<i64>, now_ms: i64) -> StoreFuture<'_, Vec<DeadLetter>>;
    /// Deletes the dead letters `ids`. Returns the ones deleted.
    fn drop_dead_letters(&self, ids: Vec<i64>) -> StoreFuture<'_, Vec<DeadLetter>>;
    /// Depth and oldest message of each space's queue.
    fn queue_stats(&self) -> StoreFuture<'_, Vec<QueueStats>>;
    /// Forgets episodes (and app-mode message names and action states) past the retention and notification
    /// digests past the duplicate window: (episodes, digests) removed.
    fn prune(&self, now_ms: i64) -> StoreFuture<'_, (usize, usize)>;
    /// Records the name Chat gave the app-mode message created under `message_id` in
    /// `space`, so its edits address it by that name. Kept as long as episodes are.
    fn record_message_name(
        &self,
        space: &str,
        message_id: &str,
        name: &str,
        now_ms: i64,
    ) -> StoreFuture<'_, ()>;
    /// The name recorded for the app-mode message created under `message_id` in `space`.
    fn message_name(&self, space: &str, message_id: &str) -> StoreFuture<'_, Option<String>>;
    /// The app-mode action state recorded for `episode_id`, read outside any transaction
    /// (the sender decorates cards with it; it takes no lock).
    fn app_episode(&self, episode_id: &str) -> StoreFuture<'_, Option<String>>;
    /// A real, committed write: proves the store takes writes right now.
    fn probe(&self) -> StoreFuture<'_, ()>;
    /// Whether the last write committed (kabar_store_writable).
    fn writable(&self) -> bool;
    /// A probe got no answer in time: count the store as not writable until a write commits.
    fn mark_unresponsive(&self);
    /// The store failed for good (SQLite: its writer thread died); kabar must restart.
    fn broken(&self) -> bool;
    /// Resolves when the store fails for good (never, normally).
    fn until_broken(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// (write jobs submitted, transactions committed) since the store was opened: how well
    /// the adapter batches writes into commits.
    fn write_stats(&self) -> (u64, u64);
    /// Stops taking writes, finishes what it has and releases the store. Blocking.
    fn close(&self);
    /// One process owns the store (SQLite, by the state_dir lock): every space is its own
    /// and no leases are needed. False where replicas share it.
    fn exclusive(&self) -> bool;
    /// The adapter's name, for kabar_store_backend_info.
    fn backend(&self) -> &'static str;
    /// Renews or takes, for `lease`, the leases of those of `spaces` that are `holder`'s,
    /// free, or expired; answers the ones `holder` holds now.
    fn claim_spaces(
        &self,
        holder: &str,
        spaces: Vec<String>,
        lease: Duration,
    ) -> StoreFuture<'_, Vec<LeaseClaim>>;
    /// Gives up `holder`'s leases of `spaces` at once, for another replica to continue.
    fn release_spaces(&self, holder: &str, spaces: Vec<String>) -> StoreFuture<'_, ()>;
    /// Messages queued by other replicas, as they commit: taken once, by delivery. None
    /// where nothing else writes the store.
    fn take_wakeups(&self) -> Option<mpsc::Receiver<Wakeup>>;
    /// Makes the store fail for good the way a bug would: for the tests of what notices.
    #[cfg(test)]
    fn break_for_test(&self);
}

/// Why a message became a dead letter, as the store records it.
#[derive(Debug, Clone)]
pub struct DeadLetterRecord {
    pub reason: &'static str,
    pub status: Option<u16>,
    pub detail: String,
    pub dead_ms: i64,
}

/// Runs `work` as one unit of work and returns its result once committed.
pub async fn transact<T, F>(store: &dyn Store, work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Transaction) -> Result<T, StoreError> + Send + 'static,
{
    let slot = Arc::new(Mutex::new(None));
    let filled = Arc::clone(&slot);
    store
        .transact(Box::new(move |transaction| {
            let value = work(transaction)?;
            if let Ok(mut slot) = filled.lock() {
                *slot = Some(value);
            }
            Ok(())
        }))
        .await?;
    let value = slot.lock().ok().and_then(|mut slot| slot.take());
    value.ok_or_else(|| StoreError::Internal("the transaction committed without a result".into()))
}

/// Opens the store the configuration names if it exists, without creating one: the CLI's
/// way in, so a mistyped config does not leave an empty store behind. None: never created.
pub(crate) async fn open_existing(
    config: &crate::config::Config,
) -> Result<Option<Arc<dyn Store>>, StoreError> {
    if let Some(settings) = &config.store.postgres {
        let store = PostgresStore::open_existing(settings, postgres::Listen::No).await?;
        return Ok(store.map(|store| Arc::new(store) as Arc<dyn Store>));
    }
    if !config.state_dir.join(sqlite::DATABASE_FILE).is_file() {
        return Ok(None);
    }
    open_sqlite(config).await.map(Some)
}

/// Where the configuration's store lives, for messages: the SQLite file, or the
/// PostgreSQL server (host and database only: the URL carries the password).
pub(crate) fn location(config: &crate::config::Config) -> String {
    match &config.store.postgres {
        Some(settings) => postgres::describe(settings),
        None => config
            .state_dir
            .join(sqlite::DATABASE_FILE)
            .display()
            .to_string(),
    }
}

/// Opens the store the configuration names (migrating it), ready to serve. The one place
/// an adapter is chosen.
pub(crate) async fn open(config: &crate::config::Config) -> Result<Arc<dyn Store>, StoreError> {
    match &config.store.postgres {
        Some(settings) => Ok(Arc::new(
            PostgresStore::open(settings, postgres::Listen::Yes).await?,
        )),
        None => open_sqlite(config).await,
    }
}

/// SQLite opens with blocking file I/O: off the runtime's threads.
async fn open_sqlite(config: &crate::config::Config) -> Result<Arc<dyn Store>, StoreError> {
    let state_dir = config.state_dir.clone();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&state_dir))
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))??;
    Ok(Arc::new(store))
}

/// Now, as the store records times (Unix ms).
pub(crate) fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}
