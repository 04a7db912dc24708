//! Keywords, moves, destroy and the change log over the wire: concurrent
//! clients, delta sync by replaying changes, and typed errors for bad input
//! with nothing half-applied.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use quail::{EmailId, Error, MailboxId, ObjectKind, Property, Query, Role, Session, State};
use quail_server::tools::check;

const PASSWORD: &str = "alice-password";

/// What a client knows of one email.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    keywords: Vec<String>,
    mailboxes: Vec<u64>,
}

async fn snapshot(session: &Session) -> BTreeMap<u64, Known> {
    let mut out = BTreeMap::new();
    let mut position = 0;
    loop {
        let page = session.query(&Query::all().position(position).limit(500)).await.expect("query");
        if page.ids.is_empty() {
            break;
        }
        let (emails, _) =
            session.get(&page.ids, &[Property::Keywords, Property::Mailboxes]).await.expect("get");
        for e in emails {
            let mut k = e.keywords.clone();
            k.sort();
            let mut m = e.mailbox_ids.clone();
            m.sort();
            out.insert(e.id, Known { keywords: k, mailboxes: m });
        }
        position += page.ids.len() as u32;
    }
    out
}

/// Brings `known` from `since` to now the way a client would: page through
/// `changes`, refetch created and updated emails, drop destroyed ones.
async fn replay(session: &Session, known: &mut BTreeMap<u64, Known>, since: State) -> State {
    let mut at = since;
    loop {
        let c = session.changes(ObjectKind::Email, at, 50).await.expect("changes");
        let fetch: Vec<EmailId> = c.created.iter().chain(&c.updated).map(|i| EmailId(*i)).collect();
        for chunk in fetch.chunks(100) {
            let (emails, missing) =
                session.get(chunk, &[Property::Keywords, Property::Mailboxes]).await.expect("get");
            for e in emails {
                let mut k = e.keywords.clone();
                k.sort();
                let mut m = e.mailbox_ids.clone();
                m.sort();
                known.insert(e.id, Known { keywords: k, mailboxes: m });
            }
            for id in missing {
                known.remove(&id.0);
            }
        }
        for id in &c.destroyed {
            known.remove(id);
        }
        at = c.new_state;
        if !c.has_more {
            return at;
        }
    }
}

