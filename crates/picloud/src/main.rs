//! The `picloud` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use picloud::{
    config::{Config, LogFormat},
    database::{Database, Ownership},
    http::admin::api_keys::parse_scopes,
};
use picloud_manager_core::service::api_keys::ApiKeysService;
use std::process::ExitCode;

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
    let dev = matches!(cli.command, Command::Serve { dev: true });
    let config = Config::from_env(dev)?;
    init_tracing(config.log_format);
    match cli.command {
        Command::Serve { .. } => picloud::server::serve(config).await,
        Command::Migrate => {
            let db = Database::open(&config, Ownership::Shared).await?;
            println!("migrations applied");
            db.close().await;
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::CreateKey { name, scopes },
        } => {
            let scopes = parse_scopes(&scopes).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
            let db = Database::open(&config, Ownership::Shared).await?;
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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("picloud: {e:#}");
            ExitCode::FAILURE
        }
    }
}
