//! The per-account inverted index in the store ([`Space::Search`]),
//! written in the same transaction as the mail it indexes.
//!
//! Ingest only appends: a new posting is a key of its own, so no write
//! under the writer lock rewrites a long posting list. [`merge`] folds
//! those keys into compressed blocks (a roaring bitmap per term and 65,536
//! document ids); a query reads a term's blocks plus its fresh keys.
//! Document numbers are email ids.
//!
//! The merge runs after a migration and `quaild reindex`, not yet in the
//! background while serving: run there it held the writer long enough to
//! starve ingest (71 msg/s instead of thousands in the SMTP benchmark), so
//! until segments replace per-posting keys, a served account's postings
//! stay fresh.
//!
//! - `f ‖ account ‖ field ‖ term ‖ 0 ‖ doc` → () — fresh postings;
//! - `b ‖ account ‖ field ‖ term ‖ 0 ‖ block` → roaring bitmap of the low
//!   16 bits of the ids in that block;
//! - `t ‖ account ‖ doc` → the document's terms (to remove it again);
//! - `n ‖ account` → counter of fresh postings; `q ‖ account` → () while it
//!   is past [`MERGE_AT`] (the merge's work list).

use roaring::{RoaringBitmap, RoaringTreemap};

use super::text::Field;
use crate::error::{Error, Result};
use crate::store::key::{self, Key};
use crate::store::{Db, KeyRange, Order, Reader, Space, StoreError, Txn};

/// Fresh postings of an account past which it is merged.
pub const MERGE_AT: i64 = 4096;
/// Fresh postings folded per merge transaction (bounding how long it holds
/// the writer: ingest waits for it).
pub const MERGE_STEP: usize = 2048;
/// Most terms a prefix (`word*`) expands to.
pub const MAX_PREFIX_TERMS: usize = 256;

/// A (field, term) as the key part `field ‖ term`.
pub fn term_key(field: Field, term: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + term.len());
    k.push(field as u8);
    k.extend_from_slice(term.as_bytes());
    k
}

fn with(tag: u8, account: u64, tk: &[u8]) -> Vec<u8> {
    let mut k = Key::new().u8(tag).u64(account).build();
    k.extend_from_slice(tk);
    k.push(0);
    k
}

fn fresh_key(account: u64, tk: &[u8], doc: u64) -> Vec<u8> {
    let mut k = with(b'f', account, tk);
    k.extend_from_slice(&doc.to_be_bytes());
    k
}

fn block_key(account: u64, tk: &[u8], block: u32) -> Vec<u8> {
    let mut k = with(b'b', account, tk);
    k.extend_from_slice(&block.to_be_bytes());
    k
}

fn doc_key(account: u64, doc: u64) -> Vec<u8> {
    Key::new().u8(b't').u64(account).u64(doc).build()
}

fn count_key(account: u64) -> Vec<u8> {
    Key::new().u8(b'n').u64(account).build()
}

fn queue_key(account: u64) -> Vec<u8> {
    Key::new().u8(b'q').u64(account).build()
}

fn corrupt(detail: &str) -> Error {
    StoreError::Corrupt { space: Space::Search, detail: detail.into() }.into()
}

fn decode_block(v: &[u8]) -> Result<RoaringBitmap> {
    RoaringBitmap::deserialize_from(v).map_err(|_| corrupt("posting block"))
}

fn encode_block(b: &RoaringBitmap) -> Vec<u8> {
    let mut v = Vec::with_capacity(b.serialized_size());
    // Writing to a Vec cannot fail.
    let _ = b.serialize_into(&mut v);
    v
}

/// The document's terms, length-prefixed.
fn encode_terms(terms: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    for t in terms {
        v.push(t.len().min(255) as u8);
        v.extend_from_slice(&t[..t.len().min(255)]);
    }
    zstd::bulk::compress(&v, 1).unwrap_or(v)
}

fn decode_terms(v: &[u8]) -> Result<Vec<Vec<u8>>> {
    let raw = zstd::bulk::decompress(v, 16 << 20).map_err(|_| corrupt("document terms"))?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let n = raw[i] as usize;
        let t = raw.get(i + 1..i + 1 + n).ok_or_else(|| corrupt("document terms"))?;
        out.push(t.to_vec());
        i += 1 + n;
    }
    Ok(out)
}

/// Indexes document `doc` of `account` with `terms` (term keys).
pub fn add(txn: &mut Txn<'_>, account: u64, doc: u64, terms: &[Vec<u8>]) -> Result<()> {
    for t in terms {
        txn.put(Space::Search, fresh_key(account, t, doc), Vec::new());
    }
    txn.put(Space::Search, doc_key(account, doc), encode_terms(terms));
    let n = txn.add(Space::Search, &count_key(account), terms.len() as i64)?;
    if n >= MERGE_AT && n - (terms.len() as i64) < MERGE_AT {
        txn.put(Space::Search, queue_key(account), Vec::new());
    }
    Ok(())
}

