//! The key sets the verifier checks signatures with: one lazily fetched, Cache-Control
//! bounded cache per certs URL, refetched at most so often. It must not log key material
//! or response bodies, nor let a flood of bad tokens turn into a flood of fetches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::der;

/// A fetch that takes longer fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Google's cert maps are a few KiB; anything past this is not one.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Google lists two or three keys; more than this are not used.
pub(crate) const MAX_KEYS: usize = 64;
/// A kid longer than this is not one of Google's (theirs are 40 hex digits).
const MAX_KID_CHARS: usize = 256;
/// Kept when the answer says nothing usable about caching.
const DEFAULT_TTL: SignedDuration = SignedDuration::from_secs(3600);
/// Kept at least this long even under `no-store` or `max-age=0`, so a flood of events
/// cannot make kabar fetch for each one.
const MIN_TTL: SignedDuration = SignedDuration::from_secs(60);
/// Kept at most this long whatever max-age says (Google rotates about daily).
const MAX_TTL: SignedDuration = SignedDuration::from_secs(24 * 3600);
/// An unknown kid refetches the set at most this often.
pub(crate) const REFETCH_INTERVAL: SignedDuration = SignedDuration::from_secs(30);
/// After a failed fetch the next try waits this long (requests meanwhile use what is kept).
const RETRY_AFTER_FAILURE: SignedDuration = SignedDuration::from_secs(5);
/// Expired keys still serve this long while fetches fail.
pub(crate) const STALE_GRACE: SignedDuration = SignedDuration::from_secs(3600);

/// A key lookup that found no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Miss {
    /// The set (fresh or refetched) has no such kid.
    UnknownKid,
    /// No usable set: fetches fail and nothing kept is young enough.
    Unavailable,
}

/// kid → `RSAPublicKey` DER.
type KeySet = HashMap<String, Arc<[u8]>>;

#[derive(Debug, Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    /// Until when `keys` is fresh.
    fresh_until: Option<Timestamp>,
    last_attempt: Option<Timestamp>,
    last_failed: bool,
    /// Bumped by every finished fetch, so a task that waited for another's fetch uses it.
    generation: u64,
}

/// The cached key set of one URL.
#[derive(Debug)]
pub(crate) struct KeyCache {
    url: String,
    state: Mutex<State>,
    /// Held while fetching: one fetch at a time per URL.
    fetching: tokio::sync::Mutex<()>,
}

/// What the state says about one kid.
enum Look {
    Found(Arc<[u8]>),
    /// No such kid in a fresh set.
    Unknown {
        may_refetch: bool,
    },
    /// The set is missing or expired; `may_fetch` when the retry spacing allows.
    Stale {
        may_fetch: bool,
    },
}

impl KeyCache {
    pub(crate) fn new(url: String) -> Self {
        KeyCache {
            url,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent between statements, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn look(&self, kid: &str, now: Timestamp) -> (Look, u64) {
        let state = self.lock();
        let since_attempt = state.last_attempt.map(|at| now.duration_since(at));
        let spaced = |gap: SignedDuration| since_attempt.is_none_or(|since| since >= gap);
        let fresh = state.fresh_until.is_some_and(|until| now < until);
        let look = match (&state.keys, fresh) {
            (Some(keys), true) => match keys.get(kid) {
                Some(key) => Look::Found(key.clone()),
                None => Look::Unknown {
                    may_refetch: spaced(REFETCH_INTERVAL),
                },
            },
            _ => Look::Stale {
                may_fetch: spaced(if state.last_failed {
                    RETRY_AFTER_FAILURE
                } else {
                    SignedDuration::ZERO
                }),
            },
        };
        (look, state.generation)
    }

    /// The kept (maybe expired, within the grace) key for `kid`, without fetching.
    fn kept(&self, kid: &str, now: Timestamp) -> Result<Arc<[u8]>, Miss> {
        let state = self.lock();
        let usable = state
            .fresh_until
            .is_some_and(|until| now < until + STALE_GRACE);
        match &state.keys {
            Some(keys) if usable => keys.get(kid).cloned().ok_or(Miss::UnknownKid),
            _ => Err(Miss::Unavailable),
        }
    }

    /// The public key named `kid`, fetching the set when it is missing or expired, or
    /// once (rate-limited) when the kid is unknown to a fresh set.
    pub(crate) async fn key(
        &self,
        http: &reqwest::Client,
        kid: &str,
        now: Timestamp,
    ) -> Result<Arc<[u8]>, Miss> {
        let (look, generation) = self.look(kid, now);
        match look {
            Look::Found(key) => return Ok(key),
            Look::Unknown { may_refetch: false } => return Err(Miss::UnknownKid),
            Look::Stale { may_fetch: false } => return self.kept(kid, now),
            Look::Unknown { may_refetch: true } | Look::Stale { may_fetch: true } => {}
        }
        let _one_fetch = self.fetching.lock().await;
        if self.lock().generation == generation {
            self.lock().last_attempt = Some(now);
            let fetched = fetch(http, &self.url).await;
            let mut state = self.lock();
            state.generation += 1;
            match fetched {
                Ok((keys, ttl)) => {
                    state.keys = Some(Arc::new(keys));
                    state.fresh_until = Some(now + ttl);
                    state.last_failed = false;
                }
                Err(failure) => {
                    state.last_failed = true;
                    let kept = state
                        .fresh_until
                        .is_some_and(|until| now < until + STALE_GRACE);
                    tracing::warn!(
                        url = %self.url,
                        error = %failure,
                        using_kept_keys = kept && state.keys.is_some(),
                        "fetching the Chat event verification keys failed"
                    );
                }
            }
        }
        // Whatever the fetch (this task's or the one waited for) left.
        self.kept(kid, now)
    }
}

/// Why a fetch gave no key set. Says nothing of the body.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("request failed: {0}")]
    Transport(String),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("answer larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("answer is not a JSON object of kid to PEM certificate")]
    NotAKeyMap,
    #[error("no usable RSA certificate in the answer")]
    NoUsableKey,
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<(KeySet, SignedDuration), FetchError> {
    let transport = |e: reqwest::Error| FetchError::Transport(e.without_url().to_string());
    let mut response = http
        .get(url)
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(transport)?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(FetchError::Status(status));
    }
    let ttl = response
        .headers()
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let ttl = cache_ttl(&ttl);
    let mut body = Vec::new();
    // The timeout set on the request covers reading the body too.
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok((parse_key_map(&body, url)?, ttl))
}

/// The usable keys of a `{kid: PEM certificate}` map. Entries that are not RSA
/// certificates are skipped (one warning per fetch, with their count only).
pub(crate) fn parse_key_map(body: &[u8], url: &str) -> Result<KeySet, FetchError> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|_| FetchError::NotAKeyMap)?;
    let mut keys = KeySet::new();
    let mut skipped = 0usize;
    for (kid, pem) in &map {
        if keys.len() == MAX_KEYS {
            break;
        }
        let key = (kid.chars().count() <= MAX_KID_CHARS && !kid.is_empty())
            .then_some(pem)
            .and_then(|pem| pem.as_str())
            .and_then(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).ok())
            .and_then(|cert| der::rsa_public_key(&cert).ok().map(Arc::<[u8]>::from));
        match key {
            Some(key) => {
                keys.insert(kid.clone(), key);
            }
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(
            url,
            skipped,
            "skipped entries of the Chat verification key map that are not RSA certificates"
        );
    }
    if keys.is_empty() {
        return Err(FetchError::NoUsableKey);
    }
    Ok(keys)
}

