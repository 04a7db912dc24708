//! Anti-virus at SMTP time, with Python's smtplib against quail-smtpd and a
//! real Quail server: EICAR is refused with 550 5.7.1 by the built-in
//! scanner and by clamd; with clamd stopped the gateway answers 451 and
//! stores nothing, and once clamd is back the sender's retry gets 250.

#![cfg(target_os = "linux")]

mod support;

#[path = "../../server/tests/support/clamd.rs"]
mod clamd;

use std::process::Command;

use quail::Query;
use quail_server::Config;
use support::World;

async fn world(filter: quail_server::filter::FilterSettings) -> World {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config::ephemeral(dir.path());
    config.filter = filter;
    support::mx_world(dir, config, 20, 600).await
}

/// Sends `body` (a Python string literal's contents) and prints the final
/// reply code.
fn send(port: u16, body: &str) -> String {
    let script = format!(
        "import smtplib\n\
         s = smtplib.SMTP('127.0.0.1', {port}, local_hostname='client.test')\n\
         try:\n    s.sendmail('bob@example.test', ['alice@example.org'], {body})\n    print(250)\n\
         except smtplib.SMTPDataError as e:\n    print(e.smtp_code, e.smtp_error.decode())\n"
    );
    let out = tokio::task::block_in_place(|| {
        Command::new("python3").arg("-c").arg(&script).output().expect("python3")
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const EICAR_MAIL: &str = "'From: bob@example.test\\r\\nTo: alice@example.org\\r\\nSubject: test\\r\\nMIME-Version: 1.0\\r\\n\
    Content-Type: multipart/mixed; boundary=b\\r\\n\\r\\n--b\\r\\nContent-Type: text/plain\\r\\n\\r\\nhi\\r\\n--b\\r\\n\
    Content-Type: application/octet-stream; name=e.bin\\r\\nContent-Transfer-Encoding: base64\\r\\n\\r\\n\
    WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElWSVJVUy1URVNU\\r\\nLUZJTEUhJEgrSCo=\\r\\n--b--\\r\\n'";

const CLEAN_MAIL: &str =
    "'From: bob@example.test\\r\\nTo: alice@example.org\\r\\nSubject: minutes\\r\\n\\r\\nthe minutes\\r\\n'";

async fn count(session: &quail::Session) -> usize {
    session.query(&Query::all()).await.expect("query").ids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_scanner_refuses_eicar_with_550() {
    let w = world(Default::default()).await;
    let reply = send(w.smtp.addr().port(), EICAR_MAIL);
    assert!(reply.starts_with("550 5.7.1 virus found"), "{reply}");
    assert_eq!(count(&w.session).await, 0);
    assert_eq!(send(w.smtp.addr().port(), CLEAN_MAIL), "250");
    assert_eq!(count(&w.session).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_refuses_eicar_and_when_down_the_gateway_answers_451_until_it_is_back() {
    if !clamd::available("clamd_refuses_eicar_and_when_down_the_gateway_answers_451_until_it_is_back") {
        return;
    }
    let mut c = clamd::Clamd::start();
    let w = world(quail_server::filter::FilterSettings {
        builtin_scanner: false,
        clamd: Some(c.address()),
        clamd_timeout_ms: 10_000,
        ..Default::default()
    })
    .await;
    let port = w.smtp.addr().port();
    let reply = send(port, EICAR_MAIL);
    assert!(reply.starts_with("550 5.7.1 virus found: Quail.Test.EICAR"), "{reply}");
    c.stop();
    let reply = send(port, CLEAN_MAIL);
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    assert_eq!(count(&w.session).await, 0);
    c.restart();
    assert_eq!(send(port, CLEAN_MAIL), "250");
    assert_eq!(count(&w.session).await, 1);
}
