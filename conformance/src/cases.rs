//! The conformance cases. Each takes a [`Target`] and returns `Err(reason)`
//! on the first broken expectation.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use quail_protocol::quail_capnp::{Role, byte_run, delivery_result, quail, session};
use quail_protocol::{
    ErrorCode, PROTOCOL_VERSION, StreamKind, close_code, error_code_name, error_from_capnp,
};
use rand::RngCore;

use crate::Target;
use crate::wire;

/// What a case returns.
pub type Outcome = Result<(), String>;
type CaseFuture = Pin<Box<dyn Future<Output = Outcome>>>;

/// One case.
#[derive(Debug)]
pub struct Case {
    /// Its name.
    pub name: &'static str,
    /// Runs it.
    pub run: fn(Target) -> CaseFuture,
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, in order.
        pub fn all() -> Vec<Case> {
            vec![$(Case { name: stringify!($name), run: |t| Box::pin($name(t)) }),*]
        }
    };
}

cases!(
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

/// How long any single expectation may take.
const STEP: Duration = Duration::from_secs(10);

const BASIC_EML: &[u8] = include_bytes!("../vectors/basic.eml");

fn fail<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{context}: {e}")
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Outcome {
    if cond { Ok(()) } else { Err(msg()) }
}

fn code_of(e: &capnp::Error) -> Option<ErrorCode> {
    error_from_capnp(e).map(|(c, _)| c)
}

fn expect_code<T>(r: Result<T, capnp::Error>, want: ErrorCode, what: &str) -> Result<capnp::Error, String> {
    match r {
        Ok(_) => Err(format!("{what}: succeeded, expected {}", error_code_name(want))),
        Err(e) if code_of(&e) == Some(want) => Ok(e),
        Err(e) => Err(format!("{what}: expected {}, got {e}", error_code_name(want))),
    }
}

fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    rand::rng().fill_bytes(&mut b);
    format!("{prefix}-{}", hex::encode(b))
}

async fn bootstrap(target: &Target) -> Result<(wire::Conn, quail::Client), String> {
    let conn = wire::connect(target).await?;
    let boot = conn.rpc().await?;
    Ok((conn, boot))
}

async fn hello(boot: &quail::Client) -> Result<Vec<String>, String> {
    let mut req = boot.hello_request();
    req.get().set_client_name("quail-conformance");
    req.get().set_client_versions(&[PROTOCOL_VERSION][..]).map_err(fail("hello params"))?;
    let resp = tokio::time::timeout(STEP, req.send().promise)
        .await
        .map_err(fail("hello timed out"))?
        .map_err(fail("hello"))?;
    let info = resp.get().map_err(fail("hello results"))?.get_info().map_err(fail("info"))?;
    info.get_features()
        .map_err(fail("features"))?
        .iter()
        .map(|f| f.map_err(fail("feature"))?.to_string().map_err(fail("feature utf-8")))
        .collect()
}

/// Creates an account with a random name; returns (name, password).
async fn new_account(boot: &quail::Client, target: &Target) -> Result<(String, String), String> {
    let name = unique("conf");
    let password = unique("pw");
    let mut req = boot.admin_request();
    req.get().set_secret(target.admin_secret.as_str());
    let admin = req.send().pipeline.get_admin();
    let mut create = admin.create_account_request();
    create.get().set_name(name.as_str());
    create.get().set_password(password.as_str());
    create.send().promise.await.map_err(fail("createAccount"))?;
    Ok((name, password))
}

async fn login(boot: &quail::Client, name: &str, password: &str) -> Result<session::Client, capnp::Error> {
    let mut req = boot.login_request();
    req.get().set_name(name);
    req.get().set_secret(password);
    let resp = req.send().promise.await?;
    resp.get()?.get_session()
}

