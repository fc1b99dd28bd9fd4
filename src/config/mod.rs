//! The YAML configuration: file text in, a typed and validated `Config` out, every error
//! naming its key. Must never repeat a secret value, nor open a socket or the state dir.
//!
//! One file per concern, in the order the text goes through them: `parse` (the steps),
//! `expand` (`${VAR}`), `raw` (the file's shape), `resolve` (defaults and bounds), `validate`
//! (URL and name rules), into `model` (the result); `messages` turns serde's errors into
//! ones for people, `durations` reads and writes `250ms` and `1h30m`.

mod chat_app;
mod durations;
mod expand;
mod messages;
mod model;
mod parse;
mod raw;
mod resolve;
mod store;
mod validate;

pub use durations::{format_duration, parse_duration};
pub use model::{
    Auth, Config, Delivery, Format, Mention, OnResolve, Server, Space, SpaceOptions, Target,
    TemplatePaths, Threading, TlsFiles,
};
pub use store::{Postgres, StoreConfig};
pub(crate) use validate::valid_chat_space;

use std::path::PathBuf;

use messages::one_line;

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

/// What the unit tests of every file here share: a parser with a fixed environment.
#[cfg(test)]
mod test_support {
    pub(super) use super::*;
    pub(super) use std::path::{Path, PathBuf};

    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/nonexistent"), &|name| match name {
            "OPS_URL" => {
                Some("https://chat.googleapis.com/v1/spaces/AAA/messages?key=k1&token=t1".into())
            }
            "TOKEN" => Some("s3cret-token".into()),
            _ => None,
        })
    }

    pub(super) fn error_of(text: &str) -> String {
        parse(text)
            .expect_err("config should be rejected")
            .to_string()
    }
}
