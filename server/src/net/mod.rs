//! The network edge: QUIC connections in, RPC and bulk streams out.
//!
//! Each accepted connection is served on one worker of a pool of pinned
//! single-thread runtimes (one per core), because capnp-rpc objects are
//! `!Send`; the connection never moves between threads, and both cores serve.
//!
//! Every stream a client opens starts with a one-byte kind tag (QUIC streams
//! are invisible to the peer until their first byte). An RPC stream carries
//! capnp-rpc's two-party protocol with `Quail` as its bootstrap; a bulk
//! stream carries one large object. An unknown tag resets that stream; a
//! malformed or oversized RPC message closes the connection (its RPC state
//! cannot be trusted after that). Neither affects other connections.

pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty::VatNetwork};
use futures::io::{BufReader, BufWriter};
use quail_protocol::{ALPN, StreamKind, close_code, quail_capnp};
use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, VarInt};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
use tokio_util::task::LocalPoolHandle;

use crate::rpc::{self, Peer, Services};

/// Connections open per remote address (IPv6: per /64).
#[derive(Debug, Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// The address a per-IP limit counts: IPv6 hosts get a /64 each.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
        },
        v4 => v4,
    }
}

/// One open connection counted against its address; uncounted on drop.
#[derive(Debug)]
struct Slot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<Slot> {
        let ip = ip_key(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot { table: Arc::clone(self), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// How long a new stream may take to send its kind tag.
const TAG_TIMEOUT: Duration = Duration::from_secs(10);
/// Nesting depth allowed in a received capnp message.
const NESTING_LIMIT: i32 = 64;
/// Largest `BulkRequest` message, in words.
const BULK_REQUEST_WORDS: usize = 128;

/// Accepts connections on `endpoint` until `shutdown` resolves, serving each
/// on `workers`; then closes the endpoint and waits briefly for it to drain.
pub async fn serve(
    endpoint: Endpoint,
    services: Arc<Services>,
    workers: LocalPoolHandle,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let per_ip = Arc::new(PerIp::default());
    let max_per_ip = services.config.limits.max_connections_per_ip;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    let remote = incoming.remote_address();
                    let Some(slot) = per_ip.take(remote.ip(), max_per_ip) else {
                        tracing::info!(%remote, limit = max_per_ip, "refusing a connection: too many from this address");
                        incoming.refuse();
                        continue;
                    };
                    let services = Arc::clone(&services);
                    workers.spawn_pinned(move || connection(incoming, services, slot));
                }
                None => break,
            },
        }
    }
    endpoint.close(VarInt::from_u32(close_code::SHUTDOWN), b"server shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

async fn connection(incoming: Incoming, services: Arc<Services>, slot: Slot) {
    let _slot = slot;
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "handshake failed");
            return;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() != Some(ALPN) {
        tracing::debug!(%remote, "no quail/1 ALPN; closing");
        conn.close(VarInt::from_u32(close_code::ALPN), b"ALPN quail/1 required");
        return;
    }
    tracing::debug!(%remote, "connected");
    let limits = &services.config.limits;
    let peer = Peer::new(
        remote.ip().to_canonical(),
        limits.max_calls_per_connection,
        limits.max_watches_per_connection,
    );
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::task::spawn_local(stream(
                    conn.clone(),
                    send,
                    recv,
                    Arc::clone(&services),
                    Rc::clone(&peer),
                ));
            }
            Err(e) => {
                tracing::debug!(%remote, reason = %e, "connection ended");
                break;
            }
        }
    }
}

async fn stream(
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    services: Arc<Services>,
    peer: Rc<Peer>,
) {
    let mut tag = [0u8; 1];
    match tokio::time::timeout(TAG_TIMEOUT, recv.read_exact(&mut tag)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "stream ended before its kind tag");
            return;
        }
        Err(_) => {
            refuse(&mut send, &mut recv, close_code::PROTOCOL);
            return;
        }
    }
    match StreamKind::from_tag(tag[0]) {
        Some(StreamKind::Rpc) => rpc_stream(conn, send, recv, services, peer).await,
        Some(StreamKind::Bulk) => bulk_stream(send, recv, services, peer).await,
        None => {
            tracing::debug!(tag = tag[0], "unknown stream kind; resetting the stream");
            refuse(&mut send, &mut recv, close_code::PROTOCOL);
        }
    }
}

fn refuse(send: &mut SendStream, recv: &mut RecvStream, code: u32) {
    let _ = send.reset(VarInt::from_u32(code));
    let _ = recv.stop(VarInt::from_u32(code));
}

