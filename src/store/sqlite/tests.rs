//! The SQLite adapter's tests: queue order across restarts, batches, dead letters,
//! episodes, writability, group commit, panics and writer death. Test code only.

use super::DATABASE_FILE;
use super::dead_letters::*;
use super::engine::*;
use super::episodes::*;
use super::outbox::*;
use super::schema::{MIGRATIONS, SCHEMA_VERSION};
use crate::plan::*;
use crate::store::*;
use rusqlite::Connection;

fn message<'a>(space: &'a str, body: &'a str) -> NewMessage<'a> {
    NewMessage {
        space,
        kind: "firing",
        thread_key: Some("k"),
        body,
        fallback_body: None,
        received_ms: 1,
        app: None,
    }
}

#[tokio::test]
async fn queued_messages_survive_reopen_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    for body in ["one", "two", "three"] {
        store
            .write(move |conn| enqueue(conn, &message("ops", body)))
            .await
            .expect("enqueue");
    }
    store
        .write(|conn| enqueue(conn, &message("dev", "other")))
        .await
        .expect("enqueue");
    store.close();
    drop(store);

    let store = SqliteStore::open(dir.path()).expect("reopen");
    let queued = store
        .read(|conn| next_messages(conn, "ops", &[], 10))
        .await
        .expect("read");
    let bodies: Vec<&str> = queued.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["one", "two", "three"]);
    let after = store
        .read(move |conn| next_messages(conn, "ops", &[queued[0].id], 1))
        .await
        .expect("read");
    assert_eq!(after[0].body, "two");
    let stats = store.read(queue_stats).await.expect("stats");
    assert_eq!(stats.len(), 2);
}

#[tokio::test]
async fn a_failing_job_does_not_undo_its_batch_neighbours() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    let good = store.write(|conn| enqueue(conn, &message("ops", "kept")));
    let bad = store.write(|conn| {
        enqueue(conn, &message("ops", "undone"))?;
        conn.execute("INSERT INTO no_such_table VALUES (1)", [])?;
        Ok(())
    });
    let (good, bad) = tokio::join!(good, bad);
    assert!(good.is_ok());
    assert!(bad.is_err());
    let queued = store
        .read(|conn| next_messages(conn, "ops", &[], 10))
        .await
        .expect("read");
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].body, "kept");
}

#[tokio::test]
async fn dead_letters_keep_the_message_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    let id = store
        .write(|conn| enqueue(conn, &message("ops", "body")))
        .await
        .expect("enqueue");
    store
        .write(move |conn| {
            record_failure(conn, id, "HTTP 503")?;
            dead_letter(conn, id, "clientError", Some(400), "INVALID_ARGUMENT", 99)
        })
        .await
        .expect("dead letter");
    assert!(
        store
            .read(|c| next_messages(c, "ops", &[], 10))
            .await
            .expect("read")
            .is_empty()
    );
    let dead = store
        .read(|c| dead_letters(c, Some("ops")))
        .await
        .expect("read");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "body");
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].status, Some(400));
    assert_eq!(dead[0].reason, "clientError");
    assert_eq!(
        store.read(dead_letter_counts).await.expect("count"),
        vec![("ops".to_owned(), 1)]
    );
}

#[tokio::test]
async fn episodes_round_trip_and_prune() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    let key = EpisodeKey {
        space: "ops".into(),
        fingerprint: "abc".into(),
        starts_at_ns: 42,
    };
    let episode = Episode {
        firing_posted: true,
        resolved: false,
        last_post_ms: 7,
        thread_key: Some("kabar:ops:digest:1".into()),
        resolved_ms: Some(5),
        resolved_ends_ms: Some(-62_135_596_800_000),
    };
    let group = GroupEpisode {
        thread_key: "kabar:ops:group:1".into(),
        open: true,
    };
    let (k, e, g) = (key.clone(), episode.clone(), group.clone());
    let (loaded, loaded_group) = store
        .write(move |conn| {
            let mut episodes = SqlEpisodes(conn);
            episodes.save_episode(&k, &e, now_ms())?;
            episodes.save_group_episode("ops", "{}:{a=\"b\"}", &g, now_ms())?;
            assert_eq!(episodes.latest_notification("ops", 9)?, None);
            episodes.record_notification("ops", 9, u64::MAX, 1_000)?;
            episodes.record_notification("ops", u64::MAX, 1, 2_000)?;
            assert_eq!(
                episodes.latest_notification("ops", 9)?,
                Some((u64::MAX, 1_000)),
                "hashes survive SQLite's signed integers; groups are separate"
            );
            episodes.record_notification("ops", 9, 2, 3_000)?;
            assert_eq!(episodes.latest_notification("ops", 9)?, Some((2, 3_000)));
            Ok((
                episodes.episode(&k)?,
                episodes.group_episode("ops", "{}:{a=\"b\"}")?,
            ))
        })
        .await
        .expect("write");
    assert_eq!(loaded, Some(episode));
    assert_eq!(loaded_group, Some(group));
    let (episodes, digests) = store
        .write(|conn| prune(conn, now_ms() + EPISODE_RETENTION_MS + 1))
        .await
        .expect("prune");
    assert_eq!((episodes, digests), (1, 2));
    let group_left = store
        .read(|conn| SqlEpisodes(conn).group_episode("ops", "{}:{a=\"b\"}"))
        .await
        .expect("read");
    assert_eq!(group_left, None, "pruned with the episodes");
}

