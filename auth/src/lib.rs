//! Authentication for the icbt-gateway.
//!
//! Owns: issuer profiles (ID-porten for patients, HelseID for personnel and systems),
//! access-token and DPoP proof validation, the verified `Principal` a request carries,
//! and the outbound HelseID client the gateway uses for its own calls.
//!
//! Must not know about: HTTP routing, storage, episodes or messages. It takes token and
//! request facts as values and returns a principal or a typed refusal.
//!
//! The validation itself lands with the authentication issue; this crate marks the
//! boundary so that nothing else grows a token parser in the meantime.
