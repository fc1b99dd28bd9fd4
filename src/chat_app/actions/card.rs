//! The opening card as app mode shows it: the card kabar rendered, plus the lines of who
//! acknowledged and silenced it and, while it fires, the Acknowledge and Silence buttons.
//! It must not decide anything: it draws the state it is given, within Chat's limits.

use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Value, json};

use super::state::{AppEpisodeState, Mark};
use crate::config::format_duration;
use crate::render::{MAX_BODY_BYTES, MAX_WIDGETS_PER_CARD};

/// The function of the Acknowledge button, as the event names it back.
pub(crate) const ACK: &str = "ack";
/// Silence buttons are `silence:<duration>`, the duration as the config writes it.
pub(crate) const SILENCE_PREFIX: &str = "silence:";
/// A name on the card is cut to this many characters.
const MAX_NAME_CHARS: usize = 80;

/// The buttons a firing card gets.
#[derive(Debug, Clone)]
pub(crate) struct Buttons<'a> {
    pub episode_id: &'a str,
    pub silences: &'a [Duration],
    /// Add-on apps call back a URL, not a function name: the endpoint's, with the action
    /// in its query. None: a classic app, which names the function.
    pub endpoint_url: Option<&'a str>,
}

impl Buttons<'_> {
    fn function(&self, action: &str) -> String {
        match self
            .endpoint_url
            .and_then(|url| reqwest::Url::parse(url).ok())
        {
            Some(mut url) => {
                url.query_pairs_mut().append_pair("action", action);
                url.to_string()
            }
            None => action.to_owned(),
        }
    }

    fn button(&self, text: &str, action: &str) -> Value {
        json!({"text": text, "onClick": {"action": {
            "function": self.function(action),
            "parameters": [{"key": "episode", "value": self.episode_id}],
        }}})
    }

    fn list(&self) -> Vec<Value> {
        let mut buttons = vec![self.button("Acknowledge", ACK)];
        for duration in self.silences {
            let written = silence_label(*duration);
            buttons.push(self.button(
                &format!("Silence {written}"),
                &format!("{SILENCE_PREFIX}{written}"),
            ));
        }
        buttons
    }
}

/// A Silence button's duration as people say it: `24h` rather than `1d` up to three days.
pub(crate) fn silence_label(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs.is_multiple_of(3_600) && secs < 72 * 3_600 && duration.subsec_nanos() == 0 {
        format!("{}h", secs / 3_600)
    } else {
        format_duration(duration)
    }
}

/// A user's name as card HTML: no tag, no mention, no control or direction character.
fn name_html(mark: &Mark) -> String {
    let name = if mark.name.trim().is_empty() {
        mark.email.as_str()
    } else {
        mark.name.as_str()
    };
    let mut out = String::new();
    for c in name.chars().take(MAX_NAME_CHARS) {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            c if c.is_control() || crate::render::is_bidi_control(c) => {}
            c => out.push(c),
        }
    }
    if out.trim().is_empty() {
        "someone".to_owned()
    } else {
        out
    }
}

/// `12:07 UTC`, or `Dec 3 16:07 UTC` when not on the day of `now_ms`: the card's other
/// times are UTC too.
pub(crate) fn clock(at_ms: i64, now_ms: i64) -> String {
    let zoned = |ms: i64| {
        Timestamp::from_millisecond(ms)
            .unwrap_or(Timestamp::UNIX_EPOCH)
            .to_zoned_datetime(TimeZone::UTC)
    };
    let (at, now) = (zoned(at_ms), zoned(now_ms));
    let format = if at.date() == now.date() {
        "%H:%M UTC"
    } else {
        "%b %-d %H:%M UTC"
    };
    jiff::fmt::strtime::format(format, &at).unwrap_or_default()
}

