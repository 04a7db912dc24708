//! Push over the wire: a durable commit reaches a watching client, watches
//! are bounded per connection, a listener that stops answering neither
//! blocks ingest nor keeps its slot, and a client that moves to a new UDP
//! socket keeps its session and its watch.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use quail::{Changed, Client, ConnectOptions, EmailId, Error, ObjectKind, Session, State, Trust, Watch};
use quail_server::{Config, Running, Server};

const PASSWORD: &str = "alice-password";
/// A bound for waits that should take milliseconds, so a bug fails the
/// test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(20);

async fn setup(config: Config) -> (Running, Client, Session) {
    let server = Server::start(config).await.expect("start");
    let client = support::connect(&server).await;
    support::admin(&client, &server).await.create_account("alice", PASSWORD, 0, 0).await.expect("create");
    let session = client.login("alice", PASSWORD).await.expect("login");
    (server, client, session)
}

async fn deliver(client: &Client, server: &Running, i: usize) -> EmailId {
    let gateway = support::gateway(client, server).await;
    let r =
        gateway.deliver(&support::to("alice@example.org"), &support::generated(i)).await.expect("deliver");
    r[0].outcome.clone().expect("delivered")
}

async fn next(watch: &mut Watch) -> Changed {
    tokio::time::timeout(PATIENCE, watch.next()).await.expect("an event in time").expect("the watch is alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_and_a_keyword_change_reach_a_watching_client() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, client, session) = setup(Config::ephemeral(dir.path())).await;
    let mut watch = session.watch().await.expect("watch");
    let start = watch.start_state();
    assert!(start.0 > 0);

    // Delivered on another connection, as the gateway does.
    let other = support::connect(&server).await;
    let id = deliver(&other, &server, 1).await;
    let event = next(&mut watch).await;
    assert!(event.state > start);
    assert!(event.kinds.contains(&ObjectKind::Email), "{event:?}");
    assert!(event.kinds.contains(&ObjectKind::Mailbox), "the Inbox's counts changed: {event:?}");
    // What the event announced is there to read, at that state.
    let changes = session.changes(ObjectKind::Email, start, 100).await.expect("changes");
    assert_eq!(changes.created, vec![id.0]);
    assert_eq!(changes.new_state, event.state);

    // A change made on another session of the account is pushed too.
    let phone = other.login("alice", PASSWORD).await.expect("login");
    let r = phone.set_keywords(&[id], &["$seen"], &[], None).await.expect("seen");
    let event = next(&mut watch).await;
    assert_eq!(event.state, r.new_state);
    assert!(event.kinds.contains(&ObjectKind::Email));
    assert!(!event.kinds.contains(&ObjectKind::Thread), "{event:?}");

    // Dropping the watch unsubscribes: the server forgets the account.
    drop(watch);
    let hub = &server.services().hub;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while hub.watched_accounts() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the dropped watch is still subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_bounded_per_connection_and_other_clients_are_unaffected() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config::ephemeral(dir.path());
    config.limits.max_watches_per_connection = 4;
    let (server, client, session) = setup(config).await;
    assert_eq!(client.server_info().limits.max_watches, 4, "hello announces the limit");
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(session.watch().await.expect("within the limit"));
    }
    // A client asking for thousands gets a typed refusal each time.
    for _ in 0..1000 {
        match session.watch().await {
            Err(Error::LimitExceeded(_)) => {}
            other => panic!("a watch over the limit: {other:?}"),
        }
    }
    // Another connection still watches, and hears of a delivery.
    let other = support::connect(&server).await;
    let mut theirs = other.login("alice", PASSWORD).await.expect("login").watch().await.expect("watch");
    deliver(&other, &server, 1).await;
    next(&mut theirs).await;
    for w in &mut held {
        next(w).await;
    }
    // Dropping one frees its slot.
    held.pop();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match session.watch().await {
            Ok(w) => {
                held.push(w);
                break;
            }
            Err(Error::LimitExceeded(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => panic!("after dropping a watch: {other:?}"),
        }
    }
}

/// A listener that stops answering (an app that never reads its watch):
/// deliveries go on at full speed, the server keeps one pulse for it, and
/// after the listener timeout its watch ends and the slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_never_answers_blocks_nothing_and_loses_its_watch() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config::ephemeral(dir.path());
    config.limits.max_watches_per_connection = 1;
    config.limits.listener_timeout_secs = 1;
    let (server, client, session) = setup(config).await;
    let mut stuck = session.watch().await.expect("watch");
    let other = support::connect(&server).await;
    let reader = other.login("alice", PASSWORD).await.expect("login");
    let mut live = reader.watch().await.expect("watch");
    // Far more commits than the SDK buffers (16): once its buffer is full
    // the stuck listener stops answering.
    let gateway = support::gateway(&other, &server).await;
    let mut last = State(0);
    for i in 0..60 {
        gateway.deliver(&support::to("alice@example.org"), &support::generated(i)).await.expect("deliver");
        let (_, s) = reader.account().await.expect("account");
        last = s;
    }
    // The live watcher catches up to the last state.
    loop {
        let e = next(&mut live).await;
        if e.state >= last {
            break;
        }
    }
    // The stuck one's watch is ended by the server: its slot comes back.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let again = loop {
        match session.watch().await {
            Ok(w) => break w,
            Err(Error::LimitExceeded(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("the stuck watch should have ended: {other:?}"),
        }
    };
    // What the stuck listener had buffered is still readable, then it ends.
    let mut buffered = 0;
    while let Ok(Some(_)) = tokio::time::timeout(PATIENCE, stuck.next()).await {
        buffered += 1;
    }
    assert!((1..=17).contains(&buffered), "{buffered} events buffered");
    drop(again);
    drop(client);
}

/// The phone moves from Wi-Fi to cellular: the client rebinds its UDP
/// socket to a new address; the session goes on without a new login and
/// the watch still fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_rebinds_its_socket_keeps_its_session_and_its_watch() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(Config::ephemeral(dir.path())).await.expect("start");
    let admin_conn = support::connect(&server).await;
    support::admin(&admin_conn, &server).await.create_account("alice", PASSWORD, 0, 0).await.expect("create");
    let pin = server.fingerprint().parse().expect("fingerprint");
    let local: SocketAddr = "127.0.0.4:0".parse().expect("addr");
    let client = Client::connect_with(
        &server.addr().to_string(),
        Trust::Pinned(pin),
        ConnectOptions::default().local_addr(local),
    )
    .await
    .expect("connect");
    let session = client.login("alice", PASSWORD).await.expect("login");
    let mut watch = session.watch().await.expect("watch");

    let moved = client.rebind("127.0.0.5:0".parse().expect("addr")).await.expect("rebind");
    assert_eq!(moved.ip().to_string(), "127.0.0.5");
    // The same session answers from the new address...
    session.mailboxes().await.expect("the session survives the move");
    // ...and the watch fires for a delivery made after it.
    let id = deliver(&admin_conn, &server, 7).await;
    let event = next(&mut watch).await;
    let changes = session.changes(ObjectKind::Email, watch.start_state(), 10).await.expect("changes");
    assert!(changes.created.contains(&id.0));
    assert!(event.state > watch.start_state());
}
