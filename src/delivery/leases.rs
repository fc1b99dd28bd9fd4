//! Which spaces this replica sends for: on a shared store, leases claimed and renewed every
//! third of `store.postgres.lease`; on SQLite, every space. It must not send or read queues.
//!
//! A sender may send only while its lease is valid by this process's own clock: the lease
//! counts from before the claim was sent, less a margin, so it ends here before it ends in
//! the database. A replica paused past its lease (SIGSTOP, a long GC-like stall, a cut-off
//! network) therefore wakes up with its leases already over and sends nothing until it
//! has claimed them again, and by then another replica may hold them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::Shared;
use crate::store::LeaseClaim;

/// A space's lease as this replica sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Lease {
    /// Held until `until` (None: for good, the store being this process's alone).
    Held {
        until: Option<Instant>,
        /// When Chat last answered for the space, by any replica, as of the claim.
        last_answer_ms: Option<i64>,
    },
    NotHeld,
}

impl Lease {
    /// May the space's sender send right now?
    pub(crate) fn valid(&self) -> bool {
        match self {
            Lease::Held { until: None, .. } => true,
            Lease::Held {
                until: Some(until), ..
            } => Instant::now() < *until,
            Lease::NotHeld => false,
        }
    }
}

/// The leases of this replica, one watch per configured space.
pub(crate) struct Leases {
    /// This replica's name in the lease table: the host (the pod), the process and a random
    /// part, so a restarted pod never mistakes its predecessor's leases for its own.
    holder: String,
    spaces: Mutex<BTreeMap<String, watch::Sender<Lease>>>,
}

