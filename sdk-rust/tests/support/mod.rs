//! Shared by the SDK's end-to-end tests: a real server on loopback in a
//! temp dir, and real mail from the shared corpora.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use quail::{Client, Trust};
use quail_server::account::Credential;
use quail_server::{Config, Running, Server};

/// Starts a server on 127.0.0.1, port 0, data in `dir`.
pub async fn start(dir: &Path) -> Running {
    Server::start(Config::ephemeral(dir)).await.expect("server starts")
}

/// Connects to `server`, pinning its certificate.
pub async fn connect(server: &Running) -> Client {
    let pin = server.fingerprint().parse().expect("fingerprint");
    Client::connect(&server.addr().to_string(), Trust::Pinned(pin)).await.expect("connect")
}

/// The admin capability of `server`.
pub async fn admin(client: &Client, server: &Running) -> quail::Admin {
    client.admin(&server.secret(Credential::Admin).expect("admin secret")).await.expect("admin")
}

/// The gateway capability of `server`.
pub async fn gateway(client: &Client, server: &Running) -> quail::Gateway {
    client.gateway(&server.secret(Credential::Gateway).expect("gateway secret")).await.expect("gateway")
}

/// An envelope to one recipient.
pub fn to(rcpt: &str) -> quail::Envelope {
    quail::Envelope {
        mail_from: "sender@example.net".into(),
        rcpt_to: vec![rcpt.into()],
        ..Default::default()
    }
}

fn corpora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora")
}

/// `n` real messages (the first of the SpamAssassin easy_ham folder, in name
/// order), or generated ones when the corpora are absent.
pub fn messages(n: usize) -> Vec<Vec<u8>> {
    let dir = corpora().join("spamassassin-public-corpus/easy_ham");
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            paths.into_iter().take(n).map(|p| std::fs::read(p).expect("read corpus message")).collect()
        }
        Err(_) => {
            assert!(std::env::var_os("CI").is_none(), "{} is absent, and CI is set", dir.display());
            eprintln!("NOTE: {} is absent; using generated messages instead", dir.display());
            (0..n).map(generated).collect()
        }
    }
}

/// A plain generated message.
pub fn generated(i: usize) -> Vec<u8> {
    format!(
        "From: Sender {i} <sender{i}@example.net>\r\nTo: alice@example.org\r\n\
         Subject: generated message {i}\r\nDate: Mon, 3 Feb 2025 10:{:02}:00 +0000\r\n\
         Message-ID: <gen{i}@example.net>\r\n\r\nBody of message {i}.\r\n",
        i % 60
    )
    .into_bytes()
}

/// A message of about `total` bytes: text and one base64 attachment.
pub fn big_message(total: usize, seed: u8) -> Vec<u8> {
    // 57 bytes become one base64 line of 76 characters and a CRLF.
    let attachment = attachment_of(total, seed);
    use ::base64::Engine;
    let encoded = ::base64::engine::general_purpose::STANDARD.encode(&attachment);
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

/// The attachment bytes `big_message(total, seed)` carries.
pub fn attachment_of(total: usize, seed: u8) -> Vec<u8> {
    let raw_len = (total - 700) / 78 * 57;
    let mut attachment = vec![0u8; raw_len];
    let mut x = 0x9e37_79b9u32 ^ u32::from(seed);
    for b in &mut attachment {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    attachment
}
