//! The YAML configuration: file text in, a typed and validated `Config` out, every error
//! naming its key. Must never repeat a secret value, nor open a socket or the state dir.
//!
//! One file per concern, in the order the text goes through them: `parse` (the steps),
//! `expand` (`${VAR}`), `raw` (the file's shape), `resolve` (defaults and bounds), `validate`
//! (URL and name rules), into `model` (the result); `messages` turns serde's errors into
//! ones for people, `durations` reads and writes `250ms` and `1h30m`.

mod durations;
mod expand;
mod messages;
mod model;
mod parse;
mod raw;
mod resolve;
mod validate;

pub use durations::{format_duration, parse_duration};
pub use model::{
    Auth, Config, Delivery, Format, Mention, Server, Space, SpaceOptions, Target, TemplatePaths,
    Threading, TlsFiles,
};

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

/// The split by concern holds only while each file stays small enough to read whole and
/// says at its top what it owns and what it must not do.
#[cfg(test)]
mod layout_tests {
    /// Lines of code before a file's unit tests: neither blank nor a comment.
    const MAX_CODE_LINES: usize = 500;

    #[test]
    fn every_config_file_is_small_and_opens_with_what_it_owns() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
        let mut files: Vec<_> = std::fs::read_dir(&folder)
            .expect("read src/config")
            .map(|entry| entry.expect("a folder entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
            .collect();
        files.sort();
        assert!(files.len() >= 8, "the config folder lost files: {files:?}");
        for path in files {
            let text = std::fs::read_to_string(&path).expect("read a config file");
            let mut lines = text.lines();
            let opening = [lines.next(), lines.next()];
            assert!(
                opening
                    .iter()
                    .all(|line| line.is_some_and(|l| l.starts_with("//! "))),
                "{} must open with two //! lines: what it owns, what it must not do",
                path.display()
            );
            let code = text
                .lines()
                .take_while(|line| !line.starts_with("#[cfg(test)]"))
                .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with("//"))
                .count();
            assert!(
                code <= MAX_CODE_LINES,
                "{} has {code} lines of code (at most {MAX_CODE_LINES}): split it by concern",
                path.display()
            );
        }
    }
}
