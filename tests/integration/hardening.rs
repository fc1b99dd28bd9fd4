//! Security hardening, against the real binary: outbound proxies (configured and from the
//! environment) without leaking their credentials, and the start-up warning for
//! `delivery.allow_any_host`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::config::{ConfigBuilder, Space};
use crate::common::fake_chat::FakeChat;
use crate::common::kabar::{
    KabarProcess, TEST_TOKEN, TestConfig, assert_no_secrets, metric_value, metrics_text,
    notification, post_alerts,
};
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(30);
const PROXY_USER: &str = "kabar-proxy-user";
const PROXY_PASSWORD: &str = "pr0xy-s3cret-pw";

/// What a proxy client sent before the body: the request line and Proxy-Authorization.
#[derive(Debug, Clone)]
struct Seen {
    request_line: String,
    proxy_authorization: Option<String>,
}

/// A minimal HTTP proxy on 127.0.0.1. `forward`: absolute-form requests are passed on to
/// their (local) target in origin form; otherwise it records the request and hangs up,
/// like a proxy that cannot reach the internet.
struct TestProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestProxy {
    async fn start(forward: bool) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(WAIT, handle(client, record, forward)).await;
                });
            }
        });
        TestProxy { addr, seen, task }
    }

    fn url_with_credentials(&self) -> String {
        format!("http://{PROXY_USER}:{PROXY_PASSWORD}@{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("proxy log").clone()
    }

    async fn wait_for_request(&self) -> Seen {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(first) = self.seen().into_iter().next() {
                return first;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing reached the proxy"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(mut client: TcpStream, record: Arc<Mutex<Vec<Seen>>>, forward: bool) {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(pos) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 4096];
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
        if buffer.len() > 64 * 1024 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("").to_owned();
    let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    let proxy_authorization = headers
        .iter()
        .find_map(|h| {
            h.split_once(':')
                .filter(|(name, _)| name.eq_ignore_ascii_case("proxy-authorization"))
        })
        .map(|(_, value)| value.trim().to_owned());
    record.lock().expect("proxy log").push(Seen {
        request_line: request_line.clone(),
        proxy_authorization,
    });
    if !forward {
        return;
    }
    let mut parts = request_line.splitn(3, ' ');
    let (method, target, version) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let Ok(uri) = target.parse::<axum::http::Uri>() else {
        return;
    };
    let (Some(authority), Some(path)) = (uri.authority(), uri.path_and_query()) else {
        return;
    };
    // Only ever forwards to this machine: tests make no outside connections.
    if authority.host() != "127.0.0.1" {
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(authority.as_str()).await else {
        return;
    };
    let mut rewritten = format!("{method} {path} {version}\r\n");
    for header in headers
        .iter()
        .filter(|h| !h.to_ascii_lowercase().starts_with("proxy-"))
    {
        rewritten.push_str(header);
        rewritten.push_str("\r\n");
    }
    rewritten.push_str("\r\n");
    if upstream.write_all(rewritten.as_bytes()).await.is_err()
        || upstream.write_all(&buffer[head_end..]).await.is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

fn expected_proxy_authorization() -> String {
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{PROXY_USER}:{PROXY_PASSWORD}"));
    format!("Basic {credentials}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_proxy_carries_messages_and_its_password_stays_out_of_the_logs() {
    let chat = FakeChat::start().await;
    let proxy = TestProxy::start(true).await;
    let config = TestConfig::build(
        ConfigBuilder::new()
            .allow_any_host()
            .proxy_url(&proxy.url_with_credentials())
            .default_format("text")
            .space("ops", Space::webhook(&chat.webhook_url("ops"))),
    );
    let log = config.dir.path().join("kabar.log");
    // The explicit setting wins over the environment: this proxy does not exist.
    let kabar = KabarProcess::spawn_with_env(
        &config.path,
        &log,
        &[("HTTP_PROXY", "http://127.0.0.1:9"), ("NO_PROXY", "")],
    );
    let (status, _) = post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("ViaProxy", "firing")]),
    )
    .await;
    assert_eq!(status, 200);

    let delivered = chat.wait_for_messages("ops", 1, WAIT).await;
    assert!(
        delivered[0]
            .text
            .as_deref()
            .unwrap_or("")
            .contains("*ViaProxy*")
    );
    let seen = proxy.wait_for_request().await;
    let absolute = format!("POST http://{}/v1/spaces/ops/messages?", chat.addr());
    assert!(
        seen.request_line.starts_with(&absolute),
        "the proxy got an absolute-form request: {}",
        seen.request_line.split('?').next().unwrap_or("")
    );
    assert_eq!(
        seen.proxy_authorization.as_deref(),
        Some(expected_proxy_authorization().as_str()),
        "the proxy credentials from proxy_url are sent to the proxy"
    );

    let mut secrets = chat.secrets();
    secrets.extend([
        TEST_TOKEN.to_owned(),
        PROXY_PASSWORD.to_owned(),
        proxy.url_with_credentials(),
    ]);
    assert_no_secrets(&kabar.logs(), &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_from_the_environment_is_used_for_chat() {
    let proxy = TestProxy::start(false).await;
    let webhook = "https://chat.googleapis.com/v1/spaces/AAAAenvproxy/messages?key=envKEYsecret1&token=envTOKENsecret2";
    let config = TestConfig::build(
        ConfigBuilder::new()
            .backoff("100ms", "200ms")
            .space("ops", Space::webhook(webhook)),
    );
    let log = config.dir.path().join("kabar.log");
    let proxy_env = proxy.url_with_credentials();
    let kabar = KabarProcess::spawn_with_env(
        &config.path,
        &log,
        &[("HTTPS_PROXY", proxy_env.as_str()), ("NO_PROXY", "")],
    );
    let (status, _) = post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("EnvProxy", "firing")]),
    )
    .await;
    assert_eq!(status, 200);

    // No internet needed: the tunnel request itself proves the variable is honoured.
    let seen = proxy.wait_for_request().await;
    assert!(
        seen.request_line
            .starts_with("CONNECT chat.googleapis.com:443 "),
        "{}",
        seen.request_line
    );
    assert_eq!(
        seen.proxy_authorization.as_deref(),
        Some(expected_proxy_authorization().as_str())
    );
    // The proxy hung up: a network failure, counted, and the message is retried.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = metrics_text(&kabar.url("")).await;
        let failed = metric_value(
            &text,
            "kabar_messages_failed_total{reason=\"network\",space=\"ops\"}",
        )
        .unwrap_or(0.0);
        if failed >= 2.0 && proxy.seen().len() >= 2 {
            assert_eq!(
                metric_value(&text, "kabar_outbox_messages{space=\"ops\"}"),
                Some(1.0),
                "still queued, not given up"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retried network failure:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kabar
        .wait_for_log("delivery failed; will retry", WAIT)
        .await;
    let logs = kabar.logs();
    assert_no_secrets(
        &logs,
        &[
            "envKEYsecret1".to_owned(),
            "envTOKENsecret2".to_owned(),
            PROXY_PASSWORD.to_owned(),
            TEST_TOKEN.to_owned(),
        ],
    );
}

#[tokio::test]
async fn allow_any_host_is_warned_about_at_start_up() {
    let chat = FakeChat::start().await;
    let lenient = TestConfig::build(
        ConfigBuilder::new()
            .allow_any_host()
            .space("ops", Space::webhook(&chat.webhook_url("ops"))),
    );
    let log = lenient.dir.path().join("kabar.log");
    let kabar = KabarProcess::spawn(&lenient.path, &log);
    kabar
        .wait_for_log(
            "delivery.allow_any_host is on: webhook URLs may point elsewhere than chat.googleapis.com",
            WAIT,
        )
        .await;
    assert!(kabar.logs().contains("WARN"), "{}", kabar.logs());
    drop(kabar);

    let strict = TestConfig::new(
        "spaces:\n  ops:\n    webhook_url: \"https://chat.googleapis.com/v1/spaces/S/messages?key=k&token=t\"\n",
    );
    let log = strict.dir.path().join("kabar.log");
    let kabar = KabarProcess::spawn(&strict.path, &log);
    assert!(
        !kabar.logs().contains("allow_any_host"),
        "no warning without the setting:\n{}",
        kabar.logs()
    );

    // And without it, a webhook elsewhere than Chat (or over http) is refused at start-up.
    for url in [
        chat.webhook_url("ops"),
        "http://chat.googleapis.com/v1/spaces/S/messages?key=k".to_owned(),
    ] {
        let refused = TestConfig::new(&format!("spaces:\n  ops:\n    webhook_url: \"{url}\"\n"));
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_kabar"))
            .args(["check", "--config"])
            .arg(&refused.path)
            .output()
            .expect("run kabar check");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains(
                "spaces.ops.webhook_url: must be https://chat.googleapis.com/v1/spaces/..."
            ),
            "{stderr}"
        );
        assert!(!stderr.contains("key="), "{stderr}");
    }
}

// ---------------------------------------------------------------------------------------
// Listener limits: read timeouts and the bound on webhook requests in progress

use crate::common::kabar::{InProcess, client};

fn limits_config(server: &str) -> TestConfig {
    TestConfig::new(&format!(
        "server:\n{server}spaces:\n  demo:\n    dry_run: true\n"
    ))
}

/// Reads until the peer closes; returns what it sent and how long that took.
async fn read_until_closed(stream: &mut tokio::net::tcp::OwnedReadHalf) -> (String, Duration) {
    let started = tokio::time::Instant::now();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("kabar kept a trickling connection open for {WAIT:?}"),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

/// Writes `head`, then one byte of `trickle` every 200 ms until kabar hangs up (or the
/// task is aborted, which closes the connection).
fn trickle(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    head: String,
    trickle: &'static [u8],
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for byte in trickle.iter().cycle().take(200) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_after_the_read_timeout() {
    let kabar = InProcess::start(limits_config("  read_timeout: 1s\n")).await;
    let addr = kabar.service.local_addr();

    // Headers trickled byte by byte: hyper's header timeout closes the connection.
    let (mut reader, writer) = TcpStream::connect(addr)
        .await
        .expect("connect")
        .into_split();
    trickle(
        writer,
        "POST /alerts HTTP/1.1\r\nHost: kabar\r\n".to_owned(),
        b"X-Slow: 1\r\n",
    );
    let (_, took) = read_until_closed(&mut reader).await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "trickled headers cut after {took:?}"
    );

    // Headers on time, body trickled: the request fails with the reason, the
    // connection closes.
    let (mut reader, writer) = TcpStream::connect(addr)
        .await
        .expect("connect")
        .into_split();
    let head = format!(
        "POST /alerts HTTP/1.1\r\nHost: kabar\r\nAuthorization: Bearer {TEST_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
    );
    trickle(writer, head, b" ");
    let (answer, took) = read_until_closed(&mut reader).await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "trickled body cut after {took:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("server.read_timeout (1s)"), "{answer}");

    // A connection that says nothing at all is closed too.
    let (mut reader, _writer) = TcpStream::connect(addr)
        .await
        .expect("connect")
        .into_split();
    let (_, took) = read_until_closed(&mut reader).await;
    assert!(
        took < Duration::from_secs(5),
        "idle connection held {took:?}"
    );

    // Ordinary clients are unaffected.
    let (status, _) = post_alerts(
        &kabar.url("/alerts"),
        &notification("demo", &[("Fine", "firing")]),
    )
    .await;
    assert_eq!(status, 200);
    kabar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_requests_beyond_the_bound_get_503_with_retry_after() {
    let kabar = InProcess::start(limits_config(
        "  read_timeout: 20s\n  max_concurrent_requests: 2\n",
    ))
    .await;
    let addr = kabar.service.local_addr();
    let url = kabar.url("/alerts");
    let body = notification("demo", &[("Busy", "firing")]);

    // Two requests whose bodies never finish occupy both slots.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let (reader, writer) = TcpStream::connect(addr)
            .await
            .expect("connect")
            .into_split();
        let head = format!(
            "POST /alerts HTTP/1.1\r\nHost: kabar\r\nAuthorization: Bearer {TEST_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
        );
        slow.push((reader, trickle(writer, head, b" ")));
    }

    // The next one is refused at once (retrying until the slow ones hold their slots).
    let deadline = tokio::time::Instant::now() + WAIT;
    let refused = loop {
        let response = client()
            .post(&url)
            .bearer_auth(TEST_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("kabar answers");
        if response.status() == 503 {
            break response;
        }
        assert_eq!(response.status(), 200);
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let error: serde_json::Value = refused.json().await.expect("JSON error");
    assert!(
        error["error"]
            .as_str()
            .unwrap_or("")
            .contains("server.max_concurrent_requests"),
        "{error}"
    );
    assert!(error["hint"].is_string(), "{error}");

    // Only webhook requests count: health and metrics still answer.
    let health = client()
        .get(kabar.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let metrics = metrics_text(&kabar.url("")).await;
    assert_eq!(
        metric_value(
            &metrics,
            "kabar_requests_rejected_total{reason=\"overloaded\"}"
        ),
        Some(1.0)
    );

    // The slow clients hang up; their slots are free again long before the read timeout.
    for (reader, writer) in slow {
        writer.abort();
        let _ = writer.await;
        drop(reader);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = post_alerts(&url, &body).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(tokio::time::Instant::now() < deadline, "slots never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kabar.stop().await;
}

// ---------------------------------------------------------------------------------------
// TLS on the listener

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_serves_https_with_the_configured_certificate() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["kabar.test".to_owned()]).expect("test cert");
    let cert_pem = certified.cert.pem();
    let key_pem = certified.signing_key.serialize_pem();
    let config = TestConfig::new(
        "server:\n  tls: {cert_file: tls/cert.pem, key_file: tls/key.pem}\nspaces:\n  demo:\n    dry_run: true\n",
    );
    // Relative to the config file's folder, like every other file the config names.
    let tls_dir = config.dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir).expect("tls dir");
    std::fs::write(tls_dir.join("cert.pem"), &cert_pem).expect("write cert");
    std::fs::write(tls_dir.join("key.pem"), &key_pem).expect("write key");

    let kabar = InProcess::start(config).await;
    let addr = kabar.service.local_addr();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("pem"))
        .resolve("kabar.test", addr)
        .timeout(WAIT)
        .build()
        .expect("https client");
    let response = https
        .post(format!("https://kabar.test:{}/alerts", addr.port()))
        .bearer_auth(TEST_TOKEN)
        .json(&notification("demo", &[("OverTls", "firing")]))
        .send()
        .await
        .expect("kabar answers over TLS");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["queued"], 1);

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = client().get(format!("http://{addr}/healthz")).send().await;
    assert!(
        plain.as_ref().map_or(true, |r| r.status() != 200),
        "plain HTTP was served on the TLS port"
    );
    // A client that does not trust the certificate refuses it.
    let untrusting = reqwest::Client::builder()
        .resolve("kabar.test", addr)
        .build()
        .expect("client");
    assert!(
        untrusting
            .get(format!("https://kabar.test:{}/healthz", addr.port()))
            .send()
            .await
            .is_err()
    );
    let config = kabar.stop().await;

    // A key file without a key stops start-up with a message naming the file.
    std::fs::write(tls_dir.join("key.pem"), &cert_pem).expect("overwrite key");
    let runtime = kabar::Runtime::load(&config.path).expect("config still valid");
    let error = match kabar::Service::start(runtime, None).await {
        Ok(_) => panic!("kabar started with no private key"),
        Err(e) => e.to_string(),
    };
    assert!(error.starts_with("server.tls.key_file "), "{error}");
    assert!(error.contains("key.pem"), "{error}");
    assert!(!error.contains("BEGIN"), "{error}");
}

// ---------------------------------------------------------------------------------------
// POST /-/reload: the webhook's credentials, and the reason only for those who have them

async fn reload_with(url: &str, authorization: Option<&str>) -> (u16, Option<String>, String) {
    let mut request = client().post(url);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.expect("reload answers");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, challenge, response.text().await.unwrap_or_default())
}

/// A reason only a caller who may reload should see: the failing key and its value.
const BROKEN: &str = "spaces:\n  ops:\n    dry_run: maybe-reload-secret-51c3\n";

fn assert_no_reason(body: &str) {
    assert!(
        !body.contains("dry_run") && !body.contains("maybe-reload-secret-51c3"),
        "the reason reached a caller without credentials: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_needs_the_webhook_credentials_and_only_they_see_why_it_failed() {
    let kabar = InProcess::start(TestConfig::build(
        ConfigBuilder::new().space("ops", Space::dry_run()),
    ))
    .await;
    let url = kabar.url("/-/reload");
    let good = format!("Bearer {TEST_TOKEN}");

    kabar.config.rewrite(BROKEN);
    for wrong in [
        None,
        Some("Bearer not-the-token"),
        Some(&format!("Bearer {TEST_TOKEN}x")[..]),
    ] {
        let (status, challenge, body) = reload_with(&url, wrong).await;
        assert_eq!(status, 401, "{wrong:?}: {body}");
        assert!(
            challenge
                .as_deref()
                .is_some_and(|c| c.starts_with("Bearer")),
            "{challenge:?}"
        );
        assert_no_reason(&body);
    }
    let (status, _, body) = reload_with(&url, Some(&good)).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("spaces.ops.dry_run"),
        "an authenticated caller sees why: {body}"
    );

    // A refused reload changes nothing; an authorised one applies the file.
    kabar
        .config
        .rewrite("spaces:\n  ops:\n    dry_run: true\n  extra:\n    dry_run: true\n");
    let (status, _, _) = reload_with(&url, None).await;
    assert_eq!(status, 401);
    let (status, _) = post_alerts(
        &kabar.url("/alerts/extra"),
        &notification("x", &[("A", "firing")]),
    )
    .await;
    assert_eq!(
        status, 404,
        "an unauthenticated reload must not apply the file"
    );
    let (status, _, body) = reload_with(&url, Some(&good)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = post_alerts(
        &kabar.url("/alerts/extra"),
        &notification("x", &[("A", "firing")]),
    )
    .await;
    assert_eq!(status, 200);
    kabar.stop().await;

    // Basic auth: the same check as /alerts.
    let basic = InProcess::start(TestConfig::build(
        ConfigBuilder::new()
            .auth_basic("am", "reload-pw-77")
            .space("ops", Space::dry_run()),
    ))
    .await;
    let url = basic.url("/-/reload");
    basic.config.rewrite(&format!(
        "auth:\n  basic:\n    username: am\n    password: reload-pw-77\n{BROKEN}"
    ));
    let encode = |credentials: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    };
    for wrong in [
        None,
        Some(encode("am:wrong")),
        Some(encode(":reload-pw-77")),
    ] {
        let (status, challenge, body) = reload_with(&url, wrong.as_deref()).await;
        assert_eq!(status, 401, "{body}");
        assert!(
            challenge.as_deref().is_some_and(|c| c.starts_with("Basic")),
            "{challenge:?}"
        );
        assert_no_reason(&body);
    }
    let (status, _, body) = reload_with(&url, Some(&encode("am:reload-pw-77"))).await;
    assert_eq!(status, 500);
    assert!(body.contains("spaces.ops.dry_run"), "{body}");
    basic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_reload_stays_open_and_its_answer_names_no_reason() {
    let config = TestConfig::new("spaces:\n  ops:\n    dry_run: true\n");
    let state_dir = config.state_dir();
    let open = |spaces: &str| {
        format!(
            "listen: 127.0.0.1:0\nstate_dir: {}\n{spaces}",
            state_dir.display()
        )
    };
    std::fs::write(&config.path, open("spaces:\n  ops:\n    dry_run: true\n")).expect("write");
    let log = config.dir.path().join("kabar.log");
    let kabar = KabarProcess::spawn(&config.path, &log);
    let url = kabar.url("/-/reload");

    std::fs::write(&config.path, open(BROKEN)).expect("write");
    let (status, _, body) = reload_with(&url, None).await;
    assert_eq!(status, 500, "{body}");
    assert_no_reason(&body);
    assert!(
        body.contains("log"),
        "the answer says where the reason is: {body}"
    );
    kabar
        .wait_for_log("configuration reload failed", WAIT)
        .await;
    assert!(
        kabar.logs().contains("spaces.ops.dry_run"),
        "the log has the reason"
    );

    std::fs::write(&config.path, open("spaces:\n  ops:\n    dry_run: true\n")).expect("write");
    let (status, _, body) = reload_with(&url, None).await;
    assert_eq!(status, 200, "{body}");
}
