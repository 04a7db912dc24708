//! [`Admin`] and [`Gateway`]: the capabilities of the server's operator and
//! of the SMTP gateway.

use crate::client::Client;
use crate::error::{Error, Result};
use crate::types::{
    AccountInfo, DeliveryResult, EmailId, Envelope, OutboundItem, OutcomeKind, RecipientOutcome,
};
use crate::wire;

/// Account administration. Dropping it releases the capability.
#[derive(Debug)]
pub struct Admin {
    client: Client,
    cap: u64,
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.client.release(self.cap);
    }
}

impl Admin {
    pub(crate) fn new(client: Client, cap: u64) -> Self {
        Admin { client, cap }
    }

    /// Creates an account (quotas 0 = unlimited).
    pub async fn create_account(
        &self,
        name: &str,
        password: &str,
        quota_bytes: u64,
        quota_messages: u64,
    ) -> Result<AccountInfo> {
        let cap = self.cap;
        let (name, password) = (name.to_owned(), password.to_owned());
        self.client
            .call(move |conn| async move {
                let admin = conn.admin(cap)?;
                let mut req = admin.create_account_request();
                let mut p = req.get();
                p.set_name(name.as_str());
                p.set_password(password.as_str());
                p.set_quota_bytes(quota_bytes);
                p.set_quota_messages(quota_messages);
                let resp = req.send().promise.await?;
                wire::account(resp.get()?.get_account()?)
            })
            .await
    }

    /// Sets an account's password.
    pub async fn set_password(&self, name: &str, password: &str) -> Result<()> {
        let cap = self.cap;
        let (name, password) = (name.to_owned(), password.to_owned());
        self.client
            .call(move |conn| async move {
                let admin = conn.admin(cap)?;
                let mut req = admin.set_password_request();
                req.get().set_name(name.as_str());
                req.get().set_password(password.as_str());
                req.send().promise.await?;
                Ok(())
            })
            .await
    }

    /// Revokes every app token of an account; returns how many. Sessions
    /// opened with them fail their next call with `BadCredentials`.
    pub async fn revoke_tokens(&self, name: &str) -> Result<u32> {
        let cap = self.cap;
        let name = name.to_owned();
        self.client
            .call(move |conn| async move {
                let admin = conn.admin(cap)?;
                let mut req = admin.revoke_tokens_request();
                req.get().set_name(name.as_str());
                let resp = req.send().promise.await?;
                Ok(resp.get()?.get_revoked())
            })
            .await
    }

    /// Sets an account's quotas (0 = unlimited).
    pub async fn set_quota(&self, name: &str, quota_bytes: u64, quota_messages: u64) -> Result<AccountInfo> {
        let cap = self.cap;
        let name = name.to_owned();
        self.client
            .call(move |conn| async move {
                let admin = conn.admin(cap)?;
                let mut req = admin.set_quota_request();
                req.get().set_name(name.as_str());
                req.get().set_quota_bytes(quota_bytes);
                req.get().set_quota_messages(quota_messages);
                let resp = req.send().promise.await?;
                wire::account(resp.get()?.get_account()?)
            })
            .await
    }

    /// Accounts in name order after `after` ("" = from the start); and
    /// whether more follow.
    pub async fn list_accounts(&self, after: &str, limit: u32) -> Result<(Vec<AccountInfo>, bool)> {
        let cap = self.cap;
        let after = after.to_owned();
        self.client
            .call(move |conn| async move {
                let admin = conn.admin(cap)?;
                let mut req = admin.list_accounts_request();
                req.get().set_after(after.as_str());
                req.get().set_limit(limit);
                let resp = req.send().promise.await?;
                let r = resp.get()?;
                let list = r.get_accounts()?.iter().map(wire::account).collect::<Result<_>>()?;
                Ok((list, r.get_more()))
            })
            .await
    }

