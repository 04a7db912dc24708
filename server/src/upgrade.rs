//! Store formats and the migrations between them.
//!
//! The store records its format under `Space::Meta` `format`. On open,
//! [`open`] refuses a format this build does not know (newer, or too old to
//! migrate) with a message that says what to do, and runs the steps from
//! the format on disk up to [`STORE_FORMAT`] one at a time, printing a
//! progress line for each. A step is idempotent and its last transaction
//! stamps the next format, so a crash during a migration leaves a store that
//! the next open migrates again from where the format says it is.
//!
//! Formats:
//! - 1: the foundation (emails with raw messages only). Not migratable:
//!   export it with the build that wrote it and import it again.
//! - 2: body structure, attachment blobs and skeletons, keyword and thread
//!   indexes, the change log with one floor per account.
//! - 3: one change-log floor per kind (`Counter::KindFloor`), so compaction
//!   that lags for one kind never drops another kind's changes.
//! - 4: blobs over 1 MiB may be stored in chunks (`blob::CHUNK`). Nothing to
//!   rewrite: format-3 blobs stay readable as they are; the stamp keeps an
//!   older build, which cannot read chunked blobs, from opening the store.
//! - 5: what each account holds (`Space::AccountBlobs`, for upload dedup)
//!   and its uploads (`Space::Uploads`); the migration counts every
//!   email's blobs.
//!
//! - 6: the search index (`Space::Search`); the migration indexes every
//!   email. (The outbox, `Space::Outbox`, and the `submission` change kind
//!   needed no step: they start empty.)
//!
//! - 7: the search index as immutable segments merged in the background
//!   (`search::index`); the migration drops the format-6 index and builds
//!   the new one from the mail.
//!
//! Every later format change (filter verdicts, ...) adds a step here and
//! extends `server/tests/upgrade.rs`.

use crate::account::{AccountId, Counter};
use crate::error::{Error, Result};
use crate::store::key::{self, Key};
use crate::store::{Db, KeyRange, Order, Space, StoreError};
use crate::sync::{self, Kind};

/// The kinds of change the log had when format 3 split its floor (later
/// kinds start with an empty log at floor 0).
const KINDS: [Kind; 3] = [Kind::Email, Kind::Mailbox, Kind::Thread];

/// The store layout this build writes and reads.
pub const STORE_FORMAT: u32 = 7;
/// The oldest format this build migrates.
pub const OLDEST_MIGRATABLE: u32 = 2;
const FORMAT_KEY: &[u8] = b"format";

/// What happened on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// A new store, stamped with [`STORE_FORMAT`].
    Created,
    /// Already at [`STORE_FORMAT`].
    Current,
    /// Migrated from this format.
    Migrated(u32),
}

/// The format on disk, if stamped.
pub fn format(db: &Db) -> Result<Option<u32>> {
    match db.get(Space::Meta, FORMAT_KEY)? {
        None => Ok(None),
        Some(v) => <[u8; 4]>::try_from(v.as_slice())
            .map(|b| Some(u32::from_be_bytes(b)))
            .map_err(|_| StoreError::Corrupt { space: Space::Meta, detail: "format".into() }.into()),
    }
}

fn stamp(txn: &mut crate::store::Txn<'_>, format: u32) {
    txn.put(Space::Meta, FORMAT_KEY.to_vec(), format.to_be_bytes().to_vec());
}

