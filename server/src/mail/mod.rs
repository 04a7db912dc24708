//! Mail: accounts' mailboxes and emails, ingest, queries and reads.
//!
//! - [`parse`] — raw bytes → envelope and preview (mail-parser, lenient).
//! - this file — the stored records and the operations on them.
//!
//! An email is stored as one record (`Space::Emails`), its raw bytes as a
//! blob, one index entry per mailbox it is in plus one under mailbox 0
//! ("all mail") in `Space::MailboxByDate`, the same again in
//! `Space::UnreadByDate` while it is unread, and counters: per mailbox
//! total/unread, the account's usage, and the account's state. All of these
//! change in the one transaction of the ingest, so they never disagree.

pub mod parse;

use serde::{Deserialize, Serialize};

use crate::account::{AccountId, Accounts, Counter};
use crate::blob::{self, BlobId};
use crate::error::{Error, Result};
use crate::store::key::{self, Key};
use crate::store::{Db, KeyRange, Order, Space, StoreError, Txn};

pub use parse::{Addr, Envelope, Parsed};

/// An email's id: unique across the server, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EmailId(pub u64);

/// A mailbox's id: unique across the server, never reused. 0 is "all mail"
/// in indexes and "no mailbox" on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MailboxId(pub u64);

impl MailboxId {
    /// The pseudo-mailbox every email is in.
    pub const ALL: MailboxId = MailboxId(0);
}

/// An account's state: its modification sequence, bumped by every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct State(pub u64);

/// A mailbox's special role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// No role.
    None,
    /// Where new mail arrives.
    Inbox,
    /// Copies of sent mail.
    Sent,
    /// Unsent drafts.
    Drafts,
    /// Spam.
    Junk,
    /// Deleted mail, expunged from here.
    Trash,
    /// Archived mail.
    Archive,
}

impl Role {
    /// The roles every account starts with, in display order, with their names.
    pub const DEFAULTS: [(Role, &'static str); 6] = [
        (Role::Inbox, "Inbox"),
        (Role::Drafts, "Drafts"),
        (Role::Sent, "Sent"),
        (Role::Archive, "Archive"),
        (Role::Junk, "Junk"),
        (Role::Trash, "Trash"),
    ];
}

/// A mailbox as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxRecord {
    /// Its id.
    pub id: MailboxId,
    /// Display name.
    pub name: String,
    /// Parent mailbox (`None` at top level).
    pub parent: Option<MailboxId>,
    /// Role.
    pub role: Role,
}

/// A mailbox with its counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxView {
    /// The record.
    pub mailbox: MailboxRecord,
    /// Emails in it.
    pub total: u64,
    /// Unread emails in it.
    pub unread: u64,
}

/// The keyword that marks an email read.
pub const SEEN: &str = "$seen";

/// An email as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailRecord {
    /// Its id.
    pub id: EmailId,
    /// When it arrived, ms since the epoch.
    pub received_ms: i64,
    /// Raw size in bytes.
    pub size: u64,
    /// The raw message.
    pub blob: BlobId,
    /// Mailboxes it is in (never empty).
    pub mailboxes: Vec<MailboxId>,
    /// Keywords, sorted.
    pub keywords: Vec<String>,
    /// Its thread.
    pub thread: u64,
    /// Header fields.
    pub envelope: Envelope,
    /// Text preview.
    pub preview: String,
    /// Whether it has attachments.
    pub has_attachment: bool,
}

impl EmailRecord {
    /// Whether it lacks `$seen`.
    pub fn is_unread(&self) -> bool {
        !self.keywords.iter().any(|k| k == SEEN)
    }
}

/// Which emails a query selects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this mailbox (`None`: all mail).
    pub mailbox: Option<MailboxId>,
    /// Only unread emails.
    pub unread_only: bool,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    /// Selection.
    pub filter: Filter,
    /// Newest first when true.
    pub newest_first: bool,
    /// Page start.
    pub start: Start,
    /// Page size.
    pub limit: usize,
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

