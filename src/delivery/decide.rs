//! What a send result, or a message's age, means for the message at the head of a queue.
//! Pure decisions only: nothing here sends, sleeps, reads a clock, logs or touches the store.

use std::time::Duration;

use crate::chat::{Accepted, FailureClass, SendFailure};

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadLetterReason {
    ClientError,
    AuthError,
    Expired,
}

impl DeadLetterReason {
    pub(crate) const ALL: [DeadLetterReason; 3] = [
        DeadLetterReason::ClientError,
        DeadLetterReason::AuthError,
        DeadLetterReason::Expired,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::ClientError => "clientError",
            DeadLetterReason::AuthError => "authError",
            DeadLetterReason::Expired => "expired",
        }
    }
}

/// What the sender does with the message next. A failed attempt keeps Chat's class and
/// detail: the sender counts and logs them, and stores the detail with the message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Chat accepted it: remove it from the outbox and move on.
    Delivered,
    /// Chat refused the card as invalid: send the message's text version instead.
    UseFallback { class: FailureClass, detail: String },
    /// Try it again later: after the server's `Retry-After` if it gave one (kept within
    /// the backoff range by the pacing), else after the backoff. A 429 (class
    /// `RateLimited`) also slows the space's pace.
    Retry {
        class: FailureClass,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// Sending it again cannot succeed (or it is too late): move it to the dead letters.
    DeadLetter {
        reason: DeadLetterReason,
        status: Option<u16>,
        detail: String,
    },
}

/// The detail stored with a message that outlived `give_up_after`.
pub(crate) const EXPIRED_DETAIL: &str = "not delivered within give_up_after";

/// Before sending: a message older than `give_up_after` is not sent at all.
pub(crate) fn before_send(age: Duration, give_up_after: Duration) -> Option<Outcome> {
    (age > give_up_after).then(|| Outcome::DeadLetter {
        reason: DeadLetterReason::Expired,
        status: None,
        detail: EXPIRED_DETAIL.to_owned(),
    })
}

/// After sending: what Chat's answer means, given whether the message has a text version
/// to fall back to.
pub(crate) fn after_send(result: Result<&Accepted, &SendFailure>, has_fallback: bool) -> Outcome {
    let failure = match result {
        Ok(_) => return Outcome::Delivered,
        Err(failure) => failure,
    };
    // By status, not class: a 400 is Chat calling the card invalid, which its text
    // version can mend; the other client errors refuse the request whatever its body.
    if failure.status == Some(400) && has_fallback {
        return Outcome::UseFallback {
            class: failure.class,
            detail: failure.detail.clone(),
        };
    }
    if failure.class.is_permanent() {
        let reason = if failure.class == FailureClass::AuthError {
            DeadLetterReason::AuthError
        } else {
            DeadLetterReason::ClientError
        };
        return Outcome::DeadLetter {
            reason,
            status: failure.status,
            detail: failure.detail.clone(),
        };
    }
    Outcome::Retry {
        class: failure.class,
        detail: failure.detail.clone(),
        // "Retry-After: 0" gives no wait worth keeping: the backoff decides instead.
        retry_after: failure.retry_after.filter(|wait| !wait.is_zero()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry_after: Option<Duration>) -> SendFailure {
        SendFailure {
            class: FailureClass::of_status(status),
            status: Some(status),
            retry_after,
            detail: format!("HTTP {status}"),
        }
    }

    fn transport(class: FailureClass) -> SendFailure {
        SendFailure {
            class,
            status: None,
            retry_after: None,
            detail: "connection refused".to_owned(),
        }
    }

    fn dead(reason: DeadLetterReason, status: u16) -> Outcome {
        Outcome::DeadLetter {
            reason,
            status: Some(status),
            detail: format!("HTTP {status}"),
        }
    }

    fn retry(failure: &SendFailure, retry_after: Option<Duration>) -> Outcome {
        Outcome::Retry {
            class: failure.class,
            detail: failure.detail.clone(),
            retry_after,
        }
    }

    #[test]
    fn a_2xx_is_delivered_with_or_without_a_fallback() {
        let accepted = Accepted {
            thread_name: Some("spaces/S/threads/T".to_owned()),
            message_name: None,
        };
        for has_fallback in [false, true] {
            assert_eq!(after_send(Ok(&accepted), has_fallback), Outcome::Delivered);
        }
    }

    #[test]
    fn a_400_falls_back_to_text_once_and_dead_letters_without_a_fallback() {
        let refused = answer(400, None);
        assert_eq!(
            after_send(Err(&refused), true),
            Outcome::UseFallback {
                class: FailureClass::ClientError,
                detail: "HTTP 400".to_owned()
            }
        );
        assert_eq!(
            after_send(Err(&refused), false),
            dead(DeadLetterReason::ClientError, 400)
        );
    }

    #[test]
    fn other_4xx_dead_letter_even_with_a_fallback() {
        for has_fallback in [false, true] {
            for status in [401, 403] {
                assert_eq!(
                    after_send(Err(&answer(status, None)), has_fallback),
                    dead(DeadLetterReason::AuthError, status)
                );
            }
            for status in [404, 413] {
                assert_eq!(
                    after_send(Err(&answer(status, None)), has_fallback),
                    dead(DeadLetterReason::ClientError, status)
                );
            }
        }
    }

    #[test]
    fn a_429_retries_slower_with_its_retry_after_or_the_backoff() {
        let hinted = answer(429, Some(Duration::from_secs(7)));
        assert_eq!(hinted.class, FailureClass::RateLimited);
        assert_eq!(
            after_send(Err(&hinted), true),
            retry(&hinted, Some(Duration::from_secs(7)))
        );
        for retry_after in [None, Some(Duration::ZERO)] {
            let unhinted = answer(429, retry_after);
            assert_eq!(after_send(Err(&unhinted), false), retry(&unhinted, None));
        }
    }

    #[test]
    fn a_5xx_408_timeout_or_connection_error_retries_after_the_backoff() {
        for status in [500, 502, 503, 504, 408] {
            let failure = answer(status, None);
            assert_eq!(after_send(Err(&failure), true), retry(&failure, None));
        }
        // A 503 may say when to come back; it is not a rate limit.
        let unavailable = answer(503, Some(Duration::from_secs(30)));
        assert_eq!(unavailable.class, FailureClass::ServerError);
        assert_eq!(
            after_send(Err(&unavailable), false),
            retry(&unavailable, Some(Duration::from_secs(30)))
        );
        for class in [FailureClass::Timeout, FailureClass::Network] {
            let failure = transport(class);
            assert_eq!(after_send(Err(&failure), true), retry(&failure, None));
        }
    }

    #[test]
    fn a_message_older_than_give_up_after_is_dead_lettered_unsent() {
        let limit = Duration::from_secs(3600);
        assert_eq!(before_send(Duration::ZERO, limit), None);
        assert_eq!(
            before_send(limit, limit),
            None,
            "exactly at the limit still goes"
        );
        let expired = Outcome::DeadLetter {
            reason: DeadLetterReason::Expired,
            status: None,
            detail: EXPIRED_DETAIL.to_owned(),
        };
        assert_eq!(
            before_send(limit + Duration::from_millis(1), limit),
            Some(expired.clone())
        );
        assert_eq!(before_send(Duration::MAX, limit), Some(expired));
        assert_eq!(before_send(Duration::MAX, Duration::MAX), None);
    }
}
