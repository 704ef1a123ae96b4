//! The tamper suite: someone who can write the database changes the access log's tables,
//! one byte of one value at a time and by structural attacks, and `audit verify` must
//! catch every change except those listed in [`exempt`] with the reason they keep the
//! log's meaning.
//!
//! Each backend gets a log of both leaf formats (records sequenced before format 2 and
//! sealed, then format-2 records), several checkpoints, a witness's cosignatures of some
//! of them, and pruned records of both formats. A trial changes one byte of the text of one value (a digit of a number),
//! verifies in process with the same walk as `icbt-gateway audit verify`, and puts the
//! byte back. `ICBT_TAMPER_TRIALS` (default 300 per backend) and `ICBT_TAMPER_SEED` set
//! the run; the table of outcomes per column is printed (`-- --nocapture`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // test code stops at the first surprise; scenarios read top to bottom

use std::collections::BTreeMap;

use icbt_e2e::{Backend, TestDatabase, audit_signing_key, backends, connect_database, storage_for};
use icbt_gateway::audit::sequencer::AuditLog;
use icbt_gateway::audit::verify::walk;
use icbt_gateway::audit::{Access, Action, Record};
use icbt_gateway::storage::Store;
use sqlx::{Connection, Row};

const DAY: i64 = 86_400_000;

/// A small deterministic generator (xorshift64*), so a failing trial can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n as u64)).unwrap()
    }
}

/// A table's columns: each name, and whether it holds a number.
type Columns = &'static [(&'static str, bool)];

/// The access log's tables: name, columns, the column that names a row, and the one
/// that names it while that column itself changes.
const TABLES: &[(&str, Columns, &str, &str)] = &[
    (
        "audit_records",
        &[
            ("id", false),
            ("recorded_at_ms", true),
            ("action", false),
            ("outcome", false),
            ("reason", false),
            ("principal_kind", false),
            ("principal_id", false),
            ("principal_organisation", false),
            ("issuer", false),
            ("client_id", false),
            ("token_jti", false),
            ("resource_type", false),
            ("resource_id", false),
            ("episode_id", false),
            ("patient", false),
            ("request_id", false),
            ("source", false),
            ("pruned", true),
            ("tx", true),
            ("pos", true),
        ],
        "id",
        "pos",
    ),
    (
        "audit_leaves",
        &[
            ("leaf_index", true),
            ("record_id", false),
            ("leaf_hash", false),
            ("content_hash", false),
            ("recorded_at_ms", true),
            ("patient", false),
            ("episode_id", false),
            ("principal_id", false),
        ],
        "leaf_index",
        "record_id",
    ),
    (
        "audit_checkpoints",
        &[
            ("size", true),
            ("root", false),
            ("timestamp_ms", true),
            ("key_id", false),
            ("signature", false),
            ("format", false),
        ],
        "size",
        "signature",
    ),
    (
        "audit_head",
        &[
            ("size", true),
            ("peaks", false),
            ("sequenced_tx", true),
            ("sequenced_pos", true),
        ],
        "id",
        "id",
    ),
    (
        "audit_cosignatures",
        &[("size", true), ("witness", false), ("line", false)],
        "line",
        "line",
    ),
    (
        "audit_legacy_seal",
        &[
            ("size", true),
            ("root", false),
            ("timestamp_ms", true),
            ("key_id", false),
            ("signature", false),
        ],
        "id",
        "id",
    ),
];

/// A witness, in process: its key and cosignatures (C2SP tlog-cosignature v1).
struct Cosigner {
    pair: ring::signature::Ed25519KeyPair,
    key: icbt_merkle::CosignerKey,
}

impl Cosigner {
    fn new() -> Self {
        use ring::signature::KeyPair as _;
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let key =
            icbt_merkle::CosignerKey::new("witness.test/w1", pair.public_key().as_ref()).unwrap();
        Self { pair, key }
    }

    /// The note signature line of a cosignature of `text` (a checkpoint body).
    fn cosign(&self, text: &str) -> String {
        let time = 1_790_000_000_u64;
        let mut blob = time.to_be_bytes().to_vec();
        blob.extend_from_slice(
            self.pair
                .sign(icbt_merkle::cosignature::message(text, time).as_bytes())
                .as_ref(),
        );
        icbt_merkle::NoteSignature {
            name: self.key.name.clone(),
            id: self.key.id,
            signature: blob,
        }
        .line()
    }
}

