//! The per-account inverted index in the store ([`Space::Search`]),
//! written in the same transaction as the mail it indexes.
//!
//! The index is a set of immutable **segments**, as in a log-structured
//! merge tree. Ingest writes each email as a segment of its own: its sorted
//! terms, encoded before the writer lock is taken ([`encode`]), in one or
//! two keys. Nothing under the writer lock rewrites a posting list. A
//! background [`Merger`] folds segments of the same size class into one
//! (tiered: four or more of a class at a time), so a query reads a few
//! dozen segments whatever the size of the account. Deleting an email
//! writes a tombstone; queries subtract tombstones, and the merge that
//! drops the email's postings drops its tombstone too. Document numbers
//! are email ids, which are never reused.
//!
//! Keys (after the tag byte, `account` as 8 bytes):
//! - `s ‖ account ‖ email` → () — an ingest segment, until merged;
//! - `l ‖ account` → the merged segments (id and document set each), the
//!   highest ingest segment merged, and the segments whose chunks are to be
//!   deleted; only merges write it;
//! - `g ‖ account ‖ segment ‖ first term` → a chunk of the segment's
//!   entries, sorted by term, each chunk about [`CHUNK_BYTES`];
//! - `x ‖ account ‖ id >> 16` → roaring bitmap of deleted documents (low
//!   16 bits) still held by some segment;
//! - `q ‖ account` → the newest ingest segment (the merger's work list);
//! - `n ‖ account` → counter naming merged segments.
//!
//! A chunk is a kind byte, then entries: the term front-coded against the
//! previous one (LEB128 shared length, suffix length, suffix), then, in a
//! merged segment, the postings (LEB128 `count << 1 | roaring`, byte
//! length, then LEB128 deltas or a serialized roaring treemap). An ingest
//! segment (kind 0) holds one document, so its entries carry no postings.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use roaring::{RoaringBitmap, RoaringTreemap};

use super::text::Field;
use crate::error::{Error, Result};
use crate::store::key::{self, Key};
use crate::store::{Db, KeyRange, Order, Reader, Space, StoreError, Txn};

/// Target size of a segment chunk: a lookup decodes at most one.
pub const CHUNK_BYTES: usize = 4 << 10;
/// Most terms a prefix (`word*`) expands to.
pub const MAX_PREFIX_TERMS: usize = 256;
/// Segments of one size class merged at once, at least...
pub const MERGE_FANIN: usize = 4;
/// ...and at most (a merger that fell behind catches up in large steps).
pub const MAX_MERGE_INPUTS: usize = 256;
/// Chunks written per merge transaction (each holds the writer briefly).
const CHUNKS_PER_TXN: usize = 8;
/// Merged segments are named from here up; ingest segments by their email.
const MERGED: u64 = 1 << 63;
/// Postings longer than this are stored as roaring treemaps.
const ROARING_FROM: u64 = 32;

const KIND_SOLE: u8 = 0;
const KIND_POSTINGS: u8 = 1;

/// A (field, term) as the key part `field ‖ term`.
pub fn term_key(field: Field, term: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + term.len());
    k.push(field as u8);
    k.extend_from_slice(term.as_bytes());
    k
}

fn tagged(tag: u8, account: u64) -> Vec<u8> {
    Key::new().u8(tag).u64(account).build()
}

fn seg_key(account: u64, seg: u64) -> Vec<u8> {
    Key::new().u8(b's').u64(account).u64(seg).build()
}

fn chunk_prefix(account: u64, seg: u64) -> Vec<u8> {
    Key::new().u8(b'g').u64(account).u64(seg).build()
}

fn dead_key(account: u64, block: u64) -> Vec<u8> {
    Key::new().u8(b'x').u64(account).u64(block).build()
}

fn corrupt(detail: &str) -> Error {
    StoreError::Corrupt { space: Space::Search, detail: detail.into() }.into()
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    // Most lengths and deltas fit in one byte: no trip through io::Write.
    if v < 0x80 {
        out.push(v as u8);
        return;
    }
    // Writing to a Vec cannot fail.
    let _ = leb128::write::unsigned(out, v);
}

/// How many bytes [`put_varint`] writes for `v`.
fn varint_len(v: u64) -> u32 {
    (64 - v.max(1).leading_zeros()).div_ceil(7)
}

fn get_varint(data: &mut &[u8]) -> Result<u64> {
    if let Some((&b, rest)) = data.split_first()
        && b < 0x80
    {
        *data = rest;
        return Ok(u64::from(b));
    }
    leb128::read::unsigned(data).map_err(|_| corrupt("segment chunk"))
}

fn take<'a>(data: &mut &'a [u8], n: u64) -> Result<&'a [u8]> {
    let n = usize::try_from(n).map_err(|_| corrupt("segment chunk"))?;
    if n > data.len() {
        return Err(corrupt("segment chunk"));
    }
    let (head, tail) = data.split_at(n);
    *data = tail;
    Ok(head)
}

fn encode_treemap(t: &RoaringTreemap) -> Vec<u8> {
    let mut v = Vec::with_capacity(t.serialized_size());
    // Writing to a Vec cannot fail.
    let _ = t.serialize_into(&mut v);
    v
}

fn decode_treemap(v: &[u8]) -> Result<RoaringTreemap> {
    RoaringTreemap::deserialize_from(v).map_err(|_| corrupt("document set"))
}

fn encode_bitmap(b: &RoaringBitmap) -> Vec<u8> {
    let mut v = Vec::with_capacity(b.serialized_size());
    // Writing to a Vec cannot fail.
    let _ = b.serialize_into(&mut v);
    v
}

fn decode_bitmap(v: &[u8]) -> Result<RoaringBitmap> {
    RoaringBitmap::deserialize_from(v).map_err(|_| corrupt("tombstones"))
}

/// How many leading bytes `a` and `b` share, eight at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    for (x, y) in a[..n].chunks_exact(8).zip(b[..n].chunks_exact(8)) {
        // `chunks_exact(8)` gives eight bytes: `first_chunk` always has them.
        let word = |c: &[u8]| c.first_chunk::<8>().map_or(0, |w| u64::from_le_bytes(*w));
        let (x, y) = (word(x), word(y));
        if x != y {
            // Little-endian words: the first differing byte is the lowest.
            return i + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + a[i..n].iter().zip(&b[i..n]).take_while(|(x, y)| x == y).count()
}

/// Builds a segment's chunks from entries in term order.
struct ChunkWriter {
    kind: u8,
    chunks: Vec<(Vec<u8>, Vec<u8>)>,
    first: Vec<u8>,
    buf: Vec<u8>,
    last: Vec<u8>,
}

impl ChunkWriter {
    fn new(kind: u8) -> Self {
        ChunkWriter { kind, chunks: Vec::new(), first: Vec::new(), buf: Vec::new(), last: Vec::new() }
    }

    /// Adds an entry whose postings are already encoded (a merge copies
    /// them through): `tag` and `body` as [`ChunkReader`] read them.
    fn push_stored(&mut self, term: &[u8], tag: u64, body: &[u8]) {
        self.push(term, None);
        put_varint(&mut self.buf, tag);
        put_varint(&mut self.buf, body.len() as u64);
        self.buf.extend_from_slice(body);
    }

