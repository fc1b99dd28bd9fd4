//! Values that must never reach a log line, metric, error body or panic message, and the
//! scrubbing of text from elsewhere. It must not offer any way to print a value but `expose`.
//!
//! `Secret` wraps them so `Debug` and `Display` print a placeholder; the only way to the
//! value is the explicit `expose()`. `scrub` removes credentials from text that came from
//! elsewhere (HTTP client errors, parser messages) before it is logged or stored.

use std::fmt;

/// A string that prints as `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value, for the one place that must use it (an HTTP request, a comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Query parameters that carry credentials in Chat webhook URLs (and commonly elsewhere).
const SECRET_QUERY_KEYS: [&str; 5] = ["key", "token", "access_token", "password", "secret"];

/// Known secrets shorter than this are not searched for: they would redact ordinary words.
const MIN_SECRET_CHARS: usize = 4;

/// What replaces a secret.
const REDACTED: &str = "[redacted]";

/// Removes credentials from free text: the values of credential-bearing query parameters,
/// `user:password@` in URLs, and every value in `known`, whatever encoding the text uses
/// for it. A server echoing a webhook URL back may percent-encode it (upper or lower hex,
/// even twice), HTML-escape it, JSON-escape it, or decode the `%3D` real tokens carry, so
/// each character of a secret is matched in any of those forms, mixed freely.
pub(crate) fn scrub(text: &str, known: &[&str]) -> String {
    let patterns = secret_patterns(known);
    let out = if patterns.is_empty() {
        text.to_owned()
    } else {
        redact_known(text, &patterns)
    };
    scrub_query_values(&scrub_userinfo(&out))
}

/// Each known secret as written and, when it holds percent-escapes, as decoded: the
/// matcher then finds every encoding of either.
fn secret_patterns(known: &[&str]) -> Vec<Vec<char>> {
    let mut patterns: Vec<Vec<char>> = Vec::new();
    for secret in known {
        let decoded = percent_encoding::percent_decode_str(secret)
            .decode_utf8()
            .map(|d| d.into_owned())
            .ok();
        for form in std::iter::once(secret.to_string()).chain(decoded) {
            let chars: Vec<char> = form.chars().collect();
            if chars.len() >= MIN_SECRET_CHARS && !patterns.contains(&chars) {
                patterns.push(chars);
            }
        }
    }
    // Longest first, so a whole URL is redacted as one rather than piecewise.
    patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
    patterns
}

