//! The budget of unauthenticated work: how many password hashes run at
//! once, and how fast one address or one account name may fail.
//!
//! Every password check costs an argon2id hash (19 MiB, tens of ms of CPU),
//! and anyone can ask for one. So checks run only with a permit from a fixed
//! pool ([`LoginGuard::permit`]): a login may wait briefly for one in a short
//! queue ([`MAX_WAITING`], [`MAX_WAIT`]), and beyond that gets `unavailable`
//! at once; a waiter holds no hashing memory. Failures are throttled by a sans-IO [`Throttle`] keyed by
//! remote IP and by account name: after a few free failures (more for an
//! address, which many users may share behind NAT, than for a name), each
//! further attempt must wait a delay that doubles with every failure, up to
//! [`MAX_DELAY`]; an attempt inside the delay is refused without hashing.
//! A success clears the name's and the address's record. Service
//! credentials (admin, gateway) are throttled apart, so users failing from
//! the gateway's host never lock the gateway out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// Failures of one account name allowed before delays begin.
pub const FREE_FAILURES: u32 = 5;
/// Failures from one address (user logins) allowed before delays begin.
pub const FREE_FAILURES_PER_IP: u32 = 10;
/// The first delay.
pub const BASE_DELAY: Duration = Duration::from_millis(500);
/// The longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// Logins that may wait for a hashing permit, server-wide.
pub const MAX_WAITING: usize = 64;
/// How long a login waits for a hashing permit.
pub const MAX_WAIT: Duration = Duration::from_secs(2);
/// A record with no failure for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Most keys tracked; beyond it the idle ones are dropped first.
pub const MAX_TRACKED: usize = 100_000;

/// What is throttled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A remote address (IPv6 by its /64, where one host has many).
    Ip(IpAddr),
    /// An account name, as typed (normalised).
    Name(String),
    /// Service credentials (admin, gateway) tried from an address.
    Service(IpAddr),
}

impl Key {
    /// Failures allowed before delays begin.
    pub fn free_failures(&self) -> u32 {
        match self {
            Key::Ip(_) => FREE_FAILURES_PER_IP,
            Key::Name(_) | Key::Service(_) => FREE_FAILURES,
        }
    }

    /// The key of a remote address.
    pub fn ip(ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(_) => Key::Ip(ip),
            // A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Key::Ip(IpAddr::V4(v4)),
                None => {
                    let mut o = v6.octets();
                    o[8..].fill(0);
                    Key::Ip(IpAddr::from(o))
                }
            },
        }
    }

    /// The key of a login name: as the account registry normalises it, so
    /// spellings of one name share one record; `None` for a name no account
    /// can have (it fails before any hash, and is not worth a record).
    pub fn name(name: &str) -> Option<Key> {
        crate::account::normalize_name(name).ok().map(Key::Name)
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
    /// Admitted attempts not yet resolved.
    pending: u32,
}

impl Record {
    fn delay(&self, free: u32) -> Duration {
        if self.failures < free {
            return Duration::ZERO;
        }
        let doublings = (self.failures - free).min(16);
        BASE_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
    }
}

/// Failure counts and delays, with time as an input.
#[derive(Debug, Default)]
pub struct Throttle {
    records: HashMap<Key, Record>,
}

impl Throttle {
    /// How long `key` must still wait at `now` (zero: it may try). A key
    /// past its free failures gets one attempt in flight at a time, so
    /// concurrent attempts cannot all slip through one expired delay.
    pub fn wait(&self, key: &Key, now: Instant) -> Duration {
        self.wait_beside(key, now, 0)
    }

    /// [`Throttle::wait`] for an attempt already pending itself.
    fn wait_beside(&self, key: &Key, now: Instant, own: u32) -> Duration {
        match self.records.get(key) {
            Some(r) => {
                let delay = r.delay(key.free_failures());
                let wait = if delay.is_zero() {
                    Duration::ZERO
                } else {
                    (r.last + delay).saturating_duration_since(now)
                };
                if r.pending > own && r.failures >= key.free_failures() { wait.max(BASE_DELAY) } else { wait }
            }
            None => Duration::ZERO,
        }
    }

