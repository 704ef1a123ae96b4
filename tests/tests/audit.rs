//! The access log through the real gateway with real tokens, on every backend: every
//! access to patient data leaves a record, security teams search, export and prove it,
//! patients read who looked at their data, and `audit verify` catches every kind of
//! tampering done directly in the database.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // test code stops at the first surprise; scenarios read top to bottom

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use icbt_e2e::idp::{Actor, CLINIC_ORG, IdentityProviders};
use icbt_e2e::sealed::Sealer;
use icbt_e2e::{
    Backend, Gateway, GatewayOptions, SYNTHETIC_FNR, TestDatabase, audit_signing_key, backends,
    expect_problem, run_cli,
};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;
use uuid::Uuid;

const THERAPIST_HPR: &str = "565501872";
const THERAPIST_PID: &str = "01018512528";
const OTHER_HPR: &str = "100000001";
const AUDITOR_HPR: &str = "100000002";
const SECRET_TEXT: &str = "I have not slept for three nights";

struct World {
    gw: Gateway,
    http: reqwest::Client,
    platform: Actor,
    patient: Actor,
    therapist: Actor,
    outsider: Actor,
    auditor: Actor,
    sealer: Sealer,
}

async fn world(backend: Backend) -> World {
    world_with(backend, Vec::new()).await
}

/// [`world`] with extra `ICBT_…` settings.
async fn world_with(backend: Backend, env: Vec<(String, String)>) -> World {
    world_configured(backend, env, "").await
}

/// [`world`] with extra `ICBT_…` settings and `toml` added to the configuration file.
async fn world_configured(backend: Backend, env: Vec<(String, String)>, toml: &str) -> World {
    let gw = Gateway::start_with(
        backend,
        GatewayOptions {
            config_toml: Some(format!(
                "{}\n{toml}",
                IdentityProviders::shared().gateway_config()
            )),
            env,
            ..Default::default()
        },
    )
    .await;
    let http = gw.client();
    let platform = Actor::system("icbt-platform").await;
    let therapist = Actor::therapist(THERAPIST_PID, THERAPIST_HPR).await;
    let sealer = Sealer::new(&gw.url, &http, &platform, CLINIC_ORG).await;
    sealer.device(&therapist).await;
    World {
        http,
        gw,
        platform,
        patient: Actor::patient(SYNTHETIC_FNR).await,
        therapist,
        outsider: Actor::therapist("01018512609", OTHER_HPR).await,
        auditor: Actor::auditor("01018512870", AUDITOR_HPR).await,
        sealer,
    }
}

impl World {
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
        assert!(
            status.is_success(),
            "{path}: {status} {text}\n{}",
            self.gw.logs().join("\n")
        );
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// An active episode with the therapist on its team, one patient message in it, read
    /// by the therapist, and one refused read by a therapist not on the team.
    async fn activity(&self) -> Uuid {
        let id = Uuid::new_v4();
        let body = json!({ "patient": SYNTHETIC_FNR, "organisation": CLINIC_ORG, "programme": "panic-disorder-14w", "clinic_name": "Nettterapi Vest" });
        self.ok(
            &self.platform,
            Method::PUT,
            &format!("/v1/episodes/{id}"),
            Some(&body),
        )
        .await;
        let team = json!({ "members": [{ "hpr_number": THERAPIST_HPR, "role": "therapist" }] });
        self.ok(
            &self.platform,
            Method::PUT,
            &format!("/v1/episodes/{id}/care-team"),
            Some(&team),
        )
        .await;
        self.ok(
            &self.platform,
            Method::PUT,
            &format!("/v1/episodes/{id}/state"),
            Some(&json!({ "state": "active" })),
        )
        .await;
        let path = format!("/v1/episodes/{id}/messages/{}", Uuid::new_v4());
        let message = self
            .sealer
            .body(&self.patient, &path, "message", SECRET_TEXT)
            .await;
        self.ok(&self.patient, Method::PUT, &path, Some(&message))
            .await;
        self.ok(
            &self.therapist,
            Method::GET,
            &format!("/v1/episodes/{id}/messages"),
            None,
        )
        .await;
        expect_problem(
            self.call(
                &self.outsider,
                Method::GET,
                &format!("/v1/episodes/{id}/messages"),
                None,
            )
            .await,
            403,
            "forbidden",
        )
        .await;
        id
    }
}

fn has(records: &[Value], pred: impl Fn(&Value) -> bool) -> &Value {
    records.iter().find(|r| pred(r)).unwrap_or_else(|| {
        panic!(
            "no such record in {}",
            serde_json::to_string_pretty(records).unwrap()
        )
    })
}

