//! `icbt-gateway dev demo`: a short programme played against the running dev gateway,
//! through its public API only, with a transcript of what each party sees. Every step
//! checks what it should have done; the first that did not ends the demo with an error.
//!
//! The platform gets its token the way a platform does (HelseID client credentials with
//! a client secret and a DPoP proof); patient and therapist tokens come from the dev
//! provider's key as `dev token` makes them. Device keys are kept in `data/dev/demo/`,
//! so the people of the story can go on with the `icbt` command line afterwards.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use icbt_auth::dpop::DpopKey;
use icbt_client::{Client, ClientError, Credentials, Received};
use icbt_config::Config;
use icbt_envelope::DeviceKeys;
use serde_json::{Value, json};
use uuid::Uuid;

use super::idp::Provider;
use super::people::People;
use super::{Files, token, write_private};

/// How long the demo waits for work the gateway does in the background (the exporter,
/// the access log's checkpoints).
const PATIENCE: Duration = Duration::from_secs(30);

/// One party of the story, with its own connection.
struct Party {
    label: String,
    client: Client,
    keys: Option<DeviceKeys>,
}

/// Prints a line of the transcript.
#[allow(clippy::print_stdout)]
fn say(who: &str, text: &str) {
    println!("  {who:<10} {text}");
}

#[allow(clippy::print_stdout)]
fn step(number: u32, title: &str) {
    println!("\n{number}. {title}");
}

struct Story {
    origin: String,
    http: reqwest::Client,
    log_key: Vec<u8>,
    files: Files,
    data_dir: PathBuf,
    people: People,
}

/// Plays the story against `origin`, trusting `cert`.
pub async fn run(config: &Config, origin: &str, cert: &Path) -> anyhow::Result<()> {
    let (idp, story) = Story::new(config, origin, cert)?;
    let data_dir = story.data_dir.clone();
    let started = Instant::now();
    #[allow(clippy::print_stdout)]
    {
        println!("icbt-gateway demo against {origin}");
        println!(
            "clinic: {} ({})",
            story.people.clinic.name,
            story.people.clinic.org_number.as_str()
        );
    }
    story.play(&idp, config).await?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "\ndemo complete in {:.1} s: every step did what it should.",
            started.elapsed().as_secs_f64()
        );
        println!(
            "The data stays in {}: go on with `icbt` (eval \"$(icbt-gateway dev token --as kari)\") or curl.",
            data_dir.display()
        );
    }
    Ok(())
}

/// Creates an active episode for `patient` with `therapist` as its therapist, as the
/// platform does; returns its id.
pub async fn episode(
    config: &Config,
    origin: &str,
    cert: &Path,
    (patient, therapist): (&str, &str),
) -> anyhow::Result<Uuid> {
    let (_, story) = Story::new(config, origin, cert)?;
    let person = |name: &str| {
        story
            .people
            .person(name)
            .with_context(|| format!("the people file has no `{name}`"))
    };
    let (patient, therapist) = (person(patient)?, person(therapist)?);
    let hpr = therapist
        .hpr_number
        .as_ref()
        .map(icbt_auth::identity::HprNumber::as_str)
        .with_context(|| format!("`{}` has no HPR number", therapist.name))?;
    let platform = story.platform().await?;
    let episode = Uuid::new_v4();
    story
        .create_episode(
            &platform,
            episode,
            patient,
            json!([{ "hpr_number": hpr, "role": "therapist" }]),
        )
        .await?;
    Ok(episode)
}

impl Story {
    fn new(
        config: &Config,
        origin: &str,
        cert: &Path,
    ) -> anyhow::Result<(super::idp::DevIdp, Self)> {
        let data_dir = config.storage.data_dir.clone();
        let idp = token::open_idp(&data_dir, origin)?;
        let people = idp.people()?;
        let log = crate::audit::sequencer::AuditLog::from_config(&config.audit, &data_dir)?;
        let http = icbt_auth::http::https_client(Some(cert), Duration::from_secs(30))?;
        let story = Self {
            origin: origin.to_owned(),
            http,
            log_key: log.signer.public_key().to_vec(),
            files: Files::under(&data_dir),
            data_dir,
            people,
        };
        Ok((idp, story))
    }

