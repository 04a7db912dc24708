//! SMTP end to end (a bench binary: it prints figures, it asserts nothing).
//!
//! `cargo bench -p quail-smtp --bench smtp` (needs Postfix's smtp-source).
//! `smtp-source -s 20 -m 5000 -l 10240` into quail-smtpd and a Quail server
//! in this process, durable before each 250; messages/s beside the load
//! average, first into an empty account, then into one already holding
//! 100,000 messages (`QUAIL_BENCH_PRELOAD` to change).

use std::time::Instant;

use quail::Trust;
use quail_server::account::Credential;
use quail_server::mail::Role;
use quail_server::mail::ingest::{self, ImportItem, Placement};
use quail_server::{Config, Server};
use quail_smtp::server::{self, Options, Upstream};

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(tool) = ["/usr/sbin/smtp-source", "/usr/bin/smtp-source"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        println!("smtp: smtp-source is not installed (apt-get install postfix); nothing measured");
        return;
    };
    let preload: usize =
        std::env::var("QUAIL_BENCH_PRELOAD").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let server = Server::start(Config::ephemeral(dir.path())).await.expect("server");
    let pin: quail::Fingerprint = server.fingerprint().parse().expect("pin");
    let client =
        quail::Client::connect(&server.addr().to_string(), Trust::Pinned(pin)).await.expect("connect");
    let admin = client.admin(&server.secret(Credential::Admin).expect("secret")).await.expect("admin");
    let empty = admin.create_account("empty", "bench-password", 0, 0).await.expect("create");
    let full = admin.create_account("full", "bench-password", 0, 0).await.expect("create");
    let options = Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        hostname: "mx.bench".into(),
        tls: None,
        max_connections_per_ip: 64,
        max_messages_per_minute_per_ip: u32::MAX,
        verifier: None,
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
    let target = format!("127.0.0.1:{}", smtp.addr().port());

    // The second account gets its history first.
    let mail = &server.services().mail;
    let account = quail_server::account::AccountId(full.id);
    let inbox = mail.mailbox_by_role(account, Role::Inbox).expect("inbox");
    let t = Instant::now();
    let mut done = 0;
    while done < preload {
        let items: Vec<ImportItem> = (done..(done + 1000).min(preload))
            .map(|i| ImportItem {
                prepared: ingest::prepare(
                    format!(
                        "From: Old <old{i}@example.net>\r\nTo: full@example.org\r\nSubject: old {i}\r\n\
                         Message-ID: <old{i}@example.net>\r\n\r\nAn older message, number {i}.\r\n"
                    )
                    .as_bytes(),
                )
                .expect("prepare"),
                placement: Placement { mailboxes: vec![inbox], keywords: Vec::new(), received_ms: i as i64 },
            })
            .collect();
        done += items.len();
        mail.import(account, &items).await.expect("import");
    }
    if preload > 0 {
        println!("preloaded {preload} messages into `full` in {:.1} s", t.elapsed().as_secs_f64());
    }

    for name in ["empty", "full"] {
        let started = Instant::now();
        let out = tokio::process::Command::new(tool)
            .args(["-s", "20", "-m", "5000", "-l", "10240", "-M", "bench.example"])
            .args(["-f", "bench@example.net", "-t", &format!("{name}@example.org"), &target])
            .output()
            .await
            .expect("smtp-source");
        let secs = started.elapsed().as_secs_f64();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        println!(
            "smtp-source -s 20 -m 5000 -l 10240 into `{name}` ({}): {:.0} msg/s ({secs:.1} s), load average {}",
            if name == "full" { format!("{preload} messages already there") } else { "empty".into() },
            5000.0 / secs,
            load_average()
        );
    }
    let _ = empty;
    let metrics = server.store_metrics();
    println!("store: {} commits, {} fsyncs", metrics.commits, metrics.fsyncs);
    smtp.stop();
    server.shutdown().await;
}
