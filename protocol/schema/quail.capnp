@0xf4d3fef8e48c68a6;
# Quail protocol, version 1.
#
# Transport: QUIC (TLS 1.3, ALPN "quail/1"). Every bidirectional stream a
# client opens starts with one byte naming its kind (`streamKindRpc`,
# `streamKindBulk`). An RPC stream then carries the Cap'n Proto two-party RPC
# protocol (standard framing) with `Quail` as the server's bootstrap interface.
# A bulk stream carries the bytes of one large object (see `BulkRequest`).
#
# Errors. A method that fails raises a Cap'n Proto exception whose reason text
# is `quail:<code>: <message>`, where <code> is the name of an `ErrorCode`
# enumerant exactly as written below (e.g. `quail:notFound: no such email`).
# Exceptions propagate through promise pipelines, so `login(...).session.get()`
# fails with `badCredentials` when the login fails. Results that are naturally
# per item (one recipient of many, one id of a batch) carry an `Error` struct
# instead, so one bad item never fails the whole call.
#
# Ids are opaque 64-bit numbers; 0 is never a valid id and means "none".
# Times are milliseconds since the Unix epoch (UTC). States are per-account
# modification sequence numbers; the first state of an account is 1.
# Every list and byte count is bounded; `hello` announces the limits.

const protocolVersion :UInt32 = 1;
const alpn :Text = "quail/1";

const streamKindRpc :UInt8 = 1;
const streamKindBulk :UInt8 = 2;

# --------------------------------------------------------------------------
# Errors

enum ErrorCode {
  internal @0;               # server bug or storage failure; give up on this call
  unimplemented @1;          # the method exists in v1 but this server does not serve it yet
  badCredentials @2;         # wrong name, secret or token (never says which)
  notFound @3;               # no such object in this account
  limitExceeded @4;          # a list or byte count over a limit `hello` announced
  invalidArgument @5;        # malformed input: fix it and retry
  stateMismatch @6;          # `ifInState` did not match: refetch and retry
  cannotCalculateChanges @7; # the state is older than the change log: resync
  overQuota @8;              # the account's quota would be exceeded
  unavailable @9;            # transient (overload, shutting down, storage busy): retry later
  forbidden @10;             # the capability does not allow this
  alreadyExists @11;         # a name that must be unique is taken
  rejected @12;              # the content was refused (virus, spam policy)
  protocol @13;              # the peer broke the protocol (wrong stream kind, bad frame)
}

struct Error {
  code @0 :ErrorCode;
  message @1 :Text;
}

# --------------------------------------------------------------------------
# Handshake

struct Limits {
  maxRpcMessageBytes @0 :UInt64;  # largest Cap'n Proto message the server reads
  maxMessageBytes @1 :UInt64;     # largest raw email accepted by deliver/submit
  maxInlineBytes @2 :UInt64;      # largest byte run returned inline (raw, fetchPart)
  maxIdsPerCall @3 :UInt32;       # ids in one get / setKeywords / move / destroy
  maxQueryLimit @4 :UInt32;       # page size of query and search
  maxChanges @5 :UInt32;          # maxChanges of changes()
  maxRecipients @6 :UInt32;       # recipients of one deliver or submit
  maxNameBytes @7 :UInt32;        # account names, mailbox names, keywords
  maxSearchQueryBytes @8 :UInt32;
  maxWatches @9 :UInt32;          # watches one connection may hold at once
}

struct ServerInfo {
  versions @0 :List(UInt32);   # protocol versions this server speaks
  software @1 :Text;           # e.g. "quaild 0.1.0"
  limits @2 :Limits;
  features @3 :List(Text);     # methods this server serves, as "Interface.method";
                               # any other v1 method fails with `unimplemented`
}

# --------------------------------------------------------------------------
# Bootstrap

interface Quail {
  hello @0 (clientVersions :List(UInt32), clientName :Text) -> (info :ServerInfo);

  login @1 (name :Text, secret :Text) -> (session :Session);
  # Password login of a user account.