    /// PUTs the episode, its care team (`members`) and its move to active.
    async fn create_episode(
        &self,
        platform: &Party,
        episode: Uuid,
        patient: &super::people::Person,
        members: Value,
    ) -> anyhow::Result<Value> {
        let org = self.people.clinic.org_number.as_str();
        let (status, view) = platform
            .client
            .call(
                reqwest::Method::PUT,
                &format!("v1/episodes/{episode}"),
                Some(&json!({
                    "patient": patient.pid.expose(),
                    "organisation": org,
                    "programme": "Internet-delivered CBT for depression, 14 weeks",
                    "clinic_name": self.people.clinic.name,
                })),
            )
            .await?;
        ensure!(status == 201, "creating the episode answered {status}");
        platform
            .client
            .call(
                reqwest::Method::PUT,
                &format!("v1/episodes/{episode}/care-team"),
                Some(&json!({ "members": members })),
            )
            .await?;
        let (_, active) = platform
            .client
            .call(
                reqwest::Method::PUT,
                &format!("v1/episodes/{episode}/state"),
                Some(&json!({ "state": "active" })),
            )
            .await?;
        ensure!(
            active["state"] == "active",
            "the episode did not become active: {active}"
        );
        Ok(view)
    }

    fn party(
        &self,
        label: &str,
        token: zeroize::Zeroizing<String>,
        dpop: Option<DpopKey>,
    ) -> anyhow::Result<Party> {
        Ok(Party {
            label: label.to_owned(),
            client: Client::new(
                self.http.clone(),
                url::Url::parse(&self.origin)?,
                Credentials {
                    access_token: token,
                    dpop,
                },
                vec![self.log_key.clone()],
            ),
            keys: None,
        })
    }

    /// A person of the file, with the token `dev token` would give them.
    fn person(&self, idp: &super::idp::DevIdp, name: &str) -> anyhow::Result<Party> {
        let issued = token::issue(idp, name)?;
        let dpop = issued.dpop_key()?;
        self.party(name, issued.token, dpop)
    }

