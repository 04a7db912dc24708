//! SPF, DKIM and DMARC of inbound mail, against a DNS server on loopback
//! (hickory-server serving a test zone): a DKIM-signed message from an
//! address whose SPF allows 127.0.0.1 arrives with spf, dkim and dmarc
//! `pass` in its Authentication-Results; a tampered one without a DKIM pass;
//! one from a domain whose SPF forbids this address with `spf=fail`.

mod support;

use std::process::Command;

use base64::Engine;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use quail::{Query, Trust};
use quail_server::account::Credential;
use quail_server::{Config, Server};
use quail_smtp::server::{self, Options, Upstream};

fn send(port: u16, helo: &str, from: &str, file: &std::path::Path) {
    let out = tokio::task::block_in_place(|| {
        Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import smtplib\n\
             s = smtplib.SMTP('127.0.0.1', {port}, local_hostname='{helo}')\n\
             s.sendmail('{from}', ['alice@example.org'], open('{}', 'rb').read())\n\
             s.quit()\n",
                file.display()
            ))
            .output()
            .expect("python3")
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_dkim_and_dmarc_are_verified_and_recorded() {
    let pkcs8 = Ed25519Key::generate_pkcs8().expect("key");
    let key = Ed25519Key::from_pkcs8_der(&pkcs8).expect("key");
    let public = base64::engine::general_purpose::STANDARD.encode(key.public_key());
    let dns = support::dns(&public).await;

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
    let options = Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        hostname: "mx.test".into(),
        tls: None,
        max_connections_per_ip: 20,
        max_messages_per_minute_per_ip: 600,
        verifier: Some(quail_smtp::auth::Verifier::new("mx.test", Some(dns)).expect("verifier")),
        mode: quail_smtp::session::Mode::Mx,
        implicit_tls: false,
        max_connections: quail_smtp::server::MAX_CONNECTIONS,
        write_timeout: quail_smtp::server::WRITE_TIMEOUT,
    };
    let upstream = Upstream {
        addr: server.addr().to_string(),
        trust: Trust::Pinned(pin),
        secret: server.secret(Credential::Gateway).expect("secret"),
    };
    let smtp = server::start(options, upstream).await.expect("smtpd");
    let port = smtp.addr().port();

    let body = |subject: &str, from: &str| {
        format!(
            "From: Bob <{from}>\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\
             Date: Mon, 3 Feb 2025 10:00:00 +0000\r\nMessage-ID: <{subject}@example.test>\r\n\r\nHello Alice.\r\n"
        )
    };
    let sign = |raw: &str| {
        let sig = DkimSigner::from_key(Ed25519Key::from_pkcs8_der(&pkcs8).expect("key"))
            .domain("example.test")
            .selector("s1")
            .headers(["From", "To", "Subject", "Date", "Message-ID"])
            .sign(raw.as_bytes())
            .expect("sign");
        format!("{}{raw}", sig.to_header())
    };
    let signed = sign(&body("signed", "bob@example.test"));
    let tampered = sign(&body("tampered", "bob@example.test")).replace("Hello Alice.", "Send money.");
    let forbidden = body("forbidden", "eve@forbidden.test");
    let forged = format!(
        "Authentication-Results: mx.test; dkim=pass header.d=bank.example\r\n{}",
        body("forged", "eve@forbidden.test")
    );
    for (name, text, from) in [
        ("signed", &signed, "bob@example.test"),
        ("tampered", &tampered, "bob@example.test"),
        ("forbidden", &forbidden, "eve@forbidden.test"),
        ("forged", &forged, "eve@forbidden.test"),
    ] {
        let file = dir.path().join(format!("{name}.eml"));
        std::fs::write(&file, text).expect("write");
        send(port, "example.test", from, &file);
    }

    let page = session.query(&Query::all()).await.expect("query");
    let mut results = std::collections::HashMap::new();
    for id in page.ids {
        let raw = String::from_utf8_lossy(&session.raw(id).await.expect("raw")).into_owned();
        assert!(raw.starts_with("Authentication-Results: mx.test;"), "{raw}");
        let subject = raw.lines().find_map(|l| l.strip_prefix("Subject: ")).expect("subject").to_owned();
        let ar: String = raw.split("\r\nReceived:").next().expect("header").to_owned();
        results.insert(subject, ar);
    }
    let signed = &results["signed"];
    assert!(signed.contains("dkim=pass"), "{signed}");
    assert!(signed.contains("spf=pass"), "{signed}");
    assert!(signed.contains("dmarc=pass"), "{signed}");
    let tampered = &results["tampered"];
    // mail-auth records a body that no longer matches its signature as
    // `neutral (body hash did not verify)`: not a pass.
    assert!(!tampered.contains("dkim=pass") && tampered.contains("body hash did not verify"), "{tampered}");
    let forged = page_raw(&session, "forged").await;
    assert_eq!(forged.matches("Authentication-Results: mx.test").count(), 1, "{forged}");
    assert!(!forged.contains("bank.example"), "a forged result under our name was kept: {forged}");
    let forbidden = &results["forbidden"];
    assert!(forbidden.contains("spf=fail"), "{forbidden}");
    drop(server);
}

async fn page_raw(session: &quail::Session, subject: &str) -> String {
    let page = session.query(&Query::all()).await.expect("query");
    for id in page.ids {
        let raw = String::from_utf8_lossy(&session.raw(id).await.expect("raw")).into_owned();
        if raw.contains(&format!("Subject: {subject}\r\n")) {
            return raw;
        }
    }
    panic!("no message {subject}");
}
