//! [`Session`]: one account's mail.

use quail_protocol::quail_capnp::{ObjectKind as WireKind, Property as WireProperty, Sort, Tristate};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::types::{
    AccountInfo, AppToken, Changes, Email, EmailId, Envelope, Mailbox, MailboxId, ObjectKind, Property,
    Query, QueryChanges, QueryPage, SearchHit, SearchPage, Snippet, State, Submission, Thread, UpdateResult,
};
use crate::wire;

/// A logged-in account. Dropping it releases the server-side session.
#[derive(Debug)]
pub struct Session {
    client: Client,
    cap: u64,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.client.release(self.cap);
    }
}

/// A run of an email's raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByteRun {
    /// Size of the whole message.
    pub total_size: u64,
    /// Where `data` starts.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Writes a query's parameters.
pub(crate) fn write_query(mut b: quail_protocol::quail_capnp::query::Builder<'_>, q: &Query) {
    let tri = |v: Option<bool>| match v {
        None => Tristate::Any,
        Some(true) => Tristate::Yes,
        Some(false) => Tristate::No,
    };
    {
        let mut f = b.reborrow().init_filter();
        f.set_in_mailbox(q.mailbox.map_or(0, |m| m.0));
        f.set_unread(tri(q.unread));
        f.set_flagged(tri(q.flagged));
        f.set_has_attachment(tri(q.has_attachment));
        f.set_after(q.after.unwrap_or(0));
        f.set_before(q.before.unwrap_or(0));
        f.set_from(q.from.as_deref().unwrap_or_default());
        f.set_to(q.to.as_deref().unwrap_or_default());
    }
    b.set_collapse_threads(q.collapse_threads);
    if let Some(t) = &q.text {
        b.set_text(t.as_str());
    }
    b.set_sort(if q.newest_first { Sort::ReceivedDesc } else { Sort::ReceivedAsc });
    b.set_position(q.position);
    if let Some((anchor, offset)) = q.anchor {
        b.set_anchor(anchor.0);
        b.set_anchor_offset(offset);
    }
    b.set_limit(q.limit);
}

/// Reads a query page.
pub(crate) fn read_page(r: quail_protocol::quail_capnp::query_result::Reader<'_>) -> Result<QueryPage> {
    Ok(QueryPage {
        ids: r.get_ids()?.iter().map(EmailId).collect(),
        position: r.get_position(),
        total: r.get_total(),
        state: State(r.get_query_state()),
    })
}

/// Reads query changes.
pub(crate) fn read_query_changes(
    r: quail_protocol::quail_capnp::query_changes::Reader<'_>,
) -> Result<QueryChanges> {
    Ok(QueryChanges {
        old_state: State(r.get_old_query_state()),
        new_state: State(r.get_new_query_state()),
        removed: r.get_removed()?.iter().map(EmailId).collect(),
        added: r.get_added()?.iter().map(|a| (EmailId(a.get_id()), a.get_index())).collect(),
        total: r.get_total(),
    })
}

/// A byte run, with the bulk token and BLAKE3 when its bytes travel apart.
type Run = (ByteRun, Option<Vec<u8>>, Option<[u8; 32]>);

/// What a byte run is of.
#[derive(Debug, Clone)]
enum Target {
    Raw(EmailId),
    Part(EmailId, String),
}

/// Asks for a byte run on the connection thread: the run (data filled when
/// inline), and the bulk token and BLAKE3 when the bytes travel apart.
async fn byte_run_on(
    conn: &crate::client::Conn,
    cap: u64,
    target: Target,
    offset: u64,
    length: u64,
) -> Result<Run> {
    let session = conn.session(cap)?;
    let resp = match target {
        Target::Raw(id) => {
            let mut req = session.raw_request();
            req.get().set_id(id.0);
            let mut r = req.get().init_range();
            r.set_offset(offset);
            r.set_length(length);
            let resp = req.send().promise.await?;
            read_run(resp.get()?.get_bytes()?)?
        }
        Target::Part(id, part) => {
            let mut req = session.fetch_part_request();
            req.get().set_id(id.0);
            req.get().set_part_id(part.as_str());
            let mut r = req.get().init_range();
            r.set_offset(offset);
            r.set_length(length);
            let resp = req.send().promise.await?;
            read_run(resp.get()?.get_bytes()?)?
        }
    };
    Ok(resp)
}

