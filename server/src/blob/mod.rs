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
/// Stored in chunks: the value under the id is a head (format, size, chunk
/// size, chunk count) and chunk `i` lies under `id ‖ i` (big-endian u32),
/// each with its own format byte. A range read touches only its chunks, and
/// no value the store holds is larger than one chunk.
const FORMAT_CHUNKED: u8 = 2;
/// Blobs larger than this are stored in chunks of this size.
pub const CHUNK: usize = 1 << 20;

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
/// Shared buffers: a transaction takes them without copying.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The id.
    pub id: BlobId,
    /// Format byte + stored bytes (or the head of a chunked blob).
    pub stored: bytes::Bytes,
    /// The chunks of a chunked blob, each format byte + stored bytes.
    pub chunks: Vec<bytes::Bytes>,
    /// Original size.
    pub size: u64,
}

impl Prepared {
    /// Bytes it takes in the store.
    pub fn stored_len(&self) -> u64 {
        self.stored.len() as u64 + self.chunks.iter().map(|c| c.len() as u64).sum::<u64>()
    }
}

/// The key of chunk `i` of blob `id`.
pub fn chunk_key(id: BlobId, i: u32) -> Vec<u8> {
    let mut k = id.0.to_vec();
    k.extend_from_slice(&i.to_be_bytes());
    k
}

/// One piece stored: format byte + the bytes, compressed when that pays.
fn encode_piece(bytes: &[u8], compress: bool) -> Vec<u8> {
    if compress
        && bytes.len() >= MIN_COMPRESS
        && let Ok(z) = zstd::bulk::compress(bytes, ZSTD_LEVEL)
        && z.len() * 10 <= bytes.len() * 9
    {
        let mut stored = Vec::with_capacity(z.len() + 1);
        stored.push(FORMAT_ZSTD);
        stored.extend_from_slice(&z);
        return stored;
    }
    let mut stored = Vec::with_capacity(bytes.len() + 1);
    stored.push(FORMAT_PLAIN);
    stored.extend_from_slice(bytes);
    stored
}

/// The head of a chunked blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    size: u64,
    chunk: u32,
    count: u32,
}

