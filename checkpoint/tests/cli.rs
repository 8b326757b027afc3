//! The `checkpoint` binary as a user runs it: exit codes, one-line errors, the demo.

use std::process::{Command, Output};

fn checkpoint(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .output()
        .expect("run checkpoint")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = checkpoint(&["version"], dir.path());
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("checkpoint {}", env!("CARGO_PKG_VERSION"))
    );
    for command in [
        "init",
        "copy-migrations",
        "migration",
        "demo",
        "chaos",
        "dev-kafka",
        "bench",
        "prune",
        "migrate",
        "rollback",
        "status",
        "version",
    ] {
        let out = checkpoint(&[command, "--help"], dir.path());
        assert!(out.status.success(), "{command} --help");
        assert!(
            text(&out.stdout).contains("Usage: checkpoint"),
            "{command} --help"
        );
    }
}

#[test]
fn migrate_status_rollback_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = ["--database", "sqlite://cp.db"];
    let out = checkpoint(&[&["migrate"][..], &db].concat(), dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("applied  "),
        "{}",
        text(&out.stdout)
    );
    let out = checkpoint(&[&["migrate"][..], &db].concat(), dir.path());
    assert_eq!(text(&out.stdout).trim(), "up to date");
    let out = checkpoint(&[&["status"][..], &db].concat(), dir.path());
    assert!(
        text(&out.stdout).starts_with("applied  "),
        "{}",
        text(&out.stdout)
    );
    // Three migrations on SQLite: the newest is reverted first.
    for _ in 0..3 {
        let out = checkpoint(&[&["rollback"][..], &db].concat(), dir.path());
        assert!(
            text(&out.stdout).starts_with("reverted "),
            "{}",
            text(&out.stdout)
        );
    }
    let out = checkpoint(&[&["status"][..], &db].concat(), dir.path());
    assert!(
        text(&out.stdout).starts_with("pending  "),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn errors_are_one_line_and_exit_non_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: [(&[&str], &str); 3] = [
        (
            &["migrate", "--database", "oracle://db"],
            "error: invalid database URL `oracle://db`",
        ),
        (
            &["migrate"],
            "error: no database: pass --database URL, create checkpoint.toml, or set DATABASE_URL",
        ),
        (
            &["migrate", "--database", "postgres://root@127.0.0.1:1/test"],
            "error: postgres database unavailable",
        ),
    ];
    for (args, expected) in cases {
        let out = checkpoint(args, dir.path());
        assert!(!out.status.success(), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    }
    std::fs::write(dir.path().join("checkpoint.toml"), "[database]\nurl = 3\n").expect("write");
    let out = checkpoint(&["status"], dir.path());
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(
            "error: checkpoint.toml: database.url: expected a string, found integer `3` (line 2)"
        ),
        "{stderr}"
    );
}

#[test]
fn the_demo_runs_once_and_adds_fresh_events_on_every_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = [
        "demo",
        "--once",
        "--messages",
        "400",
        "--database",
        "sqlite://demo.db",
        "--bind",
        "127.0.0.1:0",
    ];
    let first = checkpoint(&args, dir.path());
    assert!(first.status.success(), "{}", text(&first.stderr));
    let stdout = text(&first.stdout);
    assert!(
        stdout.starts_with("API on http://127.0.0.1:"),
        "the demo serves the API: {stdout}"
    );
    assert!(
        stdout.contains("/health/ready") && stdout.contains("/metrics"),
        "the demo prints where its health checks and metrics are: {stdout}"
    );
    // The figure right after a summary label.
    let line = |name: &str, out: &str| -> String {
        out.lines()
            .find_map(|l| l.trim_start().strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default()
            .to_owned()
    };
    // 400 messages: 4 not JSON, 16 byte-identical repeats, 1 order without a customer. One
    // repeat is of that failing order: not a stored event, so it is consumed, fails again and
    // updates the same failure row. 379 + 15 + 6 = 400.
    assert_eq!(line("consumed", &stdout), "400", "{stdout}");
    assert_eq!(line("acknowledged", &stdout), "379", "{stdout}");
    assert_eq!(line("duplicates skipped", &stdout), "15", "{stdout}");
    assert_eq!(line("failures recorded", &stdout), "6", "{stdout}");
    assert!(
        stdout.contains("database now holds  379 events and 5 failures"),
        "{stdout}"
    );
    let second = checkpoint(&args, dir.path());
    assert!(second.status.success(), "{}", text(&second.stderr));
    let stdout = text(&second.stdout);
    assert_eq!(line("acknowledged", &stdout), "379", "{stdout}");
    // Fresh ids: the events add up, and so does the order without a customer; the 4 poison
    // payloads are byte-identical to the first run's and update their failure rows.
    assert!(
        stdout.contains("database now holds  758 events and 6 failures"),
        "{stdout}"
    );
}

