//! Crash test: `quaild` runs as a child process while clients deliver mail
//! continuously; the test kills it with SIGKILL at random moments, 20
//! times, restarting it each time. Every message whose deliver returned
//! success must then be present and intact, `quaild check` must find a
//! clean store, and the mailbox counters must equal a recount.

#![cfg(unix)]

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quail::{Client, EmailId, Envelope, Query, Trust};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const QUAILD: &str = env!("CARGO_BIN_EXE_quaild");
const KILLS: usize = 20;
const WRITERS: usize = 4;

/// Starts quaild on a free loopback port; returns the child and its address.
async fn start(data: &Path) -> (Child, String) {
    let mut child = Command::new(QUAILD)
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn quaild");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(rest) = line.split("listening on ").nth(1) {
                return rest.split_whitespace().next().expect("address").to_owned();
            }
        }
        panic!("quaild exited before listening");
    })
    .await
    .expect("quaild starts within 30 s");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

fn pin(data: &Path) -> Trust {
    let fp = std::fs::read_to_string(data.join("tls/dev-cert.sha256")).expect("fingerprint");
    Trust::Pinned(fp.trim().parse().expect("pin"))
}

fn message(n: u64) -> Vec<u8> {
    let mut m = format!(
        "From: Writer <writer@example.net>\r\nTo: alice@example.org\r\nSubject: crash test {n}\r\n\
         Message-ID: <crash-{n}@example.net>\r\n\r\n"
    )
    .into_bytes();
    for line in 0..(n % 50) {
        m.extend_from_slice(format!("line {line} of message {n}\r\n").as_bytes());
    }
    m
}

/// A tiny deterministic generator for the kill moments.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_loses_nothing_acknowledged() {
    let started = Instant::now();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let data = dir.path().join("data");
    let acked: Arc<Mutex<Vec<(EmailId, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let counter = Arc::new(AtomicU64::new(0));
    let mut seed = 0x5eed_1234_abcd_ef01u64;

    let (mut child, mut addr) = start(&data).await;
    {
        let client = Client::connect(&addr, pin(&data)).await.expect("connect");
        let secret = std::fs::read_to_string(data.join("admin.secret")).expect("admin secret");
        let admin = client.admin(&secret).await.expect("admin");
        admin.create_account("alice", "alice-password", 0, 0).await.expect("account");
    }
    let gateway_secret = std::fs::read_to_string(data.join("gateway.secret")).expect("gateway secret");

    // A writer's error is acceptable only as the connection dying after
    // the kill; anything else fails the test.
    let errors: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    for round in 0..KILLS {
        let killed = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for _ in 0..WRITERS {
            let (addr, trust, secret) = (addr.clone(), pin(&data), gateway_secret.clone());
            let (acked, counter) = (Arc::clone(&acked), Arc::clone(&counter));
            let (killed, errors) = (Arc::clone(&killed), Arc::clone(&errors));
            writers.push(tokio::spawn(async move {
                let fail = |what: &str, e: quail::Error| {
                    let after_kill = killed.load(Ordering::SeqCst);
                    if !(after_kill && matches!(e, quail::Error::Disconnected(_))) {
                        errors
                            .lock()
                            .expect("lock")
                            .push(format!("{what}: {e} (after the kill: {after_kill})"));
                    }
                };
                let client = match Client::connect(&addr, trust).await {
                    Ok(c) => c,
                    Err(e) => return fail("connect", e),
                };
                let gateway = match client.gateway(&secret).await {
                    Ok(g) => g,
                    Err(e) => return fail("gateway", e),
                };
                let envelope = Envelope { rcpt_to: vec!["alice".into()], ..Envelope::default() };
                loop {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    match gateway.deliver(&envelope, &message(n)).await {
                        Ok(r) => match r[0].outcome.clone() {
                            Ok(id) => acked.lock().expect("lock").push((id, n)),
                            Err(e) => return fail("deliver outcome", e),
                        },
                        // The server died under us: this one was never acknowledged.
                        Err(e) => return fail("deliver", e),
                    }
                }
            }));
        }
        let wait = 30 + next(&mut seed) % 250;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        killed.store(true, Ordering::SeqCst);
        child.kill().await.expect("SIGKILL");
        // Calls in flight when the server died would wait for the QUIC idle
        // timeout; they were never acknowledged, so stop waiting for them.
        for w in &writers {
            w.abort();
        }
        for w in writers {
            let _ = w.await;
        }
        let errs = errors.lock().expect("lock").clone();
        assert!(errs.is_empty(), "round {round}: writers failed: {errs:?}");
        println!(
            "round {round}: killed after {wait} ms; {} acknowledged so far",
            acked.lock().expect("lock").len()
        );
        (child, addr) = start(&data).await;
        // Search agrees with the mail after the crash: the newest
        // acknowledged messages are found by their own words.
        let recent: Vec<(quail::EmailId, u64)> =
            acked.lock().expect("lock").iter().rev().take(10).cloned().collect();
        let client = Client::connect(&addr, pin(&data)).await.expect("connect");
        let session = client.login("alice", "alice-password").await.expect("login");
        for (id, n) in recent {
            let page = session.search(&format!("subject:\"crash test {n}\""), 0, 5).await.expect("search");
            assert!(
                page.hits.iter().any(|h| h.id == id),
                "round {round}: acknowledged message {n} not found"
            );
        }
    }

    // Every acknowledged message is there, byte for byte.
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > KILLS, "too few deliveries to mean anything: {}", acked.len());
    let client = Client::connect(&addr, pin(&data)).await.expect("connect");
    let session = client.login("alice", "alice-password").await.expect("login");
    for (id, n) in &acked {
        let raw = session
            .raw(*id)
            .await
            .unwrap_or_else(|e| panic!("acknowledged message {n} (email {}) is lost: {e}", id.0));
        assert!(raw == message(*n), "acknowledged message {n} is damaged");
        let page = session.search(&format!("subject:\"crash test {n}\""), 0, 5).await.expect("search");
        assert!(page.hits.iter().any(|h| h.id == *id), "acknowledged message {n} is not found by search");
    }
    // Counters equal a recount, as a client sees them.
    let total = session.query(&Query::all().limit(1)).await.expect("query").total;
    let mut all = 0;
    let mut position = 0;
    loop {
        let page = session.query(&Query::all().position(position).limit(1000)).await.expect("query");
        if page.ids.is_empty() {
            break;
        }
        all += page.ids.len() as u64;
        position += page.ids.len() as u32;
    }
    assert_eq!(total, all);
    let (boxes, _) = session.mailboxes().await.expect("mailboxes");
    let inbox = boxes.iter().find(|m| m.role == quail::Role::Inbox).expect("inbox");
    assert_eq!(u64::from(inbox.total), all);
    assert!(all >= acked.len() as u64);
    drop((session, client));

    // One more crash, then the offline check: a clean store.
    child.kill().await.expect("SIGKILL");
    let check =
        Command::new(QUAILD).arg("--data-dir").arg(&data).arg("check").output().await.expect("quaild check");
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && out.contains(": clean"), "quaild check:\n{out}");
    println!(
        "{} acknowledged, {all} stored, {KILLS} kills, {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
}
