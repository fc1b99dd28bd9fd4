//! The data a template sees, capped before any template runs (README.md, "Template context",
//! documents every field; keep the two in step). It must not escape or render.

use std::borrow::Cow;
use std::collections::BTreeMap;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::RenderInput;
use super::escape::{alerts_link, safe_link, silence_link};
use crate::config::Mention;
use crate::payload::{Alert, AlertStatus, LabelSet, Notification};
use crate::plan::{AlertSet, MessageKind, Subject};

/// Group and digest messages list at most this many alerts of each kind; the rest are
/// counted in `omitted` and shown as "+N more".
pub const LIST_LIMIT: usize = 20;

// Bounds on what the context holds, whatever the payload carries. A 4 MiB body can hold
// one alert with 400k tiny labels, or one 4 MiB value; copied into the context, rendered
// into a card and parsed back, that took 1.5 GiB and many seconds. Nothing beyond these
// bounds could be shown anyway: Chat shows 4,096 characters of text and 100 widgets of a
// card, in 32,000 bytes.

/// An alert's `labels` and `annotations`, and the group's `groupLabels`, `commonLabels`
/// and `commonAnnotations`, hold at most this many entries: the well-known ones (alertname,
/// severity, the key labels; summary, description, links) first, then the rest in name
/// order. Real alerts carry a few dozen at most.
pub const MAX_CONTEXT_LABELS: usize = 100;
/// `otherLabels` (and `keyLabels` with `extraLabels`) list at most this many labels, all key
/// labels among them; `moreLabels` counts the rest, which the built-in templates show as
/// "+N more". Thirty rows is already a long card section and a long line of text.
pub const MAX_LABELS_SHOWN: usize = 30;
/// A label name is cut to this many characters (Prometheus names are identifiers,
/// rarely longer than 40).
pub const MAX_LABEL_NAME_CHARS: usize = 128;
/// A label value, the receiver and the group key are cut to this many characters.
pub const MAX_LABEL_VALUE_CHARS: usize = 1_024;
/// An annotation value is cut to this many characters: a text message shows no more.
pub const MAX_ANNOTATION_CHARS: usize = 4_096;
/// `generatorURL` and `externalURL` longer than this are left out, not cut (a cut URL
/// leads somewhere else); the same bound as links kabar makes.
pub const MAX_URL_CHARS: usize = 2_048;
/// What a cut value ends with.
const CUT_MARKER: char = '…';

/// Labels that identify where an alert fires, shown first (cards show the rest folded).
const KEY_LABELS: &[&str] = &[
    "instance",
    "job",
    "namespace",
    "pod",
    "service",
    "cluster",
    "node",
    "container",
    "deployment",
    "host",
];

fn rfc3339(t: Timestamp) -> String {
    t.to_string()
}

/// The alerts of a subject: one, or the listed ones of a group or digest.
pub(super) fn subject_alerts<'a>(
    subject: &Subject,
    notification: &'a Notification,
) -> Vec<&'a Alert> {
    subject
        .indexes()
        .into_iter()
        .filter_map(|i| notification.alerts.get(i))
        .collect()
}

/// Who a message mentions: the configured targets of the severities of the alerts that
/// start firing with it. Never taken from alert data.
pub(super) fn mentions<'a>(input: &RenderInput<'a>) -> Vec<&'a Mention> {
    let firing: Vec<&Alert> = match (input.kind, input.subject) {
        (MessageKind::Firing | MessageKind::FiringAgain, Subject::Alert(i)) => {
            input.notification.alerts.get(*i).into_iter().collect()
        }
        (MessageKind::Group | MessageKind::Digest, Subject::Alerts(set)) => set
            .firing
            .iter()
            .filter_map(|i| input.notification.alerts.get(*i))
            .collect(),
        _ => Vec::new(),
    };
    let mut out: Vec<&Mention> = Vec::new();
    for alert in firing {
        for mention in input
            .space
            .options
            .mentions
            .get(alert.severity())
            .into_iter()
            .flatten()
        {
            if !out.contains(&mention) {
                out.push(mention);
            }
        }
    }
    out
}