  loginToken @2 (token :Text) -> (session :Session);
  # Login with an app token from `Session.createAppToken`.

  gateway @3 (secret :Text) -> (gateway :Gateway);
  # The SMTP gateway's credential (generated into the server's data dir).

  admin @4 (secret :Text) -> (admin :Admin);
  # The operator's credential (generated into the server's data dir).
}

# --------------------------------------------------------------------------
# Accounts

struct AccountInfo {
  id @0 :UInt64;
  name @1 :Text;
  createdAt @2 :Int64;
  quotaBytes @3 :UInt64;     # 0 = unlimited
  quotaMessages @4 :UInt64;  # 0 = unlimited
  usedBytes @5 :UInt64;
  usedMessages @6 :UInt64;
  address @7 :Text;          # primary address: the sender when submit's mailFrom is ""
}

struct AppToken {
  id @0 :UInt64;
  label @1 :Text;
  createdAt @2 :Int64;
}

interface Admin {
  createAccount @0 (name :Text, password :Text, quotaBytes :UInt64, quotaMessages :UInt64)
      -> (account :AccountInfo);
  setPassword @1 (name :Text, password :Text) -> ();
  setQuota @2 (name :Text, quotaBytes :UInt64, quotaMessages :UInt64) -> (account :AccountInfo);
  listAccounts @3 (after :Text, limit :UInt32) -> (accounts :List(AccountInfo), more :Bool);
  # Accounts in name order, starting after `after` ("" = from the start).
  getAccount @4 (name :Text) -> (account :AccountInfo);
  revokeTokens @5 (name :Text) -> (revoked :UInt32);
  # Revokes every app token of the account.
}

# --------------------------------------------------------------------------
# Mail objects

enum Role {
  none @0;
  inbox @1;
  sent @2;
  drafts @3;
  junk @4;
  trash @5;
  archive @6;
}

struct Mailbox {
  id @0 :UInt64;
  name @1 :Text;
  parentId @2 :UInt64;   # 0 = top level
  role @3 :Role;
  total @4 :UInt32;
  unread @5 :UInt32;
}

struct Address {
  name @0 :Text;   # display name, decoded; "" when absent
  email @1 :Text;  # addr-spec; may be "" for groups or broken headers
}

struct Part {
  partId @0 :Text;        # IMAP numbering: "1", "1.2", ...; "" for the root of a multipart message
                          # (a non-multipart message's only part is "1")
  mimeType @1 :Text;      # lower case, e.g. "text/plain"
  charset @2 :Text;
  disposition @3 :Text;   # "inline", "attachment" or ""
  fileName @4 :Text;      # decoded (RFC 2047 / 2231)
  size @5 :UInt64;        # decoded size in bytes
  contentId @6 :Text;
  subParts @7 :List(Part);
}

enum Verdict {
  unknown @0;
  clean @1;
  spam @2;
  virus @3;
}

struct Email {
  id @0 :UInt64;
  threadId @1 :UInt64;
  mailboxIds @2 :List(UInt64);
  keywords @3 :List(Text);      # "$seen", "$flagged", ... and custom keywords
  receivedAt @4 :Int64;
  size @5 :UInt64;              # raw size in bytes

  # Envelope (present when `Property.envelope` was asked for)
  subject @6 :Text;
  from @7 :List(Address);
  sender @8 :List(Address);
  replyTo @9 :List(Address);
  to @10 :List(Address);
  cc @11 :List(Address);
  bcc @12 :List(Address);
  sentAt @13 :Int64;            # the Date header; 0 when absent or unparsable
  messageId @14 :Text;
  inReplyTo @15 :List(Text);
  references @16 :List(Text);

  preview @17 :Text;            # about 256 characters of body text
  hasAttachment @18 :Bool;
  bodyStructure @19 :Part;      # present when `Property.bodyStructure` was asked for

  spamVerdict @20 :Verdict;
  spamScore @21 :Float32;
  spamReasons @22 :List(Text);
  virusVerdict @23 :Verdict;
}

