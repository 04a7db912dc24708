//! What the spam classifier sees of a message: distinct tokens from the
//! subject, the sender, the recipients' structure, the MIME structure, the
//! decoded body text and its links — and the facts the named rules score.
//!
//! Only those parts are read. Trace and list headers (`Received`,
//! `Message-ID`, `List-*`, `X-Mailer`) are not tokens: they describe the
//! path a corpus took more than the mail, and a model trained on them
//! memorises its training set. Verdict headers other filters added
//! (`X-Spam-*` and the like) are never read for the same reason, nor is a
//! mailing list's footer at the end of the body: spam sent through a list
//! carries the same footer as the list's ham.

use std::collections::HashSet;
use std::hash::BuildHasher;

use html5gum::Tokenizer;
use html5gum::emitters::callback::{CallbackEmitter, CallbackEvent};
use mail_parser::{Address, Message, MimeHeaders, PartType};
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};

/// Most distinct tokens kept of one message.
pub const MAX_TOKENS: usize = 3000;
/// Most body characters tokenized.
const MAX_BODY_CHARS: usize = 100_000;
/// Most text gathered from a message's parts before normalising (plain
/// parts and HTML's text together): enough that the first
/// [`MAX_BODY_CHARS`] bytes come out as they would from all of it (NFKC
/// shrinks text at most threefold), and a 50 MB body costs no more than
/// this.
const MAX_TEXT_BYTES: usize = 4 * MAX_BODY_CHARS;
/// Most HTML of one part given to the tokenizer: a part of text with no
/// tag is one string to it, read whole before any of it is seen, so the
/// cap on its text alone would not bound the work. A longer part is read
/// at its head and its tail, half of this each, so that padding put in
/// front of the mail (a megabyte of style or comment that shows nothing)
/// does not hide it; what lies between is unread, and a rule says so.
const MAX_HTML_BYTES: usize = 1 << 20;
/// Most links tokenized.
const MAX_URLS: usize = 50;
/// Most CJK bigrams of one text.
const MAX_CJK: usize = 300;
/// Longest word kept as itself.
const MAX_WORD: usize = 20;
/// Deepest embedded message read.
const MAX_DEPTH: usize = 8;
/// Longest mailing-list footer dropped from the end of a body (a sender
/// who writes `List-*` fields of their own hides at most this much).
const MAX_FOOTER: usize = 800;

/// Link hosts that hide where a link goes.
const SHORTENERS: &[&str] = &[
    "bit.ly",
    "tinyurl.com",
    "goo.gl",
    "t.co",
    "ow.ly",
    "is.gd",
    "buff.ly",
    "rebrand.ly",
    "cutt.ly",
    "shorturl.at",
    "tiny.cc",
    "rb.gy",
    "t.ly",
    "v.gd",
    "s.id",
    "snip.ly",
    "lnkd.in",
];

/// The spam test string every filter knows (like EICAR for viruses).
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// A message as the classifier and the rules see it.
#[derive(Debug, Clone, Default)]
pub struct Features {
    /// Distinct tokens, in the order first seen.
    pub tokens: Vec<String>,
    /// Text parts are all HTML (no plain alternative).
    pub html_only: bool,
    /// Characters of text styled small or invisible (a token's worth).
    pub hidden_chars: usize,
    /// Characters of text styled to be invisible: `display: none`,
    /// `visibility: hidden`, a 0 or 1 px font, white on the default
    /// background (the rule's worth; tiny print is not hidden).
    pub invisible_chars: usize,
    /// Links whose host is an IP address.
    pub ip_links: usize,
    /// Links through a URL shortener.
    pub shortener_links: usize,
    /// Links with user info before the host (`http://bank.example@evil`).
    pub userinfo_links: usize,
    /// The From display name holds an address other than the sender's.
    pub name_mismatch: Option<(String, String)>,
    /// The GTUBE test string is in the message.
    pub gtube: bool,
    /// A `Received` field dated more than a day after the newer hop above
    /// it: a chain written by the sender, not by the relays.
    pub received_backwards: Option<String>,
    /// The `Authentication-Results` fields, newest first (whose to trust
    /// is the rules' decision).
    pub auth_results: Vec<String>,
    /// Bytes of HTML between the head and the tail read of parts longer
    /// than the tokenizer is given (see [`MAX_HTML_BYTES`]).
    pub html_unread: usize,
}

#[derive(Default)]
struct Bag {
    /// Hashes of the tokens in `list` (64 bits: a collision among a few
    /// thousand tokens is out of reach).
    seen: foldhash::HashSet<u64>,
    hasher: foldhash::fast::RandomState,
    list: Vec<String>,
}

impl Bag {
    fn add(&mut self, t: String) {
        if self.list.len() < MAX_TOKENS && self.seen.insert(self.hasher.hash_one(t.as_str())) {
            self.list.push(t);
        }
    }

    /// [`Bag::add`] of a token built in a reused buffer: copied only when
    /// new, so a word repeated through a body costs no allocation.
    fn add_str(&mut self, t: &str) {
        if self.list.len() < MAX_TOKENS && self.seen.insert(self.hasher.hash_one(t)) {
            self.list.push(t.to_owned());
        }
    }
}

/// `s` in compatibility form (full-width letters, ligatures and the like
/// become what they look like); most text already is, and is returned as
/// it is.
///
/// Only the non-ASCII runs are normalised, each with the ASCII character
/// before it (a combining mark composes with it): ASCII characters have
/// no decomposition, are never reordered (they are starters) and never
/// compose with what precedes them, so the form of the whole is the forms
/// of such pieces put together. Text with a no-break space in every line
/// (HTML's `&nbsp;`) is thus not pushed whole through the tables.
fn nfkc(s: String) -> String {
    if s.is_ascii() {
        return s;
    }
    if is_nfkc_quick(s.chars()) == IsNormalized::Yes {
        return s;
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    let mut copied = 0;
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|c| !c.is_ascii()) {
        // The run and the ASCII character before it, if any.
        let start = (i + off).saturating_sub(1).max(copied);
        let end = b[i + off..].iter().position(u8::is_ascii).map_or(b.len(), |e| i + off + e);
        out.push_str(&s[copied..start]);
        out.extend(s[start..end].nfkc());
        copied = end;
        i = end;
    }
    out.push_str(&s[copied..]);
    out
}

/// The longest beginning of `s` of at most `max` bytes that ends on a
/// character.
fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// 0 for 0, else the largest power of two not above `n`: every count
/// becomes a few tokens, not one per value.
fn bucket(n: usize) -> usize {
    if n == 0 { 0 } else { 1 << (usize::BITS - 1 - n.leading_zeros()) }
}

/// The features of `raw`. Never fails: what cannot be parsed gives fewer
/// tokens.
pub fn features(raw: &[u8]) -> Features {
    features_parsed(raw, crate::filter::parse(raw).as_ref())
}

/// [`features`] of `raw`, parsed as `parsed`.
pub fn features_parsed(raw: &[u8], parsed: Option<&Message<'_>>) -> Features {
    static GTUBE_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(GTUBE));
    let gtube = GTUBE_FINDER.find(raw).is_some();
    let of =
        parsed.and_then(|m| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| of_message(m))).ok());
    let mut f = of.unwrap_or_default();
    f.gtube = gtube;
    f
}

