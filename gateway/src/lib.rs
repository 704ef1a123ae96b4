//! The icbt-gateway service: HTTPS API, storage, telemetry and command line.
//!
//! The layers, outside in:
//! - [`server`]: sockets, TLS, HTTP/1.1 and HTTP/2 on hyper, the lean event-stream path;
//! - [`http`]: the routes, their middleware, extractors, access checks, problem mapping and
//!   one module per endpoint family;
//! - [`domain`]: the gateway's own rules (episode life cycle, participants, message kinds);
//! - [`push`]: the instance's stream hub that hands new messages to open streams;
//! - [`audit`]: the tamper-evident access log (records, sequencer, verifier, FHIR view);
//! - [`export`]: the journal exporter, its own process;
//! - [`storage`]: the database, the only place with SQL; it has no rules about content.
//! - [`dev`]: dev mode's sandbox (identity providers, people, journal sink, demo); never
//!   reached in production.
//!
//! Beside them: [`cli`] (the command line), [`telemetry`] (logs, traces, metrics),
//! [`slots`] (what one principal or address may hold at once) and [`views`] (JSON shapes
//! that more than one layer writes).
//!
//! Must not know about: token formats or FHIR (the `icbt-auth` and `icbt-fhir-mapping`
//! crates own them).
//!
//! A reader starts at [`cli::run`], which loads the configuration and calls
//! [`server::serve`] with the stack built by [`http::middleware::build`].

pub mod audit;
pub mod cli;
pub mod dev;
pub mod domain;
pub mod export;
pub mod http;
pub mod push;
pub mod server;
pub mod slots;
pub mod storage;
pub mod telemetry;
pub mod views;
