//! The device key directory's API: people and systems publish their devices' public keys,
//! clinics their journal keys; senders fetch an episode's keys with proofs that each key
//! is in the signed key log; everyone can check the log only grows.

use crate::http::extractors::ApiPath;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use icbt_auth::principal::Authenticated;
use icbt_envelope::{Jwk, PublicKey};
use icbt_merkle::{Hash, consistency_proof, inclusion_proof};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit::{Access, Action};
use crate::domain::episode::{EpisodeId, OrgNumber};
use crate::domain::participants::{journal_of, owner_of, participants};
use crate::http::access::{manage, reach};
use crate::http::errors::invalid;
use crate::http::errors::{Problem, ProblemKind};
use crate::http::extractors::ApiJson;
use crate::http::extractors::{ApiQuery, Caller};
use crate::http::state::AppState;
use crate::storage::{DeviceRecord, Owner, Published, now_ms};
use crate::views::CheckpointView;

const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutDevice {
    /// Public P-256 JWK for ES256 signatures; the device id is its RFC 7638 thumbprint.
    #[schema(value_type = Object)]
    signing_jwk: serde_json::Value,
    /// Public P-256 JWK for ECDH-ES+A256KW.
    #[schema(value_type = Object)]
    encryption_jwk: serde_json::Value,
    /// When the keys stop being used (Unix ms); at most `devices.max_lifetime_days` ahead.
    expires_at_ms: i64,
    /// Proof that the publisher holds the signing key: a compact JWS (ES256, `typ`
    /// `icbt-device-proof+jwt`, `kid` the device id) signed with it, whose claims are
    /// `device_id`, `encryption_kid` (the encryption key's RFC 7638 thumbprint),
    /// `expires_at_ms` (as above) and `iat` (Unix seconds, within 5 minutes of now).
    proof: String,
}

/// How far a possession proof's `iat` may be from now.
const PROOF_WINDOW_SECONDS: i64 = 300;

/// Checks that `body.proof` was made by the holder of `signing` for exactly this
/// device, encryption key and expiry, recently.
fn check_possession(
    body: &PutDevice,
    device_id: &str,
    signing: &PublicKey,
    encryption: &PublicKey,
) -> Result<(), Problem> {
    let refused = |detail: &str| {
        tracing::info!(reason = "device_proof_invalid", "device publish refused");
        Problem::new(ProblemKind::DeviceProofInvalid).detail(detail)
    };
    let claims = icbt_envelope::verify_possession(&body.proof, signing).map_err(|_| {
        refused("proof must be an ES256 JWS signed with signing_jwk, typ icbt-device-proof+jwt")
    })?;
    if claims.device_id != device_id
        || claims.encryption_kid != encryption.thumbprint()
        || claims.expires_at_ms != body.expires_at_ms
    {
        return Err(refused(
            "the proof is for another device, encryption key or expiry than this request",
        ));
    }
    if (claims.iat - icbt_auth::now_secs()).abs() > PROOF_WINDOW_SECONDS {
        return Err(refused("the proof's iat must be within 5 minutes of now"));
    }
    Ok(())
}

/// A leaf of the key log with its inclusion proof in the checkpoint's tree.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LeafView {
    index: u64,
    /// The leaf's exact text (JSON); its RFC 9162 leaf hash is what the tree holds.
    leaf: String,
    /// Base64 sibling hashes from the leaf up (RFC 9162 §2.1.3).
    proof: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    device_id: String,
    /// `patient:<national id>`, `clinician:<HPR number>`, `system:<client id>` or
    /// `journal:<organisation number>`.
    owner: String,
    #[schema(value_type = Object)]
    signing_jwk: serde_json::Value,
    encryption_kid: String,
    #[schema(value_type = Object)]
    encryption_jwk: serde_json::Value,
    published_at_ms: i64,
    expires_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at_ms: Option<i64>,
    active: bool,
    /// The publish leaf, proven against `checkpoint` where one is given.
    publish: LeafView,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoke: Option<LeafView>,
}

/// Devices with proofs against one signed checkpoint of the key log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DirectoryView {
    checkpoint: CheckpointView,
    devices: Vec<DeviceView>,
}

