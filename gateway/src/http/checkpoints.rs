//! The logs' published checkpoints: each log's newest checkpoint as a C2SP signed note,
//! `text/plain` at a stable path, for witnesses and third-party verifiers. No caller is
//! needed: a checkpoint tells a log's size and root, nothing of what is in it.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use icbt_merkle::{Checkpoint, SignedCheckpoint};

use super::errors::{Problem, ProblemKind};
use super::state::AppState;

/// `GET /logs/access/checkpoint`: the access log's newest checkpoint note.
#[utoipa::path(get, path = "/logs/access/checkpoint", tag = "audit", responses((status = 200, content_type = "text/plain; charset=utf-8", body = String, description = "a C2SP tlog-checkpoint, signed as a C2SP signed note under the key name of its origin"), (status = 404, body = crate::http::errors::ProblemDocument, description = "the newest checkpoint was signed by an earlier key before the note format, and none has been signed since")))]
pub async fn access_log(State(state): State<AppState>) -> Result<Response, Problem> {
    let newest = state.store.audit_checkpoint(None).await?;
    let cosignatures = match &newest {
        Some(c) => state.store.audit_cosignatures(c.checkpoint.size).await?,
        None => Vec::new(),
    };
    note(&state, newest, crate::audit::ORIGIN, &cosignatures)
}

/// `GET /logs/keys/checkpoint`: the key log's newest checkpoint note.
#[utoipa::path(get, path = "/logs/keys/checkpoint", tag = "devices", responses((status = 200, content_type = "text/plain; charset=utf-8", body = String, description = "a C2SP tlog-checkpoint, signed as a C2SP signed note under the key name of its origin"), (status = 404, body = crate::http::errors::ProblemDocument, description = "the newest checkpoint was signed by an earlier key before the note format, and none has been signed since")))]
pub async fn key_log(State(state): State<AppState>) -> Result<Response, Problem> {
    let head = state.store.key_log_head().await?;
    note(&state, head, crate::storage::KEY_LOG_ORIGIN, &[])
}

/// The note of `checkpoint`, with the witnesses' `cosignatures` of it (name, line); of
/// the empty tree while the log has none. A newest checkpoint still in the legacy format
/// signed by an earlier key (it is re-signed at start when the current key made it) has
/// no note until the next one.
fn note(
    state: &AppState,
    checkpoint: Option<SignedCheckpoint>,
    origin: &str,
    cosignatures: &[(String, String)],
) -> Result<Response, Problem> {
    let checkpoint = match checkpoint {
        Some(c) => c,
        None => state
            .audit
            .signer
            .sign(
                Checkpoint {
                    origin: origin.to_owned(),
                    size: 0,
                    root: icbt_merkle::empty_root(),
                },
                crate::storage::now_ms(),
            )
            .map_err(crate::storage::StorageError::from)?,
    };
    let mut note = checkpoint
        .note()
        .ok_or_else(|| Problem::new(ProblemKind::NotFound))?;
    for (_, line) in cosignatures {
        note.push_str(line);
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        note,
    )
        .into_response())
}
