//! The `chat_app` section: the service account's key read and checked, and the settings of
//! events and buttons (project number, events path, Alertmanager, durations, domains).
//! It must never repeat a key, token or password, nor open a socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::durations::{RawDuration, format_duration};
use super::model::Delivery;
use super::raw::{RawAuth, RawBasic, RawSecret};
use super::resolve::resolve_credentials;
use super::validate::check_app_url;
use super::{ConfigError, invalid};
use crate::chat_app::{AlertmanagerSettings, ChatAppSettings, EventSettings};
use crate::secret::Secret;

/// `chat_app`: the service account app-mode spaces post as.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChatApp {
    credentials_file: Option<PathBuf>,
    api_url: Option<String>,
    dry_run: Option<bool>,
    project_number: Option<String>,
    events_path: Option<String>,
    endpoint_url: Option<String>,
    certs_url: Option<String>,
    id_token_certs_url: Option<String>,
    alertmanager: Option<RawAlertmanager>,
    silence_durations: Option<Vec<RawDuration>>,
    allowed_domains: Option<Vec<String>>,
}

/// `chat_app.alertmanager`: where Silence buttons create silences.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertmanager {
    url: String,
    bearer_token: Option<RawSecret>,
    bearer_token_file: Option<PathBuf>,
    basic: Option<RawBasic>,
}

/// Where Chat posts events unless the file says otherwise.
const DEFAULT_EVENTS_PATH: &str = "/chat/events";
/// The buttons a card gets unless the file says otherwise.
const DEFAULT_SILENCE_DURATIONS: [Duration; 3] = [
    Duration::from_secs(3_600),
    Duration::from_secs(4 * 3_600),
    Duration::from_secs(24 * 3_600),
];
/// A card's button row stays readable, and Chat shows a few buttons on one line.
const MAX_SILENCE_DURATIONS: usize = 5;
const MIN_SILENCE: Duration = Duration::from_secs(60);
/// Longer than a quarter is no longer a silence but a routing decision.
const MAX_SILENCE: Duration = Duration::from_secs(90 * 24 * 3_600);
/// Paths kabar serves itself, which events_path must not shadow.
const OWN_PATHS: [&str; 6] = [
    "/",
    "/alerts",
    "/metrics",
    "/healthz",
    "/readyz",
    "/-/reload",
];

/// `chat_app`: the key file read and checked (it parses, holds client_email and token_uri
/// and a PKCS#8 RSA key); errors name the file and the field, never a value of it.
pub(super) fn resolve_chat_app(
    raw: RawChatApp,
    delivery: &Delivery,
    base_dir: &Path,
) -> Result<ChatAppSettings, ConfigError> {
    let key_name = "chat_app.credentials_file";
    let dry_run = raw.dry_run.unwrap_or(false);
    let key = match &raw.credentials_file {
        Some(file) => {
            let path = base_dir.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid(key_name, format!("cannot read {}: {e}", path.display())))?;
            let text = Secret::new(text);
            let key = crate::chat_app::ServiceAccountKey::parse(text.expose())
                .map_err(|e| invalid(key_name, format!("{} {e}", path.display())))?;
            check_app_url(
                key_name,
                "its token_uri",
                &key.token_uri,
                delivery.allow_any_host,
            )?;
            Some(std::sync::Arc::new(key))
        }
        // A dry run prints the requests and needs no Google account.
        None if dry_run => None,
        None => {
            return Err(invalid(
                key_name,
                "is needed to post as the Chat app (or set chat_app.dry_run: true to print the requests instead)",
            ));
        }
    };
    let api_url = raw
        .api_url
        .unwrap_or_else(|| crate::chat_app::CHAT_API_URL.to_owned());
    check_app_url("chat_app.api_url", "it", &api_url, delivery.allow_any_host)?;
    let events = resolve_events(
        raw.project_number,
        raw.events_path,
        raw.endpoint_url,
        raw.certs_url,
        raw.id_token_certs_url,
        delivery,
    )?;
    let alertmanager = raw
        .alertmanager
        .map(|am| resolve_alertmanager(am, base_dir))
        .transpose()?;
    if events.is_none() {
        // Buttons act through verified events; without the audience nothing could verify them.
        let needs = [
            ("chat_app.alertmanager", alertmanager.is_some()),
            ("chat_app.allowed_domains", raw.allowed_domains.is_some()),
        ];
        if let Some((key, _)) = needs.iter().find(|(_, set)| *set) {
            return Err(invalid(
                *key,
                "acts on button presses, which need chat_app.project_number (the audience Chat signs its events for)",
            ));
        }
    }
    let silence_durations = resolve_durations(raw.silence_durations)?;
    let allowed_domains = raw
        .allowed_domains
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, domain)| resolve_domain(i, domain))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ChatAppSettings {
        key,
        api_url,
        dry_run,
        events,
        alertmanager,
        silence_durations,
        allowed_domains,
    })
}

