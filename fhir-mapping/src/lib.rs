//! Mapping from icbt-gateway records to FHIR R4 resources and bundles.
//!
//! Owns: EpisodeOfCare, Encounter, Communication, QuestionnaireResponse and Observation
//! mapping, and the transaction bundles the exporter sends to the hospital EPJ.
//!
//! Must not know about: I/O of any kind (no HTTP, no database, no clock reads). Values in,
//! values out, so every mapping is tested without a server.
//!
//! The mappings land with the FHIR export issue; this crate marks the boundary.
