//! Mail: accounts' mailboxes, emails, keywords and threads.
//!
//! - [`parse`] — raw bytes → envelope, preview, body structure, attachments
//!   (mail-parser; lenient, never panics).
//! - [`raw`] — the raw message stored as a skeleton around attachment blobs,
//!   rebuilt byte for byte.
//! - [`ingest`] — parse → blobs → thread → one transaction → group commit.
//! - [`index`] — the per-mailbox date indexes (all, unread, flagged) and
//!   their counters, kept in step with every email change.
//! - [`thread`] — threading by Message-ID / In-Reply-To / References with a
//!   normalised-subject fallback; merges.
//! - [`keyword`] — keyword validation.
//! - [`mailbox`] — create, rename, nest, delete.
//! - [`update`] — set keywords, move, destroy (to Trash; expunge from Trash).
//! - [`query`] — filters, sort, paging, collapse by thread.
//! - [`scope`] — what an attenuated session may see and do.
//!
//! Every mutation happens in one store transaction that also writes the
//! change log ([`crate::sync`]), so records, indexes, counters, blob
//! references and changes never disagree.

pub mod dsn;
pub mod find;
pub mod index;
pub mod ingest;
pub mod keyword;
pub mod mailbox;
pub mod outbox;
pub mod parse;
pub mod query;
pub mod raw;
pub mod scope;
pub mod thread;
pub mod update;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::account::{AccountId, Counter};
use crate::blob::{self, BlobId, upload};
use crate::error::{Error, Result};
use crate::store::key::Key;
use crate::store::{Db, KeyRange, Order, Reader, Space, StoreError, Txn};
use crate::sync::{self, State};

pub use parse::{Addr, BodyPart, Envelope, Parsed};
pub use query::{Filter, Query, QueryPage, Start, Tri};
pub use update::UpdateOutcome;

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

/// A thread's id: unique across the server, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ThreadId(pub u64);

/// A mailbox's special role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// Where an email's raw message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RawRef {
    /// In this blob, as it is.
    Plain(BlobId),
    /// In this blob, as a [`raw::Skeleton`] around attachment blobs.
    Skeleton(BlobId),
}

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
    pub raw: RawRef,
    /// Every blob it holds a reference to (raw and attachments), distinct.
    pub blobs: Vec<BlobId>,
    /// Mailboxes it is in: sorted, distinct, never empty.
    pub mailboxes: Vec<MailboxId>,
    /// Keywords: sorted, distinct, lower case.
    pub keywords: Vec<String>,
    /// Its thread.
    pub thread: ThreadId,
    /// Header fields.
    pub envelope: Envelope,
    /// Text preview.
    pub preview: String,
    /// Whether it has attachments.
    pub has_attachment: bool,
    /// Body structure.
    pub body: BodyPart,
}

impl EmailRecord {
    /// Whether it lacks `$seen`.
    pub fn is_unread(&self) -> bool {
        !self.has_keyword(keyword::SEEN)
    }

    /// Whether it has `$flagged`.
    pub fn is_flagged(&self) -> bool {
        self.has_keyword(keyword::FLAGGED)
    }

    /// Whether it has keyword `k` (normalised).
    pub fn has_keyword(&self, k: &str) -> bool {
        self.keywords.binary_search_by(|x| x.as_str().cmp(k)).is_ok()
    }
}

/// Tunables of the mail store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailConfig {
    /// Change-log entries kept per account (older states must resync).
    pub keep_changes: u64,
    /// How far apart two messages may be and still join one thread by subject alone.
    pub thread_window_ms: i64,
    /// Ids per batch call.
    pub max_ids: usize,
    /// Retries and expiry of the outbox.
    pub outbox: outbox::Schedule,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            keep_changes: 100_000,
            thread_window_ms: 7 * 24 * 3600 * 1000,
            max_ids: 1000,
            outbox: outbox::Schedule::default(),
        }
    }
}

/// The mail store.
#[derive(Debug, Clone)]
pub struct Mailstore {
    db: Db,
    config: MailConfig,
    examined: Arc<AtomicU64>,
    filter: Arc<crate::filter::Pipeline>,
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(space: Space, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt { space, detail: e.to_string() }.into())
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| Error::Internal(format!("encoding record: {e}")))
}

pub(crate) fn email_key(account: AccountId, id: EmailId) -> Vec<u8> {
    Key::new().u64(account.0).u64(id.0).build()
}

pub(crate) fn mailbox_key(account: AccountId, id: MailboxId) -> Vec<u8> {
    Key::new().u64(account.0).u64(id.0).build()
}

