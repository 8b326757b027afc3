//! The HTTP API: browse events and failures, retry or delete failures, Prometheus metrics and
//! an OpenAPI document. JSON always, errors included: `{"error":true,"message":"…"}`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /ping` | `PONG` (text) |
//! | `GET /health/live` | 200 `{"live":true}` while the process answers |
//! | `GET /health/ready` | 200 when the database answers and every listener has joined its group, else 503; the body says which check failed |
//! | `GET /v1/events` | array of events (`limit`, `offset`, `entity_id`, `topic`, `group_id`, `event_type`) |
//! | `GET /v1/events/{id}` | one event |
//! | `POST /v1/events/{id}/retry` | `{"acknowledged":bool}` |
//! | `GET /v1/failures` | array of failures (same parameters) |
//! | `GET /v1/failures/count` | `{"count":N}` (same filters) |
//! | `GET /v1/failures/{id}` | one failure |
//! | `DELETE /v1/failures/{id}` | `{"acknowledged":true}` |
//! | `POST /v1/failures/{id}/retry` | `{"acknowledged":bool}`, or 422 when the handler fails |
//! | `GET /metrics` | Prometheus text |
//! | `GET /openapi.json` | OpenAPI 3.0 document of these routes |
//!
//! ```no_run
//! # async fn run(engine: checkpoint::Engine) -> std::io::Result<()> {
//! use checkpoint::api::{self, ApiState};
//! let state = ApiState::new(engine).metrics(api::prometheus());
//! let listener = tokio::net::TcpListener::bind(api::DEFAULT_ADDR).await?;
//! api::serve(listener, api::router(state), checkpoint::app::shutdown_signal()).await
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use chrono::NaiveDateTime;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Map, Value, json};

use crate::engine::{Engine, EngineError, RetryOutcome};
use crate::error::StoreError;
use crate::handler::Handler;
use crate::store::{Event, Failure, ListQuery, Store};

/// Where the API listens unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9292";
/// Default page size of the list routes.
pub const DEFAULT_LIMIT: i64 = 20;
/// Largest accepted `limit`.
pub const MAX_LIMIT: i64 = 1000;
/// Largest accepted request body, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest accepted query string, in bytes.
pub const MAX_QUERY_BYTES: usize = 4 * 1024;
/// Counter of answered API requests, labelled `method`, `route` and `status`.
pub const REQUESTS_COUNTER: &str = "checkpoint_api_requests_total";

/// Finds the handler that consumes `(topic, group_id)` in this process, for the retry routes.
pub trait HandlerLookup: Send + Sync + 'static {
    /// The handler registered for `topic` and `group_id`, if any.
    fn handler_for(&self, topic: &str, group_id: &str) -> Option<Arc<dyn Handler>>;
}

impl<F> HandlerLookup for F
where
    F: Fn(&str, &str) -> Option<Arc<dyn Handler>> + Send + Sync + 'static,
{
    fn handler_for(&self, topic: &str, group_id: &str) -> Option<Arc<dyn Handler>> {
        self(topic, group_id)
    }
}

/// A [`HandlerLookup`] from a fixed map `(topic, group_id) → handler`.
#[derive(Clone, Default)]
pub struct Handlers {
    routes: HashMap<(String, String), Arc<dyn Handler>>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for ((topic, group_id), handler) in &self.routes {
            map.entry(&format_args!("{topic}/{group_id}"), &handler.name());
        }
        map.finish()
    }
}

impl Handlers {
    /// No handlers: every retry answers 409.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for messages of `topic` consumed by `group_id`.
    pub fn register(
        mut self,
        topic: impl Into<String>,
        group_id: impl Into<String>,
        handler: Arc<dyn Handler>,
    ) -> Self {
        self.routes.insert((topic.into(), group_id.into()), handler);
        self
    }
}

impl Handlers {
    /// The handlers of `app` for every listener configured in `config`: retries use the same
    /// handler as the listener of the row's topic and group.
    pub fn for_app(app: &crate::App, config: &crate::config::Config) -> Self {
        config
            .listeners
            .iter()
            .filter_map(|l| Some((l, Arc::clone(app.handler(&l.handler)?))))
            .fold(Self::new(), |handlers, (l, handler)| {
                handlers.register(l.topic.clone(), l.group_id.clone(), handler)
            })
    }
}

