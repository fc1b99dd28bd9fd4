//! Metrics of the store and of the replicas sharing it: the backend, the space leases this
//! replica holds, gains, takeovers and losses, and store errors by kind. It must not decide.

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tracing::debug;

use super::{Metrics, registered};

pub(super) struct FleetMetrics {
    /// 1 while the store takes writes; 0 after a failed commit or probe. Scraped from the
    /// pod, it keeps saying 0 while /readyz has taken the pod out of the Service.
    store_writable: IntGauge,
    backend_info: IntGaugeVec,
    space_lease_held: IntGaugeVec,
    spaces_held: IntGauge,
    lease_acquisitions: IntCounterVec,
    lease_takeovers: IntCounterVec,
    lease_losses: IntCounterVec,
    store_errors: IntCounterVec,
}

/// Every kind `kabar_store_errors_total` counts, created at 0 so rates start at once.
const STORE_ERROR_KINDS: [&str; 4] = ["unavailable", "conflict", "timeout", "other"];

impl FleetMetrics {
    pub(super) fn new(registry: &Registry) -> FleetMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let store_errors = counter(
            "kabar_store_errors_total",
            "Store operations that failed, by kind: unavailable, conflict (retried), timeout, other.",
            &["kind"],
        );
        for kind in STORE_ERROR_KINDS {
            store_errors.with_label_values(&[kind]);
        }
        let store_writable = registered(
            registry,
            IntGauge::new(
                "kabar_store_writable",
                "1 if the store's last write (a commit or the /readyz probe) succeeded, else 0.",
            )
            .expect("valid"),
        );
        // kabar serves only after opening its store; the first write or probe corrects it.
        store_writable.set(1);
        FleetMetrics {
            store_writable,
            backend_info: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "kabar_store_backend_info",
                        "The store this replica uses (sqlite or postgres); always 1.",
                    ),
                    &["backend"],
                )
                .expect("valid metric"),
            ),
            space_lease_held: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "kabar_space_lease_held",
                        "1 while this replica holds the space's lease and may send for it, else 0.",
                    ),
                    &["space"],
                )
                .expect("valid metric"),
            ),
            spaces_held: registered(
                registry,
                IntGauge::new(
                    "kabar_spaces_held",
                    "Spaces whose lease this replica holds.",
                )
                .expect("valid metric"),
            ),
            lease_acquisitions: counter(
                "kabar_lease_acquisitions_total",
                "Times this replica began holding the space's lease.",
                &["space"],
            ),
            lease_takeovers: counter(
                "kabar_lease_takeovers_total",
                "Lease acquisitions from another replica whose lease ran out (it died, hung or lost the database).",
                &["space"],
            ),
            lease_losses: counter(
                "kabar_lease_losses_total",
                "Times this replica lost the space's lease it held (renewal failed, or another replica holds it).",
                &["space"],
            ),
            store_errors,
        }
    }

    pub(super) fn init_space(&self, space: &str) {
        self.space_lease_held.with_label_values(&[space]);
        self.lease_acquisitions.with_label_values(&[space]);
        self.lease_takeovers.with_label_values(&[space]);
        self.lease_losses.with_label_values(&[space]);
    }

    pub(super) fn remove_space(&self, space: &str) {
        let _ = self.space_lease_held.remove_label_values(&[space]);
        let _ = self.lease_acquisitions.remove_label_values(&[space]);
        let _ = self.lease_takeovers.remove_label_values(&[space]);
        let _ = self.lease_losses.remove_label_values(&[space]);
    }
}

impl Metrics {
    /// Whether the store's last write (a commit or the /readyz probe) succeeded.
    pub(crate) fn store_writability(&self, writable: bool) {
        self.fleet.store_writable.set(i64::from(writable));
    }

    pub(crate) fn store_backend(&self, backend: &str) {
        self.fleet.backend_info.with_label_values(&[backend]).set(1);
    }

    pub(crate) fn lease_state(&self, space: &str, held: bool) {
        self.fleet
            .space_lease_held
            .with_label_values(&[space])
            .set(i64::from(held));
    }

    pub(crate) fn spaces_held(&self, count: usize) {
        self.fleet.spaces_held.set(count as i64);
    }

    pub(crate) fn lease_acquired(&self, space: &str, takeover: bool) {
        self.fleet
            .lease_acquisitions
            .with_label_values(&[space])
            .inc();
        if takeover {
            self.fleet.lease_takeovers.with_label_values(&[space]).inc();
        }
    }

    pub(crate) fn lease_lost(&self, space: &str) {
        self.fleet.lease_losses.with_label_values(&[space]).inc();
    }

    /// A store operation failed; `kind` is `StoreError::kind`.
    pub(crate) fn store_error(&self, kind: &'static str) {
        debug!(kind, "store operation failed");
        self.fleet.store_errors.with_label_values(&[kind]).inc();
    }
}
