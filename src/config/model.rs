//! The typed, validated configuration the rest of kabar reads, with its documented defaults.
//! Only data and small accessors: reading YAML, expanding and checking values live beside it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

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
    /// Where state lives: SQLite under state_dir, or a PostgreSQL shared by replicas.
    pub store: super::store::StoreConfig,
    /// Spaces by name, in name order.
    pub spaces: BTreeMap<String, Space>,
    /// The Chat app spaces with `space: spaces/…` post as (app mode).
    pub chat_app: Option<crate::chat_app::ChatAppSettings>,
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
    /// Post as the Chat app (`chat_app`) to this space, `spaces/…`.
    App {
        space: String,
    },
    /// Render and log, never post.
    DryRun,
}

impl Target {
    /// What may be shown of the target: the host of the webhook URL, never its path or query.
    pub(crate) fn describe(&self) -> String {
        match self {
            Target::DryRun => "dry run".to_owned(),
            Target::App { space } => format!("Chat app in {space}"),
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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Card => "card",
        }
    }
}

impl Threading {
    /// The name as written in the config.
    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) fn parse(raw: &str) -> Option<Mention> {
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
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Chat's text syntax that notifies the user(s).
    pub(crate) fn markup(&self) -> String {
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
    /// App-mode spaces: what a resolve does (webhook spaces can only reply).
    pub on_resolve: OnResolve,
}

/// `on_resolve`: edit the opening card into its resolved form, reply in its thread, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnResolve {
    pub edit: bool,
    pub reply: bool,
}

/// One entry of `on_resolve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnResolveStep {
    Edit,
    Reply,
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
            on_resolve: OnResolve {
                edit: true,
                reply: true,
            },
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
    /// Spaces whose `receivers` list contains `receiver`.
    pub(crate) fn spaces_for_receiver<'a>(
        &'a self,
        receiver: &'a str,
    ) -> impl Iterator<Item = &'a Space> {
        self.spaces
            .values()
            .filter(move |s| s.receivers.iter().any(|r| r == receiver))
    }

    /// Every receiver name some space listens for, sorted and de-duplicated.
    pub(crate) fn receiver_names(&self) -> Vec<&str> {
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

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

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
}
