//! `kabar dead-letters list | retry | drop`: the operator's view of messages kabar gave up
//! on, through the store port beside a running kabar. Selection and output only: no SQL.
//!
//! A retried message is appended to the end of its space's outbox queue, oldest dead letter
//! first. Its original place is gone: the running sender has already moved past it, and
//! reading ids only forward is what keeps each space strictly in order. Every message
//! carries its thread key and Chat is asked to reply in that thread, so a late message
//! still lands in the right thread, merely after the replies that went out meanwhile.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{Config, ConfigError, parse_duration};
use crate::secret::scrub;
use crate::store::{self, DeadLetter, StoreError, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "no kabar store at {0} (the store this config names): has kabar run with this config yet?"
    )]
    NoStore(String),
    #[error("cannot use the store: {0}")]
    Store(#[from] StoreError),
    #[error("{0} is not a duration (examples: 30m, 4h, 2d): {1}")]
    BadDuration(&'static str, String),
    #[error(
        "{0} acts on many messages at once: name them with --space, --id, --older-than or --newer-than, or pass --all"
    )]
    NoFilter(&'static str),
    #[error("--all selects everything: drop the other filters, or --all")]
    AllWithFilters,
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(
        "no space {name:?} in this config and no dead letters for it; configured spaces: {configured}"
    )]
    UnknownSpace { name: String, configured: String },
}

/// Which dead letters a command is about. An empty filter selects all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub spaces: Vec<String>,
    pub ids: Vec<i64>,
    /// Dead-lettered at least this long ago.
    pub older_than: Option<Duration>,
    /// Dead-lettered at most this long ago.
    pub newer_than: Option<Duration>,
}

impl Selection {
    /// Builds a selection from the command line's text values.
    pub fn parse(
        spaces: Vec<String>,
        ids: Vec<i64>,
        older_than: Option<&str>,
        newer_than: Option<&str>,
    ) -> Result<Selection, DeadLetterError> {
        let duration = |flag: &'static str, text: Option<&str>| {
            text.map(|t| parse_duration(t).map_err(|e| DeadLetterError::BadDuration(flag, e)))
                .transpose()
        };
        Ok(Selection {
            spaces,
            ids,
            older_than: duration("--older-than", older_than)?,
            newer_than: duration("--newer-than", newer_than)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.spaces.is_empty()
            && self.ids.is_empty()
            && self.older_than.is_none()
            && self.newer_than.is_none()
    }

    fn matches(&self, letter: &DeadLetter, now_ms: i64) -> bool {
        let age_ms = now_ms - letter.dead_ms;
        (self.spaces.is_empty() || self.spaces.contains(&letter.space))
            && (self.ids.is_empty() || self.ids.contains(&letter.id))
            && self
                .older_than
                .is_none_or(|d| age_ms >= d.as_millis() as i64)
            && self
                .newer_than
                .is_none_or(|d| age_ms <= d.as_millis() as i64)
    }
}

/// The dead letters among `letters` that match `selection`, in their order.
pub(crate) fn select(
    mut letters: Vec<DeadLetter>,
    selection: &Selection,
    now_ms: i64,
) -> Vec<DeadLetter> {
    letters.retain(|letter| selection.matches(letter, now_ms));
    letters
}

// ---------------------------------------------------------------------------------------
// The commands

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    List { json: bool },
    Retry,
    Drop,
}

