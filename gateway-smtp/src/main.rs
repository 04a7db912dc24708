//! `quail-smtpd`: the SMTP gateway (inbound MX, outbound delivery).
//!
//! `quail-smtpd --dev` next to `quaild --dev`: listens on 127.0.0.1:2525,
//! reaches the server at 127.0.0.1:4433, and reads the development
//! certificate (for STARTTLS and to pin the server) and the gateway
//! credential from the server's data dir (`./quail-data`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use quail_smtp::server::{self, Options, Upstream};
use quail_smtp::session::Mode;

/// Quail's SMTP gateway.
#[derive(Debug, Parser)]
#[command(name = "quail-smtpd", version)]
struct Cli {
    /// A TOML file with the settings below (flags given override it).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Development defaults: 127.0.0.1:2525, the server on 127.0.0.1:4433,
    /// its certificate and gateway credential from the data dir.
    #[arg(long)]
    dev: bool,
    /// The Quail server's data dir (development certificate, gateway credential).
    #[arg(long, env = "QUAIL_DATA_DIR", default_value = "./quail-data")]
    data_dir: PathBuf,
    /// The Quail server (host:port).
    #[arg(long, default_value = "127.0.0.1:4433")]
    server: String,
    /// Where to listen for SMTP.
    #[arg(long, default_value = "127.0.0.1:2525")]
    listen: std::net::SocketAddr,
    /// Where to listen for submission (STARTTLS, then AUTH; port 587 in
    /// production).
    #[arg(long, default_value = "127.0.0.1:5587")]
    submission: std::net::SocketAddr,
    /// Where to listen for submission over implicit TLS (port 465 in
    /// production).
    #[arg(long, default_value = "127.0.0.1:5465")]
    submissions: std::net::SocketAddr,
    /// Serve no submission ports.
    #[arg(long)]
    no_submission: bool,
    /// This host's name in the greeting and in Received headers.
    #[arg(long, default_value = "localhost")]
    hostname: String,
    /// Certificate chain (PEM) for STARTTLS; default with --dev: the
    /// server's development certificate.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Connections from one address at once.
    #[arg(long, default_value_t = 20)]
    max_connections_per_ip: u32,
    /// Connections at once, from every address together.
    #[arg(long, default_value_t = quail_smtp::server::MAX_CONNECTIONS)]
    max_connections: u32,
    /// Messages one address may send per minute.
    #[arg(long, default_value_t = 600)]
    max_messages_per_minute_per_ip: u32,
    /// The DNS server for SPF, DKIM, DMARC and MX lookups (ip:port);
    /// default: the system's resolver.
    #[arg(long)]
    resolver: Option<std::net::SocketAddr>,
    /// A DNS blocklist zone to look each client's address up in (RFC
    /// 5782; repeat for more). A listing is recorded for the server's spam
    /// score; none: off.
    #[arg(long = "dnsbl", value_name = "ZONE")]
    dnsbl: Vec<String>,
    /// Do not deliver the server's outbox (another gateway does).
    #[arg(long)]
    no_outbound: bool,
    /// The port of receiving MTAs for outbound mail.
    #[arg(long, default_value_t = 25)]
    outbound_port: u16,
    /// Outbound settings from the config file (DKIM keys, limits).
    #[arg(skip)]
    outbound: quail_smtp::config::OutboundConfig,
}

