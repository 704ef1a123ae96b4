//! The access log's HTTP API for the security team (auditor role only): search, export,
//! checkpoints and proofs. The patient's own view is in [`super::access_log`], the review
//! reports in [`super::review`]. Every call is itself recorded, before the answer is sent.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use icbt_auth::now_secs;
use icbt_auth::policy::{self, AuditScope, Resource};
use icbt_auth::principal::Authenticated;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit::{Access, Action, Outcome, Record, Stored, fhir};
use crate::http::errors::invalid;
use crate::http::errors::{Problem, ProblemKind};
use crate::http::extractors::MAX_PAGE;
use crate::http::extractors::{ApiQuery, Caller};
use crate::http::state::AppState;
use crate::storage::AuditFilter;
use crate::views::CheckpointView;

/// Refuses (and records the refusal) unless `caller` holds the auditor role; else the
/// records the auditor may see (their own hospital's, with a clinic register).
pub(crate) async fn auditor(
    state: &AppState,
    access: &Access,
    caller: &Authenticated,
) -> Result<AuditScope, Problem> {
    if let Err(denial) = policy::decide(caller, &state.auth.rules, &Resource::AuditLog, now_secs())
    {
        tracing::info!(reason = denial.reason_code(), "authorisation refused");
        let record = access
            .record(caller, Action::AuditRead, "access-log")
            .refused(denial.reason_code());
        state.store.record_access(&[record]).await?;
        return Err(Problem::new(ProblemKind::Forbidden));
    }
    let rules = &state.auth.rules;
    Ok(rules
        .auditors
        .scope(caller, &rules.tenancy)
        .unwrap_or_else(|| AuditScope::Organisations(Vec::new())))
}

/// The organisation numbers of a hospital auditor's scope, `None` for everything.
pub(crate) fn scope_organisations(scope: &AuditScope) -> Option<Vec<String>> {
    match scope {
        AuditScope::Everything => None,
        AuditScope::Organisations(orgs) => {
            Some(orgs.iter().map(|o| o.as_str().to_owned()).collect())
        }
    }
}

/// Marks the record of a search that names an episode outside the auditor's scope: the
/// search returns nothing, and the log shows someone looked past their hospital.
async fn mark_outside_scope(
    state: &AppState,
    scope: &AuditScope,
    record: Record,
) -> Result<Record, Problem> {
    let Some(episode) = record.episode_id else {
        return Ok(record);
    };
    let AuditScope::Organisations(orgs) = scope else {
        return Ok(record);
    };
    let inside = match state
        .store
        .episode_with_team(crate::domain::episode::EpisodeId(episode))
        .await?
    {
        Some((_, clinic, _)) => orgs.contains(&clinic.org_number),
        None => true,
    };
    Ok(if inside {
        record
    } else {
        record.refused("outside_scope")
    })
}

/// Records the read, then brings the tree up to date so the answer includes it.
/// While the tree cannot grow (its head disagrees with the checkpoints, which the
/// sequencer has raised the alarm about), the read is still answered from what the tree
/// holds: the record is kept and joins it once the head is repaired.
pub(crate) async fn record_read(state: &AppState, record: Record) -> Result<(), Problem> {
    state.store.record_access(&[record]).await?;
    match state.audit.sequence_all(&state.store).await {
        Ok(_) | Err(crate::storage::StorageError::HeadMismatch { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
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
    /// With `json`: the size of a checkpoint; each record in its tree comes with its
    /// inclusion proof, so a page is proven in one call.
    proof_size: Option<u64>,
}

/// A record with its place in the tree.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordView {
    index: u64,
    leaf_hash: String,
    /// How the leaf is built from the record: 2 (a header and the hash of the rest), or
    /// 1 (the whole record) for records logged before format 2.
    leaf_format: u8,
    /// Base64 RFC 9162 audit path of the record in the tree of `proof_size`, when the
    /// search asked for proofs and the record is in that tree.
    #[serde(skip_serializing_if = "Option::is_none")]
    proof: Option<Vec<String>>,
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

pub(crate) fn view(s: Stored) -> RecordView {
    RecordView {
        index: s.leaf_index.unwrap_or_default(),
        leaf_hash: s.leaf_hash.unwrap_or_default(),
        leaf_format: if s.content_hash.is_some() { 2 } else { 1 },
        proof: None,
        record: s.record,
    }
}

pub(crate) fn page_limit(limit: Option<i64>) -> Result<i64, Problem> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=MAX_PAGE * 5).contains(&n) => Ok(n),
        Some(_) => Err(invalid("limit", format!("1 to {}", MAX_PAGE * 5))),
    }
}

/// The search's filter, each field checked: a malformed one is a problem naming it.
fn filter_of(query: &RecordsQuery) -> Result<AuditFilter, Problem> {
    if let Some(p) = &query.patient {
        icbt_auth::identity::NationalId::parse(p).map_err(|e| invalid("patient", e.to_string()))?;
    }
    if let Some(p) = &query.principal
        && (p.is_empty() || p.len() > 200 || p.chars().any(char::is_control))
    {
        return Err(invalid(
            "principal",
            "an HPR number, client id or national id number",
        ));
    }
    if let (Some(from), Some(to)) = (query.from_ms, query.to_ms)
        && to <= from
    {
        return Err(invalid("to_ms", "must be after from_ms"));
    }
    if query.after.is_some_and(|a| i64::try_from(a).is_err()) {
        return Err(invalid("after", "a position in the log"));
    }
    Ok(AuditFilter {
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
        organisations: None,
    })
}

/// `GET /v1/audit/records`: the security team's search over the log, oldest first.
#[utoipa::path(get, path = "/v1/audit/records", tag = "audit", params(RecordsQuery), responses((status = 403, description = "not an auditor", body = crate::http::errors::ProblemDocument), (status = 200, body = RecordPage, description = "JSON page; `application/x-ndjson` or `application/fhir+json` by `format`")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn records(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiQuery(query): ApiQuery<RecordsQuery>,
) -> Result<Response, Problem> {
    let scope = auditor(&state, &access, &caller).await?;
    let mut filter = filter_of(&query)?;
    filter.organisations = scope_organisations(&scope);
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
    record_read(&state, mark_outside_scope(&state, &scope, record).await?).await?;

    let found = state.store.audit_page(&filter, query.after, limit).await?;
    let next_after = (i64::try_from(found.len()).ok() == Some(limit))
        .then(|| found.last().and_then(|s| s.leaf_index))
        .flatten();
    let mut views: Vec<RecordView> = found.into_iter().map(view).collect();
    if let Some(size) = query.proof_size {
        prove(&state, size, &mut views).await?;
    }
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
    ApiQuery(query): ApiQuery<CheckpointQuery>,
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
    ApiQuery(query): ApiQuery<InclusionQuery>,
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
    ApiQuery(query): ApiQuery<ConsistencyQuery>,
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

/// Adds to each of `views` in the tree of `size` (a checkpoint's) its inclusion proof.
pub(crate) async fn prove(
    state: &AppState,
    size: u64,
    views: &mut [RecordView],
) -> Result<(), Problem> {
    if views.iter().all(|v| v.index >= size) {
        return Ok(());
    }
    let leaves = sized_leaves(state, size).await?;
    for v in views.iter_mut().filter(|v| v.index < size) {
        let proof = icbt_merkle::inclusion_proof(&leaves, v.index)
            .map_err(|e| invalid("proof_size", e.to_string()))?;
        v.proof = Some(proof.iter().map(|h| STANDARD.encode(h)).collect());
    }
    Ok(())
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
