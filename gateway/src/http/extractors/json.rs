//! The JSON request-body extractor: errors are problems that name the JSON path.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use crate::http::errors::{Problem, ProblemKind};

/// A JSON body of type `T`. Refuses a wrong content type (415), an oversized body (413)
/// and malformed JSON (400 with `path`, the JSON path where reading failed, plus `line`
/// and `column`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .rsplit_once('+')
            .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !is_json(content_type) {
            return Err(Problem::new(ProblemKind::UnsupportedMediaType)
                .detail("send the body as application/json"));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| match rejection {
                BytesRejection::FailedToBufferBody(_) if rejection.status().as_u16() == 413 => {
                    Problem::new(ProblemKind::PayloadTooLarge)
                }
                _ => Problem::new(ProblemKind::MalformedJson)
                    .detail("the request body could not be read"),
            })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses a JSON document, naming the path of the first error.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        Problem::new(ProblemKind::MalformedJson)
            .detail(format!("at `{path}`: {inner}"))
            .with("path", path)
            .with("line", inner.line())
            .with("column", inner.column())
    })?;
    de.end().map_err(|e| {
        Problem::new(ProblemKind::MalformedJson)
            .detail(format!("trailing characters after the JSON value: {e}"))
            .with("path", ".")
            .with("line", e.line())
            .with("column", e.column())
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Inner {
        score: u8,
    }

    #[test]
    fn malformed_json_names_the_path() {
        let err = parse::<Outer>(br#"{"items":[{"score":1},{"score":"high"}]}"#).unwrap_err();
        assert_eq!(err.kind(), ProblemKind::MalformedJson);
        let body: serde_json::Value = serde_json::from_slice(&err_body(err)).unwrap();
        assert_eq!(body["path"], "items[1].score");
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(parse::<Inner>(br#"{"score":1} x"#).is_err());
    }

    #[test]
    fn json_media_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("application/fhir+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }

    fn err_body(p: Problem) -> Vec<u8> {
        use axum::response::IntoResponse;
        let resp = p.into_response();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes()
                .to_vec()
        })
    }
}