/// Builds views of `devices` with inclusion proofs against the newest checkpoint.
async fn directory(state: &AppState, devices: Vec<DeviceRecord>) -> Result<DirectoryView, Problem> {
    let head = state
        .store
        .key_log_head()
        .await?
        .ok_or_else(|| Problem::new(ProblemKind::NotFound))?;
    let size = head.checkpoint.size;
    let hashes = state.store.key_log_hashes(size).await?;
    let mut indexes = Vec::new();
    for d in &devices {
        indexes.push(d.publish_index);
        indexes.extend(d.revoke_index);
    }
    let mut leaves = state.store.key_log_leaves(&indexes).await?.into_iter();
    let now = now_ms();
    let mut views = Vec::with_capacity(devices.len());
    for d in devices {
        let publish = leaf_view(&hashes, d.publish_index, leaves.next())?;
        let revoke = match d.revoke_index {
            Some(i) => Some(leaf_view(&hashes, i, leaves.next())?),
            None => None,
        };
        views.push(DeviceView {
            active: d.active_at(now),
            owner: d.owner.label(),
            signing_jwk: serde_json::from_str(&d.signing_jwk).unwrap_or_default(),
            encryption_jwk: serde_json::from_str(&d.encryption_jwk).unwrap_or_default(),
            device_id: d.device_id,
            encryption_kid: d.encryption_kid,
            published_at_ms: d.published_at_ms,
            expires_at_ms: d.expires_at_ms,
            revoked_at_ms: d.revoked_at_ms,
            publish,
            revoke,
        });
    }
    Ok(DirectoryView {
        checkpoint: CheckpointView::new(&head, state.audit.signer.public_key()),
        devices: views,
    })
}

fn leaf_view(hashes: &[Hash], index: u64, leaf: Option<String>) -> Result<LeafView, Problem> {
    let proof = inclusion_proof(hashes, index).map_err(|_| Problem::new(ProblemKind::Internal))?;
    Ok(LeafView {
        index,
        leaf: leaf.ok_or_else(|| Problem::new(ProblemKind::Internal))?,
        proof: proof.iter().map(|h| STANDARD.encode(h)).collect(),
    })
}

/// Checks a publish request; returns the device to store.
fn checked_device(
    state: &AppState,
    device_id: &str,
    body: &PutDevice,
    owner: Owner,
) -> Result<DeviceRecord, Problem> {
    let key = |value: &serde_json::Value, field: &str| {
        let jwk = Jwk::from_json(value).map_err(|e| invalid(field, e.to_string()))?;
        PublicKey::from_jwk(&jwk).map_err(|e| invalid(field, e.to_string()))
    };
    let signing = key(&body.signing_jwk, "signing_jwk")?;
    let encryption = key(&body.encryption_jwk, "encryption_jwk")?;
    if signing.thumbprint() != device_id {
        return Err(invalid(
            "device_id",
            "must be the RFC 7638 thumbprint of signing_jwk",
        ));
    }
    if signing == encryption {
        return Err(invalid(
            "encryption_jwk",
            "must be another key than signing_jwk",
        ));
    }
    let now = now_ms();
    let max = i64::from(state.devices.max_lifetime_days).saturating_mul(DAY_MS);
    if body.expires_at_ms <= now || body.expires_at_ms > now.saturating_add(max) {
        return Err(invalid(
            "expires_at_ms",
            format!(
                "must be in the future and at most {} days ahead",
                state.devices.max_lifetime_days
            ),
        ));
    }
    check_possession(body, device_id, &signing, &encryption)?;
    let json = |key: &PublicKey| serde_json::to_string(&key.to_jwk()).unwrap_or_default();
    Ok(DeviceRecord {
        device_id: device_id.to_owned(),
        owner,
        signing_jwk: json(&signing),
        encryption_kid: encryption.thumbprint(),
        encryption_jwk: json(&encryption),
        published_at_ms: now,
        expires_at_ms: body.expires_at_ms,
        revoked_at_ms: None,
        publish_index: 0,
        revoke_index: None,
    })
}

async fn publish(
    state: &AppState,
    access: &Access,
    caller: &Authenticated,
    device: DeviceRecord,
) -> Result<Response, Problem> {
    let record = access
        .record(caller, Action::KeyPublish, "device")
        .resource_id(device.device_id.clone());
    let published = state
        .store
        .publish_device(
            &device,
            state.devices.max_per_owner,
            &state.audit.signer,
            &record,
        )
        .await?;
    let (status, stored) = match published {
        Published::Created(stored, _) => (StatusCode::CREATED, stored),
        Published::Existing(stored) => (StatusCode::OK, stored),
        Published::Conflict => return Err(Problem::new(ProblemKind::DeviceConflict)),
        Published::TooMany => {
            return Err(
                Problem::new(ProblemKind::DeviceLimit).with("limit", state.devices.max_per_owner)
            );
        }
    };
    let view = directory(state, vec![stored]).await?;
    Ok((status, Json(view)).into_response())
}

