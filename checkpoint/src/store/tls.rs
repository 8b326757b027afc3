//! TLS settings of the server databases, read from the database URL: libpq's `sslmode` family
//! for PostgreSQL and the MySQL client's `ssl-mode` family for MySQL and MariaDB. Both are
//! served by rustls with the *ring* provider; nothing here needs a system TLS library.
//!
//! The settings are checked when the URL is parsed; certificate files are read each time a
//! connection is opened, so a renewed certificate is picked up by the next connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// One `key=value` of a URL's query string, decoded, with its original text for rebuilding.
struct Param<'a> {
    key: String,
    value: String,
    raw: &'a str,
}

/// Where the query string of `url` starts: at the first `?` after the credentials, which
/// end at the first `@` (as tokio-postgres reads them), so that a `?` in a password does not
/// start it.
fn query_start(url: &str) -> Option<usize> {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let after_credentials = url[after_scheme..]
        .find('@')
        .map_or(after_scheme, |i| after_scheme + i + 1);
    url[after_credentials..]
        .find('?')
        .map(|i| after_credentials + i)
}

/// Splits `url` into the part before its query string and its decoded parameters. `+` is a
/// space only where the driver reads it so (`plus_is_space`: form encoding, as mysql_async).
fn split_query(url: &str, plus_is_space: bool) -> Result<(&str, Vec<Param<'_>>), String> {
    let Some(start) = query_start(url) else {
        return Ok((url, Vec::new()));
    };
    let (base, query) = (&url[..start], &url[start + 1..]);
    let params = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|raw| {
            let (key, value) = raw.split_once('=').unwrap_or((raw, ""));
            let key = percent_decode(key, plus_is_space)
                .ok_or_else(|| "a parameter name has a malformed %-escape".to_owned())?;
            let value = percent_decode(value, plus_is_space)
                .ok_or_else(|| format!("the value of `{key}` has a malformed %-escape"))?;
            Ok(Param { key, value, raw })
        })
        .collect::<Result<_, String>>()?;
    Ok((base, params))
}

/// `base` with `params` as its query string, unchanged.
fn join_query(base: &str, params: &[Param<'_>]) -> String {
    if params.is_empty() {
        return base.to_owned();
    }
    let query: Vec<&str> = params.iter().map(|p| p.raw).collect();
    format!("{base}?{}", query.join("&"))
}

/// Decodes `%XX` escapes (two hex digits), and `+` as a space when `plus_is_space`; `None`
/// for a malformed escape or a result that is not UTF-8.
fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The `~/.postgresql/…` file libpq falls back to, when `HOME` is set.
fn home_file(name: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".postgresql").join(name))
}

/// libpq's `sslmode`, minus `allow` (plaintext first), which tokio-postgres cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PgSslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, plaintext otherwise; the certificate is not checked.
    Prefer,
    /// TLS or nothing; the certificate is not checked, unless a root certificate is
    /// configured (then as `VerifyCa`, as libpq does).
    Require,
    /// TLS, with a certificate signed by the root certificate.
    VerifyCa,
    /// `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

impl PgSslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err("sslmode=allow (plaintext first, TLS as a fallback) is not \
                     supported; use prefer, which tries TLS first"
                    .to_owned());
            }
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                ));
            }
        })
    }

    /// The name as written in a URL.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// A PEM file of one or more certificates.
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

