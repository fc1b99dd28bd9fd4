//! Verifies the bearer token Google Chat signs its app events with: RS256 over the raw
//! header and claims, against Chat's (or Google's ID-token) certificates, then issuer,
//! audience, lifetime and, for ID tokens, the sender's e-mail. It must not act on an event,
//! nor log a token, a claim value or more than a short printable kid.

mod der;
mod keys;

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value};

use keys::{KeyCache, Miss};

/// Keys of Chat's self-signed event tokens (audience: the project number).
pub(crate) const CHAT_CERTS_URL: &str =
    "https://www.googleapis.com/service_accounts/v1/metadata/x509/chat@system.gserviceaccount.com";
/// Keys of Google-signed ID tokens, as the same kid → PEM certificate map.
pub(crate) const GOOGLE_CERTS_URL: &str = "https://www.googleapis.com/oauth2/v1/certs";
/// Issuer (and ID-token e-mail) of Chat's own tokens.
pub(crate) const CHAT_ISSUER: &str = "chat@system.gserviceaccount.com";
/// Issuers of Google ID tokens; libraries accept both spellings.
const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
/// A header value longer than this is refused before any decoding.
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Clock skew allowed on exp, iat and nbf.
pub(crate) const LEEWAY: SignedDuration = SignedDuration::from_secs(60);
/// The longest lifetime a token may claim, and how far ahead its exp may lie (the bound
/// Google's Node library applies). Chat's tokens live an hour.
pub(crate) const MAX_LIFETIME: SignedDuration = SignedDuration::from_secs(24 * 3600);

/// What the verifier needs from `chat_app`.
#[derive(Debug, Clone)]
pub(crate) struct VerifierSettings {
    /// `aud` of Chat's self-signed tokens.
    pub project_number: String,
    /// Where Chat's certificates are, [`CHAT_CERTS_URL`] unless a test says.
    pub certs_url: String,
    /// When set, Google ID tokens with `aud` = this URL are accepted too (an app whose
    /// authentication audience is its endpoint URL, and Workspace add-on apps).
    pub endpoint_url: Option<String>,
    /// Where Google's ID-token certificates are, [`GOOGLE_CERTS_URL`] unless a test says.
    pub id_token_certs_url: String,
}

/// Which kind of token was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// Signed by chat@system.gserviceaccount.com, aud = project number.
    ChatSelfSigned,
    /// A Google ID token, aud = the endpoint URL.
    GoogleIdToken,
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifiedToken {
    pub kind: TokenKind,
    /// The signer's e-mail claim (ID tokens always carry one).
    pub email: Option<String>,
}

/// Why a token was refused. The messages name the check, never a value from the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum VerifyError {
    #[error("no bearer token")]
    MissingToken,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token is not signed with RS256")]
    UnsupportedAlg,
    #[error("the token names no key, or one the key set does not have")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token's issuer is not Google Chat")]
    WrongIssuer,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token claims a lifetime longer than 24 hours")]
    LifetimeTooLong,
    #[error("the token lacks exp or iat")]
    MissingClaim,
    #[error("the ID token is not from Google Chat's account, or its e-mail is not verified")]
    WrongEmail,
    #[error("the verification keys could not be fetched")]
    KeysUnavailable,
}

impl VerifyError {
    /// Every reason, so metrics can register them all up front.
    pub(crate) const REASONS: &[&str] = &[
        "missing_token",
        "malformed",
        "unsupported_alg",
        "unknown_key",
        "bad_signature",
        "wrong_issuer",
        "wrong_audience",
        "expired",
        "not_yet_valid",
        "lifetime_too_long",
        "missing_claim",
        "wrong_email",
        "keys_unavailable",
    ];

    /// The metric label of this failure; one of [`Self::REASONS`].
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            VerifyError::MissingToken => "missing_token",
            VerifyError::Malformed => "malformed",
            VerifyError::UnsupportedAlg => "unsupported_alg",
            VerifyError::UnknownKey => "unknown_key",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::WrongIssuer => "wrong_issuer",
            VerifyError::WrongAudience => "wrong_audience",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
            VerifyError::LifetimeTooLong => "lifetime_too_long",
            VerifyError::MissingClaim => "missing_claim",
            VerifyError::WrongEmail => "wrong_email",
            VerifyError::KeysUnavailable => "keys_unavailable",
        }
    }

    /// True when kabar could not check at all (no keys): the endpoint answers 503 so
    /// Chat retries, rather than 401.
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(self, VerifyError::KeysUnavailable)
    }
}

