//! The access log as a patient sees it: `/v1/me/access-log` for the patient, and the
//! same words with each record in full for an auditor answering a patient's request
//! (`/v1/audit/patients/{patient}/access-log`). Every call is recorded before the answer.

use std::collections::HashMap;

use crate::http::extractors::ApiPath;
use axum::Json;
use axum::extract::State;
use icbt_auth::identity::NationalId;
use icbt_auth::principal::Principal;
use serde::{Deserialize, Serialize};

use crate::audit::{Access, Action, Outcome, Record, Stored, fhir};
use crate::http::audit::{RecordView, auditor, page_limit, prove, record_read, view};
use crate::http::errors::{Problem, ProblemKind, invalid};
use crate::http::extractors::{ApiQuery, Caller};
use crate::http::state::AppState;
use crate::storage::AuditFilter;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AccessLogQuery {
    /// Leaf index to continue after.
    after: Option<u64>,
    limit: Option<i64>,
    /// Auditors only: the size of a checkpoint; each record in its tree comes with its
    /// inclusion proof.
    proof_size: Option<u64>,
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
    ApiQuery(query): ApiQuery<AccessLogQuery>,
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
    let (found, next_after) = page_of(&state, (&pid, None), query.after, limit).await?;
    let entries = entries(&state, &pid, &found).await?;
    Ok(Json(AccessLog {
        entries,
        next_after,
    }))
}

/// One entry of a patient's timeline for an auditor: the patient's words and the record.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    /// What the patient sees.
    #[serde(flatten)]
    patient_view: AccessEntry,
    /// The record in full, with its place in the tree (to prove it).
    record: RecordView,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Timeline {
    entries: Vec<TimelineEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<u64>,
}

/// `GET /v1/audit/patients/{patient}/access-log` (auditors): a patient's access log as
/// the patient sees it, each entry with its record in full: the answer to a patient's
/// request for who has seen their data.
#[utoipa::path(get, path = "/v1/audit/patients/{patient}/access-log", tag = "audit", params(("patient" = String, Path, description = "national id number"), AccessLogQuery), responses((status = 403, description = "not an auditor", body = crate::http::errors::ProblemDocument), (status = 200, body = Timeline)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn patient_timeline(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath(patient): ApiPath<String>,
    ApiQuery(query): ApiQuery<AccessLogQuery>,
) -> Result<Json<Timeline>, Problem> {
    let scope = auditor(&state, &access, &caller).await?;
    NationalId::parse(&patient).map_err(|e| invalid("patient", e.to_string()))?;
    let limit = page_limit(query.limit)?;
    let mut record = access.record(&caller, Action::AuditRead, "access-log");
    record.patient = Some(patient.clone());
    record_read(&state, record).await?;
    let organisations = super::audit::scope_organisations(&scope);
    let (found, next_after) =
        page_of(&state, (&patient, organisations), query.after, limit).await?;
    let words = entries(&state, &patient, &found).await?;
    let mut records: Vec<RecordView> = found.into_iter().map(view).collect();
    if let Some(size) = query.proof_size {
        prove(&state, size, &mut records).await?;
    }
    let entries = words
        .into_iter()
        .zip(records)
        .map(|(patient_view, record)| TimelineEntry {
            patient_view,
            record,
        })
        .collect();
    Ok(Json(Timeline {
        entries,
        next_after,
    }))
}

/// One page of the records about `pid`, and the next page's cursor.
async fn page_of(
    state: &AppState,
    (pid, organisations): (&str, Option<Vec<String>>),
    after: Option<u64>,
    limit: i64,
) -> Result<(Vec<Stored>, Option<u64>), Problem> {
    let filter = AuditFilter {
        patient: Some(pid.to_owned()),
        organisations,
        ..AuditFilter::default()
    };
    let found = state.store.audit_page(&filter, after, limit).await?;
    let next_after = (i64::try_from(found.len()).ok() == Some(limit))
        .then(|| found.last().and_then(|s| s.leaf_index))
        .flatten();
    Ok((found, next_after))
}

/// The patient's words for each of `found`.
async fn entries(
    state: &AppState,
    pid: &str,
    found: &[Stored],
) -> Result<Vec<AccessEntry>, Problem> {
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
            who: who(r, pid, organisation.as_deref()),
            what: what(r),
            refused: r.outcome == Outcome::Refused,
        });
    }
    Ok(entries)
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
        (Action::Export, "access-log") => "copied the record of who accessed your data",
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
