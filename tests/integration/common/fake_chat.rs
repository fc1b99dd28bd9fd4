//! A fake Google Chat incoming-webhook server for kabar's tests.
//!
//! It answers `POST /v1/spaces/{space}/messages?key=..&token=..` the way Chat's documented
//! webhook API does (see /work/shared/reference/google-chat-webhooks.md): Google-style JSON
//! errors, the 32,000-byte / 4,096-character limits, unknown-field rejection, per-space rate
//! limiting with 429 RESOURCE_EXHAUSTED, and threads keyed by `thread.threadKey` plus
//! `messageReplyOption`. On top of that, tests can inject failures (`fail_next`, `set_mode`,
//! `reject_when_text_contains`) and inspect everything that arrived.
//!
//! Where the real service's behaviour is not documented, the choice made here is stated in a
//! comment next to the code; the fake errs on the strict side so that a payload it accepts is
//! one Chat accepts too.
//!
//! Order in which a request is judged (first match answers):
//! 1. path not `/v1/spaces/{space}/messages` → HTML 404 (Chat's front end does this);
//! 2. a queued `fail_next` failure for the space, else the space's (or global) `Mode`;
//! 3. method, query parameters, `key` (400) and `token` (403);
//! 4. content type, body size, JSON shape and limits (400);
//! 5. `reject_when_text_contains` rules;
//! 6. thread resolution (`REPLY_MESSAGE_OR_FAIL` → 404);
//! 7. the rate limit (429), so only a request that would otherwise be accepted spends the
//!    allowance;
//! 8. accepted: recorded and answered 200.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// Chat's limit on the whole message (text plus cards), in bytes. The fake measures the
/// request body, which is the closest observable stand-in.
pub const BODY_LIMIT_BYTES: usize = 32_000;
/// Chat's limit on `text`, counted in characters (Unicode scalar values).
pub const TEXT_LIMIT_CHARS: usize = 4_096;
/// Chat's limit on `thread.threadKey`.
pub const THREAD_KEY_LIMIT_CHARS: usize = 4_000;
/// Chat shows at most this many widgets per card and silently ignores the rest.
pub const WIDGETS_SHOWN_PER_CARD: usize = 100;

const REPLY_FALLBACK: &str = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD";
const REPLY_OR_FAIL: &str = "REPLY_MESSAGE_OR_FAIL";
const REPLY_UNSPECIFIED: &str = "MESSAGE_REPLY_OPTION_UNSPECIFIED";

/// Query parameters the fake binds. Google APIs reject any other parameter with 400
/// ("Cannot bind query parameter"). `threadKey` is the deprecated query form of the key,
/// `messageId`/`requestId` are accepted and ignored (whether webhooks honour them is
/// unverified), the rest are Google's system parameters.
const KNOWN_QUERY_PARAMS: &[&str] = &[
    "key",
    "token",
    "messageReplyOption",
    "threadKey",
    "messageId",
    "requestId",
    "alt",
    "prettyPrint",
    "fields",
];

/// Top-level message fields a webhook may send. Everything else is rejected, including
/// output-only `Message` fields and snake_case spellings, so kabar cannot rely on anything
/// Chat might merely tolerate.
const MESSAGE_FIELDS: &[&str] = &[
    "text",
    "cardsV2",
    "cards",
    "fallbackText",
    "thread",
    "accessoryWidgets",
];
const THREAD_FIELDS: &[&str] = &["threadKey", "name"];
const CARD_WITH_ID_FIELDS: &[&str] = &["cardId", "card"];
const CARD_FIELDS: &[&str] = &[
    "header",
    "sections",
    "sectionDividerStyle",
    "cardActions",
    "name",
    "fixedFooter",
    "displayStyle",
    "peekCardHeader",
];
const CARD_HEADER_FIELDS: &[&str] = &["title", "subtitle", "imageType", "imageUrl", "imageAltText"];
const SECTION_FIELDS: &[&str] = &[
    "header",
    "widgets",
    "collapsible",
    "uncollapsibleWidgetsCount",
    "collapseControl",
];
/// A widget holds exactly one of these (the proto's `data` oneof). Their contents are not
/// checked: the fake validates the card skeleton, which is where builders go wrong.
const WIDGET_KINDS: &[&str] = &[
    "textParagraph",
    "image",
    "decoratedText",
    "buttonList",
    "textInput",
    "selectionInput",
    "dateTimePicker",
    "divider",
    "grid",
    "columns",
    "chipList",
    "carousel",
];
const WIDGET_EXTRA_FIELDS: &[&str] = &["horizontalAlignment"];

/// A way for a request to fail, used by [`FakeChat::fail_next`] and [`Mode::Fail`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A Google-style JSON error with this HTTP status. `retry_after` is sent verbatim as
    /// the `Retry-After` header (Chat's own 429s carry none; use this to test the header).
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    /// The HTML 404 page Google's front end serves for unknown paths.
    Html404,
    /// The request is read, then the TCP connection is reset (SO_LINGER 0) without any HTTP
    /// answer: the client sees a connection error, as when Chat's front end drops out.
    ResetConnection,
    /// This status with exactly this body (served as `text/plain` unless it parses as JSON):
    /// for error answers that echo parts of the request, however encoded.
    Body { status: u16, body: String },
}

impl Failure {
    /// A JSON error with `status` and no `Retry-After`.
    pub fn status(status: u16) -> Failure {
        Failure::Status {
            status,
            retry_after: None,
        }
    }

