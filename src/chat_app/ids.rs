//! The ids app-mode creates carry: `messageId=client-…` and `requestId`, both derived from
//! what the message is, so a retry names the same message. It must not read clocks or state.

use aws_lc_rs::digest::{SHA256, digest};

/// Hex characters of the digest kept: 96 bits, far from any collision among a space's
/// messages, and `client-` plus 24 stays well within Chat's 63.
const ID_HEX_CHARS: usize = 24;

fn hex_digest(parts: &[&[u8]]) -> String {
    let mut input = Vec::new();
    for part in parts {
        input.extend_from_slice(part);
        // A separator no part contains at its end, so ("ab","c") and ("a","bc") differ.
        input.push(0xff);
    }
    let hash = digest(&SHA256, &input);
    hash.as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(ID_HEX_CHARS)
        .collect()
}

/// The id of the card that opens an episode's thread (`thread_key` is the episode's own):
/// one per episode, whoever posts it, so the resolve can edit it by this id before or
/// without knowing the name Chat gave it, and a second kabar posting the same episode
/// gets ALREADY_EXISTS instead of a second card.
pub(crate) fn opening_id(space: &str, thread_key: &str) -> String {
    format!(
        "client-{}",
        hex_digest(&[b"open", space.as_bytes(), thread_key.as_bytes()])
    )
}

/// The id of any other message: its space, kind, thread, body and when kabar received
/// the notification, all of which a retry of the same outbox row keeps.
pub(crate) fn message_id(
    space: &str,
    kind: &str,
    thread_key: Option<&str>,
    received_ms: i64,
    body: &str,
) -> String {
    format!(
        "client-{}",
        hex_digest(&[
            b"message",
            space.as_bytes(),
            kind.as_bytes(),
            thread_key.unwrap_or("").as_bytes(),
            &received_ms.to_le_bytes(),
            body.as_bytes(),
        ])
    )
}

/// The requestId sent with a create: the message id's own digest, so a repeat of the
/// request returns the message created the first time.
pub(crate) fn request_id(message_id: &str) -> String {
    format!(
        "kabar-{}",
        message_id.strip_prefix("client-").unwrap_or(message_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chat's rules for a custom message id.
    fn is_valid_message_id(id: &str) -> bool {
        id.len() <= 63
            && id.starts_with("client-")
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }

    #[test]
    fn ids_are_deterministic_distinct_and_within_chats_rules() {
        let a = opening_id("ops", "kabar:ops:abc:2026-01-01T00:00:00Z");
        assert_eq!(a, opening_id("ops", "kabar:ops:abc:2026-01-01T00:00:00Z"));
        assert_ne!(a, opening_id("dev", "kabar:ops:abc:2026-01-01T00:00:00Z"));
        let m = message_id("ops", "resolved", Some("t"), 5, "{}");
        assert_eq!(m, message_id("ops", "resolved", Some("t"), 5, "{}"));
        assert_ne!(m, message_id("ops", "resolved", Some("t"), 6, "{}"));
        assert_ne!(m, message_id("ops", "resolve", Some("dt"), 5, "{}"));
        for id in [&a, &m] {
            assert!(is_valid_message_id(id), "{id}");
            assert_eq!(id.len(), 31);
        }
        assert_eq!(request_id(&m).len(), 30);
        assert!(!is_valid_message_id("client-ABC"));
        assert!(!is_valid_message_id("kabar-abc"));
    }
}
