//! The POP3 session (RFC 1939 §3) as plain data: AUTHORIZATION, TRANSACTION and
//! UPDATE, each state holding only what is valid in it.
//!
//! The session never waits for anything. When a command needs the outside world
//! (checking a password, reading or removing messages) it returns a [`Step`] that
//! says so, and the shell reports back through [`Session::login_succeeded`],
//! [`Session::login_failed`] or the reply helpers. `Id` is the storage's message
//! id (its `Display` is the UIDL) and `Lock` the maildrop lock; the session owns the
//! lock for exactly as long as it is in TRANSACTION and hands it over at QUIT.

use std::fmt;

use crate::ProtoError;
use crate::limits::{POP3_BAD_COMMANDS_MAX, POP3_LOGIN_FAILURES_MAX};
use crate::parser::{Command, Expect, Parser, Secret};
use crate::response::{Response, ResponseCode};
use crate::sasl::decode_plain;

/// What the shell knows about the connection when it starts.
#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    /// USER/PASS and AUTH PLAIN may be used before STLS: the peer is on loopback or
    /// the operator allowed it. After STLS they are always allowed.
    pub plaintext_allowed: bool,
    /// A certificate is loaded, so STLS is offered (RFC 2595 §4).
    pub tls_available: bool,
}

/// One message of the listing fixed at login (RFC 1939 §5: numbers and sizes do not
/// change during the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed<Id> {
    pub id: Id,
    /// Exact octets as stored, CRLF line endings included.
    pub size: u64,
}

/// RFC 1939 §3's three states.
#[derive(Debug)]
pub enum State<Id, Lock> {
    Authorization(Authorization),
    Transaction(Transaction<Id, Lock>),
    /// QUIT was accepted; the lock and the marks went to the shell with
    /// [`Step::Update`]. Nothing more is read.
    Update,
}

#[derive(Debug, Default)]
pub struct Authorization {
    /// The name given by USER, waiting for PASS.
    user: Option<String>,
    /// AUTH PLAIN was sent without an initial response and we challenged.
    awaiting_sasl_response: bool,
    /// A [`Step::Login`] is out; the shell must report before feeding more input.
    awaiting_login: bool,
    n_login_failures: u32,
}

#[derive(Debug)]
pub struct Transaction<Id, Lock> {
    lock: Lock,
    messages: Vec<Listed<Id>>,
    /// Parallel to `messages`: marked by DELE, cleared by RSET.
    deleted: Vec<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    Unavailable,
    Available,
    Active,
}

/// Why a login did not lead to TRANSACTION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    BadCredentials,
    /// RFC 2449 §8.1.1: another session holds the maildrop.
    InUse,
    /// The store could not be reached or read; trying later may work.
    Unavailable,
}

/// What the shell must do next.
#[derive(Debug)]
pub enum Step<'session, Id, Lock> {
    /// Write this reply and read on.
    Reply(Response),
    /// Check the credentials, lock the maildrop and list it, then call
    /// [`Session::login_succeeded`] or [`Session::login_failed`].
    Login { user: String, password: Secret },
    /// Fetch message `msg` and write [`Session::retrieve_status`] followed by the
    /// [`crate::Stuffed`] message, cut by [`crate::top_of_message`] when
    /// `n_body_lines` is set (TOP).
    Retrieve {
        lock: &'session Lock,
        msg: u32,
        id: Id,
        n_body_lines: Option<u64>,
    },
    /// Write this `+OK`, flush, drop every byte already read, run the TLS handshake
    /// and call [`Session::tls_started`].
    StartTls(Response),
    /// QUIT in TRANSACTION (RFC 1939 §6): remove `deleted` (possibly none) with
    /// `lock`, write [`Session::update_reply`], drop the lock and close.
    Update { lock: Lock, deleted: Vec<Id> },
    /// Write this reply and close the connection.
    Close(Response),
}

/// The result of the removals at QUIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    Removed,
    /// Nothing was removed (the store refused or could not reach a quorum).
    Failed,
}

/// One client's POP3 session: the parser, the state and the connection's TLS status.
#[derive(Debug)]
pub struct Session<Id, Lock> {
    parser: Parser,
    state: State<Id, Lock>,
    config: SessionConfig,
    tls: Tls,
    n_bad_commands: u32,
}

impl<Id: Copy + fmt::Display, Lock> Session<Id, Lock> {
    pub fn new(config: SessionConfig) -> Session<Id, Lock> {
        let tls = if config.tls_available {
            Tls::Available
        } else {
            Tls::Unavailable
        };
        Session {
            parser: Parser::new(),
            state: State::Authorization(Authorization::default()),
            config,
            tls,
            n_bad_commands: 0,
        }
    }

