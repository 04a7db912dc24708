//! Runs the conformance suite against the server the environment names.
//!
//! `QUAIL_ADDR=127.0.0.1:4433 QUAIL_FINGERPRINT=... QUAIL_ADMIN_SECRET_FILE=quail-data/admin.secret \
//!  QUAIL_GATEWAY_SECRET_FILE=quail-data/gateway.secret quail-conformance [FILTER]`

fn main() {
    let target = match quail_conformance::Target::from_env() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("quail-conformance: {e}");
            std::process::exit(2);
        }
    };
    let filter = std::env::args().nth(1);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quail-conformance: runtime: {e}");
            std::process::exit(2);
        }
    };
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&runtime, quail_conformance::run_all(&target, filter.as_deref()));
    std::process::exit(if report.failed.is_empty() { 0 } else { 1 });
}
