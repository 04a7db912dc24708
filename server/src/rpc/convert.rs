//! Domain records → schema builders.

use quail_protocol::quail_capnp::{
    Property, Role as WireRole, account_info, address, changes, email, limits, mailbox, part, update_result,
};

use crate::account::{Account, Usage};
use crate::config::Limits;
use crate::mail::{Addr, BodyPart, EmailRecord, MailboxRecord, MailboxView, Role, UpdateOutcome};

/// Fills `Limits`.
pub fn limits(mut b: limits::Builder<'_>, l: &Limits) {
    b.set_max_rpc_message_bytes(l.max_rpc_message_bytes);
    b.set_max_message_bytes(l.max_message_bytes);
    b.set_max_inline_bytes(l.max_inline_bytes);
    b.set_max_ids_per_call(l.max_ids_per_call);
    b.set_max_query_limit(l.max_query_limit);
    b.set_max_changes(l.max_changes);
    b.set_max_recipients(l.max_recipients);
    b.set_max_name_bytes(l.max_name_bytes);
    b.set_max_search_query_bytes(l.max_search_query_bytes);
    b.set_max_watches(l.max_watches_per_connection);
}

/// Fills `AccountInfo`.
pub fn account(mut b: account_info::Builder<'_>, a: &Account, usage: Usage, domains: &[String]) {
    b.set_address(crate::mail::outbox::primary_address(a, domains).as_str());
    b.set_id(a.id.0);
    b.set_name(a.name.as_str());
    b.set_created_at(a.created_ms);
    b.set_quota_bytes(a.quota_bytes);
    b.set_quota_messages(a.quota_messages);
    b.set_used_bytes(usage.bytes);
    b.set_used_messages(usage.messages);
}

fn role(r: Role) -> WireRole {
    match r {
        Role::None => WireRole::None,
        Role::Inbox => WireRole::Inbox,
        Role::Sent => WireRole::Sent,
        Role::Drafts => WireRole::Drafts,
        Role::Junk => WireRole::Junk,
        Role::Trash => WireRole::Trash,
        Role::Archive => WireRole::Archive,
    }
}

/// Fills `Mailbox`.
pub fn mailbox(mut b: mailbox::Builder<'_>, m: &MailboxView) {
    b.set_id(m.mailbox.id.0);
    b.set_name(m.mailbox.name.as_str());
    b.set_parent_id(m.mailbox.parent.map_or(0, |p| p.0));
    b.set_role(role(m.mailbox.role));
    b.set_total(u32::try_from(m.total).unwrap_or(u32::MAX));
    b.set_unread(u32::try_from(m.unread).unwrap_or(u32::MAX));
}

fn addresses(mut list: capnp::struct_list::Builder<'_, address::Owned>, addrs: &[Addr]) {
    for (i, a) in addrs.iter().enumerate() {
        let mut b = list.reborrow().get(i as u32);
        b.set_name(a.name.as_str());
        b.set_email(a.email.as_str());
    }
}

/// Which property groups a `get` asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Props {
    /// Envelope fields.
    pub envelope: bool,
    /// Keywords.
    pub keywords: bool,
    /// Mailbox ids.
    pub mailboxes: bool,
    /// Preview and hasAttachment.
    pub preview: bool,
    /// Body structure.
    pub body_structure: bool,
    /// Spam and virus verdicts.
    pub filter: bool,
}

impl Props {
    /// What `get` returns when no property is named (the body structure
    /// only on request: it can be large).
    pub const ALL: Props = Props {
        envelope: true,
        keywords: true,
        mailboxes: true,
        preview: true,
        body_structure: false,
        filter: false,
    };

    /// Adds one property; `Err` names a property this server does not serve yet.
    pub fn add(&mut self, p: Property) -> Result<(), &'static str> {
        match p {
            Property::Envelope => self.envelope = true,
            Property::Keywords => self.keywords = true,
            Property::Mailboxes => self.mailboxes = true,
            Property::Preview => self.preview = true,
            Property::BodyStructure => self.body_structure = true,
            Property::Filter => self.filter = true,
        }
        Ok(())
    }
}

/// Bytes a text takes in a message: its pointer, its bytes and NUL, padded.
fn text_size(s: &str) -> usize {
    8 + (s.len() + 1).div_ceil(8) * 8
}

fn addrs_size(a: &[Addr]) -> usize {
    8 + a.iter().map(|x| 24 + text_size(&x.name) + text_size(&x.email)).sum::<usize>()
}

fn part_size(p: &BodyPart) -> usize {
    let texts = [&p.part_id, &p.mime_type, &p.charset, &p.disposition, &p.file_name, &p.content_id];
    96 + texts.iter().map(|t| text_size(t)).sum::<usize>() + p.sub_parts.iter().map(part_size).sum::<usize>()
}

