//! Episode state in SQLite, inside the writer's current transaction: the adapter of the
//! port's `Transaction`, and pruning. It must not plan: it stores what planning decided.

use rusqlite::{Connection, OptionalExtension, params};

use crate::plan::{Episode, EpisodeKey, GroupEpisode};
use crate::store::{EPISODE_RETENTION_MS, EpisodeStore, Transaction};
use crate::store::{NewMessage, StoreError, now_ms};

/// Forgets episodes not seen for the retention and notification digests past the
/// duplicate window.
pub(super) fn prune(conn: &Connection, now_ms: i64) -> Result<(usize, usize), StoreError> {
    let episodes = conn
        .prepare_cached("DELETE FROM episodes WHERE seen_ms < ?1")?
        .execute(params![now_ms - EPISODE_RETENTION_MS])?;
    conn.prepare_cached("DELETE FROM group_episodes WHERE seen_ms < ?1")?
        .execute(params![now_ms - EPISODE_RETENTION_MS])?;
    super::app_messages::prune(conn, now_ms - EPISODE_RETENTION_MS)?;
    let window = crate::plan::DUPLICATE_WINDOW.as_millis() as i64;
    let digests = conn
        .prepare_cached("DELETE FROM recent_notifications WHERE received_ms < ?1")?
        .execute(params![now_ms - window])?;
    Ok((episodes, digests))
}

/// Episode state inside the current write transaction.
pub(super) struct SqlEpisodes<'a>(pub &'a Connection);

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

    // One writer thread: a transaction here already runs alone, no lock is needed.
    fn app_episode(&mut self, episode_id: &str) -> Result<Option<String>, StoreError> {
        super::app_messages::app_episode(self.0, episode_id)
    }

    fn save_app_episode(
        &mut self,
        episode_id: &str,
        space: &str,
        state: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        super::app_messages::save_app_episode(self.0, episode_id, space, state, now_ms)
    }
}

impl Transaction for SqlEpisodes<'_> {
    fn enqueue(&mut self, message: &NewMessage<'_>) -> Result<i64, StoreError> {
        super::outbox::enqueue(self.0, message)
    }
}
