//! Rendering: handlebars templates into Chat request bodies that Chat will accept.
//!
//! Alert data is escaped on its way into the text, so a label can neither mention anyone
//! nor forge a link; mentions are added by kabar from config, after the template ran, and
//! any mention a template produced itself is neutralised. Every body is checked against
//! Chat's limits here, before it is queued.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson,
};
use jiff::{Timestamp, tz::TimeZone};
use serde_json::{Value, json};

use crate::config::{Config, Format, Space};
use crate::payload::{Alert, Notification};
use crate::state::MessageKind;

/// Chat rejects `text` longer than this (counted here in UTF-16 units, which is never
/// fewer than Chat's count).
pub const MAX_TEXT_CHARS: usize = 4096;
/// Chat rejects a message body larger than this.
pub const MAX_BODY_BYTES: usize = 32_000;
/// What a cut message ends with, so readers know something is missing.
pub const TRUNCATION_MARKER: &str = "\n… truncated";

const BUILTIN_TEXT: &str = include_str!("../templates/text.hbs");
const BUILTIN_TEXT_NAME: &str = "builtin/text.hbs";

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
}

/// A Chat request body, ready to queue: it fits Chat's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedMessage {
    /// The exact JSON body to POST.
    pub body: String,
    pub thread_key: Option<String>,
    /// The text had to be cut to fit.
    pub truncated: bool,
    /// The space's own template failed and the built-in one was used.
    pub fell_back: bool,
}

/// One message to render.
pub struct RenderInput<'a> {
    pub space: &'a Space,
    pub kind: MessageKind,
    pub alert: &'a Alert,
    pub notification: &'a Notification,
    pub thread_key: Option<String>,
    pub now: Timestamp,
}

/// The compiled templates of a configuration. Cheap to share.
#[derive(Clone)]
pub struct Renderer {
    registry: Arc<Handlebars<'static>>,
    /// Space name -> the name of its text template in the registry.
    text_templates: BTreeMap<String, String>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("text_templates", &self.text_templates)
            .finish()
    }
}

impl Renderer {
    /// Compiles the built-in templates and every template file the config names.
    pub fn new(config: &Config) -> Result<Renderer, RenderFailure> {
        let mut registry = Handlebars::new();
        registry.register_escape_fn(escape_text);
        register_helpers(&mut registry);
        registry
            .register_template_string(BUILTIN_TEXT_NAME, BUILTIN_TEXT)
            .map_err(|e| RenderFailure::Compile {
                path: BUILTIN_TEXT_NAME.to_owned(),
                message: e.to_string(),
            })?;
        let mut text_templates = BTreeMap::new();
        for space in config.spaces.values() {
            let name = match (&space.options.format, &space.options.templates.text) {
                (Format::Text, Some(path)) => {
                    let name = path.display().to_string();
                    if !registry.has_template(&name) {
                        let source = std::fs::read_to_string(path).map_err(|source| {
                            RenderFailure::Read {
                                path: path.clone(),
                                source,
                            }
                        })?;
                        registry
                            .register_template_string(&name, source)
                            .map_err(|e| RenderFailure::Compile {
                                path: name.clone(),
                                message: template_error_message(&e),
                            })?;
                    }
                    name
                }
                _ => BUILTIN_TEXT_NAME.to_owned(),
            };
            text_templates.insert(space.name.clone(), name);
        }
        Ok(Renderer {
            registry: Arc::new(registry),
            text_templates,
        })
    }

    /// The template file a space uses, or None for the built-in one.
    pub fn template_of(&self, space: &str) -> Option<&str> {
        self.text_templates
            .get(space)
            .map(String::as_str)
            .filter(|name| *name != BUILTIN_TEXT_NAME)
    }

    /// Renders with the space's template, falling back to the built-in one if it fails, so
    /// an alert is never dropped for a template bug. The failure is returned for logging.
    pub fn render(&self, input: &RenderInput<'_>) -> (RenderedMessage, Option<RenderFailure>) {
        let context = message_context(input);
        let template = self
            .text_templates
            .get(&input.space.name)
            .map(String::as_str)
            .unwrap_or(BUILTIN_TEXT_NAME);
        match self.render_text(template, &context) {
            Ok(text) => (finish(input, text, false), None),
            Err(failure) => {
                let text = self
                    .render_text(BUILTIN_TEXT_NAME, &context)
                    .unwrap_or_else(|_| minimal_text(input));
                (finish(input, text, true), Some(failure))
            }
        }
    }