/// A log to tamper with, on one backend.
struct Log {
    _dir: tempfile::TempDir,
    dir_path: std::path::PathBuf,
    database: Option<TestDatabase>,
    store: Store,
    audit: AuditLog,
    now: i64,
    backend: Backend,
}

fn record(n: usize, at: i64) -> Record {
    let action = [
        Action::Read,
        Action::Create,
        Action::Read,
        Action::Search,
        Action::Login,
        Action::Export,
        Action::Update,
        Action::AuditRead,
    ][n % 8];
    let mut r = Access {
        request_id: Some(format!("req-{n}")),
        source: Some(format!("10.0.{}.{}", n / 200, n % 200)),
    }
    .anonymous(action, "messages");
    r.recorded_at_ms = at + i64::try_from(n).unwrap();
    match n % 4 {
        0 => {
            "clinician".clone_into(&mut r.principal_kind);
            r.principal_id = Some(format!("5655018{:02}", n % 100));
            r.principal_organisation = Some("974633574".into());
            r.issuer = Some("https://helseid.test".into());
            r.client_id = Some("icbt-platform".into());
            r.token_jti = Some(format!("jti-{n}"));
        }
        1 => {
            "patient".clone_into(&mut r.principal_kind);
            r.principal_id = Some("01018512345".into());
            r.issuer = Some("https://idporten.test".into());
        }
        2 => {
            "system".clone_into(&mut r.principal_kind);
            r.principal_id = Some("icbt-platform".into());
            r.client_id = Some("icbt-platform".into());
        }
        _ => {
            r = r.refused("no-session");
        }
    }
    if n % 3 != 2 {
        r.episode_id = Some(uuid::Uuid::from_u128(0xabc0 + (n as u128 % 5)));
        r.patient = Some("01018512345".into());
        r.resource_id = Some(format!("message-{n}"));
    }
    r
}

/// 24 records sequenced in leaf format 1 and sealed, then 36 in format 2, in batches of
/// six (one checkpoint each); reads older than 30 days pruned.
async fn build(backend: Backend) -> Log {
    let dir = tempfile::tempdir().unwrap();
    let (config, database) = storage_for(backend, dir.path()).await;
    let store = Store::open(&config).await.unwrap();
    let witness = Cosigner::new();
    let audit = icbt_config::AuditConfig {
        signing_key_file: Some(audit_signing_key()),
        publish: icbt_config::PublishConfig {
            witnesses: vec![icbt_config::WitnessConfig {
                url: "https://witness.invalid/".into(),
                key: witness.key.to_string(),
            }],
            ..Default::default()
        },
        retention_days: icbt_config::RetentionConfig {
            access: Some(30),
            ..Default::default()
        },
        ..Default::default()
    };
    let log = AuditLog::from_config(&audit, dir.path()).unwrap();
    let now = icbt_gateway::domain::now_ms();
    let mut conn = connect_database(dir.path(), database.as_ref()).await;
    for batch in 0..10 {
        let at = if batch < 6 { now - 40 * DAY } else { now - DAY };
        let records: Vec<Record> = (batch * 6..batch * 6 + 6)
            .map(|n| record(n, at + i64::try_from(batch).unwrap() * 1000))
            .collect();
        store.record_access(&records).await.unwrap();
        log.sequence_all(&store).await.unwrap();
        if batch == 3 {
            // What an older gateway left: format-1 leaves, then this version's seal.
            assert_eq!(icbt_e2e::tamper::make_format_1(&mut conn).await, 24);
            assert_eq!(
                store.seal_legacy_leaves(&log.signer).await.unwrap(),
                Some(24)
            );
        }
        if batch % 3 == 0 && batch >= 3 {
            // A witness cosigned this checkpoint (witnesses came with this version).
            let newest = store.audit_checkpoint(None).await.unwrap().unwrap();
            let line = witness.cosign(&newest.checkpoint.body());
            store
                .add_audit_cosignature(newest.checkpoint.size, &witness.key.name, &line)
                .await
                .unwrap();
        }
    }
    assert!(log.prune(&store, now).await.unwrap() > 0);
    // The attacker can lift the database's rules on identifiers; verify must not need them.
    let lift: Vec<String> = match backend {
        Backend::Sqlite => vec![
            "DROP TRIGGER audit_records_canonical_insert".into(),
            "DROP TRIGGER audit_records_canonical_update".into(),
            "DROP TRIGGER audit_leaves_canonical_insert".into(),
            "DROP TRIGGER audit_leaves_canonical_update".into(),
        ],
        Backend::Postgres => [
            "id",
            "episode_id",
            "patient",
            "principal_organisation",
            "principal_id_patient",
            "principal_id_clinician",
        ]
        .iter()
        .map(|c| format!("ALTER TABLE audit_records DROP CONSTRAINT audit_records_{c}_canonical"))
        .chain([
            "ALTER TABLE audit_records DROP CONSTRAINT audit_records_pruned_flag".into(),
            "ALTER TABLE audit_leaves DROP CONSTRAINT audit_leaves_content_hash_canonical".into(),
        ])
        .collect(),
    };
    for sql in lift {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
    let built = Log {
        dir_path: dir.path().to_owned(),
        _dir: dir,
        database,
        store,
        audit: log,
        now,
        backend,
    };
    assert_eq!(
        built.verdict(Vec::new()).await,
        None,
        "{backend:?}: the built log verifies"
    );
    built
}

impl Log {
    async fn conn(&self) -> sqlx::AnyConnection {
        connect_database(&self.dir_path, self.database.as_ref()).await
    }

    /// What verify says: `None` when the log passes, else the finding or error.
    async fn verdict(&self, outside: Vec<icbt_merkle::Checkpoint>) -> Option<String> {
        match walk(&self.store, &self.audit, outside, self.now).await {
            Ok((report, _)) => report.problem.map(|p| format!("finding: {p}")),
            Err(e) => Some(format!("error: {e}")),
        }
    }

    async fn run(&self, statements: &[String]) {
        let mut conn = self.conn().await;
        for sql in statements {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        conn.close().await.unwrap();
    }
}

/// A value as stored: its text, and whether it is a number.
#[derive(Clone, Debug)]
enum Value {
    Text(String),
    Int(i64),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Self::Text(t) => t.clone(),
            Self::Int(i) => i.to_string(),
        }
    }
}

