//! Button presses at two replicas: Chat may deliver a click to either, and deliver it twice;
//! the copies take turns on the episode's lock in PostgreSQL, so each click acts once.

use serde_json::json;

use super::cluster;
use crate::chat_actions::{PROJECT, SPACE, WAIT, card_text, click_event, updated};
use crate::common::chat_events::{ChatCerts, authorization};
use crate::common::config::{ConfigBuilder, Space};
use crate::common::fake_google::FakeGoogle;
use crate::common::kabar::{
    InProcess, TestConfig, client, metrics_text, notification, post_alerts,
};

fn sum_of(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_click_at_two_replicas_acts_once() {
    let Some(pg) = cluster() else { return };
    let url = pg.database();
    let google = FakeGoogle::start().await;
    let certs = ChatCerts::start().await;
    let signer = certs.signer();
    let keys = tempfile::tempdir().expect("a dir for the key");
    let key = google.write_key(keys.path());
    let builder = ConfigBuilder::new()
        .postgres(&url, Some("3s"))
        .allow_any_host()
        .chat_app(&key, &google.api_url())
        .chat_app_option("project_number", json!(PROJECT))
        .chat_app_option("certs_url", json!(certs.url()))
        .space("ops", Space::app(SPACE).receivers(&["ops"]));
    let a = InProcess::start(TestConfig::build(builder.clone())).await;
    let b = InProcess::start(TestConfig::build(builder)).await;
    let (status, _) = post_alerts(
        &a.url("/alerts"),
        &notification("ops", &[("DiskFull", "firing")]),
    )
    .await;
    assert_eq!(status, 200);
    google
        .wait_until("the firing card", WAIT, |g| !g.messages(SPACE).is_empty())
        .await;
    let card = google.messages(SPACE)[0].clone();
    let episode = crate::chat_actions::buttons(&card.body)
        .into_iter()
        .find(|button| button.text == "Acknowledge")
        .and_then(|button| button.episode)
        .expect("an Acknowledge button");

    let people = ["Ada", "Bob", "Carol", "Dan", "Eve"];
    for person in people {
        let event = click_event(person, "ack", &episode, &card.name);
        let token = authorization(&signer.chat_token(PROJECT)).expect("a token");
        let send = |base: String| {
            let (event, token) = (event.clone(), token.clone());
            async move {
                let response = client()
                    .post(format!("{base}/chat/events"))
                    .header("authorization", token)
                    .json(&event)
                    .send()
                    .await
                    .expect("answered");
                let status = response.status().as_u16();
                (
                    status,
                    response
                        .json::<serde_json::Value>()
                        .await
                        .unwrap_or_default(),
                )
            }
        };
        let (first, second) = tokio::join!(send(a.url("")), send(b.url("")));
        for (status, answer) in [&first, &second] {
            assert_eq!(*status, 200, "{answer}");
            let shown = card_text(updated(answer));
            assert_eq!(
                shown.matches(&format!("by <b>{person}</b>")).count(),
                1,
                "{shown}"
            );
        }
    }
    let (text_a, text_b) = (
        metrics_text(&a.url("")).await,
        metrics_text(&b.url("")).await,
    );
    let both = |series: &str| sum_of(&text_a, series) + sum_of(&text_b, series);
    assert_eq!(
        both("kabar_chat_app_actions_total{action=\"acknowledge\",result=\"done\"}"),
        people.len() as f64,
        "{text_a}\n{text_b}"
    );
    assert_eq!(
        both("kabar_chat_app_actions_total{action=\"acknowledge\",result=\"duplicate\"}"),
        people.len() as f64
    );
    // Either replica now shows all five, once each.
    let event = click_event("Ada", "ack", &episode, &card.name);
    let token = authorization(&signer.chat_token(PROJECT)).expect("a token");
    let answer: serde_json::Value = client()
        .post(b.url("/chat/events"))
        .header("authorization", token)
        .json(&event)
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        card_text(updated(&answer))
            .matches("Acknowledged by")
            .count(),
        5
    );
    a.stop().await;
    b.stop().await;
}
