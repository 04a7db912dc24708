//! Outbound delivery against real receiving MTAs (aiosmtpd, Debian's
//! python3-aiosmtpd) on 127.0.0.2 and 127.0.0.3, found through MX records
//! served by a DNS server on loopback: the preferred MX gets the mail
//! (over STARTTLS, DKIM-signed so that mail-auth verifies it); with it
//! down the next one does; with all down the message is retried and then
//! bounced with a DSN the sender's SDK sees. Refusals bounce at once, a
//! null MX refuses, no MX means the domain's own address, mail between
//! accounts here stays here, and a cancelled send never leaves.

mod support;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use hickory_server::proto::rr::rdata::{A, MX};
use hickory_server::proto::rr::{Name, RData};
use quail::{Envelope, Query, SubmissionStatus, Trust};
use quail_server::account::Credential;
use quail_server::{Config, Running, Server};
use quail_smtp::outbound;
use quail_smtp::server::{Backend, Upstream};
use ring::signature::KeyPair;

/// The Python that has aiosmtpd, if any.
fn python() -> Option<&'static str> {
    for p in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(p).args(["-c", "import aiosmtpd"]).output().is_ok_and(|o| o.status.success());
        if ok {
            return Some(p);
        }
    }
    None
}

/// Skips (outside CI) or fails (in CI) without aiosmtpd.
fn need_aiosmtpd(test: &str) -> Option<&'static str> {
    let p = python();
    if p.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: python3-aiosmtpd is missing (.ci/run installs it)"
        );
        eprintln!("skipping {test}: python3-aiosmtpd is not installed (apt-get install python3-aiosmtpd)");
    }
    p
}

/// A receiving MTA.
struct Mta {
    child: Child,
    out: tempfile::TempDir,
}

impl Mta {
    fn start(python: &str, addr: SocketAddr, tls: Option<(&Path, &Path)>) -> Mta {
        let out = tempfile::tempdir().expect("dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mta.py");
        let mut cmd = Command::new(python);
        cmd.arg(script).arg("--listen").arg(addr.to_string()).arg("--out").arg(out.path());
        if let Some((cert, key)) = tls {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key).arg("--require-tls");
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("python3 runs");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        // Blocking: off the runtime's workers (the servers run there).
        tokio::task::block_in_place(|| std::io::BufReader::new(stdout).read_line(&mut line).expect("read"));
        assert_eq!(line.trim(), "READY", "the MTA on {addr} did not start");
        Mta { child, out }
    }

    /// Each message received: its envelope (JSON) and bytes.
    fn messages(&self) -> Vec<(serde_json::Value, Vec<u8>)> {
        let mut out = Vec::new();
        for n in 1.. {
            let base = self.out.path().join(n.to_string());
            let (Ok(meta), Ok(raw)) = (
                std::fs::read_to_string(base.with_extension("json")),
                std::fs::read(base.with_extension("eml")),
            ) else {
                break;
            };
            out.push((serde_json::from_str(&meta).expect("json"), raw));
        }
        out
    }
}

