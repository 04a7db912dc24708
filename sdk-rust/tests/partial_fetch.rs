//! Partial fetch: one MIME part, one byte range of it, on a bulk stream
//! when large, verified by BLAKE3, resumable after the connection is lost;
//! and hostile bulk requests get typed errors.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quail::{Client, EmailId, Error, Property, Session};
use quail_server::Running;

const PASSWORD: &str = "alice-password";
/// The attachment message: about 27 MB raw, a 20 MB attachment.
const SIZE: usize = 27_400_000;

async fn setup() -> (tempfile::TempDir, Running, Client, Session, EmailId) {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let client = support::connect(&server).await;
    let admin = support::admin(&client, &server).await;
    admin.create_account("alice", PASSWORD, 0, 0).await.expect("create");
    admin.create_account("bob", "bob-password", 0, 0).await.expect("create");
    let gateway = support::gateway(&client, &server).await;
    let r = gateway
        .deliver(&support::to("alice@example.org"), &support::big_message(SIZE, 9))
        .await
        .expect("deliver");
    let id = r[0].outcome.clone().expect("delivered");
    let session = client.login("alice", PASSWORD).await.expect("login");
    (dir, server, client, session, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_and_ranges_move_only_the_bytes_asked_for() {
    let (_dir, _server, client, session, id) = setup().await;
    let attachment = support::attachment_of(SIZE, 9);
    assert!(attachment.len() > 20_000_000, "{}", attachment.len());

    // The body structure names the parts.
    let email = session.get(&[id], &[Property::BodyStructure]).await.expect("get").0.remove(0);
    let parts: Vec<_> = email.body.as_ref().expect("structure").walk().into_iter().cloned().collect();
    let file = parts.iter().find(|p| p.file_name == "data.bin").expect("the attachment");
    assert_eq!(file.part_id, "2");
    assert_eq!(file.size, attachment.len() as u64);

    // A text part, inline.
    assert_eq!(session.fetch_part(id, "1").await.expect("text"), b"The file is attached.");

    // 1 MB from the middle of the 20 MB attachment moves about 1 MB.
    let before = client.traffic().await.expect("traffic");
    let range = session.fetch_part_range(id, "2", 9_000_000, 1_000_000).await.expect("range");
    let after = client.traffic().await.expect("traffic");
    assert_eq!(range.total_size, attachment.len() as u64);
    assert_eq!(range.offset, 9_000_000);
    assert!(range.data == attachment[9_000_000..10_000_000], "the range's bytes differ");
    let moved = after.received - before.received;
    eprintln!("a 1,000,000-byte range moved {moved} bytes");
    assert!(moved < 1_200_000, "{moved} bytes received for a 1 MB range");

    // The whole attachment, verified by BLAKE3, on a bulk stream.
    assert!(session.fetch_part(id, "2").await.expect("whole") == attachment);

    // Bad asks: typed errors.
    assert!(matches!(session.fetch_part(id, "7").await, Err(Error::NotFound(_))));
    assert!(matches!(session.fetch_part(id, "").await, Err(Error::InvalidInput(_))), "the multipart root");
    assert!(matches!(
        session.fetch_part_range(id, "2", attachment.len() as u64 + 1, 10).await,
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(session.fetch_part(EmailId(id.0 + 1000), "1").await, Err(Error::NotFound(_))));
}

/// A writer that holds back after `open` bytes until the gate opens.
struct Gated {
    out: Vec<u8>,
    open: usize,
    gate: std::sync::mpsc::Receiver<()>,
    held: Arc<AtomicU64>,
}

impl std::io::Write for Gated {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() >= self.open && self.held.load(Ordering::SeqCst) == 0 {
            self.held.store(self.out.len() as u64, Ordering::SeqCst);
            let _ = self.gate.recv();
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyword_change_completes_while_a_large_download_runs() {
    let (_dir, _server, _client, session, id) = setup().await;
    let session = Arc::new(session);
    let (open, gate) = std::sync::mpsc::channel();
    let held = Arc::new(AtomicU64::new(0));
    let mut writer = Gated { out: Vec::new(), open: 2 << 20, gate, held: Arc::clone(&held) };
    let s = Arc::clone(&session);
    // The writer blocks its thread: run it on one of the blocking pool, never
    // on a runtime worker (the in-process server's tasks run there).
    let handle = tokio::runtime::Handle::current();
    let download = tokio::task::spawn_blocking(move || {
        handle.block_on(async move {
            let mut d = s.start_fetch_part(id, "2", 0, 0).await.expect("start");
            s.download_to(&mut d, &mut writer, &mut |_, _| {}).await.expect("download");
            writer.out
        })
    });
    while held.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The download is stalled mid-way, holding its stream: another call on
    // the same connection is answered anyway.
    let r = tokio::time::timeout(Duration::from_secs(20), session.set_keywords(&[id], &["$seen"], &[], None))
        .await
        .expect("setKeywords is not stuck behind the download")
        .expect("setKeywords");
    assert_eq!(r.updated, vec![id]);
    open.send(()).expect("open the gate");
    let bytes = download.await.expect("task");
    assert!(bytes == support::attachment_of(SIZE, 9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_resumes_on_a_new_connection_after_the_old_one_dies() {
    let (_dir, server, client, session, id) = setup().await;
    let attachment = support::attachment_of(SIZE, 9);
    let mut d = session.start_fetch_part(id, "2", 0, 0).await.expect("start");
    let mut out = Vec::new();
    // The connection dies after 3 MB arrived.
    let doomed = client.clone();
    let mut killed = false;
    let mut progress = |done: u64, _total: u64| {
        if done >= 3 << 20 && !killed {
            killed = true;
            let c = doomed.clone();
            tokio::spawn(async move { c.disconnect().await });
        }
    };
    let first = session.download_to(&mut d, &mut out, &mut progress).await;
    assert!(matches!(first, Err(Error::Disconnected(_))), "{first:?}");
    assert!(d.done >= 3 << 20 && d.done < d.length, "stopped at {} of {}", d.done, d.length);
    let stopped = d.done;
    // Another connection, the same account: the transfer goes on from where it stopped.
    let client2 = support::connect(&server).await;
    let session2 = client2.login("alice", PASSWORD).await.expect("login");
    let before = client2.traffic().await.expect("traffic");
    session2.download_to(&mut d, &mut out, &mut |_, _| {}).await.expect("resumed");
    let moved = client2.traffic().await.expect("traffic").received - before.received;
    assert!(out == attachment, "the resumed download differs");
    assert!(moved < (d.length - stopped) + (d.length - stopped) / 10, "{moved} bytes moved to resume");

    // Another account cannot redeem the token, nor can anyone once it is done.
    let mut again = session2.start_fetch_part(id, "2", 0, 0).await.expect("start");
    let bob = client2.login("bob", "bob-password").await.expect("login");
    let client3 = support::connect(&server).await;
    let bob3 = client3.login("bob", "bob-password").await.expect("login");
    let mut sink = Vec::new();
    assert!(
        matches!(bob3.download_to(&mut again, &mut sink, &mut |_, _| {}).await, Err(Error::NotFound(_))),
        "bob's connection redeemed alice's token"
    );
    drop(bob);
}
