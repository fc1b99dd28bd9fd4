//! Hostile input against the real binary: a corpus of malformed webhook bodies
//! (tests/fixtures/hostile/), HTTP-level abuse (methods, content types, oversized and chunked
//! bodies, deep nesting), big inputs under a memory bound, and alert content built to ping a
//! room or disguise a link. Every refusal is a 4xx with a JSON `error` and `hint`; nothing
//! gets a 5xx or takes kabar down.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::config::{ConfigBuilder, Space};
use crate::common::fake_chat::FakeChat;
use crate::common::kabar::{KabarProcess, TEST_TOKEN, TestConfig, client, notification};
use crate::common::logscan::assert_logs_clean;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
/// kabar's peak resident memory over the big cases (max_body_bytes 48 MiB; megabyte label
/// and annotation values, a 40 MiB body, 100k resolved and then 100k firing alerts in one
/// notification) must stay under this. Measured in a debug build: about 120 MiB after the
/// megabyte values (each value is copied several times on its way to a message: context,
/// escaping, the silence URL), about 180 MiB after the 100k resolved alerts and 225 MiB
/// while planning the 100k firing ones into a digest (the parsed notification, every
/// alert's episode state and the 16 MB body are alive at once): about five times the
/// largest body kabar accepts.
const MEMORY_BOUND_BYTES: u64 = 256 * 1024 * 1024;

struct Kabar {
    chat: FakeChat,
    config: TestConfig,
    process: KabarProcess,
}

async fn start(max_body_bytes: usize) -> Kabar {
    start_logging(max_body_bytes, "debug").await
}

/// kabar at debug level, except that `filter` may quiet handlebars, whose debug lines
/// (several per helper call) would dominate a 100k-alert notification.
async fn start_logging(max_body_bytes: usize, filter: &str) -> Kabar {
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let config = TestConfig::build(
        ConfigBuilder::new()
            .max_body_bytes(max_body_bytes as u64)
            .allow_any_host()
            .rate_limit_per_second(50.0)
            .backoff("50ms", "500ms")
            .default_format("text")
            .space("ops", Space::webhook(&chat.webhook_url("ops")))
            .space(
                "quiet",
                Space::webhook(&chat.webhook_url("quiet")).send_resolved(false),
            )
            .space(
                "cards",
                Space::webhook(&chat.webhook_url("cards")).format("card"),
            ),
    );
    let process = KabarProcess::spawn_with_log_filter(
        &config.path,
        &config.dir.path().join("kabar.log"),
        filter,
    );
    Kabar {
        chat,
        config,
        process,
    }
}

impl Kabar {
    fn url(&self, path: &str) -> String {
        self.process.url(path)
    }

    async fn post(&self, content_type: Option<&str>, body: impl Into<reqwest::Body>) -> Answer {
        let mut request = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("HTTP client")
            .post(self.url("/alerts"))
            .bearer_auth(TEST_TOKEN)
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        Answer::of(request.send().await.expect("kabar answers")).await
    }

    async fn post_json(&self, body: &[u8]) -> Answer {
        self.post(Some("application/json"), body.to_vec()).await
    }

    /// kabar is still up and answering.
    async fn assert_alive(&self) {
        let health = client()
            .get(self.url("/healthz"))
            .send()
            .await
            .expect("kabar is still up");
        assert_eq!(health.status(), 200);
    }

    fn peak_memory_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .expect("read /proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib * 1024
    }

    /// Peak resident memory since the last call (VmHWM, then reset through clear_refs).
    fn take_peak_memory_bytes(&self) -> u64 {
        let peak = self.peak_memory_bytes();
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.process.pid()), "5");
        peak
    }

    fn finish(self) {
        let log = self.process.log_path.clone();
        drop(self.process);
        let logs = std::fs::read_to_string(log).unwrap_or_default();
        assert!(!logs.contains("panicked"), "kabar panicked:\n{logs}");
        assert_logs_clean(&logs, &self.config.path, &self.chat);
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: Value,
    raw: String,
}