/// Brings the store to [`STORE_FORMAT`], or refuses it. `progress` gets one
/// line per step and per thousand accounts migrated.
pub fn open(db: &Db, progress: &mut dyn FnMut(&str)) -> Result<Opened> {
    let found = match format(db)? {
        Some(f) => f,
        None => {
            if !db.scan(Space::Accounts, &KeyRange::all(), Order::Ascending, 1)?.is_empty() {
                return Err(Error::Internal(
                    "the store holds accounts but no format stamp: it is damaged or not a Quail store; \
                     restore it from a backup"
                        .into(),
                ));
            }
            let (_, t) = db.write(|txn| {
                stamp(txn, STORE_FORMAT);
                Ok::<_, Error>(())
            })?;
            db.sync_blocking(t)?;
            return Ok(Opened::Created);
        }
    };
    if found > STORE_FORMAT {
        return Err(Error::Store(StoreError::UnsupportedFormat { found, supported: STORE_FORMAT }));
    }
    if found < OLDEST_MIGRATABLE {
        return Err(Error::Internal(format!(
            "store format {found} is too old to migrate (this build migrates formats \
             {OLDEST_MIGRATABLE} to {STORE_FORMAT}); export every account with the quaild that wrote \
             it (`quaild export`) and import them into a new data dir"
        )));
    }
    if found == STORE_FORMAT {
        return Ok(Opened::Current);
    }
    progress(&format!(
        "store format {found} is older than this build's {STORE_FORMAT}: migrating in place \
         (one-way; to keep a way back, stop now and copy the data dir first)"
    ));
    for from in found..STORE_FORMAT {
        progress(&format!("migrating store format {from} -> {}: {}", from + 1, describe(from)));
        run_step(db, from, progress)?;
    }
    progress(&format!("store migrated to format {STORE_FORMAT}"));
    Ok(Opened::Migrated(found))
}

fn describe(from: u32) -> &'static str {
    match from {
        2 => "one change-log floor per kind",
        3 => "large blobs in chunks (nothing to rewrite)",
        4 => "count the blobs each account holds",
        5 => "search index (built by the next step)",
        6 => "rebuild the search index as segments",
        _ => "no such step",
    }
}

fn run_step(db: &Db, from: u32, progress: &mut dyn FnMut(&str)) -> Result<()> {
    match from {
        2 => kind_floors(db, progress),
        3 => stamp_only(db, 4),
        4 => account_blobs(db, progress),
        // This build writes format-7 indexes only: the next step builds one.
        5 => stamp_only(db, 6),
        6 => search_index(db, progress, 7),
        other => Err(Error::Internal(format!("no migration from store format {other}"))),
    }
}

/// Accounts migrated per transaction.
const ACCOUNTS_PER_TXN: usize = 1000;

/// 2 → 3: per-kind floors. A format-2 floor is the lowest point any kind's
/// compaction reached, but other kinds may have been compacted beyond it.
/// Each kind's log is a suffix (compaction deletes from the bottom), so its
/// first remaining entry `m` proves every change of that kind after `m - 1`
/// is there: the kind's floor becomes `max(old floor, m - 1)`; a kind with
/// no entries left after compaction began gets the account's state; an
/// account never compacted (old floor 0) keeps 0 for every kind.
fn kind_floors(db: &Db, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let accounts = all_accounts(db)?;
    let total = accounts.len();
    for (n, chunk) in accounts.chunks(ACCOUNTS_PER_TXN).enumerate() {
        let last = (n + 1) * ACCOUNTS_PER_TXN >= total;
        let (_, t) = db.write(|txn| {
            for account in chunk {
                if txn.exists(Space::Counters, &Counter::KindFloor.key(*account, 0))? {
                    continue; // migrated before a crash interrupted this step
                }
                let old_key = Counter::LogFloor.key(*account, 0);
                let old = txn.counter(Space::Counters, &old_key)?.max(0) as u64;
                let state = sync::state_in(txn, *account)?.0;
                for kind in KINDS {
                    let prefix = Key::new().u64(account.0).u8(kind as u8).build();
                    let first = txn.scan(Space::Changes, &KeyRange::prefix(&prefix), Order::Ascending, 1)?;
                    let floor = match first.first().and_then(|(k, _)| key::read_u64(k, 9)) {
                        // Never compacted: every change is still there.
                        _ if old == 0 => 0,
                        Some(m) => old.max(m.saturating_sub(1)),
                        None => state,
                    };
                    sync::set_floor(txn, *account, kind, floor);
                }
                txn.delete(Space::Counters, old_key);
            }
            if last {
                stamp(txn, 3);
            }
            Ok::<_, Error>(())
        })?;
        db.sync_blocking(t)?;
        if total > ACCOUNTS_PER_TXN {
            progress(&format!("  {} of {total} accounts", ((n + 1) * ACCOUNTS_PER_TXN).min(total)));
        }
    }
    if total == 0 {
        let (_, t) = db.write(|txn| {
            stamp(txn, 3);
            Ok::<_, Error>(())
        })?;
        db.sync_blocking(t)?;
    }
    Ok(())
}