impl Head {
    fn encode(&self) -> Vec<u8> {
        let mut v = vec![FORMAT_CHUNKED];
        v.extend_from_slice(&self.size.to_be_bytes());
        v.extend_from_slice(&self.chunk.to_be_bytes());
        v.extend_from_slice(&self.count.to_be_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<Head> {
        if v.len() != 17 || v[0] != FORMAT_CHUNKED {
            return None;
        }
        let size = u64::from_be_bytes(v[1..9].try_into().ok()?);
        let chunk = u32::from_be_bytes(v[9..13].try_into().ok()?);
        let count = u32::from_be_bytes(v[13..17].try_into().ok()?);
        (chunk > 0 && size.div_ceil(u64::from(chunk)) == u64::from(count)).then_some(Head {
            size,
            chunk,
            count,
        })
    }
}

/// Prepares `bytes`, taking them: a large blob is cut into chunks from its
/// end, each cut giving its memory back, so it is never held twice.
pub fn prepare_owned(mut bytes: Vec<u8>, compress: bool, id: BlobId) -> Prepared {
    if bytes.len() <= CHUNK {
        let mut p = prepare(&bytes, compress);
        p.id = id;
        return p;
    }
    let size = bytes.len() as u64;
    let compress = compress && worth_compressing(&bytes);
    let count = bytes.len().div_ceil(CHUNK);
    let mut chunks = Vec::with_capacity(count);
    for i in (0..count).rev() {
        let start = i * CHUNK;
        chunks.push(bytes::Bytes::from(encode_piece(&bytes[start..], compress)));
        bytes.truncate(start);
        bytes.shrink_to_fit();
    }
    chunks.reverse();
    let head = Head { size, chunk: CHUNK as u32, count: count as u32 };
    Prepared { id, stored: bytes::Bytes::from(head.encode()), chunks, size }
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
    if bytes.len() > CHUNK {
        return prepare_owned(bytes.to_vec(), compress, id);
    }
    let compress = compress && worth_compressing(bytes);
    Prepared {
        id,
        stored: bytes::Bytes::from(encode_piece(bytes, compress)),
        chunks: Vec::new(),
        size: bytes.len() as u64,
    }
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
        txn.put_shared(Space::Blobs, blob.id.0.to_vec(), blob.stored.clone());
        for (i, c) in blob.chunks.iter().enumerate() {
            txn.put_shared(Space::Blobs, chunk_key(blob.id, i as u32), c.clone());
        }
        refs.stored = blob.stored_len();
        txn.add(Space::Counters, &stored_bytes_key(), refs.stored as i64)?;
    }
    refs.count += 1;
    write_refs(txn, blob.id, refs);
    Ok(())
}

fn hold_key(account: u64, id: BlobId) -> Vec<u8> {
    let mut k = account.to_be_bytes().to_vec();
    k.extend_from_slice(&id.0);
    k
}

/// Counts `delta` references of `account` to blob `id` (an email's or an
/// upload's), next to the blob's own count: what the account holds.
pub fn hold(txn: &mut Txn<'_>, account: u64, id: BlobId, delta: i64) -> Result<()> {
    let n = txn.add(Space::AccountBlobs, &hold_key(account, id), delta)?;
    if n <= 0 {
        txn.delete(Space::AccountBlobs, hold_key(account, id));
    }
    Ok(())
}

/// Whether `account` holds blob `id` (one of its emails or uploads has it).
/// Only ever asked about the caller's own account: a hash alone tells
/// nothing about anyone else.
pub fn holds(reader: &dyn Reader, account: u64, id: BlobId) -> Result<bool> {
    Ok(reader.get(Space::AccountBlobs, &hold_key(account, id))?.is_some())
}

/// Drops one reference; the blob goes with its last reference.
pub fn release(txn: &mut Txn<'_>, id: BlobId) -> Result<()> {
    let mut refs = read_refs(txn, id)?;
    if refs.count == 0 {
        return Err(corrupt(format!("reference count of {id} below zero")));
    }
    refs.count -= 1;
    if refs.count == 0 {
        if let Some(head) = txn.get(Space::Blobs, &id.0)?.as_deref().and_then(Head::decode) {
            for i in 0..head.count {
                txn.delete(Space::Blobs, chunk_key(id, i));
            }
        }
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
    let Some(size) = size_in(reader, id)? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(size as usize);
    read_range(reader, id, 0, size, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })?;
    Ok(Some(out))
}

fn missing(id: BlobId, what: &str) -> Error {
    Error::Store(StoreError::Corrupt { space: Space::Blobs, detail: format!("blob {id}: {what}") })
}

/// A blob's size, `None` when it is not there.
pub fn size_in(reader: &dyn Reader, id: BlobId) -> Result<Option<u64>> {
    let Some(stored) = reader.get(Space::Blobs, &id.0)? else {
        return Ok(None);
    };
    if let Some(head) = Head::decode(&stored) {
        return Ok(Some(head.size));
    }
    Ok(Some(decode(id, stored)?.len() as u64))
}

/// Hands bytes `offset .. offset + length` of a blob to `sink`, piece by
/// piece: of a chunked blob only the chunks the range covers are read and
/// decompressed, one at a time.
pub fn read_range(
    reader: &dyn Reader,
    id: BlobId,
    offset: u64,
    length: u64,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let stored = reader.get(Space::Blobs, &id.0)?.ok_or_else(|| missing(id, "missing"))?;
    let Some(head) = Head::decode(&stored) else {
        let bytes = decode(id, stored)?;
        let start = (offset as usize).min(bytes.len());
        let end = (offset.saturating_add(length) as usize).min(bytes.len());
        return if start < end { sink(&bytes[start..end]) } else { Ok(()) };
    };
    let end = offset.saturating_add(length).min(head.size);
    if offset >= end {
        return Ok(());
    }
    let chunk = u64::from(head.chunk);
    for i in offset / chunk..=(end - 1) / chunk {
        let stored = reader
            .get(Space::Blobs, &chunk_key(id, i as u32))?
            .ok_or_else(|| missing(id, &format!("chunk {i} missing")))?;
        let bytes = decode(id, stored)?;
        let base = i * chunk;
        let from = offset.saturating_sub(base) as usize;
        let to = ((end - base) as usize).min(bytes.len());
        if from < to {
            sink(&bytes[from..to])?;
        }
    }
    Ok(())
}

/// The keys a blob takes in `Space::Blobs` and their sizes (for `check`).
pub fn stored_keys(reader: &dyn Reader, id: BlobId) -> Result<Vec<(Vec<u8>, u64)>> {
    let Some(stored) = reader.get(Space::Blobs, &id.0)? else {
        return Ok(Vec::new());
    };
    let mut out = vec![(id.0.to_vec(), stored.len() as u64)];
    if let Some(head) = Head::decode(&stored) {
        for i in 0..head.count {
            let k = chunk_key(id, i);
            let len = reader.get(Space::Blobs, &k)?.map_or(0, |v| v.len() as u64);
            out.push((k, len));
        }
    }
    Ok(out)
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
        assert_eq!(decode(p.id, p.stored.to_vec()).expect("decode"), text.as_bytes());
        // Random bytes do not shrink: kept plain.
        let mut noise = vec![0u8; 4096];
        blake3::Hasher::new().update(b"noise").finalize_xof().fill(&mut noise);
        let p = prepare(&noise, true);
        assert_eq!(p.stored[0], FORMAT_PLAIN);
        assert!(!compressible("image/jpeg") && !compressible("application/zip"));
        assert!(compressible("text/plain") && compressible("message/rfc822"));
    }

