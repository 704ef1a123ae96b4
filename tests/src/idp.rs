//! Real OpenID providers for the tests: npm `oidc-provider`, one shaped like ID-porten and
//! one like HelseID (see `tests/peers/oidc-provider.mjs`), on loopback HTTPS with a test CA.
//!
//! Tokens come from the providers through the real flows: client credentials with
//! `private_key_jwt` and DPoP, and logins through a pushed authorization request, PKCE and
//! the code exchange (the provider finishes the login at once for the account the
//! `login_hint` names). Tokens no real provider issues (expired, wrong audience, …) are
//! forged with the provider's own signing key.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use icbt_auth::client::{
    ClientKey, ClientKeyAlgorithm, OidcClient, Pkce, TokenResponse, random_value,
};
use icbt_auth::dpop::DpopKey;
use icbt_auth::keys::{HttpFetch, IssuerKeys, KeyCachePolicy};
use ring::rand::SystemRandom;
use serde_json::{Value, json};

/// The clients registered at both providers.
pub const CLIENTS: [&str; 7] = [
    "icbt-platform",
    "icbt-gateway",
    "other-org-platform",
    "platform-a",
    "platform-b",
    "gateway-b",
    "audit-a",
];

/// A client at the HelseID-like provider whose key is RSA (RS256 or PS256).
pub const RSA_CLIENT: &str = "icbt-gateway-rsa";

/// The RSA client's private key: a fixed test-only key (ring cannot generate RSA keys).
pub fn rsa_client_key_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/test-only-rsa-client-key.pem")
}

/// Which provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idp {
    Idporten,
    Helseid,
}

/// The organisation number of the test platform's clinic.
pub const CLINIC_ORG: &str = "974760673";

/// Audience and scope of the gateway's API at each provider.
impl Idp {
    pub fn api_resource(self) -> &'static str {
        match self {
            Idp::Idporten => "https://icbt-gateway.test/api",
            Idp::Helseid => "nhn:icbt-gateway",
        }
    }

    pub fn api_scope(self) -> &'static str {
        match self {
            Idp::Idporten => "icbt:messages",
            Idp::Helseid => "nhn:icbt-gateway/api",
        }
    }
}

/// A test CA and a server certificate for `127.0.0.1` and `localhost`, as PEM files.
#[derive(Debug)]
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCa {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "icbt test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        // Shaped as a public CA issues a server certificate: 90 days, for serving TLS,
        // with a revocation list to look at.
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(90);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec!["http://crl.icbt-test.invalid/ca.crl".to_owned()],
        }];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let write = |name: &str, content: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            path
        };
        let ca_file = write("ca.pem", ca_cert.pem());
        let cert_file = write("cert.pem", cert.pem());
        let key_file = write("key.pem", key.serialize_pem());
        Self {
            dir,
            ca_file,
            cert_file,
            key_file,
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A client's private key: PKCS#8 DER and PEM file, and the public JWK.
#[derive(Debug)]
pub struct TestClientKey {
    pub der: Vec<u8>,
    pub pem_file: PathBuf,
    pub public_jwk: Value,
}

fn client_key(dir: &Path, client_id: &str) -> TestClientKey {
    let key = rcgen::KeyPair::generate().unwrap();
    let point = key.public_key_raw();
    let pem_file = dir.join(format!("{client_id}.pem"));
    std::fs::write(&pem_file, key.serialize_pem()).unwrap();
    let public_jwk = json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": format!("{client_id}-key"),
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..]),
    });
    TestClientKey {
        der: key.serialize_der(),
        pem_file,
        public_jwk,
    }
}

/// What the node script reports of one provider.
#[derive(Clone, Debug)]
pub struct ProviderInfo {
    pub issuer: String,
    /// The provider's private signing key (a test key), for forging.
    pub signing_jwk: Value,
}

/// Both providers, running.
#[derive(Debug)]
pub struct IdentityProviders {
    child: Child,
    pub ca: TestCa,
    pub idporten: ProviderInfo,
    pub helseid: ProviderInfo,
    pub client_keys: Vec<(String, TestClientKey)>,
    logs: Arc<Mutex<Vec<String>>>,
}

