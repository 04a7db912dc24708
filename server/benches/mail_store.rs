//! Mail store benchmarks (a bench binary: it prints figures, it asserts nothing).
//!
//! `cargo bench -p quail-server --bench mail_store [-- ingest|storage|inbox|changes|growth]`
//! `QUAIL_BENCH_SCALE=0.1` for a quick run. Baselines are measured in the
//! same run: a bare store commit + fsync for ingest, the raw bytes of the
//! archive for storage, the 1k-mail account for the 100k-mail one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quail_server::account::{self, AccountId};
use quail_server::blob;
use quail_server::mail::ingest::{self, ImportItem, Placement};
use quail_server::mail::{EmailId, MailConfig, Mailstore, Query, Role};
use quail_server::store::{Db, FjallStore, Space};
use quail_server::sync::Kind;
use quail_server::tools::{import, mbox};

fn scale(n: usize) -> usize {
    let s: f64 = std::env::var("QUAIL_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    ((n as f64 * s) as usize).max(10)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

fn corpora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora")
}

struct Bench {
    _dir: tempfile::TempDir,
    db: Db,
    mail: Mailstore,
}

fn open() -> Bench {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let db = Db::new(Arc::new(FjallStore::open(&dir.path().join("store")).expect("open")));
    let mail = Mailstore::new(db.clone(), MailConfig::default());
    Bench { _dir: dir, db, mail }
}

async fn account(b: &Bench, name: &str, hash: &str) -> AccountId {
    b.mail.create_account(name, hash.to_owned(), 0, 0, 0).await.expect("account").id
}

/// Real messages when the corpora are here, generated ones otherwise.
fn sample_messages(n: usize) -> Vec<Vec<u8>> {
    let dir = corpora().join("spamassassin-public-corpus/easy_ham");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    if files.is_empty() {
        eprintln!("note: {} absent; using generated 10 KB messages", dir.display());
        return (0..n).map(|i| generated(i, 10 * 1024)).collect();
    }
    files.iter().cycle().take(n).map(|p| std::fs::read(p).expect("read")).collect()
}

fn generated(i: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Sender {} <s{}@example.net>\r\nTo: alice@example.org\r\nSubject: message {i}\r\n\
         Date: Mon, 3 Feb 2025 10:00:00 +0000\r\nMessage-ID: <g{i}@example.net>\r\n\r\n",
        i % 97,
        i % 97
    )
    .into_bytes();
    while m.len() < size {
        m.extend_from_slice(b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n");
    }
    m
}

async fn bench_ingest(hash: &str) {
    let n = scale(4000);
    let messages = Arc::new(sample_messages(n));
    let avg = messages.iter().map(Vec::len).sum::<usize>() / messages.len();
    // Baseline: one writer, commit + fsync of the same bytes, no parsing.
    let base = {
        let b = open();
        let start = Instant::now();
        for (i, m) in messages.iter().take(n / 4).enumerate() {
            let t = b.db.store().commit(&mut |txn| {
                txn.put(Space::Emails, (i as u64 + 1).to_be_bytes().to_vec(), m.clone());
                Ok(())
            });
            b.db.store().sync_blocking(t.expect("commit")).expect("sync");
        }
        (n / 4) as f64 / start.elapsed().as_secs_f64()
    };
    println!(
        "ingest (parse, blobs, thread, indexes, one transaction, group commit), {avg}-byte average messages:"
    );
    println!("  store commit+fsync, 1 writer (baseline)   {base:8.0} msg/s");
    let mut one = 0.0;
    for writers in [1usize, 20] {
        let b = open();
        let a = account(&b, "alice", hash).await;
        let per = if writers == 1 { n / 4 } else { n / writers };
        let before = b.db.metrics();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (mail, messages) = (b.mail.clone(), Arc::clone(&messages));
            tasks.push(tokio::spawn(async move {
                for i in 0..per {
                    let m = &messages[(w * per + i) % messages.len()];
                    mail.deliver(&[a], m, 1_750_000_000_000 + i as i64).await.expect("deliver");
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
        let rate = (per * writers) as f64 / start.elapsed().as_secs_f64();
        let m = b.db.metrics();
        let per_fsync = (m.commits - before.commits) as f64 / (m.fsyncs - before.fsyncs).max(1) as f64;
        if writers == 1 {
            one = rate;
            println!(
                "  deliver, 1 writer                         {rate:8.0} msg/s  ({:.2}x baseline; {per_fsync:.1} commits per fsync)",
                rate / base
            );
        } else {
            println!(
                "  deliver, 20 writers                       {rate:8.0} msg/s  ({:.2}x baseline, {:.2}x one writer; {per_fsync:.1} commits per fsync)",
                rate / base,
                rate / one
            );
        }
    }
}

async fn bench_storage(hash: &str) {
    let dir = corpora().join("linux-mips-list-archive");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!("storage: {} absent; skipped", dir.display());
        return;
    };
    let mut files: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "xz")).collect();
    files.sort();
    let take = ((files.len() as f64
        * std::env::var("QUAIL_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0))
    .ceil() as usize)
        .clamp(1, files.len());
    let b = open();
    account(&b, "mips", hash).await;
    let accounts = account::Accounts::new(b.db.clone());
    let (mut msgs, mut raw) = (0u64, 0u64);
    let start = Instant::now();
    for f in files.iter().take(take) {
        let opts = import::ImportOptions {
            account: "mips",
            path: f,
            mailbox: None,
            flavor: mbox::Flavor::Mboxrd,
            now_ms: 0,
        };
        let r = import::import(&b.mail, &accounts, &opts, |_, _| {}).await.expect("import");
        assert!(r.failed.is_empty());
        msgs += r.imported.len() as u64;
        raw += r.bytes;
    }
    let secs = start.elapsed().as_secs_f64();
    let blobs = blob::stored_bytes(&b.db).expect("bytes");
    // The whole data dir (records, indexes, change log, journal, blobs)
    // after a clean shutdown.
    let Bench { _dir: dir, db, mail } = b;
    drop((db, mail, accounts));
    let stored = dir_bytes(dir.path());
    println!("storage, linux-mips list archive ({take} of {} yearly files):", files.len());
    println!("  {msgs} messages, {raw} raw bytes, imported in {secs:.1} s ({:.0} msg/s)", msgs as f64 / secs);
    println!(
        "  whole data dir {stored} bytes after a clean shutdown: {:.0} bytes per message against {:.0} raw ({:.2}x raw; blobs alone {:.2}x)",
        stored as f64 / msgs as f64,
        raw as f64 / msgs as f64,
        stored as f64 / raw as f64,
        blobs as f64 / raw as f64
    );
}

/// Bytes of every file under `p`.
fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            let path = e.path();
            n += if path.is_dir() { dir_bytes(&path) } else { e.metadata().map_or(0, |m| m.len()) };
        }
    }
    n
}

/// An account with `n` small messages in its inbox, imported in batches.
async fn filled(b: &Bench, name: &str, hash: &str, n: usize) -> AccountId {
    let a = account(b, name, hash).await;
    let inbox = b.mail.mailbox_by_role(a, Role::Inbox).expect("inbox");
    let mut i = 0;
    while i < n {
        let items: Vec<ImportItem> = (i..(i + 500).min(n))
            .map(|j| ImportItem {
                prepared: ingest::prepare(&generated(j, 600)).expect("prepare"),
                placement: Placement {
                    mailboxes: vec![inbox],
                    keywords: Vec::new(),
                    received_ms: 1_700_000_000_000 + j as i64 * 1000,
                },
            })
            .collect();
        b.mail.import(a, &items).await.expect("import");
        i += 500;
    }
    a
}

async fn bench_inbox(hash: &str) {
    let n = scale(100_000);
    let b = open();
    let a = filled(&b, "big", hash, n).await;
    let inbox = b.mail.mailbox_by_role(a, Role::Inbox).expect("inbox");
    let rounds = scale(2000);
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let page = b
            .mail
            .query(
                a,
                &Query {
                    filter: quail_server::mail::Filter { mailbox: Some(inbox), ..Default::default() },
                    limit: 50,
                    ..Query::default()
                },
            )
            .expect("query");
        let mut emails = Vec::with_capacity(50);
        for id in &page.ids {
            emails.push(b.mail.email(a, *id).expect("get").expect("email"));
        }
        std::hint::black_box(&emails);
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "first page (50, headers + keywords) of a {n}-mail inbox, in-process: p50 {:.0} us, p99 {:.0} us",
        pct(&times, 0.5),
        pct(&times, 0.99)
    );
}

