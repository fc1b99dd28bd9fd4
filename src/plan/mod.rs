//! Planning: what, of a notification Alertmanager re-sends again and again, is new for a
//! space and deserves a message, against the stored episodes. It must not store or render.
//!
//! An episode is (fingerprint, startsAt). Its thread key is derived from space, fingerprint
//! and startsAt alone, so it needs no stored state, survives restarts and agrees between
//! replicas. The stored state only answers "was this already posted?".

mod episode;

use episode::{format_ns, starts_at_key};

pub use episode::{Episode, EpisodeKey, GroupEpisode, MessageKind, SuppressReason};

use std::time::Duration;

use crate::config::{SpaceOptions, Threading};
use crate::payload::{Alert, AlertStatus, Fnv64, Notification};
use crate::store::EpisodeStore;

/// How long an identical notification counts as a duplicate rather than a re-send. HA
/// members send within peer_timeout × position (15 s each) of each other; Alertmanager's
/// own re-sends of an unchanged group come every repeat_interval (hours by default).
pub(crate) const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long after kabar recorded an episode's resolve a firing copy of the same episode
/// (same fingerprint and startsAt) is a stale duplicate: an HA peer's or a retried copy of
/// the notification before the resolve. Later, the episode fires again (Prometheus
/// restarted and restored the start time, or an outage longer than endsAt resolved it in
/// Alertmanager) and reopens with a "Firing again" reply.
pub(crate) const REFIRE_GRACE: Duration = Duration::from_secs(60);

