//! Changes to existing emails: keywords, mailboxes, destroy.
//!
//! Each call is one transaction. Whole-call problems — too many ids, an
//! invalid keyword, a mailbox the account does not have, `ifInState` not
//! matching — fail the call and change nothing. Per-email problems (no such
//! email, an email that would be left in no mailbox) are reported per id,
//! and the other ids are applied; no email is ever half-changed.

use std::collections::HashMap;

use crate::account::{AccountId, Counter};
use crate::blob;
use crate::error::{Error, Result};
use crate::mail::{
    EmailId, EmailRecord, MailboxId, Mailstore, Role, email_in, email_key, index, keyword, mailbox_key,
    put_email, role_in, thread,
};
use crate::store::{Space, Txn};
use crate::sync::{self, ChangeSet, Kind, Op, State};

/// What a batch update did.
#[derive(Debug, Default)]
pub struct UpdateOutcome {
    /// The account's state before.
    pub old_state: State,
    /// And after.
    pub new_state: State,
    /// Ids changed (or already as asked).
    pub updated: Vec<EmailId>,
    /// Ids not changed, each with why.
    pub not_updated: Vec<(EmailId, Error)>,
}

fn distinct(ids: &[EmailId], max: usize) -> Result<Vec<EmailId>> {
    if ids.len() > max {
        return Err(Error::LimitExceeded(format!("{} ids in one call; the limit is {max}", ids.len())));
    }
    let mut seen = std::collections::HashSet::new();
    Ok(ids.iter().copied().filter(|i| seen.insert(*i)).collect())
}

fn check_state(txn: &Txn<'_>, account: AccountId, if_in_state: Option<State>) -> Result<State> {
    let current = sync::state_in(txn, account)?;
    match if_in_state {
        Some(expected) if expected != current => {
            Err(Error::StateMismatch { expected: expected.0, actual: current.0 })
        }
        _ => Ok(current),
    }
}

/// Rewrites an email and keeps its indexes in step.
fn replace(
    txn: &mut Txn<'_>,
    account: AccountId,
    old: &EmailRecord,
    new: &EmailRecord,
    changes: &mut ChangeSet,
) -> Result<()> {
    if old == new {
        return Ok(());
    }
    put_email(txn, account, new)?;
    index::apply(txn, account, Some(old), Some(new), changes)?;
    changes.note(Kind::Email, new.id.0, Op::Updated);
    Ok(())
}

/// Moves one email from the mailbox with role `from` to the one with role
/// `to`, inside `txn`; an email that is gone or not in `from` stays as it is.
pub(crate) fn move_in(
    txn: &mut Txn<'_>,
    account: AccountId,
    id: EmailId,
    from: crate::mail::Role,
    to: crate::mail::Role,
    changes: &mut ChangeSet,
) -> Result<()> {
    let (from, to) = (crate::mail::role_in(txn, account, from)?, crate::mail::role_in(txn, account, to)?);
    let Some(old) = crate::mail::email_in(txn, account, id)? else { return Ok(()) };
    if !old.mailboxes.contains(&from) {
        return Ok(());
    }
    let mut new = old.clone();
    new.mailboxes.retain(|m| *m != from);
    new.mailboxes.push(to);
    new.mailboxes.sort();
    new.mailboxes.dedup();
    replace(txn, account, &old, &new, changes)
}

/// Removes an email for good: record, indexes, thread, blobs, usage.
pub(crate) fn expunge(
    txn: &mut Txn<'_>,
    account: AccountId,
    e: &EmailRecord,
    changes: &mut ChangeSet,
) -> Result<()> {
    txn.delete(Space::Emails, email_key(account, e.id));
    crate::search::index::remove(txn, account.0, e.id.0)?;
    crate::filter::spam::forget(txn, account.0, e.id.0);
    index::apply(txn, account, Some(e), None, changes)?;
    thread::remove_member(txn, account, e, changes)?;
    for b in &e.blobs {
        blob::release(txn, *b)?;
        blob::hold(txn, account.0, *b, -1)?;
    }
    txn.add(Space::Counters, &Counter::UsedBytes.key(account, 0), -(e.size as i64))?;
    txn.add(Space::Counters, &Counter::UsedMessages.key(account, 0), -1)?;
    changes.note(Kind::Email, e.id.0, Op::Destroyed);
    Ok(())
}

