//! Shared by the gateway's tests: a DNS server on loopback serving test
//! zones (SPF, DMARC and a DKIM key for example.test; an SPF that forbids
//! loopback for forbidden.test).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_server::proto::rr::rdata::{SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

/// A zone with its SOA and `records` (owner name, data).
pub fn zone_of(origin: &str, records: Vec<(&str, RData)>) -> InMemoryZoneHandler {
    let o = Name::from_ascii(origin).expect("name");
    let mut z = InMemoryZoneHandler::empty(o.clone(), ZoneType::Primary, AxfrPolicy::Deny);
    let n = |s: &str| Name::from_ascii(s).expect("name");
    z.upsert_mut(
        Record::from_rdata(
            o.clone(),
            60,
            RData::SOA(SOA::new(n("ns.test."), n("admin.test."), 1, 3600, 600, 86400, 60)),
        ),
        1,
    );
    for (name, data) in records {
        z.upsert_mut(Record::from_rdata(n(name), 60, data), 1);
    }
    z
}

/// A TXT record's data, in 255-byte strings as DNS needs.
pub fn txt(value: &str) -> RData {
    let parts = value.as_bytes().chunks(255).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    RData::TXT(TXT::new(parts))
}

fn zone(origin: &str, txts: &[(&str, &str)]) -> InMemoryZoneHandler {
    zone_of(origin, txts.iter().map(|(n, v)| (*n, txt(v))).collect())
}

/// Serves `zones` (and an empty `test.` above them) over UDP and TCP on
/// 127.0.0.1.
pub async fn serve(zones: Vec<InMemoryZoneHandler>) -> SocketAddr {
    let mut catalog = Catalog::new();
    catalog
        .upsert(LowerName::from(Name::from_ascii("test.").expect("n")), vec![Arc::new(zone("test.", &[]))]);
    for z in zones {
        let origin = hickory_server::zone_handler::ZoneHandler::origin(&z).clone();
        catalog.upsert(origin, vec![Arc::new(z)]);
    }
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let addr = udp.local_addr().expect("addr");
    let tcp = tokio::net::TcpListener::bind(addr).await.expect("tcp");
    let mut s = hickory_server::Server::new(catalog);
    s.register_socket(udp);
    s.register_listener(tcp, std::time::Duration::from_secs(5), 64 * 1024);
    tokio::spawn(async move {
        let _ = s.block_until_done().await;
    });
    addr
}

pub async fn dns(dkim_public: &str) -> SocketAddr {
    let dkim = format!("v=DKIM1; k=ed25519; p={dkim_public}");
    let good = zone(
        "example.test.",
        &[
            ("example.test.", "v=spf1 ip4:127.0.0.0/8 -all"),
            ("_dmarc.example.test.", "v=DMARC1; p=reject"),
            ("s1._domainkey.example.test.", &dkim),
        ],
    );
    let bad = zone("forbidden.test.", &[("forbidden.test.", "v=spf1 ip4:192.0.2.1 -all")]);
    // A DNS blocklist (RFC 5782) that lists 127.0.0.2 alone.
    let listed = zone_of(
        "bl.test.",
        vec![
            ("2.0.0.127.bl.test.", RData::A(hickory_server::proto::rr::rdata::A::new(127, 0, 0, 2))),
            ("2.0.0.127.bl.test.", txt("listed for the test")),
        ],
    );
    serve(vec![good, bad, listed]).await
}

/// A Quail server on `config`, an account `alice` (password
/// `alice-password`) logged in, and quail-smtpd in front of it as an MX
/// with STARTTLS and the loopback DNS for SPF/DKIM/DMARC.
pub struct World {
    pub dir: tempfile::TempDir,
    pub server: quail_server::Running,
    pub smtp: quail_smtp::server::Running,
    pub session: quail::Session,
}

/// Starts a [`World`] in `dir` with the gateway's per-address limits.
pub async fn mx_world(
    dir: tempfile::TempDir,
    config: quail_server::Config,
    max_connections_per_ip: u32,
    max_messages_per_minute_per_ip: u32,
) -> World {
    mx_world_dnsbl(dir, config, max_connections_per_ip, max_messages_per_minute_per_ip, Vec::new()).await
}

/// [`mx_world`] with the gateway looking clients up in the blocklists
/// `dnsbl` (the loopback DNS serves `bl.test`, which lists 127.0.0.2).
pub async fn mx_world_dnsbl(
    dir: tempfile::TempDir,
    config: quail_server::Config,
    max_connections_per_ip: u32,
    max_messages_per_minute_per_ip: u32,
    dnsbl: Vec<String>,
) -> World {
    mx_world_options(dir, config, dnsbl, |o| {
        o.max_connections_per_ip = max_connections_per_ip;
        o.max_messages_per_minute_per_ip = max_messages_per_minute_per_ip;
    })
    .await
}

/// [`mx_world_dnsbl`] with the gateway's options as `adjust` leaves them.
pub async fn mx_world_options(
    dir: tempfile::TempDir,
    config: quail_server::Config,
    dnsbl: Vec<String>,
    adjust: impl FnOnce(&mut quail_smtp::server::Options),
) -> World {
    use quail_server::account::Credential;
    use quail_smtp::server::{self, Options, Upstream};
    let tls_dir = config.tls_dir();
    let server = quail_server::Server::start(config).await.expect("start");
    let pin: quail::Fingerprint = server.fingerprint().parse().expect("pin");
    let client =
        quail::Client::connect(&server.addr().to_string(), quail::Trust::Pinned(pin)).await.expect("connect");
    let admin = client.admin(&server.secret(Credential::Admin).expect("secret")).await.expect("admin");
    admin.create_account("alice", "alice-password", 0, 0).await.expect("create");
    let cert = quail_server::net::tls::load_or_create_dev(&tls_dir).expect("dev cert");
    let mut options = Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        hostname: "mx.test".into(),
        tls: Some(server::tls_config(cert.chain, cert.key).expect("tls")),
        max_connections_per_ip: 20,
        max_messages_per_minute_per_ip: 600,
        verifier: Some(
            quail_smtp::auth::Verifier::new("mx.test", Some(dns("").await))
                .expect("verifier")
                .with_dnsbl(dnsbl),
        ),
        mode: quail_smtp::session::Mode::Mx,
        implicit_tls: false,
        max_connections: quail_smtp::server::MAX_CONNECTIONS,
        write_timeout: quail_smtp::server::WRITE_TIMEOUT,
    };
    adjust(&mut options);
    let upstream = Upstream {
        addr: server.addr().to_string(),
        trust: quail::Trust::Pinned(pin),
        secret: server.secret(Credential::Gateway).expect("secret"),
    };
    let smtp = server::start(options, upstream).await.expect("smtpd");
    let session = client.login("alice", "alice-password").await.expect("login");
    World { dir, server, smtp, session }
}
