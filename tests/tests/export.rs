//! The journal export end to end: episodes, messages and questionnaires sent through the
//! gateway (sealed, with the clinic journal key as a recipient) reach a real FHIR engine
//! (medplum, validating every resource, demanding DPoP-bound HelseID tokens) exactly once,
//! through `icbt-gateway export` as its own process, whatever the EPJ and the exporter do
//! meanwhile; every stored resource also passes PyPI `fhir.resources`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // test code stops at the first surprise

use std::collections::BTreeMap;

use base64::Engine as _;
use std::time::{Duration, Instant};

use icbt_e2e::epj::{Epj, ExporterProcess, export_config, identifiers, validate_independently};
use icbt_e2e::idp::{Actor, CLINIC_ORG, IdentityProviders};
use icbt_e2e::sealed::Sealer;
use icbt_e2e::{Backend, Gateway, GatewayOptions, SYNTHETIC_FNR, backends};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const THERAPIST_HPR: &str = "565501872";
const THERAPIST_PID: &str = "01018512528";
const MESSAGES: &str = "urn:icbt-gateway:test:message";
const EPISODES: &str = "urn:icbt-gateway:test:episode";

struct Scene {
    gw: Gateway,
    platform: Actor,
    patient: Actor,
    therapist: Actor,
    sealer: Sealer,
    journal_key: tempfile::NamedTempFile,
}

