//! Ordered key-value storage: the one place data is kept.
//!
//! The rest of the server sees a [`Store`]: named keyspaces ([`Space`]) of
//! byte keys in byte order, point reads, range scans in either direction, and
//! atomic read-modify-write transactions over any number of keyspaces.
//! Indexes are keyspaces whose keys are big-endian tuples, so a range scan
//! comes out sorted (see [`key`]).
//!
//! # Durability
//!
//! A write happens in two steps:
//!
//! 1. [`Store::commit`] runs the caller's transaction under the store's single
//!    writer lock and appends its batch to the journal atomically (all of the
//!    batch or none of it, across keyspaces). The call returns a [`Ticket`].
//!    The batch is in the operating system's cache, **not yet durable**, and
//!    **not yet visible** to readers (only to later transactions, which must
//!    read the newest data to stay correct).
//! 2. [`Store::sync`] waits for that ticket to be durable. One background
//!    thread (the *group committer*) fsyncs the journal for every writer that
//!    is waiting, so one fsync acknowledges many writers: writers that arrive
//!    while an fsync is running share the next one. It fsyncs whenever
//!    commits are pending, so every commit becomes durable (and visible) soon
//!    even if nobody waits for it.
//!
//! Nothing is acknowledged to a client (RPC success, SMTP 250) before step 2
//! returns, so a crash — process or machine — loses nothing acknowledged. A
//! crash can lose writes that completed step 1 only; their senders were never
//! told they succeeded and retry.
//!
//! # Reads are served at the durable point
//!
//! Reads outside a transaction ([`Reader`] on a [`Store`], [`Db::get`],
//! [`Db::scan`], [`Db::snapshot`]) see a snapshot taken just before the last
//! successful fsync and published after it, never a batch that a power loss
//! could still take away. The alternative — an epoch in every state and id
//! sequence, moved on each open — keeps ids unique but still lets a client
//! learn of mail, states and mailboxes that then vanish; serving only durable
//! data fixes that at the root, for every sequence and every record at once,
//! and costs a reader at most one fsync of delay (a writer's own results are
//! returned only after its sync anyway). So after a crash nobody has seen a
//! state or id that recovery hands out again for other content.
//!
//! A [`Snapshot`] is also how a reader gets one consistent answer from many
//! reads (a state and the log entries up to it; a skeleton and its blobs).
//!
//! On open, the backend replays its journal; a torn final batch is discarded
//! whole, so recovery yields a prefix of the committed batches.

mod fjall_backend;
mod group_commit;
pub mod key;
mod mem;
#[cfg(test)]
mod model_test;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

pub use fjall_backend::FjallStore;
pub use group_commit::{COMMIT_DELAY, Intent, SyncGate};
pub use mem::MemStore;

/// A named keyspace. Each is its own ordered map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// Store-wide facts: format version, id sequences.
    Meta,
    /// `account id` → account record.
    Accounts,
    /// `login name` → account id.
    AccountNames,
    /// `blake3(token)` → app token record.
    Tokens,
    /// `account, token id` → blake3(token) (listing an account's tokens).
    AccountTokens,
    /// `account, mailbox id` → mailbox record.
    Mailboxes,
    /// `account, email id` → email record.
    Emails,
    /// `account, mailbox, facet, received, email` → () — a mailbox's emails
    /// by date, once for all of them (facet 0) and again for the unread (1)
    /// and the flagged (2). Mailbox 0 is all mail.
    EmailIndex,
    /// `account, thread, received, email` → () — a thread's members by date.
    ThreadMembers,
    /// `account, hash(message-id)` → thread — every Message-ID an email
    /// names (its own and those it replies to).
    MessageIds,
    /// `account, hash(normalised subject)` → thread, last received — the
    /// subject fallback of threading.
    Subjects,
    /// `account, kind, modseq` → id, op — the change log.
    Changes,
    /// `blob id` → blob bytes.
    Blobs,
    /// `blob id` → reference count.
    BlobRefs,
    /// `account, counter, ...` → i64 counters.
    Counters,
    /// `account, blob id` → how many of the account's emails and uploads
    /// refer to the blob: what the account *holds* (upload dedup asks it).
    AccountBlobs,
    /// `account, blob id` → expiry (ms): blobs the account uploaded and
    /// holds until then.
    Uploads,
    /// Gateway idempotency keys: `k ‖ key` → the delivery's outcomes,
    /// `t ‖ time ‖ key` → () to forget them in order.
    Deliveries,
    /// The outbox (see `mail::outbox`): submissions, their per-account
    /// list and their due queues.
    Outbox,
    /// The search index (see `search::index`): postings, their blocks,
    /// each document's terms.
    Search,
    /// The spam filter (see `filter::spam`): token statistics of the
    /// global and per-account models, each email's verdict.
    Spam,
}

