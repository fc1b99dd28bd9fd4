//! kabar: a Prometheus Alertmanager receiver for Google Chat.
//!
//! The flow, one module per stage: [`ingest`] (HTTP edge, auth, parsing) →
//! [`routing`] (receiver → spaces) → [`state`] (what changed) → [`render`] (templates,
//! Chat limits) → [`outbox`] (SQLite, committed before the 200) → [`delivery`] (per-space
//! senders) → [`chat`] (the webhook client); [`metrics`] and [`config`] serve them all,
//! [`server`] wires them into a running service.

pub mod chat;
pub mod commands;
pub mod config;
pub mod dead_letters;
pub mod delivery;
pub mod ingest;
pub mod listener;
pub mod metrics;
pub mod outbox;
pub mod payload;
pub mod render;
pub mod routing;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod state;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("KABAR_GIT_REVISION");
/// What `kabar --version` prints after the program name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("KABAR_GIT_REVISION"),
    ")"
);

/// Log output: `text` for people, `json` for log pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Sets up logging to stderr. `RUST_LOG` overrides `level` when set.
pub fn init_logging(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{level},hyper=warn,reqwest=warn")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal; files and log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
