//! The SDK's data types: plain Rust, no capnp.

use serde::Serialize;

/// An email's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct EmailId(pub u64);

/// A mailbox's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct MailboxId(pub u64);

/// An account's state (modification sequence).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct State(pub u64);

/// Limits the server announced in `hello`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Largest RPC message the server reads.
    pub max_rpc_message_bytes: u64,
    /// Largest raw email accepted.
    pub max_message_bytes: u64,
    /// Largest byte run returned inline.
    pub max_inline_bytes: u64,
    /// Ids per batch call.
    pub max_ids_per_call: u32,
    /// Page size of query and search.
    pub max_query_limit: u32,
    /// maxChanges of changes.
    pub max_changes: u32,
    /// Recipients per deliver or submit.
    pub max_recipients: u32,
    /// Names and keywords, in bytes.
    pub max_name_bytes: u32,
    /// Search query text, in bytes.
    pub max_search_query_bytes: u32,
    /// Watches one connection may hold at once.
    pub max_watches: u32,
}

/// What the server said in `hello`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServerInfo {
    /// Protocol versions it speaks.
    pub versions: Vec<u32>,
    /// Software name and version.
    pub software: String,
    /// Its limits.
    pub limits: Limits,
    /// Methods it serves, as `Interface.method`.
    pub features: Vec<String>,
}

impl ServerInfo {
    /// Whether the server serves `Interface.method`.
    pub fn serves(&self, method: &str) -> bool {
        self.features.iter().any(|f| f == method)
    }
}

/// An account's facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AccountInfo {
    /// Id.
    pub id: u64,
    /// Login name.
    pub name: String,
    /// Created, ms since the epoch.
    pub created_at: i64,
    /// Byte quota (0 = unlimited).
    pub quota_bytes: u64,
    /// Message quota (0 = unlimited).
    pub quota_messages: u64,
    /// Bytes used.
    pub used_bytes: u64,
    /// Messages stored.
    pub used_messages: u64,
    /// The primary address (the default sender).
    pub address: String,
}

/// A mailbox's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// None.
    None,
    /// Inbox.
    Inbox,
    /// Sent.
    Sent,
    /// Drafts.
    Drafts,
    /// Junk.
    Junk,
    /// Trash.
    Trash,
    /// Archive.
    Archive,
}

/// A mailbox with its counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mailbox {
    /// Id.
    pub id: MailboxId,
    /// Name.
    pub name: String,
    /// Parent (None at top level).
    pub parent: Option<MailboxId>,
    /// Role.
    pub role: Role,
    /// Emails in it.
    pub total: u32,
    /// Unread emails in it.
    pub unread: u32,
}

/// One address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Address {
    /// Display name ("" when absent).
    pub name: String,
    /// The address itself.
    pub email: String,
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.name.is_empty(), self.email.is_empty()) {
            (true, _) => f.write_str(&self.email),
            (false, true) => f.write_str(&self.name),
            (false, false) => write!(f, "{} <{}>", self.name, self.email),
        }
    }
}

/// An email's metadata (never its body; see `Session::raw`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Email {
    /// Id.
    pub id: u64,
    /// Thread id.
    pub thread_id: u64,
    /// Mailboxes it is in.
    pub mailbox_ids: Vec<u64>,
    /// Keywords (`$seen`, `$flagged`, ...).
    pub keywords: Vec<String>,
    /// Arrival time, ms since the epoch.
    pub received_at: i64,
    /// Raw size in bytes.
    pub size: u64,
    /// Subject.
    pub subject: String,
    /// From.
    pub from: Vec<Address>,
    /// To.
    pub to: Vec<Address>,
    /// Cc.
    pub cc: Vec<Address>,
    /// Bcc.
    pub bcc: Vec<Address>,
    /// Reply-To.
    pub reply_to: Vec<Address>,
    /// Sender.
    pub sender: Vec<Address>,
    /// Date header, ms since the epoch (0 when absent).
    pub sent_at: i64,
    /// Message-ID.
    pub message_id: String,
    /// In-Reply-To.
    pub in_reply_to: Vec<String>,
    /// References.
    pub references: Vec<String>,
    /// Text preview.
    pub preview: String,
    /// Whether it has attachments.
    pub has_attachment: bool,
    /// Body structure (when asked for with [`Property::BodyStructure`]).
    pub body: Option<Part>,
    /// Spam and virus verdicts (when asked for with [`Property::Filter`]).
    pub filter: Option<FilterVerdict>,
}

/// A filter's verdict on one aspect of an email.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// No filter looked (mail stored before filters ran, or filed by the
    /// account itself).
    #[default]
    Unknown,
    /// Looked, found nothing.
    Clean,
    /// Spam.
    Spam,
    /// A virus (never stored; here for completeness).
    Virus,
}

