//! The dev identity provider's people: a TOML file in the data directory, written on first
//! start and read again on every login and token, so an edit adds people at once.
//!
//! Every national identity number in it must be synthetic (Norway's convention for test
//! persons: the month plus 80, with valid check digits), so no real person can ever be
//! logged in as, or written to the dev journal sink.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use icbt_auth::identity::{HprNumber, NationalId, OrgNumber};
use serde::{Deserialize, Serialize};

/// The file's name in `<data_dir>/dev/`.
pub const FILE_NAME: &str = "people.toml";

/// What a person does in the programme; decides which provider logs them in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// ID-porten, level high.
    Patient,
    /// HelseID, security level 4, HPR number; the platform puts them on care teams.
    Therapist,
    /// HelseID with the audit scope: reads the access log and nothing else.
    Auditor,
}

/// One person.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// What `dev token --as` and the login page call them: lower-case letters, digits, `-`.
    pub name: String,
    pub display_name: String,
    pub role: Role,
    /// Synthetic national identity number.
    pub pid: NationalId,
    /// Therapists and auditors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpr_number: Option<HprNumber>,
}

/// A system client (an iCBT platform backend): client credentials at the dev HelseID.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SystemClient {
    pub name: String,
    pub client_id: String,
    /// Sent as `client_secret` (form or HTTP Basic).
    pub client_secret: String,
    /// The organisation it acts for (`orgnr_parent`).
    pub org_number: OrgNumber,
}

/// The clinic the dev set-up runs.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Clinic {
    pub name: String,
    pub org_number: OrgNumber,
}

/// The whole file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct People {
    pub clinic: Clinic,
    #[serde(default, rename = "person")]
    pub persons: Vec<Person>,
    #[serde(default, rename = "client")]
    pub clients: Vec<SystemClient>,
}

/// Why the file cannot be used; names the file and the entry.
#[derive(Debug, thiserror::Error)]
pub enum PeopleError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {problem}; fix: {fix}")]
    Invalid {
        path: String,
        problem: String,
        fix: &'static str,
    },
}

/// Whether `pid` follows the synthetic convention: month digits 81 to 92.
pub fn is_synthetic(pid: &NationalId) -> bool {
    pid.expose()
        .get(2..4)
        .and_then(|m| m.parse::<u8>().ok())
        .is_some_and(|month| (81..=92).contains(&month))
}

/// A synthetic national identity number born on `day`.`month`.`year` (two digits): the
/// first individual number from `individual` up whose check digits exist.
pub fn synthetic_pid(day: u8, month: u8, year: u8, individual: u16) -> Option<NationalId> {
    (individual..500).find_map(|i| {
        NationalId::with_check_digits(&format!("{day:02}{:02}{year:02}{i:03}", month + 80))
    })
}

/// An organisation number from its first eight digits, or the next valid one after them.
fn org_number(first_eight: u32) -> Option<OrgNumber> {
    (first_eight..first_eight + 100)
        .find_map(|n| (0..10).find_map(|check| OrgNumber::parse(&format!("{n:08}{check}")).ok()))
}

fn random_secret() -> String {
    icbt_auth::client::random_value()
}

