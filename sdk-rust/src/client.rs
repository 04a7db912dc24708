//! The connection: QUIC + capnp-rpc on a thread of its own.
//!
//! capnp-rpc objects are `!Send`, but SDK users want handles they can share
//! across tasks and threads. So each [`Client`] owns one thread running a
//! single-threaded tokio runtime and a `LocalSet`: the QUIC connection, the
//! RPC system and every capability live there. Public methods send a job
//! (a closure that makes the RPC call) over a channel and await its answer
//! on a oneshot. The thread ends when the last handle is dropped.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty::VatNetwork};
use futures::io::{BufReader, BufWriter};
use quail_protocol::quail_capnp::{admin, gateway, quail, session, watch_handle};
use quail_protocol::{PROTOCOL_VERSION, StreamKind, close_code, limits};
use rustls::pki_types::ServerName;
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::error::{Error, Result};
use crate::service::{Admin, Gateway};
use crate::session::Session;
use crate::trust::{self, Trust};
use crate::types::ServerInfo;
use crate::wire;

/// Default keep-alive interval: a ping every few seconds keeps NAT
/// bindings and lets a dead server be noticed quickly (see `IDLE_TIMEOUT`).
pub const KEEP_ALIVE: Duration = Duration::from_secs(4);
/// Default idle timeout: a server silent this long (no answer to three
/// keep-alives) is taken for dead and every call in flight fails with
/// `Disconnected`.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(12);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;
type Job = Box<dyn FnOnce(Rc<Conn>) -> LocalFuture + Send>;

/// A capability held on the connection thread, named by a number.
#[derive(Clone)]
pub(crate) enum Cap {
    Session(session::Client),
    Admin(admin::Client),
    Gateway(gateway::Client),
    /// Held, never called: holding it keeps the watch.
    Watch(#[allow(dead_code)] watch_handle::Client),
}

/// State on the connection thread.
pub(crate) struct Conn {
    bootstrap: quail::Client,
    endpoint: quinn::Endpoint,
    quic: quinn::Connection,
    caps: RefCell<HashMap<u64, Cap>>,
    next_cap: Cell<u64>,
}

impl Conn {
    /// Opens a bulk stream and sends its `BulkRequest` (`token` from `offset`).
    async fn bulk_request(
        &self,
        token: &[u8],
        offset: u64,
    ) -> Result<(tokio_util::compat::Compat<quinn::SendStream>, BulkReader)> {
        use futures::AsyncWriteExt;
        use quail_protocol::quail_capnp::bulk_request;
        let (send, recv) = self.quic.open_bi().await.map_err(connection_error)?;
        let mut writer = send.compat_write();
        writer.write_all(&[StreamKind::Bulk.tag()]).await.map_err(bulk_broke)?;
        let mut request = capnp::message::Builder::new_default();
        {
            let mut r = request.init_root::<bulk_request::Builder<'_>>();
            r.set_token(token);
            r.set_offset(offset);
        }
        capnp_futures::serialize::write_message(&mut writer, &request)
            .await
            .map_err(|e| Error::Disconnected(format!("bulk stream: {e}")))?;
        Ok((writer, BufReader::new(recv.compat())))
    }

