//! The messaging API: treatment episodes (created and run by the iCBT platform), their
//! care teams, and the sealed messages exchanged in them. Every handler authorises through
//! the pure policy in `icbt_auth::policy`; storage does the rest in one transaction.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use icbt_auth::identity::HprNumber;
use icbt_auth::now_secs;
use icbt_auth::policy::{self, EpisodeFacts, Resource};
use icbt_auth::principal::{Authenticated, Principal};
use icbt_envelope::Envelope;
use icbt_envelope::policy::{self as envelope_policy, Violation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::AppState;
use crate::audit::{Access, Action, Record};
use crate::authn::Caller;
use crate::devices;
use crate::episode::{Clinic, Episode, EpisodeId, EpisodeState, NationalId, OrgNumber};
use crate::json::ApiJson;
use crate::problem::{Problem, ProblemKind};
use crate::storage::{
    Appended, Audience, CareTeamEntry, EpisodeFilter, EpisodeForSend, EpisodeRefusal, NewMessage,
    StoredMessage,
};

/// Largest page of any list.
pub const MAX_PAGE: i64 = 200;
const DEFAULT_PAGE: i64 = 50;

pub(crate) fn invalid(path: &str, detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::InvalidField)
        .detail(detail)
        .with("path", path)
}

pub(crate) fn forbidden(denial: policy::Denial) -> Problem {
    tracing::info!(reason = denial.reason_code(), "authorisation refused");
    Problem::new(ProblemKind::Forbidden)
}

impl From<EpisodeRefusal> for Problem {
    fn from(refusal: EpisodeRefusal) -> Self {
        match refusal {
            EpisodeRefusal::NotFound => Problem::new(ProblemKind::NotFound),
            EpisodeRefusal::IdConflict => Problem::new(ProblemKind::EpisodeIdConflict),
            EpisodeRefusal::InvalidTransition { from, to } => {
                Problem::new(ProblemKind::InvalidTransition)
                    .detail(format!("an episode cannot go from {from} to {to}"))
                    .with("from", from)
                    .with("to", to)
            }
            EpisodeRefusal::Closed(state) => {
                Problem::new(ProblemKind::EpisodeClosed).with("state", state)
            }
            EpisodeRefusal::Storage(e) => e.into(),
        }
    }
}

/// An episode as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EpisodeView {
    id: Uuid,
    patient: String,
    organisation: String,
    programme: String,
    state: EpisodeState,
    care_team: Vec<CareTeamView>,
    created_at_ms: i64,
    updated_at_ms: i64,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CareTeamView {
    hpr_number: String,
    /// `therapist` or `cover`.
    role: String,
    /// Unix milliseconds when cover ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until_ms: Option<i64>,
}

fn view(episode: &Episode, clinic: &Clinic, team: &[CareTeamEntry]) -> EpisodeView {
    EpisodeView {
        id: episode.id.0,
        patient: episode.patient.expose().to_owned(),
        organisation: clinic.org_number.as_str().to_owned(),
        programme: episode.programme.clone(),
        state: episode.state,
        care_team: team
            .iter()
            .map(|m| CareTeamView {
                hpr_number: m.hpr_number.to_string(),
                role: if m.cover { "cover" } else { "therapist" }.to_owned(),
                until_ms: m.until_ms,
            })
            .collect(),
        created_at_ms: episode.created_at_ms,
        updated_at_ms: episode.updated_at_ms,
    }
}

/// Loads an episode with its clinic and care team, and checks `caller` may reach it for
/// `action` on `resource`. A refusal is recorded in the access log; on success, the
/// record to commit with the access is returned.
pub(crate) async fn reach(
    state: &AppState,
    access: &Access,
    caller: &Authenticated,
    id: EpisodeId,
    (action, resource): (Action, &str),
) -> Result<(Episode, Clinic, Vec<CareTeamEntry>, Record), Problem> {
    let (episode, clinic, team) = state
        .store
        .episode_with_team(id)
        .await?
        .ok_or_else(|| Problem::new(ProblemKind::NotFound))?;
    let record = admit(
        state,
        access,
        caller,
        (&episode, &clinic, &team),
        (action, resource),
    )
    .await?;
    Ok((episode, clinic, team, record))
}

