//! Sender authentication of inbound mail: SPF (HELO and MAIL FROM), DKIM,
//! DMARC and ARC, verified with mail-auth and recorded in an
//! `Authentication-Results` header (RFC 8601) at the top of the message.
//! The client's address is also looked up in the configured DNS
//! blocklists (RFC 5782); a listing is recorded as `dnsbl=listed` with the
//! zone, a Quail extension the server's spam score reads from this
//! gateway's field only.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, MessageAuthenticator};

/// How long one DNS lookup may take: a slow resolver delays the reply to
/// DATA, never the store.
const DNS_TIMEOUT: Duration = Duration::from_secs(3);

/// The verifier.
#[derive(Clone)]
pub struct Verifier {
    auth: MessageAuthenticator,
    hostname: String,
    dnsbl: Vec<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hostname", &self.hostname)
            .field("dnsbl", &self.dnsbl)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Resolving through `nameserver` (`None`: the system's resolver).
    pub fn new(hostname: &str, nameserver: Option<SocketAddr>) -> anyhow::Result<Verifier> {
        let mut opts = ResolverOpts::default();
        opts.timeout = DNS_TIMEOUT;
        opts.attempts = 1;
        let auth = match nameserver {
            Some(addr) => {
                let mut ns = NameServerConfig::udp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                MessageAuthenticator::new(ResolverConfig::from_parts(None, Vec::new(), vec![ns]), opts)
            }
            None => MessageAuthenticator::new_system_conf(),
        }
        .map_err(|e| anyhow::anyhow!("DNS resolver: {e}"))?;
        Ok(Verifier { auth, hostname: hostname.to_owned(), dnsbl: Vec::new() })
    }

    /// Also looking up clients in the DNS blocklists `zones` (none: off).
    pub fn with_dnsbl(mut self, zones: Vec<String>) -> Verifier {
        self.dnsbl = zones.into_iter().map(|z| z.trim_matches('.').to_ascii_lowercase()).collect();
        self
    }

    /// The first of the blocklists that lists `ip`. A zone that cannot be
    /// reached counts as not listing it: a blocklist only ever adds points.
    async fn listed(&self, ip: IpAddr) -> Option<&str> {
        let reversed = reverse(ip);
        for zone in &self.dnsbl {
            let name = format!("{reversed}.{zone}.");
            if let Ok(found) = tokio::time::timeout(DNS_TIMEOUT, self.auth.ipv4_lookup_raw(&name)).await
                && let Ok(a) = found
                && a.entry.iter().any(|a| is_listing(*a))
            {
                return Some(zone);
            }
        }
        None
    }

    /// The `Authentication-Results` header for `raw` from `ip`, which said
    /// `helo` and `MAIL FROM:<mail_from>`.
    pub async fn results(&self, raw: &[u8], ip: IpAddr, helo: &str, mail_from: &str) -> String {
        let host = self.hostname.as_str();
        let spf_helo = self.auth.verify_spf(SpfParameters::verify_ehlo(ip, helo, host)).await;
        let sender = if mail_from.is_empty() { format!("postmaster@{helo}") } else { mail_from.to_owned() };
        let spf_from = self.auth.verify_spf(SpfParameters::verify_mail_from(ip, helo, host, &sender)).await;
        let mut ar = AuthenticationResults::new(host)
            .with_spf_ehlo_result(&spf_helo, ip, helo)
            .with_spf_mailfrom_result(&spf_from, ip, mail_from, helo);
        if let Some(msg) = AuthenticatedMessage::parse(raw) {
            let dkim = self.auth.verify_dkim(&msg).await;
            let arc = self.auth.verify_arc(&msg).await;
            let from_domain = sender.rsplit_once('@').map_or(helo, |(_, d)| d).to_owned();
            let dmarc =
                self.auth.verify_dmarc(DmarcParameters::new(&msg, &dkim, &from_domain, &spf_from)).await;
            ar = ar.with_dkim_results(&dkim, msg.from()).with_arc_result(&arc, ip).with_dmarc_result(&dmarc);
        }
        let mut header = ar.to_header();
        if let Some(zone) = self.listed(ip).await
            && let Some(fields) = header.strip_suffix("\r\n")
        {
            header = format!("{fields};\r\n\tdnsbl=listed policy.zone={zone}\r\n");
        }
        header
    }
}

/// The name a blocklist lists `ip` under (RFC 5782 §2.1, §2.4): the
/// octets, or for IPv6 the nibbles, in reverse order.
fn reverse(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => {
            let mut nibbles = Vec::with_capacity(32);
            for byte in v6.octets().iter().rev() {
                nibbles.push(format!("{:x}", byte & 0xf));
                nibbles.push(format!("{:x}", byte >> 4));
            }
            nibbles.join(".")
        }
    }
}