impl Space {
    /// Every keyspace, in a fixed order.
    pub const ALL: [Space; 21] = [
        Space::Meta,
        Space::Accounts,
        Space::AccountNames,
        Space::Tokens,
        Space::AccountTokens,
        Space::Mailboxes,
        Space::Emails,
        Space::EmailIndex,
        Space::ThreadMembers,
        Space::MessageIds,
        Space::Subjects,
        Space::Changes,
        Space::Blobs,
        Space::BlobRefs,
        Space::Counters,
        Space::AccountBlobs,
        Space::Uploads,
        Space::Deliveries,
        Space::Outbox,
        Space::Search,
        Space::Spam,
    ];

    /// The keyspace's name on disk. Never change one: it is the stored layout.
    pub const fn name(self) -> &'static str {
        match self {
            Space::Meta => "meta",
            Space::Accounts => "accounts",
            Space::AccountNames => "account_names",
            Space::Tokens => "tokens",
            Space::AccountTokens => "account_tokens",
            Space::Mailboxes => "mailboxes",
            Space::Emails => "emails",
            Space::EmailIndex => "email_index",
            Space::ThreadMembers => "thread_members",
            Space::MessageIds => "message_ids",
            Space::Subjects => "subjects",
            Space::Changes => "changes",
            Space::Blobs => "blobs",
            Space::BlobRefs => "blob_refs",
            Space::Counters => "counters",
            Space::AccountBlobs => "account_blobs",
            Space::Uploads => "uploads",
            Space::Deliveries => "deliveries",
            Space::Outbox => "outbox",
            Space::Search => "search",
            Space::Spam => "spam",
        }
    }

    /// Keyspaces whose values are large and written once (kept apart from
    /// their keys on disk so compaction does not rewrite them).
    pub const fn holds_large_values(self) -> bool {
        matches!(self, Space::Blobs)
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Scan direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Smallest key first.
    Ascending,
    /// Largest key first.
    Descending,
}

/// A range of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// Lower bound.
    pub start: Bound<Vec<u8>>,
    /// Upper bound.
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        KeyRange { start: Bound::Unbounded, end: Bound::Unbounded }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        let end = match key::prefix_successor(prefix) {
            Some(s) => Bound::Excluded(s),
            None => Bound::Unbounded,
        };
        KeyRange { start: Bound::Included(prefix.to_vec()), end }
    }

    /// Keys in `[start, end)`.
    pub fn between(start: Vec<u8>, end: Vec<u8>) -> Self {
        KeyRange { start: Bound::Included(start), end: Bound::Excluded(end) }
    }

    /// Whether `k` lies in the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        let above = match &self.start {
            Bound::Included(s) => k >= s.as_slice(),
            Bound::Excluded(s) => k > s.as_slice(),
            Bound::Unbounded => true,
        };
        let below = match &self.end {
            Bound::Included(e) => k <= e.as_slice(),
            Bound::Excluded(e) => k < e.as_slice(),
            Bound::Unbounded => true,
        };
        above && below
    }

    /// The part of this range strictly after `k` (ascending) or strictly
    /// before it (descending): how callers page through a long scan.
    pub fn after(&self, k: &[u8], order: Order) -> Self {
        let mut r = self.clone();
        match order {
            Order::Ascending => r.start = Bound::Excluded(k.to_vec()),
            Order::Descending => r.end = Bound::Excluded(k.to_vec()),
        }
        r
    }
}

