//! One notification through planning, rendering and fitting, as a webhook request takes it
//! (`pipeline::preview`): extreme shapes, built from a short input by multipliers (a long
//! fingerprint, many labels, huge values and URLs, many alerts), in every space shape
//! (text and card, per alert, per group, a digest). Every message kabar would queue fits
//! Chat's limits, and every input finishes: .ci/fuzz runs this target with a per-input
//! time limit, so a shrinking loop that does not end (a 40 kB fingerprint once made one)
//! is reported as a timeout.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use kabar::Config;
use kabar::Notification;
use kabar::preview;
use kabar::render::{MAX_BODY_BYTES, MAX_TEXT_CHARS};
use kabar::Runtime;
use kabar::MemoryEpisodes;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const CONFIG: &str = "
defaults:
  mentions: { critical: [all] }
spaces:
  text: { dry_run: true, format: text }
  card: { dry_run: true, format: card }
  group_text: { dry_run: true, format: text, threading: per_group }
  group_card: { dry_run: true, format: card, threading: per_group }
  digest_card: { dry_run: true, format: card, max_new_threads_per_notification: 1 }
";

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let config = Config::parse(CONFIG, Path::new("/nonexistent"), &|_| None)
            .expect("the fuzz config is valid");
        Runtime::new(config).expect("built-in templates compile")
    })
}

/// The largest string built from one field: inputs are short, the shapes that matter are
/// long, so fields are repeated up to this many bytes (a 40 kB fingerprint once hung
/// kabar). Larger shapes find nothing new and make each run slow under the sanitizer.
const MAX_BUILT_BYTES: usize = 64 * 1024;
/// At most this many labels (or annotations) over all alerts of one notification: well
/// past every bound the context applies.
const MAX_BUILT_ENTRIES: usize = 20_000;

/// `piece` repeated to about `factor` KiB (at least once), or as it is for factor 0.
fn grow(piece: &str, factor: u8) -> String {
    if factor == 0 || piece.is_empty() {
        return piece.to_owned();
    }
    let target = (usize::from(factor) * 1024).min(MAX_BUILT_BYTES);
    piece.repeat(target.div_ceil(piece.len()))
}

fn field<'a>(fields: &[&'a str], i: usize) -> &'a str {
    fields.get(i).copied().unwrap_or("")
}

fuzz_target!(|data: &[u8]| {
    // Eight shape bytes, then NUL-separated text fields.
    let Some((shape, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let [
        fingerprint_factor,
        label_factor,
        value_factor,
        annotation_factor,
        alert_count,
        url_factor,
        group_factor,
        statuses,
    ] = *shape;
    let text = String::from_utf8_lossy(rest);
    let fields: Vec<&str> = text.split('\0').collect();

    // Past the 20 alerts a list shows, the labels and annotations the context keeps.
    let alerts = usize::from(alert_count % 24) + 1;
    let labels_per_alert = (usize::from(label_factor) * 64).min(MAX_BUILT_ENTRIES / alerts);
    let annotations_per_alert = usize::from(annotation_factor).min(MAX_BUILT_ENTRIES / alerts);
    let value = grow(field(&fields, 1), value_factor);
    let alerts: Vec<Value> = (0..alerts)
        .map(|i| {
            let mut labels = Map::new();
            labels.insert("alertname".into(), json!(format!("{}{i}", field(&fields, 0))));
            labels.insert(
                "severity".into(),
                json!(["critical", "warning", field(&fields, 2)][i % 3]),
            );
            labels.insert("instance".into(), json!(value));
            labels.insert(grow(field(&fields, 3), value_factor), json!(field(&fields, 4)));
            for l in 0..labels_per_alert {
                labels.insert(format!("{}{l}", field(&fields, 5)), json!(field(&fields, 6)));
            }
            let mut annotations = Map::new();
            annotations.insert("summary".into(), json!(value));
            annotations.insert(
                "description".into(),
                json!(grow(field(&fields, 7), annotation_factor)),
            );
            annotations.insert("runbook_url".into(), json!(grow(field(&fields, 8), url_factor)));
            for a in 0..annotations_per_alert {
                annotations.insert(format!("a{a}"), json!(field(&fields, 9)));
            }
            let resolved = statuses & (1 << (i % 8)) != 0;
            json!({
                "status": if resolved { "resolved" } else { "firing" },
                "labels": labels,
                "annotations": annotations,
                "startsAt": "2026-11-28T00:52:38Z",
                "endsAt": if resolved { "2026-11-28T01:19:38Z" } else { "0001-01-01T00:00:00Z" },
                "generatorURL": format!("http://prom.example/{}", grow(field(&fields, 10), url_factor)),
                "fingerprint": if fingerprint_factor == 0 {
                    String::new()
                } else {
                    format!("{}{i}", grow(field(&fields, 11), fingerprint_factor))
                },
            })
        })
        .collect();
    let group_labels: Map<String, Value> = (0..usize::from(group_factor) * 16)
        .map(|g| (format!("g{g}"), json!(field(&fields, 12))))
        .collect();
    let payload = json!({
        "version": "4", "receiver": grow(field(&fields, 13), group_factor), "status": "firing",
        "externalURL": format!("http://am.example/{}", grow(field(&fields, 14), url_factor)),
        "groupKey": grow(field(&fields, 15), group_factor),
        "groupLabels": group_labels,
        "commonLabels": group_labels,
        "commonAnnotations": {"summary": value},
        "truncatedAlerts": u64::from(group_factor),
        "alerts": alerts,
    });
    let Ok(notification) = Notification::parse(payload.to_string().as_bytes()) else {
        return;
    };

    let runtime = runtime();
    let now = "2026-11-28T01:00:00Z".parse().expect("time");
    for space in runtime.config.spaces.values() {
        let mut episodes = MemoryEpisodes::default();
        let preview = preview(&mut episodes, runtime, space, &notification, now);
        for message in &preview.messages {
            for body in std::iter::once(&message.body).chain(&message.fallback_body) {
                check_body(body);
            }
            if let Some(key) = &message.thread_key {
                assert!(key.len() <= 4000, "a thread key of {} bytes", key.len());
            }
        }
        let outcome = preview.outcome;
        assert!(
            outcome.template_failures.is_empty(),
            "the built-in templates failed in {}: {:?}",
            space.name,
            outcome.template_failures
        );
    }
});

/// A body Chat accepts: JSON within the size limit, text within its length, never empty.
fn check_body(body: &str) {
    assert!(body.len() <= MAX_BODY_BYTES, "a body of {} bytes", body.len());
    let value: Value = serde_json::from_str(body).expect("the body is JSON");
    let text = value["text"].as_str().unwrap_or("");
    assert!(
        text.encode_utf16().count() <= MAX_TEXT_CHARS,
        "text of {} units",
        text.encode_utf16().count()
    );
    if let Some(cards) = value["cardsV2"].as_array() {
        assert!(!cards.is_empty(), "an empty card list");
    } else {
        assert!(!text.trim().is_empty(), "an empty message");
    }
}
