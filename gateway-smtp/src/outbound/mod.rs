//! The outbound worker: leases due messages from the server's outbox,
//! DKIM-signs them, looks up each recipient domain's mail exchangers and
//! delivers (STARTTLS when offered), then reports every recipient's
//! outcome. The server keeps the queue and the schedule (retries, expiry,
//! bounces); the worker keeps nothing: if it dies, its leases run out and
//! another worker takes the messages.
//!
//! - [`route`] — sans-IO: MX order, reply codes, grouping by domain.
//! - [`client`] — one SMTP client transaction.
//! - [`dkim`] — signing keys.

pub mod client;
pub mod dkim;
pub mod route;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::hickory_resolver::proto::rr::RData;
use quail::{OutboundItem, OutcomeKind, RecipientOutcome};
use tokio::sync::Semaphore;

use crate::server::Backend;
use route::{MxAnswer, Route, Verdict};

/// How the worker runs.
#[derive(Debug)]
pub struct Options {
    /// Our name in EHLO.
    pub hostname: String,
    /// The port receiving MTAs listen on (25; a test uses another).
    pub port: u16,
    /// DNS server for MX and address lookups (`None`: the system's).
    pub resolver: Option<SocketAddr>,
    /// Signing keys by domain.
    pub dkim: Vec<dkim::Key>,
    /// Deliveries in flight at once.
    pub max_concurrent: usize,
    /// Deliveries in flight to one domain at once.
    pub max_per_domain: usize,
    /// How long a leased message is ours (longer than any one attempt).
    pub lease: Duration,
    /// How often to ask for due messages when there were none.
    pub poll: Duration,
    /// SMTP time limits.
    pub timeouts: client::Timeouts,
}

impl Options {
    /// Defaults for `hostname`.
    pub fn new(hostname: &str) -> Options {
        Options {
            hostname: hostname.to_owned(),
            port: 25,
            resolver: None,
            dkim: Vec::new(),
            max_concurrent: 32,
            max_per_domain: 4,
            lease: Duration::from_secs(1800),
            poll: Duration::from_secs(1),
            timeouts: client::Timeouts::default(),
        }
    }
}

/// A running worker.
#[derive(Debug)]
pub struct Running {
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops leasing (deliveries in flight are abandoned; their leases run out).
    pub fn stop(self) {
        self.task.abort();
    }
}

/// A DNS resolver through `nameserver` (`None`: the system's).
pub fn resolver(nameserver: Option<SocketAddr>) -> anyhow::Result<TokioResolver> {
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    let builder = match nameserver {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => {
            TokioResolver::builder_tokio().map_err(|e| anyhow::anyhow!("system DNS configuration: {e}"))?
        }
    };
    builder.with_options(opts).build().map_err(|e| anyhow::anyhow!("DNS resolver: {e}"))
}

struct Worker {
    options: Options,
    backend: Arc<Backend>,
    dns: TokioResolver,
    tls: Arc<rustls::ClientConfig>,
    slots: Arc<Semaphore>,
    domains: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Starts the worker against the Quail server behind `backend`.
pub fn start(options: Options, backend: Arc<Backend>) -> anyhow::Result<Running> {
    let dns = resolver(options.resolver)?;
    let slots = Arc::new(Semaphore::new(options.max_concurrent.max(1)));
    let worker = Arc::new(Worker {
        options,
        backend,
        dns,
        tls: client::opportunistic_tls(),
        slots,
        domains: Mutex::new(HashMap::new()),
    });
    Ok(Running { task: tokio::spawn(worker.run()) })
}

impl Worker {
    async fn run(self: Arc<Self>) {
        let lease = self.options.lease.as_secs().clamp(10, 3600) as u32;
        loop {
            // Lease only what there are free slots for.
            let Ok(first) = Arc::clone(&self.slots).acquire_owned().await else { return };
            let free = 1 + self.slots.available_permits() as u32;
            let leased =
                self.backend.with(|g| async move { g.lease_outbound(free.min(100), lease).await }).await;
            match leased {
                Ok(items) if !items.is_empty() => {
                    let mut permit = Some(first);
                    for item in items {
                        let slot = match permit.take() {
                            Some(p) => p,
                            None => match Arc::clone(&self.slots).acquire_owned().await {
                                Ok(p) => p,
                                Err(_) => return,
                            },
                        };
                        let me = Arc::clone(&self);
                        tokio::spawn(async move {
                            me.attempt(item).await;
                            drop(slot);
                        });
                    }
                }
                Ok(_) => {
                    drop(first);
                    tokio::time::sleep(self.options.poll).await;
                }
                Err(e) => {
                    drop(first);
                    tracing::warn!(error = %e, "leasing outbound mail failed");
                    tokio::time::sleep(self.options.poll.max(Duration::from_secs(1))).await;
                }
            }
        }
    }

