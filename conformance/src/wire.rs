//! A minimal wire client: a QUIC connection that accepts exactly the pinned
//! certificate, raw streams, and capnp-rpc over a tagged stream.

use std::net::SocketAddr;
use std::sync::Arc;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty::VatNetwork};
use futures::io::{BufReader, BufWriter};
use quail_protocol::quail_capnp::quail;
use quail_protocol::{ALPN, StreamKind};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::Target;

/// A connection to the target.
#[derive(Debug)]
pub struct Conn {
    /// The local endpoint (kept alive with the connection).
    pub endpoint: quinn::Endpoint,
    /// The QUIC connection.
    pub quic: quinn::Connection,
}

/// Connects with ALPN `quail/1`.
pub async fn connect(target: &Target) -> Result<Conn, String> {
    connect_with_alpn(target, vec![ALPN.to_vec()]).await
}

/// Connects offering exactly `alpn`.
pub async fn connect_with_alpn(target: &Target, alpn: Vec<Vec<u8>>) -> Result<Conn, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pin { fingerprint: target.fingerprint, provider }))
        .with_no_client_auth();
    tls.alpn_protocols = alpn;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let bind: SocketAddr =
        if target.addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().map_err(|e| format!("{e}"))?;
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| format!("bind: {e}"))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let quic = endpoint
        .connect(target.addr, "localhost")
        .map_err(|e| format!("connect: {e}"))?
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(Conn { endpoint, quic })
}

impl Conn {
    /// Opens an RPC stream and returns the server's bootstrap capability.
    /// The RPC system runs as a local task until the stream ends.
    pub async fn rpc(&self) -> Result<quail::Client, String> {
        let (mut send, recv) = self.quic.open_bi().await.map_err(|e| format!("open stream: {e}"))?;
        send.write_all(&[StreamKind::Rpc.tag()]).await.map_err(|e| format!("write tag: {e}"))?;
        let network = VatNetwork::new(
            BufReader::new(recv.compat()),
            BufWriter::new(send.compat_write()),
            Side::Client,
            capnp::message::ReaderOptions::new(),
        );
        let mut system = RpcSystem::new(Box::new(network), None);
        let bootstrap: quail::Client = system.bootstrap(Side::Server);
        tokio::task::spawn_local(async move {
            let _ = system.await;
        });
        Ok(bootstrap)
    }

    /// Opens a bidirectional stream and writes `bytes` on it (no tag added).
    pub async fn raw_stream(&self, bytes: &[u8]) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
        let (mut send, recv) = self.quic.open_bi().await.map_err(|e| format!("open stream: {e}"))?;
        send.write_all(bytes).await.map_err(|e| format!("write: {e}"))?;
        Ok((send, recv))
    }
}

#[derive(Debug)]
struct Pin {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pin {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = ring::digest::digest(&ring::digest::SHA256, end_entity);
        if got.as_ref() == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("certificate does not match QUAIL_FINGERPRINT".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
