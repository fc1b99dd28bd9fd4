//! The pipeline: a parsed notification in, per-space outcomes out — routing, planning,
//! rendering and queueing in one store transaction, or the same steps as a preview in memory.
//! It must not know HTTP (credentials, bodies, status codes) nor send anything to Chat.

use std::sync::Arc;

use jiff::Timestamp;

use crate::app::AppState;
use crate::chat_app::actions::episodes as app_actions;
use crate::config::Space;
use crate::metrics::AcceptedNotification;
use crate::payload::{Notification, elide_middle};
use crate::plan::{MessageKind, Subject, SuppressReason, plan};
use crate::render::RenderInput;
use crate::routing::{RoutingError, route};
use crate::runtime::Runtime;
use crate::store::{
    AppWrite, EpisodeStore, MemoryEpisodes, NewMessage, Store, StoreError, transact,
};

/// Payload values named in the "notification accepted" log line are cut to this.
const MAX_LOGGED_VALUE_CHARS: usize = 200;

/// Why a notification could not be taken in.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PipelineError {
    /// The notification names no configured space.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// The store could not take the transaction: nothing was queued.
    #[error("cannot store the notification right now")]
    Store(#[source] StoreError),
}

/// What a notification did across its spaces: the counts its sender is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Accepted {
    pub queued: usize,
    pub suppressed: usize,
}

/// A message ready to queue (or, for `kabar render`, to print).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub space: String,
    pub kind: MessageKind,
    /// The alerts the message is about.
    pub subject: Subject,
    pub thread_key: Option<String>,
    pub body: String,
    /// For a card: the text body sent instead if Chat refuses the card.
    pub fallback_body: Option<String>,
    /// App-mode spaces: created under which id, or an edit of which message.
    pub app: Option<AppWrite>,
}

/// What one notification did in one space.
#[derive(Debug, Default)]
pub struct SpaceOutcome {
    pub space: String,
    pub queued: Vec<MessageKind>,
    pub suppressed: Vec<SuppressReason>,
    pub truncated: u64,
    pub template_failures: Vec<String>,
}

/// What a notification would send in one space, worked out in memory: the messages, in
/// order, and the outcome. `kabar render`, the golden tests, the benches and the fuzz
/// target all preview through this, so what they show is what [`accept`] queues.
#[derive(Debug)]
pub struct Preview {
    pub messages: Vec<Outgoing>,
    pub outcome: SpaceOutcome,
}

/// Plans and renders `notification` for `space` against `episodes` (what earlier previews
/// on the same memory left behind), queueing nothing.
pub fn preview(
    episodes: &mut MemoryEpisodes,
    runtime: &Runtime,
    space: &Space,
    notification: &Notification,
    now: Timestamp,
) -> Preview {
    let Ok((outcome, messages)) = prepare(episodes, runtime, space, notification, now);
    Preview { messages, outcome }
}

/// Takes a notification in: routes it (by `space`, or by its receiver), plans, renders and
/// queues its messages in one store transaction, then records what happened and wakes the
/// senders of the spaces that got messages.
pub(crate) async fn accept(
    app: &AppState,
    runtime: Arc<Runtime>,
    space: Option<&str>,
    notification: Notification,
) -> Result<Accepted, PipelineError> {
    let spaces = route(&runtime.config, &notification.receiver, space)?;
    let received = Timestamp::now();
    let notification = Arc::new(notification);
    let outcomes = queue(
        app.shared.store.as_ref(),
        runtime,
        spaces.clone(),
        Arc::clone(&notification),
        received,
    )
    .await
    .map_err(|e| {
        app.shared.metrics.store_error(e.kind());
        PipelineError::Store(e)
    })?;

    let metrics = &app.shared.metrics;
    let mut accepted = Accepted {
        queued: 0,
        suppressed: 0,
    };
    let alert_statuses: Vec<&str> = notification
        .alerts
        .iter()
        .map(|alert| alert.status.as_str())
        .collect();
    for outcome in &outcomes {
        let space = outcome.space.as_str();
        metrics.space_notified(
            space,
            &alert_statuses,
            &outcome.suppressed,
            &outcome.queued,
            outcome.truncated,
        );
        for failure in &outcome.template_failures {
            metrics.template_fallback(space, failure);
        }
        accepted.queued += outcome.queued.len();
        accepted.suppressed += outcome.suppressed.len();
        if !outcome.queued.is_empty() {
            app.delivery.wake(space);
        }
    }
    // Both come from the payload and may be megabytes long: the log line quotes them cut.
    metrics.notification_accepted(&AcceptedNotification {
        receiver: &elide_middle(&notification.receiver, MAX_LOGGED_VALUE_CHARS),
        group_key: &elide_middle(&notification.group_key, MAX_LOGGED_VALUE_CHARS),
        spaces: &spaces.join(","),
        alerts: notification.alerts.len(),
        queued: accepted.queued,
        suppressed: accepted.suppressed,
    });
    Ok(accepted)
}

