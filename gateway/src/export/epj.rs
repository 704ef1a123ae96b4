//! The exporter's FHIR client: transaction bundles and searches over HTTPS, with a HelseID
//! client-credentials token bound to a DPoP key (a fresh proof per request), and the
//! classification of every answer into delivered, worth retrying, or refused for good.

use std::sync::Arc;

use icbt_auth::client::OutboundTokens;
use serde_json::Value;

/// Why a call did not deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// Transport errors, time-outs, 5xx, 429, 408, 401: try again later.
    Transient(String),
    /// A 4xx with an OperationOutcome: the server read the request and will not accept
    /// it; sending it again cannot help. `outcome` is its JSON, kept for the operator.
    Refused { status: u16, outcome: String },
}

/// Answers longer than this are cut before they are stored.
const MAX_OUTCOME_BYTES: usize = 16 * 1024;

/// One FHIR server.
#[derive(Clone, Debug)]
pub struct Epj {
    http: reqwest::Client,
    tokens: Arc<OutboundTokens>,
}

impl Epj {
    pub fn new(http: reqwest::Client, tokens: Arc<OutboundTokens>) -> Self {
        Self { http, tokens }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        htu: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Value, CallError> {
        let (authorization, dpop) = self
            .tokens
            .authorize(method.as_str(), htu)
            .await
            .map_err(|e| CallError::Transient(format!("token: {e}")))?;
        let mut request = self
            .http
            .request(method, url)
            .header("authorization", authorization)
            .header("accept", "application/fhir+json");
        if let Some(proof) = dpop {
            request = request.header("dpop", proof);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/fhir+json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| CallError::Transient(format!("request failed: {}", without_url(&e))))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            CallError::Transient(format!("reading the answer failed: {}", without_url(&e)))
        })?;
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            return json.ok_or_else(|| CallError::Transient(format!("HTTP {status} without JSON")));
        }
        let code = status.as_u16();
        let is_outcome = json
            .as_ref()
            .is_some_and(|j| j["resourceType"] == "OperationOutcome");
        if status.is_client_error() && ![401, 408, 429].contains(&code) && is_outcome {
            let mut outcome = String::from_utf8_lossy(&bytes).into_owned();
            outcome.truncate(MAX_OUTCOME_BYTES);
            return Err(CallError::Refused {
                status: code,
                outcome,
            });
        }
        Err(CallError::Transient(format!("HTTP {code}")))
    }

    /// POSTs a transaction `bundle` to `base`; every entry of the answer must be 2xx.
    pub async fn transaction(&self, base: &str, bundle: &Value) -> Result<(), CallError> {
        let body = serde_json::to_vec(bundle)
            .map_err(|e| CallError::Transient(format!("serialising the bundle: {e}")))?;
        let answer = self
            .send(reqwest::Method::POST, base, base, Some(body))
            .await?;
        let entries = answer["entry"].as_array().map_or(&[][..], Vec::as_slice);
        let bad = entries.iter().find(|e| {
            !e["response"]["status"]
                .as_str()
                .is_some_and(|s| s.starts_with('2'))
        });
        if answer["resourceType"] != "Bundle"
            || entries.len() != bundle["entry"].as_array().map_or(0, Vec::len)
        {
            return Err(CallError::Transient(
                "the answer is not a transaction-response with one entry per request".into(),
            ));
        }
        if let Some(entry) = bad {
            return Err(CallError::Transient(format!(
                "an entry answered {}",
                entry["response"]["status"]
            )));
        }
        Ok(())
    }

    /// Whether a search (`Type?query`) on `base` finds anything.
    pub async fn exists(
        &self,
        base: &str,
        resource_type: &str,
        query: &str,
    ) -> Result<bool, CallError> {
        let htu = format!("{base}/{resource_type}");
        let url = format!("{htu}?{query}&_count=1");
        let answer = self.send(reqwest::Method::GET, &url, &htu, None).await?;
        Ok(answer["entry"].as_array().is_some_and(|e| !e.is_empty()))
    }
}

/// reqwest's errors name the URL; ours name only what failed (the URL holds identifiers).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "broken body"
    } else {
        "transport error"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}
