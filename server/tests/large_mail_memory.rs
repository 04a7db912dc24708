//! A 49 MiB message in through `Gateway.deliver` and back through `raw`,
//! byte-exact, against a quaild process whose peak RSS (the kernel's
//! VmHWM) must stay below 3× the message size.

#![cfg(target_os = "linux")]

mod quaild;

use base64::Engine;
use quail::{Client, Envelope, Trust};

/// About `total` bytes: a text part and one base64 attachment of noise.
fn big_message(total: usize) -> Vec<u8> {
    let mut attachment = vec![0u8; (total - 700) / 78 * 57];
    blake3::Hasher::new().update(b"large mail memory").finalize_xof().fill(&mut attachment);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&attachment);
    let mut m = b"From: Bob <bob@example.net>\r\nTo: alice@example.org\r\nSubject: big\r\n\
        Message-ID: <big@example.net>\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
        The file is attached.\r\n--b\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n\
        Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\n\r\n"
        .to_vec();
    for line in encoded.as_bytes().chunks(76) {
        m.extend_from_slice(line);
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"--b--\r\n");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_49_mib_message_round_trips_within_3x_its_size_of_server_memory() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path();
    let (child, addr) = quaild::start(data).await;
    let pid = child.id().expect("pid");
    let fp = std::fs::read_to_string(data.join("tls/dev-cert.sha256")).expect("fingerprint");
    let client =
        Client::connect(&addr, Trust::Pinned(fp.trim().parse().expect("pin"))).await.expect("connect");
    let secret = |name: &str| std::fs::read_to_string(data.join(name)).expect("secret").trim().to_owned();
    let admin = client.admin(&secret("admin.secret")).await.expect("admin");
    admin.create_account("alice", "alice-password", 0, 0).await.expect("create");
    let gateway = client.gateway(&secret("gateway.secret")).await.expect("gateway");
    let session = client.login("alice", "alice-password").await.expect("login");
    let raw = big_message((49 << 20) - 4096);
    let idle = quaild::status_bytes(pid, "VmRSS:");

    let envelope = Envelope {
        mail_from: "bob@example.net".into(),
        rcpt_to: vec!["alice".into()],
        ..Envelope::default()
    };
    let r = gateway.deliver(&envelope, &raw).await.expect("deliver");
    let id = r[0].outcome.clone().expect("delivered");
    let after_deliver = quaild::status_bytes(pid, "VmHWM:");
    let back = session.raw(id).await.expect("raw");
    assert!(back == raw, "the message differs after the round trip");

    let peak = quaild::status_bytes(pid, "VmHWM:");
    let size = raw.len() as u64;
    eprintln!(
        "message {} MiB; quaild RSS idle {} MiB, peak {} MiB after deliver, {} MiB after raw ({:.2}x the message)",
        size >> 20,
        idle >> 20,
        after_deliver >> 20,
        peak >> 20,
        peak as f64 / size as f64
    );
    assert!(peak < 3 * size, "quaild peaked at {} MiB for a {} MiB message", peak >> 20, size >> 20);
}