/// `checkpoint chaos` as a user runs it: its consumer processes are the same binary, killed
/// at the crash points; the JSON rows count the kills and find nothing duplicated or lost.
#[test]
fn chaos_kills_its_consumer_and_counts_side_effects() {
    chaos_run("transactional");
    let dir = tempfile::tempdir().expect("temp dir");
    let wrong = checkpoint(&["chaos", "--mode", "sometimes"], dir.path());
    assert!(!wrong.status.success());
    assert!(
        text(&wrong.stderr).contains("unknown mode"),
        "{}",
        text(&wrong.stderr)
    );
}

/// The same with transactional batches, which the demo handler takes through its
/// `consume_batch`.
#[test]
fn chaos_kills_batch_consumers_inside_consume_batch() {
    chaos_run("batch");
}

/// Runs `checkpoint chaos` with four kills in `mode` on a SQLite file and checks its report:
/// four kills, every message, nothing duplicated or lost.
fn chaos_run(mode: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = format!("sqlite://{}", dir.path().join("chaos.db").display());
    let out = checkpoint(
        &[
            "chaos",
            "--kills",
            "4",
            "--messages",
            "300",
            "--mode",
            mode,
            "--seed",
            "3",
            "--database",
            &database,
            "--json",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON rows");
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["mode"], mode);
    let report = &row["report"];
    let kills: u64 = report["kills"]
        .as_object()
        .expect("kills by point")
        .values()
        .filter_map(serde_json::Value::as_u64)
        .sum();
    assert_eq!(kills, 4, "{report}");
    assert_eq!(report["messages"], 300);
    assert_eq!(report["duplicates"], serde_json::json!({}), "{report}");
    assert_eq!(report["lost"], serde_json::json!([]), "{report}");
}

/// `checkpoint prune` as a user runs it: a dry run counts, the real run deletes the old
/// events only, failures are kept unless asked for, and a prune with no age is refused.
#[test]
fn prune_deletes_old_events_in_batches_and_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("cp.db").display());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = checkpoint::Store::connect(&url).expect("store");
        store.migrate().await.expect("migrate");
        for (i, days) in [(0, 40), (1, 40), (2, 40), (3, 1)] {
            let checksum = format!("event-{i}");
            let row = checkpoint::store::NewEvent {
                topic: "orders",
                group_id: "billing",
                partition: 0,
                offset: i,
                key: None,
                checksum: &checksum,
                entity_id: None,
                event_time: None,
                event_type: None,
                event_version: None,
                payload: b"{}",
                created_at: Some((chrono::Utc::now() - chrono::Duration::days(days)).naive_utc()),
            };
            store.insert_event(&row).await.expect("insert");
        }
    });
    let db = ["--database", url.as_str()];
    let dry = checkpoint(
        &[&["prune", "--older-than", "30d", "--dry-run"][..], &db].concat(),
        dir.path(),
    );
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let said = lines(&dry);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].starts_with("events would delete 3 rows created before "),
        "{said:?}"
    );
    let real = checkpoint(
        &[
            &["prune", "--older-than", "30d", "--batch-size", "2"][..],
            &db,
        ]
        .concat(),
        dir.path(),
    );
    assert!(real.status.success(), "{}", text(&real.stderr));
    assert!(lines(&real)[0].starts_with("events deleted 3 rows created before "));
    let again = checkpoint(
        &[&["prune", "--older-than", "30d"][..], &db].concat(),
        dir.path(),
    );
    assert!(lines(&again)[0].starts_with("events deleted 0 rows"));
    let left = runtime.block_on(async {
        let store = checkpoint::Store::connect(&url).expect("store");
        store
            .list_events(&Default::default())
            .await
            .expect("list")
            .into_iter()
            .map(|e| e.checksum)
            .collect::<Vec<_>>()
    });
    assert_eq!(left, ["event-3"]);

    let nothing = checkpoint(&[&["prune"][..], &db].concat(), dir.path());
    assert!(!nothing.status.success());
    assert!(
        text(&nothing.stderr).contains("nothing to prune"),
        "{}",
        text(&nothing.stderr)
    );
    let wrong = checkpoint(
        &[&["prune", "--older-than", "30 days"][..], &db].concat(),
        dir.path(),
    );
    assert!(!wrong.status.success());
    assert!(
        text(&wrong.stderr).contains("--older-than"),
        "{}",
        text(&wrong.stderr)
    );
}

