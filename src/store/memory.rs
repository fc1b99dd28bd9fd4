//! The in-memory adapter of the store port's episode half: `kabar render`, the golden
//! tests, the benches and the flow fuzz target plan against it. It must not outlive a run.

use std::collections::HashMap;

use super::EpisodeStore;
use crate::plan::{Episode, EpisodeKey, GroupEpisode};

/// Episode state in memory: `kabar render` and tests.
#[derive(Debug, Default)]
pub struct MemoryEpisodes {
    episodes: HashMap<EpisodeKey, Episode>,
    /// The latest notification (digest, when) per space and group.
    seen: HashMap<(String, u64), (u64, i64)>,
    groups: HashMap<(String, String), GroupEpisode>,
    /// App-mode action state per episode id: (space, state).
    app: HashMap<String, (String, String)>,
}

impl EpisodeStore for MemoryEpisodes {
    type Error = std::convert::Infallible;

    fn episode(&mut self, key: &EpisodeKey) -> Result<Option<Episode>, Self::Error> {
        Ok(self.episodes.get(key).cloned())
    }

    fn save_episode(
        &mut self,
        key: &EpisodeKey,
        episode: &Episode,
        _now_ms: i64,
    ) -> Result<(), Self::Error> {
        self.episodes.insert(key.clone(), episode.clone());
        Ok(())
    }

    fn latest_notification(
        &mut self,
        space: &str,
        group: u64,
    ) -> Result<Option<(u64, i64)>, Self::Error> {
        Ok(self.seen.get(&(space.to_owned(), group)).copied())
    }

    fn record_notification(
        &mut self,
        space: &str,
        group: u64,
        digest: u64,
        now_ms: i64,
    ) -> Result<(), Self::Error> {
        self.seen
            .insert((space.to_owned(), group), (digest, now_ms));
        Ok(())
    }

    fn group_episode(
        &mut self,
        space: &str,
        group_key: &str,
    ) -> Result<Option<GroupEpisode>, Self::Error> {
        Ok(self
            .groups
            .get(&(space.to_owned(), group_key.to_owned()))
            .cloned())
    }

    fn save_group_episode(
        &mut self,
        space: &str,
        group_key: &str,
        group: &GroupEpisode,
        _now_ms: i64,
    ) -> Result<(), Self::Error> {
        self.groups
            .insert((space.to_owned(), group_key.to_owned()), group.clone());
        Ok(())
    }

    fn app_episode(&mut self, episode_id: &str) -> Result<Option<String>, Self::Error> {
        Ok(self.app.get(episode_id).map(|(_, state)| state.clone()))
    }

    fn save_app_episode(
        &mut self,
        episode_id: &str,
        space: &str,
        state: &str,
        _now_ms: i64,
    ) -> Result<(), Self::Error> {
        self.app
            .insert(episode_id.to_owned(), (space.to_owned(), state.to_owned()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_episodes_are_kept_per_episode_and_replaced() {
        let mut store = MemoryEpisodes::default();
        assert_eq!(store.app_episode("a").expect("read"), None);
        store
            .save_app_episode("a", "spaces/X", r#"{"v":1}"#, 1)
            .expect("save");
        store
            .save_app_episode("b", "spaces/X", r#"{"v":2}"#, 1)
            .expect("save");
        store
            .save_app_episode("a", "spaces/X", r#"{"v":3}"#, 2)
            .expect("save");
        assert_eq!(
            store.app_episode("a").expect("read").as_deref(),
            Some(r#"{"v":3}"#)
        );
        assert_eq!(
            store.app_episode("b").expect("read").as_deref(),
            Some(r#"{"v":2}"#)
        );
    }
}
