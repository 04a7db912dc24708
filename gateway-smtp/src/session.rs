//! The inbound SMTP session as a sans-IO state machine: bytes and `now`
//! in, replies and actions out. The tokio shell (`server`) reads and writes
//! the socket and carries out the actions (check a recipient with the mail
//! server, deliver, start TLS); this module decides everything else, so
//! every hostile input can be tested without a socket.
//!
//! - Commands are parsed by `smtp-proto`; lines end at LF (a bare LF is
//!   tolerated in commands, as most MTAs do) and are at most
//!   [`MAX_COMMAND_LINE`] bytes.
//! - DATA ends only at `<CRLF>.<CRLF>`. A message with a bare LF or a bare
//!   CR anywhere is refused after its end (554 5.6.0): the SMTP smuggling
//!   class (CVE-2023-51764 and kin) needs exactly such line ends to hide a
//!   second message, so none is ever relayed into the store.
//! - Bytes pipelined behind STARTTLS are discarded before the handshake
//!   (CVE-2011-0411), and the session starts over after it.
//! - Recipients are checked while the session runs: unknown users get 550
//!   5.1.1 at RCPT, never a bounce later.
//! - 250 after DATA only once the server's deliver returned success, which
//!   it does only after the message is durable; any failure there is 451.
//! - On the submission ports ([`Mode::Submission`]) a user must AUTH
//!   (PLAIN or LOGIN, RFC 4954) first, and only under TLS; recipients are
//!   then anywhere, and the message goes to the user's outbox. Three failed
//!   AUTHs end the session; the server throttles failures across sessions
//!   by address and by name.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use smtp_proto::{Error as ParseError, Request};

/// Longest command line (RFC 5321 §4.5.3.1.4 says 512; extensions add).
pub const MAX_COMMAND_LINE: usize = 4096;
/// Errors before a session is closed (421).
pub const MAX_ERRORS: u32 = 10;
/// RFC 5321 §4.5.3.2: waiting for a command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// RFC 5321 §4.5.3.2.5: waiting for the next data block.
pub const DATA_TIMEOUT: Duration = Duration::from_secs(3 * 60);

/// What a session is allowed and announces.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This host's name (greeting, EHLO, Received).
    pub hostname: String,
    /// Largest message (SIZE).
    pub max_message_bytes: u64,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Whether STARTTLS is offered.
    pub tls_available: bool,
    /// Inbound MX or submission.
    pub mode: Mode,
    /// The connection is TLS from its first byte (port 465).
    pub implicit_tls: bool,
}

/// What a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Mail from the internet to accounts here (port 25): no AUTH.
    Mx,
    /// Mail from our users to anywhere (ports 587 and 465): AUTH first.
    Submission,
}

/// AUTH failures in one session before it is closed.
pub const MAX_AUTH_FAILURES: u32 = 3;

/// The envelope of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// HELO/EHLO name.
    pub helo: String,
    /// Reverse path ("" = null sender).
    pub mail_from: String,
    /// Accepted recipients.
    pub rcpt_to: Vec<String>,
    /// Whether the session was under TLS.
    pub tls: bool,
    /// The authenticated user (submission).
    pub user: Option<String>,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes.
    Reply(String),
    /// Ask the mail server whether `0` is deliverable; answer with
    /// [`Session::recipient_checked`].
    CheckRecipient(String),
    /// Deliver the message (its Received header already prepended);
    /// answer with [`Session::delivered`].
    Deliver(Envelope, Vec<u8>),
    /// Submit the message to the authenticated user's outbox (its
    /// Received header already prepended); answer with
    /// [`Session::delivered`].
    Submit(Envelope, Vec<u8>),
    /// Check these credentials with the mail server; answer with
    /// [`Session::authenticated`].
    Authenticate {
        /// The account name.
        user: String,
        /// Its password or app token.
        secret: String,
    },
    /// Start TLS on the connection now (the reply was sent before), then
    /// call [`Session::tls_started`].
    StartTls,
    /// Close the connection.
    Close,
}

/// The mail server's verdict on a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptVerdict {
    /// Accept it.
    Accept,
    /// No such user (550 5.1.1).
    Unknown,
    /// Mailbox full (452 4.2.2).
    Full,
    /// Cannot say now (451 4.3.0).
    TempFail,
}

/// The mail server's answer to an AUTH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Logged in (235).
    Ok,
    /// Wrong name or secret (535 5.7.8).
    Bad,
    /// Too many failures lately, or the server is busy (454 4.7.0).
    Throttled,
}

/// The mail server's answer to a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverVerdict {
    /// Durable: 250, with this id for the reply.
    Stored(String),
    /// Refused for good (550 5.7.1 and why).
    Rejected(String),
    /// Try later (451).
    TempFail(String),
}

