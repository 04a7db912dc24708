//! The raw message, stored without its attachments' bodies.
//!
//! Attachments are stored decoded, as their own blobs (so the same file
//! sent in many messages is stored once). The raw message is kept as a
//! *skeleton*: the bytes around those attachment bodies, plus for each body a
//! reference to its blob and how to encode it back. A body is replaced by a
//! reference only when re-encoding its blob gives back exactly the bytes
//! that were there (checked at ingest); otherwise the bytes stay in the
//! skeleton. So reconstruction is byte-exact by construction.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::blob::BlobId;
use crate::error::{Error, Result};
use crate::mail::parse::{Attachment, BodyEncoding};

/// Attachments smaller than this stay inline: a reference would not pay.
pub const MIN_REFERENCED_BYTES: usize = 1024;

/// How a blob is turned back into the bytes of the raw message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reencode {
    /// The blob's bytes as they are.
    Identity,
    /// Base64 in lines of `line` characters, each ended by CRLF or LF; the
    /// last line ended too when `trailing`.
    Base64 {
        /// Characters per line.
        line: u32,
        /// CRLF (else LF).
        crlf: bool,
        /// Whether the last line has an end of line.
        trailing: bool,
    },
}

/// A piece of the raw message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Segment {
    /// Bytes kept as they are.
    Bytes(Vec<u8>),
    /// An attachment body, from its blob.
    Blob(BlobId, Reencode),
}

/// A raw message with attachment bodies replaced by references.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skeleton {
    /// In order.
    pub segments: Vec<Segment>,
}

impl Skeleton {
    /// The blobs it refers to.
    pub fn blobs(&self) -> Vec<BlobId> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Blob(id, _) => Some(*id),
                Segment::Bytes(_) => None,
            })
            .collect()
    }

    /// Serialised form.
    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(self).map_err(|e| Error::Internal(format!("encoding skeleton: {e}")))
    }

    /// From its serialised form.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        postcard::from_bytes(bytes).map_err(|e| Error::Internal(format!("decoding skeleton: {e}")))
    }
}

/// How `encoded` lays out base64, if it is canonical enough to rebuild.
fn base64_layout(encoded: &[u8]) -> Option<Reencode> {
    let first_end = encoded.iter().position(|&b| b == b'\n');
    let (line, crlf) = match first_end {
        Some(i) if i > 0 && encoded[i - 1] == b'\r' => (i - 1, true),
        Some(i) => (i, false),
        None => (encoded.len(), false),
    };
    if line == 0 {
        return None;
    }
    let trailing = encoded.ends_with(b"\n");
    Some(Reencode::Base64 { line: u32::try_from(line).ok()?, crlf, trailing })
}

/// Encodes `content` as `how` says.
pub fn reencode(content: &[u8], how: Reencode) -> Vec<u8> {
    match how {
        Reencode::Identity => content.to_vec(),
        Reencode::Base64 { line, crlf, trailing } => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(content);
            let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
            let line = line.max(1) as usize;
            let mut out = Vec::with_capacity(b64.len() + b64.len() / line * eol.len() + 2);
            let chunks: Vec<&[u8]> = b64.as_bytes().chunks(line).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                out.extend_from_slice(chunk);
                if i + 1 < chunks.len() || trailing {
                    out.extend_from_slice(eol);
                }
            }
            out
        }
    }
}

