//! `quaild import`: mbox files (mboxrd or mboxo, `.xz` too), Maildir trees
//! and single-message files into an account, in batches of one transaction
//! and one fsync each, with progress and a summary.
//!
//! A path is read as: a Maildir (`cur/`, `new/`; `.Sub.Folder` children
//! become nested mailboxes, flags become keywords), a directory (every file
//! below it, recursively), an mbox file (first line `From `), or one message.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::account::{AccountId, Accounts};
use crate::error::{Error, Result};
use crate::mail::ingest::{self, ImportItem, Placement};
use crate::mail::{MailboxId, Mailstore, Role, keyword};
use crate::tools::mbox::{self, Flavor};

/// Messages per transaction.
const BATCH: usize = 64;

/// Files that are never mail: notes and data beside a corpus.
fn skipped(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.starts_with('.') && path.is_file()
        || matches!(
            path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(),
            Some("md" | "tsv" | "json" | "toml")
        )
}

/// Files Dovecot and Courier keep beside a Maildir's cur/ and new/.
fn metadata_file(name: &str) -> bool {
    name.starts_with('.')
        || name.starts_with("dovecot-uidvalidity")
        || name.starts_with("dovecot.index")
        || name.starts_with("dovecot.list.index")
        || matches!(
            name,
            "dovecot-uidlist"
                | "dovecot-keywords"
                | "dovecot.mailbox.log"
                | "courierimapuiddb"
                | "courierimapacl"
                | "courierpop3dsizelist"
                | "maildirfolder"
                | "maildirsize"
                | "subscriptions"
        )
}

/// Folders Courier keeps beside a Maildir's cur/ and new/.
fn metadata_dir(name: &str) -> bool {
    matches!(name, "courierimapkeywords" | "courierimaphieracl")
}

/// Whether a file starts like a message: a header field (`Name:`) or an
/// mbox `From ` line (an `.xz` file is judged by its name: it is read as
/// a compressed mbox). Index files, uid lists and empty files do not.
fn looks_like_message(path: &Path) -> bool {
    if path.extension().and_then(|e| e.to_str()) == Some("xz") {
        return true;
    }
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).and_then(|mut f| std::io::Read::read(&mut f, &mut head)).unwrap_or(0);
    let head = &head[..n];
    if head.starts_with(b"From ") {
        return true;
    }
    // RFC 5322 field name: printable ASCII but the colon, then a colon.
    let name_len = head.iter().take_while(|b| (33..=126).contains(*b) && **b != b':').count();
    name_len > 0 && head.get(name_len) == Some(&b':')
}

/// One message found under an import path.
#[derive(Debug, Clone)]
pub struct Found {
    /// Where it came from (file, or file#n for an mbox).
    pub origin: String,
    /// Its raw bytes.
    pub raw: Vec<u8>,
    /// Maildir folder path (`["My Folder", "Nested"]`), empty for the target mailbox.
    pub folder: Vec<String>,
    /// Keywords from Maildir flags.
    pub keywords: Vec<String>,
    /// Maildir `T` flag: goes to Trash.
    pub trashed: bool,
    /// Arrival time if the source says (mbox separator, Maildir file name).
    pub received_ms: Option<i64>,
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    let data = std::fs::read(path).map_err(|e| Error::invalid(format!("reading {}: {e}", path.display())))?;
    if path.extension().and_then(|e| e.to_str()) == Some("xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut std::io::Cursor::new(&data), &mut out)
            .map_err(|e| Error::invalid(format!("{}: not xz: {e}", path.display())))?;
        return Ok(out);
    }
    Ok(data)
}

/// Every message under `path`, in a stable order. Subdirectories become
/// nested folders (so a mail tree keeps its shape).
pub fn collect(path: &Path, flavor: Flavor) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    walk(path, &[], flavor, false, &mut out)?;
    Ok(out)
}

