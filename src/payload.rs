//! Alertmanager's webhook payload (version 4), read leniently: unknown keys ignored, `null`
//! maps and strings read as empty, any RFC 3339 precision. Only the shape: no decisions.

use std::borrow::Cow;
use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};

pub type LabelSet = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// One webhook notification: a group of alerts for one receiver.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub receiver: String,
    pub status: AlertStatus,
    pub alerts: Vec<Alert>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub group_labels: LabelSet,
    #[serde(default, deserialize_with = "null_as_default")]
    pub common_labels: LabelSet,
    #[serde(default, deserialize_with = "null_as_default")]
    pub common_annotations: LabelSet,
    #[serde(default, rename = "externalURL", deserialize_with = "null_as_default")]
    pub external_url: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub version: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub group_key: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub truncated_alerts: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: AlertStatus,
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: LabelSet,
    #[serde(default, deserialize_with = "null_as_default")]
    pub annotations: LabelSet,
    pub starts_at: Timestamp,
    /// Absent, or the zero time 0001-01-01T00:00:00Z, while the alert fires.
    #[serde(default, deserialize_with = "optional_time")]
    pub ends_at: Option<Timestamp>,
    #[serde(default, rename = "generatorURL", deserialize_with = "null_as_default")]
    pub generator_url: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub fingerprint: String,
}

/// A fingerprint longer than this (bytes) is replaced by a hash of it. Alertmanager's are 16
/// hex digits, other senders' hashes rarely more than 128 (SHA-512 in hex); those keep
/// their thread keys. The fingerprint goes into thread keys, the store's keys and the
/// template context, so its length must not be the sender's choice: a 40 kB one made a
/// thread key no message body could hold.
pub const MAX_FINGERPRINT_BYTES: usize = 256;
/// How much of an over-long fingerprint is kept, readable, in front of its hash.
const HASHED_FINGERPRINT_PREFIX_BYTES: usize = 16;

/// A fingerprint of at most [`MAX_FINGERPRINT_BYTES`]: one within the bound as it is (so
/// the thread keys of ordinary alerts never change), a longer one as its first bytes and
/// two 64-bit hashes of the whole, so it stays deterministic and distinct.
pub fn bounded_fingerprint(raw: &str) -> Cow<'_, str> {
    if raw.len() <= MAX_FINGERPRINT_BYTES {
        return Cow::Borrowed(raw);
    }
    let mut forward = Fnv64::new();
    forward.write(raw.as_bytes());
    // A second, differently fed hash: two long fingerprints that collide in one are
    // unlikely to collide in both.
    let mut backward = Fnv64::new();
    backward.write(&(raw.len() as u64).to_le_bytes());
    for byte in raw.bytes().rev() {
        backward.write(&[byte]);
    }
    let prefix = prefix_at_char_boundary(raw, HASHED_FINGERPRINT_PREFIX_BYTES);
    Cow::Owned(format!(
        "{prefix}~{:016x}{:016x}",
        forward.finish(),
        backward.finish()
    ))
}

