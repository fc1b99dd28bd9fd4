//! One unit of work on PostgreSQL: the port's `Transaction` over an open database
//! transaction, run on a blocking thread. It must not commit: `transact` does, once.
//!
//! The pipeline's work is synchronous, so each statement blocks this thread on the
//! runtime's handle. Reads of an episode, group, notification digest or app-mode action
//! state first take a transaction-scoped advisory lock on its key: two replicas handling copies of one
//! notification at the same moment then take turns, and the second sees what the first
//! committed (READ COMMITTED takes a fresh snapshot per statement, after the lock).

use std::collections::HashSet;

use tokio::runtime::Handle;
use tokio_postgres::types::ToSql;

use super::PostgresError;
use super::connect::OPERATION_TIMEOUT;
use crate::plan::{Episode, EpisodeKey, GroupEpisode};
use crate::store::{AppWrite, EpisodeStore, NewMessage, StoreError, Transaction, now_ms};

/// The channel new messages are announced on; the payload is the space.
pub(super) const OUTBOX_CHANNEL: &str = "kabar_outbox";

/// Refreshing `seen_ms` on every re-send would turn each unchanged alert into a write;
/// once an hour keeps it clear of the retention.
const SEEN_REFRESH_MS: i64 = 3_600_000;

pub(super) struct PgTransaction<'a> {
    pub(super) transaction: &'a deadpool_postgres::Transaction<'a>,
    pub(super) handle: &'a Handle,
    /// Spaces already announced in this transaction: one NOTIFY each is enough.
    pub(super) announced: HashSet<String>,
    /// Set when a statement timed out: the connection's state is unknown, so it is not
    /// given back to the pool.
    pub(super) timed_out: bool,
    /// Writes held back to travel with the next read, enqueue or the commit.
    pub(super) pending: Vec<Pending>,
}

/// A value bound to a held-back write.
type Param = Box<dyn ToSql + Sync + Send>;

/// A write that needs no answer, held back so that it shares a round trip: the writes of a
/// notification go out pipelined with its next statement, in order.
pub(super) struct Pending {
    sql: &'static str,
    params: Vec<Param>,
}

const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

impl PgTransaction<'_> {
    fn run<T>(
        &mut self,
        future: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        match self
            .handle
            .block_on(tokio::time::timeout(OPERATION_TIMEOUT, future))
        {
            Ok(result) => result.map_err(|e| StoreError::Postgres(e.into())),
            Err(_) => {
                self.timed_out = true;
                Err(StoreError::Postgres(PostgresError::Timeout(
                    OPERATION_TIMEOUT,
                )))
            }
        }
    }

    fn defer(&mut self, sql: &'static str, params: Vec<Param>) {
        self.pending.push(Pending { sql, params });
    }

    /// One round trip: the held-back writes, then the lock on `lock` (if any), then `sql`,
    /// pipelined on the connection. The server runs them in order, so `sql` takes its
    /// snapshot after the lock was granted and sees what the lock's previous holder
    /// committed (READ COMMITTED), and it sees this transaction's own writes.
    fn exchange(
        &mut self,
        lock: Option<i64>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        let pending = std::mem::take(&mut self.pending);
        let transaction = self.transaction;
        self.run(async move {
            let mut statements = Vec::with_capacity(pending.len());
            for write in &pending {
                statements.push(transaction.prepare_cached(write.sql).await?);
            }
            let lock_statement = match lock {
                Some(_) => Some(transaction.prepare_cached(LOCK).await?),
                None => None,
            };
            let statement = transaction.prepare_cached(sql).await?;
            let bound: Vec<Vec<&(dyn ToSql + Sync)>> = pending
                .iter()
                .map(|write| {
                    write
                        .params
                        .iter()
                        .map(|param| param.as_ref() as &(dyn ToSql + Sync))
                        .collect()
                })
                .collect();
            // Each request leaves on its future's first poll, and join polls in order.
            let writes = futures_util::future::try_join_all(
                statements
                    .iter()
                    .zip(&bound)
                    .map(|(statement, params)| transaction.execute(statement, params)),
            );
            let key = lock.unwrap_or_default();
            let locked = async {
                match &lock_statement {
                    Some(lock) => transaction.execute(lock, &[&key]).await.map(|_| ()),
                    None => Ok(()),
                }
            };
            let (written, locked, row) =
                tokio::join!(writes, locked, transaction.query_opt(&statement, params));
            written?;
            locked?;
            row
        })
    }

    /// Sends what is held back (before the commit).
    pub(super) fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.exchange(None, "SELECT 1", &[])?;
        Ok(())
    }
}

