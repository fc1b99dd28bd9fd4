//! The service account: its key file, the RS256 JWT-bearer grant at the key's token_uri and
//! the cached access token. It must not let the key, an assertion or a token reach a print.

use std::sync::Mutex;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use tokio::time::Instant;

use crate::chat::{FailureClass, SendFailure, one_line};
use crate::secret::{Secret, scrub};

/// The one scope kabar asks for: post and edit its own messages as the app.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/chat.bot";
/// Lifetime asked for in the assertion: Google's maximum.
const ASSERTION_LIFETIME_S: i64 = 3600;
/// A cached token is replaced this long before Google said it expires, so a request never
/// leaves with a token that expires on the way.
const REFRESH_BEFORE: Duration = Duration::from_secs(60);
/// Google's token answers are a few hundred bytes.
const MAX_TOKEN_RESPONSE_BYTES: usize = 16 * 1024;

/// Why a key file cannot be used; names the field, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is not a JSON object (a service-account key file from Google Cloud is)")]
    NotJson,
    #[error("has no {0} (a service-account key file from Google Cloud has one)")]
    Missing(&'static str),
    #[error("has a {0} that is not a string")]
    NotAString(&'static str),
    #[error(
        "private_key is not a PKCS#8 PEM key (-----BEGIN PRIVATE KEY-----); convert a PKCS#1 key with `openssl pkcs8 -topk8 -nocrypt`"
    )]
    NotPkcs8,
    #[error("private_key is not an RSA key of 2048 to 8192 bits")]
    NotRsa,
    #[error("token_uri is not an http(s) URL")]
    BadTokenUri,
}

/// A parsed service-account key. Debug shows the account and token endpoint only.
pub struct ServiceAccountKey {
    pub client_email: String,
    pub token_uri: String,
    pub project_id: Option<String>,
    signer: RsaKeyPair,
    /// The PEM as read, kept only so any text kabar logs can be scrubbed of it.
    pem: Secret,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("project_id", &self.project_id)
            .field("private_key", &"[redacted]")
            .finish()
    }
}

impl ServiceAccountKey {
    /// Reads Google's key JSON: `client_email`, `token_uri` and a PKCS#8 RSA `private_key`
    /// are required (as the Rust auth crates require them); the rest is optional.
    pub fn parse(json: &str) -> Result<ServiceAccountKey, KeyError> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(|_| KeyError::NotJson)?;
        let object = value.as_object().ok_or(KeyError::NotJson)?;
        let field = |name: &'static str| match object.get(name) {
            None | Some(serde_json::Value::Null) => Err(KeyError::Missing(name)),
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => {
                Err(KeyError::Missing(name))
            }
            Some(serde_json::Value::String(s)) => Ok(s.trim().to_owned()),
            Some(_) => Err(KeyError::NotAString(name)),
        };
        let pem = Secret::new(field("private_key")?);
        let client_email = field("client_email")?;
        let token_uri = field("token_uri")?;
        match reqwest::Url::parse(&token_uri) {
            Ok(url) if matches!(url.scheme(), "https" | "http") => {}
            _ => return Err(KeyError::BadTokenUri),
        }
        let der = pkcs8_der(pem.expose()).ok_or(KeyError::NotPkcs8)?;
        let signer = RsaKeyPair::from_pkcs8(&der).map_err(|_| KeyError::NotRsa)?;
        Ok(ServiceAccountKey {
            client_email,
            token_uri,
            project_id: field("project_id").ok(),
            signer,
            pem,
        })
    }

    /// The signed assertion for the JWT-bearer grant, issued at `now_s` (Unix seconds).
    fn assertion(&self, now_s: i64) -> Result<Secret, SendFailure> {
        let header = r#"{"alg":"RS256","typ":"JWT"}"#;
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now_s,
            "exp": now_s + ASSERTION_LIFETIME_S,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.signer.public_modulus_len()];
        self.signer
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| {
                token_failure(
                    FailureClass::ClientError,
                    None,
                    "cannot sign the assertion with the service account key".to_owned(),
                )
            })?;
        Ok(Secret::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }
}

/// The DER inside a `-----BEGIN PRIVATE KEY-----` PEM block; None for any other block.
fn pkcs8_der(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find("-----BEGIN PRIVATE KEY-----")? + "-----BEGIN PRIVATE KEY-----".len();
    let end = pem[start..].find("-----END PRIVATE KEY-----")? + start;
    let base64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    STANDARD.decode(base64).ok()
}