fn resolve_events(
    project_number: Option<String>,
    events_path: Option<String>,
    endpoint_url: Option<String>,
    certs_url: Option<String>,
    id_token_certs_url: Option<String>,
    delivery: &Delivery,
) -> Result<Option<EventSettings>, ConfigError> {
    let Some(project_number) = project_number else {
        let stray = [
            ("chat_app.events_path", events_path.is_some()),
            ("chat_app.endpoint_url", endpoint_url.is_some()),
            ("chat_app.certs_url", certs_url.is_some()),
            ("chat_app.id_token_certs_url", id_token_certs_url.is_some()),
        ];
        if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
            return Err(invalid(
                *key,
                "is about Chat's events, which need chat_app.project_number",
            ));
        }
        return Ok(None);
    };
    let number = project_number.trim();
    if number.is_empty() || number.len() > 20 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            "chat_app.project_number",
            "must be the Google Cloud project number (digits, e.g. \"123456789012\"), not the project id",
        ));
    }
    let path = events_path.unwrap_or_else(|| DEFAULT_EVENTS_PATH.to_owned());
    check_events_path(&path)?;
    if let Some(url) = &endpoint_url {
        let parsed = reqwest::Url::parse(url).ok().filter(|u| {
            matches!(u.scheme(), "https" | "http")
                && u.username().is_empty()
                && u.password().is_none()
        });
        if parsed.is_none() || url.len() > 2_048 {
            return Err(invalid(
                "chat_app.endpoint_url",
                "must be the app's HTTP endpoint URL exactly as set in the Chat API configuration (https://…, no credentials)",
            ));
        }
    }
    let certs_url = certs_url.unwrap_or_else(|| crate::chat_app::CHAT_CERTS_URL.to_owned());
    check_app_url(
        "chat_app.certs_url",
        "it",
        &certs_url,
        delivery.allow_any_host,
    )?;
    let id_token_certs_url =
        id_token_certs_url.unwrap_or_else(|| crate::chat_app::GOOGLE_CERTS_URL.to_owned());
    check_app_url(
        "chat_app.id_token_certs_url",
        "it",
        &id_token_certs_url,
        delivery.allow_any_host,
    )?;
    Ok(Some(EventSettings {
        project_number: number.to_owned(),
        path,
        endpoint_url,
        certs_url,
        id_token_certs_url,
    }))
}

fn check_events_path(path: &str) -> Result<(), ConfigError> {
    let key = "chat_app.events_path";
    let well_formed = path.starts_with('/')
        && path.len() > 1
        && path.len() <= 200
        && !path.contains("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    if !well_formed {
        return Err(invalid(
            key,
            "must be a path such as /chat/events (letters, digits, / - _ .)",
        ));
    }
    let trimmed = path.trim_end_matches('/');
    if OWN_PATHS.contains(&trimmed) || trimmed.starts_with("/alerts/") || trimmed.starts_with("/-/")
    {
        return Err(invalid(
            key,
            format!(
                "{path} is one of kabar's own paths; choose another, such as {DEFAULT_EVENTS_PATH}"
            ),
        ));
    }
    Ok(())
}

fn resolve_alertmanager(
    raw: RawAlertmanager,
    base_dir: &Path,
) -> Result<AlertmanagerSettings, ConfigError> {
    let key = "chat_app.alertmanager";
    let url = reqwest::Url::parse(raw.url.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http") && u.host_str().is_some())
        .ok_or_else(|| {
            invalid(
                format!("{key}.url"),
                "must be Alertmanager's URL, such as http://alertmanager.monitoring:9093",
            )
        })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            format!("{key}.url"),
            "must not carry credentials; set chat_app.alertmanager.basic or bearer_token_file",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            format!("{key}.url"),
            "must be Alertmanager's base URL, without a query or fragment",
        ));
    }
    let credentials =
        raw.bearer_token.is_some() || raw.bearer_token_file.is_some() || raw.basic.is_some();
    let auth = credentials
        .then(|| {
            resolve_credentials(
                key,
                RawAuth {
                    bearer_token: raw.bearer_token,
                    bearer_token_file: raw.bearer_token_file,
                    basic: raw.basic,
                },
                base_dir,
            )
        })
        .transpose()?;
    Ok(AlertmanagerSettings { url, auth })
}