#[tokio::test]
async fn a_refused_card_becomes_its_text_for_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    let id = store
        .write(|conn| {
            enqueue(
                conn,
                &NewMessage {
                    fallback_body: Some("{\"text\":\"t\"}"),
                    ..message("ops", "{\"cardsV2\":[]}")
                },
            )
        })
        .await
        .expect("enqueue");
    store
        .write(move |conn| switch_to_fallback(conn, id, "400 invalid card"))
        .await
        .expect("switch");
    // Only once: a second switch finds no fallback and leaves the text alone.
    store
        .write(move |conn| switch_to_fallback(conn, id, "again"))
        .await
        .expect("switch");
    let queued = store
        .read(|conn| next_messages(conn, "ops", &[], 10))
        .await
        .expect("read");
    assert_eq!(queued[0].body, "{\"text\":\"t\"}");
    assert_eq!(queued[0].fallback_body, None);
    assert_eq!(queued[0].attempts, 1);
}

#[tokio::test]
async fn a_version_1_store_is_migrated_with_its_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let conn = Connection::open(dir.path().join(DATABASE_FILE)).expect("open");
        conn.execute_batch(MIGRATIONS[0]).expect("v1 schema");
        conn.execute(
            "INSERT INTO outbox (space, kind, thread_key, body, received_ms) VALUES ('ops', 'firing', 'k', '{}', 5)",
            [],
        )
        .expect("insert");
        conn.execute(
            "INSERT INTO episodes VALUES ('ops', 'fp', 1, 1, 0, 2, 3), ('ops', 'gone', 1, 1, 1, 9, 3)",
            [],
        )
        .expect("insert");
    }
    let store = SqliteStore::open(dir.path()).expect("migrates");
    let queued = store
        .read(|conn| next_messages(conn, "ops", &[], 10))
        .await
        .expect("read");
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].fallback_body, None);
    let key = EpisodeKey {
        space: "ops".into(),
        fingerprint: "fp".into(),
        starts_at_ns: 1,
    };
    let episode = store
        .write(move |conn| SqlEpisodes(conn).episode(&key))
        .await
        .expect("read")
        .expect("kept");
    assert!(episode.firing_posted && episode.thread_key.is_none());
    assert_eq!(episode.resolved_ms, None);
    let key = EpisodeKey {
        space: "ops".into(),
        fingerprint: "gone".into(),
        starts_at_ns: 1,
    };
    let resolved = store
        .write(move |conn| SqlEpisodes(conn).episode(&key))
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(
        (resolved.resolved_ms, resolved.resolved_ends_ms),
        (Some(9), None),
        "a resolve from before v3 counts from its last post"
    );
    let version: i64 = store
        .read(|conn| Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?))
        .await
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
}

/// kabar_store_writable follows the writer: a write the disk refuses turns it false,
/// the next write that commits turns it true again. (the faults suite does this with a
/// real full and read-only tmpfs; this runs without root.)
#[tokio::test]
async fn writable_follows_the_results_of_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    assert!(store.writable());
    // What an INSERT into a full disk returns; the batch's (empty) commit succeeds.
    let refused = store
        .write(|_| -> Result<(), StoreError> {
            Err(StoreError::from(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                Some("database or disk is full".into()),
            )))
        })
        .await
        .expect_err("the job fails");
    assert!(refused.is_disk_problem(), "{refused}");
    assert!(
        !store.writable(),
        "a write the disk refused leaves the store unwritable"
    );
    // A job failing for its own reasons says nothing about the disk.
    store
        .write(|_| -> Result<(), StoreError> { Err(StoreError::Internal("no such row".into())) })
        .await
        .expect_err("the job fails");
    assert!(
        !store.writable(),
        "still unwritable: nothing has committed since"
    );
    store.probe().await.expect("the probe commits");
    assert!(store.writable());
    store
        .write(|_| -> Result<(), StoreError> { Err(StoreError::Internal("no such row".into())) })
        .await
        .expect_err("the job fails");
    assert!(store.writable(), "a logic error is not a disk problem");
    store.mark_unresponsive();
    assert!(
        !store.writable(),
        "a probe that timed out counts as unwritable"
    );
    store.probe().await.expect("the probe commits");
    assert!(store.writable());
    // The writer connection refusing to begin a transaction at all.
    store
        .write(|conn| Ok(conn.pragma_update(None, "query_only", true)?))
        .await
        .expect("switch the writer connection to read-only");
    store.probe().await.expect_err("no transaction can begin");
    assert!(!store.writable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    let writes: Vec<_> = (0..300)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let body = format!("m{i}");
                store
                    .write(move |conn| enqueue(conn, &message("ops", &body)))
                    .await
            })
        })
        .collect();
    for write in writes {
        write.await.expect("task").expect("write");
    }
    let (submitted, commits) = store.write_stats();
    assert_eq!(submitted, 300);
    assert!(
        commits < 300,
        "300 concurrent writes took {commits} commits: no batching"
    );
    let queued = store
        .read(|c| next_messages(c, "ops", &[], 1000))
        .await
        .expect("read");
    assert_eq!(queued.len(), 300, "every acknowledged write is there");
}

