//! State and change log: what clients need to sync by delta.
//!
//! Every account has a state, its modification sequence. Each change to an
//! object (an email, a mailbox, a thread) takes the next modseq and is logged
//! under `Space::Changes` as `account, kind, modseq → id, op`, in the same
//! transaction as the change itself. `changes(kind, since)` is then a range
//! scan from `since`: its cost is the number of changes, never the size of
//! the account.
//!
//! The log is compacted: only the newest `keep` modseqs are kept. Each kind
//! has its own *floor* (`Counter::KindFloor`): every change of that kind
//! after the floor is still in the log. Compaction deletes at most
//! [`COMPACT_STEP`] entries per kind per commit, scanning from that kind's
//! floor (never from 0, where every earlier compaction left tombstones), so
//! a commit's cost is what it deletes, whatever the account's history; and a
//! kind whose backlog is not yet gone keeps its lower floor, so `changes`
//! either returns every change since a state or says `cannotCalculateChanges`.
//!
//! `changes` reads the state, the floor and the log from one snapshot, so
//! its answer is one consistent cut: never an entry beyond `newState`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::account::{AccountId, Counter};
use crate::error::{Error, Result};
use crate::store::key::{self, Key};
use crate::store::{Db, KeyRange, Notice, Order, Reader, Space, StoreError, Txn};

pub mod push;

/// An account's state: its modification sequence. 0 before any change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct State(pub u64);

/// Which kind of object changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// An email.
    Email = 0,
    /// A mailbox (including its counts).
    Mailbox = 1,
    /// A thread (its member list).
    Thread = 2,
    /// A submission's status (the outbox).
    Submission = 3,
}

/// What happened to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// It came into being.
    Created = 0,
    /// Some property changed.
    Updated = 1,
    /// It is gone.
    Destroyed = 2,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        match v {
            0 => Some(Op::Created),
            1 => Some(Op::Updated),
            2 => Some(Op::Destroyed),
            _ => None,
        }
    }
}

/// Changes collected during one transaction, merged per object: created
/// then updated is created; created then destroyed is nothing; updated then
/// destroyed is destroyed.
#[derive(Debug, Default)]
pub struct ChangeSet {
    order: Vec<(Kind, u64)>,
    ops: HashMap<(Kind, u64), Option<Op>>,
}

impl ChangeSet {
    /// An empty set.
    pub fn new() -> Self {
        ChangeSet::default()
    }

    /// Notes one change.
    pub fn note(&mut self, kind: Kind, id: u64, op: Op) {
        let k = (kind, id);
        match self.ops.get(&k).copied() {
            None => {
                self.order.push(k);
                self.ops.insert(k, Some(op));
            }
            Some(prev) => {
                let merged = match (prev, op) {
                    (Some(Op::Created), Op::Destroyed) => None,
                    (Some(Op::Created), _) => Some(Op::Created),
                    (None, Op::Created) => Some(Op::Updated),
                    (_, Op::Destroyed) => Some(Op::Destroyed),
                    (p, Op::Updated) => p.or(Some(Op::Updated)),
                    (_, Op::Created) => Some(Op::Created),
                };
                self.ops.insert(k, merged);
            }
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.ops.values().all(Option::is_none)
    }

    /// Logs every change with its own modseq and returns the new state.
    /// `keep` bounds the log (older entries are compacted away).
    pub fn commit(self, txn: &mut Txn<'_>, account: AccountId, keep: u64) -> Result<State> {
        let state_key = Counter::State.key(account, 0);
        let mut state = txn.counter(Space::Counters, &state_key)?.max(0) as u64;
        let mut kinds = 0u8;
        for k in &self.order {
            let Some(Some(op)) = self.ops.get(k) else {
                continue;
            };
            state += 1;
            kinds |= 1 << k.0 as u8;
            txn.put(Space::Changes, log_key(account, k.0, state), log_value(k.1, *op));
        }
        txn.put(Space::Counters, state_key, (state as i64).to_be_bytes());
        compact(txn, account, State(state), keep)?;
        if kinds != 0 {
            txn.notify(Notice { account: account.0, state, kinds });
        }
        Ok(State(state))
    }
}

fn log_key(account: AccountId, kind: Kind, modseq: u64) -> Vec<u8> {
    Key::new().u64(account.0).u8(kind as u8).u64(modseq).build()
}

fn log_value(id: u64, op: Op) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.push(op as u8);
    v
}

/// Most entries of one kind deleted by one transaction's compaction, so no
/// write pays for a long backlog at once.
pub const COMPACT_STEP: usize = 512;

/// A kind's log is compacted once its floor is this many modseqs behind
/// the horizon: one scan deletes a batch, instead of every commit paying a
/// range scan to delete one or two entries. The log then holds at most
/// `keep + COMPACT_BATCH` modseqs of a kind (plus a backlog being worked
/// off), and the floor still says exactly where it begins.
pub const COMPACT_BATCH: u64 = 256;

/// Every kind, in log order.
pub const KINDS: [Kind; 4] = [Kind::Email, Kind::Mailbox, Kind::Thread, Kind::Submission];

fn floor_key(account: AccountId, kind: Kind) -> Vec<u8> {
    Counter::KindFloor.key(account, kind as u64)
}

/// Sets where `kind`'s log begins (migrations, compaction).
pub fn set_floor(txn: &mut Txn<'_>, account: AccountId, kind: Kind, floor: u64) {
    txn.put(Space::Counters, floor_key(account, kind), (floor as i64).to_be_bytes());
}

