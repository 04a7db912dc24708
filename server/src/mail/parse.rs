//! Message parsing with mail-parser: lenient, never panics, never drops.
//! Whatever the bytes, the result is an envelope (possibly empty) and a
//! preview; the raw bytes are kept as they are regardless.

use mail_parser::{
    Address as MpAddress, Encoding, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType,
};
use serde::{Deserialize, Serialize};

/// Characters of body text kept as the preview.
pub const PREVIEW_CHARS: usize = 256;

/// One mailbox address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addr {
    /// Display name, decoded; empty when absent.
    pub name: String,
    /// addr-spec; may be empty in broken headers.
    pub email: String,
}

/// The header fields clients list and filter on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Subject, decoded.
    pub subject: String,
    /// From.
    pub from: Vec<Addr>,
    /// Sender.
    pub sender: Vec<Addr>,
    /// Reply-To.
    pub reply_to: Vec<Addr>,
    /// To.
    pub to: Vec<Addr>,
    /// Cc.
    pub cc: Vec<Addr>,
    /// Bcc.
    pub bcc: Vec<Addr>,
    /// The Date header, ms since the epoch; 0 when absent or unparsable.
    pub sent_ms: i64,
    /// Message-ID without angle brackets.
    pub message_id: String,
    /// In-Reply-To ids.
    pub in_reply_to: Vec<String>,
    /// References ids.
    pub references: Vec<String>,
}

/// One node of a message's body structure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyPart {
    /// IMAP-style part number: "1", "2.1", ...; "" for a multipart root.
    pub part_id: String,
    /// `type/subtype`, lower case.
    pub mime_type: String,
    /// Declared charset, lower case ("" when none).
    pub charset: String,
    /// "inline", "attachment" or "".
    pub disposition: String,
    /// File name, decoded (RFC 2231 / 2047).
    pub file_name: String,
    /// Content-ID without angle brackets.
    pub content_id: String,
    /// Decoded size in bytes.
    pub size: u64,
    /// The decoded content's blob, for parts stored apart (attachments).
    pub blob: Option<crate::blob::BlobId>,
    /// Children (multipart) or the embedded message's parts (message/rfc822).
    pub sub_parts: Vec<BodyPart>,
}

impl BodyPart {
    /// This part and every part below it, depth first.
    pub fn walk(&self) -> Vec<&BodyPart> {
        let mut out = vec![self];
        for p in &self.sub_parts {
            out.extend(p.walk());
        }
        out
    }
}

/// How an attachment's body is encoded in the raw message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEncoding {
    /// 7bit, 8bit, binary: the raw bytes are the content.
    Identity,
    /// Base64.
    Base64,
    /// Quoted-printable or anything else.
    Other,
}

/// An attachment found at the top level of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Its part id in the body structure.
    pub part_id: String,
    /// `type/subtype`.
    pub mime_type: String,
    /// Its decoded content.
    pub content: Vec<u8>,
    /// Where its encoded body lies in the raw message.
    pub span: std::ops::Range<usize>,
    /// How that span encodes `content`.
    pub encoding: BodyEncoding,
}

/// What ingest keeps from parsing one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Header fields.
    pub envelope: Envelope,
    /// About [`PREVIEW_CHARS`] characters of text, whitespace collapsed.
    pub preview: String,
    /// Whether any part is an attachment.
    pub has_attachment: bool,
    /// The body structure.
    pub body: BodyPart,
    /// Attachments of the top-level message, decoded.
    pub attachments: Vec<Attachment>,
    /// The text parts as text (HTML converted by mail-parser), for the
    /// search index; at most [`crate::search::text::MAX_BODY_BYTES`].
    pub text: String,
}

/// Parses `raw`. Never fails and never panics: input mail-parser cannot
/// make sense of yields what its header block gives, or an empty envelope.
pub fn parse(raw: &[u8]) -> Parsed {
    match guarded(raw) {
        Some(parsed) => parsed,
        None => {
            // mail-parser 0.11 panics on some malformed nestings of
            // multipart and message/rfc822 (found by our fuzz seeds). Keep
            // what the header block alone gives; the raw bytes are stored
            // regardless.
            tracing::warn!(bytes = raw.len(), "MIME parser failed; keeping headers only");
            guarded(header_block(raw)).unwrap_or_default()
        }
    }
}