#[derive(Debug)]
enum State {
    Command,
    /// In DATA: the body so far, whether a bare CR/LF was seen, whether it
    /// grew past the limit.
    Data {
        body: Vec<u8>,
        bare: bool,
        too_big: bool,
        line: Vec<u8>,
        after_crlf: bool,
    },
    /// In BDAT: bytes still due in this chunk, whether it is the last.
    Bdat {
        left: usize,
        last: bool,
    },
    /// Reading past a BDAT chunk that was refused: its bytes are data,
    /// never commands; the refusal is answered after them.
    Skip {
        left: usize,
    },
    /// In an AUTH exchange, waiting for the client's next line.
    Auth(AuthStep),
    /// Waiting for the shell's answer to an action.
    Waiting(Pending),
    /// The connection is being closed.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Rcpt,
    Deliver,
    Tls,
    Auth,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthStep {
    /// PLAIN without an initial response: the response line.
    Plain,
    /// LOGIN: the user name, then the password.
    LoginUser,
    LoginPassword(String),
}

/// One SMTP session.
#[derive(Debug)]
pub struct Session {
    settings: Settings,
    peer: IpAddr,
    state: State,
    input: Vec<u8>,
    helo: Option<String>,
    esmtp: bool,
    tls: bool,
    mail_from: Option<String>,
    rcpt: Vec<String>,
    asked: Option<String>,
    bdat_body: Vec<u8>,
    bdat_too_big: bool,
    errors: u32,
    user: Option<String>,
    auth_failures: u32,
    last_input: Instant,
    spool_seq: u64,
    /// A random prefix for spool ids (idempotency keys): unique per session.
    session_id: String,
}

/// A reply line (or lines) with CRLF.
fn reply(code: u16, text: &str) -> Action {
    Action::Reply(format!("{code} {text}\r\n"))
}

impl Session {
    /// A session from `peer`; the first action is the greeting.
    pub fn new(settings: Settings, peer: IpAddr, session_id: String, now: Instant) -> (Session, Vec<Action>) {
        let greeting = reply(220, &format!("{} ESMTP quail-smtpd ready", settings.hostname));
        let tls = settings.implicit_tls;
        let s = Session {
            settings,
            peer,
            state: State::Command,
            input: Vec::new(),
            helo: None,
            esmtp: false,
            tls,
            mail_from: None,
            rcpt: Vec::new(),
            asked: None,
            bdat_body: Vec::new(),
            bdat_too_big: false,
            errors: 0,
            user: None,
            auth_failures: 0,
            last_input: now,
            spool_seq: 0,
            session_id,
        };
        (s, vec![greeting])
    }

    /// When the session times out if nothing arrives (RFC 5321 timeouts).
    pub fn deadline(&self) -> Instant {
        let wait = match self.state {
            State::Data { .. } | State::Bdat { .. } | State::Skip { .. } => DATA_TIMEOUT,
            _ => COMMAND_TIMEOUT,
        };
        self.last_input + wait
    }

    /// Nothing arrived before [`Session::deadline`].
    pub fn timed_out(&mut self) -> Vec<Action> {
        self.state = State::Closed;
        vec![reply(421, "4.4.2 timeout; closing the connection"), Action::Close]
    }

    /// Whether the session is under TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Bytes from the client.
    pub fn receive(&mut self, bytes: &[u8], now: Instant) -> Vec<Action> {
        self.last_input = now;
        if matches!(self.state, State::Closed) {
            return Vec::new();
        }
        // Never more than a message and a command line held unprocessed.
        if self.input.len() + bytes.len() > self.settings.max_message_bytes as usize + 2 * MAX_COMMAND_LINE {
            self.state = State::Closed;
            return vec![reply(421, "4.7.0 too much unanswered input; closing"), Action::Close];
        }
        self.input.extend_from_slice(bytes);
        self.run()
    }

    /// The answer to [`Action::CheckRecipient`].
    pub fn recipient_checked(&mut self, verdict: RcptVerdict) -> Vec<Action> {
        if !matches!(self.state, State::Waiting(Pending::Rcpt)) {
            return Vec::new();
        }
        self.state = State::Command;
        let addr = self.asked.take().unwrap_or_default();
        let mut out = vec![match verdict {
            RcptVerdict::Accept => {
                self.rcpt.push(addr);
                reply(250, "2.1.5 OK")
            }
            RcptVerdict::Unknown => {
                self.errors += 1;
                reply(550, "5.1.1 no such user here")
            }
            RcptVerdict::Full => reply(452, "4.2.2 mailbox full; try again later"),
            RcptVerdict::TempFail => reply(451, "4.3.0 cannot check the recipient now; try again later"),
        }];
        out.extend(self.check_errors());
        out.extend(self.run());
        out
    }

    /// The answer to [`Action::Deliver`].
    pub fn delivered(&mut self, verdict: DeliverVerdict) -> Vec<Action> {
        if !matches!(self.state, State::Waiting(Pending::Deliver)) {
            return Vec::new();
        }
        self.state = State::Command;
        self.reset_transaction();
        let mut out = vec![match verdict {
            DeliverVerdict::Stored(id) => reply(250, &format!("2.0.0 OK: queued as {id}")),
            DeliverVerdict::Rejected(why) => reply(550, &format!("5.7.1 {why}")),
            DeliverVerdict::TempFail(why) => reply(451, &format!("4.3.0 {why}; try again later")),
        }];
        out.extend(self.run());
        out
    }

    /// The answer to [`Action::Authenticate`].
    pub fn authenticated(&mut self, verdict: AuthVerdict, user: &str) -> Vec<Action> {
        if !matches!(self.state, State::Waiting(Pending::Auth)) {
            return Vec::new();
        }
        self.state = State::Command;
        let mut out = Vec::new();
        match verdict {
            AuthVerdict::Ok => {
                self.user = Some(user.to_owned());
                out.push(reply(235, "2.7.0 authentication successful"));
            }
            AuthVerdict::Bad => {
                self.auth_failures += 1;
                out.push(reply(535, "5.7.8 authentication credentials invalid"));
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    self.state = State::Closed;
                    out.push(reply(421, "4.7.0 too many failed logins; closing the connection"));
                    out.push(Action::Close);
                    return out;
                }
            }
            AuthVerdict::Throttled => {
                self.auth_failures += 1;
                out.push(reply(454, "4.7.0 temporary authentication failure; try again later"));
            }
        }
        out.extend(self.run());
        out
    }

    /// The user AUTH logged in as, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// TLS is up: the session starts over (RFC 3207 §4.2).
    pub fn tls_started(&mut self) -> Vec<Action> {
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.reset_transaction();
        self.input.clear();
        self.state = State::Command;
        Vec::new()
    }

