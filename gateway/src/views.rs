//! How the API shows what it stores: the JSON shapes that more than one part of the
//! gateway writes. The history and the push hub both show messages; the access log and
//! the key log both show checkpoints. Each handler's own shapes stay beside it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use uuid::Uuid;

use crate::storage::StoredMessage;
use crate::storage::stream::StreamEntry;

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

pub fn message_view(m: StoredMessage) -> MessageView {
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

/// One entry as clients see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntryView {
    position: String,
    episode: uuid::Uuid,
    message: MessageView,
}

pub fn entry_view(entry: StreamEntry) -> EntryView {
    EntryView {
        position: entry.position.to_string(),
        episode: entry.episode.0,
        message: message_view(entry.message),
    }
}

/// A signed tree head, with what is needed to check it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckpointView {
    origin: String,
    size: u64,
    /// Base64 SHA-256 root.
    root: String,
    /// When the gateway signed it. Not covered by a note's signature; covered by a
    /// legacy one's.
    timestamp_ms: i64,
    /// `note` (a C2SP signed note) or `legacy` (signed before the note format).
    format: &'static str,
    /// Hex key id: 8 digits, the note key id of `origin`; 16 for a legacy checkpoint.
    key_id: String,
    /// Base64 Ed25519 signature over `body`.
    signature: String,
    /// The signed text: the C2SP tlog-checkpoint body (the legacy text for a legacy one).
    body: String,
    /// The whole C2SP signed note, as served at the log's checkpoint path; absent for a
    /// legacy checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    /// Base64 Ed25519 public key of the gateway's current signing key.
    public_key: String,
    /// The same key as a C2SP verifier key (`origin+id+key`), what a verifier pins.
    verifier_key: String,
}

impl CheckpointView {
    /// The view of `signed`, with the gateway's current public key beside it.
    pub(crate) fn new(signed: &icbt_merkle::SignedCheckpoint, public_key: &[u8]) -> Self {
        let origin = &signed.checkpoint.origin;
        Self {
            origin: origin.clone(),
            size: signed.checkpoint.size,
            root: STANDARD.encode(signed.checkpoint.root),
            timestamp_ms: signed.signed_at_ms,
            format: match signed.format {
                icbt_merkle::Format::Note => "note",
                icbt_merkle::Format::Legacy => "legacy",
            },
            body: signed.signed_text(),
            note: signed.note(),
            key_id: signed.key_id.clone(),
            signature: STANDARD.encode(&signed.signature),
            public_key: STANDARD.encode(public_key),
            verifier_key: icbt_merkle::VerifierKey::new(origin, public_key)
                .map(|k| k.to_string())
                .unwrap_or_default(),
        }
    }
}