fn redact_known(text: &str, patterns: &[Vec<char>]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        // A match starts with the secret's first character or with an escape.
        let may_start = matches!(c, '%' | '&' | '\\' | '+') || patterns.iter().any(|p| p[0] == c);
        let matched = if may_start {
            patterns.iter().filter_map(|p| match_encoded(rest, p)).max()
        } else {
            None
        };
        match matched {
            Some(len) => {
                out.push_str(REDACTED);
                rest = &rest[len..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

/// The byte length of the longest prefix of `text` that spells `pattern`, each of its
/// characters in any encoding. The set of text offsets reachable after each character
/// stays small (an encoding of one character has few lengths), so this is linear in the
/// pattern's length.
fn match_encoded(text: &str, pattern: &[char]) -> Option<usize> {
    let mut reachable: Vec<usize> = vec![0];
    for &c in pattern {
        let mut next: Vec<usize> = Vec::new();
        for &offset in &reachable {
            for len in encodings_at(&text[offset..], c) {
                if !next.contains(&(offset + len)) {
                    next.push(offset + len);
                }
            }
        }
        if next.is_empty() {
            return None;
        }
        reachable = next;
    }
    reachable.into_iter().max()
}

/// The lengths of every encoding of `c` that `text` starts with.
fn encodings_at(text: &str, c: char) -> Vec<usize> {
    let mut lens = Vec::new();
    if text.starts_with(c) {
        lens.push(c.len_utf8());
    }
    if c == ' ' && text.starts_with('+') {
        lens.push(1);
    }
    let mut utf8 = [0u8; 4];
    let bytes = c.encode_utf8(&mut utf8).as_bytes();
    if let Some(len) = percent_encoded(text, bytes) {
        lens.push(len);
    }
    if let Some(len) = json_escaped(text, c) {
        lens.push(len);
    }
    if let Some(len) = html_escaped(text, c) {
        lens.push(len);
    }
    lens
}

/// `%HH` (either case) or `%25HH` (encoded twice) for each byte.
fn percent_encoded(text: &str, bytes: &[u8]) -> Option<usize> {
    let mut used = 0;
    for &byte in bytes {
        let rest = text.get(used..)?;
        let hex = if let Some(hex) = rest.strip_prefix("%25").and_then(|r| r.get(..2)) {
            used += 3;
            hex
        } else if let Some(hex) = rest.strip_prefix('%').and_then(|r| r.get(..2)) {
            used += 1;
            hex
        } else {
            return None;
        };
        if u8::from_str_radix(hex, 16).ok()? != byte || hex.starts_with('+') {
            return None;
        }
        used += 2;
    }
    Some(used)
}

/// `\uHHHH` (a surrogate pair beyond the BMP) or a short escape such as `\/`.
fn json_escaped(text: &str, c: char) -> Option<usize> {
    let short = match c {
        '"' => Some("\\\""),
        '\\' => Some("\\\\"),
        '/' => Some("\\/"),
        '\n' => Some("\\n"),
        '\r' => Some("\\r"),
        '\t' => Some("\\t"),
        _ => None,
    };
    if let Some(escape) = short
        && text.starts_with(escape)
    {
        return Some(escape.len());
    }
    let mut units = [0u16; 2];
    let mut used = 0;
    for &unit in c.encode_utf16(&mut units).iter() {
        let rest = text.get(used..)?;
        let hex = rest.strip_prefix("\\u")?.get(..4)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) || u16::from_str_radix(hex, 16).ok()? != unit
        {
            return None;
        }
        used += 6;
    }
    Some(used)
}

/// HTML5 named references for the ASCII punctuation that appears in URLs and tokens.
const HTML_NAMED: &[(&str, char)] = &[
    ("amp", '&'),
    ("lt", '<'),
    ("gt", '>'),
    ("quot", '"'),
    ("apos", '\''),
    ("equals", '='),
    ("sol", '/'),
    ("percnt", '%'),
    ("plus", '+'),
    ("colon", ':'),
    ("quest", '?'),
    ("num", '#'),
    ("period", '.'),
    ("lowbar", '_'),
    ("comma", ','),
    ("semi", ';'),
    ("commat", '@'),
    ("bsol", '\\'),
];

/// `&#DDD;`, `&#xHH;` (the `;` optional, as browsers read it) or a named reference.
fn html_escaped(text: &str, c: char) -> Option<usize> {
    let rest = text.strip_prefix('&')?;
    if let Some(numeric) = rest.strip_prefix('#') {
        let (digits, radix, prefix) = match numeric.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16, 2),
            None => (numeric, 10, 1),
        };
        let end = digits
            .find(|ch: char| !ch.is_digit(radix))
            .unwrap_or(digits.len());
        // Bounded: a long run of zeros must not be a way to make this slow or overflow.
        if end == 0 || end > 12 {
            return None;
        }
        let value = u32::from_str_radix(&digits[..end], radix).ok()?;
        if value != u32::from(c) {
            return None;
        }
        let semicolon = usize::from(digits[end..].starts_with(';'));
        return Some(1 + prefix + end + semicolon);
    }
    HTML_NAMED
        .iter()
        .filter(|(_, ch)| *ch == c)
        .find_map(|(name, _)| {
            let after = rest.strip_prefix(name)?;
            after.starts_with(';').then_some(1 + name.len() + 1)
        })
}

/// How a query parameter may be introduced: `?` or `&`, HTML-, JSON- or percent-encoded.
const PARAM_SEPARATORS: &[&str] = &[
    "?", "&amp;", "&#38;", "&#x26;", "&", "%3f", "%26", "%253f", "%2526", "\\u003f", "\\u0026",
];
/// How its `=` may be written.
const PARAM_EQUALS: &[&str] = &[
    "=", "%3d", "%253d", "\\u003d", "&#61;", "&#x3d;", "&equals;",
];
/// What ends its value: the next parameter or fragment, a quote or bracket, white space.
const VALUE_ENDS: &[&str] = &[
    "&", "#", "\"", "'", "<", ">", ")", "%26", "%23", "%2526", "%2523", "\\u0026", "\\\"",
];

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// The length of a credential parameter's `separator key equals` that `text` starts with.
fn credential_param(text: &str) -> Option<usize> {
    let separator = PARAM_SEPARATORS
        .iter()
        .find(|s| starts_with_ignore_case(text, s))?;
    let after_separator = &text[separator.len()..];
    SECRET_QUERY_KEYS.iter().find_map(|key| {
        if !starts_with_ignore_case(after_separator, key) {
            return None;
        }
        let after_key = &after_separator[key.len()..];
        let equals = PARAM_EQUALS
            .iter()
            .find(|e| starts_with_ignore_case(after_key, e))?;
        Some(separator.len() + key.len() + equals.len())
    })
}

fn scrub_query_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(head) = credential_param(rest) {
            out.push_str(&rest[..head]);
            rest = &rest[head..];
            let end = rest
                .char_indices()
                .find(|(i, ch)| {
                    ch.is_whitespace()
                        || VALUE_ENDS
                            .iter()
                            .any(|e| starts_with_ignore_case(&rest[*i..], e))
                })
                .map_or(rest.len(), |(i, _)| i);
            if end > 0 {
                out.push_str(REDACTED);
            }
            rest = &rest[end..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Every part of a URL that is or holds a credential, to pass to `scrub` as known: the
/// whole URL, its path (a webhook's path names its space), its query, each query value as
/// written and decoded, and a userinfo password.
pub(crate) fn url_secret_parts(url: &str) -> Vec<String> {
    let mut parts = vec![url.to_owned()];
    if let Some((_, query)) = url.split_once('?') {
        let query = query.split('#').next().unwrap_or(query);
        parts.push(query.to_owned());
        for pair in query.split('&') {
            if let Some((_, value)) = pair.split_once('=') {
                parts.push(value.to_owned());
            }
        }
    }
    if let Ok(parsed) = reqwest::Url::parse(url) {
        parts.push(parsed.path().to_owned());
        parts.extend(parsed.query_pairs().map(|(_, v)| v.into_owned()));
        parts.extend(parsed.password().map(str::to_owned));
    }
    // "/" and other short paths are not secrets; `scrub` ignores anything that short.
    parts.retain(|p| p.len() > 1);
    parts
}

/// Every credential of a configuration, for `scrub`: each webhook URL and its parts, the
/// inbound bearer token or password, the proxy URL and its password.
pub(crate) fn config_secrets(config: &crate::config::Config) -> Vec<String> {
    use crate::config::{Auth, Target};
    let mut secrets = Vec::new();
    for space in config.spaces.values() {
        if let Target::Webhook(url) = &space.target {
            secrets.extend(url_secret_parts(url.expose()));
        }
    }
    match &config.auth {
        Some(Auth::Bearer(token)) => secrets.push(token.expose().to_owned()),
        Some(Auth::Basic { password, .. }) => secrets.push(password.expose().to_owned()),
        None => {}
    }
    if let Some(proxy) = &config.delivery.proxy_url {
        secrets.extend(url_secret_parts(proxy.expose()));
    }
    secrets
}

fn scrub_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("[redacted]@");
                out.push_str(&authority[at + 1..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("hunter2-token");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-token");
    }

    #[test]
    fn scrubs_chat_webhook_credentials() {
        let text = "error sending request for url (https://chat.googleapis.com/v1/spaces/AAA/messages?key=AIzaSyKEY&token=abcDEF%3D): timed out";
        let clean = scrub(text, &[]);
        assert!(!clean.contains("AIzaSyKEY"), "{clean}");
        assert!(!clean.contains("abcDEF"), "{clean}");
        assert!(clean.contains("spaces/AAA/messages?key=[redacted]&token=[redacted]"));
        assert!(clean.ends_with("): timed out"));
    }

    #[test]
    fn scrubs_userinfo_and_known_values() {
        let clean = scrub(
            "proxy http://am:pa55word@proxy:3128 said no to s3cr3t-value",
            &["s3cr3t-value"],
        );
        assert_eq!(
            clean,
            "proxy http://[redacted]@proxy:3128 said no to [redacted]"
        );
    }

    #[test]
    fn multi_byte_characters_after_a_separator_do_not_panic() {
        // Found by the config fuzz target: `&s/ю` put a slice end inside `ю`.
        for text in [
            "&s/ю#",
            "?ю",
            "&keyю=1",
            "?tokeн=x",
            "&ключ=значение",
            "?key=ю&token=t",
        ] {
            let _ = scrub(text, &[]);
        }
        assert_eq!(
            scrub("?key=ю&token=t", &[]),
            "?key=[redacted]&token=[redacted]"
        );
        assert_eq!(scrub("a&s/ю#b", &[]), "a&s/ю#b");
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        let text = "monkey=1&tokens are fine, ?keyboard=yes ünïcode";
        assert_eq!(scrub(text, &[]), text);
    }

    /// A real webhook's token as it sits in the URL (`%3D` for `=`), and the key.
    const TOKEN_IN_URL: &str = "abcDEF-ghi_JKL%3D";
    const TOKEN: &str = "abcDEF-ghi_JKL=";
    const KEY: &str = "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI";

    fn assert_clean(text: &str, known: &[&str]) {
        let clean = scrub(text, known);
        for fragment in ["abcDEF", "ghi_JKL", "AIzaSyDdI0hCZtE6", "qKqqsHI"] {
            assert!(
                !clean.contains(fragment),
                "{fragment:?} survived in {clean:?}"
            );
        }
        assert!(clean.contains("[redacted]"), "{clean:?}");
    }

    #[test]
    fn known_secrets_are_scrubbed_in_every_encoding() {
        let known = [TOKEN_IN_URL, TOKEN, KEY];
        for text in [
            // raw, as in the URL
            format!("bad token {TOKEN_IN_URL} here"),
            // percent-decoded
            format!("bad token {TOKEN} here"),
            // percent-encoded, upper and lower hex, and every byte encoded
            "bad token abcDEF-ghi_JKL%3d here".to_owned(),
            "bad token %61%62%63%44%45%46%2D%67%68%69%5F%4A%4B%4C%3D here".to_owned(),
            "bad token %61%62%63%44%45%46%2d%67%68%69%5f%4a%4b%4c%3d here".to_owned(),
            // double percent-encoded (a proxy encoding the URL again)
            "bad token abcDEF-ghi_JKL%253D here".to_owned(),
            // HTML-escaped, named and numeric
            "bad token abcDEF-ghi_JKL&#61; here".to_owned(),
            "bad token abcDEF-ghi_JKL&#x3D; here".to_owned(),
            "bad token abcDEF-ghi_JKL&equals; here".to_owned(),
            // JSON-escaped
            "bad token abcDEF-ghi_JKL\\u003d here".to_owned(),
            "bad token abcDEF-ghi_JKL\\u003D here".to_owned(),
            "bad token \\u0061bcDEF-ghi_JKL= here".to_owned(),
            // the key alone, and both in a URL whose separators are HTML-escaped
            format!("key {KEY} rejected"),
            format!(
                "https://chat.googleapis.com/v1/spaces/AAAA1234/messages?key={KEY}&amp;token={TOKEN_IN_URL}"
            ),
        ] {
            assert_clean(&text, &known);
        }
    }

    #[test]
    fn query_credentials_are_scrubbed_in_every_encoding_without_knowing_them() {
        for text in [
            // HTML-escaped separator
            format!(
                "<a href=\"https://chat.googleapis.com/v1/spaces/S/messages?key={KEY}&amp;token={TOKEN_IN_URL}\">"
            ),
            // JSON-escaped separators and `=`
            format!(
                "\"url\": \"https://chat.googleapis.com/v1/spaces/S/messages?key\\u003d{KEY}\\u0026token\\u003d{TOKEN_IN_URL}\""
            ),
            // a webhook URL percent-encoded inside another URL
            format!(
                "https://accounts.example/login?continue=https%3A%2F%2Fchat.googleapis.com%2Fv1%2Fspaces%2FS%2Fmessages%3Fkey%3D{KEY}%26token%3DabcDEF-ghi_JKL%253D"
            ),
            format!(
                "https%3a%2f%2fchat.googleapis.com%2fv1%2fspaces%2fS%2fmessages%3fkey%3d{KEY}%26token%3dabcDEF-ghi_JKL%253d"
            ),
        ] {
            assert_clean(&text, &[]);
        }
    }

    #[test]
    fn scrubbing_is_bounded_and_keeps_unrelated_text() {
        // Near-misses of a known secret stay: only the whole secret is redacted.
        assert_eq!(
            scrub("abcDEF-ghi_JK and %3 and &#61 and \\u00", &[TOKEN]),
            "abcDEF-ghi_JK and %3 and &#61 and \\u00"
        );
        // A long hostile text of partial matches finishes and keeps its length.
        let hostile = "%61%62%63&#61;\\u0061".repeat(20_000);
        let clean = scrub(&hostile, &[TOKEN, KEY]);
        assert_eq!(clean, hostile);
    }
}