/// One byte of `value` changed: a character of a text to another printable one, or a
/// digit of a number to another digit. `None` when it has no byte to change.
fn changed(value: &Value, rng: &mut Rng) -> Option<Value> {
    let text = value.text();
    let positions: Vec<usize> = text
        .char_indices()
        .filter(|(_, c)| match value {
            Value::Text(_) => c.is_ascii(),
            Value::Int(_) => c.is_ascii_digit(),
        })
        .map(|(i, _)| i)
        .collect();
    if positions.is_empty() {
        return None;
    }
    let at = positions[rng.below(positions.len())];
    let old = text.as_bytes()[at];
    let new = loop {
        let candidate = match value {
            Value::Text(_) => 0x20 + u8::try_from(rng.below(0x5f)).unwrap(),
            Value::Int(_) => b'0' + u8::try_from(rng.below(10)).unwrap(),
        };
        if candidate != old {
            break candidate;
        }
    };
    let mut bytes = text.into_bytes();
    bytes[at] = new;
    let text = String::from_utf8(bytes).unwrap();
    Some(match value {
        Value::Text(_) => Value::Text(text),
        Value::Int(_) => Value::Int(text.parse().ok()?),
    })
}

/// Changes that keep the log's meaning, so verify rightly lets them pass, and why.
fn exempt(table: &str, column: &str, row: &BTreeMap<String, Value>) -> Option<&'static str> {
    let text = |c: &str| match row.get(c) {
        Some(Value::Text(t)) => t.clone(),
        _ => String::new(),
    };
    match (table, column) {
        ("audit_checkpoints", "timestamp_ms") if text("format") == "note" => {
            Some("a C2SP checkpoint signs origin, size and root; its time is not part of it")
        }
        ("audit_legacy_seal", "timestamp_ms") => {
            Some("the seal is a C2SP note too: its time is not signed")
        }
        ("audit_records", "tx" | "pos") => Some(
            "a sequenced record's position only told the sequencer where it was; its place in the tree is its leaf (verify catches a position moved after the cursor, and a change to the newest leaf's record's)",
        ),
        ("audit_cosignatures", "witness") => Some(
            "a cosignature filed under another name is no longer read as a configured witness's: as good as deleted, and a kept cosignature is evidence the log may lose (the witness keeps its own)",
        ),
        _ => None,
    }
}

