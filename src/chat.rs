//! The Google Chat incoming-webhook client: one POST per message, and every way it can fail
//! sorted into "retry" or "give up". It must not decide what to do next, nor carry the URL.

use std::time::Duration;

use crate::secret::{Secret, scrub};

/// How much of Chat's answer is read. Its real answers are a few hundred bytes; a broken
/// or hostile server sending 100 MB, or a body that never ends, must not grow memory or
/// hold the space's sender.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Sent with a thread key so Chat replies in that thread, or starts it.
pub(crate) const REPLY_OPTION: &str = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD";

/// The failure reasons of `kabar_messages_failed_total`, after Alertmanager's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureClass {
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
    pub(crate) const ALL: [FailureClass; 6] = [
        FailureClass::RateLimited,
        FailureClass::ServerError,
        FailureClass::ClientError,
        FailureClass::AuthError,
        FailureClass::Timeout,
        FailureClass::Network,
    ];

    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) fn is_permanent(self) -> bool {
        matches!(self, FailureClass::ClientError | FailureClass::AuthError)
    }

    pub(crate) fn of_status(status: u16) -> FailureClass {
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
pub(crate) struct SendFailure {
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
pub(crate) struct Accepted {
    /// `spaces/S/threads/T`, when Chat said.
    pub thread_name: Option<String>,
    /// `spaces/S/messages/M`, when Chat said (`kabar send-test` reports it).
    pub message_name: Option<String>,
}

#[derive(Clone, Debug)]
pub(crate) struct ChatClient {
    http: reqwest::Client,
    /// Kept only to scrub it (it may hold a password) from transport errors.
    proxy: Option<Secret>,
}

impl ChatClient {
    /// A client that sends through `proxy` when given; otherwise reqwest's default applies:
    /// HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY from the environment.
    pub(crate) fn with_proxy(
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

    /// The HTTP client (timeouts, proxy, user agent), which app mode shares.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Posts one message body. `threaded` adds the reply option that makes Chat honour the
    /// body's `thread.threadKey`.
    pub(crate) async fn post(
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
        let text = read_capped(response)
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
            detail: error_detail(status, &text, &secret_refs),
        })
    }
}

/// The body, up to `MAX_RESPONSE_BYTES`; the rest is never read (the connection is then
/// closed rather than reused).
async fn read_capped(mut response: reqwest::Response) -> Result<String, reqwest::Error> {
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_RESPONSE_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// What is kept of an error answer: scrubbed before it is summarised (a cut must never
/// leave part of a secret behind) and after (JSON decoding may have turned an escaped
/// secret into a plain one), on one line of printable text.
pub(crate) fn error_detail(status: u16, body: &str, secrets: &[&str]) -> String {
    let body = scrub(body, secrets);
    one_line(&scrub(&describe_error_body(status, &body), secrets))
}

/// Text from outside made safe for one log line, one stored column and one CLI cell:
/// line breaks, other control characters (ANSI escapes among them), line and paragraph
/// separators and bidirectional controls become spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            let invisible = matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}');
            if c.is_control() || invisible { ' ' } else { c }
        })
        .collect()
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