impl People {
    /// The people a first start writes: two patients, a therapist, a cover therapist, an
    /// auditor, the platform's system client and the clinic.
    pub fn starter() -> Option<Self> {
        let org = org_number(99_887_766)?;
        let person = |name: &str, display: &str, role, pid: NationalId, hpr: Option<&str>| {
            Some(Person {
                name: name.into(),
                display_name: display.into(),
                role,
                pid,
                hpr_number: match hpr {
                    Some(h) => Some(HprNumber::parse(h).ok()?),
                    None => None,
                },
            })
        };
        Some(Self {
            clinic: Clinic {
                name: "Dev-klinikken for internettbehandling".into(),
                org_number: org.clone(),
            },
            persons: vec![
                person(
                    "kari",
                    "Kari Nordmann",
                    Role::Patient,
                    synthetic_pid(15, 3, 85, 100)?,
                    None,
                )?,
                person(
                    "ola",
                    "Ola Nordmann",
                    Role::Patient,
                    synthetic_pid(2, 11, 92, 200)?,
                    None,
                )?,
                person(
                    "terje",
                    "Terje Terapeut",
                    Role::Therapist,
                    synthetic_pid(21, 6, 78, 300)?,
                    Some("9144900"),
                )?,
                person(
                    "vera",
                    "Vera Vikar",
                    Role::Therapist,
                    synthetic_pid(9, 9, 81, 310)?,
                    Some("9144901"),
                )?,
                person(
                    "siri",
                    "Siri Sikkerhet",
                    Role::Auditor,
                    synthetic_pid(30, 1, 75, 400)?,
                    Some("9144902"),
                )?,
            ],
            clients: vec![SystemClient {
                name: "platform".into(),
                client_id: "icbt-platform-dev".into(),
                client_secret: random_secret(),
                org_number: org,
            }],
        })
    }

    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Self, PeopleError> {
        let text = std::fs::read_to_string(path).map_err(|e| PeopleError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let people: Self = toml::from_str(&text).map_err(|e| PeopleError::Read {
            path: path.display().to_string(),
            reason: e.message().to_owned(),
        })?;
        people.check(path)?;
        Ok(people)
    }

    /// Reads the file, writing the starter set first when there is none.
    pub fn load_or_create(dir: &Path) -> Result<(Self, PathBuf), PeopleError> {
        let path = dir.join(FILE_NAME);
        if !path.exists() {
            let fail = |reason: String| PeopleError::Read {
                path: path.display().to_string(),
                reason,
            };
            let starter = Self::starter().ok_or_else(|| fail("no starter set".into()))?;
            let body = toml::to_string_pretty(&starter).map_err(|e| fail(e.to_string()))?;
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
            super::write_private(&path, format!("{HEADER}\n{body}").as_bytes())
                .map_err(|e| fail(e.to_string()))?;
        }
        Ok((Self::load(&path)?, path))
    }

    fn check(&self, path: &Path) -> Result<(), PeopleError> {
        let invalid = |problem: String, fix| PeopleError::Invalid {
            path: path.display().to_string(),
            problem,
            fix,
        };
        let mut names = HashSet::new();
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        for person in &self.persons {
            if !valid_name(&person.name) || !names.insert(person.name.as_str()) {
                return Err(invalid(
                    format!(
                        "the name `{}` is empty, not plain or used twice",
                        person.name
                    ),
                    "give each entry its own name of lower-case letters, digits and -",
                ));
            }
            if !is_synthetic(&person.pid) {
                return Err(invalid(
                    format!(
                        "`{}` has a national identity number that is not synthetic",
                        person.name
                    ),
                    "use a synthetic number: the month plus 80 (e.g. 158385…), with valid check digits",
                ));
            }
            if person.role != Role::Patient && person.hpr_number.is_none() {
                return Err(invalid(
                    format!("`{}` is personnel without an HPR number", person.name),
                    "add hpr_number = \"…\" (up to nine digits)",
                ));
            }
        }
        for client in &self.clients {
            if !valid_name(&client.name) || !names.insert(client.name.as_str()) {
                return Err(invalid(
                    format!(
                        "the name `{}` is empty, not plain or used twice",
                        client.name
                    ),
                    "give each entry its own name of lower-case letters, digits and -",
                ));
            }
            if client.client_secret.len() < 16 {
                return Err(invalid(
                    format!(
                        "the client `{}` has a secret under 16 characters",
                        client.name
                    ),
                    "use a longer client_secret",
                ));
            }
        }
        Ok(())
    }

    pub fn person(&self, name: &str) -> Option<&Person> {
        self.persons.iter().find(|p| p.name == name)
    }

    pub fn client_named(&self, name: &str) -> Option<&SystemClient> {
        self.clients.iter().find(|c| c.name == name)
    }

    /// The system client that acts for the clinic (its platform).
    pub fn clinic_client(&self) -> Result<&SystemClient, PeopleError> {
        self.clients
            .iter()
            .find(|c| c.org_number == self.clinic.org_number)
            .ok_or_else(|| PeopleError::Invalid {
                path: FILE_NAME.to_owned(),
                problem: "there is no [[client]] whose org_number is the clinic's".into(),
                fix: "add the platform's client with the clinic's org_number",
            })
    }

    pub fn client_by_id(&self, client_id: &str) -> Option<&SystemClient> {
        self.clients.iter().find(|c| c.client_id == client_id)
    }
}

const HEADER: &str = "\
# People of the dev identity providers (icbt-gateway serve --dev). Read on every login and
# token: add a [[person]] or [[client]] and it works at once.
#
# role = \"patient\" logs in at the dev ID-porten; \"therapist\" and \"auditor\" at the dev
# HelseID (auditors read the access log and nothing else). National identity numbers must
# be synthetic (month + 80, valid check digits), so none is a real person's.
# `icbt-gateway dev token --as NAME` prints a token for any entry.
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_numbers_are_valid_and_never_a_real_birth_month() {
        let pid = synthetic_pid(15, 3, 85, 100).unwrap();
        assert!(is_synthetic(&pid));
        assert_eq!(&pid.expose()[..6], "158385");
        assert!(NationalId::parse(pid.expose()).is_ok(), "check digits hold");
        let real = NationalId::with_check_digits("150385100")
            .or_else(|| NationalId::with_check_digits("150385101"))
            .unwrap();
        assert!(!is_synthetic(&real));
    }

    #[test]
    fn the_starter_file_round_trips_and_a_real_number_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (people, path) = People::load_or_create(dir.path()).unwrap();
        assert!(people.persons.iter().all(|p| is_synthetic(&p.pid)));
        assert!(people.person("terje").unwrap().hpr_number.is_some());
        let secret = people
            .client_named("platform")
            .unwrap()
            .client_secret
            .clone();
        let (again, _) = People::load_or_create(dir.path()).unwrap();
        assert_eq!(
            again.client_named("platform").unwrap().client_secret,
            secret,
            "kept, not rewritten"
        );

        let text = std::fs::read_to_string(&path).unwrap();
        let kari = people.person("kari").unwrap().pid.expose().to_owned();
        let real = NationalId::with_check_digits(&format!("{}{}", &kari[..2], "0385100"))
            .or_else(|| NationalId::with_check_digits(&format!("{}{}", &kari[..2], "0385101")))
            .unwrap();
        std::fs::write(&path, text.replace(&kari, real.expose())).unwrap();
        let err = People::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("not synthetic") && err.contains("kari"),
            "{err}"
        );
        assert!(
            !err.contains(real.expose()),
            "the number is not echoed: {err}"
        );
    }
}