/// What the server's filters said of an email, and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FilterVerdict {
    /// Spam or not (a user's report overrides the classifier).
    pub spam: Verdict,
    /// The spam score (points; the server's junk and reject scores are
    /// its own settings).
    pub score: f32,
    /// Each contribution to the score, named, with its points.
    pub reasons: Vec<String>,
    /// Whether a virus scanner passed it.
    pub virus: Verdict,
}

/// One node of a message's body structure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Part {
    /// IMAP-style part number ("1", "2.1"; "" for a multipart root).
    pub part_id: String,
    /// `type/subtype`, lower case.
    pub mime_type: String,
    /// Charset ("" when none).
    pub charset: String,
    /// "inline", "attachment" or "".
    pub disposition: String,
    /// File name, decoded.
    pub file_name: String,
    /// Content-ID.
    pub content_id: String,
    /// Decoded size in bytes.
    pub size: u64,
    /// Children.
    pub sub_parts: Vec<Part>,
}

impl Part {
    /// This part and all below it, depth first.
    pub fn walk(&self) -> Vec<&Part> {
        let mut out = vec![self];
        for p in &self.sub_parts {
            out.extend(p.walk());
        }
        out
    }
}

/// What kind of object a change log entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ObjectKind {
    /// Emails.
    Email,
    /// Mailboxes (including their counts).
    Mailbox,
    /// Threads.
    Thread,
    /// Submissions (their delivery status).
    Submission,
}

/// What changed since a state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// The state asked about.
    pub old_state: State,
    /// The state these changes bring the client to.
    pub new_state: State,
    /// Whether more changes follow (call again from `new_state`).
    pub has_more: bool,
    /// Created since.
    pub created: Vec<u64>,
    /// Updated since.
    pub updated: Vec<u64>,
    /// Destroyed since.
    pub destroyed: Vec<u64>,
}

/// Outcome of a batch update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateResult {
    /// State before.
    pub old_state: State,
    /// State after.
    pub new_state: State,
    /// Ids changed.
    pub updated: Vec<EmailId>,
    /// Ids not changed, with why.
    pub not_updated: Vec<(EmailId, crate::Error)>,
}

/// A thread and its emails, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Thread {
    /// Id.
    pub id: u64,
    /// Members, oldest first.
    pub email_ids: Vec<EmailId>,
}

impl Email {
    /// Whether it lacks `$seen`.
    pub fn is_unread(&self) -> bool {
        !self.keywords.iter().any(|k| k == "$seen")
    }
}

/// Property groups of `Session::get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property {
    /// Subject, addresses, dates, message ids.
    Envelope,
    /// Keywords.
    Keywords,
    /// Mailbox ids.
    Mailboxes,
    /// Preview and has-attachment.
    Preview,
    /// The MIME body structure.
    BodyStructure,
    /// Spam and virus verdicts, with reasons.
    Filter,
}

/// A query over one account's mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Only this mailbox (None: all mail).
    pub mailbox: Option<MailboxId>,
    /// Some(true): only unread; Some(false): only read.
    pub unread: Option<bool>,
    /// Some(true): only flagged; Some(false): only unflagged.
    pub flagged: Option<bool>,
    /// Some(true): only with attachments; Some(false): only without.
    pub has_attachment: Option<bool>,
    /// Received at or after (ms since the epoch).
    pub after: Option<i64>,
    /// Received before (ms since the epoch).
    pub before: Option<i64>,
    /// Exact From address.
    pub from: Option<String>,
    /// Exact address in To, Cc or Bcc.
    pub to: Option<String>,
    /// Newest first (the default) or oldest first.
    pub newest_first: bool,
    /// Index of the first result.
    pub position: u32,
    /// Start at this email instead, shifted by the offset.
    pub anchor: Option<(EmailId, i32)>,
    /// Page size (0 = the server's maximum).
    pub limit: u32,
    /// One result per thread.
    pub collapse_threads: bool,
    /// Only emails this search matches (the query language of
    /// `Session::search`); watched with `Session::watch_query`, a live
    /// search.
    pub text: Option<String>,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            mailbox: None,
            unread: None,
            flagged: None,
            has_attachment: None,
            after: None,
            before: None,
            from: None,
            to: None,
            newest_first: true,
            position: 0,
            anchor: None,
            limit: 50,
            collapse_threads: false,
            text: None,
        }
    }
}

impl Query {
    /// All mail, newest first, first 50.
    pub fn all() -> Self {
        Query::default()
    }

    /// One mailbox, newest first, first 50.
    pub fn mailbox(id: MailboxId) -> Self {
        Query { mailbox: Some(id), ..Query::default() }
    }

    /// Only unread emails.
    pub fn unread(mut self) -> Self {
        self.unread = Some(true);
        self
    }

    /// Only flagged emails.
    pub fn flagged(mut self) -> Self {
        self.flagged = Some(true);
        self
    }

    /// Page size.
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = n;
        self
    }

    /// Start at this index.
    pub fn position(mut self, p: u32) -> Self {
        self.position = p;
        self
    }

    /// Oldest first.
    pub fn oldest_first(mut self) -> Self {
        self.newest_first = false;
        self
    }

    /// One result per thread.
    pub fn collapse_threads(mut self) -> Self {
        self.collapse_threads = true;
        self
    }

    /// Only emails `search` matches (e.g. `from:alice invoice`).
    pub fn matching(mut self, search: &str) -> Self {
        self.text = Some(search.to_owned());
        self
    }
}

