//! Card bodies: what a card template produced, made into a `cardsV2` message Chat accepts.
//! It must not see raw alert data unescaped, nor leave a body over Chat's limits.
//!
//! A card template's output is parsed, normalised (trailing commas allowed, empty widgets
//! and sections dropped, long strings cut, template-written mentions defused), checked
//! against the cardsV2 shape, and fitted to Chat's limits by shedding widgets with a
//! visible "+N more" line.

use serde_json::{Map, Value, json};

use super::escape::{fit_text, neutralise_mentions, utf16_len};
use super::{MAX_BODY_BYTES, MAX_WIDGETS_PER_CARD};

/// No single string of a card is longer than this (UTF-16 units): a giant annotation is
/// cut here, so shedding whole widgets is left for what the count and size demand.
pub const MAX_CARD_STRING: usize = 2_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    #[error("output is not valid JSON: line {line}, column {column} of the output: {reason}")]
    Json {
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("{0}")]
    Shape(String),
    #[error("the card does not fit Chat's {MAX_BODY_BYTES}-byte limit even with its widgets shed")]
    TooLarge,
}

fn shape(message: impl Into<String>) -> CardError {
    CardError::Shape(message.into())
}

/// A card document, checked and normalised.
#[derive(Debug, Clone)]
pub struct Cards {
    /// The `cardsV2` array.
    cards: Vec<Value>,
    /// Strings were cut to fit.
    pub truncated: bool,
}

/// Parses and checks a card template's output: `{"cardsV2": [{"cardId", "card"}, ...]}`.
pub fn parse(output: &str) -> Result<Cards, CardError> {
    let cleaned = strip_trailing_commas(output);
    let value: Value = serde_json::from_str(&cleaned).map_err(|e| CardError::Json {
        line: e.line(),
        column: e.column(),
        reason: e
            .to_string()
            .split(" at line ")
            .next()
            .unwrap_or("")
            .to_owned(),
    })?;
    let Value::Object(mut top) = value else {
        return Err(shape(
            "output must be a JSON object with a \"cardsV2\" list",
        ));
    };
    if let Some(other) = top.keys().find(|k| *k != "cardsV2") {
        return Err(shape(format!(
            "unexpected top-level key {other:?}: a card template produces only \"cardsV2\" (kabar adds text, fallbackText and thread)"
        )));
    }
    let Some(Value::Array(cards)) = top.remove("cardsV2") else {
        return Err(shape("\"cardsV2\" must be a list of cards"));
    };
    if cards.is_empty() {
        return Err(shape("\"cardsV2\" is empty"));
    }
    let mut truncated = false;
    let several = cards.len() > 1;
    let mut checked = Vec::with_capacity(cards.len());
    for (i, mut entry) in cards.into_iter().enumerate() {
        let at = format!("cardsV2[{i}]");
        truncated |= normalise_strings(&mut entry);
        check_card(&mut entry, &at, several)?;
        checked.push(entry);
    }
    Ok(Cards {
        cards: checked,
        truncated,
    })
}

/// Removes commas that directly precede `]` or `}` outside strings, so templates can
/// emit optional list items each followed by a comma.
fn strip_trailing_commas(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut pending_comma: Option<usize> = None;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            ',' => {
                pending_comma = Some(out.len());
                out.push(c);
            }
            ']' | '}' => {
                if let Some(at) = pending_comma.take() {
                    out.remove(at);
                }
                out.push(c);
            }
            c if c.is_whitespace() => out.push(c),
            c => {
                pending_comma = None;
                if c == '"' {
                    in_string = true;
                }
                out.push(c);
            }
        }
    }
    out
}

/// Cuts long strings and defuses mentions in every string; true if something was cut.
fn normalise_strings(value: &mut Value) -> bool {
    match value {
        Value::String(s) => {
            let mut cut = false;
            if utf16_len(s) > MAX_CARD_STRING {
                let (fitted, _) = fit_text(s, MAX_CARD_STRING);
                *s = fitted;
                cut = true;
            }
            if s.to_ascii_lowercase().contains("<users/") {
                *s = neutralise_mentions(s);
            }
            cut
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |cut, item| normalise_strings(item) | cut),
        Value::Object(map) => map
            .values_mut()
            .fold(false, |cut, item| normalise_strings(item) | cut),
        _ => false,
    }
}

