//! Reading a whole SQLite store out, in pages, for `kabar store copy`: queue and dead
//! letters in id order, episodes, groups, digests, names, app action states. Read-only.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};

use super::DATABASE_FILE;
use crate::plan::{Episode, EpisodeKey, GroupEpisode};
use crate::store::{
    DeadLetter, QueuedMessage, StoreError, StoredAppEpisode, StoredDigest, StoredEpisode,
    StoredGroup, StoredName,
};

/// A SQLite store opened read-only, at the schema this kabar writes.
pub(crate) struct SqliteExport {
    conn: Connection,
}

impl SqliteExport {
    /// Opens `state_dir`'s store read-only; None when there is none. An older schema is
    /// refused (start kabar on it once to migrate), a newer one too.
    pub(crate) fn open(state_dir: &Path) -> Result<Option<SqliteExport>, StoreError> {
        let path = state_dir.join(DATABASE_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version != super::schema::SCHEMA_VERSION {
            return Err(StoreError::Internal(format!(
                "{} has schema version {version}, this kabar copies version {}: run this kabar's serve on it once first",
                path.display(),
                super::schema::SCHEMA_VERSION
            )));
        }
        Ok(Some(SqliteExport { conn }))
    }

    /// Queued messages after `after_id`, in queue order (every space).
    pub(crate) fn messages(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, space, kind, thread_key, body, fallback_body, received_ms, attempts,
             app_write, app_message_id FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after_id, limit as i64], super::outbox::message_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Dead letters after `after_id`, oldest first.
    pub(crate) fn dead_letters(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, space, kind, thread_key, body, fallback_body, received_ms, dead_ms, attempts,
             reason, status, detail, app_write, app_message_id FROM dead_letters
             WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![after_id, limit as i64],
            super::dead_letters::letter_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Episodes after the key `after` (space, fingerprint, startsAt), in key order.
    pub(crate) fn episodes(
        &self,
        after: Option<&EpisodeKey>,
        limit: usize,
    ) -> Result<Vec<StoredEpisode>, StoreError> {
        let (space, fingerprint, starts) = match after {
            Some(key) => (
                key.space.as_str(),
                key.fingerprint.as_str(),
                key.starts_at_ns,
            ),
            None => ("", "", i64::MIN),
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT space, fingerprint, starts_at_ns, firing_posted, resolved, last_post_ms,
             thread_key, seen_ms, resolved_ms, resolved_ends_ms FROM episodes
             WHERE (space, fingerprint, starts_at_ns) > (?1, ?2, ?3)
             ORDER BY space, fingerprint, starts_at_ns LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![space, fingerprint, starts, limit as i64], |row| {
            Ok(StoredEpisode {
                key: EpisodeKey {
                    space: row.get(0)?,
                    fingerprint: row.get(1)?,
                    starts_at_ns: row.get(2)?,
                },
                episode: Episode {
                    firing_posted: row.get(3)?,
                    resolved: row.get(4)?,
                    last_post_ms: row.get(5)?,
                    thread_key: row.get(6)?,
                    resolved_ms: row.get(8)?,
                    resolved_ends_ms: row.get(9)?,
                },
                seen_ms: row.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every per_group thread (one row per group and space: few).
    pub(crate) fn groups(&self) -> Result<Vec<StoredGroup>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT space, group_key, thread_key, open, seen_ms FROM group_episodes
             ORDER BY space, group_key",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(StoredGroup {
                space: row.get(0)?,
                group_key: row.get(1)?,
                group: GroupEpisode {
                    thread_key: row.get(2)?,
                    open: row.get(3)?,
                },
                seen_ms: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Names Chat gave app-mode messages after (space, message id) `after`, in key order.
    pub(crate) fn names(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<StoredName>, StoreError> {
        let (space, message_id) = after.unwrap_or(("", ""));
        let mut stmt = self.conn.prepare_cached(
            "SELECT space, message_id, name, created_ms FROM message_names
             WHERE (space, message_id) > (?1, ?2) ORDER BY space, message_id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![space, message_id, limit as i64], |row| {
            Ok(StoredName {
                space: row.get(0)?,
                message_id: row.get(1)?,
                name: row.get(2)?,
                created_ms: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// App-mode action states after the episode id `after`, in id order.
    pub(crate) fn app_episodes(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredAppEpisode>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT episode_id, space, state, seen_ms FROM app_episodes
             WHERE ?1 IS NULL OR episode_id > ?1 ORDER BY episode_id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], |row| {
            Ok(StoredAppEpisode {
                episode_id: row.get(0)?,
                space: row.get(1)?,
                state: row.get(2)?,
                seen_ms: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every group's latest notification digest (one row per group and space: few).
    pub(crate) fn digests(&self) -> Result<Vec<StoredDigest>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT space, group_hash, digest, received_ms FROM recent_notifications
             ORDER BY space, group_hash",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(StoredDigest {
                space: row.get(0)?,
                group: row.get::<_, i64>(1)? as u64,
                digest: row.get::<_, i64>(2)? as u64,
                received_ms: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
