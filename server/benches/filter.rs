//! Filter benchmark (a bench binary: it prints figures, it asserts nothing).
//!
//! `cargo bench -p quail-server --bench filter`
//!
//! Over the spamassassin public corpus (6,046 real messages, ham and spam,
//! many with attachments), prints the filters' cost per message (p50/p99:
//! the built-in virus scanner alone, and with spam scoring against a global
//! model trained on `easy_ham` + `spam`) and delivery msg/s with the filters
//! on and off, into two stores on the same filesystem in the same run, 16
//! deliveries at a time. `QUAIL_BENCH_COST_ONLY=N` stops after the
//! per-message costs, over every k-th message (N in all), for
//! `valgrind --tool=callgrind`, whose instruction counts do not move with
//! the machine's load; with `QUAIL_BENCH_DELIVER=on` (`off`) it then
//! delivers them with (without) the filters, so that the difference of
//! the runs' counts is what the filters add to delivery.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quail_server::filter::spam::train_global;
use quail_server::filter::{Direction, Pipeline, Verdict};
use quail_server::mail::{MailConfig, Mailstore};
use quail_server::store::{Db, FjallStore};

fn corpora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora")
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

/// p50, p99, max and mean of `times`.
fn summary(times: &mut [Duration]) -> String {
    times.sort();
    let mean = times.iter().sum::<Duration>().as_secs_f64() * 1e3 / times.len() as f64;
    format!(
        "p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  mean {mean:.3} ms",
        pct(times, 0.5),
        pct(times, 0.99),
        pct(times, 1.0)
    )
}

