//! Alert state and change detection: what, of a notification Alertmanager re-sends again
//! and again, is new for a space and deserves a message.
//!
//! An episode is (fingerprint, startsAt). Its thread key is derived from space, fingerprint
//! and startsAt alone, so it needs no stored state, survives restarts and agrees between
//! replicas. The stored state only answers "was this already posted?".

use std::time::Duration;

use jiff::Timestamp;

use crate::config::{SpaceOptions, Threading};
use crate::payload::{Alert, AlertStatus, Fnv64, Notification};

/// What a message is about; also the `kind` a template sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// One alert started firing: opens its thread.
    Firing,
    /// One alert resolved: replies in its thread.
    Resolved,
    /// One alert is still firing after reminder_interval.
    Reminder,
    /// What changed in an Alertmanager group (`threading: per_group`).
    Group,
    /// Many alerts started firing at once: one message names them all (storm control).
    Digest,
}

impl MessageKind {
    pub const ALL: [MessageKind; 5] = [
        MessageKind::Firing,
        MessageKind::Resolved,
        MessageKind::Reminder,
        MessageKind::Group,
        MessageKind::Digest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Firing => "firing",
            MessageKind::Resolved => "resolved",
            MessageKind::Reminder => "reminder",
            MessageKind::Group => "group",
            MessageKind::Digest => "digest",
        }
    }
}

/// Why an alert in a notification produced no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuppressReason {
    /// Already posted; nothing changed and no reminder is due.
    Unchanged,
    /// The same notification arrived again within the duplicate window (an HA pair).
    Duplicate,
    /// Resolved, but the space has `send_resolved: false`.
    ResolvedDisabled,
}

impl SuppressReason {
    pub const ALL: [SuppressReason; 3] = [
        SuppressReason::Unchanged,
        SuppressReason::Duplicate,
        SuppressReason::ResolvedDisabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SuppressReason::Unchanged => "unchanged",
            SuppressReason::Duplicate => "duplicate",
            SuppressReason::ResolvedDisabled => "sendResolvedOff",
        }
    }
}

/// Identifies an episode within a space.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EpisodeKey {
    pub space: String,
    pub fingerprint: String,
    /// startsAt in Unix nanoseconds: one number whatever precision the payload used.
    pub starts_at_ns: i64,
}

impl EpisodeKey {
    pub fn new(space: &str, alert: &Alert) -> Self {
        EpisodeKey {
            space: space.to_owned(),
            fingerprint: alert.fingerprint(),
            starts_at_ns: alert.starts_at.as_nanosecond() as i64,
        }
    }

    /// The Chat thread key of this episode. Bounded in length: a fingerprint past
    /// [`crate::payload::MAX_FINGERPRINT_BYTES`] is hashed (`Alert::fingerprint` already
    /// does; a key built by hand gets the same), while ordinary ones, and so the threads
    /// of ordinary alerts, are exactly as before.
    pub fn thread_key(&self) -> String {
        format!(
            "kabar:{}:{}:{}",
            self.space,
            crate::payload::bounded_fingerprint(&self.fingerprint),
            format_ns(self.starts_at_ns)
        )
    }
}

fn format_ns(ns: i64) -> String {
    Timestamp::from_nanosecond(i128::from(ns))
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ns.to_string())
}

/// What is known of an episode in a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    pub firing_posted: bool,
    pub resolved: bool,
    /// When the last message of this episode was queued (Unix ms).
    pub last_post_ms: i64,
    /// The thread this episode's replies go to when it is not the episode's own: a
    /// digest's thread, for alerts a digest announced.
    pub thread_key: Option<String>,
}

/// The thread of an Alertmanager group in a space (`threading: per_group`). It stays open
/// until a notification reports every alert of the group resolved; the next firing then
/// opens a new thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEpisode {
    pub thread_key: String,
    pub open: bool,
}

