//! Upgrades migrate: a store written by an older build (the checked-in
//! format-2 fixture) opens, migrates and checks clean; a newer format is
//! refused with a message that says what to do.

use std::path::Path;
use std::sync::Arc;

use quail_server::Config;
use quail_server::account::{AccountId, Counter};
use quail_server::store::{Db, FjallStore, Space};
use quail_server::sync::{KINDS, Kind, State};
use quail_server::tools::{self, check};
use quail_server::upgrade::{self, Opened, STORE_FORMAT};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn fixture_copy() -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().expect("dir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-2/store");
    let config = Config::with_data_dir(dir.path());
    copy_dir(&fixture, &config.store_dir());
    (dir, config)
}

#[test]
fn the_format_2_fixture_migrates_and_checks_clean() {
    let (_dir, config) = fixture_copy();
    {
        let store = FjallStore::open(&config.store_dir()).expect("open fixture");
        let db = Db::new(Arc::new(store));
        assert_eq!(upgrade::format(&db).expect("format"), Some(2));
        let mut lines = Vec::new();
        let opened = upgrade::open(&db, &mut |l| lines.push(l.to_owned())).expect("migrates");
        assert_eq!(opened, Opened::Migrated(2));
        assert_eq!(upgrade::format(&db).expect("format"), Some(STORE_FORMAT));
        assert!(lines.iter().any(|l| l.contains("migrating store format 2 -> 3")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("migrating store format 3 -> 4")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("migrating store format 4 -> 5")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("copy the data dir")), "a backup hint: {lines:?}");
        // The old single floor is gone, every kind has its own.
        let demo = AccountId(1);
        assert_eq!(db.get(Space::Counters, &Counter::LogFloor.key(demo, 0)).expect("get"), None);
        // Every kind a format-2 store had; kinds added later (submissions)
        // start with an empty log at floor 0, which an absent floor means.
        for kind in KINDS {
            let floor = db.get(Space::Counters, &Counter::KindFloor.key(demo, kind as u64)).expect("get");
            assert!(floor.is_some() || kind == quail_server::sync::Kind::Submission, "{kind:?}");
        }
        assert!(lines.iter().any(|l| l.contains("migrating store format 5 -> 6")), "{lines:?}");
        // Opening again is a no-op.
        assert_eq!(upgrade::open(&db, &mut |_| {}).expect("reopen"), Opened::Current);
    }
    // The offline tools open it, and it checks clean.
    let (db, mail) = tools::open(&config).expect("tools open the migrated store");
    let report = check::check(&db, false).expect("check");
    assert!(report.clean(), "{:?}", report.problems);
    assert_eq!((report.accounts, report.emails), (2, 27));
    // The mail is all there and delta sync answers from the current state.
    let demo = AccountId(1);
    assert_eq!(mail.email_ids(demo).expect("ids").len(), 25);
    let state = mail.state(demo).expect("state");
    let c = mail.changes(demo, Kind::Email, state, 10).expect("changes");
    assert!(c.created.is_empty() && c.new_state == state);
    // The fixture's log was compacted (keep_changes = 16): old states resync.
    let err = mail.changes(demo, Kind::Email, State(1), 10).expect_err("compacted");
    assert!(err.to_string().contains("resync"), "{err}");

    // The migrated search index is the one ingest builds: the same raw
    // messages imported into a fresh store give the same postings (by
    // Message-ID, as email ids differ between the stores).
    let by_mid = |db: &Db, mail: &quail_server::mail::Mailstore, account: AccountId| {
        let mids: std::collections::HashMap<u64, String> = mail
            .email_ids(account)
            .expect("ids")
            .into_iter()
            .map(|id| (id.0, mail.email(account, id).expect("get").expect("email").envelope.message_id))
            .collect();
        quail_server::search::index::dump(db, account.0)
            .expect("dump")
            .into_iter()
            .map(|(t, d)| (t, mids.get(&d).cloned().unwrap_or_default()))
            .collect::<std::collections::BTreeSet<_>>()
    };
    let migrated = by_mid(&db, &mail, demo);
    assert!(migrated.len() > 100, "{} postings", migrated.len());
    let fresh_dir = tempfile::tempdir().expect("dir");
    let fresh_db = Db::new(Arc::new(FjallStore::open(&fresh_dir.path().join("store")).expect("open")));
    upgrade::open(&fresh_db, &mut |_| {}).expect("new store");
    let fresh =
        quail_server::mail::Mailstore::new(fresh_db.clone(), quail_server::mail::MailConfig::default());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let acct = rt.block_on(fresh.create_account("demo", "x".into(), 0, 0, 0)).expect("account").id;
    for id in mail.email_ids(demo).expect("ids") {
        let raw = mail.raw(demo, id).expect("raw");
        rt.block_on(fresh.deliver(&[acct], &raw, 0)).expect("deliver");
    }
    assert_eq!(by_mid(&fresh_db, &fresh, acct), migrated);
}

#[test]
fn a_newer_format_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().expect("dir");
    let config = Config::with_data_dir(dir.path());
    {
        let db = Db::new(Arc::new(FjallStore::open(&config.store_dir()).expect("open")));
        let (_, t) = db
            .write(|txn| {
                txn.put(Space::Meta, b"format".to_vec(), 99u32.to_be_bytes().to_vec());
                Ok::<_, quail_server::store::StoreError>(())
            })
            .expect("stamp");
        db.store().sync_blocking(t).expect("sync");
    }
    let err = format!("{:#}", tools::open(&config).expect_err("refused"));
    assert!(err.contains("format 99"), "{err}");
    assert!(err.contains(&format!("up to {STORE_FORMAT}")), "{err}");
    assert!(err.contains("newer quaild") && err.contains("backup"), "names the fix: {err}");
}
