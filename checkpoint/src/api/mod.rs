//! The HTTP API: browse events and failures, retry or delete failures, Prometheus metrics and
//! an OpenAPI document. JSON always, errors included: `{"error":true,"message":"…"}`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /ping` | `PONG` (text) |
//! | `GET /health/live` | 200 `{"live":true}` while the process answers |
//! | `GET /health/ready` | 200 when the database answers and every listener has joined its group, else 503; the body says which check failed |
//! | `GET /v1/events` | array of events (`limit`, `offset`, `entity_id`, `topic`, `group_id`, `event_type`, `checksum`, `created_from`, `created_until`) |
//! | `GET /v1/events/{id}` | one event |
//! | `POST /v1/events/{id}/retry` | `{"acknowledged":bool}` |
//! | `GET /v1/failures` | array of failures (same parameters) |
//! | `GET /v1/failures/count` | `{"count":N}` (same filters) |
//! | `GET /v1/failures/{id}` | one failure |
//! | `DELETE /v1/failures/{id}` | `{"acknowledged":true}` |
//! | `POST /v1/failures/{id}/retry` | `{"acknowledged":bool}`, or 422 when the handler fails |
//! | `GET /metrics` | Prometheus text |
//! | `GET /openapi.json` | OpenAPI 3.0 document of these routes |
//! | `GET /ui` … | the web console (HTML): overview, events, failures |
//!
//! ```no_run
//! # async fn run(engine: checkpoint::Engine) -> std::io::Result<()> {
//! use checkpoint::api::{self, ApiState};
//! let state = ApiState::new(engine).metrics(api::prometheus());
//! let listener = tokio::net::TcpListener::bind(api::DEFAULT_ADDR).await?;
//! api::serve(listener, api::router(state), checkpoint::app::shutdown_signal()).await
//! # }
//! ```

mod bodies;
mod console;
mod error;
mod extract;
mod guard;
mod openapi;
mod routes;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub use self::bodies::{
    Acknowledged, BulkOutcome, Check, Count, Counters, ErrorBody, EventBody, FailureBody,
    FailureMetadataBody, KeyEncoding, ListenerBody, ListenerReadiness, Liveness, PartitionControl,
    Payload, PayloadEncoding, Readiness,
};
pub use self::error::ApiError;
pub use self::openapi::openapi_document;
use crate::engine::Engine;
use crate::handler::Handler;
use crate::store::Store;

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
    /// One bulk retry at a time: a second press would call `consume` twice per row.
    bulk_retry: Arc<tokio::sync::Semaphore>,
}

/// A running listener as the API sees it: `/health/ready` checks its group membership,
/// `/v1/listeners` shows it, and its partitions are paused and resumed through it.
#[derive(Debug, Clone)]
pub struct ListenerProbe {
    /// The listener's id.
    pub listener_id: String,
    /// Its live counters (see [`Listener::stats`](crate::listener::Listener::stats)).
    pub stats: Arc<crate::listener::ListenerStats>,
    /// Its pause switches (see [`Listener::control`](crate::listener::Listener::control)).
    pub control: Arc<crate::listener::ListenerControl>,
    /// Its settings, secrets masked; `None` leaves them out of `/v1/listeners`.
    pub settings: Option<crate::listener::ListenerSettings>,
}

impl ListenerProbe {
    /// The probe of `listener`, taken before it runs.
    pub fn of(listener: &crate::listener::Listener) -> Self {
        Self {
            listener_id: listener.listener_id().to_owned(),
            stats: listener.stats(),
            control: listener.control(),
            settings: Some(listener.settings()),
        }
    }
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
            bulk_retry: Arc::new(tokio::sync::Semaphore::new(1)),
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

/// The API router over `state`.
pub fn router(state: ApiState) -> Router {
    let auth_state = state.clone();
    Router::new()
        .route("/ping", get(routes::ping))
        .route("/health/live", get(routes::live))
        .route("/health/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics_text))
        .route("/v1/events", get(routes::list_events))
        .route("/v1/events/{id}", get(routes::get_event))
        .route("/v1/events/{id}/retry", post(routes::retry_event))
        .route("/v1/failures", get(routes::list_failures))
        .route("/v1/failures/count", get(routes::count_failures))
        .route(
            "/v1/failures/{id}",
            get(routes::get_failure).delete(routes::delete_failure),
        )
        .route("/v1/failures/{id}/retry", post(routes::retry_failure))
        .route("/v1/failures/bulk/retry", post(routes::bulk_retry))
        .route("/v1/failures/bulk/delete", post(routes::bulk_delete))
        .route("/v1/listeners", get(routes::list_listeners))
        .route(
            "/v1/listeners/{listener_id}/partitions/{partition}/pause",
            post(routes::pause_partition),
        )
        .route(
            "/v1/listeners/{listener_id}/partitions/{partition}/resume",
            post(routes::resume_partition),
        )
        .route("/openapi.json", get(openapi::serve_document))
        .merge(console::routes())
        .fallback(routes::not_found)
        // axum adds the `Allow` header to this answer.
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(auth_state, guard::guard))
        .layer(middleware::from_fn(guard::count_request))
        .layer(middleware::from_fn(guard::security_headers))
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
