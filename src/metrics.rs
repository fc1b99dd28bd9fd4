//! kabar's own metrics, modelled on Alertmanager's notifier metrics. Labels are bounded:
//! space names from config and small fixed enums; never a URL, fingerprint or alert name.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::chat::FailureClass;
use crate::state::{MessageKind, SuppressReason};

/// Why an HTTP request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
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
    pub const ALL: [RejectReason; 8] = [
        RejectReason::Unauthorized,
        RejectReason::BadRequest,
        RejectReason::UnknownRoute,
        RejectReason::TooLarge,
        RejectReason::UnsupportedMediaType,
        RejectReason::BareAlertArray,
        RejectReason::StoreUnavailable,
        RejectReason::Overloaded,
    ];

    pub fn as_str(self) -> &'static str {
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

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    ClientError,
    AuthError,
    Expired,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 3] = [
        DeadLetterReason::ClientError,
        DeadLetterReason::AuthError,
        DeadLetterReason::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::ClientError => "clientError",
            DeadLetterReason::AuthError => "authError",
            DeadLetterReason::Expired => "expired",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub notifications_received: IntCounterVec,
    pub requests_rejected: IntCounterVec,
    pub alerts_received: IntCounterVec,
    pub alerts_suppressed: IntCounterVec,
    pub messages_queued: IntCounterVec,
    pub messages_sent: IntCounterVec,
    pub messages_failed: IntCounterVec,
    pub messages_dead_lettered: IntCounterVec,
    pub chat_request_duration: HistogramVec,
    pub delivery_latency: HistogramVec,
    pub outbox_messages: IntGaugeVec,
    pub outbox_oldest_age: GaugeVec,
    pub dead_letters: IntGaugeVec,
    pub template_fallbacks: IntCounterVec,
    pub messages_truncated: IntCounterVec,
    pub config_last_reload_successful: IntGauge,
    pub config_last_reload_success_timestamp: Gauge,
    /// 1 while the store takes writes; 0 after a failed commit or probe. Scraped from the
    /// pod, it keeps saying 0 while /readyz has taken the pod out of the Service.
    pub store_writable: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("static metric definition is valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
    let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["space"])
        .expect("static metric definition is valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

impl Metrics {
    /// Registers every series; `version` and `revision` go into kabar_build_info.
    pub fn new(version: &str, revision: &str) -> Metrics {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "kabar_build_info",
                "Always 1; labels carry the version and git revision.",
            ),
            &["version", "revision"],
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(build_info.clone()))
            .expect("registered once");
        build_info.with_label_values(&[version, revision]).set(1);

        let gauge_vec = |name: &str, help: &str| {
            let metric = IntGaugeVec::new(Opts::new(name, help), &["space"]).expect("valid");
            registry
                .register(Box::new(metric.clone()))
                .expect("registered once");
            metric
        };
        let outbox_messages = gauge_vec("kabar_outbox_messages", "Messages waiting in the outbox.");
        let dead_letters = gauge_vec(
            "kabar_dead_letters",
            "Messages currently in the dead-letter table.",
        );
        let outbox_oldest_age = GaugeVec::new(
            Opts::new(
                "kabar_outbox_oldest_message_age_seconds",
                "Age of the oldest message waiting in the outbox, 0 when empty.",
            ),
            &["space"],
        )
        .expect("valid");
        registry
            .register(Box::new(outbox_oldest_age.clone()))
            .expect("registered once");
        let reload_ok = IntGauge::new(
            "kabar_config_last_reload_successful",
            "Whether the last configuration load or reload succeeded.",
        )
        .expect("valid");
        registry
            .register(Box::new(reload_ok.clone()))
            .expect("registered once");
        let reload_ts = Gauge::new(
            "kabar_config_last_reload_success_timestamp_seconds",
            "Time of the last successful configuration load or reload.",
        )
        .expect("valid");
        registry
            .register(Box::new(reload_ts.clone()))
            .expect("registered once");

        let store_writable = IntGauge::new(
            "kabar_store_writable",
            "1 if the store's last write (a commit or the /readyz probe) succeeded, else 0.",
        )
        .expect("valid");
        registry
            .register(Box::new(store_writable.clone()))
            .expect("registered once");
        // kabar serves only after opening its store; the first write or probe corrects it.
        store_writable.set(1);

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
            store_writable,
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
    pub fn init_space(&self, space: &str) {
        for (vec, labels) in self.space_series(space) {
            vec.create(&labels);
        }
    }

    /// Drops the series of a space that left the config.
    pub fn remove_space(&self, space: &str) {
        for (vec, labels) in self.space_series(space) {
            vec.remove(&labels);
        }
    }

    pub fn init_reject_reasons(&self) {
        for reason in RejectReason::ALL {
            self.requests_rejected.with_label_values(&[reason.as_str()]);
        }
    }

    pub fn reject(&self, reason: RejectReason) {
        self.requests_rejected
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
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
}
