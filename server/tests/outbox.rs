//! The outbox on a real store, in virtual time: send-at, leases that
//! expire, backoff, expiry and bounces, cancel (undo send), local delivery,
//! and the change log that pushes every status change.

mod support;

use quail_server::mail::outbox::{NewSubmission, Outcome, Schedule, Status};
use quail_server::mail::{Filter, MailConfig, Query, Role};
use quail_server::sync::{Kind, State};
use quail_server::tools::check;

const T0: i64 = 1_800_000_000_000;
const MIN: i64 = 60_000;

fn config() -> MailConfig {
    MailConfig {
        outbox: Schedule { retry_base_ms: MIN, retry_max_ms: 8 * MIN, expiry_ms: 60 * MIN },
        ..MailConfig::default()
    }
}

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@quail.test>\r\nTo: bob@far.test\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@quail.test>\r\n\r\nHello there.\r\n"
    )
    .into_bytes()
}

fn new(subject: &str, to: &[(&str, bool)], send_at_ms: i64) -> NewSubmission {
    NewSubmission {
        raw: message(subject),
        mail_from: "alice@quail.test".into(),
        recipients: to.iter().map(|(a, l)| (a.to_string(), *l)).collect(),
        send_at_ms,
    }
}

fn inbox_subjects(s: &support::TestStore, account: quail_server::account::AccountId) -> Vec<String> {
    let inbox = s.mail.mailbox_by_role(account, Role::Inbox).expect("inbox");
    let q = Query {
        filter: Filter { mailbox: Some(inbox), ..Filter::default() },
        limit: 100,
        ..Query::default()
    };
    let page = s.mail.query(account, &q).expect("query");
    page.ids
        .iter()
        .map(|id| s.mail.email(account, *id).expect("get").expect("email").envelope.subject)
        .collect()
}

fn assert_consistent(s: &support::TestStore) {
    let report = check::check(&s.db, false).expect("check");
    assert!(report.problems.is_empty(), "check: {:?}", report.problems);
}

#[tokio::test]
async fn a_submission_is_filed_in_sent_and_waits_for_its_time() {
    let s = support::store_with(config());
    let alice = s.account("alice").await;
    let sub = s
        .mail
        .submit(alice, new("later", &[("bob@far.test", false)], T0 + 10 * MIN), T0)
        .await
        .expect("submit");
    assert_eq!(sub.recipients[0].status, Status::Queued);
    let sent = s.mail.mailbox_by_role(alice, Role::Sent).expect("sent");
    let copy = s.mail.email(alice, sub.email).expect("get").expect("sent copy");
    assert_eq!(copy.mailboxes, vec![sent]);
    assert!(copy.has_keyword("$seen"), "the Sent copy is read");
    assert_eq!(s.mail.raw(alice, sub.email).expect("raw"), message("later"));

    // Not before sendAt.
    assert!(s.mail.lease_outbound(T0 + 10 * MIN - 1, 10, MIN).await.expect("lease").is_empty());
    let leased = s.mail.lease_outbound(T0 + 10 * MIN, 10, MIN).await.expect("lease");
    assert_eq!(leased.len(), 1);
    assert_eq!((leased[0].attempt, leased[0].recipients.clone()), (1, vec!["bob@far.test".to_string()]));
    assert_consistent(&s);
}

/// A message sent later than the expiry is ahead is still tried, for as
/// long after its send time as any other (it was bounced at its send time
/// without a try).
#[tokio::test]
async fn a_message_sent_later_than_the_expiry_is_still_tried() {
    let s = support::store_with(config());
    let alice = s.account("alice").await;
    let at = T0 + 3 * 60 * MIN;
    let sub =
        s.mail.submit(alice, new("much later", &[("bob@far.test", false)], at), T0).await.expect("submit");
    let leased = s.mail.lease_outbound(at, 10, MIN).await.expect("lease");
    assert_eq!(leased.len(), 1, "tried at its time, not bounced");
    let rec = s.mail.submissions(alice, &[sub.id]).expect("get").0.remove(0);
    assert_eq!(rec.recipients[0].status, Status::Queued, "{rec:?}");
    assert_eq!(rec.expires_ms, at + 60 * MIN);
    assert_consistent(&s);
}

