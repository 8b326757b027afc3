//! The checkpoint store: diesel schema, row models, migrations and every query, behind one
//! backend-neutral API chosen at runtime by the database URL.
//!
//! [`Store`] is a cheap-to-clone connection pool. [`Conn`] is one borrowed connection of any
//! backend; the engine hands it to transactional handlers as the open checkpoint transaction,
//! and it runs any diesel query built from backend-neutral tables ([`Conn::execute`],
//! [`Conn::load`]).

mod attempts;
mod bulk;
mod claims;
pub(crate) mod connect;
mod metadata;
mod migrations;
pub mod models;
mod pooled;
mod queries;
pub mod schema;
mod tls;
mod transaction;
pub(crate) mod url;
mod validate;

use diesel::migration::MigrationSource;
use diesel::sqlite::Sqlite;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::methods::{ExecuteDsl, LoadQuery};
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

pub use diesel_async::{AsyncMysqlConnection, AsyncPgConnection};

pub use self::metadata::{FailureMetadata, JsonBytes, MetadataHeader};
pub use self::migrations::{BASE_MIGRATIONS, BaseMigration};
pub use self::models::{DedupKey, Event, Failure, ListQuery, NewEvent, NewFailure, PrunedTable};
pub use self::url::DatabaseUrl;
pub(crate) use self::url::Driver;
pub use self::validate::{MAX_TEXT_LEN, check_text, check_time};
pub use crate::error::{Backend, StoreError, StoreResult};

/// The async SQLite connection (diesel's bundled SQLite driven on tokio's blocking pool).
pub type SqliteConn = SyncConnectionWrapper<diesel::SqliteConnection>;

/// Applied to every SQLite connection: WAL lets readers (the API) run beside the writer,
/// `synchronous=FULL` makes a commit durable before its Kafka offset is committed, and the busy
/// timeout makes concurrent writers queue instead of failing.
const SQLITE_FILE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON;";
const SQLITE_MEMORY_PRAGMAS: &str = "PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON;";

/// Applied to every PostgreSQL connection. Statements are prepared once per connection; a
/// generic plan cached while the checkpoint table was small (a new deployment, or statistics
/// not yet refreshed by autovacuum) stays a sequential scan as the table grows, and every
/// duplicate check becomes slower than the last. Custom plans see the table's current size.
const POSTGRES_SETUP: &str = "SET plan_cache_mode = force_custom_plan";

/// Tuning of a [`Store`]'s connection pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Maximum open connections (default 10; always 1 for `sqlite::memory:`).
    pub max_connections: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
        }
    }
}

#[derive(Clone)]
enum Pools {
    Sqlite(Pool<SqliteConn>),
    Postgres(Pool<AsyncPgConnection>),
    Mysql(Pool<AsyncMysqlConnection>),
}

/// A pool of connections to the checkpoint database. Clones share the pool.
#[derive(Clone)]
pub struct Store {
    url: DatabaseUrl,
    pools: Pools,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

/// A connection taken from a [`Store`]'s pool; it goes back when dropped.
pub struct PooledConn {
    inner: PooledInner,
}

enum PooledInner {
    Sqlite(Object<SqliteConn>),
    // Boxed: a pooled PostgreSQL connection is several times larger than the others.
    Postgres(Box<Object<AsyncPgConnection>>),
    Mysql(Object<AsyncMysqlConnection>),
}

impl PooledConn {
    /// Borrows the connection as a backend-neutral [`Conn`].
    pub fn conn(&mut self) -> Conn<'_> {
        match &mut self.inner {
            PooledInner::Sqlite(c) => Conn::Sqlite(c),
            PooledInner::Postgres(c) => Conn::Postgres(c),
            PooledInner::Mysql(c) => Conn::Mysql(c),
        }
    }

    /// Closes the connection instead of returning it to the pool: for a connection whose
    /// state is unknown (a statement or transaction interrupted mid-flight).
    pub(crate) fn discard(self) {
        match self.inner {
            PooledInner::Sqlite(c) => drop(Object::take(c)),
            PooledInner::Postgres(c) => drop(Object::take(*c)),
            PooledInner::Mysql(c) => drop(Object::take(c)),
        }
    }
}