enum Property {
  envelope @0;       # subject, addresses, dates, message ids
  keywords @1;
  mailboxes @2;
  preview @3;
  bodyStructure @4;
  filter @5;         # spam and virus verdicts
}

# --------------------------------------------------------------------------
# Query

enum Tristate {
  any @0;
  yes @1;
  no @2;
}

struct Filter {
  inMailbox @0 :UInt64;       # 0 = any mailbox
  unread @1 :Tristate;        # yes = without $seen
  flagged @2 :Tristate;
  hasAttachment @3 :Tristate;
  after @4 :Int64;            # receivedAt >= after (0 = unbounded)
  before @5 :Int64;           # receivedAt < before (0 = unbounded)
  from @6 :Text;              # exact address (case-insensitive), "" = any
  to @7 :Text;                # exact address in To/Cc/Bcc, "" = any
}

enum Sort {
  receivedDesc @0;   # newest first
  receivedAsc @1;
}

struct Query {
  filter @0 :Filter;
  sort @1 :Sort;
  position @2 :UInt32;        # index of the first result (ignored when anchor != 0)
  anchor @3 :UInt64;          # start at this email id ...
  anchorOffset @4 :Int32;     # ... shifted by this many places
  limit @5 :UInt32;           # 0 = the server's maximum
  collapseThreads @6 :Bool;   # one result per thread (its newest email)
  text @7 :Text;              # a search (the query language of `search`):
                              # only emails it matches; "" = no search. A
                              # live query with one is a watched search.
}

struct QueryResult {
  ids @0 :List(UInt64);
  position @1 :UInt32;        # index of ids[0] in the full result
  total @2 :UInt64;
  queryState @3 :UInt64;      # the account state the result reflects
}

struct QueryChanges {
  oldQueryState @0 :UInt64;
  newQueryState @1 :UInt64;
  removed @2 :List(UInt64);
  added @3 :List(AddedItem);
  total @4 :UInt64;
  struct AddedItem {
    id @0 :UInt64;
    index @1 :UInt32;
  }
}

# --------------------------------------------------------------------------
# Changes and updates

enum ObjectKind {
  email @0;
  mailbox @1;
  thread @2;
  submission @3;     # a submission's status (Session.submissions)
}

struct Changes {
  oldState @0 :UInt64;
  newState @1 :UInt64;
  hasMore @2 :Bool;
  created @3 :List(UInt64);
  updated @4 :List(UInt64);
  destroyed @5 :List(UInt64);
}

struct ItemError {
  id @0 :UInt64;
  error @1 :Error;
}

struct UpdateResult {
  oldState @0 :UInt64;
  newState @1 :UInt64;
  updated @2 :List(UInt64);
  notUpdated @3 :List(ItemError);
}

struct Thread {
  id @0 :UInt64;
  emailIds @1 :List(UInt64);   # oldest first
}

# --------------------------------------------------------------------------
# Search

struct Highlight {
  start @0 :UInt32;   # byte offsets into the snippet text
  end @1 :UInt32;
}

struct Snippet {
  field @0 :Text;     # "subject", "from", "to", "body", "attachment"
  text @1 :Text;
  highlights @2 :List(Highlight);
}

struct SearchHit {
  id @0 :UInt64;
  snippets @1 :List(Snippet);
}

# --------------------------------------------------------------------------
# Bytes

struct Range {
  offset @0 :UInt64;
  length @1 :UInt64;   # 0 = to the end
}

struct ByteRun {
  totalSize @0 :UInt64;       # size of the whole object
  offset @1 :UInt64;          # where `data` (or the bulk transfer) starts
  union {
    inline @2 :Data;          # at most maxInlineBytes
    bulkToken @3 :Data;       # redeem on a bulk stream (see BulkRequest)
  }
  blake3 @4 :Data;            # with a bulkToken: BLAKE3 of the bytes it carries
                              # (all of them, from `offset`), to verify after
                              # the transfer, resumed or not
}

