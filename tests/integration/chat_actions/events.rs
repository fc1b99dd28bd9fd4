//! The events endpoint's verification and its other events: every forged token gets 401
//! and changes nothing, Google's keys unreachable is a 503 that recovers, ID tokens for the
//! endpoint URL and add-on events work, and ADDED_TO_SPACE and MESSAGE are answered.

use std::time::Duration;

use serde_json::json;

use super::{EVENTS, PROJECT, SPACE, buttons, card_text, click_event, start, updated};
use crate::common::chat_events::{Click, Forgery, addon_click, addon_email, authorization};
use crate::common::kabar::TEST_TOKEN;

#[tokio::test]
async fn every_forged_token_gets_401_and_changes_nothing() {
    let setup = start(|b| b).await;
    let card = setup.fire("DiskFull").await;
    let episode = setup.episode_of(&card);
    let event = click_event("Mallory", "ack", &episode, &card.name);
    let mut attempts = Vec::new();
    for forgery in Forgery::ALL {
        attempts.push((
            format!("{forgery:?}"),
            authorization(&setup.signer.forged(forgery, PROJECT)),
        ));
    }
    // kabar's own inbound credentials are not Chat's, and a token for another project is not.
    attempts.push((
        "kabar's auth token".into(),
        Some(format!("Bearer {TEST_TOKEN}")),
    ));
    attempts.push((
        "another project".into(),
        authorization(&setup.signer.chat_token("999")),
    ));
    attempts.push(("Basic".into(), Some("Basic dXNlcjpwYXNz".into())));
    let id_token = setup.signer.id_token(
        "https://kabar.example/chat/events",
        "chat@system.gserviceaccount.com",
    );
    attempts.push((
        "ID token without endpoint_url".into(),
        authorization(&id_token),
    ));
    for (name, token) in &attempts {
        let (status, answer, headers) = setup.post_event(token.clone(), &event).await;
        assert_eq!(status, 401, "{name}: {answer}");
        assert_eq!(headers["www-authenticate"], "Bearer", "{name}");
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("token")),
            "{name}: {answer}"
        );
        assert!(
            !answer.to_string().contains("Mallory"),
            "{name}: the body was not read"
        );
    }
    let text = crate::common::kabar::metrics_text(&setup.url("")).await;
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with("kabar_chat_app_event_verification_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, attempts.len() as f64, "{text}");
    for reason in [
        "missing_token",
        "unsupported_alg",
        "wrong_audience",
        "expired",
        "bad_signature",
        "unknown_key",
    ] {
        let series =
            format!("kabar_chat_app_event_verification_failures_total{{reason=\"{reason}\"}}");
        assert!(setup.metric(&series).await >= 1.0, "{reason}: {text}");
    }
    // Nothing changed: no acknowledgement was recorded, the first genuine one stands alone.
    assert_eq!(
        setup
            .metric("kabar_chat_app_actions_total{action=\"acknowledge\",result=\"done\"}")
            .await,
        0.0
    );
    let (status, answer) = setup.click("Ada", "ack", &episode).await;
    assert_eq!(status, 200);
    let shown = card_text(updated(&answer));
    assert_eq!(shown.matches("Acknowledged by").count(), 1, "{shown}");
    assert!(!shown.contains("Mallory"), "{shown}");
    assert_eq!(
        setup.google.messages(SPACE)[0].edits,
        0,
        "no edit was queued by a forgery"
    );
}

