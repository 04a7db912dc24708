//! Queries: which emails, in what order, which page.
//!
//! Listing a mailbox by date, and its unread or flagged emails, reads one
//! index (`Space::EmailIndex`) in key order and skips nothing: the first page
//! of a 100k-mail inbox costs the same as of a 10-mail one, and its total is
//! a counter. A date range narrows the same index scan. Other filters walk
//! that index and take their sets from the facet indexes (not read, not
//! flagged) and the search index (attachments, the words of a From
//! address); records are decoded only where an address must match exactly
//! (or threads collapse), and then only for the emails the sets admit.

use std::collections::HashSet;
use std::ops::Bound;

use crate::account::AccountId;
use crate::error::{Error, Result};
use crate::mail::index::{self, Facet};
use crate::mail::{EmailId, EmailRecord, MailboxId, Mailstore, mailbox_key};
use roaring::RoaringTreemap;

use crate::search::index as postings;
use crate::search::text::{self, Field};
use crate::store::{KeyRange, Order, Snapshot, Space, key};
use crate::sync::State;

/// A three-way filter: don't care, must, must not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tri {
    /// Either.
    #[default]
    Any,
    /// Must hold.
    Yes,
    /// Must not hold.
    No,
}

impl Tri {
    fn admits(self, v: bool) -> bool {
        match self {
            Tri::Any => true,
            Tri::Yes => v,
            Tri::No => !v,
        }
    }
}

/// Which emails a query selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this mailbox (`None`: all mail).
    pub mailbox: Option<MailboxId>,
    /// Unread (no `$seen`).
    pub unread: Tri,
    /// Flagged.
    pub flagged: Tri,
    /// With attachments.
    pub has_attachment: Tri,
    /// Received at or after (ms).
    pub after: Option<i64>,
    /// Received before (ms).
    pub before: Option<i64>,
    /// Exact From address (case-insensitive).
    pub from: Option<String>,
    /// Exact address in To, Cc or Bcc (case-insensitive).
    pub to: Option<String>,
}

/// Where a page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this index of the full result.
    Position(u64),
    /// At this email, shifted by an offset (negative: earlier in the result).
    Anchor(EmailId, i64),
}

/// A query: filter, order, page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Selection.
    pub filter: Filter,
    /// Newest first when true.
    pub newest_first: bool,
    /// Page start.
    pub start: Start,
    /// Page size.
    pub limit: usize,
    /// One result per thread (its first in the sort order).
    pub collapse_threads: bool,
    /// Only emails this search matches.
    pub text: Option<crate::search::query::Node>,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            filter: Filter::default(),
            newest_first: true,
            start: Start::Position(0),
            limit: 50,
            collapse_threads: false,
            text: None,
        }
    }
}

/// Positions up to this deep are read straight from the index on the
/// caller's thread; deeper ones (and anchors) count their way there.
pub const SHALLOW_POSITION: u64 = 1000;

impl Query {
    /// Whether answering may walk the whole mailbox (a filter the index
    /// does not decide, collapsing by thread, or a deep page): callers run
    /// such queries off their async workers.
    pub fn is_heavy(&self) -> bool {
        let f = &self.filter;
        let decided_by_index = (f.unread == Tri::Any || f.unread == Tri::Yes)
            && (f.flagged == Tri::Any || (f.flagged == Tri::Yes && f.unread == Tri::Any));
        !decided_by_index
            || f.has_attachment != Tri::Any
            || f.from.is_some()
            || f.to.is_some()
            || f.after.is_some()
            || f.before.is_some()
            || self.collapse_threads
            || self.text.is_some()
            || match self.start {
                Start::Position(p) => p > SHALLOW_POSITION,
                Start::Anchor(..) => true,
            }
    }
}

/// One page of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPage {
    /// The emails, in order.
    pub ids: Vec<EmailId>,
    /// Index of `ids[0]` in the full result.
    pub position: u64,
    /// Size of the full result.
    pub total: u64,
    /// The account state the page reflects.
    pub state: State,
}

fn id_of(k: &[u8]) -> Result<EmailId> {
    key::read_u64(k, index::ID_OFFSET).map(EmailId).ok_or_else(|| {
        crate::store::StoreError::Corrupt { space: Space::EmailIndex, detail: "index key".into() }.into()
    })
}

