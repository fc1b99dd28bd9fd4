//! Property tests: whatever labels and annotations an alert carries, every body kabar
//! renders is one Chat accepts (valid JSON, within its limits, the cardsV2 shape) and
//! none of it can mention anyone or carry a link or markup that alert data put there.

use std::path::Path;

use jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::common::fake_chat::json_strings;
use kabar::Config;
use kabar::Notification;
use kabar::{AlertSet, MessageKind, Subject};
use kabar::{RenderInput, Renderer};

/// Pieces that have broken Chat integrations: mentions, links, markup, JSON and HTML
/// syntax, escapes, bidi controls, emoji and combining characters.
const HOSTILE: &[&str] = &[
    "<users/all>",
    "<USERS/123>",
    "<https://evil.example|bank.example>",
    "<http://x|",
    "\"",
    "\\",
    "\\u0000",
    "}]}",
    "\",\"text\":\"",
    "<b>",
    "</font>",
    "<font color=\"#ff0000\">",
    "&lt;users/all&gt;",
    "&amp;",
    "\n",
    "\r\n",
    "\t",
    "\u{0}",
    "\u{1b}[31m",
    "\u{202E}",
    "\u{2066}",
    "\u{200F}",
    "\u{2028}",
    "👩‍💻",
    "🔥",
    "e\u{301}",
    "*bold*",
    "`code`",
    "```",
    "{{alert.name}}",
    "<",
    ">",
    "|",
];

fn hostile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => proptest::sample::select(HOSTILE).prop_map(str::to_owned),
        2 => any::<String>(),
        1 => "[a-z]{1,12}",
    ];
    prop_oneof![
        8 => proptest::collection::vec(piece.clone(), 0..12).prop_map(|p| p.concat()),
        // Now and then something large, to exercise the limits.
        1 => (proptest::collection::vec(piece, 1..4), 200usize..3_000)
            .prop_map(|(p, n)| p.concat().repeat(n)),
    ]
}

type Pairs = Vec<(String, String)>;
/// An alert's name, labels and annotations.
type AlertSpec = (String, Pairs, Pairs);

fn labels() -> impl Strategy<Value = Pairs> {
    proptest::collection::vec(("[a-z_]{1,10}", hostile_text()), 0..12)
}

fn notification(alerts: &[AlertSpec]) -> Notification {
    let alerts: Vec<Value> = alerts
        .iter()
        .enumerate()
        .map(|(i, (name, labels, annotations))| {
            let mut label_map: serde_json::Map<String, Value> =
                labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            label_map.insert("alertname".into(), json!(name));
            label_map.insert(
                "severity".into(),
                json!(if i % 2 == 0 { "critical" } else { "warning" }),
            );
            let annotation_map: serde_json::Map<String, Value> = annotations
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            json!({"status": if i % 3 == 2 { "resolved" } else { "firing" },
                "labels": label_map, "annotations": annotation_map,
                "startsAt": "2026-11-28T00:52:38Z", "endsAt": "2026-11-28T00:59:00Z",
                "generatorURL": "http://prometheus.local/graph", "fingerprint": format!("fp{i}")})
        })
        .collect();
    let body = json!({"version": "4", "receiver": "ops", "status": "firing",
        "externalURL": "http://am.example:9093", "groupKey": "{}:{}",
        "groupLabels": {"alertname": alerts.first().map(|a| a["labels"]["alertname"].clone()).unwrap_or(json!(""))},
        "truncatedAlerts": 3, "alerts": alerts});
    Notification::parse(body.to_string().as_bytes()).expect("a valid notification")
}

/// Every `<` in text begins a link kabar made; every `<` in a card string begins markup
/// the built-in card wrote.
fn assert_inert(body: &Value) {
    let text = body["text"].as_str().unwrap_or("");
    for (at, _) in text.match_indices('<') {
        let rest = &text[at..];
        assert!(
            rest.starts_with("<http://prometheus.local/graph|")
                || rest.starts_with("<http://am.example:9093/#/"),
            "a link or mention alert data made: {:?}",
            &rest[..rest.len().min(60)]
        );
    }
    let mut card_strings = json_strings(&body["cardsV2"]);
    card_strings.extend(json_strings(&body["fallbackText"]));
    const MARKUP: &[&str] = &["<b>", "</b>", "<i>", "</i>", "<font color=\"#", "</font>"];
    for s in &card_strings {
        for (at, _) in s.match_indices('<') {
            let rest = &s[at..];
            assert!(
                MARKUP.iter().any(|m| rest.starts_with(m)),
                "markup alert data made: {:?}",
                &rest[..rest.len().min(60)]
            );
        }
    }
    let all = body.to_string().to_lowercase();
    assert!(!all.contains("<users/"), "a live mention");
    for control in ['\u{202E}', '\u{2066}', '\u{200F}'] {
        assert!(!body.to_string().contains(control), "a bidi control");
    }
}

