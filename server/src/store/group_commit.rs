//! Group commit: one fsync acknowledges every writer waiting for it.
//!
//! Writers call [`GroupCommit::applied`] (under the store's writer lock, after
//! their batch is in the journal) to get a ticket, then wait on it. A single
//! thread loops: when some ticket is wanted and not yet durable, it takes the
//! newest applied ticket as its target, fsyncs once, and publishes that every
//! ticket up to the target is durable. Writers that apply while an fsync runs
//! are covered by the next one, so under load one fsync serves many writers
//! with no added delay when idle.
//!
//! When the store is busy — commits arrived while the last fsync ran, or
//! writers declared an [`Intent`] (a commit being prepared, e.g. a message
//! being parsed) — the committer gathers for a moment before it fsyncs: until
//! arrivals pause, at most [`COMMIT_DELAY`]. So a burst of writers shares
//! fsyncs even when an fsync is fast (PostgreSQL's `commit_delay` with
//! `commit_siblings`, in spirit). An idle store fsyncs at once: a lone writer
//! never waits.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{StoreError, StoreResult, Ticket};

/// The fsync the committer runs; backends supply it.
pub(crate) type SyncFn = Box<dyn FnMut() -> Result<(), String> + Send>;

#[derive(Debug, Default)]
struct Pending {
    /// Newest ticket whose batch is in the journal.
    applied: u64,
    /// Newest ticket some writer waits for.
    wanted: u64,
    /// Set on shutdown.
    closing: bool,
    /// Mirror of [`Durable`] for blocking waiters.
    durable: Durable,
}

#[derive(Debug, Clone, Default)]
struct Durable {
    /// Every ticket up to here is durable.
    upto: u64,
    /// Set when an fsync failed; the store accepts no more writes.
    failed: Option<String>,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    done: Condvar,
    durable: watch::Sender<Durable>,
    fsyncs: AtomicU64,
    intents: AtomicUsize,
}

/// Longest the committer gathers commits before an fsync under load.
pub const COMMIT_DELAY: Duration = Duration::from_millis(1);
/// A gap in arrivals this long ends the gathering early.
const QUIET: Duration = Duration::from_micros(100);

/// A writer's declaration that a commit is coming; dropping it withdraws it.
#[derive(Debug)]
pub struct Intent {
    shared: Option<Arc<Shared>>,
}

impl Intent {
    /// An intent that delays nothing (backends without group commit).
    pub fn none() -> Self {
        Intent { shared: None }
    }
}

impl Drop for Intent {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            s.intents.fetch_sub(1, Ordering::AcqRel);
            s.wake.notify_one();
        }
    }
}

