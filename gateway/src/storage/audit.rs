//! The access log's tables: records written beside the accesses they describe, the
//! sequencer that adds them to the Merkle tree and signs checkpoints, and the reads that
//! the audit API and `audit verify` need.

use std::fmt::Write as _;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use icbt_merkle::{Checkpoint, Hash, SignedCheckpoint, Signer};
use sqlx::{AnyConnection, FromRow as _, Row as _};
use uuid::Uuid;

use super::rows::{self, CHECKPOINT_COLUMNS, CheckpointRow, LeafHashRow, TreeHeadRow};
use super::{StorageError, Store, now_ms};
use crate::domain::audit::{
    Action, LEGACY_SEAL_ORIGIN, ORIGIN, Outcome, Record, Stored, Unreadable,
};

/// A query on either backend, as built by `sqlx::query`.
pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

pub(super) const COLUMNS: &str = "id, recorded_at_ms, action, outcome, reason, principal_kind, principal_id, \
    principal_organisation, issuer, client_id, token_jti, resource_type, resource_id, episode_id, \
    patient, request_id, source";

/// [`COLUMNS`] of a record (`r`), its place in the tree and the copies of its searched
/// columns from its leaf (`l`): what [`rows::StoredRow`] reads from [`LEAVES`].
pub(super) const STORED_COLUMNS: &str = "r.id, r.recorded_at_ms, r.action, r.outcome, r.reason, r.principal_kind, \
    r.principal_id, r.principal_organisation, r.issuer, r.client_id, r.token_jti, r.resource_type, \
    r.resource_id, r.episode_id, r.patient, r.request_id, r.source, l.leaf_index, l.leaf_hash, \
    l.content_hash, r.pruned, l.recorded_at_ms AS leaf_recorded_at_ms, l.patient AS leaf_patient, \
    l.episode_id AS leaf_episode_id, l.principal_id AS leaf_principal_id";

/// Sequenced records: each leaf (`l`) with its record (`r`). A leaf whose record is gone
/// is left out, which `audit verify` finds as a missing leaf.
pub(super) const LEAVES: &str = "audit_leaves l JOIN audit_records r ON r.id = l.record_id";

/// Writes `record` on `conn`, inside the caller's transaction.
pub(super) async fn insert(conn: &mut AnyConnection, r: &Record) -> Result<(), sqlx::Error> {
    insert_many(conn, std::slice::from_ref(r)).await
}

/// Rows per INSERT statement: 17 parameters each stays far below both backends' limit.
const ROWS_PER_INSERT: usize = 100;

/// Writes `records` on `conn` with one multi-row INSERT per hundred, inside the caller's
/// transaction: a stream hub batch for a thousand streams is ten statements, not a
/// thousand round trips.
pub(super) async fn insert_many(
    conn: &mut AnyConnection,
    records: &[Record],
) -> Result<(), sqlx::Error> {
    for chunk in records.chunks(ROWS_PER_INSERT) {
        let mut sql = format!("INSERT INTO audit_records ({COLUMNS}) VALUES ");
        for i in 0..chunk.len() {
            let base = i * 17;
            let slots: Vec<String> = (1..=17).map(|k| format!("${}", base + k)).collect();
            if i > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "({})", slots.join(", "));
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            query = bind_record(query, r);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The 17 parameters of a record, in the order of [`COLUMNS`].
pub(super) fn bind_record<'q>(query: AnyQuery<'q>, r: &Record) -> AnyQuery<'q> {
    query
        .bind(r.id.to_string())
        .bind(r.recorded_at_ms)
        .bind(r.action.as_str())
        .bind(r.outcome.as_str())
        .bind(r.reason.clone())
        .bind(r.principal_kind.clone())
        .bind(r.principal_id.clone())
        .bind(r.principal_organisation.clone())
        .bind(r.issuer.clone())
        .bind(r.client_id.clone())
        .bind(r.token_jti.clone())
        .bind(r.resource_type.clone())
        .bind(r.resource_id.clone())
        .bind(r.episode_id.map(|e| e.to_string()))
        .bind(r.patient.clone())
        .bind(r.request_id.clone())
        .bind(r.source.clone())
}