/// `sniff`: inside a Maildir's tree, where files beside the folders may be
/// metadata; only files that read as messages count there.
fn walk(path: &Path, folder: &[String], flavor: Flavor, sniff: bool, out: &mut Vec<Found>) -> Result<()> {
    if path.is_dir() {
        let maildir = path.join("cur").is_dir() || path.join("new").is_dir();
        if maildir {
            collect_maildir(path, folder, out)?;
        }
        let mut entries = list(path)?;
        entries.sort();
        for e in entries {
            let name = e.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            if maildir && (matches!(name.as_str(), "cur" | "new" | "tmp") || name.starts_with('.')) {
                continue; // read as the Maildir above
            }
            // Beside cur/ and new/ a Maildir holds its software's metadata
            // (dovecot-uidlist, dovecot-uidvalidity, dovecot.index*,
            // courierimapuiddb, courierimapkeywords/, maildirfolder,
            // subscriptions, ...). Mail trees (notmuch's, mutt's) also keep
            // messages there, so a file beside cur/ counts only when it is
            // not known metadata and reads as a message.
            if e.is_file() && (maildir || sniff) && (metadata_file(&name) || !looks_like_message(&e)) {
                continue;
            }
            if e.is_dir() && maildir && metadata_dir(&name) {
                continue;
            }
            if e.is_dir() {
                let mut sub = folder.to_vec();
                sub.push(name);
                walk(&e, &sub, flavor, sniff || maildir, out)?;
            } else if !skipped(&e) {
                walk(&e, folder, flavor, sniff, out)?;
            }
        }
        return Ok(());
    }
    let data = read_file(path)?;
    if data.is_empty() {
        return Ok(()); // an empty file holds no message
    }
    if data.starts_with(b"From ") {
        for (i, (sep, raw)) in mbox::split(&data, flavor).into_iter().enumerate() {
            out.push(Found {
                origin: format!("{}#{}", path.display(), i + 1),
                raw,
                folder: folder.to_vec(),
                keywords: Vec::new(),
                trashed: false,
                received_ms: mbox::from_line_time(&sep),
            });
        }
    } else {
        out.push(Found {
            origin: path.display().to_string(),
            raw: data,
            folder: folder.to_vec(),
            keywords: Vec::new(),
            trashed: false,
            received_ms: None,
        });
    }
    Ok(())
}

fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::read_dir(dir)
        .map_err(|e| Error::invalid(format!("reading {}: {e}", dir.display())))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::invalid(format!("reading {}: {e}", dir.display()))))
        .collect()
}

fn collect_maildir(dir: &Path, folder: &[String], out: &mut Vec<Found>) -> Result<()> {
    collect_maildir_files(dir, folder, out)?;
    collect_maildir_folders(dir, folder, out)
}

fn collect_maildir_files(dir: &Path, folder: &[String], out: &mut Vec<Found>) -> Result<()> {
    for sub in ["new", "cur"] {
        let d = dir.join(sub);
        if !d.is_dir() {
            continue;
        }
        let mut files = list(&d)?;
        files.sort();
        for f in files.into_iter().filter(|f| f.is_file()) {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            if name.starts_with('.') || f.metadata().map(|m| m.len() == 0).unwrap_or(true) {
                continue; // hidden or empty: a delivery in progress or debris, never a message
            }
            let flags = name.rsplit_once(":2,").map(|(_, fl)| fl.to_owned()).unwrap_or_default();
            let mut keywords = Vec::new();
            for (c, k) in [
                ('S', keyword::SEEN),
                ('F', keyword::FLAGGED),
                ('R', keyword::ANSWERED),
                ('D', keyword::DRAFT),
                ('P', keyword::FORWARDED),
            ] {
                if flags.contains(c) {
                    keywords.push(k.to_owned());
                }
            }
            let received_ms = name.split('.').next().and_then(|s| s.parse::<i64>().ok()).map(|s| s * 1000);
            out.push(Found {
                origin: f.display().to_string(),
                raw: read_file(&f)?,
                folder: folder.to_vec(),
                keywords,
                trashed: flags.contains('T'),
                received_ms,
            });
        }
    }
    Ok(())
}

