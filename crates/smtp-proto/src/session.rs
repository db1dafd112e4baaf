//! The session state machine (RFC 5321 §4.1.4, §3.3), as plain data.
//!
//! [`Session`] takes parsed commands and answers with a [`Step`]: a reply to send,
//! or a question for the shell (does this mailbox exist, are these credentials
//! good, store this message), whose answer comes back through a `*_verdict`
//! method. It never waits, reads a clock or touches a socket, so whole
//! conversations are unit-tested here without any I/O.

use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use cm_types::Address;

use crate::command::{AuthStart, Command, MailFrom, Mechanism};
use crate::data::DataReceiver;
use crate::limits::SmtpLimits;
use crate::reply::{self, Reply};
use crate::sasl::{self, Credentials, LOGIN_USER_CHALLENGE, SaslExchange, SaslStep};
use crate::{SmtpError, headers};

/// What the session needs to know about its server and its peer.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub limits: SmtpLimits,
    /// A TLS configuration exists, so STARTTLS can be offered (until it is active).
    pub tls_available: bool,
    /// AUTH may be offered and used before STARTTLS: the peer is on loopback, where
    /// nobody can read the password on the way. After STARTTLS it always may
    /// (docs/DESIGN.md §10, as POP3 and IMAP).
    pub plaintext_allowed: bool,
    /// A MAIL FROM address in a domain the ring serves needs a session
    /// authenticated as that address (docs/DESIGN.md §10); `false` lets anyone use
    /// any sender, for operators whose users send through other submission paths.
    pub sender_login_match: bool,
    /// The peer's address, for the `Received:` header.
    pub peer_ip: IpAddr,
    /// The shell's id of this connection (in its span), named in the `Received:`
    /// header so that a message can be found in the logs.
    pub session_id: String,
}

/// What the shell knows and the core may not read itself: the clock and a source
/// of unique values, taken when the client sent DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// For the `Received:` date and the unique part of an added `Message-ID:`.
    pub unix_seconds: i64,
    /// Random bits that make an added `Message-ID:` unique.
    pub nonce: u64,
}

/// What the client said in HELO/EHLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub helo: String,
    /// EHLO rather than HELO.
    pub extended: bool,
}

/// Where the session stands. Each variant holds only what is valid in it: there
/// is no sender before MAIL and no recipient list before the first RCPT.
#[derive(Debug)]
enum Phase {
    /// Before HELO/EHLO (again after STARTTLS, RFC 3207 §4.2).
    Connected,
    Greeted {
        greeting: Greeting,
    },
    /// MAIL accepted, no recipient yet.
    Mail {
        greeting: Greeting,
        from: MailFrom,
    },
    /// At least one recipient accepted.
    Rcpt {
        greeting: Greeting,
        from: MailFrom,
        recipients: Vec<Address>,
    },
    /// 354 sent; the body is received into `incoming` once the shell passed the
    /// [`Arrival`] (`None` until then).
    Data {
        greeting: Greeting,
        from: MailFrom,
        recipients: Vec<Address>,
        incoming: Option<Incoming>,
    },
    /// A SASL challenge was sent; the next line is the client's response.
    Auth {
        greeting: Greeting,
        exchange: SaslExchange,
    },
    /// Transient while a variant is being moved out of `self.phase`.
    Moved,
}

/// The message being received, in the one buffer that becomes the delivered
/// `Bytes`: `[room for a Message-ID field][Return-Path, Received,
/// Authentication-Results][body so far]`.
///
/// RFC 5321 §4.4 puts the trace fields in front of the body, and whether a
/// `Message-ID:` must be added is known only at the end. Writing the trace first
/// and keeping room for that field in front of it means the body, written once by
/// the [`DataReceiver`], is never copied: at the end either the room is skipped
/// (a zero-copy slice) or the short trace moves to the front and the field goes
/// into the room after it.
struct Incoming {
    receiver: DataReceiver,
    buffer: BytesMut,
    /// The field written into the room if the body has no `Message-ID:`; the room
    /// is exactly as long.
    message_id_field: String,
    trace_bytes: usize,
}

/// Written by hand so that a message body never reaches a log or a panic message.
impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("buffer_bytes", &self.buffer.len())
            .field("trace_bytes", &self.trace_bytes)
            .finish_non_exhaustive()
    }
}

/// What the next line of input is: a command, a SASL response or message data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputMode {
    Command,
    SaslResponse,
    Data,
}

