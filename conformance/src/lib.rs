//! Black-box conformance suite for Quail servers.
//!
//! It speaks only the wire protocol (QUIC, ALPN `quail/1`, stream-kind tags,
//! Cap'n Proto RPC with the schema of `quail-protocol`), so it tests any
//! server, in-process or remote, and survives refactors of ours.
//!
//! - [`Target`] — which server, from the environment.
//! - [`wire`] — a minimal client: QUIC connection, raw streams, RPC bootstrap.
//! - [`cases`] — the cases, each an async function of a target.
//! - [`run_all`] — runs them and reports `N passed, N failed`.
//!
//! Environment: `QUAIL_ADDR` (`host:port`), `QUAIL_FINGERPRINT` (hex SHA-256
//! of the server certificate), `QUAIL_ADMIN_SECRET` or
//! `QUAIL_ADMIN_SECRET_FILE`, `QUAIL_GATEWAY_SECRET` or
//! `QUAIL_GATEWAY_SECRET_FILE`. The suite creates accounts with random names
//! on the target.

pub mod cases;
pub mod wire;

use std::net::SocketAddr;

/// The server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its address.
    pub addr: SocketAddr,
    /// SHA-256 of its certificate, 32 bytes.
    pub fingerprint: [u8; 32],
    /// The admin credential.
    pub admin_secret: String,
    /// The gateway credential.
    pub gateway_secret: String,
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

fn secret(name: &str) -> Result<String, String> {
    if let Ok(s) = std::env::var(name) {
        return Ok(s.trim().to_owned());
    }
    let file = env(&format!("{name}_FILE")).map_err(|_| format!("set {name} or {name}_FILE"))?;
    std::fs::read_to_string(&file).map(|s| s.trim().to_owned()).map_err(|e| format!("reading {file}: {e}"))
}

impl Target {
    /// The target named by the environment.
    pub fn from_env() -> Result<Target, String> {
        let addr = env("QUAIL_ADDR")?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&addr)
            .map_err(|e| format!("QUAIL_ADDR {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("QUAIL_ADDR {addr} has no address"))?;
        Ok(Target {
            addr,
            fingerprint: parse_fingerprint(&env("QUAIL_FINGERPRINT")?)?,
            admin_secret: secret("QUAIL_ADMIN_SECRET")?,
            gateway_secret: secret("QUAIL_GATEWAY_SECRET")?,
        })
    }
}

/// 64 hex digits, `:` separators allowed.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let clean: String = s.trim().chars().filter(|c| *c != ':').collect();
    hex::decode(&clean)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| format!("fingerprint {s:?} is not 64 hex digits"))
}

/// Outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// Names of the cases that passed.
    pub passed: Vec<&'static str>,
    /// Names and reasons of those that failed.
    pub failed: Vec<(&'static str, String)>,
}

/// Runs every case whose name contains `filter` (all when `None`), printing
/// one line per case. Must run inside a `LocalSet` (capnp-rpc is `!Send`).
pub async fn run_all(target: &Target, filter: Option<&str>) -> Report {
    let mut report = Report::default();
    for case in cases::all() {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        match (case.run)(target.clone()).await {
            Ok(()) => {
                println!("ok   {}", case.name);
                report.passed.push(case.name);
            }
            Err(e) => {
                println!("FAIL {}: {e}", case.name);
                report.failed.push((case.name, e));
            }
        }
    }
    println!("{} passed, {} failed", report.passed.len(), report.failed.len());
    report
}
