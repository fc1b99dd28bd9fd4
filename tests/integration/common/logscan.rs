//! Scanning kabar's logs for secrets. The secrets are read back from the config file kabar
//! actually ran with (not from constants the test hopes it used), so the scan cannot
//! silently check the wrong strings.

use std::path::Path;

use super::fake_chat::FakeChat;
use super::kabar::assert_no_secrets;

/// Every secret in a kabar config: the bearer token, the basic password, for each space's
/// webhook URL the whole URL, its query values (`key`, `token`), and its path with and
/// without the query (`/v1/spaces/S/messages?key=..&token=..`), and the private key of
/// `chat_app.credentials_file` (whole and each line of its PEM).
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
    // App mode: the service-account key file's private key, whole and line by line (a
    // log quoting part of the PEM leaks the key as surely).
    if let Some(file) = yaml["chat_app"]["credentials_file"].as_str() {
        let base = config_path.parent().unwrap_or(Path::new("."));
        let text = std::fs::read_to_string(base.join(file)).expect("read the key file");
        let key: serde_json::Value = serde_json::from_str(&text).expect("the key file is JSON");
        if let Some(pem) = key["private_key"].as_str() {
            secrets.push(pem.to_owned());
            secrets.extend(
                pem.lines()
                    .filter(|line| !line.starts_with("-----") && line.len() >= 16)
                    .map(str::to_owned),
            );
        }
    }
    secrets.retain(|s| !s.is_empty());
    let mut all: Vec<String> = Vec::new();
    for secret in &secrets {
        for form in encoded_forms(secret) {
            if !all.contains(&form) {
                all.push(form);
            }
        }
    }
    all
}

/// A secret in every encoding a server or a log pipeline may echo it in: as written,
/// percent-decoded (a real token's `%3D` is `=`), percent-encoded with upper- and
/// lower-case hex (every byte but letters and digits), HTML-escaped (`&amp;`, `&#61;`),
/// and JSON-escaped (`\u003d`, `\u0026`, `\/`).
pub fn encoded_forms(secret: &str) -> Vec<String> {
    let decoded = percent_decode(secret);
    let mut forms = vec![secret.to_owned(), decoded.clone()];
    for base in [secret, decoded.as_str()] {
        let upper = percent_encode_every_byte(base);
        forms.push(lower_hex(&upper));
        forms.push(upper);
        forms.push(
            base.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;"),
        );
        forms.push(base.replace('=', "&#61;").replace('&', "&#38;"));
        forms.push(
            base.replace('=', "\\u003d")
                .replace('&', "\\u0026")
                .replace('/', "\\/"),
        );
    }
    let mut unique: Vec<String> = Vec::new();
    for form in forms {
        if !form.is_empty() && !unique.contains(&form) {
            unique.push(form);
        }
    }
    unique
}

/// `text` with every byte but ASCII letters and digits percent-encoded, upper-case hex.
pub fn percent_encode_every_byte(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `%3D` → `%3d`, leaving everything else as it is.
fn lower_hex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            for h in chars.by_ref().take(2) {
                out.push(h.to_ascii_lowercase());
            }
        }
    }
    out
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