/// The webhook URL and everything in it that is a credential (key, token, path), as
/// configured and as the request URL built from it spells them: scrubbed from any text
/// we keep.
fn url_secrets(webhook: &Secret, request_url: &reqwest::Url) -> Vec<String> {
    let mut values = crate::secret::url_secret_parts(webhook.expose());
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
        detail: one_line(&scrub(&detail, secrets)),
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
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
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
pub(crate) fn backoff_delay(
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

    /// A one-connection HTTP server on 127.0.0.1: reads a request, hands its target
    /// (`/path?query`) to `answer`, and writes what that returns. The task's result is the
    /// number of body bytes it managed to write before the client went away.
    async fn serve_once(
        answer: impl FnOnce(String) -> (String, BodyPlan) + Send + 'static,
    ) -> (String, tokio::task::JoinHandle<u64>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.expect("read");
                if n == 0 {
                    return 0;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&request).into_owned();
            let target = text.split(' ').nth(1).unwrap_or("/").to_owned();
            let (head, plan) = answer(target);
            if socket.write_all(head.as_bytes()).await.is_err() {
                return 0;
            }
            let mut written = 0u64;
            match plan {
                BodyPlan::Fixed(body) => {
                    if socket.write_all(body.as_bytes()).await.is_ok() {
                        written = body.len() as u64;
                    }
                }
                BodyPlan::Repeat { chunk, total } => {
                    let chunk = vec![b'x'; chunk];
                    while total.is_none_or(|t| written < t) {
                        let framed = if total.is_none() {
                            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                            framed.extend_from_slice(&chunk);
                            framed.extend_from_slice(b"\r\n");
                            framed
                        } else {
                            chunk.clone()
                        };
                        if socket.write_all(&framed).await.is_err() {
                            break;
                        }
                        written += chunk.len() as u64;
                    }
                }
            }
            written
        });
        (base, task)
    }

    enum BodyPlan {
        Fixed(String),
        /// `chunk`-sized pieces up to `total` bytes (Content-Length), or chunked forever.
        Repeat {
            chunk: usize,
            total: Option<u64>,
        },
    }

    const REAL_LOOKING_QUERY: &str = "key=AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI&token=Zq8vT3xWm1LkP0aBcD9eFgHiJ2kLmNoPqRsTuVwXyZ%3D";

    #[tokio::test]
    async fn an_endless_or_huge_error_body_is_read_only_up_to_the_cap() {
        let client = ChatClient::with_proxy(Duration::from_secs(60), None).expect("client");
        for total in [None, Some(100 * 1024 * 1024)] {
            let (base, server) = serve_once(move |_| {
                let framing = match total {
                    None => "Transfer-Encoding: chunked".to_owned(),
                    Some(n) => format!("Content-Length: {n}"),
                };
                (
                    format!(
                        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n{framing}\r\n\r\n"
                    ),
                    BodyPlan::Repeat {
                        chunk: 64 * 1024,
                        total,
                    },
                )
            })
            .await;
            let webhook = Secret::new(format!("{base}/v1/spaces/S/messages?{REAL_LOOKING_QUERY}"));
            let sent =
                tokio::time::timeout(Duration::from_secs(10), client.post(&webhook, "{}", false))
                    .await
                    .expect("an endless body must not keep the sender reading (10 s guard)");
            let failure = sent.expect_err("a 400");
            assert_eq!(failure.status, Some(400), "{failure:?}");
            assert_eq!(failure.class, FailureClass::ClientError);
            assert!(failure.detail.len() < 1024, "{}", failure.detail.len());
            let written = tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("the server notices the client left")
                .expect("server task");
            assert!(
                written < 32 * 1024 * 1024,
                "the client kept reading: {written} bytes of {total:?}"
            );
        }
    }

    /// Builds an error body from the request target.
    type Echo = std::sync::Arc<dyn Fn(&str) -> String + Send + Sync>;

    #[tokio::test]
    async fn an_error_body_echoing_the_webhook_in_any_encoding_leaves_no_secret_in_the_detail() {
        let client = ChatClient::with_proxy(Duration::from_secs(10), None).expect("client");
        let key = "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI";
        let token_raw = "Zq8vT3xWm1LkP0aBcD9eFgHiJ2kLmNoPqRsTuVwXyZ%3D";
        let token = "Zq8vT3xWm1LkP0aBcD9eFgHiJ2kLmNoPqRsTuVwXyZ=";
        let echoes: Vec<Echo> = vec![
            // the whole target, as sent
            std::sync::Arc::new(|target: &str| format!("No such webhook {target}")),
            // the token alone, percent-encoded as in the URL, and in lower-case hex
            std::sync::Arc::new(move |_| format!("bad token {token_raw}")),
            std::sync::Arc::new(move |_| format!("bad token {}", token_raw.replace("%3D", "%3d"))),
            // decoded
            std::sync::Arc::new(move |_| format!("bad token {token}")),
            // HTML-escaped query
            std::sync::Arc::new(|target: &str| format!("<p>{}</p>", target.replace('&', "&amp;"))),
            // JSON-escaped `=` and `&`
            std::sync::Arc::new(|target: &str| {
                target.replace('=', "\\u003d").replace('&', "\\u0026")
            }),
            // the key alone
            std::sync::Arc::new(move |_| format!("API key {key} not valid")),
        ];
        for (i, echo) in echoes.into_iter().enumerate() {
            for json in [true, false] {
                let echo = echo.clone();
                let (base, _server) = serve_once(move |target| {
                    let text = echo(&target);
                    let body = if json {
                        serde_json::json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
                            "message": format!("{text}\n2026-12-01T00:00:00Z  INFO kabar: forged \u{1b}[31mred")}})
                        .to_string()
                    } else {
                        format!("{text}\r\n2026-12-01T00:00:00Z  INFO kabar: forged \u{1b}[31mred")
                    };
                    (
                        format!(
                            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        ),
                        BodyPlan::Fixed(body),
                    )
                })
                .await;
                let webhook = Secret::new(format!(
                    "{base}/v1/spaces/AAAA1234/messages?{REAL_LOOKING_QUERY}"
                ));
                let failure = client.post(&webhook, "{}", true).await.expect_err("a 403");
                let detail = &failure.detail;
                for secret in [
                    key,
                    "Zq8vT3xWm1LkP0aBcD9eFgHiJ2kLmNoPqRsTuVwXyZ",
                    "/v1/spaces/AAAA1234/messages",
                ] {
                    assert!(!detail.contains(secret), "echo {i} (json {json}): {detail}");
                }
                assert!(
                    !detail.chars().any(|c| c.is_control()),
                    "echo {i} (json {json}): control characters in {detail:?}"
                );
                assert!(detail.starts_with("HTTP 403"), "{detail}");
            }
        }
    }
}
