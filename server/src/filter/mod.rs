//! Content filters on every message in and out: a [`Pipeline`] of
//! [`Filter`]s, each returning a [`Verdict`]. Inbound delivery runs it
//! before the transaction that stores the message; `submit` (and so the
//! gateway's submission ports) before the message is queued. A rejected
//! message is never stored; a filter that cannot decide (clamd down) makes
//! the delivery fail temporarily, so the sender retries, unless the
//! operator set `fail_open`.
//!
//! The pipeline shows each filter the raw message, then walks the parsed
//! message once ([`walk`]) — every leaf part decoded, through nested
//! `message/rfc822` and `message/global` parts, with attachment names after
//! RFC 2047/2231 decoding — under limits on depth, part count and bytes,
//! so hostile structure costs bounded time and memory.

pub mod clamd;
pub mod rate;
pub mod spam;
pub mod virus;

use std::sync::Arc;

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use serde::Deserialize;

/// What a filter decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Deliver.
    Accept,
    /// Deliver to Junk.
    Junk {
        /// The score.
        score: f64,
        /// Each contribution, named.
        reasons: Vec<String>,
    },
    /// Refuse (SMTP 550 5.7.1); never stored.
    Reject(String),
    /// Cannot decide now (SMTP 451); the sender retries.
    TempFail(String),
}

/// Which way the message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Delivered to local accounts.
    Inbound,
    /// Submitted by an account, for the outbox.
    Outbound,
}

/// One decoded leaf part of a message, as the walk meets it.
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    /// Its file name, decoded from RFC 2047/2231, or empty.
    pub name: &'a str,
    /// Its content type, lower case.
    pub mime_type: &'a str,
    /// Its content after the transfer encoding.
    pub content: &'a [u8],
    /// The whole message's size.
    pub message_bytes: usize,
}

/// Limits on what inspecting one message may cost.
#[derive(Debug, Clone, Copy)]
pub struct InspectLimits {
    /// Deepest nesting of embedded messages followed.
    pub max_depth: usize,
    /// Most leaf parts looked at.
    pub max_parts: usize,
    /// Most decoded bytes looked at in all.
    pub max_bytes: usize,
}

impl Default for InspectLimits {
    fn default() -> Self {
        InspectLimits { max_depth: 32, max_parts: 20_000, max_bytes: 256 << 20 }
    }
}

/// Walks every leaf part of `raw`, decoded, through nested `message/rfc822`
/// and `message/global` parts, calling `visit` on each until it returns
/// `Some`. Parts are borrowed from the parse, never copied, so a large
/// attachment is in memory once more at most. Returns the visitor's
/// answer, or `Err` with what limit the structure passed. Never panics
/// (the parser's panics on some malformed nestings end the walk: such a
/// message is judged by its raw bytes alone, as the store keeps it).
pub fn walk<T>(
    raw: &[u8],
    limits: InspectLimits,
    visit: &mut dyn FnMut(&Part<'_>) -> Option<T>,
) -> std::result::Result<Option<T>, String> {
    walk_parsed(parse(raw).as_ref(), raw.len(), limits, visit)
}

/// `raw` parsed; `None` where the parser finds no message or panics (it
/// does on some malformed nestings).
pub fn parse(raw: &[u8]) -> Option<Message<'_>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| MessageParser::default().parse(raw)))
        .ok()
        .flatten()
}

/// [`walk`] over a message already parsed (from `message_bytes` bytes).
fn walk_parsed<T>(
    message: Option<&Message<'_>>,
    message_bytes: usize,
    limits: InspectLimits,
    visit: &mut dyn FnMut(&Part<'_>) -> Option<T>,
) -> std::result::Result<Option<T>, String> {
    let Some(m) = message else { return Ok(None) };
    let walked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Walk { limits, parts: 0, bytes: 0, message_bytes }.message(m, 0, visit)
    }));
    walked.unwrap_or(Ok(None))
}

struct Walk {
    limits: InspectLimits,
    parts: usize,
    bytes: usize,
    message_bytes: usize,
}