    /// Counts the values a read fetches.
    struct Counting<'a>(&'a dyn Reader, std::cell::Cell<usize>);

    impl Reader for Counting<'_> {
        fn get(&self, space: Space, key: &[u8]) -> crate::store::StoreResult<Option<Vec<u8>>> {
            self.1.set(self.1.get() + 1);
            self.0.get(space, key)
        }
        fn scan(
            &self,
            space: Space,
            range: &crate::store::KeyRange,
            order: crate::store::Order,
            limit: usize,
        ) -> crate::store::StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
            self.0.scan(space, range, order, limit)
        }
    }

    #[test]
    fn a_large_blob_is_stored_in_chunks_and_a_range_reads_only_its_own() {
        let (_dir, db) = db();
        let mut bytes = vec![0u8; 3 * CHUNK + 12_345];
        blake3::Hasher::new().update(b"chunks").finalize_xof().fill(&mut bytes);
        // Half text, half noise: some chunks compress, others not.
        for b in &mut bytes[..CHUNK] {
            *b = b'a' + (*b % 4);
        }
        let id = BlobId::of(&bytes);
        let p = prepare_owned(bytes.clone(), true, id);
        assert_eq!(p.chunks.len(), 4);
        assert!(p.chunks.iter().all(|c| c.len() <= CHUNK + 1), "no stored value above a chunk");
        assert!(p.chunks[0].len() < CHUNK / 2, "the text chunk is compressed");
        commit(&db, |txn| put(txn, &p)).expect("put");
        assert_eq!(refs(&db, id).expect("refs").stored, p.stored_len());
        assert_eq!(stored_bytes(&db).expect("bytes"), p.stored_len());
        assert!(get(&db, id).expect("get").expect("present") == bytes);
        let view = db.snapshot();
        for (offset, length) in
            [(0u64, 10u64), (CHUNK as u64 - 5, 10), (2 * CHUNK as u64 + 7, 1_000_000), (0, u64::MAX)]
        {
            let counting = Counting(&view, std::cell::Cell::new(0));
            let mut got = Vec::new();
            read_range(&counting, id, offset, length, &mut |b| {
                got.extend_from_slice(b);
                Ok(())
            })
            .expect("range");
            let end = offset.saturating_add(length).min(bytes.len() as u64) as usize;
            assert!(got == bytes[offset as usize..end], "range {offset}+{length}");
            let chunks = (end - 1) / CHUNK - offset as usize / CHUNK + 1;
            assert_eq!(counting.1.get(), 1 + chunks, "the head and the {chunks} chunk(s) the range covers");
        }
        assert_eq!(size_in(&view, id).expect("size"), Some(bytes.len() as u64));
        commit(&db, |txn| release(txn, id)).expect("release");
        assert!(
            db.scan(Space::Blobs, &crate::store::KeyRange::all(), crate::store::Order::Ascending, 10)
                .expect("scan")
                .is_empty(),
            "every chunk went with the blob"
        );
        assert_eq!(stored_bytes(&db).expect("bytes"), 0);
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
