//! `audit verify`: recomputes the whole tree from the stored records, checks every
//! checkpoint's signature and root, and names the first record that does not fit.
//!
//! Pure: it is fed records in tree order and knows nothing of the database. What it
//! catches, in the order a walk meets it: a missing position (deleted record), a record
//! whose content no longer gives its stored hash (altered, moved, or inserted), a record
//! pruned before its retention ended, a checkpoint whose root the records no longer give
//! (a record altered *and* re-hashed: named to the span between two checkpoints), a bad
//! signature, and records past the last checkpoint or checkpoints past the last record.
//! Held to checkpoints kept outside the database ([`Verifier::with_outside`]), it also
//! catches a log cut back, with its checkpoints, to an earlier state, or rewritten.
//! [`walk`] feeds it from one snapshot of the store: what `audit verify` runs.

use icbt_config::RetentionConfig;
use icbt_merkle::{Checkpoint, SignedCheckpoint, Tree};

use super::{Action, Outcome, Record, Stored};
use crate::domain::audit::Unreadable;

/// Verifies the log in `store` as of one moment: one read-only snapshot, so a batch that
/// running gateways sequence meanwhile is wholly in it or wholly out. Returns the report
/// and the number of records still waiting to join the tree.
pub async fn walk(
    store: &crate::storage::Store,
    log: &super::sequencer::AuditLog,
    outside: Vec<Checkpoint>,
    now_ms: i64,
) -> Result<(Report, i64), crate::storage::StorageError> {
    const PAGE: i64 = 10_000;
    let mut snapshot = store.audit_snapshot().await?;
    let checkpoints = snapshot.checkpoints().await?;
    let pending = snapshot.pending().await?;
    let seal = snapshot.legacy_seal().await?;
    let cosigned = cosignatures(
        &checkpoints,
        &snapshot.cosignatures().await?,
        &log.witnesses,
    );
    let mut verifier = Verifier::new(checkpoints, log.trusted.clone(), &log.retention, now_ms)
        .with_legacy_seal(seal)
        .with_outside(outside);
    let mut from = 0;
    loop {
        let page = snapshot.scan(from, PAGE).await?;
        let Some(last) = page.last().and_then(|row| match row {
            Ok(stored) => stored.leaf_index,
            Err(bad) => bad.leaf_index,
        }) else {
            break;
        };
        for row in &page {
            verifier.feed_row(row);
        }
        if verifier.failed() || i64::try_from(page.len()).unwrap_or(i64::MAX) < PAGE {
            break;
        }
        from = last + 1;
    }
    let head = snapshot.head().await?;
    let cursor = snapshot.cursor_check().await?;
    snapshot.close().await?;
    let mut report = verifier.finish_with_head((head.0, head.1.as_ref()));
    if report.problem.is_none() {
        report.problem = cosigned;
    }
    if report.problem.is_none() {
        report.problem = cursor_finding(&cursor);
    }
    Ok((report, pending))
}

/// What is wrong with the sequencer's cursor, if anything: it must be the position of
/// the newest leaf's record, with every record at or before it in the tree and none after
/// it. A cursor moved forward would leave records out of the log for good; one moved
/// back, or a leaf's record moved after it, would have the sequencer add records twice.
fn cursor_finding(check: &crate::storage::CursorCheck) -> Option<Finding> {
    let (tx, pos) = check.cursor;
    let (newest_tx, newest_pos) = check.newest.unwrap_or((0, 0));
    if check.left_out > 0 {
        Some(Finding::LeftOut {
            count: check.left_out,
            tx,
            pos,
        })
    } else if check.ahead > 0 {
        Some(Finding::AfterCursor {
            count: check.ahead,
            tx,
            pos,
        })
    } else {
        (check.cursor != (newest_tx, newest_pos)).then_some(Finding::CursorMoved {
            tx,
            pos,
            newest_tx,
            newest_pos,
        })
    }
}

/// The first kept cosignature of a configured witness that does not verify on the
/// checkpoint of its size (`checkpoints` smallest first). Cosignatures of witnesses no longer configured are not read.
fn cosignatures(
    checkpoints: &[SignedCheckpoint],
    kept: &[(i64, String, String)],
    witnesses: &[icbt_merkle::CosignerKey],
) -> Option<Finding> {
    kept.iter().find_map(|(size, witness, line)| {
        let key = witnesses.iter().find(|k| k.name == *witness)?;
        let bad = |reason: &str| Finding::BadCosignature {
            size: *size,
            witness: witness.clone(),
            reason: reason.to_owned(),
        };
        // Smallest first, as the snapshot reads them: one lookup, not a scan per line.
        let Some(checkpoint) = u64::try_from(*size).ok().and_then(|size| {
            checkpoints
                .binary_search_by_key(&size, |c| c.checkpoint.size)
                .ok()
                .map(|i| &checkpoints[i])
        }) else {
            return Some(bad("there is no checkpoint of that size"));
        };
        let text = checkpoint.checkpoint.body();
        let Ok(note) = icbt_merkle::Note::parse(&format!("{text}\n{line}")) else {
            return Some(bad("it is not a note signature line"));
        };
        match note.signatures.as_slice() {
            [one] if matches!(key.verify(&text, one), Ok(Some(_))) => None,
            _ => Some(bad(
                "it is not the witness's valid signature of that checkpoint",
            )),
        }
    })
}

