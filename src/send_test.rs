//! `kabar send-test --space NAME`: one clearly marked test message to a space, now, through
//! the same templates, Chat limits, client and scrubbing as real delivery, and Chat's answer
//! in plain words. It answers the operator's first question, "can kabar post there?",
//! without waiting for an alert. It never prints the webhook URL: only its host.

use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::json;

use crate::chat::{Accepted, ChatClient, ChatClientError, FailureClass, SendFailure};
use crate::config::{Space, Target, format_duration};
use crate::payload::{Notification, PayloadError};
use crate::plan::{MessageKind, Subject};
use crate::render::RenderInput;
use crate::runtime::{LoadError, Runtime};
use crate::secret::{Secret, scrub};

#[derive(Debug, thiserror::Error)]
pub enum SendTestError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("no space {name:?} in this config; configured spaces: {configured}")]
    UnknownSpace { name: String, configured: String },
    #[error(transparent)]
    Client(#[from] ChatClientError),
    #[error("cannot build the test message: {0}")]
    Message(#[from] PayloadError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// Chat (or the way to it) said no; the text is what to tell the operator.
    #[error("not posted to {space}: {explanation}")]
    NotPosted { space: String, explanation: String },
}

/// Renders the test message for `space` and posts it (or, for a dry-run space, shows the
/// body it would post). Ok only when Chat accepted it.
pub fn run(config_path: &Path, space_name: &str) -> Result<String, SendTestError> {
    let runtime = Runtime::load(config_path)?;
    let config = &runtime.config;
    let Some(space) = config.spaces.get(space_name) else {
        return Err(SendTestError::UnknownSpace {
            name: space_name.to_owned(),
            configured: config.spaces.keys().cloned().collect::<Vec<_>>().join(", "),
        });
    };
    let notification = test_notification(space)?;
    let subject = Subject::Alert(0);
    let (message, failures) = runtime.renderer.render(&RenderInput {
        space,
        kind: MessageKind::Firing,
        subject: &subject,
        notification: &notification,
        // No thread key: the test opens a thread of its own, tied to no alert.
        thread_key: None,
        now: Timestamp::now(),
    });
    let mut out = String::new();
    for failure in failures {
        out.push_str(&format!(
            "warning: the space's template failed ({failure}); the built-in one was used, as real delivery would\n"
        ));
    }
    let url = match &space.target {
        Target::DryRun => {
            out.push_str(&format!(
                "{}: dry_run is set, nothing was posted. The body kabar would send:\n{}\n",
                space.name,
                pretty(&message.body)
            ));
            return Ok(out);
        }
        Target::App { space: chat_space } => {
            // The test message is a webhook test; app mode is seen working in the space
            // itself (kabar check validates the key, the token is fetched on first use).
            out.push_str(&format!(
                "{}: posts as the Chat app in {chat_space}; send-test only posts through webhooks, nothing was posted. The body kabar would send:\n{}\n",
                space.name,
                pretty(&crate::chat_app::app_body(&message.body, false))
            ));
            return Ok(out);
        }
        Target::Webhook(url) => url,
    };
    let host = space.target.describe();
    let timeout = config.delivery.request_timeout;
    let client = ChatClient::with_proxy(timeout, config.delivery.proxy_url.as_ref())?;
    let threads = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SendTestError::Runtime)?;
    let not_posted = |failure: &SendFailure| SendTestError::NotPosted {
        space: space.name.clone(),
        explanation: explain(failure, url, &host, timeout),
    };
    let answer = threads.block_on(client.post(url, &message.body, false));
    let accepted = match (answer, &message.fallback_body) {
        (Ok(accepted), _) => accepted,
        // As in delivery: a card Chat cannot take is sent once more as its text version.
        (Err(card_refused), Some(text)) if card_refused.status == Some(400) => {
            let text_answer = threads.block_on(client.post(url, text, false));
            let accepted = text_answer.map_err(|failure| not_posted(&failure))?;
            out.push_str(&format!(
                "warning: Chat refused the card ({}); the text version was accepted, as real delivery would fall back\n",
                clean(&card_refused.detail, url)
            ));
            accepted
        }
        (Err(failure), _) => return Err(not_posted(&failure)),
    };
    out.push_str(&accepted_line(&space.name, &accepted));
    Ok(out)
}

fn accepted_line(space: &str, accepted: &Accepted) -> String {
    match &accepted.message_name {
        Some(name) => format!(
            "posted to {space}: Chat accepted the message ({})\n",
            clean_name(name)
        ),
        None => format!("posted to {space}: Chat accepted the message\n"),
    }
}