/// Runs one `kabar dead-letters` command against the store of the config at `config_path`.
/// `all` must be given for retry/drop without a filter, so nothing is mass-moved by accident.
pub fn run(
    config_path: &Path,
    action: Action,
    selection: &Selection,
    all: bool,
) -> Result<String, DeadLetterError> {
    let name = match action {
        Action::List { .. } => "list",
        Action::Retry => "retry",
        Action::Drop => "drop",
    };
    if all && !selection.is_empty() {
        return Err(DeadLetterError::AllWithFilters);
    }
    if !matches!(action, Action::List { .. }) && !all && selection.is_empty() {
        return Err(DeadLetterError::NoFilter(name));
    }
    let config = Config::load(config_path)?;
    // The same store as the service: same adapter, same migrations, and writes go through
    // its writer, so the CLI and a running kabar take turns.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DeadLetterError::Runtime)?;
    let Some(store) = runtime.block_on(store::open_existing(&config))? else {
        return Err(DeadLetterError::NoStore(store::location(&config)));
    };
    let now = now_ms();
    // A typo in --space would otherwise select nothing and look like "no dead letters". A
    // space no longer configured may still have some: those stay selectable.
    let unconfigured: Vec<String> = selection
        .spaces
        .iter()
        .filter(|space| !config.spaces.contains_key(*space))
        .cloned()
        .collect();
    if !unconfigured.is_empty() {
        let with_letters = runtime.block_on(store.dead_letter_counts());
        let with_letters = match with_letters {
            Ok(counts) => counts,
            Err(e) => {
                store.close();
                return Err(e.into());
            }
        };
        if let Some(name) = unconfigured
            .into_iter()
            .find(|space| !with_letters.iter().any(|(s, _)| s == space))
        {
            store.close();
            return Err(DeadLetterError::UnknownSpace {
                name,
                configured: config.spaces.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
    }
    let result = runtime.block_on(async {
        let chosen = select(store.dead_letters(None).await?, selection, now);
        let ids = chosen.iter().map(|letter| letter.id).collect();
        match action {
            Action::List { .. } => Ok(chosen),
            Action::Retry => store.retry_dead_letters(ids, now).await,
            Action::Drop => store.drop_dead_letters(ids).await,
        }
    });
    store.close();
    let letters = result?;
    let secrets = crate::secret::config_secrets(&config);
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    Ok(match action {
        Action::List { json: true } => list_json(&letters, &secrets),
        Action::List { json: false } => list_table(&letters, now, &secrets),
        Action::Retry => {
            let mut out = summary("moved back to the outbox", &letters);
            if !letters.is_empty() {
                let unknown: Vec<&str> = spaces_of(&letters)
                    .into_iter()
                    .filter(|space| !config.spaces.contains_key(*space))
                    .collect();
                // The CLI cannot wake a running kabar; its senders re-read their queue
                // at least every IDLE_POLL.
                let _ = write!(
                    out,
                    "\nA running kabar sends them within {}s, after what is already queued for their space; a stopped one when it starts.",
                    crate::delivery::IDLE_POLL.as_secs()
                );
                if !unknown.is_empty() {
                    let _ = write!(
                        out,
                        "\nWarning: {} not in this config; those messages wait until the space is configured again.",
                        unknown.join(", ")
                    );
                }
            }
            out
        }
        Action::Drop => summary("deleted", &letters),
    })
}

/// A stored text as it may be printed: without any credential, on one line.
fn printable(text: &str, secrets: &[&str]) -> String {
    crate::chat::one_line(&scrub(text, secrets))
}

/// Every string in a JSON value, scrubbed in place (the structure stays valid JSON).
fn scrub_json(value: &mut Value, secrets: &[&str]) {
    match value {
        Value::String(text) => *text = scrub(text, secrets),
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_json(v, secrets)),
        Value::Object(fields) => fields.values_mut().for_each(|v| scrub_json(v, secrets)),
        _ => {}
    }
}

fn spaces_of(letters: &[DeadLetter]) -> Vec<&str> {
    let mut spaces: Vec<&str> = letters.iter().map(|l| l.space.as_str()).collect();
    spaces.sort_unstable();
    spaces.dedup();
    spaces
}

/// `3 dead letters deleted: ops 2, dev 1 (ids 4, 5, 9)`.
fn summary(what: &str, letters: &[DeadLetter]) -> String {
    if letters.is_empty() {
        return format!("no dead letters matched; nothing {what}");
    }
    let per_space: Vec<String> = spaces_of(letters)
        .into_iter()
        .map(|space| {
            let n = letters.iter().filter(|l| l.space == space).count();
            format!("{space} {n}")
        })
        .collect();
    let ids: Vec<String> = letters.iter().map(|l| l.id.to_string()).collect();
    format!(
        "{} dead letter{} {what}: {} (ids {})",
        letters.len(),
        if letters.len() == 1 { "" } else { "s" },
        per_space.join(", "),
        ids.join(", ")
    )
}

fn format_time(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        Err(_) => ms.to_string(),
    }
}

fn rfc3339(ms: i64) -> Value {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| Value::String(t.to_string()))
        .unwrap_or(Value::Null)
}

fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