/// The rows of `table`, every column as a [`Value`].
async fn rows(
    conn: &mut sqlx::AnyConnection,
    table: &str,
    columns: &[(&str, bool)],
) -> Vec<BTreeMap<String, Value>> {
    let list: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
    let key_cols = if table == "audit_head" || table == "audit_legacy_seal" {
        ", id"
    } else {
        ""
    };
    let found = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {}{key_cols} FROM {table}",
        list.join(", ")
    )))
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    found
        .iter()
        .map(|r| {
            let mut row = BTreeMap::new();
            for (c, is_int) in columns
                .iter()
                .copied()
                .chain((!key_cols.is_empty()).then_some(("id", true)))
            {
                let value = if is_int {
                    r.get::<Option<i64>, _>(c).map(Value::Int)
                } else {
                    r.get::<Option<String>, _>(c).map(Value::Text)
                };
                if let Some(v) = value {
                    row.insert(c.to_owned(), v);
                }
            }
            row
        })
        .collect()
}

/// Sets `column` of the row whose `key` is `key_value` to `value`.
async fn set(
    conn: &mut sqlx::AnyConnection,
    table: &str,
    column: &str,
    key: &str,
    key_value: &Value,
    value: &Value,
) -> Result<u64, sqlx::Error> {
    let sql = format!("UPDATE {table} SET {column} = $1 WHERE {key} = $2");
    let query = sqlx::query(sqlx::AssertSqlSafe(sql));
    let query = match value {
        Value::Text(t) => query.bind(t.clone()),
        Value::Int(i) => query.bind(*i),
    };
    let query = match key_value {
        Value::Text(t) => query.bind(t.clone()),
        Value::Int(i) => query.bind(*i),
    };
    Ok(query.execute(&mut *conn).await?.rows_affected())
}

#[derive(Default)]
struct Tally {
    trials: u64,
    found: u64,
    error: u64,
    refused: u64,
    exempt: u64,
    missed: Vec<String>,
}

#[tokio::test]
async fn every_single_byte_change_to_the_access_log_is_caught_or_provably_harmless() {
    let trials: u64 = std::env::var("ICBT_TAMPER_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("ICBT_TAMPER_SEED")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0x1c67_2027);
    for backend in backends() {
        let log = build(backend).await;
        let mut rng = Rng(seed | 1);
        let mut tally: BTreeMap<String, Tally> = BTreeMap::new();
        let mut exemptions: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut conn = log.conn().await;
        let mut done = 0;
        while done < trials {
            // Records are most of the log, so most of the trials.
            let t = match rng.below(12) {
                0..=4 => 0,
                5 | 6 => 1,
                7 | 8 => 2,
                9 => 3,
                10 => 4,
                _ => 5,
            };
            let (table, columns, key, key_for_key) = TABLES[t];
            let all = rows(&mut conn, table, columns).await;
            let row = &all[rng.below(all.len())];
            let (column, _) = columns[rng.below(columns.len())];
            let Some(old) = row.get(column) else {
                continue; // NULL: no byte to change
            };
            let Some(new) = changed(old, &mut rng) else {
                continue;
            };
            let key = if column == key { key_for_key } else { key };
            let key_value = row[key].clone();
            done += 1;
            let entry = tally.entry(format!("{table}.{column}")).or_default();
            entry.trials += 1;
            match set(&mut conn, table, column, key, &key_value, &new).await {
                Err(_) | Ok(0) => {
                    entry.refused += 1;
                    continue;
                }
                Ok(_) => {}
            }
            let verdict = log.verdict(Vec::new()).await;
            let back_key = if column == key { &new } else { &key_value };
            assert_eq!(
                set(&mut conn, table, column, key, back_key, old)
                    .await
                    .unwrap(),
                1,
                "{backend:?}: restoring {table}.{column}"
            );
            match verdict {
                Some(v) if v.starts_with("finding") => entry.found += 1,
                Some(_) => entry.error += 1,
                None => match exempt(table, column, row) {
                    Some(why) => {
                        entry.exempt += 1;
                        *exemptions.entry(why).or_default() += 1;
                    }
                    None => entry.missed.push(format!(
                        "{:?} -> {:?} (row {:?})",
                        old.text(),
                        new.text(),
                        row.get(key).map(Value::text)
                    )),
                },
            }
            if done % 100 == 0 {
                assert_eq!(log.verdict(Vec::new()).await, None, "{backend:?}: restored");
            }
        }
        conn.close().await.unwrap();
        println!(
            "\n{backend:?}: {trials} single-byte trials (seed {seed:#x})\n{:<40} {:>6} {:>7} {:>6} {:>8} {:>6} {:>6}",
            "table.column", "trials", "finding", "error", "refused", "exempt", "missed"
        );
        for (column, t) in &tally {
            println!(
                "{column:<40} {:>6} {:>7} {:>6} {:>8} {:>6} {:>6}",
                t.trials,
                t.found,
                t.error,
                t.refused,
                t.exempt,
                t.missed.len()
            );
        }
        for (why, n) in &exemptions {
            println!("exempt ({n}): {why}");
        }
        let missed: Vec<String> = tally
            .iter()
            .flat_map(|(c, t)| t.missed.iter().map(move |m| format!("{c}: {m}")))
            .collect();
        assert!(
            missed.is_empty(),
            "{backend:?}: changes verify let through:\n{}",
            missed.join("\n")
        );
    }
}

/// The stored record at `index`, and its leaf and content hash recomputed as the
/// sequencer would: what an attacker without the signing key can forge.
async fn forge_hashes(conn: &mut sqlx::AnyConnection, index: i64, change: &str) -> Vec<String> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT r.* FROM audit_records r JOIN audit_leaves l ON l.record_id = r.id WHERE l.leaf_index = {index}"
    )))
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    let mut record = icbt_e2e::tamper::record_of(&row);
    change.clone_into(record.source.get_or_insert_default());
    let i = u64::try_from(index).unwrap();
    vec![
        format!(
            "UPDATE audit_records SET source = '{change}' WHERE id = '{}'",
            record.id
        ),
        format!(
            "UPDATE audit_leaves SET content_hash = '{}', leaf_hash = '{}' WHERE leaf_index = {index}",
            record.content_hash_hex(),
            icbt_merkle::to_hex(&record.leaf_hash(i))
        ),
    ]
}

