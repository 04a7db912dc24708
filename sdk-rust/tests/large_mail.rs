//! Large mail end to end: a message beyond one RPC message travels on a
//! bulk stream (Gateway.upload, then deliver with the token) and comes back
//! byte for byte; hostile tokens and sizes get typed errors.

mod support;

use quail::{EmailId, Error};

use support::big_message;

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
    assert_eq!(
        services.uploads.begin(&token, 0, |_| true, std::time::Instant::now()).expect("begin").size,
        5
    );
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
