//! One SMTP client transaction with one receiving host: greeting, EHLO,
//! STARTTLS when offered (opportunistic: encrypted, not authenticated),
//! MAIL, RCPT per recipient, DATA. Replies are framed here (lines up to
//! the one without a continuation dash) and parsed by `smtp-proto`;
//! commands are written here (smtp-proto only parses them). Commands are
//! sent one at a time: a peer's answer to each recipient is its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{EXT_8BIT_MIME, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::route::{Verdict, verdict_of};

/// Longest reply read (a multi-line EHLO answer included).
const MAX_REPLY: usize = 64 * 1024;

/// Time limits of one transaction (RFC 5321 §4.5.3.2 suggests minutes
/// for each; a test shortens them).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// The greeting and each command's reply.
    pub command: Duration,
    /// The reply to the final dot (the receiver may be scanning).
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            command: Duration::from_secs(300),
            data_end: Duration::from_secs(600),
        }
    }
}

/// What to send.
#[derive(Debug)]
pub struct Transaction<'a> {
    /// Our name in EHLO.
    pub helo: &'a str,
    /// The receiving host's name (TLS server name).
    pub host: &'a str,
    /// The envelope sender ("" for the null sender).
    pub mail_from: &'a str,
    /// Recipients at this host's domain.
    pub recipients: &'a [String],
    /// The message (signed), as stored: dot-stuffed and CRLF-terminated here.
    pub message: &'a [u8],
}

/// Why a host could not be used at all: try the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFailure(pub String);

/// Each recipient's verdict and the reply behind it.
pub type Outcomes = Vec<(String, Verdict, String)>;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    command: Duration,
}

/// A reply: code, text (with the enhanced code) as one line.
#[derive(Debug, Clone)]
struct Reply {
    code: u16,
    text: String,
    raw: Vec<u8>,
}

impl Conn {
    /// Reads one complete reply.
    async fn reply(&mut self, wait: Duration) -> Result<Reply, HostFailure> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = reply_end(&self.buf) {
                let raw: Vec<u8> = self.buf.drain(..end).collect();
                let mut it = raw.iter();
                let mut rx = ResponseReceiver::default();
                let parsed = rx.parse(&mut it).map_err(|e| {
                    HostFailure(format!("unreadable reply {:?}: {e}", String::from_utf8_lossy(&raw)))
                })?;
                let esc = if parsed.esc[0] != 0 {
                    format!("{}.{}.{} ", parsed.esc[0], parsed.esc[1], parsed.esc[2])
                } else {
                    String::new()
                };
                let text = format!("{} {esc}{}", parsed.code, parsed.message.replace(['\r', '\n'], " "));
                return Ok(Reply { code: parsed.code, text, raw });
            }
            if self.buf.len() > MAX_REPLY {
                return Err(HostFailure("a reply longer than 64 KiB".into()));
            }
            let mut chunk = [0u8; 8192];
            let n = match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Err(_) => return Err(HostFailure(format!("no reply within {} s", wait.as_secs()))),
                Ok(Err(e)) => return Err(HostFailure(format!("reading: {e}"))),
                Ok(Ok(0)) => return Err(HostFailure("the connection closed".into())),
                Ok(Ok(n)) => n,
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), HostFailure> {
        match tokio::time::timeout(self.command, self.io.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(HostFailure(format!("writing: {e}"))),
            Err(_) => Err(HostFailure("writing timed out".into())),
        }
    }

    async fn command(&mut self, line: &str) -> Result<Reply, HostFailure> {
        self.send(line.as_bytes()).await?;
        self.reply(self.command).await
    }
}

/// Where the reply at the start of `buf` ends, once it is complete: after
/// the first line whose code is followed by a space (or nothing).
fn reply_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl + 1];
        start += nl + 1;
        if line.get(3) != Some(&b'-') {
            return Some(start);
        }
    }
    None
}