/// Records whether anything was cut on its way into the context.
#[derive(Default)]
struct Cuts(bool);

impl Cuts {
    /// `value` cut to `max_chars` characters (the last one the cut marker).
    fn text<'a>(&mut self, value: &'a str, max_chars: usize) -> Cow<'a, str> {
        // Bytes bound characters from above: most values need no count.
        if value.len() <= max_chars || value.chars().count() <= max_chars {
            return Cow::Borrowed(value);
        }
        self.0 = true;
        let mut cut: String = value.chars().take(max_chars.saturating_sub(1)).collect();
        cut.push(CUT_MARKER);
        Cow::Owned(cut)
    }

    /// A URL whole, or empty if it is longer than [`MAX_URL_CHARS`].
    fn url<'a>(&mut self, url: &'a str) -> &'a str {
        if url.len() > MAX_URL_CHARS {
            self.0 = true;
            return "";
        }
        url
    }

    /// A label or annotation set as the context holds it: at most [`MAX_CONTEXT_LABELS`]
    /// entries, the names in `first` before the rest, names and values cut. Only the kept
    /// entries are visited, so a huge set costs no more than a small one.
    fn map(&mut self, set: &LabelSet, first: &[&str], max_value_chars: usize) -> Value {
        let mut kept: BTreeMap<Cow<'_, str>, Cow<'_, str>> = BTreeMap::new();
        let firsts = first.iter().filter_map(|name| set.get_key_value(*name));
        let rest = set
            .iter()
            .filter(|(name, _)| !first.contains(&name.as_str()));
        for (name, value) in firsts.chain(rest).take(MAX_CONTEXT_LABELS) {
            let name = self.text(name, MAX_LABEL_NAME_CHARS);
            let value = self.text(value, max_value_chars);
            kept.entry(name).or_insert(value);
        }
        if set.len() > kept.len() {
            self.0 = true;
        }
        json!(kept)
    }
}

/// Annotations templates look for, kept first when an alert has too many.
const KNOWN_ANNOTATIONS: &[&str] = &[
    "summary",
    "message",
    "description",
    "runbook_url",
    "dashboard_url",
    "grafana_url",
];

/// Labels kept first in a capped label set.
fn known_labels() -> impl Iterator<Item = &'static str> {
    ["alertname", "severity"]
        .into_iter()
        .chain(KEY_LABELS.iter().copied())
}