    fn push(&mut self, term: &[u8], postings: Option<&[u64]>) {
        if self.buf.len() >= CHUNK_BYTES {
            self.flush();
        }
        let shared = if self.buf.is_empty() {
            self.buf.push(self.kind);
            self.first = term.to_vec();
            0
        } else {
            common_prefix(&self.last, term)
        };
        put_varint(&mut self.buf, shared as u64);
        put_varint(&mut self.buf, (term.len() - shared) as u64);
        self.buf.extend_from_slice(&term[shared..]);
        if let Some(p) = postings {
            let n = p.len() as u64;
            if n > ROARING_FROM {
                // Sorted and distinct: the writer's contract.
                let bytes =
                    encode_treemap(&RoaringTreemap::from_sorted_iter(p.iter().copied()).unwrap_or_default());
                put_varint(&mut self.buf, (n << 1) | 1);
                put_varint(&mut self.buf, bytes.len() as u64);
                self.buf.extend_from_slice(&bytes);
            } else {
                // The deltas' byte length first, then the deltas.
                let mut len = 0u64;
                let mut prev = 0;
                for &d in p {
                    len += u64::from(varint_len(d - prev));
                    prev = d;
                }
                put_varint(&mut self.buf, n << 1);
                put_varint(&mut self.buf, len);
                prev = 0;
                for &d in p {
                    put_varint(&mut self.buf, d - prev);
                    prev = d;
                }
            }
        }
        self.last.clear();
        self.last.extend_from_slice(term);
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.chunks.push((std::mem::take(&mut self.first), std::mem::take(&mut self.buf)));
        }
    }

    fn take_chunks(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        std::mem::take(&mut self.chunks)
    }
}

/// One entry's postings, undecoded.
#[derive(Clone, Copy)]
struct Raw<'a> {
    /// `count << 1 | roaring`; unused in an ingest segment.
    tag: u64,
    body: &'a [u8],
}

impl Raw<'_> {
    /// Appends the documents, ascending, to `out` (merges: no bitmap per
    /// entry).
    fn decode_into(&self, kind: u8, sole: u64, out: &mut Vec<u64>) -> Result<()> {
        if kind == KIND_SOLE {
            out.push(sole);
        } else if self.tag & 1 == 1 {
            out.extend(decode_treemap(self.body)?.iter());
        } else {
            let mut body = self.body;
            let mut prev = 0u64;
            for _ in 0..self.tag >> 1 {
                prev = prev.checked_add(get_varint(&mut body)?).ok_or_else(|| corrupt("postings"))?;
                out.push(prev);
            }
        }
        Ok(())
    }

    /// The documents; `sole` is an ingest segment's one document.
    fn decode(&self, kind: u8, sole: u64) -> Result<RoaringTreemap> {
        if kind == KIND_POSTINGS && self.tag & 1 == 1 {
            return decode_treemap(self.body);
        }
        let mut ids = Vec::new();
        self.decode_into(kind, sole, &mut ids)?;
        RoaringTreemap::from_sorted_iter(ids).map_err(|_| corrupt("postings out of order"))
    }
}

/// Reads a chunk's entries in order; the current term is in `term`.
struct ChunkReader<'a> {
    kind: u8,
    data: &'a [u8],
    term: Vec<u8>,
}

impl<'a> ChunkReader<'a> {
    fn new(chunk: &'a [u8]) -> Result<Self> {
        let (&kind, data) = chunk.split_first().ok_or_else(|| corrupt("empty segment chunk"))?;
        if kind != KIND_SOLE && kind != KIND_POSTINGS {
            return Err(corrupt("segment chunk kind"));
        }
        Ok(ChunkReader { kind, data, term: Vec::new() })
    }

    /// Advances to the next entry (`false` at the end).
    fn advance(&mut self) -> Result<Option<Raw<'a>>> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let shared = get_varint(&mut self.data)? as usize;
        let len = get_varint(&mut self.data)?;
        if shared > self.term.len() {
            return Err(corrupt("segment chunk"));
        }
        self.term.truncate(shared);
        let suffix = take(&mut self.data, len)?;
        self.term.extend_from_slice(suffix);
        if self.kind == KIND_SOLE {
            return Ok(Some(Raw { tag: 0, body: &[] }));
        }
        let tag = get_varint(&mut self.data)?;
        let n = get_varint(&mut self.data)?;
        Ok(Some(Raw { tag, body: take(&mut self.data, n)? }))
    }
}

/// An email's index entry, encoded outside the writer lock: the chunks of
/// its ingest segment.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    chunks: Vec<(Vec<u8>, Bytes)>,
    terms: usize,
}

impl Encoded {
    /// How many distinct terms it holds.
    pub fn terms(&self) -> usize {
        self.terms
    }

    /// Whether there is nothing to index.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// A document's term keys, gathered in one buffer (no allocation per
/// term) for [`encode`], in any order. A term added again is kept once:
/// about half of a mail's words are repeats, and a hash lookup on the
/// term's [`head`] costs less than carrying them through the sort.
#[derive(Debug)]
pub struct Terms {
    bytes: Vec<u8>,
    items: Vec<TermAt>,
    /// `items` by [`term_hash`].
    seen: hashbrown::HashTable<u32>,
    /// Terms come from anyone who sends mail: a seed they cannot know.
    seed: foldhash::fast::RandomState,
    /// Terms added, repeats included.
    added: usize,
}

impl Default for Terms {
    fn default() -> Self {
        Terms {
            bytes: Vec::with_capacity(8 << 10),
            items: Vec::with_capacity(1024),
            seen: hashbrown::HashTable::with_capacity(1024),
            seed: foldhash::fast::RandomState::default(),
            added: 0,
        }
    }
}

/// The hash of a term whose [`head`] is `first`: the head, the length and
/// every further 16 bytes, each fed to `state` as one integer (a slice fed
/// whole goes byte-length prefixed through the generic path, which costs
/// more than the sort this saves).
fn term_hash(t: &[u8], first: u128, state: &foldhash::fast::RandomState) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = state.build_hasher();
    h.write_u128(first);
    h.write_usize(t.len());
    let mut rest = t.get(16..).unwrap_or(&[]);
    while !rest.is_empty() {
        h.write_u128(head(rest));
        rest = rest.get(16..).unwrap_or(&[]);
    }
    h.finish()
}

/// A term kept in a buffer of terms.
#[derive(Debug, Clone, Copy)]
struct TermAt {
    /// Its [`head`]: most comparisons of a sort are one integer comparison.
    head: u128,
    start: usize,
    /// A term is a field byte and at most two words of `MAX_TERM_BYTES`.
    len: u32,
    /// Its number, where the terms are numbered.
    number: u32,
}

impl TermAt {
    fn new(bytes: &[u8], start: usize, number: u32) -> Self {
        let t = &bytes[start..];
        // Words are cut to MAX_TERM_BYTES: a term is short.
        TermAt { head: head(t), start, len: t.len() as u32, number }
    }

    fn of<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.start..self.start + self.len as usize]
    }
}

/// A term's first sixteen bytes as a big-endian number, zero padded: when
/// two heads differ they order the terms as their bytes do, and they
/// rarely tie (pair terms share long beginnings).
fn head(t: &[u8]) -> u128 {
    let mut h = [0u8; 16];
    let n = t.len().min(16);
    h[..n].copy_from_slice(&t[..n]);
    u128::from_be_bytes(h)
}

/// Sorts terms kept in `bytes` into byte order: an integer sort of keys
/// made of each term's first twelve bytes above its place in `items`, then
/// each run of keys that tie on those bytes by the whole terms (a run of
/// terms no longer than twelve bytes is one term repeated).
fn sort_terms(items: &mut [TermAt], bytes: &[u8]) {
    let Ok(n) = u32::try_from(items.len()) else {
        items.sort_unstable_by(|a, b| a.head.cmp(&b.head).then_with(|| a.of(bytes).cmp(b.of(bytes))));
        return;
    };
    let mut keys: Vec<u128> = (0..n).map(|i| (items[i as usize].head >> 32 << 32) | u128::from(i)).collect();
    keys.sort_unstable();
    // The low 32 bits of a key are its item's index.
    let mut sorted: Vec<TermAt> = keys.iter().map(|&k| items[(k as u32) as usize]).collect();
    let mut i = 0;
    while i < sorted.len() {
        let prefix = sorted[i].head >> 32;
        let mut j = i + 1;
        let mut long = sorted[i].len > 12;
        while j < sorted.len() && sorted[j].head >> 32 == prefix {
            long |= sorted[j].len > 12;
            j += 1;
        }
        if long {
            sorted[i..j].sort_unstable_by(|a, b| a.of(bytes).cmp(b.of(bytes)));
        }
        i = j;
    }
    items.copy_from_slice(&sorted);
}

