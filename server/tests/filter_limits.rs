//! Hostile structure — a zip bomb, 100-deep MIME nesting, 100 nested
//! messages, 10,000 parts, a 24 MB body for the spam features — gets a
//! verdict, in bounded memory: the peak
//! resident set (VmHWM, reset before each case) is asserted. One test in
//! its own binary, so nothing else runs beside it.

#![cfg(target_os = "linux")]

mod support;

use quail_server::filter::virus::EICAR;
use quail_server::filter::{Direction, Pipeline, Verdict};
use support::eicar::{attachment, with_part, zip_of};

fn status(field: &str) -> usize {
    let s = std::fs::read_to_string("/proc/self/status").expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Runs `f`; returns its value and how far the peak resident set rose
/// above the resident set at the start.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    // Writing 5 resets the peak to the current resident set (Linux 4.0+).
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let base = status("VmRSS:");
    let v = f();
    (v, status("VmHWM:").saturating_sub(base))
}

#[test]
fn hostile_structure_gets_a_verdict_in_bounded_memory() {
    let p = Pipeline::default();
    // A zip bomb: 64 MiB of zeros deflate to about 64 KiB.
    let zeros = vec![0u8; 64 << 20];
    let bomb = zip_of("zeros.txt", &zeros, zip::CompressionMethod::Deflated);
    drop(zeros);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let raw = attachment("bomb.zip", &bomb);
    let (verdict, peak) = peak_during(|| p.check(&raw, Direction::Inbound));
    match verdict {
        Verdict::Reject(why) => assert!(why.contains("zip bomb"), "{why}"),
        other => panic!("zip bomb: {other:?}"),
    }
    // The limit is the ratio: at most 200x the entry's compressed size is
    // ever expanded, far below the 64 MiB it claims.
    assert!(
        peak < 40 * raw.len() + (16 << 20),
        "zip bomb: peak {peak} bytes for a {}-byte message",
        raw.len()
    );

    // 100-deep MIME nesting.
    let mut nested = String::from("From: m@example.net\r\nSubject: deep\r\nMIME-Version: 1.0\r\n");
    for i in 0..100 {
        nested.push_str(&format!("Content-Type: multipart/mixed; boundary=\"d{i}\"\r\n\r\n--d{i}\r\n"));
    }
    nested.push_str("Content-Type: text/plain\r\n\r\ndeep inside\r\n");
    for i in (0..100).rev() {
        nested.push_str(&format!("--d{i}--\r\n"));
    }
    let (verdict, peak) = peak_during(|| p.check(nested.as_bytes(), Direction::Inbound));
    // Multipart nesting is the parser's to bound: the one text part in it
    // is clean.
    assert_eq!(verdict, Verdict::Accept, "nesting");
    assert!(peak < 64 * nested.len() + (8 << 20), "nesting: peak {peak}");

    // 100 messages nested in each other, the last with EICAR: more than
    // the scanner opens, so refused as uninspectable (never a stack
    // overflow, never let through unseen).
    let mut msg = String::from_utf8(attachment("eicar.bin", EICAR)).expect("utf8");
    for _ in 0..100 {
        msg = String::from_utf8(with_part("\"m\"", "m", "Content-Type: message/rfc822", &msg)).expect("utf8");
    }
    let (verdict, peak) = peak_during(|| p.check(msg.as_bytes(), Direction::Inbound));
    assert!(matches!(verdict, Verdict::Reject(_)), "{verdict:?}");
    assert!(peak < 64 * msg.len() + (8 << 20), "nested messages: peak {peak}");

    // 10,000 parts.
    let mut many = String::from(
        "From: m@example.net\r\nSubject: many\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"p\"\r\n\r\n",
    );
    for i in 0..10_000 {
        many.push_str(&format!("--p\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n"));
    }
    many.push_str("--p--\r\n");
    let (verdict, peak) = peak_during(|| p.check(many.as_bytes(), Direction::Inbound));
    assert_eq!(verdict, Verdict::Accept);
    assert!(peak < 200 * many.len() + (16 << 20), "10,000 parts: peak {peak} for {} bytes", many.len());

    // A 24 MB body the spam features would read whole: HTML that is one
    // long string to its tokenizer (an entity every ten bytes), and a
    // plain part of non-ASCII words. The features read a bounded part of
    // each: less memory than the message itself takes.
    let html = "word&nbsp;".repeat(1200 << 10);
    let plain = "привет мир ".repeat(600 << 10);
    let big = format!(
        "From: a@example.net\r\nSubject: big\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/html\r\n\r\n{html}\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{plain}\r\n--b--\r\n"
    )
    .into_bytes();
    drop((html, plain));
    let (features, peak) = peak_during(|| quail_server::filter::spam::features(&big));
    assert!(features.tokens.contains(&"word".to_owned()), "{:?}", features.tokens);
    assert!(peak < big.len() / 2, "spam features: peak {peak} for {} bytes", big.len());
}