pub(crate) fn account_prefix(account: AccountId) -> Vec<u8> {
    Key::new().u64(account.0).build()
}

/// How long an account holds a blob it uploaded (for a submit or a draft
/// to use): 24 hours.
pub const UPLOAD_HOLD_MS: i64 = 24 * 3600 * 1000;

fn upload_key(account: AccountId, id: BlobId) -> Vec<u8> {
    let mut k = account_prefix(account);
    k.extend_from_slice(&id.0);
    k
}

/// The length a range asks for (`length` 0: to the end), refusing an
/// offset past the end.
fn range_length(offset: u64, length: u64, total: u64, what: &str) -> Result<u64> {
    if offset > total {
        return Err(Error::invalid(format!("offset {offset} is past the end of the {total}-byte {what}")));
    }
    Ok(if length == 0 { total - offset } else { length.min(total - offset) })
}

/// What a streaming source may hold at once while it runs: a chunk and its
/// encoding.
const STREAM_HELD: u64 = 3 * blob::CHUNK as u64;

/// A range of an email's raw message, streamed from one snapshot.
#[derive(Debug)]
struct RawSource {
    view: crate::store::Snapshot,
    email: EmailRecord,
    offset: u64,
    length: u64,
}

impl upload::Source for RawSource {
    fn len(&self) -> u64 {
        self.length
    }
    fn held(&self) -> u64 {
        STREAM_HELD
    }
    fn stream(&self, from: u64, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if from >= self.length {
            return Ok(());
        }
        stream_raw(&self.view, &self.email, self.offset + from, self.length - from, sink)
    }
}

/// A range of a blob, streamed chunk by chunk from one snapshot.
#[derive(Debug)]
struct BlobSource {
    view: crate::store::Snapshot,
    id: BlobId,
    offset: u64,
    length: u64,
}

impl upload::Source for BlobSource {
    fn len(&self) -> u64 {
        self.length
    }
    fn held(&self) -> u64 {
        STREAM_HELD
    }
    fn stream(&self, from: u64, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if from >= self.length {
            return Ok(());
        }
        blob::read_range(&self.view, self.id, self.offset + from, self.length - from, sink)
    }
}

/// Streams bytes `offset .. offset + length` of `email`'s raw message.
fn stream_raw(
    reader: &dyn Reader,
    email: &EmailRecord,
    offset: u64,
    length: u64,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let missing = |id: BlobId| {
        Error::Store(StoreError::Corrupt {
            space: Space::Blobs,
            detail: format!("email {} refers to missing blob {id}", email.id.0),
        })
    };
    match email.raw {
        RawRef::Plain(id) => blob::read_range(reader, id, offset, length, sink),
        RawRef::Skeleton(id) => {
            let skeleton = raw::Skeleton::decode(&blob::get_in(reader, id)?.ok_or_else(|| missing(id))?)?;
            let end = offset.saturating_add(length);
            let done = std::cell::Cell::new(false);
            let mut pos = 0u64;
            // Skips what lies before the range and stops at its end.
            let mut window = |b: &[u8]| -> Result<()> {
                let start = pos;
                pos += b.len() as u64;
                if pos <= offset {
                    return Ok(());
                }
                let from = offset.saturating_sub(start) as usize;
                let to = (end.saturating_sub(start) as usize).min(b.len());
                if from < to {
                    sink(&b[from..to])?;
                }
                if pos >= end {
                    done.set(true);
                    return Err(Error::Unavailable("range complete".into()));
                }
                Ok(())
            };
            let r = raw::reconstruct_to(
                &skeleton,
                &mut |bid, feed| {
                    if blob::size_in(reader, bid)?.is_none() {
                        return Err(missing(bid));
                    }
                    blob::read_range(reader, bid, 0, u64::MAX, feed)
                },
                &mut window,
            );
            match r {
                Err(_) if done.get() => Ok(()),
                r => r,
            }
        }
    }
}

/// The raw bytes of `email`, its blobs read through `reader`.
pub(crate) fn raw_from(reader: &dyn Reader, email: &EmailRecord) -> Result<Vec<u8>> {
    let fetch = |id: BlobId| {
        blob::get_in(reader, id)?.ok_or_else(|| {
            Error::Store(StoreError::Corrupt {
                space: Space::Blobs,
                detail: format!("email {} refers to missing blob {id}", email.id.0),
            })
        })
    };
    match email.raw {
        RawRef::Plain(id) => fetch(id),
        RawRef::Skeleton(id) => raw::reconstruct(&raw::Skeleton::decode(&fetch(id)?)?, fetch),
    }
}

