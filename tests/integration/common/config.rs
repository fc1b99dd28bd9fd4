//! kabar configs for tests, built from typed fields and serialised as JSON (which is valid
//! YAML): no string pasting, so a URL, token or receiver name with YAML's special
//! characters in it cannot change the config's shape.

use serde_json::{Map, Value, json};

/// A kabar config. `TestConfig::build` adds `listen` and `state_dir` (and the test bearer
/// token unless `auth_bearer` set one).
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    root: Map<String, Value>,
}

impl ConfigBuilder {
    pub fn new() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    pub fn listen(self, addr: &str) -> ConfigBuilder {
        self.set(&["listen"], json!(addr))
    }

    pub fn state_dir(self, dir: &std::path::Path) -> ConfigBuilder {
        self.set(&["state_dir"], json!(dir.display().to_string()))
    }

    pub fn auth_bearer(self, token: &str) -> ConfigBuilder {
        self.set(&["auth", "bearer_token"], json!(token))
    }

    pub fn auth_basic(self, username: &str, password: &str) -> ConfigBuilder {
        self.set(
            &["auth", "basic"],
            json!({"username": username, "password": password}),
        )
    }

    pub fn max_body_bytes(self, bytes: u64) -> ConfigBuilder {
        self.set(&["max_body_bytes"], json!(bytes))
    }

    /// `delivery.allow_any_host`: webhooks on hosts other than chat.googleapis.com (the fake
    /// Chat on 127.0.0.1).
    pub fn allow_any_host(self) -> ConfigBuilder {
        self.set(&["delivery", "allow_any_host"], json!(true))
    }

    /// `delivery.proxy_url`: every request to Chat goes through this proxy.
    pub fn proxy_url(self, url: &str) -> ConfigBuilder {
        self.set(&["delivery", "proxy_url"], json!(url))
    }

    pub fn rate_limit_per_second(self, rate: f64) -> ConfigBuilder {
        self.set(&["delivery", "rate_limit_per_second"], json!(rate))
    }

    /// `delivery.backoff`, durations in kabar's notation (`100ms`, `5s`).
    pub fn backoff(self, initial: &str, max: &str) -> ConfigBuilder {
        self.set(
            &["delivery", "backoff"],
            json!({"initial": initial, "max": max}),
        )
    }

    pub fn request_timeout(self, duration: &str) -> ConfigBuilder {
        self.set(&["delivery", "request_timeout"], json!(duration))
    }

    pub fn give_up_after(self, duration: &str) -> ConfigBuilder {
        self.set(&["delivery", "give_up_after"], json!(duration))
    }

    /// `store.postgres`: the store is this PostgreSQL database, with `lease` (kabar's
    /// notation) or the default.
    pub fn postgres(self, url: &str, lease: Option<&str>) -> ConfigBuilder {
        let config = self.set(&["store", "postgres", "url"], json!(url));
        match lease {
            Some(lease) => config.set(&["store", "postgres", "lease"], json!(lease)),
            None => config,
        }
    }

    /// Keeps the store on SQLite even in the PostgreSQL pass (an empty `store` section).
    pub fn store_sqlite(self) -> ConfigBuilder {
        self.set(&["store"], json!({}))
    }

    /// `defaults.format`: `text` or `card`.
    pub fn default_format(self, format: &str) -> ConfigBuilder {
        self.set(&["defaults", "format"], json!(format))
    }

    /// `defaults.reminder_interval`, in kabar's notation (`0s` turns reminders off).
    pub fn default_reminder_interval(self, duration: &str) -> ConfigBuilder {
        self.set(&["defaults", "reminder_interval"], json!(duration))
    }

    /// `chat_app`: the service-account key file and the Chat API base (a fake's).
    pub fn chat_app(self, credentials_file: &std::path::Path, api_url: &str) -> ConfigBuilder {
        self.set(
            &["chat_app"],
            json!({"credentials_file": credentials_file.display().to_string(), "api_url": api_url}),
        )
    }

    /// `chat_app.dry_run: true` with no key: app-mode spaces print their requests.
    pub fn chat_app_dry_run(self) -> ConfigBuilder {
        self.set(&["chat_app"], json!({"dry_run": true}))
    }

    /// Sets one key of `chat_app` (after `chat_app` or `chat_app_dry_run`).
    pub fn chat_app_option(self, key: &str, value: Value) -> ConfigBuilder {
        self.set(&["chat_app", key], value)
    }

