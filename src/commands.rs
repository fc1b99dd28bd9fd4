//! `kabar check` and `kabar render`: the config and templates, tried without serving.

use std::fmt::Write as _;
use std::path::Path;

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::chat::REPLY_OPTION;
use crate::config::Target;
use crate::ingest::prepare;
use crate::payload::{Notification, PayloadError};
use crate::render::{RenderFailure, RenderInput};
use crate::routing::{RoutingError, route};
use crate::runtime::{LoadError, Runtime};
use crate::state::{MemoryEpisodes, MessageKind};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot read payload {path}: {source}")]
    ReadPayload {
        path: String,
        source: std::io::Error,
    },
    #[error("payload: {0}")]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Routing(#[from] RoutingError),
    #[error("space {space}, sample {sample:?}, {kind} message: {failure}")]
    Template {
        space: String,
        sample: &'static str,
        kind: &'static str,
        failure: RenderFailure,
    },
}

/// Built-in sample notifications every template must render: realistic, edge-case and
/// hostile content.
fn samples() -> Vec<(&'static str, Notification)> {
    let long = "x".repeat(20_000);
    let raw = [
        (
            "typical",
            json!({"receiver": "sample", "status": "firing", "externalURL": "http://alertmanager.example:9093",
                "groupKey": "{}:{alertname=\"DiskFull\"}", "groupLabels": {"alertname": "DiskFull"},
                "alerts": [{"status": "firing", "labels": {"alertname": "DiskFull", "severity": "critical", "instance": "db1:9100", "job": "node"},
                    "annotations": {"summary": "Disk almost full on db1", "description": "/var is 97% full",
                        "runbook_url": "https://runbooks.example/disk", "dashboard_url": "https://grafana.example/d/node"},
                    "startsAt": "2026-11-28T00:52:38Z", "endsAt": "2026-11-28T01:19:38Z",
                    "generatorURL": "http://prometheus.example/graph?g0.expr=up", "fingerprint": "efb0c6c488e007da"}]}),
        ),
        (
            "missing labels",
            json!({"receiver": "sample", "status": "firing", "alerts": [{"status": "firing", "labels": {},
                "startsAt": "2026-11-28T00:52:38Z"}]}),
        ),
        (
            "huge and hostile values",
            json!({"receiver": "sample", "status": "firing", "externalURL": "http://am",
                "alerts": [{"status": "firing",
                    "labels": {"alertname": "<users/all> Ünïcødé 🔥 \u{202E}", "severity": "warning", "huge": long},
                    "annotations": {"summary": "<https://evil.example|bank> \"quotes\" \\ back\nslash", "description": long},
                    "startsAt": "2026-11-28T00:52:38.123456789+05:30", "generatorURL": "javascript:alert(1)"}]}),
        ),
    ];
    raw.into_iter()
        .filter_map(|(name, value)| {
            Notification::parse(value.to_string().as_bytes())
                .ok()
                .map(|n| (name, n))
        })
        .collect()
}

/// Validates the config and renders every space's template against the samples.
/// Returns a human summary.
pub fn check(config_path: &Path) -> Result<String, CommandError> {
    let runtime = Runtime::load(config_path)?;
    let now: Timestamp = "2026-11-28T01:00:00Z"
        .parse()
        .unwrap_or_else(|_| Timestamp::now());
    for space in runtime.config.spaces.values() {
        for (sample, notification) in samples() {
            for alert in &notification.alerts {
                for kind in MessageKind::ALL {
                    runtime
                        .renderer
                        .render_strict(&RenderInput {
                            space,
                            kind,
                            alert,
                            notification: &notification,
                            thread_key: Some("kabar:check".to_owned()),
                            now,
                        })
                        .map_err(|failure| CommandError::Template {
                            space: space.name.clone(),
                            sample,
                            kind: kind.as_str(),
                            failure,
                        })?;
                }
            }
        }
    }
    let config = &runtime.config;
    let mut out = format!("{}: OK\n", config_path.display());
    let _ = writeln!(
        out,
        "  listen {}, state_dir {}",
        config.listen,
        config.state_dir.display()
    );
    let _ = writeln!(
        out,
        "  auth: {}",
        match config.auth {
            Some(crate::config::Auth::Bearer(_)) => "bearer token",
            Some(crate::config::Auth::Basic { .. }) => "basic",
            None => "NONE (warning: anyone who reaches kabar can post alerts)",
        }
    );
    for space in config.spaces.values() {
        let target = match &space.target {
            Target::DryRun => "dry run".to_owned(),
            t @ Target::Webhook(_) => t.describe(),
        };
        let template = runtime
            .renderer
            .template_of(&space.name)
            .unwrap_or("built-in");
        let _ = writeln!(
            out,
            "  space {}: {target}; receivers {}; template {template}",
            space.name,
            space.receivers.join(", ")
        );
    }
    Ok(out)
}

