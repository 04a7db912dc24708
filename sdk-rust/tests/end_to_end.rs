//! Foundation acceptance, end to end: a real server on loopback QUIC, a real
//! store in a temp dir, the SDK as the client.

mod support;

use std::collections::HashSet;

use mail_parser::MessageParser;
use quail::{EmailId, Error, Query, Role};

const PASSWORD: &str = "alice-password";

/// (a) 20 real messages delivered through the Gateway come back through the
/// SDK newest first, with the right subject, from and date, byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_mail_comes_back_newest_first_and_byte_identical() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let client = support::connect(&server).await;
    support::admin(&client, &server).await.create_account("alice", PASSWORD, 0, 0).await.expect("create");
    let gateway = support::gateway(&client, &server).await;

    let messages = support::messages(20);
    let mut delivered = Vec::new();
    for m in &messages {
        let results = gateway.deliver(&support::to("alice@example.org"), m).await.expect("deliver");
        assert_eq!(results.len(), 1);
        delivered.push(results[0].outcome.clone().expect("delivered"));
    }

    let session = client.login("alice", PASSWORD).await.expect("login");
    let (mailboxes, _) = session.mailboxes().await.expect("mailboxes");
    let inbox = mailboxes.iter().find(|m| m.role == Role::Inbox).expect("inbox");
    assert_eq!((inbox.total, inbox.unread), (20, 20));

    // Paged: 7 + 7 + 6, newest first.
    let mut ids = Vec::new();
    for position in [0, 7, 14] {
        let page = session.query(&Query::mailbox(inbox.id).position(position).limit(7)).await.expect("query");
        assert_eq!(page.total, 20);
        assert_eq!(page.position, position);
        ids.extend(page.ids);
    }
    let newest_first: Vec<EmailId> = delivered.iter().rev().copied().collect();
    assert_eq!(ids, newest_first);

    let (emails, missing) = session.get(&ids, &[]).await.expect("get");
    assert!(missing.is_empty());
    let mut last_received = i64::MAX;
    for (email, raw) in emails.iter().zip(messages.iter().rev()) {
        assert!(email.received_at <= last_received, "newest first by received time");
        last_received = email.received_at;
        let parsed = MessageParser::default().parse(raw).expect("test oracle parses");
        assert_eq!(email.subject, parsed.subject().unwrap_or_default());
        let from = parsed.from().and_then(|a| a.first()).and_then(|a| a.address()).unwrap_or_default();
        assert_eq!(email.from.first().map(|a| a.email.as_str()).unwrap_or_default(), from);
        let date = parsed.date().filter(|d| d.is_valid()).map_or(0, |d| d.to_timestamp() * 1000);
        assert_eq!(email.sent_at, date);
        assert_eq!(email.size, raw.len() as u64);
        assert!(email.is_unread());
        assert_eq!(email.mailbox_ids, vec![inbox.id.0]);
        let back = session.raw(EmailId(email.id)).await.expect("raw");
        assert!(back == *raw, "raw bytes of email {} differ", email.id);
    }
    drop(session);
    server.shutdown().await;
}

/// Raw messages larger than the inline limit go in and come back whole on
/// bulk streams; small ranges stay inline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_larger_than_the_inline_limit_travels_on_bulk_streams() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = quail_server::Config::ephemeral(dir.path());
    config.limits.max_inline_bytes = 64 * 1024;
    let server = quail_server::Server::start(config).await.expect("start");
    let client = support::connect(&server).await;
    assert_eq!(client.server_info().limits.max_inline_bytes, 64 * 1024);
    support::admin(&client, &server).await.create_account("alice", PASSWORD, 0, 0).await.expect("create");
    let mut raw = b"Subject: big\r\n\r\n".to_vec();
    raw.extend((0..300_000u32).map(|i| b"abcdefghij\r\n"[(i % 12) as usize]));
    let gateway = support::gateway(&client, &server).await;
    let id = gateway.deliver(&support::to("alice"), &raw).await.expect("deliver")[0]
        .outcome
        .clone()
        .expect("delivered");
    let session = client.login("alice", PASSWORD).await.expect("login");
    let whole = session.raw_range(id, 0, 0).await.expect("whole, on a bulk stream");
    assert_eq!(whole.total_size, raw.len() as u64);
    assert!(whole.data == raw);
    let tail = session.raw_range(id, 1000, 0).await.expect("a long range");
    assert!(tail.data == raw[1000..] && tail.offset == 1000);
    let middle = session.raw_range(id, 100_000, 10).await.expect("range");
    assert_eq!(middle.data, raw[100_000..100_010]);
    assert_eq!(session.raw(id).await.expect("whole"), raw);
    let past = session.raw_range(id, raw.len() as u64 + 1, 0).await.expect_err("past the end");
    assert!(matches!(past, Error::InvalidInput(_)), "{past:?}");
    drop(session);
    server.shutdown().await;
}