impl HandlerLookup for Handlers {
    fn handler_for(&self, topic: &str, group_id: &str) -> Option<Arc<dyn Handler>> {
        self.routes
            .get(&(topic.to_owned(), group_id.to_owned()))
            .cloned()
    }
}

/// Everything the API routes need. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    store: Store,
    engine: Engine,
    handlers: Arc<dyn HandlerLookup>,
    token: Option<Arc<str>>,
    metrics: Option<PrometheusHandle>,
    listeners: Arc<[ListenerProbe]>,
}

/// A running listener whose group membership `/health/ready` checks.
#[derive(Debug, Clone)]
pub struct ListenerProbe {
    /// The listener's id.
    pub listener_id: String,
    /// Its live counters (see [`Listener::stats`](crate::listener::Listener::stats)).
    pub stats: Arc<crate::listener::ListenerStats>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("store", &self.store)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("metrics", &self.metrics.is_some())
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// State over `engine` and its store: no handlers (retries answer 409), no token, no
    /// metrics (`/metrics` answers 404).
    pub fn new(engine: Engine) -> Self {
        Self {
            store: engine.store().clone(),
            engine,
            handlers: Arc::new(Handlers::new()),
            token: None,
            metrics: None,
            listeners: Arc::new([]),
        }
    }

    /// The listeners `/health/ready` waits for (none: readiness is the database alone, as in
    /// `checkpoint api`).
    pub fn listeners(mut self, listeners: impl IntoIterator<Item = ListenerProbe>) -> Self {
        self.listeners = listeners.into_iter().collect();
        self
    }

    /// Sets the handlers the retry routes use.
    pub fn handlers(mut self, handlers: impl HandlerLookup) -> Self {
        self.handlers = Arc::new(handlers);
        self
    }

    /// Requires `Authorization: Bearer <token>` on POST and DELETE (an empty token or `None`
    /// requires nothing).
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty()).map(Arc::from);
        self
    }

    /// Serves `GET /metrics` from `handle` (see [`prometheus`]).
    pub fn metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }
}

/// The process-wide Prometheus recorder, installed on first call. When another `metrics`
/// recorder is already installed, a detached (empty) handle is returned and a warning logged.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => handle,
            Err(error) => {
                tracing::warn!(target: "checkpoint", %error, "could not install the Prometheus recorder");
                PrometheusBuilder::new().build_recorder().handle()
            }
        })
        .clone()
}

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
            Self::NoHandler { .. } => StatusCode::CONFLICT,
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
            Json(json!({"error": true, "message": self.to_string()})),
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

type ApiResult<T> = Result<T, ApiError>;

/// A row id from the path: a non-negative integer, else 400.
#[derive(Debug, Clone, Copy)]
struct Id(i64);

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

/// `limit`, `offset` and the exact-match filters from the query string.
#[derive(Debug)]
struct Listing(ListQuery);

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

/// The API router over `state`.
pub fn router(state: ApiState) -> Router {
    let auth_state = state.clone();
    Router::new()
        .route("/ping", get(ping))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .route("/v1/events", get(list_events))
        .route("/v1/events/{id}", get(get_event))
        .route("/v1/events/{id}/retry", post(retry_event))
        .route("/v1/failures", get(list_failures))
        .route("/v1/failures/count", get(count_failures))
        .route("/v1/failures/{id}", get(get_failure).delete(delete_failure))
        .route("/v1/failures/{id}/retry", post(retry_failure))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(auth_state, guard))
        .layer(middleware::from_fn(count_request))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes the requests in
/// flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Size limits and the bearer token, before routing.
async fn guard(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if let Err(error) = check(&state, &request) {
        return error.into_response();
    }
    next.run(request).await
}

