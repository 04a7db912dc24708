//! Message parsing with mail-parser: lenient, never panics, never drops.
//! Whatever the bytes, the result is an envelope (possibly empty) and a
//! preview; the raw bytes are kept as they are regardless.

use mail_parser::{Address as MpAddress, HeaderValue, Message, MessageParser};
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

/// What ingest keeps from parsing one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Header fields.
    pub envelope: Envelope,
    /// About [`PREVIEW_CHARS`] characters of text, whitespace collapsed.
    pub preview: String,
    /// Whether any part is an attachment.
    pub has_attachment: bool,
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
            tracing::warn!(
                bytes = raw.len(),
                "MIME parser failed; keeping headers only"
            );
            guarded(header_block(raw)).unwrap_or_default()
        }
    }
}

/// Runs the parser, turning a panic inside it into `None`.
fn guarded(raw: &[u8]) -> Option<Parsed> {
    std::panic::catch_unwind(|| match MessageParser::default().parse(raw) {
        Some(message) => from_message(&message),
        None => Parsed::default(),
    })
    .ok()
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

fn from_message(m: &Message<'_>) -> Parsed {
    let envelope = Envelope {
        subject: m.subject().unwrap_or_default().to_owned(),
        from: addrs(m.from()),
        sender: addrs(m.sender()),
        reply_to: addrs(m.reply_to()),
        to: addrs(m.to()),
        cc: addrs(m.cc()),
        bcc: addrs(m.bcc()),
        sent_ms: m
            .date()
            .filter(|d| d.is_valid())
            .map(|d| d.to_timestamp().saturating_mul(1000))
            .unwrap_or(0),
        message_id: m.message_id().unwrap_or_default().to_owned(),
        in_reply_to: ids(m.in_reply_to()),
        references: ids(m.references()),
    };
    let preview = m
        .body_preview(PREVIEW_CHARS * 2)
        .map(|p| collapse(&p))
        .unwrap_or_default();
    Parsed {
        envelope,
        preview,
        has_attachment: m.attachment_count() > 0,
    }
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
            vec![Addr {
                name: "Alice A.".into(),
                email: "alice@example.org".into()
            }]
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
            std::panic::catch_unwind(|| MessageParser::default().parse(&raw[..]).map(|_| ()))
                .is_err(),
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
            parse(format!("Subject: a\r\n\r\n{long}").as_bytes())
                .preview
                .chars()
                .count(),
            PREVIEW_CHARS
        );
    }
}
