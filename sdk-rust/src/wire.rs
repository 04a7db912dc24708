//! Schema readers → SDK types.

use quail_protocol::quail_capnp::{
    Role as WireRole, account_info, address, changes, email, mailbox, part, server_info, update_result,
};

use crate::error::Result;
use crate::types::{
    AccountInfo, Address, Changes, Email, EmailId, FilterVerdict, Limits, Mailbox, MailboxId, Part, Role,
    ServerInfo, State, UpdateResult, Verdict,
};

fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> Result<String> {
    Ok(t?.to_str()?.to_owned())
}

fn texts(l: capnp::Result<capnp::text_list::Reader<'_>>) -> Result<Vec<String>> {
    l?.iter().map(text).collect()
}

pub(crate) fn server_info(r: server_info::Reader<'_>) -> Result<ServerInfo> {
    let l = r.get_limits()?;
    Ok(ServerInfo {
        versions: r.get_versions()?.iter().collect(),
        software: text(r.get_software())?,
        limits: Limits {
            max_rpc_message_bytes: l.get_max_rpc_message_bytes(),
            max_message_bytes: l.get_max_message_bytes(),
            max_inline_bytes: l.get_max_inline_bytes(),
            max_ids_per_call: l.get_max_ids_per_call(),
            max_query_limit: l.get_max_query_limit(),
            max_changes: l.get_max_changes(),
            max_recipients: l.get_max_recipients(),
            max_name_bytes: l.get_max_name_bytes(),
            max_search_query_bytes: l.get_max_search_query_bytes(),
            max_watches: l.get_max_watches(),
        },
        features: texts(r.get_features())?,
    })
}

pub(crate) fn account(r: account_info::Reader<'_>) -> Result<AccountInfo> {
    Ok(AccountInfo {
        id: r.get_id(),
        name: text(r.get_name())?,
        created_at: r.get_created_at(),
        quota_bytes: r.get_quota_bytes(),
        quota_messages: r.get_quota_messages(),
        used_bytes: r.get_used_bytes(),
        used_messages: r.get_used_messages(),
        address: text(r.get_address())?,
    })
}

pub(crate) fn mailbox(r: mailbox::Reader<'_>) -> Result<Mailbox> {
    Ok(Mailbox {
        id: MailboxId(r.get_id()),
        name: text(r.get_name())?,
        parent: match r.get_parent_id() {
            0 => None,
            p => Some(MailboxId(p)),
        },
        role: match r.get_role()? {
            WireRole::None => Role::None,
            WireRole::Inbox => Role::Inbox,
            WireRole::Sent => Role::Sent,
            WireRole::Drafts => Role::Drafts,
            WireRole::Junk => Role::Junk,
            WireRole::Trash => Role::Trash,
            WireRole::Archive => Role::Archive,
        },
        total: r.get_total(),
        unread: r.get_unread(),
    })
}

fn addresses(l: capnp::Result<capnp::struct_list::Reader<'_, address::Owned>>) -> Result<Vec<Address>> {
    l?.iter().map(|a| Ok(Address { name: text(a.get_name())?, email: text(a.get_email())? })).collect()
}

pub(crate) fn email(r: email::Reader<'_>) -> Result<Email> {
    Ok(Email {
        id: r.get_id(),
        thread_id: r.get_thread_id(),
        mailbox_ids: r.get_mailbox_ids()?.iter().collect(),
        keywords: texts(r.get_keywords())?,
        received_at: r.get_received_at(),
        size: r.get_size(),
        subject: text(r.get_subject())?,
        from: addresses(r.get_from())?,
        to: addresses(r.get_to())?,
        cc: addresses(r.get_cc())?,
        bcc: addresses(r.get_bcc())?,
        reply_to: addresses(r.get_reply_to())?,
        sender: addresses(r.get_sender())?,
        sent_at: r.get_sent_at(),
        message_id: text(r.get_message_id())?,
        in_reply_to: texts(r.get_in_reply_to())?,
        references: texts(r.get_references())?,
        preview: text(r.get_preview())?,
        has_attachment: r.get_has_attachment(),
        body: if r.has_body_structure() { Some(body_part(r.get_body_structure()?)?) } else { None },
        filter: filter_verdict(r)?,
    })
}