struct BulkRequest {
  # The first message on a bulk stream after its kind byte, in standard
  # Cap'n Proto framing. The server answers with a `BulkResponse` message and,
  # for a download, the bytes; for an upload the client sends the bytes after
  # its request and finishes the stream.
  token @0 :Data;
  offset @1 :UInt64;          # download: skip this many bytes of the transfer
                              # upload: the bytes sent start here (resume at
                              # what the server holds); 2^64-1 asks how many
                              # bytes it holds (BulkResponse.length), no data
                              # (resume after a broken one). The token stays
                              # good for a couple of minutes until one
                              # transfer completes, on any connection that
                              # holds a capability of the same account.
}

struct BulkResponse {
  error @0 :Error;            # absent on success
  length @1 :UInt64;          # bytes that follow (download) or were stored (upload)
}

# --------------------------------------------------------------------------
# Sending

struct SmtpEnvelope {
  mailFrom @0 :Text;           # reverse path, "" for the null sender
  rcptTo @1 :List(Text);
  remoteIp @2 :Text;           # the SMTP client's address, "" when local
  helo @3 :Text;
  tls @4 :Bool;
}

enum SubmissionStatus {
  queued @0;
  delivered @1;
  deferred @2;
  failed @3;
  cancelled @4;                # withdrawn by cancelSubmission before it left
}

struct RecipientStatus {
  recipient @0 :Text;
  status @1 :SubmissionStatus;
  reply @2 :Text;              # last SMTP reply or error
}

struct Submission {
  id @0 :UInt64;
  emailId @1 :UInt64;          # the copy in the Sent mailbox
  recipients @2 :List(RecipientStatus);
  mailFrom @3 :Text;
  createdAt @4 :Int64;         # ms since the epoch
  sendAt @5 :Int64;            # not before this (ms); undo send until then
  nextAttemptAt @6 :Int64;     # 0 when nothing is pending
  attempts @7 :UInt32;         # delivery attempts begun
  expiresAt @8 :Int64;         # pending recipients fail (with a DSN) after this
}

# --------------------------------------------------------------------------
# Push

interface Listener {
  changed @0 (state :UInt64, kinds :List(ObjectKind)) -> ();
  # The account's state moved to `state`, durably; `kinds` says which kinds
  # of object changed since the previous call. Call `changes` to see what.
  # Coalesced: the server makes one call at a time per listener and merges
  # what happens meanwhile into the next, so answer promptly; a listener
  # that does not answer within 30 s (or fails) ends its watch.
}

interface QueryListener {
  changed @0 (changes :QueryChanges) -> ();
  # The watched window changed, durably: remove `removed`, then insert
  # `added` at their indexes (ascending), then keep the window's length.
  # Coalesced and timed out like Listener.changed.
}

interface WatchHandle {
  # Holding it keeps the watch alive; dropping it unsubscribes.
}

# --------------------------------------------------------------------------
# Session: one account's mail. Holding it is the authority.

interface Session {
  account @0 () -> (account :AccountInfo, state :UInt64);

  mailboxes @1 () -> (mailboxes :List(Mailbox), state :UInt64);
  createMailbox @2 (name :Text, parentId :UInt64) -> (mailbox :Mailbox, state :UInt64);
  renameMailbox @3 (id :UInt64, name :Text, parentId :UInt64) -> (mailbox :Mailbox, state :UInt64);
  deleteMailbox @4 (id :UInt64) -> (state :UInt64);

