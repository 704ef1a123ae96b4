//! From stored rows to the mapping crate's records: the episode with its clinic and care
//! team, and messages opened with a clinic journal key and checked against the sender's
//! published signing key.

use std::collections::HashMap;

use icbt_envelope::{DeviceKeys, Envelope, Jwk, Limits, PublicKey};
use icbt_fhir_mapping::content::Content;
use icbt_fhir_mapping::episode::{EpisodeRecord, State};
use icbt_fhir_mapping::message::{MessageRecord, Party};
use icbt_fhir_mapping::questionnaire::Answers;

use crate::domain::episode::{Clinic, Episode, EpisodeId, EpisodeState};
use crate::storage::{StorageError, Store, StoredMessage};

/// Why a row cannot be exported (yet).
#[derive(Debug)]
pub enum Unready {
    /// The database failed: try again.
    Storage(StorageError),
    /// It can never be mapped as stored: dead letter at once.
    Unmappable(String),
}

impl From<StorageError> for Unready {
    fn from(e: StorageError) -> Self {
        Self::Storage(e)
    }
}

impl From<icbt_fhir_mapping::MappingError> for Unready {
    fn from(e: icbt_fhir_mapping::MappingError) -> Self {
        Self::Unmappable(e.to_string())
    }
}

/// Identifier systems of our records.
#[derive(Clone, Debug)]
pub struct Systems {
    pub episode: String,
    pub message: String,
    pub document: String,
}

impl Systems {
    pub fn under(base: &str) -> Self {
        Self {
            episode: format!("{base}:episode"),
            message: format!("{base}:message"),
            document: format!("{base}:document"),
        }
    }
}

/// The clinics' journal devices: the encryption key opens envelopes, the signing key
/// signs risk alerts.
#[derive(Debug, Default)]
pub struct JournalKeys {
    /// By encryption key id.
    by_kid: HashMap<String, std::sync::Arc<DeviceKeys>>,
}

impl JournalKeys {
    pub fn new(keys: Vec<DeviceKeys>) -> Self {
        Self {
            by_kid: keys
                .into_iter()
                .map(|k| (k.encryption.kid(), std::sync::Arc::new(k)))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }

    /// Our device with this device id (signing key thumbprint), if we hold it.
    pub fn device(&self, device_id: &str) -> Option<std::sync::Arc<DeviceKeys>> {
        self.by_kid
            .values()
            .find(|k| k.device_id() == device_id)
            .cloned()
    }
}

/// The journal keys of every clinic the exporter serves: each clinic's own, or, in a
/// deployment without a register, one set for all.
#[derive(Debug, Default)]
pub struct ClinicKeys {
    /// By the clinic's organisation number.
    by_clinic: HashMap<String, JournalKeys>,
    shared: JournalKeys,
}

impl ClinicKeys {
    /// One set of keys for every clinic (no register).
    pub fn shared(keys: JournalKeys) -> Self {
        Self {
            by_clinic: HashMap::new(),
            shared: keys,
        }
    }

    /// Each clinic's own keys.
    pub fn per_clinic(keys: HashMap<String, JournalKeys>) -> Self {
        Self {
            by_clinic: keys,
            shared: JournalKeys::default(),
        }
    }