    fn reset_transaction(&mut self) {
        self.mail_from = None;
        self.rcpt.clear();
        self.bdat_body.clear();
        self.bdat_too_big = false;
    }

    fn check_errors(&mut self) -> Vec<Action> {
        if self.errors >= MAX_ERRORS {
            self.state = State::Closed;
            return vec![reply(421, "4.7.0 too many errors; closing the connection"), Action::Close];
        }
        Vec::new()
    }

    fn error(&mut self, code: u16, text: &str) -> Vec<Action> {
        self.errors += 1;
        let mut out = vec![reply(code, text)];
        out.extend(self.check_errors());
        out
    }

    /// Processes buffered input until it runs out or an action needs an answer.
    fn run(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        loop {
            match &mut self.state {
                State::Closed | State::Waiting(_) => return out,
                State::Auth(step) => {
                    let Some(end) = self.input.iter().position(|b| *b == b'\n') else {
                        if self.input.len() > MAX_COMMAND_LINE {
                            self.input.clear();
                            self.state = State::Command;
                            out.extend(self.error(500, "5.5.2 line too long"));
                        }
                        return out;
                    };
                    let step = step.clone();
                    let line: Vec<u8> = self.input.drain(..=end).collect();
                    let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned();
                    out.extend(self.auth_line(step, &text));
                }
                State::Command => {
                    let Some(end) = self.input.iter().position(|b| *b == b'\n') else {
                        if self.input.len() > MAX_COMMAND_LINE {
                            self.input.clear();
                            out.extend(self.error(500, "5.5.2 line too long"));
                        }
                        return out;
                    };
                    let line: Vec<u8> = self.input.drain(..=end).collect();
                    if line.len() > MAX_COMMAND_LINE {
                        out.extend(self.error(500, "5.5.2 line too long"));
                        continue;
                    }
                    if line.contains(&0) {
                        out.extend(self.error(500, "5.5.2 NUL in a command"));
                        continue;
                    }
                    out.extend(self.command(&line));
                }
                State::Data { body, bare, too_big, line, after_crlf } => {
                    // Line by line: only <CRLF>.<CRLF> ends the message.
                    let max = self.settings.max_message_bytes as usize;
                    let mut consumed = 0;
                    let mut finished = false;
                    for (i, b) in self.input.iter().enumerate() {
                        line.push(*b);
                        if *b != b'\n' {
                            continue;
                        }
                        consumed = i + 1;
                        let crlf = line.len() >= 2 && line[line.len() - 2] == b'\r';
                        // The end is a dot line right after a CRLF: after a
                        // bare LF, `.<CRLF>` is data (the smuggling trick).
                        if line.as_slice() == b".\r\n" && *after_crlf {
                            finished = true;
                            line.clear();
                            break;
                        }
                        // A CR anywhere but before the final LF, or a LF
                        // without its CR: not a CRLF line.
                        let inner_cr = line[..line.len() - if crlf { 2 } else { 1 }].contains(&b'\r');
                        if !crlf || inner_cr {
                            *bare = true;
                        }
                        *after_crlf = crlf && !inner_cr;
                        let text = if line.first() == Some(&b'.') { &line[1..] } else { &line[..] };
                        if body.len() + text.len() > max {
                            *too_big = true;
                        } else if !*too_big {
                            body.extend_from_slice(text);
                        }
                        line.clear();
                    }
                    if !finished {
                        // All input was read; a partial line waits in `line`.
                        self.input.clear();
                        if line.len() > max {
                            *too_big = true;
                            line.clear();
                        }
                        return out;
                    }
                    self.input.drain(..consumed);
                    let (body, bare, too_big) = (std::mem::take(body), *bare, *too_big);
                    self.state = State::Command;
                    if too_big {
                        self.reset_transaction();
                        out.push(reply(552, "5.3.4 message too big"));
                    } else if bare {
                        self.reset_transaction();
                        out.extend(self.error(
                            554,
                            "5.6.0 bare CR or LF in the message: lines must end in CRLF (RFC 5321 2.3.8)",
                        ));
                    } else {
                        out.push(self.deliver(body));
                        return out;
                    }
                }
                State::Skip { left } => {
                    let take = (*left).min(self.input.len());
                    self.input.drain(..take);
                    *left -= take;
                    if *left > 0 {
                        return out;
                    }
                    self.state = State::Command;
                    out.extend(self.error(503, "5.5.1 MAIL and RCPT first"));
                }
                State::Bdat { left, last } => {
                    let take = (*left).min(self.input.len());
                    let chunk: Vec<u8> = self.input.drain(..take).collect();
                    *left -= take;
                    let (left, last) = (*left, *last);
                    if self.bdat_body.len() + chunk.len() > self.settings.max_message_bytes as usize {
                        self.bdat_too_big = true;
                        self.bdat_body.clear();
                    } else if !self.bdat_too_big {
                        self.bdat_body.extend_from_slice(&chunk);
                    }
                    if left > 0 {
                        return out;
                    }
                    self.state = State::Command;
                    if self.bdat_too_big {
                        self.reset_transaction();
                        out.push(reply(552, "5.3.4 message too big"));
                    } else if last {
                        let body = std::mem::take(&mut self.bdat_body);
                        out.push(self.deliver(body));
                        return out;
                    } else {
                        out.push(reply(250, "2.0.0 chunk accepted"));
                    }
                }
            }
        }
    }

    /// A line of an AUTH exchange.
    fn auth_line(&mut self, step: AuthStep, text: &str) -> Vec<Action> {
        self.state = State::Command;
        if text == "*" {
            return self.error(501, "5.0.0 authentication cancelled");
        }
        match step {
            AuthStep::Plain => self.auth_plain(text),
            AuthStep::LoginUser => match decode64(text) {
                Some(user) => {
                    self.state = State::Auth(AuthStep::LoginPassword(user));
                    vec![reply(334, "UGFzc3dvcmQ6")]
                }
                None => self.error(501, "5.5.2 invalid base64"),
            },
            AuthStep::LoginPassword(user) => match decode64(text) {
                Some(secret) => self.authenticate(user, secret),
                None => self.error(501, "5.5.2 invalid base64"),
            },
        }
    }

