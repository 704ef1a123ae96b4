//! The review reports API (auditors only): `GET /v1/audit/reports/{kind}` over a bounded
//! time range, as JSON or CSV, paged. Asking for a report is recorded like any other read
//! of the access log, before the answer is sent.

use crate::http::extractors::ApiPath;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::audit::review::{self, Kind, Row};
use crate::audit::{Access, Action};
use crate::http::audit::{auditor, record_read};
use crate::http::errors::{Problem, invalid};
use crate::http::extractors::{ApiQuery, Caller};
use crate::http::state::AppState;

/// Rows per page unless `limit` says otherwise, and the most a page may hold.
const DEFAULT_ROWS: usize = 200;
const MAX_ROWS: usize = 1_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReportQuery {
    /// Unix milliseconds, inclusive. Required.
    from_ms: Option<i64>,
    /// Unix milliseconds, exclusive. Required; at most `audit.review.max_range_days` after
    /// `from_ms`.
    to_ms: Option<i64>,
    /// `json` (default) or `csv`.
    format: Option<String>,
    /// Rows to skip: `next_after` of the previous page.
    after: Option<usize>,
    /// Rows per page, 1 to 1000; default 200.
    limit: Option<usize>,
}

/// One page of a report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReportPage {
    #[serde(flatten)]
    report: review::Report,
    /// All rows the report found; `rows` is one page of them.
    total_rows: usize,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<usize>,
}

/// `GET /v1/audit/reports/{kind}`: `off-team`, `after-hours`, `many-patients`,
/// `refusal-bursts` or `dead-letters` over `[from_ms, to_ms)`. A report that reaches the
/// time limit answers with what it found and `complete: false`.
#[utoipa::path(get, path = "/v1/audit/reports/{kind}", tag = "audit", params(("kind" = String, Path, description = "off-team, after-hours, many-patients, refusal-bursts or dead-letters"), ReportQuery), responses((status = 200, body = ReportPage, description = "JSON; `text/csv` by `format`, with the next page's `after` in `x-next-after`"), (status = 400, body = crate::http::errors::ProblemDocument, description = "an unknown report, or a missing, reversed or too long time range"), (status = 403, description = "not an auditor", body = crate::http::errors::ProblemDocument)), security(("bearer" = []), ("dpop" = []), ("session" = [])))]
pub async fn report(
    State(state): State<AppState>,
    access: Access,
    Caller(caller): Caller,
    ApiPath(kind): ApiPath<String>,
    ApiQuery(query): ApiQuery<ReportQuery>,
) -> Result<Response, Problem> {
    let scope = auditor(&state, &access, &caller).await?;
    let kind = Kind::parse(&kind).ok_or_else(|| {
        invalid(
            "kind",
            "off-team, after-hours, many-patients, refusal-bursts or dead-letters",
        )
    })?;
    let settings = &state.audit.review;
    let (from, to) = review::check_range(query.from_ms, query.to_ms, settings.max_range_ms)
        .map_err(|e| invalid(e.field, e.detail))?;
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(invalid("format", "json or csv")),
    };
    let limit = match query.limit {
        None => DEFAULT_ROWS,
        Some(n) if (1..=MAX_ROWS).contains(&n) => n,
        Some(_) => return Err(invalid("limit", format!("1 to {MAX_ROWS}"))),
    };
    let after = query.after.unwrap_or(0);
    let action = if csv {
        Action::Export
    } else {
        Action::AuditRead
    };
    record_read(
        &state,
        access.record(
            &caller,
            action,
            &format!("access-log-report:{}", kind.as_str()),
        ),
    )
    .await?;

    let scope = review::Scope::load(&state.store, &scope).await?;
    let mut report = review::run(&state.store, settings, kind, (from, to), &scope).await?;
    let total_rows = report.rows.len();
    let page: Vec<Row> = report.rows.drain(..).skip(after).take(limit).collect();
    let next_after = (after.saturating_add(limit) < total_rows).then_some(after + limit);
    report.rows = page;
    if csv {
        let mut response = (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"report.csv\"",
                ),
            ],
            review::csv(&report.rows),
        )
            .into_response();
        let headers = response.headers_mut();
        if let Some(n) = next_after
            && let Ok(v) = HeaderValue::from_str(&n.to_string())
        {
            headers.insert("x-next-after", v);
        }
        if !report.complete
            && let Ok(v) = HeaderValue::from_str(&report.scanned_to_ms.to_string())
        {
            headers.insert("x-incomplete-scanned-to-ms", v);
        }
        return Ok(response);
    }
    Ok(Json(ReportPage {
        report,
        total_rows,
        next_after,
    })
    .into_response())
}