    pub fn space(self, name: &str, space: Space) -> ConfigBuilder {
        self.set(&["spaces", name], Value::Object(space.fields))
    }

    /// Whether a value is set at `path` (e.g. `["auth"]`).
    pub fn has(&self, path: &[&str]) -> bool {
        let mut node = &self.root;
        for (depth, key) in path.iter().enumerate() {
            match node.get(*key) {
                Some(Value::Object(inner)) if depth + 1 < path.len() => node = inner,
                Some(_) => return depth + 1 == path.len(),
                None => return false,
            }
        }
        true
    }

    /// The config text kabar reads.
    /// The string at `path`, if the config sets one there.
    pub fn string_at(&self, path: &[&str]) -> Option<String> {
        let (last, parents) = path.split_last()?;
        let mut node = &self.root;
        for key in parents {
            node = node.get(*key)?.as_object()?;
        }
        node.get(*last)?.as_str().map(str::to_owned)
    }

    pub fn to_yaml(&self) -> String {
        serde_json::to_string_pretty(&self.root).expect("a JSON object serialises")
    }

    fn set(mut self, path: &[&str], value: Value) -> ConfigBuilder {
        let (last, parents) = path.split_last().expect("a config path has a key");
        let mut node = &mut self.root;
        for key in parents {
            let entry = node
                .entry((*key).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            node = entry.as_object_mut().expect("made an object above");
        }
        node.insert((*last).to_owned(), value);
        self
    }
}

/// One entry of `spaces:`.
#[derive(Debug, Clone)]
pub struct Space {
    fields: Map<String, Value>,
}

impl Space {
    /// A space posting to `url`.
    pub fn webhook(url: &str) -> Space {
        Space::with("webhook_url", json!(url))
    }

    /// A space posting as the Chat app to `space` (`spaces/…`).
    pub fn app(space: &str) -> Space {
        Space::with("space", json!(space))
    }

    /// A space that renders and logs but never posts.
    pub fn dry_run() -> Space {
        Space::with("dry_run", json!(true))
    }

    /// The Alertmanager receiver names routed here.
    pub fn receivers(mut self, names: &[&str]) -> Space {
        self.fields.insert("receivers".to_owned(), json!(names));
        self
    }

    /// `format`: `text` or `card`.
    pub fn format(mut self, format: &str) -> Space {
        self.fields.insert("format".to_owned(), json!(format));
        self
    }

    /// `send_resolved`: whether resolves are posted.
    pub fn send_resolved(mut self, send: bool) -> Space {
        self.fields.insert("send_resolved".to_owned(), json!(send));
        self
    }

    /// `threading`: `per_alert`, `per_group` or `off`.
    pub fn threading(mut self, mode: &str) -> Space {
        self.fields.insert("threading".to_owned(), json!(mode));
        self
    }

    /// Any other space key (`mentions`, `templates`, `max_new_threads_per_notification`, …),
    /// with its value as JSON.
    pub fn option(mut self, key: &str, value: Value) -> Space {
        self.fields.insert(key.to_owned(), value);
        self
    }

    fn with(key: &str, value: Value) -> Space {
        let mut fields = Map::new();
        fields.insert(key.to_owned(), value);
        Space { fields }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values that a string template would have turned into other YAML (a comment, a new
    /// key, a flow mapping) reach kabar's config as the same strings.
    #[test]
    fn yaml_special_characters_in_values_stay_values() {
        let url = "http://127.0.0.1:9/v1/spaces/S/messages?key=k#x: {y: 1}\n  evil: true";
        let token = "tok'en\" #not-a-comment: [1]";
        let receiver = "ns/cfg: team # {x}";
        let text = ConfigBuilder::new()
            .auth_bearer(token)
            .allow_any_host()
            .space("ops", Space::webhook(url).receivers(&[receiver]))
            .to_yaml();
        let config = kabar::Config::parse(&text, std::path::Path::new("/"), &|_| None)
            .expect("the built config is valid");
        let space = config.spaces.get("ops").expect("space ops");
        assert_eq!(space.receivers, vec![receiver.to_owned()]);
        match &space.target {
            kabar::config::Target::Webhook(secret) => assert_eq!(secret.expose(), url),
            other => panic!("expected a webhook target, got {other:?}"),
        }
    }
}