    /// Renders one template strictly, for `kabar check`: any failure is an error.
    pub fn render_strict(&self, input: &RenderInput<'_>) -> Result<RenderedMessage, RenderFailure> {
        let context = message_context(input);
        let template = self
            .text_templates
            .get(&input.space.name)
            .map(String::as_str)
            .unwrap_or(BUILTIN_TEXT_NAME);
        let text = self.render_text(template, &context)?;
        Ok(finish(input, text, false))
    }

    fn render_text(&self, template: &str, context: &Value) -> Result<String, RenderFailure> {
        let text = self
            .registry
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
}

fn template_error_message(e: &handlebars::TemplateError) -> String {
    let reason = e.reason().to_string();
    match e.pos() {
        Some((line, column)) => format!("line {line}, column {column}: {reason}"),
        None => reason,
    }
}

fn render_error_message(e: &RenderError) -> String {
    let mut message = e.reason().to_string();
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
    format!(
        "{} · {}",
        input.kind.as_str().to_uppercase(),
        escape_text(input.alert.name())
    )
}

/// Adds configured mentions, fits the text into Chat's limits and builds the body.
fn finish(input: &RenderInput<'_>, text: String, fell_back: bool) -> RenderedMessage {
    let mut text = text;
    if input.kind == MessageKind::Firing
        && let Some(mentions) = input.space.options.mentions.get(input.alert.severity())
        && !mentions.is_empty()
    {
        let pings: Vec<String> = mentions.iter().map(|m| m.markup()).collect();
        text = format!("{}\n{text}", pings.join(" "));
    }
    let (mut text, mut truncated) = fit_text(&text, MAX_TEXT_CHARS);
    loop {
        let body = build_body(&text, input.thread_key.as_deref());
        if body.len() <= MAX_BODY_BYTES {
            return RenderedMessage {
                body,
                thread_key: input.thread_key.clone(),
                truncated,
                fell_back,
            };
        }
        // JSON escaping made the body too large: cut the text by the excess and retry.
        let excess = body.len() - MAX_BODY_BYTES;
        let keep = utf16_len(&text).saturating_sub(excess + TRUNCATION_MARKER.len());
        (text, _) = fit_text(&text, keep.max(TRUNCATION_MARKER.len() + 1));
        truncated = true;
    }
}

fn build_body(text: &str, thread_key: Option<&str>) -> String {
    let body = match thread_key {
        Some(key) => json!({"text": text, "thread": {"threadKey": key}}),
        None => json!({"text": text}),
    };
    body.to_string()
}

fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// Cuts `text` to at most `limit` UTF-16 units, marker included, on a character boundary.
pub fn fit_text(text: &str, limit: usize) -> (String, bool) {
    if utf16_len(text) <= limit {
        return (text.to_owned(), false);
    }
    let budget = limit.saturating_sub(utf16_len(TRUNCATION_MARKER));
    let mut used = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        if used + c.len_utf16() > budget {
            break;
        }
        used += c.len_utf16();
        end = i + c.len_utf8();
    }
    let mut cut = text[..end].trim_end().to_owned();
    // Never leave half a `<url|label>` link behind: Chat would show broken markup.
    if let Some(open) = cut.rfind('<')
        && !cut[open..].contains('>')
    {
        cut.truncate(open);
    }
    cut.push_str(TRUNCATION_MARKER);
    (cut, true)
}

