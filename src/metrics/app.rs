//! App mode's metrics (token refreshes and failures, edits sent and refused, Chat's events,
//! their verification and the actions they take), each with its log line where one is
//! due, beside the webhook ones. It must not decide anything about delivery or events.

use prometheus::{IntCounterVec, Registry};
use tracing::{debug, info, warn};

use super::{Metrics, counter};
use crate::chat::FailureClass;

/// App mode: the access token and the edits of opening cards.
pub(super) struct AppMetrics {
    token_refreshes: IntCounterVec,
    token_failures: IntCounterVec,
    edits: IntCounterVec,
    events: IntCounterVec,
    verification_failures: IntCounterVec,
    actions: IntCounterVec,
    silence_failures: IntCounterVec,
}

/// The results an action is counted by (`kabar_chat_app_actions_total{result}`).
const ACTION_RESULTS: [&str; 7] = [
    "done",
    "duplicate",
    "refused",
    "resolved",
    "failed",
    "unknown_episode",
    "unknown_action",
];

impl AppMetrics {
    pub(super) fn new(registry: &Registry) -> AppMetrics {
        AppMetrics {
            token_refreshes: counter(
                registry,
                "kabar_chat_app_token_refreshes_total",
                "Access tokens fetched from the service account's token endpoint.",
                &[],
            ),
            token_failures: counter(
                registry,
                "kabar_chat_app_token_failures_total",
                "Failed token requests, by class (authError: the key was refused).",
                &["class"],
            ),
            edits: counter(
                registry,
                "kabar_chat_app_edits_total",
                "Edits of opening cards, by result (sent, refused: Chat refused it for good and it was dropped).",
                &["space", "result"],
            ),
            events: counter(
                registry,
                "kabar_chat_app_events_total",
                "Requests to chat_app.events_path, by event type (unverified: refused before it was read) and result (answered, unauthorized, malformed, unavailable, busy).",
                &["type", "result"],
            ),
            verification_failures: counter(
                registry,
                "kabar_chat_app_event_verification_failures_total",
                "Event requests whose token did not verify, by reason; each was answered 401 (503 for keys_unavailable) and changed nothing.",
                &["reason"],
            ),
            actions: counter(
                registry,
                "kabar_chat_app_actions_total",
                "Button presses, by action (acknowledge, silence) and result.",
                &["action", "result"],
            ),
            silence_failures: counter(
                registry,
                "kabar_chat_app_silence_failures_total",
                "Silences Alertmanager did not create, by reason.",
                &["reason"],
            ),
        }
    }
}

impl Metrics {
    /// App mode fetched a new access token.
    pub(crate) fn token_refreshed(&self, space: &str) {
        debug!(target: "kabar::delivery", space = %space, "Chat app access token fetched");
        self.app
            .token_refreshes
            .with_label_values::<&str>(&[])
            .inc();
    }

    /// App mode could not get an access token; `detail` names no secret.
    pub(crate) fn token_failed(&self, space: &str, class: FailureClass, detail: &str) {
        warn!(
            target: "kabar::delivery",
            space = %space,
            class = class.as_str(),
            error = ?detail,
            "cannot get a Chat app access token"
        );
        self.app
            .token_failures
            .with_label_values(&[class.as_str()])
            .inc();
    }

    /// Every reason and result starts at 0, so a rate over them means something from the
    /// first scrape.
    pub(crate) fn init_app_events(&self, app_spaces: &[&str]) {
        self.app.token_refreshes.with_label_values::<&str>(&[]);
        for class in FailureClass::ALL {
            self.app.token_failures.with_label_values(&[class.as_str()]);
        }
        for space in app_spaces {
            for result in ["sent", "refused"] {
                self.app.edits.with_label_values(&[space, result]);
            }
        }
        for reason in crate::chat_app::silence::SilenceError::REASONS {
            self.app.silence_failures.with_label_values(&[reason]);
        }
        for reason in crate::chat_app::verify::VerifyError::REASONS {
            self.app.verification_failures.with_label_values(&[reason]);
        }
        for action in ["acknowledge", "silence"] {
            for result in ACTION_RESULTS {
                self.app.actions.with_label_values(&[action, result]);
            }
        }
        for kind in crate::chat_app::actions::event::EventKind::ALL {
            self.app.events.with_label_values(&[kind, "answered"]);
        }
        for result in ["unauthorized", "unavailable", "busy"] {
            self.app.events.with_label_values(&["unverified", result]);
        }
    }

    /// An event request ended: `kind` as read (or unverified/unreadable), and how.
    pub(crate) fn event_handled(&self, kind: &str, result: &str) {
        debug!(target: "kabar::events", event = kind, result, "Chat event handled");
        self.app.events.with_label_values(&[kind, result]).inc();
    }

    /// An event's token did not verify; `reason` is one of VerifyError::REASONS.
    pub(crate) fn event_verification_failed(&self, reason: &str) {
        info!(target: "kabar::events", reason, "a request to the events path did not verify; answered 401");
        self.app
            .verification_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// A button press was handled with `result`.
    pub(crate) fn action_done(&self, action: &str, result: &str) {
        self.app.actions.with_label_values(&[action, result]).inc();
    }

    /// Alertmanager did not create a silence, for `reason`.
    pub(crate) fn silence_failed(&self, reason: &str) {
        self.app.silence_failures.with_label_values(&[reason]).inc();
    }

    /// Chat took the edit of an opening card.
    pub(crate) fn edit_sent(&self, space: &str, id: i64) {
        info!(target: "kabar::delivery", space = %space, id, "opening card edited");
        self.app.edits.with_label_values(&[space, "sent"]).inc();
    }

    /// Chat refused an edit for good (the message is gone or not the app's): dropped.
    pub(crate) fn edit_refused(&self, space: &str, id: i64, status: Option<u16>, detail: &str) {
        warn!(
            target: "kabar::delivery",
            space = %space,
            id,
            status = status.unwrap_or(0),
            error = ?detail,
            "Chat refused the edit of the opening card; dropped, the space moves on"
        );
        self.app.edits.with_label_values(&[space, "refused"]).inc();
    }
}
