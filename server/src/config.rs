//! Configuration: a TOML file, overridden by command-line flags.
//!
//! ```toml
//! data_dir = "./quail-data"
//! listen = ["127.0.0.1:4433"]
//! domains = ["example.org"]          # empty: accept any domain's local part
//! [tls]                              # absent: a self-signed development certificate
//! cert = "/etc/quail/cert.pem"
//! key = "/etc/quail/key.pem"
//! [limits]
//! max_message_bytes = 52428800
//! [mail]
//! keep_changes = 100000              # change-log entries kept per account
//! thread_window_hours = 168          # subject-only threading window
//! retry_base_secs = 300              # outbox: first retry after a failed attempt, doubling
//! retry_max_secs = 3600              # outbox: longest wait between attempts
//! outbox_expiry_secs = 432000        # outbox: pending recipients bounce after 5 days
//! search_merge_ms = 50               # search index merger's polling; 0 = off
//! [filter]
//! builtin_scanner = true             # EICAR, block list, zip inspection, dangerous names
//! clamd = "unix:/run/clamav/clamd.ctl"   # or "tcp:127.0.0.1:3310"; absent: no clamd
//! fail_open = false                  # scanner down: 451 (true: deliver unscanned)
//! blocklist = []                     # BLAKE3 hex of attachments to refuse
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use quail_protocol::limits;

/// The default listen address: loopback only. Anything else is opt-in.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4433";
/// The default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./quail-data";

/// Server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the store, certificates and credentials live.
    pub data_dir: PathBuf,
    /// UDP addresses to serve QUIC on.
    pub listen: Vec<SocketAddr>,
    /// A real certificate; when absent a development certificate is created
    /// once in the data dir.
    pub tls: Option<TlsFiles>,
    /// Mail domains served here. A recipient `user@domain` reaches account
    /// `user@domain`, or account `user` when the domain is listed here (or
    /// when this list is empty).
    pub domains: Vec<String>,
    /// Worker threads serving connections (0 = one per core).
    pub workers: usize,
    /// Limits announced in `hello` and enforced.
    pub limits: Limits,
    /// Mail store tunables.
    pub mail: MailSettings,
    /// Anti-virus (and later anti-spam) on every message in and out.
    pub filter: crate::filter::FilterSettings,
}

/// Mail store tunables.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailSettings {
    /// Change-log entries kept per account; clients further behind resync.
    pub keep_changes: u64,
    /// Messages with the same subject and no known references join one
    /// thread when at most this many hours apart.
    pub thread_window_hours: u64,
    /// The outbox's first retry comes this long after a failed attempt;
    /// each further one waits twice as long, up to `retry_max_secs`.
    pub retry_base_secs: u64,
    /// The longest wait between two delivery attempts.
    pub retry_max_secs: u64,
    /// Recipients still pending this long after submission fail, and the
    /// sender gets a delivery status notification (default 5 days).
    pub outbox_expiry_secs: u64,
    /// How often the search index's background merger looks for work; 0
    /// turns it off (tests that count commits; searches then slow down as
    /// segments pile up).
    pub search_merge_ms: u64,
}

impl Default for MailSettings {
    fn default() -> Self {
        let d = crate::mail::MailConfig::default();
        MailSettings {
            keep_changes: d.keep_changes,
            thread_window_hours: (d.thread_window_ms / 3_600_000) as u64,
            retry_base_secs: (d.outbox.retry_base_ms / 1000) as u64,
            retry_max_secs: (d.outbox.retry_max_ms / 1000) as u64,
            outbox_expiry_secs: (d.outbox.expiry_ms / 1000) as u64,
            search_merge_ms: 50,
        }
    }
}

/// A PEM certificate chain and private key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
}

