//! `kabar check` and `kabar render`: the config and templates tried without serving.
//! It must not open the store, bind a socket or send anything to Chat.

use std::fmt::Write as _;
use std::path::Path;

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::chat::REPLY_OPTION;
use crate::config::Target;
use crate::payload::{AlertStatus, Notification, PayloadError};
use crate::pipeline::preview;
use crate::plan::{AlertSet, MessageKind, Subject};
use crate::render::{RenderFailure, RenderInput};
use crate::routing::{RoutingError, route};
use crate::runtime::{LoadError, Runtime};
use crate::store::MemoryEpisodes;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot read payload {path}: {source}")]
    ReadPayload {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "payload {path} is larger than max_body_bytes ({limit} bytes): kabar would answer it 413"
    )]
    PayloadTooLarge { path: String, limit: usize },
    #[error(transparent)]
    StateDir(#[from] crate::state_dir::StateDirError),
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
/// hostile content, for every kind of message.
fn samples() -> Vec<(&'static str, Notification)> {
    let long = "x".repeat(20_000);
    let typical_alert = |name: &str, instance: &str, status: &str| {
        json!({"status": status,
            "labels": {"alertname": name, "severity": "critical", "instance": instance, "job": "node", "team": "storage"},
            "annotations": {"summary": format!("Disk almost full on {instance}"), "description": "/var is 97% full",
                "runbook_url": "https://runbooks.example/disk", "dashboard_url": "https://grafana.example/d/node"},
            "startsAt": "2026-11-28T00:32:38Z",
            "endsAt": if status == "resolved" { "2026-11-28T00:59:38Z" } else { "0001-01-01T00:00:00Z" },
            "generatorURL": "http://prometheus.example/graph?g0.expr=up"})
    };
    let group = |status: &str, alerts: Vec<Value>, truncated: usize| {
        json!({"version": "4", "receiver": "sample", "status": status, "externalURL": "http://alertmanager.example:9093",
            "groupKey": "{}:{alertname=\"DiskFull\"}", "groupLabels": {"alertname": "DiskFull"},
            "commonLabels": {"alertname": "DiskFull"}, "truncatedAlerts": truncated, "alerts": alerts})
    };
    let raw = [
        (
            "firing",
            group(
                "firing",
                vec![typical_alert("DiskFull", "db1:9100", "firing")],
                0,
            ),
        ),
        (
            "resolved",
            group(
                "resolved",
                vec![typical_alert("DiskFull", "db1:9100", "resolved")],
                0,
            ),
        ),
        (
            "group",
            group(
                "firing",
                vec![
                    typical_alert("DiskFull", "db1:9100", "firing"),
                    typical_alert("DiskFull", "db2:9100", "firing"),
                    typical_alert("DiskFull", "db3:9100", "resolved"),
                ],
                2,
            ),
        ),
        (
            "digest",
            group(
                "firing",
                (0..30)
                    .map(|i| typical_alert("DiskFull", &format!("db{i}:9100"), "firing"))
                    .collect(),
                0,
            ),
        ),
        (
            "missing labels",
            json!({"receiver": "sample", "status": "firing", "alerts": [{"status": "firing", "labels": {},
                "startsAt": "2026-11-28T00:52:38Z"}]}),
        ),
        (
            "unicode",
            json!({"receiver": "sample", "status": "firing", "externalURL": "http://am",
                "groupLabels": {"ालर्ट": "ディスク"},
                "alerts": [{"status": "firing",
                    "labels": {"alertname": "ディスク満杯 🔥", "severity": "warning", "city": "Zürich", "rtl": "שלום \u{200F}עולם"},
                    "annotations": {"summary": "👩‍💻 Ünïcødé ✓ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "description": "مرحبا\u{202E}txet"},
                    "startsAt": "2026-11-28T00:52:38Z"}]}),
        ),
        (
            "huge and hostile values",
            json!({"receiver": "sample", "status": "firing", "externalURL": "http://am",
                "alerts": [{"status": "firing",
                    "labels": {"alertname": "<users/all> \"}]} 🔥 \u{202E}", "severity": "critical", "huge": long},
                    "annotations": {"summary": "<https://evil.example|bank> \"quotes\" \\ back\nslash <b>bold</b>", "description": long,
                        "runbook_url": "javascript:alert(1)"},
                    "startsAt": "2026-11-28T00:52:38.123456789+05:30", "generatorURL": "https://x.example/\"><script>"}]}),
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

/// Every message a sample can produce: each alert as firing, reminder, firing again and
/// resolved, and the whole notification as a group and as digests (of what starts firing,
/// and of every kind of change at once).
fn sample_messages(notification: &Notification) -> Vec<(MessageKind, Subject)> {
    let mut messages = Vec::new();
    for i in 0..notification.alerts.len() {
        for kind in [
            MessageKind::Firing,
            MessageKind::Reminder,
            MessageKind::FiringAgain,
            MessageKind::Resolved,
        ] {
            messages.push((kind, Subject::Alert(i)));
        }
    }
    let mut changes = AlertSet::default();
    for (i, alert) in notification.alerts.iter().enumerate() {
        match alert.status {
            AlertStatus::Firing => changes.firing.push(i),
            AlertStatus::Resolved => changes.resolved.push(i),
        }
    }
    let reminders = AlertSet {
        still_firing: changes.firing.clone(),
        ..AlertSet::default()
    };
    let digest = AlertSet {
        firing: (0..notification.alerts.len()).collect(),
        ..AlertSet::default()
    };
    let mixed_digest = AlertSet {
        still_firing: reminders.still_firing.clone(),
        ..changes.clone()
    };
    // A plan never posts an empty set; neither do the samples.
    for (kind, set) in [
        (MessageKind::Group, changes),
        (MessageKind::Group, reminders),
        (MessageKind::Digest, digest),
        (MessageKind::Digest, mixed_digest),
    ] {
        if !set.is_empty() {
            messages.push((kind, Subject::Alerts(set)));
        }
    }
    messages
}

/// Validates the config and renders every space's templates against the samples.
/// Returns a human summary.
pub fn check(config_path: &Path) -> Result<String, CommandError> {
    let runtime = Runtime::load(config_path)?;
    let state_dir = &runtime.config.state_dir;
    // A folder that is a file, or exists and cannot be written, is wrong wherever this runs.
    // One that does not exist yet may just be checked away from where kabar will run (CI
    // checking a pod's /var/lib/kabar): said, not failed.
    // Replicas on PostgreSQL leave state_dir alone: nothing to check there.
    let usable = if runtime.config.store.postgres.is_some() {
        Ok(())
    } else {
        crate::state_dir::check_usable(state_dir)
    };
    let state_dir_warning = match usable {
        Ok(()) => None,
        Err(e @ crate::state_dir::StateDirError::NotWritable { .. }) if !state_dir.exists() => {
            Some(format!(
                "  warning: kabar could not create state_dir here: {e}\n"
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let now: Timestamp = "2026-11-28T01:00:00Z"
        .parse()
        .unwrap_or_else(|_| Timestamp::now());
    let samples = samples();
    for space in runtime.config.spaces.values() {
        for (sample, notification) in &samples {
            for (kind, subject) in sample_messages(notification) {
                runtime
                    .renderer
                    .render_strict(&RenderInput {
                        space,
                        kind,
                        subject: &subject,
                        notification,
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
    let config = &runtime.config;
    let mut out = format!("{}: OK\n", config_path.display());
    match &config.store.postgres {
        // Host and database only: the URL carries the password. Not connected to: check
        // runs where the database may not be reachable (CI, a laptop).
        Some(postgres) => {
            let _ = writeln!(
                out,
                "  listen {}, store {} (lease {}, {} connections per replica; not connected to)",
                config.listen,
                crate::store::location(config),
                crate::config::format_duration(postgres.lease),
                postgres.max_connections
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  listen {}, state_dir {}",
                config.listen,
                config.state_dir.display()
            );
        }
    }
    out.push_str(state_dir_warning.as_deref().unwrap_or(""));
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
            t @ (Target::Webhook(_) | Target::App { .. }) => t.describe(),
        };
        let files = runtime.renderer.templates_of(space);
        let templates = if files.is_empty() {
            "built-in".to_owned()
        } else {
            files.join(", ")
        };
        let _ = writeln!(
            out,
            "  space {}: {target}; receivers {}; {} messages, threading {}; templates {templates}",
            space.name,
            space.receivers.join(", "),
            space.options.format.as_str(),
            space.options.threading.as_str(),
        );
    }
    Ok(out)
}

/// The Chat requests a payload would produce, as pretty JSON: for each, the method, the
/// path (app mode; webhooks post to their URL), the space, kind, thread key, the query
/// kabar adds, the exact body, and for a card the text body sent instead if Chat refuses it.
/// An app-mode opening card as the sender draws it: with the buttons (and lines) app mode
/// adds to what was queued.
fn app_card(
    runtime: &Runtime,
    episodes: &mut MemoryEpisodes,
    message: &crate::pipeline::Outgoing,
) -> String {
    use crate::chat_app::actions::{act, episodes as app_episodes, state::AppEpisodeState};
    use crate::store::EpisodeStore;
    let (Some(settings), Some(write)) = (runtime.config.chat_app.as_ref(), &message.app) else {
        return message.body.clone();
    };
    let opening = matches!(
        message.kind,
        crate::plan::MessageKind::Firing | crate::plan::MessageKind::Resolved
    );
    let Some(episode) = app_episodes::episode_of_message(write.message_id()).filter(|_| opening)
    else {
        return message.body.clone();
    };
    let Ok(Some(state)) = episodes.app_episode(episode) else {
        return message.body.clone();
    };
    let Some(state) = AppEpisodeState::parse(&state) else {
        return message.body.clone();
    };
    let firing = message.kind == crate::plan::MessageKind::Firing;
    act::outgoing_card(settings, episode, &state, &message.body, firing)
}

pub fn render(
    config_path: &Path,
    payload_path: &Path,
    space: Option<&str>,
) -> Result<String, CommandError> {
    let runtime = Runtime::load(config_path)?;
    let bytes = read_payload(payload_path, runtime.config.max_body_bytes)?;
    let notification = Notification::parse(&bytes)?;
    let spaces = route(&runtime.config, &notification.receiver, space)?;
    let now = Timestamp::now();
    let mut episodes = MemoryEpisodes::default();
    let mut requests: Vec<Value> = Vec::new();
    for name in spaces {
        let Some(space) = runtime.config.spaces.get(&name) else {
            continue;
        };
        let preview = preview(&mut episodes, &runtime, space, &notification, now);
        for message in preview.messages {
            let shown = app_card(&runtime, &mut episodes, &message);
            let body: Value = serde_json::from_str(&shown).unwrap_or(Value::Null);
            let fallback: Option<Value> = message
                .fallback_body
                .as_deref()
                .and_then(|b| serde_json::from_str(b).ok());
            // App mode: the Chat API request itself (method, path, query), as the sender
            // makes it before it knows a created message's name.
            let app = match (&space.target, &message.app) {
                (Target::App { space: chat_space }, Some(write)) => {
                    Some(crate::chat_app::describe(
                        chat_space,
                        write,
                        message.thread_key.is_some(),
                        None,
                    ))
                }
                _ => None,
            };
            let query = match &app {
                Some(request) => Some(request.query_string()),
                None => message
                    .thread_key
                    .as_ref()
                    .map(|_| format!("messageReplyOption={REPLY_OPTION}")),
            };
            requests.push(json!({
                "method": app.as_ref().map_or("POST", |r| r.method),
                "path": app.as_ref().map(|r| r.path.clone()),
                "space": message.space,
                "kind": message.kind.as_str(),
                "fingerprints": message
                    .subject
                    .indexes()
                    .into_iter()
                    .filter_map(|i| notification.alerts.get(i))
                    .map(|a| a.fingerprint())
                    .collect::<Vec<_>>(),
                "threadKey": message.thread_key,
                "query": query,
                "body": body,
                "fallbackBody": fallback,
            }));
        }
        for failure in preview.outcome.template_failures {
            crate::print_err(&format!(
                "warning: space {name}: {failure} (the built-in template was used)\n"
            ));
        }
    }
    Ok(serde_json::to_string_pretty(&requests).unwrap_or_else(|_| "[]".to_owned()))
}

/// The payload file, or stdin for `-`; no more than kabar itself would take.
fn read_payload(path: &Path, limit: usize) -> Result<Vec<u8>, CommandError> {
    use std::io::Read as _;
    let shown = if path == Path::new("-") {
        "(stdin)".to_owned()
    } else {
        path.display().to_string()
    };
    let read_error = |source| CommandError::ReadPayload {
        path: shown.clone(),
        source,
    };
    let reader: Box<dyn std::io::Read> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(path).map_err(read_error)?)
    };
    let mut bytes = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() > limit {
        return Err(CommandError::PayloadTooLarge { path: shown, limit });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_all_parse() {
        assert_eq!(samples().len(), 7);
    }

    #[test]
    fn check_passes_the_builtin_templates_in_both_formats() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("kabar.yaml");
        std::fs::write(
            &config,
            "defaults:\n  mentions: {critical: [all]}\nspaces:\n  cards:\n    dry_run: true\n  texts:\n    dry_run: true\n    format: text\n    threading: per_group\n",
        )
        .expect("write");
        let summary = check(&config).expect("the built-in templates pass");
        assert!(
            summary.contains("space cards: dry run; receivers cards; card messages"),
            "{summary}"
        );
        assert!(
            summary.contains("text messages, threading per_group"),
            "{summary}"
        );
    }

    #[test]
    fn the_readme_example_templates_pass_check() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/templates");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("kabar.yaml");
        std::fs::write(
            &config,
            format!(
                "defaults:\n  templates: {{card: '{0}/card.hbs', text: '{0}/text.hbs'}}\nspaces:\n  cards:\n    dry_run: true\n  texts:\n    dry_run: true\n    format: text\n",
                examples.display()
            ),
        )
        .expect("write");
        let summary = check(&config).expect("the examples pass");
        assert!(summary.contains("card.hbs"), "{summary}");
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
        // Cards by default, with the text version kept for a refused card.
        assert!(requests[1]["body"]["cardsV2"].is_array());
        assert!(
            requests[1]["body"]["fallbackText"]
                .as_str()
                .expect("fallbackText")
                .contains("HighLatency"),
            "{}",
            requests[1]["body"]
        );
        assert!(requests[1]["body"].to_string().contains("p99 high on web2"));
    }
}
