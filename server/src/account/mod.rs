//! Accounts: login names, argon2id password hashes, quotas, app tokens, and
//! the operator and gateway credentials.
//!
//! Password checks cost tens of milliseconds of CPU by design; callers on an
//! async worker run them on the blocking pool. An unknown name costs the same
//! as a wrong password (a check against a dummy hash), so timing does not
//! reveal which names exist.

mod credentials;
pub mod guard;
mod password;

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::key::Key;
use crate::store::{Db, KeyRange, Order, Space, StoreError, Txn};

pub use credentials::{Credential, Credentials, new_secret, write_private};
pub use guard::{Attempt, LoginGuard, LoginStats, Outcome, Reservation};
pub use password::{hash_password, verify_password};

/// An account's id. Stable for the account's life, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountId(pub u64);

/// Longest login name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Shortest password accepted.
pub const MIN_PASSWORD_BYTES: usize = 8;
/// Longest password accepted (argon2 cost grows with it).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest app token label.
pub const MAX_LABEL_BYTES: usize = 128;
/// App tokens per account.
pub const MAX_TOKENS_PER_ACCOUNT: usize = 100;

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Its id.
    pub id: AccountId,
    /// Login name, normalised to lower case.
    pub name: String,
    /// PHC-format argon2id hash.
    pub password_hash: String,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// Byte quota (0 = unlimited).
    pub quota_bytes: u64,
    /// Message quota (0 = unlimited).
    pub quota_messages: u64,
}

/// What an account uses, from its counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Raw bytes of its emails.
    pub bytes: u64,
    /// Number of its emails.
    pub messages: u64,
}

/// An app token's public facts (the secret itself is shown once, at creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppToken {
    /// Its id within the account.
    pub id: u64,
    /// The account it logs into.
    pub account: AccountId,
    /// Free text, e.g. "quail CLI on laptop".
    pub label: String,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
}

/// The per-account counters, one byte tag each, under `Space::Counters`
/// keyed `account, tag [, sub-id]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Counter {
    /// Raw bytes stored.
    UsedBytes = 1,
    /// Emails stored.
    UsedMessages = 2,
    /// The account's state (modification sequence).
    State = 3,
    /// Emails in a mailbox (sub-id: mailbox; 0 = all mail).
    MailboxTotal = 4,
    /// Unread emails in a mailbox (sub-id: mailbox; 0 = all mail).
    MailboxUnread = 5,
    /// Flagged emails in a mailbox (sub-id: mailbox; 0 = all mail).
    MailboxFlagged = 6,
    /// Format 2 only (one floor for every kind); migrated to [`Counter::KindFloor`].
    LogFloor = 7,
    /// Server-wide (account 0): bytes all blobs take on disk. Written by
    /// `blob`, which spells the same key itself (it sits below accounts).
    BlobBytes = 8,
    /// Where one kind's change log begins (sub-id: the kind): every change
    /// of that kind after this modseq is still logged.
    KindFloor = 9,
}

impl Counter {
    /// The counter's key for `account`.
    pub fn key(self, account: AccountId, sub: u64) -> Vec<u8> {
        let k = Key::new().u64(account.0).u8(self as u8);
        match self {
            Counter::MailboxTotal | Counter::MailboxUnread | Counter::MailboxFlagged | Counter::KindFloor => {
                k.u64(sub).build()
            }
            _ => k.build(),
        }
    }
}

/// Normalises and checks a login name: 1-64 bytes of lower-case letters,
/// digits and `. _ - + @`, starting with a letter or digit.
pub fn normalize_name(name: &str) -> Result<String> {
    let n = name.trim().to_ascii_lowercase();
    if n.is_empty() || n.len() > MAX_NAME_BYTES {
        return Err(Error::invalid(format!("account names are 1 to {MAX_NAME_BYTES} bytes")));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-+@".contains(c);
    if !n.chars().all(ok_char) || !n.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(Error::invalid(format!(
            "account name {name:?}: use letters, digits and . _ - + @, starting with a letter or digit"
        )));
    }
    Ok(n)
}