/// [`parse`] of `raw`, from `message`, the [`crate::filter::parse`] of
/// `raw` that the filters read first, so a delivery parses once. Where
/// that parser found nothing or failed, `raw` is parsed here as [`parse`]
/// does (the same parser: the same outcome, with its fallback).
pub fn from_parse(raw: &[u8], message: Option<mail_parser::Message<'_>>) -> Parsed {
    let converted =
        message.and_then(|m| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| from_message(m))).ok());
    converted.unwrap_or_else(|| parse(raw))
}

/// Runs the parser, turning a panic inside it into `None`.
fn guarded(raw: &[u8]) -> Option<Parsed> {
    std::panic::catch_unwind(|| match MessageParser::default().parse(raw) {
        Some(message) => from_message(message),
        None => Parsed::default(),
    })
    .ok()
}

/// The decoded content of the part numbered `part_id` (as in the body
/// structure), or `None` when the message has no such part. Text parts
/// come as UTF-8 (decoded from their charset), other parts as their bytes
/// after the transfer encoding, an embedded message as its raw bytes, a
/// multipart as nothing. Never panics.
pub fn part_content(raw: &[u8], part_id: &str) -> Option<Vec<u8>> {
    fn find(m: &Message<'_>, idx: usize, id: &str, want: &str, depth: usize) -> Option<Vec<u8>> {
        let part = m.parts.get(idx)?;
        let is_multipart = matches!(part.body, PartType::Multipart(_));
        let own = if id.is_empty() && !is_multipart { "1" } else { id };
        if own == want {
            return Some(part.contents().to_vec());
        }
        if depth >= MAX_DEPTH || !(want.starts_with(own) || own.is_empty()) {
            return None;
        }
        match &part.body {
            PartType::Multipart(children) => children
                .iter()
                .enumerate()
                .find_map(|(i, c)| find(m, *c as usize, &child_id(id, i + 1), want, depth + 1)),
            PartType::Message(inner) => {
                let inner_root_multipart =
                    matches!(inner.parts.first().map(|p| &p.body), Some(PartType::Multipart(_)));
                if inner_root_multipart {
                    find(inner, 0, own, want, depth + 1).filter(|_| want != own)
                } else {
                    find(inner, 0, &child_id(own, 1), want, depth + 1)
                }
            }
            _ => None,
        }
    }
    if part_id.is_empty() {
        return None;
    }
    std::panic::catch_unwind(|| MessageParser::default().parse(raw).and_then(|m| find(&m, 0, "", part_id, 0)))
        .ok()
        .flatten()
}

/// The header block of a message (up to the first empty line).
fn header_block(raw: &[u8]) -> &[u8] {
    let end = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| i + 1)
        .or_else(|| raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 2))
        .unwrap_or(raw.len());
    &raw[..end]
}

