//! The Chat API client of app mode: creates (messageId, requestId, reply option) and edits
//! (PATCH with updateMask) as the service account, with one token refresh on a 401.
//! It must not decide what an answer means for the queue, nor let a token or key out.
//!
//! The request a queued app-mode message becomes is described by [`describe`], which the
//! sender, `kabar render` and dry runs share, so what they show is what is sent.

pub(crate) mod actions;
pub(crate) mod ids;
pub(crate) mod silence;
pub(crate) mod token;
pub(crate) mod verify;

use std::sync::Arc;

pub use token::ServiceAccountKey;

use crate::chat::{Accepted, ChatClient, FailureClass, SendFailure, error_detail};
use crate::plan::MessageKind;
use crate::secret::Secret;
use crate::store::AppWrite;
use token::{Refresh, Tokens};

/// Chat's API host, the default `chat_app.api_url`.
pub(crate) const CHAT_API_URL: &str = "https://chat.googleapis.com";
/// What an edit replaces: the text and the cards (snake_case paths, as Google's samples).
pub(crate) const UPDATE_MASK: &str = "text,cards_v2";
/// Set on every app-mode body: Chat's own markup, as webhooks use, whatever the app's
/// default syntax is.
pub(crate) const MARKUP_SYNTAX: &str = "MARKUP_SYNTAX_CHAT";

pub(crate) use verify::{CHAT_CERTS_URL, GOOGLE_CERTS_URL};

/// The `chat_app` settings: how it posts, and how it takes Chat's events.
#[derive(Debug, Clone)]
pub struct ChatAppSettings {
    /// The service account's key; None only in a dry run, which never asks for a token.
    pub key: Option<Arc<ServiceAccountKey>>,
    /// The Chat API base, `https://chat.googleapis.com` unless a test or proxy says.
    pub api_url: String,
    /// Print each app-mode request (method, path, query, body) instead of sending it.
    pub dry_run: bool,
    /// Chat's events (button presses, being added to a space, messages to the app); None:
    /// no events endpoint and no action buttons (`chat_app.project_number` unset).
    pub events: Option<EventSettings>,
    /// Where Silence buttons create silences; None: cards get no Silence buttons.
    pub alertmanager: Option<AlertmanagerSettings>,
    /// One Silence button per duration, in this order.
    pub silence_durations: Vec<std::time::Duration>,
    /// E-mail domains (lower case) whose users may press buttons; empty: anyone in the space.
    pub allowed_domains: Vec<String>,
}

/// How Chat's events reach kabar and are verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSettings {
    /// The Cloud project number: the audience of Chat's self-signed event tokens.
    pub project_number: String,
    /// The path of kabar's listener the app's HTTP endpoint URL points at.
    pub path: String,
    /// The app's HTTP endpoint URL, when Chat is set to sign ID tokens for it (the
    /// "HTTP endpoint URL" audience, and add-on apps); None: project-number tokens only.
    pub endpoint_url: Option<String>,
    pub certs_url: String,
    pub id_token_certs_url: String,
}

/// The Alertmanager Silence buttons talk to (API v2).
#[derive(Debug, Clone)]
pub struct AlertmanagerSettings {
    pub url: reqwest::Url,
    pub auth: Option<crate::config::Auth>,
}

/// One HTTP request of app mode, before credentials: what dry runs and `kabar render`
/// show and what the client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRequest {
    pub method: &'static str,
    /// `/v1/spaces/S/messages` or `/v1/spaces/S/messages/M`.
    pub path: String,
    pub query: Vec<(&'static str, String)>,
}

impl AppRequest {
    /// `messageId=…&requestId=…`: the query as sent (kabar's values need no escaping).
    pub fn query_string(&self) -> String {
        let query: Vec<String> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        query.join("&")
    }

    /// `POST /v1/spaces/S/messages?messageId=…`, for a log line.
    pub fn line(&self) -> String {
        format!("{} {}?{}", self.method, self.path, self.query_string())
    }
}

