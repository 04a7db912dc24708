//! Transfers in flight: bytes too large for one RPC message travel on a
//! bulk stream, announced by a token. Uploads are below; [`Downloads`] holds
//! the objects an RPC has prepared for a client to fetch.
//!
//! `reserve` hands out a random single-use token for a declared size; the
//! bulk stream `begin`s it, delivers exactly that many bytes and `finish`es
//! it; the RPC that consumes the upload `take`s the bytes, which ends the
//! token. A token is bound to its owner (an account id, or 0 for the
//! gateway credential): another owner's token is simply not found. Tokens
//! expire; pending uploads and their reserved bytes are bounded, so a
//! client cannot park memory here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::error::{Error, Result};

/// How long a reserved or finished upload waits to be used.
pub const TTL: Duration = Duration::from_secs(10 * 60);
/// Uploads pending at once, server-wide.
pub const MAX_PENDING: usize = 64;

/// Who may use an upload: an account id, or [`Owner::GATEWAY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner(pub u64);

impl Owner {
    /// The gateway credential.
    pub const GATEWAY: Owner = Owner(0);
}

/// A token naming one upload.
pub type Token = [u8; 32];

/// What an upload is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// A message the gateway delivers next (`Gateway.deliver`).
    Message,
    /// A blob an account keeps (`Session.upload`): its declared BLAKE3 is
    /// checked against the bytes before anything is stored.
    Blob {
        /// The declared BLAKE3.
        hash: [u8; 32],
        /// Its declared MIME type (decides whether to compress).
        mime_type: String,
    },
}

#[derive(Debug)]
enum State {
    /// Waiting for (more) bytes: what arrived before a transfer broke off.
    Waiting(Vec<u8>),
    /// A transfer is receiving; notified when a later one asks it to stop.
    Receiving(Arc<Notify>),
    Done(Vec<u8>),
}

/// What a transfer that is still receiving answers one that wants to take
/// over: the first is asked to stop and keep what it has, so the second
/// resumes from there when it asks again.
fn running(stop: &Notify) -> Error {
    // A permit, if that transfer is not waiting on it right now.
    stop.notify_one();
    Error::Unavailable("a transfer of this upload is running; it was asked to stop: retry shortly".into())
}

#[derive(Debug)]
struct Entry {
    owner: Owner,
    size: u64,
    expires: Instant,
    state: State,
    purpose: Purpose,
}

/// A transfer allowed to go on (see [`Uploads::begin`]).
#[derive(Debug)]
pub struct Begun {
    /// Bytes the upload holds in all.
    pub size: u64,
    /// What arrived so far (the transfer appends to it).
    pub bytes: Vec<u8>,
    /// Who it is for.
    pub owner: Owner,
    /// What it is for.
    pub purpose: Purpose,
    /// Notified when a later transfer of the same upload (the client came
    /// back, on another connection perhaps, before this one was seen to
    /// die) asks this one to stop: it then pauses with what it has.
    pub stop: Arc<Notify>,
}

/// The uploads of one server.
#[derive(Debug)]
pub struct Uploads {
    entries: Mutex<HashMap<Token, Entry>>,
    max_reserved: u64,
}

fn unknown() -> Error {
    Error::not_found("unknown, used or expired upload token")
}

