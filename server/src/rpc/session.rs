//! `Session`: one account's mail. The account id lives in the capability,
//! never in a parameter, so no call can reach another account's data.

use std::rc::{Rc, Weak};
use std::sync::Arc;

use quail_protocol::quail_capnp::{
    ObjectKind, Sort, Tristate, listener, query, query_listener, session, watch_handle,
};

use super::convert::{self, Props};
use super::{CallGuard, Peer, Services, now_ms, text, to_capnp};
use crate::account::AccountId;
use crate::blob::upload::Owner;
use crate::error::Error;
use crate::mail::scope::Scope;
use crate::mail::{EmailId, Filter, MailboxId, Query, Start, ThreadId, Tri};
use crate::sync::push::{Coalescer, Push, Step, Subscription};
use crate::sync::{Kind, State};

/// How a session was opened: what must still hold for it to go on.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    /// By password: the account's hash at login. `setPassword` changes it.
    Password(String),
    /// By app token: BLAKE3 of the token. Revoking deletes it.
    Token([u8; 32]),
}

/// Ids refused, each with why.
type Refused = Vec<(EmailId, Error)>;

pub(crate) struct SessionImpl {
    services: Arc<Services>,
    peer: Rc<Peer>,
    account: AccountId,
    auth: Auth,
    /// What this session may reach (everything, unless restricted).
    scope: Scope,
    /// The session this one was restricted from: it ends with it.
    parent: Option<Weak<SessionImpl>>,
}

impl SessionImpl {
    pub(crate) fn new(services: Arc<Services>, peer: Rc<Peer>, account: AccountId, auth: Auth) -> Self {
        peer.hold(Owner(account.0));
        SessionImpl { services, peer, account, auth, scope: Scope::FULL, parent: None }
    }

    /// Whether the session may still act: its credential holds, every
    /// session it was restricted from is held, and it has not expired.
    fn still_valid(&self) -> bool {
        self.credential_holds().unwrap_or(false) && self.parent_alive() && !self.scope.expired(now_ms())
    }

    /// Whether every session this one was restricted from is still held.
    fn parent_alive(&self) -> bool {
        match &self.parent {
            None => true,
            Some(p) => p.upgrade().is_some_and(|p| p.parent_alive()),
        }
    }

    /// Whether the email `id` exists and this session may see it.
    fn visible(&self, id: EmailId) -> Result<bool, capnp::Error> {
        if self.scope.mailboxes.is_none() {
            return Ok(true);
        }
        Ok(self.services.mail.email(self.account, id).map_err(to_capnp)?.is_some_and(|e| self.scope.sees(&e)))
    }

    /// Splits `ids` into those this session may change and refusals.
    fn writable_ids(&self, ids: Vec<EmailId>) -> Result<(Vec<EmailId>, Refused), capnp::Error> {
        self.scope.check_write().map_err(to_capnp)?;
        let mut ok = Vec::with_capacity(ids.len());
        let mut refused = Vec::new();
        for id in ids {
            if self.visible(id)? {
                ok.push(id);
            } else {
                refused.push((id, Error::not_found(format!("no email {}", id.0))));
            }
        }
        Ok((ok, refused))
    }

    /// Starts a call: within the connection's budget, and only while the
    /// credential the session was opened with is still good (a new
    /// password or a revoked token ends it with `badCredentials`).
    fn enter(&self) -> Result<CallGuard, capnp::Error> {
        let guard = self.peer.enter()?;
        if !self.credential_holds()? {
            return Err(to_capnp(Error::BadCredentials));
        }
        if !self.parent_alive() {
            return Err(to_capnp(Error::Forbidden(
                "the session this one was restricted from has ended".into(),
            )));
        }
        if self.scope.expired(now_ms()) {
            return Err(to_capnp(Error::Forbidden("this restricted session has expired".into())));
        }
        Ok(guard)
    }

    /// Whether the credential the session was opened with still holds.
    fn credential_holds(&self) -> Result<bool, capnp::Error> {
        Ok(match &self.auth {
            Auth::Password(hash) => self
                .services
                .accounts
                .get(self.account)
                .map_err(to_capnp)?
                .is_some_and(|a| a.password_hash == *hash),
            Auth::Token(hash) => self.services.accounts.token_valid(hash, self.account).map_err(to_capnp)?,
        })
    }

    fn check_ids(&self, n: u32) -> Result<(), capnp::Error> {
        let max = self.services.config.limits.max_ids_per_call;
        if n > max {
            return Err(to_capnp(Error::LimitExceeded(format!("{n} ids in one call; the limit is {max}"))));
        }
        Ok(())
    }
}

impl SessionImpl {
    /// Runs a query, on the blocking pool when it may walk a mailbox.
    async fn run_query(&self, query: Query) -> crate::Result<crate::mail::QueryPage> {
        let account = self.account;
        if query.is_heavy() {
            super::heavy(&self.services, move |s| s.mail.query(account, &query)).await
        } else {
            self.services.mail.query(account, &query)
        }
    }