fn read_run(b: quail_protocol::quail_capnp::byte_run::Reader<'_>) -> Result<Run> {
    use quail_protocol::quail_capnp::byte_run::Which;
    let mut run = ByteRun { total_size: b.get_total_size(), offset: b.get_offset(), data: Vec::new() };
    let hash = if b.has_blake3() { <[u8; 32]>::try_from(b.get_blake3()?).ok() } else { None };
    match b.which()? {
        Which::Inline(d) => {
            run.data = d?.to_vec();
            Ok((run, None, None))
        }
        Which::BulkToken(t) => Ok((run, Some(t?.to_vec()), hash)),
    }
}

impl Session {
    pub(crate) fn new(client: Client, cap: u64) -> Self {
        Session { client, cap }
    }

    /// The connection this session runs on.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Watches the account: every durable change after the returned
    /// watch's [`Watch::start_state`] arrives as an event (coalesced while
    /// the previous one is unread). Drop the watch to unsubscribe.
    pub async fn watch(&self) -> Result<crate::watch::Watch> {
        crate::watch::Watch::start(self.client.clone(), self.cap).await
    }

    /// An attenuated session to hand on (a widget, a delegate): it sees
    /// only `mailboxes` (empty: the same as this one) and the emails in
    /// them, writes nothing when `read_only`, and ends at `expires_at`
    /// (ms since the epoch; `None`: never). It can never reach more than
    /// this session, and it ends when this one is dropped or its
    /// credential is revoked. Outside its scope, reads answer `NotFound`
    /// and everything else `Forbidden`.
    pub async fn restrict(
        &self,
        mailboxes: &[MailboxId],
        read_only: bool,
        expires_at: Option<i64>,
    ) -> Result<Session> {
        let cap = self.cap;
        let boxes: Vec<u64> = mailboxes.iter().map(|m| m.0).collect();
        let child = self
            .client
            .call(move |conn| async move {
                let mut req = conn.session(cap)?.restrict_request();
                req.get().set_mailboxes(&boxes[..])?;
                req.get().set_read_only(read_only);
                req.get().set_expires_at(expires_at.unwrap_or(0));
                let resp = req.send().promise.await?;
                Ok(conn.insert(crate::client::Cap::Session(resp.get()?.get_session()?)))
            })
            .await?;
        Ok(Session::new(self.client.clone(), child))
    }

    /// The account's facts and current state.
    pub async fn account(&self) -> Result<(AccountInfo, State)> {
        let cap = self.cap;
        self.client
            .call(move |conn| async move {
                let resp = conn.session(cap)?.account_request().send().promise.await?;
                let r = resp.get()?;
                Ok((wire::account(r.get_account()?)?, State(r.get_state())))
            })
            .await
    }

    /// The account's mailboxes with their counts.
    pub async fn mailboxes(&self) -> Result<(Vec<Mailbox>, State)> {
        let cap = self.cap;
        self.client
            .call(move |conn| async move {
                let resp = conn.session(cap)?.mailboxes_request().send().promise.await?;
                let r = resp.get()?;
                let boxes = r.get_mailboxes()?.iter().map(wire::mailbox).collect::<Result<_>>()?;
                Ok((boxes, State(r.get_state())))
            })
            .await
    }

    /// One page of the emails a query selects.
    pub async fn query(&self, q: &Query) -> Result<QueryPage> {
        let cap = self.cap;
        let q = q.clone();
        self.client
            .call(move |conn| async move {
                let session = conn.session(cap)?;
                let mut req = session.query_request();
                write_query(req.get().init_query(), &q);
                let resp = req.send().promise.await?;
                read_page(resp.get()?.get_result()?)
            })
            .await
    }

