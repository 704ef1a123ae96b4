//! Rows as the database returns them: one `FromRow` struct per shape a query selects,
//! with the column types both backends give, and the conversion into the record the rest
//! of the gateway uses. The conversion checks what a column type cannot (a UUID, a
//! national id, a state name) and names the column that does not fit.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use icbt_auth::identity::HprNumber;
use icbt_merkle::{Checkpoint, Format, SignedCheckpoint};
use sqlx::FromRow;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::StorageError;
use crate::domain::audit::{Action, Outcome, Record, Stored, Unreadable};
use crate::domain::episode::{
    CareTeamEntry, Clinic, ClinicId, Episode, EpisodeId, EpisodeState, NationalId, OrgNumber,
};
use crate::domain::participants::Owner;

fn uuid(value: &str, column: &'static str) -> Result<Uuid, StorageError> {
    Uuid::parse_str(value).map_err(|_| StorageError::Corrupt(column))
}

fn index(value: i64, column: &'static str) -> Result<u64, StorageError> {
    u64::try_from(value).map_err(|_| StorageError::Corrupt(column))
}

/// `episodes`, as [`super::messaging`]'s `EPISODE_COLUMNS` select it.
#[derive(Debug, FromRow)]
pub(super) struct EpisodeRow {
    id: String,
    clinic_id: String,
    patient_nin: String,
    programme: String,
    state: String,
    created_at_ms: i64,
    updated_at_ms: i64,
}

impl TryFrom<EpisodeRow> for Episode {
    type Error = StorageError;
    fn try_from(r: EpisodeRow) -> Result<Self, StorageError> {
        Ok(Episode {
            id: EpisodeId(uuid(&r.id, "episodes.id")?),
            clinic_id: ClinicId(uuid(&r.clinic_id, "episodes.clinic_id")?),
            patient: NationalId::parse(&r.patient_nin)
                .map_err(|_| StorageError::Corrupt("episodes.patient_nin"))?,
            programme: r.programme,
            state: EpisodeState::parse(&r.state).ok_or(StorageError::Corrupt("episodes.state"))?,
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
        })
    }
}

/// `clinics`.
#[derive(Debug, FromRow)]
pub(super) struct ClinicRow {
    id: String,
    name: String,
    org_number: String,
    created_at_ms: i64,
}

impl TryFrom<ClinicRow> for Clinic {
    type Error = StorageError;
    fn try_from(r: ClinicRow) -> Result<Self, StorageError> {
        Ok(Clinic {
            id: ClinicId(uuid(&r.id, "clinics.id")?),
            name: r.name,
            org_number: OrgNumber::parse(&r.org_number)
                .map_err(|_| StorageError::Corrupt("clinics.org_number"))?,
            created_at_ms: r.created_at_ms,
        })
    }
}

/// One row of an episode joined with its clinic (`c_…`) and one care-team member
/// (`t_…`, absent when the team is empty): `EPISODE_WITH_TEAM_COLUMNS`.
#[derive(Debug, FromRow)]
pub(super) struct EpisodeWithTeamRow {
    #[sqlx(flatten)]
    episode: EpisodeRow,
    c_id: String,
    c_name: String,
    c_org_number: String,
    c_created_at_ms: i64,
    t_hpr_number: Option<String>,
    t_role: Option<String>,
    t_until_ms: Option<i64>,
}

impl EpisodeWithTeamRow {
    /// The care-team member of this row, if any. Every row of the join has one; only
    /// the first row's episode and clinic need converting ([`Self::episode`]).
    pub(super) fn member(&mut self) -> Result<Option<CareTeamEntry>, StorageError> {
        let Some(hpr_number) = self.t_hpr_number.take() else {
            return Ok(None);
        };
        let role = self
            .t_role
            .take()
            .ok_or(StorageError::Corrupt("care_team.role"))?;
        Ok(Some(CareTeamEntry::try_from(CareTeamRow {
            hpr_number,
            role,
            until_ms: self.t_until_ms,
        })?))
    }

    /// The episode and its clinic.
    pub(super) fn episode(self) -> Result<(Episode, Clinic), StorageError> {
        let clinic = Clinic::try_from(ClinicRow {
            id: self.c_id,
            name: self.c_name,
            org_number: self.c_org_number,
            created_at_ms: self.c_created_at_ms,
        })?;
        Ok((self.episode.try_into()?, clinic))
    }
}

/// `care_team`.
#[derive(Debug, FromRow)]
pub(super) struct CareTeamRow {
    hpr_number: String,
    role: String,
    until_ms: Option<i64>,
}

