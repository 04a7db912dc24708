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

/// Where encoded bytes go, piece by piece.
pub type Sink<'a> = dyn FnMut(&[u8]) -> Result<()> + 'a;

/// Output gathered before it is handed to the sink.
const ENCODER_BUFFER: usize = 64 * 1024;

/// Encodes content fed piece by piece as a [`Reencode`] says, with the same
/// output as encoding it whole: base64 groups and line breaks carry across
/// pieces. So a large attachment is re-encoded in bounded memory.
pub struct Encoder<'s, 'a> {
    how: Reencode,
    carry: Vec<u8>,
    col: usize,
    any: bool,
    out: Vec<u8>,
    sink: &'s mut Sink<'a>,
}

impl std::fmt::Debug for Encoder<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").field("how", &self.how).field("col", &self.col).finish_non_exhaustive()
    }
}

impl<'s, 'a> Encoder<'s, 'a> {
    /// An encoder writing to `sink`.
    pub fn new(how: Reencode, sink: &'s mut Sink<'a>) -> Self {
        Encoder { how, carry: Vec::new(), col: 0, any: false, out: Vec::with_capacity(ENCODER_BUFFER), sink }
    }

    fn emit(&mut self, chars: &[u8]) -> Result<()> {
        let Reencode::Base64 { line, crlf, .. } = self.how else {
            return Ok(());
        };
        let line = line.max(1) as usize;
        let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let mut s = chars;
        while !s.is_empty() {
            if self.col == line {
                self.out.extend_from_slice(eol);
                self.col = 0;
            }
            let n = (line - self.col).min(s.len());
            self.out.extend_from_slice(&s[..n]);
            self.col += n;
            self.any = true;
            s = &s[n..];
        }
        if self.out.len() >= ENCODER_BUFFER {
            (self.sink)(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Feeds the next piece of content.
    pub fn feed(&mut self, mut piece: &[u8]) -> Result<()> {
        let engine = &base64::engine::general_purpose::STANDARD;
        match self.how {
            Reencode::Identity => (self.sink)(piece),
            Reencode::Base64 { .. } => {
                if !self.carry.is_empty() {
                    let take = (3 - self.carry.len()).min(piece.len());
                    self.carry.extend_from_slice(&piece[..take]);
                    piece = &piece[take..];
                    if self.carry.len() < 3 {
                        return Ok(());
                    }
                    let group = engine.encode(&self.carry);
                    self.carry.clear();
                    self.emit(group.as_bytes())?;
                }
                let whole = piece.len() / 3 * 3;
                // In slices, so the base64 text of a huge piece is never
                // held at once.
                for part in piece[..whole].chunks(48 * 1024) {
                    let text = engine.encode(part);
                    self.emit(text.as_bytes())?;
                }
                self.carry.extend_from_slice(&piece[whole..]);
                Ok(())
            }
        }
    }

    /// Ends the content: the last group, its padding, the last line end.
    pub fn finish(mut self) -> Result<()> {
        if let Reencode::Base64 { crlf, trailing, .. } = self.how {
            if !self.carry.is_empty() {
                let group = base64::engine::general_purpose::STANDARD.encode(&self.carry);
                self.carry.clear();
                self.emit(group.as_bytes())?;
            }
            if trailing && self.any {
                self.out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            }
            if !self.out.is_empty() {
                (self.sink)(&self.out)?;
            }
        }
        Ok(())
    }
}

/// Encodes `content` as `how` says.
pub fn reencode(content: &[u8], how: Reencode) -> Vec<u8> {
    let mut out = Vec::new();
    let mut sink = |b: &[u8]| {
        out.extend_from_slice(b);
        Ok(())
    };
    let mut e = Encoder::new(how, &mut sink);
    let done = e.feed(content).and_then(|()| e.finish());
    debug_assert!(done.is_ok(), "a Vec sink does not fail");
    out
}

/// Whether `content` encoded as `how` is exactly `encoded`, compared as it
/// is encoded (no copy of the encoding is made).
pub fn reencodes_to(content: &[u8], how: Reencode, encoded: &[u8]) -> bool {
    let mut at = 0usize;
    let mut sink = |b: &[u8]| {
        if encoded.get(at..at + b.len()) == Some(b) {
            at += b.len();
            Ok(())
        } else {
            Err(Error::invalid("differs"))
        }
    };
    let mut e = Encoder::new(how, &mut sink);
    e.feed(content).and_then(|()| e.finish()).is_ok() && at == encoded.len()
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
        if reencodes_to(&a.content, how, encoded) {
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

/// Streams the raw message a skeleton stands for into `sink`, in bounded
/// memory: `blob(id, feed)` hands a blob's content to `feed` piece by piece.
pub fn reconstruct_to(
    skeleton: &Skeleton,
    blob: &mut dyn FnMut(BlobId, &mut Sink<'_>) -> Result<()>,
    sink: &mut Sink<'_>,
) -> Result<()> {
    for s in &skeleton.segments {
        match s {
            Segment::Bytes(b) => sink(b)?,
            Segment::Blob(id, how) => {
                let mut e = Encoder::new(*how, sink);
                blob(*id, &mut |piece| e.feed(piece))?;
                e.finish()?;
            }
        }
    }
    Ok(())
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
    fn encoding_in_pieces_equals_encoding_whole() {
        let content: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 257) as u8).collect();
        for how in [
            Reencode::Identity,
            Reencode::Base64 { line: 76, crlf: true, trailing: true },
            Reencode::Base64 { line: 64, crlf: false, trailing: false },
            Reencode::Base64 { line: 1, crlf: true, trailing: false },
        ] {
            let whole = reencode(&content, how);
            for piece in [1usize, 2, 3, 4, 57, 1000, 65_536] {
                let mut out = Vec::new();
                let mut sink = |b: &[u8]| {
                    out.extend_from_slice(b);
                    Ok(())
                };
                let mut e = Encoder::new(how, &mut sink);
                for p in content.chunks(piece) {
                    e.feed(p).expect("feed");
                }
                e.finish().expect("finish");
                assert!(out == whole, "{how:?} in pieces of {piece}");
            }
            assert!(reencodes_to(&content, how, &whole));
            assert!(!reencodes_to(&content, how, &whole[..whole.len() - 1]));
            assert!(reencode(&[], how).is_empty());
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