    /// What changed in a query's results since `since` (a `QueryPage`'s
    /// state): ids that may have left (`removed`) and ids now in the results
    /// with their index (`added`); an id in both moved. Applied to the
    /// result as it was, in that order, it gives the result as it is.
    /// `CannotCalculateChanges` when the server cannot say: query again.
    pub async fn query_changes(&self, q: &Query, since: State, max: u32) -> Result<QueryChanges> {
        let cap = self.cap;
        let q = q.clone();
        self.client
            .call(move |conn| async move {
                let mut req = conn.session(cap)?.query_changes_request();
                write_query(req.get().init_query(), &q);
                req.get().set_since_query_state(since.0);
                req.get().set_max_changes(max);
                let resp = req.send().promise.await?;
                read_query_changes(resp.get()?.get_changes()?)
            })
            .await
    }

    /// Watches a window of a query ("unread in Inbox, newest 50"): the
    /// first page now, then every change of that window as it happens
    /// (durably), as a `Stream` of [`QueryChanges`]. Drop it to stop.
    pub async fn watch_query(&self, q: &Query) -> Result<crate::watch::QueryWatch> {
        crate::watch::QueryWatch::start(self.client.clone(), self.cap, q.clone()).await
    }

    /// Emails by id. Ids this account does not have come back in the
    /// second list (another account's ids included: they are simply not found).
    /// A duplicate id is answered once. When the server's answer would not
    /// fit one message it returns part and names the rest; this asks again
    /// until every id is answered.
    pub async fn get(&self, ids: &[EmailId], properties: &[Property]) -> Result<(Vec<Email>, Vec<EmailId>)> {
        let mut emails = Vec::new();
        let mut missing = Vec::new();
        let mut left: Vec<EmailId> = ids.to_vec();
        while !left.is_empty() {
            let (found, not_found, not_fetched) = self.get_once(&left, properties).await?;
            if found.is_empty() && not_found.is_empty() && !not_fetched.is_empty() {
                return Err(Error::Protocol("the server answered get with nothing".into()));
            }
            emails.extend(found);
            missing.extend(not_found);
            left = not_fetched;
        }
        Ok((emails, missing))
    }

    /// One `get` call: found, not found, not fetched (ask again).
    async fn get_once(
        &self,
        ids: &[EmailId],
        properties: &[Property],
    ) -> Result<(Vec<Email>, Vec<EmailId>, Vec<EmailId>)> {
        let cap = self.cap;
        let ids: Vec<u64> = ids.iter().map(|i| i.0).collect();
        let props: Vec<WireProperty> = properties
            .iter()
            .map(|p| match p {
                Property::Envelope => WireProperty::Envelope,
                Property::Keywords => WireProperty::Keywords,
                Property::Mailboxes => WireProperty::Mailboxes,
                Property::Preview => WireProperty::Preview,
                Property::BodyStructure => WireProperty::BodyStructure,
                Property::Filter => WireProperty::Filter,
            })
            .collect();
        self.client
            .call(move |conn| async move {
                let session = conn.session(cap)?;
                let mut req = session.get_request();
                req.get().set_ids(&ids[..])?;
                {
                    let mut l = req.get().init_properties(props.len() as u32);
                    for (i, p) in props.iter().enumerate() {
                        l.set(i as u32, *p);
                    }
                }
                let resp = req.send().promise.await?;
                let r = resp.get()?;
                let emails = r.get_emails()?.iter().map(wire::email).collect::<Result<_>>()?;
                let missing = r.get_not_found()?.iter().map(EmailId).collect();
                let later = r.get_not_fetched()?.iter().map(EmailId).collect();
                Ok((emails, missing, later))
            })
            .await
    }

    /// One email by id; `NotFound` if this account does not have it.
    pub async fn email(&self, id: EmailId) -> Result<Email> {
        let (mut emails, _) = self.get(&[id], &[]).await?;
        emails.pop().ok_or_else(|| Error::NotFound(format!("no email {}", id.0)))
    }