/// The decision for one alert, with the episode state to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
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
pub(crate) fn decide(
    alert: &Alert,
    known: Option<&Episode>,
    options: &SpaceOptions,
    now_ms: i64,
) -> Decision {
    let thread_key = known.and_then(|e| e.thread_key.clone());
    let ends_ms = alert.ends_at.map(|t| t.as_millisecond());
    let firing = |kind, previous_resolve: Option<i64>| Decision::Post {
        kind,
        episode: Episode {
            firing_posted: true,
            resolved: false,
            last_post_ms: now_ms,
            thread_key: thread_key.clone(),
            resolved_ms: None,
            resolved_ends_ms: previous_resolve,
        },
    };
    let unchanged = Decision::Suppress {
        reason: SuppressReason::Unchanged,
        update: None,
    };
    let duplicate = Decision::Suppress {
        reason: SuppressReason::Duplicate,
        update: None,
    };
    match (alert.status, known) {
        (AlertStatus::Firing, None) => firing(MessageKind::Firing, None),
        (AlertStatus::Firing, Some(e)) if e.resolved => {
            // Episodes resolved before kabar recorded resolve times count from their
            // last post, which is at or before the resolve.
            let resolved_at = e.resolved_ms.unwrap_or(e.last_post_ms);
            if now_ms.saturating_sub(resolved_at) < REFIRE_GRACE.as_millis() as i64 {
                duplicate
            } else {
                firing(MessageKind::FiringAgain, e.resolved_ends_ms)
            }
        }
        (AlertStatus::Firing, Some(e)) => {
            let interval = options.reminder_interval.as_millis() as i64;
            if interval > 0 && now_ms.saturating_sub(e.last_post_ms) >= interval {
                firing(MessageKind::Reminder, e.resolved_ends_ms)
            } else {
                unchanged
            }
        }
        (AlertStatus::Resolved, Some(e)) if e.resolved => unchanged,
        (AlertStatus::Resolved, Some(e)) if ends_ms.is_some() && e.resolved_ends_ms == ends_ms => {
            duplicate
        }
        (AlertStatus::Resolved, known) => {
            let episode = Episode {
                firing_posted: true,
                resolved: true,
                last_post_ms: now_ms,
                thread_key,
                resolved_ms: Some(now_ms),
                resolved_ends_ms: ends_ms,
            };
            if options.send_resolved {
                Decision::Post {
                    kind: MessageKind::Resolved,
                    episode,
                }
            } else {
                Decision::Suppress {
                    reason: SuppressReason::ResolvedDisabled,
                    update: Some(Episode {
                        firing_posted: known.is_some_and(|e| e.firing_posted),
                        last_post_ms: known.map_or(now_ms, |e| e.last_post_ms),
                        ..episode
                    }),
                }
            }
        }
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
    pub(crate) fn is_empty(&self) -> bool {
        self.firing.is_empty() && self.resolved.is_empty() && self.still_firing.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
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
pub(crate) struct PlannedMessage {
    pub kind: MessageKind,
    pub subject: Subject,
    /// None: a top-level message (threading off).
    pub thread_key: Option<String>,
    /// The message starts its thread (an alert's firing card, a group's or a digest's
    /// first message): app mode creates it under the thread's own id, so it can edit it.
    pub opens_thread: bool,
}

/// The outcome of planning one notification for one space.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub messages: Vec<PlannedMessage>,
    pub suppressed: Vec<SuppressReason>,
}

/// Digest of what makes two notifications the same for duplicate detection. externalURL
/// is left out: each HA member sends its own.
pub(crate) fn notification_digest(notification: &Notification) -> u64 {
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
pub(crate) fn plan<S: EpisodeStore + ?Sized>(
    store: &mut S,
    space: &str,
    options: &SpaceOptions,
    notification: &Notification,
    now_ms: i64,
) -> Result<Plan, S::Error> {
    let mut plan = Plan::default();
    let since = now_ms - DUPLICATE_WINDOW.as_millis() as i64;
    let mut group_hash = Fnv64::new();
    group_hash.write(notification.group_key.as_bytes());
    let group = group_hash.finish();
    let digest = notification_digest(notification);
    // Only the group's latest notification counts: after a change (a resolve), a copy of
    // an older notification is judged alert by alert, so the same alert firing again is
    // not taken for a copy of its first firing notification.
    let latest = store.latest_notification(space, group)?;
    if latest.is_some_and(|(seen, at)| seen == digest && at >= since) {
        store.record_notification(space, group, digest, now_ms)?;
        plan.suppressed = vec![SuppressReason::Duplicate; notification.alerts.len()];
        return Ok(plan);
    }
    let mut stale = false;
    let mut postings = Vec::new();
    for (alert_index, alert) in notification.alerts.iter().enumerate() {
        let key = EpisodeKey::new(space, alert);
        let known = store.episode(&key)?;
        match decide(alert, known.as_ref(), options, now_ms) {
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
                stale |= reason == SuppressReason::Duplicate;
                plan.suppressed.push(reason);
            }
        }
    }
    // A notification holding a stale copy describes an older state of the group: it is
    // not the latest, and the same content arriving later (the alert really firing
    // again) is judged alert by alert, not dropped as its duplicate.
    if !stale {
        store.record_notification(space, group, digest, now_ms)?;
    }
    match options.threading {
        Threading::PerGroup => plan_group(store, space, notification, postings, now_ms, &mut plan)?,
        Threading::PerAlert | Threading::Off => {
            plan_alerts(store, space, options, postings, now_ms, &mut plan)?
        }
    }
    Ok(plan)
}

/// One message per alert, unless the notification would queue more messages in the space
/// than max_new_threads_per_notification: then one digest names them all (firing, firing
/// again, resolved, reminders), so a storm does not put minutes of backlog in front of
/// what comes next. Every alert's episode state moves on either way; alerts that open
/// with the digest reply in its thread later.
fn plan_alerts<S: EpisodeStore + ?Sized>(
    store: &mut S,
    space: &str,
    options: &SpaceOptions,
    postings: Vec<Posting>,
    now_ms: i64,
    plan: &mut Plan,
) -> Result<(), S::Error> {
    let threaded = options.threading == Threading::PerAlert;
    let reply_thread = |posting: &Posting| {
        posting
            .episode
            .thread_key
            .clone()
            .unwrap_or_else(|| posting.key.thread_key())
    };
    if postings.len() <= options.max_new_threads_per_notification as usize {
        for posting in postings {
            store.save_episode(&posting.key, &posting.episode, now_ms)?;
            plan.messages.push(PlannedMessage {
                kind: posting.kind,
                subject: Subject::Alert(posting.alert_index),
                thread_key: threaded.then(|| reply_thread(&posting)),
                opens_thread: threaded
                    && posting.kind == MessageKind::Firing
                    && posting.episode.thread_key.is_none(),
            });
        }
        return Ok(());
    }
    let mut alerts = AlertSet::default();
    for posting in &postings {
        match posting.kind {
            MessageKind::Resolved => alerts.resolved.push(posting.alert_index),
            MessageKind::Reminder => alerts.still_firing.push(posting.alert_index),
            _ => alerts.firing.push(posting.alert_index),
        }
    }
    // A digest about alerts that all live in one thread already (those a firing digest
    // announced, now resolving together) goes there; anything else gets its own thread.
    let first_thread = postings.first().map(reply_thread);
    let shared_thread = first_thread.filter(|thread| {
        postings
            .iter()
            .all(|p| p.kind != MessageKind::Firing && &reply_thread(p) == thread)
    });
    let opens_thread = threaded && shared_thread.is_none();
    let thread =
        shared_thread.unwrap_or_else(|| digest_thread_key(space, postings.iter().map(|p| &p.key)));
    for mut posting in postings {
        if posting.kind == MessageKind::Firing && threaded {
            posting.episode.thread_key = Some(thread.clone());
        }
        store.save_episode(&posting.key, &posting.episode, now_ms)?;
    }
    plan.messages.push(PlannedMessage {
        kind: MessageKind::Digest,
        subject: Subject::Alerts(alerts),
        thread_key: threaded.then_some(thread),
        opens_thread,
    });
    Ok(())
}

/// One message listing what changed in the group, in the group episode's thread.
fn plan_group<S: EpisodeStore + ?Sized>(
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
    // Only alerts of episodes the group already had (firing again, reminders, resolves):
    // the group episode continues in its thread even if it had closed.
    let continues = postings.iter().all(|p| p.kind != MessageKind::Firing);
    for posting in postings {
        store.save_episode(&posting.key, &posting.episode, now_ms)?;
        match posting.kind {
            MessageKind::Firing | MessageKind::FiringAgain => {
                changes.firing.push(posting.alert_index)
            }
            MessageKind::Resolved => changes.resolved.push(posting.alert_index),
            _ => changes.still_firing.push(posting.alert_index),
        }
    }
    let open = known.filter(|g| g.open || continues);
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
    let opens_thread = open.is_none();
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
        opens_thread,
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
            .map(|a| starts_at_key(a.starts_at))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryEpisodes;
    use jiff::Timestamp;

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
        let alert = &notification(&[("A", status)]).alerts[0];
        match decide(alert, known.as_ref(), options, now_ms) {
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

    /// One alert starting at `starts_at` (as the payload spells it), if kabar accepts it.
    fn alert_starting(starts_at: &str) -> Option<Alert> {
        let body = serde_json::json!({"receiver": "r", "status": "firing", "groupKey": "{}:{}",
            "alerts": [{"status": "firing", "labels": {"alertname": "A"}, "fingerprint": "fp",
                "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z"}]});
        Notification::parse(body.to_string().as_bytes())
            .ok()
            .map(|mut n| n.alerts.remove(0))
    }

    #[test]
    fn any_start_date_gets_its_own_episode_and_thread_key_without_overflow() {
        let mut alerts: Vec<Alert> = [
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:00:00.0000001Z",
            "-009999-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "9999-12-30T21:59:59.999999999Z",
            "9999-12-31T23:59:59.999999999-23:59",
            "0001-01-01T00:00:00+23:59",
            // the ends of what nanoseconds in an i64 can hold, and 100 ns past each
            "1677-09-21T00:12:43.145224192Z",
            "1677-09-21T00:12:43.145224092Z",
            "2262-04-11T23:47:16.854775807Z",
            "2262-04-11T23:47:16.854775907Z",
            // either side of where exact nanoseconds end
            "2116-02-20T23:53:38.427387903Z",
            "2116-02-20T23:53:38.427387904Z",
            "1823-11-12T00:06:21.572612096Z",
            "1823-11-12T00:06:21.572612097Z",
            "1970-01-01T00:00:00Z",
            "2026-11-28T00:52:38Z",
            "2026-11-28T00:52:38.000000001Z",
            "2026-11-28T00:52:38.123456789123456789Z",
            "2016-12-31T23:59:60Z",
            "2026-11-28T00:52:38+23:59",
        ]
        .iter()
        .filter_map(|t| alert_starting(t))
        .collect();
        assert!(
            alerts.len() >= 12,
            "kabar parses these dates: {}",
            alerts.len()
        );
        // 2^64 ns (about 584 years) apart: the same number once cut to 64 bits.
        let mut later = alerts
            .iter()
            .find(|a| a.starts_at.to_string() == "2026-11-28T00:52:38Z")
            .expect("sample")
            .clone();
        later.starts_at =
            Timestamp::from_nanosecond(later.starts_at.as_nanosecond() + (1i128 << 64))
                .expect("in range");
        alerts.push(later);
        let mut instants = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        let mut thread_keys = std::collections::HashSet::new();
        for alert in &alerts {
            let key = EpisodeKey::new("ops", alert);
            let thread_key = key.thread_key();
            let shown = alert.starts_at.to_string();
            let second = shown.split(['.', 'Z']).next().unwrap_or(&shown);
            assert!(
                thread_key.contains(second),
                "{thread_key} names its start {shown}"
            );
            if instants.insert(alert.starts_at) {
                assert!(keys.insert(key), "two episodes share a key: {shown}");
                assert!(
                    thread_keys.insert(thread_key),
                    "two episodes share a thread: {shown}"
                );
            }
        }
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
        // A firing copy right after the resolve is a stale duplicate, not a re-fire.
        let (d, update) = run(AlertStatus::Firing, e, &opts, 30);
        assert_eq!(d, D::Suppress(SuppressReason::Duplicate));
        assert!(update.is_none(), "the episode stays resolved");
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

    /// The notification with every resolved alert's endsAt set to `ends_at`.
    fn resolved_at(mut n: Notification, ends_at: &str) -> Notification {
        for alert in &mut n.alerts {
            if alert.status == AlertStatus::Resolved {
                alert.ends_at = Some(ends_at.parse().expect("time"));
            }
        }
        n
    }

    fn kinds(plan: &Plan) -> Vec<&'static str> {
        plan.messages.iter().map(|m| m.kind.as_str()).collect()
    }

    #[test]
    fn firing_again_within_60s_of_the_resolve_is_a_stale_copy_after_it_reopens() {
        let mut store = MemoryEpisodes::default();
        let opts = options();
        let firing = notification(&[("A", AlertStatus::Firing)]);
        let resolved = notification(&[("A", AlertStatus::Resolved)]);
        let opened = plan(&mut store, "ops", &opts, &firing, 0).expect("plan");
        let thread = opened.messages[0].thread_key.clone().expect("thread");

        // Resolved an hour later (kabar's clock), long after the firing notification.
        let resolve_ms = HOUR_MS;
        let p = plan(&mut store, "ops", &opts, &resolved, resolve_ms).expect("plan");
        assert_eq!(kinds(&p), ["resolved"]);

        // A late copy of the old firing notification 59 s after the resolve: stale.
        let stale = plan(&mut store, "ops", &opts, &firing, resolve_ms + 59_000).expect("plan");
        assert!(stale.messages.is_empty(), "{:?}", stale.messages);
        assert_eq!(stale.suppressed, vec![SuppressReason::Duplicate]);

        // 61 s after the resolve it fires again: a reply in the same thread.
        let again_ms = resolve_ms + 61_000;
        let again = plan(&mut store, "ops", &opts, &firing, again_ms).expect("plan");
        assert_eq!(kinds(&again), ["firingAgain"]);
        assert_eq!(
            again.messages[0].thread_key.as_deref(),
            Some(thread.as_str())
        );
        assert_eq!(again.messages[0].subject, Subject::Alert(0));

        // While it burns: nothing until reminder_interval, then reminders resume.
        let quiet = plan(&mut store, "ops", &opts, &firing, again_ms + HOUR_MS).expect("plan");
        assert!(quiet.messages.is_empty());
        let reminder =
            plan(&mut store, "ops", &opts, &firing, again_ms + 4 * HOUR_MS).expect("plan");
        assert_eq!(kinds(&reminder), ["reminder"]);
        assert_eq!(
            reminder.messages[0].thread_key.as_deref(),
            Some(thread.as_str())
        );

        // A late copy of the old resolve (same endsAt) does not close the reopened episode.
        let old_copy = plan(
            &mut store,
            "ops",
            &opts,
            &resolved,
            again_ms + 4 * HOUR_MS + 1,
        )
        .expect("plan");
        assert!(old_copy.messages.is_empty(), "{:?}", old_copy.messages);
        assert_eq!(old_copy.suppressed, vec![SuppressReason::Duplicate]);

        // The real resolve (a later endsAt) posts a resolved reply again, once.
        let resolved_again = resolved_at(resolved, "2026-11-28T06:00:00Z");
        let second = plan(
            &mut store,
            "ops",
            &opts,
            &resolved_again,
            again_ms + 5 * HOUR_MS,
        )
        .expect("plan");
        assert_eq!(kinds(&second), ["resolved"]);
        assert_eq!(
            second.messages[0].thread_key.as_deref(),
            Some(thread.as_str())
        );
        let repeat = plan(
            &mut store,
            "ops",
            &opts,
            &resolved_again,
            again_ms + 6 * HOUR_MS,
        )
        .expect("plan");
        assert!(repeat.messages.is_empty());
    }

    #[test]
    fn firing_again_soon_after_the_first_firing_is_not_taken_for_its_copy() {
        // Fired, resolved 5 s later, fired again 61 s after the resolve: the re-fire
        // notification is identical to the first one, seen only 66 s before.
        let mut store = MemoryEpisodes::default();
        let opts = options();
        let firing = notification(&[("A", AlertStatus::Firing)]);
        let resolved = notification(&[("A", AlertStatus::Resolved)]);
        plan(&mut store, "ops", &opts, &firing, 0).expect("plan");
        plan(&mut store, "ops", &opts, &resolved, 5_000).expect("plan");
        let again = plan(&mut store, "ops", &opts, &firing, 66_000).expect("plan");
        assert_eq!(kinds(&again), ["firingAgain"]);
        // Its HA copy moments later is a duplicate.
        let copy = plan(&mut store, "ops", &opts, &firing, 70_000).expect("plan");
        assert!(copy.messages.is_empty());
        assert_eq!(copy.suppressed, vec![SuppressReason::Duplicate]);
    }

    #[test]
    fn the_refire_window_runs_on_kabars_clock_not_the_resolves_end_time() {
        // Alertmanager resolved the alert at its endsAt long before kabar got the resolve
        // (an outage); the stale firing copy right after the resolve is still stale.
        let mut store = MemoryEpisodes::default();
        let opts = options();
        let firing = notification(&[("A", AlertStatus::Firing)]);
        let resolved = notification(&[("A", AlertStatus::Resolved)]);
        plan(&mut store, "ops", &opts, &firing, 0).expect("plan");
        let received: i64 = "2026-11-28T03:00:00Z"
            .parse::<Timestamp>()
            .expect("time")
            .as_millisecond();
        plan(&mut store, "ops", &opts, &resolved, received).expect("plan");
        let stale = plan(&mut store, "ops", &opts, &firing, received + 30_000).expect("plan");
        assert!(stale.messages.is_empty(), "{:?}", stale.messages);
        assert_eq!(stale.suppressed, vec![SuppressReason::Duplicate]);
    }

    #[test]
    fn firing_again_with_send_resolved_off_still_reopens() {
        let mut store = MemoryEpisodes::default();
        let mut opts = options();
        opts.send_resolved = false;
        let firing = notification(&[("A", AlertStatus::Firing)]);
        let resolved = notification(&[("A", AlertStatus::Resolved)]);
        plan(&mut store, "ops", &opts, &firing, 0).expect("plan");
        let r = plan(&mut store, "ops", &opts, &resolved, HOUR_MS).expect("plan");
        assert_eq!(r.suppressed, vec![SuppressReason::ResolvedDisabled]);
        let stale = plan(&mut store, "ops", &opts, &firing, HOUR_MS + 59_000).expect("plan");
        assert_eq!(stale.suppressed, vec![SuppressReason::Duplicate]);
        let again = plan(&mut store, "ops", &opts, &firing, HOUR_MS + 61_000).expect("plan");
        assert_eq!(kinds(&again), ["firingAgain"]);
    }

    #[test]
    fn per_group_a_resolved_group_that_fires_again_reopens_its_thread_after_the_window() {
        let mut store = MemoryEpisodes::default();
        let mut opts = options();
        opts.threading = Threading::PerGroup;
        let firing = notification_of(&many(2, AlertStatus::Firing));
        let first = plan(&mut store, "ops", &opts, &firing, 0).expect("plan");
        let thread = first.messages[0].thread_key.clone().expect("thread");
        let resolved = notification_of(&many(2, AlertStatus::Resolved));
        let closing = plan(&mut store, "ops", &opts, &resolved, HOUR_MS).expect("plan");
        assert_eq!(kinds(&closing), ["group"]);

        // Within 60 s of the resolve: stale copies, nothing posted.
        let stale = plan(&mut store, "ops", &opts, &firing, HOUR_MS + 59_000).expect("plan");
        assert!(stale.messages.is_empty(), "{:?}", stale.messages);
        assert_eq!(stale.suppressed, vec![SuppressReason::Duplicate; 2]);

        // After: one group message in the group's thread listing both as firing.
        let again = plan(&mut store, "ops", &opts, &firing, HOUR_MS + 61_000).expect("plan");
        assert_eq!(kinds(&again), ["group"]);
        assert_eq!(
            again.messages[0].thread_key.as_deref(),
            Some(thread.as_str())
        );
        assert_eq!(
            again.messages[0].subject,
            Subject::Alerts(AlertSet {
                firing: vec![0, 1],
                ..AlertSet::default()
            })
        );
        let group = store
            .group_episode("ops", &firing.group_key)
            .expect("read")
            .expect("stored");
        assert!(group.open, "the group episode is open again");

        // The resolve after that closes it with a message in the same thread.
        let resolved_again = resolved_at(resolved, "2026-11-28T06:00:00Z");
        let last = plan(&mut store, "ops", &opts, &resolved_again, 3 * HOUR_MS).expect("plan");
        assert_eq!(kinds(&last), ["group"]);
        assert_eq!(
            last.messages[0].thread_key.as_deref(),
            Some(thread.as_str())
        );
    }

    fn storm_options() -> SpaceOptions {
        let mut opts = options();
        opts.max_new_threads_per_notification = 10;
        opts
    }

    #[test]
    fn a_storm_of_resolved_alerts_never_seen_firing_is_one_digest() {
        let mut store = MemoryEpisodes::default();
        let opts = storm_options();
        let storm = notification_of(&many(200, AlertStatus::Resolved));
        let p = plan(&mut store, "ops", &opts, &storm, 0).expect("plan");
        assert_eq!(kinds(&p), ["digest"], "one message, not 200");
        assert_eq!(
            p.messages[0].subject,
            Subject::Alerts(AlertSet {
                resolved: (0..200).collect(),
                ..AlertSet::default()
            })
        );
        assert!(p.messages[0].thread_key.is_some());
        // Every episode was recorded as resolved: the re-send posts nothing.
        let again = plan(&mut store, "ops", &opts, &storm, HOUR_MS).expect("plan");
        assert!(again.messages.is_empty());
        assert_eq!(again.suppressed, vec![SuppressReason::Unchanged; 200]);
    }

    #[test]
    fn a_mix_of_reminders_resolves_and_new_alerts_beyond_the_bound_is_one_digest() {
        let mut store = MemoryEpisodes::default();
        let opts = storm_options();
        // Five alerts fire, four more fire: nine threads, within the bound.
        let mut alerts: Vec<(String, AlertStatus)> = (0..9)
            .map(|i| (format!("A{i}"), AlertStatus::Firing))
            .collect();
        let opened = plan(&mut store, "ops", &opts, &notification_of(&alerts), 0).expect("plan");
        assert_eq!(opened.messages.len(), 9);
        // Four hours later: A0..A4 are due a reminder, A5..A8 resolve, C0..C2 are new.
        for alert in &mut alerts[5..] {
            alert.1 = AlertStatus::Resolved;
        }
        alerts.extend((0..3).map(|i| (format!("C{i}"), AlertStatus::Firing)));
        let mixed = notification_of(&alerts);
        let p = plan(&mut store, "ops", &opts, &mixed, 4 * HOUR_MS).expect("plan");
        assert_eq!(kinds(&p), ["digest"], "12 messages > 10 become one digest");
        assert_eq!(
            p.messages[0].subject,
            Subject::Alerts(AlertSet {
                firing: vec![9, 10, 11],
                resolved: vec![5, 6, 7, 8],
                still_firing: vec![0, 1, 2, 3, 4],
            })
        );
        // The state moved on for every alert: the same notification later is unchanged,
        // and the reminders are next due four hours after this digest.
        let later = plan(&mut store, "ops", &opts, &mixed, 5 * HOUR_MS).expect("plan");
        assert!(later.messages.is_empty(), "{:?}", later.messages);
        let due = plan(&mut store, "ops", &opts, &mixed, 8 * HOUR_MS).expect("plan");
        assert_eq!(kinds(&due), ["reminder"; 8], "A0..A4 and C0..C2");
    }

    #[test]
    fn at_or_below_the_bound_every_kind_gets_its_own_message() {
        let mut store = MemoryEpisodes::default();
        let opts = storm_options();
        let mut alerts: Vec<(String, AlertStatus)> = (0..7)
            .map(|i| (format!("A{i}"), AlertStatus::Firing))
            .collect();
        plan(&mut store, "ops", &opts, &notification_of(&alerts), 0).expect("plan");
        // 4 reminders + 3 resolves + 3 new = 10 messages: exactly the bound.
        for alert in &mut alerts[4..] {
            alert.1 = AlertStatus::Resolved;
        }
        alerts.extend((0..3).map(|i| (format!("C{i}"), AlertStatus::Firing)));
        let p = plan(
            &mut store,
            "ops",
            &opts,
            &notification_of(&alerts),
            4 * HOUR_MS,
        )
        .expect("plan");
        let mut got = kinds(&p);
        got.sort_unstable();
        assert_eq!(
            got,
            [
                "firing", "firing", "firing", "reminder", "reminder", "reminder", "reminder",
                "resolved", "resolved", "resolved"
            ]
        );
    }

    #[test]
    fn alerts_a_digest_announced_resolve_as_a_digest_in_its_thread() {
        let mut store = MemoryEpisodes::default();
        let mut opts = options();
        opts.max_new_threads_per_notification = 2;
        let fired = plan(
            &mut store,
            "ops",
            &opts,
            &notification_of(&many(5, AlertStatus::Firing)),
            0,
        )
        .expect("plan");
        let thread = fired.messages[0].thread_key.clone().expect("thread");
        let resolved = plan(
            &mut store,
            "ops",
            &opts,
            &notification_of(&many(5, AlertStatus::Resolved)),
            HOUR_MS,
        )
        .expect("plan");
        assert_eq!(kinds(&resolved), ["digest"]);
        assert_eq!(resolved.messages[0].thread_key, Some(thread));
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