/// An upper bound of the bytes [`email`] writes for `e`: how `get` keeps
/// its answer within the size a client reads.
pub fn email_size(e: &EmailRecord, props: Props) -> usize {
    let mut n = 256;
    if props.mailboxes {
        n += 8 + 8 * e.mailboxes.len();
    }
    if props.keywords {
        n += 8 + e.keywords.iter().map(|k| text_size(k)).sum::<usize>();
    }
    if props.envelope {
        let env = &e.envelope;
        n += text_size(&env.subject) + text_size(&env.message_id);
        n += [&env.from, &env.sender, &env.reply_to, &env.to, &env.cc, &env.bcc]
            .iter()
            .map(|l| addrs_size(l))
            .sum::<usize>();
        n += 16 + env.in_reply_to.iter().chain(&env.references).map(|x| text_size(x)).sum::<usize>();
    }
    if props.preview {
        n += text_size(&e.preview);
    }
    if props.body_structure {
        n += part_size(&e.body);
    }
    n
}

/// Fills `Email` with the asked-for properties (id, thread, received time
/// and size always).
pub fn email(mut b: email::Builder<'_>, e: &EmailRecord, props: Props) -> capnp::Result<()> {
    b.set_id(e.id.0);
    b.set_thread_id(e.thread.0);
    b.set_received_at(e.received_ms);
    b.set_size(e.size);
    if props.mailboxes {
        let mut l = b.reborrow().init_mailbox_ids(e.mailboxes.len() as u32);
        for (i, m) in e.mailboxes.iter().enumerate() {
            l.set(i as u32, m.0);
        }
    }
    if props.keywords {
        let mut l = b.reborrow().init_keywords(e.keywords.len() as u32);
        for (i, k) in e.keywords.iter().enumerate() {
            l.set(i as u32, k.as_str());
        }
    }
    if props.envelope {
        let env = &e.envelope;
        b.set_subject(env.subject.as_str());
        addresses(b.reborrow().init_from(env.from.len() as u32), &env.from);
        addresses(b.reborrow().init_sender(env.sender.len() as u32), &env.sender);
        addresses(b.reborrow().init_reply_to(env.reply_to.len() as u32), &env.reply_to);
        addresses(b.reborrow().init_to(env.to.len() as u32), &env.to);
        addresses(b.reborrow().init_cc(env.cc.len() as u32), &env.cc);
        addresses(b.reborrow().init_bcc(env.bcc.len() as u32), &env.bcc);
        b.set_sent_at(env.sent_ms);
        b.set_message_id(env.message_id.as_str());
        let mut l = b.reborrow().init_in_reply_to(env.in_reply_to.len() as u32);
        for (i, x) in env.in_reply_to.iter().enumerate() {
            l.set(i as u32, x.as_str());
        }
        let mut l = b.reborrow().init_references(env.references.len() as u32);
        for (i, x) in env.references.iter().enumerate() {
            l.set(i as u32, x.as_str());
        }
    }
    if props.preview {
        b.set_preview(e.preview.as_str());
        b.set_has_attachment(e.has_attachment);
    }
    if props.body_structure {
        body_part(b.reborrow().init_body_structure(), &e.body);
    }
    Ok(())
}

/// Fills the verdict fields of `Email` from its filter record (`None`: no
/// filter looked at it, as for mail stored before filters ran). A user's
/// report overrides the classifier's verdict, and says so in the reasons.
pub fn filter_verdict(mut b: email::Builder<'_>, r: Option<&crate::filter::spam::Record>) {
    use crate::filter::spam;
    use quail_protocol::quail_capnp::Verdict;
    let Some(r) = r else {
        b.set_spam_verdict(Verdict::Unknown);
        b.set_virus_verdict(Verdict::Unknown);
        return;
    };
    let reported = match r.trained {
        1 => Some((Verdict::Spam, "REPORTED: the user reported it as spam")),
        2 => Some((Verdict::Clean, "REPORTED: the user reported it as not spam")),
        _ => None,
    };
    let verdict = match (reported, r.spam) {
        (Some((v, _)), _) => v,
        (None, spam::SPAM) => Verdict::Spam,
        (None, spam::CLEAN) => Verdict::Clean,
        (None, _) => Verdict::Unknown,
    };
    b.set_spam_verdict(verdict);
    b.set_spam_score(r.score);
    let reasons: Vec<&str> =
        reported.map(|(_, why)| why).into_iter().chain(r.reasons.iter().map(String::as_str)).collect();
    let mut l = b.reborrow().init_spam_reasons(reasons.len() as u32);
    for (i, why) in reasons.iter().enumerate() {
        l.set(i as u32, *why);
    }
    b.set_virus_verdict(if r.virus == spam::CLEAN { Verdict::Clean } else { Verdict::Unknown });
}

