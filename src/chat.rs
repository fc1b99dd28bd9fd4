//! The Google Chat incoming-webhook client: one POST per message, and a classification of
//! every way it can fail into "retry" or "give up". No error it returns carries the URL.

use std::time::Duration;

use crate::secret::{Secret, scrub};

/// Sent with a thread key so Chat replies in that thread, or starts it.
pub const REPLY_OPTION: &str = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD";

/// The failure reasons of `kabar_messages_failed_total`, after Alertmanager's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// 429: Chat's per-space write quota.
    RateLimited,
    /// 5xx.
    ServerError,
    /// 400, 404 and other 4xx: the request itself is wrong.
    ClientError,
    /// 401, 403: the webhook was revoked or its token is wrong.
    AuthError,
    Timeout,
    /// Connection refused or reset, DNS, TLS.
    Network,
}

impl FailureClass {
    pub const ALL: [FailureClass; 6] = [
        FailureClass::RateLimited,
        FailureClass::ServerError,
        FailureClass::ClientError,
        FailureClass::AuthError,
        FailureClass::Timeout,
        FailureClass::Network,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::RateLimited => "rateLimited",
            FailureClass::ServerError => "serverError",
            FailureClass::ClientError => "clientError",
            FailureClass::AuthError => "authError",
            FailureClass::Timeout => "timeout",
            FailureClass::Network => "network",
        }
    }

    /// Sending the same request again cannot succeed.
    pub fn is_permanent(self) -> bool {
        matches!(self, FailureClass::ClientError | FailureClass::AuthError)
    }

    pub fn of_status(status: u16) -> FailureClass {
        match status {
            429 => FailureClass::RateLimited,
            408 => FailureClass::Timeout,
            401 | 403 => FailureClass::AuthError,
            500..=599 => FailureClass::ServerError,
            _ => FailureClass::ClientError,
        }
    }
}

/// Why a send failed, safe to log and store.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{detail}")]
pub struct SendFailure {
    pub class: FailureClass,
    pub status: Option<u16>,
    /// The server's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
    /// Status and Google's error status/message, or the transport error; never the URL.
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ChatClientError {
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// What Chat answered for an accepted message.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// `spaces/S/threads/T`, when Chat said.
    pub thread_name: Option<String>,
    /// `spaces/S/messages/M`, when Chat said (`kabar send-test` reports it).
    pub message_name: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ChatClient {
    http: reqwest::Client,
    /// Kept only to scrub it (it may hold a password) from transport errors.
    proxy: Option<Secret>,
}

impl ChatClient {
    pub fn new(timeout: Duration) -> Result<ChatClient, ChatClientError> {
        ChatClient::with_proxy(timeout, None)
    }

    /// A client that sends through `proxy` when given; otherwise reqwest's default applies:
    /// HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY from the environment.
    pub fn with_proxy(
        timeout: Duration,
        proxy: Option<&Secret>,
    ) -> Result<ChatClient, ChatClientError> {
        let mut builder = reqwest::Client::builder();
        if let Some(proxy) = proxy {
            // The explicit setting wins over the environment for every Chat request.
            let explicit = reqwest::Proxy::all(proxy.expose()).map_err(|e| {
                ChatClientError::Build(scrub(
                    &format!("invalid delivery.proxy_url: {}", e.without_url()),
                    &[proxy.expose()],
                ))
            })?;
            builder = builder.proxy(explicit);
        }
        let http = builder
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            // A redirect would turn the POST into something else; Chat never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kabar/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ChatClientError::Build(scrub(&e.without_url().to_string(), &[])))?;
        Ok(ChatClient {
            http,
            proxy: proxy.cloned(),
        })
    }

    /// Posts one message body. `threaded` adds the reply option that makes Chat honour the
    /// body's `thread.threadKey`.
    pub async fn post(
        &self,
        webhook: &Secret,
        body: &str,
        threaded: bool,
    ) -> Result<Accepted, SendFailure> {
        let url = webhook_request_url(webhook, threaded).ok_or_else(|| SendFailure {
            class: FailureClass::ClientError,
            status: None,
            retry_after: None,
            detail: "the webhook URL is not a valid URL".to_owned(),
        })?;
        let mut secrets = url_secrets(webhook, &url);
        if let Some(proxy) = &self.proxy {
            secrets.extend(proxy_secrets(proxy));
        }
        let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let response = self
            .http
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/json; charset=UTF-8",
            )
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| transport_failure(e, &secret_refs))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = response
            .text()
            .await
            .map_err(|e| transport_failure(e, &secret_refs))?;
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
        Err(SendFailure {
            class: FailureClass::of_status(status),
            status: Some(status),
            retry_after,
            detail: scrub(&describe_error_body(status, &text), &secret_refs),
        })
    }
}

fn webhook_request_url(webhook: &Secret, threaded: bool) -> Option<reqwest::Url> {
    let mut url = reqwest::Url::parse(webhook.expose()).ok()?;
    if threaded {
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "messageReplyOption")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .append_pair("messageReplyOption", REPLY_OPTION);
    }
    Some(url)
}

/// The webhook URL and its query values (key, token), taken from the request URL built
/// from it: scrubbed from any text we keep.
fn url_secrets(webhook: &Secret, request_url: &reqwest::Url) -> Vec<String> {
    let mut values = vec![webhook.expose().to_owned()];
    values.extend(request_url.query_pairs().map(|(_, v)| v.into_owned()));
    values.extend(request_url.query().map(str::to_owned));
    values
}

