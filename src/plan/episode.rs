//! What planning reads and writes: message kinds, suppress reasons, episode keys and their
//! thread keys, and the episode state the store keeps. Data only: no decisions here.

use jiff::Timestamp;

use crate::payload::Alert;

/// What a message is about; also the `kind` a template sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// One alert started firing: opens its thread.
    Firing,
    /// One alert resolved: replies in its thread.
    Resolved,
    /// One alert is still firing after reminder_interval.
    Reminder,
    /// One alert fires again after its episode resolved (same fingerprint and startsAt):
    /// replies in its thread, and reminders resume.
    FiringAgain,
    /// What changed in an Alertmanager group (`threading: per_group`).
    Group,
    /// Many alerts started firing at once: one message names them all (storm control).
    Digest,
}

impl MessageKind {
    pub const ALL: [MessageKind; 6] = [
        MessageKind::Firing,
        MessageKind::Resolved,
        MessageKind::Reminder,
        MessageKind::FiringAgain,
        MessageKind::Group,
        MessageKind::Digest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Firing => "firing",
            MessageKind::Resolved => "resolved",
            MessageKind::Reminder => "reminder",
            MessageKind::FiringAgain => "firingAgain",
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
    /// A copy of a notification already handled: the same notification again within the
    /// duplicate window (an HA pair), a firing copy within REFIRE_GRACE of the episode's
    /// resolve, or a late copy of an old resolve after the episode fired again.
    Duplicate,
    /// Resolved, but the space has `send_resolved: false`.
    ResolvedDisabled,
    /// A reminder of an alert someone acknowledged from its card (app mode).
    Acknowledged,
}

impl SuppressReason {
    pub(crate) const ALL: [SuppressReason; 4] = [
        SuppressReason::Unchanged,
        SuppressReason::Duplicate,
        SuppressReason::ResolvedDisabled,
        SuppressReason::Acknowledged,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SuppressReason::Unchanged => "unchanged",
            SuppressReason::Duplicate => "duplicate",
            SuppressReason::ResolvedDisabled => "sendResolvedOff",
            SuppressReason::Acknowledged => "acknowledged",
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
            starts_at_ns: starts_at_key(alert.starts_at),
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

/// Within ±2^62 ns of 1970 (years 1823 to 2116: every real alert, and all that earlier
/// versions stored) a start time is kept to the nanosecond.
const EXACT_NS_LIMIT: i128 = 1 << 62;
/// Beyond, in units of 100 ns past that band: a payload may hold any date from year -9999
/// to 9999, which in nanoseconds needs 69 bits. A plain cast to i64 wrapped every 2^64 ns
/// (584 years), so year 1 or 2610 landed on the key of a real 2026 episode.
const FAR_UNIT_NS: i128 = 100;

/// A start time as the i64 episodes are keyed by: distinct times get distinct numbers
/// (beyond the exact band, times 100 ns apart).
pub(super) fn starts_at_key(t: Timestamp) -> i64 {
    let ns = t.as_nanosecond();
    let key = if ns >= EXACT_NS_LIMIT {
        EXACT_NS_LIMIT + (ns - EXACT_NS_LIMIT) / FAR_UNIT_NS
    } else if ns <= -EXACT_NS_LIMIT {
        -EXACT_NS_LIMIT - (-EXACT_NS_LIMIT - ns) / FAR_UNIT_NS
    } else {
        ns
    };
    // jiff's range ends near ±3.8e20 ns, which the 100 ns units keep below ±8.4e18.
    i64::try_from(key).unwrap_or(if key < 0 { i64::MIN } else { i64::MAX })
}

/// The start time a key stands for, in RFC 3339 (to 100 ns beyond the exact band).
pub(super) fn format_ns(key: i64) -> String {
    let key = i128::from(key);
    let ns = if key >= EXACT_NS_LIMIT {
        EXACT_NS_LIMIT + (key - EXACT_NS_LIMIT) * FAR_UNIT_NS
    } else if key <= -EXACT_NS_LIMIT {
        -EXACT_NS_LIMIT - (-EXACT_NS_LIMIT - key) * FAR_UNIT_NS
    } else {
        key
    };
    Timestamp::from_nanosecond(ns)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| key.to_string())
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
    /// While resolved: when kabar recorded the resolve (kabar's clock, Unix ms), which
    /// starts REFIRE_GRACE. Not the alert's endsAt: that is the sender's clock and may lie
    /// long before kabar heard of the resolve (Alertmanager resolves at endsAt when
    /// Prometheus stops sending, and tells receivers at its next flush).
    pub resolved_ms: Option<i64>,
    /// The endsAt (Unix ms) of the episode's latest resolve. After the episode fires
    /// again, a resolved copy carrying exactly this endsAt is a late copy of that old
    /// resolve, not a new one.
    pub resolved_ends_ms: Option<i64>,
}

/// The thread of an Alertmanager group in a space (`threading: per_group`). It stays open
/// until a notification reports every alert of the group resolved; the next firing then
/// opens a new thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEpisode {
    pub thread_key: String,
    pub open: bool,
}
