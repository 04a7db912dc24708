//! Search over an account's mail: a parsed query evaluated against the
//! search index (words, phrases, attachments) and the mailbox indexes
//! (mailboxes, unread, flagged, dates), newest first or by relevance, with
//! snippets. All reads come from one snapshot, so a result agrees with one
//! commit.
//!
//! Phrases of two words are answered by the index of adjacent word pairs;
//! longer ones by their pairs, then checked against the text of each
//! candidate. Sizes (`larger:`, `smaller:`) are checked on the candidates'
//! records.

use std::collections::HashMap;

use roaring::RoaringTreemap;

use crate::account::AccountId;
use crate::error::{Error, Result};
use crate::mail::index::{self, Facet};
use crate::mail::parse::Parsed;
use crate::mail::{EmailId, EmailRecord, MailboxId, Mailstore, Role, decode, email_key};
use crate::search::index as postings;
use crate::search::query::{Flag, Node};
use crate::search::text::{self, Document, Field, TEXT_FIELDS};
use crate::store::{KeyRange, Order, Reader, Snapshot, Space};
use crate::sync::State;

/// Most candidates a phrase of three or more words is checked against.
pub const MAX_PHRASE_CHECKS: u64 = 5000;
/// Longest snippet, in characters around the first match.
const SNIPPET_CHARS: usize = 160;

/// Calls `f` with each searchable text of a parsed message and its field.
fn each_field(parsed: &Parsed, mut f: impl FnMut(Field, &str)) {
    f(Field::Subject, &parsed.envelope.subject);
    let addrs = |list: &[crate::mail::Addr]| {
        list.iter().map(|a| format!("{} {}", a.name, a.email)).collect::<Vec<_>>().join(", ")
    };
    f(Field::From, &addrs(&parsed.envelope.from));
    f(Field::To, &addrs(&parsed.envelope.to));
    f(Field::Cc, &addrs(&parsed.envelope.cc));
    f(Field::Body, &parsed.text);
    for p in parsed.body.walk() {
        if !p.file_name.is_empty() {
            f(Field::Filename, &p.file_name);
        }
    }
}

/// The searchable text of a parsed message.
pub fn document(parsed: &Parsed) -> Document {
    let mut fields = Vec::new();
    each_field(parsed, |field, text| fields.push((field, text.to_owned())));
    Document { fields, has_attachment: parsed.has_attachment }
}

/// The pair term of two adjacent words (a space never occurs in a word).
pub fn pair(a: &str, b: &str) -> String {
    format!("{a} {b}")
}

/// The index terms of a parsed message: the meta terms, then each text's
/// words and adjacent pairs (as [`pair`] makes them) per field;
/// `postings::encode` sorts them and drops duplicates.
pub fn index_terms(parsed: &Parsed) -> postings::Terms {
    let mut terms = postings::Terms::default();
    terms.word(Field::Meta, text::ALL);
    if parsed.has_attachment {
        terms.word(Field::Meta, text::ATTACHMENT);
    }
    each_field(parsed, |field, t| {
        let mut prev = None;
        text::each_word(t, |w| {
            let at = terms.word(field, w);
            if let Some(p) = prev {
                terms.pair(field, p, at);
            }
            prev = Some(at);
        });
    });
    terms
}

/// One snippet of a hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    /// "subject", "body" or "filename".
    pub field: &'static str,
    /// The text.
    pub text: String,
    /// Byte ranges of matched words in `text`.
    pub highlights: Vec<(u32, u32)>,
}

/// The order of search results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SearchOrder {
    /// Newest first.
    #[default]
    Newest,
    /// Best match first: each word of the query adds its rarity in the
    /// account (ln(1 + emails / emails with it)) times the weight of the
    /// best field it is in (subject 3, from and file names 2, to and cc
    /// 1.5, body 1); equal scores newest first. A query of filters alone
    /// (no words) is newest first.
    Relevance,
}

/// A field's weight in [`SearchOrder::Relevance`].
fn field_weight(f: Field) -> f64 {
    match f {
        Field::Subject => 3.0,
        Field::From | Field::Filename => 2.0,
        Field::To | Field::Cc => 1.5,
        _ => 1.0,
    }
}

/// One result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The email.
    pub id: EmailId,
    /// Where it matched.
    pub snippets: Vec<Snippet>,
}

/// A page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Newest first.
    pub hits: Vec<Hit>,
    /// Matches in all.
    pub total: u64,
    /// The account's state the result is of.
    pub state: State,
}