/// Reads and writes episode state; SQLite in the service, a map for `kabar render`.
pub trait EpisodeStore {
    type Error;
    fn episode(&mut self, key: &EpisodeKey) -> Result<Option<Episode>, Self::Error>;
    fn save_episode(
        &mut self,
        key: &EpisodeKey,
        episode: &Episode,
        now_ms: i64,
    ) -> Result<(), Self::Error>;
    /// Records `digest` for `space` and tells whether it was already seen since `since_ms`.
    fn seen_notification(
        &mut self,
        space: &str,
        digest: u64,
        now_ms: i64,
        since_ms: i64,
    ) -> Result<bool, Self::Error>;
    fn group_episode(
        &mut self,
        space: &str,
        group_key: &str,
    ) -> Result<Option<GroupEpisode>, Self::Error>;
    fn save_group_episode(
        &mut self,
        space: &str,
        group_key: &str,
        group: &GroupEpisode,
        now_ms: i64,
    ) -> Result<(), Self::Error>;
}

/// How long an identical notification counts as a duplicate rather than a re-send. HA
/// members send within peer_timeout × position (15 s each) of each other; Alertmanager's
/// own re-sends of an unchanged group come every repeat_interval (hours by default).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The decision for one alert, with the episode state to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Post {
        kind: MessageKind,
        episode: Episode,
    },
    /// `update`: state to store even though nothing is posted (None: leave it as it is).
    Suppress {
        reason: SuppressReason,
        update: Option<Episode>,
    },
}

/// Decides what one alert needs, given what is known of its episode.
pub fn decide(
    status: AlertStatus,
    known: Option<&Episode>,
    options: &SpaceOptions,
    now_ms: i64,
) -> Decision {
    let post = |kind, resolved| Decision::Post {
        kind,
        episode: Episode {
            firing_posted: true,
            resolved,
            last_post_ms: now_ms,
            thread_key: known.and_then(|e| e.thread_key.clone()),
        },
    };
    let unchanged = Decision::Suppress {
        reason: SuppressReason::Unchanged,
        update: None,
    };
    match (status, known) {
        (AlertStatus::Firing, None) => post(MessageKind::Firing, false),
        // A firing copy that arrives after the resolve of the same episode is stale.
        (AlertStatus::Firing, Some(e)) if e.resolved => unchanged,
        (AlertStatus::Firing, Some(e)) => {
            let interval = options.reminder_interval.as_millis() as i64;
            if interval > 0 && now_ms.saturating_sub(e.last_post_ms) >= interval {
                post(MessageKind::Reminder, false)
            } else {
                unchanged
            }
        }
        (AlertStatus::Resolved, Some(e)) if e.resolved => unchanged,
        (AlertStatus::Resolved, known) if !options.send_resolved => Decision::Suppress {
            reason: SuppressReason::ResolvedDisabled,
            update: Some(Episode {
                firing_posted: known.is_some_and(|e| e.firing_posted),
                resolved: true,
                last_post_ms: known.map_or(now_ms, |e| e.last_post_ms),
                thread_key: known.and_then(|e| e.thread_key.clone()),
            }),
        },
        (AlertStatus::Resolved, _) => post(MessageKind::Resolved, true),
    }
}

/// The alerts a group or digest message is about, as indexes into the notification's
/// alerts, in the notification's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertSet {
    /// Started firing (not posted before in this episode).
    pub firing: Vec<usize>,
    pub resolved: Vec<usize>,
    /// Still firing, and reminder_interval has passed since the last post.
    pub still_firing: Vec<usize>,
}

impl AlertSet {
    pub fn is_empty(&self) -> bool {
        self.firing.is_empty() && self.resolved.is_empty() && self.still_firing.is_empty()
    }

    pub fn len(&self) -> usize {
        self.firing.len() + self.resolved.len() + self.still_firing.len()
    }
    /// Every listed alert: firing first, then resolved, then still firing.
    pub fn indexes(&self) -> impl Iterator<Item = usize> + '_ {
        self.firing
            .iter()
            .chain(&self.resolved)
            .chain(&self.still_firing)
            .copied()
    }
}

/// What a planned message is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// One alert, by index into the notification's alerts.
    Alert(usize),
    /// Several alerts: a group or digest message.
    Alerts(AlertSet),
}

