//! What the access log records: every access to patient data, who, what, when and from
//! where, never message content or tokens.
//!
//! A handler builds a [`Record`] from the request ([`Access`]) and the caller, and hands it
//! to storage with the change it describes, so both commit together. The log itself (the
//! Merkle tree, checkpoints, verification) is [`crate::audit`].

use icbt_auth::principal::{Authenticated, Principal};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::episode::Episode;

/// The name of the log in its checkpoints.
pub const ORIGIN: &str = "icbt-gateway/audit/v1";

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Read,
    Search,
    Create,
    Update,
    Export,
    Login,
    Logout,
    KeyPublish,
    KeyRevoke,
    AuditRead,
}

impl Action {
    pub const ALL: [Self; 10] = [
        Self::Read,
        Self::Search,
        Self::Create,
        Self::Update,
        Self::Export,
        Self::Login,
        Self::Logout,
        Self::KeyPublish,
        Self::KeyRevoke,
        Self::AuditRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Search => "search",
            Self::Create => "create",
            Self::Update => "update",
            Self::Export => "export",
            Self::Login => "login",
            Self::Logout => "logout",
            Self::KeyPublish => "key-publish",
            Self::KeyRevoke => "key-revoke",
            Self::AuditRead => "audit-read",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The retention class (`audit.retention_days`).
    pub fn class(self) -> &'static str {
        match self {
            Self::Read | Self::Search | Self::Export => "access",
            Self::Create | Self::Update => "change",
            Self::Login | Self::Logout => "authentication",
            Self::KeyPublish | Self::KeyRevoke => "keys",
            Self::AuditRead => "audit",
        }
    }
}

/// How it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Success,
    /// Authentication or authorisation refused it.
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Success, Self::Refused]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// One access, as stored and as hashed into the tree. Field order is the canonical
/// order of the leaf (see [`Record::leaf_data`]); never reorder.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Record {
    pub id: Uuid,
    pub recorded_at_ms: i64,
    pub action: Action,
    pub outcome: Outcome,
    /// Why it was refused (a stable reason code).
    pub reason: Option<String>,
    /// `patient`, `clinician`, `system`, or `unknown` for a failed login.
    pub principal_kind: String,
    /// National id number of a patient, HPR number of a clinician, client id of a system.
    pub principal_id: Option<String>,
    /// Organisation number the principal acts for.
    pub principal_organisation: Option<String>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    /// `jti` of the access token: names the token without holding it.
    pub token_jti: Option<String>,
    /// `episode`, `episodes`, `care-team`, `messages`, `receipts`, `attachment`,
    /// `session`, `device-key`, `access-log`.
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub episode_id: Option<Uuid>,
    /// National id number of the patient whose data it is.
    pub patient: Option<String>,
    pub request_id: Option<String>,
    /// IP address the request came from.
    pub source: Option<String>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the national id numbers.
        f.debug_struct("Record")
            .field("id", &self.id)
            .field("action", &self.action)
            .field("outcome", &self.outcome)
            .field("resource_type", &self.resource_type)
            .finish_non_exhaustive()
    }
}

/// The name of the signed seal over the records hashed in leaf format 1 (see
/// [`Record::seal_leaf_data`]).
pub const LEGACY_SEAL_ORIGIN: &str = "icbt-gateway/audit/v1-leaves";

/// Format 1: the whole record, so a pruned record keeps nothing its leaf can be
/// recomputed from. Kept to verify the records sequenced before format 2.
#[derive(Serialize)]
struct LeafV1<'a> {
    v: u8,
    index: u64,
    #[serde(flatten)]
    record: &'a Record,
}

/// Format 2: what pruning keeps (position, id, time, action and so class), and the hash
/// of the rest. A pruned record's leaf is recomputed from its kept columns.
#[derive(Serialize)]
struct LeafV2<'a> {
    v: u8,
    index: u64,
    id: &'a Uuid,
    recorded_at_ms: i64,
    action: Action,
    content: &'a str,
}

/// What pruning removes, hashed into a format-2 leaf as `content`.
#[derive(Serialize)]
struct Content<'a> {
    v: u8,
    outcome: Outcome,
    reason: &'a Option<String>,
    principal_kind: &'a str,
    principal_id: &'a Option<String>,
    principal_organisation: &'a Option<String>,
    issuer: &'a Option<String>,
    client_id: &'a Option<String>,
    token_jti: &'a Option<String>,
    resource_type: &'a str,
    resource_id: &'a Option<String>,
    episode_id: &'a Option<Uuid>,
    patient: &'a Option<String>,
    request_id: &'a Option<String>,
    source: &'a Option<String>,
}

/// A format-1 record's kept columns, as the legacy seal commits to them.
#[derive(Serialize)]
struct SealLeaf<'a> {
    v: &'static str,
    index: u64,
    id: &'a Uuid,
    recorded_at_ms: i64,
    action: Action,
    leaf: &'a str,
}