fn verdict(v: std::result::Result<quail_protocol::quail_capnp::Verdict, capnp::NotInSchema>) -> Verdict {
    use quail_protocol::quail_capnp::Verdict as W;
    match v {
        Ok(W::Clean) => Verdict::Clean,
        Ok(W::Spam) => Verdict::Spam,
        Ok(W::Virus) => Verdict::Virus,
        _ => Verdict::Unknown,
    }
}

/// The verdicts, when the server sent any.
fn filter_verdict(r: email::Reader<'_>) -> Result<Option<FilterVerdict>> {
    let f = FilterVerdict {
        spam: verdict(r.get_spam_verdict()),
        score: r.get_spam_score(),
        reasons: texts(r.get_spam_reasons())?,
        virus: verdict(r.get_virus_verdict()),
    };
    Ok((f != FilterVerdict::default()).then_some(f))
}

pub(crate) fn body_part(r: part::Reader<'_>) -> Result<Part> {
    Ok(Part {
        part_id: text(r.get_part_id())?,
        mime_type: text(r.get_mime_type())?,
        charset: text(r.get_charset())?,
        disposition: text(r.get_disposition())?,
        file_name: text(r.get_file_name())?,
        content_id: text(r.get_content_id())?,
        size: r.get_size(),
        sub_parts: r.get_sub_parts()?.iter().map(body_part).collect::<Result<_>>()?,
    })
}

pub(crate) fn changes_of(r: changes::Reader<'_>) -> Result<Changes> {
    Ok(Changes {
        old_state: State(r.get_old_state()),
        new_state: State(r.get_new_state()),
        has_more: r.get_has_more(),
        created: r.get_created()?.iter().collect(),
        updated: r.get_updated()?.iter().collect(),
        destroyed: r.get_destroyed()?.iter().collect(),
    })
}

pub(crate) fn update_of(r: update_result::Reader<'_>) -> Result<UpdateResult> {
    Ok(UpdateResult {
        old_state: State(r.get_old_state()),
        new_state: State(r.get_new_state()),
        updated: r.get_updated()?.iter().map(EmailId).collect(),
        not_updated: r
            .get_not_updated()?
            .iter()
            .map(|item| {
                let e = item.get_error()?;
                Ok((EmailId(item.get_id()), crate::Error::from_code(e.get_code()?, text(e.get_message())?)))
            })
            .collect::<Result<_>>()?,
    })
}

pub(crate) fn submission_of(
    r: quail_protocol::quail_capnp::submission::Reader<'_>,
) -> Result<crate::types::Submission> {
    use crate::types::{RecipientStatus, SubmissionStatus};
    use quail_protocol::quail_capnp::SubmissionStatus as W;
    let recipients = r
        .get_recipients()?
        .iter()
        .map(|x| {
            Ok(RecipientStatus {
                recipient: text(x.get_recipient())?,
                status: match x.get_status() {
                    Ok(W::Queued) => SubmissionStatus::Queued,
                    Ok(W::Delivered) => SubmissionStatus::Delivered,
                    Ok(W::Deferred) => SubmissionStatus::Deferred,
                    Ok(W::Failed) => SubmissionStatus::Failed,
                    Ok(W::Cancelled) => SubmissionStatus::Cancelled,
                    // A status newer than this SDK: still waiting, as far as it knows.
                    Err(_) => SubmissionStatus::Queued,
                },
                reply: text(x.get_reply())?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(crate::types::Submission {
        id: r.get_id(),
        email_id: EmailId(r.get_email_id()),
        recipients,
        mail_from: text(r.get_mail_from())?,
        created_at: r.get_created_at(),
        send_at: r.get_send_at(),
        next_attempt_at: r.get_next_attempt_at(),
        attempts: r.get_attempts(),
        expires_at: r.get_expires_at(),
    })
}

pub(crate) fn write_envelope(
    mut e: quail_protocol::quail_capnp::smtp_envelope::Builder<'_>,
    envelope: &crate::types::Envelope,
) {
    e.set_mail_from(envelope.mail_from.as_str());
    e.set_remote_ip(envelope.remote_ip.as_str());
    e.set_helo(envelope.helo.as_str());
    e.set_tls(envelope.tls);
    let mut l = e.init_rcpt_to(envelope.rcpt_to.len() as u32);
    for (i, r) in envelope.rcpt_to.iter().enumerate() {
        l.set(i as u32, r.as_str());
    }
}
