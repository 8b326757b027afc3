//! The application: registered handlers, a configuration, and every listener running in one
//! tokio process until SIGINT or SIGTERM.
//!
//! ```no_run
//! use checkpoint::prelude::*;
//! use checkpoint::{App, config::Config};
//!
//! struct Orders;
//!
//! #[checkpoint_handler(max_retries = 3, name = "orders")]
//! impl Orders {
//!     fn consume(&self, order: serde_json::Value) -> Outcome {
//!         Outcome::ack(order["id"].to_string(), Utc::now())
//!     }
//! }
//!
//! # async fn run() -> Result<(), checkpoint::app::AppError> {
//! let config = Config::load("checkpoint.toml")?;
//! App::builder().handler(Orders).config(config).build().await?.run().await
//! # }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::engine::Engine;
use crate::handler::Handler;
use crate::listener::{Listener, ListenerError, ListenerSpec};
use crate::store::{Store, StoreError, StoreOptions};

/// An error that stops the application from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The checkpoint database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not start.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// No configuration was given to the builder.
    #[error("no configuration: call AppBuilder::config")]
    NoConfig,
    /// A listener's task panicked or was cancelled (a bug in checkpoint: handler panics are
    /// recorded as failures).
    #[error("a listener task ended abnormally: {0}")]
    ListenerTask(String),
    /// Two handlers were registered under one name.
    #[error("two handlers are registered as `{0}`")]
    DuplicateHandler(String),
    /// The API could not listen on its address.
    #[error("cannot serve the API on {addr}: {source}")]
    Api {
        /// The configured `[api] bind`.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `[api] enabled` is true, but this build has no API: enable the crate's `api` feature,
    /// or set `[api] enabled = false`.
    #[error(
        "[api] enabled is true, but checkpoint was built without its `api` feature: enable \
         it, or set [api] enabled = false"
    )]
    ApiNotBuilt,
}

/// How long shutdown waits for the API's requests in flight.
const API_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Builds an [`App`].
#[derive(Default)]
pub struct AppBuilder {
    handlers: BTreeMap<String, Arc<dyn Handler>>,
    duplicate: Option<String>,
    config: Option<Config>,
}

impl std::fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBuilder")
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .field("config", &self.config)
            .finish()
    }
}

impl AppBuilder {
    /// Registers `handler` under its [`Handler::name`].
    pub fn handler(self, handler: impl Handler) -> Self {
        self.handler_arc(Arc::new(handler))
    }

    /// Registers a shared handler under its [`Handler::name`].
    pub fn handler_arc(mut self, handler: Arc<dyn Handler>) -> Self {
        let name = handler.name().to_owned();
        if self.handlers.insert(name.clone(), handler).is_some() {
            self.duplicate.get_or_insert(name);
        }
        self
    }

    /// Sets the configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Checks the configuration against the registered handlers, opens the database and
    /// applies pending migrations.
    pub async fn build(self) -> Result<App, AppError> {
        if let Some(name) = self.duplicate {
            return Err(AppError::DuplicateHandler(name));
        }
        let config = self.config.ok_or(AppError::NoConfig)?;
        config.check_handlers(self.handlers.keys().map(String::as_str))?;
        let store = Store::connect_with(
            &config.database.url,
            &StoreOptions {
                max_connections: config.database.pool_size,
            },
        )?;
        store.migrate().await?;
        Ok(App {
            engine: Engine::new(store),
            handlers: self.handlers,
            config,
            api: None,
        })
    }
}

