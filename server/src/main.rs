//! `quaild`: run the Quail mail access server.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use quail_server::account::{self, Credential};
use quail_server::{Config, Server, tools};
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
    /// Write an account's mail as mboxrd (raw messages byte for byte). Offline.
    Export {
        /// Account name.
        #[arg(long)]
        account: String,
        /// Only this mailbox.
        #[arg(long)]
        mailbox: Option<String>,
        /// Output file (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Import mbox files (also .xz), Maildir trees or message files. Offline.
    Import {
        /// Account name.
        #[arg(long)]
        account: String,
        /// Into this mailbox (created if missing; default Inbox).
        #[arg(long)]
        mailbox: Option<String>,
        /// mbox escaping: mboxrd (default) or mboxo.
        #[arg(long, default_value = "mboxrd")]
        format: String,
        /// File or directory.
        path: PathBuf,
    },
    /// Add, list, change accounts on a stopped server's data dir. Offline.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Verify counters, indexes and blob references; --repair fixes them. Offline.
    Check {
        /// Rewrite what disagrees.
        #[arg(long)]
        repair: bool,
    },
    /// Rebuild an account's search index from its mail. Offline.
    Reindex {
        /// Account name.
        #[arg(long)]
        account: String,
    },
    /// Train the global spam model on mail known to be spam and ham
    /// (message files, Maildirs, mbox files, or folders of them). Offline.
    /// Each account's own reports and Junk moves refine it for that account.
    Train {
        /// Spam: files or folders.
        #[arg(long)]
        spam: Vec<PathBuf>,
        /// Ham (wanted mail): files or folders.
        #[arg(long)]
        ham: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Create an account (asks for its password).
    Add {
        /// Login name (the local part of its address, or the whole address).
        name: String,
        /// Read the password from the first line of stdin instead of asking.
        #[arg(long)]
        password_stdin: bool,
        /// Byte quota (0 = unlimited).
        #[arg(long, default_value_t = 0)]
        quota_bytes: u64,
        /// Message quota (0 = unlimited).
        #[arg(long, default_value_t = 0)]
        quota_messages: u64,
    },
    /// List accounts with their usage and quotas.
    List,
    /// Set an account's password (its password sessions end).
    Passwd {
        /// Login name.
        name: String,
        /// Read the password from the first line of stdin instead of asking.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set an account's quotas (0 = unlimited).
    Quota {
        /// Login name.
        name: String,
        /// Byte quota.
        #[arg(long, default_value_t = 0)]
        bytes: u64,
        /// Message quota.
        #[arg(long, default_value_t = 0)]
        messages: u64,
    },
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
        Some(Command::Export { account, mailbox, output }) => {
            return export(&config, &account, mailbox.as_deref(), output);
        }
        Some(Command::Import { account, mailbox, format, path }) => {
            return import(&config, &account, mailbox.as_deref(), &format, &path);
        }
        Some(Command::Check { repair }) => return check(&config, repair),
        Some(Command::Reindex { account }) => return reindex(&config, &account),
        Some(Command::Train { spam, ham }) => return train(&config, &spam, &ham),
        Some(Command::Account { command }) => return account_command(&config, command),
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
        running.addrs().iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    );
    println!("certificate SHA-256 fingerprint (pin this): {}", running.fingerprint());
    println!("admin credential:   {}", config.data_dir.join(Credential::Admin.file_name()).display());
    println!("gateway credential: {}", config.data_dir.join(Credential::Gateway.file_name()).display());
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
        services.mail.create_account("demo", hash, 0, 0, quail_server::rpc::now_ms()).await?;
        let _ = std::fs::remove_file(&path);
        account::write_private(&path, &format!("{password}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let password = std::fs::read_to_string(&path).unwrap_or_default();
    println!();
    println!("development account: demo / {}", password.trim());
    println!("try it (in another terminal, from the repository):");
    println!("  cargo run -p quail -- login demo --password {}", password.trim());
    println!("  cargo run -p quail -- deliver --to demo <some .eml file>");
    println!("  cargo run -p quail -- ls");
    println!();
    Ok(())
}

fn export(
    config: &Config,
    account: &str,
    mailbox: Option<&str>,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (db, mail) = tools::open(config)?;
    let accounts = account::Accounts::new(db);
    let report = match &output {
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            tools::export::export(&mail, &accounts, account, mailbox, &mut w)?
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            tools::export::export(&mail, &accounts, account, mailbox, &mut w)?
        }
    };
    eprintln!("exported {} messages ({} bytes)", report.messages, report.bytes);
    Ok(())
}

fn import(
    config: &Config,
    account: &str,
    mailbox: Option<&str>,
    format: &str,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let flavor = match format {
        "mboxrd" => tools::mbox::Flavor::Mboxrd,
        "mboxo" => tools::mbox::Flavor::Mboxo,
        other => anyhow::bail!("--format {other}: use mboxrd or mboxo"),
    };
    let (db, mail) = tools::open(config)?;
    let accounts = account::Accounts::new(db);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} messages  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let opts =
        tools::import::ImportOptions { account, path, mailbox, flavor, now_ms: quail_server::rpc::now_ms() };
    let report = runtime.block_on(tools::import::import(&mail, &accounts, &opts, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }))?;
    bar.finish_and_clear();
    println!(
        "imported {} of {} messages ({} bytes) in {:.1} s ({:.0} messages/s)",
        report.imported.len(),
        report.found,
        report.bytes,
        report.seconds,
        report.imported.len() as f64 / report.seconds.max(1e-9)
    );
    for (origin, why) in &report.failed {
        println!("  not imported: {origin}: {why}");
    }
    if !report.failed.is_empty() {
        anyhow::bail!("{} messages were not imported", report.failed.len());
    }
    Ok(())
}

