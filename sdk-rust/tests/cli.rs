//! The `quail` CLI against a real server: the README's walk-through.

mod support;

use std::path::Path;
use std::process::{Command, Output};

fn quail(data_dir: &Path, config: &Path, server: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quail"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .arg("--server")
        .arg(server)
        .args(args)
        .env("QUAIL_CLI_CONFIG", config)
        .env_remove("QUAIL_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // Blocking on the child: off the runtime's worker (the in-process
    // server's tasks run there).
    tokio::task::block_in_place(|| {
        let mut child = cmd.spawn().expect("run quail");
        if let Some(input) = stdin {
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("wait")
    })
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walk_through() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(&dir.path().join("data")).await;
    let data = dir.path().join("data");
    let config = dir.path().join("cli.toml");
    let addr = server.addr().to_string();
    let q = |args: &[&str], stdin: Option<&str>| quail(&data, &config, &addr, args, stdin);

    // The operator creates an account (password on stdin, as a script would).
    let out = ok(q(&["admin", "user", "add", "alice"], Some("alice-password\n")));
    assert!(out.contains("created account alice"), "{out}");
    let dup = q(&["admin", "user", "add", "alice"], Some("alice-password\n"));
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));

    // Not logged in yet.
    let out = q(&["ls"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("quail login"));

    // A wrong password: exit code 3, nothing saved.
    let out = q(&["login", "alice", "--password", "wrong-password"], None);
    assert_eq!(out.status.code(), Some(3));
    assert!(!config.exists());
    ok(q(&["login", "alice", "--password", "alice-password"], None));

    // A reader that stops reading (`quail ls | head -0`): a quiet exit, no panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_quail"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--server")
        .arg(&addr)
        .args(["mailboxes"])
        .env("QUAIL_CLI_CONFIG", &config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run quail");
    drop(child.stdout.take());
    let out = tokio::task::block_in_place(|| child.wait_with_output().expect("wait"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("panicked"), "{:?}: {err}", out.status);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config).expect("profile").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the saved token is private");
    }

    // Deliver two files, list, show, raw.
    let files: Vec<_> = (0..2)
        .map(|i| {
            let p = dir.path().join(format!("m{i}.eml"));
            std::fs::write(&p, support::generated(i)).expect("write eml");
            p
        })
        .collect();
    let out = ok(q(
        &["deliver", "--to", "alice", files[0].to_str().expect("utf-8"), files[1].to_str().expect("utf-8")],
        None,
    ));
    assert_eq!(out.matches("delivered as").count(), 2, "{out}");
    let bad = q(&["deliver", "--to", "nobody", files[0].to_str().expect("utf-8")], None);
    assert!(!bad.status.success());

    let out = ok(q(&["ls"], None));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("SUBJECT"));
    assert!(lines[1].contains("generated message 1"), "newest first:\n{out}");
    assert!(lines[2].contains("generated message 0"));
    assert!(out.contains("1-2 of 2"));

    let out = ok(q(&["ls", "--unread", "--json"], None));
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["total"], 2);
    let id = v["emails"][0]["id"].as_u64().expect("id");

    let out = ok(q(&["show", &id.to_string()], None));
    assert!(out.contains("Subject:  generated message 1"), "{out}");
    let raw = q(&["show", &id.to_string(), "--raw"], None);
    assert!(raw.status.success());
    assert_eq!(raw.stdout, support::generated(1));
    let missing = q(&["show", "999999"], None);
    assert_eq!(missing.status.code(), Some(4));

    // Flags, folders, trash.
    let ids: Vec<u64> =
        v["emails"].as_array().expect("emails").iter().map(|e| e["id"].as_u64().expect("id")).collect();
    let (newer, older) = (ids[0].to_string(), ids[1].to_string());
    ok(q(&["seen", &older], None));
    assert!(ok(q(&["ls", "--unread"], None)).contains("1-1 of 1 unread"));
    ok(q(&["flag", &newer], None));
    let out = ok(q(&["ls", "--flagged"], None));
    assert!(out.contains("1-1 of 1 flagged") && out.contains(&format!("*!{newer}")), "{out}");
    ok(q(&["mailbox", "add", "Work"], None));
    ok(q(&["mv", &newer, "--to", "work"], None));
    assert!(ok(q(&["ls", "--mailbox", "Work"], None)).contains("1-1 of 1"));
    assert!(!q(&["mailbox", "rm", "Work"], None).status.success(), "not empty");
    ok(q(&["rm", &newer], None));
    assert!(ok(q(&["ls", "--mailbox", "trash"], None)).contains("1-1 of 1"));
    ok(q(&["mailbox", "rm", "Work"], None));
    ok(q(&["rm", &newer], None));
    assert!(ok(q(&["ls"], None)).contains("1-1 of 1"), "expunged from Trash");
    ok(q(&["mv", &older, "--to", "inbox"], None));

    let out = ok(q(&["mailboxes"], None));
    assert!(out.lines().any(|l| l.starts_with("Inbox") && l.contains(" 1 ")), "{out}");
    let out = ok(q(&["admin", "user", "list"], None));
    assert!(out.lines().any(|l| l.starts_with("alice")), "{out}");
    ok(q(&["logout"], None));
    assert!(!config.exists());
    server.shutdown().await;
}