/// A status line on stdout; a closed stdout (a supervisor that stopped
/// reading) is not a reason to stop serving mail.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut cli = Cli::parse();
    if let Some(path) = cli.config.clone() {
        let file = quail_smtp::config::FileConfig::load(&path)?;
        let matches = <Cli as clap::CommandFactory>::command().get_matches();
        let given = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        if !given("data_dir")
            && let Some(v) = file.data_dir
        {
            cli.data_dir = v;
        }
        if !given("server")
            && let Some(v) = file.server
        {
            cli.server = v;
        }
        if !given("listen")
            && let Some(v) = file.listen
        {
            cli.listen = v;
        }
        if !given("submission")
            && let Some(v) = file.submission
        {
            cli.submission = v;
        }
        if !given("submissions")
            && let Some(v) = file.submissions
        {
            cli.submissions = v;
        }
        if !given("hostname")
            && let Some(v) = file.hostname
        {
            cli.hostname = v;
        }
        if cli.tls_cert.is_none() {
            cli.tls_cert = file.tls_cert;
        }
        if cli.tls_key.is_none() {
            cli.tls_key = file.tls_key;
        }
        if cli.resolver.is_none() {
            cli.resolver = file.resolver;
        }
        if cli.dnsbl.is_empty() {
            cli.dnsbl = file.dnsbl.unwrap_or_default();
        }
        if !given("max_connections_per_ip")
            && let Some(v) = file.max_connections_per_ip
        {
            cli.max_connections_per_ip = v;
        }
        if !given("max_connections")
            && let Some(v) = file.max_connections
        {
            cli.max_connections = v;
        }
        if !given("max_messages_per_minute_per_ip")
            && let Some(v) = file.max_messages_per_minute_per_ip
        {
            cli.max_messages_per_minute_per_ip = v;
        }
        if let Some(o) = file.outbound {
            if o.enabled == Some(false) {
                cli.no_outbound = true;
            }
            if !given("outbound_port")
                && let Some(p) = o.port
            {
                cli.outbound_port = p;
            }
            cli.outbound = o;
        }
        anyhow::ensure!(cli.tls_cert.is_some() == cli.tls_key.is_some(), "tls_cert and tls_key go together");
    }
    let runtime = tokio::runtime::Runtime::new().context("runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data = &cli.data_dir;
    let read = |name: &str| {
        std::fs::read_to_string(data.join(name))
            .with_context(|| format!("reading {}", data.join(name).display()))
    };
    let secret = read("gateway.secret")?.trim().to_owned();
    let pin = read("tls/dev-cert.sha256")
        .ok()
        .and_then(|f| f.trim().parse().ok())
        .map_or(quail::Trust::SystemRoots, quail::Trust::Pinned);
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            use rustls_pki_types::pem::PemObject;
            let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .context("certificate PEM")?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading {}", key.display()))?;
            Some(server::tls_config(chain, key)?)
        }
        _ => {
            let cert = std::fs::read(data.join("tls/dev-cert.der"));
            let key = std::fs::read(data.join("tls/dev-key.der"));
            match (cert, key) {
                (Ok(c), Ok(k)) => Some(server::tls_config(
                    vec![rustls_pki_types::CertificateDer::from(c)],
                    rustls_pki_types::PrivateKeyDer::Pkcs8(k.into()),
                )?),
                _ if cli.dev => anyhow::bail!(
                    "no development certificate in {}; start quaild --dev first",
                    data.display()
                ),
                _ => None,
            }
        }
    };
    let verifier = match quail_smtp::auth::Verifier::new(&cli.hostname, cli.resolver) {
        Ok(v) => Some(v.with_dnsbl(cli.dnsbl.clone())),
        Err(e) => {
            tracing::warn!(error = %e, "no DNS resolver: mail is not authenticated (no Authentication-Results)");
            None
        }
    };
    let options = Options {
        verifier,
        listen: cli.listen,
        hostname: cli.hostname.clone(),
        tls,
        max_connections_per_ip: cli.max_connections_per_ip,
        max_messages_per_minute_per_ip: cli.max_messages_per_minute_per_ip,
        mode: Mode::Mx,
        implicit_tls: false,
        max_connections: cli.max_connections,
        write_timeout: quail_smtp::server::WRITE_TIMEOUT,
    };
    let starttls = options.tls.is_some();
    let backend = server::Backend::connect(Upstream { addr: cli.server.clone(), trust: pin, secret }).await?;
    let mut listeners = vec![server::start_on(options.clone(), std::sync::Arc::clone(&backend)).await?];
    say!(
        "quail-smtpd listening on {} (SMTP{}), delivering to {}",
        listeners[0].addr(),
        if starttls { ", STARTTLS" } else { "" },
        cli.server
    );
    if cli.no_submission {
        tracing::info!("submission ports off (--no-submission)");
    } else if !starttls {
        tracing::warn!("no TLS certificate: the submission ports are off (AUTH needs TLS)");
    } else {
        for (listen, implicit) in [(cli.submission, false), (cli.submissions, true)] {
            let o = Options {
                listen,
                mode: Mode::Submission,
                implicit_tls: implicit,
                verifier: None,
                ..options.clone()
            };
            let l = server::start_on(o, std::sync::Arc::clone(&backend)).await?;
            say!(
                "quail-smtpd listening on {} (submission, {})",
                l.addr(),
                if implicit { "implicit TLS" } else { "STARTTLS" }
            );
            listeners.push(l);
        }
    }
    let worker = if cli.no_outbound {
        None
    } else {
        let mut o = quail_smtp::outbound::Options::new(&cli.hostname);
        o.port = cli.outbound_port;
        o.resolver = cli.resolver;
        if let Some(n) = cli.outbound.max_concurrent {
            o.max_concurrent = n;
        }
        if let Some(n) = cli.outbound.max_per_domain {
            o.max_per_domain = n;
        }
        for k in &cli.outbound.dkim {
            o.dkim.push(quail_smtp::outbound::dkim::Key::load(&k.domain, &k.selector, &k.key)?);
        }
        let signing: Vec<String> = o.dkim.iter().map(|k| format!("{} ({})", k.domain, k.selector)).collect();
        let port = o.port;
        let w = quail_smtp::outbound::start(o, backend)?;
        say!(
            "quail-smtpd delivering outbound mail to port {port}{}",
            if signing.is_empty() {
                ", unsigned".to_owned()
            } else {
                format!(", DKIM for {}", signing.join(", "))
            }
        );
        Some(w)
    };
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    for l in listeners {
        l.stop();
    }
    if let Some(w) = worker {
        w.stop();
    }
    Ok(())
}