fn resolve_durations(raw: Option<Vec<RawDuration>>) -> Result<Vec<Duration>, ConfigError> {
    let key = "chat_app.silence_durations";
    let Some(raw) = raw else {
        return Ok(DEFAULT_SILENCE_DURATIONS.to_vec());
    };
    if raw.len() > MAX_SILENCE_DURATIONS {
        return Err(invalid(
            key,
            format!("lists at most {MAX_SILENCE_DURATIONS} durations (one button each)"),
        ));
    }
    let mut durations: Vec<Duration> = Vec::with_capacity(raw.len());
    for (i, RawDuration(d)) in raw.into_iter().enumerate() {
        if !(MIN_SILENCE..=MAX_SILENCE).contains(&d) {
            return Err(invalid(
                format!("{key}[{i}]"),
                format!(
                    "must be between {} and {}",
                    format_duration(MIN_SILENCE),
                    format_duration(MAX_SILENCE)
                ),
            ));
        }
        if durations.contains(&d) {
            return Err(invalid(
                format!("{key}[{i}]"),
                format!("{} is listed twice", format_duration(d)),
            ));
        }
        durations.push(d);
    }
    Ok(durations)
}

/// An e-mail domain as compared: lower case, without a leading `@`.
fn resolve_domain(i: usize, domain: &str) -> Result<String, ConfigError> {
    let domain = domain.trim().trim_start_matches('@').to_ascii_lowercase();
    let valid = !domain.is_empty()
        && domain.len() <= 253
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !valid {
        return Err(invalid(
            format!("chat_app.allowed_domains[{i}]"),
            "must be an e-mail domain such as example.com",
        ));
    }
    Ok(domain)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{error_of, parse};

    fn with_app(extra: &str) -> String {
        format!("chat_app:\n  dry_run: true\n{extra}spaces:\n  oncall: {{space: spaces/AAAA}}\n")
    }

    #[test]
    fn events_and_buttons_default_as_documented() {
        let config = parse(&with_app("  project_number: \"123456789012\"\n")).expect("config");
        let app = config.chat_app.expect("chat_app");
        let events = app.events.expect("events");
        assert_eq!(events.path, "/chat/events");
        assert_eq!(events.project_number, "123456789012");
        assert!(
            events
                .certs_url
                .ends_with("chat@system.gserviceaccount.com")
        );
        assert_eq!(app.silence_durations.len(), 3);
        assert!(app.alertmanager.is_none());
        assert!(app.allowed_domains.is_empty());
        let plain = parse(&with_app("")).expect("config");
        assert!(plain.chat_app.expect("chat_app").events.is_none());
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("  project_number: kabar-prod\n", "chat_app.project_number"),
            (
                "  project_number: \"1\"\n  events_path: /alerts\n",
                "chat_app.events_path",
            ),
            (
                "  project_number: \"1\"\n  events_path: chat\n",
                "chat_app.events_path",
            ),
            ("  events_path: /chat/events\n", "chat_app.events_path"),
            (
                "  alertmanager: {url: \"http://am:9093\"}\n",
                "chat_app.alertmanager",
            ),
            (
                "  project_number: \"1\"\n  alertmanager: {url: \"http://u:pw@am:9093\"}\n",
                "chat_app.alertmanager.url",
            ),
            (
                "  project_number: \"1\"\n  silence_durations: [30s]\n",
                "chat_app.silence_durations[0]",
            ),
            (
                "  project_number: \"1\"\n  silence_durations: [1h, 1h]\n",
                "chat_app.silence_durations[1]",
            ),
            (
                "  project_number: \"1\"\n  allowed_domains: [\"a b\"]\n",
                "chat_app.allowed_domains[0]",
            ),
            (
                "  project_number: \"1\"\n  certs_url: \"http://127.0.0.1:1/certs\"\n",
                "chat_app.certs_url",
            ),
        ];
        for (extra, key) in cases {
            let error = error_of(&with_app(extra));
            assert!(error.starts_with(key), "{extra}: {error}");
        }
        let leaked = error_of(&with_app(
            "  project_number: \"1\"\n  alertmanager: {url: \"http://u:hunter2@am:9093\"}\n",
        ));
        assert!(!leaked.contains("hunter2"), "{leaked}");
    }

    #[test]
    fn alertmanager_credentials_and_domains_are_read() {
        let config = parse(&with_app(
            "  project_number: \"1\"\n  alertmanager:\n    url: http://am:9093/prefix\n    basic: {username: kabar, password: pw}\n  allowed_domains: [\"@Example.COM\"]\n  silence_durations: [15m]\n",
        ))
        .expect("config");
        let app = config.chat_app.expect("chat_app");
        let am = app.alertmanager.expect("alertmanager");
        assert_eq!(am.url.as_str(), "http://am:9093/prefix");
        assert!(matches!(am.auth, Some(crate::config::Auth::Basic { .. })));
        assert_eq!(app.allowed_domains, ["example.com"]);
        assert_eq!(app.silence_durations, [std::time::Duration::from_secs(900)]);
    }
}
