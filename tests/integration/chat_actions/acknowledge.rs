//! Acknowledge: who and when on the card, reminders stopped, a second person shown too, a
//! redelivered click acting once, the lines kept on the resolved card and across restarts,
//! and people outside allowed_domains refused politely.

use std::time::Duration;

use serde_json::json;

use super::{SPACE, WAIT, buttons, card_text, click_event, start, updated};
use crate::common::chat_events::authorization;
use crate::common::kabar::{InProcess, age_last_posts, notification, post_alerts};

/// Posts the firing notification of DiskFull again, as if reminder_interval had passed
/// since the last post: a reminder, unless someone acknowledged it.
async fn renotify(setup: &super::Setup) {
    age_last_posts(&setup.kabar.config, 120_000);
    let (status, _) = post_alerts(
        &setup.url("/alerts"),
        &notification("ops", &[("DiskFull", "firing")]),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn acknowledge_marks_the_card_stops_reminders_and_stays_on_the_resolved_card() {
    let setup = start(|b| b.default_reminder_interval("1m")).await;
    let card = setup.fire("DiskFull").await;
    let labels: Vec<String> = buttons(&card.body).into_iter().map(|b| b.text).collect();
    // Without chat_app.alertmanager there is nothing to silence with: Acknowledge only,
    // before the card's own link buttons.
    assert_eq!(
        labels.first().map(String::as_str),
        Some("Acknowledge"),
        "{labels:?}"
    );
    assert!(
        !labels.iter().any(|l| l.starts_with("Silence ")),
        "{labels:?}"
    );
    let episode = setup.episode_of(&card);
    assert_eq!(episode.len(), 24);
    assert_eq!(
        card.client_id.as_deref(),
        Some(format!("client-{episode}").as_str()),
        "the button names the episode of the card it is on"
    );

    // Unacknowledged, the alert reminds.
    renotify(&setup).await;
    setup
        .google
        .wait_until("a reminder", WAIT, |g| g.messages(SPACE).len() == 2)
        .await;

    let (status, answer) = setup.click("Ada Lovelace", "ack", &episode).await;
    assert_eq!(status, 200, "{answer}");
    let shown = card_text(updated(&answer));
    assert!(
        shown.contains("👀 Acknowledged by <b>Ada Lovelace</b> · "),
        "{shown}"
    );
    assert!(shown.contains(" UTC"), "{shown}");
    assert_eq!(
        buttons(&answer)[0].text,
        "Acknowledge",
        "buttons stay while it fires"
    );
    assert_eq!(
        setup
            .metric("kabar_chat_app_actions_total{action=\"acknowledge\",result=\"done\"}")
            .await,
        1.0
    );

    // Acknowledged, it does not.
    for _ in 0..2 {
        renotify(&setup).await;
    }
    assert_eq!(
        setup
            .metric("kabar_alerts_suppressed_total{reason=\"acknowledged\",space=\"ops\"}")
            .await,
        2.0
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        setup.google.messages(SPACE).len(),
        2,
        "no reminder after the acknowledgement"
    );

    // Someone else acknowledges too; Chat then delivers that click a second time.
    let (_, answer) = setup.click("Bob", "ack", &episode).await;
    let shown = card_text(updated(&answer));
    assert!(
        shown.contains("by <b>Ada Lovelace</b>") && shown.contains("by <b>Bob</b>"),
        "{shown}"
    );
    let (status, again) = setup.click("Bob", "ack", &episode).await;
    assert_eq!(status, 200);
    assert_eq!(
        card_text(updated(&again))
            .matches("Acknowledged by")
            .count(),
        2
    );
    assert_eq!(
        setup
            .metric("kabar_chat_app_actions_total{action=\"acknowledge\",result=\"duplicate\"}")
            .await,
        1.0
    );

    // The resolve edits the opening card: green, both lines kept, no buttons to act with.
    post_alerts(
        &setup.url("/alerts"),
        &notification("ops", &[("DiskFull", "resolved")]),
    )
    .await;
    setup
        .google
        .wait_until("the resolved edit", WAIT, |g| {
            g.messages(SPACE)[0].edits >= 1
        })
        .await;
    let resolved = setup.google.messages(SPACE)[0].clone();
    let shown = card_text(&resolved.body);
    assert!(shown.contains("RESOLVED"), "{shown}");
    assert!(
        shown.contains("by <b>Ada Lovelace</b>") && shown.contains("by <b>Bob</b>"),
        "{shown}"
    );
    assert!(
        !buttons(&resolved.body)
            .iter()
            .any(|b| b.text == "Acknowledge"),
        "{}",
        resolved.body
    );
    // A late press on the resolved card changes nothing and says why.
    let (_, late) = setup.click("Carol", "ack", &episode).await;
    let shown = card_text(updated(&late));
    assert!(shown.contains("has resolved"), "{shown}");
    assert!(!shown.contains("Carol"), "{shown}");
}

#[tokio::test]
async fn acknowledgements_survive_a_restart() {
    let setup = start(|b| b).await;
    let card = setup.fire("DiskFull").await;
    let episode = setup.episode_of(&card);
    let (status, _) = setup.click("Ada", "ack", &episode).await;
    assert_eq!(status, 200);
    let super::Setup {
        google,
        certs,
        signer,
        kabar,
        builder,
    } = setup;
    let config = kabar.stop().await;
    let kabar = InProcess::start(config).await;
    let setup = super::Setup {
        google,
        certs,
        signer,
        kabar,
        builder,
    };
    let (status, answer) = setup.click("Bob", "ack", &episode).await;
    assert_eq!(status, 200, "{answer}");
    let shown = card_text(updated(&answer));
    assert!(
        shown.contains("by <b>Ada</b>") && shown.contains("by <b>Bob</b>"),
        "{shown}"
    );
}

#[tokio::test]
async fn people_outside_allowed_domains_are_refused_on_the_card() {
    let setup = start(|b| {
        b.default_reminder_interval("1m")
            .chat_app_option("allowed_domains", json!(["example.com"]))
    })
    .await;
    let card = setup.fire("DiskFull").await;
    let episode = setup.episode_of(&card);
    let mut event = click_event("Mallory", "ack", &episode, &card.name);
    event["user"]["email"] = json!("mallory@example.com.evil.test");
    let (status, answer, _) = setup
        .post_event(
            authorization(&setup.signer.chat_token(super::PROJECT)),
            &event,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let shown = card_text(updated(&answer));
    assert!(
        shown.contains("only people from example.com can act"),
        "{shown}"
    );
    assert!(!shown.contains("Acknowledged by"), "{shown}");
    assert_eq!(
        setup
            .metric("kabar_chat_app_actions_total{action=\"acknowledge\",result=\"refused\"}")
            .await,
        1.0
    );
    // Nothing was recorded: the alert still reminds.
    renotify(&setup).await;
    setup
        .google
        .wait_until("a reminder", WAIT, |g| g.messages(SPACE).len() == 2)
        .await;
    // Someone from the domain may.
    let (_, answer) = setup.click("Ada", "ack", &episode).await;
    assert!(card_text(updated(&answer)).contains("Acknowledged by <b>Ada</b>"));
}