fn read_password(from_stdin: bool, name: &str) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    let first =
        rpassword::prompt_password(format!("password for {name}: ")).context("reading the password")?;
    let again = rpassword::prompt_password("again: ").context("reading the password")?;
    anyhow::ensure!(first == again, "the passwords differ");
    Ok(first)
}

fn account_command(config: &Config, command: AccountCommand) -> anyhow::Result<()> {
    let store_dir = config.store_dir();
    let creating = matches!(command, AccountCommand::Add { .. });
    if creating && !store_dir.is_dir() {
        // `account add` on a fresh data dir starts the store, as quaild would.
        std::fs::create_dir_all(&store_dir).with_context(|| format!("creating {}", store_dir.display()))?;
    }
    let (db, mail) = tools::open(config)?;
    let accounts = account::Accounts::new(db);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match command {
        AccountCommand::Add { name, password_stdin, quota_bytes, quota_messages } => {
            let password = read_password(password_stdin, &name)?;
            let now = quail_server::rpc::now_ms();
            let a = runtime.block_on(tools::accounts::add(
                &mail,
                &name,
                &password,
                quota_bytes,
                quota_messages,
                now,
            ))?;
            println!("created account {} (id {})", a.name, a.id.0);
        }
        AccountCommand::List => {
            println!("{:<32} {:>10} {:>14} {:>14}", "NAME", "MESSAGES", "BYTES", "QUOTA BYTES");
            for (a, usage) in tools::accounts::list(&accounts)? {
                let quota = if a.quota_bytes == 0 { "-".to_owned() } else { a.quota_bytes.to_string() };
                println!("{:<32} {:>10} {:>14} {:>14}", a.name, usage.messages, usage.bytes, quota);
            }
        }
        AccountCommand::Passwd { name, password_stdin } => {
            let password = read_password(password_stdin, &name)?;
            runtime.block_on(tools::accounts::passwd(&accounts, &name, &password))?;
            println!("password of {name} changed");
        }
        AccountCommand::Quota { name, bytes, messages } => {
            runtime.block_on(tools::accounts::quota(&accounts, &name, bytes, messages))?;
            println!("quota of {name}: {bytes} bytes, {messages} messages (0 = unlimited)");
        }
    }
    Ok(())
}

fn reindex(config: &Config, name: &str) -> anyhow::Result<()> {
    let (db, _) = tools::open(config)?;
    let accounts = quail_server::account::Accounts::new(db.clone());
    let account = accounts.by_name(name)?.with_context(|| format!("no account {name}"))?;
    let started = std::time::Instant::now();
    let n = quail_server::mail::find::reindex(&db, account.id, &mut |line| eprintln!("{line}"))?;
    println!("reindexed {n} emails of {name} in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn train(config: &Config, spam: &[PathBuf], ham: &[PathBuf]) -> anyhow::Result<()> {
    use quail_server::filter::spam;
    if spam.is_empty() && ham.is_empty() {
        anyhow::bail!("nothing to train on: give --spam and/or --ham paths");
    }
    let (db, _) = tools::open(config)?;
    let started = std::time::Instant::now();
    for (paths, is_spam, what) in [(spam, true, "spam"), (ham, false, "ham")] {
        for path in paths {
            let found = tools::import::collect(path, tools::mbox::Flavor::Mboxrd)?;
            let total = found.len();
            let mut messages = found.into_iter().map(|f| f.raw);
            let n = spam::train_global(&db, &mut messages, is_spam, &mut |done| {
                eprint!("\rtraining {what} from {}: {done}/{total}", path.display());
            })?;
            eprintln!();
            println!("trained {n} {what} messages from {}", path.display());
        }
    }
    let snap = db.snapshot();
    let totals = spam::bayes::totals(&snap, spam::bayes::GLOBAL)?;
    println!(
        "global spam model: {} spam, {} ham ({:.1} s)",
        totals.spam,
        totals.ham,
        started.elapsed().as_secs_f64()
    );
    if totals.spam == 0 || totals.ham == 0 {
        println!("note: the classifier scores nothing until it has seen both spam and ham");
    }
    Ok(())
}

fn check(config: &Config, repair: bool) -> anyhow::Result<()> {
    let (db, _) = tools::open(config)?;
    let report = tools::check::check(&db, repair)?;
    for p in &report.problems {
        println!("problem: {p}");
    }
    println!(
        "checked {} accounts, {} emails, {} blobs: {}",
        report.accounts,
        report.emails,
        report.blobs,
        match (report.clean(), report.repaired) {
            (true, _) => "clean".to_owned(),
            (false, true) => format!("{} problems repaired", report.problems.len()),
            (false, false) => format!("{} problems (run with --repair to fix)", report.problems.len()),
        }
    );
    if !report.clean() && !report.repaired {
        std::process::exit(1);
    }
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