    /// One account by name.
    pub async fn account(&self, name: &str) -> Result<AccountInfo> {
        let cap = self.cap;
        let name = name.to_owned();
        self.client
            .call(move |conn| async move {
                let admin = conn.admin(cap)?;
                let mut req = admin.get_account_request();
                req.get().set_name(name.as_str());
                let resp = req.send().promise.await?;
                wire::account(resp.get()?.get_account()?)
            })
            .await
    }
}

/// The SMTP gateway's capability. Dropping it releases the capability.
#[derive(Debug)]
pub struct Gateway {
    client: Client,
    cap: u64,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.client.release(self.cap);
    }
}

impl Gateway {
    pub(crate) fn new(client: Client, cap: u64) -> Self {
        Gateway { client, cap }
    }

    /// Delivers one raw message to the envelope's recipients; returns once
    /// every accepted copy is durable, with one outcome per recipient.
    pub async fn deliver(&self, envelope: &Envelope, raw: &[u8]) -> Result<Vec<DeliveryResult>> {
        self.deliver_once(envelope, raw, None).await
    }

    /// Leases up to `max` messages due for outbound delivery, each for
    /// `lease_seconds`: nobody else gets them until then. Large messages
    /// are fetched on bulk streams (verified by their BLAKE3).
    pub async fn lease_outbound(&self, max: u32, lease_seconds: u32) -> Result<Vec<OutboundItem>> {
        let cap = self.cap;
        self.client
            .call(move |conn| async move {
                let mut req = conn.gateway(cap)?.lease_outbound_request();
                req.get().set_max(max);
                req.get().set_lease_seconds(lease_seconds);
                let resp = req.send().promise.await?;
                let mut items = Vec::new();
                let mut bulk = Vec::new();
                for it in resp.get()?.get_items()?.iter() {
                    use quail_protocol::quail_capnp::byte_run::Which;
                    let run = it.get_raw()?;
                    let raw = match run.which()? {
                        Which::Inline(d) => d?.to_vec(),
                        Which::BulkToken(t) => {
                            let hash = <[u8; 32]>::try_from(run.get_blake3()?).ok();
                            bulk.push((items.len(), t?.to_vec(), run.get_total_size(), hash));
                            Vec::new()
                        }
                    };
                    items.push(OutboundItem {
                        id: it.get_id(),
                        mail_from: it.get_mail_from()?.to_str()?.to_owned(),
                        recipients: it
                            .get_recipients()?
                            .iter()
                            .map(|r| Ok(r?.to_str()?.to_owned()))
                            .collect::<Result<Vec<_>>>()?,
                        raw,
                        attempt: it.get_attempt(),
                    });
                }
                drop(resp);
                for (i, token, len, hash) in bulk {
                    items[i].raw = conn.download(&token, len, hash).await?;
                }
                Ok(items)
            })
            .await
    }

    /// Reports what attempt `attempt` of submission `id` achieved.
    pub async fn complete_outbound(
        &self,
        id: u64,
        attempt: u32,
        outcomes: &[RecipientOutcome],
    ) -> Result<()> {
        let (cap, outcomes) = (self.cap, outcomes.to_vec());
        self.client
            .call(move |conn| async move {
                use quail_protocol::quail_capnp::OutcomeKind as W;
                let mut req = conn.gateway(cap)?.complete_outbound_request();
                req.get().set_id(id);
                req.get().set_attempt(attempt);
                let mut l = req.get().init_outcomes(outcomes.len() as u32);
                for (i, o) in outcomes.iter().enumerate() {
                    let mut b = l.reborrow().get(i as u32);
                    b.set_recipient(o.recipient.as_str());
                    b.set_reply(o.reply.as_str());
                    b.set_kind(match o.kind {
                        OutcomeKind::Delivered => W::Delivered,
                        OutcomeKind::TempFail => W::TempFail,
                        OutcomeKind::PermFail => W::PermFail,
                    });
                }
                req.send().promise.await?;
                Ok(())
            })
            .await
    }