/// The group committer of one store.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    /// Starts the committer thread, which calls `sync` to make the journal durable.
    pub(crate) fn start(sync: SyncFn) -> StoreResult<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
            durable: watch::Sender::new(Durable::default()),
            fsyncs: AtomicU64::new(0),
            intents: AtomicUsize::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("quail-group-commit".into())
            .spawn(move || run(&thread_shared, sync))
            .map_err(|e| StoreError::Backend(format!("starting group commit thread: {e}")))?;
        Ok(GroupCommit { shared, thread: Mutex::new(Some(thread)) })
    }

    /// Records that one more batch is in the journal and returns its ticket.
    /// Call it while holding the writer lock so tickets follow journal order.
    pub(crate) fn applied(&self) -> StoreResult<Ticket> {
        let mut p = lock(&self.shared.pending);
        if let Some(reason) = &p.durable.failed {
            return Err(StoreError::Backend(format!("journal sync failed earlier: {reason}")));
        }
        if p.closing {
            return Err(StoreError::Closed);
        }
        p.applied += 1;
        self.shared.wake.notify_one();
        Ok(Ticket(p.applied))
    }

    /// Declares that a commit is being prepared.
    pub(crate) fn intent(&self) -> Intent {
        self.shared.intents.fetch_add(1, Ordering::AcqRel);
        Intent { shared: Some(Arc::clone(&self.shared)) }
    }

    /// Waits until `ticket` is durable.
    pub(crate) async fn wait(&self, ticket: Ticket) -> StoreResult<()> {
        let mut rx = self.shared.durable.subscribe();
        self.want(ticket);
        let state = rx
            .wait_for(|d| d.upto >= ticket.0 || d.failed.is_some())
            .await
            .map_err(|_| StoreError::Closed)?;
        check(&state, ticket)
    }

    /// Blocking form of [`GroupCommit::wait`].
    pub(crate) fn wait_blocking(&self, ticket: Ticket) -> StoreResult<()> {
        self.want(ticket);
        let mut p = lock(&self.shared.pending);
        while p.durable.upto < ticket.0 && p.durable.failed.is_none() {
            if p.closing && p.applied <= p.durable.upto {
                return Err(StoreError::Closed);
            }
            p = self.shared.done.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
        check(&p.durable, ticket)
    }

    fn want(&self, ticket: Ticket) {
        let mut p = lock(&self.shared.pending);
        if p.wanted < ticket.0 {
            p.wanted = ticket.0;
            self.shared.wake.notify_one();
        }
    }

    /// The newest durable ticket.
    pub(crate) fn durable(&self) -> u64 {
        lock(&self.shared.pending).durable.upto
    }

    /// Fsyncs performed so far.
    pub(crate) fn fsyncs(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }

    /// Makes everything applied durable and stops the thread.
    pub(crate) fn shutdown(&self) {
        {
            let mut p = lock(&self.shared.pending);
            p.closing = true;
            p.wanted = p.applied;
            self.shared.wake.notify_one();
        }
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn check(state: &Durable, ticket: Ticket) -> StoreResult<()> {
    if state.upto >= ticket.0 {
        Ok(())
    } else {
        let reason = state.failed.clone().unwrap_or_default();
        Err(StoreError::Backend(format!("journal sync failed: {reason}")))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves only counters behind, which
    // stay consistent; carry on rather than poison every writer.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn run(shared: &Shared, mut sync: SyncFn) {
    let mut durable = 0u64;
    // Whether commits arrived while the last fsync ran (the store is busy).
    let mut busy = false;
    loop {
        let target = {
            let mut p = lock(&shared.pending);
            while p.wanted <= durable && !p.closing {
                p = shared.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
            }
            if p.closing && p.applied <= durable {
                shared.done.notify_all();
                return;
            }
            // Under load (commits arrived during the last fsync) or while
            // writers are preparing commits, gather for a moment: until no
            // commit has arrived for QUIET, at most COMMIT_DELAY. An idle
            // store fsyncs at once.
            if busy || shared.intents.load(Ordering::Acquire) > 0 {
                let since = Instant::now();
                let mut seen = p.applied;
                let mut quiet_since = since;
                while !p.closing {
                    let Some(left) = COMMIT_DELAY.checked_sub(since.elapsed()) else { break };
                    if p.applied != seen {
                        seen = p.applied;
                        quiet_since = Instant::now();
                    } else if quiet_since.elapsed() >= QUIET && shared.intents.load(Ordering::Acquire) == 0 {
                        break;
                    }
                    let nap = left.min(QUIET);
                    p = shared.wake.wait_timeout(p, nap).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
                }
            }
            p.applied
        };
        let result = sync();
        shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        let failed = result.is_err();
        let state = {
            let mut p = lock(&shared.pending);
            busy = p.applied > target;
            match result {
                Ok(()) => {
                    durable = target;
                    p.durable.upto = target;
                }
                Err(reason) => {
                    tracing::error!(%reason, "journal fsync failed; refusing further writes");
                    p.durable.failed = Some(reason);
                }
            }
            shared.done.notify_all();
            p.durable.clone()
        };
        shared.durable.send_replace(state);
        if failed {
            return;
        }
    }
}
