//! A deployment of several hospitals for the clinic-register tests and bench: the
//! `[[clinics]]` register with each clinic's EPJ, journal keys and HelseID client, the
//! platforms bound to them, and journal keys kept in files as an operator keeps them.

use std::fmt::Write as _;
use std::sync::Arc;

use icbt_envelope::DeviceKeys;

use crate::epj::Epj;
use crate::idp::IdentityProviders;

/// Hospital A (two clinics in the tests) and hospital B (one), with valid check digits.
pub const HOSPITAL_A: &str = "983974899";
pub const HOSPITAL_B: &str = "983975240";
pub const A1: &str = "974589095";
pub const A2: &str = "974633574";
pub const B1: &str = "974749025";

/// The HelseID clients each hospital's EPJ takes tokens of, as `[export.clients]` names
/// them: `(name, client id)`.
pub const HOSPITAL_CLIENTS: [(&str, &str); 2] =
    [("hospital-a", "icbt-gateway"), ("hospital-b", "gateway-b")];

/// A journal key in a file (mode 0600 by tempfile).
#[derive(Debug)]
pub struct KeyFile {
    pub keys: Arc<DeviceKeys>,
    file: tempfile::NamedTempFile,
}

impl KeyFile {
    pub fn generate() -> Self {
        let keys = Arc::new(DeviceKeys::generate().unwrap());
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), keys.to_private_json().as_bytes()).unwrap();
        Self { keys, file }
    }

    pub fn path(&self) -> String {
        self.file.path().display().to_string()
    }
}

/// One clinic of the register.
#[derive(Debug)]
pub struct Clinic<'a> {
    pub org: &'a str,
    pub name: &'a str,
    pub hospital: &'a str,
    pub epj: &'a Epj,
    /// A name of [`HOSPITAL_CLIENTS`].
    pub client: &'a str,
    pub keys: Vec<&'a KeyFile>,
}

/// `[[clinics]]`, `[[platforms]]` (`(client id, clinics)`), `[export]` with its clients,
/// and the `[auth]` of the test providers with `auditors` (TOML lines) as its
/// `[auth.auditors]`.
pub fn deployment_config(
    clinics: &[Clinic<'_>],
    platforms: &[(&str, &[&str])],
    auditors: &str,
) -> String {
    let idps = IdentityProviders::shared();
    let ca = idps.ca.ca_file.display();
    let mut toml = String::new();
    for c in clinics {
        let files: Vec<String> = c.keys.iter().map(|k| format!("\"{}\"", k.path())).collect();
        let _ = write!(
            toml,
            "[[clinics]]\norg_number = \"{org}\"\nname = \"{name}\"\nhospital = \"{hospital}\"\n\
             epj_base_url = \"{base}\"\njournal_key_files = [{files}]\nclient = \"{client}\"\n\
             trust_roots_file = \"{ca}\"\n\n",
            org = c.org,
            name = c.name,
            hospital = c.hospital,
            base = c.epj.base,
            files = files.join(", "),
            client = c.client,
        );
    }
    for (client_id, served) in platforms {
        let served: Vec<String> = served.iter().map(|c| format!("\"{c}\"")).collect();
        let _ = write!(
            toml,
            "[[platforms]]\nclient_id = \"{client_id}\"\nclinics = [{}]\n\n",
            served.join(", ")
        );
    }
    toml += "[export]\nidentifier_base = \"urn:icbt-gateway:test\"\npoll_interval_ms = 50\n\
             backoff_base_ms = 100\nbackoff_max_ms = 500\nmax_attempts = 1000\n\
             request_timeout_ms = 5000\n";
    for (name, client) in HOSPITAL_CLIENTS {
        let _ = write!(
            toml,
            "\n[export.clients.{name}]\nissuer = \"{issuer}\"\nclient_id = \"{client}\"\n\
             key_file = \"{key}\"\nkey_algorithm = \"ES256\"\nkey_id = \"{client}-key\"\n\
             scope = \"nhn:epj/write\"\nresource = \"nhn:epj\"\n",
            issuer = idps.helseid.issuer,
            key = idps.client_key(client).pem_file.display(),
        );
    }
    let shared = "[auth.auditors]\nscope = \"nhn:icbt-gateway/audit\"\n";
    let gateway = idps.gateway_config();
    assert!(gateway.contains(shared), "the shared [auth] changed shape");
    toml + &gateway.replace(shared, &format!("[auth.auditors]\n{auditors}"))
}
