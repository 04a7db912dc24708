//! Power loss: a client that looked at the server while a commit was
//! applied but not yet durable must not be misled after the machine comes
//! back without that commit — no state it saw silently answers "no
//! changes", no id it saw comes back with other content.
//!
//! The server runs on a `MemStore`, whose "fsync" copies the live data to a
//! durable image and can be held back; `power_loss()` boots a store from
//! that image only, as a machine does after losing its page cache.

mod support;

use std::sync::Arc;
use std::time::Duration;

use quail::{EmailId, Error, ObjectKind, Query, Role, State};
use quail_server::store::{MemStore, SyncGate};
use quail_server::{Config, Server};

const PASSWORD: &str = "alice-password";

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: Bob <bob@example.net>\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.net>\r\n\r\nBody of {subject}.\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_client_saw_before_a_power_loss_never_misleads_it_after() {
    let dir = tempfile::tempdir().expect("dir");
    let config = Config::ephemeral(dir.path());
    let store = Arc::new(MemStore::new(SyncGate::new()).expect("store"));
    let server = Server::start_on(config.clone(), store.clone()).await.expect("start");
    let client = support::connect(&server).await;
    support::admin(&client, &server).await.create_account("alice", PASSWORD, 0, 0).await.expect("create");
    let gateway = support::gateway(&client, &server).await;
    gateway.deliver(&support::to("alice@example.org"), &message("first")).await.expect("deliver");

    let reader = support::connect(&server).await;
    let session = reader.login("alice", PASSWORD).await.expect("login");
    let (boxes, _) = session.mailboxes().await.expect("mailboxes");
    let inbox = boxes.iter().find(|m| m.role == Role::Inbox).expect("inbox").id;

    // A delivery commits but its fsync never comes.
    let hold = store.gate().clone();
    let pending = {
        let gateway = support::gateway(&client, &server).await;
        hold.hold();
        tokio::spawn(
            async move { gateway.deliver(&support::to("alice@example.org"), &message("lost")).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "a delivery was acknowledged before it was durable");

    // Meanwhile the client looks at everything it can.
    let page = session.query(&Query::mailbox(inbox)).await.expect("query");
    let (_, account_state) = session.account().await.expect("account");
    let changes = session.changes(ObjectKind::Email, State(0), 100).await.expect("changes");
    let mut seen_states = vec![page.state, account_state, changes.new_state];
    let mut seen_ids: Vec<EmailId> = page.ids.clone();
    seen_ids.extend(changes.created.iter().map(|i| EmailId(*i)));
    let (seen_emails, _) = session.get(&seen_ids, &[]).await.expect("get");
    assert_eq!(page.ids.len(), 1, "the undurable delivery is visible: {:?}", page.ids);
    seen_states.sort();
    seen_states.dedup();

    // Power loss: the machine comes back with what the last fsync made durable.
    let rebooted = Arc::new(store.power_loss().expect("reboot"));
    store.gate().release();
    drop(session);
    drop((client, reader, gateway));
    let _ = pending.await;
    server.shutdown().await;
    drop(store);

    let server = Server::start_on(config, rebooted).await.expect("restart");
    let client = support::connect(&server).await;
    let gateway = support::gateway(&client, &server).await;
    let after = gateway.deliver(&support::to("alice@example.org"), &message("after")).await.expect("deliver");
    let after_id = after[0].outcome.clone().expect("delivered");
    let session = client.login("alice", PASSWORD).await.expect("login");

    for s in seen_states {
        match session.changes(ObjectKind::Email, s, 100).await {
            Ok(c) => assert!(
                c.created.contains(&after_id.0),
                "changes since state {} (seen before the power loss) silently miss the new mail: {c:?}",
                s.0
            ),
            Err(Error::CannotCalculateChanges(_)) => {}
            Err(e) => panic!("changes since {}: {e}", s.0),
        }
    }
    for before in &seen_emails {
        let (now, _) = session.get(&[EmailId(before.id)], &[]).await.expect("get");
        if let Some(now) = now.first() {
            assert_eq!(now.subject, before.subject, "email id {} was reused for other content", before.id);
        }
    }
    server.shutdown().await;
}
