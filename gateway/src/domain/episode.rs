//! Clinics and treatment episodes: the records every other part of the gateway hangs off.

use std::fmt;

use icbt_auth::identity::HprNumber;
pub use icbt_auth::identity::{NationalId, NationalIdKind, OrgNumber};
use icbt_auth::policy::CareTeamMember;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A clinic's id in this gateway.
    ClinicId
);
uuid_id!(
    /// A treatment episode's id in this gateway.
    EpisodeId
);

/// The life cycle of a treatment episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EpisodeState {
    Planned,
    Active,
    Finished,
    Cancelled,
}

impl EpisodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::Active => "active",
            Self::Finished => "finished",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "planned" => Self::Planned,
            "active" => Self::Active,
            "finished" => Self::Finished,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// The life cycle: planned → active → finished, and cancelled from planned or
    /// active. Staying put is allowed (a retry of the same change).
    pub fn may_move_to(self, to: EpisodeState) -> bool {
        use EpisodeState::{Active, Cancelled, Finished, Planned};
        self == to
            || matches!(
                (self, to),
                (Planned, Active | Cancelled) | (Active, Finished | Cancelled)
            )
    }
}

/// A clinic that runs iCBT programmes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clinic {
    pub id: ClinicId,
    pub name: String,
    pub org_number: OrgNumber,
    pub created_at_ms: i64,
}

/// A patient's course of treatment in one programme at one clinic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Episode {
    pub id: EpisodeId,
    pub clinic_id: ClinicId,
    pub patient: NationalId,
    pub programme: String,
    pub state: EpisodeState,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A member of an episode's care team.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CareTeamEntry {
    pub hpr_number: HprNumber,
    /// `true` for a cover therapist (time-limited).
    pub cover: bool,
    /// Unix milliseconds when cover ends.
    pub until_ms: Option<i64>,
}

impl CareTeamEntry {
    /// The policy's view, in Unix seconds.
    pub fn as_member(&self) -> CareTeamMember {
        CareTeamMember {
            hpr_number: self.hpr_number.clone(),
            until: self.until_ms.map(|ms| ms.div_euclid(1000)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn episode_state_round_trips() {
        for s in [
            EpisodeState::Planned,
            EpisodeState::Active,
            EpisodeState::Finished,
            EpisodeState::Cancelled,
        ] {
            assert_eq!(EpisodeState::parse(s.as_str()), Some(s));
        }
        assert_eq!(EpisodeState::parse("done"), None);
    }

    #[test]
    fn life_cycle_transitions() {
        use EpisodeState::{Active, Cancelled, Finished, Planned};
        let all = [Planned, Active, Finished, Cancelled];
        let ok = [
            (Planned, Active),
            (Planned, Cancelled),
            (Active, Finished),
            (Active, Cancelled),
        ];
        for from in all {
            for to in all {
                let expected = from == to || ok.contains(&(from, to));
                assert_eq!(from.may_move_to(to), expected, "{from:?} -> {to:?}");
            }
        }
    }
}