impl Answer {
    async fn of(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let raw = response.text().await.unwrap_or_default();
        Answer {
            status,
            content_type,
            body: serde_json::from_str(&raw).unwrap_or(Value::Null),
            raw,
        }
    }

    /// Why this answer is wrong for a refusal with `status` whose error mentions `needle`,
    /// or `None` when it is right.
    fn refusal_problem(&self, status: u16, needle: &str) -> Option<String> {
        let error = self.body["error"].as_str().unwrap_or("");
        let hint = self.body["hint"].as_str().unwrap_or("");
        if self.status != status {
            return Some(format!(
                "status {} (want {status}): {}",
                self.status, self.raw
            ));
        }
        if !self.content_type.starts_with("application/json") || error.is_empty() || hint.is_empty()
        {
            return Some(format!("not a JSON error with a hint: {}", self.raw));
        }
        if !error.to_lowercase().contains(&needle.to_lowercase()) {
            return Some(format!("error does not mention {needle:?}: {error}"));
        }
        None
    }
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile")
}

/// What an operator should get back for each corpus file: status and a word the error must
/// contain (the field at fault, or what is wrong with the text). `ok_*` files are valid but
/// odd and must be accepted.
fn expected(file: &str) -> (u16, &'static str) {
    match file {
        f if f.starts_with("ok_") => (200, ""),
        "bare_alert_array.json" => (422, "array"),
        "truncated.json" | "empty.json" => (400, "EOF"),
        "not_json.json" | "trailing_garbage.json" => (400, "invalid JSON"),
        "invalid_utf8.json" => (400, "unicode"),
        "raw_nul_in_string.json" | "raw_control_in_string.json" => (400, "control character"),
        "missing_receiver.json" | "null_receiver.json" | "receiver_is_number.json" => {
            (400, "receiver")
        }
        "missing_alerts.json" | "null_alerts.json" | "alerts_is_string.json" => (400, "alerts"),
        "empty_object.json" => (400, "missing field"),
        "null_body.json" | "string_body.json" => (400, "top level"),
        "status_unknown.json" => (400, "status"),
        "labels_is_list.json" | "label_value_is_number.json" => (400, "labels"),
        "duplicate_receiver_key.json" => (400, "duplicate field"),
        // serde_json reports an out-of-range number as a syntax error, without the field.
        "huge_number.json" => (400, "number out of range"),
        "negative_truncated.json" | "long_string_for_number.json" => (400, "truncatedAlerts"),
        "long_unknown_status.json" => (400, "status"),
        "long_label_name_is_number.json" => (400, "labels"),
        f if f.starts_with("starts_at_") => (400, "startsAt"),
        other => panic!("corpus file {other} has no expectation: add it to expected()"),
    }
}