/// Storage failures. None of them is the caller's fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend reported an I/O or engine error. After a failed fsync the
    /// store refuses further writes (the page cache can no longer be trusted).
    #[error("storage failure: {0}")]
    Backend(String),
    /// Stored bytes do not decode: a bug or a damaged disk.
    #[error("corrupt record in {space:?}: {detail}")]
    Corrupt {
        /// Where.
        space: Space,
        /// What.
        detail: String,
    },
    /// The store was written by a newer or unknown version of Quail.
    #[error(
        "store format {found} was written by a newer Quail (this build reads formats up to \
         {supported}); run that newer quaild, or restore the backup taken before the upgrade"
    )]
    UnsupportedFormat {
        /// On disk.
        found: u32,
        /// Newest this build knows.
        supported: u32,
    },
    /// A key that no backend may hold: empty, or longer than [`MAX_KEY_BYTES`].
    /// Always a caller bug; the transaction is not applied.
    #[error("invalid key of {len} bytes in {space:?}")]
    InvalidKey {
        /// Where.
        space: Space,
        /// Its length.
        len: usize,
    },
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
    /// The transaction closure gave up; carries no information of its own
    /// (the caller's error travels beside it, see [`Db::write`]).
    #[error("transaction aborted")]
    Aborted,
}

/// Longest key any backend accepts.
pub const MAX_KEY_BYTES: usize = 4096;

/// Result alias for storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// A committed batch's place in the journal; durable once [`Store::sync`]
/// says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// Counts that tests and operators read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// Transactions committed (each one atomic batch).
    pub commits: u64,
    /// Journal fsyncs performed by the group committer.
    pub fsyncs: u64,
    /// Every commit up to this ticket is durable.
    pub durable: u64,
}

/// Reads: point lookups and bounded scans.
pub trait Reader {
    /// The value under `key`, if any.
    fn get(&self, space: Space, key: &[u8]) -> StoreResult<Option<Vec<u8>>>;

    /// Up to `limit` entries in `range`, in `order`.
    fn scan(
        &self,
        space: Space,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Calls `f` with every entry in `range`, in `order`, until it returns
    /// `false`. By default a page of [`SCAN_PAGE`] entries at a time, each
    /// copied; a backend that can lend its entries while it iterates
    /// overrides it.
    fn visit(&self, space: Space, range: &KeyRange, order: Order, f: &mut Visitor<'_>) -> StoreResult<()> {
        let mut r = range.clone();
        loop {
            let rows = self.scan(space, &r, order, SCAN_PAGE)?;
            for (k, v) in &rows {
                if !f(k, v)? {
                    return Ok(());
                }
            }
            match rows.last() {
                Some((last, _)) if rows.len() == SCAN_PAGE => r = r.after(last, order),
                _ => return Ok(()),
            }
        }
    }
}

/// Entries a paged [`Reader::visit`] reads at a time.
pub const SCAN_PAGE: usize = 1024;

/// What [`Reader::visit`] calls with each entry (key, value); `false`
/// stops the visit.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> StoreResult<bool> + 'a;

/// A boxed future, as the object-safe [`Store`] returns them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The storage engine behind the server (see the module docs for the
/// durability contract).
pub trait Store: Reader + Send + Sync + fmt::Debug {
    /// Runs `f` as one atomic transaction and appends its writes to the
    /// journal. `f` may run more than once (a backend may retry on a
    /// conflict), so it must not have effects outside the [`Txn`].
    fn commit(&self, f: &mut dyn FnMut(&mut Txn<'_>) -> StoreResult<()>) -> StoreResult<Ticket>;

    /// Resolves once `ticket` and everything before it is durable.
    fn sync(&self, ticket: Ticket) -> BoxFuture<'_, StoreResult<()>>;

    /// Blocking form of [`Store::sync`] for non-async callers (tools, tests).
    fn sync_blocking(&self, ticket: Ticket) -> StoreResult<()>;

    /// Counters for tests and operators.
    fn metrics(&self) -> StoreMetrics;

    /// Declares that a commit is being prepared, so the group committer can
    /// wait a moment for it (see [`COMMIT_DELAY`]).
    fn intent(&self) -> Intent;

    /// The newest durable state, frozen: every read of it sees the same data.
    fn snapshot(&self) -> Snapshot;
}

/// A frozen, durable view of the store (see the module docs).
pub struct Snapshot {
    reader: Box<dyn Reader + Send + Sync>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Wraps a backend's frozen reader.
    pub fn new(reader: Box<dyn Reader + Send + Sync>) -> Self {
        Snapshot { reader }
    }

    /// Counter read (absent = 0).
    pub fn counter(&self, space: Space, key: &[u8]) -> StoreResult<i64> {
        decode_counter(space, self.reader.get(space, key)?)
    }

    /// Calls `f` on every entry of `range` in `order` (see [`Db::scan_all`]).
    pub fn scan_all<E>(
        &self,
        space: Space,
        range: &KeyRange,
        order: Order,
        f: impl FnMut(&[u8], &[u8]) -> Result<bool, E>,
    ) -> Result<(), E>
    where
        E: From<StoreError>,
    {
        scan_all(self.reader.as_ref(), space, range, order, f)
    }
}

impl Reader for Snapshot {
    fn get(&self, space: Space, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        self.reader.get(space, key)
    }

    fn scan(
        &self,
        space: Space,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        self.reader.scan(space, range, order, limit)
    }

    fn visit(&self, space: Space, range: &KeyRange, order: Order, f: &mut Visitor<'_>) -> StoreResult<()> {
        self.reader.visit(space, range, order, f)
    }
}

/// Walks `range`, calling `f` until it returns `false` (see
/// [`Reader::visit`]).
fn scan_all<E>(
    reader: &dyn Reader,
    space: Space,
    range: &KeyRange,
    order: Order,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, E>,
) -> Result<(), E>
where
    E: From<StoreError>,
{
    // The caller's error stops the visit and is handed back as it was.
    let mut failed = None;
    reader.visit(space, range, order, &mut |k, v| match f(k, v) {
        Ok(more) => Ok(more),
        Err(e) => {
            failed = Some(e);
            Ok(false)
        }
    })?;
    failed.map_or(Ok(()), Err)
}

/// A transaction's pending writes: `None` deletes.
pub type Writes = BTreeMap<(Space, Vec<u8>), Option<bytes::Bytes>>;

/// One transaction: reads see the store plus this transaction's own writes
/// (point reads only; scans see the store as it was when the transaction
/// began). Writes apply atomically at the end.
pub struct Txn<'a> {
    reader: &'a dyn Reader,
    writes: Writes,
    notices: Vec<Notice>,
}

impl fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Txn").field("writes", &self.writes.len()).finish()
    }
}