/// Caps on what is indexed and returned of a message's header fields. The
/// raw message is always kept whole; these bound what one hostile email
/// can make every `get`, every index entry and every thread lookup cost.
pub mod caps {
    /// Subject, in bytes.
    pub const SUBJECT_BYTES: usize = 998;
    /// Addresses kept per field (From, To, Cc, ...).
    pub const ADDRESSES_PER_FIELD: usize = 50;
    /// A display name, in bytes.
    pub const NAME_BYTES: usize = 256;
    /// An address, in bytes (RFC 5321 allows 254 in a path).
    pub const ADDRESS_BYTES: usize = 320;
    /// A message id, in bytes.
    pub const MESSAGE_ID_BYTES: usize = 512;
    /// In-Reply-To ids kept.
    pub const IN_REPLY_TO: usize = 8;
    /// References ids kept: the first (the thread's root) and the last ones
    /// (the nearest ancestors), which is all threading needs.
    pub const REFERENCES: usize = 32;
    /// A part's file name or content id, in bytes.
    pub const PART_TEXT_BYTES: usize = 512;
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn capped_addrs(a: Option<&MpAddress<'_>>) -> Vec<Addr> {
    let mut v = addrs(a);
    v.truncate(caps::ADDRESSES_PER_FIELD);
    for x in &mut v {
        x.name = truncate(std::mem::take(&mut x.name), caps::NAME_BYTES);
        x.email = truncate(std::mem::take(&mut x.email), caps::ADDRESS_BYTES);
    }
    v
}

fn capped_ids(mut v: Vec<String>, keep: usize, keep_first: bool) -> Vec<String> {
    if v.len() > keep {
        let tail = v.split_off(v.len() - (keep - usize::from(keep_first)));
        if keep_first {
            v.truncate(1);
            v.extend(tail);
        } else {
            v = tail;
        }
    }
    v.into_iter().map(|id| truncate(id, caps::MESSAGE_ID_BYTES)).collect()
}

fn from_message(mut m: Message<'_>) -> Parsed {
    let envelope = Envelope {
        subject: truncate(m.subject().unwrap_or_default().to_owned(), caps::SUBJECT_BYTES),
        from: capped_addrs(m.from()),
        sender: capped_addrs(m.sender()),
        reply_to: capped_addrs(m.reply_to()),
        to: capped_addrs(m.to()),
        cc: capped_addrs(m.cc()),
        bcc: capped_addrs(m.bcc()),
        sent_ms: m
            .date()
            .filter(|d| d.is_valid())
            .map(|d| d.to_timestamp().saturating_mul(1000))
            .unwrap_or(0),
        message_id: truncate(m.message_id().unwrap_or_default().to_owned(), caps::MESSAGE_ID_BYTES),
        in_reply_to: capped_ids(ids(m.in_reply_to()), caps::IN_REPLY_TO, false),
        references: capped_ids(ids(m.references()), caps::REFERENCES, true),
    };
    let preview = m.body_preview(PREVIEW_CHARS * 2).map(|p| collapse(&p)).unwrap_or_default();
    let body = structure(&m, 0, "", 0, &mut MAX_PARTS.clone());
    let has_attachment = m.attachment_count() > 0;
    let mut text = String::new();
    for i in 0..m.text_body.len() {
        if text.len() >= crate::search::text::MAX_BODY_BYTES {
            break;
        }
        if let Some(t) = m.body_text(i) {
            text.push_str(&t);
            text.push('\n');
        }
    }
    if text.len() > crate::search::text::MAX_BODY_BYTES {
        let mut cut = crate::search::text::MAX_BODY_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    let attachments = attachments(&mut m, &body);
    Parsed { envelope, preview, has_attachment, body, attachments, text }
}

/// Deepest nesting the body structure records (mail can nest arbitrarily;
/// clients never need more).
const MAX_DEPTH: usize = 32;

/// Most parts the body structure records. Malformed mail can make the part
/// tree a graph whose unfolding is exponential (found by fuzzing); past
/// this budget parts are listed without children.
pub const MAX_PARTS: usize = 1000;

fn child_id(parent: &str, n: usize) -> String {
    if parent.is_empty() { n.to_string() } else { format!("{parent}.{n}") }
}

/// The structure of part `idx` of `m`, numbered as `id` ("" for the root:
/// a multipart root keeps "", any other root is "1").
fn structure(m: &Message<'_>, idx: usize, id: &str, depth: usize, budget: &mut usize) -> BodyPart {
    let Some(part) = m.parts.get(idx) else {
        return BodyPart::default();
    };
    *budget = budget.saturating_sub(1);
    let mut node = describe(part);
    let is_multipart = matches!(part.body, PartType::Multipart(_));
    node.part_id = if id.is_empty() && !is_multipart { "1".to_owned() } else { id.to_owned() };
    if depth >= MAX_DEPTH || *budget == 0 {
        return node;
    }
    match &part.body {
        PartType::Multipart(children) => {
            node.sub_parts = children
                .iter()
                .enumerate()
                .map_while(|(i, c)| {
                    (*budget > 0).then(|| structure(m, *c as usize, &child_id(id, i + 1), depth + 1, budget))
                })
                .collect();
            node.size = node.sub_parts.iter().map(|p| p.size).sum();
        }
        PartType::Message(inner) => {
            // IMAP numbering: the parts of an embedded message continue the
            // number of the message/rfc822 part (2.1, 2.2, ...).
            let root = structure(inner, 0, &node.part_id, depth + 1, budget);
            node.sub_parts = if root.mime_type.starts_with("multipart/") {
                root.sub_parts
            } else {
                vec![BodyPart { part_id: child_id(&node.part_id, 1), ..root }]
            };
        }
        _ => {}
    }
    node
}

fn describe(part: &MessagePart<'_>) -> BodyPart {
    let (mime_type, charset) = match part.content_type() {
        Some(ct) => (
            match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_owned(),
            }
            .to_ascii_lowercase(),
            ct.attribute("charset").unwrap_or_default().to_ascii_lowercase(),
        ),
        None => match part.body {
            PartType::Message(_) => ("message/rfc822".to_owned(), String::new()),
            PartType::Multipart(_) => ("multipart/mixed".to_owned(), String::new()),
            _ => ("text/plain".to_owned(), "us-ascii".to_owned()),
        },
    };
    let disposition = part.content_disposition().map(|d| d.ctype().to_ascii_lowercase()).unwrap_or_default();
    BodyPart {
        part_id: String::new(),
        mime_type: truncate(mime_type, caps::PART_TEXT_BYTES),
        charset: truncate(charset, caps::PART_TEXT_BYTES),
        disposition: truncate(disposition, caps::PART_TEXT_BYTES),
        file_name: truncate(part.attachment_name().unwrap_or_default().to_owned(), caps::PART_TEXT_BYTES),
        content_id: truncate(
            part.content_id().unwrap_or_default().trim_matches(|c| c == '<' || c == '>').to_owned(),
            caps::PART_TEXT_BYTES,
        ),
        size: part.len() as u64,
        blob: None,
        sub_parts: Vec::new(),
    }
}

/// Part ids of the top-level message's parts, by index into `m.parts`.
fn part_ids(m: &Message<'_>, body: &BodyPart) -> Vec<Option<String>> {
    fn walk(m: &Message<'_>, idx: usize, node: &BodyPart, ids: &mut Vec<Option<String>>, depth: usize) {
        if let Some(slot) = ids.get_mut(idx) {
            *slot = Some(node.part_id.clone());
        }
        if depth >= MAX_DEPTH {
            return;
        }
        if let Some(PartType::Multipart(children)) = m.parts.get(idx).map(|p| &p.body) {
            for (c, sub) in children.iter().zip(&node.sub_parts) {
                walk(m, *c as usize, sub, ids, depth + 1);
            }
        }
    }
    let mut ids = vec![None; m.parts.len()];
    walk(m, 0, body, &mut ids, 0);
    ids
}

/// The top-level attachments, decoded, with where their bodies lie.
///
/// The decoded bytes mail-parser made of a binary part are moved out of the
/// message, not copied: a large attachment is in memory once.
fn attachments(m: &mut Message<'_>, body: &BodyPart) -> Vec<Attachment> {
    let ids = part_ids(m, body);
    let mut out = Vec::new();
    let indexes: Vec<usize> = m.attachments.iter().map(|i| *i as usize).collect();
    for idx in indexes {
        let raw = m.raw_message();
        let (Some(part), Some(Some(part_id))) = (m.parts.get(idx), ids.get(idx)) else {
            continue;
        };
        if matches!(part.body, PartType::Multipart(_)) {
            continue;
        }
        let start = (part.offset_body as usize).min(raw.len());
        let span = start..(part.offset_end as usize).clamp(start, raw.len());
        let encoded = &raw[span.clone()];
        let binary = matches!(part.body, PartType::Binary(_) | PartType::InlineBinary(_));
        let (content, encoding) = match part.encoding {
            // mail-parser decoded binary parts byte for byte already.
            Encoding::Base64 if binary => (Vec::new(), BodyEncoding::Base64),
            // Text parts it converts to UTF-8; the stored blob keeps the
            // original bytes.
            Encoding::Base64 => match decode_base64(encoded) {
                Some(bytes) => (bytes, BodyEncoding::Base64),
                None => (part.contents().to_vec(), BodyEncoding::Other),
            },
            Encoding::None if matches!(part.body, PartType::Binary(_) | PartType::InlineBinary(_)) => {
                (part.contents().to_vec(), BodyEncoding::Identity)
            }
            _ => (part.contents().to_vec(), BodyEncoding::Other),
        };
        let content = if binary && encoding == BodyEncoding::Base64 {
            match &mut m.parts[idx].body {
                PartType::Binary(c) | PartType::InlineBinary(c) => std::mem::take(c).into_owned(),
                _ => Vec::new(),
            }
        } else {
            content
        };
        let mime_type = body
            .walk()
            .into_iter()
            .find(|p| &p.part_id == part_id)
            .map(|p| p.mime_type.clone())
            .unwrap_or_default();
        out.push(Attachment { part_id: part_id.clone(), mime_type, content, span, encoding });
    }
    out
}

/// Decodes base64 leniently about whitespace and strictly about everything
/// else (a damaged body is then kept in the raw message as it is).
fn decode_base64(encoded: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let clean: Vec<u8> = encoded.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(clean).ok()
}

fn addrs(a: Option<&MpAddress<'_>>) -> Vec<Addr> {
    a.map(|a| {
        a.iter()
            .map(|x| Addr {
                name: x.name().unwrap_or_default().to_owned(),
                email: x.address().unwrap_or_default().to_owned(),
            })
            .collect()
    })
    .unwrap_or_default()
}

fn ids(v: &HeaderValue<'_>) -> Vec<String> {
    match v {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(l) => l.iter().map(|t| t.to_string()).collect(),
        _ => Vec::new(),
    }
}

/// Collapses runs of whitespace and cuts at [`PREVIEW_CHARS`] characters.
fn collapse(text: &str) -> String {
    let mut out = String::new();
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.chars().count() >= PREVIEW_CHARS {
            break;
        }
    }
    out.chars().take(PREVIEW_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_of_a_plain_message() {
        let raw = b"From: \"Alice A.\" <alice@example.org>\r\n\
            To: bob@example.org, Carol <carol@example.org>\r\n\
            Subject: =?utf-8?q?caf=C3=A9?= plans\r\n\
            Date: Tue, 1 Jul 2025 10:00:00 +0000\r\n\
            Message-ID: <m1@example.org>\r\n\
            In-Reply-To: <m0@example.org>\r\n\
            References: <a@x> <m0@example.org>\r\n\
            \r\n\
            Hello   Bob,\r\n\r\nsee you\tthere.\r\n";
        let p = parse(raw);
        assert_eq!(p.envelope.subject, "café plans");
        assert_eq!(
            p.envelope.from,
            vec![Addr { name: "Alice A.".into(), email: "alice@example.org".into() }]
        );
        assert_eq!(p.envelope.to.len(), 2);
        assert_eq!(p.envelope.to[1].name, "Carol");
        assert_eq!(p.envelope.sent_ms, 1_751_364_000_000);
        assert_eq!(p.envelope.message_id, "m1@example.org");
        assert_eq!(p.envelope.in_reply_to, vec!["m0@example.org"]);
        assert_eq!(p.envelope.references, vec!["a@x", "m0@example.org"]);
        assert_eq!(p.preview, "Hello Bob, see you there.");
        assert!(!p.has_attachment);
    }

    #[test]
    fn a_parser_panic_still_yields_the_headers() {
        // This nesting makes mail-parser 0.11.9 panic ("Invalid part ID").
        let raw = b"Subject: kept\nContent-Type:multipart;boundary=q\n\n--qContent-Type:message/rfc822\n\n7\nContent-Type:message/rfc822\n\n\n--q--";
        assert!(
            std::panic::catch_unwind(|| MessageParser::default().parse(&raw[..]).map(|_| ())).is_err(),
            "mail-parser no longer panics here: the fallback can be revisited"
        );
        let p = parse(raw);
        assert_eq!(p.envelope.subject, "kept");
    }

    #[test]
    fn garbage_and_empty_input_give_empty_envelopes() {
        assert_eq!(parse(b"").envelope, Envelope::default());
        let p = parse(&[0xff, 0xfe, 0x00, b'\n', b':', b':']);
        assert_eq!(p.envelope.subject, "");
        let long = "x".repeat(10_000);
        assert_eq!(
            parse(format!("Subject: a\r\n\r\n{long}").as_bytes()).preview.chars().count(),
            PREVIEW_CHARS
        );
    }
}
