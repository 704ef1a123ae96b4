//! Clinics and treatment episodes: the records every other part of the gateway hangs off.
//!
//! Identifiers that name people are validated newtypes whose `Debug` hides the value, so a
//! stray `{:?}` cannot put a national id number into a log line.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NationalId(String);

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
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct OrgNumber(String);

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

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A clinic's id in this gateway.
    ClinicId
);
uuid_id!(
    /// A treatment episode's id in this gateway.
    EpisodeId
);

/// The life cycle of a treatment episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EpisodeState {
    Planned,
    Active,
    Finished,
    Cancelled,
}

impl EpisodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::Active => "active",
            Self::Finished => "finished",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "planned" => Self::Planned,
            "active" => Self::Active,
            "finished" => Self::Finished,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// A clinic that runs iCBT programmes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clinic {
    pub id: ClinicId,
    pub name: String,
    pub org_number: OrgNumber,
    pub created_at_ms: i64,
}

/// A patient's course of treatment in one programme at one clinic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Episode {
    pub id: EpisodeId,
    pub clinic_id: ClinicId,
    pub patient: NationalId,
    pub programme: String,
    pub state: EpisodeState,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
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

    #[test]
    fn d_number_is_recognised() {
        let d = NationalId::with_check_digits("410185123")
            .or_else(|| NationalId::with_check_digits("410185124"))
            .unwrap();
        assert_eq!(d.kind(), NationalIdKind::DNumber);
        let f = NationalId::with_check_digits("010185123")
            .or_else(|| NationalId::with_check_digits("010185124"))
            .unwrap();
        assert_eq!(f.kind(), NationalIdKind::Fnr);
    }

    #[test]
    fn debug_hides_the_digits() {
        let id = NationalId::with_check_digits("010185123")
            .or_else(|| NationalId::with_check_digits("010185124"))
            .unwrap();
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
    fn episode_state_round_trips() {
        for s in [
            EpisodeState::Planned,
            EpisodeState::Active,
            EpisodeState::Finished,
            EpisodeState::Cancelled,
        ] {
            assert_eq!(EpisodeState::parse(s.as_str()), Some(s));
        }
        assert_eq!(EpisodeState::parse("done"), None);
    }
}
