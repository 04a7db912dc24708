//! A clamd client: `INSTREAM` over a unix socket or TCP, in chunks, with
//! timeouts, aware of clamd's `StreamMaxLength` (a message larger than it
//! is scanned part by part, each part cut to the limit).
//!
//! clamd unavailable, slow or answering an error is a temporary failure:
//! the delivery is refused with 451 and the sender retries, unless the
//! operator set `fail_open`.

use std::io::{Read, Write};
use std::time::Duration;

use super::{Direction, Filter, Part, Verdict};
use crate::error::{Error, Result};

/// Bytes per `INSTREAM` chunk.
const CHUNK: usize = 64 << 10;
/// Longest reply read.
const MAX_REPLY: usize = 4096;

/// Where clamd listens.
#[derive(Debug, Clone)]
enum Address {
    Unix(std::path::PathBuf),
    Tcp(String),
}

/// A clamd to ask.
#[derive(Debug)]
pub struct Clamd {
    address: Address,
    timeout: Duration,
    stream_max: u64,
}

/// One scan's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Nothing found.
    Clean,
    /// A signature matched: its name.
    Found(String),
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

impl Clamd {
    /// A client for `address` (`unix:/path` or `tcp:host:port`).
    pub fn new(address: &str, timeout: Duration, stream_max: u64) -> Result<Self> {
        let address = if let Some(p) = address.strip_prefix("unix:") {
            Address::Unix(p.into())
        } else if let Some(a) = address.strip_prefix("tcp:") {
            Address::Tcp(a.to_owned())
        } else {
            return Err(Error::invalid(format!(
                "filter.clamd: {address:?} is neither unix:PATH nor tcp:HOST:PORT"
            )));
        };
        Ok(Clamd { address, timeout, stream_max: stream_max.max(1) })
    }

    fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        match &self.address {
            Address::Unix(p) => {
                let s = std::os::unix::net::UnixStream::connect(p)?;
                s.set_read_timeout(Some(self.timeout))?;
                s.set_write_timeout(Some(self.timeout))?;
                Ok(Box::new(s))
            }
            Address::Tcp(a) => {
                use std::net::ToSocketAddrs;
                let addr = a
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| std::io::Error::other(format!("{a}: no address")))?;
                let s = std::net::TcpStream::connect_timeout(&addr, self.timeout)?;
                s.set_read_timeout(Some(self.timeout))?;
                s.set_write_timeout(Some(self.timeout))?;
                Ok(Box::new(s))
            }
        }
    }

    /// `PING` → whether clamd answered `PONG`.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = self.connect() else { return false };
        s.write_all(b"zPING\0").is_ok() && read_reply(&mut *s).is_ok_and(|r| r == "PONG")
    }

    /// Scans `data` (at most `stream_max` bytes of it).
    pub fn scan(&self, data: &[u8]) -> std::result::Result<Scan, String> {
        let data = &data[..data.len().min(self.stream_max as usize)];
        let mut s = self.connect().map_err(|e| format!("virus scanner unreachable: {e}"))?;
        // clamd answers (and closes) as soon as it decides, possibly while
        // we still write: a failed write means "read the reply".
        let sent = (|| -> std::io::Result<()> {
            s.write_all(b"zINSTREAM\0")?;
            for chunk in data.chunks(CHUNK) {
                s.write_all(&(chunk.len() as u32).to_be_bytes())?;
                s.write_all(chunk)?;
            }
            s.write_all(&0u32.to_be_bytes())?;
            s.flush()
        })();
        let reply = match (read_reply(&mut *s), sent) {
            (Ok(r), _) => r,
            (Err(e), Err(w)) => return Err(format!("virus scanner failed: {w} ({e})")),
            (Err(e), Ok(())) => return Err(format!("virus scanner gave no answer: {e}")),
        };
        parse_reply(&reply)
    }
}

/// Reads one NUL-terminated reply.
fn read_reply(s: &mut dyn Stream) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.contains(&0) || out.len() > MAX_REPLY {
            break;
        }
    }
    if out.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    let end = out.iter().position(|&b| b == 0).unwrap_or(out.len());
    Ok(String::from_utf8_lossy(&out[..end]).trim().to_owned())
}

/// `stream: OK`, `stream: NAME FOUND`, or an error.
fn parse_reply(reply: &str) -> std::result::Result<Scan, String> {
    let body = reply.strip_prefix("stream:").map(str::trim).unwrap_or(reply);
    if body == "OK" {
        Ok(Scan::Clean)
    } else if let Some(name) = body.strip_suffix(" FOUND") {
        Ok(Scan::Found(name.trim().to_owned()))
    } else {
        Err(format!("virus scanner error: {reply}"))
    }
}

impl Clamd {
    fn verdict(&self, data: &[u8]) -> Verdict {
        match self.scan(data) {
            Ok(Scan::Clean) => Verdict::Accept,
            Ok(Scan::Found(name)) => Verdict::Reject(format!("virus found: {name}")),
            Err(why) => Verdict::TempFail(why),
        }
    }
}

impl Filter for Clamd {
    fn name(&self) -> &'static str {
        "clamd"
    }

    // The whole message when it fits (clamd decodes MIME itself);
    // otherwise every decoded part on its own.
    fn check_message(&self, raw: &[u8], _direction: Direction) -> Verdict {
        if raw.len() as u64 <= self.stream_max { self.verdict(raw) } else { Verdict::Accept }
    }

    fn check_part(&self, part: &Part<'_>, _direction: Direction) -> Verdict {
        if part.message_bytes as u64 <= self.stream_max {
            return Verdict::Accept;
        }
        if part.content.len() as u64 > self.stream_max {
            // clamd refuses more; the built-in scanner still sees it all.
            tracing::warn!(
                bytes = part.content.len(),
                limit = self.stream_max,
                "a part larger than clamd's StreamMaxLength: clamd scans its start only"
            );
        }
        self.verdict(part.content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_as_clamd_writes_them() {
        assert_eq!(parse_reply("stream: OK"), Ok(Scan::Clean));
        assert_eq!(
            parse_reply("stream: Eicar-Test-Signature FOUND"),
            Ok(Scan::Found("Eicar-Test-Signature".into()))
        );
        assert!(parse_reply("INSTREAM size limit exceeded. ERROR").is_err());
        assert!(Clamd::new("http://x", Duration::from_secs(1), 1).is_err());
    }
}
