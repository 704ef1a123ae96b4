//! Mapping from icbt-gateway records to FHIR R4 resources (fhir-sdk's R4B models, which
//! serialise as R4-compatible JSON).
//!
//! Owns: the identifier systems and codes ([`systems`], listed in `docs/export.md`),
//! treatment episodes as EpisodeOfCare ([`episode::episode_of_care`]), PHQ-9 and GAD-7
//! answers as QuestionnaireResponse with a total-score Observation and its severity band
//! ([`questionnaire`]), the risk rule for PHQ-9 item 9 and its Task, and opened messages
//! as a virtual Encounter with a Communication ([`message`]).
//!
//! Must not know about: I/O of any kind (no HTTP, no database, no clock reads). Values in,
//! values out, so every mapping is tested without a server.
//!
//! The inner format of an opened message ([`content::Content`]), the treatment summary and
//! its ITI-65 bundle ([`summary`]), and transaction bundles whose entries are conditional
//! creates or updates ([`bundle::Transaction`]), so a retried export never duplicates.
//!
//! A reader starts at [`episode::EpisodeRecord`] and [`questionnaire::Answers`].

pub mod bundle;
pub mod content;
pub mod episode;
pub mod export;
pub mod message;
pub mod questionnaire;
pub mod summary;
pub mod systems;

/// The FHIR Bundle type every export produces.
pub use fhir_sdk::r4b::resources::Bundle;

/// Why a record could not be mapped. The exporter dead-letters such a record at once:
/// retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("{instrument} needs {expected} answers, got {got}")]
    AnswerCount {
        instrument: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("answer {item} is {value}; answers are 0 to 3")]
    AnswerOutOfRange { item: usize, value: u8 },
    #[error("{0} is not a valid national id number")]
    NationalId(&'static str),
    #[error("the opened message is not in the content format: {0}")]
    Content(String),
    #[error("a required FHIR element is missing: {0}")]
    Incomplete(String),
}

impl From<fhir_sdk::BuilderError> for MappingError {
    fn from(error: fhir_sdk::BuilderError) -> Self {
        Self::Incomplete(error.to_string())
    }
}

/// Unix milliseconds as a FHIR `dateTime` (UTC, to the millisecond).
pub(crate) fn date_time(ms: i64) -> Result<fhir_sdk::DateTime, MappingError> {
    Ok(fhir_sdk::DateTime::DateTime(instant(ms)?))
}

/// Unix milliseconds as a FHIR `instant`.
pub(crate) fn instant(ms: i64) -> Result<fhir_sdk::Instant, MappingError> {
    let time =
        fhir_sdk::time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .map_err(|_| MappingError::Incomplete(format!("time {ms} ms is out of range")))?;
    Ok(fhir_sdk::Instant(time))
}
