//! The embedded backend: fjall, an LSM-tree engine with keyspaces, atomic
//! cross-keyspace batches and a journal that really fsyncs.
//!
//! Writes are serialised by one lock: a transaction reads, computes and
//! appends its batch to the journal (a buffered write to the OS, no fsync)
//! while holding it, so transactions never conflict and never retry. The
//! lock is never held across an fsync: durability comes from the group
//! committer, which calls `persist(SyncAll)` (fsync of the journal file).
//!
//! Readers see a fjall snapshot, not the live trees: the committer opens a
//! snapshot, fsyncs, and only then publishes it. Every batch in that
//! snapshot had its journal write done before the snapshot was opened
//! (fjall makes a batch visible after journaling it), so the fsync covers
//! it: a published snapshot never holds a batch a power loss could undo.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use fjall::{
    CompressionType, Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode, Readable,
};

use super::group_commit::{GroupCommit, SyncGate};
use super::{
    BoxFuture, KeyRange, Order, Reader, Snapshot, Space, Store, StoreError, StoreMetrics, StoreResult,
    Ticket, Txn,
};

/// Block cache. fjall's default (32 MiB) is far below a mail store's working
/// set: an account of 100k messages then reads its thread links, counters
/// and indexes from disk blocks that an empty account finds in memory.
pub const CACHE_BYTES: u64 = 256 << 20;
/// Most journal bytes kept before flushed memtables let fjall drop them
/// (its default, 512 MiB, stays on disk beside the compacted tables; 64 MiB
/// is fjall's least). A start replays it: with the search index's many
/// small keys that takes a few seconds in a debug build.
pub const MAX_JOURNAL_BYTES: u64 = 64 << 20;

/// A store in one directory on local disk.
pub struct FjallStore {
    db: Database,
    spaces: Arc<[Keyspace]>,
    /// The snapshot readers see: taken before the last successful fsync.
    published: Arc<RwLock<fjall::Snapshot>>,
    writer: Mutex<()>,
    commits: std::sync::atomic::AtomicU64,
    group: GroupCommit,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore").field("metrics", &self.metrics()).finish()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl FjallStore {
    /// Opens (creating if needed) the store in `dir`, replaying its journal.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        Self::open_gated(dir, SyncGate::new())
    }

    /// [`FjallStore::open`] with fsyncs passing through `gate` (tests hold
    /// it to look at the store between a commit and its fsync).
    pub fn open_gated(dir: &Path, gate: SyncGate) -> StoreResult<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("creating {}: {e}", dir.display())))?;
        let db = Database::builder(dir)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(MAX_JOURNAL_BYTES)
            // What is large is compressed already (zstd blobs) or packed
            // (index chunks): lz4 over it in the journal costs every commit
            // CPU and saves next to nothing. Each journal entry names its
            // own compression, so journals written with lz4 still replay.
            .journal_compression(CompressionType::None)
            .open()
            .map_err(backend)?;
        let mut spaces = Vec::with_capacity(Space::ALL.len());
        for space in Space::ALL {
            let ks = db
                .keyspace(space.name(), || {
                    let opts = KeyspaceCreateOptions::default();
                    if space.holds_large_values() {
                        opts.with_kv_separation(Some(KvSeparationOptions::default()))
                    } else {
                        opts
                    }
                })
                .map_err(backend)?;
            spaces.push(ks);
        }
        let spaces: Arc<[Keyspace]> = spaces.into();
        // What recovery replayed may be only in the page cache (after a
        // kill -9): make it durable before readers may see it.
        db.persist(PersistMode::SyncAll).map_err(backend)?;
        let published = Arc::new(RwLock::new(db.snapshot()));
        let sync_db = db.clone();
        let publish = Arc::clone(&published);
        let group = GroupCommit::start(Box::new(move || {
            gate.pass();
            let snapshot = sync_db.snapshot();
            sync_db.persist(PersistMode::SyncAll).map_err(|e| e.to_string())?;
            *publish.write().unwrap_or_else(PoisonError::into_inner) = snapshot;
            Ok(())
        }))?;
        Ok(FjallStore {
            db,
            spaces,
            published,
            writer: Mutex::new(()),
            commits: std::sync::atomic::AtomicU64::new(0),
            group,
        })
    }

    fn ks(&self, space: Space) -> &Keyspace {
        // `spaces` holds one handle per `Space::ALL` entry, in that order.
        &self.spaces[space.index()]
    }

    /// Makes everything written durable and stops the group committer.
    pub fn close(&self) {
        self.group.shutdown();
    }
}

impl Drop for FjallStore {
    fn drop(&mut self) {
        self.group.shutdown();
    }
}

/// Reads of the live trees: only the writer's transactions use them.
struct Live<'a>(&'a FjallStore);

/// Reads of a published snapshot.
struct Frozen {
    snapshot: fjall::Snapshot,
    spaces: Arc<[Keyspace]>,
}