/// A token and when it stops being used.
struct Cached {
    /// Which key it was issued for: a reload with another key must not reuse it.
    account: (String, String),
    token: Secret,
    refresh_at: Instant,
}

/// What a refresh did, for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refresh {
    /// The cached token was still good.
    Cached,
    /// A new token came from the token endpoint.
    Refreshed,
}

/// The access-token cache shared by every app-mode sender.
#[derive(Default)]
pub(crate) struct Tokens {
    cached: Mutex<Option<Cached>>,
    /// One refresh at a time: senders of many spaces wait for the same new token.
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens([redacted])")
    }
}

impl Tokens {
    fn current(&self, key: &ServiceAccountKey) -> Option<Secret> {
        let cached = self.cached.lock().ok()?;
        let cached = cached.as_ref()?;
        (cached.account == account(key) && Instant::now() < cached.refresh_at)
            .then(|| cached.token.clone())
    }

    /// Drops the cached token (Chat answered 401 to it).
    pub(crate) fn forget(&self, stale: &Secret) {
        if let Ok(mut cached) = self.cached.lock()
            && cached.as_ref().is_some_and(|c| &c.token == stale)
        {
            *cached = None;
        }
    }

    /// A token for `key`: the cached one while it has more than a minute left, else a
    /// new one from the key's token_uri.
    pub(crate) async fn get(
        &self,
        http: &reqwest::Client,
        key: &ServiceAccountKey,
    ) -> Result<(Secret, Refresh), SendFailure> {
        if let Some(token) = self.current(key) {
            return Ok((token, Refresh::Cached));
        }
        let _one_at_a_time = self.refreshing.lock().await;
        if let Some(token) = self.current(key) {
            return Ok((token, Refresh::Cached));
        }
        let (token, lifetime) = fetch(http, key).await?;
        let refresh_at = Instant::now() + lifetime.saturating_sub(REFRESH_BEFORE);
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some(Cached {
                account: account(key),
                token: token.clone(),
                refresh_at,
            });
        }
        Ok((token, Refresh::Refreshed))
    }
}

fn account(key: &ServiceAccountKey) -> (String, String) {
    (key.client_email.clone(), key.token_uri.clone())
}

fn token_failure(class: FailureClass, status: Option<u16>, detail: String) -> SendFailure {
    SendFailure {
        class,
        status,
        retry_after: None,
        detail,
    }
}

/// One JWT-bearer grant. A 4xx (revoked or deleted key, bad clock, wrong scope) is
/// permanent, as an auth error; 5xx, 429, timeouts and network errors are retried like
/// Chat's own.
async fn fetch(
    http: &reqwest::Client,
    key: &ServiceAccountKey,
) -> Result<(Secret, Duration), SendFailure> {
    let assertion = key.assertion(jiff::Timestamp::now().as_second())?;
    let form = format!(
        "grant_type={}&assertion={}",
        form_encode("urn:ietf:params:oauth:grant-type:jwt-bearer"),
        form_encode(assertion.expose())
    );
    let secrets = [assertion.expose(), key.pem.expose()];
    let prefix = "token endpoint";
    let response = http
        .post(&key.token_uri)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(form)
        .send()
        .await
        .map_err(|e| transport(prefix, e, &secrets))?;
    let status = response.status().as_u16();
    let text = read_capped(response)
        .await
        .map_err(|e| transport(prefix, e, &secrets))?;
    let answer: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    if !(200..300).contains(&status) {
        let class = match status {
            429 => FailureClass::RateLimited,
            408 => FailureClass::Timeout,
            500..=599 => FailureClass::ServerError,
            _ => FailureClass::AuthError,
        };
        let what = answer
            .as_ref()
            .and_then(|a| {
                let error = a.get("error")?.as_str()?;
                let description = a
                    .get("error_description")
                    .and_then(|d| d.as_str())
                    .unwrap_or("");
                Some(format!("{error}: {description}"))
            })
            .unwrap_or_else(|| "no OAuth error in the answer".to_owned());
        let what: String = what.chars().take(300).collect();
        let detail = if class == FailureClass::AuthError {
            format!(
                "{prefix} refused the service account key ({}): HTTP {status} {what}",
                key.client_email
            )
        } else {
            format!("{prefix} failed: HTTP {status} {what}")
        };
        return Err(token_failure(
            class,
            Some(status),
            one_line(&scrub(&detail, &secrets)),
        ));
    }
    let malformed = |why: &str| {
        token_failure(
            FailureClass::ServerError,
            Some(status),
            format!("{prefix} answered 200 without a usable token: {why}"),
        )
    };
    let answer = answer.ok_or_else(|| malformed("not JSON"))?;
    let token = answer["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| malformed("no access_token"))?;
    if let Some(kind) = answer.get("token_type").and_then(|t| t.as_str())
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(malformed("token_type is not Bearer"));
    }
    // Google sends a number; some servers a string.
    let expires_in = match &answer["expires_in"] {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| malformed("no expires_in"))?;
    Ok((
        Secret::new(token),
        Duration::from_secs(expires_in.min(24 * 3600)),
    ))
}

