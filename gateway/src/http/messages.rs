//! Sealed messages in an episode: sending (checked against the envelope policy, committed
//! with its access record and journal outbox entry) and the history.

use crate::http::extractors::ApiPath;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use icbt_auth::principal::Authenticated;
use icbt_envelope::Envelope;
use icbt_envelope::policy::{self as envelope_policy, Violation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::access::{admit, admitted, reach};
use super::errors::{Problem, ProblemKind, invalid};
use super::extractors::{ApiJson, ApiQuery, Caller, PageQuery, page_limit};
use super::state::AppState;
use crate::audit::{Access, Action};
use crate::domain::attachments::is_sha256_hex;
use crate::domain::episode::EpisodeId;
use crate::domain::messages::MessageKind;
use crate::domain::participants::{journal_of, owner_of, participants, sender_ref};
use crate::storage::{Appended, Audience, EpisodeForSend, NewMessage};
use crate::views::{MessageView, message_view};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutMessage {
    kind: MessageKind,
    /// The sealed envelope (docs/envelope.md: JWE JSON, `application/jose+json`),
    /// base64url without padding. Its protected header names the sender device and its
    /// recipient entries the keys it is sealed to.
    envelope: String,
    /// SHA-256 (hex) of attachments already uploaded to this episode.
    #[serde(default)]
    attachments: Vec<String>,
}

impl PutMessage {
    /// Checks the fields' shapes; returns the decoded envelope bytes.
    fn checked(&self) -> Result<Vec<u8>, Problem> {
        let envelope = URL_SAFE_NO_PAD
            .decode(&self.envelope)
            .map_err(|_| invalid("envelope", "not base64url without padding"))?;
        if envelope.is_empty() {
            return Err(invalid("envelope", "empty"));
        }
        if self.attachments.len() > 20 {
            return Err(invalid("attachments", "at most 20"));
        }
        if let Some(i) = self.attachments.iter().position(|h| !is_sha256_hex(h)) {
            return Err(invalid(
                &format!("attachments[{i}]"),
                "a SHA-256 as 64 lower-case hex digits",
            ));
        }
        Ok(envelope)
    }
}

/// The envelope policy (`icbt_envelope::policy`) with what storage knows: the caller's
/// active devices, the participants' and the clinic's journal keys, from `devices` (at
/// least every device of those owners that was active when read). Returns the parsed
/// envelope.
fn check_envelope(
    state: &AppState,
    caller: &Authenticated,
    send: &EpisodeForSend,
    message_id: Uuid,
    kind: MessageKind,
    bytes: &[u8],
) -> Result<Envelope, Problem> {
    let EpisodeForSend {
        episode,
        clinic,
        team,
        devices,
        ..
    } = send;
    let envelope = Envelope::parse(bytes, &state.envelope_limits).map_err(|e| {
        Problem::new(ProblemKind::EnvelopeMalformed)
            .detail(e.to_string())
            .with("reason", e.to_string())
    })?;
    let now = crate::storage::now_ms();
    let people = participants(episode.patient.expose(), team, now, false);
    let me = owner_of(&caller.principal);
    let journal = journal_of(&clinic.org_number);
    let mut sender_devices = Vec::new();
    let mut participant_keys = Vec::new();
    let mut journal_keys = Vec::new();
    for device in devices {
        if !device.active_at(now) {
            continue;
        }
        if device.owner == me {
            sender_devices.push(device.device_id.clone());
        }
        if device.owner == journal {
            journal_keys.push(device.encryption_kid.clone());
        } else if people.contains(&device.owner) {
            participant_keys.push(device.encryption_kid.clone());
        }
    }
    let episode_id = episode.id.0.to_string();
    let message = message_id.to_string();
    let expected = envelope_policy::Expectation {
        episode: &episode_id,
        message: &message,
        kind: kind.as_str(),
        sender_devices: &sender_devices,
        participants: &participant_keys,
        journal: &journal_keys,
    };
    envelope_policy::check(&envelope, &expected).map_err(|violation| match violation {
        Violation::Binding { field } => {
            Problem::new(ProblemKind::EnvelopeBindingMismatch).with("field", field)
        }
        Violation::SenderNotADevice => Problem::new(ProblemKind::EnvelopeSenderNotADevice),
        Violation::NoJournalKey => {
            Problem::new(ProblemKind::JournalKeyMissing).with("clinic", clinic.org_number.as_str())
        }
        Violation::RecipientMissing { kids, journal } => {
            Problem::new(ProblemKind::EnvelopeRecipientMissing)
                .with("missing", kids)
                .with("journal", journal)
        }
        Violation::RecipientUnknown { kids } => {
            Problem::new(ProblemKind::EnvelopeRecipientUnknown).with("unknown", kids)
        }
    })?;
    Ok(envelope)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageReceipt {
    id: Uuid,
    episode: Uuid,
    seq: i64,
    created_at_ms: i64,
}

/// SHA-256 over every field of a send, so a retry is recognised only if identical.
fn request_hash(parts: &[&[u8]]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        context.update(part);
    }
    URL_SAFE_NO_PAD.encode(context.finish())
}

/// Checks every attachment a message names was uploaded to its episode.
async fn uploaded(state: &AppState, episode: EpisodeId, hashes: &[String]) -> Result<(), Problem> {
    let missing = state.store.missing_attachments(episode, hashes).await?;
    if let Some(first) = missing.first() {
        let i = hashes.iter().position(|h| h == first).unwrap_or(0);
        return Err(invalid(
            &format!("attachments[{i}]"),
            "no such attachment in this episode; upload it first",
        ));
    }
    Ok(())
}

/// `PUT /v1/episodes/{episode}/messages/{id}`: sends a sealed message under the client's
/// id. The same id with the same request answers the original result; with a different
/// request, 409. A 2xx means the message is committed.
///
/// The send is decided first on what the caller's last send in this episode was decided
/// on, kept in memory (`storage::send_context`); its append commits only if none of that
/// has changed since. Otherwise, and whenever that decision refuses, the send is decided
/// again on rows read now, and only that decision refuses or records a refusal.
#[utoipa::path(put, path = "/v1/episodes/{id}/messages/{message_id}", tag = "messages", params(("id" = Uuid, Path, description = "episode"), ("message_id" = Uuid, Path, description = "the sender's id for the message")), request_body = PutMessage, responses((status = 201, body = MessageReceipt, description = "committed"), (status = 200, body = MessageReceipt, description = "the same request again: the original result"), (status = 409, body = crate::http::errors::ProblemDocument, description = "id used for another message, or episode closed")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn put_message(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath((episode_id, message_id)): ApiPath<(Uuid, Uuid)>,
    ApiJson(body): ApiJson<PutMessage>,
) -> Result<Response, Problem> {
    let send = SendRequest {
        state: &state,
        access: &access,
        caller: &caller,
        message_id,
        body: &body,
    };
    let episode = EpisodeId(episode_id);
    let owner = owner_of(&caller.principal);
    if let Some(kept) = state.store.kept_send_context(episode, &owner)
        && let Ok(Some(sent)) = send.decided_on(&kept, Facts::Kept).await
    {
        return Ok(sent);
    }
    let fresh = state
        .store
        .send_context(episode, &owner)
        .await?
        .ok_or_else(|| Problem::new(ProblemKind::NotFound))?;
    send.decided_on(&fresh, Facts::Fresh)
        .await?
        .ok_or_else(|| Problem::new(ProblemKind::Internal))
}

