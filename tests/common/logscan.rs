//! Scanning kabar's logs for secrets. The secrets are read back from the config file kabar
//! actually ran with (not from constants the test hopes it used), so the scan cannot
//! silently check the wrong strings.

#![allow(dead_code)]

use std::path::Path;

use super::fake_chat::FakeChat;
use super::kabar::assert_no_secrets;

/// Every secret in a kabar config: the bearer token, the basic password, and for each
/// space's webhook URL the whole URL, its query values (`key`, `token`), and its path with
/// and without the query (`/v1/spaces/S/messages?key=..&token=..`).
pub fn config_secrets(config_path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(config_path).expect("read the kabar config");
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("config is YAML");
    let mut secrets = Vec::new();
    let auth = &yaml["auth"];
    if let Some(token) = auth["bearer_token"].as_str() {
        secrets.push(token.to_owned());
    }
    if let Some(password) = auth["basic"]["password"].as_str() {
        secrets.push(password.to_owned());
    }
    if let Some(spaces) = yaml["spaces"].as_mapping() {
        for space in spaces.values() {
            let Some(url) = space["webhook_url"].as_str() else {
                continue;
            };
            secrets.push(url.to_owned());
            let Some((_, after_scheme)) = url.split_once("://") else {
                continue;
            };
            if let Some((_, path_and_query)) = after_scheme.split_once('/') {
                secrets.push(format!("/{path_and_query}"));
                // The path alone names the space's webhook; kabar shows at most the host.
                if let Some((path, _)) = path_and_query.split_once('?') {
                    secrets.push(format!("/{path}"));
                }
            }
            if let Some((_, query)) = url.split_once('?') {
                for pair in query.split('&') {
                    if let Some((_, value)) = pair.split_once('=') {
                        secrets.push(value.to_owned());
                    }
                }
            }
        }
    }
    secrets.retain(|s| !s.is_empty());
    secrets
}

/// Asserts no secret of the config at `config_path` appears in `logs`, after checking the
/// secrets are real: every key and token the fake Chat handed out for this config's URLs
/// is among them, and there is at least one to look for.
pub fn assert_logs_clean(logs: &str, config_path: &Path, chat: &FakeChat) {
    let secrets = config_secrets(config_path);
    let issued = chat.secrets();
    let configured_urls = secrets.iter().filter(|s| s.starts_with("http")).count();
    if configured_urls > 0 {
        let matching = issued.iter().filter(|s| secrets.contains(s)).count();
        assert!(
            matching >= 2,
            "the config's webhook URLs carry none of the fake Chat's keys/tokens: the scan \
             would check the wrong strings"
        );
    }
    assert!(
        !secrets.is_empty(),
        "no secret to scan for in {config_path:?}"
    );
    assert!(!logs.is_empty(), "no log lines to scan");
    assert_no_secrets(logs, &secrets);
}
