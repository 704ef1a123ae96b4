//! The `Caller` extractor turns the request's token and DPoP proof, or its login
//! session, into a verified principal, or a problem with the RFC 6750 / RFC 9449
//! challenge. The reason goes to the log; the client gets the standard error code only.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use icbt_auth::AuthError;
use icbt_auth::principal::Authenticated;
use icbt_auth::token::RequestFacts;

use crate::http::auth::AuthContext;
use crate::http::errors::Problem;
use crate::http::state::AppState;

/// The verified caller of an API request.
#[derive(Debug, Clone)]
pub struct Caller(pub Authenticated);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(cached) = parts.extensions.get::<Caller>() {
            return Ok(cached.clone());
        }
        let auth = &state.auth;
        if !parts.headers.contains_key(header::AUTHORIZATION)
            && let Some(cookie) = super::session::session_cookie(&parts.headers)
        {
            let cookie = cookie.to_owned();
            return match super::session::session_principal(state, parts, &cookie).await {
                Ok(authenticated) => {
                    tracing::Span::current().record("principal", authenticated.principal.kind());
                    auth.admit(&authenticated)?;
                    let caller = Caller(authenticated);
                    parts.extensions.insert(caller.clone());
                    connection_authenticated(parts);
                    parts.extensions.insert(super::session::SessionId(
                        super::session::session_id_hash(&cookie),
                    ));
                    Ok(caller)
                }
                Err(error) => {
                    tracing::info!(reason = error.reason_code(), "authentication refused");
                    Err(auth.refusal(&error))
                }
            };
        }
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        let dpop: Vec<&str> = parts
            .headers
            .get_all("dpop")
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        let uri = auth.request_uri(parts);
        let facts = RequestFacts {
            authorization,
            dpop: &dpop,
            method: parts.method.as_str(),
            uri: &uri,
        };
        match auth.validator.authenticate(facts, &state.store).await {
            Ok(authenticated) => {
                auth.admit(&authenticated)?;
                let span = tracing::Span::current();
                span.record("principal", authenticated.principal.kind());
                span.record("issuer", &*authenticated.issuer);
                let caller = Caller(authenticated);
                parts.extensions.insert(caller.clone());
                connection_authenticated(parts);
                Ok(caller)
            }
            Err(error) => {
                tracing::info!(reason = error.reason_code(), "authentication refused");
                Err(auth.refusal(&error))
            }
        }
    }
}

/// The request's connection no longer counts as unauthenticated against its address.
fn connection_authenticated(parts: &Parts) {
    if let Some(info) = parts.extensions.get::<super::ConnectionInfo>() {
        info.authenticated();
    }
}

impl Caller {
    /// Refuses the request unless the token carries `scope` (a per-route requirement on
    /// top of the issuer's required scopes): 403 `insufficient-scope` with the RFC 6750
    /// challenge.
    pub fn require_scope(&self, auth: &AuthContext, scope: &str) -> Result<(), Problem> {
        if self.0.has_scope(scope) {
            return Ok(());
        }
        let error = AuthError::InsufficientScope(scope.to_owned());
        tracing::info!(reason = error.reason_code(), "authorisation refused");
        Err(auth.refusal(&error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use icbt_auth::dpop::DpopVerifier;
    use icbt_auth::policy::Rules;
    use icbt_auth::principal::{Principal, SystemClient};
    use icbt_auth::token::Validator;
    use std::sync::Arc;

    #[test]
    fn per_route_scope_is_required() {
        let auth = AuthContext::new(
            Validator::new(
                Vec::new(),
                DpopVerifier::new(vec![icbt_auth::jose::Algorithm::ES256], 60, 5, None),
            ),
            None,
            Rules::default(),
        );
        let caller = Caller(Authenticated {
            principal: Principal::System(SystemClient {
                client_id: "p".into(),
                orgnr_parent: None,
                orgnr_child: None,
            }),
            issuer: Arc::from("helseid"),
            client_id: Some("p".into()),
            scopes: vec!["nhn:icbt-gateway/api".into()],
            token_id: None,
            expires_at: i64::MAX,
            dpop_jkt: None,
        });
        assert!(caller.require_scope(&auth, "nhn:icbt-gateway/api").is_ok());
        let refused = caller
            .require_scope(&auth, "nhn:icbt-gateway/episodes.write")
            .unwrap_err()
            .into_response();
        assert_eq!(refused.status(), 403);
        let challenge = refused.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
    }
}
