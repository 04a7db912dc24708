//! `Admin`: account administration, for the holder of the admin credential.

use std::rc::Rc;
use std::sync::Arc;

use quail_protocol::quail_capnp::admin;

use super::{Services, blocking, convert, now_ms, text, to_capnp};
use crate::account::{self, Account};
use crate::error::Error;

/// Longest page of `listAccounts`.
const MAX_LIST: u32 = 1000;

pub(crate) struct AdminImpl {
    services: Arc<Services>,
    peer: std::rc::Rc<super::Peer>,
}

impl AdminImpl {
    pub(crate) fn new(services: Arc<Services>, peer: std::rc::Rc<super::Peer>) -> Self {
        AdminImpl { services, peer }
    }

    fn fill(
        &self,
        b: quail_protocol::quail_capnp::account_info::Builder<'_>,
        a: &Account,
    ) -> Result<(), capnp::Error> {
        let usage = self.services.accounts.usage(a.id).map_err(to_capnp)?;
        convert::account(b, a, usage, &self.services.config.domains);
        Ok(())
    }

    /// The account named by a `name` parameter, or a typed not-found.
    fn named(&self, name: capnp::Result<capnp::text::Reader<'_>>) -> Result<Account, capnp::Error> {
        let name = text(name, "name", MAX_NAME)?;
        self.services
            .accounts
            .by_name(name)
            .map_err(to_capnp)?
            .ok_or_else(|| to_capnp(Error::not_found(format!("no account {name}"))))
    }
}

const MAX_NAME: usize = account::MAX_NAME_BYTES * 4;

impl admin::Server for AdminImpl {
    async fn create_account(
        self: Rc<Self>,
        params: admin::CreateAccountParams,
        mut results: admin::CreateAccountResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.peer.enter()?;
        let p = params.get()?;
        let name = account::normalize_name(text(p.get_name(), "name", MAX_NAME)?).map_err(to_capnp)?;
        let password = text(p.get_password(), "password", account::MAX_PASSWORD_BYTES)?.to_owned();
        account::check_password(&password).map_err(to_capnp)?;
        if self.services.accounts.by_name(&name).map_err(to_capnp)?.is_some() {
            return Err(to_capnp(Error::AlreadyExists(format!("account {name} exists"))));
        }
        let hash = blocking(move || account::hash_password(&password)).await.map_err(to_capnp)?;
        let created = self
            .services
            .mail
            .create_account(&name, hash, p.get_quota_bytes(), p.get_quota_messages(), now_ms())
            .await
            .map_err(to_capnp)?;
        tracing::info!(account = created.id.0, name = %created.name, "account created");
        self.fill(results.get().init_account(), &created)
    }

    async fn set_password(
        self: Rc<Self>,
        params: admin::SetPasswordParams,
        _: admin::SetPasswordResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.peer.enter()?;
        let p = params.get()?;
        let name = text(p.get_name(), "name", MAX_NAME)?.to_owned();
        let password = text(p.get_password(), "password", account::MAX_PASSWORD_BYTES)?.to_owned();
        account::check_password(&password).map_err(to_capnp)?;
        let hash = blocking(move || account::hash_password(&password)).await.map_err(to_capnp)?;
        self.services
            .accounts
            .modify(&name, |a| a.password_hash.clone_from(&hash))
            .await
            .map_err(to_capnp)?;
        Ok(())
    }

    async fn set_quota(
        self: Rc<Self>,
        params: admin::SetQuotaParams,
        mut results: admin::SetQuotaResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.peer.enter()?;
        let p = params.get()?;
        let name = text(p.get_name(), "name", MAX_NAME)?;
        let (bytes, messages) = (p.get_quota_bytes(), p.get_quota_messages());
        let a = self
            .services
            .accounts
            .modify(name, |a| {
                a.quota_bytes = bytes;
                a.quota_messages = messages;
            })
            .await
            .map_err(to_capnp)?;
        self.fill(results.get().init_account(), &a)
    }

    async fn list_accounts(
        self: Rc<Self>,
        params: admin::ListAccountsParams,
        mut results: admin::ListAccountsResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.peer.enter()?;
        let p = params.get()?;
        let after = text(p.get_after(), "after", MAX_NAME)?;
        let limit = match p.get_limit() {
            0 => MAX_LIST,
            n => n.min(MAX_LIST),
        };
        let (accounts, more) = self.services.accounts.list(after, limit as usize).map_err(to_capnp)?;
        let mut r = results.get();
        r.set_more(more);
        let mut list = r.init_accounts(accounts.len() as u32);
        for (i, a) in accounts.iter().enumerate() {
            self.fill(list.reborrow().get(i as u32), a)?;
        }
        Ok(())
    }

    async fn get_account(
        self: Rc<Self>,
        params: admin::GetAccountParams,
        mut results: admin::GetAccountResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.peer.enter()?;
        let a = self.named(params.get()?.get_name())?;
        self.fill(results.get().init_account(), &a)
    }

    async fn revoke_tokens(
        self: Rc<Self>,
        params: admin::RevokeTokensParams,
        mut results: admin::RevokeTokensResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.peer.enter()?;
        let a = self.named(params.get()?.get_name())?;
        let n = self.services.accounts.revoke_tokens(a.id, None).await.map_err(to_capnp)?;
        results.get().set_revoked(n);
        Ok(())
    }
}
