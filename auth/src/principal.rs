//! Who is calling: the verified principal every API request carries. Serialisable so a
//! hosted-login session can keep it.

use serde::{Deserialize, Serialize};

use crate::identity::{HprNumber, NationalId, OrgNumber};

/// ID-porten's levels of assurance, ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Acr {
    Low,
    Substantial,
    High,
}

impl Acr {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "idporten-loa-low" => Self::Low,
            "idporten-loa-substantial" => Self::Substantial,
            "idporten-loa-high" => Self::High,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "idporten-loa-low",
            Self::Substantial => "idporten-loa-substantial",
            Self::High => "idporten-loa-high",
        }
    }
}

/// A patient, logged in with ID-porten.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patient {
    pub pid: NationalId,
    pub acr: Acr,
}

/// Health personnel, logged in with HelseID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clinician {
    pub pid: NationalId,
    pub hpr_number: HprNumber,
    pub security_level: u8,
    /// The organisation the client acts for (child organisation when present, else the
    /// parent).
    pub organisation: Option<OrgNumber>,
    /// The parent organisation (the legal entity, a hospital) when the token names one.
    #[serde(default)]
    pub orgnr_parent: Option<OrgNumber>,
}

/// A system (an iCBT platform backend) with a HelseID client-credentials token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemClient {
    pub client_id: String,
    pub orgnr_parent: Option<OrgNumber>,
    pub orgnr_child: Option<OrgNumber>,
}

impl SystemClient {
    /// Whether the client acts for `org` (as parent or child organisation).
    pub fn acts_for(&self, org: &OrgNumber) -> bool {
        self.orgnr_parent.as_ref() == Some(org) || self.orgnr_child.as_ref() == Some(org)
    }
}

/// The three kinds of caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Principal {
    Patient(Patient),
    Clinician(Clinician),
    System(SystemClient),
}

impl Principal {
    /// A stable, non-identifying name of the kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Patient(_) => "patient",
            Self::Clinician(_) => "clinician",
            Self::System(_) => "system",
        }
    }
}

/// A verified request: the principal and the facts of the token it came with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authenticated {
    pub principal: Principal,
    /// The configured name of the issuer.
    pub issuer: std::sync::Arc<str>,
    /// `client_id` of the token (the platform or app that obtained it).
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    /// `jti` of the access token, for the audit log.
    pub token_id: Option<String>,
    pub expires_at: i64,
    /// Thumbprint of the DPoP key the token is bound to.
    pub dpop_jkt: Option<String>,
}

impl Authenticated {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}