/// Padded or unpadded base64url: Google pads nothing, but some signers pad.
const B64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The verifier: settings plus one key cache per certs URL. Shared by reference.
#[derive(Debug)]
pub(crate) struct EventVerifier {
    settings: VerifierSettings,
    chat_keys: KeyCache,
    id_token_keys: KeyCache,
}

/// A JWT split and decoded, nothing checked yet but its shape.
struct Parsed<'a> {
    signed: &'a [u8],
    signature: Vec<u8>,
    header: Map<String, Value>,
    claims: Map<String, Value>,
}

fn parse(token: &[u8]) -> Result<Parsed<'_>, VerifyError> {
    let mut parts = token.split(|&b| b == b'.');
    let (Some(head), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed);
    };
    let decode = |part: &[u8]| B64.decode(part).map_err(|_| VerifyError::Malformed);
    let object = |part: &[u8]| {
        serde_json::from_slice::<Map<String, Value>>(&decode(part)?)
            .map_err(|_| VerifyError::Malformed)
    };
    let header = object(head)?;
    let claims = object(body)?;
    let signature = decode(sig)?;
    Ok(Parsed {
        signed: &token[..head.len() + 1 + body.len()],
        signature,
        header,
        claims,
    })
}

/// A kid as it may appear in a log line: at most 64 printable ASCII characters.
fn loggable(kid: &str) -> String {
    kid.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// A NumericDate claim: seconds since the epoch, fractions allowed (RFC 7519).
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, VerifyError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(seconds), _) => Ok(Some(seconds)),
            (None, Some(seconds)) if seconds.is_finite() && seconds.abs() < 1e15 => {
                // Bounded above, so the cast cannot saturate in a surprising way.
                #[allow(clippy::cast_possible_truncation)]
                Ok(Some(seconds.floor() as i64))
            }
            _ => Err(VerifyError::Malformed),
        },
        Some(_) => Err(VerifyError::Malformed),
    }
}

/// exp and iat present; now within [iat − leeway, exp + leeway]; nbf (if any) not ahead
/// beyond the leeway. Lifetimes are bounded: exp no more than 24 h ahead and exp − iat
/// no more than 24 h. The second bound is what "iat more than 24 h in the past" comes
/// to for a token that has not expired, so an old token cannot be made to live long
/// with a far exp, and no separate iat-age rule is needed.
fn check_times(claims: &Map<String, Value>, now: Timestamp) -> Result<(), VerifyError> {
    let exp = time_claim(claims, "exp")?;
    let iat = time_claim(claims, "iat")?;
    let nbf = time_claim(claims, "nbf")?;
    let (Some(exp), Some(iat)) = (exp, iat) else {
        return Err(VerifyError::MissingClaim);
    };
    let now = now.as_second();
    let leeway = LEEWAY.as_secs();
    if exp < iat {
        return Err(VerifyError::Malformed);
    }
    if now >= exp.saturating_add(leeway) {
        return Err(VerifyError::Expired);
    }
    if iat > now.saturating_add(leeway) || nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(VerifyError::NotYetValid);
    }
    let max = MAX_LIFETIME.as_secs();
    if exp.saturating_sub(iat) > max || exp > now.saturating_add(max).saturating_add(leeway) {
        return Err(VerifyError::LifetimeTooLong);
    }
    Ok(())
}

/// `aud` as a string or an array of strings containing `want`.
fn audience_has(claims: &Map<String, Value>, want: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => aud == want,
        Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(want)),
        _ => false,
    }
}

impl EventVerifier {
    pub(crate) fn new(settings: VerifierSettings) -> Self {
        EventVerifier {
            chat_keys: KeyCache::new(settings.certs_url.clone()),
            id_token_keys: KeyCache::new(settings.id_token_certs_url.clone()),
            settings,
        }
    }