fn has_address(list: &[crate::mail::Addr], want: &str) -> bool {
    list.iter().any(|a| a.email.eq_ignore_ascii_case(want))
}

/// The residual conditions of a filter as sets of email ids, read from
/// one snapshot: facet sets are exact for every email; the search index's
/// sets are exact for the emails it holds (`indexed`), and an email it does
/// not hold is left to its record.
struct Residual {
    /// (set, must be in it) from the facet indexes.
    facets: Vec<(RoaringTreemap, bool)>,
    /// Emails in the search index.
    indexed: RoaringTreemap,
    /// (set, must be in it) from the search index.
    words: Vec<(RoaringTreemap, bool)>,
    /// The emails the query's search matches.
    text: Option<RoaringTreemap>,
}

impl Residual {
    fn read(view: &Snapshot, account: AccountId, f: &Filter, unread: Tri, flagged: Tri) -> Result<Self> {
        let mut facets = Vec::new();
        for (tri, facet) in [(unread, Facet::Unread), (flagged, Facet::Flagged)] {
            if tri != Tri::Any {
                let all = KeyRange::prefix(&index::prefix(account, MailboxId::ALL, facet));
                facets.push((index::ids(view, &all)?, tri == Tri::Yes));
            }
        }
        let mut words = Vec::new();
        let mut indexed = RoaringTreemap::new();
        let from_words = f.from.as_deref().map(text::tokens).unwrap_or_default();
        if f.has_attachment != Tri::Any || !from_words.is_empty() {
            let index = postings::view(view, account.0)?;
            let meta = |t: &str| index.postings(view, &postings::term_key(Field::Meta, t));
            indexed = index.documents();
            if f.has_attachment != Tri::Any {
                words.push((meta(text::ATTACHMENT)?, f.has_attachment == Tri::Yes));
            }
            for w in &from_words {
                words.push((index.postings(view, &postings::term_key(Field::From, w))?, true));
            }
        }
        Ok(Residual { facets, indexed, words, text: None })
    }

    /// `Some(false)`: the email fails the filter; `Some(true)`: the sets
    /// admit it; `None`: its record must decide.
    fn decide(&self, id: u64) -> Option<bool> {
        if self.text.as_ref().is_some_and(|t| !t.contains(id)) {
            return Some(false);
        }
        if self.facets.iter().any(|(set, want)| set.contains(id) != *want) {
            return Some(false);
        }
        if self.words.is_empty() {
            return Some(true);
        }
        if !self.indexed.contains(id) {
            return None;
        }
        Some(self.words.iter().all(|(set, want)| set.contains(id) == *want))
    }
}

