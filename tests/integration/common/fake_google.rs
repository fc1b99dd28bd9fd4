//! A fake of the two Google servers app mode talks to, on 127.0.0.1, following
//! shared/reference/google-chat-app.md: the OAuth token endpoint (JWT-bearer grant, the
//! RS256 assertion verified with the test key's public half: iss, scope, aud, exp) and the
//! Chat API's spaces.messages.create / patch (bearer check with 401 on a stale token,
//! messageId and requestId semantics with 409 ALREADY_EXISTS, updateMask, one write per
//! second per space shared by creates and edits, Google's error bodies).
//!
//! The service-account key is generated at test time (`TestKey::generate`); no key is
//! committed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;

pub const CLIENT_EMAIL: &str = "kabar-test@kabar-test.iam.gserviceaccount.com";
pub const CHAT_BOT_SCOPE: &str = "https://www.googleapis.com/auth/chat.bot";

/// A service-account key made for one test: the key file JSON and the public half.
pub struct TestKey {
    pub json: String,
    pub pem: String,
    public: Vec<u8>,
}

impl TestKey {
    /// A fresh 2048-bit RSA key (a test key: generated now, never committed).
    pub fn generate(token_uri: &str) -> TestKey {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("generate a test RSA key");
        let der = pair.as_der().expect("PKCS#8 of the test key");
        let body = STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        let json = json!({
            "type": "service_account",
            "project_id": "kabar-test",
            "private_key_id": "0123456789abcdef0123456789abcdef01234567",
            "private_key": pem,
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "token_uri": token_uri,
            "universe_domain": "googleapis.com",
        })
        .to_string();
        TestKey {
            json,
            pem,
            public: pair.public_key().as_ref().to_vec(),
        }
    }
}

/// How the token endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TokenMode {
    Normal,
    /// 503 with an OAuth error body.
    Down,
    /// 400 invalid_grant: the key was deleted or revoked.
    Revoked,
}

/// A message in the fake space.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    pub name: String,
    pub client_id: Option<String>,
    pub thread_key: Option<String>,
    pub thread_name: String,
    pub body: Value,
    pub edits: u32,
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub status: u16,
    pub body: Value,
}

struct GoogleState {
    public_key: Vec<u8>,
    token_uri: String,
    token_mode: TokenMode,
    token_lifetime: Duration,
    tokens: HashMap<String, Instant>,
    tokens_issued: usize,
    assertion_errors: Vec<String>,
    assertions: Vec<String>,
    messages: HashMap<String, Vec<ChatMessage>>,
    request_ids: HashMap<(String, String), String>,
    remember_request_ids: bool,
    buckets: HashMap<String, (f64, Instant)>,
    write_times: HashMap<String, Vec<Instant>>,
    lose_answers: usize,
    lose_for: Duration,
    seen: Vec<Seen>,
    next_id: u64,
}

struct Shared {
    state: Mutex<GoogleState>,
    changed: Notify,
}

