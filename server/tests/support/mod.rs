//! Shared by the server's integration tests: a mail store in a temp dir and
//! the shared corpora.

#![allow(dead_code)]

pub mod clamd;
pub mod eicar;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use quail_server::account::{self, AccountId, Accounts};
use quail_server::mail::{MailConfig, Mailstore};
use quail_server::store::{Db, FjallStore};

/// A store and its mail layer in a temp dir.
pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub db: Db,
    pub mail: Mailstore,
    pub accounts: Accounts,
}

pub fn store() -> TestStore {
    store_with(MailConfig::default())
}

pub fn store_with(config: MailConfig) -> TestStore {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let db = Db::new(Arc::new(FjallStore::open(&dir.path().join("store")).expect("open")));
    TestStore { mail: Mailstore::new(db.clone(), config), accounts: Accounts::new(db.clone()), db, dir }
}

/// One argon2 hash shared by test accounts (hashing is slow on purpose).
pub fn hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| account::hash_password("test-password").expect("hash")).clone()
}

impl TestStore {
    pub async fn account(&self, name: &str) -> AccountId {
        self.mail.create_account(name, hash(), 0, 0, 0).await.expect("create account").id
    }
}

pub fn corpora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora")
}

/// The corpora directory, or `None` (with a note) when it is absent. In CI
/// (`CI` set) a missing corpus is a failure: a test that silently checks
/// nothing must not pass there.
pub fn corpora_or_skip(test: &str) -> Option<PathBuf> {
    let c = corpora();
    if c.is_dir() {
        Some(c)
    } else if std::env::var_os("CI").is_some() {
        panic!("{test}: {} is absent, and CI is set: the corpora are required here", c.display());
    } else {
        eprintln!("NOTE {test}: SKIPPED: {} is absent (outside CI this is allowed)", c.display());
        None
    }
}

pub fn now() -> i64 {
    1_750_000_000_000
}
