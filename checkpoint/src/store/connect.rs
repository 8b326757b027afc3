//! Opening one connection to a server database, TLS included: what the pool calls for each new
//! connection. The URL's TLS settings ([`PgTls`], [`MysqlTls`]) are applied here and nowhere
//! else.

use diesel::ConnectionError;
use diesel_async::{AsyncMysqlConnection, AsyncPgConnection};

use super::tls::{MysqlSslMode, MysqlTls, PgSslMode, PgTls};

use crate::error::one_line as chain;

/// Checks a PostgreSQL URL (without its TLS parameters) as tokio-postgres will read it.
pub(crate) fn check_postgres_url(driver_url: &str) -> Result<(), String> {
    driver_url
        .parse::<tokio_postgres::Config>()
        .map(drop)
        .map_err(|e| chain(&e))
}

/// Checks a MySQL URL (without its TLS parameters) as mysql_async will read it.
pub(crate) fn check_mysql_url(driver_url: &str) -> Result<(), String> {
    mysql_async::Opts::from_url(driver_url)
        .map(drop)
        .map_err(|e| chain(&e))
}

/// tokio-postgres's configuration of `driver_url` with the TLS mode of `tls`.
fn postgres_config(
    tls: &PgTls,
    driver_url: &str,
) -> Result<tokio_postgres::Config, ConnectionError> {
    use tokio_postgres::config::SslMode;
    let mut config: tokio_postgres::Config = driver_url
        .parse()
        .map_err(|e| ConnectionError::InvalidConnectionUrl(chain(&e)))?;
    config.ssl_mode(match tls.mode() {
        PgSslMode::Disable => SslMode::Disable,
        PgSslMode::Prefer => SslMode::Prefer,
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull => SslMode::Require,
    });
    Ok(config)
}

fn postgres_failed(tls: &PgTls) -> impl Fn(tokio_postgres::Error) -> ConnectionError + '_ {
    |e| ConnectionError::BadConnection(format!("{} (sslmode={})", chain(&e), tls.mode().name()))
}

/// Opens a PostgreSQL connection to `driver_url` with the TLS of `tls`. `prefer` falls back to
/// plaintext when TLS fails (a server refusing it, or too old for rustls), as libpq does.
pub(crate) async fn postgres(
    tls: &PgTls,
    driver_url: &str,
) -> Result<AsyncPgConnection, ConnectionError> {
    let mut config = postgres_config(tls, driver_url)?;
    let failed = postgres_failed(tls);
    let Some(rustls) = tls
        .client_config()
        .map_err(ConnectionError::BadConnection)?
    else {
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(failed)?;
        return AsyncPgConnection::try_from_client_and_connection(client, connection).await;
    };
    let connector = tokio_postgres_rustls::MakeRustlsConnect::new(rustls);
    match config.connect(connector).await {
        Ok((client, connection)) => {
            AsyncPgConnection::try_from_client_and_connection(client, connection).await
        }
        Err(with_tls) if tls.mode() == PgSslMode::Prefer => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let (client, connection) =
                config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|plain| {
                        ConnectionError::BadConnection(format!(
                            "with TLS: {}; without: {} (sslmode=prefer)",
                            chain(&with_tls),
                            chain(&plain)
                        ))
                    })?;
            AsyncPgConnection::try_from_client_and_connection(client, connection).await
        }
        Err(e) => Err(failed(e)),
    }
}

/// A bare tokio-postgres client of `driver_url` with the TLS of `tls`, for what diesel cannot
/// express (`COPY`); its connection is driven by a task of its own until the client is dropped.
pub(crate) async fn postgres_client(
    tls: &PgTls,
    driver_url: &str,
) -> Result<tokio_postgres::Client, ConnectionError> {
    let config = postgres_config(tls, driver_url)?;
    let failed = postgres_failed(tls);
    let client = match tls
        .client_config()
        .map_err(ConnectionError::BadConnection)?
    {
        None => {
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(failed)?;
            tokio::spawn(connection);
            client
        }
        Some(rustls) => {
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new(rustls);
            let (client, connection) = config.connect(connector).await.map_err(failed)?;
            tokio::spawn(connection);
            client
        }
    };
    Ok(client)
}

/// Opens a MySQL or MariaDB connection to `driver_url` with the TLS of `tls`.
pub(crate) async fn mysql(
    tls: &MysqlTls,
    driver_url: &str,
) -> Result<AsyncMysqlConnection, ConnectionError> {
    AsyncMysqlConnection::try_from(mysql_conn(tls, driver_url).await?).await
}

/// A bare mysql_async connection of `driver_url` with the TLS of `tls`. `PREFERRED` falls back
/// to plaintext when the server offers no TLS, as the MySQL client does.
pub(crate) async fn mysql_conn(
    tls: &MysqlTls,
    driver_url: &str,
) -> Result<mysql_async::Conn, ConnectionError> {
    let opts = mysql_async::Opts::from_url(driver_url)
        .map_err(|e| ConnectionError::InvalidConnectionUrl(chain(&e)))?;
    // As diesel-async's own `establish`: diesel caches statements itself, and counts matched
    // rather than changed rows, as the other backends do.
    let plain = mysql_async::OptsBuilder::from_opts(opts)
        .stmt_cache_size(0)
        .client_found_rows(true);
    let builder = match tls.mode() {
        // mysql_async's own TLS parameters, as the URL gave them.
        None => plain.clone(),
        Some(_) => plain.clone().ssl_opts(tls.ssl_opts()),
    };
    let failed = |e: mysql_async::Error| {
        let mode = tls.mode().map_or(
            "as the URL's mysql_async parameters say",
            MysqlSslMode::name,
        );
        ConnectionError::BadConnection(format!("{} (ssl-mode={mode})", chain(&e)))
    };
    match mysql_async::Conn::new(builder).await {
        Ok(conn) => Ok(conn),
        Err(mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer))
            if tls.mode() == Some(MysqlSslMode::Preferred) =>
        {
            mysql_async::Conn::new(plain.ssl_opts(None))
                .await
                .map_err(failed)
        }
        Err(e) => Err(failed(e)),
    }
}

/// A bare connection of a store's URL, with the store's TLS, for what diesel cannot express
/// (the bench's bulk loads).
pub enum RawConnection {
    /// A tokio-postgres client; its connection is driven by a task of its own.
    Postgres(tokio_postgres::Client),
    /// A mysql_async connection.
    Mysql(mysql_async::Conn),
    /// SQLite has no other client: use a store connection.
    Sqlite,
}

/// Opens a [`RawConnection`] to `url`.
pub async fn raw_connection(url: &super::DatabaseUrl) -> Result<RawConnection, ConnectionError> {
    Ok(match url.driver() {
        super::Driver::Postgres { tls, url } => {
            RawConnection::Postgres(postgres_client(tls, url).await?)
        }
        super::Driver::Mysql { tls, url } => RawConnection::Mysql(mysql_conn(tls, url).await?),
        super::Driver::Sqlite => RawConnection::Sqlite,
    })
}