impl Subject {
    /// The alerts the message is about, as indexes into the notification's alerts.
    pub fn indexes(&self) -> Vec<usize> {
        match self {
            Subject::Alert(i) => vec![*i],
            Subject::Alerts(set) => set.indexes().collect(),
        }
    }
}

/// One message the plan wants posted.
#[derive(Debug, Clone)]
pub struct PlannedMessage {
    pub kind: MessageKind,
    pub subject: Subject,
    /// None: a top-level message (threading off).
    pub thread_key: Option<String>,
}

/// The outcome of planning one notification for one space.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub messages: Vec<PlannedMessage>,
    pub suppressed: Vec<SuppressReason>,
}

/// Digest of what makes two notifications the same for duplicate detection. externalURL
/// is left out: each HA member sends its own.
pub fn notification_digest(notification: &Notification) -> u64 {
    let mut hash = Fnv64::new();
    for part in [
        notification.receiver.as_str(),
        notification.group_key.as_str(),
        notification.status.as_str(),
    ] {
        hash.write(part.as_bytes());
        hash.write(&[0xff]);
    }
    for alert in &notification.alerts {
        hash.write(alert.fingerprint().as_bytes());
        hash.write(alert.status.as_str().as_bytes());
        hash.write(&alert.starts_at.as_nanosecond().to_le_bytes());
        hash.write(&alert.ends_at.map_or(0, |t| t.as_nanosecond()).to_le_bytes());
        hash.write(&[0xff]);
    }
    hash.finish()
}

/// An alert the plan posts about, with the episode state to store once its thread is
/// known.
struct Posting {
    alert_index: usize,
    kind: MessageKind,
    key: EpisodeKey,
    episode: Episode,
}

/// Plans the messages one notification needs in one space and updates the episode state.
/// Call it inside the transaction that also queues the messages.
pub fn plan<S: EpisodeStore>(
    store: &mut S,
    space: &str,
    options: &SpaceOptions,
    notification: &Notification,
    now_ms: i64,
) -> Result<Plan, S::Error> {
    let mut plan = Plan::default();
    let since = now_ms - DUPLICATE_WINDOW.as_millis() as i64;
    if store.seen_notification(space, notification_digest(notification), now_ms, since)? {
        plan.suppressed = vec![SuppressReason::Duplicate; notification.alerts.len()];
        return Ok(plan);
    }
    let mut postings = Vec::new();
    for (alert_index, alert) in notification.alerts.iter().enumerate() {
        let key = EpisodeKey::new(space, alert);
        let known = store.episode(&key)?;
        match decide(alert.status, known.as_ref(), options, now_ms) {
            Decision::Post { kind, episode } => postings.push(Posting {
                alert_index,
                kind,
                key,
                episode,
            }),
            Decision::Suppress { reason, update } => {
                if let Some(episode) = update {
                    store.save_episode(&key, &episode, now_ms)?;
                }
                plan.suppressed.push(reason);
            }
        }
    }
    match options.threading {
        Threading::PerGroup => plan_group(store, space, notification, postings, now_ms, &mut plan)?,
        Threading::PerAlert | Threading::Off => {
            plan_alerts(store, space, options, postings, now_ms, &mut plan)?
        }
    }
    Ok(plan)
}