/// The Chat requests a payload would produce, as pretty JSON: for each, the space, kind,
/// thread key, the query kabar adds to the webhook URL, and the exact body.
pub fn render(
    config_path: &Path,
    payload_path: &Path,
    space: Option<&str>,
) -> Result<String, CommandError> {
    let runtime = Runtime::load(config_path)?;
    let bytes = std::fs::read(payload_path).map_err(|source| CommandError::ReadPayload {
        path: payload_path.display().to_string(),
        source,
    })?;
    let notification = Notification::parse(&bytes)?;
    let spaces = route(&runtime.config, &notification.receiver, space)?;
    let now = Timestamp::now();
    let mut episodes = MemoryEpisodes::default();
    let mut requests: Vec<Value> = Vec::new();
    for name in spaces {
        let Some(space) = runtime.config.spaces.get(&name) else {
            continue;
        };
        let outcome = prepare(
            &mut episodes,
            &runtime,
            space,
            &notification,
            now,
            |message| {
                let body: Value = serde_json::from_str(&message.body).unwrap_or(Value::Null);
                requests.push(json!({
                "space": message.space,
                "kind": message.kind.as_str(),
                "fingerprint": message.alert_fingerprint,
                "threadKey": message.thread_key,
                "query": message.thread_key.as_ref().map(|_| format!("messageReplyOption={REPLY_OPTION}")),
                "body": body,
            }));
                Ok(())
            },
        );
        match outcome {
            Ok(outcome) => {
                for failure in outcome.template_failures {
                    eprintln!("warning: space {name}: {failure} (the built-in template was used)");
                }
            }
            Err(never) => match never {},
        }
    }
    Ok(serde_json::to_string_pretty(&requests).unwrap_or_else(|_| "[]".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_all_parse() {
        assert_eq!(samples().len(), 3);
    }

    #[test]
    fn check_reports_the_template_and_line_of_a_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("t.hbs"),
            "line one\n{{truncate alert.name \"many\"}}\n",
        )
        .expect("write");
        let config = dir.path().join("kabar.yaml");
        std::fs::write(
            &config,
            "spaces:\n  ops:\n    dry_run: true\n    templates: {text: t.hbs}\n",
        )
        .expect("write");
        let err = check(&config).expect_err("bad format string").to_string();
        assert!(
            err.contains("space ops") && err.contains("t.hbs") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn render_prints_bodies_and_thread_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("kabar.yaml");
        std::fs::write(
            &config,
            "spaces:\n  ops:\n    dry_run: true\n    receivers: [gchat]\n",
        )
        .expect("write");
        let payload = format!(
            "{}/tests/fixtures/alertmanager/grouped-firing.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let out = render(&config, Path::new(&payload), None).expect("renders");
        let requests: Vec<Value> = serde_json::from_str(&out).expect("json");
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0]["kind"], "firing");
        assert_eq!(
            requests[0]["threadKey"],
            "kabar:ops:11808338eaafa553:2026-11-28T00:53:37Z"
        );
        assert_eq!(
            requests[0]["body"]["thread"]["threadKey"],
            requests[0]["threadKey"]
        );
        assert!(
            requests[1]["body"]["text"]
                .as_str()
                .expect("text")
                .contains("p99 high on web2")
        );
    }
}
