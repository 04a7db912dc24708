//! Per-account sending limits: a token bucket of recipients per hour for
//! each account, so an account that sends in bulk (a compromised password,
//! a spam run) is throttled on its own and its neighbours are not. A
//! submission over the limit fails temporarily (SMTP 451), so a legitimate
//! sender's client retries later.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Accounts whose buckets are remembered at once (the idlest are
/// forgotten first, which only ever refills them).
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

/// The buckets of all accounts.
#[derive(Debug)]
pub struct Limiter {
    per_hour: u32,
    buckets: Mutex<HashMap<u64, Bucket>>,
}

impl Limiter {
    /// At most `per_hour` recipients per account per hour, in bursts of up
    /// to `per_hour`; 0 means no limit.
    pub fn new(per_hour: u32) -> Self {
        Limiter { per_hour, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes `recipients` from `account`'s bucket at `now_ms`, or says when
    /// to try again.
    pub fn take(&self, account: u64, recipients: usize, now_ms: i64) -> Result<()> {
        if self.per_hour == 0 {
            return Ok(());
        }
        let cap = f64::from(self.per_hour);
        let want = recipients as f64;
        if want > cap {
            return Err(Error::LimitExceeded(format!(
                "{recipients} recipients is more than the {} an account may send to per hour",
                self.per_hour
            )));
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&account) {
            let oldest = buckets.iter().min_by_key(|(_, b)| b.at_ms).map(|(k, _)| *k);
            if let Some(k) = oldest {
                buckets.remove(&k);
            }
        }
        let b = buckets.entry(account).or_insert(Bucket { tokens: cap, at_ms: now_ms });
        let elapsed = (now_ms - b.at_ms).max(0) as f64;
        b.tokens = (b.tokens + elapsed * cap / 3_600_000.0).min(cap);
        b.at_ms = now_ms.max(b.at_ms);
        if b.tokens + 1e-9 < want {
            let wait_s = ((want - b.tokens) * 3600.0 / cap).ceil() as u64;
            return Err(Error::Unavailable(format!(
                "sending limit of {} recipients per hour reached (room again in {wait_s} s)",
                self.per_hour
            )));
        }
        b.tokens -= want;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_empties_refills_and_is_per_account() {
        let l = Limiter::new(10);
        for _ in 0..5 {
            l.take(1, 2, 0).expect("within the limit");
        }
        let e = l.take(1, 1, 0).expect_err("over");
        assert!(matches!(e, Error::Unavailable(_)) && e.to_string().contains("room again in 360 s"), "{e}");
        l.take(2, 10, 0).expect("another account is not throttled");
        // Six minutes refill one recipient.
        l.take(1, 1, 360_000).expect("refilled");
        assert!(l.take(1, 11, 3_600_000).is_err_and(|e| matches!(e, Error::LimitExceeded(_))));
        assert!(Limiter::new(0).take(1, 1_000_000, 0).is_ok());
    }
}