/// The fake token endpoint and Chat API, one server; stops when dropped.
pub struct FakeGoogle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    pub key: TestKey,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGoogle {
    pub async fn start() -> FakeGoogle {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake Google: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake Google: local address");
        let token_uri = format!("http://{addr}/token");
        let key = TestKey::generate(&token_uri);
        let shared = Arc::new(Shared {
            state: Mutex::new(GoogleState {
                public_key: key.public.clone(),
                token_uri,
                token_mode: TokenMode::Normal,
                token_lifetime: Duration::from_secs(3600),
                tokens: HashMap::new(),
                tokens_issued: 0,
                assertion_errors: Vec::new(),
                assertions: Vec::new(),
                messages: HashMap::new(),
                request_ids: HashMap::new(),
                remember_request_ids: true,
                buckets: HashMap::new(),
                write_times: HashMap::new(),
                lose_answers: 0,
                lose_for: Duration::ZERO,
                seen: Vec::new(),
                next_id: 1,
            }),
            changed: Notify::new(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGoogle {
            shared,
            addr,
            key,
            task,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GoogleState> {
        self.shared.state.lock().expect("fake Google state")
    }

    /// The Chat API base for `chat_app.api_url`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes the key file into `dir` and returns its path.
    pub fn write_key(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("service-account.json");
        std::fs::write(&path, &self.key.json).expect("write the test key file");
        path
    }

    pub fn set_token_mode(&self, mode: TokenMode) {
        self.state().token_mode = mode;
    }

    /// Makes every token issued so far stale (as if Google had revoked or expired it).
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for expiry in self.state().tokens.values_mut() {
            *expiry = now;
        }
    }

    pub fn tokens_issued(&self) -> usize {
        self.state().tokens_issued
    }

    /// Every token issued and every assertion received (and its signature), for the log
    /// scanner.
    pub fn secrets(&self) -> Vec<String> {
        let state = self.state();
        let mut all: Vec<String> = state.tokens.keys().cloned().collect();
        for assertion in &state.assertions {
            all.push(assertion.clone());
            all.extend(assertion.rsplit('.').next().map(str::to_owned));
        }
        all
    }

    pub fn assertion_errors(&self) -> Vec<String> {
        self.state().assertion_errors.clone()
    }

    /// The next `n` creates are made but answered only after `delay` (past kabar's
    /// request timeout): the answer is lost, the message exists.
    pub fn lose_next_answers(&self, n: usize, delay: Duration) {
        let mut state = self.state();
        state.lose_answers = n;
        state.lose_for = delay;
    }

    /// Whether repeats of a requestId return the first message (true, Chat's documented
    /// behaviour) or are judged by messageId alone (false: 409 ALREADY_EXISTS).
    pub fn remember_request_ids(&self, remember: bool) {
        self.state().remember_request_ids = remember;
    }

    /// Removes a message, as a user deleting it would.
    pub fn delete_message(&self, space: &str, name: &str) {
        if let Some(list) = self.state().messages.get_mut(space) {
            list.retain(|m| m.name != name);
        }
    }

    pub fn messages(&self, space: &str) -> Vec<ChatMessage> {
        self.state()
            .messages
            .get(space)
            .cloned()
            .unwrap_or_default()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }

    /// When each accepted write (create or patch) of `space` happened.
    pub fn write_times(&self, space: &str) -> Vec<Instant> {
        self.state()
            .write_times
            .get(space)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `check` holds over the state, or panics after `timeout` with `what`.
    pub async fn wait_until<F: Fn(&FakeGoogle) -> bool>(
        &self,
        what: &str,
        timeout: Duration,
        check: F,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if check(self) {
                return;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "fake Google: {what} did not happen within {timeout:?}; saw {:#?}",
                self.seen()
                    .iter()
                    .map(|s| format!("{} {} {}", s.method, s.path, s.status))
                    .collect::<Vec<_>>()
            );
            let _ = tokio::time::timeout(
                (deadline - now).min(Duration::from_millis(100)),
                self.shared.changed.notified(),
            )
            .await;
        }
    }
}

fn google_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json; charset=UTF-8")],
        json!({"error": {"code": status.as_u16(), "message": message, "status": code}}).to_string(),
    )
        .into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [("content-type", "application/json; charset=UTF-8")],
        json!({"error": error, "error_description": description}).to_string(),
    )
        .into_response()
}

fn query_of(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = query_of(&uri);
    let (response, delay) = {
        let mut state = shared.state.lock().expect("fake Google state");
        let (response, delay) = if path == "/token" && method == Method::POST {
            (token(&mut state, &body), Duration::ZERO)
        } else {
            chat(&mut state, &method, &path, &query, &headers, &body)
        };
        state.seen.push(Seen {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            status: response.status().as_u16(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        (response, delay)
    };
    shared.changed.notify_waiters();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    response
}

/// The JWT-bearer grant: the form, then the assertion's signature and claims.
fn token(state: &mut GoogleState, body: &[u8]) -> Response {
    match state.token_mode {
        TokenMode::Down => {
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "The service is currently unavailable.",
            );
        }
        TokenMode::Revoked => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Invalid JWT Signature.",
            );
        }
        TokenMode::Normal => {}
    }
    let form: HashMap<String, String> = String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid grant_type.",
        );
    }
    let assertion = form.get("assertion").cloned().unwrap_or_default();
    state.assertions.push(assertion.clone());
    if let Err(why) = verify_assertion(state, &assertion) {
        state.assertion_errors.push(why.clone());
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &why);
    }
    state.tokens_issued += 1;
    let token = format!(
        "ya29.fake-{}-{:016x}",
        state.tokens_issued,
        fastrand::u64(..)
    );
    state
        .tokens
        .insert(token.clone(), Instant::now() + state.token_lifetime);
    (
        [("content-type", "application/json; charset=utf-8")],
        json!({"access_token": token, "expires_in": state.token_lifetime.as_secs(),
               "token_type": "Bearer", "scope": CHAT_BOT_SCOPE})
        .to_string(),
    )
        .into_response()
}

