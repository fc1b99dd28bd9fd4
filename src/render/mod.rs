//! Rendering: handlebars templates into Chat request bodies that Chat will accept.
//! It must not decide what is posted (planning does) nor queue or send anything.
//!
//! Alert data is escaped on its way into a message, so a label can neither mention anyone
//! nor forge a link; mentions are added by kabar from config, after the template ran, and
//! any mention a template produced itself is neutralised. Every body is checked against
//! Chat's limits here, before it is queued.

mod card;
mod context;
mod escape;
mod helpers;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use handlebars::{Handlebars, RenderError};
use jiff::Timestamp;
use serde_json::{Value, json};

pub use card::{CardError, MAX_CARD_STRING};
pub use context::{
    LIST_LIMIT, MAX_ANNOTATION_CHARS, MAX_CONTEXT_LABELS, MAX_LABEL_NAME_CHARS,
    MAX_LABEL_VALUE_CHARS, MAX_LABELS_SHOWN, MAX_URL_CHARS,
};
pub(crate) use escape::is_bidi_control;
pub use escape::{
    TRUNCATION_MARKER, alerts_link, escape_card, escape_text, fit_text, neutralise_mentions,
    safe_link, silence_link, url_encode, utf16_len,
};
pub use helpers::{humanize_seconds, severity_color, severity_icon, title_case};

use crate::config::{Config, Format, Space};
use crate::payload::{Notification, elide_middle};
use crate::plan::{MessageKind, Subject};

/// Chat rejects `text` longer than this (counted here in UTF-16 units, which is never
/// fewer than Chat's count).
pub const MAX_TEXT_CHARS: usize = 4096;
/// Chat rejects a message body larger than this.
pub const MAX_BODY_BYTES: usize = 32_000;
/// Chat shows at most this many widgets of a card and ignores the rest.
pub const MAX_WIDGETS_PER_CARD: usize = 100;
/// A card's `fallbackText` (what notifications show) is its text's first line, cut here.
const MAX_FALLBACK_TEXT: usize = 300;

const BUILTIN_TEXT: &str = include_str!("../../templates/text.hbs");
const BUILTIN_TEXT_NAME: &str = "builtin/text.hbs";
const BUILTIN_CARD: &str = include_str!("../../templates/card.hbs");
const BUILTIN_CARD_NAME: &str = "builtin/card.hbs";

#[derive(Debug, thiserror::Error)]
pub enum RenderFailure {
    #[error("template {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A template that does not compile; the message carries line and column.
    #[error("template {path}: {message}")]
    Compile { path: String, message: String },
    #[error("template {template}: {message}")]
    Render { template: String, message: String },
    #[error("template {template} produced an empty message")]
    Empty { template: String },
    #[error("card template {template}: {source}")]
    Card { template: String, source: CardError },
}

/// A Chat request body, ready to queue: it fits Chat's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedMessage {
    /// The exact JSON body to POST.
    pub body: String,
    /// For a card: the same message as text, sent if Chat refuses the card.
    pub fallback_body: Option<String>,
    pub thread_key: Option<String>,
    /// Text or card content had to be cut to fit.
    pub truncated: bool,
    /// The space's own template failed and the built-in one was used.
    pub fell_back: bool,
}

/// One message to render.
pub struct RenderInput<'a> {
    pub space: &'a Space,
    pub kind: MessageKind,
    pub subject: &'a Subject,
    pub notification: &'a Notification,
    pub thread_key: Option<String>,
    pub now: Timestamp,
}

/// Which registered templates a space uses.
#[derive(Debug, Clone)]
struct SpaceTemplates {
    text: String,
    card: String,
}

/// The compiled templates of a configuration. Cheap to share.
#[derive(Clone)]
pub struct Renderer {
    /// Text templates, escaping values for Chat text.
    text: Arc<Handlebars<'static>>,
    /// Card templates, escaping values for JSON strings read as card HTML.
    card: Arc<Handlebars<'static>>,
    spaces: BTreeMap<String, SpaceTemplates>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("spaces", &self.spaces)
            .finish()
    }
}

fn registry(escape: fn(&str) -> String) -> Handlebars<'static> {
    let mut registry = Handlebars::new();
    registry.register_escape_fn(escape);
    helpers::register_helpers(&mut registry);
    registry
}

fn register(
    registry: &mut Handlebars<'static>,
    name: &str,
    source: &str,
) -> Result<(), RenderFailure> {
    registry
        .register_template_string(name, source)
        .map_err(|e| RenderFailure::Compile {
            path: name.to_owned(),
            message: template_error_message(&e),
        })
}

/// Registers the file at `path` once, under its path; returns that name.
fn register_file(registry: &mut Handlebars<'static>, path: &Path) -> Result<String, RenderFailure> {
    let name = path.display().to_string();
    if !registry.has_template(&name) {
        let source = std::fs::read_to_string(path).map_err(|source| RenderFailure::Read {
            path: path.to_owned(),
            source,
        })?;
        register(registry, &name, &source)?;
    }
    Ok(name)
}

impl Renderer {
    /// Compiles the built-in templates and every template file the config names.
    pub fn new(config: &Config) -> Result<Renderer, RenderFailure> {
        let mut text = registry(escape_text);
        let mut card = registry(escape_card);
        register(&mut text, BUILTIN_TEXT_NAME, BUILTIN_TEXT)?;
        register(&mut card, BUILTIN_CARD_NAME, BUILTIN_CARD)?;
        let mut spaces = BTreeMap::new();
        for space in config.spaces.values() {
            let paths = &space.options.templates;
            let templates = SpaceTemplates {
                text: match &paths.text {
                    Some(path) => register_file(&mut text, path)?,
                    None => BUILTIN_TEXT_NAME.to_owned(),
                },
                card: match &paths.card {
                    Some(path) => register_file(&mut card, path)?,
                    None => BUILTIN_CARD_NAME.to_owned(),
                },
            };
            spaces.insert(space.name.clone(), templates);
        }
        Ok(Renderer {
            text: Arc::new(text),
            card: Arc::new(card),
            spaces,
        })
    }

