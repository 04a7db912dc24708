//! The gateway's guarantees for an SMTP session: recipients are checked
//! while the session runs, and a delivery retried with its idempotency key
//! (its answer was lost) is stored once.

mod support;

use quail::{EmailId, Error, Query};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_are_checked_and_a_retried_delivery_is_stored_once() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let client = support::connect(&server).await;
    let admin = support::admin(&client, &server).await;
    admin.create_account("alice", "alice-password", 0, 0).await.expect("create");
    admin.create_account("full", "full-password", 0, 1).await.expect("create");
    let gateway = support::gateway(&client, &server).await;

    gateway.check_recipient("alice@example.org").await.expect("alice exists");
    gateway.check_recipient("Alice+tag@example.org").await.expect("subaddress");
    assert!(matches!(gateway.check_recipient("nobody@example.org").await, Err(Error::NotFound(_))));
    gateway.check_recipient("full@example.org").await.expect("room for one");
    gateway.deliver(&support::to("full@example.org"), &support::generated(0)).await.expect("deliver");
    assert!(matches!(gateway.check_recipient("full@example.org").await, Err(Error::OverQuota(_))));

    // The same spool id twice (the first answer was lost): one email.
    let env = quail::Envelope {
        mail_from: "bob@example.net".into(),
        rcpt_to: vec!["alice@example.org".into(), "full@example.org".into()],
        ..Default::default()
    };
    let raw = support::generated(1);
    let first = gateway.deliver_once(&env, &raw, Some(b"spool-0001")).await.expect("deliver");
    let again = gateway.deliver_once(&env, &raw, Some(b"spool-0001")).await.expect("retry");
    let id: EmailId = first[0].outcome.clone().expect("delivered to alice");
    assert_eq!(again[0].outcome.clone().expect("same answer"), id);
    assert!(matches!(first[1].outcome, Err(Error::OverQuota(_))));
    assert!(matches!(again[1].outcome, Err(Error::OverQuota(_))), "the refusal is remembered too");
    let session = client.login("alice", "alice-password").await.expect("login");
    assert_eq!(session.query(&Query::all()).await.expect("query").total, 1, "stored once");
    // Another key is another message.
    gateway.deliver_once(&env, &raw, Some(b"spool-0002")).await.expect("deliver");
    assert_eq!(session.query(&Query::all()).await.expect("query").total, 2);
    // Keys are bounded.
    assert!(matches!(gateway.deliver_once(&env, &raw, Some(&[7u8; 200])).await, Err(Error::InvalidInput(_))));
}

/// A remote server's reply may run to kilobytes of policy text: the
/// report of an attempt is taken whatever its replies' length (each kept
/// cut), never refused whole, which would leave every recipient to be
/// sent to again when the lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_with_a_long_remote_reply_is_taken() {
    use quail::{OutcomeKind, RecipientOutcome};
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let client = support::connect(&server).await;
    let admin = support::admin(&client, &server).await;
    admin.create_account("alice", "alice-password", 0, 0).await.expect("create");
    let alice = client.login("alice", "alice-password").await.expect("login");
    let env = quail::Envelope {
        mail_from: String::new(),
        rcpt_to: vec!["erin@far.example".into(), "fred@other.example".into()],
        ..Default::default()
    };
    let raw = b"From: alice@localhost\r\nTo: erin@far.example\r\nSubject: hi\r\n\r\nhello\r\n";
    alice.submit(raw, &env, None).await.expect("submit");
    let gateway = support::gateway(&client, &server).await;
    let item = gateway.lease_outbound(10, 300).await.expect("lease").pop().expect("an item");
    let policy = format!("550-5.7.1 {}\r\n550 5.7.1 refused", "our policy says no, ünïcode; ".repeat(200));
    let outcomes = [
        RecipientOutcome {
            recipient: "erin@far.example".into(),
            kind: OutcomeKind::Delivered,
            reply: "250 ok".into(),
        },
        RecipientOutcome {
            recipient: "fred@other.example".into(),
            kind: OutcomeKind::PermFail,
            reply: policy,
        },
    ];
    gateway.complete_outbound(item.id, item.attempt, &outcomes).await.expect("the report is taken");
    let sub = alice.submissions(&[item.id]).await.expect("submission").pop().expect("it");
    assert!(sub.recipients.iter().all(|r| r.status != quail::SubmissionStatus::Queued), "{sub:?}");
    let fred = sub.recipients.iter().find(|r| r.recipient == "fred@other.example").expect("fred");
    assert!(
        fred.reply.starts_with("550-5.7.1 our policy") && fred.reply.len() <= 1024,
        "{}",
        fred.reply.len()
    );
    // Nothing is left to lease: erin is not sent to again.
    assert!(gateway.lease_outbound(10, 300).await.expect("lease").is_empty());
}

/// One lease answer fits in one RPC message, however many large messages
/// are due: what does not fit waits for the next lease. (Five messages of
/// 3.5 MiB, each small enough to go inline, made an answer past the 16 MiB
/// of a message: the gateway's connection died and the same batch was
/// leased again and again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_answer_fits_in_one_message() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let client = support::connect(&server).await;
    let admin = support::admin(&client, &server).await;
    admin.create_account("alice", "alice-password", 0, 0).await.expect("create");
    let alice = client.login("alice", "alice-password").await.expect("login");
    let env = quail::Envelope { rcpt_to: vec!["erin@far.example".into()], ..Default::default() };
    let filler = "0123456789abcdef".repeat(64).repeat(3584) + "\r\n";
    for i in 0..5 {
        let raw = format!("From: alice@localhost\r\nSubject: big {i}\r\n\r\n{filler}");
        alice.submit(raw.as_bytes(), &env, None).await.expect("submit");
    }
    let gateway = support::gateway(&client, &server).await;
    let mut leased = 0;
    for _ in 0..5 {
        let items = gateway.lease_outbound(32, 300).await.expect("a lease answer that fits");
        let bytes: usize = items.iter().map(|i| i.raw.len()).sum();
        assert!(items.len() == 1 || bytes <= 8 << 20, "{} items, {bytes} bytes", items.len());
        leased += items.len();
        if leased == 5 {
            break;
        }
    }
    assert_eq!(leased, 5, "every message is handed out in turn");
}
