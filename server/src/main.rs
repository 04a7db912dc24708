//! `quaild`: run the Quail mail access server.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use quail_server::account::{self, Credential};
use quail_server::{Config, Server};
use tracing_subscriber::EnvFilter;

/// Quail mail access server: Cap'n Proto RPC over QUIC.
#[derive(Debug, Parser)]
#[command(name = "quaild", version)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short, global = true, env = "QUAIL_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (store, certificate, credentials). Default ./quail-data.
    #[arg(long, global = true, env = "QUAIL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// UDP address to serve on (repeatable). Default 127.0.0.1:4433.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Development mode: also create a `demo` account and print how to connect.
    #[arg(long)]
    dev: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve (the default).
    Run(RunArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,fjall=warn,lsm_tree=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    let run = match cli.command {
        Some(Command::Run(args)) => args,
        None => cli.run,
    };
    if !run.listen.is_empty() {
        config.listen = run.listen;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, run.dev))
}

async fn serve(config: Config, dev: bool) -> anyhow::Result<()> {
    let running = Server::start(config.clone()).await?;
    for addr in running.addrs() {
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "serving on a non-loopback address");
        }
    }
    println!(
        "quaild {} listening on {} (QUIC, ALPN quail/1)",
        env!("CARGO_PKG_VERSION"),
        running
            .addrs()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "certificate SHA-256 fingerprint (pin this): {}",
        running.fingerprint()
    );
    println!(
        "admin credential:   {}",
        config
            .data_dir
            .join(Credential::Admin.file_name())
            .display()
    );
    println!(
        "gateway credential: {}",
        config
            .data_dir
            .join(Credential::Gateway.file_name())
            .display()
    );
    if dev {
        dev_account(&running, &config).await?;
    }
    println!("press Ctrl-C to stop");
    wait_for_signal().await;
    println!("shutting down");
    running.shutdown().await;
    Ok(())
}

/// Creates the `demo` account once, with a random password kept in the data dir.
async fn dev_account(running: &quail_server::Running, config: &Config) -> anyhow::Result<()> {
    let services = running.services();
    let path = config.data_dir.join("demo.password");
    if services.accounts.by_name("demo")?.is_none() {
        let password = account::new_secret("demo-")[..17].to_owned();
        let hash = account::hash_password(&password)?;
        services
            .mail
            .create_account("demo", hash, 0, 0, quail_server::rpc::now_ms())
            .await?;
        let _ = std::fs::remove_file(&path);
        account::write_private(&path, &format!("{password}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let password = std::fs::read_to_string(&path).unwrap_or_default();
    println!();
    println!("development account: demo / {}", password.trim());
    println!("try it (in another terminal, from the repository):");
    println!(
        "  cargo run -p quail -- login demo --password {}",
        password.trim()
    );
    println!("  cargo run -p quail -- deliver --to demo <some .eml file>");
    println!("  cargo run -p quail -- ls");
    println!();
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
