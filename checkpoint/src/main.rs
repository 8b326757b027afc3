//! The `checkpoint` command: the demo, migrations, and the version.

use std::path::PathBuf;
use std::process::ExitCode;

use checkpoint::config::{Config, DEFAULT_PATH};
use checkpoint::demo::{self, DemoOptions};
use checkpoint::store::Store;
use clap::{Parser, Subcommand};

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

/// The error and its causes on one line.
fn one_line(error: &dyn std::error::Error) -> String {
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

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Demo {
            messages,
            database,
            once,
        } => {
            let options = DemoOptions {
                messages,
                database,
                once,
                progress: true,
            };
            demo::run(&options)
                .await
                .map(drop)
                .map_err(|e| one_line(&e))
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