    /// Counts an admitted attempt of `key` until [`Throttle::end`].
    pub fn begin(&mut self, key: Key, now: Instant) {
        if self.records.len() >= MAX_TRACKED && !self.records.contains_key(&key) {
            self.forget_idle(now);
        }
        self.records.entry(key).or_insert(Record { failures: 0, last: now, pending: 0 }).pending += 1;
    }

    /// Resolves an attempt begun with [`Throttle::begin`].
    pub fn end(&mut self, key: &Key, outcome: Outcome, now: Instant) {
        if let Some(r) = self.records.get_mut(key) {
            r.pending = r.pending.saturating_sub(1);
        }
        match outcome {
            Outcome::Failed => self.failed(key.clone(), now),
            Outcome::Succeeded if matches!(key, Key::Name(_)) => {
                if let Some(r) = self.records.get_mut(key) {
                    r.failures = 0;
                }
            }
            Outcome::Succeeded | Outcome::Unchecked => {}
        }
        if self.records.get(key).is_some_and(|r| r.failures == 0 && r.pending == 0) {
            self.records.remove(key);
        }
    }

    /// Records a failure of `key` at `now`.
    pub fn failed(&mut self, key: Key, now: Instant) {
        if self.records.len() >= MAX_TRACKED && !self.records.contains_key(&key) {
            self.forget_idle(now);
        }
        let r = self.records.entry(key).or_insert(Record { failures: 0, last: now, pending: 0 });
        if now.saturating_duration_since(r.last) >= FORGET_AFTER {
            r.failures = 0;
        }
        r.failures = r.failures.saturating_add(1);
        r.last = now;
    }

    /// Clears `key` after a success.
    pub fn succeeded(&mut self, key: &Key) {
        self.records.remove(key);
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn forget_idle(&mut self, now: Instant) {
        self.records.retain(|_, r| r.pending > 0 || now.saturating_duration_since(r.last) < FORGET_AFTER);
        if self.records.len() >= MAX_TRACKED {
            // Still full of recent failures: keep those still delaying.
            self.records.retain(|k, r| r.pending > 0 || r.last + r.delay(k.free_failures()) > now);
        }
        if self.records.len() >= MAX_TRACKED {
            self.records.clear();
        }
    }
}

/// The refusal of an attempt that must wait `wait` more.
fn must_wait(wait: Duration) -> Error {
    Error::Unavailable(format!("too many failed logins; try again in {} s", wait.as_secs().max(1)))
}

/// How an admitted attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A wrong credential.
    Failed,
    /// A right one.
    Succeeded,
    /// Never checked (busy, cancelled, an internal error).
    Unchecked,
}

/// An admitted attempt, pending until resolved.
#[derive(Debug)]
pub struct Reservation<'a> {
    guard: &'a LoginGuard,
    keys: Vec<Key>,
    done: bool,
}

impl Reservation<'_> {
    fn end(&mut self, outcome: Outcome, now: Instant) {
        self.done = true;
        if outcome == Outcome::Failed {
            self.guard.failed.fetch_add(1, Ordering::Relaxed);
        }
        let mut t = self.guard.throttle();
        for k in &self.keys {
            t.end(k, outcome, now);
        }
    }

    /// Checks again after a wait (for a hashing permit): failures may have
    /// come in meanwhile. `Err` drops the attempt unchecked.
    pub fn recheck(self, now: Instant) -> Result<Self> {
        let t = self.guard.throttle();
        let wait = self.keys.iter().map(|k| t.wait_beside(k, now, 1)).max().unwrap_or_default();
        drop(t);
        if wait > Duration::ZERO {
            self.guard.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(must_wait(wait));
        }
        Ok(self)
    }

    /// Resolves the attempt at `now` (time is an input, for tests).
    pub fn resolve(mut self, outcome: Outcome, now: Instant) {
        self.end(outcome, now);
    }

    /// The credential was wrong.
    pub fn failed(self) {
        self.resolve(Outcome::Failed, Instant::now());
    }

    /// The credential was right: the name's failures are cleared. The
    /// address keeps its own (one good account must not launder guesses
    /// at others).
    pub fn succeeded(self) {
        self.resolve(Outcome::Succeeded, Instant::now());
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.end(Outcome::Unchecked, Instant::now());
        }
    }
}

