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
    Firing,
    Resolved,
    Reminder,
}

impl MessageKind {
    pub const ALL: [MessageKind; 3] = [
        MessageKind::Firing,
        MessageKind::Resolved,
        MessageKind::Reminder,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Firing => "firing",
            MessageKind::Resolved => "resolved",
            MessageKind::Reminder => "reminder",
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

    /// The Chat thread key of this episode.
    pub fn thread_key(&self) -> String {
        let starts = Timestamp::from_nanosecond(i128::from(self.starts_at_ns))
            .map(|t| t.to_string())
            .unwrap_or_else(|_| self.starts_at_ns.to_string());
        format!("kabar:{}:{}:{}", self.space, self.fingerprint, starts)
    }
}

/// What is known of an episode in a space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Episode {
    pub firing_posted: bool,
    pub resolved: bool,
    /// When the last message of this episode was queued (Unix ms).
    pub last_post_ms: i64,
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
}

/// How long an identical notification counts as a duplicate rather than a re-send. HA
/// members send within peer_timeout × position (15 s each) of each other; Alertmanager's
/// own re-sends of an unchanged group come every repeat_interval (hours by default).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The decision for one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Post(MessageKind),
    Suppress(SuppressReason),
}

/// Decides what one alert needs, given what is known of its episode.
/// Returns the decision and the episode state to store (None: leave it as it is).
pub fn decide(
    status: AlertStatus,
    known: Option<Episode>,
    options: &SpaceOptions,
    now_ms: i64,
) -> (Decision, Option<Episode>) {
    let posted = |resolved| Episode {
        firing_posted: true,
        resolved,
        last_post_ms: now_ms,
    };
    match (status, known) {
        (AlertStatus::Firing, None) => (Decision::Post(MessageKind::Firing), Some(posted(false))),
        // A firing copy that arrives after the resolve of the same episode is stale.
        (AlertStatus::Firing, Some(e)) if e.resolved => {
            (Decision::Suppress(SuppressReason::Unchanged), None)
        }
        (AlertStatus::Firing, Some(e)) => {
            let interval = options.reminder_interval.as_millis() as i64;
            if interval > 0 && now_ms.saturating_sub(e.last_post_ms) >= interval {
                (Decision::Post(MessageKind::Reminder), Some(posted(false)))
            } else {
                (Decision::Suppress(SuppressReason::Unchanged), None)
            }
        }
        (AlertStatus::Resolved, Some(e)) if e.resolved => {
            (Decision::Suppress(SuppressReason::Unchanged), None)
        }
        (AlertStatus::Resolved, known) if !options.send_resolved => (
            Decision::Suppress(SuppressReason::ResolvedDisabled),
            Some(Episode {
                firing_posted: known.is_some_and(|e| e.firing_posted),
                resolved: true,
                last_post_ms: known.map_or(now_ms, |e| e.last_post_ms),
            }),
        ),
        (AlertStatus::Resolved, _) => (Decision::Post(MessageKind::Resolved), Some(posted(true))),
    }
}

/// One message the plan wants posted.
#[derive(Debug, Clone)]
pub struct PlannedMessage {
    pub kind: MessageKind,
    /// Index into the notification's alerts.
    pub alert_index: usize,
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
    for (alert_index, alert) in notification.alerts.iter().enumerate() {
        let key = EpisodeKey::new(space, alert);
        let known = store.episode(&key)?;
        let (decision, update) = decide(alert.status, known, options, now_ms);
        if let Some(episode) = update {
            store.save_episode(&key, &episode, now_ms)?;
        }
        match decision {
            Decision::Suppress(reason) => plan.suppressed.push(reason),
            Decision::Post(kind) => plan.messages.push(PlannedMessage {
                kind,
                alert_index,
                thread_key: match options.threading {
                    Threading::Off => None,
                    Threading::PerAlert => Some(key.thread_key()),
                    // Config refuses per_group until group threads exist; should one get
                    // here, the alert's own thread is the safe place for its messages.
                    Threading::PerGroup => Some(key.thread_key()),
                },
            }),
        }
    }
    Ok(plan)
}

/// Episode state in memory: `kabar render` and tests.
#[derive(Debug, Default)]
pub struct MemoryEpisodes {
    episodes: std::collections::HashMap<EpisodeKey, Episode>,
    seen: std::collections::HashMap<(String, u64), i64>,
}

impl EpisodeStore for MemoryEpisodes {
    type Error = std::convert::Infallible;

    fn episode(&mut self, key: &EpisodeKey) -> Result<Option<Episode>, Self::Error> {
        Ok(self.episodes.get(key).copied())
    }

    fn save_episode(
        &mut self,
        key: &EpisodeKey,
        episode: &Episode,
        _now_ms: i64,
    ) -> Result<(), Self::Error> {
        self.episodes.insert(key.clone(), *episode);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: i64 = 3_600_000;

    fn options() -> SpaceOptions {
        SpaceOptions::default()
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
        let (d, e) = decide(AlertStatus::Firing, None, &opts, 0);
        assert_eq!(d, Decision::Post(MessageKind::Firing));
        let e = e.expect("state stored");
        let (d, update) = decide(AlertStatus::Firing, Some(e), &opts, 4 * HOUR_MS - 1);
        assert_eq!(d, Decision::Suppress(SuppressReason::Unchanged));
        assert!(update.is_none());
        let (d, update) = decide(AlertStatus::Firing, Some(e), &opts, 4 * HOUR_MS);
        assert_eq!(d, Decision::Post(MessageKind::Reminder));
        assert_eq!(update.expect("reminder stored").last_post_ms, 4 * HOUR_MS);
    }

    #[test]
    fn reminders_off_with_zero_interval() {
        let mut opts = options();
        opts.reminder_interval = Duration::ZERO;
        let (_, e) = decide(AlertStatus::Firing, None, &opts, 0);
        let (d, _) = decide(AlertStatus::Firing, e, &opts, 1000 * HOUR_MS);
        assert_eq!(d, Decision::Suppress(SuppressReason::Unchanged));
    }

    #[test]
    fn resolved_replies_once_and_stale_firing_is_ignored() {
        let opts = options();
        let (_, e) = decide(AlertStatus::Firing, None, &opts, 0);
        let (d, e) = decide(AlertStatus::Resolved, e, &opts, 10);
        assert_eq!(d, Decision::Post(MessageKind::Resolved));
        let (d, _) = decide(AlertStatus::Resolved, e, &opts, 20);
        assert_eq!(d, Decision::Suppress(SuppressReason::Unchanged));
        let (d, _) = decide(AlertStatus::Firing, e, &opts, 30);
        assert_eq!(d, Decision::Suppress(SuppressReason::Unchanged));
    }

    #[test]
    fn resolved_without_known_firing_still_posts() {
        let (d, e) = decide(AlertStatus::Resolved, None, &options(), 0);
        assert_eq!(d, Decision::Post(MessageKind::Resolved));
        assert!(e.expect("stored").resolved);
    }

    #[test]
    fn send_resolved_off_suppresses_but_records() {
        let mut opts = options();
        opts.send_resolved = false;
        let (_, e) = decide(AlertStatus::Firing, None, &opts, 0);
        let (d, e) = decide(AlertStatus::Resolved, e, &opts, 10);
        assert_eq!(d, Decision::Suppress(SuppressReason::ResolvedDisabled));
        let (d, _) = decide(AlertStatus::Resolved, e, &opts, 20);
        assert_eq!(
            d,
            Decision::Suppress(SuppressReason::Unchanged),
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
        assert_eq!(plan2.messages[0].alert_index, 1);
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