/// Whether a blocklist's answer is a listing: an address in 127.0.0.0/8,
/// except 127.255.255.0/24, which some lists answer with to say that the
/// query itself was refused.
fn is_listing(a: std::net::Ipv4Addr) -> bool {
    let [x, y, z, _] = a.octets();
    x == 127 && !(y == 255 && z == 255)
}

/// Removes `Authentication-Results` fields that claim to come from
/// `hostname` (RFC 8601 §5): only this gateway may write results under its
/// own name, so a sender cannot forge a `dkim=pass` that readers trust.
/// Fields of other authserv-ids are kept. Works on the header section only.
pub fn strip_forged(raw: &[u8], hostname: &str) -> Vec<u8> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(raw.len(), |i| i + 2);
    let (head, body) = raw.split_at(end);
    let mut out = Vec::with_capacity(raw.len());
    let mut fields: Vec<&[u8]> = Vec::new();
    // Split the header section into fields (a line starting with space or
    // tab continues the previous field).
    let mut start = 0;
    let mut i = 0;
    while i < head.len() {
        if head[i] == b'\n' {
            let next = head.get(i + 1).copied();
            if !matches!(next, Some(b' ' | b'\t')) {
                fields.push(&head[start..=i]);
                start = i + 1;
            }
        }
        i += 1;
    }
    if start < head.len() {
        fields.push(&head[start..]);
    }
    for f in fields {
        let text = String::from_utf8_lossy(f);
        let forged = text.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("authentication-results")
                && value
                    .trim_start()
                    .split(|c: char| c == ';' || c.is_whitespace())
                    .next()
                    .is_some_and(|id| id.eq_ignore_ascii_case(hostname))
        });
        if !forged {
            out.extend_from_slice(f);
        }
    }
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::{is_listing, reverse};

    #[test]
    fn blocklist_names_reverse_the_address() {
        assert_eq!(reverse("192.0.2.99".parse().unwrap()), "99.2.0.192");
        assert_eq!(
            reverse("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
        );
        assert!(is_listing("127.0.0.2".parse().unwrap()));
        assert!(is_listing("127.0.0.10".parse().unwrap()));
        assert!(!is_listing("127.255.255.254".parse().unwrap()), "a refused query is not a listing");
        assert!(!is_listing("10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn forged_results_under_our_name_are_removed_and_others_kept() {
        let raw = b"Received: from x\r\n\tby mx.test; now\r\n\
            Authentication-Results: MX.test;\r\n\tdkim=pass header.d=bank.example\r\n\
            Subject: hi\r\n\
            Authentication-Results: other.example; spf=fail\r\n\
            \r\n\
            Authentication-Results: mx.test; in the body stays\r\n";
        let out = String::from_utf8(super::strip_forged(raw, "mx.test")).expect("utf8");
        assert!(!out.contains("dkim=pass header.d=bank.example"), "{out}");
        assert!(out.contains("Authentication-Results: other.example; spf=fail\r\n"), "{out}");
        assert!(out.starts_with("Received: from x\r\n\tby mx.test; now\r\nSubject: hi\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nAuthentication-Results: mx.test; in the body stays\r\n"), "{out}");
    }
}