/// One borrowed database connection of any backend.
///
/// Inside a transactional handler this is the open checkpoint transaction: whatever the
/// handler writes through it commits together with the event row, or not at all.
///
/// ```no_run
/// # async fn demo(tx: &mut checkpoint::store::Conn<'_>) -> diesel::QueryResult<()> {
/// use diesel::sql_types::Text;
/// tx.execute(diesel::sql_query("INSERT INTO shipments (order_id) VALUES ($1)")
///     .bind::<Text, _>("order-1")).await?;
/// # Ok(()) }
/// ```
/// Placeholders differ per backend in raw SQL (`$1` on PostgreSQL, `?` elsewhere); queries built
/// with diesel's DSL from your own `table!` definitions run unchanged on every backend.
#[non_exhaustive]
pub enum Conn<'c> {
    /// A SQLite connection.
    Sqlite(&'c mut SqliteConn),
    /// A PostgreSQL connection.
    Postgres(&'c mut AsyncPgConnection),
    /// A MySQL or MariaDB connection.
    Mysql(&'c mut AsyncMysqlConnection),
}

impl std::fmt::Debug for Conn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn({})", self.backend())
    }
}

/// Runs `$body` with `$c` bound to the concrete connection of whichever backend `$conn` is.
macro_rules! dispatch {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::store::Conn::Sqlite($c) => $body,
            $crate::store::Conn::Postgres($c) => $body,
            $crate::store::Conn::Mysql($c) => $body,
        }
    };
}
pub(crate) use dispatch;

impl<'c> Conn<'c> {
    /// The backend of this connection.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
            Self::Mysql(_) => Backend::Mysql,
        }
    }

    /// Reborrows for a shorter lifetime.
    pub fn reborrow(&mut self) -> Conn<'_> {
        dispatch!(self, c => Conn::from(&mut **c))
    }

    /// Runs a diesel statement (insert, update, delete, `sql_query`) and returns the number of
    /// affected rows. The query must be valid on every backend: build it with diesel's DSL.
    pub async fn execute<Q>(&mut self, query: Q) -> diesel::QueryResult<usize>
    where
        Q: ExecuteDsl<SqliteConn>
            + ExecuteDsl<AsyncPgConnection>
            + ExecuteDsl<AsyncMysqlConnection>
            + Send,
    {
        dispatch!(self, c => RunQueryDsl::execute(query, &mut **c).await)
    }

    /// [`Conn::execute`] for statements diesel-async cannot build for SQLite, such as a
    /// multi-row `insert_into(table).values(rows)` with `rows` a `Vec`: on SQLite the
    /// statement runs on the connection's blocking thread through diesel's synchronous
    /// connection, which builds it; elsewhere as `execute` does. The statement must own its
    /// data (`String`, not `&str`).
    pub async fn execute_owned<Q>(&mut self, query: Q) -> diesel::QueryResult<usize>
    where
        Q: diesel::query_dsl::methods::ExecuteDsl<diesel::SqliteConnection>
            + ExecuteDsl<AsyncPgConnection>
            + ExecuteDsl<AsyncMysqlConnection>
            + Send
            + 'static,
    {
        match self {
            Self::Sqlite(c) => {
                c.spawn_blocking(move |c| diesel::query_dsl::methods::ExecuteDsl::execute(query, c))
                    .await
            }
            Self::Postgres(c) => RunQueryDsl::execute(query, &mut **c).await,
            Self::Mysql(c) => RunQueryDsl::execute(query, &mut **c).await,
        }
    }

    /// Runs a diesel query and loads every row.
    pub async fn load<'q, Q, U>(&mut self, query: Q) -> diesel::QueryResult<Vec<U>>
    where
        Q: LoadQuery<'q, SqliteConn, U>
            + LoadQuery<'q, AsyncPgConnection, U>
            + LoadQuery<'q, AsyncMysqlConnection, U>
            + Send
            + 'q,
        U: Send,
    {
        dispatch!(self, c => RunQueryDsl::load(query, &mut **c).await)
    }

    /// Runs SQL text with no parameters (one or more statements).
    pub async fn batch_execute(&mut self, sql: &str) -> diesel::QueryResult<()> {
        dispatch!(self, c => c.batch_execute(sql).await)
    }

    /// The PostgreSQL connection, for backend-specific code.
    pub fn as_postgres(&mut self) -> Option<&mut AsyncPgConnection> {
        match self {
            Self::Postgres(c) => Some(c),
            _ => None,
        }
    }

    /// The SQLite connection, for backend-specific code.
    pub fn as_sqlite(&mut self) -> Option<&mut SqliteConn> {
        match self {
            Self::Sqlite(c) => Some(c),
            _ => None,
        }
    }

    /// The MySQL/MariaDB connection, for backend-specific code.
    pub fn as_mysql(&mut self) -> Option<&mut AsyncMysqlConnection> {
        match self {
            Self::Mysql(c) => Some(c),
            _ => None,
        }
    }

    /// The store's error for a diesel query of yours on this connection that failed.
    pub fn query_error(&self, source: diesel::result::Error) -> StoreError {
        StoreError::Query {
            backend: self.backend(),
            source,
        }
    }
}

