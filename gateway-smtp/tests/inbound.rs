//! Inbound MX against real SMTP clients: Python's smtplib and swaks
//! deliver to an account, in plain and over STARTTLS, through quail-smtpd
//! into a real Quail server; the message is in the Inbox with a Received
//! header. Unknown users are refused during the session.

mod support;

use std::process::Command;

use quail::Query;
use quail_server::Config;
use support::World;

async fn world() -> World {
    world_with(20, 600).await
}

async fn world_with(max_connections_per_ip: u32, max_messages_per_minute_per_ip: u32) -> World {
    let dir = tempfile::tempdir().expect("dir");
    let config = Config::ephemeral(dir.path());
    support::mx_world(dir, config, max_connections_per_ip, max_messages_per_minute_per_ip).await
}

/// The Inbox's emails with the given subject, as raw text.
async fn received(session: &quail::Session, subject: &str) -> Vec<String> {
    let page = session.query(&Query::all()).await.expect("query");
    let mut out = Vec::new();
    for id in page.ids {
        let raw = String::from_utf8_lossy(&session.raw(id).await.expect("raw")).into_owned();
        if raw.contains(&format!("Subject: {subject}")) {
            out.push(raw);
        }
    }
    out
}

fn python(script: &str) -> std::process::Output {
    // Blocking on the child: off the runtime's worker (the in-process
    // servers' tasks run there).
    tokio::task::block_in_place(|| {
        Command::new("python3").arg("-c").arg(script).output().expect("python3 runs")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_delivers_in_plain_and_over_starttls_and_unknown_users_are_refused() {
    let w = world().await;
    let port = w.smtp.addr().port();
    for (subject, tls) in [("via smtplib", false), ("via smtplib starttls", true)] {
        let starttls =
            if tls { "s.starttls(context=ssl._create_unverified_context()); s.ehlo()" } else { "" };
        let script = format!(
            "import smtplib, ssl\n\
             s = smtplib.SMTP('127.0.0.1', {port}, local_hostname='client.test')\n\
             s.ehlo()\n{starttls}\n\
             s.sendmail('bob@example.test', ['alice@example.org'], \
               'From: bob@example.test\\r\\nTo: alice@example.org\\r\\nSubject: {subject}\\r\\n\\r\\n.leading dot\\r\\nhello\\r\\n')\n\
             s.quit()\n"
        );
        let out = python(&script);
        assert!(out.status.success(), "{subject}: {}", String::from_utf8_lossy(&out.stderr));
        let got = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(received(&w.session, subject))
        });
        assert_eq!(got.len(), 1, "{subject}");
        let raw = &got[0];
        assert!(raw.starts_with("Authentication-Results: mx.test;"), "{raw}");
        assert!(raw.contains("spf=pass") && raw.contains("smtp.mailfrom=bob@example.test"), "{raw}");
        let received = raw.split_once("\r\nReceived: ").map(|(_, r)| r).expect("a Received header");
        assert!(
            received.starts_with("from client.test ([127.0.0.1])\r\n\tby mx.test (quail-smtpd) with ESMTP"),
            "{raw}"
        );
        assert_eq!(raw.contains("with ESMTPS"), tls, "{raw}");
        assert!(raw.contains("\r\n.leading dot\r\nhello\r\n"), "dot-unstuffed once: {raw}");
    }
    // An unknown user is refused at RCPT, during the session.
    let out = python(&format!(
        "import smtplib\n\
         s = smtplib.SMTP('127.0.0.1', {port})\n\
         try:\n    s.sendmail('bob@example.test', ['nobody@example.org'], 'Subject: x\\r\\n\\r\\nx\\r\\n')\n\
         except smtplib.SMTPRecipientsRefused as e:\n    print(e.recipients['nobody@example.org'][0])\n"
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "550",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(w.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_delivers_in_plain_and_over_starttls() {
    if Command::new("swaks").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "swaks is missing, and CI is set (.ci/run installs it)");
        eprintln!("NOTE: swaks is not installed; skipping (apt-get install swaks)");
        return;
    }
    let w = world().await;
    let server = format!("127.0.0.1:{}", w.smtp.addr().port());
    for (subject, tls) in [("via swaks", false), ("via swaks tls", true)] {
        let mut cmd = Command::new("swaks");
        cmd.args(["--server", &server, "--to", "alice@example.org", "--from", "carol@example.test"]).args([
            "--helo",
            "swaks.test",
            "--header",
            &format!("Subject: {subject}"),
            "--body",
            "Hello from swaks",
        ]);
        if tls {
            cmd.arg("--tls");
        }
        let out = tokio::task::block_in_place(|| cmd.output().expect("swaks runs"));
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{subject}: {log}{}", String::from_utf8_lossy(&out.stderr));
        assert!(log.contains("250 2.0.0 OK: queued as"), "{log}");
        let got = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(received(&w.session, subject))
        });
        assert_eq!(got.len(), 1, "{subject}");
        assert!(got[0].starts_with("Authentication-Results: mx.test;"), "{}", got[0]);
        assert!(got[0].contains("\r\nReceived: from swaks.test ([127.0.0.1])"), "{}", got[0]);
        assert_eq!(got[0].contains("with ESMTPS"), tls);
    }
    drop(w.server);
}

/// Postfix's smtp-source: 5,000 messages of 10 KB over 20 parallel
/// sessions; exactly 5,000 are stored (none lost, none twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_source_sends_5000_messages_and_exactly_5000_are_stored() {
    let tool = ["/usr/sbin/smtp-source", "/usr/bin/smtp-source"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(tool) = tool else {
        assert!(std::env::var_os("CI").is_none(), "smtp-source (postfix) is missing, and CI is set");
        eprintln!("NOTE: smtp-source is not installed (apt-get install postfix); skipping");
        return;
    };
    let w = world_with(64, 1_000_000).await;
    let target = format!("127.0.0.1:{}", w.smtp.addr().port());
    let started = std::time::Instant::now();
    let out = tokio::process::Command::new(tool)
        .args(["-s", "20", "-m", "5000", "-l", "10240", "-M", "client.test"])
        .args(["-f", "bob@example.test", "-t", "alice@example.org", &target])
        .output()
        .await
        .expect("smtp-source runs");
    let took = started.elapsed();
    assert!(out.status.success(), "smtp-source: {}", String::from_utf8_lossy(&out.stderr));
    let page = w.session.query(&Query::all().limit(1)).await.expect("query");
    eprintln!(
        "smtp-source: 5000 messages of 10 KB over 20 sessions in {:.1} s ({:.0} msg/s, debug build)",
        took.as_secs_f64(),
        5000.0 / took.as_secs_f64()
    );
    assert_eq!(page.total, 5000, "exactly 5000 stored");
    drop(w.server);
}
