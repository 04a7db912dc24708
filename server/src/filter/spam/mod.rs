//! Spam: a score from named rules and a Bayesian classifier, with two
//! thresholds — at the junk score mail goes to the recipient's Junk, at the
//! reject score it is refused at SMTP time. The score is in points around
//! 0 (SpamAssassin's scale): the classifier adds −5 (surely ham) to +5
//! (surely spam), each rule that fires adds or takes its own points, and
//! every contribution is named in the reasons stored with the email.
//!
//! Rules read facts a relay or a sender cannot easily hide: a display name
//! that shows another address, HTML-only mail, text styled to be
//! invisible, links to bare IP addresses or through shorteners or with
//! user info before the host, a `Received` chain that runs backwards in
//! time, the GTUBE test string — and, when `trusted_authserv_id` names
//! the gateway, its SPF, DKIM, DMARC and ARC results (any other
//! `Authentication-Results` field may be the sender's own invention).

pub mod bayes;
pub mod tokens;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::{Snapshot, Space, StoreResult, Txn};
pub use tokens::{Features, features, features_parsed};

/// Spam settings (part of `[filter]`).
#[derive(Debug, Clone)]
pub struct SpamSettings {
    /// Score at which mail goes to Junk.
    pub junk_score: f64,
    /// Score at which mail is refused.
    pub reject_score: f64,
    /// The gateway's `Authentication-Results` id: only its results count.
    pub trusted_authserv_id: Option<String>,
}

/// The spam scorer.
#[derive(Debug)]
pub struct Spam {
    settings: SpamSettings,
    global: bayes::GlobalCache,
}

/// A score and what it is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The sum of the contributions.
    pub score: f64,
    /// Each contribution, named, with its points.
    pub reasons: Vec<String>,
}

/// Points the classifier adds at its most certain (either way).
const BAYES_POINTS: f64 = 10.0;

impl Spam {
    /// A scorer with `settings`.
    pub fn new(settings: SpamSettings) -> Self {
        Spam { settings, global: bayes::GlobalCache::default() }
    }

    /// Reads the global model from `snap` now, so that the first message
    /// does not wait for it (a model trained on a large corpus takes a
    /// while to read).
    pub fn warm(&self, snap: &Snapshot) -> StoreResult<()> {
        self.global.get(snap).map(|_| ())
    }

    /// Its settings.
    pub fn settings(&self) -> &SpamSettings {
        &self.settings
    }

    /// The rules that fire on `f`, with their points.
    pub fn rules(&self, f: &Features) -> Vec<(f64, String)> {
        let mut out = Vec::new();
        if f.gtube {
            out.push((1000.0, "GTUBE: the anti-spam test string".to_owned()));
        }
        if let Some((shown, real)) = &f.name_mismatch {
            out.push((2.0, format!("FROM_NAME_MISMATCH: the name shows {shown}, the sender is {real}")));
        }
        if f.userinfo_links > 0 {
            out.push((2.0, "URL_USERINFO: a link hides its host behind user@".to_owned()));
        }
        if f.ip_links > 0 {
            out.push((1.5, format!("URL_IP: {} link(s) to a bare IP address", f.ip_links)));
        }
        if f.shortener_links > 0 {
            out.push((0.5, format!("URL_SHORTENER: {} link(s) through a URL shortener", f.shortener_links)));
        }
        if f.invisible_chars >= 50 {
            out.push((1.5, format!("HIDDEN_TEXT: {} characters styled to be invisible", f.invisible_chars)));
        }
        if f.html_only {
            out.push((0.1, "HTML_ONLY: no plain-text part".to_owned()));
        }
        if f.html_unread > 0 {
            out.push((
                1.0,
                format!(
                    "HTML_UNREAD: {} KiB in the middle of a huge HTML part not read",
                    f.html_unread.div_ceil(1024)
                ),
            ));
        }
        if let Some(why) = &f.received_backwards {
            out.push((1.5, format!("RECEIVED_FORGED: {why}")));
        }
        if let Some(id) = &self.settings.trusted_authserv_id {
            out.extend(auth_rules(&f.auth_results, id));
        }
        out
    }

    /// Whether `account` has trained a model of its own.
    pub fn has_own_model(&self, snap: &Snapshot, account: u64) -> StoreResult<bool> {
        Ok(account != bayes::GLOBAL && bayes::totals(snap, account)? != bayes::Pair::default())
    }

