//! The queue's SQL: enqueue, read a space's next messages in order, record attempts, and
//! queue depth. It must not decide what an answer means (delivery does) nor touch episodes.

use rusqlite::{Connection, params};

use super::app_messages::{app_columns, app_write};
use crate::store::{NewMessage, QueueStats, QueuedMessage, StoreError};

pub(super) fn enqueue(conn: &Connection, message: &NewMessage<'_>) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO outbox (space, kind, thread_key, body, fallback_body, received_ms,
         app_write, app_message_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        message.space,
        message.kind,
        message.thread_key,
        message.body,
        message.fallback_body,
        message.received_ms,
        app_columns(message.app.as_ref()).0,
        app_columns(message.app.as_ref()).1,
    ])?;
    Ok(conn.last_insert_rowid())
}

/// A queued message from a row of its columns in the order `next_messages` selects them
/// (the store copy's reads select the same).
pub(super) fn message_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<QueuedMessage> {
    Ok(QueuedMessage {
        id: row.get(0)?,
        space: row.get(1)?,
        kind: row.get(2)?,
        thread_key: row.get(3)?,
        body: row.get(4)?,
        fallback_body: row.get(5)?,
        received_ms: row.get(6)?,
        attempts: row.get(7)?,
        app: app_write(row.get(8)?, row.get(9)?),
    })
}

/// The oldest messages of a space in queue order, leaving out `skip`.
pub(super) fn next_messages(
    conn: &Connection,
    space: &str,
    skip: &[i64],
    limit: usize,
) -> Result<Vec<QueuedMessage>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, space, kind, thread_key, body, fallback_body, received_ms, attempts,
         app_write, app_message_id FROM outbox
         WHERE space = ?1 ORDER BY id LIMIT ?2",
    )?;
    // The skipped ones are few (removals that failed): read past them, then leave them out.
    let wanted = limit.saturating_add(skip.len());
    let rows = stmt.query_map(params![space, wanted as i64], message_row)?;
    let mut messages = Vec::with_capacity(limit);
    for row in rows {
        let message = row?;
        if !skip.contains(&message.id) {
            messages.push(message);
        }
        if messages.len() == limit {
            break;
        }
    }
    Ok(messages)
}

/// Chat accepted it: it leaves the outbox.
pub(super) fn remove(conn: &Connection, id: i64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
        .execute(params![id])?;
    Ok(())
}

pub(super) fn record_failure(conn: &Connection, id: i64, error: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
    )?
    .execute(params![id, error])?;
    Ok(())
}

/// Chat refused the message's card: from now on it is its text fallback, which the
/// sender tries once. Recorded in the store so a restart does not try the card again.
pub(super) fn switch_to_fallback(
    conn: &Connection,
    id: i64,
    error: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE outbox SET body = fallback_body, fallback_body = NULL, attempts = attempts + 1,
         last_error = ?2 WHERE id = ?1 AND fallback_body IS NOT NULL",
    )?
    .execute(params![id, error])?;
    Ok(())
}

pub(super) fn queue_stats(conn: &Connection) -> Result<Vec<QueueStats>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT space, COUNT(*), MIN(received_ms) FROM outbox GROUP BY space")?;
    let rows = stmt.query_map([], |row| {
        Ok(QueueStats {
            space: row.get(0)?,
            messages: row.get(1)?,
            oldest_received_ms: row.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
