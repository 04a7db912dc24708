//! The mail store against real mail: ingest of every corpus, byte-exact
//! export, blob dedup, change log, threads, mailboxes, quota, check/repair.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use quail_server::blob;
use quail_server::error::Error;
use quail_server::mail::{EmailId, MailboxId, Query, Role, Start, ThreadId};
use quail_server::sync::{Kind, State};
use quail_server::tools::{check, export, import, mbox};

/// Folders of mail in the shared corpora. (clamav-testfiles and
/// eicar-test-files hold virus samples, not mail; linux-mips-list-archive is
/// the ignored test below.)
const MAIL_FOLDERS: &[&str] = &[
    "bogofilter-testdata",
    "enmime-testdata",
    "flufl-bounce-testdata",
    "gmime-testdata",
    "mail-auth-crate-resources",
    "mail-parser-crate-resources",
    "mailman-testdata",
    "mimekit-testdata",
    "notmuch-test-corpora",
    "python-email-testdata",
    "rspamd-test-messages",
    "spamassassin-examples",
    "spamassassin-public-corpus",
    "talon-fixtures",
];

/// Imports a folder into a new account; checks nothing was dropped, every
/// raw message comes back byte for byte, and the mboxrd export holds
/// exactly the same messages.
async fn ingest_and_export(s: &support::TestStore, folder: &std::path::Path, account: &str) -> (u64, u64) {
    s.account(account).await;
    let found = import::collect(folder, mbox::Flavor::Mboxrd).expect("collect");
    let report = import::import(
        &s.mail,
        &s.accounts,
        &import::ImportOptions {
            account,
            path: folder,
            mailbox: None,
            flavor: mbox::Flavor::Mboxrd,
            now_ms: support::now(),
        },
        |_, _| {},
    )
    .await
    .expect("import");
    assert!(report.failed.is_empty(), "{}: not imported: {:?}", folder.display(), report.failed);
    assert_eq!(report.imported.len(), found.len(), "{}: dropped messages", folder.display());
    let acct = s.accounts.by_name(account).expect("lookup").expect("account").id;
    for (f, id) in found.iter().zip(&report.imported) {
        let back = s.mail.raw(acct, *id).expect("raw");
        assert!(back == f.raw, "{}: raw bytes differ", f.origin);
    }
    let mut out = Vec::new();
    let exported = export::export(&s.mail, &s.accounts, account, None, &mut out).expect("export");
    assert_eq!(exported.messages, found.len() as u64);
    let mut a: Vec<Vec<u8>> = mbox::split(&out, mbox::Flavor::Mboxrd).into_iter().map(|(_, m)| m).collect();
    let mut b: Vec<Vec<u8>> = found.into_iter().map(|f| f.raw).collect();
    a.sort();
    b.sort();
    assert!(a == b, "{}: the export does not hold exactly the imported messages", folder.display());
    (exported.messages, exported.bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_message_is_stored_and_exported_byte_for_byte() {
    let Some(corpora) = support::corpora_or_skip("corpus ingest") else {
        return;
    };
    let s = support::store();
    let mut total = 0;
    for (i, folder) in MAIL_FOLDERS.iter().enumerate() {
        let (n, bytes) = ingest_and_export(&s, &corpora.join(folder), &format!("corpus{i}")).await;
        println!("{folder}: {n} messages, {bytes} bytes");
        assert!(n > 0, "{folder}: no messages found");
        total += n;
    }
    println!("{total} messages in all");
    let report = check::check(&s.db, false).expect("check");
    assert!(report.clean(), "{:?}", report.problems);
}

/// The linux-mips list archive (46,821 messages): slow, run with --ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "imports 46,821 messages; run with --ignored"]
async fn linux_mips_archive_is_stored_and_exported_byte_for_byte() {
    let Some(corpora) = support::corpora_or_skip("linux-mips") else {
        return;
    };
    let s = support::store();
    let dir = corpora.join("linux-mips-list-archive");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("dir").flatten().map(|e| e.path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "xz"));
    files.sort();
    let mut total = 0;
    for (i, f) in files.iter().enumerate() {
        let (n, bytes) = ingest_and_export(&s, f, &format!("mips{i}")).await;
        println!("{}: {n} messages, {bytes} bytes", f.display());
        total += n;
    }
    println!("{total} messages; blob storage {} bytes", blob::stored_bytes(&s.db).expect("bytes"));
    assert!(check::check(&s.db, false).expect("check").clean());
}

fn random(n: usize, seed: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; n];
    blake3::Hasher::new().update(seed).finalize_xof().fill(&mut out);
    out
}

