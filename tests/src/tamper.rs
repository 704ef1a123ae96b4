//! What someone who can write the gateway's database can do to its logs, done the way
//! they would do it, for tests that prove the clients catch it.

use base64::Engine;
use icbt_envelope::PublicKey;
use serde_json::Value;
use sqlx::Row;

use crate::sealed::in_a_year_ms;
use crate::{Gateway, audit_signing_key_der, connect_database};

/// Swaps `device`'s encryption key for `attacker` in the directory only, leaving the key
/// log as it is: the proven leaf no longer matches what the directory shows.
pub async fn swap_directory_key(gw: &Gateway, device: &str, attacker: &PublicKey) {
    let mut db = connect_database(gw.data_dir.path(), gw.database()).await;
    sqlx::query("UPDATE devices SET encryption_jwk = $1, encryption_kid = $2 WHERE device_id = $3")
        .bind(serde_json::to_string(&attacker.to_jwk()).unwrap())
        .bind(attacker.thumbprint())
        .bind(device)
        .execute(&mut db)
        .await
        .unwrap();
}

/// Rewrites the key log as a dishonest server could: `device`'s encryption key becomes
/// `attacker`, the leaf and the tree are recomputed, and the head is re-signed with the
/// server's own key. Every proof then checks out against the new head; only a client
/// that remembers an earlier head can tell.
pub async fn rewrite_key_log(gw: &Gateway, device: &str, attacker: &PublicKey) {
    let mut db = connect_database(gw.data_dir.path(), gw.database()).await;
    let rows = sqlx::query("SELECT leaf_index, leaf FROM key_log ORDER BY leaf_index")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let mut hashes = Vec::new();
    for row in rows {
        let index: i64 = row.try_get("leaf_index").unwrap();
        let mut leaf: Value =
            serde_json::from_str(&row.try_get::<String, _>("leaf").unwrap()).unwrap();
        if leaf["op"] == "publish" && leaf["device"] == device {
            leaf["encryption_jwk"] = serde_json::to_value(attacker.to_jwk()).unwrap();
            let text = leaf.to_string();
            sqlx::query("UPDATE key_log SET leaf = $1, leaf_hash = $2 WHERE leaf_index = $3")
                .bind(&text)
                .bind(icbt_merkle::to_hex(&icbt_merkle::leaf_hash(
                    text.as_bytes(),
                )))
                .bind(index)
                .execute(&mut db)
                .await
                .unwrap();
            hashes.push(icbt_merkle::leaf_hash(text.as_bytes()));
        } else {
            hashes.push(icbt_merkle::leaf_hash(leaf.to_string().as_bytes()));
        }
    }
    let signer = icbt_merkle::Signer::from_pkcs8(&audit_signing_key_der()).unwrap();
    let head = signer
        .sign(
            icbt_merkle::Checkpoint {
                origin: "icbt-gateway/keys".into(),
                size: u64::try_from(hashes.len()).unwrap(),
                root: icbt_merkle::root(&hashes),
            },
            in_a_year_ms() - 365 * 86_400_000,
        )
        .unwrap();
    sqlx::query(
        "UPDATE key_log_head SET root = $1, signature = $2, timestamp_ms = $3, format = 'note' WHERE id = 1",
    )
    .bind(icbt_merkle::to_hex(&head.checkpoint.root))
    .bind(base64::engine::general_purpose::STANDARD.encode(&head.signature))
    .bind(head.signed_at_ms)
    .execute(&mut db)
    .await
    .unwrap();
    drop(db);
    swap_directory_key(gw, device, attacker).await;
}

/// One access record as stored, read back the way the gateway hashes it.
pub fn record_of(row: &sqlx::any::AnyRow) -> icbt_gateway::domain::audit::Record {
    use icbt_gateway::domain::audit::{Action, Outcome, Record};
    let text = |c: &str| row.get::<Option<String>, _>(c);
    Record {
        id: uuid::Uuid::parse_str(&row.get::<String, _>("id")).unwrap(),
        recorded_at_ms: row.get("recorded_at_ms"),
        action: Action::parse(&row.get::<String, _>("action")).unwrap(),
        outcome: Outcome::parse(&row.get::<String, _>("outcome")).unwrap(),
        reason: text("reason"),
        principal_kind: row.get("principal_kind"),
        principal_id: text("principal_id"),
        principal_organisation: text("principal_organisation"),
        issuer: text("issuer"),
        client_id: text("client_id"),
        token_jti: text("token_jti"),
        resource_type: row.get("resource_type"),
        resource_id: text("resource_id"),
        episode_id: text("episode_id").map(|e| uuid::Uuid::parse_str(&e).unwrap()),
        patient: text("patient"),
        request_id: text("request_id"),
        source: text("source"),
    }
}