/// Reads an email from a snapshot (or any other reader).
pub(crate) fn read_email(
    reader: &dyn Reader,
    account: AccountId,
    id: EmailId,
) -> Result<Option<EmailRecord>> {
    reader.get(Space::Emails, &email_key(account, id))?.map(|b| decode(Space::Emails, &b)).transpose()
}

/// Reads an email inside a transaction.
pub(crate) fn email_in(txn: &Txn<'_>, account: AccountId, id: EmailId) -> Result<Option<EmailRecord>> {
    txn.get(Space::Emails, &email_key(account, id))?.map(|b| decode(Space::Emails, &b)).transpose()
}

/// Writes an email inside a transaction (the caller keeps indexes in step).
pub(crate) fn put_email(txn: &mut Txn<'_>, account: AccountId, e: &EmailRecord) -> Result<()> {
    txn.put(Space::Emails, email_key(account, e.id), encode(e)?);
    Ok(())
}

/// The account's mailboxes inside a transaction.
pub(crate) fn mailboxes_in(txn: &Txn<'_>, account: AccountId) -> Result<Vec<MailboxRecord>> {
    txn.scan(Space::Mailboxes, &KeyRange::prefix(&account_prefix(account)), Order::Ascending, usize::MAX)?
        .into_iter()
        .map(|(_, v)| decode(Space::Mailboxes, &v))
        .collect()
}

/// The mailbox with `role` inside a transaction.
pub(crate) fn role_in(txn: &Txn<'_>, account: AccountId, role: Role) -> Result<MailboxId> {
    mailboxes_in(txn, account)?
        .into_iter()
        .find(|m| m.role == role)
        .map(|m| m.id)
        .ok_or_else(|| Error::Internal(format!("account {} has no {role:?} mailbox", account.0)))
}

impl Mailstore {
    /// The mail store on `db`.
    pub fn new(db: Db, config: MailConfig) -> Self {
        Mailstore { db, config, examined: Default::default(), filter: Default::default() }
    }

    /// This store with `filter` on every delivery and submission (the
    /// default is the built-in virus scanner).
    pub fn with_filter(mut self, filter: crate::filter::Pipeline) -> Self {
        self.filter = Arc::new(filter);
        self
    }

    /// The content filters deliveries and submissions pass.
    pub fn filter(&self) -> &Arc<crate::filter::Pipeline> {
        &self.filter
    }

    /// Email records decoded by queries so far, to test (and watch) how much
    /// work a filter costs.
    pub fn emails_examined(&self) -> u64 {
        self.examined.load(Ordering::Relaxed)
    }

