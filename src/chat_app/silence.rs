//! The Alertmanager API v2 client of app mode's Silence button: creates one silence and says
//! why it could not, in a line an on-call engineer reads. It must not let a credential out.
//!
//! `POST {url}/api/v2/silences` with equality matchers (Alertmanager's OpenAPI spec,
//! `postableSilence`), answered `200 {"silenceID": …}`. Alertmanager refuses a silence
//! whose matchers all match the empty string ("at least one matcher must not match the
//! empty string"), so a request whose every label value is empty is refused here, before
//! anything is sent; an empty value beside others is kept: it means "the label is absent",
//! which is exactly the alert's labels. Errors carry the host and port, never the path,
//! userinfo or credentials, and Alertmanager's own error text only scrubbed of them.

use std::time::Duration;

use serde::Serialize;

use crate::chat::one_line;
use crate::config::Auth;
use crate::secret::scrub;

/// How long Alertmanager has to answer, body included.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer read: a silence id is tiny, an error a line.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The most of Alertmanager's error text shown on a card.
const MAX_DETAIL_CHARS: usize = 200;
/// The most matchers one silence may carry.
pub(crate) const MAX_MATCHERS: usize = 100;
/// Secrets shorter than this cannot be scrubbed from free text without redacting ordinary
/// words (`secret::scrub` skips them): with one, Alertmanager's error text is left out.
const MIN_SCRUBBABLE_CHARS: usize = 4;

/// Where Alertmanager's API is and how kabar authenticates to it.
#[derive(Debug, Clone)]
pub(crate) struct AlertmanagerApi {
    /// Alertmanager's external URL, with its route prefix if it has one
    /// (`http://am:9093/alertmanager`).
    pub url: reqwest::Url,
    pub auth: Option<Auth>,
}

/// A silence to create: equality matchers on the alert's labels, for a time.
#[derive(Debug, Clone)]
pub(crate) struct SilenceRequest {
    pub matchers: Vec<(String, String)>,
    pub starts_at: jiff::Timestamp,
    pub ends_at: jiff::Timestamp,
    pub created_by: String,
    pub comment: String,
}

/// The silence Alertmanager created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CreatedSilence {
    pub id: String,
    /// The silence in Alertmanager's UI: `{url}/#/silences/{id}`, without userinfo.
    pub url: String,
}

/// Why no silence was created. Its Display is a line for the card.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SilenceError {
    #[error("cannot create the silence: {0}")]
    Invalid(&'static str),
    #[error("cannot create the silence: {count} labels, at most {MAX_MATCHERS} can be matched")]
    TooManyMatchers { count: usize },
    #[error("cannot reach Alertmanager at {target}")]
    Unreachable { target: String },
    #[error("Alertmanager did not answer within {}s", .timeout.as_secs())]
    Timeout { timeout: Duration },
    #[error("Alertmanager answered {status}{}", detail_suffix(.detail))]
    Refused { status: u16, detail: String },
    #[error("Alertmanager answered {status}{}", detail_suffix(.detail))]
    ServerError { status: u16, detail: String },
    #[error("Alertmanager's answer is not a created silence: {0}")]
    BadAnswer(&'static str),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl SilenceError {
    /// Every reason, so metrics can start each at 0.
    pub(crate) const REASONS: [&'static str; 6] = [
        "invalid_request",
        "unreachable",
        "timeout",
        "refused",
        "server_error",
        "bad_answer",
    ];

    /// A bounded label for metrics and logs.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            SilenceError::Invalid(_) | SilenceError::TooManyMatchers { .. } => "invalid_request",
            SilenceError::Unreachable { .. } => "unreachable",
            SilenceError::Timeout { .. } => "timeout",
            SilenceError::Refused { .. } => "refused",
            SilenceError::ServerError { .. } => "server_error",
            SilenceError::BadAnswer(_) => "bad_answer",
        }
    }
}

/// `postableSilence` of Alertmanager's OpenAPI spec (v2).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PostableSilence<'a> {
    matchers: Vec<Matcher<'a>>,
    starts_at: String,
    ends_at: String,
    created_by: &'a str,
    comment: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Matcher<'a> {
    name: &'a str,
    value: &'a str,
    is_regex: bool,
    is_equal: bool,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    #[serde(rename = "silenceID")]
    silence_id: String,
}