/// The request for a queued app-mode message of `space` (`spaces/…`). An edit targets the
/// name Chat gave the message when kabar knows it, else its `client-` id, which Chat
/// accepts in the path as well.
pub(crate) fn describe(
    space: &str,
    write: &AppWrite,
    threaded: bool,
    known_name: Option<&str>,
) -> AppRequest {
    match write {
        AppWrite::Create { message_id } => {
            let mut query = vec![
                ("messageId", message_id.clone()),
                ("requestId", ids::request_id(message_id)),
            ];
            if threaded {
                query.push(("messageReplyOption", crate::chat::REPLY_OPTION.to_owned()));
            }
            AppRequest {
                method: "POST",
                path: format!("/v1/{space}/messages"),
                query,
            }
        }
        AppWrite::Edit { message_id } => AppRequest {
            method: "PATCH",
            path: match known_name {
                Some(name) => format!("/v1/{name}"),
                None => format!("/v1/{space}/messages/{message_id}"),
            },
            query: vec![("updateMask", UPDATE_MASK.to_owned())],
        },
    }
}

/// How a queued message is written in an app-mode space: a message that opens its thread
/// (an alert's firing card, a group's or digest's first message) under the thread's id,
/// which its edits address; anything else under an id of its own.
pub(crate) fn create_write(
    space: &str,
    kind: MessageKind,
    opens_thread: bool,
    thread_key: Option<&str>,
    received_ms: i64,
    body: &str,
) -> AppWrite {
    let message_id = match thread_key {
        Some(thread) if opens_thread => ids::opening_id(space, thread),
        _ => ids::message_id(space, kind.as_str(), thread_key, received_ms, body),
    };
    AppWrite::Create { message_id }
}

/// A webhook body as the app sends it: `markupSyntax` set; for an edit, without the
/// thread (a message keeps its thread).
pub(crate) fn app_body(body: &str, edit: bool) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut object)) => {
            if edit {
                object.remove("thread");
                // The mask names text: a card without text clears the firing mention.
                object
                    .entry("text")
                    .or_insert_with(|| serde_json::Value::String(String::new()));
                object
                    .entry("cardsV2")
                    .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            }
            object.insert("markupSyntax".to_owned(), MARKUP_SYNTAX.into());
            serde_json::Value::Object(object).to_string()
        }
        // Bodies are kabar's own JSON objects; anything else is sent as it is.
        _ => body.to_owned(),
    }
}

/// What a write did besides its answer: token refreshes and token failures, for metrics.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct TokenActivity {
    pub refreshed: u32,
    /// The detail of a failed token request.
    pub failed: Option<(FailureClass, String)>,
}

/// The app-mode client: the token cache around the shared HTTP client.
#[derive(Debug, Default)]
pub(crate) struct ChatApp {
    tokens: Tokens,
}

impl ChatApp {
    /// Sends one app-mode write. A 401 from Chat drops the token and tries once more with
    /// a fresh one; a create answered 409 ALREADY_EXISTS was created by an earlier try
    /// (its answer lost) and counts as accepted.
    pub(crate) async fn send(
        &self,
        chat: &ChatClient,
        settings: &ChatAppSettings,
        request: &AppRequest,
        body: &str,
    ) -> (Result<Accepted, SendFailure>, TokenActivity) {
        let mut activity = TokenActivity::default();
        let Some(key) = &settings.key else {
            // The config allows no key only with dry_run, whose requests are printed.
            return (
                Err(SendFailure {
                    class: FailureClass::AuthError,
                    status: None,
                    retry_after: None,
                    detail: "chat_app has no credentials_file".to_owned(),
                }),
                activity,
            );
        };
        for attempt in 0..2 {
            let token = match self.tokens.get(chat.http(), key).await {
                Ok((token, refresh)) => {
                    if refresh == Refresh::Refreshed {
                        activity.refreshed += 1;
                    }
                    token
                }
                Err(failure) => {
                    activity.failed = Some((failure.class, failure.detail.clone()));
                    return (Err(failure), activity);
                }
            };
            let result = self.once(chat, settings, request, body, &token).await;
            match result {
                Err(failure) if failure.status == Some(401) && attempt == 0 => {
                    self.tokens.forget(&token);
                }
                other => return (other, activity),
            }
        }
        (
            Err(SendFailure {
                class: FailureClass::AuthError,
                status: Some(401),
                retry_after: None,
                detail: "Chat refused a freshly issued token".to_owned(),
            }),
            activity,
        )
    }

