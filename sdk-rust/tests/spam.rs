//! Spam filtering end to end, over real QUIC against a real server: a
//! global model trained on real mail, per-account training by reports and
//! by moves into Junk, verdicts and reasons on `get`, and spam refused at
//! the reject score.

mod support;

use std::path::{Path, PathBuf};

use quail::{EmailId, Envelope, Error, MailboxId, Property, Role, Session, Verdict};
use quail_server::filter::spam;
use quail_server::store::Db;

fn corpus(set: &str, skip: usize, n: usize) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpora/spamassassin-public-corpus")
        .join(set);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        assert!(std::env::var_os("CI").is_none(), "{} is absent, and CI is set", dir.display());
        eprintln!("NOTE: {} is absent; the global model stays untrained", dir.display());
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    paths.into_iter().skip(skip).take(n).map(|p| std::fs::read(p).expect("read")).collect()
}

/// One of a kind of mail the global model takes for ham: a build report
/// from a project's list, in the words of the technical mail the model was
/// trained on, varied per `i`. Alice never subscribed: to her it is spam.
fn lure(i: usize) -> Vec<u8> {
    let (build, passed) = (3100 + i, 400 + i * 7);
    format!(
        "From: Zorblax Builds <builds@zorblax.example>\r\n\
         To: you@example.org\r\nSubject: [zorblax-dev] nightly build {build} of zorblax\r\n\
         Date: Mon, 3 Feb 2025 10:00:00 +0000\r\nMessage-ID: <build{i}@zorblax.example>\r\n\r\n\
         The nightly build {build} of zorblax finished on linux and freebsd.\r\n\
         Tests: {passed} passed, 0 failed. The rpm and deb packages are in the usual place.\r\n\
         Changes since the last build: the config parser handles the new options, and the \
         kernel module compiles against the current tree again.\r\n\r\n\
         -- the zorblax build robot\r\n"
    )
    .into_bytes()
}

fn model(db: &Db, account: u64) -> spam::bayes::Pair {
    spam::bayes::totals(&db.snapshot(), account).expect("totals")
}

async fn mailbox(session: &Session, role: Role) -> MailboxId {
    let (boxes, _) = session.mailboxes().await.expect("mailboxes");
    boxes.iter().find(|m| m.role == role).expect("role").id
}

async fn placed(session: &Session, id: EmailId) -> (Vec<u64>, quail::FilterVerdict) {
    let (mut e, _) = session.get(&[id], &[Property::Mailboxes, Property::Filter]).await.expect("get");
    let e = e.pop().expect("email");
    (e.mailbox_ids, e.filter.expect("a verdict"))
}

