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

/// A plain SMTP client over TCP, a command at a time: the test acts
/// between commands.
struct Smtp {
    reader: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Smtp {
    async fn connect(port: u16) -> Smtp {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let (r, writer) = stream.into_split();
        let mut s = Smtp { reader: tokio::io::BufReader::new(r), writer };
        assert_eq!(s.reply().await.0, 220);
        s
    }

    /// The next reply: its code and its text.
    async fn reply(&mut self) -> (u16, String) {
        use tokio::io::AsyncBufReadExt;
        let mut text = String::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.expect("read");
            assert!(line.len() >= 4, "a reply line: {line:?}");
            text.push_str(&line);
            if line.as_bytes()[3] == b' ' {
                return (line[..3].parse().expect("code"), text);
            }
        }
    }

    async fn send(&mut self, data: &str) -> (u16, String) {
        use tokio::io::AsyncWriteExt;
        self.writer.write_all(data.as_bytes()).await.expect("write");
        self.reply().await
    }
}

async fn total(s: &quail::Session) -> u64 {
    s.query(&Query::all()).await.expect("query").total
}

/// One reply after DATA answers for every recipient, so it must not be a
/// 250 that loses one's copy. A mailbox not yet full at RCPT takes the
/// message even past its quota (by one message at most); one that filled
/// up between RCPT and DATA makes the reply 451, and the sender retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_after_data_never_loses_a_recipients_copy() {
    use quail_server::account::Credential;
    let w = world().await;
    let port = w.smtp.addr().port();
    let pin: quail::Fingerprint = w.server.fingerprint().parse().expect("pin");
    let client = quail::Client::connect(&w.server.addr().to_string(), quail::Trust::Pinned(pin))
        .await
        .expect("connect");
    let admin = client.admin(&w.server.secret(Credential::Admin).expect("secret")).await.expect("admin");
    let gateway =
        client.gateway(&w.server.secret(Credential::Gateway).expect("secret")).await.expect("gateway");
    admin.create_account("tight", "tight-password", 3000, 0).await.expect("create");
    let tight = client.login("tight", "tight-password").await.expect("login");
    let message = |subject: &str| {
        format!("From: bob@example.test\r\nSubject: {subject}\r\n\r\n{}\r\n", "filler ".repeat(280))
    };
    let env = quail::Envelope {
        mail_from: "bob@example.test".into(),
        rcpt_to: vec!["tight@example.org".into()],
        ..Default::default()
    };
    gateway.deliver(&env, message("first").as_bytes()).await.expect("deliver");

    // 2 KB of 3 KB used: not full, so accepted at RCPT, and stored after
    // DATA though the message passes the quota.
    let mut c = Smtp::connect(port).await;
    assert_eq!(c.send("EHLO client.test\r\n").await.0, 250);
    assert_eq!(c.send("MAIL FROM:<bob@example.test>\r\n").await.0, 250);
    assert_eq!(c.send("RCPT TO:<tight@example.org>\r\n").await.0, 250);
    assert_eq!(c.send("RCPT TO:<alice@example.org>\r\n").await.0, 250);
    assert_eq!(c.send("DATA\r\n").await.0, 354);
    let (code, text) = c.send(&format!("{}.\r\n", message("second"))).await;
    assert_eq!(code, 250, "{text}");
    assert_eq!((total(&tight).await, total(&w.session).await), (2, 1), "both copies stored");

    // Room again, but the mailbox fills up between RCPT and DATA.
    admin.set_quota("tight", 5000, 0).await.expect("quota");
    assert_eq!(c.send("MAIL FROM:<bob@example.test>\r\n").await.0, 250);
    assert_eq!(c.send("RCPT TO:<tight@example.org>\r\n").await.0, 250);
    assert_eq!(c.send("RCPT TO:<alice@example.org>\r\n").await.0, 250);
    gateway.deliver(&env, message("meanwhile").as_bytes()).await.expect("deliver");
    assert_eq!(c.send("DATA\r\n").await.0, 354);
    let (code, text) = c.send(&format!("{}.\r\n", message("third"))).await;
    assert_eq!(code, 451, "tight's copy was refused: {text}");
    assert!(text.contains("not every recipient"), "{text}");
    assert_eq!(total(&tight).await, 3, "first, second, meanwhile");
    // Now full: the retry is refused at RCPT for tight alone, with 452.
    assert_eq!(c.send("RSET\r\n").await.0, 250);
    assert_eq!(c.send("MAIL FROM:<bob@example.test>\r\n").await.0, 250);
    let (code, text) = c.send("RCPT TO:<tight@example.org>\r\n").await;
    assert!(code == 452 || code == 552, "{code} {text}");
    assert_eq!(c.send("QUIT\r\n").await.0, 221);
}

