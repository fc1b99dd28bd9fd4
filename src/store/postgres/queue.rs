//! The outbox and the dead letters on PostgreSQL: reads in queue order, what became of each
//! message, moving letters back, depth, pruning. It must not plan or hold leases.

use deadpool_postgres::Client;
use tokio_postgres::Row;

use super::db;
use crate::store::{
    AppWrite, DeadLetter, DeadLetterRecord, EPISODE_RETENTION_MS, QueueStats, QueuedMessage,
    StoreError,
};

const MESSAGE_COLUMNS: &str = "id, space, kind, thread_key, body, fallback_body, received_ms, \
     attempts, app_write, app_message_id";
const LETTER_COLUMNS: &str = "id, space, kind, thread_key, body, fallback_body, received_ms, \
     dead_ms, attempts, reason, status, detail, app_write, app_message_id";

fn message(row: &Row) -> Result<QueuedMessage, StoreError> {
    Ok(QueuedMessage {
        id: row.try_get(0).map_err(db)?,
        space: row.try_get(1).map_err(db)?,
        kind: row.try_get(2).map_err(db)?,
        thread_key: row.try_get(3).map_err(db)?,
        body: row.try_get(4).map_err(db)?,
        fallback_body: row.try_get(5).map_err(db)?,
        received_ms: row.try_get(6).map_err(db)?,
        attempts: row.try_get(7).map_err(db)?,
        app: AppWrite::from_columns(row.try_get(8).map_err(db)?, row.try_get(9).map_err(db)?),
    })
}

fn letter(row: &Row) -> Result<DeadLetter, StoreError> {
    let status: Option<i32> = row.try_get(10).map_err(db)?;
    Ok(DeadLetter {
        id: row.try_get(0).map_err(db)?,
        space: row.try_get(1).map_err(db)?,
        kind: row.try_get(2).map_err(db)?,
        thread_key: row.try_get(3).map_err(db)?,
        body: row.try_get(4).map_err(db)?,
        fallback_body: row.try_get(5).map_err(db)?,
        received_ms: row.try_get(6).map_err(db)?,
        dead_ms: row.try_get(7).map_err(db)?,
        attempts: row.try_get(8).map_err(db)?,
        reason: row.try_get(9).map_err(db)?,
        status: status.and_then(|status| u16::try_from(status).ok()),
        detail: row.try_get(11).map_err(db)?,
        app: AppWrite::from_columns(row.try_get(12).map_err(db)?, row.try_get(13).map_err(db)?),
    })
}

pub(super) async fn next_messages(
    client: &Client,
    space: &str,
    skip: &[i64],
    limit: usize,
) -> Result<Vec<QueuedMessage>, StoreError> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM kabar_outbox
         WHERE space = $1 AND NOT (id = ANY($2)) ORDER BY id LIMIT $3"
    );
    let statement = client.prepare_cached(&sql).await.map_err(db)?;
    let rows = client
        .query(&statement, &[&space, &skip, &(limit as i64)])
        .await
        .map_err(db)?;
    rows.iter().map(message).collect()
}

/// Chat answered at `answered_ms`: the space's lease remembers it, so whichever replica
/// sends next for the space keeps the pace.
const NOTE_ANSWER: &str = "UPDATE kabar_leases SET last_answer_ms = $2
     WHERE space IN (SELECT space FROM changed)";

