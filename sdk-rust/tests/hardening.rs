//! Hardening over the wire: connections per address are bounded, and
//! revoking a credential ends the sessions it opened. (The login flood runs
//! against a quaild process: `server/tests/login_flood.rs`.)

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use quail::{Client, ConnectOptions, Error, Query, Session, Trust};
use quail_server::{Config, Running, Server};

const PASSWORD: &str = "alice-password";

async fn connect_from(server: &Running, local: &str) -> quail::Result<Client> {
    let pin = server.fingerprint().parse().expect("fingerprint");
    let local: SocketAddr = format!("{local}:0").parse().expect("addr");
    Client::connect_with(
        &server.addr().to_string(),
        Trust::Pinned(pin),
        ConnectOptions::default().local_addr(local),
    )
    .await
}

/// Connections beyond the per-address limit are refused; other addresses
/// still get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_limited() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config::ephemeral(dir.path());
    config.limits.max_connections_per_ip = 3;
    let server = Server::start(config).await.expect("start");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(&server, "127.0.0.3").await.expect("within the limit"));
    }
    match connect_from(&server, "127.0.0.3").await {
        Err(Error::Disconnected(_)) => {}
        other => panic!("a fourth connection from one address: {other:?}"),
    }
    connect_from(&server, "127.0.0.4").await.expect("another address gets in");
    drop(held.pop());
    // The slot frees when the connection closes.
    let mut again = None;
    for _ in 0..100 {
        if let Ok(c) = connect_from(&server, "127.0.0.3").await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "a freed slot is usable again");
    server.shutdown().await;
}

async fn alice(server: &Running) -> (Client, quail::Admin, Session) {
    let client = support::connect(server).await;
    let admin = support::admin(&client, server).await;
    admin.create_account("alice", PASSWORD, 0, 0).await.expect("create");
    let session = client.login("alice", PASSWORD).await.expect("login");
    (client, admin, session)
}

/// (e) revokeAppToken ends the sessions opened with that token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_app_token_ends_its_sessions() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let (client, _admin, session) = alice(&server).await;
    let (token, info) = session.create_app_token("phone").await.expect("token");
    let (other, _) = session.create_app_token("laptop").await.expect("token");
    let by_token = client.login_token(&token).await.expect("token login");
    let by_other = client.login_token(&other).await.expect("token login");
    by_token.mailboxes().await.expect("works before");
    session.revoke_app_token(info.id).await.expect("revoke");
    assert!(matches!(by_token.mailboxes().await, Err(Error::BadCredentials)));
    assert!(matches!(by_token.query(&Query::default()).await, Err(Error::BadCredentials)));
    assert!(matches!(client.login_token(&token).await, Err(Error::BadCredentials)));
    by_other.mailboxes().await.expect("the other token still works");
    session.mailboxes().await.expect("the password session still works");
    server.shutdown().await;
}

/// (e) Admin.revokeTokens ends every token session of the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_all_tokens_ends_every_token_session() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let (client, admin, session) = alice(&server).await;
    let mut sessions = Vec::new();
    for label in ["a", "b"] {
        let (token, _) = session.create_app_token(label).await.expect("token");
        sessions.push(client.login_token(&token).await.expect("token login"));
    }
    assert_eq!(admin.revoke_tokens("alice").await.expect("revoke"), 2);
    for s in &sessions {
        assert!(matches!(s.account().await, Err(Error::BadCredentials)));
    }
    session.account().await.expect("the password session still works");
    server.shutdown().await;
}

/// (e) setPassword ends the sessions opened with the old password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_password_ends_old_password_sessions() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let (client, admin, session) = alice(&server).await;
    let (token, _) = session.create_app_token("phone").await.expect("token");
    let by_token = client.login_token(&token).await.expect("token login");
    admin.set_password("alice", "a new password").await.expect("set password");
    assert!(matches!(session.mailboxes().await, Err(Error::BadCredentials)));
    assert!(matches!(client.login("alice", PASSWORD).await, Err(Error::BadCredentials)));
    let fresh = client.login("alice", "a new password").await.expect("new password");
    fresh.mailboxes().await.expect("new session works");
    by_token.mailboxes().await.expect("app tokens survive a password change");
    server.shutdown().await;
}