#[tokio::test]
async fn every_access_is_recorded_searchable_provable_and_shown_to_the_patient() {
    for backend in backends() {
        let w = world(backend).await;
        let episode = w.activity().await;

        // The security team's view.
        let page = w
            .ok(
                &w.auditor,
                Method::GET,
                &format!("/v1/audit/records?episode={episode}&limit=500"),
                None,
            )
            .await;
        let records = page["records"].as_array().unwrap().clone();
        let created = has(&records, |r| {
            r["action"] == "create" && r["resource_type"] == "episode"
        });
        assert_eq!(created["principal_kind"], "system");
        assert_eq!(created["patient"], SYNTHETIC_FNR);
        has(&records, |r| {
            r["action"] == "update" && r["resource_type"] == "care-team"
        });
        has(&records, |r| {
            r["action"] == "update" && r["resource_type"] == "episode"
        });
        let sent = has(&records, |r| {
            r["action"] == "create" && r["resource_type"] == "messages"
        });
        assert_eq!(sent["principal_kind"], "patient");
        let read = has(&records, |r| {
            r["action"] == "read" && r["principal_id"] == THERAPIST_HPR && r["outcome"] == "success"
        });
        assert_eq!(read["source"], "127.0.0.1");
        assert!(
            read["token_jti"].as_str().is_some_and(|j| !j.is_empty()),
            "{read}"
        );
        assert!(
            read["request_id"].as_str().is_some_and(|j| !j.is_empty()),
            "{read}"
        );
        let refused = has(&records, |r| r["principal_id"] == OTHER_HPR);
        assert_eq!(refused["outcome"], "refused");
        assert_eq!(refused["reason"], "not_on_care_team");
        assert_eq!(refused["patient"], SYNTHETIC_FNR);

        // Filters narrow.
        let only_refused = w
            .ok(
                &w.auditor,
                Method::GET,
                &format!("/v1/audit/records?episode={episode}&outcome=refused"),
                None,
            )
            .await;
        assert!(
            only_refused["records"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["outcome"] == "refused")
        );
        let by_principal = w
            .ok(
                &w.auditor,
                Method::GET,
                &format!("/v1/audit/records?principal={THERAPIST_HPR}&action=read"),
                None,
            )
            .await;
        assert!(!by_principal["records"].as_array().unwrap().is_empty());
        assert!(
            by_principal["records"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["principal_id"] == THERAPIST_HPR && r["action"] == "read")
        );
        let none_yet = w
            .ok(&w.auditor, Method::GET, "/v1/audit/records?to_ms=1", None)
            .await;
        assert_eq!(none_yet["records"].as_array().unwrap().len(), 0);
        expect_problem(
            w.call(
                &w.auditor,
                Method::GET,
                "/v1/audit/records?action=peek",
                None,
            )
            .await,
            422,
            "invalid-field",
        )
        .await;

        // Cursor pagination walks everything once.
        let mut seen = Vec::new();
        let mut after = None::<u64>;
        loop {
            let q = after.map(|a| format!("&after={a}")).unwrap_or_default();
            let page = w
                .ok(
                    &w.auditor,
                    Method::GET,
                    &format!("/v1/audit/records?episode={episode}&limit=2{q}"),
                    None,
                )
                .await;
            seen.extend(
                page["records"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["index"].as_u64().unwrap()),
            );
            match page["next_after"].as_u64() {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.dedup();
        assert_eq!(seen, sorted, "pages are in order with no repeats");
        // Each page adds its own audit-read record, so the walk sees at least the first
        // search's records.
        for r in &records {
            assert!(seen.contains(&r["index"].as_u64().unwrap()));
        }

        // NDJSON and FHIR AuditEvent exports.
        let ndjson = w
            .call(
                &w.auditor,
                Method::GET,
                &format!("/v1/audit/records?episode={episode}&format=ndjson"),
                None,
            )
            .await;
        assert_eq!(ndjson.headers()["content-type"], "application/x-ndjson");
        let lines = ndjson.text().await.unwrap();
        assert!(lines.lines().count() >= records.len());
        for line in lines.lines() {
            serde_json::from_str::<Value>(line).unwrap();
        }
        let bundle = w
            .ok(
                &w.auditor,
                Method::GET,
                &format!("/v1/audit/records?episode={episode}&format=fhir"),
                None,
            )
            .await;
        assert_eq!(bundle["resourceType"], "Bundle");
        let events: Vec<&Value> = bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["resource"])
            .collect();
        let read_event = events
            .iter()
            .find(|e| {
                e["subtype"][0]["code"] == "read"
                    && e["agent"][0]["who"]["identifier"]["value"] == THERAPIST_HPR
            })
            .expect("a BALP read event");
        assert_eq!(read_event["action"], "R");
        assert_eq!(
            read_event["entity"][0]["what"]["identifier"]["value"],
            SYNTHETIC_FNR
        );

        // Reading the log is itself recorded, and only auditors may.
        expect_problem(
            w.call(&w.therapist, Method::GET, "/v1/audit/records", None)
                .await,
            403,
            "forbidden",
        )
        .await;
        let meta = w
            .ok(
                &w.auditor,
                Method::GET,
                "/v1/audit/records?action=audit-read",
                None,
            )
            .await;
        let meta = meta["records"].as_array().unwrap();
        has(meta, |r| {
            r["principal_id"] == AUDITOR_HPR && r["outcome"] == "success"
        });
        has(meta, |r| {
            r["principal_id"] == THERAPIST_HPR && r["outcome"] == "refused"
        });

        // Checkpoint, inclusion and consistency proofs check against the signed root.
        let first = w
            .ok(&w.auditor, Method::GET, "/v1/audit/checkpoint", None)
            .await;
        let public_key = STANDARD
            .decode(first["public_key"].as_str().unwrap())
            .unwrap();
        let signed =
            icbt_merkle::SignedCheckpoint::from_note(first["note"].as_str().unwrap()).unwrap();
        assert_eq!(signed.checkpoint.body(), first["body"].as_str().unwrap());
        assert_eq!(signed.key_id, first["key_id"].as_str().unwrap());
        signed.verify(&[&public_key]).unwrap();
        let checkpoint = signed.checkpoint;
        let leaf = icbt_merkle::from_hex(read["leaf_hash"].as_str().unwrap()).unwrap();
        let index = read["index"].as_u64().unwrap();
        let proof = w
            .ok(
                &w.auditor,
                Method::GET,
                &format!(
                    "/v1/audit/proof/inclusion?index={index}&size={}",
                    checkpoint.size
                ),
                None,
            )
            .await;
        let path = hashes(&proof["proof"]);
        icbt_merkle::verify_inclusion(&leaf, index, checkpoint.size, &path, &checkpoint.root)
            .unwrap();
        w.ok(
            &w.therapist,
            Method::GET,
            &format!("/v1/episodes/{episode}"),
            None,
        )
        .await;
        let later = w
            .ok(&w.auditor, Method::GET, "/v1/audit/checkpoint", None)
            .await;
        let later = icbt_merkle::Checkpoint::parse(later["body"].as_str().unwrap()).unwrap();
        assert!(later.size > checkpoint.size);
        let proof = w
            .ok(
                &w.auditor,
                Method::GET,
                &format!(
                    "/v1/audit/proof/consistency?from={}&to={}",
                    checkpoint.size, later.size
                ),
                None,
            )
            .await;
        let path = hashes(&proof["proof"]);
        icbt_merkle::verify_consistency(
            checkpoint.size,
            later.size,
            &checkpoint.root,
            &later.root,
            &path,
        )
        .unwrap();
        expect_problem(
            w.call(
                &w.auditor,
                Method::GET,
                &format!(
                    "/v1/audit/proof/inclusion?index=0&size={}",
                    later.size + 1000
                ),
                None,
            )
            .await,
            422,
            "invalid-field",
        )
        .await;

        // The patient's own view: roles and organisations in plain words.
        let log = w
            .ok(&w.patient, Method::GET, "/v1/me/access-log?limit=500", None)
            .await;
        let entries = log["entries"].as_array().unwrap();
        has(entries, |e| {
            e["who"] == format!("Health professional (HPR {THERAPIST_HPR}) at Nettterapi Vest")
                && e["what"] == "read your messages"
        });
        has(entries, |e| {
            e["who"] == "You" && e["what"] == "sent a message in your treatment"
        });
        has(entries, |e| {
            e["refused"] == true && e["who"].as_str().unwrap().contains(OTHER_HPR)
        });
        let text = log.to_string();
        assert!(
            !text.contains("icbt-platform"),
            "no internal client ids: {text}"
        );
        assert!(
            !text.contains(&episode.to_string()),
            "no internal episode ids: {text}"
        );
        expect_problem(
            w.call(&w.therapist, Method::GET, "/v1/me/access-log", None)
                .await,
            403,
            "forbidden",
        )
        .await;

        // No message content and no tokens anywhere in the log's tables.
        let dump = dump_audit_tables(&w.gw).await;
        for secret in [
            SECRET_TEXT.to_owned(),
            URL_SAFE_NO_PAD.encode(SECRET_TEXT),
            w.patient.token.access_token.clone(),
            w.therapist.token.access_token.clone(),
            w.platform.token.access_token.clone(),
            w.auditor.token.access_token.clone(),
        ] {
            assert!(
                !dump.contains(&secret),
                "{backend:?}: the audit tables hold a secret"
            );
        }
        let signature_part = w
            .therapist
            .token
            .access_token
            .rsplit('.')
            .next()
            .unwrap()
            .to_owned();
        assert!(!dump.contains(&signature_part));
        assert!(
            dump.contains(THERAPIST_HPR),
            "the dump reads the real tables"
        );

        let verified = verify(&w.gw, w.gw.database(), &[]);
        assert!(
            verified.status.success(),
            "{backend:?}: {}",
            output(&verified)
        );
        assert!(
            output(&verified).contains("audit log verified"),
            "{}",
            output(&verified)
        );
    }
}

/// Base64 hashes of a proof.
fn hashes(proof: &Value) -> Vec<icbt_merkle::Hash> {
    proof
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            STANDARD
                .decode(h.as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect()
}

fn output(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `icbt-gateway audit verify` against `database` (or the gateway's SQLite file).
fn verify(
    gw: &Gateway,
    database: Option<&TestDatabase>,
    extra: &[(&str, &str)],
) -> std::process::Output {
    let data_dir = gw.data_dir.path().to_str().unwrap().to_owned();
    verify_at(Path::new(&data_dir), database, extra)
}

fn verify_at(
    data_dir: &Path,
    database: Option<&TestDatabase>,
    extra: &[(&str, &str)],
) -> std::process::Output {
    verify_with(data_dir, database, extra, &[])
}

/// [`verify_at`] with more arguments to `audit verify`.
fn verify_with(
    data_dir: &Path,
    database: Option<&TestDatabase>,
    extra: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    audit_cli(data_dir, database, extra, "verify", args)
}

/// `icbt-gateway audit <command> --dev <args>` against `database` (or the SQLite file in
/// `data_dir`), signing with the test key.
fn audit_cli(
    data_dir: &Path,
    database: Option<&TestDatabase>,
    extra: &[(&str, &str)],
    command: &str,
    args: &[&str],
) -> std::process::Output {
    let key = audit_signing_key();
    let mut env: Vec<(&str, &str)> = vec![
        ("ICBT_STORAGE__DATA_DIR", data_dir.to_str().unwrap()),
        ("ICBT_AUDIT__SIGNING_KEY_FILE", key.to_str().unwrap()),
        ("ICBT_TELEMETRY__LOG_FILTER", "warn"),
    ];
    if let Some(db) = database {
        env.push(("ICBT_STORAGE__URL", &db.url));
    }
    env.extend_from_slice(extra);
    let mut all = vec!["audit", command, "--dev"];
    all.extend_from_slice(args);
    run_cli(&all, &env, data_dir)
}

async fn connect(gw_data: &Path, database: Option<&TestDatabase>) -> sqlx::AnyConnection {
    icbt_e2e::connect_database(gw_data, database).await
}

async fn dump_audit_tables(gw: &Gateway) -> String {
    let mut conn = connect(gw.data_dir.path(), gw.database()).await;
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT COALESCE(r.id, '') || '|' || COALESCE(r.reason, '') || '|' || COALESCE(r.principal_id, '') || '|' || \
         COALESCE(r.principal_organisation, '') || '|' || COALESCE(r.issuer, '') || '|' || COALESCE(r.client_id, '') || '|' || \
         COALESCE(r.token_jti, '') || '|' || COALESCE(r.resource_type, '') || '|' || COALESCE(r.resource_id, '') || '|' || \
         COALESCE(r.episode_id, '') || '|' || COALESCE(r.patient, '') || '|' || COALESCE(r.request_id, '') || '|' || \
         COALESCE(r.source, '') || '|' || COALESCE(l.leaf_hash, '') || '|' || \
         COALESCE(l.patient, '') || '|' || COALESCE(l.principal_id, '') \
         FROM audit_records r LEFT JOIN audit_leaves l ON l.record_id = r.id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(r,)| r)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A copy of the gateway's stopped database, to tamper with.
struct Copy {
    dir: tempfile::TempDir,
    database: Option<TestDatabase>,
}

async fn copy_of(gw: &Gateway) -> Copy {
    let dir = tempfile::tempdir().unwrap();
    let database = if let Some(db) = gw.database() {
        Some(db.copy().await)
    } else {
        for suffix in ["", "-wal", "-shm"] {
            let name = format!("icbt-gateway.sqlite3{suffix}");
            let from = gw.data_dir.path().join(&name);
            if from.exists() {
                std::fs::copy(&from, dir.path().join(&name)).unwrap();
            }
        }
        None
    };
    Copy { dir, database }
}

impl Copy {
    async fn tamper(&self, statements: &[&str]) {
        let mut conn = connect(self.dir.path(), self.database.as_ref()).await;
        for sql in statements {
            sqlx::query(sqlx::AssertSqlSafe(*sql))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        conn.close().await.unwrap();
    }

    fn verify(&self, extra: &[(&str, &str)]) -> String {
        let out = verify_at(self.dir.path(), self.database.as_ref(), extra);
        let text = output(&out);
        assert!(!text.contains("panicked"), "{text}");
        if out.status.success() {
            format!("OK {text}")
        } else {
            text
        }
    }
}

#[tokio::test]
async fn verify_names_altered_deleted_inserted_and_reordered_records() {
    for backend in backends() {
        let mut w = world(backend).await;
        w.activity().await;
        w.activity().await;
        // A graceful stop adds the last records to the tree.
        assert!(w.gw.stop_with("TERM").await.success());

        let clean = copy_of(&w.gw).await;
        let report = clean.verify(&[]);
        assert!(report.starts_with("OK"), "{backend:?}: {report}");

        let altered = copy_of(&w.gw).await;
        altered
            .tamper(&["UPDATE audit_records SET outcome = 'refused' WHERE id = (SELECT record_id FROM audit_leaves WHERE leaf_index = 3)"])
            .await;
        let report = altered.verify(&[]);
        assert!(
            report.contains("record 3 (")
                && report.contains("outcome stored as 'refused', the leaf says 'success'"),
            "{backend:?}: {report}"
        );
        let rewritten = copy_of(&w.gw).await;
        rewritten
            .tamper(&["UPDATE audit_records SET source = '10.9.9.9' WHERE id = (SELECT record_id FROM audit_leaves WHERE leaf_index = 3)"])
            .await;
        let report = rewritten.verify(&[]);
        assert!(
            report.contains("record 3 (")
                && report.contains("its content no longer gives its content hash"),
            "{backend:?}: {report}"
        );

        let deleted = copy_of(&w.gw).await;
        deleted
            .tamper(&["DELETE FROM audit_records WHERE id = (SELECT record_id FROM audit_leaves WHERE leaf_index = 4)"])
            .await;
        let report = deleted.verify(&[]);
        assert!(
            report.contains("record 4 is missing"),
            "{backend:?}: {report}"
        );

        let inserted = copy_of(&w.gw).await;
        inserted
            .tamper(&[
                "UPDATE audit_leaves SET leaf_index = leaf_index + 1000 WHERE leaf_index >= 2",
                "UPDATE audit_leaves SET leaf_index = leaf_index - 999 WHERE leaf_index >= 1002",
                "INSERT INTO audit_records (id, recorded_at_ms, action, outcome, principal_kind, resource_type) \
                 SELECT '00000000-0000-4000-8000-000000000001', recorded_at_ms, action, outcome, principal_kind, resource_type \
                 FROM audit_records WHERE id = (SELECT record_id FROM audit_leaves WHERE leaf_index = 1)",
                "INSERT INTO audit_leaves (leaf_index, record_id, leaf_hash, recorded_at_ms) \
                 SELECT 2, '00000000-0000-4000-8000-000000000001', leaf_hash, recorded_at_ms \
                 FROM audit_leaves WHERE leaf_index = 1",
            ])
            .await;
        let report = inserted.verify(&[]);
        assert!(
            report.contains("record 2 (00000000-0000-4000-8000-000000000001)"),
            "{backend:?}: {report}"
        );

        let reordered = copy_of(&w.gw).await;
        reordered
            .tamper(&[
                "UPDATE audit_leaves SET leaf_index = -1 WHERE leaf_index = 5",
                "UPDATE audit_leaves SET leaf_index = 5 WHERE leaf_index = 6",
                "UPDATE audit_leaves SET leaf_index = 6 WHERE leaf_index = -1",
            ])
            .await;
        let report = reordered.verify(&[]);
        assert!(
            report.contains("record 5 was sequenced as record 6"),
            "{backend:?}: {report}"
        );

        let truncated = copy_of(&w.gw).await;
        truncated
            .tamper(&[
                "DELETE FROM audit_records WHERE id = (SELECT record_id FROM audit_leaves \
                 WHERE leaf_index = (SELECT MAX(leaf_index) FROM audit_leaves))",
                "DELETE FROM audit_leaves WHERE leaf_index = (SELECT MAX(leaf_index) FROM audit_leaves)",
            ])
            .await;
        let report = truncated.verify(&[]);
        assert!(
            report.contains("records were deleted from the end"),
            "{backend:?}: {report}"
        );

        // Pruning by retention removes content and keeps the log verifiable; pruning
        // outside retention is caught.
        let pruned = copy_of(&w.gw).await;
        pruned
            .tamper(&[
                "UPDATE audit_records SET pruned = 1, patient = NULL, principal_id = NULL WHERE action = 'read'",
                "UPDATE audit_leaves SET patient = NULL, principal_id = NULL \
                 WHERE record_id IN (SELECT id FROM audit_records WHERE action = 'read')",
            ])
            .await;
        let report = pruned.verify(&[]);
        assert!(
            report.contains("was pruned before its retention ended"),
            "{backend:?}: {report}"
        );
        let report = pruned.verify(&[("ICBT_AUDIT__RETENTION_DAYS__ACCESS", "0")]);
        assert!(report.starts_with("OK"), "{backend:?}: {report}");
    }
}

/// `icbt-gateway audit verifier-keys`: the C2SP verifier keys of the access log and the
/// key log.
fn verifier_keys(gw: &Gateway) -> Vec<String> {
    let out = audit_cli(gw.data_dir.path(), gw.database(), &[], "verifier-keys", &[]);
    assert!(out.status.success(), "{}", output(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A log's published checkpoint, checked by an independent C2SP implementation with the
/// verifier key the operator prints.
async fn published(gw: &Gateway, path: &str, vkey: &str) -> icbt_merkle::SignedCheckpoint {
    // No caller: witnesses and verifiers read it as anyone.
    let response = gw
        .client()
        .get(format!("{}{path}", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let their_key = signed_note::StandardVerifier::new(vkey).unwrap();
    let note = signed_note::Note::from_bytes(text.as_bytes()).unwrap();
    let (signatures, _) = note
        .verify(&signed_note::VerifierList::new(vec![Box::new(their_key)]))
        .unwrap_or_else(|e| panic!("{path}: {e:?}\n{text}"));
    assert_eq!(signatures.len(), 1);
    icbt_merkle::SignedCheckpoint::from_note(&text).unwrap()
}

/// Rewrites every checkpoint of both logs as the gateway signed them before the note
/// format: the four-line text with the time, under the 16-digit key id. Returns the
/// smallest size of an access log checkpoint.
async fn make_legacy(gw: &Gateway) -> i64 {
    let signer = icbt_merkle::Signer::from_pkcs8(&icbt_e2e::audit_signing_key_der()).unwrap();
    let mut conn = connect(gw.data_dir.path(), gw.database()).await;
    for (table, origin, filter) in [
        ("audit_checkpoints", "icbt-gateway/audit/v1", "size = $4"),
        ("key_log_head", "icbt-gateway/keys", "id = 1 AND size = $4"),
    ] {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT size, root, timestamp_ms FROM {table}"
        )))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for (size, root, at) in rows {
            let legacy = signer.sign_legacy(
                icbt_merkle::Checkpoint {
                    origin: origin.into(),
                    size: u64::try_from(size).unwrap(),
                    root: icbt_merkle::from_hex(&root).unwrap(),
                },
                at,
            );
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} SET key_id = $1, signature = $2, format = $3 WHERE {filter}"
            )))
            .bind(&legacy.key_id)
            .bind(STANDARD.encode(&legacy.signature))
            .bind("legacy")
            .bind(size)
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
    let (smallest,): (i64,) = sqlx::query_as("SELECT MIN(size) FROM audit_checkpoints")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    smallest
}

#[tokio::test]
async fn checkpoints_are_c2sp_notes_that_an_independent_verifier_accepts_and_old_logs_migrate() {
    for backend in backends() {
        let mut w = world(backend).await;
        w.activity().await;
        let keys = verifier_keys(&w.gw);
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys[0].starts_with("icbt-gateway/audit/v1+"), "{keys:?}");
        assert!(keys[1].starts_with("icbt-gateway/keys+"), "{keys:?}");

        let access = published(&w.gw, "/logs/access/checkpoint", &keys[0]).await;
        let key_log = published(&w.gw, "/logs/keys/checkpoint", &keys[1]).await;
        assert!(access.checkpoint.size > 0 && key_log.checkpoint.size > 0);
        // The JSON view carries the same note and says what to pin.
        let view = w
            .ok(&w.auditor, Method::GET, "/v1/audit/checkpoint", None)
            .await;
        assert_eq!(view["format"], "note");
        assert_eq!(view["verifier_key"], keys[0].as_str());
        let from_view =
            icbt_merkle::SignedCheckpoint::from_note(view["note"].as_str().unwrap()).unwrap();
        assert!(from_view.checkpoint.size >= access.checkpoint.size);
        // A key log note is no access log note: another name, another key id.
        let wrong = signed_note::StandardVerifier::new(&keys[0]).unwrap();
        let key_note =
            w.gw.client()
                .get(format!("{}/logs/keys/checkpoint", w.gw.url))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
        assert!(
            signed_note::Note::from_bytes(key_note.as_bytes())
                .unwrap()
                .verify(&signed_note::VerifierList::new(vec![Box::new(wrong)]))
                .is_err()
        );

        // A log written before the note format: every checkpoint in the old format.
        assert!(w.gw.stop_with("TERM").await.success());
        let smallest = make_legacy(&w.gw).await;
        let report = output(&verify(&w.gw, w.gw.database(), &[]));
        assert!(
            report.contains("audit log verified"),
            "{backend:?}: {report}"
        );
        w.gw = w.gw.restart_after("TERM").await;
        // The first start re-signs each log's newest checkpoint as a note...
        let access_after = published(&w.gw, "/logs/access/checkpoint", &keys[0]).await;
        let key_after = published(&w.gw, "/logs/keys/checkpoint", &keys[1]).await;
        assert!(access_after.checkpoint.size >= access.checkpoint.size);
        assert_eq!(key_after.checkpoint, key_log.checkpoint);
        // ...older ones keep their old signatures, and verify checks both kinds.
        let oldest = w
            .ok(
                &w.auditor,
                Method::GET,
                &format!("/v1/audit/checkpoint?size={smallest}"),
                None,
            )
            .await;
        assert_eq!(oldest["format"], "legacy", "{oldest}");
        assert!(oldest.get("note").is_none(), "{oldest}");
        // (Reading checkpoints is itself recorded, so new records joined the tree since.)
        assert!(w.gw.stop_with("TERM").await.success());
        let report = output(&verify(&w.gw, w.gw.database(), &[]));
        assert!(
            report.contains("audit log verified"),
            "{backend:?}: {report}"
        );
        // A changed legacy checkpoint is still caught.
        let forged = copy_of(&w.gw).await;
        forged
            .tamper(&[&format!(
                "UPDATE audit_checkpoints SET timestamp_ms = timestamp_ms + 1 WHERE size = {smallest}"
            )])
            .await;
        let report = forged.verify(&[]);
        assert!(
            report.contains(&format!(
                "checkpoint at size {smallest} is not validly signed"
            )),
            "{backend:?}: {report}"
        );

        // A log cut back to an earlier checkpoint, its later checkpoints with it: the
        // checkpoint the security team kept outside does not let it pass.
        let back_to = access.checkpoint.size;
        assert!(access_after.checkpoint.size > back_to);
        let kept = forged.dir.path().join("kept-checkpoint.txt");
        std::fs::write(&kept, access_after.note().unwrap()).unwrap();
        let cut = copy_of(&w.gw).await;
        cut.tamper(&[
            &format!(
                "DELETE FROM audit_records WHERE id IN \
                 (SELECT record_id FROM audit_leaves WHERE leaf_index >= {back_to})"
            ),
            &format!("DELETE FROM audit_leaves WHERE leaf_index >= {back_to}"),
            &format!("DELETE FROM audit_checkpoints WHERE size > {back_to}"),
        ])
        .await;
        // (Cut naively, the cached head gives it away; a careful attacker rewrites that
        // too, which the kept checkpoint still catches.)
        let alone = cut.verify(&[]);
        assert!(alone.contains("audit_head"), "{backend:?}: {alone}");
        let held = output(&verify_with(
            cut.dir.path(),
            cut.database.as_ref(),
            &[],
            &["--trusted-checkpoint", kept.to_str().unwrap()],
        ));
        assert!(
            held.contains(&format!(
                "a checkpoint kept outside the database covers {} records, but the log holds {back_to}",
                access_after.checkpoint.size
            )),
            "{backend:?}: {held}"
        );
        // A file that is no checkpoint of this log is refused, not ignored.
        std::fs::write(&kept, "not a note\n").unwrap();
        let refused = output(&verify_with(
            cut.dir.path(),
            cut.database.as_ref(),
            &[],
            &["--trusted-checkpoint", kept.to_str().unwrap()],
        ));
        assert!(
            refused.contains("not a checkpoint note"),
            "{backend:?}: {refused}"
        );
    }
}

/// `icbt-gateway audit report` against the gateway's database.
fn report_cli(gw: &Gateway, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
    audit_cli(gw.data_dir.path(), gw.database(), extra, "report", args)
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

/// Working hours that leave the present moment outside them, whatever the hour.
fn hours_excluding_now() -> &'static str {
    use std::time::{SystemTime, UNIX_EPOCH};
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Oslo is UTC+1 or +2: both are before noon, or both after, but near 11 and 23 UTC.
    if (now / 3600) % 24 < 9 {
        "13:00-22:00"
    } else {
        "01:00-06:00"
    }
}

#[tokio::test]
async fn review_reports_agree_between_api_and_command_line_and_bad_input_is_a_problem() {
    for backend in backends() {
        let hours = hours_excluding_now();
        let settings: Vec<(&str, &str)> = vec![
            ("ICBT_AUDIT__REVIEW__WORKING_HOURS", hours),
            ("ICBT_AUDIT__REVIEW__DISTINCT_PATIENTS_PER_DAY", "0"),
            ("ICBT_AUDIT__REVIEW__REFUSALS_PER_BURST", "2"),
        ];
        let w = world_with(
            backend,
            settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
        .await;
        let from = now_ms() - 86_400_000;
        let first = w.activity().await;
        w.activity().await;
        // As if the policy had let the therapist in without being on the first team: its
        // history is gone, so the therapist's reads there were off the team.
        let mut db = connect(w.gw.data_dir.path(), w.gw.database()).await;
        sqlx::query("DELETE FROM care_team_periods WHERE episode_id = $1")
            .bind(first.to_string())
            .execute(&mut db)
            .await
            .unwrap();
        db.close().await.unwrap();
        // The window ends before the reports are asked for: asking is recorded too.
        let to = now_ms() + 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;

        for kind in [
            "off-team",
            "after-hours",
            "many-patients",
            "refusal-bursts",
            "dead-letters",
        ] {
            let path = format!("/v1/audit/reports/{kind}?from_ms={from}&to_ms={to}");
            let api = w.ok(&w.auditor, Method::GET, &path, None).await;
            assert_eq!(api["complete"], true, "{kind}: {api}");
            let cli = report_cli(
                &w.gw,
                &[
                    "--kind",
                    kind,
                    "--from",
                    &from.to_string(),
                    "--to",
                    &to.to_string(),
                    "--format",
                    "json",
                ],
                &settings,
            );
            assert!(cli.status.success(), "{kind}: {}", output(&cli));
            let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
            assert_eq!(
                api["rows"], cli["rows"],
                "{backend:?} {kind}: the API and the command line differ"
            );
            let rows = api["rows"].as_array().unwrap();
            match kind {
                "off-team" => {
                    // The therapist's reads where its history is gone; the outsider's
                    // refused attempts, as refused.
                    assert!(
                        rows.iter().any(|r| r["principal"] == THERAPIST_HPR
                            && r["episode"] == first.to_string()
                            && r["detail"].as_str().unwrap().starts_with("not on")),
                        "{kind}: {api}"
                    );
                    assert!(
                        rows.iter()
                            .filter(|r| r["principal"] == OTHER_HPR)
                            .all(|r| r["detail"].as_str().unwrap().contains("refused")),
                        "{kind}: {api}"
                    );
                }
                "after-hours" | "many-patients" => assert!(
                    rows.iter().any(|r| r["principal"] == THERAPIST_HPR),
                    "{kind}: {api}"
                ),
                "refusal-bursts" => assert!(
                    rows.len() == 1 && rows[0]["principal"] == OTHER_HPR && rows[0]["count"] == 2,
                    "{kind}: {api}"
                ),
                _ => assert!(rows.is_empty(), "{kind}: {api}"),
            }
            // Every row names records, and its records are there to be searched.
            for row in rows.iter().filter(|r| r["kind"] != "dead-letters") {
                let index = row["records"][0].as_u64().unwrap();
                let found = w
                    .ok(
                        &w.auditor,
                        Method::GET,
                        &format!(
                            "/v1/audit/records?after={}&limit=1",
                            index.saturating_sub(1)
                        ),
                        None,
                    )
                    .await;
                let record = &found["records"][0];
                assert_eq!(
                    record["principal_id"], row["principal"],
                    "{kind}: {row} {record}"
                );
            }
            // CSV: the same from both.
            let csv_path = format!("{path}&format=csv");
            let response = w.call(&w.auditor, Method::GET, &csv_path, None).await;
            assert_eq!(
                response.headers()["content-type"],
                "text/csv; charset=utf-8"
            );
            let api_csv = response.text().await.unwrap();
            let cli_csv = report_cli(
                &w.gw,
                &[
                    "--kind",
                    kind,
                    "--from",
                    &from.to_string(),
                    "--to",
                    &to.to_string(),
                ],
                &settings,
            );
            assert_eq!(
                String::from_utf8(cli_csv.stdout).unwrap(),
                api_csv,
                "{kind}"
            );
        }

        // Bad input is a problem naming the field, never a 500.
        for (path, field) in [
            ("/v1/audit/reports/nope?from_ms=0&to_ms=1", "kind"),
            ("/v1/audit/reports/off-team?to_ms=1", "from_ms"),
            ("/v1/audit/reports/off-team?from_ms=5&to_ms=5", "to_ms"),
            (
                "/v1/audit/reports/off-team?from_ms=0&to_ms=99999999999",
                "to_ms",
            ),
            (
                "/v1/audit/reports/off-team?from_ms=0&to_ms=1&format=xml",
                "format",
            ),
            (
                "/v1/audit/reports/off-team?from_ms=0&to_ms=1&limit=0",
                "limit",
            ),
            ("/v1/audit/reports/off-team?from_ms=zero&to_ms=1", "query"),
            ("/v1/audit/records?after=abc", "query"),
            ("/v1/audit/records?after=-1", "query"),
            ("/v1/audit/records?after=18446744073709551615", "after"),
            ("/v1/audit/records?patient=12345678901", "patient"),
            ("/v1/audit/records?from_ms=5&to_ms=1", "to_ms"),
            ("/v1/audit/records?after=0&after=1", "query"),
            ("/v1/audit/records?proof_size=999999999", "size"),
            ("/v1/audit/patients/123/access-log", "patient"),
        ] {
            let problem = expect_problem(
                w.call(&w.auditor, Method::GET, path, None).await,
                422,
                "invalid-field",
            )
            .await;
            assert_eq!(problem["path"], field, "{path}: {problem}");
        }
        expect_problem(
            w.call(
                &w.therapist,
                Method::GET,
                &format!("/v1/audit/reports/off-team?from_ms={from}&to_ms={to}"),
                None,
            )
            .await,
            403,
            "forbidden",
        )
        .await;
        let wrong = report_cli(
            &w.gw,
            &[
                "--kind",
                "nope",
                "--from",
                "2026-11-01",
                "--to",
                "2026-11-02",
            ],
            &[],
        );
        assert!(!wrong.status.success());
        assert!(output(&wrong).contains("--kind"), "{}", output(&wrong));
        let long = report_cli(
            &w.gw,
            &[
                "--kind",
                "off-team",
                "--from",
                "2026-01-01",
                "--to",
                "2026-12-01",
            ],
            &[],
        );
        assert!(!long.status.success());
        assert!(
            output(&long).contains("longer than 92 days"),
            "{}",
            output(&long)
        );
    }
}

#[tokio::test]
async fn a_cached_head_that_disagrees_with_the_checkpoints_is_named_and_stops_readiness() {
    for backend in backends() {
        let mut w = world(backend).await;
        w.activity().await;
        assert!(w.gw.stop_with("TERM").await.success());
        // One peak changed: still a tree of the right shape, but not the signed one.
        let mut db = connect(w.gw.data_dir.path(), w.gw.database()).await;
        let (peaks,): (String,) = sqlx::query_as("SELECT peaks FROM audit_head WHERE id = 1")
            .fetch_one(&mut db)
            .await
            .unwrap();
        let changed = format!(
            "{}{}",
            if peaks.starts_with('0') { '1' } else { '0' },
            &peaks[1..]
        );
        sqlx::query("UPDATE audit_head SET peaks = $1 WHERE id = 1")
            .bind(&changed)
            .execute(&mut db)
            .await
            .unwrap();
        db.close().await.unwrap();
        let report = output(&verify(&w.gw, w.gw.database(), &[]));
        assert!(
            report.contains("the cached tree head (audit_head) says size")
                && report.contains("the sequencer would extend a wrong tree"),
            "{backend:?}: {report}"
        );

        // Started on it, the gateway keeps records but adds none to the tree, and says so.
        w.gw = w.gw.restart_after("TERM").await;
        let started = std::time::Instant::now();
        let response = loop {
            let r =
                w.gw.client()
                    .get(format!("{}/readyz", w.gw.url))
                    .send()
                    .await
                    .unwrap();
            if r.status() == 503 || started.elapsed() > std::time::Duration::from_secs(10) {
                break r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        let problem = expect_problem(response, 503, "not-ready").await;
        assert_eq!(problem["audit_log"], "stuck", "{problem}");
        // Patients and auditors still read the log as far as it is proven.
        let mine = w
            .ok(&w.patient, Method::GET, "/v1/me/access-log", None)
            .await;
        assert!(!mine["entries"].as_array().unwrap().is_empty(), "{mine}");
        assert!(
            w.gw.logged(|l| l.contains("audit_head_mismatch")).await,
            "{backend:?}: the alarm is in the log"
        );
        let metrics =
            w.gw.client()
                .get(format!("{}/metrics", w.gw.url))
                .send()
                .await
                .unwrap();
        let text = metrics.text().await.unwrap();
        assert!(
            text.contains("icbt_gateway_audit_sequencer_stuck 1"),
            "{text}"
        );
        // Repaired, the tree grows again and readiness returns.
        assert!(w.gw.stop_with("TERM").await.success());
        let mut db = connect(w.gw.data_dir.path(), w.gw.database()).await;
        sqlx::query("UPDATE audit_head SET peaks = $1 WHERE id = 1")
            .bind(&peaks)
            .execute(&mut db)
            .await
            .unwrap();
        db.close().await.unwrap();
        w.gw = w.gw.restart_after("TERM").await;
        let ready =
            w.gw.client()
                .get(format!("{}/readyz", w.gw.url))
                .send()
                .await
                .unwrap();
        assert_eq!(ready.status(), 200);
        assert!(w.gw.stop_with("TERM").await.success());
        let report = output(&verify(&w.gw, w.gw.database(), &[]));
        assert!(
            report.contains("audit log verified"),
            "{backend:?}: {report}"
        );
    }
}

/// [`icbt_e2e::tamper::make_format_1`] on the stopped gateway's database.
async fn make_format_1(gw: &Gateway) -> u64 {
    let mut conn = connect(gw.data_dir.path(), gw.database()).await;
    let records = icbt_e2e::tamper::make_format_1(&mut conn).await;
    conn.close().await.unwrap();
    records
}

#[tokio::test]
async fn pruned_records_stay_bound_old_leaves_are_sealed_and_every_finding_names_its_field() {
    for backend in backends() {
        let mut w = world(backend).await;
        w.activity().await;
        assert!(w.gw.stop_with("TERM").await.success());
        // A log from before leaf format 2 (as an older gateway left it) verifies as
        // before only once sealed: the first start of this version seals it.
        let old = make_format_1(&w.gw).await;
        let report = output(&verify(&w.gw, w.gw.database(), &[]));
        assert!(
            report.contains("has a leaf of format 1, but the signed seal"),
            "{backend:?}: {report}"
        );
        w.gw = w.gw.restart_after("TERM").await;
        assert!(
            w.gw.logged(|l| l.contains("access records of leaf format 1 sealed")
                && l.contains(&format!("\"records\":{old}")))
                .await,
            "{backend:?}: {}",
            w.gw.logs().join("\n")
        );
        // New records are in format 2, old ones stay in format 1, and the API says which.
        w.sealer.moved_to(&w.gw.url);
        w.activity().await;
        let page = w
            .ok(&w.auditor, Method::GET, "/v1/audit/records?limit=500", None)
            .await;
        let records = page["records"].as_array().unwrap();
        assert_eq!(records[0]["leaf_format"], 1, "{}", records[0]);
        assert_eq!(records.last().unwrap()["leaf_format"], 2);
        // Retention prunes reads of both formats; the log still verifies.
        w.gw.set_env("ICBT_AUDIT__RETENTION_DAYS__ACCESS", "0");
        w.gw = w.gw.restart_after("TERM").await;
        assert!(
            w.gw.logged(|l| l.contains("audit records past retention pruned"))
                .await,
            "{backend:?}"
        );
        assert!(w.gw.stop_with("TERM").await.success());
        let retention = [("ICBT_AUDIT__RETENTION_DAYS__ACCESS", "0")];
        let clean = copy_of(&w.gw).await;
        let report = clean.verify(&retention);
        assert!(report.starts_with("OK"), "{backend:?}: {report}");
        let mut db = connect(w.gw.data_dir.path(), w.gw.database()).await;
        let (old_read, new_read): (i64, i64) = sqlx::query_as(
            "SELECT MIN(l.leaf_index), MAX(l.leaf_index) FROM audit_leaves l \
             JOIN audit_records r ON r.id = l.record_id WHERE r.pruned = 1 AND r.action = 'read'",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        db.close().await.unwrap();
        assert!(
            u64::try_from(old_read).unwrap() < old && u64::try_from(new_read).unwrap() >= old,
            "{backend:?}: pruned reads of both formats ({old_read}, {new_read}, {old})"
        );

        // Hiding a recent read by backdating it past retention (or calling it an export)
        // is caught for both formats, and named.
        for (index, what) in [
            (new_read, "its id, time or action no longer gives its leaf"),
            (old_read, "no longer give their signed seal"),
        ] {
            let backdated = copy_of(&w.gw).await;
            backdated
                .tamper(&[
                    &format!(
                        "UPDATE audit_records SET recorded_at_ms = recorded_at_ms - 86400000 \
                         WHERE id = (SELECT record_id FROM audit_leaves WHERE leaf_index = {index})"
                    ),
                    &format!(
                        "UPDATE audit_leaves SET recorded_at_ms = recorded_at_ms - 86400000 \
                         WHERE leaf_index = {index}"
                    ),
                ])
                .await;
            let report = backdated.verify(&retention);
            assert!(report.contains(what), "{backend:?}: {report}");
        }
        let exported = copy_of(&w.gw).await;
        exported
            .tamper(&[&format!(
                "UPDATE audit_records SET action = 'export' \
                 WHERE id = (SELECT record_id FROM audit_leaves WHERE leaf_index = {new_read})"
            )])
            .await;
        let report = exported.verify(&retention);
        assert!(
            report.contains(&format!("record {new_read} ("))
                && report.contains("action stored as 'export', the leaf says 'read'"),
            "{backend:?}: {report}"
        );
        // The seal removed: format-1 leaves are no longer accepted.
        let unsealed = copy_of(&w.gw).await;
        unsealed.tamper(&["DELETE FROM audit_legacy_seal"]).await;
        let report = unsealed.verify(&retention);
        // (Record 0 is named: as format 1 without a seal, or, if pruned, as having lost
        // the content hash every format-2 record keeps.)
        assert!(
            report.contains("record 0 (")
                && (report.contains("covers only 0")
                    || report.contains("was pruned without its content hash")),
            "{backend:?}: {report}"
        );

        // A value the gateway never writes names the record and the field.
        let bogus = copy_of(&w.gw).await;
        bogus
            .tamper(&["UPDATE audit_records SET action = 'bogus' WHERE id = (SELECT record_id FROM audit_leaves WHERE leaf_index = 2)"])
            .await;
        let report = bogus.verify(&retention);
        assert!(
            report.contains("record 2 (")
                && report.contains("action stored as \"bogus\", which the gateway never writes"),
            "{backend:?}: {report}"
        );
        // Identifiers have one form, which the database holds writes to...
        let upper = copy_of(&w.gw).await;
        let mut db = connect(upper.dir.path(), upper.database.as_ref()).await;
        let refused = sqlx::query(
            "UPDATE audit_records SET episode_id = UPPER(episode_id) WHERE episode_id IS NOT NULL",
        )
        .execute(&mut db)
        .await;
        assert!(
            refused.is_err(),
            "{backend:?}: an upper-case UUID was stored"
        );
        let refused = sqlx::query("UPDATE episodes SET patient_nin = ' ' || patient_nin")
            .execute(&mut db)
            .await;
        assert!(
            refused.is_err(),
            "{backend:?}: a padded national id was stored"
        );
        db.close().await.unwrap();
        // ...and an attacker who lifts that rule is still named by verify.
        let lift = match backend {
            Backend::Sqlite => "DROP TRIGGER audit_records_canonical_update",
            Backend::Postgres => {
                "ALTER TABLE audit_records DROP CONSTRAINT audit_records_episode_id_canonical"
            }
        };
        upper
            .tamper(&[
                lift,
                "UPDATE audit_records SET episode_id = UPPER(episode_id) WHERE episode_id IS NOT NULL",
            ])
            .await;
        let report = upper.verify(&retention);
        assert!(
            report.contains("episode_id stored as")
                && report.contains("which the gateway never writes"),
            "{backend:?}: {report}"
        );
        // A national id number is described, never printed.
        let padded = copy_of(&w.gw).await;
        let lift = match backend {
            Backend::Sqlite => "DROP TRIGGER audit_records_canonical_update",
            Backend::Postgres => {
                "ALTER TABLE audit_records DROP CONSTRAINT audit_records_patient_canonical"
            }
        };
        padded
            .tamper(&[
                lift,
                "UPDATE audit_records SET patient = patient || ' ' WHERE patient IS NOT NULL",
            ])
            .await;
        let report = padded.verify(&retention);
        assert!(
            report.contains("patient stored as (12 characters, not shown)")
                && !report.contains(SYNTHETIC_FNR),
            "{backend:?}: {report}"
        );
    }
}

/// Waits (at most 20 s) until `ready` holds.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut ready: impl FnMut() -> F) {
    let started = std::time::Instant::now();
    while !ready().await {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "waited 20 s for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn checkpoints_reach_a_directory_and_a_witness_whose_cosignatures_are_served() {
    use icbt_e2e::witness::Witness;
    for backend in backends() {
        let log_vkey =
            icbt_merkle::VerifierKey::new("icbt-gateway/audit/v1", &icbt_e2e::audit_public_key())
                .unwrap()
                .to_string();
        let witness = Witness::start(&log_vkey);
        let kept = tempfile::tempdir().unwrap();
        let toml = format!(
            "[audit.publish]\ndirectory = \"{}\"\ninterval_ms = 200\n\
             [[audit.publish.witnesses]]\nurl = \"{}/\"\nkey = \"{}\"\n",
            kept.path().display(),
            witness.url,
            witness.vkey
        );
        let mut w = world_configured(backend, Vec::new(), &toml).await;
        w.activity().await;
        let witness_key = icbt_merkle::CosignerKey::parse(&witness.vkey).unwrap();
        let pinned = icbt_merkle::VerifierKey::parse(&log_vkey).unwrap();
        // The served checkpoint carries the witness's cosignature once it has one; the
        // witness checked the log's signature and, after its first, each consistency proof.
        let cosigned = |text: &str| {
            let Ok(note) = icbt_merkle::Note::parse(text) else {
                return false;
            };
            note.verify(std::slice::from_ref(&pinned)).is_ok()
                && note
                    .signatures
                    .iter()
                    .any(|s| matches!(witness_key.verify(&note.text, s), Ok(Some(_))))
        };
        let fetch = || async {
            w.gw.client()
                .get(format!("{}/logs/access/checkpoint", w.gw.url))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        };
        until("a cosigned checkpoint", || async {
            cosigned(&fetch().await)
        })
        .await;
        let first = witness.state().await;
        w.activity().await;
        until("the witness to follow the log", || async {
            let state = witness.state().await;
            state["size"].as_u64() > first["size"].as_u64() && state["cosigned"].as_u64() > Some(1)
        })
        .await;
        let state = witness.state().await;
        assert_eq!(
            state["refused"].as_array().map(Vec::len),
            Some(0),
            "{backend:?}: {state}"
        );
        // The directory holds the newest note, with the cosignature, and each one by size.
        let newest = std::fs::read_to_string(kept.path().join("checkpoint")).unwrap();
        let signed = icbt_merkle::SignedCheckpoint::from_note(&newest).unwrap();
        assert!(cosigned(&newest), "{backend:?}: {newest}");
        assert!(
            kept.path()
                .join("checkpoints")
                .join(signed.checkpoint.size.to_string())
                .exists()
        );
        // A witness that has cosigned a larger tree than the log now holds: the alarm.
        let bigger = state["size"].as_u64().unwrap() + 1000;
        witness
            .pretend(bigger, state["root"].as_str().unwrap())
            .await;
        w.activity().await;
        until("the witness-ahead alarm", || async {
            w.gw.logged(|l| l.contains("audit_witness_ahead") && l.contains(&bigger.to_string()))
                .await
        })
        .await;
        // The kept file is what `audit verify --trusted-checkpoint` holds the log to.
        assert!(w.gw.stop_with("TERM").await.success());
        let held = output(&verify_with(
            w.gw.data_dir.path(),
            w.gw.database(),
            &[],
            &[
                "--trusted-checkpoint",
                kept.path().join("checkpoint").to_str().unwrap(),
            ],
        ));
        assert!(held.contains("audit log verified"), "{backend:?}: {held}");
        drop(witness);
    }
}