impl Walk {
    fn message<T>(
        &mut self,
        message: &Message<'_>,
        depth: usize,
        visit: &mut dyn FnMut(&Part<'_>) -> Option<T>,
    ) -> std::result::Result<Option<T>, String> {
        if depth > self.limits.max_depth {
            return Err(format!("messages nested deeper than {} levels", self.limits.max_depth));
        }
        for part in &message.parts {
            let mime_type = part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_owned(),
                })
                .unwrap_or_default()
                .to_ascii_lowercase();
            let content: &[u8] = match &part.body {
                PartType::Multipart(_) => continue,
                PartType::Message(inner) => {
                    if let Some(v) = self.message(inner, depth + 1, visit)? {
                        return Ok(Some(v));
                    }
                    continue;
                }
                PartType::Text(t) | PartType::Html(t) => t.as_bytes(),
                PartType::Binary(b) | PartType::InlineBinary(b) => b,
            };
            self.parts += 1;
            if self.parts > self.limits.max_parts {
                return Err(format!("more than {} parts", self.limits.max_parts));
            }
            self.bytes += content.len();
            if self.bytes > self.limits.max_bytes {
                return Err(format!("more than {} MiB of decoded parts", self.limits.max_bytes >> 20));
            }
            let name = part.attachment_name().unwrap_or_default();
            let p = Part { name, mime_type: &mime_type, content, message_bytes: self.message_bytes };
            if let Some(v) = visit(&p) {
                return Ok(Some(v));
            }
            // message/global (RFC 6532) and other message/* types the
            // parser leaves as bytes are messages too.
            if mime_type.starts_with("message/")
                && !mime_type.ends_with("delivery-status")
                && let Some(inner) = MessageParser::default().parse(content)
                && let Some(v) = self.message(&inner, depth + 1, visit)?
            {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }
}

/// A content filter.
pub trait Filter: Send + Sync + std::fmt::Debug {
    /// Its name, in reasons and logs.
    fn name(&self) -> &'static str;
    /// Its verdict on the raw message.
    fn check_message(&self, _raw: &[u8], _direction: Direction) -> Verdict {
        Verdict::Accept
    }
    /// Its verdict on one decoded part.
    fn check_part(&self, _part: &Part<'_>, _direction: Direction) -> Verdict {
        Verdict::Accept
    }
}

/// Filter settings (`[filter]` in the server's configuration).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSettings {
    /// Whether the built-in virus scanner runs (EICAR, block list, zip
    /// inspection, dangerous attachment names).
    pub builtin_scanner: bool,
    /// clamd to ask as well: `unix:/path/clamd.sock` or `tcp:HOST:PORT`.
    pub clamd: Option<String>,
    /// How long one clamd scan may take.
    pub clamd_timeout_ms: u64,
    /// clamd's StreamMaxLength: larger messages are scanned part by part.
    pub clamd_stream_max_bytes: u64,
    /// Deliver when a scanner is unavailable instead of failing
    /// temporarily. Off unless the operator turns it on.
    pub fail_open: bool,
    /// BLAKE3 hashes (hex) of attachments to refuse.
    pub blocklist: Vec<String>,
    /// Attachment name extensions refused (lower case, no dot).
    pub dangerous_extensions: Vec<String>,
    /// Recipients one account may submit to per hour (0: no limit).
    pub max_recipients_per_hour: u32,
    /// Whether mail is scored for spam.
    pub spam: bool,
    /// Spam score at which mail goes to the recipient's Junk.
    pub spam_junk_score: f64,
    /// Spam score at which mail is refused (550 5.7.1).
    pub spam_reject_score: f64,
    /// The `Authentication-Results` id of the gateway (its hostname): its
    /// SPF, DKIM, DMARC and ARC results then count in the spam score.
    /// Unset, no such field is trusted.
    pub trusted_authserv_id: Option<String>,
}

impl Default for FilterSettings {
    fn default() -> Self {
        FilterSettings {
            builtin_scanner: true,
            clamd: None,
            clamd_timeout_ms: 30_000,
            clamd_stream_max_bytes: 25 << 20,
            fail_open: false,
            blocklist: Vec::new(),
            dangerous_extensions: virus::DANGEROUS.iter().map(|s| (*s).to_owned()).collect(),
            max_recipients_per_hour: 1000,
            spam: true,
            spam_junk_score: 2.5,
            spam_reject_score: 8.0,
            trusted_authserv_id: None,
        }
    }
}

/// The filters every message passes, in order.
#[derive(Debug, Clone)]
pub struct Pipeline {
    filters: Vec<Arc<dyn Filter>>,
    fail_open: bool,
    limits: InspectLimits,
    sending: Arc<rate::Limiter>,
    spam: Option<Arc<spam::Spam>>,
}

impl Default for Pipeline {
    /// The built-in scanner with its defaults.
    fn default() -> Self {
        Pipeline::from_settings(&FilterSettings::default()).unwrap_or_else(|_| Pipeline::none())
    }
}

