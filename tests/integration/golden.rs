//! Golden files: the exact Chat bodies kabar's built-in templates produce for the real
//! Alertmanager payloads in tests/fixtures, in card and text format, per alert, per group
//! and as a digest. A change to a built-in template shows up here as a reviewable diff.
//!
//! After an intended change: `KABAR_UPDATE_GOLDEN=1 cargo test --test integration golden::`, then
//! review `git diff tests/golden`.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde_json::{Value, json};

use kabar::Config;
use kabar::MemoryEpisodes;
use kabar::Runtime;
use kabar::preview;
use kabar::{AlertStatus, Notification};

/// A fixed "now", so durations in the bodies do not change from run to run.
const NOW: &str = "2026-11-28T01:00:00Z";

const CASES: &[(&str, &str)] = &[
    ("card", "format: card"),
    ("text", "format: text"),
    ("card-per-group", "format: card\n    threading: per_group"),
    ("text-per-group", "format: text\n    threading: per_group"),
    (
        "card-digest",
        "format: card\n    max_new_threads_per_notification: 1",
    ),
    (
        "text-digest",
        "format: text\n    max_new_threads_per_notification: 1",
    ),
];

/// A case that needs a history: fixture stem, case name, options, the history, and the
/// status the fixture's alerts then have (None: as in the file).
type HistoryCase = (
    &'static str,
    &'static str,
    &'static str,
    &'static [Step],
    Option<AlertStatus>,
);

/// The fixture's alerts fire again three minutes after they resolved; a group that fired
/// as a digest resolves, again as one digest that shows them resolved.
const HISTORY_CASES: &[HistoryCase] = &[
    (
        "firing",
        "card-firing-again",
        "format: card",
        &[(AlertStatus::Firing, 5), (AlertStatus::Resolved, 3)],
        None,
    ),
    (
        "firing",
        "text-firing-again",
        "format: text",
        &[(AlertStatus::Firing, 5), (AlertStatus::Resolved, 3)],
        None,
    ),
    (
        "grouped-firing",
        "card-digest-resolved",
        "format: card\n    max_new_threads_per_notification: 1",
        &[(AlertStatus::Firing, 60)],
        Some(AlertStatus::Resolved),
    ),
    (
        "grouped-firing",
        "text-digest-resolved",
        "format: text\n    max_new_threads_per_notification: 1",
        &[(AlertStatus::Firing, 60)],
        Some(AlertStatus::Resolved),
    ),
];

/// App-mode cases (`space: spaces/…`): the same bodies with `markupSyntax`, the request
/// each becomes, and on resolve the edit of the opening card before the reply.
const APP_CASES: &[HistoryCase] = &[
    ("firing", "card-app", "format: card", &[], None),
    (
        "firing",
        "card-app-resolved",
        "format: card",
        &[(AlertStatus::Firing, 5)],
        Some(AlertStatus::Resolved),
    ),
    (
        "firing",
        "text-app-resolved",
        "format: text",
        &[(AlertStatus::Firing, 5)],
        Some(AlertStatus::Resolved),
    ),
];

/// A service-account key file for the app-mode cases, generated once per test run (a
/// test key; the bodies never depend on it).
fn app_key_file() -> &'static Path {
    static KEY: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, path) = KEY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("key dir");
        let key =
            crate::common::fake_google::TestKey::generate("https://oauth2.googleapis.com/token");
        let path = dir.path().join("service-account.json");
        std::fs::write(&path, &key.json).expect("write key");
        (dir, path)
    });
    path
}