struct Eval<'a> {
    store: &'a Mailstore,
    view: &'a Snapshot,
    account: AccountId,
    universe: Option<RoaringTreemap>,
    index: postings::View,
    records: HashMap<u64, Option<EmailRecord>>,
}

impl Eval<'_> {
    fn universe(&mut self) -> Result<RoaringTreemap> {
        if self.universe.is_none() {
            self.universe = Some(self.index.documents());
        }
        Ok(self.universe.clone().unwrap_or_default())
    }

    fn term(&self, field: Field, word: &str, prefix: bool) -> Result<RoaringTreemap> {
        if prefix {
            self.index.prefixed(self.view, field, word)
        } else {
            self.index.postings(self.view, &postings::term_key(field, word))
        }
    }

    fn fields(field: Option<Field>) -> Vec<Field> {
        field.map_or_else(|| TEXT_FIELDS.to_vec(), |f| vec![f])
    }

    fn facet(&self, mailbox: MailboxId, facet: Facet) -> Result<RoaringTreemap> {
        index::ids(self.view, &KeyRange::prefix(&index::prefix(self.account, mailbox, facet)))
    }

    /// Emails received in `[from, to)` (ms), from the all-mail date index.
    fn received(&self, from: i64, to: i64) -> Result<RoaringTreemap> {
        let start = index::at_time(self.account, MailboxId(0), Facet::All, from);
        let end = index::at_time(self.account, MailboxId(0), Facet::All, to);
        index::ids(self.view, &KeyRange::between(start, end))
    }

    fn mailbox(&self, name: &str) -> Result<MailboxId> {
        let boxes = self.store.mailbox_records(self.account)?;
        let lower = name.to_lowercase();
        let role = match lower.as_str() {
            "inbox" => Some(Role::Inbox),
            "sent" => Some(Role::Sent),
            "drafts" => Some(Role::Drafts),
            "junk" | "spam" => Some(Role::Junk),
            "trash" => Some(Role::Trash),
            "archive" => Some(Role::Archive),
            _ => None,
        };
        boxes
            .iter()
            .find(|m| m.name.to_lowercase() == lower)
            .or_else(|| role.and_then(|r| boxes.iter().find(|m| m.role == r)))
            .map(|m| m.id)
            .ok_or_else(|| Error::not_found(format!("in:{name}: no such mailbox")))
    }

    fn record(&mut self, id: u64) -> Result<Option<EmailRecord>> {
        if let Some(r) = self.records.get(&id) {
            return Ok(r.clone());
        }
        let r = crate::mail::read_email(self.view, self.account, EmailId(id))?;
        self.records.insert(id, r.clone());
        Ok(r)
    }

    fn document(&mut self, id: u64) -> Result<Option<Document>> {
        let Some(record) = self.record(id)? else { return Ok(None) };
        let raw = crate::mail::raw_from(self.view, &record)?;
        Ok(Some(document(&crate::mail::parse::parse(&raw))))
    }

    /// The set of a mailbox and a flag among `pos` (the positive items of
    /// an And), taking both out of it; `None` when there is no such pair.
    fn mailbox_facet(&mut self, pos: &mut Vec<&Node>) -> Result<Option<RoaringTreemap>> {
        let Some(mi) = pos.iter().position(|n| matches!(n, Node::In(_) | Node::InId(_))) else {
            return Ok(None);
        };
        let Some(fi) = pos.iter().position(|n| matches!(n, Node::Is(Flag::Unread) | Node::Is(Flag::Flagged)))
        else {
            return Ok(None);
        };
        let mailbox = match pos[mi] {
            Node::In(name) => self.mailbox(name)?,
            Node::InId(id) => MailboxId(*id),
            _ => return Ok(None),
        };
        let facet = if matches!(pos[fi], Node::Is(Flag::Unread)) { Facet::Unread } else { Facet::Flagged };
        let set = self.facet(mailbox, facet)?;
        pos.remove(mi.max(fi));
        pos.remove(mi.min(fi));
        Ok(Some(set))
    }

    fn eval(&mut self, node: &Node) -> Result<RoaringTreemap> {
        Ok(match node {
            Node::Term { field, word, prefix } => {
                let mut out = RoaringTreemap::new();
                for f in Self::fields(*field) {
                    out |= self.term(f, word, *prefix)?;
                }
                out
            }
            Node::Phrase { field, words } => {
                let mut out = RoaringTreemap::new();
                for f in Self::fields(*field) {
                    let mut set: Option<RoaringTreemap> = None;
                    for w in words.windows(2) {
                        let s = self.term(f, &pair(&w[0], &w[1]), false)?;
                        set = Some(match set {
                            Some(acc) => acc & s,
                            None => s,
                        });
                    }
                    let mut set = set.unwrap_or_default();
                    if words.len() > 2 && !set.is_empty() {
                        if set.len() > MAX_PHRASE_CHECKS {
                            return Err(Error::LimitExceeded(format!(
                                "the phrase \"{}\" is too common to check ({} candidates); add words",
                                words.join(" "),
                                set.len()
                            )));
                        }
                        let mut keep = RoaringTreemap::new();
                        for id in set.iter() {
                            if let Some(doc) = self.document(id)?
                                && doc.field_tokens(f).iter().any(|t| contains_run(t, words))
                            {
                                keep.insert(id);
                            }
                        }
                        set = keep;
                    }
                    out |= set;
                }
                out
            }
            Node::And(items) => {
                let (sizes, sets): (Vec<&Node>, Vec<&Node>) =
                    items.iter().partition(|n| matches!(n, Node::Larger(_) | Node::Smaller(_)));
                let (negs, mut pos): (Vec<&Node>, Vec<&Node>) =
                    sets.into_iter().partition(|n| matches!(n, Node::Not(_)));
                // `in:X is:unread` (or `is:flagged`) is one index, the
                // mailbox's own unread (flagged) list: read it instead of
                // the whole mailbox and the whole account's unread.
                let own_facet = self.mailbox_facet(&mut pos)?;
                let mut rest = pos.iter();
                let mut acc = match own_facet {
                    Some(set) => set,
                    None => match rest.next() {
                        Some(first) => self.eval(first)?,
                        None => self.universe()?,
                    },
                };
                for n in rest {
                    if acc.is_empty() {
                        break;
                    }
                    acc &= self.eval(n)?;
                }
                for n in negs {
                    if let Node::Not(inner) = n
                        && !acc.is_empty()
                    {
                        acc -= self.eval(inner)?;
                    }
                }
                for n in sizes {
                    acc = self.sizes(acc, n)?;
                }
                acc
            }
            Node::Or(items) => {
                let mut acc = RoaringTreemap::new();
                for n in items {
                    acc |= self.eval(n)?;
                }
                acc
            }
            Node::Not(inner) => {
                let all = self.universe()?;
                all - self.eval(inner)?
            }
            Node::Is(Flag::Unread) => self.facet(MailboxId(0), Facet::Unread)?,
            Node::Is(Flag::Read) => self.universe()? - self.facet(MailboxId(0), Facet::Unread)?,
            Node::Is(Flag::Flagged) => self.facet(MailboxId(0), Facet::Flagged)?,
            Node::In(name) => {
                let m = self.mailbox(name)?;
                self.facet(m, Facet::All)?
            }
            Node::InId(m) => self.facet(MailboxId(*m), Facet::All)?,
            Node::HasAttachment => {
                self.index.postings(self.view, &postings::term_key(Field::Meta, text::ATTACHMENT))?
            }
            Node::Before(t) => self.received(0, *t)?,
            Node::After(t) => self.received(*t, i64::MAX)?,
            Node::Larger(_) | Node::Smaller(_) => {
                let all = self.universe()?;
                self.sizes(all, node)?
            }
        })
    }

    /// Keeps the candidates whose size satisfies `node`.
    fn sizes(&mut self, candidates: RoaringTreemap, node: &Node) -> Result<RoaringTreemap> {
        let mut keep = RoaringTreemap::new();
        for id in candidates.iter() {
            let Some(r) = self.record(id)? else { continue };
            let ok = match node {
                Node::Larger(n) => r.size > *n,
                Node::Smaller(n) => r.size < *n,
                _ => true,
            };
            if ok {
                keep.insert(id);
            }
        }
        Ok(keep)
    }
}