impl Terms {
    /// Keeps the term written at `start` unless it is a repeat (then its
    /// bytes are dropped again); returns where its text is.
    fn close(&mut self, start: usize) -> (usize, usize) {
        self.added += 1;
        let Terms { bytes, items, seen, seed, .. } = self;
        let at = TermAt::new(bytes, start, 0);
        let hash = term_hash(at.of(bytes), at.head, seed);
        if let Some(&i) = seen.find(hash, |&i| {
            let o = items[i as usize];
            o.head == at.head && o.len == at.len && o.of(bytes) == at.of(bytes)
        }) {
            let o = items[i as usize];
            bytes.truncate(start);
            return (o.start + 1, o.start + o.len as usize);
        }
        // Fewer items than bytes, and a message is under 4 GiB.
        let i = items.len() as u32;
        items.push(at);
        seen.insert_unique(hash, i, |&j| {
            let o = items[j as usize];
            term_hash(o.of(bytes), o.head, seed)
        });
        (start + 1, bytes.len())
    }

    /// Adds `field ‖ word`; returns where the word is, for [`Terms::pair`].
    pub fn word(&mut self, field: Field, word: &str) -> (usize, usize) {
        let start = self.bytes.len();
        self.bytes.push(field as u8);
        self.bytes.extend_from_slice(word.as_bytes());
        self.close(start)
    }

    /// Adds `field ‖ a ‖ " " ‖ b` for two words [`Terms::word`] returned.
    pub fn pair(&mut self, field: Field, a: (usize, usize), b: (usize, usize)) {
        let start = self.bytes.len();
        self.bytes.push(field as u8);
        self.bytes.extend_from_within(a.0..a.1);
        self.bytes.push(b' ');
        self.bytes.extend_from_within(b.0..b.1);
        self.close(start);
    }

    /// How many terms were added (repeats included).
    pub fn len(&self) -> usize {
        self.added
    }

    /// How many distinct terms were added.
    pub fn distinct(&self) -> usize {
        self.items.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Encodes a document's term keys, sorted.
pub fn encode(mut terms: Terms) -> Encoded {
    let mut items = std::mem::take(&mut terms.items);
    sort_terms(&mut items, &terms.bytes);
    let mut w = ChunkWriter::new(KIND_SOLE);
    // Distinct already (`Terms` keeps a term once).
    for item in &items {
        w.push(item.of(&terms.bytes), None);
    }
    w.flush();
    let chunks = w.take_chunks().into_iter().map(|(k, v)| (k, Bytes::from(v))).collect();
    Encoded { chunks, terms: items.len() }
}

/// Indexes document `doc` of `account`: its ingest segment.
pub fn add(txn: &mut Txn<'_>, account: u64, doc: u64, encoded: &Encoded) -> Result<()> {
    if encoded.is_empty() {
        return Ok(());
    }
    let prefix = chunk_prefix(account, doc);
    for (first, chunk) in &encoded.chunks {
        let mut k = prefix.clone();
        k.extend_from_slice(first);
        txn.put_shared(Space::Search, k, chunk.clone());
    }
    txn.put(Space::Search, seg_key(account, doc), Vec::new());
    txn.put(Space::Search, tagged(b'q', account), doc.to_be_bytes().to_vec());
    Ok(())
}

/// Removes document `doc` from `account`'s index from this commit on: a
/// tombstone, until a merge drops its postings.
pub fn remove(txn: &mut Txn<'_>, account: u64, doc: u64) -> Result<()> {
    let k = dead_key(account, doc >> 16);
    let mut bits = match txn.get(Space::Search, &k)? {
        Some(v) => decode_bitmap(&v)?,
        None => RoaringBitmap::new(),
    };
    if bits.insert((doc & 0xFFFF) as u32) {
        txn.put(Space::Search, k, encode_bitmap(&bits));
    }
    Ok(())
}

/// One segment as a query sees it.
#[derive(Debug)]
struct Segment {
    id: u64,
    docs: RoaringTreemap,
}

impl Segment {
    fn sole(&self) -> u64 {
        self.docs.min().unwrap_or(0)
    }
}

/// An account's index as of one snapshot: its segments and tombstones.
#[derive(Debug)]
pub struct View {
    account: u64,
    segments: Vec<Segment>,
    dead: RoaringTreemap,
}

/// The merged segments of an account (`l ‖ account`), rewritten by merges
/// only: ingest never touches it.
#[derive(Debug, Default)]
struct Merged {
    /// Every ingest segment up to here has been merged (ingest segments
    /// are merged oldest first, and email ids grow in commit order), so a
    /// reader lists ingest segments after it only, never walking the
    /// deleted keys of merged ones.
    high: u64,
    /// Bumped by every rewrite: a swap checks nobody else merged.
    version: u64,
    segments: Vec<Segment>,
    /// Segments whose chunks are to be deleted (merge inputs already
    /// replaced, or an output a crash left unfinished).
    garbage: Vec<u64>,
}

impl Merged {
    fn read(reader: &dyn Reader, account: u64) -> Result<Self> {
        Self::decode(reader.get(Space::Search, &tagged(b'l', account))?)
    }

    fn read_txn(txn: &Txn<'_>, account: u64) -> Result<Self> {
        Self::decode(txn.get(Space::Search, &tagged(b'l', account))?)
    }

    fn decode(v: Option<Vec<u8>>) -> Result<Self> {
        let Some(v) = v else { return Ok(Merged::default()) };
        let mut d = v.as_slice();
        let high = get_varint(&mut d)?;
        let version = get_varint(&mut d)?;
        let n = get_varint(&mut d)?;
        let mut segments = Vec::new();
        for _ in 0..n {
            let id = get_varint(&mut d)?;
            let len = get_varint(&mut d)?;
            segments.push(Segment { id, docs: decode_treemap(take(&mut d, len)?)? });
        }
        let g = get_varint(&mut d)?;
        let mut garbage = Vec::new();
        for _ in 0..g {
            garbage.push(get_varint(&mut d)?);
        }
        Ok(Merged { high, version, segments, garbage })
    }

    fn write(&self, txn: &mut Txn<'_>, account: u64) {
        let mut v = Vec::new();
        put_varint(&mut v, self.high);
        put_varint(&mut v, self.version);
        put_varint(&mut v, self.segments.len() as u64);
        for s in &self.segments {
            put_varint(&mut v, s.id);
            let docs = encode_treemap(&s.docs);
            put_varint(&mut v, docs.len() as u64);
            v.extend_from_slice(&docs);
        }
        put_varint(&mut v, self.garbage.len() as u64);
        for g in &self.garbage {
            put_varint(&mut v, *g);
        }
        txn.put(Space::Search, tagged(b'l', account), v);
    }
}

/// Reads `account`'s segment list and tombstones through `reader`.
pub fn view(reader: &dyn Reader, account: u64) -> Result<View> {
    let merged = Merged::read(reader, account)?;
    let mut segments = merged.segments;
    let mut range =
        KeyRange::between(seg_key(account, merged.high.saturating_add(1)), seg_key(account, MERGED));
    loop {
        let rows = reader.scan(Space::Search, &range, Order::Ascending, 1024)?;
        for (k, _) in &rows {
            let id = key::read_u64(k, 9).ok_or_else(|| corrupt("segment key"))?;
            let mut docs = RoaringTreemap::new();
            docs.insert(id);
            segments.push(Segment { id, docs });
        }
        match rows.last() {
            Some((k, _)) if rows.len() == 1024 => range = range.after(k, Order::Ascending),
            _ => break,
        }
    }
    let mut dead = RoaringTreemap::new();
    for (k, v) in
        reader.scan(Space::Search, &KeyRange::prefix(&tagged(b'x', account)), Order::Ascending, usize::MAX)?
    {
        let block = key::read_u64(&k, 9).ok_or_else(|| corrupt("tombstone key"))?;
        dead.extend(decode_bitmap(&v)?.iter().map(|low| (block << 16) | u64::from(low)));
    }
    Ok(View { account, segments, dead })
}

impl View {
    /// Every document indexed.
    pub fn documents(&self) -> RoaringTreemap {
        let mut all = RoaringTreemap::new();
        for s in &self.segments {
            all |= &s.docs;
        }
        all - &self.dead
    }

    /// Whether `doc` is indexed.
    pub fn has(&self, doc: u64) -> bool {
        !self.dead.contains(doc) && self.segments.iter().any(|s| s.docs.contains(doc))
    }

    /// How many segments the index has (a merge keeps this small).
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// The chunk of `seg` that would hold `tk`, if any.
    fn chunk_for(&self, reader: &dyn Reader, seg: u64, tk: &[u8]) -> Result<Option<Vec<u8>>> {
        let prefix = chunk_prefix(self.account, seg);
        let mut end = prefix.clone();
        end.extend_from_slice(tk);
        end.push(0);
        let rows = reader.scan(Space::Search, &KeyRange::between(prefix, end), Order::Descending, 1)?;
        Ok(rows.into_iter().next().map(|(_, v)| v))
    }

    /// The documents containing term key `tk`.
    pub fn postings(&self, reader: &dyn Reader, tk: &[u8]) -> Result<RoaringTreemap> {
        let mut out = RoaringTreemap::new();
        for s in &self.segments {
            let Some(chunk) = self.chunk_for(reader, s.id, tk)? else { continue };
            let mut r = ChunkReader::new(&chunk)?;
            while let Some(raw) = r.advance()? {
                match r.term.as_slice().cmp(tk) {
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Equal => out |= raw.decode(r.kind, s.sole())?,
                    std::cmp::Ordering::Greater => {}
                }
                break;
            }
        }
        Ok(out - &self.dead)
    }

    /// The documents containing a word of `field` that starts with
    /// `prefix` (pair terms excluded). At most [`MAX_PREFIX_TERMS`] words;
    /// `Err` beyond, so a query never silently misses.
    pub fn prefixed(&self, reader: &dyn Reader, field: Field, prefix: &str) -> Result<RoaringTreemap> {
        let p = term_key(field, prefix);
        let mut words = std::collections::BTreeSet::new();
        let mut out = RoaringTreemap::new();
        for s in &self.segments {
            // The chunk holding `p`, then every later chunk of the segment
            // while its terms still start with `p`.
            let cp = chunk_prefix(self.account, s.id);
            let mut first = self.chunk_for(reader, s.id, &p)?;
            let mut start = cp.clone();
            start.extend_from_slice(&p);
            let mut range = KeyRange::between(start, key::prefix_successor(&cp).unwrap_or_default());
            let mut past = false;
            while !past {
                let chunk = match first.take() {
                    Some(c) => c,
                    None => {
                        let rows = reader.scan(Space::Search, &range, Order::Ascending, 1)?;
                        let Some((k, v)) = rows.into_iter().next() else { break };
                        range = range.after(&k, Order::Ascending);
                        if k.len() < cp.len() + p.len() || k[cp.len()..cp.len() + p.len()] != p[..] {
                            // A chunk whose first term is past the prefix.
                            break;
                        }
                        // The chunk at exactly `p` was read as `first`.
                        if k[cp.len()..] == p[..] {
                            continue;
                        }
                        v
                    }
                };
                let mut r = ChunkReader::new(&chunk)?;
                while let Some(raw) = r.advance()? {
                    if r.term.as_slice() < p.as_slice() {
                        continue;
                    }
                    if !r.term.starts_with(&p) {
                        past = true;
                        break;
                    }
                    if r.term[1..].contains(&b' ') {
                        continue;
                    }
                    if words.insert(r.term.clone()) && words.len() > MAX_PREFIX_TERMS {
                        return Err(Error::LimitExceeded(format!(
                            "{prefix}* matches more than {MAX_PREFIX_TERMS} words; type more of it"
                        )));
                    }
                    out |= raw.decode(r.kind, s.sole())?;
                }
            }
        }
        Ok(out - &self.dead)
    }
}

/// Whether `doc` is indexed.
pub fn has(reader: &dyn Reader, account: u64, doc: u64) -> Result<bool> {
    Ok(view(reader, account)?.has(doc))
}

/// Every document indexed for `account` (for `check`).
pub fn documents(db: &Db, account: u64) -> Result<Vec<u64>> {
    Ok(view(&db.snapshot(), account)?.documents().iter().collect())
}

/// A segment's entries in term order, read a few chunks at a time from a
/// snapshot (a merge input); the current entry's term is in `term`, its
/// postings are read with [`Stream::stored`] or [`Stream::docs_into`].
struct Stream<'a> {
    reader: &'a dyn Reader,
    range: KeyRange,
    sole: u64,
    chunks: std::collections::VecDeque<Vec<u8>>,
    /// The current chunk and the read position in it.
    current: Option<(Vec<u8>, usize, u8)>,
    term: Vec<u8>,
    /// The current entry's postings: tag and place in the current chunk.
    raw: (u64, usize, usize),
}

impl<'a> Stream<'a> {
    fn new(reader: &'a dyn Reader, account: u64, seg: &Segment) -> Self {
        Stream {
            reader,
            range: KeyRange::prefix(&chunk_prefix(account, seg.id)),
            sole: seg.sole(),
            chunks: Default::default(),
            current: None,
            term: Vec::new(),
            raw: (0, 0, 0),
        }
    }

