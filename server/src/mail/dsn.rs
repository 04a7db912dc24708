//! Delivery status notifications (RFC 3464): what the sender finds in the
//! Inbox when a recipient failed for good or the outbox gave up.
//!
//! Built with `mail-builder` as a `multipart/report; report-type=
//! delivery-status`: a human-readable part, the `message/delivery-status`
//! fields per recipient, and the original message's header section.

use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};

/// What a report says.
#[derive(Debug)]
pub struct Report<'a> {
    /// The host the report comes from (the sender's domain).
    pub reporting_host: &'a str,
    /// The envelope sender it goes back to.
    pub original_sender: &'a str,
    /// Each failed recipient and its last reply.
    pub failed: &'a [(String, String)],
    /// The original message's header section.
    pub headers: &'a [u8],
    /// The submission, for a unique Message-ID.
    pub submission: u64,
    /// When (ms since the epoch).
    pub now_ms: i64,
}

/// The enhanced status code (RFC 3463) in an SMTP reply, or one that fits.
fn status_of(reply: &str) -> String {
    if reply.starts_with("expired") {
        // Delivery time expired (RFC 3463 X.4.7), whatever the last try said.
        return "5.4.7".into();
    }
    let code = reply.split_whitespace().find(|s| {
        let parts: Vec<&str> = s.split('.').collect();
        parts.len() == 3
            && matches!(parts[0], "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    });
    match code {
        // A failed recipient is permanently failed, whatever its last
        // temporary reply said (RFC 3464 §2.3.4).
        Some(c) => format!("5{}", &c[1..]),
        None => "5.0.0".into(),
    }
}

/// One header-safe line: no CR or LF, at most 900 bytes.
fn one_line(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).collect();
    if out.len() > 900 {
        let mut cut = 900;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

fn part(content_type: &'static str, body: String) -> MimePart<'static> {
    // Built directly: `MimePart::new` would add a charset to these types.
    MimePart {
        headers: vec![("Content-Type".into(), ContentType::new(content_type).into())],
        contents: BodyPart::Text(body.into()),
    }
}

/// The report as a raw message.
pub fn build(r: &Report<'_>) -> Vec<u8> {
    let host = one_line(r.reporting_host);
    let mut human = String::from(
        "This is the mail system at Quail.\r\n\r\nYour message could not be delivered to one or more \
         recipients. The reasons are below; the original message's headers are attached.\r\n\r\n",
    );
    let mut status = format!("Reporting-MTA: dns; {host}\r\n");
    for (address, reply) in r.failed {
        let (address, reply) = (one_line(address), one_line(reply));
        human.push_str(&format!("<{address}>: {reply}\r\n"));
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {address}\r\nAction: failed\r\nStatus: {}\r\nDiagnostic-Code: smtp; {reply}\r\n",
            status_of(&reply)
        ));
    }
    let headers = String::from_utf8_lossy(r.headers).into_owned();
    let body = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new("text/plain", human),
            part("message/delivery-status", status),
            part("text/rfc822-headers", headers),
        ],
    );
    let secs = r.now_ms.div_euclid(1000);
    let daemon = format!("mailer-daemon@{host}");
    MessageBuilder::new()
        .from(("Mail Delivery System", daemon.as_str()))
        .to(one_line(r.original_sender))
        .subject("Undelivered Mail Returned to Sender")
        .date(Date::new(secs))
        .message_id(MessageId::new(format!("dsn.{}.{}@{host}", r.submission, r.now_ms)))
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .body(body)
        .write_to_vec()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_parses_and_names_each_failure() {
        use mail_parser::MimeHeaders;
        let failed = vec![
            ("bob@far.test".to_string(), "550 5.1.1 no such user".to_string()),
            ("eve@far.test".to_string(), "expired after retrying: 451 4.3.0 try later".to_string()),
        ];
        let raw = build(&Report {
            reporting_host: "quail.test",
            original_sender: "alice@quail.test",
            failed: &failed,
            headers: b"Subject: hello\r\nFrom: alice@quail.test\r\n\r\n",
            submission: 7,
            now_ms: 1_700_000_000_000,
        });
        let msg = mail_parser::MessageParser::default().parse(&raw).expect("parses");
        assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
        let ct = msg.content_type().expect("content type");
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("Final-Recipient: rfc822; bob@far.test\r\nAction: failed\r\nStatus: 5.1.1"));
        // A temporary last reply is reported as the permanent failure it became.
        assert!(text.contains("Final-Recipient: rfc822; eve@far.test\r\nAction: failed\r\nStatus: 5.4.7"));
        assert!(text.contains("Content-Type: text/rfc822-headers"));
        assert!(text.contains("Subject: hello"));
    }

    #[test]
    fn status_codes_come_from_the_reply() {
        assert_eq!(status_of("550 5.7.1 refused"), "5.7.1");
        assert_eq!(status_of("554 no code"), "5.0.0");
        assert_eq!(status_of("451 4.3.0 later"), "5.3.0");
        assert_eq!(status_of("expired after retrying: connection refused"), "5.4.7");
    }

    #[test]
    fn header_injection_in_an_address_is_flattened() {
        let failed = vec![("x@y\r\nBcc: z@w".to_string(), "550 5.1.1 no\r\nX: y".to_string())];
        let raw = build(&Report {
            reporting_host: "h",
            original_sender: "a@h",
            failed: &failed,
            headers: b"",
            submission: 1,
            now_ms: 0,
        });
        assert!(!String::from_utf8_lossy(&raw).contains("\r\nBcc:"));
    }
}