fn of_message(m: &Message<'_>) -> Features {
    let mut f = Features::default();
    let mut bag = Bag::default();

    // Subject.
    let subject = nfkc(m.subject().unwrap_or("").to_owned());
    subject_tokens(&mut bag, &subject);

    // From.
    let (name, addr) = first_address(m.from());
    let domain = addr.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
    if name.trim().is_empty() {
        bag.add("from:noname".into());
    } else {
        words(&mut bag, &name, "from:name:");
    }
    if domain.is_empty() {
        bag.add("from:noaddr".into());
    } else {
        bag.add(format!("from:dom:{}", last_labels(&domain, 2)));
        bag.add(format!("from:tld:{}", last_labels(&domain, 1)));
    }
    if let Some((local, _)) = addr.rsplit_once('@')
        && has_digit_run(local, 3)
    {
        bag.add("from:lp-digits".into());
    }
    if let Some(inner) = addresses_in(&name).into_iter().next()
        && !inner.eq_ignore_ascii_case(&addr)
    {
        bag.add("from:name-addr-mismatch".into());
        f.name_mismatch = Some((inner, addr.clone()));
    }
    let (_, reply_to) = first_address(m.reply_to());
    if let Some((_, rd)) = reply_to.rsplit_once('@')
        && !domain.is_empty()
        && last_labels(&rd.to_ascii_lowercase(), 2) != last_labels(&domain, 2)
    {
        bag.add("replyto:otherdom".into());
    }

    // Recipients: structure only.
    let to = m.header_raw("To");
    let cc = m.header_raw("Cc").unwrap_or("");
    match to {
        None => bag.add("to:none".into()),
        Some(t) => {
            if t.to_ascii_lowercase().contains("undisclosed") {
                bag.add("to:undisclosed".into());
            }
        }
    }
    let at = to.unwrap_or("").matches('@').count() + cc.matches('@').count();
    bag.add(format!("to:count:{}", bucket(at)));

    // The relays' trace: each hop is prepended, so dates fall going down.
    let hops: Vec<i64> = m.received_all().filter_map(|r| r.date.as_ref().map(|d| d.to_timestamp())).collect();
    if let Some(w) = hops.windows(2).find(|w| w[1] > w[0] + 24 * 3600) {
        f.received_backwards =
            Some(format!("a hop is dated {} h after the one above it", (w[1] - w[0]) / 3600));
    }
    f.auth_results = m
        .headers()
        .iter()
        .filter(|h| h.name.as_str().eq_ignore_ascii_case("Authentication-Results"))
        .filter_map(|h| m.raw_message.get(h.offset_start as usize..h.offset_end as usize))
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();

    // MIME structure and text.
    let mut walk = BodyWalk::default();
    walk.message(&mut bag, m, 0);
    f.html_only = walk.html_parts > 0 && walk.plain_parts == 0;
    f.hidden_chars = walk.hidden;
    f.invisible_chars = walk.invisible;
    if walk.hidden > 0 {
        bag.add(format!("struct:hidden-text:{}", bucket(walk.hidden / 10)));
    }
    if walk.imgs > 0 {
        bag.add(format!("struct:img:{}", bucket(walk.imgs)));
    }
    if walk.forms > 0 {
        bag.add("struct:form".into());
    }
    f.html_unread = walk.html_unread;
    if walk.html_unread > 0 {
        bag.add("struct:html-unread".into());
    }
    let mut body = nfkc(walk.texts.join("\n"));
    if let Some(start) = list_footer(m, &body) {
        body.truncate(start);
    }
    body.truncate(prefix(&body, MAX_BODY_CHARS).len());

    // Links: from the HTML's attributes and the text.
    let (text_urls, rest) = cut_urls(&body);
    let mut urls = walk.urls;
    urls.extend(text_urls);
    let mut distinct = HashSet::new();
    urls.retain(|u| distinct.insert(u.to_lowercase()));
    urls.truncate(MAX_URLS);
    let mut link_domains = HashSet::new();
    for u in &urls {
        url_tokens(&mut bag, &mut f, u, &mut link_domains);
    }
    bag.add(format!("struct:urls:{}", bucket(urls.len())));
    if !domain.is_empty() && !link_domains.is_empty() {
        let from_reg = last_labels(&domain, 2);
        if link_domains.contains(from_reg) {
            bag.add("align:from-url:yes".into());
        } else {
            bag.add("align:from-url:no".into());
            bag.add(format!("align:from-url:ndoms:{}", bucket(link_domains.len())));
        }
    }
    let (emails, rest) = cut_emails(&rest);
    for e in emails {
        if let Some((_, d)) = e.rsplit_once('@') {
            bag.add(format!("email:dom:{}", last_labels(&d.to_ascii_lowercase(), 2)));
        }
    }
    words(&mut bag, &rest, "");
    let (mut bangs, mut letters, mut upper, mut chars) = (0, 0, 0, 0);
    if body.is_ascii() {
        chars = body.len();
        for c in body.bytes() {
            bangs += usize::from(c == b'!');
            letters += usize::from(c.is_ascii_alphabetic());
            upper += usize::from(c.is_ascii_uppercase());
        }
    } else {
        for c in body.chars() {
            chars += 1;
            bangs += usize::from(c == '!');
            letters += usize::from(c.is_alphabetic());
            upper += usize::from(c.is_uppercase());
        }
    }
    bag.add(format!("body:bang:{}", bucket(bangs)));
    if letters >= 40 {
        bag.add(format!("body:upper:{}", upper * 10 / letters));
    }
    bag.add(format!("body:len:{}", bucket(chars / 100)));
    if has_remove_word(&body) {
        bag.add("body:has-remove".into());
    }
    f.tokens = bag.list;
    f
}

/// Where the footer a mailing list appended to `body` starts: the
/// topmost separator line (a footer may stack blocks, a sponsor's above
/// the list's), else the nearest blank line, above the first place in the
/// body's last [`MAX_FOOTER`] bytes that names the list as its `List-*`
/// fields do. A footer is the list's words, not the sender's: spam sent
/// through a list carries the same footer as the list's ham, and a model
/// that reads it learns the list rather than the mail.
fn list_footer(m: &Message<'_>, body: &str) -> Option<usize> {
    let mut markers = Vec::new();
    for name in ["List-Unsubscribe", "List-Subscribe", "List-Post", "List-Help", "List-Archive"] {
        let Some(v) = m.header_raw(name) else { continue };
        for part in v.split('<').skip(1).filter_map(|p| p.split_once('>')).map(|(inner, _)| inner) {
            let target = part.trim();
            let target = target.strip_prefix("mailto:").unwrap_or(target);
            let target = target.split('?').next().unwrap_or("").trim_end_matches('/');
            if target.len() >= 8 {
                markers.push(target.to_ascii_lowercase());
            }
        }
    }
    // Mailman's own footer names the list's `listinfo` page, also where
    // a relay dropped the `List-*` fields.
    markers.push("/listinfo/".to_owned());
    let mut from = body.len().saturating_sub(MAX_FOOTER);
    while !body.is_char_boundary(from) {
        from += 1;
    }
    let tail = body[from..].to_ascii_lowercase();
    let at = markers.iter().filter_map(|mk| tail.find(mk.as_str())).min()?;
    // The lines above the mention, nearest first, within the tail.
    let mut blank = None;
    let mut sep = None;
    let mut line_end = tail[..at].rfind('\n')?;
    loop {
        let line_start = tail[..line_end].rfind('\n').map_or(0, |i| i + 1);
        let line = tail[line_start..line_end].trim();
        if line.len() >= 4 && line.chars().all(|c| matches!(c, '_' | '-' | '=' | '*' | '~')) {
            sep = Some(from + line_start);
        }
        if line.is_empty() && blank.is_none() {
            blank = Some(from + line_start);
        }
        if line_start == 0 {
            break;
        }
        line_end = line_start - 1;
    }
    sep.or(blank)
}