/// A record's leaf: its index, leaf hash and content hash (hex), and the record whose
/// searched columns it copies.
struct Leaf {
    index: i64,
    hash: String,
    content: String,
    record: Record,
}

/// Inserts the leaves of newly sequenced records: one multi-row INSERT per hundred. The
/// records themselves are not written again.
async fn insert_leaves(conn: &mut AnyConnection, leaves: &[Leaf]) -> Result<(), sqlx::Error> {
    const PER_ROW: usize = 8;
    for chunk in leaves.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO audit_leaves (leaf_index, record_id, leaf_hash, content_hash, recorded_at_ms, \
             patient, episode_id, principal_id) VALUES ",
        );
        for i in 0..chunk.len() {
            let slots: Vec<String> = (1..=PER_ROW)
                .map(|k| format!("${}", i * PER_ROW + k))
                .collect();
            if i > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "({})", slots.join(", "));
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for leaf in chunk {
            let r = &leaf.record;
            query = query
                .bind(leaf.index)
                .bind(r.id.to_string())
                .bind(leaf.hash.as_str())
                .bind(leaf.content.as_str())
                .bind(r.recorded_at_ms)
                .bind(r.patient.clone())
                .bind(r.episode_id.map(|e| e.to_string()))
                .bind(r.principal_id.clone());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The condition for records after the sequencer's cursor `($1, $2)` that no running
/// transaction can still add to: on PostgreSQL, below the oldest running transaction (as
/// the message stream reads, computed once per statement); on SQLite, which commits one
/// writer at a time, any.
fn waiting_condition(backend: super::Backend) -> &'static str {
    match backend {
        super::Backend::Sqlite => "pos > $2 AND $1 = $1",
        super::Backend::Postgres => {
            concat!("(tx, pos) > ($1, $2) AND tx < ", super::stream::horizon!())
        }
    }
}

/// Takes the tree's head for a change and reads it: the lock that orders every writer
/// of the tree (sequencer batches, the legacy seal) on every instance, held until the
/// transaction ends.
///
/// On PostgreSQL that is an advisory lock, not the head row's. Locking a row gives the
/// transaction its id at once, and while a transaction with an id runs, every message and
/// access record committed after that id waits below the horizon where streams and the
/// sequencer read (see `storage::stream`). Under the advisory lock a batch reads, hashes
/// and signs without an id; it takes one with its first write, shortly before it commits.
/// The head is read after the lock is granted, so it shows the previous holder's commit.
/// On SQLite, writing the row takes the database's one write lock, as before.
/// `columns` are the head's columns to read (the legacy seal runs before the cursor's
/// columns exist).
async fn lock_head(
    tx: &mut AnyConnection,
    backend: super::Backend,
    columns: &str,
) -> Result<sqlx::any::AnyRow, sqlx::Error> {
    const HEAD: &str = "FROM audit_head WHERE id = 1";
    match backend {
        super::Backend::Postgres => {
            sqlx::query("SELECT pg_advisory_xact_lock($1)::text")
                .bind(AUDIT_HEAD_LOCK)
                .execute(&mut *tx)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {columns} {HEAD}")))
                .fetch_one(&mut *tx)
                .await
        }
        super::Backend::Sqlite => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE audit_head SET size = size WHERE id = 1 RETURNING {columns}"
            )))
            .fetch_one(&mut *tx)
            .await
        }
    }
}

/// The advisory lock that orders the writers of the access log's tree (PostgreSQL): the
/// bytes of `icbtaudh`. In `pg_locks` it shows as an advisory lock with `classid`
/// 1768120948 and `objid` 1635083368.
pub const AUDIT_HEAD_LOCK: i64 = 0x6963_6274_6175_6468;