    /// A user's session for SMTP AUTH on the submission ports: `secret` is
    /// the password or an app token of account `name`, and `remote_ip` the
    /// SMTP client's address (failures are throttled by it and by name).
    pub async fn login(
        &self,
        name: &str,
        secret: &str,
        remote_ip: std::net::IpAddr,
    ) -> Result<crate::Session> {
        let (cap, name, secret) = (self.cap, name.to_owned(), secret.to_owned());
        let id = self
            .client
            .call(move |conn| async move {
                let mut req = conn.gateway(cap)?.login_request();
                req.get().set_name(name.as_str());
                req.get().set_secret(secret.as_str());
                req.get().set_remote_ip(remote_ip.to_string().as_str());
                let resp = req.send().promise.await?;
                Ok(conn.insert(crate::client::Cap::Session(resp.get()?.get_session()?)))
            })
            .await?;
        Ok(crate::Session::new(self.client.clone(), id))
    }

    /// Whether mail to `address` would be accepted now: `Ok` to accept,
    /// `NotFound` for no such user, `OverQuota` for a full mailbox (an SMTP
    /// session answers RCPT TO with it, so nothing bounces later).
    pub async fn check_recipient(&self, address: &str) -> Result<()> {
        let (cap, address) = (self.cap, address.to_owned());
        self.client
            .call(move |conn| async move {
                let mut req = conn.gateway(cap)?.check_recipient_request();
                req.get().set_address(address.as_str());
                let resp = req.send().promise.await?;
                let r = resp.get()?;
                if r.has_error() {
                    let e = r.get_error()?;
                    return Err(Error::from_code(e.get_code()?, e.get_message()?.to_str()?.to_owned()));
                }
                Ok(())
            })
            .await
    }

    /// [`Gateway::deliver`] at most once per idempotency `key` (the
    /// gateway's spool id, 1 to 128 bytes): a retry after a lost answer
    /// stores nothing again and gets the first answer.
    pub async fn deliver_once(
        &self,
        envelope: &Envelope,
        raw: &[u8],
        key: Option<&[u8]>,
    ) -> Result<Vec<DeliveryResult>> {
        let key = key.map(<[u8]>::to_vec);
        let limit = self.client.server_info().limits.max_message_bytes;
        if limit > 0 && raw.len() as u64 > limit {
            return Err(Error::LimitExceeded(format!(
                "message of {} bytes; the server accepts at most {limit}",
                raw.len()
            )));
        }
        let cap = self.cap;
        let envelope = envelope.clone();
        let raw = raw.to_vec();
        // Larger than one inline run: the bytes go on a bulk stream first.
        let bulk = raw.len() as u64 > self.client.server_info().limits.max_inline_bytes;
        self.client
            .call(move |conn| async move {
                let gateway = conn.gateway(cap)?;
                let token = if bulk {
                    let mut up = gateway.upload_request();
                    up.get().set_size(raw.len() as u64);
                    let resp = up.send().promise.await?;
                    let token = resp.get()?.get_token()?.to_vec();
                    conn.upload_from(&token, 0, &raw, &Default::default()).await?;
                    Some(token)
                } else {
                    None
                };
                let mut req = gateway.deliver_request();
                wire::write_envelope(req.get().init_envelope(), &envelope);
                match &token {
                    Some(t) => req.get().set_upload_token(&t[..]),
                    None => req.get().set_raw(&raw[..]),
                }
                if let Some(k) = &key {
                    req.get().set_idempotency_key(&k[..]);
                }
                let resp = req.send().promise.await?;
                use quail_protocol::quail_capnp::delivery_result::Which;
                resp.get()?
                    .get_results()?
                    .iter()
                    .map(|r| {
                        let recipient = r.get_recipient()?.to_str()?.to_owned();
                        let outcome = match r.which()? {
                            Which::Delivered(id) => Ok(EmailId(id)),
                            Which::Error(e) => {
                                let e = e?;
                                Err(Error::from_code(e.get_code()?, e.get_message()?.to_str()?.to_owned()))
                            }
                        };
                        Ok(DeliveryResult { recipient, outcome })
                    })
                    .collect()
            })
            .await
    }
}