/// One message per alert, unless more alerts start firing than the space allows new
/// threads for: then one digest names them, and their later replies go to its thread.
fn plan_alerts<S: EpisodeStore>(
    store: &mut S,
    space: &str,
    options: &SpaceOptions,
    postings: Vec<Posting>,
    now_ms: i64,
    plan: &mut Plan,
) -> Result<(), S::Error> {
    let threaded = options.threading == Threading::PerAlert;
    let opening: Vec<&Posting> = postings
        .iter()
        .filter(|p| p.kind == MessageKind::Firing)
        .collect();
    let digest_thread = (opening.len() > options.max_new_threads_per_notification as usize)
        .then(|| digest_thread_key(space, opening.iter().map(|p| &p.key)));
    if let Some(thread) = &digest_thread {
        plan.messages.push(PlannedMessage {
            kind: MessageKind::Digest,
            subject: Subject::Alerts(AlertSet {
                firing: opening.iter().map(|p| p.alert_index).collect(),
                ..AlertSet::default()
            }),
            thread_key: threaded.then(|| thread.clone()),
        });
    }
    for mut posting in postings {
        if posting.kind == MessageKind::Firing
            && let Some(thread) = &digest_thread
        {
            if threaded {
                posting.episode.thread_key = Some(thread.clone());
            }
            store.save_episode(&posting.key, &posting.episode, now_ms)?;
            continue;
        }
        store.save_episode(&posting.key, &posting.episode, now_ms)?;
        plan.messages.push(PlannedMessage {
            kind: posting.kind,
            subject: Subject::Alert(posting.alert_index),
            thread_key: threaded.then(|| {
                posting
                    .episode
                    .thread_key
                    .clone()
                    .unwrap_or_else(|| posting.key.thread_key())
            }),
        });
    }
    Ok(())
}

/// One message listing what changed in the group, in the group episode's thread.
fn plan_group<S: EpisodeStore>(
    store: &mut S,
    space: &str,
    notification: &Notification,
    postings: Vec<Posting>,
    now_ms: i64,
    plan: &mut Plan,
) -> Result<(), S::Error> {
    let known = store.group_episode(space, &notification.group_key)?;
    let all_resolved = notification
        .alerts
        .iter()
        .all(|a| a.status == AlertStatus::Resolved);
    let mut changes = AlertSet::default();
    for posting in postings {
        store.save_episode(&posting.key, &posting.episode, now_ms)?;
        match posting.kind {
            MessageKind::Firing => changes.firing.push(posting.alert_index),
            MessageKind::Resolved => changes.resolved.push(posting.alert_index),
            _ => changes.still_firing.push(posting.alert_index),
        }
    }
    let open = known.filter(|g| g.open);
    if changes.is_empty() {
        if let Some(group) = open
            && all_resolved
        {
            let closed = GroupEpisode {
                open: false,
                ..group
            };
            store.save_group_episode(space, &notification.group_key, &closed, now_ms)?;
        }
        return Ok(());
    }
    let thread_key = match open {
        Some(group) => group.thread_key,
        None => group_thread_key(space, notification),
    };
    let group = GroupEpisode {
        thread_key: thread_key.clone(),
        open: !all_resolved,
    };
    store.save_group_episode(space, &notification.group_key, &group, now_ms)?;
    plan.messages.push(PlannedMessage {
        kind: MessageKind::Group,
        subject: Subject::Alerts(changes),
        thread_key: Some(thread_key),
    });
    Ok(())
}

/// A group episode's thread: the group key (hashed, it can be long) and the earliest
/// startsAt of the firing alerts in the notification that opened it (of all its alerts if
/// none fire), so HA replicas that see the same notification agree on it, and a group
/// that fires again after resolving gets a new thread.
fn group_thread_key(space: &str, notification: &Notification) -> String {
    let mut hash = Fnv64::new();
    hash.write(notification.group_key.as_bytes());
    let earliest = |status: Option<AlertStatus>| {
        notification
            .alerts
            .iter()
            .filter(|a| status.is_none_or(|s| a.status == s))
            .map(|a| a.starts_at.as_nanosecond() as i64)
            .min()
    };
    let first = earliest(Some(AlertStatus::Firing))
        .or_else(|| earliest(None))
        .unwrap_or(0);
    format!(
        "kabar:{space}:group:{:016x}:{}",
        hash.finish(),
        format_ns(first)
    )
}

/// A digest's thread, from the episodes it announces.
fn digest_thread_key<'a>(space: &str, keys: impl Iterator<Item = &'a EpisodeKey>) -> String {
    let mut hash = Fnv64::new();
    for key in keys {
        hash.write(key.fingerprint.as_bytes());
        hash.write(&key.starts_at_ns.to_le_bytes());
    }
    format!("kabar:{space}:digest:{:016x}", hash.finish())
}

