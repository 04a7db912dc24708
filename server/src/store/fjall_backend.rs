//! The embedded backend: fjall, an LSM-tree engine with keyspaces, atomic
//! cross-keyspace batches and a journal that really fsyncs.
//!
//! Writes are serialised by one lock: a transaction reads, computes and
//! appends its batch to the journal (a buffered write to the OS, no fsync)
//! while holding it, so transactions never conflict and never retry. The
//! lock is never held across an fsync: durability comes from the group
//! committer, which calls `persist(SyncAll)` (fsync of the journal file).

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};

use super::group_commit::GroupCommit;
use super::{
    BoxFuture, KeyRange, Order, Reader, Space, Store, StoreError, StoreMetrics, StoreResult, Ticket, Txn,
};

/// A store in one directory on local disk.
pub struct FjallStore {
    db: Database,
    spaces: Vec<Keyspace>,
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
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("creating {}: {e}", dir.display())))?;
        let db = Database::builder(dir).open().map_err(backend)?;
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
        let sync_db = db.clone();
        let group = GroupCommit::start(Box::new(move || {
            sync_db.persist(PersistMode::SyncAll).map_err(|e| e.to_string())
        }))?;
        Ok(FjallStore {
            db,
            spaces,
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

impl Reader for FjallStore {
    fn get(&self, space: Space, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.ks(space).get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        space: Space,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let iter = self.ks(space).range::<Vec<u8>, _>((range.start.clone(), range.end.clone()));
        let mut out = Vec::new();
        let mut push = |guard: fjall::Guard| -> StoreResult<bool> {
            let (k, v) = guard.into_inner().map_err(backend)?;
            out.push((k.to_vec(), v.to_vec()));
            Ok(out.len() < limit)
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
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
}

impl Store for FjallStore {
    fn commit(&self, f: &mut dyn FnMut(&mut Txn<'_>) -> StoreResult<()>) -> StoreResult<Ticket> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut txn = Txn::new(self);
        f(&mut txn)?;
        let writes = txn.into_writes()?;
        let mut batch = self.db.batch();
        for ((space, key), value) in writes {
            match value {
                Some(v) => batch.insert(self.ks(space), key, v),
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

    fn metrics(&self) -> StoreMetrics {
        StoreMetrics {
            commits: self.commits.load(std::sync::atomic::Ordering::Relaxed),
            fsyncs: self.group.fsyncs(),
            durable: self.group.durable(),
        }
    }
}
