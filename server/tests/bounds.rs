//! Work per ingest is bounded: a message citing many threads merges at
//! most a few of them, and never a huge one, under the writer lock.

use std::sync::Arc;

use quail_server::mail::ingest::{ImportItem, Placement, prepare};
use quail_server::mail::thread::MAX_MERGES;
use quail_server::mail::{MailConfig, Mailstore, Role};
use quail_server::store::{Db, FjallStore};
use quail_server::sync::Kind;

fn message(id: &str, refs: &[String], subject: &str) -> Vec<u8> {
    let refs = if refs.is_empty() { String::new() } else { format!("References: {}\r\n", refs.join(" ")) };
    format!(
        "From: a@example.net\r\nSubject: {subject}\r\nMessage-ID: <{id}>\r\n{refs}\
         Date: Mon, 3 Feb 2025 10:00:00 +0000\r\n\r\nbody\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn one_message_citing_many_threads_merges_only_a_few() {
    let dir = tempfile::tempdir().expect("dir");
    let db = Db::new(Arc::new(FjallStore::open(dir.path()).expect("open")));
    let mail = Mailstore::new(db, MailConfig::default());
    let account = mail.create_account("alice", "x".into(), 0, 0, 0).await.expect("account").id;
    let inbox = mail.mailbox_by_role(account, Role::Inbox).expect("inbox");
    let place = Placement { mailboxes: vec![inbox], keywords: Vec::new(), received_ms: 1 };
    // Ten unrelated threads of three messages each.
    let mut roots = Vec::new();
    for t in 0..10 {
        let root = format!("root{t}@example.net");
        let mut items = vec![ImportItem {
            prepared: prepare(&message(&root, &[], &format!("topic {t}"))).expect("p"),
            placement: place.clone(),
        }];
        for r in 0..2 {
            let m = message(&format!("r{t}-{r}@example.net"), &[format!("<{root}>")], &format!("topic {t}"));
            items.push(ImportItem { prepared: prepare(&m).expect("p"), placement: place.clone() });
        }
        mail.import(account, &items).await.expect("import");
        roots.push(format!("<{root}>"));
    }
    let before = mail.state(account).expect("state");
    let hostile = message("hostile@example.net", &roots, "hostile");
    let item = ImportItem { prepared: prepare(&hostile).expect("p"), placement: place.clone() };
    let id = mail.import(account, &[item]).await.expect("import").remove(0).expect("stored");
    let changes = mail.changes(account, Kind::Email, before, 1000).expect("changes");
    // The new email, and the members of at most MAX_MERGES moved threads.
    assert!(changes.updated.len() <= MAX_MERGES * 3, "{} emails rewritten", changes.updated.len());
    let e = mail.email(account, id).expect("get").expect("email");
    let members = mail.thread(account, e.thread).expect("thread");
    assert_eq!(members.len(), 1 + 3 + MAX_MERGES * 3, "joined one thread and merged {MAX_MERGES} more");
}