    /// Sends `bytes[offset..]` of the upload `token` names on a new bulk
    /// stream, counting what is written into `written`; waits for the
    /// server's answer (for a blob: once it is durable).
    pub(crate) async fn upload_from(
        &self,
        token: &[u8],
        offset: u64,
        bytes: &[u8],
        written: &std::sync::atomic::AtomicU64,
    ) -> Result<()> {
        use futures::AsyncWriteExt;
        let (mut writer, mut reader) = self.bulk_request(token, offset).await?;
        let start = (offset as usize).min(bytes.len());
        for piece in bytes[start..].chunks(256 * 1024) {
            writer.write_all(piece).await.map_err(bulk_broke)?;
            written.fetch_add(piece.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        writer.close().await.map_err(bulk_broke)?;
        let stored = bulk_response(&mut reader).await?;
        if stored != bytes.len() as u64 {
            return Err(Error::Protocol(format!(
                "the server stored {stored} of {} uploaded bytes",
                bytes.len()
            )));
        }
        Ok(())
    }

    /// How many bytes of the upload `token` names the server holds.
    pub(crate) async fn upload_held(&self, token: &[u8]) -> Result<u64> {
        let (length, _) = self.open_download(token, u64::MAX).await?;
        Ok(length)
    }

    /// Opens a bulk stream for the download `token` names, starting
    /// `offset` bytes in; returns how many bytes follow and the reader.
    pub(crate) async fn open_download(&self, token: &[u8], offset: u64) -> Result<(u64, BulkReader)> {
        use futures::AsyncWriteExt;
        let (mut writer, mut reader) = self.bulk_request(token, offset).await?;
        writer.close().await.map_err(bulk_broke)?;
        let length = bulk_response(&mut reader).await?;
        Ok((length, reader))
    }

    /// Fetches the object a bulk `token` names, of `length` bytes with
    /// BLAKE3 `hash`, into memory; a stream that breaks off is resumed
    /// from where it stopped (a few times) while the connection lives.
    pub(crate) async fn download(
        &self,
        token: &[u8],
        length: u64,
        hash: Option<[u8; 32]>,
    ) -> Result<Vec<u8>> {
        use futures::AsyncReadExt;
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(length as usize).map_err(|_| Error::InvalidInput("no memory".into()))?;
        let mut attempts = 0;
        let mut chunk = vec![0u8; 64 * 1024];
        while (bytes.len() as u64) < length || attempts == 0 {
            attempts += 1;
            let (follows, mut reader) = self.open_download(token, bytes.len() as u64).await?;
            if bytes.len() as u64 + follows != length {
                return Err(Error::Protocol(format!(
                    "a download of {} bytes, not the {length} announced",
                    bytes.len() as u64 + follows
                )));
            }
            let broke = loop {
                if bytes.len() as u64 >= length {
                    break None;
                }
                let want = chunk.len().min((length - bytes.len() as u64) as usize);
                match reader.read(&mut chunk[..want]).await {
                    Ok(0) => break Some("the stream ended early".to_owned()),
                    Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                    Err(e) => break Some(e.to_string()),
                }
            };
            if let Some(why) = broke
                && (attempts >= 4 || self.quic.close_reason().is_some())
            {
                return Err(Error::Disconnected(format!(
                    "download broke off at {} of {length} bytes: {why}",
                    bytes.len()
                )));
            }
        }
        if let Some(h) = hash
            && *blake3::hash(&bytes).as_bytes() != h
        {
            return Err(Error::Protocol("the downloaded bytes do not match their BLAKE3".into()));
        }
        Ok(bytes)
    }

    pub(crate) fn insert(&self, cap: Cap) -> u64 {
        let id = self.next_cap.get() + 1;
        self.next_cap.set(id);
        self.caps.borrow_mut().insert(id, cap);
        id
    }

    fn get(&self, id: u64) -> Result<Cap> {
        self.caps
            .borrow()
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::Protocol("capability already released".into()))
    }

    pub(crate) fn session(&self, id: u64) -> Result<session::Client> {
        match self.get(id)? {
            Cap::Session(s) => Ok(s),
            _ => Err(Error::Protocol("not a session".into())),
        }
    }

    pub(crate) fn admin(&self, id: u64) -> Result<admin::Client> {
        match self.get(id)? {
            Cap::Admin(s) => Ok(s),
            _ => Err(Error::Protocol("not an admin capability".into())),
        }
    }

    pub(crate) fn gateway(&self, id: u64) -> Result<gateway::Client> {
        match self.get(id)? {
            Cap::Gateway(s) => Ok(s),
            _ => Err(Error::Protocol("not a gateway capability".into())),
        }
    }
}

#[derive(Debug)]
struct Inner {
    jobs: mpsc::UnboundedSender<Job>,
    info: ServerInfo,
    remote: SocketAddr,
}

/// A connection to a Quail server. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// How to connect, beyond the address and the trust.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// The local UDP address to bind (default: any address, any port).
    pub local_addr: Option<SocketAddr>,
    /// Keep-alive interval (default [`KEEP_ALIVE`]).
    pub keep_alive: Option<Duration>,
    /// Idle timeout (default [`IDLE_TIMEOUT`]); the connection's is the
    /// smaller of the client's and the server's.
    pub idle_timeout: Option<Duration>,
}

impl ConnectOptions {
    /// Binds the client's UDP socket to `addr`.
    pub fn local_addr(mut self, addr: SocketAddr) -> Self {
        self.local_addr = Some(addr);
        self
    }

