//! A treatment episode as an EpisodeOfCare: the clinic's identifier for it, its status and
//! period, the patient by national id, the clinic by organisation number, and the care
//! team by HPR number (a contained CareTeam; the first therapist is the care manager).

use fhir_sdk::r4b::codes::{CareTeamStatus, EpisodeOfCareStatus};
use fhir_sdk::r4b::resources::{CareTeam, CareTeamParticipant, EpisodeOfCare, Resource};
use fhir_sdk::r4b::types::{Period, Reference};

use crate::systems::{self, HPR, ORGANISATION};
use crate::{MappingError, date_time};

/// Where an episode is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Planned,
    Active,
    Finished,
    Cancelled,
}

/// What the gateway knows of an episode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpisodeRecord {
    /// The episode's id (a UUID) and the identifier system it is known by at the clinic.
    pub id: String,
    pub identifier_system: String,
    pub state: State,
    pub started_at_ms: i64,
    /// When it was finished or cancelled.
    pub ended_at_ms: Option<i64>,
    /// Fødselsnummer or D-nummer.
    pub patient: String,
    /// The clinic's organisation number.
    pub organisation: String,
    /// Therapists by HPR number; the first is the care manager.
    pub therapists: Vec<String>,
}

const CARE_TEAM_ID: &str = "care-team";

pub fn episode_of_care(record: &EpisodeRecord) -> Result<EpisodeOfCare, MappingError> {
    let status = match record.state {
        State::Planned => EpisodeOfCareStatus::Planned,
        State::Active => EpisodeOfCareStatus::Active,
        State::Finished => EpisodeOfCareStatus::Finished,
        State::Cancelled => EpisodeOfCareStatus::Cancelled,
    };
    let mut period = Period::builder().start(date_time(record.started_at_ms)?);
    if let Some(end) = record.ended_at_ms {
        period = period.end(date_time(end)?);
    }
    let mut builder = EpisodeOfCare::builder()
        .identifier(vec![Some(systems::identifier(
            &record.identifier_system,
            &record.id,
        )?)])
        .status(status)
        .patient(
            Reference::builder()
                .identifier(systems::national_id(&record.patient)?)
                .build()?,
        )
        .managing_organization(systems::by_identifier(ORGANISATION, &record.organisation)?)
        .period(period.build()?);
    if let Some(first) = record.therapists.first() {
        let participants = record
            .therapists
            .iter()
            .map(|hpr| {
                Ok(Some(
                    CareTeamParticipant::builder()
                        .member(systems::by_identifier(HPR, hpr)?)
                        .build()?,
                ))
            })
            .collect::<Result<Vec<_>, MappingError>>()?;
        let team = CareTeam::builder()
            .id(CARE_TEAM_ID.to_owned())
            .status(match record.state {
                State::Planned => CareTeamStatus::Proposed,
                State::Active => CareTeamStatus::Active,
                State::Finished | State::Cancelled => CareTeamStatus::Inactive,
            })
            .participant(participants)
            .build()?;
        builder = builder
            .contained(vec![Resource::CareTeam(team)])
            .care_manager(systems::by_identifier(HPR, first)?)
            .team(vec![Some(
                Reference::builder()
                    .reference(format!("#{CARE_TEAM_ID}"))
                    .build()?,
            )]);
    }
    Ok(builder.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> EpisodeRecord {
        EpisodeRecord {
            id: "0b1f6a52-8d2e-4c3b-9f1a-7e6d5c4b3a21".into(),
            identifier_system: "urn:icbt-gateway:episode".into(),
            state: State::Active,
            started_at_ms: 1_795_440_000_000,
            ended_at_ms: None,
            patient: "01018512366".into(),
            organisation: "974589095".into(),
            therapists: vec!["565501872".into(), "100000001".into()],
        }
    }

    #[test]
    fn maps_identifiers_status_and_team() {
        let json = serde_json::to_value(episode_of_care(&record()).unwrap()).unwrap();
        assert_eq!(json["resourceType"], "EpisodeOfCare");
        assert_eq!(json["status"], "active");
        assert_eq!(json["patient"]["identifier"]["system"], systems::FNR);
        assert_eq!(json["patient"]["identifier"]["value"], "01018512366");
        assert_eq!(
            json["managingOrganization"]["identifier"]["system"],
            ORGANISATION
        );
        assert_eq!(json["careManager"]["identifier"]["value"], "565501872");
        assert_eq!(json["team"][0]["reference"], "#care-team");
        assert_eq!(json["contained"][0]["resourceType"], "CareTeam");
        assert_eq!(
            json["contained"][0]["participant"][1]["member"]["identifier"]["system"],
            HPR
        );
        assert_eq!(json["period"]["start"], "2026-11-23T13:20:00Z");
    }

    #[test]
    fn a_d_number_gets_its_own_system_and_a_bad_number_is_refused() {
        let mut r = record();
        r.patient = "41018512366".into();
        let json = serde_json::to_value(episode_of_care(&r).unwrap()).unwrap();
        assert_eq!(json["patient"]["identifier"]["system"], systems::DNR);
        r.patient = "123".into();
        assert_eq!(
            episode_of_care(&r).unwrap_err(),
            MappingError::NationalId("patient")
        );
    }

    proptest! {
        #[test]
        fn every_episode_serialises_and_parses_back_equal(
            state in prop_oneof![Just(State::Planned), Just(State::Active), Just(State::Finished), Just(State::Cancelled)],
            start in 0i64..4_000_000_000_000,
            length in proptest::option::of(0i64..100_000_000_000),
            therapists in proptest::collection::vec("[0-9]{9}", 0..4),
        ) {
            let mut r = record();
            r.state = state;
            r.started_at_ms = start;
            r.ended_at_ms = length.map(|l| start + l);
            r.therapists = therapists;
            let resource = episode_of_care(&r).unwrap();
            let text = serde_json::to_string(&resource).unwrap();
            let back: EpisodeOfCare = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(back, resource);
        }
    }
}