impl Drop for Mta {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free on both 127.0.0.2 and 127.0.0.3 (the worker uses one port
/// for every MX).
fn shared_port() -> u16 {
    loop {
        let a = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
        let port = a.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.3", port)).is_ok() {
            return port;
        }
    }
}

struct World {
    dir: tempfile::TempDir,
    _server: Running,
    worker: Option<outbound::Running>,
    client: quail::Client,
    alice: quail::Session,
    port: u16,
    dns: SocketAddr,
    python: &'static str,
}

async fn world(python: &'static str, expiry_secs: u64) -> World {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config::ephemeral(dir.path());
    config.domains = vec!["quail.test".into()];
    config.mail.retry_base_secs = 1;
    config.mail.retry_max_secs = 1;
    config.mail.outbox_expiry_secs = expiry_secs;
    let server = Server::start(config).await.expect("start");
    let pin: quail::Fingerprint = server.fingerprint().parse().expect("pin");
    let client =
        quail::Client::connect(&server.addr().to_string(), Trust::Pinned(pin)).await.expect("connect");
    let admin = client.admin(&server.secret(Credential::Admin).expect("secret")).await.expect("admin");
    admin.create_account("alice", "alice-password", 0, 0).await.expect("create");
    admin.create_account("bob", "bob-password", 0, 0).await.expect("create");

    // The DKIM key of quail.test, its public half in DNS.
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key");
    let public = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .expect("key")
        .public_key()
        .as_ref()
        .to_vec();
    let b64 = base64::engine::general_purpose::STANDARD;
    let pem =
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", b64.encode(pkcs8.as_ref()));
    let key = outbound::dkim::Key::from_pem("quail.test", "s1", pem.as_bytes()).expect("dkim key");

    let name = |s: &str| Name::from_ascii(s).expect("name");
    let dns = support::serve(vec![
        support::zone_of(
            "quail.test.",
            vec![(
                "s1._domainkey.quail.test.",
                support::txt(&format!("v=DKIM1; k=ed25519; p={}", b64.encode(&public))),
            )],
        ),
        support::zone_of(
            "far.test.",
            vec![
                ("far.test.", RData::MX(MX::new(10, name("mx1.far.test.")))),
                ("far.test.", RData::MX(MX::new(20, name("mx2.far.test.")))),
                ("mx1.far.test.", RData::A(A::new(127, 0, 0, 2))),
                ("mx2.far.test.", RData::A(A::new(127, 0, 0, 3))),
            ],
        ),
        support::zone_of("nullmx.test.", vec![("nullmx.test.", RData::MX(MX::new(0, Name::root())))]),
        support::zone_of("bare.test.", vec![("bare.test.", RData::A(A::new(127, 0, 0, 2)))]),
    ])
    .await;

    let port = shared_port();
    let backend = Backend::connect(Upstream {
        addr: server.addr().to_string(),
        trust: Trust::Pinned(pin),
        secret: server.secret(Credential::Gateway).expect("secret"),
    })
    .await
    .expect("backend");
    let options = outbound::Options {
        port,
        resolver: Some(dns),
        dkim: vec![key],
        poll: Duration::from_millis(100),
        lease: Duration::from_secs(60),
        timeouts: outbound::client::Timeouts {
            connect: Duration::from_secs(2),
            command: Duration::from_secs(10),
            data_end: Duration::from_secs(10),
        },
        ..outbound::Options::new("out.quail.test")
    };
    let worker = outbound::start(options, backend).expect("worker");
    let alice = client.login("alice", "alice-password").await.expect("login");
    World { dir, _server: server, worker: Some(worker), client, alice, port, dns, python }
}

impl World {
    fn mta(&self, ip: &str, tls: bool) -> Mta {
        let addr: SocketAddr = format!("{ip}:{}", self.port).parse().expect("addr");
        if !tls {
            return Mta::start(self.python, addr, None);
        }
        let certified = rcgen::generate_simple_self_signed(vec!["mx1.far.test".to_owned()]).expect("cert");
        let (cert, key): (PathBuf, PathBuf) =
            (self.dir.path().join("mx.crt"), self.dir.path().join("mx.key"));
        std::fs::write(&cert, certified.cert.pem()).expect("write");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write");
        Mta::start(self.python, addr, Some((&cert, &key)))
    }

    async fn send(&self, to: &[&str], subject: &str, send_at: Option<i64>) -> quail::Submission {
        let raw = format!(
            "From: Alice <alice@quail.test>\r\nTo: {}\r\nSubject: {subject}\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n\
             Message-ID: <{subject}@quail.test>\r\n\r\nHello from the outbox.\r\n.a line with a leading dot\r\n",
            to.join(", ")
        );
        let envelope = Envelope {
            mail_from: "alice@quail.test".into(),
            rcpt_to: to.iter().map(|s| s.to_string()).collect(),
            ..Envelope::default()
        };
        self.alice.submit(raw.as_bytes(), &envelope, send_at).await.expect("submit")
    }