pub(super) async fn mark_delivered(
    client: &Client,
    id: i64,
    answered_ms: i64,
) -> Result<(), StoreError> {
    let sql = format!(
        "WITH changed AS (DELETE FROM kabar_outbox WHERE id = $1 RETURNING space) {NOTE_ANSWER}"
    );
    let statement = client.prepare_cached(&sql).await.map_err(db)?;
    client
        .execute(&statement, &[&id, &answered_ms])
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn record_failure(
    client: &Client,
    id: i64,
    error: &str,
    answered_ms: i64,
) -> Result<(), StoreError> {
    let sql = format!(
        "WITH changed AS (UPDATE kabar_outbox SET attempts = attempts + 1, last_error = $3
         WHERE id = $1 RETURNING space) {NOTE_ANSWER}"
    );
    let statement = client.prepare_cached(&sql).await.map_err(db)?;
    client
        .execute(&statement, &[&id, &answered_ms, &error])
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn switch_to_fallback(
    client: &Client,
    id: i64,
    error: &str,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(
            "UPDATE kabar_outbox SET body = fallback_body, fallback_body = NULL,
             attempts = attempts + 1, last_error = $2
             WHERE id = $1 AND fallback_body IS NOT NULL",
        )
        .await
        .map_err(db)?;
    client
        .execute(&statement, &[&id, &error])
        .await
        .map_err(db)?;
    Ok(())
}

/// One statement, so the move is atomic without a transaction of its own.
pub(super) async fn dead_letter(
    client: &Client,
    id: i64,
    record: &DeadLetterRecord,
) -> Result<Option<i64>, StoreError> {
    let statement = client
        .prepare_cached(
            "WITH gone AS (DELETE FROM kabar_outbox WHERE id = $1 RETURNING *)
             INSERT INTO kabar_dead_letters
             (space, kind, thread_key, body, fallback_body, received_ms, dead_ms, attempts,
              reason, status, detail, app_write, app_message_id)
             SELECT space, kind, thread_key, body, fallback_body, received_ms, $2, attempts,
              $3, $4, $5, app_write, app_message_id FROM gone
             RETURNING id",
        )
        .await
        .map_err(db)?;
    let status = record.status.map(i32::from);
    let row = client
        .query_opt(
            &statement,
            &[
                &id,
                &record.dead_ms,
                &record.reason,
                &status,
                &record.detail,
            ],
        )
        .await
        .map_err(db)?;
    row.map(|row| row.try_get(0).map_err(db)).transpose()
}

pub(super) async fn dead_letters(
    client: &Client,
    space: Option<&str>,
) -> Result<Vec<DeadLetter>, StoreError> {
    let sql = format!(
        "SELECT {LETTER_COLUMNS} FROM kabar_dead_letters
         WHERE $1::text IS NULL OR space = $1 ORDER BY id"
    );
    let statement = client.prepare_cached(&sql).await.map_err(db)?;
    let rows = client.query(&statement, &[&space]).await.map_err(db)?;
    rows.iter().map(letter).collect()
}

pub(super) async fn dead_letter_counts(client: &Client) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = client
        .query(
            "SELECT space, COUNT(*) FROM kabar_dead_letters GROUP BY space ORDER BY space",
            &[],
        )
        .await
        .map_err(db)?;
    rows.iter()
        .map(|row| Ok((row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?)))
        .collect()
}

/// Moves the letters `ids` back to the end of their queues, oldest letter first, in one
/// transaction; each space's sender is woken wherever it runs.
pub(super) async fn retry(
    client: &mut Client,
    ids: &[i64],
    now_ms: i64,
) -> Result<Vec<DeadLetter>, StoreError> {
    let transaction = client.transaction().await.map_err(db)?;
    let sql =
        format!("DELETE FROM kabar_dead_letters WHERE id = ANY($1) RETURNING {LETTER_COLUMNS}");
    let rows = transaction.query(&sql, &[&ids]).await.map_err(db)?;
    let mut moved = rows.iter().map(letter).collect::<Result<Vec<_>, _>>()?;
    moved.sort_by_key(|letter| letter.id);
    for letter in &moved {
        let (app_write, app_message_id) = AppWrite::columns(letter.app.as_ref());
        transaction
            .execute(
                "INSERT INTO kabar_outbox
                 (space, kind, thread_key, body, fallback_body, received_ms, app_write, app_message_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &letter.space,
                    &letter.kind,
                    &letter.thread_key,
                    &letter.body,
                    &letter.fallback_body,
                    &now_ms,
                    &app_write,
                    &app_message_id,
                ],
            )
            .await
            .map_err(db)?;
    }
    let mut spaces: Vec<&str> = moved.iter().map(|letter| letter.space.as_str()).collect();
    spaces.sort_unstable();
    spaces.dedup();
    for space in spaces {
        transaction
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&super::transaction::OUTBOX_CHANNEL, &space],
            )
            .await
            .map_err(db)?;
    }
    transaction.commit().await.map_err(db)?;
    Ok(moved)
}