/// A 64-bit FNV-1a over the parts, each ended by a 0xff byte (which UTF-8 never holds), so
/// ("ab", "c") and ("a", "bc") differ. Stable across versions and platforms: every
/// replica must derive the same lock for the same key. Collisions only make two
/// unrelated keys take turns.
pub(super) fn lock_key(parts: &[&[u8]]) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(std::iter::once(&0xff)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash as i64
}

impl EpisodeStore for PgTransaction<'_> {
    type Error = StoreError;

    fn episode(&mut self, key: &EpisodeKey) -> Result<Option<Episode>, StoreError> {
        let lock = lock_key(&[
            b"episode",
            key.space.as_bytes(),
            key.fingerprint.as_bytes(),
            &key.starts_at_ns.to_le_bytes(),
        ]);
        let row = self.exchange(
            Some(lock),
            "SELECT firing_posted, resolved, last_post_ms, thread_key, seen_ms, resolved_ms,
             resolved_ends_ms FROM kabar_episodes
             WHERE space = $1 AND fingerprint = $2 AND starts_at_ns = $3",
            &[&key.space, &key.fingerprint, &key.starts_at_ns],
        )?;
        let Some(row) = row else { return Ok(None) };
        let episode = Episode {
            firing_posted: row.try_get(0).map_err(PostgresError::from)?,
            resolved: row.try_get(1).map_err(PostgresError::from)?,
            last_post_ms: row.try_get(2).map_err(PostgresError::from)?,
            thread_key: row.try_get(3).map_err(PostgresError::from)?,
            resolved_ms: row.try_get(5).map_err(PostgresError::from)?,
            resolved_ends_ms: row.try_get(6).map_err(PostgresError::from)?,
        };
        let seen: i64 = row.try_get(4).map_err(PostgresError::from)?;
        let now = now_ms();
        if now - seen > SEEN_REFRESH_MS {
            self.defer(
                "UPDATE kabar_episodes SET seen_ms = $4
                 WHERE space = $1 AND fingerprint = $2 AND starts_at_ns = $3",
                vec![
                    Box::new(key.space.clone()),
                    Box::new(key.fingerprint.clone()),
                    Box::new(key.starts_at_ns),
                    Box::new(now),
                ],
            );
        }
        Ok(Some(episode))
    }

    fn save_episode(
        &mut self,
        key: &EpisodeKey,
        episode: &Episode,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO kabar_episodes
             (space, fingerprint, starts_at_ns, firing_posted, resolved, last_post_ms, thread_key,
              seen_ms, resolved_ms, resolved_ends_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (space, fingerprint, starts_at_ns) DO UPDATE SET
              firing_posted = EXCLUDED.firing_posted, resolved = EXCLUDED.resolved,
              last_post_ms = EXCLUDED.last_post_ms, thread_key = EXCLUDED.thread_key,
              seen_ms = EXCLUDED.seen_ms, resolved_ms = EXCLUDED.resolved_ms,
              resolved_ends_ms = EXCLUDED.resolved_ends_ms",
            vec![
                Box::new(key.space.clone()),
                Box::new(key.fingerprint.clone()),
                Box::new(key.starts_at_ns),
                Box::new(episode.firing_posted),
                Box::new(episode.resolved),
                Box::new(episode.last_post_ms),
                Box::new(episode.thread_key.clone()),
                Box::new(now_ms),
                Box::new(episode.resolved_ms),
                Box::new(episode.resolved_ends_ms),
            ],
        );
        Ok(())
    }

    // bigint is signed: the hashes are stored bit for bit.
    fn latest_notification(
        &mut self,
        space: &str,
        group: u64,
    ) -> Result<Option<(u64, i64)>, StoreError> {
        let lock = lock_key(&[b"notification", space.as_bytes(), &group.to_le_bytes()]);
        let row = self.exchange(
            Some(lock),
            "SELECT digest, received_ms FROM kabar_recent_notifications
             WHERE space = $1 AND group_hash = $2",
            &[&space, &(group as i64)],
        )?;
        let Some(row) = row else { return Ok(None) };
        let digest: i64 = row.try_get(0).map_err(PostgresError::from)?;
        let at: i64 = row.try_get(1).map_err(PostgresError::from)?;
        Ok(Some((digest as u64, at)))
    }

    fn record_notification(
        &mut self,
        space: &str,
        group: u64,
        digest: u64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO kabar_recent_notifications (space, group_hash, digest, received_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (space, group_hash) DO UPDATE SET
              digest = EXCLUDED.digest, received_ms = EXCLUDED.received_ms",
            vec![
                Box::new(space.to_owned()),
                Box::new(group as i64),
                Box::new(digest as i64),
                Box::new(now_ms),
            ],
        );
        Ok(())
    }

    fn group_episode(
        &mut self,
        space: &str,
        group_key: &str,
    ) -> Result<Option<GroupEpisode>, StoreError> {
        let lock = lock_key(&[b"group", space.as_bytes(), group_key.as_bytes()]);
        let row = self.exchange(
            Some(lock),
            "SELECT thread_key, open FROM kabar_group_episodes WHERE space = $1 AND group_key = $2",
            &[&space, &group_key],
        )?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(GroupEpisode {
            thread_key: row.try_get(0).map_err(PostgresError::from)?,
            open: row.try_get(1).map_err(PostgresError::from)?,
        }))
    }

    fn save_group_episode(
        &mut self,
        space: &str,
        group_key: &str,
        group: &GroupEpisode,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO kabar_group_episodes (space, group_key, thread_key, open, seen_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (space, group_key) DO UPDATE SET
              thread_key = EXCLUDED.thread_key, open = EXCLUDED.open, seen_ms = EXCLUDED.seen_ms",
            vec![
                Box::new(space.to_owned()),
                Box::new(group_key.to_owned()),
                Box::new(group.thread_key.clone()),
                Box::new(group.open),
                Box::new(now_ms),
            ],
        );
        Ok(())
    }

    // Locked like an episode, under its own prefix: two replicas handling two copies of
    // one click take turns, and the second reads the state the first saved.
    fn app_episode(&mut self, episode_id: &str) -> Result<Option<String>, StoreError> {
        let lock = lock_key(&[b"app_episode", episode_id.as_bytes()]);
        let row = self.exchange(
            Some(lock),
            "SELECT state FROM kabar_app_episodes WHERE episode_id = $1",
            &[&episode_id],
        )?;
        row.map(|row| row.try_get(0).map_err(|e| PostgresError::from(e).into()))
            .transpose()
    }

    fn save_app_episode(
        &mut self,
        episode_id: &str,
        space: &str,
        state: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO kabar_app_episodes (episode_id, space, state, seen_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (episode_id) DO UPDATE SET
              space = EXCLUDED.space, state = EXCLUDED.state, seen_ms = EXCLUDED.seen_ms",
            vec![
                Box::new(episode_id.to_owned()),
                Box::new(space.to_owned()),
                Box::new(state.to_owned()),
                Box::new(now_ms),
            ],
        );
        Ok(())
    }
}