fn subject_tokens(bag: &mut Bag, subject: &str) {
    if subject.trim().is_empty() {
        bag.add("subject:empty".into());
        return;
    }
    words(bag, subject, "subject:");
    let letters = subject.chars().filter(|c| c.is_alphabetic()).count();
    let upper = subject.chars().filter(|c| c.is_uppercase()).count();
    if letters >= 6 && upper * 10 > letters * 8 {
        bag.add("subject:ALLCAPS".into());
    }
    bag.add(format!("subject:bang:{}", bucket(subject.matches('!').count())));
    if subject.contains('$') {
        bag.add("subject:dollar".into());
    }
    // "Hello      x7gq": a random tail after a gap, to defeat checksums.
    let trimmed = subject.trim_end();
    if let Some(pos) = trimmed.rfind(char::is_whitespace) {
        let gap = trimmed[..=pos].chars().rev().take_while(|c| c.is_whitespace()).count();
        if gap >= 3 {
            bag.add("subject:trailing-gap".into());
        }
    }
}

fn first_address(a: Option<&Address<'_>>) -> (String, String) {
    let Some(a) = a else { return (String::new(), String::new()) };
    match a.first() {
        Some(addr) => {
            (addr.name().unwrap_or("").to_owned(), addr.address().unwrap_or("").trim().to_ascii_lowercase())
        }
        None => (String::new(), String::new()),
    }
}

/// The last `n` dot-separated labels of `host`.
fn last_labels(host: &str, n: usize) -> &str {
    let host = host.trim_end_matches('.');
    let mut dots = 0;
    for (i, c) in host.char_indices().rev() {
        if c == '.' {
            dots += 1;
            if dots == n {
                return &host[i + 1..];
            }
        }
    }
    host
}

fn has_digit_run(s: &str, n: usize) -> bool {
    let mut run = 0;
    for c in s.chars() {
        run = if c.is_ascii_digit() { run + 1 } else { 0 };
        if run >= n {
            return true;
        }
    }
    false
}

fn has_remove_word(body: &str) -> bool {
    use std::sync::LazyLock;
    static WORDS: LazyLock<Vec<memchr::memmem::Finder<'static>>> = LazyLock::new(|| {
        ["remove", "unsubscribe", "optout", "opt-out", "opt out"]
            .iter()
            .map(memchr::memmem::Finder::new)
            .collect()
    });
    // Lower case, of ASCII letters only: the words are ASCII, and no
    // other character lower-cases to one of their letters (the Kelvin
    // sign's 'k' is in none of them), so they are found as in a full
    // Unicode lower-casing, which costs tables and a copy.
    let lower = body.to_ascii_lowercase();
    let word_at = |i: usize, len: usize| {
        let before = lower[..i].chars().next_back().is_none_or(|c| !c.is_alphanumeric() && c != '_');
        let after = lower[i + len..].chars().next().is_none_or(|c| !c.is_alphanumeric() && c != '_');
        before && after
    };
    WORDS.iter().any(|w| w.find_iter(lower.as_bytes()).any(|i| word_at(i, w.needle().len())))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Script {
    Han,
    Kana,
    Hangul,
    Cyrillic,
    Greek,
    Arabic,
    Hebrew,
    Thai,
}

const SCRIPTS: [(Script, &str); 8] = [
    (Script::Han, "han"),
    (Script::Kana, "kana"),
    (Script::Hangul, "hangul"),
    (Script::Cyrillic, "cyrillic"),
    (Script::Greek, "greek"),
    (Script::Arabic, "arabic"),
    (Script::Hebrew, "hebrew"),
    (Script::Thai, "thai"),
];

fn script_of(c: char) -> Option<Script> {
    Some(match c as u32 {
        0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF => Script::Han,
        0x3040..=0x30FF | 0x31F0..=0x31FF | 0xFF66..=0xFF9F => Script::Kana,
        0x1100..=0x11FF | 0x3130..=0x318F | 0xAC00..=0xD7AF => Script::Hangul,
        0x0400..=0x052F => Script::Cyrillic,
        0x0370..=0x03FF => Script::Greek,
        0x0600..=0x06FF => Script::Arabic,
        0x0590..=0x05FF => Script::Hebrew,
        0x0E00..=0x0E7F => Script::Thai,
        _ => return None,
    })
}

/// Word tokens of `text`, each prefixed: lower case, outer punctuation
/// trimmed (inner kept: `e-mail`, `$10,000`), numbers by length only, long
/// words by first letter and length. A word written with capitals is also
/// a token as written (`case:FREE`, `case:Viagra`): "FREE" shouts where
/// "free" does not, and a word never seen in its capitals still counts
/// through its lower-case token. Runs of Han, kana, Hangul and Thai,
/// which have no spaces, become character pairs.
fn words(bag: &mut Bag, text: &str, prefix: &str) {
    let owned;
    let mut text = text;
    if text.chars().any(|c| c as u32 >= 0x370) {
        owned = scripts_and_runs(bag, text, prefix);
        if let Some(o) = &owned {
            text = o;
        }
    }
    // The token under construction: `prefix`, then the word in lower case.
    let mut token = String::with_capacity(prefix.len() + 32);
    // The same for the word as written.
    let mut cased = String::with_capacity(prefix.len() + 37);
    let one = |w: &str| word(bag, prefix, w, &mut token, &mut cased);
    if text.is_ascii() {
        ascii_split_whitespace(text, one);
    } else {
        text.split_whitespace().for_each(one);
    }
}

/// Calls `f` with each word of ASCII `text` as `split_whitespace` splits
/// it, a byte at a time rather than a character: ASCII's white space is
/// tab, line feed, vertical tab, form feed, return and space.
fn ascii_split_whitespace<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let mut start = None;
    for (i, c) in text.bytes().enumerate() {
        match (matches!(c, 9..=13 | b' '), start) {
            (true, Some(s)) => {
                f(&text[s..i]);
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        f(&text[s..]);
    }
}

/// The script tokens of `text` (which has characters from U+0370 up), and
/// the pairs of each run of Han, kana, Hangul or Thai: then also the text
/// with each such run replaced by a space, for the word tokens.
fn scripts_and_runs(bag: &mut Bag, text: &str, prefix: &str) -> Option<String> {
    let mut counts = [0usize; 8];
    let mut classified = 0;
    let mut run: Vec<char> = Vec::new();
    let mut cjk = 0;
    let flush = |run: &mut Vec<char>, bag: &mut Bag, cjk: &mut usize| {
        if run.len() == 1 && *cjk < MAX_CJK {
            bag.add(format!("{prefix}cjk:{}", run[0]));
            *cjk += 1;
        }
        for pair in run.windows(2) {
            if *cjk >= MAX_CJK {
                break;
            }
            bag.add(format!("{prefix}cjk:{}{}", pair[0], pair[1]));
            *cjk += 1;
        }
        run.clear();
    };
    let mut owned: Option<String> = None;
    // Where the current run starts, and how much of `text` is in `owned`.
    let (mut run_start, mut copied) = (0, 0);
    for (i, c) in text.char_indices() {
        let s = if (c as u32) < 0x370 { None } else { script_of(c) };
        if let Some(s) = s {
            counts[s as usize] += 1;
            classified += 1;
        }
        if matches!(s, Some(Script::Han | Script::Kana | Script::Hangul | Script::Thai)) {
            if run.is_empty() {
                run_start = i;
            }
            run.push(c);
        } else if !run.is_empty() {
            flush(&mut run, bag, &mut cjk);
            let o = owned.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[copied..run_start]);
            o.push(' ');
            copied = i;
        }
    }
    if !run.is_empty() {
        flush(&mut run, bag, &mut cjk);
        // A run at the end is dropped.
        let o = owned.get_or_insert_with(String::new);
        o.push_str(&text[copied..run_start]);
        copied = text.len();
    }
    for (s, name) in SCRIPTS {
        let n = counts[s as usize];
        if n > 0 && (n >= 10 || n * 2 >= classified) {
            bag.add(format!("{prefix}script:{name}"));
        }
    }
    owned.map(|mut o| {
        o.push_str(&text[copied..]);
        o
    })
}

