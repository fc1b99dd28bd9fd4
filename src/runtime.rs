//! The loaded configuration: config plus its compiled templates, replaced as one on reload
//! so no request ever sees a config with another config's templates. Holds no state.

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::render::{RenderFailure, Renderer};

#[derive(Debug)]
pub struct Runtime {
    pub config: Config,
    pub renderer: Renderer,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Template(#[from] RenderFailure),
}

impl Runtime {
    pub fn new(config: Config) -> Result<Runtime, LoadError> {
        let renderer = Renderer::new(&config)?;
        Ok(Runtime { config, renderer })
    }

    pub fn load(path: &Path) -> Result<Runtime, LoadError> {
        Runtime::new(Config::load(path)?)
    }
}