impl Scene {
    async fn new(backend: Backend) -> Self {
        let idps = IdentityProviders::shared();
        let gw = Gateway::start_with(
            backend,
            GatewayOptions {
                config_toml: Some(idps.gateway_config()),
                ..Default::default()
            },
        )
        .await;
        let platform = Actor::system("icbt-platform").await;
        let patient = Actor::patient(SYNTHETIC_FNR).await;
        let therapist = Actor::therapist(THERAPIST_PID, THERAPIST_HPR).await;
        let sealer = Sealer::new(&gw.url, &gw.client(), &platform, CLINIC_ORG).await;
        // Both parties have a device before anyone seals to the episode's keys.
        sealer.device(&patient).await;
        sealer.device(&therapist).await;
        let journal_key = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            journal_key.path(),
            sealer.journal.to_private_json().as_bytes(),
        )
        .unwrap();
        Self {
            gw,
            platform,
            patient,
            therapist,
            sealer,
            journal_key,
        }
    }

    async fn call(&self, who: &Actor, method: Method, path: &str, body: &Value) -> u16 {
        who.call(
            &self.gw.client(),
            method,
            &format!("{}{path}", self.gw.url),
            Some(body),
        )
        .await
        .status()
        .as_u16()
    }

    /// An active episode with the therapist as its care team.
    async fn episode(&self) -> Uuid {
        let id = Uuid::new_v4();
        let path = format!("/v1/episodes/{id}");
        let body = json!({ "patient": SYNTHETIC_FNR, "organisation": CLINIC_ORG, "programme": "depresjon-14u" });
        assert_eq!(
            self.call(&self.platform, Method::PUT, &path, &body).await,
            201
        );
        let team = json!({ "members": [{ "hpr_number": THERAPIST_HPR, "role": "therapist" }] });
        assert_eq!(
            self.call(
                &self.platform,
                Method::PUT,
                &format!("{path}/care-team"),
                &team
            )
            .await,
            200
        );
        self.state(id, "active").await;
        id
    }

    async fn state(&self, episode: Uuid, state: &str) {
        let path = format!("/v1/episodes/{episode}/state");
        assert_eq!(
            self.call(
                &self.platform,
                Method::PUT,
                &path,
                &json!({ "state": state })
            )
            .await,
            200
        );
    }

    /// Sends `content` (the inner content format, as text) sealed by `who`.
    async fn send(&self, who: &Actor, episode: Uuid, kind: &str, content: &str) -> Uuid {
        let id = Uuid::new_v4();
        let path = format!("/v1/episodes/{episode}/messages/{id}");
        let body = self.sealer.body(who, &path, kind, content).await;
        assert_eq!(self.call(who, Method::PUT, &path, &body).await, 201);
        id
    }

    /// The episode's history as `who` lists it.
    async fn history(&self, who: &Actor, episode: Uuid) -> Vec<Value> {
        let url = format!(
            "{}/v1/episodes/{episode}/messages?after=0&limit=100",
            self.gw.url
        );
        let page: Value = who
            .call(&self.gw.client(), Method::GET, &url, None)
            .await
            .json()
            .await
            .unwrap();
        page["messages"].as_array().unwrap().clone()
    }

    /// The risk alerts in the therapist's history, opened with the therapist's device.
    async fn alerts(&self, episode: Uuid) -> Vec<Value> {
        let device = self.sealer.device(&self.therapist).await;
        self.history(&self.therapist, episode)
            .await
            .iter()
            .filter(|m| m["audience"] == "care-team")
            .map(|m| {
                assert_eq!(m["kind"], "notice");
                serde_json::from_str(&self.sealer.open(&device, m)).unwrap()
            })
            .collect()
    }

    fn exporter(&self, epj: &Epj) -> ExporterProcess {
        ExporterProcess::start(&self.gw, &self.config(epj), &["run"])
    }

    fn config(&self, epj: &Epj) -> String {
        export_config(&self.gw, epj, self.journal_key.path())
    }

    /// `export status` as (pending, done, dead).
    fn status(&self, epj: &Epj) -> (u64, u64, u64) {
        let (ok, out) = ExporterProcess::start(&self.gw, &self.config(epj), &["status"]).finish();
        assert!(ok, "{out}");
        let line = out.lines().find(|l| l.starts_with("pending ")).unwrap();
        let numbers: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        (numbers[0], numbers[2], numbers[3])
    }

    /// Waits until nothing is pending; returns (done, dead).
    async fn drained(&self, epj: &Epj, exporter: &ExporterProcess) -> (u64, u64) {
        let deadline = Instant::now() + Duration::from_mins(3);
        loop {
            let (pending, done, dead) = self.status(epj);
            if pending == 0 {
                return (done, dead);
            }
            assert!(
                Instant::now() < deadline,
                "{pending} rows still pending; exporter logs:\n{}\nEPJ logs:\n{}",
                exporter.logs().join("\n"),
                epj.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

fn text(text: &str) -> String {
    json!({ "text": text }).to_string()
}

fn questionnaire(instrument: &str, items: &[u8]) -> String {
    json!({ "questionnaire": { "instrument": instrument, "items": items } }).to_string()
}

fn counts(resources: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in resources {
        *counts
            .entry(r["resourceType"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_finished_episode_reaches_the_epj_once_and_an_unmappable_message_waits_as_a_dead_letter()
{
    for backend in backends() {
        let s = Scene::new(backend).await;
        let epj = Epj::start();
        let episode = s.episode().await;
        let question = s
            .send(
                &s.patient,
                episode,
                "message",
                &text("Jeg sov dårlig denne uka."),
            )
            .await;
        let answer = json!({ "text": "Takk, la oss se på søvnrutinene.", "in_response_to": question.to_string() });
        let feedback = s
            .send(&s.therapist, episode, "feedback", &answer.to_string())
            .await;
        let phq9 = s
            .send(
                &s.patient,
                episode,
                "questionnaire-response",
                &questionnaire("PHQ-9", &[2, 2, 1, 2, 1, 1, 2, 1, 1]),
            )
            .await;
        let gad7 = s
            .send(
                &s.patient,
                episode,
                "questionnaire-response",
                &questionnaire("GAD-7", &[1, 1, 1, 0, 0, 1, 1]),
            )
            .await;
        // A client that does not speak the content format: sealed fine, never mappable.
        s.send(&s.patient, episode, "message", "just plain text")
            .await;
        let after = s
            .send(&s.patient, episode, "message", &text("Etter feilen"))
            .await;
        s.state(episode, "finished").await;

        let exporter = s.exporter(&epj);
        let (_, dead) = s.drained(&epj, &exporter).await;
        assert_eq!(dead, 1, "only the unmappable message is dead");

        let all = epj.all_resources().await;
        let expected: BTreeMap<String, usize> = [
            ("EpisodeOfCare", 1),
            ("Encounter", 3),
            ("Communication", 3),
            ("QuestionnaireResponse", 2),
            ("Observation", 2),
            ("Task", 1),
            ("Patient", 1),
            ("Binary", 1),
            ("DocumentReference", 1),
            ("List", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(counts(&all), expected, "each record once, nothing else");

        let communications = epj.resources("Communication").await;
        let mut sent = vec![
            question.to_string(),
            feedback.to_string(),
            after.to_string(),
        ];
        sent.sort();
        assert_eq!(identifiers(&communications, MESSAGES), sent);
        let reply = communications
            .iter()
            .find(|c| c["identifier"][0]["value"] == feedback.to_string())
            .unwrap();
        assert_eq!(
            reply["payload"][0]["contentString"],
            "Takk, la oss se på søvnrutinene."
        );
        assert_eq!(
            reply["inResponseTo"][0]["identifier"]["value"],
            question.to_string()
        );
        assert_eq!(reply["sender"]["identifier"]["value"], THERAPIST_HPR);
        assert!(
            reply["encounter"]["reference"]
                .as_str()
                .unwrap()
                .starts_with("Encounter/"),
            "the bundle's urn:uuid link became the server's id"
        );

        let episodes = epj.resources("EpisodeOfCare").await;
        assert_eq!(identifiers(&episodes, EPISODES), [episode.to_string()]);
        assert_eq!(episodes[0]["status"], "finished", "the last state won");
        assert_eq!(episodes[0]["patient"]["identifier"]["value"], SYNTHETIC_FNR);

        let observations = epj.resources("Observation").await;
        let phq_total = observations
            .iter()
            .find(|o| o["code"]["coding"][0]["code"] == "44261-6")
            .unwrap();
        assert_eq!(phq_total["valueInteger"], 13);
        assert_eq!(
            identifiers(&epj.resources("QuestionnaireResponse").await, MESSAGES),
            {
                let mut v = vec![phq9.to_string(), gad7.to_string()];
                v.sort();
                v
            }
        );
        let task = &epj.resources("Task").await[0];
        assert_eq!(task["priority"], "urgent", "PHQ-9 item 9 above 0");
        assert_eq!(task["owner"]["identifier"]["value"], THERAPIST_HPR);

        let document = &epj.resources("DocumentReference").await[0];
        let binary = &epj.resources("Binary").await[0];
        assert_eq!(
            document["content"][0]["attachment"]["url"],
            format!("Binary/{}", binary["id"].as_str().unwrap())
        );
        let summary = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(binary["data"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert!(
            summary.contains("PHQ-9: 1 besvarelser; første 13 (moderate"),
            "{summary}"
        );
        assert!(summary.contains("Meldinger fra pasienten: 3"), "{summary}");
        assert!(
            !summary.contains(SYNTHETIC_FNR),
            "no national id in the document text"
        );

        let invalid = validate_independently(&all);
        assert!(invalid.is_empty(), "fhir.resources refused: {invalid:#?}");
        assert_eq!(
            epj.stats().await["unauthorized"],
            0,
            "every call carried a valid DPoP token"
        );

        // The operator's view of the dead letter, and a replay that fails the same way.
        let config = s.config(&epj);
        let (ok, list) = ExporterProcess::start(&s.gw, &config, &["dead-letters", "list"]).finish();
        assert!(ok, "{list}");
        let line = list.lines().find(|l| l.contains("\tmessage\t")).unwrap();
        assert!(line.contains("content format"), "{line}");
        assert!(
            !line.contains("plain text"),
            "no content in the operator's list: {line}"
        );
        let id = line.split('\t').next().unwrap().to_owned();
        let (ok, shown) =
            ExporterProcess::start(&s.gw, &config, &["dead-letters", "show", &id]).finish();
        assert!(ok && shown.contains("\"state\": \"dead\""), "{shown}");
        assert!(shown.contains(&episode.to_string()), "{shown}");
        let (ok, replayed) =
            ExporterProcess::start(&s.gw, &config, &["dead-letters", "replay", &id]).finish();
        assert!(ok && replayed.contains("replaying"), "{replayed}");
        let deadline = Instant::now() + Duration::from_mins(1);
        while exporter
            .logs()
            .iter()
            .filter(|l| l.contains("export dead-lettered"))
            .count()
            < 2
        {
            assert!(
                Instant::now() < deadline,
                "the replayed row was not tried again"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, dead) = s.drained(&epj, &exporter).await;
        assert_eq!(dead, 1, "still unmappable, dead again");
        let (ok, _) =
            ExporterProcess::start(&s.gw, &config, &["dead-letters", "replay", "999999"]).finish();
        assert!(!ok, "an unknown row is not replayed");
        assert_eq!(
            counts(&epj.all_resources().await),
            expected,
            "the replay duplicated nothing"
        );
        let logs = exporter.logs().join("\n");
        assert!(
            !logs.contains(SYNTHETIC_FNR),
            "no national id in the exporter's logs"
        );
        assert!(
            !logs.contains("søvnrutinene"),
            "no content in the exporter's logs"
        );
    }
}

#[tokio::test]
async fn an_epj_that_is_down_then_fails_half_its_requests_and_a_killed_exporter_lose_and_duplicate_nothing()
 {
    let s = Scene::new(Backend::Postgres).await;
    let epj = Epj::start();
    epj.faults(true, 0).await;
    let mut expected = Vec::new();
    let mut episodes = Vec::new();
    let mut in_order = Vec::new();
    for _ in 0..4 {
        let episode = s.episode().await;
        episodes.push(episode);
        let mut sent = Vec::new();
        for i in 0..8 {
            let who = if i % 2 == 0 { &s.patient } else { &s.therapist };
            let kind = if i % 2 == 0 { "message" } else { "feedback" };
            sent.push(
                s.send(who, episode, kind, &text(&format!("melding {i}")))
                    .await
                    .to_string(),
            );
        }
        expected.extend(sent.iter().cloned());
        in_order.push(sent);
    }
    expected.sort();

    let risky = s
        .send(
            &s.patient,
            episodes[0],
            "questionnaire-response",
            &questionnaire("PHQ-9", &[1, 1, 1, 1, 1, 1, 1, 1, 2]),
        )
        .await;

    // Down: nothing arrives, the exporter backs off and keeps every row; the risk alert
    // reaches the care team all the same.
    let mut first = s.exporter(&epj);
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.alerts(episodes[0]).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no alert while the EPJ is down:\n{}",
            first.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        s.alerts(episodes[0]).await[0]["in_response_to"],
        risky.to_string()
    );
    assert!(epj.all_resources().await.is_empty());
    assert_eq!(s.status(&epj).2, 0, "nothing dead while the EPJ is away");

    // Back, but every other request fails: before processing, or after it (the engine
    // committed and the answer is lost, so the retry must find what is there).
    epj.faults(false, 2).await;
    let deadline = Instant::now() + Duration::from_mins(1);
    while epj.resources("Communication").await.len() < 6 {
        assert!(Instant::now() < deadline, "{}", first.logs().join("\n"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Killed mid-batch; two exporters share what is left.
    first.kill();
    let second = s.exporter(&epj);
    let third = s.exporter(&epj);
    let (_, dead) = s.drained(&epj, &second).await;
    assert_eq!(dead, 0, "{}", second.logs().join("\n"));
    drop(third);

    let communications = epj.resources("Communication").await;
    assert_eq!(
        identifiers(&communications, MESSAGES),
        expected,
        "every message once"
    );
    let arrivals = epj.arrivals("Communication").await;
    for sent in &in_order {
        let arrived: Vec<&String> = arrivals.iter().filter(|id| sent.contains(id)).collect();
        assert_eq!(
            arrived,
            sent.iter().collect::<Vec<_>>(),
            "an episode's messages reach the EPJ in the order they were sent"
        );
    }
    assert_eq!(epj.resources("Encounter").await.len(), expected.len());
    assert_eq!(epj.resources("EpisodeOfCare").await.len(), 4);
    assert_eq!(epj.resources("Task").await.len(), 1);
    assert_eq!(
        s.alerts(episodes[0]).await.len(),
        1,
        "screened once, alerted once"
    );
    let stats = epj.stats().await;
    assert!(stats["failed_before"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["failed_after"].as_u64().unwrap() > 0, "{stats}");
    let invalid = validate_independently(&epj.all_resources().await);
    assert!(invalid.is_empty(), "{invalid:#?}");
}

#[tokio::test]
async fn a_refusal_with_an_operation_outcome_is_a_dead_letter_at_once_and_the_others_flow() {
    let s = Scene::new(Backend::Postgres).await;
    let epj = Epj::start();
    let episode = s.episode().await;
    let other = s.episode().await;
    // The first transaction the EPJ sees (an EpisodeOfCare of either episode) is refused.
    epj.refuse_next(1).await;
    let exporter = s.exporter(&epj);
    let (_, dead) = s.drained(&epj, &exporter).await;
    assert_eq!(dead, 1, "{}", exporter.logs().join("\n"));
    let sent = s.send(&s.patient, other, "message", &text("Hei")).await;
    let later = s.send(&s.patient, episode, "message", &text("Hallo")).await;
    let (_, dead) = s.drained(&epj, &exporter).await;
    assert_eq!(dead, 1, "nothing else died");
    let mut both = vec![sent.to_string(), later.to_string()];
    both.sort();
    assert_eq!(
        identifiers(&epj.resources("Communication").await, MESSAGES),
        both
    );
    let (ok, list) =
        ExporterProcess::start(&s.gw, &s.config(&epj), &["dead-letters", "list"]).finish();
    assert!(ok, "{list}");
    let line = list.lines().find(|l| l.contains("\tepisode\t")).unwrap();
    assert!(
        line.contains("1 attempts") && line.contains("HTTP 422"),
        "{line}"
    );
    let id = line.split('\t').next().unwrap().to_owned();
    let (ok, shown) =
        ExporterProcess::start(&s.gw, &s.config(&epj), &["dead-letters", "show", &id]).finish();
    assert!(ok, "{shown}");
    assert!(
        shown.contains("business-rule") && shown.contains("OperationOutcome"),
        "the outcome is kept: {shown}"
    );
    // Fixed at the hospital: the replay goes through.
    let (ok, _) =
        ExporterProcess::start(&s.gw, &s.config(&epj), &["dead-letters", "replay", &id]).finish();
    assert!(ok);
    let (_, dead) = s.drained(&epj, &exporter).await;
    assert_eq!(dead, 0);
    assert_eq!(epj.resources("EpisodeOfCare").await.len(), 2);
}