/// The tokens of one white-space separated word `w` (see [`words`]);
/// `token` and `cased` are buffers kept between words.
fn word(bag: &mut Bag, prefix: &str, w: &str, token: &mut String, cased: &mut String) {
    if w.is_ascii() {
        return ascii_word(bag, prefix, w, token, cased);
    }
    let w = w.trim_matches(|c: char| !(c.is_alphanumeric() || c == '$' || c == '!' || c == '%'));
    if w.is_empty() {
        return;
    }
    token.clear();
    token.push_str(prefix);
    if w.is_ascii() {
        token.push_str(w);
        token[prefix.len()..].make_ascii_lowercase();
    } else {
        token.push_str(&w.to_lowercase());
    }
    let lower = &token[prefix.len()..];
    let n = if w.is_ascii() { lower.len() } else { lower.chars().count() };
    if n < 3 {
        if n == 2 && (lower.contains('$') || lower == "!!") {
            bag.add_str(token);
        }
        return;
    }
    if lower.chars().all(|c| c.is_numeric()) {
        bag.add(format!("{prefix}num:{}", n.min(12)));
    } else if n > MAX_WORD {
        let first = lower.chars().next().unwrap_or('?');
        bag.add(format!("{prefix}skip:{first}:{}", n / 10 * 10));
    } else {
        bag.add_str(token);
        if w.chars().any(char::is_uppercase) {
            cased.clear();
            cased.push_str(prefix);
            cased.push_str("case:");
            cased.push_str(w);
            bag.add_str(cased);
        }
    }
}

/// [`word`] of an ASCII word, a byte at a time: the same tokens.
fn ascii_word(bag: &mut Bag, prefix: &str, w: &str, token: &mut String, cased: &mut String) {
    let kept = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'$' | b'!' | b'%');
    let b = w.as_bytes();
    let Some(start) = b.iter().position(kept) else { return };
    let end = b.iter().rposition(kept).map_or(start, |e| e + 1);
    let w = &w[start..end];
    let n = w.len();
    token.clear();
    token.push_str(prefix);
    token.push_str(w);
    token[prefix.len()..].make_ascii_lowercase();
    let lower = &token[prefix.len()..];
    if n < 3 {
        if n == 2 && (lower.contains('$') || lower == "!!") {
            bag.add_str(token);
        }
        return;
    }
    if lower.bytes().all(|c| c.is_ascii_digit()) {
        bag.add(format!("{prefix}num:{}", n.min(12)));
    } else if n > MAX_WORD {
        let first = char::from(lower.as_bytes()[0]);
        bag.add(format!("{prefix}skip:{first}:{}", n / 10 * 10));
    } else {
        bag.add_str(token);
        if w.bytes().any(|c| c.is_ascii_uppercase()) {
            cased.clear();
            cased.push_str(prefix);
            cased.push_str("case:");
            cased.push_str(w);
            bag.add_str(cased);
        }
    }
}

fn is_url_end(c: char) -> bool {
    c.is_whitespace() || "\"'<>()[]{}".contains(c)
}

/// Cuts `http://`, `https://` and `www.` links out of `text`: the links,
/// and the text with a space where each was. Only an `h` or a `w` can
/// start one: the text between them is copied whole.
fn cut_urls(text: &str) -> (Vec<String>, String) {
    let b = text.as_bytes();
    let starts_with =
        |at: usize, p: &str| b.get(at..at + p.len()).is_some_and(|s| s.eq_ignore_ascii_case(p.as_bytes()));
    let mut urls = Vec::new();
    let mut rest = String::with_capacity(text.len());
    let (mut copied, mut i) = (0, 0);
    // `h` and `H` (`w` and `W`) differ only in the bit 0x20.
    while let Some(off) = b[i..].iter().position(|c| matches!(c | 0x20, b'h' | b'w')) {
        let at = i + off;
        if starts_with(at, "http://") || starts_with(at, "https://") || starts_with(at, "www.") {
            let end = text[at..].find(is_url_end).map_or(text.len(), |e| at + e);
            rest.push_str(&text[copied..at]);
            rest.push(' ');
            urls.push(text[at..end].to_owned());
            (copied, i) = (end, end);
        } else {
            i = at + 1;
        }
    }
    rest.push_str(&text[copied..]);
    (urls, rest)
}

fn is_local_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '.' || c == '+' || c == '-'
}

fn is_domain_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

/// The `local@domain.tld` at `at` (the index of its `@`), as byte bounds.
fn address_at(text: &str, at: usize) -> Option<(usize, usize)> {
    let start =
        text[..at].char_indices().rev().take_while(|(_, c)| is_local_char(*c)).last().map(|(i, _)| i)?;
    let mut end = at + 1;
    let mut labels = 0;
    loop {
        let label = text[end..].find(|c: char| !is_domain_char(c)).map_or(text.len() - end, |e| e);
        if label == 0 {
            break;
        }
        labels += 1;
        end += label;
        if text[end..].starts_with('.') && text[end + 1..].chars().next().is_some_and(is_domain_char) {
            end += 1;
        } else {
            break;
        }
    }
    (labels >= 2).then_some((start, end))
}

/// Cuts e-mail addresses out of `text`, like [`cut_urls`].
fn cut_emails(text: &str) -> (Vec<String>, String) {
    let mut found = Vec::new();
    let mut rest = String::with_capacity(text.len());
    let mut copied = 0;
    for (at, _) in text.match_indices('@') {
        if at < copied {
            continue;
        }
        if let Some((s, e)) = address_at(text, at)
            && s >= copied
        {
            rest.push_str(&text[copied..s]);
            rest.push(' ');
            found.push(text[s..e].to_owned());
            copied = e;
        }
    }
    rest.push_str(&text[copied..]);
    (found, rest)
}

fn addresses_in(text: &str) -> Vec<String> {
    cut_emails(text).0.into_iter().map(|a| a.to_ascii_lowercase()).collect()
}