/// Checks a new password's length.
pub fn check_password(password: &str) -> Result<()> {
    if password.len() < MIN_PASSWORD_BYTES || password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid(format!(
            "passwords are {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

fn decode<T: for<'de> Deserialize<'de>>(space: Space, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt { space, detail: e.to_string() }.into())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| Error::Internal(format!("encoding record: {e}")))
}

fn account_key(id: AccountId) -> Vec<u8> {
    Key::new().u64(id.0).build()
}

/// The account registry.
#[derive(Debug)]
pub struct Accounts {
    db: Db,
    dummy_hash: OnceLock<String>,
}

impl Accounts {
    /// Accounts in `db`.
    pub fn new(db: Db) -> Self {
        Accounts { db, dummy_hash: OnceLock::new() }
    }

    /// The account with this id.
    pub fn get(&self, id: AccountId) -> Result<Option<Account>> {
        self.db.get(Space::Accounts, &account_key(id))?.map(|b| decode(Space::Accounts, &b)).transpose()
    }

    /// The account with this login name (normalised first).
    pub fn by_name(&self, name: &str) -> Result<Option<Account>> {
        let Ok(name) = normalize_name(name) else {
            return Ok(None);
        };
        match self.db.get(Space::AccountNames, name.as_bytes())? {
            Some(id) => {
                let id = crate::store::key::read_u64(&id, 0)
                    .ok_or_else(|| StoreError::Corrupt { space: Space::AccountNames, detail: "id".into() })?;
                self.get(AccountId(id))
            }
            None => Ok(None),
        }
    }

    /// The account a recipient address reaches: the account named by the
    /// whole address, else (when the domain is served here — `domains`
    /// lists it or is empty) the account named by its local part, without
    /// any `+tag`.
    pub fn resolve_recipient(&self, address: &str, domains: &[String]) -> Result<Option<Account>> {
        let addr = address.trim().trim_start_matches('<').trim_end_matches('>').to_ascii_lowercase();
        if let Some(a) = self.by_name(&addr)? {
            return Ok(Some(a));
        }
        let Some((local, domain)) = addr.rsplit_once('@') else {
            return Ok(None);
        };
        if !domains.is_empty() && !domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            return Ok(None);
        }
        let local = local.split_once('+').map_or(local, |(base, _)| base);
        self.by_name(local)
    }

    /// Inserts a new account in `txn`; the caller adds what else an account
    /// starts with (its mailboxes) in the same transaction.
    pub fn insert(
        txn: &mut Txn<'_>,
        name: &str,
        password_hash: String,
        quota_bytes: u64,
        quota_messages: u64,
        now_ms: i64,
    ) -> Result<Account> {
        let name = normalize_name(name)?;
        if txn.exists(Space::AccountNames, name.as_bytes())? {
            return Err(Error::AlreadyExists(format!("account {name} exists")));
        }
        let id = AccountId(txn.next_id("account")?);
        let account = Account { id, name, password_hash, created_ms: now_ms, quota_bytes, quota_messages };
        txn.put(Space::Accounts, account_key(id), encode(&account)?);
        txn.put(Space::AccountNames, account.name.as_bytes().to_vec(), id.0.to_be_bytes());
        Ok(account)
    }

    /// Rewrites an account record (password, quota) in `txn`.
    pub fn update(txn: &mut Txn<'_>, account: &Account) -> Result<()> {
        txn.put(Space::Accounts, account_key(account.id), encode(account)?);
        Ok(())
    }

    /// Changes an account record (password, quota) durably; returns it.
    pub async fn modify(&self, name: &str, mut f: impl FnMut(&mut Account)) -> Result<Account> {
        let account = self.by_name(name)?.ok_or_else(|| Error::not_found(format!("no account {name}")))?;
        self.db
            .write_durable(|txn| {
                let mut current = Self::get_in(txn, account.id)?
                    .ok_or_else(|| Error::not_found(format!("no account {name}")))?;
                f(&mut current);
                Self::update(txn, &current)?;
                Ok(current)
            })
            .await
    }

    /// Reads an account inside a transaction.
    pub fn get_in(txn: &Txn<'_>, id: AccountId) -> Result<Option<Account>> {
        txn.get(Space::Accounts, &account_key(id))?.map(|b| decode(Space::Accounts, &b)).transpose()
    }

    /// Checks a name and password; CPU-heavy (argon2id), run it off the
    /// async workers. Unknown names and wrong passwords are the same error.
    pub fn authenticate(&self, name: &str, password: &str) -> Result<Account> {
        match self.by_name(name)? {
            Some(account) if verify_password(&account.password_hash, password) => Ok(account),
            Some(_) => Err(Error::BadCredentials),
            None => {
                // Spend the same time as a real check.
                let dummy = self
                    .dummy_hash
                    .get_or_init(|| hash_password("not a password of anyone").unwrap_or_default());
                let _ = verify_password(dummy, password);
                Err(Error::BadCredentials)
            }
        }
    }

    /// Accounts in name order after `after`, at most `limit`, and whether more follow.
    pub fn list(&self, after: &str, limit: usize) -> Result<(Vec<Account>, bool)> {
        let range = if after.is_empty() {
            KeyRange::all()
        } else {
            KeyRange::all().after(after.as_bytes(), Order::Ascending)
        };
        let rows = self.db.scan(Space::AccountNames, &range, Order::Ascending, limit + 1)?;
        let more = rows.len() > limit;
        let mut out = Vec::new();
        for (_, id) in rows.into_iter().take(limit) {
            let id = crate::store::key::read_u64(&id, 0)
                .ok_or_else(|| StoreError::Corrupt { space: Space::AccountNames, detail: "id".into() })?;
            if let Some(a) = self.get(AccountId(id))? {
                out.push(a);
            }
        }
        Ok((out, more))
    }

    /// What the account uses.
    pub fn usage(&self, id: AccountId) -> Result<Usage> {
        let bytes = self.db.counter(Space::Counters, &Counter::UsedBytes.key(id, 0))?;
        let messages = self.db.counter(Space::Counters, &Counter::UsedMessages.key(id, 0))?;
        Ok(Usage { bytes: bytes.max(0) as u64, messages: messages.max(0) as u64 })
    }

    /// Creates an app token; returns the secret (shown once) and its facts.
    pub async fn create_token(
        &self,
        account: AccountId,
        label: &str,
        now_ms: i64,
    ) -> Result<(String, AppToken)> {
        if label.len() > MAX_LABEL_BYTES {
            return Err(Error::LimitExceeded(format!("token labels are at most {MAX_LABEL_BYTES} bytes")));
        }
        let secret = credentials::new_secret("qtk_");
        let hash = blake3::hash(secret.as_bytes());
        let token = self
            .db
            .write_durable(|txn| {
                let existing = txn.scan_committed(
                    Space::AccountTokens,
                    &KeyRange::prefix(&account_key(account)),
                    Order::Ascending,
                    MAX_TOKENS_PER_ACCOUNT + 1,
                )?;
                if existing.len() >= MAX_TOKENS_PER_ACCOUNT {
                    return Err(Error::LimitExceeded(format!(
                        "an account holds at most {MAX_TOKENS_PER_ACCOUNT} app tokens; revoke some"
                    )));
                }
                let token = AppToken {
                    id: txn.next_id("token")?,
                    account,
                    label: label.to_owned(),
                    created_ms: now_ms,
                };
                txn.put(Space::Tokens, hash.as_bytes().to_vec(), encode(&token)?);
                txn.put(
                    Space::AccountTokens,
                    Key::new().u64(account.0).u64(token.id).build(),
                    hash.as_bytes().to_vec(),
                );
                Ok(token)
            })
            .await?;
        Ok((secret, token))
    }

    /// The account an app token logs into.
    pub fn authenticate_token(&self, secret: &str) -> Result<Account> {
        let hash = blake3::hash(secret.as_bytes());
        let token: AppToken = match self.db.get(Space::Tokens, hash.as_bytes())? {
            Some(b) => decode(Space::Tokens, &b)?,
            None => return Err(Error::BadCredentials),
        };
        self.get(token.account)?.ok_or(Error::BadCredentials)
    }

    /// Whether the token with this BLAKE3 hash still logs into `account`.
    pub fn token_valid(&self, hash: &[u8; 32], account: AccountId) -> Result<bool> {
        match self.db.get(Space::Tokens, hash)? {
            Some(b) => Ok(decode::<AppToken>(Space::Tokens, &b)?.account == account),
            None => Ok(false),
        }
    }

    /// The account's app tokens.
    pub fn tokens(&self, account: AccountId) -> Result<Vec<AppToken>> {
        let rows = self.db.scan(
            Space::AccountTokens,
            &KeyRange::prefix(&account_key(account)),
            Order::Ascending,
            MAX_TOKENS_PER_ACCOUNT,
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for (_, hash) in rows {
            if let Some(b) = self.db.get(Space::Tokens, &hash)? {
                out.push(decode(Space::Tokens, &b)?);
            }
        }
        Ok(out)
    }

    /// Revokes one app token (`Some(id)`) or all of them; returns how many.
    pub async fn revoke_tokens(&self, account: AccountId, id: Option<u64>) -> Result<u32> {
        self.db
            .write_durable(|txn| {
                let prefix = match id {
                    Some(id) => Key::new().u64(account.0).u64(id).build(),
                    None => account_key(account),
                };
                let rows = txn.scan_committed(
                    Space::AccountTokens,
                    &KeyRange::prefix(&prefix),
                    Order::Ascending,
                    MAX_TOKENS_PER_ACCOUNT,
                )?;
                if id.is_some() && rows.is_empty() {
                    return Err(Error::not_found("no such app token"));
                }
                for (k, hash) in &rows {
                    txn.delete(Space::Tokens, hash.clone());
                    txn.delete(Space::AccountTokens, k.clone());
                }
                Ok(rows.len() as u32)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_checked() {
        assert_eq!(normalize_name(" Alice ").expect("ok"), "alice");
        assert_eq!(normalize_name("bob@example.org").expect("ok"), "bob@example.org");
        for bad in ["", ".alice", "al ice", "al/ice", "é", &"a".repeat(65)] {
            assert!(matches!(normalize_name(bad), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
    }

    #[test]
    fn password_length_is_checked() {
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
        assert!(check_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }
}
