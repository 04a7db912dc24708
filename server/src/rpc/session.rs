//! `Session`: one account's mail. The account id lives in the capability,
//! never in a parameter, so no call can reach another account's data.

use std::rc::Rc;
use std::sync::Arc;

use quail_protocol::quail_capnp::{Sort, Tristate, query, session};

use super::convert::{self, Props};
use super::{Services, not_served, now_ms, text, to_capnp};
use crate::account::AccountId;
use crate::error::Error;
use crate::mail::{EmailId, Filter, MailboxId, Query, Start};

pub(crate) struct SessionImpl {
    services: Arc<Services>,
    account: AccountId,
}

impl SessionImpl {
    pub(crate) fn new(services: Arc<Services>, account: AccountId) -> Self {
        SessionImpl { services, account }
    }

    fn check_ids(&self, n: u32) -> Result<(), capnp::Error> {
        let max = self.services.config.limits.max_ids_per_call;
        if n > max {
            return Err(to_capnp(Error::LimitExceeded(format!(
                "{n} ids in one call; the limit is {max}"
            ))));
        }
        Ok(())
    }
}

fn unsupported(what: &'static str) -> capnp::Error {
    to_capnp(Error::Unimplemented(what))
}

/// Reads a wire `Query` into the domain's, refusing options this server
/// does not serve yet. Peer input: never panics (a fuzz target drives it).
pub fn decode_query(q: query::Reader<'_>, max_limit: u32) -> Result<Query, capnp::Error> {
    let f = q.get_filter()?;
    if f.get_flagged()? != Tristate::Any {
        return Err(unsupported("query filter flagged"));
    }
    if f.get_has_attachment()? != Tristate::Any {
        return Err(unsupported("query filter hasAttachment"));
    }
    if f.get_after() != 0 || f.get_before() != 0 {
        return Err(unsupported("query filter by date"));
    }
    if !f.get_from()?.is_empty() || !f.get_to()?.is_empty() {
        return Err(unsupported("query filter by address"));
    }
    if q.get_collapse_threads() {
        return Err(unsupported("query collapseThreads"));
    }
    let unread_only = match f.get_unread()? {
        Tristate::Any => false,
        Tristate::Yes => true,
        Tristate::No => return Err(unsupported("query filter unread=no")),
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
        filter: Filter {
            mailbox: match f.get_in_mailbox() {
                0 => None,
                m => Some(MailboxId(m)),
            },
            unread_only,
        },
        newest_first: q.get_sort()? == Sort::ReceivedDesc,
        start,
        limit: limit as usize,
    })
}

impl session::Server for SessionImpl {
    async fn account(
        self: Rc<Self>,
        _: session::AccountParams,
        mut results: session::AccountResults,
    ) -> Result<(), capnp::Error> {
        let s = &self.services;
        let account = s
            .accounts
            .get(self.account)
            .map_err(to_capnp)?
            .ok_or_else(|| to_capnp(Error::not_found("this account was deleted")))?;
        let usage = s.accounts.usage(self.account).map_err(to_capnp)?;
        let state = s.mail.state(self.account).map_err(to_capnp)?;
        let mut r = results.get();
        convert::account(r.reborrow().init_account(), &account, usage);
        r.set_state(state.0);
        Ok(())
    }

    async fn mailboxes(
        self: Rc<Self>,
        _: session::MailboxesParams,
        mut results: session::MailboxesResults,
    ) -> Result<(), capnp::Error> {
        let s = &self.services;
        let state = s.mail.state(self.account).map_err(to_capnp)?;
        let boxes = s.mail.mailboxes(self.account).map_err(to_capnp)?;
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
        let q = params.get()?.get_query()?;
        let query = decode_query(q, self.services.config.limits.max_query_limit)?;
        let page = self
            .services
            .mail
            .query(self.account, &query)
            .map_err(to_capnp)?;
        let mut r = results.get().init_result();
        r.set_position(u32::try_from(page.position).unwrap_or(u32::MAX));
        r.set_total(page.total);
        r.set_query_state(page.state.0);
        let mut ids = r.init_ids(page.ids.len() as u32);
        for (i, id) in page.ids.iter().enumerate() {
            ids.set(i as u32, id.0);
        }
        Ok(())
    }

