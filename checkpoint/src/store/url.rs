//! Database URLs: which backend, and what to hand its driver.

use std::fmt;

use super::connect;
use super::tls::{MysqlTls, PgTls};
use crate::error::{Backend, StoreError};

/// A parsed database URL.
///
/// | form | meaning |
/// |---|---|
/// | `sqlite://relative/path.db` | SQLite file relative to the working directory |
/// | `sqlite:///absolute/path.db` | SQLite file at an absolute path |
/// | `sqlite::memory:` | private in-memory SQLite database (one connection) |
/// | `postgres://user@host:port/db` (or `postgresql://`) | PostgreSQL |
/// | `mysql://user:password@host:port/db` (or `mariadb://`) | MySQL or MariaDB |
///
/// Server URLs take TLS parameters. PostgreSQL: libpq's `sslmode` (`disable`, `prefer` (the
/// default), `require`, `verify-ca`, `verify-full`), `sslrootcert` (a PEM file, or `system`),
/// `sslcert` and `sslkey`. MySQL and MariaDB: the MySQL client's `ssl-mode` (`DISABLED`,
/// `PREFERRED` (the default), `REQUIRED`, `VERIFY_CA`, `VERIFY_IDENTITY`), `ssl-ca`, `ssl-cert`
/// and `ssl-key`. Any other parameter goes to the driver (tokio-postgres, mysql_async) as it is.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    backend: Backend,
    target: String,
    driver: Driver,
}

/// How to open a connection of a [`DatabaseUrl`].
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Driver {
    /// SQLite opens [`DatabaseUrl::target`].
    Sqlite,
    /// PostgreSQL: the TLS settings, and the URL without them for tokio-postgres.
    Postgres { tls: PgTls, url: String },
    /// MySQL or MariaDB: the TLS settings, and the URL without them for mysql_async.
    Mysql { tls: MysqlTls, url: String },
}

/// Shows the driver URL with its password masked.
impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite => f.write_str("Sqlite"),
            Self::Postgres { tls, url } => f
                .debug_struct("Postgres")
                .field("tls", tls)
                .field("url", &mask_password(url))
                .finish(),
            Self::Mysql { tls, url } => f
                .debug_struct("Mysql")
                .field("tls", tls)
                .field("url", &mask_password(url))
                .finish(),
        }
    }
}

