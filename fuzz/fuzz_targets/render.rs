//! Rendering hostile alert data: never a panic; every message fits Chat's limits, is never
//! empty, mentions only whom the config names, and carries no markup from alert values
//! (no `<users/...>`, no `<url|label>` link other than kabar's own safe ones).

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use kabar::Config;
use kabar::Notification;
use kabar::render::{
    MAX_BODY_BYTES, MAX_TEXT_CHARS, RenderInput, Renderer, escape_text, fit_text, safe_link,
};
use kabar::{AlertSet, MessageKind, Subject};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const CONFIG: &str = "
defaults:
  mentions: { critical: [all], warning: [\"users/123\"] }
spaces:
  text: { dry_run: true, format: text }
  card: { dry_run: true, format: card }
";

fn setup() -> &'static (Config, Renderer) {
    static SETUP: OnceLock<(Config, Renderer)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let config = Config::parse(CONFIG, Path::new("/nonexistent"), &|_| None)
            .expect("the fuzz config is valid");
        let renderer = Renderer::new(&config).expect("built-in templates compile");
        (config, renderer)
    })
}

/// Field `i` of the input: the input split at NUL bytes.
fn field<'a>(fields: &[&'a str], i: usize) -> &'a str {
    fields.get(i).copied().unwrap_or("")
}

/// Checks that a link-looking `<...>` in rendered text is one of kabar's own.
fn assert_only_safe_links(text: &str) {
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let tail = &rest[open..];
        let close = tail
            .find('>')
            .expect("a '<' in rendered text is a closed link");
        let link = &tail[1..close];
        let (url, label) = link.split_once('|').expect("a link has a label");
        let scheme = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        assert!(
            scheme.starts_with("http://") || scheme.starts_with("https://"),
            "link target is not http(s): {link:?}"
        );
        assert!(
            !url.contains(['<', '|', ' ', '\n']),
            "link target carries markup: {link:?}"
        );
        assert!(
            ["Source", "Silence", "Runbook", "Dashboard", "Open in Alertmanager"].contains(&label),
            "link label is not kabar's: {link:?}"
        );
        rest = &tail[close + 1..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let fields: Vec<&str> = text.split('\0').collect();

    // The escaping helpers on their own.
    let raw = field(&fields, 0);
    let escaped = escape_text(raw);
    assert!(
        !escaped.contains(['<', '>']),
        "escape_text left markup: {escaped:?}"
    );
    if let Some(link) = safe_link(raw) {
        assert!(
            link.to_ascii_lowercase().starts_with("http"),
            "not http(s): {link:?}"
        );
        assert!(
            !link.contains(['<', '>', '|', '"', ' ']),
            "unsafe link: {link:?}"
        );
    }
    let limit = 13 + usize::from(selector) * 16;
    let (fitted, _) = fit_text(raw, limit);
    assert!(
        fitted.encode_utf16().count() <= limit,
        "fit_text overflowed {limit}"
    );

    // A whole message from hostile alert data.
    let severity = match selector % 4 {
        0 => "critical",
        1 => "warning",
        2 => field(&fields, 1),
        _ => "",
    };
    let kind = MessageKind::ALL[usize::from(selector / 4) % MessageKind::ALL.len()];
    let payload = json!({
        "version": "4", "receiver": "ops", "status": "firing",
        "externalURL": field(&fields, 2),
        "groupKey": field(&fields, 3),
        "groupLabels": {"alertname": field(&fields, 0)},
        "commonLabels": {}, "commonAnnotations": {"summary": field(&fields, 4)},
        "alerts": [{
            "status": if kind == MessageKind::Resolved { "resolved" } else { "firing" },
            "labels": {"alertname": field(&fields, 0), "severity": severity,
                       "instance": field(&fields, 5), field(&fields, 6): field(&fields, 7)},
            "annotations": {"summary": field(&fields, 4), "description": field(&fields, 8),
                            "runbook_url": field(&fields, 9), "dashboard_url": field(&fields, 10)},
            "startsAt": "2026-11-28T00:52:38Z",
            "endsAt": "2026-11-28T01:19:38Z",
            "generatorURL": field(&fields, 11),
            "fingerprint": field(&fields, 12),
        }]
    });
    let Ok(notification) = Notification::parse(payload.to_string().as_bytes()) else {
        return;
    };
    let (config, renderer) = setup();
    let subject = match kind {
        MessageKind::Group | MessageKind::Digest => Subject::Alerts(AlertSet {
            firing: vec![0],
            ..AlertSet::default()
        }),
        _ => Subject::Alert(0),
    };
    // Mentions: exactly the configured ones, on messages announcing a firing alert. The
    // parsed severity: a fuzzed label name may have replaced the one set above.
    let announces_firing = matches!(
        kind,
        MessageKind::Firing | MessageKind::FiringAgain | MessageKind::Group | MessageKind::Digest
    );
    let expected = match (announces_firing, notification.alerts[0].severity()) {
        (true, "critical") => Some("<users/all>"),
        (true, "warning") => Some("<users/123>"),
        _ => None,
    };
    for space in ["text", "card"] {
        let thread_key = (selector % 2 == 0).then(|| format!("kabar:ops:{}", field(&fields, 12)));
        let (message, failures) = renderer.render(&RenderInput {
            space: &config.spaces[space],
            kind,
            subject: &subject,
            notification: &notification,
            thread_key,
            now: "2026-11-28T01:00:00Z".parse().expect("time"),
        });
        assert!(
            failures.is_empty(),
            "the built-in templates failed: {failures:?}"
        );
        let text_body = message.fallback_body.as_deref().unwrap_or(&message.body);
        check_text_body(text_body, expected);
        if message.fallback_body.is_some() {
            check_card_body(&message.body, expected);
        }
    }
});

/// A text message: within limits, never empty, the configured mention first and no other,
/// only kabar's own links.
fn check_text_body(body: &str, expected: Option<&str>) {
    assert!(body.len() <= MAX_BODY_BYTES, "body of {} bytes", body.len());
    let body: Value = serde_json::from_str(body).expect("the body is JSON");
    let text = body["text"].as_str().expect("a text message");
    assert!(!text.trim().is_empty(), "empty message");
    assert!(
        text.encode_utf16().count() <= MAX_TEXT_CHARS,
        "text too long"
    );
    let after_mentions = match expected {
        Some(mention) => text
            .strip_prefix(mention)
            .unwrap_or_else(|| panic!("missing configured mention {mention} in {text:?}")),
        None => text,
    };
    assert!(
        !after_mentions.to_ascii_lowercase().contains("<users/"),
        "a live mention from alert data: {text:?}"
    );
    assert_only_safe_links(after_mentions);
}

fn strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// A card message: within limits, mentions only in `text` and only the configured ones,
/// and every `<` in the card's strings opens markup the built-in card wrote.
fn check_card_body(body: &str, expected: Option<&str>) {
    assert!(body.len() <= MAX_BODY_BYTES, "body of {} bytes", body.len());
    let value: Value = serde_json::from_str(body).expect("the body is JSON");
    assert_eq!(value["text"].as_str(), expected, "mentions of a card");
    let mut shown = Vec::new();
    strings(&value["cardsV2"], &mut shown);
    strings(&value["fallbackText"], &mut shown);
    const MARKUP: &[&str] = &["<b>", "</b>", "<i>", "</i>", "<font color=\"#", "</font>"];
    for s in shown {
        for (at, _) in s.match_indices('<') {
            assert!(
                MARKUP.iter().any(|m| s[at..].starts_with(m)),
                "markup from alert data in a card: {s:?}"
            );
        }
    }
}