/// The longest prefix of `text` of at most `max_bytes` that ends on a character boundary.
fn prefix_at_char_boundary(text: &str, max_bytes: usize) -> &str {
    let mut end = max_bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl Alert {
    /// Alertmanager's fingerprint, or the same hash computed from the labels when a
    /// sender left it out; bounded in length (see [`bounded_fingerprint`]).
    pub fn fingerprint(&self) -> String {
        if self.fingerprint.is_empty() {
            format!("{:016x}", label_fingerprint(&self.labels))
        } else {
            bounded_fingerprint(&self.fingerprint).into_owned()
        }
    }

    pub fn name(&self) -> &str {
        self.labels
            .get("alertname")
            .map(String::as_str)
            .unwrap_or("")
    }

    pub fn severity(&self) -> &str {
        self.labels
            .get("severity")
            .map(String::as_str)
            .unwrap_or("")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The body is a JSON array: alerts posted straight from Prometheus, not a webhook.
    #[error("the body is a JSON array of alerts, not an Alertmanager webhook notification")]
    BareAlertArray,
    #[error("invalid JSON: {0}")]
    Syntax(String),
    #[error("{message} at {path}")]
    Shape { path: String, message: String },
}

/// A payload error's reason (serde's message, which quotes the offending value verbatim)
/// is cut to about this many characters, keeping its start and end: enough to recognise
/// the value and to read what was expected, while a 3 MB string where a number belongs no
/// longer makes a 3 MB answer and a 3 MB log line.
pub const MAX_ERROR_REASON_CHARS: usize = 240;
/// A key in an error's field path (a label name, say) is cut to about this many characters.
const MAX_PATH_KEY_CHARS: usize = 48;
/// The whole field path is cut to about this many characters. The payload's shape bounds
/// its depth (`alerts[i].labels.key`), so this only guards against the unforeseen.
const MAX_PATH_CHARS: usize = 160;

impl Notification {
    /// Parses a webhook body, naming the offending field on error. Error messages are
    /// bounded in length whatever the body holds.
    pub fn parse(body: &[u8]) -> Result<Notification, PayloadError> {
        let syntax = |e: serde_json::Error| {
            PayloadError::Syntax(elide_middle(&e.to_string(), MAX_ERROR_REASON_CHARS).into_owned())
        };
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            // Only a well-formed array is Prometheus's alert list; anything else starting
            // with `[` (100k of them, say) is plain bad JSON and gets the parser's reason.
            return Err(
                match serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(body) {
                    Ok(_) => PayloadError::BareAlertArray,
                    Err(e) => syntax(e),
                },
            );
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed: Result<Notification, _> = serde_path_to_error::deserialize(&mut de);
        let notification = parsed.map_err(|e| {
            let path = bounded_path(e.path());
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() || inner.is_io() {
                syntax(inner)
            } else {
                let reason = strip_position(&inner.to_string());
                PayloadError::Shape {
                    path,
                    message: elide_middle(&reason, MAX_ERROR_REASON_CHARS).into_owned(),
                }
            }
        })?;
        de.end().map_err(syntax)?;
        Ok(notification)
    }
}

/// The field path of a payload error as serde_path_to_error writes it
/// (`alerts[0].labels.team`), with long keys cut; "top level" for the root.
fn bounded_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&elide_middle(key, MAX_PATH_KEY_CHARS));
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    if out.is_empty() {
        return "top level".to_owned();
    }
    elide_middle(&out, MAX_PATH_CHARS).into_owned()
}

/// `text` if it has at most `max_chars` characters; otherwise its first two thirds and
/// last third of `max_chars`, joined by a note of how much was left out. For quoting
/// sender-controlled text in errors and logs.
pub fn elide_middle(text: &str, max_chars: usize) -> Cow<'_, str> {
    let total = text.chars().count();
    if total <= max_chars {
        return Cow::Borrowed(text);
    }
    let head = max_chars * 2 / 3;
    let tail = max_chars - head;
    let byte_at = |chars: usize| {
        text.char_indices()
            .nth(chars)
            .map_or(text.len(), |(i, _)| i)
    };
    let head_end = byte_at(head);
    let tail_start = byte_at(total - tail);
    Cow::Owned(format!(
        "{}…({} characters left out)…{}",
        &text[..head_end],
        total - head - tail,
        &text[tail_start..]
    ))
}

/// serde_json appends " at line 1 column 42" to data errors; the path says it better.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(pos) => message[..pos].to_owned(),
        None => message.to_owned(),
    }
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// 0001-01-01T00:00:00Z, Go's zero `time.Time`, in Unix seconds.
const GO_ZERO_TIME_SECONDS: i64 = -62_135_596_800;

fn optional_time<'de, D>(deserializer: D) -> Result<Option<Timestamp>, D::Error>
where
    D: Deserializer<'de>,
{
    let value = Option::<Timestamp>::deserialize(deserializer)?;
    // Go's zero time means "no end known": the alert still fires.
    Ok(value.filter(|t| t.as_second() > GO_ZERO_TIME_SECONDS))
}