    /// A byte range of an email's raw message (`length` 0: to the end). The
    /// server may return fewer bytes than asked (its inline limit).
    pub async fn raw_range(&self, id: EmailId, offset: u64, length: u64) -> Result<ByteRun> {
        self.run_in_memory(Target::Raw(id), offset, length).await
    }

    /// The decoded content of one MIME part (`part_id` as in
    /// [`crate::Part::part_id`]): text as UTF-8, anything else as its bytes
    /// after the transfer encoding. Large parts travel on a bulk stream,
    /// verified by their BLAKE3.
    pub async fn fetch_part(&self, id: EmailId, part_id: &str) -> Result<Vec<u8>> {
        Ok(self.fetch_part_range(id, part_id, 0, 0).await?.data)
    }

    /// A byte range of one MIME part's decoded content (`length` 0: to the
    /// end): only about those bytes cross the network.
    pub async fn fetch_part_range(
        &self,
        id: EmailId,
        part_id: &str,
        offset: u64,
        length: u64,
    ) -> Result<ByteRun> {
        self.run_in_memory(Target::Part(id, part_id.to_owned()), offset, length).await
    }

    /// Starts fetching a range of a part for [`Session::download_to`]:
    /// for large parts written to a file with progress, and resumable on a
    /// new connection if this one is lost.
    pub async fn start_fetch_part(
        &self,
        id: EmailId,
        part_id: &str,
        offset: u64,
        length: u64,
    ) -> Result<crate::transfer::Download> {
        let (run, token, hash) = self.byte_run(Target::Part(id, part_id.to_owned()), offset, length).await?;
        Ok(crate::transfer::Download::new(run, token, hash))
    }

    /// Offers a blob to the account: its size and BLAKE3 first. When the
    /// account already holds those bytes, nothing is sent
    /// ([`crate::Upload::have`]); otherwise [`Session::send_upload`] sends
    /// them.
    pub async fn start_upload(&self, bytes: &[u8], mime_type: &str) -> Result<crate::Upload> {
        let hash = *blake3::hash(bytes).as_bytes();
        let size = bytes.len() as u64;
        let (cap, mime_type) = (self.cap, mime_type.to_owned());
        let (token, have) = self
            .client
            .call(move |conn| async move {
                let mut req = conn.session(cap)?.upload_request();
                req.get().set_size(size);
                req.get().set_mime_type(mime_type.as_str());
                req.get().set_blake3(&hash);
                let resp = req.send().promise.await?;
                let r = resp.get()?;
                let token = if r.has_token() { Some(r.get_token()?.to_vec()) } else { None };
                Ok((token.filter(|t| !t.is_empty()), r.get_have()))
            })
            .await?;
        Ok(crate::Upload { blob_id: hash, size, have, token, written: Default::default(), done: false })
    }