/// The first thing wrong with the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    #[error("record {index} is missing (deleted?)")]
    Missing { index: u64 },
    #[error("record {index} is out of place")]
    OutOfPlace { index: u64 },
    #[error("record {index} ({id}) does not match its hash: altered, moved or inserted")]
    Altered { index: u64, id: String },
    #[error("record {index} ({id}): {field} stored as '{stored}', the leaf says '{leaf}'")]
    FieldChanged {
        index: u64,
        id: String,
        field: &'static str,
        stored: String,
        leaf: String,
    },
    #[error(
        "record {index} was sequenced as record {was}: records were inserted, removed or reordered before it"
    )]
    Moved { index: u64, was: u64 },
    #[error("record {index} was pruned before its retention ended")]
    PrunedEarly { index: u64 },
    #[error("record {index} has no stored hash")]
    NoHash { index: u64 },
    #[error("record {index} ({id}): {field} stored as {stored}, which the gateway never writes")]
    Unreadable {
        index: u64,
        id: String,
        field: &'static str,
        stored: String,
    },
    #[error(
        "record {index} ({id}): its content no longer gives its content hash (one of outcome, reason, principal, issuer, client, token id, resource, episode, patient, request id or source was changed)"
    )]
    ContentChanged { index: u64, id: String },
    #[error(
        "record {index} ({id}): its id, time or action no longer gives its leaf (time stored as {recorded_at_ms})"
    )]
    HeaderChanged {
        index: u64,
        id: String,
        recorded_at_ms: i64,
    },
    #[error("record {index} ({id}) was pruned without its content hash")]
    NoContentHash { index: u64, id: String },
    #[error(
        "record {index} ({id}) has a leaf of format 1, but the signed seal of format-1 records covers only {sealed}: the seal was removed or the record forged"
    )]
    Unsealed { index: u64, id: String, sealed: u64 },
    #[error(
        "the records of leaf format 1 (0 to {last}) no longer give their signed seal: the time or action of one of them was changed"
    )]
    SealMismatch { last: u64 },
    #[error(
        "the cosignature of witness {witness} on the checkpoint at size {size} does not verify: {reason}"
    )]
    BadCosignature {
        size: i64,
        witness: String,
        reason: String,
    },
    #[error("the seal of format-1 records is not validly signed: {reason}")]
    BadSeal { reason: String },
    #[error("the seal of format-1 records covers {size} records, but the log holds {have}")]
    SealTruncated { size: u64, have: u64 },
    #[error(
        "the checkpoint at size {size} does not match the records: one of records {from} to {last} was altered"
    )]
    RootMismatch { size: u64, from: u64, last: u64 },
    #[error("the checkpoint at size {size} is not validly signed: {reason}")]
    BadSignature { size: u64, reason: String },
    #[error("record {index} is not covered by any checkpoint (inserted?)")]
    Uncovered { index: u64 },
    #[error(
        "the checkpoint at size {size} covers more records than the log holds ({have}): records were deleted from the end"
    )]
    Truncated { size: u64, have: u64 },
    #[error(
        "the cached tree head (audit_head) says size {head_size}, but the records give size {tree_size} with other peaks: the sequencer would extend a wrong tree"
    )]
    HeadMismatch { head_size: u64, tree_size: u64 },
    #[error(
        "{count} record(s) at or before the sequencer's cursor (audit_head, position {tx}/{pos}) have no leaf: the sequencer will never add them"
    )]
    LeftOut { count: i64, tx: i64, pos: i64 },
    #[error(
        "{count} leaf record(s) are after the sequencer's cursor (audit_head, position {tx}/{pos}): the sequencer would add them again"
    )]
    AfterCursor { count: i64, tx: i64, pos: i64 },
    #[error(
        "the sequencer's cursor (audit_head, position {tx}/{pos}) is not the newest leaf's record (position {newest_tx}/{newest_pos})"
    )]
    CursorMoved {
        tx: i64,
        pos: i64,
        newest_tx: i64,
        newest_pos: i64,
    },
    #[error(
        "the log at size {size} differs from a checkpoint kept outside the database: its history was rewritten"
    )]
    ForkedFromOutside { size: u64 },
    #[error(
        "a checkpoint kept outside the database covers {size} records, but the log holds {have}: records were removed from the end"
    )]
    TruncatedBelowOutside { size: u64, have: u64 },
}

/// How far from its place a moved record is recognised.
const MOVE_SEARCH: u64 = 16;

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub records: u64,
    pub checkpoints: u64,
    pub problem: Option<Finding>,
}

