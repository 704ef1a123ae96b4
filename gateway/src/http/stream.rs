//! The push API: Server-Sent Events at `/v1/stream` and the long-poll inbox at
//! `/v1/inbox`, both over the caller's stream ([`crate::push`]) from a resumable position.
//! Each open stream and waiting long poll holds one of the principal's
//! `server.streams_per_principal` slots ([`crate::push::StreamSlots`]).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt as _};
use icbt_auth::principal::{Authenticated, Principal};
use serde::{Deserialize, Serialize};

use super::auth::principal_key;
use super::errors::{Problem, ProblemKind, invalid};
use super::extractors::{ApiQuery, Caller, SessionId, page_limit};
use super::state::AppState;
use crate::audit::Access;
use crate::domain::participants::owner_of;
use crate::http::admission::Place;
use crate::push::Slot;
use crate::push::authz::{Authorization, EndReason, Grounds};
use crate::storage::stream::{StreamFilter, StreamPosition};
use crate::views::{EntryView, entry_view};

/// The stream filter for `caller`, or 403 for auditors (who reach the audit API only).
fn filter_for(state: &AppState, caller: &Authenticated) -> Result<StreamFilter, Problem> {
    if state.auth.rules.auditors.holds(caller) {
        tracing::info!(reason = "auditor_only", "authorisation refused");
        return Err(Problem::new(ProblemKind::Forbidden));
    }
    Ok(match &caller.principal {
        Principal::Patient(p) => StreamFilter::Patient(p.pid.clone()),
        Principal::Clinician(c) => StreamFilter::CareTeam(c.hpr_number.clone()),
        Principal::System(s) => StreamFilter::Clinics(state.auth.rules.tenancy.platform_clinics(s)),
    })
}

fn parse_position(value: &str) -> Result<StreamPosition, Problem> {
    value
        .parse()
        .map_err(|e: crate::storage::stream::PositionError| invalid("after", e.to_string()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct StreamQuery {
    after: Option<String>,
    /// The caller's device reading the stream (its id in the key directory): the stream
    /// ends when that device is revoked.
    device: Option<String>,
}

/// Watches what `caller`'s authorization rests on for as long as a stream or long poll
/// is open: the token's or session's expiry, the session, the device named, the
/// clinician's care teams. A device that is not an active one of the caller's is refused
/// (the watch's first check finds it).
async fn watch(
    state: &AppState,
    caller: &Authenticated,
    session: Option<SessionId>,
    device: Option<String>,
) -> Result<Result<Authorization, EndReason>, Problem> {
    let named = device.is_some();
    let grounds = Grounds {
        expires_at_ms: caller.expires_at.saturating_mul(1000),
        session: session.map(|s| s.0),
        device: device.map(|id| (id, owner_of(&caller.principal))),
        hpr: match &caller.principal {
            Principal::Clinician(c) => Some(c.hpr_number.as_str().to_owned()),
            _ => None,
        },
    };
    match Authorization::watch(state.store.clone(), state.push.changes(), grounds).await? {
        Err(EndReason::DeviceRevoked) if named => {
            Err(invalid("device", "is not an active device of the caller's"))
        }
        watching => Ok(watching),
    }
}

/// The last event of a stream that ends before its client closes it.
fn end_event(reason: EndReason) -> Event {
    Event::default().event("end").data(reason.event_data())
}

/// A slot among the caller's open streams and long polls, or 429 with Retry-After.
fn slot(state: &AppState, caller: &Authenticated) -> Result<Slot, Problem> {
    state
        .stream_slots
        .take(principal_key(caller))
        .ok_or_else(|| {
            tracing::info!(reason = "too_many_streams", "request refused");
            Problem::new(ProblemKind::TooManyStreams)
                .detail("close another event stream or long poll of this principal first")
                .header(header::RETRY_AFTER, HeaderValue::from_static("5"))
        })
}

/// `GET /v1/stream`: Server-Sent Events of every new message the caller may see. Each
/// event's `id` is a position; reconnecting with `Last-Event-ID` (or `?after=`) replays
/// exactly what came after it. Without either, the stream starts at the present. The
/// first event is that starting position as an `id` alone, with no data: a client that
/// loses the connection before its first message resumes where it connected, not at a
/// later present (`EventSource` keeps the id by itself). The stream ends with an `end`
/// event when the authorization it rests on ends ([`crate::push::authz`]).
///
/// Order: each episode's messages arrive in sequence order (`seq`), on every instance,
/// and positions only grow; messages of different episodes arrive in commit order.
#[utoipa::path(get, path = "/v1/stream", tag = "messages", params(StreamQuery, ("Last-Event-ID" = Option<String>, Header, description = "resume after this position")), responses((status = 200, content_type = "text/event-stream", description = "first an event with only an `id`, the position the stream starts after (resume there if the connection drops before a message); then events `message`, each with a position as `id`; when the gateway ends the stream (the authorization ended, or shutdown) a last event `end` with data `{\"reason\": …}`"), (status = 422, body = crate::http::errors::ProblemDocument, description = "`device` is not an active device of the caller's"), (status = 429, body = crate::http::errors::ProblemDocument, description = "the principal holds `server.streams_per_principal` streams and long polls already")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn stream(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    session: Option<axum::Extension<SessionId>>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let filter = filter_for(&state, &caller)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.after);
    let position = match resume {
        Some(value) => parse_position(&value)?,
        None => state.store.stream_head().await?,
    };
    let opening = Event::default().id(position.to_string());
    let slot = slot(&state, &caller)?;
    let watch = watch(&state, &caller, session.map(|s| s.0), query.device).await?;
    let closing = state.push.closing.subscribe();
    let reader = state
        .push
        .open(state.store.clone(), filter, position, access, caller);
    let open = Open {
        reader,
        watch,
        closing,
        _slot: slot,
    };
    // The slot lives as long as the stream does; both paths (HTTP/2 through hyper, the
    // lean HTTP/1.1 one) end the connection's stream when this ends.
    let events = futures_util::stream::unfold(Some(open), |open| async move {
        let mut open = open?;
        let Open {
            reader,
            watch,
            closing,
            ..
        } = &mut open;
        let next = match watch {
            Err(reason) => Err(*reason),
            Ok(watch) => tokio::select! {
                // The end first: nothing is delivered once the authorization has ended.
                biased;
                _ = closing.wait_for(|closing| *closing) => Err(EndReason::Shutdown),
                reason = watch.ended() => Err(reason),
                entry = reader.next() => Ok(entry?),
            },
        };
        let reason = match next {
            Ok(entry) => {
                let event = Event::default()
                    .id(entry.position.to_string())
                    .event("message")
                    .data(&entry.data);
                return Some((Ok(event), Some(open)));
            }
            Err(reason) => reason,
        };
        tracing::info!(reason = ?reason, "event stream ended by the gateway");
        Some((Ok(end_event(reason)), None))
    });
    let events = futures_util::stream::once(async move { Ok(opening) }).chain(events);
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("heartbeat"),
    ))
}

