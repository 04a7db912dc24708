//! Wiring: open the store, load credentials and certificate, bind the QUIC
//! endpoints, serve until told to stop.
//!
//! [`Server::start`] returns a [`Running`] server whose addresses are bound
//! (port 0 works, so tests run in parallel) and which stops cleanly with
//! [`Running::shutdown`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::task::LocalPoolHandle;

use crate::account::{Credential, Credentials};
use crate::config::Config;
use crate::net::{self, tls};
use crate::rpc::Services;
use crate::store::{Db, FjallStore, Store, StoreMetrics};

/// Entry point.
#[derive(Debug)]
pub struct Server;

/// A server that is accepting connections.
#[derive(Debug)]
pub struct Running {
    addrs: Vec<SocketAddr>,
    fingerprint: String,
    data_dir: PathBuf,
    services: Arc<Services>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Opens the data dir and binds every listen address.
    pub async fn start(config: Config) -> anyhow::Result<Running> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let dir = config.store_dir();
        let store = FjallStore::open(&dir).with_context(|| format!("opening store {}", dir.display()))?;
        Self::start_on(config, Arc::new(store)).await
    }

    /// [`Server::start`] on a store opened by the caller (the data dir still
    /// holds the certificate and credentials): tests use a
    /// [`crate::store::MemStore`] to simulate power loss.
    pub async fn start_on(config: Config, store: Arc<dyn Store>) -> anyhow::Result<Running> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let db = Db::new(store);
        crate::upgrade::open(&db, &mut |line| tracing::info!("{line}"))
            .with_context(|| format!("opening the store in {}", config.store_dir().display()))?;
        if config.domains.is_empty() {
            tracing::info!(
                "domains is empty: mail to any domain reaches the account named by its local part; \
                 set domains = [\"example.org\"] in the config to accept only your own"
            );
        }
        let credentials = Credentials::load_or_create(&config.data_dir)?;
        let cert = tls::load(&config)?;
        let server_config = tls::server_config(&cert, &config.limits)?;

        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let pool = LocalPoolHandle::new(workers);
        let services = Services::new(db, credentials, config.clone());
        let (stop, _) = watch::channel(false);
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for addr in &config.listen {
            let socket = std::net::UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
            let endpoint = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(server_config.clone()),
                socket,
                quinn::default_runtime().context("no async runtime for QUIC")?,
            )
            .with_context(|| format!("QUIC endpoint on {addr}"))?;
            addrs.push(endpoint.local_addr()?);
            let mut rx = stop.subscribe();
            let shutdown = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            tasks.push(tokio::spawn(net::serve(endpoint, Arc::clone(&services), pool.clone(), shutdown)));
        }
        tasks.push(tokio::spawn(deliver_local(Arc::clone(&services), stop.subscribe())));
        Ok(Running {
            addrs,
            fingerprint: cert.fingerprint,
            data_dir: config.data_dir.clone(),
            services,
            stop,
            tasks,
        })
    }
}

impl Running {
    /// The first bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every bound address.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Hex SHA-256 of the certificate clients should pin.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The domain services (tests, tools).
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Store counters.
    pub fn store_metrics(&self) -> StoreMetrics {
        self.services.db.metrics()
    }

    /// A service credential's secret, as read from the data dir.
    pub fn secret(&self, which: Credential) -> anyhow::Result<String> {
        let path = Credentials::path(&self.data_dir, which);
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned())
    }

    /// Stops accepting, closes connections, and waits until the store is
    /// closed (so the data dir can be opened again at once).
    pub async fn shutdown(self) {
        let Running { services, stop, tasks, .. } = self;
        let _ = stop.send(true);
        for t in tasks {
            let _ = t.await;
        }
        // Connections' tasks hold the services; they end as the endpoint
        // closes. Wait for the last of them so the store is really closed.
        let mut services = services;
        for _ in 0..500 {
            match Arc::try_unwrap(services) {
                Ok(s) => {
                    drop(s);
                    return;
                }
                Err(still_shared) => services = still_shared,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!("connections still hold the store after 5 s; closing anyway");
    }
}

/// Delivers mail submitted here to accounts here once it is due (held
/// back by `sendAt`, or left over by a crash), every second until `stop`.
async fn deliver_local(services: Arc<Services>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let s = &services;
        if let Err(e) = s.mail.deliver_local_due(&s.accounts, &s.config.domains, crate::rpc::now_ms()).await {
            tracing::warn!("delivering local mail from the outbox: {e}");
        }
    }
}