/// How long an answer's keys are kept: its max-age, between 60 s and 24 h; 60 s under
/// no-store / no-cache; 1 h when it says nothing usable.
pub(crate) fn cache_ttl(cache_control: &str) -> SignedDuration {
    let mut ttl = None;
    for directive in cache_control.split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-store" || directive == "no-cache" {
            return MIN_TTL;
        }
        if let Some(seconds) = directive.strip_prefix("max-age=") {
            let seconds = seconds.trim_matches('"');
            match seconds.parse::<u64>() {
                Ok(seconds) => {
                    let seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
                    ttl = Some(SignedDuration::from_secs(seconds).clamp(MIN_TTL, MAX_TTL));
                }
                // A huge number overflows u64 but still means "long".
                Err(_) if !seconds.is_empty() && seconds.bytes().all(|b| b.is_ascii_digit()) => {
                    ttl = Some(MAX_TTL);
                }
                Err(_) => {}
            }
        }
    }
    ttl.unwrap_or(DEFAULT_TTL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_sets_how_long_keys_are_kept() {
        let s = SignedDuration::from_secs;
        assert_eq!(
            cache_ttl("public, max-age=21155, must-revalidate, no-transform"),
            s(21155)
        );
        assert_eq!(cache_ttl("Max-Age=120"), s(120));
        assert_eq!(cache_ttl(""), s(3600));
        assert_eq!(cache_ttl("public"), s(3600));
        assert_eq!(cache_ttl("max-age=soon"), s(3600));
        assert_eq!(cache_ttl("max-age=-5"), s(3600));
        assert_eq!(cache_ttl("max-age=0"), s(60));
        assert_eq!(cache_ttl("max-age=10"), s(60));
        assert_eq!(cache_ttl("no-store"), s(60));
        assert_eq!(cache_ttl("max-age=600, no-cache"), s(60));
        assert_eq!(cache_ttl("max-age=999999"), s(86400));
        assert_eq!(cache_ttl("max-age=99999999999999999999999"), s(86400));
        assert_eq!(cache_ttl("max-age=\"300\""), s(300));
    }

    #[test]
    fn key_maps_keep_good_certificates_and_skip_the_rest() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
        let cert = rcgen::CertificateParams::new(vec![])
            .expect("params")
            .self_signed(&key)
            .expect("cert")
            .pem();
        let body = serde_json::json!({
            "good": cert,
            "garbage": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "number": 7,
            "": cert,
        });
        let keys = parse_key_map(body.to_string().as_bytes(), "u").expect("keys");
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["good"]);
        assert!(matches!(
            parse_key_map(b"[]", "u"),
            Err(FetchError::NotAKeyMap)
        ));
        assert!(matches!(
            parse_key_map(b"{\"a\":\"b\"}", "u"),
            Err(FetchError::NoUsableKey)
        ));
        let many: serde_json::Map<String, serde_json::Value> = (0..100)
            .map(|i| (format!("k{i}"), cert.clone().into()))
            .collect();
        let keys = parse_key_map(serde_json::Value::Object(many).to_string().as_bytes(), "u")
            .expect("keys");
        assert_eq!(keys.len(), MAX_KEYS);
    }
}