/// Rewrites the access log as the gateway wrote it before leaf format 2: every leaf the
/// whole record, no content hashes, no seal, checkpoints and head over those leaves.
/// Returns the number of records.
pub async fn make_format_1(conn: &mut sqlx::AnyConnection) -> u64 {
    let signer = icbt_merkle::Signer::from_pkcs8(&audit_signing_key_der()).unwrap();
    let rows = sqlx::query(
        "SELECT r.* FROM audit_leaves l JOIN audit_records r ON r.id = l.record_id ORDER BY l.leaf_index",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let mut tree = icbt_merkle::Tree::new();
    let mut roots = std::collections::HashMap::new();
    for row in &rows {
        let record = record_of(row);
        let index = tree.size();
        let hash = record.leaf_hash_v1(index);
        sqlx::query(
            "UPDATE audit_leaves SET leaf_hash = $1, content_hash = NULL WHERE leaf_index = $2",
        )
        .bind(icbt_merkle::to_hex(&hash))
        .bind(i64::try_from(index).unwrap())
        .execute(&mut *conn)
        .await
        .unwrap();
        tree.push(hash);
        roots.insert(tree.size(), tree.root());
    }
    let sizes: Vec<(i64,)> = sqlx::query_as("SELECT size FROM audit_checkpoints")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    for (size,) in sizes {
        let root = roots[&u64::try_from(size).unwrap()];
        let note = signer
            .sign(
                icbt_merkle::Checkpoint {
                    origin: icbt_gateway::domain::audit::ORIGIN.into(),
                    size: u64::try_from(size).unwrap(),
                    root,
                },
                0,
            )
            .unwrap();
        sqlx::query("UPDATE audit_checkpoints SET root = $1, signature = $2 WHERE size = $3")
            .bind(icbt_merkle::to_hex(&root))
            .bind(base64::engine::general_purpose::STANDARD.encode(&note.signature))
            .bind(size)
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    let peaks: Vec<String> = tree.peaks().iter().map(icbt_merkle::to_hex).collect();
    sqlx::query("UPDATE audit_head SET peaks = $1 WHERE id = 1")
        .bind(peaks.join(","))
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_legacy_seal")
        .execute(&mut *conn)
        .await
        .unwrap();
    tree.size()
}

/// Adds the waiting records to the tree as gateways of schema 17 did, before leaves had
/// a table of their own: each record row updated with its leaf index, leaf hash and
/// content hash, a signed checkpoint and the cached head. For upgrade tests, on a
/// database opened with `Store::open_at_schema(…, 17)`. Returns the new tree size.
pub async fn sequence_as_schema_17(conn: &mut sqlx::AnyConnection) -> u64 {
    let signer = icbt_merkle::Signer::from_pkcs8(&audit_signing_key_der()).unwrap();
    let (size, peaks): (i64, String) =
        sqlx::query_as("SELECT size, peaks FROM audit_head WHERE id = 1")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    let peaks: Vec<icbt_merkle::Hash> = peaks
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| icbt_merkle::from_hex(p).unwrap())
        .collect();
    let mut tree = icbt_merkle::Tree::restore(u64::try_from(size).unwrap(), &peaks).unwrap();
    let rows = sqlx::query(
        "SELECT * FROM audit_records WHERE leaf_index IS NULL ORDER BY recorded_at_ms, id",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    for row in &rows {
        let record = record_of(row);
        let index = tree.size();
        let hash = record.leaf_hash(index);
        sqlx::query(
            "UPDATE audit_records SET leaf_index = $1, leaf_hash = $2, content_hash = $3 WHERE id = $4",
        )
        .bind(i64::try_from(index).unwrap())
        .bind(icbt_merkle::to_hex(&hash))
        .bind(record.content_hash_hex())
        .bind(record.id.to_string())
        .execute(&mut *conn)
        .await
        .unwrap();
        tree.push(hash);
    }
    let note = signer
        .sign(
            icbt_merkle::Checkpoint {
                origin: icbt_gateway::domain::audit::ORIGIN.into(),
                size: tree.size(),
                root: tree.root(),
            },
            icbt_gateway::domain::now_ms(),
        )
        .unwrap();
    sqlx::query(
        "INSERT INTO audit_checkpoints (size, root, timestamp_ms, key_id, signature, format) \
         VALUES ($1, $2, $3, $4, $5, 'note')",
    )
    .bind(i64::try_from(tree.size()).unwrap())
    .bind(icbt_merkle::to_hex(&tree.root()))
    .bind(note.signed_at_ms)
    .bind(&note.key_id)
    .bind(base64::engine::general_purpose::STANDARD.encode(&note.signature))
    .execute(&mut *conn)
    .await
    .unwrap();
    let peaks: Vec<String> = tree.peaks().iter().map(icbt_merkle::to_hex).collect();
    sqlx::query("UPDATE audit_head SET size = $1, peaks = $2 WHERE id = 1")
        .bind(i64::try_from(tree.size()).unwrap())
        .bind(peaks.join(","))
        .execute(&mut *conn)
        .await
        .unwrap();
    tree.size()
}
