//! TLS to every server checkpoint talks to, against real endpoints: this machine's PostgreSQL
//! (TLS on), a MariaDB of the test's own with TLS required, and librdkafka's mock cluster
//! behind a TLS-terminating proxy.

use std::sync::Arc;
use std::time::Duration;

use crate::support::TestDb;
use crate::support::handlers::{Scripted, Step};
use crate::support::kafka::{Cluster, wait_until};
use crate::support::mariadb::TlsMariaDb;
use crate::support::tls::{Pki, TlsProxy};
use checkpoint::listener::{Listener, ListenerError, ListenerSpec, ListenerStats};
use checkpoint::store::{Conn, Store};
use checkpoint::{Engine, StoreError};
use diesel::sql_types::{Bool, Text};
use diesel_async::RunQueryDsl;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

#[derive(diesel::QueryableByName)]
struct Encrypted {
    #[diesel(sql_type = Bool)]
    ssl: bool,
}

#[derive(diesel::QueryableByName)]
struct Status {
    #[diesel(sql_type = Text, column_name = "Value")]
    value: String,
}

/// Whether the server sees this store's session as TLS: PostgreSQL's `pg_stat_ssl` for the
/// session's backend, MySQL's `Ssl_version` session status.
async fn session_is_encrypted(store: &Store) -> bool {
    let mut pooled = store.conn().await.expect("connection");
    match pooled.conn() {
        Conn::Postgres(conn) => {
            diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .get_result::<Encrypted>(conn)
                .await
                .expect("pg_stat_ssl")
                .ssl
        }
        Conn::Mysql(conn) => !diesel::sql_query("SHOW SESSION STATUS LIKE 'Ssl_version'")
            .get_result::<Status>(conn)
            .await
            .expect("Ssl_version")
            .value
            .is_empty(),
        other => panic!("not a server database: {other:?}"),
    }
}

fn with_params(url: &str, params: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{params}")
}

