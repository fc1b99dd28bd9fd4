//! The raw shape to the typed model: defaults, `defaults` merged into each space, secret
//! files read, bounds of every number and duration. URL and name rules live in validate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::durations::RawDuration;
use super::model::{
    Auth, Config, Delivery, Mention, OnResolve, OnResolveStep, Server, Space, SpaceOptions, Target,
    TlsFiles,
};
use super::raw::{RawAuth, RawConfig, RawDelivery, RawOptions, RawSecret, RawServer, RawSpace};
use super::store::resolve_store;
use super::validate::{check_proxy_url, check_webhook_url, valid_chat_space, valid_space_name};
use super::{ConfigError, invalid};
use crate::secret::Secret;

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

pub(super) fn one_secret(
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

impl RawConfig {
    pub(super) fn resolve(self, base_dir: &Path) -> Result<Config, ConfigError> {
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
        let store = resolve_store(self.store, base_dir)?;
        let chat_app = self
            .chat_app
            .map(|raw| super::chat_app::resolve_chat_app(raw, &delivery, base_dir))
            .transpose()?;

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
            if matches!(target, Target::App { .. }) && chat_app.is_none() {
                return Err(invalid(
                    format!("{key}.space"),
                    "posting as the Chat app needs a chat_app section with credentials_file",
                ));
            }
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
            store,
            spaces,
            chat_app,
        })
    }
}

pub(super) fn resolve_auth(raw: RawAuth, base_dir: &Path) -> Result<Auth, ConfigError> {
    resolve_credentials("auth", raw, base_dir)
}

/// Bearer or basic credentials under `key` (`auth`, `chat_app.alertmanager`), every error
/// naming the key it is about.
pub(super) fn resolve_credentials(
    key: &str,
    raw: RawAuth,
    base_dir: &Path,
) -> Result<Auth, ConfigError> {
    let bearer = one_secret(
        &format!("{key}.bearer_token"),
        raw.bearer_token,
        raw.bearer_token_file,
        base_dir,
    )?;
    match (bearer, raw.basic) {
        (Some(_), Some(_)) => Err(invalid(
            key,
            "choose bearer_token(_file) or basic, not both",
        )),
        (Some(token), None) => Ok(Auth::Bearer(token)),
        (None, Some(basic)) => {
            if basic.username.trim().is_empty() {
                return Err(invalid(
                    format!("{key}.basic.username"),
                    "must not be empty",
                ));
            }
            let password = one_secret(
                &format!("{key}.basic.password"),
                basic.password,
                basic.password_file,
                base_dir,
            )?
            .ok_or_else(|| invalid(format!("{key}.basic"), "needs password or password_file"))?;
            Ok(Auth::Basic {
                username: basic.username,
                password,
            })
        }
        (None, None) => Err(invalid(
            key,
            format!(
                "needs bearer_token, bearer_token_file or basic (remove the {key} key to go without credentials)"
            ),
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
    if let Some(steps) = raw.on_resolve {
        if steps.is_empty() {
            return Err(invalid(
                format!("{key}.on_resolve"),
                "list edit, reply or both (send_resolved: false turns resolves off)",
            ));
        }
        options.on_resolve = OnResolve {
            edit: steps.contains(&OnResolveStep::Edit),
            reply: steps.contains(&OnResolveStep::Reply),
        };
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
    if let Some(space) = raw.space.take() {
        if url.is_some() || raw.dry_run.unwrap_or(false) {
            return Err(invalid(
                key,
                "set exactly one of webhook_url, webhook_url_file, space or dry_run: true",
            ));
        }
        if !valid_chat_space(&space) {
            return Err(invalid(
                format!("{key}.space"),
                format!("{space:?} is not a Chat space name such as spaces/AAAAbbbbCCC"),
            ));
        }
        return Ok(Target::App { space });
    }
    match (url, raw.dry_run.unwrap_or(false)) {
        (Some(_), true) => Err(invalid(
            key,
            "set webhook_url(_file) or dry_run: true, not both",
        )),
        (None, false) => Err(invalid(
            key,
            "needs exactly one of webhook_url, webhook_url_file, space or dry_run: true",
        )),
        (None, true) => Ok(Target::DryRun),
        (Some(url), false) => {
            check_webhook_url(&format!("{key}.webhook_url"), &url, delivery.allow_any_host)?;
            Ok(Target::Webhook(url))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

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
            other => panic!("expected a webhook, got {other:?}"),
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
}
