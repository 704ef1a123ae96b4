//! The access log's HTTP API: the security team's search, export, checkpoints and proofs
//! (auditor role only), and the patient's own "who looked at my data". Every call is
//! itself recorded, before the answer is sent.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use icbt_auth::now_secs;
use icbt_auth::policy::{self, Resource};
use icbt_auth::principal::{Authenticated, Principal};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit::{Access, Action, Outcome, Record, Stored, fhir};
use crate::http::errors::invalid;
use crate::http::errors::{Problem, ProblemKind};
use crate::http::extractors::Caller;
use crate::http::extractors::MAX_PAGE;
use crate::http::state::AppState;
use crate::storage::AuditFilter;
use crate::views::CheckpointView;

/// Refuses (and records the refusal) unless `caller` holds the auditor role.
async fn auditor(state: &AppState, access: &Access, caller: &Authenticated) -> Result<(), Problem> {
    if let Err(denial) = policy::decide(
        caller,
        &state.auth.auditors,
        &Resource::AuditLog,
        now_secs(),
    ) {
        tracing::info!(reason = denial.reason_code(), "authorisation refused");
        let record = access
            .record(caller, Action::AuditRead, "access-log")
            .refused(denial.reason_code());
        state.store.record_access(&[record]).await?;
        return Err(Problem::new(ProblemKind::Forbidden));
    }
    Ok(())
}

/// Records the read, then brings the tree up to date so the answer includes it.
async fn record_read(state: &AppState, record: Record) -> Result<(), Problem> {
    state.store.record_access(&[record]).await?;
    state.audit.sequence_all(&state.store).await?;
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RecordsQuery {
    /// National id number of the patient whose data was accessed.
    patient: Option<String>,
    /// HPR number, client id or national id number of whoever acted.
    principal: Option<String>,
    episode: Option<String>,
    /// `read`, `search`, `create`, `update`, `export`, `login`, `logout`, `key-publish`,
    /// `key-revoke`, `audit-read`.
    action: Option<String>,
    /// `success` or `refused`.
    outcome: Option<String>,
    /// Unix milliseconds, inclusive.
    from_ms: Option<i64>,
    /// Unix milliseconds, exclusive.
    to_ms: Option<i64>,
    /// Leaf index to continue after (`next_after` of the previous page).
    after: Option<u64>,
    limit: Option<i64>,
    /// `json` (default), `ndjson` (one record a line) or `fhir` (a Bundle of `AuditEvent`).
    format: Option<String>,
}

/// A record with its place in the tree.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordView {
    index: u64,
    leaf_hash: String,
    #[serde(flatten)]
    record: Record,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordPage {
    records: Vec<RecordView>,
    /// Pass as `after` for the next page; absent when this page is the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<u64>,
}

fn view(s: Stored) -> RecordView {
    RecordView {
        index: s.leaf_index.unwrap_or_default(),
        leaf_hash: s.leaf_hash.unwrap_or_default(),
        record: s.record,
    }
}

fn page_limit(limit: Option<i64>) -> Result<i64, Problem> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=MAX_PAGE * 5).contains(&n) => Ok(n),
        Some(_) => Err(invalid("limit", format!("1 to {}", MAX_PAGE * 5))),
    }
}

