//! Push: telling watching clients that their account changed.
//!
//! The [`Hub`] is `Send + Sync` and shared by every connection. The store
//! hands it the notices of each transaction after that transaction's fsync
//! returned (see `Db::observe`), so no client ever hears of a change a
//! power loss could take back. The hub keeps one [`Pulse`] per watched
//! account in a `tokio::sync::watch` channel: publishing overwrites it, so
//! ingest never waits for a listener and the hub's memory is one pulse per
//! watched account, however slow the listeners.
//!
//! Each watch then runs as a task on its connection's worker, driving a
//! [`Coalescer`]: a sans-IO state machine (pulses, acknowledgements and
//! `now` in; calls to make out) that keeps at most one call in flight per
//! listener, merges everything that happens meanwhile into the next call,
//! and gives a listener up when it does not answer in time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{KINDS, Kind, State};
use crate::account::AccountId;
use crate::store::Notice;

/// What a watcher knows of its account: the newest durable state, and for
/// each kind the newest state at which it changed. Later pulses supersede
/// earlier ones, which is what lets the hub keep only the last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pulse {
    /// The account's newest durable state.
    pub state: u64,
    /// Indexed by `Kind as usize`: when that kind last changed.
    pub changed_at: [u64; KINDS.len()],
}

impl Pulse {
    fn absorb(&mut self, n: &Notice) {
        if n.state <= self.state {
            return;
        }
        self.state = n.state;
        for k in KINDS {
            if n.kinds & (1 << k as u8) != 0 {
                self.changed_at[k as usize] = n.state;
            }
        }
    }

    fn merge(&mut self, other: &Pulse) {
        self.state = self.state.max(other.state);
        for (a, b) in self.changed_at.iter_mut().zip(other.changed_at) {
            *a = (*a).max(b);
        }
    }

    /// The kinds that changed after `since`.
    pub fn kinds_after(&self, since: u64) -> Vec<Kind> {
        KINDS.into_iter().filter(|k| self.changed_at[*k as usize] > since).collect()
    }
}

/// The shared fan-out point.
#[derive(Debug, Default)]
pub struct Hub {
    feeds: Mutex<HashMap<AccountId, watch::Sender<Pulse>>>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Arc<Self> {
        Arc::new(Hub::default())
    }

    /// Starts listening to `account`. Subscribe first, then read the
    /// state to start from: a change durable before the read is in it,
    /// one after it arrives as a pulse.
    pub fn subscribe(self: &Arc<Self>, account: AccountId) -> Subscription {
        let mut feeds = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        let rx = feeds.entry(account).or_insert_with(|| watch::Sender::new(Pulse::default())).subscribe();
        Subscription { hub: Arc::clone(self), account, rx }
    }

    /// Hands durable notices to the watchers of their accounts.
    pub fn publish(&self, notices: &[Notice]) {
        let feeds = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        if feeds.is_empty() {
            return;
        }
        for n in notices {
            if let Some(tx) = feeds.get(&AccountId(n.account)) {
                tx.send_if_modified(|p| {
                    let before = *p;
                    p.absorb(n);
                    *p != before
                });
            }
        }
    }

    /// Accounts with at least one watcher.
    pub fn watched_accounts(&self) -> usize {
        self.feeds.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// One watcher's end of the hub; unsubscribes on drop.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    account: AccountId,
    rx: watch::Receiver<Pulse>,
}

impl Subscription {
    /// Waits for a pulse newer than the last one taken, and takes it.
    /// `None` once the hub is gone.
    pub async fn next(&mut self) -> Option<Pulse> {
        self.rx.changed().await.ok()?;
        Some(*self.rx.borrow_and_update())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut feeds = self.hub.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        // This receiver still counts until it is dropped after us.
        if feeds.get(&self.account).is_some_and(|tx| tx.receiver_count() <= 1) {
            feeds.remove(&self.account);
        }
    }
}

/// One call to make to a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The account's new state.
    pub state: State,
    /// What changed since the previous call.
    pub kinds: Vec<Kind>,
}

/// What the watch's task should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Call the listener with this, then report [`Coalescer::answered`].
    Call(Push),
    /// Nothing to do; wait for a pulse or an answer, or until the deadline.
    Wait(Option<Instant>),
    /// The listener did not answer in time, or failed: end the watch.
    GiveUp,
}

/// At most one call in flight per listener; changes that arrive meanwhile
/// are merged into the next call. Sans-IO: the task feeds it and does what
/// [`Coalescer::step`] says.
#[derive(Debug)]
pub struct Coalescer {
    /// The state the listener was last told of (or is being told of).
    told: u64,
    latest: Pulse,
    in_flight: Option<Instant>,
    answer_timeout: Duration,
    failed: bool,
}

impl Coalescer {
    /// A listener that knows the account up to `start`, and must answer
    /// each call within `answer_timeout`.
    pub fn new(start: State, answer_timeout: Duration) -> Self {
        Coalescer {
            told: start.0,
            latest: Pulse { state: start.0, changed_at: [0; KINDS.len()] },
            in_flight: None,
            answer_timeout,
            failed: false,
        }
    }

    /// A pulse from the hub.
    pub fn pulse(&mut self, p: &Pulse) {
        self.latest.merge(p);
    }

    /// The call in flight was answered (`ok`) or failed.
    pub fn answered(&mut self, ok: bool) {
        self.in_flight = None;
        if !ok {
            self.failed = true;
        }
    }

