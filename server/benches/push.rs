//! Push benchmarks (a bench binary: it prints figures, it asserts nothing).
//!
//! `cargo bench -p quail-server --bench push [-- latency|idle]`
//!
//! - `latency`: 1,000 deliveries to a watched account on an in-process
//!   server; commit→callback is the time from the hub's publication of the
//!   durable commit (an in-process subscriber timestamps it) to the SDK's
//!   event. Baseline in the same run: the deliver round trip.
//! - `idle`: `QUAIL_BENCH_CONNECTIONS` (default 10,000) idle connections,
//!   each logged in with an app token and holding a watch, against a quaild
//!   process; its RSS growth per connection, then push latency to one of
//!   them (deliver sent → callback) while all are connected, against the
//!   deliver round trip measured in the same run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::quail::{Client, Envelope, Trust};
use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty::VatNetwork};
use futures::StreamExt;
use futures::io::{BufReader, BufWriter};
use quail_protocol::StreamKind;
use quail_protocol::quail_capnp::{listener, quail as bootstrap};
use quail_server::account::Credential;
use quail_server::{Config, Server};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

fn message(i: usize) -> Vec<u8> {
    format!(
        "From: Bench <bench@example.net>\r\nTo: user@example.org\r\nSubject: push {i}\r\n\
         Message-ID: <push{i}@example.net>\r\n\r\nHello {i}.\r\n"
    )
    .into_bytes()
}

fn envelope(to: &str) -> Envelope {
    Envelope { mail_from: "bench@example.net".into(), rcpt_to: vec![to.into()], ..Envelope::default() }
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{what}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (n = {})",
        pct(&v, 0.5),
        pct(&v, 0.99),
        pct(&v, 1.0),
        v.len()
    );
}

async fn latency() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let server = Server::start(Config::ephemeral(dir.path())).await.expect("start");
    let pin = server.fingerprint().parse().expect("pin");
    let client = Client::connect(&server.addr().to_string(), Trust::Pinned(pin)).await.expect("connect");
    let admin = client.admin(&server.secret(Credential::Admin).expect("secret")).await.expect("admin");
    let info = admin.create_account("alice", "alice-password", 0, 0).await.expect("create");
    let gateway =
        client.gateway(&server.secret(Credential::Gateway).expect("secret")).await.expect("gateway");
    let watcher = Client::connect(
        &server.addr().to_string(),
        Trust::Pinned(server.fingerprint().parse().expect("pin")),
    )
    .await
    .expect("connect");
    let session = watcher.login("alice", "alice-password").await.expect("login");
    let mut watch = session.watch().await.expect("watch");
    // The moment each state was published, seen in the server's process.
    let published: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let mut sub = server.services().hub.subscribe(quail_server::account::AccountId(info.id));
    let sink = Arc::clone(&published);
    tokio::spawn(async move {
        while let Some(p) = sub.next().await {
            sink.lock().expect("lock").insert(p.state, Instant::now());
        }
    });
    let n = 1000;
    let mut push = Vec::with_capacity(n);
    let mut round_trip = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        gateway.deliver(&envelope("alice"), &message(i)).await.expect("deliver");
        round_trip.push(t0.elapsed());
        let event =
            tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("event").expect("watch");
        let arrived = Instant::now();
        let at = published.lock().expect("lock").get(&event.state.0).copied();
        if let Some(at) = at {
            push.push(arrived.saturating_duration_since(at));
        }
    }
    report("deliver round trip (baseline)", round_trip);
    report("commit -> callback", push);
    server.shutdown().await;
}

fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A listener that reports when it is called.
struct Ping {
    tx: tokio::sync::mpsc::UnboundedSender<Instant>,
}

impl listener::Server for Ping {
    async fn changed(
        self: Rc<Self>,
        _: listener::ChangedParams,
        _: listener::ChangedResults,
    ) -> Result<(), capnp::Error> {
        let _ = self.tx.send(Instant::now());
        Ok(())
    }
}

fn quic_client(fingerprint: [u8; 32]) -> quinn::ClientConfig {
    #[derive(Debug)]
    struct Pinned([u8; 32], Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for Pinned {
        fn verify_server_cert(
            &self,
            cert: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            if ring::digest::digest(&ring::digest::SHA256, cert).as_ref() == self.0 {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General("unpinned certificate".into()))
            }
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("TLS 1.2".into()))
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.1.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.1.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned(fingerprint, provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![quail_protocol::ALPN.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls"),
    ));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(20)));
    config.transport_config(Arc::new(transport));
    config
}

/// Opens one connection, logs in with `token` and watches; keeps it all on
/// this thread's LocalSet.
async fn idle_watcher(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    token: &str,
    tx: Option<tokio::sync::mpsc::UnboundedSender<Instant>>,
) -> Result<(quinn::Connection, Box<dyn std::any::Any>), String> {
    let quic =
        endpoint.connect(addr, "localhost").map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())?;
    let (mut send, recv) = quic.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&[StreamKind::Rpc.tag()]).await.map_err(|e| e.to_string())?;
    let network = VatNetwork::new(
        BufReader::new(recv.compat()),
        BufWriter::new(send.compat_write()),
        Side::Client,
        capnp::message::ReaderOptions::new(),
    );
    let mut system = RpcSystem::new(Box::new(network), None);
    let boot: bootstrap::Client = system.bootstrap(Side::Server);
    tokio::task::spawn_local(async move {
        let _ = system.await;
    });
    let mut login = boot.login_token_request();
    login.get().set_token(token);
    let session = login.send().pipeline.get_session();
    let (ping_tx, _) = tokio::sync::mpsc::unbounded_channel();
    let l: listener::Client = capnp_rpc::new_client(Ping { tx: tx.unwrap_or(ping_tx) });
    let mut w = session.watch_request();
    w.get().set_listener(l);
    let resp = w.send().promise.await.map_err(|e| e.to_string())?;
    let handle = resp.get().map_err(|e| e.to_string())?.get_handle().map_err(|e| e.to_string())?;
    Ok((quic, Box::new((boot, session, handle))))
}

