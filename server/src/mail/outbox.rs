//! The outbox: submissions waiting to leave, their status per recipient,
//! leases for the gateway's outbound worker, retries and bounces.
//!
//! A submission is written once with the Sent copy ([`Mailstore::submit`])
//! and then only changes state in transactions that also log a
//! `submission` change, so every status a client sees was durable.
//!
//! Time is always an argument (`now_ms`): the schedule (send-at, leases,
//! backoff, expiry) is a function of the stored record and the clock the
//! caller passes, which is how tests run days of retries in microseconds.
//!
//! Layout in [`Space::Outbox`]:
//! - `s ‖ id` → the [`Submission`];
//! - `a ‖ account ‖ id` → () while a recipient is pending (`submissions` with
//!   no ids, `quail outbox`);
//! - `r ‖ due ‖ id` → () while a remote recipient is pending: due for the
//!   outbound worker at `due` (send-at, a retry, or a lease's end);
//! - `l ‖ due ‖ id` → () while a local recipient is pending: delivered here
//!   at `due` by [`Mailstore::deliver_local_due`].
//!
//! The message leaves exactly as submitted: the record holds a reference
//! to a plain blob of its bytes (shared with any identical upload), given
//! back when no recipient is pending, whatever happens to the Sent copy.

use serde::{Deserialize, Serialize};

use crate::account::{AccountId, Accounts};
use crate::blob::{self, BlobId};
use crate::error::{Error, Result};
use crate::mail::ingest::{self, Placement, prepare_owned};
use crate::mail::{EmailId, Mailstore, Role, decode, encode, role_in};
use crate::store::key::{self, Key};
use crate::store::{KeyRange, Order, Reader, Space, Txn};
use crate::sync::{ChangeSet, Kind, Op};

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Not tried yet.
    Queued,
    /// Accepted by the recipient's server (or stored here).
    Delivered,
    /// Tried and failed temporarily; retried.
    Deferred,
    /// Failed for good (a DSN went to the sender).
    Failed,
    /// Withdrawn before it left.
    Cancelled,
}

impl Status {
    /// Whether the recipient still waits for an attempt.
    pub fn pending(self) -> bool {
        matches!(self, Status::Queued | Status::Deferred)
    }
}

/// One recipient of a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The envelope address.
    pub address: String,
    /// Delivered by this server (its domain is served here).
    pub local: bool,
    /// Where it stands.
    pub status: Status,
    /// The last SMTP reply or error.
    pub reply: String,
}

/// A message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    /// Server-wide id.
    pub id: u64,
    /// The sender's account.
    pub account: AccountId,
    /// The copy in Sent.
    pub email: EmailId,
    /// The bytes that leave.
    pub blob: BlobId,
    /// Their size.
    pub size: u64,
    /// The envelope sender.
    pub mail_from: String,
    /// Every recipient.
    pub recipients: Vec<Recipient>,
    /// When it was submitted (ms since the epoch).
    pub created_ms: i64,
    /// Not sent before this.
    pub send_at_ms: i64,
    /// Pending recipients fail after this.
    pub expires_ms: i64,
    /// Delivery attempts begun (leases handed out).
    pub attempts: u32,
    /// When the remote recipients are due next (0: none pending).
    pub next_ms: i64,
    /// The current lease ends then (0: not leased).
    pub leased_until_ms: i64,
}

impl Submission {
    fn pending(&self, local: bool) -> impl Iterator<Item = &Recipient> {
        self.recipients.iter().filter(move |r| r.local == local && r.status.pending())
    }

    fn any_pending(&self) -> bool {
        self.recipients.iter().any(|r| r.status.pending())
    }
}

/// A leased submission: what the outbound worker sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    /// The submission.
    pub id: u64,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
    /// The envelope sender.
    pub mail_from: String,
    /// The remote recipients still pending.
    pub recipients: Vec<String>,
    /// The message.
    pub blob: BlobId,
    /// Its size.
    pub size: u64,
}

/// What the outbound worker reports for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the recipient's server.
    Delivered,
    /// Try again later.
    TempFail,
    /// Give up: bounce.
    PermFail,
}

/// When and how long the outbox retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The wait after the first failed attempt; it doubles with each one.
    pub retry_base_ms: i64,
    /// The longest wait between attempts.
    pub retry_max_ms: i64,
    /// How long after submission pending recipients fail.
    pub expiry_ms: i64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule { retry_base_ms: 5 * 60_000, retry_max_ms: 60 * 60_000, expiry_ms: 5 * 24 * 3_600_000 }
    }
}

