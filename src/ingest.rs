//! The webhook edge: authentication, size and type checks and parsing, then the notification
//! goes to the pipeline; `ApiError` is the single mapping from failures to HTTP answers.
//! It must not route, plan, render or queue (the pipeline does) nor hold app state (app does).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::config::Auth;
use crate::metrics::RejectReason;
use crate::payload::{Notification, PayloadError, elide_middle};
use crate::pipeline::{self, Accepted, PipelineError};
use crate::routing::RoutingError;
use crate::store::StoreError;

/// Every way an HTTP request can fail, and its answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("missing or wrong credentials")]
    Unauthorized { challenge: &'static str },
    #[error("unsupported content type {0:?}: the body must be JSON")]
    UnsupportedMediaType(String),
    #[error("request body larger than max_body_bytes ({limit} bytes)")]
    TooLarge { limit: usize },
    #[error("cannot read the request body: {0}")]
    BodyRead(String),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Routing(#[from] RoutingError),
    #[error("cannot store the notification right now")]
    StoreUnavailable(#[source] StoreError),
    #[error("configuration reload failed: {0}")]
    ReloadFailed(String),
    #[error("no such endpoint")]
    NotFound,
    /// A request to the events path without a token Chat signed, for `reason`.
    #[error("the request does not carry a valid Google Chat token ({reason})")]
    EventUnauthorized { reason: &'static str },
    #[error("Google's keys for verifying Chat's tokens cannot be fetched right now")]
    EventKeysUnavailable,
    #[error("the body is not a Google Chat event")]
    EventMalformed,
    #[error("too many Chat events are being handled at once")]
    EventsBusy,
    #[error("cannot record the action right now")]
    EventStoreUnavailable(#[source] StoreError),
    #[error("method not allowed here")]
    MethodNotAllowed,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyRead(_) => StatusCode::BAD_REQUEST,
            ApiError::Payload(PayloadError::BareAlertArray) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Payload(_) => StatusCode::BAD_REQUEST,
            ApiError::Routing(_) | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::ReloadFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::EventUnauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::EventMalformed => StatusCode::BAD_REQUEST,
            ApiError::EventKeysUnavailable
            | ApiError::EventsBusy
            | ApiError::EventStoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn hint(&self) -> String {
        match self {
            ApiError::Unauthorized { .. } => {
                "set http_config.authorization (Bearer) or basic_auth in Alertmanager's webhook_configs to match kabar's auth section".to_owned()
            }
            ApiError::UnsupportedMediaType(_) => "send Content-Type: application/json".to_owned(),
            ApiError::TooLarge { .. } => {
                "raise max_body_bytes, or set max_alerts in Alertmanager's webhook_configs to bound a notification".to_owned()
            }
            ApiError::BodyRead(_) => "send the whole body".to_owned(),
            ApiError::Payload(PayloadError::BareAlertArray) => {
                "this looks like alerts posted straight from Prometheus: point Prometheus at Alertmanager, and Alertmanager's webhook_configs at kabar".to_owned()
            }
            ApiError::Payload(_) => {
                "kabar expects Alertmanager's webhook payload (version 4): {\"receiver\", \"status\", \"alerts\": [...], ...}".to_owned()
            }
            ApiError::Routing(e) => e.hint(),
            ApiError::StoreUnavailable(StoreError::Postgres(_)) => {
                "kabar's PostgreSQL store cannot take writes right now (down, restarting or unreachable?); Alertmanager retries 5xx".to_owned()
            }
            ApiError::StoreUnavailable(_) => {
                "kabar's state_dir cannot take writes (disk full or read-only?); Alertmanager retries 5xx".to_owned()
            }
            ApiError::ReloadFailed(_) => "the previous configuration stays in effect; fix the file and reload again".to_owned(),
            ApiError::NotFound => "POST Alertmanager notifications to /alerts or /alerts/{space}; see / for the endpoints".to_owned(),
            ApiError::MethodNotAllowed => "see / for the endpoints and their methods".to_owned(),
            ApiError::EventUnauthorized { .. } => {
                "only Google Chat may post here: its requests carry a token signed for chat_app.project_number (or chat_app.endpoint_url)".to_owned()
            }
            ApiError::EventMalformed => {
                "kabar expects a Google Chat interaction event or add-on event object".to_owned()
            }
            ApiError::EventKeysUnavailable | ApiError::EventsBusy | ApiError::EventStoreUnavailable(_) => {
                "retry later; Chat may retry by itself".to_owned()
            }
        }
    }

    /// The metric reason for refused webhook requests.
    fn reject_reason(&self) -> Option<RejectReason> {
        Some(match self {
            ApiError::Unauthorized { .. } => RejectReason::Unauthorized,
            ApiError::UnsupportedMediaType(_) => RejectReason::UnsupportedMediaType,
            ApiError::TooLarge { .. } => RejectReason::TooLarge,
            ApiError::BodyRead(_) => RejectReason::BadRequest,
            ApiError::Payload(PayloadError::BareAlertArray) => RejectReason::BareAlertArray,
            ApiError::Payload(_) => RejectReason::BadRequest,
            ApiError::Routing(_) => RejectReason::UnknownRoute,
            ApiError::StoreUnavailable(_) => RejectReason::StoreUnavailable,
            ApiError::ReloadFailed(_)
            | ApiError::NotFound
            | ApiError::MethodNotAllowed
            | ApiError::EventUnauthorized { .. }
            | ApiError::EventKeysUnavailable
            | ApiError::EventMalformed
            | ApiError::EventsBusy
            | ApiError::EventStoreUnavailable(_) => {
                return None;
            }
        })
    }
}

/// An error answer, and the log line of a refused request, quote at most about this many
/// characters of the error: its message can carry what the sender wrote (a receiver name,
/// a value where a number belongs), and a 3 MB value must not become a 3 MB answer and
/// log line. Payload errors are bounded tighter where they are made; this holds for all.
const MAX_ERROR_MESSAGE_CHARS: usize = 600;

impl ApiError {
    /// The error's message, bounded in length.
    fn message(&self) -> String {
        elide_middle(&self.to_string(), MAX_ERROR_MESSAGE_CHARS).into_owned()
    }
}

impl From<PipelineError> for ApiError {
    fn from(error: PipelineError) -> ApiError {
        match error {
            PipelineError::Routing(e) => ApiError::Routing(e),
            PipelineError::Store(e) => ApiError::StoreUnavailable(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // The hint can name the payload's receiver too: bounded like the message.
        let hint = elide_middle(&self.hint(), MAX_ERROR_MESSAGE_CHARS).into_owned();
        let body = Json(json!({"error": self.message(), "hint": hint}));
        let mut response = (status, body).into_response();
        if let ApiError::Unauthorized { challenge } = self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let ApiError::EventUnauthorized { .. } = self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(
            self,
            ApiError::StoreUnavailable(_)
                | ApiError::EventKeysUnavailable
                | ApiError::EventsBusy
                | ApiError::EventStoreUnavailable(_)
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        }
        response
    }
}

/// Checks the request's credentials in constant time.
pub(crate) fn authorize(auth: Option<&Auth>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(auth) = auth else { return Ok(()) };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let (scheme, challenge) = match auth {
        Auth::Bearer(_) => ("bearer ", "Bearer realm=\"kabar\""),
        Auth::Basic { .. } => ("basic ", "Basic realm=\"kabar\", charset=\"UTF-8\""),
    };
    let credentials = presented
        .filter(|v| v.len() > scheme.len() && v[..scheme.len()].eq_ignore_ascii_case(scheme))
        .map(|v| v[scheme.len()..].trim());
    let ok = match (auth, credentials) {
        (_, None) => false,
        (Auth::Bearer(token), Some(given)) => {
            same_credential(given.as_bytes(), token.expose().as_bytes())
        }
        (Auth::Basic { username, password }, Some(given)) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(given)
                .unwrap_or_default();
            let text = String::from_utf8(decoded).unwrap_or_default();
            let (user, pass) = text.split_once(':').unwrap_or(("", ""));
            // Compare both halves whatever the first says, so timing tells nothing.
            let user_ok = same_credential(user.as_bytes(), username.as_bytes());
            let pass_ok = same_credential(pass.as_bytes(), password.expose().as_bytes());
            user_ok & pass_ok
        }
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::Unauthorized { challenge })
    }
}

/// A credential's SHA-256: 32 bytes whatever its length.
fn credential_digest(value: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Whether a presented credential is the expected one. Comparing the bytes themselves
/// returns at once on a length mismatch, which tells an attacker the secret's length; the
/// digests have one length, and are compared in constant time.
fn same_credential(given: &[u8], expected: &[u8]) -> bool {
    bool::from(credential_digest(given).ct_eq(&credential_digest(expected)))
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)").to_owned())
        .unwrap_or_default();
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        let shown = if value.is_empty() {
            "(none)".to_owned()
        } else {
            value.chars().take(100).collect()
        };
        Err(ApiError::UnsupportedMediaType(shown))
    }
}

pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        if inner
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            ApiError::TooLarge { limit }
        } else {
            ApiError::BodyRead(inner.to_string())
        }
    })
}

