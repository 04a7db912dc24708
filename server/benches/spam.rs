//! Spam classifier benchmark (a bench binary: it prints figures, it
//! asserts nothing).
//!
//! `cargo bench -p quail-server --bench spam`
//!
//! Trains the global model on `easy_ham` + `spam` of the spamassassin
//! public corpus (through [`train_global`], as `quaild train` does, into a
//! store on disk), then scores `easy_ham_2`, `hard_ham` and `spam_2` as
//! delivery does and prints precision, recall and F1 per set, the
//! false-positive rate of each ham set, and the cost per message. Verdict
//! headers other filters wrote (`X-Spam-*` and the like) are stripped
//! before training and testing — the classifier does not read them anyway.
//!
//! `QUAIL_BENCH_DUMP=FILE` also writes every message's tokens, one line
//! each (`set`, tab, `score`, then the tokens, tab-separated), for studying
//! other classifiers offline on exactly what this one sees.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quail_server::filter::spam::{self, Spam, SpamSettings};
use quail_server::filter::{FilterSettings, Pipeline};
use quail_server::store::{Db, FjallStore};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora/spamassassin-public-corpus")
}

/// Whether a header field is another filter's verdict.
fn is_verdict_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "spam", "virus", "bogosity", "razor", "pyzor", "dcc", "bayes", "filter", "scanner", "scanned",
        "avcheck", "av-check",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// `raw` without verdict header fields (folded lines included).
