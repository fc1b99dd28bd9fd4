//! One space's sender loop: reads the outbox in order and performs what `decide` made of
//! each answer (send, switch to text, retry, dead-letter). It decides nothing itself.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

mod app;

use super::Shared;
use super::decide::{self, DeadLetterReason, Outcome};
use super::leases::Lease;
use super::pacing::Pacing;
use crate::chat::{Accepted, FailureClass};
use crate::config::Target;
use crate::store::{DeadLetterRecord, QueuedMessage, now_ms};

/// How many queued messages a sender reads at once. Small: a space sends about one a
/// second, so a read lasts seconds anyway, while what is read stays in memory per space
/// (64 held ~24 MiB more with 100,000 cards queued over 100 spaces; bench/README.md).
const READ_AHEAD: usize = 8;
/// A sender re-checks its queue this often even without a wake-up, so nothing waits on a
/// lost notification.
pub(crate) const IDLE_POLL: Duration = Duration::from_secs(5);
/// How long to wait before reading the store again after it failed.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Messages finished with but not removed (a failed delete) that reads leave out; past
/// this many the oldest are forgotten (and may be sent again) rather than grow memory.
const MAX_UNREMOVED: usize = 1024;

pub(super) struct Sender {
    space: String,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    stopped: watch::Receiver<bool>,
    /// This replica's lease of the space: nothing is sent without a valid one.
    lease: watch::Receiver<Lease>,
    /// Messages this process finished with whose removal failed: a read must not send
    /// them again.
    unremoved: Mutex<VecDeque<i64>>,
}

/// What the loop does after performing an outcome.
enum Step {
    /// Done with the head message (sent or dead-lettered): move on.
    Next,
    /// Try it again: after `retry_after` (kept within the backoff range) or the backoff.
    Retry { retry_after: Option<Duration> },
    /// Send the head message's text version next.
    UseFallback,
}

/// A step for when the store refused the write that performing an outcome needs: the
/// message stays at the head (a refused write changed nothing) and is tried again.
const STORE_FAILED: Step = Step::Retry {
    retry_after: Some(STORE_RETRY),
};

impl Sender {
    pub(super) fn new(
        space: String,
        shared: Arc<Shared>,
        wake: Arc<Notify>,
        stopped: watch::Receiver<bool>,
        lease: watch::Receiver<Lease>,
    ) -> Sender {
        Sender {
            space,
            shared,
            wake,
            stopped,
            lease,
            unremoved: Mutex::new(VecDeque::new()),
        }
    }

    fn unremoved(&self) -> Vec<i64> {
        self.unremoved
            .lock()
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default()
    }

    fn note_unremoved(&self, id: i64) {
        if let Ok(mut ids) = self.unremoved.lock() {
            if ids.len() == MAX_UNREMOVED {
                ids.pop_front();
            }
            ids.push_back(id);
        }
    }

    fn lease_valid(&self) -> bool {
        self.lease.borrow().valid()
    }

    /// Waits until this replica holds the space's lease; false if stopping first. Answers
    /// when Chat last answered for the space, by whichever replica sent.
    async fn until_held(&mut self) -> Option<Option<i64>> {
        loop {
            if self.stopping() {
                return None;
            }
            let lease = *self.lease.borrow_and_update();
            if let Lease::Held { last_answer_ms, .. } = lease
                && lease.valid()
            {
                return Some(last_answer_ms);
            }
            tokio::select! {
                changed = self.lease.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = self.stopped.changed() => {}
            }
        }
    }

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