    /// The template files a space uses for its format (text; or card, then text for the
    /// fallback), built-in ones left out.
    pub fn templates_of(&self, space: &Space) -> Vec<&str> {
        let Some(t) = self.spaces.get(&space.name) else {
            return Vec::new();
        };
        let mut names = Vec::new();
        if space.options.format == Format::Card {
            names.push(t.card.as_str());
        }
        names.push(t.text.as_str());
        names.retain(|n| *n != BUILTIN_TEXT_NAME && *n != BUILTIN_CARD_NAME);
        names
    }

    fn names(&self, space: &str) -> (&str, &str) {
        self.spaces
            .get(space)
            .map_or((BUILTIN_TEXT_NAME, BUILTIN_CARD_NAME), |t| {
                (t.text.as_str(), t.card.as_str())
            })
    }

    /// Renders with the space's templates, falling back to the built-in ones if they fail,
    /// so an alert is never dropped for a template bug. The failures are returned for
    /// logging and counting.
    pub fn render(&self, input: &RenderInput<'_>) -> (RenderedMessage, Vec<RenderFailure>) {
        let (context, capped) = context::message_context(input);
        let (text_name, card_name) = self.names(&input.space.name);
        let mut failures = Vec::new();
        let text = match self.render_text(text_name, &context) {
            Ok(text) => text,
            Err(failure) => {
                failures.push(failure);
                self.render_text(BUILTIN_TEXT_NAME, &context)
                    .unwrap_or_else(|_| minimal_text(input))
            }
        };
        let mut text_message = finish_text(input, &text);
        text_message.truncated |= capped;
        if input.space.options.format == Format::Text {
            let fell_back = !failures.is_empty();
            return (
                RenderedMessage {
                    fell_back,
                    ..text_message
                },
                failures,
            );
        }
        let card = self
            .render_card(card_name, &context, input, &text)
            .or_else(|failure| {
                failures.push(failure);
                self.render_card(BUILTIN_CARD_NAME, &context, input, &text)
            });
        let fell_back = !failures.is_empty();
        let message = match card {
            Ok((body, truncated)) => RenderedMessage {
                body,
                fallback_body: Some(text_message.body),
                thread_key: input.thread_key.clone(),
                truncated: truncated || text_message.truncated,
                fell_back,
            },
            // Not even the built-in card fits (a huge fallback text, say): text it is.
            Err(failure) => {
                failures.push(failure);
                RenderedMessage {
                    fell_back: true,
                    ..text_message
                }
            }
        };
        (message, failures)
    }

    /// Renders the space's own templates strictly, for `kabar check`: any failure is an
    /// error, none falls back.
    pub fn render_strict(&self, input: &RenderInput<'_>) -> Result<RenderedMessage, RenderFailure> {
        let (context, capped) = context::message_context(input);
        let (text_name, card_name) = self.names(&input.space.name);
        let text = self.render_text(text_name, &context)?;
        let mut text_message = finish_text(input, &text);
        text_message.truncated |= capped;
        if input.space.options.format == Format::Text {
            return Ok(text_message);
        }
        let (body, truncated) = self.render_card(card_name, &context, input, &text)?;
        Ok(RenderedMessage {
            body,
            fallback_body: Some(text_message.body),
            thread_key: input.thread_key.clone(),
            truncated: truncated || text_message.truncated,
            fell_back: false,
        })
    }

    fn render_text(&self, template: &str, context: &Value) -> Result<String, RenderFailure> {
        let text = self
            .text
            .render(template, context)
            .map_err(|e| RenderFailure::Render {
                template: template.to_owned(),
                message: render_error_message(&e),
            })?;
        let text = neutralise_mentions(text.trim());
        if text.is_empty() {
            return Err(RenderFailure::Empty {
                template: template.to_owned(),
            });
        }
        Ok(text)
    }

    /// A card body and whether anything was cut or shed to fit.
    fn render_card(
        &self,
        template: &str,
        context: &Value,
        input: &RenderInput<'_>,
        text: &str,
    ) -> Result<(String, bool), RenderFailure> {
        let card_failure = |source| RenderFailure::Card {
            template: template.to_owned(),
            source,
        };
        let output = self
            .card
            .render(template, context)
            .map_err(|e| RenderFailure::Render {
                template: template.to_owned(),
                message: render_error_message(&e),
            })?;
        let cards = card::parse(&output).map_err(card_failure)?;
        let mentions = mention_markup(input);
        let fitted = card::fit(
            &cards,
            &fallback_text(text),
            mentions.as_deref(),
            input.thread_key.as_deref(),
        )
        .map_err(card_failure)?;
        Ok((fitted.body, cards.truncated || fitted.shed > 0))
    }
}

/// A template error's reason is cut to about this many characters: a helper's reason can
/// quote the alert value it choked on (`date` names the text that is no time), and these
/// messages go to logs and `kabar check` output.
const MAX_TEMPLATE_ERROR_CHARS: usize = 300;