    /// The score of `f` for `account` (`None`: the global model alone).
    pub fn score(&self, snap: &Snapshot, account: Option<u64>, f: &Features) -> StoreResult<Scored> {
        let mut score = 0.0;
        let mut reasons = Vec::new();
        let global = self.global.get(snap)?;
        let j = bayes::judge(snap, &global, account, &f.tokens)?;
        if j.trained.spam > 0 && j.trained.ham > 0 {
            let points = BAYES_POINTS * (j.p - 0.5);
            score += points;
            let clues: Vec<String> = j
                .clues
                .iter()
                .filter(|c| (c.p > 0.5) == (j.p > 0.5))
                .take(3)
                .map(|c| format!("{:?} {:.2}", c.token, c.p))
                .collect();
            reasons.push(format!(
                "BAYES {:.3} ({:+.1}): {} clues, strongest {}",
                j.p,
                points,
                j.clues.len(),
                if clues.is_empty() { "none".to_owned() } else { clues.join(", ") }
            ));
        }
        for (points, why) in self.rules(f) {
            score += points;
            reasons.push(format!("{why} ({points:+.1})"));
        }
        Ok(Scored { score, reasons })
    }

    /// Whether `s` sends the mail to Junk.
    pub fn is_junk(&self, s: &Scored) -> bool {
        s.score >= self.settings.junk_score
    }

    /// Whether `s` refuses the mail.
    pub fn is_reject(&self, s: &Scored) -> bool {
        s.score >= self.settings.reject_score
    }
}

/// Points from the gateway's own `Authentication-Results` field (the
/// newest with `authserv_id`; the gateway strips forged ones).
fn auth_rules(fields: &[String], authserv_id: &str) -> Vec<(f64, String)> {
    let Some(ours) = fields.iter().find(|f| {
        let id = f.split(';').next().unwrap_or("").split_whitespace().next().unwrap_or("");
        id.eq_ignore_ascii_case(authserv_id)
    }) else {
        return Vec::new();
    };
    // (method, result, the rest of the resinfo)
    let mut results: Vec<(String, String, &str)> = Vec::new();
    for resinfo in ours.split(';').skip(1) {
        let resinfo = resinfo.trim_start();
        let (first, rest) = resinfo.split_once(char::is_whitespace).unwrap_or((resinfo, ""));
        if let Some((method, result)) = first.split_once('=') {
            results.push((method.to_ascii_lowercase(), result.to_ascii_lowercase(), rest));
        }
    }
    let any = |m: &str, r: &str| results.iter().any(|(a, b, _)| a == m && b == r);
    let mut out = Vec::new();
    if any("dmarc", "pass") {
        out.push((-1.5, "DMARC_PASS: the From domain is authenticated".to_owned()));
    } else if any("dmarc", "fail") {
        out.push((3.0, "DMARC_FAIL: the From domain's policy fails".to_owned()));
    }
    if any("dkim", "pass") {
        out.push((-0.5, "DKIM_PASS: a valid signature".to_owned()));
    } else if any("dkim", "fail") {
        out.push((1.0, "DKIM_FAIL: a signature that does not verify".to_owned()));
    }
    if any("spf", "fail") {
        out.push((1.5, "SPF_FAIL: the sending host is not allowed".to_owned()));
    } else if any("spf", "softfail") {
        out.push((0.5, "SPF_SOFTFAIL: the sending host is probably not allowed".to_owned()));
    }
    if any("arc", "fail") {
        out.push((0.5, "ARC_FAIL: a broken forwarding chain".to_owned()));
    }
    if let Some((_, _, rest)) = results.iter().find(|(m, r, _)| m == "dnsbl" && r == "listed") {
        let zone = rest
            .split_whitespace()
            .find_map(|w| w.strip_prefix("policy.zone="))
            .filter(|z| z.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
            .unwrap_or("a blocklist");
        out.push((3.0, format!("DNSBL: the sending host is listed by {zone}")));
    }
    out
}

/// What the filters said of one stored email, and how it was trained.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Spam verdict: 0 unknown (not scored), 1 clean, 2 spam.
    pub spam: u8,
    /// The spam score.
    pub score: f32,
    /// The contributions to it.
    pub reasons: Vec<String>,
    /// Virus verdict: 0 unknown (no scanner ran), 1 clean.
    pub virus: u8,
    /// How the account's model was trained on it: 0 not, 1 spam, 2 ham.
    pub trained: u8,
}

/// `Record::spam` / `virus` values.
pub const UNKNOWN: u8 = 0;
/// Clean.
pub const CLEAN: u8 = 1;
/// Spam.
pub const SPAM: u8 = 2;

fn record_key(account: u64, email: u64) -> Vec<u8> {
    let mut k = vec![b'v'];
    k.extend_from_slice(&account.to_be_bytes());
    k.extend_from_slice(&email.to_be_bytes());
    k
}

/// The filter record of `email`.
pub fn record(snap: &Snapshot, account: u64, email: u64) -> Result<Option<Record>> {
    match crate::store::Reader::get(snap, Space::Spam, &record_key(account, email))? {
        Some(v) => Ok(Some(crate::mail::decode(Space::Spam, &v)?)),
        None => Ok(None),
    }
}

/// Stores the filter record of a new email.
pub fn put_record(txn: &mut Txn<'_>, account: u64, email: u64, r: &Record) -> Result<()> {
    txn.put(Space::Spam, record_key(account, email), crate::mail::encode(r)?);
    Ok(())
}

