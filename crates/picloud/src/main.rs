//! The `picloud` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use picloud::{
    config::{Config, LogFormat},
    database::{Database, Ownership},
    http::admin::api_keys::parse_scopes,
    keys::load_keyring,
};
use picloud_manager_core::{sealed::rotate, service::api_keys::ApiKeysService};
use picloud_shared::crypto::MasterKey;
use std::process::ExitCode;

/// Counts bytes per thread so the sandbox can stop a script that hoards memory
/// through containers whose items are each within Rhai's size limits.
#[global_allocator]
static ALLOCATOR: picloud_executor_core::memory::CountingAllocator =
    picloud_executor_core::memory::CountingAllocator;

#[derive(Parser)]
#[command(
    name = "picloud",
    version,
    about = "A self-hosted backend platform in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Zero-configuration local mode (same as PICLOUD_DEV_MODE=true).
        #[arg(long)]
        dev: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Administrative tasks.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Master keys for sealed data.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random master key (base64 of 32 bytes) for PICLOUD_SECRET_KEY.
    Generate,
    /// Re-seal every sealed value under the active key (PICLOUD_SECRET_KEY), reading
    /// old values with PICLOUD_SECRET_KEYS_PREVIOUS. Idempotent and resumable.
    Rotate {
        /// Rows re-sealed per transaction.
        #[arg(long, default_value_t = 500)]
        batch_size: i64,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an API key and print it (shown once).
    CreateKey {
        #[arg(long)]
        name: String,
        /// Comma-separated scopes, e.g. app:read,script:write.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Keys {
        command: KeysCommand::Generate,
    } = cli.command
    {
        println!("{}", MasterKey::generate().to_base64());
        return Ok(());
    }
    let dev = matches!(cli.command, Command::Serve { dev: true });
    let config = Config::from_env(dev)?;
    init_tracing(config.log_format);
    match cli.command {
        Command::Serve { .. } => {
            // The key is sourced before any database work.
            let keyring = load_keyring(&config)?;
            picloud::server::serve(config, keyring).await
        }
        Command::Keys {
            command: KeysCommand::Generate,
        } => Ok(()),
        Command::Keys {
            command: KeysCommand::Rotate { batch_size },
        } => {
            let keyring = load_keyring(&config)?;
            let db = Database::open(&config, Ownership::Shared, None).await?;
            let report = rotate(&db.pool, &keyring, batch_size.max(1), None).await;
            db.close().await;
            let report = report?;
            for (table, resealed, already) in &report.tables {
                println!("{table}: {resealed} re-sealed, {already} already under the active key");
            }
            let total: u64 = report.tables.iter().map(|(_, r, _)| r).sum();
            if !report.complete {
                anyhow::bail!(
                    "rotation incomplete: {} values are still sealed under a previous key; run `picloud keys rotate` again",
                    report.remaining
                );
            }
            println!(
                "rotation complete: {total} values re-sealed under key {}; previous keys are no longer needed",
                keyring.active_id()
            );
            Ok(())
        }
        Command::Migrate => {
            let db = Database::open(&config, Ownership::Shared, None).await?;
            println!("migrations applied");
            db.close().await;
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::CreateKey { name, scopes },
        } => {
            let scopes = parse_scopes(&scopes).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
            let db = Database::open(&config, Ownership::Shared, None).await?;
            let created = ApiKeysService::new(db.pool.clone())
                .create(&name, &scopes)
                .await
                .context("creating the API key failed");
            db.close().await;
            let created = created?;
            println!("{}", created.key);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("picloud: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    // Script threads are not the runtime's: one still busy past the grace period
    // does not hold the exit, and runtime tasks get a bounded moment to end.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("picloud: {e:#}");
            ExitCode::FAILURE
        }
    }
}