impl Schedule {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> i64 {
        let doublings = attempt.saturating_sub(1).min(40);
        self.retry_base_ms.saturating_mul(1i64 << doublings).min(self.retry_max_ms).max(1)
    }
}

/// Longest time a submission may be held back.
pub const MAX_SEND_DELAY_MS: i64 = 30 * 24 * 3_600_000;
/// Shortest and longest lease.
pub const LEASE_SECONDS: std::ops::RangeInclusive<u32> = 10..=3600;

fn record_key(id: u64) -> Vec<u8> {
    Key::new().u8(b's').u64(id).build()
}

fn account_key(account: AccountId, id: u64) -> Vec<u8> {
    Key::new().u8(b'a').u64(account.0).u64(id).build()
}

fn due_key(tag: u8, due_ms: i64, id: u64) -> Vec<u8> {
    Key::new().u8(tag).u64(due_ms.max(0) as u64).u64(id).build()
}

const REMOTE: u8 = b'r';
const LOCAL: u8 = b'l';

fn due_range(tag: u8, now_ms: i64) -> KeyRange {
    KeyRange::between(vec![tag], due_key(tag, now_ms.saturating_add(1), 0))
}

fn read_in(txn: &Txn<'_>, id: u64) -> Result<Option<Submission>> {
    txn.get(Space::Outbox, &record_key(id))?.map(|v| decode(Space::Outbox, &v)).transpose()
}

/// Writes `new` and moves its index entries from where `old` had them.
fn store(
    txn: &mut Txn<'_>,
    old: Option<&Submission>,
    new: &Submission,
    changes: &mut ChangeSet,
) -> Result<()> {
    if let Some(old) = old {
        if old.next_ms != 0 {
            txn.delete(Space::Outbox, due_key(REMOTE, old.next_ms, old.id));
        }
        if old.pending(true).next().is_some() {
            txn.delete(Space::Outbox, due_key(LOCAL, old.send_at_ms, old.id));
        }
    }
    let mut new = new.clone();
    if new.pending(false).next().is_none() {
        new.next_ms = 0;
    }
    if new.next_ms != 0 {
        txn.put(Space::Outbox, due_key(REMOTE, new.next_ms, new.id), Vec::new());
    }
    if new.pending(true).next().is_some() {
        txn.put(Space::Outbox, due_key(LOCAL, new.send_at_ms, new.id), Vec::new());
    }
    if new.any_pending() {
        txn.put(Space::Outbox, account_key(new.account, new.id), Vec::new());
    } else {
        txn.delete(Space::Outbox, account_key(new.account, new.id));
        if old.is_none_or(Submission::any_pending) {
            // Nothing will read the bytes again.
            blob::release(txn, new.blob)?;
        }
    }
    txn.put(Space::Outbox, record_key(new.id), encode(&new)?);
    changes.note(Kind::Submission, new.id, if old.is_some() { Op::Updated } else { Op::Created });
    Ok(())
}

/// What a new submission is.
#[derive(Debug, Clone)]
pub struct NewSubmission {
    /// The message.
    pub raw: Vec<u8>,
    /// The envelope sender (already checked to be the account's).
    pub mail_from: String,
    /// The envelope recipients, and whether each is served here.
    pub recipients: Vec<(String, bool)>,
    /// Not before this (ms; at most now: now).
    pub send_at_ms: i64,
}

/// How many times each recipient of a submission scored as spam counts
/// against the sending limit.
pub const SPAM_SEND_WEIGHT: usize = 10;

/// Recipients that failed in one step, for the bounce.
type Failures = Vec<(String, String)>;

