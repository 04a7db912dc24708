//! Uploads: a blob the account holds is not sent again; one only another
//! account holds is sent in full and stored once, and nothing tells the
//! uploader that anyone else has it; a broken upload resumes, also when
//! its old connection went silent rather than closed.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quail::Error;
use quail_server::blob::{self, BlobId};

fn noise(n: usize, seed: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; n];
    blake3::Hasher::new().update(seed).finalize_xof().fill(&mut v);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_never_resends_what_it_holds_and_learns_nothing_of_others() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let admin_conn = support::connect(&server).await;
    let admin = support::admin(&admin_conn, &server).await;
    admin.create_account("alice", "alice-password", 0, 0).await.expect("create");
    admin.create_account("bob", "bob-password", 0, 0).await.expect("create");
    let db = &server.services().db;
    let alice_conn = support::connect(&server).await;
    let alice = alice_conn.login("alice", "alice-password").await.expect("login");
    let bob_conn = support::connect(&server).await;
    let bob = bob_conn.login("bob", "bob-password").await.expect("login");
    let x = noise(3_000_000, b"file x");
    let id = BlobId(*blake3::hash(&x).as_bytes());

    // Alice's first upload sends the bytes.
    let before = blob::stored_bytes(db).expect("bytes");
    let up = alice.upload(&x, "application/octet-stream").await.expect("upload");
    assert!(!up.have);
    assert!(up.bytes_written() >= x.len() as u64);
    let stored = blob::stored_bytes(db).expect("bytes") - before;
    assert!(stored >= x.len() as u64, "stored {stored}");
    assert_eq!(blob::refs(db, id).expect("refs").count, 1);

    // Again: she holds it, nothing is sent.
    let t0 = alice_conn.traffic().await.expect("traffic");
    let again = alice.upload(&x, "application/octet-stream").await.expect("upload");
    let t1 = alice_conn.traffic().await.expect("traffic");
    assert!(again.have && again.bytes_written() == 0);
    assert!(t1.sent - t0.sent < 16_384, "{} bytes sent to re-offer a held blob", t1.sent - t0.sent);

    // Bob offers the same hash: he is not told anyone has it, sends it all,
    // and it is stored once.
    let t0 = bob_conn.traffic().await.expect("traffic");
    let theirs = bob.upload(&x, "application/octet-stream").await.expect("upload");
    let t1 = bob_conn.traffic().await.expect("traffic");
    assert!(!theirs.have, "the server told bob that someone holds these bytes");
    assert!(t1.sent - t0.sent >= x.len() as u64, "bob sent only {} bytes", t1.sent - t0.sent);
    assert_eq!(blob::stored_bytes(db).expect("bytes") - before, stored, "stored once");
    assert_eq!(blob::refs(db, id).expect("refs").count, 2);
    // Now he holds it too.
    assert!(bob.start_upload(&x, "application/octet-stream").await.expect("offer").have);

    // A hash alone is worth nothing: bytes that do not match it are refused
    // and grant no hold.
    let mallory = noise(1000, b"not x");
    let services = server.services();
    let err = services
        .mail
        .store_upload(quail_server::account::AccountId(99), mallory, id.0, "application/octet-stream", 0)
        .await
        .expect_err("mismatched bytes");
    assert!(matches!(err, quail_server::Error::InvalidArgument(_)));

    // An attachment delivered to alice: she holds it, bob does not.
    let gateway = support::gateway(&admin_conn, &server).await;
    gateway
        .deliver(&support::to("alice@example.org"), &support::big_message(400_000, 7))
        .await
        .expect("deliver");
    let attachment = support::attachment_of(400_000, 7);
    assert!(alice.start_upload(&attachment, "application/octet-stream").await.expect("offer").have);
    assert!(!bob.start_upload(&attachment, "application/octet-stream").await.expect("offer").have);

    // A read-only view uploads nothing.
    let view = alice.restrict(&[], true, None).await.expect("restrict");
    assert!(matches!(view.start_upload(b"hi", "text/plain").await, Err(Error::Forbidden(_))));

    // An upload past its 24 hours is let go: its reference goes, and the
    // account no longer holds it (alice still holds it through no email).
    let account = quail_server::account::AccountId(alice.account().await.expect("account").0.id);
    let mail = &server.services().mail;
    let later = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_millis()
        as i64
        + quail_server::mail::UPLOAD_HOLD_MS
        + 1000;
    assert_eq!(mail.sweep_uploads(account, later).await.expect("sweep"), 1);
    assert!(!mail.holds_blob(account, id).expect("holds"));
    assert_eq!(blob::refs(db, id).expect("refs").count, 1, "bob's upload still holds it");
    assert_eq!(mail.sweep_uploads(account, later).await.expect("sweep"), 0, "once");

    // check agrees with what is held and uploaded.
    drop((alice, bob, view));
    let report = quail_server::tools::check::check(db, false).expect("check");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_resumes_on_a_new_connection_after_the_old_one_dies() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let admin_conn = support::connect(&server).await;
    support::admin(&admin_conn, &server)
        .await
        .create_account("alice", "alice-password", 0, 0)
        .await
        .expect("create");
    let x = noise(20_000_000, b"big upload");
    let client = support::connect(&server).await;
    let session = client.login("alice", "alice-password").await.expect("login");
    let mut up = session.start_upload(&x, "application/octet-stream").await.expect("offer");
    let progress = up.progress();
    let doomed = client.clone();
    let killer = tokio::spawn(async move {
        while progress.load(Ordering::Relaxed) < 6_000_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        doomed.disconnect().await;
    });
    let first = session.send_upload(&mut up, &x).await;
    killer.await.expect("killer");
    assert!(matches!(first, Err(Error::Disconnected(_))), "{first:?}");
    let written_before = up.bytes_written();

    let client2 = support::connect(&server).await;
    let session2 = client2.login("alice", "alice-password").await.expect("login");
    session2.send_upload(&mut up, &x).await.expect("resumed");
    let resumed = up.bytes_written() - written_before;
    assert!(resumed < x.len() as u64 - 1_000_000, "the resumed upload sent {resumed} of {} bytes", x.len());
    assert!(up.is_done());
    // It is stored whole and verified: the account now holds it.
    assert!(session2.start_upload(&x, "application/octet-stream").await.expect("offer").have);
    let id = BlobId(*blake3::hash(&x).as_bytes());
    assert!(blob::get(&server.services().db, id).expect("get").expect("stored") == x);
}

