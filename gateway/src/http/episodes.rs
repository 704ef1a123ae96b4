//! Treatment episodes, created and run by the iCBT platform: the episode, its care team
//! and its life cycle.

use crate::http::extractors::ApiPath;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use icbt_auth::identity::HprNumber;
use icbt_auth::principal::Principal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::access::{manage, reach, visible};
use super::errors::{Problem, ProblemKind, invalid};
use super::extractors::{ApiJson, ApiQuery, Caller, PageQuery, page_limit};
use super::state::AppState;
use crate::audit::{Access, Action};
use crate::domain::episode::{Clinic, Episode, EpisodeId, EpisodeState, NationalId, OrgNumber};
use crate::storage::{CareTeamEntry, EpisodeFilter};

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
#[utoipa::path(put, path = "/v1/episodes/{id}", tag = "episodes", params(("id" = Uuid, Path, description = "the platform's id for the episode")), request_body = PutEpisode, responses((status = 201, body = EpisodeView, description = "created"), (status = 200, body = EpisodeView, description = "already existed"), (status = 409, body = crate::http::errors::ProblemDocument, description = "id taken by another episode")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn put_episode(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<Uuid>,
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
    if !state.auth.rules.tenancy.admits(&org)
        && state
            .store
            .episode_with_team(EpisodeId(id))
            .await?
            .is_none()
    {
        // Its records would have no EPJ to go to. An episode started before the clinic
        // left the register stays reachable; `export status` reports it.
        return Err(Problem::new(ProblemKind::ClinicNotRegistered).with("clinic", org.as_str()));
    }
    manage(&state, &caller, &org, record.clone()).await?;
    // A registered clinic is in the table from the start, under the register's name.
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
#[utoipa::path(get, path = "/v1/episodes/{id}", tag = "episodes", params(("id" = Uuid, Path)), responses((status = 200, body = EpisodeView)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn get_episode(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<Uuid>,
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EpisodeList {
    episodes: Vec<EpisodeView>,
}

/// `GET /v1/episodes`: the episodes the caller may see.
#[utoipa::path(get, path = "/v1/episodes", tag = "episodes", params(PageQuery), responses((status = 200, body = EpisodeList)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn list_episodes(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<EpisodeList>, Problem> {
    let limit = page_limit(query.limit)?;
    let mut episodes = Vec::new();
    let clinics = match &caller.principal {
        Principal::System(s) => state.auth.rules.tenancy.platform_clinics(s),
        _ => Vec::new(),
    };
    let filters: Vec<EpisodeFilter<'_>> = match &caller.principal {
        Principal::Patient(p) => vec![EpisodeFilter::Patient(&p.pid)],
        Principal::Clinician(c) => vec![EpisodeFilter::CareTeam(&c.hpr_number)],
        Principal::System(_) => clinics.iter().map(EpisodeFilter::Clinic).collect(),
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
#[utoipa::path(put, path = "/v1/episodes/{id}/care-team", tag = "episodes", params(("id" = Uuid, Path)), request_body = PutCareTeam, responses((status = 200, body = EpisodeView)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn put_care_team(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<Uuid>,
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
    let changes = state.store.set_care_team(id, &team, &record).await?;
    state.push.changed(changes);
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
#[utoipa::path(put, path = "/v1/episodes/{id}/state", tag = "episodes", params(("id" = Uuid, Path)), request_body = PutState, responses((status = 200, body = EpisodeView), (status = 409, body = crate::http::errors::ProblemDocument, description = "invalid transition")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn put_state(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<Uuid>,
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
