//! `quaild check`: verifies that everything derived agrees with the email
//! records — index entries, per-mailbox counters, usage, thread members,
//! blob reference counts, blob presence, stored-bytes total — and with
//! `repair` rewrites whatever does not. Run it on a stopped server.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::account::{AccountId, Counter};
use crate::blob::{self, BlobId};
use crate::error::{Error, Result};
use crate::mail::{EmailRecord, decode, index, thread};
use crate::store::key::{self, Key};
use crate::store::{Db, KeyRange, Order, Space, decode_counter};

/// What a check found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Accounts checked.
    pub accounts: u64,
    /// Emails checked.
    pub emails: u64,
    /// Blobs checked.
    pub blobs: u64,
    /// Every disagreement found, in words.
    pub problems: Vec<String>,
    /// Whether they were repaired.
    pub repaired: bool,
}

impl CheckReport {
    /// Whether nothing disagreed.
    pub fn clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A set of (key → value) writes that makes the store right.
#[derive(Default)]
struct Fixes {
    puts: Vec<(Space, Vec<u8>, Vec<u8>)>,
    deletes: Vec<(Space, Vec<u8>)>,
}

fn keys_with_prefix(db: &Db, space: Space, prefix: &[u8]) -> Result<BTreeSet<Vec<u8>>> {
    let mut out = BTreeSet::new();
    db.scan_all(space, &KeyRange::prefix(prefix), Order::Ascending, |k, _| {
        out.insert(k.to_vec());
        Ok::<_, Error>(true)
    })?;
    Ok(out)
}

/// Checks the whole store; repairs when `repair`.
pub fn check(db: &Db, repair: bool) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let mut fixes = Fixes::default();
    let mut expected_refs: HashMap<BlobId, u64> = HashMap::new();

    let mut accounts = Vec::new();
    db.scan_all(Space::Accounts, &KeyRange::all(), Order::Ascending, |k, _| {
        if let Some(id) = key::read_u64(k, 0) {
            accounts.push(AccountId(id));
        }
        Ok::<_, Error>(true)
    })?;
    for account in accounts {
        report.accounts += 1;
        check_account(db, account, &mut report, &mut fixes, &mut expected_refs)?;
    }

    // The outbox holds the bytes of every submission with a recipient pending.
    for b in crate::mail::outbox::held_blobs(db)? {
        *expected_refs.entry(b).or_default() += 1;
    }

    // Blobs: reference counts, presence, orphans, stored bytes.
    let mut stored_total = 0u64;
    let mut seen = BTreeSet::new();
    let mut rows = Vec::new();
    db.scan_all(Space::BlobRefs, &KeyRange::all(), Order::Ascending, |k, v| {
        rows.push((k.to_vec(), v.to_vec()));
        Ok::<_, Error>(true)
    })?;
    for (k, v) in rows {
        let Ok(arr) = <[u8; 32]>::try_from(k.as_slice()) else {
            report.problems.push("malformed blob reference key".into());
            fixes.deletes.push((Space::BlobRefs, k));
            continue;
        };
        let id = BlobId(arr);
        seen.insert(id);
        report.blobs += 1;
        let Some(refs) = blob::decode_refs(&v) else {
            report.problems.push(format!("blob {id}: malformed reference record"));
            fixes.deletes.push((Space::BlobRefs, k));
            continue;
        };
        let want = expected_refs.get(&id).copied().unwrap_or(0);
        let keys = blob::stored_keys(db.store(), id)?;
        let present = (!keys.is_empty()).then(|| keys.iter().map(|(_, n)| *n).sum::<u64>());
        match (&present, want) {
            (None, 0) => {
                report.problems.push(format!("blob {id}: reference record without blob or emails"));
                fixes.deletes.push((Space::BlobRefs, id.0.to_vec()));
            }
            (None, _) => {
                report.problems.push(format!("blob {id}: missing, {want} emails need it (not repairable)"))
            }
            (Some(_), 0) => {
                report.problems.push(format!(
                    "blob {id}: orphan ({} references recorded, no email uses it)",
                    refs.count
                ));
                fixes.deletes.push((Space::BlobRefs, id.0.to_vec()));
                for (k, _) in &keys {
                    fixes.deletes.push((Space::Blobs, k.clone()));
                }
            }
            (Some(stored), n) => {
                stored_total += stored;
                if refs.count != n || refs.stored != *stored {
                    report
                        .problems
                        .push(format!("blob {id}: {} references recorded, {n} emails use it", refs.count));
                    let mut v = n.to_be_bytes().to_vec();
                    v.extend_from_slice(&stored.to_be_bytes());
                    fixes.puts.push((Space::BlobRefs, id.0.to_vec(), v));
                }
            }
        }
    }
    for (id, n) in &expected_refs {
        if seen.contains(id) {
            continue;
        }
        let keys = blob::stored_keys(db.store(), *id)?;
        match (!keys.is_empty()).then(|| keys.iter().map(|(_, n)| *n).sum::<u64>()) {
            Some(stored) => {
                report.problems.push(format!("blob {id}: no reference record, {n} emails use it"));
                stored_total += stored;
                let mut v = n.to_be_bytes().to_vec();
                v.extend_from_slice(&stored.to_be_bytes());
                fixes.puts.push((Space::BlobRefs, id.0.to_vec(), v));
            }
            None => report.problems.push(format!("blob {id}: missing, {n} emails need it (not repairable)")),
        }
    }
    let total_key = Counter::BlobBytes.key(AccountId(0), 0);
    let recorded = db.counter(Space::Counters, &total_key)?.max(0) as u64;
    if recorded != stored_total {
        report
            .problems
            .push(format!("stored blob bytes: counter says {recorded}, blobs take {stored_total}"));
        fixes.puts.push((Space::Counters, total_key, (stored_total as i64).to_be_bytes().to_vec()));
    }