    async fn once(
        &self,
        chat: &ChatClient,
        settings: &ChatAppSettings,
        request: &AppRequest,
        body: &str,
        token: &Secret,
    ) -> Result<Accepted, SendFailure> {
        let secrets = [token.expose()];
        let invalid = || SendFailure {
            class: FailureClass::ClientError,
            status: None,
            retry_after: None,
            detail: "chat_app.api_url and the space do not make a valid URL".to_owned(),
        };
        let mut url = reqwest::Url::parse(settings.api_url.trim_end_matches('/'))
            .and_then(|base| base.join(&request.path))
            .map_err(|_| invalid())?;
        url.query_pairs_mut()
            .extend_pairs(request.query.iter().map(|(k, v)| (*k, v.as_str())));
        let method = if request.method == "PATCH" {
            reqwest::Method::PATCH
        } else {
            reqwest::Method::POST
        };
        let response = chat
            .http()
            .request(method, url)
            .bearer_auth(token.expose())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/json; charset=UTF-8",
            )
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| token::transport("Chat API", e, &secrets))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::chat::parse_retry_after);
        let text = token::read_capped(response)
            .await
            .map_err(|e| token::transport("Chat API", e, &secrets))?;
        if (200..300).contains(&status) {
            let answer = serde_json::from_str::<serde_json::Value>(&text).ok();
            let name_at = |pointer: &str| {
                let name = answer.as_ref()?.pointer(pointer)?.as_str()?;
                Some(name.to_owned())
            };
            return Ok(Accepted {
                thread_name: name_at("/thread/name"),
                message_name: name_at("/name"),
            });
        }
        if status == 409 && request.method == "POST" {
            // The message id is taken in the space: kabar's own earlier try created it.
            return Ok(Accepted {
                thread_name: None,
                message_name: None,
            });
        }
        Err(SendFailure {
            class: FailureClass::of_status(status),
            status: Some(status),
            retry_after,
            detail: error_detail(status, &text, &secrets),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_and_edits_are_described_as_sent() {
        let create = describe(
            "spaces/AAA",
            &AppWrite::Create {
                message_id: "client-abc".into(),
            },
            true,
            None,
        );
        assert_eq!(
            create.line(),
            "POST /v1/spaces/AAA/messages?messageId=client-abc&requestId=kabar-abc&messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
        );
        let edit = AppWrite::Edit {
            message_id: "client-abc".into(),
        };
        assert_eq!(
            describe("spaces/AAA", &edit, true, None).line(),
            "PATCH /v1/spaces/AAA/messages/client-abc?updateMask=text,cards_v2"
        );
        assert_eq!(
            describe("spaces/AAA", &edit, true, Some("spaces/AAA/messages/x.y")).path,
            "/v1/spaces/AAA/messages/x.y"
        );
    }

    #[test]
    fn app_bodies_set_the_markup_and_edits_drop_the_thread() {
        let body = r#"{"cardsV2":[],"thread":{"threadKey":"k"}}"#;
        let created: serde_json::Value =
            serde_json::from_str(&app_body(body, false)).expect("json");
        assert_eq!(created["markupSyntax"], MARKUP_SYNTAX);
        assert_eq!(created["thread"]["threadKey"], "k");
        let edited: serde_json::Value = serde_json::from_str(&app_body(body, true)).expect("json");
        assert!(edited.get("thread").is_none());
        assert_eq!(edited["text"], "");
    }
}