/// Handlers, configuration and engine, ready to run.
pub struct App {
    engine: Engine,
    handlers: BTreeMap<String, Arc<dyn Handler>>,
    config: Config,
    /// The API's socket, once bound.
    api: Option<tokio::net::TcpListener>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl App {
    /// A builder.
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    /// The engine (for retries through the API, or tests).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The registered handler named `name`.
    pub fn handler(&self, name: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(name)
    }

    /// One listener per configured `[[listeners]]` entry, not yet running.
    pub fn listeners(&self) -> Vec<Listener> {
        self.config
            .listeners
            .iter()
            .filter_map(|l| {
                let handler = Arc::clone(self.handlers.get(&l.handler)?);
                let mut spec = ListenerSpec::new(handler, l.topic.clone(), l.group_id.clone())
                    .max_concurrency(l.max_concurrency)
                    .backoff(l.backoff)
                    .batch_size(l.batch_size)
                    .max_queued_bytes(l.max_queued_bytes)
                    .shutdown_timeout(l.shutdown_timeout)
                    .revoke_timeout(l.revoke_timeout);
                spec.default_max_retries = self.config.db_checkpoint.max_retries;
                spec.handler_timeout = l.handler_timeout;
                spec.start_from_beginning = l.start_from_beginning;
                spec.kafka = self.config.kafka.clone();
                Some(Listener::new(spec, self.engine.clone()))
            })
            .collect()
    }

    /// Binds the API's socket now (with `[api] enabled`) and returns its address, for a bind
    /// to port 0 or to fail early on a port in use; [`App::run`] binds it otherwise.
    pub async fn bind_api(&mut self) -> Result<Option<std::net::SocketAddr>, AppError> {
        if !self.config.api.enabled {
            return Ok(None);
        }
        if cfg!(not(feature = "api")) {
            return Err(AppError::ApiNotBuilt);
        }
        let addr = self.config.api.bind;
        let error = |source| AppError::Api { addr, source };
        if self.api.is_none() {
            self.api = Some(tokio::net::TcpListener::bind(addr).await.map_err(error)?);
        }
        match &self.api {
            Some(listener) => listener.local_addr().map(Some).map_err(error),
            None => Ok(None),
        }
    }

    /// Runs every listener (and, with `[api] enabled`, the API) until SIGINT or SIGTERM, then
    /// shuts them down cleanly.
    pub async fn run(self) -> Result<(), AppError> {
        self.run_until(shutdown_signal()).await
    }

    /// Runs every listener until `shutdown` completes, then shuts them down cleanly. With a
    /// `[retention]` table, old rows are pruned meanwhile (see [`crate::retention`]); a prune
    /// in progress stops after its current batch.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        let listeners = self.listeners();
        let api = match self.bind_api().await? {
            Some(addr) => Some((addr, self.api.take())),
            None => None,
        };
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        #[cfg(not(feature = "api"))]
        let serving: Option<tokio::task::JoinHandle<std::io::Result<()>>> = {
            drop((api, api_stopped));
            None
        };
        #[cfg(feature = "api")]
        let serving = match api {
            Some((addr, Some(socket))) => {
                use crate::api::{ApiState, Handlers, ListenerProbe, prometheus, router, serve};
                let probes = listeners.iter().map(ListenerProbe::of);
                let state = ApiState::new(self.engine.clone())
                    .handlers(Handlers::for_app(&self, &self.config))
                    .token(self.config.api.token.clone())
                    .metrics(prometheus())
                    .listeners(probes);
                tracing::info!(target: "checkpoint", %addr, "API, /metrics and /health/* served");
                Some(tokio::spawn(serve(socket, router(state), async {
                    let _ = api_stopped.await;
                })))
            }
            _ => None,
        };
        let (stop_pruning, pruning_stopped) = tokio::sync::watch::channel(false);
        let pruning = self.config.retention.clone().map(|retention| {
            tokio::spawn(crate::retention::run_periodically(
                self.engine.store().clone(),
                retention,
                pruning_stopped,
            ))
        });
        let result = run_listeners(listeners, shutdown).await;
        let _ = stop_pruning.send(true);
        let _ = stop_api.send(());
        if let Some(serving) = serving {
            // Requests in flight get a bounded time to finish; a client that never reads (or
            // a retry whose handler hangs) is left behind, never cancelled, and the app
            // returns.
            match tokio::time::timeout(API_DRAIN, serving).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => {
                    tracing::warn!(target: "checkpoint", %error, "the API stopped with an error");
                }
                Ok(Err(join)) => {
                    tracing::warn!(target: "checkpoint", error = %join, "the API task ended abnormally");
                }
                Err(_) => {
                    tracing::warn!(target: "checkpoint", seconds = API_DRAIN.as_secs(), "API requests still in flight at shutdown; not waiting for them");
                }
            }
        }
        if let Some(pruning) = pruning
            && let Err(join) = pruning.await
        {
            tracing::warn!(target: "checkpoint", error = %join, "the retention task ended abnormally");
        }
        result
    }
}

/// Runs `listeners` until `shutdown`, or until one of them cannot go on; then stops and
/// drains them all.
async fn run_listeners(
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        let mut stopped = stop.subscribe();
        tasks.spawn(listener.run(async move {
            let _ = stopped.recv().await;
        }));
    }
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => {}
        Some(result) = tasks.join_next() => {
            // A listener ended on its own: stop the others too and report it. A listener
            // only ends before shutdown when it cannot go on, so an `Ok` here is an error
            // too: the application must not look healthy with a listener gone.
            let _ = stop.send(());
            while tasks.join_next().await.is_some() {}
            flatten(result)?;
            return Err(AppError::ListenerTask(
                "a listener stopped before shutdown was requested".to_owned(),
            ));
        }
    }
    let _ = stop.send(());
    // Every listener drains before the first error is reported: returning early would
    // drop the others mid-shutdown.
    let mut first_error = Ok(());
    while let Some(result) = tasks.join_next().await {
        if let Err(error) = flatten(result)
            && first_error.is_ok()
        {
            first_error = Err(error);
        }
    }
    first_error
}

fn flatten(
    result: Result<Result<(), ListenerError>, tokio::task::JoinError>,
) -> Result<(), AppError> {
    match result {
        Ok(result) => result.map_err(AppError::from),
        Err(join) => Err(AppError::ListenerTask(join.to_string())),
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!(target: "checkpoint", "shutdown requested");
}
