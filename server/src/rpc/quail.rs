//! The bootstrap interface: `hello`, logins and the service credentials.

use std::rc::Rc;
use std::sync::Arc;

use quail_protocol::PROTOCOL_VERSION;
use quail_protocol::quail_capnp::{admin, gateway, quail, session};

use super::{FEATURES, Services, blocking, text, to_capnp};
use crate::account::Credential;
use crate::error::Error;

/// Longest secret or token accepted.
const MAX_SECRET_BYTES: usize = 1024;

/// The bootstrap capability of one RPC stream.
pub fn bootstrap(services: Arc<Services>) -> quail::Client {
    capnp_rpc::new_client(QuailImpl { services })
}

struct QuailImpl {
    services: Arc<Services>,
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
        let p = params.get()?;
        let name = text(p.get_name(), "name", MAX_SECRET_BYTES)?.to_owned();
        let secret = text(p.get_secret(), "secret", MAX_SECRET_BYTES)?.to_owned();
        let services = Arc::clone(&self.services);
        let account =
            blocking(move || services.accounts.authenticate(&name, &secret)).await.map_err(to_capnp)?;
        tracing::debug!(account = account.id.0, "login");
        let session: session::Client =
            capnp_rpc::new_client(super::session::SessionImpl::new(Arc::clone(&self.services), account.id));
        results.get().set_session(session);
        Ok(())
    }

    async fn login_token(
        self: Rc<Self>,
        params: quail::LoginTokenParams,
        mut results: quail::LoginTokenResults,
    ) -> Result<(), capnp::Error> {
        let token = text(params.get()?.get_token(), "token", MAX_SECRET_BYTES)?;
        let account = self.services.accounts.authenticate_token(token).map_err(to_capnp)?;
        let session: session::Client =
            capnp_rpc::new_client(super::session::SessionImpl::new(Arc::clone(&self.services), account.id));
        results.get().set_session(session);
        Ok(())
    }

    async fn gateway(
        self: Rc<Self>,
        params: quail::GatewayParams,
        mut results: quail::GatewayResults,
    ) -> Result<(), capnp::Error> {
        let secret = text(params.get()?.get_secret(), "secret", MAX_SECRET_BYTES)?;
        self.services.credentials.check(Credential::Gateway, secret).map_err(to_capnp)?;
        let g: gateway::Client =
            capnp_rpc::new_client(super::gateway::GatewayImpl::new(Arc::clone(&self.services)));
        results.get().set_gateway(g);
        Ok(())
    }

    async fn admin(
        self: Rc<Self>,
        params: quail::AdminParams,
        mut results: quail::AdminResults,
    ) -> Result<(), capnp::Error> {
        let secret = text(params.get()?.get_secret(), "secret", MAX_SECRET_BYTES)?;
        self.services
            .credentials
            .check(Credential::Admin, secret)
            .map_err(|_| to_capnp(Error::BadCredentials))?;
        let a: admin::Client =
            capnp_rpc::new_client(super::admin::AdminImpl::new(Arc::clone(&self.services)));
        results.get().set_admin(a);
        Ok(())
    }
}
