//! The device key directory and its key log: devices with their public keys, and the
//! Merkle tree of every publish and revoke, whose head is signed in the same transaction.

use std::fmt::Write as _;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use icbt_merkle::{Checkpoint, Hash, SignedCheckpoint, Signer};
use sqlx::AnyConnection;

use super::rows::{self, CHECKPOINT_COLUMNS, CheckpointRow, LeafHashRow, TreeHeadRow};
use super::{StorageError, Store};
use crate::domain::audit::Record;
use crate::domain::participants::Owner;

/// The key log's name in its checkpoints.
pub const KEY_LOG_ORIGIN: &str = "icbt-gateway/keys";

pub(super) const COLUMNS: &str = "device_id, owner_kind, owner_ref, signing_jwk, encryption_kid, \
    encryption_jwk, published_at_ms, expires_at_ms, revoked_at_ms, publish_index, revoke_index";

/// A device as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_id: String,
    pub owner: Owner,
    /// Public JWKs as JSON text.
    pub signing_jwk: String,
    pub encryption_kid: String,
    pub encryption_jwk: String,
    pub published_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub publish_index: u64,
    pub revoke_index: Option<u64>,
}

impl DeviceRecord {
    pub fn active_at(&self, now_ms: i64) -> bool {
        self.revoked_at_ms.is_none() && now_ms < self.expires_at_ms
    }

    /// The key log leaf that published this device.
    fn publish_leaf(&self) -> String {
        serde_json::json!({
            "v": 1,
            "index": self.publish_index,
            "op": "publish",
            "device": self.device_id,
            "owner": self.owner.label(),
            "signing_jwk": raw(&self.signing_jwk),
            "encryption_jwk": raw(&self.encryption_jwk),
            "expires_at_ms": self.expires_at_ms,
            "at_ms": self.published_at_ms,
        })
        .to_string()
    }

    fn revoke_leaf(&self, index: u64, at_ms: i64) -> String {
        serde_json::json!({
            "v": 1,
            "index": index,
            "op": "revoke",
            "device": self.device_id,
            "owner": self.owner.label(),
            "at_ms": at_ms,
        })
        .to_string()
    }
}

fn raw(json: &str) -> serde_json::Value {
    serde_json::from_str(json).unwrap_or(serde_json::Value::Null)
}

