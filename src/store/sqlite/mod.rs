//! The SQLite adapter of the store port: one file under `state_dir`, the default store and
//! the two-command start. All of kabar's SQL lives in this folder; nothing outside names it.
//!
//! `engine` (writer thread, group commit, reader pool), `schema` (pragmas, migrations),
//! `outbox` (the queue), `dead_letters`, `episodes` (the port's `Transaction`) and
//! `app_messages` (app mode's message names, how a queued message is written, and each
//! episode's action state).

mod app_messages;
mod dead_letters;
mod engine;
mod episodes;
pub(crate) mod export;
mod outbox;
mod schema;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_app;

use std::future::Future;
use std::pin::Pin;

pub use engine::SqliteStore;

use crate::store::{
    DeadLetter, DeadLetterRecord, LeaseClaim, QueueStats, QueuedMessage, Store, StoreError,
    StoreFuture, Work,
};

/// The database file under `state_dir`.
pub(crate) const DATABASE_FILE: &str = "kabar.db";

/// An error of SQLite itself, kept whole for the log; the port sees it as
/// `StoreError::Sqlite`, so nothing outside this folder names the driver.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SqliteError(rusqlite::Error);

impl SqliteError {
    /// The disk is full, read-only or failing: the caller should retry later, not give up.
    pub(crate) fn is_disk_problem(&self) -> bool {
        match &self.0 {
            rusqlite::Error::SqliteFailure(e, _) => matches!(
                e.code,
                rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::ReadOnly
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::CannotOpen
            ),
            _ => false,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        StoreError::Sqlite(SqliteError(error))
    }
}

impl Store for SqliteStore {
    fn transact(&self, work: Work) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |conn| work(&mut episodes::SqlEpisodes(conn))))
    }

    fn next_messages(
        &self,
        space: &str,
        skip: Vec<i64>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<QueuedMessage>> {
        let space = space.to_owned();
        Box::pin(self.read(move |conn| outbox::next_messages(conn, &space, &skip, limit)))
    }

    // One process sends for every space here: the pace lives in its senders' memory.
    fn mark_delivered(&self, id: i64, _answered_ms: i64) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |conn| outbox::remove(conn, id)))
    }

    fn record_failure(&self, id: i64, error: &str, _answered_ms: i64) -> StoreFuture<'_, ()> {
        let error = error.to_owned();
        Box::pin(self.write(move |conn| outbox::record_failure(conn, id, &error)))
    }

    fn switch_to_fallback(&self, id: i64, error: &str) -> StoreFuture<'_, ()> {
        let error = error.to_owned();
        Box::pin(self.write(move |conn| outbox::switch_to_fallback(conn, id, &error)))
    }

    fn dead_letter(&self, id: i64, record: DeadLetterRecord) -> StoreFuture<'_, Option<i64>> {
        Box::pin(self.write(move |conn| {
            dead_letters::dead_letter(
                conn,
                id,
                record.reason,
                record.status,
                &record.detail,
                record.dead_ms,
            )
        }))
    }

    fn dead_letters(&self, space: Option<&str>) -> StoreFuture<'_, Vec<DeadLetter>> {
        let space = space.map(str::to_owned);
        Box::pin(self.read(move |conn| dead_letters::dead_letters(conn, space.as_deref())))
    }

    fn dead_letter_counts(&self) -> StoreFuture<'_, Vec<(String, i64)>> {
        Box::pin(self.read(dead_letters::dead_letter_counts))
    }

    fn retry_dead_letters(&self, ids: Vec<i64>, now_ms: i64) -> StoreFuture<'_, Vec<DeadLetter>> {
        Box::pin(self.write(move |conn| dead_letters::retry(conn, &ids, now_ms)))
    }

    fn drop_dead_letters(&self, ids: Vec<i64>) -> StoreFuture<'_, Vec<DeadLetter>> {
        Box::pin(self.write(move |conn| dead_letters::drop_letters(conn, &ids)))
    }

    fn queue_stats(&self) -> StoreFuture<'_, Vec<QueueStats>> {
        Box::pin(self.read(outbox::queue_stats))
    }

    fn prune(&self, now_ms: i64) -> StoreFuture<'_, (usize, usize)> {
        Box::pin(self.write(move |conn| episodes::prune(conn, now_ms)))
    }

    fn record_message_name(
        &self,
        space: &str,
        message_id: &str,
        name: &str,
        now_ms: i64,
    ) -> StoreFuture<'_, ()> {
        let (space, message_id, name) = (space.to_owned(), message_id.to_owned(), name.to_owned());
        Box::pin(
            self.write(move |conn| {
                app_messages::record_name(conn, &space, &message_id, &name, now_ms)
            }),
        )
    }

    fn message_name(&self, space: &str, message_id: &str) -> StoreFuture<'_, Option<String>> {
        let (space, message_id) = (space.to_owned(), message_id.to_owned());
        Box::pin(self.read(move |conn| app_messages::name(conn, &space, &message_id)))
    }

    fn app_episode(&self, episode_id: &str) -> StoreFuture<'_, Option<String>> {
        let episode_id = episode_id.to_owned();
        Box::pin(self.read(move |conn| app_messages::app_episode(conn, &episode_id)))
    }

    fn probe(&self) -> StoreFuture<'_, ()> {
        Box::pin(SqliteStore::probe(self))
    }

    fn writable(&self) -> bool {
        SqliteStore::writable(self)
    }

    fn mark_unresponsive(&self) {
        SqliteStore::mark_unresponsive(self);
    }

    fn broken(&self) -> bool {
        self.writer_died()
    }

    fn until_broken(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.writer_death())
    }

    fn write_stats(&self) -> (u64, u64) {
        SqliteStore::write_stats(self)
    }

    fn close(&self) {
        SqliteStore::close(self);
    }

    fn exclusive(&self) -> bool {
        true
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    // The state_dir lock makes this process the only one: it holds every space, for good.
    fn claim_spaces(
        &self,
        _holder: &str,
        spaces: Vec<String>,
        _lease: std::time::Duration,
    ) -> StoreFuture<'_, Vec<LeaseClaim>> {
        let claims = spaces
            .into_iter()
            .map(|space| LeaseClaim {
                space,
                takeover: false,
                last_answer_ms: None,
            })
            .collect();
        Box::pin(std::future::ready(Ok(claims)))
    }

    fn release_spaces(&self, _holder: &str, _spaces: Vec<String>) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    // Only this process writes the file, and it wakes its senders itself.
    fn take_wakeups(&self) -> Option<tokio::sync::mpsc::Receiver<crate::store::Wakeup>> {
        None
    }

    #[cfg(test)]
    fn break_for_test(&self) {
        self.kill_writer_for_test();
    }
}
