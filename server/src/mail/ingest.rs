//! Ingest: parse → blobs → thread → one atomic transaction → group commit.
//!
//! [`prepare`] does the CPU work (parsing, decoding attachments, hashing,
//! compressing) outside any transaction. [`insert`] then adds one copy of
//! the message to one account inside a transaction: quota check, id,
//! thread, blob references, record, indexes, counters, change log.
//! [`Mailstore::deliver`] puts every recipient's copy in one transaction and
//! returns after one (shared) fsync.

use crate::account::{AccountId, Accounts, Counter};
use crate::blob::{self, BlobId};
use crate::error::{Error, Result};
use crate::mail::parse::{self, Parsed};
use crate::mail::{
    EmailId, EmailRecord, MailConfig, MailboxId, Mailstore, RawRef, Role, index, keyword, put_email, raw,
    role_in, thread,
};
use crate::store::{Space, Txn};
use crate::sync::{ChangeSet, Kind, Op};

/// A message ready to insert: parsed, its blobs hashed and compressed.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Envelope, preview, body structure (attachment contents dropped).
    pub parsed: Parsed,
    /// Raw size.
    pub size: u64,
    /// The raw message or its skeleton.
    pub raw: blob::Prepared,
    /// Whether `raw` is a skeleton.
    pub skeleton: bool,
    /// Attachment blobs, distinct.
    pub attachments: Vec<blob::Prepared>,
    /// Its search index entry, encoded (empty when not indexed).
    pub terms: crate::search::index::Encoded,
}

/// Parses and prepares `raw` for storage.
pub fn prepare(raw_bytes: &[u8]) -> Result<Prepared> {
    prepare_owned(raw_bytes.to_vec())
}

/// [`prepare`], taking the message: it is dropped as soon as the skeleton
/// is built, and attachment contents move into their blobs, so a large
/// message is held about once, not once per step.
pub fn prepare_owned(raw_bytes: Vec<u8>) -> Result<Prepared> {
    prepare_indexed(raw_bytes, true)
}

/// [`prepare_owned`], with the search terms only when `index` (benchmarks
/// measure ingest without the index with `false`).
pub fn prepare_indexed(raw_bytes: Vec<u8>, index: bool) -> Result<Prepared> {
    let parsed = parse::parse(&raw_bytes);
    prepare_parsed(raw_bytes, parsed, index)
}

/// Parses `raw_bytes` once for the filters and for storage: `judge` reads
/// the parse (see [`crate::filter::Pipeline::inbound`]), then the message
/// is prepared from it.
pub fn judged<T>(
    raw_bytes: Vec<u8>,
    judge: impl FnOnce(&[u8], Option<&mail_parser::Message<'_>>) -> Result<T>,
) -> Result<(Prepared, T)> {
    let message = crate::filter::parse(&raw_bytes);
    let verdict = judge(&raw_bytes, message.as_ref())?;
    let parsed = parse::from_parse(&raw_bytes, message);
    Ok((prepare_parsed(raw_bytes, parsed, true)?, verdict))
}

/// [`prepare_indexed`] of a message already parsed as `parsed`.
fn prepare_parsed(raw_bytes: Vec<u8>, mut parsed: parse::Parsed, index: bool) -> Result<Prepared> {
    let size = raw_bytes.len() as u64;
    let terms = if index {
        crate::search::index::encode(crate::mail::find::index_terms(&parsed))
    } else {
        Default::default()
    };
    parsed.text = String::new();
    let ids: Vec<BlobId> = parsed.attachments.iter().map(|a| BlobId::of(&a.content)).collect();
    for (a, id) in parsed.attachments.iter().zip(&ids) {
        set_part_blob(&mut parsed.body, &a.part_id, *id);
    }
    let skeleton = raw::build(&raw_bytes, &parsed.attachments, &ids);
    let (raw_blob, is_skeleton) = match &skeleton {
        Some(s) => {
            drop(raw_bytes);
            (blob::prepare(&s.encode()?, true), true)
        }
        None => {
            let id = BlobId::of(&raw_bytes);
            (blob::prepare_owned(raw_bytes, true, id), false)
        }
    };
    drop(skeleton);
    // The contents move into the blobs.
    let mut blobs: Vec<blob::Prepared> = Vec::new();
    for (a, id) in parsed.attachments.iter_mut().zip(&ids) {
        let content = std::mem::take(&mut a.content);
        if !blobs.iter().any(|b| b.id == *id) {
            blobs.push(blob::prepare_owned(content, blob::compressible(&a.mime_type), *id));
        }
    }
    Ok(Prepared { parsed, size, raw: raw_blob, skeleton: is_skeleton, attachments: blobs, terms })
}

fn set_part_blob(part: &mut parse::BodyPart, part_id: &str, id: BlobId) {
    if part.part_id == part_id {
        part.blob = Some(id);
        return;
    }
    for p in &mut part.sub_parts {
        set_part_blob(p, part_id, id);
    }
}

/// Where a copy goes and how it starts.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Mailboxes (at least one).
    pub mailboxes: Vec<MailboxId>,
    /// Keywords (normalised).
    pub keywords: Vec<String>,
    /// Arrival time, ms since the epoch.
    pub received_ms: i64,
}