fn segment(text: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| "Invalid JWT: not base64url".to_owned())
}

fn verify_assertion(state: &GoogleState, assertion: &str) -> Result<(), String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("Invalid JWT: not three segments".to_owned());
    };
    let header: Value = serde_json::from_slice(&segment(header)?)
        .map_err(|_| "Invalid JWT: header is not JSON".to_owned())?;
    if header["alg"] != "RS256" {
        return Err("Invalid JWT: alg is not RS256".to_owned());
    }
    let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &state.public_key);
    let signed = &assertion[..parts[0].len() + 1 + parts[1].len()];
    public
        .verify(signed.as_bytes(), &segment(signature)?)
        .map_err(|_| "Invalid JWT Signature.".to_owned())?;
    let claims: Value = serde_json::from_slice(&segment(claims)?)
        .map_err(|_| "Invalid JWT: claims are not JSON".to_owned())?;
    if claims["iss"] != CLIENT_EMAIL {
        return Err("Invalid JWT: iss is not the service account".to_owned());
    }
    let scopes = claims["scope"].as_str().unwrap_or("");
    if !scopes.split(' ').any(|s| s == CHAT_BOT_SCOPE) {
        return Err("Invalid OAuth scope or ID token audience provided.".to_owned());
    }
    let aud = claims["aud"].as_str().unwrap_or("");
    if aud != state.token_uri && aud != "https://oauth2.googleapis.com/token" {
        return Err("Invalid JWT: aud is not the token endpoint".to_owned());
    }
    let now = jiff::Timestamp::now().as_second();
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap_or(0),
        claims["exp"].as_i64().unwrap_or(0),
    );
    if exp <= now || iat > now + 60 || exp - iat > 3600 {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values and use a clock with skew to account for clock differences between systems.".to_owned());
    }
    Ok(())
}

const MESSAGE_FIELDS: [&str; 9] = [
    "text",
    "cardsV2",
    "thread",
    "fallbackText",
    "accessoryWidgets",
    "markupSyntax",
    "privateMessageViewer",
    "attachment",
    "name",
];

fn message_json(space: &str, m: &ChatMessage) -> Value {
    let mut out = m.body.clone();
    out["name"] = json!(m.name);
    out["sender"] = json!({"name": "users/114022495153014004089", "type": "BOT"});
    out["createTime"] = json!("2026-11-28T01:00:00.123456Z");
    out["thread"] = json!({"name": m.thread_name, "threadKey": m.thread_key});
    out["space"] = json!({"name": space});
    if let Some(id) = &m.client_id {
        out["clientAssignedMessageId"] = json!(id);
    }
    if m.edits > 0 {
        out["lastUpdateTime"] = json!("2026-11-28T01:05:00.123456Z");
    }
    out
}

fn chat(
    state: &mut GoogleState,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> (Response, Duration) {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let valid = state
        .tokens
        .get(bearer)
        .is_some_and(|expiry| Instant::now() < *expiry);
    if !valid {
        return (
            google_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            ),
            Duration::ZERO,
        );
    }
    let rest = path.strip_prefix("/v1/spaces/").unwrap_or("");
    let parts: Vec<&str> = rest.split('/').collect();
    let (space, message) = match (method, parts.as_slice()) {
        (&Method::POST, [id, "messages"]) => (format!("spaces/{id}"), None),
        (&Method::PATCH, [id, "messages", m]) => (format!("spaces/{id}"), Some((*m).to_owned())),
        _ => {
            return (
                google_error(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    "Requested entity was not found.",
                ),
                Duration::ZERO,
            );
        }
    };
    // One write per second per space, creates and edits alike (no bursts).
    let now = Instant::now();
    let (tokens, updated) = state.buckets.entry(space.clone()).or_insert((1.0, now));
    *tokens = (*tokens + now.saturating_duration_since(*updated).as_secs_f64()).min(1.0);
    *updated = now;
    if *tokens < 1.0 - 1e-9 {
        return (
            google_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
            ),
            Duration::ZERO,
        );
    }
    *tokens -= 1.0;
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => Value::Object(o),
        _ => {
            return (
                google_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "Invalid JSON payload received.",
                ),
                Duration::ZERO,
            );
        }
    };
    if let Some(unknown) = parsed
        .as_object()
        .and_then(|o| o.keys().find(|k| !MESSAGE_FIELDS.contains(&k.as_str())))
    {
        return (
            google_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                &format!(
                    "Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."
                ),
            ),
            Duration::ZERO,
        );
    }
    let answer = match message {
        None => create(state, &space, query, parsed),
        Some(id) => patch(state, &space, &id, query, parsed),
    };
    if answer.0.status().is_success() {
        state.write_times.entry(space).or_default().push(now);
    }
    answer
}

