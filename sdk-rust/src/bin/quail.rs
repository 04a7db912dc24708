//! `quail`: the command-line client.
//!
//! ```text
//! quail admin user add alice          # operator: create an account
//! quail login alice                   # save a token for later commands
//! quail deliver --to alice mail.eml   # gateway helper: deliver files
//! quail ls --unread                   # list mail, newest first
//! quail show 42                       # one email and its parts (--raw for the bytes)
//! quail fetch 42 --part 2 -o file.pdf # one part (an attachment), with progress
//! quail spam 42 43                     # report spam: to Junk, and the filter learns (--not: not spam)
//! quail watch                         # print mail as it arrives
//! quail send --to bob@example.org --subject Hi --attach a.pdf --at +10m < body.txt
//! quail outbox                        # what is still being sent, per recipient
//! quail cancel 7                      # undo a send that has not left yet
//! ```

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use quail::{Client, EmailId, Envelope, Query, Role, Session, Trust};
use serde::{Deserialize, Serialize};

/// `println!` for output a reader may stop reading (`quail ls | head`): a
/// closed pipe ends the program quietly, as it does for any Unix tool,
/// instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// Quail command-line client.
#[derive(Debug, Parser)]
#[command(name = "quail", version)]
struct Cli {
    /// Server address (host:port). Default: the saved login, else 127.0.0.1:4433.
    #[arg(long, global = true, env = "QUAIL_SERVER")]
    server: Option<String>,
    /// Pin the server certificate's SHA-256 fingerprint (quaild prints it).
    #[arg(long, global = true, env = "QUAIL_PIN")]
    pin: Option<String>,
    /// Trust the system's root certificates instead of a pin.
    #[arg(long, global = true)]
    system_roots: bool,
    /// The server's data dir, when it runs on this machine: the development
    /// certificate's fingerprint and the admin and gateway credentials are read from it.
    #[arg(long, global = true, env = "QUAIL_DATA_DIR", default_value = "./quail-data")]
    data_dir: PathBuf,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Operator commands (need the admin credential).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Log in and save an app token for later commands.
    Login {
        /// Account name.
        name: String,
        /// Password (default: $QUAIL_PASSWORD, else prompt or one line of stdin).
        #[arg(long)]
        password: Option<String>,
    },
    /// Forget the saved login.
    Logout,
    /// List mail, newest first.
    Ls {
        /// Only unread mail.
        #[arg(long)]
        unread: bool,
        /// Only flagged mail.
        #[arg(long)]
        flagged: bool,
        /// One line per thread.
        #[arg(long)]
        threads: bool,
        /// Only this mailbox (name or role, e.g. inbox). Default: all mail.
        #[arg(long)]
        mailbox: Option<String>,
        /// How many.
        #[arg(long, short = 'n', default_value_t = 50)]
        limit: u32,
        /// Skip this many.
        #[arg(long, default_value_t = 0)]
        position: u32,
    },
    /// Show one email.
    Show {
        /// Email id (from `quail ls`).
        id: u64,
        /// Write the raw message, byte for byte, to stdout.
        #[arg(long)]
        raw: bool,
    },
    /// Report emails as spam (they move to Junk) or, with --not, as not
    /// spam (back to the Inbox); your spam filter learns from each report.
    Spam {
        /// Email ids.
        #[arg(required = true)]
        ids: Vec<u64>,
        /// Not spam.
        #[arg(long)]
        not: bool,
    },
    /// Write one MIME part of an email (decoded) to a file or stdout.
    Fetch {
        /// Email id.
        id: u64,
        /// Part id, as `quail show` lists them ("1", "2", "2.1", ...).
        #[arg(long)]
        part: String,
        /// Where to write it ("-" or absent: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Print mail as it arrives (and other changes), until interrupted.
    Watch,
    /// List mailboxes with their counts.
    Mailboxes,
    /// Create or delete mailboxes.
    Mailbox {
        #[command(subcommand)]
        command: MailboxCommand,
    },
    /// Mark emails read (or unread with --off).
    Seen {
        /// Email ids.
        #[arg(required = true)]
        ids: Vec<u64>,
        /// Mark unread instead.
        #[arg(long)]
        off: bool,
    },
    /// Flag emails (or unflag with --off).
    Flag {
        /// Email ids.
        #[arg(required = true)]
        ids: Vec<u64>,
        /// Unflag instead.
        #[arg(long)]
        off: bool,
    },
    /// Move emails to one mailbox (out of all others).
    Mv {
        /// Email ids.
        #[arg(required = true)]
        ids: Vec<u64>,
        /// Target mailbox (name or role).
        #[arg(long)]
        to: String,
    },
    /// Move emails to Trash; emails already in Trash are deleted for good.
    Rm {
        /// Email ids.
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Send a message: filed in Sent, delivered by the server (here) and
    /// the SMTP gateway (elsewhere). The body is read from stdin.
    Send {
        /// Recipient address; repeatable.
        #[arg(long, required = true)]
        to: Vec<String>,
        /// Copy to; repeatable.
        #[arg(long)]
        cc: Vec<String>,
        /// Subject.
        #[arg(long, default_value = "")]
        subject: String,
        /// The body (default: stdin).
        #[arg(long)]
        body: Option<String>,
        /// A file to attach; repeatable.
        #[arg(long)]
        attach: Vec<PathBuf>,
        /// Send later: an RFC 3339 time (2026-12-24T18:00:00Z) or a delay
        /// (+10m, 2h). Until then `quail cancel` withdraws it.
        #[arg(long)]
        at: Option<String>,
        /// Sender (default: the account's primary address).
        #[arg(long)]
        from: Option<String>,
    },
    /// Messages still being sent, with each recipient's status.
    Outbox,
    /// Search mail: `quail search 'from:alice invoice is:unread'` (the
    /// query language is in the README).
    Search {
        /// The query.
        query: String,
        /// How many.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: u32,
        /// Skip this many.
        #[arg(long, default_value_t = 0)]
        position: u32,
        /// Best match first (default: newest first).
        #[arg(long)]
        relevance: bool,
    },
    /// Withdraw a message that has not left yet (undo send); its copy moves
    /// to Drafts.
    Cancel {
        /// Submission id (from `quail send` or `quail outbox`).
        id: u64,
    },
    /// Deliver message files through the gateway credential (a local MTA stand-in).
    Deliver {
        /// Recipient (account name or address); repeatable.
        #[arg(long, required = true)]
        to: Vec<String>,
        /// Envelope sender.
        #[arg(long, default_value = "")]
        from: String,
        /// Message files (RFC 5322), `-` for stdin.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum MailboxCommand {
    /// Create a mailbox.
    Add {
        /// Name.
        name: String,
        /// Parent mailbox (name or role).
        #[arg(long)]
        parent: Option<String>,
    },
    /// Delete an empty mailbox.
    Rm {
        /// Name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create an account.
    Add {
        /// Login name.
        name: String,
        /// Password (default: $QUAIL_PASSWORD, else prompt or one line of stdin).
        #[arg(long)]
        password: Option<String>,
        /// Byte quota (0 = unlimited).
        #[arg(long, default_value_t = 0)]
        quota_bytes: u64,
        /// Message quota (0 = unlimited).
        #[arg(long, default_value_t = 0)]
        quota_messages: u64,
    },
    /// List accounts.
    List,
    /// Set an account's password.
    Passwd {
        /// Login name.
        name: String,
        /// New password (default: $QUAIL_PASSWORD, else prompt or stdin).
        #[arg(long)]
        password: Option<String>,
    },
}

/// What `quail login` saves.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Profile {
    server: String,
    pin: Option<String>,
    name: String,
    token: String,
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quail: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("quail: {e:#}");
        let code = match e.downcast_ref::<quail::Error>() {
            Some(quail::Error::BadCredentials) => 3,
            Some(quail::Error::NotFound(_)) => 4,
            Some(quail::Error::Disconnected(_) | quail::Error::Tls(_)) => 5,
            _ => 1,
        };
        std::process::exit(code);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let profile = load_profile()?;
    match &cli.command {
        Command::Admin { command: AdminCommand::User { command } } => {
            admin(&cli, profile.as_ref(), command).await
        }
        Command::Login { name, password } => login(&cli, name, password.as_deref()).await,
        Command::Logout => {
            let path = profile_path()?;
            match std::fs::remove_file(&path) {
                Ok(()) => out!("logged out"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => out!("not logged in"),
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
            Ok(())
        }
        Command::Ls { unread, flagged, threads, mailbox, limit, position } => {
            let session = session(&cli, profile.as_ref()).await?;
            let mut q = Query::all().limit(*limit).position(*position);
            if let Some(m) = mailbox {
                q.mailbox = Some(find_mailbox(&session, m).await?);
            }
            if *unread {
                q = q.unread();
            }
            if *flagged {
                q = q.flagged();
            }
            q.collapse_threads = *threads;
            ls(&cli, &session, &q).await
        }
        Command::Mailbox { command } => {
            let session = session(&cli, profile.as_ref()).await?;
            match command {
                MailboxCommand::Add { name, parent } => {
                    let parent = match parent {
                        Some(p) => Some(find_mailbox(&session, p).await?),
                        None => None,
                    };
                    let (m, _) = session.create_mailbox(name, parent).await?;
                    out!("created mailbox {} (id {})", m.name, m.id.0);
                }
                MailboxCommand::Rm { name } => {
                    let id = find_mailbox(&session, name).await?;
                    session.delete_mailbox(id).await?;
                    out!("deleted mailbox {name}");
                }
            }
            Ok(())
        }
        Command::Seen { ids, off } | Command::Flag { ids, off } => {
            let session = session(&cli, profile.as_ref()).await?;
            let keyword = if matches!(cli.command, Command::Seen { .. }) { "$seen" } else { "$flagged" };
            let ids: Vec<EmailId> = ids.iter().map(|i| EmailId(*i)).collect();
            let r = if *off {
                session.set_keywords(&ids, &[], &[keyword], None).await?
            } else {
                session.set_keywords(&ids, &[keyword], &[], None).await?
            };
            report_update(&r)
        }
        Command::Mv { ids, to } => {
            let session = session(&cli, profile.as_ref()).await?;
            let target = find_mailbox(&session, to).await?;
            let (boxes, _) = session.mailboxes().await?;
            let others: Vec<quail::MailboxId> = boxes.iter().map(|m| m.id).filter(|m| *m != target).collect();
            let ids: Vec<EmailId> = ids.iter().map(|i| EmailId(*i)).collect();
            report_update(&session.move_emails(&ids, &[target], &others, None).await?)
        }
        Command::Rm { ids } => {
            let session = session(&cli, profile.as_ref()).await?;
            let ids: Vec<EmailId> = ids.iter().map(|i| EmailId(*i)).collect();
            report_update(&session.destroy(&ids, None).await?)
        }
        Command::Show { id, raw } => {
            let session = session(&cli, profile.as_ref()).await?;
            show(&cli, &session, EmailId(*id), *raw).await
        }
        Command::Mailboxes => {
            let session = session(&cli, profile.as_ref()).await?;
            mailboxes(&cli, &session).await
        }
        Command::Fetch { id, part, output } => {
            let session = session(&cli, profile.as_ref()).await?;
            fetch(&session, EmailId(*id), part, output.as_deref()).await
        }
        Command::Watch => {
            let session = session(&cli, profile.as_ref()).await?;
            watch(&cli, &session).await
        }
        Command::Spam { ids, not } => {
            let session = session(&cli, profile.as_ref()).await?;
            let ids: Vec<EmailId> = ids.iter().map(|i| EmailId(*i)).collect();
            let r = session.report_spam(&ids, !*not).await?;
            for (id, why) in &r.not_updated {
                eprintln!("quail: email {}: {why}", id.0);
            }
            let (n, what) = (r.updated.len(), if *not { "not spam" } else { "spam" });
            out!("{n} email{} reported as {what}", if n == 1 { "" } else { "s" });
            if r.not_updated.is_empty() {
                Ok(())
            } else {
                Err(anyhow::anyhow!("{} not reported", r.not_updated.len()))
            }
        }
        Command::Deliver { to, from, files } => deliver(&cli, profile.as_ref(), to, from, files).await,
        Command::Send { to, cc, subject, body, attach, at, from } => {
            let session = session(&cli, profile.as_ref()).await?;
            let draft = Draft {
                to,
                cc,
                subject,
                body: body.as_deref(),
                attach,
                at: at.as_deref(),
                from: from.as_deref(),
            };
            send(&cli, &session, &draft).await
        }
        Command::Search { query, limit, position, relevance } => {
            let session = session(&cli, profile.as_ref()).await?;
            search(&cli, &session, query, *position, *limit, *relevance).await
        }
        Command::Outbox => {
            let session = session(&cli, profile.as_ref()).await?;
            let pending = session.submissions(&[]).await?;
            if cli.json {
                out!("{}", serde_json::to_string_pretty(&pending)?);
            } else if pending.is_empty() {
                out!("the outbox is empty");
            }
            if !cli.json {
                for s in &pending {
                    print_submission(s);
                }
            }
            Ok(())
        }
        Command::Cancel { id } => {
            let session = session(&cli, profile.as_ref()).await?;
            let s = session.cancel_submission(*id).await?;
            if cli.json {
                out!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                out!("cancelled submission {}; its copy is in Drafts", s.id);
                print_submission(&s);
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// Connection

fn server_addr(cli: &Cli, profile: Option<&Profile>) -> String {
    cli.server
        .clone()
        .or_else(|| profile.map(|p| p.server.clone()))
        .unwrap_or_else(|| "127.0.0.1:4433".to_owned())
}

fn trust(cli: &Cli, profile: Option<&Profile>) -> anyhow::Result<(Trust, Option<String>)> {
    if cli.system_roots {
        return Ok((Trust::SystemRoots, None));
    }
    let pin = match (&cli.pin, profile.and_then(|p| p.pin.clone())) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) if cli.server.is_none() => p,
        _ => {
            let file = cli.data_dir.join("tls/dev-cert.sha256");
            std::fs::read_to_string(&file).map(|s| s.trim().to_owned()).map_err(|_| {
                anyhow!(
                    "no way to trust the server: pass --pin FINGERPRINT (quaild prints it at start), \
                     --system-roots, or --data-dir of a local server ({} not found)",
                    file.display()
                )
            })?
        }
    };
    Ok((Trust::Pinned(pin.parse()?), Some(pin)))
}

async fn connect(cli: &Cli, profile: Option<&Profile>) -> anyhow::Result<Client> {
    let addr = server_addr(cli, profile);
    let (trust, _) = trust(cli, profile)?;
    Client::connect(&addr, trust).await.with_context(|| format!("connecting to {addr}"))
}

async fn session(cli: &Cli, profile: Option<&Profile>) -> anyhow::Result<Session> {
    let Some(p) = profile else {
        bail!("not logged in: run `quail login NAME` first");
    };
    let client = connect(cli, Some(p)).await?;
    client.login_token(&p.token).await.map_err(|e| match e {
        quail::Error::BadCredentials => {
            anyhow!(e).context("the saved login was revoked; run `quail login` again")
        }
        other => anyhow!(other),
    })
}

fn secret(dir: &Path, file: &str, env: &str) -> anyhow::Result<String> {
    if let Ok(s) = std::env::var(env) {
        return Ok(s);
    }
    let path = dir.join(file);
    std::fs::read_to_string(&path).map(|s| s.trim().to_owned()).map_err(|e| {
        anyhow!("reading {} ({e}); set {env} or --data-dir to the server's data dir", path.display())
    })
}

fn password(given: Option<&str>, prompt: &str) -> anyhow::Result<String> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    if let Ok(p) = std::env::var("QUAIL_PASSWORD") {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt).context("reading the password");
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

// ---------------------------------------------------------------------------
// Profile

fn profile_path() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("QUAIL_CLI_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var("XDG_CONFIG_HOME") {
        Ok(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(std::env::var("HOME").context("HOME is not set; set QUAIL_CLI_CONFIG")?)
            .join(".config"),
    };
    Ok(base.join("quail/cli.toml"))
}

fn load_profile() -> anyhow::Result<Option<Profile>> {
    let path = profile_path()?;
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(
            toml::from_str(&s)
                .with_context(|| format!("{} is damaged; run `quail login`", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_profile(p: &Profile) -> anyhow::Result<PathBuf> {
    let path = profile_path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(toml::to_string(p)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

// ---------------------------------------------------------------------------
// Commands

async fn admin(cli: &Cli, profile: Option<&Profile>, command: &UserCommand) -> anyhow::Result<()> {
    let client = connect(cli, profile).await?;
    let admin = client.admin(&secret(&cli.data_dir, "admin.secret", "QUAIL_ADMIN_SECRET")?).await?;
    match command {
        UserCommand::Add { name, password: pw, quota_bytes, quota_messages } => {
            let pw = password(pw.as_deref(), &format!("password for {name}: "))?;
            let a = admin.create_account(name, &pw, *quota_bytes, *quota_messages).await?;
            if cli.json {
                out!("{}", serde_json::to_string(&a)?);
            } else {
                out!("created account {} (id {})", a.name, a.id);
            }
        }
        UserCommand::List => {
            let mut after = String::new();
            let mut all = Vec::new();
            loop {
                let (page, more) = admin.list_accounts(&after, 500).await?;
                if let Some(last) = page.last() {
                    after = last.name.clone();
                }
                all.extend(page);
                if !more {
                    break;
                }
            }
            if cli.json {
                out!("{}", serde_json::to_string(&all)?);
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|a| {
                        vec![
                            a.name.clone(),
                            a.used_messages.to_string(),
                            human_bytes(a.used_bytes),
                            if a.quota_bytes == 0 { "-".into() } else { human_bytes(a.quota_bytes) },
                        ]
                    })
                    .collect();
                table(&["NAME", "MESSAGES", "SIZE", "QUOTA"], &rows);
            }
        }
        UserCommand::Passwd { name, password: pw } => {
            let pw = password(pw.as_deref(), &format!("new password for {name}: "))?;
            admin.set_password(name, &pw).await?;
            out!("password of {name} changed");
        }
    }
    Ok(())
}

async fn login(cli: &Cli, name: &str, pw: Option<&str>) -> anyhow::Result<()> {
    let addr = server_addr(cli, None);
    let (trust, pin) = trust(cli, None)?;
    let client = Client::connect(&addr, trust).await.with_context(|| format!("connecting to {addr}"))?;
    let pw = password(pw, &format!("password for {name}: "))?;
    let session = client.login(name, &pw).await?;
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "this machine".into());
    let (token, _) = session.create_app_token(&format!("quail CLI on {host}")).await?;
    let (account, _) = session.account().await?;
    let path = save_profile(&Profile { server: addr.clone(), pin, name: account.name.clone(), token })?;
    out!("logged in to {addr} as {} (token saved in {})", account.name, path.display());
    Ok(())
}

async fn find_mailbox(session: &Session, wanted: &str) -> anyhow::Result<quail::MailboxId> {
    let (boxes, _) = session.mailboxes().await?;
    let w = wanted.to_lowercase();
    boxes
        .iter()
        .find(|m| m.name.to_lowercase() == w)
        .or_else(|| {
            boxes.iter().find(|m| format!("{:?}", m.role).to_lowercase() == w && m.role != Role::None)
        })
        .map(|m| m.id)
        .ok_or_else(|| anyhow!("no mailbox named {wanted:?}; see `quail mailboxes`"))
}

fn report_update(r: &quail::UpdateResult) -> anyhow::Result<()> {
    for (id, e) in &r.not_updated {
        eprintln!("{}: {e}", id.0);
    }
    out!("{} updated", r.updated.len());
    if !r.not_updated.is_empty() {
        bail!("{} not updated", r.not_updated.len());
    }
    Ok(())
}

async fn ls(cli: &Cli, session: &Session, q: &Query) -> anyhow::Result<()> {
    let page = session.query(q).await?;
    let (emails, _) = session.get(&page.ids, &[]).await?;
    if cli.json {
        out!("{}", serde_json::json!({ "total": page.total, "position": page.position, "emails": emails }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = emails
        .iter()
        .map(|e| {
            vec![
                format!(
                    "{}{}{}",
                    if e.is_unread() { "*" } else { " " },
                    if e.keywords.iter().any(|k| k == "$flagged") { "!" } else { " " },
                    e.id
                ),
                date(e.received_at),
                clip(
                    &e.from
                        .first()
                        .map(|a| if a.name.is_empty() { a.email.clone() } else { a.name.clone() })
                        .unwrap_or_default(),
                    24,
                ),
                clip(&e.subject, 60),
            ]
        })
        .collect();
    table(&["  ID", "RECEIVED", "FROM", "SUBJECT"], &rows);
    let end = page.position as usize + emails.len();
    let what = match (q.unread == Some(true), q.flagged == Some(true)) {
        (true, true) => " unread flagged",
        (true, false) => " unread",
        (false, true) => " flagged",
        (false, false) => "",
    };
    let first = if emails.is_empty() { 0 } else { page.position + 1 };
    let unit = if q.collapse_threads { " threads" } else { "" };
    out!("{first}-{end} of {}{what}{unit}", page.total);
    Ok(())
}

async fn show(cli: &Cli, session: &Session, id: EmailId, raw: bool) -> anyhow::Result<()> {
    if raw {
        let bytes = session.raw(id).await?;
        std::io::stdout().write_all(&bytes)?;
        return Ok(());
    }
    use quail::Property as P;
    let props = [P::Envelope, P::Keywords, P::Mailboxes, P::Preview, P::BodyStructure, P::Filter];
    let e = session
        .get(&[id], &props)
        .await?
        .0
        .pop()
        .ok_or_else(|| quail::Error::NotFound(format!("no email {}", id.0)))?;
    if cli.json {
        out!("{}", serde_json::to_string(&e)?);
        return Ok(());
    }
    let list = |a: &[quail::Address]| a.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    out!("From:     {}", list(&e.from));
    out!("To:       {}", list(&e.to));
    if !e.cc.is_empty() {
        out!("Cc:       {}", list(&e.cc));
    }
    out!("Subject:  {}", e.subject);
    if e.sent_at != 0 {
        out!("Date:     {}", date(e.sent_at));
    }
    out!("Received: {}", date(e.received_at));
    out!("Size:     {}{}", human_bytes(e.size), if e.has_attachment { ", with attachments" } else { "" });
    if let Some(f) = &e.filter {
        let spam = match f.spam {
            quail::Verdict::Spam => "spam",
            quail::Verdict::Clean => "not spam",
            _ => "not scored",
        };
        out!("Spam:     {spam}, score {:.1}", f.score);
        for why in &f.reasons {
            out!("          {why}");
        }
        let virus = if f.virus == quail::Verdict::Clean { "scanned, clean" } else { "not scanned" };
        out!("Virus:    {virus}");
    }
    out!();
    out!("{}", e.preview);
    out!();
    if let Some(body) = &e.body {
        out!("Parts:");
        print_part(body, 0);
        out!();
    }
    out!(
        "(preview; `quail show {} --raw` prints the whole message, `quail fetch {} --part N` one part)",
        e.id,
        e.id
    );
    Ok(())
}

fn print_part(p: &quail::Part, depth: usize) {
    let id = if p.part_id.is_empty() { "-".to_owned() } else { p.part_id.clone() };
    let mut line = format!("  {:indent$}{id:<6} {}", "", p.mime_type, indent = depth * 2);
    if !p.mime_type.starts_with("multipart/") {
        line.push_str(&format!("  {}", human_bytes(p.size)));
    }
    if !p.file_name.is_empty() {
        line.push_str(&format!("  {:?}", p.file_name));
    }
    if p.disposition == "attachment" {
        line.push_str("  (attachment)");
    }
    out!("{line}");
    for c in &p.sub_parts {
        print_part(c, depth + 1);
    }
}

async fn fetch(session: &Session, id: EmailId, part: &str, output: Option<&Path>) -> anyhow::Result<()> {
    let mut download = session.start_fetch_part(id, part, 0, 0).await?;
    let to_stdout = output.is_none_or(|o| o == Path::new("-"));
    let mut out: Box<dyn Write + Send> = if to_stdout {
        Box::new(std::io::stdout())
    } else {
        let path = output.unwrap_or(Path::new("-"));
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ))
    };
    let bar = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let mut progress = |done: u64, total: u64| {
        if bar && (last.elapsed().as_millis() >= 100 || done == total) {
            last = std::time::Instant::now();
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            let filled = (pct / 5) as usize;
            eprint!(
                "\r[{}{}] {pct:>3}%  {} of {}   ",
                "#".repeat(filled),
                " ".repeat(20 - filled),
                human_bytes(done),
                human_bytes(total)
            );
        }
    };
    session.download_to(&mut download, out.as_mut(), &mut progress).await?;
    out.flush()?;
    if bar {
        eprintln!();
    }
    if !to_stdout {
        eprintln!(
            "wrote {} to {} in {:.1} s",
            human_bytes(download.length),
            output.unwrap_or(Path::new("-")).display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn watch(cli: &Cli, session: &Session) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut watch = session.watch().await?;
    let mut since = watch.start_state();
    if !cli.json {
        eprintln!("watching (state {}); Ctrl-C to stop", since.0);
    }
    while let Some(event) = watch.next().await {
        if !event.kinds.contains(&quail::ObjectKind::Email) {
            since = event.state;
            continue;
        }
        loop {
            let c = session.changes(quail::ObjectKind::Email, since, 256).await?;
            let created: Vec<EmailId> = c.created.iter().map(|i| EmailId(*i)).collect();
            let (emails, _) = session.get(&created, &[]).await?;
            for e in &emails {
                if cli.json {
                    out!("{}", serde_json::json!({"event": "new", "email": e}));
                } else {
                    let from = e.from.first().map(ToString::to_string).unwrap_or_default();
                    out!("new      {:>8}  {from}  {}", e.id, e.subject);
                }
            }
            for id in &c.updated {
                if cli.json {
                    out!("{}", serde_json::json!({"event": "changed", "id": id}));
                } else {
                    out!("changed  {id:>8}");
                }
            }
            for id in &c.destroyed {
                if cli.json {
                    out!("{}", serde_json::json!({"event": "gone", "id": id}));
                } else {
                    out!("gone     {id:>8}");
                }
            }
            since = c.new_state;
            if !c.has_more {
                break;
            }
        }
    }
    bail!("the server ended the watch")
}

async fn mailboxes(cli: &Cli, session: &Session) -> anyhow::Result<()> {
    let (boxes, _) = session.mailboxes().await?;
    if cli.json {
        out!("{}", serde_json::to_string(&boxes)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = boxes
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                format!("{:?}", m.role).to_lowercase(),
                m.total.to_string(),
                m.unread.to_string(),
            ]
        })
        .collect();
    table(&["MAILBOX", "ROLE", "TOTAL", "UNREAD"], &rows);
    Ok(())
}

/// What `quail send` sends.
struct Draft<'a> {
    to: &'a [String],
    cc: &'a [String],
    subject: &'a str,
    body: Option<&'a str>,
    attach: &'a [PathBuf],
    at: Option<&'a str>,
    from: Option<&'a str>,
}

/// `--at`: an RFC 3339 time, or a delay from now (`+10m`, `2h`).
fn send_at(at: &str, now: std::time::SystemTime) -> anyhow::Result<i64> {
    let t = match humantime::parse_rfc3339_weak(at) {
        Ok(t) => t,
        Err(_) => {
            let delay = humantime::parse_duration(at.trim_start_matches('+'))
                .map_err(|_| anyhow!("--at {at:?}: give a time (2026-12-24T18:00:00Z) or a delay (+10m)"))?;
            now + delay
        }
    };
    let ms = t.duration_since(std::time::UNIX_EPOCH).context("--at is before 1970")?.as_millis();
    Ok(ms as i64)
}

/// A MIME type for an attachment, by its extension.
fn mime_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "txt" | "text" | "log" => "text/plain",
        "html" | "htm" => "text/html",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "zip" => "application/zip",
        "json" => "application/json",
        "csv" => "text/csv",
        "eml" => "message/rfc822",
        _ => "application/octet-stream",
    }
}

async fn send(cli: &Cli, session: &Session, d: &Draft<'_>) -> anyhow::Result<()> {
    use mail_builder::MessageBuilder;
    let body = match d.body {
        Some(b) => b.to_owned(),
        None if std::io::stdin().is_terminal() => bail!("give the body with --body, or on stdin"),
        None => {
            let mut b = String::new();
            std::io::stdin().read_to_string(&mut b).context("reading the body from stdin")?;
            b
        }
    };
    let from = match d.from {
        Some(f) => f.to_owned(),
        None => session.account().await?.0.address,
    };
    let send_at = d.at.map(|a| send_at(a, std::time::SystemTime::now())).transpose()?;
    let mut m = MessageBuilder::new()
        .from(from.as_str())
        .to(d.to.iter().map(String::as_str).collect::<Vec<_>>())
        .subject(d.subject)
        .text_body(body);
    if !d.cc.is_empty() {
        m = m.cc(d.cc.iter().map(String::as_str).collect::<Vec<_>>());
    }
    for path in d.attach {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("attachment").to_owned();
        m = m.attachment(mime_type(path), name, bytes);
    }
    let raw = m.write_to_vec().context("building the message")?;
    let envelope = Envelope {
        mail_from: from,
        rcpt_to: d.to.iter().chain(d.cc).cloned().collect(),
        ..Envelope::default()
    };
    let s = session.submit(&raw, &envelope, send_at).await?;
    if cli.json {
        out!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    match send_at {
        Some(t) => out!("submission {}: sends at {} (quail cancel {} until then)", s.id, date(t), s.id),
        None => out!("submission {}: sent; `quail outbox` shows how it goes", s.id),
    }
    print_submission(&s);
    Ok(())
}

async fn search(
    cli: &Cli,
    session: &Session,
    query: &str,
    position: u32,
    limit: u32,
    relevance: bool,
) -> anyhow::Result<()> {
    let page = if relevance {
        session.search_by_relevance(query, position, limit).await?
    } else {
        session.search(query, position, limit).await?
    };
    if cli.json {
        out!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(());
    }
    let ids: Vec<EmailId> = page.hits.iter().map(|h| h.id).collect();
    let (emails, _) = session.get(&ids, &[]).await?;
    let color = std::io::stdout().is_terminal();
    let mark = |s: &quail::Snippet| -> String {
        let mut out = String::new();
        let mut at = 0usize;
        for (a, b) in &s.highlights {
            let (a, b) = (*a as usize, *b as usize);
            if a < at || b > s.text.len() || !s.text.is_char_boundary(a) || !s.text.is_char_boundary(b) {
                continue;
            }
            out.push_str(&s.text[at..a]);
            if color {
                out.push_str(&format!("\x1b[1;33m{}\x1b[0m", &s.text[a..b]));
            } else {
                out.push_str(&format!("[{}]", &s.text[a..b]));
            }
            at = b;
        }
        out.push_str(&s.text[at..]);
        out
    };
    for hit in &page.hits {
        let e = emails.iter().find(|e| e.id == hit.id.0);
        let (when, from, subject) = match e {
            Some(e) => (
                date(e.received_at),
                e.from
                    .first()
                    .map(|a| if a.name.is_empty() { a.email.clone() } else { a.name.clone() })
                    .unwrap_or_default(),
                e.subject.clone(),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        out!("{:>8}  {when}  {}  {}", hit.id.0, clip(&from, 24), clip(&subject, 60));
        for s in &hit.snippets {
            if s.field != "subject" {
                out!("          {}: {}", s.field, mark(s));
            }
        }
    }
    let shown = page.hits.len() as u64;
    if page.total == 0 {
        out!("no matches");
    } else {
        out!("{} of {} match{}", shown, page.total, if page.total == 1 { "" } else { "es" });
    }
    Ok(())
}

fn print_submission(s: &quail::Submission) {
    let when =
        if s.send_at > s.created_at { format!(", sends at {}", date(s.send_at)) } else { String::new() };
    out!("#{} from {} at {}{when}, {} attempt(s)", s.id, s.mail_from, date(s.created_at), s.attempts);
    for r in &s.recipients {
        let status = format!("{:?}", r.status).to_lowercase();
        if r.reply.is_empty() {
            out!("  {:<10} {}", status, r.recipient);
        } else {
            out!("  {:<10} {}  ({})", status, r.recipient, clip(&r.reply, 100));
        }
    }
}

async fn deliver(
    cli: &Cli,
    profile: Option<&Profile>,
    to: &[String],
    from: &str,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    let client = connect(cli, profile).await?;
    let gateway = client.gateway(&secret(&cli.data_dir, "gateway.secret", "QUAIL_GATEWAY_SECRET")?).await?;
    let envelope = Envelope { mail_from: from.to_owned(), rcpt_to: to.to_vec(), ..Envelope::default() };
    let mut failures = 0;
    let mut report = Vec::new();
    for file in files {
        let bytes = if file.as_os_str() == "-" {
            let mut b = Vec::new();
            std::io::stdin().read_to_end(&mut b).context("reading stdin")?;
            b
        } else {
            std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
        };
        let results = match gateway.deliver(&envelope, &bytes).await {
            Ok(r) => r,
            Err(e) => {
                failures += 1;
                eprintln!("{}: {e}", file.display());
                continue;
            }
        };
        for r in results {
            match &r.outcome {
                Ok(id) => {
                    if !cli.json {
                        out!("{} -> {}: delivered as {}", file.display(), r.recipient, id.0);
                    }
                    report.push(serde_json::json!({"file": file, "recipient": r.recipient, "id": id.0}));
                }
                Err(e) => {
                    failures += 1;
                    eprintln!("{} -> {}: {e}", file.display(), r.recipient);
                    report.push(
                        serde_json::json!({"file": file, "recipient": r.recipient, "error": e.to_string()}),
                    );
                }
            }
        }
    }
    if cli.json {
        out!("{}", serde_json::Value::Array(report));
    }
    if failures > 0 {
        bail!("{failures} deliveries failed");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Formatting

fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn clip(s: &str, max: usize) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() <= max { s } else { format!("{}…", s.chars().take(max - 1).collect::<String>()) }
}

fn date(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.replacen('T', " ", 1).trim_end_matches('Z').to_owned()
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}