    async fn get(
        self: Rc<Self>,
        params: session::GetParams,
        mut results: session::GetResults,
    ) -> Result<(), capnp::Error> {
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
        let mut found = Vec::with_capacity(ids.len() as usize);
        let mut missing = Vec::new();
        for id in ids.iter() {
            match self
                .services
                .mail
                .email(self.account, EmailId(id))
                .map_err(to_capnp)?
            {
                Some(e) => found.push(e),
                None => missing.push(id),
            }
        }
        let mut r = results.get();
        let mut list = r.reborrow().init_emails(found.len() as u32);
        for (i, e) in found.iter().enumerate() {
            convert::email(list.reborrow().get(i as u32), e, props)?;
        }
        let mut nf = r.init_not_found(missing.len() as u32);
        for (i, id) in missing.iter().enumerate() {
            nf.set(i as u32, *id);
        }
        Ok(())
    }

    async fn raw(
        self: Rc<Self>,
        params: session::RawParams,
        mut results: session::RawResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let id = EmailId(p.get_id());
        let (offset, length) = if p.has_range() {
            let r = p.get_range()?;
            (r.get_offset(), r.get_length())
        } else {
            (0, 0)
        };
        let raw = self.services.mail.raw(self.account, id).map_err(to_capnp)?;
        let total = raw.len() as u64;
        if offset > total {
            return Err(to_capnp(Error::invalid(format!(
                "offset {offset} is past the end of the {total}-byte message"
            ))));
        }
        let max = self.services.config.limits.max_inline_bytes;
        let want = if length == 0 {
            total - offset
        } else {
            length.min(total - offset)
        };
        let n = want.min(max);
        let mut b = results.get().init_bytes();
        b.set_total_size(total);
        b.set_offset(offset);
        b.set_inline(&raw[offset as usize..(offset + n) as usize]);
        Ok(())
    }

    async fn create_app_token(
        self: Rc<Self>,
        params: session::CreateAppTokenParams,
        mut results: session::CreateAppTokenResults,
    ) -> Result<(), capnp::Error> {
        let label = text(
            params.get()?.get_label(),
            "label",
            crate::account::MAX_LABEL_BYTES,
        )?;
        let (secret, token) = self
            .services
            .accounts
            .create_token(self.account, label, now_ms())
            .await
            .map_err(to_capnp)?;
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
        let tokens = self
            .services
            .accounts
            .tokens(self.account)
            .map_err(to_capnp)?;
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
        let id = params.get()?.get_id();
        self.services
            .accounts
            .revoke_tokens(self.account, Some(id))
            .await
            .map_err(to_capnp)?;
        Ok(())
    }

    not_served! {
        create_mailbox(session::CreateMailboxParams, session::CreateMailboxResults) => "Session.createMailbox";
        rename_mailbox(session::RenameMailboxParams, session::RenameMailboxResults) => "Session.renameMailbox";
        delete_mailbox(session::DeleteMailboxParams, session::DeleteMailboxResults) => "Session.deleteMailbox";
        query_changes(session::QueryChangesParams, session::QueryChangesResults) => "Session.queryChanges";
        fetch_part(session::FetchPartParams, session::FetchPartResults) => "Session.fetchPart";
        threads(session::ThreadsParams, session::ThreadsResults) => "Session.threads";
        changes(session::ChangesParams, session::ChangesResults) => "Session.changes";
        set_keywords(session::SetKeywordsParams, session::SetKeywordsResults) => "Session.setKeywords";
        move_(session::MoveParams, session::MoveResults) => "Session.move";
        destroy(session::DestroyParams, session::DestroyResults) => "Session.destroy";
        search(session::SearchParams, session::SearchResults) => "Session.search";
        upload(session::UploadParams, session::UploadResults) => "Session.upload";
        submit(session::SubmitParams, session::SubmitResults) => "Session.submit";
        submissions(session::SubmissionsParams, session::SubmissionsResults) => "Session.submissions";
        report_spam(session::ReportSpamParams, session::ReportSpamResults) => "Session.reportSpam";
        watch(session::WatchParams, session::WatchResults) => "Session.watch";
    }
}