impl Leases {
    pub(crate) fn new() -> Leases {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|host| !host.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|host| host.trim().to_owned())
            })
            .unwrap_or_else(|| "kabar".to_owned());
        let host: String = host.chars().take(64).collect();
        Leases {
            holder: format!("{host}/{}/{:08x}", std::process::id(), fastrand::u32(..)),
            spaces: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn holder(&self) -> &str {
        &self.holder
    }

    /// The lease of `space` to watch; created not held.
    pub(crate) fn watch(&self, space: &str) -> watch::Receiver<Lease> {
        let Ok(mut spaces) = self.spaces.lock() else {
            // A poisoned map is a bug elsewhere; a lease nobody updates is never valid.
            return watch::channel(Lease::NotHeld).1;
        };
        spaces
            .entry(space.to_owned())
            .or_insert_with(|| watch::channel(Lease::NotHeld).0)
            .subscribe()
    }

    fn set(&self, space: &str, lease: Lease) -> Lease {
        let Ok(spaces) = self.spaces.lock() else {
            return Lease::NotHeld;
        };
        match spaces.get(space) {
            Some(sender) => sender.send_replace(lease),
            None => Lease::NotHeld,
        }
    }

    fn current(&self, space: &str) -> Lease {
        match self.spaces.lock() {
            Ok(spaces) => spaces
                .get(space)
                .map_or(Lease::NotHeld, |sender| *sender.borrow()),
            Err(_) => Lease::NotHeld,
        }
    }

    /// Spaces held now, for release on shutdown.
    fn held(&self) -> Vec<String> {
        match self.spaces.lock() {
            Ok(spaces) => spaces
                .iter()
                .filter(|(_, sender)| sender.borrow().valid())
                .map(|(space, _)| space.clone())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn forget_unconfigured(&self, configured: &[String]) {
        if let Ok(mut spaces) = self.spaces.lock() {
            spaces.retain(|space, _| configured.contains(space));
        }
    }
}

/// How often the spaces of a store of this process's own are looked at again.
const EXCLUSIVE_RECHECK: Duration = Duration::from_secs(5);

/// How long before its end in the database a lease ends here: the claim's round trip is
/// already counted (the lease starts before it is sent), so this covers clock rate
/// differences and the time from the validity check to the request reaching Chat.
fn margin(lease: Duration) -> Duration {
    (lease / 5).min(Duration::from_secs(5))
}

/// Claims and renews this replica's leases until `stopped`, then releases them.
pub(super) async fn run(
    shared: Arc<Shared>,
    leases: Arc<Leases>,
    mut stopped: watch::Receiver<bool>,
) {
    announce(&shared, &leases, &mut stopped).await;
    loop {
        let config = Arc::clone(&shared.runtime()).config.clone();
        let spaces: Vec<String> = config.spaces.keys().cloned().collect();
        leases.forget_unconfigured(&spaces);
        let Some(postgres) = config.store.postgres.as_ref() else {
            // The store is this process's alone: every space is held for good.
            for space in &spaces {
                leases.watch(space);
                leases.set(
                    space,
                    Lease::Held {
                        until: None,
                        last_answer_ms: None,
                    },
                );
                shared.metrics.lease_state(space, true);
            }
            shared.metrics.spaces_held(spaces.len());
            // Only to pick up spaces a reload added.
            tokio::select! {
                _ = tokio::time::sleep(EXCLUSIVE_RECHECK) => continue,
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        };
        let lease = postgres.lease;
        let every = lease / 3;
        for space in &spaces {
            leases.watch(space);
        }
        let started = Instant::now();
        let claimed = tokio::time::timeout(
            every,
            shared
                .store
                .claim_spaces(leases.holder(), spaces.clone(), lease),
        )
        .await;
        match claimed {
            Ok(Ok(claims)) => apply(
                &shared,
                &leases,
                &spaces,
                &claims,
                started + lease - margin(lease),
            ),
            Ok(Err(e)) => {
                shared.metrics.store_error(e.kind());
                warn!(error = %e, "cannot renew the space leases; senders stop when they run out");
                expire(&shared, &leases, &spaces);
            }
            Err(_) => {
                shared.metrics.store_error("timeout");
                warn!("renewing the space leases took too long; senders stop when they run out");
                expire(&shared, &leases, &spaces);
            }
        }
        let next = started + every;
        let stopping = tokio::select! {
            _ = tokio::time::sleep_until(next) => false,
            _ = stopped.wait_for(|stop| *stop) => true,
        };
        if stopping {
            release(&shared, &leases).await;
            return;
        }
    }
}

/// On a shared store, a first claim of no spaces: it only says this replica is alive, so
/// replicas started together see each other and split the spaces from their first real
/// claim, instead of the first to claim taking all and handing most over a lease later.
async fn announce(shared: &Shared, leases: &Leases, stopped: &mut watch::Receiver<bool>) {
    let config = Arc::clone(&shared.runtime()).config.clone();
    let Some(postgres) = config.store.postgres.as_ref() else {
        return;
    };
    let _ = tokio::time::timeout(
        postgres.lease / 3,
        shared
            .store
            .claim_spaces(leases.holder(), Vec::new(), postgres.lease),
    )
    .await;
    tokio::select! {
        _ = tokio::time::sleep(ANNOUNCE_WAIT) => {}
        _ = stopped.wait_for(|stop| *stop) => {}
    }
}

/// How long a replica waits after announcing itself before it claims spaces.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(1);

fn apply(
    shared: &Shared,
    leases: &Leases,
    spaces: &[String],
    claims: &[LeaseClaim],
    until: Instant,
) {
    let mut held = 0;
    for space in spaces {
        let claim = claims.iter().find(|claim| &claim.space == space);
        let was = leases.current(space);
        match claim {
            Some(claim) => {
                held += 1;
                leases.set(
                    space,
                    Lease::Held {
                        until: Some(until),
                        last_answer_ms: claim.last_answer_ms,
                    },
                );
                if !was.valid() {
                    shared.metrics.lease_acquired(space, claim.takeover);
                    info!(space = %space, takeover = claim.takeover, "this replica now sends for the space");
                }
                shared.metrics.lease_state(space, true);
            }
            None => {
                leases.set(space, Lease::NotHeld);
                if matches!(was, Lease::Held { .. }) {
                    shared.metrics.lease_lost(space);
                    warn!(space = %space, "this replica no longer holds the space's lease (another replica took it, or it went to even out the spaces); it stops sending for it");
                }
                shared.metrics.lease_state(space, false);
            }
        }
    }
    shared.metrics.spaces_held(held);
}

/// Renewal failed: leases that ran out by now are lost.
fn expire(shared: &Shared, leases: &Leases, spaces: &[String]) {
    let mut held = 0;
    for space in spaces {
        let was = leases.current(space);
        if was.valid() {
            held += 1;
        } else if matches!(was, Lease::Held { .. }) {
            leases.set(space, Lease::NotHeld);
            shared.metrics.lease_lost(space);
            shared.metrics.lease_state(space, false);
            warn!(space = %space, "the space's lease ran out without renewal; this replica stops sending for it");
        }
    }
    shared.metrics.spaces_held(held);
}

/// Hands every held space over at once on shutdown (the senders stopped first), so the
/// other replicas continue without waiting out the lease.
async fn release(shared: &Shared, leases: &Leases) {
    let held = leases.held();
    for space in &held {
        leases.set(space, Lease::NotHeld);
    }
    if held.is_empty() {
        return;
    }
    match tokio::time::timeout(
        Duration::from_secs(2),
        shared.store.release_spaces(leases.holder(), held.clone()),
    )
    .await
    {
        Ok(Ok(())) => info!(
            spaces = held.len(),
            "released the space leases for the other replicas"
        ),
        Ok(Err(e)) => {
            warn!(error = %e, "cannot release the space leases; the other replicas take them when they run out")
        }
        Err(_) => warn!(
            "releasing the space leases took too long; the other replicas take them when they run out"
        ),
    }
    shared.metrics.spaces_held(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_past_its_end_is_not_valid() {
        let past = Lease::Held {
            until: Some(Instant::now() - Duration::from_millis(1)),
            last_answer_ms: None,
        };
        assert!(!past.valid());
        let future = Lease::Held {
            until: Some(Instant::now() + Duration::from_secs(60)),
            last_answer_ms: None,
        };
        assert!(future.valid());
        assert!(!Lease::NotHeld.valid());
        assert!(
            Lease::Held {
                until: None,
                last_answer_ms: None
            }
            .valid()
        );
    }

    #[test]
    fn the_margin_leaves_most_of_the_lease() {
        assert_eq!(margin(Duration::from_secs(15)), Duration::from_secs(3));
        assert_eq!(margin(Duration::from_secs(600)), Duration::from_secs(5));
        assert!(margin(Duration::from_secs(3)) < Duration::from_secs(1));
    }

    #[test]
    fn each_lease_keeper_has_its_own_holder_even_in_one_process() {
        assert_ne!(Leases::new().holder(), Leases::new().holder());
    }
}