fn get_from(source: Option<&fjall::Snapshot>, ks: &Keyspace, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
    let v = match source {
        Some(s) => s.get(ks, key),
        None => ks.get(key),
    };
    Ok(v.map_err(backend)?.map(|v| v.to_vec()))
}

fn scan_from(
    source: Option<&fjall::Snapshot>,
    ks: &Keyspace,
    range: &KeyRange,
    order: Order,
    limit: usize,
) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let bounds = (range.start.clone(), range.end.clone());
    let iter = match source {
        Some(s) => s.range::<Vec<u8>, _>(ks, bounds),
        None => ks.range::<Vec<u8>, _>(bounds),
    };
    let mut out = Vec::new();
    let mut push = |guard: fjall::Guard| -> StoreResult<bool> {
        let (k, v) = guard.into_inner().map_err(backend)?;
        out.push((k.to_vec(), v.to_vec()));
        Ok(out.len() < limit)
    };
    match order {
        Order::Ascending => {
            for g in iter {
                if !push(g)? {
                    break;
                }
            }
        }
        Order::Descending => {
            for g in iter.rev() {
                if !push(g)? {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// [`Reader::visit`] over a keyspace, lending each entry as fjall yields
/// it: no copy, no page boundaries to seek again.
fn visit_from(
    source: Option<&fjall::Snapshot>,
    ks: &Keyspace,
    range: &KeyRange,
    order: Order,
    f: &mut crate::store::Visitor<'_>,
) -> StoreResult<()> {
    let bounds = (range.start.clone(), range.end.clone());
    let iter = match source {
        Some(s) => s.range::<Vec<u8>, _>(ks, bounds),
        None => ks.range::<Vec<u8>, _>(bounds),
    };
    let mut each = |guard: fjall::Guard| -> StoreResult<bool> {
        let (k, v) = guard.into_inner().map_err(backend)?;
        f(&k, &v)
    };
    match order {
        Order::Ascending => {
            for g in iter {
                if !each(g)? {
                    break;
                }
            }
        }
        Order::Descending => {
            for g in iter.rev() {
                if !each(g)? {
                    break;
                }
            }
        }
    }
    Ok(())
}

impl Reader for Live<'_> {
    fn get(&self, space: Space, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        get_from(None, self.0.ks(space), key)
    }

    fn scan(
        &self,
        space: Space,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        scan_from(None, self.0.ks(space), range, order, limit)
    }

    fn visit(
        &self,
        space: Space,
        range: &KeyRange,
        order: Order,
        f: &mut crate::store::Visitor<'_>,
    ) -> StoreResult<()> {
        visit_from(None, self.0.ks(space), range, order, f)
    }
}

impl Reader for Frozen {
    fn get(&self, space: Space, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        get_from(Some(&self.snapshot), &self.spaces[space.index()], key)
    }

    fn scan(
        &self,
        space: Space,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        scan_from(Some(&self.snapshot), &self.spaces[space.index()], range, order, limit)
    }

    fn visit(
        &self,
        space: Space,
        range: &KeyRange,
        order: Order,
        f: &mut crate::store::Visitor<'_>,
    ) -> StoreResult<()> {
        visit_from(Some(&self.snapshot), &self.spaces[space.index()], range, order, f)
    }
}

impl FjallStore {
    fn published(&self) -> std::sync::RwLockReadGuard<'_, fjall::Snapshot> {
        self.published.read().unwrap_or_else(PoisonError::into_inner)
    }
}

// Point reads and scans read the published snapshot under its read lock
// (held for one read; the committer takes the write lock once per fsync)
// rather than cloning it: a clone registers with fjall's snapshot tracker.
impl Reader for FjallStore {
    fn get(&self, space: Space, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        get_from(Some(&self.published()), self.ks(space), key)
    }

    fn scan(
        &self,
        space: Space,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        scan_from(Some(&self.published()), self.ks(space), range, order, limit)
    }
}

impl Store for FjallStore {
    fn commit(&self, f: &mut dyn FnMut(&mut Txn<'_>) -> StoreResult<()>) -> StoreResult<Ticket> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let live = Live(self);
        let mut txn = Txn::new(&live);
        f(&mut txn)?;
        let writes = txn.into_writes()?;
        let mut batch = self.db.batch();
        for ((space, key), value) in writes {
            match value {
                Some(v) => batch.insert(self.ks(space), key, &v[..]),
                None => batch.remove(self.ks(space), key),
            }
        }
        batch.commit().map_err(backend)?;
        self.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.group.applied()
    }

    fn sync(&self, ticket: Ticket) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.group.wait(ticket))
    }

    fn sync_blocking(&self, ticket: Ticket) -> StoreResult<()> {
        self.group.wait_blocking(ticket)
    }

    fn intent(&self) -> super::Intent {
        self.group.intent()
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot::new(Box::new(Frozen {
            snapshot: self.published().clone(),
            spaces: Arc::clone(&self.spaces),
        }))
    }

    fn metrics(&self) -> StoreMetrics {
        StoreMetrics {
            commits: self.commits.load(std::sync::atomic::Ordering::Relaxed),
            fsyncs: self.group.fsyncs(),
            durable: self.group.durable(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Db;

    /// A snapshot's and a transaction's visits lend fjall's entries as it
    /// iterates: the same entries, in the same order, as the paged scans,
    /// stopping where the visitor says and handing back its error.
    #[test]
    fn visits_see_what_paged_scans_see() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Arc::new(FjallStore::open(dir.path()).expect("open"));
        let db = Db::new(Arc::clone(&store) as Arc<dyn crate::store::Store>);
        // More than three pages of keys, and other keys around them.
        let n = 3 * crate::store::SCAN_PAGE + 17;
        let ((), t) = db
            .write(|txn| {
                txn.put(Space::Meta, b"a".to_vec(), b"before".to_vec());
                for i in 0..n as u32 {
                    txn.put(
                        Space::Meta,
                        [b"k".as_slice(), &i.to_be_bytes()].concat(),
                        i.to_le_bytes().to_vec(),
                    );
                }
                txn.put(Space::Meta, b"z".to_vec(), b"after".to_vec());
                Ok::<_, StoreError>(())
            })
            .expect("write");
        db.sync_blocking(t).expect("sync");
        let range = KeyRange::prefix(b"k");
        let snap = db.snapshot();
        // Written after the snapshot: new keys, overwrites and deletes in
        // its range, which its visits must not see and live reads must.
        let key = |i: u32| [b"k".as_slice(), &i.to_be_bytes()].concat();
        let ((), t) = db
            .write(|txn| {
                txn.put(Space::Meta, key(n as u32), b"new".to_vec());
                txn.put(Space::Meta, key(1), b"overwritten".to_vec());
                txn.delete(Space::Meta, key(2));
                Ok::<_, StoreError>(())
            })
            .expect("write after");
        db.sync_blocking(t).expect("sync");
        let now = |i: u32| match i {
            1 => Some(b"overwritten".to_vec()),
            2 => None,
            _ if i == n as u32 => Some(b"new".to_vec()),
            _ => Some(i.to_le_bytes().to_vec()),
        };
        let mut current: Vec<(Vec<u8>, Vec<u8>)> =
            (0..=n as u32).filter_map(|i| now(i).map(|v| (key(i), v))).collect();
        for order in [Order::Ascending, Order::Descending] {
            let mut paged = Vec::new();
            let mut r = range.clone();
            loop {
                let rows = snap.scan(Space::Meta, &r, order, 100).expect("scan");
                let Some((last, _)) = rows.last().cloned() else { break };
                paged.extend(rows);
                r = r.after(&last, order);
            }
            assert_eq!(paged.len(), n);
            let mut visited = Vec::new();
            snap.scan_all(Space::Meta, &range, order, |k, v| {
                visited.push((k.to_vec(), v.to_vec()));
                Ok::<_, StoreError>(true)
            })
            .expect("visit");
            assert_eq!(visited, paged, "{order:?}");
            // The same from the live keyspace (what a transaction reads).
            let mut live = Vec::new();
            Live(&store)
                .visit(Space::Meta, &range, order, &mut |k, v| {
                    live.push((k.to_vec(), v.to_vec()));
                    Ok(true)
                })
                .expect("live");
            if order == Order::Descending {
                current.reverse();
            }
            assert_eq!(live, current, "live {order:?}");
        }
        // Stopping early, and an error of the visitor's.
        let mut seen = 0;
        snap.scan_all(Space::Meta, &range, Order::Ascending, |_, _| {
            seen += 1;
            Ok::<_, StoreError>(seen < 5)
        })
        .expect("visit");
        assert_eq!(seen, 5);
        let err = snap
            .scan_all(Space::Meta, &range, Order::Descending, |k, _| {
                Err::<bool, _>(StoreError::Backend(format!("stop at {}", k.len())))
            })
            .expect_err("the visitor's error");
        assert!(err.to_string().contains("stop at 5"), "{err}");
    }

    /// Stores written before the journal stopped compressing have lz4
    /// entries in their journals: an upgrade replays them.
    #[test]
    fn a_journal_written_with_lz4_still_replays() {
        let dir = tempfile::tempdir().expect("dir");
        // Large and compressible: the old journal compressed it.
        let value = b"an index chunk, front-coded; ".repeat(400);
        {
            let db = Database::builder(dir.path())
                .journal_compression(CompressionType::Lz4)
                .open()
                .expect("open with lz4");
            let ks = db.keyspace(Space::Search.name(), KeyspaceCreateOptions::default).expect("keyspace");
            ks.insert(b"chunk", &value).expect("insert");
            db.persist(PersistMode::SyncAll).expect("persist");
        }
        let db = Db::new(Arc::new(FjallStore::open(dir.path()).expect("reopen")));
        assert_eq!(db.get(Space::Search, b"chunk").expect("get"), Some(value));
    }
}
