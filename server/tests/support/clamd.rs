//! A real clamd for tests: Debian's `clamav-daemon`, started in the
//! foreground on a socket in a temp dir, with a signature database written
//! at run time (there is no network, so no freshclam): an `.hdb` line for
//! EICAR's MD5 and `.ndb` body signatures for EICAR and ClamAV's test file.
//! Stopped by its PID. Where clamd is missing, tests skip outside CI and
//! fail in CI.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EICAR_HEX: &str = "58354f2150254041505b345c505a58353428505e2937434329377d2445494341522d5354414e444152442d414e544956495255532d544553542d46494c452124482b482a";
const CLAMAV_TEST_HEX: &str = "bb7110400033c050508bf3535350b02940300466ac79f9ba3100780dad50ff66700e1fbe3100e9e5ffb409cd21b44ccd21620c0a0102707617021e4e0c042fda";

/// The clamd binary, if installed.
fn binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    // Debian installs daemons in sbin, which a non-root PATH may lack.
    dirs.push("/usr/sbin".into());
    dirs.into_iter().map(|d| d.join("clamd")).find(|p| p.is_file())
}

/// Whether clamd can run here; outside CI a missing clamd skips `test`
/// (with a note), in CI it fails it.
pub fn available(test: &str) -> bool {
    if binary().is_some() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: clamd is not installed, and CI is set (.ci/run installs clamav-daemon)");
    }
    eprintln!("NOTE {test}: SKIPPED: clamd is not installed (apt-get install clamav-daemon)");
    false
}

/// A running clamd.
pub struct Clamd {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Clamd {
    /// Starts clamd and waits until it answers PING.
    pub fn start() -> Clamd {
        // A short path: a unix socket's path must be under 108 bytes.
        let dir = tempfile::Builder::new().prefix("qclamd").tempdir_in(std::env::temp_dir()).expect("dir");
        let db = dir.path().join("db");
        std::fs::create_dir(&db).expect("db dir");
        std::fs::write(db.join("quail.hdb"), "44d88612fea8a8f36de82e1278abb02f:68:Quail.Test.EICAR.MD5\n")
            .expect("hdb");
        std::fs::write(
            db.join("quail.ndb"),
            format!("Quail.Test.EICAR:0:*:{EICAR_HEX}\nQuail.Test.ClamAVTestFile:0:*:{CLAMAV_TEST_HEX}\n"),
        )
        .expect("ndb");
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("clamd.conf"),
            format!(
                "Foreground yes\nLocalSocket {d}/clamd.sock\nFixStaleSocket yes\nDatabaseDirectory {d}/db\n\
                 PidFile {d}/clamd.pid\nLogFile {d}/clamd.log\nTemporaryDirectory {d}\nStreamMaxLength 25M\n\
                 MaxThreads 2\n"
            ),
        )
        .expect("conf");
        let mut c = Clamd { dir, child: None };
        c.spawn();
        c
    }

    /// `unix:` address of its socket, for the filter settings.
    pub fn address(&self) -> String {
        format!("unix:{}", self.socket().display())
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("clamd.sock")
    }

    fn spawn(&mut self) {
        let child = Command::new(binary().expect("clamd"))
            .arg("-c")
            .arg(self.dir.path().join("clamd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clamd starts");
        self.child = Some(child);
        let started = Instant::now();
        while !ping(&self.socket()) {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let log = std::fs::read_to_string(self.dir.path().join("clamd.log")).unwrap_or_default();
                panic!("clamd exited ({status}): {log}");
            }
            assert!(started.elapsed() < Duration::from_secs(60), "clamd did not answer PING in 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it (by its PID).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Starts it again after [`Clamd::stop`].
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ping(socket: &Path) -> bool {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reply = [0u8; 5];
    s.write_all(b"zPING\0").is_ok() && s.read_exact(&mut reply).is_ok() && &reply == b"PONG\0"
}
