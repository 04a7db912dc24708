//! `Gateway`: the SMTP bridge delivers inbound mail here.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use quail_protocol::quail_capnp::gateway;
use quail_protocol::{ErrorCode, error_code_name};

use super::{Services, code_of, now_ms, text, to_capnp};
use crate::account::AccountId;
use crate::blob::upload::{Owner, Token};
use crate::error::Error;

/// Longest envelope address accepted (RFC 5321 path limit).
const MAX_PATH_BYTES: usize = 256;

pub(crate) struct GatewayImpl {
    services: Arc<Services>,
    peer: std::rc::Rc<super::Peer>,
}

impl GatewayImpl {
    pub(crate) fn new(services: Arc<Services>, peer: std::rc::Rc<super::Peer>) -> Self {
        peer.hold(crate::blob::upload::Owner::GATEWAY);
        GatewayImpl { services, peer }
    }
}

impl gateway::Server for GatewayImpl {
    async fn deliver(
        self: Rc<Self>,
        params: gateway::DeliverParams,
        mut results: gateway::DeliverResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.peer.enter()?;
        let s = &self.services;
        let limits = &s.config.limits;
        let p = params.get()?;
        let raw: Vec<u8> = if p.has_upload_token() && !p.get_upload_token()?.is_empty() {
            if !p.get_raw()?.is_empty() {
                return Err(to_capnp(Error::invalid("give raw or uploadToken, not both")));
            }
            let token: Token = p
                .get_upload_token()?
                .try_into()
                .map_err(|_| to_capnp(Error::not_found("unknown, used or expired upload token")))?;
            s.uploads.take(&token, Owner::GATEWAY, Instant::now()).map_err(to_capnp)?
        } else {
            let raw = p.get_raw()?;
            if raw.len() as u64 > limits.max_message_bytes {
                return Err(to_capnp(Error::LimitExceeded(format!(
                    "message of {} bytes; the limit is {}",
                    raw.len(),
                    limits.max_message_bytes
                ))));
            }
            raw.to_vec()
        };
        if raw.len() as u64 > limits.max_message_bytes {
            return Err(to_capnp(Error::LimitExceeded(format!(
                "message of {} bytes; the limit is {}",
                raw.len(),
                limits.max_message_bytes
            ))));
        }
        let envelope = p.get_envelope()?;
        let rcpts = envelope.get_rcpt_to()?;
        if rcpts.len() > limits.max_recipients {
            return Err(to_capnp(Error::LimitExceeded(format!(
                "{} recipients; the limit is {}",
                rcpts.len(),
                limits.max_recipients
            ))));
        }
        if rcpts.is_empty() {
            return Err(to_capnp(Error::invalid("no recipients")));
        }

        // Resolve every recipient; several addresses may reach one account,
        // which then gets one copy.
        let mut recipients: Vec<(String, Result<AccountId, Error>)> = Vec::new();
        let mut targets: Vec<AccountId> = Vec::new();
        for r in rcpts.iter() {
            let addr = text(r, "recipient", MAX_PATH_BYTES)?.to_owned();
            let resolved = match s.accounts.resolve_recipient(&addr, &s.config.domains) {
                Ok(Some(a)) => {
                    if !targets.contains(&a.id) {
                        targets.push(a.id);
                    }
                    Ok(a.id)
                }
                Ok(None) => Err(Error::not_found(format!("no mailbox for {addr}"))),
                Err(e) => return Err(to_capnp(e)),
            };
            recipients.push((addr, resolved));
        }
        let outcomes = if targets.is_empty() {
            Vec::new()
        } else {
            let key = if p.has_idempotency_key() { Some(p.get_idempotency_key()?.to_vec()) } else { None };
            let key = key.filter(|k| !k.is_empty());
            s.mail.deliver_once(&targets, raw, now_ms(), key.as_deref()).await.map_err(to_capnp)?
        };
        let by_account: HashMap<AccountId, &Result<_, Error>> =
            targets.iter().copied().zip(outcomes.iter()).collect();

        let mut list = results.get().init_results(recipients.len() as u32);
        for (i, (addr, resolved)) in recipients.iter().enumerate() {
            let mut b = list.reborrow().get(i as u32);
            b.set_recipient(addr.as_str());
            let outcome = match resolved {
                Ok(account) => match by_account.get(account) {
                    Some(Ok(id)) => Ok(id.0),
                    Some(Err(e)) => Err((code_of(e), e.to_string())),
                    // Every resolved account was delivered to; this cannot happen.
                    None => Err((ErrorCode::Internal, "not delivered".into())),
                },
                Err(e) => Err((code_of(e), e.to_string())),
            };
            match outcome {
                Ok(id) => b.set_delivered(id),
                Err((code, message)) => {
                    tracing::debug!(recipient = %addr, code = error_code_name(code), %message, "not delivered");
                    let mut e = b.init_error();
                    e.set_code(code);
                    e.set_message(message.as_str());
                }
            }
        }
        Ok(())
    }