/// Delivers `raw` to one recipient through the gateway; returns the email id.
async fn deliver(boot: &quail::Client, target: &Target, rcpt: &str, raw: &[u8]) -> Result<u64, String> {
    let mut req = boot.gateway_request();
    req.get().set_secret(target.gateway_secret.as_str());
    let gateway = req.send().pipeline.get_gateway();
    let mut d = gateway.deliver_request();
    {
        let mut env = d.get().init_envelope();
        env.set_mail_from("conformance@example.net");
        let mut rcpts = env.init_rcpt_to(1);
        rcpts.set(0, rcpt);
    }
    d.get().set_raw(raw);
    let resp = d.send().promise.await.map_err(fail("deliver"))?;
    let results = resp.get().map_err(fail("deliver results"))?.get_results().map_err(fail("results"))?;
    ensure(results.len() == 1, || format!("deliver: {} results for 1 recipient", results.len()))?;
    match results.get(0).which().map_err(fail("result"))? {
        delivery_result::Which::Delivered(id) => Ok(id),
        delivery_result::Which::Error(e) => {
            let e = e.map_err(fail("error"))?;
            Err(format!(
                "deliver to {rcpt}: {:?} {}",
                e.get_code().map(error_code_name),
                e.get_message().ok().and_then(|m| m.to_string().ok()).unwrap_or_default()
            ))
        }
    }
}

async fn raw_bytes(session: &session::Client, id: u64) -> Result<Vec<u8>, capnp::Error> {
    let mut out = Vec::new();
    loop {
        let mut req = session.raw_request();
        req.get().set_id(id);
        req.get().init_range().set_offset(out.len() as u64);
        let resp = req.send().promise.await?;
        let run = resp.get()?.get_bytes()?;
        match run.which()? {
            byte_run::Which::Inline(d) => out.extend_from_slice(d?),
            byte_run::Which::BulkToken(_) => {
                return Err(capnp::Error::failed("bulk token for a small message".into()));
            }
        }
        if out.len() as u64 >= run.get_total_size() {
            return Ok(out);
        }
    }
}

async fn hello_announces_version_limits_and_features(target: Target) -> Outcome {
    let (_conn, boot) = bootstrap(&target).await?;
    let resp = boot.hello_request().send().promise.await.map_err(fail("hello"))?;
    let info = resp.get().map_err(fail("results"))?.get_info().map_err(fail("info"))?;
    let versions: Vec<u32> = info.get_versions().map_err(fail("versions"))?.iter().collect();
    ensure(versions.contains(&PROTOCOL_VERSION), || {
        format!("versions {versions:?} lack {PROTOCOL_VERSION}")
    })?;
    let l = info.get_limits().map_err(fail("limits"))?;
    ensure(
        l.get_max_rpc_message_bytes() > 0
            && l.get_max_message_bytes() > 0
            && l.get_max_inline_bytes() > 0
            && l.get_max_ids_per_call() > 0
            && l.get_max_query_limit() > 0,
        || "a limit is zero".into(),
    )?;
    let features = hello(&boot).await?;
    for needed in ["Quail.hello", "Quail.login", "Session.query", "Session.get", "Gateway.deliver"] {
        ensure(features.iter().any(|f| f == needed), || format!("features lack {needed}"))?;
    }
    Ok(())
}

async fn alpn_quail_1_is_required(target: Target) -> Outcome {
    match wire::connect_with_alpn(&target, vec![b"h3".to_vec()]).await {
        Err(_) => Ok(()),
        Ok(conn) => {
            // Some stacks finish the handshake and close at once.
            let closed = tokio::time::timeout(STEP, conn.quic.closed()).await;
            ensure(closed.is_ok(), || "a connection without ALPN quail/1 stayed open".into())
        }
    }
}

async fn login_with_password_gives_a_session(target: Target) -> Outcome {
    let (_conn, boot) = bootstrap(&target).await?;
    let (name, password) = new_account(&boot, &target).await?;
    let session = login(&boot, &name, &password).await.map_err(fail("login"))?;
    let resp = session.account_request().send().promise.await.map_err(fail("account"))?;
    let account = resp.get().map_err(fail("results"))?.get_account().map_err(fail("account"))?;
    let got = account.get_name().map_err(fail("name"))?.to_string().map_err(fail("utf-8"))?;
    ensure(got == name, || format!("session is for {got}, not {name}"))?;
    let resp = session.mailboxes_request().send().promise.await.map_err(fail("mailboxes"))?;
    let boxes = resp.get().map_err(fail("results"))?.get_mailboxes().map_err(fail("list"))?;
    let has_inbox = boxes.iter().any(|m| m.get_role() == Ok(Role::Inbox));
    ensure(has_inbox, || "a new account has no inbox".into())
}

