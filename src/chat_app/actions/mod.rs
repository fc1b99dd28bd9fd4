//! Chat's events at `chat_app.events_path`: each request verified before anything else,
//! then read (classic or add-on), and answered — a click acts on its episode, being added
//! to a space gets a welcome, a message gets help. It must not trust anything unverified.

pub(crate) mod act;
pub(crate) mod card;
pub(crate) mod episodes;
pub(crate) mod event;
pub(crate) mod state;

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, header};
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::verify::{EventVerifier, VerifierSettings};
use super::{ChatAppSettings, EventSettings};
use crate::app::AppState;
use crate::ingest::ApiError;
use event::{EventKind, Shape};

/// An event is a message and a little about it; nothing Chat sends comes near this.
pub(crate) const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Events handled at once; more are answered 503 at once (Chat retries), so a flood
/// cannot queue unbounded work behind the store or Alertmanager.
const MAX_CONCURRENT_EVENTS: usize = 32;

/// The events endpoint's own state: the verifier (its key caches live as long as the
/// settings they were made for) and the bound on work in progress.
pub(crate) struct Events {
    verifier: Mutex<Option<(EventSettings, Arc<EventVerifier>)>>,
    permits: Semaphore,
    /// For Alertmanager, which lives inside the cluster: no proxy meant for Google.
    pub(crate) internal_http: reqwest::Client,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            verifier: Mutex::new(None),
            permits: Semaphore::new(MAX_CONCURRENT_EVENTS),
            internal_http: reqwest::Client::builder()
                .no_proxy()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }
}

impl Events {
    /// The verifier for `settings`, made anew when a reload changed what it checks.
    fn verifier(&self, settings: &EventSettings) -> Arc<EventVerifier> {
        let mut slot = self.verifier.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, verifier)) = slot.as_ref()
            && known == settings
        {
            return Arc::clone(verifier);
        }
        let verifier = Arc::new(EventVerifier::new(VerifierSettings {
            project_number: settings.project_number.clone(),
            certs_url: settings.certs_url.clone(),
            endpoint_url: settings.endpoint_url.clone(),
            id_token_certs_url: settings.id_token_certs_url.clone(),
        }));
        *slot = Some((settings.clone(), Arc::clone(&verifier)));
        verifier
    }
}

/// Whether `path` is where the configuration takes Chat's events.
pub(crate) fn is_events_path(app: &AppState, path: &str) -> bool {
    app.runtime()
        .config
        .chat_app
        .as_ref()
        .and_then(|c| c.events.as_ref())
        .is_some_and(|events| events.path.trim_end_matches('/') == path.trim_end_matches('/'))
}

/// `POST {events_path}`: verify, read, answer.
pub(crate) async fn receive(app: &AppState, request: Request<Body>) -> Result<Value, ApiError> {
    let runtime = app.runtime();
    let metrics = &app.shared.metrics;
    let (Some(settings), Some(events)) = (
        runtime.config.chat_app.as_ref(),
        runtime
            .config
            .chat_app
            .as_ref()
            .and_then(|c| c.events.as_ref()),
    ) else {
        return Err(ApiError::NotFound);
    };
    let Ok(_permit) = app.events.permits.try_acquire() else {
        metrics.event_handled("unverified", "busy");
        return Err(ApiError::EventsBusy);
    };
    let (parts, body) = request.into_parts();
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let verifier = app.events.verifier(events);
    if let Err(e) = verifier
        .verify(app.shared.chat.http(), authorization, Timestamp::now())
        .await
    {
        metrics.event_verification_failed(e.reason());
        if e.is_unavailable() {
            metrics.event_handled("unverified", "unavailable");
            return Err(ApiError::EventKeysUnavailable);
        }
        metrics.event_handled("unverified", "unauthorized");
        return Err(ApiError::EventUnauthorized { reason: e.reason() });
    }
    let bytes = crate::ingest::read_body(&parts.headers, body, MAX_EVENT_BYTES).await?;
    let query_action = parts.uri.query().and_then(|q| {
        reqwest::Url::parse(&format!("http://kabar/?{q}"))
            .ok()?
            .query_pairs()
            .find(|(k, _)| k == "action")
            .map(|(_, v)| v.chars().take(64).collect::<String>())
    });
    let parsed = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|value| event::read(&value, query_action.as_deref()));
    let Some(event) = parsed else {
        metrics.event_handled("unreadable", "malformed");
        return Err(ApiError::EventMalformed);
    };
    let kind = event.kind.as_str();
    let answer = match &event.kind {
        EventKind::Click { action, episode } => {
            act::click(app, settings, &event, action.as_deref(), episode.as_deref()).await
        }
        EventKind::AddedToSpace => {
            info!(space = ?event.space, "kabar was added to a Chat space");
            Ok(event::new_message(
                event.shape,
                &welcome(event.space.as_deref()),
            ))
        }
        EventKind::Message => Ok(event::new_message(event.shape, &help(settings))),
        EventKind::Other => Ok(json!({})),
    };
    match &answer {
        Ok(_) => metrics.event_handled(kind, "answered"),
        Err(e) => {
            warn!(event = kind, error = %e, "cannot answer a Chat event");
            metrics.event_handled(kind, "unavailable");
        }
    }
    answer
}

/// A space id is safe to print when it is what Chat's ids look like.
fn printable_space(space: Option<&str>) -> Option<&str> {
    space.filter(|s| crate::config::valid_chat_space(s))
}

fn welcome(space: Option<&str>) -> String {
    match printable_space(space) {
        Some(space) => format!(
            "Hello! I am kabar: I post Prometheus Alertmanager alerts. To send alerts here, add this space to kabar's config:\n```\nspaces:\n  oncall:\n    space: {space}\n```\nThen reload kabar (SIGHUP or POST /-/reload)."
        ),
        None => "Hello! I am kabar: I post Prometheus Alertmanager alerts. Add this space's id (spaces/…) under `spaces` in kabar's config to send alerts here.".to_owned(),
    }
}

fn help(settings: &ChatAppSettings) -> String {
    let mut text = "I am kabar. I post Prometheus Alertmanager alerts here, one thread per alert: the firing card, reminders while it fires, and the resolve (the card turns green).".to_owned();
    text.push_str("\n*Acknowledge* tells the space you are on it and stops the alert's reminders.");
    if settings.alertmanager.is_some() && !settings.silence_durations.is_empty() {
        text.push_str("\n*Silence* creates a silence in Alertmanager for exactly this alert's labels, for the time on the button.");
    }
    if !settings.allowed_domains.is_empty() {
        text.push_str(&format!(
            "\nButtons work for people from {}.",
            settings.allowed_domains.join(", ")
        ));
    }
    text.push_str("\nI do not read messages; there is nothing to ask me.");
    text
}

/// The answer to a click the card cannot show (no card is known for it).
pub(crate) fn text_answer(shape: Shape, text: &str) -> Value {
    event::new_message(shape, text)
}
