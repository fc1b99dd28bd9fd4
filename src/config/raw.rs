//! The file's shape as serde reads it, before defaults and validation: which keys exist
//! (deny_unknown_fields) and that secrets are strings. No bounds or defaults here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::durations::RawDuration;
use super::model::{Format, OnResolveStep, Threading};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Option<String>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) auth: Option<RawAuth>,
    pub(super) delivery: Option<RawDelivery>,
    pub(super) server: Option<RawServer>,
    pub(super) store: Option<super::store::RawStore>,
    pub(super) defaults: Option<RawOptions>,
    pub(super) spaces: Option<BTreeMap<String, RawSpace>>,
    pub(super) chat_app: Option<super::chat_app::RawChatApp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(super) bearer_token: Option<RawSecret>,
    pub(super) bearer_token_file: Option<PathBuf>,
    pub(super) basic: Option<RawBasic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBasic {
    pub(super) username: String,
    pub(super) password: Option<RawSecret>,
    pub(super) password_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    pub(super) rate_limit_per_second: Option<f64>,
    pub(super) request_timeout: Option<RawDuration>,
    pub(super) backoff: Option<RawBackoff>,
    pub(super) give_up_after: Option<RawDuration>,
    pub(super) allow_any_host: Option<bool>,
    pub(super) proxy_url: Option<RawSecret>,
    pub(super) proxy_url_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) read_timeout: Option<RawDuration>,
    pub(super) max_concurrent_requests: Option<u64>,
    pub(super) tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert_file: PathBuf,
    pub(super) key_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackoff {
    pub(super) initial: Option<RawDuration>,
    pub(super) max: Option<RawDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOptions {
    pub(super) format: Option<Format>,
    pub(super) threading: Option<Threading>,
    pub(super) send_resolved: Option<bool>,
    pub(super) reminder_interval: Option<RawDuration>,
    pub(super) max_new_threads_per_notification: Option<u32>,
    pub(super) mentions: Option<BTreeMap<String, Vec<String>>>,
    pub(super) templates: Option<RawTemplates>,
    pub(super) on_resolve: Option<Vec<OnResolveStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTemplates {
    pub(super) text: Option<PathBuf>,
    pub(super) card: Option<PathBuf>,
}

/// A space: where it posts and which receivers it serves, plus any `defaults` key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpace {
    pub(super) webhook_url: Option<RawSecret>,
    pub(super) webhook_url_file: Option<PathBuf>,
    pub(super) dry_run: Option<bool>,
    /// App mode: the Chat space (`spaces/…`) to post to as `chat_app`.
    pub(super) space: Option<String>,
    pub(super) receivers: Option<Vec<String>>,
    pub(super) format: Option<Format>,
    pub(super) threading: Option<Threading>,
    pub(super) send_resolved: Option<bool>,
    pub(super) reminder_interval: Option<RawDuration>,
    pub(super) max_new_threads_per_notification: Option<u32>,
    pub(super) mentions: Option<BTreeMap<String, Vec<String>>>,
    pub(super) templates: Option<RawTemplates>,
    pub(super) on_resolve: Option<Vec<OnResolveStep>>,
}

impl RawSpace {
    pub(super) fn overrides(&mut self) -> RawOptions {
        RawOptions {
            format: self.format.take(),
            threading: self.threading.take(),
            send_resolved: self.send_resolved.take(),
            reminder_interval: self.reminder_interval.take(),
            max_new_threads_per_notification: self.max_new_threads_per_notification.take(),
            mentions: self.mentions.take(),
            templates: self.templates.take(),
            on_resolve: self.on_resolve.take(),
        }
    }
}

/// A secret as written in the file: only a YAML string is taken. Anything else is refused
/// by naming what YAML read, never the value, which serde's own errors would quote; and a
/// secret read as a number would not even be the one written (0x1F, 0o17, 1e3 and .inf do
/// not read back as typed).
pub(super) struct RawSecret(pub(super) String);

const SECRET_NOT_A_STRING: &str = "must be a string: put the value in quotes";

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        fn refuse<E: serde::de::Error>(what: &str) -> E {
            E::custom(format!(
                "{SECRET_NOT_A_STRING} (YAML read {what}, which can change it; the value is not shown because it is a secret)"
            ))
        }
        impl<'de> serde::de::Visitor<'de> for SecretVisitor {
            type Value = RawSecret;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSecret, E> {
                Ok(RawSecret(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<RawSecret, E> {
                Ok(RawSecret(v))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<RawSecret, E> {
                Err(refuse("a boolean"))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<RawSecret, E> {
                Err(refuse("a number"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<RawSecret, E> {
                Err(refuse("a number"))
            }
            fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<RawSecret, E> {
                Err(refuse("a number"))
            }
            fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<RawSecret, E> {
                Err(refuse("a number"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<RawSecret, E> {
                Err(refuse("a number"))
            }
            fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<RawSecret, E> {
                Err(refuse("binary data"))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<RawSecret, E> {
                Err(refuse("an empty value"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<RawSecret, A::Error> {
                Err(refuse("a list"))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<RawSecret, A::Error> {
                Err(refuse("a mapping"))
            }
            fn visit_enum<A: serde::de::EnumAccess<'de>>(
                self,
                _: A,
            ) -> Result<RawSecret, A::Error> {
                Err(refuse("a tagged value"))
            }
        }
        deserializer.deserialize_any(SecretVisitor)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

    /// Every way YAML can hand a secret key something else than a string: the error names
    /// the key and never the value, in the form written or the form YAML read it as.
    #[test]
    fn secrets_of_any_yaml_type_are_refused_without_the_value() {
        let keys = [
            (
                "spaces:\n  a:\n    webhook_url: VALUE\n",
                "spaces.a.webhook_url",
            ),
            (
                "auth:\n  bearer_token: VALUE\nspaces: {a: {dry_run: true}}\n",
                "auth.bearer_token",
            ),
            (
                "auth:\n  basic: {username: am, password: VALUE}\nspaces: {a: {dry_run: true}}\n",
                "auth.basic.password",
            ),
            (
                "delivery:\n  proxy_url: VALUE\nspaces: {a: {dry_run: true}}\n",
                "delivery.proxy_url",
            ),
        ];
        // (as written, forms it may be printed in once YAML read it)
        let shapes: [(&str, &[&str]); 14] = [
            // A YAML tag makes the parser itself complain, quoting the string.
            ("!!int t4g-int-secret", &["t4g-int"]),
            ("!!float t4g-float-secret", &["t4g-float"]),
            ("!!bool t4g-bool-secret", &["t4g-bool"]),
            ("!!null t4g-null-secret", &["t4g-null"]),
            // `${` inside a secret is read as a variable reference.
            ("\"pa55${w0rd part}\"", &["w0rd part", "pa55"]),
            ("987654321987", &["987654321987"]),
            ("0x1F2E3D", &["0x1F2E3D", "2043453"]),
            ("-0o17777", &["17777", "8191"]),
            ("6.02214076e23", &["6.02214076", "602214076"]),
            (".inf", &["inf`", ".inf"]),
            ("true", &["`true`"]),
            (
                "[s3q-first-9181, s3q-second-7272]",
                &["s3q-first", "s3q-second"],
            ),
            ("{m4p-key-5151: m4p-value-6262}", &["m4p-key", "m4p-value"]),
            ("!custom t4gged-secret-3131", &["t4gged-secret"]),
        ];
        for (template, key) in keys {
            for (value, forms) in shapes {
                let text = template.replace("VALUE", value);
                let err = error_of(&text);
                assert!(err.contains(key), "{text:?} should name {key}: {err}");
                for form in forms {
                    assert!(!err.contains(form), "{text:?} echoed {form}: {err}");
                }
            }
        }
    }
}