#[tokio::test]
async fn structural_attacks_are_caught_and_named() {
    for backend in backends() {
        // Each attack on a log of its own.
        let attacks: &[(&str, &str)] = &[
            ("delete", "record 30 is missing"),
            ("swap", "record 40 was sequenced as record 41"),
            (
                "truncate",
                "a checkpoint kept outside the database covers 60 records, but the log holds 48",
            ),
            ("forge", "record 60 is not covered by any checkpoint"),
            (
                "re-hash",
                "the checkpoint at size 48 does not match the records: one of records 42 to 47",
            ),
            (
                "backdate",
                "its id, time or action no longer gives its leaf",
            ),
            ("prune", "record 51 was pruned before its retention ended"),
            ("seal", "the seal of format-1 records is not validly signed"),
            ("legacy", "no longer give their signed seal"),
        ];
        for (attack, expected) in attacks {
            let log = build(backend).await;
            let mut conn = log.conn().await;
            let newest = log.store.audit_checkpoint(None).await.unwrap().unwrap();
            let mut outside = Vec::new();
            let statements: Vec<String> = match *attack {
                "delete" => vec![
                    "DELETE FROM audit_records WHERE id = (SELECT record_id FROM audit_leaves WHERE leaf_index = 30)".into(),
                    "DELETE FROM audit_leaves WHERE leaf_index = 30".into(),
                ],
                "swap" => vec![
                    "UPDATE audit_leaves SET leaf_index = -1 WHERE leaf_index = 40".into(),
                    "UPDATE audit_leaves SET leaf_index = 40 WHERE leaf_index = 41".into(),
                    "UPDATE audit_leaves SET leaf_index = 41 WHERE leaf_index = -1".into(),
                ],
                "truncate" => {
                    // A careful attacker: records, checkpoints, cosignatures and the cached
                    // head all cut back to size 48. Only a checkpoint kept outside tells.
                    let hashes = log.store.audit_leaf_hashes(48).await.unwrap();
                    let mut tree = icbt_merkle::Tree::new();
                    for h in hashes {
                        tree.push(h);
                    }
                    let peaks: Vec<String> = tree.peaks().iter().map(icbt_merkle::to_hex).collect();
                    outside.push(newest.checkpoint.clone());
                    let newest_record = |column: &str| {
                        format!(
                            "(SELECT r.{column} FROM audit_leaves l JOIN audit_records r ON r.id = l.record_id \
                             WHERE l.leaf_index = 47)"
                        )
                    };
                    vec![
                        "DELETE FROM audit_records WHERE id IN (SELECT record_id FROM audit_leaves WHERE leaf_index >= 48)".into(),
                        "DELETE FROM audit_leaves WHERE leaf_index >= 48".into(),
                        "DELETE FROM audit_checkpoints WHERE size > 48".into(),
                        "DELETE FROM audit_cosignatures WHERE size > 48".into(),
                        format!(
                            "UPDATE audit_head SET size = 48, peaks = '{}', sequenced_tx = {}, sequenced_pos = {}",
                            peaks.join(","),
                            newest_record("tx"),
                            newest_record("pos")
                        ),
                    ]
                }
                "forge" => {
                    // Written as the gateway writes a record, then given the next place in
                    // the tree with a correct leaf: no signed checkpoint covers it.
                    let forged = record(99, log.now);
                    log.store.record_access(std::slice::from_ref(&forged)).await.unwrap();
                    vec![format!(
                        "INSERT INTO audit_leaves (leaf_index, record_id, leaf_hash, content_hash, recorded_at_ms, \
                         patient, episode_id, principal_id) \
                         SELECT 60, id, '{}', '{}', recorded_at_ms, patient, episode_id, principal_id \
                         FROM audit_records WHERE id = '{}'",
                        icbt_merkle::to_hex(&forged.leaf_hash(60)),
                        forged.content_hash_hex(),
                        forged.id
                    )]
                }
                "re-hash" => forge_hashes(&mut conn, 44, "10.66.66.66").await,
                "backdate" => vec![
                    // A recent read hidden: moved back past retention and pruned, its
                    // leaf's copies with it.
                    format!(
                        "UPDATE audit_records SET recorded_at_ms = {}, pruned = 1, patient = NULL, principal_id = NULL, episode_id = NULL \
                         WHERE id = (SELECT record_id FROM audit_leaves WHERE leaf_index = 50)",
                        log.now - 60 * DAY
                    ),
                    format!(
                        "UPDATE audit_leaves SET recorded_at_ms = {}, patient = NULL, principal_id = NULL, episode_id = NULL \
                         WHERE leaf_index = 50",
                        log.now - 60 * DAY
                    ),
                ],
                "prune" => vec![
                    "UPDATE audit_records SET pruned = 1, patient = NULL, principal_id = NULL \
                     WHERE id = (SELECT record_id FROM audit_leaves WHERE leaf_index = 51)"
                        .into(),
                    "UPDATE audit_leaves SET patient = NULL, principal_id = NULL WHERE leaf_index = 51".into(),
                ],
                "seal" => vec![format!(
                    "UPDATE audit_legacy_seal SET root = '{}'",
                    icbt_merkle::to_hex(&icbt_merkle::leaf_hash(b"another seal"))
                )],
                "legacy" => {
                    // A pruned format-1 read moved back a day: its own leaf cannot tell.
                    let oldest_pruned = "(SELECT MIN(l.leaf_index) FROM audit_leaves l \
                         JOIN audit_records r ON r.id = l.record_id WHERE r.pruned = 1)";
                    vec![
                        format!(
                            "UPDATE audit_records SET recorded_at_ms = recorded_at_ms - 86400000 \
                             WHERE id = (SELECT record_id FROM audit_leaves WHERE leaf_index = {oldest_pruned})"
                        ),
                        format!(
                            "UPDATE audit_leaves SET recorded_at_ms = recorded_at_ms - 86400000 \
                             WHERE leaf_index = {oldest_pruned}"
                        ),
                    ]
                }
                other => panic!("{other}"),
            };
            conn.close().await.unwrap();
            log.run(&statements).await;
            if *attack == "truncate" {
                assert_eq!(
                    log.verdict(Vec::new()).await,
                    None,
                    "{backend:?}: cut back with its head, the log alone verifies (documented)"
                );
            }
            let verdict = log.verdict(outside).await.unwrap_or_default();
            assert!(
                verdict.contains(expected),
                "{:?} {attack}: expected `{expected}`, got `{verdict}`",
                log.backend
            );
        }
    }
}
