//! ID-token verification for the hosted login (OpenID Connect Core §3.1.3.7): signature
//! with the issuer's keys, exact `iss`, our client id in `aud`, `exp`/`iat` with skew, and
//! the `nonce` this login sent.

use serde_json::{Map, Value};

use crate::error::AuthError;
use crate::jose::Jws;
use crate::token::IssuerProfile;

/// Verifies `id_token` from `profile` for `client_id` and `nonce`; returns its claims.
pub async fn verify_id_token(
    profile: &IssuerProfile,
    client_id: &str,
    nonce: &str,
    id_token: &str,
    now: i64,
) -> Result<Map<String, Value>, AuthError> {
    let jws = Jws::parse(id_token, profile.algorithms())?;
    let key = profile.keys.key_for(jws.header_str("kid"), jws.alg).await?;
    jws.verify_with(&key)?;
    let claims = jws.claims;
    if claims.get("iss").and_then(Value::as_str) != Some(profile.issuer.as_str()) {
        return Err(AuthError::UnknownIssuer);
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == client_id,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(client_id)),
        _ => false,
    };
    if !audience_ok {
        return Err(AuthError::AudienceMismatch);
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(AuthError::MissingClaim("exp"))?;
    if now >= exp + profile.skew() {
        return Err(AuthError::Expired);
    }
    if claims
        .get("iat")
        .and_then(Value::as_i64)
        .is_some_and(|iat| iat > now + profile.skew())
    {
        return Err(AuthError::IssuedInFuture);
    }
    if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
        return Err(AuthError::MissingClaim("nonce"));
    }
    Ok(claims)
}