/// Walks the log once.
#[derive(Debug)]
pub struct Verifier<'a> {
    tree: Tree,
    checkpoints: std::iter::Peekable<std::vec::IntoIter<SignedCheckpoint>>,
    /// Checkpoints kept outside the database, already verified, smallest first.
    outside: std::iter::Peekable<std::vec::IntoIter<Checkpoint>>,
    checked: u64,
    last_checked_size: u64,
    trusted: Vec<Vec<u8>>,
    retention: &'a RetentionConfig,
    now_ms: i64,
    /// Records below this position are hashed in leaf format 1, under the legacy seal.
    legacy_size: u64,
    legacy_root: icbt_merkle::Hash,
    /// The seal's tree, as the records give it.
    sealed: Tree,
    problem: Option<Finding>,
}

impl<'a> Verifier<'a> {
    /// `checkpoints` smallest first; `trusted` raw Ed25519 public keys.
    pub fn new(
        checkpoints: Vec<SignedCheckpoint>,
        trusted: Vec<Vec<u8>>,
        retention: &'a RetentionConfig,
        now_ms: i64,
    ) -> Self {
        let mut verifier = Self {
            tree: Tree::new(),
            checkpoints: checkpoints.into_iter().peekable(),
            outside: Vec::new().into_iter().peekable(),
            checked: 0,
            last_checked_size: 0,
            trusted,
            retention,
            now_ms,
            legacy_size: 0,
            legacy_root: icbt_merkle::empty_root(),
            sealed: Tree::new(),
            problem: None,
        };
        // A checkpoint of the empty log (there is none today, but it would be valid).
        verifier.check_checkpoints();
        verifier
    }

    /// Also holds the log to `heads`: checkpoints kept outside the database (by the security
    /// team, a witness), whose signatures the caller has checked. The log must give each
    /// one's root at its size: a log cut back below one, or rewritten before it, fails.
    #[must_use]
    pub fn with_outside(mut self, mut heads: Vec<Checkpoint>) -> Self {
        heads.sort_by_key(|c| c.size);
        self.outside = heads.into_iter().peekable();
        self.check_outside();
        self
    }

    /// Also holds the first records to the signed seal over the records hashed in leaf
    /// format 1 (`None`: there is none, and every record must be in format 2).
    #[must_use]
    pub fn with_legacy_seal(mut self, seal: Option<SignedCheckpoint>) -> Self {
        let Some(seal) = seal else {
            return self;
        };
        let trusted: Vec<&[u8]> = self.trusted.iter().map(Vec::as_slice).collect();
        if let Err(e) = seal.verify(&trusted) {
            self.problem.get_or_insert(Finding::BadSeal {
                reason: e.to_string(),
            });
        }
        self.legacy_size = seal.checkpoint.size;
        self.legacy_root = seal.checkpoint.root;
        if self.legacy_size == 0 && self.legacy_root != icbt_merkle::empty_root() {
            self.problem
                .get_or_insert(Finding::SealMismatch { last: 0 });
        }
        self
    }

    /// Whether a problem was found (then feeding more changes nothing).
    pub fn failed(&self) -> bool {
        self.problem.is_some()
    }

    /// The next row, in leaf-index order, as storage read it.
    pub fn feed_row(&mut self, row: &Result<Stored, Unreadable>) {
        match row {
            Ok(stored) => self.feed(stored),
            Err(bad) => {
                if self.problem.is_some() {
                    return;
                }
                let Some(index) = self.position(bad.leaf_index) else {
                    return;
                };
                self.problem = Some(Finding::Unreadable {
                    index,
                    id: bad.id.clone(),
                    field: bad.field.trim_start_matches("audit_records."),
                    stored: bad.stored.clone(),
                });
            }
        }
    }

    /// The next record, in leaf-index order.
    pub fn feed(&mut self, stored: &Stored) {
        if self.problem.is_some() {
            return;
        }
        let Some(expected) = self.position(stored.leaf_index) else {
            return;
        };
        let Some(stored_hash) = stored.leaf_hash.as_deref().and_then(icbt_merkle::from_hex) else {
            self.problem = Some(Finding::NoHash { index: expected });
            return;
        };
        if stored.pruned && !self.may_be_pruned(&stored.record) {
            self.problem = Some(Finding::PrunedEarly { index: expected });
            return;
        }
        let checked = if expected < self.legacy_size {
            self.format_1(stored, expected, stored_hash)
        } else {
            self.format_2(stored, expected, stored_hash)
        };
        match checked {
            Ok(hash) => self.tree.push(hash),
            Err(finding) => {
                self.problem = Some(finding);
                return;
            }
        }
        self.check_checkpoints();
        self.check_outside();
    }

    /// Where the next record must be: the position it claims, if that is the next one.
    fn position(&mut self, leaf_index: Option<u64>) -> Option<u64> {
        let expected = self.tree.size();
        match leaf_index {
            Some(i) if i == expected => Some(expected),
            Some(i) if i > expected => {
                self.problem = Some(Finding::Missing { index: expected });
                None
            }
            Some(i) => {
                self.problem = Some(Finding::OutOfPlace { index: i });
                None
            }
            None => None,
        }
    }

