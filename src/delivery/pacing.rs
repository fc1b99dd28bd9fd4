//! When a space may send next: the token bucket after each answer, the slowdown after a 429
//! and the backoff after each failure. It only computes times; it never sleeps or sends.

use std::time::Duration;

use tokio::time::Instant;

use crate::chat::backoff_delay;
use crate::config;

/// Each delivery takes this factor off the slowdown: after a 429 the space stays near the
/// pace Chat accepted for a few dozen messages instead of probing with 429s again at once.
const SLOWDOWN_RECOVERY: f64 = 0.97;
const MAX_SLOWDOWN: f64 = 1024.0;

pub(crate) struct Pacing {
    pub(crate) next_send: Instant,
    pub(crate) failures: u32,
    /// How many times slower than rate_limit_per_second this space is paced. A 429 says
    /// Chat allows the space less than configured (its quota is shared by every writer),
    /// so the pace halves; each delivery creeps back toward the configured rate.
    slowdown: f64,
}

impl Pacing {
    pub(crate) fn new() -> Pacing {
        Pacing {
            next_send: Instant::now(),
            failures: 0,
            slowdown: 1.0,
        }
    }

    /// Chat answered (whatever it said): the next request waits one interval. Paced from
    /// the answer, not the send: Chat counts arrivals, and a request that sets off on time
    /// can still arrive early relative to a previous one that was slow to get there.
    pub(crate) fn answered(&mut self, delivery: &config::Delivery) {
        self.next_send = Instant::now() + self.interval(delivery);
    }

    fn interval(&self, delivery: &config::Delivery) -> Duration {
        let configured = 1.0 / delivery.rate_limit_per_second;
        // Slowed down, the interval still never exceeds backoff.max (or the configured one).
        let ceiling = delivery.backoff_max.as_secs_f64().max(configured);
        Duration::from_secs_f64((configured * self.slowdown).min(ceiling))
    }

    /// The space was just taken on (at start, or from another replica): the first request
    /// keeps the interval after the last answer Chat gave for it, whoever sent.
    pub(crate) fn resume_after(
        &mut self,
        last_answer_ms: Option<i64>,
        delivery: &config::Delivery,
    ) {
        let Some(last_answer_ms) = last_answer_ms else {
            return;
        };
        let since = crate::store::now_ms().saturating_sub(last_answer_ms).max(0) as u64;
        let interval = self.interval(delivery);
        let wait = interval.saturating_sub(Duration::from_millis(since));
        self.next_send = self.next_send.max(Instant::now() + wait);
    }

    pub(crate) fn rate_limited(&mut self) {
        self.slowdown = (self.slowdown * 2.0).min(MAX_SLOWDOWN);
    }

    /// Done with the head message (sent or dead-lettered).
    pub(crate) fn delivered(&mut self) {
        self.failures = 0;
        self.slowdown = (self.slowdown * SLOWDOWN_RECOVERY).max(1.0);
    }

    /// The head message must be tried again; returns how long it waits: the server's
    /// `Retry-After` kept within [backoff.initial, backoff.max], else the backoff.
    pub(crate) fn failed(
        &mut self,
        delivery: &config::Delivery,
        retry_after: Option<Duration>,
    ) -> Duration {
        self.failures += 1;
        let wait = backoff_delay(
            self.failures,
            delivery.backoff_initial,
            delivery.backoff_max,
            retry_after,
            fastrand::f64(),
        );
        self.next_send = self.next_send.max(Instant::now() + wait);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_slows_the_space_and_deliveries_win_the_pace_back() {
        let delivery = config::Delivery {
            rate_limit_per_second: 5.0,
            backoff_max: Duration::from_secs(10),
            ..config::Delivery::default()
        };
        let mut pacing = Pacing::new();
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

    #[test]
    fn retry_after_is_kept_within_the_backoff_range_and_holds_the_next_send() {
        let delivery = config::Delivery {
            backoff_initial: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            ..config::Delivery::default()
        };
        let mut pacing = Pacing::new();
        let cases = [
            (Duration::from_millis(1), Duration::from_secs(2)),
            (Duration::from_secs(2), Duration::from_secs(2)),
            (Duration::from_secs(30), Duration::from_secs(30)),
            (Duration::from_secs(60), Duration::from_secs(60)),
            (Duration::from_secs(86_400 * 365), Duration::from_secs(60)),
            (Duration::MAX, Duration::from_secs(60)),
        ];
        for (retry_after, expected) in cases {
            let before = Instant::now();
            assert_eq!(
                pacing.failed(&delivery, Some(retry_after)),
                expected,
                "Retry-After {retry_after:?}"
            );
            assert!(pacing.next_send >= before + expected);
        }
        assert_eq!(pacing.failures, cases.len() as u32);
        pacing.delivered();
        assert_eq!(pacing.failures, 0);
    }

    #[test]
    fn without_retry_after_the_wait_grows_from_initial_to_max() {
        let delivery = config::Delivery {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            ..config::Delivery::default()
        };
        let mut pacing = Pacing::new();
        let first = pacing.failed(&delivery, None);
        assert_eq!(
            first, delivery.backoff_initial,
            "the first retry waits backoff.initial"
        );
        for _ in 0..100 {
            let wait = pacing.failed(&delivery, None);
            assert!(
                wait >= delivery.backoff_initial && wait <= delivery.backoff_max,
                "{wait:?}"
            );
        }
    }
}