/// Escapes a value for Chat text: `<` and `>` become look-alike angle quotes, so
/// `<users/all>` and `<https://evil|bank>` show as text and do nothing; bidirectional
/// controls, which can make text read differently than it is, are dropped.
pub fn escape_text(value: &str) -> String {
    value
        .chars()
        .filter(|c| !is_bidi_control(*c))
        .map(|c| match c {
            '<' => '‹',
            '>' => '›',
            other => other,
        })
        .collect()
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Turns any `<users/...>` a template wrote itself into inert text: mentions come only
/// from config and are added after rendering.
fn neutralise_mentions(text: &str) -> String {
    const NEEDLE: &str = "<users/";
    let lower = text.to_ascii_lowercase();
    if !lower.contains(NEEDLE) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (pos, _) in lower.match_indices(NEEDLE) {
        out.push_str(&text[last..pos]);
        out.push('‹');
        last = pos + 1;
    }
    out.push_str(&text[last..]);
    out
}

/// Makes a URL safe inside Chat's `<url|label>` syntax, or None if it is not http(s).
pub fn safe_link(url: &str) -> Option<String> {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) || url.len() > 2048 {
        return None;
    }
    let mut out = String::with_capacity(url.len());
    for c in url.chars() {
        match c {
            '<' | '>' | '|' | '"' | ' ' | '`' => out.push_str(&format!("%{:02X}", c as u32)),
            c if c.is_control() || is_bidi_control(c) => {}
            c => out.push(c),
        }
    }
    Some(out)
}

/// Characters kept as they are in a URL query value; everything else is percent-encoded.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn url_encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// Alertmanager's new-silence form, prefilled with the alert's labels as matchers.
pub fn silence_link(external_url: &str, labels: &crate::payload::LabelSet) -> Option<String> {
    if external_url.trim().is_empty() || labels.is_empty() {
        return None;
    }
    let matchers: Vec<String> = labels
        .iter()
        .map(|(name, value)| {
            let value = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{name}=\"{value}\"")
        })
        .collect();
    let filter = format!("{{{}}}", matchers.join(","));
    safe_link(&format!(
        "{}/#/silences/new?filter={}",
        external_url.trim_end_matches('/'),
        url_encode(&filter)
    ))
}

fn rfc3339(t: Timestamp) -> String {
    t.to_string()
}

/// The template context of a per-alert message; README.md documents every field.
fn message_context(input: &RenderInput<'_>) -> Value {
    let alert = input.alert;
    let n = input.notification;
    let other_labels: BTreeMap<&String, &String> = alert
        .labels
        .iter()
        .filter(|(k, _)| k.as_str() != "alertname" && k.as_str() != "severity")
        .collect();
    let annotation = |key: &str| alert.annotations.get(key).filter(|v| !v.trim().is_empty());
    let mentions: Vec<&str> = if input.kind == MessageKind::Firing {
        input
            .space
            .options
            .mentions
            .get(alert.severity())
            .map(|list| list.iter().map(|m| m.as_str()).collect())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    json!({
        "kind": input.kind.as_str(),
        "space": input.space.name,
        "now": rfc3339(input.now),
        "alert": {
            "status": alert.status.as_str(),
            "labels": alert.labels,
            "annotations": alert.annotations,
            "startsAt": rfc3339(alert.starts_at),
            "endsAt": alert.ends_at.map(rfc3339),
            "generatorURL": alert.generator_url,
            "fingerprint": alert.fingerprint(),
            "name": alert.name(),
            "severity": alert.severity(),
            "summary": annotation("summary").or_else(|| annotation("message")),
            "description": annotation("description"),
            "otherLabels": other_labels,
            "links": {
                "source": safe_link(&alert.generator_url),
                "silence": silence_link(&n.external_url, &alert.labels),
                "runbook": annotation("runbook_url").and_then(|u| safe_link(u)),
                "dashboard": annotation("dashboard_url").or_else(|| annotation("grafana_url")).and_then(|u| safe_link(u)),
            },
        },
        "group": {
            "receiver": n.receiver,
            "status": n.status.as_str(),
            "groupKey": n.group_key,
            "groupLabels": n.group_labels,
            "commonLabels": n.common_labels,
            "commonAnnotations": n.common_annotations,
            "externalURL": n.external_url,
            "truncatedAlerts": n.truncated_alerts,
        },
        "mentions": mentions,
    })
}

// ---------------------------------------------------------------------------------------
// Helpers

type HelperFn = fn(&[Value], &Value) -> Result<Value, String>;

/// Adapts a plain function of (parameters, root context) into a handlebars helper.
struct FnHelper {
    name: &'static str,
    f: HelperFn,
}

impl HelperDef for FnHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let params: Vec<Value> = h.params().iter().map(|p| p.value().clone()).collect();
        (self.f)(&params, ctx.data())
            .map(ScopedJson::Derived)
            .map_err(|message| RenderErrorReason::Other(format!("{}: {message}", self.name)).into())
    }
}

