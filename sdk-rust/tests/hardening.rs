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