/// The proxy URL and its password, scrubbed like the webhook's credentials.
fn proxy_secrets(proxy: &Secret) -> Vec<String> {
    let mut values = vec![proxy.expose().to_owned()];
    if let Ok(url) = reqwest::Url::parse(proxy.expose()) {
        values.extend(url.password().map(str::to_owned));
    }
    values
}

fn transport_failure(error: reqwest::Error, secrets: &[&str]) -> SendFailure {
    let class = if error.is_timeout() {
        FailureClass::Timeout
    } else {
        FailureClass::Network
    };
    let error = error.without_url();
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    SendFailure {
        class,
        status: None,
        retry_after: None,
        detail: scrub(&detail, secrets),
    }
}

/// `HTTP 429 RESOURCE_EXHAUSTED: message` from Google's error format, else a short excerpt.
fn describe_error_body(status: u16, body: &str) -> String {
    let parsed = serde_json::from_str::<serde_json::Value>(body).ok();
    let google = parsed.as_ref().and_then(|v| v.get("error"));
    match google {
        Some(error) => {
            let code = error["status"].as_str().unwrap_or("");
            let message: String = error["message"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect();
            format!("HTTP {status} {code}: {message}")
                .trim_end_matches([' ', ':'])
                .to_owned()
        }
        None if body.trim().is_empty() => format!("HTTP {status}"),
        None => {
            let excerpt: String = body.chars().filter(|c| !c.is_control()).take(120).collect();
            format!("HTTP {status} (not a JSON error): {excerpt}")
        }
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.as_second() - jiff::Timestamp::now().as_second();
    Some(Duration::from_secs(wait.max(0) as u64))
}

/// The wait before retry `attempt` (1 for the first retry): exponential from `initial`,
/// capped at `max`, with full jitter above the floor; a server's `Retry-After` wins, kept
/// within [initial, max]. `jitter` is a uniform random number in [0, 1).
pub fn backoff_delay(
    attempt: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    if let Some(wait) = retry_after {
        return wait.clamp(initial, max);
    }
    let exponent = attempt.saturating_sub(1).min(32);
    let cap = initial.saturating_mul(1u32 << exponent.min(31)).min(max);
    initial + (cap - initial).mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_like_chat_documents() {
        assert_eq!(FailureClass::of_status(429), FailureClass::RateLimited);
        assert_eq!(FailureClass::of_status(500), FailureClass::ServerError);
        assert_eq!(FailureClass::of_status(503), FailureClass::ServerError);
        assert_eq!(FailureClass::of_status(504), FailureClass::ServerError);
        assert_eq!(FailureClass::of_status(400), FailureClass::ClientError);
        assert_eq!(FailureClass::of_status(404), FailureClass::ClientError);
        assert_eq!(FailureClass::of_status(401), FailureClass::AuthError);
        assert_eq!(FailureClass::of_status(403), FailureClass::AuthError);
        assert_eq!(FailureClass::of_status(408), FailureClass::Timeout);
        assert_eq!(FailureClass::of_status(302), FailureClass::ClientError);
        for retryable in [429, 500, 502, 503, 504, 408] {
            assert!(
                !FailureClass::of_status(retryable).is_permanent(),
                "{retryable}"
            );
        }
        for permanent in [400, 401, 403, 404] {
            assert!(
                FailureClass::of_status(permanent).is_permanent(),
                "{permanent}"
            );
        }
        assert!(!FailureClass::Timeout.is_permanent() && !FailureClass::Network.is_permanent());
    }

    #[test]
    fn backoff_grows_exponentially_within_bounds() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(
            backoff_delay(1, initial, max, None, 0.999),
            Duration::from_secs(1)
        );
        assert_eq!(
            backoff_delay(3, initial, max, None, 1.0),
            Duration::from_secs(4)
        );
        assert_eq!(
            backoff_delay(3, initial, max, None, 0.0),
            Duration::from_secs(1)
        );
        assert_eq!(backoff_delay(10, initial, max, None, 1.0), max);
        assert_eq!(backoff_delay(u32::MAX, initial, max, None, 1.0), max);
        let mid = backoff_delay(4, initial, max, None, 0.5);
        assert_eq!(mid, Duration::from_millis(4500));
    }

    #[test]
    fn retry_after_is_honoured_but_clamped() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(
            backoff_delay(1, initial, max, Some(Duration::from_secs(7)), 0.0),
            Duration::from_secs(7)
        );
        assert_eq!(
            backoff_delay(1, initial, max, Some(Duration::from_secs(3600)), 0.0),
            max
        );
        assert_eq!(
            backoff_delay(1, initial, max, Some(Duration::ZERO), 0.0),
            initial
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn google_error_bodies_are_summarised() {
        let body = r#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(
            describe_error_body(429, body),
            "HTTP 429 RESOURCE_EXHAUSTED: Resource has been exhausted"
        );
        assert_eq!(
            describe_error_body(404, "<html>nope</html>"),
            "HTTP 404 (not a JSON error): <html>nope</html>"
        );
        assert_eq!(describe_error_body(503, ""), "HTTP 503");
    }

    #[test]
    fn threaded_requests_carry_the_reply_option_once() {
        let url = Secret::new(
            "https://chat.googleapis.com/v1/spaces/S/messages?key=k&token=t&messageReplyOption=OLD",
        );
        let built = webhook_request_url(&url, true).expect("url");
        assert_eq!(
            built.as_str(),
            "https://chat.googleapis.com/v1/spaces/S/messages?key=k&token=t&messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
        );
        let plain = webhook_request_url(
            &Secret::new("https://chat.googleapis.com/v1/spaces/S/messages?key=k"),
            false,
        )
        .expect("url");
        assert_eq!(plain.query(), Some("key=k"));
    }
}
