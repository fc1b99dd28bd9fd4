//! The rules a value must follow beyond its type: webhook and proxy URLs, space names. No
//! message here may repeat any part of a URL: it holds the webhook's key and token.

use super::{ConfigError, invalid};
use crate::secret::Secret;

/// The host Google Chat webhooks live on; anything else needs `delivery.allow_any_host`.
const CHAT_HOST: &str = "chat.googleapis.com";

pub(super) fn valid_space_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The proxy URL may hold a password, so no message here repeats any part of it.
pub(super) fn check_proxy_url(proxy: &Secret) -> Result<(), ConfigError> {
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

/// A space of the Chat API: `spaces/` and an id of letters, digits, `-` and `_`.
pub(crate) fn valid_chat_space(space: &str) -> bool {
    space.strip_prefix("spaces/").is_some_and(|id| {
        !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// App mode's endpoints (the key's token_uri, chat_app.api_url): https on Google's hosts,
/// anything http(s) with delivery.allow_any_host (a proxy or a test server).
pub(super) fn check_app_url(
    key: &str,
    what: &str,
    url: &str,
    allow_any_host: bool,
) -> Result<(), ConfigError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|_| invalid(key, format!("{what} is not a valid URL")))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(invalid(key, format!("{what} must be an https:// URL")));
    }
    let google = parsed.scheme() == "https"
        && parsed
            .host_str()
            .is_some_and(|h| h == "googleapis.com" || h.ends_with(".googleapis.com"));
    if !allow_any_host && !google {
        return Err(invalid(
            key,
            format!(
                "{what} must be https on googleapis.com (set delivery.allow_any_host: true for a proxy or test server)"
            ),
        ));
    }
    Ok(())
}

pub(super) fn check_webhook_url(
    key: &str,
    url: &Secret,
    allow_any_host: bool,
) -> Result<(), ConfigError> {
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
    use crate::config::test_support::*;

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