    /// Sets the keep-alive interval and the idle timeout (a mobile app on
    /// a metered link may prefer fewer pings and a slower verdict).
    pub fn liveness(mut self, keep_alive: Duration, idle_timeout: Duration) -> Self {
        self.keep_alive = Some(keep_alive);
        self.idle_timeout = Some(idle_timeout);
        self
    }
}

impl Client {
    /// Connects to `addr` (`host:port`), authenticating the server by `trust`,
    /// and says hello.
    pub async fn connect(addr: &str, trust: Trust) -> Result<Client> {
        Self::connect_with(addr, trust, ConnectOptions::default()).await
    }

    /// [`Client::connect`] with options.
    pub async fn connect_with(addr: &str, trust: Trust, options: ConnectOptions) -> Result<Client> {
        let (host, port) = split_host_port(addr)?;
        let remote = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| Error::Disconnected(format!("resolving {host}: {e}")))?
            .next()
            .ok_or_else(|| Error::Disconnected(format!("{host} has no address")))?;
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| Error::InvalidInput(format!("{host:?} is not a valid server name")))?;
        let tls = trust::client_config(&trust)?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("quail-rpc".into())
            .spawn(move || connection_thread(remote, server_name, tls, options, jobs_rx, ready_tx))
            .map_err(|e| Error::Disconnected(format!("starting the connection thread: {e}")))?;
        let info = ready_rx.await.map_err(|_| Error::Disconnected("connection thread ended".into()))??;
        Ok(Client { inner: Arc::new(Inner { jobs: jobs_tx, info, remote }) })
    }

    /// What the server said in `hello`.
    pub fn server_info(&self) -> &ServerInfo {
        &self.inner.info
    }

    /// The server's address.
    pub fn remote(&self) -> SocketAddr {
        self.inner.remote
    }

    /// Logs in with a name and password.
    pub async fn login(&self, name: &str, password: &str) -> Result<Session> {
        let (name, password) = (name.to_owned(), password.to_owned());
        let cap = self
            .call(move |conn| async move {
                let mut req = conn.bootstrap.login_request();
                req.get().set_name(name.as_str());
                req.get().set_secret(password.as_str());
                let resp = req.send().promise.await?;
                let session = resp.get()?.get_session()?;
                Ok(conn.insert(Cap::Session(session)))
            })
            .await?;
        Ok(Session::new(self.clone(), cap))
    }

    /// Logs in with an app token (see `Session::create_app_token`).
    pub async fn login_token(&self, token: &str) -> Result<Session> {
        let token = token.to_owned();
        let cap = self
            .call(move |conn| async move {
                let mut req = conn.bootstrap.login_token_request();
                req.get().set_token(token.as_str());
                let resp = req.send().promise.await?;
                Ok(conn.insert(Cap::Session(resp.get()?.get_session()?)))
            })
            .await?;
        Ok(Session::new(self.clone(), cap))
    }

    /// The admin capability, for the holder of the server's admin credential.
    pub async fn admin(&self, secret: &str) -> Result<Admin> {
        let secret = secret.trim().to_owned();
        let cap = self
            .call(move |conn| async move {
                let mut req = conn.bootstrap.admin_request();
                req.get().set_secret(secret.as_str());
                let resp = req.send().promise.await?;
                Ok(conn.insert(Cap::Admin(resp.get()?.get_admin()?)))
            })
            .await?;
        Ok(Admin::new(self.clone(), cap))
    }

    /// The gateway capability, for the holder of the gateway credential.
    pub async fn gateway(&self, secret: &str) -> Result<Gateway> {
        let secret = secret.trim().to_owned();
        let cap = self
            .call(move |conn| async move {
                let mut req = conn.bootstrap.gateway_request();
                req.get().set_secret(secret.as_str());
                let resp = req.send().promise.await?;
                Ok(conn.insert(Cap::Gateway(resp.get()?.get_gateway()?)))
            })
            .await?;
        Ok(Gateway::new(self.clone(), cap))
    }

    /// Runs `f` on the connection thread and returns its result.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Conn>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let _ = tx.send(f(conn).await);
            })
        });
        self.inner.jobs.send(job).map_err(|_| Error::Disconnected("connection closed".into()))?;
        rx.await.map_err(|_| Error::Disconnected("connection closed".into()))?
    }

    /// Moves the connection to a new local UDP socket bound to `addr`, as a
    /// phone does when it leaves Wi-Fi for the cellular network. QUIC
    /// migrates the connection: sessions and watches carry on, with no new
    /// login. Returns the new local address.
    pub async fn rebind(&self, addr: SocketAddr) -> Result<SocketAddr> {
        self.call(move |conn| async move {
            let socket = std::net::UdpSocket::bind(addr)
                .map_err(|e| Error::Disconnected(format!("binding {addr}: {e}")))?;
            let local = socket.local_addr().map_err(|e| Error::Disconnected(e.to_string()))?;
            conn.endpoint.rebind(socket).map_err(|e| Error::Disconnected(format!("rebinding: {e}")))?;
            Ok(local)
        })
        .await
    }

    /// Bytes sent and received on the connection so far (QUIC's own
    /// counts, packet overhead included).
    pub async fn traffic(&self) -> Result<Traffic> {
        self.call(move |conn| async move {
            let s = conn.quic.stats();
            Ok(Traffic { sent: s.udp_tx.bytes, received: s.udp_rx.bytes })
        })
        .await
    }

    /// Closes the connection at once, as losing the network would: calls
    /// and transfers in flight fail with `Disconnected`. Downloads keep
    /// their place for a resume on a new connection.
    pub async fn disconnect(&self) {
        let _ = self
            .call(move |conn| async move {
                conn.quic.close(quinn::VarInt::from_u32(close_code::NORMAL), b"client disconnected");
                Ok(())
            })
            .await;
    }

    /// Waits until the connection is gone (closed by either side, or the
    /// server silent past the idle timeout) and says why.
    pub async fn closed(&self) -> Error {
        match self.call(move |conn| async move { Ok(conn.quic.closed().await) }).await {
            Ok(e) => connection_error(e),
            Err(e) => e,
        }
    }

    /// Drops a capability on the connection thread (best effort).
    pub(crate) fn release(&self, cap: u64) {
        let job: Job = Box::new(move |conn| {
            conn.caps.borrow_mut().remove(&cap);
            Box::pin(async {})
        });
        let _ = self.inner.jobs.send(job);
    }
}

