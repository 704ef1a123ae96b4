//! The device key directory, the gateway's envelope policy and the client SDK, through
//! the real gateway with real tokens on every backend: keys are published, proven,
//! revoked and expire; an envelope that leaves out the journal or a participant, names
//! another message, or is malformed is refused with a problem that says so; and a key
//! swapped by the server is caught by the SDK.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // test code stops at the first surprise; scenarios read top to bottom

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use icbt_auth::dpop::DpopKey;
use icbt_client::{Client, ClientError, Credentials};
use icbt_e2e::idp::{Actor, CLINIC_ORG, IdentityProviders};
use icbt_e2e::sealed::{Sealer, device_body, device_body_expiring, in_a_year_ms};
use icbt_e2e::tamper::rewrite_key_log;
use icbt_e2e::{
    Backend, Gateway, GatewayOptions, SYNTHETIC_FNR, audit_public_key, backends, connect_database,
    expect_problem,
};
use icbt_envelope::{Binding, DeviceKeys, PublicKey, seal};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;
use zeroize::Zeroizing;

const THERAPIST_HPR: &str = "565501872";
const THERAPIST_PID: &str = "01018512528";

struct Scene {
    gw: Gateway,
    http: reqwest::Client,
    platform: Actor,
    patient: Actor,
    therapist: Actor,
    sealer: Sealer,
    episode: Uuid,
}

async fn scene(backend: Backend) -> Scene {
    let gw = Gateway::start_with(
        backend,
        GatewayOptions {
            config_toml: Some(IdentityProviders::shared().gateway_config()),
            env: vec![("ICBT_DEVICES__MAX_PER_OWNER".into(), "4".into())],
            ..Default::default()
        },
    )
    .await;
    let http = gw.client();
    let platform = Actor::system("icbt-platform").await;
    let patient = Actor::patient(SYNTHETIC_FNR).await;
    let therapist = Actor::therapist(THERAPIST_PID, THERAPIST_HPR).await;
    let sealer = Sealer::new(&gw.url, &http, &platform, CLINIC_ORG).await;
    let episode = Uuid::new_v4();
    let s = Scene {
        gw,
        http,
        platform,
        patient,
        therapist,
        sealer,
        episode,
    };
    let body = json!({ "patient": SYNTHETIC_FNR, "organisation": CLINIC_ORG, "programme": "depression-14w" });
    s.ok(
        &s.platform,
        Method::PUT,
        &format!("/v1/episodes/{episode}"),
        Some(&body),
    )
    .await;
    let team = json!({ "members": [{ "hpr_number": THERAPIST_HPR, "role": "therapist" }] });
    s.ok(
        &s.platform,
        Method::PUT,
        &format!("/v1/episodes/{episode}/care-team"),
        Some(&team),
    )
    .await;
    s
}