/// `quail search` marks what matched and speaks JSON; `quail show` says
/// why a mail is in Junk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_and_why_a_mail_is_junk() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let server = support::start(&data).await;
    let config = dir.path().join("cli.toml");
    let addr = server.addr().to_string();
    let q = |args: &[&str], stdin: Option<&str>| quail(&data, &config, &addr, args, stdin);
    ok(q(&["admin", "user", "add", "alice"], Some("alice-password\n")));
    ok(q(&["login", "alice", "--password", "alice-password"], None));

    let mail = [
        "From: Bob <bob@example.net>\r\nTo: alice@example.org\r\nSubject: Invoice 17\r\n\r\n\
         Please pay the invoice by Friday.\r\n",
        "From: Carol <carol@example.net>\r\nTo: alice@example.org\r\nSubject: Lunch\r\n\r\n\
         Noodles at noon?\r\n",
        // A name that shows another address, and a link to a bare IP.
        "From: \"service@bank.example\" <x@mailer.invalid>\r\nTo: alice@example.org\r\n\
         Subject: Verify your account\r\nContent-Type: text/html\r\n\r\n\
         <html><body><p>Verify <a href=\"http://192.0.2.7/login\">here</a>.</p></body></html>\r\n",
    ];
    let mut ids = Vec::new();
    for (i, m) in mail.iter().enumerate() {
        let p = dir.path().join(format!("s{i}.eml"));
        std::fs::write(&p, m).expect("write eml");
        let out = ok(q(&["deliver", "--to", "alice", p.to_str().expect("utf-8")], None));
        let id = out.trim().rsplit(' ').next().expect("id").to_owned();
        ids.push(id);
    }

    // Matched words are marked (no terminal: in brackets), with a count.
    let out = ok(q(&["search", "invoice"], None));
    assert!(out.contains("Invoice 17") && out.contains("[invoice]"), "{out}");
    assert!(out.trim_end().ends_with("1 of 1 match"), "{out}");
    // A field over a group, and JSON for scripts.
    let out = ok(q(&["search", "from:(bob OR carol) -noodles", "--json"], None));
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["total"], 1, "{out}");
    assert_eq!(v["hits"][0]["id"].to_string(), ids[0]);
    assert!(ok(q(&["search", "zebra"], None)).contains("no matches"));
    let bad = q(&["search", "\"unclosed"], None);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("at 0: an unclosed"), "{bad:?}");

    // The third went to Junk, and `show` says why.
    assert!(ok(q(&["ls", "--mailbox", "junk"], None)).contains("Verify your account"));
    let out = ok(q(&["show", &ids[2]], None));
    assert!(out.contains("Spam:     spam, score 3.6"), "{out}");
    // 2.0 + 1.5 + 0.1, past the default junk score of 2.5.
    for why in ["FROM_NAME_MISMATCH", "URL_IP", "HTML_ONLY"] {
        assert!(out.contains(why), "{why}: {out}");
    }
    assert!(ok(q(&["show", &ids[0]], None)).contains("Spam:     not spam"));
    server.shutdown().await;
}

