//! `kabar store copy`: a single-replica SQLite store moved into PostgreSQL — the queue in
//! order, episodes, groups, digests, app state and dead letters — in one transaction. It
//! must not touch the source (read-only, under its state_dir lock) nor send anything.

use std::collections::BTreeSet;
use std::path::Path;

use super::StoreError;
use super::postgres::import::PostgresImport;
use super::sqlite::export::SqliteExport;
use crate::config::Config;

/// Rows read and written at a time: bounds memory whatever the store's size.
const PAGE: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(
        "{0} has no store.postgres: store copy writes into the PostgreSQL store a config names"
    )]
    NotPostgres(String),
    #[error("no kabar store at {0}")]
    NoSource(String),
    #[error("{0}")]
    SourceInUse(#[from] crate::state_dir::StateDirError),
    #[error(
        "the PostgreSQL store already holds kabar data; copy into an empty database, or pass --force to add to it"
    )]
    TargetNotEmpty,
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a copy moved.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Copied {
    pub messages: usize,
    pub dead_letters: usize,
    pub episodes: usize,
    pub groups: usize,
    pub digests: usize,
    pub names: usize,
    pub app_episodes: usize,
    pub spaces: BTreeSet<String>,
}

/// Copies the SQLite store under `state_dir` into the PostgreSQL store `config` names.
/// The source's state_dir lock is held throughout, so a kabar still serving it makes the
/// copy refuse instead of racing it.
pub(crate) async fn copy(
    config: &Config,
    state_dir: &Path,
    force: bool,
) -> Result<Copied, CopyError> {
    let Some(settings) = &config.store.postgres else {
        return Err(CopyError::NotPostgres("the config".to_owned()));
    };
    let _lock = crate::state_dir::StateDirLock::acquire(state_dir)?;
    let source = SqliteExport::open(state_dir)?.ok_or_else(|| {
        CopyError::NoSource(
            state_dir
                .join(super::sqlite::DATABASE_FILE)
                .display()
                .to_string(),
        )
    })?;
    let target = PostgresImport::begin(settings).await?;
    if !force && !target.is_empty().await? {
        return Err(CopyError::TargetNotEmpty);
    }
    let mut copied = Copied::default();
    let mut after = 0;
    loop {
        let page = source.messages(after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        copied.spaces.extend(page.iter().map(|m| m.space.clone()));
        copied.messages += page.len();
        target.messages(&page).await?;
    }
    let mut after = 0;
    loop {
        let page = source.dead_letters(after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        copied.dead_letters += page.len();
        target.dead_letters(&page).await?;
    }
    let mut after = None;
    loop {
        let page = source.episodes(after.as_ref(), PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        copied.episodes += page.len();
        target.episodes(&page).await?;
    }
    let mut after: Option<(String, String)> = None;
    loop {
        let page = source.names(after.as_ref().map(|(s, m)| (s.as_str(), m.as_str())), PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some((last.space.clone(), last.message_id.clone()));
        copied.names += page.len();
        target.names(&page).await?;
    }
    let mut after: Option<String> = None;
    loop {
        let page = source.app_episodes(after.as_deref(), PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.episode_id.clone());
        copied.app_episodes += page.len();
        target.app_episodes(&page).await?;
    }
    let groups = source.groups()?;
    copied.groups = groups.len();
    for chunk in groups.chunks(PAGE) {
        target.groups(chunk).await?;
    }
    let digests = source.digests()?;
    copied.digests = digests.len();
    for chunk in digests.chunks(PAGE) {
        target.digests(chunk).await?;
    }
    let spaces: Vec<String> = copied.spaces.iter().cloned().collect();
    target.commit(&spaces).await?;
    Ok(copied)
}

/// The command: copies and reports what it moved, where to, and what to do next.
pub fn run(config_path: &Path, state_dir: &Path, force: bool) -> Result<String, CopyError> {
    let config = Config::load(config_path)?;
    if config.store.postgres.is_none() {
        return Err(CopyError::NotPostgres(config_path.display().to_string()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Internal(format!("cannot start the runtime: {e}")))?;
    let copied = runtime.block_on(copy(&config, state_dir, force))?;
    let target = super::location(&config);
    let mut out = format!(
        "copied {} queued message(s), {} dead letter(s), {} episode(s), {} per_group thread(s), {} digest(s), {} app message name(s) and {} app episode state(s) from {} into {target}\n",
        copied.messages,
        copied.dead_letters,
        copied.episodes,
        copied.groups,
        copied.digests,
        copied.names,
        copied.app_episodes,
        state_dir.join(super::sqlite::DATABASE_FILE).display(),
    );
    let unconfigured: Vec<&str> = copied
        .spaces
        .iter()
        .filter(|space| !config.spaces.contains_key(*space))
        .map(String::as_str)
        .collect();
    if !unconfigured.is_empty() {
        out.push_str(&format!(
            "warning: queued messages of spaces not in {}: {} (they wait until those spaces are configured)\n",
            config_path.display(),
            unconfigured.join(", ")
        ));
    }
    out.push_str("start the replicas with this config; keep the old state_dir until they have delivered the queue\n");
    Ok(out)
}