/// One alert that says what it is; severity `test` so no `mentions` rule for real
/// severities pings anyone.
fn test_notification(space: &Space) -> Result<Notification, PayloadError> {
    let now = Timestamp::now();
    let payload = json!({
        "version": "4",
        "receiver": space.receivers.first().cloned().unwrap_or_else(|| space.name.clone()),
        "status": "firing",
        "groupKey": "{}:{alertname=\"KabarSendTest\"}",
        "groupLabels": {"alertname": "KabarSendTest"},
        "commonLabels": {"alertname": "KabarSendTest", "severity": "test"},
        "commonAnnotations": {},
        "externalURL": "",
        "truncatedAlerts": 0,
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "KabarSendTest", "severity": "test", "space": space.name},
            "annotations": {
                "summary": "Test message from kabar send-test: kabar can post to this space",
                "description": format!(
                    "Sent by `kabar send-test --space {}` at {now}. Nothing is firing; no action is needed.",
                    space.name
                ),
            },
            "startsAt": now.to_string(),
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "",
            "fingerprint": "0000000000000000",
        }],
    });
    Notification::parse(payload.to_string().as_bytes())
}

/// Chat's answer in plain words, with what to do about it.
fn explain(failure: &SendFailure, url: &Secret, host: &str, timeout: Duration) -> String {
    let detail = clean(&failure.detail, url);
    let answer = detail.strip_prefix("HTTP ").unwrap_or(&detail);
    match failure.status {
        Some(401 | 403) => format!(
            "Chat refused it: {answer}. The webhook was deleted or the app removed from the space, or the URL's token is wrong: create a new webhook in the space (Apps & integrations, Webhooks) and put its URL in webhook_url"
        ),
        Some(404) => format!(
            "Chat refused it: {answer}. Chat knows no such space or webhook (the space was deleted, or the URL's space id is wrong): create a new webhook in the space and put its URL in webhook_url"
        ),
        Some(400) => format!(
            "Chat refused it: {answer}. That is Chat's reason: \"API key not valid\" means the URL's key= is wrong (copy the whole URL again); anything else means Chat cannot take this message (check the space's templates with kabar render)"
        ),
        Some(429) => format!(
            "Chat refused it for now: {answer}. The space's write quota is used up (about one message per second per space, shared by everything that posts there): try again in a minute; real delivery waits and retries"
        ),
        Some(status) if status >= 500 => format!(
            "Chat failed: {answer}. A problem on Google's side: try again later; real delivery retries it"
        ),
        Some(_) => format!("Chat refused it: {answer}"),
        None if failure.class == FailureClass::Timeout => format!(
            "no answer from {host} within {} (delivery.request_timeout): {detail}. Check the network path to it (firewall, proxy)",
            format_duration(timeout)
        ),
        None => format!(
            "cannot reach {host}: {detail}. Check DNS, the firewall and the proxy (delivery.proxy_url or HTTPS_PROXY)"
        ),
    }
}

/// Text from the other side, once more without credentials and on one line with no
/// terminal control characters (a hostile answer must not drive the operator's terminal).
fn clean(text: &str, url: &Secret) -> String {
    let mut secrets = vec![url.expose().to_owned()];
    if let Ok(parsed) = reqwest::Url::parse(url.expose()) {
        secrets.extend(parsed.query_pairs().map(|(_, v)| v.into_owned()));
    }
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    scrub(text, &refs)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect()
}

/// Chat's message name is `spaces/S/messages/M`; anything else from a server is shown
/// only as far as it looks like one.
fn clean_name(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c))
        .take(200)
        .collect()
}

fn pretty(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(status: Option<u16>, class: FailureClass, detail: &str) -> SendFailure {
        SendFailure {
            class,
            status,
            retry_after: None,
            detail: detail.to_owned(),
        }
    }

    #[test]
    fn answers_are_explained_without_the_url_or_terminal_controls() {
        let url =
            Secret::new("https://chat.googleapis.com/v1/spaces/S/messages?key=k3y-1&token=t0k-2");
        let host = "webhook on chat.googleapis.com";
        let timeout = Duration::from_secs(10);
        let text = explain(
            &failure(
                Some(403),
                FailureClass::AuthError,
                "HTTP 403 PERMISSION_DENIED: no \u{1b}[31mred t0k-2",
            ),
            &url,
            host,
            timeout,
        );
        assert!(
            text.starts_with("Chat refused it: 403 PERMISSION_DENIED"),
            "{text}"
        );
        assert!(text.contains("create a new webhook"), "{text}");
        assert!(
            !text.contains('\u{1b}') && !text.contains("t0k-2"),
            "{text}"
        );
        let text = explain(
            &failure(None, FailureClass::Timeout, "operation timed out"),
            &url,
            host,
            timeout,
        );
        assert!(text.contains("within 10s"), "{text}");
        assert_eq!(
            clean_name("spaces/S/messages/M.1\u{1b}[0m"),
            "spaces/S/messages/M.10m"
        );
    }
}
