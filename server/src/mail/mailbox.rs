//! Mailboxes: create, rename, move in the tree, delete. Role mailboxes are
//! created with the account and cannot be deleted; names are unique among
//! siblings (ignoring case).

use crate::account::AccountId;
use crate::error::{Error, Result};
use crate::mail::{MailboxId, MailboxRecord, Mailstore, Role, encode, mailbox_key, mailboxes_in};
use crate::store::{KeyRange, Order, Space};
use crate::sync::{ChangeSet, Kind, Op, State};

/// Longest mailbox name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Most mailboxes per account.
pub const MAX_MAILBOXES: usize = 10_000;
/// Deepest nesting.
pub const MAX_DEPTH: usize = 32;

fn check_name(name: &str) -> Result<String> {
    let n = name.trim();
    if n.is_empty() || n.len() > MAX_NAME_BYTES {
        return Err(Error::invalid(format!("mailbox names are 1 to {MAX_NAME_BYTES} bytes")));
    }
    if n.chars().any(char::is_control) || n.contains('/') {
        return Err(Error::invalid(format!("mailbox name {name:?}: no control characters or '/'")));
    }
    Ok(n.to_owned())
}

/// Checks that `parent` exists, `name` is free under it, and (for a move)
/// that `moving` is not being put under itself.
fn check_place(
    all: &[MailboxRecord],
    name: &str,
    parent: Option<MailboxId>,
    moving: Option<MailboxId>,
) -> Result<()> {
    if let Some(p) = parent {
        if !all.iter().any(|m| m.id == p) {
            return Err(Error::not_found(format!("no mailbox {}", p.0)));
        }
        // Walk up from the parent: neither a cycle nor too deep.
        let mut at = Some(p);
        let mut depth = 0;
        while let Some(id) = at {
            if Some(id) == moving {
                return Err(Error::invalid("a mailbox cannot be moved under itself"));
            }
            depth += 1;
            if depth > MAX_DEPTH {
                return Err(Error::LimitExceeded(format!("mailboxes nest at most {MAX_DEPTH} deep")));
            }
            at = all.iter().find(|m| m.id == id).and_then(|m| m.parent);
        }
    }
    if all.iter().any(|m| m.parent == parent && Some(m.id) != moving && m.name.eq_ignore_ascii_case(name)) {
        return Err(Error::AlreadyExists(format!("a mailbox named {name:?} exists there")));
    }
    Ok(())
}

impl Mailstore {
    /// Creates a mailbox under `parent` (None: top level).
    pub async fn create_mailbox(
        &self,
        account: AccountId,
        name: &str,
        parent: Option<MailboxId>,
    ) -> Result<(MailboxRecord, State)> {
        let name = check_name(name)?;
        let keep = self.config().keep_changes;
        self.db()
            .write_durable(|txn| {
                let all = mailboxes_in(txn, account)?;
                if all.len() >= MAX_MAILBOXES {
                    return Err(Error::LimitExceeded(format!(
                        "an account has at most {MAX_MAILBOXES} mailboxes"
                    )));
                }
                check_place(&all, &name, parent, None)?;
                let id = MailboxId(txn.next_id("mailbox")?);
                let record = MailboxRecord { id, name: name.clone(), parent, role: Role::None };
                txn.put(Space::Mailboxes, mailbox_key(account, id), encode(&record)?);
                let mut changes = ChangeSet::new();
                changes.note(Kind::Mailbox, id.0, Op::Created);
                let state = changes.commit(txn, account, keep)?;
                Ok((record, state))
            })
            .await
    }

    /// Renames a mailbox and/or moves it under another parent.
    pub async fn rename_mailbox(
        &self,
        account: AccountId,
        id: MailboxId,
        name: &str,
        parent: Option<MailboxId>,
    ) -> Result<(MailboxRecord, State)> {
        let name = check_name(name)?;
        let keep = self.config().keep_changes;
        self.db()
            .write_durable(|txn| {
                let all = mailboxes_in(txn, account)?;
                let mut record = all
                    .iter()
                    .find(|m| m.id == id)
                    .cloned()
                    .ok_or_else(|| Error::not_found(format!("no mailbox {}", id.0)))?;
                check_place(&all, &name, parent, Some(id))?;
                record.name = name.clone();
                record.parent = parent;
                txn.put(Space::Mailboxes, mailbox_key(account, id), encode(&record)?);
                let mut changes = ChangeSet::new();
                changes.note(Kind::Mailbox, id.0, Op::Updated);
                let state = changes.commit(txn, account, keep)?;
                Ok((record, state))
            })
            .await
    }

    /// Deletes an empty mailbox without children. Role mailboxes stay.
    pub async fn delete_mailbox(&self, account: AccountId, id: MailboxId) -> Result<State> {
        let keep = self.config().keep_changes;
        self.db()
            .write_durable(|txn| {
                let all = mailboxes_in(txn, account)?;
                let record = all
                    .iter()
                    .find(|m| m.id == id)
                    .ok_or_else(|| Error::not_found(format!("no mailbox {}", id.0)))?;
                if record.role != Role::None {
                    return Err(Error::invalid(format!(
                        "{} is a role mailbox ({:?}) and cannot be deleted",
                        record.name, record.role
                    )));
                }
                if all.iter().any(|m| m.parent == Some(id)) {
                    return Err(Error::invalid(format!(
                        "{} has child mailboxes; delete or move them first",
                        record.name
                    )));
                }
                let prefix = crate::mail::index::prefix(account, id, crate::mail::index::Facet::All);
                if !txn.scan(Space::EmailIndex, &KeyRange::prefix(&prefix), Order::Ascending, 1)?.is_empty() {
                    return Err(Error::invalid(format!(
                        "{} is not empty; move or destroy its emails first",
                        record.name
                    )));
                }
                txn.delete(Space::Mailboxes, mailbox_key(account, id));
                let mut changes = ChangeSet::new();
                changes.note(Kind::Mailbox, id.0, Op::Destroyed);
                changes.commit(txn, account, keep)
            })
            .await
    }
}