    async fn upload(
        self: Rc<Self>,
        params: gateway::UploadParams,
        mut results: gateway::UploadResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.peer.enter()?;
        let size = params.get()?.get_size();
        let max = self.services.config.limits.max_message_bytes;
        if size == 0 || size > max {
            return Err(to_capnp(Error::LimitExceeded(format!(
                "an upload of {size} bytes; messages are 1 to {max} bytes"
            ))));
        }
        let token = self.services.uploads.reserve(Owner::GATEWAY, size, Instant::now()).map_err(to_capnp)?;
        results.get().set_token(&token[..]);
        Ok(())
    }

    async fn check_recipient(
        self: Rc<Self>,
        params: gateway::CheckRecipientParams,
        mut results: gateway::CheckRecipientResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.peer.enter()?;
        let s = &self.services;
        let addr = text(params.get()?.get_address(), "address", MAX_PATH_BYTES)?;
        let refusal = match s.accounts.resolve_recipient(addr, &s.config.domains).map_err(to_capnp)? {
            None => Some(Error::not_found(format!("no mailbox for {addr}"))),
            Some(a) => {
                let usage = s.accounts.usage(a.id).map_err(to_capnp)?;
                let full_bytes = a.quota_bytes > 0 && usage.bytes >= a.quota_bytes;
                let full_count = a.quota_messages > 0 && usage.messages >= a.quota_messages;
                (full_bytes || full_count).then(|| Error::OverQuota(format!("the mailbox of {addr} is full")))
            }
        };
        if let Some(e) = refusal {
            let mut b = results.get().init_error();
            b.set_code(code_of(&e));
            b.set_message(e.to_string().as_str());
        }
        Ok(())
    }

    async fn lease_outbound(
        self: Rc<Self>,
        params: gateway::LeaseOutboundParams,
        mut results: gateway::LeaseOutboundResults,
    ) -> Result<(), capnp::Error> {
        use crate::mail::outbox::LEASE_SECONDS;
        let _call = self.peer.enter()?;
        let p = params.get()?;
        let max = p.get_max().clamp(1, MAX_LEASED) as usize;
        let secs = p.get_lease_seconds();
        if !LEASE_SECONDS.contains(&secs) {
            return Err(to_capnp(Error::invalid(format!(
                "leaseSeconds is {} to {}",
                LEASE_SECONDS.start(),
                LEASE_SECONDS.end()
            ))));
        }
        let s = &self.services;
        // The answer must fit in one RPC message: half its limit in
        // messages, inline or bulk (so the bulk ones are few too).
        let budget = s.config.limits.max_rpc_message_bytes / 2;
        let leased = s
            .mail
            .lease_outbound_within(now_ms(), max, i64::from(secs) * 1000, budget)
            .await
            .map_err(to_capnp)?;
        let inline = s.config.limits.max_inline_bytes;
        let blobs: Vec<_> = leased.iter().map(|l| l.blob).collect();
        // Small messages travel inline; a large one is hashed as it streams
        // and goes as a bulk token: off the connection's worker either way.
        let runs = super::heavy(s, move |s| {
            blobs
                .into_iter()
                .map(|b| {
                    let (source, total) = s.mail.blob_source(b)?;
                    super::session::prepare_run(source, total, 0, Some(b.0), inline)
                })
                .collect::<crate::Result<Vec<_>>>()
        })
        .await
        .map_err(to_capnp)?;
        let mut list = results.get().init_items(leased.len() as u32);
        for (i, (l, run)) in leased.iter().zip(runs).enumerate() {
            let mut b = list.reborrow().get(i as u32);
            b.set_id(l.id);
            b.set_mail_from(l.mail_from.as_str());
            b.set_attempt(l.attempt);
            let mut r = b.reborrow().init_recipients(l.recipients.len() as u32);
            for (j, a) in l.recipients.iter().enumerate() {
                r.set(j as u32, a.as_str());
            }
            let mut raw = b.init_raw();
            match run {
                super::session::Run::Inline { total, offset, bytes } => {
                    raw.set_total_size(total);
                    raw.set_offset(offset);
                    raw.set_inline(&bytes);
                }
                super::session::Run::Bulk { total, offset, source, hash } => {
                    raw.set_total_size(total);
                    raw.set_offset(offset);
                    raw.set_blake3(&hash);
                    let token =
                        s.downloads.offer(Owner::GATEWAY, source, Instant::now()).map_err(to_capnp)?;
                    raw.set_bulk_token(&token[..]);
                }
            }
        }
        Ok(())
    }

