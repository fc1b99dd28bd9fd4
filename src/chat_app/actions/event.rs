//! Chat's events, in both shapes Chat sends them (a classic Chat app's interaction event,
//! a Workspace add-on's event object), read into one form, and answers in the shape asked.
//! It must not verify, act or touch state: the caller verified the request first.

use serde_json::{Value, json};

/// Which envelope the event came in, and so which its answer must use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A Chat app built on interaction events: top-level `type`.
    Classic,
    /// A Chat app built as a Google Workspace add-on: `chat` and `commonEventObject`.
    AddOn,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EventKind {
    /// A button of a card was pressed: the function it names and its `episode` parameter.
    Click {
        action: Option<String>,
        episode: Option<String>,
    },
    AddedToSpace,
    Message,
    /// Anything else (removed from the space, slash commands, …): answered empty.
    Other,
}

impl EventKind {
    /// For `kabar_chat_app_events_total{type}`.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            EventKind::Click { .. } => "click",
            EventKind::AddedToSpace => "added_to_space",
            EventKind::Message => "message",
            EventKind::Other => "other",
        }
    }

    pub(crate) const ALL: [&'static str; 4] = ["click", "added_to_space", "message", "other"];
}

/// The person who caused the event, as Chat names them. Values are the user's own and
/// are treated as untrusted text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct User {
    /// `users/123…`.
    pub name: String,
    pub display_name: String,
    /// Chat sends it for people in the app's organisation; may be empty.
    pub email: String,
}

/// One event, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChatEvent {
    pub shape: Shape,
    pub kind: EventKind,
    pub user: User,
    /// `spaces/…`, when the event names it.
    pub space: Option<String>,
    /// When Chat says the event happened; a redelivery carries the same.
    pub event_time: Option<String>,
}

/// Strings read from an event are cut to this many characters: names and ids are short,
/// and nothing longer is worth keeping, logging or showing.
const MAX_FIELD_CHARS: usize = 256;

fn text_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn field(value: &Value, pointer: &str) -> Option<String> {
    text_at(value, pointer).map(|s| s.chars().take(MAX_FIELD_CHARS).collect())
}

/// The `episode` parameter of a click: in a `[{key, value}]` list (classic `action`, at
/// `list`) or a map (`common.parameters`, `commonEventObject.parameters`, at `map`).
fn parameter(value: &Value, list: Option<&str>, map: &str) -> Option<String> {
    let from_list = list
        .and_then(|list| value.pointer(list))
        .and_then(Value::as_array)
        .and_then(|items| {
            items
                .iter()
                .find(|p| p.get("key").and_then(Value::as_str) == Some("episode"))
                .and_then(|p| p.get("value"))
                .and_then(Value::as_str)
        });
    from_list
        .or_else(|| text_at(value, &format!("{map}/episode")))
        .map(|s| s.chars().take(MAX_FIELD_CHARS).collect())
}

/// An add-on button's function is the endpoint's URL; kabar names the action in its
/// `action` query parameter. A plain name is taken as it is.
fn action_name(function: &str) -> String {
    let is_url = function.starts_with("https://") || function.starts_with("http://");
    match reqwest::Url::parse(function).ok().filter(|_| is_url) {
        Some(url) => url
            .query_pairs()
            .find(|(k, _)| k == "action")
            .map(|(_, v)| v.chars().take(MAX_FIELD_CHARS).collect())
            .unwrap_or_default(),
        None => function.chars().take(MAX_FIELD_CHARS).collect(),
    }
}

fn user_at(value: &Value, at: &str) -> User {
    User {
        name: field(value, &format!("{at}/name")).unwrap_or_default(),
        display_name: field(value, &format!("{at}/displayName")).unwrap_or_default(),
        email: field(value, &format!("{at}/email")).unwrap_or_default(),
    }
}

/// Reads an event; None when the JSON is neither shape.
pub(crate) fn read(value: &Value, query_action: Option<&str>) -> Option<ChatEvent> {
    if let Some(kind) = value.get("type") {
        let kind = match kind.as_str().unwrap_or("") {
            "CARD_CLICKED" => EventKind::Click {
                action: field(value, "/action/actionMethodName")
                    .or_else(|| field(value, "/common/invokedFunction"))
                    .map(|f| action_name(&f))
                    .filter(|a| !a.is_empty())
                    .or_else(|| query_action.map(str::to_owned)),
                episode: parameter(value, Some("/action/parameters"), "/common/parameters"),
            },
            "ADDED_TO_SPACE" => EventKind::AddedToSpace,
            "MESSAGE" => EventKind::Message,
            _ => EventKind::Other,
        };
        return Some(ChatEvent {
            shape: Shape::Classic,
            kind,
            user: user_at(value, "/user"),
            space: field(value, "/space/name"),
            event_time: field(value, "/eventTime"),
        });
    }
    let chat = value.get("chat").filter(|c| c.is_object())?;
    let payload = |name: &str| chat.get(name).filter(|p| p.is_object());
    let (kind, payload_name) = if payload("buttonClickedPayload").is_some() {
        let action = field(value, "/commonEventObject/invokedFunction")
            .map(|f| action_name(&f))
            .filter(|a| !a.is_empty())
            .or_else(|| field(value, "/commonEventObject/parameters/action"))
            .or_else(|| query_action.map(str::to_owned));
        (
            EventKind::Click {
                action,
                episode: parameter(value, None, "/commonEventObject/parameters"),
            },
            "buttonClickedPayload",
        )
    } else if payload("addedToSpacePayload").is_some() {
        (EventKind::AddedToSpace, "addedToSpacePayload")
    } else if payload("messagePayload").is_some() {
        (EventKind::Message, "messagePayload")
    } else {
        (EventKind::Other, "")
    };
    let space = (!payload_name.is_empty())
        .then(|| field(chat, &format!("/{payload_name}/space/name")))
        .flatten()
        .or_else(|| field(chat, &format!("/{payload_name}/message/space/name")));
    Some(ChatEvent {
        shape: Shape::AddOn,
        kind,
        user: user_at(chat, "/user"),
        space,
        event_time: field(chat, "/eventTime"),
    })
}