/// Refuses auditors, who reach the access log and nothing else.
fn not_an_auditor(state: &AppState, caller: &Authenticated) -> Result<(), Problem> {
    if state.auth.rules.auditors.holds(caller) {
        return Err(Problem::new(ProblemKind::Forbidden));
    }
    Ok(())
}

/// `PUT /v1/devices/{device_id}`: publishes one of the caller's devices. The same
/// request again answers the stored device (200); other keys under a taken id, 409.
#[utoipa::path(put, path = "/v1/devices/{device_id}", tag = "devices", params(("device_id" = String, Path, description = "RFC 7638 thumbprint of the signing key")), request_body = PutDevice, responses((status = 201, body = DirectoryView, description = "published, with its proof"), (status = 200, body = DirectoryView, description = "already published with these keys"), (status = 409, body = crate::http::errors::ProblemDocument, description = "id or key taken, or too many devices"), (status = 422, body = crate::http::errors::ProblemDocument, description = "invalid key or expiry, or no valid proof of possession (`device-proof-invalid`)")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn put_device(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath(device_id): ApiPath<String>,
    ApiJson(body): ApiJson<PutDevice>,
) -> Result<Response, Problem> {
    not_an_auditor(&state, &caller)?;
    let device = checked_device(&state, &device_id, &body, owner_of(&caller.principal))?;
    publish(&state, &access, &caller, device).await
}

/// `PUT /v1/clinics/{org}/journal-keys/{device_id}`: publishes a clinic's journal key
/// (the exporter's), which every message in the clinic's episodes must be sealed to.
#[utoipa::path(put, path = "/v1/clinics/{org}/journal-keys/{device_id}", tag = "devices", params(("org" = String, Path, description = "the clinic's organisation number"), ("device_id" = String, Path, description = "RFC 7638 thumbprint of the signing key")), request_body = PutDevice, responses((status = 201, body = DirectoryView, description = "published, with its proof"), (status = 200, body = DirectoryView, description = "already published with these keys"), (status = 403, body = crate::http::errors::ProblemDocument, description = "not a system client of this clinic"), (status = 409, body = crate::http::errors::ProblemDocument, description = "id or key taken, or too many keys"), (status = 422, body = crate::http::errors::ProblemDocument, description = "invalid key or expiry, or no valid proof of possession (`device-proof-invalid`)")), security(("bearer" = []), ("dpop" = [])))]
pub async fn put_journal_key(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath((org, device_id)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<PutDevice>,
) -> Result<Response, Problem> {
    let org = OrgNumber::parse(&org).map_err(|e| invalid("org", e.to_string()))?;
    let record = access
        .record(&caller, Action::KeyPublish, "journal-key")
        .resource_id(device_id.clone());
    manage(&state, &caller, &org, record).await?;
    let device = checked_device(&state, &device_id, &body, journal_of(&org))?;
    publish(&state, &access, &caller, device).await
}

/// `DELETE /v1/devices/{device_id}`: revokes a device of the caller's, or a journal key
/// of a clinic the caller (a system client) acts for.
#[utoipa::path(delete, path = "/v1/devices/{device_id}", tag = "devices", params(("device_id" = String, Path)), responses((status = 200, body = DirectoryView, description = "revoked, with the revoke leaf's proof"), (status = 404, body = crate::http::errors::ProblemDocument, description = "no such device of the caller's")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn delete_device(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath(device_id): ApiPath<String>,
) -> Result<Response, Problem> {
    not_an_auditor(&state, &caller)?;
    let device = state
        .store
        .device(&device_id)
        .await?
        .ok_or_else(|| Problem::new(ProblemKind::NotFound))?;
    let record = access
        .record(&caller, Action::KeyRevoke, "device")
        .resource_id(device_id.clone());
    if device.owner.kind == "journal" {
        let org = OrgNumber::parse(&device.owner.reference)
            .map_err(|_| Problem::new(ProblemKind::Internal))?;
        manage(&state, &caller, &org, record.clone()).await?;
    } else if device.owner != owner_of(&caller.principal) {
        // Someone else's device is, to the caller, no device at all.
        return Err(Problem::new(ProblemKind::NotFound));
    }
    let revoked = match state
        .store
        .revoke_device(&device, now_ms(), &state.audit.signer, &record)
        .await?
    {
        Some(revoked) => {
            state
                .push
                .changed([crate::push::authz::Change::DeviceRevoked(device_id.clone())]);
            revoked
        }
        None => state
            .store
            .device(&device_id)
            .await?
            .ok_or_else(|| Problem::new(ProblemKind::NotFound))?,
    };
    Ok(Json(directory(&state, vec![revoked]).await?).into_response())
}

