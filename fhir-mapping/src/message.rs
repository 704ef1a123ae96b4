//! A message or therapist feedback, opened by the exporter, as a virtual Encounter in the
//! episode and a Communication in that encounter; and the risk Task that a PHQ-9 item 9
//! above 0 puts in front of the care team.

use fhir_sdk::r4b::codes::{EncounterStatus, EventStatus, RequestPriority, TaskIntent, TaskStatus};
use fhir_sdk::r4b::resources::{
    Communication, CommunicationPayload, CommunicationPayloadContent, Encounter,
    EncounterParticipant, Task,
};
use fhir_sdk::r4b::types::{CodeableConcept, Period, Reference};

use crate::systems::{self, HPR};
use crate::{MappingError, date_time};

/// HL7 v3 `ActCode`: the encounter class of a remote contact.
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// Who wrote or receives a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Party {
    /// The patient, by national id.
    Patient(String),
    /// A therapist, by HPR number.
    Therapist(String),
    /// The clinic (a system notice), by organisation number.
    Organisation(String),
}

impl Party {
    fn reference(&self) -> Result<Reference, MappingError> {
        match self {
            Self::Patient(number) => Ok(Reference::builder()
                .identifier(systems::national_id(number)?)
                .build()?),
            Self::Therapist(hpr) => systems::by_identifier(HPR, hpr),
            Self::Organisation(org) => systems::by_identifier(systems::ORGANISATION, org),
        }
    }
}

/// An opened message, with what the gateway knows about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRecord {
    /// The message id and the identifier system for messages.
    pub id: String,
    pub identifier_system: String,
    /// The episode's identifier (as in its EpisodeOfCare).
    pub episode_id: String,
    pub episode_system: String,
    /// `message` or `feedback`.
    pub kind: String,
    pub patient: String,
    pub sender: Party,
    pub recipients: Vec<Party>,
    pub sent_at_ms: i64,
    pub text: String,
    /// The message this one answers, if any.
    pub in_response_to: Option<String>,
}

/// The virtual encounter the message belongs to, linked to the episode.
pub fn encounter(m: &MessageRecord) -> Result<Encounter, MappingError> {
    let mut participants = vec![m.sender.clone()];
    participants.extend(m.recipients.iter().cloned());
    let participant = participants
        .iter()
        .filter(|p| matches!(p, Party::Therapist(_)))
        .map(|p| {
            Ok(Some(
                EncounterParticipant::builder()
                    .individual(p.reference()?)
                    .build()?,
            ))
        })
        .collect::<Result<Vec<_>, MappingError>>()?;
    Ok(Encounter::builder()
        .identifier(vec![Some(systems::identifier(
            &m.identifier_system,
            &format!("{}-encounter", m.id),
        )?)])
        .status(EncounterStatus::Finished)
        .class(systems::coding(ACT_CODE, "VR", "virtual")?)
        .subject(Party::Patient(m.patient.clone()).reference()?)
        .episode_of_care(vec![Some(systems::by_identifier(
            &m.episode_system,
            &m.episode_id,
        )?)])
        .participant(participant)
        .period(
            Period::builder()
                .start(date_time(m.sent_at_ms)?)
                .end(date_time(m.sent_at_ms)?)
                .build()?,
        )
        .build()?)
}

/// The message itself, in `encounter` (a reference the exporter sets, e.g. `urn:uuid:`).
pub fn communication(
    m: &MessageRecord,
    encounter: Reference,
) -> Result<Communication, MappingError> {
    let recipients = m
        .recipients
        .iter()
        .map(|p| Ok(Some(p.reference()?)))
        .collect::<Result<Vec<_>, MappingError>>()?;
    let mut builder = Communication::builder()
        .identifier(vec![Some(systems::identifier(
            &m.identifier_system,
            &m.id,
        )?)])
        .status(EventStatus::Completed)
        .category(vec![Some(
            CodeableConcept::builder().text(m.kind.clone()).build()?,
        )])
        .subject(Party::Patient(m.patient.clone()).reference()?)
        .encounter(encounter)
        .sent(date_time(m.sent_at_ms)?)
        .sender(m.sender.reference()?)
        .recipient(recipients)
        .payload(vec![Some(
            CommunicationPayload::builder()
                .content(CommunicationPayloadContent::String(m.text.clone()))
                .build()?,
        )]);
    if let Some(earlier) = &m.in_response_to {
        builder = builder.in_response_to(vec![Some(systems::by_identifier(
            &m.identifier_system,
            earlier,
        )?)]);
    }
    Ok(builder.build()?)
}

