//! Threading: which conversation an email belongs to.
//!
//! An email joins the thread of any message it names — its own Message-ID,
//! its In-Reply-To and References — looked up in `Space::MessageIds`. When
//! those name nothing known and the email looks like a reply (a `Re:`-style
//! prefix, or parents that are not here), it joins the thread whose
//! normalised subject it shares, if that thread saw mail within a window.
//! An email that links two threads merges them into the older one.
//!
//! Message ids without an `@` are not globally unique: git send-email, for
//! one, writes whatever is typed at its In-Reply-To prompt (often `yes`).
//! Such an id links only mail from the same sender within an hour — enough
//! to keep a patch series together, never enough to merge strangers.
//!
//! Times here are the Date header when present (imports of old archives
//! arrive all at once), else the arrival time.

use std::collections::BTreeSet;

use crate::account::AccountId;
use crate::error::Result;
use crate::mail::{EmailId, EmailRecord, Envelope, ThreadId, email_in, put_email};
use crate::store::key::{self, Key};
use crate::store::{Db, KeyRange, Order, Space, StoreError, Txn};
use crate::sync::{ChangeSet, Kind, Op};

/// Most threads one ingest merges into its own: a crafted References
/// header must not make one delivery rewrite half the mailbox under the
/// writer lock.
pub const MAX_MERGES: usize = 4;
/// Largest thread a merge moves; a bigger one stays a thread of its own.
pub const MAX_MERGE_MEMBERS: usize = 1000;

/// How close in time mail citing the same malformed id must be.
pub const MALFORMED_ID_WINDOW_MS: i64 = 3600 * 1000;

/// Reply and forward prefixes in the languages mail clients write them in.
const PREFIXES: &[&str] = &[
    "re", "fw", "fwd", "aw", "wg", "sv", "vs", "vb", "antw", "tr", "rif", "ref", "odp", "res", "enc", "fs",
    "r", "حول", "回复", "回覆", "转发", "轉寄", "件名",
];

/// The subject without reply/forward prefixes, lower case, whitespace
/// collapsed; and whether any prefix was there.
pub fn normalize_subject(subject: &str) -> (String, bool) {
    let mut s = subject.trim();
    let mut is_reply = false;
    while let Some(colon) = s.find([':', '：']) {
        let head = s[..colon].trim();
        // "Re[2]", "Re(2)", "RE^2" count as "Re".
        let word = head.split(['[', '(', '^']).next().unwrap_or_default().trim().to_lowercase();
        if head.chars().count() > 8 || !PREFIXES.contains(&word.as_str()) {
            break;
        }
        is_reply = true;
        let skip = s[colon..].chars().next().map_or(1, char::len_utf8);
        s = s[colon + skip..].trim_start();
    }
    (s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase(), is_reply)
}

fn clean_id(id: &str) -> &str {
    id.trim().trim_start_matches('<').trim_end_matches('>').trim()
}

/// Whether a message id is well formed enough to be globally unique.
fn well_formed(id: &str) -> bool {
    id.contains('@') && !id.contains(char::is_whitespace) && id.len() <= 998
}

/// A lookup key in `Space::MessageIds` for one cited id.
fn id_key(account: AccountId, id: &str, sender: &str) -> (Vec<u8>, bool) {
    if well_formed(id) {
        let h = blake3::hash(id.as_bytes());
        (Key::new().u64(account.0).u8(0).bytes(&h.as_bytes()[..16]).build(), false)
    } else {
        let h = blake3::hash(format!("{id}\0{sender}").as_bytes());
        (Key::new().u64(account.0).u8(1).bytes(&h.as_bytes()[..16]).build(), true)
    }
}

fn subject_key(account: AccountId, normalized: &str) -> Vec<u8> {
    let h = blake3::hash(normalized.as_bytes());
    Key::new().u64(account.0).bytes(&h.as_bytes()[..16]).build()
}

fn link_value(thread: ThreadId, at_ms: i64) -> Vec<u8> {
    let mut v = thread.0.to_be_bytes().to_vec();
    v.extend_from_slice(&at_ms.to_be_bytes());
    v
}

