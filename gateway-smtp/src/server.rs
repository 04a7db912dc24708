//! The tokio shell around [`crate::session`]: accepts TCP connections,
//! bounds them per address, upgrades to TLS on STARTTLS, and carries out
//! the session's actions against the Quail server through the gateway
//! capability (recipient checks, durable deliveries keyed by spool id).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::session::{Action, AuthVerdict, DeliverVerdict, Envelope, Mode, RcptVerdict, Session, Settings};

/// How the gateway reaches the Quail server.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port` of the server.
    pub addr: String,
    /// How to authenticate it.
    pub trust: quail::Trust,
    /// The gateway credential.
    pub secret: String,
}

/// What one listener serves.
#[derive(Clone)]
pub struct Options {
    /// Where to listen.
    pub listen: SocketAddr,
    /// This host's name.
    pub hostname: String,
    /// STARTTLS, when a certificate is configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections from one address at once.
    pub max_connections_per_ip: u32,
    /// Messages one address may send per minute.
    pub max_messages_per_minute_per_ip: u32,
    /// SPF, DKIM, DMARC and ARC into `Authentication-Results` (`None`: not
    /// verified, no header).
    pub verifier: Option<crate::auth::Verifier>,
    /// Inbound MX (port 25) or submission (587, 465: AUTH, then anywhere).
    pub mode: Mode,
    /// TLS from the first byte (port 465); needs `tls`.
    pub implicit_tls: bool,
    /// Connections at once, from every address together: past it a new
    /// one gets `421` and is closed (each address is bounded by
    /// `max_connections_per_ip`, but addresses are many).
    pub max_connections: u32,
    /// How long one write to a client may take: a client that sends
    /// commands and never reads the replies is cut off then, and its
    /// connection freed (the read deadlines alone never fire for it).
    pub write_timeout: Duration,
}

/// Room kept under the server's message limit for the fields this gateway
/// puts in front of a message (`Received`, `Authentication-Results`): the
/// SIZE it announces and holds is the server's limit less this, so a
/// message it accepts is never refused by the server for those fields.
pub const TRACE_ROOM: u64 = 16 << 10;

/// The default of [`Options::max_connections`].
pub const MAX_CONNECTIONS: u32 = 1000;
/// The default of [`Options::write_timeout`].
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("listen", &self.listen)
            .field("hostname", &self.hostname)
            .field("tls", &self.tls.is_some())
            .field("mode", &self.mode)
            .field("implicit_tls", &self.implicit_tls)
            .finish_non_exhaustive()
    }
}

/// The connection to the Quail server, re-established when it drops.
pub struct Backend {
    upstream: Upstream,
    current: tokio::sync::Mutex<Option<(quail::Client, Arc<quail::Gateway>)>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("server", &self.upstream.addr).finish_non_exhaustive()
    }
}

impl Backend {
    /// Connects to the Quail server with the gateway credential (and
    /// reconnects later whenever the connection is lost).
    pub async fn connect(upstream: Upstream) -> anyhow::Result<Arc<Backend>> {
        let backend = Arc::new(Backend { upstream, current: tokio::sync::Mutex::new(None) });
        backend.gateway().await.context("connecting to the Quail server with the gateway credential")?;
        Ok(backend)
    }

    /// The server's limits (from its hello).
    pub async fn limits(&self) -> Result<quail::Limits, quail::Error> {
        Ok(self.gateway().await?.0.server_info().limits.clone())
    }

    async fn gateway(&self) -> Result<(quail::Client, Arc<quail::Gateway>), quail::Error> {
        let mut current = self.current.lock().await;
        if let Some((c, g)) = current.as_ref() {
            return Ok((c.clone(), Arc::clone(g)));
        }
        let client = quail::Client::connect(&self.upstream.addr, self.upstream.trust.clone()).await?;
        let gateway = Arc::new(client.gateway(&self.upstream.secret).await?);
        *current = Some((client.clone(), Arc::clone(&gateway)));
        Ok((client, gateway))
    }

    async fn forget(&self) {
        *self.current.lock().await = None;
    }

    /// Runs `f` on the gateway, reconnecting once if the connection was lost
    /// (safe: checks read, deliveries carry their idempotency key).
    pub async fn with<T, F, Fut>(&self, f: F) -> Result<T, quail::Error>
    where
        F: Fn(Arc<quail::Gateway>) -> Fut,
        Fut: std::future::Future<Output = Result<T, quail::Error>>,
    {
        for attempt in 0..2 {
            let (_, g) = self.gateway().await?;
            match f(g).await {
                Err(quail::Error::Disconnected(e)) if attempt == 0 => {
                    tracing::warn!(error = %e, "lost the Quail server; reconnecting");
                    self.forget().await;
                }
                other => return other,
            }
        }
        Err(quail::Error::Disconnected("the Quail server is unreachable".into()))
    }
}

