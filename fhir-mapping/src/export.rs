//! What one exported record becomes: a transaction bundle that the EPJ may receive any
//! number of times with one result. Episode state goes by conditional update on the
//! episode's identifier; everything else is a conditional create on its own identifier.

use fhir_sdk::r4b::resources::Bundle;

use crate::MappingError;
use crate::bundle::{Transaction, full_url, identifier_query, to_entry};
use crate::episode::{EpisodeRecord, episode_of_care};
use crate::message::{MessageRecord, communication, encounter, risk_task};
use crate::questionnaire::{Answers, questionnaire_response, total_score};

/// The EpisodeOfCare as it is now: created the first time, replaced after.
pub fn episode_bundle(record: &EpisodeRecord) -> Result<Bundle, MappingError> {
    let mut t = Transaction::new();
    t.upsert(
        &full_url(&record.id, "episode"),
        episode_of_care(record)?,
        &identifier_query(&record.identifier_system, &record.id),
    )?;
    t.into_bundle()
}

/// A message or feedback: its virtual Encounter and the Communication in it.
pub fn message_bundle(record: &MessageRecord) -> Result<Bundle, MappingError> {
    let encounter_url = full_url(&record.id, "encounter");
    let mut t = Transaction::new();
    t.create(
        &encounter_url,
        encounter(record)?,
        identifier_query(
            &record.identifier_system,
            &format!("{}-encounter", record.id),
        ),
    )?
    .create(
        &full_url(&record.id, "communication"),
        communication(record, to_entry(&encounter_url)?)?,
        identifier_query(&record.identifier_system, &record.id),
    )?;
    t.into_bundle()
}

/// A questionnaire: the response, its total-score Observation and, when PHQ-9 item 9 is
/// above 0, the urgent Task for `care_manager` (HPR number; the first therapist).
pub fn questionnaire_bundle(
    answers: &Answers,
    care_manager: Option<&str>,
) -> Result<Bundle, MappingError> {
    let response_url = full_url(&answers.id, "response");
    let system = &answers.identifier_system;
    let mut t = Transaction::new();
    t.create(
        &response_url,
        questionnaire_response(answers)?,
        identifier_query(system, &answers.id),
    )?
    .create(
        &full_url(&answers.id, "total"),
        total_score(answers, to_entry(&response_url)?)?,
        identifier_query(system, &format!("{}-total", answers.id)),
    )?;
    if answers.needs_escalation() {
        let owner = care_manager.ok_or_else(|| {
            MappingError::Incomplete("a risk task needs a care manager in the care team".into())
        })?;
        let task_id = format!("{}-risk", answers.id);
        t.create(
            &full_url(&answers.id, "risk"),
            risk_task(
                (system, &task_id),
                &answers.patient,
                owner,
                to_entry(&response_url)?,
                answers.authored_at_ms,
            )?,
            identifier_query(system, &task_id),
        )?;
    }
    t.into_bundle()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Party;
    use crate::questionnaire::Instrument;
    use proptest::prelude::*;

    fn answers(items: Vec<u8>) -> Answers {
        Answers {
            instrument: Instrument::Phq9,
            id: "9d2e6a0e-1f57-4c55-8a8e-0b9b6f5b8e21".into(),
            identifier_system: "urn:icbt:message".into(),
            patient: "01018512366".into(),
            authored_at_ms: 1_795_440_000_000,
            items,
        }
    }

    fn types(bundle: &Bundle) -> Vec<String> {
        serde_json::to_value(bundle).unwrap()["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn item_nine_above_zero_adds_the_task_and_needs_a_care_manager() {
        let calm = questionnaire_bundle(&answers(vec![1, 1, 1, 1, 1, 1, 1, 1, 0]), None).unwrap();
        assert_eq!(types(&calm), ["QuestionnaireResponse", "Observation"]);
        let risk = answers(vec![1, 1, 1, 1, 1, 1, 1, 1, 1]);
        let bundle = questionnaire_bundle(&risk, Some("565501872")).unwrap();
        assert_eq!(
            types(&bundle),
            ["QuestionnaireResponse", "Observation", "Task"]
        );
        let json = serde_json::to_value(&bundle).unwrap();
        assert_eq!(
            json["entry"][2]["resource"]["focus"]["reference"],
            json["entry"][0]["fullUrl"]
        );
        assert_eq!(
            json["entry"][1]["resource"]["derivedFrom"][0]["reference"],
            json["entry"][0]["fullUrl"]
        );
        assert!(matches!(
            questionnaire_bundle(&risk, None),
            Err(MappingError::Incomplete(_))
        ));
    }

    #[test]
    fn a_message_becomes_an_encounter_and_a_communication_in_it() {
        let m = MessageRecord {
            id: "m1".into(),
            identifier_system: "urn:icbt:message".into(),
            episode_id: "e1".into(),
            episode_system: "urn:icbt:episode".into(),
            kind: "message".into(),
            patient: "01018512366".into(),
            sender: Party::Patient("01018512366".into()),
            recipients: vec![Party::Therapist("565501872".into())],
            sent_at_ms: 1_795_440_000_000,
            text: "Hei".into(),
            in_response_to: None,
        };
        let json = serde_json::to_value(message_bundle(&m).unwrap()).unwrap();
        assert_eq!(
            json["entry"][1]["resource"]["encounter"]["reference"],
            json["entry"][0]["fullUrl"]
        );
        assert_eq!(
            json["entry"][1]["request"]["ifNoneExist"],
            "identifier=urn%3Aicbt%3Amessage%7Cm1"
        );
    }

    proptest! {
        #[test]
        fn questionnaire_bundles_round_trip(items in proptest::collection::vec(0u8..=3, 9)) {
            let bundle = questionnaire_bundle(&answers(items), Some("565501872")).unwrap();
            let text = serde_json::to_string(&bundle).unwrap();
            let back: Bundle = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(back, bundle);
        }
    }
}
