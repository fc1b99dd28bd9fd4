//! `${VAR}` and `${VAR:-default}` expansion over the parsed YAML tree, before serde reads it.
//! Must not echo a value of a secret key in an error: only the key and the variable's name.

use serde_yaml_ng::Value;

use super::{ConfigError, invalid};

pub(super) fn expand_env(
    value: &mut Value,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                let key = path.join(".");
                *s = expand_string(s, env).map_err(|message| {
                    // A `${` that is no variable reference may be part of a secret.
                    if is_secret_key(path) && message.ends_with(INVALID_REFERENCE) {
                        invalid(
                            &key,
                            format!(
                                "has a ${{...}}{INVALID_REFERENCE} (write $${{ for a literal ${{)"
                            ),
                        )
                    } else {
                        invalid(&key, message)
                    }
                })?;
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(format!("[{i}]"));
                expand_env(item, path, env)?;
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                path.push(k.as_str().unwrap_or("?").to_owned());
                expand_env(v, path, env)?;
                path.pop();
            }
        }
        Value::Tagged(tagged) => expand_env(&mut tagged.value, path, env)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

const INVALID_REFERENCE: &str = " that is not a valid variable reference";

/// Keys whose values are secrets (the last part of the key path).
fn is_secret_key(path: &[String]) -> bool {
    path.last().is_some_and(|last| {
        ["webhook_url", "bearer_token", "password", "proxy_url"].contains(&last.as_str())
    })
}

/// Expands `${VAR}` and `${VAR:-default}`; `$${` stands for a literal `${`.
fn expand_string(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| "unclosed ${ in value".to_owned())?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            let valid_name = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid_name {
                return Err(format!("${{{expr}}}{INVALID_REFERENCE}"));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (use ${{{name}:-default}} for a fallback)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    #[test]
    fn env_expansion_with_and_without_default() {
        let config = parse(
            "listen: \"${LISTEN:-127.0.0.1:9999}\"\nauth: {bearer_token: \"${TOKEN}\"}\nspaces:\n  ops: {webhook_url: \"${OPS_URL}\"}\n",
        )
        .expect("valid");
        assert_eq!(config.listen.port(), 9999);
        assert!(matches!(&config.auth, Some(Auth::Bearer(t)) if t.expose() == "s3cret-token"));
        assert!(matches!(&config.spaces["ops"].target, Target::Webhook(_)));
    }

    #[test]
    fn unset_variable_names_key_and_variable() {
        let err = error_of("spaces:\n  ops: {webhook_url: \"${MISSING_URL}\"}\n");
        assert!(err.contains("spaces.ops.webhook_url"), "{err}");
        assert!(err.contains("MISSING_URL"), "{err}");
    }

    #[test]
    fn literal_dollar_brace_is_escaped() {
        assert_eq!(
            expand_string("a$${B}c $d", &|_| None).expect("ok"),
            "a${B}c $d"
        );
    }
}