async fn bad_credentials_never_reveal_which_part_was_wrong(target: Target) -> Outcome {
    let (_conn, boot) = bootstrap(&target).await?;
    let (name, _) = new_account(&boot, &target).await?;
    let wrong = expect_code(
        login(&boot, &name, "wrong-password").await,
        ErrorCode::BadCredentials,
        "wrong password",
    )?;
    let unknown = expect_code(
        login(&boot, &unique("nobody"), "wrong-password").await,
        ErrorCode::BadCredentials,
        "unknown user",
    )?;
    ensure(error_from_capnp(&wrong) == error_from_capnp(&unknown), || {
        format!("wrong password says {:?} but unknown user says {:?}", wrong.extra, unknown.extra)
    })
}

async fn service_credentials_are_checked(target: Target) -> Outcome {
    let (_conn, boot) = bootstrap(&target).await?;
    let mut req = boot.admin_request();
    req.get().set_secret("not-the-admin-secret");
    expect_code(req.send().promise.await, ErrorCode::BadCredentials, "admin with a wrong secret")?;
    let mut req = boot.gateway_request();
    req.get().set_secret("not-the-gateway-secret");
    expect_code(req.send().promise.await, ErrorCode::BadCredentials, "gateway with a wrong secret")?;
    let mut req = boot.gateway_request();
    req.get().set_secret(target.admin_secret.as_str());
    expect_code(req.send().promise.await, ErrorCode::BadCredentials, "gateway with the admin secret")?;
    Ok(())
}

async fn failed_login_propagates_through_a_pipeline(target: Target) -> Outcome {
    let (_conn, boot) = bootstrap(&target).await?;
    let mut req = boot.login_request();
    req.get().set_name(unique("nobody").as_str());
    req.get().set_secret("wrong-password");
    let session = req.send().pipeline.get_session();
    let r = session.mailboxes_request().send().promise.await;
    expect_code(r, ErrorCode::BadCredentials, "mailboxes on a failed login's session")?;
    Ok(())
}

async fn deliver_then_query_get_and_raw(target: Target) -> Outcome {
    let (_conn, boot) = bootstrap(&target).await?;
    let (name, password) = new_account(&boot, &target).await?;
    let first = deliver(&boot, &target, &name, b"Subject: first\r\n\r\nearlier\r\n").await?;
    let id = deliver(&boot, &target, &name, BASIC_EML).await?;
    let session = login(&boot, &name, &password).await.map_err(fail("login"))?;

    let mut q = session.query_request();
    q.get().init_query().set_limit(10);
    let resp = q.send().promise.await.map_err(fail("query"))?;
    let r = resp.get().map_err(fail("results"))?.get_result().map_err(fail("result"))?;
    let ids: Vec<u64> = r.get_ids().map_err(fail("ids"))?.iter().collect();
    ensure(ids == vec![id, first], || format!("query gave {ids:?}, expected newest first [{id}, {first}]"))?;
    ensure(r.get_total() == 2, || format!("total {}", r.get_total()))?;

    let mut g = session.get_request();
    g.get().set_ids(&[id][..]).map_err(fail("ids"))?;
    let resp = g.send().promise.await.map_err(fail("get"))?;
    let emails = resp.get().map_err(fail("results"))?.get_emails().map_err(fail("emails"))?;
    ensure(emails.len() == 1, || format!("{} emails for one id", emails.len()))?;
    let e = emails.get(0);
    let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, String> {
        t.map_err(fail("text"))?.to_string().map_err(fail("utf-8"))
    };
    ensure(text(e.get_subject())? == "Quarterly report — draft", || "subject not decoded".into())?;
    let from = e.get_from().map_err(fail("from"))?;
    ensure(from.len() == 1, || "one From address".into())?;
    ensure(text(from.get(0).get_name())? == "Alice Åberg", || "From name not decoded".into())?;
    ensure(text(from.get(0).get_email())? == "alice@example.org", || "From address".into())?;
    ensure(e.get_to().map_err(fail("to"))?.len() == 2, || "two To addresses".into())?;
    ensure(e.get_sent_at() == 1_741_768_200_000, || format!("sentAt {}", e.get_sent_at()))?;
    ensure(text(e.get_message_id())? == "conformance-basic-1@example.org", || "messageId".into())?;
    ensure(e.get_size() == BASIC_EML.len() as u64, || "size".into())?;
    ensure(text(e.get_preview())?.starts_with("Hi Bob, here is the draft"), || "preview".into())?;

    let raw = raw_bytes(&session, id).await.map_err(fail("raw"))?;
    ensure(raw == BASIC_EML, || "raw bytes differ from what was delivered".into())
}

