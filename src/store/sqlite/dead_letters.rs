//! The dead letters' SQL: moving a message out of the queue with its reason, listing,
//! counting, retrying and dropping. It must not choose which letters (the CLI's selection does).

use rusqlite::{Connection, params};

use super::app_messages::{app_columns, app_write};
use super::outbox::remove;
use crate::store::{DeadLetter, StoreError};

/// Moves a message from the outbox to the dead letters, with why; the new dead letter's id
/// (None when the message had already left the outbox).
pub(super) fn dead_letter(
    conn: &Connection,
    id: i64,
    reason: &str,
    status: Option<u16>,
    detail: &str,
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO dead_letters
             (space, kind, thread_key, body, fallback_body, received_ms, dead_ms, attempts, reason, status, detail,
              app_write, app_message_id)
             SELECT space, kind, thread_key, body, fallback_body, received_ms, ?2, attempts, ?3, ?4, ?5,
              app_write, app_message_id
             FROM outbox WHERE id = ?1",
        )?
        .execute(params![id, now_ms, reason, status, detail])?;
    // Read before the DELETE: the rowid of the dead letter this call inserted.
    let dead_letter_id = (inserted == 1).then(|| conn.last_insert_rowid());
    remove(conn, id)?;
    Ok(dead_letter_id)
}

pub(super) fn dead_letters(
    conn: &Connection,
    space: Option<&str>,
) -> Result<Vec<DeadLetter>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, space, kind, thread_key, body, fallback_body, received_ms, dead_ms, attempts,
         reason, status, detail, app_write, app_message_id
         FROM dead_letters WHERE ?1 IS NULL OR space = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![space], letter_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A dead letter from a row of its columns in the order `dead_letters` selects them.
pub(super) fn letter_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: row.get(0)?,
        space: row.get(1)?,
        kind: row.get(2)?,
        thread_key: row.get(3)?,
        body: row.get(4)?,
        fallback_body: row.get(5)?,
        received_ms: row.get(6)?,
        dead_ms: row.get(7)?,
        attempts: row.get(8)?,
        reason: row.get(9)?,
        status: row.get(10)?,
        detail: row.get(11)?,
        app: app_write(row.get(12)?, row.get(13)?),
    })
}

pub(super) fn dead_letter_counts(conn: &Connection) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT space, COUNT(*) FROM dead_letters GROUP BY space")?;
    let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Moves the dead letters `ids` back to the end of their spaces' queues, oldest first, as
/// fresh messages: attempts start at zero and `give_up_after` counts from `now_ms` (an
/// expired message would otherwise expire again at once). Returns what was moved.
pub(super) fn retry(
    conn: &Connection,
    ids: &[i64],
    now_ms: i64,
) -> Result<Vec<DeadLetter>, StoreError> {
    let chosen = chosen(conn, ids)?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO outbox (space, kind, thread_key, body, fallback_body, received_ms,
         app_write, app_message_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut delete = conn.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?;
    for letter in &chosen {
        insert.execute(params![
            letter.space,
            letter.kind,
            letter.thread_key,
            letter.body,
            letter.fallback_body,
            now_ms,
            app_columns(letter.app.as_ref()).0,
            app_columns(letter.app.as_ref()).1,
        ])?;
        delete.execute(params![letter.id])?;
    }
    Ok(chosen)
}

/// Deletes the dead letters `ids`. Returns what was deleted.
pub(super) fn drop_letters(conn: &Connection, ids: &[i64]) -> Result<Vec<DeadLetter>, StoreError> {
    let chosen = chosen(conn, ids)?;
    let mut delete = conn.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?;
    for letter in &chosen {
        delete.execute(params![letter.id])?;
    }
    Ok(chosen)
}

/// The dead letters among `ids` that still exist, oldest first.
fn chosen(conn: &Connection, ids: &[i64]) -> Result<Vec<DeadLetter>, StoreError> {
    let ids: std::collections::HashSet<i64> = ids.iter().copied().collect();
    let mut all = dead_letters(conn, None)?;
    all.retain(|letter| ids.contains(&letter.id));
    Ok(all)
}