/// The receiving half of a bulk stream.
pub(crate) type BulkReader = BufReader<tokio_util::compat::Compat<quinn::RecvStream>>;

fn bulk_broke(e: std::io::Error) -> Error {
    Error::Disconnected(format!("bulk stream: {e}"))
}

/// Reads a `BulkResponse`: the length, or the server's typed error.
async fn bulk_response(reader: &mut BulkReader) -> Result<u64> {
    use quail_protocol::quail_capnp::bulk_response;
    let response = capnp_futures::serialize::read_message(reader, capnp::message::ReaderOptions::new())
        .await
        .map_err(|e| Error::Disconnected(format!("bulk stream: no answer: {e}")))?;
    let r = response.get_root::<bulk_response::Reader<'_>>()?;
    if r.has_error() {
        let e = r.get_error()?;
        return Err(Error::from_code(e.get_code()?, e.get_message()?.to_str()?.to_owned()));
    }
    Ok(r.get_length())
}

/// Bytes a connection moved, from QUIC's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// UDP payload bytes sent.
    pub sent: u64,
    /// UDP payload bytes received.
    pub received: u64,
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals).
fn split_host_port(addr: &str) -> Result<(String, u16)> {
    let bad = || Error::InvalidInput(format!("{addr:?} is not host:port"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port.parse().map_err(|_| bad())?))
}

fn connection_thread(
    remote: SocketAddr,
    server_name: ServerName<'static>,
    tls: rustls::ClientConfig,
    options: ConnectOptions,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    ready: oneshot::Sender<Result<ServerInfo>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(Error::Disconnected(format!("runtime: {e}"))));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let setup = tokio::time::timeout(CONNECT_TIMEOUT, open(remote, server_name, tls, options)).await;
        let (endpoint, quic, conn) = match setup {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                let _ = ready.send(Err(e));
                return;
            }
            Err(_) => {
                let _ = ready.send(Err(Error::Disconnected(format!("connecting to {remote} timed out"))));
                return;
            }
        };
        match hello(&conn.bootstrap).await {
            Ok(info) => {
                if ready.send(Ok(info)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
        while let Some(job) = jobs.recv().await {
            tokio::task::spawn_local(job(Rc::clone(&conn)));
        }
        drop(conn);
        quic.close(quinn::VarInt::from_u32(close_code::NORMAL), b"client done");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    });
}