impl Mailstore {
    /// One page of the emails a query selects.
    pub fn query(&self, account: AccountId, q: &Query) -> Result<QueryPage> {
        let state = self.state(account)?;
        let f = &q.filter;
        let mailbox = f.mailbox.unwrap_or(MailboxId::ALL);
        if mailbox != MailboxId::ALL
            && self.db().get(Space::Mailboxes, &mailbox_key(account, mailbox))?.is_none()
        {
            return Err(Error::not_found(format!("no mailbox {}", mailbox.0)));
        }
        let facet = match (f.unread, f.flagged) {
            (Tri::Yes, _) => Facet::Unread,
            (_, Tri::Yes) => Facet::Flagged,
            _ => Facet::All,
        };
        // What the chosen index does not decide.
        let unread = if facet == Facet::Unread { Tri::Any } else { f.unread };
        let flagged = if facet == Facet::Flagged { Tri::Any } else { f.flagged };
        let residual = unread != Tri::Any
            || flagged != Tri::Any
            || f.has_attachment != Tri::Any
            || f.from.is_some()
            || f.to.is_some()
            || q.text.is_some();

        let prefix = index::prefix(account, mailbox, facet);
        let full = KeyRange::prefix(&prefix);
        let ranged = f.after.is_some() || f.before.is_some();
        let range = KeyRange {
            start: match f.after {
                Some(a) => Bound::Included(index::at_time(account, mailbox, facet, a)),
                None => full.start.clone(),
            },
            end: match f.before {
                Some(b) => Bound::Excluded(index::at_time(account, mailbox, facet, b)),
                None => full.end.clone(),
            },
        };
        let order = if q.newest_first { Order::Descending } else { Order::Ascending };

        if !residual && !q.collapse_threads {
            let total = if ranged {
                self.count(&range, order)?
            } else {
                self.counter(facet.counter(), account, mailbox.0)?
            };
            let start = match q.start {
                Start::Position(p) => p,
                Start::Anchor(anchor, offset) => {
                    let e = self
                        .email(account, anchor)?
                        .ok_or_else(|| Error::not_found(format!("anchor {} not found", anchor.0)))?;
                    let k = index::entry_key(account, mailbox, facet, e.received_ms, anchor.0);
                    if self.db().get(Space::EmailIndex, &k)?.is_none() || !range.contains(&k) {
                        return Err(Error::not_found(format!("anchor {} is not in the results", anchor.0)));
                    }
                    let before = self.count(&range.after(&k, reverse(order)), order)?;
                    (before as i64).saturating_add(offset).max(0) as u64
                }
            };
            if start <= SHALLOW_POSITION {
                let want = (start as usize).saturating_add(q.limit);
                let rows = self.db().scan(Space::EmailIndex, &range, order, want)?;
                let ids =
                    rows.iter().skip(start as usize).map(|(k, _)| id_of(k)).collect::<Result<Vec<_>>>()?;
                return Ok(QueryPage { ids, position: start, total, state });
            }
            // A deep page: skip to it without keeping what is skipped.
            let mut ids = Vec::with_capacity(q.limit.min(1024));
            let mut n = 0u64;
            let mut err = None;
            self.db().scan_all(Space::EmailIndex, &range, order, |k, _| {
                n += 1;
                if n <= start {
                    return Ok::<_, Error>(true);
                }
                match id_of(k) {
                    Ok(id) => ids.push(id),
                    Err(e) => err = Some(e),
                }
                Ok(err.is_none() && ids.len() < q.limit)
            })?;
            if let Some(e) = err {
                return Err(e);
            }
            return Ok(QueryPage { ids, position: start, total, state });
        }

        // Walk the index from one snapshot. What the facet indexes and the
        // search index decide (read or not, flagged or not, attachments, the
        // words of a From address) is settled from their sets; only
        // emails those admit, and only when an address must be compared
        // exactly or threads collapsed, are decoded.
        let view = self.db().snapshot();
        // The sets span the whole account: worth reading when the walk
        // covers a good part of it, not for a small folder of a big account
        // or a narrow date range, where the records are fewer than the keys.
        let walked = self.counter(Facet::All.counter(), account, mailbox.0)?;
        let everything = self.counter(Facet::All.counter(), account, MailboxId::ALL.0)?;
        // A search is only ever decided by its set.
        let sets = if q.text.is_some() || (!ranged && walked.saturating_mul(8) >= everything) {
            let mut sets = Residual::read(&view, account, f, unread, flagged)?;
            if let Some(node) = &q.text {
                sets.text = Some(self.matching(&view, account, node)?);
            }
            Some(sets)
        } else {
            None
        };
        let from = f.from.as_deref();
        let to = f.to.as_deref();
        let admits = |e: &EmailRecord| {
            unread.admits(e.is_unread())
                && flagged.admits(e.is_flagged())
                && f.has_attachment.admits(e.has_attachment)
                && from.is_none_or(|a| has_address(&e.envelope.from, a))
                && to.is_none_or(|a| {
                    has_address(&e.envelope.to, a)
                        || has_address(&e.envelope.cc, a)
                        || has_address(&e.envelope.bcc, a)
                })
        };
        let must_decode = from.is_some() || to.is_some() || q.collapse_threads;
        let mut matches: Vec<EmailId> = Vec::new();
        let mut threads = HashSet::new();
        let mut examined = 0u64;
        let mut err = None;
        view.scan_all(Space::EmailIndex, &range, order, |k, _| {
            let step = (|| -> Result<()> {
                let id = id_of(k)?;
                match sets.as_ref().and_then(|s| s.decide(id.0)) {
                    Some(false) => return Ok(()),
                    Some(true) if !must_decode => {
                        matches.push(id);
                        return Ok(());
                    }
                    _ => {}
                }
                examined += 1;
                let Some(e) = crate::mail::read_email(&view, account, id)? else {
                    return Ok(());
                };
                if admits(&e) && (!q.collapse_threads || threads.insert(e.thread)) {
                    matches.push(id);
                }
                Ok(())
            })();
            match step {
                Ok(()) => Ok::<_, Error>(true),
                Err(e) => {
                    err = Some(e);
                    Ok(false)
                }
            }
        })?;
        self.note_examined(examined);
        if let Some(e) = err {
            return Err(e);
        }
        let total = matches.len() as u64;
        let start = match q.start {
            Start::Position(p) => p,
            Start::Anchor(anchor, offset) => {
                let at = matches
                    .iter()
                    .position(|i| *i == anchor)
                    .ok_or_else(|| Error::not_found(format!("anchor {} is not in the results", anchor.0)))?;
                (at as i64).saturating_add(offset).max(0) as u64
            }
        };
        let ids = matches.into_iter().skip(start as usize).take(q.limit).collect();
        Ok(QueryPage { ids, position: start, total, state })
    }

