//! Who takes part in an episode, as the owners of the keys a message is sealed to and as
//! the senders and readers the history names.

use icbt_auth::principal::Principal;

use super::episode::{CareTeamEntry, OrgNumber};

/// Who a device belongs to: `patient`/national id, `clinician`/HPR number,
/// `system`/client id, or `journal`/organisation number. `Debug` never shows a
/// patient's national id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub kind: &'static str,
    pub reference: String,
}

// By hand: a patient's reference is a national id, which no log may hold.
impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut owner = f.debug_struct("Owner");
        owner.field("kind", &self.kind);
        if self.kind == "patient" {
            owner.field("reference", &format_args!("[redacted]"));
        } else {
            owner.field("reference", &self.reference);
        }
        owner.finish()
    }
}

impl Owner {
    /// `kind:reference`, as written in key log leaves.
    pub fn label(&self) -> String {
        format!("{}:{}", self.kind, self.reference)
    }

    /// The kind as written, if it is one of the four.
    pub fn parse_kind(kind: &str) -> Option<&'static str> {
        ["patient", "clinician", "system", "journal"]
            .into_iter()
            .find(|k| *k == kind)
    }
}

/// Whose devices a caller publishes: their own.
pub fn owner_of(principal: &Principal) -> Owner {
    match principal {
        Principal::Patient(p) => Owner {
            kind: "patient",
            reference: p.pid.expose().to_owned(),
        },
        Principal::Clinician(c) => Owner {
            kind: "clinician",
            reference: c.hpr_number.as_str().to_owned(),
        },
        Principal::System(s) => Owner {
            kind: "system",
            reference: s.client_id.clone(),
        },
    }
}

pub fn journal_of(org: &OrgNumber) -> Owner {
    Owner {
        kind: "journal",
        reference: org.as_str().to_owned(),
    }
}

/// The episode's participants as key owners: the patient and the care team members
/// whose membership has not ended at `now_ms`.
pub fn participants(
    patient: &str,
    team: &[CareTeamEntry],
    now_ms: i64,
    include_ended: bool,
) -> Vec<Owner> {
    let mut owners = vec![Owner {
        kind: "patient",
        reference: patient.to_owned(),
    }];
    owners.extend(
        team.iter()
            .filter(|m| include_ended || m.until_ms.is_none_or(|until| now_ms < until))
            .map(|m| Owner {
                kind: "clinician",
                reference: m.hpr_number.as_str().to_owned(),
            }),
    );
    owners.sort();
    owners.dedup();
    owners
}

/// How a message or a receipt names its sender or reader.
pub fn sender_ref(principal: &Principal) -> String {
    match principal {
        // The episode names the patient; the message need not repeat the number.
        Principal::Patient(_) => "patient".to_owned(),
        Principal::Clinician(c) => c.hpr_number.to_string(),
        Principal::System(s) => s.client_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patient_owner_never_shows_the_national_id() {
        let patient = Owner {
            kind: "patient",
            reference: "01018512447".into(),
        };
        let shown = format!("{patient:?}");
        assert!(
            !shown.contains("01018512447") && shown.contains("patient"),
            "{shown}"
        );
        let clinician = Owner {
            kind: "clinician",
            reference: "565501872".into(),
        };
        assert!(format!("{clinician:?}").contains("565501872"));
    }
}
