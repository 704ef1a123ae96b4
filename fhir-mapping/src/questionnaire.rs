//! PHQ-9 and GAD-7 answers as a QuestionnaireResponse (LOINC item and answer codes), the
//! total score as an Observation (44261-6, 70274-6) with its severity band, derived from
//! the response; and the rule that a PHQ-9 item 9 above 0 is a risk to escalate.

use fhir_sdk::r4b::codes::{ObservationStatus, QuestionnaireResponseStatus};
use fhir_sdk::r4b::resources::{
    Observation, ObservationEffective, ObservationValue, QuestionnaireResponse,
    QuestionnaireResponseItem, QuestionnaireResponseItemAnswer,
    QuestionnaireResponseItemAnswerValue,
};
use fhir_sdk::r4b::types::{CodeableConcept, Reference};

use crate::systems::{self, LOINC, OBSERVATION_CATEGORY};
use crate::{MappingError, date_time, instant};

/// The instruments of the weekly questionnaire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instrument {
    Phq9,
    Gad7,
}

/// LOINC answer codes for 0–3 ("not at all" … "nearly every day").
const ANSWERS: [(&str, &str); 4] = [
    ("LA6568-5", "Not at all"),
    ("LA6569-3", "Several days"),
    ("LA6570-1", "More than half the days"),
    ("LA6571-9", "Nearly every day"),
];

impl Instrument {
    /// By its name as [`Instrument::name`] gives it (`PHQ-9`, `GAD-7`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "PHQ-9" => Some(Self::Phq9),
            "GAD-7" => Some(Self::Gad7),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Phq9 => "PHQ-9",
            Self::Gad7 => "GAD-7",
        }
    }

    /// LOINC panel code (GAD-7's 69737-5 is not confirmed on loinc.org).
    pub fn panel(self) -> &'static str {
        match self {
            Self::Phq9 => "44249-1",
            Self::Gad7 => "69737-5",
        }
    }

    /// LOINC code of the total score.
    pub fn total_code(self) -> &'static str {
        match self {
            Self::Phq9 => "44261-6",
            Self::Gad7 => "70274-6",
        }
    }

    /// LOINC item codes in question order (PHQ-9 items 8 and 9 not confirmed on loinc.org).
    pub fn items(self) -> &'static [&'static str] {
        match self {
            Self::Phq9 => &[
                "44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5",
                "44253-3", "44260-8",
            ],
            Self::Gad7 => &[
                "69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7",
            ],
        }
    }
}

/// The severity bands of the total score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Minimal,
    Mild,
    Moderate,
    ModeratelySevere,
    Severe,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minimal => "minimal",
            Self::Mild => "mild",
            Self::Moderate => "moderate",
            Self::ModeratelySevere => "moderately severe",
            Self::Severe => "severe",
        }
    }
}

/// PHQ-9: 0–4 minimal, 5–9 mild, 10–14 moderate, 15–19 moderately severe, 20–27 severe.
/// GAD-7: 0–4 minimal, 5–9 mild, 10–14 moderate, 15–21 severe.
pub fn severity(instrument: Instrument, total: u8) -> Severity {
    match (instrument, total) {
        (_, 0..=4) => Severity::Minimal,
        (_, 5..=9) => Severity::Mild,
        (_, 10..=14) => Severity::Moderate,
        (Instrument::Phq9, 15..=19) => Severity::ModeratelySevere,
        _ => Severity::Severe,
    }
}

/// One filled-in questionnaire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answers {
    pub instrument: Instrument,
    /// The message id it came in, and the identifier system for responses.
    pub id: String,
    pub identifier_system: String,
    /// Fødselsnummer or D-nummer.
    pub patient: String,
    pub authored_at_ms: i64,
    /// One answer (0–3) per item, in question order.
    pub items: Vec<u8>,
}

