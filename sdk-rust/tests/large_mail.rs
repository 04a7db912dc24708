//! Large mail end to end: a message beyond one RPC message travels on a
//! bulk stream (Gateway.upload, then deliver with the token) and comes back
//! byte for byte; hostile tokens and sizes get typed errors.

mod support;

use base64::Engine;
use quail::{EmailId, Error};

/// A message of about `total` bytes: text and one base64 attachment.
fn big_message(total: usize, seed: u8) -> Vec<u8> {
    // 57 bytes become one base64 line of 76 characters and a CRLF.
    let raw_len = (total - 700) / 78 * 57;
    let mut attachment = vec![0u8; raw_len];
    let mut x = 0x9e37_79b9u32 ^ u32::from(seed);
    for b in &mut attachment {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(&attachment);
    let mut m = format!(
        "From: Bob <bob@example.net>\r\nTo: alice@example.org\r\nSubject: big {seed}\r\n\
         Message-ID: <big{seed}@example.net>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
         The file is attached.\r\n--b\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\n\r\n"
    )
    .into_bytes();
    for line in encoded.as_bytes().chunks(76) {
        m.extend_from_slice(line);
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"--b--\r\n");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_21_mb_and_a_49_mib_message_are_delivered_and_come_back_byte_exact() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let client = support::connect(&server).await;
    support::admin(&client, &server)
        .await
        .create_account("alice", "alice-password", 0, 0)
        .await
        .expect("create");
    let gateway = support::gateway(&client, &server).await;
    let session = client.login("alice", "alice-password").await.expect("login");
    let announced = client.server_info().limits.max_message_bytes;
    for (size, seed) in [(21_000_000usize, 1u8), ((49 << 20) - 4096, 2)] {
        let raw = big_message(size, seed);
        assert!(raw.len() as u64 <= announced && raw.len() > size - 2000, "{}", raw.len());
        let r = gateway.deliver(&support::to("alice@example.org"), &raw).await.expect("deliver");
        let id: EmailId = r[0].outcome.clone().expect("delivered");
        let back = session.raw(id).await.expect("raw");
        assert_eq!(back.len(), raw.len());
        assert!(back == raw, "message of {} bytes differs after the round trip", raw.len());
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads_get_typed_errors() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = quail_server::Config::ephemeral(dir.path());
    config.limits.max_message_bytes = 8 << 20;
    let server = quail_server::Server::start(config).await.expect("start");
    let client = support::connect(&server).await;
    support::admin(&client, &server)
        .await
        .create_account("alice", "alice-password", 0, 0)
        .await
        .expect("create");
    let gateway = support::gateway(&client, &server).await;
    // Over the announced limit: refused before a byte is sent.
    let too_big = big_message(9 << 20, 3);
    assert!(matches!(
        gateway.deliver(&support::to("alice@example.org"), &too_big).await,
        Err(Error::LimitExceeded(_))
    ));
    // Just within it, on a bulk stream: delivered.
    let fits = big_message((8 << 20) - 8192, 4);
    let r = gateway.deliver(&support::to("alice@example.org"), &fits).await.expect("deliver");
    assert!(r[0].outcome.is_ok());
    // A forged or reused token is not found; the server stays up.
    let services = server.services();
    let token = services
        .uploads
        .reserve(quail_server::blob::upload::Owner::GATEWAY, 5, std::time::Instant::now())
        .expect("reserve");
    assert_eq!(services.uploads.begin(&token, std::time::Instant::now()).expect("begin"), 5);
    services.uploads.finish(&token, b"hello".to_vec(), std::time::Instant::now()).expect("finish");
    let other = quail_server::blob::upload::Owner(1);
    assert!(matches!(
        services.uploads.take(&token, other, std::time::Instant::now()),
        Err(quail_server::Error::NotFound(_))
    ));
    let again =
        gateway.deliver(&support::to("alice@example.org"), &support::generated(1)).await.expect("deliver");
    assert!(again[0].outcome.is_ok(), "the gateway still works");
    server.shutdown().await;
}