fn template_error_message(e: &handlebars::TemplateError) -> String {
    let reason = elide_middle(&e.reason().to_string(), MAX_TEMPLATE_ERROR_CHARS).into_owned();
    match e.pos() {
        Some((line, column)) => format!("line {line}, column {column}: {reason}"),
        None => reason,
    }
}

fn render_error_message(e: &RenderError) -> String {
    let mut message = elide_middle(&e.reason().to_string(), MAX_TEMPLATE_ERROR_CHARS).into_owned();
    if let Some(line) = e.line_no {
        message = format!(
            "line {line}, column {}: {message}",
            e.column_no.unwrap_or(0)
        );
    }
    message
}

/// Used only if the built-in template itself fails, which tests rule out; an alert still
/// gets a message.
fn minimal_text(input: &RenderInput<'_>) -> String {
    let names: Vec<String> = context::subject_alerts(input.subject, input.notification)
        .iter()
        .take(LIST_LIMIT)
        .map(|a| escape_text(a.name()))
        .collect();
    format!(
        "{} · {}",
        input.kind.as_str().to_uppercase(),
        names.join(", ")
    )
}

/// The configured mentions of this message in Chat's markup, if any.
fn mention_markup(input: &RenderInput<'_>) -> Option<String> {
    let pings: Vec<String> = context::mentions(input)
        .iter()
        .map(|m| m.markup())
        .collect();
    (!pings.is_empty()).then(|| pings.join(" "))
}

/// What notifications show for a card: the text's first line, without Chat markup.
fn fallback_text(text: &str) -> String {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let plain: String = first.chars().filter(|c| *c != '*').collect();
    fit_text(plain.trim(), MAX_FALLBACK_TEXT).0
}

/// Adds configured mentions, fits the text into Chat's limits and builds the body.
fn finish_text(input: &RenderInput<'_>, text: &str) -> RenderedMessage {
    let text = match mention_markup(input) {
        Some(pings) => format!("{pings}\n{text}"),
        None => text.to_owned(),
    };
    let (text, cut) = fit_text(&text, MAX_TEXT_CHARS);
    let thread_key = input.thread_key.as_deref();
    if let Some((body, shrunk)) = fit_body(&text, thread_key) {
        return RenderedMessage {
            body,
            fallback_body: None,
            thread_key: input.thread_key.clone(),
            truncated: cut || shrunk,
            fell_back: false,
        };
    }
    // The thread key alone leaves no room for any text. Keys kabar derives are short (long
    // fingerprints are hashed), so this is a last resort: the alert is still posted,
    // top-level, rather than as a body Chat refuses.
    let body = fit_body(&text, None).map_or_else(
        || build_text_body(TRUNCATION_MARKER.trim(), None),
        |(body, _)| body,
    );
    RenderedMessage {
        body,
        fallback_body: None,
        thread_key: None,
        truncated: true,
        fell_back: false,
    }
}

/// The text body of `text` within [`MAX_BODY_BYTES`], and whether the text had to be cut
/// for it; None if not even the shortest text fits beside `thread_key`.
fn fit_body(text: &str, thread_key: Option<&str>) -> Option<(String, bool)> {
    // The shortest text still worth sending: the marker and one character.
    let shortest = utf16_len(TRUNCATION_MARKER) + 1;
    let mut text = Cow::Borrowed(text);
    let mut cut = false;
    loop {
        let body = build_text_body(&text, thread_key);
        if body.len() <= MAX_BODY_BYTES {
            return Some((body, cut));
        }
        // JSON escaping made the body too large: cut the text by the excess and retry.
        // Every round makes the text strictly shorter (`keep` is below its length), so
        // the loop ends whatever the input.
        let length = utf16_len(&text);
        if length <= shortest {
            return None;
        }
        let excess = body.len() - MAX_BODY_BYTES;
        let keep = length
            .saturating_sub(excess + TRUNCATION_MARKER.len())
            .clamp(shortest, length - 1);
        text = Cow::Owned(fit_text(&text, keep).0);
        cut = true;
    }
}

