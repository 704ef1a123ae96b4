//! The path-parameter extractor: a parameter that does not parse (an episode id that is
//! not a UUID, a segment that is not UTF-8) is a problem document (422 `invalid-field`
//! with `path` naming the parameter), not axum's plain-text 400.

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::http::errors::{Problem, ProblemKind, invalid};

/// The path parameters as `T`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let key = match e.kind() {
                    ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::InvalidUtf8InPathParam { key }
                    | ErrorKind::DeserializeError { key, .. } => key.clone(),
                    _ => "path".to_owned(),
                };
                let detail = e.body_text();
                let detail = detail.strip_prefix("Invalid URL: ").unwrap_or(&detail);
                Err(invalid(&key, detail.to_owned()))
            }
            Err(_) => Err(Problem::new(ProblemKind::Internal)),
        }
    }
}
