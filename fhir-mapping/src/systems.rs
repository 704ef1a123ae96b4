//! Identifier systems and code systems (HL7 Norway no-basis, LOINC).

use fhir_sdk::r4b::types::{Coding, Identifier, Reference};

use crate::MappingError;

/// Fødselsnummer.
pub const FNR: &str = "urn:oid:2.16.578.1.12.4.1.4.1";
/// D-nummer.
pub const DNR: &str = "urn:oid:2.16.578.1.12.4.1.4.2";
/// HPR-nummer (health personnel).
pub const HPR: &str = "urn:oid:2.16.578.1.12.4.1.4.4";
/// Organisasjonsnummer (Enhetsregisteret).
pub const ORGANISATION: &str = "urn:oid:2.16.578.1.12.4.1.4.101";
pub const LOINC: &str = "http://loinc.org";
/// FHIR's observation category code system.
pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// The identifier of a person by national id: a D-nummer adds 4 to the first digit.
pub fn national_id(number: &str) -> Result<Identifier, MappingError> {
    let first = number
        .chars()
        .next()
        .and_then(|c| c.to_digit(10))
        .ok_or(MappingError::NationalId("patient"))?;
    if number.len() != 11 || !number.chars().all(|c| c.is_ascii_digit()) {
        return Err(MappingError::NationalId("patient"));
    }
    let system = if first >= 4 { DNR } else { FNR };
    identifier(system, number)
}

pub fn identifier(system: &str, value: &str) -> Result<Identifier, MappingError> {
    Ok(Identifier::builder()
        .system(system.to_owned())
        .value(value.to_owned())
        .build()?)
}

/// A logical reference: by identifier, to be resolved by the receiving server.
pub fn by_identifier(system: &str, value: &str) -> Result<Reference, MappingError> {
    Ok(Reference::builder()
        .identifier(identifier(system, value)?)
        .build()?)
}

pub fn coding(system: &str, code: &str, display: &str) -> Result<Coding, MappingError> {
    Ok(Coding::builder()
        .system(system.to_owned())
        .code(code.to_owned())
        .display(display.to_owned())
        .build()?)
}