/// Removes document `doc` from `account`'s index (nothing if it is not in it).
pub fn remove(txn: &mut Txn<'_>, account: u64, doc: u64) -> Result<()> {
    let Some(v) = txn.get(Space::Search, &doc_key(account, doc))? else { return Ok(()) };
    let block = (doc >> 16) as u32;
    let low = (doc & 0xFFFF) as u32;
    let mut fresh_removed = 0i64;
    for t in decode_terms(&v)? {
        let fk = fresh_key(account, &t, doc);
        if txn.exists(Space::Search, &fk)? {
            txn.delete(Space::Search, fk);
            fresh_removed += 1;
            continue;
        }
        let bk = block_key(account, &t, block);
        if let Some(b) = txn.get(Space::Search, &bk)? {
            let mut bits = decode_block(&b)?;
            if bits.remove(low) {
                if bits.is_empty() {
                    txn.delete(Space::Search, bk);
                } else {
                    txn.put(Space::Search, bk, encode_block(&bits));
                }
            }
        }
    }
    if fresh_removed > 0 {
        txn.add(Space::Search, &count_key(account), -fresh_removed)?;
    }
    txn.delete(Space::Search, doc_key(account, doc));
    Ok(())
}

/// Whether `doc` is indexed.
pub fn has(reader: &dyn Reader, account: u64, doc: u64) -> Result<bool> {
    Ok(reader.get(Space::Search, &doc_key(account, doc))?.is_some())
}

/// The documents containing term key `tk`.
pub fn postings(reader: &dyn Reader, account: u64, tk: &[u8]) -> Result<RoaringTreemap> {
    let mut out = RoaringTreemap::new();
    let prefix = with(b'b', account, tk);
    let plen = prefix.len();
    for (k, v) in reader.scan(Space::Search, &KeyRange::prefix(&prefix), Order::Ascending, usize::MAX)? {
        let block = k.get(plen..plen + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_be_bytes);
        let Some(block) = block else { continue };
        let base = u64::from(block) << 16;
        out.extend(decode_block(&v)?.iter().map(|low| base | u64::from(low)));
    }
    let prefix = with(b'f', account, tk);
    let plen = prefix.len();
    for (k, _) in reader.scan(Space::Search, &KeyRange::prefix(&prefix), Order::Ascending, usize::MAX)? {
        if let Some(doc) = key::read_u64(&k, plen) {
            out.insert(doc);
        }
    }
    Ok(out)
}

/// The terms of `field` that start with `prefix` (at most
/// [`MAX_PREFIX_TERMS`]; `Err` beyond, so a query never silently misses).
pub fn expand(reader: &dyn Reader, account: u64, field: Field, prefix: &str) -> Result<Vec<Vec<u8>>> {
    let mut terms: std::collections::BTreeSet<Vec<u8>> = std::collections::BTreeSet::new();
    for tag in [b'b', b'f'] {
        let mut p = Key::new().u8(tag).u64(account).build();
        let start = p.len();
        p.extend_from_slice(&term_key(field, prefix));
        let mut range = KeyRange::prefix(&p);
        loop {
            let rows = reader.scan(Space::Search, &range, Order::Ascending, 1024)?;
            let Some(last) = rows.last().map(|(k, _)| k.clone()) else { break };
            for (k, _) in &rows {
                let tail = if tag == b'b' { 4 } else { 8 };
                if k.len() > start + tail + 1 {
                    terms.insert(k[start..k.len() - tail - 1].to_vec());
                }
            }
            if terms.len() > MAX_PREFIX_TERMS {
                return Err(Error::LimitExceeded(format!(
                    "{prefix}* matches more than {MAX_PREFIX_TERMS} words; type more of it"
                )));
            }
            if rows.len() < 1024 {
                break;
            }
            // Skip past the rest of this term's keys: `term ‖ 1` sorts
            // after every `term ‖ 0 ‖ ...` and before any longer term.
            let tail = if tag == b'b' { 4 } else { 8 };
            let mut next = last[..last.len() - tail - 1].to_vec();
            next.push(1);
            range = KeyRange::between(next, crate::store::key::prefix_successor(&p).unwrap_or_default());
        }
    }
    Ok(terms.into_iter().collect())
}

/// Folds up to [`MERGE_STEP`] fresh postings of `account` into blocks, in
/// one transaction; returns how many were folded.
pub fn merge_step(db: &Db, account: u64) -> Result<usize> {
    Ok(merge_from(db, account, None)?.0)
}

