//! Every fuzz target's body over its seed corpus, on stable: the checked-in
//! seeds, the shared real-mail corpora (skipped with a note when absent),
//! and for the protocol decoder every truncation and many byte flips of
//! valid messages.

use std::path::{Path, PathBuf};

use crate::fuzzing;
use quail_protocol::quail_capnp::{Sort, Tristate, query};

/// The shared corpora; in CI (`CI` set) their absence fails the test.
fn shared_corpora(test: &str) -> Option<PathBuf> {
    let c = repo().join("../shared/corpora");
    if c.is_dir() {
        return Some(c);
    }
    assert!(std::env::var_os("CI").is_none(), "{test}: {} is absent, and CI is set", c.display());
    eprintln!("NOTE {test}: {} is absent; running the checked-in seeds only", c.display());
    None
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn seeds(target: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    files_under(&repo().join("fuzz/seeds").join(target), &mut out);
    assert!(!out.is_empty(), "fuzz/seeds/{target} is empty");
    out
}

/// The MIME seeds and the shared corpora's real mail.
fn mime_inputs(test: &str) -> Vec<PathBuf> {
    let mut files = seeds("mime");
    if let Some(corpora) = shared_corpora(test) {
        for d in [
            "mail-parser-crate-resources",
            "python-email-testdata",
            "enmime-testdata",
            "gmime-testdata",
            "mimekit-testdata",
            "mailman-testdata",
            "talon-fixtures",
            "rspamd-test-messages",
            "flufl-bounce-testdata",
        ] {
            files_under(&corpora.join(d), &mut files);
        }
    }
    files
}

#[test]
fn mime_body_over_seeds_and_shared_corpora() {
    let files = mime_inputs("mime");
    for f in &files {
        let data = std::fs::read(f).expect("read seed");
        fuzzing::mime(&data);
        // Truncated mail is common in the wild.
        fuzzing::mime(&data[..data.len() / 2]);
    }
    println!("mime: {} inputs", files.len() * 2);
}

/// A delivery parses once, for the filters and for storage: what it
/// stores is what parsing alone gives, for all the real mail we have,
/// whole and truncated.
#[test]
fn one_parse_for_filters_and_storage_reads_as_parsing_alone() {
    let files = mime_inputs("one parse");
    for f in &files {
        let data = std::fs::read(f).expect("read seed");
        for raw in [&data[..], &data[..data.len() / 2]] {
            let shared = crate::mail::parse::from_parse(raw, crate::filter::parse(raw));
            assert!(shared == crate::mail::parse::parse(raw), "{}", f.display());
        }
    }
    println!("one parse: {} inputs", files.len() * 2);
}

fn encoded_queries() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, (unread, sort, anchor)) in [
        (Tristate::Any, Sort::ReceivedDesc, 0u64),
        (Tristate::Yes, Sort::ReceivedAsc, 0),
        (Tristate::No, Sort::ReceivedDesc, 7),
        (Tristate::Any, Sort::ReceivedAsc, u64::MAX),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = capnp::message::Builder::new_default();
        {
            let mut q = m.init_root::<query::Builder<'_>>();
            q.set_sort(sort);
            q.set_position(i as u32 * 1000);
            q.set_anchor(anchor);
            q.set_anchor_offset(-(i as i32));
            q.set_limit(if i == 3 { u32::MAX } else { i as u32 });
            q.set_collapse_threads(i == 2);
            let mut f = q.init_filter();
            f.set_in_mailbox(i as u64);
            f.set_unread(unread);
            f.set_from(if i == 1 { "a@b" } else { "" });
        }
        out.push(capnp::serialize::write_message_to_words(&m));
    }
    out
}

#[test]
fn protocol_query_body_over_seeds_truncations_and_flips() {
    let mut inputs: Vec<Vec<u8>> =
        seeds("protocol_query").iter().map(|f| std::fs::read(f).expect("read seed")).collect();
    if std::env::var_os("QUAIL_WRITE_SEEDS").is_some() {
        for (i, q) in encoded_queries().iter().enumerate() {
            std::fs::write(repo().join(format!("fuzz/seeds/protocol_query/query-{i}.bin")), q)
                .expect("write seed");
        }
    }
    for valid in encoded_queries() {
        for cut in 0..valid.len() {
            inputs.push(valid[..cut].to_vec());
        }
        for pos in 0..valid.len() {
            for bit in [0x01u8, 0x80, 0xff] {
                let mut v = valid.clone();
                v[pos] ^= bit;
                inputs.push(v);
            }
        }
        inputs.push(valid);
    }
    for input in &inputs {
        fuzzing::protocol_query(input);
    }
    println!("protocol_query: {} inputs", inputs.len());
}

#[test]
fn mbox_body_over_seeds_and_shared_mboxes() {
    let mut files = seeds("mbox");
    if let Some(corpora) = shared_corpora("mbox") {
        for f in [
            "mail-parser-crate-resources/mbox/sample.mbox",
            "gmime-testdata/mbox/substring.mbox",
            "bogofilter-testdata/good.mbx",
        ] {
            let p = corpora.join(f);
            assert!(p.is_file(), "{} is missing from the corpora", p.display());
            files.push(p);
        }
    }
    for f in &files {
        let data = std::fs::read(f).expect("read seed");
        fuzzing::mbox(&data);
        for cut in [1, 7, data.len() / 3, data.len() / 2] {
            fuzzing::mbox(&data[..cut.min(data.len())]);
        }
    }
    println!("mbox: {} files", files.len());
}

#[test]
fn search_query_body_over_seeds_and_their_mutations() {
    let mut n = 0;
    for path in seeds("search_query") {
        let seed = std::fs::read(&path).expect("seed");
        fuzzing::search_query(&seed);
        for cut in 0..seed.len() {
            fuzzing::search_query(&seed[..cut]);
            let mut flipped = seed.clone();
            flipped[cut] ^= 0x20;
            fuzzing::search_query(&flipped);
            n += 3;
        }
    }
    assert!(n > 100, "{n} runs");
}