impl<'c> From<&'c mut SqliteConn> for Conn<'c> {
    fn from(c: &'c mut SqliteConn) -> Self {
        Self::Sqlite(c)
    }
}

impl<'c> From<&'c mut AsyncPgConnection> for Conn<'c> {
    fn from(c: &'c mut AsyncPgConnection) -> Self {
        Self::Postgres(c)
    }
}

impl<'c> From<&'c mut AsyncMysqlConnection> for Conn<'c> {
    fn from(c: &'c mut AsyncMysqlConnection) -> Self {
        Self::Mysql(c)
    }
}

/// Longest time opening one connection (TCP, TLS, authentication, setup) may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens one connection of a pool.
type Open<C> = std::sync::Arc<
    dyn Fn() -> futures_util::future::BoxFuture<'static, diesel::ConnectionResult<C>> + Send + Sync,
>;

/// The pool configuration of every backend: `open` makes a connection, and `setup` (SQL, may
/// be empty) runs on it before it is handed out.
fn manager_config<C>(open: Open<C>, setup: &'static str) -> ManagerConfig<C>
where
    C: AsyncConnection + SimpleAsyncConnection + 'static,
{
    let mut config = ManagerConfig::default();
    // `Verified` would spend a round trip on every checkout; a dead connection surfaces on
    // its first query instead and is replaced.
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |_target| {
        let open = std::sync::Arc::clone(&open);
        Box::pin(async move {
            // The drivers bound the TCP connect, not a server that accepts and never answers.
            let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, open())
                .await
                .map_err(|_| {
                    diesel::ConnectionError::BadConnection(format!(
                        "no answer within {CONNECT_TIMEOUT:?}"
                    ))
                })??;
            if !setup.is_empty() {
                conn.batch_execute(setup)
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            }
            Ok(conn)
        })
    });
    config
}

/// Builds a deadpool of `$size` connections from `$manager`.
macro_rules! build_pool {
    ($manager:expr, $size:expr, $backend:expr) => {
        Pool::builder($manager)
            .max_size($size.max(1))
            .build()
            .map_err(|e| StoreError::Unavailable {
                backend: $backend,
                message: e.to_string(),
            })?
    };
}

