//! Content-addressed blobs: a blob's id is the BLAKE3 hash of its bytes, so
//! the same bytes are stored once however many emails refer to them.
//!
//! `Space::Blobs` maps id → one format byte + the stored bytes (zstd when
//! that saves at least 10 %, never for types that are already compressed);
//! `Space::BlobRefs` maps id → reference count and stored size. References
//! change in the same transaction as the email that takes or drops them, and
//! a blob goes in the transaction that drops its last reference.
//!
//! That makes collection safe against a concurrent ingest of the same bytes
//! without any extra protocol: the decision "store the bytes" or "only count
//! a reference" is taken inside the ingest's transaction, under the same
//! writer lock as the deletion, so an ingest either sees the blob (and keeps
//! it alive) or sees it gone (and writes it again).

pub mod upload;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::key::Key;
use crate::store::{Db, Reader, Space, StoreError, Txn};

/// A blob's id: BLAKE3 of its content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        BlobId(*blake3::hash(bytes).as_bytes())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Stored as the bytes themselves.
const FORMAT_PLAIN: u8 = 0;
/// Stored zstd-compressed.
const FORMAT_ZSTD: u8 = 1;
/// zstd level: fast to write, most of the gain.
const ZSTD_LEVEL: i32 = 3;
/// Smaller than this, compression is not worth its header.
const MIN_COMPRESS: usize = 256;

/// Whether bytes of this MIME type are worth trying to compress.
pub fn compressible(mime_type: &str) -> bool {
    let t = mime_type.to_ascii_lowercase();
    let already = t.starts_with("image/") && t != "image/svg+xml" && t != "image/bmp"
        || t.starts_with("video/")
        || t.starts_with("audio/")
        || matches!(
            t.as_str(),
            "application/zip"
                | "application/gzip"
                | "application/x-gzip"
                | "application/x-7z-compressed"
                | "application/x-rar-compressed"
                | "application/vnd.rar"
                | "application/x-bzip2"
                | "application/x-xz"
                | "application/zstd"
                | "application/pdf"
                | "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
                | "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
                | "application/vnd.openxmlformats-officedocument.presentationml.presentation"
                | "application/vnd.oasis.opendocument.text"
                | "application/epub+zip"
                | "application/java-archive"
        );
    !already
}

/// Bytes ready to store: their id and their stored form, computed outside
/// any transaction (hashing and compression are the expensive part).
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The id.
    pub id: BlobId,
    /// Format byte + stored bytes.
    pub stored: Vec<u8>,
    /// Original size.
    pub size: u64,
}

/// Inputs longer than this are first judged by compressing a sample.
const SAMPLE: usize = 64 * 1024;

/// Whether compressing `bytes` looks worth it: a prefix that does not shrink
/// by 10 % means the rest will not either (archives, media, ciphertext).
fn worth_compressing(bytes: &[u8]) -> bool {
    if bytes.len() <= 2 * SAMPLE {
        return true;
    }
    match zstd::bulk::compress(&bytes[..SAMPLE], 1) {
        Ok(z) => z.len() * 10 <= SAMPLE * 9,
        Err(_) => false,
    }
}

/// Hashes `bytes` and compresses them when `compress` and it saves >= 10 %.
pub fn prepare(bytes: &[u8], compress: bool) -> Prepared {
    let id = BlobId::of(bytes);
    if compress
        && bytes.len() >= MIN_COMPRESS
        && worth_compressing(bytes)
        && let Ok(z) = zstd::bulk::compress(bytes, ZSTD_LEVEL)
        && z.len() * 10 <= bytes.len() * 9
    {
        let mut stored = Vec::with_capacity(z.len() + 1);
        stored.push(FORMAT_ZSTD);
        stored.extend_from_slice(&z);
        return Prepared { id, stored, size: bytes.len() as u64 };
    }
    let mut stored = Vec::with_capacity(bytes.len() + 1);
    stored.push(FORMAT_PLAIN);
    stored.extend_from_slice(bytes);
    Prepared { id, stored, size: bytes.len() as u64 }
}