    /// Waits until submission `id` has no recipient pending.
    async fn settled(&self, id: u64) -> quail::Submission {
        for _ in 0..300 {
            let s = self.alice.submissions(&[id]).await.expect("submissions").remove(0);
            if s.recipients
                .iter()
                .all(|r| !matches!(r.status, SubmissionStatus::Queued | SubmissionStatus::Deferred))
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("submission {id} never settled");
    }
}

async fn inbox(session: &quail::Session) -> Vec<String> {
    let page = session.query(&Query::all()).await.expect("query");
    let mut out = Vec::new();
    for id in page.ids {
        let raw = session.raw(id).await.expect("raw");
        out.push(String::from_utf8_lossy(&raw).into_owned());
    }
    out
}

fn statuses(s: &quail::Submission) -> Vec<SubmissionStatus> {
    s.recipients.iter().map(|r| r.status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preferred_mx_gets_it_over_starttls_with_a_dkim_signature_that_verifies() {
    let Some(py) = need_aiosmtpd("outbound preferred MX") else { return };
    let w = world(py, 3600).await;
    let (mx1, mx2) = (w.mta("127.0.0.2", true), w.mta("127.0.0.3", false));
    let mut watch = w.alice.watch().await.expect("watch");
    let sub = w.send(&["bob@far.test"], "preferred", None).await;
    let done = w.settled(sub.id).await;
    assert_eq!(statuses(&done), vec![SubmissionStatus::Delivered], "{done:?}");
    assert!(done.recipients[0].reply.contains("mx1.far.test"), "{done:?}");
    let got = mx1.messages();
    assert_eq!(got.len(), 1);
    assert!(mx2.messages().is_empty(), "the backup MX got mail");
    let (meta, raw) = &got[0];
    assert_eq!(meta["mail_from"], "alice@quail.test");
    assert_eq!(meta["rcpt_to"], serde_json::json!(["bob@far.test"]));
    assert_eq!(meta["tls"], true, "STARTTLS was not used");
    let text = String::from_utf8_lossy(raw);
    assert!(text.starts_with("DKIM-Signature: "), "{text}");
    assert!(text.contains("\r\n.a line with a leading dot\r\n"), "dot-stuffing undone exactly");

    // The receiving side verifies the signature against DNS.
    use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    let mut ns = NameServerConfig::udp(w.dns.ip());
    for c in &mut ns.connections {
        c.port = w.dns.port();
    }
    let auth = mail_auth::MessageAuthenticator::new(
        ResolverConfig::from_parts(None, Vec::new(), vec![ns]),
        ResolverOpts::default(),
    )
    .expect("authenticator");
    let msg = mail_auth::AuthenticatedMessage::parse(raw).expect("parse");
    let results = auth.verify_dkim(&msg).await;
    assert!(
        results.iter().any(|r| r.result() == &mail_auth::DkimResult::Pass),
        "DKIM: {:?}",
        results.iter().map(|r| r.result()).collect::<Vec<_>>()
    );

    // The status change was pushed.
    let mut saw = false;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), watch.next_change()).await {
        if ev.kinds.contains(&quail::ObjectKind::Submission) {
            let c =
                w.alice.changes(quail::ObjectKind::Submission, quail::State(0), 100).await.expect("changes");
            if c.created.contains(&sub.id) || c.updated.contains(&sub.id) {
                saw = true;
                break;
            }
        }
    }
    assert!(saw, "no submission change was pushed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_preferred_mx_down_the_next_one_gets_it() {
    let Some(py) = need_aiosmtpd("outbound backup MX") else { return };
    let w = world(py, 3600).await;
    let mx2 = w.mta("127.0.0.3", false);
    let sub = w.send(&["bob@far.test"], "backup", None).await;
    let done = w.settled(sub.id).await;
    assert_eq!(statuses(&done), vec![SubmissionStatus::Delivered], "{done:?}");
    assert!(done.recipients[0].reply.contains("mx2.far.test"), "{done:?}");
    assert_eq!(mx2.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_mx_down_it_is_retried_then_bounced_with_a_dsn() {
    let Some(py) = need_aiosmtpd("outbound all down") else { return };
    let w = world(py, 4).await;
    let sub = w.send(&["bob@far.test"], "nowhere", None).await;
    let done = w.settled(sub.id).await;
    assert_eq!(statuses(&done), vec![SubmissionStatus::Failed], "{done:?}");
    assert!(done.attempts >= 2, "retried: {done:?}");
    assert!(done.recipients[0].reply.starts_with("expired"), "{done:?}");
    let inbox = inbox(&w.alice).await;
    let dsn =
        inbox.iter().find(|m| m.contains("Subject: Undelivered Mail Returned to Sender")).expect("a DSN");
    assert!(dsn.contains("report-type=\"delivery-status\"") || dsn.contains("report-type=delivery-status"));
    assert!(dsn.contains("Final-Recipient: rfc822; bob@far.test"), "{dsn}");
    assert!(dsn.contains("Subject: nowhere"), "the original headers are attached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_bounce_at_once_and_deferrals_wait() {
    let Some(py) = need_aiosmtpd("outbound refusals") else { return };
    let w = world(py, 3600).await;
    let mx1 = w.mta("127.0.0.2", false);
    let sub = w.send(&["nobody@far.test", "later@far.test", "bob@far.test"], "mixed", None).await;
    let mut now = sub.clone();
    for _ in 0..100 {
        now = w.alice.submissions(&[sub.id]).await.expect("read").remove(0);
        if now.recipients.iter().all(|r| r.status != SubmissionStatus::Queued) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        statuses(&now),
        vec![SubmissionStatus::Failed, SubmissionStatus::Deferred, SubmissionStatus::Delivered],
        "{now:?}"
    );
    assert!(now.recipients[0].reply.contains("550 5.1.1"), "{now:?}");
    assert_eq!(mx1.messages().len(), 1, "one copy, to bob only");
    assert_eq!(mx1.messages()[0].0["rcpt_to"], serde_json::json!(["bob@far.test"]));
    let inbox = inbox(&w.alice).await;
    assert!(inbox.iter().any(|m| m.contains("Final-Recipient: rfc822; nobody@far.test")), "bounced at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_mx_refuses_and_no_mx_means_the_domain_itself() {
    let Some(py) = need_aiosmtpd("outbound null MX") else { return };
    let w = world(py, 3600).await;
    let bare = w.mta("127.0.0.2", false);
    let sub = w.send(&["a@nullmx.test", "b@bare.test"], "mx-rules", None).await;
    let done = w.settled(sub.id).await;
    assert_eq!(statuses(&done), vec![SubmissionStatus::Failed, SubmissionStatus::Delivered], "{done:?}");
    assert!(done.recipients[0].reply.contains("5.1.10"), "{done:?}");
    assert_eq!(bare.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_between_accounts_here_is_delivered_here() {
    let Some(py) = need_aiosmtpd("outbound local") else { return };
    let w = world(py, 3600).await;
    let mx1 = w.mta("127.0.0.2", false);
    let sub = w.send(&["bob@quail.test"], "local", None).await;
    assert_eq!(statuses(&sub), vec![SubmissionStatus::Delivered], "delivered before submit returned");
    let bob = w.client.login("bob", "bob-password").await.expect("login");
    assert!(inbox(&bob).await.iter().any(|m| m.contains("Subject: local")));
    assert!(mx1.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_send_never_reaches_the_receiving_mta() {
    let Some(py) = need_aiosmtpd("outbound undo send") else { return };
    let mut w = world(py, 3600).await;
    let mx1 = w.mta("127.0.0.2", false);
    let send_at = quail_server::rpc::now_ms() + 2_000;
    let sub = w.send(&["bob@far.test"], "undo", Some(send_at)).await;
    assert_eq!(statuses(&sub), vec![SubmissionStatus::Queued]);
    let cancelled = w.alice.cancel_submission(sub.id).await.expect("cancel");
    assert_eq!(statuses(&cancelled), vec![SubmissionStatus::Cancelled]);
    // A control message sent after it, due at once, goes out: the worker
    // ran past the cancelled one's time.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let control = w.send(&["carol@far.test"], "control", None).await;
    assert_eq!(statuses(&w.settled(control.id).await), vec![SubmissionStatus::Delivered]);
    let got = mx1.messages();
    assert_eq!(got.len(), 1, "only the control message left");
    assert!(String::from_utf8_lossy(&got[0].1).contains("Subject: control"));
    // The copy is back in Drafts.
    let (boxes, _) = w.alice.mailboxes().await.expect("mailboxes");
    let drafts = boxes.iter().find(|m| m.role == quail::Role::Drafts).expect("drafts").id;
    let email = w.alice.email(sub.email_id).await.expect("copy");
    assert_eq!(email.mailbox_ids, vec![drafts.0]);
    // Cancelling again is refused, and so is cancelling one that left.
    assert!(w.alice.cancel_submission(sub.id).await.is_err());
    assert!(w.alice.cancel_submission(control.id).await.is_err());
    if let Some(worker) = w.worker.take() {
        worker.stop();
    }
}