pub(super) async fn drop_letters(
    client: &Client,
    ids: &[i64],
) -> Result<Vec<DeadLetter>, StoreError> {
    let sql =
        format!("DELETE FROM kabar_dead_letters WHERE id = ANY($1) RETURNING {LETTER_COLUMNS}");
    let rows = client.query(&sql, &[&ids]).await.map_err(db)?;
    let mut dropped = rows.iter().map(letter).collect::<Result<Vec<_>, _>>()?;
    dropped.sort_by_key(|letter| letter.id);
    Ok(dropped)
}

pub(super) async fn queue_stats(client: &Client) -> Result<Vec<QueueStats>, StoreError> {
    let statement = client
        .prepare_cached(
            "SELECT space, COUNT(*), MIN(received_ms) FROM kabar_outbox GROUP BY space ORDER BY space",
        )
        .await
        .map_err(db)?;
    let rows = client.query(&statement, &[]).await.map_err(db)?;
    rows.iter()
        .map(|row| {
            Ok(QueueStats {
                space: row.try_get(0).map_err(db)?,
                messages: row.try_get(1).map_err(db)?,
                oldest_received_ms: row.try_get(2).map_err(db)?,
            })
        })
        .collect()
}

pub(super) async fn prune(client: &Client, now_ms: i64) -> Result<(usize, usize), StoreError> {
    let cutoff = now_ms - EPISODE_RETENTION_MS;
    let episodes = client
        .execute("DELETE FROM kabar_episodes WHERE seen_ms < $1", &[&cutoff])
        .await
        .map_err(db)?;
    client
        .execute(
            "DELETE FROM kabar_group_episodes WHERE seen_ms < $1",
            &[&cutoff],
        )
        .await
        .map_err(db)?;
    client
        .execute(
            "DELETE FROM kabar_message_names WHERE created_ms < $1",
            &[&cutoff],
        )
        .await
        .map_err(db)?;
    client
        .execute(
            "DELETE FROM kabar_app_episodes WHERE seen_ms < $1",
            &[&cutoff],
        )
        .await
        .map_err(db)?;
    let window = crate::plan::DUPLICATE_WINDOW.as_millis() as i64;
    let digests = client
        .execute(
            "DELETE FROM kabar_recent_notifications WHERE received_ms < $1",
            &[&(now_ms - window)],
        )
        .await
        .map_err(db)?;
    Ok((episodes as usize, digests as usize))
}

pub(super) async fn record_name(
    client: &Client,
    space: &str,
    message_id: &str,
    name: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(
            "INSERT INTO kabar_message_names (space, message_id, name, created_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (space, message_id) DO UPDATE SET name = EXCLUDED.name,
              created_ms = EXCLUDED.created_ms",
        )
        .await
        .map_err(db)?;
    client
        .execute(&statement, &[&space, &message_id, &name, &now_ms])
        .await
        .map_err(db)?;
    Ok(())
}

pub(super) async fn name(
    client: &Client,
    space: &str,
    message_id: &str,
) -> Result<Option<String>, StoreError> {
    let statement = client
        .prepare_cached("SELECT name FROM kabar_message_names WHERE space = $1 AND message_id = $2")
        .await
        .map_err(db)?;
    let row = client
        .query_opt(&statement, &[&space, &message_id])
        .await
        .map_err(db)?;
    row.map(|row| row.try_get(0).map_err(db)).transpose()
}

/// An app-mode action state, outside any transaction: no lock, the latest commit.
pub(super) async fn app_episode(
    client: &Client,
    episode_id: &str,
) -> Result<Option<String>, StoreError> {
    let statement = client
        .prepare_cached("SELECT state FROM kabar_app_episodes WHERE episode_id = $1")
        .await
        .map_err(db)?;
    let row = client
        .query_opt(&statement, &[&episode_id])
        .await
        .map_err(db)?;
    row.map(|row| row.try_get(0).map_err(db)).transpose()
}

/// A real, committed write.
pub(super) async fn probe(client: &Client, now_ms: i64) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(
            "INSERT INTO kabar_meta (key, value) VALUES ('probe', $1)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        )
        .await
        .map_err(db)?;
    client
        .execute(&statement, &[&now_ms.to_string()])
        .await
        .map_err(db)?;
    Ok(())
}