fn lines(out: &Output) -> Vec<String> {
    text(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn init_twice_changes_nothing_the_second_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = ["init", "--database", "postgres://app@db:5432/orders"];
    let first = checkpoint(&args, dir.path());
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(
        lines(&first),
        [
            "create ./checkpoint.toml",
            "create ./.env.example",
            "create ./migrations/2026-11-27-000001_create_checkpoint_tables",
            "create ./migrations/2026-11-28-000001_drop_group_id_index",
            "create ./migrations/2026-11-29-000001_create_checkpoint_attempts",
            "create ./migrations/2026-11-30-000001_index_created_at"
        ]
    );
    let config = std::fs::read_to_string(dir.path().join("checkpoint.toml")).expect("config");
    assert!(
        config.contains("${DATABASE_URL:-postgres://app@db:5432/orders}"),
        "{config}"
    );
    let up = std::fs::read_to_string(
        dir.path()
            .join("migrations/2026-11-27-000001_create_checkpoint_tables/up.sql"),
    )
    .expect("up");
    assert!(up.contains("BIGSERIAL"), "the PostgreSQL migration");
    // A changed file is reported and kept.
    std::fs::write(dir.path().join(".env.example"), "mine\n").expect("edit");
    let second = checkpoint(&args, dir.path());
    assert_eq!(
        lines(&second),
        [
            "identical ./checkpoint.toml",
            "exists ./.env.example",
            "identical ./migrations/2026-11-27-000001_create_checkpoint_tables",
            "identical ./migrations/2026-11-28-000001_drop_group_id_index",
            "identical ./migrations/2026-11-29-000001_create_checkpoint_attempts",
            "identical ./migrations/2026-11-30-000001_index_created_at"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join(".env.example")).expect("env"),
        "mine\n"
    );
    let forced = checkpoint(
        &[
            "init",
            "--database",
            "postgres://app@db:5432/orders",
            "--force",
        ],
        dir.path(),
    );
    assert_eq!(lines(&forced)[1], "overwrite ./.env.example");
}

#[test]
fn copy_migrations_skips_existing_and_migration_names_are_snake_case() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = checkpoint(&["copy-migrations", "--backend", "mysql"], dir.path());
    assert_eq!(
        lines(&first),
        [
            "create migrations/2026-11-27-000001_create_checkpoint_tables",
            "create migrations/2026-11-29-000001_create_checkpoint_attempts",
            "create migrations/2026-11-30-000001_index_created_at"
        ]
    );
    let again = checkpoint(&["copy-migrations", "--backend", "mysql"], dir.path());
    assert_eq!(
        lines(&again),
        [
            "identical migrations/2026-11-27-000001_create_checkpoint_tables",
            "identical migrations/2026-11-29-000001_create_checkpoint_attempts",
            "identical migrations/2026-11-30-000001_index_created_at"
        ]
    );
    let other = checkpoint(&["copy-migrations", "--backend", "sqlite"], dir.path());
    assert_eq!(
        lines(&other),
        [
            "exists migrations/2026-11-27-000001_create_checkpoint_tables",
            "exists migrations/2026-11-29-000001_create_checkpoint_attempts",
            "exists migrations/2026-11-30-000001_index_created_at"
        ],
        "a different migration is left alone"
    );
    let created = checkpoint(&["migration", "add-new-column-"], dir.path());
    assert!(created.status.success(), "{}", text(&created.stderr));
    let line = lines(&created).remove(0);
    assert!(
        line.starts_with("create migrations/20") && line.ends_with("_add_new_column"),
        "{line}"
    );
    let bad = checkpoint(&["copy-migrations", "--backend", "oracle"], dir.path());
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("invalid value 'oracle'"),
        "{}",
        text(&bad.stderr)
    );
}