fn is_ip_host(host: &str) -> bool {
    let parts: Vec<&str> = host.split('.').collect();
    (parts.len() == 4 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
        || ((8..=10).contains(&host.len()) && host.bytes().all(|b| b.is_ascii_digit()))
        || host.starts_with("0x")
}

fn url_tokens(bag: &mut Bag, f: &mut Features, url: &str, link_domains: &mut HashSet<String>) {
    let mut u = url.trim().to_lowercase();
    if u.starts_with("www.") {
        u.insert_str(0, "http://");
    }
    if let Some(addr) = u.strip_prefix("mailto:") {
        if let Some((_, d)) = addr.split(['?', '&']).next().unwrap_or("").rsplit_once('@') {
            bag.add(format!("mailto:dom:{}", last_labels(d, 2)));
        }
        return;
    }
    let Some(rest) = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://")) else { return };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let mut host = authority;
    if let Some((_, h)) = authority.rsplit_once('@') {
        bag.add("url:userinfo".into());
        f.userinfo_links += 1;
        host = h;
    }
    if let Some((h, _)) = host.split_once(':') {
        bag.add("url:port".into());
        host = h;
    }
    let host = host.trim_end_matches('.');
    if host.contains('%') {
        bag.add("url:pct-host".into());
    }
    if is_ip_host(host) {
        bag.add("url:ip".into());
        f.ip_links += 1;
    } else if !host.is_empty() {
        let reg = last_labels(host, 2);
        bag.add(format!("url:host:{reg}"));
        if host.matches('.').count() >= 2 {
            bag.add(format!("url:host:{}", last_labels(host, 3)));
        }
        bag.add(format!("url:tld:{}", last_labels(host, 1)));
        if reg.contains('.') {
            link_domains.insert(reg.to_owned());
        }
        if SHORTENERS.contains(&reg) {
            bag.add("url:shortener".into());
            f.shortener_links += 1;
        }
    }
    if !path.is_empty() {
        let pieces: Vec<&str> =
            path.split(['/', '?', '&', '=', '#', '.', '_', '-']).filter(|p| !p.is_empty()).collect();
        bag.add(format!("url:pathlen:{}", bucket(pieces.len())));
        for p in pieces.iter().take(8) {
            let n = p.chars().count();
            if (3..=MAX_WORD).contains(&n) && !p.bytes().all(|b| b.is_ascii_digit()) {
                bag.add(format!("url:path:{p}"));
            }
        }
        if path.contains('%') {
            bag.add("url:pct-path".into());
        }
    }
}

#[derive(Default)]
struct BodyWalk {
    texts: Vec<String>,
    /// Bytes in `texts`, at most [`MAX_TEXT_BYTES`].
    gathered: usize,
    /// HTML bytes given to the tokenizer.
    html_read: usize,
    /// HTML bytes not given to it (between a long part's head and tail).
    html_unread: usize,
    urls: Vec<String>,
    hidden: usize,
    invisible: usize,
    imgs: usize,
    forms: usize,
    html_parts: usize,
    plain_parts: usize,
}

impl BodyWalk {
    fn message(&mut self, bag: &mut Bag, m: &Message<'_>, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        for part in &m.parts {
            let (ctype, sub) = part
                .content_type()
                .map(|ct| (ct.ctype().to_ascii_lowercase(), ct.subtype().unwrap_or("").to_ascii_lowercase()))
                .unwrap_or_else(|| ("text".into(), "plain".into()));
            let full = format!("{ctype}/{sub}");
            if let PartType::Multipart(_) = part.body {
                bag.add(format!("mime:{full}"));
                continue;
            }
            if full != "text/html" {
                bag.add(format!("ctype:{full}"));
            }
            if let Some(cs) = part.content_type().and_then(|ct| ct.attribute("charset")) {
                bag.add(format!("charset:{}", cs.to_ascii_lowercase()));
            }
            if let Some(cte) = part.content_transfer_encoding() {
                bag.add(format!("cte:{}", cte.to_ascii_lowercase()));
            }
            if let Some(name) = part.attachment_name()
                && let Some((_, ext)) = name.rsplit_once('.')
                && !ext.is_empty()
                && ext.chars().count() <= 8
            {
                bag.add(format!("attach:ext:{}", ext.to_lowercase()));
            }
            match &part.body {
                PartType::Text(t) => {
                    let end = t.char_indices().nth(2000).map_or(t.len(), |(i, _)| i);
                    let head = t[..end].to_ascii_lowercase();
                    if ["<html", "<body", "<table", "<font"].iter().any(|p| head.contains(p)) {
                        self.html(t);
                    } else {
                        self.plain_parts += 1;
                        self.gather(std::borrow::Cow::Borrowed(t));
                    }
                }
                PartType::Html(t) => self.html(t),
                PartType::Message(inner) => self.message(bag, inner, depth + 1),
                _ => {}
            }
        }
    }

    /// Keeps `text` (a part's), or as much of it as [`MAX_TEXT_BYTES`]
    /// leaves room for. Lines of another filter's report pasted into the
    /// body (`SPAM: ...`) are not the mail: they are dropped first, so
    /// they cannot fill the cap and push the mail's own text past it.
    fn gather(&mut self, text: std::borrow::Cow<'_, str>) {
        if self.gathered >= MAX_TEXT_BYTES {
            return;
        }
        let text = if memchr::memmem::find(text.as_bytes(), b"SPAM: ").is_some() {
            let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("SPAM: ")).collect();
            std::borrow::Cow::Owned(kept.join("\n"))
        } else {
            text
        };
        let keep = prefix(&text, MAX_TEXT_BYTES - self.gathered).len();
        self.gathered += keep;
        // Only what is kept is copied; an owned text is cut in place.
        self.texts.push(match text {
            std::borrow::Cow::Borrowed(t) => t[..keep].to_owned(),
            std::borrow::Cow::Owned(mut t) => {
                t.truncate(keep);
                t
            }
        });
    }

    fn html(&mut self, html: &str) {
        self.html_parts += 1;
        if html.len() <= MAX_HTML_BYTES {
            return self.read_html(html);
        }
        let head = prefix(html, MAX_HTML_BYTES / 2);
        // The tail from a character, then from the first tag in it, so
        // the tokenizer starts between elements, as it did at the head.
        let mut from = html.len() - MAX_HTML_BYTES / 2;
        while !html.is_char_boundary(from) {
            from += 1;
        }
        if let Some(lt) = memchr::memchr(b'<', &html.as_bytes()[from..]) {
            from += lt;
        }
        let tail = &html[from..];
        self.html_unread += html.len() - head.len() - tail.len();
        self.read_html(head);
        self.read_html(tail);
    }

    fn read_html(&mut self, html: &str) {
        self.html_read += html.len();
        let mut h = HtmlText::default();
        h.read(html);
        self.gather(std::borrow::Cow::Owned(h.text));
        self.urls.extend(h.urls);
        self.hidden += h.hidden;
        self.invisible += h.invisible;
        self.imgs += h.imgs;
        self.forms += h.forms;
    }
}

/// HTML as the reader sees it: its text, its links, and how much of the
/// text is styled not to be seen.
#[derive(Debug, Default)]
pub(crate) struct HtmlText {
    pub(crate) text: String,
    pub(crate) urls: Vec<String>,
    pub(crate) hidden: usize,
    pub(crate) invisible: usize,
    imgs: usize,
    forms: usize,
}

const VOID: &[&str] =
    &["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"];
const BREAKS: &[&str] =
    &["br", "p", "div", "tr", "td", "li", "table", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "blockquote"];
const SILENT: &[&str] = &["script", "style", "head", "title"];

/// Whether a `style` attribute hides its element's text.
fn style_hides(style: &str) -> bool {
    let s: String = style.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    if s.contains("display:none") || s.contains("visibility:hidden") {
        return true;
    }
    s.match_indices("font-size:").any(|(i, m)| {
        let v = &s[i + m.len()..];
        let Some(rest) = v.strip_prefix('0').or_else(|| v.strip_prefix('1')) else { return false };
        let rest = match rest.strip_prefix('.') {
            Some(r) if r.starts_with(|c: char| c.is_ascii_digit()) => {
                r.trim_start_matches(|c: char| c.is_ascii_digit())
            }
            _ => rest,
        };
        let rest = rest.strip_prefix("px").or_else(|| rest.strip_prefix("pt")).unwrap_or(rest);
        !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_')
    })
}

/// The attributes of a start tag that [`HtmlText`] reads: the links, in
/// the order they are taken, then the styling.
const TAG_ATTRIBUTES: [&[u8]; 7] = [b"href", b"src", b"action", b"background", b"style", b"color", b"size"];

/// An element open around the text.
struct Open {
    name: Vec<u8>,
    hidden: bool,
    invisible: bool,
    silent: bool,
}

