//! App mode's action state on PostgreSQL through the store port: it survives a restart
//! of kabar's store, two transactions reading one episode's state take turns (two replicas
//! handling two copies of one click), and it is pruned with the episodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kabar::{Runtime, Store, transact};

use crate::common::config::{ConfigBuilder, Space};
use crate::common::kabar::TestConfig;
use crate::common::postgres::{PgCluster, rows};

const EPISODE: &str = "0123456789abcdef01234567";

fn config(url: &str) -> TestConfig {
    TestConfig::build(
        ConfigBuilder::new()
            .allow_any_host()
            .postgres(url, None)
            .space(
                "ops",
                Space::webhook("http://127.0.0.1:9/v1/spaces/S/messages?key=k&token=t"),
            ),
    )
}

async fn open(config: &TestConfig) -> Arc<dyn Store> {
    let runtime = Runtime::load(&config.path).expect("test config is valid");
    kabar::open_store(&runtime.config)
        .await
        .expect("open the PostgreSQL store")
}

async fn save(store: &dyn Store, episode_id: &'static str, state: &'static str, now_ms: i64) {
    transact(store, move |tx| {
        tx.save_app_episode(episode_id, "spaces/AAA", state, now_ms)
    })
    .await
    .expect("save");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_episodes_survive_a_restart_and_are_replaced_whole() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let url = cluster.database();
    let config = config(&url);
    let store = open(&config).await;
    save(store.as_ref(), EPISODE, r#"{"acked_by":"a"}"#, 10).await;
    // A save and a read in one transaction: the read sees the held-back write.
    let read_back = transact(store.as_ref(), |tx| {
        tx.save_app_episode(EPISODE, "spaces/AAA", r#"{"acked_by":"b"}"#, 11)?;
        tx.app_episode(EPISODE)
    })
    .await
    .expect("save and read");
    assert_eq!(read_back.as_deref(), Some(r#"{"acked_by":"b"}"#));
    store.close();
    drop(store);

    let store = open(&config).await;
    assert_eq!(
        store.app_episode(EPISODE).await.expect("read").as_deref(),
        Some(r#"{"acked_by":"b"}"#),
        "the last state saved, after the store was reopened"
    );
    let inside = transact(store.as_ref(), |tx| tx.app_episode(EPISODE))
        .await
        .expect("read");
    assert_eq!(inside.as_deref(), Some(r#"{"acked_by":"b"}"#));
    assert_eq!(
        store
            .app_episode("ffffffffffffffffffffffff")
            .await
            .expect("read"),
        None
    );
    assert_eq!(
        rows(&url, "SELECT space, seen_ms FROM kabar_app_episodes"),
        vec![vec![Some("spaces/AAA".to_owned()), Some("11".to_owned())]]
    );
    store.close();
}

/// Two copies of one click, handled at once: each reads the state, waits, and saves what
/// it read plus its own mark. Taking turns, the second sees the first's save and keeps
/// both marks; without the lock both read nothing and one mark is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_transactions_reading_one_app_episode_take_turns() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let config = config(&cluster.database());
    let store = open(&config).await;
    let other = open(&config).await;
    let click = |store: Arc<dyn Store>, mark: &'static str| async move {
        transact(store.as_ref(), move |tx| {
            let before = tx.app_episode(EPISODE)?.unwrap_or_default();
            std::thread::sleep(Duration::from_millis(300));
            tx.save_app_episode(EPISODE, "spaces/AAA", &format!("{before}{mark}"), 1)?;
            Ok(before)
        })
        .await
        .expect("click")
    };
    let started = Instant::now();
    let (first, second) = tokio::join!(click(store.clone(), "a"), click(other.clone(), "b"));
    let state = store
        .app_episode(EPISODE)
        .await
        .expect("read")
        .unwrap_or_default();
    assert!(
        state == "ab" || state == "ba",
        "one click's save was lost: {state:?} (they read {first:?} and {second:?})"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "the two transactions overlapped: {:?}",
        started.elapsed()
    );
    store.close();
    other.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_episodes_are_pruned_with_the_episodes() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let config = config(&cluster.database());
    let store = open(&config).await;
    const WEEK_MS: i64 = 7 * 24 * 3_600_000;
    save(store.as_ref(), EPISODE, "{}", 1_000).await;
    save(store.as_ref(), "ffffffffffffffffffffffff", "{}", 5_000).await;
    store.prune(4_000 + WEEK_MS).await.expect("prune");
    assert_eq!(store.app_episode(EPISODE).await.expect("read"), None);
    assert!(
        store
            .app_episode("ffffffffffffffffffffffff")
            .await
            .expect("read")
            .is_some(),
        "saved within the retention: kept"
    );
    store.close();
}

/// A database kabar's schema 1 left (before app episodes) is migrated to 2 at open, its
/// rows kept, and takes app episodes from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_1_database_migrates_with_its_rows_kept() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let url = cluster.database();
    let config = config(&url);
    open(&config).await.close();
    // Back to what schema 1 was, with a message name in it.
    rows(
        &url,
        "DROP TABLE kabar_app_episodes;
         UPDATE kabar_schema SET version = 1;
         INSERT INTO kabar_message_names VALUES ('spaces/AAA', 'client-x', 'spaces/AAA/messages/m', 7)
         RETURNING 1",
    );
    let store = open(&config).await;
    assert_eq!(
        rows(&url, "SELECT version FROM kabar_schema"),
        vec![vec![Some("2".to_owned())]]
    );
    assert_eq!(
        store
            .message_name("spaces/AAA", "client-x")
            .await
            .expect("read")
            .as_deref(),
        Some("spaces/AAA/messages/m")
    );
    save(store.as_ref(), EPISODE, r#"{"acked_by":"a"}"#, 9).await;
    assert_eq!(
        store.app_episode(EPISODE).await.expect("read").as_deref(),
        Some(r#"{"acked_by":"a"}"#)
    );
    store.close();
}