impl Mailstore {
    /// Runs `f` on each existing email of `ids` in one transaction; `f`
    /// returns the new record or a per-email error.
    async fn update_each(
        &self,
        account: AccountId,
        ids: &[EmailId],
        if_in_state: Option<State>,
        mut prepare: impl FnMut(&mut Txn<'_>) -> Result<()>,
        mut f: impl FnMut(&mut Txn<'_>, &EmailRecord, &mut ChangeSet) -> Result<std::result::Result<(), Error>>,
    ) -> Result<UpdateOutcome> {
        let ids = distinct(ids, self.config().max_ids)?;
        let keep = self.config().keep_changes;
        self.db()
            .write_durable(|txn| {
                let old_state = check_state(txn, account, if_in_state)?;
                prepare(txn)?;
                let mut changes = ChangeSet::new();
                let mut out = UpdateOutcome { old_state, new_state: old_state, ..UpdateOutcome::default() };
                for id in &ids {
                    match email_in(txn, account, *id)? {
                        None => out.not_updated.push((*id, Error::not_found(format!("no email {}", id.0)))),
                        Some(e) => match f(txn, &e, &mut changes)? {
                            Ok(()) => out.updated.push(*id),
                            Err(why) => out.not_updated.push((*id, why)),
                        },
                    }
                }
                if !changes.is_empty() {
                    out.new_state = changes.commit(txn, account, keep)?;
                }
                Ok(out)
            })
            .await
    }

    /// Adds and removes keywords on emails.
    pub async fn set_keywords(
        &self,
        account: AccountId,
        ids: &[EmailId],
        add: &[String],
        remove: &[String],
        if_in_state: Option<State>,
    ) -> Result<UpdateOutcome> {
        let add = keyword::normalize_all(add)?;
        let remove = keyword::normalize_all(remove)?;
        if let Some(k) = add.iter().find(|k| remove.contains(k)) {
            return Err(Error::invalid(format!("keyword {k} is both added and removed")));
        }
        self.update_each(
            account,
            ids,
            if_in_state,
            |_| Ok(()),
            |txn, e, changes| {
                let mut new = e.clone();
                new.keywords.retain(|k| !remove.contains(k));
                for k in &add {
                    if let Err(at) = new.keywords.binary_search(k) {
                        new.keywords.insert(at, k.clone());
                    }
                }
                if new.keywords.len() > keyword::MAX_KEYWORDS_PER_EMAIL {
                    return Ok(Err(Error::LimitExceeded(format!(
                        "an email has at most {} keywords",
                        keyword::MAX_KEYWORDS_PER_EMAIL
                    ))));
                }
                replace(txn, account, e, &new, changes)?;
                Ok(Ok(()))
            },
        )
        .await
    }

    /// The spam tokens of each of `ids` the account has (read outside any
    /// transaction, on the blocking pool: tokenizing is CPU work).
    async fn spam_tokens(
        &self,
        account: AccountId,
        ids: &[EmailId],
    ) -> Result<HashMap<EmailId, Vec<String>>> {
        let ids = distinct(ids, self.config().max_ids)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = HashMap::new();
            for id in ids {
                match this.raw(account, id) {
                    Ok(raw) => {
                        out.insert(id, crate::filter::spam::features(&raw).tokens);
                    }
                    Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Internal(format!("tokenizing task failed: {e}")))?
    }

    /// Reports emails as spam — they move to Junk — or as not spam — they
    /// move from Junk to the Inbox — and trains the account's spam model on
    /// each, in the same transaction. Reporting an email twice trains it
    /// once; reporting it the other way moves its training over.
    pub async fn report_spam(
        &self,
        account: AccountId,
        ids: &[EmailId],
        is_spam: bool,
        if_in_state: Option<State>,
    ) -> Result<UpdateOutcome> {
        let tokens = self.spam_tokens(account, ids).await?;
        let roles = std::cell::Cell::new((MailboxId(0), MailboxId(0)));
        self.update_each(
            account,
            ids,
            if_in_state,
            |txn| {
                roles.set((role_in(txn, account, Role::Junk)?, role_in(txn, account, Role::Inbox)?));
                Ok(())
            },
            |txn, e, changes| {
                let (junk, inbox) = roles.get();
                let mut new = e.clone();
                if is_spam {
                    new.mailboxes = vec![junk];
                } else if new.mailboxes.contains(&junk) {
                    new.mailboxes.retain(|m| *m != junk);
                    new.mailboxes.push(inbox);
                    new.mailboxes.sort();
                    new.mailboxes.dedup();
                }
                replace(txn, account, e, &new, changes)?;
                if let Some(t) = tokens.get(&e.id) {
                    crate::filter::spam::learn(txn, account.0, e.id.0, t, is_spam)?;
                }
                Ok(Ok(()))
            },
        )
        .await
    }

    /// Adds emails to and removes them from mailboxes. An email moved into
    /// Junk trains the account's spam model as spam; one moved out of Junk
    /// (and not to Trash), as not spam.
    pub async fn move_emails(
        &self,
        account: AccountId,
        ids: &[EmailId],
        add: &[MailboxId],
        remove: &[MailboxId],
        if_in_state: Option<State>,
    ) -> Result<UpdateOutcome> {
        let all: Vec<MailboxId> = add.iter().chain(remove).copied().collect();
        let (junk, trash) =
            (self.mailbox_by_role(account, Role::Junk)?, self.mailbox_by_role(account, Role::Trash)?);
        let tokens = if all.contains(&junk) { self.spam_tokens(account, ids).await? } else { HashMap::new() };
        self.update_each(
            account,
            ids,
            if_in_state,
            |txn| {
                for mb in &all {
                    if !txn.exists(Space::Mailboxes, &mailbox_key(account, *mb))? {
                        return Err(Error::not_found(format!("no mailbox {}", mb.0)));
                    }
                }
                Ok(())
            },
            |txn, e, changes| {
                let mut new = e.clone();
                new.mailboxes.retain(|m| !remove.contains(m));
                new.mailboxes.extend(add.iter().filter(|m| !remove.contains(m)));
                new.mailboxes.sort();
                new.mailboxes.dedup();
                if new.mailboxes.is_empty() {
                    return Ok(Err(Error::invalid(format!("email {} would be in no mailbox", e.id.0))));
                }
                replace(txn, account, e, &new, changes)?;
                let (was, is) = (e.mailboxes.contains(&junk), new.mailboxes.contains(&junk));
                if let Some(t) = tokens.get(&e.id)
                    && was != is
                    && !new.mailboxes.contains(&trash)
                {
                    crate::filter::spam::learn(txn, account.0, e.id.0, t, is)?;
                }
                Ok(Ok(()))
            },
        )
        .await
    }

    /// Moves emails to Trash; emails only in Trash are expunged.
    pub async fn destroy(
        &self,
        account: AccountId,
        ids: &[EmailId],
        if_in_state: Option<State>,
    ) -> Result<UpdateOutcome> {
        let trash = std::cell::Cell::new(MailboxId(0));
        self.update_each(
            account,
            ids,
            if_in_state,
            |txn| {
                trash.set(role_in(txn, account, Role::Trash)?);
                Ok(())
            },
            |txn, e, changes| {
                let trash = trash.get();
                if e.mailboxes == [trash] {
                    expunge(txn, account, e, changes)?;
                } else {
                    let mut new = e.clone();
                    new.mailboxes = vec![trash];
                    replace(txn, account, e, &new, changes)?;
                }
                Ok(Ok(()))
            },
        )
        .await
    }
}