impl<'a> Txn<'a> {
    /// A transaction reading through `reader`. Backends create these.
    pub fn new(reader: &'a dyn Reader) -> Self {
        Txn { reader, writes: BTreeMap::new(), notices: Vec::new() }
    }

    /// The value under `key`, including this transaction's writes.
    pub fn get(&self, space: Space, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        match self.writes.get(&(space, key.to_vec())) {
            Some(v) => Ok(v.as_ref().map(|b| b.to_vec())),
            None => self.reader.get(space, key),
        }
    }

    /// Whether `key` has a value.
    pub fn exists(&self, space: Space, key: &[u8]) -> StoreResult<bool> {
        Ok(self.get(space, key)?.is_some())
    }

    /// Up to `limit` entries in `range`, including this transaction's own
    /// writes (puts seen, deletes hidden).
    pub fn scan(
        &self,
        space: Space,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let overlay: Vec<(&Vec<u8>, &Option<bytes::Bytes>)> = self
            .writes
            .range((space, Vec::new())..)
            .take_while(|((s, _), _)| *s == space)
            .filter(|((_, k), _)| range.contains(k))
            .map(|((_, k), v)| (k, v))
            .collect();
        if overlay.is_empty() {
            return self.reader.scan(space, range, order, limit);
        }
        // The overlay can hide at most overlay.len() committed rows.
        let committed = self.reader.scan(space, range, order, limit.saturating_add(overlay.len()))?;
        let complete = committed.len() < limit.saturating_add(overlay.len());
        let boundary = committed.last().map(|(k, _)| k.clone());
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = committed.into_iter().collect();
        for (k, v) in overlay {
            // Overlay keys past the last committed row fetched only count
            // when the committed scan reached the end of the range.
            let within = complete
                || boundary.as_ref().is_some_and(|b| match order {
                    Order::Ascending => k <= b,
                    Order::Descending => k >= b,
                });
            if !within {
                continue;
            }
            match v {
                Some(v) => {
                    merged.insert(k.clone(), v.to_vec());
                }
                None => {
                    merged.remove(k);
                }
            }
        }
        let rows: Vec<(Vec<u8>, Vec<u8>)> = match order {
            Order::Ascending => merged.into_iter().take(limit).collect(),
            Order::Descending => merged.into_iter().rev().take(limit).collect(),
        };
        Ok(rows)
    }

