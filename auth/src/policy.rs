//! Authorisation: who may reach what. Pure: facts in, decision out, no I/O and no clock
//! reads, so every rule is a row in the test table below.

use crate::identity::{HprNumber, NationalId, OrgNumber};
use crate::principal::{Authenticated, Principal, SystemClient};

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

/// Who holds the auditor role: hospital auditors (scoped by the register to their own
/// hospital's clinics) and the deployment's auditors (who see every clinic).
#[derive(Clone, Debug, Default)]
pub struct AuditorRule {
    pub hpr_numbers: Vec<HprNumber>,
    pub scope: Option<String>,
    pub deployment_hpr_numbers: Vec<HprNumber>,
    pub deployment_scope: Option<String>,
}

/// What an auditor's queries may return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditScope {
    /// Every record (a deployment auditor, or a deployment without a register).
    Everything,
    /// Records about these clinics' episodes, and records without an episode made by
    /// someone acting for one of these organisations (the clinics and their hospital).
    Organisations(Vec<OrgNumber>),
}

impl AuditorRule {
    pub fn holds(&self, auth: &Authenticated) -> bool {
        Self::by(&self.hpr_numbers, self.scope.as_deref(), auth) || self.deployment_wide(auth)
    }

    fn deployment_wide(&self, auth: &Authenticated) -> bool {
        Self::by(
            &self.deployment_hpr_numbers,
            self.deployment_scope.as_deref(),
            auth,
        )
    }

    fn by(hprs: &[HprNumber], scope: Option<&str>, auth: &Authenticated) -> bool {
        let by_hpr =
            matches!(&auth.principal, Principal::Clinician(c) if hprs.contains(&c.hpr_number));
        by_hpr || scope.is_some_and(|s| auth.has_scope(s))
    }

    /// The auditor's scope, `None` for someone who is no auditor. A hospital auditor sees
    /// the hospital their token's organisation claims name (the hospital itself or one of
    /// its clinics); claims the register does not know give an empty scope.
    pub fn scope(&self, auth: &Authenticated, tenancy: &Tenancy) -> Option<AuditScope> {
        if self.deployment_wide(auth) || (self.holds(auth) && !tenancy.has_register()) {
            return Some(AuditScope::Everything);
        }
        if !self.holds(auth) {
            return None;
        }
        let claimed: Vec<&OrgNumber> = match &auth.principal {
            Principal::Clinician(c) => c.organisation.iter().chain(&c.orgnr_parent).collect(),
            Principal::System(s) => s.orgnr_child.iter().chain(&s.orgnr_parent).collect(),
            Principal::Patient(_) => Vec::new(),
        };
        let mut organisations: Vec<OrgNumber> = Vec::new();
        for org in claimed {
            if let Some(hospital) = tenancy.hospital_of(org) {
                organisations.push(hospital.clone());
                organisations.extend(tenancy.clinics_of(hospital));
            }
        }
        organisations.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        organisations.dedup();
        Some(AuditScope::Organisations(organisations))
    }
}

/// The deployment's clinic register as the policy needs it: each clinic's hospital, and
/// which platform serves which clinics. Empty: a deployment without a register, where a
/// platform acts for the organisations its token names.
#[derive(Clone, Debug, Default)]
pub struct Tenancy {
    /// Clinic → its hospital.
    hospitals: std::collections::HashMap<OrgNumber, OrgNumber>,
    /// Platform `client_id` → the clinics it serves.
    platforms: std::collections::HashMap<String, Vec<OrgNumber>>,
}

impl Tenancy {
    /// `clinics` as `(clinic, hospital)`, `platforms` as `(client id, clinics)`.
    pub fn new(
        clinics: impl IntoIterator<Item = (OrgNumber, OrgNumber)>,
        platforms: impl IntoIterator<Item = (String, Vec<OrgNumber>)>,
    ) -> Self {
        Self {
            hospitals: clinics.into_iter().collect(),
            platforms: platforms.into_iter().collect(),
        }
    }

    pub fn has_register(&self) -> bool {
        !self.hospitals.is_empty()
    }

    /// Whether new episodes may be started at `clinic`: it is in the register (any
    /// clinic, without one).
    pub fn admits(&self, clinic: &OrgNumber) -> bool {
        !self.has_register() || self.hospitals.contains_key(clinic)
    }

    /// The hospital `org` is or belongs to, if the register knows it.
    pub fn hospital_of<'a>(&'a self, org: &'a OrgNumber) -> Option<&'a OrgNumber> {
        self.hospitals
            .get(org)
            .or_else(|| self.hospitals.values().find(|h| *h == org))
    }

    /// The register's clinics of `hospital`.
    pub fn clinics_of<'a>(
        &'a self,
        hospital: &'a OrgNumber,
    ) -> impl Iterator<Item = OrgNumber> + 'a {
        self.hospitals
            .iter()
            .filter(move |(_, h)| *h == hospital)
            .map(|(c, _)| c.clone())
    }

    /// Whether a system client may manage and see `clinic`'s episodes: without a
    /// register, when its token names the clinic; with one, when configuration binds it
    /// to the clinic and its token names the clinic or the clinic's hospital.
    pub fn serves(&self, system: &SystemClient, clinic: &OrgNumber) -> bool {
        if !self.has_register() {
            return system.acts_for(clinic);
        }
        let bound = self
            .platforms
            .get(&system.client_id)
            .is_some_and(|clinics| clinics.contains(clinic));
        bound
            && (system.acts_for(clinic)
                || self
                    .hospitals
                    .get(clinic)
                    .is_some_and(|h| system.acts_for(h)))
    }

    /// The clinics a system client's lists and streams cover.
    pub fn platform_clinics(&self, system: &SystemClient) -> Vec<OrgNumber> {
        if !self.has_register() {
            return system
                .orgnr_parent
                .iter()
                .chain(&system.orgnr_child)
                .cloned()
                .collect();
        }
        self.platforms
            .get(&system.client_id)
            .into_iter()
            .flatten()
            .filter(|c| self.serves(system, c))
            .cloned()
            .collect()
    }
}

