//! The app state every HTTP handler shares: the runtime, store, metrics and senders, and
//! the configuration reload. It must not know routes or HTTP answers (server and ingest do).

use std::path::PathBuf;
use std::sync::Arc;

use tracing::warn;

use crate::delivery::{Delivery, Shared};
use crate::runtime::Runtime;

/// State behind every HTTP handler.
pub(crate) struct AppState {
    pub shared: Arc<Shared>,
    pub delivery: Arc<Delivery>,
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// Chat's events: the token verifier and the bound on events in progress.
    pub(crate) events: crate::chat_app::actions::Events,
}

impl AppState {
    pub(crate) fn runtime(&self) -> Arc<Runtime> {
        self.shared.runtime()
    }

    /// Loads the config file again; on any error the running config stays.
    pub(crate) async fn reload(&self) -> Result<(), String> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let metrics = &self.shared.metrics;
        let Some(path) = self.config_path.clone() else {
            return Err("kabar was started without a config file".to_owned());
        };
        let loaded = tokio::task::spawn_blocking(move || Runtime::load(&path))
            .await
            .map_err(|e| format!("reload task failed: {e}"))?;
        let runtime = match loaded {
            Ok(runtime) => runtime,
            Err(e) => {
                metrics.reload_failed(&e);
                return Err(e.to_string());
            }
        };
        let old = self.runtime();
        if runtime.config.listen != old.config.listen
            || runtime.config.state_dir != old.config.state_dir
        {
            warn!("listen and state_dir changes take effect only after a restart");
        }
        if runtime.config.delivery.proxy_url != old.config.delivery.proxy_url
            || runtime.config.server != old.config.server
        {
            warn!("delivery.proxy_url and server changes take effect only after a restart");
        }
        for name in old.config.spaces.keys() {
            if !runtime.config.spaces.contains_key(name) {
                metrics.remove_space(name);
            }
        }
        for name in runtime.config.spaces.keys() {
            metrics.init_space(name);
        }
        warn_about_auth(&runtime);
        let spaces: Vec<String> = runtime.config.spaces.keys().cloned().collect();
        self.shared.replace_runtime(runtime);
        self.delivery.sync_spaces(&self.runtime().config);
        metrics.reloaded(&spaces.join(","));
        Ok(())
    }
}

pub(crate) fn warn_about_auth(runtime: &Runtime) {
    if runtime.config.auth.is_none() {
        warn!(
            "no auth configured: anyone who can reach kabar can post alerts; set auth.bearer_token_file"
        );
    }
    if runtime.config.delivery.allow_any_host {
        warn!(
            "delivery.allow_any_host is on: webhook URLs may point elsewhere than chat.googleapis.com"
        );
    }
}