impl Pipeline {
    /// Reads what the filters keep in memory (the global spam model) from
    /// `db`, so that the first message does not wait for it; a failure is
    /// logged, and the first message tries again.
    pub fn warm(&self, db: &crate::store::Db) {
        if let Some(spam) = &self.spam
            && let Err(e) = spam.warm(&db.snapshot())
        {
            tracing::warn!("reading the global spam model: {e}");
        }
    }

    /// No filters at all (benchmarks measure ingest without them).
    pub fn none() -> Self {
        Pipeline {
            filters: Vec::new(),
            fail_open: false,
            limits: InspectLimits::default(),
            sending: Arc::new(rate::Limiter::new(0)),
            spam: None,
        }
    }

    /// The filters `settings` asks for.
    pub fn from_settings(settings: &FilterSettings) -> crate::error::Result<Self> {
        let mut filters: Vec<Arc<dyn Filter>> = Vec::new();
        if settings.builtin_scanner {
            filters.push(Arc::new(virus::Scanner::new(&settings.blocklist, &settings.dangerous_extensions)?));
        }
        if let Some(addr) = &settings.clamd {
            filters.push(Arc::new(clamd::Clamd::new(
                addr,
                std::time::Duration::from_millis(settings.clamd_timeout_ms),
                settings.clamd_stream_max_bytes,
            )?));
        }
        let ordered = settings.spam_junk_score.partial_cmp(&settings.spam_reject_score);
        if settings.spam && ordered != Some(std::cmp::Ordering::Less) {
            return Err(crate::error::Error::invalid(format!(
                "[filter] spam_junk_score {} must be below spam_reject_score {}",
                settings.spam_junk_score, settings.spam_reject_score
            )));
        }
        let spam = settings.spam.then(|| {
            Arc::new(spam::Spam::new(spam::SpamSettings {
                junk_score: settings.spam_junk_score,
                reject_score: settings.spam_reject_score,
                trusted_authserv_id: settings.trusted_authserv_id.clone(),
            }))
        });
        Ok(Pipeline {
            filters,
            fail_open: settings.fail_open,
            limits: InspectLimits::default(),
            sending: Arc::new(rate::Limiter::new(settings.max_recipients_per_hour)),
            spam,
        })
    }

    /// Whether any filter runs.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty() && self.spam.is_none()
    }

    /// The spam scorer, unless spam scoring is off.
    pub fn spam(&self) -> Option<&Arc<spam::Spam>> {
        self.spam.as_ref()
    }

    /// Whether a virus scanner looks at every message.
    pub fn scans_viruses(&self) -> bool {
        !self.filters.is_empty()
    }

    /// The combined verdict: the first refusal or temporary failure wins;
    /// junk scores add up.
    pub fn check(&self, raw: &[u8], direction: Direction) -> Verdict {
        if self.filters.is_empty() {
            return Verdict::Accept;
        }
        self.check_parsed(raw, parse(raw).as_ref(), direction)
    }

    /// [`Pipeline::check`] of `raw`, parsed as `parsed`.
    fn check_parsed(&self, raw: &[u8], parsed: Option<&Message<'_>>, direction: Direction) -> Verdict {
        if self.filters.is_empty() {
            return Verdict::Accept;
        }
        let mut junk: Option<(f64, Vec<String>)> = None;
        let mut decide = |f: &dyn Filter, v: Verdict| -> Option<Verdict> {
            match v {
                Verdict::Accept => None,
                Verdict::Junk { score, reasons } => {
                    let j = junk.get_or_insert((0.0, Vec::new()));
                    j.0 += score;
                    j.1.extend(reasons);
                    None
                }
                Verdict::TempFail(why) if self.fail_open => {
                    tracing::warn!(filter = f.name(), "{why}; delivering anyway (fail_open)");
                    None
                }
                v => Some(v),
            }
        };
        for f in &self.filters {
            if let Some(v) = decide(f.as_ref(), f.check_message(raw, direction)) {
                return v;
            }
        }
        let walked = walk_parsed(parsed, raw.len(), self.limits, &mut |part| {
            self.filters.iter().find_map(|f| decide(f.as_ref(), f.check_part(part, direction)))
        });
        match walked {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            // What cannot be looked at is not let through unseen.
            Err(why) => return Verdict::Reject(format!("the message cannot be inspected: {why}")),
        }
        match junk {
            Some((score, reasons)) => Verdict::Junk { score, reasons },
            None => Verdict::Accept,
        }
    }

    /// Whether `account` may send to `recipients` more at `now_ms` (the
    /// per-account sending limit); `Unavailable` when throttled.
    pub fn admit_send(&self, account: u64, recipients: usize, now_ms: i64) -> crate::error::Result<()> {
        self.sending.take(account, recipients, now_ms)
    }

    /// [`Pipeline::check`] of `raw` (parsed as `parsed`) as a result: a
    /// refusal is [`Error::Rejected`](crate::error::Error::Rejected), a
    /// temporary failure [`Error::Unavailable`](crate::error::Error::Unavailable).
    fn admit(
        &self,
        raw: &[u8],
        parsed: Option<&Message<'_>>,
        direction: Direction,
    ) -> crate::error::Result<Verdict> {
        match self.check_parsed(raw, parsed, direction) {
            Verdict::Reject(why) => Err(crate::error::Error::Rejected(why)),
            Verdict::TempFail(why) => Err(crate::error::Error::Unavailable(why)),
            v => Ok(v),
        }
    }
}