/// Outcome of delivering to one recipient.
pub type RecipientOutcome = std::result::Result<EmailId, Error>;

/// The mail store.
#[derive(Debug, Clone)]
pub struct Mailstore {
    db: Db,
}

fn decode<T: for<'de> Deserialize<'de>>(space: Space, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| {
        StoreError::Corrupt {
            space,
            detail: e.to_string(),
        }
        .into()
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| Error::Internal(format!("encoding record: {e}")))
}

fn email_key(account: AccountId, id: EmailId) -> Vec<u8> {
    Key::new().u64(account.0).u64(id.0).build()
}

fn mailbox_key(account: AccountId, id: MailboxId) -> Vec<u8> {
    Key::new().u64(account.0).u64(id.0).build()
}

fn date_key(account: AccountId, mailbox: MailboxId, received_ms: i64, id: EmailId) -> Vec<u8> {
    Key::new()
        .u64(account.0)
        .u64(mailbox.0)
        .u64(received_ms.max(0) as u64)
        .u64(id.0)
        .build()
}

fn date_prefix(account: AccountId, mailbox: MailboxId) -> Vec<u8> {
    Key::new().u64(account.0).u64(mailbox.0).build()
}

/// Where the email id sits in a date-index key.
const DATE_KEY_ID_OFFSET: usize = 24;