impl TryFrom<CareTeamRow> for CareTeamEntry {
    type Error = StorageError;
    fn try_from(r: CareTeamRow) -> Result<Self, StorageError> {
        Ok(CareTeamEntry {
            hpr_number: HprNumber::parse(&r.hpr_number)
                .map_err(|_| StorageError::Corrupt("care_team.hpr_number"))?,
            cover: r.role == "cover",
            until_ms: r.until_ms,
        })
    }
}

/// `messages`, as the history and the stream select them.
#[derive(Debug, FromRow)]
pub(super) struct MessageRow {
    id: String,
    seq: i64,
    kind: String,
    sender_kind: String,
    sender_ref: String,
    sender_device: String,
    recipients: String,
    content_type: String,
    body: Vec<u8>,
    attachments: String,
    created_at_ms: i64,
    audience: String,
}

impl TryFrom<MessageRow> for super::StoredMessage {
    type Error = StorageError;
    fn try_from(r: MessageRow) -> Result<Self, StorageError> {
        Ok(super::StoredMessage {
            id: uuid(&r.id, "messages.id")?,
            seq: r.seq,
            kind: r.kind,
            sender_kind: r.sender_kind,
            sender_ref: r.sender_ref,
            sender_device: r.sender_device,
            recipients: r.recipients,
            content_type: r.content_type,
            body: r.body,
            attachments: r.attachments,
            created_at_ms: r.created_at_ms,
            audience: r.audience,
        })
    }
}

/// One entry of a principal's stream: its position, the message, and where it routes.
#[derive(Debug, FromRow)]
pub(super) struct StreamRow {
    pub(super) tx: i64,
    pub(super) pos: i64,
    pub(super) episode_id: String,
    #[sqlx(flatten)]
    pub(super) message: MessageRow,
    pub(super) route_patient: String,
    pub(super) route_organisation: String,
}

/// A stream position: `(tx, pos)`.
#[derive(Debug, FromRow)]
pub(super) struct PositionRow {
    pub(super) tx: i64,
    pub(super) pos: i64,
}

/// What an append returns: the message's place, and (PostgreSQL) its transaction.
#[derive(Debug, FromRow)]
pub(super) struct AppendedRow {
    pub(super) seq: i64,
    pub(super) created_at_ms: i64,
    pub(super) tx: i64,
}

/// `audit_records`, the columns of [`super::audit::COLUMNS`].
#[derive(Debug, FromRow)]
pub(super) struct RecordRow {
    id: String,
    recorded_at_ms: i64,
    action: String,
    outcome: String,
    reason: Option<String>,
    principal_kind: String,
    principal_id: Option<String>,
    principal_organisation: Option<String>,
    issuer: Option<String>,
    client_id: Option<String>,
    token_jti: Option<String>,
    resource_type: String,
    resource_id: Option<String>,
    episode_id: Option<String>,
    patient: Option<String>,
    request_id: Option<String>,
    source: Option<String>,
}

/// A column whose stored value the gateway never writes: which (`<table>.<name>`),
/// and what it holds (never a national id number or an HPR number; those are described,
/// not shown).
struct BadColumn {
    column: &'static str,
    shown: String,
}

impl BadColumn {
    fn new(column: &'static str, value: &str) -> Self {
        let shown = if matches!(
            column,
            "audit_records.patient"
                | "audit_records.principal_id"
                | "audit_leaves.patient"
                | "audit_leaves.principal_id"
        ) {
            format!("({} characters, not shown)", value.chars().count())
        } else {
            let mut shown: String = value.chars().take(64).collect();
            if shown.len() < value.len() {
                shown.push('…');
            }
            format!("{shown:?}")
        };
        Self { column, shown }
    }
}

/// A UUID in the one form the gateway writes: lower case, hyphenated.
fn canonical_uuid(value: &str, column: &'static str) -> Result<Uuid, BadColumn> {
    match Uuid::try_parse(value) {
        Ok(id) if id.hyphenated().to_string() == value => Ok(id),
        _ => Err(BadColumn::new(column, value)),
    }
}

fn digits(value: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit())
}