fn with_attachment(to: &str, i: usize, attachment: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(attachment);
    let lines: Vec<&str> =
        b64.as_bytes().chunks(76).map(|c| std::str::from_utf8(c).expect("ascii")).collect();
    format!(
        "From: Sender <sender@example.net>\r\nTo: {to}\r\nSubject: quarterly figures {i}\r\n\
         Message-ID: <figures-{i}@example.net>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nHi {to}, the figures are attached.\r\n--b{i}\r\n\
         Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"figures.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b{i}--\r\n",
        lines.join("\r\n")
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_attachment_sent_to_100_accounts_is_stored_once() {
    let s = support::store();
    let attachment = random(5 << 20, b"5 MB attachment");
    let stored_size = blob::prepare(&attachment, false).stored_len();
    let mut accounts = Vec::new();
    for i in 0..100 {
        accounts.push(s.account(&format!("user{i}")).await);
    }
    let before = blob::stored_bytes(&s.db).expect("bytes");
    let mut first = None;
    for (i, a) in accounts.iter().enumerate() {
        let raw = with_attachment(&format!("user{i}@example.org"), i, &attachment);
        let id = s.mail.deliver(&[*a], &raw, support::now()).await.expect("deliver")[0]
            .as_ref()
            .expect("ok")
            .to_owned();
        if i == 0 {
            first = Some((*a, id, raw));
        }
    }
    let growth = blob::stored_bytes(&s.db).expect("bytes") - before;
    println!("100 deliveries of a {stored_size}-byte attachment grew blob storage by {growth} bytes");
    assert!(growth < 2 * stored_size, "grew by {growth}, stored size {stored_size}");
    // And the first recipient still gets the message back byte for byte.
    let (a, id, raw) = first.expect("first");
    assert!(s.mail.raw(a, id).expect("raw") == raw);
    let e = s.mail.email(a, id).expect("get").expect("email");
    let part =
        e.body.walk().into_iter().find(|p| p.file_name == "figures.bin").cloned().expect("attachment part");
    assert_eq!(part.size, attachment.len() as u64);
    assert_eq!(blob::get(&s.db, part.blob.expect("blob")).expect("get").expect("bytes"), attachment);
    assert!(check::check(&s.db, false).expect("check").clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_after_100_mutations_are_exactly_those() {
    let s = support::store();
    let a = s.account("alice").await;
    let mut ids = Vec::new();
    for i in 0..120 {
        let raw = format!("Subject: m{i}\r\nMessage-ID: <m{i}@x>\r\n\r\nbody {i}\r\n");
        ids.push(
            s.mail.deliver(&[a], raw.as_bytes(), support::now() + i).await.expect("deliver")[0]
                .as_ref()
                .expect("ok")
                .to_owned(),
        );
    }
    let since = s.mail.state(a).expect("state");
    let flagged: Vec<EmailId> = ids[..100].to_vec();
    for id in &flagged {
        s.mail.set_keywords(a, &[*id], &["$flagged".into()], &[], None).await.expect("flag");
    }
    let c = s.mail.changes(a, Kind::Email, since, 1000).expect("changes");
    let mut got: Vec<u64> = c.updated.clone();
    got.sort();
    assert_eq!(got, flagged.iter().map(|i| i.0).collect::<Vec<_>>());
    assert!(c.created.is_empty() && c.destroyed.is_empty() && !c.has_more);
    assert_eq!(c.new_state, s.mail.state(a).expect("state"));
    // Paged: 30 at a time, each page continuing where the last stopped.
    let mut seen = Vec::new();
    let mut at = since;
    loop {
        let page = s.mail.changes(a, Kind::Email, at, 30).expect("page");
        assert!(page.updated.len() <= 30);
        seen.extend(page.updated);
        at = page.new_state;
        if !page.has_more {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, got);
    // The mailbox counts changed too (flagged does not change unread, but
    // moving does); nothing is reported for threads.
    let t = s.mail.changes(a, Kind::Thread, since, 1000).expect("threads");
    assert!(t.created.is_empty() && t.updated.is_empty() && t.destroyed.is_empty());
    // A future state and a compacted one are refused, typed.
    let future = s.mail.changes(a, Kind::Email, State(c.new_state.0 + 1), 10).expect_err("future");
    assert!(matches!(future, Error::CannotCalculateChanges(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_change_log_asks_for_a_resync() {
    let s = support::store_with(quail_server::mail::MailConfig { keep_changes: 50, ..Default::default() });
    let a = s.account("alice").await;
    let first = s.mail.state(a).expect("state");
    // Past the horizon by more than one compaction batch.
    for i in 0..200 {
        let raw = format!("Subject: m{i}\r\n\r\nbody\r\n");
        s.mail.deliver(&[a], raw.as_bytes(), support::now()).await.expect("deliver");
    }
    let err = s.mail.changes(a, Kind::Email, first, 10).expect_err("compacted");
    assert!(matches!(err, Error::CannotCalculateChanges(_)), "{err:?}");
    let recent = State(s.mail.state(a).expect("state").0 - 10);
    let c = s.mail.changes(a, Kind::Email, recent, 100).expect("recent changes");
    assert!(!c.created.is_empty());
}

/// Parses the checked-in expectation: blocks of `path\tmessage-id`.
fn expected_threads() -> Vec<BTreeSet<String>> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/notmuch-threads.txt"))
            .expect("expectation file");
    let mut blocks = Vec::new();
    let mut current = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !current.is_empty() {
                blocks.push(std::mem::take(&mut current));
            }
            continue;
        }
        let path = line.split('\t').next().expect("path").to_owned();
        current.insert(path);
    }
    if !current.is_empty() {
        blocks.push(current);
    }
    blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_of_real_lkml_and_notmuch_conversations() {
    let Some(corpora) = support::corpora_or_skip("threads") else {
        return;
    };
    let s = support::store();
    let a = s.account("reader").await;
    let root = corpora.join("notmuch-test-corpora");
    let mut by_path: BTreeMap<String, EmailId> = BTreeMap::new();
    for folder in ["default", "lkml"] {
        let found = import::collect(&root.join(folder), mbox::Flavor::Mboxrd).expect("collect");
        let mut items = Vec::new();
        for f in &found {
            let prepared = quail_server::mail::ingest::prepare(&f.raw).expect("prepare");
            let inbox = s.mail.mailbox_by_role(a, Role::Inbox).expect("inbox");
            items.push(quail_server::mail::ingest::ImportItem {
                prepared,
                placement: quail_server::mail::ingest::Placement {
                    mailboxes: vec![inbox],
                    keywords: Vec::new(),
                    received_ms: f.received_ms.unwrap_or(support::now()),
                },
            });
        }
        let ids = s.mail.import(a, &items).await.expect("import");
        for (f, id) in found.iter().zip(ids) {
            let rel = std::path::Path::new(&f.origin)
                .strip_prefix(&root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            by_path.insert(rel, id.expect("imported"));
        }
    }
    let expected = expected_threads();
    let listed: usize = expected.iter().map(BTreeSet::len).sum();
    assert_eq!(listed, by_path.len(), "the expectation lists every file once");
    let thread_of = |path: &str| -> ThreadId {
        let id = by_path.get(path).unwrap_or_else(|| panic!("{path} not imported"));
        s.mail.email(a, *id).expect("get").expect("email").thread
    };
    let mut got: HashMap<ThreadId, BTreeSet<String>> = HashMap::new();
    for path in by_path.keys() {
        got.entry(thread_of(path)).or_default().insert(path.clone());
    }
    let mut got: Vec<BTreeSet<String>> = got.into_values().collect();
    let mut want = expected;
    got.sort();
    want.sort();
    for w in &want {
        if !got.contains(w) {
            let first = w.iter().next().expect("non-empty");
            let actual = got.iter().find(|g| g.contains(first)).expect("somewhere");
            panic!(
                "expected thread of {} files starting {first} came out as {} files: {actual:?}",
                w.len(),
                actual.len()
            );
        }
    }
    assert_eq!(got.len(), want.len());
    // Thread/get lists the members oldest first.
    let t = thread_of(want[0].iter().next().expect("path"));
    let members = s.mail.thread(a, t).expect("thread");
    assert_eq!(members.len(), want[0].len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_message_merges_two_threads() {
    let s = support::store();
    let a = s.account("alice").await;
    let deliver = |raw: String| {
        let mail = s.mail.clone();
        async move {
            mail.deliver(&[a], raw.as_bytes(), support::now()).await.expect("deliver")[0]
                .as_ref()
                .expect("ok")
                .to_owned()
        }
    };
    let x = deliver("Subject: plan A\r\nMessage-ID: <a@x>\r\n\r\n.\r\n".into()).await;
    let y = deliver("Subject: plan B\r\nMessage-ID: <b@x>\r\n\r\n.\r\n".into()).await;
    let tx = s.mail.email(a, x).expect("get").expect("x").thread;
    let ty = s.mail.email(a, y).expect("get").expect("y").thread;
    assert_ne!(tx, ty);
    let since = s.mail.state(a).expect("state");
    let z =
        deliver("Subject: both\r\nMessage-ID: <c@x>\r\nReferences: <a@x> <b@x>\r\n\r\n.\r\n".into()).await;
    let tz = s.mail.email(a, z).expect("get").expect("z").thread;
    assert_eq!(tz, tx.min(ty));
    assert_eq!(s.mail.email(a, y).expect("get").expect("y").thread, tz);
    assert_eq!(s.mail.thread(a, tz).expect("members").len(), 3);
    let gone = tx.max(ty);
    assert!(s.mail.thread(a, gone).expect("members").is_empty());
    let c = s.mail.changes(a, Kind::Thread, since, 100).expect("changes");
    assert_eq!(c.destroyed, vec![gone.0]);
    assert_eq!(c.updated, vec![tz.0]);
    // Subject fallback: a reply without references joins by subject.
    let r = deliver("Subject: Re: plan A\r\nMessage-ID: <d@x>\r\n\r\n.\r\n".into()).await;
    assert_eq!(s.mail.email(a, r).expect("get").expect("r").thread, tz);
    // But the same subject without a reply prefix or references starts its own.
    let n = deliver("Subject: plan A\r\nMessage-ID: <e@x>\r\n\r\n.\r\n".into()).await;
    assert_ne!(s.mail.email(a, n).expect("get").expect("n").thread, tz);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailboxes_nest_rename_and_delete_with_clear_errors() {
    let s = support::store();
    let a = s.account("alice").await;
    let b = s.account("bob").await;
    let (work, _) = s.mail.create_mailbox(a, "Work", None).await.expect("create");
    let (proj, _) = s.mail.create_mailbox(a, "Project", Some(work.id)).await.expect("nested");
    let dup = s.mail.create_mailbox(a, "work", None).await.expect_err("duplicate");
    assert!(matches!(dup, Error::AlreadyExists(_)));
    assert!(s.mail.create_mailbox(a, "Project", None).await.is_ok(), "same name under another parent");
    let cycle = s.mail.rename_mailbox(a, work.id, "Work", Some(proj.id)).await.expect_err("cycle");
    assert!(matches!(cycle, Error::InvalidArgument(_)));
    let (renamed, _) =
        s.mail.rename_mailbox(a, proj.id, "Projects 2026", None).await.expect("rename and move up");
    assert_eq!((renamed.name.as_str(), renamed.parent), ("Projects 2026", None));
    let bobs = s.mail.mailbox_by_role(b, Role::Inbox).expect("bob inbox");
    let foreign = s.mail.create_mailbox(a, "x", Some(bobs)).await.expect_err("foreign parent");
    assert!(matches!(foreign, Error::NotFound(_)));
    for bad in ["", "a/b", "tab\there"] {
        assert!(
            matches!(s.mail.create_mailbox(a, bad, None).await, Err(Error::InvalidArgument(_))),
            "{bad:?}"
        );
    }
    let inbox = s.mail.mailbox_by_role(a, Role::Inbox).expect("inbox");
    assert!(matches!(s.mail.delete_mailbox(a, inbox).await, Err(Error::InvalidArgument(_))), "role mailbox");
    let id = s.mail.deliver(&[a], b"Subject: x\r\n\r\n.\r\n", support::now()).await.expect("deliver")[0]
        .as_ref()
        .expect("ok")
        .to_owned();
    s.mail.move_emails(a, &[id], &[work.id], &[inbox], None).await.expect("move");
    assert!(matches!(s.mail.delete_mailbox(a, work.id).await, Err(Error::InvalidArgument(_))), "not empty");
    s.mail.move_emails(a, &[id], &[inbox], &[work.id], None).await.expect("move back");
    s.mail.delete_mailbox(a, work.id).await.expect("delete empty");
    assert!(s.mail.mailbox_records(a).expect("list").iter().all(|m| m.id != work.id));
    assert!(check::check(&s.db, false).expect("check").clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_refuses_with_a_typed_error_and_frees_on_expunge() {
    let s = support::store();
    let a = s.mail.create_account("small", support::hash(), 1000, 2, 0).await.expect("account").id;
    let ok = s.mail.deliver(&[a], &[b'x'; 400], support::now()).await.expect("deliver");
    assert!(ok[0].is_ok());
    // Delivered mail is taken while the mailbox is not full (the gateway's
    // RCPT test), so it passes the quota by one message at most: 1100 of
    // 1000 bytes, and then nothing more.
    let big = s.mail.deliver(&[a], &[b'y'; 700], support::now()).await.expect("deliver");
    assert!(big[0].is_ok(), "{big:?}");
    let full = s.mail.deliver(&[a], &[b'z'; 100], support::now()).await.expect("deliver");
    assert!(matches!(full[0], Err(Error::OverQuota(_))), "byte quota: {full:?}");
    let first = ok[0].as_ref().expect("ok").to_owned();
    s.mail.destroy(a, &[first], None).await.expect("to trash");
    s.mail.destroy(a, &[first], None).await.expect("expunge");
    assert_eq!(s.accounts.usage(a).expect("usage").messages, 1);
    s.mail.deliver(&[a], &[b'z'; 100], support::now()).await.expect("deliver")[0]
        .as_ref()
        .expect("fits again");
    let third = s.mail.deliver(&[a], b"Subject: 3\r\n\r\n", support::now()).await.expect("deliver");
    assert!(matches!(third[0], Err(Error::OverQuota(_))), "message quota: {third:?}");
    // Imports (the user's own mail) must fit.
    let b = s.mail.create_account("strict", support::hash(), 1000, 0, 0).await.expect("account").id;
    let inbox = s.mail.mailbox_by_role(b, Role::Inbox).expect("inbox");
    let item = |raw: &[u8]| quail_server::mail::ingest::ImportItem {
        prepared: quail_server::mail::ingest::prepare(raw).expect("prepare"),
        placement: quail_server::mail::ingest::Placement {
            mailboxes: vec![inbox],
            keywords: Vec::new(),
            received_ms: support::now(),
        },
    };
    let out = s.mail.import(b, &[item(&[b'x'; 400]), item(&[b'y'; 700])]).await.expect("import");
    assert!(out[0].is_ok() && matches!(out[1], Err(Error::OverQuota(_))), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_filters_sort_page_and_collapse() {
    let s = support::store();
    let a = s.account("alice").await;
    let inbox = s.mail.mailbox_by_role(a, Role::Inbox).expect("inbox");
    let mut ids = Vec::new();
    for i in 0..20i64 {
        let raw = format!(
            "From: {}\r\nTo: alice@example.org\r\nSubject: {}\r\nMessage-ID: <q{i}@x>\r\n{}\r\n.\r\n",
            if i % 2 == 0 { "even@example.org" } else { "odd@example.org" },
            if i < 10 { format!("topic {i}") } else { format!("Re: topic {}", i - 10) },
            if i >= 10 { format!("In-Reply-To: <q{}@x>\r\n", i - 10) } else { String::new() },
        );
        ids.push(
            s.mail.deliver(&[a], raw.as_bytes(), 1_000_000 + i * 1000).await.expect("deliver")[0]
                .as_ref()
                .expect("ok")
                .to_owned(),
        );
    }
    s.mail.set_keywords(a, &ids[..5], &["$seen".into()], &[], None).await.expect("seen");
    s.mail.set_keywords(a, &ids[3..8], &["$flagged".into()], &[], None).await.expect("flag");
    let q = |f: quail_server::mail::Filter| Query { filter: f, limit: 100, ..Query::default() };
    let all = s.mail.query(a, &q(Default::default())).expect("all");
    assert_eq!(all.ids, ids.iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(all.total, 20);
    let unread = s
        .mail
        .query(
            a,
            &q(quail_server::mail::Filter { unread: quail_server::mail::Tri::Yes, ..Default::default() }),
        )
        .expect("unread");
    assert_eq!(unread.total, 15);
    assert!(!unread.ids.contains(&ids[0]));
    let read = s
        .mail
        .query(
            a,
            &q(quail_server::mail::Filter { unread: quail_server::mail::Tri::No, ..Default::default() }),
        )
        .expect("read");
    assert_eq!(read.total, 5);
    let flagged_unread = s
        .mail
        .query(
            a,
            &q(quail_server::mail::Filter {
                unread: quail_server::mail::Tri::Yes,
                flagged: quail_server::mail::Tri::Yes,
                ..Default::default()
            }),
        )
        .expect("flagged unread");
    assert_eq!(flagged_unread.ids, vec![ids[7], ids[6], ids[5]]);
    let from = s
        .mail
        .query(
            a,
            &q(quail_server::mail::Filter { from: Some("EVEN@example.org".into()), ..Default::default() }),
        )
        .expect("from");
    assert_eq!(from.total, 10);
    let ranged = s
        .mail
        .query(
            a,
            &q(quail_server::mail::Filter {
                after: Some(1_005_000),
                before: Some(1_008_000),
                mailbox: Some(inbox),
                ..Default::default()
            }),
        )
        .expect("range");
    assert_eq!(ranged.ids, vec![ids[7], ids[6], ids[5]]);
    let collapsed =
        s.mail.query(a, &Query { collapse_threads: true, limit: 100, ..Query::default() }).expect("collapse");
    assert_eq!(collapsed.total, 10, "ten threads of two");
    let page = s
        .mail
        .query(a, &Query { start: Start::Position(5), limit: 3, newest_first: false, ..Query::default() })
        .expect("page");
    assert_eq!(page.ids, ids[5..8].to_vec());
    let anchored = s
        .mail
        .query(a, &Query { start: Start::Anchor(ids[10], -2), limit: 3, ..Query::default() })
        .expect("anchor");
    assert_eq!(anchored.ids, vec![ids[11 + 1], ids[11], ids[10]]);
    assert_eq!(anchored.position, 7);
    let bobs_box = MailboxId(999_999);
    assert!(matches!(
        s.mail.query(a, &q(quail_server::mail::Filter { mailbox: Some(bobs_box), ..Default::default() })),
        Err(Error::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_and_repairs_damage() {
    let s = support::store();
    let a = s.account("alice").await;
    for i in 0..5 {
        let raw = with_attachment("alice@example.org", i, &random(4000, b"small"));
        s.mail.deliver(&[a], &raw, support::now()).await.expect("deliver");
    }
    assert!(check::check(&s.db, false).expect("check").clean());
    // Damage: a counter, an index entry, a reference count.
    use quail_server::account::Counter;
    use quail_server::store::Space;
    let inbox = s.mail.mailbox_by_role(a, Role::Inbox).expect("inbox");
    let (_, t) =
        s.db.write(|txn| {
            txn.put(Space::Counters, Counter::MailboxUnread.key(a, inbox.0), 42i64.to_be_bytes());
            let k = txn.scan(
                Space::EmailIndex,
                &quail_server::store::KeyRange::all(),
                quail_server::store::Order::Ascending,
                1,
            )?[0]
                .0
                .clone();
            txn.delete(Space::EmailIndex, k);
            let r = txn.scan(
                Space::BlobRefs,
                &quail_server::store::KeyRange::all(),
                quail_server::store::Order::Ascending,
                1,
            )?[0]
                .0
                .clone();
            txn.put(Space::BlobRefs, r, [0u8, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1]);
            Ok::<_, Error>(())
        })
        .expect("damage");
    s.db.store().sync_blocking(t).expect("sync");
    let report = check::check(&s.db, false).expect("check");
    assert!(report.problems.len() >= 3, "{:?}", report.problems);
    assert!(!report.repaired);
    let fixed = check::check(&s.db, true).expect("repair");
    assert!(fixed.repaired);
    let again = check::check(&s.db, false).expect("check again");
    assert!(again.clean(), "{:?}", again.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_keywords_are_normalised_and_bad_ones_refuse_the_batch() {
    use quail_server::mail::ingest::{ImportItem, Placement, prepare};
    let s = support::store();
    let a = s.account("alice").await;
    let inbox = s.mail.mailbox_by_role(a, Role::Inbox).expect("inbox");
    let item = |keywords: &[&str]| ImportItem {
        prepared: prepare(b"Subject: k\r\n\r\n.\r\n").expect("prepare"),
        placement: Placement {
            mailboxes: vec![inbox],
            keywords: keywords.iter().map(|k| (*k).to_owned()).collect(),
            received_ms: support::now(),
        },
    };
    let ids = s.mail.import(a, &[item(&["$Seen", "Work", "work"])]).await.expect("import");
    let id = ids[0].as_ref().expect("imported").to_owned();
    assert_eq!(s.mail.email(a, id).expect("get").expect("email").keywords, vec!["$seen", "work"]);
    let before = s.mail.state(a).expect("state");
    let err = s.mail.import(a, &[item(&["fine"]), item(&["not fine"])]).await.expect_err("bad keyword");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(s.mail.state(a).expect("state"), before, "nothing of the batch was applied");
    assert_eq!(s.mail.email_ids(a).expect("ids").len(), 1);
}