    if repair && !report.problems.is_empty() {
        let ticket = db
            .write(|txn| {
                for (s, k) in &fixes.deletes {
                    txn.delete(*s, k.clone());
                }
                for (s, k, v) in &fixes.puts {
                    txn.put(*s, k.clone(), v.clone());
                }
                Ok::<_, Error>(())
            })?
            .1;
        db.sync_blocking(ticket)?;
        report.repaired = true;
    }
    Ok(report)
}

/// Each kind's change log must begin after its floor: an entry at or below
/// it is a leftover that compaction missed (repair deletes it).
fn check_change_log(db: &Db, account: AccountId, report: &mut CheckReport, fixes: &mut Fixes) -> Result<()> {
    for kind in crate::sync::KINDS {
        let floor = db.counter(Space::Counters, &Counter::KindFloor.key(account, kind as u64))?.max(0) as u64;
        let start = Key::new().u64(account.0).u8(kind as u8).build();
        let end = Key::new().u64(account.0).u8(kind as u8).u64(floor.saturating_add(1)).build();
        let stale = db.scan(Space::Changes, &KeyRange::between(start, end), Order::Ascending, usize::MAX)?;
        if !stale.is_empty() {
            report.problems.push(format!(
                "account {}: {} {kind:?} change-log entries at or below its floor {floor}",
                account.0,
                stale.len()
            ));
            fixes.deletes.extend(stale.into_iter().map(|(k, _)| (Space::Changes, k)));
        }
    }
    Ok(())
}