  query @5 (query :Query) -> (result :QueryResult);
  queryChanges @6 (query :Query, sinceQueryState :UInt64, maxChanges :UInt32) -> (changes :QueryChanges);
  # What changed in the whole result of `query` (its position and limit are
  # ignored) since `sinceQueryState`: every email changed since may be in
  # `removed`; those in the result now are in `added` with their index (an
  # id in both moved or changed in place). `cannotCalculateChanges` when
  # the change log no longer reaches back, more than maxChanges emails
  # changed, or the query collapses threads: query again.
  get @7 (ids :List(UInt64), properties :List(Property))
      -> (emails :List(Email), notFound :List(UInt64), notFetched :List(UInt64));
  # Duplicate ids are answered once. `notFetched` holds ids left out because
  # the answer reached the size a client can read (maxRpcMessageBytes);
  # ask for them again.
  raw @8 (id :UInt64, range :Range) -> (bytes :ByteRun);
  fetchPart @9 (id :UInt64, partId :Text, range :Range) -> (bytes :ByteRun);
  threads @10 (ids :List(UInt64)) -> (threads :List(Thread), notFound :List(UInt64));

  changes @11 (kind :ObjectKind, sinceState :UInt64, maxChanges :UInt32) -> (changes :Changes);

  setKeywords @12 (ids :List(UInt64), add :List(Text), remove :List(Text), ifInState :UInt64)
      -> (result :UpdateResult);
  # ifInState: 0 = no check; otherwise fails with `stateMismatch` unless the
  # account is at exactly that state.
  move @13 (ids :List(UInt64), addMailboxes :List(UInt64), removeMailboxes :List(UInt64), ifInState :UInt64)
      -> (result :UpdateResult);
  destroy @14 (ids :List(UInt64), ifInState :UInt64) -> (result :UpdateResult);
  # Moves to Trash; emails already only in Trash are expunged.

  search @15 (query :Text, filter :Filter, position :UInt32, limit :UInt32, byRelevance :Bool)
      -> (hits :List(SearchHit), total :UInt64, queryState :UInt64);
  # Newest first, or with `byRelevance` the best match first (the rarer a
  # matched word in the account, and the weightier its field, the better).

  upload @16 (size :UInt64, mimeType :Text, blake3 :Data) -> (token :Data, blobId :Data, have :Bool);
  # Offers a blob of `size` bytes with BLAKE3 `blake3` (its blobId). When
  # this account already holds it (one of its emails or uploads has these
  # bytes), `have` is true and nothing needs to be sent. Otherwise send the
  # bytes on a bulk stream with `token`; the server checks them against
  # `blake3` and answers once they are durable. Whether another account
  # holds the same bytes is never told: they are sent in full and stored
  # once. An upload is held by the account for 24 hours.
  submit @17 (raw :Data, blobId :Data, envelope :SmtpEnvelope, sendAt :Int64) -> (submission :Submission);
  # The message is `raw` when non-empty, else the uploaded blob `blobId`.
  # Files a copy in Sent (read) and queues it for every `envelope.rcptTo`,
  # in one durable batch, before answering. `envelope.mailFrom` must be one
  # of the account's addresses ("" = its primary one). `sendAt` (ms since
  # the epoch, 0 = now) holds it back until then: `cancelSubmission` before
  # that withdraws it (undo send). Recipients at this server's domains are
  # delivered here, the rest by the gateway's outbound worker. Each change
  # of a recipient's status is a change of kind `submission` (watch it).
  # A permanent failure, or none of the retries succeeding before
  # `expiresAt`, puts a delivery status notification in the Inbox.
  submissions @18 (ids :List(UInt64)) -> (submissions :List(Submission));
  # `ids` empty: the account's submissions that still have a recipient
  # pending, oldest first.
  cancelSubmission @26 (id :UInt64) -> (submission :Submission);
  # Withdraws every recipient still waiting (status `cancelled`) and moves
  # the Sent copy to Drafts. `stateMismatch` when a delivery attempt is
  # under way or nothing is left to withdraw.

  reportSpam @19 (ids :List(UInt64), isSpam :Bool) -> (result :UpdateResult);

  watch @20 (listener :Listener) -> (handle :WatchHandle, state :UInt64);
  # Calls `listener` after every durable change of the account after
  # `state` (the account's state when the watch began). At most maxWatches
  # per connection (`limitExceeded` beyond).

