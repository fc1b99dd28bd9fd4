//! kabar's own metrics, modelled on Alertmanager's notifier metrics, recorded as events:
//! each thing that happens is one method that counts it and writes its log line together.
//! Labels are bounded (space names from config and small fixed enums; never a URL,
//! fingerprint or alert name) and alert data is logged Debug-quoted only. It must not
//! decide anything: callers say what happened, this records it.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use std::fmt::Display;
use std::time::Duration;

use tracing::{debug, error, info, warn};

mod app;
mod fleet;

use crate::chat::FailureClass;
use crate::delivery::DeadLetterReason;
use crate::plan::{MessageKind, SuppressReason};

/// Why an HTTP request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectReason {
    Unauthorized,
    BadRequest,
    UnknownRoute,
    TooLarge,
    UnsupportedMediaType,
    BareAlertArray,
    StoreUnavailable,
    /// `server.max_concurrent_requests` webhook requests were already in progress.
    Overloaded,
}

impl RejectReason {
    pub(crate) const ALL: [RejectReason; 8] = [
        RejectReason::Unauthorized,
        RejectReason::BadRequest,
        RejectReason::UnknownRoute,
        RejectReason::TooLarge,
        RejectReason::UnsupportedMediaType,
        RejectReason::BareAlertArray,
        RejectReason::StoreUnavailable,
        RejectReason::Overloaded,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::BadRequest => "badRequest",
            RejectReason::UnknownRoute => "unknownReceiver",
            RejectReason::TooLarge => "tooLarge",
            RejectReason::UnsupportedMediaType => "unsupportedMediaType",
            RejectReason::BareAlertArray => "bareAlertArray",
            RejectReason::StoreUnavailable => "storeUnavailable",
            RejectReason::Overloaded => "overloaded",
        }
    }
}

pub(crate) struct Metrics {
    registry: Registry,
    notifications_received: IntCounterVec,
    requests_rejected: IntCounterVec,
    alerts_received: IntCounterVec,
    alerts_suppressed: IntCounterVec,
    messages_queued: IntCounterVec,
    messages_sent: IntCounterVec,
    messages_failed: IntCounterVec,
    messages_dead_lettered: IntCounterVec,
    chat_request_duration: HistogramVec,
    delivery_latency: HistogramVec,
    outbox_messages: IntGaugeVec,
    outbox_oldest_age: GaugeVec,
    dead_letters: IntGaugeVec,
    template_fallbacks: IntCounterVec,
    messages_truncated: IntCounterVec,
    config_last_reload_successful: IntGauge,
    config_last_reload_success_timestamp: Gauge,
    /// The store's and the replicas' series (writable, backend, leases, errors).
    fleet: fleet::FleetMetrics,
    /// App mode's series (token, edits): added after the webhook ones.
    app: app::AppMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Registers `metric` and hands it back. The names and helps are constants of this file, so
/// a failure is a bug caught by every test that starts kabar.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("static metric definition is valid");
    registered(registry, metric)
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
    let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["space"])
        .expect("static metric definition is valid");
    registered(registry, metric)
}

