//! App mode's SQL: the names Chat gave created messages (which edits address), the two
//! columns that say how a queued message is written, and each episode's action state (an
//! opaque JSON document). It must not decide when to edit nor read inside the state.

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

/// Forgets names recorded and action states last saved before `before_ms` (the episode
/// retention).
pub(super) fn prune(conn: &Connection, before_ms: i64) -> Result<usize, StoreError> {
    conn.prepare_cached("DELETE FROM app_episodes WHERE seen_ms < ?1")?
        .execute(params![before_ms])?;
    Ok(conn
        .prepare_cached("DELETE FROM message_names WHERE created_ms < ?1")?
        .execute(params![before_ms])?)
}

pub(super) fn app_episode(
    conn: &Connection,
    episode_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT state FROM app_episodes WHERE episode_id = ?1")?
        .query_row(params![episode_id], |row| row.get(0))
        .optional()?)
}

pub(super) fn save_app_episode(
    conn: &Connection,
    episode_id: &str,
    space: &str,
    state: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO app_episodes (episode_id, space, state, seen_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (episode_id) DO UPDATE SET space = excluded.space,
         state = excluded.state, seen_ms = excluded.seen_ms",
    )?
    .execute(params![episode_id, space, state, now_ms])?;
    Ok(())
}