async fn accounts_are_isolated(target: Target) -> Outcome {
    let (_conn, boot) = bootstrap(&target).await?;
    let (a, pa) = new_account(&boot, &target).await?;
    let (b, _) = new_account(&boot, &target).await?;
    let bobs = deliver(&boot, &target, &b, BASIC_EML).await?;
    let session = login(&boot, &a, &pa).await.map_err(fail("login"))?;
    let mut g = session.get_request();
    g.get().set_ids(&[bobs][..]).map_err(fail("ids"))?;
    let resp = g.send().promise.await.map_err(fail("get"))?;
    let r = resp.get().map_err(fail("results"))?;
    ensure(r.get_emails().map_err(fail("emails"))?.is_empty(), || "got another account's email".into())?;
    let nf: Vec<u64> = r.get_not_found().map_err(fail("notFound"))?.iter().collect();
    ensure(nf == vec![bobs], || format!("notFound {nf:?}"))?;
    expect_code(raw_bytes(&session, bobs).await, ErrorCode::NotFound, "raw of another account's email")?;
    Ok(())
}

async fn unserved_methods_fail_with_typed_unimplemented(target: Target) -> Outcome {
    let (_conn, boot) = bootstrap(&target).await?;
    let features = hello(&boot).await?;
    if features.iter().any(|f| f == "Session.reportSpam") {
        return Ok(()); // served: nothing to check here
    }
    let (name, password) = new_account(&boot, &target).await?;
    let session = login(&boot, &name, &password).await.map_err(fail("login"))?;
    let mut req = session.report_spam_request();
    req.get().set_is_spam(true);
    expect_code(req.send().promise.await, ErrorCode::Unimplemented, "reportSpam on a server without it")?;
    Ok(())
}

/// (Junk, Inbox) totals of the account.
async fn junk_and_inbox(session: &session::Client) -> Result<(u32, u32), String> {
    let resp = session.mailboxes_request().send().promise.await.map_err(fail("mailboxes"))?;
    let boxes = resp.get().map_err(fail("results"))?.get_mailboxes().map_err(fail("list"))?;
    let total = |role: Role| boxes.iter().find(|m| m.get_role() == Ok(role)).map_or(0, |m| m.get_total());
    Ok((total(Role::Junk), total(Role::Inbox)))
}

async fn report_spam(
    session: &session::Client,
    ids: &[u64],
    is_spam: bool,
) -> Result<(Vec<u64>, Vec<(u64, Option<ErrorCode>)>), String> {
    let mut req = session.report_spam_request();
    req.get().set_ids(ids).map_err(fail("ids"))?;
    req.get().set_is_spam(is_spam);
    let resp = req.send().promise.await.map_err(fail("reportSpam"))?;
    let r = resp.get().map_err(fail("results"))?.get_result().map_err(fail("result"))?;
    let updated = r.get_updated().map_err(fail("updated"))?.iter().collect();
    let mut refused = Vec::new();
    for e in r.get_not_updated().map_err(fail("notUpdated"))?.iter() {
        refused.push((e.get_id(), e.get_error().ok().and_then(|x| x.get_code().ok())));
    }
    Ok((updated, refused))
}