    /// Whether a record of this time and action may have its content removed by now.
    fn may_be_pruned(&self, record: &Record) -> bool {
        let days = self.retention.days(record.action.class());
        days.is_some_and(|d| record.recorded_at_ms < self.now_ms - i64::from(d) * 86_400_000)
    }

    /// A record sequenced before leaf format 2: its leaf is the whole record, and what
    /// pruning keeps of it is bound by the legacy seal.
    fn format_1(
        &mut self,
        stored: &Stored,
        index: u64,
        stored_hash: icbt_merkle::Hash,
    ) -> Result<icbt_merkle::Hash, Finding> {
        if !stored.pruned {
            let record = &stored.record;
            let hash = record.leaf_hash_v1(index);
            if hash != stored_hash {
                return Err(mismatch(record, index, &stored_hash, |r, i| {
                    r.leaf_hash_v1(i)
                }));
            }
        }
        let leaf = icbt_merkle::to_hex(&stored_hash);
        self.sealed.push(icbt_merkle::leaf_hash(
            &stored.record.seal_leaf_data(index, &leaf),
        ));
        if self.sealed.size() == self.legacy_size && self.sealed.root() != self.legacy_root {
            return Err(Finding::SealMismatch { last: index });
        }
        Ok(stored_hash)
    }

    /// A record of leaf format 2: a header of what pruning keeps and the hash of the
    /// rest, recomputed from the content while there is one and taken as stored after.
    fn format_2(
        &self,
        stored: &Stored,
        index: u64,
        stored_hash: icbt_merkle::Hash,
    ) -> Result<icbt_merkle::Hash, Finding> {
        let record = &stored.record;
        let id = || record.id.to_string();
        let content = if stored.pruned {
            stored
                .content_hash
                .clone()
                .ok_or_else(|| Finding::NoContentHash { index, id: id() })?
        } else {
            record.content_hash_hex()
        };
        let hash = record.pruned_leaf_hash(index, &content);
        if hash != stored_hash {
            if !stored.pruned
                && stored.content_hash.is_none()
                && record.leaf_hash_v1(index) == stored_hash
            {
                return Err(Finding::Unsealed {
                    index,
                    id: id(),
                    sealed: self.legacy_size,
                });
            }
            let finding = mismatch(record, index, &stored_hash, |r, i| {
                if stored.pruned {
                    r.pruned_leaf_hash(i, &content)
                } else {
                    r.leaf_hash(i)
                }
            });
            if !matches!(finding, Finding::Altered { .. }) {
                return Err(finding);
            }
            // Which half changed: the content (its stored hash still fits the header) or
            // the header.
            let kept = stored.content_hash.as_deref().unwrap_or_default();
            return Err(
                if !stored.pruned && record.pruned_leaf_hash(index, kept) == stored_hash {
                    Finding::ContentChanged { index, id: id() }
                } else {
                    Finding::HeaderChanged {
                        index,
                        id: id(),
                        recorded_at_ms: record.recorded_at_ms,
                    }
                },
            );
        }
        if !stored.pruned && stored.content_hash.as_deref() != Some(content.as_str()) {
            return Err(Finding::FieldChanged {
                index,
                id: id(),
                field: "content_hash",
                stored: stored.content_hash.clone().unwrap_or_default(),
                leaf: content,
            });
        }
        Ok(hash)
    }

    fn check_outside(&mut self) {
        while self.problem.is_none() {
            let Some(next) = self.outside.peek() else {
                return;
            };
            if next.size != self.tree.size() {
                return;
            }
            if next.root != self.tree.root() {
                self.problem = Some(Finding::ForkedFromOutside { size: next.size });
                return;
            }
            self.outside.next();
        }
    }

    fn check_checkpoints(&mut self) {
        while self.problem.is_none() {
            let Some(next) = self.checkpoints.peek() else {
                return;
            };
            if next.checkpoint.size != self.tree.size() {
                return;
            }
            let size = next.checkpoint.size;
            let trusted: Vec<&[u8]> = self.trusted.iter().map(Vec::as_slice).collect();
            if let Err(e) = next.verify(&trusted) {
                self.problem = Some(Finding::BadSignature {
                    size,
                    reason: e.to_string(),
                });
                return;
            }
            if next.checkpoint.root != self.tree.root() {
                self.problem = Some(Finding::RootMismatch {
                    size,
                    from: self.last_checked_size,
                    last: size.saturating_sub(1),
                });
                return;
            }
            self.last_checked_size = size;
            self.checked += 1;
            self.checkpoints.next();
        }
    }