/// Reference count and stored size of a blob.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refs {
    /// References.
    pub count: u64,
    /// Bytes on disk (format byte included).
    pub stored: u64,
}

fn read_refs(txn: &Txn<'_>, id: BlobId) -> Result<Refs> {
    match txn.get(Space::BlobRefs, &id.0)? {
        None => Ok(Refs::default()),
        Some(v) => decode_refs(&v).ok_or_else(|| corrupt(format!("reference record of {id}"))),
    }
}

/// Decodes a reference record (count, stored size).
pub fn decode_refs(v: &[u8]) -> Option<Refs> {
    let count = crate::store::key::read_u64(v, 0)?;
    let stored = crate::store::key::read_u64(v, 8)?;
    Some(Refs { count, stored })
}

fn write_refs(txn: &mut Txn<'_>, id: BlobId, refs: Refs) {
    if refs.count == 0 {
        txn.delete(Space::BlobRefs, id.0.to_vec());
    } else {
        let mut v = refs.count.to_be_bytes().to_vec();
        v.extend_from_slice(&refs.stored.to_be_bytes());
        txn.put(Space::BlobRefs, id.0.to_vec(), v);
    }
}

fn corrupt(detail: String) -> Error {
    StoreError::Corrupt { space: Space::BlobRefs, detail }.into()
}

/// Key of the server-wide count of stored blob bytes: in the layout of the
/// per-account counters, account 0, tag 8 (`account::Counter::BlobBytes`
/// names it; blobs sit below accounts, so the key is spelled here).
fn stored_bytes_key() -> Vec<u8> {
    Key::new().u64(0).u8(8).build()
}

/// Takes a reference to a prepared blob, storing it if it is new.
pub fn put(txn: &mut Txn<'_>, blob: &Prepared) -> Result<()> {
    let mut refs = read_refs(txn, blob.id)?;
    if refs.count == 0 {
        txn.put(Space::Blobs, blob.id.0.to_vec(), blob.stored.clone());
        refs.stored = blob.stored.len() as u64;
        txn.add(Space::Counters, &stored_bytes_key(), refs.stored as i64)?;
    }
    refs.count += 1;
    write_refs(txn, blob.id, refs);
    Ok(())
}

/// Drops one reference; the blob goes with its last reference.
pub fn release(txn: &mut Txn<'_>, id: BlobId) -> Result<()> {
    let mut refs = read_refs(txn, id)?;
    if refs.count == 0 {
        return Err(corrupt(format!("reference count of {id} below zero")));
    }
    refs.count -= 1;
    if refs.count == 0 {
        txn.delete(Space::Blobs, id.0.to_vec());
        txn.add(Space::Counters, &stored_bytes_key(), -(refs.stored as i64))?;
    }
    write_refs(txn, id, refs);
    Ok(())
}

/// The bytes of a blob.
pub fn get(db: &Db, id: BlobId) -> Result<Option<Vec<u8>>> {
    get_in(db.store(), id)
}

/// The bytes of a blob, read through `reader` (e.g. one snapshot).
pub fn get_in(reader: &dyn Reader, id: BlobId) -> Result<Option<Vec<u8>>> {
    match reader.get(Space::Blobs, &id.0)? {
        None => Ok(None),
        Some(stored) => decode(id, stored).map(Some),
    }
}

/// Decodes a stored blob.
pub fn decode(id: BlobId, mut stored: Vec<u8>) -> Result<Vec<u8>> {
    match stored.first() {
        Some(&FORMAT_PLAIN) => {
            stored.remove(0);
            Ok(stored)
        }
        Some(&FORMAT_ZSTD) => zstd::stream::decode_all(&stored[1..]).map_err(|e| {
            Error::Store(StoreError::Corrupt { space: Space::Blobs, detail: format!("blob {id}: {e}") })
        }),
        other => Err(Error::Store(StoreError::Corrupt {
            space: Space::Blobs,
            detail: format!("blob {id} has unknown format {other:?}"),
        })),
    }
}