impl Record {
    /// The bytes hashed as leaf `index` (RFC 9162 `d`), format 2: a header of what
    /// pruning keeps, with the record's own position (a record moved to another
    /// position no longer matches its hash), and the hash of the rest as `content`.
    pub fn leaf_data(&self, index: u64) -> Vec<u8> {
        leaf_v2(
            index,
            &self.id,
            self.recorded_at_ms,
            self.action,
            &self.content_hash_hex(),
        )
    }

    pub fn leaf_hash(&self, index: u64) -> icbt_merkle::Hash {
        icbt_merkle::leaf_hash(&self.leaf_data(index))
    }

    /// SHA-256 of what pruning removes (hex), as a format-2 leaf commits to it.
    pub fn content_hash_hex(&self) -> String {
        let content = Content {
            v: 2,
            outcome: self.outcome,
            reason: &self.reason,
            principal_kind: &self.principal_kind,
            principal_id: &self.principal_id,
            principal_organisation: &self.principal_organisation,
            issuer: &self.issuer,
            client_id: &self.client_id,
            token_jti: &self.token_jti,
            resource_type: &self.resource_type,
            resource_id: &self.resource_id,
            episode_id: &self.episode_id,
            patient: &self.patient,
            request_id: &self.request_id,
            source: &self.source,
        };
        let bytes = serde_json::to_vec(&content).unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let mut hash = [0; 32];
        hash.copy_from_slice(digest.as_ref());
        icbt_merkle::to_hex(&hash)
    }

    /// The leaf of a pruned format-2 record, from the columns pruning keeps.
    pub fn pruned_leaf_hash(&self, index: u64, content_hex: &str) -> icbt_merkle::Hash {
        icbt_merkle::leaf_hash(&leaf_v2(
            index,
            &self.id,
            self.recorded_at_ms,
            self.action,
            content_hex,
        ))
    }

    /// The bytes hashed as leaf `index` in format 1: the record as JSON, fields in
    /// declaration order, with a version and its own position.
    pub fn leaf_data_v1(&self, index: u64) -> Vec<u8> {
        serde_json::to_vec(&LeafV1 {
            v: 1,
            index,
            record: self,
        })
        .unwrap_or_default()
    }

    pub fn leaf_hash_v1(&self, index: u64) -> icbt_merkle::Hash {
        icbt_merkle::leaf_hash(&self.leaf_data_v1(index))
    }

    /// A format-1 record's leaf in the legacy seal: the columns pruning keeps and its
    /// stored leaf hash, so its time and action stay bound after its content is gone.
    pub fn seal_leaf_data(&self, index: u64, leaf_hex: &str) -> Vec<u8> {
        serde_json::to_vec(&SealLeaf {
            v: "seal-1",
            index,
            id: &self.id,
            recorded_at_ms: self.recorded_at_ms,
            action: self.action,
            leaf: leaf_hex,
        })
        .unwrap_or_default()
    }

    /// A refusal, with its reason code.
    #[must_use]
    pub fn refused(mut self, reason: &str) -> Self {
        self.outcome = Outcome::Refused;
        self.reason = Some(reason.to_owned());
        self
    }

    /// The episode the access concerns, and so its patient.
    #[must_use]
    pub fn episode(mut self, episode: &Episode) -> Self {
        self.episode_id = Some(episode.id.0);
        self.patient = Some(episode.patient.expose().to_owned());
        self
    }

    #[must_use]
    pub fn resource_id(mut self, id: impl Into<String>) -> Self {
        self.resource_id = Some(id.into());
        self
    }

    #[must_use]
    pub fn action(mut self, action: Action) -> Self {
        self.action = action;
        self
    }
}

fn leaf_v2(index: u64, id: &Uuid, recorded_at_ms: i64, action: Action, content: &str) -> Vec<u8> {
    serde_json::to_vec(&LeafV2 {
        v: 2,
        index,
        id,
        recorded_at_ms,
        action,
        content,
    })
    .unwrap_or_default()
}

/// A stored record with its place in the tree (`None` until sequenced).
#[derive(Clone, Debug)]
pub struct Stored {
    pub record: Record,
    pub leaf_index: Option<u64>,
    /// Hex SHA-256 leaf hash written when the record was sequenced.
    pub leaf_hash: Option<String>,
    /// Hex SHA-256 of the content (format-2 leaves; `None` for format 1).
    pub content_hash: Option<String>,
    /// Content removed by retention; the id, time, action, position and hashes remain.
    pub pruned: bool,
}

/// A sequenced row that does not read as a record: one of its columns holds what the
/// gateway never writes (an action outside the set, an id not in canonical form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    pub leaf_index: Option<u64>,
    /// The row's id as stored, quoted (it may be what is wrong).
    pub id: String,
    /// The column, `audit_records.<name>` or `audit_leaves.<name>`.
    pub field: &'static str,
    /// The stored value, quoted, or a description of it for personal identifiers.
    pub stored: String,
}

/// Facts about the request an access record needs: its id and where it came from.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub request_id: Option<String>,
    pub source: Option<String>,
}

