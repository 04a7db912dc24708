//! The built-in virus scanner: works with no clamd at all.
//!
//! It looks at the raw message and at every decoded leaf part (so an
//! encoding, an odd boundary or an embedded message hides nothing our
//! parser can read), for: body signatures (EICAR, the ClamAV test file),
//! a BLAKE3 block list of attachment hashes, attachment names with a
//! dangerous extension (names as decoded from RFC 2047/2231), and the
//! same again inside zip archives, nested ones included, under limits on
//! depth, entries, expansion ratio and total size — a zip bomb is refused
//! for what it is, never expanded.

use std::collections::HashSet;
use std::io::Read;

use super::{Direction, Filter, Part, Verdict};
use crate::error::{Error, Result};

/// The EICAR anti-virus test file.
pub const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// 64 bytes of code from ClamAV's test file `clam.exe`, which its
/// `clamav-testfiles` carry in every packing.
const CLAMAV_TEST: &[u8] = &[
    0xbb, 0x71, 0x10, 0x40, 0x00, 0x33, 0xc0, 0x50, 0x50, 0x8b, 0xf3, 0x53, 0x53, 0x50, 0xb0, 0x29, 0x40,
    0x30, 0x04, 0x66, 0xac, 0x79, 0xf9, 0xba, 0x31, 0x00, 0x78, 0x0d, 0xad, 0x50, 0xff, 0x66, 0x70, 0x0e,
    0x1f, 0xbe, 0x31, 0x00, 0xe9, 0xe5, 0xff, 0xb4, 0x09, 0xcd, 0x21, 0xb4, 0x4c, 0xcd, 0x21, 0x62, 0x0c,
    0x0a, 0x01, 0x02, 0x70, 0x76, 0x17, 0x02, 0x1e, 0x4e, 0x0c, 0x04, 0x2f, 0xda,
];

/// Body signatures: (name, bytes).
const SIGNATURES: [(&str, &[u8]); 2] = [("Eicar-Test-Signature", EICAR), ("ClamAV-Test-File", CLAMAV_TEST)];

/// Attachment extensions refused by default: programs and scripts that
/// run when opened.
pub const DANGEROUS: &[&str] = &[
    "exe",
    "scr",
    "pif",
    "com",
    "bat",
    "cmd",
    "cpl",
    "msi",
    "msp",
    "hta",
    "js",
    "jse",
    "vbs",
    "vbe",
    "wsf",
    "wsh",
    "ps1",
    "lnk",
    "reg",
    "jar",
    "scf",
    "application",
    "gadget",
];

/// Deepest archive nesting opened.
pub const MAX_ARCHIVE_DEPTH: usize = 4;
/// Most entries looked at in one archive.
pub const MAX_ARCHIVE_ENTRIES: usize = 10_000;
/// Most bytes expanded from the archives of one message.
pub const MAX_EXPANDED_BYTES: u64 = 64 << 20;
/// Highest expansion ratio of an entry (and of an archive) accepted.
pub const MAX_RATIO: u64 = 200;

/// The built-in scanner.
#[derive(Debug)]
pub struct Scanner {
    blocklist: HashSet<[u8; 32]>,
    dangerous: Vec<String>,
}

impl Scanner {
    /// A scanner refusing the `blocklist` hashes (hex BLAKE3) and names
    /// ending in one of `dangerous` (extensions without the dot).
    pub fn new(blocklist: &[String], dangerous: &[String]) -> Result<Self> {
        let mut set = HashSet::new();
        for h in blocklist {
            let hash = blake3::Hash::from_hex(h.trim()).map_err(|_| {
                Error::invalid(format!("filter.blocklist: {h:?} is not a BLAKE3 hash in hex"))
            })?;
            set.insert(*hash.as_bytes());
        }
        let dangerous = dangerous.iter().map(|e| e.trim_start_matches('.').to_ascii_lowercase()).collect();
        Ok(Scanner { blocklist: set, dangerous })
    }

    /// What is wrong with `content` named `name`, if anything.
    fn content(&self, name: &str, content: &[u8], budget: &mut Budget, depth: usize) -> Option<String> {
        if let Some(why) = self.name(name) {
            return Some(why);
        }
        if let Some(sig) = signature(content) {
            return Some(format!("virus found: {sig}{}", shown(name)));
        }
        if !self.blocklist.is_empty() && self.blocklist.contains(blake3::hash(content).as_bytes()) {
            return Some(format!("attachment on the block list{}", shown(name)));
        }
        if content.starts_with(b"PK\x03\x04") {
            return self.zip(name, content, budget, depth);
        }
        None
    }