    pub(crate) fn note_examined(&self, n: u64) {
        self.examined.fetch_add(n, Ordering::Relaxed);
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The tunables.
    pub fn config(&self) -> &MailConfig {
        &self.config
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
        let keep = self.config.keep_changes;
        self.db
            .write_durable(|txn| {
                let account = crate::account::Accounts::insert(
                    txn,
                    name,
                    password_hash.clone(),
                    quota_bytes,
                    quota_messages,
                    now_ms,
                )?;
                let mut changes = sync::ChangeSet::new();
                for (role, name) in Role::DEFAULTS {
                    let id = MailboxId(txn.next_id("mailbox")?);
                    let record = MailboxRecord { id, name: name.to_owned(), parent: None, role };
                    txn.put(Space::Mailboxes, mailbox_key(account.id, id), encode(&record)?);
                    changes.note(sync::Kind::Mailbox, id.0, sync::Op::Created);
                }
                changes.commit(txn, account.id, keep)?;
                Ok(account)
            })
            .await
    }

    /// The account's current state.
    pub fn state(&self, account: AccountId) -> Result<State> {
        sync::state(&self.db, account)
    }

    /// The account's mailbox records, without counts.
    pub fn mailbox_records(&self, account: AccountId) -> Result<Vec<MailboxRecord>> {
        self.db
            .scan(
                Space::Mailboxes,
                &KeyRange::prefix(&account_prefix(account)),
                Order::Ascending,
                usize::MAX,
            )?
            .into_iter()
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
                Ok(MailboxView { mailbox, total, unread })
            })
            .collect()
    }

    /// The account's mailbox with `role`.
    pub fn mailbox_by_role(&self, account: AccountId, role: Role) -> Result<MailboxId> {
        self.mailbox_records(account)?
            .into_iter()
            .find(|m| m.role == role)
            .map(|m| m.id)
            .ok_or_else(|| Error::Internal(format!("account {} has no {role:?} mailbox", account.0)))
    }

    pub(crate) fn counter(&self, c: Counter, account: AccountId, sub: u64) -> Result<u64> {
        Ok(self.db.counter(Space::Counters, &c.key(account, sub))?.max(0) as u64)
    }

    /// One email of the account, if it exists there.
    pub fn email(&self, account: AccountId, id: EmailId) -> Result<Option<EmailRecord>> {
        self.db.get(Space::Emails, &email_key(account, id))?.map(|b| decode(Space::Emails, &b)).transpose()
    }

    /// Every email id of the account, ascending (tools, tests).
    pub fn email_ids(&self, account: AccountId) -> Result<Vec<EmailId>> {
        let mut out = Vec::new();
        self.db.scan_all(
            Space::Emails,
            &KeyRange::prefix(&account_prefix(account)),
            Order::Ascending,
            |k, _| {
                if let Some(id) = crate::store::key::read_u64(k, 8) {
                    out.push(EmailId(id));
                }
                Ok::<_, Error>(true)
            },
        )?;
        Ok(out)
    }

    /// A snapshot and the email `id` read from it (`notFound` when absent),
    /// for reads of the email and its blobs that must agree.
    fn email_view(&self, account: AccountId, id: EmailId) -> Result<(crate::store::Snapshot, EmailRecord)> {
        let view = self.db.snapshot();
        let email = view
            .get(Space::Emails, &email_key(account, id))?
            .map(|b| decode::<EmailRecord>(Space::Emails, &b))
            .transpose()?
            .ok_or_else(|| Error::not_found(format!("no email {}", id.0)))?;
        Ok((view, email))
    }

    /// What the filters said of an email (`None`: nothing; it came before
    /// them, or was filed by the account itself).
    pub fn filter_record(
        &self,
        account: AccountId,
        id: EmailId,
    ) -> Result<Option<crate::filter::spam::Record>> {
        crate::filter::spam::record(&self.db.snapshot(), account.0, id.0)
    }

    /// The raw bytes of one email of the account, exactly as received. The
    /// record and its blobs come from one snapshot, so a concurrent expunge
    /// is either not seen at all or seen whole (then: not found).
    pub fn raw(&self, account: AccountId, id: EmailId) -> Result<Vec<u8>> {
        let (view, email) = self.email_view(account, id)?;
        raw_from(&view, &email)
    }

    /// The decoded content of one part of an email (see
    /// [`parse::part_content`]): an attachment stored apart is read from
    /// its blob; any other part is decoded from the raw message.
    pub fn part(&self, account: AccountId, id: EmailId, part_id: &str) -> Result<Vec<u8>> {
        let (view, email) = self.email_view(account, id)?;
        let node = email.body.walk().into_iter().find(|p| p.part_id == part_id).cloned();
        let Some(node) = node else {
            return Err(Error::not_found(format!("email {} has no part {part_id:?}", id.0)));
        };
        if node.mime_type.starts_with("multipart/") {
            return Err(Error::invalid(format!(
                "part {part_id:?} is a {}: fetch its sub-parts",
                node.mime_type
            )));
        }
        if let Some(b) = node.blob
            && let Some(bytes) = blob::get_in(&view, b)?
        {
            return Ok(bytes);
        }
        let raw = raw_from(&view, &email)?;
        parse::part_content(&raw, part_id)
            .ok_or_else(|| Error::not_found(format!("email {} has no part {part_id:?}", id.0)))
    }

    /// Bytes `offset .. offset + length` (`length` 0: to the end) of an
    /// email's raw message as a stream from one snapshot, and the whole
    /// message's size. Nothing is built in memory: the message is rebuilt
    /// piece by piece around its attachments' chunks as it is read.
    pub fn raw_source(
        &self,
        account: AccountId,
        id: EmailId,
        offset: u64,
        length: u64,
    ) -> Result<(upload::Shared, u64)> {
        let (view, email) = self.email_view(account, id)?;
        let total = email.size;
        let length = range_length(offset, length, total, "message")?;
        Ok((std::sync::Arc::new(RawSource { view, email, offset, length }), total))
    }

    /// Like [`Mailstore::part`], as a stream of bytes `offset .. offset +
    /// length` (`length` 0: to the end), the part's size, and the BLAKE3 of
    /// the whole part when it is known without reading it (an attachment's
    /// blob id is its hash). An attachment stored apart is read chunk by
    /// chunk, only the chunks the range covers.
    pub fn part_source(
        &self,
        account: AccountId,
        id: EmailId,
        part_id: &str,
        offset: u64,
        length: u64,
    ) -> Result<(upload::Shared, u64, Option<[u8; 32]>)> {
        let (view, email) = self.email_view(account, id)?;
        if let Some(node) = email.body.walk().into_iter().find(|p| p.part_id == part_id)
            && let Some(b) = node.blob
            && let Some(total) = blob::size_in(&view, b)?
        {
            let length = range_length(offset, length, total, "part")?;
            let whole = (offset == 0 && length == total).then_some(b.0);
            return Ok((std::sync::Arc::new(BlobSource { view, id: b, offset, length }), total, whole));
        }
        drop(view);
        let mut bytes = self.part(account, id, part_id)?;
        let total = bytes.len() as u64;
        let length = range_length(offset, length, total, "part")?;
        bytes.truncate((offset + length) as usize);
        bytes.drain(..offset as usize);
        Ok((std::sync::Arc::new(bytes), total, None))
    }

    /// A whole blob as a stream from one snapshot, and its size.
    pub fn blob_source(&self, id: BlobId) -> Result<(upload::Shared, u64)> {
        let view = self.db.snapshot();
        let total = blob::size_in(&view, id)?.ok_or_else(|| Error::not_found(format!("no blob {id}")))?;
        Ok((std::sync::Arc::new(BlobSource { view, id, offset: 0, length: total }), total))
    }

    /// Whether the account holds blob `id` (one of its emails or uploads
    /// has these bytes).
    pub fn holds_blob(&self, account: AccountId, id: BlobId) -> Result<bool> {
        blob::holds(self.db.store(), account.0, id)
    }

    /// Keeps an uploaded blob for `account` for [`UPLOAD_HOLD_MS`], once its
    /// bytes match the BLAKE3 the client declared; durable on return. The
    /// same bytes held by anyone are stored once (silently).
    pub async fn store_upload(
        &self,
        account: AccountId,
        bytes: Vec<u8>,
        declared: [u8; 32],
        mime_type: &str,
        now_ms: i64,
    ) -> Result<BlobId> {
        let compress = blob::compressible(mime_type);
        let prepared = tokio::task::spawn_blocking(move || {
            let id = BlobId::of(&bytes);
            if id.0 != declared {
                return Err(Error::invalid("the uploaded bytes do not match their declared BLAKE3"));
            }
            Ok(blob::prepare_owned(bytes, compress, id))
        })
        .await
        .map_err(|e| Error::Internal(format!("upload task failed: {e}")))??;
        let id = prepared.id;
        let key = upload_key(account, id);
        let expires = (now_ms + UPLOAD_HOLD_MS).to_be_bytes().to_vec();
        self.db
            .write_durable(|txn| {
                if !txn.exists(Space::Uploads, &key)? {
                    blob::put(txn, &prepared)?;
                    blob::hold(txn, account.0, id, 1)?;
                }
                txn.put(Space::Uploads, key.clone(), expires.clone());
                Ok::<_, Error>(())
            })
            .await?;
        Ok(id)
    }

    /// Lets go of the account's uploads held past their time (at most a
    /// batch per call): their blobs go with their last reference.
    pub async fn sweep_uploads(&self, account: AccountId, now_ms: i64) -> Result<usize> {
        let rows = self.db.scan(
            Space::Uploads,
            &KeyRange::prefix(&account_prefix(account)),
            Order::Ascending,
            256,
        )?;
        let expired: Vec<Vec<u8>> = rows
            .into_iter()
            .filter(|(_, v)| <[u8; 8]>::try_from(v.as_slice()).is_ok_and(|b| i64::from_be_bytes(b) <= now_ms))
            .map(|(k, _)| k)
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        self.db
            .write_durable(|txn| {
                let mut n = 0;
                for k in &expired {
                    let Some(id) = k.get(8..40).and_then(|b| <[u8; 32]>::try_from(b).ok()).map(BlobId) else {
                        continue;
                    };
                    if txn.exists(Space::Uploads, k)? {
                        txn.delete(Space::Uploads, k.clone());
                        blob::release(txn, id)?;
                        blob::hold(txn, account.0, id, -1)?;
                        n += 1;
                    }
                }
                Ok::<_, Error>(n)
            })
            .await
    }

    /// The raw bytes of a stored email (read from the newest snapshot).
    pub fn raw_of(&self, email: &EmailRecord) -> Result<Vec<u8>> {
        raw_from(&self.db.snapshot(), email)
    }

    /// A thread's emails, oldest first (empty: no such thread here).
    pub fn thread(&self, account: AccountId, thread: ThreadId) -> Result<Vec<EmailId>> {
        thread::members(&self.db, account, thread)
    }

    /// Changes of `kind` since `since`.
    pub fn changes(
        &self,
        account: AccountId,
        kind: sync::Kind,
        since: State,
        max: usize,
    ) -> Result<sync::Changes> {
        sync::changes(&self.db, account, kind, since, max)
    }
}