impl Answers {
    /// Checks the count and range of the answers; returns the total score.
    pub fn total(&self) -> Result<u8, MappingError> {
        let expected = self.instrument.items().len();
        if self.items.len() != expected {
            return Err(MappingError::AnswerCount {
                instrument: self.instrument.name(),
                expected,
                got: self.items.len(),
            });
        }
        if let Some((item, value)) = self.items.iter().enumerate().find(|(_, v)| **v > 3) {
            return Err(MappingError::AnswerOutOfRange {
                item: item + 1,
                value: *value,
            });
        }
        Ok(self.items.iter().sum())
    }

    /// PHQ-9 item 9 (thoughts of self-harm) above 0: the care team must be alerted at
    /// once and a task must reach the record.
    pub fn needs_escalation(&self) -> bool {
        self.instrument == Instrument::Phq9 && self.items.get(8).is_some_and(|v| *v > 0)
    }
}

pub fn questionnaire_response(answers: &Answers) -> Result<QuestionnaireResponse, MappingError> {
    answers.total()?;
    let items = answers
        .instrument
        .items()
        .iter()
        .zip(&answers.items)
        .map(|(code, value)| {
            let (answer, display) = ANSWERS[usize::from(*value)];
            Ok(Some(
                QuestionnaireResponseItem::builder()
                    .link_id((*code).to_owned())
                    .answer(vec![Some(
                        QuestionnaireResponseItemAnswer::builder()
                            .value(QuestionnaireResponseItemAnswerValue::Coding(
                                systems::coding(LOINC, answer, display)?,
                            ))
                            .build()?,
                    )])
                    .build()?,
            ))
        })
        .collect::<Result<Vec<_>, MappingError>>()?;
    Ok(QuestionnaireResponse::builder()
        .identifier(systems::identifier(
            &answers.identifier_system,
            &answers.id,
        )?)
        .questionnaire(format!("http://loinc.org/q/{}", answers.instrument.panel()))
        .status(QuestionnaireResponseStatus::Completed)
        .subject(patient(&answers.patient)?)
        .authored(date_time(answers.authored_at_ms)?)
        .item(items)
        .build()?)
}

fn patient(number: &str) -> Result<Reference, MappingError> {
    Ok(Reference::builder()
        .identifier(systems::national_id(number)?)
        .build()?)
}

