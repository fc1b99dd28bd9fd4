//! The Chat events fake checked against an independent verifier written here (its own
//! certificate scan, aws-lc-rs RS256), so endpoint tests can trust that its tokens verify
//! and its forgeries do not, each for the reason it claims. Tests only.

use std::collections::HashMap;

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;

use crate::common::chat_events::{
    CHAT_CERTS_PATH, CHAT_ISSUER, ChatCerts, Click, Forgery, GOOGLE_CERTS_PATH, GOOGLE_ISSUER,
    addon_click, addon_email, authorization, classic_click,
};

const PROJECT: &str = "123456789012";
const ENDPOINT: &str = "https://kabar.example.com/chat/events";

/// The served kid → PEM map and its Cache-Control, fetched as kabar would.
async fn served(url: &str) -> (HashMap<String, String>, String) {
    let response = reqwest::get(url).await.expect("fetch the cert map");
    assert_eq!(response.status(), 200);
    let cache = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let map = response.json().await.expect("a JSON object of PEM strings");
    (map, cache)
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    STANDARD.decode(body).expect("PEM base64")
}

/// The RSAPublicKey of a certificate, found by scanning for the rsaEncryption
/// AlgorithmIdentifier (OID + NULL) and reading the BIT STRING after it — deliberately
/// not the structural walk kabar does.
fn rsa_key_by_scan(cert: &[u8]) -> Vec<u8> {
    const ALG: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let at = cert
        .windows(ALG.len())
        .position(|w| w == ALG)
        .expect("an rsaEncryption key in the certificate");
    let bits = &cert[at + ALG.len()..];
    assert_eq!(bits[0], 0x03, "a BIT STRING follows the algorithm");
    let (len, skip) = match bits[1] {
        0x82 => (usize::from(bits[2]) << 8 | usize::from(bits[3]), 4),
        0x81 => (usize::from(bits[2]), 3),
        short => (usize::from(short), 2),
    };
    assert_eq!(bits[skip], 0, "no unused bits");
    bits[skip + 1..skip + len].to_vec()
}

fn segment(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

/// The checks a correct verifier makes, in order; Err names the first that fails.
fn verify(
    token: &str,
    keys: &HashMap<String, String>,
    issuers: &[&str],
    aud: &str,
) -> Result<Value, &'static str> {
    if token.is_empty() {
        return Err("no token");
    }
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "three segments");
    let header = segment(parts[0]);
    if header["alg"] != "RS256" {
        return Err("alg");
    }
    let pem = keys
        .get(header["kid"].as_str().ok_or("kid")?)
        .ok_or("kid")?;
    let key = rsa_key_by_scan(&pem_der(pem));
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).map_err(|_| "signature")?;
    let signed = &token[..parts[0].len() + 1 + parts[1].len()];
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &key)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| "signature")?;
    let claims = segment(parts[1]);
    if !issuers.iter().any(|iss| claims["iss"] == *iss) {
        return Err("iss");
    }
    if claims["aud"] != aud {
        return Err("aud");
    }
    let now = jiff::Timestamp::now().as_second();
    let (Some(exp), Some(iat)) = (claims["exp"].as_i64(), claims["iat"].as_i64()) else {
        return Err("missing exp/iat");
    };
    if exp + 60 <= now {
        return Err("expired");
    }
    if iat > now + 60 {
        return Err("not yet valid");
    }
    Ok(claims)
}

#[tokio::test]
async fn the_fakes_tokens_verify_against_the_served_certificates() {
    let certs = ChatCerts::start().await;
    let (chat_map, cache) = served(&certs.url()).await;
    assert_eq!(cache, "public, max-age=3600, must-revalidate, no-transform");
    assert_eq!(chat_map.len(), 1);
    let signer = certs.signer();
    let token = signer.chat_token(PROJECT);
    let claims = verify(&token, &chat_map, &[CHAT_ISSUER], PROJECT).expect("Chat's token verifies");
    assert_eq!(
        claims["exp"].as_i64(),
        claims["iat"].as_i64().map(|iat| iat + 3600)
    );
    assert_eq!(authorization(&token), Some(format!("Bearer {token}")));

    let (google_map, _) = served(&certs.id_url()).await;
    assert_ne!(
        google_map.keys().next(),
        chat_map.keys().next(),
        "two key sets"
    );
    for email in [CHAT_ISSUER.to_owned(), addon_email(PROJECT)] {
        let id = signer.id_token(ENDPOINT, &email);
        let claims =
            verify(&id, &google_map, &[GOOGLE_ISSUER], ENDPOINT).expect("ID token verifies");
        assert_eq!(claims["email"], email.as_str());
        assert_eq!(claims["email_verified"], true);
        // An ID token is not signed by Chat's key.
        assert_eq!(
            verify(&id, &chat_map, &[GOOGLE_ISSUER], ENDPOINT),
            Err("kid")
        );
    }
    assert_eq!(certs.fetches(CHAT_CERTS_PATH), 1);
    assert_eq!(certs.fetches(GOOGLE_CERTS_PATH), 1);
}

