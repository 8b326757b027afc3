//! A MariaDB server of the test's own, with TLS: the shared server has TLS off, and turning it
//! on there would change what every other suite tests. A temporary data directory made by
//! `mariadb-install-db`, a free port, the test's certificates, and
//! `require_secure_transport`, so a plaintext client is refused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tls::Pki;

pub struct TlsMariaDb {
    /// `mysql://root@127.0.0.1:PORT/mysql`, without TLS parameters.
    pub url: String,
    server: Child,
    _dir: tempfile::TempDir,
}

/// The first of `names` found in `PATH` or the system's sbin directories.
fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/usr/bin"].map(PathBuf::from));
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Outside CI a missing MariaDB is skipped with a printed reason; under CI it fails.
fn missing(what: &str) -> Option<TlsMariaDb> {
    let message = format!("{what} is not installed, so no TLS MariaDB can be started");
    if std::env::var_os("CI").is_some() {
        panic!("{message}: CI requires it");
    }
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {message}");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl TlsMariaDb {
    /// Installs and starts the server; `None` (skipped) when MariaDB is not installed.
    pub async fn start(pki: &Pki) -> Option<Self> {
        let Some(install) = find(&["mariadb-install-db", "mysql_install_db"]) else {
            return missing("mariadb-install-db");
        };
        let Some(daemon) = find(&["mariadbd", "mysqld"]) else {
            return missing("mariadbd");
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let status = Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run mariadb-install-db");
        assert!(
            status.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        // `root@localhost` matches no TCP client under `--skip-name-resolve`.
        let init = dir.path().join("init.sql");
        std::fs::write(
            &init,
            "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';\n\
             GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;\n",
        )
        .expect("write init file");
        let port = free_port();
        let path_arg = |flag: &str, path: &Path| format!("--{flag}={}", path.display());
        let server = Command::new(&daemon)
            .arg("--no-defaults")
            .arg(path_arg("datadir", &data))
            .arg(path_arg("socket", &dir.path().join("mysqld.sock")))
            .arg(path_arg("pid-file", &dir.path().join("mysqld.pid")))
            .arg(path_arg("log-error", &dir.path().join("error.log")))
            .arg(path_arg("init-file", &init))
            .arg(path_arg("ssl-ca", &pki.ca()))
            .arg(path_arg("ssl-cert", &pki.server_cert()))
            .arg(path_arg("ssl-key", &pki.server_key()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--require-secure-transport=ON",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=16M",
                "--innodb-log-file-size=8M",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let db = Self {
            url: format!("mysql://root@127.0.0.1:{port}/mysql"),
            server,
            _dir: dir,
        };
        db.wait_until_listening(port).await;
        Some(db)
    }

    async fn wait_until_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the TLS MariaDB did not listen within 60 s; see its error.log"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TlsMariaDb {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