#[tokio::test]
async fn unreachable_keys_answer_503_and_recover() {
    let setup = start(|b| b).await;
    let card = setup.fire("DiskFull").await;
    let episode = setup.episode_of(&card);
    setup.certs.set_failing(true);
    let event = click_event("Ada", "ack", &episode, &card.name);
    let token = authorization(&setup.signer.chat_token(PROJECT));
    let (status, answer, headers) = setup.post_event(token.clone(), &event).await;
    assert_eq!(status, 503, "{answer}");
    assert!(headers.contains_key("retry-after"));
    setup.certs.set_failing(false);
    // A failed fetch is not retried at once (a flood must not hammer Google): within seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, answer, _) = setup.post_event(token.clone(), &event).await;
        if status == 200 {
            assert!(card_text(updated(&answer)).contains("Acknowledged by <b>Ada</b>"));
            break;
        }
        assert_eq!(status, 503, "{answer}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the keys never came back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn id_tokens_for_the_endpoint_url_and_add_on_events_are_understood() {
    let endpoint = "https://kabar.example.com/chat/events";
    let setup = start(|b| b.chat_app_option("endpoint_url", json!(endpoint))).await;
    let card = setup.fire("DiskFull").await;
    let ack = buttons(&card.body)
        .into_iter()
        .find(|b| b.text == "Acknowledge")
        .expect("an Acknowledge button");
    // An add-on button calls the endpoint; the action travels in its query.
    let function = ack.function.expect("a function");
    assert_eq!(function, format!("{endpoint}?action=ack"));
    let episode = ack.episode.expect("an episode");
    let token = setup.signer.id_token(endpoint, &addon_email(PROJECT));
    let click = Click {
        user: "users/42",
        display_name: "Grace",
        email: "grace@example.com",
        space: SPACE,
        message: &card.name,
        action: "ack",
        episode: &episode,
    };
    let event = addon_click(&click, &function, &token);
    let (status, answer, _) = setup.post_event(authorization(&token), &event).await;
    assert_eq!(status, 200, "{answer}");
    let message = &answer["hostAppDataAction"]["chatDataAction"]["updateMessageAction"]["message"];
    assert!(
        card_text(message).contains("Acknowledged by <b>Grace</b>"),
        "{answer}"
    );
    assert!(
        answer.get("actionResponse").is_none(),
        "add-on answers use their own envelope"
    );
    // An ID token from anyone but Chat or the add-on's service account is refused.
    let other = setup.signer.id_token(endpoint, "someone@evil.test");
    let (status, _, _) = setup.post_event(authorization(&other), &event).await;
    assert_eq!(status, 401);
    // Classic tokens keep working beside ID tokens.
    let (status, _) = setup.click("Ada", "ack", &episode).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn added_to_space_and_messages_are_answered_and_other_events_get_nothing() {
    let setup = start(|b| b).await;
    let token = || authorization(&setup.signer.chat_token(PROJECT));
    let added = json!({"type": "ADDED_TO_SPACE", "space": {"name": "spaces/AAAAnew_Space-1", "type": "ROOM"},
                       "user": {"name": "users/1", "displayName": "Ada"}});
    let (status, answer, _) = setup.post_event(token(), &added).await;
    assert_eq!(status, 200);
    let text = answer["text"].as_str().expect("a text answer");
    assert!(text.contains("space: spaces/AAAAnew_Space-1"), "{text}");
    // A space id that is not one is not echoed.
    let odd = json!({"type": "ADDED_TO_SPACE", "space": {"name": "spaces/<users/all>"}});
    let (_, answer, _) = setup.post_event(token(), &odd).await;
    assert!(!answer.to_string().contains("<users/all>"), "{answer}");

    let message = json!({"type": "MESSAGE", "message": {"text": "help"}, "space": {"name": SPACE},
                         "user": {"name": "users/1"}});
    let (_, answer, _) = setup.post_event(token(), &message).await;
    let help = answer["text"].as_str().expect("help");
    assert!(
        help.contains("Acknowledge") && help.contains("kabar"),
        "{help}"
    );

    let addon_added = json!({"commonEventObject": {"hostApp": "CHAT"},
                             "chat": {"user": {"name": "users/1"}, "addedToSpacePayload": {"space": {"name": "spaces/AAAAaddon"}}}});
    let (_, answer, _) = setup.post_event(token(), &addon_added).await;
    let text =
        answer["hostAppDataAction"]["chatDataAction"]["createMessageAction"]["message"]["text"]
            .as_str()
            .expect("an add-on answer");
    assert!(text.contains("spaces/AAAAaddon"), "{text}");

    let removed = json!({"type": "REMOVED_FROM_SPACE", "space": {"name": SPACE}});
    let (status, answer, _) = setup.post_event(token(), &removed).await;
    assert_eq!((status, answer), (200, json!({})));
    // GET is not an event; other paths are kabar's 404.
    let get = crate::common::kabar::client()
        .get(setup.url(EVENTS))
        .send()
        .await
        .expect("answered");
    assert_eq!(get.status().as_u16(), 404);
    assert_eq!(
        setup
            .metric("kabar_chat_app_events_total{result=\"answered\",type=\"added_to_space\"}")
            .await,
        3.0
    );
}