/// A hostile message: a 1 MB subject, 10,000 long To addresses, 5,000
/// References.
fn hostile_message() -> Vec<u8> {
    let mut m = String::from("From: Mallory <mallory@example.net>\r\nSubject: ");
    m.push_str(&"spam ".repeat(200_000));
    m.push_str("\r\nTo: ");
    for i in 0..10_000 {
        if i > 0 {
            m.push_str(",\r\n ");
        }
        m.push_str(&format!("\"{} {i}\" <{}{i}@example.org>", "N".repeat(180), "a".repeat(200)));
    }
    m.push_str("\r\nReferences:");
    for i in 0..5_000 {
        m.push_str(&format!("\r\n <ref{i}@example.net>"));
    }
    m.push_str("\r\nMessage-ID: <hostile@example.net>\r\n\r\nhello\r\n");
    m.into_bytes()
}

/// (d) The hostile message is stored byte-exact; a `get` of 1,000 copies
/// fits what a client reads (the SDK reads at most the announced
/// maxRpcMessageBytes per answer); `threads` of one id sent 1,000 times
/// answers once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_header_sizes_are_bounded_where_they_are_returned() {
    use quail_server::mail::ingest::{ImportItem, Placement, prepare};
    use quail_server::mail::{MailboxId as ServerMailbox, Role as ServerRole};

    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let (client, _admin, session) = alice(&server).await;
    let raw = hostile_message();
    assert!(raw.len() > 4 << 20);
    let gateway = support::gateway(&client, &server).await;
    let first = gateway.deliver(&support::to("alice@example.org"), &raw).await.expect("deliver")[0]
        .outcome
        .clone()
        .expect("delivered");
    assert!(session.raw(first).await.expect("raw") == raw, "stored byte for byte");

    // 999 more copies, imported in-process (the same blob, stored once).
    let mail = &server.services().mail;
    let account = server.services().accounts.by_name("alice").expect("lookup").expect("alice").id;
    let inbox: ServerMailbox = mail.mailbox_by_role(account, ServerRole::Inbox).expect("inbox");
    let prepared = prepare(&raw).expect("prepare");
    let item = ImportItem {
        prepared,
        placement: Placement { mailboxes: vec![inbox], keywords: Vec::new(), received_ms: 1 },
    };
    let items = vec![item; 999];
    mail.import(account, &items).await.expect("import");

    let page = session.query(&Query::default().limit(1000)).await.expect("query");
    assert_eq!(page.ids.len(), 1000);
    let (emails, missing) = session.get(&page.ids, &[]).await.expect("get of 1,000 hostile emails");
    assert!(missing.is_empty());
    assert_eq!(emails.len(), 1000);
    for e in &emails {
        assert!(e.subject.len() <= 998 && e.subject.starts_with("spam spam"));
        assert_eq!(e.to.len(), 50, "addresses kept per field");
        assert!(e.references.len() <= 32);
        assert_eq!(e.references.first().map(String::as_str), Some("ref0@example.net"), "the root is kept");
        assert_eq!(
            e.references.last().map(String::as_str),
            Some("ref4999@example.net"),
            "so are the parents"
        );
    }
    // Duplicates are answered once.
    let same = vec![first; 1000];
    let (once, _) = session.get(&same, &[]).await.expect("get");
    assert_eq!(once.len(), 1);
    let thread = emails[0].thread_id;
    let (threads, _) = session.threads(&vec![thread; 1000]).await.expect("threads");
    assert_eq!(threads.len(), 1);
    server.shutdown().await;
}