async fn start_quaild(data: &Path, config: &Path) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_quaild"))
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn quaild");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines.next_line().await.expect("stdout").expect("quaild exited");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().expect("address").to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

async fn idle() {
    let n: usize =
        std::env::var("QUAIL_BENCH_CONNECTIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let accounts = 100usize.min(n);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let config = dir.path().join("quaild.toml");
    std::fs::write(
        &config,
        format!("[limits]\nmax_connections_per_ip = {}\nmax_watches_per_connection = 4\n", n + 16),
    )
    .expect("config");
    let data = dir.path().join("data");
    let (child, addr) = start_quaild(&data, &config).await;
    let pid = child.id().expect("pid");
    let fp = std::fs::read_to_string(data.join("tls/dev-cert.sha256")).expect("fingerprint");
    let fingerprint: ::quail::Fingerprint = fp.trim().parse().expect("pin");
    let client = Client::connect(&addr, Trust::Pinned(fingerprint)).await.expect("connect");
    let secret = |c: &str| std::fs::read_to_string(data.join(c)).expect("secret").trim().to_owned();
    let admin = client.admin(&secret("admin.secret")).await.expect("admin");
    let gateway = client.gateway(&secret("gateway.secret")).await.expect("gateway");
    let mut tokens = Vec::new();
    for a in 0..accounts {
        let name = format!("user{a}");
        admin.create_account(&name, "bench-password", 0, 0).await.expect("create");
        let s = client.login(&name, "bench-password").await.expect("login");
        tokens.push(s.create_app_token("bench").await.expect("token").0);
    }
    let addr: SocketAddr = addr.parse().expect("addr");
    let fp_bytes: [u8; 32] =
        hex::decode(fp.trim().replace(':', "")).expect("hex").try_into().expect("32 bytes");
    let before = status_bytes(pid, "VmRSS:");
    // The connections live on a thread of their own (capnp is !Send).
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Duration, String>>();
    let (ping_tx, mut ping_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let t0 = Instant::now();
            let config = quic_client(fp_bytes);
            let endpoints: Vec<quinn::Endpoint> = (0..16)
                .map(|_| {
                    let mut e =
                        quinn::Endpoint::client("127.0.0.1:0".parse().expect("bind")).expect("endpoint");
                    e.set_default_client_config(config.clone());
                    e
                })
                .collect();
            let mut held = Vec::with_capacity(n);
            let mut batch = Vec::new();
            for i in 0..n {
                let tx = (i == 0).then(|| ping_tx.clone());
                let (e, token) = (&endpoints[i % endpoints.len()], tokens[i % accounts].clone());
                batch.push(async move { idle_watcher(e, addr, &token, tx).await });
                if batch.len() == 50 || i + 1 == n {
                    for r in futures::future::join_all(std::mem::take(&mut batch)).await {
                        match r {
                            Ok(h) => held.push(h),
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                                return;
                            }
                        }
                    }
                    if (i + 1) % 1000 == 0 {
                        eprintln!("  {} connections open and watching", i + 1);
                    }
                }
            }
            let _ = ready_tx.send(Ok(t0.elapsed()));
            let _ = stop_rx.await;
            drop(held);
        });
    });
    let opened = tokio::task::spawn_blocking(move || ready_rx.recv().expect("holder")).await.expect("join");
    let opened = match opened {
        Ok(d) => d,
        Err(e) => {
            println!("idle: could not open {n} connections: {e}");
            return;
        }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = status_bytes(pid, "VmRSS:");
    println!(
        "{n} idle connections, each with a token session and a watch, opened in {:.1} s: quaild RSS {} MiB -> {} MiB, {:.1} KiB per connection",
        opened.as_secs_f64(),
        before >> 20,
        after >> 20,
        (after.saturating_sub(before)) as f64 / n as f64 / 1024.0
    );
    // Push to connection 0 (account user0, watched by n / accounts of them).
    let mut push = Vec::new();
    let mut round_trip = Vec::new();
    for i in 0..200 {
        while ping_rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        gateway.deliver(&envelope("user0"), &message(i)).await.expect("deliver");
        round_trip.push(t0.elapsed());
        let at =
            tokio::time::timeout(Duration::from_secs(10), ping_rx.recv()).await.expect("push").expect("ping");
        push.push(at.saturating_duration_since(t0));
    }
    report(&format!("deliver round trip with {n} connections open (baseline)"), round_trip);
    report(&format!("deliver sent -> callback on one of {n} watching connections"), push);
    let _ = stop_tx.send(());
    let _ = holder.join();
    drop(child);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    if run("latency") {
        latency().await;
    }
    if run("idle") {
        idle().await;
    }
}
