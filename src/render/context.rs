//! The data a template sees. README.md, "Template context", documents every field; keep
//! the two in step.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::RenderInput;
use super::escape::{alerts_link, safe_link, silence_link};
use crate::config::Mention;
use crate::payload::{Alert, AlertStatus, Notification};
use crate::state::{AlertSet, MessageKind, Subject};

/// Group and digest messages list at most this many alerts of each kind; the rest are
/// counted in `omitted` and shown as "+N more".
pub const LIST_LIMIT: usize = 20;

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

/// One alert as templates see it.
fn alert_view(alert: &Alert, notification: &Notification) -> Value {
    let annotation = |key: &str| alert.annotations.get(key).filter(|v| !v.trim().is_empty());
    let mut other_labels = BTreeMap::new();
    let mut key_labels = BTreeMap::new();
    let mut extra_labels = BTreeMap::new();
    for (name, value) in &alert.labels {
        if name == "alertname" || name == "severity" {
            continue;
        }
        other_labels.insert(name, value);
        if KEY_LABELS.contains(&name.as_str()) {
            key_labels.insert(name, value);
        } else {
            extra_labels.insert(name, value);
        }
    }
    json!({
        "status": alert.status.as_str(),
        "labels": alert.labels,
        "annotations": alert.annotations,
        "startsAt": rfc3339(alert.starts_at),
        "endsAt": alert.ends_at.filter(|_| alert.status == AlertStatus::Resolved).map(rfc3339),
        "generatorURL": alert.generator_url,
        "fingerprint": alert.fingerprint(),
        "name": alert.name(),
        "severity": alert.severity(),
        "summary": annotation("summary").or_else(|| annotation("message")),
        "description": annotation("description"),
        "otherLabels": other_labels,
        "keyLabels": key_labels,
        "extraLabels": extra_labels,
        "links": {
            "source": safe_link(&alert.generator_url),
            "silence": silence_link(&notification.external_url, &alert.labels),
            "runbook": annotation("runbook_url").and_then(|u| safe_link(u)),
            "dashboard": annotation("dashboard_url")
                .or_else(|| annotation("grafana_url"))
                .and_then(|u| safe_link(u)),
        },
    })
}

fn listed(indexes: &[usize], notification: &Notification) -> Value {
    Value::Array(
        indexes
            .iter()
            .take(LIST_LIMIT)
            .filter_map(|i| notification.alerts.get(*i))
            .map(|a| alert_view(a, notification))
            .collect(),
    )
}

fn omitted(indexes: &[usize]) -> usize {
    indexes.len().saturating_sub(LIST_LIMIT)
}

fn alert_lists(set: &AlertSet, notification: &Notification) -> Value {
    let all: Vec<usize> = set.indexes().collect();
    json!({
        "alerts": listed(&all, notification),
        "firing": listed(&set.firing, notification),
        "resolved": listed(&set.resolved, notification),
        "stillFiring": listed(&set.still_firing, notification),
        "counts": {
            "total": set.len(),
            "firing": set.firing.len(),
            "resolved": set.resolved.len(),
            "stillFiring": set.still_firing.len(),
        },
        "omitted": {
            "total": omitted(&all),
            "firing": omitted(&set.firing),
            "resolved": omitted(&set.resolved),
            "stillFiring": omitted(&set.still_firing),
        },
    })
}

/// The template context of one message.
pub(super) fn message_context(input: &RenderInput<'_>) -> Value {
    let n = input.notification;
    let mut context = json!({
        "kind": input.kind.as_str(),
        "space": input.space.name,
        "now": rfc3339(input.now),
        "group": {
            "receiver": n.receiver,
            "status": n.status.as_str(),
            "groupKey": n.group_key,
            "groupLabels": n.group_labels,
            "commonLabels": n.common_labels,
            "commonAnnotations": n.common_annotations,
            "externalURL": n.external_url,
            "truncatedAlerts": n.truncated_alerts,
            "links": {"alertmanager": alerts_link(&n.external_url, &n.receiver)},
        },
        "mentions": mentions(input).iter().map(|m| m.as_str()).collect::<Vec<_>>(),
    });
    match input.subject {
        Subject::Alert(i) => {
            if let Some(alert) = n.alerts.get(*i) {
                context["alert"] = alert_view(alert, n);
            }
        }
        Subject::Alerts(set) => {
            if let (Value::Object(context), Value::Object(lists)) =
                (&mut context, alert_lists(set, n))
            {
                context.extend(lists);
            }
        }
    }
    context
}