/// Connections and recent messages per address.
#[derive(Default)]
struct PerIp {
    /// Connections open, from every address.
    total: u32,
    open: HashMap<IpAddr, u32>,
    sent: HashMap<IpAddr, VecDeque<Instant>>,
    /// `sent`'s size at which the quiet addresses are next forgotten.
    prune_at: usize,
}

/// A running listener.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting (sessions in progress end with their connections).
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Connects to the Quail server and starts listening.
pub async fn start(options: Options, upstream: Upstream) -> anyhow::Result<Running> {
    start_on(options, Backend::connect(upstream).await?).await
}

/// [`start`] on a connection already made (shared with the outbound worker).
pub async fn start_on(options: Options, backend: Arc<Backend>) -> anyhow::Result<Running> {
    anyhow::ensure!(!options.implicit_tls || options.tls.is_some(), "implicit TLS needs a certificate");
    let limits = backend.limits().await.context("the Quail server's limits")?;
    let settings = Settings {
        hostname: options.hostname.clone(),
        // What the server takes, less room for the fields added here.
        max_message_bytes: limits.max_message_bytes.saturating_sub(TRACE_ROOM).max(1024),
        max_recipients: limits.max_recipients.max(1) as usize,
        tls_available: options.tls.is_some() && !options.implicit_tls,
        mode: options.mode,
        implicit_tls: options.implicit_tls,
    };
    let listener = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("listening on {}", options.listen))?;
    let addr = listener.local_addr()?;
    let per_ip = Arc::new(Mutex::new(PerIp::default()));
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors (or another passing
                    // failure): wait a moment rather than spin on it.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let ip = peer.ip().to_canonical();
            {
                let mut p = per_ip.lock().unwrap_or_else(PoisonError::into_inner);
                let refusal = if p.total >= options.max_connections {
                    Some(&b"421 4.7.0 too many connections; try again later\r\n"[..])
                } else if p.open.get(&ip).copied().unwrap_or(0) >= options.max_connections_per_ip {
                    Some(&b"421 4.7.0 too many connections from your address\r\n"[..])
                } else {
                    None
                };
                if let Some(text) = refusal {
                    drop(p);
                    let timeout = options.write_timeout;
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let _ = tokio::time::timeout(timeout, stream.write_all(text)).await;
                    });
                    continue;
                }
                *p.open.entry(ip).or_insert(0) += 1;
                p.total += 1;
            }
            let (backend, settings, options, per_ip) =
                (Arc::clone(&backend), settings.clone(), options.clone(), Arc::clone(&per_ip));
            tokio::spawn(async move {
                if let Err(e) = connection(stream, ip, &backend, settings, &options, &per_ip).await {
                    tracing::debug!(%ip, error = %e, "session ended");
                }
                let mut p = per_ip.lock().unwrap_or_else(PoisonError::into_inner);
                p.total -= 1;
                if let Some(n) = p.open.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        p.open.remove(&ip);
                    }
                }
            });
        }
    });
    Ok(Running { addr, task })
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Gone,
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            Stream::Gone => Ok(0),
        }
    }

    /// Writes `buf` whole within `timeout`, else fails: a client that does
    /// not read its replies holds no connection past that.
    async fn write_all(&mut self, buf: &[u8], timeout: Duration) -> std::io::Result<()> {
        let write = async {
            match self {
                Stream::Plain(s) => s.write_all(buf).await,
                Stream::Tls(s) => s.write_all(buf).await,
                Stream::Gone => Ok(()),
            }
        };
        tokio::time::timeout(timeout, write).await.unwrap_or_else(|_| {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client does not read its replies"))
        })
    }
}

