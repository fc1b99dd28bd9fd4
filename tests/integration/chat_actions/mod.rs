//! Acknowledge and Silence from the card: kabar with an app-mode space posting to the fake
//! Google servers, Chat's events signed with the keys the fake certificate endpoint serves,
//! and (for Silence) the real Alertmanager. Shared set-up for the suites below.

mod acknowledge;
mod events;
mod hostile;
mod silence;

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::chat_events::{ChatCerts, Click, EventSigner, authorization, classic_click};
use crate::common::config::{ConfigBuilder, Space};
use crate::common::fake_google::{ChatMessage, FakeGoogle};
use crate::common::kabar::{InProcess, TestConfig, client, notification, post_alerts};

pub(crate) const PROJECT: &str = "123456789012";
pub(crate) const SPACE: &str = "spaces/AAAAactions";
pub(crate) const EVENTS: &str = "/chat/events";
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// kabar, the fake Google it posts to, and the keys Chat's events are signed with.
pub(crate) struct Setup {
    pub google: FakeGoogle,
    pub certs: ChatCerts,
    pub signer: EventSigner,
    pub kabar: InProcess,
    /// The config kabar runs with, for `reconfigure`.
    pub builder: ConfigBuilder,
}

/// kabar with one app-mode space `ops` (receiver ops) and events for PROJECT, shaped by
/// `tune`.
pub(crate) async fn start(tune: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Setup {
    let google = FakeGoogle::start().await;
    let certs = ChatCerts::start().await;
    let placeholder = TestConfig::build(ConfigBuilder::new().space("x", Space::dry_run()));
    let key = google.write_key(placeholder.dir.path());
    let builder = ConfigBuilder::new()
        .allow_any_host()
        .backoff("100ms", "500ms")
        .chat_app(&key, &google.api_url())
        .chat_app_option("project_number", json!(PROJECT))
        .chat_app_option("certs_url", json!(certs.url()))
        .chat_app_option("id_token_certs_url", json!(certs.id_url()))
        .space("ops", Space::app(SPACE).receivers(&["ops"]));
    let builder = tune(builder);
    placeholder.rewrite_with(builder.clone());
    let kabar = InProcess::start(placeholder).await;
    let signer = certs.signer();
    Setup {
        google,
        certs,
        signer,
        kabar,
        builder,
    }
}

/// A button of a card: its label, its function and its episode parameter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Button {
    pub text: String,
    pub function: Option<String>,
    pub episode: Option<String>,
}

/// Every button of a message body, in order.
pub(crate) fn buttons(body: &Value) -> Vec<Button> {
    fn walk(value: &Value, found: &mut Vec<Button>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Array(list)) = map.get("buttons") {
                    found.extend(list.iter().map(|b| {
                        Button {
                            text: b["text"].as_str().unwrap_or("").to_owned(),
                            function: b["onClick"]["action"]["function"]
                                .as_str()
                                .map(str::to_owned),
                            episode: b["onClick"]["action"]["parameters"][0]["value"]
                                .as_str()
                                .map(str::to_owned),
                        }
                    }));
                    return;
                }
                map.values().for_each(|v| walk(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(body, &mut found);
    found
}

/// Every `text` of a body, joined: what the card says.
pub(crate) fn card_text(body: &Value) -> String {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(text)) = map.get("text") {
                    out.push(text.clone());
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(body, &mut out);
    out.join("\n")
}

impl Setup {
    pub fn url(&self, path: &str) -> String {
        self.kabar.url(path)
    }

    /// Rewrites kabar's config with `change` and reloads it.
    pub async fn reconfigure(&mut self, change: impl FnOnce(ConfigBuilder) -> ConfigBuilder) {
        self.builder = change(self.builder.clone());
        self.kabar.config.rewrite_with(self.builder.clone());
        self.kabar
            .service
            .reload()
            .await
            .expect("the new config loads");
    }

    /// Fires `alert` in `ops` and waits for its opening card; the card as Chat has it.
    pub async fn fire(&self, alert: &str) -> ChatMessage {
        let (status, _) = post_alerts(
            &self.url("/alerts"),
            &notification("ops", &[(alert, "firing")]),
        )
        .await;
        assert_eq!(status, 200);
        let before = self.google.messages(SPACE).len();
        self.google
            .wait_until("the firing card", WAIT, |g| {
                g.messages(SPACE).len() > before
            })
            .await;
        self.google.messages(SPACE)[before].clone()
    }

    /// The episode id on a card's Acknowledge button.
    pub fn episode_of(&self, card: &ChatMessage) -> String {
        buttons(&card.body)
            .into_iter()
            .find(|b| b.text == "Acknowledge")
            .and_then(|b| b.episode)
            .unwrap_or_else(|| panic!("no Acknowledge button on {}", card.body))
    }

    /// POSTs an event with `token` (None: no Authorization header): status and answer.
    pub async fn post_event(
        &self,
        token: Option<String>,
        event: &Value,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = client()
            .post(self.url(EVENTS))
            .header("content-type", "application/json")
            .header("user-agent", "Google-Dynamite")
            .body(event.to_string());
        if let Some(value) = token {
            request = request.header("authorization", value);
        }
        let response = request
            .send()
            .await
            .expect("the events request is answered");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body, headers)
    }

    /// A classic click by `who` (display name; e-mail `<lower>@example.com`), signed as Chat.
    pub async fn click(&self, who: &str, action: &str, episode: &str) -> (u16, Value) {
        let event = click_event(who, action, episode, &self.card_name());
        let (status, answer, _) = self
            .post_event(authorization(&self.signer.chat_token(PROJECT)), &event)
            .await;
        (status, answer)
    }

    fn card_name(&self) -> String {
        self.google
            .messages(SPACE)
            .first()
            .map(|m| m.name.clone())
            .unwrap_or_else(|| format!("{SPACE}/messages/none"))
    }

    /// The body of a series on /metrics, 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = crate::common::kabar::metrics_text(&self.url("")).await;
        crate::common::kabar::metric_value(&text, series).unwrap_or(0.0)
    }
}

/// A classic CARD_CLICKED event of `who`.
pub(crate) fn click_event(who: &str, action: &str, episode: &str, message: &str) -> Value {
    let user = format!("users/{}", who.to_lowercase().replace(' ', ""));
    let email = format!("{}@example.com", who.to_lowercase().replace(' ', "."));
    classic_click(&Click {
        user: &user,
        display_name: who,
        email: &email,
        space: SPACE,
        message,
        action,
        episode,
    })
}

/// The card an UPDATE_MESSAGE answer (classic) carries.
pub(crate) fn updated(answer: &Value) -> &Value {
    assert_eq!(
        answer["actionResponse"]["type"], "UPDATE_MESSAGE",
        "an UPDATE_MESSAGE answer: {answer}"
    );
    answer
}