    /// RFC 1939 §4: the greeting, naming the server. Characters that could break
    /// the line out of a configured hostname are dropped.
    pub fn greeting(hostname: &str) -> Response {
        let hostname: String = hostname.chars().filter(|c| c.is_ascii_graphic()).collect();
        Response::ok(format!("{hostname} chordmail POP3 server ready"))
    }

    pub fn state(&self) -> &State<Id, Lock> {
        &self.state
    }

    pub fn is_tls_active(&self) -> bool {
        self.tls == Tls::Active
    }

    /// Failed logins so far; the shell delays each failure's reply by a time that
    /// grows with it.
    pub fn n_login_failures(&self) -> u32 {
        match &self.state {
            State::Authorization(authorization) => authorization.n_login_failures,
            State::Transaction(_) | State::Update => 0,
        }
    }

    /// True when no partial command line is buffered (for an orderly shutdown).
    pub fn is_between_commands(&self) -> bool {
        self.parser.is_idle()
    }

    /// Consumes input up to the end of the first complete line in it and returns
    /// how many bytes it took and, if a line ended, what to do about it.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Step<'_, Id, Lock>>) {
        match &self.state {
            State::Authorization(authorization) => {
                assert!(
                    !authorization.awaiting_login,
                    "input fed while a login is being checked"
                )
            }
            State::Transaction(_) => {}
            State::Update => panic!("input fed after QUIT"),
        }
        let (n_consumed, parsed) = self.parser.feed(input);
        let Some(parsed) = parsed else {
            return (n_consumed, None);
        };
        let Session {
            parser,
            state,
            config,
            tls,
            n_bad_commands,
        } = self;
        let plaintext_ok = config.plaintext_allowed || *tls == Tls::Active;
        let step = match dispatch(state, parser, tls, plaintext_ok, parsed) {
            Ok(step) => {
                *n_bad_commands = 0;
                step
            }
            Err(error) => {
                *n_bad_commands += 1;
                if *n_bad_commands >= POP3_BAD_COMMANDS_MAX {
                    Step::Close(Response::from_error(&ProtoError::TooManyErrors))
                } else {
                    Step::Reply(Response::from_error(&error))
                }
            }
        };
        (n_consumed, Some(step))
    }

    /// The credentials of [`Step::Login`] were right and the maildrop is locked and
    /// listed: enter TRANSACTION (RFC 1939 §4).
    pub fn login_succeeded(&mut self, lock: Lock, listing: Vec<Listed<Id>>) -> Response {
        let State::Authorization(authorization) = &self.state else {
            panic!("login reported outside AUTHORIZATION");
        };
        assert!(
            authorization.awaiting_login,
            "login reported without a Step::Login"
        );
        let deleted = vec![false; listing.len()];
        let transaction = Transaction {
            lock,
            messages: listing,
            deleted,
        };
        let status = transaction.summary("maildrop has");
        self.state = State::Transaction(transaction);
        Response::ok(status)
    }

    /// The login of [`Step::Login`] failed; the session stays in AUTHORIZATION
    /// unless there were too many failures.
    pub fn login_failed(&mut self, failure: LoginFailure) -> Step<'_, Id, Lock> {
        let State::Authorization(authorization) = &mut self.state else {
            panic!("login reported outside AUTHORIZATION");
        };
        assert!(
            authorization.awaiting_login,
            "login reported without a Step::Login"
        );
        authorization.awaiting_login = false;
        let error = match failure {
            LoginFailure::BadCredentials => ProtoError::BadCredentials,
            LoginFailure::InUse => ProtoError::MaildropInUse,
            LoginFailure::Unavailable => ProtoError::Unavailable,
        };
        authorization.n_login_failures += 1;
        if authorization.n_login_failures >= POP3_LOGIN_FAILURES_MAX {
            Step::Close(Response::from_error(&error))
        } else {
            Step::Reply(Response::from_error(&error))
        }
    }

    /// The handshake after [`Step::StartTls`] succeeded.
    pub fn tls_started(&mut self) {
        assert_eq!(
            self.tls,
            Tls::Available,
            "TLS started twice or without STLS"
        );
        assert!(
            matches!(self.state, State::Authorization(_)),
            "STLS is only valid in AUTHORIZATION"
        );
        self.tls = Tls::Active;
        self.parser.reset();
    }

    /// The status line before a message (RFC 1939 §7 RETR, TOP).
    pub fn retrieve_status(n_body_lines: Option<u64>, n_octets: usize) -> Response {
        match n_body_lines {
            None => Response::ok(format!("{n_octets} octets")),
            Some(_) => Response::ok("top of message follows"),
        }
    }

    /// The reply when the store cannot deliver a message it listed.
    pub fn retrieve_failed() -> Response {
        Response::from_error(&ProtoError::Unavailable)
    }

    /// RFC 1939 §6: +OK when the marked messages are gone, -ERR when none is.
    pub fn update_reply(outcome: UpdateOutcome) -> Response {
        match outcome {
            UpdateOutcome::Removed => Response::ok("chordmail POP3 server signing off"),
            UpdateOutcome::Failed => Response::err(
                Some(ResponseCode::SysTemp),
                "deleted messages were not removed, try again later",
            ),
        }
    }
}

