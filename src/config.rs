//! The YAML configuration: parsing, `${VAR}` expansion, defaults, per-space overrides and
//! validation. Every error names the key it is about; none repeats a secret value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::secret::{Secret, scrub};

/// The host Google Chat webhooks live on; anything else needs `delivery.allow_any_host`.
pub const CHAT_HOST: &str = "chat.googleapis.com";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid YAML: {0}")]
    Yaml(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    // Keys come from the file and may hold a newline or terminal escapes.
    ConfigError::Invalid {
        key: one_line(&key.into()),
        message: message.into(),
    }
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub max_body_bytes: usize,
    pub auth: Option<Auth>,
    pub delivery: Delivery,
    /// Limits of the HTTP listener.
    pub server: Server,
    /// Spaces by name, in name order.
    pub spaces: BTreeMap<String, Space>,
}

/// Credentials Alertmanager must present (`http_config.authorization` or `basic_auth`).
#[derive(Debug, Clone)]
pub enum Auth {
    Bearer(Secret),
    Basic { username: String, password: Secret },
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub rate_limit_per_second: f64,
    pub request_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub give_up_after: Duration,
    pub allow_any_host: bool,
    /// Outbound HTTP(S) proxy for Chat requests; may carry credentials. When absent, the
    /// standard HTTPS_PROXY / HTTP_PROXY / NO_PROXY variables apply.
    pub proxy_url: Option<Secret>,
}

/// How much the HTTP listener lets clients take; read once at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// A client must send a request's headers within this, and then its body within this
    /// again; an idle keep-alive connection is closed after it.
    pub read_timeout: Duration,
    /// Webhook requests being processed at once; more are answered 503 at once.
    pub max_concurrent_requests: usize,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub tls: Option<TlsFiles>,
}

/// PEM files of the listener's certificate (chain) and private key.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            read_timeout: Duration::from_secs(30),
            max_concurrent_requests: 256,
            tls: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Space {
    pub name: String,
    pub target: Target,
    /// Alertmanager receiver names routed here by `POST /alerts`.
    pub receivers: Vec<String>,
    pub options: SpaceOptions,
}

/// Where a space's messages go.
#[derive(Debug, Clone)]
pub enum Target {
    Webhook(Secret),
    /// Render and log, never post.
    DryRun,
}

impl Target {
    /// What may be shown of the target: the host of the webhook URL, never its path or query.
    pub fn describe(&self) -> String {
        match self {
            Target::DryRun => "dry run".to_owned(),
            Target::Webhook(url) => match reqwest::Url::parse(url.expose()) {
                Ok(parsed) => format!("webhook on {}", parsed.host_str().unwrap_or("?")),
                Err(_) => "webhook".to_owned(),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Text,
    Card,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threading {
    PerAlert,
    PerGroup,
    Off,
}

impl Format {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Card => "card",
        }
    }
}

impl Threading {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Threading::PerAlert => "per_alert",
            Threading::PerGroup => "per_group",
            Threading::Off => "off",
        }
    }
}

/// A Chat mention target, already in Chat's `users/...` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention(String);

impl Mention {
    /// `all`, `users/123`, a numeric id or an email address.
    pub fn parse(raw: &str) -> Option<Mention> {
        let raw = raw.trim();
        let id = raw.strip_prefix("users/").unwrap_or(raw);
        let valid = !id.is_empty()
            && id.len() <= 254
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "@._+-".contains(c));
        valid.then(|| Mention(format!("users/{id}")))
    }

    /// `users/all` or `users/123`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Chat's text syntax that notifies the user(s).
    pub fn markup(&self) -> String {
        format!("<{}>", self.0)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplatePaths {
    pub text: Option<PathBuf>,
    pub card: Option<PathBuf>,
}

/// The settings a space may override from `defaults`.
#[derive(Debug, Clone)]
pub struct SpaceOptions {
    pub format: Format,
    pub threading: Threading,
    pub send_resolved: bool,
    /// Zero turns reminders off.
    pub reminder_interval: Duration,
    pub max_new_threads_per_notification: u32,
    /// Severity label value -> who is mentioned on a firing message.
    pub mentions: BTreeMap<String, Vec<Mention>>,
    pub templates: TemplatePaths,
}

impl Default for SpaceOptions {
    fn default() -> Self {
        SpaceOptions {
            format: Format::Card,
            threading: Threading::PerAlert,
            send_resolved: true,
            reminder_interval: Duration::from_secs(4 * 3600),
            max_new_threads_per_notification: 10,
            mentions: BTreeMap::new(),
            templates: TemplatePaths::default(),
        }
    }
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            rate_limit_per_second: 1.0,
            request_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            give_up_after: Duration::from_secs(24 * 3600),
            allow_any_host: false,
            proxy_url: None,
        }
    }
}

impl Config {
    /// Reads, expands and validates the file at `path`. Relative paths inside it (secret
    /// files, templates) are taken relative to the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        // Absolute, so state_dir and the logs name the real folder whatever the working
        // directory (a relative config path has an empty parent: the working directory).
        let base = path.parent().unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
        Config::parse(&text, &base, &|name| std::env::var(name).ok())
    }

    /// Parses config text; `env` answers `${VAR}` look-ups.
    pub fn parse(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut value: Value = serde_yaml_ng::from_str(text).map_err(|e| {
            ConfigError::Yaml(one_line(&scrub(&plain_serde_message(&e.to_string()), &[])))
        })?;
        if value.is_null() {
            return Err(invalid(
                "spaces",
                "the config is empty: at least one space is needed",
            ));
        }
        value
            .apply_merge()
            .map_err(|e| ConfigError::Yaml(e.to_string()))?;
        expand_env(&mut value, &mut Vec::new(), env)?;
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "config".to_owned() } else { key };
            let message = e.into_inner().to_string();
            let line = line_of(text, &key, &message);
            let mut message = one_line(&scrub(&plain_serde_message(&message), &[]));
            if let Some(line) = line {
                message.push_str(&format!(" (line {line})"));
            }
            invalid(key, message)
        })?;
        raw.resolve(base_dir)
    }

    /// Spaces whose `receivers` list contains `receiver`.
    pub fn spaces_for_receiver<'a>(&'a self, receiver: &'a str) -> impl Iterator<Item = &'a Space> {
        self.spaces
            .values()
            .filter(move |s| s.receivers.iter().any(|r| r == receiver))
    }

    /// Every receiver name some space listens for, sorted and de-duplicated.
    pub fn receiver_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .spaces
            .values()
            .flat_map(|s| s.receivers.iter().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// Parses `250ms`, `10s`, `4h`, `1h30m`, `2d`, `0s` or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("{text:?} is not a duration (examples: 250ms, 10s, 4h, 1h30m)");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let part = number.checked_mul(unit_ms).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// Formats a duration the way it is written in the config (`1h30m`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Error messages for people

/// The line of the problem serde found in the expanded config. The expanded tree has no
/// positions, so the text is read once more, as written; its first error is the same one
/// when it names the same key or says the same thing (a `${VAR}` may change what the
/// text says, and then no line is given rather than a wrong one).
fn line_of(text: &str, key: &str, message: &str) -> Option<usize> {
    let direct: Result<RawConfig, _> =
        serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text));
    if let Err(error) = direct {
        let same_key = error.path().to_string() == key;
        let inner = error.into_inner();
        if same_key || inner.to_string().contains(message) {
            return inner.location().map(|location| location.line());
        }
    }
    unknown_field_line(text, message)
}