#[tokio::test]
async fn a_panicking_job_is_rolled_back_and_the_writer_carries_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    store
        .write(|conn| enqueue(conn, &message("ops", "before")))
        .await
        .expect("write");
    let panicked = store
        .write(|conn| -> Result<(), StoreError> {
            enqueue(conn, &message("ops", "half-done"))?;
            panic!("injected: a bug inside a write job");
        })
        .await
        .expect_err("the job panicked");
    assert!(matches!(panicked, StoreError::JobPanicked), "{panicked:?}");
    // Jobs in one batch: the panicking one does not undo the others.
    let (a, b, c) = tokio::join!(
        store.write(|conn| enqueue(conn, &message("ops", "same-batch-1"))),
        store.write(|_| -> Result<(), StoreError> { panic!("injected again") }),
        store.write(|conn| enqueue(conn, &message("ops", "same-batch-2"))),
    );
    assert!(a.is_ok() && c.is_ok(), "{a:?} {c:?}");
    assert!(matches!(b, Err(StoreError::JobPanicked)), "{b:?}");
    store
        .write(|conn| enqueue(conn, &message("ops", "after")))
        .await
        .expect("the writer still takes writes");
    assert!(!store.writer_died());
    let bodies: Vec<String> = store
        .read(|conn| next_messages(conn, "ops", &[], 10))
        .await
        .expect("read")
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(bodies, ["before", "same-batch-1", "same-batch-2", "after"]);
}

#[tokio::test]
async fn a_dead_writer_is_reported_not_hidden() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    assert!(!store.writer_died());
    store.kill_writer_for_test();
    tokio::time::timeout(std::time::Duration::from_secs(10), store.writer_death())
        .await
        .expect("the death is signalled");
    assert!(store.writer_died());
    let err = store.write(|_| Ok(())).await.expect_err("no writer");
    assert!(matches!(err, StoreError::WriterDied), "{err:?}");
    store.close();
}

#[tokio::test]
async fn writes_after_close_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    store.close();
    let err = store.write(|_| Ok(())).await.expect_err("closed");
    assert!(matches!(err, StoreError::Closed));
}

/// App mode's state: how a message is written rides with it through the outbox, the dead
/// letters and a retry, and the names of created messages survive a restart and are
/// pruned with the episodes.
#[tokio::test]
async fn app_writes_and_message_names_survive_reopen_dead_letters_and_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    let edit = AppWrite::Edit {
        message_id: "client-abc".into(),
    };
    let write = edit.clone();
    let id = store
        .write(move |conn| {
            enqueue(
                conn,
                &NewMessage {
                    app: Some(write),
                    ..message("ops", "{}")
                },
            )
        })
        .await
        .expect("enqueue");
    Store::record_message_name(&store, "ops", "client-abc", "spaces/S/messages/m.m", 10)
        .await
        .expect("record");
    store.close();

    let store = SqliteStore::open(dir.path()).expect("reopen");
    let queued = Store::next_messages(&store, "ops", Vec::new(), 10)
        .await
        .expect("read");
    assert_eq!(queued[0].app, Some(edit.clone()));
    assert_eq!(
        Store::message_name(&store, "ops", "client-abc")
            .await
            .expect("read"),
        Some("spaces/S/messages/m.m".to_owned())
    );
    assert_eq!(
        Store::message_name(&store, "dev", "client-abc")
            .await
            .expect("read"),
        None
    );
    let record = DeadLetterRecord {
        reason: "clientError",
        status: Some(404),
        detail: "gone".into(),
        dead_ms: 20,
    };
    let letter = Store::dead_letter(&store, id, record)
        .await
        .expect("dead letter")
        .expect("an id");
    let letters = Store::dead_letters(&store, None).await.expect("list");
    assert_eq!(letters[0].app, Some(edit.clone()));
    Store::retry_dead_letters(&store, vec![letter], 30)
        .await
        .expect("retry");
    let queued = Store::next_messages(&store, "ops", Vec::new(), 10)
        .await
        .expect("read");
    assert_eq!(queued[0].app, Some(edit));
    let far = 10 + EPISODE_RETENTION_MS + 1;
    Store::prune(&store, far).await.expect("prune");
    assert_eq!(
        Store::message_name(&store, "ops", "client-abc")
            .await
            .expect("read"),
        None,
        "pruned with the episodes"
    );
}