/// The task a PHQ-9 item 9 above 0 creates for the care team: urgent, about the
/// response (`focus`), for the patient, owned by the care manager.
pub fn risk_task(
    identifier: (&str, &str),
    patient: &str,
    care_manager_hpr: &str,
    response: Reference,
    authored_at_ms: i64,
) -> Result<Task, MappingError> {
    Ok(Task::builder()
        .identifier(vec![Some(systems::identifier(identifier.0, identifier.1)?)])
        .status(TaskStatus::Requested)
        .intent(TaskIntent::_Custom("order".to_owned()))
        .priority(RequestPriority::Urgent)
        .code(
            CodeableConcept::builder()
                .text("Risk escalation: PHQ-9 item 9 (thoughts of self-harm) above 0".to_owned())
                .build()?,
        )
        .description("Review the patient's risk now and contact the patient.".to_owned())
        .focus(response)
        .r#for(Party::Patient(patient.to_owned()).reference()?)
        .owner(systems::by_identifier(HPR, care_manager_hpr)?)
        .authored_on(date_time(authored_at_ms)?)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(text: &str) -> MessageRecord {
        MessageRecord {
            id: "9d2e6a0e-1f57-4c55-8a8e-0b9b6f5b8e21".into(),
            identifier_system: "urn:icbt-gateway:message".into(),
            episode_id: "4b0c8a51-5d43-4d0e-9a57-2f2a5f0a7c11".into(),
            episode_system: "urn:icbt-gateway:episode".into(),
            kind: "feedback".into(),
            patient: "01018512366".into(),
            sender: Party::Therapist("565501872".into()),
            recipients: vec![Party::Patient("01018512366".into())],
            sent_at_ms: 1_795_440_000_000,
            text: text.into(),
            in_response_to: Some("5f0e9d8c-7b6a-4958-8372-6a5b4c3d2e1f".into()),
        }
    }

    #[test]
    fn maps_a_feedback_to_a_virtual_encounter_and_a_communication() {
        let m = message("Uke 3: godt jobbet");
        let e = serde_json::to_value(encounter(&m).unwrap()).unwrap();
        assert_eq!(e["class"]["code"], "VR");
        assert_eq!(e["episodeOfCare"][0]["identifier"]["value"], m.episode_id);
        assert_eq!(
            e["participant"][0]["individual"]["identifier"]["system"],
            HPR
        );
        let reference = Reference::builder()
            .reference("urn:uuid:e".to_owned())
            .build()
            .unwrap();
        let c = serde_json::to_value(communication(&m, reference).unwrap()).unwrap();
        assert_eq!(c["status"], "completed");
        assert_eq!(c["payload"][0]["contentString"], "Uke 3: godt jobbet");
        assert_eq!(c["sender"]["identifier"]["value"], "565501872");
        assert_eq!(c["recipient"][0]["identifier"]["system"], systems::FNR);
        assert_eq!(
            c["inResponseTo"][0]["identifier"]["value"],
            "5f0e9d8c-7b6a-4958-8372-6a5b4c3d2e1f"
        );
        assert_eq!(c["encounter"]["reference"], "urn:uuid:e");
    }

    #[test]
    fn the_risk_task_is_urgent_for_the_care_manager() {
        let focus = Reference::builder()
            .reference("urn:uuid:qr".to_owned())
            .build()
            .unwrap();
        let t = serde_json::to_value(
            risk_task(("urn:t", "m-risk"), "01018512366", "565501872", focus, 0).unwrap(),
        )
        .unwrap();
        assert_eq!(t["resourceType"], "Task");
        assert_eq!(t["intent"], "order");
        assert_eq!(t["priority"], "urgent");
        assert_eq!(t["owner"]["identifier"]["value"], "565501872");
        assert_eq!(t["for"]["identifier"]["value"], "01018512366");
    }

    proptest! {
        #[test]
        fn every_message_serialises_and_parses_back_equal(text in "\\PC{0,200}", at in 0i64..4_000_000_000_000) {
            let mut m = message(&text);
            m.sent_at_ms = at;
            let e = encounter(&m).unwrap();
            prop_assert_eq!(&serde_json::from_str::<Encounter>(&serde_json::to_string(&e).unwrap()).unwrap(), &e);
            let reference = Reference::builder().reference("urn:uuid:e".to_owned()).build().unwrap();
            let c = communication(&m, reference).unwrap();
            prop_assert_eq!(&serde_json::from_str::<Communication>(&serde_json::to_string(&c).unwrap()).unwrap(), &c);
        }
    }
}