/// FNV-1a 64 over the sorted label pairs, separated by 0xff: the same hash Prometheus and
/// Alertmanager use for a label set's fingerprint.
pub fn label_fingerprint(labels: &LabelSet) -> u64 {
    let mut hash = Fnv64::new();
    for (name, value) in labels {
        hash.write(name.as_bytes());
        hash.write(&[0xff]);
        hash.write(value.as_bytes());
        hash.write(&[0xff]);
    }
    hash.finish()
}

/// FNV-1a, 64 bits: small, stable across builds and platforms.
#[derive(Clone, Copy)]
pub struct Fnv64(u64);

impl Fnv64 {
    pub fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

impl Default for Fnv64 {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/alertmanager/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn parses_real_alertmanager_payloads() {
        let n = Notification::parse(&fixture("firing.json")).expect("firing parses");
        assert_eq!(n.receiver, "gchat");
        assert_eq!(n.status, AlertStatus::Firing);
        assert_eq!(n.alerts.len(), 1);
        let alert = &n.alerts[0];
        assert_eq!(alert.name(), "DiskFull");
        assert_eq!(alert.severity(), "critical");
        assert_eq!(alert.ends_at, None, "the zero time reads as no end");
        assert_eq!(alert.fingerprint(), "efb0c6c488e007da");

        let n = Notification::parse(&fixture("resolved.json")).expect("resolved parses");
        assert_eq!(n.alerts[0].status, AlertStatus::Resolved);
        assert_eq!(
            n.alerts[0].ends_at,
            Some("2026-11-28T00:52:41Z".parse().expect("time"))
        );
        let n = Notification::parse(&fixture("grouped-firing.json")).expect("group parses");
        assert_eq!(n.alerts.len(), 2);
    }

    #[test]
    fn fingerprint_matches_alertmanager_when_missing() {
        let n = Notification::parse(&fixture("firing.json")).expect("parses");
        let mut alert = n.alerts[0].clone();
        alert.fingerprint.clear();
        assert_eq!(alert.fingerprint(), "efb0c6c488e007da");
    }

    #[test]
    fn lenient_about_unknown_keys_nulls_and_precision() {
        let body = br#"{"receiver":"r","status":"firing","notification_reason":"x","routeLabels":{},
            "alerts":[{"status":"firing","labels":{"alertname":"A"},"annotations":null,
            "startsAt":"2026-11-28T00:52:38.123456789+01:00","endsAt":null,"generatorURL":null,"new":1}],
            "groupLabels":null,"externalURL":null}"#;
        let n = Notification::parse(body).expect("lenient parse");
        assert!(n.alerts[0].annotations.is_empty());
        assert_eq!(n.alerts[0].starts_at.subsec_nanosecond(), 123_456_789);
        assert_eq!(n.external_url, "");
    }