    /// An AUTH PLAIN response: `authzid NUL authcid NUL password`.
    fn auth_plain(&mut self, text: &str) -> Vec<Action> {
        let Some(decoded) = decode64(text) else {
            return self.error(501, "5.5.2 invalid base64");
        };
        let mut parts = decoded.split('\0');
        let (Some(authz), Some(user), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.error(501, "5.5.2 malformed PLAIN response");
        };
        if !authz.is_empty() && authz != user {
            return self.error(535, "5.7.8 acting for another user is not allowed");
        }
        self.authenticate(user.to_owned(), secret.to_owned())
    }

    fn authenticate(&mut self, user: String, secret: String) -> Vec<Action> {
        if user.is_empty() || secret.is_empty() {
            self.auth_failures += 1;
            return vec![reply(535, "5.7.8 authentication credentials invalid")];
        }
        self.state = State::Waiting(Pending::Auth);
        vec![Action::Authenticate { user, secret }]
    }

    fn deliver(&mut self, body: Vec<u8>) -> Action {
        self.spool_seq += 1;
        let id = format!("{}.{}", self.session_id, self.spool_seq);
        let helo = self.helo.clone().unwrap_or_default();
        let with = match (self.esmtp, self.tls, self.user.is_some()) {
            (true, true, true) => "ESMTPSA",
            (true, false, true) => "ESMTPA",
            (true, true, false) => "ESMTPS",
            (true, false, false) => "ESMTP",
            (false, true, _) => "SMTPS",
            (false, false, _) => "SMTP",
        };
        let for_ = if self.rcpt.len() == 1 { format!("\r\n\tfor <{}>", self.rcpt[0]) } else { String::new() };
        let received = format!(
            "Received: from {helo} ([{}])\r\n\tby {} (quail-smtpd) with {with} id {id}{for_};\r\n\t{}\r\n",
            self.peer,
            self.settings.hostname,
            rfc2822_now()
        );
        let mut raw = received.into_bytes();
        raw.extend_from_slice(&body);
        let envelope = Envelope {
            helo,
            mail_from: self.mail_from.clone().unwrap_or_default(),
            rcpt_to: self.rcpt.clone(),
            tls: self.tls,
            user: self.user.clone(),
        };
        self.state = State::Waiting(Pending::Deliver);
        match self.settings.mode {
            Mode::Mx => Action::Deliver(envelope, raw),
            Mode::Submission => Action::Submit(envelope, raw),
        }
    }

    /// The spool id the next delivery will carry (its idempotency key).
    pub fn last_spool_id(&self) -> String {
        format!("{}.{}", self.session_id, self.spool_seq)
    }

