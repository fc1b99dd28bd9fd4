//! App mode's SQL: the names Chat gave created messages (which edits address) and the two
//! columns that say how a queued message is written. It must not decide when to edit.

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::{AppWrite, StoreError};

/// `app_write` and `app_message_id` of a row.
pub(super) fn app_columns(app: Option<&AppWrite>) -> (Option<&'static str>, Option<&str>) {
    AppWrite::columns(app)
}

/// The write a row's two columns describe; None for webhook rows.
pub(super) fn app_write(write: Option<String>, message_id: Option<String>) -> Option<AppWrite> {
    AppWrite::from_columns(write, message_id)
}

pub(super) fn record_name(
    conn: &Connection,
    space: &str,
    message_id: &str,
    name: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO message_names (space, message_id, name, created_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (space, message_id) DO UPDATE SET name = excluded.name,
         created_ms = excluded.created_ms",
    )?
    .execute(params![space, message_id, name, now_ms])?;
    Ok(())
}

pub(super) fn name(
    conn: &Connection,
    space: &str,
    message_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT name FROM message_names WHERE space = ?1 AND message_id = ?2")?
        .query_row(params![space, message_id], |row| row.get(0))
        .optional()?)
}

/// Forgets names recorded before `before_ms` (the episode retention).
pub(super) fn prune(conn: &Connection, before_ms: i64) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached("DELETE FROM message_names WHERE created_ms < ?1")?
        .execute(params![before_ms])?)
}