/// The lines the card shows about what people did, oldest first, and `notice` (what the
/// click just did or could not do) last.
pub(crate) fn status_lines(
    state: &AppEpisodeState,
    notice: Option<&str>,
    now_ms: i64,
) -> Vec<String> {
    let mut lines: Vec<String> = state
        .acks
        .iter()
        .map(|ack| {
            format!(
                "👀 Acknowledged by <b>{}</b> · {}",
                name_html(ack),
                clock(ack.at_ms, now_ms)
            )
        })
        .collect();
    if state.more_acks > 0 {
        lines.push(format!("👀 … and {} more", state.more_acks));
    }
    for silence in &state.silences {
        let link = crate::render::safe_link(&silence.url)
            .map(|url| format!(" · <a href=\"{url}\">silence</a>"))
            .unwrap_or_default();
        let verb = if silence.until_ms > now_ms {
            "Silenced until"
        } else {
            "Was silenced until"
        };
        lines.push(format!(
            "🔕 {verb} {} by <b>{}</b>{link}",
            clock(silence.until_ms, now_ms),
            name_html(&silence.by)
        ));
    }
    if state.more_silences > 0 {
        lines.push(format!("🔕 … and {} more silences", state.more_silences));
    }
    if let Some(notice) = notice {
        lines.push(format!("<i>{}</i>", notice_html(notice)));
    }
    lines
}