/// No refusal answer is longer than this, whatever the body quoted.
const MAX_REFUSAL_BYTES: usize = 2048;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_of_malformed_bodies_gets_the_right_4xx_and_a_useful_json_error() {
    let kabar = start(4 * 1024 * 1024).await;
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("read the hostile corpus")
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 30, "the corpus is there: {files:?}");
    let mut problems = Vec::new();
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let body = std::fs::read(path).expect("read corpus file");
        let answer = kabar.post_json(&body).await;
        let (status, needle) = expected(name);
        let problem = if status == 200 {
            (answer.status != 200).then(|| format!("status {}: {}", answer.status, answer.raw))
        } else if answer.raw.len() > MAX_REFUSAL_BYTES {
            // A refusal quotes what the sender wrote only in part, however long it is.
            Some(format!("an answer of {} bytes", answer.raw.len()))
        } else {
            answer.refusal_problem(status, needle)
        };
        if let Some(problem) = problem {
            problems.push(format!("{name}: {problem}"));
        }
    }
    assert!(
        problems.is_empty(),
        "wrong answers:\n{}",
        problems.join("\n")
    );
    // What was accepted is deliverable: one message per odd-but-valid alert (the empty
    // alert list makes none), each taken by Chat.
    let accepted_alerts = 10;
    kabar
        .chat
        .wait_for_messages("ops", accepted_alerts, WAIT)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = kabar.chat.requests_for("ops");
    assert!(
        requests.len() == accepted_alerts && requests.iter().all(|r| r.status == 200),
        "{}",
        kabar.chat.describe("ops")
    );
    kabar.assert_alive().await;
    kabar.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_level_abuse_gets_the_right_4xx() {
    let limit = 1024 * 1024;
    let kabar = start(limit).await;
    let valid = serde_json::to_vec(&notification("ops", &[("Edge", "firing")])).expect("json");
    let mut problems = Vec::new();
    let mut check = |case: &str, answer: Answer, status: u16, needle: &str| {
        if let Some(problem) = answer.refusal_problem(status, needle) {
            problems.push(format!("{case}: {problem}"));
        }
    };

    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let response = client()
            .request(method.parse().expect("method"), kabar.url("/alerts"))
            .bearer_auth(TEST_TOKEN)
            .body(valid.clone())
            .send()
            .await
            .expect("kabar answers");
        check(method, Answer::of(response).await, 405, "method");
    }
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
    ] {
        let answer = kabar.post(content_type, valid.clone()).await;
        check(
            &format!("content type {content_type:?}"),
            answer,
            415,
            "content type",
        );
    }
    // Deep nesting: as a bare array, inside an unknown field, and as nested objects.
    let deep_array = "[".repeat(100_000);
    check(
        "100k [",
        kabar.post_json(deep_array.as_bytes()).await,
        400,
        "invalid JSON",
    );
    // Valid JSON, nested 100k deep in a field kabar does not know: ignored without
    // recursion, so accepted.
    let deep_unknown = format!(
        "{{\"receiver\":\"ops\",\"status\":\"firing\",\"alerts\":[],\"x\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let answer = kabar.post_json(deep_unknown.as_bytes()).await;
    if answer.status != 200 {
        problems.push(format!("100k [ in an unknown field: {}", answer.raw));
    }
    let mut check = |case: &str, answer: Answer, status: u16, needle: &str| {
        if let Some(problem) = answer.refusal_problem(status, needle) {
            problems.push(format!("{case}: {problem}"));
        }
    };
    let deep_alerts = format!(
        "{{\"receiver\":\"ops\",\"status\":\"firing\",\"alerts\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    check(
        "100k [ in alerts",
        kabar.post_json(deep_alerts.as_bytes()).await,
        400,
        "line 1",
    );
    let deep_objects = format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    check(
        "50k nested objects",
        kabar.post_json(deep_objects.as_bytes()).await,
        400,
        "receiver",
    );
    // Too large: declared by Content-Length, and streamed chunked with no length at all.
    let too_big = vec![b' '; limit + 1];
    check(
        "Content-Length over max_body_bytes",
        kabar.post_json(&too_big).await,
        413,
        "max_body_bytes",
    );
    check(
        "chunked body over max_body_bytes",
        chunked_post(&kabar, 40, 64 * 1024).await,
        413,
        "max_body_bytes",
    );
    // Unknown endpoints and receivers.
    let response = client()
        .post(kabar.url("/alerts/nope/extra"))
        .bearer_auth(TEST_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .expect("kabar answers");
    check("unknown path", Answer::of(response).await, 404, "no such");
    let unknown = serde_json::to_vec(&notification("nobody", &[("Edge", "firing")])).expect("json");
    check(
        "unknown receiver",
        kabar.post_json(&unknown).await,
        404,
        "nobody",
    );
    assert!(
        problems.is_empty(),
        "wrong answers:\n{}",
        problems.join("\n")
    );
    // The valid request still works after all that.
    assert_eq!(kabar.post_json(&valid).await.status, 200);
    kabar.assert_alive().await;
    kabar.finish();
}

/// Sends only the head of a POST whose Content-Length is `length`: kabar must refuse it
/// from the header alone, without waiting for (or buffering) the body.
async fn declared_post(kabar: &Kabar, length: usize) -> Answer {
    let head = format!(
        "POST /alerts HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TEST_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
        kabar.process.addr
    );
    raw_exchange(kabar, head.as_bytes(), &[]).await
}

/// POSTs `chunks` chunks of `chunk_size` spaces with `Transfer-Encoding: chunked` (no
/// Content-Length, so only counting can catch it) over a raw connection; kabar may answer
/// and close before the body is done, so write errors end the body early.
async fn chunked_post(kabar: &Kabar, chunks: usize, chunk_size: usize) -> Answer {
    let head = format!(
        "POST /alerts HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TEST_TOKEN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        kabar.process.addr
    );
    let chunk = format!("{chunk_size:x}\r\n{}\r\n", " ".repeat(chunk_size));
    let mut body = vec![chunk.as_bytes(); chunks];
    body.push(b"0\r\n\r\n");
    raw_exchange(kabar, head.as_bytes(), &body).await
}

/// Writes `head` and then `body` pieces on a fresh connection (stopping at the first write
/// error: kabar may answer and close early) and reads the answer.
async fn raw_exchange(kabar: &Kabar, head: &[u8], body: &[&[u8]]) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(kabar.process.addr)
        .await
        .expect("connect to kabar");
    let mut sent = stream.write_all(head).await;
    for piece in body {
        if sent.is_err() {
            break;
        }
        sent = stream.write_all(piece).await;
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: serde_json::from_str(body.trim()).unwrap_or(Value::Null),
        raw: text.clone(),
    }
}