/// One alert as templates see it, bounded (see [`MAX_CONTEXT_LABELS`] and the others).
/// Links are made from the alert's own values, never from cut ones.
fn alert_view(alert: &Alert, notification: &Notification, cuts: &mut Cuts) -> Value {
    let annotation = |key: &str| alert.annotations.get(key).filter(|v| !v.trim().is_empty());
    let known: Vec<&str> = known_labels().collect();
    // The lists of labels to show leave out empty ones: to Prometheus a label with an
    // empty value is no label, and a card would drop its empty row anyway.
    let mut key_labels = BTreeMap::new();
    for name in KEY_LABELS {
        if let Some(value) = alert.labels.get(*name).filter(|v| !v.is_empty()) {
            key_labels.insert(*name, cuts.text(value, MAX_LABEL_VALUE_CHARS));
        }
    }
    let extras = || {
        alert
            .labels
            .iter()
            .filter(|(name, value)| !value.is_empty() && !known.contains(&name.as_str()))
    };
    let extra_room = MAX_LABELS_SHOWN.saturating_sub(key_labels.len());
    let mut extra_labels = BTreeMap::new();
    let mut extra_count = 0;
    for (name, value) in extras().take(extra_room) {
        extra_count += 1;
        let name = cuts.text(name, MAX_LABEL_NAME_CHARS);
        let value = cuts.text(value, MAX_LABEL_VALUE_CHARS);
        extra_labels.entry(name).or_insert(value);
    }
    let mut other_labels: BTreeMap<Cow<'_, str>, Cow<'_, str>> = extra_labels.clone();
    for (name, value) in &key_labels {
        other_labels.insert(Cow::Borrowed(*name), value.clone());
    }
    // Counting the rest is one pass over the names, without copying any.
    let more_labels = extras().skip(extra_count).count();
    if more_labels > 0 {
        cuts.0 = true;
    }
    let summary = annotation("summary").or_else(|| annotation("message"));
    let description = annotation("description");
    json!({
        "status": alert.status.as_str(),
        "labels": cuts.map(&alert.labels, &known, MAX_LABEL_VALUE_CHARS),
        "annotations": cuts.map(&alert.annotations, KNOWN_ANNOTATIONS, MAX_ANNOTATION_CHARS),
        "startsAt": rfc3339(alert.starts_at),
        "endsAt": alert.ends_at.filter(|_| alert.status == AlertStatus::Resolved).map(rfc3339),
        "generatorURL": cuts.url(&alert.generator_url),
        "fingerprint": alert.fingerprint(),
        "name": cuts.text(alert.name(), MAX_LABEL_VALUE_CHARS),
        "severity": cuts.text(alert.severity(), MAX_LABEL_VALUE_CHARS),
        "summary": summary.map(|s| cuts.text(s, MAX_ANNOTATION_CHARS)),
        "description": description.map(|d| cuts.text(d, MAX_ANNOTATION_CHARS)),
        "otherLabels": other_labels,
        "keyLabels": key_labels,
        "extraLabels": extra_labels,
        "moreLabels": more_labels,
        "links": {
            "source": safe_link(&alert.generator_url),
            // A silence of more than MAX_CONTEXT_LABELS matchers is not one anyone means
            // (and its URL would mostly pass the link limit); building it was most of the
            // cost of rendering an alert of 100k labels.
            "silence": (alert.labels.len() <= MAX_CONTEXT_LABELS)
                .then(|| silence_link(&notification.external_url, &alert.labels))
                .flatten(),
            "runbook": annotation("runbook_url").and_then(|u| safe_link(u)),
            "dashboard": annotation("dashboard_url")
                .or_else(|| annotation("grafana_url"))
                .and_then(|u| safe_link(u)),
        },
    })
}

fn listed(indexes: &[usize], notification: &Notification, cuts: &mut Cuts) -> Value {
    Value::Array(
        indexes
            .iter()
            .take(LIST_LIMIT)
            .filter_map(|i| notification.alerts.get(*i))
            .map(|a| alert_view(a, notification, cuts))
            .collect(),
    )
}

fn omitted(indexes: &[usize]) -> usize {
    indexes.len().saturating_sub(LIST_LIMIT)
}

fn alert_lists(set: &AlertSet, notification: &Notification, cuts: &mut Cuts) -> Value {
    // Only the listed alerts are walked: `indexes` stops at the list limit.
    let all: Vec<usize> = set.indexes().take(LIST_LIMIT).collect();
    json!({
        "alerts": listed(&all, notification, cuts),
        "firing": listed(&set.firing, notification, cuts),
        "resolved": listed(&set.resolved, notification, cuts),
        "stillFiring": listed(&set.still_firing, notification, cuts),
        "counts": {
            "total": set.len(),
            "firing": set.firing.len(),
            "resolved": set.resolved.len(),
            "stillFiring": set.still_firing.len(),
        },
        "omitted": {
            "total": set.len().saturating_sub(LIST_LIMIT),
            "firing": omitted(&set.firing),
            "resolved": omitted(&set.resolved),
            "stillFiring": omitted(&set.still_firing),
        },
    })
}

