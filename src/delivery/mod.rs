//! Delivery: the per-space senders' lifecycle (one per configured space; wake, stop, retire).
//! It must not send or decide: `decide` says what an answer means, `pacing` when, `sender` acts.
//!
//! Each space drains its outbox in order, one request in flight, paced by a token bucket,
//! retrying what can succeed later and dead-lettering what cannot. A message leaves the
//! outbox only after Chat accepted it (or it was dead-lettered), so a crash at any point
//! re-sends at most the one message whose answer was lost.

mod decide;
mod pacing;
mod sender;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument as _, debug, info, warn};

use crate::chat::ChatClient;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::store::Store;

pub(crate) use decide::DeadLetterReason;
pub(crate) use sender::IDLE_POLL;
use sender::Sender;

/// What the HTTP side and the senders share: the live runtime (config and templates),
/// the store, the metrics and the HTTP client.
pub(crate) struct Shared {
    pub runtime: RwLock<Arc<Runtime>>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub chat: ChatClient,
    /// App mode's token cache (used by spaces with `space: spaces/…`).
    pub chat_app: crate::chat_app::ChatApp,
}

impl Shared {
    pub(crate) fn runtime(&self) -> Arc<Runtime> {
        match self.runtime.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts a newly loaded runtime in place for everything that reads it next.
    pub(crate) fn replace_runtime(&self, runtime: Runtime) {
        let runtime = Arc::new(runtime);
        match self.runtime.write() {
            Ok(mut guard) => *guard = runtime,
            Err(poisoned) => *poisoned.into_inner() = runtime,
        }
    }
}

struct SenderHandle {
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Senders {
    running: BTreeMap<String, SenderHandle>,
    /// Senders of spaces that left the config, told to stop but perhaps still finishing
    /// their request in flight. A space that comes back starts its new sender only after
    /// the old one ended: two senders of one space would break "one request in flight"
    /// and post the message in flight a second time.
    retiring: BTreeMap<String, JoinHandle<()>>,
}

/// The running senders, one per configured space.
pub(crate) struct Delivery {
    shared: Arc<Shared>,
    senders: std::sync::Mutex<Senders>,
}

impl Delivery {
    pub(crate) fn new(shared: Arc<Shared>) -> Delivery {
        Delivery {
            shared,
            senders: std::sync::Mutex::new(Senders::default()),
        }
    }

    /// Starts senders for new spaces and stops those of spaces that left the config.
    pub(crate) fn sync_spaces(&self, config: &Config) {
        let Ok(mut guard) = self.senders.lock() else {
            return;
        };
        let senders = &mut *guard;
        senders.retiring.retain(|_, task| !task.is_finished());
        let gone: Vec<String> = senders
            .running
            .keys()
            .filter(|name| !config.spaces.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(handle) = senders.running.remove(&name) {
                let _ = handle.stop.send(true);
                // A sender started after an earlier removal waits for the one before it,
                // so this task covers every older one too.
                senders.retiring.insert(name.clone(), handle.task);
                info!(space = %name, "space removed from config; its sender stops (queued messages stay on disk)");
            }
        }
        for name in config.spaces.keys() {
            if !senders.running.contains_key(name) {
                let wake = Arc::new(Notify::new());
                let (stop, stopped) = watch::channel(false);
                let sender = Sender::new(
                    name.clone(),
                    Arc::clone(&self.shared),
                    Arc::clone(&wake),
                    stopped,
                );
                let previous = senders.retiring.remove(name);
                // Every line the sender logs, the Chat client's included, names its space.
                let span = tracing::info_span!("sender", space = %name);
                let space = name.clone();
                let task = tokio::spawn(
                    async move {
                        if let Some(previous) = previous {
                            debug!(space = %space, "waiting for the space's previous sender to stop");
                            // An Err is a sender that panicked or was aborted: it is gone too.
                            let _ = previous.await;
                        }
                        sender.run().await;
                    }
                    .instrument(span),
                );
                senders
                    .running
                    .insert(name.clone(), SenderHandle { wake, stop, task });
            }
        }
    }

    /// New messages were committed for `space`.
    pub(crate) fn wake(&self, space: &str) {
        if let Ok(senders) = self.senders.lock()
            && let Some(handle) = senders.running.get(space)
        {
            handle.wake.notify_one();
        }
    }

    /// Asks every sender to stop after its request in flight and waits up to `grace`.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        let senders = match self.senders.lock() {
            Ok(mut senders) => std::mem::take(&mut *senders),
            Err(_) => return,
        };
        for handle in senders.running.values() {
            let _ = handle.stop.send(true);
        }
        let tasks = senders
            .running
            .into_iter()
            .map(|(space, handle)| (space, handle.task))
            .chain(senders.retiring);
        let deadline = Instant::now() + grace;
        for (space, mut task) in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                warn!(space = %space, "sender did not stop in time; its message stays queued");
                task.abort();
            }
        }
    }
}