impl Uploads {
    /// A registry holding at most `max_reserved` bytes of uploads at once.
    pub fn new(max_reserved: u64) -> Self {
        Uploads { entries: Mutex::new(HashMap::new()), max_reserved }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Token, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves an upload of `size` bytes for `owner`.
    pub fn reserve(&self, owner: Owner, size: u64, now: Instant) -> Result<Token> {
        self.reserve_for(owner, size, Purpose::Message, now)
    }

    /// Reserves an upload of `size` bytes for `owner`, for `purpose`.
    pub fn reserve_for(&self, owner: Owner, size: u64, purpose: Purpose, now: Instant) -> Result<Token> {
        let mut e = self.lock();
        e.retain(|_, x| x.expires > now || matches!(x.state, State::Receiving(_)));
        let reserved: u64 = e.values().map(|x| x.size).sum();
        if e.len() >= MAX_PENDING || reserved.saturating_add(size) > self.max_reserved {
            return Err(Error::Unavailable(
                "too many uploads in flight; finish or let some expire, then retry".into(),
            ));
        }
        // One account may hold a quarter of the room, and accounts together
        // three quarters: none can take every slot, and the gateway (mail
        // arriving) always has a quarter.
        if owner != Owner::GATEWAY {
            let (mut mine, mut mine_bytes, mut accounts, mut accounts_bytes) = (0, 0u64, 0, 0u64);
            for x in e.values().filter(|x| x.owner != Owner::GATEWAY) {
                accounts += 1;
                accounts_bytes += x.size;
                if x.owner == owner {
                    mine += 1;
                    mine_bytes += x.size;
                }
            }
            if mine >= MAX_PENDING / 4 || mine_bytes.saturating_add(size) > self.max_reserved / 4 {
                return Err(Error::Unavailable(
                    "this account has as many uploads in flight as one may; finish or let some expire".into(),
                ));
            }
            if accounts >= MAX_PENDING / 4 * 3
                || accounts_bytes.saturating_add(size) > self.max_reserved / 4 * 3
            {
                return Err(Error::Unavailable("too many uploads in flight; retry shortly".into()));
            }
        }
        let token: Token = rand::random();
        e.insert(
            token,
            Entry { owner, size, expires: now + TTL, state: State::Waiting(Vec::new()), purpose },
        );
        Ok(token)
    }

    /// How many bytes of `token` the server holds (to resume from), when
    /// the connection `holds` its owner.
    pub fn held(&self, token: &Token, holds: impl Fn(Owner) -> bool, now: Instant) -> Result<u64> {
        match self.lock().get(token) {
            Some(x) if x.expires > now && holds(x.owner) => match &x.state {
                State::Waiting(b) | State::Done(b) => Ok(b.len() as u64),
                State::Receiving(stop) => Err(running(stop)),
            },
            _ => Err(unknown()),
        }
    }

    /// Starts (or resumes, at `offset`) receiving the bytes of `token` on a
    /// connection that `holds` its owner. Resuming past what the server
    /// holds is refused, naming what it holds.
    pub fn begin(
        &self,
        token: &Token,
        offset: u64,
        holds: impl Fn(Owner) -> bool,
        now: Instant,
    ) -> Result<Begun> {
        let mut e = self.lock();
        match e.get_mut(token) {
            Some(x) if x.expires > now && holds(x.owner) && matches!(x.state, State::Waiting(_)) => {
                let stop = Arc::new(Notify::new());
                let State::Waiting(mut bytes) =
                    std::mem::replace(&mut x.state, State::Receiving(Arc::clone(&stop)))
                else {
                    return Err(unknown());
                };
                if offset > bytes.len() as u64 {
                    let held = bytes.len();
                    x.state = State::Waiting(bytes);
                    return Err(Error::invalid(format!(
                        "the server holds {held} bytes of this upload: resume there"
                    )));
                }
                bytes.truncate(offset as usize);
                Ok(Begun { size: x.size, bytes, owner: x.owner, purpose: x.purpose.clone(), stop })
            }
            Some(x) if x.expires > now && holds(x.owner) => match &x.state {
                State::Receiving(stop) => Err(running(stop)),
                _ => Err(unknown()),
            },
            _ => Err(unknown()),
        }
    }

    /// The bytes of `token` arrived whole.
    pub fn finish(&self, token: &Token, bytes: Vec<u8>, now: Instant) -> Result<()> {
        let mut e = self.lock();
        match e.get_mut(token) {
            Some(x) if matches!(x.state, State::Receiving(_)) && bytes.len() as u64 == x.size => {
                x.state = State::Done(bytes);
                x.expires = now + TTL;
                Ok(())
            }
            _ => Err(unknown()),
        }
    }

    /// The transfer of `token` broke off after `partial`: a later one may
    /// resume from there.
    pub fn pause(&self, token: &Token, partial: Vec<u8>) {
        if let Some(x) = self.lock().get_mut(token)
            && matches!(x.state, State::Receiving(_))
        {
            x.state = State::Waiting(partial);
        }
    }

    /// The transfer of `token` broke off: it starts again from nothing.
    pub fn abort(&self, token: &Token) {
        self.pause(token, Vec::new());
    }

    /// Ends `token` (its bytes were used).
    pub fn remove(&self, token: &Token) {
        self.lock().remove(token);
    }

    /// Takes the finished bytes of `owner`'s `token`; the token ends.
    pub fn take(&self, token: &Token, owner: Owner, now: Instant) -> Result<Vec<u8>> {
        let mut e = self.lock();
        match e.get(token) {
            Some(x) if x.owner == owner && x.expires > now && matches!(x.state, State::Done(_)) => {}
            Some(x) if x.owner == owner && matches!(x.state, State::Waiting(_) | State::Receiving(_)) => {
                return Err(Error::invalid("the upload has not finished"));
            }
            _ => return Err(unknown()),
        }
        match e.remove(token).map(|x| x.state) {
            Some(State::Done(bytes)) => Ok(bytes),
            _ => Err(unknown()),
        }
    }
}

/// How long a prepared download waits for its (first or resumed) transfer.
pub const DOWNLOAD_TTL: Duration = Duration::from_secs(2 * 60);

/// What a download streams: bytes in memory, or produced piece by piece
/// from the store (a large message rebuilt around its attachment chunks).
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Bytes it carries.
    fn len(&self) -> u64;
    /// Whether it carries nothing.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Memory it holds while offered (what the registry budgets).
    fn held(&self) -> u64;
    /// Hands its bytes from `offset` on to `sink`, piece by piece.
    fn stream(&self, offset: u64, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>;
}

impl Source for Vec<u8> {
    fn len(&self) -> u64 {
        Vec::len(self) as u64
    }
    fn held(&self) -> u64 {
        Vec::len(self) as u64
    }
    fn stream(&self, offset: u64, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let start = (offset as usize).min(Vec::len(self));
        for piece in self[start..].chunks(256 * 1024) {
            sink(piece)?;
        }
        Ok(())
    }
}

/// A shared source.
pub type Shared = std::sync::Arc<dyn Source>;

#[derive(Debug)]
struct Offered {
    owner: Owner,
    bytes: Shared,
    expires: Instant,
}

/// Objects prepared for download: a random token per object, bound to the
/// owner that asked, with bounded count and bytes. A transfer that breaks
/// off may be resumed from an offset with the same token until it expires;
/// one that completes ends the token.
#[derive(Debug)]
pub struct Downloads {
    entries: Mutex<HashMap<Token, Offered>>,
    max_bytes: u64,
}

impl Downloads {
    /// A registry holding at most `max_bytes` of prepared downloads.
    pub fn new(max_bytes: u64) -> Self {
        Downloads { entries: Mutex::new(HashMap::new()), max_bytes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Token, Offered>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Offers `bytes` to `owner`.
    pub fn offer(&self, owner: Owner, bytes: Shared, now: Instant) -> Result<Token> {
        let mut e = self.lock();
        e.retain(|_, x| x.expires > now);
        let held: u64 = e.values().map(|x| x.bytes.held()).sum();
        if e.len() >= MAX_PENDING || held.saturating_add(bytes.held()) > self.max_bytes {
            return Err(Error::Unavailable("too many downloads in flight; fetch or retry shortly".into()));
        }
        let token: Token = rand::random();
        e.insert(token, Offered { owner, bytes, expires: now + DOWNLOAD_TTL });
        Ok(token)
    }

    /// The bytes of a token whose owner `holds` (the connection holds a
    /// capability of that owner). Another owner's token is not found.
    pub fn get(&self, token: &Token, holds: impl Fn(Owner) -> bool, now: Instant) -> Result<Shared> {
        match self.lock().get(token) {
            Some(x) if x.expires > now && holds(x.owner) => Ok(std::sync::Arc::clone(&x.bytes)),
            _ => Err(unknown()),
        }
    }

    /// The whole object reached the client: the token ends.
    pub fn complete(&self, token: &Token) {
        self.lock().remove(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_is_single_use_bound_to_its_owner_and_expires() {
        let u = Uploads::new(1 << 20);
        let t0 = Instant::now();
        let t = u.reserve(Owner::GATEWAY, 3, t0).expect("reserve");
        assert!(matches!(u.take(&t, Owner::GATEWAY, t0), Err(Error::InvalidArgument(_))), "not finished");
        let all = |_: Owner| true;
        let first = u.begin(&t, 0, all, t0).expect("begin");
        assert_eq!(first.size, 3);
        assert!(u.begin(&t, 0, all, t0).is_err(), "one transfer at a time");
        assert!(u.finish(&t, b"toolong".to_vec(), t0).is_err(), "exactly the declared size");
        u.pause(&t, b"ab".to_vec());
        assert_eq!(u.held(&t, all, t0).expect("held"), 2);
        assert!(u.held(&t, |o| o == Owner(7), t0).is_err(), "another owner's token");
        assert!(matches!(u.begin(&t, 3, all, t0), Err(Error::InvalidArgument(_))), "past what is held");
        let resumed = u.begin(&t, 2, all, t0).expect("resumed after a broken transfer");
        assert_eq!(resumed.bytes, b"ab");
        u.finish(&t, b"abc".to_vec(), t0).expect("finish");
        assert!(matches!(u.take(&t, Owner(7), t0), Err(Error::NotFound(_))), "another owner's token");
        assert_eq!(u.take(&t, Owner::GATEWAY, t0).expect("take"), b"abc");
        assert!(matches!(u.take(&t, Owner::GATEWAY, t0), Err(Error::NotFound(_))), "single use");
        let late = u.reserve(Owner::GATEWAY, 1, t0).expect("reserve");
        assert!(u.begin(&late, 0, |_| true, t0 + TTL).is_err(), "expired");
        assert!(matches!(u.take(&[9; 32], Owner::GATEWAY, t0), Err(Error::NotFound(_))), "forged");
        drop(first);
    }

    /// A client that comes back before its old transfer was seen to die
    /// (the network went away, no close arrived) takes the upload over:
    /// the old transfer is asked to stop, keeps what it has, and the new
    /// one resumes from there.
    #[tokio::test]
    async fn a_later_transfer_asks_a_running_one_to_stop() {
        let u = Uploads::new(1 << 20);
        let t0 = Instant::now();
        let all = |_: Owner| true;
        let t = u.reserve(Owner(7), 10, t0).expect("reserve");
        let old = u.begin(&t, 0, all, t0).expect("begin");
        // Another owner is not let near it.
        assert!(matches!(u.held(&t, |o| o == Owner(8), t0), Err(Error::NotFound(_))));
        // The owner again, on another connection: refused for now, and
        // the running transfer is told (a permit, though it waits later).
        assert!(matches!(u.held(&t, all, t0), Err(Error::Unavailable(_))));
        tokio::time::timeout(Duration::from_secs(5), old.stop.notified()).await.expect("asked to stop");
        assert!(matches!(u.begin(&t, 0, all, t0), Err(Error::Unavailable(_))));
        // It stops with what it received; the later one resumes there.
        u.pause(&t, b"abcd".to_vec());
        assert_eq!(u.held(&t, all, t0).expect("held"), 4);
        let new = u.begin(&t, 4, all, t0).expect("resume");
        assert_eq!(new.bytes, b"abcd");
        u.finish(&t, b"abcdefghij".to_vec(), t0).expect("finish");
        assert_eq!(u.take(&t, Owner(7), t0).expect("take"), b"abcdefghij");
    }

    #[test]
    fn a_download_is_bound_to_its_owner_resumable_until_done_and_expires() {
        let d = Downloads::new(10);
        let t0 = Instant::now();
        let alice = Owner(1);
        let t = d.offer(alice, std::sync::Arc::new(b"abc".to_vec()) as Shared, t0).expect("offer");
        assert!(d.offer(alice, std::sync::Arc::new(vec![0u8; 8]) as Shared, t0).is_err(), "bounded bytes");
        assert!(d.get(&t, |o| o == Owner(2), t0).is_err(), "another account's token");
        let mut got = Vec::new();
        d.get(&t, |o| o == alice, t0)
            .expect("get")
            .stream(1, &mut |b| {
                got.extend_from_slice(b);
                Ok(())
            })
            .expect("stream");
        assert_eq!(got, b"bc");
        assert!(d.get(&t, |o| o == alice, t0).is_ok(), "a broken transfer may resume");
        d.complete(&t);
        assert!(d.get(&t, |o| o == alice, t0).is_err(), "done: gone");
        let t = d.offer(alice, std::sync::Arc::new(b"x".to_vec()) as Shared, t0).expect("offer");
        assert!(d.get(&t, |o| o == alice, t0 + DOWNLOAD_TTL).is_err(), "expired");
        assert!(d.get(&[7; 32], |_| true, t0).is_err(), "forged");
    }

    /// No account can take every upload slot: one holds a quarter of the
    /// room at most, accounts together three quarters, and the gateway
    /// (mail arriving) always finds a quarter.
    #[test]
    fn an_account_takes_its_share_of_the_room_and_no_more() {
        let u = Uploads::new(400);
        let t0 = Instant::now();
        let (a, b, c, d) = (Owner(1), Owner(2), Owner(3), Owner(4));
        u.reserve(a, 100, t0).expect("a's share");
        assert!(matches!(u.reserve(a, 1, t0), Err(Error::Unavailable(m)) if m.contains("this account")));
        u.reserve(b, 100, t0).expect("b's share");
        u.reserve(c, 100, t0).expect("c's share");
        assert!(matches!(u.reserve(d, 100, t0), Err(Error::Unavailable(_))), "accounts fill three quarters");
        u.reserve(Owner::GATEWAY, 100, t0).expect("the gateway's quarter");
        // By count too.
        let u = Uploads::new(1 << 30);
        for _ in 0..MAX_PENDING / 4 {
            u.reserve(a, 0, t0).expect("within a's count");
        }
        assert!(u.reserve(a, 0, t0).is_err());
        u.reserve(b, 0, t0).expect("b is not held back by a");
    }

    #[test]
    fn reservations_are_bounded() {
        let u = Uploads::new(100);
        let t0 = Instant::now();
        u.reserve(Owner::GATEWAY, 60, t0).expect("fits");
        assert!(matches!(u.reserve(Owner::GATEWAY, 60, t0), Err(Error::Unavailable(_))));
        // Expired reservations free their room.
        u.reserve(Owner::GATEWAY, 60, t0 + TTL).expect("the first expired");
        for _ in 0..MAX_PENDING {
            let _ = u.reserve(Owner::GATEWAY, 0, t0 + TTL);
        }
        assert!(u.reserve(Owner::GATEWAY, 0, t0 + TTL).is_err());
    }
}