    /// A scan of the store as it was before this transaction's writes.
    pub fn scan_committed(
        &self,
        space: Space,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        self.reader.scan(space, range, order, limit)
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, space: Space, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.insert((space, key.into()), Some(bytes::Bytes::from(value.into())));
    }

    /// [`Txn::put`] of a value shared with the caller (large blobs): the
    /// transaction holds it without a copy.
    pub fn put_shared(&mut self, space: Space, key: impl Into<Vec<u8>>, value: bytes::Bytes) {
        self.writes.insert((space, key.into()), Some(value));
    }

    /// Removes `key`.
    pub fn delete(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.writes.insert((space, key.into()), None);
    }

    /// Adds `delta` to the counter under `key` (absent = 0) and returns the
    /// new value. A counter that reaches 0 is removed.
    pub fn add(&mut self, space: Space, key: &[u8], delta: i64) -> StoreResult<i64> {
        let current = self.counter(space, key)?;
        let next = current.saturating_add(delta);
        if next == 0 {
            self.delete(space, key);
        } else {
            self.put(space, key, next.to_be_bytes());
        }
        Ok(next)
    }

    /// The next value of the id sequence `name` (1, 2, 3, ...). Ids come
    /// from the transaction that uses them, so a crash never reuses one.
    pub fn next_id(&mut self, name: &str) -> StoreResult<u64> {
        let key = [b"seq/".as_slice(), name.as_bytes()].concat();
        let next = self.add(Space::Meta, &key, 1)?;
        u64::try_from(next).map_err(|_| StoreError::Corrupt {
            space: Space::Meta,
            detail: format!("sequence {name} at {next}"),
        })
    }

    /// The counter under `key` (absent = 0).
    pub fn counter(&self, space: Space, key: &[u8]) -> StoreResult<i64> {
        decode_counter(space, self.get(space, key)?)
    }

    /// Says who must hear of this transaction once it is durable (see
    /// [`Db::observe`]).
    pub fn notify(&mut self, notice: Notice) {
        self.notices.push(notice);
    }

    /// The pending writes, for the backend to apply; refuses keys no
    /// backend can hold.
    pub fn into_writes(self) -> StoreResult<Writes> {
        if let Some((space, key)) = self.writes.keys().find(|(_, k)| k.is_empty() || k.len() > MAX_KEY_BYTES)
        {
            return Err(StoreError::InvalidKey { space: *space, len: key.len() });
        }
        Ok(self.writes)
    }
}

/// Decodes a counter value (absent = 0).
pub fn decode_counter(space: Space, value: Option<Vec<u8>>) -> StoreResult<i64> {
    match value {
        None => Ok(0),
        Some(v) => {
            let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                space,
                detail: format!("counter of {} bytes", v.len()),
            })?;
            Ok(i64::from_be_bytes(bytes))
        }
    }
}

/// What a committed transaction tells observers once it is durable: an
/// account's new state and which kinds of object changed (a bit per kind,
/// as the sync layer numbers them). Opaque to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    /// The account.
    pub account: u64,
    /// Its state after the transaction.
    pub state: u64,
    /// Bit `k` set when kind `k` changed.
    pub kinds: u8,
}

/// Who hears of durable commits.
pub type Observer = Arc<dyn Fn(&[Notice]) + Send + Sync>;

/// Notices of commits not yet known durable, and who hears of them.
#[derive(Default)]
struct Feed {
    staged: Mutex<Vec<(Ticket, Notice)>>,
    observer: std::sync::OnceLock<Observer>,
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed").finish_non_exhaustive()
    }
}

/// The handle the rest of the server holds: a shared [`Store`] with typed
/// helpers on top.
#[derive(Debug, Clone)]
pub struct Db {
    store: Arc<dyn Store>,
    feed: Arc<Feed>,
}

