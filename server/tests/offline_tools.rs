//! Operator tools on a stopped server's data dir, through the binary:
//! `quaild account add` then `quaild import` on a fresh data dir with no
//! server running; a Maildir holding Dovecot's and Courier's metadata
//! imports exactly its messages; the store an import leaves is as compact
//! as a served one.

#![cfg(unix)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const QUAILD: &str = env!("CARGO_BIN_EXE_quaild");

fn quaild(data: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(QUAILD)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quaild");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("quaild runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn message(n: u32) -> String {
    format!(
        "From: Sender <s{n}@example.net>\r\nTo: alice@example.org\r\nSubject: maildir message {n}\r\n\
         Message-ID: <md{n}@example.net>\r\nDate: Mon, 3 Feb 2025 10:00:00 +0000\r\n\r\nBody {n}.\r\n"
    )
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

/// A Maildir as Dovecot and Courier leave it: four messages, and their
/// metadata files beside them; plus, as mail trees (notmuch's) have them,
/// a message beside cur/ and a plain folder with one more.
fn maildir(root: &Path) {
    write(&root.join("cur/1700000001.M1P1.host:2,S"), &message(1));
    write(&root.join("cur/1700000002.M2P1.host:2,FS"), &message(2));
    write(&root.join("new/1700000003.M3P1.host"), &message(3));
    write(&root.join(".Work/cur/1700000004.M4P1.host:2,"), &message(4));
    write(&root.join("loose-message"), &message(5));
    write(&root.join("Courier/2019/a-message"), &message(7));
    write(&root.join("Courier/2019/index.db"), "\u{0}\u{1}binary");
    // Not mail:
    write(&root.join("cur/1700000005.M5P1.host:2,"), ""); // 0 bytes
    write(&root.join("tmp/1700000006.M6P1.host"), &message(6)); // delivery in progress
    write(&root.join("dovecot-uidlist"), "3 V1700000000 N4 G0123456789abcdef\n1 :1700000001.M1P1.host\n");
    write(&root.join("dovecot-uidvalidity"), "65f1a2b3\n");
    write(&root.join("dovecot-uidvalidity.65f1a2b3"), "");
    write(&root.join("dovecot.index.log"), "\u{1}\u{2}binary index log");
    write(&root.join("dovecot-keywords"), "0 $Junk\n");
    write(&root.join("subscriptions"), "Work\n");
    write(&root.join("courierimapuiddb"), "1 1700000000 4\n");
    write(&root.join("courierimapkeywords/:list"), "$Label1\n");
    write(&root.join(".Work/maildirfolder"), "");
    write(&root.join(".Work/dovecot-uidlist"), "3 V1 N2\n");
    write(&root.join(".Work/courierimapacl"), "owner aceilrstwx\n");
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            let path = e.path();
            n += if path.is_dir() { dir_bytes(&path) } else { e.metadata().map_or(0, |m| m.len()) };
        }
    }
    n
}

#[test]
fn account_add_then_import_on_a_fresh_data_dir() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let mail = dir.path().join("Maildir");
    maildir(&mail);

    let (ok, out) = quaild(&data, &["account", "add", "alice", "--password-stdin"], "alice-password\n");
    assert!(ok, "{out}");
    assert!(out.contains("created account alice"), "{out}");
    let (ok, out) = quaild(&data, &["account", "add", "alice", "--password-stdin"], "alice-password\n");
    assert!(!ok && out.contains("exists"), "a second add is refused: {out}");
    let (ok, out) = quaild(&data, &["account", "add", "bob", "--password-stdin"], "short\n");
    assert!(!ok && out.contains("passwords are"), "{out}");

    let (ok, out) = quaild(&data, &["import", "--account", "alice", mail.to_str().expect("utf-8")], "");
    assert!(ok, "{out}");
    assert!(out.contains("imported 6 of 6 messages"), "exactly the Maildir's messages: {out}");

    let (ok, out) = quaild(&data, &["account", "list"], "");
    assert!(ok, "{out}");
    let row = out.lines().find(|l| l.starts_with("alice")).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(row.split_whitespace().nth(1), Some("6"), "{row}");
    let (ok, out) = quaild(&data, &["account", "quota", "alice", "--bytes", "1000000"], "");
    assert!(ok, "{out}");
    let (ok, out) = quaild(&data, &["account", "passwd", "alice", "--password-stdin"], "a new password\n");
    assert!(ok, "{out}");
    let (ok, out) = quaild(&data, &["account", "passwd", "nobody", "--password-stdin"], "a new password\n");
    assert!(!ok && out.contains("no account"), "{out}");

    let (ok, out) = quaild(&data, &["check"], "");
    assert!(ok && out.contains("clean"), "{out}");
    let (ok, out) = quaild(&data, &["export", "--account", "alice"], "");
    assert!(ok, "{out}");
    assert_eq!(out.matches("Subject: maildir message").count(), 6, "{out}");
    for n in [1, 2, 3, 4, 5, 7] {
        assert!(out.contains(&format!("maildir message {n}")));
    }
}

