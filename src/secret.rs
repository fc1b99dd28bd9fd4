//! Values that must never reach a log line, metric, error body or panic message.
//!
//! `Secret` wraps them so `Debug` and `Display` print a placeholder; the only way to the
//! value is the explicit `expose()`. `scrub` removes credentials from text that came from
//! elsewhere (HTTP client errors, parser messages) before it is logged or stored.

use std::fmt;

/// A string that prints as `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
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

/// Removes credentials from free text: the values of credential-bearing query parameters,
/// `user:password@` in URLs, and every value in `known` (exact substrings).
pub fn scrub(text: &str, known: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in known.iter().filter(|s| s.len() >= 4) {
        if out.contains(secret) {
            out = out.replace(secret, "[redacted]");
        }
    }
    scrub_query_values(&scrub_userinfo(&out))
}

fn scrub_query_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'outer: while !rest.is_empty() {
        for key in SECRET_QUERY_KEYS {
            // A parameter starts after `?` or `&`; match `key=` case-insensitively.
            let needle_len = key.len() + 1;
            // `get` because the bytes after `&` may end inside a multi-byte character.
            if (rest.starts_with('?') || rest.starts_with('&'))
                && rest
                    .get(1..1 + key.len())
                    .is_some_and(|name| name.eq_ignore_ascii_case(key))
                && rest.as_bytes().get(1 + key.len()) == Some(&b'=')
            {
                out.push_str(&rest[..needle_len + 1]);
                rest = &rest[needle_len + 1..];
                let end = rest
                    .find(|c: char| {
                        c == '&' || c == '#' || c.is_whitespace() || "\"'<>)".contains(c)
                    })
                    .unwrap_or(rest.len());
                if end > 0 {
                    out.push_str("[redacted]");
                }
                rest = &rest[end..];
                continue 'outer;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
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
}