/// How an insert holds the account's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRule {
    /// The message must fit (imports, appends, the sender's own copies).
    Fit,
    /// Mail delivered to a recipient: taken while the account is not yet
    /// full, the test the gateway's RCPT check makes, so a recipient
    /// accepted during the SMTP session is not refused after DATA (where
    /// one reply answers for every recipient). The quota is passed by one
    /// message at most, as with Dovecot's quota grace.
    NotFull,
}

/// Adds one copy of a prepared message to `account` inside `txn`.
pub fn insert(
    txn: &mut Txn<'_>,
    account: AccountId,
    p: &Prepared,
    place: &Placement,
    config: &MailConfig,
    changes: &mut ChangeSet,
) -> Result<EmailId> {
    insert_under(txn, account, p, place, config, changes, QuotaRule::Fit)
}

/// [`insert`] holding the quota by `rule`.
pub fn insert_under(
    txn: &mut Txn<'_>,
    account: AccountId,
    p: &Prepared,
    place: &Placement,
    config: &MailConfig,
    changes: &mut ChangeSet,
    rule: QuotaRule,
) -> Result<EmailId> {
    let acct = Accounts::get_in(txn, account)?
        .ok_or_else(|| Error::not_found(format!("account {} is gone", account.0)))?;
    let used_bytes = txn.counter(Space::Counters, &Counter::UsedBytes.key(account, 0))?.max(0) as u64;
    let used_msgs = txn.counter(Space::Counters, &Counter::UsedMessages.key(account, 0))?.max(0) as u64;
    // Whether `used` leaves room under `quota` (0: none set) by `rule`.
    let room = |used: u64, adding: u64, quota: u64| match rule {
        _ if quota == 0 => true,
        QuotaRule::Fit => used + adding <= quota,
        QuotaRule::NotFull => used < quota,
    };
    if !room(used_bytes, p.size, acct.quota_bytes) {
        return Err(Error::OverQuota(format!(
            "{} uses {used_bytes} of {} bytes; a {}-byte message does not fit",
            acct.name, acct.quota_bytes, p.size
        )));
    }
    if !room(used_msgs, 1, acct.quota_messages) {
        return Err(Error::OverQuota(format!(
            "{} holds its quota of {} messages",
            acct.name, acct.quota_messages
        )));
    }
    // Normalised here, where every path to the store passes: invalid ones
    // fail before anything is written.
    let keywords = keyword::normalize_all(&place.keywords)?;
    let mut mailboxes = place.mailboxes.clone();
    mailboxes.sort();
    mailboxes.dedup();
    if mailboxes.is_empty() {
        return Err(Error::invalid("an email must be in at least one mailbox"));
    }
    for mb in &mailboxes {
        if !txn.exists(Space::Mailboxes, &crate::mail::mailbox_key(account, *mb))? {
            return Err(Error::not_found(format!("no mailbox {}", mb.0)));
        }
    }
    let id = EmailId(txn.next_id("email")?);
    let thread = thread::assign(
        txn,
        account,
        &p.parsed.envelope,
        place.received_ms,
        config.thread_window_ms,
        changes,
    )?;
    blob::put(txn, &p.raw)?;
    let mut blobs = vec![p.raw.id];
    for a in &p.attachments {
        if !blobs.contains(&a.id) {
            blob::put(txn, a)?;
            blobs.push(a.id);
        }
    }
    for b in &blobs {
        blob::hold(txn, account.0, *b, 1)?;
    }
    let record = EmailRecord {
        id,
        received_ms: place.received_ms,
        size: p.size,
        raw: if p.skeleton { RawRef::Skeleton(p.raw.id) } else { RawRef::Plain(p.raw.id) },
        blobs,
        mailboxes,
        keywords,
        thread,
        envelope: p.parsed.envelope.clone(),
        preview: p.parsed.preview.clone(),
        has_attachment: p.parsed.has_attachment,
        body: p.parsed.body.clone(),
    };
    put_email(txn, account, &record)?;
    if !p.terms.is_empty() {
        crate::search::index::add(txn, account.0, id.0, &p.terms)?;
    }
    index::apply(txn, account, None, Some(&record), changes)?;
    thread::add_member(txn, account, &record);
    txn.add(Space::Counters, &Counter::UsedBytes.key(account, 0), p.size as i64)?;
    txn.add(Space::Counters, &Counter::UsedMessages.key(account, 0), 1)?;
    changes.note(Kind::Email, id.0, Op::Created);
    Ok(id)
}