/// The total score, with its severity band as interpretation, derived from `response`
/// (a reference the exporter sets, e.g. the response's `urn:uuid:` in a bundle).
pub fn total_score(answers: &Answers, response: Reference) -> Result<Observation, MappingError> {
    let total = answers.total()?;
    let band = severity(answers.instrument, total);
    let code = CodeableConcept::builder()
        .coding(vec![Some(systems::coding(
            LOINC,
            answers.instrument.total_code(),
            &format!("{} total score", answers.instrument.name()),
        )?)])
        .build()?;
    let category = CodeableConcept::builder()
        .coding(vec![Some(systems::coding(
            OBSERVATION_CATEGORY,
            "survey",
            "Survey",
        )?)])
        .build()?;
    let interpretation = CodeableConcept::builder()
        .text(format!("{} ({})", band.as_str(), answers.instrument.name()))
        .build()?;
    Ok(Observation::builder()
        .identifier(vec![Some(systems::identifier(
            &answers.identifier_system,
            &format!("{}-total", answers.id),
        )?)])
        .status(ObservationStatus::Final)
        .category(vec![Some(category)])
        .code(code)
        .subject(patient(&answers.patient)?)
        .effective(ObservationEffective::DateTime(date_time(
            answers.authored_at_ms,
        )?))
        .issued(instant(answers.authored_at_ms)?)
        .value(ObservationValue::Integer(i32::from(total)))
        .interpretation(vec![Some(interpretation)])
        .derived_from(vec![Some(response)])
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn answers(instrument: Instrument, items: Vec<u8>) -> Answers {
        Answers {
            instrument,
            id: "5f0e9d8c-7b6a-4958-8372-6a5b4c3d2e1f".into(),
            identifier_system: "urn:icbt-gateway:questionnaire-response".into(),
            patient: "01018512366".into(),
            authored_at_ms: 1_795_440_000_000,
            items,
        }
    }

    #[test]
    fn bands_follow_the_published_cut_offs() {
        use Severity::*;
        for (total, band) in [
            (0, Minimal),
            (4, Minimal),
            (5, Mild),
            (9, Mild),
            (10, Moderate),
            (14, Moderate),
            (15, ModeratelySevere),
            (19, ModeratelySevere),
            (20, Severe),
            (27, Severe),
        ] {
            assert_eq!(severity(Instrument::Phq9, total), band, "PHQ-9 {total}");
        }
        for (total, band) in [
            (4, Minimal),
            (5, Mild),
            (10, Moderate),
            (14, Moderate),
            (15, Severe),
            (21, Severe),
        ] {
            assert_eq!(severity(Instrument::Gad7, total), band, "GAD-7 {total}");
        }
    }

    #[test]
    fn item_nine_above_zero_is_a_risk() {
        let mut items = vec![0; 9];
        assert!(!answers(Instrument::Phq9, items.clone()).needs_escalation());
        items[8] = 1;
        assert!(answers(Instrument::Phq9, items).needs_escalation());
        assert!(!answers(Instrument::Gad7, vec![3; 7]).needs_escalation());
    }

    #[test]
    fn maps_items_answers_and_the_total() {
        let a = answers(Instrument::Phq9, vec![1, 2, 3, 0, 1, 2, 3, 0, 1]);
        let qr = serde_json::to_value(questionnaire_response(&a).unwrap()).unwrap();
        assert_eq!(qr["resourceType"], "QuestionnaireResponse");
        assert_eq!(qr["status"], "completed");
        assert_eq!(qr["item"][0]["linkId"], "44250-9");
        assert_eq!(
            qr["item"][2]["answer"][0]["valueCoding"]["code"],
            "LA6571-9"
        );
        assert_eq!(qr["item"].as_array().unwrap().len(), 9);
        let reference = Reference::builder()
            .reference("urn:uuid:1".to_owned())
            .build()
            .unwrap();
        let obs = serde_json::to_value(total_score(&a, reference).unwrap()).unwrap();
        assert_eq!(obs["code"]["coding"][0]["code"], "44261-6");
        assert_eq!(obs["valueInteger"], 13);
        assert_eq!(obs["interpretation"][0]["text"], "moderate (PHQ-9)");
        assert_eq!(obs["derivedFrom"][0]["reference"], "urn:uuid:1");
        assert_eq!(obs["category"][0]["coding"][0]["code"], "survey");
    }

    #[test]
    fn refuses_wrong_counts_and_values() {
        assert!(matches!(
            answers(Instrument::Gad7, vec![0; 9]).total(),
            Err(MappingError::AnswerCount {
                expected: 7,
                got: 9,
                ..
            })
        ));
        assert_eq!(
            answers(Instrument::Gad7, vec![0, 0, 4, 0, 0, 0, 0]).total(),
            Err(MappingError::AnswerOutOfRange { item: 3, value: 4 })
        );
    }

    proptest! {
        #[test]
        fn every_response_and_score_serialises_and_parses_back_equal(
            phq in any::<bool>(),
            items in proptest::collection::vec(0u8..=3, 9),
            at in 0i64..4_000_000_000_000,
        ) {
            let (instrument, n) = if phq { (Instrument::Phq9, 9) } else { (Instrument::Gad7, 7) };
            let mut a = answers(instrument, items[..n].to_vec());
            a.authored_at_ms = at;
            let qr = questionnaire_response(&a).unwrap();
            let back: QuestionnaireResponse = serde_json::from_str(&serde_json::to_string(&qr).unwrap()).unwrap();
            prop_assert_eq!(back, qr);
            let reference = Reference::builder().reference("urn:uuid:qr".to_owned()).build().unwrap();
            let obs = total_score(&a, reference).unwrap();
            let back: Observation = serde_json::from_str(&serde_json::to_string(&obs).unwrap()).unwrap();
            prop_assert_eq!(&back, &obs);
            let total: u8 = a.items.iter().sum();
            prop_assert_eq!(serde_json::to_value(&obs).unwrap()["valueInteger"].as_u64(), Some(u64::from(total)));
        }
    }
}
