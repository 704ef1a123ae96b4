//! The treatment summary at the end of an episode: a short plain-text document (Norwegian
//! bokmål) and the IHE MHD ITI-65 "provide document bundle" that publishes it to the
//! summary record: the SubmissionSet `List`, the `DocumentReference`, the document as a
//! `Binary`, and the `Patient` by national id. All but the Binary are conditional creates;
//! the Binary has no identifier, so a publisher asks for the DocumentReference
//! ([`document_query`]) before it sends the bundle again.

use std::fmt::Write as _;

use fhir_sdk::r4b::codes::{DocumentReferenceStatus, ListMode, ListStatus};
use fhir_sdk::r4b::resources::{
    Binary, Bundle, DocumentReference, DocumentReferenceContent, DocumentReferenceContext, List,
    ListEntry, Patient,
};
use fhir_sdk::r4b::types::{Attachment, CodeableConcept, Period, Reference};

use crate::bundle::{Transaction, full_url, identifier_query, to_entry};
use crate::episode::{EpisodeRecord, State};
use crate::questionnaire::{Instrument, severity};
use crate::systems::{self, ORGANISATION};
use crate::{MappingError, date_time, instant};

/// IHE MHD list types.
const MHD_LIST_TYPES: &str = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes";
/// HL7 v3 confidentiality codes.
const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
/// An identifier whose value is a URI (`urn:uuid:…`): the document's unique id.
const URI: &str = "urn:ietf:rfc:3986";

/// One questionnaire total, for the score trajectory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Score {
    pub instrument: Instrument,
    pub authored_at_ms: i64,
    pub total: u8,
}

/// What the summary says about an episode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryRecord {
    pub episode: EpisodeRecord,
    pub programme: String,
    pub clinic_name: String,
    /// Messages the patient wrote and feedback the therapists gave.
    pub patient_messages: u32,
    pub feedback: u32,
    /// Every questionnaire total, in any order.
    pub scores: Vec<Score>,
}

/// The document codes the summary record expects (configuration: volven 9602 and the
/// confidentiality label).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentCodes {
    pub system: String,
    pub type_code: String,
    pub type_display: String,
    pub category_code: String,
    pub category_display: String,
    /// HL7 v3 confidentiality: `N` normal, `R` restricted, `V` very restricted.
    pub confidentiality: String,
}

fn day(ms: i64) -> String {
    fhir_sdk::time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_or_else(|_| "?".to_owned(), |t| t.date().to_string())
}

/// The summary as plain text.
pub fn summary_text(record: &SummaryRecord) -> String {
    let e = &record.episode;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Behandlingsoppsummering: internettbasert kognitiv terapi"
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Program: {}", record.programme);
    let _ = writeln!(
        out,
        "Behandlingssted: {} (org.nr. {})",
        record.clinic_name, e.organisation
    );
    let end = e.ended_at_ms.map_or_else(|| "pågår".to_owned(), day);
    let _ = writeln!(out, "Periode: {} til {}", day(e.started_at_ms), end);
    let status = match e.state {
        State::Finished => "fullført",
        State::Cancelled => "avbrutt",
        State::Active => "aktiv",
        State::Planned => "planlagt",
    };
    let _ = writeln!(out, "Status: {status}");
    let _ = writeln!(out, "Behandlere (HPR-nr.): {}", e.therapists.join(", "));
    let _ = writeln!(
        out,
        "Meldinger fra pasienten: {}; skriftlige tilbakemeldinger fra behandler: {}",
        record.patient_messages, record.feedback
    );
    for instrument in [Instrument::Phq9, Instrument::Gad7] {
        let mut scores: Vec<&Score> = record
            .scores
            .iter()
            .filter(|s| s.instrument == instrument)
            .collect();
        scores.sort_by_key(|s| s.authored_at_ms);
        let (Some(first), Some(last)) = (scores.first(), scores.last()) else {
            let _ = writeln!(out, "{}: ikke besvart", instrument.name());
            continue;
        };
        let _ = writeln!(
            out,
            "{}: {} besvarelser; første {} ({}, {}), siste {} ({}, {})",
            instrument.name(),
            scores.len(),
            first.total,
            severity(instrument, first.total).as_str(),
            day(first.authored_at_ms),
            last.total,
            severity(instrument, last.total).as_str(),
            day(last.authored_at_ms),
        );
    }
    out
}

