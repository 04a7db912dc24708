//! Shared by the tests that run quaild as its own process (to read its
//! memory from /proc, or to kill it): start it, find its address, read
//! its status.

#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// The quaild built for these tests.
pub const QUAILD: &str = env!("CARGO_BIN_EXE_quaild");

/// A field of /proc/PID/status, in bytes (`VmRSS:`, `VmHWM:`).
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The address quaild prints once it listens; what it prints later is
/// read and dropped so its pipe never fills.
pub async fn listening(stdout: ChildStdout) -> String {
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read quaild's stdout") {
            if let Some(rest) = line.split("listening on ").nth(1) {
                return rest.split_whitespace().next().expect("address").to_owned();
            }
        }
        panic!("quaild exited before listening");
    })
    .await
    .expect("quaild starts within 30 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    addr
}

/// quaild on 127.0.0.1 (any port) with its data in `data`, logging
/// warnings to nowhere; killed when dropped.
pub async fn start(data: &Path) -> (Child, String) {
    let mut child = Command::new(QUAILD)
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn quaild");
    let addr = listening(child.stdout.take().expect("stdout")).await;
    (child, addr)
}
