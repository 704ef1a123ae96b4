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

#[derive(Serialize)]
struct Leaf<'a> {
    v: u8,
    index: u64,
    #[serde(flatten)]
    record: &'a Record,
}

impl Record {
    /// The bytes hashed as leaf `index` (RFC 9162 `d`): the record as JSON, fields in
    /// declaration order, with a version and its own position, so a record moved to
    /// another position no longer matches its hash.
    pub fn leaf_data(&self, index: u64) -> Vec<u8> {
        serde_json::to_vec(&Leaf {
            v: 1,
            index,
            record: self,
        })
        .unwrap_or_default()
    }

    pub fn leaf_hash(&self, index: u64) -> icbt_merkle::Hash {
        icbt_merkle::leaf_hash(&self.leaf_data(index))
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

/// A stored record with its place in the tree (`None` until sequenced).
#[derive(Clone, Debug)]
pub struct Stored {
    pub record: Record,
    pub leaf_index: Option<u64>,
    /// Hex SHA-256 leaf hash written when the record was sequenced.
    pub leaf_hash: Option<String>,
    /// Content removed by retention; only the hash and time remain.
    pub pruned: bool,
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
        assert!(text.starts_with(r#"{"v":1,"index":3,"id":""#), "{text}");
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