pub(crate) fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// A test peer running under node: its process, the JSON line it prints once it listens,
/// and its standard error as it comes.
pub(crate) struct NodePeer {
    pub(crate) child: Child,
    pub(crate) info: Value,
    pub(crate) logs: Arc<Mutex<Vec<String>>>,
}

/// Starts `command` (node with a peer script; the caller sets its environment and
/// stdin), collects its standard error, and waits at most `wait` for the first line it
/// prints. Panics with what it wrote when that does not come; `what` names it.
pub(crate) fn start_peer(mut command: Command, what: &str, wait: Duration) -> NodePeer {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start node for {what} (Node 20 is needed): {e}"));
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink = logs.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let Ok(line) = rx.recv_timeout(wait) else {
        let _ = child.kill();
        panic!("{what} did not start:\n{}", logs.lock().unwrap().join("\n"));
    };
    NodePeer {
        child,
        info: serde_json::from_str(&line).unwrap(),
        logs,
    }
}

/// Installs the node packages once per test process when they are missing.
pub fn ensure_node_packages() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let modules = peers_dir().join("node_modules");
        if ["oidc-provider", "jose", "@medplum/fhir-router"]
            .iter()
            .all(|m| modules.join(m).is_dir())
        {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent"])
            .current_dir(peers_dir())
            .status()
            .expect("run npm ci in tests/peers (is Node 20 with npm installed?)");
        assert!(status.success(), "npm ci in tests/peers failed");
    });
}

