//! Per-space senders: each space drains its outbox in order, one request in flight, paced
//! by a token bucket, retrying what can succeed later and dead-lettering what cannot.
//!
//! A message leaves the outbox only after Chat accepted it (or it was dead-lettered), so a
//! crash at any point re-sends at most the one message whose answer was lost.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::chat::{ChatClient, SendFailure, backoff_delay};
use crate::config::{self, Config, Target};
use crate::metrics::{DeadLetterReason, Metrics};
use crate::outbox::{self, QueuedMessage, Store, now_ms};
use crate::runtime::Runtime;

/// How many queued messages a sender reads at once. Small: a space sends about one a
/// second, so a read lasts seconds anyway, while what is read stays in memory per space
/// (64 held ~24 MiB more with 100,000 cards queued over 100 spaces; bench/README.md).
const READ_AHEAD: usize = 8;
/// A sender re-checks its queue this often even without a wake-up, so nothing waits on a
/// lost notification.
pub const IDLE_POLL: Duration = Duration::from_secs(5);
/// How long to wait before reading the store again after it failed.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// What the HTTP side and the senders share: the live runtime (config and templates),
/// the store, the metrics and the HTTP client.
pub struct Shared {
    pub runtime: RwLock<Arc<Runtime>>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub chat: ChatClient,
}

