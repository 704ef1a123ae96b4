//! The clinic register: the clinics one deployment serves, each with its hospital and the
//! route its journal entries take (EPJ, summary record, HelseID client, trusted CAs), and
//! the platforms bound to them.
//!
//! An empty register is a deployment for one clinic (or one hospital with one EPJ): the
//! exporter sends everything to `export.epj_base_url`, and a platform acts for the
//! organisations its HelseID token names. A register makes the clinic the unit of
//! routing and of scope: episodes of clinics outside it are refused, each clinic's
//! records go to its own EPJ, platforms reach only the clinics they are bound to, and
//! auditors only their own hospital's clinics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Config, ConfigError, OutboundClientConfig, invalid, readable_file};

/// One clinic of the register (`[[clinics]]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClinicConfig {
    /// The clinic's organisation number (the unit that runs the programme).
    pub org_number: String,
    /// Its name, as patients and the summary record see it.
    pub name: String,
    /// Organisation number of its hospital (the legal entity, HelseID's `orgnr_parent`).
    pub hospital: String,
    /// The hospital EPJ's FHIR R4 base URL for this clinic's records.
    pub epj_base_url: String,
    /// The summary record's FHIR base for ITI-65; unset means the EPJ's.
    #[serde(default)]
    pub summary_base_url: Option<String>,
    /// The clinic's private journal keys (device JSON from `icbt keygen`, mode 0600): the
    /// current one and older ones still needed for old messages.
    pub journal_key_files: Vec<PathBuf>,
    /// Name of the HelseID client in `[export.clients]` that its EPJ takes tokens of.
    /// Clinics of one hospital (or several hospitals) may share one.
    pub client: String,
    /// PEM bundle of CAs trusted for its EPJ and summary record; unset means
    /// `export.trust_roots_file`, then `auth.trust_roots_file`, then the system's.
    #[serde(default)]
    pub trust_roots_file: Option<PathBuf>,
}

/// A platform's binding to the clinics it serves (`[[platforms]]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// The platform's HelseID `client_id`.
    pub client_id: String,
    /// Organisation numbers of the register's clinics it runs episodes for. Its tokens
    /// must also name the clinic or its hospital (`orgnr_parent` or `orgnr_child`).
    pub clinics: Vec<String>,
}

/// Whether `text` is a Norwegian organisation number: nine digits, modulus-11 check digit.
pub fn is_org_number(text: &str) -> bool {
    const WEIGHTS: [u32; 8] = [3, 2, 7, 6, 5, 4, 3, 2];
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if text.len() != 9 || digits.len() != 9 {
        return false;
    }
    let sum: u32 = digits.iter().zip(WEIGHTS).map(|(d, w)| d * w).sum();
    let check = match 11 - sum % 11 {
        11 => 0,
        10 => return false,
        c => c,
    };
    digits[8] == check
}

impl Config {
    /// The outbound client a clinic's route uses.
    pub fn clinic_client(&self, clinic: &ClinicConfig) -> Option<&OutboundClientConfig> {
        self.export.clients.get(&clinic.client)
    }

    /// Checks the register against itself and the rest of the configuration.
    pub(crate) fn validate_register(&self) -> Result<(), ConfigError> {
        if self.clinics.is_empty() {
            if !self.platforms.is_empty() {
                return Err(invalid(
                    "platforms",
                    "binds platforms to clinics, but there is no [[clinics]] register".into(),
                    "add the clinics to [[clinics]], or remove [[platforms]]",
                ));
            }
            return Ok(());
        }
        let export = &self.export;
        let single = [
            ("export.epj_base_url", export.epj_base_url.is_some()),
            ("export.summary_base_url", export.summary_base_url.is_some()),
            ("export.client", export.client.is_some()),
            (
                "export.journal_key_files",
                !export.journal_key_files.is_empty(),
            ),
        ];
        if let Some((key, _)) = single.iter().find(|(_, set)| *set) {
            return Err(invalid(
                key,
                "is set beside a [[clinics]] register, which routes each clinic itself".into(),
                "move it into each clinic's entry (epj_base_url, summary_base_url, client, journal_key_files)",
            ));
        }
        let mut seen = HashSet::new();
        for clinic in &self.clinics {
            self.validate_clinic(clinic)?;
            if !seen.insert(clinic.org_number.as_str()) {
                return Err(invalid(
                    "clinics.org_number",
                    format!("{} is in the register twice", clinic.org_number),
                    "give each clinic one entry",
                ));
            }
        }
        self.validate_journal_keys()?;
        self.validate_platforms(&seen)
    }