impl RecordRow {
    /// The record, with every identifier in its canonical form; otherwise the first
    /// column that is not.
    fn check(self) -> Result<Record, BadColumn> {
        let id = canonical_uuid(&self.id, "audit_records.id")?;
        let action = Action::parse(&self.action)
            .ok_or_else(|| BadColumn::new("audit_records.action", &self.action))?;
        let outcome = Outcome::parse(&self.outcome)
            .ok_or_else(|| BadColumn::new("audit_records.outcome", &self.outcome))?;
        let episode_id = self
            .episode_id
            .map(|v| canonical_uuid(&v, "audit_records.episode_id"))
            .transpose()?;
        if let Some(p) = self.patient.as_deref().filter(|p| !digits(p, 11..=11)) {
            return Err(BadColumn::new("audit_records.patient", p));
        }
        if let Some(o) = self
            .principal_organisation
            .as_deref()
            .filter(|o| !digits(o, 9..=9))
        {
            return Err(BadColumn::new("audit_records.principal_organisation", o));
        }
        if let Some(p) = self.principal_id.as_deref() {
            let canonical = match self.principal_kind.as_str() {
                "patient" => digits(p, 11..=11),
                "clinician" => digits(p, 1..=9) && !p.starts_with('0'),
                _ => true,
            };
            if !canonical {
                return Err(BadColumn::new("audit_records.principal_id", p));
            }
        }
        Ok(Record {
            id,
            recorded_at_ms: self.recorded_at_ms,
            action,
            outcome,
            reason: self.reason,
            principal_kind: self.principal_kind,
            principal_id: self.principal_id,
            principal_organisation: self.principal_organisation,
            issuer: self.issuer,
            client_id: self.client_id,
            token_jti: self.token_jti,
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            episode_id,
            patient: self.patient,
            request_id: self.request_id,
            source: self.source,
        })
    }
}

impl TryFrom<RecordRow> for Record {
    type Error = StorageError;
    fn try_from(r: RecordRow) -> Result<Self, StorageError> {
        r.check().map_err(|bad| StorageError::Corrupt(bad.column))
    }
}

/// A record with its place in the tree.
#[derive(Debug, FromRow)]
pub(super) struct StoredRow {
    #[sqlx(flatten)]
    record: RecordRow,
    leaf_index: Option<i64>,
    leaf_hash: Option<String>,
    content_hash: Option<String>,
    pruned: i64,
    /// The leaf row's copies of the searched columns, which must equal the record's.
    leaf_recorded_at_ms: i64,
    leaf_patient: Option<String>,
    leaf_episode_id: Option<String>,
    leaf_principal_id: Option<String>,
}

impl StoredRow {
    /// The stored record, or what `audit verify` says of a row that does not read as one.
    pub(super) fn check(self) -> Result<Stored, Unreadable> {
        let leaf_index = self.leaf_index.and_then(|i| u64::try_from(i).ok());
        let raw_id = self.record.id.clone();
        let unreadable = |bad: BadColumn| Unreadable {
            leaf_index,
            id: BadColumn::new("audit_records.id", &raw_id).shown,
            field: bad.column,
            stored: bad.shown,
        };
        if let Some(i) = self.leaf_index.filter(|i| *i < 0) {
            return Err(unreadable(BadColumn::new(
                "audit_leaves.leaf_index",
                &i.to_string(),
            )));
        }
        if !matches!(self.pruned, 0 | 1) {
            return Err(unreadable(BadColumn::new(
                "pruned",
                &self.pruned.to_string(),
            )));
        }
        if let Some(c) = self
            .content_hash
            .as_deref()
            .filter(|c| icbt_merkle::from_hex(c).is_none())
        {
            return Err(unreadable(BadColumn::new("audit_leaves.content_hash", c)));
        }
        // A search finds records by the leaf's copies: a copy that differs would hide a
        // record from a search, or show it in another's. The record's own columns are
        // judged first, since a finding about them says more.
        let differs = self.copy_that_differs();
        let record = self.record.check().map_err(unreadable)?;
        if let Some(bad) = differs {
            return Err(unreadable(bad));
        }
        Ok(Stored {
            record,
            leaf_index,
            leaf_hash: self.leaf_hash,
            content_hash: self.content_hash,
            pruned: self.pruned == 1,
        })
    }

    /// The first of the leaf's copies of the searched columns that is not the record's.
    fn copy_that_differs(&self) -> Option<BadColumn> {
        let record = &self.record;
        let differs = |column: &'static str, copy: &str| {
            let mut bad = BadColumn::new(column, copy);
            bad.shown.push_str(" (not the record's)");
            bad
        };
        if self.leaf_recorded_at_ms != record.recorded_at_ms {
            return Some(differs(
                "audit_leaves.recorded_at_ms",
                &self.leaf_recorded_at_ms.to_string(),
            ));
        }
        [
            ("audit_leaves.patient", &self.leaf_patient, &record.patient),
            (
                "audit_leaves.episode_id",
                &self.leaf_episode_id,
                &record.episode_id,
            ),
            (
                "audit_leaves.principal_id",
                &self.leaf_principal_id,
                &record.principal_id,
            ),
        ]
        .into_iter()
        .find(|(_, copy, own)| copy != own)
        .map(|(column, copy, _)| differs(column, copy.as_deref().unwrap_or("NULL")))
    }
}

