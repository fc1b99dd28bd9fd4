//! What Google Chat does on the events side, faked on 127.0.0.1 per
//! shared/reference/google-chat-app.md §4–§5: the x509 kid → PEM certificate maps of
//! chat@system.gserviceaccount.com (`/chat-certs`) and of Google's ID tokens
//! (`/google-certs`) with Cache-Control, RS256 event tokens signed like Chat's (and the
//! usual forgeries of them), and the click event bodies of both app shapes.
//!
//! Keys are generated at test time; none is committed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Issuer of Chat's self-signed tokens, and the e-mail of its ID tokens.
pub const CHAT_ISSUER: &str = "chat@system.gserviceaccount.com";
/// Issuer of Google ID tokens.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
pub const CHAT_CERTS_PATH: &str = "/chat-certs";
pub const GOOGLE_CERTS_PATH: &str = "/google-certs";

/// The e-mail a Workspace add-on app's ID tokens carry (reference §5.3).
pub fn addon_email(project_number: &str) -> String {
    format!("service-{project_number}@gcp-sa-gsuiteaddons.iam.gserviceaccount.com")
}

/// An RSA key with its self-signed certificate and the kid it is served under.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub cert_pem: String,
    pair: Arc<RsaKeyPair>,
}

impl SigningKey {
    /// A fresh 2048-bit key (RSA generation takes a moment) and its certificate.
    pub fn generate(kid: &str) -> SigningKey {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA test key");
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("certificate params")
            .self_signed(&key)
            .expect("self-signed certificate");
        let pair = RsaKeyPair::from_pkcs8(&key.serialize_der()).expect("PKCS#8 of the test key");
        SigningKey {
            kid: kid.to_owned(),
            cert_pem: cert.pem(),
            pair: Arc::new(pair),
        }
    }

    /// RS256 over `header.claims` as sent (unpadded base64url, as Google does).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signed.as_bytes(),
                &mut signature,
            )
            .expect("RS256 signature");
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

struct CertsState {
    chat: SigningKey,
    google: SigningKey,
    /// Not in any map: for tokens that name a served kid but are signed elsewhere.
    outsider: SigningKey,
    max_age: u64,
    failing: bool,
    rotations: usize,
    fetches: HashMap<&'static str, usize>,
}

type Shared = Arc<Mutex<CertsState>>;

/// The two certificate endpoints kabar fetches verification keys from.
pub struct ChatCerts {
    addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ChatCerts {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn kid(which: &str, rotation: usize) -> String {
    // Google's kids are 40 hex digits; these only need to be distinct.
    format!("{which}{rotation:0>36x}")
}

impl ChatCerts {
    /// Serves one Chat key and one ID-token key, `Cache-Control: public, max-age=3600`.
    pub async fn start() -> ChatCerts {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("chat certs: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("chat certs: local address");
        let shared = Arc::new(Mutex::new(CertsState {
            chat: SigningKey::generate(&kid("c0de", 0)),
            google: SigningKey::generate(&kid("9009", 0)),
            outsider: SigningKey::generate("outsider"),
            max_age: 3600,
            failing: false,
            rotations: 0,
            fetches: HashMap::new(),
        }));
        let app = Router::new()
            .route(CHAT_CERTS_PATH, get(chat_certs))
            .route(GOOGLE_CERTS_PATH, get(google_certs))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ChatCerts { addr, shared, task }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CertsState> {
        self.shared.lock().expect("chat certs state")
    }

    /// For `chat_app.certs_url`.
    pub fn url(&self) -> String {
        format!("http://{}{CHAT_CERTS_PATH}", self.addr)
    }

    /// For the ID-token certs URL.
    pub fn id_url(&self) -> String {
        format!("http://{}{GOOGLE_CERTS_PATH}", self.addr)
    }

    /// How often `path` ([`CHAT_CERTS_PATH`] or [`GOOGLE_CERTS_PATH`]) was fetched.
    pub fn fetches(&self, path: &str) -> usize {
        self.state().fetches.get(path).copied().unwrap_or(0)
    }

    pub fn set_max_age(&self, seconds: u64) {
        self.state().max_age = seconds;
    }

    /// Answer 503 to every fetch (or stop doing so).
    pub fn set_failing(&self, failing: bool) {
        self.state().failing = failing;
    }

    /// Google rotates: both maps get a new key under a new kid and drop the old one.
    /// Tokens signed before keep their old kid, which the maps no longer list.
    pub fn rotate(&self) {
        let rotation = self.state().rotations + 1;
        // Generated outside the lock: it takes a moment.
        let chat = SigningKey::generate(&kid("c0de", rotation));
        let google = SigningKey::generate(&kid("9009", rotation));
        let mut state = self.state();
        state.rotations = rotation;
        state.chat = chat;
        state.google = google;
    }

    /// The current keys of the Chat map and of the ID-token map.
    pub fn keys(&self) -> (SigningKey, SigningKey) {
        let state = self.state();
        (state.chat.clone(), state.google.clone())
    }

    /// Signs tokens with whatever keys are served when it signs.
    pub fn signer(&self) -> EventSigner {
        EventSigner {
            shared: self.shared.clone(),
        }
    }
}

fn key_map(shared: &Shared, path: &'static str, pick: fn(&CertsState) -> &SigningKey) -> Response {
    let mut state = shared.lock().expect("chat certs state");
    *state.fetches.entry(path).or_insert(0) += 1;
    if state.failing {
        return (StatusCode::SERVICE_UNAVAILABLE, "backend unavailable").into_response();
    }
    let key = pick(&state);
    let body = json!({ key.kid.clone(): key.cert_pem.clone() });
    let cache = format!(
        "public, max-age={}, must-revalidate, no-transform",
        state.max_age
    );
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                "application/json; charset=UTF-8".to_owned(),
            ),
            (header::CACHE_CONTROL, cache),
        ],
        body.to_string(),
    )
        .into_response()
}

async fn chat_certs(State(shared): State<Shared>) -> Response {
    key_map(&shared, CHAT_CERTS_PATH, |state| &state.chat)
}

async fn google_certs(State(shared): State<Shared>) -> Response {
    key_map(&shared, GOOGLE_CERTS_PATH, |state| &state.google)
}

/// A forged or broken event token, each the classic way a verifier is fooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// No token at all: [`EventSigner::forged`] returns "" and [`authorization`] None.
    NoToken,
    /// `alg: none` with an empty signature.
    AlgNone,
    /// HS256 keyed with the served certificate PEM (the RS/HS confusion attack).
    Hs256,
    WrongAudience,
    Expired,
    /// iat and exp an hour ahead.
    NotYetValid,
    WrongIssuer,
    /// A real signature with one byte flipped.
    BadSignature,
    /// Signed by the served key under a kid no map lists.
    UnknownKid,
    /// Signed by a key not in the map, under a kid that is.
    SignedByOtherKey,
    MissingExp,
}