fn collect_maildir_folders(dir: &Path, folder: &[String], out: &mut Vec<Found>) -> Result<()> {
    // Maildir++ folders: .Parent.Child directories beside cur/new/tmp.
    {
        let mut subs: Vec<PathBuf> = list(dir)?
            .into_iter()
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.') && n.len() > 1)
            })
            .collect();
        subs.sort();
        for s in subs {
            let name = s.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let mut parts = folder.to_vec();
            parts.extend(name[1..].split('.').map(str::to_owned));
            collect_maildir_files(&s, &parts, out)?;
        }
    }
    Ok(())
}

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// Messages found.
    pub found: u64,
    /// Messages stored, with their ids in the order found.
    pub imported: Vec<crate::mail::EmailId>,
    /// Messages refused (origin, why).
    pub failed: Vec<(String, String)>,
    /// Raw bytes stored.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Resolves (creating as needed) the mailbox for a Maildir folder path.
async fn folder_mailbox(
    mail: &Mailstore,
    account: AccountId,
    base: MailboxId,
    path: &[String],
) -> Result<MailboxId> {
    let mut parent = base;
    for name in path {
        let existing = mail
            .mailbox_records(account)?
            .into_iter()
            .find(|m| m.parent == Some(parent) && m.name.eq_ignore_ascii_case(name));
        parent = match existing {
            Some(m) => m.id,
            None => mail.create_mailbox(account, name, Some(parent)).await?.0.id,
        };
    }
    Ok(parent)
}

/// What to import where.
#[derive(Debug, Clone)]
pub struct ImportOptions<'a> {
    /// Account name.
    pub account: &'a str,
    /// File or directory to read.
    pub path: &'a Path,
    /// Target mailbox name (created if missing; default Inbox).
    pub mailbox: Option<&'a str>,
    /// mbox escaping.
    pub flavor: Flavor,
    /// Arrival time for messages whose source gives none and that have no Date.
    pub now_ms: i64,
}

/// Imports everything an [`ImportOptions`] names; `progress` is called
/// after each batch with (done, total).
pub async fn import(
    mail: &Mailstore,
    accounts: &Accounts,
    opts: &ImportOptions<'_>,
    mut progress: impl FnMut(u64, u64),
) -> Result<ImportReport> {
    let ImportOptions { account, path, mailbox, flavor, now_ms } = *opts;
    let started = Instant::now();
    let acct = accounts.by_name(account)?.ok_or_else(|| Error::not_found(format!("no account {account}")))?;
    let base = match mailbox {
        None => mail.mailbox_by_role(acct.id, Role::Inbox)?,
        Some(name) => {
            match mail.mailbox_records(acct.id)?.into_iter().find(|m| m.name.eq_ignore_ascii_case(name)) {
                Some(m) => m.id,
                None => mail.create_mailbox(acct.id, name, None).await?.0.id,
            }
        }
    };
    let trash = mail.mailbox_by_role(acct.id, Role::Trash)?;
    let found = collect(path, flavor)?;
    let mut report = ImportReport { found: found.len() as u64, ..ImportReport::default() };
    for chunk in found.chunks(BATCH) {
        let mut items = Vec::with_capacity(chunk.len());
        let mut origins = Vec::with_capacity(chunk.len());
        for f in chunk {
            let prepared = ingest::prepare(&f.raw)?;
            let target =
                if f.trashed { trash } else { folder_mailbox(mail, acct.id, base, &f.folder).await? };
            let received_ms =
                f.received_ms.or(Some(prepared.parsed.envelope.sent_ms).filter(|t| *t > 0)).unwrap_or(now_ms);
            items.push(ImportItem {
                prepared,
                placement: Placement { mailboxes: vec![target], keywords: f.keywords.clone(), received_ms },
            });
            origins.push((f.origin.clone(), f.raw.len() as u64));
        }
        let outcomes = mail.import(acct.id, &items).await?;
        for ((origin, size), outcome) in origins.into_iter().zip(outcomes) {
            match outcome {
                Ok(id) => {
                    report.imported.push(id);
                    report.bytes += size;
                }
                Err(e) => report.failed.push((origin, e.to_string())),
            }
        }
        progress((report.imported.len() + report.failed.len()) as u64, report.found);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