impl Mailstore {
    /// Files `new.raw` in the account's Sent mailbox (read) and queues it
    /// in the outbox, in one transaction; returns once it is durable.
    pub async fn submit(&self, account: AccountId, new: NewSubmission, now_ms: i64) -> Result<Submission> {
        if new.recipients.is_empty() {
            return Err(Error::invalid("no recipients"));
        }
        if new.send_at_ms > now_ms + MAX_SEND_DELAY_MS {
            return Err(Error::invalid("sendAt is more than 30 days ahead"));
        }
        // An account sending in bulk is throttled on its own.
        self.filter().admit_send(account.0, new.recipients.len(), now_ms)?;
        let send_at_ms = new.send_at_ms.max(now_ms);
        let size = new.raw.len() as u64;
        let intent = self.db().intent();
        let raw = new.raw;
        let filter = std::sync::Arc::clone(self.filter());
        let db = self.db().clone();
        let rcpts = new.recipients.len();
        let (prepared, outgoing) = tokio::task::spawn_blocking(move || {
            // What is refused is not compressed for sending.
            let (prepared, (junk, outgoing)) = ingest::judged(raw, |raw, message| {
                Ok((filter.outbound(&db, account.0, raw, message)?, blob::prepare(raw, true)))
            })?;
            if junk.is_some() {
                // Spam counts ten times against the sending limit.
                filter.admit_send(account.0, rcpts * (SPAM_SEND_WEIGHT - 1), now_ms)?;
            }
            Ok::<_, Error>((prepared, outgoing))
        })
        .await
        .map_err(|e| Error::Internal(format!("parsing task failed: {e}")))??;
        let config = *self.config();
        let mut recipients: Vec<Recipient> = Vec::new();
        for (address, local) in new.recipients {
            if !recipients.iter().any(|r| r.address.eq_ignore_ascii_case(&address)) {
                recipients.push(Recipient { address, local, status: Status::Queued, reply: String::new() });
            }
        }
        let (submission, ticket) = self.db().write(|txn| {
            let sent = role_in(txn, account, Role::Sent)?;
            let place =
                Placement { mailboxes: vec![sent], keywords: vec!["$seen".into()], received_ms: now_ms };
            let mut changes = ChangeSet::new();
            let email = ingest::insert(txn, account, &prepared, &place, &config, &mut changes)?;
            blob::put(txn, &outgoing)?;
            let submission = Submission {
                id: txn.next_id("submission")?,
                account,
                email,
                blob: outgoing.id,
                size,
                mail_from: new.mail_from.clone(),
                recipients: recipients.clone(),
                created_ms: now_ms,
                send_at_ms,
                // Retried for the expiry from its send time, however far ahead.
                expires_ms: send_at_ms.saturating_add(config.outbox.expiry_ms),
                attempts: 0,
                next_ms: send_at_ms,
                leased_until_ms: 0,
            };
            store(txn, None, &submission, &mut changes)?;
            changes.commit(txn, account, config.keep_changes)?;
            Ok::<_, Error>(submission)
        })?;
        drop(intent);
        self.db().sync(ticket).await?;
        Ok(submission)
    }

    /// The account's submissions `ids` (those it does not own are not
    /// found), or with `ids` empty its pending ones, oldest first.
    pub fn submissions(&self, account: AccountId, ids: &[u64]) -> Result<(Vec<Submission>, Vec<u64>)> {
        let view = self.db().snapshot();
        let ids: Vec<u64> = if ids.is_empty() {
            let prefix = Key::new().u8(b'a').u64(account.0).build();
            view.scan(Space::Outbox, &KeyRange::prefix(&prefix), Order::Ascending, self.config().max_ids)?
                .into_iter()
                .filter_map(|(k, _)| key::read_u64(&k, 9))
                .collect()
        } else {
            ids.to_vec()
        };
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for id in ids {
            match view.get(Space::Outbox, &record_key(id))? {
                Some(v) => {
                    let s: Submission = decode(Space::Outbox, &v)?;
                    if s.account == account { found.push(s) } else { missing.push(id) }
                }
                None => missing.push(id),
            }
        }
        Ok((found, missing))
    }

    /// Withdraws every pending recipient of submission `id` (undo send) and
    /// moves its Sent copy to Drafts. Refused while a delivery attempt is
    /// under way (a lease is out) or when nothing is pending.
    pub async fn cancel_submission(&self, account: AccountId, id: u64, now_ms: i64) -> Result<Submission> {
        let config = *self.config();
        let (out, ticket) = self.db().write(|txn| {
            let old = read_in(txn, id)?
                .filter(|s| s.account == account)
                .ok_or_else(|| Error::not_found(format!("no submission {id}")))?;
            if old.leased_until_ms > now_ms {
                return Err(Error::Conflict(format!("submission {id} is being delivered now")));
            }
            if !old.any_pending() {
                return Err(Error::Conflict(format!("submission {id} has nothing left to withdraw")));
            }
            let mut new = old.clone();
            for r in new.recipients.iter_mut().filter(|r| r.status.pending()) {
                r.status = Status::Cancelled;
                r.reply = "cancelled by the sender".into();
            }
            let mut changes = ChangeSet::new();
            crate::mail::update::move_in(txn, account, new.email, Role::Sent, Role::Drafts, &mut changes)?;
            store(txn, Some(&old), &new, &mut changes)?;
            changes.commit(txn, account, config.keep_changes)?;
            Ok::<_, Error>(new)
        })?;
        self.db().sync(ticket).await?;
        Ok(out)
    }