/// One session's loop: read, feed, act.
async fn connection(
    stream: TcpStream,
    ip: IpAddr,
    backend: &Backend,
    settings: Settings,
    options: &Options,
    per_ip: &Mutex<PerIp>,
) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let session_id = hex::encode(rand::random::<[u8; 8]>());
    let mut stream = match (&options.tls, options.implicit_tls) {
        (Some(tls), true) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(tls));
            Stream::Tls(Box::new(
                tokio::time::timeout(Duration::from_secs(30), acceptor.accept(stream))
                    .await
                    .context("TLS handshake timed out")??,
            ))
        }
        _ => Stream::Plain(stream),
    };
    let (mut session, first) = Session::new(settings, ip, session_id, Instant::now());
    // The user's session after AUTH (submission).
    let mut user: Option<quail::Session> = None;
    let mut queue: VecDeque<Action> = first.into();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Carry out what the session asked for, in order.
        let mut out = String::new();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Reply(text) => out.push_str(&text),
                Action::Close => {
                    stream.write_all(out.as_bytes(), options.write_timeout).await?;
                    return Ok(());
                }
                Action::StartTls => {
                    stream.write_all(out.as_bytes(), options.write_timeout).await?;
                    out.clear();
                    let Some(tls) = options.tls.clone() else {
                        return Ok(());
                    };
                    let Stream::Plain(tcp) = std::mem::replace(&mut stream, Stream::Gone) else {
                        return Ok(());
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    stream = Stream::Tls(Box::new(
                        tokio::time::timeout(Duration::from_secs(30), acceptor.accept(tcp))
                            .await
                            .context("TLS handshake timed out")??,
                    ));
                    queue.extend(session.tls_started());
                }
                Action::CheckRecipient(addr) => {
                    // Replies so far go out first: the check may take a moment.
                    let verdict = match backend
                        .with(|g| {
                            let a = addr.clone();
                            async move { g.check_recipient(&a).await }
                        })
                        .await
                    {
                        Ok(()) => RcptVerdict::Accept,
                        Err(quail::Error::NotFound(_)) => RcptVerdict::Unknown,
                        Err(quail::Error::OverQuota(_)) => RcptVerdict::Full,
                        Err(e) => {
                            tracing::warn!(error = %e, "recipient check failed");
                            RcptVerdict::TempFail
                        }
                    };
                    queue.extend(session.recipient_checked(verdict));
                }
                Action::Authenticate { user: name, secret } => {
                    let result = backend
                        .with(|g| {
                            let (n, s) = (name.clone(), secret.clone());
                            async move { g.login(&n, &s, ip).await }
                        })
                        .await;
                    let verdict = match result {
                        Ok(s) => {
                            user = Some(s);
                            AuthVerdict::Ok
                        }
                        Err(quail::Error::BadCredentials) => {
                            tracing::info!(%ip, user = %name, "failed SMTP AUTH");
                            AuthVerdict::Bad
                        }
                        Err(e) => {
                            tracing::info!(%ip, user = %name, error = %e, "SMTP AUTH refused for now");
                            AuthVerdict::Throttled
                        }
                    };
                    queue.extend(session.authenticated(verdict, &name));
                }
                Action::Submit(envelope, raw) => {
                    let verdict = match &user {
                        _ if !rate_ok(per_ip, ip, options.max_messages_per_minute_per_ip, Instant::now()) => {
                            DeliverVerdict::TempFail("too many messages from your address".into())
                        }
                        None => DeliverVerdict::TempFail("not logged in".into()),
                        Some(u) => submit(u, ip, &envelope, raw).await,
                    };
                    queue.extend(session.delivered(verdict));
                }
                Action::Deliver(envelope, mut raw) => {
                    if let Some(v) = &options.verifier {
                        // Verified as sent (signatures may cover any field),
                        // then results under our name that the sender wrote
                        // are removed.
                        let header = v.results(&raw, ip, &envelope.helo, &envelope.mail_from).await;
                        raw = crate::auth::strip_forged(&raw, &options.hostname);
                        raw.splice(0..0, header.into_bytes());
                    }
                    let verdict =
                        if !rate_ok(per_ip, ip, options.max_messages_per_minute_per_ip, Instant::now()) {
                            DeliverVerdict::TempFail("too many messages from your address".into())
                        } else {
                            deliver(backend, ip, &envelope, raw, session.last_spool_id()).await
                        };
                    queue.extend(session.delivered(verdict));
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(out.as_bytes(), options.write_timeout).await?;
        }
        let deadline = tokio::time::Instant::from_std(session.deadline());
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => {
                queue.extend(session.timed_out());
                continue;
            }
        };
        if n == 0 {
            return Ok(());
        }
        queue.extend(session.receive(&buf[..n], Instant::now()));
    }
}

/// Addresses whose recent messages are counted before the ones with none
/// in the last minute are forgotten.
const RATE_ADDRESSES: usize = 4096;

fn rate_ok(per_ip: &Mutex<PerIp>, ip: IpAddr, per_minute: u32, now: Instant) -> bool {
    let minute = Duration::from_secs(60);
    let mut p = per_ip.lock().unwrap_or_else(PoisonError::into_inner);
    if p.sent.len() >= p.prune_at.max(RATE_ADDRESSES) {
        // Else every address that ever sent would stay a key. Next when
        // the table has doubled, so a burst from many costs no scan each.
        p.sent.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) <= minute));
        p.prune_at = 2 * p.sent.len();
    }
    let q = p.sent.entry(ip).or_default();
    while q.front().is_some_and(|t| now.duration_since(*t) > minute) {
        q.pop_front();
    }
    if q.len() as u32 >= per_minute {
        return false;
    }
    q.push_back(now);
    true
}

