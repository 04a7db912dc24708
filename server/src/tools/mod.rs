//! Offline operator tools on a data dir (the server must not be running):
//!
//! - [`mbox`] — mbox reading and writing (mboxrd, mboxo), asctime dates.
//! - [`export`] — an account's mail as mboxrd, raw messages byte for byte.
//! - [`import`] — mbox files and Maildir trees into an account.
//! - [`check`] — verify counters, indexes and blob references; repair.
//! - [`accounts`] — add, list, change password and quota of accounts.

pub mod accounts;
pub mod check;
pub mod export;
pub mod import;
pub mod mbox;

use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::mail::Mailstore;
use crate::store::{Db, FjallStore};

/// The data dir's store, opened for a tool.
pub fn open(config: &Config) -> anyhow::Result<(Db, Mailstore)> {
    let dir = config.store_dir();
    if !dir.is_dir() {
        anyhow::bail!("{} holds no store (wrong --data-dir?)", config.data_dir.display());
    }
    let store = FjallStore::open(&dir).with_context(|| {
        format!("opening the store in {} (is quaild running on this data dir? stop it first)", dir.display())
    })?;
    let db = Db::new(Arc::new(store));
    crate::upgrade::open(&db, &mut |line| eprintln!("{line}"))
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    let mail = Mailstore::new(db.clone(), config.mail_config());
    Ok((db, mail))
}
