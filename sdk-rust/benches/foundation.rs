//! Foundation benchmark: `get` round trip over loopback QUIC, and `deliver`
//! throughput with 1 and with 20 concurrent writers (group commit on).
//! Baselines measured in the same run: `Session.account` (a near-empty RPC) for the
//! round trip, and one bare store commit + fsync for deliver.
//!
//! `cargo bench -p quail --bench foundation` (QUAIL_BENCH_SCALE=0.1 for a quick run)

use std::sync::Arc;
use std::time::{Duration, Instant};

use quail::{Client, EmailId, Envelope, Query, Trust};
use quail_server::account::Credential;
use quail_server::store::{FjallStore, Space, Store};
use quail_server::{Config, Server};

fn scale(n: usize) -> usize {
    let s: f64 = std::env::var("QUAIL_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    ((n as f64 * s) as usize).max(10)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn message(i: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Bench <bench@example.net>\r\nTo: alice@example.org\r\nSubject: bench message {i}\r\n\
         Date: Mon, 3 Feb 2025 10:00:00 +0000\r\nMessage-ID: <bench{i}@example.net>\r\n\r\n"
    )
    .into_bytes();
    while m.len() < size {
        m.extend_from_slice(b"The quick brown fox jumps over the lazy dog. 0123456789\r\n");
    }
    m
}

fn envelope() -> Envelope {
    Envelope { mail_from: "bench@example.net".into(), rcpt_to: vec!["alice".into()], ..Envelope::default() }
}

async fn deliver_rate(clients: &[Client], secret: &str, writers: usize, total: usize) -> f64 {
    let mut gateways = Vec::new();
    for c in clients.iter().cycle().take(writers) {
        gateways.push(Arc::new(c.gateway(secret).await.expect("gateway")));
    }
    let per = total / writers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (w, g) in gateways.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let r = g.deliver(&envelope(), &message(w * per + i, 10 * 1024)).await.expect("deliver");
                assert!(r[0].outcome.is_ok());
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    (per * writers) as f64 / start.elapsed().as_secs_f64()
}

fn store_baseline(n: usize) -> f64 {
    // Beside the server's data dir: the same filesystem as what it is compared with.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let store = FjallStore::open(dir.path()).expect("open");
    let value = message(0, 10 * 1024);
    let start = Instant::now();
    for i in 0..n {
        let t = store
            .commit(&mut |txn| {
                txn.put(Space::Emails, (i as u64 + 1).to_be_bytes().to_vec(), value.clone());
                Ok(())
            })
            .expect("commit");
        store.sync_blocking(t).expect("sync");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let server = Server::start(Config::ephemeral(dir.path())).await.expect("server");
    let pin = server.fingerprint().parse().expect("pin");
    let addr = server.addr().to_string();
    let client = Client::connect(&addr, Trust::Pinned(pin)).await.expect("connect");
    let admin = client.admin(&server.secret(Credential::Admin).expect("secret")).await.expect("admin");
    admin.create_account("alice", "alice-password", 0, 0).await.expect("account");
    let gw_secret = server.secret(Credential::Gateway).expect("secret");
    let gateway = client.gateway(&gw_secret).await.expect("gateway");
    for i in 0..100 {
        gateway.deliver(&envelope(), &message(i, 4096)).await.expect("seed");
    }
    let session = client.login("alice", "alice-password").await.expect("login");
    let ids = session.query(&Query::all().limit(100)).await.expect("query").ids;

    // Round trips.
    let rounds = scale(5000);
    let mut hello = Vec::with_capacity(rounds);
    let mut get = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let t = Instant::now();
        session.account().await.expect("account");
        hello.push(t.elapsed());
        let id: EmailId = ids[i % ids.len()];
        let t = Instant::now();
        let (emails, _) = session.get(&[id], &[]).await.expect("get");
        get.push(t.elapsed());
        assert_eq!(emails.len(), 1);
    }
    hello.sort();
    get.sort();
    println!("round trips over loopback QUIC ({rounds} each, one connection):");
    println!(
        "  Session.account (baseline)  p50 {:7.1} us  p99 {:7.1} us",
        us(percentile(&hello, 0.5)),
        us(percentile(&hello, 0.99))
    );
    println!(
        "  Session.get (1 email)       p50 {:7.1} us  p99 {:7.1} us   ({:.2}x baseline p50)",
        us(percentile(&get, 0.5)),
        us(percentile(&get, 0.99)),
        percentile(&get, 0.5).as_secs_f64() / percentile(&hello, 0.5).as_secs_f64()
    );

    // Deliver throughput, 10 KB messages, every one durable before it returns.
    let n = scale(2000);
    let base = store_baseline(scale(1000));
    let mut clients = vec![client.clone()];
    for _ in 0..3 {
        clients.push(Client::connect(&addr, Trust::Pinned(pin)).await.expect("connect"));
    }
    let before = server.store_metrics();
    let one = deliver_rate(&clients[..1], &gw_secret, 1, n / 4).await;
    let mid = server.store_metrics();
    let twenty = deliver_rate(&clients, &gw_secret, 20, n).await;
    let after = server.store_metrics();
    println!("deliver throughput, 10 KB messages, durable before acknowledged:");
    println!("  store commit+fsync, 1 writer (baseline)  {base:8.0} /s");
    println!(
        "  deliver, 1 writer                        {one:8.0} /s   ({:.2}x baseline; {:.2} commits per fsync)",
        one / base,
        (mid.commits - before.commits) as f64 / (mid.fsyncs - before.fsyncs).max(1) as f64
    );
    println!(
        "  deliver, 20 writers on 4 connections     {twenty:8.0} /s   ({:.2}x baseline, {:.2}x one writer; {:.2} commits per fsync)",
        twenty / base,
        twenty / one,
        (after.commits - mid.commits) as f64 / (after.fsyncs - mid.fsyncs).max(1) as f64
    );
    drop((session, gateway, admin, clients, client));
    server.shutdown().await;
}