#[test]
fn an_imported_store_is_as_compact_as_a_served_one() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let mbox = dir.path().join("archive.mbox");
    let mut text = String::new();
    for n in 0..3000 {
        text.push_str("From sender@example.net Mon Feb  3 10:00:00 2025\n");
        text.push_str(&message(n).replace("\r\n", "\n"));
        text.push_str(&format!("{}\n\n", "Some words that make a message of ordinary size. ".repeat(20)));
    }
    std::fs::write(&mbox, text).expect("write mbox");
    assert!(quaild(&data, &["account", "add", "alice", "--password-stdin"], "alice-password\n").0);
    let (ok, out) = quaild(&data, &["import", "--account", "alice", mbox.to_str().expect("utf-8")], "");
    assert!(ok && out.contains("imported 3000 of 3000"), "{out}");
    let after_import = dir_bytes(&data.join("store"));

    // A served start and a clean stop, as an operator would do next.
    let mut server = Command::new(QUAILD)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Up and serving (its signal handler installed) before it is stopped.
    {
        use std::io::BufRead;
        let out = std::io::BufReader::new(server.stdout.take().expect("stdout"));
        let mut lines = out.lines();
        assert!(lines.any(|l| l.is_ok_and(|l| l.contains("press Ctrl-C"))), "quaild did not start");
        std::thread::spawn(move || lines.for_each(drop));
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").arg("-TERM").arg(server.id().to_string()).status();
    assert!(server.wait().expect("wait").success());
    let after_serving = dir_bytes(&data.join("store"));
    eprintln!("store after import: {after_import} bytes; after a served start and stop: {after_serving}");
    assert!(
        after_serving as f64 >= after_import as f64 * 0.95,
        "the first start shrank the store from {after_import} to {after_serving} bytes"
    );
}

#[test]
fn train_builds_the_global_spam_model_from_folders_offline() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let (spam, ham) = (dir.path().join("spam"), dir.path().join("ham"));
    for i in 0..3 {
        write(
            &spam.join(format!("s{i}")),
            &format!("From: Deals <deals{i}@offers.example>\r\nSubject: cheap pills {i}\r\n\r\nbuy now\r\n"),
        );
    }
    for i in 0..5 {
        write(&ham.join(format!("cur/h{i}")), &message(i));
    }
    let (ok, out) = quaild(&data, &["train", "--ham", ham.to_str().expect("path")], "");
    assert!(!ok && out.contains("holds no store"), "a data dir without a store is named: {out}");
    let (ok, out) = quaild(&data, &["account", "add", "alice", "--password-stdin"], "alice-password\n");
    assert!(ok, "{out}");
    let (ok, out) = quaild(&data, &["train"], "");
    assert!(!ok && out.contains("nothing to train on"), "{out}");
    let (ok, out) = quaild(
        &data,
        &["train", "--spam", spam.to_str().expect("path"), "--ham", ham.to_str().expect("path")],
        "",
    );
    assert!(ok, "{out}");
    assert!(out.contains("trained 3 spam messages"), "{out}");
    assert!(out.contains("trained 5 ham messages"), "{out}");
    assert!(out.contains("global spam model: 3 spam, 5 ham"), "{out}");
    // Training adds up: the same spam again counts again.
    let (ok, out) = quaild(&data, &["train", "--spam", spam.to_str().expect("path")], "");
    assert!(ok && out.contains("global spam model: 6 spam, 5 ham"), "{out}");
    let missing = dir.path().join("no-such-folder");
    let (ok, out) = quaild(&data, &["train", "--ham", missing.to_str().expect("path")], "");
    assert!(!ok && out.contains("no-such-folder"), "a missing path is named: {out}");
}