/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
/// How long a delivery's idempotency key is remembered: longer than any
/// sender retries one message (RFC 5321 suggests giving up after 4-5 days).
pub const IDEMPOTENCY_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// Expired keys forgotten per delivery, so the table stays bounded.
const FORGET_PER_DELIVERY: usize = 8;

/// `k ‖ key` → the outcomes; `t ‖ time ‖ key` → () to expire them in order.
fn delivery_key(key: &[u8]) -> Vec<u8> {
    let mut k = b"k".to_vec();
    k.extend_from_slice(key);
    k
}

fn delivery_time_key(ms: i64, key: &[u8]) -> Vec<u8> {
    let mut k = b"t".to_vec();
    k.extend_from_slice(&ms.max(0).to_be_bytes());
    k.extend_from_slice(key);
    k
}

#[derive(serde::Serialize, serde::Deserialize)]
enum Remembered {
    Delivered(u64),
    OverQuota(String),
    NotFound(String),
}

fn remember_delivery(
    txn: &mut Txn<'_>,
    key: &[u8],
    accounts: &[AccountId],
    outcomes: &[RecipientOutcome],
    now_ms: i64,
) -> Result<()> {
    let rows: Vec<(u64, Remembered)> = accounts
        .iter()
        .zip(outcomes)
        .map(|(a, o)| {
            (
                a.0,
                match o {
                    Ok(id) => Remembered::Delivered(id.0),
                    Err(Error::OverQuota(m)) => Remembered::OverQuota(m.clone()),
                    Err(e) => Remembered::NotFound(e.to_string()),
                },
            )
        })
        .collect();
    let value =
        postcard::to_stdvec(&(now_ms, rows)).map_err(|e| Error::Internal(format!("encoding: {e}")))?;
    txn.put(Space::Deliveries, delivery_key(key), value);
    txn.put(Space::Deliveries, delivery_time_key(now_ms, key), Vec::new());
    // Forget the oldest keys past their time.
    let horizon = now_ms - IDEMPOTENCY_RETENTION_MS;
    let old = txn.scan_committed(
        Space::Deliveries,
        &crate::store::KeyRange::between(b"t".to_vec(), delivery_time_key(horizon, &[])),
        crate::store::Order::Ascending,
        FORGET_PER_DELIVERY,
    )?;
    for (k, _) in old {
        if let Some(original) = k.get(9..) {
            txn.delete(Space::Deliveries, delivery_key(original));
        }
        txn.delete(Space::Deliveries, k);
    }
    Ok(())
}

fn decode_outcomes(accounts: &[AccountId], value: &[u8]) -> Result<Vec<RecipientOutcome>> {
    let (_, rows): (i64, Vec<(u64, Remembered)>) = postcard::from_bytes(value).map_err(|_| {
        crate::store::StoreError::Corrupt { space: Space::Deliveries, detail: "delivery".into() }
    })?;
    Ok(accounts
        .iter()
        .map(|a| match rows.iter().find(|(r, _)| *r == a.0).map(|(_, o)| o) {
            Some(Remembered::Delivered(id)) => Ok(EmailId(*id)),
            Some(Remembered::OverQuota(m)) => Err(Error::OverQuota(m.clone())),
            Some(Remembered::NotFound(m)) => Err(Error::not_found(m.clone())),
            // A recipient the first attempt did not have: not delivered
            // by this key (the sender retries it under a new one).
            None => Err(Error::invalid("this delivery was made before without this recipient")),
        })
        .collect())
}

/// Outcome of delivering to one recipient.
pub type RecipientOutcome = std::result::Result<EmailId, Error>;

/// One message of a bulk import.
#[derive(Debug, Clone)]
pub struct ImportItem {
    /// The message.
    pub prepared: Prepared,
    /// Where it goes.
    pub placement: Placement,
}

impl Mailstore {
    /// Stores one raw message for each of `accounts` (into their Inbox) in one
    /// transaction and returns once it is durable. Each recipient's outcome
    /// is separate: one over quota does not stop the others.
    pub async fn deliver(
        &self,
        accounts: &[AccountId],
        raw_bytes: &[u8],
        received_ms: i64,
    ) -> Result<Vec<RecipientOutcome>> {
        self.deliver_owned(accounts, raw_bytes.to_vec(), received_ms).await
    }