    fn validate_clinic(&self, clinic: &ClinicConfig) -> Result<(), ConfigError> {
        let org = &clinic.org_number;
        for (key, value) in [
            ("clinics.org_number", org),
            ("clinics.hospital", &clinic.hospital),
        ] {
            if !is_org_number(value) {
                return Err(invalid(
                    key,
                    format!("`{value}` is not an organisation number"),
                    "use the nine digits from the Enhetsregisteret, e.g. 974589095",
                ));
            }
        }
        if clinic.name.trim().is_empty() || clinic.name.len() > 200 {
            return Err(invalid(
                "clinics.name",
                format!("clinic {org} has no name (or one over 200 bytes)"),
                "name it as patients know it",
            ));
        }
        for (key, url) in [
            ("clinics.epj_base_url", Some(&clinic.epj_base_url)),
            ("clinics.summary_base_url", clinic.summary_base_url.as_ref()),
        ] {
            if let Some(url) = url
                && !url.starts_with("https://")
            {
                return Err(invalid(
                    key,
                    format!("clinic {org}: `{url}` is not an https URL"),
                    "use the FHIR base, e.g. https://epj.example.no/fhir/R4",
                ));
            }
        }
        if clinic.journal_key_files.is_empty() {
            return Err(invalid(
                "clinics.journal_key_files",
                format!("clinic {org} has no journal key"),
                "list the clinic's private journal key file(s) from `icbt keygen`",
            ));
        }
        for file in &clinic.journal_key_files {
            readable_file(
                "clinics.journal_key_files",
                file,
                "point it at the clinic's private journal key (JSON)",
            )?;
        }
        let Some(client) = self.clinic_client(clinic) else {
            return Err(invalid(
                "clinics.client",
                format!(
                    "clinic {org} names the client `{}`, which [export.clients] does not have",
                    clinic.client
                ),
                "add [export.clients.<name>] with issuer, client_id, key_file, scope and resource",
            ));
        };
        readable_file(
            "export.clients.key_file",
            &client.key_file,
            "point it at the client's PEM private key",
        )?;
        if let Some(roots) = &clinic.trust_roots_file {
            readable_file(
                "clinics.trust_roots_file",
                roots,
                "point it at a PEM bundle of the CAs of the clinic's EPJ",
            )?;
        }
        Ok(())
    }

    /// One journal key file serves one clinic: a key shared by two would let either
    /// hospital's exporter open the other's messages.
    fn validate_journal_keys(&self) -> Result<(), ConfigError> {
        let mut owner: HashMap<PathBuf, &str> = HashMap::new();
        for clinic in &self.clinics {
            for file in &clinic.journal_key_files {
                let resolved = file.canonicalize().unwrap_or_else(|_| file.clone());
                if let Some(other) = owner.insert(resolved, &clinic.org_number)
                    && other != clinic.org_number
                {
                    return Err(invalid(
                        "clinics.journal_key_files",
                        format!(
                            "{} is the journal key of both {other} and {}",
                            file.display(),
                            clinic.org_number
                        ),
                        "give each clinic its own journal key (`icbt keygen`)",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_platforms(&self, clinics: &HashSet<&str>) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        for platform in &self.platforms {
            if platform.client_id.is_empty() || !ids.insert(platform.client_id.as_str()) {
                return Err(invalid(
                    "platforms.client_id",
                    format!("`{}` is empty or listed twice", platform.client_id),
                    "one entry per platform client, with all its clinics",
                ));
            }
            if platform.clinics.is_empty() {
                return Err(invalid(
                    "platforms.clinics",
                    format!("platform `{}` serves no clinic", platform.client_id),
                    "list the org numbers of the clinics it runs episodes for",
                ));
            }
            if let Some(missing) = platform
                .clinics
                .iter()
                .find(|c| !clinics.contains(c.as_str()))
            {
                return Err(invalid(
                    "platforms.clinics",
                    format!(
                        "platform `{}` is bound to {missing}, which is not in [[clinics]]",
                        platform.client_id
                    ),
                    "add the clinic to the register, or remove it here",
                ));
            }
        }
        Ok(())
    }

    /// Hospitals and their clinics, for reports: hospital → clinics, both sorted.
    pub fn hospitals(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut hospitals: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for clinic in &self.clinics {
            hospitals
                .entry(clinic.hospital.as_str())
                .or_default()
                .push(clinic.org_number.as_str());
        }
        for clinics in hospitals.values_mut() {
            clinics.sort_unstable();
        }
        hospitals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organisation_numbers_carry_their_check_digit() {
        assert!(is_org_number("974589095"));
        assert!(is_org_number("983974899"));
        assert!(!is_org_number("974589096"));
        assert!(!is_org_number("97458909"));
        assert!(!is_org_number("97458909a"));
        assert!(!is_org_number("+74589095"));
    }
}
