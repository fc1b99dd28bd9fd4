//! Delivery: the per-space senders' lifecycle (one per configured space; wake, stop, retire).
//! It must not send or decide: `decide` says what an answer means, `pacing` when, `sender` acts.
//!
//! Each space drains its outbox in order, one request in flight, paced by a token bucket,
//! retrying what can succeed later and dead-lettering what cannot. A message leaves the
//! outbox only after Chat accepted it (or it was dead-lettered), so a crash at any point
//! re-sends at most the one message whose answer was lost.

mod decide;
mod leases;
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
use crate::store::{Store, Wakeup};

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

/// The running senders, one per configured space, and the leases that let them send.
pub(crate) struct Delivery {
    shared: Arc<Shared>,
    senders: std::sync::Mutex<Senders>,
    leases: Arc<leases::Leases>,
    /// Tells the lease keeper to release and stop, after the senders stopped.
    stop_leases: watch::Sender<bool>,
    background: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Delivery {
    pub(crate) fn new(shared: Arc<Shared>) -> Delivery {
        Delivery {
            shared,
            senders: std::sync::Mutex::new(Senders::default()),
            leases: Arc::new(leases::Leases::new()),
            stop_leases: watch::channel(false).0,
            background: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Starts what runs beside the senders: the lease keeper, and the wake-ups for
    /// messages other replicas queue.
    pub(crate) fn start(self: &Arc<Self>) {
        let keeper = tokio::spawn(leases::run(
            Arc::clone(&self.shared),
            Arc::clone(&self.leases),
            self.stop_leases.subscribe(),
        ));
        let mut tasks = vec![keeper];
        if let Some(mut wakeups) = self.shared.store.take_wakeups() {
            let delivery = Arc::downgrade(self);
            tasks.push(tokio::spawn(async move {
                while let Some(wakeup) = wakeups.recv().await {
                    let Some(delivery) = delivery.upgrade() else {
                        return;
                    };
                    match wakeup {
                        Wakeup::Space(space) => delivery.wake(&space),
                        Wakeup::All => delivery.wake_all(),
                    }
                }
            }));
        }
        if let Ok(mut background) = self.background.lock() {
            background.extend(tasks);
        }
    }

    fn wake_all(&self) {
        if let Ok(senders) = self.senders.lock() {
            for handle in senders.running.values() {
                handle.wake.notify_one();
            }
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
                    self.leases.watch(name),
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
        // Only now that no sender sends: the leases go to the other replicas at once.
        let _ = self.stop_leases.send(true);
        let background = match self.background.lock() {
            Ok(mut background) => std::mem::take(&mut *background),
            Err(_) => Vec::new(),
        };
        let mut background = background.into_iter();
        // The keeper first (it releases); the wake-up forwarder has nothing left to wake.
        if let Some(mut keeper) = background.next()
            && tokio::time::timeout(Duration::from_secs(3), &mut keeper)
                .await
                .is_err()
        {
            keeper.abort();
        }
        for task in background {
            task.abort();
        }
    }
}