impl TryFrom<StoredRow> for Stored {
    type Error = StorageError;
    fn try_from(r: StoredRow) -> Result<Self, StorageError> {
        r.check().map_err(|bad| StorageError::Corrupt(bad.field))
    }
}

/// A signed checkpoint of either log (`audit_checkpoints`, `key_log_head`).
#[derive(Debug, FromRow)]
pub(super) struct CheckpointRow {
    size: i64,
    root: String,
    timestamp_ms: i64,
    key_id: String,
    signature: String,
    format: String,
}

/// The columns of [`CheckpointRow`].
pub(super) const CHECKPOINT_COLUMNS: &str = "size, root, timestamp_ms, key_id, signature, format";

impl CheckpointRow {
    pub(super) fn size(&self) -> i64 {
        self.size
    }

    /// The checkpoint of the log named `origin`; `table` names the row in errors.
    pub(super) fn signed(
        self,
        origin: &str,
        table: &'static str,
    ) -> Result<SignedCheckpoint, StorageError> {
        let size = self.size;
        let corrupt = |field: &'static str| StorageError::CorruptCheckpoint { table, size, field };
        Ok(SignedCheckpoint {
            checkpoint: Checkpoint {
                origin: origin.to_owned(),
                size: u64::try_from(size).map_err(|_| corrupt("size"))?,
                root: icbt_merkle::from_hex(&self.root).ok_or_else(|| corrupt("root"))?,
            },
            format: match self.format.as_str() {
                "note" => Format::Note,
                "legacy" => Format::Legacy,
                _ => return Err(corrupt("format")),
            },
            signed_at_ms: self.timestamp_ms,
            key_id: self.key_id,
            signature: STANDARD
                .decode(self.signature)
                .map_err(|_| corrupt("signature"))?,
        })
    }
}

/// The note that replaces `checkpoint` at the first start after the note format: none
/// when it is a note already, or was signed by a key other than `signer`'s.
pub(super) fn note_for_legacy(
    checkpoint: SignedCheckpoint,
    signer: &icbt_merkle::Signer,
) -> Result<Option<SignedCheckpoint>, StorageError> {
    if checkpoint.format != Format::Legacy || checkpoint.verify(&[signer.public_key()]).is_err() {
        return Ok(None);
    }
    Ok(Some(
        signer.sign(checkpoint.checkpoint, checkpoint.signed_at_ms)?,
    ))
}

/// A Merkle tree's frontier, as both logs keep their head: `size` and comma-separated
/// hex `peaks`.
#[derive(Debug, FromRow)]
pub(super) struct TreeHeadRow {
    size: i64,
    peaks: String,
}

impl TreeHeadRow {
    /// The size as stored, whether or not the peaks fit it.
    pub(super) fn stored_size(&self) -> u64 {
        u64::try_from(self.size).unwrap_or_default()
    }

    /// The tree; `table` names the row in errors.
    pub(super) fn tree(&self, table: &'static str) -> Result<icbt_merkle::Tree, StorageError> {
        let peaks: Vec<icbt_merkle::Hash> = self
            .peaks
            .split(',')
            .filter(|p| !p.is_empty())
            .map(icbt_merkle::from_hex)
            .collect::<Option<_>>()
            .ok_or(StorageError::Corrupt(table))?;
        icbt_merkle::Tree::restore(index(self.size, table)?, &peaks)
            .ok_or(StorageError::Corrupt(table))
    }
}

/// A leaf hash of either log.
#[derive(Debug, FromRow)]
pub(super) struct LeafHashRow {
    leaf_hash: String,
}

impl LeafHashRow {
    /// The hash; `column` names it in errors.
    pub(super) fn hash(&self, column: &'static str) -> Result<icbt_merkle::Hash, StorageError> {
        icbt_merkle::from_hex(&self.leaf_hash).ok_or(StorageError::Corrupt(column))
    }
}

/// `devices`, the columns of [`super::devices`]' `COLUMNS`.
#[derive(Debug, FromRow)]
pub(super) struct DeviceRow {
    device_id: String,
    owner_kind: String,
    owner_ref: String,
    signing_jwk: String,
    encryption_kid: String,
    encryption_jwk: String,
    published_at_ms: i64,
    expires_at_ms: i64,
    revoked_at_ms: Option<i64>,
    publish_index: i64,
    revoke_index: Option<i64>,
}