impl AlertmanagerApi {
    /// Creates the silence `request` describes; the answer within [`TIMEOUT`].
    pub(crate) async fn create_silence(
        &self,
        http: &reqwest::Client,
        request: &SilenceRequest,
    ) -> Result<CreatedSilence, SilenceError> {
        self.create_silence_within(http, request, TIMEOUT).await
    }

    async fn create_silence_within(
        &self,
        http: &reqwest::Client,
        request: &SilenceRequest,
        timeout: Duration,
    ) -> Result<CreatedSilence, SilenceError> {
        let body = postable(request)?;
        let mut builder = http
            .post(self.endpoint(&["api", "v2", "silences"]))
            .timeout(timeout)
            .json(&body);
        builder = match &self.auth {
            Some(Auth::Bearer(token)) => builder.bearer_auth(token.expose()),
            Some(Auth::Basic { username, password }) => {
                builder.basic_auth(username, Some(password.expose()))
            }
            None => builder,
        };
        let exchange = async {
            let response = builder
                .send()
                .await
                .map_err(|e| self.transport(&e, timeout))?;
            let status = response.status().as_u16();
            let answer = read_capped(response)
                .await
                .map_err(|e| self.transport(&e, timeout))?;
            Ok::<_, SilenceError>((status, answer))
        };
        // reqwest's timeout covers the body too; this one also bounds a slow DNS lookup.
        let (status, answer) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| SilenceError::Timeout { timeout })??;
        match status {
            200..=299 => self.created(&answer),
            400..=499 => Err(SilenceError::Refused {
                status,
                detail: self.detail(&answer),
            }),
            500..=599 => Err(SilenceError::ServerError {
                status,
                detail: self.detail(&answer),
            }),
            _ => Err(SilenceError::BadAnswer("an unexpected HTTP status")),
        }
    }

    /// `url` with `segments` appended to its path (after any route prefix), without
    /// query or fragment. reqwest moves userinfo into an Authorization header.
    fn endpoint(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.url.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// The silence in Alertmanager's UI, with no credentials in it.
    fn ui_link(&self, id: &str) -> String {
        let mut url = self.endpoint(&[]);
        // Both only fail for URLs that cannot have userinfo, which then have none.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let base = url.as_str().trim_end_matches('/');
        format!("{base}/#/silences/{id}")
    }

    /// host:port, for an error line: not the path, never userinfo.
    fn target(&self) -> String {
        let host = self.url.host_str().unwrap_or("?");
        match self.url.port_or_known_default() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    fn transport(&self, error: &reqwest::Error, timeout: Duration) -> SilenceError {
        if error.is_timeout() {
            SilenceError::Timeout { timeout }
        } else {
            SilenceError::Unreachable {
                target: self.target(),
            }
        }
    }

    fn created(&self, answer: &[u8]) -> Result<CreatedSilence, SilenceError> {
        if answer.len() > MAX_ANSWER_BYTES {
            return Err(SilenceError::BadAnswer("the answer is too large"));
        }
        let created: Created = serde_json::from_slice(answer)
            .map_err(|_| SilenceError::BadAnswer("no silenceID in it"))?;
        // Alertmanager's ids are UUIDs; the id goes into a link on the card.
        let id = created.silence_id;
        let plausible = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !plausible {
            return Err(SilenceError::BadAnswer("the silenceID is not an id"));
        }
        let url = self.ui_link(&id);
        Ok(CreatedSilence { id, url })
    }

    /// Alertmanager's error text (a JSON string, or go-swagger's `{"message": …}`), on one
    /// line, scrubbed of every credential kabar holds for it, at most 200 characters.
    fn detail(&self, answer: &[u8]) -> String {
        let secrets = self.secrets();
        if secrets
            .iter()
            .any(|s| !s.is_empty() && s.chars().count() < MIN_SCRUBBABLE_CHARS)
        {
            return String::new();
        }
        let text = String::from_utf8_lossy(&answer[..answer.len().min(MAX_ANSWER_BYTES)]);
        let text = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::String(message)) => message,
            Ok(serde_json::Value::Object(object)) => match object.get("message") {
                Some(serde_json::Value::String(message)) => message.clone(),
                _ => text.into_owned(),
            },
            _ => text.into_owned(),
        };
        let known: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let clean = one_line(&scrub(&text, &known));
        let clean = clean.split_whitespace().collect::<Vec<_>>().join(" ");
        if clean.chars().count() <= MAX_DETAIL_CHARS {
            clean
        } else {
            let cut: String = clean.chars().take(MAX_DETAIL_CHARS).collect();
            format!("{cut}…")
        }
    }

    /// Every credential an answer could echo: the token, the password, the Basic
    /// credentials as sent, and the URL's userinfo password.
    fn secrets(&self) -> Vec<String> {
        use base64::Engine as _;
        let mut secrets = Vec::new();
        match &self.auth {
            Some(Auth::Bearer(token)) => secrets.push(token.expose().to_owned()),
            Some(Auth::Basic { username, password }) => {
                secrets.push(password.expose().to_owned());
                let pair = format!("{username}:{}", password.expose());
                secrets.push(base64::engine::general_purpose::STANDARD.encode(pair));
            }
            None => {}
        }
        if let Some(password) = self.url.password() {
            secrets.push(password.to_owned());
            let decoded = percent_encoding::percent_decode_str(password).decode_utf8_lossy();
            let pair = format!("{}:{decoded}", self.url.username());
            secrets.push(base64::engine::general_purpose::STANDARD.encode(pair));
        }
        secrets
    }
}

