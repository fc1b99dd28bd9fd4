//! Hostile event bodies at the events endpoint: huge, deep, empty, wrong types, strange or
//! unknown episode ids, markup in names. Each gets an answer below 500; none stops kabar or
//! touches another episode, and an unsigned body is refused before it is read.

use serde_json::{Value, json};

use super::{EVENTS, PROJECT, card_text, click_event, start, updated};
use crate::common::chat_events::authorization;
use crate::common::kabar::client;

async fn post_raw(setup: &super::Setup, token: Option<String>, body: Vec<u8>) -> (u16, String) {
    let mut request = client()
        .post(setup.url(EVENTS))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.header("authorization", token);
    }
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test]
async fn hostile_event_bodies_never_get_a_5xx_nor_stop_kabar() {
    let setup = start(|b| b).await;
    let card = setup.fire("DiskFull").await;
    let episode = setup.episode_of(&card);
    let token = || authorization(&setup.signer.chat_token(PROJECT));
    let click = |episode: Value, action: Value| {
        json!({"type": "CARD_CLICKED", "user": {"name": "users/1", "displayName": "Eve"},
               "action": {"actionMethodName": action, "parameters": [{"key": "episode", "value": episode}]}})
        .to_string()
        .into_bytes()
    };
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    let deep_object =
        format!("{}1{}", "{\"type\":".repeat(20_000), "}".repeat(20_000)).into_bytes();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("empty", Vec::new(), 400),
        ("not JSON", b"{\"type\": CARD_CLICKED".to_vec(), 400),
        ("null", b"null".to_vec(), 400),
        ("an array", b"[{\"type\":\"CARD_CLICKED\"}]".to_vec(), 400),
        ("a string", b"\"CARD_CLICKED\"".to_vec(), 400),
        ("deep arrays", deep, 400),
        ("deep objects", deep_object, 400),
        ("huge", vec![b' '; 300 * 1024], 413),
        (
            "bytes that are not UTF-8",
            vec![0xff, 0xfe, b'{', b'}'],
            400,
        ),
        (
            "no action, no episode",
            br#"{"type":"CARD_CLICKED"}"#.to_vec(),
            200,
        ),
        (
            "an unknown episode",
            click(json!("0".repeat(24)), json!("ack")),
            200,
        ),
        (
            "an episode of upper-case hex",
            click(json!(episode.to_uppercase()), json!("ack")),
            200,
        ),
        (
            "a path as episode",
            click(json!("../../etc/passwd"), json!("ack")),
            200,
        ),
        (
            "a 200 KB episode",
            click(json!("a".repeat(200_000)), json!("ack")),
            200,
        ),
        (
            "an episode of the wrong type",
            click(json!({"id": episode}), json!("ack")),
            200,
        ),
        (
            "an action of the wrong type",
            click(json!(episode), json!(["ack"])),
            200,
        ),
        (
            "a duration never offered",
            click(json!(episode), json!("silence:8760h")),
            200,
        ),
        (
            "an unknown action",
            click(json!(episode), json!("drop_tables")),
            200,
        ),
        (
            "a type of the wrong type",
            br#"{"type":{"CARD_CLICKED":true},"user":7}"#.to_vec(),
            200,
        ),
        (
            "an add-on payload of the wrong type",
            br#"{"commonEventObject":{},"chat":{"buttonClickedPayload":[1]}}"#.to_vec(),
            200,
        ),
        (
            "an add-on click without anything",
            br#"{"commonEventObject":5,"chat":{"buttonClickedPayload":{}}}"#.to_vec(),
            200,
        ),
    ];
    for (name, body, expected) in cases {
        let (status, answer) = post_raw(&setup, token(), body).await;
        assert_eq!(status, expected, "{name}: {answer}");
        assert!(
            answer.len() < 4_096,
            "{name}: a short answer, got {} bytes",
            answer.len()
        );
    }
    // Unsigned, even a huge body is refused by its missing token, before it is read.
    let (status, _) = post_raw(&setup, None, vec![b' '; 300 * 1024]).await;
    assert_eq!(status, 401);

    // Markup and mentions in a name stay text on the card.
    let mut event = click_event("Eve", "ack", &episode, &card.name);
    event["user"]["displayName"] = json!("<users/all> <b>Eve</b>\u{202e}\u{0007}");
    let (status, answer, _) = setup.post_event(token(), &event).await;
    assert_eq!(status, 200);
    let shown = card_text(updated(&answer));
    assert!(
        shown.contains("Acknowledged by <b>&lt;users/all&gt; &lt;b&gt;Eve&lt;/b&gt;</b>"),
        "{shown}"
    );
    assert!(
        !shown.contains('\u{202e}') && !shown.contains('\u{7}'),
        "{shown}"
    );

    // kabar is well, and the real episode was not touched by the hostile clicks.
    let health = client()
        .get(setup.url("/healthz"))
        .send()
        .await
        .expect("answered");
    assert_eq!(health.status().as_u16(), 200);
    let (status, answer) = setup.click("Ada", "ack", &episode).await;
    assert_eq!(status, 200);
    assert_eq!(
        card_text(updated(&answer))
            .matches("Acknowledged by")
            .count(),
        2
    );
    assert_eq!(
        setup
            .metric("kabar_chat_app_actions_total{action=\"acknowledge\",result=\"done\"}")
            .await,
        2.0
    );
}