/// Whether `words` occur in `tokens` one after another.
fn contains_run(tokens: &[String], words: &[String]) -> bool {
    !words.is_empty() && tokens.windows(words.len()).any(|w| w == words)
}

/// The positive words of a query with their scopes: (field, word, prefix).
fn scoped_words(node: &Node, out: &mut Vec<(Option<Field>, String, bool)>) {
    match node {
        Node::Term { field, word, prefix } => out.push((*field, word.clone(), *prefix)),
        Node::Phrase { field, words } => out.extend(words.iter().map(|w| (*field, w.clone(), false))),
        Node::And(items) | Node::Or(items) => items.iter().for_each(|n| scoped_words(n, out)),
        _ => {}
    }
}

/// `set` in [`SearchOrder::Relevance`]: the best first.
fn by_relevance(ev: &mut Eval<'_>, query: &Node, set: &RoaringTreemap) -> Result<Vec<u64>> {
    let mut words = Vec::new();
    scoped_words(query, &mut words);
    words.dedup();
    let n = ev.universe()?.len().max(1) as f64;
    let mut score: HashMap<u64, f64> = HashMap::with_capacity(set.len().min(1 << 20) as usize);
    for (scope, word, prefix) in &words {
        // The best field of this word in each email, and how many emails
        // of the account have the word at all.
        let mut best: HashMap<u64, f64> = HashMap::new();
        let mut having = RoaringTreemap::new();
        for field in Eval::fields(*scope) {
            let postings = ev.term(field, word, *prefix)?;
            for id in &(&postings & set) {
                let w = best.entry(id).or_insert(0.0);
                *w = w.max(field_weight(field));
            }
            having |= postings;
        }
        let rarity = (1.0 + n / having.len().max(1) as f64).ln();
        for (id, w) in best {
            *score.entry(id).or_insert(0.0) += w * rarity;
        }
    }
    let mut ranked: Vec<(u64, f64)> =
        set.iter().map(|id| (id, score.get(&id).copied().unwrap_or(0.0))).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    Ok(ranked.into_iter().map(|(id, _)| id).collect())
}

