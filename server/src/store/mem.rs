//! An in-memory backend with the same contract as the disk one, for tests
//! of what a power loss does: [`MemStore::power_loss`] "reboots" it to its
//! durable image, dropping every commit after the last fsync.
//!
//! The "fsync" copies the live map into the durable image (readers are
//! served from that image, as on disk). It goes through the same group
//! committer as [`super::FjallStore`] and can be held back with a
//! [`SyncGate`], so a test can stop the world between a commit and its
//! durability.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::group_commit::{GroupCommit, SyncGate};
use super::{
    BoxFuture, KeyRange, Order, Reader, Snapshot, Space, Store, StoreMetrics, StoreResult, Ticket, Txn,
};

type Map = BTreeMap<(Space, Vec<u8>), Vec<u8>>;

#[derive(Debug, Default)]
struct Images {
    live: Mutex<Map>,
    durable: RwLock<Arc<Map>>,
}

/// An in-memory store (tests only; nothing survives the process).
pub struct MemStore {
    images: Arc<Images>,
    gate: SyncGate,
    group: GroupCommit,
    commits: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for MemStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemStore").field("metrics", &self.metrics()).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemStore {
    /// An empty store whose fsyncs pass through `gate`.
    pub fn new(gate: SyncGate) -> StoreResult<Self> {
        Self::with_image(Map::new(), gate)
    }

    fn with_image(image: Map, gate: SyncGate) -> StoreResult<Self> {
        let images =
            Arc::new(Images { live: Mutex::new(image.clone()), durable: RwLock::new(Arc::new(image)) });
        let sync_images = Arc::clone(&images);
        let sync_gate = gate.clone();
        let group = GroupCommit::start(Box::new(move || {
            sync_gate.pass();
            let copy = Arc::new(lock(&sync_images.live).clone());
            *sync_images.durable.write().unwrap_or_else(PoisonError::into_inner) = copy;
            Ok(())
        }))?;
        Ok(MemStore { images, gate, group, commits: std::sync::atomic::AtomicU64::new(0) })
    }

    /// The store as it comes back after a power loss now: only what the
    /// last fsync made durable. This store is left as it is; stop using it.
    pub fn power_loss(&self) -> StoreResult<MemStore> {
        let image = self.durable().as_ref().clone();
        MemStore::with_image(image, SyncGate::new())
    }

    /// The gate this store's fsyncs pass.
    pub fn gate(&self) -> &SyncGate {
        &self.gate
    }

    fn durable(&self) -> Arc<Map> {
        Arc::clone(&self.images.durable.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Stops the group committer after a last fsync.
    pub fn close(&self) {
        self.group.shutdown();
    }
}

impl Drop for MemStore {
    fn drop(&mut self) {
        // A held gate would keep the final fsync waiting forever.
        self.gate.release();
        self.group.shutdown();
    }
}

fn get(map: &Map, space: Space, key: &[u8]) -> Option<Vec<u8>> {
    map.get(&(space, key.to_vec())).cloned()
}

fn scan(map: &Map, space: Space, range: &KeyRange, order: Order, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let lo = match &range.start {
        Bound::Included(k) => Bound::Included((space, k.clone())),
        Bound::Excluded(k) => Bound::Excluded((space, k.clone())),
        Bound::Unbounded => Bound::Included((space, Vec::new())),
    };
    let iter = map.range((lo, Bound::Unbounded)).take_while(|((s, _), _)| *s == space);
    let rows = iter.filter(|((_, k), _)| range.contains(k)).map(|((_, k), v)| (k.clone(), v.clone()));
    match order {
        Order::Ascending => rows.take(limit).collect(),
        Order::Descending => {
            let all: Vec<_> = rows.collect();
            all.into_iter().rev().take(limit).collect()
        }
    }
}

/// Reads of one map: the live one under its lock (transactions), or a
/// durable image (readers and snapshots).
struct View<M>(M);

impl<M: std::ops::Deref<Target = Map>> Reader for View<M> {
    fn get(&self, space: Space, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        Ok(get(&self.0, space, key))
    }

    fn scan(
        &self,
        space: Space,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(scan(&self.0, space, range, order, limit))
    }
}

impl Reader for MemStore {
    fn get(&self, space: Space, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        View(self.durable()).get(space, key)
    }

    fn scan(
        &self,
        space: Space,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        View(self.durable()).scan(space, range, order, limit)
    }
}

impl Store for MemStore {
    fn commit(&self, f: &mut dyn FnMut(&mut Txn<'_>) -> StoreResult<()>) -> StoreResult<Ticket> {
        let mut live = lock(&self.images.live);
        let writes = {
            let reader = View(&*live);
            let mut txn = Txn::new(&reader);
            f(&mut txn)?;
            txn.into_writes()?
        };
        for ((space, key), value) in writes {
            match value {
                Some(v) => live.insert((space, key), v.to_vec()),
                None => live.remove(&(space, key)),
            };
        }
        self.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Under the live lock, so tickets follow the order of the batches.
        self.group.applied()
    }

    fn sync(&self, ticket: Ticket) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.group.wait(ticket))
    }

    fn sync_blocking(&self, ticket: Ticket) -> StoreResult<()> {
        self.group.wait_blocking(ticket)
    }

    fn metrics(&self) -> StoreMetrics {
        StoreMetrics {
            commits: self.commits.load(std::sync::atomic::Ordering::Relaxed),
            fsyncs: self.group.fsyncs(),
            durable: self.group.durable(),
        }
    }

    fn intent(&self) -> super::Intent {
        self.group.intent()
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot::new(Box::new(View(self.durable())))
    }
}