    /// Moves to the next entry; `false` at the end.
    fn advance(&mut self) -> Result<bool> {
        loop {
            if self.current.is_none() {
                if self.chunks.is_empty() {
                    let rows = self.reader.scan(Space::Search, &self.range, Order::Ascending, 4)?;
                    let Some((k, _)) = rows.last() else { return Ok(false) };
                    self.range = self.range.after(k, Order::Ascending);
                    self.chunks.extend(rows.into_iter().map(|(_, v)| v));
                }
                let Some(c) = self.chunks.pop_front() else { return Ok(false) };
                let kind = *c.first().ok_or_else(|| corrupt("empty segment chunk"))?;
                self.current = Some((c, 1, kind));
                self.term.clear();
            }
            let Some((chunk, pos, kind)) = self.current.as_mut() else { continue };
            let mut r =
                ChunkReader { kind: *kind, data: &chunk[*pos..], term: std::mem::take(&mut self.term) };
            let got = r.advance()?;
            let rest = r.data.len();
            self.term = r.term;
            match got {
                Some(raw) => {
                    let end = chunk.len() - rest;
                    self.raw = (raw.tag, end - raw.body.len(), end);
                    *pos = end;
                    return Ok(true);
                }
                None => self.current = None,
            }
        }
    }
}

impl Stream<'_> {
    /// The current entry's postings as stored, when it has any (an ingest
    /// segment's entries only imply their one document).
    fn stored(&self) -> Option<(u64, &[u8])> {
        let (chunk, _, kind) = self.current.as_ref()?;
        (*kind == KIND_POSTINGS).then(|| (self.raw.0, &chunk[self.raw.1..self.raw.2]))
    }

    /// Appends the current entry's documents to `out`.
    fn docs_into(&self, out: &mut Vec<u64>) -> Result<()> {
        let Some((chunk, _, kind)) = self.current.as_ref() else { return Ok(()) };
        Raw { tag: self.raw.0, body: &chunk[self.raw.1..self.raw.2] }.decode_into(*kind, self.sole, out)
    }
}

/// Most postings gathered in memory by one merge of ingest segments (a
/// few large messages make a merge of fewer segments).
const MAX_GATHERED_POSTINGS: usize = 4 << 20;

