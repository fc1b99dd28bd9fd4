//! serde's and the YAML parser's errors made fit for people: the key, the line, the YAML
//! expected. Must never let a value through (it may be a secret), nor a Rust type name.

use super::raw::RawConfig;

/// The line of the problem serde found in the expanded config. The expanded tree has no
/// positions, so the text is read once more, as written; its first error is the same one
/// when it names the same key or says the same thing (a `${VAR}` may change what the
/// text says, and then no line is given rather than a wrong one).
pub(super) fn line_of(text: &str, key: &str, message: &str) -> Option<usize> {
    let direct: Result<RawConfig, _> =
        serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text));
    if let Err(error) = direct {
        let same_key = error.path().to_string() == key;
        let inner = error.into_inner();
        if same_key || inner.to_string().contains(message) {
            return inner.location().map(|location| location.line());
        }
    }
    unknown_field_line(text, message)
}

/// For `unknown field `x``: the one line that starts with the key `x:` in block style.
/// None when there are several (the same word under two parents) or none (flow style).
fn unknown_field_line(text: &str, message: &str) -> Option<usize> {
    let field = message.strip_prefix("unknown field `")?.split('`').next()?;
    let mut lines = text.lines().enumerate().filter(|(_, line)| {
        let line = line.trim_start();
        let line = line.strip_prefix("- ").unwrap_or(line).trim_start();
        line.strip_prefix(field)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    });
    match (lines.next(), lines.next()) {
        (Some((index, _)), None) => Some(index + 1),
        _ => None,
    }
}

/// serde's messages, without the values it quotes and the Rust type names it uses:
/// `invalid type: string "s3cret", expected struct RawAuth` becomes `expected a mapping
/// with bearer_token, bearer_token_file or basic, found a string`. A secret written in the
/// wrong place must not come back in an error, a log line or the reload answer.
///
/// The YAML parser's own messages have the same part after a key path (`a.b: `) and before
/// a position (` at line 3 column 18`), as when a tag (`!!int s3cret`) does not fit.
pub(super) fn plain_serde_message(message: &str) -> String {
    for marker in ["invalid type: ", "invalid value: "] {
        let Some(start) = message.find(marker) else {
            continue;
        };
        let (head, rest) = (&message[..start], &message[start + marker.len()..]);
        // The expectation is ours and comes last; what was found may quote anything.
        let Some(at) = rest.rfind(", expected ") else {
            return format!("{head}has the wrong type");
        };
        let found = found_kind(&rest[..at]);
        let tail = &rest[at + ", expected ".len()..];
        let (expected, position) = match tail.rfind(" at line ") {
            Some(line) => (&tail[..line], &tail[line..]),
            None => (tail, ""),
        };
        let expected = expected_yaml(expected);
        return if marker == "invalid value: " {
            format!("{head}expected {expected}, found {found} out of range{position}")
        } else {
            format!("{head}expected {expected}, found {found}{position}")
        };
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // A key is not a secret, but a URL pasted where a key belongs holds one.
        if let Some(end) = rest.find('`') {
            let field = &rest[..end];
            if field.len() > 64 || field.contains("://") || field.contains('?') {
                return "unknown field (not shown: it looks like a URL, not a key)".to_owned();
            }
        }
    }
    message.to_owned()
}

/// A key quoted from the file may hold a newline or terminal escapes: not in a log line.
pub(super) fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// What kind of YAML value serde found, from its `Unexpected` text, without the value.
fn found_kind(found: &str) -> &'static str {
    let kinds = [
        ("string", "a string"),
        ("integer", "a number"),
        ("floating point", "a number"),
        ("boolean", "a true/false value"),
        ("sequence", "a list"),
        ("map", "a mapping"),
        ("unit", "an empty value"),
        ("null", "an empty value"),
        ("enum", "a tagged value"),
    ];
    for (prefix, kind) in kinds {
        if found.starts_with(prefix) {
            return kind;
        }
    }
    "another kind of value"
}