/// A send's request, as [`put_message`] took it.
struct SendRequest<'a> {
    state: &'a AppState,
    access: &'a Access,
    caller: &'a Authenticated,
    message_id: Uuid,
    body: &'a PutMessage,
}

/// What a send is decided on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Facts {
    /// A copy kept from an earlier send: refusals are not final, and the append commits
    /// only at the copy's version.
    Kept,
    /// Rows read for this send.
    Fresh,
}

impl SendRequest<'_> {
    /// Decides the send on `context` and appends it. `None` when the append found that
    /// a kept context has changed: nothing was committed.
    async fn decided_on(
        &self,
        context: &EpisodeForSend,
        facts: Facts,
    ) -> Result<Option<Response>, Problem> {
        let Self {
            state,
            access,
            caller,
            message_id,
            body,
        } = *self;
        let people = (&context.episode, &context.clinic, context.team.as_slice());
        let action = (Action::Create, "messages");
        let record = match facts {
            Facts::Kept => admitted(state, access, caller, people, action)
                .ok_or_else(|| Problem::new(ProblemKind::Forbidden))?,
            Facts::Fresh => admit(state, access, caller, people, action).await?,
        }
        .resource_id(message_id.to_string());
        let episode = &context.episode;
        if !body.kind.allowed_for(&caller.principal) {
            if facts == Facts::Fresh {
                tracing::info!(
                    kind = body.kind.as_str(),
                    principal = caller.principal.kind(),
                    "message kind refused"
                );
            }
            return Err(Problem::new(ProblemKind::KindNotAllowed).with("kind", body.kind.as_str()));
        }
        let envelope_bytes = body.checked()?;
        let envelope = check_envelope(
            state,
            caller,
            context,
            message_id,
            body.kind,
            &envelope_bytes,
        )?;
        uploaded(state, episode.id, &body.attachments).await?;
        let attachments = serde_json::to_string(&body.attachments)
            .map_err(|_| Problem::new(ProblemKind::Internal))?;
        let kids: Vec<&str> = envelope
            .recipients()
            .iter()
            .map(|r| r.kid.as_str())
            .collect();
        let recipients =
            serde_json::to_string(&kids).map_err(|_| Problem::new(ProblemKind::Internal))?;
        let sender = sender_ref(&caller.principal);
        let sender_device = envelope.binding().sender.clone();
        let hash = request_hash(&[
            body.kind.as_str().as_bytes(),
            caller.principal.kind().as_bytes(),
            sender.as_bytes(),
            &envelope_bytes,
            attachments.as_bytes(),
        ]);
        let message = NewMessage {
            episode: episode.id,
            id: message_id,
            kind: body.kind.as_str(),
            sender_kind: caller.principal.kind(),
            sender_ref: &sender,
            sender_device: &sender_device,
            recipients: &recipients,
            content_type: icbt_envelope::MEDIA_TYPE,
            body: &envelope_bytes,
            attachments: &attachments,
            request_hash: &hash,
            audience: Audience::All,
            context_version: (facts == Facts::Kept).then_some(context.version),
        };
        let (status, position) = match state.store.append_message(&message, &record).await? {
            Appended::Created(p) => {
                state.push.wake();
                (StatusCode::CREATED, p)
            }
            Appended::Replayed(p) => {
                state
                    .store
                    .record_access(&[record.action(Action::Read)])
                    .await?;
                (StatusCode::OK, p)
            }
            Appended::Conflict => return Err(Problem::new(ProblemKind::MessageIdConflict)),
            Appended::Stale => return Ok(None),
        };
        let receipt = MessageReceipt {
            id: message_id,
            episode: episode.id.0,
            seq: position.seq,
            created_at_ms: position.created_at_ms,
        };
        Ok(Some((status, Json(receipt)).into_response()))
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessagePage {
    messages: Vec<MessageView>,
    /// Pass as `after` for the next page; equals the request's `after` when nothing is new.
    next_after: i64,
}

/// `GET /v1/episodes/{episode}/messages?after=SEQ&limit=N`: history in order.
///
/// Order: by sequence number (`seq`), which has no gaps within an episode.
#[utoipa::path(get, path = "/v1/episodes/{id}/messages", tag = "messages", params(("id" = Uuid, Path), PageQuery), responses((status = 200, body = MessagePage)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn list_messages(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath(episode_id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<MessagePage>, Problem> {
    let limit = page_limit(query.limit)?;
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(invalid("after", "a sequence number, 0 or more"));
    }
    let (episode, _, _, record) = reach(
        &state,
        &access,
        &caller,
        EpisodeId(episode_id),
        (Action::Read, "messages"),
    )
    .await?;
    state.store.record_access(&[record]).await?;
    let patient_view = caller.principal.kind() == "patient";
    let messages = state
        .store
        .messages_after(episode.id, after, limit, patient_view)
        .await?;
    let next_after = messages.last().map_or(after, |m| m.seq);
    Ok(Json(MessagePage {
        messages: messages.into_iter().map(message_view).collect(),
        next_after,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_hash_separates_fields() {
        assert_ne!(request_hash(&[b"ab", b"c"]), request_hash(&[b"a", b"bc"]));
        assert_eq!(request_hash(&[b"ab", b"c"]), request_hash(&[b"ab", b"c"]));
    }
}
