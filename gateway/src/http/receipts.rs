//! Receipts: per-reader watermarks of what was delivered and read in an episode.

use crate::http::extractors::ApiPath;
use axum::Json;
use axum::extract::State;
use icbt_auth::principal::{Authenticated, Principal};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::access::reach;
use super::errors::{Problem, ProblemKind, invalid};
use super::extractors::{ApiJson, Caller};
use super::state::AppState;
use crate::audit::{Access, Action};
use crate::domain::episode::EpisodeId;
use crate::domain::participants::sender_ref;

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
#[utoipa::path(put, path = "/v1/episodes/{id}/receipts", tag = "messages", params(("id" = Uuid, Path)), request_body = PutReceipt, responses((status = 200, body = ReceiptsView)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn put_receipts(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<Uuid>,
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
#[utoipa::path(get, path = "/v1/episodes/{id}/receipts", tag = "messages", params(("id" = Uuid, Path)), responses((status = 200, body = ReceiptsView)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn get_receipts(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<Uuid>,
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
