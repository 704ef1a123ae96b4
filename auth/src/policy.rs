//! Authorisation: who may reach what. Pure: facts in, decision out, no I/O and no clock
//! reads, so every rule is a row in the test table below.

use crate::identity::{HprNumber, NationalId, OrgNumber};
use crate::principal::{Authenticated, Principal};

/// A therapist on an episode's care team; cover therapists have an end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CareTeamMember {
    pub hpr_number: HprNumber,
    /// Unix seconds after which the membership (time-limited cover) ends.
    pub until: Option<i64>,
}

/// The facts about an episode that access depends on.
#[derive(Clone, Debug)]
pub struct EpisodeFacts<'a> {
    pub patient: &'a NationalId,
    /// Organisation number of the clinic that runs the episode.
    pub clinic: &'a OrgNumber,
    pub care_team: &'a [CareTeamMember],
}

/// What is being reached.
#[derive(Clone, Debug)]
pub enum Resource<'a> {
    /// An episode and everything in it (messages, questionnaires, attachments).
    Episode(EpisodeFacts<'a>),
    /// Creating or managing episodes of a clinic (the iCBT platform's job).
    ClinicEpisodes { clinic: &'a OrgNumber },
    /// The access log's security-team API.
    AuditLog,
}

/// Who holds the auditor role.
#[derive(Clone, Debug, Default)]
pub struct AuditorRule {
    pub hpr_numbers: Vec<HprNumber>,
    pub scope: Option<String>,
}

impl AuditorRule {
    pub fn holds(&self, auth: &Authenticated) -> bool {
        let by_hpr = matches!(&auth.principal, Principal::Clinician(c) if self.hpr_numbers.contains(&c.hpr_number));
        let by_scope = self.scope.as_deref().is_some_and(|s| auth.has_scope(s));
        by_hpr || by_scope
    }
}

/// Why access was refused: a reason code for the log and the audit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    NotThePatient,
    NotOnCareTeam,
    CoverEnded,
    OtherOrganisation,
    NotAnAuditor,
    AuditorOnly,
    WrongPrincipalKind,
}

impl Denial {
    pub fn reason_code(self) -> &'static str {
        match self {
            Self::NotThePatient => "not_the_patient",
            Self::NotOnCareTeam => "not_on_care_team",
            Self::CoverEnded => "cover_ended",
            Self::OtherOrganisation => "other_organisation",
            Self::NotAnAuditor => "not_an_auditor",
            Self::AuditorOnly => "auditor_only",
            Self::WrongPrincipalKind => "wrong_principal_kind",
        }
    }
}