/// `GET /v1/devices`: the caller's own devices, revoked and expired ones included.
#[utoipa::path(get, path = "/v1/devices", tag = "devices", responses((status = 200, body = DirectoryView), (status = 404, body = crate::http::errors::ProblemDocument, description = "the key log is still empty")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn list_devices(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<DirectoryView>, Problem> {
    not_an_auditor(&state, &caller)?;
    let devices = state
        .store
        .devices_of(&[owner_of(&caller.principal)])
        .await?;
    Ok(Json(directory(&state, devices).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EpisodeDevicesQuery {
    /// Also revoked and expired devices, and those of ended cover therapists: what a
    /// reader needs to check the senders of older messages.
    #[serde(default)]
    include_inactive: bool,
}

/// `GET /v1/episodes/{id}/devices`: the keys a message in this episode must be sealed
/// to (every participant's active devices and the clinic's journal keys), each with its
/// inclusion proof against the newest signed checkpoint of the key log.
#[utoipa::path(get, path = "/v1/episodes/{id}/devices", tag = "devices", params(("id" = Uuid, Path), EpisodeDevicesQuery), responses((status = 200, body = DirectoryView), (status = 404, body = crate::http::errors::ProblemDocument, description = "no such episode, or no keys yet")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn episode_devices(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<EpisodeDevicesQuery>,
) -> Result<Json<DirectoryView>, Problem> {
    let (episode, clinic, team, record) = reach(
        &state,
        &access,
        &caller,
        EpisodeId(id),
        (Action::Read, "devices"),
    )
    .await?;
    state.store.record_access(&[record]).await?;
    let now = now_ms();
    let mut owners = participants(episode.patient.expose(), &team, now, query.include_inactive);
    owners.push(journal_of(&clinic.org_number));
    let devices = state
        .store
        .devices_of(&owners)
        .await?
        .into_iter()
        .filter(|d| query.include_inactive || d.active_at(now))
        .collect();
    Ok(Json(directory(&state, devices).await?))
}

/// `GET /v1/keys/checkpoint`: the key log's newest signed checkpoint.
#[utoipa::path(get, path = "/v1/keys/checkpoint", tag = "devices", responses((status = 200, body = CheckpointView), (status = 404, body = crate::http::errors::ProblemDocument, description = "the key log is still empty")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn key_checkpoint(
    State(state): State<AppState>,
    Caller(_caller): Caller,
) -> Result<Json<CheckpointView>, Problem> {
    let head = state
        .store
        .key_log_head()
        .await?
        .ok_or_else(|| Problem::new(ProblemKind::NotFound))?;
    Ok(Json(CheckpointView::new(
        &head,
        state.audit.signer.public_key(),
    )))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct KeyConsistencyQuery {
    /// The older tree size, one the client has seen signed.
    from: u64,
    /// The newer tree size; default the newest.
    to: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyConsistencyView {
    from: u64,
    to: u64,
    /// Base64 hashes (RFC 9162 §2.1.4).
    proof: Vec<String>,
}

/// `GET /v1/keys/proof/consistency`: proves the key log at `to` extends the log at
/// `from`, so no published key was taken back or changed in between.
#[utoipa::path(get, path = "/v1/keys/proof/consistency", tag = "devices", params(KeyConsistencyQuery), responses((status = 200, body = KeyConsistencyView), (status = 422, body = crate::http::errors::ProblemDocument, description = "sizes out of range")), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn key_consistency(
    State(state): State<AppState>,
    Caller(_caller): Caller,
    ApiQuery(query): ApiQuery<KeyConsistencyQuery>,
) -> Result<Json<KeyConsistencyView>, Problem> {
    let head = state
        .store
        .key_log_head()
        .await?
        .map_or(0, |h| h.checkpoint.size);
    let to = query.to.unwrap_or(head);
    if to > head || query.from > to {
        return Err(invalid("from", format!("need from <= to <= {head}")));
    }
    let hashes = state.store.key_log_hashes(to).await?;
    let proof =
        consistency_proof(&hashes, query.from).map_err(|e| invalid("from", e.to_string()))?;
    Ok(Json(KeyConsistencyView {
        from: query.from,
        to,
        proof: proof.iter().map(|h| STANDARD.encode(h)).collect(),
    }))
}