    /// Hands out up to `max` submissions whose remote recipients are due,
    /// each leased until `now + lease_ms`. One past its expiry is failed
    /// (and bounced) instead.
    pub async fn lease_outbound(&self, now_ms: i64, max: usize, lease_ms: i64) -> Result<Vec<Leased>> {
        self.lease_outbound_within(now_ms, max, lease_ms, u64::MAX).await
    }

    /// [`Mailstore::lease_outbound`] of messages of at most `max_bytes` in
    /// all (the first one whatever its size): one answer then fits in one
    /// RPC message. What does not fit stays due, first in line for the
    /// next lease.
    pub async fn lease_outbound_within(
        &self,
        now_ms: i64,
        max: usize,
        lease_ms: i64,
        max_bytes: u64,
    ) -> Result<Vec<Leased>> {
        let config = *self.config();
        let bounces = self.bounce_headers_due(now_ms, max)?;
        let (out, ticket) = self.db().write(|txn| {
            let due = txn.scan(Space::Outbox, &due_range(REMOTE, now_ms), Order::Ascending, max)?;
            let mut out: Vec<Leased> = Vec::new();
            let mut bytes = 0u64;
            for (k, _) in due {
                let Some(id) = key::read_u64(&k, 9) else { continue };
                let Some(old) = read_in(txn, id)? else {
                    txn.delete(Space::Outbox, k);
                    continue;
                };
                if !out.is_empty() && now_ms < old.expires_ms && bytes.saturating_add(old.size) > max_bytes {
                    break;
                }
                bytes = bytes.saturating_add(old.size);
                let mut new = old.clone();
                let mut changes = ChangeSet::new();
                if now_ms >= old.expires_ms {
                    let failed = expire(&mut new, false);
                    store(txn, Some(&old), &new, &mut changes)?;
                    bounce(
                        txn,
                        &new,
                        &failed,
                        bounces.get(&id).map(Vec::as_slice),
                        now_ms,
                        &config,
                        &mut changes,
                    )?;
                } else {
                    new.attempts += 1;
                    new.leased_until_ms = now_ms + lease_ms;
                    new.next_ms = new.leased_until_ms;
                    store(txn, Some(&old), &new, &mut changes)?;
                    out.push(Leased {
                        id,
                        attempt: new.attempts,
                        mail_from: new.mail_from.clone(),
                        recipients: new.pending(false).map(|r| r.address.clone()).collect(),
                        blob: new.blob,
                        size: new.size,
                    });
                }
                changes.commit(txn, old.account, config.keep_changes)?;
            }
            Ok::<_, Error>(out)
        })?;
        self.db().sync(ticket).await?;
        Ok(out)
    }

