//! Submission for legacy clients against real ones: swaks and Python's
//! smtplib log in (AUTH PLAIN and LOGIN, a password or an app token) on
//! the STARTTLS port and on the implicit-TLS port, and the message lands in
//! the same outbox as the protocol's `submit` (a copy in Sent; local
//! recipients delivered here). Wrong passwords, a foreign envelope sender,
//! AUTH in the clear and brute force get the right replies.

use std::process::Command;

use quail::{Query, SubmissionStatus, Trust};
use quail_server::account::Credential;
use quail_server::{Config, Running, Server};
use quail_smtp::server::{self, Backend, Options, Upstream};
use quail_smtp::session::Mode;

struct World {
    _dir: tempfile::TempDir,
    _server: Running,
    starttls: quail_smtp::server::Running,
    implicit: quail_smtp::server::Running,
    client: quail::Client,
    alice: quail::Session,
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config::ephemeral(dir.path());
    config.domains = vec!["quail.test".into()];
    let tls_dir = config.tls_dir();
    let server = Server::start(config).await.expect("start");
    let pin: quail::Fingerprint = server.fingerprint().parse().expect("pin");
    let client =
        quail::Client::connect(&server.addr().to_string(), Trust::Pinned(pin)).await.expect("connect");
    let admin = client.admin(&server.secret(Credential::Admin).expect("secret")).await.expect("admin");
    admin.create_account("alice", "alice-password", 0, 0).await.expect("create");
    admin.create_account("bob", "bob-password", 0, 0).await.expect("create");
    let cert = quail_server::net::tls::load_or_create_dev(&tls_dir).expect("dev cert");
    let backend = Backend::connect(Upstream {
        addr: server.addr().to_string(),
        trust: Trust::Pinned(pin),
        secret: server.secret(Credential::Gateway).expect("secret"),
    })
    .await
    .expect("backend");
    let options = Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        hostname: "smtp.quail.test".into(),
        tls: Some(server::tls_config(cert.chain, cert.key).expect("tls")),
        max_connections_per_ip: 20,
        max_messages_per_minute_per_ip: 600,
        verifier: None,
        mode: Mode::Submission,
        implicit_tls: false,
        max_connections: quail_smtp::server::MAX_CONNECTIONS,
        write_timeout: quail_smtp::server::WRITE_TIMEOUT,
    };
    let starttls = server::start_on(options.clone(), std::sync::Arc::clone(&backend)).await.expect("587");
    let implicit = server::start_on(Options { implicit_tls: true, ..options }, backend).await.expect("465");
    let alice = client.login("alice", "alice-password").await.expect("login");
    World { _dir: dir, _server: server, starttls, implicit, client, alice }
}

fn have(tool: &str, probe: &[&str]) -> bool {
    if Command::new(tool).args(probe).output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{tool} is missing, and CI is set (.ci/run installs it)");
    eprintln!("NOTE: {tool} is not installed; skipping");
    false
}

fn run(cmd: &mut Command) -> (bool, String) {
    // Blocking on the child: off the runtime's workers (the servers run there).
    let out = tokio::task::block_in_place(|| cmd.output().expect("runs"));
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

async fn subjects_in(session: &quail::Session, role: quail::Role) -> Vec<String> {
    let (boxes, _) = session.mailboxes().await.expect("mailboxes");
    let id = boxes.iter().find(|m| m.role == role).expect("mailbox").id;
    let page = session.query(&Query { mailbox: Some(id), ..Query::all() }).await.expect("query");
    let (emails, _) = session.get(&page.ids, &[]).await.expect("get");
    emails.into_iter().map(|e| e.subject).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_submits_over_starttls_and_implicit_tls_into_the_outbox() {
    if !have("swaks", &["--version"]) {
        return;
    }
    let w = world().await;
    let cases = [
        ("PLAIN", false, w.starttls.addr(), "dave@far.example", "swaks starttls"),
        ("LOGIN", true, w.implicit.addr(), "bob@quail.test", "swaks implicit"),
    ];
    for (mech, implicit, addr, to, subject) in cases {
        let server = addr.to_string();
        let mut cmd = Command::new("swaks");
        cmd.args(["--server", &server, "--from", "alice@quail.test", "--to", to, "--helo", "laptop.test"])
            .args(["--auth", mech, "--auth-user", "alice", "--auth-password", "alice-password"])
            .args(["--header", &format!("Subject: {subject}"), "--body", "sent by swaks"])
            .arg(if implicit { "--tlsc" } else { "--tls" });
        let (ok, log) = run(&mut cmd);
        assert!(ok, "{subject}: {log}");
        assert!(log.contains("235 2.7.0"), "{log}");
        assert!(log.contains("250 2.0.0 OK: queued as submission"), "{log}");
    }
    // Both are in Sent; the remote one waits in the outbox, the local one
    // reached bob.
    let sent = subjects_in(&w.alice, quail::Role::Sent).await;
    assert!(
        sent.contains(&"swaks starttls".to_owned()) && sent.contains(&"swaks implicit".to_owned()),
        "{sent:?}"
    );
    let pending = w.alice.submissions(&[]).await.expect("outbox");
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].recipients[0].recipient, "dave@far.example");
    assert_eq!(pending[0].recipients[0].status, SubmissionStatus::Queued);
    let bob = w.client.login("bob", "bob-password").await.expect("login");
    let inbox = subjects_in(&bob, quail::Role::Inbox).await;
    assert_eq!(inbox, vec!["swaks implicit".to_owned()]);
}

