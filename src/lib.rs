//! kabar: a Prometheus Alertmanager receiver for Google Chat. The library is the whole
//! program; `main.rs` only parses the command line, and tests use the re-exports below.
//!
//! The flow, one module per stage: `ingest` (HTTP edge, auth, parsing) → `pipeline` (one
//! unit of work of: `routing` (receiver → spaces) → `plan` (what changed) → `render`
//! (templates, Chat limits) → `store` (the port; the SQLite adapter commits before the
//! 200)) → `delivery` (per-space senders) → `chat` (the webhook client); `metrics` and
//! [`config`] serve them all, [`server`] wires them into a running service around the
//! shared app state. README.md, "Architecture", draws it.

#![forbid(unsafe_code)]
// Output goes through print_out / print_err: println! panics when the reader has gone.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub(crate) mod app;
pub(crate) mod chat;
pub(crate) mod chat_app;
pub mod commands;
pub mod config;
pub mod dead_letters;
pub(crate) mod delivery;
pub(crate) mod ingest;
pub(crate) mod listener;
#[cfg(test)]
pub(crate) mod log_capture;
pub(crate) mod metrics;
pub mod payload;
pub(crate) mod pipeline;
pub(crate) mod plan;
pub mod render;
pub(crate) mod routing;
pub mod runtime;
pub(crate) mod secret;
pub mod send_test;
pub mod server;
pub(crate) mod state_dir;
pub(crate) mod store;

#[cfg(test)]
mod layout_tests;

// The API the integration tests, benches and fuzz targets use, by its short name.
pub use config::Config;
pub use payload::{Alert, AlertStatus, Notification};
pub use pipeline::preview;
pub use plan::{AlertSet, EpisodeKey, MessageKind, Subject};
pub use render::{RenderInput, Renderer};
pub use runtime::Runtime;
pub use server::Service;
pub use store::copy::{CopyError, run as copy_store};
pub use store::{AppWrite, MemoryEpisodes, NewMessage, SqliteStore, Store, StoreError, transact};

/// Opens (and migrates) the store `config` names, as `kabar serve` does: for the benches'
/// and tools' own use of a store, whichever backend it is.
pub async fn open_store(config: &Config) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    store::open(config).await
}

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

/// How much kabar logs (`--log-level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// A `--log-level` that is none of the levels. tracing would read an unknown word as a
/// target name and log nothing at all, so it is refused instead.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown log level {0:?}: use error, warn, info, debug or trace (RUST_LOG takes filter directives such as info,kabar=debug)"
)]
pub struct UnknownLogLevel(String);

impl std::str::FromStr for LogLevel {
    type Err = UnknownLogLevel;

    /// The five levels, any case, and the usual aliases (`warning`, `err`).
    fn from_str(text: &str) -> Result<LogLevel, UnknownLogLevel> {
        match text.trim().to_ascii_lowercase().as_str() {
            "error" | "err" => Ok(LogLevel::Error),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            _ => Err(UnknownLogLevel(text.chars().take(40).collect())),
        }
    }
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Sets up logging to stderr. `RUST_LOG` overrides `level` when set.
pub fn init_logging(level: LogLevel, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{},hyper=warn,reqwest=warn", level.as_str())))
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

/// Writes a command's answer to stdout. A reader that went away (`kabar render | head`)
/// ends the output quietly, as with any Unix tool; println! would panic instead (Rust
/// ignores SIGPIPE, so the write fails with EPIPE).
pub fn print_out(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Like [`print_out`], for stderr.
pub fn print_err(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}
