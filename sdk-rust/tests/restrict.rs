//! Capabilities you can hand on: a restricted session reads its mailbox
//! and nothing else, cannot write, cannot widen itself, and dies with its
//! parent (released or revoked) and at its expiry.

mod support;

use quail::{Client, EmailId, Error, MailboxId, ObjectKind, Query, Role, Session};
use quail_server::Running;

const PASSWORD: &str = "alice-password";

struct World {
    _dir: tempfile::TempDir,
    server: Running,
    client: Client,
    session: Session,
    inbox: MailboxId,
    work: MailboxId,
    in_inbox: EmailId,
    in_work: EmailId,
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let client = support::connect(&server).await;
    support::admin(&client, &server).await.create_account("alice", PASSWORD, 0, 0).await.expect("create");
    let gateway = support::gateway(&client, &server).await;
    let mut ids = Vec::new();
    for i in 0..2 {
        let r = gateway
            .deliver(&support::to("alice@example.org"), &support::generated(i))
            .await
            .expect("deliver");
        ids.push(r[0].outcome.clone().expect("delivered"));
    }
    let session = client.login("alice", PASSWORD).await.expect("login");
    let (boxes, _) = session.mailboxes().await.expect("mailboxes");
    let inbox = boxes.iter().find(|m| m.role == Role::Inbox).expect("inbox").id;
    let (work, _) = session.create_mailbox("Work", None).await.expect("create");
    session.move_emails(&[ids[1]], &[work.id], &[inbox], None).await.expect("move");
    World { _dir: dir, server, client, session, inbox, work: work.id, in_inbox: ids[0], in_work: ids[1] }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_view_of_one_mailbox_reads_it_and_nothing_else() {
    let w = world().await;
    let start = w.session.account().await.expect("account").1;
    let view = w.session.restrict(&[w.work], true, None).await.expect("restrict");

    // It reads its mailbox...
    let (boxes, _) = view.mailboxes().await.expect("mailboxes");
    assert_eq!(boxes.iter().map(|m| m.id).collect::<Vec<_>>(), vec![w.work]);
    let page = view.query(&Query::all()).await.expect("query in its only mailbox");
    assert_eq!(page.ids, vec![w.in_work]);
    let (emails, missing) = view.get(&[w.in_work, w.in_inbox], &[]).await.expect("get");
    assert_eq!(emails.iter().map(|e| e.id).collect::<Vec<_>>(), vec![w.in_work.0]);
    assert_eq!(missing, vec![w.in_inbox], "outside its scope reads as not found");
    assert!(!view.raw(w.in_work).await.expect("raw").is_empty());
    assert!(!view.fetch_part(w.in_work, "1").await.expect("part").is_empty());

    // ...and nothing else.
    assert!(matches!(view.raw(w.in_inbox).await, Err(Error::NotFound(_))));
    assert!(matches!(view.fetch_part(w.in_inbox, "1").await, Err(Error::NotFound(_))));
    assert!(matches!(view.query(&Query::mailbox(w.inbox)).await, Err(Error::Forbidden(_))));
    let email = view.email(w.in_work).await.expect("email");
    let (threads, not_found) = view.threads(&[email.thread_id]).await.expect("threads");
    assert!(not_found.is_empty() && threads[0].email_ids == vec![w.in_work]);
    let inbox_email = w.session.email(w.in_inbox).await.expect("email");
    let (_, not_found) = view.threads(&[inbox_email.thread_id]).await.expect("threads");
    assert_eq!(not_found, vec![inbox_email.thread_id]);

    // It cannot write.
    let r = view.set_keywords(&[w.in_work], &["$seen"], &[], None).await;
    assert!(matches!(r, Err(Error::Forbidden(_))), "{r:?}");
    assert!(matches!(view.move_emails(&[w.in_work], &[w.work], &[], None).await, Err(Error::Forbidden(_))));
    assert!(matches!(view.destroy(&[w.in_work], None).await, Err(Error::Forbidden(_))));
    assert!(matches!(view.create_mailbox("Mine", None).await, Err(Error::Forbidden(_))));
    assert!(matches!(view.create_app_token("widen me").await, Err(Error::Forbidden(_))));
    assert!(matches!(view.app_tokens().await, Err(Error::Forbidden(_))));

    // It cannot widen itself, only narrow further.
    assert!(matches!(view.restrict(&[w.inbox], false, None).await, Err(Error::Forbidden(_))));
    let again = view.restrict(&[], false, None).await.expect("same scope");
    let r = again.set_keywords(&[w.in_work], &["$seen"], &[], None).await;
    assert!(matches!(r, Err(Error::Forbidden(_))), "read-only stays read-only: {r:?}");

    // Changes show only what is in its scope.
    w.session.set_keywords(&[w.in_inbox, w.in_work], &["$flagged"], &[], None).await.expect("flag both");
    let c = view.changes(ObjectKind::Email, start, 100).await.expect("changes");
    assert!(c.updated.contains(&w.in_work.0) && !c.updated.contains(&w.in_inbox.0), "{c:?}");
    assert!(!c.created.contains(&w.in_inbox.0));
    let c = view.changes(ObjectKind::Mailbox, start, 100).await.expect("changes");
    assert!(!c.updated.contains(&w.inbox.0) && !c.created.contains(&w.inbox.0), "{c:?}");
    drop(w.client);
    drop(w.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writable_view_changes_only_its_mailbox() {
    let w = world().await;
    let delegate = w.session.restrict(&[w.work], false, None).await.expect("restrict");
    let r = delegate.set_keywords(&[w.in_work, w.in_inbox], &["$seen"], &[], None).await.expect("seen");
    assert_eq!(r.updated, vec![w.in_work]);
    assert_eq!(r.not_updated.len(), 1);
    assert_eq!(r.not_updated[0].0, w.in_inbox);
    assert!(matches!(r.not_updated[0].1, Error::NotFound(_)));
    assert!(w.session.email(w.in_inbox).await.expect("email").is_unread(), "untouched");
    assert!(
        matches!(
            delegate.move_emails(&[w.in_work], &[w.inbox], &[w.work], None).await,
            Err(Error::Forbidden(_))
        ),
        "moving out of its scope"
    );
}

/// However wide, a restricted session mints no app token: a token is a
/// login of its own and would outlive the session's expiry and parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_session_mints_no_app_token_however_wide() {
    let w = world().await;
    let expiring =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64
            + 60_000;
    for (name, child) in [
        ("expiring only", w.session.restrict(&[], false, Some(expiring)).await.expect("restrict")),
        ("all mailboxes, writable", w.session.restrict(&[], false, None).await.expect("restrict")),
    ] {
        let r = child.create_app_token("outlive me").await;
        assert!(matches!(r, Err(Error::Forbidden(_))), "{name}: {r:?}");
        assert!(matches!(child.app_tokens().await, Err(Error::Forbidden(_))), "{name}");
        // What it may do, it still does.
        child.mailboxes().await.expect("reads");
        child.set_keywords(&[w.in_work], &["$flagged"], &[], None).await.expect("writes");
    }
    w.session.create_app_token("the login's own").await.expect("a login's session mints");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_session_dies_with_its_parent_and_at_its_expiry() {
    let w = world().await;
    // Released parent: the child ends.
    let parent = w.client.login("alice", PASSWORD).await.expect("login");
    let child = parent.restrict(&[w.work], true, None).await.expect("restrict");
    child.mailboxes().await.expect("alive with its parent");
    drop(parent);
    let mut ended = false;
    for _ in 0..200 {
        if matches!(child.mailboxes().await, Err(Error::Forbidden(_))) {
            ended = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(ended, "the child outlived its released parent");

    // A watch of a child ends with its parent too, at the next change.
    let parent = w.client.login("alice", PASSWORD).await.expect("login");
    let child = parent.restrict(&[w.work], true, None).await.expect("restrict");
    let mut watch = child.watch().await.expect("watch");
    drop(parent);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let gateway = support::gateway(&w.client, &w.server).await;
    gateway.deliver(&support::to("alice@example.org"), &support::generated(9)).await.expect("deliver");
    let next = tokio::time::timeout(std::time::Duration::from_secs(20), futures::StreamExt::next(&mut watch))
        .await
        .expect("the watch ends");
    assert_eq!(next, None, "a released parent's child still hears of changes");

    // Revoked parent (a new password): the child ends with it.
    let child = w.session.restrict(&[w.work], true, None).await.expect("restrict");
    let grandchild = child.restrict(&[], true, None).await.expect("restrict");
    grandchild.mailboxes().await.expect("alive");
    support::admin(&w.client, &w.server).await.set_password("alice", "new-password").await.expect("passwd");
    assert!(matches!(child.mailboxes().await, Err(Error::BadCredentials)));
    assert!(matches!(grandchild.mailboxes().await, Err(Error::BadCredentials)));

    // Expiry.
    let fresh = w.client.login("alice", "new-password").await.expect("login");
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_millis() as i64;
    let brief = fresh.restrict(&[w.work], true, Some(now + 300)).await.expect("restrict");
    brief.mailboxes().await.expect("before its expiry");
    let longer = brief.restrict(&[], true, Some(now + 3_600_000)).await.expect("restrict");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(matches!(brief.mailboxes().await, Err(Error::Forbidden(_))));
    assert!(
        matches!(longer.mailboxes().await, Err(Error::Forbidden(_))),
        "a child cannot outlive the expiry"
    );
    fresh.mailboxes().await.expect("the parent goes on");
}