    /// Narrows a change list to what a mailbox-restricted session sees:
    /// emails and threads that left its scope (or were never in it) read
    /// as destroyed or not at all, mailboxes outside it not at all.
    fn scope_changes(&self, kind: Kind, c: &mut crate::sync::Changes) -> Result<(), capnp::Error> {
        match kind {
            // Sending is the whole account's business.
            Kind::Submission if !self.scope.is_full() => {
                c.created.clear();
                c.updated.clear();
                c.destroyed.clear();
            }
            Kind::Submission => {}
            Kind::Mailbox => {
                let keep = |v: &mut Vec<u64>| v.retain(|m| self.scope.reaches(MailboxId(*m)));
                keep(&mut c.created);
                keep(&mut c.updated);
                keep(&mut c.destroyed);
            }
            Kind::Email | Kind::Thread => {
                let seen = |id: u64| -> Result<bool, capnp::Error> {
                    if kind == Kind::Email {
                        return self.visible(EmailId(id));
                    }
                    let members = self.services.mail.thread(self.account, ThreadId(id)).map_err(to_capnp)?;
                    for m in members {
                        if self.visible(m)? {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                };
                let mut created = Vec::new();
                for id in std::mem::take(&mut c.created) {
                    if seen(id)? {
                        created.push(id);
                    }
                }
                let mut updated = Vec::new();
                for id in std::mem::take(&mut c.updated) {
                    if seen(id)? {
                        updated.push(id);
                    } else {
                        c.destroyed.push(id);
                    }
                }
                c.created = created;
                c.updated = updated;
            }
        }
        Ok(())
    }
}

/// Stores a finished `Session.upload` (called by the bulk stream once its
/// bytes are in): checked against the declared hash, durable on return.
pub async fn store_upload(
    services: &Arc<Services>,
    owner: Owner,
    bytes: Vec<u8>,
    hash: [u8; 32],
    mime_type: &str,
) -> crate::Result<()> {
    if owner == Owner::GATEWAY {
        return Err(Error::invalid("the gateway uploads messages, not blobs"));
    }
    services.mail.store_upload(AccountId(owner.0), bytes, hash, mime_type, now_ms()).await.map(|_| ())
}

/// Offset and length of a `Range` parameter (absent: all of it).
fn range_of(r: &Option<quail_protocol::quail_capnp::range::Reader<'_>>) -> Result<(u64, u64), capnp::Error> {
    Ok(r.as_ref().map_or((0, 0), |r| (r.get_offset(), r.get_length())))
}

/// Messages up to this size are read on the connection's worker.
const SMALL_RUN: u64 = 256 * 1024;

/// A byte run ready to answer: inline bytes, or a source to offer on a
/// bulk stream with the BLAKE3 of what it carries.
pub(super) enum Run {
    Inline { total: u64, offset: u64, bytes: Vec<u8> },
    Bulk { total: u64, offset: u64, source: crate::blob::upload::Shared, hash: [u8; 32] },
}

/// Reads a small run into memory, or hashes a large one as it streams
/// (never holding it whole). Blocking work.
pub(super) fn prepare_run(
    source: crate::blob::upload::Shared,
    total: u64,
    offset: u64,
    known_hash: Option<[u8; 32]>,
    max_inline: u64,
) -> crate::Result<Run> {
    if source.len() <= max_inline {
        let mut bytes = Vec::with_capacity(source.len() as usize);
        source.stream(0, &mut |b| {
            bytes.extend_from_slice(b);
            Ok(())
        })?;
        return Ok(Run::Inline { total, offset, bytes });
    }
    let hash = match known_hash {
        Some(h) => h,
        None => {
            let mut hasher = blake3::Hasher::new();
            source.stream(0, &mut |b| {
                hasher.update(b);
                Ok(())
            })?;
            *hasher.finalize().as_bytes()
        }
    };
    Ok(Run::Bulk { total, offset, source, hash })
}

impl SessionImpl {
    /// Answers with a run: inline, or a bulk token for this account.
    fn byte_run(
        &self,
        mut b: quail_protocol::quail_capnp::byte_run::Builder<'_>,
        run: Run,
    ) -> Result<(), capnp::Error> {
        match run {
            Run::Inline { total, offset, bytes } => {
                b.set_total_size(total);
                b.set_offset(offset);
                b.set_inline(&bytes);
            }
            Run::Bulk { total, offset, source, hash } => {
                b.set_total_size(total);
                b.set_offset(offset);
                b.set_blake3(&hash);
                let token = self
                    .services
                    .downloads
                    .offer(Owner(self.account.0), source, std::time::Instant::now())
                    .map_err(to_capnp)?;
                b.set_bulk_token(&token[..]);
            }
        }
        Ok(())
    }
}

/// Room left in a `get` answer for its framing and lists of ids.
const GET_MARGIN: usize = 256 * 1024;

fn unsupported(what: &'static str) -> capnp::Error {
    to_capnp(Error::Unimplemented(what))
}

fn tri(t: Tristate) -> Tri {
    match t {
        Tristate::Any => Tri::Any,
        Tristate::Yes => Tri::Yes,
        Tristate::No => Tri::No,
    }
}

/// Reads a wire `Query` into the domain's. Peer input: never panics (a fuzz
/// target drives it).
pub fn decode_query(q: query::Reader<'_>, max_limit: u32, max_text: usize) -> Result<Query, capnp::Error> {
    let filter = decode_filter(q.get_filter()?)?;
    let search = if q.has_text() { text(q.get_text(), "query text", max_text)? } else { "" };
    let search = match search.trim() {
        "" => None,
        t => Some(
            crate::search::query::parse(t, max_text)
                .map_err(|e| to_capnp(Error::invalid(format!("query text {e}"))))?,
        ),
    };
    let limit = match q.get_limit() {
        0 => max_limit,
        n => n.min(max_limit),
    };
    let start = match q.get_anchor() {
        0 => Start::Position(u64::from(q.get_position())),
        a => Start::Anchor(EmailId(a), i64::from(q.get_anchor_offset())),
    };
    Ok(Query {
        filter,
        newest_first: q.get_sort()? == Sort::ReceivedDesc,
        start,
        limit: limit as usize,
        collapse_threads: q.get_collapse_threads(),
        text: search,
    })
}

/// Reads a wire `Filter`.
pub fn decode_filter(f: quail_protocol::quail_capnp::filter::Reader<'_>) -> Result<Filter, capnp::Error> {
    let address = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<Option<String>, capnp::Error> {
        let s = text(t, "address", 320)?.trim();
        Ok(if s.is_empty() { None } else { Some(s.to_ascii_lowercase()) })
    };
    let filter = Filter {
        mailbox: match f.get_in_mailbox() {
            0 => None,
            m => Some(MailboxId(m)),
        },
        unread: tri(f.get_unread()?),
        flagged: tri(f.get_flagged()?),
        has_attachment: tri(f.get_has_attachment()?),
        after: Some(f.get_after()).filter(|t| *t != 0),
        before: Some(f.get_before()).filter(|t| *t != 0),
        from: address(f.get_from())?,
        to: address(f.get_to())?,
    };
    if let (Some(a), Some(b)) = (filter.after, filter.before)
        && a >= b
    {
        return Err(to_capnp(Error::invalid("filter: after must be earlier than before")));
    }
    Ok(filter)
}

/// A structured filter as query nodes (the same meaning as in `query`).
fn filter_nodes(f: &Filter) -> Vec<crate::search::query::Node> {
    use crate::search::query::{Flag, Node};
    use crate::search::text::{self, Field};
    let mut out = Vec::new();
    if let Some(m) = f.mailbox {
        out.push(Node::InId(m.0));
    }
    match f.unread {
        Tri::Yes => out.push(Node::Is(Flag::Unread)),
        Tri::No => out.push(Node::Is(Flag::Read)),
        Tri::Any => {}
    }
    match f.flagged {
        Tri::Yes => out.push(Node::Is(Flag::Flagged)),
        Tri::No => out.push(Node::Not(Box::new(Node::Is(Flag::Flagged)))),
        Tri::Any => {}
    }
    match f.has_attachment {
        Tri::Yes => out.push(Node::HasAttachment),
        Tri::No => out.push(Node::Not(Box::new(Node::HasAttachment))),
        Tri::Any => {}
    }
    if let Some(t) = f.after {
        out.push(Node::After(t));
    }
    if let Some(t) = f.before {
        out.push(Node::Before(t));
    }
    let words = |field: Field, a: &str| {
        let mut w = text::tokens(a);
        if w.len() == 1 {
            Node::Term { field: Some(field), word: w.remove(0), prefix: false }
        } else {
            Node::Phrase { field: Some(field), words: w }
        }
    };
    if let Some(a) = &f.from {
        out.push(words(Field::From, a));
    }
    if let Some(a) = &f.to {
        out.push(Node::Or(vec![words(Field::To, a), words(Field::Cc, a)]));
    }
    out
}

fn state_param(v: u64) -> Option<State> {
    (v != 0).then_some(State(v))
}

fn ids_of(l: capnp::primitive_list::Reader<'_, u64>) -> Vec<EmailId> {
    l.iter().map(EmailId).collect()
}

fn mailbox_ids(l: capnp::primitive_list::Reader<'_, u64>) -> Vec<MailboxId> {
    l.iter().map(MailboxId).collect()
}

fn texts(l: capnp::text_list::Reader<'_>, what: &str, max: usize) -> Result<Vec<String>, capnp::Error> {
    if l.len() as usize > max {
        return Err(to_capnp(Error::LimitExceeded(format!("{} {what}s; the limit is {max}", l.len()))));
    }
    l.iter().map(|t| Ok(text(t, what, 1024)?.to_owned())).collect()
}

impl session::Server for SessionImpl {
    async fn account(
        self: Rc<Self>,
        _: session::AccountParams,
        mut results: session::AccountResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let s = &self.services;
        let account = s
            .accounts
            .get(self.account)
            .map_err(to_capnp)?
            .ok_or_else(|| to_capnp(Error::not_found("this account was deleted")))?;
        let usage = s.accounts.usage(self.account).map_err(to_capnp)?;
        let state = s.mail.state(self.account).map_err(to_capnp)?;
        let mut r = results.get();
        convert::account(r.reborrow().init_account(), &account, usage, &s.config.domains);
        r.set_state(state.0);
        Ok(())
    }

    async fn mailboxes(
        self: Rc<Self>,
        _: session::MailboxesParams,
        mut results: session::MailboxesResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let s = &self.services;
        let state = s.mail.state(self.account).map_err(to_capnp)?;
        let mut boxes = s.mail.mailboxes(self.account).map_err(to_capnp)?;
        boxes.retain(|m| self.scope.reaches(m.mailbox.id));
        let mut r = results.get();
        r.set_state(state.0);
        let mut list = r.init_mailboxes(boxes.len() as u32);
        for (i, m) in boxes.iter().enumerate() {
            convert::mailbox(list.reborrow().get(i as u32), m);
        }
        Ok(())
    }

    async fn query(
        self: Rc<Self>,
        params: session::QueryParams,
        mut results: session::QueryResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let q = params.get()?.get_query()?;
        let mut query = decode_query(
            q,
            self.services.config.limits.max_query_limit,
            self.services.config.limits.max_search_query_bytes as usize,
        )?;
        query.filter.mailbox = self.scope.query_mailbox(query.filter.mailbox).map_err(to_capnp)?;
        let account = self.account;
        let page = if query.is_heavy() {
            super::heavy(&self.services, move |s| s.mail.query(account, &query)).await
        } else {
            self.services.mail.query(account, &query)
        }
        .map_err(to_capnp)?;
        convert::query_page(results.get().init_result(), &page);
        Ok(())
    }

    async fn query_changes(
        self: Rc<Self>,
        params: session::QueryChangesParams,
        mut results: session::QueryChangesResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let p = params.get()?;
        let mut query = decode_query(
            p.get_query()?,
            self.services.config.limits.max_query_limit,
            self.services.config.limits.max_search_query_bytes as usize,
        )?;
        query.filter.mailbox = self.scope.query_mailbox(query.filter.mailbox).map_err(to_capnp)?;
        let since = State(p.get_since_query_state());
        let max = self.services.config.limits.max_changes;
        let want = match p.get_max_changes() {
            0 => max,
            n => n.min(max),
        } as usize;
        let account = self.account;
        // A probe per changed email: off the connection's worker.
        let c = super::heavy(&self.services, move |s| s.mail.query_changes(account, &query, since, want))
            .await
            .map_err(to_capnp)?;
        convert::query_changes(results.get().init_changes(), &c);
        Ok(())
    }

    async fn watch_query(
        self: Rc<Self>,
        params: session::WatchQueryParams,
        mut results: session::WatchQueryResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let p = params.get()?;
        let listener = p.get_listener()?;
        let mut query = decode_query(
            p.get_query()?,
            self.services.config.limits.max_query_limit,
            self.services.config.limits.max_search_query_bytes as usize,
        )?;
        query.filter.mailbox = self.scope.query_mailbox(query.filter.mailbox).map_err(to_capnp)?;
        let slot = self.peer.take_watch()?;
        let subscription = self.services.hub.subscribe(self.account);
        let page = self.run_query(query.clone()).await.map_err(to_capnp)?;
        convert::query_page(results.get().init_result(), &page);
        let session = Rc::clone(&self);
        let task = tokio::task::spawn_local(async move {
            let _slot = slot;
            let start = page.state;
            run_watch(session, WindowPusher { listener, query, window: page }, subscription, start).await;
        });
        results.get().set_handle(capnp_rpc::new_client(WatchHandleImpl { task: task.abort_handle() }));
        Ok(())
    }

    async fn get(
        self: Rc<Self>,
        params: session::GetParams,
        mut results: session::GetResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let p = params.get()?;
        let ids = p.get_ids()?;
        self.check_ids(ids.len())?;
        let asked = p.get_properties()?;
        let props = if asked.is_empty() {
            Props::ALL
        } else {
            let mut props = Props::default();
            for prop in asked.iter() {
                props.add(prop?).map_err(unsupported)?;
            }
            props
        };
        // One answer must fit what a client reads: stop before the budget,
        // and name the rest as not fetched.
        let limit = self
            .services
            .config
            .limits
            .max_rpc_message_bytes
            .min(quail_protocol::limits::MAX_RPC_MESSAGE_BYTES);
        let budget = ((limit as usize).saturating_sub(GET_MARGIN) * 3 / 4).max(limit as usize / 4);
        let mut used = 0usize;
        let mut found = Vec::with_capacity(ids.len() as usize);
        let mut missing = Vec::new();
        let mut unfetched = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for id in ids.iter() {
            if !seen.insert(id) {
                continue;
            }
            if used >= budget && !found.is_empty() {
                unfetched.push(id);
                continue;
            }
            match self.services.mail.email(self.account, EmailId(id)).map_err(to_capnp)? {
                Some(e) if self.scope.sees(&e) => {
                    let verdict = if props.filter {
                        self.services.mail.filter_record(self.account, e.id).map_err(to_capnp)?
                    } else {
                        None
                    };
                    let size = convert::email_size(&e, props)
                        + verdict
                            .as_ref()
                            .map_or(0, |v| v.reasons.iter().map(|r| r.len() + 16).sum::<usize>());
                    if used + size > budget && !found.is_empty() {
                        used = budget;
                        unfetched.push(id);
                        continue;
                    }
                    used += size;
                    found.push((e, verdict));
                }
                _ => missing.push(id),
            }
        }
        let mut r = results.get();
        let mut list = r.reborrow().init_emails(found.len() as u32);
        for (i, (e, verdict)) in found.iter().enumerate() {
            convert::email(list.reborrow().get(i as u32), e, props)?;
            if props.filter {
                convert::filter_verdict(list.reborrow().get(i as u32), verdict.as_ref());
            }
        }
        let mut nf = r.reborrow().init_not_found(missing.len() as u32);
        for (i, id) in missing.iter().enumerate() {
            nf.set(i as u32, *id);
        }
        let mut later = r.init_not_fetched(unfetched.len() as u32);
        for (i, id) in unfetched.iter().enumerate() {
            later.set(i as u32, *id);
        }
        Ok(())
    }

    async fn raw(
        self: Rc<Self>,
        params: session::RawParams,
        mut results: session::RawResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let p = params.get()?;
        let id = EmailId(p.get_id());
        let range = range_of(&p.get_range().ok())?;
        if !self.visible(id)? {
            return Err(to_capnp(Error::not_found(format!("no email {}", id.0))));
        }
        let (offset, length) = range;
        let max = self.services.config.limits.max_inline_bytes;
        // The record is read here; only a run worth the trip (a large
        // message to rebuild or hash) goes to the blocking pool, so the
        // common small `raw` does not queue behind the heavy-read permits.
        let (source, total) =
            self.services.mail.raw_source(self.account, id, offset, length).map_err(to_capnp)?;
        let run = if total <= SMALL_RUN {
            prepare_run(source, total, offset, None, max)
        } else {
            super::heavy(&self.services, move |_| prepare_run(source, total, offset, None, max)).await
        }
        .map_err(to_capnp)?;
        self.byte_run(results.get().init_bytes(), run)
    }

    async fn fetch_part(
        self: Rc<Self>,
        params: session::FetchPartParams,
        mut results: session::FetchPartResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let p = params.get()?;
        let id = EmailId(p.get_id());
        let part_id = text(p.get_part_id(), "partId", 256)?.to_owned();
        let range = range_of(&p.get_range().ok())?;
        if !self.visible(id)? {
            return Err(to_capnp(Error::not_found(format!("no email {}", id.0))));
        }
        let (account, (offset, length)) = (self.account, range);
        let max = self.services.config.limits.max_inline_bytes;
        // Decoding may walk a large message: off the connection's worker.
        let run = super::heavy(&self.services, move |s| {
            let (source, total, whole) = s.mail.part_source(account, id, &part_id, offset, length)?;
            prepare_run(source, total, offset, whole, max)
        })
        .await
        .map_err(to_capnp)?;
        self.byte_run(results.get().init_bytes(), run)
    }

    async fn create_app_token(
        self: Rc<Self>,
        params: session::CreateAppTokenParams,
        mut results: session::CreateAppTokenResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        self.scope.check_tokens("creating app tokens").map_err(to_capnp)?;
        let label = text(params.get()?.get_label(), "label", crate::account::MAX_LABEL_BYTES)?;
        let (secret, token) =
            self.services.accounts.create_token(self.account, label, now_ms()).await.map_err(to_capnp)?;
        let mut r = results.get();
        r.set_token(secret.as_str());
        let mut info = r.init_info();
        info.set_id(token.id);
        info.set_label(token.label.as_str());
        info.set_created_at(token.created_ms);
        Ok(())
    }

    async fn list_app_tokens(
        self: Rc<Self>,
        _: session::ListAppTokensParams,
        mut results: session::ListAppTokensResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        self.scope.check_tokens("listing app tokens").map_err(to_capnp)?;
        let tokens = self.services.accounts.tokens(self.account).map_err(to_capnp)?;
        let mut list = results.get().init_tokens(tokens.len() as u32);
        for (i, t) in tokens.iter().enumerate() {
            let mut b = list.reborrow().get(i as u32);
            b.set_id(t.id);
            b.set_label(t.label.as_str());
            b.set_created_at(t.created_ms);
        }
        Ok(())
    }

    async fn revoke_app_token(
        self: Rc<Self>,
        params: session::RevokeAppTokenParams,
        _: session::RevokeAppTokenResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        self.scope.check_tokens("revoking app tokens").map_err(to_capnp)?;
        let id = params.get()?.get_id();
        self.services.accounts.revoke_tokens(self.account, Some(id)).await.map_err(to_capnp)?;
        Ok(())
    }

    async fn create_mailbox(
        self: Rc<Self>,
        params: session::CreateMailboxParams,
        mut results: session::CreateMailboxResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        self.scope.check_full("creating mailboxes").map_err(to_capnp)?;
        let p = params.get()?;
        let name = text(p.get_name(), "name", self.services.config.limits.max_name_bytes as usize)?;
        let parent = Some(MailboxId(p.get_parent_id())).filter(|m| m.0 != 0);
        let (m, state) =
            self.services.mail.create_mailbox(self.account, name, parent).await.map_err(to_capnp)?;
        let mut r = results.get();
        convert::mailbox_record(r.reborrow().init_mailbox(), &m);
        r.set_state(state.0);
        Ok(())
    }

    async fn rename_mailbox(
        self: Rc<Self>,
        params: session::RenameMailboxParams,
        mut results: session::RenameMailboxResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        self.scope.check_full("renaming mailboxes").map_err(to_capnp)?;
        let p = params.get()?;
        let name = text(p.get_name(), "name", self.services.config.limits.max_name_bytes as usize)?;
        let parent = Some(MailboxId(p.get_parent_id())).filter(|m| m.0 != 0);
        let (m, state) = self
            .services
            .mail
            .rename_mailbox(self.account, MailboxId(p.get_id()), name, parent)
            .await
            .map_err(to_capnp)?;
        let mut r = results.get();
        let view = self
            .services
            .mail
            .mailboxes(self.account)
            .map_err(to_capnp)?
            .into_iter()
            .find(|v| v.mailbox.id == m.id);
        match view {
            Some(v) => convert::mailbox(r.reborrow().init_mailbox(), &v),
            None => convert::mailbox_record(r.reborrow().init_mailbox(), &m),
        }
        r.set_state(state.0);
        Ok(())
    }

    async fn delete_mailbox(
        self: Rc<Self>,
        params: session::DeleteMailboxParams,
        mut results: session::DeleteMailboxResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        self.scope.check_full("deleting mailboxes").map_err(to_capnp)?;
        let id = MailboxId(params.get()?.get_id());
        let state = self.services.mail.delete_mailbox(self.account, id).await.map_err(to_capnp)?;
        results.get().set_state(state.0);
        Ok(())
    }

    async fn threads(
        self: Rc<Self>,
        params: session::ThreadsParams,
        mut results: session::ThreadsResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let ids = params.get()?.get_ids()?;
        self.check_ids(ids.len())?;
        let mut found = Vec::new();
        let mut missing = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for t in ids.iter().filter(|t| seen.insert(*t)) {
            let mut members = self.services.mail.thread(self.account, ThreadId(t)).map_err(to_capnp)?;
            if self.scope.mailboxes.is_some() {
                let mut kept = Vec::with_capacity(members.len());
                for m in members {
                    if self.visible(m)? {
                        kept.push(m);
                    }
                }
                members = kept;
            }
            if members.is_empty() {
                missing.push(t);
            } else {
                found.push((t, members));
            }
        }
        let mut r = results.get();
        let mut list = r.reborrow().init_threads(found.len() as u32);
        for (i, (t, members)) in found.iter().enumerate() {
            let mut b = list.reborrow().get(i as u32);
            b.set_id(*t);
            let mut l = b.init_email_ids(members.len() as u32);
            for (j, m) in members.iter().enumerate() {
                l.set(j as u32, m.0);
            }
        }
        let mut nf = r.init_not_found(missing.len() as u32);
        for (i, t) in missing.iter().enumerate() {
            nf.set(i as u32, *t);
        }
        Ok(())
    }

    async fn changes(
        self: Rc<Self>,
        params: session::ChangesParams,
        mut results: session::ChangesResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let p = params.get()?;
        let kind = match p.get_kind()? {
            ObjectKind::Email => Kind::Email,
            ObjectKind::Mailbox => Kind::Mailbox,
            ObjectKind::Thread => Kind::Thread,
            ObjectKind::Submission => Kind::Submission,
        };
        let max = self.services.config.limits.max_changes;
        let want = match p.get_max_changes() {
            0 => max,
            n => n.min(max),
        };
        let mut c = self
            .services
            .mail
            .changes(self.account, kind, State(p.get_since_state()), want as usize)
            .map_err(to_capnp)?;
        if self.scope.mailboxes.is_some() {
            self.scope_changes(kind, &mut c)?;
        }
        convert::changes(results.get().init_changes(), &c);
        Ok(())
    }

    async fn set_keywords(
        self: Rc<Self>,
        params: session::SetKeywordsParams,
        mut results: session::SetKeywordsResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let p = params.get()?;
        let ids = p.get_ids()?;
        self.check_ids(ids.len())?;
        let add = texts(p.get_add()?, "keyword", crate::mail::keyword::MAX_KEYWORDS_PER_EMAIL)?;
        let remove = texts(p.get_remove()?, "keyword", crate::mail::keyword::MAX_KEYWORDS_PER_EMAIL)?;
        let (ids, refused) = self.writable_ids(ids_of(ids))?;
        let mut r = self
            .services
            .mail
            .set_keywords(self.account, &ids, &add, &remove, state_param(p.get_if_in_state()))
            .await
            .map_err(to_capnp)?;
        r.not_updated.extend(refused);
        convert::update_result(results.get().init_result(), &r);
        Ok(())
    }

    async fn move_(
        self: Rc<Self>,
        params: session::MoveParams,
        mut results: session::MoveResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let p = params.get()?;
        let ids = p.get_ids()?;
        self.check_ids(ids.len())?;
        let add = p.get_add_mailboxes()?;
        let remove = p.get_remove_mailboxes()?;
        self.check_ids(add.len() + remove.len())?;
        let (add, remove) = (mailbox_ids(add), mailbox_ids(remove));
        if let Some(m) = add.iter().chain(&remove).find(|m| !self.scope.reaches(**m)) {
            return Err(to_capnp(Error::Forbidden(format!(
                "mailbox {} is outside this session's scope",
                m.0
            ))));
        }
        let (ids, refused) = self.writable_ids(ids_of(ids))?;
        let mut r = self
            .services
            .mail
            .move_emails(self.account, &ids, &add, &remove, state_param(p.get_if_in_state()))
            .await
            .map_err(to_capnp)?;
        r.not_updated.extend(refused);
        convert::update_result(results.get().init_result(), &r);
        Ok(())
    }

    async fn destroy(
        self: Rc<Self>,
        params: session::DestroyParams,
        mut results: session::DestroyResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let p = params.get()?;
        let ids = p.get_ids()?;
        self.check_ids(ids.len())?;
        self.scope.check_full("destroying emails (a move to Trash)").map_err(to_capnp)?;
        let r = self
            .services
            .mail
            .destroy(self.account, &ids_of(ids), state_param(p.get_if_in_state()))
            .await
            .map_err(to_capnp)?;
        convert::update_result(results.get().init_result(), &r);
        Ok(())
    }

    async fn upload(
        self: Rc<Self>,
        params: session::UploadParams,
        mut results: session::UploadResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        self.scope.check_write().map_err(to_capnp)?;
        let p = params.get()?;
        let size = p.get_size();
        let max = self.services.config.limits.max_message_bytes;
        if size > max {
            return Err(to_capnp(Error::LimitExceeded(format!(
                "an upload of {size} bytes; the limit is {max}"
            ))));
        }
        let mime_type = text(p.get_mime_type(), "mimeType", 255)?.to_ascii_lowercase();
        let hash: [u8; 32] = p
            .get_blake3()?
            .try_into()
            .map_err(|_| to_capnp(Error::invalid("blake3: 32 bytes, the BLAKE3 of the bytes to upload")))?;
        let mail = &self.services.mail;
        mail.sweep_uploads(self.account, now_ms()).await.map_err(to_capnp)?;
        let mut r = results.get();
        r.set_blob_id(&hash);
        if mail.holds_blob(self.account, crate::blob::BlobId(hash)).map_err(to_capnp)? {
            r.set_have(true);
            return Ok(());
        }
        let purpose = crate::blob::upload::Purpose::Blob { hash, mime_type };
        let token = self
            .services
            .uploads
            .reserve_for(Owner(self.account.0), size, purpose, std::time::Instant::now())
            .map_err(to_capnp)?;
        r.set_token(&token[..]);
        Ok(())
    }

    async fn restrict(
        self: Rc<Self>,
        params: session::RestrictParams,
        mut results: session::RestrictResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let p = params.get()?;
        let boxes = p.get_mailboxes()?;
        self.check_ids(boxes.len())?;
        let boxes = mailbox_ids(boxes);
        let known = self.services.mail.mailbox_records(self.account).map_err(to_capnp)?;
        if let Some(m) = boxes.iter().find(|m| !known.iter().any(|k| k.id == **m)) {
            return Err(to_capnp(Error::not_found(format!("no mailbox {}", m.0))));
        }
        let expires = Some(p.get_expires_at()).filter(|t| *t != 0);
        let scope = self.scope.narrow(&boxes, p.get_read_only(), expires).map_err(to_capnp)?;
        let child = SessionImpl {
            services: Arc::clone(&self.services),
            peer: Rc::clone(&self.peer),
            account: self.account,
            auth: self.auth.clone(),
            scope,
            parent: Some(Rc::downgrade(&self)),
        };
        results.get().set_session(capnp_rpc::new_client(child));
        Ok(())
    }

    async fn report_spam(
        self: Rc<Self>,
        params: session::ReportSpamParams,
        mut results: session::ReportSpamResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let p = params.get()?;
        let ids = p.get_ids()?;
        self.check_ids(ids.len())?;
        let mail = &self.services.mail;
        for role in [crate::mail::Role::Junk, crate::mail::Role::Inbox] {
            let m = mail.mailbox_by_role(self.account, role).map_err(to_capnp)?;
            if !self.scope.reaches(m) {
                return Err(to_capnp(Error::Forbidden(format!(
                    "reporting moves mail to and from {role:?}, outside this session's scope"
                ))));
            }
        }
        let (ids, refused) = self.writable_ids(ids_of(ids))?;
        let mut r = mail.report_spam(self.account, &ids, p.get_is_spam(), None).await.map_err(to_capnp)?;
        r.not_updated.extend(refused);
        convert::update_result(results.get().init_result(), &r);
        Ok(())
    }

    async fn search(
        self: Rc<Self>,
        params: session::SearchParams,
        mut results: session::SearchResults,
    ) -> Result<(), capnp::Error> {
        use crate::search::query::{self, Node};
        let _call = self.enter()?;
        let s = &self.services;
        let p = params.get()?;
        let max_bytes = s.config.limits.max_search_query_bytes as usize;
        let text_query = text(p.get_query(), "query", max_bytes)?.to_owned();
        let filter = if p.has_filter() { decode_filter(p.get_filter()?)? } else { Filter::default() };
        let mut nodes = filter_nodes(&filter);
        if !text_query.trim().is_empty() {
            let parsed = query::parse(&text_query, max_bytes)
                .map_err(|e| to_capnp(Error::invalid(format!("query {e}"))))?;
            nodes.insert(0, parsed);
        }
        let node = match nodes.len() {
            0 => return Err(to_capnp(Error::invalid("an empty search: give a query or a filter"))),
            1 => nodes.remove(0),
            _ => Node::And(nodes),
        };
        let max = s.config.limits.max_query_limit;
        let limit = match p.get_limit() {
            0 => max,
            n => n.min(max),
        } as usize;
        let position = u64::from(p.get_position());
        let within = self.scope.mailboxes.clone();
        let account = self.account;
        let order = if p.get_by_relevance() {
            crate::mail::find::SearchOrder::Relevance
        } else {
            crate::mail::find::SearchOrder::Newest
        };
        let found = super::heavy(s, move |s| {
            s.mail.search_ordered(account, &node, within.as_deref(), position, limit, true, order)
        })
        .await
        .map_err(to_capnp)?;
        let mut r = results.get();
        r.set_total(found.total);
        r.set_query_state(found.state.0);
        let mut hits = r.init_hits(found.hits.len() as u32);
        for (i, h) in found.hits.iter().enumerate() {
            let mut b = hits.reborrow().get(i as u32);
            b.set_id(h.id.0);
            let mut sn = b.init_snippets(h.snippets.len() as u32);
            for (j, snip) in h.snippets.iter().enumerate() {
                let mut x = sn.reborrow().get(j as u32);
                x.set_field(snip.field);
                x.set_text(snip.text.as_str());
                let mut hl = x.init_highlights(snip.highlights.len() as u32);
                for (k, (a, b2)) in snip.highlights.iter().enumerate() {
                    let mut y = hl.reborrow().get(k as u32);
                    y.set_start(*a);
                    y.set_end(*b2);
                }
            }
        }
        Ok(())
    }

    async fn submit(
        self: Rc<Self>,
        params: session::SubmitParams,
        mut results: session::SubmitResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        self.scope.check_full("sending mail").map_err(to_capnp)?;
        let s = Arc::clone(&self.services);
        let p = params.get()?;
        let max = s.config.limits.max_message_bytes;
        let raw = p.get_raw()?;
        let raw: Vec<u8> = if !raw.is_empty() {
            if p.has_blob_id() && !p.get_blob_id()?.is_empty() {
                return Err(to_capnp(Error::invalid("give raw or blobId, not both")));
            }
            if raw.len() as u64 > max {
                return Err(to_capnp(Error::LimitExceeded(format!(
                    "message of {} bytes; the limit is {max}",
                    raw.len()
                ))));
            }
            raw.to_vec()
        } else {
            let id: [u8; 32] = p
                .get_blob_id()?
                .try_into()
                .map_err(|_| to_capnp(Error::invalid("give the message as raw or as a 32-byte blobId")))?;
            let id = crate::blob::BlobId(id);
            let missing = || to_capnp(Error::not_found(format!("no uploaded blob {id}")));
            if !s.mail.holds_blob(self.account, id).map_err(to_capnp)? {
                return Err(missing());
            }
            if crate::blob::size_in(s.db.store(), id).map_err(to_capnp)?.unwrap_or(0) > max {
                return Err(to_capnp(Error::LimitExceeded(format!("the blob is larger than {max} bytes"))));
            }
            super::heavy(&s, move |s| crate::blob::get(&s.db, id))
                .await
                .map_err(to_capnp)?
                .ok_or_else(missing)?
        };
        let envelope = p.get_envelope()?;
        let (from, recipients) = envelope_of(&s, self.account, envelope)?;
        crate::mail::outbox::check_from_field(&s.accounts, self.account, &raw, &s.config.domains)
            .map_err(to_capnp)?;
        let new = crate::mail::outbox::NewSubmission {
            raw,
            mail_from: from,
            recipients,
            send_at_ms: p.get_send_at(),
        };
        let now = now_ms();
        let mut sub = s.mail.submit(self.account, new, now).await.map_err(to_capnp)?;
        if sub.send_at_ms <= now && sub.recipients.iter().any(|r| r.local) {
            // Mail between accounts here is delivered at once, after the
            // submission itself is durable (the outbox's ticker would
            // otherwise take it within a second).
            s.mail.deliver_local_due(&s.accounts, &s.config.domains, now).await.map_err(to_capnp)?;
            if let Some(fresh) = s.mail.submissions(self.account, &[sub.id]).map_err(to_capnp)?.0.pop() {
                sub = fresh;
            }
        }
        convert::submission(results.get().init_submission(), &sub);
        Ok(())
    }

    async fn submissions(
        self: Rc<Self>,
        params: session::SubmissionsParams,
        mut results: session::SubmissionsResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        self.scope.check_full("reading the outbox").map_err(to_capnp)?;
        let ids: Vec<u64> = params.get()?.get_ids()?.iter().collect();
        if ids.len() > self.services.config.limits.max_ids_per_call as usize {
            return Err(to_capnp(Error::LimitExceeded(format!(
                "{} ids; the limit is {}",
                ids.len(),
                self.services.config.limits.max_ids_per_call
            ))));
        }
        let (found, missing) = self.services.mail.submissions(self.account, &ids).map_err(to_capnp)?;
        if let Some(id) = missing.first() {
            return Err(to_capnp(Error::not_found(format!("no submission {id}"))));
        }
        let mut list = results.get().init_submissions(found.len() as u32);
        for (i, sub) in found.iter().enumerate() {
            convert::submission(list.reborrow().get(i as u32), sub);
        }
        Ok(())
    }

    async fn cancel_submission(
        self: Rc<Self>,
        params: session::CancelSubmissionParams,
        mut results: session::CancelSubmissionResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        self.scope.check_full("cancelling a submission").map_err(to_capnp)?;
        let id = params.get()?.get_id();
        let sub = self.services.mail.cancel_submission(self.account, id, now_ms()).await.map_err(to_capnp)?;
        convert::submission(results.get().init_submission(), &sub);
        Ok(())
    }

    async fn watch(
        self: Rc<Self>,
        params: session::WatchParams,
        mut results: session::WatchResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.enter()?;
        let listener = params.get()?.get_listener()?;
        let slot = self.peer.take_watch()?;
        // Subscribe first, then read where to start: nothing falls between.
        let subscription = self.services.hub.subscribe(self.account);
        let start = self.services.mail.state(self.account).map_err(to_capnp)?;
        let session = Rc::clone(&self);
        let task = tokio::task::spawn_local(async move {
            let _slot = slot;
            run_watch(session, StatePusher(listener), subscription, start).await;
        });
        let mut r = results.get();
        r.set_handle(capnp_rpc::new_client(WatchHandleImpl { task: task.abort_handle() }));
        r.set_state(start.0);
        Ok(())
    }
}

/// A listener call in flight: resolves to whether it was answered.
type Call = std::pin::Pin<Box<dyn std::future::Future<Output = bool>>>;

/// What a watch does when its coalescer says it is time to call.
enum Decision {
    /// Make this call.
    Call(Call),
    /// Nothing the listener shows changed: no call.
    Nothing,
    /// The watch ends.
    End,
}

/// The part of a watch that differs between `watch` and `watchQuery`: what
/// to tell the listener about a push.
trait Pusher {
    async fn decide(&mut self, session: &SessionImpl, push: Push) -> Decision;
}

/// `watch`: the new state and the kinds that changed.
struct StatePusher(listener::Client);

impl Pusher for StatePusher {
    async fn decide(&mut self, _: &SessionImpl, push: Push) -> Decision {
        let mut req = self.0.changed_request();
        req.get().set_state(push.state.0);
        let mut kinds = req.get().init_kinds(push.kinds.len() as u32);
        for (i, k) in push.kinds.iter().enumerate() {
            kinds.set(
                i as u32,
                match k {
                    Kind::Email => ObjectKind::Email,
                    Kind::Mailbox => ObjectKind::Mailbox,
                    Kind::Thread => ObjectKind::Thread,
                    Kind::Submission => ObjectKind::Submission,
                },
            );
        }
        Decision::Call(Box::pin(async move { req.send().promise.await.is_ok() }))
    }
}

/// `watchQuery`: the window is queried again and its difference with the
/// previous one told.
struct WindowPusher {
    listener: query_listener::Client,
    query: Query,
    window: crate::mail::QueryPage,
}

impl Pusher for WindowPusher {
    async fn decide(&mut self, session: &SessionImpl, _: Push) -> Decision {
        let Ok(page) = session.run_query(self.query.clone()).await else {
            return Decision::End;
        };
        let changes = crate::mail::query::window_changes(&self.window, &page);
        let old_total = self.window.total;
        self.window = page;
        if changes.is_empty() && changes.total == old_total {
            return Decision::Nothing;
        }
        let mut req = self.listener.changed_request();
        convert::query_changes(req.get().init_changes(), &changes);
        Decision::Call(Box::pin(async move { req.send().promise.await.is_ok() }))
    }
}

/// A watch's task, on the connection's worker: drives its [`Coalescer`]
/// with the hub's pulses and the listener's answers; ends when the
/// listener fails or times out, the hub goes, or the session stops being
/// valid (credential revoked, parent released, expired).
async fn run_watch(session: Rc<SessionImpl>, mut pusher: impl Pusher, mut sub: Subscription, start: State) {
    let timeout = std::time::Duration::from_secs(session.services.config.limits.listener_timeout_secs.into());
    let mut co = Coalescer::new(start, timeout);
    let mut call: Option<Call> = None;
    loop {
        let deadline = match co.step(std::time::Instant::now()) {
            Step::GiveUp => break,
            Step::Call(push) => {
                if !session.still_valid() {
                    break;
                }
                match pusher.decide(&session, push).await {
                    Decision::Call(c) => call = Some(c),
                    Decision::Nothing => co.answered(true),
                    Decision::End => break,
                }
                continue;
            }
            Step::Wait(deadline) => deadline,
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let answered = tokio::select! {
            pulse = sub.next() => match pulse {
                Some(p) => { co.pulse(&p); None }
                None => break,
            },
            ok = async { match call.as_mut() { Some(c) => c.await, None => std::future::pending().await } } => Some(ok),
            () = sleep => None,
        };
        if let Some(ok) = answered {
            call = None;
            co.answered(ok);
        }
    }
}

/// Holding it keeps a watch; the watch's task ends when it is dropped
/// (released by the client, or with the connection).
struct WatchHandleImpl {
    task: tokio::task::AbortHandle,
}

impl Drop for WatchHandleImpl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl watch_handle::Server for WatchHandleImpl {}

/// The checked envelope of a submission: the sender (one of the account's
/// addresses) and each recipient with whether it is served here.
pub(super) fn envelope_of(
    s: &Services,
    account: AccountId,
    envelope: quail_protocol::quail_capnp::smtp_envelope::Reader<'_>,
) -> Result<(String, Vec<(String, bool)>), capnp::Error> {
    use crate::mail::outbox;
    let from = text(envelope.get_mail_from(), "mailFrom", outbox::MAX_ADDRESS_BYTES)?;
    let from = outbox::sender_address(&s.accounts, account, from, &s.config.domains).map_err(to_capnp)?;
    let rcpts = envelope.get_rcpt_to()?;
    let max = s.config.limits.max_recipients;
    if rcpts.len() > max {
        return Err(to_capnp(Error::LimitExceeded(format!(
            "{} recipients; the limit is {max}",
            rcpts.len()
        ))));
    }
    if rcpts.is_empty() {
        return Err(to_capnp(Error::invalid("no recipients")));
    }
    let mut recipients = Vec::with_capacity(rcpts.len() as usize);
    for r in rcpts.iter() {
        let addr = text(r, "recipient", outbox::MAX_ADDRESS_BYTES)?;
        outbox::check_address(addr).map_err(to_capnp)?;
        let local = outbox::is_local(&s.accounts, addr, &s.config.domains).map_err(to_capnp)?;
        recipients.push((addr.to_string(), local));
    }
    Ok((from, recipients))
}