    /// What to do now.
    pub fn step(&mut self, now: Instant) -> Step {
        if self.failed {
            return Step::GiveUp;
        }
        if let Some(since) = self.in_flight {
            let deadline = since + self.answer_timeout;
            return if now >= deadline { Step::GiveUp } else { Step::Wait(Some(deadline)) };
        }
        if self.latest.state <= self.told {
            return Step::Wait(None);
        }
        let push = Push { state: State(self.latest.state), kinds: self.latest.kinds_after(self.told) };
        self.told = self.latest.state;
        self.in_flight = Some(now);
        Step::Call(push)
    }

    /// Whether a call is in flight.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulse(state: u64, kinds: &[Kind]) -> Pulse {
        let mut p = Pulse { state, changed_at: [0; KINDS.len()] };
        for k in kinds {
            p.changed_at[*k as usize] = state;
        }
        p
    }

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn one_call_in_flight_and_the_rest_merged_into_the_next() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(State(10), T);
        assert_eq!(c.step(t0), Step::Wait(None));
        c.pulse(&pulse(11, &[Kind::Email]));
        assert_eq!(c.step(t0), Step::Call(Push { state: State(11), kinds: vec![Kind::Email] }));
        // While that call is out, three more commits arrive.
        c.pulse(&pulse(12, &[Kind::Mailbox]));
        let mut p = pulse(14, &[Kind::Email]);
        p.changed_at[Kind::Mailbox as usize] = 12;
        c.pulse(&p);
        let t1 = t0 + Duration::from_millis(5);
        assert_eq!(c.step(t1), Step::Wait(Some(t0 + T)), "nothing until the first call is answered");
        c.answered(true);
        assert_eq!(
            c.step(t1),
            Step::Call(Push { state: State(14), kinds: vec![Kind::Email, Kind::Mailbox] }),
            "one call carries everything since"
        );
        c.answered(true);
        assert_eq!(c.step(t1), Step::Wait(None));
    }

    #[test]
    fn old_and_repeated_pulses_call_nobody() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(State(20), T);
        c.pulse(&pulse(15, &[Kind::Email]));
        assert_eq!(c.step(t0), Step::Wait(None), "a state the listener started from");
        c.pulse(&pulse(21, &[Kind::Thread]));
        assert!(matches!(c.step(t0), Step::Call(_)));
        c.answered(true);
        c.pulse(&pulse(21, &[Kind::Thread]));
        assert_eq!(c.step(t0), Step::Wait(None));
    }

    #[test]
    fn a_listener_that_never_answers_is_given_up_and_holds_nothing_meanwhile() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(State(0), T);
        c.pulse(&pulse(1, &[Kind::Email]));
        assert!(matches!(c.step(t0), Step::Call(_)));
        // A flood of commits while the listener sleeps: merged, not queued.
        for s in 2..100_000 {
            c.pulse(&pulse(s, &[Kind::Email]));
        }
        assert_eq!(c.step(t0 + T - Duration::from_millis(1)), Step::Wait(Some(t0 + T)));
        assert_eq!(c.step(t0 + T), Step::GiveUp);
        // Had it answered, one call would have carried the newest state.
        let mut d = Coalescer::new(State(0), T);
        d.pulse(&pulse(1, &[Kind::Email]));
        assert!(matches!(d.step(t0), Step::Call(_)));
        for s in 2..100_000 {
            d.pulse(&pulse(s, &[Kind::Email]));
        }
        d.answered(true);
        assert_eq!(d.step(t0), Step::Call(Push { state: State(99_999), kinds: vec![Kind::Email] }));
        d.answered(true);
        assert_eq!(d.step(t0), Step::Wait(None), "and nothing after it");
    }

    #[test]
    fn a_failed_call_ends_the_watch() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(State(0), T);
        c.pulse(&pulse(1, &[Kind::Email]));
        assert!(matches!(c.step(t0), Step::Call(_)));
        c.answered(false);
        c.pulse(&pulse(2, &[Kind::Email]));
        assert_eq!(c.step(t0), Step::GiveUp);
    }

    #[tokio::test]
    async fn the_hub_keeps_the_last_pulse_and_forgets_unwatched_accounts() {
        let hub = Hub::new();
        let n = |account, state, kinds| Notice { account, state, kinds };
        hub.publish(&[n(1, 1, 1)]);
        assert_eq!(hub.watched_accounts(), 0, "nobody watches: nothing kept");
        let mut a = hub.subscribe(AccountId(1));
        let b = hub.subscribe(AccountId(2));
        hub.publish(&[n(1, 5, 0b001), n(2, 3, 0b010), n(1, 6, 0b010)]);
        let p = a.next().await.expect("pulse");
        assert_eq!(p.state, 6);
        assert_eq!(p.kinds_after(4), vec![Kind::Email, Kind::Mailbox]);
        assert_eq!(p.kinds_after(5), vec![Kind::Mailbox]);
        // A stale notice (an earlier commit released late) changes nothing.
        hub.publish(&[n(1, 4, 0b100)]);
        assert!(tokio::time::timeout(Duration::from_millis(20), a.next()).await.is_err());
        drop(b);
        assert_eq!(hub.watched_accounts(), 1);
        let a2 = hub.subscribe(AccountId(1));
        drop(a);
        assert_eq!(hub.watched_accounts(), 1, "a second watcher of the account remains");
        drop(a2);
        assert_eq!(hub.watched_accounts(), 0);
    }
}