impl Mailstore {
    /// The mail store on `db`.
    pub fn new(db: Db) -> Self {
        Mailstore { db }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Creates an account with its role mailboxes, durably.
    pub async fn create_account(
        &self,
        name: &str,
        password_hash: String,
        quota_bytes: u64,
        quota_messages: u64,
        now_ms: i64,
    ) -> Result<crate::account::Account> {
        self.db
            .write_durable(|txn| {
                let account = Accounts::insert(
                    txn,
                    name,
                    password_hash.clone(),
                    quota_bytes,
                    quota_messages,
                    now_ms,
                )?;
                for (role, name) in Role::DEFAULTS {
                    let id = MailboxId(txn.next_id("mailbox")?);
                    let record = MailboxRecord {
                        id,
                        name: name.to_owned(),
                        parent: None,
                        role,
                    };
                    txn.put(
                        Space::Mailboxes,
                        mailbox_key(account.id, id),
                        encode(&record)?,
                    );
                }
                txn.add(Space::Counters, &Counter::State.key(account.id, 0), 1)?;
                Ok(account)
            })
            .await
    }

    /// The account's current state.
    pub fn state(&self, account: AccountId) -> Result<State> {
        Ok(State(
            self.db
                .counter(Space::Counters, &Counter::State.key(account, 0))?
                .max(0) as u64,
        ))
    }

    /// The account's mailbox records, without counts.
    pub fn mailbox_records(&self, account: AccountId) -> Result<Vec<MailboxRecord>> {
        let rows = self.db.scan(
            Space::Mailboxes,
            &KeyRange::prefix(&Key::new().u64(account.0).build()),
            Order::Ascending,
            usize::MAX,
        )?;
        rows.into_iter()
            .map(|(_, v)| decode(Space::Mailboxes, &v))
            .collect()
    }

    /// The account's mailboxes with their counts.
    pub fn mailboxes(&self, account: AccountId) -> Result<Vec<MailboxView>> {
        self.mailbox_records(account)?
            .into_iter()
            .map(|mailbox| {
                let total = self.counter(Counter::MailboxTotal, account, mailbox.id.0)?;
                let unread = self.counter(Counter::MailboxUnread, account, mailbox.id.0)?;
                Ok(MailboxView {
                    mailbox,
                    total,
                    unread,
                })
            })
            .collect()
    }

    /// The account's mailbox with `role`.
    pub fn mailbox_by_role(&self, account: AccountId, role: Role) -> Result<MailboxId> {
        self.mailbox_records(account)?
            .into_iter()
            .find(|m| m.role == role)
            .map(|m| m.id)
            .ok_or_else(|| {
                Error::Internal(format!("account {} has no {role:?} mailbox", account.0))
            })
    }

    fn counter(&self, c: Counter, account: AccountId, sub: u64) -> Result<u64> {
        Ok(self
            .db
            .counter(Space::Counters, &c.key(account, sub))?
            .max(0) as u64)
    }

    /// Stores one raw message for each of `accounts` (into their Inbox) in one
    /// transaction and returns once it is durable. Each recipient's outcome
    /// is separate: one over quota does not stop the others.
    pub async fn deliver(
        &self,
        accounts: &[AccountId],
        raw: &[u8],
        received_ms: i64,
    ) -> Result<Vec<RecipientOutcome>> {
        if raw.is_empty() {
            return Err(Error::invalid("empty message"));
        }
        let parsed = parse::parse(raw);
        let blob = BlobId::of(raw);
        let inboxes = accounts
            .iter()
            .map(|a| self.mailbox_by_role(*a, Role::Inbox))
            .collect::<Result<Vec<_>>>()?;
        let (outcomes, ticket) = self.db.write(|txn| {
            let mut outcomes = Vec::with_capacity(accounts.len());
            for (account, inbox) in accounts.iter().zip(&inboxes) {
                outcomes.push(insert_email(
                    txn,
                    *account,
                    *inbox,
                    raw,
                    blob,
                    &parsed,
                    received_ms,
                ));
            }
            // Only fatal storage errors abort the whole transaction.
            for o in &outcomes {
                if let Err(Error::Store(e)) = o {
                    return Err(Error::Internal(format!("storage: {e}")));
                }
            }
            Ok::<_, Error>(outcomes)
        })?;
        self.db.sync(ticket).await?;
        Ok(outcomes)
    }

    /// One page of the emails a query selects.
    pub fn query(&self, account: AccountId, q: &Query) -> Result<QueryPage> {
        let state = self.state(account)?;
        let mailbox = q.filter.mailbox.unwrap_or(MailboxId::ALL);
        if mailbox != MailboxId::ALL && !self.mailbox_exists(account, mailbox)? {
            return Err(Error::not_found(format!("no mailbox {}", mailbox.0)));
        }
        let (space, counter) = if q.filter.unread_only {
            (Space::UnreadByDate, Counter::MailboxUnread)
        } else {
            (Space::MailboxByDate, Counter::MailboxTotal)
        };
        let total = self.counter(counter, account, mailbox.0)?;
        let order = if q.newest_first {
            Order::Descending
        } else {
            Order::Ascending
        };
        let full = KeyRange::prefix(&date_prefix(account, mailbox));

        let (range, skip, position) = match q.start {
            Start::Position(p) => (full, p, p),
            Start::Anchor(anchor, offset) => {
                let Some(email) = self.email(account, anchor)? else {
                    return Err(Error::not_found(format!(
                        "anchor email {} not found",
                        anchor.0
                    )));
                };
                let anchor_key = date_key(account, mailbox, email.received_ms, anchor);
                // Index of the anchor = entries before it in this order.
                let before = self.count_before(space, &full, &anchor_key, order)?;
                let start = (before as i64).saturating_add(offset).max(0) as u64;
                (full, start, start)
            }
        };
        let rows = self
            .db
            .scan(space, &range, order, skip as usize + q.limit)?;
        let ids = rows
            .into_iter()
            .skip(skip as usize)
            .map(|(k, _)| {
                key::read_u64(&k, DATE_KEY_ID_OFFSET)
                    .map(EmailId)
                    .ok_or_else(|| {
                        Error::Store(StoreError::Corrupt {
                            space,
                            detail: "date index key".into(),
                        })
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(QueryPage {
            ids,
            position,
            total,
            state,
        })
    }

    fn count_before(
        &self,
        space: Space,
        full: &KeyRange,
        anchor_key: &[u8],
        order: Order,
    ) -> Result<u64> {
        let mut range = full.clone();
        match order {
            Order::Ascending => range.end = std::ops::Bound::Excluded(anchor_key.to_vec()),
            Order::Descending => range.start = std::ops::Bound::Excluded(anchor_key.to_vec()),
        }
        Ok(self.db.scan(space, &range, order, usize::MAX)?.len() as u64)
    }

    fn mailbox_exists(&self, account: AccountId, id: MailboxId) -> Result<bool> {
        Ok(self
            .db
            .get(Space::Mailboxes, &mailbox_key(account, id))?
            .is_some())
    }

    /// One email of the account, if it exists there.
    pub fn email(&self, account: AccountId, id: EmailId) -> Result<Option<EmailRecord>> {
        self.db
            .get(Space::Emails, &email_key(account, id))?
            .map(|b| decode(Space::Emails, &b))
            .transpose()
    }

    /// The raw bytes of one email of the account.
    pub fn raw(&self, account: AccountId, id: EmailId) -> Result<Vec<u8>> {
        let email = self
            .email(account, id)?
            .ok_or_else(|| Error::not_found(format!("no email {}", id.0)))?;
        blob::get(&self.db, email.blob)?.ok_or_else(|| {
            Error::Store(StoreError::Corrupt {
                space: Space::Blobs,
                detail: format!("email {} refers to missing blob {}", id.0, email.blob),
            })
        })
    }
}

/// Adds one email to `account`'s `mailbox` inside `txn`: record, blob
/// reference, index entries, counters, state.
fn insert_email(
    txn: &mut Txn<'_>,
    account: AccountId,
    mailbox: MailboxId,
    raw: &[u8],
    blob: BlobId,
    parsed: &Parsed,
    received_ms: i64,
) -> RecipientOutcome {
    let acct = Accounts::get_in(txn, account)?
        .ok_or_else(|| Error::not_found(format!("account {} is gone", account.0)))?;
    let size = raw.len() as u64;
    let used_bytes = txn.counter(Space::Counters, &Counter::UsedBytes.key(account, 0))?;
    let used_msgs = txn.counter(Space::Counters, &Counter::UsedMessages.key(account, 0))?;
    if acct.quota_bytes > 0 && used_bytes.max(0) as u64 + size > acct.quota_bytes {
        return Err(Error::OverQuota(format!(
            "{} would exceed its byte quota",
            acct.name
        )));
    }
    if acct.quota_messages > 0 && used_msgs.max(0) as u64 + 1 > acct.quota_messages {
        return Err(Error::OverQuota(format!(
            "{} would exceed its message quota",
            acct.name
        )));
    }
    let id = EmailId(txn.next_id("email")?);
    let record = EmailRecord {
        id,
        received_ms,
        size,
        blob,
        mailboxes: vec![mailbox],
        keywords: Vec::new(),
        thread: id.0,
        envelope: parsed.envelope.clone(),
        preview: parsed.preview.clone(),
        has_attachment: parsed.has_attachment,
    };
    blob::put(txn, blob, raw)?;
    txn.put(Space::Emails, email_key(account, id), encode(&record)?);
    for mb in [MailboxId::ALL, mailbox] {
        txn.put(
            Space::MailboxByDate,
            date_key(account, mb, received_ms, id),
            Vec::new(),
        );
        txn.put(
            Space::UnreadByDate,
            date_key(account, mb, received_ms, id),
            Vec::new(),
        );
        txn.add(
            Space::Counters,
            &Counter::MailboxTotal.key(account, mb.0),
            1,
        )?;
        txn.add(
            Space::Counters,
            &Counter::MailboxUnread.key(account, mb.0),
            1,
        )?;
    }
    txn.add(
        Space::Counters,
        &Counter::UsedBytes.key(account, 0),
        size as i64,
    )?;
    txn.add(Space::Counters, &Counter::UsedMessages.key(account, 0), 1)?;
    txn.add(Space::Counters, &Counter::State.key(account, 0), 1)?;
    Ok(id)
}