fn create(
    state: &mut GoogleState,
    space: &str,
    query: &HashMap<String, String>,
    body: Value,
) -> (Response, Duration) {
    let message_id = query.get("messageId").cloned();
    if let Some(id) = &message_id {
        let valid = id.len() <= 63
            && id.starts_with("client-")
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return (
                google_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "Invalid custom message id.",
                ),
                Duration::ZERO,
            );
        }
    }
    let remembered = query
        .get("requestId")
        .filter(|_| state.remember_request_ids)
        .and_then(|r| {
            state
                .request_ids
                .get(&(space.to_owned(), r.clone()))
                .cloned()
        });
    let id = state.next_id;
    let list = state.messages.entry(space.to_owned()).or_default();
    if let Some(name) = remembered
        && let Some(existing) = list.iter().find(|m| m.name == name)
    {
        return (
            axum::Json(message_json(space, existing)).into_response(),
            Duration::ZERO,
        );
    }
    if let Some(client) = &message_id
        && list.iter().any(|m| m.client_id.as_ref() == Some(client))
    {
        return (
            google_error(
                StatusCode::CONFLICT,
                "ALREADY_EXISTS",
                "Message with the given ID already exists.",
            ),
            Duration::ZERO,
        );
    }
    let thread_key = body["thread"]["threadKey"].as_str().map(str::to_owned);
    let joins = query.get("messageReplyOption").map(String::as_str)
        == Some("REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD");
    let existing_thread = thread_key.as_ref().filter(|_| joins).and_then(|key| {
        list.iter()
            .find(|m| m.thread_key.as_ref() == Some(key))
            .map(|m| m.thread_name.clone())
    });
    let system = format!("m{id:06}.m{id:06}");
    let message = ChatMessage {
        name: format!("{space}/messages/{system}"),
        client_id: message_id,
        thread_key: thread_key.clone(),
        thread_name: existing_thread.unwrap_or_else(|| format!("{space}/threads/t{id:06}")),
        body,
        edits: 0,
    };
    let answer = message_json(space, &message);
    let name = message.name.clone();
    list.push(message);
    state.next_id += 1;
    if let Some(request_id) = query.get("requestId") {
        state
            .request_ids
            .insert((space.to_owned(), request_id.clone()), name);
    }
    let delay = if state.lose_answers > 0 {
        state.lose_answers -= 1;
        state.lose_for
    } else {
        Duration::ZERO
    };
    (axum::Json(answer).into_response(), delay)
}

fn patch(
    state: &mut GoogleState,
    space: &str,
    id: &str,
    query: &HashMap<String, String>,
    body: Value,
) -> (Response, Duration) {
    let mask = query.get("updateMask").cloned().unwrap_or_default();
    let paths: Vec<&str> = mask
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    const PATHS: [&str; 8] = [
        "text",
        "cards_v2",
        "cardsV2",
        "cards",
        "attachment",
        "accessory_widgets",
        "accessoryWidgets",
        "*",
    ];
    if paths.is_empty() || paths.iter().any(|p| !PATHS.contains(p)) {
        return (
            google_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "Invalid update mask.",
            ),
            Duration::ZERO,
        );
    }
    let name = format!("{space}/messages/{id}");
    let list = state.messages.entry(space.to_owned()).or_default();
    let Some(message) = list
        .iter_mut()
        .find(|m| m.name == name || m.client_id.as_deref() == Some(id))
    else {
        return (
            google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Message not found."),
            Duration::ZERO,
        );
    };
    for path in paths {
        let field = match path {
            "cards_v2" | "cardsV2" => "cardsV2",
            "accessory_widgets" | "accessoryWidgets" => "accessoryWidgets",
            other => other,
        };
        if field == "*" {
            message.body = body.clone();
        } else if let Some(value) = body.get(field) {
            message.body[field] = value.clone();
        } else if let Some(object) = message.body.as_object_mut() {
            object.remove(field);
        }
    }
    if let Some(syntax) = body.get("markupSyntax") {
        message.body["markupSyntax"] = syntax.clone();
    }
    message.edits += 1;
    let answer = message_json(space, message);
    (axum::Json(answer).into_response(), Duration::ZERO)
}