fn build_text_body(text: &str, thread_key: Option<&str>) -> String {
    let body = match thread_key {
        Some(key) => json!({"text": text, "thread": {"threadKey": key}}),
        None => json!({"text": text}),
    };
    body.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    const NOW: &str = "2026-11-28T00:57:38Z";

    /// A config with one dry-run space "ops" in text format, plus `extra` space keys.
    fn config(extra: &str) -> Config {
        config_with_format("text", extra)
    }

    fn config_with_format(format: &str, extra: &str) -> Config {
        Config::parse(
            &format!("spaces:\n  ops:\n    dry_run: true\n    format: {format}\n{extra}"),
            Path::new("."),
            &|_| None,
        )
        .expect("valid config")
    }

    fn fixture(name: &str) -> Notification {
        let path = format!(
            "{}/tests/fixtures/alertmanager/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        Notification::parse(&std::fs::read(path).expect("fixture")).expect("parses")
    }

    /// A config whose space "ops" uses a template file with `source`.
    fn with_template(source: &str) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.hbs");
        std::fs::write(&path, source).expect("write template");
        let c = config(&format!("    templates: {{text: '{}'}}\n", path.display()));
        (dir, c)
    }

    const FIRST: Subject = Subject::Alert(0);

    fn input<'a>(config: &'a Config, kind: MessageKind, n: &'a Notification) -> RenderInput<'a> {
        input_about(config, kind, &FIRST, n)
    }

    fn input_about<'a>(
        config: &'a Config,
        kind: MessageKind,
        subject: &'a Subject,
        n: &'a Notification,
    ) -> RenderInput<'a> {
        RenderInput {
            space: &config.spaces["ops"],
            kind,
            subject,
            notification: n,
            thread_key: Some("kabar:ops:x".into()),
            now: NOW.parse().expect("now"),
        }
    }

    fn render(config: &Config, kind: MessageKind, n: &Notification) -> RenderedMessage {
        let renderer = Renderer::new(config).expect("templates compile");
        let (message, failures) = renderer.render(&input(config, kind, n));
        assert!(failures.is_empty(), "{failures:?}");
        message
    }

    fn text_of(message: &RenderedMessage) -> String {
        let body: Value = serde_json::from_str(&message.body).expect("body is JSON");
        body["text"].as_str().expect("text").to_owned()
    }

    #[test]
    fn firing_text_matches_the_design() {
        let n = fixture("firing.json");
        let message = render(&config(""), MessageKind::Firing, &n);
        let text = text_of(&message);
        let expected = "🔴 *FIRING* · *DiskFull* · critical\nDisk almost full on db1\n/var is 97% full\ninstance db1:9100\nSince 00:52 UTC (5m) · <http://prometheus.local/graph?g0.expr=up|Source> · <http://vm:19093/#/silences/new?filter=%7Balertname%3D%22DiskFull%22%2Cinstance%3D%22db1%3A9100%22%2Cseverity%3D%22critical%22%7D|Silence>";
        assert_eq!(text, expected);
        let body: Value = serde_json::from_str(&message.body).expect("json");
        assert_eq!(body["thread"]["threadKey"], "kabar:ops:x");
        assert!(!message.truncated && !message.fell_back);
    }

    #[test]
    fn resolved_and_reminder_texts() {
        let n = fixture("resolved.json");
        let text = text_of(&render(&config(""), MessageKind::Resolved, &n));
        assert_eq!(
            text,
            "✅ *RESOLVED* · *DiskFull* after 3s\nDisk almost full on db1"
        );
        let n = fixture("firing.json");
        let text = text_of(&render(&config(""), MessageKind::Reminder, &n));
        assert!(
            text.starts_with(
                "⏰ Still firing after 5m · *DiskFull* · critical\nDisk almost full on db1"
            ),
            "{text}"
        );
    }

    #[test]
    fn alert_data_cannot_mention_or_forge_links() {
        let mut n = fixture("firing.json");
        let alert = &mut n.alerts[0];
        alert
            .labels
            .insert("alertname".into(), "<users/all> now".into());
        alert.annotations.insert(
            "summary".into(),
            "<https://evil.example|bank.example> \u{202E}txet".into(),
        );
        alert
            .annotations
            .insert("runbook_url".into(), "javascript:alert(1)".into());
        alert.generator_url = "https://prom.example/graph?x=1|Fake".into();
        let text = text_of(&render(&config(""), MessageKind::Firing, &n));
        assert!(!text.contains("<users/"), "{text}");
        assert!(!text.contains("<https://evil"), "{text}");
        assert!(!text.contains('\u{202E}'), "{text}");
        assert!(!text.contains("javascript"), "{text}");
        assert!(text.contains("‹users/all› now"), "{text}");
        assert!(
            text.contains("<https://prom.example/graph?x=1%7CFake|Source>"),
            "{text}"
        );
    }

    #[test]
    fn mentions_come_from_config_only_on_firing() {
        let c = config("    mentions: {critical: [all, '12345']}\n");
        let n = fixture("firing.json");
        let text = text_of(&render(&c, MessageKind::Firing, &n));
        assert!(
            text.starts_with("<users/all> <users/12345>\n🔴 *FIRING*"),
            "{text}"
        );
        let text = text_of(&render(&c, MessageKind::Reminder, &n));
        assert!(!text.contains("<users/"), "{text}");
    }

    #[test]
    fn a_template_cannot_add_mentions_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.hbs");
        std::fs::write(
            &path,
            "<users/all> {{{alert.labels.alertname}}} <USERS/123>",
        )
        .expect("write");
        let c = config(&format!("    templates: {{text: '{}'}}\n", path.display()));
        let mut n = fixture("firing.json");
        n.alerts[0]
            .labels
            .insert("alertname".into(), "<users/all>".into());
        let text = text_of(&render(&c, MessageKind::Firing, &n));
        assert!(!text.to_lowercase().contains("<users/"), "{text}");
    }

    #[test]
    fn failing_user_template_falls_back_to_builtin() {
        let (_dir, c) = with_template("{{truncate alert.name \"many\"}}");
        let renderer = Renderer::new(&c).expect("compiles");
        let n = fixture("firing.json");
        let input = input(&c, MessageKind::Firing, &n);
        let (message, failures) = renderer.render(&input);
        assert!(message.fell_back);
        assert!(text_of(&message).starts_with("🔴 *FIRING* · *DiskFull*"));
        let failure = failures.first().expect("failure reported").to_string();
        assert!(failure.contains("truncate"), "{failure}");
        assert!(renderer.render_strict(&input).is_err());
    }

    #[test]
    fn a_failing_helper_quotes_the_value_only_in_part() {
        let (_dir, c) = with_template("{{date alert.annotations.description}}\n");
        let mut n = fixture("firing.json");
        n.alerts[0]
            .annotations
            .insert("description".into(), "not a time ".repeat(100_000));
        let renderer = Renderer::new(&c).expect("compiles");
        let (message, failures) = renderer.render(&input(&c, MessageKind::Firing, &n));
        assert!(message.fell_back);
        let failure = failures.first().expect("reported").to_string();
        assert!(failure.len() < 600, "{} bytes: {failure}", failure.len());
        assert!(failure.contains("date: \"not a time"), "{failure}");
    }

    #[test]
    fn broken_template_is_reported_with_line() {
        let (_dir, c) = with_template("ok\n{{#if x}}never closed\n");
        let err = Renderer::new(&c).expect_err("does not compile").to_string();
        assert!(err.contains("t.hbs") && err.contains("line"), "{err}");
    }

    #[test]
    fn empty_output_falls_back() {
        let (_dir, c) = with_template("  {{alert.labels.nothing}}\n");
        let n = fixture("firing.json");
        let renderer = Renderer::new(&c).expect("compiles");
        let (message, failures) = renderer.render(&input(&c, MessageKind::Firing, &n));
        assert!(message.fell_back);
        assert!(matches!(failures[..], [RenderFailure::Empty { .. }]));
    }

    #[test]
    fn long_text_is_cut_with_a_marker_within_limits() {
        let mut n = fixture("firing.json");
        n.alerts[0]
            .annotations
            .insert("description".into(), "🔥x".repeat(10_000));
        let message = render(&config(""), MessageKind::Firing, &n);
        let text = text_of(&message);
        assert!(message.truncated);
        assert!(utf16_len(&text) <= MAX_TEXT_CHARS, "{}", utf16_len(&text));
        assert!(text.ends_with(TRUNCATION_MARKER));
        assert!(message.body.len() <= MAX_BODY_BYTES);
    }

    #[test]
    fn control_characters_cannot_blow_the_body_limit() {
        let mut n = fixture("firing.json");
        n.alerts[0]
            .annotations
            .insert("description".into(), "\u{1}".repeat(5_000));
        let message = render(&config(""), MessageKind::Firing, &n);
        assert!(
            message.body.len() <= MAX_BODY_BYTES,
            "{}",
            message.body.len()
        );
        assert!(message.truncated);
        assert!(text_of(&message).ends_with(TRUNCATION_MARKER));
    }

    fn card_config(extra: &str) -> Config {
        config_with_format("card", extra)
    }

    fn body_of(message: &RenderedMessage) -> Value {
        serde_json::from_str(&message.body).expect("body is JSON")
    }

    /// Every string in a JSON value, for assertions about what Chat would show.
    fn strings(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            Value::Object(map) => map.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }

    fn buttons(body: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for section in body["cardsV2"][0]["card"]["sections"]
            .as_array()
            .expect("sections")
        {
            for widget in section["widgets"].as_array().expect("widgets") {
                for button in widget["buttonList"]["buttons"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    out.push(button["text"].as_str().expect("label").to_owned());
                }
            }
        }
        out
    }

    #[test]
    fn firing_card_has_header_body_labels_and_buttons() {
        let n = fixture("firing.json");
        let message = render(&card_config(""), MessageKind::Firing, &n);
        let body = body_of(&message);
        let card = &body["cardsV2"][0]["card"];
        assert_eq!(card["header"]["title"], "🔴 DiskFull");
        assert_eq!(
            card["header"]["subtitle"],
            "critical · firing since 00:52 UTC"
        );
        let all = body.to_string();
        assert!(all.contains("Disk almost full on db1") && all.contains("/var is 97% full"));
        assert!(all.contains("#d93025"), "critical is red");
        assert_eq!(
            buttons(&body),
            ["Silence", "Source"],
            "only links that exist"
        );
        assert_eq!(body["fallbackText"], "🔴 FIRING · DiskFull · critical");
        assert_eq!(body["thread"]["threadKey"], "kabar:ops:x");
        assert!(body.get("text").is_none(), "no mentions configured");
        let fallback: Value =
            serde_json::from_str(message.fallback_body.as_deref().expect("text fallback"))
                .expect("JSON");
        assert!(
            fallback["text"]
                .as_str()
                .expect("text")
                .starts_with("🔴 *FIRING*")
        );
        assert_eq!(fallback["thread"]["threadKey"], "kabar:ops:x");
    }

    #[test]
    fn runbook_and_dashboard_buttons_come_from_annotations() {
        let mut n = fixture("firing.json");
        let annotations = &mut n.alerts[0].annotations;
        annotations.insert("runbook_url".into(), "https://runbooks.example/disk".into());
        annotations.insert(
            "grafana_url".into(),
            "https://grafana.example/d/1?a=1&b=2".into(),
        );
        let body = body_of(&render(&card_config(""), MessageKind::Firing, &n));
        assert_eq!(
            buttons(&body),
            ["Runbook", "Dashboard", "Silence", "Source"]
        );
        assert!(
            body.to_string()
                .contains("https://grafana.example/d/1?a=1&b=2"),
            "URLs are not HTML-escaped"
        );
    }

    #[test]
    fn resolved_card_is_green_and_says_how_long() {
        let n = fixture("resolved.json");
        let body = body_of(&render(&card_config(""), MessageKind::Resolved, &n));
        let card = &body["cardsV2"][0]["card"];
        assert_eq!(card["header"]["title"], "✅ DiskFull");
        assert_eq!(card["header"]["subtitle"], "Resolved after 3s");
        let all = body.to_string();
        assert!(all.contains("#188038") && all.contains("RESOLVED"), "{all}");
        assert!(
            !buttons(&body).contains(&"Silence".to_owned()),
            "nothing to silence"
        );
    }

    #[test]
    fn card_mentions_ride_in_the_text_field_on_firing_only() {
        let c = card_config("    mentions: {critical: [all]}\n");
        let n = fixture("firing.json");
        let body = body_of(&render(&c, MessageKind::Firing, &n));
        assert_eq!(body["text"], "<users/all>");
        let body = body_of(&render(&c, MessageKind::Reminder, &n));
        assert!(body.get("text").is_none());
    }

    fn hostile_notification() -> Notification {
        let mut n = fixture("firing.json");
        let alert = &mut n.alerts[0];
        let hostile = "<users/all> <https://evil.example|bank> \"q\" \\ back\nslash <b>x</b> \u{202E}rtl \u{200F} 🔥 &amp; }]}";
        alert.labels.insert("alertname".into(), hostile.into());
        alert.labels.insert("team".into(), hostile.into());
        alert.annotations.insert("summary".into(), hostile.into());
        alert
            .annotations
            .insert("description".into(), hostile.into());
        n
    }

    fn assert_inert(strings_shown: &[String]) {
        for s in strings_shown {
            let lower = s.to_lowercase();
            assert!(!lower.contains("<users/"), "live mention in {s:?}");
            assert!(!lower.contains("<https://evil"), "live link in {s:?}");
            assert!(
                !s.contains('\u{202E}') && !s.contains('\u{200F}'),
                "bidi control in {s:?}"
            );
            assert!(!lower.contains("<b>x"), "markup from data in {s:?}");
        }
    }

    #[test]
    fn hostile_values_are_inert_in_both_formats_for_every_kind() {
        let n = hostile_notification();
        let group = Subject::Alerts(crate::plan::AlertSet {
            firing: vec![0],
            ..Default::default()
        });
        let every_list = Subject::Alerts(crate::plan::AlertSet {
            firing: vec![0],
            resolved: vec![0],
            still_firing: vec![0],
        });
        for c in [config(""), card_config("")] {
            for (kind, subject) in [
                (MessageKind::Firing, &FIRST),
                (MessageKind::Reminder, &FIRST),
                (MessageKind::Resolved, &FIRST),
                (MessageKind::FiringAgain, &FIRST),
                (MessageKind::Group, &group),
                (MessageKind::Digest, &group),
                (MessageKind::Digest, &every_list),
            ] {
                let renderer = Renderer::new(&c).expect("compiles");
                let (message, failures) = renderer.render(&input_about(&c, kind, subject, &n));
                assert!(failures.is_empty(), "{kind:?}: {failures:?}");
                let mut shown = Vec::new();
                strings(&body_of(&message), &mut shown);
                assert_inert(&shown);
                assert!(message.body.len() <= MAX_BODY_BYTES);
            }
        }
    }

    fn many_alerts(count: usize) -> Notification {
        let mut n = fixture("firing.json");
        let template = n.alerts[0].clone();
        n.alerts = (0..count)
            .map(|i| {
                let mut a = template.clone();
                a.labels.insert("instance".into(), format!("db{i}:9100"));
                a
            })
            .collect();
        n.truncated_alerts = 7;
        n
    }

    #[test]
    fn group_messages_list_changes_bounded_with_more_lines() {
        let n = many_alerts(30);
        let subject = Subject::Alerts(crate::plan::AlertSet {
            firing: (0..25).collect(),
            resolved: vec![25, 26],
            still_firing: vec![],
        });
        for c in [config(""), card_config("")] {
            let renderer = Renderer::new(&c).expect("compiles");
            let (message, failures) =
                renderer.render(&input_about(&c, MessageKind::Group, &subject, &n));
            assert!(failures.is_empty(), "{failures:?}");
            let shown = body_of(&message).to_string();
            assert!(
                shown.contains("db19:9100") && !shown.contains("db20:9100"),
                "bounded"
            );
            assert!(shown.contains("+5 more"), "{shown}");
            assert!(
                shown.contains("db25:9100") && shown.contains("db26:9100"),
                "resolved listed"
            );
            assert!(
                shown.contains("7 more alerts in this group"),
                "truncatedAlerts shown"
            );
            assert!(shown.contains("#/alerts?receiver="), "link to Alertmanager");
        }
        let text = text_of(&render_about(&config(""), MessageKind::Group, &subject, &n));
        assert!(
            text.starts_with("🔴 *25 firing* · ✅ *2 resolved* · alertname=DiskFull"),
            "{text}"
        );
    }

    fn render_about(
        c: &Config,
        kind: MessageKind,
        subject: &Subject,
        n: &Notification,
    ) -> RenderedMessage {
        let renderer = Renderer::new(c).expect("compiles");
        let (message, failures) = renderer.render(&input_about(c, kind, subject, n));
        assert!(failures.is_empty(), "{failures:?}");
        message
    }

    #[test]
    fn digest_names_the_new_alerts_and_mentions_once() {
        let n = many_alerts(12);
        let subject = Subject::Alerts(crate::plan::AlertSet {
            firing: (0..12).collect(),
            ..Default::default()
        });
        let c = config("    mentions: {critical: [all]}\n");
        let text = text_of(&render_about(&c, MessageKind::Digest, &subject, &n));
        assert!(
            text.starts_with("<users/all>\n🚨 *12 alerts started firing*"),
            "{text}"
        );
        assert_eq!(text.matches("<users/all>").count(), 1);
        assert_eq!(text.matches("🔴 *DiskFull*").count(), 12);
        let body = body_of(&render_about(
            &card_config(""),
            MessageKind::Digest,
            &subject,
            &n,
        ));
        assert_eq!(
            body["cardsV2"][0]["card"]["header"]["title"],
            "🚨 12 alerts started firing"
        );
    }

    /// A user card template, written next to a text config.
    fn with_card_template(source: &str) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("card.hbs");
        std::fs::write(&path, source).expect("write template");
        let c = card_config(&format!("    templates: {{card: '{}'}}\n", path.display()));
        (dir, c)
    }

    #[test]
    fn a_user_card_template_with_trailing_commas_renders() {
        let (_dir, c) = with_card_template(
            r#"{"cardsV2": [{"cardId": "mine", "card": {"sections": [{"widgets": [
                {"textParagraph": {"text": "{{alert.name}} on {{alert.labels.instance}}"}},
                {{#if alert.annotations.nothing}}{"textParagraph": {"text": "never"}},{{/if}}
            ]},]}},]}"#,
        );
        let n = fixture("firing.json");
        let body = body_of(&render(&c, MessageKind::Firing, &n));
        assert_eq!(body["cardsV2"][0]["cardId"], "mine");
        assert_eq!(
            body["cardsV2"][0]["card"]["sections"][0]["widgets"][0]["textParagraph"]["text"],
            "DiskFull on db1:9100"
        );
    }

    #[test]
    fn a_broken_user_card_falls_back_to_the_builtin_card() {
        let (_dir, c) = with_card_template(
            r#"{"cardsV2": [{"card": {"sections": [{"widgets": [{"textParagraph": {"text": {{alert.name}} }}]}]}}]}"#,
        );
        let n = fixture("firing.json");
        let renderer = Renderer::new(&c).expect("compiles");
        let input = input(&c, MessageKind::Firing, &n);
        let (message, failures) = renderer.render(&input);
        assert!(message.fell_back);
        assert_eq!(
            body_of(&message)["cardsV2"][0]["cardId"],
            "kabar",
            "built-in card"
        );
        let failure = failures.first().expect("reported").to_string();
        assert!(
            failure.contains("card.hbs") && failure.contains("not valid JSON"),
            "{failure}"
        );
        let strict = renderer
            .render_strict(&input)
            .expect_err("check refuses it")
            .to_string();
        assert!(strict.contains("line 1"), "{strict}");
    }

    #[test]
    fn a_card_with_many_labels_sheds_widgets_and_stays_within_limits() {
        let mut n = fixture("firing.json");
        // Long enough that the labels shown pass the body limit.
        for i in 0..60 {
            n.alerts[0]
                .labels
                .insert(format!("label{i:03}"), "é".repeat(1_000));
        }
        let message = render(&card_config(""), MessageKind::Firing, &n);
        assert!(message.truncated);
        assert!(message.body.len() <= MAX_BODY_BYTES);
        let body = body_of(&message);
        let widgets: usize = body["cardsV2"][0]["card"]["sections"]
            .as_array()
            .expect("sections")
            .iter()
            .map(|s| s["widgets"].as_array().map_or(0, Vec::len))
            .sum();
        assert!(widgets <= MAX_WIDGETS_PER_CARD, "{widgets}");
        assert!(message.body.contains("more not shown"));
        // The silence link with 60 long matchers would pass the URL limit, so it is left out.
        assert_eq!(buttons(&body), ["Source"], "buttons survive shedding");
    }

    /// Runs `f` on a thread of its own and fails the test if it has not finished within
    /// 10 s: a shrinking loop that never ends fails instead of hanging the suite. A safety
    /// bound, not a timing: each case takes well under a second.
    fn within_10s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(f());
        });
        match result.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(value) => value,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("{what} did not finish within 10 s")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
        }
    }

    /// Renders alert 0 of `n` as `kind` in both formats with `thread_key`, on a guarded
    /// thread; checks every body fits Chat's limits and says something, and that the
    /// built-in templates did not fail.
    fn render_both_guarded(
        what: &str,
        n: Notification,
        kind: MessageKind,
        thread_key: Option<String>,
    ) -> Vec<RenderedMessage> {
        render_both_guarded_with_failures(what, n, kind, thread_key)
            .into_iter()
            .map(|(message, failures)| {
                assert!(failures.is_empty(), "{failures:?}");
                message
            })
            .collect()
    }

    fn render_both_guarded_with_failures(
        what: &str,
        n: Notification,
        kind: MessageKind,
        thread_key: Option<String>,
    ) -> Vec<(RenderedMessage, Vec<RenderFailure>)> {
        within_10s(what, move || {
            [config(""), card_config("")]
                .iter()
                .map(|c| {
                    let renderer = Renderer::new(c).expect("compiles");
                    let mut input = input(c, kind, &n);
                    input.thread_key = thread_key.clone();
                    let (message, failures) = renderer.render(&input);
                    for body in std::iter::once(&message.body).chain(&message.fallback_body) {
                        assert!(body.len() <= MAX_BODY_BYTES, "{} bytes", body.len());
                        let value: Value = serde_json::from_str(body).expect("JSON");
                        assert!(
                            value.get("cardsV2").is_some()
                                || !value["text"].as_str().unwrap_or("").trim().is_empty(),
                            "an empty message"
                        );
                    }
                    (message, failures)
                })
                .collect()
        })
    }

    #[test]
    fn a_thread_key_too_long_for_any_body_cannot_hang_fitting() {
        // No key kabar derives is this long; one that is must still end in a message.
        let key = "k".repeat(40_000);
        let messages = render_both_guarded_with_failures(
            "rendering with a 40 kB thread key",
            fixture("firing.json"),
            MessageKind::Firing,
            Some(key),
        );
        for (message, failures) in messages {
            // The card cannot hold the key either: it is refused, and text it is.
            assert!(
                failures.iter().all(|f| matches!(
                    f,
                    RenderFailure::Card {
                        source: CardError::TooLarge,
                        ..
                    }
                )),
                "{failures:?}"
            );
            assert_eq!(message.thread_key, None, "posted top-level instead");
            assert!(message.truncated);
            assert!(message.body.contains("DiskFull"), "{}", message.body);
        }
    }

    #[test]
    fn a_long_fingerprint_gets_a_short_thread_key_and_renders_promptly() {
        let mut n = fixture("firing.json");
        n.alerts[0].fingerprint = "f".repeat(50_000);
        let key = crate::plan::EpisodeKey::new("ops", &n.alerts[0]).thread_key();
        assert!(key.len() < 200, "thread key of {} bytes", key.len());
        let messages = render_both_guarded(
            "rendering an alert with a 50 kB fingerprint",
            n,
            MessageKind::Firing,
            Some(key.clone()),
        );
        for message in messages {
            assert_eq!(
                message.thread_key.as_deref(),
                Some(key.as_str()),
                "threaded"
            );
            let body = body_of(&message);
            assert_eq!(body["thread"]["threadKey"], key.as_str());
            assert!(message.body.contains("DiskFull"));
        }
    }

    /// Labels of alert 0 that the built-in templates list among its other labels.
    fn other_label_count(n: &Notification) -> usize {
        n.alerts[0]
            .labels
            .keys()
            .filter(|k| *k != "alertname" && *k != "severity")
            .count()
    }

    #[test]
    fn an_alert_with_100k_labels_is_shown_bounded_with_a_more_count() {
        let mut n = fixture("firing.json");
        for i in 0..100_000 {
            n.alerts[0].labels.insert(format!("l{i:06}"), "v".into());
        }
        let more = other_label_count(&n) - MAX_LABELS_SHOWN;
        let messages = render_both_guarded(
            "rendering 100k labels",
            n,
            MessageKind::Firing,
            Some("kabar:ops:x".into()),
        );
        let [text, card] = &messages[..] else {
            panic!("two formats")
        };
        assert!(text.truncated && card.truncated, "cut labels count as cut");
        let text = text_of(text);
        assert!(text.contains(&format!(" · +{more} more")), "{text}");
        assert!(
            text.contains("l000000 v") && !text.contains("l000100"),
            "{text}"
        );
        let body = body_of(card);
        let sections = body["cardsV2"][0]["card"]["sections"]
            .as_array()
            .expect("sections");
        let widgets: usize = sections
            .iter()
            .map(|s| s["widgets"].as_array().map_or(0, Vec::len))
            .sum();
        assert!(widgets <= MAX_WIDGETS_PER_CARD, "{widgets}");
        assert!(
            sections
                .iter()
                .any(|s| s["header"] == format!("Other labels (+{more} more)").as_str()),
            "{body}"
        );
        assert!(!card.body.contains("more not shown"), "no shedding needed");
    }

    #[test]
    fn a_few_labels_show_no_more_count() {
        let n = fixture("firing.json");
        let text = text_of(&render(&config(""), MessageKind::Firing, &n));
        assert!(!text.contains(" more"), "{text}");
        let card = render(&card_config(""), MessageKind::Firing, &n);
        assert!(!card.truncated);
        assert!(!card.body.contains(" more"), "{}", card.body);
    }

    #[test]
    fn megabyte_values_and_urls_render_promptly_within_limits() {
        let mut n = fixture("firing.json");
        n.external_url = format!("http://am.example/{}", "u".repeat(3_000_000));
        n.group_key = "g".repeat(1_000_000);
        n.receiver = "r".repeat(1_000_000);
        let alert = &mut n.alerts[0];
        alert.generator_url = format!("http://prom.example/{}", "g".repeat(3_000_000));
        alert
            .labels
            .insert("alertname".into(), "N".repeat(2_000_000));
        alert
            .labels
            .insert("n".repeat(1_000_000), "long name".into());
        alert
            .annotations
            .insert("description".into(), "<b>&".repeat(1_000_000));
        for i in 0..50_000 {
            alert.annotations.insert(format!("a{i}"), "x".into());
        }
        for i in 0..50_000 {
            n.group_labels.insert(format!("g{i}"), "y".into());
            n.common_labels.insert(format!("c{i}"), "z".into());
        }
        for kind in [
            MessageKind::Firing,
            MessageKind::Resolved,
            MessageKind::Reminder,
        ] {
            let messages = render_both_guarded(
                "rendering megabyte values",
                n.clone(),
                kind,
                Some("kabar:ops:x".into()),
            );
            assert!(messages.iter().all(|m| m.truncated), "{kind:?}");
        }
    }

    #[test]
    fn a_group_of_alerts_each_with_many_labels_renders_promptly() {
        let mut n = fixture("firing.json");
        let mut alert = n.alerts[0].clone();
        for i in 0..5_000 {
            alert.labels.insert(format!("l{i:05}"), "v".repeat(20));
        }
        n.alerts = (0..40)
            .map(|i| {
                let mut a = alert.clone();
                a.labels.insert("instance".into(), format!("db{i}:9100"));
                a
            })
            .collect();
        let subject = Subject::Alerts(crate::plan::AlertSet {
            firing: (0..40).collect(),
            ..Default::default()
        });
        within_10s("rendering 40 alerts of 5k labels", move || {
            for c in [config(""), card_config("")] {
                for kind in [MessageKind::Group, MessageKind::Digest] {
                    let message = render_about(&c, kind, &subject, &n);
                    assert!(message.body.len() <= MAX_BODY_BYTES);
                    assert!(message.body.contains("+20 more"), "{}", message.body);
                }
            }
        });
    }
}