/// `quail show` lists the parts, `quail fetch --part` writes one, and
/// `quail watch` prints mail as it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_fetch_and_watch() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let server = support::start(&data).await;
    let config = dir.path().join("cli.toml");
    let addr = server.addr().to_string();
    let q = |args: &[&str], stdin: Option<&str>| quail(&data, &config, &addr, args, stdin);
    ok(q(&["admin", "user", "add", "alice"], Some("alice-password\n")));
    ok(q(&["login", "alice", "--password", "alice-password"], None));
    let client = support::connect(&server).await;
    let gateway = support::gateway(&client, &server).await;
    // Larger than the inline limit: the part travels on a bulk stream.
    let size = 7_000_000;
    let r = gateway
        .deliver(&support::to("alice@example.org"), &support::big_message(size, 3))
        .await
        .expect("deliver");
    let id = r[0].outcome.clone().expect("delivered").0.to_string();

    let out = ok(q(&["show", &id], None));
    assert!(out.contains("Parts:"), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("2 ") && l.contains("data.bin")), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("1 ") && l.contains("text/plain")), "{out}");

    let file = dir.path().join("data.bin");
    let out = q(&["fetch", &id, "--part", "2", "-o", file.to_str().expect("path")], None);
    ok(out);
    assert!(std::fs::read(&file).expect("written") == support::attachment_of(size, 3));
    let missing = q(&["fetch", &id, "--part", "9"], None);
    assert_eq!(missing.status.code(), Some(4), "no such part: exit code 4");

    let mut watcher = Command::new(env!("CARGO_BIN_EXE_quail"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--server")
        .arg(&addr)
        .arg("watch")
        .env("QUAIL_CLI_CONFIG", &config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run quail watch");
    let mut err = std::io::BufReader::new(watcher.stderr.take().expect("stderr"));
    let mut line = String::new();
    tokio::task::block_in_place(|| err.read_line(&mut line).expect("watch says it started"));
    assert!(line.contains("watching"), "{line}");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watcher.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    gateway.deliver(&support::to("alice@example.org"), &support::generated(77)).await.expect("deliver");
    let printed = tokio::task::block_in_place(|| rx.recv_timeout(std::time::Duration::from_secs(20)))
        .expect("quail watch printed the new mail");
    assert!(printed.starts_with("new") && printed.contains("generated message 77"), "{printed}");
    let _ = watcher.kill();
    let _ = watcher.wait();
}

/// `quail send` (now, later, with an attachment), `quail outbox` and
/// `quail cancel` (undo send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_outbox_and_cancel() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let server = support::start(&data).await;
    let config = dir.path().join("cli.toml");
    let addr = server.addr().to_string();
    let q = |args: &[&str], stdin: Option<&str>| quail(&data, &config, &addr, args, stdin);
    ok(q(&["admin", "user", "add", "alice"], Some("alice-password\n")));
    ok(q(&["admin", "user", "add", "bob"], Some("bob-password\n")));
    ok(q(&["login", "alice", "--password", "alice-password"], None));

    // Between accounts here: delivered before the command returns.
    let out = ok(q(&["send", "--to", "bob@localhost", "--subject", "Hi Bob"], Some("Hello, Bob.\n")));
    assert!(out.contains("delivered") && out.contains("bob@localhost"), "{out}");
    let client = support::connect(&server).await;
    let bob = client.login("bob", "bob-password").await.expect("login");
    let page = bob.query(&quail::Query::all()).await.expect("query");
    let (emails, _) = bob.get(&page.ids, &[]).await.expect("get");
    assert_eq!(emails.iter().map(|e| e.subject.as_str()).collect::<Vec<_>>(), vec!["Hi Bob"]);
    assert_eq!(emails[0].from[0].email, "alice@localhost");

    // Later, with an attachment: it waits in the outbox until cancelled.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "attached notes\n").expect("write");
    let out = ok(q(
        &["send", "--to", "carol@far.example", "--subject", "Later", "--body", "see attached", "--attach"]
            .iter()
            .copied()
            .chain([file.to_str().expect("path"), "--at", "+1h"])
            .collect::<Vec<_>>(),
        None,
    ));
    assert!(out.contains("sends at"), "{out}");
    let id: String = out.split_whitespace().nth(1).expect("id").trim_end_matches(':').to_owned();
    let out = ok(q(&["outbox"], None));
    assert!(
        out.contains(&format!("#{id}")) && out.contains("queued") && out.contains("carol@far.example"),
        "{out}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(q(&["--json", "outbox"], None))).expect("json");
    assert_eq!(json.as_array().map(Vec::len), Some(1));
    assert_eq!(json[0]["recipients"][0]["status"], "queued");
    let out = ok(q(&["cancel", &id], None));
    assert!(out.contains("cancelled") && out.contains("Drafts"), "{out}");
    assert!(ok(q(&["outbox"], None)).contains("the outbox is empty"));
    let out = ok(q(&["ls", "--mailbox", "drafts"], None));
    assert!(out.contains("Later"), "{out}");
    // Twice, and bad input: clear errors.
    let again = q(&["cancel", &id], None);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing left to withdraw"));
    let bad = q(&["send", "--to", "x@far.example", "--body", "b", "--at", "next tuesday-ish"], None);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--at"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let bad = q(&["send", "--to", "not an address", "--body", "b"], None);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an address"));
    server.shutdown().await;
}