    /// Sends an upload's bytes (`bytes` as offered), resuming after what
    /// the server already holds: after a lost connection, call it again on
    /// any session of the same account, within ten minutes. Returns once
    /// the blob is durable.
    pub async fn send_upload(&self, upload: &mut crate::Upload, bytes: &[u8]) -> Result<()> {
        if upload.is_done() {
            return Ok(());
        }
        if bytes.len() as u64 != upload.size || *blake3::hash(bytes).as_bytes() != upload.blob_id {
            return Err(Error::InvalidInput("these are not the bytes that were offered".into()));
        }
        let token =
            upload.token.clone().ok_or_else(|| Error::Protocol("an upload without a token".into()))?;
        let data: std::sync::Arc<[u8]> = bytes.into();
        let written = std::sync::Arc::clone(&upload.written);
        self.client
            .call(move |conn| async move {
                // Right after a connection died, the server may not have
                // seen the old transfer end yet: wait for it a little.
                let mut tries = 0;
                let held = loop {
                    match conn.upload_held(&token).await {
                        Err(Error::Unavailable(_)) if tries < 50 => {
                            tries += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        other => break other?,
                    }
                };
                conn.upload_from(&token, held, &data, &written).await
            })
            .await?;
        upload.done = true;
        Ok(())
    }

    /// [`Session::start_upload`] and [`Session::send_upload`] at once.
    pub async fn upload(&self, bytes: &[u8], mime_type: &str) -> Result<crate::Upload> {
        let mut up = self.start_upload(bytes, mime_type).await?;
        self.send_upload(&mut up, bytes).await?;
        Ok(up)
    }

    /// Writes a download's bytes to `out` from where it stands, calling
    /// `progress(done, total)` as they arrive, and checks their BLAKE3 at
    /// the end. When the connection breaks, the download keeps its place:
    /// call this again, on any session of the same account (a new
    /// connection too), within a couple of minutes, and it resumes.
    pub async fn download_to(
        &self,
        download: &mut crate::transfer::Download,
        out: &mut (dyn std::io::Write + Send),
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<()> {
        download.run(&self.client, out, progress).await
    }

    async fn run_in_memory(&self, target: Target, offset: u64, length: u64) -> Result<ByteRun> {
        let cap = self.cap;
        self.client
            .call(move |conn| async move {
                let (mut run, token, hash) = byte_run_on(&conn, cap, target, offset, length).await?;
                if let Some(token) = token {
                    let len = run.total_size.saturating_sub(run.offset).min(if length == 0 {
                        u64::MAX
                    } else {
                        length
                    });
                    run.data = conn.download(&token, len, hash).await?;
                }
                Ok(run)
            })
            .await
    }

    async fn byte_run(&self, target: Target, offset: u64, length: u64) -> Result<Run> {
        let cap = self.cap;
        self.client
            .call(move |conn| async move { byte_run_on(&conn, cap, target, offset, length).await })
            .await
    }

    /// An email's whole raw message, byte for byte as it was received.
    pub async fn raw(&self, id: EmailId) -> Result<Vec<u8>> {
        let first = self.raw_range(id, 0, 0).await?;
        let mut out = first.data;
        while (out.len() as u64) < first.total_size {
            let next = self.raw_range(id, out.len() as u64, 0).await?;
            if next.data.is_empty() {
                return Err(Error::Protocol("server returned an empty byte run".into()));
            }
            out.extend_from_slice(&next.data);
        }
        Ok(out)
    }

    /// Searches the account's mail (the query language is in the README:
    /// words, "phrases", `from:` and the other scopes, `OR`, `-`, `is:`,
    /// `in:`, `has:attachment`, dates and sizes), newest first, `limit`
    /// hits from `position` (0 = the server's page size), with snippets.
    /// A malformed query is `InvalidInput` naming the position.
    pub async fn search(&self, query: &str, position: u32, limit: u32) -> Result<SearchPage> {
        self.search_in_order(query, position, limit, false).await
    }

    /// [`Session::search`] with the best match first: the rarer a matched
    /// word is in the account and the weightier its field (subject, then
    /// sender and file names, then recipients, then body), the earlier.
    pub async fn search_by_relevance(&self, query: &str, position: u32, limit: u32) -> Result<SearchPage> {
        self.search_in_order(query, position, limit, true).await
    }

    async fn search_in_order(
        &self,
        query: &str,
        position: u32,
        limit: u32,
        relevance: bool,
    ) -> Result<SearchPage> {
        let (cap, query) = (self.cap, query.to_owned());
        self.client
            .call(move |conn| async move {
                let mut req = conn.session(cap)?.search_request();
                req.get().set_query(query.as_str());
                req.get().set_position(position);
                req.get().set_limit(limit);
                req.get().set_by_relevance(relevance);
                let resp = req.send().promise.await?;
                let r = resp.get()?;
                let mut hits = Vec::new();
                for h in r.get_hits()?.iter() {
                    let mut snippets = Vec::new();
                    for s in h.get_snippets()?.iter() {
                        snippets.push(Snippet {
                            field: s.get_field()?.to_str()?.to_owned(),
                            text: s.get_text()?.to_str()?.to_owned(),
                            highlights: s
                                .get_highlights()?
                                .iter()
                                .map(|x| (x.get_start(), x.get_end()))
                                .collect(),
                        });
                    }
                    hits.push(SearchHit { id: EmailId(h.get_id()), snippets });
                }
                Ok(SearchPage { hits, total: r.get_total(), state: State(r.get_query_state()) })
            })
            .await
    }

    /// Sends a message: files it in Sent and queues it for
    /// `envelope.rcpt_to` in one durable step (`envelope.mail_from` must be
    /// one of the account's addresses; "" = its primary one). With
    /// `send_at` (ms since the epoch) it waits until then, and
    /// [`Session::cancel_submission`] can still withdraw it. Messages larger
    /// than one inline run are uploaded first.
    pub async fn submit(&self, raw: &[u8], envelope: &Envelope, send_at: Option<i64>) -> Result<Submission> {
        let limit = self.client.server_info().limits.max_message_bytes;
        if limit > 0 && raw.len() as u64 > limit {
            return Err(Error::LimitExceeded(format!(
                "message of {} bytes; the server accepts at most {limit}",
                raw.len()
            )));
        }
        let blob = if raw.len() as u64 > self.client.server_info().limits.max_inline_bytes {
            Some(self.upload(raw, "message/rfc822").await?.blob_id)
        } else {
            None
        };
        let (cap, envelope, raw) = (self.cap, envelope.clone(), raw.to_vec());
        self.client
            .call(move |conn| async move {
                let mut req = conn.session(cap)?.submit_request();
                match blob {
                    Some(b) => req.get().set_blob_id(&b),
                    None => req.get().set_raw(&raw[..]),
                }
                req.get().set_send_at(send_at.unwrap_or(0));
                wire::write_envelope(req.get().init_envelope(), &envelope);
                let resp = req.send().promise.await?;
                wire::submission_of(resp.get()?.get_submission()?)
            })
            .await
    }

    /// Submissions by id, or with `ids` empty the ones still pending.
    pub async fn submissions(&self, ids: &[u64]) -> Result<Vec<Submission>> {
        let (cap, ids) = (self.cap, ids.to_vec());
        self.client
            .call(move |conn| async move {
                let mut req = conn.session(cap)?.submissions_request();
                req.get().set_ids(&ids[..])?;
                let resp = req.send().promise.await?;
                resp.get()?.get_submissions()?.iter().map(wire::submission_of).collect()
            })
            .await
    }

    /// Withdraws what of submission `id` has not left yet (undo send); its
    /// Sent copy moves to Drafts.
    pub async fn cancel_submission(&self, id: u64) -> Result<Submission> {
        let cap = self.cap;
        self.client
            .call(move |conn| async move {
                let mut req = conn.session(cap)?.cancel_submission_request();
                req.get().set_id(id);
                let resp = req.send().promise.await?;
                wire::submission_of(resp.get()?.get_submission()?)
            })
            .await
    }

    /// Creates a long-lived app token for [`Client::login_token`]; the secret
    /// is returned once.
    pub async fn create_app_token(&self, label: &str) -> Result<(String, AppToken)> {
        let cap = self.cap;
        let label = label.to_owned();
        self.client
            .call(move |conn| async move {
                let session = conn.session(cap)?;
                let mut req = session.create_app_token_request();
                req.get().set_label(label.as_str());
                let resp = req.send().promise.await?;
                let r = resp.get()?;
                let info = r.get_info()?;
                Ok((
                    r.get_token()?.to_str()?.to_owned(),
                    AppToken {
                        id: info.get_id(),
                        label: info.get_label()?.to_str()?.to_owned(),
                        created_at: info.get_created_at(),
                    },
                ))
            })
            .await
    }

    /// The account's app tokens.
    pub async fn app_tokens(&self) -> Result<Vec<AppToken>> {
        let cap = self.cap;
        self.client
            .call(move |conn| async move {
                let resp = conn.session(cap)?.list_app_tokens_request().send().promise.await?;
                resp.get()?
                    .get_tokens()?
                    .iter()
                    .map(|t| {
                        Ok(AppToken {
                            id: t.get_id(),
                            label: t.get_label()?.to_str()?.to_owned(),
                            created_at: t.get_created_at(),
                        })
                    })
                    .collect()
            })
            .await
    }

    /// Adds and removes keywords (`$seen`, `$flagged`, custom ones). With
    /// `if_in_state`, fails with [`Error::StateMismatch`] unless the account
    /// is at exactly that state.
    pub async fn set_keywords(
        &self,
        ids: &[EmailId],
        add: &[&str],
        remove: &[&str],
        if_in_state: Option<State>,
    ) -> Result<UpdateResult> {
        let cap = self.cap;
        let ids: Vec<u64> = ids.iter().map(|i| i.0).collect();
        let add: Vec<String> = add.iter().map(|s| (*s).to_owned()).collect();
        let remove: Vec<String> = remove.iter().map(|s| (*s).to_owned()).collect();
        self.client
            .call(move |conn| async move {
                let session = conn.session(cap)?;
                let mut req = session.set_keywords_request();
                let mut p = req.get();
                p.set_ids(&ids[..])?;
                let mut l = p.reborrow().init_add(add.len() as u32);
                for (i, k) in add.iter().enumerate() {
                    l.set(i as u32, k.as_str());
                }
                let mut l = p.reborrow().init_remove(remove.len() as u32);
                for (i, k) in remove.iter().enumerate() {
                    l.set(i as u32, k.as_str());
                }
                p.set_if_in_state(if_in_state.map_or(0, |s| s.0));
                let resp = req.send().promise.await?;
                wire::update_of(resp.get()?.get_result()?)
            })
            .await
    }

    /// Adds emails to and removes them from mailboxes.
    pub async fn move_emails(
        &self,
        ids: &[EmailId],
        add: &[MailboxId],
        remove: &[MailboxId],
        if_in_state: Option<State>,
    ) -> Result<UpdateResult> {
        let cap = self.cap;
        let ids: Vec<u64> = ids.iter().map(|i| i.0).collect();
        let add: Vec<u64> = add.iter().map(|i| i.0).collect();
        let remove: Vec<u64> = remove.iter().map(|i| i.0).collect();
        self.client
            .call(move |conn| async move {
                let session = conn.session(cap)?;
                let mut req = session.move_request();
                let mut p = req.get();
                p.set_ids(&ids[..])?;
                p.set_add_mailboxes(&add[..])?;
                p.set_remove_mailboxes(&remove[..])?;
                p.set_if_in_state(if_in_state.map_or(0, |s| s.0));
                let resp = req.send().promise.await?;
                wire::update_of(resp.get()?.get_result()?)
            })
            .await
    }

    /// Reports emails as spam (they move to Junk) or as not spam (they
    /// move from Junk to the Inbox); the server trains this account's spam
    /// model on each, so similar mail follows the user's judgement.
    pub async fn report_spam(&self, ids: &[EmailId], is_spam: bool) -> Result<UpdateResult> {
        let cap = self.cap;
        let ids: Vec<u64> = ids.iter().map(|i| i.0).collect();
        self.client
            .call(move |conn| async move {
                let session = conn.session(cap)?;
                let mut req = session.report_spam_request();
                req.get().set_ids(&ids[..])?;
                req.get().set_is_spam(is_spam);
                let resp = req.send().promise.await?;
                wire::update_of(resp.get()?.get_result()?)
            })
            .await
    }

    /// Moves emails to Trash; emails already only in Trash are expunged.
    pub async fn destroy(&self, ids: &[EmailId], if_in_state: Option<State>) -> Result<UpdateResult> {
        let cap = self.cap;
        let ids: Vec<u64> = ids.iter().map(|i| i.0).collect();
        self.client
            .call(move |conn| async move {
                let session = conn.session(cap)?;
                let mut req = session.destroy_request();
                req.get().set_ids(&ids[..])?;
                req.get().set_if_in_state(if_in_state.map_or(0, |s| s.0));
                let resp = req.send().promise.await?;
                wire::update_of(resp.get()?.get_result()?)
            })
            .await
    }

    /// What changed since `since` (at most `max`; 0 = the server's maximum).
    pub async fn changes(&self, kind: ObjectKind, since: State, max: u32) -> Result<Changes> {
        let cap = self.cap;
        self.client
            .call(move |conn| async move {
                let session = conn.session(cap)?;
                let mut req = session.changes_request();
                req.get().set_kind(match kind {
                    ObjectKind::Email => WireKind::Email,
                    ObjectKind::Mailbox => WireKind::Mailbox,
                    ObjectKind::Thread => WireKind::Thread,
                    ObjectKind::Submission => WireKind::Submission,
                });
                req.get().set_since_state(since.0);
                req.get().set_max_changes(max);
                let resp = req.send().promise.await?;
                wire::changes_of(resp.get()?.get_changes()?)
            })
            .await
    }

    /// Threads by id, with their emails oldest first; unknown ids come back
    /// in the second list.
    pub async fn threads(&self, ids: &[u64]) -> Result<(Vec<Thread>, Vec<u64>)> {
        let cap = self.cap;
        let ids = ids.to_vec();
        self.client
            .call(move |conn| async move {
                let session = conn.session(cap)?;
                let mut req = session.threads_request();
                req.get().set_ids(&ids[..])?;
                let resp = req.send().promise.await?;
                let r = resp.get()?;
                let threads = r
                    .get_threads()?
                    .iter()
                    .map(|t| {
                        Ok(Thread {
                            id: t.get_id(),
                            email_ids: t.get_email_ids()?.iter().map(EmailId).collect(),
                        })
                    })
                    .collect::<Result<_>>()?;
                Ok((threads, r.get_not_found()?.iter().collect()))
            })
            .await
    }

    /// Creates a mailbox (under `parent`, or at the top).
    pub async fn create_mailbox(&self, name: &str, parent: Option<MailboxId>) -> Result<(Mailbox, State)> {
        let cap = self.cap;
        let name = name.to_owned();
        self.client
            .call(move |conn| async move {
                let session = conn.session(cap)?;
                let mut req = session.create_mailbox_request();
                req.get().set_name(name.as_str());
                req.get().set_parent_id(parent.map_or(0, |p| p.0));
                let resp = req.send().promise.await?;
                let r = resp.get()?;
                Ok((wire::mailbox(r.get_mailbox()?)?, State(r.get_state())))
            })
            .await
    }

    /// Renames a mailbox and/or moves it under another parent.
    pub async fn rename_mailbox(
        &self,
        id: MailboxId,
        name: &str,
        parent: Option<MailboxId>,
    ) -> Result<(Mailbox, State)> {
        let cap = self.cap;
        let name = name.to_owned();
        self.client
            .call(move |conn| async move {
                let session = conn.session(cap)?;
                let mut req = session.rename_mailbox_request();
                req.get().set_id(id.0);
                req.get().set_name(name.as_str());
                req.get().set_parent_id(parent.map_or(0, |p| p.0));
                let resp = req.send().promise.await?;
                let r = resp.get()?;
                Ok((wire::mailbox(r.get_mailbox()?)?, State(r.get_state())))
            })
            .await
    }

    /// Deletes an empty mailbox without children.
    pub async fn delete_mailbox(&self, id: MailboxId) -> Result<State> {
        let cap = self.cap;
        self.client
            .call(move |conn| async move {
                let session = conn.session(cap)?;
                let mut req = session.delete_mailbox_request();
                req.get().set_id(id.0);
                let resp = req.send().promise.await?;
                Ok(State(resp.get()?.get_state()))
            })
            .await
    }

    /// Revokes one app token.
    pub async fn revoke_app_token(&self, id: u64) -> Result<()> {
        let cap = self.cap;
        self.client
            .call(move |conn| async move {
                let session = conn.session(cap)?;
                let mut req = session.revoke_app_token_request();
                req.get().set_id(id);
                req.send().promise.await?;
                Ok(())
            })
            .await
    }
}