fn register_helpers(registry: &mut Handlebars<'static>) {
    let helpers: [(&'static str, HelperFn); 15] = [
        ("upper", |p, _| {
            Ok(json!(string_param(p, 0)?.to_uppercase()))
        }),
        ("lower", |p, _| {
            Ok(json!(string_param(p, 0)?.to_lowercase()))
        }),
        ("title", |p, _| Ok(json!(title_case(&string_param(p, 0)?)))),
        ("default", helper_default),
        ("join", helper_join),
        ("truncate", helper_truncate),
        ("replace", |p, _| {
            Ok(json!(
                string_param(p, 0)?.replace(&string_param(p, 1)?, &string_param(p, 2)?)
            ))
        }),
        ("contains", helper_contains),
        ("url_encode", |p, _| {
            Ok(json!(url_encode(&string_param(p, 0)?)))
        }),
        ("json", |p, _| {
            Ok(json!(p.first().unwrap_or(&Value::Null).to_string()))
        }),
        ("severity_icon", |p, _| {
            Ok(json!(severity_icon(&string_param(p, 0)?)))
        }),
        ("severity_color", |p, _| {
            Ok(json!(severity_color(&string_param(p, 0)?)))
        }),
        ("date", helper_date),
        ("since", helper_since),
        ("duration", helper_duration),
    ];
    for (name, f) in helpers {
        registry.register_helper(name, Box::new(FnHelper { name, f }));
    }
}

/// A parameter as text: strings as they are, numbers and booleans printed, null empty.
fn string_param(params: &[Value], index: usize) -> Result<String, String> {
    match params.get(index) {
        None => Err(format!("parameter {} is missing", index + 1)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Null) => Ok(String::new()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(_) => Err(format!("parameter {} must be text", index + 1)),
    }
}

fn is_empty_value(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn helper_default(params: &[Value], _: &Value) -> Result<Value, String> {
    let value = params.first().cloned().unwrap_or(Value::Null);
    if is_empty_value(&value) {
        Ok(params
            .get(1)
            .cloned()
            .ok_or("parameter 2 (the default) is missing")?)
    } else {
        Ok(value)
    }
}

fn helper_join(params: &[Value], _: &Value) -> Result<Value, String> {
    let separator = if params.len() > 1 {
        string_param(params, 1)?
    } else {
        ", ".to_owned()
    };
    let items: Vec<String> = match params.first() {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| string_param(std::slice::from_ref(v), 0))
            .collect::<Result<_, _>>()?,
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| Ok(format!("{k}={}", string_param(std::slice::from_ref(v), 0)?)))
            .collect::<Result<_, String>>()?,
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![string_param(std::slice::from_ref(other), 0)?],
    };
    Ok(json!(items.join(&separator)))
}

fn helper_truncate(params: &[Value], _: &Value) -> Result<Value, String> {
    let text = string_param(params, 0)?;
    let limit = params
        .get(1)
        .and_then(Value::as_u64)
        .ok_or("parameter 2 must be a whole number")? as usize;
    if text.chars().count() <= limit {
        return Ok(json!(text));
    }
    let cut: String = text.chars().take(limit.saturating_sub(1)).collect();
    Ok(json!(format!("{cut}…")))
}

fn helper_contains(params: &[Value], _: &Value) -> Result<Value, String> {
    let needle = params.get(1).ok_or("parameter 2 is missing")?;
    Ok(json!(match params.first() {
        Some(Value::Array(items)) => items.contains(needle),
        Some(Value::Object(map)) => needle.as_str().is_some_and(|k| map.contains_key(k)),
        Some(Value::String(s)) => needle.as_str().is_some_and(|n| s.contains(n)),
        _ => false,
    }))
}

pub fn title_case(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => {
                    first.to_uppercase().collect::<String>() + &chars.as_str().to_lowercase()
                }
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn severity_icon(severity: &str) -> &'static str {
    match severity.to_ascii_lowercase().as_str() {
        "critical" | "page" | "error" | "high" => "🔴",
        "warning" | "warn" | "medium" => "🟠",
        "info" | "informational" | "low" | "none" => "🔵",
        "resolved" => "✅",
        _ => "⚪",
    }
}

pub fn severity_color(severity: &str) -> &'static str {
    match severity.to_ascii_lowercase().as_str() {
        "critical" | "page" | "error" | "high" => "#d93025",
        "warning" | "warn" | "medium" => "#f29900",
        "info" | "informational" | "low" | "none" => "#1a73e8",
        "resolved" => "#188038",
        _ => "#80868b",
    }
}

