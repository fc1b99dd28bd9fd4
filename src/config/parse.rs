//! Config text to `Config`: read the file, parse YAML, merge keys, expand `${VAR}`, read the
//! raw shape, resolve. The steps only; each lives in its own file, and no bound is set here.

use std::path::Path;

use serde_yaml_ng::Value;

use super::expand::expand_env;
use super::messages::{line_of, one_line, plain_serde_message};
use super::raw::RawConfig;
use super::{Config, ConfigError, invalid};
use crate::secret::scrub;

impl Config {
    /// Reads, expands and validates the file at `path`. Relative paths inside it (secret
    /// files, templates) are taken relative to the file's folder.
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
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
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

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
}