/// The same over loopback QUIC through the SDK: query + get of 50.
async fn bench_inbox_wire(hash: &str) {
    let n = scale(100_000);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let server =
        quail_server::Server::start(quail_server::Config::ephemeral(dir.path())).await.expect("server");
    let services = server.services();
    let bench = Bench {
        _dir: tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir"),
        db: services.db.clone(),
        mail: services.mail.clone(),
    };
    let _ = filled(&bench, "big", hash, n).await;
    let client = quail::Client::connect(
        &server.addr().to_string(),
        quail::Trust::Pinned(server.fingerprint().parse().expect("pin")),
    )
    .await
    .expect("connect");
    let session = client.login("big", "bench-password").await.expect("login");
    let inbox = session
        .mailboxes()
        .await
        .expect("boxes")
        .0
        .iter()
        .find(|m| m.role == quail::Role::Inbox)
        .expect("inbox")
        .id;
    let rounds = scale(2000);
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let page = session.query(&quail::Query::mailbox(inbox).limit(50)).await.expect("query");
        let (emails, _) = session
            .get(&page.ids, &[quail::Property::Envelope, quail::Property::Keywords])
            .await
            .expect("get");
        std::hint::black_box(&emails);
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "first page (50, headers + keywords) of a {n}-mail inbox, SDK over loopback QUIC (query + get): p50 {:.0} us, p99 {:.0} us",
        pct(&times, 0.5),
        pct(&times, 0.99)
    );
    drop((session, client, bench));
    server.shutdown().await;
}