    /// Records the outcomes of attempt `attempt` of submission `id` and
    /// schedules what is left: a retry after the backoff, or, past the
    /// expiry, failure. Failures put a DSN in the sender's Inbox. A
    /// completion of an older attempt (its lease ran out and the message was
    /// handed out again) records deliveries and failures but schedules
    /// nothing.
    pub async fn complete_outbound(
        &self,
        id: u64,
        attempt: u32,
        outcomes: &[(String, Outcome, String)],
        now_ms: i64,
    ) -> Result<()> {
        let config = *self.config();
        // The original's headers go into a bounce: read the message only
        // when this completion can fail someone (a refusal, or expiry).
        let may_fail = outcomes.iter().any(|(_, o, _)| *o == Outcome::PermFail)
            || self.submissions_any(id)?.is_some_and(|s| now_ms >= s.expires_ms);
        let headers = if may_fail { self.bounce_headers(id)? } else { None };
        let ((), ticket) = self.db().write(|txn| {
            let old = read_in(txn, id)?.ok_or_else(|| Error::not_found(format!("no submission {id}")))?;
            let mut new = old.clone();
            let mut failed: Failures = Vec::new();
            for (address, outcome, reply) in outcomes {
                let Some(r) = new
                    .recipients
                    .iter_mut()
                    .find(|r| !r.local && r.status.pending() && r.address.eq_ignore_ascii_case(address))
                else {
                    continue;
                };
                r.reply = reply.clone();
                match outcome {
                    Outcome::Delivered => r.status = Status::Delivered,
                    Outcome::PermFail => {
                        r.status = Status::Failed;
                        failed.push((r.address.clone(), reply.clone()));
                    }
                    Outcome::TempFail => r.status = Status::Deferred,
                }
            }
            if attempt == old.attempts && old.leased_until_ms != 0 {
                new.leased_until_ms = 0;
                if now_ms >= old.expires_ms {
                    failed.extend(expire(&mut new, false));
                } else {
                    new.next_ms = now_ms.saturating_add(config.outbox.delay(old.attempts));
                }
            }
            let mut changes = ChangeSet::new();
            store(txn, Some(&old), &new, &mut changes)?;
            bounce(txn, &new, &failed, headers.as_deref(), now_ms, &config, &mut changes)?;
            changes.commit(txn, old.account, config.keep_changes)?;
            Ok::<_, Error>(())
        })?;
        self.db().sync(ticket).await?;
        Ok(())
    }

    /// Delivers the local recipients of every submission due by `now`
    /// into their accounts' Inboxes (unknown ones fail and bounce); returns
    /// how many submissions it handled.
    pub async fn deliver_local_due(
        &self,
        accounts: &Accounts,
        domains: &[String],
        now_ms: i64,
    ) -> Result<usize> {
        let view = self.db().snapshot();
        let due = view.scan(Space::Outbox, &due_range(LOCAL, now_ms), Order::Ascending, 64)?;
        drop(view);
        let mut handled = 0;
        for (k, _) in due {
            let Some(id) = key::read_u64(&k, 9) else { continue };
            self.deliver_local(accounts, domains, id, now_ms).await?;
            handled += 1;
        }
        Ok(handled)
    }

    async fn deliver_local(
        &self,
        accounts: &Accounts,
        domains: &[String],
        id: u64,
        now_ms: i64,
    ) -> Result<()> {
        let Some(s) = self.submissions_any(id)? else { return Ok(()) };
        // Resolve and parse outside the transaction; the transaction checks
        // the record again and delivers only what is still pending.
        let mut targets: Vec<(String, Option<AccountId>)> = Vec::new();
        for r in s.pending(true) {
            let to = accounts.resolve_recipient(&r.address, domains)?.map(|a| a.id);
            targets.push((r.address.clone(), to));
        }
        let bytes = blob::get(self.db(), s.blob)?
            .ok_or_else(|| Error::Internal(format!("submission {id} lost its message")))?;
        let headers = header_section(&bytes).to_vec();
        let prepared = tokio::task::spawn_blocking(move || prepare_owned(bytes))
            .await
            .map_err(|e| Error::Internal(format!("parsing task failed: {e}")))??;
        let config = *self.config();
        let ((), ticket) = self.db().write(|txn| {
            let Some(old) = read_in(txn, id)? else { return Ok(()) };
            let mut new = old.clone();
            let mut failed: Failures = Vec::new();
            let mut done: Vec<AccountId> = Vec::new();
            for r in new.recipients.iter_mut().filter(|r| r.local && r.status.pending()) {
                let target = targets.iter().find(|(a, _)| *a == r.address).and_then(|(_, t)| *t);
                let outcome = match target {
                    None => Err(Error::not_found(format!("no mailbox for {}", r.address))),
                    Some(a) if done.contains(&a) => Ok(()),
                    Some(a) => {
                        let inbox = role_in(txn, a, Role::Inbox)?;
                        let place =
                            Placement { mailboxes: vec![inbox], keywords: Vec::new(), received_ms: now_ms };
                        let mut changes = ChangeSet::new();
                        match ingest::insert(txn, a, &prepared, &place, &config, &mut changes) {
                            Ok(_) => {
                                changes.commit(txn, a, config.keep_changes)?;
                                done.push(a);
                                Ok(())
                            }
                            Err(e @ (Error::OverQuota(_) | Error::NotFound(_))) => Err(e),
                            Err(e) => return Err(e),
                        }
                    }
                };
                match outcome {
                    Ok(()) => {
                        r.status = Status::Delivered;
                        r.reply = "250 2.0.0 delivered here".into();
                    }
                    Err(e) => {
                        let reply = match e {
                            Error::OverQuota(m) => format!("552 5.2.2 {m}"),
                            e => format!("550 5.1.1 {e}"),
                        };
                        r.status = Status::Failed;
                        r.reply = reply.clone();
                        failed.push((r.address.clone(), reply));
                    }
                }
            }
            let mut changes = ChangeSet::new();
            store(txn, Some(&old), &new, &mut changes)?;
            bounce(txn, &new, &failed, Some(&headers), now_ms, &config, &mut changes)?;
            changes.commit(txn, old.account, config.keep_changes)?;
            Ok::<_, Error>(())
        })?;
        self.db().sync(ticket).await?;
        Ok(())
    }

