//! Typed request parts: a row id from the path, and a listing's paging and filters.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::error::{ApiError, ApiResult};
use super::{MAX_LIMIT, MAX_QUERY_BYTES};
use crate::store::ListQuery;

/// A row id from the path: a non-negative integer, else 400.
#[derive(Debug, Clone, Copy)]
pub(super) struct Id(pub(super) i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let invalid = || ApiError::BadRequest("invalid id: must be a non-negative integer".into());
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| invalid())?;
        match raw.parse::<i64>() {
            Ok(id) if id >= 0 && raw.bytes().all(|b| b.is_ascii_digit()) => Ok(Self(id)),
            _ => Err(invalid()),
        }
    }
}

/// A listener id and a partition from the path (`/v1/listeners/{listener_id}/partitions/
/// {partition}/…`); the id is percent-decoded (`group%2Ftopic`), the partition a non-negative
/// 32-bit integer, else 400.
#[derive(Debug, Clone)]
pub(super) struct ListenerPartition {
    pub(super) listener_id: String,
    pub(super) partition: i32,
}

impl<S: Send + Sync> FromRequestParts<S> for ListenerPartition {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((listener_id, raw)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid path: {e}")))?;
        match raw.parse::<i32>() {
            Ok(partition) if partition >= 0 && raw.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Self {
                    listener_id,
                    partition,
                })
            }
            _ => Err(ApiError::BadRequest(
                "invalid partition: must be a non-negative 32-bit integer".into(),
            )),
        }
    }
}

/// `limit`, `offset` and the exact-match filters from the query string.
#[derive(Debug)]
pub(super) struct Listing(pub(super) ListQuery);

impl<S: Send + Sync> FromRequestParts<S> for Listing {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let pairs = query_pairs(parts.uri.query().unwrap_or(""))?;
        let mut query = ListQuery::default();
        for (name, value) in pairs {
            match name.as_str() {
                "limit" => query.limit = number("limit", &value, Some(MAX_LIMIT))?,
                "offset" => query.offset = number("offset", &value, None)?,
                "entity_id" => query.entity_id = Some(filter("entity_id", value)?),
                "topic" => query.topic = Some(filter("topic", value)?),
                "group_id" => query.group_id = Some(filter("group_id", value)?),
                "event_type" => query.event_type = Some(filter("event_type", value)?),
                "checksum" => query.checksum = Some(filter("checksum", value)?),
                "created_from" => query.created_from = instant("created_from", &value)?,
                "created_until" => query.created_until = instant("created_until", &value)?,
                _ => {}
            }
        }
        Ok(Self(query))
    }
}

fn query_pairs(raw: &str) -> ApiResult<Vec<(String, String)>> {
    if raw.len() > MAX_QUERY_BYTES {
        return Err(ApiError::QueryTooLong);
    }
    let uri: axum::http::Uri = format!("/?{raw}")
        .parse()
        .map_err(|_| ApiError::BadRequest("invalid query string".into()))?;
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
            .map_err(|_| ApiError::BadRequest("invalid query string".into()))?;
    Ok(pairs)
}

/// An exact-match filter value; NUL cannot be stored, and PostgreSQL refuses it in a query.
fn filter(name: &str, value: String) -> ApiResult<String> {
    if value.contains('\0') {
        return Err(ApiError::BadRequest(format!(
            "invalid {name}: must not contain NUL"
        )));
    }
    Ok(value)
}

/// A time bound: RFC 3339 (`2026-11-30T12:00:00Z`, any offset, converted to UTC), or
/// `YYYY-MM-DDTHH:MM` / `YYYY-MM-DD HH:MM` read as UTC (what a browser's datetime field
/// sends); empty is no bound.
fn instant(name: &str, value: &str) -> ApiResult<Option<chrono::NaiveDateTime>> {
    if value.is_empty() {
        return Ok(None);
    }
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(Some(time.naive_utc()));
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(value, format).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid {name}: must be an RFC 3339 time such as 2026-11-30T12:00:00Z"
            ))
        })
}

/// A non-negative integer parameter, at most `max`.
fn number(name: &str, value: &str, max: Option<i64>) -> ApiResult<i64> {
    let bound = max.map_or_else(String::new, |m| format!(" and at most {m}"));
    let invalid =
        || ApiError::BadRequest(format!("invalid {name}: must be an integer from 0{bound}"));
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let n: i64 = value.parse().map_err(|_| invalid())?;
    match max {
        Some(m) if n > m => Err(invalid()),
        _ => Ok(n),
    }
}