#[tokio::test]
async fn a_lease_hides_the_message_until_it_expires_then_another_worker_gets_it() {
    let s = support::store_with(config());
    let alice = s.account("alice").await;
    let sub = s.mail.submit(alice, new("lease", &[("bob@far.test", false)], 0), T0).await.expect("submit");
    let first = s.mail.lease_outbound(T0, 10, 5 * MIN).await.expect("lease");
    assert_eq!(first.len(), 1);
    // Held: a second worker gets nothing while the lease lasts.
    assert!(s.mail.lease_outbound(T0 + 5 * MIN - 1, 10, 5 * MIN).await.expect("lease").is_empty());
    // The first worker died: the lease ends and the message comes back.
    let second = s.mail.lease_outbound(T0 + 5 * MIN, 10, 5 * MIN).await.expect("lease");
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].id, second[0].attempt), (sub.id, 2));
    // The first worker's late report of a delivery still counts (the
    // message did reach bob), but schedules nothing.
    s.mail
        .complete_outbound(
            sub.id,
            1,
            &[("bob@far.test".into(), Outcome::Delivered, "250 ok".into())],
            T0 + 6 * MIN,
        )
        .await
        .expect("late complete");
    let now = s.mail.submissions(alice, &[sub.id]).expect("read").0.remove(0);
    assert_eq!(now.recipients[0].status, Status::Delivered);
    assert!(s.mail.submissions(alice, &[]).expect("pending").0.is_empty(), "nothing pending");
    assert_consistent(&s);
}

#[tokio::test]
async fn temporary_failures_back_off_then_expire_into_a_bounce() {
    let s = support::store_with(config());
    let alice = s.account("alice").await;
    let sub = s.mail.submit(alice, new("doomed", &[("bob@far.test", false)], 0), T0).await.expect("submit");
    let mut now = T0;
    let mut attempts = Vec::new();
    loop {
        let leased = s.mail.lease_outbound(now, 10, MIN / 2).await.expect("lease");
        if leased.is_empty() {
            break;
        }
        let l = &leased[0];
        attempts.push((now - T0) / 1000);
        s.mail
            .complete_outbound(
                l.id,
                l.attempt,
                &[("bob@far.test".into(), Outcome::TempFail, "451 4.3.0 try again later".into())],
                now,
            )
            .await
            .expect("complete");
        let rec = s.mail.submissions(alice, &[sub.id]).expect("read").0.remove(0);
        if !rec.recipients[0].status.pending() {
            break;
        }
        assert_eq!(rec.recipients[0].status, Status::Deferred);
        // Nothing is handed out before the backoff has passed.
        assert!(s.mail.lease_outbound(rec.next_ms - 1, 10, MIN / 2).await.expect("lease").is_empty());
        now = rec.next_ms;
    }
    // 1, 2, 4, 8, 8, ... minutes apart until the hour is up.
    assert_eq!(attempts, vec![0, 60, 180, 420, 900, 1380, 1860, 2340, 2820, 3300]);
    let rec = s.mail.submissions(alice, &[sub.id]).expect("read").0.remove(0);
    assert_eq!(rec.recipients[0].status, Status::Failed);
    assert!(rec.recipients[0].reply.starts_with("expired"), "{}", rec.recipients[0].reply);
    assert_eq!(inbox_subjects(&s, alice), vec!["Undelivered Mail Returned to Sender"]);
    assert_consistent(&s);
}

#[tokio::test]
async fn expiry_is_enforced_when_no_attempt_ever_completes() {
    let s = support::store_with(config());
    let alice = s.account("alice").await;
    s.mail.submit(alice, new("unseen", &[("bob@far.test", false)], 0), T0).await.expect("submit");
    // Every lease is lost (workers keep dying): after the expiry the next
    // lease fails it instead of handing it out again.
    let mut now = T0;
    while now < T0 + 60 * MIN {
        assert_eq!(s.mail.lease_outbound(now, 10, 10 * MIN).await.expect("lease").len(), 1);
        now += 10 * MIN;
    }
    assert!(s.mail.lease_outbound(now, 10, 10 * MIN).await.expect("lease").is_empty());
    assert_eq!(inbox_subjects(&s, alice), vec!["Undelivered Mail Returned to Sender"]);
    assert_consistent(&s);
}