/// Answers in the event's envelope: the clicked message replaced by `message` (its text
/// and cards).
pub(crate) fn update_message(shape: Shape, message: Value) -> Value {
    match shape {
        Shape::Classic => {
            let mut answer = message;
            if let Value::Object(object) = &mut answer {
                object.insert("actionResponse".into(), json!({"type": "UPDATE_MESSAGE"}));
            }
            answer
        }
        Shape::AddOn => json!({
            "hostAppDataAction": {"chatDataAction": {"updateMessageAction": {"message": message}}}
        }),
    }
}

/// Answers in the event's envelope with a new message of `text` (in the event's thread).
pub(crate) fn new_message(shape: Shape, text: &str) -> Value {
    match shape {
        Shape::Classic => json!({"actionResponse": {"type": "NEW_MESSAGE"}, "text": text}),
        Shape::AddOn => json!({
            "hostAppDataAction": {"chatDataAction": {"createMessageAction": {"message": {"text": text}}}}
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_classic_click_names_its_action_episode_and_user() {
        let event = json!({
            "type": "CARD_CLICKED",
            "eventTime": "2025-05-01T10:05:12.345678Z",
            "space": {"name": "spaces/AAAA"},
            "user": {"name": "users/1", "displayName": "Ada", "email": "ada@example.com"},
            "action": {"actionMethodName": "ack", "parameters": [{"key": "episode", "value": "abc"}]},
            "common": {"invokedFunction": "ack", "parameters": {"episode": "abc"}}
        });
        let read = read(&event, None).expect("classic");
        assert_eq!(read.shape, Shape::Classic);
        assert_eq!(
            read.kind,
            EventKind::Click {
                action: Some("ack".into()),
                episode: Some("abc".into())
            }
        );
        assert_eq!(read.user.email, "ada@example.com");
        assert_eq!(read.space.as_deref(), Some("spaces/AAAA"));
        // "silence:4h" parses as a URL of scheme "silence"; it is a function name.
        let silence = json!({"type": "CARD_CLICKED", "action": {"actionMethodName": "silence:4h"}});
        assert!(matches!(
            super::read(&silence, None).expect("classic").kind,
            EventKind::Click { action: Some(a), .. } if a == "silence:4h"
        ));
    }

    #[test]
    fn an_add_on_click_takes_the_action_from_the_function_url() {
        let event = json!({
            "commonEventObject": {"invokedFunction": "https://kabar.example/chat/events?action=silence%3A1h",
                                  "parameters": {"episode": "abc"}},
            "chat": {"user": {"name": "users/1", "displayName": "Ada"},
                     "buttonClickedPayload": {"space": {"name": "spaces/AAAA"}, "message": {}}}
        });
        let read = read(&event, None).expect("add-on");
        assert_eq!(read.shape, Shape::AddOn);
        assert_eq!(
            read.kind,
            EventKind::Click {
                action: Some("silence:1h".into()),
                episode: Some("abc".into())
            }
        );
        assert_eq!(read.space.as_deref(), Some("spaces/AAAA"));
        let answer = update_message(Shape::AddOn, json!({"text": "x"}));
        assert_eq!(
            answer["hostAppDataAction"]["chatDataAction"]["updateMessageAction"]["message"]["text"],
            "x"
        );
    }

    #[test]
    fn wrong_types_and_strange_shapes_read_as_little_as_they_say() {
        assert!(read(&json!([1, 2]), None).is_none());
        assert!(read(&json!({"chat": 5}), None).is_none());
        let typed = read(&json!({"type": 7, "user": "nobody"}), None).expect("classic");
        assert_eq!(typed.kind, EventKind::Other);
        assert_eq!(typed.user, User::default());
        let click = read(
            &json!({"type": "CARD_CLICKED", "action": {"parameters": "x"}, "common": {"parameters": {"episode": 5}}}),
            None,
        )
        .expect("classic");
        assert_eq!(
            click.kind,
            EventKind::Click {
                action: None,
                episode: None
            }
        );
        let long = "x".repeat(100_000);
        let cut = read(
            &json!({"type": "MESSAGE", "user": {"displayName": long}}),
            None,
        )
        .expect("classic");
        assert_eq!(cut.user.display_name.chars().count(), MAX_FIELD_CHARS);
    }
}
