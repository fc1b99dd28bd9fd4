//! `harness events`: the Chat events endpoint under load. kabar (release, dry-run app
//! space) verifies tokens against certificates the harness serves, and C closed-loop
//! clients send for S seconds each of: garbage tokens, forged signatures, valid MESSAGE
//! events (verify + answer), and valid Acknowledge presses (verify + a store transaction).

#[path = "../../tests/integration/common/chat_events.rs"]
#[allow(dead_code)]
mod chat_events;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Args, Error, Kabar, TOKEN, cpu_seconds, free_port, median, notification_json};
use chat_events::{ChatCerts, Click, Forgery, authorization, classic_click};

const PROJECT: &str = "123456789012";
const SPACE: &str = "spaces/AAAAbench";

/// One scenario's requests: what each sends, and the status it must get.
struct Scenario {
    name: &'static str,
    status: u16,
    request: Box<dyn Fn(u64) -> (Option<String>, Value) + Send + Sync>,
}

pub(super) async fn events(args: &Args) -> Result<(), Error> {
    let seconds: f64 = args.get("seconds", 10.0)?;
    let connections: usize = args.get("connections", 16)?;
    let binary = args.path("kabar", "target/release/kabar");
    let dir = args.path("work", "bench/work").join("events");
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_dir_all(dir.join("state"));
    let certs = ChatCerts::start().await;
    let signer = certs.signer();
    let listen = format!("127.0.0.1:{}", free_port()?);
    let yaml = format!(
        "listen: \"{listen}\"\nstate_dir: \"{}\"\nauth:\n  bearer_token: \"{TOKEN}\"\n\
         delivery:\n  allow_any_host: true\n\
         chat_app:\n  dry_run: true\n  project_number: \"{PROJECT}\"\n  certs_url: \"{}\"\n\
         spaces:\n  oncall:\n    space: {SPACE}\n    receivers: [bench]\n",
        dir.join("state").display(),
        certs.url()
    );
    let config = dir.join("kabar.yaml");
    std::fs::write(&config, yaml)?;
    let log = dir.join("kabar.log");
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut kabar = Kabar::spawn(&binary, &config, &log)?;
    kabar.wait_ready(&http, Instant::now()).await?;
    // One firing alert: its dry-run card names the episode its buttons act on.
    http.post(format!("{}/alerts", kabar.base))
        .bearer_auth(TOKEN)
        .json(&notification_json("bench", "events", 1))
        .send()
        .await?
        .error_for_status()?;
    let episode = wait_for_episode(&log).await?;
    let valid = authorization(&signer.chat_token(PROJECT)).ok_or("no token")?;
    let forged = authorization(&signer.forged(Forgery::BadSignature, PROJECT)).ok_or("no token")?;
    let message = format!("{SPACE}/messages/bench");
    let scenarios = vec![
        Scenario {
            name: "garbage_token",
            status: 401,
            request: Box::new(|_| {
                (
                    Some("Bearer not-a-jwt".to_owned()),
                    json!({"type": "MESSAGE"}),
                )
            }),
        },
        Scenario {
            name: "forged_signature",
            status: 401,
            request: Box::new(move |_| (Some(forged.clone()), json!({"type": "MESSAGE"}))),
        },
        Scenario {
            name: "message_help",
            status: 200,
            request: {
                let valid = valid.clone();
                Box::new(move |_| {
                    (
                        Some(valid.clone()),
                        json!({"type": "MESSAGE", "space": {"name": SPACE}, "user": {"name": "users/1"}}),
                    )
                })
            },
        },
        Scenario {
            name: "acknowledge",
            status: 200,
            request: Box::new(move |n| {
                let user = format!("users/{n}");
                let email = format!("user{n}@example.com");
                let event = classic_click(&Click {
                    user: &user,
                    display_name: &email,
                    email: &email,
                    space: SPACE,
                    message: &message,
                    action: "ack",
                    episode: &episode,
                });
                (Some(valid.clone()), event)
            }),
        },
    ];
    for scenario in &scenarios {
        let result = run(&http, &kabar, scenario, connections, seconds).await?;
        println!("{result}");
    }
    kabar.kill();
    Ok(())
}

async fn wait_for_episode(log: &std::path::Path) -> Result<String, Error> {
    let pattern = regex::Regex::new(r#"episode\\",\\"value\\":\\"([0-9a-f]{24})"#)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(found) = pattern.captures(&text).and_then(|c| c.get(1)) {
            return Ok(found.as_str().to_owned());
        }
        if Instant::now() > deadline {
            return Err("the dry-run card with its buttons never appeared in kabar's log".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(
    http: &reqwest::Client,
    kabar: &Kabar,
    scenario: &Scenario,
    connections: usize,
    seconds: f64,
) -> Result<Value, Error> {
    let url = format!("{}/chat/events", kabar.base);
    let counter = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_seconds(kabar.pid())?;
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(seconds);
    let request = &scenario.request;
    let mut latencies: Vec<f64> = Vec::new();
    let clients = (0..connections).map(|_| {
        let (http, url, counter, wrong) =
            (http.clone(), url.clone(), counter.clone(), wrong.clone());
        async move {
            let mut own = Vec::new();
            while Instant::now() < end {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (token, body) = request(n);
                let mut post = http.post(&url).json(&body);
                if let Some(token) = token {
                    post = post.header("authorization", token);
                }
                let sent = Instant::now();
                let status = post.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                own.push(sent.elapsed().as_secs_f64() * 1000.0);
                if status != scenario.status {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
            own
        }
    });
    for own in futures_util::future::join_all(clients).await {
        latencies.extend(own);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(kabar.pid())? - cpu0;
    let requests = latencies.len();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let p99 = latencies
        .get(requests.saturating_sub(1).min(requests * 99 / 100))
        .copied()
        .unwrap_or(0.0);
    let round = |v: f64, places: i32| (v * 10f64.powi(places)).round() / 10f64.powi(places);
    Ok(json!({
        "scenario": scenario.name,
        "connections": connections,
        "requests": requests,
        "per_s": round(requests as f64 / elapsed, 0),
        "p50_ms": round(median(&mut latencies.clone()), 2),
        "p99_ms": round(p99, 2),
        "kabar_cpu_us_per_request": round(cpu / requests.max(1) as f64 * 1e6, 1),
        "unexpected_status": wrong.load(Ordering::Relaxed),
    }))
}