/// Checks one parsed line against the state and acts on it, in one `match`.
fn dispatch<'session, Id: Copy + fmt::Display, Lock>(
    state: &'session mut State<Id, Lock>,
    parser: &mut Parser,
    tls: &mut Tls,
    plaintext_ok: bool,
    parsed: Result<Command, ProtoError>,
) -> Result<Step<'session, Id, Lock>, ProtoError> {
    if let State::Authorization(authorization) = state
        && authorization.awaiting_sasl_response
    {
        authorization.awaiting_sasl_response = false;
        return match parsed? {
            Command::SaslResponse(response) => {
                let credentials = decode_plain(&response)?;
                authorization.awaiting_login = true;
                Ok(Step::Login {
                    user: credentials.user,
                    password: credentials.password,
                })
            }
            Command::SaslCancel => Err(ProtoError::SaslCancelled),
            _ => Err(ProtoError::MalformedSasl),
        };
    }
    let command = parsed?;
    if command == Command::Quit {
        return Ok(match std::mem::replace(state, State::Update) {
            State::Transaction(transaction) => {
                let deleted = transaction.marked_ids();
                Step::Update {
                    lock: transaction.lock,
                    deleted,
                }
            }
            State::Authorization(_) | State::Update => {
                Step::Close(Response::ok("chordmail POP3 server signing off"))
            }
        });
    }
    match state {
        State::Authorization(authorization) => match command {
            Command::Capa => Ok(Step::Reply(capabilities(true, plaintext_ok, *tls))),
            Command::Stls => match tls {
                Tls::Available => Ok(Step::StartTls(Response::ok("begin TLS negotiation"))),
                Tls::Active => Err(ProtoError::WrongState),
                Tls::Unavailable => Err(ProtoError::TlsUnavailable),
            },
            Command::User(user) => {
                if !plaintext_ok {
                    return Err(ProtoError::PlaintextRefused);
                }
                authorization.user = Some(user);
                Ok(Step::Reply(Response::ok("send PASS")))
            }
            Command::Pass(password) => {
                if !plaintext_ok {
                    return Err(ProtoError::PlaintextRefused);
                }
                let user = authorization
                    .user
                    .take()
                    .ok_or(ProtoError::PassWithoutUser)?;
                authorization.awaiting_login = true;
                Ok(Step::Login { user, password })
            }
            Command::AuthList => {
                let mechanisms = if plaintext_ok {
                    vec!["PLAIN".to_owned()]
                } else {
                    Vec::new()
                };
                Ok(Step::Reply(Response::MultiLine {
                    status: "SASL mechanisms follow".into(),
                    lines: mechanisms,
                }))
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                if mechanism != "PLAIN" {
                    return Err(ProtoError::UnsupportedMechanism);
                }
                if !plaintext_ok {
                    return Err(ProtoError::PlaintextRefused);
                }
                authorization.user = None;
                match initial_response {
                    None => {
                        authorization.awaiting_sasl_response = true;
                        parser.expect(Expect::SaslResponse);
                        Ok(Step::Reply(Response::Challenge))
                    }
                    Some(response) => {
                        let credentials = decode_plain(&response)?;
                        authorization.awaiting_login = true;
                        Ok(Step::Login {
                            user: credentials.user,
                            password: credentials.password,
                        })
                    }
                }
            }
            Command::SaslResponse(_) | Command::SaslCancel => Err(ProtoError::UnknownCommand),
            Command::Stat
            | Command::List(_)
            | Command::Retr(_)
            | Command::Dele(_)
            | Command::Noop
            | Command::Rset
            | Command::Top { .. }
            | Command::Uidl(_)
            | Command::Quit => Err(ProtoError::WrongState),
        },
        State::Transaction(transaction) => match command {
            Command::Capa => Ok(Step::Reply(capabilities(false, plaintext_ok, *tls))),
            Command::Stat => {
                let (n_messages, n_octets) = transaction.visible_totals();
                Ok(Step::Reply(Response::ok(format!(
                    "{n_messages} {n_octets}"
                ))))
            }
            Command::List(None) => {
                let lines = transaction
                    .visible()
                    .map(|(msg, listed)| format!("{msg} {}", listed.size))
                    .collect();
                Ok(Step::Reply(Response::MultiLine {
                    status: transaction.summary("scan listing follows,"),
                    lines,
                }))
            }
            Command::List(Some(msg)) => {
                let listed = transaction.get(msg)?;
                Ok(Step::Reply(Response::ok(format!("{msg} {}", listed.size))))
            }
            Command::Uidl(None) => {
                let lines = transaction
                    .visible()
                    .map(|(msg, listed)| format!("{msg} {}", listed.id))
                    .collect();
                Ok(Step::Reply(Response::MultiLine {
                    status: "unique-id listing follows".into(),
                    lines,
                }))
            }
            Command::Uidl(Some(msg)) => {
                let listed = transaction.get(msg)?;
                Ok(Step::Reply(Response::ok(format!("{msg} {}", listed.id))))
            }
            Command::Retr(msg) => {
                let id = transaction.get(msg)?.id;
                Ok(Step::Retrieve {
                    lock: &transaction.lock,
                    msg,
                    id,
                    n_body_lines: None,
                })
            }
            Command::Top { msg, n_lines } => {
                let id = transaction.get(msg)?.id;
                Ok(Step::Retrieve {
                    lock: &transaction.lock,
                    msg,
                    id,
                    n_body_lines: Some(n_lines),
                })
            }
            Command::Dele(msg) => {
                let msg_idx = transaction.index(msg)?;
                if transaction.deleted[msg_idx] {
                    return Err(ProtoError::AlreadyDeleted);
                }
                transaction.deleted[msg_idx] = true;
                Ok(Step::Reply(Response::ok(format!("message {msg} deleted"))))
            }
            Command::Rset => {
                transaction.deleted.fill(false);
                Ok(Step::Reply(Response::ok(
                    transaction.summary("maildrop has"),
                )))
            }
            Command::Noop => Ok(Step::Reply(Response::ok(""))),
            Command::Stls
            | Command::User(_)
            | Command::Pass(_)
            | Command::Auth { .. }
            | Command::AuthList
            | Command::Quit => Err(ProtoError::WrongState),
            Command::SaslResponse(_) | Command::SaslCancel => Err(ProtoError::UnknownCommand),
        },
        State::Update => Err(ProtoError::WrongState),
    }
}