/// Reference count and stored size of a blob, outside a transaction.
pub fn refs(db: &Db, id: BlobId) -> Result<Refs> {
    match db.get(Space::BlobRefs, &id.0)? {
        None => Ok(Refs::default()),
        Some(v) => decode_refs(&v).ok_or_else(|| corrupt(format!("reference record of {id}"))),
    }
}

/// Bytes all blobs take on disk, server-wide.
pub fn stored_bytes(db: &Db) -> Result<u64> {
    Ok(db.counter(Space::Counters, &stored_bytes_key())?.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FjallStore;
    use std::sync::Arc;

    /// A durable write: reads see only what is durable.
    fn commit(db: &Db, f: impl FnMut(&mut Txn<'_>) -> Result<()>) -> Result<()> {
        let (_, t) = db.write(f)?;
        db.sync_blocking(t)?;
        Ok(())
    }

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("dir");
        let db = Db::new(Arc::new(FjallStore::open(dir.path()).expect("open")));
        (dir, db)
    }

    #[test]
    fn same_bytes_stored_once_and_freed_with_last_reference() {
        let (_dir, db) = db();
        let bytes = b"attachment".to_vec();
        let p = prepare(&bytes, true);
        for _ in 0..3 {
            commit(&db, |txn| put(txn, &p)).expect("put");
        }
        assert_eq!(refs(&db, p.id).expect("refs").count, 3);
        assert_eq!(get(&db, p.id).expect("get"), Some(bytes.clone()));
        assert_eq!(stored_bytes(&db).expect("bytes"), p.stored.len() as u64);
        for left in [2, 1] {
            commit(&db, |txn| release(txn, p.id)).expect("release");
            assert_eq!(refs(&db, p.id).expect("refs").count, left);
        }
        commit(&db, |txn| release(txn, p.id)).expect("release");
        assert_eq!(get(&db, p.id).expect("get"), None);
        assert_eq!(stored_bytes(&db).expect("bytes"), 0);
        let err = commit(&db, |txn| release(txn, p.id)).expect_err("below zero");
        assert!(matches!(err, Error::Store(StoreError::Corrupt { .. })));
    }

    #[test]
    fn compresses_text_only_when_it_pays() {
        let text = "All work and no play makes Jack a dull boy.\r\n".repeat(200);
        let p = prepare(text.as_bytes(), true);
        assert_eq!(p.stored[0], FORMAT_ZSTD);
        assert!(p.stored.len() < text.len() / 10);
        assert_eq!(decode(p.id, p.stored.clone()).expect("decode"), text.as_bytes());
        // Random bytes do not shrink: kept plain.
        let mut noise = vec![0u8; 4096];
        blake3::Hasher::new().update(b"noise").finalize_xof().fill(&mut noise);
        let p = prepare(&noise, true);
        assert_eq!(p.stored[0], FORMAT_PLAIN);
        assert!(!compressible("image/jpeg") && !compressible("application/zip"));
        assert!(compressible("text/plain") && compressible("message/rfc822"));
    }

    #[test]
    fn release_and_ingest_of_the_same_blob_race_safely() {
        let (_dir, db) = db();
        let p = prepare(&b"shared attachment bytes ".repeat(100), true);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        commit(&db, |txn| put(txn, &p)).expect("put");
                        commit(&db, |txn| release(txn, p.id)).expect("release");
                    }
                });
            }
            // A long-lived holder interleaves with them.
            s.spawn(|| {
                for _ in 0..200 {
                    commit(&db, |txn| put(txn, &p)).expect("put");
                    assert!(get(&db, p.id).expect("get").is_some(), "a held blob vanished");
                    commit(&db, |txn| release(txn, p.id)).expect("release");
                }
            });
        });
        assert_eq!(refs(&db, p.id).expect("refs").count, 0);
        assert_eq!(get(&db, p.id).expect("get"), None);
        assert_eq!(stored_bytes(&db).expect("bytes"), 0);
    }
}