/// The entries of a run of ingest segments (one document each), gathered
/// in memory: each distinct term once, numbered, and (term number,
/// document) postings. A heap over hundreds of one-document inputs would
/// compare every term many times; a hash table looks each up once. The
/// terms live back to back in one buffer: no allocation per term.
struct Gathered {
    /// How many of the inputs (a prefix) were read.
    inputs: usize,
    bytes: Vec<u8>,
    /// Each distinct term, by number.
    terms: Vec<TermAt>,
    postings: Vec<(u32, u64)>,
}

impl Gathered {
    /// Reads `inputs` in order until `budget` postings (at least one
    /// input).
    fn read(reader: &dyn Reader, account: u64, inputs: &[&Segment], budget: usize) -> Result<Self> {
        use std::hash::BuildHasher;
        // Terms come from anyone who sends mail: a seed they cannot know.
        let hasher = foldhash::fast::RandomState::default();
        // Sized for a typical full merge (256 mails of a few hundred
        // distinct terms each), so it rarely grows.
        let mut table = hashbrown::HashTable::<u32>::with_capacity(1 << 16);
        let mut g = Gathered {
            inputs: 0,
            bytes: Vec::with_capacity(1 << 20),
            terms: Vec::with_capacity(1 << 16),
            postings: Vec::with_capacity(1 << 17),
        };
        for seg in inputs {
            if g.inputs > 0 && g.postings.len() >= budget {
                break;
            }
            let doc = seg.sole();
            let range = KeyRange::prefix(&chunk_prefix(account, seg.id));
            for (_, chunk) in reader.scan(Space::Search, &range, Order::Ascending, usize::MAX)? {
                let mut r = ChunkReader::new(&chunk)?;
                if r.kind != KIND_SOLE {
                    return Err(corrupt("postings in an ingest segment"));
                }
                while r.advance()?.is_some() {
                    let term = r.term.as_slice();
                    let (bytes, terms) = (&mut g.bytes, &mut g.terms);
                    let hash = hasher.hash_one(term);
                    let n = match table.find(hash, |&n| terms[n as usize].of(bytes) == term) {
                        Some(&n) => n,
                        None => {
                            // Distinct terms are fewer than the postings
                            // gathered: the budget and one segment's.
                            let n = terms.len() as u32;
                            let start = bytes.len();
                            bytes.extend_from_slice(term);
                            terms.push(TermAt::new(bytes, start, n));
                            table.insert_unique(hash, n, |&m| hasher.hash_one(terms[m as usize].of(bytes)));
                            n
                        }
                    };
                    g.postings.push((n, doc));
                }
            }
            g.inputs += 1;
        }
        Ok(g)
    }

