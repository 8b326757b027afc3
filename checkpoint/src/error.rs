//! Typed errors of the store and the engine.

use std::fmt;

/// Which database backend a URL or connection belongs to. Serialized as its
/// [`name`](Backend::name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
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
    /// A value its column cannot hold on every backend: text with a NUL character (refused by
    /// PostgreSQL), a time outside the years 1000 to 9999 (refused by MySQL).
    #[error("{field} {reason}, which the checkpoint tables cannot hold")]
    FieldInvalid {
        /// Column name.
        field: &'static str,
        /// What is wrong with the value.
        reason: &'static str,
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
    /// True when the error means the database could not be reached or the connection was
    /// lost (as opposed to a statement the database refused). Such errors are waited out,
    /// never turned into failures.
    pub fn is_unavailable(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match self {
            Self::Unavailable { .. } => true,
            Self::Query { source, .. } => matches!(
                source,
                Error::DatabaseError(
                    DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                    _
                ) | Error::BrokenTransactionManager
            ),
            _ => false,
        }
    }

    /// True when the same statement may succeed if tried again: the database is unavailable,
    /// the transaction lost a serialization conflict, or the database raised an error diesel
    /// does not classify. The drivers behind diesel-async do not hand SQLSTATE or MySQL error
    /// numbers through diesel's error type, so deadlocks (40P01, 1213), lock waits (1205),
    /// killed connections (57P01, 1927, 2013) and SQLite BUSY/LOCKED all arrive unclassified;
    /// callers retry those a bounded number of times (see [`StoreError::is_unavailable`] for
    /// the ones waited out without bound). Constraint violations, values a column cannot
    /// hold and configuration errors are not transient.
    pub fn is_transient(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        self.is_unavailable()
            || matches!(
                self,
                Self::Query {
                    source: Error::DatabaseError(
                        DatabaseErrorKind::SerializationFailure | DatabaseErrorKind::Unknown,
                        _
                    ),
                    ..
                }
            )
    }

    /// The column a [`StoreError::FieldTooLong`] or [`StoreError::FieldInvalid`] names.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::FieldTooLong { field, .. } | Self::FieldInvalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A `Result` whose error is a [`StoreError`].
pub type StoreResult<T> = Result<T, StoreError>;

/// `error` and every cause under it on one line, joined by `: `, leaving out a cause whose
/// text the line already holds. Drivers often say only "error performing TLS handshake" at
/// the top and why underneath.
#[doc(hidden)]
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}
