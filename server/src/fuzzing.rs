//! Bodies of the fuzz targets in `fuzz/`. Each takes arbitrary bytes and
//! checks invariants; none may panic. `fuzzing_seeds.rs` runs every body
//! over its seed corpus on stable, so a regression shows up in `cargo test`
//! without a fuzzer. Compiled only for tests and under `cfg(fuzzing)` (set
//! by `cargo fuzz`): it is not part of the server's API.

use quail_protocol::quail_capnp::query;

use crate::mail::parse::{self, PREVIEW_CHARS};
use crate::tools::mbox;

/// Largest input the bodies look at (keeps fuzzing fast; real mail limits
/// are enforced before parsing).
pub const MAX_INPUT: usize = 1 << 20;

/// MIME ingest: parsing any bytes yields an envelope within bounds.
pub fn mime(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    let parsed = parse::parse(data);
    assert!(parsed.preview.chars().count() <= PREVIEW_CHARS);
    assert!(!parsed.preview.starts_with(char::is_whitespace));
    assert!(parsed.body.walk().len() <= parse::MAX_PARTS + 1);
    let env = &parsed.envelope;
    assert!(env.subject.len() <= parse::caps::SUBJECT_BYTES);
    for list in [&env.from, &env.sender, &env.reply_to, &env.to, &env.cc, &env.bcc] {
        assert!(list.len() <= parse::caps::ADDRESSES_PER_FIELD);
    }
    assert!(env.references.len() <= parse::caps::REFERENCES);
    assert!(env.in_reply_to.len() <= parse::caps::IN_REPLY_TO);
}

/// Protocol decode: any bytes read as a framed Cap'n Proto `Query` (with the
/// server's limits) either decode or fail with an error.
pub fn protocol_query(data: &[u8]) {
    let mut options = capnp::message::ReaderOptions::new();
    options.traversal_limit_in_words(Some(64 * 1024)).nesting_limit(64);
    let mut slice = &data[..data.len().min(MAX_INPUT)];
    let Ok(message) = capnp::serialize::read_message_from_flat_slice(&mut slice, options) else {
        return;
    };
    let Ok(root) = message.get_root::<query::Reader<'_>>() else {
        return;
    };
    if let Ok(q) = crate::rpc::decode_query(root, 1000, 4096) {
        assert!(q.limit >= 1 && q.limit <= 1000);
    }
}

/// mbox reading: any bytes split without panicking, and writing what was
/// read as mboxrd and reading it again gives the same messages.
pub fn mbox(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    for flavor in [mbox::Flavor::Mboxrd, mbox::Flavor::Mboxo] {
        let messages = mbox::split(data, flavor);
        let mut out = Vec::new();
        for (sep, raw) in &messages {
            mbox::write_message(&mut out, "fuzz@example.org", mbox::from_line_time(sep).unwrap_or(0), raw);
        }
        let again = mbox::split(&out, mbox::Flavor::Mboxrd);
        assert_eq!(again.len(), messages.len());
        for ((_, a), (_, b)) in again.iter().zip(&messages) {
            assert_eq!(a, b);
        }
    }
}

#[cfg(test)]
#[path = "fuzzing_seeds.rs"]
mod seeds;

/// The search query parser: any text parses or fails with a position
/// inside it, within its limits; what parses has at most
/// [`crate::search::query::MAX_TERMS`] terms and never an empty word.
pub fn search_query(data: &[u8]) {
    use crate::search::query::{self, MAX_TERMS, Node};
    let Ok(text) = std::str::from_utf8(&data[..data.len().min(64 * 1024)]) else {
        return;
    };
    fn check(n: &Node, count: &mut usize) {
        match n {
            Node::Term { word, .. } => {
                assert!(!word.is_empty());
                *count += 1;
            }
            Node::Phrase { words, .. } => {
                assert!(words.len() >= 2 && words.iter().all(|w| !w.is_empty()));
                *count += 1;
            }
            Node::And(v) | Node::Or(v) => {
                assert!(v.len() >= 2);
                v.iter().for_each(|x| check(x, count));
            }
            Node::Not(x) => check(x, count),
            _ => *count += 1,
        }
    }
    match query::parse(text, 4096) {
        Ok(node) => {
            let mut count = 0;
            check(&node, &mut count);
            assert!(count <= MAX_TERMS);
        }
        Err(e) => assert!(e.position <= text.len().max(4096), "{e}"),
    }
}