/// The request as Alertmanager's API takes it, or why it must not be sent.
fn postable(request: &SilenceRequest) -> Result<PostableSilence<'_>, SilenceError> {
    if request.matchers.is_empty() {
        return Err(SilenceError::Invalid("the alert has no labels to match"));
    }
    if request.matchers.len() > MAX_MATCHERS {
        return Err(SilenceError::TooManyMatchers {
            count: request.matchers.len(),
        });
    }
    if request.matchers.iter().all(|(_, value)| value.is_empty()) {
        return Err(SilenceError::Invalid(
            "every label value is empty, and Alertmanager needs one that is not",
        ));
    }
    if request.ends_at <= request.starts_at {
        return Err(SilenceError::Invalid("it would end before it starts"));
    }
    Ok(PostableSilence {
        matchers: request
            .matchers
            .iter()
            .map(|(name, value)| Matcher {
                name,
                value,
                is_regex: false,
                is_equal: true,
            })
            .collect(),
        starts_at: request.starts_at.to_string(),
        ends_at: request.ends_at.to_string(),
        created_by: &request.created_by,
        comment: &request.comment,
    })
}

/// The answer's body, at most one byte past [`MAX_ANSWER_BYTES`] (so "too large" shows).
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = (MAX_ANSWER_BYTES + 1).saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() > MAX_ANSWER_BYTES {
            break;
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What the fake Alertmanager received: the request line, headers (lower-cased
    /// names) and the body.
    #[derive(Debug, Default, Clone)]
    struct Seen {
        line: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    enum Answer {
        Status(u16, String),
        Hang,
    }

    /// A one-request HTTP/1.1 server on 127.0.0.1 that answers `answer`; the request it
    /// saw comes out of the join handle.
    async fn fake(answer: Answer) -> (String, tokio::task::JoinHandle<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut raw = Vec::new();
            let mut buf = [0_u8; 4096];
            let head_end = loop {
                let n = socket.read(&mut buf).await.expect("read");
                assert!(n > 0, "the client closed before a whole request");
                raw.extend_from_slice(&buf[..n]);
                if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
            };
            let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
            let mut lines = head.split("\r\n");
            let line = lines.next().unwrap_or_default().to_owned();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let length: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            while raw.len() < head_end + length {
                let n = socket.read(&mut buf).await.expect("read body");
                assert!(n > 0, "the client closed mid-body");
                raw.extend_from_slice(&buf[..n]);
            }
            let seen = Seen {
                line,
                headers,
                body: raw[head_end..head_end + length].to_vec(),
            };
            match answer {
                Answer::Status(status, body) => {
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                }
                Answer::Hang => tokio::time::sleep(Duration::from_secs(5)).await,
            }
            seen
        });
        (format!("http://{addr}"), handle)
    }

    fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
    }

    fn api(url: &str, auth: Option<Auth>) -> AlertmanagerApi {
        AlertmanagerApi {
            url: reqwest::Url::parse(url).expect("url"),
            auth,
        }
    }

    fn request() -> SilenceRequest {
        let starts_at = jiff::Timestamp::now();
        SilenceRequest {
            matchers: vec![
                ("alertname".into(), "DiskFull".into()),
                ("instance".into(), "db-1:9100".into()),
            ],
            starts_at,
            ends_at: starts_at + jiff::SignedDuration::from_hours(2),
            created_by: "ada@example.com".into(),
            comment: "Silenced from Google Chat".into(),
        }
    }

    const ID: &str = "6ec2a6c1-1f8c-4b5c-a06e-2a1f1c1d2e3f";

    fn ok_answer() -> Answer {
        Answer::Status(200, format!(r#"{{"silenceID":"{ID}"}}"#))
    }

    #[tokio::test]
    async fn posts_alertmanagers_postable_silence_and_links_the_ui() {
        let (url, seen) = fake(ok_answer()).await;
        let request = request();
        let created = api(&url, None)
            .create_silence(&http(), &request)
            .await
            .expect("created");
        assert_eq!(created.id, ID);
        assert_eq!(created.url, format!("{url}/#/silences/{ID}"));
        let seen = seen.await.expect("fake");
        assert_eq!(seen.line, "POST /api/v2/silences HTTP/1.1");
        assert_eq!(seen.header("content-type"), Some("application/json"));
        assert_eq!(seen.header("authorization"), None);
        let body: serde_json::Value = serde_json::from_slice(&seen.body).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "matchers": [
                    {"name": "alertname", "value": "DiskFull", "isRegex": false, "isEqual": true},
                    {"name": "instance", "value": "db-1:9100", "isRegex": false, "isEqual": true},
                ],
                "startsAt": request.starts_at.to_string(),
                "endsAt": request.ends_at.to_string(),
                "createdBy": "ada@example.com",
                "comment": "Silenced from Google Chat",
            })
        );
    }

    #[tokio::test]
    async fn a_route_prefix_is_kept_in_the_request_and_the_link() {
        for suffix in ["/alertmanager", "/alertmanager/"] {
            let (url, seen) = fake(ok_answer()).await;
            let created = api(&format!("{url}{suffix}?x=1#frag"), None)
                .create_silence(&http(), &request())
                .await
                .expect("created");
            assert_eq!(created.url, format!("{url}/alertmanager/#/silences/{ID}"));
            let seen = seen.await.expect("fake");
            assert_eq!(seen.line, "POST /alertmanager/api/v2/silences HTTP/1.1");
        }
    }

    #[tokio::test]
    async fn bearer_and_basic_credentials_are_sent() {
        let (url, seen) = fake(ok_answer()).await;
        let bearer = Some(Auth::Bearer(Secret::new("tok-3f9a")));
        api(&url, bearer)
            .create_silence(&http(), &request())
            .await
            .expect("created");
        let seen = seen.await.expect("fake");
        assert_eq!(seen.header("authorization"), Some("Bearer tok-3f9a"));

        let (url, seen) = fake(ok_answer()).await;
        let basic = Some(Auth::Basic {
            username: "kabar".into(),
            password: Secret::new("pw-77c1"),
        });
        api(&url, basic)
            .create_silence(&http(), &request())
            .await
            .expect("created");
        let seen = seen.await.expect("fake");
        // base64("kabar:pw-77c1")
        assert_eq!(
            seen.header("authorization"),
            Some("Basic a2FiYXI6cHctNzdjMQ==")
        );
    }

    #[tokio::test]
    async fn userinfo_in_the_url_authenticates_but_stays_out_of_link_and_errors() {
        let (url, seen) = fake(Answer::Status(
            401,
            r#""bad credentials a2FiYXI6dXJsLXNlY3JldA== for url-secret""#.into(),
        ))
        .await;
        let with_userinfo = url.replace("http://", "http://kabar:url-secret@");
        let error = api(&with_userinfo, None)
            .create_silence(&http(), &request())
            .await
            .expect_err("refused");
        let seen = seen.await.expect("fake");
        assert_eq!(
            seen.header("authorization"),
            Some("Basic a2FiYXI6dXJsLXNlY3JldA==")
        );
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("url-secret"), "{shown}");
        assert!(!shown.contains("a2FiYXI6dXJsLXNlY3JldA=="), "{shown}");
        assert_eq!(error.reason(), "refused");
        let link = api(&with_userinfo, None).ui_link(ID);
        assert_eq!(link, format!("{url}/#/silences/{ID}"));
    }

    #[tokio::test]
    async fn a_refusal_shows_alertmanagers_text_scrubbed_on_one_bounded_line() {
        let cases = [
            (Auth::Bearer(Secret::new("tok-3f9a")), vec!["tok-3f9a"]),
            (
                Auth::Basic {
                    username: "kabar".into(),
                    password: Secret::new("pw-77c1"),
                },
                vec!["pw-77c1", "a2FiYXI6cHctNzdjMQ=="],
            ),
        ];
        for (auth, secrets) in cases {
            // Echoed back as Alertmanager's JSON string, with a terminal escape and a line
            // break in it, and far too long for a card.
            let echo = format!(
                "\"bad matcher \\u001b[31m\\n{} {}\"",
                secrets.join(" "),
                "x".repeat(400)
            );
            let (url, _seen) = fake(Answer::Status(400, echo)).await;
            let error = api(&url, Some(auth))
                .create_silence(&http(), &request())
                .await
                .expect_err("refused");
            let line = error.to_string();
            assert!(
                line.starts_with("Alertmanager answered 400: bad matcher "),
                "{line}"
            );
            assert!(line.contains("[redacted]"), "{line}");
            for secret in &secrets {
                assert!(!line.contains(secret), "{secret} in {line}");
                assert!(!format!("{error:?}").contains(secret));
            }
            assert!(!line.chars().any(char::is_control), "{line:?}");
            let detail = line.trim_start_matches("Alertmanager answered 400: ");
            assert!(detail.chars().count() <= MAX_DETAIL_CHARS + 1, "{line}");
            assert!(line.ends_with('…'), "{line}");
            assert_eq!(error.reason(), "refused");
        }
    }

    #[tokio::test]
    async fn with_a_secret_too_short_to_scrub_the_text_is_left_out() {
        let (url, _seen) = fake(Answer::Status(400, r#""bad credentials abc""#.into())).await;
        let auth = Some(Auth::Bearer(Secret::new("abc")));
        let error = api(&url, auth)
            .create_silence(&http(), &request())
            .await
            .expect_err("refused");
        assert_eq!(error.to_string(), "Alertmanager answered 400");
    }

    #[tokio::test]
    async fn server_errors_and_go_swagger_messages() {
        let (url, _seen) = fake(Answer::Status(503, String::new())).await;
        let error = api(&url, None)
            .create_silence(&http(), &request())
            .await
            .expect_err("503");
        assert_eq!(error.to_string(), "Alertmanager answered 503");
        assert_eq!(error.reason(), "server_error");

        let (url, _seen) = fake(Answer::Status(
            422,
            r#"{"code":602,"message":"createdBy in body is required"}"#.into(),
        ))
        .await;
        let error = api(&url, None)
            .create_silence(&http(), &request())
            .await
            .expect_err("422");
        assert_eq!(
            error.to_string(),
            "Alertmanager answered 422: createdBy in body is required"
        );
    }

    #[tokio::test]
    async fn answers_that_are_not_a_silence_are_bad_answers() {
        for body in [
            "<html>proxy login</html>".to_owned(),
            r#"{"silenceID":""}"#.to_owned(),
            r#"{"silenceID":"../../evil?x=<b>"}"#.to_owned(),
            format!(r#"{{"silenceID":"{ID}","pad":"{}"}}"#, "p".repeat(70_000)),
        ] {
            let (url, _seen) = fake(Answer::Status(200, body)).await;
            let error = api(&url, None)
                .create_silence(&http(), &request())
                .await
                .expect_err("bad answer");
            assert_eq!(error.reason(), "bad_answer", "{error}");
        }
    }

    #[tokio::test]
    async fn a_silent_alertmanager_times_out_and_a_closed_port_is_unreachable() {
        let (url, _seen) = fake(Answer::Hang).await;
        let started = std::time::Instant::now();
        let error = api(&url, None)
            .create_silence_within(&http(), &request(), Duration::from_secs(1))
            .await
            .expect_err("timeout");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(error.to_string(), "Alertmanager did not answer within 1s");
        assert_eq!(error.reason(), "timeout");
        assert_eq!(
            SilenceError::Timeout { timeout: TIMEOUT }.to_string(),
            "Alertmanager did not answer within 10s"
        );

        // Bound but never listening: refused, and no parallel test's server can take it.
        let held = tokio::net::TcpSocket::new_v4().expect("a socket");
        held.bind("127.0.0.1:0".parse().expect("an address"))
            .expect("bind");
        let port = held.local_addr().expect("addr").port();
        let closed = format!("http://kabar:pw-77c1@127.0.0.1:{port}/am/secret-path");
        let error = api(&closed, None)
            .create_silence(&http(), &request())
            .await
            .expect_err("unreachable");
        assert_eq!(
            error.to_string(),
            format!("cannot reach Alertmanager at 127.0.0.1:{port}")
        );
        assert_eq!(error.reason(), "unreachable");
    }

    #[tokio::test]
    async fn requests_alertmanager_would_refuse_are_not_sent() {
        // Nothing listens here: a request that went out would be "unreachable".
        let nowhere = api("http://127.0.0.1:9", None);
        let mut many = request();
        many.matchers = (0..101).map(|i| (format!("l{i}"), "v".into())).collect();
        let mut empty = request();
        empty.matchers = vec![("alertname".into(), String::new())];
        let mut none = request();
        none.matchers.clear();
        let mut backwards = request();
        backwards.ends_at = backwards.starts_at;
        for (request, says) in [
            (many, "101 labels, at most 100"),
            (empty, "every label value is empty"),
            (none, "no labels"),
            (backwards, "end before it starts"),
        ] {
            let error = nowhere
                .create_silence(&http(), &request)
                .await
                .expect_err("refused before sending");
            assert_eq!(error.reason(), "invalid_request", "{error}");
            assert!(error.to_string().contains(says), "{error}");
        }
        let mut hundred = request();
        hundred.matchers = (0..100).map(|i| (format!("l{i}"), String::new())).collect();
        hundred.matchers[99].1 = "v".into();
        assert!(
            postable(&hundred).is_ok(),
            "100 matchers, one non-empty: sent"
        );
    }

    /// The client against the real Alertmanager (Debian's `prometheus-alertmanager`),
    /// served under a route prefix as behind a path-routing proxy.
    mod real {
        use super::*;
        use std::process::{Child, Command, Stdio};

        const PREFIX: &str = "/am";

        struct Running {
            child: Child,
            base: String,
            _dir: tempfile::TempDir,
        }

        impl Drop for Running {
            fn drop(&mut self) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }

        fn required() -> bool {
            ["CI", "KABAR_REQUIRE_E2E"].iter().any(|name| {
                std::env::var(name)
                    .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true"))
                    .unwrap_or(false)
            })
        }

        #[expect(clippy::print_stderr, reason = "a skipped test says so loudly")]
        fn binary() -> Option<std::path::PathBuf> {
            let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
                .map(|path| std::env::split_paths(&path).collect())
                .unwrap_or_default();
            dirs.push("/usr/bin".into());
            let found = ["prometheus-alertmanager", "alertmanager"]
                .iter()
                .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
                .find(|path| path.is_file());
            let hint = "apt-get install -y --no-install-recommends prometheus-alertmanager";
            if found.is_none() {
                assert!(
                    !required(),
                    "prometheus-alertmanager is not installed: {hint}"
                );
                eprintln!("SKIPPED: the real-Alertmanager silence test needs it: {hint}");
            }
            found
        }

        async fn start(bin: &std::path::Path, http: &reqwest::Client) -> Running {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = dir.path().join("am.yml");
            std::fs::write(
                &config,
                r#"{"route": {"receiver": "none"}, "receivers": [{"name": "none"}]}"#,
            )
            .expect("write the Alertmanager config");
            let mut last = String::new();
            for _ in 0..3 {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port();
                let base = format!("http://127.0.0.1:{port}");
                let log = dir.path().join("am.log");
                let out = std::fs::File::create(&log).expect("log file");
                let child = Command::new(bin)
                    .arg(format!("--config.file={}", config.display()))
                    .arg(format!(
                        "--storage.path={}",
                        dir.path().join("data").display()
                    ))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .arg(format!("--web.external-url={base}{PREFIX}"))
                    .arg(format!("--web.route-prefix={PREFIX}"))
                    .arg("--cluster.listen-address=")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::from(out))
                    .spawn()
                    .expect("start Alertmanager");
                let mut running = Running {
                    child,
                    base,
                    _dir: tempfile::tempdir().expect("tempdir"),
                };
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while std::time::Instant::now() < deadline {
                    if let Ok(Some(_)) = running.child.try_wait() {
                        break;
                    }
                    let ready = http
                        .get(format!("{}{PREFIX}/-/ready", running.base))
                        .send()
                        .await;
                    if ready.is_ok_and(|r| r.status().is_success()) {
                        running._dir = dir;
                        return running;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                last = std::fs::read_to_string(&log).unwrap_or_default();
                if !last.contains("address already in use") {
                    break;
                }
            }
            panic!("Alertmanager did not become ready:\n{last}");
        }

        #[tokio::test]
        async fn the_real_alertmanager_creates_the_silence_and_refuses_what_kabar_refuses() {
            let Some(bin) = binary() else { return };
            let http = http();
            let am = start(&bin, &http).await;
            let api = api(&format!("{}{PREFIX}", am.base), None);

            // An empty value beside a non-empty one is taken: "the label is absent".
            let mut request = request();
            request.matchers.push(("team".into(), String::new()));
            let created = api
                .create_silence(&http, &request)
                .await
                .expect("Alertmanager creates the silence");
            assert_eq!(
                created.url,
                format!("{}{PREFIX}/#/silences/{}", am.base, created.id)
            );
            let stored: serde_json::Value = http
                .get(format!("{}{PREFIX}/api/v2/silence/{}", am.base, created.id))
                .send()
                .await
                .expect("get the silence")
                .json()
                .await
                .expect("a silence");
            assert_eq!(stored["status"]["state"], "active", "{stored}");
            assert_eq!(stored["createdBy"], "ada@example.com");
            assert_eq!(stored["comment"], "Silenced from Google Chat");
            let matchers: Vec<(String, String, bool, bool)> = stored["matchers"]
                .as_array()
                .expect("matchers")
                .iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or_default().to_owned(),
                        m["value"].as_str().unwrap_or_default().to_owned(),
                        m["isRegex"].as_bool().unwrap_or(true),
                        m["isEqual"].as_bool().unwrap_or(false),
                    )
                })
                .collect();
            let mut expected: Vec<(String, String, bool, bool)> = request
                .matchers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone(), false, true))
                .collect();
            let mut matchers = matchers;
            matchers.sort();
            expected.sort();
            assert_eq!(matchers, expected);
            let ui = http
                .get(format!("{}{PREFIX}/", am.base))
                .send()
                .await
                .expect("the UI the link points into");
            assert!(ui.status().is_success(), "{}", ui.status());

            // What kabar does not send, Alertmanager refuses: every value empty.
            let raw = |body: serde_json::Value| {
                http.post(format!("{}{PREFIX}/api/v2/silences", am.base))
                    .json(&body)
                    .send()
            };
            let now = jiff::Timestamp::now();
            let later = now + jiff::SignedDuration::from_hours(1);
            let all_empty = raw(serde_json::json!({
                "matchers": [{"name": "team", "value": "", "isRegex": false, "isEqual": true}],
                "startsAt": now.to_string(), "endsAt": later.to_string(),
                "createdBy": "x", "comment": "x",
            }))
            .await
            .expect("post");
            assert_eq!(all_empty.status().as_u16(), 400);
            let text = all_empty.text().await.expect("text");
            assert!(text.contains("must not match the empty string"), "{text}");
            // A refusal kabar cannot foresee reads as Alertmanager's own words.
            let mut past = request;
            past.starts_at = now - jiff::SignedDuration::from_hours(2);
            past.ends_at = now - jiff::SignedDuration::from_hours(1);
            let error = api
                .create_silence(&http, &past)
                .await
                .expect_err("an end in the past");
            assert_eq!(error.reason(), "refused");
            assert_eq!(
                error.to_string(),
                "Alertmanager answered 400: Failed to create silence: end time can't be in the past"
            );
        }
    }
}