async fn unavailable(url: &str) -> String {
    match Store::connect(url).expect("valid URL").ping().await {
        Err(error @ StoreError::Unavailable { .. }) => error.to_string(),
        other => panic!("{url}: expected a connection error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sslmode_is_honoured_as_libpq_does() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let pki = Pki::new();
    for (mode, encrypted) in [
        ("sslmode=require", true),
        ("sslmode=prefer", true),
        ("sslmode=disable", false),
    ] {
        let store = Store::connect(&with_params(&db.url, mode)).expect("valid URL");
        assert_eq!(session_is_encrypted(&store).await, encrypted, "{mode}");
    }
    // libpq's default is `prefer`, and this server offers TLS.
    assert!(session_is_encrypted(&db.store).await, "default sslmode");

    // The checkpoint tables through TLS: migrations and a stored event.
    let tls = Store::connect(&with_params(&db.url, "sslmode=require")).expect("valid URL");
    assert!(
        tls.migration_status()
            .await
            .expect("migration status")
            .iter()
            .all(|(_, applied)| *applied)
    );

    let wrong_ca = format!(
        "sslmode=verify-full&sslrootcert={}",
        pki.other_ca().display()
    );
    let error = unavailable(&with_params(&db.url, &wrong_ca)).await;
    assert!(
        error.contains("invalid peer certificate") && error.contains("sslmode=verify-full"),
        "{error}"
    );
    // The operating system's roots load and the certificate is checked against them (whether
    // they vouch for this server's own certificate depends on the machine; the name is
    // `localhost`, not the address the tests connect to, so `verify-full` fails either way).
    let error = unavailable(&with_params(
        &db.url,
        "sslmode=verify-full&sslrootcert=system",
    ))
    .await;
    assert!(error.contains("invalid peer certificate"), "{error}");
    let error = unavailable(&with_params(
        &db.url,
        "sslmode=verify-ca&sslrootcert=/nonexistent/root.crt",
    ))
    .await;
    assert!(
        error.contains("sslrootcert /nonexistent/root.crt"),
        "{error}"
    );
    db.cleanup().await;
}

/// `verify-full` and `verify-ca` against the server's own certificate, which the server names
/// (`ssl_cert_file`); it is issued to `localhost`, so the URL names that host and pins the
/// address the tests use with `hostaddr`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_accepts_the_servers_certificate() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let cert_file: String = {
        #[derive(diesel::QueryableByName)]
        struct Setting {
            #[diesel(sql_type = Text)]
            ssl_cert_file: String,
        }
        let mut pooled = db.store.conn().await.expect("connection");
        let Conn::Postgres(conn) = pooled.conn() else {
            unreachable!("a PostgreSQL store")
        };
        diesel::sql_query("SHOW ssl_cert_file")
            .get_result::<Setting>(conn)
            .await
            .expect("ssl_cert_file")
            .ssl_cert_file
    };
    assert!(
        std::path::Path::new(&cert_file).is_file(),
        "the server's certificate {cert_file} must be readable by the test"
    );
    // postgres://user@HOST:PORT/… → postgres://user@localhost:PORT/…?hostaddr=HOST
    let (scheme_user, rest) = db.url.split_once('@').expect("user@host in the test URL");
    let (authority, path) = rest.split_once('/').expect("a database in the test URL");
    let (host, port) = authority
        .rsplit_once(':')
        .expect("host:port in the test URL");
    let url = format!("{scheme_user}@localhost:{port}/{path}");
    for mode in ["verify-full", "verify-ca"] {
        let url = with_params(
            &url,
            &format!("hostaddr={host}&sslmode={mode}&sslrootcert={cert_file}"),
        );
        let store = Store::connect(&url).expect("valid URL");
        assert!(session_is_encrypted(&store).await, "{mode}");
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_ssl_mode_is_honoured_on_a_tls_server() {
    let pki = Pki::new();
    let Some(server) = TlsMariaDb::start(&pki).await else {
        return;
    };
    // The server requires TLS: it refuses a plaintext login (MariaDB answers "access
    // denied"; MySQL names insecure transport).
    let error = unavailable(&with_params(&server.url, "ssl-mode=DISABLED")).await;
    assert!(
        error.contains("Access denied") || error.contains("insecure transport"),
        "{error}"
    );

    for params in [
        "ssl-mode=REQUIRED".to_owned(),
        // The MySQL client's default; the server offers TLS, so it is used.
        String::new(),
        format!("ssl-mode=VERIFY_CA&ssl-ca={}", pki.ca().display()),
        format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", pki.ca().display()),
    ] {
        let store = Store::connect(&with_params(&server.url, &params)).expect("valid URL");
        assert!(session_is_encrypted(&store).await, "{params}");
    }

    let wrong_ca = format!(
        "ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
        pki.other_ca().display()
    );
    let error = unavailable(&with_params(&server.url, &wrong_ca)).await;
    assert!(
        error.contains("invalid peer certificate") && error.contains("ssl-mode=VERIFY_IDENTITY"),
        "{error}"
    );

    // Migrations and a checkpoint through TLS, on a database of its own.
    let admin = Store::connect(&with_params(&server.url, "ssl-mode=REQUIRED")).expect("URL");
    {
        let mut pooled = admin.conn().await.expect("connection");
        pooled
            .conn()
            .batch_execute("CREATE DATABASE checkpoint_tls")
            .await
            .expect("create database");
    }
    let url = server.url.replace("/mysql", "/checkpoint_tls");
    let store = Store::connect(&format!(
        "{url}?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
        pki.ca().display()
    ))
    .expect("valid URL");
    let applied = store.migrate().await.expect("migrate through TLS");
    assert!(!applied.is_empty());
    assert!(session_is_encrypted(&store).await);
}

/// The shared MariaDB has TLS off: the default (`PREFERRED`) falls back to plaintext, and
/// `REQUIRED` says the server cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_preferred_falls_back_when_the_server_has_no_tls() {
    let Some(db) = TestDb::mysql().await else {
        return;
    };
    assert!(!session_is_encrypted(&db.store).await);
    let error = unavailable(&with_params(&db.url, "ssl-mode=REQUIRED")).await;
    assert!(
        error.contains("server does not have this capability"),
        "{error}"
    );
    db.cleanup().await;
}

/// A one-broker mock cluster whose broker advertises `localhost:PORT` of a TLS proxy in front
/// of it: every connection a client makes after bootstrapping goes through TLS. Returns the
/// client that owns the cluster, the proxy and the plaintext bootstrap address.
async fn cluster_behind_tls(topic: &str, pki: &Pki, messages: usize) -> (BaseProducer, TlsProxy) {
    crate::support::kafka::init_tracing();
    let owner: BaseProducer = ClientConfig::new()
        .set("test.mock.num.brokers", "1")
        .create()
        .expect("mock cluster");
    let plaintext = {
        let mock = owner.client().mock_cluster().expect("mock cluster");
        mock.create_topic(topic, 1, 1).expect("create topic");
        mock.bootstrap_servers()
    };
    let produced: Vec<_> = (0..messages)
        .map(|i| {
            (
                0,
                format!("key-{i}"),
                format!(r#"{{"id":"tls-{i}"}}"#).into_bytes(),
            )
        })
        .collect();
    Cluster::external(plaintext.clone())
        .produce(topic, &produced)
        .await;
    let proxy = TlsProxy::start(plaintext, pki.server_config()).await;
    advertise(&owner, proxy.addr.port());
    (owner, proxy)
}

/// Makes broker 1 of `owner`'s mock cluster advertise `localhost:port` in metadata and
/// coordinator answers. rdkafka has no safe wrapper for this librdkafka call.
#[allow(unsafe_code)]
fn advertise(owner: &BaseProducer, port: u16) {
    let host = c"localhost";
    // SAFETY: `owner` is a live client created with `test.mock.num.brokers`, so it owns a mock
    // cluster for as long as it lives; the call takes the cluster's lock and copies `host`,
    // a NUL-terminated literal.
    unsafe {
        let cluster = rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
        assert!(!cluster.is_null(), "the client owns a mock cluster");
        rdkafka::bindings::rd_kafka_mock_broker_set_host_port(
            cluster,
            1,
            host.as_ptr(),
            i32::from(port),
        );
    }
}

/// A listener running in a task of its own.
struct Running {
    stats: Arc<ListenerStats>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ListenerError>>,
}

impl Running {
    fn start(spec: ListenerSpec, db: &TestDb) -> Self {
        let listener = Listener::new(spec, Engine::new(db.store.clone()));
        let stats = listener.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(listener.run(async {
            let _ = stopped.await;
        }));
        Self { stats, stop, task }
    }

    /// Stops the listener gracefully; how it ended.
    async fn stop(self) -> Result<(), ListenerError> {
        let _ = self.stop.send(());
        self.task.await.expect("the listener task panicked")
    }
}

fn tls_spec(
    handler: Arc<dyn checkpoint::Handler>,
    topic: &str,
    proxy: &TlsProxy,
    properties: &[(&str, String)],
) -> ListenerSpec {
    let mut spec = ListenerSpec::new(handler, topic, "tls-group")
        .kafka(
            "bootstrap.servers",
            format!("localhost:{}", proxy.addr.port()),
        )
        .kafka("session.timeout.ms", "3000")
        .kafka("heartbeat.interval.ms", "500")
        .kafka("auto.commit.interval.ms", "200");
    for (key, value) in properties {
        spec = spec.kafka(*key, value.clone());
    }
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_consumes_through_tls() {
    let db = TestDb::sqlite().await;
    let pki = Pki::new();
    let (topic, count) = ("tls.orders", 50);
    let (_owner, proxy) = cluster_behind_tls(topic, &pki, count).await;
    let handler = Arc::new(Scripted::new(Step::Ack));
    let spec = tls_spec(
        handler,
        topic,
        &proxy,
        &[
            ("security.protocol", "SSL".to_owned()),
            ("ssl.ca.location", pki.ca().display().to_string()),
        ],
    );
    let running = Running::start(spec, &db);
    let stats = Arc::clone(&running.stats);
    wait_until(
        Duration::from_secs(60),
        "50 messages through TLS",
        || async { stats.snapshot().acknowledged >= 50 },
    )
    .await;
    running.stop().await.expect("listener");
    assert_eq!(stats.snapshot().acknowledged, 50);
    assert!(proxy.handshakes() >= 1, "no TLS handshake completed");
    assert_eq!(stats.last_client_error(), None);
    db.cleanup().await;
}

/// A CA that did not sign the broker's certificate: librdkafka refuses the certificate (not a
/// protocol error), nothing is consumed, and the listener reports why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_ca_is_a_certificate_error() {
    let db = TestDb::sqlite().await;
    let pki = Pki::new();
    let topic = "tls.refused";
    let (_owner, proxy) = cluster_behind_tls(topic, &pki, 5).await;
    let spec = tls_spec(
        Arc::new(Scripted::new(Step::Ack)),
        topic,
        &proxy,
        &[
            ("security.protocol", "SSL".to_owned()),
            ("ssl.ca.location", pki.other_ca().display().to_string()),
        ],
    );
    let running = Running::start(spec, &db);
    let stats = Arc::clone(&running.stats);
    wait_until(Duration::from_secs(30), "a client error", || async {
        stats.last_client_error().is_some()
    })
    .await;
    let error = stats.last_client_error().unwrap_or_default();
    assert!(error.contains("certificate verify failed"), "{error}");
    assert!(error.starts_with("Global error: ") && error.contains("ssl://localhost:"));
    assert!(proxy.failed_handshakes() >= 1);
    assert_eq!(proxy.handshakes(), 0);
    running.stop().await.expect("listener");
    let snapshot = stats.snapshot();
    assert_eq!((snapshot.received, snapshot.joined), (0, false));
    db.cleanup().await;
}

/// SASL over TLS with each mechanism librdkafka builds in: the client is created, completes
/// TLS, and starts SASL. The mock cluster implements no SASL, so authentication itself is not
/// exercised; what this proves is that the build has SSL and SASL and that the configuration
/// reaches librdkafka. The password never shows in what the listener reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_mechanisms_are_built_in() {
    let db = TestDb::sqlite().await;
    let pki = Pki::new();
    let topic = "tls.sasl";
    let (_owner, proxy) = cluster_behind_tls(topic, &pki, 1).await;
    let password = "sasl-pa55word-never-shown";
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] {
        let handshakes = proxy.handshakes();
        let mut properties = vec![
            ("security.protocol", "SASL_SSL".to_owned()),
            ("ssl.ca.location", pki.ca().display().to_string()),
            ("sasl.mechanisms", mechanism.to_owned()),
        ];
        if mechanism == "OAUTHBEARER" {
            // librdkafka's unsecured JWT, for development brokers.
            properties.push(("enable.sasl.oauthbearer.unsecure.jwt", "true".to_owned()));
            properties.push(("sasl.oauthbearer.config", "principal=alice".to_owned()));
        } else {
            properties.push(("sasl.username", "alice".to_owned()));
            properties.push(("sasl.password", password.to_owned()));
        }
        let spec = tls_spec(
            Arc::new(Scripted::new(Step::Ack)),
            topic,
            &proxy,
            &properties,
        );
        let running = Running::start(spec, &db);
        let stats = Arc::clone(&running.stats);
        wait_until(
            Duration::from_secs(30),
            "SASL to begin over TLS",
            || async { proxy.handshakes() > handshakes && stats.last_client_error().is_some() },
        )
        .await;
        running
            .stop()
            .await
            .unwrap_or_else(|e| panic!("{mechanism}: the client was not created: {e}"));
        let error = stats.last_client_error().unwrap_or_default();
        // librdkafka got as far as SASL with the configured mechanism.
        assert!(
            error.contains(&format!("required by mechanism {mechanism}")),
            "{mechanism}: {error}"
        );
        assert!(!error.contains(password), "{mechanism}: {error}");
        assert!(!format!("{stats:?}").contains(password));
    }
    db.cleanup().await;
}

/// librdkafka echoes the value of a property it does not know. A misspelt secret property is
/// not recognised as a secret by name, and must still not reach the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_never_show_a_value() {
    let db = TestDb::sqlite().await;
    let cluster = Cluster::new("tls.typo", 1);
    let mut spec = ListenerSpec::new(Arc::new(Scripted::new(Step::Ack)), "tls.typo", "g")
        .kafka("sasl.pasword", "typo-s3cret-value");
    spec.kafka.extend(cluster.kafka());
    let error = Listener::new(spec, Engine::new(db.store.clone()))
        .run(std::future::pending())
        .await
        .expect_err("an unknown property");
    assert!(matches!(error, ListenerError::Kafka { .. }), "{error:?}");
    let text = format!("{error} {error:?}");
    assert!(text.contains("sasl.pasword"), "{text}");
    assert!(!text.contains("typo-s3cret-value"), "{text}");
    db.cleanup().await;
}