/// The template context of one message, and whether values were cut or left out to
/// bound it.
pub(super) fn message_context(input: &RenderInput<'_>) -> (Value, bool) {
    let n = input.notification;
    let mut cuts = Cuts::default();
    let known: Vec<&str> = known_labels().collect();
    let mut context = json!({
        "kind": input.kind.as_str(),
        "space": input.space.name,
        "now": rfc3339(input.now),
        "group": {
            "receiver": cuts.text(&n.receiver, MAX_LABEL_VALUE_CHARS),
            "status": n.status.as_str(),
            "groupKey": cuts.text(&n.group_key, MAX_LABEL_VALUE_CHARS),
            "groupLabels": cuts.map(&n.group_labels, &known, MAX_LABEL_VALUE_CHARS),
            "commonLabels": cuts.map(&n.common_labels, &known, MAX_LABEL_VALUE_CHARS),
            "commonAnnotations": cuts.map(&n.common_annotations, KNOWN_ANNOTATIONS, MAX_ANNOTATION_CHARS),
            "externalURL": cuts.url(&n.external_url),
            "truncatedAlerts": n.truncated_alerts,
            "links": {"alertmanager": alerts_link(&n.external_url, &n.receiver)},
        },
        "mentions": mentions(input).iter().map(|m| m.as_str()).collect::<Vec<_>>(),
    });
    match input.subject {
        Subject::Alert(i) => {
            if let Some(alert) = n.alerts.get(*i) {
                context["alert"] = alert_view(alert, n, &mut cuts);
            }
        }
        Subject::Alerts(set) => {
            if let (Value::Object(context), Value::Object(lists)) =
                (&mut context, alert_lists(set, n, &mut cuts))
            {
                context.extend(lists);
            }
        }
    }
    (context, cuts.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn fixture() -> Notification {
        let path = format!(
            "{}/tests/fixtures/alertmanager/firing.json",
            env!("CARGO_MANIFEST_DIR")
        );
        Notification::parse(&std::fs::read(&path).expect("fixture")).expect("parses")
    }

    fn context_of(n: &Notification, kind: MessageKind, subject: &Subject) -> (Value, bool) {
        let config = Config::parse(
            "spaces:\n  ops:\n    dry_run: true\n",
            Path::new("."),
            &|_| None,
        )
        .expect("config");
        message_context(&RenderInput {
            space: &config.spaces["ops"],
            kind,
            subject,
            notification: n,
            thread_key: None,
            now: "2026-11-28T01:00:00Z".parse().expect("now"),
        })
    }

    /// The longest string and the largest object anywhere in `value`.
    fn extremes(value: &Value) -> (usize, usize) {
        match value {
            Value::String(s) => (s.chars().count(), 0),
            Value::Array(items) => items.iter().map(extremes).fold((0, items.len()), max2),
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| max2(extremes(v), (k.chars().count(), 0)))
                .fold((0, map.len()), max2),
            _ => (0, 0),
        }
    }

    fn max2(a: (usize, usize), b: (usize, usize)) -> (usize, usize) {
        (a.0.max(b.0), a.1.max(b.1))
    }

    /// Every shape a 4 MiB payload can take at once: huge values, names and URLs, and
    /// huge label and annotation sets, on the alert and on the group.
    fn extreme_notification(alerts: usize) -> Notification {
        let mut n = fixture();
        n.external_url = format!("http://am.example/{}", "u".repeat(1_000_000));
        n.group_key = "k".repeat(1_000_000);
        n.receiver = "r".repeat(1_000_000);
        for i in 0..20_000 {
            n.group_labels.insert(format!("g{i}"), "y".into());
            n.common_labels.insert(format!("c{i}"), "z".into());
            n.common_annotations.insert(format!("a{i}"), "w".into());
        }
        n.common_labels.insert("v".into(), "V".repeat(1_000_000));
        n.common_annotations
            .insert("description".into(), "D".repeat(1_000_000));
        let alert = &mut n.alerts[0];
        alert.generator_url = format!("http://prom.example/{}", "g".repeat(1_000_000));
        alert.fingerprint = "f".repeat(1_000_000);
        alert
            .labels
            .insert("severity".into(), "S".repeat(1_000_000));
        alert
            .labels
            .insert("instance".into(), "I".repeat(1_000_000));
        alert
            .labels
            .insert("n".repeat(1_000_000), "long name".into());
        for i in 0..20_000 {
            alert.labels.insert(format!("l{i:05}"), "v".into());
            alert.annotations.insert(format!("a{i:05}"), "x".into());
        }
        alert
            .annotations
            .insert("summary".into(), "s".repeat(1_000_000));
        let one = n.alerts[0].clone();
        n.alerts = vec![one; alerts];
        n
    }

    #[test]
    fn no_payload_shape_puts_more_than_the_bounds_into_the_context() {
        let n = extreme_notification(30);
        let group = Subject::Alerts(AlertSet {
            firing: (0..10).collect(),
            resolved: (10..20).collect(),
            still_firing: (20..30).collect(),
        });
        for (kind, subject) in [
            (MessageKind::Firing, Subject::Alert(0)),
            (MessageKind::Group, group),
        ] {
            let (context, capped) = context_of(&n, kind, &subject);
            assert!(capped, "{kind:?}: cutting is reported");
            let (longest, largest) = extremes(&context);
            assert!(
                longest <= MAX_ANNOTATION_CHARS.max(MAX_URL_CHARS),
                "{kind:?}: a string of {longest} characters"
            );
            assert!(
                largest <= MAX_CONTEXT_LABELS,
                "{kind:?}: an object or list of {largest} entries"
            );
            let size = context.to_string().len();
            assert!(size < 4_000_000, "{kind:?}: a context of {size} bytes");
        }
        let (context, _) = context_of(&n, MessageKind::Firing, &Subject::Alert(0));
        let alert = &context["alert"];
        assert_eq!(alert["generatorURL"], "", "too long to link, left out");
        assert_eq!(context["group"]["externalURL"], "");
        assert!(
            alert["fingerprint"].as_str().expect("fingerprint").len()
                <= crate::payload::MAX_FINGERPRINT_BYTES
        );
        assert_eq!(
            alert["otherLabels"].as_object().map(|m| m.len()),
            Some(MAX_LABELS_SHOWN)
        );
        assert_eq!(alert["moreLabels"], 20_002 - MAX_LABELS_SHOWN);
        assert_eq!(
            alert["name"], "DiskFull",
            "the names templates look for are kept first"
        );
        assert!(
            alert["labels"]["instance"]
                .as_str()
                .expect("kept")
                .ends_with('…')
        );
        assert!(alert["annotations"]["summary"].is_string());
        assert_eq!(
            alert["summary"].as_str().map(|s| s.chars().count()),
            Some(MAX_ANNOTATION_CHARS)
        );
    }

    #[test]
    fn ordinary_alerts_reach_the_context_whole() {
        let n = fixture();
        let (context, capped) = context_of(&n, MessageKind::Firing, &Subject::Alert(0));
        assert!(!capped);
        let alert = &context["alert"];
        assert_eq!(alert["labels"], json!(n.alerts[0].labels));
        assert_eq!(alert["annotations"], json!(n.alerts[0].annotations));
        assert_eq!(alert["otherLabels"], json!({"instance": "db1:9100"}));
        assert_eq!(alert["moreLabels"], 0);
        assert_eq!(alert["fingerprint"], "efb0c6c488e007da");
        assert_eq!(context["group"]["groupLabels"], json!(n.group_labels));
        assert_eq!(context["group"]["externalURL"], "http://vm:19093");
        assert!(alert["links"]["silence"].is_string());
    }

    #[test]
    fn an_alert_of_more_labels_than_the_bound_gets_no_silence_link() {
        let mut n = fixture();
        for i in 0..MAX_CONTEXT_LABELS {
            n.alerts[0].labels.insert(format!("l{i}"), "v".into());
        }
        let (context, _) = context_of(&n, MessageKind::Firing, &Subject::Alert(0));
        assert!(context["alert"]["links"]["silence"].is_null());
    }

    #[test]
    fn empty_labels_are_not_listed_to_show() {
        let mut n = fixture();
        n.alerts[0].labels.insert("team".into(), String::new());
        n.alerts[0].labels.insert("job".into(), String::new());
        let (context, _) = context_of(&n, MessageKind::Firing, &Subject::Alert(0));
        let alert = &context["alert"];
        assert_eq!(alert["otherLabels"], json!({"instance": "db1:9100"}));
        assert_eq!(alert["keyLabels"], json!({"instance": "db1:9100"}));
        assert_eq!(alert["extraLabels"], json!({}));
        assert_eq!(alert["labels"]["team"], "", "still there by name");
    }
}