async fn report_spam_files_in_junk_and_back_for_the_owner_only(target: Target) -> Outcome {
    let (_conn, boot) = bootstrap(&target).await?;
    if !hello(&boot).await?.iter().any(|f| f == "Session.reportSpam") {
        return Ok(()); // not served: the unserved-methods case checks the error
    }
    let (a, pa) = new_account(&boot, &target).await?;
    let (b, _) = new_account(&boot, &target).await?;
    let own = deliver(&boot, &target, &a, BASIC_EML).await?;
    let bobs = deliver(&boot, &target, &b, BASIC_EML).await?;
    let session = login(&boot, &a, &pa).await.map_err(fail("login"))?;
    let before = junk_and_inbox(&session).await?;
    ensure(before == (0, 1), || format!("(Junk, Inbox) before the report: {before:?}"))?;

    let (updated, refused) = report_spam(&session, &[own, bobs], true).await?;
    ensure(updated == vec![own], || format!("updated {updated:?}"))?;
    ensure(refused == vec![(bobs, Some(ErrorCode::NotFound))], || {
        format!("another account's id: {refused:?}")
    })?;
    let after = junk_and_inbox(&session).await?;
    ensure(after == (1, 0), || format!("(Junk, Inbox) after reporting spam: {after:?}"))?;

    let (updated, _) = report_spam(&session, &[own], false).await?;
    ensure(updated == vec![own], || format!("updated {updated:?}"))?;
    let back = junk_and_inbox(&session).await?;
    ensure(back == (0, 1), || format!("(Junk, Inbox) after reporting not spam: {back:?}"))
}

async fn announced_limits_are_enforced(target: Target) -> Outcome {
    let (_conn, boot) = bootstrap(&target).await?;
    let resp = boot.hello_request().send().promise.await.map_err(fail("hello"))?;
    let max_ids = resp
        .get()
        .map_err(fail("r"))?
        .get_info()
        .map_err(fail("i"))?
        .get_limits()
        .map_err(fail("l"))?
        .get_max_ids_per_call();
    let (name, password) = new_account(&boot, &target).await?;
    let session = login(&boot, &name, &password).await.map_err(fail("login"))?;
    let ids: Vec<u64> = (1..=u64::from(max_ids) + 1).collect();
    let mut g = session.get_request();
    g.get().set_ids(&ids[..]).map_err(fail("ids"))?;
    expect_code(g.send().promise.await, ErrorCode::LimitExceeded, "get with maxIdsPerCall + 1 ids")?;
    Ok(())
}

async fn gateway_refuses_bad_deliveries(target: Target) -> Outcome {
    let (_conn, boot) = bootstrap(&target).await?;
    let resp = boot.hello_request().send().promise.await.map_err(fail("hello"))?;
    let limits =
        resp.get().map_err(fail("r"))?.get_info().map_err(fail("i"))?.get_limits().map_err(fail("l"))?;
    let (max_message, max_rpc, max_rcpt) =
        (limits.get_max_message_bytes(), limits.get_max_rpc_message_bytes(), limits.get_max_recipients());
    let (name, password) = new_account(&boot, &target).await?;
    let mut req = boot.gateway_request();
    req.get().set_secret(target.gateway_secret.as_str());
    let gateway = req.send().pipeline.get_gateway();
    let send = |rcpts: Vec<String>, raw: Vec<u8>| {
        let mut d = gateway.deliver_request();
        {
            let mut l = d.get().init_envelope().init_rcpt_to(rcpts.len() as u32);
            for (i, r) in rcpts.iter().enumerate() {
                l.set(i as u32, r.as_str());
            }
        }
        d.get().set_raw(&raw);
        d.send().promise
    };
    expect_code(send(vec![name.clone()], Vec::new()).await, ErrorCode::InvalidArgument, "an empty message")?;
    expect_code(send(Vec::new(), BASIC_EML.to_vec()).await, ErrorCode::InvalidArgument, "no recipients")?;
    let many = (0..=max_rcpt).map(|i| format!("r{i}@example.org")).collect();
    expect_code(
        send(many, BASIC_EML.to_vec()).await,
        ErrorCode::LimitExceeded,
        "maxRecipients + 1 recipients",
    )?;
    // An oversized message, when one fits in an RPC message at all.
    if max_message + 64 * 1024 < max_rpc {
        let big = vec![b'x'; max_message as usize + 1];
        expect_code(
            send(vec![name.clone()], big).await,
            ErrorCode::LimitExceeded,
            "a message over maxMessageBytes",
        )?;
    }
    // None of it stored anything.
    let session = login(&boot, &name, &password).await.map_err(fail("login"))?;
    let mut q = session.query_request();
    q.get().init_query().set_limit(1);
    let resp = q.send().promise.await.map_err(fail("query"))?;
    let total = resp.get().map_err(fail("results"))?.get_result().map_err(fail("result"))?.get_total();
    ensure(total == 0, || format!("refused deliveries stored {total} emails"))
}