fn concept(system: &str, code: &str, display: &str) -> Result<CodeableConcept, MappingError> {
    Ok(CodeableConcept::builder()
        .coding(vec![Some(systems::coding(system, code, display)?)])
        .build()?)
}

/// The search that finds the summary DocumentReference of `episode_id`, if published.
pub fn document_query(document_system: &str, episode_id: &str) -> String {
    identifier_query(document_system, &format!("{episode_id}-summary"))
}

/// The ITI-65 transaction publishing the summary of `record`, written at `created_at_ms`.
/// `document_system` is the identifier system of our documents and submission sets.
pub fn provide_document_bundle(
    record: &SummaryRecord,
    codes: &DocumentCodes,
    document_system: &str,
    created_at_ms: i64,
) -> Result<Bundle, MappingError> {
    let e = &record.episode;
    let key = format!("{}-summary", e.id);
    let text = summary_text(record);
    let size = u32::try_from(text.len()).unwrap_or(u32::MAX);

    let patient_id = systems::national_id(&e.patient)?;
    let patient_query =
        identifier_query(patient_id.system.as_deref().unwrap_or_default(), &e.patient);
    let patient_url = full_url(&key, "patient");
    let binary_url = full_url(&key, "binary");
    let document_url = full_url(&key, "document");
    let set_url = full_url(&key, "submission-set");

    let patient = Patient::builder()
        .identifier(vec![Some(patient_id)])
        .build()?;
    // A Binary has no identifier to make its create conditional: the exporter looks the
    // DocumentReference up first and sends this bundle only when it is not there yet.
    let binary = Binary::builder()
        .content_type("text/plain".to_owned())
        .data(fhir_sdk::Base64Binary(text.clone().into_bytes()))
        .build()?;

    let document = document_reference(
        record,
        codes,
        (document_system, &key),
        (&document_url, &patient_url, &binary_url),
        size,
        created_at_ms,
    )?;

    let set_key = format!("{}-submission-set", e.id);
    let submission_set = List::builder()
        .identifier(vec![
            Some(systems::identifier(document_system, &set_key)?),
            Some(systems::identifier(URI, &set_url)?),
        ])
        .status(ListStatus::Current)
        .mode(ListMode::Working)
        .title("Behandlingsoppsummering".to_owned())
        .code(concept(
            MHD_LIST_TYPES,
            "submissionset",
            "SubmissionSet as a FHIR List",
        )?)
        .subject(to_entry(&patient_url)?)
        .date(date_time(created_at_ms)?)
        .source(systems::by_identifier(ORGANISATION, &e.organisation)?)
        .entry(vec![Some(
            ListEntry::builder()
                .item(
                    Reference::builder()
                        .reference(document_url.clone())
                        .build()?,
                )
                .build()?,
        )])
        .build()?;

    let mut t = Transaction::new();
    t.create(&patient_url, patient, patient_query)?
        .create_always(&binary_url, binary)?
        .create(
            &document_url,
            document,
            document_query(document_system, &e.id),
        )?
        .create(
            &set_url,
            submission_set,
            identifier_query(document_system, &set_key),
        )?;
    t.into_bundle()
}

