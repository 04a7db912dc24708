//! A dead server is noticed in seconds: quaild is killed (SIGKILL, no
//! goodbye on the wire) under a client holding a session and a watch; the
//! client's keep-alives go unanswered, the connection times out after the
//! SDK's idle timeout, calls fail with `Disconnected` and the watch ends.

#![cfg(target_os = "linux")]

mod quaild;

use std::time::{Duration, Instant};

use futures::StreamExt;
use quail::{Client, Error, Trust};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_noticed_within_the_idle_timeout() {
    assert!(
        quail::IDLE_TIMEOUT <= Duration::from_secs(15),
        "the default idle timeout is seconds, not a minute"
    );
    assert!(quail::KEEP_ALIVE * 3 <= quail::IDLE_TIMEOUT, "three keep-alives fit in the idle timeout");
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path();
    let (mut child, addr) = quaild::start(data).await;
    let fp = std::fs::read_to_string(data.join("tls/dev-cert.sha256")).expect("fingerprint");
    let client =
        Client::connect(&addr, Trust::Pinned(fp.trim().parse().expect("pin"))).await.expect("connect");
    let secret = std::fs::read_to_string(data.join("admin.secret")).expect("secret");
    client
        .admin(secret.trim())
        .await
        .expect("admin")
        .create_account("alice", "alice-password", 0, 0)
        .await
        .expect("create");
    let session = client.login("alice", "alice-password").await.expect("login");
    let mut watch = session.watch().await.expect("watch");

    child.start_kill().expect("kill");
    let _ = child.wait().await;
    let killed = Instant::now();
    let closed =
        tokio::time::timeout(Duration::from_secs(60), client.closed()).await.expect("the loss is noticed");
    let noticed = killed.elapsed();
    eprintln!(
        "a killed server was noticed after {:.1} s (idle timeout {:?})",
        noticed.as_secs_f64(),
        quail::IDLE_TIMEOUT
    );
    assert!(matches!(closed, Error::Disconnected(_)), "{closed:?}");
    assert!(matches!(session.mailboxes().await, Err(Error::Disconnected(_))));
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("the watch ends"),
        None
    );
}
