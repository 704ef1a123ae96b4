//! The access log: every access to patient data, as a tamper-evident record.
//!
//! A handler builds a [`Record`] from the request ([`Access`]) and the caller, and hands it
//! to storage with the change it describes, so both commit together (a read commits its
//! record before the data is sent). Records join an RFC 9162 Merkle tree in batches
//! (the [`sequencer`]), each batch closed by a checkpoint signed with the configured
//! Ed25519 key; [`verify`] recomputes the tree and names the first record that does not
//! fit; [`fhir`] shows a record as a FHIR `AuditEvent`. The records themselves are in
//! [`crate::domain::audit`].

pub mod fhir;
pub mod publish;
pub mod review;
pub mod sequencer;
pub mod verify;

pub use crate::domain::audit::{Access, Action, ORIGIN, Outcome, Record, Stored};