fn list_table(letters: &[DeadLetter], now_ms: i64, secrets: &[&str]) -> String {
    if letters.is_empty() {
        return "no dead letters".to_owned();
    }
    let header = [
        "ID",
        "SPACE",
        "KIND",
        "REASON",
        "STATUS",
        "DEAD-LETTERED",
        "AGE",
        "THREAD KEY",
        "ERROR",
    ];
    let rows: Vec<[String; 9]> = letters
        .iter()
        .map(|l| {
            let age = Duration::from_secs(((now_ms - l.dead_ms).max(0) / 1000) as u64);
            [
                l.id.to_string(),
                printable(&l.space, secrets),
                printable(&l.kind, secrets),
                printable(&l.reason, secrets),
                l.status.map_or("-".to_owned(), |s| s.to_string()),
                format_time(l.dead_ms),
                crate::config::format_duration(age),
                short(
                    &printable(l.thread_key.as_deref().unwrap_or("-"), secrets),
                    60,
                ),
                // Cut after scrubbing: a cut secret would no longer be recognised.
                short(&printable(&l.detail, secrets), 70),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    let _ = write!(
        out,
        "{} dead letter{}",
        letters.len(),
        if letters.len() == 1 { "" } else { "s" }
    );
    out
}

fn list_json(letters: &[DeadLetter], secrets: &[&str]) -> String {
    let items: Vec<Value> = letters
        .iter()
        .map(|l| {
            let mut item = json!({
                "id": l.id,
                "space": l.space,
                "kind": l.kind,
                "reason": l.reason,
                "status": l.status,
                "error": printable(&l.detail, secrets),
                "attempts": l.attempts,
                "threadKey": l.thread_key,
                "receivedAt": rfc3339(l.received_ms),
                "deadLetteredAt": rfc3339(l.dead_ms),
                "body": serde_json::from_str::<Value>(&l.body).unwrap_or(Value::String(l.body.clone())),
            });
            scrub_json(&mut item, secrets);
            item
        })
        .collect();
    serde_json::to_string_pretty(&Value::Array(items)).unwrap_or_else(|_| "[]".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DeadLetterRecord, NewMessage, SqliteStore, Store, transact};

    const HOUR_MS: i64 = 3_600_000;

    fn new_message<'a>(space: &'a str, body: &'a str, received_ms: i64) -> NewMessage<'a> {
        NewMessage {
            space,
            kind: "firing",
            thread_key: Some("kabar:t"),
            body,
            fallback_body: Some("{\"text\":\"fallback\"}"),
            received_ms,
            app: None,
        }
    }

    /// Queues one message in `space` and dead-letters it at `dead_ms`; the dead letter's id.
    async fn bury(store: &SqliteStore, space: &str, body: &str, dead_ms: i64) -> i64 {
        let (space_name, text) = (space.to_owned(), body.to_owned());
        let id = transact(store, move |tx| {
            tx.enqueue(&new_message(&space_name, &text, dead_ms - 1000))
        })
        .await
        .expect("enqueue");
        let record = DeadLetterRecord {
            reason: "authError",
            status: Some(403),
            detail: "HTTP 403 PERMISSION_DENIED".into(),
            dead_ms,
        };
        store
            .dead_letter(id, record)
            .await
            .expect("dead letter")
            .expect("it was queued")
    }

    fn temp_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).expect("open");
        (dir, store)
    }

    async fn pick(store: &SqliteStore, selection: Selection, now: i64) -> Vec<String> {
        let letters = store.dead_letters(None).await.expect("list");
        select(letters, &selection, now)
            .into_iter()
            .map(|l| l.body)
            .collect()
    }

    #[tokio::test]
    async fn filters_by_space_id_and_age() {
        let (_dir, store) = temp_store();
        let now = 100 * HOUR_MS;
        let ids = [
            bury(&store, "ops", "a", now - 30 * HOUR_MS).await,
            bury(&store, "ops", "b", now - HOUR_MS).await,
            bury(&store, "dev", "c", now - 2 * HOUR_MS).await,
        ];
        assert_eq!(
            pick(&store, Selection::default(), now).await,
            ["a", "b", "c"]
        );
        let ops = Selection {
            spaces: vec!["ops".into()],
            ..Selection::default()
        };
        assert_eq!(pick(&store, ops, now).await, ["a", "b"]);
        let old = Selection::parse(vec![], vec![], Some("1d"), None).expect("parse");
        assert_eq!(pick(&store, old, now).await, ["a"]);
        let recent = Selection::parse(vec![], vec![], None, Some("90m")).expect("parse");
        assert_eq!(pick(&store, recent, now).await, ["b"]);
        let window = Selection::parse(vec![], vec![], Some("90m"), Some("1d")).expect("parse");
        assert_eq!(pick(&store, window, now).await, ["c"]);
        let by_id = Selection {
            ids: vec![ids[2], ids[0]],
            ..Selection::default()
        };
        assert_eq!(pick(&store, by_id, now).await, ["a", "c"]);
        let nothing = Selection {
            spaces: vec!["dev".into()],
            ids: vec![ids[0]],
            ..Selection::default()
        };
        assert!(pick(&store, nothing, now).await.is_empty());
        assert!(matches!(
            Selection::parse(vec![], vec![], Some("soon"), None),
            Err(DeadLetterError::BadDuration("--older-than", _))
        ));
    }

    #[tokio::test]
    async fn retry_appends_to_the_queue_in_dead_letter_order_as_fresh_messages() {
        let (_dir, store) = temp_store();
        let now = 100 * HOUR_MS;
        bury(&store, "ops", "first", now - 3 * HOUR_MS).await;
        bury(&store, "ops", "second", now - 2 * HOUR_MS).await;
        bury(&store, "dev", "other", now - HOUR_MS).await;
        transact(&store, move |tx| {
            tx.enqueue(&NewMessage {
                space: "ops",
                kind: "firing",
                thread_key: None,
                body: "already queued",
                fallback_body: None,
                received_ms: now,
                app: None,
            })
        })
        .await
        .expect("enqueue");
        let selection = Selection {
            spaces: vec!["ops".into()],
            ..Selection::default()
        };
        let chosen = select(
            store.dead_letters(None).await.expect("list"),
            &selection,
            now,
        );
        let ids = chosen.iter().map(|l| l.id).collect();
        let moved = store.retry_dead_letters(ids, now).await.expect("retry");
        assert_eq!(moved.len(), 2);
        let queue = store
            .next_messages("ops", Vec::new(), 10)
            .await
            .expect("read");
        let bodies: Vec<&str> = queue.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["already queued", "first", "second"]);
        assert!(
            queue[1..].iter().all(|m| m.attempts == 0
                && m.received_ms == now
                && m.thread_key.as_deref() == Some("kabar:t")
                && m.kind == "firing"
                && m.fallback_body.as_deref() == Some("{\"text\":\"fallback\"}")),
            "a card keeps its text version: {queue:?}"
        );
        let left = store.dead_letter_counts().await.expect("counts");
        assert_eq!(left, vec![("dev".to_owned(), 1)]);
    }

    #[tokio::test]
    async fn drop_deletes_only_the_selection() {
        let (_dir, store) = temp_store();
        let now = 100 * HOUR_MS;
        let ids = [
            bury(&store, "ops", "a", now - HOUR_MS).await,
            bury(&store, "ops", "b", now - HOUR_MS).await,
        ];
        let dropped = store.drop_dead_letters(vec![ids[1]]).await.expect("drop");
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].body, "b");
        let left = store.dead_letters(None).await.expect("list");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].body, "a");
        assert!(
            store
                .next_messages("ops", Vec::new(), 10)
                .await
                .expect("read")
                .is_empty(),
            "drop never queues anything"
        );
    }

    #[test]
    fn table_and_json_show_the_error_but_never_a_url_secret() {
        let letter = DeadLetter {
            id: 7,
            space: "ops".into(),
            kind: "resolved".into(),
            thread_key: Some("kabar:ops:abc:2026-11-28T00:52:38Z".into()),
            body: r#"{"text":"hello"}"#.into(),
            fallback_body: None,
            received_ms: 0,
            dead_ms: HOUR_MS,
            attempts: 3,
            reason: "authError".into(),
            status: Some(403),
            detail: "HTTP 403 at https://chat.googleapis.com/v1/spaces/S/messages?key=SECRETKEY&token=SECRETTOKEN\nmore".into(),
            app: None,
        };
        let table = list_table(std::slice::from_ref(&letter), 2 * HOUR_MS, &[]);
        let json = list_json(std::slice::from_ref(&letter), &[]);
        for out in [&table, &json] {
            assert!(
                !out.contains("SECRETKEY") && !out.contains("SECRETTOKEN"),
                "{out}"
            );
        }
        assert!(table.starts_with("ID  SPACE  KIND"), "{table}");
        assert!(table.contains("authError") && table.contains("403") && table.contains("1h"));
        assert!(table.ends_with("1 dead letter"));
        let parsed: Value = serde_json::from_str(&json).expect("json");
        assert_eq!(parsed[0]["id"], 7);
        assert_eq!(parsed[0]["body"]["text"], "hello");
        assert_eq!(parsed[0]["deadLetteredAt"], "1970-01-01T01:00:00Z");
    }

    #[test]
    fn retry_and_drop_refuse_to_act_on_everything_by_accident() {
        let path = Path::new("/nonexistent/kabar.yaml");
        for action in [Action::Retry, Action::Drop] {
            let err = run(path, action, &Selection::default(), false).expect_err("refused");
            assert!(matches!(err, DeadLetterError::NoFilter(_)), "{err}");
            let with_filter = Selection {
                ids: vec![1],
                ..Selection::default()
            };
            let err = run(path, action, &with_filter, true).expect_err("refused");
            assert!(matches!(err, DeadLetterError::AllWithFilters), "{err}");
        }
    }
}
