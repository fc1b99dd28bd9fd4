//! What app mode keeps of an episode whose opening card carries action buttons: the card,
//! the labels a silence matches, who acknowledged and silenced it, the clicks handled.
//! It must not read clocks or the network: the actions pass `now` and their results in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The acknowledgements and silences a card lists; more are counted, not kept, so one
/// episode's state stays small whatever a busy space does with it.
pub(crate) const MAX_MARKS: usize = 10;
/// Clicks remembered to answer a redelivered one without acting again. Chat redelivers
/// within minutes; a card that saw this many presses since has moved on.
const MAX_CLICKS: usize = 64;

/// One episode's action state, stored as JSON behind the store port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct AppEpisodeState {
    /// The configured space (not the Chat space) the episode belongs to.
    pub space: String,
    pub alertname: String,
    /// The labels a silence matches; None when the alert has too many for a silence.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// The opening card as last queued (firing, or resolved once its edit was queued),
    /// without the buttons and lines app mode adds: what a click is answered with.
    pub card: String,
    #[serde(default)]
    pub resolved: bool,
    #[serde(default)]
    pub acks: Vec<Mark>,
    /// Acknowledgements beyond the kept ones.
    #[serde(default)]
    pub more_acks: u32,
    #[serde(default)]
    pub silences: Vec<SilenceMark>,
    #[serde(default)]
    pub more_silences: u32,
    /// Keys of the clicks handled, oldest first.
    #[serde(default)]
    pub clicks: Vec<String>,
}

/// Who did something, and when (Unix ms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Mark {
    pub name: String,
    pub email: String,
    pub at_ms: i64,
}

/// A silence made from the card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SilenceMark {
    pub by: Mark,
    pub until_ms: i64,
    pub id: String,
    /// The silence in Alertmanager's UI.
    pub url: String,
}

impl AppEpisodeState {
    pub(crate) fn parse(text: &str) -> Option<AppEpisodeState> {
        serde_json::from_str(text).ok()
    }

    pub(crate) fn to_json(&self) -> String {
        // A struct of strings, numbers and lists always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub(crate) fn acknowledged(&self) -> bool {
        !self.acks.is_empty()
    }

    /// Whether the click `key` was handled already.
    pub(crate) fn handled(&self, key: &str) -> bool {
        self.clicks.iter().any(|k| k == key)
    }

    /// Remembers the click `key` as handled (taken before it acts, so a redelivery that
    /// races the first one finds it).
    pub(crate) fn claim(&mut self, key: &str) {
        self.clicks.push(key.to_owned());
        if self.clicks.len() > MAX_CLICKS {
            let excess = self.clicks.len() - MAX_CLICKS;
            self.clicks.drain(..excess);
        }
    }

    /// Records an acknowledgement; the same person acknowledging again changes nothing.
    /// True when it was recorded.
    pub(crate) fn acknowledge(&mut self, by: Mark) -> bool {
        let same = |m: &Mark| {
            (!by.email.is_empty() && m.email.eq_ignore_ascii_case(&by.email))
                || (by.email.is_empty() && m.name == by.name)
        };
        if self.acks.iter().any(same) {
            return false;
        }
        if self.acks.len() < MAX_MARKS {
            self.acks.push(by);
        } else {
            self.more_acks = self.more_acks.saturating_add(1);
        }
        true
    }

    pub(crate) fn silenced(&mut self, silence: SilenceMark) {
        if self.silences.len() < MAX_MARKS {
            self.silences.push(silence);
        } else {
            self.more_silences = self.more_silences.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(name: &str, email: &str) -> Mark {
        Mark {
            name: name.into(),
            email: email.into(),
            at_ms: 1,
        }
    }

    #[test]
    fn acknowledgements_are_per_person_and_bounded() {
        let mut state = AppEpisodeState::default();
        assert!(state.acknowledge(mark("Ada", "ada@example.com")));
        assert!(!state.acknowledge(mark("Ada L.", "ADA@example.com")));
        assert!(state.acknowledge(mark("Bob", "bob@example.com")));
        for i in 0..20 {
            state.acknowledge(mark(&format!("u{i}"), &format!("u{i}@example.com")));
        }
        assert_eq!(state.acks.len(), MAX_MARKS);
        assert_eq!(state.more_acks, 12);
        let again = AppEpisodeState::parse(&state.to_json()).expect("parses");
        assert_eq!(again, state);
    }

    #[test]
    fn clicks_are_remembered_up_to_a_bound() {
        let mut state = AppEpisodeState::default();
        for i in 0..100 {
            state.claim(&format!("k{i}"));
        }
        assert_eq!(state.clicks.len(), MAX_CLICKS);
        assert!(state.handled("k99"));
        assert!(!state.handled("k0"));
    }

    #[test]
    fn older_or_garbage_documents_read_safely() {
        let minimal = r#"{"space":"ops","alertname":"A","card":"{}"}"#;
        let state = AppEpisodeState::parse(minimal).expect("parses");
        assert!(!state.acknowledged());
        assert!(AppEpisodeState::parse("not json").is_none());
        assert!(AppEpisodeState::parse("[]").is_none());
    }
}