    /// Calls `emit` with each term, in order, and its documents (ascending:
    /// the inputs are read in document order).
    fn emit(mut self, emit: &mut impl FnMut(&[u8], Postings<'_>) -> Result<()>) -> Result<()> {
        sort_terms(&mut self.terms, &self.bytes);
        let mut rank = vec![0u32; self.terms.len()];
        for (r, t) in self.terms.iter().enumerate() {
            rank[t.number as usize] = r as u32;
        }
        // A counting sort by rank keeps each term's documents in order.
        let mut start = vec![0usize; self.terms.len() + 1];
        for (n, _) in &self.postings {
            start[rank[*n as usize] as usize + 1] += 1;
        }
        for r in 0..self.terms.len() {
            start[r + 1] += start[r];
        }
        let mut at = start.clone();
        let mut docs = vec![0u64; self.postings.len()];
        for (n, d) in &self.postings {
            let r = rank[*n as usize] as usize;
            docs[at[r]] = *d;
            at[r] += 1;
        }
        let mut union = Vec::new();
        for (r, t) in self.terms.iter().enumerate() {
            union.clear();
            union.extend_from_slice(&docs[start[r]..start[r + 1]]);
            emit(t.of(&self.bytes), Postings::Docs(&mut union))?;
        }
        Ok(())
    }
}

/// One merged entry's documents, as a merge hands them to be written.
enum Postings<'a> {
    /// Decoded, ascending.
    Docs(&'a mut Vec<u64>),
    /// As one input stored them (the term is in no other input).
    Stored(u64, &'a [u8]),
}

/// Merges `inputs` (any segments) entry by entry, calling `emit` with each
/// term and the union of its documents — or, with `copy`, a term only one
/// input holds as it is stored. The live inputs are kept sorted by their
/// current term, smallest last, so the next term is a pop.
fn merge_streams(
    reader: &dyn Reader,
    account: u64,
    inputs: &[&Segment],
    copy: bool,
    emit: &mut impl FnMut(&[u8], Postings<'_>) -> Result<()>,
) -> Result<()> {
    let mut streams: Vec<Stream<'_>> = inputs.iter().map(|s| Stream::new(reader, account, s)).collect();
    let mut live = Vec::new();
    for (i, s) in streams.iter_mut().enumerate() {
        if s.advance()? {
            live.push(i);
        }
    }
    let after = |streams: &[Stream<'_>], a: usize, b: usize| (&streams[a].term, a) > (&streams[b].term, b);
    live.sort_unstable_by(|&a, &b| (&streams[b].term, b).cmp(&(&streams[a].term, a)));
    let (mut term, mut union, mut taken) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(first) = live.pop() {
        term.clear();
        term.extend_from_slice(&streams[first].term);
        taken.clear();
        taken.push(first);
        while let Some(&i) = live.last().filter(|&&i| streams[i].term == term) {
            live.pop();
            taken.push(i);
        }
        union.clear();
        let mut copied = false;
        if let ([i], true) = (taken.as_slice(), copy)
            && let Some((tag, body)) = streams[*i].stored()
        {
            emit(&term, Postings::Stored(tag, body))?;
            copied = true;
        }
        for &i in &taken {
            if !copied {
                streams[i].docs_into(&mut union)?;
            }
            if streams[i].advance()? {
                let at = live.partition_point(|&j| after(&streams, j, i));
                live.insert(at, i);
            }
        }
        if !copied {
            emit(&term, Postings::Docs(&mut union))?;
        }
    }
    Ok(())
}

/// Size class of a segment of `n` documents: log4.
fn class(n: u64) -> u32 {
    n.max(1).ilog2() / 2
}

/// Which segments a merge takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// What is due: the oldest ingest segments (at least [`MERGE_FANIN`]
    /// of them, at most [`MAX_MERGE_INPUTS`]), else all merged segments of
    /// the smallest size class that has [`MERGE_FANIN`].
    Due,
    /// The oldest ingest segments, however few (a compaction's first
    /// steps: each gathers as many as its memory budget allows).
    Fresh,
    /// Every segment, when there is more than one or any tombstone.
    All,
}

/// The segments to merge next, by `scope`.
fn plan(view: &View, scope: Scope) -> Option<Vec<usize>> {
    let n = view.segments.len();
    if scope == Scope::All {
        return (n > 1 || (n == 1 && !view.dead.is_empty())).then(|| (0..n).collect());
    }
    let fresh: Vec<usize> = (0..n).filter(|&i| view.segments[i].id < MERGED).collect();
    let due = if scope == Scope::Fresh { 1 } else { MERGE_FANIN };
    if fresh.len() >= due {
        // In id order (as listed), so the merged ones are a prefix.
        return Some(fresh.into_iter().take(MAX_MERGE_INPUTS).collect());
    }
    if scope == Scope::Fresh {
        return None;
    }
    let mut by_class: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (i, s) in view.segments.iter().enumerate().filter(|(_, s)| s.id >= MERGED) {
        by_class.entry(class(s.docs.len())).or_default().push(i);
    }
    by_class.into_values().find(|v| v.len() >= MERGE_FANIN).map(|mut v| {
        v.truncate(MAX_MERGE_INPUTS);
        v
    })
}

/// Keys deleted per garbage transaction.
const GARBAGE_KEYS_PER_TXN: usize = 1024;

/// Deletes the chunks of the segments on the garbage list, up to
/// [`GARBAGE_KEYS_PER_TXN`] keys per transaction (over as many segments as
/// that covers), then empties the list.
fn collect_garbage(db: &Db, account: u64) -> Result<()> {
    loop {
        let (more, _) = db.write(|txn| {
            let mut merged = Merged::read_txn(txn, account)?;
            if merged.garbage.is_empty() {
                return Ok::<_, Error>(false);
            }
            let mut budget = GARBAGE_KEYS_PER_TXN;
            let mut cleared = 0;
            for &seg in &merged.garbage {
                // A listed segment is never garbage (a merge that lost a
                // race leaves its output listed as garbage only).
                if !merged.segments.iter().any(|s| s.id == seg) {
                    let range = KeyRange::prefix(&chunk_prefix(account, seg));
                    let rows = txn.scan(Space::Search, &range, Order::Ascending, budget)?;
                    let full = rows.len() == budget;
                    budget -= rows.len();
                    for (k, _) in rows {
                        txn.delete(Space::Search, k);
                    }
                    if full {
                        // Maybe more of this one: the next transaction.
                        break;
                    }
                }
                cleared += 1;
            }
            merged.garbage.drain(..cleared);
            merged.write(txn, account);
            Ok(!merged.garbage.is_empty())
        })?;
        if !more {
            return Ok(());
        }
    }
}

/// One merge at most in one process at a time.
static MERGING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Merges one group of `account`'s segments, if any is due; returns
/// whether it did. The inputs are read from a snapshot; the output is
/// written under an unlisted segment in small transactions and swapped
/// in by one, so queries see either the inputs or the output. Merges do
/// not wait for fsync: a crash loses at most a merge, never a posting.
pub fn merge_step(db: &Db, account: u64) -> Result<bool> {
    merge_some(db, account, Scope::Due)
}

/// Merges all of `account`'s segments into one, dropping every deleted
/// document (after a reindex; tests): the ingest segments first, in merges
/// of bounded memory, then the few merged segments at once.
pub fn compact(db: &Db, account: u64) -> Result<()> {
    while merge_some(db, account, Scope::Fresh)? {}
    merge_some(db, account, Scope::All)?;
    Ok(())
}

/// Deleted documents whose postings are still in a segment.
pub fn tombstones(db: &Db, account: u64) -> Result<u64> {
    Ok(view(&db.snapshot(), account)?.dead.len())
}

fn merge_some(db: &Db, account: u64, scope: Scope) -> Result<bool> {
    merge_within(db, account, scope, MAX_GATHERED_POSTINGS)
}

/// [`merge_some`], gathering at most `budget` postings of ingest segments
/// (tests set a small one).
fn merge_within(db: &Db, account: u64, scope: Scope, budget: usize) -> Result<bool> {
    let _one = MERGING.lock().unwrap_or_else(|e| e.into_inner());
    collect_garbage(db, account)?;
    let snap = db.snapshot();
    let planned = Merged::read(&snap, account)?.version;
    let view = view(&snap, account)?;
    let Some(chosen) = plan(&view, scope) else { return Ok(false) };
    let mut inputs: Vec<&Segment> = chosen.iter().map(|&i| &view.segments[i]).collect();
    // Ingest segments are gathered in memory, as many as fit (a merge of
    // every segment takes them all: it streams).
    let gathered = if scope != Scope::All && inputs.iter().all(|s| s.id < MERGED) {
        let g = Gathered::read(&snap, account, &inputs, budget)?;
        inputs.truncate(g.inputs);
        Some(g)
    } else {
        None
    };
    let mut docs = RoaringTreemap::new();
    for s in &inputs {
        docs |= &s.docs;
    }
    let dropped = &docs & &view.dead;
    docs -= &dropped;
    // The output is garbage until swapped in (a crash leaves it listed).
    let (out, _) = db.write(|txn| {
        let n = txn.add(Space::Search, &tagged(b'n', account), 1)?;
        let out = MERGED | n as u64;
        let mut merged = Merged::read_txn(txn, account)?;
        merged.garbage.push(out);
        merged.write(txn, account);
        Ok::<_, Error>(out)
    })?;
    let prefix = chunk_prefix(account, out);
    let write_chunks = |chunks: Vec<(Vec<u8>, Vec<u8>)>| -> Result<()> {
        for group in chunks.chunks(CHUNKS_PER_TXN) {
            db.write(|txn| {
                for (first, c) in group {
                    let mut k = prefix.clone();
                    k.extend_from_slice(first);
                    txn.put(Space::Search, k, c.clone());
                }
                Ok::<_, Error>(())
            })?;
        }
        Ok(())
    };
    let mut w = ChunkWriter::new(KIND_POSTINGS);
    let mut emit = |term: &[u8], postings: Postings<'_>| -> Result<()> {
        match postings {
            Postings::Stored(tag, body) => w.push_stored(term, tag, body),
            Postings::Docs(union) => {
                // Inputs hold disjoint documents: a sort makes the union.
                if !union.is_sorted() {
                    union.sort_unstable();
                }
                if !dropped.is_empty() {
                    union.retain(|d| !dropped.contains(*d));
                }
                if !union.is_empty() {
                    w.push(term, Some(union));
                }
            }
        }
        if w.chunks.len() >= CHUNKS_PER_TXN {
            write_chunks(w.take_chunks())?;
        }
        Ok(())
    };
    match gathered {
        Some(g) => g.emit(&mut emit)?,
        // Postings are copied through unless some must be dropped.
        None => merge_streams(&snap, account, &inputs, dropped.is_empty(), &mut emit)?,
    }
    w.flush();
    write_chunks(w.take_chunks())?;
    let ((), swapped) = db.write(|txn| {
        let mut merged = Merged::read_txn(txn, account)?;
        if merged.version != planned {
            // Another merge ran since the plan: this output stays garbage.
            return Ok(());
        }
        merged.version += 1;
        let ids: Vec<u64> = inputs.iter().map(|s| s.id).collect();
        merged.segments.retain(|s| !ids.contains(&s.id));
        for id in &ids {
            if *id < MERGED {
                merged.high = merged.high.max(*id);
                txn.delete(Space::Search, seg_key(account, *id));
            }
        }
        merged.garbage.retain(|g| *g != out);
        merged.garbage.extend(&ids);
        if !docs.is_empty() {
            merged.segments.push(Segment { id: out, docs: docs.clone() });
        } else {
            merged.garbage.push(out);
        }
        merged.write(txn, account);
        // The dropped documents are in no segment any more.
        let mut blocks: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
        for d in dropped.iter() {
            blocks.entry(d >> 16).or_default().push((d & 0xFFFF) as u32);
        }
        for (block, lows) in blocks {
            let k = dead_key(account, block);
            let Some(v) = txn.get(Space::Search, &k)? else { continue };
            let mut bits = decode_bitmap(&v)?;
            for l in lows {
                bits.remove(l);
            }
            if bits.is_empty() {
                txn.delete(Space::Search, k);
            } else {
                txn.put(Space::Search, k, encode_bitmap(&bits));
            }
        }
        Ok::<_, Error>(())
    })?;
    // The next merge plans from a snapshot, which shows durable commits only.
    db.sync_blocking(swapped)?;
    collect_garbage(db, account)?;
    Ok(true)
}

/// Merges `account` until no merge is due; returns how many ran.
pub fn merge_account(db: &Db, account: u64) -> Result<usize> {
    let queue = tagged(b'q', account);
    let seen = db.get(Space::Search, &queue)?;
    let mut n = 0;
    while merge_step(db, account)? {
        n += 1;
    }
    // Off the work list, unless an ingest since added a segment.
    let ((), t) = db.write(|txn| {
        if txn.get(Space::Search, &queue)? == seen {
            txn.delete(Space::Search, queue.clone());
        }
        Ok::<_, Error>(())
    })?;
    db.sync_blocking(t)?;
    Ok(n)
}

/// Merges every account on the work list; returns how many merges ran.
pub fn merge(db: &Db) -> Result<usize> {
    let mut total = 0;
    let mut range = KeyRange::prefix(b"q");
    loop {
        let rows = db.scan(Space::Search, &range, Order::Ascending, 256)?;
        for (k, _) in &rows {
            if let Some(account) = key::read_u64(k, 1) {
                total += merge_account(db, account)?;
            }
        }
        match rows.last() {
            Some((k, _)) if rows.len() == 256 => range = range.after(k, Order::Ascending),
            _ => break,
        }
    }
    Ok(total)
}

/// Runs [`merge`] in the background until dropped.
#[derive(Debug)]
pub struct Merger {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Merger {
    /// Starts merging `db`'s accounts, looking for work every `every`.
    pub fn spawn(db: Db, every: std::time::Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("search-merge".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    if let Err(e) = merge(&db) {
                        tracing::warn!("search index merge failed (retrying): {e}");
                    }
                    std::thread::park_timeout(every);
                }
            })
            .ok();
        Merger { stop, thread }
    }
}

impl Drop for Merger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Every (term key, document) posting of `account`, sorted (tests, and
/// comparing an index migrated with one built at ingest).
pub fn dump(db: &Db, account: u64) -> Result<std::collections::BTreeSet<(Vec<u8>, u64)>> {
    let snap = db.snapshot();
    let view = view(&snap, account)?;
    let mut out = std::collections::BTreeSet::new();
    for s in &view.segments {
        let mut stream = Stream::new(&snap, account, s);
        let mut docs = Vec::new();
        while stream.advance()? {
            docs.clear();
            stream.docs_into(&mut docs)?;
            for &d in docs.iter().filter(|d| !view.dead.contains(**d)) {
                out.insert((stream.term.clone(), d));
            }
        }
    }
    Ok(out)
}

/// Drops `account`'s whole index (before a rebuild), including keys of
/// earlier index layouts.
pub fn clear(db: &Db, account: u64) -> Result<()> {
    for tag in [b's', b'g', b'x', b'q', b'n', b'l', b'f', b'b', b't'] {
        let prefix = tagged(tag, account);
        loop {
            let rows = db.scan(Space::Search, &KeyRange::prefix(&prefix), Order::Ascending, 4096)?;
            if rows.is_empty() {
                break;
            }
            let ((), t) = db.write(|txn| {
                for (k, _) in &rows {
                    txn.delete(Space::Search, k.clone());
                }
                Ok::<_, Error>(())
            })?;
            db.sync_blocking(t)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| term_key(Field::Body, w)).collect()
    }

    #[test]
    fn encoding_sorts_and_drops_duplicates_of_words_and_pairs() {
        let mut t = Terms::default();
        // Heads that tie in their first sixteen bytes, a prefix, a repeat.
        let words =
            ["abcdefghijklmnopqr", "abcdefghijklmnop", "abcdefghijklmnopqa", "b", "abcdefghijklmnop", "a"];
        let spans: Vec<_> = words.iter().map(|w| t.word(Field::Body, w)).collect();
        t.pair(Field::Subject, spans[3], spans[5]);
        // A pair of a repeated word (its span is the first copy's), twice.
        t.pair(Field::Body, spans[4], spans[3]);
        t.pair(Field::Body, spans[1], spans[3]);
        t.word(Field::Meta, "all");
        assert_eq!(t.len(), 10);
        assert_eq!(t.distinct(), 8);
        let e = encode(t);
        let mut r = ChunkReader::new(&e.chunks[0].1).expect("chunk");
        let mut got = Vec::new();
        while r.advance().expect("entry").is_some() {
            got.push(r.term.clone());
        }
        let mut want = terms(&[
            "a",
            "abcdefghijklmnop",
            "abcdefghijklmnop b",
            "abcdefghijklmnopqa",
            "abcdefghijklmnopqr",
            "b",
        ]);
        want.insert(0, term_key(Field::Meta, "all"));
        want.insert(1, term_key(Field::Subject, "b a"));
        assert_eq!(got, want);
    }

    #[test]
    fn chunks_round_trip_with_front_coding_and_both_posting_forms() {
        let mut w = ChunkWriter::new(KIND_POSTINGS);
        let small: RoaringTreemap = [3u64, 9, 1 << 40].into_iter().collect();
        let big: RoaringTreemap = (0..1000u64).map(|i| i * 7).collect();
        let words = terms(&["alpha", "alphabet", "beta"]);
        let (sv, bv): (Vec<u64>, Vec<u64>) = (small.iter().collect(), big.iter().collect());
        w.push(&words[0], Some(&sv));
        w.push(&words[1], Some(&bv));
        w.push(&words[2], Some(&sv));
        w.flush();
        let chunks = w.take_chunks();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].0, words[0]);
        let mut r = ChunkReader::new(&chunks[0].1).expect("chunk");
        let mut got = Vec::new();
        while let Some(raw) = r.advance().expect("entry") {
            got.push((r.term.clone(), raw.decode(r.kind, 0).expect("postings")));
        }
        assert_eq!(
            got,
            vec![(words[0].clone(), small.clone()), (words[1].clone(), big), (words[2].clone(), small)]
        );
    }