fn read_link(space: Space, v: &[u8]) -> Result<(ThreadId, i64)> {
    let corrupt = || StoreError::Corrupt { space, detail: "thread link".into() };
    let t = key::read_u64(v, 0).ok_or_else(corrupt)?;
    let at = key::read_u64(v, 8).ok_or_else(corrupt)? as i64;
    Ok((ThreadId(t), at))
}

/// The member key of an email in its thread.
pub fn member_key(account: AccountId, thread: ThreadId, received_ms: i64, id: EmailId) -> Vec<u8> {
    Key::new().u64(account.0).u64(thread.0).u64(received_ms.max(0) as u64).u64(id.0).build()
}

fn members_prefix(account: AccountId, thread: ThreadId) -> Vec<u8> {
    Key::new().u64(account.0).u64(thread.0).build()
}

/// The time threading compares: the Date header, else arrival.
fn when(env: &Envelope, received_ms: i64) -> i64 {
    if env.sent_ms > 0 { env.sent_ms } else { received_ms }
}

fn sender(env: &Envelope) -> String {
    env.from.first().map(|a| a.email.to_ascii_lowercase()).unwrap_or_default()
}

/// Every id an email cites: its own first, then its parents.
fn cited(env: &Envelope) -> (Option<String>, Vec<String>) {
    let own = Some(clean_id(&env.message_id).to_owned()).filter(|s| !s.is_empty());
    let mut parents: Vec<String> = env
        .in_reply_to
        .iter()
        .chain(&env.references)
        .map(|s| clean_id(s).to_owned())
        .filter(|s| !s.is_empty() && Some(s) != own.as_ref())
        .collect();
    parents.sort();
    parents.dedup();
    (own, parents)
}

fn has_members(txn: &Txn<'_>, account: AccountId, thread: ThreadId) -> Result<bool> {
    Ok(!txn
        .scan(Space::ThreadMembers, &KeyRange::prefix(&members_prefix(account, thread)), Order::Ascending, 1)?
        .is_empty())
}

/// Records every id `env` cites (and its subject) as leading to `thread`.
fn link(txn: &mut Txn<'_>, account: AccountId, env: &Envelope, received_ms: i64, thread: ThreadId) {
    let at = when(env, received_ms);
    let from = sender(env);
    let (own, parents) = cited(env);
    for id in own.iter().chain(&parents) {
        let (k, _) = id_key(account, id, &from);
        txn.put(Space::MessageIds, k, link_value(thread, at));
    }
    let (subject, _) = normalize_subject(&env.subject);
    if !subject.is_empty() {
        txn.put(Space::Subjects, subject_key(account, &subject), link_value(thread, at));
    }
}

/// Chooses (or creates) the thread of a new email and merges any threads it
/// links. The caller then adds the email with [`add_member`].
pub fn assign(
    txn: &mut Txn<'_>,
    account: AccountId,
    env: &Envelope,
    received_ms: i64,
    window_ms: i64,
    changes: &mut ChangeSet,
) -> Result<ThreadId> {
    let at = when(env, received_ms);
    let from = sender(env);
    let (own, parents) = cited(env);
    let mut found = BTreeSet::new();
    for id in own.iter().chain(&parents) {
        let (k, malformed) = id_key(account, id, &from);
        if let Some(v) = txn.get(Space::MessageIds, &k)? {
            let (t, seen) = read_link(Space::MessageIds, &v)?;
            if !malformed || (at - seen).abs() <= MALFORMED_ID_WINDOW_MS {
                found.insert(t);
            }
        }
    }
    let (subject, is_reply) = normalize_subject(&env.subject);
    if found.is_empty()
        && (is_reply || !parents.is_empty())
        && !subject.is_empty()
        && let Some(v) = txn.get(Space::Subjects, &subject_key(account, &subject))?
    {
        let (t, seen) = read_link(Space::Subjects, &v)?;
        if (at - seen).abs() <= window_ms {
            found.insert(t);
        }
    }
    let thread = match found.first() {
        Some(t) => {
            let op = if has_members(txn, account, *t)? { Op::Updated } else { Op::Created };
            changes.note(Kind::Thread, t.0, op);
            *t
        }
        None => {
            let t = ThreadId(txn.next_id("thread")?);
            changes.note(Kind::Thread, t.0, Op::Created);
            t
        }
    };
    let mut merged = 0;
    for other in found.iter().skip(1) {
        if merged == MAX_MERGES {
            break;
        }
        let prefix = members_prefix(account, *other);
        let size = txn.scan(
            Space::ThreadMembers,
            &KeyRange::prefix(&prefix),
            Order::Ascending,
            MAX_MERGE_MEMBERS + 1,
        )?;
        if size.len() > MAX_MERGE_MEMBERS {
            continue;
        }
        merge(txn, account, *other, thread, changes)?;
        merged += 1;
    }
    link(txn, account, env, received_ms, thread);
    Ok(thread)
}