    /// Panics at configuration time, with the reason, on values that could not be sent,
    /// instead of failing obscurely inside the server task later.
    fn check(&self) {
        if let Failure::Body { status, .. } = self {
            check_status(*status);
        }
        if let Failure::Status {
            status,
            retry_after,
        } = self
        {
            check_status(*status);
            if let Some(value) = retry_after {
                assert!(
                    HeaderValue::from_str(value).is_ok(),
                    "fake Chat: Retry-After value {value:?} is not a valid header value"
                );
            }
        }
    }
}

/// How the fake treats requests to a space (or to every space) until changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    /// Behave like Chat.
    #[default]
    Normal,
    /// Fail every request this way.
    Fail(Failure),
    /// Answer only after `delay`. With `accept: true` the message is judged and, if valid,
    /// recorded before the delay: Chat created it even if the client gives up waiting (the
    /// "504 may mean it was created" case). With `accept: false` nothing is judged until the
    /// delay is over, and a client that disconnects first leaves no message behind (its
    /// request is recorded with status 0).
    Slow { delay: Duration, accept: bool },
}

/// A message Chat accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub space: String,
    /// `spaces/S/messages/M`: opaque, like Chat's names.
    pub name: String,
    /// `spaces/S/threads/T`.
    pub thread_name: String,
    /// The thread key as sent (body `thread.threadKey`, else the deprecated `threadKey` query
    /// parameter), even when Chat ignored it because no `messageReplyOption` was given.
    pub thread_key: Option<String>,
    /// True when this message started its thread.
    pub opened_thread: bool,
    /// The JSON body as sent.
    pub body: Value,
    pub text: Option<String>,
    /// When the fake accepted it.
    pub at: Instant,
    /// The `messageReplyOption` query parameter as sent.
    pub reply_option: Option<String>,
    /// Widgets beyond the first 100 of a card, summed over cards: Chat ignores them without
    /// an error, so a test can only see the loss here.
    pub ignored_widgets: usize,
}

