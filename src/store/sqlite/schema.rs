//! The SQLite file's schema: connection pragmas (WAL, synchronous=FULL) and the migrations,
//! in order, refusing a newer schema. It must not read or write rows.

use std::path::Path;

use rusqlite::Connection;

use crate::store::StoreError;

pub(super) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
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
pub(super) const MIGRATIONS: [&str; 5] = [
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
    // v4: app mode (`space: spaces/…`). A queued or dead message says how it is written
    // (app_write 'create' or 'edit', NULL for webhooks) and under which client- id; the
    // names Chat gave created messages, which edits address.
    "BEGIN;
             ALTER TABLE outbox ADD COLUMN app_write TEXT;
             ALTER TABLE outbox ADD COLUMN app_message_id TEXT;
             ALTER TABLE dead_letters ADD COLUMN app_write TEXT;
             ALTER TABLE dead_letters ADD COLUMN app_message_id TEXT;
             CREATE TABLE message_names (
                 space TEXT NOT NULL,
                 message_id TEXT NOT NULL,
                 name TEXT NOT NULL,
                 created_ms INTEGER NOT NULL,
                 PRIMARY KEY (space, message_id)
             ) WITHOUT ROWID;
             CREATE INDEX message_names_by_time ON message_names (created_ms);
             PRAGMA user_version = 4;
             COMMIT;",
    // v5: app mode's buttons. Each episode's action state (who acknowledged or silenced
    // it, the clicks already handled, the card to answer with) as one opaque JSON
    // document, keyed by the episode id its opening card's client- id carries.
    "BEGIN;
             CREATE TABLE app_episodes (
                 episode_id TEXT PRIMARY KEY,
                 space TEXT NOT NULL,
                 state TEXT NOT NULL,
                 seen_ms INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX app_episodes_by_seen ON app_episodes (seen_ms);
             PRAGMA user_version = 5;
             COMMIT;",
];
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
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