#[tokio::test]
async fn a_permanent_failure_bounces_at_once_and_the_others_go_on() {
    let s = support::store_with(config());
    let alice = s.account("alice").await;
    let sub = s
        .mail
        .submit(alice, new("mixed", &[("bob@far.test", false), ("eve@far.test", false)], 0), T0)
        .await
        .expect("submit");
    let l = s.mail.lease_outbound(T0, 10, MIN).await.expect("lease").remove(0);
    assert_eq!(l.recipients.len(), 2);
    s.mail
        .complete_outbound(
            l.id,
            l.attempt,
            &[
                ("bob@far.test".into(), Outcome::PermFail, "550 5.1.1 no such user".into()),
                ("eve@far.test".into(), Outcome::TempFail, "421 4.4.2 timeout".into()),
            ],
            T0 + 1000,
        )
        .await
        .expect("complete");
    assert_eq!(inbox_subjects(&s, alice), vec!["Undelivered Mail Returned to Sender"]);
    let next = s.mail.lease_outbound(T0 + 1000 + MIN, 10, MIN).await.expect("lease").remove(0);
    assert_eq!(next.recipients, vec!["eve@far.test".to_string()], "only the pending one is retried");
    s.mail
        .complete_outbound(
            sub.id,
            next.attempt,
            &[("eve@far.test".into(), Outcome::Delivered, "250".into())],
            T0 + MIN * 2,
        )
        .await
        .expect("complete");
    let rec = s.mail.submissions(alice, &[sub.id]).expect("read").0.remove(0);
    let statuses: Vec<Status> = rec.recipients.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![Status::Failed, Status::Delivered]);
    assert_consistent(&s);
}

#[tokio::test]
async fn cancel_before_send_at_withdraws_it_and_moves_the_copy_to_drafts() {
    let s = support::store_with(config());
    let alice = s.account("alice").await;
    let sub =
        s.mail.submit(alice, new("oops", &[("bob@far.test", false)], T0 + 30_000), T0).await.expect("submit");
    let cancelled = s.mail.cancel_submission(alice, sub.id, T0 + 10_000).await.expect("cancel");
    assert_eq!(cancelled.recipients[0].status, Status::Cancelled);
    let drafts = s.mail.mailbox_by_role(alice, Role::Drafts).expect("drafts");
    assert_eq!(s.mail.email(alice, sub.email).expect("get").expect("copy").mailboxes, vec![drafts]);
    assert!(s.mail.lease_outbound(T0 + 60_000, 10, MIN).await.expect("lease").is_empty(), "never handed out");
    // Twice: nothing left to withdraw.
    let again = s.mail.cancel_submission(alice, sub.id, T0 + 20_000).await;
    assert!(matches!(again, Err(quail_server::error::Error::Conflict(_))), "{again:?}");
    assert_consistent(&s);
}

#[tokio::test]
async fn cancel_is_refused_while_a_delivery_is_under_way_and_for_other_accounts() {
    let s = support::store_with(config());
    let alice = s.account("alice").await;
    let mallory = s.account("mallory").await;
    let sub = s.mail.submit(alice, new("busy", &[("bob@far.test", false)], 0), T0).await.expect("submit");
    let other = s.mail.cancel_submission(mallory, sub.id, T0).await;
    assert!(matches!(other, Err(quail_server::error::Error::NotFound(_))), "{other:?}");
    assert!(s.mail.submissions(mallory, &[sub.id]).expect("read").0.is_empty());
    s.mail.lease_outbound(T0, 10, MIN).await.expect("lease");
    let busy = s.mail.cancel_submission(alice, sub.id, T0 + 1000).await;
    assert!(matches!(busy, Err(quail_server::error::Error::Conflict(_))), "{busy:?}");
}