fn alert(name: &str) -> Value {
    json!({
        "status": "firing",
        "labels": {"alertname": name, "severity": "warning"},
        "annotations": {},
        "startsAt": "2026-11-28T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
    })
}

fn webhook(alerts: Vec<Value>) -> Vec<u8> {
    webhook_to("ops", "firing", alerts)
}

fn webhook_to(receiver: &str, status: &str, alerts: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "version": "4", "receiver": receiver, "status": status, "alerts": alerts,
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://am.local", "groupKey": "{}:{}", "truncatedAlerts": 0
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_inputs_are_accepted_or_refused_within_the_memory_bound() {
    let kabar = start_logging(48 * 1024 * 1024, "debug,handlebars=info").await;

    eprintln!("peak at start {} MiB", kabar.take_peak_memory_bytes() >> 20);
    // Megabyte label and annotation values: accepted, and cut to Chat's limits.
    let mut big_label = alert("BigLabel");
    big_label["labels"]["blob"] = Value::from("L".repeat(3 * 1024 * 1024));
    let mut big_annotation = alert("BigAnnotation");
    big_annotation["annotations"]["description"] = Value::from("D".repeat(5 * 1024 * 1024));
    big_annotation["annotations"]["summary"] = Value::from("🔥".repeat(1024 * 1024));
    for (case, one) in [
        ("3 MiB label", big_label),
        ("5 MiB annotation", big_annotation),
    ] {
        let answer = kabar.post_json(&webhook(vec![one])).await;
        assert_eq!(
            (answer.status, answer.body["queued"].as_u64()),
            (200, Some(1)),
            "{case}: {}",
            answer.raw
        );
    }

    eprintln!(
        "peak after big labels {} MiB",
        kabar.take_peak_memory_bytes() >> 20
    );
    // 40 MiB of whitespace around nothing: read (it is under the limit), then refused.
    let mut padded = vec![b' '; 40 * 1024 * 1024];
    padded.extend_from_slice(b"{}");
    let answer = kabar.post_json(&padded).await;
    assert!(
        answer.refusal_problem(400, "receiver").is_none(),
        "{}",
        answer.raw
    );
    eprintln!(
        "peak after 40 MiB {} MiB",
        kabar.take_peak_memory_bytes() >> 20
    );
    // Over the limit, declared and chunked.
    let answer = declared_post(&kabar, 49 * 1024 * 1024).await;
    assert!(
        answer.refusal_problem(413, "max_body_bytes").is_none(),
        "{}",
        answer.raw
    );
    assert_eq!(chunked_post(&kabar, 1000, 64 * 1024).await.status, 413);

    let messages = kabar.chat.wait_for_messages("ops", 2, WAIT).await;
    for message in &messages {
        let text = message.text.as_deref().unwrap_or("");
        assert!(
            text.chars().count() <= 4096,
            "Chat's text limit holds: {} characters",
            text.chars().count()
        );
    }
    assert!(
        messages
            .iter()
            .any(|m| m.text.as_deref().unwrap_or("").contains("truncated")),
        "a cut message says so"
    );
    assert!(
        kabar
            .chat
            .requests_for("ops")
            .iter()
            .all(|r| r.status == 200),
        "every message fit Chat's limits:\n{}",
        kabar.chat.describe("ops")
    );

    // 100k alerts in one notification (Alertmanager's max_alerts unset). Resolved ones to a
    // space that does not post resolutions: all of it is parsed and planned, nothing is
    // rendered. Then 100k firing ones: storm control turns them into one digest message.
    let resolved: Vec<Value> = (0..100_000)
        .map(|i| {
            let mut one = alert(&format!("Many{i:06}"));
            one["status"] = Value::from("resolved");
            one["endsAt"] = Value::from("2026-11-28T00:10:00Z");
            one
        })
        .collect();
    let body = webhook_to("quiet", "resolved", resolved);
    let started = std::time::Instant::now();
    let answer = kabar.post_json(&body).await;
    eprintln!(
        "100k resolved alerts ({} bytes) answered in {:?}",
        body.len(),
        started.elapsed()
    );
    assert_eq!(
        (answer.status, answer.body["queued"].as_u64()),
        (200, Some(0)),
        "{}",
        answer.raw
    );
    eprintln!(
        "peak after 100k resolved {} MiB",
        kabar.take_peak_memory_bytes() >> 20
    );
    let firing: Vec<Value> = (0..100_000)
        .map(|i| alert(&format!("Storm{i:06}")))
        .collect();
    let body = webhook(firing);
    let started = std::time::Instant::now();
    let answer = kabar.post_json(&body).await;
    eprintln!(
        "100k firing alerts ({} bytes) answered in {:?}",
        body.len(),
        started.elapsed()
    );
    assert_eq!(
        (answer.status, answer.body["queued"].as_u64()),
        (200, Some(1)),
        "one digest for the storm: {}",
        answer.raw
    );
    let peak = kabar.peak_memory_bytes();
    eprintln!(
        "big inputs: kabar's peak resident memory {:.1} MiB (bound {} MiB)",
        peak as f64 / 1048576.0,
        MEMORY_BOUND_BYTES / 1048576
    );
    assert!(
        peak < MEMORY_BOUND_BYTES,
        "kabar peaked at {peak} bytes resident, over the {MEMORY_BOUND_BYTES} bound"
    );
    kabar.assert_alive().await;
    kabar.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_alert_content_renders_inert() {
    let kabar = start(4 * 1024 * 1024).await;
    let mut hostile = alert("<users/all>");
    hostile["labels"]["severity"] = Value::from("critical");
    hostile["labels"]["instance"] = Value::from("<users/123456789> <USERS/all>");
    hostile["labels"]["team"] = Value::from("עברית مرحبا 🔥🚀 👩‍👩‍👧‍👦");
    hostile["annotations"]["summary"] = Value::from("<https://evil.example/login|Your bank>");
    hostile["annotations"]["description"] =
        Value::from("invoice\u{202E}fdp.exe \u{2066}hidden\u{2069} <http://evil.example>");
    hostile["annotations"]["runbook_url"] = Value::from("https://evil.example/x|Runbook>");
    let answer = kabar.post_json(&webhook(vec![hostile])).await;
    assert_eq!(answer.status, 200, "valid, however odd: {}", answer.raw);

    let messages = kabar.chat.wait_for_messages("ops", 1, WAIT).await;
    let text = messages[0].text.clone().unwrap_or_default();
    eprintln!("hostile alert as posted:\n{text}");
    let lower = text.to_lowercase();
    assert!(!lower.contains("<users/"), "no live mention:\n{text}");
    // The only live links are kabar's own, with kabar's own labels; the runbook link
    // goes where the alert rule's runbook_url says (that is what it is for), but its
    // label cannot be changed by the value.
    for link in text.split('<').skip(1) {
        let link = link.split('>').next().unwrap_or("");
        let label = link.rsplit('|').next().unwrap_or("");
        assert!(
            ["Silence", "Source", "Runbook", "Dashboard"].contains(&label),
            "a link whose text comes from alert content: <{link}>\n{text}"
        );
    }
    assert!(
        !text.contains("|Your bank>"),
        "no disguised link text:\n{text}"
    );
    assert!(
        !text
            .chars()
            .any(|c| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')),
        "no bidirectional controls:\n{text:?}"
    );
    assert!(
        text.contains("🔥🚀") || text.contains("עברית"),
        "ordinary non-Latin text and emoji survive"
    );
    assert!(
        text.contains("Your bank"),
        "the hostile text is shown, inert"
    );
    kabar.assert_alive().await;
    kabar.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_breaks_in_payload_fields_cannot_forge_log_lines() {
    let kabar = start(4 * 1024 * 1024).await;
    let forged = "\n1999-01-01T00:00:00.000000Z ERROR kabar: FORGED by the payload\r\n";
    let mut by_receiver = notification(&format!("evil{forged}"), &[("LogA", "firing")]);
    by_receiver["groupKey"] = Value::from(format!("{{}}:{{x=\"{forged}\"}}"));
    let response = client()
        .post(kabar.url("/alerts/ops"))
        .bearer_auth(TEST_TOKEN)
        .json(&by_receiver)
        .send()
        .await
        .expect("kabar answers");
    assert_eq!(response.status(), 200, "explicit space, odd receiver name");
    let mut bad_status = notification("ops", &[("LogB", "firing")]);
    bad_status["alerts"][0]["status"] = Value::from(format!("firing{forged}"));
    let answer = kabar
        .post_json(&serde_json::to_vec(&bad_status).expect("json"))
        .await;
    assert!(
        answer.refusal_problem(400, "status").is_none(),
        "{}",
        answer.raw
    );
    let unknown_receiver = notification(&format!("nobody{forged}"), &[("LogC", "firing")]);
    let answer = kabar
        .post_json(&serde_json::to_vec(&unknown_receiver).expect("json"))
        .await;
    assert_eq!(answer.status, 404);

    kabar
        .process
        .wait_for_log("notification accepted", WAIT)
        .await;
    let logs = kabar.process.logs();
    let forged_lines: Vec<&str> = logs
        .lines()
        .filter(|line| line.starts_with("1999-01-01"))
        .collect();
    assert!(
        forged_lines.is_empty(),
        "a payload value wrote its own log line(s): {forged_lines:?}"
    );
    assert!(logs.contains("FORGED"), "the values were logged, escaped");
    kabar.finish();
}

/// Posts `body` and fails if kabar has not answered within `limit`: a request that hangs
/// kabar fails the test instead of hanging it.
async fn post_within(kabar: &Kabar, path: &str, body: &[u8], limit: Duration) -> Answer {
    let response = reqwest::Client::builder()
        .timeout(limit)
        .build()
        .expect("HTTP client")
        .post(kabar.url(path))
        .bearer_auth(TEST_TOKEN)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap_or_else(|e| panic!("no answer to POST {path} within {limit:?}: {e}"));
    Answer::of(response).await
}

async fn readyz(kabar: &Kabar) -> u16 {
    client()
        .get(kabar.url("/readyz"))
        .send()
        .await
        .expect("kabar answers /readyz")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_fingerprint_is_answered_promptly_and_later_requests_still_work() {
    // A fingerprint tens of kilobytes long once made fitting the message loop forever in
    // the store's writer: every later request hung, and Alertmanager's retry hung it again.
    let kabar = start(4 * 1024 * 1024).await;
    let limit = Duration::from_secs(10);
    for space in ["ops", "cards"] {
        let mut long = alert(&format!("LongFingerprint-{space}"));
        long["fingerprint"] = Value::from("f".repeat(40_000));
        let body = webhook_to(space, "firing", vec![long]);
        for attempt in ["first", "retried"] {
            let answer = post_within(&kabar, "/alerts", &body, limit).await;
            assert_eq!(answer.status, 200, "{space}, {attempt}: {}", answer.raw);
        }
        let next = webhook_to(space, "firing", vec![alert(&format!("AfterIt-{space}"))]);
        let answer = post_within(&kabar, "/alerts", &next, limit).await;
        assert_eq!(
            (answer.status, answer.body["queued"].as_u64()),
            (200, Some(1)),
            "{space}: the next request: {}",
            answer.raw
        );
    }
    assert_eq!(readyz(&kabar).await, 200, "ready");
    for space in ["ops", "cards"] {
        let messages = kabar.chat.wait_for_messages(space, 2, WAIT).await;
        let long = messages
            .iter()
            .find(|m| m.body.to_string().contains("LongFingerprint"))
            .unwrap_or_else(|| panic!("{}", kabar.chat.describe(space)));
        let key = long.thread_key.as_deref().expect("threaded");
        assert!(
            key.len() < 200,
            "{space}: a thread key of {} bytes",
            key.len()
        );
        assert!(
            kabar
                .chat
                .requests_for(space)
                .iter()
                .all(|r| r.status == 200),
            "{}",
            kabar.chat.describe(space)
        );
    }
    assert_eq!(
        kabar.chat.messages("ops").len() + kabar.chat.messages("cards").len(),
        4,
        "the retried copy posts nothing new"
    );
    kabar.assert_alive().await;
    kabar.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_mib_alert_of_tiny_labels_becomes_a_bounded_card_within_the_memory_bound() {
    let kabar = start_logging(4 * 1024 * 1024, "debug,handlebars=info").await;
    // 290k labels of 14 bytes each (`"l000000":"v",`): just under the default 4 MiB limit.
    let count = 290_000;
    let mut many = alert("ManyLabels");
    let labels = many["labels"].as_object_mut().expect("labels");
    for i in 0..count {
        labels.insert(format!("l{i:06}"), Value::from("v"));
    }
    let body = webhook_to("cards", "firing", vec![many]);
    assert!(
        body.len() > 3_900_000 && body.len() < 4 * 1024 * 1024,
        "{} bytes",
        body.len()
    );
    let before = kabar.take_peak_memory_bytes();
    let started = std::time::Instant::now();
    let answer = post_within(&kabar, "/alerts", &body, Duration::from_secs(60)).await;
    eprintln!(
        "{count} labels ({} bytes) in card format answered in {:?}",
        body.len(),
        started.elapsed()
    );
    assert_eq!(
        (answer.status, answer.body["queued"].as_u64()),
        (200, Some(1)),
        "{}",
        answer.raw
    );
    let messages = kabar.chat.wait_for_messages("cards", 1, WAIT).await;
    let peak = kabar.peak_memory_bytes();
    eprintln!(
        "peak resident memory {:.1} MiB (before: {:.1} MiB; bound {} MiB)",
        peak as f64 / 1048576.0,
        before as f64 / 1048576.0,
        MEMORY_BOUND_BYTES >> 20
    );
    assert!(
        peak < MEMORY_BOUND_BYTES,
        "kabar peaked at {peak} bytes resident, over the {MEMORY_BOUND_BYTES} bound"
    );
    let card = &messages[0];
    assert!(card.body.get("cardsV2").is_some(), "a card: {}", card.body);
    assert_eq!(card.ignored_widgets, 0, "within Chat's 100 widgets");
    let more = format!(
        "Other labels (+{} more)",
        count - kabar::render::MAX_LABELS_SHOWN
    );
    assert!(
        card.body.to_string().contains(&more),
        "the card says how many labels it leaves out ({more}): {}",
        card.body
    );
    assert!(
        kabar
            .chat
            .requests_for("cards")
            .iter()
            .all(|r| r.status == 200),
        "{}",
        kabar.chat.describe("cards")
    );
    kabar.assert_alive().await;
    kabar.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_values_in_the_wrong_place_get_short_answers_and_short_log_lines() {
    let kabar = start(8 * 1024 * 1024).await;
    let huge = "9".repeat(3_000_000);
    let valid = || notification("ops", &[("Edge", "firing")]);
    let mut number_as_string = valid();
    number_as_string["truncatedAlerts"] = Value::from(huge.clone());
    let mut status = valid();
    status["alerts"][0]["status"] = Value::from(huge.clone());
    let mut label_name = valid();
    label_name["alerts"][0]["labels"][huge.clone()] = Value::from(1);
    let unknown_receiver = notification(&huge, &[("Edge", "firing")]);
    let mut problems = Vec::new();
    for (case, body, status, needle) in [
        (
            "3 MB string for a number",
            number_as_string,
            400,
            "truncatedAlerts",
        ),
        ("3 MB alert status", status, 400, "status"),
        ("3 MB label name, number value", label_name, 400, "labels"),
        ("3 MB unknown receiver", unknown_receiver, 404, "receiver"),
    ] {
        let answer = kabar
            .post_json(&serde_json::to_vec(&body).expect("json"))
            .await;
        if let Some(problem) = answer.refusal_problem(status, needle) {
            problems.push(format!("{case}: {}", &problem[..problem.len().min(300)]));
        } else if answer.raw.len() > 2048 {
            problems.push(format!("{case}: an answer of {} bytes", answer.raw.len()));
        } else {
            eprintln!("{case}: {}", answer.body["error"]);
        }
    }
    // Accepted by an explicit space: the receiver and group key are logged, cut.
    let mut odd_receiver = notification(&huge, &[("HugeReceiver", "firing")]);
    odd_receiver["groupKey"] = Value::from(huge.clone());
    let response = client()
        .post(kabar.url("/alerts/ops"))
        .bearer_auth(TEST_TOKEN)
        .json(&odd_receiver)
        .send()
        .await
        .expect("kabar answers");
    assert_eq!(response.status(), 200);
    assert!(
        problems.is_empty(),
        "wrong answers:\n{}",
        problems.join("\n")
    );
    kabar.chat.wait_for_messages("ops", 1, WAIT).await;
    kabar
        .process
        .wait_for_log("notification accepted", WAIT)
        .await;
    let logs = kabar.process.logs();
    let refused = logs
        .lines()
        .filter(|l| l.contains("webhook request refused"))
        .count();
    assert_eq!(refused, 4, "each refusal is logged");
    let longest = logs.lines().map(str::len).max().unwrap_or(0);
    eprintln!("longest log line: {longest} bytes");
    assert!(
        longest < 4096,
        "a log line of {longest} bytes: {}",
        logs.lines()
            .find(|l| l.len() == longest)
            .map(|l| &l[..300])
            .unwrap_or("")
    );
    kabar.assert_alive().await;
    kabar.finish();
}