    #[test]
    fn an_ingest_segment_splits_into_chunks_by_size() {
        let many: Vec<String> =
            (0..5000u64).map(|i| blake3::hash(&i.to_le_bytes()).to_hex().to_string()).collect();
        let mut t = Terms::default();
        for w in &many {
            t.word(Field::Body, w);
        }
        let e = encode(t);
        assert!(e.chunks.len() > 1, "{} chunks", e.chunks.len());
        let mut seen = 0;
        for (first, c) in &e.chunks {
            let mut r = ChunkReader::new(c).expect("chunk");
            let mut n = 0;
            while r.advance().expect("entry").is_some() {
                if n == 0 {
                    assert_eq!(&r.term, first);
                }
                n += 1;
            }
            seen += n;
        }
        assert_eq!(seen, 5000);
    }

    #[test]
    fn terms_that_share_long_beginnings_are_each_kept_once() {
        // Heads and the next sixteen bytes tie; only the ends differ.
        let long = "x".repeat(40);
        let mut t = Terms::default();
        for round in 0..2 {
            for i in 0..1000 {
                t.word(Field::Body, &format!("{long}{i}"));
            }
            assert_eq!((t.len(), t.distinct()), (1000 * (round + 1), 1000));
        }
        let e = encode(t);
        assert_eq!(e.terms(), 1000);
    }