async fn bench_changes(hash: &str) {
    // Both accounts live in one store, so the comparison isolates the
    // account's size from the shape of the LSM tree.
    let big = scale(100_000);
    let b = open();
    let accounts =
        [(1000usize, filled(&b, "small", hash, 1000).await), (big, filled(&b, "big", hash, big).await)];
    let ids: Vec<Vec<EmailId>> = accounts.iter().map(|(_, a)| b.mail.email_ids(*a).expect("ids")).collect();
    let rounds = 200;
    let mut times = [Vec::with_capacity(rounds), Vec::with_capacity(rounds)];
    for r in 0..rounds {
        for (i, (_, a)) in accounts.iter().enumerate() {
            let since = b.mail.state(*a).expect("state");
            for k in 0..100 {
                let id = ids[i][(r * 100 + k) % ids[i].len()];
                // A keyword new in each round, so every call is a real change.
                b.mail.set_keywords(*a, &[id], &[format!("round{r}")], &[], None).await.expect("flag");
            }
            let t = Instant::now();
            let c = b.mail.changes(*a, Kind::Email, since, 1000).expect("changes");
            times[i].push(t.elapsed());
            assert_eq!(c.updated.len() + c.created.len(), 100);
        }
    }
    println!(
        "changes() after 100 mutations (100 setKeywords, then one changes call), both accounts in one store:"
    );
    for t in &mut times {
        t.sort();
    }
    let base = pct(&times[0], 0.5);
    for (i, (n, _)) in accounts.iter().enumerate() {
        let p50 = pct(&times[i], 0.5);
        println!(
            "  {n:>7}-mail account: p50 {p50:6.0} us, p99 {:6.0} us  ({:.2}x the 1k-mail account)",
            pct(&times[i], 0.99),
            p50 / base
        );
    }
}

/// A message like real mail: threads of up to eight, replies citing their
/// parents in In-Reply-To and References, bodies of a few KB.
fn realistic(i: usize, salt: &str) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the", "patch", "kernel", "build", "fails", "with", "gcc", "on", "mips", "board", "please", "review",
        "thanks", "regards", "merged", "into", "tree", "version", "driver", "memory", "cache", "flush",
    ];
    let thread = i / 8;
    let pos = i % 8;
    let mut m = format!(
        "From: Person {} <p{}@example.net>\r\nTo: list@example.org\r\nDate: Mon, 3 Feb 2025 {:02}:{:02}:00 +0000\r\n\
         Message-ID: <{salt}{i}@example.net>\r\nSubject: {}topic {thread} of the list\r\n",
        i % 211,
        i % 211,
        (i / 60) % 24,
        i % 60,
        if pos == 0 { "" } else { "Re: " }
    );
    if pos > 0 {
        let parents: Vec<String> = (thread * 8..i).map(|p| format!("<{salt}{p}@example.net>")).collect();
        m.push_str(&format!(
            "In-Reply-To: {}\r\nReferences: {}\r\n",
            parents[parents.len() - 1],
            parents.join(" ")
        ));
    }
    m.push_str("\r\n");
    let mut x = i as u64 * 2654435761 + 1;
    let words = 300 + (i * 37) % 500;
    for w in 0..words {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        m.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
        m.push_str(if w % 12 == 11 { "\r\n" } else { " " });
    }
    m.push_str("\r\n");
    m.into_bytes()
}

/// The harmonic mean of the rates of `who`'s blocks (equal-sized blocks:
/// total messages over total time).
fn mean_of(rates: &[(&str, f64)], who: &str) -> f64 {
    let v: Vec<f64> = rates.iter().filter(|(t, _)| *t == who).map(|(_, r)| *r).collect();
    v.len() as f64 / v.iter().map(|r| 1.0 / r).sum::<f64>()
}