/// A TCP connection to the gateway from `from` (another loopback address
/// is another client to the per-address limit).
async fn connect_from(from: &str, port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{from}:0").parse().expect("addr")).expect("bind");
    socket.connect(([127, 0, 0, 1], port).into()).await.expect("connect")
}

/// The first reply line on `stream`.
async fn first_line(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") && stream.read(&mut byte).await.expect("read") == 1 {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Whether two new clients (from two addresses) both get a greeting: both
/// connection slots are free.
async fn both_slots_free(port: u16) -> bool {
    let (mut a, mut b) = (connect_from("127.0.0.6", port).await, connect_from("127.0.0.7", port).await);
    first_line(&mut a).await.starts_with("220") && first_line(&mut b).await.starts_with("220")
}

/// Connections are bounded from every address together (addresses are
/// many), and a client that sends commands but never reads the replies is
/// cut off once a write has waited `write_timeout`, freeing its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_bounded_and_a_client_that_never_reads_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("dir");
    let config = Config::ephemeral(dir.path());
    let w = support::mx_world_options(dir, config, Vec::new(), |o| {
        o.max_connections = 2;
        o.write_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let port = w.smtp.addr().port();

    // Two clients from two addresses hold both slots; a third address is
    // turned away, though it has no connection of its own.
    let mut a = connect_from("127.0.0.2", port).await;
    let mut b = connect_from("127.0.0.3", port).await;
    assert!(first_line(&mut a).await.starts_with("220"));
    assert!(first_line(&mut b).await.starts_with("220"));
    let mut c = connect_from("127.0.0.4", port).await;
    let refused = first_line(&mut c).await;
    assert!(refused.starts_with("421") && refused.contains("too many connections"), "{refused}");
    drop((a, b, c));

    // A client that pipelines EHLOs (each reply is ~10 times its command)
    // and never reads past the greeting: the replies fill the socket
    // buffers and the gateway's write waits. (Slots come free as the
    // gateway sees connections close: it is let in once it is greeted,
    // tried a generous while at most; the bound is the test's, not a
    // timing.)
    let mut greeted = None;
    for _ in 0..120 {
        let mut s = connect_from("127.0.0.5", port).await;
        if first_line(&mut s).await.starts_with("220") {
            greeted = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let greedy = greeted.expect("closed connections give their slots back");
    let (_unread, mut writer) = greedy.into_split();
    let flood = tokio::spawn(async move {
        let chunk = "EHLO client.test\r\n".repeat(4096);
        for _ in 0..512 {
            if writer.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    // Its slot comes free once the write has waited a second: polled, a
    // generous while at most (the bound is the test's, not the timing's).
    let mut freed = false;
    for _ in 0..120 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if both_slots_free(port).await {
            freed = true;
            break;
        }
    }
    flood.abort();
    assert!(freed, "the client that never reads still holds its connection");
}

/// The SIZE the gateway announces is a limit that holds: a message of
/// exactly that size is delivered, with the fields the gateway adds in
/// front of it, and one byte more is refused during the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_the_announced_size_is_delivered() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config::ephemeral(dir.path());
    config.limits.max_message_bytes = 256 << 10;
    let w = support::mx_world(dir, config, 20, 600).await;
    let mut c = Smtp::connect(w.smtp.addr().port()).await;
    let (code, ehlo) = c.send("EHLO client.test\r\n").await;
    assert_eq!(code, 250);
    let size: usize = ehlo
        .lines()
        .find_map(|l| l.get(4..).and_then(|x| x.strip_prefix("SIZE ")))
        .expect("SIZE announced")
        .trim()
        .parse()
        .expect("a number");
    assert!(size < 256 << 10, "room is kept for the added fields: {size}");
    // Exactly `size` bytes as received (CRLF lines, no dot-stuffing).
    let head = "From: bob@example.test\r\nTo: alice@example.org\r\nSubject: full size\r\n\r\n";
    let line = format!("{}\r\n", "x".repeat(998));
    let mut body = String::new();
    while head.len() + body.len() + line.len() <= size {
        body.push_str(&line);
    }
    let rest = size - head.len() - body.len();
    body.push_str(&format!("{}\r\n", "y".repeat(rest - 2)));
    let message = format!("{head}{body}");
    assert_eq!(message.len(), size);
    for (extra, want) in [("", 250), ("z\r\n", 552)] {
        assert_eq!(c.send("MAIL FROM:<bob@example.test>\r\n").await.0, 250);
        assert_eq!(c.send("RCPT TO:<alice@example.org>\r\n").await.0, 250);
        assert_eq!(c.send("DATA\r\n").await.0, 354);
        let (code, text) = c.send(&format!("{message}{extra}.\r\n")).await;
        assert_eq!(code, want, "{} bytes: {text}", message.len() + extra.len());
    }
    let got = received(&w.session, "full size").await;
    assert_eq!(got.len(), 1);
    assert!(got[0].len() > size && got[0].ends_with(&message), "stored whole, behind the added fields");
}