/// A second client that must keep being served while another misbehaves.
async fn bystander_is_served(target: &Target, boot: &quail::Client) -> Outcome {
    let _ = target;
    hello(boot).await.map(|_| ()).map_err(|e| format!("a well-behaved client was not served: {e}"))
}

async fn unknown_stream_tag_resets_only_that_stream(target: Target) -> Outcome {
    let conn = wire::connect(&target).await?;
    let (mut send, mut recv) = conn.raw_stream(&[0x7f, 1, 2, 3]).await?;
    let _ = send.finish();
    let mut buf = [0u8; 16];
    let read =
        tokio::time::timeout(STEP, recv.read(&mut buf)).await.map_err(fail("no answer to an unknown tag"))?;
    match read {
        Err(quinn::ReadError::Reset(code)) => {
            ensure(code.into_inner() == u64::from(close_code::PROTOCOL), || {
                format!("reset with code {code}, expected {}", close_code::PROTOCOL)
            })?
        }
        other => return Err(format!("expected the stream to be reset, got {other:?}")),
    }
    // The same connection still serves RPC.
    let boot = conn.rpc().await?;
    hello(&boot).await.map(|_| ())
}

async fn garbage_on_an_rpc_stream_closes_only_that_connection(target: Target) -> Outcome {
    let (_good_conn, good) = bootstrap(&target).await?;
    bystander_is_served(&target, &good).await?;
    let bad = wire::connect(&target).await?;
    let mut garbage = vec![StreamKind::Rpc.tag()];
    garbage.extend_from_slice(&[0xff; 64]);
    let (_send, _recv) = bad.raw_stream(&garbage).await?;
    let closed = tokio::time::timeout(STEP, bad.quic.closed())
        .await
        .map_err(fail("garbage did not close the connection"))?;
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            ensure(c.error_code.into_inner() == u64::from(close_code::PROTOCOL), || {
                format!("closed with {}, expected PROTOCOL", c.error_code)
            })?
        }
        other => return Err(format!("expected an application close, got {other}")),
    }
    bystander_is_served(&target, &good).await
}

async fn oversized_message_closes_the_connection_with_limit(target: Target) -> Outcome {
    let (_good_conn, good) = bootstrap(&target).await?;
    let resp = good.hello_request().send().promise.await.map_err(fail("hello"))?;
    let max = resp
        .get()
        .map_err(fail("r"))?
        .get_info()
        .map_err(fail("i"))?
        .get_limits()
        .map_err(fail("l"))?
        .get_max_rpc_message_bytes();
    let bad = wire::connect(&target).await?;
    // A segment table announcing one segment one word over the limit; the
    // server must refuse before reading (or allocating) the body.
    let words = u32::try_from(max / 8 + 1).map_err(fail("limit too large for one segment"))?;
    let mut frame = vec![StreamKind::Rpc.tag()];
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.extend_from_slice(&words.to_le_bytes());
    let (_send, _recv) = bad.raw_stream(&frame).await?;
    let closed = tokio::time::timeout(STEP, bad.quic.closed())
        .await
        .map_err(fail("oversized message did not close the connection"))?;
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            ensure(c.error_code.into_inner() == u64::from(close_code::LIMIT), || {
                format!("closed with {}, expected LIMIT", c.error_code)
            })?
        }
        other => return Err(format!("expected an application close, got {other}")),
    }
    bystander_is_served(&target, &good).await
}