#[tokio::test]
async fn local_recipients_are_delivered_here_and_unknown_ones_bounce() {
    let s = support::store_with(config());
    let alice = s.account("alice").await;
    let bob = s.account("bob").await;
    let domains = vec!["quail.test".to_string()];
    let sub = s
        .mail
        .submit(alice, new("local", &[("bob@quail.test", true), ("nobody@quail.test", true)], 0), T0)
        .await
        .expect("submit");
    assert_eq!(s.mail.deliver_local_due(&s.accounts, &domains, T0).await.expect("local"), 1);
    assert_eq!(inbox_subjects(&s, bob), vec!["local"]);
    assert_eq!(inbox_subjects(&s, alice), vec!["Undelivered Mail Returned to Sender"]);
    let rec = s.mail.submissions(alice, &[sub.id]).expect("read").0.remove(0);
    let statuses: Vec<Status> = rec.recipients.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![Status::Delivered, Status::Failed]);
    // Nothing for the outbound worker, and nothing delivered twice.
    assert!(s.mail.lease_outbound(T0, 10, MIN).await.expect("lease").is_empty());
    assert_eq!(s.mail.deliver_local_due(&s.accounts, &domains, T0 + MIN).await.expect("local"), 0);
    assert_eq!(inbox_subjects(&s, bob).len(), 1);
    assert_consistent(&s);
}

#[tokio::test]
async fn every_status_change_is_in_the_change_log() {
    let s = support::store_with(config());
    let alice = s.account("alice").await;
    let start = s.mail.state(alice).expect("state");
    let sub = s.mail.submit(alice, new("logged", &[("bob@far.test", false)], 0), T0).await.expect("submit");
    let c = s.mail.changes(alice, Kind::Submission, start, 100).expect("changes");
    assert_eq!(c.created, vec![sub.id]);
    let after_submit = c.new_state;
    let l = s.mail.lease_outbound(T0, 10, MIN).await.expect("lease").remove(0);
    s.mail
        .complete_outbound(
            l.id,
            l.attempt,
            &[("bob@far.test".into(), Outcome::Delivered, "250 ok".into())],
            T0,
        )
        .await
        .expect("complete");
    let c = s.mail.changes(alice, Kind::Submission, after_submit, 100).expect("changes");
    assert_eq!(c.updated, vec![sub.id]);
    assert!(c.new_state > State(after_submit.0));
}

#[tokio::test]
async fn the_null_sender_gets_no_bounce() {
    let s = support::store_with(config());
    let alice = s.account("alice").await;
    let mut n = new("null", &[("bob@far.test", false)], 0);
    n.mail_from = String::new();
    let sub = s.mail.submit(alice, n, T0).await.expect("submit");
    let l = s.mail.lease_outbound(T0, 10, MIN).await.expect("lease").remove(0);
    s.mail
        .complete_outbound(
            sub.id,
            l.attempt,
            &[("bob@far.test".into(), Outcome::PermFail, "550 no".into())],
            T0,
        )
        .await
        .expect("complete");
    assert!(inbox_subjects(&s, alice).is_empty());
}

#[tokio::test]
async fn bad_submissions_and_unknown_completions_get_typed_errors() {
    use quail_server::error::Error;
    let s = support::store_with(config());
    let alice = s.account("alice").await;
    let none = s.mail.submit(alice, new("none", &[], 0), T0).await;
    assert!(matches!(none, Err(Error::InvalidArgument(_))), "{none:?}");
    let far =
        s.mail.submit(alice, new("far", &[("bob@far.test", false)], T0 + 31 * 24 * 3_600_000), T0).await;
    assert!(matches!(far, Err(Error::InvalidArgument(_))), "{far:?}");
    assert!(s.mail.email_ids(alice).expect("ids").is_empty(), "nothing filed for a refused submission");
    let unknown = s.mail.complete_outbound(999, 1, &[], T0).await;
    assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
}