/// RFC 2449 §5 CAPA. Login capabilities are listed only where they can be used:
/// in AUTHORIZATION, and without TLS only where plaintext is allowed (RFC 2595 §4).
fn capabilities(in_authorization: bool, plaintext_ok: bool, tls: Tls) -> Response {
    let mut lines: Vec<String> = vec!["TOP".into(), "UIDL".into()];
    if in_authorization && plaintext_ok {
        lines.push("USER".into());
        lines.push("SASL PLAIN".into());
    }
    lines.extend(["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"].map(String::from));
    if in_authorization && tls == Tls::Available {
        lines.push("STLS".into());
    }
    lines.push("IMPLEMENTATION chordmail".into());
    Response::MultiLine {
        status: "capability list follows".into(),
        lines,
    }
}

impl<Id: Copy + fmt::Display, Lock> Transaction<Id, Lock> {
    /// The index of a message that exists and is not marked deleted.
    fn index(&self, msg: u32) -> Result<usize, ProtoError> {
        let msg_idx = usize::try_from(msg)
            .map_err(|_| ProtoError::NoSuchMessage)?
            .checked_sub(1);
        match msg_idx {
            Some(msg_idx) if msg_idx < self.messages.len() => Ok(msg_idx),
            _ => Err(ProtoError::NoSuchMessage),
        }
    }

    /// RFC 1939 §5: a message marked deleted may not be referred to.
    fn get(&self, msg: u32) -> Result<&Listed<Id>, ProtoError> {
        let msg_idx = self.index(msg)?;
        if self.deleted[msg_idx] {
            return Err(ProtoError::NoSuchMessage);
        }
        Ok(&self.messages[msg_idx])
    }