  createAppToken @21 (label :Text) -> (token :Text, info :AppToken);
  listAppTokens @22 () -> (tokens :List(AppToken));
  revokeAppToken @23 (id :UInt64) -> ();

  watchQuery @25 (query :Query, listener :QueryListener) -> (handle :WatchHandle, result :QueryResult);
  # A live query: `result` is the window now (the query's position and
  # limit, at most maxQueryLimit); after every durable change that alters
  # the window, `listener` hears how (QueryChanges against the previous
  # window). Counts as a watch (maxWatches).

  restrict @24 (mailboxes :List(UInt64), readOnly :Bool, expiresAt :Int64) -> (session :Session);
  # An attenuated session to hand on (a widget, a delegate): it sees only
  # `mailboxes` (empty: the same as this session) and the emails in them,
  # writes nothing when `readOnly`, and ends at `expiresAt` (0: never).
  # Outside its scope, reads answer `notFound` and everything else
  # `forbidden`; it cannot create app tokens, change mailboxes or restrict
  # itself into anything wider. It ends with this session: when this one
  # is released or its credential is revoked.
}

# --------------------------------------------------------------------------
# Gateway: the SMTP bridge's capability.

struct DeliveryResult {
  recipient @0 :Text;
  union {
    delivered @1 :UInt64;      # the new email's id in the recipient's account
    error @2 :Error;           # notFound = no such user, overQuota, rejected, ...
  }
}

struct OutboundItem {
  id @0 :UInt64;
  mailFrom @1 :Text;
  recipients @2 :List(Text);   # the ones still pending, all remote
  raw @3 :ByteRun;
  attempt @4 :UInt32;          # 1 for the first; pass it to completeOutbound
}

enum OutcomeKind {
  delivered @0;
  tempFail @1;
  permFail @2;
}

struct RecipientOutcome {
  recipient @0 :Text;
  kind @1 :OutcomeKind;
  reply @2 :Text;
}

interface Gateway {
  deliver @0 (envelope :SmtpEnvelope, raw :Data, uploadToken :Data, idempotencyKey :Data)
      -> (results :List(DeliveryResult));
  # Returns only after every accepted copy is durable. The message is `raw`,
  # or, for one too large to travel inline, the bytes of a finished upload
  # (`uploadToken` from `upload`, single use). With an `idempotencyKey`
  # (1 to 128 bytes, e.g. the gateway's spool id), a deliver retried with
  # the same key (its answer was lost) stores nothing again and answers
  # what the first one did; keys are remembered for seven days.

  checkRecipient @4 (address :Text) -> (error :Error);
  # Whether mail to `address` would be accepted now, for the SMTP session
  # to answer RCPT TO at once (no bounce later): no error = accepted;
  # `notFound` = no such user; `overQuota` = the account is full.

  upload @3 (size :UInt64) -> (token :Data);
  # Reserves an upload of `size` bytes (at most maxMessageBytes): send them
  # on a bulk stream with `token`, then pass the token to `deliver`. Tokens
  # expire after a few minutes unused.

  leaseOutbound @1 (max :UInt32, leaseSeconds :UInt32) -> (items :List(OutboundItem));
  # Up to `max` submissions due now, each leased for `leaseSeconds` (10 to
  # 3600): no other lease hands it out until then. A worker that dies
  # simply lets its leases expire; the messages are handed out again.
  completeOutbound @2 (id :UInt64, outcomes :List(RecipientOutcome), attempt :UInt32) -> ();
  # The outcome of attempt `attempt` for some or all of the leased
  # recipients. `delivered` and `permFail` are final; the rest are retried
  # with exponential backoff until the submission expires, then fail. A
  # completion of an earlier, expired lease still records what was
  # delivered but schedules nothing.

  login @5 (name :Text, secret :Text, remoteIp :Text) -> (session :Session);
  # SMTP AUTH on the submission ports: a password or an app token of the
  # account `name`, throttled by the SMTP client's `remoteIp` and by name
  # like `Quail.login`.
}
