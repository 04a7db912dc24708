//! Search benchmark (a bench binary: it prints figures, it asserts nothing).
//!
//! `cargo bench -p quail-server --bench search`
//!
//! Imports the linux-mips list archive (46,821 real messages, 2010-2019)
//! into one account and prints: ingest msg/s with and without the index
//! (the first 10,000 messages into two stores on the same filesystem, in
//! the same run), index bytes per message, and p50/p99 of one-term,
//! two-term, phrase, `from:` and filtered (`is:unread in:inbox`) queries at
//! 10k, the whole archive and a x4 replay (Message-IDs rewritten, ~187k).
//! `QUAIL_BENCH_REPLAY=1` stops after the archive;
//! `QUAIL_BENCH_INGEST_ONLY=1` after the ingest comparison;
//! `QUAIL_BENCH_COST_ONLY=N` prints only where the index's CPU goes, over
//! the first N messages (steady enough under `valgrind --tool=callgrind`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quail_server::account::AccountId;
use quail_server::mail::ingest::{self, ImportItem, Placement};
use quail_server::mail::{MailConfig, Mailstore, Role};
use quail_server::search::query;
use quail_server::store::{Db, FjallStore, KeyRange, Order, Space};
use quail_server::tools::{import, mbox};

fn corpora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora")
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

struct Store {
    _merger: Option<quail_server::search::index::Merger>,
    _dir: tempfile::TempDir,
    db: Db,
    mail: Mailstore,
    account: AccountId,
}

/// A store with one account; `merging` runs the server's background merger.
async fn store(merging: bool) -> Store {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let db = Db::new(Arc::new(FjallStore::open(&dir.path().join("store")).expect("open")));
    quail_server::upgrade::open(&db, &mut |_| {}).expect("format");
    let mail = Mailstore::new(db.clone(), MailConfig::default());
    let account = mail.create_account("mips", "x".into(), 0, 0, 0).await.expect("account").id;
    // The server's background merger, as `quaild serve` runs it.
    let merger = merging.then(|| {
        quail_server::search::index::Merger::spawn(db.clone(), std::time::Duration::from_millis(50))
    });
    Store { _merger: merger, _dir: dir, db, mail, account }
}

/// Imports `raws` in batches of 200, parsing on both cores; msg/s.
async fn ingest(s: &Store, raws: &[Vec<u8>], index: bool, t0: i64) -> f64 {
    let inbox = s.mail.mailbox_by_role(s.account, Role::Inbox).expect("inbox");
    let start = Instant::now();
    for (k, chunk) in raws.chunks(200).enumerate() {
        let half = chunk.len() / 2;
        let (a, b) = (chunk[..half].to_vec(), chunk[half..].to_vec());
        let prep = |v: Vec<Vec<u8>>| {
            std::thread::spawn(move || {
                v.into_iter().map(|r| ingest::prepare_indexed(r, index).expect("prepare")).collect::<Vec<_>>()
            })
        };
        let (ha, hb) = (prep(a), prep(b));
        let mut prepared = ha.join().expect("join");
        prepared.extend(hb.join().expect("join"));
        let items: Vec<ImportItem> = prepared
            .into_iter()
            .enumerate()
            .map(|(j, p)| ImportItem {
                prepared: p,
                placement: Placement {
                    mailboxes: vec![inbox],
                    keywords: if (k * 200 + j) % 3 == 0 { vec!["$seen".into()] } else { Vec::new() },
                    received_ms: t0 + ((k * 200 + j) as i64) * 1000,
                },
            })
            .collect();
        s.mail.import(s.account, &items).await.expect("import");
    }
    raws.len() as f64 / start.elapsed().as_secs_f64()
}

fn index_bytes(db: &Db) -> u64 {
    let mut n = 0u64;
    db.scan_all(Space::Search, &KeyRange::all(), Order::Ascending, |k, v| {
        n += (k.len() + v.len()) as u64;
        Ok::<_, quail_server::Error>(true)
    })
    .expect("scan");
    n
}

const QUERIES: [(&str, &[&str]); 5] = [
    ("one term", &["kernel", "patch", "mips", "octeon", "memory", "bug", "driver", "cache"]),
    ("two terms", &["kernel patch", "mips cache", "octeon driver", "memory bug", "irq timer", "tlb flush"]),
    ("phrase", &["\"linux kernel\"", "\"device tree\"", "\"signed off\"", "\"pull request\""]),
    ("from:", &["from:ralf", "from:linux-mips.org", "from:david", "from:james"]),
    ("filtered", &["is:unread in:inbox"]),
];

fn measure(s: &Store, label: &str) {
    // What the server's background merge would have done by now.
    quail_server::search::index::merge(&s.db).expect("merge");
    let n = s.mail.email_ids(s.account).expect("ids").len();
    println!("  at {n} messages ({label}):");
    for (kind, qs) in QUERIES {
        let mut times = Vec::new();
        let mut total = 0;
        for round in 0..25 {
            for q in qs {
                let node = query::parse(q, 4096).expect("parse");
                let t = Instant::now();
                let found = s.mail.search(s.account, &node, None, 0, 20, true).expect("search");
                times.push(t.elapsed());
                if round == 0 {
                    total += found.total;
                }
            }
        }
        times.sort();
        println!(
            "    {kind:<10} p50 {:>7.2} ms  p99 {:>7.2} ms   ({} queries, {} hits per round)",
            pct(&times, 0.5),
            pct(&times, 0.99),
            times.len(),
            total
        );
    }
}

