//! The API's errors and the one place that maps them to HTTP statuses and bodies.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::bodies::ErrorBody;
use super::{MAX_BODY_BYTES, MAX_QUERY_BYTES};
use crate::engine::EngineError;
use crate::error::StoreError;

/// An API error; the only place statuses and error bodies are decided.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 404 with `message` (`event not found`, `failure not found`, `not found`).
    #[error("{0}")]
    NotFound(&'static str),
    /// 400: an invalid parameter.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 409: no handler for the row's topic and group in this process.
    #[error("no handler for topic `{topic}` and group `{group_id}` is registered in this process")]
    NoHandler {
        /// Topic of the row.
        topic: String,
        /// Consumer group of the row.
        group_id: String,
    },
    /// 409: the partition is not assigned to the listener in this process (pause and resume
    /// act on this instance's assignment only).
    #[error("partition {partition} is not assigned to listener `{listener_id}` in this process")]
    NotAssigned {
        /// The listener.
        listener_id: String,
        /// The partition.
        partition: i32,
    },
    /// 409: a bulk retry is already running in this process.
    #[error("a bulk retry is already running in this process; try again when it has answered")]
    BulkRetryRunning,
    /// 403: a browser sent a mutating request from another site (its `Origin` or
    /// `Sec-Fetch-Site`).
    #[error("cross-site request refused")]
    CrossOrigin,
    /// 405: the path exists, the method does not (the answer carries `Allow`).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: request body too large.
    #[error("request body too large (at most {MAX_BODY_BYTES} bytes)")]
    BodyTooLarge,
    /// 414: query string too long.
    #[error("query string too long (at most {MAX_QUERY_BYTES} bytes)")]
    QueryTooLong,
    /// 422: the handler failed on retry.
    #[error("{0}")]
    RetryFailed(String),
    /// 503: the database is unreachable.
    #[error("database unavailable")]
    Unavailable,
    /// 500: a bug or unexpected database error; the detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NoHandler { .. } | Self::NotAssigned { .. } | Self::BulkRetryRunning => {
                StatusCode::CONFLICT
            }
            Self::CrossOrigin => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::QueryTooLong => StatusCode::URI_TOO_LONG,
            Self::RetryFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if error.is_unavailable() {
            tracing::warn!(target: "checkpoint", %error, "API: database unavailable");
            Self::Unavailable
        } else {
            Self::Internal(error.to_string())
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::FailureNotFound(_) => Self::NotFound("failure not found"),
            EngineError::EventNotFound(_) => Self::NotFound("event not found"),
            EngineError::Store(e) => e.into(),
            // consume ran, but the database did not take its outcome in time.
            EngineError::Interrupted => Self::Unavailable,
            EngineError::Unsettled(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            tracing::error!(target: "checkpoint", error = %detail, "API: internal error");
        }
        let mut response = (
            self.status(),
            Json(ErrorBody {
                error: true,
                message: self.to_string(),
            }),
        )
            .into_response();
        if matches!(self, Self::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub(super) type ApiResult<T> = Result<T, ApiError>;