/// Everything [`decide`] weighs besides the caller and the resource.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub auditors: AuditorRule,
    pub tenancy: Tenancy,
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
    rules: &Rules,
    resource: &Resource<'_>,
    now: i64,
) -> Result<(), Denial> {
    let auditor = rules.auditors.holds(auth);
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
            if rules.tenancy.serves(s, clinic) {
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
                    orgnr_parent: None,
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
        let rules = Rules {
            auditors: AuditorRule {
                hpr_numbers: vec![hpr("9009")],
                scope: Some("nhn:icbt-gateway/audit".into()),
                ..AuditorRule::default()
            },
            tenancy: Tenancy::default(),
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
            assert_eq!(decide(&who, &rules, resource, now), expected, "{name}");
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
                orgnr_parent: None,
            }),
            &[],
        );
        assert_eq!(decide(&who, &Rules::default(), &episode, 100), Ok(()));
    }

    /// Two hospitals: A with clinics A1 and A2, B with clinic B1. The platform is bound
    /// to A1 and B1.
    fn two_hospitals() -> (Tenancy, [OrgNumber; 5]) {
        let [a, a1, a2, b, b1] = [
            "983974899",
            "974589095",
            "974633574",
            "983975240",
            "974749025",
        ]
        .map(orgnr);
        let tenancy = Tenancy::new(
            [
                (a1.clone(), a.clone()),
                (a2.clone(), a.clone()),
                (b1.clone(), b.clone()),
            ],
            [("platform".to_owned(), vec![a1.clone(), b1.clone()])],
        );
        (tenancy, [a, a1, a2, b, b1])
    }

    #[test]
    fn a_registered_platform_serves_the_bound_clinics_its_token_names() {
        let (tenancy, [a, a1, a2, b, b1]) = two_hospitals();
        let system = |client: &str, parent: &OrgNumber, child: Option<&OrgNumber>| SystemClient {
            client_id: client.into(),
            orgnr_parent: Some(parent.clone()),
            orgnr_child: child.cloned(),
        };
        let cases = [
            (
                "hospital token, bound clinic",
                system("platform", &a, None),
                &a1,
                true,
            ),
            (
                "hospital token, clinic not bound",
                system("platform", &a, None),
                &a2,
                false,
            ),
            (
                "hospital token, other hospital's clinic",
                system("platform", &a, None),
                &b1,
                false,
            ),
            (
                "clinic token, bound clinic",
                system("platform", &b, Some(&b1)),
                &b1,
                true,
            ),
            (
                "unbound client with the right claims",
                system("other", &a, None),
                &a1,
                false,
            ),
            (
                "a clinic outside the register",
                system("platform", &a, None),
                &orgnr("974760673"),
                false,
            ),
        ];
        for (name, who, clinic, expected) in cases {
            assert_eq!(tenancy.serves(&who, clinic), expected, "{name}");
        }
        assert_eq!(
            tenancy.platform_clinics(&system("platform", &a, None)),
            std::slice::from_ref(&a1)
        );
        assert!(tenancy.admits(&a2) && !tenancy.admits(&orgnr("974760673")));
        assert!(Tenancy::default().admits(&orgnr("974760673")));
    }

    #[test]
    fn auditors_see_their_own_hospital_and_deployment_auditors_everything() {
        let (tenancy, [a, a1, a2, b, _]) = two_hospitals();
        let rule = AuditorRule {
            hpr_numbers: vec![hpr("9009")],
            deployment_hpr_numbers: vec![hpr("8008")],
            ..AuditorRule::default()
        };
        let auditor = |h: &str, child: Option<&OrgNumber>, parent: Option<&OrgNumber>| {
            auth(
                Principal::Clinician(Clinician {
                    pid: nin("01018512"),
                    hpr_number: hpr(h),
                    security_level: 4,
                    organisation: child.or(parent).cloned(),
                    orgnr_parent: parent.cloned(),
                }),
                &[],
            )
        };
        let mut hospital_a = vec![a.clone(), a1.clone(), a2.clone()];
        hospital_a.sort_unstable_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(
            rule.scope(&auditor("9009", None, Some(&a)), &tenancy),
            Some(AuditScope::Organisations(hospital_a.clone())),
            "by the hospital's org number"
        );
        assert_eq!(
            rule.scope(&auditor("9009", Some(&a2), Some(&a)), &tenancy),
            Some(AuditScope::Organisations(hospital_a)),
            "by one of its clinics"
        );
        assert_eq!(
            rule.scope(&auditor("9009", None, Some(&orgnr("974760673"))), &tenancy),
            Some(AuditScope::Organisations(Vec::new())),
            "an organisation outside the register sees nothing"
        );
        assert_eq!(
            rule.scope(&auditor("8008", None, Some(&b)), &tenancy),
            Some(AuditScope::Everything)
        );
        assert_eq!(rule.scope(&auditor("1001", None, Some(&a)), &tenancy), None);
        assert_eq!(
            rule.scope(&auditor("9009", None, Some(&a)), &Tenancy::default()),
            Some(AuditScope::Everything),
            "without a register an auditor sees the deployment"
        );
    }
}