/// Checks `caller` may reach a loaded episode for `action` on `resource`; a refusal is
/// recorded in the access log. On success, the record to commit with the access.
async fn admit(
    state: &AppState,
    access: &Access,
    caller: &Authenticated,
    (episode, clinic, team): (&Episode, &Clinic, &[CareTeamEntry]),
    (action, resource): (Action, &str),
) -> Result<Record, Problem> {
    let record = access.record(caller, action, resource).episode(episode);
    if let Err(denial) = decide_episode(state, caller, episode, clinic, team) {
        state
            .store
            .record_access(&[record.refused(denial.reason_code())])
            .await?;
        return Err(forbidden(denial));
    }
    Ok(record)
}

/// The episode with its clinic and team if `caller` may see it; for lists, where an
/// episode the caller may not see is left out rather than refused.
async fn visible(
    state: &AppState,
    caller: &Authenticated,
    id: EpisodeId,
) -> Result<Option<(Episode, Clinic, Vec<CareTeamEntry>)>, Problem> {
    let Some((episode, clinic, team)) = state.store.episode_with_team(id).await? else {
        return Ok(None);
    };
    Ok(decide_episode(state, caller, &episode, &clinic, &team)
        .is_ok()
        .then_some((episode, clinic, team)))
}

/// The policy's answer for `caller` on an episode with this clinic and care team.
fn decide_episode(
    state: &AppState,
    caller: &Authenticated,
    episode: &Episode,
    clinic: &Clinic,
    team: &[CareTeamEntry],
) -> Result<(), policy::Denial> {
    let members: Vec<_> = team.iter().map(CareTeamEntry::as_member).collect();
    let facts = EpisodeFacts {
        patient: &episode.patient,
        clinic: &clinic.org_number,
        care_team: &members,
    };
    policy::decide(
        caller,
        &state.auth.auditors,
        &Resource::Episode(facts),
        now_secs(),
    )
}

/// Checks `caller` may manage the episodes of `clinic` (the platform's job); a refusal
/// is recorded with `refused`, the record of the attempt.
pub(crate) async fn manage(
    state: &AppState,
    caller: &Authenticated,
    clinic: &OrgNumber,
    refused: Record,
) -> Result<(), Problem> {
    if let Err(denial) = policy::decide(
        caller,
        &state.auth.auditors,
        &Resource::ClinicEpisodes { clinic },
        now_secs(),
    ) {
        state
            .store
            .record_access(&[refused.refused(denial.reason_code())])
            .await?;
        return Err(forbidden(denial));
    }
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutEpisode {
    /// Fødselsnummer or D-nummer of the patient.
    patient: String,
    /// Organisation number of the clinic.
    organisation: String,
    programme: String,
    #[serde(default)]
    clinic_name: Option<String>,
}

/// `PUT /v1/episodes/{id}`: the platform creates an episode under its own id (a retry
/// returns the same episode).
#[utoipa::path(put, path = "/v1/episodes/{id}", tag = "episodes", params(("id" = Uuid, Path, description = "the platform's id for the episode")), request_body = PutEpisode, responses((status = 401, description = "not authenticated", body = crate::problem::ProblemDocument), (status = 403, description = "not allowed", body = crate::problem::ProblemDocument), (status = 201, body = EpisodeView, description = "created"), (status = 200, body = EpisodeView, description = "already existed"), (status = 409, body = crate::problem::ProblemDocument, description = "id taken by another episode")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn put_episode(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
    ApiJson(body): ApiJson<PutEpisode>,
) -> Result<Response, Problem> {
    let patient =
        NationalId::parse(&body.patient).map_err(|e| invalid("patient", e.to_string()))?;
    let org =
        OrgNumber::parse(&body.organisation).map_err(|e| invalid("organisation", e.to_string()))?;
    if body.programme.is_empty() || body.programme.len() > 200 {
        return Err(invalid("programme", "1 to 200 characters"));
    }
    let mut record = access
        .record(&caller, Action::Create, "episode")
        .resource_id(id.to_string());
    record.episode_id = Some(id);
    record.patient = Some(patient.expose().to_owned());
    manage(&state, &caller, &org, record.clone()).await?;
    let clinic = state
        .store
        .upsert_clinic(&org, body.clinic_name.as_deref().unwrap_or(org.as_str()))
        .await?;
    let (episode, created) = state
        .store
        .put_episode(EpisodeId(id), clinic.id, &patient, &body.programme, &record)
        .await?;
    if !created {
        // A retry: it reads what is there.
        state
            .store
            .record_access(&[record.action(Action::Read)])
            .await?;
    }
    let team = state.store.care_team(episode.id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&episode, &clinic, &team))).into_response())
}