fn delivered(r: &[quail::DeliveryResult]) -> Vec<EmailId> {
    r.iter().map(|d| d.outcome.clone().expect("delivered")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reports_send_the_next_of_a_kind_to_that_users_junk_only() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let db = server.services().mail.db().clone();
    // The global model, from real mail, as `quaild train` builds it.
    let ham = corpus("easy_ham", 0, 400);
    let spam_mail = corpus("spam", 0, 200);
    spam::train_global(&db, &mut ham.into_iter(), false, &mut |_| {}).expect("train ham");
    spam::train_global(&db, &mut spam_mail.into_iter(), true, &mut |_| {}).expect("train spam");

    let client = support::connect(&server).await;
    let admin = support::admin(&client, &server).await;
    let alice_id = admin.create_account("alice", "alice-password", 0, 0).await.expect("alice").id;
    admin.create_account("bob", "bob-password", 0, 0).await.expect("bob");
    let gateway = support::gateway(&client, &server).await;
    let alice = client.login("alice", "alice-password").await.expect("login");
    let bob = client.login("bob", "bob-password").await.expect("login");
    let (a_inbox, a_junk) = (mailbox(&alice, Role::Inbox).await, mailbox(&alice, Role::Junk).await);
    let (b_inbox, b_junk) = (mailbox(&bob, Role::Inbox).await, mailbox(&bob, Role::Junk).await);
    let both = Envelope {
        mail_from: "builds@zorblax.example".into(),
        rcpt_to: vec!["alice".into(), "bob".into()],
        ..Default::default()
    };

    // Before any report the kind reaches both Inboxes, scored.
    let first = delivered(&gateway.deliver(&both, &lure(0)).await.expect("deliver"));
    let (boxes, verdict) = placed(&alice, first[0]).await;
    assert_eq!(boxes, [a_inbox.0], "unreported, the lure is not junk: {verdict:?}");
    assert_eq!(verdict.spam, Verdict::Clean);
    assert_eq!(verdict.virus, Verdict::Clean, "the built-in scanner passed it");
    assert!(verdict.reasons.iter().any(|r| r.starts_with("BAYES")), "{:?}", verdict.reasons);
    assert_eq!(placed(&bob, first[1]).await.0, [b_inbox.0]);

    // Alice reports twenty of the kind.
    let mut reported = Vec::new();
    for i in 1..=20 {
        reported.extend(delivered(&gateway.deliver(&support::to("alice"), &lure(i)).await.expect("deliver")));
    }
    let before = model(&db, alice_id);
    let r = alice.report_spam(&reported, true).await.expect("report");
    assert_eq!((r.updated.len(), r.not_updated.len()), (20, 0));
    assert_eq!(model(&db, alice_id).spam, before.spam + 20, "each report trains once");
    for id in &reported[..3] {
        let (boxes, verdict) = placed(&alice, *id).await;
        assert_eq!(boxes, [a_junk.0], "a reported email moves to Junk");
        assert_eq!(verdict.spam, Verdict::Spam);
        assert!(verdict.reasons[0].starts_with("REPORTED"), "{:?}", verdict.reasons);
    }
    // Reporting again does not train again.
    alice.report_spam(&reported[..5], true).await.expect("report again");
    assert_eq!(model(&db, alice_id).spam, before.spam + 20);

    // The next of the kind: Alice's Junk, Bob's Inbox, from one delivery.
    let next = delivered(&gateway.deliver(&both, &lure(21)).await.expect("deliver"));
    let (boxes, verdict) = placed(&alice, next[0]).await;
    assert_eq!(boxes, [a_junk.0], "after twenty reports the kind is junk for alice: {verdict:?}");
    assert_eq!(verdict.spam, Verdict::Spam);
    let bayes = verdict.reasons.iter().find(|r| r.starts_with("BAYES")).expect("the classifier is named");
    assert!(bayes.contains("zorblax"), "the clues name the kind's words: {bayes}");
    let (boxes, verdict) = placed(&bob, next[1]).await;
    assert_eq!(boxes, [b_inbox.0], "bob reported nothing: {verdict:?}");
    assert_ne!(boxes, [b_junk.0]);

    // Alice's ordinary mail still reaches her Inbox.
    for raw in corpus("easy_ham", 2000, 10) {
        let id = delivered(&gateway.deliver(&support::to("alice"), &raw).await.expect("deliver"))[0];
        let (boxes, verdict) = placed(&alice, id).await;
        assert_eq!(boxes, [a_inbox.0], "ham stays ham for alice: {verdict:?}");
    }

    // "Not spam" moves it back and moves the training over.
    alice.report_spam(&next[..1], false).await.expect("not spam");
    let (boxes, verdict) = placed(&alice, next[0]).await;
    assert_eq!(boxes, [a_inbox.0]);
    assert_eq!(verdict.spam, Verdict::Clean);
    let after = model(&db, alice_id);
    assert_eq!((after.spam, after.ham), (before.spam + 20, before.ham + 1));
    alice.report_spam(&next[..1], true).await.expect("spam after all");
    let after = model(&db, alice_id);
    assert_eq!((after.spam, after.ham), (before.spam + 21, before.ham), "untrained as ham, trained as spam");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_into_and_out_of_junk_train_the_accounts_model() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let db = server.services().mail.db().clone();
    let client = support::connect(&server).await;
    let admin = support::admin(&client, &server).await;
    let id = admin.create_account("alice", "alice-password", 0, 0).await.expect("alice").id;
    let gateway = support::gateway(&client, &server).await;
    let alice = client.login("alice", "alice-password").await.expect("login");
    let (inbox, junk) = (mailbox(&alice, Role::Inbox).await, mailbox(&alice, Role::Junk).await);
    let trash = mailbox(&alice, Role::Trash).await;
    let ids: Vec<EmailId> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.extend(delivered(&gateway.deliver(&support::to("alice"), &lure(i)).await.expect("deliver")));
        }
        v
    };
    assert_eq!(model(&db, id), spam::bayes::Pair::default());
    alice.move_emails(&ids, &[junk], &[inbox], None).await.expect("to junk");
    assert_eq!(model(&db, id), spam::bayes::Pair { spam: 3, ham: 0 });
    // Out of Junk to the Inbox: ham now.
    alice.move_emails(&ids[..1], &[inbox], &[junk], None).await.expect("back");
    assert_eq!(model(&db, id), spam::bayes::Pair { spam: 2, ham: 1 });
    // Out of Junk into Trash is no judgement.
    alice.move_emails(&ids[1..2], &[trash], &[junk], None).await.expect("trash");
    assert_eq!(model(&db, id), spam::bayes::Pair { spam: 2, ham: 1 });
    // A move that does not touch Junk trains nothing.
    let other = alice.create_mailbox("Receipts", None).await.expect("mailbox").0.id;
    alice.move_emails(&ids[..1], &[other], &[], None).await.expect("label");
    assert_eq!(model(&db, id), spam::bayes::Pair { spam: 2, ham: 1 });
    // Another account's ids are not found, and train nothing.
    admin.create_account("bob", "bob-password", 0, 0).await.expect("bob");
    let bob = client.login("bob", "bob-password").await.expect("login");
    let r = bob.report_spam(&ids, true).await.expect("report");
    assert_eq!((r.updated.len(), r.not_updated.len()), (0, 3));
    assert!(r.not_updated.iter().all(|(_, e)| matches!(e, Error::NotFound(_))), "{:?}", r.not_updated);
    assert_eq!(model(&db, id), spam::bayes::Pair { spam: 2, ham: 1 });
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gtube_string_is_refused_and_not_stored() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let client = support::connect(&server).await;
    let admin = support::admin(&client, &server).await;
    admin.create_account("alice", "alice-password", 0, 0).await.expect("alice");
    let gateway = support::gateway(&client, &server).await;
    let raw = format!(
        "From: a@example.net\r\nTo: alice@example.org\r\nSubject: test\r\n\r\n{}\r\n",
        spam::tokens::GTUBE
    );
    match gateway.deliver(&support::to("alice"), raw.as_bytes()).await {
        Err(Error::Rejected(why)) => assert!(why.contains("GTUBE"), "{why}"),
        other => panic!("GTUBE delivered: {other:?}"),
    }
    let alice = client.login("alice", "alice-password").await.expect("login");
    let page = alice.query(&quail::Query::all()).await.expect("query");
    assert_eq!(page.total, 0, "nothing stored");
    server.shutdown().await;
}