/// The outcome of a publish.
#[derive(Debug)]
pub enum Published {
    Created(DeviceRecord, SignedCheckpoint),
    /// The same device with the same keys, owner and expiry: the earlier result.
    Existing(DeviceRecord),
    /// The device id or its encryption key is already taken by something else.
    Conflict,
    /// The owner already has the most active devices allowed.
    TooMany,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Appends the leaf that `leaf(index)` makes to the key log and signs the new head, on
/// `conn` inside the caller's transaction. The head row's lock orders writers.
async fn append(
    conn: &mut AnyConnection,
    signer: &Signer,
    now_ms: i64,
    leaf: impl FnOnce(u64) -> String,
) -> Result<(u64, SignedCheckpoint), StorageError> {
    let head: TreeHeadRow =
        sqlx::query_as("UPDATE key_log_head SET size = size WHERE id = 1 RETURNING size, peaks")
            .fetch_one(&mut *conn)
            .await?;
    let mut tree = head.tree("key_log_head")?;
    let size = tree.size();
    let leaf = leaf(size);
    let hash = icbt_merkle::leaf_hash(leaf.as_bytes());
    sqlx::query("INSERT INTO key_log (leaf_index, leaf, leaf_hash) VALUES ($1, $2, $3)")
        .bind(to_i64(size))
        .bind(&leaf)
        .bind(icbt_merkle::to_hex(&hash))
        .execute(&mut *conn)
        .await?;
    tree.push(hash);
    let head = signer.sign(
        Checkpoint {
            origin: KEY_LOG_ORIGIN.to_owned(),
            size: tree.size(),
            root: tree.root(),
        },
        now_ms,
    )?;
    let peaks: Vec<String> = tree.peaks().iter().map(icbt_merkle::to_hex).collect();
    sqlx::query(
        "UPDATE key_log_head SET size = $1, peaks = $2, root = $3, timestamp_ms = $4, \
         key_id = $5, signature = $6, format = 'note' WHERE id = 1",
    )
    .bind(to_i64(tree.size()))
    .bind(peaks.join(","))
    .bind(icbt_merkle::to_hex(&head.checkpoint.root))
    .bind(now_ms)
    .bind(&head.key_id)
    .bind(STANDARD.encode(&head.signature))
    .execute(&mut *conn)
    .await?;
    Ok((size, head))
}

impl Store {
    /// Publishes `device` (its `publish_index` is assigned here) with its audit record,
    /// in one transaction.
    pub async fn publish_device(
        &self,
        device: &DeviceRecord,
        max_per_owner: u32,
        signer: &Signer,
        audit: &Record,
    ) -> Result<Published, StorageError> {
        let mut tx = self.pool.begin().await?;
        // Take the key log's lock first: its writers are serialised, and on SQLite a
        // transaction that starts by writing waits for the lock instead of failing.
        sqlx::query("UPDATE key_log_head SET size = size WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        let existing = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM devices WHERE device_id = $1 OR encryption_kid = $2"
        )))
        .bind(&device.device_id)
        .bind(&device.encryption_kid)
        .fetch_all(&mut *tx)
        .await?;
        if let Some(row) = existing.first() {
            let stored = rows::read::<DeviceRecord>(row)?;
            let same = existing.len() == 1
                && stored.device_id == device.device_id
                && stored.encryption_kid == device.encryption_kid
                && stored.owner == device.owner
                && stored.expires_at_ms == device.expires_at_ms
                && stored.revoked_at_ms.is_none()
                && raw(&stored.signing_jwk) == raw(&device.signing_jwk)
                && raw(&stored.encryption_jwk) == raw(&device.encryption_jwk);
            return Ok(if same {
                Published::Existing(stored)
            } else {
                Published::Conflict
            });
        }
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) AS n FROM devices WHERE owner_kind = $1 AND owner_ref = $2 \
             AND revoked_at_ms IS NULL AND expires_at_ms > $3",
        )
        .bind(device.owner.kind)
        .bind(&device.owner.reference)
        .bind(device.published_at_ms)
        .fetch_one(&mut *tx)
        .await?;
        if active >= i64::from(max_per_owner) {
            return Ok(Published::TooMany);
        }
        super::audit::insert(&mut tx, audit).await?;
        let mut stored = device.clone();
        let (index, checkpoint) = append(&mut tx, signer, device.published_at_ms, |index| {
            stored.publish_index = index;
            stored.publish_leaf()
        })
        .await?;
        stored.publish_index = index;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO devices ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, NULL)"
        )))
        .bind(&stored.device_id)
        .bind(stored.owner.kind)
        .bind(&stored.owner.reference)
        .bind(&stored.signing_jwk)
        .bind(&stored.encryption_kid)
        .bind(&stored.encryption_jwk)
        .bind(stored.published_at_ms)
        .bind(stored.expires_at_ms)
        .bind(to_i64(index))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Published::Created(stored, checkpoint))
    }

    /// Revokes a device with its audit record; `None` if it was already revoked.
    pub async fn revoke_device(
        &self,
        device: &DeviceRecord,
        at_ms: i64,
        signer: &Signer,
        audit: &Record,
    ) -> Result<Option<DeviceRecord>, StorageError> {
        let mut tx = self.pool.begin().await?;
        super::audit::insert(&mut tx, audit).await?;
        let (index, _) = append(&mut tx, signer, at_ms, |index| {
            device.revoke_leaf(index, at_ms)
        })
        .await?;
        let updated = sqlx::query(
            "UPDATE devices SET revoked_at_ms = $1, revoke_index = $2 \
             WHERE device_id = $3 AND revoked_at_ms IS NULL",
        )
        .bind(at_ms)
        .bind(to_i64(index))
        .bind(&device.device_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            // Revoked meanwhile: drop the leaf and the record with the transaction.
            return Ok(None);
        }
        let change = crate::domain::authz::Change::DeviceRevoked(device.device_id.clone());
        super::stream::announce_change(&mut tx, self.backend, &change).await?;
        tx.commit().await?;
        Ok(Some(DeviceRecord {
            revoked_at_ms: Some(at_ms),
            revoke_index: Some(index),
            ..device.clone()
        }))
    }

    pub async fn device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StorageError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM devices WHERE device_id = $1"
        )))
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(rows::read::<DeviceRecord>)
        .transpose()
    }

    /// Every device of `owners`, oldest first, revoked and expired ones included.
    pub async fn devices_of(&self, owners: &[Owner]) -> Result<Vec<DeviceRecord>, StorageError> {
        if owners.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = format!("SELECT {COLUMNS} FROM devices WHERE ");
        for i in 0..owners.len() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            let _ = write!(
                sql,
                "(owner_kind = ${} AND owner_ref = ${})",
                2 * i + 1,
                2 * i + 2
            );
        }
        sql.push_str(" ORDER BY publish_index");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for owner in owners {
            query = query.bind(owner.kind).bind(owner.reference.clone());
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::read::<DeviceRecord>)
            .collect()
    }

    /// Re-signs the key log's head as a C2SP note if it is still in the legacy format and
    /// `signer` made it. Returns whether it did.
    pub async fn upgrade_key_log_head(&self, signer: &Signer) -> Result<bool, StorageError> {
        let Some(head) = self.key_log_head().await? else {
            return Ok(false);
        };
        let Some(note) = rows::note_for_legacy(head, signer)? else {
            return Ok(false);
        };
        let done = sqlx::query(
            "UPDATE key_log_head SET key_id = $1, signature = $2, format = 'note' \
             WHERE id = 1 AND size = $3 AND format = 'legacy'",
        )
        .bind(&note.key_id)
        .bind(STANDARD.encode(&note.signature))
        .bind(to_i64(note.checkpoint.size))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The newest signed head of the key log; `None` while the log is empty.
    pub async fn key_log_head(&self) -> Result<Option<SignedCheckpoint>, StorageError> {
        let head: CheckpointRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM key_log_head WHERE id = 1"
        )))
        .fetch_one(&self.pool)
        .await?;
        if head.size() == 0 {
            return Ok(None);
        }
        head.signed(KEY_LOG_ORIGIN, "key_log_head").map(Some)
    }

    /// The first `size` leaf hashes of the key log.
    pub async fn key_log_hashes(&self, size: u64) -> Result<Vec<Hash>, StorageError> {
        let rows: Vec<LeafHashRow> = sqlx::query_as(
            "SELECT leaf_hash FROM key_log WHERE leaf_index < $1 ORDER BY leaf_index",
        )
        .bind(to_i64(size))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| r.hash("key_log.leaf_hash")).collect()
    }

    /// The leaf texts at `indexes`, in the order asked.
    pub async fn key_log_leaves(&self, indexes: &[u64]) -> Result<Vec<String>, StorageError> {
        let mut leaves = Vec::with_capacity(indexes.len());
        for index in indexes {
            let leaf: String = sqlx::query_scalar("SELECT leaf FROM key_log WHERE leaf_index = $1")
                .bind(to_i64(*index))
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StorageError::Corrupt("key_log: missing leaf"))?;
            leaves.push(leaf);
        }
        Ok(leaves)
    }
}