fn strip_verdicts(raw: &[u8]) -> Vec<u8> {
    let end = memchr_split(raw);
    let (head, body) = raw.split_at(end);
    let mut out = Vec::with_capacity(raw.len());
    let mut skipping = false;
    for line in head.split_inclusive(|b| *b == b'\n') {
        let folded = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !folded {
            let name = line.iter().position(|b| *b == b':').map(|i| &line[..i]).unwrap_or(b"");
            skipping = is_verdict_header(&String::from_utf8_lossy(name));
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(body);
    out
}

fn memchr_split(raw: &[u8]) -> usize {
    for (i, w) in raw.windows(2).enumerate() {
        if w == b"\n\n" {
            return i + 1;
        }
        if i + 3 < raw.len() && &raw[i..i + 4] == b"\r\n\r\n" {
            return i + 2;
        }
    }
    raw.len()
}

fn read_set(set: &str) -> Option<Vec<Vec<u8>>> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(corpus().join(set)).ok()?.flatten().map(|e| e.path()).collect();
    files.sort();
    Some(files.iter().map(|p| strip_verdicts(&std::fs::read(p).expect("read"))).collect())
}

fn dump_line(out: &mut impl std::io::Write, set: &str, score: f64, tokens: &[String]) {
    let mut line = format!("{set}\t{score}");
    for t in tokens {
        line.push('\t');
        line.extend(t.chars().map(|c| if c.is_control() { ' ' } else { c }));
    }
    line.push('\n');
    out.write_all(line.as_bytes()).expect("dump");
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

fn main() {
    let names = ["easy_ham", "spam", "easy_ham_2", "hard_ham", "spam_2"];
    let mut sets = Vec::new();
    for n in names {
        match read_set(n) {
            Some(s) => sets.push(s),
            None => {
                println!("spam: {} absent; skipped", corpus().display());
                return;
            }
        }
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let db = Db::new(Arc::new(FjallStore::open(&dir.path().join("store")).expect("open")));
    quail_server::upgrade::open(&db, &mut |_| {}).expect("format");

    let t = Instant::now();
    let ham = spam::train_global(&db, &mut sets[0].clone().into_iter(), false, &mut |_| {}).expect("train");
    let sp = spam::train_global(&db, &mut sets[1].clone().into_iter(), true, &mut |_| {}).expect("train");
    let trained = t.elapsed();
    println!(
        "spam: trained on easy_ham ({ham}) + spam ({sp}) in {:.1} s ({:.0} msg/s)",
        trained.as_secs_f64(),
        (ham + sp) as f64 / trained.as_secs_f64()
    );

    let defaults = FilterSettings::default();
    let scorer = Spam::new(SpamSettings {
        junk_score: defaults.spam_junk_score,
        reject_score: defaults.spam_reject_score,
        trusted_authserv_id: None,
    });
    let snap = db.snapshot();
    let mut times = Vec::new();
    let mut scores: Vec<Vec<f64>> = Vec::new();
    let mut fired: std::collections::BTreeMap<(usize, String), (usize, usize)> = Default::default();
    let mut dump = std::env::var_os("QUAIL_BENCH_DUMP")
        .map(|p| std::io::BufWriter::new(std::fs::File::create(p).expect("dump file")));
    if let Some(out) = dump.as_mut() {
        for (set, name) in sets[..2].iter().zip(names) {
            for raw in set {
                dump_line(out, name, f64::NAN, &spam::features(raw).tokens);
            }
        }
    }
    for (i, set) in sets[2..].iter().enumerate() {
        let mut s = Vec::with_capacity(set.len());
        for raw in set {
            let t = Instant::now();
            let f = spam::features(raw);
            let scored = scorer.score(&snap, None, &f).expect("score");
            times.push(t.elapsed());
            if let Some(out) = dump.as_mut() {
                dump_line(out, names[2 + i], scored.score, &f.tokens);
            }
            for r in &scored.reasons {
                let name = r.split([':', ' ']).next().unwrap_or("").to_owned();
                let e = fired.entry((i, name)).or_default();
                e.0 += 1;
                if scored.score >= defaults.spam_junk_score {
                    e.1 += 1;
                }
            }
            s.push(scored.score);
        }
        scores.push(s);
    }
    println!("spam: rules fired per test set (all / in messages scored junk):");
    for ((i, name), (all, junk)) in &fired {
        println!("  {:<11} {name:<20} {all:>5} {junk:>5}", names[2 + i]);
    }
    let report = |threshold: f64, label: &str| {
        println!("spam: at the {label} score {threshold}:");
        println!(
            "  {:<11} {:>6} {:>9} {:>7} {:>7} {:>10}",
            "set", "msgs", "precision", "recall", "F1", "FP rate"
        );
        let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
        for (i, n) in names[2..].iter().enumerate() {
            let is_spam = n.starts_with("spam");
            let flagged = scores[i].iter().filter(|s| **s >= threshold).count();
            let total = scores[i].len();
            if is_spam {
                tp += flagged;
                fn_ += total - flagged;
                let r = flagged as f64 / total as f64;
                println!(
                    "  {:<11} {:>6} {:>9.4} {:>7.4} {:>7.4} {:>10}",
                    n,
                    total,
                    1.0,
                    r,
                    2.0 * r / (1.0 + r),
                    "-"
                );
            } else {
                fp += flagged;
                println!(
                    "  {:<11} {:>6} {:>9} {:>7} {:>7} {:>9.2}% ({flagged})",
                    n,
                    total,
                    "-",
                    "-",
                    "-",
                    100.0 * flagged as f64 / total as f64
                );
            }
        }
        let p = tp as f64 / (tp + fp).max(1) as f64;
        let r = tp as f64 / (tp + fn_).max(1) as f64;
        println!("  {:<11} {:>6} {:>9.4} {:>7.4} {:>7.4}", "all", tp + fp + fn_, p, r, 2.0 * p * r / (p + r));
    };
    report(defaults.spam_junk_score, "junk");
    report(defaults.spam_reject_score, "reject");
    times.sort();
    println!(
        "spam: cost per message (features + score, global model): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        pct(&times, 0.5),
        pct(&times, 0.99),
        pct(&times, 1.0)
    );
    if std::env::var_os("QUAIL_BENCH_SWEEP").is_some() {
        for t in [-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0] {
            let fp_hard = scores[1].iter().filter(|s| **s >= t).count();
            let fp_easy = scores[0].iter().filter(|s| **s >= t).count();
            let tp = scores[2].iter().filter(|s| **s >= t).count();
            let p = tp as f64 / (tp + fp_hard + fp_easy).max(1) as f64;
            println!(
                "  sweep {t:>5.1}: precision {p:.4} recall {:.4} hard_ham FP {fp_hard} easy_ham_2 FP {fp_easy}",
                tp as f64 / scores[2].len() as f64
            );
        }
    }
    drop(Pipeline::none());
}