/// A small deterministic generator (the seed is printed, so a failure can be replayed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_at_once_leave_exact_counters_and_a_replayable_log() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let client = support::connect(&server).await;
    support::admin(&client, &server).await.create_account("alice", PASSWORD, 0, 0).await.expect("create");
    let gateway = support::gateway(&client, &server).await;
    for i in 0..120 {
        gateway.deliver(&support::to("alice"), &support::generated(i)).await.expect("deliver");
    }
    let session = client.login("alice", PASSWORD).await.expect("login");
    let (a, _) = session.create_mailbox("Projects", None).await.expect("mailbox");
    let (b, _) = session.create_mailbox("Later", None).await.expect("mailbox");
    let (boxes, _) = session.mailboxes().await.expect("boxes");
    let inbox = boxes.iter().find(|m| m.role == Role::Inbox).expect("inbox").id;
    let targets = [inbox, a.id, b.id];

    let start_state = session.account().await.expect("account").1;
    let mut known = snapshot(&session).await;
    let ids: Arc<Vec<EmailId>> = Arc::new(known.keys().map(|i| EmailId(*i)).collect());

    let seed =
        std::env::var("QUAIL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x9e37_79b9_7f4a_7c15u64);
    println!("seed {seed:#x} (set QUAIL_SEED to replay)");
    let mut tasks = Vec::new();
    for c in 0..8u64 {
        let ids = Arc::clone(&ids);
        let pin = server.fingerprint().to_owned();
        let addr = server.addr().to_string();
        tasks.push(tokio::spawn(async move {
            let client = quail::Client::connect(&addr, quail::Trust::Pinned(pin.parse().expect("pin")))
                .await
                .expect("connect");
            let s = client.login("alice", PASSWORD).await.expect("login");
            let mut rng = Rng(seed ^ (c + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
            for _ in 0..60 {
                let n = 1 + rng.below(5);
                let pick: Vec<EmailId> = (0..n).map(|_| ids[rng.below(ids.len())]).collect();
                let r = match rng.below(4) {
                    0 => s.set_keywords(&pick, &["$seen"], &[], None).await,
                    1 => s.set_keywords(&pick, &[], &["$seen"], None).await,
                    2 => s.set_keywords(&pick, &["$flagged", "todo"], &["$seen"], None).await,
                    _ => {
                        let to = targets[rng.below(3)];
                        let from: Vec<MailboxId> = targets.iter().copied().filter(|t| *t != to).collect();
                        s.move_emails(&pick, &[to], &from, None).await
                    }
                };
                let r = r.expect("update");
                assert!(r.not_updated.is_empty(), "{:?}", r.not_updated);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }

    // Counters equal a recount, server-side (check) and client-side.
    let report = check::check(&server.services().db, false).expect("check");
    assert!(report.clean(), "{:?}", report.problems);
    let truth = snapshot(&session).await;
    let (boxes, _) = session.mailboxes().await.expect("boxes");
    for m in &boxes {
        let total = truth.values().filter(|k| k.mailboxes.contains(&m.id.0)).count() as u32;
        let unread = truth
            .values()
            .filter(|k| k.mailboxes.contains(&m.id.0) && !k.keywords.iter().any(|x| x == "$seen"))
            .count() as u32;
        assert_eq!((m.total, m.unread), (total, unread), "mailbox {}", m.name);
    }
    // Replaying the change log from the first state reproduces the final state.
    let end = replay(&session, &mut known, start_state).await;
    assert_eq!(known, truth);
    assert_eq!(end, session.account().await.expect("account").1);
    drop((session, gateway, client));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_error_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let client = support::connect(&server).await;
    let admin = support::admin(&client, &server).await;
    admin.create_account("alice", PASSWORD, 0, 0).await.expect("alice");
    admin.create_account("bob", "bob-password", 0, 0).await.expect("bob");
    let gateway = support::gateway(&client, &server).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            gateway.deliver(&support::to("alice"), &support::generated(i)).await.expect("deliver")[0]
                .outcome
                .clone()
                .expect("ok"),
        );
    }
    let alice = client.login("alice", PASSWORD).await.expect("login");
    let bob = client.login("bob", "bob-password").await.expect("login");
    let bobs_inbox =
        bob.mailboxes().await.expect("boxes").0.iter().find(|m| m.role == Role::Inbox).expect("inbox").id;
    let before = snapshot(&alice).await;
    let state = alice.account().await.expect("account").1;
    let unchanged = |what: &str| {
        let alice = &alice;
        let before = before.clone();
        let what = what.to_owned();
        async move {
            assert_eq!(snapshot(alice).await, before, "{what} changed something");
            assert_eq!(alice.account().await.expect("account").1, state, "{what} moved the state");
        }
    };

    let e =
        alice.set_keywords(&ids, &["$seen", "bad keyword"], &[], None).await.expect_err("invalid keyword");
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    unchanged("an invalid keyword").await;

    let e = alice.move_emails(&ids, &[bobs_inbox], &[], None).await.expect_err("bob's mailbox");
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    unchanged("another account's mailbox").await;

    let e = alice
        .set_keywords(&ids, &["$flagged"], &[], Some(State(state.0 - 1)))
        .await
        .expect_err("stale state");
    assert!(matches!(e, Error::StateMismatch(_)), "{e:?}");
    unchanged("a stale ifInState").await;

    let max = client.server_info().limits.max_ids_per_call as u64;
    let many: Vec<EmailId> = (1..=max + 1).map(EmailId).collect();
    let e = alice.set_keywords(&many, &["$seen"], &[], None).await.expect_err("over the limit");
    assert!(matches!(e, Error::LimitExceeded(_)), "{e:?}");
    unchanged("a batch over the limit").await;

    let e = alice.create_mailbox("x", Some(bobs_inbox)).await.expect_err("parent of bob");
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    let inbox =
        alice.mailboxes().await.expect("boxes").0.iter().find(|m| m.role == Role::Inbox).expect("inbox").id;
    let e = alice.delete_mailbox(inbox).await.expect_err("role mailbox");
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    let e = alice.changes(ObjectKind::Email, State(state.0 + 100), 10).await.expect_err("future state");
    assert!(matches!(e, Error::CannotCalculateChanges(_)), "{e:?}");
    unchanged("refused mailbox calls").await;

    // Per email: the right one is applied, the wrong one reported, typed.
    let r = alice
        .set_keywords(&[ids[0], EmailId(987_654)], &["$flagged"], &[], Some(state))
        .await
        .expect("mixed batch");
    assert_eq!(r.updated, vec![ids[0]]);
    assert!(
        matches!(r.not_updated.as_slice(), [(EmailId(987_654), Error::NotFound(_))]),
        "{:?}",
        r.not_updated
    );
    assert!(r.new_state > r.old_state);

    // Destroy: to Trash, then expunged, then a typed not-found.
    let first = alice.destroy(&[ids[1]], None).await.expect("to trash");
    assert_eq!(first.updated, vec![ids[1]]);
    let trash =
        alice.mailboxes().await.expect("boxes").0.iter().find(|m| m.role == Role::Trash).expect("trash").id;
    assert_eq!(alice.email(ids[1]).await.expect("still there").mailbox_ids, vec![trash.0]);
    alice.destroy(&[ids[1]], None).await.expect("expunge");
    assert!(matches!(alice.email(ids[1]).await, Err(Error::NotFound(_))));
    let again = alice.destroy(&[ids[1]], None).await.expect("destroy of a destroyed email");
    assert!(again.updated.is_empty());
    assert!(matches!(again.not_updated.as_slice(), [(_, Error::NotFound(_))]), "{:?}", again.not_updated);
    assert_eq!(again.new_state, again.old_state, "nothing changed");

    // An email cannot be left in no mailbox.
    let r = alice.move_emails(&[ids[2]], &[], &[inbox], None).await.expect("move out of everything");
    assert!(matches!(r.not_updated.as_slice(), [(_, Error::InvalidInput(_))]), "{:?}", r.not_updated);

    // Body structure over the wire.
    let (emails, _) = alice.get(&[ids[0]], &[Property::BodyStructure]).await.expect("get");
    let body = emails[0].body.clone().expect("body structure");
    assert_eq!((body.part_id.as_str(), body.mime_type.as_str()), ("1", "text/plain"));
    assert!(check::check(&server.services().db, false).expect("check").clean());
    drop((alice, bob, admin, gateway, client));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_and_collapsed_queries_over_the_wire() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start(dir.path()).await;
    let client = support::connect(&server).await;
    support::admin(&client, &server).await.create_account("alice", PASSWORD, 0, 0).await.expect("create");
    let gateway = support::gateway(&client, &server).await;
    let root = b"Subject: lunch\r\nMessage-ID: <root@x>\r\n\r\nnoon?\r\n".to_vec();
    let reply =
        b"Subject: Re: lunch\r\nMessage-ID: <reply@x>\r\nIn-Reply-To: <root@x>\r\n\r\nyes\r\n".to_vec();
    let other = b"Subject: rota\r\nMessage-ID: <other@x>\r\n\r\n.\r\n".to_vec();
    let mut ids = Vec::new();
    for m in [&root, &reply, &other] {
        ids.push(
            gateway.deliver(&support::to("alice"), m).await.expect("deliver")[0].outcome.clone().expect("ok"),
        );
    }
    let alice = client.login("alice", PASSWORD).await.expect("login");
    let (emails, _) = alice.get(&ids, &[]).await.expect("get");
    assert_eq!(emails[0].thread_id, emails[1].thread_id);
    assert_ne!(emails[0].thread_id, emails[2].thread_id);
    let (threads, missing) = alice.threads(&[emails[0].thread_id, 424_242]).await.expect("threads");
    assert_eq!(threads[0].email_ids, vec![ids[0], ids[1]]);
    assert_eq!(missing, vec![424_242]);
    let page = alice.query(&Query::all().collapse_threads()).await.expect("collapsed");
    assert_eq!(page.ids, vec![ids[2], ids[1]]);
    assert_eq!(page.total, 2);
    drop((alice, gateway, client));
    server.shutdown().await;
}