/// Every golden case: (fixture, case name, requests).
fn golden_cases() -> Vec<(PathBuf, String, Value)> {
    let mut cases = Vec::new();
    for fixture in fixtures() {
        let stem = fixture
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_owned();
        for (case, options) in CASES {
            let requests = render(&fixture, options);
            cases.push((fixture.clone(), format!("{stem}.{case}"), requests));
        }
        for (fixture_stem, case, options, history, status) in HISTORY_CASES {
            if *fixture_stem == stem {
                let requests = render_after(&fixture, options, history, *status);
                cases.push((fixture.clone(), format!("{stem}.{case}"), requests));
            }
        }
        for (fixture_stem, case, options, history, status) in APP_CASES {
            if *fixture_stem == stem {
                let requests = render_in(&fixture, options, history, *status, true);
                cases.push((fixture.clone(), format!("{stem}.{case}"), requests));
            }
        }
    }
    cases
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alertmanager");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// The requests one fixture produces in a fresh space with `options`.
fn render(fixture: &Path, options: &str) -> Value {
    render_after(fixture, options, &[], None)
}

/// One step of an alert history played before the fixture: every alert of the fixture
/// with this status, `minutes_ago` before NOW.
type Step = (AlertStatus, i64);

/// Every alert of `notification` with `status`; resolved ones ended `at`.
fn with_status(notification: &Notification, status: AlertStatus, at: Timestamp) -> Notification {
    let mut changed = notification.clone();
    for alert in &mut changed.alerts {
        alert.status = status;
        alert.ends_at = (status == AlertStatus::Resolved).then_some(at);
    }
    changed
}

/// The requests the fixture produces (its alerts with `status`, if given) after `history`
/// was played in the same space.
fn render_after(
    fixture: &Path,
    options: &str,
    history: &[Step],
    status: Option<AlertStatus>,
) -> Value {
    render_in(fixture, options, history, status, false)
}

/// `render_after` in a dry-run space, or in an app-mode space (`app`).
fn render_in(
    fixture: &Path,
    options: &str,
    history: &[Step],
    status: Option<AlertStatus>,
    app: bool,
) -> Value {
    let yaml = if app {
        format!(
            "chat_app: {{credentials_file: {:?}}}\nspaces:\n  ops:\n    space: spaces/AAAAgolden\n    mentions: {{critical: [all]}}\n    {options}\n",
            app_key_file().display().to_string()
        )
    } else {
        format!(
            "spaces:\n  ops:\n    dry_run: true\n    mentions: {{critical: [all]}}\n    {options}\n"
        )
    };
    let config = Config::parse(&yaml, Path::new("."), &|_| None).expect("config");
    let runtime = Runtime::new(config).expect("templates");
    let space = &runtime.config.spaces["ops"];
    let notification =
        Notification::parse(&std::fs::read(fixture).expect("read fixture")).expect("parses");
    let now: Timestamp = NOW.parse().expect("now");
    let mut episodes = MemoryEpisodes::default();
    for (status, minutes_ago) in history {
        let at = now - jiff::SignedDuration::from_mins(*minutes_ago);
        let earlier = with_status(&notification, *status, at);
        preview(&mut episodes, &runtime, space, &earlier, at);
    }
    let notification = match status {
        Some(status) => with_status(&notification, status, now),
        None => notification,
    };
    let preview = preview(&mut episodes, &runtime, space, &notification, now);
    let mut requests = Vec::new();
    for message in &preview.messages {
        let body: Value = serde_json::from_str(&message.body).expect("body is JSON");
        let fallback: Option<Value> = message
            .fallback_body
            .as_deref()
            .map(|b| serde_json::from_str(b).expect("fallback is JSON"));
        let mut request = json!({
            "kind": message.kind.as_str(),
            "body": body,
            "fallbackBody": fallback,
        });
        if let Some(write) = &message.app {
            request["request"] = json!(match write {
                kabar::AppWrite::Create { message_id } => format!("create {message_id}"),
                kabar::AppWrite::Edit { message_id } => format!("edit {message_id}"),
            });
        }
        requests.push(request);
    }
    let outcome = preview.outcome;
    assert!(
        outcome.template_failures.is_empty(),
        "{:?}",
        outcome.template_failures
    );
    Value::Array(requests)
}

#[test]
fn builtin_templates_match_the_golden_files() {
    let update = std::env::var_os("KABAR_UPDATE_GOLDEN").is_some();
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut mismatches = Vec::new();
    for (_, name, requests) in golden_cases() {
        {
            let actual = serde_json::to_string_pretty(&requests).expect("json") + "\n";
            let path = golden_dir.join(format!("{name}.json"));
            if update {
                std::fs::create_dir_all(&golden_dir).expect("golden dir");
                std::fs::write(&path, &actual).expect("write golden");
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(expected) if expected == actual => {}
                Ok(expected) => {
                    let line = expected
                        .lines()
                        .zip(actual.lines())
                        .position(|(e, a)| e != a)
                        .map_or(expected.lines().count().min(actual.lines().count()), |i| i)
                        + 1;
                    mismatches.push(format!(
                        "{}: differs from line {line}:\n  expected: {}\n  actual:   {}",
                        path.display(),
                        expected.lines().nth(line - 1).unwrap_or("(end)"),
                        actual.lines().nth(line - 1).unwrap_or("(end)")
                    ));
                }
                Err(e) => mismatches.push(format!("{}: {e}", path.display())),
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{}\n\nIf the change is intended: KABAR_UPDATE_GOLDEN=1 cargo test --test integration golden::",
        mismatches.join("\n")
    );
}

#[test]
fn every_golden_body_is_one_chat_accepts() {
    for (_, name, requests) in golden_cases() {
        for request in requests.as_array().expect("array") {
            for body in [&request["body"], &request["fallbackBody"]] {
                if body.is_null() {
                    continue;
                }
                // App bodies add markupSyntax (a Message field of the Chat API that the
                // fake webhook's field list does not know); the rest is the same message.
                let mut body = body.clone();
                if request.get("request").is_some() {
                    let syntax = body.as_object_mut().and_then(|o| o.remove("markupSyntax"));
                    assert_eq!(syntax, Some(json!("MARKUP_SYNTAX_CHAT")), "{name}");
                }
                let ignored = crate::common::fake_chat::check_body(&body.to_string())
                    .unwrap_or_else(|e| panic!("{name}: Chat would refuse it: {e}\n{body}"));
                assert_eq!(ignored, 0, "{name}: no widget beyond Chat's 100");
            }
        }
    }
}

#[test]
fn the_history_cases_produce_the_kinds_they_are_about() {
    for (_, name, requests) in golden_cases() {
        let kinds: Vec<&str> = requests
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|r| r["kind"].as_str())
            .collect();
        if name.ends_with("firing-again") {
            assert_eq!(kinds, ["firingAgain"], "{name}");
        }
        if name.ends_with("digest-resolved") {
            assert_eq!(kinds, ["digest"], "{name}");
        }
    }
}