    fn visible(&self) -> impl Iterator<Item = (usize, &Listed<Id>)> {
        self.messages
            .iter()
            .zip(&self.deleted)
            .enumerate()
            .filter(|(_, (_, deleted))| !**deleted)
            .map(|(msg_idx, (listed, _))| (msg_idx + 1, listed))
    }

    fn visible_totals(&self) -> (usize, u64) {
        self.visible()
            .fold((0, 0), |(n_messages, n_octets), (_, listed)| {
                (n_messages + 1, n_octets + listed.size)
            })
    }

    fn summary(&self, prefix: &str) -> String {
        let (n_messages, n_octets) = self.visible_totals();
        format!("{prefix} {n_messages} messages ({n_octets} octets)")
    }

    fn marked_ids(&self) -> Vec<Id> {
        self.messages
            .iter()
            .zip(&self.deleted)
            .filter(|(_, deleted)| **deleted)
            .map(|(listed, _)| listed.id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::{Stuffed, top_of_message};
    use proptest::prelude::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct FakeId(u32);

    impl fmt::Display for FakeId {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "uid{:04}", self.0)
        }
    }

    #[derive(Debug, PartialEq, Eq)]
    struct FakeLock;

    const MESSAGES: [&[u8]; 3] = [
        b"Subject: one\r\n\r\nbody one\r\n",
        b"Subject: two\r\n\r\n.dot line\r\nline 2\r\nline 3\r\n",
        b"Subject: three\r\n\r\nx\r\n",
    ];

    /// A fake shell: carries out every step against `MESSAGES`, accepting the
    /// password "right" for any user, and records the wire output and removals.
    struct Driver {
        session: Session<FakeId, FakeLock>,
        wire: Vec<u8>,
        removed: Option<Vec<FakeId>>,
        closed: bool,
        fail_update: bool,
    }

    impl Driver {
        fn new(config: SessionConfig) -> Driver {
            Driver {
                session: Session::new(config),
                wire: Vec::new(),
                removed: None,
                closed: false,
                fail_update: false,
            }
        }

        fn loopback() -> Driver {
            Driver::new(SessionConfig {
                plaintext_allowed: true,
                tls_available: false,
            })
        }