async fn deliver(
    backend: &Backend,
    ip: IpAddr,
    envelope: &Envelope,
    raw: Vec<u8>,
    spool_id: String,
) -> DeliverVerdict {
    let env = quail::Envelope {
        mail_from: envelope.mail_from.clone(),
        rcpt_to: envelope.rcpt_to.clone(),
        remote_ip: ip.to_string(),
        helo: envelope.helo.clone(),
        tls: envelope.tls,
    };
    let raw = Arc::new(raw);
    let result = backend
        .with(|g| {
            let (env, raw, key) = (env.clone(), Arc::clone(&raw), spool_id.clone());
            async move { g.deliver_once(&env, &raw, Some(key.as_bytes())).await }
        })
        .await;
    match result {
        Ok(results) => {
            let stored = results.iter().filter(|r| r.outcome.is_ok()).count();
            if stored == results.len() {
                DeliverVerdict::Stored(spool_id)
            } else if stored > 0 {
                // One reply answers for every recipient: a 250 would lose
                // the copies that were refused (a mailbox that filled up,
                // or an account removed, since its RCPT). The sender
                // retries, and those stored now may get a second copy: a
                // duplicate, never a loss.
                tracing::warn!(stored, recipients = results.len(), "delivered to some recipients only");
                DeliverVerdict::TempFail("not every recipient could take the message now".into())
            } else if results
                .iter()
                .all(|r| matches!(r.outcome, Err(quail::Error::NotFound(_) | quail::Error::Rejected(_))))
            {
                DeliverVerdict::Rejected("no recipient accepted the message".into())
            } else {
                DeliverVerdict::TempFail("the message could not be stored now".into())
            }
        }
        Err(quail::Error::Rejected(why)) => DeliverVerdict::Rejected(why),
        Err(quail::Error::LimitExceeded(why)) => DeliverVerdict::Rejected(why),
        Err(e) => {
            tracing::warn!(error = %e, "delivery failed");
            DeliverVerdict::TempFail("the mail store is unavailable".into())
        }
    }
}

/// Submits a message from an authenticated user: into the outbox (and a
/// copy into Sent), durably, before the 250.
async fn submit(user: &quail::Session, ip: IpAddr, envelope: &Envelope, raw: Vec<u8>) -> DeliverVerdict {
    let env = quail::Envelope {
        mail_from: envelope.mail_from.clone(),
        rcpt_to: envelope.rcpt_to.clone(),
        remote_ip: ip.to_string(),
        helo: envelope.helo.clone(),
        tls: envelope.tls,
    };
    match user.submit(&raw, &env, None).await {
        Ok(s) => DeliverVerdict::Stored(format!("submission {}", s.id)),
        Err(
            quail::Error::Forbidden(why)
            | quail::Error::Rejected(why)
            | quail::Error::InvalidInput(why)
            | quail::Error::LimitExceeded(why),
        ) => DeliverVerdict::Rejected(why),
        // Throttled (the account's sending limit) or a scanner down.
        Err(quail::Error::Unavailable(why)) => DeliverVerdict::TempFail(why),
        Err(e) => {
            tracing::warn!(error = %e, "submission failed");
            DeliverVerdict::TempFail("the mail store is unavailable".into())
        }
    }
}

/// A rustls server configuration from a DER certificate chain and key.
pub fn tls_config(
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("certificate and key")?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message-rate table forgets the addresses with nothing in the
    /// last minute as it grows (when it has doubled since it last did, so
    /// a burst from many addresses costs no scan per message), and still
    /// counts the others.
    #[test]
    fn the_rate_table_forgets_quiet_addresses() {
        let per_ip = Mutex::new(PerIp::default());
        let t0 = Instant::now();
        let addr = |i: u32| IpAddr::from(i.to_be_bytes());
        for i in 0..20_000u32 {
            assert!(rate_ok(&per_ip, addr(i), 2, t0));
        }
        // A minute later, as many new addresses again and more.
        let later = t0 + Duration::from_secs(61);
        for i in 100_000..140_000u32 {
            assert!(rate_ok(&per_ip, addr(i), 2, later));
        }
        {
            let p = per_ip.lock().expect("lock");
            assert_eq!(p.sent.len(), 40_000, "only the last minute's addresses are kept");
            assert!(!p.sent.contains_key(&addr(0)));
        }
        let busy = addr(100_000);
        assert!(rate_ok(&per_ip, busy, 2, later));
        assert!(!rate_ok(&per_ip, busy, 2, later), "a busy address is still counted");
    }
}