/// Writes `message` as DATA content: CRLF line ends (a bare LF, and a
/// bare CR, becomes CRLF), a dot doubled at the start of a line, the final
/// CRLF.CRLF. No bare CR or LF goes out: a receiver that takes one for a
/// line end (`<CR>.<CR><LF>`, `<LF>.<LF>`) would otherwise read the rest
/// as a second message from this host (SMTP smuggling), whatever a
/// submitted message holds.
pub fn data_content(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    let mut i = 0;
    while i < message.len() {
        let b = message[i];
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\r' || b == b'\n' {
            out.extend_from_slice(b"\r\n");
            // A CRLF is one line end.
            i += if b == b'\r' && message.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
            at_line_start = true;
            continue;
        }
        out.push(b);
        at_line_start = false;
        i += 1;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Runs one transaction with the host at `addr`. `Err` when the host
/// could not be used (connect, greeting, EHLO, TLS, MAIL FROM refused
/// temporarily): the next host may do better. `tls` is the opportunistic
/// client configuration; `None` skips STARTTLS (the retry after a failed
/// handshake).
pub async fn deliver(
    addr: SocketAddr,
    t: &Transaction<'_>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeouts: Timeouts,
) -> Result<(Outcomes, bool), HostFailure> {
    let tcp = match tokio::time::timeout(timeouts.connect, TcpStream::connect(addr)).await {
        Err(_) => return Err(HostFailure(format!("connecting to {addr} timed out"))),
        Ok(Err(e)) => return Err(HostFailure(format!("connecting to {addr}: {e}"))),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    let mut c = Conn { io: Box::new(tcp), buf: Vec::new(), command: timeouts.command };
    let greeting = c.reply(timeouts.command).await?;
    if greeting.code != 220 {
        return Err(HostFailure(format!("greeting: {}", greeting.text)));
    }
    let mut ehlo = ehlo(&mut c, t.helo).await?;
    let mut encrypted = false;
    if let Some(config) = tls
        && ehlo.has_capability(EXT_START_TLS)
    {
        let r = c.command("STARTTLS\r\n").await?;
        if r.code != 220 {
            return Err(HostFailure(format!("STARTTLS: {}", r.text)));
        }
        if !c.buf.is_empty() {
            // Bytes before the handshake would be injected into it.
            return Err(HostFailure("the server sent data after agreeing to STARTTLS".into()));
        }
        let name = rustls_pki_types::ServerName::try_from(t.host.trim_end_matches('.').to_owned())
            .unwrap_or_else(|_| rustls_pki_types::ServerName::IpAddress(addr.ip().into()));
        let connector = tokio_rustls::TlsConnector::from(config);
        let Conn { io, .. } = c;
        let stream = match tokio::time::timeout(timeouts.command, connector.connect(name, io)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(HostFailure(format!("TLS handshake: {e}"))),
            Err(_) => return Err(HostFailure("TLS handshake timed out".into())),
        };
        c = Conn { io: Box::new(stream), buf: Vec::new(), command: timeouts.command };
        ehlo = ehlo_again(&mut c, t.helo).await?;
        encrypted = true;
    }

    let utf8 = !t.mail_from.is_ascii() || t.recipients.iter().any(|r| !r.is_ascii());
    let mut mail = format!("MAIL FROM:<{}>", t.mail_from);
    if ehlo.has_capability(EXT_SIZE) {
        if ehlo.size > 0 && t.message.len() > ehlo.size {
            let why =
                format!("552 5.3.4 the message is larger than the {} bytes {} accepts", ehlo.size, t.host);
            return Ok((every(t.recipients, Verdict::PermFail, &why), encrypted));
        }
        mail.push_str(&format!(" SIZE={}", t.message.len()));
    }
    if ehlo.has_capability(EXT_8BIT_MIME) && !t.message.is_ascii() {
        mail.push_str(" BODY=8BITMIME");
    }
    if utf8 {
        if !ehlo.has_capability(EXT_SMTP_UTF8) {
            let why = format!("553 5.6.7 {} does not accept internationalised addresses", t.host);
            return Ok((every(t.recipients, Verdict::PermFail, &why), encrypted));
        }
        mail.push_str(" SMTPUTF8");
    }
    mail.push_str("\r\n");
    let r = c.command(&mail).await?;
    match verdict_of(r.code) {
        Verdict::Delivered => {}
        Verdict::PermFail => return Ok((every(t.recipients, Verdict::PermFail, &r.text), encrypted)),
        Verdict::TempFail => return Err(HostFailure(format!("MAIL FROM: {}", r.text))),
    }
    let mut outcomes: Outcomes = Vec::with_capacity(t.recipients.len());
    let mut accepted = Vec::new();
    for rcpt in t.recipients {
        let r = c.command(&format!("RCPT TO:<{rcpt}>\r\n")).await?;
        let v = verdict_of(r.code);
        if v == Verdict::Delivered {
            accepted.push(rcpt.clone());
        } else {
            outcomes.push((rcpt.clone(), v, r.text));
        }
    }
    if accepted.is_empty() {
        let _ = c.command("QUIT\r\n").await;
        return Ok((outcomes, encrypted));
    }
    let r = c.command("DATA\r\n").await?;
    if r.code != 354 {
        let v = if verdict_of(r.code) == Verdict::PermFail { Verdict::PermFail } else { Verdict::TempFail };
        outcomes.extend(accepted.iter().map(|a| (a.clone(), v, r.text.clone())));
        return Ok((outcomes, encrypted));
    }
    c.send(&data_content(t.message)).await?;
    let end = match c.reply(timeouts.data_end).await {
        Ok(r) => r,
        // The message may or may not have been taken: retried, as RFC 5321
        // §6.1 asks (a duplicate beats a loss).
        Err(HostFailure(why)) => {
            Reply { code: 451, text: format!("451 4.4.2 after the data: {why}"), raw: Vec::new() }
        }
    };
    let v = verdict_of(end.code);
    outcomes.extend(accepted.iter().map(|a| (a.clone(), v, end.text.clone())));
    let _ = c.command("QUIT\r\n").await;
    Ok((outcomes, encrypted))
}

fn every(recipients: &[String], v: Verdict, why: &str) -> Outcomes {
    recipients.iter().map(|r| (r.clone(), v, why.to_owned())).collect()
}

async fn ehlo(c: &mut Conn, helo: &str) -> Result<EhloResponse<String>, HostFailure> {
    let r = c.command(&format!("EHLO {helo}\r\n")).await?;
    if r.code != 250 {
        // An old server: HELO, no extensions.
        let h = c.command(&format!("HELO {helo}\r\n")).await?;
        if h.code != 250 {
            return Err(HostFailure(format!("HELO: {}", h.text)));
        }
        return Ok(EhloResponse::new(String::new()));
    }
    parse_ehlo(&r)
}

async fn ehlo_again(c: &mut Conn, helo: &str) -> Result<EhloResponse<String>, HostFailure> {
    let r = c.command(&format!("EHLO {helo}\r\n")).await?;
    if r.code != 250 {
        return Err(HostFailure(format!("EHLO after STARTTLS: {}", r.text)));
    }
    parse_ehlo(&r)
}

fn parse_ehlo(r: &Reply) -> Result<EhloResponse<String>, HostFailure> {
    EhloResponse::parse(&mut r.raw.iter()).map_err(|e| HostFailure(format!("EHLO reply: {e}")))
}

/// A TLS client configuration for opportunistic STARTTLS (RFC 7435): any
/// certificate is accepted, since a failed check would only make the
/// connection fall back to plain text. The handshake's signatures are still
/// verified, so the session key belongs to the certificate shown.
pub fn opportunistic_tls() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate(Arc::clone(&provider)));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth());
    match config {
        Ok(c) => Arc::new(c),
        // The ring provider supports the default versions; this cannot fail.
        Err(e) => panic!("TLS client configuration: {e}"),
    }
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_dot_stuffed_and_crlf_terminated() {
        assert_eq!(data_content(b"a\r\n.b\r\n..c\r\n"), b"a\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(data_content(b".\nx"), b"..\r\nx\r\n.\r\n");
        assert_eq!(data_content(b""), b"\r\n.\r\n");
        // A bare CR is a line end too: the smuggled end below is a
        // dot-stuffed line, and the message has one end, its own.
        assert_eq!(
            data_content(b"hi\r.\r\nMAIL FROM:<ceo@x>\r\n"),
            b"hi\r\n..\r\nMAIL FROM:<ceo@x>\r\n.\r\n".to_vec()
        );
        assert_eq!(data_content(b"a\r\rb\n\r"), b"a\r\n\r\nb\r\n\r\n.\r\n".to_vec());
        // Any mix: every CR is followed by LF, every LF preceded by CR,
        // and `CRLF.CRLF` is only the end.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2000 {
            let mut m = Vec::new();
            for _ in 0..(seed % 24) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                m.push(b"\r\n.a"[(seed % 4) as usize]);
            }
            let out = data_content(&m);
            for (i, &b) in out.iter().enumerate() {
                if b == b'\r' {
                    assert_eq!(out.get(i + 1), Some(&b'\n'), "{m:?} -> {out:?}");
                }
                if b == b'\n' {
                    assert!(i > 0 && out[i - 1] == b'\r', "{m:?} -> {out:?}");
                }
            }
            let ends = out.windows(5).filter(|w| w == b"\r\n.\r\n").count();
            let starts_with_end = out.starts_with(b".\r\n");
            assert_eq!(ends + usize::from(starts_with_end), 1, "{m:?} -> {out:?}");
            assert!(out.ends_with(b"\r\n.\r\n") || out == b"\r\n.\r\n");
        }
    }

    #[test]
    fn a_reply_ends_at_its_last_line() {
        assert_eq!(reply_end(b"250-a\r\n250-b\r\n"), None);
        assert_eq!(reply_end(b"250-a\r\n250 b\r\nrest"), Some(14));
        assert_eq!(reply_end(b"220\r\n"), Some(5));
    }
}