/// Moves every member of `from` into `into`.
fn merge(
    txn: &mut Txn<'_>,
    account: AccountId,
    from: ThreadId,
    into: ThreadId,
    changes: &mut ChangeSet,
) -> Result<()> {
    let rows = txn.scan(
        Space::ThreadMembers,
        &KeyRange::prefix(&members_prefix(account, from)),
        Order::Ascending,
        usize::MAX,
    )?;
    for (k, _) in rows {
        let Some(id) = key::read_u64(&k, 24).map(EmailId) else {
            continue;
        };
        txn.delete(Space::ThreadMembers, k);
        let Some(mut e) = email_in(txn, account, id)? else {
            continue;
        };
        e.thread = into;
        put_email(txn, account, &e)?;
        txn.put(Space::ThreadMembers, member_key(account, into, e.received_ms, id), Vec::new());
        link(txn, account, &e.envelope, e.received_ms, into);
        changes.note(Kind::Email, id.0, Op::Updated);
    }
    changes.note(Kind::Thread, from.0, Op::Destroyed);
    Ok(())
}

/// Adds an email to its thread's member list.
pub fn add_member(txn: &mut Txn<'_>, account: AccountId, e: &EmailRecord) {
    txn.put(Space::ThreadMembers, member_key(account, e.thread, e.received_ms, e.id), Vec::new());
}

/// Removes an expunged email from its thread; the thread goes with its last member.
pub fn remove_member(
    txn: &mut Txn<'_>,
    account: AccountId,
    e: &EmailRecord,
    changes: &mut ChangeSet,
) -> Result<()> {
    txn.delete(Space::ThreadMembers, member_key(account, e.thread, e.received_ms, e.id));
    let op = if has_members(txn, account, e.thread)? { Op::Updated } else { Op::Destroyed };
    changes.note(Kind::Thread, e.thread.0, op);
    Ok(())
}

/// A thread's emails, oldest first; empty when there is no such thread.
pub fn members(db: &Db, account: AccountId, thread: ThreadId) -> Result<Vec<EmailId>> {
    Ok(db
        .scan(
            Space::ThreadMembers,
            &KeyRange::prefix(&members_prefix(account, thread)),
            Order::Ascending,
            usize::MAX,
        )?
        .into_iter()
        .filter_map(|(k, _)| key::read_u64(&k, 24).map(EmailId))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_normalise_across_languages_and_counters() {
        assert_eq!(normalize_subject("Re: RE: Fwd: Lunch  plans"), ("lunch plans".into(), true));
        assert_eq!(normalize_subject("AW: SV: Re[2]: Budget"), ("budget".into(), true));
        assert_eq!(normalize_subject("Lunch plans"), ("lunch plans".into(), false));
        assert_eq!(normalize_subject("[PATCH 1/2] fix: the bug"), ("[patch 1/2] fix: the bug".into(), false));
        assert_eq!(normalize_subject("Meeting: Monday"), ("meeting: monday".into(), false));
        assert_eq!(normalize_subject("回复：你好"), ("你好".into(), true));
        assert_eq!(normalize_subject("  "), (String::new(), false));
    }

    #[test]
    fn malformed_ids_are_scoped_to_their_sender() {
        let a = id_key(AccountId(1), "yes", "alice@example.org");
        let b = id_key(AccountId(1), "yes", "bob@example.org");
        assert!(a.1 && b.1);
        assert_ne!(a.0, b.0);
        let c = id_key(AccountId(1), "m1@example.org", "alice@example.org");
        let d = id_key(AccountId(1), "m1@example.org", "bob@example.org");
        assert_eq!(c, d);
    }
}