    /// The verdict once every record is fed, with the cached `audit_head` (its stored
    /// size, and its tree when the peaks read as one) held to the tree the records give.
    /// The records' own findings come first: the head is checked once they hold.
    pub fn finish_with_head(self, (head_size, head): (u64, Option<&Tree>)) -> Report {
        let fits =
            head.is_some_and(|h| h.size() == self.tree.size() && h.peaks() == self.tree.peaks());
        let tree_size = self.tree.size();
        let mut report = self.finish();
        if report.problem.is_none() && !fits {
            report.problem = Some(Finding::HeadMismatch {
                head_size,
                tree_size,
            });
        }
        report
    }

    /// The verdict once every record is fed.
    pub fn finish(mut self) -> Report {
        if self.problem.is_none() && self.tree.size() < self.legacy_size {
            self.problem = Some(Finding::SealTruncated {
                size: self.legacy_size,
                have: self.tree.size(),
            });
        }
        if self.problem.is_none()
            && let Some(next) = self.outside.peek()
        {
            self.problem = Some(Finding::TruncatedBelowOutside {
                size: next.size,
                have: self.tree.size(),
            });
        }
        if self.problem.is_none() {
            if let Some(next) = self.checkpoints.peek() {
                self.problem = Some(Finding::Truncated {
                    size: next.checkpoint.size,
                    have: self.tree.size(),
                });
            } else if self.tree.size() > self.last_checked_size {
                self.problem = Some(Finding::Uncovered {
                    index: self.last_checked_size,
                });
            }
        }
        Report {
            records: self.tree.size(),
            checkpoints: self.checked,
            problem: self.problem,
        }
    }
}

/// What is wrong with a record whose leaf, recomputed by `hash_at`, is not its stored
/// hash: moved from a nearby position, one field of a closed set changed, or altered.
fn mismatch(
    record: &Record,
    index: u64,
    stored_hash: &icbt_merkle::Hash,
    hash_at: impl Fn(&Record, u64) -> icbt_merkle::Hash,
) -> Finding {
    // Content intact but hashed at another position: the record was moved.
    let nearby = index.saturating_sub(MOVE_SEARCH)..index + MOVE_SEARCH;
    if let Some(was) = nearby
        .into_iter()
        .find(|&i| i != index && hash_at(record, i) == *stored_hash)
    {
        return Finding::Moved { index, was };
    }
    changed_field(record, index, |candidate| {
        hash_at(candidate, index) == *stored_hash
    })
    .unwrap_or_else(|| Finding::Altered {
        index,
        id: record.id.to_string(),
    })
}

