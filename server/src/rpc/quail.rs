//! The bootstrap interface: `hello`, logins and the service credentials.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use quail_protocol::PROTOCOL_VERSION;
use quail_protocol::quail_capnp::{admin, gateway, quail, session};

use super::session::Auth;
use super::{FEATURES, Peer, Services, text, to_capnp};
use crate::account::{Attempt, Credential};
use crate::error::Error;

/// Longest secret or token accepted.
const MAX_SECRET_BYTES: usize = 1024;

/// The bootstrap capability of one RPC stream of the connection `peer`.
pub fn bootstrap(services: Arc<Services>, peer: Rc<Peer>) -> quail::Client {
    capnp_rpc::new_client(QuailImpl { services, peer })
}

struct QuailImpl {
    services: Arc<Services>,
    peer: Rc<Peer>,
}

impl QuailImpl {
    /// Checks a service credential (cheap), throttled like a login.
    fn service_secret(&self, which: Credential, secret: &str) -> Result<(), capnp::Error> {
        let logins = &self.services.logins;
        let attempt = logins.admit(self.peer.ip, Attempt::Service, Instant::now()).map_err(to_capnp)?;
        if self.services.credentials.check(which, secret).is_err() {
            attempt.failed();
            tracing::info!(ip = %self.peer.ip, credential = ?which, "failed service login");
            return Err(to_capnp(Error::BadCredentials));
        }
        attempt.succeeded();
        Ok(())
    }
}

impl quail::Server for QuailImpl {
    async fn hello(
        self: Rc<Self>,
        _: quail::HelloParams,
        mut results: quail::HelloResults,
    ) -> Result<(), capnp::Error> {
        let mut info = results.get().init_info();
        info.set_versions(&[PROTOCOL_VERSION][..])?;
        info.set_software(concat!("quaild ", env!("CARGO_PKG_VERSION")));
        super::convert::limits(info.reborrow().init_limits(), &self.services.config.limits);
        let mut features = info.init_features(FEATURES.len() as u32);
        for (i, f) in FEATURES.iter().enumerate() {
            features.set(i as u32, *f);
        }
        Ok(())
    }

    async fn login(
        self: Rc<Self>,
        params: quail::LoginParams,
        mut results: quail::LoginResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.peer.enter()?;
        let p = params.get()?;
        let name = text(p.get_name(), "name", MAX_SECRET_BYTES)?.to_owned();
        let secret = text(p.get_secret(), "secret", MAX_SECRET_BYTES)?.to_owned();
        let session = login_user(&self.services, &self.peer, self.peer.ip, &name, secret, false).await?;
        results.get().set_session(session);
        Ok(())
    }

    async fn login_token(
        self: Rc<Self>,
        params: quail::LoginTokenParams,
        mut results: quail::LoginTokenResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.peer.enter()?;
        let token = text(params.get()?.get_token(), "token", MAX_SECRET_BYTES)?;
        let ip = self.peer.ip;
        let logins = &self.services.logins;
        let attempt = logins.admit(ip, Attempt::User(None), Instant::now()).map_err(to_capnp)?;
        let account = match self.services.accounts.authenticate_token(token) {
            Ok(a) => {
                attempt.succeeded();
                a
            }
            Err(Error::BadCredentials) => {
                attempt.failed();
                tracing::info!(%ip, "failed token login");
                return Err(to_capnp(Error::BadCredentials));
            }
            Err(e) => return Err(to_capnp(e)),
        };
        let auth = Auth::Token(*blake3::hash(token.as_bytes()).as_bytes());
        let session: session::Client = capnp_rpc::new_client(super::session::SessionImpl::new(
            Arc::clone(&self.services),
            Rc::clone(&self.peer),
            account.id,
            auth,
        ));
        results.get().set_session(session);
        Ok(())
    }

    async fn gateway(
        self: Rc<Self>,
        params: quail::GatewayParams,
        mut results: quail::GatewayResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.peer.enter()?;
        let secret = text(params.get()?.get_secret(), "secret", MAX_SECRET_BYTES)?;
        self.service_secret(Credential::Gateway, secret)?;
        let g: gateway::Client = capnp_rpc::new_client(super::gateway::GatewayImpl::new(
            Arc::clone(&self.services),
            Rc::clone(&self.peer),
        ));
        results.get().set_gateway(g);
        Ok(())
    }

    async fn admin(
        self: Rc<Self>,
        params: quail::AdminParams,
        mut results: quail::AdminResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.peer.enter()?;
        let secret = text(params.get()?.get_secret(), "secret", MAX_SECRET_BYTES)?;
        self.service_secret(Credential::Admin, secret)?;
        let a: admin::Client = capnp_rpc::new_client(super::admin::AdminImpl::new(
            Arc::clone(&self.services),
            Rc::clone(&self.peer),
        ));
        results.get().set_admin(a);
        Ok(())
    }
}

/// A user login by password (or, with `tokens`, by an app token of the
/// account `name` too), throttled by `ip` and by name: the session.
pub(super) async fn login_user(
    services: &Arc<Services>,
    peer: &Rc<Peer>,
    ip: std::net::IpAddr,
    name: &str,
    secret: String,
    tokens: bool,
) -> Result<session::Client, capnp::Error> {
    let logins = &services.logins;
    let attempt = logins.admit(ip, Attempt::User(Some(name)), Instant::now()).map_err(to_capnp)?;
    if tokens
        && let Ok(account) = services.accounts.authenticate_token(&secret)
        && crate::account::normalize_name(name).is_ok_and(|n| n == account.name)
    {
        attempt.succeeded();
        let auth = Auth::Token(*blake3::hash(secret.as_bytes()).as_bytes());
        return Ok(capnp_rpc::new_client(super::session::SessionImpl::new(
            Arc::clone(services),
            Rc::clone(peer),
            account.id,
            auth,
        )));
    }
    // Hashing is the expensive part: only with a permit (a short,
    // bounded wait at most). Busy is not a failure: the attempt drops.
    let permit = logins.permit().await.map_err(to_capnp)?;
    let attempt = attempt.recheck(Instant::now()).map_err(to_capnp)?;
    let s = Arc::clone(services);
    let who = name.to_owned();
    let outcome = logins.hash(permit, move || s.accounts.authenticate(&who, &secret)).await;
    let account = match outcome {
        Ok(a) => {
            attempt.succeeded();
            a
        }
        Err(Error::BadCredentials) => {
            attempt.failed();
            tracing::info!(name = %name, %ip, "failed login");
            return Err(to_capnp(Error::BadCredentials));
        }
        Err(e) => return Err(to_capnp(e)),
    };
    tracing::debug!(account = account.id.0, "login");
    let auth = Auth::Password(account.password_hash.clone());
    Ok(capnp_rpc::new_client(super::session::SessionImpl::new(
        Arc::clone(services),
        Rc::clone(peer),
        account.id,
        auth,
    )))
}
