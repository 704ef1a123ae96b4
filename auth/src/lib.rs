//! Authentication and authorisation for the icbt-gateway.
//!
//! Owns: issuer profiles (ID-porten for patients, HelseID for personnel and systems),
//! access-token validation ([`token::Validator`], the type a reader starts from), DPoP
//! ([`dpop`]), the verified [`principal::Principal`], identifiers of people and
//! organisations ([`identity`]), the pure authorisation policy ([`policy`]) and the small
//! JOSE verifier it all rests on ([`jose`], ring underneath).
//!
//! Must not know about: HTTP routing, storage, episodes as records or messages. It takes
//! request facts as values and returns a principal or a typed refusal; the replay store it
//! needs is a trait the gateway implements on its database.

pub mod client;
pub mod dpop;
pub mod error;
pub mod http;
pub mod identity;
/// The JOSE core, shared with the envelope crate.
pub use icbt_jose as jose;
pub mod keys;
pub mod login;
pub mod policy;
pub mod principal;
pub mod token;

pub use error::AuthError;
pub use token::now_secs;