    fn command(&mut self, line: &[u8]) -> Vec<Action> {
        let parsed = Request::parse(&mut line.iter()).map(|r| r.into_owned());
        let request = match parsed {
            Ok(r) => r,
            Err(ParseError::UnknownCommand) => return self.error(500, "5.5.1 command not recognized"),
            Err(ParseError::InvalidSenderAddress) => {
                return self.error(501, "5.1.7 bad sender address syntax");
            }
            Err(ParseError::InvalidRecipientAddress) => {
                return self.error(501, "5.1.3 bad recipient address syntax");
            }
            Err(ParseError::UnsupportedParameter { param }) => {
                return self.error(555, &format!("5.5.4 unsupported parameter {param}"));
            }
            Err(ParseError::InvalidParameter { param }) => {
                return self.error(501, &format!("5.5.4 invalid value of {param}"));
            }
            Err(ParseError::ResponseTooLong) => return self.error(500, "5.5.2 line too long"),
            Err(e) => return self.error(501, &format!("5.5.2 syntax error: {e:?}")),
        };
        match request {
            Request::Ehlo { host } => {
                self.helo = Some(host.clone());
                self.esmtp = true;
                self.reset_transaction();
                let mut lines = vec![
                    format!("{} hello {host} [{}]", self.settings.hostname, self.peer),
                    "PIPELINING".to_owned(),
                    format!("SIZE {}", self.settings.max_message_bytes),
                    "8BITMIME".to_owned(),
                    "SMTPUTF8".to_owned(),
                    "ENHANCEDSTATUSCODES".to_owned(),
                    "CHUNKING".to_owned(),
                ];
                if self.settings.tls_available && !self.tls {
                    lines.push("STARTTLS".to_owned());
                }
                // Credentials only ever cross an encrypted connection.
                if self.settings.mode == Mode::Submission && self.tls {
                    lines.push("AUTH PLAIN LOGIN".to_owned());
                }
                let n = lines.len();
                let text: String = lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{l}\r\n", if i + 1 == n { ' ' } else { '-' }))
                    .collect();
                vec![Action::Reply(text)]
            }
            Request::Helo { host } | Request::Lhlo { host } => {
                self.helo = Some(host.clone());
                self.esmtp = false;
                self.reset_transaction();
                vec![reply(250, &format!("{} hello {host}", self.settings.hostname))]
            }
            Request::StartTls => {
                if !self.settings.tls_available {
                    return self.error(502, "5.5.1 STARTTLS is not offered here");
                }
                if self.tls {
                    return self.error(503, "5.5.1 TLS is already on");
                }
                // Whatever was pipelined behind STARTTLS is discarded.
                self.input.clear();
                self.state = State::Waiting(Pending::Tls);
                vec![reply(220, "2.0.0 ready to start TLS"), Action::StartTls]
            }
            Request::Mail { from } => {
                if self.helo.is_none() {
                    return self.error(503, "5.5.1 say EHLO first");
                }
                if self.mail_from.is_some() {
                    return self.error(503, "5.5.1 a transaction is already open; RSET first");
                }
                if self.settings.mode == Mode::Submission && self.user.is_none() {
                    return self.error(530, "5.7.0 authentication required");
                }
                if from.size as u64 > self.settings.max_message_bytes {
                    return vec![reply(552, "5.3.4 message size exceeds the limit")];
                }
                if !from.address.is_ascii() && from.flags & smtp_proto::MAIL_SMTPUTF8 == 0 {
                    return self.error(553, "5.6.7 a non-ASCII address needs SMTPUTF8");
                }
                self.mail_from = Some(from.address);
                vec![reply(250, "2.1.0 OK")]
            }
            Request::Rcpt { to } => {
                if self.mail_from.is_none() {
                    return self.error(503, "5.5.1 MAIL first");
                }
                if self.rcpt.len() >= self.settings.max_recipients {
                    return vec![reply(452, "4.5.3 too many recipients")];
                }
                // `<postmaster>` parses as an empty address.
                let addr = if to.address.is_empty() { "postmaster".to_owned() } else { to.address };
                if self.settings.mode == Mode::Submission {
                    // Our user may write to anyone; the server checks the
                    // addresses when the message is submitted.
                    if !addr.contains('@') {
                        return self.error(501, "5.1.3 a recipient is local@domain");
                    }
                    self.rcpt.push(addr);
                    return vec![reply(250, "2.1.5 OK")];
                }
                self.asked = Some(addr.clone());
                self.state = State::Waiting(Pending::Rcpt);
                vec![Action::CheckRecipient(addr)]
            }
            Request::Data => {
                if self.mail_from.is_none() {
                    return self.error(503, "5.5.1 MAIL first");
                }
                if self.rcpt.is_empty() {
                    return self.error(554, "5.5.1 no valid recipients");
                }
                self.state = State::Data {
                    body: Vec::new(),
                    bare: false,
                    too_big: false,
                    line: Vec::new(),
                    after_crlf: true,
                };
                vec![reply(354, "end data with <CR><LF>.<CR><LF>")]
            }
            Request::Bdat { chunk_size, is_last } => {
                if self.mail_from.is_none() || self.rcpt.is_empty() {
                    // The chunk still arrives, however it is split: skip
                    // it, then refuse (RFC 3030 §2).
                    self.state = State::Skip { left: chunk_size };
                    return Vec::new();
                }
                self.state = State::Bdat { left: chunk_size, last: is_last };
                Vec::new()
            }
            Request::Rset => {
                self.reset_transaction();
                vec![reply(250, "2.0.0 OK")]
            }
            Request::Noop { .. } => vec![reply(250, "2.0.0 OK")],
            Request::Vrfy { .. } | Request::Expn { .. } => {
                vec![reply(252, "2.5.0 cannot verify; send mail and see")]
            }
            Request::Help { .. } => vec![reply(214, "2.0.0 see RFC 5321")],
            Request::Quit => {
                self.state = State::Closed;
                vec![reply(221, "2.0.0 bye"), Action::Close]
            }
            Request::Auth { mechanism, initial_response } => {
                if self.settings.mode != Mode::Submission {
                    return self.error(502, "5.5.1 AUTH is offered on submission ports only");
                }
                if !self.tls {
                    return self.error(538, "5.7.11 encryption required: STARTTLS first");
                }
                if self.user.is_some() {
                    return self.error(503, "5.5.1 already authenticated");
                }
                if self.mail_from.is_some() {
                    return self.error(503, "5.5.1 not during a transaction");
                }
                let initial = (!initial_response.is_empty()).then_some(initial_response);
                match (mechanism, initial) {
                    (smtp_proto::AUTH_PLAIN, Some(r)) => self.auth_plain(if r == "=" { "" } else { &r }),
                    (smtp_proto::AUTH_PLAIN, None) => {
                        self.state = State::Auth(AuthStep::Plain);
                        vec![reply(334, "")]
                    }
                    (smtp_proto::AUTH_LOGIN, Some(r)) => match decode64(&r) {
                        Some(user) => {
                            self.state = State::Auth(AuthStep::LoginPassword(user));
                            vec![reply(334, "UGFzc3dvcmQ6")]
                        }
                        None => self.error(501, "5.5.2 invalid base64"),
                    },
                    (smtp_proto::AUTH_LOGIN, None) => {
                        self.state = State::Auth(AuthStep::LoginUser);
                        vec![reply(334, "VXNlcm5hbWU6")]
                    }
                    _ => self.error(504, "5.5.4 unrecognized authentication type"),
                }
            }
            _ => self.error(502, "5.5.1 command not implemented"),
        }
    }
}