/// Episode state in memory: `kabar render` and tests.
#[derive(Debug, Default)]
pub struct MemoryEpisodes {
    episodes: std::collections::HashMap<EpisodeKey, Episode>,
    seen: std::collections::HashMap<(String, u64), i64>,
    groups: std::collections::HashMap<(String, String), GroupEpisode>,
}

impl EpisodeStore for MemoryEpisodes {
    type Error = std::convert::Infallible;

    fn episode(&mut self, key: &EpisodeKey) -> Result<Option<Episode>, Self::Error> {
        Ok(self.episodes.get(key).cloned())
    }

    fn save_episode(
        &mut self,
        key: &EpisodeKey,
        episode: &Episode,
        _now_ms: i64,
    ) -> Result<(), Self::Error> {
        self.episodes.insert(key.clone(), episode.clone());
        Ok(())
    }

    fn seen_notification(
        &mut self,
        space: &str,
        digest: u64,
        now_ms: i64,
        since_ms: i64,
    ) -> Result<bool, Self::Error> {
        let previous = self.seen.insert((space.to_owned(), digest), now_ms);
        Ok(previous.is_some_and(|at| at >= since_ms))
    }

    fn group_episode(
        &mut self,
        space: &str,
        group_key: &str,
    ) -> Result<Option<GroupEpisode>, Self::Error> {
        Ok(self
            .groups
            .get(&(space.to_owned(), group_key.to_owned()))
            .cloned())
    }