/// Enforced limits.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest Cap'n Proto message read from a client.
    pub max_rpc_message_bytes: u64,
    /// Largest raw email accepted.
    pub max_message_bytes: u64,
    /// Largest byte run returned inline.
    pub max_inline_bytes: u64,
    /// Ids per batch call.
    pub max_ids_per_call: u32,
    /// Page size of query and search.
    pub max_query_limit: u32,
    /// maxChanges of `changes`.
    pub max_changes: u32,
    /// Recipients per deliver or submit.
    pub max_recipients: u32,
    /// Names and keywords, in bytes.
    pub max_name_bytes: u32,
    /// Search query text, in bytes.
    pub max_search_query_bytes: u32,
    /// Concurrent streams a client may open per connection.
    pub max_streams_per_connection: u32,
    /// Password checks (argon2id, 19 MiB each) running at once, server-wide;
    /// logins beyond it get `unavailable` at once.
    pub max_concurrent_logins: u32,
    /// Calls in flight per connection; more get `unavailable` at once.
    pub max_calls_per_connection: u32,
    /// Connections from one IP address (IPv6: one /64) at once.
    pub max_connections_per_ip: u32,
    /// Watches (push listeners) one connection may hold at once.
    pub max_watches_per_connection: u32,
    /// Seconds a listener may take to answer one push before its watch
    /// ends (its slot is then free again).
    pub listener_timeout_secs: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_rpc_message_bytes: limits::MAX_RPC_MESSAGE_BYTES,
            max_message_bytes: limits::MAX_MESSAGE_BYTES,
            max_inline_bytes: limits::MAX_INLINE_BYTES,
            max_ids_per_call: limits::MAX_IDS_PER_CALL,
            max_query_limit: limits::MAX_QUERY_LIMIT,
            max_changes: limits::MAX_CHANGES,
            max_recipients: limits::MAX_RECIPIENTS,
            max_name_bytes: limits::MAX_NAME_BYTES,
            max_search_query_bytes: limits::MAX_SEARCH_QUERY_BYTES,
            max_streams_per_connection: 32,
            max_concurrent_logins: 4,
            max_calls_per_connection: 128,
            max_connections_per_ip: 64,
            max_watches_per_connection: 16,
            listener_timeout_secs: 30,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: vec![DEFAULT_LISTEN.parse().unwrap_or_else(|_| {
                SocketAddr::from(([127, 0, 0, 1], 4433)) // the literal above parses
            })],
            tls: None,
            domains: Vec::new(),
            workers: 0,
            limits: Limits::default(),
            mail: MailSettings::default(),
            filter: Default::default(),
        }
    }
}

impl Config {
    /// Defaults with another data directory (tests, tools).
    pub fn with_data_dir(dir: impl Into<PathBuf>) -> Self {
        Config { data_dir: dir.into(), ..Config::default() }
    }

