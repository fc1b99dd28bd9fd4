//! Template helpers: the functions templates call, the same set for text and cards
//! (README.md, "Template helpers", has an example of each). No I/O, no clock but the alert's.

use std::sync::{Arc, Mutex};

use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson,
};
use jiff::{Timestamp, tz::TimeZone};
use serde_json::{Value, json};

use super::escape::{escape_text, url_encode};

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

pub(super) fn register_helpers(registry: &mut Handlebars<'static>) {
    let helpers: [(&'static str, HelperFn); 17] = [
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
        ("regex_replace", helper_regex_replace),
        ("plain", |p, _| Ok(json!(escape_text(&string_param(p, 0)?)))),
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

/// Compiled patterns, so a template that runs for every alert compiles each pattern once.
/// Bounded: templates hold few patterns, but a pattern built from alert data could vary.
static PATTERNS: Mutex<Vec<(String, Arc<regex::Regex>)>> = Mutex::new(Vec::new());
const PATTERN_CACHE: usize = 64;

fn compiled(pattern: &str) -> Result<Arc<regex::Regex>, String> {
    if let Ok(cache) = PATTERNS.lock()
        && let Some((_, re)) = cache.iter().find(|(p, _)| p == pattern)
    {
        return Ok(Arc::clone(re));
    }
    // The regex crate runs in linear time; the size limit keeps a huge pattern from
    // costing much memory to compile.
    let re = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map(Arc::new)
        .map_err(|e| format!("bad pattern {pattern:?}: {e}"))?;
    if let Ok(mut cache) = PATTERNS.lock() {
        if cache.len() >= PATTERN_CACHE {
            cache.remove(0);
        }
        cache.push((pattern.to_owned(), Arc::clone(&re)));
    }
    Ok(re)
}

/// `{{regex_replace text "pattern" "replacement"}}`: every match replaced; `$1` and
/// `${name}` refer to capture groups.
fn helper_regex_replace(params: &[Value], _: &Value) -> Result<Value, String> {
    let text = string_param(params, 0)?;
    let re = compiled(&string_param(params, 1)?)?;
    let replacement = string_param(params, 2)?;
    Ok(json!(re.replace_all(&text, replacement.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-28T00:57:38Z";

    fn call(f: HelperFn, params: Value) -> Result<Value, String> {
        f(params.as_array().expect("array"), &json!({"now": NOW}))
    }

    /// Runs a helper through handlebars, as a template would.
    fn in_template(source: &str, data: Value) -> String {
        let mut registry = Handlebars::new();
        registry.register_escape_fn(handlebars::no_escape);
        register_helpers(&mut registry);
        registry.render_template(source, &data).expect("renders")
    }

    #[test]
    fn upper_lower_title() {
        assert_eq!(in_template("{{upper x}}", json!({"x": "Disk é"})), "DISK É");
        assert_eq!(in_template("{{lower x}}", json!({"x": "Disk É"})), "disk é");
        assert_eq!(
            in_template("{{title x}}", json!({"x": "disk FULL"})),
            "Disk Full"
        );
        assert_eq!(title_case(""), "");
    }

    #[test]
    fn default_replaces_missing_and_blank() {
        assert_eq!(call(helper_default, json!(["", "x"])), Ok(json!("x")));
        assert_eq!(call(helper_default, json!([null, "x"])), Ok(json!("x")));
        assert_eq!(call(helper_default, json!(["y", "x"])), Ok(json!("y")));
        assert!(
            call(helper_default, json!([""])).is_err(),
            "no default given"
        );
        assert_eq!(
            in_template("{{default labels.team \"none\"}}", json!({"labels": {}})),
            "none"
        );
    }

    #[test]
    fn join_lists_and_maps() {
        assert_eq!(
            call(helper_join, json!([["a", "b"], " / "])),
            Ok(json!("a / b"))
        );
        assert_eq!(
            call(helper_join, json!([{"a": "1", "b": "2"}])),
            Ok(json!("a=1, b=2"))
        );
        assert_eq!(call(helper_join, json!([null])), Ok(json!("")));
    }

    #[test]
    fn truncate_counts_characters() {
        assert_eq!(
            call(helper_truncate, json!(["abcdef", 4])),
            Ok(json!("abc…"))
        );
        assert_eq!(call(helper_truncate, json!(["abc", 4])), Ok(json!("abc")));
        assert_eq!(
            call(helper_truncate, json!(["🔥🔥🔥", 2])),
            Ok(json!("🔥…"))
        );
        assert!(call(helper_truncate, json!(["abc", "many"])).is_err());
    }

    #[test]
    fn replace_is_literal() {
        assert_eq!(
            in_template("{{replace x \".\" \"-\"}}", json!({"x": "a.b.c"})),
            "a-b-c"
        );
    }

    #[test]
    fn regex_replace_uses_groups_and_reports_bad_patterns() {
        assert_eq!(
            in_template(
                "{{regex_replace x \"^([^:]+):[0-9]+$\" \"$1\"}}",
                json!({"x": "db1:9100"})
            ),
            "db1"
        );
        assert_eq!(
            call(helper_regex_replace, json!(["a1b22", "[0-9]+", "#"])),
            Ok(json!("a#b#"))
        );
        let err = call(helper_regex_replace, json!(["x", "(", ""])).expect_err("bad pattern");
        assert!(err.contains("bad pattern"), "{err}");
    }

    #[test]
    fn contains_lists_maps_and_text() {
        assert_eq!(
            call(helper_contains, json!([["a", "b"], "b"])),
            Ok(json!(true))
        );
        assert_eq!(
            call(helper_contains, json!([{"team": "x"}, "team"])),
            Ok(json!(true))
        );
        assert_eq!(call(helper_contains, json!(["abc", "z"])), Ok(json!(false)));
        assert_eq!(
            in_template(
                "{{#if (contains x \"prod\")}}yes{{/if}}",
                json!({"x": "eu-prod-1"})
            ),
            "yes"
        );
    }

    #[test]
    fn date_formats_in_a_time_zone() {
        assert_eq!(
            call(helper_date, json!([NOW, "%Y-%m-%d %H:%M"])),
            Ok(json!("2026-11-28 00:57"))
        );
        assert_eq!(
            call(helper_date, json!([NOW, "%H:%M %Z", "Asia/Tokyo"])),
            Ok(json!("09:57 JST"))
        );
        assert_eq!(
            call(helper_date, json!([NOW])),
            Ok(json!("2026-11-28 00:57 UTC"))
        );
        assert_eq!(call(helper_date, json!([null])), Ok(json!("")));
        assert!(call(helper_date, json!([NOW, "%H", "Mars/Olympus"])).is_err());
        assert!(call(helper_date, json!(["not a time"])).is_err());
    }

    #[test]
    fn since_and_duration_are_humanised() {
        assert_eq!(
            call(helper_since, json!(["2026-11-28T00:27:38Z"])),
            Ok(json!("30m"))
        );
        assert_eq!(
            call(
                helper_duration,
                json!(["2026-11-28T00:00:00Z", "2026-11-28T01:30:10Z"])
            ),
            Ok(json!("1h30m"))
        );
        assert_eq!(
            call(helper_duration, json!(["2026-11-28T00:57:00Z", null])),
            Ok(json!("38s")),
            "no end: until now"
        );
        assert_eq!(humanize_seconds(0), "0s");
        assert_eq!(humanize_seconds(45), "45s");
        assert_eq!(humanize_seconds(3601), "1h");
        assert_eq!(humanize_seconds(2 * 86_400 + 3 * 3600 + 59), "2d3h");
    }

    #[test]
    fn severity_icon_and_colour() {
        assert_eq!(severity_icon("critical"), "🔴");
        assert_eq!(severity_icon("Warning"), "🟠");
        assert_eq!(severity_icon("info"), "🔵");
        assert_eq!(severity_icon("resolved"), "✅");
        assert_eq!(severity_icon("whatever"), "⚪");
        assert_eq!(severity_color("critical"), "#d93025");
        assert_eq!(severity_color("warning"), "#f29900");
        assert_eq!(severity_color("resolved"), "#188038");
        assert_eq!(
            in_template("{{severity_icon x}}", json!({"x": "critical"})),
            "🔴"
        );
    }

    #[test]
    fn url_encode_and_json() {
        assert_eq!(
            in_template("{{url_encode x}}", json!({"x": "a b&c"})),
            "a%20b%26c"
        );
        assert_eq!(
            in_template("{{json x}}", json!({"x": {"a": [1, "b"]}})),
            "{\"a\":[1,\"b\"]}"
        );
    }

    #[test]
    fn plain_defuses_markup_for_plain_text_fields() {
        assert_eq!(
            in_template("{{plain x}}", json!({"x": "<users/all>"})),
            "‹users/all›"
        );
    }
}