impl Transaction for PgTransaction<'_> {
    fn enqueue(&mut self, message: &NewMessage<'_>) -> Result<i64, StoreError> {
        // Delivered at commit, to every replica listening: the space's sender wakes
        // wherever it runs. Nothing is announced for a transaction that rolls back.
        if self.announced.insert(message.space.to_owned()) {
            self.defer(
                "SELECT pg_notify($1, $2)",
                vec![
                    Box::new(OUTBOX_CHANNEL.to_owned()),
                    Box::new(message.space.to_owned()),
                ],
            );
        }
        let (app_write, app_message_id) = AppWrite::columns(message.app.as_ref());
        let row = self.exchange(
            None,
            "INSERT INTO kabar_outbox
             (space, kind, thread_key, body, fallback_body, received_ms, app_write, app_message_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            &[
                &message.space,
                &message.kind,
                &message.thread_key,
                &message.body,
                &message.fallback_body,
                &message.received_ms,
                &app_write,
                &app_message_id,
            ],
        )?;
        let id = row
            .ok_or_else(|| StoreError::Internal("INSERT … RETURNING returned no row".into()))?
            .try_get(0)
            .map_err(PostgresError::from)?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_separate_their_parts_and_are_stable() {
        assert_ne!(lock_key(&[b"ab", b"c"]), lock_key(&[b"a", b"bc"]));
        assert_ne!(
            lock_key(&[b"group", b"ops"]),
            lock_key(&[b"episode", b"ops"])
        );
        // An app episode's lock cannot be an episode's or group's whose key parts happen
        // to spell the same bytes: the prefix is a part of its own.
        assert_ne!(
            lock_key(&[b"app_episode", b"0123"]),
            lock_key(&[b"episode", b"0123"])
        );
        assert_ne!(
            lock_key(&[b"app_episode", b"0123"]),
            lock_key(&[b"app", b"episode", b"0123"])
        );
        // Every replica of every version must agree: the value is part of the protocol
        // (FNV-1a of "kabar" and the 0xff separator, computed independently).
        assert_eq!(lock_key(&[b"kabar"]), 5_100_264_190_337_297_171);
        assert_eq!(lock_key(&[]), 0xcbf2_9ce4_8422_2325_u64 as i64);
    }
}