/// For `unknown field `x``: the one line that starts with the key `x:` in block style.
/// None when there are several (the same word under two parents) or none (flow style).
fn unknown_field_line(text: &str, message: &str) -> Option<usize> {
    let field = message.strip_prefix("unknown field `")?.split('`').next()?;
    let mut lines = text.lines().enumerate().filter(|(_, line)| {
        let line = line.trim_start();
        let line = line.strip_prefix("- ").unwrap_or(line).trim_start();
        line.strip_prefix(field)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    });
    match (lines.next(), lines.next()) {
        (Some((index, _)), None) => Some(index + 1),
        _ => None,
    }
}

/// serde's messages, without the values it quotes and the Rust type names it uses:
/// `invalid type: string "s3cret", expected struct RawAuth` becomes `expected a mapping
/// with bearer_token, bearer_token_file or basic, found a string`. A secret written in the
/// wrong place must not come back in an error, a log line or the reload answer.
///
/// The YAML parser's own messages have the same part after a key path (`a.b: `) and before
/// a position (` at line 3 column 18`), as when a tag (`!!int s3cret`) does not fit.
fn plain_serde_message(message: &str) -> String {
    for marker in ["invalid type: ", "invalid value: "] {
        let Some(start) = message.find(marker) else {
            continue;
        };
        let (head, rest) = (&message[..start], &message[start + marker.len()..]);
        // The expectation is ours and comes last; what was found may quote anything.
        let Some(at) = rest.rfind(", expected ") else {
            return format!("{head}has the wrong type");
        };
        let found = found_kind(&rest[..at]);
        let tail = &rest[at + ", expected ".len()..];
        let (expected, position) = match tail.rfind(" at line ") {
            Some(line) => (&tail[..line], &tail[line..]),
            None => (tail, ""),
        };
        let expected = expected_yaml(expected);
        return if marker == "invalid value: " {
            format!("{head}expected {expected}, found {found} out of range{position}")
        } else {
            format!("{head}expected {expected}, found {found}{position}")
        };
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // A key is not a secret, but a URL pasted where a key belongs holds one.
        if let Some(end) = rest.find('`') {
            let field = &rest[..end];
            if field.len() > 64 || field.contains("://") || field.contains('?') {
                return "unknown field (not shown: it looks like a URL, not a key)".to_owned();
            }
        }
    }
    message.to_owned()
}

/// A key quoted from the file may hold a newline or terminal escapes: not in a log line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// What kind of YAML value serde found, from its `Unexpected` text, without the value.
fn found_kind(found: &str) -> &'static str {
    let kinds = [
        ("string", "a string"),
        ("integer", "a number"),
        ("floating point", "a number"),
        ("boolean", "a true/false value"),
        ("sequence", "a list"),
        ("map", "a mapping"),
        ("unit", "an empty value"),
        ("null", "an empty value"),
        ("enum", "a tagged value"),
    ];
    for (prefix, kind) in kinds {
        if found.starts_with(prefix) {
            return kind;
        }
    }
    "another kind of value"
}

/// serde's expectation (a Rust type) as the YAML to write.
fn expected_yaml(expected: &str) -> String {
    let plain = match expected {
        "struct RawConfig" => {
            "a mapping of kabar's settings (listen, state_dir, auth, delivery, server, defaults, spaces)"
        }
        "struct RawAuth" => "a mapping with bearer_token, bearer_token_file or basic",
        "struct RawBasic" => "a mapping with username and password or password_file",
        "struct RawDelivery" => {
            "a mapping of delivery settings (rate_limit_per_second, request_timeout, backoff, give_up_after, ...)"
        }
        "struct RawServer" => "a mapping with read_timeout, max_concurrent_requests or tls",
        "struct RawTls" => "a mapping with cert_file and key_file",
        "struct RawBackoff" => "a mapping such as {initial: 1s, max: 60s}",
        "struct RawOptions" => {
            "a mapping of space settings (format, threading, send_resolved, reminder_interval, ...)"
        }
        "struct RawTemplates" => "a mapping such as {text: text.hbs, card: card.hbs}",
        "struct RawSpace" => {
            "a mapping of the space's settings, such as {webhook_url_file: /etc/kabar/ops, receivers: [ops]}"
        }
        "a map" => "a mapping (name: value lines, or {name: value})",
        "a sequence" => "a list, such as [a, b]",
        "a boolean" => "true or false",
        "path string" => "a path (a string)",
        "a string" => "a string",
        "f32" | "f64" => "a number",
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number of at least 0",
        "i8" | "i16" | "i32" | "i64" => "a whole number",
        other if other.starts_with("struct ") => "a mapping",
        other => return other.to_owned(),
    };
    plain.to_owned()
}

// ---------------------------------------------------------------------------------------
// Environment expansion

fn expand_env(
    value: &mut Value,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                let key = path.join(".");
                *s = expand_string(s, env).map_err(|message| {
                    // A `${` that is no variable reference may be part of a secret.
                    if is_secret_key(path) && message.ends_with(INVALID_REFERENCE) {
                        invalid(
                            &key,
                            format!(
                                "has a ${{...}}{INVALID_REFERENCE} (write $${{ for a literal ${{)"
                            ),
                        )
                    } else {
                        invalid(&key, message)
                    }
                })?;
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(format!("[{i}]"));
                expand_env(item, path, env)?;
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                path.push(k.as_str().unwrap_or("?").to_owned());
                expand_env(v, path, env)?;
                path.pop();
            }
        }
        Value::Tagged(tagged) => expand_env(&mut tagged.value, path, env)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

const INVALID_REFERENCE: &str = " that is not a valid variable reference";