/// One page of a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryPage {
    /// Email ids in order.
    pub ids: Vec<EmailId>,
    /// Index of the first.
    pub position: u32,
    /// Size of the whole result.
    pub total: u64,
    /// The state the page reflects.
    pub state: State,
}

/// What changed in a query's results (see `Session::query_changes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueryChanges {
    /// The state the changes start from.
    pub old_state: State,
    /// The state they bring the results to.
    pub new_state: State,
    /// Ids that may have left the results (remove them first).
    pub removed: Vec<EmailId>,
    /// Ids in the results now, with their index, in index order (insert
    /// them after removing).
    pub added: Vec<(EmailId, u32)>,
    /// Size of the whole result now.
    pub total: u64,
}

impl QueryChanges {
    /// Applies the changes to a window of the results (the first `limit`
    /// of them; 0 = all).
    pub fn apply(&self, ids: &mut Vec<EmailId>, limit: usize) {
        ids.retain(|i| !self.removed.contains(i));
        for (id, index) in &self.added {
            let at = (*index as usize).min(ids.len());
            ids.retain(|i| i != id);
            ids.insert(at.min(ids.len()), *id);
        }
        if limit > 0 {
            ids.truncate(limit);
        }
    }
}

/// An SMTP envelope for `Gateway::deliver`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path ("" for the null sender).
    pub mail_from: String,
    /// Recipients.
    pub rcpt_to: Vec<String>,
    /// The SMTP client's IP ("" when local).
    pub remote_ip: String,
    /// HELO/EHLO name.
    pub helo: String,
    /// Whether the SMTP session used TLS.
    pub tls: bool,
}

/// Outcome of delivering to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryResult {
    /// The recipient as given.
    pub recipient: String,
    /// The new email's id, or why it was not delivered.
    pub outcome: Result<EmailId, crate::Error>,
}

/// An app token's public facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppToken {
    /// Id.
    pub id: u64,
    /// Label.
    pub label: String,
    /// Created, ms since the epoch.
    pub created_at: i64,
}

/// Where one recipient of a submission stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubmissionStatus {
    /// Not tried yet.
    Queued,
    /// Accepted by the recipient's server.
    Delivered,
    /// Failed temporarily; retried.
    Deferred,
    /// Failed for good (a bounce is in the Inbox).
    Failed,
    /// Withdrawn before it left.
    Cancelled,
}

/// One recipient of a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecipientStatus {
    /// The address.
    pub recipient: String,
    /// Where it stands.
    pub status: SubmissionStatus,
    /// The last SMTP reply or error.
    pub reply: String,
}

/// A message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Submission {
    /// Its id (for `submissions` and `cancel_submission`).
    pub id: u64,
    /// The copy in Sent.
    pub email_id: EmailId,
    /// Each recipient.
    pub recipients: Vec<RecipientStatus>,
    /// The envelope sender.
    pub mail_from: String,
    /// When it was submitted (ms since the epoch).
    pub created_at: i64,
    /// Not sent before this (ms); cancel until then.
    pub send_at: i64,
    /// When the next attempt is due (0: nothing pending).
    pub next_attempt_at: i64,
    /// Delivery attempts begun.
    pub attempts: u32,
    /// Pending recipients fail after this.
    pub expires_at: i64,
}

/// A message leased to the outbound worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundItem {
    /// The submission.
    pub id: u64,
    /// The envelope sender ("" for the null sender).
    pub mail_from: String,
    /// The remote recipients still pending.
    pub recipients: Vec<String>,
    /// The message.
    pub raw: Vec<u8>,
    /// Which attempt this is; pass it back to `complete_outbound`.
    pub attempt: u32,
}

/// What happened to one recipient of an outbound attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Accepted by the recipient's server.
    Delivered,
    /// Try again later.
    TempFail,
    /// Give up: the sender gets a bounce.
    PermFail,
}

/// One recipient's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    /// The address.
    pub recipient: String,
    /// What happened.
    pub kind: OutcomeKind,
    /// The SMTP reply (or the error) behind it.
    pub reply: String,
}

/// Where a search hit matched, with the matched words' byte ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snippet {
    /// "subject", "body" or "attachment".
    pub field: String,
    /// Text around the match.
    pub text: String,
    /// Byte ranges of the matched words in `text`.
    pub highlights: Vec<(u32, u32)>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SearchHit {
    /// The email.
    pub id: EmailId,
    /// Where it matched.
    pub snippets: Vec<Snippet>,
}

/// A page of search results, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SearchPage {
    /// The hits.
    pub hits: Vec<SearchHit>,
    /// Matches in all.
    pub total: u64,
    /// The account's state the result is of.
    pub state: State,
}