fn check(state: &ApiState, request: &Request) -> ApiResult<()> {
    let (method, headers) = (request.method(), request.headers());
    if request
        .uri()
        .query()
        .is_some_and(|q| q.len() > MAX_QUERY_BYTES)
    {
        return Err(ApiError::QueryTooLong);
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|l| l > MAX_BODY_BYTES as u64) {
        return Err(ApiError::BodyTooLarge);
    }
    let mutating = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if let (true, Some(token)) = (mutating, &state.token) {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, given)| given.trim());
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts every answered request in [`REQUESTS_COUNTER`].
async fn count_request(request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    metrics::counter!(
        REQUESTS_COUNTER,
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

async fn not_found() -> ApiError {
    ApiError::NotFound("not found")
}

async fn ping() -> &'static str {
    "PONG"
}

/// How long `/health/ready` waits for the database.
const READY_DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The body of `/health/live`.
#[derive(Debug, serde::Serialize)]
struct Liveness {
    live: bool,
}

async fn live() -> Json<Liveness> {
    Json(Liveness { live: true })
}

/// The body of `/health/ready`.
#[derive(Debug, serde::Serialize)]
struct Readiness {
    ready: bool,
    database: Check,
    listeners: Vec<ListenerReadiness>,
}

/// One check: passed, or why not.
#[derive(Debug, serde::Serialize)]
struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, serde::Serialize)]
struct ListenerReadiness {
    listener_id: String,
    joined: bool,
    assigned_partitions: usize,
    /// Why a listener has not joined, often: a broker unreachable, a TLS certificate refused.
    kafka_error: Option<String>,
}

async fn ready(State(state): State<ApiState>) -> (StatusCode, Json<Readiness>) {
    // In a task of its own, which runs to its end even when the probe stops waiting: a query
    // dropped mid-flight would hand a broken connection back to the pool.
    let store = state.store.clone();
    let ping = tokio::spawn(async move { store.ping().await });
    let database = match tokio::time::timeout(READY_DB_TIMEOUT, ping).await {
        Ok(Ok(Ok(()))) => Check {
            ok: true,
            error: None,
        },
        Ok(Ok(Err(error))) => Check {
            ok: false,
            error: Some(error.to_string()),
        },
        Ok(Err(join)) => Check {
            ok: false,
            error: Some(format!("the check ended abnormally: {join}")),
        },
        Err(_) => Check {
            ok: false,
            error: Some(format!("no answer within {READY_DB_TIMEOUT:?}")),
        },
    };
    let listeners: Vec<ListenerReadiness> = state
        .listeners
        .iter()
        .map(|probe| {
            let stats = probe.stats.snapshot();
            ListenerReadiness {
                listener_id: probe.listener_id.clone(),
                joined: stats.joined,
                assigned_partitions: stats.assigned_partitions,
                kafka_error: probe.stats.last_client_error(),
            }
        })
        .collect();
    let ready = database.ok && listeners.iter().all(|l| l.joined);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            database,
            listeners,
        }),
    )
}

async fn metrics_text(State(state): State<ApiState>) -> ApiResult<Response> {
    let handle = state.metrics.ok_or(ApiError::NotFound("not found"))?;
    handle.run_upkeep();
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response())
}

async fn list_events(
    State(state): State<ApiState>,
    Listing(query): Listing,
) -> ApiResult<Json<Value>> {
    let rows = state.store.list_events(&query).await?;
    Ok(Json(Value::Array(rows.iter().map(event_json).collect())))
}

async fn get_event(State(state): State<ApiState>, Id(id): Id) -> ApiResult<Json<Value>> {
    let row = state
        .store
        .get_event(id)
        .await?
        .ok_or(ApiError::NotFound("event not found"))?;
    Ok(Json(event_json(&row)))
}

async fn retry_event(State(state): State<ApiState>, Id(id): Id) -> ApiResult<Json<Value>> {
    let row = state
        .store
        .get_event(id)
        .await?
        .ok_or(ApiError::NotFound("event not found"))?;
    let handler = handler_for(&state, &row.topic, &row.group_id)?;
    let outcome = state.engine.retry_event(handler.as_ref(), id).await?;
    retried(outcome)
}

async fn list_failures(
    State(state): State<ApiState>,
    Listing(query): Listing,
) -> ApiResult<Json<Value>> {
    let rows = state.store.list_failures(&query).await?;
    Ok(Json(Value::Array(rows.iter().map(failure_json).collect())))
}

async fn count_failures(
    State(state): State<ApiState>,
    Listing(query): Listing,
) -> ApiResult<Json<Value>> {
    let count = state.store.count_failures(&query).await?;
    Ok(Json(json!({ "count": count })))
}

async fn get_failure(State(state): State<ApiState>, Id(id): Id) -> ApiResult<Json<Value>> {
    let row = state
        .store
        .get_failure(id)
        .await?
        .ok_or(ApiError::NotFound("failure not found"))?;
    Ok(Json(failure_json(&row)))
}

async fn delete_failure(State(state): State<ApiState>, Id(id): Id) -> ApiResult<Json<Value>> {
    if state.store.delete_failure(id).await? {
        Ok(Json(json!({ "acknowledged": true })))
    } else {
        Err(ApiError::NotFound("failure not found"))
    }
}

