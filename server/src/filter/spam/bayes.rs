//! The Bayesian classifier: per-token message counts in the store, combined
//! with Robinson's token probabilities and Fisher's chi-square method (as
//! SpamBayes does), which says "unsure" rather than guessing when the
//! evidence is thin or split.
//!
//! Layout in [`Space::Spam`]:
//! - `c ‖ model ‖ token` → spam count ‖ ham count (u32 each, big-endian):
//!   in how many trained messages of each class the token occurs;
//! - `n ‖ model` → messages trained, spam ‖ ham.
//!
//! Model 0 is the global one (`quaild train`); model `a` is account `a`'s,
//! trained by its reports and its moves into and out of Junk. An account's
//! messages are judged on the sum of both, so twenty reports of a new kind
//! of spam outweigh a global model that never saw it, for that account
//! only.

use std::sync::{Arc, Mutex, RwLock};

use crate::error::Result;
use crate::store::{KeyRange, Order, Snapshot, Space, StoreError, StoreResult, Txn};

/// The global model.
pub const GLOBAL: u64 = 0;
/// Robinson's strength of the prior: how many messages' worth of evidence
/// the neutral guess is worth.
const PRIOR_STRENGTH: f64 = 0.1;
/// The neutral guess for a token.
const PRIOR: f64 = 0.5;
/// Tokens closer to neutral than this are not clues.
const MIN_STRENGTH: f64 = 0.3;
/// Most clues one verdict weighs.
const MAX_CLUES: usize = 150;

fn token_key(model: u64, token: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + token.len());
    k.push(b'c');
    k.extend_from_slice(&model.to_be_bytes());
    k.extend_from_slice(token.as_bytes());
    k
}

fn totals_key(model: u64) -> Vec<u8> {
    let mut k = vec![b'n'];
    k.extend_from_slice(&model.to_be_bytes());
    k
}

/// Messages of each class (spam, ham).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pair {
    /// Spam.
    pub spam: u32,
    /// Ham.
    pub ham: u32,
}

impl Pair {
    fn decode(v: Option<Vec<u8>>) -> Pair {
        v.map_or(Pair::default(), |v| Pair::of(&v))
    }

    fn of(v: &[u8]) -> Pair {
        match v {
            [a, b, c, d, e, f, g, h] => {
                Pair { spam: u32::from_be_bytes([*a, *b, *c, *d]), ham: u32::from_be_bytes([*e, *f, *g, *h]) }
            }
            _ => Pair::default(),
        }
    }

    fn encode(self) -> [u8; 8] {
        let mut v = [0; 8];
        v[..4].copy_from_slice(&self.spam.to_be_bytes());
        v[4..].copy_from_slice(&self.ham.to_be_bytes());
        v
    }

    fn add(self, other: Pair) -> Pair {
        Pair { spam: self.spam.saturating_add(other.spam), ham: self.ham.saturating_add(other.ham) }
    }

    fn bump(&mut self, spam: bool, up: bool) {
        let c = if spam { &mut self.spam } else { &mut self.ham };
        *c = if up { c.saturating_add(1) } else { c.saturating_sub(1) };
    }
}

/// Messages trained into `model`.
pub fn totals(snap: &Snapshot, model: u64) -> StoreResult<Pair> {
    Ok(Pair::decode(crate::store::Reader::get(snap, Space::Spam, &totals_key(model))?))
}

/// The global model in memory. It changes only when it is trained (`quaild
/// train`), while every message is judged on it, so its counts are read
/// once and read again only when its totals differ from the store's.
#[derive(Debug, Default)]
pub struct GlobalCache {
    loaded: RwLock<Option<Arc<Global>>>,
    /// Held while the model is read from the store, so that deliveries
    /// arriving together read it once, not once each.
    loading: Mutex<()>,
}

/// The global model's counts.
#[derive(Debug, Default)]
pub struct Global {
    totals: Pair,
    tokens: foldhash::HashMap<Box<[u8]>, Pair>,
}

impl GlobalCache {
    fn held(&self, totals: Pair) -> Option<Arc<Global>> {
        let held = self.loaded.read().ok()?;
        held.as_ref().filter(|g| g.totals == totals).map(Arc::clone)
    }

    /// Whether the model held is the one of `snap` (a read of its totals).
    pub fn is_current(&self, snap: &Snapshot) -> StoreResult<bool> {
        Ok(self.held(totals(snap, GLOBAL)?).is_some())
    }