async fn open(
    remote: SocketAddr,
    server_name: ServerName<'static>,
    tls: rustls::ClientConfig,
    options: ConnectOptions,
) -> Result<(quinn::Endpoint, quinn::Connection, Rc<Conn>)> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Tls(format!("QUIC TLS configuration: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(options.keep_alive.unwrap_or(KEEP_ALIVE)));
    transport.max_idle_timeout(Some(
        options
            .idle_timeout
            .unwrap_or(IDLE_TIMEOUT)
            .try_into()
            .map_err(|_| Error::InvalidInput("idle timeout too long".into()))?,
    ));
    config.transport_config(Arc::new(transport));
    let bind: SocketAddr = match options.local_addr {
        Some(a) => a,
        None if remote.is_ipv6() => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        None => SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)),
    };
    let mut endpoint = quinn::Endpoint::client(bind)
        .map_err(|e| Error::Disconnected(format!("binding a UDP socket: {e}")))?;
    endpoint.set_default_client_config(config);
    let name = server_name.to_str().into_owned();
    let quic = endpoint
        .connect(remote, &name)
        .map_err(|e| Error::Disconnected(format!("connecting to {remote}: {e}")))?
        .await
        .map_err(connection_error)?;
    let (mut send, recv) = quic.open_bi().await.map_err(connection_error)?;
    send.write_all(&[StreamKind::Rpc.tag()])
        .await
        .map_err(|e| Error::Disconnected(format!("opening the RPC stream: {e}")))?;
    let mut options = capnp::message::ReaderOptions::new();
    options.traversal_limit_in_words(Some((limits::MAX_RPC_MESSAGE_BYTES / 8) as usize));
    let network = VatNetwork::new(
        BufReader::new(recv.compat()),
        BufWriter::new(send.compat_write()),
        Side::Client,
        options,
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let bootstrap: quail::Client = rpc.bootstrap(Side::Server);
    // When the RPC system ends (connection lost, protocol error), every
    // call in flight fails with that error; nothing else to do here.
    tokio::task::spawn_local(async move {
        let _ = rpc.await;
    });
    let conn = Rc::new(Conn {
        bootstrap,
        endpoint: endpoint.clone(),
        quic: quic.clone(),
        caps: RefCell::new(HashMap::new()),
        next_cap: Cell::new(0),
    });
    Ok((endpoint, quic, conn))
}

fn connection_error(e: quinn::ConnectionError) -> Error {
    match e {
        quinn::ConnectionError::TransportError(t) if t.code.to_string().contains("crypto") => {
            Error::Tls(t.to_string())
        }
        quinn::ConnectionError::ConnectionClosed(c) if c.error_code.to_string().contains("crypto") => {
            Error::Tls(c.to_string())
        }
        other => Error::Disconnected(other.to_string()),
    }
}

async fn hello(bootstrap: &quail::Client) -> Result<ServerInfo> {
    let mut req = bootstrap.hello_request();
    req.get().set_client_name(concat!("quail-sdk-rust ", env!("CARGO_PKG_VERSION")));
    req.get().set_client_versions(&[PROTOCOL_VERSION][..])?;
    let resp = req.send().promise.await?;
    let info = wire::server_info(resp.get()?.get_info()?)?;
    if !info.versions.contains(&PROTOCOL_VERSION) {
        return Err(Error::Protocol(format!(
            "server speaks protocol versions {:?}, this SDK speaks {PROTOCOL_VERSION}",
            info.versions
        )));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("127.0.0.1:4433").expect("v4"), ("127.0.0.1".into(), 4433));
        assert_eq!(split_host_port("[::1]:4433").expect("v6"), ("::1".into(), 4433));
        assert_eq!(split_host_port("mail.example.org:1").expect("dns"), ("mail.example.org".into(), 1));
        assert!(split_host_port("nohost").is_err());
        assert!(split_host_port(":4433").is_err());
        assert!(split_host_port("h:port").is_err());
    }
}