    #[test]
    fn common_prefixes_are_counted_to_the_byte() {
        let naive = |a: &[u8], b: &[u8]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
        let words: [&[u8]; 7] = [
            b"",
            b"a",
            b"abcdefgh",
            b"abcdefghijklmnopq",
            b"abcdefghijklmnopr",
            b"abcdefgX",
            b"abcdefghijklmnop",
        ];
        for a in words {
            for b in words {
                assert_eq!(common_prefix(a, b), naive(a, b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn a_merge_of_ingest_segments_over_its_budget_takes_the_oldest_and_loses_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let db = Db::new(Arc::new(crate::store::FjallStore::open(dir.path()).expect("open")));
        let account = 7;
        for doc in 1..=10u64 {
            let mut t = Terms::default();
            for w in ["common", &format!("only{doc}"), &format!("also{doc}")] {
                t.word(Field::Body, w);
            }
            let e = encode(t);
            let ((), c) = db.write(|txn| add(txn, account, doc, &e)).expect("add");
            db.sync_blocking(c).expect("sync");
        }
        let all = dump(&db, account).expect("dump");
        assert_eq!(all.len(), 30);
        // Three terms a document: a budget of five takes two documents.
        assert!(merge_within(&db, account, Scope::Due, 5).expect("merge"));
        let v = view(&db.snapshot(), account).expect("view");
        let merged: Vec<u64> = v.segments.iter().filter(|s| s.id >= MERGED).map(|s| s.docs.len()).collect();
        assert_eq!(merged, vec![2]);
        assert_eq!(v.segments.len(), 9);
        assert_eq!(dump(&db, account).expect("dump"), all);
        while merge_within(&db, account, Scope::Due, 5).expect("merge") {
            assert_eq!(dump(&db, account).expect("dump"), all);
        }
        // Fewer than MERGE_FANIN ingest segments may stay unmerged.
        let v = view(&db.snapshot(), account).expect("view");
        assert!(v.segments.iter().filter(|s| s.id < MERGED).count() < MERGE_FANIN);
        assert_eq!(v.documents().len(), 10);
        assert_eq!(dump(&db, account).expect("dump"), all);
        let common = v.postings(&db.snapshot(), &term_key(Field::Body, "common")).expect("postings");
        assert_eq!(common.len(), 10);
    }

    fn store_with(docs: impl IntoIterator<Item = (u64, Vec<String>)>) -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("dir");
        let db = Db::new(Arc::new(crate::store::FjallStore::open(dir.path()).expect("open")));
        for (doc, words) in docs {
            let mut t = Terms::default();
            for w in &words {
                t.word(Field::Body, w);
            }
            let e = encode(t);
            let ((), c) = db.write(|txn| add(txn, 1, doc, &e)).expect("add");
            db.sync_blocking(c).expect("sync");
        }
        (dir, db)
    }

    #[test]
    fn merges_copy_stored_postings_of_both_forms_and_compaction_drops_the_deleted() {
        // Over 32 documents a term's postings are a roaring bitmap, else
        // deltas; "first" and "tens7" are each in one input of a later
        // merge, so they are copied through as stored.
        let words = |d: u64| {
            let mut w = vec!["common".to_owned(), format!("rare{d}"), format!("tens{}", d / 10)];
            if d <= 40 {
                w.push("first".to_owned());
            }
            w
        };
        let (_dir, db) = store_with((1..=80).map(|d| (d, words(d))));
        let mut all = dump(&db, 1).expect("dump");
        assert_eq!(all.len(), 80 * 3 + 40);
        // Eight documents a merge of ingest segments, then the size classes.
        let mut merges = 0;
        while merge_within(&db, 1, Scope::Due, 8 * 3).expect("merge") {
            merges += 1;
            assert_eq!(dump(&db, 1).expect("dump"), all, "after merge {merges}");
        }
        assert!(merges > 10, "{merges}");
        let snap = db.snapshot();
        let v = view(&snap, 1).expect("view");
        assert_eq!(v.postings(&snap, &term_key(Field::Body, "first")).expect("first").len(), 40);
        assert_eq!(v.postings(&snap, &term_key(Field::Body, "tens7")).expect("tens").len(), 10);
        // Tombstones: gone from results at once, from the segments at the
        // compaction (which decodes, so drops them).
        for doc in [3, 40, 41, 77] {
            let ((), c) = db.write(|txn| remove(txn, 1, doc)).expect("remove");
            db.sync_blocking(c).expect("sync");
        }
        all.retain(|(_, d)| ![3, 40, 41, 77].contains(d));
        assert_eq!(dump(&db, 1).expect("dump"), all);
        compact(&db, 1).expect("compact");
        assert_eq!(dump(&db, 1).expect("dump"), all);
        assert_eq!(tombstones(&db, 1).expect("tombstones"), 0);
        assert_eq!(view(&db.snapshot(), 1).expect("view").segments(), 1);
    }

    #[test]
    fn postings_under_an_ingest_segment_are_reported_as_corrupt_and_nothing_is_merged() {
        let (_dir, db) = store_with((1..=4).map(|d| (d, vec![format!("w{d}")])));
        // Document 5's segment holds a chunk of the merged kind.
        let mut w = ChunkWriter::new(KIND_POSTINGS);
        w.push(&term_key(Field::Body, "w5"), Some(&[5]));
        w.flush();
        let ((), c) = db
            .write(|txn| {
                for (first, chunk) in w.take_chunks() {
                    let mut k = chunk_prefix(1, 5);
                    k.extend_from_slice(&first);
                    txn.put(Space::Search, k, chunk);
                }
                txn.put(Space::Search, seg_key(1, 5), Vec::new());
                Ok::<_, Error>(())
            })
            .expect("write");
        db.sync_blocking(c).expect("sync");
        let before = view(&db.snapshot(), 1).expect("view").segments();
        match merge_within(&db, 1, Scope::Due, MAX_GATHERED_POSTINGS) {
            Err(Error::Store(StoreError::Corrupt { space: Space::Search, detail })) => {
                assert!(detail.contains("ingest segment"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(view(&db.snapshot(), 1).expect("view").segments(), before);
    }

    #[test]
    fn a_merge_of_everything_takes_every_ingest_segment_whatever_the_budget() {
        let docs = || (1..=30).map(|d| (d, vec![format!("w{d}"), "x".to_owned()]));
        let fresh = |db: &Db| {
            view(&db.snapshot(), 1).expect("view").segments.iter().filter(|s| s.id < MERGED).count()
        };
        let (_dir, db) = store_with(docs());
        let all = dump(&db, 1).expect("dump");
        assert!(merge_within(&db, 1, Scope::All, 3).expect("merge"));
        assert_eq!(view(&db.snapshot(), 1).expect("view").segments(), 1);
        assert_eq!(dump(&db, 1).expect("dump"), all);
        // Compaction's first steps gather within the budget: two
        // documents of two postings each a step.
        let (_dir, db) = store_with(docs());
        let mut steps = 0;
        while merge_within(&db, 1, Scope::Fresh, 3).expect("merge") {
            steps += 1;
        }
        assert_eq!((steps, fresh(&db)), (15, 0));
        assert_eq!(dump(&db, 1).expect("dump"), all);
        compact(&db, 1).expect("compact");
        assert_eq!(view(&db.snapshot(), 1).expect("view").segments(), 1);
        assert_eq!(dump(&db, 1).expect("dump"), all);
    }

    #[test]
    fn terms_sort_as_their_bytes_do() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut t = Terms::default();
        let mut want = Vec::new();
        for _ in 0..3000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Short alphabets and lengths around the twelve-byte key, so
            // prefixes tie often and terms repeat.
            let len = (rng % 20) as usize;
            let w: String = (0..len).map(|k| ["a", "b", "c"][((rng >> (k * 2)) % 3) as usize]).collect();
            let field = if rng & (1 << 60) == 0 { Field::Body } else { Field::Subject };
            t.word(field, &w);
            want.push(term_key(field, &w));
        }
        want.sort();
        // `Terms` keeps a repeated term once.
        want.dedup();
        let bytes = std::mem::take(&mut t.bytes);
        let mut items = std::mem::take(&mut t.items);
        sort_terms(&mut items, &bytes);
        let got: Vec<Vec<u8>> = items.iter().map(|i| i.of(&bytes).to_vec()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn varints_round_trip_and_their_lengths_match_what_is_written() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v) as usize, "{v}");
            let mut leb = Vec::new();
            leb128::write::unsigned(&mut leb, v).expect("write");
            assert_eq!(out, leb, "{v}");
            out.push(0x55);
            let mut read = out.as_slice();
            assert_eq!(get_varint(&mut read).expect("read"), v);
            assert_eq!(read, [0x55]);
        }
        assert!(get_varint(&mut &[0x80u8][..]).is_err());
        assert!(get_varint(&mut &[][..]).is_err());
    }

    #[test]
    fn size_classes_are_powers_of_four() {
        assert_eq!([1, 3, 4, 15, 16, 63, 64].map(class), [0, 0, 1, 1, 2, 2, 3]);
    }
}