    /// The keys that may open `clinic`'s envelopes: its own only, with a register.
    pub fn of(&self, clinic: &str) -> &JournalKeys {
        if self.by_clinic.is_empty() {
            &self.shared
        } else {
            self.by_clinic.get(clinic).unwrap_or(&self.shared)
        }
    }
}

/// An episode as the export needs it.
#[derive(Debug)]
pub struct EpisodeFacts {
    pub episode: Episode,
    pub clinic: Clinic,
    pub record: EpisodeRecord,
}

impl EpisodeFacts {
    /// The care manager: the first regular therapist (covers only when no one else).
    pub fn care_manager(&self) -> Option<&str> {
        self.record.therapists.first().map(String::as_str)
    }
}

pub async fn episode(
    store: &Store,
    id: EpisodeId,
    systems: &Systems,
) -> Result<EpisodeFacts, Unready> {
    let (episode, clinic, mut team) = store
        .episode_with_team(id)
        .await?
        .ok_or_else(|| Unready::Unmappable("the episode is gone".into()))?;
    team.sort_by_key(|m| m.cover);
    let state = match episode.state {
        EpisodeState::Planned => State::Planned,
        EpisodeState::Active => State::Active,
        EpisodeState::Finished => State::Finished,
        EpisodeState::Cancelled => State::Cancelled,
    };
    let ended =
        matches!(state, State::Finished | State::Cancelled).then_some(episode.updated_at_ms);
    let record = EpisodeRecord {
        id: episode.id.to_string(),
        identifier_system: systems.episode.clone(),
        state,
        started_at_ms: episode.created_at_ms,
        ended_at_ms: ended,
        patient: episode.patient.expose().to_owned(),
        organisation: clinic.org_number.as_str().to_owned(),
        therapists: team
            .iter()
            .map(|m| m.hpr_number.as_str().to_owned())
            .collect(),
    };
    Ok(EpisodeFacts {
        episode,
        clinic,
        record,
    })
}

/// The message at `seq`.
pub async fn message(store: &Store, id: EpisodeId, seq: i64) -> Result<StoredMessage, Unready> {
    store
        .messages_after(id, seq - 1, 1, false)
        .await?
        .into_iter()
        .find(|m| m.seq == seq)
        .ok_or_else(|| Unready::Unmappable(format!("message {seq} is gone")))
}

/// Signing keys of sender devices, each read from the database once.
#[derive(Debug, Default)]
pub struct Senders(HashMap<String, PublicKey>);

impl Senders {
    async fn key(&mut self, store: &Store, device_id: &str) -> Result<&PublicKey, Unready> {
        if !self.0.contains_key(device_id) {
            let device = store
                .device(device_id)
                .await?
                .ok_or_else(|| Unready::Unmappable("the sender device is unknown".into()))?;
            let jwk: Jwk = serde_json::from_str(&device.signing_jwk).map_err(|_| {
                Unready::Unmappable("the sender's signing key does not parse".into())
            })?;
            let key = PublicKey::from_jwk(&jwk)
                .map_err(|e| Unready::Unmappable(format!("the sender's signing key: {e}")))?;
            self.0.insert(device_id.to_owned(), key);
        }
        self.0
            .get(device_id)
            .ok_or_else(|| Unready::Unmappable("the sender device is unknown".into()))
    }
}

/// Opens `message` with a journal key, verifies it with its sender device's signing key
/// and reads the content format.
pub async fn open(
    store: &Store,
    keys: &JournalKeys,
    senders: &mut Senders,
    message: &StoredMessage,
) -> Result<Content, Unready> {
    let limits = Limits {
        max_bytes: message.body.len().max(1),
        max_recipients: 1_024,
    };
    let envelope = Envelope::parse(&message.body, &limits)
        .map_err(|e| Unready::Unmappable(format!("the envelope does not parse: {e}")))?;
    let key = envelope
        .recipients()
        .iter()
        .find_map(|r| keys.by_kid.get(&r.kid))
        .map(|k| &k.encryption)
        .ok_or_else(|| {
            Unready::Unmappable("no configured journal key is a recipient of this envelope".into())
        })?;
    let sender = senders.key(store, &message.sender_device).await?;
    let opened = envelope
        .open(key, sender)
        .map_err(|e| Unready::Unmappable(format!("the envelope does not open: {e}")))?;
    Ok(Content::parse(&message.kind, &opened.payload)?)
}

/// The sender of a stored message as a FHIR party.
fn sender(facts: &EpisodeFacts, message: &StoredMessage) -> Party {
    match message.sender_kind.as_str() {
        "patient" => Party::Patient(facts.record.patient.clone()),
        "clinician" => Party::Therapist(message.sender_ref.clone()),
        _ => Party::Organisation(facts.record.organisation.clone()),
    }
}

/// A message or feedback as the mapping crate takes it.
pub fn message_record(
    facts: &EpisodeFacts,
    systems: &Systems,
    message: &StoredMessage,
    text: String,
    in_response_to: Option<String>,
) -> MessageRecord {
    let from = sender(facts, message);
    let recipients = if matches!(from, Party::Patient(_)) {
        facts
            .record
            .therapists
            .iter()
            .cloned()
            .map(Party::Therapist)
            .collect()
    } else {
        vec![Party::Patient(facts.record.patient.clone())]
    };
    MessageRecord {
        id: message.id.to_string(),
        identifier_system: systems.message.clone(),
        episode_id: facts.record.id.clone(),
        episode_system: systems.episode.clone(),
        kind: message.kind.clone(),
        patient: facts.record.patient.clone(),
        sender: from,
        recipients,
        sent_at_ms: message.created_at_ms,
        text,
        in_response_to,
    }
}

pub fn answers(
    facts: &EpisodeFacts,
    systems: &Systems,
    message: &StoredMessage,
    instrument: icbt_fhir_mapping::questionnaire::Instrument,
    items: Vec<u8>,
) -> Answers {
    Answers {
        instrument,
        id: message.id.to_string(),
        identifier_system: systems.message.clone(),
        patient: facts.record.patient.clone(),
        authored_at_ms: message.created_at_ms,
        items,
    }
}