/// Every string inside a JSON value, depth first.
pub fn json_strings(value: &Value) -> Vec<String> {
    fn collect(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            Value::Object(map) => map.values().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    collect(value, &mut out);
    out
}

impl Received {
    /// Everything of the message a reader could see: its text, its fallback text and every
    /// string of its cards, one per line.
    pub fn shown(&self) -> String {
        ["text", "fallbackText", "cardsV2"]
            .iter()
            .filter_map(|field| self.body.get(*field))
            .flat_map(json_strings)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One HTTP request, whatever became of it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// Empty when the path names no space.
    pub space: String,
    pub method: String,
    /// Path only: the query holds the secrets.
    pub path: String,
    /// The HTTP status answered, or 0 when no answer was delivered (connection reset by a
    /// `Failure::ResetConnection`, or the client went away during a `Mode::Slow` delay).
    pub status: u16,
    /// Google's status string for JSON errors (`RESOURCE_EXHAUSTED`, ...).
    pub error_status: Option<String>,
    /// The error message sent back, for diagnosing a test.
    pub error_message: Option<String>,
    /// When the request arrived (records are appended when the request completes).
    pub at: Instant,
    pub thread_key: Option<String>,
    pub text: Option<String>,
    pub reply_option: Option<String>,
    /// The created message's name when it was accepted.
    pub message_name: Option<String>,
}

/// A thread in a space, with its messages in order; the first one opened it.
#[derive(Debug, Clone)]
pub struct Thread {
    pub name: String,
    /// The key the thread can be replied to with; `None` when it was started by a message
    /// whose key Chat ignored (no `messageReplyOption`).
    pub thread_key: Option<String>,
    pub messages: Vec<Received>,
}

/// Handle to a running fake. Clones share the server; it stops when the last handle is
/// dropped or on [`FakeChat::shutdown`].
#[derive(Clone)]
pub struct FakeChat {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    // Dropping the sender (with the last handle) ends the server just as sending does.
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<ChatState>,
    /// Woken whenever a request is recorded, for the `wait_for_*` helpers.
    changed: Notify,
    started: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ChatState> {
        // A panicking test thread must not turn every later call into a poison panic that
        // hides the original failure.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct ChatState {
    rate_per_second: Option<f64>,
    rate_limit_retry_after: Option<String>,
    global_mode: Mode,
    space_modes: HashMap<String, Mode>,
    fail_next: HashMap<String, VecDeque<Failure>>,
    rejections: Vec<(String, u16)>,
    buckets: HashMap<String, Bucket>,
    secrets: Vec<String>,
    messages: Vec<Received>,
    requests: Vec<RequestRecord>,
    threads: Vec<ThreadState>,
    next_message: u64,
    next_thread: u64,
    /// Requests being handled right now, per space, and the most there ever were at once.
    in_flight: HashMap<String, usize>,
    max_in_flight: HashMap<String, usize>,
}

struct ThreadState {
    space: String,
    name: String,
    key: Option<String>,
    /// Indexes into `ChatState::messages`.
    messages: Vec<usize>,
}

/// Token bucket of capacity 1: one write per 1/rate seconds, no bursts, which is how Chat's
/// "1 request per second per space" behaves for a client that sends as fast as it can.
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn take(&mut self, rate: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(1.0);
        self.updated = now;
        // The epsilon keeps a client that waited exactly 1/rate from losing to float
        // rounding.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl FakeChat {
    /// Binds 127.0.0.1 on a free port and serves on the caller's tokio runtime.
    pub async fn start() -> FakeChat {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake Chat: cannot bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("fake Chat: bound listener has no local address");
        let shared = Arc::new(Shared {
            state: Mutex::new(ChatState {
                rate_per_second: Some(1.0),
                rate_limit_retry_after: None,
                global_mode: Mode::Normal,
                space_modes: HashMap::new(),
                fail_next: HashMap::new(),
                rejections: Vec::new(),
                buckets: HashMap::new(),
                secrets: Vec::new(),
                messages: Vec::new(),
                requests: Vec::new(),
                threads: Vec::new(),
                next_message: 1,
                next_thread: 1,
                in_flight: HashMap::new(),
                max_in_flight: HashMap::new(),
            }),
            changed: Notify::new(),
            started: Instant::now(),
        });
        let app = Router::new()
            .fallback(handle)
            // Far above Chat's 32,000 bytes so oversized bodies reach the handler and get
            // Chat's 400 rather than axum's 413.
            .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
            .with_state(shared.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(
                ResettableListener(listener),
                app.into_make_service_with_connect_info::<Connection>(),
            )
            .with_graceful_shutdown(async move {
                // Ok (shutdown called) and Err (last handle dropped) both mean stop.
                let _ = stop_rx.await;
            })
            .await;
            if let Err(err) = served {
                eprintln!("fake Chat: server on {addr} ended with an error: {err}");
            }
        });
        FakeChat {
            handle: Arc::new(Handle {
                shared,
                addr,
                stop: Mutex::new(Some(stop_tx)),
                task: Mutex::new(Some(task)),
            }),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.addr
    }

    /// `http://127.0.0.1:PORT`, for building malformed URLs in tests.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.handle.addr)
    }

    /// The webhook URL for `space`; its key and token are remembered for [`Self::secrets`].
    pub fn webhook_url(&self, space: &str) -> String {
        let (key, token) = (expected_key(space), expected_token(space));
        let url = format!(
            "{}/v1/spaces/{space}/messages?key={key}&token={token}",
            self.base_url()
        );
        let mut state = self.shared().lock();
        for secret in [key, token] {
            if !state.secrets.contains(&secret) {
                state.secrets.push(secret);
            }
        }
        url
    }

    /// Every key and token value handed out by [`Self::webhook_url`], so tests can assert
    /// none of them shows up in logs, metrics or error messages.
    pub fn secrets(&self) -> Vec<String> {
        self.shared().lock().secrets.clone()
    }

    /// Writes per second per space; `None` disables rate limiting. Default `Some(1.0)`.
    pub fn set_rate_limit(&self, per_second: Option<f64>) {
        if let Some(rate) = per_second {
            assert!(
                rate.is_finite() && rate > 0.0,
                "fake Chat: rate limit must be positive, got {rate}"
            );
        }
        self.shared().lock().rate_per_second = per_second;
    }

    /// Makes the rate limiter's own 429s carry `Retry-After: value` (`None`, the default,
    /// sends none, like Chat). Lets a test storm kabar with 429s that name a wait.
    pub fn set_rate_limit_retry_after(&self, value: Option<&str>) {
        if let Some(value) = value {
            assert!(
                HeaderValue::from_str(value).is_ok(),
                "fake Chat: Retry-After value {value:?} is not a valid header value"
            );
        }
        self.shared().lock().rate_limit_retry_after = value.map(str::to_owned);
    }

    /// Sets the mode of one space (`Some`) or the global mode (`None`). A space's own mode
    /// wins over the global one, including a space set back to `Mode::Normal`; use
    /// [`Self::reset_modes`] to drop every override.
    pub fn set_mode(&self, space: Option<&str>, mode: Mode) {
        if let Mode::Fail(failure) = &mode {
            failure.check();
        }
        let mut state = self.shared().lock();
        match space {
            Some(space) => {
                state.space_modes.insert(space.to_owned(), mode);
            }
            None => state.global_mode = mode,
        }
    }

    /// Every space back to `Mode::Normal`.
    pub fn reset_modes(&self) {
        let mut state = self.shared().lock();
        state.space_modes.clear();
        state.global_mode = Mode::Normal;
    }

    /// The next `n` requests to `space` fail with `failure` (queued after any failures
    /// already pending), whatever their content; later ones are judged normally. Forced
    /// failures do not spend the rate allowance.
    pub fn fail_next(&self, space: &str, n: usize, failure: Failure) {
        failure.check();
        let mut state = self.shared().lock();
        let queue = state.fail_next.entry(space.to_owned()).or_default();
        queue.extend(std::iter::repeat_n(failure, n));
    }

    /// Permanently rejects, with `status`, every otherwise valid message that has `needle` in
    /// any string of its body (text, card text, ...). Rules are checked in the order added.
    pub fn reject_when_text_contains(&self, needle: &str, status: u16) {
        check_status(status);
        self.shared()
            .lock()
            .rejections
            .push((needle.to_owned(), status));
    }

    /// The most requests to `space` the fake was handling at one moment.
    pub fn max_in_flight(&self, space: &str) -> usize {
        self.shared()
            .lock()
            .max_in_flight
            .get(space)
            .copied()
            .unwrap_or(0)
    }

    /// Requests to `space` being handled right now.
    pub fn in_flight(&self, space: &str) -> usize {
        self.shared()
            .lock()
            .in_flight
            .get(space)
            .copied()
            .unwrap_or(0)
    }

    /// Accepted messages of `space`, in acceptance order.
    pub fn messages(&self, space: &str) -> Vec<Received> {
        let state = self.shared().lock();
        state
            .messages
            .iter()
            .filter(|m| m.space == space)
            .cloned()
            .collect()
    }

    /// Accepted messages of every space, in acceptance order.
    pub fn all_messages(&self) -> Vec<Received> {
        self.shared().lock().messages.clone()
    }

    /// Every request in completion order (each carries its arrival time in `at`).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared().lock().requests.clone()
    }

    /// Requests to `space`, in completion order.
    pub fn requests_for(&self, space: &str) -> Vec<RequestRecord> {
        let state = self.shared().lock();
        state
            .requests
            .iter()
            .filter(|r| r.space == space)
            .cloned()
            .collect()
    }

    /// Threads of `space` in creation order.
    pub fn threads(&self, space: &str) -> Vec<Thread> {
        let state = self.shared().lock();
        state
            .threads
            .iter()
            .filter(|t| t.space == space)
            .map(|t| Thread {
                name: t.name.clone(),
                thread_key: t.key.clone(),
                messages: t
                    .messages
                    .iter()
                    .map(|&i| state.messages[i].clone())
                    .collect(),
            })
            .collect()
    }

    /// Waits until `space` holds at least `n` accepted messages and returns all of them.
    /// Panics after `timeout` with what did arrive (messages and requests), so a failing
    /// test says why.
    pub async fn wait_for_messages(
        &self,
        space: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<Received> {
        let waited = self
            .wait_until(timeout, |state| {
                let msgs: Vec<&Received> =
                    state.messages.iter().filter(|m| m.space == space).collect();
                (msgs.len() >= n).then(|| msgs.into_iter().cloned().collect())
            })
            .await;
        match waited {
            Some(msgs) => msgs,
            None => panic!(
                "fake Chat: expected at least {n} message(s) in space {space:?} within \
                 {timeout:?}\n{}",
                self.describe(space)
            ),
        }
    }

    /// Waits until at least `n` requests to `space` have completed (whatever their status)
    /// and returns all of them; panics like [`Self::wait_for_messages`].
    pub async fn wait_for_requests(
        &self,
        space: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<RequestRecord> {
        let waited = self
            .wait_until(timeout, |state| {
                let reqs: Vec<&RequestRecord> =
                    state.requests.iter().filter(|r| r.space == space).collect();
                (reqs.len() >= n).then(|| reqs.into_iter().cloned().collect())
            })
            .await;
        match waited {
            Some(reqs) => reqs,
            None => panic!(
                "fake Chat: expected at least {n} request(s) to space {space:?} within \
                 {timeout:?}\n{}",
                self.describe(space)
            ),
        }
    }

    /// A readable account of a space's messages and requests, for assertion messages.
    pub fn describe(&self, space: &str) -> String {
        let state = self.shared().lock();
        let started = self.shared().started;
        let mut out = String::new();
        let msgs: Vec<&Received> = state.messages.iter().filter(|m| m.space == space).collect();
        out.push_str(&format!("accepted messages ({}):\n", msgs.len()));
        for m in msgs {
            out.push_str(&format!(
                "  +{:.3}s {} thread={} key={:?} text={:?}\n",
                m.at.saturating_duration_since(started).as_secs_f64(),
                m.name,
                m.thread_name,
                m.thread_key,
                m.text.as_deref().map(|t| shorten(t, 120)),
            ));
        }
        let reqs: Vec<&RequestRecord> =
            state.requests.iter().filter(|r| r.space == space).collect();
        out.push_str(&format!(
            "requests ({}) [{} request(s) in all spaces]:\n",
            reqs.len(),
            state.requests.len()
        ));
        for r in reqs {
            out.push_str(&format!(
                "  +{:.3}s {} {} -> {} {} {:?} key={:?} text={:?}\n",
                r.at.saturating_duration_since(started).as_secs_f64(),
                r.method,
                r.path,
                r.status,
                r.error_status.as_deref().unwrap_or(""),
                r.error_message.as_deref().unwrap_or(""),
                r.thread_key,
                r.text.as_deref().map(|t| shorten(t, 120)),
            ));
        }
        out
    }

    /// Stops accepting connections, lets in-flight requests finish (bounded by 10 s) and
    /// waits for the server task. Other handles stay usable for inspection.
    pub async fn shutdown(&self) {
        let stop = self
            .handle
            .stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let task = self
            .handle
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task
            && tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
        {
            panic!("fake Chat: server did not stop within 10 s of shutdown()");
        }
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&ChatState) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before looking, so a change between the look and the wait
            // still wakes us.
            let changed = self.shared().changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(found) = ready(&self.shared().lock()) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return ready(&self.shared().lock());
            }
        }
    }
}