    /// Number of index keys in `range`.
    fn count(&self, range: &KeyRange, order: Order) -> Result<u64> {
        let mut n = 0u64;
        self.db().scan_all(Space::EmailIndex, range, order, |_, _| {
            n += 1;
            Ok::<_, Error>(true)
        })?;
        Ok(n)
    }
}

fn reverse(o: Order) -> Order {
    match o {
        Order::Ascending => Order::Descending,
        Order::Descending => Order::Ascending,
    }
}

/// What changed in a query's results between two states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryChanges {
    /// The state the changes start from.
    pub old_state: State,
    /// The state they bring the results to.
    pub new_state: State,
    /// Ids that may have left the results.
    pub removed: Vec<EmailId>,
    /// Ids in the results now, with their index, in index order.
    pub added: Vec<(EmailId, u64)>,
    /// Size of the whole result now.
    pub total: u64,
}

impl QueryChanges {
    /// Whether nothing changed for the holder of the results.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty()
    }
}

/// How a window of results moved from `old` to `new`: applied to `old`
/// (remove, then insert at the indexes, then keep the window's length) it
/// gives `new`. Indexes are within the window (`new.position` is its start).
pub fn window_changes(old: &QueryPage, new: &QueryPage) -> QueryChanges {
    let before: HashSet<EmailId> = old.ids.iter().copied().collect();
    let after: HashSet<EmailId> = new.ids.iter().copied().collect();
    let removed = old.ids.iter().copied().filter(|i| !after.contains(i)).collect();
    // Survivors keep their relative order (the sort is by arrival), so
    // inserting the newcomers at their places rebuilds the window.
    let added = new
        .ids
        .iter()
        .enumerate()
        .filter(|(_, i)| !before.contains(i))
        .map(|(at, i)| (*i, at as u64))
        .collect();
    QueryChanges { old_state: old.state, new_state: new.state, removed, added, total: new.total }
}

impl Mailstore {
    /// What changed in the whole result of `q` (its start and limit are
    /// ignored) since `since`, from the change log: every email changed
    /// since is a candidate for `removed`; those in the result now are
    /// `added` with their index. At most `max` changed emails; beyond, or
    /// for thread-collapsed queries, `CannotCalculateChanges`.
    pub fn query_changes(
        &self,
        account: AccountId,
        q: &Query,
        since: State,
        max: usize,
    ) -> Result<QueryChanges> {
        if q.collapse_threads {
            return Err(Error::CannotCalculateChanges(
                "changes of a thread-collapsed query are not calculated; query again".into(),
            ));
        }
        let c = self.changes(account, crate::sync::Kind::Email, since, max)?;
        if c.has_more {
            return Err(Error::CannotCalculateChanges(format!(
                "more than {max} emails changed since state {}; query again",
                since.0
            )));
        }
        let removed: Vec<EmailId> = c.updated.iter().chain(&c.destroyed).map(|i| EmailId(*i)).collect();
        let mut added = Vec::new();
        for id in c.created.iter().chain(&c.updated).map(|i| EmailId(*i)) {
            let probe = Query { start: Start::Anchor(id, 0), limit: 1, ..q.clone() };
            match self.query(account, &probe) {
                Ok(page) if page.ids.first() == Some(&id) => added.push((id, page.position)),
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        added.sort_by_key(|(_, at)| *at);
        let total = self.query(account, &Query { start: Start::Position(0), limit: 0, ..q.clone() })?.total;
        Ok(QueryChanges { old_state: since, new_state: c.new_state, removed, added, total })
    }
}