/// PostgreSQL TLS settings: `sslmode`, `sslrootcert`, `sslcert` and `sslkey`, with libpq's
/// meanings and defaults (`prefer`; files under `~/.postgresql/` when not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgTls {
    mode: PgSslMode,
    /// `sslrootcert` as given.
    root_cert: Option<Roots>,
    /// `sslcert` and `sslkey` as given.
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl PgTls {
    /// Takes the TLS parameters out of a `postgres://` URL: the settings, and the URL
    /// tokio-postgres is given (without them).
    pub(crate) fn extract(url: &str) -> Result<(Self, String), String> {
        let (base, params) = split_query(url, false)?;
        let mut mode = None;
        let mut tls = Self {
            mode: PgSslMode::Prefer,
            root_cert: None,
            cert: None,
            key: None,
        };
        let mut rest = Vec::new();
        for param in params {
            match param.key.as_str() {
                "sslmode" => mode = Some(PgSslMode::parse(&param.value)?),
                "sslrootcert" if param.value == "system" => tls.root_cert = Some(Roots::System),
                "sslrootcert" => tls.root_cert = Some(Roots::File(param.value.into())),
                "sslcert" => tls.cert = Some(param.value.into()),
                "sslkey" => tls.key = Some(param.value.into()),
                "sslpassword" => {
                    return Err("sslpassword (an encrypted client key) is not supported; \
                         give an unencrypted key in sslkey"
                        .to_owned());
                }
                _ => rest.push(param),
            }
        }
        // libpq 16: the public roots vouch for anyone's own domain, so they are only worth
        // trusting with the host name checked.
        tls.mode = match (mode, &tls.root_cert) {
            (None, Some(Roots::System)) => PgSslMode::VerifyFull,
            (Some(mode), Some(Roots::System)) if mode != PgSslMode::VerifyFull => {
                return Err(format!(
                    "sslrootcert=system needs sslmode=verify-full (or no sslmode), not {}",
                    mode.name()
                ));
            }
            (mode, _) => mode.unwrap_or(PgSslMode::Prefer),
        };
        if matches!(tls.mode, PgSslMode::VerifyCa | PgSslMode::VerifyFull)
            && tls.root_cert.is_none()
            && !home_file("root.crt").is_some_and(|p| p.exists())
        {
            return Err(format!(
                "sslmode={} needs a root certificate: set sslrootcert=PATH (a PEM file) or \
                 sslrootcert=system, or put one in ~/.postgresql/root.crt",
                tls.mode.name()
            ));
        }
        if tls.key.is_some() && tls.cert.is_none() {
            return Err("sslkey is set but sslcert is not".to_owned());
        }
        Ok((tls, join_query(base, &rest)))
    }

    /// The mode as configured.
    pub(crate) fn mode(&self) -> PgSslMode {
        self.mode
    }

    /// The rustls configuration of a connection, or `None` for `sslmode=disable`. Reads the
    /// certificate files now.
    pub(crate) fn client_config(&self) -> Result<Option<rustls::ClientConfig>, String> {
        if self.mode == PgSslMode::Disable {
            return Ok(None);
        }
        let explicit_roots = self.root_cert.clone();
        let default_roots = home_file("root.crt")
            .filter(|p| p.exists())
            .map(Roots::File);
        let (verify_name, roots) = match self.mode {
            PgSslMode::Disable => return Ok(None),
            PgSslMode::Prefer => (false, None),
            // libpq: with a root certificate, `require` verifies the chain.
            PgSslMode::Require => (false, explicit_roots.or(default_roots)),
            PgSslMode::VerifyCa | PgSslMode::VerifyFull => {
                let roots = explicit_roots.or(default_roots).ok_or_else(|| {
                    format!(
                        "sslmode={} needs a root certificate: set sslrootcert=PATH (a PEM \
                         file) or sslrootcert=system, or put one in ~/.postgresql/root.crt",
                        self.mode.name()
                    )
                })?;
                (self.mode == PgSslMode::VerifyFull, Some(roots))
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = match roots {
            None => None,
            Some(roots) => Some(
                WebPkiServerVerifier::builder_with_provider(
                    Arc::new(root_store(&roots)?),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| format!("root certificates: {e}"))?,
            ),
        };
        let verifier = Arc::new(Verifier {
            provider: Arc::clone(&provider),
            chain,
            check_name: verify_name,
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let identity = self.client_identity()?;
        let config = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("sslcert/sslkey: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Some(config))
    }

    /// The client certificate and key: as given, or libpq's default files when the
    /// certificate exists there.
    fn client_identity(
        &self,
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, String> {
        let cert = match &self.cert {
            Some(path) => path.clone(),
            None => match home_file("postgresql.crt").filter(|p| p.exists()) {
                Some(path) => path,
                None => return Ok(None),
            },
        };
        let key = match &self.key {
            Some(path) => path.clone(),
            None => home_file("postgresql.key")
                .ok_or_else(|| "sslcert is set but sslkey is not".to_owned())?,
        };
        let chain = read_certificates(&cert, "sslcert")?;
        let key = PrivateKeyDer::from_pem_file(&key)
            .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
        Ok(Some((chain, key)))
    }
}

/// Every certificate of a PEM file; an empty file is an error.
fn read_certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

fn root_store(roots: &Roots) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            for cert in read_certificates(path, "sslrootcert")? {
                store
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(format!(
                    "sslrootcert=system: no usable certificate in the system's trust store \
                     ({why})"
                ));
            }
        }
    }
    Ok(store)
}

/// The server certificate check of one mode: none (`prefer`, `require` without a root
/// certificate, libpq's meaning), the chain (`verify-ca`), or the chain and the host name
/// (`verify-full`). The handshake signatures are checked in every case.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    /// `None`: any certificate is accepted.
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // rustls checks the chain before the name: only the name is forgiven here.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The MySQL client's `--ssl-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MysqlSslMode {
    /// No TLS.
    Disabled,
    /// TLS when the server offers it; the certificate is not checked.
    Preferred,
    /// TLS or nothing; the certificate is not checked.
    Required,
    /// TLS, with a certificate signed by `ssl-ca` (or a well-known root).
    VerifyCa,
    /// `VerifyCa`, and the certificate names the host connected to.
    VerifyIdentity,
}

impl MysqlSslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value.to_ascii_uppercase().as_str() {
            "DISABLED" => Self::Disabled,
            "PREFERRED" => Self::Preferred,
            "REQUIRED" => Self::Required,
            "VERIFY_CA" => Self::VerifyCa,
            "VERIFY_IDENTITY" => Self::VerifyIdentity,
            _ => {
                return Err(format!(
                    "ssl-mode={value} is not one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, \
                     VERIFY_IDENTITY"
                ));
            }
        })
    }

    /// The name as written in a URL.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Disabled => "DISABLED",
            Self::Preferred => "PREFERRED",
            Self::Required => "REQUIRED",
            Self::VerifyCa => "VERIFY_CA",
            Self::VerifyIdentity => "VERIFY_IDENTITY",
        }
    }
}