    /// [`Mailstore::deliver`], taking the message (no copy of a large one).
    pub async fn deliver_owned(
        &self,
        accounts: &[AccountId],
        raw_bytes: Vec<u8>,
        received_ms: i64,
    ) -> Result<Vec<RecipientOutcome>> {
        self.deliver_once(accounts, raw_bytes, received_ms, None).await
    }

    /// [`Mailstore::deliver_owned`] at most once per idempotency `key` (the
    /// gateway's spool id): a delivery retried with the same key (its
    /// acknowledgement was lost) stores nothing again and answers what the
    /// first one did. Keys are kept [`IDEMPOTENCY_RETENTION_MS`].
    pub async fn deliver_once(
        &self,
        accounts: &[AccountId],
        raw_bytes: Vec<u8>,
        received_ms: i64,
        key: Option<&[u8]>,
    ) -> Result<Vec<RecipientOutcome>> {
        if let Some(k) = key
            && (k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY)
        {
            return Err(Error::invalid(format!("an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY} bytes")));
        }
        if raw_bytes.is_empty() {
            return Err(Error::invalid("empty message"));
        }
        // Parsing is CPU work: do it on the blocking pool so the RPC worker
        // keeps serving, and declare the coming commit so concurrent
        // deliveries share one fsync.
        let intent = self.db().intent();
        // The filters decide before anything is stored: a refused message
        // (a virus) or an undecided one (the scanner is down) never is.
        let filter = std::sync::Arc::clone(self.filter());
        let db = self.db().clone();
        let ids: Vec<u64> = accounts.iter().map(|a| a.0).collect();
        let (prepared, verdicts) = tokio::task::spawn_blocking(move || {
            judged(raw_bytes, |raw, message| filter.inbound(&db, &ids, raw, message))
        })
        .await
        .map_err(|e| Error::Internal(format!("parsing task failed: {e}")))??;
        let config = *self.config();
        let (outcomes, ticket) = self.db().write(|txn| {
            if let Some(k) = key
                && let Some(done) = txn.get(Space::Deliveries, &delivery_key(k))?
            {
                return decode_outcomes(accounts, &done);
            }
            let mut outcomes = Vec::with_capacity(accounts.len());
            for (account, verdict) in accounts.iter().zip(&verdicts) {
                let role = if verdict.spam == crate::filter::spam::SPAM { Role::Junk } else { Role::Inbox };
                let mailbox = role_in(txn, *account, role)?;
                let place = Placement { mailboxes: vec![mailbox], keywords: Vec::new(), received_ms };
                let mut changes = ChangeSet::new();
                match insert_under(
                    txn,
                    *account,
                    &prepared,
                    &place,
                    &config,
                    &mut changes,
                    QuotaRule::NotFull,
                ) {
                    Ok(id) => {
                        if *verdict != crate::filter::spam::Record::default() {
                            crate::filter::spam::put_record(txn, account.0, id.0, verdict)?;
                        }
                        changes.commit(txn, *account, config.keep_changes)?;
                        outcomes.push(Ok(id));
                    }
                    // Refusals are checked before anything is written for
                    // that recipient; anything else aborts the transaction.
                    Err(e @ (Error::OverQuota(_) | Error::NotFound(_))) => outcomes.push(Err(e)),
                    Err(e) => return Err(e),
                }
            }
            if let Some(k) = key {
                remember_delivery(txn, k, accounts, &outcomes, received_ms)?;
            }
            Ok::<_, Error>(outcomes)
        })?;
        drop(intent);
        self.db().sync(ticket).await?;
        Ok(outcomes)
    }

    /// Imports messages into one account in one transaction (bulk tools);
    /// returns their ids once durable.
    pub async fn import(&self, account: AccountId, items: &[ImportItem]) -> Result<Vec<RecipientOutcome>> {
        let (out, ticket) = self.import_unsynced(account, items)?;
        self.db().sync(ticket).await?;
        Ok(out)
    }

    /// [`Mailstore::import`] without waiting for durability (the caller
    /// syncs the ticket, e.g. once per batch).
    pub fn import_unsynced(
        &self,
        account: AccountId,
        items: &[ImportItem],
    ) -> Result<(Vec<RecipientOutcome>, crate::store::Ticket)> {
        let config = *self.config();
        self.db().write(|txn| {
            let mut changes = ChangeSet::new();
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match insert(txn, account, &item.prepared, &item.placement, &config, &mut changes) {
                    Ok(id) => out.push(Ok(id)),
                    Err(e @ Error::OverQuota(_)) => out.push(Err(e)),
                    Err(e) => return Err(e),
                }
            }
            changes.commit(txn, account, config.keep_changes)?;
            Ok::<_, Error>(out)
        })
    }
}