    /// The platform, by HelseID client credentials with its secret and a DPoP proof.
    async fn platform(&self) -> anyhow::Result<Party> {
        let client = self.people.clinic_client()?;
        let endpoint = format!("{}/token", Provider::Helseid.issuer(&self.origin));
        let dpop = DpopKey::generate()?;
        let proof = dpop.proof("POST", &endpoint, None, None, icbt_auth::now_secs());
        let response = self
            .http
            .post(&endpoint)
            .basic_auth(&client.client_id, Some(&client.client_secret))
            .header("dpop", proof)
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", Provider::Helseid.api_scope()),
            ])
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        ensure!(
            status.is_success(),
            "the token endpoint answered {status}: {body}"
        );
        let token = body["access_token"].as_str().context("no access_token")?;
        ensure!(
            body["token_type"] == "DPoP",
            "the platform's token is not DPoP-bound"
        );
        say(
            &client.name,
            &format!(
                "got a DPoP-bound HelseID token by client credentials ({})",
                client.client_id
            ),
        );
        self.party(&client.name, token.to_owned().into(), Some(dpop))
    }

    /// The device keys kept for `name`, made and published the first time.
    async fn device(&self, party: &mut Party) -> anyhow::Result<()> {
        let dir = self.files.tokens.with_file_name("demo");
        let path = dir.join(format!("{}-device.json", party.label));
        let keys = if path.exists() {
            let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path)?);
            DeviceKeys::from_private_json(&text)?
        } else {
            std::fs::create_dir_all(&dir)?;
            let keys = DeviceKeys::generate()?;
            write_private(&path, keys.to_private_json().as_bytes())?;
            keys
        };
        let expires = crate::domain::now_ms() + 30 * 24 * 3_600 * 1_000;
        match party.client.publish_device(&keys, expires).await {
            Ok(directory) => say(
                &party.label,
                &format!(
                    "published device {} (key log now {} entries, inclusion proof checked)",
                    short(&keys.device_id()),
                    directory.head.size
                ),
            ),
            Err(ClientError::Problem {
                status: 409,
                problem_type,
                ..
            }) if problem_type.ends_with(":device-conflict") => {
                say(
                    &party.label,
                    &format!("device {} is already published", short(&keys.device_id())),
                );
            }
            Err(e) => return Err(e).context("publishing a device"),
        }
        party.keys = Some(keys);
        Ok(())
    }

    // One function on purpose: it reads top to bottom as the transcript it prints.
    #[allow(clippy::too_many_lines)]
    async fn play(&self, idp: &super::idp::DevIdp, config: &Config) -> anyhow::Result<()> {
        let people = &self.people;
        let kari_person = people
            .person("kari")
            .context("the people file has no `kari`")?;
        let terje_person = people
            .person("terje")
            .context("the people file has no `terje`")?;
        let vera_person = people
            .person("vera")
            .context("the people file has no `vera`")?;
        let org = people.clinic.org_number.as_str();
        let started = std::time::SystemTime::now();
        step(1, "The platform creates an episode and its care team");
        let platform = self.platform().await?;
        let episode = Uuid::new_v4();
        let cover_until = crate::domain::now_ms() + 14 * 24 * 3_600 * 1_000;
        let hpr = |p: &super::people::Person| {
            p.hpr_number
                .as_ref()
                .map(icbt_auth::identity::HprNumber::as_str)
                .map(str::to_owned)
        };
        let view = self
            .create_episode(
                &platform,
                episode,
                kari_person,
                json!([
                    { "hpr_number": hpr(terje_person), "role": "therapist" },
                    { "hpr_number": hpr(vera_person), "role": "cover", "until_ms": cover_until },
                ]),
            )
            .await?;
        say(
            "platform",
            &format!(
                "created episode {episode} for {} ({})",
                kari_person.display_name, view["state"]
            ),
        );
        say(
            "platform",
            &format!(
                "care team: {} (therapist), {} (cover for 14 days)",
                terje_person.display_name, vera_person.display_name
            ),
        );
        say("platform", "moved the episode to active");

        step(
            2,
            "Patient and therapist publish device keys and compare safety numbers",
        );
        let mut kari = self.person(idp, "kari")?;
        let mut terje = self.person(idp, "terje")?;
        self.device(&mut kari).await?;
        self.device(&mut terje).await?;
        let kari_owner = format!("patient:{}", kari_person.pid.expose());
        let terje_owner = format!(
            "clinician:{}",
            terje_person.hpr_number.as_ref().map_or("", |h| h.as_str())
        );
        let seen_by_kari = kari.client.episode_keys(episode, false).await?;
        let seen_by_terje = terje.client.episode_keys(episode, false).await?;
        let journal = seen_by_kari.signing_keys_of(&format!("journal:{org}"));
        ensure!(
            !journal.is_empty(),
            "the clinic's journal key is not in the episode's keys; is `serve --dev` running?"
        );
        say(
            "kari",
            &format!(
                "sees {} keys for the episode, the clinic's journal key among them, each proven in the key log",
                seen_by_kari.devices.len()
            ),
        );
        let from_kari = icbt_envelope::safety_number(
            &seen_by_kari.signing_keys_of(&kari_owner),
            &seen_by_kari.signing_keys_of(&terje_owner),
        );
        let from_terje = icbt_envelope::safety_number(
            &seen_by_terje.signing_keys_of(&terje_owner),
            &seen_by_terje.signing_keys_of(&kari_owner),
        );
        say("kari", &format!("safety number with Terje: {from_kari}"));
        say("terje", &format!("safety number with Kari: {from_terje}"));
        ensure!(from_kari == from_terje, "the safety numbers differ");
        say("both", "the numbers match: nobody sits between them");

        step(3, "The patient writes");
        let kari_keys = kari.keys.as_ref().context("kari's keys")?;
        let terje_keys = terje.keys.as_ref().context("terje's keys")?;
        let first = Uuid::new_v4();
        let text = "Hei! Jeg har gjort øvelsene denne uka, men søvnen er fortsatt dårlig.";
        let receipt = kari
            .client
            .send(
                kari_keys,
                episode,
                first,
                "message",
                json!({ "text": text }).to_string().as_bytes(),
            )
            .await?;
        say(
            "kari",
            &format!(
                "sent message #{} (sealed to {} keys; the gateway stores ciphertext only)",
                receipt["seq"],
                seen_by_kari.recipients().len()
            ),
        );
        let got = opened_texts(&terje.client.receive(terje_keys, episode, 0).await?);
        ensure!(
            got.iter().any(|(_, t)| t.contains("søvnen")),
            "Terje could not open Kari's message"
        );
        say("terje", &format!("opened it: \"{text}\""));

        step(4, "The therapist sends weekly feedback");
        let feedback =
            "Uke 1: Godt jobbet med registreringene. Prøv å stå opp til samme tid hver dag.";
        let receipt = terje
            .client
            .send(
                terje_keys,
                episode,
                Uuid::new_v4(),
                "feedback",
                json!({ "text": feedback, "in_response_to": first.to_string() })
                    .to_string()
                    .as_bytes(),
            )
            .await?;
        let feedback_seq = receipt["seq"].as_i64().unwrap_or_default();
        say("terje", &format!("sent feedback #{feedback_seq}"));
        let got = opened_texts(&kari.client.receive(kari_keys, episode, 0).await?);
        ensure!(
            got.iter()
                .any(|(k, t)| k == "feedback" && t.starts_with("Uke 1")),
            "Kari could not open the feedback"
        );
        say("kari", &format!("opened it: \"{feedback}\""));

        step(5, "The patient answers PHQ-9, item 9 above 0");
        let items = [2, 2, 1, 2, 1, 1, 1, 1, 1];
        kari.client
            .send(
                kari_keys,
                episode,
                Uuid::new_v4(),
                "questionnaire-response",
                json!({ "questionnaire": { "instrument": "PHQ-9", "items": items } })
                    .to_string()
                    .as_bytes(),
            )
            .await?;
        say(
            "kari",
            &format!(
                "answered PHQ-9 {items:?} (total {}, item 9 = 1)",
                items.iter().sum::<i32>()
            ),
        );
        let alert = wait_for(|| async {
            let got = opened_texts(&terje.client.receive(terje_keys, episode, 0).await?);
            Ok(got.into_iter().find(|(k, _)| k == "notice").map(|(_, t)| t))
        })
        .await
        .context("no risk alert reached the care team")?;
        say(
            "terje",
            &format!("got an alert from the clinic's journal: \"{alert}\""),
        );
        let kari_sees = kari.client.receive(kari_keys, episode, 0).await?;
        ensure!(
            kari_sees.iter().all(|m| m.kind != "notice"),
            "the patient can see the care team's alert"
        );
        say(
            "kari",
            "does not see the alert (it is for the care team only)",
        );

        step(6, "Receipts");
        kari.client
            .call(
                reqwest::Method::PUT,
                &format!("v1/episodes/{episode}/receipts"),
                Some(&json!({ "delivered_up_to": feedback_seq, "read_up_to": feedback_seq })),
            )
            .await?;
        say(
            "kari",
            &format!("marked everything up to #{feedback_seq} read"),
        );
        let (_, receipts) = terje
            .client
            .call(
                reqwest::Method::GET,
                &format!("v1/episodes/{episode}/receipts"),
                None,
            )
            .await?;
        let patient_read = receipts["readers"]
            .as_array()
            .and_then(|r| r.iter().find(|m| m["kind"] == "patient"))
            .and_then(|m| m["read_up_to"].as_i64());
        ensure!(
            patient_read == Some(feedback_seq),
            "the therapist does not see the patient's read mark: {receipts}"
        );
        say(
            "terje",
            &format!("sees that Kari has read up to #{feedback_seq}"),
        );

        step(
            7,
            "The episode finishes; its summary goes to the summary record",
        );
        let (_, view) = platform
            .client
            .call(
                reqwest::Method::PUT,
                &format!("v1/episodes/{episode}/state"),
                Some(&json!({ "state": "finished" })),
            )
            .await?;
        ensure!(
            view["state"] == "finished",
            "the episode did not finish: {view}"
        );
        say("platform", "moved the episode to finished");
        let sink = config
            .export
            .epj_base_url
            .is_none()
            .then(|| super::sink_dir(&self.data_dir));
        if let Some(sink) = &sink {
            let written = wait_for(|| async {
                let files = bundles(sink, started)?;
                let has = |folder: &str, types: &[&str]| {
                    files.iter().any(|(f, t)| {
                        f.starts_with(folder) && types.iter().all(|x| t.iter().any(|y| y == x))
                    })
                };
                let complete = has("epj", &["EpisodeOfCare"])
                    && has("epj", &["Encounter", "Communication"])
                    && has("epj", &["QuestionnaireResponse", "Observation", "Task"])
                    && has("summary-record", &["DocumentReference"]);
                Ok(complete.then_some(files))
            })
            .await
            .context("the exporter did not write every bundle to the journal sink")?;
            say(
                "exporter",
                &format!(
                    "wrote {} bundles for this episode to {}",
                    written.len(),
                    sink.display()
                ),
            );
            for (folder, types) in &written {
                say("", &format!("{folder}  ({})", types.join(", ")));
            }
        } else {
            say(
                "exporter",
                "sends to the configured EPJ (export.epj_base_url); see `icbt-gateway export status`",
            );
        }

        step(8, "The access log");
        let log = crate::audit::sequencer::AuditLog::from_config(&config.audit, &self.data_dir)?;
        #[allow(clippy::print_stdout)]
        {
            print!("  {:<10} ", "auditor");
        }
        crate::cli::verify_audit(config, &log, Vec::new()).await?;
        let (_, own) = wait_for(|| async {
            let (status, page) = kari
                .client
                .call(reqwest::Method::GET, "v1/me/access-log?limit=200", None)
                .await?;
            let entries = page["entries"].as_array().cloned().unwrap_or_default();
            let therapist_read = entries.iter().any(|e| {
                e["what"].as_str().is_some_and(|w| w.contains("messages"))
                    && !e["who"].as_str().is_some_and(|w| w.starts_with("You"))
            });
            Ok(therapist_read.then_some((status, entries)))
        })
        .await
        .context("the patient's access log does not show the therapist reading")?;
        say(
            "kari",
            "asks who else looked at her data, and reads (newest last):",
        );
        let others: Vec<&Value> = own
            .iter()
            .filter(|e| !e["who"].as_str().is_some_and(|w| w.starts_with("You")))
            .collect();
        for entry in others.iter().rev().take(10).rev() {
            say(
                "",
                &format!(
                    "{}  {} {}",
                    entry["at"].as_str().unwrap_or_default(),
                    entry["who"].as_str().unwrap_or_default(),
                    entry["what"].as_str().unwrap_or_default()
                ),
            );
        }
        Ok(())
    }
}

