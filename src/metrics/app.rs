//! App mode's metrics (token refreshes and failures, edits sent and refused), each with
//! its log line, beside the webhook ones. It must not decide anything about delivery.

use prometheus::{IntCounterVec, Registry};
use tracing::{debug, info, warn};

use super::{Metrics, counter};
use crate::chat::FailureClass;

/// App mode: the access token and the edits of opening cards.
pub(super) struct AppMetrics {
    token_refreshes: IntCounterVec,
    token_failures: IntCounterVec,
    edits: IntCounterVec,
}

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