/// 4 → 5: `Space::AccountBlobs` from every email's blob list. Per account,
/// one transaction that first clears what an interrupted run left, so the
/// step can run again.
fn account_blobs(db: &Db, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let accounts = all_accounts(db)?;
    let total = accounts.len();
    for (n, account) in accounts.iter().enumerate() {
        let prefix = Key::new().u64(account.0).build();
        let mut counts: std::collections::BTreeMap<crate::blob::BlobId, i64> = Default::default();
        db.snapshot().scan_all(Space::Emails, &KeyRange::prefix(&prefix), Order::Ascending, |_, v| {
            let e: crate::mail::EmailRecord = crate::mail::decode(Space::Emails, v)?;
            for b in e.blobs {
                *counts.entry(b).or_default() += 1;
            }
            Ok::<_, Error>(true)
        })?;
        let mut stale = Vec::new();
        db.snapshot().scan_all(
            Space::AccountBlobs,
            &KeyRange::prefix(&prefix),
            Order::Ascending,
            |k, _| {
                stale.push(k.to_vec());
                Ok::<_, Error>(true)
            },
        )?;
        let last = n + 1 == total;
        let (_, t) = db.write(|txn| {
            for k in &stale {
                txn.delete(Space::AccountBlobs, k.clone());
            }
            for (b, c) in &counts {
                crate::blob::hold(txn, account.0, *b, *c)?;
            }
            if last {
                stamp(txn, 5);
            }
            Ok::<_, Error>(())
        })?;
        db.sync_blocking(t)?;
        if (n + 1) % 1000 == 0 {
            progress(&format!("  {} of {total} accounts", n + 1));
        }
    }
    if total == 0 {
        let (_, t) = db.write(|txn| {
            stamp(txn, 5);
            Ok::<_, Error>(())
        })?;
        db.sync_blocking(t)?;
    }
    Ok(())
}

/// 6 → 7: every account's search index, built from its mail (`reindex`
/// clears what the format-6 layout left). An account interrupted halfway
/// is rebuilt from scratch the next time.
fn search_index(db: &Db, progress: &mut dyn FnMut(&str), to: u32) -> Result<()> {
    let accounts = all_accounts(db)?;
    let total = accounts.len();
    let mut emails = 0;
    for (n, account) in accounts.iter().enumerate() {
        emails += crate::mail::find::reindex(db, *account, progress)?;
        if (n + 1) % 100 == 0 {
            progress(&format!("  {} of {total} accounts, {emails} emails", n + 1));
        }
    }
    progress(&format!("  {emails} emails of {total} accounts indexed"));
    stamp_only(db, to)
}

/// A step with nothing (more) to rewrite: the stamp, durably.
fn stamp_only(db: &Db, format: u32) -> Result<()> {
    let (_, t) = db.write(|txn| {
        stamp(txn, format);
        Ok::<_, Error>(())
    })?;
    db.sync_blocking(t)?;
    Ok(())
}

/// Every account's id, in order.
fn all_accounts(db: &Db) -> Result<Vec<AccountId>> {
    let mut accounts = Vec::new();
    db.scan_all(Space::Accounts, &KeyRange::all(), Order::Ascending, |k, _| {
        if let Some(id) = key::read_u64(k, 0) {
            accounts.push(AccountId(id));
        }
        Ok::<_, Error>(true)
    })?;
    Ok(accounts)
}