impl Shared {
    pub fn runtime(&self) -> Arc<Runtime> {
        match self.runtime.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts a newly loaded runtime in place for everything that reads it next.
    pub fn replace_runtime(&self, runtime: Runtime) {
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
pub struct Delivery {
    shared: Arc<Shared>,
    senders: std::sync::Mutex<Senders>,
}

impl Delivery {
    pub fn new(shared: Arc<Shared>) -> Delivery {
        Delivery {
            shared,
            senders: std::sync::Mutex::new(Senders::default()),
        }
    }

    /// Starts senders for new spaces and stops those of spaces that left the config.
    pub fn sync_spaces(&self, config: &Config) {
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
                let sender = Sender {
                    space: name.clone(),
                    shared: Arc::clone(&self.shared),
                    wake: Arc::clone(&wake),
                    stopped,
                };
                let previous = senders.retiring.remove(name);
                let task = tokio::spawn(async move {
                    if let Some(previous) = previous {
                        debug!(space = %sender.space, "waiting for the space's previous sender to stop");
                        // An Err is a sender that panicked or was aborted: it is gone too.
                        let _ = previous.await;
                    }
                    sender.run().await;
                });
                senders
                    .running
                    .insert(name.clone(), SenderHandle { wake, stop, task });
            }
        }
    }

    /// New messages were committed for `space`.
    pub fn wake(&self, space: &str) {
        if let Ok(senders) = self.senders.lock()
            && let Some(handle) = senders.running.get(space)
        {
            handle.wake.notify_one();
        }
    }

    /// Asks every sender to stop after its request in flight and waits up to `grace`.
    pub async fn shutdown(&self, grace: Duration) {
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

/// When a space may send next: the token bucket after each answer, pushed further out by
/// the backoff after each failure.
struct Pacing {
    next_send: Instant,
    failures: u32,
    /// How many times slower than rate_limit_per_second this space is paced. A 429 says
    /// Chat allows the space less than configured (its quota is shared by every writer),
    /// so the pace halves; each delivery creeps back toward the configured rate.
    slowdown: f64,
}

/// Each delivery takes this factor off the slowdown: after a 429 the space stays near the
/// pace Chat accepted for a few dozen messages instead of probing with 429s again at once.
const SLOWDOWN_RECOVERY: f64 = 0.97;
const MAX_SLOWDOWN: f64 = 1024.0;

impl Pacing {
    /// Chat answered (whatever it said): the next request waits one interval. Paced from
    /// the answer, not the send: Chat counts arrivals, and a request that sets off on time
    /// can still arrive early relative to a previous one that was slow to get there.
    fn answered(&mut self, delivery: &config::Delivery) {
        self.next_send = Instant::now() + self.interval(delivery);
    }

    fn interval(&self, delivery: &config::Delivery) -> Duration {
        let configured = 1.0 / delivery.rate_limit_per_second;
        // Slowed down, the interval still never exceeds backoff.max (or the configured one).
        let ceiling = delivery.backoff_max.as_secs_f64().max(configured);
        Duration::from_secs_f64((configured * self.slowdown).min(ceiling))
    }

    fn rate_limited(&mut self) {
        self.slowdown = (self.slowdown * 2.0).min(MAX_SLOWDOWN);
    }

    fn delivered(&mut self) {
        self.failures = 0;
        self.slowdown = (self.slowdown * SLOWDOWN_RECOVERY).max(1.0);
    }

    /// The head message must be tried again; returns how long it waits.
    fn failed(&mut self, delivery: &config::Delivery, hint: Duration) -> Duration {
        self.failures += 1;
        let wait = backoff_delay(
            self.failures,
            delivery.backoff_initial,
            delivery.backoff_max,
            (!hint.is_zero()).then_some(hint),
            fastrand::f64(),
        );
        self.next_send = self.next_send.max(Instant::now() + wait);
        wait
    }
}

struct Sender {
    space: String,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    stopped: watch::Receiver<bool>,
}

/// What happened to the message at the head of the queue.
enum Step {
    /// Done with it (sent or dead-lettered): move on.
    Next,
    /// Try it again: after the server's hint if it gave one, else after the backoff
    /// (zero).
    RetryAfter(Duration),
    /// Chat answered 429: like `RetryAfter`, and the space is paced slower from now on.
    RateLimited(Duration),
    /// Chat refused the card as invalid: send the message's text version instead.
    UseFallback,
}

impl Sender {
    fn stopping(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Sleeps for `duration` unless told to stop first; false if stopping.
    async fn pause(&mut self, duration: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => !self.stopping(),
            _ = self.stopped.changed() => false,
        }
    }

    /// Waits until `at` unless told to stop first; false if stopping.
    async fn pause_until(&mut self, at: Instant) -> bool {
        let now = Instant::now();
        at <= now || self.pause(at - now).await
    }

    async fn run(mut self) {
        debug!(space = %self.space, "sender started");
        let mut queue: VecDeque<QueuedMessage> = VecDeque::new();
        // Messages this process already finished with; a failed delete must not resend.
        let mut last_done = 0i64;
        let mut pacing = Pacing {
            next_send: Instant::now(),
            failures: 0,
            slowdown: 1.0,
        };
        while !self.stopping() {
            if queue.is_empty() {
                let space = self.space.clone();
                match self
                    .shared
                    .store
                    .read(move |conn| outbox::next_messages(conn, &space, last_done, READ_AHEAD))
                    .await
                {
                    Ok(batch) => queue.extend(batch),
                    Err(e) => {
                        warn!(space = %self.space, error = %e, "cannot read the outbox; retrying");
                        if !self.pause(STORE_RETRY).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let Some(message) = queue.front().cloned() else {
                let wake = Arc::clone(&self.wake);
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = self.stopped.changed() => {}
                }
                continue;
            };
            let runtime = self.shared.runtime();
            let Some(space) = runtime.config.spaces.get(&self.space) else {
                break;
            };
            let target = space.target.clone();
            let delivery = runtime.config.delivery.clone();
            drop(runtime);

            let age =
                Duration::from_millis(now_ms().saturating_sub(message.received_ms).max(0) as u64);
            let step = if age > delivery.give_up_after {
                self.dead_letter(
                    &message,
                    DeadLetterReason::Expired,
                    None,
                    "not delivered within give_up_after",
                )
                .await
            } else {
                match target {
                    Target::DryRun => self.print(&message).await,
                    Target::Webhook(url) => {
                        if !self.pause_until(pacing.next_send).await {
                            break;
                        }
                        let step = self.send(&message, &url).await;
                        if matches!(step, Step::RateLimited(_)) {
                            pacing.rate_limited();
                        }
                        pacing.answered(&delivery);
                        step
                    }
                }
            };
            match step {
                Step::Next => {
                    queue.pop_front();
                    last_done = message.id;
                    pacing.delivered();
                }
                Step::UseFallback => {
                    if let Some(head) = queue.front_mut()
                        && let Some(text) = head.fallback_body.take()
                    {
                        head.body = text;
                    }
                }
                Step::RetryAfter(hint) | Step::RateLimited(hint) => {
                    let wait = pacing.failed(&delivery, hint);
                    debug!(space = %self.space, failures = pacing.failures, wait_ms = wait.as_millis() as u64, "waiting before retry");
                    if !self.pause_until(pacing.next_send).await {
                        break;
                    }
                }
            }
        }
        debug!(space = %self.space, "sender stopped");
    }

    async fn send(&self, message: &QueuedMessage, url: &crate::secret::Secret) -> Step {
        let metrics = &self.shared.metrics;
        let started = Instant::now();
        let result = self
            .shared
            .chat
            .post(url, &message.body, message.thread_key.is_some())
            .await;
        metrics
            .chat_request_duration
            .with_label_values(&[&self.space])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(accepted) => {
                let id = message.id;
                // Chat has it. Until the store records that, the space sends nothing else:
                // moving on would post every later message a second time after a restart,
                // where waiting bounds that to this one.
                while let Err(e) = self
                    .shared
                    .store
                    .write(move |conn| outbox::remove(conn, id))
                    .await
                {
                    warn!(space = %self.space, error = %e, "sent, but cannot remove it from the outbox; retrying");
                    if self.stopping() {
                        break;
                    }
                    tokio::time::sleep(STORE_RETRY).await;
                }
                metrics
                    .messages_sent
                    .with_label_values(&[&self.space])
                    .inc();
                let latency = now_ms().saturating_sub(message.received_ms).max(0) as f64 / 1000.0;
                metrics
                    .delivery_latency
                    .with_label_values(&[&self.space])
                    .observe(latency);
                debug!(
                    space = %self.space,
                    id = message.id,
                    kind = %message.kind,
                    thread = accepted.thread_name.as_deref().unwrap_or("(none)"),
                    "delivered"
                );
                Step::Next
            }
            Err(failure) => {
                metrics
                    .messages_failed
                    .with_label_values(&[&self.space, failure.class.as_str()])
                    .inc();
                if failure.status == Some(400) && message.fallback_body.is_some() {
                    return self.use_fallback(message, &failure).await;
                }
                if failure.class.is_permanent() {
                    let reason = if failure.class == crate::chat::FailureClass::AuthError {
                        DeadLetterReason::AuthError
                    } else {
                        DeadLetterReason::ClientError
                    };
                    return self
                        .dead_letter(message, reason, failure.status, &failure.detail)
                        .await;
                }
                self.retry_later(message, &failure).await
            }
        }
    }

    /// A card Chat calls invalid is sent once more as text; if that fails too, the text
    /// goes to the dead letters like any other rejected message.
    async fn use_fallback(&self, message: &QueuedMessage, failure: &SendFailure) -> Step {
        warn!(
            space = %self.space,
            id = message.id,
            error = ?failure.detail,
            "Chat refused the card; sending the message as text instead"
        );
        let (id, detail) = (message.id, failure.detail.clone());
        match self
            .shared
            .store
            .write(move |conn| outbox::switch_to_fallback(conn, id, &detail))
            .await
        {
            Ok(()) => Step::UseFallback,
            Err(e) => {
                warn!(space = %self.space, error = %e, "cannot record the switch to text");
                Step::RetryAfter(STORE_RETRY)
            }
        }
    }

    async fn retry_later(&self, message: &QueuedMessage, failure: &SendFailure) -> Step {
        warn!(
            space = %self.space,
            id = message.id,
            reason = failure.class.as_str(),
            error = ?failure.detail,
            "delivery failed; will retry"
        );
        let (id, detail) = (message.id, failure.detail.clone());
        if let Err(e) = self
            .shared
            .store
            .write(move |conn| outbox::record_failure(conn, id, &detail))
            .await
        {
            warn!(space = %self.space, error = %e, "cannot record the failed attempt");
        }
        let hint = failure.retry_after.unwrap_or(Duration::ZERO);
        if failure.class == crate::chat::FailureClass::RateLimited {
            Step::RateLimited(hint)
        } else {
            Step::RetryAfter(hint)
        }
    }

    async fn dead_letter(
        &self,
        message: &QueuedMessage,
        reason: DeadLetterReason,
        status: Option<u16>,
        detail: &str,
    ) -> Step {
        let (id, detail_text) = (message.id, detail.to_owned());
        let now = now_ms();
        match self
            .shared
            .store
            .write(move |conn| {
                outbox::dead_letter(conn, id, reason.as_str(), status, &detail_text, now)?;
                // The dead letter's own id, the one `kabar dead-letters --id` takes: the
                // row just inserted, when the outbox row existed (the DELETE changed one).
                Ok((conn.changes() == 1).then(|| conn.last_insert_rowid()))
            })
            .await
        {
            Ok(dead_letter_id) => {
                warn!(
                    space = %self.space,
                    id = dead_letter_id.unwrap_or(0),
                    reason = reason.as_str(),
                    error = ?detail,
                    "message dead-lettered (see kabar dead-letters list --id); the space moves on"
                );
                self.shared
                    .metrics
                    .messages_dead_lettered
                    .with_label_values(&[&self.space, reason.as_str()])
                    .inc();
                Step::Next
            }
            Err(e) => {
                // Keep it at the head and try again: a rejected request changed nothing.
                warn!(space = %self.space, error = %e, "cannot move the message to the dead letters");
                Step::RetryAfter(STORE_RETRY)
            }
        }
    }

    /// Dry-run spaces print what would be sent, then treat it as delivered.
    async fn print(&self, message: &QueuedMessage) -> Step {
        let text_of = |body: &str| {
            serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|body| body["text"].as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        // The message is alert data: every value Debug-quoted, so its line breaks, control
        // characters and ANSI escapes are printed as escapes and no line of it can pass
        // for a log line of its own, in text or JSON logs.
        match &message.fallback_body {
            // A card: its text version reads best in a log; the card itself follows.
            Some(fallback) => info!(
                space = %self.space,
                kind = %message.kind,
                thread_key = ?message.thread_key.as_deref().unwrap_or("(none)"),
                text = ?text_of(fallback),
                card = ?message.body,
                "dry run, would post a card (text is its text version)"
            ),
            None => info!(
                space = %self.space,
                kind = %message.kind,
                thread_key = ?message.thread_key.as_deref().unwrap_or("(none)"),
                text = ?text_of(&message.body),
                "dry run, would post"
            ),
        }
        debug!(space = %self.space, body = ?message.body, "dry run request body");
        let id = message.id;
        match self
            .shared
            .store
            .write(move |conn| outbox::remove(conn, id))
            .await
        {
            Ok(()) => {
                self.shared
                    .metrics
                    .messages_sent
                    .with_label_values(&[&self.space])
                    .inc();
                Step::Next
            }
            Err(e) => {
                warn!(space = %self.space, error = %e, "cannot remove the printed message from the outbox");
                Step::Next
            }
        }
    }
}

#[cfg(test)]
mod pacing_tests {
    use super::*;

    #[test]
    fn a_429_slows_the_space_and_deliveries_win_the_pace_back() {
        let delivery = config::Delivery {
            rate_limit_per_second: 5.0,
            backoff_max: Duration::from_secs(10),
            ..config::Delivery::default()
        };
        let mut pacing = Pacing {
            next_send: Instant::now(),
            failures: 0,
            slowdown: 1.0,
        };
        let configured = pacing.interval(&delivery);
        assert!(configured <= Duration::from_millis(200), "{configured:?}");
        for _ in 0..3 {
            pacing.rate_limited();
        }
        let slowed = pacing.interval(&delivery);
        assert!(slowed >= Duration::from_millis(1500), "{slowed:?}");
        pacing.delivered();
        let one_later = pacing.interval(&delivery);
        assert!(
            one_later < slowed && one_later > Duration::from_secs(1),
            "{one_later:?}"
        );
        for _ in 0..200 {
            pacing.delivered();
        }
        assert!(pacing.interval(&delivery) <= Duration::from_millis(200));
        for _ in 0..100 {
            pacing.rate_limited();
        }
        let capped = pacing.interval(&delivery);
        assert!(
            capped <= delivery.backoff_max,
            "never above backoff.max: {capped:?}"
        );
    }
}
