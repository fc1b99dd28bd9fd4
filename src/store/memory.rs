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
}
