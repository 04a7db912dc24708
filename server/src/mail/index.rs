//! The date indexes of mailboxes and their counters.
//!
//! Each email has one entry per (mailbox, facet) it belongs to in
//! `Space::EmailIndex`, keyed `account, mailbox, facet, received, email`:
//! facet *all* always, *unread* while it lacks `$seen`, *flagged* while it
//! has `$flagged`; mailbox 0 (all mail) included. Each (mailbox, facet) has a
//! counter equal to its number of entries. [`apply`] moves an email from one
//! record to the next by the difference of their entry sets, so counters are
//! never recomputed and never drift.

use std::collections::BTreeSet;

use crate::account::{AccountId, Counter};
use crate::error::Result;
use crate::mail::{EmailRecord, MailboxId};
use crate::store::key::Key;
use roaring::RoaringTreemap;

use crate::store::{KeyRange, Order, Snapshot, Space, Txn};
use crate::sync::{ChangeSet, Kind, Op};

/// Which emails of a mailbox an index lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Facet {
    /// Every email.
    All = 0,
    /// Emails without `$seen`.
    Unread = 1,
    /// Emails with `$flagged`.
    Flagged = 2,
}

impl Facet {
    /// The counter of this facet.
    pub fn counter(self) -> Counter {
        match self {
            Facet::All => Counter::MailboxTotal,
            Facet::Unread => Counter::MailboxUnread,
            Facet::Flagged => Counter::MailboxFlagged,
        }
    }
}

/// Prefix of one (mailbox, facet) index.
pub fn prefix(account: AccountId, mailbox: MailboxId, facet: Facet) -> Vec<u8> {
    Key::new().u64(account.0).u64(mailbox.0).u8(facet as u8).build()
}

/// Prefix of one (mailbox, facet) index up to a received time.
pub fn at_time(account: AccountId, mailbox: MailboxId, facet: Facet, received_ms: i64) -> Vec<u8> {
    Key::new().u64(account.0).u64(mailbox.0).u8(facet as u8).u64(received_ms.max(0) as u64).build()
}

/// The index key of one email in one (mailbox, facet).
pub fn entry_key(account: AccountId, mailbox: MailboxId, facet: Facet, received_ms: i64, id: u64) -> Vec<u8> {
    Key::new().u64(account.0).u64(mailbox.0).u8(facet as u8).u64(received_ms.max(0) as u64).u64(id).build()
}

/// Offset of the email id in an index key.
pub const ID_OFFSET: usize = 25;

/// The email ids listed in `range` of one (mailbox, facet) index.
pub fn ids(view: &Snapshot, range: &KeyRange) -> Result<RoaringTreemap> {
    let mut out = RoaringTreemap::new();
    view.scan_all(Space::EmailIndex, range, Order::Ascending, |k, _| {
        if let Some(id) = crate::store::key::read_u64(k, ID_OFFSET) {
            out.insert(id);
        }
        Ok::<_, crate::error::Error>(true)
    })?;
    Ok(out)
}

/// The (mailbox, facet) pairs an email is listed under.
pub fn entries(e: &EmailRecord) -> BTreeSet<(MailboxId, Facet)> {
    let mut facets = vec![Facet::All];
    if e.is_unread() {
        facets.push(Facet::Unread);
    }
    if e.is_flagged() {
        facets.push(Facet::Flagged);
    }
    let mut out = BTreeSet::new();
    for mb in std::iter::once(MailboxId::ALL).chain(e.mailboxes.iter().copied()) {
        for f in &facets {
            out.insert((mb, *f));
        }
    }
    out
}

/// Moves an email's index entries and counters from `old` to `new` (either
/// may be absent: ingest, expunge). Mailboxes whose counts change are noted
/// as updated.
pub fn apply(
    txn: &mut Txn<'_>,
    account: AccountId,
    old: Option<&EmailRecord>,
    new: Option<&EmailRecord>,
    changes: &mut ChangeSet,
) -> Result<()> {
    let before = old.map(entries).unwrap_or_default();
    let after = new.map(entries).unwrap_or_default();
    // The received time never changes, but an entry keyed by the old one
    // must be removed with that key.
    if let Some(o) = old {
        for (mb, f) in before.difference(&after) {
            txn.delete(Space::EmailIndex, entry_key(account, *mb, *f, o.received_ms, o.id.0));
            txn.add(Space::Counters, &f.counter().key(account, mb.0), -1)?;
            if *mb != MailboxId::ALL {
                changes.note(Kind::Mailbox, mb.0, Op::Updated);
            }
        }
    }
    if let Some(n) = new {
        for (mb, f) in after.difference(&before) {
            txn.put(Space::EmailIndex, entry_key(account, *mb, *f, n.received_ms, n.id.0), Vec::new());
            txn.add(Space::Counters, &f.counter().key(account, mb.0), 1)?;
            if *mb != MailboxId::ALL {
                changes.note(Kind::Mailbox, mb.0, Op::Updated);
            }
        }
    }
    Ok(())
}