/// Where `kind`'s log begins, inside a transaction.
pub fn floor_in(txn: &Txn<'_>, account: AccountId, kind: Kind) -> Result<u64> {
    Ok(txn.counter(Space::Counters, &floor_key(account, kind))?.max(0) as u64)
}

/// Deletes each kind's log entries up to `state - keep`, at most
/// [`COMPACT_STEP`] per kind, starting at that kind's floor.
fn compact(txn: &mut Txn<'_>, account: AccountId, state: State, keep: u64) -> Result<()> {
    let Some(horizon) = state.0.checked_sub(keep) else {
        return Ok(());
    };
    for kind in KINDS {
        let floor = floor_in(txn, account, kind)?;
        if horizon <= floor.saturating_add(COMPACT_BATCH) {
            continue;
        }
        let range = KeyRange::between(log_key(account, kind, floor + 1), log_key(account, kind, horizon + 1));
        // Including this transaction's own entries: one that logs more
        // than `keep` changes must not leave some below the new floor.
        let old = txn.scan(Space::Changes, &range, Order::Ascending, COMPACT_STEP)?;
        let new_floor = if old.len() == COMPACT_STEP {
            // Not done this time: the floor only rises to what is gone.
            old.last().and_then(|(k, _)| key::read_u64(k, 9)).unwrap_or(floor)
        } else {
            horizon
        };
        for (k, _) in old {
            txn.delete(Space::Changes, k);
        }
        set_floor(txn, account, kind, new_floor);
    }
    Ok(())
}

/// Ids that changed since a state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The state asked about.
    pub old_state: State,
    /// The state these changes bring the client to.
    pub new_state: State,
    /// Whether more changes follow `new_state`.
    pub has_more: bool,
    /// Created since (and not destroyed).
    pub created: Vec<u64>,
    /// Updated since (and not created or destroyed since).
    pub updated: Vec<u64>,
    /// Destroyed since (and existing before).
    pub destroyed: Vec<u64>,
}

/// The account's current state.
pub fn state(db: &Db, account: AccountId) -> Result<State> {
    Ok(State(db.counter(Space::Counters, &Counter::State.key(account, 0))?.max(0) as u64))
}

/// The state inside a transaction.
pub fn state_in(txn: &Txn<'_>, account: AccountId) -> Result<State> {
    Ok(State(txn.counter(Space::Counters, &Counter::State.key(account, 0))?.max(0) as u64))
}

/// Changes of `kind` after `since`, at most `max` of them, read from one
/// snapshot.
pub fn changes(db: &Db, account: AccountId, kind: Kind, since: State, max: usize) -> Result<Changes> {
    let view = db.snapshot();
    let current = State(view.counter(Space::Counters, &Counter::State.key(account, 0))?.max(0) as u64);
    let floor = view.counter(Space::Counters, &floor_key(account, kind))?.max(0) as u64;
    if since.0 < floor {
        return Err(Error::CannotCalculateChanges(format!(
            "state {} is older than the change log (it starts at {floor}); resync",
            since.0
        )));
    }
    if since > current {
        return Err(Error::CannotCalculateChanges(format!(
            "state {} is newer than the account's state {}; resync",
            since.0, current.0
        )));
    }
    let range = KeyRange::between(log_key(account, kind, since.0 + 1), log_key(account, kind, current.0 + 1));
    let rows = view.scan(Space::Changes, &range, Order::Ascending, max + 1)?;
    let has_more = rows.len() > max;
    let mut merged = ChangeSet::new();
    let mut last = since.0;
    for (k, v) in rows.into_iter().take(max) {
        let corrupt = || StoreError::Corrupt { space: Space::Changes, detail: "log entry".into() };
        let modseq = key::read_u64(&k, 9).ok_or_else(corrupt)?;
        let id = key::read_u64(&v, 0).ok_or_else(corrupt)?;
        let op = v.get(8).copied().and_then(Op::from_u8).ok_or_else(corrupt)?;
        merged.note(kind, id, op);
        last = modseq;
    }
    let mut out = Changes {
        old_state: since,
        new_state: if has_more { State(last) } else { current },
        has_more,
        ..Changes::default()
    };
    for k in &merged.order {
        match merged.ops.get(k).copied().flatten() {
            Some(Op::Created) => out.created.push(k.1),
            Some(Op::Updated) => out.updated.push(k.1),
            Some(Op::Destroyed) => out.destroyed.push(k.1),
            None => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_merge_as_a_client_needs_them() {
        let mut c = ChangeSet::new();
        c.note(Kind::Email, 1, Op::Created);
        c.note(Kind::Email, 1, Op::Updated);
        c.note(Kind::Email, 2, Op::Created);
        c.note(Kind::Email, 2, Op::Destroyed);
        c.note(Kind::Email, 3, Op::Updated);
        c.note(Kind::Email, 3, Op::Destroyed);
        c.note(Kind::Email, 4, Op::Updated);
        c.note(Kind::Email, 4, Op::Updated);
        let got: Vec<_> = c.order.iter().map(|k| (k.1, c.ops[k])).collect();
        assert_eq!(
            got,
            vec![(1, Some(Op::Created)), (2, None), (3, Some(Op::Destroyed)), (4, Some(Op::Updated))]
        );
    }
}