fn check_account(
    db: &Db,
    account: AccountId,
    report: &mut CheckReport,
    fixes: &mut Fixes,
    expected_refs: &mut HashMap<BlobId, u64>,
) -> Result<()> {
    let prefix = Key::new().u64(account.0).build();
    let mut emails: Vec<EmailRecord> = Vec::new();
    let mut bad = Vec::new();
    db.scan_all(Space::Emails, &KeyRange::prefix(&prefix), Order::Ascending, |k, v| {
        match decode::<EmailRecord>(Space::Emails, v) {
            Ok(e) => emails.push(e),
            Err(_) => bad.push(k.to_vec()),
        }
        Ok::<_, Error>(true)
    })?;
    for k in bad {
        report.problems.push(format!("account {}: undecodable email record {}", account.0, hex::encode(&k)));
    }
    report.emails += emails.len() as u64;
    check_change_log(db, account, report, fixes)?;

    // The search index holds exactly the account's emails (`quaild
    // reindex` rebuilds it; repair does not guess terms).
    let indexed: BTreeSet<u64> = crate::search::index::documents(db, account.0)?.into_iter().collect();
    let stored: BTreeSet<u64> = emails.iter().map(|e| e.id.0).collect();
    let missing = stored.difference(&indexed).count();
    let stale = indexed.difference(&stored).count();
    if missing + stale > 0 {
        report.problems.push(format!(
            "account {}: search index lacks {missing} emails and holds {stale} that are gone; \
             run quaild reindex --account NAME",
            account.0
        ));
    }

    let mut want_index = BTreeSet::new();
    let mut want_counts: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    let mut want_members = BTreeSet::new();
    let (mut bytes, mut messages) = (0i64, 0i64);
    for e in &emails {
        for (mb, facet) in index::entries(e) {
            want_index.insert(index::entry_key(account, mb, facet, e.received_ms, e.id.0));
            *want_counts.entry(facet.counter().key(account, mb.0)).or_default() += 1;
        }
        want_members.insert(thread::member_key(account, e.thread, e.received_ms, e.id));
        bytes += e.size as i64;
        messages += 1;
        let distinct: BTreeSet<BlobId> = e.blobs.iter().copied().collect();
        for b in distinct {
            *expected_refs.entry(b).or_default() += 1;
        }
    }
    want_counts.insert(Counter::UsedBytes.key(account, 0), bytes);
    want_counts.insert(Counter::UsedMessages.key(account, 0), messages);

    // What the account holds: its emails' blobs and its uploads.
    let mut want_holds: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for e in &emails {
        let distinct: BTreeSet<BlobId> = e.blobs.iter().copied().collect();
        for b in distinct {
            let mut k = prefix.clone();
            k.extend_from_slice(&b.0);
            *want_holds.entry(k).or_default() += 1;
        }
    }
    db.scan_all(Space::Uploads, &KeyRange::prefix(&prefix), Order::Ascending, |k, _| {
        if let Some(b) = k.get(8..40).and_then(|b| <[u8; 32]>::try_from(b).ok()) {
            *expected_refs.entry(BlobId(b)).or_default() += 1;
            *want_holds.entry(k.to_vec()).or_default() += 1;
        }
        Ok::<_, Error>(true)
    })?;
    let mut have_holds: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    db.scan_all(Space::AccountBlobs, &KeyRange::prefix(&prefix), Order::Ascending, |k, v| {
        have_holds.insert(k.to_vec(), crate::store::decode_counter(Space::AccountBlobs, Some(v.to_vec()))?);
        Ok::<_, Error>(true)
    })?;
    for (k, want) in &want_holds {
        if have_holds.get(k) != Some(want) {
            report.problems.push(format!(
                "account {}: holds a blob {} times by its record, {} by its emails and uploads",
                account.0,
                have_holds.get(k).copied().unwrap_or(0),
                want
            ));
            fixes.puts.push((Space::AccountBlobs, k.clone(), want.to_be_bytes().to_vec()));
        }
    }
    for k in have_holds.keys().filter(|k| !want_holds.contains_key(*k)) {
        report.problems.push(format!("account {}: holds a blob no email or upload has", account.0));
        fixes.deletes.push((Space::AccountBlobs, k.clone()));
    }

    let have_index = keys_with_prefix(db, Space::EmailIndex, &prefix)?;
    diff_keys(report, fixes, account, Space::EmailIndex, "index entry", &want_index, &have_index);
    let have_members = keys_with_prefix(db, Space::ThreadMembers, &prefix)?;
    diff_keys(report, fixes, account, Space::ThreadMembers, "thread member", &want_members, &have_members);

    // Counters of this account that counts derive from.
    let derived = [
        Counter::MailboxTotal,
        Counter::MailboxUnread,
        Counter::MailboxFlagged,
        Counter::UsedBytes,
        Counter::UsedMessages,
    ];
    let mut have_counts: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    db.scan_all(Space::Counters, &KeyRange::prefix(&prefix), Order::Ascending, |k, v| {
        if k.get(8).is_some_and(|tag| derived.iter().any(|c| *c as u8 == *tag)) {
            have_counts
                .insert(k.to_vec(), decode_counter(Space::Counters, Some(v.to_vec())).unwrap_or(i64::MIN));
        }
        Ok::<_, Error>(true)
    })?;
    for (k, want) in &want_counts {
        let have = have_counts.get(k).copied().unwrap_or(0);
        if have != *want {
            report.problems.push(format!(
                "account {}: counter {} is {have}, recount gives {want}",
                account.0,
                hex::encode(k)
            ));
            if *want == 0 {
                fixes.deletes.push((Space::Counters, k.clone()));
            } else {
                fixes.puts.push((Space::Counters, k.clone(), want.to_be_bytes().to_vec()));
            }
        }
    }
    for (k, have) in &have_counts {
        if !want_counts.contains_key(k) && *have != 0 {
            report.problems.push(format!(
                "account {}: counter {} is {have}, recount gives 0",
                account.0,
                hex::encode(k)
            ));
            fixes.deletes.push((Space::Counters, k.clone()));
        }
    }
    Ok(())
}

fn diff_keys(
    report: &mut CheckReport,
    fixes: &mut Fixes,
    account: AccountId,
    space: Space,
    what: &str,
    want: &BTreeSet<Vec<u8>>,
    have: &BTreeSet<Vec<u8>>,
) {
    for k in want.difference(have) {
        report.problems.push(format!("account {}: missing {what} {}", account.0, hex::encode(k)));
        fixes.puts.push((space, k.clone(), Vec::new()));
    }
    for k in have.difference(want) {
        report.problems.push(format!("account {}: stray {what} {}", account.0, hex::encode(k)));
        fixes.deletes.push((space, k.clone()));
    }
}