impl Store {
    /// Opens a pool for `url` with default options. No connection is made yet.
    pub fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, &StoreOptions::default())
    }

    /// Opens a pool for `url`. No connection is made yet: see [`Store::ping`].
    pub fn connect_with(url: &str, options: &StoreOptions) -> StoreResult<Self> {
        let url = DatabaseUrl::parse(url)?;
        // mysql_async builds its TLS configuration on rustls's process-wide provider, which
        // rustls cannot choose by itself when an application also links another one. Ours,
        // unless the application installed its own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let size = options.max_connections;
        let pools = match url.driver().clone() {
            Driver::Sqlite => {
                let pragmas = if url.is_memory() {
                    SQLITE_MEMORY_PRAGMAS
                } else {
                    SQLITE_FILE_PRAGMAS
                };
                let path = url.target().to_owned();
                let open: Open<SqliteConn> = std::sync::Arc::new(move || {
                    let path = path.clone();
                    Box::pin(async move { SqliteConn::establish(&path).await })
                });
                let manager = AsyncDieselConnectionManager::new_with_config(
                    url.target(),
                    manager_config(open, pragmas),
                );
                // Every connection to `:memory:` is a separate database: keep exactly one.
                let size = if url.is_memory() { 1 } else { size };
                Pools::Sqlite(build_pool!(manager, size, Backend::Sqlite))
            }
            Driver::Postgres { tls, url: driver } => {
                let settings = std::sync::Arc::new((tls, driver));
                let open: Open<AsyncPgConnection> = std::sync::Arc::new(move || {
                    let settings = std::sync::Arc::clone(&settings);
                    Box::pin(async move { connect::postgres(&settings.0, &settings.1).await })
                });
                let manager = AsyncDieselConnectionManager::new_with_config(
                    url.target(),
                    manager_config(open, POSTGRES_SETUP),
                );
                Pools::Postgres(build_pool!(manager, size, Backend::Postgres))
            }
            Driver::Mysql { tls, url: driver } => {
                let settings = std::sync::Arc::new((tls, driver));
                let open: Open<AsyncMysqlConnection> = std::sync::Arc::new(move || {
                    let settings = std::sync::Arc::clone(&settings);
                    Box::pin(async move { connect::mysql(&settings.0, &settings.1).await })
                });
                let manager = AsyncDieselConnectionManager::new_with_config(
                    url.target(),
                    manager_config(open, ""),
                );
                Pools::Mysql(build_pool!(manager, size, Backend::Mysql))
            }
        };
        Ok(Self { url, pools })
    }

    /// The URL this store connects to.
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// The backend this store connects to.
    pub fn backend(&self) -> Backend {
        self.url.backend()
    }

    /// Takes a connection from the pool, opening one if needed.
    pub async fn conn(&self) -> StoreResult<PooledConn> {
        let unavailable = |message: String| StoreError::Unavailable {
            backend: self.backend(),
            message,
        };
        let inner = match &self.pools {
            Pools::Sqlite(p) => {
                PooledInner::Sqlite(p.get().await.map_err(|e| unavailable(e.to_string()))?)
            }
            Pools::Postgres(p) => PooledInner::Postgres(Box::new(
                p.get().await.map_err(|e| unavailable(e.to_string()))?,
            )),
            Pools::Mysql(p) => {
                PooledInner::Mysql(p.get().await.map_err(|e| unavailable(e.to_string()))?)
            }
        };
        Ok(PooledConn { inner })
    }

    /// Closes every idle pooled connection of a server database; new ones are opened on demand. After a lost
    /// connection the others are likely dead too (a server restart, a network cut, killed
    /// sessions), and a MySQL connection killed on the server is not noticed by the pool
    /// itself, which would hand it out again and again.
    pub fn drop_idle_connections(&self) {
        match &self.pools {
            // No connection to lose, and `sqlite::memory:`'s one connection is the database.
            Pools::Sqlite(_) => {}
            Pools::Postgres(p) => drop(p.retain(|_, _| false)),
            Pools::Mysql(p) => drop(p.retain(|_, _| false)),
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> StoreResult<()> {
        let mut pooled = self.conn().await?;
        let mut conn = pooled.conn();
        conn.batch_execute("SELECT 1")
            .await
            .map_err(|e| conn.query_error(e))
    }

    /// Applies every pending embedded migration; returns the versions applied.
    pub async fn migrate(&self) -> StoreResult<Vec<String>> {
        self.with_harness(|h, m| h.run_pending(m)).await
    }

    /// Reverts the most recently applied migration; returns its version, if any was applied.
    pub async fn rollback(&self) -> StoreResult<Option<String>> {
        self.with_harness(|h, m| {
            if h.applied()?.is_empty() {
                return Ok(None);
            }
            h.revert_last(m).map(Some)
        })
        .await
    }

    /// Every embedded migration with whether it is applied, oldest first.
    pub async fn migration_status(&self) -> StoreResult<Vec<(String, bool)>> {
        self.with_harness(|h, m| {
            let applied = h.applied()?;
            let all = MigrationSource::<diesel::pg::Pg>::migrations(&m)
                .map_err(|e| e as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(all
                .iter()
                .map(|mig| {
                    let version = mig.name().version().to_string();
                    let done = applied.contains(&version);
                    (mig.name().to_string(), done)
                })
                .collect())
        })
        .await
    }

    /// Runs `task` with a synchronous migration harness on a blocking thread.
    async fn with_harness<R, F>(&self, task: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn HarnessAny, EmbeddedMigrations) -> HarnessResult<R> + Send + 'static,
    {
        let backend = self.backend();
        let failed = |message: String| StoreError::Migration { backend, message };
        let unavailable = |message: String| StoreError::Unavailable { backend, message };
        match &self.pools {
            Pools::Sqlite(pool) => {
                // Through the pool, so `sqlite::memory:` migrates the database it will use.
                let mut conn = pool.get().await.map_err(|e| unavailable(e.to_string()))?;
                let outcome = conn
                    .spawn_blocking(move |c| {
                        Ok(task(&mut SqliteHarness(c), migrations::SQLITE)
                            .map_err(|e| e.to_string()))
                    })
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                outcome.map_err(failed)
            }
            // A connection of its own, opened as the pool opens them (TLS included) and taken
            // out of it: the synchronous harness owns it on a blocking thread.
            Pools::Postgres(pool) => {
                let conn = pool.get().await.map_err(|e| unavailable(e.to_string()))?;
                on_blocking_thread(Object::take(conn), backend, migrations::POSTGRES, task).await
            }
            Pools::Mysql(pool) => {
                let conn = pool.get().await.map_err(|e| unavailable(e.to_string()))?;
                on_blocking_thread(Object::take(conn), backend, migrations::MYSQL, task).await
            }
        }
    }
}

/// Runs `task` with a synchronous harness over `conn` on a blocking thread.
async fn on_blocking_thread<C, R, F>(
    conn: C,
    backend: Backend,
    migrations: EmbeddedMigrations,
    task: F,
) -> StoreResult<R>
where
    C: AsyncConnection + 'static,
    AsyncConnectionWrapper<C>: HarnessAny,
    R: Send + 'static,
    F: FnOnce(&mut dyn HarnessAny, EmbeddedMigrations) -> HarnessResult<R> + Send + 'static,
{
    let outcome = tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<C>::from(conn);
        task(&mut conn, migrations).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| StoreError::Migration {
        backend,
        message: e.to_string(),
    })?;
    outcome.map_err(|message| StoreError::Migration { backend, message })
}

type HarnessResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The three operations the store needs from diesel's `MigrationHarness`, object-safe so one
/// closure serves every backend. Versions come back as text.
pub(crate) trait HarnessAny {
    fn run_pending(&mut self, m: EmbeddedMigrations) -> HarnessResult<Vec<String>>;
    fn revert_last(&mut self, m: EmbeddedMigrations) -> HarnessResult<String>;
    fn applied(&mut self) -> HarnessResult<Vec<String>>;
}

macro_rules! impl_harness_any {
    ($ty:ty, $db:ty, |$s:ident| $conn:expr) => {
        impl HarnessAny for $ty {
            fn run_pending(&mut self, m: EmbeddedMigrations) -> HarnessResult<Vec<String>> {
                let $s = self;
                let versions = MigrationHarness::<$db>::run_pending_migrations($conn, m)?;
                Ok(versions.iter().map(ToString::to_string).collect())
            }
            fn revert_last(&mut self, m: EmbeddedMigrations) -> HarnessResult<String> {
                let $s = self;
                MigrationHarness::<$db>::revert_last_migration($conn, m).map(|v| v.to_string())
            }
            fn applied(&mut self) -> HarnessResult<Vec<String>> {
                let $s = self;
                let versions = MigrationHarness::<$db>::applied_migrations($conn)?;
                Ok(versions.iter().map(ToString::to_string).collect())
            }
        }
    };
}

struct SqliteHarness<'a>(&'a mut diesel::SqliteConnection);

impl_harness_any!(SqliteHarness<'_>, Sqlite, |s| &mut *s.0);
impl_harness_any!(
    AsyncConnectionWrapper<AsyncPgConnection>,
    diesel::pg::Pg,
    |s| s
);
impl_harness_any!(
    AsyncConnectionWrapper<AsyncMysqlConnection>,
    diesel::mysql::Mysql,
    |s| s
);
