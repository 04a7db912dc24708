//! Live queries and queryChanges against an oracle: after every random
//! change (deliveries, read/unread, moves, deletes), the watched window
//! "unread in Inbox, newest 5" rebuilt from the pushed changes, and the
//! whole result rebuilt from queryChanges, equal a fresh query.

mod support;

use std::time::Duration;

use futures::StreamExt;
use quail::{EmailId, Error, MailboxId, Query, Role};

const PASSWORD: &str = "alice-password";

/// A server in a temporary dir with the account alice; the gateway
/// (deliveries) and alice's session.
async fn alice() -> (tempfile::TempDir, quail_server::Running, quail::Gateway, quail::Session) {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let client = support::connect(&server).await;
    support::admin(&client, &server).await.create_account("alice", PASSWORD, 0, 0).await.expect("create");
    let gateway = support::gateway(&client, &server).await;
    let session = client.login("alice", PASSWORD).await.expect("login");
    (dir, server, gateway, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_and_pulled_query_changes_rebuild_the_results_exactly() {
    let (_dir, _server, gateway, session) = alice().await;
    let (boxes, _) = session.mailboxes().await.expect("mailboxes");
    let role = |r: Role| boxes.iter().find(|m| m.role == r).expect("role").id;
    let (inbox, archive) = (role(Role::Inbox), role(Role::Archive));

    let window = Query::mailbox(inbox).unread().limit(5);
    let whole = Query::mailbox(inbox).unread().limit(500);
    let mut watch = session.watch_query(&window).await.expect("watch");
    let mut local = watch.initial.ids.clone();
    let first = session.query(&whole).await.expect("query");
    let (mut pulled, mut pulled_state) = (first.ids, first.state);

    let mut ids: Vec<EmailId> = Vec::new();
    let mut x = 0x2545_f491u32;
    let mut rand = |n: usize| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as usize % n.max(1)
    };
    let mut pushes = 0;
    for step in 0..60 {
        let op = if ids.len() < 3 { 0 } else { rand(6) };
        match op {
            0 | 1 => {
                let r = gateway
                    .deliver(&support::to("alice@example.org"), &support::generated(step))
                    .await
                    .expect("deliver");
                ids.push(r[0].outcome.clone().expect("delivered"));
            }
            2 => {
                let id = ids[rand(ids.len())];
                session.set_keywords(&[id], &["$seen"], &[], None).await.expect("seen");
            }
            3 => {
                let id = ids[rand(ids.len())];
                session.set_keywords(&[id], &[], &["$seen"], None).await.expect("unseen");
            }
            4 => {
                let id = ids[rand(ids.len())];
                let (to, from): (MailboxId, MailboxId) =
                    if rand(2) == 0 { (archive, inbox) } else { (inbox, archive) };
                session.move_emails(&[id], &[to], &[from], None).await.expect("move");
            }
            _ => {
                let id = ids.remove(rand(ids.len()));
                session.destroy(&[id], None).await.expect("destroy");
            }
        }
        // Pushed: the window rebuilt from its changes catches up with a fresh query.
        let fresh = session.query(&window).await.expect("query");
        while local != fresh.ids {
            let c = tokio::time::timeout(Duration::from_secs(20), watch.next())
                .await
                .unwrap_or_else(|_| panic!("step {step}: no push; window {local:?}, fresh {:?}", fresh.ids))
                .expect("the watch is alive");
            c.apply(&mut local, 5);
            pushes += 1;
        }
        // Pulled, every few steps: the whole result from queryChanges.
        if step % 4 == 3 {
            let c = session.query_changes(&whole, pulled_state, 0).await.expect("queryChanges");
            c.apply(&mut pulled, 0);
            let fresh = session.query(&whole).await.expect("query");
            assert_eq!(pulled, fresh.ids, "step {step}: queryChanges {c:?}");
            assert_eq!(c.total, fresh.total);
            pulled_state = c.new_state;
        }
    }
    assert!(pushes > 10, "only {pushes} pushes");
    // Late pushes still apply cleanly.
    while let Ok(Some(c)) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
        c.apply(&mut local, 5);
    }
    assert_eq!(local, session.query(&window).await.expect("query").ids);

    // A state the log no longer reaches, or a collapsed query: query again.
    assert!(matches!(
        session.query_changes(&whole.clone().collapse_threads(), pulled_state, 0).await,
        Err(Error::CannotCalculateChanges(_))
    ));
    // A restricted view watches only inside its scope.
    let view = session.restrict(&[archive], true, None).await.expect("restrict");
    assert!(matches!(view.watch_query(&Query::mailbox(inbox)).await, Err(Error::Forbidden(_))));
    view.watch_query(&Query::mailbox(archive)).await.expect("its own mailbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_search_hears_of_matching_mail_only_and_follows_deletes() {
    let (_dir, _server, gateway, session) = alice().await;
    let mail = |subject: &str, body: &str| {
        format!(
            "From: Bob <bob@example.net>\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\r\n{body}\r\n"
        )
        .into_bytes()
    };
    let deliver = |raw: Vec<u8>| {
        let gateway = &gateway;
        async move {
            let r = gateway.deliver(&support::to("alice@example.org"), &raw).await.expect("deliver");
            r[0].outcome.clone().expect("delivered")
        }
    };
    let first = deliver(mail("the invoice for march", "numbers")).await;
    deliver(mail("lunch", "on friday")).await;

    let search = Query::all().matching("invoice -paid in:inbox").limit(10);
    let mut watch = session.watch_query(&search).await.expect("watch a search");
    assert_eq!(watch.initial.ids, [first]);
    let mut local = watch.initial.ids.clone();

    // A matching delivery is pushed; one that does not match is not.
    deliver(mail("dinner", "no invoices here, only dinner")).await;
    let second = deliver(mail("april", "the invoice for april")).await;
    let c =
        tokio::time::timeout(Duration::from_secs(20), watch.next()).await.expect("a push").expect("alive");
    c.apply(&mut local, 10);
    assert_eq!(local, [second, first], "{c:?}");
    // Negation follows the text: a paid invoice never enters.
    deliver(mail("paid", "the invoice is paid")).await;
    session.destroy(&[first], None).await.expect("destroy");
    while local != [second] {
        let c = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .expect("a push")
            .expect("alive");
        c.apply(&mut local, 10);
    }
    assert_eq!(session.query(&search).await.expect("query").ids, [second]);
    assert_eq!(session.query(&search).await.expect("query").total, 1);

    // A malformed search is refused when the watch starts, naming why.
    match session.watch_query(&Query::all().matching("(invoice")).await {
        Err(Error::InvalidInput(why)) => assert!(why.contains("query text"), "{why}"),
        other => panic!("expected InvalidInput, got {:?}", other.map(|w| w.initial.clone())),
    }
    // One over the announced maxSearchQueryBytes is refused as such.
    let huge = "a ".repeat(10_000);
    match session.watch_query(&Query::all().matching(&huge)).await {
        Err(Error::LimitExceeded(why)) => assert!(why.contains("query text"), "{why}"),
        other => panic!("expected LimitExceeded, got {:?}", other.map(|w| w.initial.clone())),
    }
}