fn time_param(params: &[Value], index: usize) -> Result<Option<Timestamp>, String> {
    match params.get(index) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .parse::<Timestamp>()
            .map(Some)
            .map_err(|_| format!("{s:?} is not an RFC 3339 time")),
        Some(_) => Err(format!("parameter {} must be an RFC 3339 time", index + 1)),
    }
}

/// The render's "now": the context's `now`, so a message is stable for a given input.
fn context_now(root: &Value) -> Timestamp {
    root.get("now")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(Timestamp::now)
}

/// `{{date time "%Y-%m-%d %H:%M %Z" "Europe/Berlin"}}`: format (strftime) and zone optional.
fn helper_date(params: &[Value], _: &Value) -> Result<Value, String> {
    let Some(time) = time_param(params, 0)? else {
        return Ok(json!(""));
    };
    let format = if params.len() > 1 {
        string_param(params, 1)?
    } else {
        "%Y-%m-%d %H:%M %Z".to_owned()
    };
    let zone = if params.len() > 2 {
        let name = string_param(params, 2)?;
        TimeZone::get(&name).map_err(|_| format!("unknown time zone {name:?}"))?
    } else {
        TimeZone::UTC
    };
    let zoned = time.to_zoned_datetime(zone);
    let mut out = String::new();
    jiff::fmt::strtime::format(format.as_bytes(), &zoned)
        .map(|s| out.push_str(&s))
        .map_err(|e| format!("bad date format {format:?}: {e}"))?;
    Ok(json!(out))
}

/// `{{since time}}`: how long ago, humanised (`5m`, `1h30m`).
fn helper_since(params: &[Value], root: &Value) -> Result<Value, String> {
    let Some(time) = time_param(params, 0)? else {
        return Ok(json!(""));
    };
    Ok(json!(humanize_between(time, context_now(root))))
}

/// `{{duration start end}}`: from start to end (or now), humanised.
fn helper_duration(params: &[Value], root: &Value) -> Result<Value, String> {
    let Some(start) = time_param(params, 0)? else {
        return Ok(json!(""));
    };
    let end = time_param(params, 1)?.unwrap_or_else(|| context_now(root));
    Ok(json!(humanize_between(start, end)))
}

fn humanize_between(start: Timestamp, end: Timestamp) -> String {
    let seconds = (end.as_second() - start.as_second()).max(0) as u64;
    humanize_seconds(seconds)
}