/// The positive words of a query (what snippets highlight): (word, prefix).
fn positive_words(node: &Node, out: &mut Vec<(String, bool)>) {
    let mut scoped = Vec::new();
    scoped_words(node, &mut scoped);
    out.extend(scoped.into_iter().map(|(_, word, prefix)| (word, prefix)));
}

/// A snippet of `text` around its first word matching `words`.
fn snippet(field: &'static str, text: &str, words: &[(String, bool)]) -> Option<Snippet> {
    let matches =
        |w: &str| words.iter().any(|(q, prefix)| if *prefix { w.starts_with(q.as_str()) } else { w == q });
    let hits: Vec<(usize, usize)> =
        text::words(text).filter(|(_, _, w)| matches(w)).map(|(s, e, _)| (s, e)).collect();
    let &(first, _) = hits.first()?;
    // A window of about SNIPPET_CHARS characters, starting a little before
    // the first match, on character boundaries.
    let mut start = first;
    let mut back = 0;
    while start > 0 && back < SNIPPET_CHARS / 4 {
        start -= 1;
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        back += 1;
    }
    let mut end = start;
    let mut n = 0;
    while end < text.len() && n < SNIPPET_CHARS {
        end += 1;
        while end < text.len() && !text.is_char_boundary(end) {
            end += 1;
        }
        n += 1;
    }
    let raw = &text[start..end];
    // Whitespace collapsed, highlights moved with it.
    let mut out = String::with_capacity(raw.len());
    let mut map = vec![0usize; raw.len() + 1];
    let mut last_space = false;
    for (i, c) in raw.char_indices() {
        map[i] = out.len();
        if c.is_whitespace() {
            if !last_space && !out.is_empty() {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    map[raw.len()] = out.len();
    let highlights = hits
        .iter()
        .filter(|(s, e)| *s >= start && *e <= end)
        .map(|(s, e)| (map[s - start] as u32, map[e - start] as u32))
        .collect();
    Some(Snippet { field, text: out.trim_end().to_owned(), highlights })
}

impl Mailstore {
    /// Emails of `account` matching `query`, newest first: `limit` of them
    /// from `position`, with snippets when `snippets`. `within`, when set,
    /// limits the search to those mailboxes (a restricted session).
    pub fn search(
        &self,
        account: AccountId,
        query: &Node,
        within: Option<&[MailboxId]>,
        position: u64,
        limit: usize,
        snippets: bool,
    ) -> Result<Found> {
        self.search_ordered(account, query, within, position, limit, snippets, SearchOrder::Newest)
    }

    /// The emails of `account` that `query` matches, as of `view`.
    pub(crate) fn matching(
        &self,
        view: &Snapshot,
        account: AccountId,
        query: &Node,
    ) -> Result<RoaringTreemap> {
        let index = postings::view(view, account.0)?;
        let mut ev = Eval { store: self, view, account, universe: None, index, records: HashMap::new() };
        ev.eval(query)
    }

    /// [`Mailstore::search`] in `order`.
    #[allow(clippy::too_many_arguments)]
    pub fn search_ordered(
        &self,
        account: AccountId,
        query: &Node,
        within: Option<&[MailboxId]>,
        position: u64,
        limit: usize,
        snippets: bool,
        order: SearchOrder,
    ) -> Result<Found> {
        let view = self.db().snapshot();
        let state = State(
            view.counter(Space::Counters, &crate::account::Counter::State.key(account, 0))?.max(0) as u64,
        );
        let index = postings::view(&view, account.0)?;
        let mut ev =
            Eval { store: self, view: &view, account, universe: None, index, records: HashMap::new() };
        let mut set = ev.eval(query)?;
        if let Some(boxes) = within {
            let mut allowed = RoaringTreemap::new();
            for m in boxes {
                allowed |= ev.facet(*m, Facet::All)?;
            }
            set &= allowed;
        }
        let total = set.len();
        let mut words = Vec::new();
        positive_words(query, &mut words);
        let ranked = match order {
            SearchOrder::Relevance => Some(by_relevance(&mut ev, query, &set)?),
            SearchOrder::Newest => None,
        };
        let mut hits = Vec::new();
        let mut at = position;
        while hits.len() < limit && at < total {
            let id = match &ranked {
                Some(r) => r[at as usize],
                // Newest first: email ids grow with arrival.
                None => match set.select(total - 1 - at) {
                    Some(id) => id,
                    None => break,
                },
            };
            at += 1;
            let mut hit = Hit { id: EmailId(id), snippets: Vec::new() };
            // Snippets show matched words: none to show, nothing to parse.
            if snippets
                && !words.is_empty()
                && let Some(doc) = ev.document(id)?
            {
                for (field, text) in &doc.fields {
                    let name = match field {
                        Field::Subject => "subject",
                        Field::Body => "body",
                        Field::Filename => "attachment",
                        _ => continue,
                    };
                    if hit.snippets.iter().any(|s| s.field == name) {
                        continue;
                    }
                    if let Some(s) = snippet(name, text, &words) {
                        hit.snippets.push(s);
                    }
                }
            }
            hits.push(hit);
        }
        Ok(Found { hits, total, state })
    }
}

/// Rebuilds `account`'s search index from its mail (the migration to
/// format 6, `quaild reindex`): clears it, then indexes every email, a
/// batch per transaction; `progress` hears every 5,000. Returns how many
/// emails were indexed.
pub fn reindex(db: &crate::store::Db, account: AccountId, progress: &mut dyn FnMut(&str)) -> Result<u64> {
    postings::clear(db, account.0)?;
    let prefix = crate::mail::account_prefix(account);
    let mut range = KeyRange::prefix(&prefix);
    let mut done = 0u64;
    loop {
        let view = db.snapshot();
        let rows = view.scan(Space::Emails, &range, Order::Ascending, 256)?;
        let Some((last, _)) = rows.last() else { break };
        range = range.after(last, Order::Ascending);
        let mut batch = Vec::with_capacity(rows.len());
        for (_, v) in &rows {
            let e: EmailRecord = decode(Space::Emails, v)?;
            let raw = crate::mail::raw_from(&view, &e)?;
            batch.push((e.id, postings::encode(index_terms(&crate::mail::parse::parse(&raw)))));
        }
        let n = rows.len();
        let ((), t) = db.write(|txn| {
            for (id, terms) in &batch {
                // An email expunged since the snapshot is not indexed again.
                if txn.exists(Space::Emails, &email_key(account, *id))? {
                    postings::add(txn, account.0, id.0, terms)?;
                }
            }
            Ok::<_, Error>(())
        })?;
        db.sync_blocking(t)?;
        let before = done;
        done += n as u64;
        if done / 5000 != before / 5000 {
            progress(&format!("  account {}: {done} emails indexed", account.0));
        }
        if n < 256 {
            break;
        }
    }
    // One segment: a rebuilt index starts as compact as it gets.
    postings::compact(db, account.0)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snippet_highlights_every_match_in_its_window() {
        let words = vec![("invoice".to_owned(), false), ("pay".to_owned(), true)];
        let s = snippet("body", "Hello,\n\nplease find the Invoice attached;  payment is due.", &words)
            .expect("snippet");
        assert_eq!(s.text, "Hello, please find the Invoice attached; payment is due.");
        let marked: Vec<&str> = s.highlights.iter().map(|(a, b)| &s.text[*a as usize..*b as usize]).collect();
        assert_eq!(marked, vec!["Invoice", "payment"]);
        assert!(snippet("body", "nothing here", &words).is_none());
    }

    #[test]
    fn runs_are_found_only_in_order() {
        let t: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert!(contains_run(&t, &["b".into(), "c".into()]));
        assert!(!contains_run(&t, &["c".into(), "b".into()]));
    }
}