/// No degradation as an account grows: import 100,000 realistic messages
/// into one account (msg/s per 10k chunk), then deliver 2,000 through the
/// gateway over QUIC with 4 senders into it, beside 2,000 into an empty
/// account of the same store.
async fn bench_growth(hash: &str) {
    let n = scale(100_000);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let server =
        quail_server::Server::start(quail_server::Config::ephemeral(dir.path())).await.expect("server");
    let mail = server.services().mail.clone();
    let big = mail.create_account("big", hash.to_owned(), 0, 0, 0).await.expect("account").id;
    mail.create_account("empty", hash.to_owned(), 0, 0, 0).await.expect("account");
    mail.create_account("warmup", hash.to_owned(), 0, 0, 0).await.expect("account");
    let inbox = mail.mailbox_by_role(big, Role::Inbox).expect("inbox");
    println!("growth: import {n} realistic messages (threads of 8) into one account, 64 per transaction:");
    let chunk = (n / 10).max(1);
    let mut i = 0;
    let all = Instant::now();
    while i < n {
        let end = (i + chunk).min(n);
        let t = Instant::now();
        let mut j = i;
        while j < end {
            let items: Vec<ImportItem> = (j..(j + 64).min(end))
                .map(|k| ImportItem {
                    prepared: ingest::prepare(&realistic(k, "imp")).expect("prepare"),
                    placement: Placement {
                        mailboxes: vec![inbox],
                        keywords: Vec::new(),
                        received_ms: 1_700_000_000_000 + k as i64 * 1000,
                    },
                })
                .collect();
            mail.import(big, &items).await.expect("import");
            j += 64;
        }
        println!("  messages {i:>7}..{end:<7} {:8.0} msg/s", (end - i) as f64 / t.elapsed().as_secs_f64());
        i = end;
    }
    println!("  all {n}: {:.0} msg/s", n as f64 / all.elapsed().as_secs_f64());

    let deliveries = scale(2000);
    let senders = 4;
    let secret = server.secret(quail_server::account::Credential::Gateway).expect("secret");
    // A warm-up round (not counted), then 2,000 per account in blocks of
    // 500 in ABBA ABBA order, so the store's own drift over time (flushes
    // and compactions of what the import wrote) weighs on both alike.
    let block = (deliveries / 4).max(senders);
    let mut order = vec![("warmup", block)];
    for to in ["empty", "big", "big", "empty", "empty", "big", "big", "empty"] {
        order.push((to, block));
    }
    let mut rates: Vec<(&str, f64)> = Vec::new();
    let mut line = String::new();
    for (round, (to, count)) in order.iter().enumerate() {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for s in 0..senders {
            let addr = server.addr().to_string();
            let pin = server.fingerprint().to_owned();
            let secret = secret.clone();
            let rcpt = format!("{to}@example.org");
            let count = *count;
            tasks.push(tokio::spawn(async move {
                let client = quail::Client::connect(&addr, quail::Trust::Pinned(pin.parse().expect("pin")))
                    .await
                    .expect("connect");
                let gateway = client.gateway(&secret).await.expect("gateway");
                let envelope = quail::Envelope { rcpt_to: vec![rcpt], ..Default::default() };
                for k in 0..count / senders {
                    let m = realistic(s * 100_000 + k, &format!("d{round}-"));
                    let r = gateway.deliver(&envelope, &m).await.expect("deliver");
                    r[0].outcome.clone().expect("delivered");
                }
            }));
        }
        for t in tasks {
            t.await.expect("sender");
        }
        let rate = (count / senders * senders) as f64 / start.elapsed().as_secs_f64();
        line.push_str(&format!(" {to} {rate:.0}"));
        if *to != "warmup" {
            rates.push((to, rate));
        }
    }
    println!("  deliver over QUIC, {senders} senders, blocks of {block} (msg/s):{line}");
    let total = |w: &str| rates.iter().filter(|(t, _)| *t == w).count() * block;
    println!(
        "  into the empty account: {:.0} msg/s; into the {n}-mail account: {:.0} msg/s ({} each)",
        mean_of(&rates, "empty"),
        mean_of(&rates, "big"),
        total("big")
    );
    println!("  big/empty: {:.2} (goal >= 0.9)", mean_of(&rates, "big") / mean_of(&rates, "empty"));
    drop(mail);
    server.shutdown().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    let hash = account::hash_password("bench-password").expect("hash");
    if run("ingest") {
        bench_ingest(&hash).await;
    }
    if run("inbox") {
        bench_inbox(&hash).await;
    }
    if run("inbox-wire") || run("inbox") {
        bench_inbox_wire(&hash).await;
    }
    if run("changes") {
        bench_changes(&hash).await;
    }
    if run("storage") {
        bench_storage(&hash).await;
    }
    if run("growth") {
        bench_growth(&hash).await;
    }
}
