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
            IpAddr::V6(v6) => {
                let mut o = v6.octets();
                o[8..].fill(0);
                Key::Ip(IpAddr::from(o))
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
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
    /// How long `key` must still wait at `now` (zero: it may try).
    pub fn wait(&self, key: &Key, now: Instant) -> Duration {
        match self.records.get(key) {
            Some(r) => (r.last + r.delay(key.free_failures())).saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }

    /// Records a failure of `key` at `now`.
    pub fn failed(&mut self, key: Key, now: Instant) {
        if self.records.len() >= MAX_TRACKED && !self.records.contains_key(&key) {
            self.forget_idle(now);
        }
        let r = self.records.entry(key).or_insert(Record { failures: 0, last: now });
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
        self.records.retain(|_, r| now.saturating_duration_since(r.last) < FORGET_AFTER);
        if self.records.len() >= MAX_TRACKED {
            // Still full of recent failures: keep those still delaying.
            self.records.retain(|k, r| r.last + r.delay(k.free_failures()) > now);
        }
        if self.records.len() >= MAX_TRACKED {
            self.records.clear();
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
                if let Some(n) = name {
                    k.push(Key::Name(n.to_ascii_lowercase()));
                }
                k
            }
            Attempt::Service => match Key::ip(ip) {
                Key::Ip(a) => vec![Key::Service(a)],
                other => vec![other],
            },
        }
    }

    /// Refuses an attempt from `ip` that must still wait.
    pub fn admit(&self, ip: IpAddr, attempt: Attempt<'_>, now: Instant) -> Result<()> {
        let t = self.throttle();
        let wait = Self::keys(ip, attempt).iter().map(|k| t.wait(k, now)).max().unwrap_or_default();
        drop(t);
        if wait > Duration::ZERO {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Unavailable(format!(
                "too many failed logins; try again in {} s",
                wait.as_secs().max(1)
            )));
        }
        Ok(())
    }

    /// A permit to run one password hash: at once, or after a short wait
    /// in a bounded queue; else `unavailable`.
    pub async fn permit(&self) -> Result<OwnedSemaphorePermit> {
        if let Ok(p) = Arc::clone(&self.hashing).try_acquire_owned() {
            return Ok(p);
        }
        let busy = || Error::Unavailable("the server is busy checking passwords; try again shortly".into());
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.busy.fetch_add(1, Ordering::Relaxed);
            return Err(busy());
        }
        let waited = tokio::time::timeout(MAX_WAIT, Arc::clone(&self.hashing).acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
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

    /// Records the outcome of an attempt.
    pub fn record(&self, ip: IpAddr, attempt: Attempt<'_>, ok: bool, now: Instant) {
        let mut t = self.throttle();
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        for k in Self::keys(ip, attempt) {
            if ok {
                t.succeeded(&k);
            } else {
                t.failed(k, now);
            }
        }
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
        for i in 0..50 {
            g.record(a, Attempt::User(Some(&format!("n{i}"))), false, t0);
        }
        assert!(g.admit(a, Attempt::User(Some("someone")), t0).is_err(), "the address waits");
        g.admit(a, Attempt::Service, t0).expect("the gateway on that host still gets in");
        g.admit(ip("192.0.2.10"), Attempt::User(Some("n1")), t0).expect("one failure of n1 is free");
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