/// What is being tried.
#[derive(Debug, Clone, Copy)]
pub enum Attempt<'a> {
    /// A user login: by this name, or by app token (`None`).
    User(Option<&'a str>),
    /// The admin or gateway credential.
    Service,
}

/// Counts operators and tests read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoginStats {
    /// Logins refused for a wrong name, password or token.
    pub failed: u64,
    /// Attempts refused because their address or name must wait.
    pub throttled: u64,
    /// Attempts refused because every hashing permit was taken.
    pub busy: u64,
}

type HashJob = Box<dyn FnOnce() + Send>;

/// A fixed set of threads that run password hashes. Hashing on the general
/// blocking pool would let every one of its threads keep an allocator arena
/// with a freed 19 MiB argon2 buffer; a few dedicated threads bound that
/// memory to `threads × 19 MiB`.
#[derive(Debug)]
struct HashPool {
    jobs: Mutex<std::sync::mpsc::Sender<HashJob>>,
}

impl HashPool {
    fn start(threads: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<HashJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new().name(format!("quail-hash-{i}")).spawn(move || {
                loop {
                    let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "starting a password hashing thread");
            }
        }
        HashPool { jobs: Mutex::new(tx) }
    }
}

/// The shared login budget of one server.
#[derive(Debug)]
pub struct LoginGuard {
    pool: HashPool,
    hashing: Arc<Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
    throttle: Mutex<Throttle>,
    failed: AtomicU64,
    throttled: AtomicU64,
    busy: AtomicU64,
}