/// The kind and text of every message that opened, in order.
fn opened_texts(received: &[Received]) -> Vec<(String, String)> {
    received
        .iter()
        .filter_map(|m| {
            let opened = m.opened.as_ref().ok()?;
            let content: Value = serde_json::from_slice(&opened.payload).ok()?;
            Some((
                m.kind.clone(),
                content["text"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

/// The bundles written to the sink since `since`: their folder and resource types, oldest
/// first.
fn bundles(
    sink: &Path,
    since: std::time::SystemTime,
) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut found = Vec::new();
    for folder in [
        super::super::export::sink::EPJ_FOLDER,
        super::super::export::sink::SUMMARY_FOLDER,
    ] {
        let dir = sink.join(folder);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.metadata().and_then(|m| m.modified()).ok()?, e.path())))
            // The sink's bundles only: a temporary file it is still writing (renamed into
            // place when whole) is no bundle yet.
            .filter(|(_, path)| path.extension().is_some_and(|x| x == "json"))
            .filter(|(modified, _)| *modified >= since)
            .collect();
        files.sort();
        for (_, path) in files {
            let text = std::fs::read_to_string(&path)?;
            let bundle: Value = serde_json::from_str(&text)?;
            let types = bundle["entry"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .filter_map(|x| x["resource"]["resourceType"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            found.push((
                format!(
                    "{folder}/{}",
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default()
                ),
                types,
            ));
        }
    }
    Ok(found)
}

/// Polls `check` until it yields something, for up to [`PATIENCE`].
async fn wait_for<T, F, Fut>(mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = check().await? {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("waited {} s", PATIENCE.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