fn python(script: &str) -> (bool, String) {
    run(Command::new("python3").arg("-c").arg(script))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_logs_in_with_an_app_token_and_bad_input_gets_the_right_replies() {
    if !have("python3", &["--version"]) {
        return;
    }
    let w = world().await;
    let (token, _) = w.alice.create_app_token("mail client").await.expect("token");
    let port = w.starttls.addr().port();
    let ssl_port = w.implicit.addr().port();
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl._create_unverified_context()
def session(implicit=False):
    if implicit:
        return smtplib.SMTP_SSL("127.0.0.1", {ssl_port}, context=ctx)
    s = smtplib.SMTP("127.0.0.1", {port})
    s.starttls(context=ctx)
    return s
msg = "From: alice@quail.test\r\nTo: erin@far.example\r\nSubject: via smtplib\r\n\r\nhello\r\n"

# An app token works as the password.
s = session()
s.login("alice", "{token}")
s.sendmail("alice@quail.test", ["erin@far.example"], msg)
s.quit()

# A wrong password: 535.
s = session(True)
try:
    s.login("alice", "not-the-password")
    print("LOGGED-IN-WRONGLY")
except smtplib.SMTPAuthenticationError as e:
    print("WRONG", e.smtp_code)
s.close()

# Another account's address as the envelope sender: refused after DATA.
s = session()
s.login("alice", "alice-password")
try:
    s.sendmail("bob@quail.test", ["erin@far.example"], msg)
    print("FORGED-ACCEPTED")
except smtplib.SMTPDataError as e:
    print("FORGED", e.smtp_code)
s.quit()

# Another account's address in the From field (what the reader sees, and
# what DMARC checks): refused after DATA as well.
s = session()
s.login("alice", "alice-password")
try:
    s.sendmail("alice@quail.test", ["erin@far.example"], msg.replace("From: alice@", "From: Bob <bob@", 1))
    print("FROM-FIELD-ACCEPTED")
except smtplib.SMTPDataError as e:
    print("FROM-FIELD", e.smtp_code, e.smtp_error.decode())
s.quit()

# In the clear: no AUTH offered, and it is refused.
s = smtplib.SMTP("127.0.0.1", {port})
s.ehlo()
print("AUTH-IN-CLEAR", s.has_extn("auth"))
code, _ = s.docmd("AUTH", "PLAIN AGFsaWNlAGFsaWNlLXBhc3N3b3Jk")
print("CLEAR", code)
code, _ = s.docmd("MAIL", "FROM:<alice@quail.test>")
print("NOAUTH", code)
s.close()
"#
    );
    let (ok, out) = python(&script);
    assert!(ok, "{out}");
    for expected in [
        "WRONG 535",
        "FORGED 550",
        "FROM-FIELD 550",
        "shows bob@quail.test",
        "AUTH-IN-CLEAR False",
        "CLEAR 538",
        "NOAUTH 530",
    ] {
        assert!(out.contains(expected), "expected {expected:?} in:\n{out}");
    }
    assert!(
        !out.contains("WRONGLY") && !out.contains("FORGED-ACCEPTED") && !out.contains("FROM-FIELD-ACCEPTED"),
        "{out}"
    );
    let pending = w.alice.submissions(&[]).await.expect("outbox");
    assert_eq!(pending.len(), 1, "only the app-token message was queued: {pending:?}");
    assert_eq!(pending[0].mail_from, "alice@quail.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_brute_force_is_throttled_even_for_the_right_password() {
    if !have("python3", &["--version"]) {
        return;
    }
    let w = world().await;
    let port = w.implicit.addr().port();
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl._create_unverified_context()
codes = []
for i in range(12):
    s = smtplib.SMTP_SSL("127.0.0.1", {port}, context=ctx)
    try:
        s.login("alice", "guess-%d" % i)
        codes.append(235)
    except smtplib.SMTPAuthenticationError as e:
        codes.append(e.smtp_code)
    s.close()
s = smtplib.SMTP_SSL("127.0.0.1", {port}, context=ctx)
try:
    s.login("alice", "alice-password")
    codes.append(235)
except smtplib.SMTPAuthenticationError as e:
    codes.append(e.smtp_code)
print(" ".join(map(str, codes)))
"#
    );
    let (ok, out) = python(&script);
    assert!(ok, "{out}");
    let codes: Vec<u16> = out.split_whitespace().filter_map(|c| c.parse().ok()).collect();
    assert_eq!(codes.len(), 13, "{out}");
    assert!(codes[..12].iter().all(|c| *c == 535 || *c == 454), "{codes:?}");
    assert!(codes[..12].contains(&454), "guessing was never throttled: {codes:?}");
    assert_eq!(codes[12], 454, "the right password right after a burst of guesses is throttled too");
    assert!(!codes.contains(&235));
}