/// `GET /v1/episodes/{id}`.
#[utoipa::path(get, path = "/v1/episodes/{id}", tag = "episodes", params(("id" = Uuid, Path)), responses((status = 401, description = "not authenticated", body = crate::problem::ProblemDocument), (status = 403, description = "not allowed", body = crate::problem::ProblemDocument), (status = 200, body = EpisodeView)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn get_episode(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<EpisodeView>, Problem> {
    let (episode, clinic, team, record) = reach(
        &state,
        &access,
        &caller,
        EpisodeId(id),
        (Action::Read, "episode"),
    )
    .await?;
    state.store.record_access(&[record]).await?;
    Ok(Json(view(&episode, &clinic, &team)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PageQuery {
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

fn page_limit(limit: Option<i64>) -> Result<i64, Problem> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(invalid("limit", format!("1 to {MAX_PAGE}"))),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EpisodeList {
    episodes: Vec<EpisodeView>,
}

/// `GET /v1/episodes`: the episodes the caller may see.
#[utoipa::path(get, path = "/v1/episodes", tag = "episodes", params(PageQuery), responses((status = 401, description = "not authenticated", body = crate::problem::ProblemDocument), (status = 403, description = "not allowed", body = crate::problem::ProblemDocument), (status = 200, body = EpisodeList)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn list_episodes(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    Query(query): Query<PageQuery>,
) -> Result<Json<EpisodeList>, Problem> {
    let limit = page_limit(query.limit)?;
    let mut episodes = Vec::new();
    let filters: Vec<EpisodeFilter<'_>> = match &caller.principal {
        Principal::Patient(p) => vec![EpisodeFilter::Patient(&p.pid)],
        Principal::Clinician(c) => vec![EpisodeFilter::CareTeam(&c.hpr_number)],
        Principal::System(s) => s
            .orgnr_parent
            .iter()
            .chain(&s.orgnr_child)
            .map(EpisodeFilter::Clinic)
            .collect(),
    };
    let mut records = Vec::new();
    for filter in filters {
        for episode in state.store.episodes_for(&filter, limit).await? {
            // The filter narrows; the policy decides (an ended cover, an auditor).
            if let Some((episode, clinic, team)) = visible(&state, &caller, episode.id).await? {
                records.push(
                    access
                        .record(&caller, Action::Search, "episodes")
                        .episode(&episode),
                );
                episodes.push(view(&episode, &clinic, &team));
            }
        }
    }
    episodes.truncate(usize::try_from(limit).unwrap_or(0));
    records.truncate(episodes.len());
    state.store.record_access(&records).await?;
    Ok(Json(EpisodeList { episodes }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutCareTeam {
    members: Vec<CareTeamView>,
}

/// `PUT /v1/episodes/{id}/care-team`: the platform sets who treats the patient.
#[utoipa::path(put, path = "/v1/episodes/{id}/care-team", tag = "episodes", params(("id" = Uuid, Path)), request_body = PutCareTeam, responses((status = 401, description = "not authenticated", body = crate::problem::ProblemDocument), (status = 403, description = "not allowed", body = crate::problem::ProblemDocument), (status = 200, body = EpisodeView)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn put_care_team(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
    ApiJson(body): ApiJson<PutCareTeam>,
) -> Result<Json<EpisodeView>, Problem> {
    let id = EpisodeId(id);
    let (episode, clinic, _) = state
        .store
        .episode_with_team(id)
        .await?
        .ok_or_else(|| Problem::new(ProblemKind::NotFound))?;
    let record = access
        .record(&caller, Action::Update, "care-team")
        .episode(&episode);
    manage(&state, &caller, &clinic.org_number, record.clone()).await?;
    if body.members.len() > 50 {
        return Err(invalid("members", "at most 50 members"));
    }
    let mut team = Vec::with_capacity(body.members.len());
    for (i, member) in body.members.iter().enumerate() {
        let hpr_number = HprNumber::parse(&member.hpr_number)
            .map_err(|e| invalid(&format!("members[{i}].hpr_number"), e.to_string()))?;
        let cover = match member.role.as_str() {
            "therapist" => false,
            "cover" => true,
            _ => return Err(invalid(&format!("members[{i}].role"), "therapist or cover")),
        };
        if cover != member.until_ms.is_some() {
            return Err(invalid(
                &format!("members[{i}].until_ms"),
                "a cover therapist has an end, a therapist none",
            ));
        }
        team.push(CareTeamEntry {
            hpr_number,
            cover,
            until_ms: member.until_ms,
        });
    }
    state.store.set_care_team(id, &team, &record).await?;
    let (episode, clinic, team) = state
        .store
        .episode_with_team(id)
        .await?
        .ok_or_else(|| Problem::new(ProblemKind::NotFound))?;
    Ok(Json(view(&episode, &clinic, &team)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutState {
    state: EpisodeState,
}

/// `PUT /v1/episodes/{id}/state`: planned → active → finished | cancelled.
#[utoipa::path(put, path = "/v1/episodes/{id}/state", tag = "episodes", params(("id" = Uuid, Path)), request_body = PutState, responses((status = 401, description = "not authenticated", body = crate::problem::ProblemDocument), (status = 403, description = "not allowed", body = crate::problem::ProblemDocument), (status = 200, body = EpisodeView), (status = 409, body = crate::problem::ProblemDocument, description = "invalid transition")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn put_state(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
    ApiJson(body): ApiJson<PutState>,
) -> Result<Json<EpisodeView>, Problem> {
    let id = EpisodeId(id);
    let (episode, clinic, team) = state
        .store
        .episode_with_team(id)
        .await?
        .ok_or_else(|| Problem::new(ProblemKind::NotFound))?;
    let record = access
        .record(&caller, Action::Update, "episode")
        .episode(&episode)
        .resource_id(body.state.as_str());
    manage(&state, &caller, &clinic.org_number, record.clone()).await?;
    let episode = state.store.transition(id, body.state, &record).await?;
    Ok(Json(view(&episode, &clinic, &team)))
}

/// The kinds of message, and who may send each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MessageKind {
    Message,
    Feedback,
    QuestionnaireResponse,
    Notice,
}

impl MessageKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Feedback => "feedback",
            Self::QuestionnaireResponse => "questionnaire-response",
            Self::Notice => "notice",
        }
    }

    fn allowed_for(self, principal: &Principal) -> bool {
        matches!(
            (self, principal),
            (
                Self::Message,
                Principal::Patient(_) | Principal::Clinician(_)
            ) | (Self::Feedback, Principal::Clinician(_))
                | (Self::QuestionnaireResponse, Principal::Patient(_))
                | (Self::Notice, Principal::System(_))
        )
    }
}

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
        if let Some(i) = self
            .attachments
            .iter()
            .position(|h| !crate::attachments::is_sha256_hex(h))
        {
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
/// least every device of those owners). Returns the parsed envelope.
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
    } = send;
    let envelope = Envelope::parse(bytes, &state.envelope_limits).map_err(|e| {
        Problem::new(ProblemKind::EnvelopeMalformed)
            .detail(e.to_string())
            .with("reason", e.to_string())
    })?;
    let now = crate::storage::now_ms();
    let people = devices::participants(episode.patient.expose(), team, now, false);
    let me = devices::owner_of(&caller.principal);
    let journal = devices::journal_of(&clinic.org_number);
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

pub(crate) fn sender_ref(principal: &Principal) -> String {
    match principal {
        // The episode names the patient; the message need not repeat the number.
        Principal::Patient(_) => "patient".to_owned(),
        Principal::Clinician(c) => c.hpr_number.to_string(),
        Principal::System(s) => s.client_id.clone(),
    }
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
#[utoipa::path(put, path = "/v1/episodes/{id}/messages/{message_id}", tag = "messages", params(("id" = Uuid, Path, description = "episode"), ("message_id" = Uuid, Path, description = "the sender's id for the message")), request_body = PutMessage, responses((status = 401, description = "not authenticated", body = crate::problem::ProblemDocument), (status = 403, description = "not allowed", body = crate::problem::ProblemDocument), (status = 201, body = MessageReceipt, description = "committed"), (status = 200, body = MessageReceipt, description = "the same request again: the original result"), (status = 409, body = crate::problem::ProblemDocument, description = "id used for another message, or episode closed")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn put_message(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    Path((episode_id, message_id)): Path<(Uuid, Uuid)>,
    ApiJson(body): ApiJson<PutMessage>,
) -> Result<Response, Problem> {
    let send = state
        .store
        .episode_for_send(EpisodeId(episode_id), &devices::owner_of(&caller.principal))
        .await?
        .ok_or_else(|| Problem::new(ProblemKind::NotFound))?;
    let record = admit(
        &state,
        &access,
        &caller,
        (&send.episode, &send.clinic, &send.team),
        (Action::Create, "messages"),
    )
    .await?
    .resource_id(message_id.to_string());
    let episode = &send.episode;
    if !body.kind.allowed_for(&caller.principal) {
        tracing::info!(
            kind = body.kind.as_str(),
            principal = caller.principal.kind(),
            "message kind refused"
        );
        return Err(Problem::new(ProblemKind::KindNotAllowed).with("kind", body.kind.as_str()));
    }
    let envelope_bytes = body.checked()?;
    let envelope = check_envelope(
        &state,
        &caller,
        &send,
        message_id,
        body.kind,
        &envelope_bytes,
    )?;
    uploaded(&state, episode.id, &body.attachments).await?;
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
    };
    let receipt = MessageReceipt {
        id: message_id,
        episode: episode_id,
        seq: position.seq,
        created_at_ms: position.created_at_ms,
    };
    Ok((status, Json(receipt)).into_response())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    id: Uuid,
    seq: i64,
    kind: String,
    sender: SenderView,
    recipients: Vec<String>,
    content_type: String,
    envelope: String,
    /// SHA-256 of attachments, fetched from `…/attachments/{sha256}`.
    attachments: Vec<String>,
    created_at_ms: i64,
    /// `all`, or `care-team` for what the patient never sees (risk alerts).
    audience: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SenderView {
    kind: String,
    /// HPR number of a therapist, client id of a system; absent for the patient.
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    device: String,
}

pub(crate) fn message_view(m: StoredMessage) -> MessageView {
    MessageView {
        id: m.id,
        seq: m.seq,
        recipients: serde_json::from_str(&m.recipients).unwrap_or_default(),
        sender: SenderView {
            reference: (m.sender_kind != "patient").then_some(m.sender_ref),
            kind: m.sender_kind,
            device: m.sender_device,
        },
        kind: m.kind,
        content_type: m.content_type,
        envelope: URL_SAFE_NO_PAD.encode(&m.body),
        attachments: serde_json::from_str(&m.attachments).unwrap_or_default(),
        created_at_ms: m.created_at_ms,
        audience: m.audience,
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
#[utoipa::path(get, path = "/v1/episodes/{id}/messages", tag = "messages", params(("id" = Uuid, Path), PageQuery), responses((status = 401, description = "not authenticated", body = crate::problem::ProblemDocument), (status = 403, description = "not allowed", body = crate::problem::ProblemDocument), (status = 200, body = MessagePage)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn list_messages(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    Path(episode_id): Path<Uuid>,
    Query(query): Query<PageQuery>,
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutReceipt {
    #[serde(default)]
    delivered_up_to: Option<i64>,
    #[serde(default)]
    read_up_to: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReaderMarks {
    kind: String,
    /// HPR number of a therapist; absent for the patient.
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    delivered_up_to: i64,
    read_up_to: i64,
    updated_at_ms: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReceiptsView {
    /// Every reader's marks: a message with `seq` at or below a mark is delivered to /
    /// read by that reader.
    readers: Vec<ReaderMarks>,
    /// Messages from others the caller has not read (absent for non-participants).
    #[serde(skip_serializing_if = "Option::is_none")]
    unread: Option<i64>,
}

/// The caller as a reader: patients and therapists read; systems do not.
fn reader(principal: &Principal) -> Option<(&'static str, String)> {
    match principal {
        Principal::Patient(_) | Principal::Clinician(_) => {
            Some((principal.kind(), sender_ref(principal)))
        }
        Principal::System(_) => None,
    }
}

async fn receipts_view(
    state: &AppState,
    caller: &Authenticated,
    episode: EpisodeId,
) -> Result<ReceiptsView, Problem> {
    let marks = state.store.receipts(episode).await?;
    let unread = match reader(&caller.principal) {
        Some((kind, reference)) => {
            let read = marks
                .iter()
                .find(|m| m.reader_kind == kind && m.reader_ref == reference)
                .map_or(0, |m| m.read_up_to);
            Some(
                state
                    .store
                    .unread_count(episode, kind, &reference, read)
                    .await?,
            )
        }
        None => None,
    };
    let readers = marks
        .into_iter()
        .map(|m| ReaderMarks {
            reference: (m.reader_kind != "patient").then_some(m.reader_ref),
            kind: m.reader_kind,
            delivered_up_to: m.delivered_up_to,
            read_up_to: m.read_up_to,
            updated_at_ms: m.updated_at_ms,
        })
        .collect();
    Ok(ReceiptsView { readers, unread })
}

/// `PUT /v1/episodes/{id}/receipts`: the caller has received / read up to these
/// sequence numbers. Marks only move forward; reading implies delivery.
#[utoipa::path(put, path = "/v1/episodes/{id}/receipts", tag = "messages", params(("id" = Uuid, Path)), request_body = PutReceipt, responses((status = 401, description = "not authenticated", body = crate::problem::ProblemDocument), (status = 403, description = "not allowed", body = crate::problem::ProblemDocument), (status = 200, body = ReceiptsView)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn put_receipts(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
    ApiJson(body): ApiJson<PutReceipt>,
) -> Result<Json<ReceiptsView>, Problem> {
    let (episode, _, _, record) = reach(
        &state,
        &access,
        &caller,
        EpisodeId(id),
        (Action::Update, "receipts"),
    )
    .await?;
    let Some((kind, reference)) = reader(&caller.principal) else {
        tracing::info!(reason = "not_a_reader", "authorisation refused");
        return Err(Problem::new(ProblemKind::Forbidden));
    };
    let last = state.store.last_seq(episode.id).await?;
    let check = |value: Option<i64>, path: &str| match value {
        Some(v) if !(0..=last).contains(&v) => Err(invalid(
            path,
            format!("0 to {last}, the episode's last sequence number"),
        )),
        v => Ok(v.unwrap_or(0)),
    };
    let delivered = check(body.delivered_up_to, "delivered_up_to")?;
    let read = check(body.read_up_to, "read_up_to")?;
    state
        .store
        .mark(episode.id, kind, &reference, delivered, read, &record)
        .await?;
    Ok(Json(receipts_view(&state, &caller, episode.id).await?))
}

/// `GET /v1/episodes/{id}/receipts`: who has received and read what, and the caller's
/// unread count.
#[utoipa::path(get, path = "/v1/episodes/{id}/receipts", tag = "messages", params(("id" = Uuid, Path)), responses((status = 401, description = "not authenticated", body = crate::problem::ProblemDocument), (status = 403, description = "not allowed", body = crate::problem::ProblemDocument), (status = 200, body = ReceiptsView)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn get_receipts(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<ReceiptsView>, Problem> {
    let (episode, _, _, record) = reach(
        &state,
        &access,
        &caller,
        EpisodeId(id),
        (Action::Read, "receipts"),
    )
    .await?;
    state.store.record_access(&[record]).await?;
    Ok(Json(receipts_view(&state, &caller, episode.id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use icbt_auth::principal::{Acr, Clinician, Patient, SystemClient};

    #[test]
    fn who_may_send_which_kind() {
        let pid = NationalId::with_check_digits("010185123")
            .or_else(|| NationalId::with_check_digits("010185124"))
            .unwrap();
        let patient = Principal::Patient(Patient {
            pid: pid.clone(),
            acr: Acr::High,
        });
        let clinician = Principal::Clinician(Clinician {
            pid,
            hpr_number: HprNumber::parse("1").unwrap(),
            security_level: 4,
            organisation: None,
        });
        let system = Principal::System(SystemClient {
            client_id: "p".into(),
            orgnr_parent: None,
            orgnr_child: None,
        });
        let table = [
            (MessageKind::Message, [true, true, false]),
            (MessageKind::Feedback, [false, true, false]),
            (MessageKind::QuestionnaireResponse, [true, false, false]),
            (MessageKind::Notice, [false, false, true]),
        ];
        for (kind, expected) in table {
            let got = [
                kind.allowed_for(&patient),
                kind.allowed_for(&clinician),
                kind.allowed_for(&system),
            ];
            assert_eq!(got, expected, "{kind:?}");
        }
    }

    #[test]
    fn request_hash_separates_fields() {
        assert_ne!(request_hash(&[b"ab", b"c"]), request_hash(&[b"a", b"bc"]));
        assert_eq!(request_hash(&[b"ab", b"c"]), request_hash(&[b"ab", b"c"]));
    }
}