/// How many times a notification's transaction runs when it collides with another (a
/// deadlock between replicas on a shared store); then Alertmanager's retry takes over.
const CONFLICT_ATTEMPTS: usize = 3;

/// Plans, renders and enqueues the notification's messages for each of `spaces` in one
/// write transaction: all of them are queued, with their episode updates, or none. A
/// transaction that collided changed nothing, so it is simply run again.
async fn queue(
    store: &dyn Store,
    runtime: Arc<Runtime>,
    spaces: Vec<String>,
    notification: Arc<Notification>,
    received: Timestamp,
) -> Result<Vec<SpaceOutcome>, StoreError> {
    let mut attempt = 1;
    loop {
        let result = queue_once(
            store,
            Arc::clone(&runtime),
            spaces.clone(),
            Arc::clone(&notification),
            received,
        )
        .await;
        match result {
            Err(e) if e.is_conflict() && attempt < CONFLICT_ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "the notification's transaction collided; running it again");
                attempt += 1;
            }
            result => return result,
        }
    }
}

async fn queue_once(
    store: &dyn Store,
    runtime: Arc<Runtime>,
    spaces: Vec<String>,
    notification: Arc<Notification>,
    received: Timestamp,
) -> Result<Vec<SpaceOutcome>, StoreError> {
    transact(store, move |transaction| {
        let mut outcomes = Vec::with_capacity(spaces.len());
        for name in &spaces {
            let Some(space) = runtime.config.spaces.get(name) else {
                continue;
            };
            let (outcome, messages) =
                prepare(transaction, &runtime, space, &notification, received)?;
            for message in &messages {
                transaction.enqueue(&NewMessage {
                    space: &message.space,
                    kind: message.kind.as_str(),
                    thread_key: message.thread_key.as_deref(),
                    body: &message.body,
                    fallback_body: message.fallback_body.as_deref(),
                    received_ms: received.as_millisecond(),
                    app: message.app.clone(),
                })?;
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    })
    .await
}

/// Plans the messages a notification needs in a space against `episodes` (the open
/// transaction, or memory for a preview) and renders them, in order.
fn prepare<S: EpisodeStore + ?Sized>(
    episodes: &mut S,
    runtime: &Runtime,
    space: &Space,
    notification: &Notification,
    now: Timestamp,
) -> Result<(SpaceOutcome, Vec<Outgoing>), S::Error> {
    let planned = plan(
        episodes,
        &space.name,
        &space.options,
        notification,
        now.as_millisecond(),
    )?;
    let mut outcome = SpaceOutcome {
        space: space.name.clone(),
        suppressed: planned.suppressed,
        ..SpaceOutcome::default()
    };
    let mut messages = Vec::with_capacity(planned.messages.len());
    let app_space = matches!(space.target, crate::config::Target::App { .. });
    let actions = app_space
        && runtime
            .config
            .chat_app
            .as_ref()
            .is_some_and(|c| c.events.is_some());
    for message in planned.messages {
        let alert = match &message.subject {
            Subject::Alert(index) if actions => notification.alerts.get(*index),
            _ => None,
        };
        if let Some(alert) = alert
            && message.kind == MessageKind::Reminder
            && app_actions::acknowledged(episodes, &space.name, alert)?
        {
            outcome.suppressed.push(SuppressReason::Acknowledged);
            continue;
        }
        let (rendered, failures) = runtime.renderer.render(&RenderInput {
            space,
            kind: message.kind,
            subject: &message.subject,
            notification,
            thread_key: message.thread_key,
            now,
        });
        if rendered.fell_back {
            outcome.template_failures.push(
                failures
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        }
        if rendered.truncated {
            outcome.truncated += 1;
        }
        let outgoing = Outgoing {
            space: space.name.clone(),
            kind: message.kind,
            subject: message.subject,
            thread_key: rendered.thread_key,
            body: rendered.body,
            fallback_body: rendered.fallback_body,
            app: None,
        };
        if app_space {
            let writes = app_writes(
                runtime,
                space,
                notification,
                outgoing,
                message.opens_thread,
                now,
            );
            if let Some(alert) = alert {
                let opening = format!("client-{}", app_actions::episode_id(&space.name, alert));
                let card = writes
                    .iter()
                    .find(|w| w.app.as_ref().is_some_and(|a| a.message_id() == opening))
                    .map(|w| w.body.as_str());
                app_actions::record(
                    episodes,
                    &space.name,
                    alert,
                    message.kind,
                    card,
                    now.as_millisecond(),
                )?;
            }
            messages.extend(writes);
        } else {
            messages.push(outgoing);
        }
        outcome.queued.push(message.kind);
    }
    if app_space && space.options.on_resolve.edit {
        digest_edits(episodes, runtime, space, notification, &mut messages, now)?;
    }
    Ok((outcome, messages))
}

/// App mode: a message in a digest's thread that is not the digest itself (an alert it
/// announced resolving, or a digest of their resolves) also edits the digest's card to the
/// current state of the alerts it announced, once per notification, before that message.
fn digest_edits<S: EpisodeStore + ?Sized>(
    episodes: &mut S,
    runtime: &Runtime,
    space: &Space,
    notification: &Notification,
    messages: &mut Vec<Outgoing>,
    now: Timestamp,
) -> Result<(), S::Error> {
    let prefix = format!("kabar:{}:digest:", space.name);
    let mut threads: Vec<String> = Vec::new();
    for message in messages.iter() {
        let later = matches!(&message.app, Some(AppWrite::Create { message_id })
        if message.thread_key.as_deref().is_some_and(|t| {
            crate::chat_app::ids::opening_id(&space.name, t) != *message_id
        }));
        if let Some(thread) = &message.thread_key
            && thread.starts_with(&prefix)
            && later
            && !threads.contains(thread)
        {
            threads.push(thread.clone());
        }
    }
    for thread in threads {
        // The digest's alerts: those whose episode replies in its thread.
        let mut state = crate::plan::AlertSet::default();
        for (index, alert) in notification.alerts.iter().enumerate() {
            let key = crate::plan::EpisodeKey::new(&space.name, alert);
            if episodes.episode(&key)?.and_then(|e| e.thread_key).as_ref() != Some(&thread) {
                continue;
            }
            match alert.status {
                crate::payload::AlertStatus::Resolved => state.resolved.push(index),
                _ => state.firing.push(index),
            }
        }
        if state.is_empty() {
            continue;
        }
        let subject = Subject::Alerts(state);
        let (rendered, _) = runtime.renderer.render(&RenderInput {
            space,
            kind: MessageKind::Digest,
            subject: &subject,
            notification,
            thread_key: Some(thread.clone()),
            now,
        });
        let edit = Outgoing {
            space: space.name.clone(),
            kind: MessageKind::Digest,
            subject,
            thread_key: Some(thread.clone()),
            body: crate::chat_app::app_body(&rendered.body, true),
            fallback_body: rendered
                .fallback_body
                .as_deref()
                .map(|b| crate::chat_app::app_body(b, true)),
            app: Some(AppWrite::Edit {
                message_id: crate::chat_app::ids::opening_id(&space.name, &thread),
            }),
        };
        let at = messages
            .iter()
            .position(|m| m.thread_key.as_ref() == Some(&thread))
            .unwrap_or(messages.len());
        messages.insert(at, edit);
    }
    Ok(())
}

/// A message of an app-mode space as the app writes it. With `on_resolve: edit`, the
/// resolve of an alert whose own card opened its thread also edits that card into the
/// resolved form, first, so the space's main view turns green before the reply lands
/// (without `reply` the edit replaces the reply); and each later change of a per_group
/// thread edits the group's opening card to the group's current state.
fn app_writes(
    runtime: &Runtime,
    space: &Space,
    notification: &Notification,
    message: Outgoing,
    opens_thread: bool,
    now: Timestamp,
) -> Vec<Outgoing> {
    use crate::chat_app::{app_body, create_write, ids};
    let received_ms = now.as_millisecond();
    let own_thread = match &message.subject {
        Subject::Alert(index) => notification
            .alerts
            .get(*index)
            .map(|alert| crate::plan::EpisodeKey::new(&space.name, alert).thread_key()),
        Subject::Alerts(_) => None,
    };
    let on_resolve = space.options.on_resolve;
    let edit_of = |thread: &str, body: &str, fallback: Option<&str>| Outgoing {
        app: Some(AppWrite::Edit {
            message_id: ids::opening_id(&space.name, thread),
        }),
        body: app_body(body, true),
        fallback_body: fallback.map(|b| app_body(b, true)),
        ..message.clone()
    };
    let edit = match (&message.thread_key, message.kind) {
        (Some(thread), MessageKind::Resolved)
            if on_resolve.edit && own_thread.as_ref() == Some(thread) =>
        {
            Some(edit_of(
                thread,
                &message.body,
                message.fallback_body.as_deref(),
            ))
        }
        (Some(thread), MessageKind::Group) if on_resolve.edit && !opens_thread => {
            let state = group_state(notification);
            let (rendered, _) = runtime.renderer.render(&RenderInput {
                space,
                kind: MessageKind::Group,
                subject: &state,
                notification,
                thread_key: Some(thread.clone()),
                now,
            });
            Some(edit_of(
                thread,
                &rendered.body,
                rendered.fallback_body.as_deref(),
            ))
        }
        _ => None,
    };
    // A group change is always posted; an alert's resolve only if `reply` (or no edit).
    let replies = message.kind == MessageKind::Group || edit.is_none() || on_resolve.reply;
    let reply = replies.then(|| Outgoing {
        app: Some(create_write(
            &space.name,
            message.kind,
            opens_thread,
            message.thread_key.as_deref(),
            received_ms,
            &message.body,
        )),
        body: app_body(&message.body, false),
        fallback_body: message.fallback_body.as_deref().map(|b| app_body(b, false)),
        ..message
    });
    edit.into_iter().chain(reply).collect()
}

/// Every alert of the group as it stands: what a per_group opening card shows once edited.
fn group_state(notification: &Notification) -> Subject {
    let mut state = crate::plan::AlertSet::default();
    for (index, alert) in notification.alerts.iter().enumerate() {
        match alert.status {
            crate::payload::AlertStatus::Resolved => state.resolved.push(index),
            _ => state.firing.push(index),
        }
    }
    Subject::Alerts(state)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::store::{QueuedMessage, SqliteStore};

    fn runtime() -> Arc<Runtime> {
        let yaml = "spaces:\n  cards:\n    dry_run: true\n    format: card\n  texts:\n    dry_run: true\n    format: text\n    threading: per_group\n";
        let config = Config::parse(yaml, Path::new("."), &|_| None).expect("config");
        Arc::new(Runtime::new(config).expect("templates"))
    }

    fn grouped_firing() -> Notification {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/alertmanager/grouped-firing.json");
        Notification::parse(&std::fs::read(fixture).expect("read fixture")).expect("parses")
    }

    /// The one property the shared `prepare` exists for: the messages `kabar render`
    /// previews are byte for byte the rows the webhook path queues, in the same order.
    #[tokio::test]
    async fn what_a_preview_shows_is_what_the_queue_gets() {
        let runtime = runtime();
        let notification = grouped_firing();
        let now: Timestamp = "2026-11-28T01:00:00Z".parse().expect("now");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).expect("open");
        let spaces = vec!["cards".to_owned(), "texts".to_owned()];

        let outcomes = queue(
            &store,
            Arc::clone(&runtime),
            spaces.clone(),
            Arc::new(notification.clone()),
            now,
        )
        .await
        .expect("queued");

        for (name, outcome) in spaces.iter().zip(&outcomes) {
            let space = &runtime.config.spaces[name];
            let preview = preview(
                &mut MemoryEpisodes::default(),
                &runtime,
                space,
                &notification,
                now,
            );
            let rows: Vec<QueuedMessage> = Store::next_messages(&store, name, Vec::new(), 1_000)
                .await
                .expect("read");
            assert!(!rows.is_empty(), "{name}: something was queued");
            assert_eq!(rows.len(), preview.messages.len(), "{name}");
            for (row, message) in rows.iter().zip(&preview.messages) {
                assert_eq!(row.space, message.space);
                assert_eq!(row.kind, message.kind.as_str());
                assert_eq!(row.thread_key, message.thread_key);
                assert_eq!(row.body, message.body);
                assert_eq!(row.fallback_body, message.fallback_body);
                assert_eq!(row.received_ms, now.as_millisecond());
            }
            assert_eq!(outcome.space, *name);
            assert_eq!(outcome.queued, preview.outcome.queued, "{name}");
            assert_eq!(outcome.suppressed, preview.outcome.suppressed, "{name}");
        }
    }

    /// A second, identical notification is planned against the episodes the first one's
    /// transaction stored: the preview's memory and the store's tables agree on it too.
    #[tokio::test]
    async fn a_repeat_is_planned_against_the_stored_episodes_like_the_preview() {
        let runtime = runtime();
        let notification = Arc::new(grouped_firing());
        let now: Timestamp = "2026-11-28T01:00:00Z".parse().expect("now");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).expect("open");
        let spaces = vec!["texts".to_owned()];
        let mut memory = MemoryEpisodes::default();
        let space = &runtime.config.spaces["texts"];

        for round in 0..2 {
            let stored = queue(
                &store,
                Arc::clone(&runtime),
                spaces.clone(),
                Arc::clone(&notification),
                now,
            )
            .await
            .expect("queued");
            let previewed = preview(&mut memory, &runtime, space, &notification, now);
            assert_eq!(stored.len(), 1);
            assert_eq!(stored[0].queued, previewed.outcome.queued, "round {round}");
            assert_eq!(
                stored[0].suppressed, previewed.outcome.suppressed,
                "round {round}"
            );
            if round == 1 {
                assert!(
                    stored[0].queued.is_empty() && !stored[0].suppressed.is_empty(),
                    "the repeat is suppressed: {:?}",
                    stored[0]
                );
            }
        }
    }
}