    fn name(&self, name: &str) -> Option<String> {
        let lower = name.trim().trim_end_matches(['.', ' ']).to_lowercase();
        let ext = lower.rsplit_once('.').map(|(_, e)| e)?;
        self.dangerous
            .iter()
            .any(|d| d == ext)
            .then(|| format!("attachments of type .{ext} are not accepted ({name})"))
    }

    fn zip(&self, name: &str, content: &[u8], budget: &mut Budget, depth: usize) -> Option<String> {
        if depth >= MAX_ARCHIVE_DEPTH {
            return Some(format!("archives nested deeper than {MAX_ARCHIVE_DEPTH}{}", shown(name)));
        }
        // An archive the reader cannot open is not ours to judge: clamd,
        // when configured, still sees the raw bytes.
        let Ok(mut archive) = zip::ZipArchive::new(std::io::Cursor::new(content)) else { return None };
        if archive.len() > MAX_ARCHIVE_ENTRIES {
            return Some(format!("an archive of more than {MAX_ARCHIVE_ENTRIES} entries{}", shown(name)));
        }
        let mut expanded = 0u64;
        for i in 0..archive.len() {
            let Ok(mut entry) = archive.by_index(i) else { continue };
            let inner = entry.name().to_owned();
            if let Some(why) = self.name(&inner) {
                return Some(format!("{why} in {}", if name.is_empty() { "an archive" } else { name }));
            }
            if entry.is_dir() {
                continue;
            }
            // Read at most what the limits allow, whatever the header says.
            let room = (budget.left).min(entry.compressed_size().max(1).saturating_mul(MAX_RATIO));
            let mut data = Vec::new();
            if (&mut entry).take(room + 1).read_to_end(&mut data).is_err() {
                continue;
            }
            if data.len() as u64 > room {
                return Some(if budget.left <= room {
                    format!("an archive expanding past {} MiB{}", MAX_EXPANDED_BYTES >> 20, shown(name))
                } else {
                    format!(
                        "an archive entry expanding more than {MAX_RATIO}-fold (a zip bomb){}",
                        shown(name)
                    )
                });
            }
            budget.left -= data.len() as u64;
            expanded += data.len() as u64;
            if expanded > (content.len() as u64).saturating_mul(MAX_RATIO) {
                return Some(format!(
                    "an archive expanding more than {MAX_RATIO}-fold (a zip bomb){}",
                    shown(name)
                ));
            }
            if let Some(why) = self.content(&inner, &data, budget, depth + 1) {
                return Some(why);
            }
        }
        None
    }
}

/// The first body signature found in `content`.
fn signature(content: &[u8]) -> Option<&'static str> {
    // Each signature's searcher is built once, not once per part.
    static FINDERS: std::sync::LazyLock<Vec<(&str, memchr::memmem::Finder<'static>)>> =
        std::sync::LazyLock::new(|| {
            SIGNATURES.iter().map(|(sig, bytes)| (*sig, memchr::memmem::Finder::new(bytes))).collect()
        });
    FINDERS.iter().find(|(_, f)| f.find(content).is_some()).map(|(sig, _)| *sig)
}

fn shown(name: &str) -> String {
    if name.is_empty() { String::new() } else { format!(" in {name}") }
}

/// Bytes still allowed to be expanded for one message.
struct Budget {
    left: u64,
}

impl Filter for Scanner {
    fn name(&self) -> &'static str {
        "virus"
    }

    fn check_message(&self, raw: &[u8], _direction: Direction) -> Verdict {
        // The raw message too: a part the parser cannot delimit is still
        // in there, as it stands.
        match signature(raw) {
            Some(sig) => Verdict::Reject(format!("virus found: {sig}")),
            None => Verdict::Accept,
        }
    }

    fn check_part(&self, part: &Part<'_>, _direction: Direction) -> Verdict {
        // Each part gets the whole expansion budget: parts are few, and a
        // bomb is caught by its ratio long before.
        let mut budget = Budget { left: MAX_EXPANDED_BYTES };
        match self.content(part.name, part.content, &mut budget, 0) {
            Some(why) => Verdict::Reject(why),
            None => Verdict::Accept,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_judged_by_their_last_extension() {
        let s = Scanner::new(&[], &["exe".into(), ".js".into()]).expect("scanner");
        assert!(s.name("invoice.pdf.exe").is_some());
        assert!(s.name("INVOICE.EXE. ").is_some());
        assert!(s.name("x.JS").is_some());
        assert!(s.name("report.pdf").is_none());
        assert!(s.name("exe").is_none());
    }

    #[test]
    fn a_bad_blocklist_entry_is_a_clear_error() {
        let e = Scanner::new(&["nothex".into()], &[]).expect_err("bad hash");
        assert!(e.to_string().contains("BLAKE3"), "{e}");
    }
}