fn expected_key(space: &str) -> String {
    format!("FAKEKEY-{space}")
}

fn expected_token(space: &str) -> String {
    format!("FAKETOKEN-{space}-s3cr3t")
}

fn check_status(status: u16) {
    assert!(
        (100..=999).contains(&status) && StatusCode::from_u16(status).is_ok(),
        "fake Chat: {status} is not a usable HTTP status"
    );
}

fn shorten(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max_chars).collect();
        format!("{cut}…")
    }
}

/// Google's canonical status name for an HTTP status, as in its JSON error bodies.
fn google_status(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        412 => "FAILED_PRECONDITION",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        // 405 included: Google has no canonical name for it and kabar only ever POSTs.
        _ => "UNKNOWN",
    }
}

/// A JSON error as Google sends it. Messages never contain the key or token.
struct ApiError {
    code: u16,
    message: String,
    retry_after: Option<String>,
}

impl ApiError {
    fn new(code: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    fn unknown_field(name: &str, at: &str) -> ApiError {
        ApiError::bad_request(format!(
            "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find \
             field."
        ))
    }

    fn wrong_type(at: &str, expected: &str, got: &Value) -> ApiError {
        ApiError::bad_request(format!(
            "Invalid value at '{at}' ({expected}), {}",
            shorten(&got.to_string(), 40)
        ))
    }

    fn response(&self) -> Response {
        let body = json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "status": google_status(self.code),
            }
        });
        let mut builder = Response::builder()
            .status(self.code)
            .header(header::CONTENT_TYPE, "application/json; charset=UTF-8");
        if let Some(value) = &self.retry_after {
            builder = builder.header(header::RETRY_AFTER, value);
        }
        if self.code == 405 {
            builder = builder.header(header::ALLOW, "POST");
        }
        builder
            .body(Body::from(pretty(&body)))
            .expect("fake Chat: status and headers were checked when configured")
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("fake Chat: a JSON value always serializes")
}