/// serde's expectation (a Rust type) as the YAML to write.
fn expected_yaml(expected: &str) -> String {
    let plain = match expected {
        "struct RawConfig" => {
            "a mapping of kabar's settings (listen, state_dir, auth, delivery, server, defaults, spaces)"
        }
        "struct RawAuth" => "a mapping with bearer_token, bearer_token_file or basic",
        "struct RawBasic" => "a mapping with username and password or password_file",
        "struct RawDelivery" => {
            "a mapping of delivery settings (rate_limit_per_second, request_timeout, backoff, give_up_after, ...)"
        }
        "struct RawServer" => "a mapping with read_timeout, max_concurrent_requests or tls",
        "struct RawTls" => "a mapping with cert_file and key_file",
        "struct RawBackoff" => "a mapping such as {initial: 1s, max: 60s}",
        "struct RawOptions" => {
            "a mapping of space settings (format, threading, send_resolved, reminder_interval, ...)"
        }
        "struct RawTemplates" => "a mapping such as {text: text.hbs, card: card.hbs}",
        "struct RawSpace" => {
            "a mapping of the space's settings, such as {webhook_url_file: /etc/kabar/ops, receivers: [ops]}"
        }
        "a map" => "a mapping (name: value lines, or {name: value})",
        "a sequence" => "a list, such as [a, b]",
        "a boolean" => "true or false",
        "path string" => "a path (a string)",
        "a string" => "a string",
        "f32" | "f64" => "a number",
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number of at least 0",
        "i8" | "i16" | "i32" | "i64" => "a whole number",
        other if other.starts_with("struct ") => "a mapping",
        other => return other.to_owned(),
    };
    plain.to_owned()
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

    #[test]
    fn a_string_where_a_mapping_belongs_is_not_echoed() {
        let env =
            |name: &str| (name == "KABAR_TOKEN").then(|| "env-t0ken-from-var-4242".to_owned());
        for (text, key, secret) in [
            (
                "auth: b34rer-literal-1111\nspaces: {a: {dry_run: true}}\n",
                "auth",
                "b34rer-literal",
            ),
            (
                "auth: \"${KABAR_TOKEN}\"\nspaces: {a: {dry_run: true}}\n",
                "auth",
                "env-t0ken",
            ),
            (
                "auth: {basic: \"am:${KABAR_TOKEN}\"}\nspaces: {a: {dry_run: true}}\n",
                "auth.basic",
                "env-t0ken",
            ),
            (
                "spaces:\n  a: https://chat.googleapis.com/v1/spaces/SP4CE-ID/messages?key=k&token=t\n",
                "spaces.a",
                "SP4CE-ID",
            ),
            ("spaces: [\"${KABAR_TOKEN}\"]\n", "spaces", "env-t0ken"),
        ] {
            let err = Config::parse(text, Path::new("/nonexistent"), &env)
                .expect_err(text)
                .to_string();
            assert!(err.starts_with(key), "{text:?} should name {key}: {err}");
            assert!(!err.contains(secret), "{text:?} echoed the value: {err}");
            assert!(
                !err.contains("Raw"),
                "{text:?} named an internal type: {err}"
            );
            assert!(
                err.contains("mapping"),
                "{text:?} should say a mapping was expected: {err}"
            );
        }
    }

    #[test]
    fn type_errors_say_what_yaml_was_expected() {
        for (text, expected) in [
            (
                "spaces: {a: [x]}",
                "spaces.a: expected a mapping of the space's settings",
            ),
            ("spaces: [a]", "spaces: expected a mapping"),
            (
                "spaces: {a: {dry_run: yes please}}",
                "spaces.a.dry_run: expected true or false",
            ),
            (
                "spaces: {a: {dry_run: true, max_new_threads_per_notification: -1}}",
                "spaces.a.max_new_threads_per_notification: expected a whole number",
            ),
            (
                "state_dir: [a]\nspaces: {a: {dry_run: true}}",
                "state_dir: expected a path",
            ),
            (
                "delivery: {request_timeout: 10}\nspaces: {a: {dry_run: true}}",
                "delivery.request_timeout: 10 has no unit",
            ),
        ] {
            let err = error_of(text);
            assert!(err.starts_with(expected), "{text:?}: {err}");
            assert!(
                !err.contains("struct") && !err.contains("u32"),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn a_quoted_key_cannot_break_the_error_onto_several_lines() {
        let err =
            error_of("spaces:\n  a:\n    dry_run: true\n    \"re\\ncei\\u001b[31mvers\": [x]\n");
        assert!(err.contains("unknown field"), "{err}");
        assert!(!err.contains('\n') && !err.contains('\u{1b}'), "{err:?}");
    }

    #[test]
    fn unknown_keys_carry_their_line() {
        let err = error_of("spaces:\n  ops:\n    dry_run: true\n    recievers: [x]\n");
        assert!(
            err.starts_with("spaces.ops.recievers: unknown field"),
            "{err}"
        );
        assert!(err.contains("line 4"), "{err}");
        let err = error_of("listen: 127.0.0.1:1\nstate: /tmp\nspaces: {a: {dry_run: true}}\n");
        assert!(err.contains("`state`") && err.contains("line 2"), "{err}");
        // A `${VAR}` earlier in the file reads differently before expansion; the line is
        // still found.
        let err = error_of(
            "delivery:\n  request_timeout: \"${T:-10s}\"\nspaces:\n  a:\n    dry_run: true\n    recievers: [x]\n",
        );
        assert!(err.contains("line 6"), "{err}");
    }
}
