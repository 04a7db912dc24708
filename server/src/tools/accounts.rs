//! `quaild account add|list|passwd|quota`: account administration on a
//! stopped server's data dir, the offline twin of the `Admin` capability
//! (as `doveadm` is to Dovecot). So `quaild account add` followed by
//! `quaild import` fills a new data dir with no server running.

use crate::account::{self, Account, Accounts, Usage};
use crate::error::{Error, Result};
use crate::mail::Mailstore;

/// Creates an account with its role mailboxes.
pub async fn add(
    mail: &Mailstore,
    name: &str,
    password: &str,
    quota_bytes: u64,
    quota_messages: u64,
    now_ms: i64,
) -> Result<Account> {
    let name = account::normalize_name(name)?;
    account::check_password(password)?;
    let hash = account::hash_password(password)?;
    mail.create_account(&name, hash, quota_bytes, quota_messages, now_ms).await
}

/// Every account with what it uses, in name order.
pub fn list(accounts: &Accounts) -> Result<Vec<(Account, Usage)>> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let (page, more) = accounts.list(&after, 500)?;
        for a in page {
            after.clone_from(&a.name);
            let usage = accounts.usage(a.id)?;
            out.push((a, usage));
        }
        if !more {
            return Ok(out);
        }
    }
}

/// Sets a new password (sessions opened with the old one end).
pub async fn passwd(accounts: &Accounts, name: &str, password: &str) -> Result<Account> {
    account::check_password(password)?;
    let hash = account::hash_password(password)?;
    accounts.modify(name, |a| a.password_hash.clone_from(&hash)).await
}

/// Sets the quotas (0 = unlimited).
pub async fn quota(accounts: &Accounts, name: &str, bytes: u64, messages: u64) -> Result<Account> {
    if accounts.by_name(name)?.is_none() {
        return Err(Error::not_found(format!("no account {name}")));
    }
    accounts
        .modify(name, |a| {
            a.quota_bytes = bytes;
            a.quota_messages = messages;
        })
        .await
}