    /// Defaults with another data directory, listening on a free loopback
    /// port (tests run many servers at once).
    pub fn ephemeral(dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            workers: 2,
            ..Config::with_data_dir(dir)
        }
    }

    /// Reads a TOML file; unknown keys are an error, so typos do not pass silently.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading config {}: {e}", path.display()))?;
        let config: Config =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.listen.is_empty(), "listen: at least one address is needed");
        crate::filter::Pipeline::from_settings(&self.filter).map_err(|e| anyhow::anyhow!("{e}"))?;
        let l = &self.limits;
        anyhow::ensure!(
            l.max_rpc_message_bytes >= 64 * 1024,
            "limits.max_rpc_message_bytes must be at least 64 KiB"
        );
        anyhow::ensure!(
            l.max_inline_bytes >= 1024 && l.max_inline_bytes + 64 * 1024 <= l.max_rpc_message_bytes,
            "limits.max_inline_bytes must be at least 1 KiB and leave 64 KiB of max_rpc_message_bytes"
        );
        anyhow::ensure!(l.max_message_bytes >= 1024, "limits.max_message_bytes must be at least 1 KiB");
        anyhow::ensure!(
            l.max_ids_per_call > 0 && l.max_query_limit > 0 && l.max_changes > 0,
            "limits: counts must be positive"
        );
        anyhow::ensure!(
            l.max_concurrent_logins > 0 && l.max_calls_per_connection > 0 && l.max_connections_per_ip > 0,
            "limits: max_concurrent_logins, max_calls_per_connection and max_connections_per_ip must be positive"
        );
        anyhow::ensure!(l.listener_timeout_secs > 0, "limits.listener_timeout_secs must be positive");
        // Together: what hello announces must be what holds. A message up
        // to max_message_bytes travels on a bulk stream, held in memory
        // once while it is parsed; past 1 GiB that is no longer a sane
        // promise on any machine this runs on.
        anyhow::ensure!(
            l.max_message_bytes <= 1 << 30,
            "limits.max_message_bytes must be at most 1 GiB (messages are held whole while parsed)"
        );
        anyhow::ensure!(
            l.max_watches_per_connection > 0 && l.max_watches_per_connection < l.max_calls_per_connection,
            "limits.max_watches_per_connection must be positive and below max_calls_per_connection \
             (each watch keeps one call to its listener in flight)"
        );
        Ok(())
    }

    /// The mail store's tunables.
    pub fn mail_config(&self) -> crate::mail::MailConfig {
        crate::mail::MailConfig {
            keep_changes: self.mail.keep_changes.max(1),
            thread_window_ms: (self.mail.thread_window_hours.min(24 * 365) * 3_600_000) as i64,
            max_ids: self.limits.max_ids_per_call as usize,
            outbox: crate::mail::outbox::Schedule {
                retry_base_ms: (self.mail.retry_base_secs.clamp(1, 86_400) * 1000) as i64,
                retry_max_ms: (self.mail.retry_max_secs.clamp(1, 7 * 86_400) * 1000) as i64,
                expiry_ms: (self.mail.outbox_expiry_secs.clamp(1, 30 * 86_400) * 1000) as i64,
            },
        }
    }

    /// Directory of the key-value store.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// Directory of the development certificate.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filter_settings_are_refused_at_load_with_the_reason() {
        let mut c = Config::default();
        c.filter.clamd = Some("clamd.example:3310".into());
        let e = c.validate().expect_err("no scheme").to_string();
        assert!(e.contains("unix:PATH nor tcp:HOST:PORT"), "{e}");
        let mut c = Config::default();
        c.filter.blocklist = vec!["not a hash".into()];
        assert!(c.validate().expect_err("bad hash").to_string().contains("BLAKE3"));
    }

    #[test]
    fn parses_full_file_and_rejects_unknown_keys() {
        let c: Config = toml::from_str(
            r#"
            data_dir = "/srv/quail"
            listen = ["[::1]:4433", "127.0.0.1:5000"]
            domains = ["example.org"]
            [limits]
            max_message_bytes = 1048576
            "#,
        )
        .expect("parses");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.limits.max_message_bytes, 1 << 20);
        assert_eq!(c.limits.max_query_limit, limits::MAX_QUERY_LIMIT);
        c.validate().expect("valid");
        assert!(toml::from_str::<Config>("listn = []").is_err());
    }

    #[test]
    fn limits_that_cannot_hold_together_are_refused() {
        let mut c = Config::default();
        c.validate().expect("the defaults hold");
        c.limits.max_message_bytes = 2 << 30;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.limits.max_watches_per_connection = c.limits.max_calls_per_connection;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.limits.max_inline_bytes = c.limits.max_rpc_message_bytes;
        assert!(c.validate().is_err(), "inline bytes must fit in an RPC message with room to spare");
    }

    #[test]
    fn default_is_loopback_only() {
        let c = Config::default();
        assert_eq!(c.listen, vec!["127.0.0.1:4433".parse().expect("addr")]);
        assert!(c.listen.iter().all(|a| a.ip().is_loopback()));
    }
}
