//! The icbt-gateway service: HTTPS API, storage, telemetry and command line.
//!
//! Owns: the listener and its tower stack ([`stack`]), routes ([`api`]), RFC 9457 errors
//! ([`problem`]), the database ([`storage`]; no SQL anywhere else), and the domain records
//! ([`episode`]), and the tamper-evident access log ([`audit`]).
//!
//! Must not know about: token formats or FHIR (the `icbt-auth` and `icbt-fhir-mapping`
//! crates own them).
//!
//! A reader starts at [`cli::run`], which loads the configuration and calls
//! [`server::serve`] with the stack built by [`stack::build`].

pub mod api;
pub mod attachments;
pub mod audit;
pub mod authn;
pub mod cli;
pub mod devices;
pub mod episode;
pub mod event_stream;
pub mod export;
pub mod json;
pub mod login;
pub mod messaging;
pub mod problem;
pub mod push;
pub mod server;
pub mod stack;
pub mod storage;
pub mod telemetry;
pub mod tls;