/// Sends one bulk request (and `payload` after it) and reads the answer:
/// the error code, or the length.
async fn bulk(
    conn: &wire::Conn,
    token: &[u8],
    offset: u64,
    payload: &[u8],
) -> Result<Result<u64, ErrorCode>, String> {
    use quail_protocol::quail_capnp::{bulk_request, bulk_response};
    let mut msg = capnp::message::Builder::new_default();
    {
        let mut r = msg.init_root::<bulk_request::Builder<'_>>();
        r.set_token(token);
        r.set_offset(offset);
    }
    let mut bytes = vec![StreamKind::Bulk.tag()];
    capnp::serialize::write_message(&mut bytes, &msg).map_err(|e| e.to_string())?;
    bytes.extend_from_slice(payload);
    let (mut send, mut recv) = conn.raw_stream(&bytes).await?;
    let _ = send.finish();
    let answer = tokio::time::timeout(STEP, recv.read_to_end(1 << 20))
        .await
        .map_err(fail("no answer to a bulk request"))?
        .map_err(|e| format!("bulk stream: {e}"))?;
    let reader = capnp::serialize::read_message(&mut &answer[..], capnp::message::ReaderOptions::new())
        .map_err(|e| format!("bulk response: {e}"))?;
    let r = reader.get_root::<bulk_response::Reader<'_>>().map_err(|e| e.to_string())?;
    if r.has_error() {
        let e = r.get_error().map_err(|e| e.to_string())?;
        return Ok(Err(e.get_code().map_err(|e| e.to_string())?));
    }
    Ok(Ok(r.get_length()))
}

async fn hostile_bulk_requests_get_typed_errors(target: Target) -> Outcome {
    let (conn, boot) = bootstrap(&target).await?;
    let features = hello(&boot).await?;
    if !features.iter().any(|f| f == "Gateway.upload") {
        return Ok(());
    }
    // A forged token, and one a connection without the owner's capability
    // names: not found, and nothing else is said.
    let mut forged = [0u8; 32];
    rand::rng().fill_bytes(&mut forged);
    let got = bulk(&conn, &forged, 0, b"").await?;
    ensure(got == Err(ErrorCode::NotFound), || format!("a forged token: {got:?}"))?;
    let mut req = boot.gateway_request();
    req.get().set_secret(target.gateway_secret.as_str());
    let gateway = req.send().pipeline.get_gateway();
    let mut up = gateway.upload_request();
    up.get().set_size(10);
    let resp = up.send().promise.await.map_err(fail("upload"))?;
    let token = resp.get().map_err(fail("r"))?.get_token().map_err(fail("token"))?.to_vec();
    let stranger = wire::connect(&target).await?;
    let got = bulk(&stranger, &token, 0, b"0123456789").await?;
    ensure(got == Err(ErrorCode::NotFound), || {
        format!("a token on a connection without its owner: {got:?}")
    })?;
    // More bytes than reserved: refused, and the token may be sent again.
    let got = bulk(&conn, &token, 0, b"0123456789 and more").await?;
    ensure(got == Err(ErrorCode::Protocol), || format!("too many bytes: {got:?}"))?;
    // Resuming past what the server holds: refused.
    let got = bulk(&conn, &token, 5, b"56789").await?;
    ensure(got == Err(ErrorCode::InvalidArgument), || format!("a resume past what is held: {got:?}"))?;
    let got = bulk(&conn, &token, 0, b"0123456789").await?;
    ensure(got == Ok(10), || format!("the exact bytes: {got:?}"))?;
    // Not a bulk request at all: a protocol error, the connection lives.
    let (mut send, mut recv) =
        conn.raw_stream(&[StreamKind::Bulk.tag(), 0xff, 0xff, 0xff, 0xff, 1, 2]).await?;
    let _ = send.finish();
    let _ =
        tokio::time::timeout(STEP, recv.read_to_end(1 << 16)).await.map_err(fail("no answer to garbage"))?;
    hello(&boot).await.map(|_| ())
}