    pub(super) async fn run(mut self) {
        debug!(space = %self.space, "sender started");
        let mut queue: VecDeque<QueuedMessage> = VecDeque::new();
        let mut pacing = Pacing::new();
        let mut held = false;
        while !self.stopping() {
            if !self.lease_valid() {
                if held {
                    info!(space = %self.space, "no longer holds the space's lease; stops sending for it");
                }
                // Another replica sends from here on; what it sends is read afresh.
                queue.clear();
                let Some(last_answer_ms) = self.until_held().await else {
                    break;
                };
                pacing.resume_after(last_answer_ms, &self.shared.runtime().config.delivery);
                continue;
            }
            held = true;
            if queue.is_empty() {
                match self
                    .shared
                    .store
                    .next_messages(&self.space, self.unremoved(), READ_AHEAD)
                    .await
                {
                    Ok(batch) => queue.extend(batch),
                    Err(e) => {
                        self.shared.metrics.store_error(e.kind());
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
            let step = if let Some(expired) = decide::before_send(age, delivery.give_up_after) {
                self.perform(&message, expired, None).await
            } else {
                match target {
                    Target::DryRun => self.print(&message).await,
                    Target::App { space } => {
                        if !self.pause_until(pacing.next_send).await {
                            break;
                        }
                        // As for webhooks: no request on a lease this replica lost.
                        if !self.lease_valid() {
                            continue;
                        }
                        self.send_app(&message, &space, &mut pacing, &delivery)
                            .await
                    }
                    // Queued while the space posted as the app: a webhook cannot edit.
                    Target::Webhook(_) if message.app.as_ref().is_some_and(|a| a.is_edit()) => {
                        self.drop_edit(
                            &message,
                            None,
                            "the space now posts through a webhook, which cannot edit",
                        )
                        .await
                    }
                    Target::Webhook(url) => {
                        if !self.pause_until(pacing.next_send).await {
                            break;
                        }
                        // Checked last, right before the request: a replica that was paused
                        // past its lease must not post on it.
                        if !self.lease_valid() {
                            continue;
                        }
                        let started = Instant::now();
                        let result = self
                            .shared
                            .chat
                            .post(&url, &message.body, message.thread_key.is_some())
                            .await;
                        self.shared
                            .metrics
                            .chat_answered(&self.space, started.elapsed());
                        let outcome =
                            decide::after_send(result.as_ref(), message.fallback_body.is_some());
                        if matches!(
                            outcome,
                            Outcome::Retry {
                                class: FailureClass::RateLimited,
                                ..
                            }
                        ) {
                            pacing.rate_limited();
                        }
                        pacing.answered(&delivery);
                        self.perform(&message, outcome, result.as_ref().ok()).await
                    }
                }
            };
            match step {
                Step::Next => {
                    queue.pop_front();
                    pacing.delivered();
                }
                Step::UseFallback => {
                    if let Some(head) = queue.front_mut()
                        && let Some(text) = head.fallback_body.take()
                    {
                        head.body = text;
                    }
                }
                Step::Retry { retry_after } => {
                    let wait = pacing.failed(&delivery, retry_after);
                    debug!(space = %self.space, failures = pacing.failures, wait_ms = wait.as_millis() as u64, "waiting before retry");
                    if !self.pause_until(pacing.next_send).await {
                        break;
                    }
                }
            }
        }
        debug!(space = %self.space, "sender stopped");
    }

    /// Carries out what `decide` made of the head message; `accepted` is Chat's answer
    /// when it took the message.
    async fn perform(
        &self,
        message: &QueuedMessage,
        outcome: Outcome,
        accepted: Option<&Accepted>,
    ) -> Step {
        match outcome {
            Outcome::Delivered => self.remove_delivered(message, accepted).await,
            Outcome::UseFallback { class, detail } => {
                self.shared
                    .metrics
                    .card_refused(&self.space, message.id, class, &detail);
                self.use_fallback(message, detail).await
            }
            Outcome::Retry {
                class,
                detail,
                retry_after,
            } => {
                self.shared
                    .metrics
                    .retry_scheduled(&self.space, message.id, class, &detail);
                self.record_failure(message, detail).await;
                Step::Retry { retry_after }
            }
            Outcome::DeadLetter {
                reason,
                status,
                detail,
            } => {
                if let Some(class) = attempt_class(reason) {
                    self.shared.metrics.refused_for_good(&self.space, class);
                }
                self.dead_letter(message, reason, status, detail).await
            }
        }
    }

    async fn remove_delivered(&self, message: &QueuedMessage, accepted: Option<&Accepted>) -> Step {
        let id = message.id;
        // Chat has it. Until the store records that, the space sends nothing else:
        // moving on would post every later message a second time after a restart,
        // where waiting bounds that to this one.
        while let Err(e) = self.shared.store.mark_delivered(id, now_ms()).await {
            self.shared.metrics.store_error(e.kind());
            warn!(space = %self.space, error = %e, "sent, but cannot remove it from the outbox; retrying");
            if self.stopping() {
                self.note_unremoved(id);
                break;
            }
            tokio::time::sleep(STORE_RETRY).await;
        }
        let latency =
            Duration::from_millis(now_ms().saturating_sub(message.received_ms).max(0) as u64);
        self.shared.metrics.delivered(
            &self.space,
            message.id,
            &message.kind,
            accepted.and_then(|accepted| accepted.thread_name.as_deref()),
            latency,
        );
        Step::Next
    }

    /// A card Chat calls invalid is sent once more as text; if that fails too, the text
    /// goes to the dead letters like any other rejected message.
    async fn use_fallback(&self, message: &QueuedMessage, detail: String) -> Step {
        let id = message.id;
        match self.shared.store.switch_to_fallback(id, &detail).await {
            Ok(()) => Step::UseFallback,
            Err(e) => {
                self.shared.metrics.store_error(e.kind());
                warn!(space = %self.space, error = %e, "cannot record the switch to text");
                STORE_FAILED
            }
        }
    }

    async fn record_failure(&self, message: &QueuedMessage, detail: String) {
        let id = message.id;
        if let Err(e) = self
            .shared
            .store
            .record_failure(id, &detail, now_ms())
            .await
        {
            self.shared.metrics.store_error(e.kind());
            warn!(space = %self.space, error = %e, "cannot record the failed attempt");
        }
    }

    async fn dead_letter(
        &self,
        message: &QueuedMessage,
        reason: DeadLetterReason,
        status: Option<u16>,
        detail: String,
    ) -> Step {
        let record = DeadLetterRecord {
            reason: reason.as_str(),
            status,
            detail: detail.clone(),
            dead_ms: now_ms(),
        };
        // Answers the dead letter's own id, the one `kabar dead-letters --id` takes.
        match self.shared.store.dead_letter(message.id, record).await {
            Ok(dead_letter_id) => {
                self.shared
                    .metrics
                    .dead_lettered(&self.space, dead_letter_id, reason, &detail);
                Step::Next
            }
            Err(e) => {
                // Keep it at the head and try again: a rejected request changed nothing.
                self.shared.metrics.store_error(e.kind());
                warn!(space = %self.space, error = %e, "cannot move the message to the dead letters");
                STORE_FAILED
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
        match self.shared.store.mark_delivered(id, now_ms()).await {
            Ok(()) => {
                self.shared.metrics.dry_run_delivered(&self.space);
                Step::Next
            }
            Err(e) => {
                self.shared.metrics.store_error(e.kind());
                warn!(space = %self.space, error = %e, "cannot remove the printed message from the outbox");
                self.note_unremoved(id);
                Step::Next
            }
        }
    }
}

/// The class of the refused attempt behind a dead letter, for kabar_messages_failed_total;
/// none for a message that expired unsent.
fn attempt_class(reason: DeadLetterReason) -> Option<FailureClass> {
    match reason {
        DeadLetterReason::AuthError => Some(FailureClass::AuthError),
        DeadLetterReason::ClientError => Some(FailureClass::ClientError),
        DeadLetterReason::Expired => None,
    }
}