/// `AND` the records of an auditor's scope: about an episode of one of `organisations`
/// (clinics), or without an episode, by someone acting for one of them.
fn scope_condition(sql: &mut String, binds: &mut Vec<Bind>, organisations: &[String]) {
    if organisations.is_empty() {
        sql.push_str(" AND 1 = 0");
        return;
    }
    let first = binds.len() + 1;
    binds.extend(organisations.iter().cloned().map(Bind::Text));
    let slots: Vec<String> = (first..first + organisations.len())
        .map(|i| format!("${i}"))
        .collect();
    let list = slots.join(", ");
    let _ = write!(
        sql,
        " AND (l.episode_id IN (SELECT e.id FROM episodes e JOIN clinics c ON c.id = e.clinic_id \
         WHERE c.org_number IN ({list})) OR (l.episode_id IS NULL AND r.principal_organisation IN ({list})))"
    );
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// How long one page of an access-log search may take on PostgreSQL.
pub const SEARCH_TIME_LIMIT_MS: u64 = 5_000;

/// What the security team filters the log by.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub patient: Option<String>,
    /// HPR number, client id or national id of whoever acted.
    pub principal: Option<String>,
    pub episode: Option<Uuid>,
    pub action: Option<Action>,
    pub outcome: Option<Outcome>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// A hospital auditor's scope: only records about these organisations' episodes, or
    /// without an episode, made by someone acting for one of them. `None`: every record.
    pub organisations: Option<Vec<String>>,
}

