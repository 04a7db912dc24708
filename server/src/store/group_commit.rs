//! Group commit: one fsync acknowledges every writer waiting for it.
//!
//! Writers call [`GroupCommit::applied`] (under the store's writer lock, after
//! their batch is in the journal) to get a ticket, then wait on it. A single
//! thread loops: when some applied ticket is not yet durable, it takes the
//! newest applied ticket as its target, fsyncs once (the backend's sync
//! function also publishes the snapshot readers see), and then tells every
//! writer up to the target that it is durable. Writers that apply while an fsync runs
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

/// Holds back a store's fsyncs while held: how tests see what readers and
/// writers observe between a commit and its durability (a power-loss test
/// then "reboots" a [`super::MemStore`] to its durable image). Open unless
/// [`SyncGate::hold`] was called; cloning shares the gate.
#[derive(Debug, Clone, Default)]
pub struct SyncGate {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl SyncGate {
    /// A gate that lets every fsync through.
    pub fn new() -> Self {
        SyncGate::default()
    }

    /// Blocks every fsync from now on until [`SyncGate::release`].
    pub fn hold(&self) {
        *lock(&self.inner.0) = true;
    }

    /// Lets fsyncs run again.
    pub fn release(&self) {
        *lock(&self.inner.0) = false;
        self.inner.1.notify_all();
    }

    /// Waits while the gate is held.
    pub(crate) fn pass(&self) {
        let mut held = lock(&self.inner.0);
        while *held {
            held = self.inner.1.wait(held).unwrap_or_else(PoisonError::into_inner);
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
        let state = rx
            .wait_for(|d| d.upto >= ticket.0 || d.failed.is_some())
            .await
            .map_err(|_| StoreError::Closed)?;
        check(&state, ticket)
    }

    /// Blocking form of [`GroupCommit::wait`].
    pub(crate) fn wait_blocking(&self, ticket: Ticket) -> StoreResult<()> {
        let mut p = lock(&self.shared.pending);
        while p.durable.upto < ticket.0 && p.durable.failed.is_none() {
            if p.closing && p.applied <= p.durable.upto {
                return Err(StoreError::Closed);
            }
            p = self.shared.done.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
        check(&p.durable, ticket)
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
            while p.applied <= durable && !p.closing {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;

    /// A sync function the test drives: each call reports itself and waits
    /// for the test's verdict.
    fn scripted() -> (SyncFn, mpsc::Receiver<()>, mpsc::Sender<Result<(), String>>) {
        let (called_tx, called_rx) = mpsc::channel();
        let (verdict_tx, verdict_rx) = mpsc::channel::<Result<(), String>>();
        let verdicts = Mutex::new(verdict_rx);
        let f: SyncFn = Box::new(move || {
            let _ = called_tx.send(());
            lock(&verdicts).recv().unwrap_or(Err("test ended".into()))
        });
        (f, called_rx, verdict_tx)
    }

    #[test]
    fn writers_are_acknowledged_only_after_their_sync_returned() {
        let (f, called, verdict) = scripted();
        let g = Arc::new(GroupCommit::start(f).expect("start"));
        let t = g.applied().expect("ticket");
        let acked = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (g, acked) = (Arc::clone(&g), Arc::clone(&acked));
            std::thread::spawn(move || {
                let r = g.wait_blocking(t);
                acked.store(true, Ordering::SeqCst);
                r
            })
        };
        called.recv().expect("the committer syncs");
        std::thread::sleep(Duration::from_millis(50));
        assert!(!acked.load(Ordering::SeqCst), "acknowledged while its fsync was still running");
        verdict.send(Ok(())).expect("verdict");
        waiter.join().expect("join").expect("durable");
        assert!(acked.load(Ordering::SeqCst));
        assert_eq!(g.durable(), t.0);
        drop(verdict);
    }

    #[test]
    fn writers_that_arrive_during_a_sync_share_the_next_one() {
        let (f, called, verdict) = scripted();
        let g = Arc::new(GroupCommit::start(f).expect("start"));
        let first = g.applied().expect("ticket");
        called.recv().expect("first sync starts");
        // Eight writers commit while the first fsync runs.
        let tickets: Vec<Ticket> = (0..8).map(|_| g.applied().expect("ticket")).collect();
        let waiters: Vec<_> = tickets
            .iter()
            .map(|t| {
                let (g, t) = (Arc::clone(&g), *t);
                std::thread::spawn(move || g.wait_blocking(t))
            })
            .collect();
        verdict.send(Ok(())).expect("first verdict");
        g.wait_blocking(first).expect("first durable");
        called.recv().expect("second sync starts");
        verdict.send(Ok(())).expect("second verdict");
        for w in waiters {
            w.join().expect("join").expect("durable");
        }
        assert_eq!(g.fsyncs(), 2, "nine writers, two fsyncs");
        drop(verdict);
    }

    #[test]
    fn a_failed_fsync_refuses_every_later_write() {
        let (f, called, verdict) = scripted();
        let g = GroupCommit::start(f).expect("start");
        let t = g.applied().expect("ticket");
        called.recv().expect("sync starts");
        verdict.send(Err("EIO".into())).expect("verdict");
        let err = g.wait_blocking(t).expect_err("its sync failed");
        assert!(err.to_string().contains("EIO"), "{err}");
        for _ in 0..3 {
            let e = g.applied().expect_err("no write after a failed fsync");
            assert!(e.to_string().contains("sync failed"), "{e}");
        }
        drop(verdict);
    }

    #[test]
    fn a_held_gate_holds_the_fsync_back() {
        let gate = SyncGate::new();
        gate.hold();
        let synced = Arc::new(AtomicU64::new(0));
        let (gate2, synced2) = (gate.clone(), Arc::clone(&synced));
        let g = GroupCommit::start(Box::new(move || {
            gate2.pass();
            synced2.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }))
        .expect("start");
        let t = g.applied().expect("ticket");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(synced.load(Ordering::SeqCst), 0);
        assert_eq!(g.durable(), 0);
        gate.release();
        g.wait_blocking(t).expect("durable");
        assert_eq!(synced.load(Ordering::SeqCst), 1);
    }
}