/// `GET /v1/audit/records`: the security team's search over the log, oldest first.
#[utoipa::path(get, path = "/v1/audit/records", tag = "audit", params(RecordsQuery), responses((status = 403, description = "not an auditor", body = crate::http::errors::ProblemDocument), (status = 200, body = RecordPage, description = "JSON page; `application/x-ndjson` or `application/fhir+json` by `format`")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn records(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    Query(query): Query<RecordsQuery>,
) -> Result<Response, Problem> {
    auditor(&state, &access, &caller).await?;
    let filter = AuditFilter {
        patient: query.patient.clone(),
        principal: query.principal.clone(),
        episode: query
            .episode
            .as_deref()
            .map(|e| Uuid::parse_str(e).map_err(|_| invalid("episode", "a UUID")))
            .transpose()?,
        action: query
            .action
            .as_deref()
            .map(|a| Action::parse(a).ok_or_else(|| invalid("action", "an action name")))
            .transpose()?,
        outcome: query
            .outcome
            .as_deref()
            .map(|o| Outcome::parse(o).ok_or_else(|| invalid("outcome", "success or refused")))
            .transpose()?,
        from_ms: query.from_ms,
        to_ms: query.to_ms,
    };
    let limit = page_limit(query.limit)?;
    let format = query.format.as_deref().unwrap_or("json");
    if !["json", "ndjson", "fhir"].contains(&format) {
        return Err(invalid("format", "json, ndjson or fhir"));
    }
    let action = if format == "json" {
        Action::AuditRead
    } else {
        Action::Export
    };
    let mut record = access.record(&caller, action, "access-log");
    record.patient.clone_from(&filter.patient);
    record.episode_id = filter.episode;
    record_read(&state, record).await?;

    let found = state.store.audit_page(&filter, query.after, limit).await?;
    let next_after = (i64::try_from(found.len()).ok() == Some(limit))
        .then(|| found.last().and_then(|s| s.leaf_index))
        .flatten();
    let views: Vec<RecordView> = found.into_iter().map(view).collect();
    Ok(match format {
        "ndjson" => {
            let mut body = String::new();
            for v in &views {
                body.push_str(
                    &serde_json::to_string(v).map_err(|_| Problem::new(ProblemKind::Internal))?,
                );
                body.push('\n');
            }
            let mut response =
                ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
            if let Some(n) = next_after {
                insert_next(&mut response, n);
            }
            response
        }
        "fhir" => {
            let entries: Vec<serde_json::Value> = views
                .iter()
                .map(|v| serde_json::json!({"resource": fhir::audit_event(&v.record)}))
                .collect();
            let bundle = serde_json::json!({
                "resourceType": "Bundle",
                "type": "collection",
                "timestamp": fhir::instant(crate::storage::now_ms()),
                "entry": entries,
            });
            let mut response = (
                [(header::CONTENT_TYPE, "application/fhir+json")],
                bundle.to_string(),
            )
                .into_response();
            if let Some(n) = next_after {
                insert_next(&mut response, n);
            }
            response
        }
        _ => Json(RecordPage {
            records: views,
            next_after,
        })
        .into_response(),
    })
}