/// Keys whose values are secrets (the last part of the key path).
fn is_secret_key(path: &[String]) -> bool {
    path.last().is_some_and(|last| {
        ["webhook_url", "bearer_token", "password", "proxy_url"].contains(&last.as_str())
    })
}

/// Expands `${VAR}` and `${VAR:-default}`; `$${` stands for a literal `${`.
fn expand_string(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| "unclosed ${ in value".to_owned())?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            let valid_name = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid_name {
                return Err(format!("${{{expr}}}{INVALID_REFERENCE}"));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (use ${{{name}:-default}} for a fallback)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The file's shape, before defaults and validation

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    state_dir: Option<PathBuf>,
    max_body_bytes: Option<u64>,
    auth: Option<RawAuth>,
    delivery: Option<RawDelivery>,
    server: Option<RawServer>,
    defaults: Option<RawOptions>,
    spaces: Option<BTreeMap<String, RawSpace>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    bearer_token: Option<RawSecret>,
    bearer_token_file: Option<PathBuf>,
    basic: Option<RawBasic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasic {
    username: String,
    password: Option<RawSecret>,
    password_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    rate_limit_per_second: Option<f64>,
    request_timeout: Option<RawDuration>,
    backoff: Option<RawBackoff>,
    give_up_after: Option<RawDuration>,
    allow_any_host: Option<bool>,
    proxy_url: Option<RawSecret>,
    proxy_url_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    read_timeout: Option<RawDuration>,
    max_concurrent_requests: Option<u64>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    initial: Option<RawDuration>,
    max: Option<RawDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOptions {
    format: Option<Format>,
    threading: Option<Threading>,
    send_resolved: Option<bool>,
    reminder_interval: Option<RawDuration>,
    max_new_threads_per_notification: Option<u32>,
    mentions: Option<BTreeMap<String, Vec<String>>>,
    templates: Option<RawTemplates>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplates {
    text: Option<PathBuf>,
    card: Option<PathBuf>,
}

/// A space: where it posts and which receivers it serves, plus any `defaults` key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpace {
    webhook_url: Option<RawSecret>,
    webhook_url_file: Option<PathBuf>,
    dry_run: Option<bool>,
    receivers: Option<Vec<String>>,
    format: Option<Format>,
    threading: Option<Threading>,
    send_resolved: Option<bool>,
    reminder_interval: Option<RawDuration>,
    max_new_threads_per_notification: Option<u32>,
    mentions: Option<BTreeMap<String, Vec<String>>>,
    templates: Option<RawTemplates>,
}

impl RawSpace {
    fn overrides(&mut self) -> RawOptions {
        RawOptions {
            format: self.format.take(),
            threading: self.threading.take(),
            send_resolved: self.send_resolved.take(),
            reminder_interval: self.reminder_interval.take(),
            max_new_threads_per_notification: self.max_new_threads_per_notification.take(),
            mentions: self.mentions.take(),
            templates: self.templates.take(),
        }
    }
}

#[derive(Clone, Copy)]
struct RawDuration(Duration);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl serde::de::Visitor<'_> for DurationVisitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as 250ms, 10s, 4h or 1h30m")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawDuration, E> {
                parse_duration(text).map(RawDuration).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RawDuration, E> {
                if n == 0 {
                    return Ok(RawDuration(Duration::ZERO));
                }
                Err(E::custom(format!(
                    "{n} has no unit: write {n}s, {n}ms, {n}m or {n}h"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RawDuration, E> {
                Err(E::custom(format!(
                    "{n} is not a duration: write one such as 250ms, 10s, 4h or 1h30m"
                )))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<RawDuration, E> {
                Err(E::custom(
                    "a number with a fraction is not a duration: write 1500ms or 1m30s",
                ))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

/// A secret as written in the file: only a YAML string is taken. Anything else is refused
/// by naming what YAML read, never the value, which serde's own errors would quote; and a
/// secret read as a number would not even be the one written (0x1F, 0o17, 1e3 and .inf do
/// not read back as typed).
struct RawSecret(String);

const SECRET_NOT_A_STRING: &str = "must be a string: put the value in quotes";

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        fn refuse<E: serde::de::Error>(what: &str) -> E {
            E::custom(format!(
                "{SECRET_NOT_A_STRING} (YAML read {what}, which can change it; the value is not shown because it is a secret)"
            ))
        }
        impl<'de> serde::de::Visitor<'de> for SecretVisitor {
            type Value = RawSecret;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSecret, E> {
                Ok(RawSecret(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<RawSecret, E> {
                Ok(RawSecret(v))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<RawSecret, E> {
                Err(refuse("a boolean"))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<RawSecret, E> {
                Err(refuse("a number"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<RawSecret, E> {
                Err(refuse("a number"))
            }
            fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<RawSecret, E> {
                Err(refuse("a number"))
            }
            fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<RawSecret, E> {
                Err(refuse("a number"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<RawSecret, E> {
                Err(refuse("a number"))
            }
            fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<RawSecret, E> {
                Err(refuse("binary data"))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<RawSecret, E> {
                Err(refuse("an empty value"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<RawSecret, A::Error> {
                Err(refuse("a list"))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<RawSecret, A::Error> {
                Err(refuse("a mapping"))
            }
            fn visit_enum<A: serde::de::EnumAccess<'de>>(
                self,
                _: A,
            ) -> Result<RawSecret, A::Error> {
                Err(refuse("a tagged value"))
            }
        }
        deserializer.deserialize_any(SecretVisitor)
    }
}

fn read_secret_file(key: &str, path: &Path, base_dir: &Path) -> Result<Secret, ConfigError> {
    let full = base_dir.join(path);
    let text = std::fs::read_to_string(&full)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", full.display())))?;
    let value = text.trim_end_matches(['\r', '\n']).trim();
    if value.is_empty() {
        return Err(invalid(key, format!("{} is empty", full.display())));
    }
    Ok(Secret::new(value))
}

fn one_secret(
    key: &str,
    inline: Option<RawSecret>,
    file: Option<PathBuf>,
    base_dir: &Path,
) -> Result<Option<Secret>, ConfigError> {
    match (inline.map(|RawSecret(value)| value), file) {
        (Some(_), Some(_)) => Err(invalid(key, format!("set {key} or {key}_file, not both"))),
        (Some(v), None) if v.trim().is_empty() => Err(invalid(key, "must not be empty")),
        (Some(v), None) => Ok(Some(Secret::new(v.trim()))),
        (None, Some(path)) => read_secret_file(&format!("{key}_file"), &path, base_dir).map(Some),
        (None, None) => Ok(None),
    }
}

/// `a/./b` as `a/b`, so the folder logged and printed reads as the one meant.
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

fn valid_space_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

impl RawConfig {
    fn resolve(self, base_dir: &Path) -> Result<Config, ConfigError> {
        let listen_text = self.listen.unwrap_or_else(|| "0.0.0.0:9095".to_owned());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{listen_text:?} is not an address:port such as 0.0.0.0:9095"),
            )
        })?;
        let max_body_bytes = self.max_body_bytes.unwrap_or(4 * 1024 * 1024);
        if !(1024..=256 * 1024 * 1024).contains(&max_body_bytes) {
            return Err(invalid(
                "max_body_bytes",
                "must be between 1024 and 268435456",
            ));
        }
        let auth = self.auth.map(|a| resolve_auth(a, base_dir)).transpose()?;
        let delivery = resolve_delivery(self.delivery, base_dir)?;
        let server = resolve_server(self.server, base_dir)?;

        let defaults_raw = self.defaults.unwrap_or_default();
        let defaults = apply_options(SpaceOptions::default(), defaults_raw, "defaults", base_dir)?;

        let raw_spaces = self.spaces.unwrap_or_default();
        if raw_spaces.is_empty() {
            return Err(invalid("spaces", "at least one space is needed"));
        }
        let mut spaces = BTreeMap::new();
        for (name, mut raw) in raw_spaces {
            let key = format!("spaces.{name}");
            if !valid_space_name(&name) {
                return Err(invalid(
                    key,
                    "a space name is 1-64 characters of letters, digits, '_', '.', '-', starting with a letter or digit",
                ));
            }
            let overrides = raw.overrides();
            let options = apply_options(defaults.clone(), overrides, &key, base_dir)?;
            let target = resolve_target(&key, &mut raw, &delivery, base_dir)?;
            let receivers = match raw.receivers {
                Some(list) if list.is_empty() => {
                    return Err(invalid(
                        format!("{key}.receivers"),
                        "must list at least one receiver name",
                    ));
                }
                Some(list) => list,
                None => vec![name.clone()],
            };
            if let Some(bad) = receivers.iter().position(|r| r.trim().is_empty()) {
                return Err(invalid(
                    format!("{key}.receivers[{bad}]"),
                    "must not be empty",
                ));
            }
            spaces.insert(
                name.clone(),
                Space {
                    name,
                    target,
                    receivers,
                    options,
                },
            );
        }
        Ok(Config {
            listen,
            // Relative like every other path in the file: to the config's folder.
            state_dir: normalize(
                &base_dir.join(self.state_dir.unwrap_or_else(|| PathBuf::from("./data"))),
            ),
            max_body_bytes: max_body_bytes as usize,
            auth,
            delivery,
            server,
            spaces,
        })
    }
}

fn resolve_auth(raw: RawAuth, base_dir: &Path) -> Result<Auth, ConfigError> {
    let bearer = one_secret(
        "auth.bearer_token",
        raw.bearer_token,
        raw.bearer_token_file,
        base_dir,
    )?;
    match (bearer, raw.basic) {
        (Some(_), Some(_)) => Err(invalid(
            "auth",
            "choose bearer_token(_file) or basic, not both",
        )),
        (Some(token), None) => Ok(Auth::Bearer(token)),
        (None, Some(basic)) => {
            if basic.username.trim().is_empty() {
                return Err(invalid("auth.basic.username", "must not be empty"));
            }
            let password = one_secret(
                "auth.basic.password",
                basic.password,
                basic.password_file,
                base_dir,
            )?
            .ok_or_else(|| invalid("auth.basic", "needs password or password_file"))?;
            Ok(Auth::Basic {
                username: basic.username,
                password,
            })
        }
        (None, None) => Err(invalid(
            "auth",
            "needs bearer_token, bearer_token_file or basic (remove the auth key to run without authentication)",
        )),
    }
}

fn resolve_delivery(raw: Option<RawDelivery>, base_dir: &Path) -> Result<Delivery, ConfigError> {
    let mut d = Delivery::default();
    let Some(raw) = raw else { return Ok(d) };
    if let Some(rate) = raw.rate_limit_per_second {
        if !(rate.is_finite() && rate > 0.0 && rate <= 1000.0) {
            return Err(invalid(
                "delivery.rate_limit_per_second",
                "must be a number above 0 and at most 1000",
            ));
        }
        d.rate_limit_per_second = rate;
    }
    if let Some(RawDuration(t)) = raw.request_timeout {
        if t.is_zero() {
            return Err(invalid("delivery.request_timeout", "must be above 0"));
        }
        d.request_timeout = t;
    }
    if let Some(backoff) = raw.backoff {
        if let Some(RawDuration(v)) = backoff.initial {
            d.backoff_initial = v;
        }
        if let Some(RawDuration(v)) = backoff.max {
            d.backoff_max = v;
        }
    }
    if d.backoff_initial.is_zero() {
        return Err(invalid("delivery.backoff.initial", "must be above 0"));
    }
    if d.backoff_max < d.backoff_initial {
        return Err(invalid(
            "delivery.backoff.max",
            "must not be below backoff.initial",
        ));
    }
    if let Some(RawDuration(v)) = raw.give_up_after {
        if v.is_zero() {
            return Err(invalid("delivery.give_up_after", "must be above 0"));
        }
        d.give_up_after = v;
    }
    d.allow_any_host = raw.allow_any_host.unwrap_or(false);
    d.proxy_url = one_secret(
        "delivery.proxy_url",
        raw.proxy_url,
        raw.proxy_url_file,
        base_dir,
    )?;
    if let Some(proxy) = &d.proxy_url {
        check_proxy_url(proxy)?;
    }
    Ok(d)
}

fn resolve_server(raw: Option<RawServer>, base_dir: &Path) -> Result<Server, ConfigError> {
    let mut server = Server::default();
    let Some(raw) = raw else { return Ok(server) };
    if let Some(RawDuration(t)) = raw.read_timeout {
        if t < Duration::from_secs(1) {
            return Err(invalid("server.read_timeout", "must be at least 1s"));
        }
        server.read_timeout = t;
    }
    if let Some(n) = raw.max_concurrent_requests {
        if !(1..=65_536).contains(&n) {
            return Err(invalid(
                "server.max_concurrent_requests",
                "must be between 1 and 65536",
            ));
        }
        server.max_concurrent_requests = n as usize;
    }
    server.tls = raw.tls.map(|tls| TlsFiles {
        cert_file: base_dir.join(tls.cert_file),
        key_file: base_dir.join(tls.key_file),
    });
    Ok(server)
}

/// The proxy URL may hold a password, so no message here repeats any part of it.
fn check_proxy_url(proxy: &Secret) -> Result<(), ConfigError> {
    const KEY: &str = "delivery.proxy_url";
    let parsed = reqwest::Url::parse(proxy.expose()).map_err(|e| {
        invalid(
            KEY,
            format!("not a valid URL ({e}); expected http://[user:password@]host:port"),
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(
            KEY,
            "must be an http:// or https:// proxy URL such as http://proxy.example:3128",
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(KEY, "names no host"));
    }
    if parsed.path() != "/" || parsed.query().is_some() {
        return Err(invalid(
            KEY,
            "must be only scheme, optional user:password, host and port (no path or query)",
        ));
    }
    Ok(())
}

fn apply_options(
    mut options: SpaceOptions,
    raw: RawOptions,
    key: &str,
    base_dir: &Path,
) -> Result<SpaceOptions, ConfigError> {
    if let Some(format) = raw.format {
        options.format = format;
    }
    if let Some(threading) = raw.threading {
        options.threading = threading;
    }
    if let Some(v) = raw.send_resolved {
        options.send_resolved = v;
    }
    if let Some(RawDuration(v)) = raw.reminder_interval {
        if !v.is_zero() && v < Duration::from_secs(60) {
            return Err(invalid(
                format!("{key}.reminder_interval"),
                "must be 0s (off) or at least 1m",
            ));
        }
        options.reminder_interval = v;
    }
    if let Some(v) = raw.max_new_threads_per_notification {
        if v == 0 {
            return Err(invalid(
                format!("{key}.max_new_threads_per_notification"),
                "must be at least 1",
            ));
        }
        options.max_new_threads_per_notification = v;
    }
    if let Some(mentions) = raw.mentions {
        let mut parsed = BTreeMap::new();
        for (severity, targets) in mentions {
            let mut list = Vec::new();
            for (i, target) in targets.iter().enumerate() {
                let mention = Mention::parse(target).ok_or_else(|| {
                    invalid(
                        format!("{key}.mentions.{severity}[{i}]"),
                        format!(
                            "{target:?} is not a Chat user: use \"all\", a user id or users/<id>"
                        ),
                    )
                })?;
                list.push(mention);
            }
            parsed.insert(severity, list);
        }
        options.mentions = parsed;
    }
    if let Some(templates) = raw.templates {
        if let Some(path) = templates.text {
            options.templates.text = Some(base_dir.join(path));
        }
        if let Some(path) = templates.card {
            options.templates.card = Some(base_dir.join(path));
        }
    }
    Ok(options)
}

fn resolve_target(
    key: &str,
    raw: &mut RawSpace,
    delivery: &Delivery,
    base_dir: &Path,
) -> Result<Target, ConfigError> {
    let url = one_secret(
        &format!("{key}.webhook_url"),
        raw.webhook_url.take(),
        raw.webhook_url_file.take(),
        base_dir,
    )?;
    match (url, raw.dry_run.unwrap_or(false)) {
        (Some(_), true) => Err(invalid(
            key,
            "set webhook_url(_file) or dry_run: true, not both",
        )),
        (None, false) => Err(invalid(
            key,
            "needs exactly one of webhook_url, webhook_url_file or dry_run: true",
        )),
        (None, true) => Ok(Target::DryRun),
        (Some(url), false) => {
            check_webhook_url(&format!("{key}.webhook_url"), &url, delivery.allow_any_host)?;
            Ok(Target::Webhook(url))
        }
    }
}

fn check_webhook_url(key: &str, url: &Secret, allow_any_host: bool) -> Result<(), ConfigError> {
    let parsed = reqwest::Url::parse(url.expose())
        .map_err(|e| invalid(key, format!("not a valid URL ({e})")))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(invalid(key, "must be an https:// URL"));
    }
    if allow_any_host {
        return Ok(());
    }
    if parsed.scheme() != "https" || parsed.host_str() != Some(CHAT_HOST) {
        return Err(invalid(
            key,
            format!(
                "must be https://{CHAT_HOST}/v1/spaces/... (set delivery.allow_any_host: true for a proxy or test server)"
            ),
        ));
    }
    if !parsed.path().starts_with("/v1/spaces/") {
        return Err(invalid(
            key,
            "must be a Chat incoming-webhook URL: /v1/spaces/SPACE/messages?key=...&token=...",
        ));
    }
    check_webhook_credentials(key, url)
}

/// The two query values Chat needs, present and not HTML-escaped. Copied from a web page,
/// an HTML mail or a templating tool, `&` arrives as `&amp;`: Chat then sees no token and
/// answers 400 or 403 at the first alert instead of now. Checked also with
/// allow_any_host: a relay in front of Chat passes the same URL on.
fn check_webhook_credentials(key: &str, url: &Secret) -> Result<(), ConfigError> {
    let text = url.expose();
    let lowered = text.to_ascii_lowercase();
    if ["&amp;", "&#38;", "&#x26;"]
        .iter()
        .any(|e| lowered.contains(e))
    {
        return Err(invalid(
            key,
            "is HTML-escaped (it contains &amp;): write a plain & between the key and token parameters",
        ));
    }
    let Ok(parsed) = reqwest::Url::parse(text) else {
        return Err(invalid(key, "not a valid URL"));
    };
    for name in ["key", "token"] {
        let present = parsed
            .query_pairs()
            .any(|(k, v)| k == name && !v.trim().is_empty());
        if !present {
            return Err(invalid(
                key,
                format!(
                    "has no {name}=... parameter: copy the whole webhook URL from the Chat space (Apps & integrations, Webhooks); it ends ?key=...&token=..."
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/nonexistent"), &|name| match name {
            "OPS_URL" => {
                Some("https://chat.googleapis.com/v1/spaces/AAA/messages?key=k1&token=t1".into())
            }
            "TOKEN" => Some("s3cret-token".into()),
            _ => None,
        })
    }

    fn error_of(text: &str) -> String {
        parse(text)
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = parse("spaces:\n  demo:\n    dry_run: true\n").expect("valid");
        assert_eq!(config.listen, "0.0.0.0:9095".parse().expect("addr"));
        assert_eq!(config.state_dir, PathBuf::from("/nonexistent/data"));
        assert_eq!(config.max_body_bytes, 4 * 1024 * 1024);
        assert!(config.auth.is_none());
        assert_eq!(config.delivery.rate_limit_per_second, 1.0);
        assert_eq!(config.delivery.request_timeout, Duration::from_secs(10));
        assert_eq!(config.delivery.backoff_initial, Duration::from_secs(1));
        assert_eq!(config.delivery.backoff_max, Duration::from_secs(60));
        assert_eq!(config.delivery.give_up_after, Duration::from_secs(86_400));
        let demo = &config.spaces["demo"];
        assert_eq!(demo.receivers, vec!["demo".to_owned()]);
        assert!(matches!(demo.target, Target::DryRun));
        assert_eq!(demo.options.threading, Threading::PerAlert);
        assert!(demo.options.send_resolved);
        assert_eq!(
            demo.options.reminder_interval,
            Duration::from_secs(4 * 3600)
        );
        assert_eq!(demo.options.max_new_threads_per_notification, 10);
    }

    #[test]
    fn space_overrides_win_over_defaults() {
        let config = parse(
            "defaults:\n  send_resolved: false\n  reminder_interval: 1h30m\n  mentions: {critical: [all]}\nspaces:\n  a: {dry_run: true}\n  b: {dry_run: true, send_resolved: true, reminder_interval: 0s, threading: 'off'}\n",
        )
        .expect("valid");
        let a = &config.spaces["a"].options;
        assert!(!a.send_resolved);
        assert_eq!(a.reminder_interval, Duration::from_secs(5400));
        assert_eq!(a.mentions["critical"][0].markup(), "<users/all>");
        let b = &config.spaces["b"].options;
        assert!(b.send_resolved);
        assert_eq!(b.reminder_interval, Duration::ZERO);
        assert_eq!(b.threading, Threading::Off);
        assert_eq!(
            b.mentions["critical"].len(),
            1,
            "unset keys inherit defaults"
        );
    }

    #[test]
    fn env_expansion_with_and_without_default() {
        let config = parse(
            "listen: \"${LISTEN:-127.0.0.1:9999}\"\nauth: {bearer_token: \"${TOKEN}\"}\nspaces:\n  ops: {webhook_url: \"${OPS_URL}\"}\n",
        )
        .expect("valid");
        assert_eq!(config.listen.port(), 9999);
        assert!(matches!(&config.auth, Some(Auth::Bearer(t)) if t.expose() == "s3cret-token"));
        assert!(matches!(&config.spaces["ops"].target, Target::Webhook(_)));
    }

    #[test]
    fn unset_variable_names_key_and_variable() {
        let err = error_of("spaces:\n  ops: {webhook_url: \"${MISSING_URL}\"}\n");
        assert!(err.contains("spaces.ops.webhook_url"), "{err}");
        assert!(err.contains("MISSING_URL"), "{err}");
    }

    #[test]
    fn literal_dollar_brace_is_escaped() {
        assert_eq!(
            expand_string("a$${B}c $d", &|_| None).expect("ok"),
            "a${B}c $d"
        );
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = error_of("spaces:\n  ops:\n    dry_run: true\n    recievers: [x]\n");
        assert!(err.contains("spaces.ops"), "{err}");
        assert!(err.contains("recievers"), "{err}");
        let err = error_of("delivery:\n  rate_limit: 2\nspaces: {a: {dry_run: true}}\n");
        assert!(
            err.contains("delivery") && err.contains("rate_limit"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (
                "delivery: {request_timeout: 10 seconds}\nspaces: {a: {dry_run: true}}",
                "delivery.request_timeout",
            ),
            (
                "delivery: {rate_limit_per_second: 0}\nspaces: {a: {dry_run: true}}",
                "delivery.rate_limit_per_second",
            ),
            (
                "delivery: {backoff: {initial: 10s, max: 1s}}\nspaces: {a: {dry_run: true}}",
                "delivery.backoff.max",
            ),
            ("listen: nowhere\nspaces: {a: {dry_run: true}}", "listen"),
            (
                "defaults: {threading: sometimes}\nspaces: {a: {dry_run: true}}",
                "defaults.threading",
            ),
            (
                "spaces: {a: {dry_run: true, mentions: {critical: ['<users/all>']}}}",
                "spaces.a.mentions.critical[0]",
            ),
            ("spaces: {a: {}}", "spaces.a"),
            ("spaces: {'bad name': {dry_run: true}}", "spaces.bad name"),
            ("spaces: {}", "spaces"),
            (
                "spaces: {a: {dry_run: true, reminder_interval: 5s}}",
                "spaces.a.reminder_interval",
            ),
            ("auth: {}\nspaces: {a: {dry_run: true}}", "auth"),
        ];
        for (text, key) in cases {
            let err = error_of(text);
            assert!(
                err.starts_with(key),
                "error for {text:?} should name {key}: {err}"
            );
        }
    }

    #[test]
    fn space_needs_exactly_one_target() {
        let err = error_of("spaces:\n  a: {dry_run: true, webhook_url: \"${OPS_URL}\"}\n");
        assert!(err.contains("not both"), "{err}");
        let err = error_of("spaces:\n  a: {dry_run: false}\n");
        assert!(err.contains("exactly one"), "{err}");
    }

    #[test]
    fn webhook_host_is_checked_without_printing_the_url() {
        let err = error_of(
            "spaces:\n  a: {webhook_url: 'http://127.0.0.1:9/v1/spaces/X/messages?key=k&token=sekrit'}\n",
        );
        assert!(err.contains("allow_any_host"), "{err}");
        assert!(!err.contains("sekrit"), "{err}");
        let ok = parse(
            "delivery: {allow_any_host: true}\nspaces:\n  a: {webhook_url: 'http://127.0.0.1:9/v1/spaces/X/messages?key=k&token=sekrit'}\n",
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn secret_files_are_read_relative_to_the_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("ops-url"),
            "https://chat.googleapis.com/v1/spaces/S/messages?key=a&token=b\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("token"), "tok\n").expect("write");
        let config = Config::parse(
            "auth: {bearer_token_file: token}\nspaces:\n  ops: {webhook_url_file: ops-url}\n",
            dir.path(),
            &|_| None,
        )
        .expect("valid");
        assert!(matches!(&config.auth, Some(Auth::Bearer(t)) if t.expose() == "tok"));
        match &config.spaces["ops"].target {
            Target::Webhook(url) => assert!(url.expose().ends_with("token=b")),
            Target::DryRun => panic!("expected a webhook"),
        }
        let err = Config::parse(
            "spaces:\n  ops: {webhook_url_file: missing}\n",
            dir.path(),
            &|_| None,
        )
        .expect_err("missing file");
        assert!(
            err.to_string().starts_with("spaces.ops.webhook_url_file"),
            "{err}"
        );
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let config = parse(
            "auth: {bearer_token: \"${TOKEN}\"}\nspaces:\n  ops: {webhook_url: \"${OPS_URL}\"}\n",
        )
        .expect("valid");
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret-token"));
        assert!(!debug.contains("token=t1"));
        assert_eq!(
            config.spaces["ops"].target.describe(),
            "webhook on chat.googleapis.com"
        );
    }

    #[test]
    fn receivers_route_to_spaces() {
        let config = parse(
            "spaces:\n  a: {dry_run: true, receivers: [ops, 'monitoring/ops/ops']}\n  b: {dry_run: true, receivers: [ops]}\n  c: {dry_run: true}\n",
        )
        .expect("valid");
        let names: Vec<&str> = config
            .spaces_for_receiver("ops")
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(config.receiver_names(), ["c", "monitoring/ops/ops", "ops"]);
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1.5h").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
    }

    #[test]
    fn proxy_url_is_validated_and_kept_secret() {
        let with = |proxy: &str| {
            parse(&format!(
                "delivery: {{proxy_url: \"{proxy}\"}}\nspaces:\n  demo: {{dry_run: true}}\n"
            ))
        };
        let config = with("http://am:pr0xy-pass@proxy.internal:3128").expect("valid");
        let proxy = config.delivery.proxy_url.as_ref().expect("proxy kept");
        assert_eq!(proxy.expose(), "http://am:pr0xy-pass@proxy.internal:3128");
        assert!(!format!("{config:?}").contains("pr0xy-pass"));
        assert!(with("https://proxy.internal:8443").is_ok());
        for (bad, expected) in [
            (
                "socks5://u:pr0xy-pass@proxy:1080",
                "must be an http:// or https:// proxy",
            ),
            ("pr0xy-pass", "not a valid URL"),
            ("http://u:pr0xy-pass@proxy:3128/path", "no path or query"),
        ] {
            let message = with(bad).expect_err(bad).to_string();
            assert!(message.starts_with("delivery.proxy_url: "), "{message}");
            assert!(message.contains(expected), "{message}");
            assert!(!message.contains("pr0xy-pass"), "{message}");
        }
        let unset = parse("spaces:\n  demo: {dry_run: true}\n").expect("valid");
        assert!(unset.delivery.proxy_url.is_none());
    }

    #[test]
    fn server_limits_have_defaults_and_bounds() {
        let config = parse("spaces:\n  demo: {dry_run: true}\n").expect("valid");
        assert_eq!(config.server, Server::default());
        assert_eq!(config.server.read_timeout, Duration::from_secs(30));
        assert_eq!(config.server.max_concurrent_requests, 256);
        let tuned = parse(
            "server: {read_timeout: 5s, max_concurrent_requests: 8}\nspaces:\n  demo: {dry_run: true}\n",
        )
        .expect("valid");
        assert_eq!(tuned.server.read_timeout, Duration::from_secs(5));
        assert_eq!(tuned.server.max_concurrent_requests, 8);
        assert_eq!(tuned.server.tls, None);
        let tls = parse(
            "server: {tls: {cert_file: tls/cert.pem, key_file: /etc/kabar/key.pem}}\nspaces:\n  demo: {dry_run: true}\n",
        )
        .expect("valid");
        assert_eq!(
            tls.server.tls,
            Some(TlsFiles {
                cert_file: PathBuf::from("/nonexistent/tls/cert.pem"),
                key_file: PathBuf::from("/etc/kabar/key.pem"),
            })
        );
        for (bad, key) in [
            (
                "server: {read_timeout: 10ms}",
                "server.read_timeout: must be at least 1s",
            ),
            (
                "server: {max_concurrent_requests: 0}",
                "server.max_concurrent_requests: must be between",
            ),
            ("server: {idle: 1s}", "server.idle: unknown field `idle`"),
            (
                "server: {tls: {cert_file: c.pem}}",
                "server.tls: missing field `key_file`",
            ),
        ] {
            let message = error_of(&format!("{bad}\nspaces:\n  demo: {{dry_run: true}}\n"));
            assert!(message.starts_with(key), "{message}");
        }
    }

    /// Every way YAML can hand a secret key something else than a string: the error names
    /// the key and never the value, in the form written or the form YAML read it as.
    #[test]
    fn secrets_of_any_yaml_type_are_refused_without_the_value() {
        let keys = [
            (
                "spaces:\n  a:\n    webhook_url: VALUE\n",
                "spaces.a.webhook_url",
            ),
            (
                "auth:\n  bearer_token: VALUE\nspaces: {a: {dry_run: true}}\n",
                "auth.bearer_token",
            ),
            (
                "auth:\n  basic: {username: am, password: VALUE}\nspaces: {a: {dry_run: true}}\n",
                "auth.basic.password",
            ),
            (
                "delivery:\n  proxy_url: VALUE\nspaces: {a: {dry_run: true}}\n",
                "delivery.proxy_url",
            ),
        ];
        // (as written, forms it may be printed in once YAML read it)
        let shapes: [(&str, &[&str]); 14] = [
            // A YAML tag makes the parser itself complain, quoting the string.
            ("!!int t4g-int-secret", &["t4g-int"]),
            ("!!float t4g-float-secret", &["t4g-float"]),
            ("!!bool t4g-bool-secret", &["t4g-bool"]),
            ("!!null t4g-null-secret", &["t4g-null"]),
            // `${` inside a secret is read as a variable reference.
            ("\"pa55${w0rd part}\"", &["w0rd part", "pa55"]),
            ("987654321987", &["987654321987"]),
            ("0x1F2E3D", &["0x1F2E3D", "2043453"]),
            ("-0o17777", &["17777", "8191"]),
            ("6.02214076e23", &["6.02214076", "602214076"]),
            (".inf", &["inf`", ".inf"]),
            ("true", &["`true`"]),
            (
                "[s3q-first-9181, s3q-second-7272]",
                &["s3q-first", "s3q-second"],
            ),
            ("{m4p-key-5151: m4p-value-6262}", &["m4p-key", "m4p-value"]),
            ("!custom t4gged-secret-3131", &["t4gged-secret"]),
        ];
        for (template, key) in keys {
            for (value, forms) in shapes {
                let text = template.replace("VALUE", value);
                let err = error_of(&text);
                assert!(err.contains(key), "{text:?} should name {key}: {err}");
                for form in forms {
                    assert!(!err.contains(form), "{text:?} echoed {form}: {err}");
                }
            }
        }
    }

    #[test]
    fn a_string_where_a_mapping_belongs_is_not_echoed() {
        let env =
            |name: &str| (name == "KABAR_TOKEN").then(|| "env-t0ken-from-var-4242".to_owned());
        for (text, key, secret) in [
            (
                "auth: b34rer-literal-1111\nspaces: {a: {dry_run: true}}\n",
                "auth",
                "b34rer-literal",
            ),
            (
                "auth: \"${KABAR_TOKEN}\"\nspaces: {a: {dry_run: true}}\n",
                "auth",
                "env-t0ken",
            ),
            (
                "auth: {basic: \"am:${KABAR_TOKEN}\"}\nspaces: {a: {dry_run: true}}\n",
                "auth.basic",
                "env-t0ken",
            ),
            (
                "spaces:\n  a: https://chat.googleapis.com/v1/spaces/SP4CE-ID/messages?key=k&token=t\n",
                "spaces.a",
                "SP4CE-ID",
            ),
            ("spaces: [\"${KABAR_TOKEN}\"]\n", "spaces", "env-t0ken"),
        ] {
            let err = Config::parse(text, Path::new("/nonexistent"), &env)
                .expect_err(text)
                .to_string();
            assert!(err.starts_with(key), "{text:?} should name {key}: {err}");
            assert!(!err.contains(secret), "{text:?} echoed the value: {err}");
            assert!(
                !err.contains("Raw"),
                "{text:?} named an internal type: {err}"
            );
            assert!(
                err.contains("mapping"),
                "{text:?} should say a mapping was expected: {err}"
            );
        }
    }

    #[test]
    fn type_errors_say_what_yaml_was_expected() {
        for (text, expected) in [
            (
                "spaces: {a: [x]}",
                "spaces.a: expected a mapping of the space's settings",
            ),
            ("spaces: [a]", "spaces: expected a mapping"),
            (
                "spaces: {a: {dry_run: yes please}}",
                "spaces.a.dry_run: expected true or false",
            ),
            (
                "spaces: {a: {dry_run: true, max_new_threads_per_notification: -1}}",
                "spaces.a.max_new_threads_per_notification: expected a whole number",
            ),
            (
                "state_dir: [a]\nspaces: {a: {dry_run: true}}",
                "state_dir: expected a path",
            ),
            (
                "delivery: {request_timeout: 10}\nspaces: {a: {dry_run: true}}",
                "delivery.request_timeout: 10 has no unit",
            ),
        ] {
            let err = error_of(text);
            assert!(err.starts_with(expected), "{text:?}: {err}");
            assert!(
                !err.contains("struct") && !err.contains("u32"),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn webhook_url_file_contents_are_never_echoed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for contents in [
            b"f1le-secret-not-a-url".to_vec(),
            b"https://chat.googleapis.com/v1/spaces/X/messages?key=f1le-k&amp;token=f1le-t"
                .to_vec(),
            b"https://chat.googleapis.com/v1/spaces/X/messages?key=f1le-k".to_vec(),
            b"http://f1le-host.example/v1/spaces/X/messages?key=f1le-k&token=f1le-t".to_vec(),
            b"https://f1le-user:f1le-pass@chat.googleapis.com:99999/x".to_vec(),
            b"[f1le-list, f1le-item]".to_vec(),
            vec![0xff, 0xfe, b'f', b'1', b'l', b'e', b'-', b'x'],
        ] {
            std::fs::write(dir.path().join("url"), &contents).expect("write");
            let err = Config::parse(
                "spaces:\n  ops: {webhook_url_file: url}\n",
                dir.path(),
                &|_| None,
            )
            .expect_err("refused")
            .to_string();
            assert!(err.starts_with("spaces.ops.webhook_url"), "{err}");
            assert!(!err.contains("f1le"), "{err}");
        }
    }

    #[test]
    fn a_quoted_key_cannot_break_the_error_onto_several_lines() {
        let err =
            error_of("spaces:\n  a:\n    dry_run: true\n    \"re\\ncei\\u001b[31mvers\": [x]\n");
        assert!(err.contains("unknown field"), "{err}");
        assert!(!err.contains('\n') && !err.contains('\u{1b}'), "{err:?}");
    }

    #[test]
    fn unknown_keys_carry_their_line() {
        let err = error_of("spaces:\n  ops:\n    dry_run: true\n    recievers: [x]\n");
        assert!(
            err.starts_with("spaces.ops.recievers: unknown field"),
            "{err}"
        );
        assert!(err.contains("line 4"), "{err}");
        let err = error_of("listen: 127.0.0.1:1\nstate: /tmp\nspaces: {a: {dry_run: true}}\n");
        assert!(err.contains("`state`") && err.contains("line 2"), "{err}");
        // A `${VAR}` earlier in the file reads differently before expansion; the line is
        // still found.
        let err = error_of(
            "delivery:\n  request_timeout: \"${T:-10s}\"\nspaces:\n  a:\n    dry_run: true\n    recievers: [x]\n",
        );
        assert!(err.contains("line 6"), "{err}");
    }

    #[test]
    fn relative_state_dir_resolves_against_the_config_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kabar.yaml");
        std::fs::write(&path, "state_dir: ./data\nspaces: {a: {dry_run: true}}\n").expect("write");
        let config = Config::load(&path).expect("valid");
        assert_eq!(config.state_dir, dir.path().join("data"));
        assert!(config.state_dir.is_absolute());
        std::fs::write(&path, "spaces: {a: {dry_run: true}}\n").expect("write");
        assert_eq!(
            Config::load(&path).expect("valid").state_dir,
            dir.path().join("data")
        );
        std::fs::write(
            &path,
            "state_dir: /var/lib/kabar\nspaces: {a: {dry_run: true}}\n",
        )
        .expect("write");
        assert_eq!(
            Config::load(&path).expect("valid").state_dir,
            PathBuf::from("/var/lib/kabar")
        );
    }

    #[test]
    fn html_escaped_or_incomplete_webhook_urls_are_refused_with_the_fix() {
        let base = "https://chat.googleapis.com/v1/spaces/AAA/messages";
        for (url, expected) in [
            (
                format!("{base}?key=k3y-v4l&amp;token=t0k-v4l"),
                "HTML-escaped",
            ),
            (
                format!("{base}?key=k3y-v4l&#38;token=t0k-v4l"),
                "HTML-escaped",
            ),
            (format!("{base}?token=t0k-v4l"), "no key="),
            (format!("{base}?key=k3y-v4l"), "no token="),
            (format!("{base}?key=&token=t0k-v4l"), "no key="),
            (base.to_owned(), "no key="),
        ] {
            let err = error_of(&format!("spaces:\n  ops:\n    webhook_url: '{url}'\n"));
            assert!(err.starts_with("spaces.ops.webhook_url: "), "{err}");
            assert!(err.contains(expected), "{url}: {err}");
            assert!(
                !err.contains("k3y-v4l") && !err.contains("t0k-v4l"),
                "{err}"
            );
        }
        let ok = format!("spaces:\n  ops:\n    webhook_url: '{base}?key=k&token=t'\n");
        assert!(parse(&ok).is_ok());
    }
}