fn check_card(entry: &mut Value, at: &str, several: bool) -> Result<(), CardError> {
    let Value::Object(entry) = entry else {
        return Err(shape(format!(
            "{at} must be an object {{\"cardId\", \"card\"}}"
        )));
    };
    match entry.get("cardId") {
        Some(Value::String(id)) if !id.is_empty() => {}
        None if !several => {}
        _ => {
            return Err(shape(format!(
                "{at}.cardId must be a non-empty string (required when there are several cards)"
            )));
        }
    }
    let Some(Value::Object(card)) = entry.get_mut("card") else {
        return Err(shape(format!("{at}.card must be an object")));
    };
    if let Some(header) = card.get("header") {
        let title = header.get("title").and_then(Value::as_str).unwrap_or("");
        if title.trim().is_empty() {
            return Err(shape(format!("{at}.card.header needs a non-empty title")));
        }
    }
    let Some(Value::Array(sections)) = card.get_mut("sections") else {
        return Err(shape(format!("{at}.card.sections must be a list")));
    };
    for (s, section) in sections.iter_mut().enumerate() {
        let Some(Value::Array(widgets)) = section.get_mut("widgets") else {
            return Err(shape(format!(
                "{at}.card.sections[{s}].widgets must be a list"
            )));
        };
        widgets.retain(|w| !is_empty_widget(w));
        for (w, widget) in widgets.iter().enumerate() {
            let kinds = widget.as_object().map_or(0, |o| {
                o.keys().filter(|k| *k != "horizontalAlignment").count()
            });
            if kinds != 1 {
                return Err(shape(format!(
                    "{at}.card.sections[{s}].widgets[{w}] must be an object with exactly one widget type"
                )));
            }
        }
    }
    // Chat refuses a section without widgets; templates produce them naturally from
    // optional content, so they are dropped rather than refused.
    sections.retain(|section| widget_count(section) > 0);
    if sections.is_empty() {
        return Err(shape(format!("{at}.card has no widgets")));
    }
    Ok(())
}

/// A widget that would show nothing, or that Chat refuses for being empty.
fn is_empty_widget(widget: &Value) -> bool {
    let blank = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .is_none_or(|s| s.trim().is_empty())
    };
    if let Some(p) = widget.get("textParagraph") {
        return blank(p.get("text"));
    }
    if let Some(d) = widget.get("decoratedText") {
        return blank(d.get("text"));
    }
    if let Some(b) = widget.get("buttonList") {
        return b
            .get("buttons")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
    }
    false
}