/// What the shell does next.
#[derive(Debug)]
pub enum Step {
    Reply(Reply),
    /// Send the reply, then close the connection.
    Close(Reply),
    /// Look the address up; answer with [`Session::recipient_verdict`].
    VerifyRecipient(Address),
    /// Say whether the sender's domain is served; answer with
    /// [`Session::sender_verdict`], handing the MAIL command back.
    VerifySender(MailFrom, Address),
    /// Check the credentials; answer with [`Session::auth_verdict`].
    Authenticate(Credentials),
    /// Send the 354 reply, call [`Session::begin_data`], then feed the input to
    /// [`Session::feed_data`] ([`InputMode::Data`]).
    StartData(Reply),
    /// Send the 220 reply, drop any input already buffered, run the TLS handshake
    /// and call [`Session::tls_started`].
    StartTls(Reply),
    /// Store the message; answer with [`Session::delivery_verdict`].
    Deliver(Delivery),
}

/// A complete transaction, for the shell to store as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Empty for the null reverse-path.
    pub reverse_path: String,
    /// Not empty, no duplicates, in RCPT order.
    pub recipients: Vec<Address>,
    /// The trace headers (and a `Message-ID:` if the client sent none), then the
    /// unstuffed body: one buffer shared by every copy that is stored.
    pub message: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientVerdict {
    Accepted,
    /// A domain we serve, but no such account.
    UnknownUser,
    /// A domain the ring does not serve: we are no relay.
    DomainNotServed,
    /// The lookup failed (no quorum, disk): try again later.
    Unavailable,
}

/// Where a MAIL FROM address lives, for the rule that binds senders to logins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderVerdict {
    /// A domain the ring serves: only its owner, logged in, may send as it.
    DomainServed,
    /// Any other domain: mail from outside, which the ring cannot vouch for.
    DomainNotServed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthVerdict {
    Accepted(Address),
    Rejected,
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryVerdict {
    /// Durable: only now may the client be told 250.
    Stored {
        queue_id: String,
    },
    TemporaryFailure,
    PermanentFailure,
}

/// One SMTP session's protocol state.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    phase: Phase,
    tls_active: bool,
    /// Survives RSET and new transactions; cleared by STARTTLS.
    authenticated: Option<Address>,
    n_bad_commands_in_a_row: u32,
    n_auth_failures: u32,
}

impl Incoming {
    /// The trace headers, an added `Message-ID:` if the body has none, and the
    /// body without any `Authentication-Results` that claims to be ours, without
    /// copying the body unless such a field has to go (see [`Incoming`]).
    fn into_message(self, hostname: &str) -> Bytes {
        let Incoming {
            mut buffer,
            message_id_field,
            trace_bytes,
            ..
        } = self;
        let room_bytes = message_id_field.len();
        headers::remove_forged_authentication_results(
            &mut buffer,
            room_bytes + trace_bytes,
            hostname,
        );
        let body = &buffer[room_bytes + trace_bytes..];
        if headers::has_header(body, "Message-ID") {
            return buffer.freeze().slice(room_bytes..);
        }
        buffer.copy_within(room_bytes..room_bytes + trace_bytes, 0);
        buffer[trace_bytes..trace_bytes + room_bytes].copy_from_slice(message_id_field.as_bytes());
        buffer.freeze()
    }
}

impl Session {
    pub fn new(config: SessionConfig) -> Session {
        Session {
            config: SessionConfig {
                limits: config.limits.clamped(),
                ..config
            },
            phase: Phase::Connected,
            tls_active: false,
            authenticated: None,
            n_bad_commands_in_a_row: 0,
            n_auth_failures: 0,
        }
    }

    pub fn greeting(&self) -> Reply {
        reply::greeting(&self.config.hostname)
    }

    pub fn limits(&self) -> &SmtpLimits {
        &self.config.limits
    }