/// `POST /alerts`: routed by the payload's receiver.
pub(crate) async fn receive(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Accepted>, ApiError> {
    accept(&app, None, &headers, body)
        .await
        .map(Json)
        .map_err(|error| refused(&app, error))
}

/// `POST /alerts/{space}`: routed to the named space.
pub(crate) async fn receive_for_space(
    State(app): State<Arc<AppState>>,
    Path(space): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Accepted>, ApiError> {
    accept(&app, Some(space.as_str()), &headers, body)
        .await
        .map(Json)
        .map_err(|error| refused(&app, error))
}

/// Records a refused request (metric and log line) and hands the error on to be answered.
fn refused(app: &AppState, error: ApiError) -> ApiError {
    let metrics = &app.shared.metrics;
    match &error {
        ApiError::StoreUnavailable(source) => metrics.store_refused_notification(source),
        other => metrics.request_rejected(
            other.reject_reason(),
            other.status().as_u16(),
            &other.message(),
        ),
    }
    error
}

/// The HTTP checks, in order, then the pipeline.
async fn accept(
    app: &AppState,
    space: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Accepted, ApiError> {
    let runtime = app.runtime();
    authorize(runtime.config.auth.as_ref(), headers)?;
    check_content_type(headers)?;
    let bytes = read_body(headers, body, runtime.config.max_body_bytes).await?;
    let notification = Notification::parse(&bytes)?;
    Ok(pipeline::accept(app, runtime, space, notification).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    #[test]
    fn credentials_are_compared_as_fixed_size_digests_of_any_length() {
        for len in [0, 1, 5, 32, 55, 56, 64, 1 << 20] {
            assert_eq!(credential_digest(&vec![b'a'; len]).len(), 32, "{len}");
        }
        let expected = b"s3cret-token";
        assert!(same_credential(b"s3cret-token", expected));
        let huge = vec![b'x'; 1 << 20];
        for wrong in [
            &b""[..],
            b"s3cret",
            b"s3cret-token ",
            b"s3cret-tokeN",
            b"s3cret-token\0",
            &huge,
        ] {
            assert!(
                !same_credential(wrong, expected),
                "{:?}",
                &wrong[..wrong.len().min(16)]
            );
        }
        assert!(
            same_credential(b"", b""),
            "digests of two empty values agree"
        );
    }

    #[test]
    fn bearer_auth() {
        let auth = Auth::Bearer(Secret::new("s3cret"));
        assert!(authorize(Some(&auth), &headers(&[("authorization", "Bearer s3cret")])).is_ok());
        assert!(authorize(Some(&auth), &headers(&[("authorization", "bearer s3cret")])).is_ok());
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "s3cret",
            "Bearer ",
        ] {
            assert!(
                authorize(Some(&auth), &headers(&[("authorization", bad)])).is_err(),
                "{bad}"
            );
        }
        let err = authorize(Some(&auth), &headers(&[])).expect_err("missing");
        assert!(
            matches!(err, ApiError::Unauthorized { challenge } if challenge.starts_with("Bearer"))
        );
        assert!(authorize(None, &headers(&[])).is_ok(), "no auth configured");
    }

    #[test]
    fn basic_auth() {
        let auth = Auth::Basic {
            username: "am".into(),
            password: Secret::new("pw:with:colons"),
        };
        let good = base64::engine::general_purpose::STANDARD.encode("am:pw:with:colons");
        assert!(
            authorize(
                Some(&auth),
                &headers(&[("authorization", &format!("Basic {good}"))])
            )
            .is_ok()
        );
        let wrong = base64::engine::general_purpose::STANDARD.encode("am:nope");
        assert!(
            authorize(
                Some(&auth),
                &headers(&[("authorization", &format!("Basic {wrong}"))])
            )
            .is_err()
        );
        assert!(authorize(Some(&auth), &headers(&[("authorization", "Basic !!!")])).is_err());
    }

    #[test]
    fn content_types() {
        assert!(check_content_type(&headers(&[("content-type", "application/json")])).is_ok());
        assert!(
            check_content_type(&headers(&[(
                "content-type",
                "Application/JSON; charset=utf-8"
            )]))
            .is_ok()
        );
        assert!(
            check_content_type(&headers(&[("content-type", "application/vnd.x+json")])).is_ok()
        );
        assert!(check_content_type(&headers(&[("content-type", "text/plain")])).is_err());
        assert!(check_content_type(&headers(&[])).is_err());
    }

    #[test]
    fn error_bodies_carry_status_and_hint() {
        let cases = [
            (ApiError::Payload(PayloadError::BareAlertArray), 422),
            (ApiError::TooLarge { limit: 10 }, 413),
            (ApiError::UnsupportedMediaType("text/plain".into()), 415),
            (
                ApiError::Routing(RoutingError::UnknownReceiver {
                    name: "a/b/c".into(),
                    known: vec!["x".into()],
                }),
                404,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status);
            assert!(!error.hint().is_empty());
        }
    }

    #[test]
    fn pipeline_errors_answer_as_the_edge_always_did() {
        let routing = ApiError::from(PipelineError::Routing(RoutingError::UnknownReceiver {
            name: "nobody".into(),
            known: vec!["ops".into()],
        }));
        assert!(matches!(routing, ApiError::Routing(_)));
        assert_eq!(routing.status(), StatusCode::NOT_FOUND);
        assert_eq!(routing.reject_reason(), Some(RejectReason::UnknownRoute));

        let store = ApiError::from(PipelineError::Store(StoreError::Closed));
        assert!(matches!(
            store,
            ApiError::StoreUnavailable(StoreError::Closed)
        ));
        assert_eq!(store.reject_reason(), Some(RejectReason::StoreUnavailable));
        let response = store.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "10");
    }

    #[test]
    fn a_store_that_cannot_write_answers_503_so_alertmanager_retries() {
        let response = ApiError::StoreUnavailable(StoreError::Closed).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "10");
    }
}