impl IdentityProviders {
    pub fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        ensure_node_packages();
        let ca = TestCa::new();
        let client_keys: Vec<(String, TestClientKey)> = CLIENTS
            .iter()
            .map(|c| ((*c).to_owned(), client_key(ca.dir.path(), c)))
            .collect();
        let mut jwks: serde_json::Map<String, Value> = client_keys
            .iter()
            .map(|(id, k)| (id.clone(), k.public_jwk.clone()))
            .collect();
        let mut rsa =
            ClientKey::from_pem_file(&rsa_client_key_file(), ClientKeyAlgorithm::RS256, None)
                .unwrap()
                .public_jwk();
        rsa.as_object_mut().unwrap().remove("alg");
        jwks.insert(RSA_CLIENT.to_owned(), rsa);
        let mut command = Command::new("node");
        command
            .arg(peers_dir().join("oidc-provider.mjs"))
            .env("TLS_CERT", &ca.cert_file)
            .env("TLS_KEY", &ca.key_file)
            .env("CLIENT_JWKS", Value::Object(jwks).to_string())
            .env("DEBUG", std::env::var("E2E_IDP_DEBUG").unwrap_or_default())
            .stdin(Stdio::piped());
        let NodePeer { child, info, logs } =
            start_peer(command, "the OpenID providers", Duration::from_mins(1));
        let provider = |name: &str| ProviderInfo {
            issuer: info[name]["issuer"].as_str().unwrap().to_owned(),
            signing_jwk: info[name]["signing_jwk"].clone(),
        };
        Self {
            idporten: provider("idporten"),
            helseid: provider("helseid"),
            child,
            ca,
            client_keys,
            logs,
        }
    }

    pub fn info(&self, idp: Idp) -> &ProviderInfo {
        match idp {
            Idp::Idporten => &self.idporten,
            Idp::Helseid => &self.helseid,
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn client_key(&self, client_id: &str) -> &TestClientKey {
        &self
            .client_keys
            .iter()
            .find(|(id, _)| id == client_id)
            .unwrap()
            .1
    }

    /// One pair of providers for the whole test process (it exits with the process: the
    /// script ends when its stdin closes).
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<IdentityProviders> = OnceLock::new();
        SHARED.get_or_init(Self::start)
    }

    /// An HTTPS client that trusts the test CA.
    pub fn http(&self) -> reqwest::Client {
        icbt_auth::http::https_client(Some(&self.ca.ca_file), Duration::from_secs(10)).unwrap()
    }

    /// An OAuth client of `idp` as `client_id`, DPoP-bound when `dpop`.
    pub fn oauth_client(&self, idp: Idp, client_id: &str, dpop: bool) -> OidcClient {
        self.oauth_client_with(idp, client_id, dpop.then(|| DpopKey::generate().unwrap()))
    }

    /// An OAuth client of `idp` as `client_id` with this DPoP key, if any.
    pub fn oauth_client_with(
        &self,
        idp: Idp,
        client_id: &str,
        dpop: Option<DpopKey>,
    ) -> OidcClient {
        let issuer = self.info(idp).issuer.clone();
        let keys = IssuerKeys::new(
            issuer.clone(),
            format!("{issuer}/.well-known/openid-configuration"),
            Arc::new(HttpFetch::new(self.http())),
            KeyCachePolicy {
                max_age: Duration::from_hours(1),
                min_refetch_interval: Duration::from_secs(1),
            },
        );
        let key = ClientKey::from_pkcs8(
            &self.client_key(client_id).der,
            ClientKeyAlgorithm::ES256,
            Some(format!("{client_id}-key")),
        )
        .unwrap();
        OidcClient::new(
            client_id.to_owned(),
            key,
            None,
            Arc::new(keys),
            self.http(),
            dpop,
        )
    }

    /// A system token (client credentials) from HelseID for the gateway's API.
    pub async fn system_token(&self, client_id: &str, dpop: bool) -> (TokenResponse, OidcClient) {
        let client = self.oauth_client(Idp::Helseid, client_id, dpop);
        let token = client
            .client_credentials(Idp::Helseid.api_scope(), Some(Idp::Helseid.api_resource()))
            .await
            .unwrap_or_else(|e| panic!("client credentials: {e}\n{}", self.logs().join("\n")));
        (token, client)
    }

    /// Logs `account` in at `idp` through PAR, PKCE and the code exchange, asking for
    /// `scope` at the gateway's API, and returns the tokens and the client (with its DPoP
    /// key when `dpop`).
    pub async fn login(
        &self,
        idp: Idp,
        account: &Value,
        scope: &str,
        dpop: bool,
    ) -> (TokenResponse, OidcClient) {
        self.login_with(
            idp,
            account,
            scope,
            dpop.then(|| DpopKey::generate().unwrap()),
        )
        .await
    }

    /// [`Self::login`] with a given DPoP key.
    pub async fn login_with(
        &self,
        idp: Idp,
        account: &Value,
        scope: &str,
        dpop: Option<DpopKey>,
    ) -> (TokenResponse, OidcClient) {
        let client = self.oauth_client_with(idp, "icbt-platform", dpop);
        let pkce = Pkce::generate();
        let state = random_value();
        let nonce = random_value();
        let login_hint = URL_SAFE_NO_PAD.encode(account.to_string());
        let redirect_uri = "https://platform.test/callback";
        let params = [
            ("response_type", "code"),
            ("redirect_uri", redirect_uri),
            ("scope", scope),
            ("resource", idp.api_resource()),
            ("state", state.as_str()),
            ("nonce", nonce.as_str()),
            ("code_challenge", pkce.challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("login_hint", login_hint.as_str()),
        ];
        let request_uri = client
            .push_authorization_request(&params)
            .await
            .unwrap_or_else(|e| panic!("PAR: {e}\n{}", self.logs().join("\n")));
        let location = self
            .follow_to_redirect_uri(
                &client.authorization_url(&request_uri).await.unwrap(),
                redirect_uri,
            )
            .await;
        let url = url::Url::parse(&location).unwrap();
        let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(
            query.get("state"),
            Some(&state),
            "state comes back unchanged: {location}"
        );
        let code = query
            .get("code")
            .unwrap_or_else(|| panic!("no code in {location}"));
        let tokens = client
            .exchange_code(code, redirect_uri, &pkce.verifier)
            .await
            .unwrap_or_else(|e| panic!("code exchange: {e}\n{}", self.logs().join("\n")));
        (tokens, client)
    }

    /// Follows the provider's redirects (carrying its cookies, as a browser would) until
    /// one leads to `redirect_uri`; returns that location.
    pub async fn follow_to_redirect_uri(&self, start: &str, redirect_uri: &str) -> String {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_only([reqwest::Certificate::from_pem(
                &std::fs::read(&self.ca.ca_file).unwrap(),
            )
            .unwrap()])
            .build()
            .unwrap();
        let mut cookies: Vec<String> = Vec::new();
        let mut url = start.to_owned();
        for _ in 0..10 {
            let mut request = http.get(&url);
            if !cookies.is_empty() {
                request = request.header("cookie", cookies.join("; "));
            }
            let response = request.send().await.unwrap();
            for set in response.headers().get_all("set-cookie") {
                let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
                let name = pair.split('=').next().unwrap().to_owned();
                cookies.retain(|c| !c.starts_with(&format!("{name}=")));
                cookies.push(pair);
            }
            let status = response.status();
            let Some(location) = response
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned())
            else {
                panic!(
                    "login stopped at {url} with {status}: {}\n{}",
                    response.text().await.unwrap_or_default(),
                    self.logs().join("\n")
                );
            };
            let next = url::Url::parse(&url)
                .unwrap()
                .join(&location)
                .unwrap()
                .to_string();
            if next.starts_with(redirect_uri) {
                return next;
            }
            url = next;
        }
        panic!(
            "too many redirects during login\n{}",
            self.logs().join("\n")
        );
    }

    /// A bearer token of the patient with national id `pid`, signed by the ID-porten
    /// provider's key as if it had logged them in, expiring `valid_for` seconds from now:
    /// for tests of expiry, and for benches that need thousands of patients without a
    /// login each.
    pub fn patient_token(&self, pid: &str, valid_for: i64) -> String {
        let now = icbt_auth::now_secs();
        let claims = serde_json::json!({
            "iss": self.idporten.issuer, "aud": Idp::Idporten.api_resource(),
            "scope": format!("openid {}", Idp::Idporten.api_scope()),
            "exp": now + valid_for, "iat": now, "jti": uuid::Uuid::new_v4().to_string(),
            "client_id": "icbt-platform", "pid": pid, "acr": "idporten-loa-high",
        });
        self.forge(Idp::Idporten, &serde_json::json!({}), &claims)
    }

    /// A token signed with `idp`'s real signing key, with `header` members added and
    /// exactly `claims`.
    pub fn forge(&self, idp: Idp, header: &Value, claims: &Value) -> String {
        let jwk = &self.info(idp).signing_jwk;
        let mut full_header = json!({ "alg": jwk["alg"], "typ": "at+jwt", "kid": jwk["kid"] });
        for (k, v) in header.as_object().unwrap() {
            full_header[k] = v.clone();
        }
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(full_header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let b = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
        let rng = SystemRandom::new();
        let signature = if jwk["kty"] == "EC" {
            let mut point = vec![4u8];
            point.extend(b("x"));
            point.extend(b("y"));
            let pair = ring::signature::EcdsaKeyPair::from_private_key_and_public_key(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &b("d"),
                &point,
                &rng,
            )
            .unwrap();
            pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
        } else {
            let components = ring::rsa::KeyPairComponents {
                public_key: ring::rsa::PublicKeyComponents {
                    n: b("n"),
                    e: b("e"),
                },
                d: b("d"),
                p: b("p"),
                q: b("q"),
                dP: b("dp"),
                dQ: b("dq"),
                qInv: b("qi"),
            };
            let pair = ring::rsa::KeyPair::from_components(&components).unwrap();
            let mut out = vec![0; pair.public().modulus_len()];
            pair.sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &rng,
                input.as_bytes(),
                &mut out,
            )
            .unwrap();
            out
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// A `[[login]]` table for the hosted login at `idp` as client `icbt-gateway`.
    pub fn login_config(&self, idp: Idp) -> String {
        let (issuer, acr) = match idp {
            Idp::Idporten => ("idporten", "acr_values = \"idporten-loa-high\"\n"),
            Idp::Helseid => ("helseid", ""),
        };
        format!(
            r#"
[[login]]
issuer = "{issuer}"
client_id = "icbt-gateway"
key_file = "{key}"
key_algorithm = "ES256"
key_id = "icbt-gateway-key"
redirect_uri = "https://gateway.test/auth/callback"
scope = "openid {scope}"
resource = "{resource}"
{acr}post_logout_redirect_uri = "https://platform.test/"
"#,
            key = self.client_key("icbt-gateway").pem_file.display(),
            scope = idp.api_scope(),
            resource = idp.api_resource(),
        )
    }

    /// The `[auth]` configuration that trusts both providers, as TOML.
    pub fn gateway_config(&self) -> String {
        format!(
            r#"
[auth]
trust_roots_file = "{ca}"

[[auth.issuers]]
name = "idporten"
kind = "idporten"
issuer = "{idporten}"
audience = "{idporten_aud}"
algorithms = ["RS256"]
required_scopes = ["{idporten_scope}"]

[[auth.issuers]]
name = "helseid"
kind = "helseid"
issuer = "{helseid}"
audience = "{helseid_aud}"
algorithms = ["ES256"]
required_scopes = ["{helseid_scope}"]

[auth.auditors]
scope = "nhn:icbt-gateway/audit"
"#,
            ca = self.ca.ca_file.display(),
            idporten = self.idporten.issuer,
            idporten_aud = Idp::Idporten.api_resource(),
            idporten_scope = Idp::Idporten.api_scope(),
            helseid = self.helseid.issuer,
            helseid_aud = Idp::Helseid.api_resource(),
            helseid_scope = Idp::Helseid.api_scope(),
        )
    }
}

impl Drop for IdentityProviders {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A patient account at the ID-porten-like provider.
pub fn patient_account(pid: &str, acr: &str) -> Value {
    json!({ "pid": pid, "acr": acr })
}

/// A personnel account at the HelseID-like provider.
pub fn clinician_account(pid: &str, hpr: Option<&str>, security_level: u8) -> Value {
    json!({ "pid": pid, "hpr": hpr, "security_level": security_level, "acr": "Level4" })
}

/// Someone holding a token: sends API requests the way their client would (DPoP with a
/// fresh proof when the token is bound, else Bearer).
#[derive(Debug)]
pub struct Actor {
    pub token: TokenResponse,
    pub client: OidcClient,
    /// PKCS#8 DER of the DPoP key the token is bound to, for handing to a CLI.
    pub dpop_pkcs8: Option<Vec<u8>>,
}

impl Actor {
    pub async fn system(client_id: &str) -> Self {
        let (token, client) = IdentityProviders::shared()
            .system_token(client_id, true)
            .await;
        Self {
            token,
            client,
            dpop_pkcs8: None,
        }
    }

    pub async fn patient(pid: &str) -> Self {
        let account = patient_account(pid, "idporten-loa-high");
        let scope = format!("openid {}", Idp::Idporten.api_scope());
        let (token, client) = IdentityProviders::shared()
            .login(Idp::Idporten, &account, &scope, false)
            .await;
        Self {
            token,
            client,
            dpop_pkcs8: None,
        }
    }

    pub async fn therapist(pid: &str, hpr: &str) -> Self {
        let account = clinician_account(pid, Some(hpr), 4);
        let scope = format!("openid {}", Idp::Helseid.api_scope());
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap()
        .as_ref()
        .to_vec();
        let (token, client) = IdentityProviders::shared()
            .login_with(
                Idp::Helseid,
                &account,
                &scope,
                Some(DpopKey::from_pkcs8(&pkcs8).unwrap()),
            )
            .await;
        Self {
            token,
            client,
            dpop_pkcs8: Some(pkcs8),
        }
    }

    /// A clinician whose token carries the auditor scope.
    pub async fn auditor(pid: &str, hpr: &str) -> Self {
        let account = clinician_account(pid, Some(hpr), 4);
        let scope = format!("openid {} nhn:icbt-gateway/audit", Idp::Helseid.api_scope());
        let (token, client) = IdentityProviders::shared()
            .login(Idp::Helseid, &account, &scope, true)
            .await;
        Self {
            token,
            client,
            dpop_pkcs8: None,
        }
    }

    /// `method` on `url` with an optional JSON body; panics if the request fails.
    pub async fn call(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> reqwest::Response {
        self.try_call(http, method, url, body).await.unwrap()
    }

    /// The headers that authenticate `method` on `url`: a DPoP-bound token with a fresh
    /// proof, or a bearer token.
    pub fn credentials(&self, method: &str, url: &str) -> Vec<(&'static str, String)> {
        let token = &self.token.access_token;
        match self.client.dpop_key() {
            Some(key) => {
                let proof = key.proof(method, url, Some(token), None, icbt_auth::now_secs());
                vec![("authorization", format!("DPoP {token}")), ("dpop", proof)]
            }
            None => vec![("authorization", format!("Bearer {token}"))],
        }
    }

    /// `method` on `url` with an optional JSON body.
    pub async fn try_call(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut request = http.request(method.clone(), url);
        for (name, value) in self.credentials(method.as_str(), url) {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await
    }
}
