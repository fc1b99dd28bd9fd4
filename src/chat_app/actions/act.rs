//! What a verified click does: Acknowledge records who and when on the episode, Silence
//! creates the silence in Alertmanager, and either answers with the card as it now stands.
//! It must not act twice for one click, nor let a user outside allowed_domains act.

use std::time::Duration;

use serde_json::{Value, json};
use tracing::{info, warn};

use super::card::{ACK, Buttons, SILENCE_PREFIX, decorate, status_lines};
use super::event::{self, ChatEvent, Shape};
use super::state::{AppEpisodeState, Mark, SilenceMark};
use crate::app::AppState;
use crate::chat_app::ChatAppSettings;
use crate::chat_app::silence::{AlertmanagerApi, SilenceRequest};
use crate::config::parse_duration;
use crate::ingest::ApiError;
use crate::store::{StoreError, now_ms, transact};

/// Episode ids are the 24 hex characters of an opening card's `client-` id.
const EPISODE_ID_CHARS: usize = 24;
/// The same person pressing the same Silence again within this gets the silence already
/// made: a redelivered click that carries no event time, or a double click.
const SAME_SILENCE_WINDOW_MS: i64 = 5 * 60_000;

/// What the button asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Acknowledge,
    Silence(Duration),
}

impl Action {
    fn parse(name: &str, settings: &ChatAppSettings) -> Option<Action> {
        if name == ACK {
            return Some(Action::Acknowledge);
        }
        let duration = parse_duration(name.strip_prefix(SILENCE_PREFIX)?).ok()?;
        // Only a button kabar offers: an event naming any other duration is not one of its.
        settings
            .silence_durations
            .contains(&duration)
            .then_some(Action::Silence(duration))
    }

    fn kind(self) -> &'static str {
        match self {
            Action::Acknowledge => "acknowledge",
            Action::Silence(_) => "silence",
        }
    }
}

