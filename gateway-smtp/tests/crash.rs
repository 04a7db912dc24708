//! quail-smtpd is SIGKILLed in the middle of a DATA, five times over:
//! every message that got its 250 is in the store, and the one cut off is
//! not (nothing is stored without its end of data, and nothing
//! acknowledged is lost).

#![cfg(target_os = "linux")]

use std::process::Stdio;
use std::time::Duration;

use quail::{Query, Trust};
use quail_server::account::Credential;
use quail_server::{Config, Server};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

async fn start_smtpd(data: &std::path::Path, server: &str) -> (tokio::process::Child, String) {
    // Listen address and host name from a config file, the rest as flags.
    let config = data.join("smtpd.toml");
    std::fs::write(
        &config,
        "hostname = \"mx.test\"\nlisten = \"127.0.0.1:0\"\nsubmission = \"127.0.0.1:0\"\n\
         submissions = \"127.0.0.1:0\"\nmax_connections_per_ip = 4\n",
    )
    .expect("config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_quail-smtpd"))
        .arg("--config")
        .arg(&config)
        .args(["--data-dir"])
        .arg(data)
        .args(["--server", server])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn quail-smtpd");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("stdout") {
            if let Some(rest) = line.split("listening on ").nth(1) {
                return rest.split_whitespace().next().expect("addr").to_owned();
            }
        }
        panic!("quail-smtpd exited before listening");
    })
    .await
    .expect("quail-smtpd starts");
    // Keep reading what it prints, so its stdout never breaks.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// Reads one (final) reply line.
async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.expect("read");
        if line.len() < 4 || line.as_bytes()[3] == b' ' {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_data_loses_nothing_acknowledged_and_stores_nothing_unfinished() {
    let dir = tempfile::tempdir().expect("dir");
    let config = Config::ephemeral(dir.path());
    let server = Server::start(config).await.expect("server");
    let pin: quail::Fingerprint = server.fingerprint().parse().expect("pin");
    let client =
        quail::Client::connect(&server.addr().to_string(), Trust::Pinned(pin)).await.expect("connect");
    client
        .admin(&server.secret(Credential::Admin).expect("secret"))
        .await
        .expect("admin")
        .create_account("alice", "alice-password", 0, 0)
        .await
        .expect("create");
    let session = client.login("alice", "alice-password").await.expect("login");
    let mut acknowledged = Vec::new();
    let mut cut_off = Vec::new();
    let mut n = 0;
    for round in 0..5 {
        let (mut child, addr) = start_smtpd(dir.path(), &server.addr().to_string()).await;
        let stream = TcpStream::connect(&addr).await.expect("connect");
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let greeting = reply(&mut rd).await;
        assert!(greeting.starts_with("220 mx.test "), "the host name from the config file: {greeting}");
        wr.write_all(b"EHLO client.test\r\n").await.expect("write");
        assert!(reply(&mut rd).await.starts_with("250"));
        // A few whole messages, each acknowledged...
        for _ in 0..3 {
            n += 1;
            let subject = format!("message {n}");
            wr.write_all(b"MAIL FROM:<bob@example.net>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
                .await
                .expect("w");
            for want in ["250", "250", "354"] {
                let r = reply(&mut rd).await;
                assert!(r.starts_with(want), "{r}");
            }
            wr.write_all(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes()).await.expect("w");
            let r = reply(&mut rd).await;
            assert!(r.starts_with("250"), "{r}");
            acknowledged.push(subject);
        }
        // ...then one cut off in the middle of its DATA by SIGKILL.
        n += 1;
        let subject = format!("message {n}");
        wr.write_all(b"MAIL FROM:<bob@example.net>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
            .await
            .expect("w");
        for _ in 0..3 {
            reply(&mut rd).await;
        }
        wr.write_all(format!("Subject: {subject}\r\n\r\nhalf of the bo").as_bytes()).await.expect("w");
        tokio::time::sleep(Duration::from_millis(50)).await;
        child.start_kill().expect("kill");
        let _ = child.wait().await;
        let mut rest = Vec::new();
        let _ = rd.read_to_end(&mut rest).await;
        cut_off.push(subject);
        eprintln!("round {round}: killed mid-DATA");
    }
    let page = session.query(&Query::all().limit(500)).await.expect("query");
    let mut stored = Vec::new();
    for id in page.ids {
        let raw = String::from_utf8_lossy(&session.raw(id).await.expect("raw")).into_owned();
        let subject = raw.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default().to_owned();
        stored.push(subject);
    }
    stored.sort();
    let mut want = acknowledged.clone();
    want.sort();
    assert_eq!(stored, want, "stored exactly the acknowledged messages");
    assert!(cut_off.iter().all(|s| !stored.contains(s)));
}
