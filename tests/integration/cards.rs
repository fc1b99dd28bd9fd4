//! Cards and templates against the in-process fake Chat, which checks the cardsV2
//! skeleton the way Chat does: the default card is accepted, a refused card is re-sent
//! once as text, and templates reload with the config.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::config::{ConfigBuilder, Space};
use crate::common::fake_chat::FakeChat;
use crate::common::kabar::{
    InProcess, TEST_TOKEN, TestConfig, client, metric_value, metrics_text, notification,
    post_alerts, wait_for_metric,
};

const WAIT: Duration = Duration::from_secs(15);

fn fast_delivery() -> ConfigBuilder {
    ConfigBuilder::new()
        .allow_any_host()
        .rate_limit_per_second(50.0)
        .backoff("50ms", "200ms")
}

/// One space "ops" (default format: card), shaped by `space`.
fn config(chat: &FakeChat, space: impl FnOnce(Space) -> Space) -> TestConfig {
    TestConfig::build(fast_delivery().space("ops", space(Space::webhook(&chat.webhook_url("ops")))))
}

fn title(message: &Value) -> &str {
    message["cardsV2"][0]["card"]["header"]["title"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test]
async fn default_cards_are_accepted_and_an_alert_lives_in_one_thread() {
    let chat = FakeChat::start().await;
    let kabar = InProcess::start(config(&chat, |space| {
        space.option("mentions", json!({"critical": ["all"]}))
    }))
    .await;
    let (status, _) = post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("DiskFull", "firing")]),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("DiskFull", "resolved")]),
    )
    .await;
    assert_eq!(status, 200);
    chat.wait_for_messages("ops", 2, WAIT).await;
    let threads = chat.threads("ops");
    assert_eq!(threads.len(), 1, "{}", chat.describe("ops"));
    let [firing, resolved] = &threads[0].messages[..] else {
        panic!("two messages: {}", chat.describe("ops"));
    };
    assert_eq!(title(&firing.body), "🔴 DiskFull");
    assert_eq!(firing.body["text"], "<users/all>", "the configured mention");
    assert_eq!(
        firing.body["fallbackText"],
        "🔴 FIRING · DiskFull · critical"
    );
    assert_eq!(firing.ignored_widgets, 0);
    assert_eq!(title(&resolved.body), "✅ DiskFull");
    assert!(resolved.body.get("text").is_none(), "no mention on resolve");
    kabar.stop().await;
}

#[tokio::test]
async fn a_card_chat_refuses_is_sent_once_as_text_then_dead_lettered_if_that_fails_too() {
    let chat = FakeChat::start().await;
    // Only cards carry a collapsible "Other labels" section; "Poison" is in both forms.
    chat.reject_when_text_contains("Other labels", 400);
    chat.reject_when_text_contains("Poison", 400);
    let kabar = InProcess::start(config(&chat, |space| space)).await;
    let mut body = notification("ops", &[("CardRefused", "firing"), ("Poison", "firing")]);
    for alert in body["alerts"].as_array_mut().expect("alerts") {
        alert["labels"]["team"] = json!("storage");
    }
    let (status, answer) = post_alerts(&kabar.url("/alerts"), &body).await;
    assert_eq!((status, answer["queued"].clone()), (200, json!(2)));

    let delivered = chat.wait_for_messages("ops", 1, WAIT).await;
    let text = delivered[0].text.as_deref().unwrap_or("");
    assert!(
        text.starts_with("🔴 *FIRING* · *CardRefused*")
            && delivered[0].body.get("cardsV2").is_none(),
        "the text version: {}",
        delivered[0].body
    );
    let base = kabar.url("");
    let metrics = wait_for_metric(
        &base,
        "kabar_messages_dead_lettered_total{reason=\"clientError\",space=\"ops\"}",
        1.0,
        WAIT,
    )
    .await;
    // Three 400s in all: both cards and Poison's text; CardRefused's text went through.
    assert_eq!(
        metric_value(
            &metrics,
            "kabar_messages_failed_total{reason=\"clientError\",space=\"ops\"}"
        ),
        Some(3.0),
        "{}",
        chat.describe("ops")
    );
    let refused = chat
        .requests_for("ops")
        .iter()
        .filter(|r| r.status == 400)
        .count();
    assert_eq!(refused, 3, "{}", chat.describe("ops"));
    assert_eq!(chat.messages("ops").len(), 1);
    kabar.stop().await;
}

#[tokio::test]
async fn templates_reload_with_the_config() {
    let chat = FakeChat::start().await;
    let config = config(&chat, |space| space);
    let template = config.dir.path().join("mine.hbs");
    std::fs::write(&template, "v1 {{alert.name}}").expect("write template");
    config.rewrite_with(
        ConfigBuilder::new()
            .allow_any_host()
            .rate_limit_per_second(50.0)
            .space(
                "ops",
                Space::webhook(&chat.webhook_url("ops"))
                    .format("text")
                    .option("templates", json!({"text": "mine.hbs"})),
            ),
    );
    let kabar = InProcess::start(config).await;
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("First", "firing")]),
    )
    .await;
    chat.wait_for_messages("ops", 1, WAIT).await;

    std::fs::write(&template, "v2 {{alert.name}}").expect("rewrite template");
    let response = client()
        .post(kabar.url("/-/reload"))
        .bearer_auth(TEST_TOKEN)
        .send()
        .await
        .expect("reload");
    assert_eq!(response.status(), 200);
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("Second", "firing")]),
    )
    .await;
    let messages = chat.wait_for_messages("ops", 2, WAIT).await;
    let texts: Vec<&str> = messages.iter().filter_map(|m| m.text.as_deref()).collect();
    assert_eq!(texts, ["v1 First", "v2 Second"]);

    // A template that no longer compiles fails the reload and keeps the old one.
    std::fs::write(&template, "{{#if}}").expect("break template");
    let response = client()
        .post(kabar.url("/-/reload"))
        .bearer_auth(TEST_TOKEN)
        .send()
        .await
        .expect("reload");
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["error"].as_str().unwrap_or("").contains("mine.hbs"),
        "{body}"
    );
    post_alerts(
        &kabar.url("/alerts"),
        &notification("ops", &[("Third", "firing")]),
    )
    .await;
    let messages = chat.wait_for_messages("ops", 3, WAIT).await;
    assert_eq!(messages[2].text.as_deref(), Some("v2 Third"));
    let metrics = metrics_text(&kabar.url("")).await;
    assert_eq!(
        metric_value(&metrics, "kabar_config_last_reload_successful"),
        Some(0.0)
    );
    kabar.stop().await;
}