    pub fn input_mode(&self) -> InputMode {
        match self.phase {
            Phase::Data { .. } => InputMode::Data,
            Phase::Auth { .. } => InputMode::SaslResponse,
            _ => InputMode::Command,
        }
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    pub fn authenticated(&self) -> Option<&Address> {
        self.authenticated.as_ref()
    }

    /// Failed AUTH attempts so far, for the shell's growing delay.
    pub fn n_auth_failures(&self) -> u32 {
        self.n_auth_failures
    }

    /// Acts on one parsed command (or the parse error in its place).
    pub fn command(&mut self, command: Result<Command, SmtpError>) -> Step {
        assert_eq!(self.input_mode(), InputMode::Command);
        let command = match command {
            Ok(command) => command,
            Err(error) => return self.answer(reply::for_error(&error)),
        };
        let phase = std::mem::replace(&mut self.phase, Phase::Moved);
        let (phase, step) = self.transition(phase, command);
        self.phase = phase;
        match step {
            Step::Reply(reply) => self.answer(reply),
            other => other,
        }
    }

    /// The state change for one command; the check of a command against the
    /// state and the action on it are one `match`.
    fn transition(&mut self, phase: Phase, command: Command) -> (Phase, Step) {
        let hostname = self.config.hostname.as_str();
        match (phase, command) {
            (_, Command::Quit) => (Phase::Connected, Step::Close(reply::bye(hostname))),
            (phase, Command::Noop) => (phase, Step::Reply(reply::ok())),
            (Phase::Connected, Command::Rset) => (Phase::Connected, Step::Reply(reply::ok())),
            (phase, Command::Help) => (phase, Step::Reply(reply::help())),
            (phase, Command::Vrfy) => (phase, Step::Reply(reply::cannot_vrfy())),
            // RFC 5321 §4.1.4: HELO/EHLO at any point aborts a transaction.
            (_, Command::Ehlo(helo)) => {
                let reply = reply::ehlo(hostname, &helo, self.ehlo_keywords());
                (
                    Phase::Greeted {
                        greeting: Greeting {
                            helo,
                            extended: true,
                        },
                    },
                    Step::Reply(reply),
                )
            }
            (_, Command::Helo(helo)) => {
                let reply = reply::helo(hostname, &helo);
                (
                    Phase::Greeted {
                        greeting: Greeting {
                            helo,
                            extended: false,
                        },
                    },
                    Step::Reply(reply),
                )
            }
            (Phase::Connected, _) => (
                Phase::Connected,
                Step::Reply(reply::bad_sequence("send HELO or EHLO first")),
            ),
            (
                Phase::Greeted { greeting }
                | Phase::Mail { greeting, .. }
                | Phase::Rcpt { greeting, .. },
                Command::Rset,
            ) => (Phase::Greeted { greeting }, Step::Reply(reply::ok())),
            (Phase::Greeted { greeting }, Command::Mail(from)) => {
                if from
                    .size_declared
                    .is_some_and(|size| size > self.config.limits.message_bytes_max)
                {
                    return (
                        Phase::Greeted { greeting },
                        Step::Reply(reply::message_too_large()),
                    );
                }
                if !from.smtputf8 && !from.reverse_path.is_ascii() {
                    return (
                        Phase::Greeted { greeting },
                        Step::Reply(reply::utf8_not_permitted()),
                    );
                }
                // The null reverse-path of bounces names nobody, so it needs no login.
                if self.config.sender_login_match && !from.reverse_path.is_empty() {
                    let Ok(address) = Address::parse(&from.reverse_path) else {
                        return (
                            Phase::Greeted { greeting },
                            Step::Reply(reply::for_error(&SmtpError::BadAddress)),
                        );
                    };
                    return (
                        Phase::Greeted { greeting },
                        Step::VerifySender(from, address),
                    );
                }
                (
                    Phase::Mail { greeting, from },
                    Step::Reply(reply::sender_ok()),
                )
            }
            (phase @ (Phase::Mail { .. } | Phase::Rcpt { .. }), Command::Mail(_)) => (
                phase,
                Step::Reply(reply::bad_sequence("nested MAIL command")),
            ),
            (phase @ Phase::Greeted { .. }, Command::Rcpt(_)) => (
                phase,
                Step::Reply(reply::bad_sequence("need MAIL before RCPT")),
            ),
            (phase @ (Phase::Mail { .. } | Phase::Rcpt { .. }), Command::Rcpt(rcpt)) => {
                let (from, recipients) = match &phase {
                    Phase::Mail { from, .. } => (from, &[][..]),
                    Phase::Rcpt {
                        from, recipients, ..
                    } => (from, recipients.as_slice()),
                    _ => unreachable!("matched just above"),
                };
                if !from.smtputf8 && !rcpt.forward_path.as_str().is_ascii() {
                    return (phase, Step::Reply(reply::utf8_not_permitted()));
                }
                if recipients.contains(&rcpt.forward_path) {
                    return (phase, Step::Reply(reply::recipient_ok()));
                }
                if recipients.len() >= self.config.limits.recipients_max {
                    return (phase, Step::Reply(reply::too_many_recipients()));
                }
                (phase, Step::VerifyRecipient(rcpt.forward_path))
            }
            (phase @ Phase::Greeted { .. }, Command::Data) => (
                phase,
                Step::Reply(reply::bad_sequence("need MAIL before DATA")),
            ),
            (phase @ Phase::Mail { .. }, Command::Data) => {
                (phase, Step::Reply(reply::no_valid_recipients()))
            }
            (
                Phase::Rcpt {
                    greeting,
                    from,
                    recipients,
                },
                Command::Data,
            ) => (
                Phase::Data {
                    greeting,
                    from,
                    recipients,
                    incoming: None,
                },
                Step::StartData(reply::start_data()),
            ),
            (
                phase @ (Phase::Greeted { .. } | Phase::Mail { .. } | Phase::Rcpt { .. }),
                Command::StartTls,
            ) => {
                if !matches!(phase, Phase::Greeted { .. }) {
                    (
                        phase,
                        Step::Reply(reply::bad_sequence(
                            "STARTTLS not allowed in a mail transaction",
                        )),
                    )
                } else if self.tls_active {
                    (
                        phase,
                        Step::Reply(reply::bad_sequence("TLS already active")),
                    )
                } else if !self.config.tls_available {
                    (phase, Step::Reply(reply::tls_unavailable()))
                } else {
                    (phase, Step::StartTls(reply::ready_for_tls()))
                }
            }
            (Phase::Greeted { greeting }, Command::Auth(start)) => self.start_auth(greeting, start),
            (phase @ (Phase::Mail { .. } | Phase::Rcpt { .. }), Command::Auth(_)) => (
                phase,
                Step::Reply(reply::bad_sequence(
                    "AUTH not allowed in a mail transaction",
                )),
            ),
            (phase @ (Phase::Data { .. } | Phase::Auth { .. } | Phase::Moved), command) => {
                unreachable!(
                    "input mode {:?} does not parse commands, got {command:?} in {phase:?}",
                    self.input_mode()
                )
            }
        }
    }

    fn start_auth(&mut self, greeting: Greeting, start: AuthStart) -> (Phase, Step) {
        // Checked before the mechanism and any initial response are looked at, so
        // a password sent in clear text off loopback is never even decoded.
        if !self.auth_allowed() {
            return (
                Phase::Greeted { greeting },
                Step::Reply(reply::encryption_required()),
            );
        }
        if self.authenticated.is_some() {
            return (
                Phase::Greeted { greeting },
                Step::Reply(reply::bad_sequence("already authenticated")),
            );
        }
        let exchange = match start.mechanism {
            Mechanism::Plain => SaslExchange::PlainResponse,
            Mechanism::Login => SaslExchange::LoginUser,
            Mechanism::Other => {
                return (
                    Phase::Greeted { greeting },
                    Step::Reply(reply::mechanism_unsupported()),
                );
            }
        };
        match (exchange, start.initial_response) {
            (exchange, Some(initial_response)) => {
                self.sasl_step(greeting, exchange, initial_response.as_bytes())
            }
            (SaslExchange::PlainResponse, None) => (
                Phase::Auth {
                    greeting,
                    exchange: SaslExchange::PlainResponse,
                },
                Step::Reply(reply::auth_challenge("")),
            ),
            (exchange, None) => (
                Phase::Auth { greeting, exchange },
                Step::Reply(reply::auth_challenge(LOGIN_USER_CHALLENGE)),
            ),
        }
    }

    fn sasl_step(
        &mut self,
        greeting: Greeting,
        exchange: SaslExchange,
        line: &[u8],
    ) -> (Phase, Step) {
        match sasl::step(exchange, line) {
            Ok(SaslStep::Challenge {
                next,
                challenge_base64,
            }) => (
                Phase::Auth {
                    greeting,
                    exchange: next,
                },
                Step::Reply(reply::auth_challenge(challenge_base64)),
            ),
            Ok(SaslStep::Done(credentials)) => {
                (Phase::Greeted { greeting }, Step::Authenticate(credentials))
            }
            Err(error) => (
                Phase::Greeted { greeting },
                Step::Reply(reply::for_error(&error)),
            ),
        }
    }

    /// Acts on the client's answer to a SASL challenge.
    pub fn sasl_response(&mut self, line: Result<Vec<u8>, SmtpError>) -> Step {
        let Phase::Auth { greeting, exchange } = std::mem::replace(&mut self.phase, Phase::Moved)
        else {
            panic!("sasl_response outside an AUTH exchange");
        };
        let (phase, step) = match line {
            Ok(line) => self.sasl_step(greeting, exchange, &line),
            Err(error) => (
                Phase::Greeted { greeting },
                Step::Reply(reply::for_error(&error)),
            ),
        };
        self.phase = phase;
        match step {
            Step::Reply(reply) => self.answer(reply),
            other => other,
        }
    }

    /// Accepts or refuses the MAIL command of [`Step::VerifySender`]: an address in
    /// a served domain only from a session authenticated as that address.
    pub fn sender_verdict(
        &mut self,
        from: MailFrom,
        address: Address,
        verdict: SenderVerdict,
    ) -> Step {
        let Phase::Greeted { greeting } = std::mem::replace(&mut self.phase, Phase::Moved) else {
            panic!("sender verdict outside a MAIL command");
        };
        let reply = match (verdict, &self.authenticated) {
            (SenderVerdict::DomainNotServed, _) => None,
            (SenderVerdict::DomainServed, Some(login)) if *login == address => None,
            (SenderVerdict::DomainServed, Some(_)) => Some(reply::sender_not_owned()),
            (SenderVerdict::DomainServed, None) => Some(reply::sender_needs_login()),
        };
        match reply {
            None => {
                self.phase = Phase::Mail { greeting, from };
                self.answer(reply::sender_ok())
            }
            Some(refusal) => {
                self.phase = Phase::Greeted { greeting };
                self.answer(refusal)
            }
        }
    }

    pub fn recipient_verdict(&mut self, recipient: Address, verdict: RecipientVerdict) -> Step {
        // An authenticated client may send to any domain: the shell queues that
        // copy for delivery elsewhere (docs/DESIGN.md §12). Anyone else is refused
        // there, so the ring is never an open relay.
        let verdict = match verdict {
            RecipientVerdict::DomainNotServed if self.authenticated.is_some() => {
                RecipientVerdict::Accepted
            }
            other => other,
        };
        let reply = match verdict {
            RecipientVerdict::Accepted => {
                match std::mem::replace(&mut self.phase, Phase::Moved) {
                    Phase::Mail { greeting, from } => {
                        self.phase = Phase::Rcpt {
                            greeting,
                            from,
                            recipients: vec![recipient],
                        }
                    }
                    Phase::Rcpt {
                        greeting,
                        from,
                        mut recipients,
                    } => {
                        assert!(recipients.len() < self.config.limits.recipients_max);
                        assert!(!recipients.contains(&recipient));
                        recipients.push(recipient);
                        self.phase = Phase::Rcpt {
                            greeting,
                            from,
                            recipients,
                        };
                    }
                    phase => panic!("recipient verdict in {phase:?}"),
                }
                reply::recipient_ok()
            }
            RecipientVerdict::UnknownUser => reply::unknown_user(),
            RecipientVerdict::DomainNotServed => reply::relay_denied(),
            RecipientVerdict::Unavailable => reply::temporary_failure(),
        };
        self.answer(reply)
    }

    pub fn auth_verdict(&mut self, verdict: AuthVerdict) -> Step {
        assert!(
            matches!(self.phase, Phase::Greeted { .. }),
            "auth verdict in {:?}",
            self.phase
        );
        let reply = match verdict {
            AuthVerdict::Accepted(address) => {
                self.authenticated = Some(address);
                reply::auth_succeeded()
            }
            AuthVerdict::Rejected => {
                self.n_auth_failures += 1;
                reply::auth_failed()
            }
            AuthVerdict::Unavailable => reply::auth_unavailable(),
        };
        self.answer(reply)
    }

    /// Starts receiving the message the 354 reply asked for: writes the trace
    /// headers (RFC 5321 §4.4) at the front of the buffer the body goes into.
    pub fn begin_data(&mut self, arrival: Arrival) {
        let Phase::Data {
            greeting,
            from,
            recipients,
            incoming: incoming @ None,
        } = &mut self.phase
        else {
            panic!("begin_data without a DATA command, or twice");
        };
        let hostname = self.config.hostname.as_str();
        let protocol = headers::with_protocol(
            greeting.extended,
            self.tls_active,
            self.authenticated.is_some(),
            from.smtputf8,
        );
        let single_recipient = match recipients.as_slice() {
            [only] => Some(only.as_str()),
            _ => None,
        };
        let mut trace = headers::return_path(&from.reverse_path);
        trace.push_str(&headers::received(&headers::ReceivedFields {
            helo: &greeting.helo,
            peer_ip: &self.config.peer_ip.to_string(),
            hostname,
            protocol,
            id: &self.config.session_id,
            single_recipient,
            date: &cm_types::date::rfc5322_date(arrival.unix_seconds),
        }));
        trace.push_str(&headers::authentication_results(
            hostname,
            self.authenticated.as_ref().map(Address::as_str),
        ));
        let unique = format!("{}.{:016x}", arrival.unix_seconds, arrival.nonce);
        let message_id_field = headers::message_id(&unique, hostname);
        let mut buffer = BytesMut::with_capacity(message_id_field.len() + trace.len());
        buffer.resize(message_id_field.len(), 0);
        buffer.extend_from_slice(trace.as_bytes());
        *incoming = Some(Incoming {
            receiver: DataReceiver::new(&self.config.limits),
            buffer,
            message_id_field,
            trace_bytes: trace.len(),
        });
    }

    /// Takes message data from the front of `input`. `None`: `input` ran out before
    /// the terminating dot. Otherwise the step for the end of data: a delivery, or
    /// the reply for the limit the message broke. Bytes after the dot stay in
    /// `input`: they are the next pipelined command.
    pub fn feed_data(&mut self, input: &mut &[u8]) -> Option<Step> {
        let Phase::Data {
            incoming: Some(incoming),
            ..
        } = &mut self.phase
        else {
            panic!("feed_data outside DATA, or before begin_data");
        };
        let outcome = incoming.receiver.feed(input, &mut incoming.buffer)?;
        Some(self.data_end(outcome))
    }

    /// The DATA receiver found the terminating dot; `Err` if a limit was broken.
    fn data_end(&mut self, outcome: Result<(), SmtpError>) -> Step {
        let Phase::Data {
            greeting,
            from,
            recipients,
            incoming: Some(incoming),
        } = std::mem::replace(&mut self.phase, Phase::Moved)
        else {
            panic!("data_end outside DATA");
        };
        assert!(!recipients.is_empty());
        self.phase = Phase::Greeted { greeting };
        match outcome {
            Ok(()) => Step::Deliver(Delivery {
                reverse_path: from.reverse_path,
                recipients,
                message: incoming.into_message(&self.config.hostname),
            }),
            Err(error) => self.answer(reply::for_error(&error)),
        }
    }

    pub fn delivery_verdict(&mut self, verdict: DeliveryVerdict) -> Step {
        assert!(matches!(self.phase, Phase::Greeted { .. }));
        let reply = match verdict {
            DeliveryVerdict::Stored { queue_id } => reply::delivered(&queue_id),
            DeliveryVerdict::TemporaryFailure => reply::temporary_failure(),
            DeliveryVerdict::PermanentFailure => reply::permanent_failure(),
        };
        self.answer(reply)
    }

    /// RFC 3207 §4.2: after the handshake the server forgets everything it learnt
    /// from the client, the EHLO and any authentication included.
    pub fn tls_started(&mut self) {
        assert!(!self.tls_active && self.config.tls_available);
        self.tls_active = true;
        self.authenticated = None;
        self.phase = Phase::Connected;
    }

    /// Every reply to a command passes here, so that errors in a row are counted in
    /// one place; the one that reaches the limit is replaced by a closing 421.
    fn answer(&mut self, reply: Reply) -> Step {
        if reply.code >= 500 {
            self.n_bad_commands_in_a_row += 1;
            if self.n_bad_commands_in_a_row >= self.config.limits.bad_commands_max {
                return Step::Close(reply::too_many_errors());
            }
        } else {
            self.n_bad_commands_in_a_row = 0;
        }
        Step::Reply(reply)
    }

    /// Whether AUTH is offered and accepted now: under TLS, or on a connection
    /// where plaintext is allowed.
    fn auth_allowed(&self) -> bool {
        self.tls_active || self.config.plaintext_allowed
    }

    /// RFC 5321 §4.1.1.1, RFC 2920, RFC 1870, RFC 6152, RFC 6531, RFC 2034, RFC 4954, RFC 3207.
    fn ehlo_keywords(&self) -> Vec<String> {
        let mut keywords = vec![
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.config.limits.message_bytes_max),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
        ];
        // RFC 4954 §4: a mechanism that needs encryption is not advertised before it.
        if self.auth_allowed() {
            keywords.push("AUTH PLAIN LOGIN".to_owned());
        }
        if self.config.tls_available && !self.tls_active {
            keywords.push("STARTTLS".to_owned());
        }
        keywords.push("HELP".to_owned());
        keywords
    }
}

#[cfg(test)]
mod tests;