/// mysql_async's own TLS parameters; mixing them with `ssl-mode` would be ambiguous.
const MYSQL_ASYNC_TLS_KEYS: [&str; 4] = [
    "require_ssl",
    "verify_ca",
    "verify_identity",
    "built_in_roots",
];

/// MySQL/MariaDB TLS settings: `ssl-mode`, `ssl-ca`, `ssl-cert` and `ssl-key`, with the MySQL
/// client's meanings and default (`PREFERRED`, or `VERIFY_CA` when only `ssl-ca` is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MysqlTls {
    /// `None`: the URL uses mysql_async's own parameters (`require_ssl=true`, …) instead.
    mode: Option<MysqlSslMode>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl MysqlTls {
    /// Takes the TLS parameters out of a `mysql://` URL: the settings, and the URL mysql_async
    /// is given (without them).
    pub(crate) fn extract(url: &str) -> Result<(Self, String), String> {
        let (base, params) = split_query(url, true)?;
        let mut mode = None;
        let mut tls = Self {
            mode: None,
            ca: None,
            cert: None,
            key: None,
        };
        let mut native = false;
        let mut rest = Vec::new();
        for param in params {
            match param.key.as_str() {
                "ssl-mode" => mode = Some(MysqlSslMode::parse(&param.value)?),
                "ssl-ca" => tls.ca = Some(param.value.into()),
                "ssl-cert" => tls.cert = Some(param.value.into()),
                "ssl-key" => tls.key = Some(param.value.into()),
                key => {
                    native |= MYSQL_ASYNC_TLS_KEYS.contains(&key);
                    rest.push(param);
                }
            }
        }
        let ours = mode.is_some() || tls.ca.is_some() || tls.cert.is_some() || tls.key.is_some();
        if native && ours {
            return Err(format!(
                "use either ssl-mode/ssl-ca/ssl-cert/ssl-key or mysql_async's {}, not both",
                MYSQL_ASYNC_TLS_KEYS.join("/")
            ));
        }
        if tls.cert.is_some() != tls.key.is_some() {
            return Err("ssl-cert and ssl-key go together".to_owned());
        }
        tls.mode = if native {
            None
        } else {
            Some(mode.unwrap_or(if tls.ca.is_some() {
                MysqlSslMode::VerifyCa
            } else {
                MysqlSslMode::Preferred
            }))
        };
        Ok((tls, join_query(base, &rest)))
    }

    /// The mode; `None` when the URL uses mysql_async's parameters.
    pub(crate) fn mode(&self) -> Option<MysqlSslMode> {
        self.mode
    }

    /// mysql_async's TLS options for the mode; `None` for no TLS.
    pub(crate) fn ssl_opts(&self) -> Option<mysql_async::SslOpts> {
        let mode = self.mode?;
        let mut opts = mysql_async::SslOpts::default();
        if let Some(ca) = &self.ca {
            opts = opts
                .with_root_certs(vec![ca.clone().into()])
                .with_disable_built_in_roots(true);
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            opts = opts.with_client_identity(Some(mysql_async::ClientIdentity::new(
                cert.clone().into(),
                key.clone().into(),
            )));
        }
        Some(match mode {
            MysqlSslMode::Disabled => return None,
            MysqlSslMode::Preferred | MysqlSslMode::Required => opts
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
            MysqlSslMode::VerifyCa => opts.with_danger_skip_domain_validation(true),
            MysqlSslMode::VerifyIdentity => opts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_parameters_are_taken_out_and_the_rest_kept() {
        let (tls, rest) = PgTls::extract(
            "postgres://u@h:5432/db?application_name=a%20b&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&connect_timeout=5",
        )
        .expect("valid");
        assert_eq!(tls.mode(), PgSslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(Roots::File("/tmp/ca.pem".into())));
        assert_eq!(
            rest,
            "postgres://u@h:5432/db?application_name=a%20b&connect_timeout=5"
        );
        let (tls, rest) = PgTls::extract("postgres://u@h/db").expect("valid");
        assert_eq!(
            (tls.mode(), rest.as_str()),
            (PgSslMode::Prefer, "postgres://u@h/db")
        );
        let (tls, _) = PgTls::extract("postgres://u@h/db?sslrootcert=system").expect("valid");
        assert_eq!(tls.root_cert, Some(Roots::System));
    }

    #[test]
    fn postgres_rejects_what_it_cannot_honour() {
        let err = PgTls::extract("postgres://h/db?sslmode=verify_full").expect_err("typo");
        assert!(err.contains("verify-ca, verify-full"), "{err}");
        let err = PgTls::extract("postgres://h/db?sslmode=allow").expect_err("allow");
        assert!(err.contains("use prefer"), "{err}");
        let err = PgTls::extract("postgres://h/db?sslpassword=x").expect_err("sslpassword");
        assert!(err.contains("unencrypted key"), "{err}");
        let err = PgTls::extract("postgres://h/db?sslrootcert=%zz").expect_err("escape");
        assert!(err.contains("malformed"), "{err}");
        let err = PgTls::extract("postgres://h/db?sslrootcert=%+1").expect_err("escape");
        assert!(err.contains("malformed"), "{err}");
        let err = PgTls::extract("postgres://h/db?password=%zz").expect_err("no value shown");
        assert!(!err.contains("%zz"), "{err}");
        let err = PgTls::extract("postgres://h/db?sslmode=require&sslrootcert=system")
            .expect_err("public roots without the name");
        assert!(err.contains("verify-full"), "{err}");
    }

    #[test]
    fn libpq_corner_cases() {
        // A `?` in the password does not start the query string.
        let (tls, rest) =
            PgTls::extract("postgres://app:ab?cd@h:5432/db?sslmode=require").expect("valid");
        assert_eq!(tls.mode(), PgSslMode::Require);
        assert_eq!(rest, "postgres://app:ab?cd@h:5432/db");
        // `+` is a literal in libpq's URLs.
        let (tls, _) = PgTls::extract("postgres://h/db?sslrootcert=/ca+chain.pem").expect("valid");
        assert_eq!(tls.root_cert, Some(Roots::File("/ca+chain.pem".into())));
        // The system's roots imply verify-full.
        let (tls, _) = PgTls::extract("postgres://h/db?sslrootcert=system").expect("valid");
        assert_eq!(tls.mode(), PgSslMode::VerifyFull);
    }

    #[test]
    fn verification_without_a_root_certificate_says_what_to_set() {
        if !home_file("root.crt").is_some_and(|p| p.exists()) {
            let err = PgTls::extract("postgres://h/db?sslmode=verify-ca").expect_err("no root");
            assert!(err.contains("needs a root certificate"), "{err}");
        }
        let (tls, _) =
            PgTls::extract("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
                .expect("valid");
        let err = tls.client_config().expect_err("missing file");
        assert!(err.contains("sslrootcert /nonexistent/ca.pem"), "{err}");
        let (tls, _) = PgTls::extract("postgres://h/db?sslmode=disable").expect("valid");
        assert!(tls.client_config().expect("no TLS").is_none());
        let (tls, _) = PgTls::extract("postgres://h/db?sslmode=require").expect("valid");
        assert!(tls.client_config().expect("unverified TLS").is_some());
    }

    #[test]
    fn mysql_modes_and_defaults() {
        let (tls, rest) = MysqlTls::extract(
            "mysql://root@h:3306/db?ssl-mode=verify_identity&ssl-ca=%2Fca.pem&prefer_socket=false",
        )
        .expect("valid");
        assert_eq!(tls.mode(), Some(MysqlSslMode::VerifyIdentity));
        assert_eq!(rest, "mysql://root@h:3306/db?prefer_socket=false");
        let opts = tls.ssl_opts().expect("TLS");
        assert!(!opts.skip_domain_validation() && !opts.accept_invalid_certs());
        assert!(opts.disable_built_in_roots());

        let (tls, _) = MysqlTls::extract("mysql://root@h/db").expect("valid");
        assert_eq!(tls.mode(), Some(MysqlSslMode::Preferred));
        assert!(tls.ssl_opts().expect("TLS").accept_invalid_certs());
        let (tls, _) = MysqlTls::extract("mysql://root@h/db?ssl-ca=/ca.pem").expect("valid");
        assert_eq!(tls.mode(), Some(MysqlSslMode::VerifyCa));
        let (tls, _) = MysqlTls::extract("mysql://root@h/db?ssl-mode=DISABLED").expect("valid");
        assert!(tls.ssl_opts().is_none());
        let (tls, rest) = MysqlTls::extract("mysql://root@h/db?require_ssl=true").expect("valid");
        assert_eq!(
            (tls.mode(), rest.as_str()),
            (None, "mysql://root@h/db?require_ssl=true")
        );
    }

    #[test]
    fn mysql_rejects_ambiguous_settings() {
        let err =
            MysqlTls::extract("mysql://h/db?ssl-mode=REQUIRED&require_ssl=true").expect_err("both");
        assert!(err.contains("not both"), "{err}");
        let err = MysqlTls::extract("mysql://h/db?ssl-mode=SOMETIMES").expect_err("mode");
        assert!(err.contains("VERIFY_IDENTITY"), "{err}");
        let err = MysqlTls::extract("mysql://h/db?ssl-cert=/c.pem").expect_err("no key");
        assert!(err.contains("go together"), "{err}");
    }
}