    /// One attempt at one message: every domain at once (each within its
    /// own limit), then one report.
    async fn attempt(self: Arc<Self>, item: OutboundItem) {
        let signed = self.sign(&item);
        let mut tasks = Vec::new();
        for (domain, recipients) in route::by_domain(&item.recipients) {
            let (me, signed, from) = (Arc::clone(&self), Arc::clone(&signed), item.mail_from.clone());
            tasks.push(tokio::spawn(async move { me.to_domain(&domain, &from, &recipients, &signed).await }));
        }
        let budget = self.options.lease.saturating_sub(Duration::from_secs(60)).max(Duration::from_secs(5));
        let mut outcomes = Vec::new();
        let until = tokio::time::Instant::now() + budget;
        for t in tasks {
            // Out of time or crashed: those recipients stay pending and
            // are retried once the lease runs out.
            if let Ok(Ok(o)) = tokio::time::timeout_at(until, t).await {
                outcomes.extend(o);
            }
        }
        for o in &outcomes {
            tracing::info!(
                submission = item.id,
                attempt = item.attempt,
                recipient = %o.recipient,
                outcome = ?o.kind,
                reply = %o.reply,
                "outbound"
            );
        }
        // The report must arrive, or the message is sent again when the
        // lease ends: retry it for as long as the lease lasts.
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            let result = self
                .backend
                .with(|g| {
                    let o = outcomes.clone();
                    async move { g.complete_outbound(item.id, item.attempt, &o).await }
                })
                .await;
            match result {
                Ok(()) => return,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, submission = item.id, "reporting outcomes failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, submission = item.id, "outcomes not reported; the message will be retried");
                    return;
                }
            }
        }
    }

    /// The message with a DKIM signature in front, when we hold a key for
    /// the sender's domain.
    fn sign(&self, item: &OutboundItem) -> Arc<Vec<u8>> {
        let Some(key) = dkim::key_for(&self.options.dkim, &item.mail_from) else {
            return Arc::new(item.raw.clone());
        };
        match key.sign(&item.raw) {
            Ok(header) => {
                let mut out = header.into_bytes();
                out.extend_from_slice(&item.raw);
                Arc::new(out)
            }
            Err(e) => {
                tracing::warn!(error = %e, submission = item.id, "sent unsigned");
                Arc::new(item.raw.clone())
            }
        }
    }

    fn domain_slot(&self, domain: &str) -> Arc<Semaphore> {
        let mut d = self.domains.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget domains nobody is delivering to.
        if d.len() > 10_000 {
            d.retain(|_, s| Arc::strong_count(s) > 1);
        }
        Arc::clone(
            d.entry(domain.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.options.max_per_domain.max(1)))),
        )
    }

    async fn to_domain(
        &self,
        domain: &str,
        from: &str,
        recipients: &[String],
        message: &[u8],
    ) -> Vec<RecipientOutcome> {
        let outcome = |kind, reply: &str| {
            recipients
                .iter()
                .map(|r| RecipientOutcome { recipient: r.clone(), kind, reply: clip(reply.to_owned()) })
                .collect::<Vec<_>>()
        };
        let slot = self.domain_slot(domain);
        let Ok(_permit) = slot.acquire().await else {
            return outcome(OutcomeKind::TempFail, "451 4.3.0 shutting down");
        };
        let hosts: Vec<(String, Vec<IpAddr>)> = if let Some(ip) = route::domain_literal(domain) {
            vec![(domain.to_owned(), vec![ip])]
        } else {
            let answer = match self.mx(domain).await {
                Ok(a) => a,
                Err(why) => return outcome(OutcomeKind::TempFail, &why),
            };
            let route = route::route(domain, answer, &mut |s: &mut [String]| {
                use rand::seq::SliceRandom;
                s.shuffle(&mut rand::rng());
            });
            match route {
                Route::Refused(why) => return outcome(OutcomeKind::PermFail, &why),
                Route::Hosts(hosts) => {
                    let mut out = Vec::new();
                    for h in hosts {
                        match self.dns.lookup_ip(format!("{h}.")).await {
                            Ok(ips) => out.push((h, ips.iter().collect())),
                            Err(e) => tracing::debug!(host = %h, error = %e, "no address"),
                        }
                    }
                    out
                }
            }
        };
        let mut last = format!("451 4.4.4 no address for any mail exchanger of {domain}");
        for (host, ips) in &hosts {
            for ip in ips {
                let addr = SocketAddr::new(*ip, self.options.port);
                let t = client::Transaction {
                    helo: &self.options.hostname,
                    host,
                    mail_from: from,
                    recipients,
                    message,
                };
                let mut result =
                    client::deliver(addr, &t, Some(Arc::clone(&self.tls)), self.options.timeouts).await;
                if let Err(client::HostFailure(why)) = &result
                    && why.starts_with("TLS handshake")
                {
                    // Opportunistic: a broken TLS stack must not stop the mail.
                    tracing::info!(%host, %addr, %why, "retrying without STARTTLS");
                    result = client::deliver(addr, &t, None, self.options.timeouts).await;
                }
                match result {
                    Ok((outcomes, tls)) => {
                        tracing::debug!(%host, %addr, tls, "transaction done");
                        return outcomes
                            .into_iter()
                            .map(|(recipient, v, reply)| RecipientOutcome {
                                recipient,
                                kind: match v {
                                    Verdict::Delivered => OutcomeKind::Delivered,
                                    Verdict::TempFail => OutcomeKind::TempFail,
                                    Verdict::PermFail => OutcomeKind::PermFail,
                                },
                                reply: clip(format!("{host} [{}]: {reply}", addr.ip())),
                            })
                            .collect();
                    }
                    Err(client::HostFailure(why)) => {
                        tracing::info!(%host, %addr, %why, "host failed; trying the next");
                        last = format!("451 4.4.1 {host} [{}]: {why}", addr.ip());
                    }
                }
            }
        }
        outcome(OutcomeKind::TempFail, &last)
    }

    async fn mx(&self, domain: &str) -> Result<MxAnswer, String> {
        match self.dns.mx_lookup(format!("{domain}.")).await {
            Ok(lookup) => {
                let records: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(m) => Some((m.preference, m.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                Ok(if records.is_empty() { MxAnswer::NoRecords } else { MxAnswer::Records(records) })
            }
            Err(e) if e.is_nx_domain() => Ok(MxAnswer::NoDomain),
            Err(e) if e.is_no_records_found() => Ok(MxAnswer::NoRecords),
            Err(e) => Err(format!("451 4.4.3 looking up the mail exchangers of {domain}: {e}")),
        }
    }
}
/// Longest reply reported to the server (it records 1 KiB of each): a
/// remote server's reply may run to kilobytes of policy text.
const MAX_REPLY_REPORTED: usize = 1000;

/// `reply` cut to [`MAX_REPLY_REPORTED`] bytes, on a character.
fn clip(mut reply: String) -> String {
    if reply.len() > MAX_REPLY_REPORTED {
        let mut end = MAX_REPLY_REPORTED;
        while !reply.is_char_boundary(end) {
            end -= 1;
        }
        reply.truncate(end);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply of kilobytes is reported cut, on a character, to what the
    /// server records (it refused whole reports with one over 1 KiB).
    #[test]
    fn long_replies_are_cut_on_a_character() {
        let long = format!("550-5.7.1 {}", "ünïcode policy ".repeat(300));
        let cut = clip(long.clone());
        assert!(cut.len() <= MAX_REPLY_REPORTED && cut.len() >= MAX_REPLY_REPORTED - 3, "{}", cut.len());
        assert!(long.starts_with(&cut));
        assert_eq!(clip("250 ok".into()), "250 ok");
    }
}
