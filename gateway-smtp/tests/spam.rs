//! Anti-spam at SMTP time, with Python's smtplib against quail-smtpd and a
//! real Quail server: a client listed by a DNS blocklist (served on
//! loopback) gets its mail filed in Junk with the list named in the
//! reasons (a zone that fails to answer lists no one), an unlisted one in
//! the Inbox; the GTUBE test string is refused with 550 5.7.1 and nothing
//! is stored.

mod support;

use std::process::Command;

use quail::{EmailId, Property, Query, Role, Session, Verdict};
use quail_server::Config;
use support::World;

async fn world(dnsbl: &[&str]) -> World {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config::ephemeral(dir.path());
    config.filter.trusted_authserv_id = Some("mx.test".into());
    support::mx_world_dnsbl(dir, config, 20, 600, dnsbl.iter().map(|z| (*z).to_owned()).collect()).await
}

/// Sends a mail with `subject` and `body` from the source address `from_ip`
/// and prints the final reply.
fn send(port: u16, from_ip: &str, subject: &str, body: &str) -> String {
    let script = format!(
        "import smtplib\n\
         msg = ('From: Carol <carol@nowhere.test>\\r\\nTo: alice@example.org\\r\\n'\n\
                'Subject: {subject}\\r\\nMessage-ID: <{subject}@nowhere.test>\\r\\n\\r\\n{body}\\r\\n')\n\
         s = smtplib.SMTP('127.0.0.1', {port}, local_hostname='client.test', source_address=('{from_ip}', 0))\n\
         try:\n    s.sendmail('carol@nowhere.test', ['alice@example.org'], msg)\n    print(250)\n\
         except smtplib.SMTPDataError as e:\n    print(e.smtp_code, e.smtp_error.decode())\n"
    );
    let out = tokio::task::block_in_place(|| {
        Command::new("python3").arg("-c").arg(&script).output().expect("python3")
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn by_subject(session: &Session, subject: &str) -> EmailId {
    let page = session.query(&Query::all()).await.expect("query");
    for id in page.ids {
        let raw = session.raw(id).await.expect("raw");
        if String::from_utf8_lossy(&raw).contains(&format!("Subject: {subject}\r\n")) {
            return id;
        }
    }
    panic!("no mail with the subject {subject}");
}

async fn role_of(session: &Session, id: EmailId) -> (Role, quail::FilterVerdict) {
    let (boxes, _) = session.mailboxes().await.expect("mailboxes");
    let (mut e, _) = session.get(&[id], &[Property::Mailboxes, Property::Filter]).await.expect("get");
    let e = e.pop().expect("email");
    let mailbox = *e.mailbox_ids.first().expect("a mailbox");
    let role = boxes.iter().find(|m| m.id.0 == mailbox).expect("mailbox").role;
    (role, e.filter.expect("a verdict"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_a_blocklist_is_filed_in_junk_with_the_list_named() {
    // The first zone is not served by the DNS: it fails, lists no one, and
    // the next one is asked.
    let w = world(&["unserved.example", "bl.test"]).await;
    let port = w.smtp.addr().port();
    assert_eq!(send(port, "127.0.0.2", "listed", "the quarterly figures"), "250");
    assert_eq!(send(port, "127.0.0.3", "unlisted", "the quarterly figures"), "250");

    let listed = by_subject(&w.session, "listed").await;
    let raw = String::from_utf8_lossy(&w.session.raw(listed).await.expect("raw")).into_owned();
    let header = raw.split("\r\nReceived:").next().expect("header");
    assert!(header.contains("dnsbl=listed policy.zone=bl.test"), "{header}");
    let (role, verdict) = role_of(&w.session, listed).await;
    assert_eq!(role, Role::Junk, "{verdict:?}");
    assert_eq!(verdict.spam, Verdict::Spam);
    assert!(
        verdict.reasons.iter().any(|r| r.starts_with("DNSBL: the sending host is listed by bl.test")),
        "{verdict:?}"
    );

    let unlisted = by_subject(&w.session, "unlisted").await;
    let raw = String::from_utf8_lossy(&w.session.raw(unlisted).await.expect("raw")).into_owned();
    assert!(!raw.contains("dnsbl="), "{raw}");
    let (role, verdict) = role_of(&w.session, unlisted).await;
    assert_eq!(role, Role::Inbox, "{verdict:?}");
    assert_eq!(verdict.spam, Verdict::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_blocklists_a_listed_client_is_not_looked_up() {
    let w = world(&[]).await;
    assert_eq!(send(w.smtp.addr().port(), "127.0.0.2", "listed", "the quarterly figures"), "250");
    let id = by_subject(&w.session, "listed").await;
    let raw = String::from_utf8_lossy(&w.session.raw(id).await.expect("raw")).into_owned();
    assert!(!raw.contains("dnsbl="), "{raw}");
    assert_eq!(role_of(&w.session, id).await.0, Role::Inbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gtube_string_is_refused_with_550_and_nothing_is_stored() {
    let w = world(&[]).await;
    let gtube = quail_server::filter::spam::tokens::GTUBE;
    let reply = send(w.smtp.addr().port(), "127.0.0.1", "gtube", gtube);
    assert!(reply.starts_with("550 5.7.1"), "{reply}");
    assert!(reply.contains("GTUBE"), "{reply}");
    assert!(w.session.query(&Query::all()).await.expect("query").ids.is_empty());
}