/// Google's front end answers unknown paths with an HTML page, not JSON. Only the path is
/// shown (the query holds secrets), escaped.
fn html_404(path: &str) -> Response {
    let path = path
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let page = format!(
        "<!DOCTYPE html>\n<html lang=en>\n<meta charset=utf-8>\n<title>Error 404 (Not \
         Found)!!1</title>\n<p><b>404.</b> <ins>That's an error.</ins>\n<p>The requested URL \
         <code>{path}</code> was not found on this server. <ins>That's all we know.</ins>\n"
    );
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header(header::CONTENT_TYPE, "text/html; charset=UTF-8")
        .body(Body::from(page))
        .expect("fake Chat: static response parts are valid")
}

/// `/v1/spaces/{space}/messages` → `space`.
fn space_from_path(path: &str) -> Option<String> {
    let space = path
        .strip_prefix("/v1/spaces/")?
        .strip_suffix("/messages")?;
    (!space.is_empty() && !space.contains('/')).then(|| space.to_owned())
}

/// The request's record, appended to `requests` when dropped: that way a request whose
/// handler is cancelled (the client went away mid-`Slow`) is still recorded, with status 0.
struct PendingRecord {
    shared: Arc<Shared>,
    record: RequestRecord,
}

impl PendingRecord {
    fn answered(&mut self, response: Response, error: Option<&ApiError>) -> Response {
        self.record.status = response.status().as_u16();
        if let Some(error) = error {
            self.record.error_status = Some(google_status(error.code).to_owned());
            self.record.error_message = Some(error.message.clone());
        }
        response
    }
}

/// Counts a request of a space as in flight until the handler ends (answered, or dropped
/// because the client went away).
struct InFlight {
    shared: Arc<Shared>,
    space: String,
}

