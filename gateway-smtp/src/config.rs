//! `quail-smtpd --config FILE`: the settings of a real deployment in TOML.
//! Every key is optional (the flags' defaults apply); unknown keys are an
//! error, so a typo never passes silently.
//!
//! ```toml
//! hostname = "mx.example.org"            # greeting, Received, Authentication-Results
//! listen = "0.0.0.0:25"
//! submission = "0.0.0.0:587"             # STARTTLS, then AUTH PLAIN/LOGIN
//! submissions = "0.0.0.0:465"            # implicit TLS, then AUTH
//! server = "mail.internal:4433"          # the Quail server
//! data_dir = "/etc/quail-smtpd"          # gateway.secret (and tls/dev-cert.sha256 to pin a dev server)
//! tls_cert = "/etc/letsencrypt/live/mx.example.org/fullchain.pem"
//! tls_key = "/etc/letsencrypt/live/mx.example.org/privkey.pem"
//! resolver = "127.0.0.53:53"             # DNS for SPF, DKIM, DMARC; absent: the system's
//! dnsbl = ["bl.example.net"]             # DNS blocklists for client addresses; none: off
//! max_connections_per_ip = 20
//! max_connections = 1000                 # from every address together
//! max_messages_per_minute_per_ip = 600
//!
//! [outbound]                             # delivery of the server's outbox
//! enabled = true
//! port = 25                              # where receiving MTAs listen
//! max_concurrent = 32
//! max_per_domain = 4
//!
//! [[outbound.dkim]]                      # one per sending domain
//! domain = "example.org"
//! selector = "quail"                     # published at quail._domainkey.example.org
//! key = "/etc/quail-smtpd/dkim/example.org.pem"   # Ed25519 or RSA (2048-4096), PEM
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// This host's name.
    pub hostname: Option<String>,
    /// Where to listen.
    pub listen: Option<SocketAddr>,
    /// Where to listen for submission (STARTTLS).
    pub submission: Option<SocketAddr>,
    /// Where to listen for submission over implicit TLS.
    pub submissions: Option<SocketAddr>,
    /// The Quail server (host:port).
    pub server: Option<String>,
    /// The server's data dir (gateway credential, pin).
    pub data_dir: Option<PathBuf>,
    /// STARTTLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// Its key (PEM).
    pub tls_key: Option<PathBuf>,
    /// DNS server for sender authentication.
    pub resolver: Option<SocketAddr>,
    /// DNS blocklist zones to look clients up in.
    pub dnsbl: Option<Vec<String>>,
    /// Connections from one address at once.
    pub max_connections_per_ip: Option<u32>,
    /// Connections at once, from every address together.
    pub max_connections: Option<u32>,
    /// Messages one address may send per minute.
    pub max_messages_per_minute_per_ip: Option<u32>,
    /// The outbound worker.
    pub outbound: Option<OutboundConfig>,
}

/// `[outbound]`: delivery of the server's outbox to the internet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Whether this gateway delivers outbound mail (default: yes).
    pub enabled: Option<bool>,
    /// The port of receiving MTAs (default 25).
    pub port: Option<u16>,
    /// Deliveries at once.
    pub max_concurrent: Option<usize>,
    /// Deliveries to one domain at once.
    pub max_per_domain: Option<usize>,
    /// DKIM keys.
    #[serde(default)]
    pub dkim: Vec<DkimConfig>,
}

/// `[[outbound.dkim]]`: one sending domain's key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// The domain (`d=`); also signs its subdomains' mail.
    pub domain: String,
    /// The selector (`s=`).
    pub selector: String,
    /// The private key, PEM.
    pub key: PathBuf,
}

impl FileConfig {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> anyhow::Result<FileConfig> {
        let c: FileConfig = toml::from_str(text)?;
        anyhow::ensure!(c.tls_cert.is_some() == c.tls_key.is_some(), "tls_cert and tls_key go together");
        anyhow::ensure!(c.max_connections_per_ip != Some(0), "max_connections_per_ip must be positive");
        anyhow::ensure!(c.max_connections != Some(0), "max_connections must be positive");
        if let Some(o) = &c.outbound {
            anyhow::ensure!(o.port != Some(0), "outbound.port must be positive");
            anyhow::ensure!(o.max_concurrent != Some(0), "outbound.max_concurrent must be positive");
            anyhow::ensure!(o.max_per_domain != Some(0), "outbound.max_per_domain must be positive");
        }
        anyhow::ensure!(
            c.hostname.as_deref().is_none_or(|h| !h.is_empty() && !h.contains(char::is_whitespace)),
            "hostname must be one name"
        );
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_and_mistakes_are_refused() {
        let c = FileConfig::parse(
            r#"
            hostname = "mx.example.org"
            listen = "0.0.0.0:25"
            server = "mail.internal:4433"
            tls_cert = "/etc/quail/fullchain.pem"
            tls_key = "/etc/quail/key.pem"
            resolver = "127.0.0.53:53"
            max_connections_per_ip = 20
            max_connections = 500

            [outbound]
            port = 2525
            [[outbound.dkim]]
            domain = "example.org"
            selector = "quail"
            key = "/etc/quail/dkim.pem"
            "#,
        )
        .expect("parses");
        assert_eq!(c.hostname.as_deref(), Some("mx.example.org"));
        assert_eq!(c.listen, Some("0.0.0.0:25".parse().expect("addr")));
        assert_eq!(c.max_messages_per_minute_per_ip, None);
        assert_eq!(c.max_connections, Some(500));
        assert!(FileConfig::parse("max_connections = 0").is_err());
        let o = c.outbound.expect("outbound");
        assert_eq!((o.port, o.enabled, o.dkim.len()), (Some(2525), None, 1));
        assert!(FileConfig::parse("[outbound]\nport = 0").is_err());
        assert!(
            FileConfig::parse("[[outbound.dkim]]\ndomain = \"x\"").is_err(),
            "a key without selector and file"
        );
        assert!(FileConfig::parse("hostnme = \"x\"").is_err(), "a typo is an error");
        assert!(FileConfig::parse("tls_cert = \"a.pem\"").is_err(), "a certificate without its key");
        assert!(FileConfig::parse("listen = \"not an address\"").is_err());
        assert!(FileConfig::parse("hostname = \"two words\"").is_err());
        assert_eq!(FileConfig::parse("").expect("empty"), FileConfig::default());
    }
}