impl Store {
    /// Commits access records that come with no other change (reads).
    pub async fn record_access(&self, records: &[Record]) -> Result<(), StorageError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        insert_many(&mut tx, records).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds up to `batch` waiting records to the tree and signs a checkpoint over the new
    /// size, in one transaction. Returns how many were added. Safe to run on several
    /// instances at once: the head's lock orders them (`lock_head`).
    ///
    /// Waiting records are those after the cursor in position order. On PostgreSQL only
    /// those below the oldest running transaction are taken: a transaction that began
    /// earlier may still commit a record with a lower position, which must not land
    /// behind the cursor. Until it ends, the records after it wait.
    pub async fn sequence_audit(&self, signer: &Signer, batch: i64) -> Result<u64, StorageError> {
        let mut tx = self.pool.begin().await?;
        let locked = lock_head(
            &mut tx,
            self.backend,
            "size, peaks, sequenced_tx, sequenced_pos",
        )
        .await?;
        let head = TreeHeadRow::from_row(&locked)?;
        let cursor: (i64, i64) = (
            locked.try_get("sequenced_tx")?,
            locked.try_get("sequenced_pos")?,
        );
        // The head is a cache of the tree the signed checkpoints describe: extending one
        // that disagrees with them (or does not read as a tree) would sign a wrong tree,
        // so refuse and say so.
        let newest: Option<CheckpointRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY size DESC LIMIT 1"
        )))
        .fetch_optional(&mut *tx)
        .await?;
        let (signed_size, signed_root) = match newest {
            Some(row) => {
                let newest = row.signed(ORIGIN, "audit_checkpoints")?;
                (newest.checkpoint.size, newest.checkpoint.root)
            }
            None => (0, icbt_merkle::empty_root()),
        };
        let mut tree = match head.tree("audit_head") {
            Ok(tree) if tree.size() == signed_size && tree.root() == signed_root => tree,
            _ => {
                return Err(StorageError::HeadMismatch {
                    head_size: head.stored_size(),
                    checkpoint_size: signed_size,
                });
            }
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS}, tx, pos FROM audit_records WHERE {} ORDER BY tx, pos LIMIT $3",
            waiting_condition(self.backend)
        )))
        .bind(cursor.0)
        .bind(cursor.1)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(0);
        };
        let cursor: (i64, i64) = (last.try_get("tx")?, last.try_get("pos")?);
        let mut leaves = Vec::with_capacity(rows.len());
        for row in &rows {
            let record = rows::read::<Record>(row)?;
            let index = tree.size();
            let content = record.content_hash_hex();
            let hash = record.pruned_leaf_hash(index, &content);
            tree.push(hash);
            leaves.push(Leaf {
                index: to_i64(index),
                hash: icbt_merkle::to_hex(&hash),
                content,
                record,
            });
        }
        let head_checkpoint = signer.sign(
            Checkpoint {
                origin: ORIGIN.to_owned(),
                size: tree.size(),
                root: tree.root(),
            },
            now_ms(),
        )?;
        // The batch's first write: from here to its commit it holds back what readers
        // below the horizon see (see `lock_head`).
        insert_leaves(&mut tx, &leaves).await?;
        sqlx::query(
            "INSERT INTO audit_checkpoints (size, root, timestamp_ms, key_id, signature, format) \
             VALUES ($1, $2, $3, $4, $5, 'note')",
        )
        .bind(to_i64(head_checkpoint.checkpoint.size))
        .bind(icbt_merkle::to_hex(&head_checkpoint.checkpoint.root))
        .bind(head_checkpoint.signed_at_ms)
        .bind(&head_checkpoint.key_id)
        .bind(STANDARD.encode(&head_checkpoint.signature))
        .execute(&mut *tx)
        .await?;
        let peaks: Vec<String> = tree.peaks().iter().map(icbt_merkle::to_hex).collect();
        sqlx::query(
            "UPDATE audit_head SET size = $1, peaks = $2, sequenced_tx = $3, sequenced_pos = $4 \
             WHERE id = 1",
        )
        .bind(to_i64(tree.size()))
        .bind(peaks.join(","))
        .bind(cursor.0)
        .bind(cursor.1)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// The sequencer's cursor: the position of the newest leaf's record (`(0, 0)` before
    /// the first).
    pub async fn audit_cursor(&self) -> Result<(i64, i64), StorageError> {
        Ok(
            sqlx::query_as("SELECT sequenced_tx, sequenced_pos FROM audit_head WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The position of the newest record written, sequenced or not.
    pub async fn audit_newest_position(&self) -> Result<Option<(i64, i64)>, StorageError> {
        Ok(
            sqlx::query_as("SELECT tx, pos FROM audit_records ORDER BY tx DESC, pos DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Sequenced records matching `filter`, after leaf index `after`, oldest first.
    pub async fn audit_page(
        &self,
        filter: &AuditFilter,
        after: Option<u64>,
        limit: i64,
    ) -> Result<Vec<Stored>, StorageError> {
        let mut sql = format!("SELECT {STORED_COLUMNS} FROM {LEAVES} WHERE r.pruned = 0");
        let mut binds: Vec<Bind> = Vec::new();
        let mut and = |column: &str, op: &str, value: Bind| {
            binds.push(value);
            let _ = write!(sql, " AND {column} {op} ${}", binds.len());
        };
        if let Some(p) = &filter.patient {
            and("l.patient", "=", Bind::Text(p.clone()));
        }
        if let Some(p) = &filter.principal {
            and("l.principal_id", "=", Bind::Text(p.clone()));
        }
        if let Some(e) = filter.episode {
            and("l.episode_id", "=", Bind::Text(e.to_string()));
        }
        if let Some(a) = filter.action {
            and("r.action", "=", Bind::Text(a.as_str().into()));
        }
        if let Some(o) = filter.outcome {
            and("r.outcome", "=", Bind::Text(o.as_str().into()));
        }
        if let Some(t) = filter.from_ms {
            and("l.recorded_at_ms", ">=", Bind::Int(t));
        }
        if let Some(t) = filter.to_ms {
            and("l.recorded_at_ms", "<", Bind::Int(t));
        }
        if let Some(a) = after {
            and("l.leaf_index", ">", Bind::Int(to_i64(a)));
        }
        if let Some(organisations) = &filter.organisations {
            scope_condition(&mut sql, &mut binds, organisations);
        }
        let _ = write!(sql, " ORDER BY l.leaf_index LIMIT ${}", binds.len() + 1);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for bind in binds {
            query = match bind {
                Bind::Text(t) => query.bind(t),
                Bind::Int(i) => query.bind(i),
            };
        }
        // On PostgreSQL a filter no index serves (say, only `outcome`) could read the whole
        // log: the statement gets a time limit, and running out of it is the caller's
        // problem to narrow, not a 500.
        let mut tx = self.pool.begin().await?;
        if self.backend == super::Backend::Postgres {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SET LOCAL statement_timeout = {SEARCH_TIME_LIMIT_MS}"
            )))
            .execute(&mut *tx)
            .await?;
        }
        let rows = query
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
                    StorageError::TooBroad {
                        limit_ms: SEARCH_TIME_LIMIT_MS,
                    }
                }
                _ => e.into(),
            })?;
        tx.commit().await?;
        rows.iter().map(rows::read::<Stored>).collect()
    }

    /// Every sequenced record from leaf index `from`, pruned or not, in tree order; a
    /// row that does not read as a record is returned as what is wrong with it.
    pub async fn audit_scan(&self, from: u64, limit: i64) -> Result<Vec<Scanned>, StorageError> {
        scan(&self.pool, from, limit).await
    }

    /// Every checkpoint, smallest tree first.
    pub async fn audit_checkpoints(&self) -> Result<Vec<SignedCheckpoint>, StorageError> {
        checkpoints(&self.pool).await
    }

    /// A read-only view of the log as of one moment, for `audit verify`: its reads see no
    /// records and checkpoints committed after the first of them, so a sequencer batch
    /// that commits during the walk (records and their checkpoint, in one transaction) is
    /// either wholly in the view or wholly out of it.
    pub async fn audit_snapshot(&self) -> Result<AuditSnapshot, StorageError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == super::Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        // SQLite in WAL mode: a transaction's first read fixes what all its reads see.
        Ok(AuditSnapshot { tx })
    }

    /// Re-signs the newest checkpoint as a C2SP note if it is still in the legacy format
    /// and `signer` made it (same size, same root; older ones keep their signatures).
    /// Returns whether it did.
    pub async fn upgrade_audit_checkpoint(&self, signer: &Signer) -> Result<bool, StorageError> {
        let Some(newest) = self.audit_checkpoint(None).await? else {
            return Ok(false);
        };
        let Some(note) = rows::note_for_legacy(newest, signer)? else {
            return Ok(false);
        };
        let done = sqlx::query(
            "UPDATE audit_checkpoints SET key_id = $1, signature = $2, format = 'note' \
             WHERE size = $3 AND format = 'legacy'",
        )
        .bind(&note.key_id)
        .bind(STANDARD.encode(&note.signature))
        .bind(to_i64(note.checkpoint.size))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Seals the records hashed in leaf format 1, once: signs a tree over what pruning
    /// keeps of each (position, id, time, action, leaf hash), so that verify can still
    /// tell their time and action after their content is pruned. Every record sequenced
    /// before the first start of leaf format 2 is in format 1; the head's lock keeps
    /// the sequencer out meanwhile. Returns the number of records sealed, or `None` when
    /// the seal exists.
    pub async fn seal_legacy_leaves(&self, signer: &Signer) -> Result<Option<u64>, StorageError> {
        const PAGE: i64 = 10_000;
        // Every start after the first: the seal is there, and the head's lock is not taken.
        if legacy_seal(&self.pool).await?.is_some() {
            return Ok(None);
        }
        let mut tx = self.pool.begin().await?;
        let head = TreeHeadRow::from_row(&lock_head(&mut tx, self.backend, "size, peaks").await?)?;
        // Another instance may have sealed while this one waited for the lock.
        if legacy_seal(&mut *tx).await?.is_some() {
            return Ok(None);
        }
        let size = head.stored_size();
        let mut seal = icbt_merkle::Tree::new();
        while seal.size() < size {
            let page = scan(&mut *tx, seal.size(), PAGE).await?;
            if page.is_empty() {
                return Err(StorageError::Corrupt("audit_leaves.leaf_index"));
            }
            for row in page {
                if seal.size() >= size {
                    break;
                }
                let stored = row.map_err(|bad| StorageError::Corrupt(bad.field))?;
                let index = seal.size();
                let leaf = stored
                    .leaf_hash
                    .as_deref()
                    .filter(|_| stored.leaf_index == Some(index))
                    .ok_or(StorageError::Corrupt("audit_leaves.leaf_index"))?;
                seal.push(icbt_merkle::leaf_hash(
                    &stored.record.seal_leaf_data(index, leaf),
                ));
            }
        }
        let sealed = signer.sign(
            Checkpoint {
                origin: LEGACY_SEAL_ORIGIN.to_owned(),
                size,
                root: seal.root(),
            },
            now_ms(),
        )?;
        sqlx::query(
            "INSERT INTO audit_legacy_seal (id, size, root, timestamp_ms, key_id, signature) \
             VALUES (1, $1, $2, $3, $4, $5)",
        )
        .bind(to_i64(size))
        .bind(icbt_merkle::to_hex(&sealed.checkpoint.root))
        .bind(sealed.signed_at_ms)
        .bind(&sealed.key_id)
        .bind(STANDARD.encode(&sealed.signature))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(size))
    }

    /// Keeps `witness`'s cosignature `line` of the checkpoint of `size` (the newest
    /// one it gave for that size).
    pub async fn add_audit_cosignature(
        &self,
        size: u64,
        witness: &str,
        line: &str,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO audit_cosignatures (size, witness, line) VALUES ($1, $2, $3) \
             ON CONFLICT (size, witness) DO UPDATE SET line = excluded.line",
        )
        .bind(to_i64(size))
        .bind(witness)
        .bind(line)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The witnesses' cosignature lines of the checkpoint of `size`, by witness name.
    pub async fn audit_cosignatures(
        &self,
        size: u64,
    ) -> Result<Vec<(String, String)>, StorageError> {
        Ok(sqlx::query_as(
            "SELECT witness, line FROM audit_cosignatures WHERE size = $1 ORDER BY witness",
        )
        .bind(to_i64(size))
        .fetch_all(&self.pool)
        .await?)
    }

    /// The newest checkpoint, or the one at exactly `size`.
    pub async fn audit_checkpoint(
        &self,
        size: Option<u64>,
    ) -> Result<Option<SignedCheckpoint>, StorageError> {
        let row: Option<CheckpointRow> =
            match size {
                None => sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY size DESC LIMIT 1"
                )))
                .fetch_optional(&self.pool)
                .await?,
                Some(size) => {
                    sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE size = $1"
                    )))
                    .bind(to_i64(size))
                    .fetch_optional(&self.pool)
                    .await?
                }
            };
        row.map(|r| r.signed(ORIGIN, "audit_checkpoints"))
            .transpose()
    }

    /// The stored leaf hashes of the first `size` records, for proofs.
    pub async fn audit_leaf_hashes(&self, size: u64) -> Result<Vec<Hash>, StorageError> {
        let rows: Vec<LeafHashRow> = sqlx::query_as(
            "SELECT leaf_hash FROM audit_leaves WHERE leaf_index < $1 ORDER BY leaf_index",
        )
        .bind(to_i64(size))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.hash("audit_leaves.leaf_hash"))
            .collect()
    }

    /// The name of the clinic with organisation number `org`, if it is one.
    pub async fn clinic_name(&self, org: &str) -> Result<Option<String>, StorageError> {
        Ok(
            sqlx::query_scalar("SELECT name FROM clinics WHERE org_number = $1")
                .bind(org)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The leaf index of the record with `id`, once sequenced.
    pub async fn audit_index_of(&self, id: Uuid) -> Result<Option<u64>, StorageError> {
        let index: Option<i64> =
            sqlx::query_scalar("SELECT leaf_index FROM audit_leaves WHERE record_id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        Ok(index.and_then(|i| u64::try_from(i).ok()))
    }

    /// Removes the content of sequenced records of `actions` recorded before
    /// `before_ms`, and their leaves' copies of it; their hash, position, action and time
    /// stay, so the tree still verifies. Returns how many were pruned.
    pub async fn prune_audit(
        &self,
        actions: &[Action],
        before_ms: i64,
    ) -> Result<u64, StorageError> {
        // Sequenced: at or before the cursor, read once for every statement, so that a
        // record the sequencer adds meanwhile is pruned with its leaf next time, not
        // without it now.
        const PRUNABLE: &str =
            "action = $1 AND recorded_at_ms < $2 AND pruned = 0 AND (tx, pos) <= ($3, $4)";
        // Read before the transactions, whose first statement then writes: on SQLite a
        // transaction that reads first and writes second fails at once if another
        // connection wrote in between, instead of waiting its turn.
        let (cursor_tx, cursor_pos) = self.audit_cursor().await?;
        let copies = format!(
            "UPDATE audit_leaves SET patient = NULL, episode_id = NULL, principal_id = NULL \
             WHERE record_id IN (SELECT id FROM audit_records WHERE {PRUNABLE})"
        );
        let records = format!(
            "UPDATE audit_records SET pruned = 1, outcome = 'success', reason = NULL, principal_kind = '', \
             principal_id = NULL, principal_organisation = NULL, issuer = NULL, client_id = NULL, \
             token_jti = NULL, resource_type = '', resource_id = NULL, episode_id = NULL, patient = NULL, \
             request_id = NULL, source = NULL \
             WHERE {PRUNABLE}"
        );
        let mut pruned = 0;
        for action in actions {
            let mut tx = self.pool.begin().await?;
            let mut done = 0;
            for statement in [&copies, &records] {
                done = sqlx::query(sqlx::AssertSqlSafe(statement.as_str()))
                    .bind(action.as_str())
                    .bind(before_ms)
                    .bind(cursor_tx)
                    .bind(cursor_pos)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            // The records' count, the last statement's.
            pruned += done;
        }
        Ok(pruned)
    }
}

enum Bind {
    Text(String),
    Int(i64),
}

/// The log as of one moment; see [`Store::audit_snapshot`].
#[derive(Debug)]
pub struct AuditSnapshot {
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl AuditSnapshot {
    /// Every checkpoint, smallest tree first.
    pub async fn checkpoints(&mut self) -> Result<Vec<SignedCheckpoint>, StorageError> {
        checkpoints(&mut *self.tx).await
    }

    /// Records not yet in the tree: after the sequencer's cursor.
    pub async fn pending(&mut self) -> Result<i64, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) AS n FROM audit_records r JOIN audit_head h ON h.id = 1 \
             WHERE (r.tx, r.pos) > (h.sequenced_tx, h.sequenced_pos)",
        )
        .fetch_one(&mut *self.tx)
        .await?)
    }

    /// The sequencer's cursor beside the tree, for `audit verify` to judge: the newest
    /// leaf's record's position, the records at or before the cursor without a leaf, and
    /// the leaves whose record is after it.
    pub async fn cursor_check(&mut self) -> Result<CursorCheck, StorageError> {
        let row = sqlx::query(
            "SELECT h.sequenced_tx, h.sequenced_pos, n.tx AS newest_tx, n.pos AS newest_pos, \
             (SELECT COUNT(*) FROM audit_records r WHERE (r.tx, r.pos) <= (h.sequenced_tx, h.sequenced_pos) \
              AND NOT EXISTS (SELECT 1 FROM audit_leaves l WHERE l.record_id = r.id)) AS left_out, \
             (SELECT COUNT(*) FROM audit_leaves l JOIN audit_records r ON r.id = l.record_id \
              WHERE (r.tx, r.pos) > (h.sequenced_tx, h.sequenced_pos)) AS ahead \
             FROM audit_head h LEFT JOIN (SELECT r.tx, r.pos FROM audit_leaves l \
              JOIN audit_records r ON r.id = l.record_id ORDER BY l.leaf_index DESC LIMIT 1) n ON 1 = 1 \
             WHERE h.id = 1",
        )
        .fetch_one(&mut *self.tx)
        .await?;
        let newest: (Option<i64>, Option<i64>) =
            (row.try_get("newest_tx")?, row.try_get("newest_pos")?);
        Ok(CursorCheck {
            cursor: (row.try_get("sequenced_tx")?, row.try_get("sequenced_pos")?),
            newest: newest.0.zip(newest.1),
            left_out: row.try_get("left_out")?,
            ahead: row.try_get("ahead")?,
        })
    }

    /// Every sequenced record from leaf index `from`, pruned or not, in tree order.
    /// The cached head (`audit_head`), the tree the sequencer will extend: its stored
    /// size, and the tree when its peaks fit that size.
    pub async fn head(&mut self) -> Result<(u64, Option<icbt_merkle::Tree>), StorageError> {
        let head: TreeHeadRow = sqlx::query_as("SELECT size, peaks FROM audit_head WHERE id = 1")
            .fetch_one(&mut *self.tx)
            .await?;
        Ok((head.stored_size(), head.tree("audit_head").ok()))
    }

    pub async fn scan(&mut self, from: u64, limit: i64) -> Result<Vec<Scanned>, StorageError> {
        scan(&mut *self.tx, from, limit).await
    }

    /// Every witness cosignature kept: (checkpoint size, witness name, line).
    pub async fn cosignatures(&mut self) -> Result<Vec<(i64, String, String)>, StorageError> {
        Ok(sqlx::query_as(
            "SELECT size, witness, line FROM audit_cosignatures ORDER BY size, witness",
        )
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// The signed seal over the records hashed in leaf format 1, if there is one.
    pub async fn legacy_seal(&mut self) -> Result<Option<SignedCheckpoint>, StorageError> {
        legacy_seal(&mut *self.tx).await
    }

    /// Ends the view (it changed nothing).
    pub async fn close(self) -> Result<(), StorageError> {
        self.tx.rollback().await?;
        Ok(())
    }
}

/// The sequencer's cursor beside the tree; see [`AuditSnapshot::cursor_check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorCheck {
    /// `audit_head`'s `(sequenced_tx, sequenced_pos)`.
    pub cursor: (i64, i64),
    /// The position of the newest leaf's record, if there is a leaf.
    pub newest: Option<(i64, i64)>,
    /// Records at or before the cursor without a leaf.
    pub left_out: i64,
    /// Leaves whose record is after the cursor.
    pub ahead: i64,
}

/// A sequenced row as `audit verify` walks it: the record, or what is wrong with it.
pub type Scanned = Result<Stored, Unreadable>;

async fn scan<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    from: u64,
    limit: i64,
) -> Result<Vec<Scanned>, StorageError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {STORED_COLUMNS} FROM {LEAVES} \
         WHERE l.leaf_index >= $1 ORDER BY l.leaf_index LIMIT $2"
    )))
    .bind(to_i64(from))
    .bind(limit)
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|row| Ok(rows::StoredRow::from_row(row)?.check()))
        .collect()
}

async fn legacy_seal<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
) -> Result<Option<SignedCheckpoint>, StorageError> {
    let row: Option<CheckpointRow> = sqlx::query_as(
        "SELECT size, root, timestamp_ms, key_id, signature, 'note' AS format \
         FROM audit_legacy_seal WHERE id = 1",
    )
    .fetch_optional(executor)
    .await?;
    row.map(|r| r.signed(LEGACY_SEAL_ORIGIN, "audit_legacy_seal"))
        .transpose()
}

async fn checkpoints<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
) -> Result<Vec<SignedCheckpoint>, StorageError> {
    let rows: Vec<CheckpointRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY size"
    )))
    .fetch_all(executor)
    .await?;
    rows.into_iter()
        .map(|r| r.signed(ORIGIN, "audit_checkpoints"))
        .collect()
}