impl Forgery {
    pub const ALL: [Forgery; 11] = [
        Forgery::NoToken,
        Forgery::AlgNone,
        Forgery::Hs256,
        Forgery::WrongAudience,
        Forgery::Expired,
        Forgery::NotYetValid,
        Forgery::WrongIssuer,
        Forgery::BadSignature,
        Forgery::UnknownKid,
        Forgery::SignedByOtherKey,
        Forgery::MissingExp,
    ];
}

/// The `Authorization` value for a token: None for "" (send no header).
pub fn authorization(token: &str) -> Option<String> {
    (!token.is_empty()).then(|| format!("Bearer {token}"))
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Signs event tokens like Chat and Google do, with the keys [`ChatCerts`] serves.
#[derive(Clone)]
pub struct EventSigner {
    shared: Shared,
}

impl EventSigner {
    fn chat_key(&self) -> SigningKey {
        self.shared.lock().expect("chat certs state").chat.clone()
    }

    fn header(kid: &str) -> Value {
        json!({"alg": "RS256", "kid": kid, "typ": "JWT"})
    }

    fn chat_claims(project_number: &str) -> Value {
        let now = now();
        json!({"iss": CHAT_ISSUER, "aud": project_number, "iat": now, "exp": now + 3600})
    }

    /// A token as Chat signs it for an app whose audience is the project number.
    pub fn chat_token(&self, project_number: &str) -> String {
        let key = self.chat_key();
        key.sign(&Self::header(&key.kid), &Self::chat_claims(project_number))
    }

    /// A Google ID token (audience = the endpoint URL) for `email`, verified.
    pub fn id_token(&self, aud: &str, email: &str) -> String {
        let key = self.shared.lock().expect("chat certs state").google.clone();
        let now = now();
        let claims = json!({
            "iss": GOOGLE_ISSUER, "aud": aud, "azp": "113573049227372411111",
            "sub": "113573049227372411111", "email": email, "email_verified": true,
            "iat": now, "exp": now + 3600,
        });
        key.sign(&Self::header(&key.kid), &claims)
    }

    /// A Chat-shaped token broken the way `kind` says, for `project_number`.
    pub fn forged(&self, kind: Forgery, project_number: &str) -> String {
        let (key, outsider) = {
            let state = self.shared.lock().expect("chat certs state");
            (state.chat.clone(), state.outsider.clone())
        };
        let header = Self::header(&key.kid);
        let mut claims = Self::chat_claims(project_number);
        let now = now();
        let unsigned = |header: &Value, claims: &Value| {
            format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            )
        };
        match kind {
            Forgery::NoToken => String::new(),
            Forgery::AlgNone => {
                let header = json!({"alg": "none", "kid": key.kid, "typ": "JWT"});
                format!("{}.", unsigned(&header, &claims))
            }
            Forgery::Hs256 => {
                let header = json!({"alg": "HS256", "kid": key.kid, "typ": "JWT"});
                let signed = unsigned(&header, &claims);
                let mac_key = aws_lc_rs::hmac::Key::new(
                    aws_lc_rs::hmac::HMAC_SHA256,
                    key.cert_pem.as_bytes(),
                );
                let tag = aws_lc_rs::hmac::sign(&mac_key, signed.as_bytes());
                format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
            }
            Forgery::WrongAudience => {
                claims["aud"] = json!(format!("{project_number}9"));
                key.sign(&header, &claims)
            }
            Forgery::Expired => {
                claims["iat"] = json!(now - 7200);
                claims["exp"] = json!(now - 3600);
                key.sign(&header, &claims)
            }
            Forgery::NotYetValid => {
                claims["iat"] = json!(now + 3600);
                claims["exp"] = json!(now + 7200);
                key.sign(&header, &claims)
            }
            Forgery::WrongIssuer => {
                claims["iss"] = json!("attacker@evil-project.iam.gserviceaccount.com");
                key.sign(&header, &claims)
            }
            Forgery::BadSignature => {
                let token = key.sign(&header, &claims);
                let (signed, signature) = token.rsplit_once('.').expect("three segments");
                let mut signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
                signature[17] ^= 0x01;
                format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
            }
            Forgery::UnknownKid => key.sign(&Self::header("no-such-kid-in-the-map"), &claims),
            Forgery::SignedByOtherKey => outsider.sign(&header, &claims),
            Forgery::MissingExp => {
                claims.as_object_mut().expect("claims object").remove("exp");
                key.sign(&header, &claims)
            }
        }
    }
}