    #[test]
    fn errors_name_the_field() {
        let err = Notification::parse(br#"{"receiver":"r","status":"firing","alerts":[{"status":"firing","labels":{},"startsAt":"yesterday"}]}"#)
            .expect_err("bad time");
        match err {
            PayloadError::Shape { path, .. } => assert_eq!(path, "alerts[0].startsAt"),
            other => panic!("expected a shape error, got {other:?}"),
        }
        let err = Notification::parse(br#"{"receiver":"r","status":"burning","alerts":[]}"#)
            .expect_err("bad status");
        assert!(
            matches!(err, PayloadError::Shape { ref path, .. } if path == "status"),
            "{err}"
        );
        let err = Notification::parse(br#"{"status":"firing","alerts":[]}"#)
            .expect_err("missing receiver");
        assert!(err.to_string().contains("receiver"), "{err}");
        assert!(matches!(
            Notification::parse(b" [{}]"),
            Err(PayloadError::BareAlertArray)
        ));
        assert!(matches!(
            Notification::parse(b"{\"receiver\":"),
            Err(PayloadError::Syntax(_))
        ));
        assert!(matches!(
            Notification::parse(br#"{"receiver":"r","status":"firing","alerts":[]} {}"#),
            Err(PayloadError::Syntax(_))
        ));
    }

    #[test]
    fn only_a_well_formed_array_reads_as_prometheus_alerts() {
        let deep = "[".repeat(100_000);
        let err = Notification::parse(deep.as_bytes()).expect_err("not JSON");
        assert!(
            matches!(&err, PayloadError::Syntax(m) if m.contains("EOF while parsing a list")),
            "{err}"
        );
        assert!(matches!(
            Notification::parse(b"[{\"labels\": {}}, 1"),
            Err(PayloadError::Syntax(_))
        ));
    }

    fn shape_error(body: &str) -> String {
        Notification::parse(body.as_bytes())
            .expect_err("a wrong shape")
            .to_string()
    }

    #[test]
    fn errors_quote_a_huge_value_only_in_part() {
        let huge = "9".repeat(3_000_000);
        let message = shape_error(&format!(
            r#"{{"receiver":"r","status":"firing","alerts":[],"truncatedAlerts":"{huge}"}}"#
        ));
        assert!(message.len() < 400, "{} bytes", message.len());
        assert!(
            message.starts_with("invalid type: string \"999")
                && message.contains("characters left out")
                && message.ends_with("999\", expected u64 at truncatedAlerts"),
            "{message}"
        );
        let message = shape_error(&format!(
            r#"{{"receiver":"r","status":"{huge}","alerts":[]}}"#
        ));
        assert!(message.len() < 400, "{} bytes", message.len());
        assert!(
            message.contains("unknown variant") && message.contains("at status"),
            "{message}"
        );
    }

    #[test]
    fn error_paths_cut_long_keys() {
        let name = "n".repeat(3_000_000);
        let message = shape_error(&format!(
            r#"{{"receiver":"r","status":"firing","alerts":[{{"status":"firing","startsAt":"2026-11-28T00:52:38Z","labels":{{"{name}":1}}}}]}}"#
        ));
        assert!(message.len() < 400, "{} bytes", message.len());
        assert!(
            message.starts_with(
                "invalid type: integer `1`, expected a string at alerts[0].labels.nnn"
            ),
            "{message}"
        );
        match Notification::parse(br#"{"receiver":"r","status":"firing","alerts":{}}"#) {
            Err(PayloadError::Shape { path, .. }) => assert_eq!(path, "alerts"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn elide_middle_keeps_both_ends_on_character_boundaries() {
        assert_eq!(elide_middle("short", 10), "short");
        let long = "é".repeat(100);
        let cut = elide_middle(&long, 12);
        assert_eq!(
            cut,
            format!(
                "{}…(88 characters left out)…{}",
                "é".repeat(8),
                "é".repeat(4)
            )
        );
    }

    #[test]
    fn long_fingerprints_are_hashed_and_ordinary_ones_kept() {
        let n = Notification::parse(&fixture("firing.json")).expect("parses");
        let mut alert = n.alerts[0].clone();
        let ordinary = "x".repeat(MAX_FINGERPRINT_BYTES);
        alert.fingerprint = ordinary.clone();
        assert_eq!(alert.fingerprint(), ordinary);
        alert.fingerprint = "🔥".repeat(20_000);
        let hashed = alert.fingerprint();
        assert!(hashed.len() <= MAX_FINGERPRINT_BYTES, "{hashed}");
        assert!(hashed.starts_with("🔥🔥🔥🔥~"), "{hashed}");
        assert_eq!(alert.fingerprint(), hashed, "deterministic");
        alert.fingerprint.push('!');
        assert_ne!(alert.fingerprint(), hashed, "distinct");
        // A key built from a long fingerprint by hand is bounded the same way.
        let key = crate::plan::EpisodeKey {
            space: "ops".into(),
            fingerprint: "f".repeat(100_000),
            starts_at_ns: 0,
        };
        assert!(key.thread_key().len() < 120, "{}", key.thread_key());
        let ordinary = crate::plan::EpisodeKey::new("ops", &n.alerts[0]);
        assert_eq!(
            ordinary.thread_key(),
            "kabar:ops:efb0c6c488e007da:2026-11-28T00:52:38Z",
            "threads of ordinary alerts survive the upgrade"
        );
    }
}
