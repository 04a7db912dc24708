//! `quaild export`: an account's mail as mboxrd, oldest first, each raw
//! message byte for byte (see [`super::mbox`] for why that survives).

use std::io::Write;

use crate::account::Accounts;
use crate::error::{Error, Result};
use crate::mail::{MailboxId, Mailstore, Query, Start};
use crate::tools::mbox;

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Messages written.
    pub messages: u64,
    /// Raw bytes of those messages.
    pub bytes: u64,
}

/// Writes every email of `account` (or of one mailbox) to `out`, oldest first.
pub fn export(
    mail: &Mailstore,
    accounts: &Accounts,
    account: &str,
    mailbox: Option<&str>,
    out: &mut dyn Write,
) -> Result<ExportReport> {
    let acct = accounts.by_name(account)?.ok_or_else(|| Error::not_found(format!("no account {account}")))?;
    let mailbox = match mailbox {
        None => None,
        Some(name) => Some(
            mail.mailbox_records(acct.id)?
                .into_iter()
                .find(|m| m.name.eq_ignore_ascii_case(name))
                .map(|m| m.id)
                .ok_or_else(|| Error::not_found(format!("no mailbox {name} in {account}")))?,
        ),
    };
    let mut report = ExportReport::default();
    let mut position = 0u64;
    loop {
        let q = Query {
            filter: crate::mail::Filter {
                mailbox: mailbox.filter(|m| *m != MailboxId::ALL),
                ..Default::default()
            },
            newest_first: false,
            start: Start::Position(position),
            limit: 500,
            collapse_threads: false,
            text: None,
        };
        let page = mail.query(acct.id, &q)?;
        if page.ids.is_empty() {
            break;
        }
        for id in &page.ids {
            let Some(e) = mail.email(acct.id, *id)? else {
                continue;
            };
            let raw = mail.raw_of(&e)?;
            let sender = e.envelope.from.first().map(|a| a.email.as_str()).unwrap_or_default();
            let mut buf = Vec::with_capacity(raw.len() + 128);
            mbox::write_message(&mut buf, sender, e.received_ms, &raw);
            out.write_all(&buf).map_err(|e| Error::Internal(format!("writing the export: {e}")))?;
            report.messages += 1;
            report.bytes += raw.len() as u64;
        }
        position += page.ids.len() as u64;
    }
    out.flush().map_err(|e| Error::Internal(format!("writing the export: {e}")))?;
    Ok(report)
}