async fn retry_failure(State(state): State<ApiState>, Id(id): Id) -> ApiResult<Json<Value>> {
    let row = state
        .store
        .get_failure(id)
        .await?
        .ok_or(ApiError::NotFound("failure not found"))?;
    let handler = handler_for(&state, &row.topic, &row.group_id)?;
    let outcome = state.engine.retry_failure(handler.as_ref(), id).await?;
    retried(outcome)
}

fn handler_for(state: &ApiState, topic: &str, group_id: &str) -> ApiResult<Arc<dyn Handler>> {
    state
        .handlers
        .handler_for(topic, group_id)
        .ok_or_else(|| ApiError::NoHandler {
            topic: topic.to_owned(),
            group_id: group_id.to_owned(),
        })
}

fn retried(outcome: RetryOutcome) -> ApiResult<Json<Value>> {
    match outcome {
        RetryOutcome::Failed(error) => Err(ApiError::RetryFailed(error.message().to_owned())),
        other => Ok(Json(json!({ "acknowledged": other.acknowledged() }))),
    }
}

/// RFC 3339 UTC with milliseconds and `Z`, or null.
fn timestamp(t: Option<NaiveDateTime>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(t.and_utc().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
    })
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Inserts `payload` and `payload_encoding`: parsed JSON, else UTF-8 text, else base64.
fn put_payload(object: &mut Map<String, Value>, payload: &[u8]) {
    let (value, encoding) = if let Ok(value) = serde_json::from_slice::<Value>(payload) {
        (value, "json")
    } else if let Ok(text) = std::str::from_utf8(payload) {
        (Value::String(text.to_owned()), "utf8")
    } else {
        (Value::String(base64(payload)), "base64")
    };
    object.insert("payload".into(), value);
    object.insert("payload_encoding".into(), Value::String(encoding.into()));
}

/// Inserts `key` (UTF-8 text, or base64 with `key_encoding: "base64"`), null when absent.
fn put_key(object: &mut Map<String, Value>, key: Option<&[u8]>) {
    let value = match key.map(std::str::from_utf8) {
        None => Value::Null,
        Some(Ok(text)) => Value::String(text.to_owned()),
        Some(Err(_)) => {
            object.insert("key_encoding".into(), Value::String("base64".into()));
            Value::String(base64(key.unwrap_or_default()))
        }
    };
    object.insert("key".into(), value);
}

#[allow(clippy::too_many_arguments)]
fn common(
    id: i64,
    topic: &str,
    group_id: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    entity_id: Option<&str>,
    event_time: Option<NaiveDateTime>,
    event_type: Option<&str>,
    event_version: Option<&str>,
    checksum: &str,
    payload: &[u8],
    created_at: Option<NaiveDateTime>,
) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("id".into(), json!(id));
    o.insert("topic".into(), json!(topic));
    o.insert("group_id".into(), json!(group_id));
    o.insert("partition".into(), json!(partition));
    o.insert("offset".into(), json!(offset));
    put_key(&mut o, key);
    o.insert("entity_id".into(), json!(entity_id));
    o.insert("event_time".into(), timestamp(event_time));
    o.insert("event_type".into(), json!(event_type));
    o.insert("event_version".into(), json!(event_version));
    o.insert("checksum".into(), json!(checksum));
    put_payload(&mut o, payload);
    o.insert("created_at".into(), timestamp(created_at));
    o
}

/// The JSON of an event.
pub fn event_json(e: &Event) -> Value {
    Value::Object(common(
        e.id,
        &e.topic,
        &e.group_id,
        e.partition,
        e.offset,
        e.key.as_deref(),
        e.entity_id.as_deref(),
        e.event_time,
        e.event_type.as_deref(),
        e.event_version.as_deref(),
        &e.checksum,
        &e.payload,
        e.created_at,
    ))
}

