//! Identifiers of people and organisations, as Norwegian registers define them.
//!
//! Every type validates on construction, and the ones that name a person hide their value
//! in `Debug`, so a stray `{:?}` cannot put a national id number into a log line.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which register a national identity number belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NationalIdKind {
    /// Fødselsnummer, `urn:oid:2.16.578.1.12.4.1.4.1`.
    Fnr,
    /// D-nummer (first digit + 4), `urn:oid:2.16.578.1.12.4.1.4.2`.
    DNumber,
}

/// A Norwegian national identity number (fødselsnummer or D-nummer): 11 digits, two
/// mod-11 check digits. `Debug` and `Display` never show the digits.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NationalId(String);

impl TryFrom<String> for NationalId {
    type Error = NationalIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<NationalId> for String {
    fn from(id: NationalId) -> Self {
        id.0
    }
}

/// Why a string is not a national identity number. Carries no digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NationalIdError {
    #[error("a national identity number has exactly 11 digits")]
    Format,
    #[error("the check digits of the national identity number do not match")]
    Checksum,
}

const K1_WEIGHTS: [u32; 9] = [3, 7, 6, 1, 8, 9, 4, 5, 2];
const K2_WEIGHTS: [u32; 10] = [5, 4, 3, 2, 7, 6, 5, 4, 3, 2];

/// The mod-11 check digit over `digits` with `weights`, or `None` where the rule leaves
/// no valid digit (remainder 1).
fn mod11(digits: &[u32], weights: &[u32]) -> Option<u32> {
    let sum: u32 = digits.iter().zip(weights).map(|(d, w)| d * w).sum();
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        k => Some(k),
    }
}

impl NationalId {
    /// Parses and checks an 11-digit number.
    pub fn parse(s: &str) -> Result<Self, NationalIdError> {
        let digits: Vec<u32> = s
            .chars()
            .map(|c| c.to_digit(10))
            .collect::<Option<_>>()
            .ok_or(NationalIdError::Format)?;
        if digits.len() != 11 {
            return Err(NationalIdError::Format);
        }
        let k1 = mod11(&digits[..9], &K1_WEIGHTS).ok_or(NationalIdError::Checksum)?;
        let k2 = mod11(&digits[..10], &K2_WEIGHTS).ok_or(NationalIdError::Checksum)?;
        if digits[9] != k1 || digits[10] != k2 {
            return Err(NationalIdError::Checksum);
        }
        Ok(Self(s.to_owned()))
    }

    /// Appends both check digits to nine leading digits, if the rule allows them.
    /// Used to make synthetic test numbers.
    pub fn with_check_digits(first_nine: &str) -> Option<Self> {
        let mut digits: Vec<u32> = first_nine
            .chars()
            .map(|c| c.to_digit(10))
            .collect::<Option<_>>()?;
        if digits.len() != 9 {
            return None;
        }
        digits.push(mod11(&digits, &K1_WEIGHTS)?);
        digits.push(mod11(&digits, &K2_WEIGHTS)?);
        Some(Self(digits.iter().map(u32::to_string).collect()))
    }

    pub fn kind(&self) -> NationalIdKind {
        if self.0.as_bytes()[0] >= b'4' {
            NationalIdKind::DNumber
        } else {
            NationalIdKind::Fnr
        }
    }

    /// The digits, for storage and for the FHIR identifier. Never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NationalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NationalId({:?}, [redacted])", self.kind())
    }
}

impl FromStr for NationalId {
    type Err = NationalIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A Norwegian organisation number (ENH, `urn:oid:2.16.578.1.12.4.1.4.101`): 9 digits,
/// mod-11 check digit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgNumber(String);

impl TryFrom<String> for OrgNumber {
    type Error = OrgNumberError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<OrgNumber> for String {
    fn from(o: OrgNumber) -> Self {
        o.0
    }
}

/// Why a string is not an organisation number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an organisation number has 9 digits with a valid mod-11 check digit")]
pub struct OrgNumberError;

impl OrgNumber {
    pub fn parse(s: &str) -> Result<Self, OrgNumberError> {
        let digits: Vec<u32> = s
            .chars()
            .map(|c| c.to_digit(10))
            .collect::<Option<_>>()
            .ok_or(OrgNumberError)?;
        if digits.len() != 9 || mod11(&digits[..8], &[3, 2, 7, 6, 5, 4, 3, 2]) != Some(digits[8]) {
            return Err(OrgNumberError);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A HPR number (Helsepersonellregisteret, `urn:oid:2.16.578.1.12.4.1.4.4`): the
/// health-personnel register's number for a therapist, up to nine digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HprNumber(String);

/// Why a string is not a HPR number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a HPR number has one to nine digits")]
pub struct HprNumberError;

impl HprNumber {
    pub fn parse(s: &str) -> Result<Self, HprNumberError> {
        let s = s.trim_start_matches('0');
        if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HprNumberError);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HprNumber {
    type Error = HprNumberError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<HprNumber> for String {
    fn from(h: HprNumber) -> Self {
        h.0
    }
}

impl fmt::Display for HprNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_generated_numbers_and_rejects_one_digit_changes() {
        let mut checked = 0;
        for n in 0..2000u32 {
            let base = format!("{:02}{:02}85{:03}", n % 28 + 1, n % 12 + 1, n % 1000);
            let Some(id) = NationalId::with_check_digits(&base) else {
                continue;
            };
            assert_eq!(NationalId::parse(id.expose()).unwrap(), id);
            let mut wrong = id.expose().to_owned().into_bytes();
            wrong[10] = b'0' + (wrong[10] - b'0' + 1) % 10;
            let wrong = String::from_utf8(wrong).unwrap();
            assert_eq!(NationalId::parse(&wrong), Err(NationalIdError::Checksum));
            checked += 1;
        }
        assert!(checked > 1000);
    }

    #[test]
    fn rejects_wrong_length_and_non_digits() {
        assert_eq!(
            NationalId::parse("1234567890"),
            Err(NationalIdError::Format)
        );
        assert_eq!(
            NationalId::parse("1234567890a"),
            Err(NationalIdError::Format)
        );
        assert_eq!(NationalId::parse(""), Err(NationalIdError::Format));
    }

    fn first_valid(prefix: &str) -> NationalId {
        (0..10)
            .find_map(|d| NationalId::with_check_digits(&format!("{prefix}{d}")))
            .unwrap()
    }

    #[test]
    fn d_number_is_recognised() {
        assert_eq!(first_valid("41018512").kind(), NationalIdKind::DNumber);
        assert_eq!(first_valid("01018512").kind(), NationalIdKind::Fnr);
    }

    #[test]
    fn debug_hides_the_digits() {
        let id = first_valid("01018512");
        let shown = format!("{id:?}");
        assert!(!shown.contains(id.expose()), "{shown}");
        assert!(!shown.chars().any(|c| c.is_ascii_digit()), "{shown}");
    }

    #[test]
    fn org_number_check_digit() {
        // 974760673 is a published organisation number with a valid check digit.
        assert!(OrgNumber::parse("974760673").is_ok());
        assert!(OrgNumber::parse("974760674").is_err());
        assert!(OrgNumber::parse("97476067").is_err());
    }

    #[test]
    fn hpr_number_shape() {
        assert_eq!(HprNumber::parse("0012345").unwrap().as_str(), "12345");
        assert!(HprNumber::parse("").is_err());
        assert!(HprNumber::parse("1234567890").is_err());
        assert!(HprNumber::parse("12a").is_err());
    }
}