impl InFlight {
    fn start(shared: &Arc<Shared>, space: &str) -> InFlight {
        let mut state = shared.lock();
        let now = {
            let count = state.in_flight.entry(space.to_owned()).or_insert(0);
            *count += 1;
            *count
        };
        let max = state.max_in_flight.entry(space.to_owned()).or_insert(0);
        *max = (*max).max(now);
        InFlight {
            shared: shared.clone(),
            space: space.to_owned(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(count) = self.shared.lock().in_flight.get_mut(&self.space) {
            *count = count.saturating_sub(1);
        }
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        let record = self.record.clone();
        self.shared.lock().requests.push(record);
        self.shared.changed.notify_waiters();
    }
}

/// What the handler learned from the request, before judging it.
struct Incoming {
    space: String,
    method: Method,
    query: Result<Vec<(String, String)>, String>,
    content_type: Option<String>,
    body_len: usize,
    body: Result<Value, String>,
}

impl Incoming {
    fn query_param(&self, name: &str) -> Option<&str> {
        let params = self.query.as_ref().ok()?;
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn handle(
    AxumState(shared): AxumState<Arc<Shared>>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut pending = PendingRecord {
        shared: shared.clone(),
        record: RequestRecord {
            space: String::new(),
            method: method.to_string(),
            path: uri.path().to_owned(),
            status: 0,
            error_status: None,
            error_message: None,
            at: Instant::now(),
            thread_key: None,
            text: None,
            reply_option: None,
            message_name: None,
        },
    };
    let Some(space) = space_from_path(uri.path()) else {
        return pending.answered(html_404(uri.path()), None);
    };
    let _in_flight = InFlight::start(&shared, &space);
    let incoming = Incoming {
        space: space.clone(),
        method,
        query: Query::<Vec<(String, String)>>::try_from_uri(&uri)
            .map(|Query(q)| q)
            .map_err(|e| e.body_text()),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body_len: body.len(),
        body: serde_json::from_slice::<Value>(&body).map_err(|e| e.to_string()),
    };
    // Fill what can be known even for requests that will fail, so tests can see what a
    // retried request carried.
    pending.record.space = space.clone();
    pending.record.reply_option = incoming
        .query_param("messageReplyOption")
        .map(str::to_owned);
    if let Ok(body) = &incoming.body {
        pending.record.text = body.get("text").and_then(Value::as_str).map(str::to_owned);
        pending.record.thread_key = body
            .get("thread")
            .and_then(|t| t.get("threadKey"))
            .and_then(Value::as_str)
            .or_else(|| incoming.query_param("threadKey"))
            .map(str::to_owned);
    }

    let mode = {
        let mut state = shared.lock();
        let queued = state
            .fail_next
            .get_mut(&space)
            .and_then(VecDeque::pop_front);
        match queued {
            Some(failure) => Mode::Fail(failure),
            None => state
                .space_modes
                .get(&space)
                .unwrap_or(&state.global_mode)
                .clone(),
        }
    };
    match mode {
        Mode::Normal => judge(&shared, &incoming, &mut pending),
        Mode::Fail(Failure::Status {
            status,
            retry_after,
        }) => {
            let error = ApiError {
                code: status,
                message: format!("Injected failure {status} from the fake Chat server."),
                retry_after,
            };
            let response = error.response();
            pending.answered(response, Some(&error))
        }
        Mode::Fail(Failure::Html404) => pending.answered(html_404(uri.path()), None),
        Mode::Fail(Failure::Body { status, body }) => {
            let content_type = if serde_json::from_str::<Value>(&body).is_ok() {
                "application/json; charset=UTF-8"
            } else {
                "text/plain; charset=UTF-8"
            };
            let response = Response::builder()
                .status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST))
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(body))
                .expect("fake Chat: a checked status and a string body are valid");
            pending.answered(response, None)
        }
        Mode::Fail(Failure::ResetConnection) => {
            connection.reset.store(true, Ordering::SeqCst);
            // This response is never delivered: its first write finds the flag and resets
            // the connection. The record keeps status 0.
            Response::new(Body::empty())
        }
        Mode::Slow {
            delay,
            accept: true,
        } => {
            let response = judge(&shared, &incoming, &mut pending);
            let status = pending.record.status;
            // Until the delay is over the client has had no answer; if it gives up, the
            // record keeps status 0 while the message stays accepted.
            pending.record.status = 0;
            tokio::time::sleep(delay).await;
            pending.record.status = status;
            response
        }
        Mode::Slow {
            delay,
            accept: false,
        } => {
            // If the client disconnects during the sleep, hyper drops this future: nothing
            // is judged and `pending` records status 0.
            tokio::time::sleep(delay).await;
            judge(&shared, &incoming, &mut pending)
        }
    }
}

/// Judges a request the way Chat does and answers it.
fn judge(shared: &Shared, incoming: &Incoming, pending: &mut PendingRecord) -> Response {
    let mut state = shared.lock();
    match accept(&mut state, incoming) {
        Ok((received, response_body)) => {
            pending.record.message_name = Some(received.name.clone());
            drop(state);
            shared.changed.notify_waiters();
            let response = Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json; charset=UTF-8")
                .body(Body::from(pretty(&response_body)))
                .expect("fake Chat: static response parts are valid");
            pending.answered(response, None)
        }
        Err(error) => {
            drop(state);
            let response = error.response();
            pending.answered(response, Some(&error))
        }
    }
}

/// What validation extracted from a message body.
struct Checked {
    text: Option<String>,
    thread_key: Option<String>,
    thread_name: Option<String>,
    ignored_widgets: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ReplyOption {
    /// No option: the key is ignored and the message starts a new thread.
    NewThread,
    Fallback,
    OrFail,
}

fn accept(state: &mut ChatState, incoming: &Incoming) -> Result<(Received, Value), ApiError> {
    let space = incoming.space.as_str();
    if incoming.method != Method::POST {
        return Err(ApiError::new(
            405,
            format!(
                "Method {} is not allowed here; webhooks only create messages (POST).",
                incoming.method
            ),
        ));
    }
    let query = incoming
        .query
        .as_ref()
        .map_err(|_| ApiError::bad_request("Invalid query string."))?;
    if let Some((name, _)) = query
        .iter()
        .find(|(k, _)| !KNOWN_QUERY_PARAMS.contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid JSON payload received. Unknown name \"{name}\": Cannot bind query \
             parameter. Field '{name}' could not be found in request message."
        )));
    }
    match incoming.query_param("key") {
        None => {
            return Err(ApiError::new(
                403,
                "Method doesn't allow unregistered callers (callers without established \
                 identity). Please use API Key or other form of API consumer identity to call \
                 this API.",
            ));
        }
        Some(key) if key != expected_key(space) => {
            return Err(ApiError::bad_request(
                "API key not valid. Please pass a valid API key.",
            ));
        }
        Some(_) => {}
    }
    if incoming.query_param("token") != Some(expected_token(space).as_str()) {
        return Err(ApiError::new(403, "The caller does not have permission"));
    }
    let reply = match incoming.query_param("messageReplyOption") {
        None | Some(REPLY_UNSPECIFIED) => ReplyOption::NewThread,
        Some(REPLY_FALLBACK) => ReplyOption::Fallback,
        Some(REPLY_OR_FAIL) => ReplyOption::OrFail,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid value at 'message_reply_option' \
                 (type.googleapis.com/google.chat.v1.CreateMessageRequest.MessageReplyOption), \
                 \"{}\"",
                shorten(other, 60)
            )));
        }
    };

    let is_json = incoming.content_type.as_deref().is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
    });
    if !is_json {
        return Err(ApiError::bad_request(format!(
            "Invalid JSON payload received. Expected Content-Type application/json, got {:?}.",
            incoming.content_type.as_deref().unwrap_or("")
        )));
    }
    if incoming.body_len > BODY_LIMIT_BYTES {
        return Err(ApiError::bad_request(format!(
            "Message payload is {} bytes; the maximum is {BODY_LIMIT_BYTES} bytes.",
            incoming.body_len
        )));
    }
    let body = incoming
        .body
        .as_ref()
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON payload received. {e}")))?;
    let mut checked = check_message(body)?;
    if checked.thread_key.is_none() {
        // The deprecated query form still names a thread.
        checked.thread_key = incoming.query_param("threadKey").map(str::to_owned);
    }

    if let Some((_, status)) = state
        .rejections
        .iter()
        .find(|(needle, _)| any_string_contains(body, needle))
    {
        return Err(ApiError::new(
            *status,
            "Message rejected by the fake Chat server (reject_when_text_contains).",
        ));
    }

    let existing = if reply == ReplyOption::NewThread {
        None
    } else {
        state.threads.iter().position(|t| {
            t.space == space
                && match (&checked.thread_name, &checked.thread_key) {
                    (Some(name), _) => &t.name == name,
                    (None, Some(key)) => t.key.as_ref() == Some(key),
                    (None, None) => false,
                }
        })
    };
    let names_a_thread = checked.thread_name.is_some() || checked.thread_key.is_some();
    if reply == ReplyOption::OrFail && existing.is_none() && names_a_thread {
        return Err(ApiError::new(404, "Thread not found."));
    }

    let now = Instant::now();
    if let Some(rate) = state.rate_per_second {
        let bucket = state.buckets.entry(space.to_owned()).or_insert(Bucket {
            tokens: 1.0,
            updated: now,
        });
        if !bucket.take(rate, now) {
            // Chat's 429s are not documented to carry Retry-After; the fake sends none
            // unless a test asks for it with `set_rate_limit_retry_after`.
            return Err(ApiError {
                retry_after: state.rate_limit_retry_after.clone(),
                ..ApiError::new(429, "Resource has been exhausted (e.g. check quota).")
            });
        }
    }

    let message_index = state.messages.len();
    let (thread_index, opened_thread) = match existing {
        Some(index) => (index, false),
        None => {
            let name = format!("spaces/{space}/threads/fakeThr{:05}", state.next_thread);
            state.next_thread += 1;
            state.threads.push(ThreadState {
                space: space.to_owned(),
                name,
                key: if reply == ReplyOption::NewThread {
                    None
                } else {
                    checked.thread_key.clone()
                },
                messages: Vec::new(),
            });
            (state.threads.len() - 1, true)
        }
    };
    let thread_name = state.threads[thread_index].name.clone();
    let thread_id = thread_name
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    // Opaque, dotted names like Chat's (`spaces/S/messages/ABC.DEF`), so nothing in kabar can
    // get away with parsing them.
    let name = format!(
        "spaces/{space}/messages/fakeMsg{:05}.{thread_id}",
        state.next_message
    );
    state.next_message += 1;
    state.threads[thread_index].messages.push(message_index);

    let received = Received {
        space: space.to_owned(),
        name: name.clone(),
        thread_name: thread_name.clone(),
        thread_key: checked.thread_key.clone(),
        opened_thread,
        body: body.clone(),
        text: checked.text.clone(),
        at: now,
        reply_option: incoming
            .query_param("messageReplyOption")
            .map(str::to_owned),
        ignored_widgets: checked.ignored_widgets,
    };
    state.messages.push(received.clone());

    // Chat echoes the message with its server-side fields filled in.
    let mut response = body.as_object().cloned().unwrap_or_default();
    response.insert("name".into(), json!(name));
    response.insert(
        "sender".into(),
        json!({"name": "users/100000000000000000001", "displayName": "kabar fake webhook", "type": "BOT"}),
    );
    response.insert("createTime".into(), json!(rfc3339_now()));
    response.insert("thread".into(), json!({ "name": thread_name }));
    response.insert(
        "space".into(),
        json!({"name": format!("spaces/{space}"), "type": "ROOM", "spaceType": "SPACE"}),
    );
    if let Some(text) = &checked.text {
        response.insert("argumentText".into(), json!(text));
    }
    Ok((received, Value::Object(response)))
}

