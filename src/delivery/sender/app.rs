//! The sender's app-mode step: one create or edit through `chat_app`, its answer carried
//! out like a webhook's, and edits Chat refuses dropped. It must not build requests itself.

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{STORE_RETRY, Sender, Step};
use crate::chat::FailureClass;
use crate::chat_app::{AppRequest, create_write, describe};
use crate::config::Delivery;
use crate::delivery::decide::{self, Outcome};
use crate::delivery::pacing::Pacing;
use crate::plan::MessageKind;
use crate::store::{AppWrite, QueuedMessage, now_ms};

impl Sender {
    /// Writes the head message of an app-mode space as the Chat app, paced like any other
    /// write of the space.
    pub(super) async fn send_app(
        &self,
        message: &QueuedMessage,
        chat_space: &str,
        pacing: &mut Pacing,
        delivery: &Delivery,
    ) -> Step {
        let Some(settings) = self.shared.runtime().config.chat_app.clone() else {
            // The config checks this; a reload cannot take chat_app from a space using it.
            return Step::Retry { retry_after: None };
        };
        // A row queued while the space was a webhook space gets its id here, the same on
        // every try.
        let write = message.app.clone().unwrap_or_else(|| {
            let kind = MessageKind::ALL
                .into_iter()
                .find(|k| k.as_str() == message.kind)
                .unwrap_or(MessageKind::Reminder);
            create_write(
                &self.space,
                kind,
                false,
                message.thread_key.as_deref(),
                message.received_ms,
                &message.body,
            )
        });
        // A store that cannot say leaves the client- id, which addresses the same message.
        let known_name = if write.is_edit() {
            self.shared
                .store
                .message_name(&self.space, write.message_id())
                .await
                .unwrap_or_default()
        } else {
            None
        };
        let request = describe(
            chat_space,
            &write,
            message.thread_key.is_some(),
            known_name.as_deref(),
        );
        debug!(space = %self.space, id = message.id, request = %request.line(), "Chat app request");
        let body = self.with_actions(&settings, message, &write).await;
        if settings.dry_run {
            return self
                .print_app(message, &body, chat_space, &write, &request)
                .await;
        }
        let started = Instant::now();
        let (result, tokens) = self
            .shared
            .chat_app
            .send(&self.shared.chat, &settings, &request, &body)
            .await;
        self.shared
            .metrics
            .chat_answered(&self.space, started.elapsed());
        for _ in 0..tokens.refreshed {
            self.shared.metrics.token_refreshed(&self.space);
        }
        if let Some((class, detail)) = &tokens.failed {
            self.shared
                .metrics
                .token_failed(&self.space, *class, detail);
        }
        let outcome = decide::after_send(result.as_ref(), message.fallback_body.is_some());
        if matches!(
            outcome,
            Outcome::Retry {
                class: FailureClass::RateLimited,
                ..
            }
        ) {
            pacing.rate_limited();
        }
        pacing.answered(delivery);
        let accepted = result.as_ref().ok();
        if write.is_edit() {
            return match outcome {
                Outcome::Delivered => {
                    self.remove(message).await;
                    self.shared.metrics.edit_sent(&self.space, message.id);
                    Step::Next
                }
                // An edit Chat refuses for good (gone, not the app's, key refused) is not
                // worth a dead letter: the reply still tells the space.
                Outcome::DeadLetter { status, detail, .. } => {
                    self.drop_edit(message, status, &detail).await
                }
                other => self.perform(message, other, accepted).await,
            };
        }
        if matches!(outcome, Outcome::Delivered)
            && let Some(name) = accepted.and_then(|a| a.message_name.as_deref())
            && let Err(e) = self
                .shared
                .store
                .record_message_name(&self.space, write.message_id(), name, now_ms())
                .await
        {
            // Edits then address the message by its client- id, which Chat accepts too.
            warn!(space = %self.space, error = %e, "cannot record the created message's name");
        }
        self.perform(message, outcome, accepted).await
    }

    /// chat_app.dry_run: prints the request the app would make and treats it as done. A
    /// create "gets" the name Chat would give it (`spaces/…/messages/client-…`), so the
    /// printed edits address it as the real ones would.
    async fn print_app(
        &self,
        message: &QueuedMessage,
        body: &str,
        chat_space: &str,
        write: &AppWrite,
        request: &AppRequest,
    ) -> Step {
        let body = crate::chat_app::app_body(body, write.is_edit());
        // Alert data: Debug-quoted, so no line of it can pass for a log line of its own.
        info!(
            space = %self.space,
            kind = %message.kind,
            method = request.method,
            path = ?request.path,
            query = ?request.query_string(),
            body = ?body,
            "dry run, the Chat app would send"
        );
        if !write.is_edit() {
            let name = format!("{chat_space}/messages/{}", write.message_id());
            if let Err(e) = self
                .shared
                .store
                .record_message_name(&self.space, write.message_id(), &name, now_ms())
                .await
            {
                warn!(space = %self.space, error = %e, "cannot record the printed message's name");
            }
        }
        self.remove(message).await;
        self.shared.metrics.dry_run_delivered(&self.space);
        Step::Next
    }

    /// An opening card (its create, or its resolved edit) as it goes out now: with the
    /// lines of who acknowledged or silenced it and, while it fires, the action buttons.
    /// Drawn at sending, not queueing, so an acknowledgement made while the card waited
    /// in the queue is on it. Without a record (or a store to ask) it goes as queued.
    async fn with_actions(
        &self,
        settings: &crate::chat_app::ChatAppSettings,
        message: &QueuedMessage,
        write: &AppWrite,
    ) -> String {
        // An opening card is created firing and edited resolved; a resolved reply (a
        // create) is not one, and is not looked up.
        let opening_kind = matches!(
            (message.kind.as_str(), write.is_edit()),
            ("firing", false) | ("resolved", true)
        );
        let episode = crate::chat_app::actions::episodes::episode_of_message(write.message_id());
        let (Some(episode), true, true) = (episode, opening_kind, settings.events.is_some()) else {
            return message.body.clone();
        };
        let state = match self.shared.store.app_episode(episode).await {
            Ok(Some(text)) => crate::chat_app::actions::state::AppEpisodeState::parse(&text),
            Ok(None) => None,
            Err(e) => {
                warn!(space = %self.space, error = %e, "cannot read the card's actions; sending it without them");
                None
            }
        };
        let Some(state) = state else {
            return message.body.clone();
        };
        let firing = message.kind == "firing";
        crate::chat_app::actions::act::outgoing_card(
            settings,
            episode,
            &state,
            &message.body,
            firing,
        )
    }

    /// Drops an edit that cannot be made, counted and logged; the space moves on.
    pub(super) async fn drop_edit(
        &self,
        message: &QueuedMessage,
        status: Option<u16>,
        detail: &str,
    ) -> Step {
        self.shared
            .metrics
            .edit_refused(&self.space, message.id, status, detail);
        self.remove(message).await;
        Step::Next
    }

    /// Takes a finished edit out of the queue, waiting out a store that refuses it (an
    /// edit made twice is harmless, but moving on without the delete would repeat it
    /// after a restart).
    async fn remove(&self, message: &QueuedMessage) {
        while let Err(e) = self
            .shared
            .store
            .mark_delivered(message.id, crate::store::now_ms())
            .await
        {
            warn!(space = %self.space, error = %e, "cannot remove the edit from the outbox; retrying");
            if self.stopping() {
                break;
            }
            tokio::time::sleep(STORE_RETRY).await;
        }
    }
}
