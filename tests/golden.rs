//! Golden files: the exact Chat bodies kabar's built-in templates produce for the real
//! Alertmanager payloads in tests/fixtures, in card and text format, per alert, per group
//! and as a digest. A change to a built-in template shows up here as a reviewable diff.
//!
//! After an intended change: `KABAR_UPDATE_GOLDEN=1 cargo test --test golden`, then
//! review `git diff tests/golden`.

mod common;

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde_json::{Value, json};

use kabar::config::Config;
use kabar::ingest::prepare;
use kabar::payload::Notification;
use kabar::runtime::Runtime;
use kabar::state::MemoryEpisodes;

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
    let yaml = format!(
        "spaces:\n  ops:\n    dry_run: true\n    mentions: {{critical: [all]}}\n    {options}\n"
    );
    let config = Config::parse(&yaml, Path::new("."), &|_| None).expect("config");
    let runtime = Runtime::new(config).expect("templates");
    let space = &runtime.config.spaces["ops"];
    let notification =
        Notification::parse(&std::fs::read(fixture).expect("read fixture")).expect("parses");
    let now: Timestamp = NOW.parse().expect("now");
    let mut requests = Vec::new();
    let outcome = prepare(
        &mut MemoryEpisodes::default(),
        &runtime,
        space,
        &notification,
        now,
        |message| {
            let body: Value = serde_json::from_str(&message.body).expect("body is JSON");
            let fallback: Option<Value> = message
                .fallback_body
                .as_deref()
                .map(|b| serde_json::from_str(b).expect("fallback is JSON"));
            requests.push(json!({
                "kind": message.kind.as_str(),
                "body": body,
                "fallbackBody": fallback,
            }));
            Ok(())
        },
    );
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(never) => match never {},
    };
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
    for fixture in fixtures() {
        let stem = fixture
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_owned();
        for (case, options) in CASES {
            let actual =
                serde_json::to_string_pretty(&render(&fixture, options)).expect("json") + "\n";
            let path = golden_dir.join(format!("{stem}.{case}.json"));
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
        "{}\n\nIf the change is intended: KABAR_UPDATE_GOLDEN=1 cargo test --test golden",
        mismatches.join("\n")
    );
}

#[test]
fn every_golden_body_is_one_chat_accepts() {
    for fixture in fixtures() {
        for (_, options) in CASES {
            for request in render(&fixture, options).as_array().expect("array") {
                for body in [&request["body"], &request["fallbackBody"]] {
                    if body.is_null() {
                        continue;
                    }
                    let ignored = common::fake_chat::check_body(&body.to_string())
                        .unwrap_or_else(|e| panic!("Chat would refuse it: {e}\n{body}"));
                    assert_eq!(ignored, 0, "no widget beyond Chat's 100");
                }
            }
        }
    }
}