fn check_known_fields(
    object: &Map<String, Value>,
    known: &[&str],
    at: &str,
) -> Result<(), ApiError> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::unknown_field(unknown, at)),
        None => Ok(()),
    }
}

/// A JSON `null` field counts as absent, as in proto3 JSON.
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|v| !v.is_null())
}

fn string_field(
    object: &Map<String, Value>,
    name: &str,
    at: &str,
) -> Result<Option<String>, ApiError> {
    match field(object, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::wrong_type(
            &format!("{at}.{name}"),
            "TYPE_STRING",
            other,
        )),
    }
}

fn array_field<'a>(
    object: &'a Map<String, Value>,
    name: &str,
    at: &str,
) -> Result<&'a [Value], ApiError> {
    match field(object, name) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(ApiError::wrong_type(
            &format!("{at}.{name}"),
            "TYPE_MESSAGE list",
            other,
        )),
    }
}

fn object_at<'a>(value: &'a Value, at: &str) -> Result<&'a Map<String, Value>, ApiError> {
    value
        .as_object()
        .ok_or_else(|| ApiError::wrong_type(at, "TYPE_MESSAGE", value))
}

/// Whether Chat would accept `body` as a message, by the checks the fake's webhook runs;
/// on success, how many widgets Chat would ignore. For tests that render without sending.
pub fn check_body(body: &str) -> Result<usize, String> {
    if body.len() > BODY_LIMIT_BYTES {
        return Err(format!("{} bytes: over {BODY_LIMIT_BYTES}", body.len()));
    }
    let value: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    check_message(&value)
        .map(|checked| checked.ignored_widgets)
        .map_err(|e| e.message)
}