/// Forgets an expunged email's record (its training stays: the user's
/// judgement of its kind still holds).
pub fn forget(txn: &mut Txn<'_>, account: u64, email: u64) {
    txn.delete(Space::Spam, record_key(account, email));
}

/// Trains `account`'s model on `email` (its `tokens`) as spam or ham,
/// untraining it first if it was trained the other way; nothing when it
/// already was trained so. Returns whether anything changed.
pub fn learn(txn: &mut Txn<'_>, account: u64, email: u64, tokens: &[String], spam: bool) -> Result<bool> {
    let key = record_key(account, email);
    let mut r: Record = match txn.get(Space::Spam, &key)? {
        Some(v) => crate::mail::decode(Space::Spam, &v)?,
        None => Record::default(),
    };
    let want = if spam { 1 } else { 2 };
    if r.trained == want {
        return Ok(false);
    }
    if r.trained != 0 {
        bayes::train(txn, account, tokens, r.trained == 1, false)?;
    }
    bayes::train(txn, account, tokens, spam, true)?;
    r.trained = want;
    txn.put(Space::Spam, key, crate::mail::encode(&r)?);
    Ok(true)
}

/// Messages trained per transaction by [`train_global`].
const TRAIN_BATCH: usize = 200;

/// Trains the global model on `messages` as spam or ham (`quaild train`),
/// [`TRAIN_BATCH`] per transaction; returns how many were trained.
/// `progress` hears the running count.
pub fn train_global(
    db: &crate::store::Db,
    messages: &mut dyn Iterator<Item = Vec<u8>>,
    spam: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<usize> {
    let mut done = 0;
    loop {
        let batch: Vec<Vec<String>> =
            (&mut *messages).take(TRAIN_BATCH).map(|m| features(&m).tokens).collect();
        if batch.is_empty() {
            return Ok(done);
        }
        let (_, ticket) = db.write(|txn| {
            for tokens in &batch {
                bayes::train(txn, bayes::GLOBAL, tokens, spam, true)?;
            }
            Ok::<_, crate::error::Error>(())
        })?;
        db.sync_blocking(ticket)?;
        done += batch.len();
        progress(done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warming_reads_the_global_model_before_the_first_message() {
        let dir = tempfile::tempdir().expect("dir");
        let store = crate::store::FjallStore::open(dir.path()).expect("open");
        let db = crate::store::Db::new(std::sync::Arc::new(store));
        let mail =
            |subject: &str| format!("Subject: {subject}\r\n\r\n{subject} and more words\r\n").into_bytes();
        train_global(&db, &mut vec![mail("lunch tomorrow")].into_iter(), false, &mut |_| {}).expect("ham");
        train_global(&db, &mut vec![mail("cheap pills")].into_iter(), true, &mut |_| {}).expect("spam");
        let spam = Spam::new(SpamSettings { junk_score: 5.0, reject_score: 15.0, trusted_authserv_id: None });
        assert!(!spam.global.is_current(&db.snapshot()).expect("read"));
        spam.warm(&db.snapshot()).expect("warm");
        assert!(spam.global.is_current(&db.snapshot()).expect("read"));
        // Training again makes it stale: the next message reads it anew.
        train_global(&db, &mut vec![mail("cheap pills now")].into_iter(), true, &mut |_| {}).expect("spam");
        assert!(!spam.global.is_current(&db.snapshot()).expect("read"));
    }

    #[test]
    fn only_the_trusted_results_count() {
        let fields = vec![
            "evil.example; dmarc=pass; dkim=pass".to_owned(),
            "mx.test;\r\n\tspf=fail smtp.mailfrom=a@b;\r\n\tdkim=fail header.d=b;\r\n\tdmarc=fail".to_owned(),
        ];
        let rules = auth_rules(&fields, "MX.test");
        let names: Vec<&str> = rules.iter().map(|(_, w)| w.split(':').next().unwrap_or("")).collect();
        assert_eq!(names, ["DMARC_FAIL", "DKIM_FAIL", "SPF_FAIL"]);
        assert!(auth_rules(&fields, "other.test").is_empty());
    }

    #[test]
    fn a_blocklist_listing_is_named_and_a_strange_zone_is_not_echoed() {
        let listed = vec![
            "mx.test;\r\n\tspf=none smtp.mailfrom=a@b;\r\n\tdnsbl=listed policy.zone=bl.test".to_owned(),
        ];
        let rules = auth_rules(&listed, "mx.test");
        assert_eq!(rules, [(3.0, "DNSBL: the sending host is listed by bl.test".to_owned())]);
        let odd = vec!["mx.test; dnsbl=listed policy.zone=<script>".to_owned()];
        assert_eq!(auth_rules(&odd, "mx.test")[0].1, "DNSBL: the sending host is listed by a blocklist");
        let elsewhere = vec!["evil.example; dnsbl=listed policy.zone=bl.test".to_owned()];
        assert!(auth_rules(&elsewhere, "mx.test").is_empty());
    }
}