impl Scene {
    async fn call(
        &self,
        who: &Actor,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> reqwest::Response {
        who.call(&self.http, method, &format!("{}{path}", self.gw.url), body)
            .await
    }

    async fn ok(&self, who: &Actor, method: Method, path: &str, body: Option<&Value>) -> Value {
        let response = self.call(who, method, path, body).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// The SDK as `who`, trusting the gateway's checkpoint key.
    fn sdk(&self, who: &Actor) -> Client {
        let dpop = who
            .dpop_pkcs8
            .as_ref()
            .map(|der| DpopKey::from_pkcs8(der).unwrap());
        Client::new(
            self.http.clone(),
            url::Url::parse(&self.gw.url).unwrap(),
            Credentials {
                access_token: Zeroizing::new(who.token.access_token.clone()),
                dpop,
            },
            vec![audit_public_key()],
        )
    }

    async fn key_log_size(&self, who: &Actor) -> u64 {
        self.ok(who, Method::GET, "/v1/keys/checkpoint", None).await["size"]
            .as_u64()
            .unwrap()
    }

    /// PUTs a message with these envelope bytes.
    async fn put_envelope(
        &self,
        who: &Actor,
        message: Uuid,
        kind: &str,
        envelope: &[u8],
    ) -> reqwest::Response {
        let body = json!({ "kind": kind, "envelope": URL_SAFE_NO_PAD.encode(envelope) });
        self.call(
            who,
            Method::PUT,
            &format!("/v1/episodes/{}/messages/{message}", self.episode),
            Some(&body),
        )
        .await
    }

    fn binding(&self, message: Uuid, kind: &str, sender: &DeviceKeys) -> Binding {
        Binding {
            episode: self.episode.to_string(),
            message: message.to_string(),
            kind: kind.into(),
            sender: sender.device_id(),
        }
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

#[tokio::test]
async fn directory_publishes_proves_revokes_and_refuses() {
    for backend in backends() {
        let s = scene(backend).await;
        let patient = s.sdk(&s.patient);
        let keys = DeviceKeys::generate().unwrap();
        let before = s.key_log_size(&s.patient).await;
        let published = patient.publish_device(&keys, in_a_year_ms()).await.unwrap();
        assert_eq!(published.head.size, before + 1, "{backend:?}");
        assert_eq!(
            published.devices[0].owner,
            format!("patient:{SYNTHETIC_FNR}")
        );

        // The same request again is the stored device, not a second leaf.
        let path = format!("/v1/devices/{}", keys.device_id());
        let same = s
            .call(
                &s.patient,
                Method::PUT,
                &path,
                Some(&device_body_expiring(
                    &keys,
                    published.devices[0].expires_at_ms,
                )),
            )
            .await;
        assert_eq!(same.status(), 200);
        assert_eq!(s.key_log_size(&s.patient).await, before + 1);
        // Another encryption key under a taken device id, by the holder of its signing
        // key.
        let other = DeviceKeys::generate().unwrap();
        let swapped = device_body(&DeviceKeys {
            signing: DeviceKeys::from_private_json(&keys.to_private_json())
                .unwrap()
                .signing,
            encryption: DeviceKeys::from_private_json(&other.to_private_json())
                .unwrap()
                .encryption,
        });
        expect_problem(
            s.call(&s.patient, Method::PUT, &path, Some(&swapped)).await,
            409,
            "device-conflict",
        )
        .await;

        // Bad requests name the field.
        let fresh = DeviceKeys::generate().unwrap();
        let cases = [
            (
                format!("/v1/devices/{}", other.device_id()),
                device_body(&fresh),
                "device_id",
            ),
            (
                format!("/v1/devices/{}", fresh.device_id()),
                {
                    let mut b = device_body(&fresh);
                    b["expires_at_ms"] = json!(now_ms() + 500 * 86_400_000);
                    b
                },
                "expires_at_ms",
            ),
            (
                format!("/v1/devices/{}", fresh.device_id()),
                {
                    let mut b = device_body(&fresh);
                    b["expires_at_ms"] = json!(now_ms() - 1);
                    b
                },
                "expires_at_ms",
            ),
            (
                format!("/v1/devices/{}", fresh.device_id()),
                {
                    let mut b = device_body(&fresh);
                    b["encryption_jwk"]["y"] = json!(URL_SAFE_NO_PAD.encode([1u8; 32]));
                    b
                },
                "encryption_jwk",
            ),
            (
                format!("/v1/devices/{}", fresh.device_id()),
                {
                    let mut b = device_body(&fresh);
                    b["signing_jwk"] =
                        serde_json::to_value(fresh.signing.to_private_jwk()).unwrap();
                    b
                },
                "signing_jwk",
            ),
        ];
        for (path, body, field) in cases {
            let problem = expect_problem(
                s.call(&s.patient, Method::PUT, &path, Some(&body)).await,
                422,
                "invalid-field",
            )
            .await;
            assert_eq!(problem["path"], field, "{backend:?}: {problem}");
        }

        // Publishing needs a fresh proof, made with the device's own signing key, for
        // exactly its encryption key and expiry.
        let stranger = DeviceKeys::generate().unwrap();
        let proofs = [
            (
                "another key's",
                stranger
                    .possession_proof(in_a_year_ms(), icbt_auth::now_secs())
                    .unwrap(),
            ),
            (
                "another expiry's",
                fresh
                    .possession_proof(in_a_year_ms() + 1, icbt_auth::now_secs())
                    .unwrap(),
            ),
            (
                "a stale",
                fresh
                    .possession_proof(in_a_year_ms(), icbt_auth::now_secs() - 600)
                    .unwrap(),
            ),
            ("a garbled", "not.a.jws".to_owned()),
        ];
        let fresh_path = format!("/v1/devices/{}", fresh.device_id());
        let size = s.key_log_size(&s.patient).await;
        for (what, proof) in proofs {
            let mut body = device_body(&fresh);
            body["proof"] = json!(proof);
            expect_problem(
                s.call(&s.patient, Method::PUT, &fresh_path, Some(&body))
                    .await,
                422,
                "device-proof-invalid",
            )
            .await;
            assert_eq!(
                s.key_log_size(&s.patient).await,
                size,
                "{backend:?}: nothing published with {what} proof"
            );
        }
        let mut unproven = device_body(&fresh);
        unproven.as_object_mut().unwrap().remove("proof");
        let problem = expect_problem(
            s.call(&s.patient, Method::PUT, &fresh_path, Some(&unproven))
                .await,
            400,
            "malformed-json",
        )
        .await;
        assert!(
            problem["detail"].as_str().unwrap().contains("proof"),
            "{backend:?}: names the missing field: {problem}"
        );

        // Only a system client of the clinic publishes its journal key.
        let journal = DeviceKeys::generate().unwrap();
        let journal_path = format!(
            "/v1/clinics/{CLINIC_ORG}/journal-keys/{}",
            journal.device_id()
        );
        expect_problem(
            s.call(
                &s.patient,
                Method::PUT,
                &journal_path,
                Some(&device_body(&journal)),
            )
            .await,
            403,
            "forbidden",
        )
        .await;
        let other_org = Actor::system("other-org-platform").await;
        expect_problem(
            s.call(
                &other_org,
                Method::PUT,
                &journal_path,
                Some(&device_body(&journal)),
            )
            .await,
            403,
            "forbidden",
        )
        .await;

        // The episode lists its participants' active keys and the journal, each proven.
        let therapist = s.sdk(&s.therapist);
        let therapist_keys = DeviceKeys::generate().unwrap();
        therapist
            .publish_device(&therapist_keys, in_a_year_ms())
            .await
            .unwrap();
        let directory = therapist.episode_keys(s.episode, false).await.unwrap();
        let mut owners: Vec<String> = directory.devices.iter().map(|d| d.owner.clone()).collect();
        owners.sort();
        assert_eq!(
            owners,
            [
                format!("clinician:{THERAPIST_HPR}"),
                format!("journal:{CLINIC_ORG}"),
                format!("patient:{SYNTHETIC_FNR}"),
            ],
            "{backend:?}"
        );

        // Someone else's device is no device of theirs; the owner revokes it.
        expect_problem(
            s.call(&s.therapist, Method::DELETE, &path, None).await,
            404,
            "not-found",
        )
        .await;
        let revoked = patient.revoke_device(&keys.device_id()).await.unwrap();
        assert!(revoked.devices[0].revoked, "the revoke leaf is proven");
        let directory = therapist.episode_keys(s.episode, false).await.unwrap();
        assert!(directory.device(&keys.device_id()).is_none(), "{backend:?}");
        let all = therapist.episode_keys(s.episode, true).await.unwrap();
        assert!(all.device(&keys.device_id()).unwrap().revoked);
        // A revoked id is spent.
        expect_problem(
            s.call(&s.patient, Method::PUT, &path, Some(&device_body(&keys)))
                .await,
            409,
            "device-conflict",
        )
        .await;

        // At most devices.max_per_owner active devices each (4 here).
        for _ in 0..4 {
            patient
                .publish_device(&DeviceKeys::generate().unwrap(), in_a_year_ms())
                .await
                .unwrap();
        }
        let over = DeviceKeys::generate().unwrap();
        let problem = expect_problem(
            s.call(
                &s.patient,
                Method::PUT,
                &format!("/v1/devices/{}", over.device_id()),
                Some(&device_body(&over)),
            )
            .await,
            409,
            "device-limit",
        )
        .await;
        assert_eq!(problem["limit"], 4);
        let mine = s.ok(&s.patient, Method::GET, "/v1/devices", None).await;
        assert_eq!(
            mine["devices"].as_array().unwrap().len(),
            5,
            "4 active, 1 revoked"
        );

        // Publishing and revoking are in the access log.
        let auditor = Actor::auditor("01018512870", "100000002").await;
        let records = s
            .ok(
                &auditor,
                Method::GET,
                "/v1/audit/records?action=key-revoke",
                None,
            )
            .await;
        assert_eq!(records["records"].as_array().unwrap().len(), 1, "{records}");
    }
}

#[tokio::test]
async fn the_envelope_policy_names_what_is_wrong() {
    for backend in backends() {
        let s = scene(backend).await;
        let patient = s.sealer.device(&s.patient).await;
        let therapist = s.sealer.device(&s.therapist).await;
        let journal = s.sealer.journal.clone();
        let all: Vec<PublicKey> = [&patient, &therapist, &journal]
            .iter()
            .map(|d| d.encryption.public().clone())
            .collect();

        let id = Uuid::new_v4();
        let good = seal(
            b"ok",
            &s.binding(id, "feedback", &therapist),
            &therapist.signing,
            &all,
        )
        .unwrap();
        assert_eq!(
            s.put_envelope(&s.therapist, id, "feedback", &good)
                .await
                .status(),
            201,
            "{backend:?}"
        );

        // Without the journal.
        let id = Uuid::new_v4();
        let sealed = seal(
            b"x",
            &s.binding(id, "feedback", &therapist),
            &therapist.signing,
            &all[..2],
        )
        .unwrap();
        let problem = expect_problem(
            s.put_envelope(&s.therapist, id, "feedback", &sealed).await,
            422,
            "envelope-recipient-missing",
        )
        .await;
        assert_eq!(problem["journal"], true);
        assert_eq!(problem["missing"], json!([journal.encryption.kid()]));

        // Without the patient's device.
        let sealed = seal(
            b"x",
            &s.binding(id, "feedback", &therapist),
            &therapist.signing,
            &all[1..],
        )
        .unwrap();
        let problem = expect_problem(
            s.put_envelope(&s.therapist, id, "feedback", &sealed).await,
            422,
            "envelope-recipient-missing",
        )
        .await;
        assert_eq!(problem["journal"], false);
        assert_eq!(problem["missing"], json!([patient.encryption.kid()]));

        // With an outsider's key.
        let outsider = DeviceKeys::generate().unwrap();
        let mut more = all.clone();
        more.push(outsider.encryption.public().clone());
        let sealed = seal(
            b"x",
            &s.binding(id, "feedback", &therapist),
            &therapist.signing,
            &more,
        )
        .unwrap();
        let problem = expect_problem(
            s.put_envelope(&s.therapist, id, "feedback", &sealed).await,
            422,
            "envelope-recipient-unknown",
        )
        .await;
        assert_eq!(problem["unknown"], json!([outsider.encryption.kid()]));

        // Sealed for another message id, or another kind: not replayable here.
        let sealed = seal(
            b"x",
            &s.binding(Uuid::new_v4(), "feedback", &therapist),
            &therapist.signing,
            &all,
        )
        .unwrap();
        let problem = expect_problem(
            s.put_envelope(&s.therapist, id, "feedback", &sealed).await,
            422,
            "envelope-binding-mismatch",
        )
        .await;
        assert_eq!(problem["field"], "message");
        let sealed = seal(
            b"x",
            &s.binding(id, "feedback", &therapist),
            &therapist.signing,
            &all,
        )
        .unwrap();
        let problem = expect_problem(
            s.put_envelope(&s.therapist, id, "message", &sealed).await,
            422,
            "envelope-binding-mismatch",
        )
        .await;
        assert_eq!(problem["field"], "kind");

        // A sender device that is not the caller's: unpublished, or someone else's.
        let unpublished = DeviceKeys::generate().unwrap();
        let sealed = seal(
            b"x",
            &s.binding(id, "feedback", &unpublished),
            &unpublished.signing,
            &all,
        )
        .unwrap();
        expect_problem(
            s.put_envelope(&s.therapist, id, "feedback", &sealed).await,
            422,
            "envelope-sender-not-a-device",
        )
        .await;
        let sealed = seal(
            b"x",
            &s.binding(id, "message", &therapist),
            &therapist.signing,
            &all,
        )
        .unwrap();
        expect_problem(
            s.put_envelope(&s.patient, id, "message", &sealed).await,
            422,
            "envelope-sender-not-a-device",
        )
        .await;

        // Malformed envelopes: a clear problem, never a crash.
        let edit = |change: &dyn Fn(&mut Value)| {
            let mut v: Value = serde_json::from_slice(&good).unwrap();
            change(&mut v);
            serde_json::to_vec(&v).unwrap()
        };
        let truncated_tag = edit(&|v| {
            let tag = URL_SAFE_NO_PAD.decode(v["tag"].as_str().unwrap()).unwrap();
            v["tag"] = json!(URL_SAFE_NO_PAD.encode(&tag[..15]));
        });
        let off_curve = edit(&|v| {
            v["recipients"][0]["header"]["epk"]["y"] = json!(URL_SAFE_NO_PAD.encode([1u8; 32]));
        });
        let other_alg = edit(&|v| v["recipients"][0]["header"]["alg"] = json!("RSA-OAEP"));
        let compressed = edit(&|v| v["zip"] = json!("DEF"));
        for (name, bytes) in [
            ("not JSON", b"{\"protected\":".to_vec()),
            ("truncated tag", truncated_tag),
            ("point off the curve", off_curve),
            ("another algorithm", other_alg),
            ("zip", compressed),
        ] {
            let problem = expect_problem(
                s.put_envelope(&s.therapist, Uuid::new_v4(), "feedback", &bytes)
                    .await,
                422,
                "envelope-malformed",
            )
            .await;
            assert!(problem["reason"].is_string(), "{name}: {problem}");
        }

        // A revoked device sends nothing more; nor does an expired one.
        s.ok(
            &s.patient,
            Method::DELETE,
            &format!("/v1/devices/{}", patient.device_id()),
            None,
        )
        .await;
        let mut now_keys = all.clone();
        now_keys.remove(0);
        let sealed = seal(
            b"x",
            &s.binding(id, "message", &patient),
            &patient.signing,
            &now_keys,
        )
        .unwrap();
        expect_problem(
            s.put_envelope(&s.patient, id, "message", &sealed).await,
            422,
            "envelope-sender-not-a-device",
        )
        .await;
        let short = DeviceKeys::generate().unwrap();
        let body = device_body_expiring(&short, now_ms() + 1500);
        s.ok(
            &s.patient,
            Method::PUT,
            &format!("/v1/devices/{}", short.device_id()),
            Some(&body),
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
        let sealed = seal(
            b"x",
            &s.binding(id, "message", &short),
            &short.signing,
            &now_keys,
        )
        .unwrap();
        expect_problem(
            s.put_envelope(&s.patient, id, "message", &sealed).await,
            422,
            "envelope-sender-not-a-device",
        )
        .await;

        // Without any journal key, nothing can be sent.
        s.ok(
            &s.platform,
            Method::DELETE,
            &format!("/v1/devices/{}", journal.device_id()),
            None,
        )
        .await;
        let sealed = seal(
            b"x",
            &s.binding(id, "feedback", &therapist),
            &therapist.signing,
            &all[1..2],
        )
        .unwrap();
        let problem = expect_problem(
            s.put_envelope(&s.therapist, id, "feedback", &sealed).await,
            422,
            "journal-key-missing",
        )
        .await;
        assert_eq!(problem["clinic"], CLINIC_ORG);
        let health = s
            .http
            .get(format!("{}/healthz", s.gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200, "still serving after every refusal");
    }
}

#[tokio::test]
async fn the_sdk_seals_opens_and_catches_a_swapped_key() {
    for backend in backends() {
        let s = scene(backend).await;
        let (patient, therapist) = (s.sdk(&s.patient), s.sdk(&s.therapist));
        let patient_keys = DeviceKeys::generate().unwrap();
        let therapist_keys = DeviceKeys::generate().unwrap();
        patient
            .publish_device(&patient_keys, in_a_year_ms())
            .await
            .unwrap();
        therapist
            .publish_device(&therapist_keys, in_a_year_ms())
            .await
            .unwrap();

        therapist
            .send(
                &therapist_keys,
                s.episode,
                Uuid::new_v4(),
                "feedback",
                "Uke 1: godt jobbet".as_bytes(),
            )
            .await
            .unwrap();
        patient
            .send(
                &patient_keys,
                s.episode,
                Uuid::new_v4(),
                "message",
                b"Takk!",
            )
            .await
            .unwrap();
        let received = patient.receive(&patient_keys, s.episode, 0).await.unwrap();
        assert_eq!(received.len(), 2, "{backend:?}");
        assert_eq!(
            received[0].opened.as_ref().unwrap().payload,
            "Uke 1: godt jobbet".as_bytes()
        );
        assert_eq!(
            received[0].sender_owner.as_deref(),
            Some(format!("clinician:{THERAPIST_HPR}").as_str())
        );
        let on_the_other_side = therapist
            .receive(&therapist_keys, s.episode, 1)
            .await
            .unwrap();
        assert_eq!(
            on_the_other_side[0].opened.as_ref().unwrap().payload,
            b"Takk!"
        );

        // Both sides compute the same safety number from the verified directory.
        let seen_by_patient = patient.episode_keys(s.episode, false).await.unwrap();
        let seen_by_therapist = therapist.episode_keys(s.episode, false).await.unwrap();
        let patient_owner = format!("patient:{SYNTHETIC_FNR}");
        let therapist_owner = format!("clinician:{THERAPIST_HPR}");
        assert_eq!(
            icbt_envelope::safety_number(
                &seen_by_patient.signing_keys_of(&patient_owner),
                &seen_by_patient.signing_keys_of(&therapist_owner)
            ),
            icbt_envelope::safety_number(
                &seen_by_therapist.signing_keys_of(&therapist_owner),
                &seen_by_therapist.signing_keys_of(&patient_owner)
            )
        );

        // A key swapped in the directory alone does not match its proven leaf.
        let attacker = DeviceKeys::generate().unwrap();
        {
            let mut db = connect_database(s.gw.data_dir.path(), s.gw.database()).await;
            sqlx::query(
                "UPDATE devices SET encryption_jwk = $1, encryption_kid = $2 WHERE device_id = $3",
            )
            .bind(serde_json::to_string(&attacker.encryption.public().to_jwk()).unwrap())
            .bind(attacker.encryption.kid())
            .bind(patient_keys.device_id())
            .execute(&mut db)
            .await
            .unwrap();
        }
        let error = therapist.episode_keys(s.episode, false).await.unwrap_err();
        assert!(
            matches!(&error, ClientError::Directory(m) if m.contains("differ from the log")),
            "{backend:?}: {error}"
        );

        // The log rewritten and re-signed: a client that saw the old head catches it; a
        // client with no memory cannot, which is why the CLI keeps its head in a file.
        let remembered = therapist.seen();
        rewrite_key_log(
            &s.gw,
            &patient_keys.device_id(),
            attacker.encryption.public(),
        )
        .await;
        let error = therapist.episode_keys(s.episode, false).await.unwrap_err();
        assert!(
            matches!(&error, ClientError::Directory(m) if m.contains("does not extend")),
            "{backend:?}: {error}"
        );
        let restarted = s.sdk(&s.therapist).with_seen(remembered);
        assert!(restarted.episode_keys(s.episode, false).await.is_err());
        let forgetful = s.sdk(&s.therapist);
        let fooled = forgetful.episode_keys(s.episode, false).await.unwrap();
        assert_eq!(
            fooled
                .device(&patient_keys.device_id())
                .unwrap()
                .encryption
                .thumbprint(),
            attacker.encryption.kid()
        );
    }
}