impl TryFrom<DeviceRow> for super::DeviceRecord {
    type Error = StorageError;
    fn try_from(r: DeviceRow) -> Result<Self, StorageError> {
        Ok(super::DeviceRecord {
            device_id: r.device_id,
            owner: Owner {
                kind: Owner::parse_kind(&r.owner_kind)
                    .ok_or(StorageError::Corrupt("devices.owner_kind"))?,
                reference: r.owner_ref,
            },
            signing_jwk: r.signing_jwk,
            encryption_kid: r.encryption_kid,
            encryption_jwk: r.encryption_jwk,
            published_at_ms: r.published_at_ms,
            expires_at_ms: r.expires_at_ms,
            revoked_at_ms: r.revoked_at_ms,
            publish_index: index(r.publish_index, "devices.publish_index")?,
            revoke_index: r
                .revoke_index
                .map(|i| index(i, "devices.revoke_index"))
                .transpose()?,
        })
    }
}

/// `outbox`, the columns of [`super::outbox`]'s `COLUMNS`.
#[derive(Debug, FromRow)]
pub(super) struct OutboxRowRow {
    id: i64,
    episode_id: String,
    kind: String,
    message_seq: Option<i64>,
    state: String,
    attempts: i64,
    next_attempt_at_ms: i64,
    last_error: Option<String>,
    outcome: Option<String>,
    created_at_ms: i64,
}

impl TryFrom<OutboxRowRow> for super::OutboxRow {
    type Error = StorageError;
    fn try_from(r: OutboxRowRow) -> Result<Self, StorageError> {
        use super::OutboxKind;
        let kind = match r.kind.as_str() {
            "episode" => OutboxKind::Episode,
            "summary" => OutboxKind::Summary,
            "message" => OutboxKind::Message(
                r.message_seq
                    .ok_or(StorageError::Corrupt("outbox.message_seq"))?,
            ),
            _ => return Err(StorageError::Corrupt("outbox.kind")),
        };
        Ok(super::OutboxRow {
            id: r.id,
            episode: EpisodeId(uuid(&r.episode_id, "outbox.episode_id")?),
            kind,
            state: r.state,
            attempts: r.attempts,
            next_attempt_at_ms: r.next_attempt_at_ms,
            last_error: r.last_error,
            outcome: r.outcome,
            created_at_ms: r.created_at_ms,
        })
    }
}

/// A record storage reads from one row, through its typed row.
pub(super) trait FromDb: TryFrom<Self::Row, Error = StorageError> {
    type Row: for<'r> FromRow<'r, AnyRow>;
}

impl FromDb for Episode {
    type Row = EpisodeRow;
}
impl FromDb for Clinic {
    type Row = ClinicRow;
}
impl FromDb for CareTeamEntry {
    type Row = CareTeamRow;
}
impl FromDb for super::StoredMessage {
    type Row = MessageRow;
}
impl FromDb for Record {
    type Row = RecordRow;
}
impl FromDb for Stored {
    type Row = StoredRow;
}
impl FromDb for super::DeviceRecord {
    type Row = DeviceRow;
}
impl FromDb for super::OutboxRow {
    type Row = OutboxRowRow;
}

/// Reads `row` as `T`'s typed row and converts it.
pub(super) fn read<T: FromDb>(row: &AnyRow) -> Result<T, StorageError> {
    T::try_from(T::Row::from_row(row)?)
}

/// Which part of a combined query a row belongs to.
#[derive(Debug, FromRow)]
pub(super) struct PartRow {
    pub(super) part: i32,
    /// `send_context_version`, on the rows of part 0.
    pub(super) context_version: Option<i64>,
}

/// One message of a batch append: its place in the batch and what was appended.
#[derive(Debug, FromRow)]
pub(super) struct BatchedRow {
    pub(super) ord: i64,
    #[sqlx(flatten)]
    pub(super) appended: AppendedRow,
}

/// An outbox row with its rank among its episode's pending rows.
#[derive(Debug, FromRow)]
pub(super) struct RankedOutboxRow {
    rank: i64,
    #[sqlx(flatten)]
    row: OutboxRowRow,
}

pub(super) fn ranked_outbox(row: &AnyRow) -> Result<(i64, super::OutboxRow), StorageError> {
    let ranked = RankedOutboxRow::from_row(row)?;
    Ok((ranked.rank, ranked.row.try_into()?))
}