impl Db {
    /// Wraps a backend.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Db { store, feed: Arc::default() }
    }

    /// Sets who hears of durable commits: after a [`Db::sync`] returns,
    /// `observer` gets the notices of every transaction that sync covers,
    /// never before. Set once (a later call is ignored).
    pub fn observe(&self, observer: Observer) {
        let _ = self.feed.observer.set(observer);
    }

    fn stage(&self, ticket: Ticket, notices: Vec<Notice>) {
        if notices.is_empty() || self.feed.observer.get().is_none() {
            return;
        }
        let mut staged = self.feed.staged.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        staged.extend(notices.into_iter().map(|n| (ticket, n)));
    }

    /// Hands the notices of every commit up to `ticket` (now durable) to
    /// the observer.
    fn release(&self, ticket: Ticket) {
        let Some(observer) = self.feed.observer.get() else {
            return;
        };
        let ready: Vec<Notice> = {
            let mut staged = self.feed.staged.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if staged.is_empty() {
                return;
            }
            let (ready, later): (Vec<_>, Vec<_>) = staged.drain(..).partition(|(t, _)| *t <= ticket);
            *staged = later;
            ready.into_iter().map(|(_, n)| n).collect()
        };
        if !ready.is_empty() {
            observer(&ready);
        }
    }

    /// The backend.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Point read.
    pub fn get(&self, space: Space, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        self.store.get(space, key)
    }

    /// Bounded scan.
    pub fn scan(
        &self,
        space: Space,
        range: &KeyRange,
        order: Order,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        self.store.scan(space, range, order, limit)
    }

    /// Calls `f` on every entry of `range` in `order`, reading in chunks so
    /// any range can be walked; `f` returns `false` to stop. Each chunk is
    /// read from the newest durable state; use [`Db::snapshot`] for one view.
    pub fn scan_all<E>(
        &self,
        space: Space,
        range: &KeyRange,
        order: Order,
        f: impl FnMut(&[u8], &[u8]) -> Result<bool, E>,
    ) -> Result<(), E>
    where
        E: From<StoreError>,
    {
        scan_all(self.store.as_ref(), space, range, order, f)
    }

    /// One frozen, durable view for reads that must agree with each other.
    pub fn snapshot(&self) -> Snapshot {
        self.store.snapshot()
    }

    /// Counter read (absent = 0).
    pub fn counter(&self, space: Space, key: &[u8]) -> StoreResult<i64> {
        decode_counter(space, self.store.get(space, key)?)
    }

    /// Runs `f` as one atomic transaction; returns its value and the ticket
    /// to wait on. The writes are visible but not yet durable.
    pub fn write<T, E>(&self, mut f: impl FnMut(&mut Txn<'_>) -> Result<T, E>) -> Result<(T, Ticket), E>
    where
        E: From<StoreError>,
    {
        let mut out: Option<Result<T, E>> = None;
        let mut notices = Vec::new();
        let committed = self.store.commit(&mut |txn| match f(txn) {
            Ok(v) => {
                out = Some(Ok(v));
                notices = std::mem::take(&mut txn.notices);
                Ok(())
            }
            Err(e) => {
                out = Some(Err(e));
                Err(StoreError::Aborted)
            }
        });
        match (committed, out) {
            (Ok(ticket), Some(Ok(v))) => {
                self.stage(ticket, notices);
                Ok((v, ticket))
            }
            (Err(StoreError::Aborted), Some(Err(e))) => Err(e),
            (Err(e), _) => Err(e.into()),
            // A backend never reports success without running the closure.
            (Ok(_), _) => Err(StoreError::Backend("commit without transaction".into()).into()),
        }
    }

    /// [`Db::write`] and then wait until it is durable.
    pub async fn write_durable<T, E>(&self, f: impl FnMut(&mut Txn<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let (value, ticket) = self.write(f)?;
        self.sync(ticket).await?;
        Ok(value)
    }

    /// Waits until `ticket` is durable, then tells the observer.
    pub async fn sync(&self, ticket: Ticket) -> StoreResult<()> {
        self.store.sync(ticket).await?;
        self.release(ticket);
        Ok(())
    }

    /// [`Db::sync`] for threads that may block.
    pub fn sync_blocking(&self, ticket: Ticket) -> StoreResult<()> {
        self.store.sync_blocking(ticket)?;
        self.release(ticket);
        Ok(())
    }

    /// Declares a commit in preparation (hold it until `write` returns).
    pub fn intent(&self) -> Intent {
        self.store.intent()
    }

    /// Backend counters.
    pub fn metrics(&self) -> StoreMetrics {
        self.store.metrics()
    }
}