/// Decides whether `auth` may reach `resource` at `now` (Unix seconds).
pub fn decide(
    auth: &Authenticated,
    auditors: &AuditorRule,
    resource: &Resource<'_>,
    now: i64,
) -> Result<(), Denial> {
    let auditor = auditors.holds(auth);
    match resource {
        Resource::AuditLog => {
            return if auditor {
                Ok(())
            } else {
                Err(Denial::NotAnAuditor)
            };
        }
        // An auditor reaches the audit API and nothing else.
        _ if auditor => return Err(Denial::AuditorOnly),
        _ => {}
    }
    match (&auth.principal, resource) {
        (Principal::Patient(p), Resource::Episode(e)) => {
            if &p.pid == e.patient {
                Ok(())
            } else {
                Err(Denial::NotThePatient)
            }
        }
        (Principal::Clinician(c), Resource::Episode(e)) => {
            let mut memberships = e
                .care_team
                .iter()
                .filter(|m| m.hpr_number == c.hpr_number)
                .peekable();
            if memberships.peek().is_none() {
                return Err(Denial::NotOnCareTeam);
            }
            if memberships.any(|m| m.until.is_none_or(|until| now < until)) {
                Ok(())
            } else {
                Err(Denial::CoverEnded)
            }
        }
        (
            Principal::System(s),
            Resource::Episode(EpisodeFacts { clinic, .. }) | Resource::ClinicEpisodes { clinic },
        ) => {
            if s.acts_for(clinic) {
                Ok(())
            } else {
                Err(Denial::OtherOrganisation)
            }
        }
        (Principal::Patient(_) | Principal::Clinician(_), Resource::ClinicEpisodes { .. }) => {
            Err(Denial::WrongPrincipalKind)
        }
        (_, Resource::AuditLog) => Err(Denial::NotAnAuditor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::{Acr, Clinician, Patient, SystemClient};
    use std::sync::Arc;

    fn nin(prefix: &str) -> NationalId {
        (0..10)
            .find_map(|d| NationalId::with_check_digits(&format!("{prefix}{d}")))
            .unwrap()
    }
    fn hpr(n: &str) -> HprNumber {
        HprNumber::parse(n).unwrap()
    }
    fn orgnr(n: &str) -> OrgNumber {
        OrgNumber::parse(n).unwrap()
    }
    fn auth(principal: Principal, scopes: &[&str]) -> Authenticated {
        Authenticated {
            principal,
            issuer: Arc::from("test"),
            client_id: None,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            token_id: None,
            expires_at: i64::MAX,
            dpop_jkt: None,
        }
    }

    #[test]
    #[allow(clippy::too_many_lines)] // one row per rule reads best as one table
    fn table_of_cases() {
        let now = 1_000;
        let alice = nin("01018512");
        let bob = nin("02028512");
        let clinic = orgnr("974760673");
        let other_clinic = orgnr("991056505");
        let team = [
            CareTeamMember {
                hpr_number: hpr("1001"),
                until: None,
            },
            CareTeamMember {
                hpr_number: hpr("2002"),
                until: Some(2_000),
            },
            CareTeamMember {
                hpr_number: hpr("3003"),
                until: Some(500),
            },
        ];
        let episode = Resource::Episode(EpisodeFacts {
            patient: &alice,
            clinic: &clinic,
            care_team: &team,
        });
        let manage = Resource::ClinicEpisodes { clinic: &clinic };
        let patient = |pid: &NationalId| {
            auth(
                Principal::Patient(Patient {
                    pid: pid.clone(),
                    acr: Acr::High,
                }),
                &[],
            )
        };
        let clinician = |h: &str| {
            auth(
                Principal::Clinician(Clinician {
                    pid: bob.clone(),
                    hpr_number: hpr(h),
                    security_level: 4,
                    organisation: Some(clinic.clone()),
                }),
                &[],
            )
        };
        let system = |parent: &OrgNumber, child: Option<&OrgNumber>, scopes: &[&str]| {
            auth(
                Principal::System(SystemClient {
                    client_id: "platform".into(),
                    orgnr_parent: Some(parent.clone()),
                    orgnr_child: child.cloned(),
                }),
                scopes,
            )
        };
        let auditors = AuditorRule {
            hpr_numbers: vec![hpr("9009")],
            scope: Some("nhn:icbt-gateway/audit".into()),
        };

        let cases: Vec<(&str, Authenticated, &Resource<'_>, Result<(), Denial>)> = vec![
            (
                "patient reaches own episode",
                patient(&alice),
                &episode,
                Ok(()),
            ),
            (
                "patient does not reach another's episode",
                patient(&bob),
                &episode,
                Err(Denial::NotThePatient),
            ),
            (
                "patient cannot manage episodes",
                patient(&alice),
                &manage,
                Err(Denial::WrongPrincipalKind),
            ),
            (
                "patient is no auditor",
                patient(&alice),
                &Resource::AuditLog,
                Err(Denial::NotAnAuditor),
            ),
            ("therapist on the team", clinician("1001"), &episode, Ok(())),
            (
                "cover therapist before the end",
                clinician("2002"),
                &episode,
                Ok(()),
            ),
            (
                "cover therapist after the end",
                clinician("3003"),
                &episode,
                Err(Denial::CoverEnded),
            ),
            (
                "therapist not on the team",
                clinician("4004"),
                &episode,
                Err(Denial::NotOnCareTeam),
            ),
            (
                "therapist cannot manage episodes",
                clinician("1001"),
                &manage,
                Err(Denial::WrongPrincipalKind),
            ),
            (
                "system of the clinic (parent)",
                system(&clinic, None, &[]),
                &episode,
                Ok(()),
            ),
            (
                "system of the clinic (child)",
                system(&other_clinic, Some(&clinic), &[]),
                &manage,
                Ok(()),
            ),
            (
                "system of another organisation",
                system(&other_clinic, None, &[]),
                &episode,
                Err(Denial::OtherOrganisation),
            ),
            (
                "system of another organisation manages",
                system(&other_clinic, None, &[]),
                &manage,
                Err(Denial::OtherOrganisation),
            ),
            (
                "auditor by HPR reaches the audit log",
                clinician("9009"),
                &Resource::AuditLog,
                Ok(()),
            ),
            (
                "auditor by scope reaches the audit log",
                system(&clinic, None, &["nhn:icbt-gateway/audit"]),
                &Resource::AuditLog,
                Ok(()),
            ),
            (
                "auditor reaches nothing else",
                clinician("9009"),
                &episode,
                Err(Denial::AuditorOnly),
            ),
            (
                "auditor by scope reaches nothing else",
                system(&clinic, None, &["nhn:icbt-gateway/audit"]),
                &episode,
                Err(Denial::AuditorOnly),
            ),
            (
                "therapist is no auditor",
                clinician("1001"),
                &Resource::AuditLog,
                Err(Denial::NotAnAuditor),
            ),
        ];
        for (name, who, resource, expected) in cases {
            assert_eq!(decide(&who, &auditors, resource, now), expected, "{name}");
        }
    }

    #[test]
    fn a_permanent_membership_wins_over_an_ended_cover() {
        let alice = nin("01018512");
        let clinic = orgnr("974760673");
        let team = [
            CareTeamMember {
                hpr_number: hpr("1001"),
                until: Some(10),
            },
            CareTeamMember {
                hpr_number: hpr("1001"),
                until: None,
            },
        ];
        let episode = Resource::Episode(EpisodeFacts {
            patient: &alice,
            clinic: &clinic,
            care_team: &team,
        });
        let who = auth(
            Principal::Clinician(Clinician {
                pid: alice.clone(),
                hpr_number: hpr("1001"),
                security_level: 4,
                organisation: None,
            }),
            &[],
        );
        assert_eq!(decide(&who, &AuditorRule::default(), &episode, 100), Ok(()));
    }
}