impl DatabaseUrl {
    /// Parses `url`; the error names the URL (password masked) and the reason.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidUrl {
            url: mask_password(url),
            reason: reason.to_owned(),
        };
        let url = url.trim();
        if url == "sqlite::memory:" || url == "sqlite://:memory:" {
            return Ok(Self {
                backend: Backend::Sqlite,
                target: ":memory:".to_owned(),
                driver: Driver::Sqlite,
            });
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(invalid("the SQLite file path is empty"));
            }
            return Ok(Self {
                backend: Backend::Sqlite,
                target: path.to_owned(),
                driver: Driver::Sqlite,
            });
        }
        if let Some(path) = url.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(invalid("the SQLite file path is empty"));
            }
            return Ok(Self {
                backend: Backend::Sqlite,
                target: path.to_owned(),
                driver: Driver::Sqlite,
            });
        }
        for (scheme, backend, canonical) in [
            ("postgres://", Backend::Postgres, "postgres://"),
            ("postgresql://", Backend::Postgres, "postgres://"),
            ("mysql://", Backend::Mysql, "mysql://"),
            ("mariadb://", Backend::Mysql, "mysql://"),
        ] {
            if let Some(rest) = url.strip_prefix(scheme) {
                let host = rest.split(['/', '?']).next().unwrap_or_default();
                let host = host.rsplit('@').next().unwrap_or_default();
                if host.is_empty() {
                    return Err(invalid("the host is missing"));
                }
                let target = format!("{canonical}{rest}");
                let driver = if backend == Backend::Postgres {
                    let (tls, url) = PgTls::extract(&target).map_err(|r| invalid(&r))?;
                    connect::check_postgres_url(&url).map_err(|r| invalid(&r))?;
                    Driver::Postgres { tls, url }
                } else {
                    let (tls, url) = MysqlTls::extract(&target).map_err(|r| invalid(&r))?;
                    connect::check_mysql_url(&url).map_err(|r| invalid(&r))?;
                    Driver::Mysql { tls, url }
                };
                return Ok(Self {
                    backend,
                    target,
                    driver,
                });
            }
        }
        Err(invalid(
            "expected sqlite://PATH, sqlite::memory:, postgres://… or mysql://…",
        ))
    }

    /// The backend this URL selects.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The SQLite path (or `:memory:`), or the server URL as given (TLS parameters included).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// How to open a connection.
    pub(crate) fn driver(&self) -> &Driver {
        &self.driver
    }

    /// True for `sqlite::memory:`.
    pub fn is_memory(&self) -> bool {
        self.backend == Backend::Sqlite && self.target == ":memory:"
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.backend {
            Backend::Sqlite if self.is_memory() => f.write_str("sqlite::memory:"),
            Backend::Sqlite => write!(f, "sqlite://{}", self.target),
            _ => f.write_str(&mask_password(&self.target)),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// Replaces the password of `scheme://user:password@host` with `***`, and the value of a
/// `password=` query parameter. The user info ends at the first `@`, as tokio-postgres reads
/// it, so a password holding `/` or `?` is masked whole.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let masked = match rest.split_once('@') {
        Some((userinfo, tail)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    };
    mask_password_parameter(&masked)
}

/// `…password=secret&…` → `…password=***&…`.
fn mask_password_parameter(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(at) = rest.find("password=") {
        let starts_parameter = at == 0 || rest[..at].ends_with(['?', '&']);
        let (head, tail) = rest.split_at(at + "password=".len());
        out.push_str(head);
        if starts_parameter {
            out.push_str("***");
            rest = &tail[tail.find('&').unwrap_or(tail.len())..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_forms() {
        let rel = DatabaseUrl::parse("sqlite://data/cp.db").expect("relative");
        assert_eq!(
            (rel.backend(), rel.target()),
            (Backend::Sqlite, "data/cp.db")
        );
        let abs = DatabaseUrl::parse("sqlite:///var/lib/cp.db").expect("absolute");
        assert_eq!(abs.target(), "/var/lib/cp.db");
        let mem = DatabaseUrl::parse("sqlite::memory:").expect("memory");
        assert!(mem.is_memory());
    }

    #[test]
    fn server_forms() {
        let pg = DatabaseUrl::parse("postgresql://root@127.0.0.1:5432/test").expect("pg");
        assert_eq!(pg.backend(), Backend::Postgres);
        assert_eq!(pg.target(), "postgres://root@127.0.0.1:5432/test");
        let my = DatabaseUrl::parse("mariadb://root@127.0.0.1:3306/test").expect("mysql");
        assert_eq!(my.target(), "mysql://root@127.0.0.1:3306/test");
    }

    #[test]
    fn rejects_unknown_scheme_and_masks_password() {
        let err = DatabaseUrl::parse("redis://u:secret@host/0").expect_err("unknown scheme");
        let text = err.to_string();
        assert!(text.contains("redis://u:***@host/0"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(DatabaseUrl::parse("postgres:///db").is_err());
        for (url, secret) in [
            (
                "postgres://app:pa/ss?w@db:5432/app?sslmode=require",
                "pa/ss?w",
            ),
            (
                "postgres://app@db/app?password=hunter2&sslmode=require",
                "hunter2",
            ),
        ] {
            let parsed = DatabaseUrl::parse(url).expect("valid");
            let shown = format!("{parsed} {parsed:?} {:?}", parsed.driver());
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(DatabaseUrl::parse("sqlite://").is_err());
    }
}