fn widget_count(section: &Value) -> usize {
    section
        .get("widgets")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

fn is_button_list(widget: &Value) -> bool {
    widget.get("buttonList").is_some()
}

/// The message body of cards, with the parts kabar adds.
fn body(
    cards: &[Value],
    fallback_text: &str,
    mentions: Option<&str>,
    thread_key: Option<&str>,
) -> String {
    let mut body = Map::new();
    if let Some(mentions) = mentions {
        body.insert("text".into(), json!(mentions));
    }
    body.insert("cardsV2".into(), Value::Array(cards.to_vec()));
    body.insert("fallbackText".into(), json!(fallback_text));
    if let Some(key) = thread_key {
        body.insert("thread".into(), json!({"threadKey": key}));
    }
    Value::Object(body).to_string()
}

/// A card message that fits: the body and how many widgets were shed to fit.
pub struct Fitted {
    pub body: String,
    pub shed: usize,
}

/// Builds the body, shedding widgets from the end (buttons and the first widget last)
/// until every card has at most 100 widgets and the body fits 32,000 bytes.
pub fn fit(
    cards: &Cards,
    fallback_text: &str,
    mentions: Option<&str>,
    thread_key: Option<&str>,
) -> Result<Fitted, CardError> {
    let mut cards = cards.cards.clone();
    let mut shed = vec![0usize; cards.len()];
    loop {
        let candidate = with_more_lines(&cards, &shed);
        let text = body(&candidate, fallback_text, mentions, thread_key);
        let over_count = candidate
            .iter()
            .position(|card| total_widgets(card) > MAX_WIDGETS_PER_CARD);
        if over_count.is_none() && text.len() <= MAX_BODY_BYTES {
            return Ok(Fitted {
                body: text,
                shed: shed.iter().sum(),
            });
        }
        // Shed as much as the excess demands in one step (serialising a big body once per
        // removed widget would be quadratic), then measure again.
        let (target, mut widgets_needed, mut bytes_needed) = match over_count {
            Some(i) => (i, total_widgets(&candidate[i]) - MAX_WIDGETS_PER_CARD, 0),
            None => (largest_card(&cards), 0, text.len() - MAX_BODY_BYTES),
        };
        loop {
            let Some(removed) = shed_one(&mut cards[target]) else {
                return Err(CardError::TooLarge);
            };
            shed[target] += 1;
            widgets_needed = widgets_needed.saturating_sub(1);
            bytes_needed = bytes_needed.saturating_sub(removed);
            if widgets_needed == 0 && bytes_needed == 0 {
                break;
            }
        }
    }
}

fn sections(card: &Value) -> &[Value] {
    card.pointer("/card/sections")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn total_widgets(card: &Value) -> usize {
    sections(card).iter().map(widget_count).sum()
}

fn largest_card(cards: &[Value]) -> usize {
    cards
        .iter()
        .enumerate()
        .max_by_key(|(_, c)| c.to_string().len())
        .map_or(0, |(i, _)| i)
}

/// Removes the last widget that is neither a button list nor the card's first widget;
/// returns its size in the body, or None if nothing can go.
fn shed_one(card: &mut Value) -> Option<usize> {
    let Some(Value::Array(sections)) = card.pointer_mut("/card/sections") else {
        return None;
    };
    for s in (0..sections.len()).rev() {
        let Some(Value::Array(widgets)) = sections[s].get_mut("widgets") else {
            continue;
        };
        let first_kept = usize::from(s == 0);
        if let Some(w) = (first_kept..widgets.len())
            .rev()
            .find(|w| !is_button_list(&widgets[*w]))
        {
            let removed = widgets.remove(w);
            // The widget and its comma; an emptied section goes with its skeleton.
            let mut size = removed.to_string().len() + 1;
            if widgets.is_empty() {
                size += sections.remove(s).to_string().len() + 1;
            }
            return Some(size);
        }
    }
    None
}

/// The cards with a "+N more" line where widgets were shed, before their buttons.
fn with_more_lines(cards: &[Value], shed: &[usize]) -> Vec<Value> {
    let mut out = cards.to_vec();
    for (card, n) in out.iter_mut().zip(shed) {
        if *n == 0 {
            continue;
        }
        let line = json!({"textParagraph": {"text": format!("<i>+{n} more not shown</i>")}});
        if let Some(Value::Array(sections)) = card.pointer_mut("/card/sections") {
            let buttons_at = sections
                .iter()
                .position(|s| {
                    s.get("widgets")
                        .and_then(Value::as_array)
                        .is_some_and(|w| w.iter().all(is_button_list))
                })
                .unwrap_or(sections.len());
            sections.insert(buttons_at, json!({"widgets": [line]}));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card_with(widgets: Vec<Value>) -> String {
        json!({"cardsV2": [{"cardId": "a", "card": {"header": {"title": "T"}, "sections": [{"widgets": widgets}]}}]})
            .to_string()
    }

    fn paragraph(text: &str) -> Value {
        json!({"textParagraph": {"text": text}})
    }

    #[test]
    fn trailing_commas_are_allowed_outside_strings() {
        assert_eq!(strip_trailing_commas("[1, 2, ]"), "[1, 2 ]");
        assert_eq!(
            strip_trailing_commas("{\"a\": \",]\",\n}"),
            "{\"a\": \",]\"\n}"
        );
        assert_eq!(
            strip_trailing_commas("{\"a\": \"\\\",}\"}"),
            "{\"a\": \"\\\",}\"}"
        );
        let cards = parse(
            "{\"cardsV2\": [{\"cardId\": \"a\", \"card\": {\"sections\": [{\"widgets\": [{\"textParagraph\": {\"text\": \"x\"}},]},]},},]}",
        )
        .expect("parses");
        assert_eq!(cards.cards.len(), 1);
    }

    #[test]
    fn shape_errors_are_precise() {
        let bad = [
            ("[]", "JSON object"),
            ("{\"cardsV2\": []}", "empty"),
            (
                "{\"cardsV2\": [], \"text\": \"x\"}",
                "unexpected top-level key",
            ),
            (
                "{\"cardsV2\": [{\"card\": {\"sections\": []}}]}",
                "no widgets",
            ),
            (
                "{\"cardsV2\": [{\"card\": {\"header\": {\"title\": \"\"}, \"sections\": [{\"widgets\": [{\"divider\": {}}]}]}}]}",
                "title",
            ),
            (
                "{\"cardsV2\": [{\"card\": {\"sections\": [{\"widgets\": [{\"divider\": {}, \"image\": {}}]}]}}]}",
                "exactly one widget type",
            ),
        ];
        for (output, expected) in bad {
            let err = parse(output).expect_err(output).to_string();
            assert!(err.contains(expected), "{output}: {err}");
        }
        let err = parse("{\n\"cardsV2\": [\n  {\"card\": }\n]}").expect_err("syntax");
        assert!(matches!(err, CardError::Json { line: 3, .. }), "{err}");
    }

    #[test]
    fn empty_widgets_and_sections_are_dropped() {
        let output = json!({"cardsV2": [{"card": {"sections": [
            {"widgets": [paragraph(" "), {"buttonList": {"buttons": []}}]},
            {"widgets": [paragraph("kept")]}
        ]}}]})
        .to_string();
        let cards = parse(&output).expect("parses");
        assert_eq!(sections(&cards.cards[0]).len(), 1);
        assert_eq!(total_widgets(&cards.cards[0]), 1);
    }

    #[test]
    fn template_mentions_and_long_strings_are_defused() {
        let long = "x".repeat(MAX_CARD_STRING * 2);
        let cards = parse(&card_with(vec![
            paragraph("<users/all> hi"),
            paragraph(&long),
        ]))
        .expect("parses");
        assert!(cards.truncated);
        let text = cards.cards[0].to_string();
        assert!(!text.contains("<users/"), "{text}");
    }

    #[test]
    fn too_many_widgets_are_shed_with_a_more_line() {
        let widgets: Vec<Value> = (0..150).map(|i| paragraph(&format!("w{i}"))).collect();
        let cards = parse(&card_with(widgets)).expect("parses");
        let fitted = fit(&cards, "fallback", None, Some("k")).expect("fits");
        let body: Value = serde_json::from_str(&fitted.body).expect("json");
        let card = &body["cardsV2"][0];
        assert_eq!(total_widgets(card), MAX_WIDGETS_PER_CARD);
        assert_eq!(fitted.shed, 51);
        assert!(fitted.body.contains("+51 more not shown"));
        assert_eq!(body["thread"]["threadKey"], "k");
        assert_eq!(body["fallbackText"], "fallback");
    }

    #[test]
    fn oversize_bodies_shed_but_keep_buttons_and_first_widget() {
        let mut widgets = vec![paragraph("status")];
        widgets.extend((0..40).map(|_| paragraph(&"y".repeat(1_500))));
        widgets.push(json!({"buttonList": {"buttons": [{"text": "Runbook", "onClick": {"openLink": {"url": "https://r.example"}}}]}}));
        let cards = parse(&card_with(widgets)).expect("parses");
        let fitted = fit(&cards, "fallback", Some("<users/all>"), None).expect("fits");
        assert!(fitted.body.len() <= MAX_BODY_BYTES);
        assert!(fitted.shed > 0);
        assert!(fitted.body.contains("status") && fitted.body.contains("Runbook"));
        assert!(fitted.body.contains("\"text\":\"<users/all>\""));
    }

    #[test]
    fn a_card_that_cannot_fit_is_an_error() {
        let widgets = vec![paragraph(&"z".repeat(MAX_CARD_STRING))];
        let cards = parse(&card_with(widgets)).expect("parses");
        let huge_fallback = "f".repeat(MAX_BODY_BYTES);
        assert_eq!(
            fit(&cards, &huge_fallback, None, None).err(),
            Some(CardError::TooLarge)
        );
    }

    fn buttons() -> Value {
        json!({"buttonList": {"buttons": [{"text": "B", "onClick": {"openLink": {"url": "https://b.example"}}}]}})
    }

    #[test]
    fn fitting_ends_when_nothing_more_may_be_shed() {
        // Button lists are never shed: 150 of them cannot get under 100 widgets.
        let widgets: Vec<Value> = (0..150).map(|_| buttons()).collect();
        let cards = parse(&card_with(widgets)).expect("parses");
        assert_eq!(
            fit(&cards, "fallback", None, None).err(),
            Some(CardError::TooLarge)
        );
        // Nor can a thread key longer than a body, however much is shed.
        let widgets: Vec<Value> = (0..500).map(|i| paragraph(&format!("w{i}"))).collect();
        let cards = parse(&card_with(widgets)).expect("parses");
        let key = "k".repeat(MAX_BODY_BYTES);
        assert_eq!(
            fit(&cards, "fallback", None, Some(&key)).err(),
            Some(CardError::TooLarge)
        );
    }

    #[test]
    fn a_card_of_20k_widgets_is_shed_in_a_few_rounds() {
        let widgets: Vec<Value> = (0..20_000)
            .map(|i| paragraph(&format!("widget {i} {}", "p".repeat(i % 50))))
            .collect();
        let cards = parse(&card_with(widgets)).expect("parses");
        let fitted = fit(&cards, "fallback", None, Some("k")).expect("fits");
        assert!(fitted.body.len() <= MAX_BODY_BYTES);
        let body: Value = serde_json::from_str(&fitted.body).expect("json");
        assert!(total_widgets(&body["cardsV2"][0]) <= MAX_WIDGETS_PER_CARD);
        assert!(
            fitted
                .body
                .contains(&format!("+{} more not shown", fitted.shed))
        );
        assert!(fitted.shed >= 20_000 - MAX_WIDGETS_PER_CARD);
    }
}
