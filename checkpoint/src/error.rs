//! Typed errors of the store and the engine.

use std::fmt;

/// Which database backend a URL or connection belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// SQLite, embedded (bundled library).
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

impl Backend {
    /// Lowercase name: `sqlite`, `postgres` or `mysql`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error of the checkpoint store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL is not one of `sqlite://…`, `sqlite::memory:`, `postgres://…`,
    /// `mysql://…`.
    #[error("invalid database URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given, with any password masked.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// No connection could be opened or taken from the pool (the database is down or
    /// unreachable).
    #[error("{backend} database unavailable: {message}")]
    Unavailable {
        /// Backend of the pool.
        backend: Backend,
        /// What the driver or pool said.
        message: String,
    },
    /// A query failed.
    #[error("{backend} query failed: {source}")]
    Query {
        /// Backend that ran the query.
        backend: Backend,
        /// The diesel error.
        #[source]
        source: diesel::result::Error,
    },
    /// Applying or reverting migrations failed.
    #[error("{backend} migration failed: {message}")]
    Migration {
        /// Backend the migrations ran on.
        backend: Backend,
        /// What the migration harness said.
        message: String,
    },
    /// A value is longer than its column allows.
    #[error("{field} is {len} characters long; at most {max} fit in the checkpoint tables")]
    FieldTooLong {
        /// Column name.
        field: &'static str,
        /// Length of the rejected value, in characters.
        len: usize,
        /// Maximum length.
        max: usize,
    },
}

impl StoreError {
    /// True when the error means the database could not be reached (as opposed to a query that
    /// the database rejected). Such errors are waited out, never turned into failures.
    pub fn is_unavailable(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match self {
            Self::Unavailable { .. } => true,
            Self::Query { source, .. } => matches!(
                source,
                Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
                    | Error::BrokenTransactionManager
            ),
            _ => false,
        }
    }
}

/// A `Result` whose error is a [`StoreError`].
pub type StoreResult<T> = Result<T, StoreError>;
