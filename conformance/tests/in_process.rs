//! Runs every conformance case against an in-process server on loopback,
//! one test per case, and the binary against it once.

use quail_conformance::{Target, cases};
use quail_server::account::Credential;
use quail_server::{Config, Running, Server};

async fn target(dir: &std::path::Path) -> (Running, Target) {
    let server = Server::start(Config::ephemeral(dir)).await.expect("server");
    let target = Target {
        addr: server.addr(),
        fingerprint: quail_conformance::parse_fingerprint(server.fingerprint()).expect("fp"),
        admin_secret: server.secret(Credential::Admin).expect("admin"),
        gateway_secret: server.secret(Credential::Gateway).expect("gateway"),
    };
    (server, target)
}

async fn run_case(name: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let (server, target) = target(dir.path()).await;
    let case = cases::all().into_iter().find(|c| c.name == name).expect("case exists");
    let result = tokio::task::LocalSet::new().run_until((case.run)(target)).await;
    server.shutdown().await;
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

macro_rules! case_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run_case(stringify!($name)).await;
            }
        )*

        #[test]
        fn every_case_has_a_test() {
            let listed = [$(stringify!($name)),*];
            for c in cases::all() {
                assert!(listed.contains(&c.name), "case {} has no test here", c.name);
            }
        }
    };
}

case_tests!(
    hello_announces_version_limits_and_features,
    alpn_quail_1_is_required,
    login_with_password_gives_a_session,
    bad_credentials_never_reveal_which_part_was_wrong,
    service_credentials_are_checked,
    failed_login_propagates_through_a_pipeline,
    deliver_then_query_get_and_raw,
    accounts_are_isolated,
    unserved_methods_fail_with_typed_unimplemented,
    report_spam_files_in_junk_and_back_for_the_owner_only,
    announced_limits_are_enforced,
    gateway_refuses_bad_deliveries,
    unknown_stream_tag_resets_only_that_stream,
    garbage_on_an_rpc_stream_closes_only_that_connection,
    oversized_message_closes_the_connection_with_limit,
    hostile_bulk_requests_get_typed_errors,
);

/// The binary, pointed at a server by the environment, prints its tally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_runs_against_a_server_address() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, target) = target(dir.path()).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_quail-conformance"))
        .env("QUAIL_ADDR", target.addr.to_string())
        .env("QUAIL_FINGERPRINT", server.fingerprint())
        .env("QUAIL_ADMIN_SECRET", &target.admin_secret)
        .env("QUAIL_GATEWAY_SECRET_FILE", dir.path().join("gateway.secret"))
        .output()
        .await
        .expect("run binary");
    server.shutdown().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let total = cases::all().len();
    assert!(stdout.contains(&format!("{total} passed, 0 failed")), "output:\n{stdout}");
    assert!(out.status.success());
}

/// The same gateway case with a message limit small enough that an
/// oversized message fits in one RPC message, so that refusal is exercised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refuses_an_oversized_message() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config::ephemeral(dir.path());
    config.limits.max_message_bytes = 64 * 1024;
    let server = Server::start(config).await.expect("server");
    let target = Target {
        addr: server.addr(),
        fingerprint: quail_conformance::parse_fingerprint(server.fingerprint()).expect("fp"),
        admin_secret: server.secret(Credential::Admin).expect("admin"),
        gateway_secret: server.secret(Credential::Gateway).expect("gateway"),
    };
    let case = cases::all().into_iter().find(|c| c.name == "gateway_refuses_bad_deliveries").expect("case");
    let result = tokio::task::LocalSet::new().run_until((case.run)(target)).await;
    server.shutdown().await;
    result.expect("gateway_refuses_bad_deliveries");
}