/// The next page's cursor for formats that have no room for it in the body.
fn insert_next(response: &mut Response, after: u64) {
    if let Ok(value) = axum::http::HeaderValue::from_str(&after.to_string()) {
        response.headers_mut().insert("x-next-after", value);
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CheckpointQuery {
    /// A tree size that had a checkpoint; default the newest.
    size: Option<u64>,
}

/// `GET /v1/audit/checkpoint`: the newest signed checkpoint, or the one at `size`.
#[utoipa::path(get, path = "/v1/audit/checkpoint", tag = "audit", params(CheckpointQuery), responses((status = 403, description = "not an auditor", body = crate::http::errors::ProblemDocument), (status = 404, description = "no such checkpoint", body = crate::http::errors::ProblemDocument), (status = 200, body = CheckpointView)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn checkpoint(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    Query(query): Query<CheckpointQuery>,
) -> Result<Json<CheckpointView>, Problem> {
    auditor(&state, &access, &caller).await?;
    record_read(
        &state,
        access.record(&caller, Action::AuditRead, "access-log-checkpoint"),
    )
    .await?;
    let signed = state
        .store
        .audit_checkpoint(query.size)
        .await?
        .ok_or_else(|| Problem::new(ProblemKind::NotFound))?;
    Ok(Json(CheckpointView::new(
        &signed,
        state.audit.signer.public_key(),
    )))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct InclusionQuery {
    /// Leaf index of the record.
    index: u64,
    /// Tree size of a checkpoint.
    size: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InclusionView {
    index: u64,
    size: u64,
    /// Base64 leaf hash.
    leaf_hash: String,
    /// Base64 hashes of the RFC 9162 audit path.
    proof: Vec<String>,
}

/// `GET /v1/audit/proof/inclusion?index&size`: that record `index` is in the tree of `size`.
#[utoipa::path(get, path = "/v1/audit/proof/inclusion", tag = "audit", params(InclusionQuery), responses((status = 403, description = "not an auditor", body = crate::http::errors::ProblemDocument), (status = 200, body = InclusionView)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn inclusion(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    Query(query): Query<InclusionQuery>,
) -> Result<Json<InclusionView>, Problem> {
    auditor(&state, &access, &caller).await?;
    record_read(
        &state,
        access.record(&caller, Action::AuditRead, "access-log-proof"),
    )
    .await?;
    let leaves = sized_leaves(&state, query.size).await?;
    let proof = icbt_merkle::inclusion_proof(&leaves, query.index)
        .map_err(|e| invalid("index", e.to_string()))?;
    let leaf = leaves
        .get(usize::try_from(query.index).unwrap_or(usize::MAX))
        .ok_or_else(|| invalid("index", "beyond the tree"))?;
    Ok(Json(InclusionView {
        index: query.index,
        size: query.size,
        leaf_hash: STANDARD.encode(leaf),
        proof: proof.iter().map(|h| STANDARD.encode(h)).collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ConsistencyQuery {
    /// The smaller tree size.
    from: u64,
    /// The larger tree size.
    to: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsistencyView {
    from: u64,
    to: u64,
    /// Base64 hashes of the RFC 9162 consistency proof.
    proof: Vec<String>,
}

/// `GET /v1/audit/proof/consistency?from&to`: that the tree of `to` extends the tree of
/// `from`, so nothing before was changed.
#[utoipa::path(get, path = "/v1/audit/proof/consistency", tag = "audit", params(ConsistencyQuery), responses((status = 403, description = "not an auditor", body = crate::http::errors::ProblemDocument), (status = 200, body = ConsistencyView)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn consistency(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    Query(query): Query<ConsistencyQuery>,
) -> Result<Json<ConsistencyView>, Problem> {
    auditor(&state, &access, &caller).await?;
    record_read(
        &state,
        access.record(&caller, Action::AuditRead, "access-log-proof"),
    )
    .await?;
    let leaves = sized_leaves(&state, query.to).await?;
    let proof = icbt_merkle::consistency_proof(&leaves, query.from)
        .map_err(|e| invalid("from", e.to_string()))?;
    Ok(Json(ConsistencyView {
        from: query.from,
        to: query.to,
        proof: proof.iter().map(|h| STANDARD.encode(h)).collect(),
    }))
}

/// The leaf hashes of a tree size that has a checkpoint (proofs are only useful against
/// a signed root).
async fn sized_leaves(state: &AppState, size: u64) -> Result<Vec<icbt_merkle::Hash>, Problem> {
    if state.store.audit_checkpoint(Some(size)).await?.is_none() {
        return Err(invalid("size", "not the size of a checkpoint"));
    }
    let leaves = state.store.audit_leaf_hashes(size).await?;
    if leaves.len() as u64 != size {
        return Err(Problem::new(ProblemKind::Internal));
    }
    Ok(leaves)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AccessLogQuery {
    /// Leaf index to continue after.
    after: Option<u64>,
    limit: Option<i64>,
}

/// One access to the patient's data, in plain words.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccessEntry {
    at: String,
    at_ms: i64,
    who: String,
    what: String,
    refused: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccessLog {
    entries: Vec<AccessEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<u64>,
}

/// `GET /v1/me/access-log`: who accessed the calling patient's data, when, and what they
/// did, newest records last.
#[utoipa::path(get, path = "/v1/me/access-log", tag = "audit", params(AccessLogQuery), responses((status = 403, description = "not a patient", body = crate::http::errors::ProblemDocument), (status = 200, body = AccessLog)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn access_log(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    Query(query): Query<AccessLogQuery>,
) -> Result<Json<AccessLog>, Problem> {
    let Principal::Patient(patient) = &caller.principal else {
        tracing::info!(reason = "not_a_patient", "authorisation refused");
        return Err(Problem::new(ProblemKind::Forbidden));
    };
    let pid = patient.pid.expose().to_owned();
    let limit = page_limit(query.limit)?;
    let mut record = access.record(&caller, Action::AuditRead, "access-log");
    record.patient = Some(pid.clone());
    record_read(&state, record).await?;
    let filter = AuditFilter {
        patient: Some(pid.clone()),
        ..AuditFilter::default()
    };
    let found = state.store.audit_page(&filter, query.after, limit).await?;
    let next_after = (i64::try_from(found.len()).ok() == Some(limit))
        .then(|| found.last().and_then(|s| s.leaf_index))
        .flatten();
    let mut clinics: HashMap<String, Option<String>> = HashMap::new();
    let mut entries = Vec::with_capacity(found.len());
    for stored in found {
        let r = &stored.record;
        let organisation = match &r.principal_organisation {
            Some(org) => {
                if !clinics.contains_key(org) {
                    let name = state.store.clinic_name(org).await?;
                    clinics.insert(org.clone(), name);
                }
                clinics
                    .get(org)
                    .cloned()
                    .flatten()
                    .or_else(|| Some(format!("organisation {org}")))
            }
            None => None,
        };
        entries.push(AccessEntry {
            at: fhir::instant(r.recorded_at_ms),
            at_ms: r.recorded_at_ms,
            who: who(r, &pid, organisation.as_deref()),
            what: what(r),
            refused: r.outcome == Outcome::Refused,
        });
    }
    Ok(Json(AccessLog {
        entries,
        next_after,
    }))
}

/// Who acted, for the patient: a role and organisation, never an internal id.
fn who(r: &Record, pid: &str, organisation: Option<&str>) -> String {
    let at = organisation.map(|o| format!(" at {o}")).unwrap_or_default();
    match r.principal_kind.as_str() {
        "patient" if r.principal_id.as_deref() == Some(pid) => "You".to_owned(),
        "patient" => "Another patient".to_owned(),
        "clinician" => match &r.principal_id {
            Some(hpr) => format!("Health professional (HPR {hpr}){at}"),
            None => format!("Health professional{at}"),
        },
        "system" => format!("Treatment platform{at}"),
        _ => "Unknown".to_owned(),
    }
}

/// What was done, in plain words.
fn what(r: &Record) -> String {
    let done = match (r.action, r.resource_type.as_str()) {
        (Action::Read, "messages") => "read your messages",
        (Action::Read, "receipts") => "looked at which of your messages were read",
        (Action::Read, "attachment") => "opened an attachment in your treatment",
        (Action::Read | Action::Search, "episode" | "episodes") => "looked at your treatment",
        (Action::Read, _) => "looked at your data",
        (Action::Search, _) => "searched your data",
        (Action::Create, "episode") => "registered your treatment",
        (Action::Create, "messages") => "sent a message in your treatment",
        (Action::Create, "attachment") => "added an attachment to your treatment",
        (Action::Create, _) => "added to your data",
        (Action::Update, "care-team") => "changed who treats you",
        (Action::Update, "episode") => "changed the status of your treatment",
        (Action::Update, "receipts") => "marked messages as received or read",
        (Action::Update, _) => "changed your data",
        (Action::Export, _) => "copied your data to your health record",
        (Action::Login, _) => "logged in",
        (Action::Logout, _) => "logged out",
        (Action::KeyPublish, _) => "added a device key",
        (Action::KeyRevoke, _) => "removed a device key",
        (Action::AuditRead, _) => "looked at who accessed your data",
    };
    if r.outcome == Outcome::Refused {
        format!("tried to, but was not allowed to: {done}")
    } else {
        done.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::tests::sample;

    #[test]
    fn plain_words_name_roles_not_internal_ids() {
        let r = sample(1);
        let who = who(&r, "01018512345", Some("Nettterapi Vest"));
        assert_eq!(
            who,
            "Health professional (HPR 565501872) at Nettterapi Vest"
        );
        assert_eq!(what(&r), "read your messages");
        let mut system = sample(2);
        system.principal_kind = "system".into();
        system.principal_id = Some("internal-client-7".into());
        assert_eq!(super::who(&system, "x", None), "Treatment platform");
        let mut me = sample(3);
        me.principal_kind = "patient".into();
        me.principal_id = Some("01018512345".into());
        assert_eq!(super::who(&me, "01018512345", None), "You");
        let refused = sample(4).refused("not_on_care_team");
        assert!(what(&refused).contains("not allowed"));
    }
}
