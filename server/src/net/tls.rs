//! TLS for the QUIC endpoint: TLS 1.3 only, ALPN `quail/1`, ring as the one
//! crypto provider. The certificate comes from the configuration, or is a
//! self-signed development certificate created once in the data dir; its
//! SHA-256 fingerprint is what clients pin.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::{Config, Limits};

/// How long an idle connection stays open (clients send keep-alives).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A certificate chain with its key and the leaf's fingerprint.
#[derive(Debug)]
pub struct ServerCert {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Lower-case hex SHA-256 of the leaf certificate (DER).
    pub fingerprint: String,
}

/// Lower-case hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// File names of the development certificate inside `<data dir>/tls`.
pub const DEV_CERT: &str = "dev-cert.der";
/// Development key file name.
pub const DEV_KEY: &str = "dev-key.der";
/// Fingerprint of the development certificate, for local clients.
pub const DEV_FINGERPRINT: &str = "dev-cert.sha256";

/// The certificate the configuration names, or the development one.
pub fn load(config: &Config) -> anyhow::Result<ServerCert> {
    match &config.tls {
        Some(files) => load_pem(&files.cert, &files.key),
        None => load_or_create_dev(&config.tls_dir()),
    }
}

/// A PEM chain and key from files.
pub fn load_pem(cert: &Path, key: &Path) -> anyhow::Result<ServerCert> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    let leaf = chain.first().ok_or_else(|| anyhow!("{} holds no certificate", cert.display()))?;
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading private key {}", key.display()))?;
    Ok(ServerCert { chain, key, fingerprint })
}

/// The development certificate in `dir`, created on first use for
/// `localhost`, `127.0.0.1` and `::1`.
pub fn load_or_create_dev(dir: &Path) -> anyhow::Result<ServerCert> {
    let cert_path = dir.join(DEV_CERT);
    let key_path = dir.join(DEV_KEY);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {}
        (false, false) => create_dev(dir)?,
        _ => anyhow::bail!(
            "{} holds only half of the development certificate; delete {} and {} to make a new one",
            dir.display(),
            DEV_CERT,
            DEV_KEY
        ),
    }
    let cert = std::fs::read(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
    let key = std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let fingerprint = fingerprint(&cert);
    Ok(ServerCert {
        chain: vec![CertificateDer::from(cert)],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        fingerprint,
    })
}

fn create_dev(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let certified = rcgen::generate_simple_self_signed(names).context("generating certificate")?;
    let cert = certified.cert.der().to_vec();
    let key = certified.signing_key.serialize_der();
    // Key first: a crash between the two leaves no certificate, and the
    // half-written state is reported rather than silently replaced.
    write_new(&dir.join(DEV_KEY), &key, true)?;
    write_new(&dir.join(DEV_CERT), &cert, false)?;
    write_new(&dir.join(DEV_FINGERPRINT), format!("{}\n", fingerprint(&cert)).as_bytes(), false)?;
    tracing::info!(dir = %dir.display(), "created a development certificate");
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// The QUIC server configuration: TLS 1.3, ALPN `quail/1`, stream limits.
pub fn server_config(cert: &ServerCert, limits: &Limits) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with ring")?
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .context("certificate and key do not match or are unsupported")?;
    tls.alpn_protocols = vec![quail_protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| anyhow!("QUIC TLS configuration: {e}"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.max_streams_per_connection.into())
        .max_concurrent_uni_streams(0u8.into())
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().context("idle timeout")?));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_cert_is_created_once() {
        let dir = tempfile::tempdir().expect("dir");
        let a = load_or_create_dev(dir.path()).expect("create");
        let b = load_or_create_dev(dir.path()).expect("load");
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 64);
        let pinned = std::fs::read_to_string(dir.path().join(DEV_FINGERPRINT)).expect("read");
        assert_eq!(pinned.trim(), a.fingerprint);
        server_config(&a, &Limits::default()).expect("usable by quinn");
        std::fs::remove_file(dir.path().join(DEV_CERT)).expect("rm");
        let err = load_or_create_dev(dir.path()).expect_err("half a certificate");
        assert!(err.to_string().contains("half"), "{err}");
    }
}
