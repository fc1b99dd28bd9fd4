//! The planner's side of app-mode actions: what a notification records of an episode whose
//! card carries buttons (the card, the labels, resolved or not), and whether its reminders
//! are off because someone acknowledged it. It must not render, queue or talk to Chat.

use super::state::AppEpisodeState;
use crate::payload::Alert;
use crate::plan::{EpisodeKey, MessageKind};
use crate::render::MAX_CONTEXT_LABELS;
use crate::store::EpisodeStore;

/// The id an episode's buttons carry: the digest part of its opening card's `client-` id.
pub(crate) fn episode_id(space: &str, alert: &Alert) -> String {
    let thread = EpisodeKey::new(space, alert).thread_key();
    let opening = crate::chat_app::ids::opening_id(space, &thread);
    opening
        .strip_prefix("client-")
        .unwrap_or(&opening)
        .to_owned()
}

/// The episode id an app-mode write addresses, when it is an opening card's.
pub(crate) fn episode_of_message(message_id: &str) -> Option<&str> {
    message_id
        .strip_prefix("client-")
        .filter(|id| super::act::valid_episode_id(id))
}

/// Whether someone acknowledged the episode of `alert`: its reminders are then left out.
pub(crate) fn acknowledged<S: EpisodeStore + ?Sized>(
    store: &mut S,
    space: &str,
    alert: &Alert,
) -> Result<bool, S::Error> {
    let id = episode_id(space, alert);
    Ok(store
        .app_episode(&id)?
        .and_then(|text| AppEpisodeState::parse(&text))
        .is_some_and(|state| state.acknowledged()))
}

/// Label sets larger than this (names and values together) get no Silence button: a
/// silence must match the labels exactly, so they cannot be cut, and a payload may hold
/// megabyte values that would otherwise sit in every episode's state and request.
const MAX_SILENCE_LABEL_BYTES: usize = 16 * 1024;

/// Whether a Silence button can match `alert`: not more matchers than the context keeps
/// (a silence of hundreds is not one anyone means), and not more bytes than the bound.
fn silenceable(alert: &Alert) -> bool {
    alert.labels.len() <= MAX_CONTEXT_LABELS
        && alert
            .labels
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum::<usize>()
            <= MAX_SILENCE_LABEL_BYTES
}

/// Records what a message of `kind` about `alert` means for its episode's actions: a
/// firing card that opens the thread starts the record (the card, the labels a silence
/// would match), the opening card's resolved edit replaces the card and ends the buttons,
/// any resolve marks it resolved, and firing again needs acknowledging again.
/// `opening_card` is the body queued for the opening card, when this message queued one.
pub(crate) fn record<S: EpisodeStore + ?Sized>(
    store: &mut S,
    space: &str,
    alert: &Alert,
    kind: MessageKind,
    opening_card: Option<&str>,
    now_ms: i64,
) -> Result<(), S::Error> {
    let id = episode_id(space, alert);
    let known = store
        .app_episode(&id)?
        .and_then(|text| AppEpisodeState::parse(&text));
    let state = match (kind, known, opening_card) {
        (MessageKind::Firing, known, Some(card)) => {
            let mut state = known.unwrap_or_default();
            state.space = space.to_owned();
            state.alertname = alert.name().to_owned();
            state.labels = silenceable(alert).then(|| alert.labels.clone());
            state.card = card.to_owned();
            state.resolved = false;
            state
        }
        (MessageKind::Resolved, Some(mut state), card) => {
            if let Some(card) = card {
                state.card = card.to_owned();
            }
            state.resolved = true;
            state
        }
        (MessageKind::FiringAgain, Some(mut state), _) => {
            state.resolved = false;
            state.acks.clear();
            state.more_acks = 0;
            state
        }
        _ => return Ok(()),
    };
    store.save_app_episode(&id, space, &state.to_json(), now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(labels: &[(&str, String)]) -> Alert {
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::from_value(serde_json::json!({
            "status": "firing", "labels": labels, "annotations": {},
            "startsAt": "2026-12-01T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": "abc"
        }))
        .expect("an alert")
    }

    #[test]
    fn only_label_sets_a_silence_can_carry_whole_are_kept() {
        assert!(silenceable(&alert(&[("alertname", "A".into())])));
        assert!(!silenceable(&alert(&[("alertname", "x".repeat(20_000))])));
        let names: Vec<String> = (0..101).map(|i| format!("l{i}")).collect();
        let many: Vec<(&str, String)> = names.iter().map(|n| (n.as_str(), "v".into())).collect();
        assert!(!silenceable(&alert(&many)));
    }
}
