//! The gateway's own rules and records, apart from HTTP and storage: clinics and episodes
//! with their life cycle, who takes part in an episode, which kinds of message there are
//! and who may send each, and how attachments are named. Handlers ask these; storage
//! keeps what they decide and has no rules of its own about content.

pub mod attachments;
pub mod audit;
pub mod authz;
pub mod episode;
pub mod messages;
pub mod participants;

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds: the clock every record is stamped with.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