    fn submissions_any(&self, id: u64) -> Result<Option<Submission>> {
        self.db().get(Space::Outbox, &record_key(id))?.map(|v| decode(Space::Outbox, &v)).transpose()
    }

    /// The header section of submission `id`'s message, for a bounce.
    fn bounce_headers(&self, id: u64) -> Result<Option<Vec<u8>>> {
        let Some(s) = self.submissions_any(id)? else { return Ok(None) };
        Ok(blob::get(self.db(), s.blob)?.map(|b| header_section(&b).to_vec()))
    }

    /// Header sections of the due submissions that have expired (read
    /// before the transaction that bounces them).
    fn bounce_headers_due(&self, now_ms: i64, max: usize) -> Result<std::collections::HashMap<u64, Vec<u8>>> {
        let view = self.db().snapshot();
        let mut out = std::collections::HashMap::new();
        for (k, _) in view.scan(Space::Outbox, &due_range(REMOTE, now_ms), Order::Ascending, max)? {
            let Some(id) = key::read_u64(&k, 9) else { continue };
            if let Some(v) = view.get(Space::Outbox, &record_key(id))? {
                let s: Submission = decode(Space::Outbox, &v)?;
                if now_ms >= s.expires_ms
                    && let Some(b) = blob::get_in(&view, s.blob)?
                {
                    out.insert(id, header_section(&b).to_vec());
                }
            }
        }
        Ok(out)
    }
}

/// Fails every pending recipient (remote ones, or all with `all`) as
/// expired; returns them for the bounce.
fn expire(s: &mut Submission, all: bool) -> Failures {
    let mut failed = Vec::new();
    for r in s.recipients.iter_mut().filter(|r| r.status.pending() && (all || !r.local)) {
        let last = if r.reply.is_empty() { "no attempt succeeded".to_string() } else { r.reply.clone() };
        r.reply = format!("expired after retrying: {last}");
        r.status = Status::Failed;
        failed.push((r.address.clone(), r.reply.clone()));
    }
    s.leased_until_ms = 0;
    failed
}

/// The header section of a message (at most 64 KiB of it).
fn header_section(raw: &[u8]) -> &[u8] {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2);
    let end = end.or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 1)).unwrap_or(raw.len());
    &raw[..end.min(64 * 1024)]
}