/// `migrate`, `status` and `rollback` through the binary on a server database. Under CI an
/// unreachable server fails the test.
fn migrate_on_server(
    admin_var: &str,
    default_admin: &str,
    url_for: impl Fn(&str) -> (String, String, String),
) {
    let admin = std::env::var(admin_var).unwrap_or_else(|_| default_admin.to_owned());
    let name = format!(
        "cp_cli_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    let (create, drop_sql, url) = url_for(&name);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ready = runtime.block_on(async {
        use diesel_async::{
            AsyncConnection, AsyncMysqlConnection, AsyncPgConnection, SimpleAsyncConnection,
        };
        if admin.starts_with("postgres") {
            let mut c = AsyncPgConnection::establish(&admin)
                .await
                .map_err(|e| e.to_string())?;
            c.batch_execute(&create).await.map_err(|e| e.to_string())
        } else {
            let mut c = AsyncMysqlConnection::establish(&admin)
                .await
                .map_err(|e| e.to_string())?;
            c.batch_execute(&create).await.map_err(|e| e.to_string())
        }
    });
    if let Err(error) = ready {
        assert!(
            std::env::var_os("CI").is_none(),
            "{admin} unreachable under CI: {error}"
        );
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED: {admin} unreachable ({error})");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |cmd: &str| checkpoint(&[cmd, "--database", &url], dir.path());
    let migrated = run("migrate");
    let expected: &[&str] = if admin.starts_with("postgres") {
        &[
            "applied 20261127000001",
            "applied 20261128000001",
            "applied 20261129000001",
            "applied 20261130000001",
        ]
    } else {
        &[
            "applied 20261127000001",
            "applied 20261129000001",
            "applied 20261130000001",
        ]
    };
    assert_eq!(lines(&migrated), expected, "{}", text(&migrated.stderr));
    assert_eq!(lines(&run("migrate")), ["up to date"]);
    assert!(
        lines(&run("status"))
            .iter()
            .all(|l| l.starts_with("applied"))
    );
    for _ in expected {
        assert!(lines(&run("rollback"))[0].starts_with("reverted"));
    }
    assert!(
        lines(&run("status"))
            .iter()
            .all(|l| l.starts_with("pending"))
    );
    assert_eq!(lines(&run("rollback")), ["nothing to revert"]);
    runtime.block_on(async {
        use diesel_async::{
            AsyncConnection, AsyncMysqlConnection, AsyncPgConnection, SimpleAsyncConnection,
        };
        if admin.starts_with("postgres") {
            if let Ok(mut c) = AsyncPgConnection::establish(&admin).await {
                let _ = c.batch_execute(&drop_sql).await;
            }
        } else if let Ok(mut c) = AsyncMysqlConnection::establish(&admin).await {
            let _ = c.batch_execute(&drop_sql).await;
        }
    });
}

#[test]
fn migrate_status_rollback_on_postgres() {
    let admin = std::env::var("CHECKPOINT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    migrate_on_server(
        "CHECKPOINT_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
        |schema| {
            let separator = if admin.contains('?') { '&' } else { '?' };
            (
                format!("CREATE SCHEMA {schema}"),
                format!("DROP SCHEMA {schema} CASCADE"),
                // Over TLS, as a user of a managed database runs it.
                format!("{admin}{separator}options=-c%20search_path%3D{schema}&sslmode=require"),
            )
        },
    );
}

