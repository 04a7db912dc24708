//! What an attenuated session may see and do (`Session.restrict`).
//!
//! A scope names the mailboxes a session may read (none named: all of
//! them), whether it may write, and until when it lives. Scopes only ever
//! narrow: restricting a restricted session intersects the two, so a
//! capability handed on can never be widened.

use super::{EmailRecord, MailboxId};
use crate::error::{Error, Result};

/// The reach of a session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Mailboxes it may read; `None` = every mailbox of the account.
    pub mailboxes: Option<Vec<MailboxId>>,
    /// Whether it may change nothing.
    pub read_only: bool,
    /// When it ends (ms since the epoch); `None` = with its parent.
    pub expires_ms: Option<i64>,
    /// Made by `restrict`, however wide: such a session mints no app
    /// token (one would outlive it, and the session it came from), even
    /// when it names no mailbox, may write and has no expiry of its own.
    pub restricted: bool,
}

impl Scope {
    /// The scope of a session opened by a login: everything.
    pub const FULL: Scope = Scope { mailboxes: None, read_only: false, expires_ms: None, restricted: false };

    /// Whether this is the full reach of the account.
    pub fn is_full(&self) -> bool {
        self.mailboxes.is_none() && !self.read_only && self.expires_ms.is_none()
    }

    /// The narrower scope a `restrict` asks for: `mailboxes` empty keeps
    /// this scope's mailboxes; asking for one outside them is refused.
    pub fn narrow(&self, mailboxes: &[MailboxId], read_only: bool, expires_ms: Option<i64>) -> Result<Scope> {
        let boxes = if mailboxes.is_empty() {
            self.mailboxes.clone()
        } else {
            if let Some(own) = &self.mailboxes
                && let Some(m) = mailboxes.iter().find(|m| !own.contains(m))
            {
                return Err(Error::Forbidden(format!("mailbox {} is outside this session's scope", m.0)));
            }
            let mut v = mailboxes.to_vec();
            v.sort();
            v.dedup();
            Some(v)
        };
        let expires_ms = match (self.expires_ms, expires_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(Scope { mailboxes: boxes, read_only: self.read_only || read_only, expires_ms, restricted: true })
    }

    /// Whether it has ended at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_ms.is_some_and(|t| now_ms >= t)
    }

    /// Whether it may read `mailbox`.
    pub fn reaches(&self, mailbox: MailboxId) -> bool {
        self.mailboxes.as_ref().is_none_or(|m| m.contains(&mailbox))
    }

    /// Whether it may see `email` (it lies in a mailbox of the scope).
    pub fn sees(&self, email: &EmailRecord) -> bool {
        match &self.mailboxes {
            None => true,
            Some(m) => email.mailboxes.iter().any(|b| m.contains(b)),
        }
    }

    /// Refuses writes to a read-only scope.
    pub fn check_write(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::Forbidden("this session is read-only".into()));
        }
        Ok(())
    }

    /// Refuses what only the account's full reach may do (tokens, mailbox
    /// changes, Trash): `what` names it.
    pub fn check_full(&self, what: &str) -> Result<()> {
        if self.mailboxes.is_some() || self.read_only {
            return Err(Error::Forbidden(format!("{what} needs the account's unrestricted session")));
        }
        Ok(())
    }

    /// Refuses app tokens (creating, listing, revoking) to any session made
    /// by `restrict`: a token is a login of its own, so one minted there
    /// would outlive the session's expiry and its parent.
    pub fn check_tokens(&self, what: &str) -> Result<()> {
        if self.restricted {
            return Err(Error::Forbidden(format!(
                "{what} needs a session opened by a login, not a restricted one"
            )));
        }
        self.check_full(what)
    }

    /// The mailbox a query of this scope runs in: the one asked for when
    /// the scope reaches it, the scope's only mailbox when none was asked.
    pub fn query_mailbox(&self, asked: Option<MailboxId>) -> Result<Option<MailboxId>> {
        match (&self.mailboxes, asked) {
            (None, a) => Ok(a),
            (Some(m), Some(a)) if m.contains(&a) => Ok(Some(a)),
            (Some(_), Some(a)) => {
                Err(Error::Forbidden(format!("mailbox {} is outside this session's scope", a.0)))
            }
            (Some(m), None) if m.len() == 1 => Ok(Some(m[0])),
            (Some(_), None) => {
                Err(Error::Forbidden("this session reaches several mailboxes: name one".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_only_narrow() {
        let (a, b, c) = (MailboxId(1), MailboxId(2), MailboxId(3));
        let s = Scope::FULL.narrow(&[a, b], false, Some(1000)).expect("narrow");
        assert!(s.reaches(a) && !s.reaches(c));
        assert!(matches!(s.narrow(&[c], false, None), Err(Error::Forbidden(_))), "cannot widen to c");
        let t = s.narrow(&[a], true, Some(5000)).expect("narrower");
        assert_eq!(t.mailboxes, Some(vec![a]));
        assert!(t.read_only);
        assert_eq!(t.expires_ms, Some(1000), "the earlier expiry holds");
        let u = t.narrow(&[], false, None).expect("same");
        assert!(u.read_only, "read-only cannot be undone");
        assert_eq!(u.mailboxes, Some(vec![a]));
        assert!(u.expired(1000) && !u.expired(999));
        assert_eq!(u.query_mailbox(None).expect("the only one"), Some(a));
        assert!(s.query_mailbox(None).is_err());
        assert!(matches!(s.query_mailbox(Some(c)), Err(Error::Forbidden(_))));
        assert!(Scope::FULL.is_full() && !s.is_full());
    }
}