impl Metrics {
    /// Registers every series; `version` and `revision` go into kabar_build_info.
    pub(crate) fn new(version: &str, revision: &str) -> Metrics {
        let registry = Registry::new();
        let build_info = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "kabar_build_info",
                    "Always 1; labels carry the version and git revision.",
                ),
                &["version", "revision"],
            )
            .expect("valid"),
        );
        build_info.with_label_values(&[version, revision]).set(1);

        let gauge_vec = |name: &str, help: &str| {
            registered(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), &["space"]).expect("valid"),
            )
        };
        let outbox_messages = gauge_vec("kabar_outbox_messages", "Messages waiting in the outbox.");
        let dead_letters = gauge_vec(
            "kabar_dead_letters",
            "Messages currently in the dead-letter table.",
        );
        let outbox_oldest_age = registered(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "kabar_outbox_oldest_message_age_seconds",
                    "Age of the oldest message waiting in the outbox, 0 when empty.",
                ),
                &["space"],
            )
            .expect("valid"),
        );
        let reload_ok = registered(
            &registry,
            IntGauge::new(
                "kabar_config_last_reload_successful",
                "Whether the last configuration load or reload succeeded.",
            )
            .expect("valid"),
        );
        let reload_ts = registered(
            &registry,
            Gauge::new(
                "kabar_config_last_reload_success_timestamp_seconds",
                "Time of the last successful configuration load or reload.",
            )
            .expect("valid"),
        );

        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registered once");

        Metrics {
            notifications_received: counter(
                &registry,
                "kabar_notifications_received_total",
                "Alertmanager notifications accepted, per space they were routed to.",
                &["space"],
            ),
            requests_rejected: counter(
                &registry,
                "kabar_requests_rejected_total",
                "Webhook requests refused, by reason.",
                &["reason"],
            ),
            alerts_received: counter(
                &registry,
                "kabar_alerts_received_total",
                "Alerts in accepted notifications, by status.",
                &["space", "status"],
            ),
            alerts_suppressed: counter(
                &registry,
                "kabar_alerts_suppressed_total",
                "Alerts that needed no message, by reason.",
                &["space", "reason"],
            ),
            messages_queued: counter(
                &registry,
                "kabar_messages_queued_total",
                "Messages durably queued for Chat, by kind.",
                &["space", "kind"],
            ),
            messages_sent: counter(
                &registry,
                "kabar_messages_sent_total",
                "Messages accepted by Chat (or printed, for dry-run spaces).",
                &["space"],
            ),
            messages_failed: counter(
                &registry,
                "kabar_messages_failed_total",
                "Failed delivery attempts, by reason.",
                &["space", "reason"],
            ),
            messages_dead_lettered: counter(
                &registry,
                "kabar_messages_dead_lettered_total",
                "Messages given up on and moved to the dead-letter table, by reason.",
                &["space", "reason"],
            ),
            chat_request_duration: histogram(
                &registry,
                "kabar_chat_request_duration_seconds",
                "Latency of requests to the Chat webhook API.",
                vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            delivery_latency: histogram(
                &registry,
                "kabar_delivery_latency_seconds",
                "Time from receiving a notification to Chat accepting its message.",
                vec![
                    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                ],
            ),
            template_fallbacks: counter(
                &registry,
                "kabar_template_fallbacks_total",
                "Messages rendered with the built-in template because the space's template failed.",
                &["space"],
            ),
            messages_truncated: counter(
                &registry,
                "kabar_messages_truncated_total",
                "Messages cut to fit Chat's limits.",
                &["space"],
            ),
            outbox_messages,
            outbox_oldest_age,
            dead_letters,
            config_last_reload_successful: reload_ok,
            config_last_reload_success_timestamp: reload_ts,
            fleet: fleet::FleetMetrics::new(&registry),
            app: app::AppMetrics::new(&registry),
            registry,
        }
    }

    /// Every series of a space: one list, so creating and removing them cannot drift apart.
    fn space_series<'a>(&'a self, space: &'a str) -> Vec<(&'a dyn SpaceSeries, Vec<&'a str>)> {
        let mut series: Vec<(&dyn SpaceSeries, Vec<&str>)> = vec![
            (&self.notifications_received, vec![space]),
            (&self.messages_sent, vec![space]),
            (&self.chat_request_duration, vec![space]),
            (&self.delivery_latency, vec![space]),
            (&self.outbox_messages, vec![space]),
            (&self.outbox_oldest_age, vec![space]),
            (&self.dead_letters, vec![space]),
            (&self.template_fallbacks, vec![space]),
            (&self.messages_truncated, vec![space]),
        ];
        for status in ["firing", "resolved"] {
            series.push((&self.alerts_received, vec![space, status]));
        }
        for reason in SuppressReason::ALL {
            series.push((&self.alerts_suppressed, vec![space, reason.as_str()]));
        }
        for kind in MessageKind::ALL {
            series.push((&self.messages_queued, vec![space, kind.as_str()]));
        }
        for class in FailureClass::ALL {
            series.push((&self.messages_failed, vec![space, class.as_str()]));
        }
        for reason in DeadLetterReason::ALL {
            series.push((&self.messages_dead_lettered, vec![space, reason.as_str()]));
        }
        series
    }

    /// Creates every series of a space at zero, so dashboards and rate() see it at once.
    pub(crate) fn init_space(&self, space: &str) {
        for (vec, labels) in self.space_series(space) {
            vec.create(&labels);
        }
        self.fleet.init_space(space);
    }

    /// Drops the series of a space that left the config.
    pub(crate) fn remove_space(&self, space: &str) {
        for (vec, labels) in self.space_series(space) {
            vec.remove(&labels);
        }
        self.fleet.remove_space(space);
    }

    pub(crate) fn init_reject_reasons(&self) {
        for reason in RejectReason::ALL {
            self.requests_rejected.with_label_values(&[reason.as_str()]);
        }
    }

    fn reject(&self, reason: RejectReason) {
        self.requests_rejected
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// The text exposition format.
    pub(crate) fn encode(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

// The events. Each log line keeps the target of the module it was written from before
// these methods existed, so RUST_LOG filters such as kabar::delivery=debug still apply.
// Every value that can carry alert data or Chat's answer is Debug-quoted (`?`): its line
// breaks and escapes print as escapes, so no part of it can pass for a log line.

/// The HTTP edge: notifications accepted and requests refused.
impl Metrics {
    /// A webhook request was refused; `reason` is None for requests that are not webhook
    /// deliveries (an unknown path, say), which no counter tracks.
    pub(crate) fn request_rejected(&self, reason: Option<RejectReason>, status: u16, error: &str) {
        if let Some(reason) = reason {
            self.reject(reason);
        }
        // Debug-quoted: the message can carry payload text (serde names an unknown
        // value verbatim), whose line breaks must not start log lines of their own.
        info!(target: "kabar::ingest", status, error = ?error, "webhook request refused");
    }

    /// A notification was refused because the store could not commit it.
    pub(crate) fn store_refused_notification(&self, error: &dyn Display) {
        self.reject(RejectReason::StoreUnavailable);
        warn!(target: "kabar::ingest", error = %error, "notification refused: the store cannot take the write");
    }

    /// A webhook request found `server.max_concurrent_requests` already in progress.
    pub(crate) fn overloaded(&self, limit: usize) {
        self.reject(RejectReason::Overloaded);
        warn!(
            target: "kabar::listener",
            limit,
            "webhook request refused: server.max_concurrent_requests are in progress"
        );
    }

    /// What an accepted notification did in one of its spaces: the alerts it carried, the
    /// ones that needed no message, the messages queued and how many were cut to fit.
    pub(crate) fn space_notified(
        &self,
        space: &str,
        alert_statuses: &[&str],
        suppressed: &[SuppressReason],
        queued: &[MessageKind],
        truncated: u64,
    ) {
        self.notifications_received
            .with_label_values(&[space])
            .inc();
        for status in alert_statuses {
            self.alerts_received
                .with_label_values(&[space, status])
                .inc();
        }
        for reason in suppressed {
            self.alerts_suppressed
                .with_label_values(&[space, reason.as_str()])
                .inc();
        }
        for kind in queued {
            self.messages_queued
                .with_label_values(&[space, kind.as_str()])
                .inc();
        }
        if truncated > 0 {
            self.messages_truncated
                .with_label_values(&[space])
                .inc_by(truncated);
        }
    }

    /// A space's template failed and the built-in template rendered the message.
    pub(crate) fn template_fallback(&self, space: &str, error: &str) {
        self.template_fallbacks.with_label_values(&[space]).inc();
        // Debug-quoted: a template error may quote alert data.
        warn!(target: "kabar::ingest", space, error = ?error, "template failed; the built-in template was used");
    }

    /// A notification was committed; its per-space counts went to `space_notified`.
    pub(crate) fn notification_accepted(&self, accepted: &AcceptedNotification<'_>) {
        info!(
            target: "kabar::ingest",
            // Debug-quoted: both come from the payload and may hold line breaks.
            receiver = ?accepted.receiver,
            group_key = ?accepted.group_key,
            spaces = %accepted.spaces,
            alerts = accepted.alerts,
            queued = accepted.queued,
            suppressed = accepted.suppressed,
            "notification accepted"
        );
    }
}

/// What the log line of an accepted notification says.
#[derive(Debug)]
pub(crate) struct AcceptedNotification<'a> {
    pub receiver: &'a str,
    pub group_key: &'a str,
    /// The spaces it was routed to, comma-separated.
    pub spaces: &'a str,
    pub alerts: usize,
    pub queued: usize,
    pub suppressed: usize,
}

/// The senders: what Chat made of each message.
impl Metrics {
    /// Chat answered a request (whatever it said) after `elapsed`.
    pub(crate) fn chat_answered(&self, space: &str, elapsed: Duration) {
        self.chat_request_duration
            .with_label_values(&[space])
            .observe(elapsed.as_secs_f64());
    }

    /// Chat accepted message `id`, `latency` after its notification arrived.
    pub(crate) fn delivered(
        &self,
        space: &str,
        id: i64,
        kind: &str,
        thread: Option<&str>,
        latency: Duration,
    ) {
        self.messages_sent.with_label_values(&[space]).inc();
        self.delivery_latency
            .with_label_values(&[space])
            .observe(latency.as_secs_f64());
        debug!(
            target: "kabar::delivery",
            space = %space,
            id,
            kind = %kind,
            thread = thread.unwrap_or("(none)"),
            "delivered"
        );
    }

    /// A dry-run space printed a message (it counts as sent).
    pub(crate) fn dry_run_delivered(&self, space: &str) {
        self.messages_sent.with_label_values(&[space]).inc();
    }

    /// Chat refused a card as invalid; its text version goes next.
    pub(crate) fn card_refused(&self, space: &str, id: i64, class: FailureClass, detail: &str) {
        self.messages_failed
            .with_label_values(&[space, class.as_str()])
            .inc();
        warn!(
            target: "kabar::delivery",
            space = %space,
            id,
            error = ?detail,
            "Chat refused the card; sending the message as text instead"
        );
    }

    /// An attempt failed in a way a later one may not: the message waits and goes again.
    pub(crate) fn retry_scheduled(&self, space: &str, id: i64, class: FailureClass, detail: &str) {
        self.messages_failed
            .with_label_values(&[space, class.as_str()])
            .inc();
        warn!(
            target: "kabar::delivery",
            space = %space,
            id,
            reason = class.as_str(),
            error = ?detail,
            "delivery failed; will retry"
        );
    }

    /// Chat refused a message for good; `dead_lettered` follows once the store moved it.
    pub(crate) fn refused_for_good(&self, space: &str, class: FailureClass) {
        self.messages_failed
            .with_label_values(&[space, class.as_str()])
            .inc();
    }

    /// A message moved to the dead letters, as row `dead_letter_id` there.
    pub(crate) fn dead_lettered(
        &self,
        space: &str,
        dead_letter_id: Option<i64>,
        reason: DeadLetterReason,
        detail: &str,
    ) {
        warn!(
            target: "kabar::delivery",
            space = %space,
            id = dead_letter_id.unwrap_or(0),
            reason = reason.as_str(),
            error = ?detail,
            "message dead-lettered (see kabar dead-letters list --id); the space moves on"
        );
        self.messages_dead_lettered
            .with_label_values(&[space, reason.as_str()])
            .inc();
    }
}

/// The service: configuration loads and what the store holds.
impl Metrics {
    /// The configuration kabar started with loaded.
    pub(crate) fn config_loaded(&self) {
        self.config_last_reload_successful.set(1);
        self.config_last_reload_success_timestamp
            .set(crate::store::now_ms() as f64 / 1000.0);
    }

    /// A reload failed; the previous configuration stays.
    pub(crate) fn reload_failed(&self, error: &dyn Display) {
        self.config_last_reload_successful.set(0);
        error!(target: "kabar::server", error = %error, "configuration reload failed; the previous configuration stays in effect");
    }

    /// A reload put a new configuration in effect, with these (comma-separated) spaces.
    pub(crate) fn reloaded(&self, spaces: &str) {
        self.config_loaded();
        info!(target: "kabar::server", spaces = %spaces, "configuration reloaded");
    }

    /// A space's queue as the store reports it at scrape time: messages waiting, the age
    /// of the oldest (0 when none) and dead letters held.
    pub(crate) fn queue_depth(&self, space: &str, messages: i64, oldest_age: Duration, dead: i64) {
        self.outbox_messages
            .with_label_values(&[space])
            .set(messages);
        self.outbox_oldest_age
            .with_label_values(&[space])
            .set(oldest_age.as_secs_f64());
        self.dead_letters.with_label_values(&[space]).set(dead);
    }
}

/// A labelled metric family of any kind, as far as space bookkeeping needs it.
trait SpaceSeries {
    fn create(&self, labels: &[&str]);
    fn remove(&self, labels: &[&str]);
}

impl<T: prometheus::core::MetricVecBuilder> SpaceSeries for prometheus::core::MetricVec<T> {
    fn create(&self, labels: &[&str]) {
        self.with_label_values(labels);
    }

    fn remove(&self, labels: &[&str]) {
        // Absent already is fine: the goal is that it is gone.
        let _ = self.remove_label_values(labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_series_exist_from_the_start_and_can_be_removed() {
        let metrics = Metrics::new("1.2.3", "abc");
        metrics.init_space("ops");
        metrics.init_reject_reasons();
        let text = metrics.encode();
        assert!(
            text.contains("kabar_notifications_received_total{space=\"ops\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("kabar_messages_failed_total{reason=\"rateLimited\",space=\"ops\"} 0")
        );
        assert!(
            text.contains("kabar_messages_dead_lettered_total{reason=\"expired\",space=\"ops\"} 0")
        );
        assert!(text.contains("kabar_requests_rejected_total{reason=\"unauthorized\"} 0"));
        assert!(text.contains("kabar_build_info{revision=\"abc\",version=\"1.2.3\"} 1"));
        assert!(text.contains("\nkabar_store_writable 1\n"), "{text}");
        metrics.remove_space("ops");
        assert!(!metrics.encode().contains("space=\"ops\""));
    }

    /// Runs `emit` with a subscriber that writes every event (debug and up) as text to a
    /// buffer, and returns that text.
    fn logged(emit: impl FnOnce()) -> String {
        // Not a thread-local subscriber: see log_capture for why that loses events.
        let capture = crate::log_capture::Capture::start();
        emit();
        capture.text()
    }

    /// Chat's answers and template errors carry alert data: a line break in one may not
    /// start a log line of its own.
    const FORGING: &str = "boom\n2026-12-01T00:00:00Z  WARN kabar::delivery: FORGED";

    fn assert_one_line(log: &str, target: &str, message: &str) {
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "one event, one line: {log}");
        assert!(lines[0].contains(target), "{log}");
        assert!(lines[0].contains(message), "{log}");
        assert!(
            !log.contains("\nFORGED") && !log.contains("\n2026"),
            "{log}"
        );
    }

    #[test]
    fn each_delivery_event_counts_and_logs_in_one_call() {
        let metrics = Metrics::new("1", "r");
        metrics.init_space("ops");

        let log = logged(|| metrics.card_refused("ops", 7, FailureClass::ClientError, FORGING));
        assert_one_line(
            &log,
            "kabar::delivery",
            "Chat refused the card; sending the message as text instead",
        );
        assert!(
            log.contains("id=7") && log.contains(r#"error="boom\n2026"#),
            "{log}"
        );

        let log = logged(|| metrics.retry_scheduled("ops", 8, FailureClass::RateLimited, FORGING));
        assert_one_line(&log, "kabar::delivery", "delivery failed; will retry");
        assert!(
            log.contains("reason=\"rateLimited\"") || log.contains("reason=rateLimited"),
            "{log}"
        );

        let log =
            logged(|| metrics.dead_lettered("ops", Some(3), DeadLetterReason::AuthError, FORGING));
        assert_one_line(
            &log,
            "kabar::delivery",
            "message dead-lettered (see kabar dead-letters list --id); the space moves on",
        );
        assert!(log.contains("id=3"), "{log}");

        let log =
            logged(|| metrics.delivered("ops", 9, "firing", None, Duration::from_millis(1500)));
        assert_one_line(&log, "kabar::delivery", "delivered");
        assert!(
            log.contains("thread=\"(none)\"") || log.contains("thread=(none)"),
            "{log}"
        );

        // Events without a line of their own log nothing.
        let quiet = logged(|| {
            metrics.chat_answered("ops", Duration::from_millis(20));
            metrics.refused_for_good("ops", FailureClass::AuthError);
            metrics.dry_run_delivered("ops");
        });
        assert_eq!(quiet, "");

        let text = metrics.encode();
        for series in [
            "kabar_messages_failed_total{reason=\"clientError\",space=\"ops\"} 1",
            "kabar_messages_failed_total{reason=\"rateLimited\",space=\"ops\"} 1",
            "kabar_messages_failed_total{reason=\"authError\",space=\"ops\"} 1",
            "kabar_messages_dead_lettered_total{reason=\"authError\",space=\"ops\"} 1",
            "kabar_messages_sent_total{space=\"ops\"} 2",
            "kabar_delivery_latency_seconds_sum{space=\"ops\"} 1.5",
            "kabar_chat_request_duration_seconds_count{space=\"ops\"} 1",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
    }

    #[test]
    fn each_edge_and_service_event_counts_and_logs_in_one_call() {
        let metrics = Metrics::new("1", "r");
        metrics.init_space("ops");
        metrics.init_reject_reasons();

        let log = logged(|| metrics.request_rejected(Some(RejectReason::BadRequest), 400, FORGING));
        assert_one_line(&log, "kabar::ingest", "webhook request refused");
        let log = logged(|| metrics.request_rejected(None, 404, "no such path"));
        assert_one_line(&log, "kabar::ingest", "webhook request refused");
        let log = logged(|| metrics.store_refused_notification(&"disk full"));
        assert_one_line(
            &log,
            "kabar::ingest",
            "notification refused: the store cannot take the write",
        );
        let log = logged(|| metrics.overloaded(4));
        assert_one_line(
            &log,
            "kabar::listener",
            "webhook request refused: server.max_concurrent_requests are in progress",
        );
        let log = logged(|| metrics.template_fallback("ops", FORGING));
        assert_one_line(
            &log,
            "kabar::ingest",
            "template failed; the built-in template was used",
        );
        let log = logged(|| {
            metrics.space_notified(
                "ops",
                &["firing", "firing", "resolved"],
                &[SuppressReason::Unchanged],
                &[MessageKind::Firing, MessageKind::Firing],
                3,
            );
            metrics.notification_accepted(&AcceptedNotification {
                receiver: FORGING,
                group_key: FORGING,
                spaces: "ops",
                alerts: 3,
                queued: 2,
                suppressed: 1,
            });
        });
        assert_one_line(&log, "kabar::ingest", "notification accepted");
        let log = logged(|| metrics.reload_failed(&"bad yaml"));
        assert_one_line(
            &log,
            "kabar::server",
            "configuration reload failed; the previous configuration stays in effect",
        );
        assert!(
            metrics
                .encode()
                .contains("\nkabar_config_last_reload_successful 0\n")
        );
        let log = logged(|| metrics.reloaded("ops"));
        assert_one_line(&log, "kabar::server", "configuration reloaded");
        metrics.store_writability(false);
        metrics.queue_depth("ops", 5, Duration::from_millis(2500), 2);

        let text = metrics.encode();
        for series in [
            "kabar_requests_rejected_total{reason=\"badRequest\"} 1",
            "kabar_requests_rejected_total{reason=\"storeUnavailable\"} 1",
            "kabar_requests_rejected_total{reason=\"overloaded\"} 1",
            "kabar_template_fallbacks_total{space=\"ops\"} 1",
            "kabar_notifications_received_total{space=\"ops\"} 1",
            "kabar_alerts_received_total{space=\"ops\",status=\"firing\"} 2",
            "kabar_alerts_received_total{space=\"ops\",status=\"resolved\"} 1",
            "kabar_alerts_suppressed_total{reason=\"unchanged\",space=\"ops\"} 1",
            "kabar_messages_queued_total{kind=\"firing\",space=\"ops\"} 2",
            "kabar_messages_truncated_total{space=\"ops\"} 3",
            "\nkabar_config_last_reload_successful 1\n",
            "\nkabar_store_writable 0\n",
            "kabar_outbox_messages{space=\"ops\"} 5",
            "kabar_outbox_oldest_message_age_seconds{space=\"ops\"} 2.5",
            "kabar_dead_letters{space=\"ops\"} 2",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
        // Only webhook deliveries are counted: the 404 above has no reason.
        let rejected: u64 = text
            .lines()
            .filter(|line| line.starts_with("kabar_requests_rejected_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(rejected, 3, "{text}");
    }
}