/// The JSON of a failure: the event fields plus metadata, error_class, error_message,
/// error_backtrace (array) and attempts.
pub fn failure_json(f: &Failure) -> Value {
    let mut o = common(
        f.id,
        &f.topic,
        &f.group_id,
        f.partition,
        f.offset,
        f.key.as_deref(),
        f.entity_id.as_deref(),
        f.event_time,
        f.event_type.as_deref(),
        f.event_version.as_deref(),
        &f.checksum,
        &f.payload,
        f.created_at,
    );
    let metadata = serde_json::from_str::<Value>(&f.metadata)
        .unwrap_or_else(|_| Value::String(f.metadata.clone()));
    let backtrace = match serde_json::from_str::<Value>(&f.error_backtrace) {
        Ok(Value::Array(lines)) => Value::Array(lines),
        _ if f.error_backtrace.is_empty() => Value::Array(Vec::new()),
        _ => Value::Array(vec![Value::String(f.error_backtrace.clone())]),
    };
    o.insert("metadata".into(), metadata);
    o.insert("error_class".into(), json!(f.error_class));
    o.insert("error_message".into(), json!(f.error_message));
    o.insert("error_backtrace".into(), backtrace);
    o.insert("attempts".into(), json!(f.attempts));
    Value::Object(o)
}

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

