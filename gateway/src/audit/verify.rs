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

use icbt_config::RetentionConfig;
use icbt_merkle::{Checkpoint, SignedCheckpoint, Tree};

use super::{Action, Outcome, Record, Stored};

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

    /// Whether a problem was found (then feeding more changes nothing).
    pub fn failed(&self) -> bool {
        self.problem.is_some()
    }

    /// The next record, in leaf-index order.
    pub fn feed(&mut self, stored: &Stored) {
        if self.problem.is_some() {
            return;
        }
        let expected = self.tree.size();
        match stored.leaf_index {
            Some(i) if i == expected => {}
            Some(i) if i > expected => {
                self.problem = Some(Finding::Missing { index: expected });
                return;
            }
            Some(i) => {
                self.problem = Some(Finding::OutOfPlace { index: i });
                return;
            }
            None => return,
        }
        let Some(stored_hash) = stored.leaf_hash.as_deref().and_then(icbt_merkle::from_hex) else {
            self.problem = Some(Finding::NoHash { index: expected });
            return;
        };
        let hash = if stored.pruned {
            let days = self.retention.days(stored.record.action.class());
            let allowed = days.is_some_and(|d| {
                stored.record.recorded_at_ms < self.now_ms - i64::from(d) * 86_400_000
            });
            if !allowed {
                self.problem = Some(Finding::PrunedEarly { index: expected });
                return;
            }
            stored_hash
        } else {
            let hash = stored.record.leaf_hash(expected);
            if hash != stored_hash {
                // Content intact but hashed at another position: the record was moved.
                let nearby = expected.saturating_sub(MOVE_SEARCH)..expected + MOVE_SEARCH;
                self.problem = Some(
                    match nearby
                        .into_iter()
                        .find(|&i| stored.record.leaf_hash(i) == stored_hash)
                    {
                        Some(was) => Finding::Moved {
                            index: expected,
                            was,
                        },
                        None => changed_field(&stored.record, expected, &stored_hash)
                            .unwrap_or_else(|| Finding::Altered {
                                index: expected,
                                id: stored.record.id.to_string(),
                            }),
                    },
                );
                return;
            }
            hash
        };
        self.tree.push(hash);
        self.check_checkpoints();
        self.check_outside();
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

/// The one field of a closed set (action, outcome, principal kind) whose other value gives
/// `stored_hash` at `index`: the change named, where it can be. Free-text fields cannot be
/// guessed back, and stay "altered".
fn changed_field(record: &Record, index: u64, stored_hash: &icbt_merkle::Hash) -> Option<Finding> {
    let named = |field, stored: &str, leaf: &str| Finding::FieldChanged {
        index,
        id: record.id.to_string(),
        field,
        stored: stored.to_owned(),
        leaf: leaf.to_owned(),
    };
    let fits = |candidate: &Record| candidate.leaf_hash(index) == *stored_hash;
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
        // A free-text field cannot be guessed back: the record is named, not the field.
        let mut l = log();
        l.records[5].record.principal_id = Some("someone else".into());
        assert!(matches!(
            problem(&l),
            Some(Finding::Altered { index: 5, .. })
        ));
    }

    #[test]
    fn an_altered_and_rehashed_record_is_caught_by_its_checkpoint() {
        let mut l = log();
        l.records[5].record.principal_id = Some("someone else".into());
        l.records[5].leaf_hash = Some(icbt_merkle::to_hex(&l.records[5].record.leaf_hash(5)));
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
}
