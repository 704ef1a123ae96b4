//! Encrypted attachments: streamed uploads, checked against their SHA-256 and size limit
//! before anything is stored, and downloads for the principals of the episode.
//!
//! The body streams into a temporary file in the data directory while it is hashed, so a
//! large upload costs a file, not memory, until it is known good; a refused or interrupted
//! upload only ever touched that file, which is removed when the request ends.

use crate::http::extractors::ApiPath;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::audit::{Access, Action};
use crate::domain::attachments::{hex, is_sha256_hex};
use crate::domain::episode::EpisodeId;
use crate::domain::participants::sender_ref;
use crate::http::access::reach;
use crate::http::errors::invalid;
use crate::http::errors::{Problem, ProblemKind};
use crate::http::extractors::Caller;
use crate::http::state::AppState;
use crate::storage::NewAttachment;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttachmentReceipt {
    sha256: String,
    size: u64,
}

/// `PUT /v1/episodes/{id}/attachments/{sha256}`: uploads an encrypted blob. It is stored
/// only if its SHA-256 is the one in the path and it is within the size limit.
#[utoipa::path(put, path = "/v1/episodes/{id}/attachments/{sha256}", tag = "messages",
    params(("id" = Uuid, Path), ("sha256" = String, Path, description = "SHA-256 of the bytes, hex")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = AttachmentReceipt), (status = 200, body = AttachmentReceipt, description = "already stored"),
        (status = 413, body = crate::http::errors::ProblemDocument), (status = 422, body = crate::http::errors::ProblemDocument)),
    security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn put_attachment(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath((episode_id, sha256)): ApiPath<(Uuid, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    if !is_sha256_hex(&sha256) {
        return Err(invalid("sha256", "64 lower-case hex digits"));
    }
    let (episode, _, _, record) = reach(
        &state,
        &access,
        &caller,
        EpisodeId(episode_id),
        (Action::Create, "attachment"),
    )
    .await?;
    let record = record.resource_id(sha256.clone());
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 100)
        .unwrap_or("application/octet-stream")
        .to_owned();
    let limit = state.uploads.limit_bytes;
    let too_large = || Problem::new(ProblemKind::PayloadTooLarge).with("limit", limit);
    let internal = |e: std::io::Error| {
        tracing::error!(error = %e, "attachment spool failed");
        Problem::new(ProblemKind::Internal)
    };

    std::fs::create_dir_all(&state.uploads.dir).map_err(internal)?;
    let spool = tempfile::NamedTempFile::new_in(&state.uploads.dir).map_err(internal)?;
    let mut file = tokio::fs::File::from_std(spool.reopen().map_err(internal)?);
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            tracing::info!("attachment upload interrupted");
            Problem::new(ProblemKind::MalformedJson).detail("the upload was interrupted")
        })?;
        size += u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        if size > limit {
            return Err(too_large());
        }
        digest.update(&chunk);
        file.write_all(&chunk).await.map_err(internal)?;
    }
    file.flush().await.map_err(internal)?;
    if hex(digest.finish().as_ref()) != sha256 {
        return Err(invalid("sha256", "the bytes do not have this SHA-256"));
    }
    let bytes = tokio::fs::read(spool.path()).await.map_err(internal)?;
    let created = state
        .store
        .insert_attachment(
            &NewAttachment {
                episode: episode.id,
                sha256: &sha256,
                content_type: &content_type,
                created_by_kind: caller.principal.kind(),
                created_by_ref: &sender_ref(&caller.principal),
                body: &bytes,
            },
            &record,
        )
        .await?;
    drop(spool);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(AttachmentReceipt { sha256, size })).into_response())
}

/// `GET /v1/episodes/{id}/attachments/{sha256}`: the blob, for principals of the episode.
#[utoipa::path(get, path = "/v1/episodes/{id}/attachments/{sha256}", tag = "messages",
    params(("id" = Uuid, Path), ("sha256" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = crate::http::errors::ProblemDocument)),
    security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn get_attachment(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath((episode_id, sha256)): ApiPath<(Uuid, String)>,
) -> Result<Response, Problem> {
    if !is_sha256_hex(&sha256) {
        return Err(invalid("sha256", "64 lower-case hex digits"));
    }
    let (episode, _, _, record) = reach(
        &state,
        &access,
        &caller,
        EpisodeId(episode_id),
        (Action::Read, "attachment"),
    )
    .await?;
    let (content_type, bytes) = state
        .store
        .attachment(episode.id, &sha256)
        .await?
        .ok_or_else(|| Problem::new(ProblemKind::NotFound))?;
    state
        .store
        .record_access(&[record.resource_id(sha256)])
        .await?;
    let mut response = bytes.into_response();
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Ok(response)
}
