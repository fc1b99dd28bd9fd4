//! Silence from the card against the real Alertmanager: the silence `amtool` shows (the
//! alert's labels as equality matchers, the user as its author, the end an hour on), the
//! alert no longer notifying, and Alertmanager down or refusing as a readable card line.

use std::process::Command;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{PROJECT, SPACE, WAIT, buttons, card_text, click_event, start, updated};
use crate::common::alertmanager::{Alertmanager, AlertmanagerOptions, TestAlert, require_binaries};
use crate::common::chat_events::authorization;
use crate::common::kabar::TEST_TOKEN;
use crate::common::tools::require_tool;

async fn notifications(setup: &super::Setup) -> f64 {
    setup
        .metric("kabar_notifications_received_total{space=\"ops\"}")
        .await
}

#[tokio::test]
async fn a_silence_from_the_card_is_created_in_alertmanager_and_the_alert_stops_notifying() {
    let Some(binaries) = require_binaries() else {
        return;
    };
    let Some(amtool) = require_tool(&["amtool"], "prometheus-alertmanager") else {
        return;
    };
    // Alertmanager needs kabar's address and kabar Alertmanager's: kabar starts first.
    let mut setup = start(|b| b).await;
    let mut options = AlertmanagerOptions::new(setup.url("/alerts"));
    options.bearer_token = Some(TEST_TOKEN.to_owned());
    options.receiver = "ops".to_owned();
    // An unchanged group is sent again on every group_interval tick (2 s).
    options.repeat_interval = "1s";
    let am = Alertmanager::start(&binaries, options).await;
    let am_url = am.url();
    setup
        .reconfigure(|b| b.chat_app_option("alertmanager", json!({"url": am_url})))
        .await;
    am.fire(&[TestAlert::new("DiskFull")
        .label("instance", "db-1:9100")
        .label("severity", "critical")
        .annotation("summary", "Disk almost full")])
        .await;
    setup
        .google
        .wait_until("the firing card", WAIT, |g| !g.messages(SPACE).is_empty())
        .await;
    let card = setup.google.messages(SPACE)[0].clone();
    let labels: Vec<String> = buttons(&card.body).into_iter().map(|b| b.text).collect();
    assert_eq!(
        labels[..4],
        ["Acknowledge", "Silence 1h", "Silence 4h", "Silence 24h"],
        "{labels:?}"
    );
    let episode = setup.episode_of(&card);
    // Before the silence Alertmanager repeats the notification.
    let deadline = tokio::time::Instant::now() + WAIT;
    while notifications(&setup).await < 2.0 {
        assert!(tokio::time::Instant::now() < deadline, "{}", am.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let pressed = jiff::Timestamp::now();
    let (status, answer) = setup.click("Ada Lovelace", "silence:1h", &episode).await;
    assert_eq!(status, 200, "{answer}");
    let shown = card_text(updated(&answer));
    assert!(shown.contains("🔕 Silenced until "), "{shown}");
    assert!(shown.contains(" by <b>Ada Lovelace</b>"), "{shown}");
    assert!(
        shown.contains(&format!("{}/#/silences/", am.url())),
        "{shown}"
    );

    let output = Command::new(&amtool)
        .args(["silence", "query", "-o", "json"])
        .arg(format!("--alertmanager.url={}", am.url()))
        .output()
        .expect("amtool runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let silences: Vec<Value> = serde_json::from_slice(&output.stdout).expect("amtool's JSON");
    assert_eq!(silences.len(), 1, "{silences:?}");
    let silence = &silences[0];
    let mut matchers: Vec<(String, String, bool, bool)> = silence["matchers"]
        .as_array()
        .expect("matchers")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_owned(),
                m["value"].as_str().unwrap_or("").to_owned(),
                m["isRegex"].as_bool().unwrap_or(true),
                m["isEqual"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    matchers.sort();
    let expected = [
        ("alertname", "DiskFull"),
        ("instance", "db-1:9100"),
        ("severity", "critical"),
    ]
    .map(|(n, v)| (n.to_owned(), v.to_owned(), false, true));
    assert_eq!(matchers, expected, "{silence}");
    assert_eq!(silence["createdBy"], "ada.lovelace@example.com");
    let comment = silence["comment"].as_str().expect("a comment");
    assert!(
        comment.contains("kabar") && comment.contains("Ada Lovelace") && comment.contains("ops"),
        "{comment}"
    );
    let ends: jiff::Timestamp = silence["endsAt"]
        .as_str()
        .expect("endsAt")
        .parse()
        .expect("a time");
    let hour = ends.duration_since(pressed).as_secs();
    assert!(
        (3_590..=3_610).contains(&hour),
        "ends {hour} s after the press"
    );

    // The same press delivered again makes no second silence.
    let (_, again) = setup.click("Ada Lovelace", "silence:1h", &episode).await;
    assert_eq!(
        card_text(updated(&again)).matches("Silenced until").count(),
        1
    );
    assert_eq!(
        setup
            .metric("kabar_chat_app_actions_total{action=\"silence\",result=\"done\"}")
            .await,
        1.0
    );
    assert_eq!(
        setup
            .metric("kabar_chat_app_actions_total{action=\"silence\",result=\"duplicate\"}")
            .await,
        1.0
    );

    // Silenced, the alert is no longer sent: nothing arrives over several repeat ticks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = notifications(&setup).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(notifications(&setup).await, settled, "{}", am.logs());
    let alerts: Value = crate::common::kabar::client()
        .get(format!("{}/api/v2/alerts", am.url()))
        .send()
        .await
        .expect("Alertmanager answers")
        .json()
        .await
        .expect("alerts JSON");
    assert_eq!(alerts[0]["status"]["state"], "suppressed", "{alerts}");
    assert_eq!(
        alerts[0]["status"]["silencedBy"][0], silence["id"],
        "{alerts}"
    );
}

/// A port nothing listens on, held (bound, never listening) so that no other test's
/// server can take it while this test runs: connecting to it is refused.
fn closed_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind");
    let port = socket.local_addr().expect("address").port();
    (socket, port)
}

/// A stand-in Alertmanager that answers every request `status` with an error text.
async fn refusing_alertmanager(status: StatusCode) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let app = axum::Router::new()
        .fallback(move || async move { (status, "cluster is not ready: gossip settling") });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn alertmanager_down_or_refusing_becomes_a_line_on_the_card() {
    let (_held, port) = closed_port();
    let mut setup = start(|b| {
        b.chat_app_option(
            "alertmanager",
            json!({"url": format!("http://127.0.0.1:{port}"), "bearer_token": "am-s3cret-token"}),
        )
    })
    .await;
    let card = setup.fire("DiskFull").await;
    let episode = setup.episode_of(&card);
    let (status, answer) = setup.click("Ada", "silence:4h", &episode).await;
    assert_eq!(status, 200, "{answer}");
    let shown = card_text(updated(&answer));
    assert!(
        shown.contains(&format!(
            "Could not silence: cannot reach Alertmanager at 127.0.0.1:{port}"
        )),
        "{shown}"
    );
    assert!(!shown.contains("Silenced until"), "{shown}");
    assert!(
        buttons(&answer).iter().any(|b| b.text == "Silence 4h"),
        "the buttons stay to try again"
    );
    assert_eq!(
        setup
            .metric("kabar_chat_app_silence_failures_total{reason=\"unreachable\"}")
            .await,
        1.0
    );

    let refusing = refusing_alertmanager(StatusCode::SERVICE_UNAVAILABLE).await;
    setup
        .reconfigure(|b| {
            b.chat_app_option(
                "alertmanager",
                json!({"url": refusing, "bearer_token": "am-s3cret-token"}),
            )
        })
        .await;
    // A new press (a new event time): the failed one is not redone on redelivery.
    let mut event = click_event("Ada", "silence:4h", &episode, &card.name);
    event["eventTime"] = json!("2025-05-01T10:09:00Z");
    let (status, answer, _) = setup
        .post_event(authorization(&setup.signer.chat_token(PROJECT)), &event)
        .await;
    assert_eq!(status, 200, "{answer}");
    let shown = card_text(updated(&answer));
    assert!(
        shown.contains("Could not silence: Alertmanager answered 503"),
        "{shown}"
    );
    assert!(!answer.to_string().contains("am-s3cret-token"), "{answer}");
    assert_eq!(
        setup
            .metric("kabar_chat_app_silence_failures_total{reason=\"server_error\"}")
            .await,
        1.0
    );
    assert_eq!(
        setup
            .metric("kabar_chat_app_actions_total{action=\"silence\",result=\"failed\"}")
            .await,
        2.0
    );
}