/// The two largest units: `45s`, `5m`, `1h30m`, `2d3h`.
pub fn humanize_seconds(seconds: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    if seconds == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let mut rest = seconds;
    let mut shown = 0;
    for (unit, size) in UNITS {
        if rest >= size && shown < 2 {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
            shown += 1;
        } else if shown > 0 {
            // Stop at the first gap: "2d" rather than "2d0h", "1h" rather than "1h0m".
            shown = 2;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    const NOW: &str = "2026-11-28T00:57:38Z";

    fn config(extra: &str) -> Config {
        Config::parse(
            &format!("spaces:\n  ops:\n    dry_run: true\n{extra}"),
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

    fn input<'a>(config: &'a Config, kind: MessageKind, n: &'a Notification) -> RenderInput<'a> {
        RenderInput {
            space: &config.spaces["ops"],
            kind,
            alert: &n.alerts[0],
            notification: n,
            thread_key: Some("kabar:ops:x".into()),
            now: NOW.parse().expect("now"),
        }
    }

    fn render(config: &Config, kind: MessageKind, n: &Notification) -> RenderedMessage {
        let renderer = Renderer::new(config).expect("templates compile");
        let (message, failure) = renderer.render(&input(config, kind, n));
        assert!(failure.is_none(), "{failure:?}");
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
        let (message, failure) = renderer.render(&input);
        assert!(message.fell_back);
        assert!(text_of(&message).starts_with("🔴 *FIRING* · *DiskFull*"));
        let failure = failure.expect("failure reported").to_string();
        assert!(failure.contains("truncate"), "{failure}");
        assert!(renderer.render_strict(&input).is_err());
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
        let (message, failure) = renderer.render(&input(&c, MessageKind::Firing, &n));
        assert!(message.fell_back);
        assert!(matches!(failure, Some(RenderFailure::Empty { .. })));
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

    #[test]
    fn fit_text_does_not_leave_half_a_link() {
        let text = format!("{}<https://example.com/very/long|Source>", "a".repeat(20));
        let (cut, truncated) = fit_text(&text, 40);
        assert!(truncated);
        assert_eq!(cut, format!("{}{TRUNCATION_MARKER}", "a".repeat(20)));
    }

    #[test]
    fn helpers_behave() {
        let root = json!({"now": NOW});
        let h = |f: HelperFn, p: Value| f(p.as_array().expect("array"), &root);
        assert_eq!(h(helper_default, json!(["", "x"])), Ok(json!("x")));
        assert_eq!(h(helper_default, json!(["y", "x"])), Ok(json!("y")));
        assert_eq!(
            h(helper_join, json!([["a", "b"], " / "])),
            Ok(json!("a / b"))
        );
        assert_eq!(
            h(helper_join, json!([{"a": "1", "b": "2"}])),
            Ok(json!("a=1, b=2"))
        );
        assert_eq!(h(helper_truncate, json!(["abcdef", 4])), Ok(json!("abc…")));
        assert_eq!(h(helper_truncate, json!(["abc", 4])), Ok(json!("abc")));
        assert_eq!(
            h(helper_contains, json!([["a", "b"], "b"])),
            Ok(json!(true))
        );
        assert_eq!(h(helper_contains, json!(["abc", "z"])), Ok(json!(false)));
        assert_eq!(
            h(helper_since, json!(["2026-11-28T00:27:38Z"])),
            Ok(json!("30m"))
        );
        assert_eq!(
            h(
                helper_duration,
                json!(["2026-11-28T00:00:00Z", "2026-11-28T01:30:10Z"])
            ),
            Ok(json!("1h30m"))
        );
        assert_eq!(
            h(helper_date, json!([NOW, "%Y-%m-%d %H:%M"])),
            Ok(json!("2026-11-28 00:57"))
        );
        assert_eq!(
            h(helper_date, json!([NOW, "%H:%M %Z", "Asia/Tokyo"])),
            Ok(json!("09:57 JST"))
        );
        assert!(h(helper_date, json!([NOW, "%H", "Mars/Olympus"])).is_err());
        assert!(h(helper_date, json!(["not a time"])).is_err());
        assert_eq!(title_case("disk FULL"), "Disk Full");
        assert_eq!(severity_icon("critical"), "🔴");
        assert_eq!(severity_icon("warning"), "🟠");
        assert_eq!(severity_icon("info"), "🔵");
        assert_eq!(severity_icon("whatever"), "⚪");
        assert_eq!(severity_color("critical"), "#d93025");
        assert_eq!(url_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn humanized_durations() {
        assert_eq!(humanize_seconds(0), "0s");
        assert_eq!(humanize_seconds(45), "45s");
        assert_eq!(humanize_seconds(300), "5m");
        assert_eq!(humanize_seconds(5400), "1h30m");
        assert_eq!(humanize_seconds(3600), "1h");
        assert_eq!(humanize_seconds(3601), "1h");
        assert_eq!(humanize_seconds(2 * 86_400 + 3 * 3600 + 59), "2d3h");
    }

    #[test]
    fn silence_link_escapes_matcher_values() {
        let mut labels = crate::payload::LabelSet::new();
        labels.insert("alertname".into(), "A \"quoted\" | pipe".into());
        let link = silence_link("http://am:9093/", &labels).expect("link");
        assert_eq!(
            link,
            "http://am:9093/#/silences/new?filter=%7Balertname%3D%22A%20%5C%22quoted%5C%22%20%7C%20pipe%22%7D"
        );
        assert_eq!(silence_link("", &labels), None);
    }
}