/// An open event stream: its reader, what ends it, and its slot.
struct Open {
    reader: crate::push::Reader,
    watch: Result<Authorization, EndReason>,
    closing: tokio::sync::watch::Receiver<bool>,
    _slot: Slot,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct InboxQuery {
    after: Option<String>,
    limit: Option<i64>,
    /// Seconds to wait for something new when nothing is (0–25).
    wait: Option<u64>,
    /// The caller's device reading the inbox: a long poll ends when it is revoked.
    device: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InboxPage {
    entries: Vec<EntryView>,
    /// Pass as `after` next time.
    next_after: String,
    /// Set when a long poll ended because the authorization it rested on ended (the
    /// same reasons as the event stream's `end` event).
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<EndReason>,
}

/// `GET /v1/inbox?after=POS&limit=N&wait=S`: the caller's messages across episodes, in
/// order; with `wait`, a long poll that answers as soon as something arrives.
///
/// Order: as on the event stream, each episode's messages come in sequence order
/// (`seq`), pages follow one another without gaps or repeats, and `next_after` only
/// grows; messages of different episodes come in commit order.
#[utoipa::path(get, path = "/v1/inbox", tag = "messages", params(InboxQuery), responses((status = 200, body = InboxPage), (status = 422, body = crate::http::errors::ProblemDocument, description = "a bad `after`, `limit` or `device`"), (status = 429, body = crate::http::errors::ProblemDocument, description = "a long poll (`wait`) while the principal holds `server.streams_per_principal` streams and long polls already")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn inbox(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    session: Option<axum::Extension<SessionId>>,
    place: Option<axum::Extension<Place>>,
    ApiQuery(query): ApiQuery<InboxQuery>,
) -> Result<Json<InboxPage>, Problem> {
    let filter = filter_for(&state, &caller)?;
    let after = query
        .after
        .as_deref()
        .map(parse_position)
        .transpose()?
        .unwrap_or_default();
    let limit = page_limit(query.limit)?;
    let wait = Duration::from_secs(query.wait.unwrap_or(0).min(25));
    // A long poll holds a slot while it waits; a page that answers at once does not.
    let (_slot, mut watch) = if wait.is_zero() {
        (None, None)
    } else {
        let slot = slot(&state, &caller)?;
        let watch = watch(&state, &caller, session.map(|s| s.0), query.device).await?;
        // Waiting is not work: the gateway's place goes to another request meanwhile.
        if let Some(place) = place {
            place.give_back();
        }
        (Some(slot), Some(watch))
    };
    let (entries, end) = match &mut watch {
        Some(Err(reason)) => (Vec::new(), Some(*reason)),
        watching => {
            state
                .push
                .poll(
                    &state.store,
                    (&filter, after, limit),
                    wait,
                    (&access, &caller),
                    watching.as_mut().and_then(|w| w.as_mut().ok()),
                )
                .await?
        }
    };
    let next_after = entries.last().map_or(after, |e| e.position).to_string();
    Ok(Json(InboxPage {
        entries: entries.into_iter().map(entry_view).collect(),
        next_after,
        end,
    }))
}
