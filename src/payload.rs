//! Alertmanager's webhook payload (version 4), read leniently: unknown keys are ignored,
//! `null` maps and strings read as empty, timestamps take any RFC 3339 precision.

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

impl Alert {
    /// Alertmanager's fingerprint, or the same hash computed from the labels when a
    /// sender left it out.
    pub fn fingerprint(&self) -> String {
        if self.fingerprint.is_empty() {
            format!("{:016x}", label_fingerprint(&self.labels))
        } else {
            self.fingerprint.clone()
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

impl Notification {
    /// Parses a webhook body, naming the offending field on error.
    pub fn parse(body: &[u8]) -> Result<Notification, PayloadError> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            // Only a well-formed array is Prometheus's alert list; anything else starting
            // with `[` (100k of them, say) is plain bad JSON and gets the parser's reason.
            return Err(
                match serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(body) {
                    Ok(_) => PayloadError::BareAlertArray,
                    Err(e) => PayloadError::Syntax(e.to_string()),
                },
            );
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed: Result<Notification, _> = serde_path_to_error::deserialize(&mut de);
        let notification = parsed.map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() || inner.is_io() {
                PayloadError::Syntax(inner.to_string())
            } else {
                PayloadError::Shape {
                    path: if path == "." {
                        "top level".to_owned()
                    } else {
                        path
                    },
                    message: strip_position(&inner.to_string()),
                }
            }
        })?;
        de.end().map_err(|e| PayloadError::Syntax(e.to_string()))?;
        Ok(notification)
    }
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
}