/// A UDP path to `server` (from 127.0.0.2) that can be cut: once `cut` is
/// set, nothing passes either way, as when a phone leaves a network in the
/// middle of a transfer. No close reaches the server.
async fn cuttable_path(server: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<AtomicBool>) {
    let front = tokio::net::UdpSocket::bind("127.0.0.2:0").await.expect("bind");
    let back = tokio::net::UdpSocket::bind("127.0.0.2:0").await.expect("bind");
    back.connect(server).await.expect("connect");
    let addr = front.local_addr().expect("addr");
    let cut = Arc::new(AtomicBool::new(false));
    let open = Arc::clone(&cut);
    tokio::spawn(async move {
        let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
        let mut client = None;
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut up) => {
                    client = Some(from);
                    if !open.load(Ordering::Relaxed) {
                        let _ = back.send(&up[..n]).await;
                    }
                }
                Ok(n) = back.recv(&mut down) => {
                    if let (Some(to), false) = (client, open.load(Ordering::Relaxed)) {
                        let _ = front.send_to(&down[..n], to).await;
                    }
                }
            }
        }
    });
    (addr, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_taken_over_when_its_old_connection_went_silent() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let admin_conn = support::connect(&server).await;
    support::admin(&admin_conn, &server)
        .await
        .create_account("alice", "alice-password", 0, 0)
        .await
        .expect("create");
    let x = noise(20_000_000, b"silent upload");
    // The first connection goes through a path that is cut after 6 MB:
    // the server goes on waiting for that transfer (until its idle
    // timeout, far beyond the SDK's patience).
    let (path, cut) = cuttable_path(server.addr()).await;
    let pin = server.fingerprint().parse().expect("fingerprint");
    let silent = quail::Client::connect(&path.to_string(), quail::Trust::Pinned(pin)).await.expect("connect");
    let session = silent.login("alice", "alice-password").await.expect("login");
    let mut up = session.start_upload(&x, "application/octet-stream").await.expect("offer");
    let progress = up.progress();
    let (mut first_up, first_x) = (up.clone(), x.clone());
    let first = tokio::spawn(async move { session.send_upload(&mut first_up, &first_x).await });
    while progress.load(Ordering::Relaxed) < 6_000_000 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cut.store(true, Ordering::Relaxed);

    // The client comes back on a working path: it takes the upload over
    // (the stalled transfer is told to stop and keeps what it received).
    let client2 = support::connect(&server).await;
    let session2 = client2.login("alice", "alice-password").await.expect("login");
    session2.send_upload(&mut up, &x).await.expect("taken over");
    assert!(up.is_done());
    first.abort();
    // Stored whole and verified.
    assert!(session2.start_upload(&x, "application/octet-stream").await.expect("offer").have);
    let id = BlobId(*blake3::hash(&x).as_bytes());
    assert!(blob::get(&server.services().db, id).expect("get").expect("stored") == x);
}