/// The one field of a closed set (action, outcome, principal kind) whose other value
/// `fits` the stored hash: the change named, where it can be. Free-text fields cannot be
/// guessed back.
fn changed_field(record: &Record, index: u64, fits: impl Fn(&Record) -> bool) -> Option<Finding> {
    let named = |field, stored: &str, leaf: &str| Finding::FieldChanged {
        index,
        id: record.id.to_string(),
        field,
        stored: stored.to_owned(),
        leaf: leaf.to_owned(),
    };
    for action in Action::ALL.into_iter().filter(|a| *a != record.action) {
        let mut candidate = record.clone();
        candidate.action = action;
        if fits(&candidate) {
            return Some(named("action", record.action.as_str(), action.as_str()));
        }
    }
    for outcome in [Outcome::Success, Outcome::Refused]
        .into_iter()
        .filter(|o| *o != record.outcome)
    {
        let mut candidate = record.clone();
        candidate.outcome = outcome;
        if fits(&candidate) {
            return Some(named("outcome", record.outcome.as_str(), outcome.as_str()));
        }
    }
    for kind in ["patient", "clinician", "system", "unknown"]
        .into_iter()
        .filter(|k| *k != record.principal_kind)
    {
        let mut candidate = record.clone();
        kind.clone_into(&mut candidate.principal_kind);
        if fits(&candidate) {
            return Some(named("principal_kind", &record.principal_kind, kind));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, Outcome};
    use crate::domain::audit::tests::sample;
    use icbt_merkle::{Checkpoint, Signer};

    struct Log {
        records: Vec<Stored>,
        checkpoints: Vec<SignedCheckpoint>,
        signer: Signer,
    }

    /// Ten records with checkpoints after 4, 7 and 10, as the sequencer writes them.
    fn log() -> Log {
        let signer = Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap();
        let mut tree = Tree::new();
        let mut records = Vec::new();
        let mut checkpoints = Vec::new();
        for i in 0..10u32 {
            let record = sample(i);
            let hash = record.leaf_hash(u64::from(i));
            tree.push(hash);
            records.push(Stored {
                content_hash: Some(record.content_hash_hex()),
                record,
                leaf_index: Some(u64::from(i)),
                leaf_hash: Some(icbt_merkle::to_hex(&hash)),
                pruned: false,
            });
            let head = Checkpoint {
                origin: crate::audit::ORIGIN.into(),
                size: tree.size(),
                root: tree.root(),
            };
            // The first was signed before the note format; the later ones are notes.
            if i == 3 {
                checkpoints.push(signer.sign_legacy(head, 1_790_000_000_000));
            } else if [6, 9].contains(&i) {
                checkpoints.push(signer.sign(head, 1_790_000_000_000).unwrap());
            }
        }
        Log {
            records,
            checkpoints,
            signer,
        }
    }

    fn verify(log: &Log, retention: &RetentionConfig) -> Report {
        let mut v = Verifier::new(
            log.checkpoints.clone(),
            vec![log.signer.public_key().to_vec()],
            retention,
            1_800_000_000_000,
        );
        for r in &log.records {
            v.feed(r);
        }
        v.finish()
    }

    fn problem(log: &Log) -> Option<Finding> {
        verify(log, &RetentionConfig::default()).problem
    }

    #[test]
    fn an_untouched_log_verifies() {
        let report = verify(&log(), &RetentionConfig::default());
        assert_eq!(report.problem, None);
        assert_eq!((report.records, report.checkpoints), (10, 3));
    }

    #[test]
    fn an_altered_record_is_named() {
        let mut l = log();
        l.records[5].record.outcome = Outcome::Refused;
        assert_eq!(
            problem(&l).map(|f| f.to_string()),
            Some(format!(
                "record 5 ({}): outcome stored as 'refused', the leaf says 'success'",
                l.records[5].record.id
            ))
        );
        let mut l = log();
        l.records[2].record.action = Action::Export;
        assert!(matches!(
            problem(&l),
            Some(Finding::FieldChanged {
                index: 2,
                field: "action",
                ..
            })
        ));
        // A free-text field cannot be guessed back: the record and its content are named.
        let mut l = log();
        l.records[5].record.principal_id = Some("someone else".into());
        assert!(matches!(
            problem(&l),
            Some(Finding::ContentChanged { index: 5, .. })
        ));
        let mut l = log();
        l.records[5].record.recorded_at_ms -= 86_400_000;
        assert!(matches!(
            problem(&l),
            Some(Finding::HeaderChanged { index: 5, .. })
        ));
        // The stored content hash, which only a pruned record relies on, is checked too.
        let mut l = log();
        l.records[6].content_hash = Some("0".repeat(64));
        assert!(matches!(
            problem(&l),
            Some(Finding::FieldChanged {
                index: 6,
                field: "content_hash",
                ..
            })
        ));
    }

    #[test]
    fn an_altered_and_rehashed_record_is_caught_by_its_checkpoint() {
        let mut l = log();
        l.records[5].record.principal_id = Some("someone else".into());
        l.records[5].leaf_hash = Some(icbt_merkle::to_hex(&l.records[5].record.leaf_hash(5)));
        l.records[5].content_hash = Some(l.records[5].record.content_hash_hex());
        assert_eq!(
            problem(&l),
            Some(Finding::RootMismatch {
                size: 7,
                from: 4,
                last: 6
            })
        );
    }

    #[test]
    fn a_deleted_record_is_named() {
        let mut l = log();
        l.records.remove(2);
        assert_eq!(problem(&l), Some(Finding::Missing { index: 2 }));
    }

    #[test]
    fn deleting_the_newest_records_is_caught() {
        let mut l = log();
        l.records.truncate(8);
        assert_eq!(problem(&l), Some(Finding::Truncated { size: 10, have: 8 }));
    }

    #[test]
    fn swapped_records_are_named() {
        let mut l = log();
        l.records.swap(3, 4);
        l.records[3].leaf_index = Some(3);
        l.records[4].leaf_index = Some(4);
        assert_eq!(problem(&l), Some(Finding::Moved { index: 3, was: 4 }));
    }

    #[test]
    fn an_inserted_record_is_named() {
        let mut l = log();
        let forged = sample(99);
        l.records.insert(
            4,
            Stored {
                leaf_hash: Some(icbt_merkle::to_hex(&forged.leaf_hash(4))),
                content_hash: Some(forged.content_hash_hex()),
                record: forged,
                leaf_index: Some(4),
                pruned: false,
            },
        );
        for (i, r) in l.records.iter_mut().enumerate().skip(5) {
            r.leaf_index = Some(i as u64);
        }
        // The forged record fits its own hash; the first genuine one after it does not.
        assert_eq!(problem(&l), Some(Finding::Moved { index: 5, was: 4 }));
        // With every later record re-hashed too, the covering checkpoint catches it.
        for (i, r) in l.records.iter_mut().enumerate().skip(5) {
            r.leaf_hash = Some(icbt_merkle::to_hex(&r.record.leaf_hash(i as u64)));
        }
        assert_eq!(
            problem(&l),
            Some(Finding::RootMismatch {
                size: 7,
                from: 4,
                last: 6
            })
        );
        // Appended at the end instead: no checkpoint covers it.
        let mut l = log();
        let forged = sample(99);
        l.records.push(Stored {
            leaf_hash: Some(icbt_merkle::to_hex(&forged.leaf_hash(10))),
            content_hash: Some(forged.content_hash_hex()),
            record: forged,
            leaf_index: Some(10),
            pruned: false,
        });
        assert_eq!(problem(&l), Some(Finding::Uncovered { index: 10 }));
    }

    #[test]
    fn checkpoints_kept_outside_catch_truncation_and_rewrites() {
        let l = log();
        let kept = l.checkpoints[1].checkpoint.clone(); // size 7
        let retention = RetentionConfig::default();
        let outside = |log: &Log, heads: Vec<Checkpoint>| {
            let mut v = Verifier::new(
                log.checkpoints.clone(),
                vec![log.signer.public_key().to_vec()],
                &retention,
                0,
            )
            .with_outside(heads);
            for r in &log.records {
                v.feed(r);
            }
            v.finish().problem
        };
        assert_eq!(outside(&l, vec![kept.clone()]), None);
        // Cut back to 5 records, with the checkpoints past them: the log alone still
        // verifies, the kept checkpoint does not let it.
        let mut cut = log();
        cut.records.truncate(4);
        cut.checkpoints.truncate(1);
        assert_eq!(problem(&cut), None);
        assert_eq!(
            outside(&cut, vec![kept.clone()]),
            Some(Finding::TruncatedBelowOutside { size: 7, have: 4 })
        );
        // Another history of the same size.
        let mut other = kept;
        other.root = icbt_merkle::leaf_hash(b"another history");
        assert_eq!(
            outside(&l, vec![other]),
            Some(Finding::ForkedFromOutside { size: 7 })
        );
    }

    #[test]
    fn a_cached_head_that_disagrees_with_the_records_is_named() {
        let l = log();
        let retention = RetentionConfig::default();
        let finish = |head: &Tree| {
            let mut v = Verifier::new(
                l.checkpoints.clone(),
                vec![l.signer.public_key().to_vec()],
                &retention,
                0,
            );
            for r in &l.records {
                v.feed(r);
            }
            v.finish_with_head((head.size(), Some(head))).problem
        };
        let mut right = Tree::new();
        for r in &l.records {
            right.push(icbt_merkle::from_hex(r.leaf_hash.as_deref().unwrap()).unwrap());
        }
        assert_eq!(finish(&right), None);
        let mut longer = right.clone();
        longer.push(icbt_merkle::leaf_hash(b"x"));
        assert_eq!(
            finish(&longer),
            Some(Finding::HeadMismatch {
                head_size: 11,
                tree_size: 10
            })
        );
    }

    #[test]
    fn a_forged_checkpoint_is_caught() {
        let mut l = log();
        l.checkpoints[1].signature[10] ^= 1;
        assert!(matches!(
            problem(&l),
            Some(Finding::BadSignature { size: 7, .. })
        ));
    }

    #[test]
    fn legacy_checkpoints_verify_and_their_time_is_bound_but_a_notes_is_not() {
        let l = log();
        assert_eq!(l.checkpoints[0].format, icbt_merkle::Format::Legacy);
        assert_eq!(problem(&l), None);
        let mut moved = log();
        moved.checkpoints[0].signed_at_ms += 1;
        assert!(matches!(
            problem(&moved),
            Some(Finding::BadSignature { size: 4, .. })
        ));
        // A note signs origin, size and root only: its time is the gateway's say-so.
        let mut later = log();
        later.checkpoints[2].signed_at_ms += 1;
        assert_eq!(problem(&later), None);
    }

    #[test]
    fn pruning_keeps_the_log_verifiable_but_only_after_retention() {
        let mut l = log();
        l.records[1].pruned = true;
        l.records[1].record.patient = None;
        l.records[1].record.principal_id = None;
        assert_eq!(problem(&l), Some(Finding::PrunedEarly { index: 1 }));
        let retention = RetentionConfig {
            access: Some(30),
            ..RetentionConfig::default()
        };
        assert_eq!(l.records[1].record.action, Action::Read);
        assert_eq!(verify(&l, &retention).problem, None);
    }
    /// `pruned` applied to record `i` of `l`, as retention does it.
    fn prune(l: &mut Log, i: usize) {
        let r = &mut l.records[i];
        r.pruned = true;
        let kept = &mut r.record;
        kept.outcome = Outcome::Success;
        kept.principal_kind = String::new();
        kept.principal_id = None;
        kept.principal_organisation = None;
        kept.issuer = None;
        kept.client_id = None;
        kept.token_jti = None;
        kept.resource_type = String::new();
        kept.episode_id = None;
        kept.patient = None;
        kept.request_id = None;
        kept.source = None;
    }

    fn thirty_days() -> RetentionConfig {
        RetentionConfig {
            access: Some(30),
            ..RetentionConfig::default()
        }
    }

    #[test]
    fn a_pruned_records_time_and_action_stay_bound() {
        let mut l = log();
        prune(&mut l, 8);
        assert_eq!(verify(&l, &thirty_days()).problem, None);
        // Hidden by moving it back past retention: its header no longer gives its leaf.
        let mut hidden = log();
        hidden.records[8].record.recorded_at_ms = 1_700_000_000_000;
        prune(&mut hidden, 8);
        assert!(matches!(
            verify(&hidden, &thirty_days()).problem,
            Some(Finding::HeaderChanged { index: 8, .. })
        ));
        // A read turned into an export after pruning: named.
        let mut l = log();
        prune(&mut l, 8);
        l.records[8].record.action = Action::Export;
        assert!(matches!(
            verify(&l, &thirty_days()).problem,
            Some(Finding::FieldChanged {
                index: 8,
                field: "action",
                ..
            })
        ));
        // Its content hash is what is left of its content: it must stay.
        let mut l = log();
        prune(&mut l, 8);
        l.records[8].content_hash = None;
        assert!(matches!(
            verify(&l, &thirty_days()).problem,
            Some(Finding::NoContentHash { index: 8, .. })
        ));
    }

    /// `log()` as it was when its first five records were sequenced in leaf format 1,
    /// with the seal the first start of format 2 signs over them.
    fn legacy_log() -> (Log, SignedCheckpoint) {
        let mut l = log();
        let mut tree = Tree::new();
        let mut sealed = Tree::new();
        for (i, r) in l.records.iter_mut().enumerate() {
            let i = i as u64;
            if i < 5 {
                let hash = r.record.leaf_hash_v1(i);
                r.leaf_hash = Some(icbt_merkle::to_hex(&hash));
                r.content_hash = None;
                sealed.push(icbt_merkle::leaf_hash(
                    &r.record.seal_leaf_data(i, r.leaf_hash.as_deref().unwrap()),
                ));
            }
            tree.push(icbt_merkle::from_hex(r.leaf_hash.as_deref().unwrap()).unwrap());
        }
        let mut checkpoints = Vec::new();
        for size in [4, 7, 10] {
            let mut t = Tree::new();
            for r in &l.records[..size] {
                t.push(icbt_merkle::from_hex(r.leaf_hash.as_deref().unwrap()).unwrap());
            }
            let head = Checkpoint {
                origin: crate::audit::ORIGIN.into(),
                size: size as u64,
                root: t.root(),
            };
            checkpoints.push(l.signer.sign(head, 1_790_000_000_000).unwrap());
        }
        l.checkpoints = checkpoints;
        let seal = l
            .signer
            .sign(
                Checkpoint {
                    origin: crate::domain::audit::LEGACY_SEAL_ORIGIN.into(),
                    size: 5,
                    root: sealed.root(),
                },
                1_790_000_000_000,
            )
            .unwrap();
        (l, seal)
    }

    fn verify_sealed(l: &Log, seal: Option<SignedCheckpoint>) -> Option<Finding> {
        let retention = thirty_days();
        let mut v = Verifier::new(
            l.checkpoints.clone(),
            vec![l.signer.public_key().to_vec()],
            &retention,
            1_800_000_000_000,
        )
        .with_legacy_seal(seal);
        for r in &l.records {
            v.feed(r);
        }
        v.finish().problem
    }

    #[test]
    fn format_1_records_are_held_to_their_seal() {
        let (l, seal) = legacy_log();
        assert_eq!(verify_sealed(&l, Some(seal.clone())), None);
        let mut pruned = Log {
            records: l.records.clone(),
            checkpoints: l.checkpoints.clone(),
            signer: l.signer,
        };
        prune(&mut pruned, 2);
        assert_eq!(verify_sealed(&pruned, Some(seal.clone())), None);
        // A pruned format-1 record moved back in time: its leaf cannot tell, the seal can.
        pruned.records[2].record.recorded_at_ms -= 1;
        assert_eq!(
            verify_sealed(&pruned, Some(seal.clone())),
            Some(Finding::SealMismatch { last: 4 })
        );
        // Without the seal, format-1 leaves are not accepted at all.
        let l = &pruned;
        assert!(matches!(
            verify_sealed(l, None),
            Some(Finding::Unsealed {
                index: 0,
                sealed: 0,
                ..
            })
        ));
        let mut forged = seal.clone();
        forged.signature[3] ^= 1;
        assert!(matches!(
            verify_sealed(l, Some(forged)),
            Some(Finding::BadSeal { .. })
        ));
        let mut cut = pruned;
        cut.records.truncate(3);
        cut.checkpoints.clear();
        assert_eq!(
            verify_sealed(&cut, Some(seal)),
            Some(Finding::SealTruncated { size: 5, have: 3 })
        );
    }

    #[test]
    fn an_unreadable_row_is_named_with_its_field() {
        let l = log();
        let retention = RetentionConfig::default();
        let mut v = Verifier::new(
            l.checkpoints.clone(),
            vec![l.signer.public_key().to_vec()],
            &retention,
            0,
        );
        v.feed_row(&Ok(l.records[0].clone()));
        v.feed_row(&Err(Unreadable {
            leaf_index: Some(1),
            id: "\"x\"".into(),
            field: "audit_records.action",
            stored: "\"bogus\"".into(),
        }));
        assert_eq!(
            v.finish().problem.map(|f| f.to_string()),
            Some(
                "record 1 (\"x\"): action stored as \"bogus\", which the gateway never writes"
                    .into()
            )
        );
    }
}