/// `application/x-www-form-urlencoded` for one value: all but unreserved characters
/// percent-encoded.
fn form_encode(value: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, RESERVED).to_string()
}

pub(super) async fn read_capped(mut response: reqwest::Response) -> Result<String, reqwest::Error> {
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_TOKEN_RESPONSE_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_TOKEN_RESPONSE_BYTES {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

pub(super) fn transport(what: &str, error: reqwest::Error, secrets: &[&str]) -> SendFailure {
    let class = if error.is_timeout() {
        FailureClass::Timeout
    } else {
        FailureClass::Network
    };
    let error = error.without_url();
    let mut detail = format!("{what}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    token_failure(class, None, one_line(&scrub(&detail, secrets)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;

    /// A key file around a freshly generated RSA key (a test key, made at test time).
    pub(crate) fn test_key_json(token_uri: &str) -> String {
        let pair =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("generate");
        let der = pair.as_der().expect("pkcs8");
        let body = STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ascii"))
            .collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        serde_json::json!({
            "type": "service_account",
            "project_id": "kabar-test",
            "private_key": pem,
            "client_email": "kabar@kabar-test.iam.gserviceaccount.com",
            "token_uri": token_uri,
        })
        .to_string()
    }

    #[test]
    fn a_key_parses_and_debug_hides_the_private_key() {
        let json = test_key_json("https://oauth2.googleapis.com/token");
        let key = ServiceAccountKey::parse(&json).expect("parses");
        let debug = format!("{key:?}");
        assert!(debug.contains("kabar@kabar-test"), "{debug}");
        assert!(
            !debug.contains("PRIVATE KEY") && !debug.contains("MII"),
            "{debug}"
        );
    }

    #[test]
    fn bad_key_files_name_the_field_and_never_the_value() {
        let json = test_key_json("https://oauth2.googleapis.com/token");
        let mut value: serde_json::Value = serde_json::from_str(&json).expect("json");
        for (field, expected) in [
            ("client_email", KeyError::Missing("client_email")),
            ("token_uri", KeyError::Missing("token_uri")),
            ("private_key", KeyError::Missing("private_key")),
        ] {
            let mut without = value.clone();
            without.as_object_mut().expect("object").remove(field);
            let err = ServiceAccountKey::parse(&without.to_string()).expect_err(field);
            assert_eq!(err, expected);
        }
        let pem = value["private_key"].as_str().expect("pem").to_owned();
        value["private_key"] = pem
            .replace("BEGIN PRIVATE", "BEGIN RSA PRIVATE")
            .replace("END PRIVATE", "END RSA PRIVATE")
            .into();
        let err = ServiceAccountKey::parse(&value.to_string()).expect_err("pkcs1");
        assert_eq!(err, KeyError::NotPkcs8);
        assert!(!err.to_string().contains("MII"));
        assert_eq!(
            ServiceAccountKey::parse("[1]").expect_err("not an object"),
            KeyError::NotJson
        );
    }

    #[test]
    fn the_assertion_is_rs256_with_the_documented_claims_and_verifies() {
        let json = test_key_json("http://127.0.0.1:1/token");
        let key = ServiceAccountKey::parse(&json).expect("parses");
        let assertion = key.assertion(1_700_000_000).expect("signed");
        let parts: Vec<&str> = assertion.expose().split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
        assert_eq!(header["alg"], "RS256");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(claims["iss"], "kabar@kabar-test.iam.gserviceaccount.com");
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["aud"], "http://127.0.0.1:1/token");
        assert_eq!(claims["exp"], 1_700_003_600);
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            aws_lc_rs::signature::KeyPair::public_key(&key.signer)
                .as_ref()
                .to_vec(),
        );
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("b64");
        public
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("the signature verifies with the public half");
    }
}