/// An id kabar could have made: anything else is not looked up at all.
pub(crate) fn valid_episode_id(id: &str) -> bool {
    id.len() == EPISODE_ID_CHARS && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The opening card of an episode as app mode shows it now: its lines, a transient
/// `notice`, and while it fires the buttons the settings allow.
pub(crate) fn current_card(
    settings: &ChatAppSettings,
    episode_id: &str,
    state: &AppEpisodeState,
    notice: Option<&str>,
    now_ms: i64,
) -> String {
    decorated(
        settings,
        episode_id,
        state,
        &state.card,
        !state.resolved,
        notice,
        now_ms,
    )
}

/// `card` (an opening card's body, as queued or as last recorded) with the episode's
/// lines and, when `offer` and the settings have events, the buttons.
pub(crate) fn decorated(
    settings: &ChatAppSettings,
    episode_id: &str,
    state: &AppEpisodeState,
    card: &str,
    offer: bool,
    notice: Option<&str>,
    now_ms: i64,
) -> String {
    let silences: &[Duration] = if settings.alertmanager.is_some() && state.labels.is_some() {
        &settings.silence_durations
    } else {
        &[]
    };
    let buttons = Buttons {
        episode_id,
        silences,
        endpoint_url: settings
            .events
            .as_ref()
            .and_then(|e| e.endpoint_url.as_deref()),
    };
    let offer = offer && settings.events.is_some();
    decorate(
        card,
        &status_lines(state, notice, now_ms),
        offer.then_some(&buttons),
    )
}

/// The UPDATE_MESSAGE answer: the card's text and cards, in the event's envelope.
fn card_answer(shape: Shape, body: &str) -> Value {
    let parsed: Value = serde_json::from_str(body).unwrap_or_else(|_| json!({}));
    let mut message = serde_json::Map::new();
    message.insert(
        "text".into(),
        parsed.get("text").cloned().unwrap_or_else(|| json!("")),
    );
    if let Some(cards) = parsed.get("cardsV2") {
        message.insert("cardsV2".into(), cards.clone());
    }
    event::update_message(shape, Value::Object(message))
}

/// Who pressed, as the card and Alertmanager name them.
fn mark_of(event: &ChatEvent, at_ms: i64) -> Mark {
    Mark {
        name: if event.user.display_name.trim().is_empty() {
            event.user.email.clone()
        } else {
            event.user.display_name.clone()
        },
        email: event.user.email.clone(),
        at_ms,
    }
}

/// Whether the user may act, by the domain of their e-mail.
fn allowed(settings: &ChatAppSettings, event: &ChatEvent) -> bool {
    if settings.allowed_domains.is_empty() {
        return true;
    }
    let domain = event
        .user
        .email
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default();
    settings.allowed_domains.contains(&domain)
}

/// One click's identity: the same click redelivered has the same. Without an event time
/// (add-on events may carry none) clicks are told apart by the five minutes they fall in.
fn click_key(event: &ChatEvent, action: &str, episode: &str, now_ms: i64) -> String {
    let time = event
        .event_time
        .clone()
        .unwrap_or_else(|| format!("bucket-{}", now_ms / SAME_SILENCE_WINDOW_MS));
    let input = [episode, action, &event.user.name, &event.user.email, &time].join("\u{1f}");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, input.as_bytes());
    digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the first transaction of a click found.
enum Claim {
    Unknown,
    Duplicate(AppEpisodeState),
    /// Taken; the click acts on this state.
    Taken(AppEpisodeState),
}

/// Takes the click `key` on the episode and, unless the episode resolved, applies `act`,
/// in one transaction: a copy of the click racing at another replica waits on the
/// episode's lock and then finds both the claim and what it did.
async fn claim<F>(app: &AppState, episode: &str, key: &str, act: F) -> Result<Claim, StoreError>
where
    F: FnOnce(&mut AppEpisodeState) + Send + 'static,
{
    let (episode, key) = (episode.to_owned(), key.to_owned());
    transact(app.shared.store.as_ref(), move |tx| {
        let Some(mut state) = tx
            .app_episode(&episode)?
            .and_then(|s| AppEpisodeState::parse(&s))
        else {
            return Ok(Claim::Unknown);
        };
        if state.handled(&key) {
            return Ok(Claim::Duplicate(state));
        }
        state.claim(&key);
        if !state.resolved {
            act(&mut state);
        }
        tx.save_app_episode(&episode, &state.space.clone(), &state.to_json(), now_ms())?;
        Ok(Claim::Taken(state))
    })
    .await
}

/// Changes the stored state with `change` (under the episode's lock), returning it.
async fn update<F>(
    app: &AppState,
    episode: &str,
    change: F,
) -> Result<Option<AppEpisodeState>, StoreError>
where
    F: FnOnce(&mut AppEpisodeState) + Send + 'static,
{
    let episode = episode.to_owned();
    transact(app.shared.store.as_ref(), move |tx| {
        let Some(mut state) = tx
            .app_episode(&episode)?
            .and_then(|s| AppEpisodeState::parse(&s))
        else {
            return Ok(None);
        };
        change(&mut state);
        tx.save_app_episode(&episode, &state.space.clone(), &state.to_json(), now_ms())?;
        Ok(Some(state))
    })
    .await
}

/// Answers a click that does nothing: the card with `notice` on it, or `unknown` as a
/// message where kabar has no card for the episode.
async fn refusal(
    app: &AppState,
    settings: &ChatAppSettings,
    shape: Shape,
    episode: &str,
    notice: &str,
    unknown: &str,
) -> Result<Value, ApiError> {
    let state = app.shared.store.app_episode(episode).await.map_err(|e| {
        app.shared.metrics.store_error(e.kind());
        ApiError::EventStoreUnavailable(e)
    })?;
    Ok(match state.as_deref().and_then(AppEpisodeState::parse) {
        Some(state) => card_answer(
            shape,
            &current_card(settings, episode, &state, Some(notice), now_ms()),
        ),
        None => super::text_answer(shape, unknown),
    })
}

/// An opening card as the sender sends it (and `kabar render` shows it): the queued
/// `body` with the episode's lines, and the buttons while a firing card's alert fires.
pub(crate) fn outgoing_card(
    settings: &ChatAppSettings,
    episode_id: &str,
    state: &AppEpisodeState,
    body: &str,
    firing: bool,
) -> String {
    let offer = firing && !state.resolved;
    decorated(settings, episode_id, state, body, offer, None, now_ms())
}

/// A verified CARD_CLICKED: acts once, answers with the card.
pub(super) async fn click(
    app: &AppState,
    settings: &ChatAppSettings,
    event: &ChatEvent,
    action: Option<&str>,
    episode: Option<&str>,
) -> Result<Value, ApiError> {
    let metrics = &app.shared.metrics;
    let now = now_ms();
    let shape = event.shape;
    let Some(episode) = episode.filter(|e| valid_episode_id(e)) else {
        metrics.action_done("unknown", "unknown_episode");
        return Ok(super::text_answer(
            shape,
            "kabar does not know this button.",
        ));
    };
    let parsed = action.and_then(|a| Action::parse(a, settings));
    let store_error = |e: StoreError| {
        metrics.store_error(e.kind());
        ApiError::EventStoreUnavailable(e)
    };
    let Some(action) = parsed else {
        metrics.action_done("unknown", "unknown_action");
        let notice = "This button is no longer offered.";
        return refusal(
            app,
            settings,
            shape,
            episode,
            notice,
            "kabar does not know this button.",
        )
        .await;
    };
    let kind = action.kind();
    if !allowed(settings, event) {
        metrics.action_done(kind, "refused");
        info!(action = kind, user = ?event.user.name, "a click from outside chat_app.allowed_domains was refused");
        let notice = format!(
            "Sorry, only people from {} can act on alerts here.",
            settings.allowed_domains.join(", ")
        );
        return refusal(app, settings, shape, episode, &notice, &notice).await;
    }
    let action_name = match action {
        Action::Acknowledge => ACK.to_owned(),
        Action::Silence(d) => format!("{SILENCE_PREFIX}{}", super::card::silence_label(d)),
    };
    let key = click_key(event, &action_name, episode, now);
    let mark = mark_of(event, now);
    let acknowledgement = mark.clone();
    let act = move |state: &mut AppEpisodeState| {
        if action == Action::Acknowledge {
            state.acknowledge(acknowledgement);
        }
    };
    let state = match claim(app, episode, &key, act).await.map_err(store_error)? {
        Claim::Unknown => {
            metrics.action_done(kind, "unknown_episode");
            return Ok(super::text_answer(
                shape,
                "kabar has no record of this alert any more (it forgets alerts a week after their last notification).",
            ));
        }
        Claim::Duplicate(state) => {
            metrics.action_done(kind, "duplicate");
            return Ok(card_answer(
                shape,
                &current_card(settings, episode, &state, None, now),
            ));
        }
        Claim::Taken(state) => state,
    };
    if state.resolved {
        metrics.action_done(kind, "resolved");
        let notice = "This alert has resolved; there is nothing to act on.";
        return Ok(card_answer(
            shape,
            &current_card(settings, episode, &state, Some(notice), now),
        ));
    }
    let (state, notice) = match action {
        Action::Acknowledge => {
            metrics.action_done(kind, "done");
            info!(space = %state.space, alert = ?state.alertname, by = ?event.user.display_name, "alert acknowledged from Chat");
            (state, None)
        }
        Action::Silence(duration) => {
            silence(app, settings, event, episode, state, mark, duration).await?
        }
    };
    Ok(card_answer(
        shape,
        &current_card(settings, episode, &state, notice.as_deref(), now),
    ))
}

/// Creates the silence, records it, and says how it went.
async fn silence(
    app: &AppState,
    settings: &ChatAppSettings,
    event: &ChatEvent,
    episode: &str,
    state: AppEpisodeState,
    mark: Mark,
    duration: Duration,
) -> Result<(AppEpisodeState, Option<String>), ApiError> {
    let metrics = &app.shared.metrics;
    let (Some(alertmanager), Some(labels)) = (&settings.alertmanager, &state.labels) else {
        metrics.action_done("silence", "refused");
        let notice = "Silencing from Chat is not set up here (chat_app.alertmanager).".to_owned();
        return Ok((state, Some(notice)));
    };
    let duration_ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    let same = state.silences.iter().any(|s| {
        s.by.email == mark.email
            && s.by.name == mark.name
            && mark.at_ms - s.by.at_ms < SAME_SILENCE_WINDOW_MS
            && s.until_ms - s.by.at_ms == duration_ms
    });
    if same {
        metrics.action_done("silence", "duplicate");
        return Ok((state, None));
    }
    let starts_at =
        jiff::Timestamp::from_millisecond(mark.at_ms).unwrap_or_else(|_| jiff::Timestamp::now());
    let ends_at = starts_at
        .checked_add(jiff::SignedDuration::from_millis(duration_ms))
        .unwrap_or(starts_at);
    let created_by = [
        &event.user.email,
        &event.user.display_name,
        &event.user.name,
    ]
    .into_iter()
    .find(|v| !v.trim().is_empty())
    .cloned()
    .unwrap_or_else(|| "Google Chat user".to_owned());
    let request = SilenceRequest {
        // An empty value stays: it matches the label's absence, as in the alert.
        matchers: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        starts_at,
        ends_at,
        created_by,
        comment: format!(
            "Silenced for {} from Google Chat by {}{} in kabar space {}{}",
            super::card::silence_label(duration),
            mark.name,
            if mark.email.is_empty() {
                String::new()
            } else {
                format!(" <{}>", mark.email)
            },
            state.space,
            event
                .space
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default(),
        ),
    };
    let api = AlertmanagerApi {
        url: alertmanager.url.clone(),
        auth: alertmanager.auth.clone(),
    };
    match api
        .create_silence(&app.events.internal_http, &request)
        .await
    {
        Ok(created) => {
            let silence = SilenceMark {
                by: mark,
                until_ms: ends_at.as_millisecond(),
                id: created.id.clone(),
                url: created.url,
            };
            let recorded = update(app, episode, move |s| s.silenced(silence))
                .await
                .map_err(|e| {
                    metrics.store_error(e.kind());
                    ApiError::EventStoreUnavailable(e)
                })?
                .unwrap_or(state);
            metrics.action_done("silence", "done");
            info!(space = %recorded.space, alert = ?recorded.alertname, silence = %created.id, until = %ends_at, "alert silenced from Chat");
            Ok((recorded, None))
        }
        Err(e) => {
            metrics.action_done("silence", "failed");
            metrics.silence_failed(e.reason());
            warn!(space = %state.space, alert = ?state.alertname, error = %e, "cannot create the silence in Alertmanager");
            Ok((state, Some(format!("Could not silence: {e}"))))
        }
    }
}
