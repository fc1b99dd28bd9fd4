//! Writing a copied store into PostgreSQL, for `kabar store copy`: one transaction, so the
//! copy lands whole or not at all. It must not read the source store.

use tokio_postgres::Client;

use super::{connect, db, schema};
use crate::config::Postgres;
use crate::store::{
    AppWrite, DeadLetter, QueuedMessage, StoreError, StoredAppEpisode, StoredDigest, StoredEpisode,
    StoredGroup, StoredName,
};

/// An open copy into a migrated PostgreSQL store.
pub(crate) struct PostgresImport {
    client: Client,
}

impl PostgresImport {
    /// Connects, migrates and begins the copy's transaction.
    pub(crate) async fn begin(settings: &Postgres) -> Result<PostgresImport, StoreError> {
        let mut client = connect::dedicated(settings).await?;
        schema::migrate(&mut client).await?;
        client
            .batch_execute("BEGIN; SET LOCAL synchronous_commit = on")
            .await
            .map_err(db)?;
        Ok(PostgresImport { client })
    }

    /// Whether the target holds nothing kabar wrote: no queue, dead letters or state.
    pub(crate) async fn is_empty(&self) -> Result<bool, StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT NOT (EXISTS (SELECT 1 FROM kabar_outbox)
                   OR EXISTS (SELECT 1 FROM kabar_dead_letters)
                   OR EXISTS (SELECT 1 FROM kabar_episodes)
                   OR EXISTS (SELECT 1 FROM kabar_group_episodes)
                   OR EXISTS (SELECT 1 FROM kabar_app_episodes))",
                &[],
            )
            .await
            .map_err(db)?;
        row.try_get(0).map_err(db)
    }

    /// Appends `messages` to their queues in the order given (the source's queue order).
    pub(crate) async fn messages(&self, messages: &[QueuedMessage]) -> Result<(), StoreError> {
        let statement = self
            .client
            .prepare(
                "INSERT INTO kabar_outbox
                 (space, kind, thread_key, body, fallback_body, received_ms, attempts,
                  app_write, app_message_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .await
            .map_err(db)?;
        for m in messages {
            let (app_write, app_message_id) = AppWrite::columns(m.app.as_ref());
            self.client
                .execute(
                    &statement,
                    &[
                        &m.space,
                        &m.kind,
                        &m.thread_key,
                        &m.body,
                        &m.fallback_body,
                        &m.received_ms,
                        &m.attempts,
                        &app_write,
                        &app_message_id,
                    ],
                )
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    pub(crate) async fn dead_letters(&self, letters: &[DeadLetter]) -> Result<(), StoreError> {
        let statement = self
            .client
            .prepare(
                "INSERT INTO kabar_dead_letters
                 (space, kind, thread_key, body, fallback_body, received_ms, dead_ms, attempts,
                  reason, status, detail, app_write, app_message_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .await
            .map_err(db)?;
        for l in letters {
            let status = l.status.map(i32::from);
            let (app_write, app_message_id) = AppWrite::columns(l.app.as_ref());
            self.client
                .execute(
                    &statement,
                    &[
                        &l.space,
                        &l.kind,
                        &l.thread_key,
                        &l.body,
                        &l.fallback_body,
                        &l.received_ms,
                        &l.dead_ms,
                        &l.attempts,
                        &l.reason,
                        &status,
                        &l.detail,
                        &app_write,
                        &app_message_id,
                    ],
                )
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    /// Episodes, replacing any of the same key (only with --force can there be one).
    pub(crate) async fn episodes(&self, episodes: &[StoredEpisode]) -> Result<(), StoreError> {
        let statement = self
            .client
            .prepare(
                "INSERT INTO kabar_episodes
                 (space, fingerprint, starts_at_ns, firing_posted, resolved, last_post_ms,
                  thread_key, seen_ms, resolved_ms, resolved_ends_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (space, fingerprint, starts_at_ns) DO UPDATE SET
                  firing_posted = EXCLUDED.firing_posted, resolved = EXCLUDED.resolved,
                  last_post_ms = EXCLUDED.last_post_ms, thread_key = EXCLUDED.thread_key,
                  seen_ms = EXCLUDED.seen_ms, resolved_ms = EXCLUDED.resolved_ms,
                  resolved_ends_ms = EXCLUDED.resolved_ends_ms",
            )
            .await
            .map_err(db)?;
        for e in episodes {
            self.client
                .execute(
                    &statement,
                    &[
                        &e.key.space,
                        &e.key.fingerprint,
                        &e.key.starts_at_ns,
                        &e.episode.firing_posted,
                        &e.episode.resolved,
                        &e.episode.last_post_ms,
                        &e.episode.thread_key,
                        &e.seen_ms,
                        &e.episode.resolved_ms,
                        &e.episode.resolved_ends_ms,
                    ],
                )
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    pub(crate) async fn groups(&self, groups: &[StoredGroup]) -> Result<(), StoreError> {
        let statement = self
            .client
            .prepare(
                "INSERT INTO kabar_group_episodes (space, group_key, thread_key, open, seen_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (space, group_key) DO UPDATE SET thread_key = EXCLUDED.thread_key,
                  open = EXCLUDED.open, seen_ms = EXCLUDED.seen_ms",
            )
            .await
            .map_err(db)?;
        for g in groups {
            self.client
                .execute(
                    &statement,
                    &[
                        &g.space,
                        &g.group_key,
                        &g.group.thread_key,
                        &g.group.open,
                        &g.seen_ms,
                    ],
                )
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    pub(crate) async fn digests(&self, digests: &[StoredDigest]) -> Result<(), StoreError> {
        let statement = self
            .client
            .prepare(
                "INSERT INTO kabar_recent_notifications (space, group_hash, digest, received_ms)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (space, group_hash) DO UPDATE SET digest = EXCLUDED.digest,
                  received_ms = EXCLUDED.received_ms",
            )
            .await
            .map_err(db)?;
        for d in digests {
            self.client
                .execute(
                    &statement,
                    &[
                        &d.space,
                        &(d.group as i64),
                        &(d.digest as i64),
                        &d.received_ms,
                    ],
                )
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    /// Names of created app-mode messages, which their edits address.
    pub(crate) async fn names(&self, names: &[StoredName]) -> Result<(), StoreError> {
        let statement = self
            .client
            .prepare(
                "INSERT INTO kabar_message_names (space, message_id, name, created_ms)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (space, message_id) DO UPDATE SET name = EXCLUDED.name,
                  created_ms = EXCLUDED.created_ms",
            )
            .await
            .map_err(db)?;
        for n in names {
            self.client
                .execute(
                    &statement,
                    &[&n.space, &n.message_id, &n.name, &n.created_ms],
                )
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    /// App-mode action states, replacing any of the same episode id (only with --force).
    pub(crate) async fn app_episodes(
        &self,
        app_episodes: &[StoredAppEpisode],
    ) -> Result<(), StoreError> {
        let statement = self
            .client
            .prepare(
                "INSERT INTO kabar_app_episodes (episode_id, space, state, seen_ms)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (episode_id) DO UPDATE SET space = EXCLUDED.space,
                  state = EXCLUDED.state, seen_ms = EXCLUDED.seen_ms",
            )
            .await
            .map_err(db)?;
        for a in app_episodes {
            self.client
                .execute(&statement, &[&a.episode_id, &a.space, &a.state, &a.seen_ms])
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    /// Commits the copy and wakes the senders of `spaces` on any replica already running.
    pub(crate) async fn commit(self, spaces: &[String]) -> Result<(), StoreError> {
        for space in spaces {
            self.client
                .execute(
                    "SELECT pg_notify($1, $2)",
                    &[&super::transaction::OUTBOX_CHANNEL, space],
                )
                .await
                .map_err(db)?;
        }
        self.client.batch_execute("COMMIT").await.map_err(db)?;
        Ok(())
    }
}