/// Fills `Part`, recursively.
pub fn body_part(mut b: part::Builder<'_>, p: &BodyPart) {
    b.set_part_id(p.part_id.as_str());
    b.set_mime_type(p.mime_type.as_str());
    b.set_charset(p.charset.as_str());
    b.set_disposition(p.disposition.as_str());
    b.set_file_name(p.file_name.as_str());
    b.set_content_id(p.content_id.as_str());
    b.set_size(p.size);
    let mut subs = b.init_sub_parts(p.sub_parts.len() as u32);
    for (i, s) in p.sub_parts.iter().enumerate() {
        body_part(subs.reborrow().get(i as u32), s);
    }
}

/// Fills `Mailbox` from a record without counts (a just-created mailbox).
pub fn mailbox_record(b: mailbox::Builder<'_>, m: &MailboxRecord) {
    mailbox(b, &MailboxView { mailbox: m.clone(), total: 0, unread: 0 });
}

/// Fills `UpdateResult`.
pub fn update_result(mut b: update_result::Builder<'_>, r: &UpdateOutcome) {
    b.set_old_state(r.old_state.0);
    b.set_new_state(r.new_state.0);
    let mut l = b.reborrow().init_updated(r.updated.len() as u32);
    for (i, id) in r.updated.iter().enumerate() {
        l.set(i as u32, id.0);
    }
    let mut l = b.init_not_updated(r.not_updated.len() as u32);
    for (i, (id, e)) in r.not_updated.iter().enumerate() {
        let mut item = l.reborrow().get(i as u32);
        item.set_id(id.0);
        let mut err = item.init_error();
        err.set_code(super::code_of(e));
        err.set_message(e.to_string().as_str());
    }
}

/// Fills `Changes`.
pub fn changes(mut b: changes::Builder<'_>, c: &crate::sync::Changes) {
    b.set_old_state(c.old_state.0);
    b.set_new_state(c.new_state.0);
    b.set_has_more(c.has_more);
    for (list, ids) in [(0, &c.created), (1, &c.updated), (2, &c.destroyed)] {
        let mut l = match list {
            0 => b.reborrow().init_created(ids.len() as u32),
            1 => b.reborrow().init_updated(ids.len() as u32),
            _ => b.reborrow().init_destroyed(ids.len() as u32),
        };
        for (i, id) in ids.iter().enumerate() {
            l.set(i as u32, *id);
        }
    }
}

/// Query changes.
pub fn query_changes(
    mut b: quail_protocol::quail_capnp::query_changes::Builder<'_>,
    c: &crate::mail::query::QueryChanges,
) {
    b.set_old_query_state(c.old_state.0);
    b.set_new_query_state(c.new_state.0);
    b.set_total(c.total);
    let mut removed = b.reborrow().init_removed(c.removed.len() as u32);
    for (i, id) in c.removed.iter().enumerate() {
        removed.set(i as u32, id.0);
    }
    let mut added = b.init_added(c.added.len() as u32);
    for (i, (id, at)) in c.added.iter().enumerate() {
        let mut a = added.reborrow().get(i as u32);
        a.set_id(id.0);
        a.set_index(u32::try_from(*at).unwrap_or(u32::MAX));
    }
}

/// A query page.
pub fn query_page(
    mut r: quail_protocol::quail_capnp::query_result::Builder<'_>,
    page: &crate::mail::QueryPage,
) {
    r.set_position(u32::try_from(page.position).unwrap_or(u32::MAX));
    r.set_total(page.total);
    r.set_query_state(page.state.0);
    let mut ids = r.init_ids(page.ids.len() as u32);
    for (i, id) in page.ids.iter().enumerate() {
        ids.set(i as u32, id.0);
    }
}

/// Fills `Submission`.
pub fn submission(
    mut b: quail_protocol::quail_capnp::submission::Builder<'_>,
    s: &crate::mail::outbox::Submission,
) {
    use crate::mail::outbox::Status;
    use quail_protocol::quail_capnp::SubmissionStatus as W;
    b.set_id(s.id);
    b.set_email_id(s.email.0);
    b.set_mail_from(s.mail_from.as_str());
    b.set_created_at(s.created_ms);
    b.set_send_at(s.send_at_ms);
    b.set_next_attempt_at(s.next_ms);
    b.set_attempts(s.attempts);
    b.set_expires_at(s.expires_ms);
    let mut list = b.init_recipients(s.recipients.len() as u32);
    for (i, r) in s.recipients.iter().enumerate() {
        let mut e = list.reborrow().get(i as u32);
        e.set_recipient(r.address.as_str());
        e.set_status(match r.status {
            Status::Queued => W::Queued,
            Status::Delivered => W::Delivered,
            Status::Deferred => W::Deferred,
            Status::Failed => W::Failed,
            Status::Cancelled => W::Cancelled,
        });
        e.set_reply(r.reply.as_str());
    }
}