impl HtmlText {
    /// Reads `html` through the tokenizer's events, whose names and
    /// values are borrowed: no allocation per tag, attribute or string.
    /// The first of repeated attributes counts, and one given without a
    /// value has the empty value, as in the HTML standard.
    pub(crate) fn read(&mut self, html: &str) {
        let mut stack: Vec<Open> = Vec::new();
        // The start tag being read: its name, and the values of the
        // attributes in TAG_ATTRIBUTES it has, and which one is being read.
        let mut name: Vec<u8> = Vec::new();
        let mut values: [Option<Vec<u8>>; 7] = Default::default();
        let mut current: Option<usize> = None;
        let callback = |event: CallbackEvent<'_>, _: html5gum::Span<()>| -> Option<()> {
            match event {
                CallbackEvent::OpenStartTag { name: n } => {
                    name.clear();
                    name.extend(n.iter().map(u8::to_ascii_lowercase));
                }
                CallbackEvent::AttributeName { name: n } => {
                    current = TAG_ATTRIBUTES.iter().position(|a| *a == n);
                    match current {
                        Some(i) if values[i].is_none() => values[i] = Some(Vec::new()),
                        // Repeated: the first one counts.
                        _ => current = None,
                    }
                }
                CallbackEvent::AttributeValue { value } => {
                    if let Some(v) = current.and_then(|i| values[i].as_mut()) {
                        v.extend_from_slice(value);
                    }
                }
                CallbackEvent::CloseStartTag { self_closing } => {
                    current = None;
                    let [href, src, action, background, style, color, size] = std::mem::take(&mut values);
                    for url in [href, src, action, background].into_iter().flatten() {
                        self.urls.push(String::from_utf8_lossy(&url).into_owned());
                    }
                    self.start_tag(&mut stack, std::mem::take(&mut name), self_closing, [style, color, size]);
                }
                CallbackEvent::EndTag { name: n } => {
                    // Attributes seen in an end tag belong to nothing.
                    (current, values) = (None, Default::default());
                    if let Some(i) = stack.iter().rposition(|o| o.name.eq_ignore_ascii_case(n)) {
                        stack.truncate(i);
                    }
                    if BREAKS.iter().any(|b| b.as_bytes().eq_ignore_ascii_case(n)) {
                        self.text.push('\n');
                    }
                }
                CallbackEvent::String { value } => {
                    let top = stack.last();
                    if top.is_some_and(|o| o.silent) {
                        return None;
                    }
                    let s = String::from_utf8_lossy(value);
                    if top.is_some_and(|o| o.hidden) {
                        self.hidden += s.trim().chars().count();
                    }
                    if top.is_some_and(|o| o.invisible) {
                        self.invisible += s.trim().chars().count();
                    }
                    self.text.push_str(&s);
                }
                _ => {}
            }
            // Enough text: the tokenizer yields, and reading stops.
            (self.text.len() > MAX_BODY_CHARS * 2).then_some(())
        };
        let mut emitter = CallbackEmitter::new(callback);
        emitter.naively_switch_states(true);
        if let Some(Err(e)) = Tokenizer::new_with_emitter(html, emitter).next() {
            match e {}
        }
    }

    /// A start tag `name` (lower case) has been read, with its `style`,
    /// `color` and `size` attributes.
    fn start_tag(
        &mut self,
        stack: &mut Vec<Open>,
        name: Vec<u8>,
        self_closing: bool,
        styling: [Option<Vec<u8>>; 3],
    ) {
        let [style, color, size] = styling.map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned()));
        match name.as_slice() {
            b"img" => self.imgs += 1,
            b"form" => self.forms += 1,
            b"body" => {
                // The body ends an unclosed head.
                if let Some(i) = stack.iter().position(|o| o.name == b"head") {
                    stack.truncate(i);
                }
            }
            _ => {}
        }
        let is = |list: &[&str]| list.iter().any(|t| t.as_bytes() == name.as_slice());
        if is(BREAKS) {
            self.text.push('\n');
        }
        let parent = stack.last();
        let parent_hidden = parent.is_some_and(|o| o.hidden);
        let parent_invisible = parent.is_some_and(|o| o.invisible);
        let parent_silent = parent.is_some_and(|o| o.silent);
        let font = name == b"font";
        let invisible = style.is_some_and(|s| style_hides(&s))
            || (font
                && color.is_some_and(|c| {
                    matches!(c.trim().to_ascii_lowercase().as_str(), "#fff" | "#ffffff" | "white")
                }));
        let tiny = font && size.is_some_and(|s| matches!(s.trim(), "0" | "1" | "-2" | "-3"));
        if !self_closing && !is(VOID) {
            stack.push(Open {
                silent: parent_silent || is(SILENT),
                hidden: parent_hidden || invisible || tiny,
                invisible: parent_invisible || invisible,
                name,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(f: &Features, t: &str) -> bool {
        f.tokens.iter().any(|x| x == t)
    }

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!([0, 1, 2, 2, 4, 4, 4, 4, 8], [0, 1, 2, 3, 4, 5, 6, 7, 8].map(bucket));
    }

    #[test]
    fn words_keep_inner_punctuation_and_fold_numbers() {
        let mut bag = Bag::default();
        words(&mut bag, "Get $10,000 NOW!! e-mail 2002 it a $5 supercalifragilisticexpialidocious", "");
        assert_eq!(
            bag.list,
            ["get", "case:Get", "$10,000", "now!!", "case:NOW!!", "e-mail", "num:4", "$5", "skip:s:30"]
        );
    }

    #[test]
    fn cjk_runs_become_pairs_and_scripts_are_named() {
        let mut bag = Bag::default();
        words(&mut bag, "免费赠送 offer", "subject:");
        assert!(bag.list.contains(&"subject:cjk:免费".to_owned()), "{:?}", bag.list);
        assert!(bag.list.contains(&"subject:cjk:赠送".to_owned()));
        assert!(bag.list.contains(&"subject:script:han".to_owned()));
        assert!(bag.list.contains(&"subject:offer".to_owned()));

        // Runs between words, joined to them and at the end leave the
        // words around them whole; Greek, most of the letters here, is named
        // and not paired.
        let mut bag = Bag::default();
        words(&mut bag, "price東京now ΕΛΛΑΔΑ deal 免费", "");
        for t in ["cjk:東京", "price", "now", "ελλαδα", "case:ΕΛΛΑΔΑ", "deal", "cjk:免费", "script:greek"]
        {
            assert!(bag.list.contains(&t.to_owned()), "{t} in {:?}", bag.list);
        }
        assert!(!bag.list.iter().any(|t| t.contains("price東") || t.contains("京now")), "{:?}", bag.list);
    }

    #[test]
    fn links_addresses_and_structure_become_tokens() {
        let raw = b"From: \"support@bank.example\" <x123456@evil.example>\r\n\
            To: undisclosed-recipients:;\r\nSubject: URGENT ACCOUNT NOTICE!!!\r\n\
            Content-Type: text/html\r\n\r\n\
            <html><head><title>t</title><style>p{}</style></head><body>\
            <p>Click <a href=\"http://192.168.0.1/login.php?id=7\">here</a> or \
            <a href=\"https://bit.ly/abc\">here</a> or http://paypal.example@phish.example/x</p>\
            <div style=\"display: none\">hidden words here</div>\
            <font color=\"#FFFFFF\">white text</font> write to help@other.example</body></html>";
        let f = features(raw);
        for t in [
            "url:ip",
            "url:shortener",
            "url:userinfo",
            "url:host:phish.example",
            "url:path:login",
            "from:name-addr-mismatch",
            "from:lp-digits",
            "to:undisclosed",
            "subject:ALLCAPS",
            "subject:bang:2",
            "email:dom:other.example",
            "click",
            "struct:hidden-text:2",
        ] {
            assert!(has(&f, t), "{t} missing from {:?}", f.tokens);
        }
        assert!(!has(&f, "t") && !has(&f, "p{}"), "title and style text are not words: {:?}", f.tokens);
        assert!(f.html_only);
        assert_eq!((f.ip_links, f.shortener_links, f.userinfo_links), (1, 1, 1));
        assert_eq!(f.hidden_chars, "hidden words here".len() + "white text".len());
        assert_eq!(f.invisible_chars, f.hidden_chars);
        let small = features(b"Content-Type: text/html\r\n\r\n<font size=1>fine print here</font>");
        assert_eq!((small.hidden_chars, small.invisible_chars), (15, 0));
        assert!(f.name_mismatch.is_some());
    }

    #[test]
    fn a_mailing_list_footer_is_not_the_mail() {
        // Mailman's footer, with or without the List-* fields.
        let footer = "-------------------------------------------------------\r\n\
            This list is sponsored by: Seeds Inc\r\nhttp://seeds.example/sf\r\n\
            _______________________________________________\r\n\
            Gardening mailing list\r\nGardening@lists.example.org\r\n\
            https://lists.example.org/mailman/listinfo/gardening\r\n";
        for head in ["", "List-Post: <mailto:gardening@lists.example.org>\r\n"] {
            let raw = format!(
                "From: a@b.example\r\n{head}Subject: cheap pills\r\n\r\n\
                 Buy cheap pills today.\r\n\r\n{footer}"
            );
            let f = features(raw.as_bytes());
            assert!(has(&f, "pills") && has(&f, "today"), "{:?}", f.tokens);
            for t in
                ["gardening", "mailing", "url:host:lists.example.org", "email:dom:example.org", "sponsored"]
            {
                assert!(!has(&f, t), "{t} is the list's, not the mail's: {:?}", f.tokens);
            }
        }
        // Named by the List-* fields, under a blank line, no separator.
        let raw = "From: a@b.example\r\nList-Unsubscribe: <https://example.net/leave/garden?x=1>\r\n\
            Subject: s\r\n\r\nRoses need sun.\r\n\r\nTo leave: https://example.net/leave/garden\r\n";
        let f = features(raw.as_bytes());
        assert!(has(&f, "roses") && !has(&f, "leave"), "{:?}", f.tokens);
        // A mention far from the end is the sender's text: kept.
        let raw = format!(
            "From: a@b.example\r\nList-Post: <mailto:garden@example.net>\r\nSubject: s\r\n\r\n\
             ____\r\nwrite to garden@example.net\r\n{}",
            "lavender grows well\r\n".repeat(60)
        );
        let f = features(raw.as_bytes());
        assert!(has(&f, "write") && has(&f, "email:dom:example.net"), "{:?}", f.tokens);
        // No list, no cut: a separator of the sender's own stays.
        let f = features(b"From: a@b.example\r\nSubject: s\r\n\r\nhello\r\n_____\r\nsignature words\r\n");
        assert!(has(&f, "signature"), "{:?}", f.tokens);
    }

    #[test]
    fn compatibility_forms_are_made_a_run_at_a_time() {
        use unicode_normalization::UnicodeNormalization;
        // Combining marks after ASCII letters, ligatures that decompose to
        // ASCII before a mark, full-width forms, no-break spaces, Hangul
        // jamo, marks to reorder, and text already in form.
        let cases = [
            "",
            "plain ascii only",
            "cafe\u{301} and e\u{301}\u{327}x",
            "\u{fb01}\u{301}ne \u{fb03}",
            "\u{ff26}\u{ff32}\u{ff25}\u{ff25} money",
            "one\u{a0}two\u{a0}\u{a0}three\u{a0}",
            "\u{1100}\u{1161}\u{11a8} a\u{1100}\u{1161}",
            "x\u{301}\u{327}\u{31b}y",
            "\u{301}leading mark",
            "Ärger über déjà vu",
            "\u{2460}\u{2461} \u{33a1} \u{2126}hm",
        ];
        for c in cases {
            assert_eq!(nfkc(c.to_owned()), c.nfkc().collect::<String>(), "{c:?}");
        }
        // And a pseudo-random mix of ASCII and such characters.
        let pool = [
            'a', 'e', ' ', '.', '\u{301}', '\u{327}', '\u{a0}', '\u{fb01}', '\u{ff41}', '\u{1100}',
            '\u{1161}', 'é', '\u{2126}',
        ];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut t = String::new();
            for _ in 0..(x % 24) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                t.push(pool[(x % pool.len() as u64) as usize]);
            }
            assert_eq!(nfkc(t.clone()), t.nfkc().collect::<String>(), "{t:?}");
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        }
    }

    #[test]
    fn ascii_words_split_as_split_whitespace_does() {
        let pool = [b'a', b'Z', b'7', b' ', b'\t', b'\n', 0x0b, 0x0c, b'\r', 0x1c, 0x1f, 0x05, b'-', b'!'];
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..3000 {
            let mut t = String::new();
            for _ in 0..(x % 20) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                t.push(char::from(pool[(x % pool.len() as u64) as usize]));
            }
            let mut got = Vec::new();
            ascii_split_whitespace(&t, |w| got.push(w));
            assert_eq!(got, t.split_whitespace().collect::<Vec<_>>(), "{t:?}");
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        }
    }

    #[test]
    fn links_are_cut_whatever_their_case_and_place() {
        let (urls, rest) = cut_urls("see HTTP://Ex.ample/A, wWw.b.org and xhttps://c.d/e\nhttp:/no h w www");
        assert_eq!(urls, ["HTTP://Ex.ample/A,", "wWw.b.org", "https://c.d/e"]);
        assert_eq!(rest, "see     and x \nhttp:/no h w www");
    }

    #[test]
    fn style_hiding_is_recognised() {
        assert!(style_hides("font-size: 1px; color: red"));
        assert!(style_hides("FONT-SIZE:0"));
        assert!(style_hides("font-size:1.5pt"));
        assert!(!style_hides("font-size: 10px"));
        assert!(!style_hides("font-size: 1em"));
        assert!(style_hides("visibility : hidden"));
    }

    /// What the reader found, to compare.
    fn read_html(read: impl FnOnce(&mut HtmlText)) -> (String, Vec<String>, [usize; 4]) {
        let mut h = HtmlText::default();
        read(&mut h);
        (h.text, h.urls, [h.hidden, h.invisible, h.imgs, h.forms])
    }

    /// The reader as it was, on whole tokens (allocated each), as the
    /// oracle of the reader on borrowed events.
    fn read_tokens(h: &mut HtmlText, html: &str) {
        use html5gum::{DefaultEmitter, Token};
        let mut stack: Vec<Open> = Vec::new();
        let mut emitter = DefaultEmitter::default();
        emitter.naively_switch_states(true);
        for token in Tokenizer::new_with_emitter(html, emitter).flatten() {
            match token {
                Token::StartTag(tag) => {
                    let attr = |a: &str| tag.attributes.get(a.as_bytes()).map(|v| v.value.to_vec());
                    for a in ["href", "src", "action", "background"] {
                        if let Some(v) = attr(a) {
                            h.urls.push(String::from_utf8_lossy(&v).into_owned());
                        }
                    }
                    let name = tag.name.to_ascii_lowercase();
                    h.start_tag(
                        &mut stack,
                        name,
                        tag.self_closing,
                        [attr("style"), attr("color"), attr("size")],
                    );
                }
                Token::EndTag(tag) => {
                    let name = tag.name.to_ascii_lowercase();
                    if let Some(i) = stack.iter().rposition(|o| o.name == name) {
                        stack.truncate(i);
                    }
                    if BREAKS.iter().any(|b| b.as_bytes() == name.as_slice()) {
                        h.text.push('\n');
                    }
                }
                Token::String(s) => {
                    let top = stack.last();
                    if top.is_some_and(|o| o.silent) {
                        continue;
                    }
                    let s = String::from_utf8_lossy(&s.value);
                    if top.is_some_and(|o| o.hidden) {
                        h.hidden += s.trim().chars().count();
                    }
                    if top.is_some_and(|o| o.invisible) {
                        h.invisible += s.trim().chars().count();
                    }
                    h.text.push_str(&s);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn html_is_read_from_events_as_from_tokens() {
        let cases = [
            "<p>Hello <b>there</b></p><a href=\"http://a.example/x\">link</a>",
            // Repeated attributes (the first counts), one with no value,
            // and attributes in an end tag.
            "<a href=\"http://one.example\" HREF=\"http://two.example\">x</a><a href>y</a></p class=z>w",
            "<IMG SRC=\"http://img.example/i.png\"><FORM ACTION=\"http://f.example/\"><TD BACKGROUND=bg.gif>t",
            "<div style=\"display:none\">hidden words</div><font color=\"#FFFFFF\">white</font><font size=1>tiny</font>",
            "<span style=\"font-size:0\"><i>nested hidden</i></span> shown",
            "<head><title>t</title><style>p{}</style><body>after an unclosed head</body>",
            "<script>var a = '<p>not text</p>';</script>text &amp; &nbsp;entities&#65;",
            "<a href=\"http://x.example/?a=1&amp;b=2\">q</a><br/><hr><p>para",
            "<<<>>> </ > <a href='single'>s</a><a href=unquoted>u</a><!-- <p>comment</p> -->",
            "<table><tr><td>cell</td></tr></table>unterminated <a href=\"http://open",
            "",
        ];
        for html in cases {
            assert_eq!(read_html(|h| h.read(html)), read_html(|h| read_tokens(h, html)), "{html:?}");
        }
        let (_, urls, counts) = read_html(|h| h.read(cases[1]));
        assert_eq!(urls, ["http://one.example", ""]);
        assert_eq!(counts, [0, 0, 0, 0]);
        let (text, _, counts) = read_html(|h| h.read(cases[3]));
        assert!(text.contains("hidden words") && text.contains("tiny"), "{text:?}");
        assert_eq!(
            counts,
            ["hidden words".len() + "white".len() + "tiny".len(), "hidden words".len() + "white".len(), 0, 0]
        );
    }

    #[test]
    fn huge_bodies_are_read_up_to_their_caps() {
        // An HTML part that is one long string to the tokenizer (no tag,
        // an entity every ten bytes) and a plain part, 8 MiB each.
        let html = "word&nbsp;".repeat(800 << 10);
        let plain = "привет мир ".repeat(400 << 10);
        let raw = format!(
            "From: a@example.net\r\nSubject: big\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/html\r\n\r\n{html}\r\n\
             --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{plain}\r\n--b--\r\n"
        );
        let m = crate::filter::parse(raw.as_bytes()).expect("parsed");
        let mut walk = BodyWalk::default();
        walk.message(&mut Bag::default(), &m, 0);
        assert_eq!((walk.html_parts, walk.plain_parts), (1, 1));
        assert_eq!(walk.html_read, MAX_HTML_BYTES);
        assert_eq!(walk.html_unread, html.len() - MAX_HTML_BYTES);
        // The HTML's head and tail fill the text cap: the plain part is
        // past it.
        assert_eq!(walk.texts.len(), 2);
        assert!(walk.texts[0].starts_with("word\u{a0}word"), "{:?}", &walk.texts[0][..20]);
        assert!((MAX_TEXT_BYTES - 3..=MAX_TEXT_BYTES).contains(&walk.gathered), "{}", walk.gathered);
        assert_eq!(walk.texts.iter().map(String::len).sum::<usize>(), walk.gathered);
        let f = features(raw.as_bytes());
        assert!(f.tokens.contains(&"word".to_owned()), "{:?}", f.tokens);

        // The plain part alone: cut on a character, as far as the cap.
        let raw = format!("Subject: big\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{plain}");
        let m = crate::filter::parse(raw.as_bytes()).expect("parsed");
        let mut walk = BodyWalk::default();
        walk.message(&mut Bag::default(), &m, 0);
        assert!((MAX_TEXT_BYTES - 3..=MAX_TEXT_BYTES).contains(&walk.gathered), "{}", walk.gathered);
        assert!(walk.texts[0].starts_with("привет мир"));
        assert_eq!(walk.html_read, 0);
    }

    /// What a sender puts in front of the mail to fill the caps does not
    /// hide it: a megabyte of style that shows nothing (the HTML is read
    /// at its head and its tail), or of another filter's report lines
    /// (dropped before they count). Padding on both sides leaves the
    /// middle unread, and that is a rule of its own.
    #[test]
    fn padding_does_not_hide_the_mail() {
        let pad = format!("<style>/*{}*/</style>", "x".repeat(1_100_000));
        let mail = "<p>Cheap pills today <a href=\"http://192.0.2.7/buy\">order</a></p>";
        let html = |body: &str| {
            format!(
                "From: a@example.net\r\nSubject: hi\r\nContent-Type: text/html\r\n\r\n\
                 <html><body>{body}</body></html>\r\n"
            )
        };
        let f = features(html(&format!("{pad}{mail}")).as_bytes());
        assert!(has(&f, "pills") && has(&f, "today"), "{:?}", f.tokens);
        assert_eq!(f.ip_links, 1);
        assert!(f.html_unread > 0 && has(&f, "struct:html-unread"));

        // Padded on both sides: the middle is not read, and is named.
        let f = features(html(&format!("{pad}{mail}{pad}")).as_bytes());
        assert!(!has(&f, "pills"));
        assert!(f.html_unread > 1_000_000, "{}", f.html_unread);
        let spam = super::super::Spam::new(super::super::SpamSettings {
            junk_score: 5.0,
            reject_score: 15.0,
            trusted_authserv_id: None,
        });
        assert!(spam.rules(&f).iter().any(|(p, why)| *p > 0.0 && why.starts_with("HTML_UNREAD")));
        // A part within the cap is read whole, with no such rule.
        let f = features(html(mail).as_bytes());
        assert_eq!(f.html_unread, 0);
        assert!(!spam.rules(&f).iter().any(|(_, why)| why.starts_with("HTML_UNREAD")));

        // 500 KB of report lines, then the mail's own text.
        let report = "SPAM: Content analysis details: (9.9 points)\n".repeat(11_000);
        let raw = format!("Subject: hi\r\n\r\n{report}Cheap pills today\r\n");
        let f = features(raw.as_bytes());
        assert!(has(&f, "pills"), "{:?}", f.tokens);
        assert!(!has(&f, "analysis"), "the report is not the mail: {:?}", f.tokens);
    }

    /// The remove words are found in ASCII-lower-cased text as in
    /// Unicode-lower-cased text: random mixes of them, their capitals,
    /// letters that fold oddly (Kelvin sign, dotted I, final sigma, long
    /// s) and separators.
    #[test]
    fn remove_words_are_found_as_with_unicode_lower_case() {
        fn oracle(body: &str) -> bool {
            let lower = body.to_lowercase();
            ["remove", "unsubscribe", "optout", "opt-out", "opt out"].iter().any(|w| {
                lower.match_indices(w).any(|(i, _)| {
                    let ok = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric() && c != '_');
                    ok(lower[..i].chars().next_back()) && ok(lower[i + w.len()..].chars().next())
                })
            })
        }
        // Not 'İ': Unicode lower-cases it to 'i' and a combining dot, which
        // is no letter, so "İremove" held the word there; it does not now.
        let pieces = [
            "remove",
            "REMOVE",
            "Unsubscribe",
            "unsubscrİbe",
            "OPT-OUT",
            "opt out",
            "OptOut",
            "\u{212A}",
            "Σ",
            "ſ",
            "é",
            "x",
            "_",
            " ",
            "-",
            "\n",
            "ß",
            "ǅ",
            "1",
        ];
        assert!(oracle("İremove") && !has_remove_word("İremove"));
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut found = 0;
        for _ in 0..20_000 {
            let mut body = String::new();
            for _ in 0..6 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                body.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            let want = oracle(&body);
            assert_eq!(has_remove_word(&body), want, "{body:?}");
            found += usize::from(want);
        }
        assert!(found > 1000, "{found}");
    }

    #[test]
    fn gtube_is_found_and_nothing_panics_on_garbage() {
        let mut raw = b"Subject: test\r\n\r\n".to_vec();
        raw.extend_from_slice(GTUBE.as_bytes());
        assert!(features(&raw).gtube);
        for junk in [&b""[..], b"\xff\xfe\x00", b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n"]
        {
            let f = features(junk);
            assert!(!f.gtube);
        }
    }
}