/// Builds the skeleton of `raw`, referring to `blobs[i]` for attachment
/// `attachments[i]` where that rebuilds the exact bytes. `None` when no
/// attachment could be referenced (store the raw message as it is).
pub fn build(raw: &[u8], attachments: &[Attachment], blobs: &[BlobId]) -> Option<Skeleton> {
    let mut refs: Vec<(std::ops::Range<usize>, BlobId, Reencode)> = Vec::new();
    for (a, id) in attachments.iter().zip(blobs) {
        if a.content.len() < MIN_REFERENCED_BYTES || a.span.end > raw.len() || a.span.start > a.span.end {
            continue;
        }
        let encoded = &raw[a.span.clone()];
        let how = match a.encoding {
            BodyEncoding::Identity => Reencode::Identity,
            BodyEncoding::Base64 => match base64_layout(encoded) {
                Some(h) => h,
                None => continue,
            },
            BodyEncoding::Other => continue,
        };
        if reencode(&a.content, how) == encoded {
            refs.push((a.span.clone(), *id, how));
        }
    }
    if refs.is_empty() {
        return None;
    }
    refs.sort_by_key(|r| r.0.start);
    let mut segments = Vec::new();
    let mut at = 0;
    for (span, id, how) in refs {
        if span.start < at {
            continue; // overlapping spans cannot happen in a parse tree; be safe
        }
        if span.start > at {
            segments.push(Segment::Bytes(raw[at..span.start].to_vec()));
        }
        segments.push(Segment::Blob(id, how));
        at = span.end;
    }
    if at < raw.len() {
        segments.push(Segment::Bytes(raw[at..].to_vec()));
    }
    Some(Skeleton { segments })
}

/// The raw message a skeleton stands for; `blob` fetches a blob's content.
pub fn reconstruct(skeleton: &Skeleton, mut blob: impl FnMut(BlobId) -> Result<Vec<u8>>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for s in &skeleton.segments {
        match s {
            Segment::Bytes(b) => out.extend_from_slice(b),
            Segment::Blob(id, how) => out.extend_from_slice(&reencode(&blob(*id)?, *how)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::parse;

    fn message_with_attachment(content: &[u8], line: usize, eol: &str) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(content);
        let body: Vec<&str> =
            b64.as_bytes().chunks(line).map(|c| std::str::from_utf8(c).expect("ascii")).collect();
        format!(
            "Subject: report{eol}MIME-Version: 1.0{eol}Content-Type: multipart/mixed; boundary=\"XX\"{eol}{eol}\
             --XX{eol}Content-Type: text/plain{eol}{eol}See attached.{eol}\
             --XX{eol}Content-Type: application/octet-stream{eol}Content-Disposition: attachment; filename=\"r.bin\"{eol}\
             Content-Transfer-Encoding: base64{eol}{eol}{}{eol}--XX--{eol}",
            body.join(eol)
        )
        .into_bytes()
    }

    #[test]
    fn canonical_base64_attachments_become_references_and_rebuild_exactly() {
        let content: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        for (line, eol) in [(76, "\r\n"), (76, "\n"), (64, "\r\n"), (72, "\n")] {
            let raw = message_with_attachment(&content, line, eol);
            let parsed = parse::parse(&raw);
            assert_eq!(parsed.attachments.len(), 1, "line {line}");
            let a = &parsed.attachments[0];
            assert_eq!(a.content, content);
            assert_eq!(a.part_id, "2");
            let id = BlobId::of(&a.content);
            let skeleton = build(&raw, &parsed.attachments, &[id]).expect("referenced");
            assert_eq!(skeleton.blobs(), vec![id]);
            let kept: usize =
                skeleton.segments.iter().map(|s| if let Segment::Bytes(b) = s { b.len() } else { 0 }).sum();
            assert!(kept < 600, "skeleton keeps {kept} bytes");
            let back = reconstruct(&skeleton, |_| Ok(content.clone())).expect("rebuild");
            assert_eq!(back, raw);
        }
    }

    #[test]
    fn irregular_base64_stays_inline() {
        let content = vec![42u8; 3000];
        let mut raw = message_with_attachment(&content, 76, "\r\n");
        // Make one line shorter than the others: not canonical any more.
        let pos = raw.windows(2).position(|w| w == b"\r\n").expect("eol");
        let body_start = raw.windows(4).rposition(|w| w == b"\r\n\r\n").expect("body") + 4;
        let _ = pos;
        raw.insert(body_start + 10, b'\n');
        raw.insert(body_start + 10, b'\r');
        let parsed = parse::parse(&raw);
        let ids: Vec<BlobId> = parsed.attachments.iter().map(|a| BlobId::of(&a.content)).collect();
        assert!(build(&raw, &parsed.attachments, &ids).is_none());
    }
}