        /// Feeds `input`, carries out every step, and returns the output it caused.
        fn send(&mut self, mut input: &[u8]) -> String {
            let wire_start = self.wire.len();
            while !input.is_empty() && !self.closed {
                let (n_consumed, step) = self.session.feed(input);
                input = &input[n_consumed..];
                let Some(step) = step else { continue };
                let mut follow_up = None;
                match step {
                    Step::Reply(response) => response.encode(&mut self.wire),
                    Step::Close(response) => {
                        response.encode(&mut self.wire);
                        self.closed = true;
                    }
                    Step::Login { user, password } => follow_up = Some((user, password)),
                    Step::Retrieve {
                        lock,
                        msg: _,
                        id,
                        n_body_lines,
                    } => {
                        assert_eq!(lock, &FakeLock);
                        let message = MESSAGES[id.0 as usize];
                        let part = n_body_lines
                            .map_or(message, |n_lines| top_of_message(message, n_lines));
                        Session::<FakeId, FakeLock>::retrieve_status(n_body_lines, part.len())
                            .encode(&mut self.wire);
                        Stuffed::new(part).for_each(|segment| self.wire.extend_from_slice(segment));
                    }
                    Step::StartTls(response) => {
                        response.encode(&mut self.wire);
                        input = &[];
                        self.session.tls_started();
                    }
                    Step::Update { lock, deleted } => {
                        assert_eq!(lock, FakeLock);
                        let outcome = if self.fail_update {
                            UpdateOutcome::Failed
                        } else {
                            self.removed = Some(deleted);
                            UpdateOutcome::Removed
                        };
                        Session::<FakeId, FakeLock>::update_reply(outcome).encode(&mut self.wire);
                        self.closed = true;
                    }
                }
                if let Some((user, password)) = follow_up {
                    if password.0 == b"right" && user != "busy" {
                        let listing = (0..MESSAGES.len())
                            .map(|idx| Listed {
                                id: FakeId(idx as u32),
                                size: MESSAGES[idx].len() as u64,
                            })
                            .collect();
                        self.session
                            .login_succeeded(FakeLock, listing)
                            .encode(&mut self.wire);
                    } else {
                        let failure = if user == "busy" {
                            LoginFailure::InUse
                        } else {
                            LoginFailure::BadCredentials
                        };
                        match self.session.login_failed(failure) {
                            Step::Reply(response) => response.encode(&mut self.wire),
                            Step::Close(response) => {
                                response.encode(&mut self.wire);
                                self.closed = true;
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
            }
            String::from_utf8(self.wire[wire_start..].to_vec()).unwrap()
        }

        fn logged_in() -> Driver {
            let mut driver = Driver::loopback();
            assert!(
                driver
                    .send(b"USER alice\r\nPASS right\r\n")
                    .ends_with("+OK maildrop has 3 messages (90 octets)\r\n")
            );
            driver
        }
    }

    #[test]
    fn a_whole_session() {
        let mut driver = Driver::logged_in();
        let table: [(&str, &str); 14] = [
            ("STAT\r\n", "+OK 3 90\r\n"),
            (
                "LIST\r\n",
                "+OK scan listing follows, 3 messages (90 octets)\r\n1 26\r\n2 43\r\n3 21\r\n.\r\n",
            ),
            ("LIST 2\r\n", "+OK 2 43\r\n"),
            ("LIST 4\r\n", "-ERR no such message\r\n"),
            (
                "UIDL\r\n",
                "+OK unique-id listing follows\r\n1 uid0000\r\n2 uid0001\r\n3 uid0002\r\n.\r\n",
            ),
            ("UIDL 3\r\n", "+OK 3 uid0002\r\n"),
            (
                "RETR 2\r\n",
                "+OK 43 octets\r\nSubject: two\r\n\r\n..dot line\r\nline 2\r\nline 3\r\n.\r\n",
            ),
            (
                "TOP 2 1\r\n",
                "+OK top of message follows\r\nSubject: two\r\n\r\n..dot line\r\n.\r\n",
            ),
            (
                "TOP 2 0\r\n",
                "+OK top of message follows\r\nSubject: two\r\n\r\n.\r\n",
            ),
            ("DELE 1\r\n", "+OK message 1 deleted\r\n"),
            ("DELE 1\r\n", "-ERR message already deleted\r\n"),
            ("RETR 1\r\n", "-ERR no such message\r\n"),
            ("STAT\r\n", "+OK 2 64\r\n"),
            (
                "LIST\r\n",
                "+OK scan listing follows, 2 messages (64 octets)\r\n2 43\r\n3 21\r\n.\r\n",
            ),
        ];
        for (input, output) in table {
            assert_eq!(driver.send(input.as_bytes()), output, "{input:?}");
        }
        assert_eq!(
            driver.send(b"RSET\r\n"),
            "+OK maildrop has 3 messages (90 octets)\r\n"
        );
        assert_eq!(
            driver.send(b"DELE 3\r\nDELE 2\r\nNOOP\r\n"),
            "+OK message 3 deleted\r\n+OK message 2 deleted\r\n+OK\r\n"
        );
        assert_eq!(
            driver.send(b"QUIT\r\n"),
            "+OK chordmail POP3 server signing off\r\n"
        );
        assert_eq!(driver.removed, Some(vec![FakeId(1), FakeId(2)]));
        assert!(matches!(driver.session.state(), State::Update));
    }

    #[test]
    fn failed_update_is_an_error() {
        let mut driver = Driver::logged_in();
        driver.fail_update = true;
        assert_eq!(
            driver.send(b"DELE 1\r\nQUIT\r\n").lines().last().unwrap(),
            "-ERR [SYS/TEMP] deleted messages were not removed, try again later"
        );
        assert_eq!(driver.removed, None);
    }

    #[test]
    fn greeting_names_the_host() {
        let greeting =
            Session::<FakeId, FakeLock>::greeting("mail.example.org\r\n+OK fake").to_bytes();
        assert_eq!(
            greeting,
            b"+OK mail.example.org+OKfake chordmail POP3 server ready\r\n"
        );
    }

    #[test]
    fn quit_in_authorization_removes_nothing() {
        let mut driver = Driver::loopback();
        assert_eq!(
            driver.send(b"QUIT\r\n"),
            "+OK chordmail POP3 server signing off\r\n"
        );
        assert!(driver.closed);
        assert_eq!(driver.removed, None);
    }

    #[test]
    fn commands_are_checked_against_the_state() {
        let mut driver = Driver::loopback();
        for input in [
            "STAT\r\n",
            "LIST\r\n",
            "RETR 1\r\n",
            "DELE 1\r\n",
            "NOOP\r\n",
            "RSET\r\n",
            "TOP 1 1\r\n",
            "UIDL\r\n",
        ] {
            assert_eq!(
                driver.send(input.as_bytes()),
                "-ERR command is not valid in this state\r\n",
                "{input:?}"
            );
        }
        assert_eq!(
            driver.send(b"PASS right\r\n"),
            "-ERR [AUTH] no USER given before PASS\r\n"
        );
        let mut driver = Driver::logged_in();
        for input in ["USER bob\r\n", "PASS x\r\n", "AUTH PLAIN\r\n", "STLS\r\n"] {
            assert_eq!(
                driver.send(input.as_bytes()),
                "-ERR command is not valid in this state\r\n",
                "{input:?}"
            );
        }
    }

    #[test]
    fn login_failures_carry_response_codes_and_are_bounded() {
        let mut driver = Driver::loopback();
        assert_eq!(
            driver.send(b"USER busy\r\nPASS right\r\n"),
            "+OK send PASS\r\n-ERR [IN-USE] maildrop is already locked by another session\r\n"
        );
        for _ in 1..POP3_LOGIN_FAILURES_MAX - 1 {
            assert_eq!(
                driver.send(b"USER alice\r\nPASS wrong\r\n"),
                "+OK send PASS\r\n-ERR [AUTH] invalid user name or password\r\n"
            );
            assert!(!driver.closed);
        }
        assert_eq!(
            driver.session.n_login_failures(),
            POP3_LOGIN_FAILURES_MAX - 1
        );
        driver.send(b"USER alice\r\nPASS wrong\r\n");
        assert!(driver.closed);
    }

    #[test]
    fn auth_plain_with_and_without_initial_response() {
        // base64("\0alice\0right") and base64("\0alice\0wrong").
        let right = "AGFsaWNlAHJpZ2h0";
        let wrong = "AGFsaWNlAHdyb25n";
        let mut driver = Driver::loopback();
        assert_eq!(
            driver.send(format!("AUTH PLAIN {wrong}\r\n").as_bytes()),
            "-ERR [AUTH] invalid user name or password\r\n"
        );
        assert_eq!(
            driver.send(b"AUTH PLAIN\r\n*\r\n"),
            "+ \r\n-ERR [AUTH] authentication cancelled\r\n"
        );
        assert_eq!(
            driver.send(b"AUTH PLAIN\r\n!!!\r\n"),
            "+ \r\n-ERR [AUTH] malformed authentication data\r\n"
        );
        assert_eq!(
            driver.send(b"AUTH CRAM-MD5\r\n"),
            "-ERR unsupported authentication mechanism\r\n"
        );
        assert_eq!(
            driver.send(b"AUTH\r\n"),
            "+OK SASL mechanisms follow\r\nPLAIN\r\n.\r\n"
        );
        assert_eq!(driver.send(b"AUTH PLAIN\r\n"), "+ \r\n");
        assert_eq!(
            driver.send(format!("{right}\r\n").as_bytes()),
            "+OK maildrop has 3 messages (90 octets)\r\n"
        );
        let mut driver = Driver::loopback();
        assert_eq!(
            driver.send(format!("AUTH PLAIN {right}\r\n").as_bytes()),
            "+OK maildrop has 3 messages (90 octets)\r\n"
        );
    }

    #[test]
    fn plaintext_login_needs_loopback_or_stls() {
        let mut driver = Driver::new(SessionConfig {
            plaintext_allowed: false,
            tls_available: true,
        });
        let capa = driver.send(b"CAPA\r\n");
        assert!(
            capa.contains("\r\nSTLS\r\n") && !capa.contains("USER") && !capa.contains("SASL"),
            "{capa}"
        );
        assert_eq!(
            driver.send(b"USER alice\r\n"),
            "-ERR [SYS/PERM] plaintext authentication is refused on this connection, use STLS first\r\n"
        );
        assert!(
            driver
                .send(b"AUTH PLAIN AGFsaWNlAHJpZ2h0\r\n")
                .starts_with("-ERR [SYS/PERM] plaintext")
        );
        // Bytes pipelined behind STLS are dropped, not run after the handshake.
        assert_eq!(
            driver.send(b"STLS\r\nUSER injected\r\n"),
            "+OK begin TLS negotiation\r\n"
        );
        assert!(driver.session.is_tls_active());
        let capa = driver.send(b"CAPA\r\n");
        assert!(
            !capa.contains("STLS")
                && capa.contains("\r\nUSER\r\n")
                && capa.contains("\r\nSASL PLAIN\r\n"),
            "{capa}"
        );
        assert_eq!(
            driver.send(b"STLS\r\n"),
            "-ERR command is not valid in this state\r\n"
        );
        assert!(
            driver
                .send(b"PASS right\r\n")
                .starts_with("-ERR [AUTH] no USER")
        );
        assert!(
            driver
                .send(b"USER alice\r\nPASS right\r\n")
                .ends_with("+OK maildrop has 3 messages (90 octets)\r\n")
        );
    }

    #[test]
    fn capabilities_follow_rfc_2449() {
        let mut driver = Driver::new(SessionConfig {
            plaintext_allowed: true,
            tls_available: true,
        });
        assert_eq!(
            driver.send(b"CAPA\r\n"),
            "+OK capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n\
             PIPELINING\r\nSTLS\r\nIMPLEMENTATION chordmail\r\n.\r\n"
        );
        let mut driver = Driver::logged_in();
        assert_eq!(
            driver.send(b"CAPA\r\n"),
            "+OK capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n\
             IMPLEMENTATION chordmail\r\n.\r\n"
        );
        assert_eq!(
            driver.send(b"STLS\r\n"),
            "-ERR command is not valid in this state\r\n"
        );
        let mut driver = Driver::new(SessionConfig {
            plaintext_allowed: true,
            tls_available: false,
        });
        assert_eq!(
            driver.send(b"STLS\r\n"),
            "-ERR [SYS/PERM] TLS is not available\r\n"
        );
    }

    #[test]
    fn a_long_line_is_refused_and_the_session_goes_on() {
        let mut driver = Driver::logged_in();
        let long = format!("LIST {}\r\nSTAT\r\n", "1".repeat(300));
        assert_eq!(
            driver.send(long.as_bytes()),
            "-ERR command line too long\r\n+OK 3 90\r\n"
        );
    }

    #[test]
    fn too_many_bad_commands_close_the_session() {
        let mut driver = Driver::loopback();
        for _ in 1..POP3_BAD_COMMANDS_MAX {
            assert_eq!(driver.send(b"BOGUS\r\n"), "-ERR unknown command\r\n");
        }
        assert_eq!(
            driver.send(b"BOGUS\r\n"),
            "-ERR too many errors, closing\r\n"
        );
        assert!(driver.closed);
        // A good command in between resets the count.
        let mut driver = Driver::loopback();
        for _ in 0..3 * POP3_BAD_COMMANDS_MAX {
            driver.send(b"BOGUS\r\nCAPA\r\n");
        }
        assert!(!driver.closed);
    }

    #[test]
    fn byte_split_input_gives_the_same_output() {
        let script: &[u8] = b"CAPA\r\nUSER alice\r\nPASS right\r\nSTAT\r\nLIST\r\nRETR 2\r\nTOP 1 0\r\nDELE 2\r\nUIDL\r\nQUIT\r\n";
        let mut whole = Driver::loopback();
        let expected = whole.send(script);
        for split_idx in 0..script.len() {
            let mut driver = Driver::loopback();
            let output = driver.send(&script[..split_idx]) + &driver.send(&script[split_idx..]);
            assert_eq!(output, expected, "split at {split_idx}");
            assert_eq!(driver.removed, Some(vec![FakeId(1)]));
        }
    }

    proptest! {
        /// Random bytes, cut into random chunks, never panic the session, and it
        /// never buffers without bound.
        #[test]
        fn random_input_never_panics(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            log_in in any::<bool>(),
        ) {
            let mut driver = if log_in { Driver::logged_in() } else { Driver::loopback() };
            for chunk in &chunks {
                driver.send(chunk);
            }
        }

        /// Random sequences of well-formed commands never panic the session.
        #[test]
        fn random_commands_never_panic(commands in proptest::collection::vec(
            prop_oneof![
                Just("STAT".to_owned()), Just("LIST".to_owned()), Just("UIDL".to_owned()), Just("RSET".to_owned()),
                Just("NOOP".to_owned()), Just("CAPA".to_owned()), Just("AUTH PLAIN".to_owned()), Just("*".to_owned()),
                Just("USER alice".to_owned()), Just("PASS right".to_owned()), Just("PASS wrong".to_owned()),
                Just("STLS".to_owned()), Just("QUIT".to_owned()),
                (0u32..6).prop_map(|msg| format!("RETR {msg}")),
                (0u32..6).prop_map(|msg| format!("DELE {msg}")),
                (0u32..6).prop_map(|msg| format!("LIST {msg}")),
                (0u32..6, 0u64..4).prop_map(|(msg, n_lines)| format!("TOP {msg} {n_lines}")),
            ],
            0..40,
        )) {
            let mut driver = Driver::new(SessionConfig { plaintext_allowed: true, tls_available: true });
            for command in commands {
                driver.send(format!("{command}\r\n").as_bytes());
            }
        }
    }
}