impl Access {
    /// A successful `action` on `resource_type` by `caller`, now.
    pub fn record(&self, caller: &Authenticated, action: Action, resource_type: &str) -> Record {
        let (kind, id, organisation) = principal_fields(&caller.principal);
        Record {
            id: Uuid::new_v4(),
            recorded_at_ms: super::now_ms(),
            action,
            outcome: Outcome::Success,
            reason: None,
            principal_kind: kind.to_owned(),
            principal_id: Some(id),
            principal_organisation: organisation,
            issuer: Some(caller.issuer.to_string()),
            client_id: caller.client_id.clone(),
            token_jti: caller.token_id.clone(),
            resource_type: resource_type.to_owned(),
            resource_id: None,
            episode_id: None,
            patient: None,
            request_id: self.request_id.clone(),
            source: self.source.clone(),
        }
    }

    /// An access by someone not (yet) authenticated, such as a failed login.
    pub fn anonymous(&self, action: Action, resource_type: &str) -> Record {
        Record {
            id: Uuid::new_v4(),
            recorded_at_ms: super::now_ms(),
            action,
            outcome: Outcome::Success,
            reason: None,
            principal_kind: "unknown".into(),
            principal_id: None,
            principal_organisation: None,
            issuer: None,
            client_id: None,
            token_jti: None,
            resource_type: resource_type.to_owned(),
            resource_id: None,
            episode_id: None,
            patient: None,
            request_id: self.request_id.clone(),
            source: self.source.clone(),
        }
    }
}

fn principal_fields(principal: &Principal) -> (&'static str, String, Option<String>) {
    match principal {
        Principal::Patient(p) => ("patient", p.pid.expose().to_owned(), None),
        Principal::Clinician(c) => (
            "clinician",
            c.hpr_number.to_string(),
            c.organisation.as_ref().map(|o| o.as_str().to_owned()),
        ),
        Principal::System(s) => (
            "system",
            s.client_id.clone(),
            s.orgnr_child
                .as_ref()
                .or(s.orgnr_parent.as_ref())
                .map(|o| o.as_str().to_owned()),
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample(n: u32) -> Record {
        Record {
            id: Uuid::from_u128(u128::from(n)),
            recorded_at_ms: 1_790_000_000_000 + i64::from(n),
            action: Action::Read,
            outcome: Outcome::Success,
            reason: None,
            principal_kind: "clinician".into(),
            principal_id: Some("565501872".into()),
            principal_organisation: Some("974633574".into()),
            issuer: Some("helseid".into()),
            client_id: Some("platform".into()),
            token_jti: Some(format!("jti-{n}")),
            resource_type: "messages".into(),
            resource_id: None,
            episode_id: Some(Uuid::from_u128(7)),
            patient: Some("01018512345".into()),
            request_id: Some(format!("req-{n}")),
            source: Some("127.0.0.1".into()),
        }
    }

    #[test]
    fn leaf_data_binds_the_position_and_every_field() {
        let r = sample(1);
        assert_ne!(r.leaf_hash(0), r.leaf_hash(1));
        let mut other = r.clone();
        other.outcome = Outcome::Refused;
        assert_ne!(r.leaf_hash(0), other.leaf_hash(0));
        let text = String::from_utf8(r.leaf_data(3)).unwrap();
        assert!(text.starts_with(r#"{"v":2,"index":3,"id":""#), "{text}");
        let text = String::from_utf8(r.leaf_data_v1(3)).unwrap();
        assert!(text.starts_with(r#"{"v":1,"index":3,"id":""#), "{text}");
    }

    #[test]
    fn a_pruned_leaf_is_recomputed_from_what_pruning_keeps() {
        let r = sample(1);
        let content = r.content_hash_hex();
        assert_eq!(r.pruned_leaf_hash(4, &content), r.leaf_hash(4));
        // Every content field is in the content hash; time and action are in the header.
        let mut other = r.clone();
        other.source = Some("10.0.0.1".into());
        assert_ne!(other.content_hash_hex(), content);
        let mut earlier = r.clone();
        earlier.recorded_at_ms -= 1;
        assert_ne!(earlier.pruned_leaf_hash(4, &content), r.leaf_hash(4));
        let mut export = r.clone();
        export.action = Action::Export;
        assert_ne!(export.pruned_leaf_hash(4, &content), r.leaf_hash(4));
    }

    /// The same vector is in the JS SDK's tests (`client-js/test/accesslog.test.mjs`):
    /// both sides must build the same leaf from the same record view.
    #[test]
    fn leaf_format_2_vector() {
        let r = sample(1);
        assert_eq!(
            icbt_merkle::to_hex(&r.leaf_hash(3)),
            "55a385e0ef7dac8f5c568ea8be87b1ed2a3c16a370956c91c2d0907fd82704c0"
        );
    }

    #[test]
    fn debug_never_prints_national_ids() {
        let shown = format!("{:?}", sample(1));
        assert!(!shown.contains("01018512345"), "{shown}");
    }

    #[test]
    fn actions_round_trip_and_have_a_class() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
            assert!(!a.class().is_empty());
            assert_eq!(
                serde_json::to_value(a).unwrap(),
                serde_json::Value::String(a.as_str().into())
            );
        }
    }
}