#[test]
fn migrate_status_rollback_on_mariadb() {
    let admin = std::env::var("CHECKPOINT_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or_else(|| admin.clone());
    migrate_on_server(
        "CHECKPOINT_TEST_MYSQL_URL",
        "mysql://root@127.0.0.1:3306/test",
        |database| {
            (
                format!("CREATE DATABASE {database}"),
                format!("DROP DATABASE {database}"),
                format!("{base}/{database}"),
            )
        },
    );
}

#[test]
fn the_api_command_serves_the_database() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().expect("temp dir");
    assert!(
        checkpoint(&["migrate", "--database", "sqlite://api.db"], dir.path())
            .status
            .success()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .args([
            "api",
            "--database",
            "sqlite://api.db",
            "--bind",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start api");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address line");
    let addr = line
        .trim()
        .strip_prefix("API on http://")
        .expect("address")
        .to_owned();
    let get = |path: &str| {
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        response
    };
    let ping = get("/ping");
    let events = get("/v1/events?limit=5");
    let bad = get("/v1/events?limit=-1");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ping.starts_with("HTTP/1.1 200") && ping.ends_with("PONG"),
        "{ping}"
    );
    assert!(
        events.starts_with("HTTP/1.1 200") && events.ends_with("[]"),
        "{events}"
    );
    assert!(
        bad.starts_with("HTTP/1.1 400") && bad.contains(r#""error":true"#),
        "{bad}"
    );
}

/// A hand-written handler registered as `orders`, the name `init`'s configuration uses.
struct Orders;

impl checkpoint::Handler for Orders {
    fn name(&self) -> &str {
        "orders"
    }

    fn consume<'a>(
        &'a self,
        message: &'a checkpoint::Message,
        _ctx: &'a mut checkpoint::Context<'_>,
    ) -> checkpoint::handler::BoxFuture<'a, Result<checkpoint::Outcome, checkpoint::HandlerError>>
    {
        Box::pin(async move {
            let id = String::from_utf8_lossy(&message.payload).into_owned();
            Ok(checkpoint::Outcome::ack(id, chrono::Utc::now()))
        })
    }
}

/// The README's path on a laptop with no Kafka: `checkpoint init`, then `checkpoint
/// dev-kafka`, then an App built from `init`'s configuration consumes from it. SIGTERM stops
/// `dev-kafka` cleanly.
#[test]
fn an_app_from_init_consumes_from_dev_kafka() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("temp dir");
    let out = checkpoint(&["init"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut broker = Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .args([
            "dev-kafka",
            "--port",
            &port.to_string(),
            "--topic",
            "orders:3",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start dev-kafka");
    let mut stdout = BufReader::new(broker.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    assert_eq!(
        first.trim(),
        format!("Kafka (librdkafka mock cluster) on 127.0.0.1:{port}")
    );
    let servers = format!("127.0.0.1:{port}");
    // Clients reconnect to what the cluster advertises: it must be dev-kafka's own port, not
    // the mock cluster's (which would work here only because it is on the same host).
    let advertised: Vec<(String, i32)> = {
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .create()
            .expect("a metadata client");
        let metadata = consumer
            .fetch_metadata(Some("orders"), std::time::Duration::from_secs(10))
            .expect("metadata through dev-kafka");
        metadata
            .brokers()
            .iter()
            .map(|b| (b.host().to_owned(), b.port()))
            .collect()
    };
    assert_eq!(advertised, [("127.0.0.1".to_owned(), i32::from(port))]);
    let database = format!("sqlite://{}", dir.path().join("checkpoint.db").display());
    let text_config =
        std::fs::read_to_string(dir.path().join("checkpoint.toml")).expect("checkpoint.toml");
    let mut config =
        checkpoint::config::Config::parse_with_env(&text_config, "checkpoint.toml", &|name| {
            match name {
                "KAFKA_BROKERS" => Some(servers.clone()),
                "DATABASE_URL" => Some(database.clone()),
                _ => None,
            }
        })
        .expect("init's configuration parses");
    // The API is not what this test is about, and its port may be taken.
    config.api.enabled = false;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let consumed = runtime.block_on(async {
        let produced: Vec<(i32, String, String)> = (0..30)
            .map(|i| (i % 3, format!("k-{i}"), format!("order-{i}")))
            .collect();
        checkpoint::testing::produce(&servers, "orders", produced, || {})
            .await
            .expect("produced through dev-kafka");
        let app = checkpoint::App::builder()
            .handler(Orders)
            .config(config)
            .build()
            .await
            .expect("app");
        let store = app.engine().store().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut consumed = 0;
        while std::time::Instant::now() < deadline {
            consumed = store
                .list_events(&checkpoint::store::ListQuery {
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .expect("events")
                .len();
            if consumed == 30 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let _ = stop.send(());
        running.await.expect("app task").expect("app ran");
        consumed
    });
    let term = Command::new("kill")
        .args(["-TERM", &broker.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let status = broker.wait().expect("dev-kafka exits");
    assert_eq!(consumed, 30, "events stored from dev-kafka");
    assert!(status.success(), "dev-kafka after SIGTERM: {status}");
}
