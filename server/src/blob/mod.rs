//! Content-addressed blobs: a blob's id is the BLAKE3 hash of its bytes, so
//! the same bytes are stored once however many emails refer to them.
//!
//! `Space::Blobs` maps id → one format byte + the stored bytes;
//! `Space::BlobRefs` maps id → reference count. References change in the
//! same transaction as the email that takes or drops them, so counts never
//! drift from the emails; a blob whose count reaches zero is deleted in that
//! same transaction.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::{Db, Space, StoreError, Txn};

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

/// Takes a reference to `bytes` (whose id is `id`), storing them if they are
/// new. Call inside the transaction that records the reference.
pub fn put(txn: &mut Txn<'_>, id: BlobId, bytes: &[u8]) -> Result<()> {
    let refs = txn.add(Space::BlobRefs, &id.0, 1)?;
    if refs == 1 {
        let mut stored = Vec::with_capacity(bytes.len() + 1);
        stored.push(FORMAT_PLAIN);
        stored.extend_from_slice(bytes);
        txn.put(Space::Blobs, id.0.to_vec(), stored);
    }
    Ok(())
}

/// Drops one reference; the blob goes with its last reference.
pub fn release(txn: &mut Txn<'_>, id: BlobId) -> Result<()> {
    let refs = txn.add(Space::BlobRefs, &id.0, -1)?;
    if refs <= 0 {
        if refs < 0 {
            return Err(StoreError::Corrupt {
                space: Space::BlobRefs,
                detail: format!("reference count of {id} below zero"),
            }
            .into());
        }
        txn.delete(Space::Blobs, id.0.to_vec());
    }
    Ok(())
}

/// The bytes of a blob.
pub fn get(db: &Db, id: BlobId) -> Result<Option<Vec<u8>>> {
    match db.get(Space::Blobs, &id.0)? {
        None => Ok(None),
        Some(stored) => decode(id, stored).map(Some),
    }
}

fn decode(id: BlobId, mut stored: Vec<u8>) -> Result<Vec<u8>> {
    match stored.first() {
        Some(&FORMAT_PLAIN) => {
            stored.remove(0);
            Ok(stored)
        }
        other => Err(Error::Store(StoreError::Corrupt {
            space: Space::Blobs,
            detail: format!("blob {id} has unknown format {other:?}"),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FjallStore;
    use std::sync::Arc;

    #[test]
    fn same_bytes_stored_once_and_freed_with_last_reference() {
        let dir = tempfile::tempdir().expect("dir");
        let db = Db::new(Arc::new(FjallStore::open(dir.path()).expect("open")));
        let bytes = b"attachment".to_vec();
        let id = BlobId::of(&bytes);
        for _ in 0..3 {
            db.write(|txn| put(txn, id, &bytes)).expect("put");
        }
        assert_eq!(db.counter(Space::BlobRefs, &id.0).expect("refs"), 3);
        assert_eq!(get(&db, id).expect("get"), Some(bytes.clone()));
        for left in [2, 1] {
            db.write(|txn| release(txn, id)).expect("release");
            assert_eq!(db.counter(Space::BlobRefs, &id.0).expect("refs"), left);
            assert!(get(&db, id).expect("get").is_some());
        }
        db.write(|txn| release(txn, id)).expect("release");
        assert_eq!(get(&db, id).expect("get"), None);
        let err = db.write(|txn| release(txn, id)).expect_err("below zero");
        assert!(matches!(err, Error::Store(StoreError::Corrupt { .. })));
    }
}