impl LoginGuard {
    /// A guard allowing `hashes` password checks at once.
    pub fn new(hashes: usize) -> Self {
        LoginGuard {
            pool: HashPool::start(hashes.max(1)),
            hashing: Arc::new(Semaphore::new(hashes.max(1))),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            throttle: Mutex::new(Throttle::default()),
            failed: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The keys an attempt counts against: a user login by name (or by
    /// token, `name` empty) or a service credential.
    fn keys(ip: IpAddr, attempt: Attempt<'_>) -> Vec<Key> {
        match attempt {
            Attempt::User(name) => {
                let mut k = vec![Key::ip(ip)];
                k.extend(name.and_then(Key::name));
                k
            }
            Attempt::Service => match Key::ip(ip) {
                Key::Ip(a) => vec![Key::Service(a)],
                other => vec![other],
            },
        }
    }

    /// Admits an attempt from `ip`, or refuses one that must still wait.
    /// The attempt stays pending until its [`Reservation`] is resolved;
    /// dropping it unresolved (busy, cancelled) counts nothing.
    pub fn admit(&self, ip: IpAddr, attempt: Attempt<'_>, now: Instant) -> Result<Reservation<'_>> {
        let keys = Self::keys(ip, attempt);
        let mut t = self.throttle();
        let wait = keys.iter().map(|k| t.wait(k, now)).max().unwrap_or_default();
        if wait > Duration::ZERO {
            drop(t);
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(must_wait(wait));
        }
        for k in &keys {
            t.begin(k.clone(), now);
        }
        Ok(Reservation { guard: self, keys, done: false })
    }

    /// A permit to run one password hash: at once, or after a short wait
    /// in a bounded queue; else `unavailable`.
    pub async fn permit(&self) -> Result<OwnedSemaphorePermit> {
        if let Ok(p) = Arc::clone(&self.hashing).try_acquire_owned() {
            return Ok(p);
        }
        let busy = || Error::Unavailable("the server is busy checking passwords; try again shortly".into());
        /// Counts one waiter until dropped, even if the waiting future is.
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let waiting = Waiting(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            drop(waiting);
            self.busy.fetch_add(1, Ordering::Relaxed);
            return Err(busy());
        }
        let waited = tokio::time::timeout(MAX_WAIT, Arc::clone(&self.hashing).acquire_owned()).await;
        drop(waiting);
        match waited {
            Ok(Ok(p)) => Ok(p),
            _ => {
                self.busy.fetch_add(1, Ordering::Relaxed);
                Err(busy())
            }
        }
    }

    /// Runs `f` (a password check) on the hashing threads, holding `permit`.
    pub async fn hash<T: Send + 'static>(
        &self,
        permit: OwnedSemaphorePermit,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move || {
            let _permit = permit;
            let _ = tx.send(f());
        });
        self.pool
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(job)
            .map_err(|_| Error::Unavailable("password checks are shut down".into()))?;
        rx.await.map_err(|_| Error::Internal("a password check was lost".into()))?
    }

    /// The counts so far.
    pub fn stats(&self) -> LoginStats {
        LoginStats {
            failed: self.failed.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn delays_begin_after_the_free_failures_and_double() {
        let mut t = Throttle::default();
        let k = Key::Name("bob".into());
        let t0 = Instant::now();
        for i in 0..FREE_FAILURES {
            assert_eq!(t.wait(&k, t0), Duration::ZERO, "failure {i} is free");
            t.failed(k.clone(), t0);
        }
        assert_eq!(t.wait(&k, t0), BASE_DELAY);
        t.failed(k.clone(), t0 + BASE_DELAY);
        assert_eq!(t.wait(&k, t0 + BASE_DELAY), BASE_DELAY * 2);
        let mut now = t0 + BASE_DELAY;
        for _ in 0..40 {
            now += t.wait(&k, now);
            t.failed(k.clone(), now);
        }
        assert_eq!(t.wait(&k, now), MAX_DELAY, "capped");
        // Waiting it out lets the next attempt through.
        assert_eq!(t.wait(&k, now + MAX_DELAY), Duration::ZERO);
    }

    #[test]
    fn a_success_clears_and_idle_records_are_forgotten() {
        let mut t = Throttle::default();
        let k = Key::Name("alice".into());
        let t0 = Instant::now();
        for _ in 0..10 {
            t.failed(k.clone(), t0);
        }
        assert!(t.wait(&k, t0) > Duration::ZERO);
        t.succeeded(&k);
        assert_eq!(t.wait(&k, t0), Duration::ZERO);
        for _ in 0..10 {
            t.failed(k.clone(), t0);
        }
        // Long after, one failure counts as the first again.
        t.failed(k.clone(), t0 + FORGET_AFTER + MAX_DELAY);
        assert_eq!(t.wait(&k, t0 + FORGET_AFTER + MAX_DELAY), Duration::ZERO);
    }

    #[test]
    fn users_failing_from_an_address_never_lock_out_its_services() {
        let g = LoginGuard::new(1);
        let (a, t0) = (ip("192.0.2.9"), Instant::now());
        for i in 0..FREE_FAILURES_PER_IP {
            g.admit(a, Attempt::User(Some(&format!("n{i}"))), t0).expect("free").resolve(Outcome::Failed, t0);
        }
        assert!(g.admit(a, Attempt::User(Some("someone")), t0).is_err(), "the address waits");
        g.admit(a, Attempt::Service, t0)
            .expect("the gateway on that host still gets in")
            .resolve(Outcome::Succeeded, t0);
        g.admit(ip("192.0.2.10"), Attempt::User(Some("n1")), t0)
            .expect("one failure of n1 is free")
            .resolve(Outcome::Failed, t0);
    }

    #[test]
    fn throttled_keys_get_one_attempt_at_a_time_and_successes_do_not_launder() {
        let g = LoginGuard::new(1);
        let (a, t0) = (ip("192.0.2.20"), Instant::now());
        // A user's concurrent logins all get in while nothing failed.
        let held: Vec<_> =
            (0..8).map(|_| g.admit(a, Attempt::User(Some("carol")), t0).expect("no failures yet")).collect();
        drop(held); // unchecked: counts nothing
        for _ in 0..FREE_FAILURES {
            g.admit(a, Attempt::User(Some("Carol ")), t0).expect("free").resolve(Outcome::Failed, t0);
        }
        assert!(g.admit(a, Attempt::User(Some("carol")), t0).is_err(), "spellings share one record");
        let later = t0 + MAX_DELAY;
        let one = g.admit(a, Attempt::User(Some("carol")), later).expect("the delay passed");
        assert!(g.admit(a, Attempt::User(Some("carol")), later).is_err(), "one attempt in flight at a time");
        // A success clears the name but keeps the address's failures.
        one.resolve(Outcome::Succeeded, later);
        g.admit(a, Attempt::User(Some("carol")), later).expect("cleared").resolve(Outcome::Succeeded, later);
        // The address has carol's failures; four more, a success, one more.
        for i in 0..FREE_FAILURES_PER_IP - FREE_FAILURES - 1 {
            g.admit(a, Attempt::User(Some(&format!("dave{i}"))), later)
                .expect("free")
                .resolve(Outcome::Failed, later);
        }
        g.admit(a, Attempt::User(Some("erin")), later)
            .expect("one more is free")
            .resolve(Outcome::Succeeded, later);
        g.admit(a, Attempt::User(Some("frank")), later)
            .expect("the last free one")
            .resolve(Outcome::Failed, later);
        assert!(
            g.admit(a, Attempt::User(Some("grace")), later).is_err(),
            "the success did not reset the address"
        );
    }

    #[test]
    fn ipv4_mapped_peers_are_their_ipv4_address() {
        assert_eq!(Key::ip(ip("::ffff:192.0.2.1")), Key::ip(ip("192.0.2.1")));
        assert_ne!(Key::ip(ip("::ffff:192.0.2.1")), Key::ip(ip("::ffff:192.0.2.2")));
    }

    #[test]
    fn ipv6_hosts_are_throttled_by_their_64() {
        assert_eq!(Key::ip(ip("2001:db8::1")), Key::ip(ip("2001:db8::ffff:1")));
        assert_ne!(Key::ip(ip("2001:db8::1")), Key::ip(ip("2001:db8:0:1::1")));
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            t.failed(Key::Name(format!("n{i}")), t0);
        }
        assert!(t.len() <= MAX_TRACKED);
    }

    #[tokio::test(start_paused = true)]
    async fn hashing_permits_are_bounded_and_the_queue_too() {
        let g = Arc::new(LoginGuard::new(2));
        let a = g.permit().await.expect("one");
        let _b = g.permit().await.expect("two");
        // A third waits for a permit, and gets the one freed.
        let waiter = {
            let g = Arc::clone(&g);
            tokio::spawn(async move { g.permit().await.map(drop) })
        };
        tokio::task::yield_now().await;
        drop(a);
        waiter.await.expect("join").expect("got the freed permit");
        // With every permit held, waiters give up after MAX_WAIT...
        let _c = g.permit().await.expect("the freed one");
        let t0 = tokio::time::Instant::now();
        assert!(matches!(g.permit().await, Err(Error::Unavailable(_))));
        assert!(t0.elapsed() >= MAX_WAIT);
        // ...and beyond MAX_WAITING, callers are refused at once.
        let mut queued = Vec::new();
        for _ in 0..MAX_WAITING {
            let g = Arc::clone(&g);
            queued.push(tokio::spawn(async move { g.permit().await.map(drop) }));
        }
        while g.waiting.load(Ordering::Acquire) < MAX_WAITING {
            tokio::task::yield_now().await;
        }
        let t0 = tokio::time::Instant::now();
        assert!(matches!(g.permit().await, Err(Error::Unavailable(_))));
        assert_eq!(t0.elapsed(), Duration::ZERO);
        for q in queued {
            assert!(q.await.expect("join").is_err());
        }
    }
}