impl Pipeline {
    /// Every filter on an inbound message for `accounts`, the message
    /// parsed once: the virus scan, then the spam verdicts (the global
    /// model and each account's own);
    /// [`Error::Rejected`](crate::error::Error::Rejected) for a virus or
    /// when the global score reaches the reject score: a user's own
    /// training sends mail to their Junk, never back to its sender.
    ///
    /// `parsed` is [`parse`] of `raw`: the caller parses once for the
    /// filters and for storing the message.
    pub fn inbound(
        &self,
        db: &crate::store::Db,
        accounts: &[u64],
        raw: &[u8],
        parsed: Option<&Message<'_>>,
    ) -> crate::error::Result<Vec<spam::Record>> {
        self.admit(raw, parsed, Direction::Inbound)?;
        self.judge_inbound(db, accounts, raw, parsed)
    }

    /// Every filter on a message `account` submits, parsed once: the virus
    /// scan, then the spam score (the global model and the account's);
    /// [`Error::Rejected`](crate::error::Error::Rejected) for a virus or at
    /// the reject score. `Some(score)` when it is junk: the sending limit
    /// then counts each recipient many times, so an account that sends
    /// spam is throttled soon, and its neighbours not at all.
    ///
    /// `parsed` is [`parse`] of `raw`, as for [`Pipeline::inbound`].
    pub fn outbound(
        &self,
        db: &crate::store::Db,
        account: u64,
        raw: &[u8],
        parsed: Option<&Message<'_>>,
    ) -> crate::error::Result<Option<f64>> {
        self.admit(raw, parsed, Direction::Outbound)?;
        self.judge_outbound(db, account, raw, parsed)
    }

    fn judge_inbound(
        &self,
        db: &crate::store::Db,
        accounts: &[u64],
        raw: &[u8],
        parsed: Option<&Message<'_>>,
    ) -> crate::error::Result<Vec<spam::Record>> {
        let virus = if self.scans_viruses() { spam::CLEAN } else { spam::UNKNOWN };
        let Some(scorer) = &self.spam else {
            return Ok(vec![spam::Record { virus, ..Default::default() }; accounts.len()]);
        };
        let f = spam::features_parsed(raw, parsed);
        let snap = db.snapshot();
        let global = scorer.score(&snap, None, &f)?;
        if scorer.is_reject(&global) {
            return Err(crate::error::Error::Rejected(format!(
                "spam (score {:.1}, refused from {:.1}): {}",
                global.score,
                scorer.settings().reject_score,
                global.reasons.join("; ")
            )));
        }
        accounts
            .iter()
            .map(|a| {
                // An account that never trained its own model scores as
                // the global one did.
                let s = if scorer.has_own_model(&snap, *a)? {
                    scorer.score(&snap, Some(*a), &f)?
                } else {
                    global.clone()
                };
                Ok(spam::Record {
                    spam: if scorer.is_junk(&s) { spam::SPAM } else { spam::CLEAN },
                    score: s.score as f32,
                    reasons: s.reasons,
                    virus,
                    trained: 0,
                })
            })
            .collect()
    }

    fn judge_outbound(
        &self,
        db: &crate::store::Db,
        account: u64,
        raw: &[u8],
        parsed: Option<&Message<'_>>,
    ) -> crate::error::Result<Option<f64>> {
        let Some(scorer) = &self.spam else { return Ok(None) };
        let f = spam::features_parsed(raw, parsed);
        let s = scorer.score(&db.snapshot(), Some(account), &f)?;
        if scorer.is_reject(&s) {
            return Err(crate::error::Error::Rejected(format!(
                "outgoing spam (score {:.1}): {}",
                s.score,
                s.reasons.join("; ")
            )));
        }
        Ok(scorer.is_junk(&s).then_some(s.score))
    }
}