/// The people and places of a click.
pub struct Click<'a> {
    /// `users/…`
    pub user: &'a str,
    pub display_name: &'a str,
    pub email: &'a str,
    /// `spaces/…`
    pub space: &'a str,
    /// `spaces/…/messages/…`, the clicked message (kabar's card).
    pub message: &'a str,
    /// The button's action: `ack`, `silence_1h`, ….
    pub action: &'a str,
    /// kabar's episode id, the one parameter its buttons carry.
    pub episode: &'a str,
}

fn thread_of(message: &str) -> String {
    // spaces/S/messages/T.M → spaces/S/threads/T
    let (space, id) = message.split_once("/messages/").unwrap_or((message, ""));
    let thread = id.split('.').next().unwrap_or(id);
    format!("{space}/threads/{thread}")
}

/// A classic Chat app CARD_CLICKED event (reference §4.2).
pub fn classic_click(click: &Click<'_>) -> Value {
    let thread = thread_of(click.message);
    json!({
        "type": "CARD_CLICKED",
        "eventTime": "2025-05-01T10:05:12.345678Z",
        "space": {"name": click.space, "type": "ROOM", "spaceType": "SPACE", "displayName": "On-call"},
        "message": {
            "name": click.message,
            "sender": {"name": "users/114022495153014004089", "displayName": "kabar", "type": "BOT"},
            "createTime": "2025-05-01T10:00:00.123456Z",
            "thread": {"name": thread},
            "space": {"name": click.space}
        },
        "user": {"name": click.user, "displayName": click.display_name, "email": click.email, "type": "HUMAN"},
        "thread": {"name": thread},
        "action": {"actionMethodName": click.action, "parameters": [{"key": "episode", "value": click.episode}]},
        "common": {"hostApp": "CHAT", "userLocale": "en-GB",
                   "timeZone": {"id": "Europe/Berlin", "offset": 7_200_000},
                   "invokedFunction": click.action, "parameters": {"episode": click.episode}},
        "isDialogEvent": false
    })
}

/// The same click as a Workspace add-on app receives it (reference §4.3); `endpoint` is
/// the button's `function`, and `system_id_token` the ID token also sent as bearer.
pub fn addon_click(click: &Click<'_>, endpoint: &str, system_id_token: &str) -> Value {
    json!({
        "commonEventObject": {"hostApp": "CHAT", "userLocale": "en-GB",
                              "timeZone": {"id": "Europe/Berlin", "offset": 7_200_000},
                              "invokedFunction": endpoint,
                              "parameters": {"actionName": click.action, "episode": click.episode}},
        "authorizationEventObject": {"systemIdToken": system_id_token},
        "chat": {
            "user": {"name": click.user, "displayName": click.display_name, "email": click.email, "type": "HUMAN"},
            "eventTime": "2025-05-01T10:05:12.345678Z",
            "buttonClickedPayload": {
                "message": {"name": click.message, "sender": {"type": "BOT"},
                            "thread": {"name": thread_of(click.message)}, "space": {"name": click.space}},
                "space": {"name": click.space, "spaceType": "SPACE"},
                "isDialogEvent": false
            }
        }
    })
}