    /// The global model as of `snap`.
    pub fn get(&self, snap: &Snapshot) -> StoreResult<Arc<Global>> {
        let totals = totals(snap, GLOBAL)?;
        if let Some(g) = self.held(totals) {
            return Ok(g);
        }
        let _loading = self.loading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(g) = self.held(totals) {
            return Ok(g);
        }
        let mut tokens = foldhash::HashMap::default();
        let prefix = token_key(GLOBAL, "");
        snap.scan_all(Space::Spam, &KeyRange::prefix(&prefix), Order::Ascending, |k, v| {
            tokens.insert(k[prefix.len()..].into(), Pair::of(v));
            Ok::<_, StoreError>(true)
        })?;
        let g = Arc::new(Global { totals, tokens });
        if let Ok(mut held) = self.loaded.write() {
            *held = Some(Arc::clone(&g));
        }
        Ok(g)
    }
}

/// Counts `tokens` (one message) into `model` as spam or ham, or takes
/// them out again (`up` false: the message was trained wrongly before).
pub fn train(txn: &mut Txn<'_>, model: u64, tokens: &[String], spam: bool, up: bool) -> Result<()> {
    let key = totals_key(model);
    let mut totals = Pair::decode(txn.get(Space::Spam, &key)?);
    totals.bump(spam, up);
    put_pair(txn, key, totals);
    for t in tokens {
        let key = token_key(model, t);
        let mut p = Pair::decode(txn.get(Space::Spam, &key)?);
        p.bump(spam, up);
        put_pair(txn, key, p);
    }
    Ok(())
}

fn put_pair(txn: &mut Txn<'_>, key: Vec<u8>, p: Pair) {
    if p == Pair::default() {
        txn.delete(Space::Spam, key);
    } else {
        txn.put(Space::Spam, key, p.encode().to_vec());
    }
}

/// One token's evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Clue<'a> {
    /// The token (the message's own, borrowed).
    pub token: &'a str,
    /// How spammy it is, 0 to 1.
    pub p: f64,
}

/// A classification.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement<'a> {
    /// 0 (ham) to 1 (spam); 0.5 is "cannot tell".
    pub p: f64,
    /// The strongest clues, strongest first.
    pub clues: Vec<Clue<'a>>,
    /// Messages the models were trained on (spam, ham).
    pub trained: Pair,
}

/// Judges `tokens` by the `global` model plus `account`'s (read from
/// `snap`, when it has been trained at all).
pub fn judge<'a>(
    snap: &Snapshot,
    global: &Global,
    account: Option<u64>,
    tokens: &'a [String],
) -> StoreResult<Judgement<'a>> {
    let own = match account.filter(|a| *a != GLOBAL) {
        Some(a) => Some((a, totals(snap, a)?)).filter(|(_, t)| *t != Pair::default()),
        None => None,
    };
    let n = own.map_or(global.totals, |(_, t)| global.totals.add(t));
    if n == Pair::default() {
        return Ok(Judgement { p: 0.5, clues: Vec::new(), trained: n });
    }
    let mut clues: Vec<Clue> = Vec::new();
    for t in tokens {
        let mut c = global.tokens.get(t.as_bytes()).copied().unwrap_or_default();
        if let Some((a, _)) = own {
            c = c.add(Pair::decode(crate::store::Reader::get(snap, Space::Spam, &token_key(a, t))?));
        }
        let Some(f) = spamminess(c, n) else { continue };
        if (f - 0.5).abs() >= MIN_STRENGTH {
            clues.push(Clue { token: t, p: f });
        }
    }
    let by_strength = |a: &Clue, b: &Clue| (b.p - 0.5).abs().total_cmp(&(a.p - 0.5).abs());
    if clues.len() > MAX_CLUES {
        clues.select_nth_unstable_by(MAX_CLUES, by_strength);
        clues.truncate(MAX_CLUES);
    }
    clues.sort_by(by_strength);
    Ok(Judgement { p: combine(&clues), clues, trained: n })
}