#[tokio::test]
async fn each_forgery_fails_for_the_reason_it_names() {
    let certs = ChatCerts::start().await;
    let (map, _) = served(&certs.url()).await;
    let signer = certs.signer();
    let (chat_key, _) = certs.keys();
    for kind in Forgery::ALL {
        let token = signer.forged(kind, PROJECT);
        let want = match kind {
            Forgery::NoToken => "no token",
            Forgery::AlgNone | Forgery::Hs256 => "alg",
            Forgery::UnknownKid => "kid",
            Forgery::BadSignature | Forgery::SignedByOtherKey => "signature",
            Forgery::WrongIssuer => "iss",
            Forgery::WrongAudience => "aud",
            Forgery::Expired => "expired",
            Forgery::NotYetValid => "not yet valid",
            Forgery::MissingExp => "missing exp/iat",
        };
        assert_eq!(
            verify(&token, &map, &[CHAT_ISSUER], PROJECT).err(),
            Some(want),
            "{kind:?}"
        );
        if kind == Forgery::NoToken {
            assert_eq!(authorization(&token), None);
            continue;
        }
        let parts: Vec<&str> = token.split('.').collect();
        let header = segment(parts[0]);
        match kind {
            // The confusion attack proper: a valid HMAC keyed with the public certificate.
            Forgery::Hs256 => {
                let key = aws_lc_rs::hmac::Key::new(
                    aws_lc_rs::hmac::HMAC_SHA256,
                    chat_key.cert_pem.as_bytes(),
                );
                let tag = URL_SAFE_NO_PAD.decode(parts[2]).expect("tag");
                let signed = format!("{}.{}", parts[0], parts[1]);
                aws_lc_rs::hmac::verify(&key, signed.as_bytes(), &tag).expect("a real HS256 tag");
            }
            Forgery::AlgNone => assert!(parts[2].is_empty()),
            Forgery::UnknownKid => {
                assert!(!map.contains_key(header["kid"].as_str().unwrap_or_default()))
            }
            // Named kid is served, so only the signature gives it away.
            Forgery::SignedByOtherKey | Forgery::BadSignature => {
                assert_eq!(header["kid"], chat_key.kid.as_str());
            }
            _ => {}
        }
        if matches!(
            kind,
            Forgery::SignedByOtherKey | Forgery::BadSignature | Forgery::UnknownKid
        ) {
            assert_eq!(
                segment(parts[1])["aud"],
                PROJECT,
                "claims otherwise genuine"
            );
        }
    }
}

#[tokio::test]
async fn rotation_drops_the_old_key_and_failing_answers_503() {
    let certs = ChatCerts::start().await;
    let signer = certs.signer();
    let old = signer.chat_token(PROJECT);
    certs.set_max_age(120);
    certs.rotate();
    let (map, cache) = served(&certs.url()).await;
    assert!(cache.contains("max-age=120"));
    assert_eq!(map.len(), 1);
    assert_eq!(verify(&old, &map, &[CHAT_ISSUER], PROJECT), Err("kid"));
    let new = signer.chat_token(PROJECT);
    assert!(verify(&new, &map, &[CHAT_ISSUER], PROJECT).is_ok());
    certs.set_failing(true);
    let answer = reqwest::get(certs.url()).await.expect("fetch");
    assert_eq!(answer.status(), 503);
    let answer = reqwest::get(certs.id_url()).await.expect("fetch");
    assert_eq!(answer.status(), 503);
    certs.set_failing(false);
    assert_eq!(served(&certs.url()).await.0, map);
    assert_eq!(certs.fetches(CHAT_CERTS_PATH), 3);
    assert_eq!(certs.fetches(GOOGLE_CERTS_PATH), 1);
}

#[test]
fn click_bodies_have_the_documented_shapes() {
    let click = Click {
        user: "users/102345678901234567890",
        display_name: "On-call Engineer",
        email: "oncall@example.com",
        space: "spaces/AAAAb3kq2sE",
        message: "spaces/AAAAb3kq2sE/messages/kYVv3v2q3xA.kYVv3v2q3xA",
        action: "ack",
        episode: "3f2a9c",
    };
    let classic = classic_click(&click);
    assert_eq!(classic["type"], "CARD_CLICKED");
    assert_eq!(classic["action"]["actionMethodName"], "ack");
    assert_eq!(classic["action"]["parameters"][0]["key"], "episode");
    assert_eq!(classic["common"]["parameters"]["episode"], "3f2a9c");
    assert_eq!(
        classic["thread"]["name"],
        "spaces/AAAAb3kq2sE/threads/kYVv3v2q3xA"
    );
    assert_eq!(classic["user"]["email"], "oncall@example.com");
    let addon = addon_click(&click, ENDPOINT, "id-token");
    assert!(addon.get("type").is_none(), "add-on events have no type");
    assert_eq!(
        addon["chat"]["buttonClickedPayload"]["space"]["name"],
        "spaces/AAAAb3kq2sE"
    );
    assert_eq!(
        addon["chat"]["buttonClickedPayload"]["message"]["name"],
        click.message
    );
    assert_eq!(
        addon["commonEventObject"]["parameters"]["episode"],
        "3f2a9c"
    );
    assert_eq!(addon["commonEventObject"]["invokedFunction"], ENDPOINT);
    assert_eq!(
        addon["authorizationEventObject"]["systemIdToken"],
        "id-token"
    );
    assert_eq!(addon["chat"]["user"]["name"], click.user);
}