fn reader_options(max_bytes: u64) -> capnp::message::ReaderOptions {
    let mut o = capnp::message::ReaderOptions::new();
    o.traversal_limit_in_words(Some((max_bytes / 8) as usize)).nesting_limit(NESTING_LIMIT);
    o
}

async fn rpc_stream(
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    services: Arc<Services>,
    peer: Rc<Peer>,
) {
    let options = reader_options(services.config.limits.max_rpc_message_bytes);
    let network = VatNetwork::new(
        BufReader::new(recv.compat()),
        BufWriter::new(send.compat_write()),
        Side::Server,
        options,
    );
    let bootstrap = rpc::bootstrap(services, peer);
    let system = RpcSystem::new(Box::new(network), Some(bootstrap.client));
    if let Err(e) = system.await {
        if conn.close_reason().is_some() || e.kind == capnp::ErrorKind::Disconnected {
            return;
        }
        let (code, reason) = if e.extra.contains("too large") {
            (close_code::LIMIT, "message over the size limit")
        } else {
            (close_code::PROTOCOL, "malformed RPC stream")
        };
        tracing::info!(remote = %conn.remote_address(), error = %e, "closing connection: {reason}");
        conn.close(VarInt::from_u32(code), reason.as_bytes());
    }
}

/// The offset that asks how much of an upload the server holds.
const PROBE: u64 = u64::MAX;

/// A domain error as a bulk response's code and message.
fn code_of_error(e: crate::Error) -> (quail_capnp::ErrorCode, String) {
    let code = rpc::code_of(&e);
    let message = if code == quail_capnp::ErrorCode::Internal {
        "internal server error".to_owned()
    } else {
        e.to_string()
    };
    if code == quail_capnp::ErrorCode::Internal {
        tracing::error!(error = %e, "bulk transfer failed");
    }
    (code, message)
}