/// The DocumentReference: `urls` are the document's own, the patient's and the Binary's.
fn document_reference(
    record: &SummaryRecord,
    codes: &DocumentCodes,
    (document_system, key): (&str, &str),
    (document_url, patient_url, binary_url): (&str, &str, &str),
    size: u32,
    created_at_ms: i64,
) -> Result<DocumentReference, MappingError> {
    let e = &record.episode;
    let mut period = Period::builder().start(date_time(e.started_at_ms)?);
    if let Some(end) = e.ended_at_ms {
        period = period.end(date_time(end)?);
    }
    Ok(DocumentReference::builder()
        .master_identifier(systems::identifier(URI, document_url)?)
        .identifier(vec![Some(systems::identifier(document_system, key)?)])
        .status(DocumentReferenceStatus::Current)
        .r#type(concept(
            &codes.system,
            &codes.type_code,
            &codes.type_display,
        )?)
        .category(vec![Some(concept(
            &codes.system,
            &codes.category_code,
            &codes.category_display,
        )?)])
        .subject(to_entry(patient_url)?)
        .date(instant(created_at_ms)?)
        .author(vec![Some(systems::by_identifier(
            ORGANISATION,
            &e.organisation,
        )?)])
        .description(format!("Behandlingsoppsummering, {}", record.programme))
        .security_label(vec![Some(concept(
            CONFIDENTIALITY,
            &codes.confidentiality,
            &codes.confidentiality,
        )?)])
        .content(vec![Some(
            DocumentReferenceContent::builder()
                .attachment(
                    Attachment::builder()
                        .content_type("text/plain".to_owned())
                        .language("nb".to_owned())
                        .url(binary_url.to_owned())
                        .size(size)
                        .title("Behandlingsoppsummering".to_owned())
                        .creation(date_time(created_at_ms)?)
                        .build()?,
                )
                .build()?,
        )])
        .context(
            DocumentReferenceContext::builder()
                .period(period.build()?)
                .build()?,
        )
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SummaryRecord {
        SummaryRecord {
            episode: EpisodeRecord {
                id: "4b0c8a51-5d43-4d0e-9a57-2f2a5f0a7c11".into(),
                identifier_system: "urn:icbt-gateway:episode".into(),
                state: State::Finished,
                started_at_ms: 1_790_000_000_000,
                ended_at_ms: Some(1_798_000_000_000),
                patient: "01018512366".into(),
                organisation: "974633574".into(),
                therapists: vec!["565501872".into()],
            },
            programme: "Depresjon, 14 uker".into(),
            clinic_name: "Nettklinikken".into(),
            patient_messages: 12,
            feedback: 14,
            scores: vec![
                Score {
                    instrument: Instrument::Phq9,
                    authored_at_ms: 1_797_000_000_000,
                    total: 6,
                },
                Score {
                    instrument: Instrument::Phq9,
                    authored_at_ms: 1_790_100_000_000,
                    total: 17,
                },
            ],
        }
    }

    fn codes() -> DocumentCodes {
        DocumentCodes {
            system: "urn:oid:2.16.578.1.12.4.1.1.9602".into(),
            type_code: "J01-2".into(),
            type_display: "Sammenfatning av journal".into(),
            category_code: "J01".into(),
            category_display: "Epikriser og sammenfatninger".into(),
            confidentiality: "R".into(),
        }
    }

    #[test]
    fn the_summary_gives_the_trajectory_in_time_order() {
        let text = summary_text(&record());
        assert!(
            text.contains("PHQ-9: 2 besvarelser; første 17 (moderately severe"),
            "{text}"
        );
        assert!(text.contains("siste 6 (mild"), "{text}");
        assert!(text.contains("GAD-7: ikke besvart"), "{text}");
        assert!(text.contains("Status: fullført"), "{text}");
        assert!(!text.contains("01018512366"), "no national id in the text");
    }

    #[test]
    fn the_iti65_bundle_links_list_document_binary_and_patient() {
        let bundle =
            provide_document_bundle(&record(), &codes(), "urn:icbt:doc", 1_798_000_000_000)
                .unwrap();
        let json = serde_json::to_value(&bundle).unwrap();
        let entries = json["entry"].as_array().unwrap();
        let types: Vec<&str> = entries
            .iter()
            .map(|e| e["resource"]["resourceType"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["Patient", "Binary", "DocumentReference", "List"]);
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(entry["request"]["ifNoneExist"].is_string(), i != 1, "{i}");
        }
        let document = &entries[2]["resource"];
        assert_eq!(
            document["content"][0]["attachment"]["url"],
            entries[1]["fullUrl"]
        );
        assert_eq!(document["subject"]["reference"], entries[0]["fullUrl"]);
        assert_eq!(document["securityLabel"][0]["coding"][0]["code"], "R");
        assert_eq!(
            entries[3]["resource"]["entry"][0]["item"]["reference"],
            entries[2]["fullUrl"]
        );
        assert_eq!(
            entries[3]["resource"]["code"]["coding"][0]["code"],
            "submissionset"
        );
        let again = provide_document_bundle(&record(), &codes(), "urn:icbt:doc", 1_798_000_000_000)
            .unwrap();
        assert_eq!(bundle, again, "a retry sends the same bundle");
        let parsed: Bundle = serde_json::from_value(json).unwrap();
        assert_eq!(parsed, bundle);
    }
}