/// (b) Wrong password and unknown user fail the same way; another account's
/// ids are not found, never data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_account_isolation() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let client = support::connect(&server).await;
    let admin = support::admin(&client, &server).await;
    admin.create_account("alice", PASSWORD, 0, 0).await.expect("alice");
    admin.create_account("bob", "bob-password", 0, 0).await.expect("bob");
    let dup = admin.create_account("Alice", PASSWORD, 0, 0).await.expect_err("duplicate");
    assert!(matches!(dup, Error::AlreadyExists(_)), "{dup:?}");
    let weak = admin.create_account("carol", "short", 0, 0).await.expect_err("weak password");
    assert!(matches!(weak, Error::InvalidInput(_)), "{weak:?}");
    let bad_name = admin.create_account("../etc", PASSWORD, 0, 0).await.expect_err("bad name");
    assert!(matches!(bad_name, Error::InvalidInput(_)), "{bad_name:?}");

    let wrong = client.login("alice", "not-her-password").await.expect_err("wrong password");
    let unknown = client.login("mallory", "whatever-password").await.expect_err("unknown user");
    assert_eq!(wrong, Error::BadCredentials);
    assert_eq!(unknown, wrong, "an unknown user must look exactly like a wrong password");
    assert!(client.admin("qadm_guess").await.is_err_and(|e| e == Error::BadCredentials));
    assert!(client.gateway("qgw_guess").await.is_err_and(|e| e == Error::BadCredentials));

    let gateway = support::gateway(&client, &server).await;
    let bobs =
        gateway.deliver(&support::to("bob@example.org"), &support::generated(1)).await.expect("deliver")[0]
            .outcome
            .clone()
            .expect("delivered");
    let nobody =
        gateway.deliver(&support::to("nobody@example.org"), &support::generated(2)).await.expect("deliver");
    assert!(matches!(nobody[0].outcome, Err(Error::NotFound(_))), "{nobody:?}");

    let alice = client.login("alice", PASSWORD).await.expect("login");
    let (found, missing) = alice.get(&[bobs], &[]).await.expect("get");
    assert!(found.is_empty());
    assert_eq!(missing, vec![bobs]);
    let raw = alice.raw(bobs).await.expect_err("raw of bob's email");
    assert!(matches!(raw, Error::NotFound(_)), "{raw:?}");
    assert_eq!(alice.query(&Query::all()).await.expect("query").total, 0);
    let bob = client.login("BOB", "bob-password").await.expect("names are case-insensitive");
    assert_eq!(bob.query(&Query::all()).await.expect("query").ids, vec![bobs]);
    let foreign_box = bob.mailboxes().await.expect("boxes").0[0].id;
    let err = alice.query(&Query::mailbox(foreign_box)).await.expect_err("bob's mailbox");
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    drop((alice, bob, admin, gateway));
    server.shutdown().await;
}

/// (c) A restart on the same data dir keeps every message and the
/// development certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_mail_and_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let messages = support::messages(20);
    let (fingerprint, ids) = {
        let server = support::start(dir.path()).await;
        let client = support::connect(&server).await;
        support::admin(&client, &server).await.create_account("alice", PASSWORD, 0, 0).await.expect("create");
        let gateway = support::gateway(&client, &server).await;
        let mut ids = Vec::new();
        for m in &messages {
            ids.push(
                gateway.deliver(&support::to("alice"), m).await.expect("deliver")[0]
                    .outcome
                    .clone()
                    .expect("ok"),
            );
        }
        let fp = server.fingerprint().to_owned();
        drop((gateway, client));
        server.shutdown().await;
        (fp, ids)
    };
    let server = support::start(dir.path()).await;
    assert_eq!(server.fingerprint(), fingerprint, "the development certificate survives a restart");
    let client = support::connect(&server).await;
    let session = client.login("alice", PASSWORD).await.expect("login after restart");
    let page = session.query(&Query::all().oldest_first()).await.expect("query");
    assert_eq!(page.ids, ids);
    for (id, raw) in ids.iter().zip(&messages) {
        assert!(session.raw(*id).await.expect("raw") == *raw);
    }
    drop(session);
    server.shutdown().await;
}

/// (e) `deliver` answers only once its commit is durable, and concurrent
/// delivers share fsyncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_is_durable_and_group_committed() {
    let dir = tempfile::tempdir().expect("dir");
    // No background merging of the search index: its commits would race
    // the counts below.
    let mut config = quail_server::Config::ephemeral(dir.path());
    config.mail.search_merge_ms = 0;
    let server = quail_server::Server::start(config).await.expect("server starts");
    let client = support::connect(&server).await;
    support::admin(&client, &server).await.create_account("alice", PASSWORD, 0, 0).await.expect("create");
    let gateway = std::sync::Arc::new(support::gateway(&client, &server).await);

    // One at a time: when deliver returns, every commit so far is durable.
    for i in 0..5 {
        gateway.deliver(&support::to("alice"), &support::generated(i)).await.expect("deliver");
        let m = server.store_metrics();
        assert!(m.durable >= m.commits, "deliver returned before its commit was durable: {m:?}");
    }

    let before = server.store_metrics();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let gateway = std::sync::Arc::clone(&gateway);
        tasks.push(tokio::spawn(async move {
            gateway.deliver(&support::to("alice"), &support::generated(100 + i)).await
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        let r = t.await.expect("task").expect("deliver");
        ids.insert(r[0].outcome.clone().expect("delivered"));
    }
    let after = server.store_metrics();
    assert_eq!(ids.len(), 50);
    assert!(after.durable >= after.commits);
    let fsyncs = after.fsyncs - before.fsyncs;
    println!("50 concurrent delivers: {} commits, {fsyncs} fsyncs", after.commits - before.commits);
    assert!((1..50).contains(&fsyncs), "expected shared fsyncs, got {fsyncs} for 50 delivers");
    drop((gateway, client));
    server.shutdown().await;
}