/// The OpenAPI 3.0 document served at `/openapi.json`.
pub fn openapi_document() -> Value {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        })
    };
    let ok = |description: &str, schema: Value| json!({"description": description, "content": {"application/json": {"schema": schema}}});
    let id = json!({
        "name": "id", "in": "path", "required": true,
        "schema": {"type": "integer", "format": "int64", "minimum": 0}
    });
    let filter = |name: &str| {
        json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"},
               "description": format!("exact match on {name}")})
    };
    let paging = [
        json!({"name": "limit", "in": "query", "required": false,
               "schema": {"type": "integer", "minimum": 0, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}}),
        json!({"name": "offset", "in": "query", "required": false,
               "schema": {"type": "integer", "minimum": 0, "default": 0}}),
    ];
    let filters = vec![
        filter("entity_id"),
        filter("topic"),
        filter("group_id"),
        filter("event_type"),
    ];
    let list_params: Vec<Value> = paging.iter().chain(&filters).cloned().collect();
    let schema_ref = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let array_of = |name: &str| json!({"type": "array", "items": schema_ref(name)});
    let auth = json!([{"bearer": []}, {}]);
    let ack = ok("retried or deleted", schema_ref("Acknowledged"));
    let timestamp = json!({"type": "string", "format": "date-time", "nullable": true,
                           "example": "2026-11-27T12:30:45.123Z"});
    let event_properties = json!({
        "id": {"type": "integer", "format": "int64"},
        "topic": {"type": "string"},
        "group_id": {"type": "string"},
        "partition": {"type": "integer", "format": "int32"},
        "offset": {"type": "integer", "format": "int64"},
        "key": {"type": "string", "nullable": true},
        "key_encoding": {"type": "string", "enum": ["base64"],
                         "description": "present when the key is not UTF-8"},
        "entity_id": {"type": "string", "nullable": true},
        "event_time": timestamp,
        "event_type": {"type": "string", "nullable": true},
        "event_version": {"type": "string", "nullable": true},
        "checksum": {"type": "string"},
        "payload": {"description": "the parsed JSON payload, or its text, or its base64"},
        "payload_encoding": {"type": "string", "enum": ["json", "utf8", "base64"]},
        "created_at": timestamp,
    });
    let mut failure_properties = event_properties.clone();
    if let Value::Object(p) = &mut failure_properties {
        p.insert("metadata".into(), json!({"type": "object"}));
        p.insert("error_class".into(), json!({"type": "string"}));
        p.insert("error_message".into(), json!({"type": "string"}));
        p.insert(
            "error_backtrace".into(),
            json!({"type": "array", "items": {"type": "string"}}),
        );
        p.insert("attempts".into(), json!({"type": "integer"}));
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "checkpoint API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Events and failures checkpointed by checkpoint. Every error is \
                            {\"error\":true,\"message\":\"…\"}."
        },
        "paths": {
            "/health/live": {"get": {
                "summary": "liveness: the process answers",
                "responses": {"200": {"description": "alive",
                    "content": {"application/json": {"schema": {"type": "object",
                        "properties": {"live": {"type": "boolean"}}}}}}}
            }},
            "/health/ready": {"get": {
                "summary": "readiness: the database answers and every listener has joined its group",
                "responses": {
                    "200": {"description": "ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}},
                    "503": {"description": "not ready; the body says which check failed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}}
                }
            }},
            "/ping": {"get": {
                "summary": "liveness",
                "responses": {"200": {"description": "PONG",
                    "content": {"text/plain": {"schema": {"type": "string", "example": "PONG"}}}}}
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "Prometheus text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "404": error("metrics are not enabled")
                }
            }},
            "/openapi.json": {"get": {
                "summary": "this document",
                "responses": {"200": ok("OpenAPI 3.0 document", json!({"type": "object"}))}
            }},
            "/v1/events": {"get": {
                "summary": "list events, newest event_time first (NULLs last)",
                "parameters": list_params,
                "responses": {
                    "200": ok("events", array_of("Event")),
                    "400": error("invalid parameter"),
                    "503": error("database unavailable")
                }
            }},
            "/v1/events/{id}": {"get": {
                "summary": "one event",
                "parameters": [id],
                "responses": {
                    "200": ok("the event", schema_ref("Event")),
                    "400": error("invalid id"),
                    "404": error("event not found"),
                    "503": error("database unavailable")
                }
            }},
            "/v1/events/{id}/retry": {"post": {
                "summary": "re-run a stored event through its registered handler",
                "parameters": [id],
                "security": auth,
                "responses": {
                    "200": ack,
                    "400": error("invalid id"),
                    "401": error("missing or invalid bearer token"),
                    "404": error("event not found"),
                    "409": error("no handler for the event's topic and group in this process"),
                    "422": error("the handler failed"),
                    "503": error("database unavailable")
                }
            }},
            "/v1/failures": {"get": {
                "summary": "list failures, newest event_time first (NULLs last)",
                "parameters": list_params,
                "responses": {
                    "200": ok("failures", array_of("Failure")),
                    "400": error("invalid parameter"),
                    "503": error("database unavailable")
                }
            }},
            "/v1/failures/count": {"get": {
                "summary": "number of failures matching the filters",
                "parameters": filters,
                "responses": {
                    "200": ok("the count", json!({"type": "object",
                        "properties": {"count": {"type": "integer"}}, "required": ["count"]})),
                    "400": error("invalid parameter"),
                    "503": error("database unavailable")
                }
            }},
            "/v1/failures/{id}": {
                "get": {
                    "summary": "one failure",
                    "parameters": [id],
                    "responses": {
                        "200": ok("the failure", schema_ref("Failure")),
                        "400": error("invalid id"),
                        "404": error("failure not found"),
                        "503": error("database unavailable")
                    }
                },
                "delete": {
                    "summary": "delete a failure",
                    "parameters": [id],
                    "security": auth,
                    "responses": {
                        "200": ok("deleted", schema_ref("Acknowledged")),
                        "400": error("invalid id"),
                        "401": error("missing or invalid bearer token"),
                        "404": error("failure not found"),
                        "503": error("database unavailable")
                    }
                }
            },
            "/v1/failures/{id}/retry": {"post": {
                "summary": "re-run a failure through its registered handler: ack stores the \
                            event and deletes the failure; skip deletes it; an error keeps it \
                            with one more attempt",
                "parameters": [id],
                "security": auth,
                "responses": {
                    "200": ack,
                    "400": error("invalid id"),
                    "401": error("missing or invalid bearer token"),
                    "404": error("failure not found"),
                    "409": error("no handler for the failure's topic and group in this process"),
                    "422": error("the handler failed; the failure is kept"),
                    "503": error("database unavailable")
                }
            }}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "required on POST and DELETE when a token is configured"}},
            "schemas": {
                "Readiness": {"type": "object", "required": ["ready", "database", "listeners"], "properties": {
                    "ready": {"type": "boolean"},
                    "database": {"type": "object", "properties": {
                        "ok": {"type": "boolean"}, "error": {"type": "string"}}},
                    "listeners": {"type": "array", "items": {"type": "object", "properties": {
                        "listener_id": {"type": "string"},
                        "joined": {"type": "boolean"},
                        "assigned_partitions": {"type": "integer"},
                        "kafka_error": {"type": ["string", "null"],
                            "description": "the last error librdkafka reported since the last assignment (secrets masked)"}}}}
                }},
                "Error": {"type": "object", "required": ["error", "message"], "properties": {
                    "error": {"type": "boolean", "enum": [true]},
                    "message": {"type": "string"}
                }},
                "Acknowledged": {"type": "object", "required": ["acknowledged"], "properties": {
                    "acknowledged": {"type": "boolean"}
                }},
                "Event": {"type": "object", "properties": event_properties},
                "Failure": {"type": "object", "properties": failure_properties}
            }
        }
    })
}
