//! The SQLite adapter's tests of app mode's action state: restarts, replacement, pruning
//! with the episodes, the v4 → v5 migration. Test code only.

use super::DATABASE_FILE;
use super::engine::SqliteStore;
use super::episodes::SqlEpisodes;
use super::schema::{MIGRATIONS, SCHEMA_VERSION};
use crate::store::{EPISODE_RETENTION_MS, EpisodeStore, Store};
use rusqlite::Connection;

const EPISODE: &str = "0123456789abcdef01234567";

async fn save(store: &SqliteStore, episode_id: &'static str, state: &'static str, now_ms: i64) {
    store
        .write(move |conn| {
            SqlEpisodes(conn).save_app_episode(episode_id, "spaces/AAA", state, now_ms)
        })
        .await
        .expect("save");
}

async fn in_transaction(store: &SqliteStore, episode_id: &'static str) -> Option<String> {
    store
        .write(move |conn| SqlEpisodes(conn).app_episode(episode_id))
        .await
        .expect("read")
}

#[tokio::test]
async fn app_episodes_survive_reopen_and_are_replaced_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    assert_eq!(in_transaction(&store, EPISODE).await, None);
    save(&store, EPISODE, r#"{"acked_by":"a@example.com"}"#, 10).await;
    save(&store, "ffffffffffffffffffffffff", r#"{"other":true}"#, 10).await;
    // A write in the same transaction is read back by the next statement of it.
    let read_back = store
        .write(|conn| {
            let mut tx = SqlEpisodes(conn);
            tx.save_app_episode(EPISODE, "spaces/AAA", r#"{"acked_by":"b"}"#, 11)?;
            tx.app_episode(EPISODE)
        })
        .await
        .expect("write and read");
    assert_eq!(read_back.as_deref(), Some(r#"{"acked_by":"b"}"#));
    store.close();
    drop(store);

    let store = SqliteStore::open(dir.path()).expect("reopen");
    assert_eq!(
        Store::app_episode(&store, EPISODE)
            .await
            .expect("read")
            .as_deref(),
        Some(r#"{"acked_by":"b"}"#),
        "the last state saved, after a restart"
    );
    assert_eq!(
        in_transaction(&store, "ffffffffffffffffffffffff")
            .await
            .as_deref(),
        Some(r#"{"other":true}"#)
    );
    assert_eq!(
        Store::app_episode(&store, "000000000000000000000000")
            .await
            .expect("read"),
        None
    );
}

#[tokio::test]
async fn app_episodes_are_pruned_with_the_episodes_by_their_last_save() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    save(&store, EPISODE, "{}", 1_000).await;
    save(&store, "ffffffffffffffffffffffff", "{}", 5_000).await;
    // Just inside the retention of the second save, past the first one's.
    Store::prune(&store, 4_000 + EPISODE_RETENTION_MS)
        .await
        .expect("prune");
    assert_eq!(
        Store::app_episode(&store, EPISODE).await.expect("read"),
        None
    );
    assert!(
        Store::app_episode(&store, "ffffffffffffffffffffffff")
            .await
            .expect("read")
            .is_some(),
        "saved within the retention: kept"
    );
}

#[tokio::test]
async fn a_version_4_store_migrates_to_5_with_its_data_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let conn = Connection::open(dir.path().join(DATABASE_FILE)).expect("open");
        for step in &MIGRATIONS[..4] {
            conn.execute_batch(step).expect("v1..v4 schema");
        }
        conn.execute(
            "INSERT INTO outbox (space, kind, thread_key, body, received_ms, app_write, app_message_id)
             VALUES ('spaces/AAA', 'firing', 'k', '{}', 5, 'create', 'client-x')",
            [],
        )
        .expect("insert");
        conn.execute(
            "INSERT INTO message_names VALUES ('spaces/AAA', 'client-x', 'spaces/AAA/messages/m', 7)",
            [],
        )
        .expect("insert");
    }
    let store = SqliteStore::open(dir.path()).expect("migrates");
    let version: i64 = store
        .read(|conn| Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?))
        .await
        .expect("version");
    assert_eq!((version, SCHEMA_VERSION), (5, 5));
    let queued = Store::next_messages(&store, "spaces/AAA", Vec::new(), 10)
        .await
        .expect("read");
    assert_eq!(queued.len(), 1);
    assert_eq!(
        Store::message_name(&store, "spaces/AAA", "client-x")
            .await
            .expect("read")
            .as_deref(),
        Some("spaces/AAA/messages/m")
    );
    assert_eq!(
        Store::app_episode(&store, EPISODE).await.expect("read"),
        None
    );
    save(&store, EPISODE, r#"{"silenced":"id"}"#, 9).await;
    assert_eq!(
        in_transaction(&store, EPISODE).await.as_deref(),
        Some(r#"{"silenced":"id"}"#)
    );
}