    fn save_group_episode(
        &mut self,
        space: &str,
        group_key: &str,
        group: &GroupEpisode,
        _now_ms: i64,
    ) -> Result<(), Self::Error> {
        self.groups
            .insert((space.to_owned(), group_key.to_owned()), group.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: i64 = 3_600_000;

    fn options() -> SpaceOptions {
        SpaceOptions::default()
    }

    /// The decision in a form the tests can compare at a glance.
    #[derive(Debug, PartialEq)]
    enum D {
        Post(MessageKind),
        Suppress(SuppressReason),
    }

    fn run(
        status: AlertStatus,
        known: Option<Episode>,
        options: &SpaceOptions,
        now_ms: i64,
    ) -> (D, Option<Episode>) {
        match decide(status, known.as_ref(), options, now_ms) {
            Decision::Post { kind, episode } => (D::Post(kind), Some(episode)),
            Decision::Suppress { reason, update } => (D::Suppress(reason), update),
        }
    }

    fn notification(alerts: &[(&str, AlertStatus)]) -> Notification {
        let alerts: Vec<serde_json::Value> = alerts
            .iter()
            .map(|(name, status)| {
                serde_json::json!({
                    "status": status.as_str(), "labels": {"alertname": name},
                    "startsAt": "2026-11-28T00:52:38Z", "fingerprint": format!("fp-{name}"),
                    "endsAt": if *status == AlertStatus::Resolved { "2026-11-28T01:00:00Z" } else { "0001-01-01T00:00:00Z" }
                })
            })
            .collect();
        let body = serde_json::json!({"receiver": "r", "status": "firing", "alerts": alerts, "groupKey": "{}:{}"});
        Notification::parse(body.to_string().as_bytes()).expect("valid notification")
    }

    #[test]
    fn thread_key_is_deterministic_per_episode() {
        let n = notification(&[("A", AlertStatus::Firing)]);
        let key = EpisodeKey::new("ops", &n.alerts[0]);
        assert_eq!(key.thread_key(), "kabar:ops:fp-A:2026-11-28T00:52:38Z");
        let mut precise = n.alerts[0].clone();
        precise.starts_at = "2026-11-28T01:52:38.000+01:00".parse().expect("time");
        assert_eq!(
            EpisodeKey::new("ops", &precise).thread_key(),
            key.thread_key(),
            "same instant, other spelling"
        );
        let mut next = n.alerts[0].clone();
        next.starts_at = "2026-11-28T02:00:00Z".parse().expect("time");
        assert_ne!(
            EpisodeKey::new("ops", &next).thread_key(),
            key.thread_key(),
            "a new episode"
        );
        assert_ne!(
            EpisodeKey::new("dev", &n.alerts[0]).thread_key(),
            key.thread_key(),
            "another space"
        );
    }

    #[test]
    fn firing_opens_once_then_reminds_after_interval() {
        let opts = options();
        let (d, e) = run(AlertStatus::Firing, None, &opts, 0);
        assert_eq!(d, D::Post(MessageKind::Firing));
        let e = e.expect("state stored");
        let (d, update) = run(AlertStatus::Firing, Some(e.clone()), &opts, 4 * HOUR_MS - 1);
        assert_eq!(d, D::Suppress(SuppressReason::Unchanged));
        assert!(update.is_none());
        let (d, update) = run(AlertStatus::Firing, Some(e), &opts, 4 * HOUR_MS);
        assert_eq!(d, D::Post(MessageKind::Reminder));
        assert_eq!(update.expect("reminder stored").last_post_ms, 4 * HOUR_MS);
    }

    #[test]
    fn reminders_off_with_zero_interval() {
        let mut opts = options();
        opts.reminder_interval = Duration::ZERO;
        let (_, e) = run(AlertStatus::Firing, None, &opts, 0);
        let (d, _) = run(AlertStatus::Firing, e, &opts, 1000 * HOUR_MS);
        assert_eq!(d, D::Suppress(SuppressReason::Unchanged));
    }

    #[test]
    fn resolved_replies_once_and_stale_firing_is_ignored() {
        let opts = options();
        let (_, e) = run(AlertStatus::Firing, None, &opts, 0);
        let (d, e) = run(AlertStatus::Resolved, e, &opts, 10);
        assert_eq!(d, D::Post(MessageKind::Resolved));
        let (d, _) = run(AlertStatus::Resolved, e.clone(), &opts, 20);
        assert_eq!(d, D::Suppress(SuppressReason::Unchanged));
        let (d, _) = run(AlertStatus::Firing, e, &opts, 30);
        assert_eq!(d, D::Suppress(SuppressReason::Unchanged));
    }

    #[test]
    fn resolved_without_known_firing_still_posts() {
        let (d, e) = run(AlertStatus::Resolved, None, &options(), 0);
        assert_eq!(d, D::Post(MessageKind::Resolved));
        assert!(e.expect("stored").resolved);
    }

    #[test]
    fn send_resolved_off_suppresses_but_records() {
        let mut opts = options();
        opts.send_resolved = false;
        let (_, e) = run(AlertStatus::Firing, None, &opts, 0);
        let (d, e) = run(AlertStatus::Resolved, e, &opts, 10);
        assert_eq!(d, D::Suppress(SuppressReason::ResolvedDisabled));
        let (d, _) = run(AlertStatus::Resolved, e.clone(), &opts, 20);
        assert_eq!(
            d,
            D::Suppress(SuppressReason::Unchanged),
            "recorded as resolved"
        );
    }

    #[test]
    fn plan_posts_only_changes_and_catches_duplicates() {
        let mut store = MemoryEpisodes::default();
        let opts = options();
        let first = notification(&[("A", AlertStatus::Firing), ("B", AlertStatus::Firing)]);
        let plan1 = plan(&mut store, "ops", &opts, &first, 0).expect("plan");
        assert_eq!(plan1.messages.len(), 2);
        assert!(
            plan1
                .messages
                .iter()
                .all(|m| m.kind == MessageKind::Firing && m.thread_key.is_some())
        );

        // An HA peer's copy moments later.
        let copy = plan(&mut store, "ops", &opts, &first, 5_000).expect("plan");
        assert!(copy.messages.is_empty());
        assert_eq!(copy.suppressed, vec![SuppressReason::Duplicate; 2]);

        // The group changes: B resolves; A is unchanged.
        let second = notification(&[("A", AlertStatus::Firing), ("B", AlertStatus::Resolved)]);
        let plan2 = plan(&mut store, "ops", &opts, &second, 10_000).expect("plan");
        assert_eq!(plan2.messages.len(), 1);
        assert_eq!(plan2.messages[0].kind, MessageKind::Resolved);
        assert_eq!(plan2.messages[0].subject, Subject::Alert(1));
        assert_eq!(
            plan2.messages[0].thread_key, plan1.messages[1].thread_key,
            "resolve replies in B's thread"
        );
        assert_eq!(plan2.suppressed, vec![SuppressReason::Unchanged]);

        // The same content long after the duplicate window is a plain re-send.
        let later = plan(&mut store, "ops", &opts, &second, 10_000 + 3_600_000).expect("plan");
        assert!(later.messages.is_empty());
        assert_eq!(later.suppressed, vec![SuppressReason::Unchanged; 2]);
    }

    #[test]
    fn spaces_keep_separate_state() {
        let mut store = MemoryEpisodes::default();
        let n = notification(&[("A", AlertStatus::Firing)]);
        assert_eq!(
            plan(&mut store, "a", &options(), &n, 0)
                .expect("plan")
                .messages
                .len(),
            1
        );
        assert_eq!(
            plan(&mut store, "b", &options(), &n, 0)
                .expect("plan")
                .messages
                .len(),
            1
        );
    }

    #[test]
    fn threading_off_posts_top_level() {
        let mut opts = options();
        opts.threading = Threading::Off;
        let n = notification(&[("A", AlertStatus::Firing)]);
        let p = plan(&mut MemoryEpisodes::default(), "a", &opts, &n, 0).expect("plan");
        assert_eq!(p.messages[0].thread_key, None);
    }

    fn many(count: usize, status: AlertStatus) -> Vec<(String, AlertStatus)> {
        (0..count).map(|i| (format!("A{i}"), status)).collect()
    }

    fn notification_of(alerts: &[(String, AlertStatus)]) -> Notification {
        let refs: Vec<(&str, AlertStatus)> = alerts.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        notification(&refs)
    }

    #[test]
    fn a_storm_becomes_one_digest_whose_thread_gets_the_replies() {
        let mut store = MemoryEpisodes::default();
        let mut opts = options();
        opts.max_new_threads_per_notification = 3;
        // Three new alerts: within the bound, three threads.
        let few = plan(
            &mut store,
            "ops",
            &opts,
            &notification_of(&many(3, AlertStatus::Firing)),
            0,
        )
        .expect("plan");
        assert_eq!(few.messages.len(), 3);
        assert!(few.messages.iter().all(|m| m.kind == MessageKind::Firing));

        // Six alerts of which three are new: still within the bound.
        let mut storm = many(6, AlertStatus::Firing);
        let within = plan(&mut store, "ops", &opts, &notification_of(&storm), 1).expect("plan");
        assert_eq!(within.messages.len(), 3);

        // Five more new ones at once (A6..A10): one digest instead of five threads.
        storm.extend((6..11).map(|i| (format!("A{i}"), AlertStatus::Firing)));
        let digest = plan(&mut store, "ops", &opts, &notification_of(&storm), 2).expect("plan");
        assert_eq!(digest.messages.len(), 1, "{:?}", digest.messages);
        let message = &digest.messages[0];
        assert_eq!(message.kind, MessageKind::Digest);
        assert_eq!(
            message.subject,
            Subject::Alerts(AlertSet {
                firing: (6..11).collect(),
                ..AlertSet::default()
            })
        );
        let digest_thread = message.thread_key.clone().expect("own thread");
        assert!(
            digest_thread.starts_with("kabar:ops:digest:"),
            "{digest_thread}"
        );
        assert_eq!(digest.suppressed.len(), 6, "the older ones are unchanged");

        // A7 resolves: the reply goes to the digest's thread; A0 resolves into its own.
        let mut resolved = storm.clone();
        resolved[7].1 = AlertStatus::Resolved;
        resolved[0].1 = AlertStatus::Resolved;
        let replies = plan(&mut store, "ops", &opts, &notification_of(&resolved), 3).expect("plan");
        let thread_of = |index: usize| {
            replies
                .messages
                .iter()
                .find(|m| m.subject == Subject::Alert(index))
                .and_then(|m| m.thread_key.clone())
        };
        assert_eq!(thread_of(7), Some(digest_thread));
        assert_eq!(
            thread_of(0),
            Some(few.messages[0].thread_key.clone().expect("thread"))
        );
    }

    #[test]
    fn a_storm_with_threading_off_is_one_top_level_digest() {
        let mut opts = options();
        opts.threading = Threading::Off;
        opts.max_new_threads_per_notification = 2;
        let n = notification_of(&many(5, AlertStatus::Firing));
        let p = plan(&mut MemoryEpisodes::default(), "ops", &opts, &n, 0).expect("plan");
        assert_eq!(p.messages.len(), 1);
        assert_eq!(p.messages[0].kind, MessageKind::Digest);
        assert_eq!(p.messages[0].thread_key, None);
    }

    #[test]
    fn per_group_posts_changes_in_one_thread_until_the_group_resolves() {
        let mut store = MemoryEpisodes::default();
        let mut opts = options();
        opts.threading = Threading::PerGroup;
        let firing = notification_of(&many(3, AlertStatus::Firing));
        let first = plan(&mut store, "ops", &opts, &firing, 0).expect("plan");
        assert_eq!(first.messages.len(), 1);
        assert_eq!(first.messages[0].kind, MessageKind::Group);
        assert_eq!(
            first.messages[0].subject,
            Subject::Alerts(AlertSet {
                firing: vec![0, 1, 2],
                ..AlertSet::default()
            })
        );
        let thread = first.messages[0].thread_key.clone().expect("thread");
        assert!(thread.starts_with("kabar:ops:group:"), "{thread}");

        // Re-sent unchanged: nothing. One resolves: one message in the same thread.
        assert!(
            plan(&mut store, "ops", &opts, &firing, 200_000)
                .expect("plan")
                .messages
                .is_empty()
        );
        let mut one_resolved = many(3, AlertStatus::Firing);
        one_resolved[1].1 = AlertStatus::Resolved;
        let second = plan(
            &mut store,
            "ops",
            &opts,
            &notification_of(&one_resolved),
            300_000,
        )
        .expect("plan");
        assert_eq!(second.messages.len(), 1);
        assert_eq!(
            second.messages[0].subject,
            Subject::Alerts(AlertSet {
                resolved: vec![1],
                ..AlertSet::default()
            })
        );
        assert_eq!(
            second.messages[0].thread_key.as_deref(),
            Some(thread.as_str())
        );

        // All resolve: the last message still in the thread, which then closes.
        let all_resolved = notification_of(&many(3, AlertStatus::Resolved));
        let third = plan(&mut store, "ops", &opts, &all_resolved, 400_000).expect("plan");
        assert_eq!(
            third.messages[0].thread_key.as_deref(),
            Some(thread.as_str())
        );
        let group = store
            .group_episode("ops", &all_resolved.group_key)
            .expect("read")
            .expect("stored");
        assert!(!group.open);

        // The group fires again later (a new episode of an alert): a new thread.
        let mut again = all_resolved.clone();
        again.alerts[0].status = AlertStatus::Firing;
        again.alerts[0].starts_at = "2026-11-28T05:00:00Z".parse().expect("time");
        let fourth = plan(&mut store, "ops", &opts, &again, 500_000).expect("plan");
        assert_eq!(fourth.messages.len(), 1);
        assert_ne!(
            fourth.messages[0].thread_key.as_deref(),
            Some(thread.as_str())
        );
    }

    #[test]
    fn digest_ignores_external_url_but_not_status() {
        let a = notification(&[("A", AlertStatus::Firing)]);
        let mut b = a.clone();
        b.external_url = "http://am-2:9093".into();
        assert_eq!(notification_digest(&a), notification_digest(&b));
        let c = notification(&[("A", AlertStatus::Resolved)]);
        assert_ne!(notification_digest(&a), notification_digest(&c));
    }
}