/// One merge step starting after key `after` (a cursor: deleted keys stay
/// behind as tombstones until compaction, and a scan from the start would
/// walk them all again); returns how many were folded and the last key.
fn merge_from(db: &Db, account: u64, after: Option<&[u8]>) -> Result<(usize, Option<Vec<u8>>)> {
    let ((n, last), ticket) = db.write(|txn| {
        let prefix = Key::new().u8(b'f').u64(account).build();
        let range = match after {
            Some(k) => KeyRange::prefix(&prefix).after(k, Order::Ascending),
            None => KeyRange::prefix(&prefix),
        };
        let rows = txn.scan(Space::Search, &range, Order::Ascending, MERGE_STEP)?;
        let last = rows.last().map(|(k, _)| k.clone());
        let mut i = 0;
        while i < rows.len() {
            // One term and block at a time.
            let k = &rows[i].0;
            if k.len() < prefix.len() + 9 {
                txn.delete(Space::Search, k.clone());
                i += 1;
                continue;
            }
            let tk = k[prefix.len()..k.len() - 9].to_vec();
            let doc = key::read_u64(k, k.len() - 8).unwrap_or(0);
            let block = (doc >> 16) as u32;
            let bk = block_key(account, &tk, block);
            let mut bits = match txn.get(Space::Search, &bk)? {
                Some(v) => decode_block(&v)?,
                None => RoaringBitmap::new(),
            };
            while i < rows.len() {
                let k = &rows[i].0;
                if k.len() < prefix.len() + 9 || k[prefix.len()..k.len() - 9] != tk[..] {
                    break;
                }
                let doc = key::read_u64(k, k.len() - 8).unwrap_or(0);
                if (doc >> 16) as u32 != block {
                    break;
                }
                bits.insert((doc & 0xFFFF) as u32);
                txn.delete(Space::Search, k.clone());
                i += 1;
            }
            txn.put(Space::Search, bk, encode_block(&bits));
        }
        let left = txn.add(Space::Search, &count_key(account), -(rows.len() as i64))?;
        if left < MERGE_AT || rows.is_empty() {
            txn.delete(Space::Search, queue_key(account));
        }
        Ok::<_, Error>((rows.len(), last))
    })?;
    db.sync_blocking(ticket)?;
    Ok((n, last))
}

/// Merges every account waiting in the work list; returns postings folded.
pub fn merge(db: &Db) -> Result<usize> {
    let queued = db.scan(Space::Search, &KeyRange::prefix(b"q"), Order::Ascending, 1024)?;
    let mut total = 0;
    for (k, _) in queued {
        let Some(account) = key::read_u64(&k, 1) else { continue };
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let (n, last) = merge_from(db, account, cursor.as_deref())?;
            total += n;
            if n < MERGE_STEP {
                break;
            }
            cursor = last;
        }
    }
    Ok(total)
}

/// Every document indexed for `account` (for `check`).
pub fn documents(db: &Db, account: u64) -> Result<Vec<u64>> {
    let prefix = Key::new().u8(b't').u64(account).build();
    let mut out = Vec::new();
    db.scan_all(Space::Search, &KeyRange::prefix(&prefix), Order::Ascending, |k, _| {
        if let Some(d) = key::read_u64(k, 9) {
            out.push(d);
        }
        Ok::<_, Error>(true)
    })?;
    Ok(out)
}

/// Every (term key, document) posting of `account`, sorted (tests, and
/// comparing an index migrated with one built at ingest).
pub fn dump(db: &Db, account: u64) -> Result<std::collections::BTreeSet<(Vec<u8>, u64)>> {
    let mut out = std::collections::BTreeSet::new();
    let start = Key::new().u8(b'b').u64(account).build().len();
    db.scan_all(
        Space::Search,
        &KeyRange::prefix(&Key::new().u8(b'b').u64(account).build()),
        Order::Ascending,
        |k, v| {
            let tk = k[start..k.len() - 5].to_vec();
            let block =
                u64::from(u32::from_be_bytes(k[k.len() - 4..].try_into().map_err(|_| corrupt("block key"))?));
            for low in decode_block(v)? {
                out.insert((tk.clone(), (block << 16) | u64::from(low)));
            }
            Ok::<_, Error>(true)
        },
    )?;
    db.scan_all(
        Space::Search,
        &KeyRange::prefix(&Key::new().u8(b'f').u64(account).build()),
        Order::Ascending,
        |k, _| {
            let tk = k[start..k.len() - 9].to_vec();
            if let Some(doc) = key::read_u64(k, k.len() - 8) {
                out.insert((tk, doc));
            }
            Ok::<_, Error>(true)
        },
    )?;
    Ok(out)
}

/// Drops `account`'s whole index (before a rebuild).
pub fn clear(db: &Db, account: u64) -> Result<()> {
    for tag in [b'f', b'b', b't', b'n', b'q'] {
        let prefix = Key::new().u8(tag).u64(account).build();
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

    #[test]
    fn document_terms_round_trip() {
        let terms = vec![term_key(Field::Body, "hello"), term_key(Field::Subject, "wörld"), vec![]];
        assert_eq!(decode_terms(&encode_terms(&terms)).expect("decode"), terms);
    }
}
