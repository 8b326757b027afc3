//! The `checkpoint` command: the demo, the bench, the chaos run, a development broker, the
//! API over a database, migrations and retention. Built on the library's public API alone
//! (and `checkpoint::__private` where the bench reaches below it).

mod bench;
mod chaos;
mod demo;
mod dev_kafka;
mod files;

use std::path::PathBuf;
use std::process::ExitCode;

use checkpoint::__private::one_line;
use checkpoint::config::{Config, DEFAULT_PATH};
use checkpoint::error::Backend;
use checkpoint::retention;
use checkpoint::store::Store;
use clap::{Parser, Subcommand};

use crate::demo::DemoOptions;

/// Exactly-once Kafka event handlers, checkpointed in your own database.
#[derive(Parser)]
#[command(name = "checkpoint", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system on embedded defaults: an in-process Kafka cluster, sample orders
    /// with duplicates and poison messages, a real handler, and a SQLite checkpoint database.
    Demo {
        /// Messages to produce.
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Checkpoint database URL.
        #[arg(long, default_value = "sqlite://checkpoint-demo.db")]
        database: String,
        /// Exit after the summary instead of consuming until Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Where the HTTP API listens while the demo runs.
        #[arg(long, default_value = "127.0.0.1:9292")]
        bind: std::net::SocketAddr,
    },
    /// Measure checkpointed throughput against raw Kafka consumption, the naive
    /// check-then-insert pattern and the database's ceilings (batched inserts, bulk load), in
    /// one run.
    Bench {
        /// Messages to produce (and rows per mode).
        #[arg(long, default_value_t = 200_000)]
        messages: usize,
        /// Database to measure (repeatable). Default: a SQLite file in the temp dir and, when
        /// it answers, PostgreSQL at postgres://postgres@127.0.0.1:5432/postgres.
        #[arg(long = "database")]
        databases: Vec<String>,
        /// Modes to run, comma-separated: raw, naive, per-message, transactional, batch,
        /// transactional-batch, db-ceiling, copy-ceiling (default: all).
        #[arg(long, value_delimiter = ',')]
        modes: Vec<String>,
        /// External Kafka bootstrap servers instead of the mock cluster.
        #[arg(long)]
        brokers: Option<String>,
        /// Partitions of the benchmark topic (the mock cluster keeps about 120,000 messages
        /// per partition).
        #[arg(long, default_value_t = bench::DEFAULT_PARTITIONS)]
        partitions: i32,
        /// Run the mock cluster inside this process instead of a child process (its log of
        /// the produced messages then counts in the peak RSS column).
        #[arg(long)]
        embedded_broker: bool,
        /// Messages per batch in the batch modes.
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
        /// Partitions in flight at once in the listener modes; `naive` gets as many
        /// connections.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The mock Kafka cluster of `checkpoint bench`, in its own process: prints its bootstrap
    /// servers, serves until stdin closes.
    #[command(hide = true)]
    BenchBroker {
        /// Topic to create.
        #[arg(long)]
        topic: String,
        /// Its partitions.
        #[arg(long)]
        partitions: i32,
    },
    /// Crash-test the checkpoint: kill a consumer process with SIGKILL at random crash points
    /// (before, inside and after `consume`, after the checkpoint commit, during a rebalance),
    /// then count the demo handler's side effects: duplicates and losses per mode.
    Chaos {
        /// Kills per mode and database.
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Modes, comma-separated: per-message, transactional, batch (default: all).
        #[arg(long = "mode", value_delimiter = ',')]
        modes: Vec<String>,
        /// Database to run on (repeatable; migrated first). Default: a SQLite file in the
        /// temp dir.
        #[arg(long = "database")]
        databases: Vec<String>,
        /// Messages per mode and database.
        #[arg(long, default_value_t = 2_000)]
        messages: usize,
        /// Seed of the crash points.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// External Kafka bootstrap servers instead of the mock cluster.
        #[arg(long)]
        brokers: Option<String>,
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The consumer process `checkpoint chaos` starts and kills.
    #[command(hide = true)]
    ChaosConsumer {
        /// per-message, transactional or batch.
        #[arg(long)]
        mode: String,
    },
    /// Serve librdkafka's mock cluster as a local Kafka-protocol broker until Ctrl-C, for
    /// developing an application with no Kafka installed (messages live in memory).
    DevKafka {
        /// Port to listen on (127.0.0.1).
        #[arg(long, default_value_t = 9092)]
        port: u16,
        /// A topic to create, `NAME:PARTITIONS` (repeatable).
        #[arg(long = "topic")]
        topics: Vec<dev_kafka::TopicArg>,
    },
    /// Serve the HTTP API over a checkpoint database. Retries answer 409 here: no handler runs
    /// in this process (run the API inside your application for that).
    Api {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Address to listen on (default: `[api] bind` of the config file, else 127.0.0.1:9292).
        #[arg(long)]
        bind: Option<std::net::SocketAddr>,
    },
    /// Write `checkpoint.toml`, `.env.example` and the migrations folder for the database's
    /// backend; files that exist are reported and left alone.
    Init {
        /// Folder to write into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Database URL the files are written for (default `sqlite://checkpoint.db`).
        #[arg(long)]
        database: Option<String>,
        /// Overwrite files that differ.
        #[arg(long)]
        force: bool,
    },
    /// Copy the base migrations into your diesel migrations folder, skipping ones already there.
    CopyMigrations {
        /// Migrations folder.
        #[arg(long, default_value = "migrations")]
        dir: PathBuf,
        /// Backend to copy the migrations of.
        #[arg(long, value_enum, default_value_t = BackendArg::Sqlite)]
        backend: BackendArg,
        /// Overwrite migrations that differ.
        #[arg(long)]
        force: bool,
    },
    /// Create an empty migration `<timestamp>_<name>` (name in snake_case).
    Migration {
        /// What the migration does, e.g. `add-new-column`.
        name: String,
        /// Migrations folder.
        #[arg(long, default_value = "migrations")]
        dir: PathBuf,
    },
    /// Delete old events and failures in batches (or, with --dry-run, count them). Without
    /// an age flag, the ages of the config file's `[retention]` table apply.
    Prune {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Delete events created longer ago than this: a whole number and s, m, h, d or w
        /// (e.g. 30d).
        #[arg(long)]
        older_than: Option<String>,
        /// Delete failures created longer ago than this (same form; failures are kept
        /// unless given).
        #[arg(long)]
        failures_older_than: Option<String>,
        /// Rows per delete statement.
        #[arg(long, default_value_t = retention::DEFAULT_BATCH_SIZE)]
        batch_size: i64,
        /// Count what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Apply pending migrations.
    Migrate(DatabaseArgs),
    /// Revert the most recent migration.
    Rollback(DatabaseArgs),
    /// Show which migrations are applied.
    Status(DatabaseArgs),
    /// Print the version.
    Version,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BackendArg {
    Sqlite,
    Postgres,
    Mysql,
}

impl From<BackendArg> for Backend {
    fn from(arg: BackendArg) -> Self {
        match arg {
            BackendArg::Sqlite => Backend::Sqlite,
            BackendArg::Postgres => Backend::Postgres,
            BackendArg::Mysql => Backend::Mysql,
        }
    }
}

#[derive(clap::Args)]
struct DatabaseArgs {
    /// Database URL; default: `[database] url` of the config file, else `DATABASE_URL`.
    #[arg(long)]
    database: Option<String>,
    /// Configuration file.
    #[arg(long, default_value = DEFAULT_PATH)]
    config: PathBuf,
}

impl DatabaseArgs {
    fn url(&self) -> Result<String, String> {
        if let Some(url) = &self.database {
            return Ok(url.clone());
        }
        if self.config.exists() {
            return Config::load(&self.config)
                .map(|c| c.database.url)
                .map_err(|e| e.to_string());
        }
        std::env::var("DATABASE_URL").map_err(|_| {
            format!(
                "no database: pass --database URL, create {}, or set DATABASE_URL",
                self.config.display()
            )
        })
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Demo {
            messages,
            database,
            once,
            bind,
        } => {
            let options = DemoOptions {
                messages,
                database,
                once,
                progress: true,
                bind: Some(bind),
            };
            demo::run(&options)
                .await
                .map(drop)
                .map_err(|e| one_line(&e))
        }
        Command::BenchBroker { topic, partitions } => {
            bench::serve_broker(&topic, partitions).map_err(|e| one_line(&e))
        }
        Command::Bench {
            messages,
            databases,
            modes,
            brokers,
            partitions,
            embedded_broker,
            batch_size,
            concurrency,
            json,
        } => {
            let modes = modes
                .iter()
                .map(|m| m.parse::<bench::Mode>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| one_line(&e))?;
            let options = bench::BenchOptions {
                messages,
                databases,
                modes,
                brokers,
                // The broker's log is not the listener's memory: keep it out of the process.
                broker_exe: if embedded_broker {
                    None
                } else {
                    Some(std::env::current_exe().map_err(|e| e.to_string())?)
                },
                partitions,
                batch_size,
                concurrency: usize::from(concurrency),
                progress: true,
            };
            let report = bench::run(&options).await.map_err(|e| one_line(&e))?;
            print_result(&report, json, bench::render)
        }
        Command::Chaos {
            kills,
            modes,
            databases,
            messages,
            seed,
            brokers,
            json,
        } => {
            let modes = if modes.is_empty() {
                chaos::ChaosMode::ALL.to_vec()
            } else {
                modes
                    .iter()
                    .map(|m| m.parse())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| one_line(&e))?
            };
            let databases = if databases.is_empty() {
                let file = std::env::temp_dir().join("checkpoint-chaos.db");
                vec![format!("sqlite://{}", file.display())]
            } else {
                databases
            };
            let options = chaos::ChaosOptions {
                kills,
                modes,
                databases,
                messages,
                seed,
                brokers,
                consumer_exe: std::env::current_exe().map_err(|e| e.to_string())?,
            };
            let rows = chaos::run(&options).await.map_err(|e| one_line(&e))?;
            print_result(rows.as_slice(), json, chaos::render)
        }
        Command::ChaosConsumer { mode } => {
            let mode = mode.parse().map_err(|e| one_line(&e))?;
            chaos::consume(mode).await.map_err(|e| one_line(&e))
        }
        Command::Init {
            dir,
            database,
            force,
        } => print_reports(files::init(&dir, database.as_deref(), force)),
        Command::CopyMigrations {
            dir,
            backend,
            force,
        } => print_reports(files::copy_migrations(&dir, backend.into(), force)),
        Command::Migration { name, dir } => {
            print_reports(files::new_migration(&dir, &name).map(|r| vec![r]))
        }
        Command::Api { database, bind } => api(&database, bind).await,
        Command::DevKafka { port, topics } => {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            dev_kafka::run(addr, &topics)
                .await
                .map_err(|e| one_line(&e))
        }
        Command::Prune {
            database,
            older_than,
            failures_older_than,
            batch_size,
            dry_run,
        } => {
            prune(
                &database,
                older_than.as_deref(),
                failures_older_than.as_deref(),
                batch_size,
                dry_run,
            )
            .await
        }
        Command::Migrate(args) => {
            let store = Store::connect(&args.url()?).map_err(|e| one_line(&e))?;
            let applied = store.migrate().await.map_err(|e| one_line(&e))?;
            if applied.is_empty() {
                println!("up to date");
            }
            for version in applied {
                println!("applied  {version}");
            }
            Ok(())
        }
        Command::Rollback(args) => {
            let store = Store::connect(&args.url()?).map_err(|e| one_line(&e))?;
            match store.rollback().await.map_err(|e| one_line(&e))? {
                Some(version) => println!("reverted {version}"),
                None => println!("nothing to revert"),
            }
            Ok(())
        }
        Command::Status(args) => {
            let store = Store::connect(&args.url()?).map_err(|e| one_line(&e))?;
            for (name, applied) in store.migration_status().await.map_err(|e| one_line(&e))? {
                println!("{}  {name}", if applied { "applied" } else { "pending" });
            }
            Ok(())
        }
        Command::Version => {
            println!("checkpoint {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

async fn api(args: &DatabaseArgs, bind: Option<std::net::SocketAddr>) -> Result<(), String> {
    use checkpoint::api::{ApiState, prometheus, router, serve};
    let config = if args.config.exists() {
        Some(Config::load(&args.config).map_err(|e| one_line(&e))?)
    } else {
        None
    };
    let url = args.url()?;
    let bind = bind
        .or_else(|| config.as_ref().map(|c| c.api.bind))
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 9292)));
    let token = config
        .as_ref()
        .and_then(|c| c.api.token.clone())
        .or_else(|| {
            std::env::var("CHECKPOINT_API_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
        });
    let store = Store::connect(&url).map_err(|e| one_line(&e))?;
    store.ping().await.map_err(|e| one_line(&e))?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
    let state = ApiState::new(checkpoint::Engine::new(store))
        .token(token)
        .metrics(prometheus());
    println!(
        "API on http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    serve(listener, router(state), checkpoint::app::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn prune(
    args: &DatabaseArgs,
    older_than: Option<&str>,
    failures_older_than: Option<&str>,
    batch_size: i64,
    dry_run: bool,
) -> Result<(), String> {
    use checkpoint::store::PrunedTable;
    if !(1..=retention::MAX_BATCH_SIZE).contains(&batch_size) {
        return Err(format!(
            "--batch-size must be between 1 and {}, not {batch_size}",
            retention::MAX_BATCH_SIZE
        ));
    }
    let age = |flag: &str, text: Option<&str>| {
        text.map(|t| retention::parse_age(t).map_err(|e| format!("--{flag}: {e}")))
            .transpose()
    };
    let mut ages = vec![
        (PrunedTable::Events, age("older-than", older_than)?),
        (
            PrunedTable::Failures,
            age("failures-older-than", failures_older_than)?,
        ),
    ];
    if ages.iter().all(|(_, age)| age.is_none()) && args.config.exists() {
        let config = Config::load(&args.config).map_err(|e| one_line(&e))?;
        if let Some(retention) = config.retention {
            ages = vec![
                (PrunedTable::Events, retention.events_older_than),
                (PrunedTable::Failures, retention.failures_older_than),
            ];
        }
    }
    if ages.iter().all(|(_, age)| age.is_none()) {
        return Err(
            "nothing to prune: pass --older-than and/or --failures-older-than, or set \
             [retention] in the config file"
                .to_owned(),
        );
    }
    let store = Store::connect(&args.url()?).map_err(|e| one_line(&e))?;
    for (table, age) in ages {
        let Some(age) = age else { continue };
        let pruned = retention::prune(&store, table, age, batch_size, dry_run, &|| false)
            .await
            .map_err(|e| one_line(&e))?;
        println!("{pruned}");
    }
    Ok(())
}

/// Prints `result` as pretty JSON, or as `render` writes it.
fn print_result<T: serde::Serialize + ?Sized>(
    result: &T,
    json: bool,
    render: impl FnOnce(&T) -> String,
) -> Result<(), String> {
    if json {
        let text = serde_json::to_string_pretty(result).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print!("{}", render(result));
    }
    Ok(())
}

fn print_reports(reports: Result<Vec<files::Report>, files::CliError>) -> Result<(), String> {
    for report in reports.map_err(|e| one_line(&e))? {
        println!("{report}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