    async fn complete_outbound(
        self: Rc<Self>,
        params: gateway::CompleteOutboundParams,
        _: gateway::CompleteOutboundResults,
    ) -> Result<(), capnp::Error> {
        use crate::mail::outbox::Outcome;
        use quail_protocol::quail_capnp::OutcomeKind;
        let _call = self.peer.enter()?;
        let p = params.get()?;
        let list = p.get_outcomes()?;
        if list.len() > self.services.config.limits.max_recipients {
            return Err(to_capnp(Error::LimitExceeded("more outcomes than recipients".into())));
        }
        let mut outcomes = Vec::with_capacity(list.len() as usize);
        for o in list.iter() {
            let recipient = text(o.get_recipient(), "recipient", MAX_PATH_BYTES)?.to_owned();
            // A remote server writes what it likes: a long reply is kept
            // cut, never a reason to refuse the whole report (the lease
            // would run out and every recipient be sent to again).
            let reply =
                clip(text(o.get_reply(), "reply", MAX_REPORTED_REPLY_BYTES)?, MAX_REPLY_BYTES).to_owned();
            let kind = match o.get_kind()? {
                OutcomeKind::Delivered => Outcome::Delivered,
                OutcomeKind::TempFail => Outcome::TempFail,
                OutcomeKind::PermFail => Outcome::PermFail,
            };
            outcomes.push((recipient, kind, reply));
        }
        self.services
            .mail
            .complete_outbound(p.get_id(), p.get_attempt(), &outcomes, now_ms())
            .await
            .map_err(to_capnp)
    }

    async fn login(
        self: Rc<Self>,
        params: gateway::LoginParams,
        mut results: gateway::LoginResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.peer.enter()?;
        let p = params.get()?;
        let name = text(p.get_name(), "name", MAX_SECRET_BYTES)?.to_owned();
        let secret = text(p.get_secret(), "secret", MAX_SECRET_BYTES)?.to_owned();
        let ip: std::net::IpAddr = text(p.get_remote_ip(), "remoteIp", 64)?
            .parse()
            .map_err(|_| to_capnp(Error::invalid("remoteIp is not an IP address")))?;
        let session = super::quail::login_user(&self.services, &self.peer, ip, &name, secret, true).await?;
        results.get().set_session(session);
        Ok(())
    }
}

/// Most submissions one lease hands out.
const MAX_LEASED: u32 = 100;
/// Longest SMTP reply recorded.
const MAX_REPLY_BYTES: usize = 1024;
/// Longest SMTP reply taken in a report (then cut to [`MAX_REPLY_BYTES`]).
const MAX_REPORTED_REPLY_BYTES: usize = 64 << 10;

/// The longest beginning of `s` of at most `max` bytes that ends on a
/// character.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
/// Longest name or secret.
const MAX_SECRET_BYTES: usize = 1024;