fn notice_html(notice: &str) -> String {
    notice
        .chars()
        .take(400)
        .filter(|c| !c.is_control())
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The card (a webhook-shaped body: text, cardsV2, …) with `lines` and, when given,
/// `buttons`. What does not fit Chat's limits is left off, newest lines kept first, then
/// the buttons, then nothing added: a card too full for its lines still goes out as it was.
pub(crate) fn decorate(body: &str, lines: &[String], buttons: Option<&Buttons<'_>>) -> String {
    let Ok(Value::Object(base)) = serde_json::from_str::<Value>(body) else {
        return body.to_owned();
    };
    let newest: Vec<String> = lines.last().cloned().into_iter().collect();
    let attempts: [(&[String], Option<&Buttons<'_>>); 4] = [
        (lines, buttons),
        (&newest, buttons),
        (&[], buttons),
        (lines, None),
    ];
    for (lines, buttons) in attempts {
        let mut object = base.clone();
        add(&mut object, lines, buttons);
        let value = Value::Object(object);
        if !widgets_fit(&value) {
            continue;
        }
        let text = value.to_string();
        if text.len() <= MAX_BODY_BYTES {
            return text;
        }
    }
    body.to_owned()
}

fn widgets_fit(value: &Value) -> bool {
    value
        .get("cardsV2")
        .and_then(Value::as_array)
        .is_none_or(|cards| {
            cards.iter().all(|card| {
                card.pointer("/card/sections")
                    .and_then(Value::as_array)
                    .map_or(0, |sections| {
                        sections
                            .iter()
                            .map(|s| {
                                s.get("widgets")
                                    .and_then(Value::as_array)
                                    .map_or(0, Vec::len)
                            })
                            .sum()
                    })
                    <= MAX_WIDGETS_PER_CARD
            })
        })
}

fn add(
    object: &mut serde_json::Map<String, Value>,
    lines: &[String],
    buttons: Option<&Buttons<'_>>,
) {
    if lines.is_empty() && buttons.is_none() {
        return;
    }
    let cards = object
        .entry("cardsV2")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(cards) = cards else { return };
    if cards.is_empty() {
        // A text space's message: the lines and buttons come as a small card of their own.
        cards.push(json!({"cardId": "kabar-actions", "card": {"sections": []}}));
    }
    let Some(sections) = cards[0]
        .pointer_mut("/card/sections")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    if !lines.is_empty() {
        let section = json!({"widgets": [{"textParagraph": {"text": lines.join("<br>")}}]});
        let at = sections.len().min(1);
        sections.insert(at, section);
    }
    if let Some(buttons) = buttons {
        let existing = sections.iter_mut().rev().find_map(|section| {
            section
                .get_mut("widgets")
                .and_then(Value::as_array_mut)?
                .iter_mut()
                .rev()
                .find_map(|w| {
                    w.pointer_mut("/buttonList/buttons")
                        .and_then(Value::as_array_mut)
                })
        });
        match existing {
            Some(list) => {
                let links = std::mem::take(list);
                *list = buttons.list();
                list.extend(links);
            }
            None => {
                sections.push(json!({"widgets": [{"buttonList": {"buttons": buttons.list()}}]}))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: i64 = 1_764_590_820_000; // 2025-12-01T12:07:00Z

    fn card_body() -> String {
        json!({"text": "", "cardsV2": [{"cardId": "kabar", "card": {"header": {"title": "A"}, "sections": [
            {"widgets": [{"textParagraph": {"text": "FIRING"}}]},
            {"widgets": [{"buttonList": {"buttons": [{"text": "Runbook", "onClick": {"openLink": {"url": "https://r.example"}}}]}}]}
        ]}}]})
        .to_string()
    }

    const SILENCES: [Duration; 2] = [Duration::from_secs(3600), Duration::from_secs(4 * 3600)];

    fn buttons(endpoint_url: Option<&str>) -> Buttons<'_> {
        Buttons {
            episode_id: "0123abcd",
            silences: &SILENCES,
            endpoint_url,
        }
    }

    #[test]
    fn action_buttons_come_before_the_link_buttons() {
        let decorated: Value =
            serde_json::from_str(&decorate(&card_body(), &[], Some(&buttons(None)))).expect("json");
        let list =
            &decorated["cardsV2"][0]["card"]["sections"][1]["widgets"][0]["buttonList"]["buttons"];
        let texts: Vec<&str> = list
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect();
        assert_eq!(
            texts,
            ["Acknowledge", "Silence 1h", "Silence 4h", "Runbook"]
        );
        assert_eq!(list[0]["onClick"]["action"]["function"], "ack");
        assert_eq!(list[1]["onClick"]["action"]["function"], "silence:1h");
        assert_eq!(
            list[0]["onClick"]["action"]["parameters"],
            json!([{"key": "episode", "value": "0123abcd"}])
        );
    }

    #[test]
    fn add_on_buttons_call_the_endpoint_with_the_action_in_the_query() {
        let decorated: Value = serde_json::from_str(&decorate(
            &card_body(),
            &[],
            Some(&buttons(Some("https://kabar.example/chat/events"))),
        ))
        .expect("json");
        let function = &decorated["cardsV2"][0]["card"]["sections"][1]["widgets"][0]["buttonList"]
            ["buttons"][1]["onClick"]["action"]["function"];
        assert_eq!(
            function,
            "https://kabar.example/chat/events?action=silence%3A1h"
        );
    }

    #[test]
    fn lines_show_who_did_what_without_markup_of_theirs() {
        let mut state = AppEpisodeState::default();
        state.acknowledge(Mark {
            name: "<users/all> Ada\u{202e}".into(),
            email: "ada@example.com".into(),
            at_ms: NOON,
        });
        let lines = status_lines(&state, Some("Could not silence: <b>x</b>"), NOON);
        assert_eq!(
            lines[0],
            "👀 Acknowledged by <b>&lt;users/all&gt; Ada</b> · 12:07 UTC"
        );
        assert_eq!(lines[1], "<i>Could not silence: &lt;b&gt;x&lt;/b&gt;</i>");
        assert_eq!(clock(NOON + 86_400_000, NOON), "Dec 2 12:07 UTC");
        let decorated: Value =
            serde_json::from_str(&decorate(&card_body(), &lines, None)).expect("json");
        assert_eq!(
            decorated["cardsV2"][0]["card"]["sections"][1]["widgets"][0]["textParagraph"]["text"],
            lines.join("<br>")
        );
    }

    #[test]
    fn a_full_card_keeps_its_buttons_before_its_lines_and_text_spaces_get_a_card() {
        let big = "x".repeat(MAX_BODY_BYTES - 600);
        let body = json!({"text": big, "cardsV2": [{"cardId": "kabar", "card": {"sections": [{"widgets": []}]}}]}).to_string();
        let lines = vec!["y".repeat(2_000)];
        let decorated = decorate(&body, &lines, Some(&buttons(None)));
        assert!(decorated.len() <= MAX_BODY_BYTES);
        assert!(decorated.contains("Acknowledge"));
        assert!(!decorated.contains(&lines[0]));
        let text_only = decorate(r#"{"text":"hi"}"#, &["l".into()], Some(&buttons(None)));
        let value: Value = serde_json::from_str(&text_only).expect("json");
        assert_eq!(value["cardsV2"][0]["cardId"], "kabar-actions");
        assert_eq!(decorate("not json", &["l".into()], None), "not json");
    }
}