/// How long one bulk transfer may take, whole.
const BULK_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// A bulk stream: one `BulkRequest` naming a token. For an upload (from
/// `upload`) exactly the reserved number of bytes and the end of the stream
/// follow, and the server answers with one `BulkResponse`; a transfer that
/// breaks off leaves the upload to be sent again with the same token. For a
/// download (a `ByteRun.bulkToken` from `raw`) the server answers with a
/// `BulkResponse` giving the length, then the bytes.
async fn bulk_stream(send: SendStream, recv: RecvStream, services: Arc<Services>, peer: Rc<Peer>) {
    use futures::{AsyncReadExt, AsyncWriteExt};
    let mut reader = BufReader::new(recv.compat());
    let mut writer = send.compat_write();
    let mut options = capnp::message::ReaderOptions::new();
    options.traversal_limit_in_words(Some(BULK_REQUEST_WORDS));
    enum Transfer {
        Uploaded(u64),
        /// The bytes, where this transfer starts, and the token.
        Download(crate::blob::upload::Shared, u64, crate::blob::upload::Token),
    }
    let outcome: Result<Transfer, (quail_capnp::ErrorCode, String)> = async {
        let request = capnp_futures::serialize::read_message(&mut reader, options)
            .await
            .map_err(|e| (quail_capnp::ErrorCode::Protocol, format!("bad bulk request: {e}")))?;
        let root = request
            .get_root::<quail_capnp::bulk_request::Reader<'_>>()
            .map_err(|e| (quail_capnp::ErrorCode::Protocol, format!("bad bulk request: {e}")))?;
        let offset = root.get_offset();
        let token: crate::blob::upload::Token = root
            .get_token()
            .ok()
            .and_then(|t| t.try_into().ok())
            .ok_or((quail_capnp::ErrorCode::NotFound, "unknown or expired bulk token".to_owned()))?;
        if let Ok(bytes) = services.downloads.get(&token, |o| peer.holds(o), std::time::Instant::now()) {
            let Some(start) = Some(offset).filter(|o| *o <= bytes.len()) else {
                return Err((
                    quail_capnp::ErrorCode::InvalidArgument,
                    format!("offset {offset} is past the end of the {}-byte transfer", bytes.len()),
                ));
            };
            return Ok(Transfer::Download(bytes, start, token));
        }
        let now = std::time::Instant::now();
        if offset == PROBE {
            // How much of this upload the server holds: where to resume.
            let held = services.uploads.held(&token, |o| peer.holds(o), now).map_err(code_of_error)?;
            return Ok(Transfer::Uploaded(held));
        }
        let begun = services.uploads.begin(&token, offset, |o| peer.holds(o), now).map_err(code_of_error)?;
        let (size, mut bytes, stop) = (begun.size, begun.bytes, begun.stop);
        if bytes.try_reserve_exact((size as usize).saturating_sub(bytes.len())).is_err() {
            services.uploads.pause(&token, bytes);
            return Err((quail_capnp::ErrorCode::Unavailable, "no memory for the upload now".to_owned()));
        }
        // Exactly the reserved size, then the end of the stream.
        // In chunks: read_to_end's generic zero-filling is slow where it
        // is instantiated unoptimised (tests), and a chunk loop bounds it.
        let read = tokio::time::timeout(BULK_TIMEOUT, async {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                // A later transfer of this upload (the client came back
                // before this connection was seen to die) takes over.
                let n = tokio::select! {
                    n = reader.read(&mut chunk) => n?,
                    () = stop.notified() => {
                        return Err(std::io::Error::other("a later transfer of this upload took over"));
                    }
                };
                if n == 0 || bytes.len() as u64 > size {
                    return Ok::<_, std::io::Error>(());
                }
                bytes.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        match read {
            Ok(Ok(_)) if bytes.len() as u64 == size => {}
            Ok(Ok(_)) if (bytes.len() as u64) < size => {
                // The client finished early: keep what came for a resume.
                services.uploads.pause(&token, bytes);
                return Err((
                    quail_capnp::ErrorCode::Protocol,
                    "the upload ended before its size".to_owned(),
                ));
            }
            Ok(Ok(_)) => {
                services.uploads.abort(&token);
                return Err((
                    quail_capnp::ErrorCode::Protocol,
                    format!("the upload holds {} bytes or more, not the {size} reserved", bytes.len()),
                ));
            }
            _ => {
                // Broken off: what arrived is kept, to resume from.
                services.uploads.pause(&token, bytes);
                return Err((quail_capnp::ErrorCode::Protocol, "the upload broke off".to_owned()));
            }
        }
        match begun.purpose {
            crate::blob::upload::Purpose::Message => {
                services.uploads.finish(&token, bytes, now).map_err(code_of_error)?;
            }
            crate::blob::upload::Purpose::Blob { hash, mime_type } => {
                // Durable before the answer, and only bytes that match the
                // hash the client declared.
                services.uploads.remove(&token);
                rpc::session::store_upload(&services, begun.owner, bytes, hash, &mime_type)
                    .await
                    .map_err(code_of_error)?;
            }
        }
        Ok(Transfer::Uploaded(size))
    }
    .await;
    let mut response = capnp::message::Builder::new_default();
    {
        let mut r = response.init_root::<quail_capnp::bulk_response::Builder<'_>>();
        match &outcome {
            Ok(Transfer::Uploaded(n)) => r.set_length(*n),
            Ok(Transfer::Download(bytes, start, _)) => r.set_length(bytes.len() - start),
            Err((code, message)) => {
                let mut e = r.init_error();
                e.set_code(*code);
                e.set_message(message.as_str());
            }
        }
    }
    if capnp_futures::serialize::write_message(&mut writer, &response).await.is_err() {
        return;
    }
    if let Ok(Transfer::Download(source, start, token)) = &outcome {
        // Produced on the blocking pool (a large message is rebuilt as it
        // goes), a few pieces ahead of the network.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let (source, from) = (Arc::clone(source), *start);
        let producer = tokio::task::spawn_blocking(move || {
            source.stream(from, &mut |piece| {
                tx.blocking_send(piece.to_vec()).map_err(|_| crate::Error::Unavailable("reader gone".into()))
            })
        });
        let expected = outcome.as_ref().map(|t| match t {
            Transfer::Download(b, s, _) => b.len() - s,
            Transfer::Uploaded(_) => 0,
        });
        let sent = tokio::time::timeout(BULK_TIMEOUT, async {
            let mut n = 0u64;
            while let Some(piece) = rx.recv().await {
                writer.write_all(&piece).await?;
                n += piece.len() as u64;
            }
            Ok::<u64, std::io::Error>(n)
        })
        .await;
        drop(rx);
        let produced = producer.await;
        let complete = matches!(sent, Ok(Ok(n)) if Ok(n) == expected) && matches!(produced, Ok(Ok(())));
        if !complete {
            if let Ok(Err(e)) = produced {
                tracing::warn!(error = %e, "a download's source failed");
            }
            // Broken off: the token stays good for a resumed transfer.
            let _ = writer.close().await;
            return;
        }
        if writer.close().await.is_ok() {
            services.downloads.complete(token);
        }
        return;
    }
    let _ = writer.close().await;
}