/// How spammy a token is, 0 to 1, from `c`, the messages of each class
/// it occurs in, out of `n` trained (`None`: it never occurred).
///
/// Robinson's estimate: the token's rate in spam against its rate in ham,
/// pulled towards [`PRIOR`] the fewer messages it was seen in. Those
/// messages are counted as if both classes had been trained equally
/// (their mean): with five hams trained per spam, a token absent from the
/// few spams but seen in a couple of the many hams is only a weak sign of
/// ham, not a sure one — else every ordinary word the spams happened not
/// to use outvotes the spam's own words.
fn spamminess(c: Pair, n: Pair) -> Option<f64> {
    let (nspam, nham) = (f64::from(n.spam.max(1)), f64::from(n.ham.max(1)));
    let (spam, ham) = (f64::from(c.spam), f64::from(c.ham));
    let mean = (nspam + nham) / 2.0;
    let count = spam * mean / nspam + ham * mean / nham;
    if count == 0.0 {
        return None;
    }
    let (sr, hr) = (spam / nspam, ham / nham);
    let p = sr / (sr + hr);
    Some((PRIOR_STRENGTH * PRIOR + count * p) / (PRIOR_STRENGTH + count))
}

/// Fisher's combining of the clues: how unlikely their spamminess and
/// their hamminess each are by chance, set against each other.
fn combine(clues: &[Clue]) -> f64 {
    if clues.is_empty() {
        return 0.5;
    }
    let (mut s, mut h) = (0.0, 0.0);
    for c in clues {
        let p = c.p.clamp(0.0001, 0.9999);
        s += (1.0 - p).ln();
        h += p.ln();
    }
    let k = clues.len();
    let spam = 1.0 - chi2q(-2.0 * s, 2 * k);
    let ham = 1.0 - chi2q(-2.0 * h, 2 * k);
    (spam - ham + 1.0) / 2.0
}

/// The chi-square survival function for even degrees of freedom `v`.
fn chi2q(x2: f64, v: usize) -> f64 {
    let m = x2 / 2.0;
    let mut term = (-m).exp();
    let mut sum = term;
    for i in 1..v / 2 {
        term *= m / i as f64;
        sum += term;
    }
    sum.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chi2q_matches_known_values() {
        // P(chi2 with 2 df > 2) = e^-1.
        assert!((chi2q(2.0, 2) - (-1.0f64).exp()).abs() < 1e-12);
        assert!((chi2q(0.0, 10) - 1.0).abs() < 1e-12);
        assert!(chi2q(200.0, 4) < 1e-40);
    }

    #[test]
    fn combining_is_neutral_without_clues_and_follows_them() {
        assert_eq!(combine(&[]), 0.5);
        let spammy: Vec<Clue> = (0..10).map(|_| Clue { token: "s", p: 0.99 }).collect();
        let hammy: Vec<Clue> = (0..10).map(|_| Clue { token: "h", p: 0.01 }).collect();
        assert!(combine(&spammy) > 0.99);
        assert!(combine(&hammy) < 0.01);
        let mixed: Vec<Clue> = spammy.iter().chain(&hammy).cloned().collect();
        assert!((combine(&mixed) - 0.5).abs() < 0.05, "{}", combine(&mixed));
    }

    #[test]
    fn evidence_is_counted_as_if_the_classes_were_trained_equally() {
        let n = Pair { spam: 100, ham: 500 };
        assert_eq!(spamminess(Pair::default(), n), None);
        let once_in_spam = spamminess(Pair { spam: 1, ham: 0 }, n).unwrap_or(0.5);
        let once_in_ham = spamminess(Pair { spam: 0, ham: 1 }, n).unwrap_or(0.5);
        // One spam in 100 is stronger evidence than one ham in 500.
        assert!(once_in_spam - 0.5 > 0.5 - once_in_ham, "{once_in_spam} {once_in_ham}");
        assert!(once_in_ham < 0.5 - MIN_STRENGTH, "still a clue: {once_in_ham}");
        // Trained equally, the two are mirror images.
        let even = Pair { spam: 300, ham: 300 };
        let (s, h) = (spamminess(Pair { spam: 1, ham: 0 }, even), spamminess(Pair { spam: 0, ham: 1 }, even));
        assert!((s.unwrap_or(0.0) + h.unwrap_or(0.0) - 1.0).abs() < 1e-12);
        let same_rate = spamminess(Pair { spam: 10, ham: 50 }, n).unwrap_or(0.0);
        assert!((same_rate - 0.5).abs() < 1e-12);
    }

    #[test]
    fn pairs_round_trip_and_saturate() {
        let p = Pair { spam: 7, ham: u32::MAX };
        assert_eq!(Pair::decode(Some(p.encode().to_vec())), p);
        let mut z = Pair::default();
        z.bump(true, false);
        assert_eq!(z, Pair::default());
    }
}
