//! A login flood before authentication: quaild runs as its own process so
//! its memory can be read from /proc. 1,000 pipelined wrong-password
//! logins on one connection and 50 more connections from the same address:
//! the server's RSS grows by less than 256 MB, a client elsewhere logs in
//! and queries meanwhile, and the failed logins are logged (name and IP,
//! read back from quaild's log) and throttled.

#![cfg(target_os = "linux")]

mod quaild;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quail::{Client, ConnectOptions, Error, Query, Session, Trust};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use quaild::QUAILD;
const PASSWORD: &str = "alice-password";

/// Starts quaild; returns it, its address, and its log lines as they come.
async fn start(data: &Path) -> (Child, String, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(QUAILD)
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn quaild");
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut errs = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let sink = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok(Some(line)) = errs.next_line().await {
            sink.lock().expect("log").push(line);
        }
    });
    let addr = quaild::listening(child.stdout.take().expect("stdout")).await;
    (child, addr, log)
}

fn pin(data: &Path) -> Trust {
    let fp = std::fs::read_to_string(data.join("tls/dev-cert.sha256")).expect("fingerprint");
    Trust::Pinned(fp.trim().parse().expect("pin"))
}

async fn connect(addr: &str, data: &Path, local: &str) -> Client {
    let local: SocketAddr = format!("{local}:0").parse().expect("addr");
    Client::connect_with(addr, pin(data), ConnectOptions::default().local_addr(local)).await.expect("connect")
}

/// A client's way of logging in: retry while the server says it is busy.
async fn login_retrying(client: &Client, name: &str, password: &str) -> Session {
    for _ in 0..400 {
        match client.login(name, password).await {
            Ok(s) => return s,
            Err(Error::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(25)).await,
            Err(e) => panic!("login failed: {e}"),
        }
    }
    panic!("login stayed unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_bounded_logged_and_throttled() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path();
    let (child, addr, log) = start(data).await;
    let pid = child.id().expect("pid");
    let client = connect(&addr, data, "127.0.0.1").await;
    let admin_secret = std::fs::read_to_string(data.join("admin.secret")).expect("admin secret");
    let admin = client.admin(admin_secret.trim()).await.expect("admin");
    admin.create_account("alice", PASSWORD, 0, 0).await.expect("create");
    let before = quaild::status_bytes(pid, "VmRSS:");
    let peak = Arc::new(AtomicU64::new(before));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(quaild::status_bytes(pid, "VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let hostile = connect(&addr, data, "127.0.0.2").await;
    let mut others = Vec::new();
    for _ in 0..50 {
        others.push(connect(&addr, data, "127.0.0.2").await);
    }
    eprintln!(
        "after 51 connections: quaild RSS +{} MiB",
        quaild::status_bytes(pid, "VmRSS:").saturating_sub(before) >> 20
    );
    let mut flood = Vec::new();
    for i in 0..1000 {
        let c = hostile.clone();
        flood
            .push(tokio::spawn(async move { c.login(&format!("mallory{}", i % 7), "wrong password").await }));
    }
    for (n, c) in others.iter().enumerate() {
        for i in 0..4 {
            let c = c.clone();
            flood.push(tokio::spawn(async move { c.login(&format!("eve{n}-{i}"), "wrong password").await }));
        }
    }

    // Meanwhile, from another address, a real user gets in and reads.
    let good = connect(&addr, data, "127.0.0.1").await;
    let session = login_retrying(&good, "alice", PASSWORD).await;
    let page = session.query(&Query::default()).await.expect("query during the flood");
    assert_eq!(page.total, 0);

    let (mut bad, mut refused) = (0u64, 0u64);
    for f in flood {
        match f.await.expect("task") {
            Err(Error::BadCredentials) => bad += 1,
            Err(Error::Unavailable(_)) => refused += 1,
            Ok(_) => panic!("a wrong password logged in"),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    // An attacker that keeps trying one at a time: after a few free
    // failures the address must wait, and its attempts are refused unhashed.
    let mut waits = 0;
    for i in 0..100 {
        match hostile.login(&format!("mallory{i}"), "wrong password").await {
            Err(Error::Unavailable(m)) if m.contains("failed logins") => waits += 1,
            Err(Error::Unavailable(_)) => {}
            Err(Error::BadCredentials) => bad += 1,
            other => panic!("attempt {i} after the flood: {other:?}"),
        }
    }
    sampler.abort();
    let grew = peak.load(Ordering::Relaxed).saturating_sub(before);
    eprintln!(
        "1,300 hostile logins: {bad} checked and refused, {refused} refused unchecked, {waits} throttled; \
         quaild RSS {} MiB before, +{} MiB at peak",
        before >> 20,
        grew >> 20
    );
    assert!(grew < 256 << 20, "quaild's RSS grew by {} MiB", grew >> 20);
    assert!(waits >= 85, "only {waits} of 100 repeated attempts were throttled");
    assert!(bad < 30, "most attempts never reach a password hash: {bad} did");

    // The log names each failed login's account name and address.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = log.lock().expect("log").clone();
    let failed: Vec<&String> = lines.iter().filter(|l| l.contains("failed login")).collect();
    assert_eq!(failed.len() as u64, bad, "one log line per checked failure");
    assert!(failed.iter().all(|l| l.contains("INFO") && l.contains("ip=127.0.0.2") && l.contains("name=")));
    drop((session, good, hostile, others, admin, client));
    drop(child);
}