/// Base64 text as UTF-8, if it is both.
fn decode64(text: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

/// Now as an RFC 5322 date (UTC).
fn rfc2822_now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc2822).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a session with a scripted server: `alice` and `bob` exist,
    /// every delivery is stored. Returns the replies and the messages.
    struct Harness {
        session: Session,
        replies: String,
        stored: Vec<(Envelope, Vec<u8>)>,
        tls_starts: usize,
        closed: bool,
    }

    impl Harness {
        fn new() -> Harness {
            Harness::with_mode(Mode::Mx)
        }

        fn with_mode(mode: Mode) -> Harness {
            let settings = Settings {
                hostname: "mx.test".into(),
                max_message_bytes: 10_000,
                max_recipients: 5,
                tls_available: true,
                mode,
                implicit_tls: false,
            };
            let (session, first) =
                Session::new(settings, "127.0.0.9".parse().expect("ip"), "s1".into(), Instant::now());
            let mut h =
                Harness { session, replies: String::new(), stored: Vec::new(), tls_starts: 0, closed: false };
            h.act(first);
            h
        }

        fn act(&mut self, actions: Vec<Action>) {
            let mut queue: VecDeque<Action> = actions.into();
            while let Some(a) = queue.pop_front() {
                match a {
                    Action::Reply(r) => self.replies.push_str(&r),
                    Action::Close => self.closed = true,
                    Action::StartTls => {
                        self.tls_starts += 1;
                        queue.extend(self.session.tls_started());
                    }
                    Action::CheckRecipient(addr) => {
                        let local = addr.split('@').next().unwrap_or_default();
                        let v = if local == "alice" || local == "bob" {
                            RcptVerdict::Accept
                        } else {
                            RcptVerdict::Unknown
                        };
                        queue.extend(self.session.recipient_checked(v));
                    }
                    Action::Deliver(env, raw) | Action::Submit(env, raw) => {
                        self.stored.push((env, raw));
                        queue.extend(self.session.delivered(DeliverVerdict::Stored("q1".into())));
                    }
                    Action::Authenticate { user, secret } => {
                        let v = match (user.as_str(), secret.as_str()) {
                            ("alice", "right") => AuthVerdict::Ok,
                            (_, "slow") => AuthVerdict::Throttled,
                            _ => AuthVerdict::Bad,
                        };
                        queue.extend(self.session.authenticated(v, &user));
                    }
                }
            }
        }

        fn send(&mut self, bytes: &[u8]) {
            let a = self.session.receive(bytes, Instant::now());
            self.act(a);
        }

        /// Feeds `bytes` in pieces of `n`.
        fn send_split(&mut self, bytes: &[u8], n: usize) {
            for piece in bytes.chunks(n.max(1)) {
                self.send(piece);
            }
        }

        fn codes(&self) -> Vec<u16> {
            self.replies
                .lines()
                .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
                .filter_map(|l| l[..3].parse().ok())
                .collect()
        }
    }

    use std::collections::VecDeque;

    const START: &[u8] =
        b"EHLO client.test\r\nMAIL FROM:<sender@example.net>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n";

    #[test]
    fn a_plain_message_is_stored_with_a_received_header_after_its_end() {
        let mut h = Harness::new();
        h.send(START);
        h.send(b"Subject: hi\r\n\r\n..dot-stuffed line\r\nbody\r\n.\r\nQUIT\r\n");
        assert_eq!(h.codes(), vec![220, 250, 250, 250, 354, 250, 221]);
        assert_eq!(h.stored.len(), 1);
        let (env, raw) = &h.stored[0];
        assert_eq!(env.mail_from, "sender@example.net");
        assert_eq!(env.rcpt_to, vec!["alice@example.org".to_owned()]);
        let text = String::from_utf8_lossy(raw);
        assert!(text.starts_with("Received: from client.test ([127.0.0.9])\r\n\tby mx.test"), "{text}");
        assert!(text.ends_with("Subject: hi\r\n\r\n.dot-stuffed line\r\nbody\r\n"), "{text}");
        assert!(h.closed);
    }

    /// The smuggling class: a fake end of data made of bare LF or CR hides a
    /// second message. Each variant, split across segments at every size
    /// from 1 to 25 bytes: nothing is stored and the client hears 554.
    #[test]
    fn smuggled_messages_are_never_stored_however_the_bytes_are_split() {
        let fakes: [&[u8]; 8] =
            [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r.\n", b"\r\n.\n", b"\n.\r", b"\r.\r\n", b"\r\n.\r"];
        let mut sessions = 0;
        for fake in fakes {
            let mut msg = b"Subject: legit\r\n\r\nhello".to_vec();
            msg.extend_from_slice(fake);
            msg.extend_from_slice(
                b"MAIL FROM:<admin@bank.example>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n",
            );
            for split in 1..=25 {
                let mut h = Harness::new();
                h.send(START);
                h.send_split(&msg, split);
                sessions += 1;
                assert!(
                    h.stored
                        .iter()
                        .all(|(_, raw)| !String::from_utf8_lossy(raw).contains("Subject: smuggled")),
                    "fake end {fake:?}, split {split}: a smuggled message was stored"
                );
                assert!(h.stored.is_empty(), "fake end {fake:?}, split {split}: stored {}", h.stored.len());
                assert_eq!(h.codes().last(), Some(&554), "fake end {fake:?}, split {split}: {}", h.replies);
            }
        }
        assert_eq!(sessions, 200);
    }

    #[test]
    fn the_real_end_of_data_split_anywhere_still_ends_it() {
        let msg = b"Subject: x\r\n\r\nline\r\n.\r\nNOOP\r\n";
        for split in 1..=msg.len() {
            let mut h = Harness::new();
            h.send(START);
            h.send_split(msg, split);
            assert_eq!(h.stored.len(), 1, "split {split}");
            assert_eq!(h.codes(), vec![220, 250, 250, 250, 354, 250, 250], "split {split}");
        }
    }

    #[test]
    fn commands_pipelined_behind_starttls_are_discarded() {
        let mut h = Harness::new();
        h.send(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@evil>\r\nRCPT TO:<alice@example.org>\r\n");
        assert_eq!(h.tls_starts, 1);
        assert_eq!(h.codes(), vec![220, 250, 220], "nothing after STARTTLS was answered: {}", h.replies);
        // After TLS the session starts over: MAIL before EHLO is refused.
        h.send(b"MAIL FROM:<a@b>\r\n");
        assert_eq!(h.codes().last(), Some(&503));
        h.send(b"EHLO c\r\n");
        assert!(
            !h.replies.rsplit("220").next().unwrap_or_default().contains("STARTTLS"),
            "not offered twice"
        );
        h.send(b"STARTTLS\r\n");
        assert_eq!(h.codes().last(), Some(&503));
    }

    #[test]
    fn hostile_commands_get_the_right_codes_and_the_session_survives() {
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("overlong line", [b"EHLO ".as_slice(), &[b'a'; 5000], b"\r\n"].concat(), 500),
            ("NUL", b"EHLO a\0b\r\n".to_vec(), 500),
            ("unknown command", b"FOO bar\r\n".to_vec(), 500),
            ("MAIL before EHLO", b"MAIL FROM:<a@b>\r\n".to_vec(), 503),
            ("RCPT before MAIL", b"EHLO c\r\nRCPT TO:<alice@x>\r\n".to_vec(), 503),
            ("DATA without RCPT", b"EHLO c\r\nMAIL FROM:<a@b>\r\nDATA\r\n".to_vec(), 554),
            ("unknown user", b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<mallory@example.org>\r\n".to_vec(), 550),
            (
                "relay to a foreign domain",
                b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<someone@elsewhere.example>\r\n".to_vec(),
                550,
            ),
            ("AUTH on the MX", b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\n".to_vec(), 502),
            ("SIZE over the limit", b"EHLO c\r\nMAIL FROM:<a@b> SIZE=20000\r\n".to_vec(), 552),
            ("bad sender syntax", b"EHLO c\r\nMAIL FROM:<a@b\r\n".to_vec(), 501),
            ("unsupported parameter", b"EHLO c\r\nMAIL FROM:<a@b> FOO=BAR\r\n".to_vec(), 555),
            (
                "non-ASCII without SMTPUTF8",
                "EHLO c\r\nMAIL FROM:<jörg@b.example>\r\n".as_bytes().to_vec(),
                553,
            ),
        ];
        for (what, input, code) in cases {
            let mut h = Harness::new();
            h.send(&input);
            assert_eq!(h.codes().last(), Some(&code), "{what}: {}", h.replies);
            assert!(!h.closed, "{what}: closed");
            h.send(b"NOOP\r\n");
            assert_eq!(h.codes().last(), Some(&250), "{what}: the session goes on");
        }
    }

    #[test]
    fn too_many_errors_close_the_session() {
        let mut h = Harness::new();
        for _ in 0..MAX_ERRORS {
            h.send(b"BOGUS\r\n");
        }
        assert!(h.closed);
        assert_eq!(h.codes().last(), Some(&421));
        h.send(b"NOOP\r\n");
        assert_eq!(h.codes().last(), Some(&421), "nothing answered after close");
    }

    #[test]
    fn a_message_over_the_size_is_refused_after_its_end_and_the_next_one_goes_through() {
        let mut h = Harness::new();
        h.send(START);
        let mut big = b"Subject: big\r\n\r\n".to_vec();
        for _ in 0..400 {
            big.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
        }
        big.extend_from_slice(b".\r\n");
        h.send(&big);
        assert_eq!(h.codes().last(), Some(&552));
        assert!(h.stored.is_empty());
        h.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nSubject: small\r\n\r\nok\r\n.\r\n");
        assert_eq!(h.stored.len(), 1);
    }

    #[test]
    fn chunking_delivers_the_chunks_as_sent() {
        let mut h = Harness::new();
        h.send(
            b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.org>\r\nBDAT 16\r\nSubject: c\r\n\r\nab",
        );
        h.send(b"BDAT 5 LAST\r\n\n.\ncd");
        assert_eq!(h.stored.len(), 1, "{}", h.replies);
        assert!(h.stored[0].1.ends_with(b"Subject: c\r\n\r\nab\n.\ncd"), "BDAT is binary: no dot processing");
        assert_eq!(h.codes(), vec![220, 250, 250, 250, 250, 250]);
    }

    #[test]
    fn a_refused_chunk_is_skipped_as_data_however_it_is_split() {
        let chunk = b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@example.org>\r\n";
        for split in 1..chunk.len() {
            let mut h = Harness::new();
            h.send(format!("EHLO c\r\nBDAT {}\r\n", chunk.len()).as_bytes());
            h.send(&chunk[..split]);
            h.send(&chunk[split..]);
            h.send(b"NOOP\r\n");
            assert_eq!(h.codes(), vec![220, 250, 503, 250], "split {split}: {}", h.replies);
            assert!(h.session.mail_from.is_none(), "split {split}: a command inside the chunk ran");
        }
    }

    #[test]
    fn a_client_that_stalls_mid_data_times_out_with_421() {
        let mut h = Harness::new();
        let t0 = Instant::now();
        h.send(START);
        h.send(b"Subject: half a message\r\n");
        assert!(h.session.deadline() >= t0 + DATA_TIMEOUT - Duration::from_secs(1));
        assert!(h.session.deadline() <= Instant::now() + DATA_TIMEOUT);
        let a = h.session.timed_out();
        h.act(a);
        assert_eq!(h.codes().last(), Some(&421));
        assert!(h.closed && h.stored.is_empty());
    }

    #[test]
    fn recipients_are_bounded_and_postmaster_is_accepted_as_a_name() {
        let mut h = Harness::new();
        h.send(b"EHLO c\r\nMAIL FROM:<>\r\n");
        for _ in 0..5 {
            h.send(b"RCPT TO:<alice@example.org>\r\n");
        }
        h.send(b"RCPT TO:<bob@example.org>\r\n");
        assert_eq!(h.codes().last(), Some(&452));
        assert_eq!(h.session.rcpt.len(), 5);
        assert_eq!(h.session.mail_from.as_deref(), Some(""), "the null sender");
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    /// A submission session under TLS (STARTTLS done).
    fn submission() -> Harness {
        let mut h = Harness::with_mode(Mode::Submission);
        h.send(b"EHLO laptop\r\nSTARTTLS\r\n");
        h.send(b"EHLO laptop\r\n");
        h
    }

    #[test]
    fn submission_offers_auth_only_under_tls_and_requires_it_before_mail() {
        let mut h = Harness::with_mode(Mode::Submission);
        h.send(b"EHLO laptop\r\n");
        assert!(!h.replies.contains("AUTH"), "AUTH offered in the clear: {}", h.replies);
        h.send(format!("AUTH PLAIN {}\r\n", b64("\0alice\0right")).as_bytes());
        assert_eq!(h.codes().last(), Some(&538), "{}", h.replies);
        h.send(b"MAIL FROM:<alice@quail.test>\r\n");
        assert_eq!(h.codes().last(), Some(&530));
        h.send(b"STARTTLS\r\n");
        h.send(b"EHLO laptop\r\n");
        assert!(h.replies.contains("250 AUTH PLAIN LOGIN") || h.replies.contains("250-AUTH PLAIN LOGIN"));
        h.send(b"MAIL FROM:<alice@quail.test>\r\n");
        assert_eq!(h.codes().last(), Some(&530), "still not logged in");
    }

    #[test]
    fn auth_plain_with_and_without_an_initial_response() {
        let mut h = submission();
        h.send(format!("AUTH PLAIN {}\r\n", b64("\0alice\0right")).as_bytes());
        assert_eq!(h.codes().last(), Some(&235));
        assert_eq!(h.session.user(), Some("alice"));
        h.send(format!("AUTH PLAIN {}\r\n", b64("\0alice\0right")).as_bytes());
        assert_eq!(h.codes().last(), Some(&503), "twice");

        let mut h = submission();
        h.send(b"AUTH PLAIN\r\n");
        assert_eq!(h.codes().last(), Some(&334));
        h.send(format!("{}\r\n", b64("alice\0alice\0right")).as_bytes());
        assert_eq!(h.codes().last(), Some(&235));
    }

    #[test]
    fn auth_login_asks_for_name_then_password() {
        let mut h = submission();
        h.send(b"AUTH LOGIN\r\n");
        assert!(h.replies.ends_with("334 VXNlcm5hbWU6\r\n"));
        h.send(format!("{}\r\n", b64("alice")).as_bytes());
        assert!(h.replies.ends_with("334 UGFzc3dvcmQ6\r\n"));
        h.send(format!("{}\r\n", b64("right")).as_bytes());
        assert_eq!(h.codes().last(), Some(&235));
        // With the name as initial response.
        let mut h = submission();
        h.send(format!("AUTH LOGIN {}\r\n{}\r\n", b64("alice"), b64("right")).as_bytes());
        assert_eq!(h.codes().last(), Some(&235));
    }

    #[test]
    fn malformed_auth_gets_clear_errors() {
        let cases: &[(&[u8], u16)] = &[
            (b"AUTH PLAIN !!!notbase64\r\n", 501),
            (b"AUTH PLAIN AGFsaWNl\r\n", 501), // "\0alice": no password part
            (b"AUTH CRAM-MD5\r\n", 504),
            (b"AUTH PLAIN\r\n*\r\n", 501),
            (b"AUTH LOGIN\r\n*\r\n", 501),
        ];
        for (input, code) in cases {
            let mut h = submission();
            h.send(input);
            assert_eq!(h.codes().last(), Some(code), "{:?}: {}", String::from_utf8_lossy(input), h.replies);
            assert_eq!(h.session.user(), None);
        }
        let mut h = submission();
        h.send(format!("AUTH PLAIN {}\r\n", b64("bob\0alice\0right")).as_bytes());
        assert_eq!(h.codes().last(), Some(&535), "acting for another user");
    }

    #[test]
    fn three_failed_logins_end_the_session_and_throttling_is_temporary() {
        let mut h = submission();
        for _ in 0..2 {
            h.send(format!("AUTH PLAIN {}\r\n", b64("\0alice\0wrong")).as_bytes());
            assert_eq!(h.codes().last(), Some(&535));
            assert!(!h.closed);
        }
        h.send(format!("AUTH PLAIN {}\r\n", b64("\0alice\0wrong")).as_bytes());
        assert_eq!(h.codes().last(), Some(&421));
        assert!(h.closed);
        let mut h = submission();
        h.send(format!("AUTH PLAIN {}\r\n", b64("\0alice\0slow")).as_bytes());
        assert_eq!(h.codes().last(), Some(&454));
    }

    #[test]
    fn an_authenticated_user_relays_anywhere_and_the_message_is_submitted() {
        let mut h = submission();
        h.send(format!("AUTH PLAIN {}\r\n", b64("\0alice\0right")).as_bytes());
        h.send(b"MAIL FROM:<alice@quail.test>\r\nRCPT TO:<someone@far.example>\r\nRCPT TO:<nodomain>\r\nDATA\r\n");
        h.send(b"Subject: out\r\n\r\nhi\r\n.\r\n");
        assert_eq!(h.codes()[h.codes().len() - 5..], [250, 250, 501, 354, 250]);
        let (env, raw) = &h.stored[0];
        assert_eq!(env.user.as_deref(), Some("alice"));
        assert_eq!(env.rcpt_to, vec!["someone@far.example".to_owned()]);
        assert!(String::from_utf8_lossy(raw).contains("with ESMTPSA"));
    }

    #[test]
    fn the_mx_refuses_auth_and_relaying() {
        let mut h = Harness::new();
        h.send(format!("EHLO c\r\nAUTH PLAIN {}\r\n", b64("\0alice\0right")).as_bytes());
        assert_eq!(h.codes().last(), Some(&502));
        h.send(b"MAIL FROM:<x@y.example>\r\nRCPT TO:<someone@far.example>\r\n");
        assert_eq!(h.codes().last(), Some(&550), "no relay without AUTH");
    }
}
