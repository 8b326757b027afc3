//! Shared test support: a fresh, migrated database per test on each backend, and handlers
//! that count what they do.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod handlers;
pub mod kafka;
pub mod mariadb;
pub mod proxy;
pub mod tls;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use checkpoint::store::{Backend, Store};
use diesel_async::{
    AsyncConnection, AsyncMysqlConnection, AsyncPgConnection, SimpleAsyncConnection,
};

/// Where the server databases are; override with these variables.
pub const POSTGRES_URL_VAR: &str = "CHECKPOINT_TEST_POSTGRES_URL";
pub const MYSQL_URL_VAR: &str = "CHECKPOINT_TEST_MYSQL_URL";
const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";
const MYSQL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/test";

/// A migrated, empty database that belongs to one test.
pub struct TestDb {
    pub store: Store,
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    File(tempfile::TempDir),
    PostgresSchema { admin_url: String, schema: String },
    MysqlDatabase { admin_url: String, database: String },
}

fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Under CI a server that cannot be reached fails the test; elsewhere it is skipped with a
/// printed reason.
fn unreachable(backend: &str, url: &str, error: impl std::fmt::Display) -> Option<TestDb> {
    let message = format!("{backend} at {url} is unreachable ({error})");
    if std::env::var_os("CI").is_some() {
        panic!("{message}: CI requires every backend");
    }
    // Written to the stderr handle directly: libtest captures `eprintln!` of passing tests, and
    // a skip must be seen.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {message}; set {POSTGRES_URL_VAR} / {MYSQL_URL_VAR} or start the server"
    );
    None
}

impl TestDb {
    pub async fn for_backend(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => Some(Self::sqlite().await),
            Backend::Postgres => Self::postgres().await,
            Backend::Mysql => Self::mysql().await,
            _ => None,
        }
    }

    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("checkpoint.db").display());
        Self::migrated(url, Cleanup::File(dir)).await
    }

    pub async fn postgres() -> Option<Self> {
        let admin_url =
            std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| POSTGRES_DEFAULT.to_owned());
        let mut admin = match AsyncPgConnection::establish(&admin_url).await {
            Ok(conn) => conn,
            Err(e) => return unreachable("PostgreSQL", &admin_url, e),
        };
        let schema = unique_name("cp");
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .expect("create schema");
        let separator = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{separator}options=-c%20search_path%3D{schema}");
        Some(Self::migrated(url, Cleanup::PostgresSchema { admin_url, schema }).await)
    }

    pub async fn mysql() -> Option<Self> {
        let admin_url = std::env::var(MYSQL_URL_VAR).unwrap_or_else(|_| MYSQL_DEFAULT.to_owned());
        let mut admin = match AsyncMysqlConnection::establish(&admin_url).await {
            Ok(conn) => conn,
            Err(e) => return unreachable("MySQL/MariaDB", &admin_url, e),
        };
        let database = unique_name("cp");
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .expect("create database");
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin_url);
        let url = format!("{base}/{database}");
        Some(
            Self::migrated(
                url,
                Cleanup::MysqlDatabase {
                    admin_url,
                    database,
                },
            )
            .await,
        )
    }

    async fn migrated(url: String, cleanup: Cleanup) -> Self {
        let store = Store::connect(&url).expect("store");
        store.migrate().await.expect("migrate");
        Self {
            store,
            url,
            cleanup,
        }
    }

    /// Creates the table the test handlers write their side effects to.
    pub async fn create_side_effects_table(&self) {
        let mut pooled = self.store.conn().await.expect("conn");
        pooled
            .conn()
            .batch_execute("CREATE TABLE side_effects (token VARCHAR(255) NOT NULL)")
            .await
            .expect("create side_effects");
    }

    pub async fn side_effects(&self, token: &str) -> i64 {
        use diesel::prelude::*;
        let mut pooled = self.store.conn().await.expect("conn");
        let rows: Vec<i64> = pooled
            .conn()
            .load(
                handlers::side_effects::table
                    .filter(handlers::side_effects::token.eq(token.to_owned()))
                    .count(),
            )
            .await
            .expect("count side effects");
        rows[0]
    }

    pub async fn total_side_effects(&self) -> i64 {
        use diesel::prelude::*;
        let mut pooled = self.store.conn().await.expect("conn");
        let rows: Vec<i64> = pooled
            .conn()
            .load(handlers::side_effects::table.count())
            .await
            .expect("count side effects");
        rows[0]
    }

    pub async fn event_count(&self) -> i64 {
        use checkpoint::store::schema::checkpoint_events;
        use diesel::prelude::*;
        let mut pooled = self.store.conn().await.expect("conn");
        let rows: Vec<i64> = pooled
            .conn()
            .load(checkpoint_events::table.count())
            .await
            .expect("count events");
        rows[0]
    }

    /// Drops what the test created on a server (what dropping the `TestDb` does anyway,
    /// also when an assertion fails first).
    pub async fn cleanup(self) {
        drop(self);
    }
}

impl Drop for TestDb {
    /// A guard: the schema or database a test made is dropped however the test ends. The
    /// statement runs on a thread of its own, since a destructor cannot await.
    fn drop(&mut self) {
        let statement = match &self.cleanup {
            Cleanup::File(_) => return,
            // Bounded lock waits: a connection a failed test left in a transaction must not
            // hang the suite.
            Cleanup::PostgresSchema { admin_url, schema } => (
                admin_url.clone(),
                format!("SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {schema} CASCADE"),
                true,
            ),
            Cleanup::MysqlDatabase {
                admin_url,
                database,
            } => (
                admin_url.clone(),
                format!("SET SESSION lock_wait_timeout = 5; DROP DATABASE IF EXISTS {database}"),
                false,
            ),
        };
        let (admin_url, sql, postgres) = statement;
        let dropped = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if postgres {
                    if let Ok(mut admin) = AsyncPgConnection::establish(&admin_url).await {
                        let _ = admin.batch_execute(&sql).await;
                    }
                } else if let Ok(mut admin) = AsyncMysqlConnection::establish(&admin_url).await {
                    let _ = admin.batch_execute(&sql).await;
                }
            });
        });
        let _ = dropped.join();
    }
}

/// Generates one `#[tokio::test]` per backend for each listed `async fn name(db: TestDb)`:
/// `sqlite::name`, `postgres::name`, `mysql::name`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::support::TestDb::sqlite().await;
                    super::$name(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::support::TestDb::postgres().await {
                        super::$name(db).await;
                    }
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::support::TestDb::mysql().await {
                        super::$name(db).await;
                    }
                }
            )*
        }
    };
}