fn check(format: &str, n: &Notification) {
    check_with_keys(format, n, |_| "kabar:ops:fp:2026-11-28T00:52:38Z".into());
}

/// As [`check`], with each message's thread key made by `thread_key` from its first alert.
fn check_with_keys(format: &str, n: &Notification, thread_key: impl Fn(&kabar::Alert) -> String) {
    let yaml = format!("spaces:\n  ops:\n    dry_run: true\n    format: {format}\n");
    let config = Config::parse(&yaml, Path::new("."), &|_| None).expect("config");
    let renderer = Renderer::new(&config).expect("templates");
    let space = &config.spaces["ops"];
    let all: Vec<usize> = (0..n.alerts.len()).collect();
    let mut subjects = vec![
        (
            MessageKind::Group,
            Subject::Alerts(AlertSet {
                firing: all.clone(),
                resolved: all.clone(),
                still_firing: all.clone(),
            }),
        ),
        (
            MessageKind::Digest,
            Subject::Alerts(AlertSet {
                firing: all,
                ..AlertSet::default()
            }),
        ),
    ];
    for i in 0..n.alerts.len() {
        for kind in [
            MessageKind::Firing,
            MessageKind::Reminder,
            MessageKind::Resolved,
        ] {
            subjects.push((kind, Subject::Alert(i)));
        }
    }
    for (kind, subject) in &subjects {
        let (message, failures) = renderer.render(&RenderInput {
            space,
            kind: *kind,
            subject,
            notification: n,
            thread_key: subject
                .indexes()
                .first()
                .and_then(|i| n.alerts.get(*i))
                .map(&thread_key),
            now: Timestamp::from_second(1_795_830_000).expect("now"),
        });
        assert!(
            failures.is_empty(),
            "the built-in templates never fail: {failures:?}"
        );
        for body in std::iter::once(&message.body).chain(message.fallback_body.as_ref()) {
            let ignored = crate::common::fake_chat::check_body(body)
                .unwrap_or_else(|e| panic!("Chat would refuse it: {e}"));
            assert_eq!(ignored, 0, "widgets beyond Chat's 100");
            let value: Value = serde_json::from_str(body).expect("JSON");
            let text = value["text"].as_str().unwrap_or("");
            assert!(text.encode_utf16().count() <= 4096);
            assert_inert(&value);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_alert_content_renders_to_a_body_chat_accepts(
        alerts in proptest::collection::vec(
            (hostile_text(), labels(), labels()),
            1..4,
        )
    ) {
        let n = notification(&alerts);
        check("card", &n);
        check("text", &n);
    }
}

/// Shapes far past what a real alert carries, within what a 256 KiB body can hold: a
/// fingerprint of up to 100 kB (hashed into the thread key), up to 2,000 labels, values
/// of up to 20 kB.
fn extreme_alert() -> impl Strategy<Value = (String, usize, usize, String)> {
    (
        "[0-9a-f]{1,16}",
        0usize..100_000,
        0usize..2_000,
        proptest::sample::select(HOSTILE).prop_flat_map(|piece| {
            (0usize..20_000 / piece.len().max(1)).prop_map(move |n| piece.repeat(n))
        }),
    )
        .prop_map(|(fingerprint, length, labels, value)| {
            let labels = labels.min((1 << 18) / (value.len() + 16));
            (
                fingerprint.repeat(length / fingerprint.len() + 1),
                length,
                labels,
                value,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn extreme_shapes_render_to_bodies_chat_accepts_with_bounded_thread_keys(
        (fingerprint, length, label_count, value) in extreme_alert()
    ) {
        let labels: Pairs = (0..label_count).map(|i| (format!("l{i:04}"), value.clone())).collect();
        let annotations: Pairs = vec![("description".into(), value.clone())];
        let mut n = notification(&[("Extreme".into(), labels, annotations)]);
        n.alerts[0].fingerprint = fingerprint[..length.min(fingerprint.len())].to_owned();
        let key = |alert: &kabar::Alert| {
            let key = kabar::EpisodeKey::new("ops", alert).thread_key();
            let bound = kabar::payload::MAX_FINGERPRINT_BYTES + 50;
            assert!(key.len() < bound, "a thread key of {} bytes", key.len());
            key
        };
        check_with_keys("card", &n, key);
        check_with_keys("text", &n, key);
    }
}
