//! A clinic ready for sealed messages, as the client tests need it: a gateway trusting
//! the test OpenID providers, the clinic's journal key published by its platform, and one
//! active episode of the synthetic patient with one therapist.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::idp::{Actor, CLINIC_ORG};
use crate::sealed::Sealer;
use crate::{Backend, Gateway, SYNTHETIC_FNR, audit_public_key};

/// The episode's therapist.
pub const THERAPIST_HPR: &str = "565501872";
/// The therapist's (synthetic) national identity number.
pub const THERAPIST_PID: &str = "01018512528";

/// An active episode of the synthetic patient with [`THERAPIST_HPR`], made by `platform`.
pub async fn active_episode(gw: &Gateway, platform: &Actor) -> Uuid {
    start_episode(&gw.client(), &gw.url, platform, (SYNTHETIC_FNR, CLINIC_ORG)).await
}

/// An active episode of `patient` at `organisation` with [`THERAPIST_HPR`] as its care
/// team, made by `platform` on the gateway at `url`.
pub async fn start_episode(
    http: &reqwest::Client,
    url: &str,
    platform: &Actor,
    (patient, organisation): (&str, &str),
) -> Uuid {
    let id = Uuid::new_v4();
    for (suffix, body) in [
        (
            "",
            json!({ "patient": patient, "organisation": organisation, "programme": "insomnia-14w" }),
        ),
        (
            "/care-team",
            json!({ "members": [{ "hpr_number": THERAPIST_HPR, "role": "therapist" }] }),
        ),
        ("/state", json!({ "state": "active" })),
    ] {
        let response = platform
            .call(
                http,
                Method::PUT,
                &format!("{url}/v1/episodes/{id}{suffix}"),
                Some(&body),
            )
            .await;
        assert!(
            response.status().is_success(),
            "{suffix}: {}",
            response.status()
        );
    }
    id
}

/// A gateway with the clinic's journal key published and one active episode; the
/// episode's id and the key log's public key (base64), as the command lines take them.
pub async fn clinic(backend: Backend) -> (Gateway, String, String) {
    let gw = Gateway::start_trusting_test_providers(backend).await;
    let platform = Actor::system("icbt-platform").await;
    Sealer::new(&gw.url, &gw.client(), &platform, CLINIC_ORG).await;
    let episode = active_episode(&gw, &platform).await.to_string();
    (gw, episode, STANDARD.encode(audit_public_key()))
}