    /// Checks the raw `Authorization` header value of a Chat event.
    pub(crate) async fn verify(
        &self,
        http: &reqwest::Client,
        authorization: Option<&[u8]>,
        now: Timestamp,
    ) -> Result<VerifiedToken, VerifyError> {
        let value = authorization.ok_or(VerifyError::MissingToken)?;
        if value.len() > MAX_HEADER_BYTES {
            return Err(VerifyError::Malformed);
        }
        let token = match value.split_at_checked(7) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => token.trim_ascii(),
            _ => return Err(VerifyError::MissingToken),
        };
        if token.is_empty() {
            return Err(VerifyError::MissingToken);
        }
        let parsed = parse(token)?;
        if parsed.header.get("alg").and_then(Value::as_str) != Some("RS256") {
            return Err(VerifyError::UnsupportedAlg);
        }
        // The issuer, unverified, only picks the key set; everything is verified after.
        let (kind, keys) = match parsed.claims.get("iss").and_then(Value::as_str) {
            Some(CHAT_ISSUER) => (TokenKind::ChatSelfSigned, &self.chat_keys),
            Some(iss) if GOOGLE_ISSUERS.contains(&iss) && self.settings.endpoint_url.is_some() => {
                (TokenKind::GoogleIdToken, &self.id_token_keys)
            }
            _ => return Err(VerifyError::WrongIssuer),
        };
        let Some(kid) = parsed.header.get("kid").and_then(Value::as_str) else {
            return Err(VerifyError::UnknownKey);
        };
        let key = keys.key(http, kid, now).await.map_err(|miss| {
            tracing::debug!(kid = %loggable(kid), ?miss, "no key for a Chat event token");
            match miss {
                Miss::UnknownKid => VerifyError::UnknownKey,
                Miss::Unavailable => VerifyError::KeysUnavailable,
            }
        })?;
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &*key)
            .verify(parsed.signed, &parsed.signature)
            .map_err(|_| VerifyError::BadSignature)?;
        let claims = &parsed.claims;
        let email = claims
            .get("email")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match kind {
            TokenKind::ChatSelfSigned => {
                if !audience_has(claims, &self.settings.project_number) {
                    return Err(VerifyError::WrongAudience);
                }
            }
            TokenKind::GoogleIdToken => {
                let endpoint = self.settings.endpoint_url.as_deref().unwrap_or_default();
                if !audience_has(claims, endpoint) {
                    return Err(VerifyError::WrongAudience);
                }
                let addon = format!(
                    "service-{}@gcp-sa-gsuiteaddons.iam.gserviceaccount.com",
                    self.settings.project_number
                );
                let sender = email
                    .as_deref()
                    .is_some_and(|email| email == CHAT_ISSUER || email == addon);
                // Google sends a boolean; older ID tokens carried the string "true".
                let verified = matches!(claims.get("email_verified"), Some(Value::Bool(true)))
                    || claims.get("email_verified").and_then(Value::as_str) == Some("true");
                if !(sender && verified) {
                    return Err(VerifyError::WrongEmail);
                }
            }
        }
        check_times(claims, now)?;
        Ok(VerifiedToken { kind, email })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
    use serde_json::json;

    use super::*;

    const PROJECT: &str = "123456789012";
    const ENDPOINT: &str = "https://kabar.example.com/chat/events";

    struct Key {
        pair: RsaKeyPair,
        cert: String,
    }

    fn new_key() -> Key {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
        let cert = rcgen::CertificateParams::new(vec![])
            .expect("params")
            .self_signed(&key)
            .expect("cert")
            .pem();
        let pair = RsaKeyPair::from_pkcs8(&key.serialize_der()).expect("pkcs8");
        Key { pair, cert }
    }

    /// Two keys, made once: RSA generation is slow.
    fn keys() -> &'static [Key; 2] {
        static KEYS: OnceLock<[Key; 2]> = OnceLock::new();
        KEYS.get_or_init(|| [new_key(), new_key()])
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("time")
    }

    fn sign_with(key: &Key, header: &Value, claims: &Value, padded: bool) -> String {
        let enc = |bytes: &[u8]| {
            let text = B64.encode(bytes);
            if padded {
                let pad = (4 - text.len() % 4) % 4;
                format!("{text}{}", "=".repeat(pad))
            } else {
                text
            }
        };
        let signed = format!(
            "{}.{}",
            enc(header.to_string().as_bytes()),
            enc(claims.to_string().as_bytes())
        );
        let mut sig = vec![0; key.pair.public_modulus_len()];
        key.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                signed.as_bytes(),
                &mut sig,
            )
            .expect("sign");
        format!("{signed}.{}", enc(&sig))
    }

    fn chat_claims() -> Value {
        let t = now().as_second();
        json!({"iss": CHAT_ISSUER, "aud": PROJECT, "iat": t, "exp": t + 3600})
    }

    fn id_claims(email: &str) -> Value {
        let t = now().as_second();
        json!({"iss": "https://accounts.google.com", "aud": ENDPOINT, "email": email,
               "email_verified": true, "iat": t, "exp": t + 3600})
    }

    fn token(claims: &Value) -> String {
        sign_with(
            &keys()[0],
            &json!({"alg": "RS256", "kid": "k0", "typ": "JWT"}),
            claims,
            false,
        )
    }

    /// A certs endpoint on 127.0.0.1 that counts its fetches.
    struct Certs {
        url: String,
        fetches: Arc<AtomicUsize>,
        /// (status, Cache-Control, body)
        answer: Arc<Mutex<(u16, String, String)>>,
    }

    impl Certs {
        fn set(&self, status: u16, cache_control: &str, body: String) {
            *self.answer.lock().expect("lock") = (status, cache_control.to_owned(), body);
        }
        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    fn map(entries: &[(&str, usize)]) -> String {
        let map: Map<String, Value> = entries
            .iter()
            .map(|(kid, i)| ((*kid).to_owned(), keys()[*i].cert.clone().into()))
            .collect();
        Value::Object(map).to_string()
    }

    async fn certs(cache_control: &str) -> Certs {
        let fetches = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(Mutex::new((
            200,
            cache_control.to_owned(),
            map(&[("k0", 0)]),
        )));
        let (count, shared) = (fetches.clone(), answer.clone());
        let app = axum::Router::new().route(
            "/certs",
            axum::routing::get(move || {
                let (count, shared) = (count.clone(), shared.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    // Slow enough that concurrent verifies overlap the fetch.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    let (status, cache, body) = shared.lock().expect("lock").clone();
                    let status = axum::http::StatusCode::from_u16(status).expect("status");
                    (status, [("cache-control", cache)], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Certs {
            url: format!("http://{addr}/certs"),
            fetches,
            answer,
        }
    }

    fn verifier(certs: &Certs, endpoint: bool) -> EventVerifier {
        EventVerifier::new(VerifierSettings {
            project_number: PROJECT.to_owned(),
            certs_url: certs.url.clone(),
            endpoint_url: endpoint.then(|| ENDPOINT.to_owned()),
            id_token_certs_url: certs.url.clone(),
        })
    }

    async fn check(
        v: &EventVerifier,
        header: &str,
        at: Timestamp,
    ) -> Result<VerifiedToken, VerifyError> {
        v.verify(&reqwest::Client::new(), Some(header.as_bytes()), at)
            .await
    }

    async fn reason(v: &EventVerifier, token: &str) -> &'static str {
        match check(v, &format!("Bearer {token}"), now()).await {
            Ok(_) => "ok",
            Err(e) => e.reason(),
        }
    }

    #[tokio::test]
    async fn chat_tokens_verify_padded_or_not_with_aud_as_string_or_array() {
        let certs = certs("public, max-age=3600").await;
        let v = verifier(&certs, false);
        let header = json!({"alg": "RS256", "kid": "k0"});
        for padded in [false, true] {
            let t = sign_with(&keys()[0], &header, &chat_claims(), padded);
            let ok = check(&v, &format!("Bearer {t}"), now())
                .await
                .expect("verifies");
            assert_eq!(
                ok,
                VerifiedToken {
                    kind: TokenKind::ChatSelfSigned,
                    email: None
                }
            );
        }
        let mut claims = chat_claims();
        claims["aud"] = json!(["other", PROJECT]);
        assert_eq!(reason(&v, &token(&claims)).await, "ok");
        claims["aud"] = json!(["other", 123456789012_u64]);
        assert_eq!(reason(&v, &token(&claims)).await, "wrong_audience");
        assert!(
            check(&v, &format!("bearer  {}", token(&chat_claims())), now())
                .await
                .is_ok()
        );
        assert_eq!(certs.fetches(), 1, "one fetch serves every token");
    }

    #[tokio::test]
    async fn each_kind_of_bad_token_gets_its_reason() {
        let certs = certs("max-age=3600").await;
        let v = verifier(&certs, false);
        let good = token(&chat_claims());
        assert_eq!(
            v.verify(&reqwest::Client::new(), None, now()).await,
            Err(VerifyError::MissingToken)
        );
        for header in ["", "Basic abc", "Bearer", "Bearer   ", "Token x.y.z"] {
            assert_eq!(
                check(&v, header, now()).await,
                Err(VerifyError::MissingToken),
                "{header:?}"
            );
        }
        let huge = format!("Bearer {good}{}", "A".repeat(MAX_HEADER_BYTES));
        assert_eq!(check(&v, &huge, now()).await, Err(VerifyError::Malformed));
        let parts: Vec<&str> = good.split('.').collect();
        for bad in [
            parts[..2].join("."),
            format!("{good}.x"),
            format!("{}.!!!.{}", parts[0], parts[2]),
            format!("{}.{}.{}", parts[0], B64.encode(b"not json"), parts[2]),
            format!("{}.{}.{}", parts[0], B64.encode(b"[1]"), parts[2]),
        ] {
            assert_eq!(reason(&v, &bad).await, "malformed", "{bad}");
        }
        for alg in [
            json!({"alg": "none", "kid": "k0"}),
            json!({"alg": "HS256", "kid": "k0"}),
            json!({"alg": "RS512", "kid": "k0"}),
            json!({"alg": "ES256", "kid": "k0"}),
            json!({"kid": "k0"}),
        ] {
            let t = sign_with(&keys()[0], &alg, &chat_claims(), false);
            assert_eq!(reason(&v, &t).await, "unsupported_alg", "{alg}");
        }
        let no_kid = sign_with(&keys()[0], &json!({"alg": "RS256"}), &chat_claims(), false);
        assert_eq!(reason(&v, &no_kid).await, "unknown_key");
        let other_kid = sign_with(
            &keys()[0],
            &json!({"alg": "RS256", "kid": "k9"}),
            &chat_claims(),
            false,
        );
        assert_eq!(reason(&v, &other_kid).await, "unknown_key");
        let other_key = sign_with(
            &keys()[1],
            &json!({"alg": "RS256", "kid": "k0"}),
            &chat_claims(),
            false,
        );
        assert_eq!(reason(&v, &other_key).await, "bad_signature");
        let mut sig = B64.decode(parts[2]).expect("sig");
        sig[10] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], B64.encode(&sig));
        assert_eq!(reason(&v, &flipped).await, "bad_signature");
        let t = now().as_second();
        let cases = [
            (
                json!({"iss": "someone@else", "aud": PROJECT, "iat": t, "exp": t + 60}),
                "wrong_issuer",
            ),
            (
                json!({"aud": PROJECT, "iat": t, "exp": t + 60}),
                "wrong_issuer",
            ),
            (id_claims(CHAT_ISSUER), "wrong_issuer"), // ID tokens only with an endpoint URL
            (
                json!({"iss": CHAT_ISSUER, "aud": "999", "iat": t, "exp": t + 60}),
                "wrong_audience",
            ),
            (
                json!({"iss": CHAT_ISSUER, "iat": t, "exp": t + 60}),
                "wrong_audience",
            ),
            (
                json!({"iss": CHAT_ISSUER, "aud": PROJECT, "iat": t - 3600, "exp": t - 60}),
                "expired",
            ),
            (
                json!({"iss": CHAT_ISSUER, "aud": PROJECT, "iat": t + 600, "exp": t + 900}),
                "not_yet_valid",
            ),
            (
                json!({"iss": CHAT_ISSUER, "aud": PROJECT, "iat": t, "nbf": t + 61, "exp": t + 900}),
                "not_yet_valid",
            ),
            (
                json!({"iss": CHAT_ISSUER, "aud": PROJECT, "iat": t, "exp": t + 86_461}),
                "lifetime_too_long",
            ),
            (
                json!({"iss": CHAT_ISSUER, "aud": PROJECT, "iat": t - 86_401, "exp": t + 60}),
                "lifetime_too_long",
            ),
            (
                json!({"iss": CHAT_ISSUER, "aud": PROJECT, "iat": t}),
                "missing_claim",
            ),
            (
                json!({"iss": CHAT_ISSUER, "aud": PROJECT, "exp": t + 60}),
                "missing_claim",
            ),
            (
                json!({"iss": CHAT_ISSUER, "aud": PROJECT, "iat": "now", "exp": t + 60}),
                "malformed",
            ),
            (
                json!({"iss": CHAT_ISSUER, "aud": PROJECT, "iat": t, "exp": t - 1}),
                "malformed",
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(reason(&v, &token(&claims)).await, want, "{claims}");
        }
        assert!(!VerifyError::Expired.is_unavailable());
    }

    #[tokio::test]
    async fn the_leeway_is_sixty_seconds_each_way() {
        let certs = certs("max-age=3600").await;
        let v = verifier(&certs, false);
        let t = now().as_second();
        let at = |exp: i64, iat: i64| json!({"iss": CHAT_ISSUER, "aud": PROJECT, "iat": iat, "exp": exp});
        assert_eq!(reason(&v, &token(&at(t - 59, t - 600))).await, "ok");
        assert_eq!(reason(&v, &token(&at(t - 60, t - 600))).await, "expired");
        assert_eq!(reason(&v, &token(&at(t + 600, t + 60))).await, "ok");
        assert_eq!(
            reason(&v, &token(&at(t + 600, t + 61))).await,
            "not_yet_valid"
        );
        let fractional = json!({"iss": CHAT_ISSUER, "aud": PROJECT, "iat": t as f64 + 0.5, "exp": t as f64 + 60.5});
        assert_eq!(reason(&v, &token(&fractional)).await, "ok");
    }

    #[tokio::test]
    async fn id_tokens_need_the_endpoint_audience_and_chats_verified_email() {
        let certs = certs("max-age=3600").await;
        let v = verifier(&certs, true);
        let addon = format!("service-{PROJECT}@gcp-sa-gsuiteaddons.iam.gserviceaccount.com");
        for email in [CHAT_ISSUER, addon.as_str()] {
            let ok = check(&v, &format!("Bearer {}", token(&id_claims(email))), now()).await;
            assert_eq!(
                ok,
                Ok(VerifiedToken {
                    kind: TokenKind::GoogleIdToken,
                    email: Some(email.to_owned())
                })
            );
        }
        let mut claims = id_claims(CHAT_ISSUER);
        claims["iss"] = json!("accounts.google.com");
        assert_eq!(reason(&v, &token(&claims)).await, "ok");
        claims["email_verified"] = json!("true");
        assert_eq!(reason(&v, &token(&claims)).await, "ok");
        claims["email_verified"] = json!(false);
        assert_eq!(reason(&v, &token(&claims)).await, "wrong_email");
        claims
            .as_object_mut()
            .expect("object")
            .remove("email_verified");
        assert_eq!(reason(&v, &token(&claims)).await, "wrong_email");
        for email in [
            "someone@example.com",
            "service-1@gcp-sa-gsuiteaddons.iam.gserviceaccount.com",
        ] {
            assert_eq!(reason(&v, &token(&id_claims(email))).await, "wrong_email");
        }
        let mut claims = id_claims(CHAT_ISSUER);
        claims.as_object_mut().expect("object").remove("email");
        assert_eq!(reason(&v, &token(&claims)).await, "wrong_email");
        claims = id_claims(CHAT_ISSUER);
        claims["aud"] = json!(PROJECT);
        assert_eq!(reason(&v, &token(&claims)).await, "wrong_audience");
        // The project-number tokens still work beside ID tokens.
        assert_eq!(reason(&v, &token(&chat_claims())).await, "ok");
    }

    #[tokio::test]
    async fn unknown_kids_refetch_at_most_once_per_thirty_seconds() {
        let certs = certs("max-age=3600").await;
        let v = verifier(&certs, false);
        let good = token(&chat_claims());
        let stranger = sign_with(
            &keys()[1],
            &json!({"alg": "RS256", "kid": "k1"}),
            &chat_claims(),
            false,
        );
        assert_eq!(
            check(&v, &format!("Bearer {good}"), now())
                .await
                .map(|t| t.kind),
            Ok(TokenKind::ChatSelfSigned)
        );
        assert_eq!(certs.fetches(), 1);
        // Within the refetch interval of that first fetch: answered from the cache.
        for _ in 0..50 {
            assert_eq!(
                check(&v, &format!("Bearer {stranger}"), now()).await,
                Err(VerifyError::UnknownKey)
            );
        }
        assert_eq!(certs.fetches(), 1);
        let later = now() + SignedDuration::from_secs(31);
        for _ in 0..50 {
            assert_eq!(
                check(&v, &format!("Bearer {stranger}"), later).await,
                Err(VerifyError::UnknownKey)
            );
        }
        assert_eq!(certs.fetches(), 2, "one refetch for the flood");
        // The key is rotated in: the next allowed refetch finds it; the dropped one fails.
        certs.set(200, "max-age=3600", map(&[("k1", 1)]));
        let rotated = later + SignedDuration::from_secs(31);
        assert!(
            check(&v, &format!("Bearer {stranger}"), rotated)
                .await
                .is_ok()
        );
        assert_eq!(certs.fetches(), 3);
        assert_eq!(
            check(&v, &format!("Bearer {good}"), rotated).await,
            Err(VerifyError::UnknownKey)
        );
    }

    #[tokio::test]
    async fn keys_are_kept_for_max_age_then_fetched_again() {
        let certs = certs("public, max-age=120").await;
        let v = verifier(&certs, false);
        let t = |secs: i64| {
            let at = now() + SignedDuration::from_secs(secs);
            let claims = json!({"iss": CHAT_ISSUER, "aud": PROJECT, "iat": at.as_second(), "exp": at.as_second() + 60});
            (format!("Bearer {}", token(&claims)), at)
        };
        for secs in [0, 60, 119] {
            let (header, at) = t(secs);
            assert!(check(&v, &header, at).await.is_ok());
        }
        assert_eq!(certs.fetches(), 1);
        let (header, at) = t(120);
        assert!(check(&v, &header, at).await.is_ok());
        assert_eq!(certs.fetches(), 2);
    }

    #[tokio::test]
    async fn expired_keys_serve_an_hour_while_fetches_fail_then_not() {
        let certs = certs("max-age=60").await;
        let v = verifier(&certs, false);
        let at = |secs: i64| {
            let at = now() + SignedDuration::from_secs(secs);
            let claims = json!({"iss": CHAT_ISSUER, "aud": PROJECT, "iat": at.as_second(), "exp": at.as_second() + 60});
            (format!("Bearer {}", token(&claims)), at)
        };
        let (header, when) = at(0);
        assert!(check(&v, &header, when).await.is_ok());
        certs.set(503, "", String::new());
        let (header, when) = at(61);
        assert!(check(&v, &header, when).await.is_ok(), "stale keys serve");
        assert_eq!(certs.fetches(), 2);
        let (header, when) = at(63);
        assert!(check(&v, &header, when).await.is_ok());
        assert_eq!(
            certs.fetches(),
            2,
            "a failed fetch is retried after 5 s, not at once"
        );
        let (header, when) = at(60 + 3599);
        assert!(check(&v, &header, when).await.is_ok());
        assert_eq!(certs.fetches(), 3);
        let (header, when) = at(60 + 3600);
        let late = check(&v, &header, when).await;
        assert_eq!(late, Err(VerifyError::KeysUnavailable));
        assert!(late.err().is_some_and(|e| e.is_unavailable()));
        // Google answers again: back to normal.
        certs.set(200, "max-age=60", map(&[("k0", 0)]));
        let (header, when) = at(60 + 3610);
        assert!(check(&v, &header, when).await.is_ok());
    }

    #[tokio::test]
    async fn no_usable_key_set_is_keys_unavailable() {
        let certs = certs("max-age=60").await;
        let v = verifier(&certs, false);
        let good = token(&chat_claims());
        let mut secs = 0;
        for (status, body) in [
            (503, map(&[("k0", 0)])),
            (200, "[]".to_owned()),
            (200, "{\"k0\": \"not a cert\"}".to_owned()),
            (
                200,
                // A usable map, refused only for its size.
                json!({"k0": keys()[0].cert, "pad": "A".repeat(keys::MAX_BODY_BYTES)}).to_string(),
            ),
        ] {
            certs.set(status, "", body);
            let at = now() + SignedDuration::from_secs(secs);
            assert_eq!(
                check(&v, &format!("Bearer {good}"), at).await,
                Err(VerifyError::KeysUnavailable)
            );
            secs += 6;
        }
        assert_eq!(certs.fetches(), 4);
        let closed = EventVerifier::new(VerifierSettings {
            project_number: PROJECT.to_owned(),
            certs_url: "http://127.0.0.1:1/certs".to_owned(),
            endpoint_url: None,
            id_token_certs_url: GOOGLE_CERTS_URL.to_owned(),
        });
        assert_eq!(
            check(&closed, &format!("Bearer {good}"), now()).await,
            Err(VerifyError::KeysUnavailable)
        );
    }

    #[tokio::test]
    async fn concurrent_verifies_on_a_cold_cache_fetch_once() {
        let certs = certs("max-age=3600").await;
        let v = Arc::new(verifier(&certs, false));
        let good = format!("Bearer {}", token(&chat_claims()));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (v, good) = (v.clone(), good.clone());
                tokio::spawn(async move { check(&v, &good, now()).await.is_ok() })
            })
            .collect();
        for task in tasks {
            assert!(task.await.expect("task"));
        }
        assert_eq!(certs.fetches(), 1);
    }

    #[test]
    fn reasons_are_listed_once_each_and_kids_are_logged_short() {
        let all = [
            VerifyError::MissingToken,
            VerifyError::Malformed,
            VerifyError::UnsupportedAlg,
            VerifyError::UnknownKey,
            VerifyError::BadSignature,
            VerifyError::WrongIssuer,
            VerifyError::WrongAudience,
            VerifyError::Expired,
            VerifyError::NotYetValid,
            VerifyError::LifetimeTooLong,
            VerifyError::MissingClaim,
            VerifyError::WrongEmail,
            VerifyError::KeysUnavailable,
        ];
        let reasons: Vec<&str> = all.iter().map(VerifyError::reason).collect();
        assert_eq!(reasons, VerifyError::REASONS);
        assert_eq!(all.iter().filter(|e| e.is_unavailable()).count(), 1);
        assert_eq!(loggable(&"x\n".repeat(100)).len(), 64);
        assert_eq!(loggable("a\u{1b}b"), "a?b");
        assert!(CHAT_CERTS_URL.ends_with(CHAT_ISSUER));
    }

    #[tokio::test]
    async fn logs_name_reasons_and_short_kids_never_tokens_or_key_material() {
        // Not a thread-local subscriber: see log_capture for why that loses events.
        let capture = crate::log_capture::Capture::start();
        let certs = certs("max-age=60").await;
        let broken = "-----BEGIN CERTIFICATE-----\nQUJDREVGR0hJSktM\n-----END CERTIFICATE-----\n";
        certs.set(
            200,
            "max-age=60",
            json!({"k0": keys()[0].cert, "bad": broken}).to_string(),
        );
        let v = verifier(&certs, false);
        let good = token(&chat_claims());
        let long_kid = format!("{}\nFORGED LINE {}", "k".repeat(60), "z".repeat(500));
        let stranger = sign_with(
            &keys()[0],
            &json!({"alg": "RS256", "kid": long_kid}),
            &chat_claims(),
            false,
        );
        assert!(check(&v, &format!("Bearer {good}"), now()).await.is_ok());
        assert_eq!(reason(&v, &stranger).await, "unknown_key");
        certs.set(503, "", "secret-looking body".to_owned());
        let later = now() + SignedDuration::from_secs(61);
        let late_claims = json!({"iss": CHAT_ISSUER, "aud": PROJECT, "iat": later.as_second(), "exp": later.as_second() + 60});
        let late = token(&late_claims);
        assert!(check(&v, &format!("Bearer {late}"), later).await.is_ok());
        let log = capture.text();
        // The events this test provokes were logged at all…
        assert!(log.contains("skipped=1"), "{log}");
        assert!(
            log.contains("answered HTTP 503") && log.contains("using_kept_keys=true"),
            "{log}"
        );
        assert!(log.contains(&"k".repeat(60)), "{log}");
        // …and nothing they carry leaked.
        for token in [&good, &stranger, &late] {
            for part in token.split('.') {
                assert!(!log.contains(part), "a token segment was logged: {log}");
            }
        }
        assert!(!log.contains("FORGED") && !log.contains("zzzz"), "{log}");
        assert!(
            !log.contains("QUJDREVG") && !log.contains("secret-looking"),
            "{log}"
        );
        let cert_body: String = keys()[0].cert.lines().nth(1).unwrap_or_default().to_owned();
        assert!(!log.contains(&cert_body), "{log}");
    }
}