/// Puts a delivery status notification for `failed` into the sender's
/// Inbox (none for the null sender, or when nothing failed).
fn bounce(
    txn: &mut Txn<'_>,
    s: &Submission,
    failed: &[(String, String)],
    headers: Option<&[u8]>,
    now_ms: i64,
    config: &crate::mail::MailConfig,
    changes: &mut ChangeSet,
) -> Result<()> {
    if failed.is_empty() || s.mail_from.is_empty() {
        return Ok(());
    }
    let report = super::dsn::build(&super::dsn::Report {
        reporting_host: &config_host(&s.mail_from),
        original_sender: &s.mail_from,
        failed,
        headers: headers.unwrap_or_default(),
        submission: s.id,
        now_ms,
    });
    let prepared = prepare_owned(report)?;
    let inbox = role_in(txn, s.account, Role::Inbox)?;
    let place = Placement { mailboxes: vec![inbox], keywords: Vec::new(), received_ms: now_ms };
    // The bounce is the sender's own record of the failure: it goes into
    // the Inbox even over quota would refuse it? No: quota still holds.
    match ingest::insert(txn, s.account, &prepared, &place, config, changes) {
        Ok(_) | Err(Error::OverQuota(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The host a bounce says it comes from: the sender's domain.
fn config_host(mail_from: &str) -> String {
    mail_from.rsplit_once('@').map_or("localhost", |(_, d)| d).to_ascii_lowercase()
}

/// Longest envelope address (RFC 5321 path limit).
pub const MAX_ADDRESS_BYTES: usize = 256;

/// Checks an envelope address: `local@domain`, printable, no spaces or
/// angle brackets, at most [`MAX_ADDRESS_BYTES`].
pub fn check_address(address: &str) -> Result<()> {
    let ok = address.len() <= MAX_ADDRESS_BYTES
        && address.rsplit_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
        && address.chars().all(|c| !c.is_control() && !c.is_whitespace() && c != '<' && c != '>');
    if ok { Ok(()) } else { Err(Error::invalid(format!("{address:?} is not an address (local@domain)"))) }
}

/// The domain of an address, lower-cased.
fn domain_of(address: &str) -> String {
    address.rsplit_once('@').map_or(String::new(), |(_, d)| d.to_ascii_lowercase())
}

/// Whether mail to `address` stays on this server: its domain is one of
/// `domains` (with `domains` empty, the development default: `localhost`,
/// the domain of its accounts' primary addresses), or the whole address
/// names an account. Mail to other domains leaves, though inbound mail to
/// any domain is accepted when `domains` is empty.
pub fn is_local(accounts: &Accounts, address: &str, domains: &[String]) -> Result<bool> {
    let domain = domain_of(address);
    if domains.iter().any(|d| d.eq_ignore_ascii_case(&domain))
        || (domains.is_empty() && domain == "localhost")
    {
        return Ok(true);
    }
    Ok(accounts.by_name(&address.to_ascii_lowercase())?.is_some())
}

/// An account's primary address: its name when that is an address, else
/// its name at the first served domain (`localhost` when none is set).
pub fn primary_address(account: &crate::account::Account, domains: &[String]) -> String {
    if account.name.contains('@') {
        return account.name.clone();
    }
    let domain = domains.first().map_or("localhost", String::as_str);
    format!("{}@{domain}", account.name)
}

/// The envelope sender an account may use: `requested` when it reaches
/// the account (its name, or its name at a served domain, `+tags` too),
/// or with `requested` empty the account's primary address.
pub fn sender_address(
    accounts: &Accounts,
    account: AccountId,
    requested: &str,
    domains: &[String],
) -> Result<String> {
    let acct = accounts.get(account)?.ok_or(Error::BadCredentials)?;
    if requested.is_empty() {
        return Ok(primary_address(&acct, domains));
    }
    check_address(requested)?;
    if accounts.resolve_recipient(requested, domains)?.is_some_and(|a| a.id == account) {
        return Ok(requested.to_string());
    }
    Err(Error::Forbidden(format!("{requested} is not an address of this account")))
}

/// Checks that every address in the From field of `raw` is one of
/// `account`'s, as [`sender_address`] does for the envelope sender: the
/// message goes out signed for the sender's domain, so a From that showed
/// another person's address (`ceo@` of the same domain) would pass DMARC
/// as theirs. A message without a From field passes (it shows nobody).
pub fn check_from_field(
    accounts: &Accounts,
    account: AccountId,
    raw: &[u8],
    domains: &[String],
) -> Result<()> {
    let Some(headers) = mail_parser::MessageParser::new().parse_headers(raw) else { return Ok(()) };
    let Some(from) = headers.from() else { return Ok(()) };
    for addr in from.iter() {
        let Some(address) = addr.address() else { continue };
        if accounts.resolve_recipient(address, domains)?.is_none_or(|a| a.id != account) {
            return Err(Error::Forbidden(format!(
                "the From field shows {address}, which is not an address of this account"
            )));
        }
    }
    Ok(())
}

/// The blob of every submission that still has a recipient pending (each
/// holds one reference): for `check`.
pub fn held_blobs(db: &crate::store::Db) -> Result<Vec<BlobId>> {
    let mut out = Vec::new();
    db.scan_all(Space::Outbox, &KeyRange::prefix(b"s"), Order::Ascending, |_, v| {
        let s: Submission = decode(Space::Outbox, v)?;
        if s.any_pending() {
            out.push(s.blob);
        }
        Ok::<_, Error>(true)
    })?;
    Ok(out)
}