fn check_message(body: &Value) -> Result<Checked, ApiError> {
    let message = body.as_object().ok_or_else(|| {
        ApiError::bad_request(
            "Invalid JSON payload received. Unknown name \"\": Root element must be a message.",
        )
    })?;
    check_known_fields(message, MESSAGE_FIELDS, "message")?;
    let text = string_field(message, "text", "message")?;
    if let Some(text) = &text {
        let chars = text.chars().count();
        if chars > TEXT_LIMIT_CHARS {
            return Err(ApiError::bad_request(format!(
                "Maximum length of the field is {TEXT_LIMIT_CHARS}. Field message.text has \
                 {chars} characters."
            )));
        }
    }
    string_field(message, "fallbackText", "message")?;

    let (mut thread_key, mut thread_name) = (None, None);
    if let Some(thread) = field(message, "thread") {
        let thread = object_at(thread, "message.thread")?;
        check_known_fields(thread, THREAD_FIELDS, "message.thread")?;
        thread_key = string_field(thread, "threadKey", "message.thread")?;
        thread_name = string_field(thread, "name", "message.thread")?;
        // (Not a let-chain: the main crate's rust-version is 1.85.)
        if thread_key
            .as_ref()
            .is_some_and(|key| key.chars().count() > THREAD_KEY_LIMIT_CHARS)
        {
            return Err(ApiError::bad_request(format!(
                "Maximum length of the field is {THREAD_KEY_LIMIT_CHARS}. Field \
                 message.thread.thread_key is too long."
            )));
        }
    }

    let cards_v2 = array_field(message, "cardsV2", "message")?;
    let mut ignored_widgets = 0;
    for (i, entry) in cards_v2.iter().enumerate() {
        let at = format!("message.cards_v2[{i}]");
        let entry = object_at(entry, &at)?;
        check_known_fields(entry, CARD_WITH_ID_FIELDS, &at)?;
        let card_id = string_field(entry, "cardId", &at)?;
        if cards_v2.len() > 1 && card_id.as_deref().unwrap_or("").is_empty() {
            return Err(ApiError::bad_request(format!(
                "Invalid card: {at}.card_id is required when a message has several cards."
            )));
        }
        let card = field(entry, "card").ok_or_else(|| {
            ApiError::bad_request(format!("Invalid card: {at}.card is required."))
        })?;
        ignored_widgets += check_card(card, &format!("{at}.card"))?;
    }
    // Deprecated v1 cards: accepted as they are, not checked further.
    let cards_v1 = array_field(message, "cards", "message")?;
    array_field(message, "accessoryWidgets", "message")?;

    if text.as_deref().unwrap_or("").is_empty() && cards_v2.is_empty() && cards_v1.is_empty() {
        return Err(ApiError::bad_request(
            "Message cannot be empty. Discarded message must contain text or cards.",
        ));
    }
    Ok(Checked {
        text,
        thread_key,
        thread_name,
        ignored_widgets,
    })
}

/// Checks a card's skeleton; returns how many widgets Chat would ignore (beyond 100).
fn check_card(card: &Value, at: &str) -> Result<usize, ApiError> {
    let card = object_at(card, at)?;
    check_known_fields(card, CARD_FIELDS, at)?;
    if let Some(header) = field(card, "header") {
        let header_at = format!("{at}.header");
        let header = object_at(header, &header_at)?;
        check_known_fields(header, CARD_HEADER_FIELDS, &header_at)?;
        if string_field(header, "title", &header_at)?
            .unwrap_or_default()
            .is_empty()
        {
            return Err(ApiError::bad_request(format!(
                "Invalid card: {header_at}.title is required in a card header."
            )));
        }
    }
    let mut widgets_in_card = 0;
    for (s, section) in array_field(card, "sections", at)?.iter().enumerate() {
        let section_at = format!("{at}.sections[{s}]");
        let section = object_at(section, &section_at)?;
        check_known_fields(section, SECTION_FIELDS, &section_at)?;
        let widgets = array_field(section, "widgets", &section_at)?;
        if widgets.is_empty() {
            return Err(ApiError::bad_request(format!(
                "Invalid card: {section_at} must contain at least one widget."
            )));
        }
        for (w, widget) in widgets.iter().enumerate() {
            let widget_at = format!("{section_at}.widgets[{w}]");
            let widget = object_at(widget, &widget_at)?;
            let kinds = widget
                .keys()
                .filter(|k| WIDGET_KINDS.contains(&k.as_str()))
                .count();
            if let Some(unknown) = widget.keys().find(|k| {
                !WIDGET_KINDS.contains(&k.as_str()) && !WIDGET_EXTRA_FIELDS.contains(&k.as_str())
            }) {
                return Err(ApiError::unknown_field(unknown, &widget_at));
            }
            if kinds != 1 {
                return Err(ApiError::bad_request(format!(
                    "Invalid card: {widget_at} must set exactly one widget type, found {kinds}."
                )));
            }
        }
        widgets_in_card += widgets.len();
    }
    Ok(widgets_in_card.saturating_sub(WIDGETS_SHOWN_PER_CARD))
}

fn any_string_contains(value: &Value, needle: &str) -> bool {
    match value {
        Value::String(s) => s.contains(needle),
        Value::Array(items) => items.iter().any(|v| any_string_contains(v, needle)),
        Value::Object(map) => map.values().any(|v| any_string_contains(v, needle)),
        _ => false,
    }
}

fn rfc3339_now() -> String {
    format!("{:.6}", jiff::Timestamp::now())
}

/// Per-connection handle the handler reaches through `ConnectInfo`, so it can order the
/// connection reset for [`Failure::ResetConnection`].
#[derive(Clone, Debug)]
struct Connection {
    reset: Arc<AtomicBool>,
}

/// A TCP listener whose connections can be reset from inside a handler (axum offers no
/// other way to drop a connection without answering).
struct ResettableListener(TcpListener);

impl Listener for ResettableListener {
    type Io = ResettableStream;
    type Addr = Connection;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, _peer)) => {
                    let reset = Arc::new(AtomicBool::new(false));
                    let io = ResettableStream {
                        inner: stream,
                        reset: reset.clone(),
                    };
                    return (io, Connection { reset });
                }
                // Accept errors (e.g. out of file descriptors) are transient; back off
                // briefly rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()?;
        Ok(Connection {
            reset: Arc::new(AtomicBool::new(false)),
        })
    }
}

impl Connected<IncomingStream<'_, ResettableListener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, ResettableListener>) -> Self {
        stream.remote_addr().clone()
    }
}

struct ResettableStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl ResettableStream {
    /// Once the handler ordered a reset, every write fails; SO_LINGER 0 makes the close that
    /// follows an RST rather than an orderly FIN.
    fn check_reset(&self) -> io::Result<()> {
        if self.reset.load(Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "fake Chat: connection reset on purpose",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(err) = self.check_reset() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(err) = self.check_reset() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(err) = self.check_reset() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(err) = self.check_reset() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