/// CPU time (user + system) this process has used, in seconds, from
/// /proc (ticks of 1/100 s: ample for runs of seconds).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// Where the index's cost goes, CPU per message on one thread: preparing
/// with and without the terms, and merging the ingest segments of an index
/// written with no merger running.
async fn cost_breakdown(raws: &[Vec<u8>]) {
    let per = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / raws.len() as f64;
    let t = Instant::now();
    for r in raws {
        std::hint::black_box(ingest::prepare_indexed(r.clone(), false).expect("prepare"));
    }
    let plain = per(t);
    let t = Instant::now();
    let mut terms = 0usize;
    for r in raws {
        let p = ingest::prepare_indexed(r.clone(), true).expect("prepare");
        terms += p.terms.terms();
        std::hint::black_box(p);
    }
    let indexed = per(t);
    let s = store(false).await;
    ingest(&s, raws, true, 0).await;
    let t = Instant::now();
    let merges = quail_server::search::index::merge(&s.db).expect("merge");
    let merged = per(t);
    println!(
        "  cost per message, one thread: prepare {plain:.0} us without the terms, {indexed:.0} us with \
         ({:.0} distinct terms a message); merging {merged:.0} us ({merges} merges)",
        terms as f64 / raws.len() as f64
    );
}

#[tokio::main]
async fn main() {
    let dir = corpora().join("linux-mips-list-archive");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(d) => d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "xz")).collect(),
        Err(_) => {
            println!("search: {} absent; skipped", dir.display());
            return;
        }
    };
    files.sort();
    let mut raws = Vec::new();
    let cost_only = std::env::var("QUAIL_BENCH_COST_ONLY").ok().and_then(|v| v.parse::<usize>().ok());
    for f in &files {
        raws.extend(import::collect(f, mbox::Flavor::Mboxrd).expect("read").into_iter().map(|f| f.raw));
        if cost_only.is_some_and(|n| raws.len() >= n) {
            break;
        }
    }
    println!("search, linux-mips list archive: {} messages", raws.len());

    // The cost breakdown alone, on the first N messages (for callgrind:
    // instruction counts do not move with the machine's load).
    if let Some(n) = cost_only {
        cost_breakdown(&raws[..raws.len().min(n)]).await;
        return;
    }
    // Ingest with and without the index, same filesystem, same run; three
    // rounds, alternating, best of each (the machine's other load moves).
    // The process's CPU time per message too, the index's merges
    // included (the merge left when ingest ends is run and counted).
    let first = &raws[..raws.len().min(10_000)];
    let (mut with, mut without) = (0f64, 0f64);
    let mut kept = None;
    for round in 1..=3 {
        let plain = store(true).await;
        let c = cpu_seconds();
        let a = ingest(&plain, first, false, 0).await;
        let cpu_a = (cpu_seconds() - c) * 1e6 / first.len() as f64;
        drop(plain);
        let s = store(true).await;
        let c = cpu_seconds();
        let b = ingest(&s, first, true, 0).await;
        quail_server::search::index::merge(&s.db).expect("merge");
        let cpu_b = (cpu_seconds() - c) * 1e6 / first.len() as f64;
        println!(
            "  round {round}: {b:.0} msg/s with the index, {a:.0} without ({:.2}x); \
             CPU {cpu_b:.0} us a message with, {cpu_a:.0} without ({:.2}x)",
            b / a,
            cpu_a / cpu_b
        );
        (with, without) = (with.max(b), without.max(a));
        kept = Some(s);
    }
    let Some(s) = kept else { return };
    println!(
        "  ingest of {} messages, best of 3: {with:.0} msg/s with the index, {without:.0} without ({:.2}x)",
        first.len(),
        with / without
    );
    cost_breakdown(first).await;
    if std::env::var("QUAIL_BENCH_INGEST_ONLY").is_ok_and(|v| v == "1") {
        return;
    }
    measure(&s, "first 10k");

    let rest = &raws[first.len()..];
    let t = ingest(&s, rest, true, first.len() as i64 * 1000).await;
    println!("  ingest of the other {}: {t:.0} msg/s", rest.len());
    let bytes = index_bytes(&s.db);
    let n = raws.len() as u64;
    quail_server::search::index::merge(&s.db).expect("merge");
    let merged = index_bytes(&s.db);
    println!(
        "  index: {:.0} bytes per message as ingested, {:.0} after the merge (keys + values)",
        bytes as f64 / n as f64,
        merged as f64 / n as f64
    );
    measure(&s, "the whole archive");
    if std::env::var("QUAIL_BENCH_REPLAY").is_ok_and(|v| v == "1") {
        return;
    }
    for r in 1..4 {
        let replay: Vec<Vec<u8>> = raws
            .iter()
            .map(|m| {
                let text = String::from_utf8_lossy(m);
                text.replacen("Message-ID: <", &format!("Message-ID: <r{r}."), 1)
                    .replacen("Message-Id: <", &format!("Message-Id: <r{r}."), 1)
                    .into_bytes()
            })
            .collect();
        let t = ingest(&s, &replay, true, (r * raws.len()) as i64 * 1000).await;
        println!("  replay {r}: {t:.0} msg/s");
    }
    measure(&s, "x4 replay");
}