/// Messages to train the global model on: ham, spam.
type Training = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// A new store, with the global spam model trained on `training` (ham,
/// spam) when given.
fn store(dir: &Path, training: Option<&Training>) -> Db {
    let db = Db::new(Arc::new(FjallStore::open(&dir.join("store")).expect("open")));
    quail_server::upgrade::open(&db, &mut |_| {}).expect("format");
    if let Some((ham, spam)) = training {
        train_global(&db, &mut ham.clone().into_iter(), false, &mut |_| {}).expect("train");
        train_global(&db, &mut spam.clone().into_iter(), true, &mut |_| {}).expect("train");
    }
    db
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

/// Delivers every message, 16 at a time; msg/s and the process's CPU
/// time per message in microseconds (the store's background work
/// included).
async fn deliver_all(filter: Pipeline, raws: &Arc<Vec<Vec<u8>>>, training: Option<&Training>) -> (f64, f64) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let db = store(dir.path(), training);
    let mail = Arc::new(Mailstore::new(db.clone(), MailConfig::default()).with_filter(filter));
    let account = mail.create_account("bench", "x".into(), 0, 0, 0).await.expect("account").id;
    // As the server does at start.
    mail.filter().warm(&db);
    let _merger = quail_server::search::index::Merger::spawn(db, Duration::from_millis(50));
    let cpu = cpu_seconds();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (mail, raws) = (Arc::clone(&mail), Arc::clone(raws));
        tasks.push(tokio::spawn(async move {
            for raw in raws.iter().skip(w).step_by(16) {
                // Refused messages count as handled: the work was done.
                let _ = mail.deliver(&[account], raw, 0).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let rate = raws.len() as f64 / start.elapsed().as_secs_f64();
    (rate, (cpu_seconds() - cpu) * 1e6 / raws.len() as f64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let root = corpora().join("spamassassin-public-corpus");
    let mut raws = Vec::new();
    let mut training = (Vec::new(), Vec::new());
    for set in ["easy_ham", "easy_ham_2", "hard_ham", "spam", "spam_2"] {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(root.join(set)) {
            Ok(d) => d.flatten().map(|e| e.path()).collect(),
            Err(_) => {
                println!("filter: {} absent; skipped", root.display());
                return;
            }
        };
        files.sort();
        let read: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).expect("read")).collect();
        match set {
            "easy_ham" => training.0 = read.clone(),
            "spam" => training.1 = read.clone(),
            _ => {}
        }
        raws.extend(read);
    }
    println!("filter, spamassassin public corpus: {} messages", raws.len());
    let cost_only = std::env::var("QUAIL_BENCH_COST_ONLY").ok().and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = cost_only {
        // Every set in proportion: every k-th message.
        let step = (raws.len() / n.max(1)).max(1);
        raws = raws.into_iter().step_by(step).take(n).collect();
        println!("  costs only, over {} of them", raws.len());
    }

    let p = Pipeline::default();
    let mut times = Vec::with_capacity(raws.len());
    let mut refused = 0;
    for raw in &raws {
        let t = Instant::now();
        let v = p.check(raw, Direction::Inbound);
        times.push(t.elapsed());
        if matches!(v, Verdict::Reject(_)) {
            refused += 1;
        }
    }
    println!("  built-in filter per message: {}  ({refused} refused)", summary(&mut times));

    // What ingest itself does to each message before its transaction
    // (parse, index terms, compress): the yardstick for the filters.
    let mut times = Vec::with_capacity(raws.len());
    for raw in &raws {
        let t = Instant::now();
        let prepared = quail_server::mail::ingest::prepare(raw);
        times.push(t.elapsed());
        drop(prepared);
    }
    println!("  ingest's own preparation per message: {}", summary(&mut times));

    // Virus scan and spam score, as delivery runs them, one recipient.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let db = store(dir.path(), Some(&training));
    // The global model is read at start, as the server does.
    let t = Instant::now();
    p.warm(&db);
    println!("  reading the global model (at start): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let mut times = Vec::with_capacity(raws.len());
    let mut junk = 0;
    for raw in &raws {
        let t = Instant::now();
        let judged = p.inbound(&db, &[1], raw, quail_server::filter::parse(raw).as_ref());
        times.push(t.elapsed());
        if let Ok(j) = judged
            && j[0].spam == quail_server::filter::spam::SPAM
        {
            junk += 1;
        }
    }
    let mut slowest: Vec<(Duration, usize)> = times.iter().copied().zip(0..).collect();
    slowest.sort_unstable_by(|a, b| b.cmp(a));
    let share = slowest.iter().take(raws.len() / 100).map(|(t, _)| *t).sum::<Duration>().as_secs_f64()
        / times.iter().sum::<Duration>().as_secs_f64();
    println!("  virus scan + spam score per message: {}  ({junk} junk)", summary(&mut times));
    println!(
        "    the slowest 1 % take {:.0} % of the time; slowest: {}",
        share * 100.0,
        slowest
            .iter()
            .take(3)
            .map(|(t, i)| format!("{:.1} ms ({} KiB, #{i})", t.as_secs_f64() * 1e3, raws[*i].len() >> 10))
            .collect::<Vec<_>>()
            .join(", ")
    );

    if cost_only.is_some() {
        // `QUAIL_BENCH_DELIVER=on` (or `off`) also delivers them once, with
        // (without) the filters: the difference of two runs' instruction
        // counts is what delivery costs, what the filters add to it.
        let filters = match std::env::var("QUAIL_BENCH_DELIVER").as_deref() {
            Ok("on") => Pipeline::default(),
            Ok("off") => Pipeline::none(),
            _ => return,
        };
        let (rate, cpu) = deliver_all(filters, &Arc::new(raws), Some(&training)).await;
        println!("  deliver: {rate:.0} msg/s, CPU {cpu:.0} us a message");
        return;
    }
    let raws = Arc::new(raws);
    // Both stores hold the same trained model, so they differ only in
    // whether the filters run; runs alternate, and the best of three of
    // each is reported, so neither side pays for the other's warm-up.
    let (mut off, mut on) = (0.0f64, 0.0f64);
    let (mut cpu_off, mut cpu_on) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let (rate, cpu) = deliver_all(Pipeline::none(), &raws, Some(&training)).await;
        (off, cpu_off) = (off.max(rate), cpu_off.min(cpu));
        let (rate, cpu) = deliver_all(Pipeline::default(), &raws, Some(&training)).await;
        (on, cpu_on) = (on.max(rate), cpu_on.min(cpu));
    }
    println!("  deliver, 16 at a time: {on:.0} msg/s with the filters, {off:.0} without ({:.2}x)", on / off);
    println!(
        "    CPU per message (the store's background work included): {cpu_on:.0} us with the filters, \
         {cpu_off:.0} without ({:.2}x)",
        cpu_off / cpu_on
    );
}
