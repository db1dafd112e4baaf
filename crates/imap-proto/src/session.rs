//! The IMAP session (RFC 9051 §3) as plain data: NOT AUTHENTICATED, AUTHENTICATED,
//! SELECTED and LOGOUT, each state holding only what is valid in it.
//!
//! The session never waits for anything. A command that needs the store returns a
//! [`Step`] whose [`Action::Request`] says what to do, and the shell reports the
//! result through [`Session::answer`], which may ask for more (FETCH asks for
//! bodies a batch at a time) before the command completes. Between a request and
//! its answer the shell feeds no input: commands are carried out one at a time in
//! the order they came, which is what RFC 9051 §5.5 requires of commands whose
//! results depend on each other and is simply good enough for the rest.

use std::fmt;

use crate::ProtoError;
use crate::fetch;
use crate::limits::{
    IMAP_BAD_COMMANDS_MAX, IMAP_BODIES_PER_STEP_MAX, IMAP_LOGIN_FAILURES_MAX, PASSWORD_BYTES_MAX,
};
use crate::parser::{
    Command, Expect, FetchItem, ListKind, Parsed, Parser, Rejected, SearchKey, SearchReturn,
    Secret, SeqSet, StatusItem, StoreMode,
};
use crate::response::{Status, push_status, push_string, push_untagged, sanitize_text};
use crate::search;
use crate::selected::{Selected, Snapshot, has_flag, write_flags};
use crate::utf7;

/// What the shell knows about the connection when it starts.
#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    /// LOGIN and AUTHENTICATE PLAIN may be used before STARTTLS: the peer is on
    /// loopback or the operator allowed it. After STARTTLS they always may.
    pub plaintext_allowed: bool,
    /// A certificate is loaded, so STARTTLS is offered.
    pub tls_available: bool,
}

/// RFC 9051 §3's states.
#[derive(Debug)]
pub enum State<Id> {
    NotAuthenticated {
        n_login_failures: u32,
    },
    Authenticated {
        user: String,
    },
    Selected {
        user: String,
        selected: Selected<Id>,
    },
    Logout,
}

/// A folder as LIST shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    pub name: String,
    pub subscribed: bool,
    /// An RFC 6154 attribute such as `\Sent`.
    pub special_use: Option<String>,
}

/// A folder's counts for STATUS; computed by the shell as SELECT would show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FolderStatus {
    pub n_messages: u32,
    pub uid_next: u32,
    pub uid_validity: u32,
    pub n_unseen: u32,
    pub n_deleted: u32,
}

/// Flags to set and clear on one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagChange<Id> {
    pub id: Id,
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

/// Why the store did not do what it was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The folder does not exist (`NO [NONEXISTENT]`, or `[TRYCREATE]` where a
    /// client may create it: APPEND, COPY, MOVE).
    NonExistent,
    AlreadyExists,
    /// The request is not allowed (renaming INBOX, an invalid name).
    Cannot,
    /// Too many folders, flags or the like (`NO [LIMIT]`).
    Limit,
    /// The store could not reach a quorum or failed; trying later may work.
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    BadCredentials,
    Unavailable,
}

/// What the store must do for the session; the matching [`Answer`] is named on
/// each variant.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<Id> {
    /// Check the credentials. [`Answer::Login`].
    Login {
        user: String,
        password: Secret,
    },
    /// Number the folder's new messages (the UID map's lease and quorum write)
    /// and read it. [`Answer::Snapshot`].
    Snapshot {
        folder: String,
    },
    /// The account's folders. [`Answer::Folders`].
    ListFolders,
    /// [`Answer::Status`].
    Status {
        folder: String,
    },
    /// [`Answer::Done`] for the next four.
    Create {
        folder: String,
    },
    Delete {
        folder: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Subscribe {
        folder: String,
        subscribed: bool,
    },
    /// Store a new message in `folder`. [`Answer::Appended`].
    Append {
        folder: String,
        flags: Vec<String>,
        internal_date_s: Option<i64>,
        message: Vec<u8>,
    },
    /// The bodies of these messages, in this order. [`Answer::Bodies`].
    Bodies {
        ids: Vec<Id>,
    },
    /// Write these flag registers. [`Answer::Done`].
    Store {
        changes: Vec<FlagChange<Id>>,
    },
    /// Write tombstones for these messages of `folder`. [`Answer::Done`].
    Expunge {
        folder: String,
        ids: Vec<Id>,
    },
    /// Copy messages into `to`, then (MOVE) tombstone them in `from`; the new
    /// messages' UIDs come back in the same order. [`Answer::Copied`].
    Copy {
        from: String,
        to: String,
        ids: Vec<Id>,
        remove_source: bool,
    },
}

/// The store's reply to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<Id> {
    Login(Result<(), LoginFailure>),
    Snapshot(Result<Snapshot<Id>, Failure>),
    Folders(Result<Vec<FolderInfo>, Failure>),
    Status(Result<FolderStatus, Failure>),
    Done(Result<(), Failure>),
    /// The target folder's UIDVALIDITY and the new message's UID.
    Appended(Result<(u32, u32), Failure>),
    /// One per id asked, `None` for a message the store no longer has.
    Bodies(Vec<Option<Vec<u8>>>),
    /// The target folder's UIDVALIDITY and the new UIDs.
    Copied(Result<(u32, Vec<u32>), Failure>),
}

/// What the shell does after writing [`Step::output`].
#[derive(Debug, PartialEq, Eq)]
pub enum Action<Id> {
    /// Read on and feed.
    Read,
    /// Close the connection.
    Close,
    /// Drop every byte already read, run the TLS handshake, call
    /// [`Session::tls_started`].
    StartTls,
    /// The session idles (RFC 2177): feed input as it comes (`DONE` ends it) and
    /// call [`Session::idle_poll`] when the folder may have changed.
    Idle,
    /// Carry this out and call [`Session::answer`].
    Request(Request<Id>),
}

/// Bytes to write, then an action.
#[derive(Debug, PartialEq, Eq)]
pub struct Step<Id> {
    pub output: Vec<u8>,
    pub action: Action<Id>,
}

impl<Id> Step<Id> {
    fn read(output: Vec<u8>) -> Step<Id> {
        Step {
            output,
            action: Action::Read,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    Unavailable,
    Available,
    Active,
}

/// A FETCH or SEARCH going through the messages a batch of bodies at a time.
#[derive(Debug)]
struct Scan {
    tag: String,
    uid: bool,
    /// UIDs of the messages to go through, in sequence order.
    uids: Vec<u32>,
    next_idx: usize,
    kind: ScanKind,
}

#[derive(Debug)]
enum ScanKind {
    Fetch {
        items: Vec<FetchItem>,
    },
    Search {
        key: SearchKey,
        matches: Vec<u32>,
        returns: Option<Vec<SearchReturn>>,
    },
}

/// What the session waits for, besides the next command.
#[derive(Debug)]
enum Pending {
    Nothing,
    /// The answer to an AUTHENTICATE challenge (a line of input).
    Sasl {
        tag: String,
    },
    /// `DONE`, or a poll.
    Idle {
        tag: String,
    },
    /// An [`Answer`] to the request just returned.
    Answer(Awaiting),
}

#[derive(Debug)]
enum Awaiting {
    Login {
        tag: String,
        user: String,
    },
    Select {
        tag: String,
        folder: String,
        read_only: bool,
    },
    /// NOOP/CHECK (`idle` false) or a poll during IDLE.
    Refresh {
        tag: String,
        idle: bool,
    },
    List {
        tag: String,
        reference: String,
        pattern: String,
        kind: ListKind,
    },
    Status {
        tag: String,
        folder: String,
        items: Vec<StatusItem>,
    },
    Done {
        tag: String,
        verb: &'static str,
    },
    Append {
        tag: String,
    },
    /// STORE, or the implicit `\Seen` of a FETCH (`then` set).
    Store {
        tag: String,
        uid: bool,
        silent: bool,
        updated: Vec<(u32, Vec<String>)>,
        then: Option<Scan>,
    },
    Bodies(Scan),
    Expunge {
        tag: String,
        uids: Vec<u32>,
        close: bool,
    },
    Copy {
        tag: String,
        source_uids: Vec<u32>,
        remove_source: bool,
    },
}

/// One client's IMAP session.
#[derive(Debug)]
pub struct Session<Id> {
    parser: Parser,
    state: State<Id>,
    config: SessionConfig,
    tls: Tls,
    pending: Pending,
    /// RFC 9051 §6.3.1: the client enabled IMAP4rev2 behaviour (ESEARCH replies,
    /// no RECENT).
    rev2: bool,
    n_bad_commands: u32,
}

impl<Id: Clone + PartialEq + fmt::Debug> Session<Id> {
    pub fn new(config: SessionConfig) -> Session<Id> {
        let tls = if config.tls_available {
            Tls::Available
        } else {
            Tls::Unavailable
        };
        Session {
            parser: Parser::new(),
            state: State::NotAuthenticated {
                n_login_failures: 0,
            },
            config,
            tls,
            pending: Pending::Nothing,
            rev2: false,
            n_bad_commands: 0,
        }
    }

    /// RFC 9051 §7.1.1: the greeting, with the capabilities so that clients need
    /// not ask.
    pub fn greeting(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let text = format!(
            "[CAPABILITY {}] chordmail IMAP4rev2 server ready",
            self.capabilities()
        );
        push_untagged(&mut out, &format!("OK {text}"));
        out
    }

    pub fn state(&self) -> &State<Id> {
        &self.state
    }

    pub fn is_tls_active(&self) -> bool {
        self.tls == Tls::Active
    }

    /// Failed logins so far; the shell delays each failure's reply by a time that
    /// grows with it.
    pub fn n_login_failures(&self) -> u32 {
        match &self.state {
            State::NotAuthenticated { n_login_failures } => *n_login_failures,
            _ => 0,
        }
    }

    /// True when no partial command is buffered and nothing is awaited (for an
    /// orderly shutdown).
    pub fn is_between_commands(&self) -> bool {
        self.parser.is_idle() && matches!(self.pending, Pending::Nothing)
    }

    /// The selected folder, for the shell to know which mailbox to watch.
    pub fn selected_folder(&self) -> Option<&str> {
        match &self.state {
            State::Selected { selected, .. } => Some(&selected.folder),
            _ => None,
        }
    }

    /// Consumes input up to the end of the first thing it completes and returns
    /// how many bytes it took and, if something completed, the step to take.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Step<Id>>) {
        assert!(
            !matches!(self.pending, Pending::Answer(_)),
            "input fed while a request is out"
        );
        assert!(
            !matches!(self.state, State::Logout),
            "input fed after LOGOUT"
        );
        let (n_consumed, parsed) = self.parser.feed(input);
        let Some(parsed) = parsed else {
            return (n_consumed, None);
        };
        let step = match parsed {
            Parsed::Command { tag, command } => match self.dispatch(&tag, command) {
                Ok(step) => {
                    self.n_bad_commands = 0;
                    step
                }
                Err(error) => self.reject(Some(tag), error),
            },
            Parsed::Rejected(Rejected { tag, error }) => self.reject(tag, error),
            Parsed::LiteralAccepted => {
                let mut out = Vec::new();
                out.extend_from_slice(b"+ Ready for literal data\r\n");
                Step::read(out)
            }
            Parsed::Overrun { .. } => {
                self.state = State::Logout;
                let mut out = Vec::new();
                push_untagged(&mut out, "BYE literal too large");
                Step {
                    output: out,
                    action: Action::Close,
                }
            }
            Parsed::SaslResponse(response) => self.sasl_response(Some(response)),
            Parsed::SaslCancel => self.sasl_response(None),
            Parsed::IdleDone | Parsed::IdleGarbage => {
                let Pending::Idle { tag } = std::mem::replace(&mut self.pending, Pending::Nothing)
                else {
                    panic!("IDLE input without IDLE");
                };
                self.parser.expect(Expect::Command);
                let mut out = Vec::new();
                if parsed == Parsed::IdleDone {
                    push_status(&mut out, &tag, Status::Ok, None, "IDLE terminated");
                } else {
                    push_status(&mut out, &tag, Status::Bad, None, "expected DONE");
                }
                Step::read(out)
            }
        };
        (n_consumed, Some(step))
    }

    /// The folder may have changed during IDLE: the shell asks the store.
    pub fn idle_poll(&mut self) -> Step<Id> {
        let Pending::Idle { tag } = std::mem::replace(&mut self.pending, Pending::Nothing) else {
            panic!("poll without IDLE");
        };
        match &self.state {
            State::Selected { selected, .. } => {
                let folder = selected.folder.clone();
                self.pending = Pending::Answer(Awaiting::Refresh { tag, idle: true });
                Step {
                    output: Vec::new(),
                    action: Action::Request(Request::Snapshot { folder }),
                }
            }
            _ => {
                self.pending = Pending::Idle { tag };
                Step {
                    output: Vec::new(),
                    action: Action::Idle,
                }
            }
        }
    }

    /// The handshake after [`Action::StartTls`] succeeded.
    pub fn tls_started(&mut self) {
        assert_eq!(
            self.tls,
            Tls::Available,
            "TLS started twice or without STARTTLS"
        );
        self.tls = Tls::Active;
        self.parser.reset();
    }

    fn reject(&mut self, tag: Option<String>, error: ProtoError) -> Step<Id> {
        self.n_bad_commands += 1;
        let mut out = Vec::new();
        if self.n_bad_commands >= IMAP_BAD_COMMANDS_MAX {
            self.state = State::Logout;
            push_untagged(&mut out, &format!("BYE {}", ProtoError::TooManyErrors));
            return Step {
                output: out,
                action: Action::Close,
            };
        }
        let (status, code) = match error {
            ProtoError::LiteralTooLarge | ProtoError::CommandTooLarge => {
                (Status::No, Some("TOOBIG"))
            }
            ProtoError::PlaintextRefused => (Status::No, Some("PRIVACYREQUIRED")),
            ProtoError::ReadOnly => (Status::No, Some("CANNOT")),
            ProtoError::MalformedSasl | ProtoError::SaslCancelled => (Status::Bad, None),
            _ => (Status::Bad, None),
        };
        push_status(
            &mut out,
            tag.as_deref().unwrap_or("*"),
            status,
            code,
            &error.to_string(),
        );
        Step::read(out)
    }

    /// A stored (UTF-8) folder name as this client reads names.
    fn folder_out(&self, name: &str) -> String {
        if self.rev2 {
            name.to_owned()
        } else {
            utf7::encode(name)
        }
    }

    fn plaintext_ok(&self) -> bool {
        self.config.plaintext_allowed || self.tls == Tls::Active
    }

    /// RFC 9051 §7.2.2, listing login capabilities only where they can be used.
    fn capabilities(&self) -> String {
        let mut capabilities = vec![
            "IMAP4rev1",
            "IMAP4rev2",
            "LITERAL+",
            "ENABLE",
            "IDLE",
            "NAMESPACE",
            "ID",
            "UIDPLUS",
            "MOVE",
            "UNSELECT",
            "SPECIAL-USE",
            "CHILDREN",
            "SASL-IR",
        ];
        if matches!(self.state, State::NotAuthenticated { .. }) {
            if self.tls == Tls::Available {
                capabilities.push("STARTTLS");
            }
            if self.plaintext_ok() {
                capabilities.push("AUTH=PLAIN");
            } else {
                capabilities.push("LOGINDISABLED");
            }
        }
        capabilities.join(" ")
    }

    /// Checks one command against the state and acts on it, in one `match`.
    fn dispatch(&mut self, tag: &str, command: Command) -> Result<Step<Id>, ProtoError> {
        let tag = tag.to_owned();
        let mut out = Vec::new();
        let command = if self.rev2 {
            command
        } else {
            folders_from_utf7(command)
        };
        // Commands valid in every state.
        match command {
            Command::Capability => {
                push_untagged(&mut out, &format!("CAPABILITY {}", self.capabilities()));
                push_status(&mut out, &tag, Status::Ok, None, "CAPABILITY completed");
                return Ok(Step::read(out));
            }
            Command::Logout => {
                self.state = State::Logout;
                push_untagged(&mut out, "BYE chordmail IMAP server signing off");
                push_status(&mut out, &tag, Status::Ok, None, "LOGOUT completed");
                return Ok(Step {
                    output: out,
                    action: Action::Close,
                });
            }
            Command::Id => {
                push_untagged(&mut out, "ID (\"name\" \"chordmail\")");
                push_status(&mut out, &tag, Status::Ok, None, "ID completed");
                return Ok(Step::read(out));
            }
            Command::Noop if !matches!(self.state, State::Selected { .. }) => {
                push_status(&mut out, &tag, Status::Ok, None, "NOOP completed");
                return Ok(Step::read(out));
            }
            _ => {}
        }
        let plaintext_ok = self.plaintext_ok();
        match (&mut self.state, command) {
            (State::NotAuthenticated { .. }, Command::StartTls) => {
                if self.tls != Tls::Available {
                    return Err(ProtoError::TlsUnavailable);
                }
                push_status(
                    &mut out,
                    &tag,
                    Status::Ok,
                    None,
                    "begin TLS negotiation now",
                );
                Ok(Step {
                    output: out,
                    action: Action::StartTls,
                })
            }
            (State::NotAuthenticated { .. }, Command::Login { user, password }) => {
                if !plaintext_ok {
                    return Err(ProtoError::PlaintextRefused);
                }
                Ok(self.login(tag, user, password))
            }
            (
                State::NotAuthenticated { .. },
                Command::Authenticate {
                    mechanism,
                    initial_response,
                },
            ) => {
                if mechanism != "PLAIN" {
                    return Err(ProtoError::UnsupportedMechanism);
                }
                if !plaintext_ok {
                    return Err(ProtoError::PlaintextRefused);
                }
                match initial_response {
                    Some(response) => self.sasl_plain(tag, &response.0),
                    None => {
                        self.parser.expect(Expect::SaslResponse);
                        self.pending = Pending::Sasl { tag };
                        out.extend_from_slice(b"+ \r\n");
                        Ok(Step::read(out))
                    }
                }
            }
            (
                State::Authenticated { .. } | State::Selected { .. },
                Command::Enable(capabilities),
            ) => {
                let mut enabled = Vec::new();
                if capabilities
                    .iter()
                    .any(|capability| capability == "IMAP4REV2")
                {
                    self.rev2 = true;
                    enabled.push("IMAP4rev2");
                }
                let line = ["ENABLED"]
                    .into_iter()
                    .chain(enabled)
                    .collect::<Vec<_>>()
                    .join(" ");
                push_untagged(&mut out, &line);
                push_status(&mut out, &tag, Status::Ok, None, "ENABLE completed");
                Ok(Step::read(out))
            }
            (State::Authenticated { .. } | State::Selected { .. }, Command::Namespace) => {
                push_untagged(&mut out, "NAMESPACE ((\"\" \"/\")) NIL NIL");
                push_status(&mut out, &tag, Status::Ok, None, "NAMESPACE completed");
                Ok(Step::read(out))
            }
            (
                State::Authenticated { .. } | State::Selected { .. },
                Command::Select { folder, read_only },
            ) => {
                // RFC 9051 §6.3.2: a SELECT first closes the selected folder.
                if let State::Selected { user, .. } = &mut self.state {
                    let user = std::mem::take(user);
                    self.state = State::Authenticated { user };
                    if self.rev2 {
                        push_untagged(&mut out, "OK [CLOSED] previous folder closed");
                    }
                }
                self.pending = Pending::Answer(Awaiting::Select {
                    tag,
                    folder: folder.clone(),
                    read_only,
                });
                Ok(Step {
                    output: out,
                    action: Action::Request(Request::Snapshot { folder }),
                })
            }
            (
                State::Authenticated { .. } | State::Selected { .. },
                Command::List {
                    reference,
                    pattern,
                    kind,
                },
            ) => {
                if pattern.is_empty() {
                    // RFC 9051 §6.3.9: the hierarchy delimiter and root.
                    push_untagged(&mut out, "LIST (\\Noselect) \"/\" \"\"");
                    push_status(&mut out, &tag, Status::Ok, None, "LIST completed");
                    return Ok(Step::read(out));
                }
                self.pending = Pending::Answer(Awaiting::List {
                    tag,
                    reference,
                    pattern,
                    kind,
                });
                Ok(Step {
                    output: out,
                    action: Action::Request(Request::ListFolders),
                })
            }
            (
                State::Authenticated { .. } | State::Selected { .. },
                Command::Status { folder, items },
            ) => {
                self.pending = Pending::Answer(Awaiting::Status {
                    tag,
                    folder: folder.clone(),
                    items,
                });
                Ok(Step {
                    output: out,
                    action: Action::Request(Request::Status { folder }),
                })
            }
            (State::Authenticated { .. } | State::Selected { .. }, Command::Create(folder)) => {
                Ok(self.simple(
                    tag,
                    "CREATE",
                    Request::Create {
                        folder: folder.trim_end_matches('/').to_owned(),
                    },
                ))
            }
            (State::Authenticated { .. } | State::Selected { .. }, Command::Delete(folder)) => {
                Ok(self.simple(tag, "DELETE", Request::Delete { folder }))
            }
            (
                State::Authenticated { .. } | State::Selected { .. },
                Command::Rename { from, to },
            ) => Ok(self.simple(tag, "RENAME", Request::Rename { from, to })),
            (State::Authenticated { .. } | State::Selected { .. }, Command::Subscribe(folder)) => {
                Ok(self.simple(
                    tag,
                    "SUBSCRIBE",
                    Request::Subscribe {
                        folder,
                        subscribed: true,
                    },
                ))
            }
            (
                State::Authenticated { .. } | State::Selected { .. },
                Command::Unsubscribe(folder),
            ) => Ok(self.simple(
                tag,
                "UNSUBSCRIBE",
                Request::Subscribe {
                    folder,
                    subscribed: false,
                },
            )),
            (
                State::Authenticated { .. } | State::Selected { .. },
                Command::Append {
                    folder,
                    flags,
                    internal_date_s,
                    message,
                },
            ) => {
                let flags = valid_flags(flags)?;
                self.pending = Pending::Answer(Awaiting::Append { tag });
                Ok(Step {
                    output: out,
                    action: Action::Request(Request::Append {
                        folder,
                        flags,
                        internal_date_s,
                        message,
                    }),
                })
            }
            (State::Authenticated { .. } | State::Selected { .. }, Command::Idle) => {
                self.parser.expect(Expect::IdleDone);
                self.pending = Pending::Idle { tag };
                out.extend_from_slice(b"+ idling\r\n");
                Ok(Step {
                    output: out,
                    action: Action::Idle,
                })
            }
            (State::Selected { selected, .. }, Command::Noop | Command::Check) => {
                let folder = selected.folder.clone();
                self.pending = Pending::Answer(Awaiting::Refresh { tag, idle: false });
                Ok(Step {
                    output: out,
                    action: Action::Request(Request::Snapshot { folder }),
                })
            }
            (State::Selected { user, selected }, Command::Close) => {
                let uids: Vec<u32> = selected
                    .messages
                    .iter()
                    .filter(|entry| has_flag(&entry.flags, "\\Deleted"))
                    .map(|entry| entry.uid)
                    .collect();
                if selected.read_only || uids.is_empty() {
                    let user = std::mem::take(user);
                    self.state = State::Authenticated { user };
                    push_status(&mut out, &tag, Status::Ok, None, "CLOSE completed");
                    return Ok(Step::read(out));
                }
                let ids = ids_of(selected, &uids);
                let folder = selected.folder.clone();
                self.pending = Pending::Answer(Awaiting::Expunge {
                    tag,
                    uids,
                    close: true,
                });
                Ok(Step {
                    output: out,
                    action: Action::Request(Request::Expunge { folder, ids }),
                })
            }
            (State::Selected { user, .. }, Command::Unselect) => {
                let user = std::mem::take(user);
                self.state = State::Authenticated { user };
                push_status(&mut out, &tag, Status::Ok, None, "UNSELECT completed");
                Ok(Step::read(out))
            }
            (State::Selected { selected, .. }, Command::Expunge { uids: uid_set }) => {
                if selected.read_only {
                    return Err(ProtoError::ReadOnly);
                }
                let largest_uid = selected.largest_uid();
                let uids: Vec<u32> = selected
                    .messages
                    .iter()
                    .filter(|entry| has_flag(&entry.flags, "\\Deleted"))
                    .filter(|entry| {
                        uid_set
                            .as_ref()
                            .is_none_or(|set| set.contains(entry.uid, largest_uid))
                    })
                    .map(|entry| entry.uid)
                    .collect();
                if uids.is_empty() {
                    selected.flush_expunges(&mut out);
                    push_status(&mut out, &tag, Status::Ok, None, "EXPUNGE completed");
                    return Ok(Step::read(out));
                }
                let ids = ids_of(selected, &uids);
                let folder = selected.folder.clone();
                self.pending = Pending::Answer(Awaiting::Expunge {
                    tag,
                    uids,
                    close: false,
                });
                Ok(Step {
                    output: out,
                    action: Action::Request(Request::Expunge { folder, ids }),
                })
            }
            (
                State::Selected { selected, .. },
                Command::Fetch {
                    set,
                    mut items,
                    uid,
                },
            ) => {
                let uids = targets(selected, &set, uid)?;
                if uid && !items.contains(&FetchItem::Uid) {
                    items.insert(0, FetchItem::Uid);
                }
                let mut scan = Scan {
                    tag,
                    uid,
                    uids,
                    next_idx: 0,
                    kind: ScanKind::Fetch { items },
                };
                let sets_seen =
                    matches!(&scan.kind, ScanKind::Fetch { items } if fetch::sets_seen(items));
                if sets_seen && !selected.read_only {
                    let mut changes = Vec::new();
                    let mut updated = Vec::new();
                    for uid in &scan.uids {
                        let entry = &selected.messages
                            [selected.index_of(*uid).expect("a target is in view")];
                        if has_flag(&entry.flags, "\\Seen") {
                            continue;
                        }
                        changes.push(FlagChange {
                            id: entry.id.clone(),
                            add: vec!["\\Seen".to_owned()],
                            remove: Vec::new(),
                        });
                        let mut flags = entry.flags.clone();
                        flags.push("\\Seen".to_owned());
                        updated.push((entry.uid, flags));
                    }
                    if !changes.is_empty() {
                        // RFC 9051 §6.4.5: the flags changed, so they go out too.
                        if let ScanKind::Fetch { items } = &mut scan.kind
                            && !items.contains(&FetchItem::Flags)
                        {
                            items.push(FetchItem::Flags);
                        }
                        let tag = scan.tag.clone();
                        self.pending = Pending::Answer(Awaiting::Store {
                            tag,
                            uid,
                            silent: true,
                            updated,
                            then: Some(scan),
                        });
                        return Ok(Step {
                            output: out,
                            action: Action::Request(Request::Store { changes }),
                        });
                    }
                }
                Ok(self.scan(scan, out))
            }
            (State::Selected { selected, .. }, Command::Search { key, uid, returns }) => {
                let uids = selected.messages.iter().map(|entry| entry.uid).collect();
                let scan = Scan {
                    tag,
                    uid,
                    uids,
                    next_idx: 0,
                    kind: ScanKind::Search {
                        key,
                        matches: Vec::new(),
                        // RFC 9051 §6.4.4: an IMAP4rev2 client gets ESEARCH, ALL
                        // when it asked for nothing in particular.
                        returns: returns.or_else(|| self.rev2.then(Vec::new)),
                    },
                };
                Ok(self.scan(scan, out))
            }
            (
                State::Selected { selected, .. },
                Command::Store {
                    set,
                    mode,
                    silent,
                    flags,
                    uid,
                },
            ) => {
                if selected.read_only {
                    return Err(ProtoError::ReadOnly);
                }
                let flags = valid_flags(flags)?;
                let uids = targets(selected, &set, uid)?;
                let mut changes = Vec::new();
                let mut updated = Vec::new();
                for entry in uids.iter().map(|uid| {
                    &selected.messages[selected.index_of(*uid).expect("a target is in view")]
                }) {
                    let new_flags: Vec<String> = match mode {
                        StoreMode::Replace => flags.clone(),
                        StoreMode::Add => {
                            let mut new_flags = entry.flags.clone();
                            new_flags.extend(
                                flags
                                    .iter()
                                    .filter(|flag| !has_flag(&entry.flags, flag))
                                    .cloned(),
                            );
                            new_flags
                        }
                        StoreMode::Remove => entry
                            .flags
                            .iter()
                            .filter(|flag| !has_flag(&flags, flag))
                            .cloned()
                            .collect(),
                    };
                    let add: Vec<String> = new_flags
                        .iter()
                        .filter(|flag| !has_flag(&entry.flags, flag))
                        .cloned()
                        .collect();
                    let remove: Vec<String> = entry
                        .flags
                        .iter()
                        .filter(|flag| !has_flag(&new_flags, flag))
                        .cloned()
                        .collect();
                    if !add.is_empty() || !remove.is_empty() {
                        changes.push(FlagChange {
                            id: entry.id.clone(),
                            add,
                            remove,
                        });
                    }
                    updated.push((entry.uid, new_flags));
                }
                if changes.is_empty() {
                    return Ok(self.stored(tag, uid, silent, updated, None));
                }
                self.pending = Pending::Answer(Awaiting::Store {
                    tag,
                    uid,
                    silent,
                    updated,
                    then: None,
                });
                Ok(Step {
                    output: out,
                    action: Action::Request(Request::Store { changes }),
                })
            }
            (
                State::Selected { selected, .. },
                Command::Copy {
                    set,
                    folder,
                    uid,
                    remove_source,
                },
            ) => {
                if remove_source && selected.read_only {
                    return Err(ProtoError::ReadOnly);
                }
                let uids = targets(selected, &set, uid)?;
                if uids.is_empty() {
                    push_status(&mut out, &tag, Status::Ok, None, "nothing to copy");
                    return Ok(Step::read(out));
                }
                let ids = ids_of(selected, &uids);
                let from = selected.folder.clone();
                self.pending = Pending::Answer(Awaiting::Copy {
                    tag,
                    source_uids: uids,
                    remove_source,
                });
                Ok(Step {
                    output: out,
                    action: Action::Request(Request::Copy {
                        from,
                        to: folder,
                        ids,
                        remove_source,
                    }),
                })
            }
            (_, _) => Err(ProtoError::WrongState),
        }
    }

    fn simple(&mut self, tag: String, verb: &'static str, request: Request<Id>) -> Step<Id> {
        self.pending = Pending::Answer(Awaiting::Done { tag, verb });
        Step {
            output: Vec::new(),
            action: Action::Request(request),
        }
    }

    fn login(&mut self, tag: String, user: String, password: Secret) -> Step<Id> {
        if password.0.is_empty() || password.0.len() > PASSWORD_BYTES_MAX {
            return self.login_failed(tag, LoginFailure::BadCredentials);
        }
        self.pending = Pending::Answer(Awaiting::Login {
            tag,
            user: user.clone(),
        });
        Step {
            output: Vec::new(),
            action: Action::Request(Request::Login { user, password }),
        }
    }

    fn sasl_plain(&mut self, tag: String, message: &[u8]) -> Result<Step<Id>, ProtoError> {
        match decode_plain(message) {
            Some((user, password)) => Ok(self.login(tag, user, password)),
            None => Err(ProtoError::MalformedSasl),
        }
    }

    fn sasl_response(&mut self, response: Option<Secret>) -> Step<Id> {
        let Pending::Sasl { tag } = std::mem::replace(&mut self.pending, Pending::Nothing) else {
            panic!("SASL response without a challenge");
        };
        self.parser.expect(Expect::Command);
        let Some(response) = response else {
            return self.reject(Some(tag), ProtoError::SaslCancelled);
        };
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD.decode(&response.0);
        match decoded {
            Ok(message) => match self.sasl_plain(tag.clone(), &message) {
                Ok(step) => step,
                Err(error) => self.reject(Some(tag), error),
            },
            Err(_) => self.reject(Some(tag), ProtoError::MalformedSasl),
        }
    }

    fn login_failed(&mut self, tag: String, failure: LoginFailure) -> Step<Id> {
        let State::NotAuthenticated { n_login_failures } = &mut self.state else {
            panic!("login failed outside NOT AUTHENTICATED");
        };
        *n_login_failures += 1;
        let mut out = Vec::new();
        match failure {
            LoginFailure::BadCredentials => push_status(
                &mut out,
                &tag,
                Status::No,
                Some("AUTHENTICATIONFAILED"),
                "invalid user name or password",
            ),
            LoginFailure::Unavailable => push_status(
                &mut out,
                &tag,
                Status::No,
                Some("UNAVAILABLE"),
                "try again later",
            ),
        }
        if *n_login_failures >= IMAP_LOGIN_FAILURES_MAX {
            self.state = State::Logout;
            push_untagged(&mut out, "BYE too many failed logins");
            return Step {
                output: out,
                action: Action::Close,
            };
        }
        Step::read(out)
    }

    /// The store's answer to the request of the last step.
    pub fn answer(&mut self, answer: Answer<Id>) -> Step<Id> {
        let Pending::Answer(awaiting) = std::mem::replace(&mut self.pending, Pending::Nothing)
        else {
            panic!("answer without a request");
        };
        let mut out = Vec::new();
        match (awaiting, answer) {
            (Awaiting::Login { tag, user }, Answer::Login(result)) => match result {
                Ok(()) => {
                    self.state = State::Authenticated { user };
                    let code = format!("CAPABILITY {}", self.capabilities());
                    push_status(&mut out, &tag, Status::Ok, Some(&code), "logged in");
                    Step::read(out)
                }
                Err(failure) => self.login_failed(tag, failure),
            },
            (
                Awaiting::Select {
                    tag,
                    folder,
                    read_only,
                },
                Answer::Snapshot(result),
            ) => {
                let user = match &mut self.state {
                    State::Authenticated { user } => std::mem::take(user),
                    other => panic!("SELECT answered in {other:?}"),
                };
                let snapshot = match result {
                    Ok(snapshot) => snapshot,
                    Err(failure) => {
                        self.state = State::Authenticated { user };
                        push_failure(&mut out, &tag, failure, "SELECT", false);
                        return Step::read(out);
                    }
                };
                let keywords = snapshot.keywords.clone();
                let selected = Selected::new(folder, read_only, snapshot);
                let mut flags = "\\Answered \\Flagged \\Deleted \\Seen \\Draft".to_owned();
                for keyword in &keywords {
                    flags.push(' ');
                    flags.push_str(keyword);
                }
                push_untagged(&mut out, &format!("{} EXISTS", selected.n_exists()));
                if !self.rev2 {
                    push_untagged(&mut out, "0 RECENT");
                    if let Some(first_unseen) = selected.first_unseen() {
                        push_untagged(
                            &mut out,
                            &format!("OK [UNSEEN {first_unseen}] first unseen"),
                        );
                    }
                }
                push_untagged(&mut out, &format!("FLAGS ({flags})"));
                let permanent = if read_only {
                    String::new()
                } else {
                    format!("{flags} \\*")
                };
                push_untagged(
                    &mut out,
                    &format!("OK [PERMANENTFLAGS ({permanent})] flags permitted"),
                );
                push_untagged(
                    &mut out,
                    &format!("OK [UIDVALIDITY {}] UIDs valid", selected.uid_validity),
                );
                push_untagged(
                    &mut out,
                    &format!("OK [UIDNEXT {}] predicted next UID", selected.uid_next),
                );
                if self.rev2 {
                    // RFC 9051 §6.3.2: the folder's LIST response.
                    let mut line = b"* LIST () \"/\" ".to_vec();
                    push_string(&mut line, selected.folder.as_bytes());
                    out.extend_from_slice(&line);
                    out.extend_from_slice(b"\r\n");
                }
                let (code, verb) = if read_only {
                    ("READ-ONLY", "EXAMINE")
                } else {
                    ("READ-WRITE", "SELECT")
                };
                push_status(
                    &mut out,
                    &tag,
                    Status::Ok,
                    Some(code),
                    &format!("{verb} completed"),
                );
                self.state = State::Selected { user, selected };
                Step::read(out)
            }
            (Awaiting::Refresh { tag, idle }, Answer::Snapshot(result)) => {
                let State::Selected { selected, .. } = &mut self.state else {
                    panic!("refresh answered outside SELECTED");
                };
                match result {
                    Ok(snapshot) => selected.update(snapshot, true, &mut out),
                    // The folder may have been deleted or the store be out of
                    // reach; the view stays as it was and the client is told.
                    Err(failure) if !idle => {
                        push_failure(&mut out, &tag, failure, "NOOP", false);
                        return Step::read(out);
                    }
                    Err(_) => {}
                }
                if idle {
                    self.pending = Pending::Idle { tag };
                    return Step {
                        output: out,
                        action: Action::Idle,
                    };
                }
                push_status(&mut out, &tag, Status::Ok, None, "NOOP completed");
                Step::read(out)
            }
            (
                Awaiting::List {
                    tag,
                    reference,
                    pattern,
                    kind,
                },
                Answer::Folders(result),
            ) => {
                let folders = match result {
                    Ok(folders) => folders,
                    Err(failure) => {
                        push_failure(&mut out, &tag, failure, "LIST", false);
                        return Step::read(out);
                    }
                };
                let full_pattern = format!("{reference}{pattern}");
                let verb = if kind == ListKind::Lsub {
                    "LSUB"
                } else {
                    "LIST"
                };
                for folder in &folders {
                    if kind != ListKind::All && !folder.subscribed {
                        continue;
                    }
                    let matches = if folder.name == "INBOX" {
                        list_matches(&full_pattern.to_ascii_uppercase(), "INBOX")
                    } else {
                        list_matches(&full_pattern, &folder.name)
                    };
                    if !matches {
                        continue;
                    }
                    let prefix = format!("{}/", folder.name);
                    let has_children = folders.iter().any(|other| other.name.starts_with(&prefix));
                    let mut attributes = vec![
                        if has_children {
                            "\\HasChildren"
                        } else {
                            "\\HasNoChildren"
                        }
                        .to_owned(),
                    ];
                    if folder.subscribed && kind != ListKind::Lsub {
                        attributes.push("\\Subscribed".to_owned());
                    }
                    attributes.extend(folder.special_use.clone());
                    let mut line =
                        format!("* {verb} ({}) \"/\" ", attributes.join(" ")).into_bytes();
                    push_string(&mut line, self.folder_out(&folder.name).as_bytes());
                    out.extend_from_slice(&line);
                    out.extend_from_slice(b"\r\n");
                }
                push_status(
                    &mut out,
                    &tag,
                    Status::Ok,
                    None,
                    &format!("{verb} completed"),
                );
                Step::read(out)
            }
            (Awaiting::Status { tag, folder, items }, Answer::Status(result)) => {
                let status = match result {
                    Ok(status) => status,
                    Err(failure) => {
                        push_failure(&mut out, &tag, failure, "STATUS", false);
                        return Step::read(out);
                    }
                };
                let values: Vec<String> = items
                    .iter()
                    .map(|item| match item {
                        StatusItem::Messages => format!("MESSAGES {}", status.n_messages),
                        StatusItem::UidNext => format!("UIDNEXT {}", status.uid_next),
                        StatusItem::UidValidity => format!("UIDVALIDITY {}", status.uid_validity),
                        StatusItem::Unseen => format!("UNSEEN {}", status.n_unseen),
                        StatusItem::Deleted => format!("DELETED {}", status.n_deleted),
                        StatusItem::Recent => "RECENT 0".to_owned(),
                    })
                    .collect();
                let mut line = b"* STATUS ".to_vec();
                push_string(&mut line, self.folder_out(&folder).as_bytes());
                line.extend_from_slice(format!(" ({})\r\n", values.join(" ")).as_bytes());
                out.extend_from_slice(&line);
                push_status(&mut out, &tag, Status::Ok, None, "STATUS completed");
                Step::read(out)
            }
            (Awaiting::Done { tag, verb }, Answer::Done(result)) => {
                match result {
                    Ok(()) => push_status(
                        &mut out,
                        &tag,
                        Status::Ok,
                        None,
                        &format!("{verb} completed"),
                    ),
                    Err(failure) => push_failure(&mut out, &tag, failure, verb, false),
                }
                Step::read(out)
            }
            (Awaiting::Append { tag }, Answer::Appended(result)) => {
                match result {
                    Ok((uid_validity, uid)) => push_status(
                        &mut out,
                        &tag,
                        Status::Ok,
                        Some(&format!("APPENDUID {uid_validity} {uid}")),
                        "APPEND completed",
                    ),
                    Err(failure) => push_failure(&mut out, &tag, failure, "APPEND", true),
                }
                Step::read(out)
            }
            (
                Awaiting::Store {
                    tag,
                    uid,
                    silent,
                    updated,
                    then,
                },
                Answer::Done(result),
            ) => {
                match result {
                    Ok(()) => self.stored(tag, uid, silent, updated, then),
                    // The implicit \Seen of a FETCH failed: the data still goes out.
                    Err(_) if then.is_some() => self.scan(then.expect("checked"), out),
                    Err(failure) => {
                        push_failure(&mut out, &tag, failure, "STORE", false);
                        Step::read(out)
                    }
                }
            }
            (Awaiting::Bodies(scan), Answer::Bodies(bodies)) => self.scanned(scan, bodies),
            (Awaiting::Expunge { tag, uids, close }, Answer::Done(result)) => {
                let State::Selected { user, selected } = &mut self.state else {
                    panic!("EXPUNGE answered outside SELECTED");
                };
                if let Err(failure) = result {
                    push_failure(
                        &mut out,
                        &tag,
                        failure,
                        if close { "CLOSE" } else { "EXPUNGE" },
                        false,
                    );
                    return Step::read(out);
                }
                if close {
                    // RFC 9051 §6.4.1: CLOSE sends no EXPUNGE responses.
                    let user = std::mem::take(user);
                    self.state = State::Authenticated { user };
                    push_status(&mut out, &tag, Status::Ok, None, "CLOSE completed");
                } else {
                    selected.flush_expunges(&mut out);
                    selected.expunge(&uids, &mut out);
                    push_status(&mut out, &tag, Status::Ok, None, "EXPUNGE completed");
                }
                Step::read(out)
            }
            (
                Awaiting::Copy {
                    tag,
                    source_uids,
                    remove_source,
                },
                Answer::Copied(result),
            ) => {
                let State::Selected { selected, .. } = &mut self.state else {
                    panic!("COPY answered outside SELECTED");
                };
                let verb = if remove_source { "MOVE" } else { "COPY" };
                let (uid_validity, new_uids) = match result {
                    Ok(copied) => copied,
                    Err(failure) => {
                        push_failure(&mut out, &tag, failure, verb, true);
                        return Step::read(out);
                    }
                };
                let code = (new_uids.len() == source_uids.len()).then(|| {
                    format!(
                        "COPYUID {uid_validity} {} {}",
                        uid_list(&source_uids),
                        uid_list(&new_uids)
                    )
                });
                if remove_source {
                    // RFC 6851 §4.3: COPYUID goes in an untagged OK before the
                    // expunges, since the tagged reply follows them.
                    if let Some(code) = &code {
                        push_untagged(&mut out, &format!("OK [{code}] moved"));
                    }
                    selected.flush_expunges(&mut out);
                    selected.expunge(&source_uids, &mut out);
                    push_status(&mut out, &tag, Status::Ok, None, "MOVE completed");
                } else {
                    push_status(
                        &mut out,
                        &tag,
                        Status::Ok,
                        code.as_deref(),
                        "COPY completed",
                    );
                }
                Step::read(out)
            }
            (awaiting, answer) => panic!("answer {answer:?} does not fit {awaiting:?}"),
        }
    }

    /// A STORE was written: update the view and report the new flags.
    fn stored(
        &mut self,
        tag: String,
        uid: bool,
        silent: bool,
        updated: Vec<(u32, Vec<String>)>,
        then: Option<Scan>,
    ) -> Step<Id> {
        let State::Selected { selected, .. } = &mut self.state else {
            panic!("STORE outside SELECTED");
        };
        let mut out = Vec::new();
        for (message_uid, flags) in &updated {
            let Some(msg_idx) = selected.index_of(*message_uid) else {
                continue;
            };
            let entry = &mut selected.messages[msg_idx];
            entry.flags = flags.clone();
            if !silent {
                let mut line = format!("{} FETCH (", msg_idx + 1);
                if uid {
                    line.push_str(&format!("UID {} ", entry.uid));
                }
                write_flags(&mut line, &entry.flags);
                line.push(')');
                push_untagged(&mut out, &line);
            }
        }
        if let Some(scan) = then {
            return self.scan(scan, out);
        }
        push_status(&mut out, &tag, Status::Ok, None, "STORE completed");
        Step::read(out)
    }

    /// Goes on with a FETCH or SEARCH: asks for the next batch of bodies if it
    /// needs them, else goes through every remaining message at once.
    fn scan(&mut self, scan: Scan, out: Vec<u8>) -> Step<Id> {
        let State::Selected { selected, .. } = &self.state else {
            panic!("scan outside SELECTED");
        };
        let needs_bodies = match &scan.kind {
            ScanKind::Fetch { items } => fetch::needs_body(items),
            ScanKind::Search { key, .. } => search::needs_body(key),
        };
        if needs_bodies && scan.next_idx < scan.uids.len() {
            let batch_end_idx = (scan.next_idx + IMAP_BODIES_PER_STEP_MAX).min(scan.uids.len());
            let ids = ids_of(selected, &scan.uids[scan.next_idx..batch_end_idx]);
            self.pending = Pending::Answer(Awaiting::Bodies(scan));
            return Step {
                output: out,
                action: Action::Request(Request::Bodies { ids }),
            };
        }
        let n_left = scan.uids.len() - scan.next_idx;
        let mut step = self.scanned(scan, vec![None; n_left]);
        let mut output = out;
        output.append(&mut step.output);
        step.output = output;
        step
    }

    /// Renders or evaluates the messages of one batch (`bodies` in the order of
    /// `scan.uids` from `scan.next_idx`), then goes on or completes.
    fn scanned(&mut self, mut scan: Scan, bodies: Vec<Option<Vec<u8>>>) -> Step<Id> {
        let State::Selected { selected, .. } = &self.state else {
            panic!("scan outside SELECTED");
        };
        let mut out = Vec::new();
        let batch_end_idx = (scan.next_idx + bodies.len()).min(scan.uids.len());
        let largest_uid = selected.largest_uid();
        let n_messages = selected.messages.len() as u32;
        for (uid, body) in scan.uids[scan.next_idx..batch_end_idx].iter().zip(&bodies) {
            let Some(msg_idx) = selected.index_of(*uid) else {
                continue;
            };
            let entry = &selected.messages[msg_idx];
            match &mut scan.kind {
                ScanKind::Fetch { items } => {
                    fetch::render(&mut out, msg_idx + 1, entry, items, body.as_deref())
                }
                ScanKind::Search { key, matches, .. } => {
                    let context = search::Context {
                        seq: msg_idx as u32 + 1,
                        n_messages,
                        largest_uid,
                    };
                    if search::matches(key, &context, entry, body.as_deref()) {
                        matches.push(if scan.uid {
                            entry.uid
                        } else {
                            msg_idx as u32 + 1
                        });
                    }
                }
            }
        }
        scan.next_idx = batch_end_idx;
        if scan.next_idx < scan.uids.len() {
            return self.scan(scan, out);
        }
        match scan.kind {
            ScanKind::Fetch { .. } => {
                push_status(&mut out, &scan.tag, Status::Ok, None, "FETCH completed");
            }
            ScanKind::Search {
                matches, returns, ..
            } => {
                match returns {
                    Some(returns) => {
                        push_esearch(&mut out, &scan.tag, scan.uid, &matches, &returns)
                    }
                    None => {
                        let mut line = "SEARCH".to_owned();
                        for number in &matches {
                            line.push_str(&format!(" {number}"));
                        }
                        push_untagged(&mut out, &line);
                    }
                }
                push_status(&mut out, &scan.tag, Status::Ok, None, "SEARCH completed");
            }
        }
        Step::read(out)
    }
}

/// The folder names of an IMAP4rev1 client's command, from modified UTF-7 to
/// UTF-8. A name that is not valid modified UTF-7 is taken as sent: some clients
/// send UTF-8 anyway, and refusing them would help nobody.
fn folders_from_utf7(command: Command) -> Command {
    let name = |name: String| utf7::decode(&name).unwrap_or(name);
    match command {
        Command::Select { folder, read_only } => Command::Select {
            folder: name(folder),
            read_only,
        },
        Command::Create(folder) => Command::Create(name(folder)),
        Command::Delete(folder) => Command::Delete(name(folder)),
        Command::Rename { from, to } => Command::Rename {
            from: name(from),
            to: name(to),
        },
        Command::Subscribe(folder) => Command::Subscribe(name(folder)),
        Command::Unsubscribe(folder) => Command::Unsubscribe(name(folder)),
        Command::List {
            reference,
            pattern,
            kind,
        } => Command::List {
            reference: name(reference),
            pattern: name(pattern),
            kind,
        },
        Command::Status { folder, items } => Command::Status {
            folder: name(folder),
            items,
        },
        Command::Append {
            folder,
            flags,
            internal_date_s,
            message,
        } => Command::Append {
            folder: name(folder),
            flags,
            internal_date_s,
            message,
        },
        Command::Copy {
            set,
            folder,
            uid,
            remove_source,
        } => Command::Copy {
            set,
            folder: name(folder),
            uid,
            remove_source,
        },
        other => other,
    }
}

/// RFC 9051 §7.3.4 ESEARCH; an empty option list means ALL (RFC 4731 §3.1).
/// MIN, MAX and ALL are left out when nothing matched, COUNT never is.
fn push_esearch(
    out: &mut Vec<u8>,
    tag: &str,
    uid: bool,
    matches: &[u32],
    returns: &[SearchReturn],
) {
    let mut line = String::from("ESEARCH (TAG ");
    let mut quoted_tag = Vec::new();
    push_string(&mut quoted_tag, tag.as_bytes());
    line.push_str(&String::from_utf8_lossy(&quoted_tag));
    line.push(')');
    if uid {
        line.push_str(" UID");
    }
    let returns = if returns.is_empty() {
        &[SearchReturn::All][..]
    } else {
        returns
    };
    for option in returns {
        match (option, matches.first(), matches.last()) {
            (SearchReturn::Min, Some(min), _) => line.push_str(&format!(" MIN {min}")),
            (SearchReturn::Max, _, Some(max)) => line.push_str(&format!(" MAX {max}")),
            (SearchReturn::All, Some(_), _) => {
                line.push_str(&format!(" ALL {}", uid_list(matches)))
            }
            (SearchReturn::Count, _, _) => line.push_str(&format!(" COUNT {}", matches.len())),
            _ => {}
        }
    }
    push_untagged(out, &line);
}

fn push_failure(out: &mut Vec<u8>, tag: &str, failure: Failure, verb: &str, try_create: bool) {
    let (code, text) = match failure {
        Failure::NonExistent if try_create => ("TRYCREATE", "no such folder"),
        Failure::NonExistent => ("NONEXISTENT", "no such folder"),
        Failure::AlreadyExists => ("ALREADYEXISTS", "folder already exists"),
        Failure::Cannot => ("CANNOT", "not allowed"),
        Failure::Limit => ("LIMIT", "too many"),
        Failure::Unavailable => ("UNAVAILABLE", "try again later"),
    };
    push_status(
        out,
        tag,
        Status::No,
        Some(code),
        &sanitize_text(&format!("{verb} failed: {text}")),
    );
}

/// The UIDs a sequence set names, in sequence order. Sequence numbers beyond the
/// folder are an error (RFC 9051 §6.4.8 allows UIDs that name nothing).
fn targets<Id: Clone + PartialEq>(
    selected: &Selected<Id>,
    set: &SeqSet,
    uid: bool,
) -> Result<Vec<u32>, ProtoError> {
    let n_messages = selected.messages.len() as u32;
    if uid {
        let largest_uid = selected.largest_uid();
        return Ok(selected
            .messages
            .iter()
            .filter(|entry| set.contains(entry.uid, largest_uid))
            .map(|entry| entry.uid)
            .collect());
    }
    let out_of_range = set.max_number().is_some_and(|number| number > n_messages)
        || (set.has_star() && n_messages == 0);
    if out_of_range {
        return Err(ProtoError::InvalidSequence);
    }
    Ok(selected
        .messages
        .iter()
        .enumerate()
        .filter(|(msg_idx, _)| set.contains(*msg_idx as u32 + 1, n_messages))
        .map(|(_, entry)| entry.uid)
        .collect())
}

fn ids_of<Id: Clone + PartialEq>(selected: &Selected<Id>, uids: &[u32]) -> Vec<Id> {
    uids.iter()
        .filter_map(|uid| {
            selected
                .index_of(*uid)
                .map(|msg_idx| &selected.messages[msg_idx])
        })
        .map(|entry| entry.id.clone())
        .collect()
}

/// A list of numbers as a compact sequence set (`1:3,7`).
fn uid_list(numbers: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run_start_idx = 0;
    for idx in 1..=numbers.len() {
        let run_ends = idx == numbers.len() || numbers[idx] != numbers[idx - 1].wrapping_add(1);
        if run_ends {
            let (first, last) = (numbers[run_start_idx], numbers[idx - 1]);
            parts.push(if first == last {
                first.to_string()
            } else {
                format!("{first}:{last}")
            });
            run_start_idx = idx;
        }
    }
    parts.join(",")
}

/// The flags a client may store: the system flags but `\Recent`, and keywords.
fn valid_flags(flags: Vec<String>) -> Result<Vec<String>, ProtoError> {
    const SYSTEM: [&str; 5] = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"];
    flags
        .into_iter()
        .map(|flag| {
            if flag.starts_with('\\') {
                SYSTEM
                    .iter()
                    .find(|system| system.eq_ignore_ascii_case(&flag))
                    .map(|system| (*system).to_owned())
                    .ok_or(ProtoError::InvalidFlag)
            } else {
                Ok(flag)
            }
        })
        .collect()
}

/// RFC 9051 §6.3.9 wildcards: `*` matches anything, `%` anything but the
/// hierarchy delimiter. Iterative, so a hostile pattern costs at most
/// pattern × name steps.
fn list_matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // reachable[name_idx]: the pattern so far can match name[..name_idx].
    let mut reachable = vec![false; name.len() + 1];
    reachable[0] = true;
    for wildcard in &pattern {
        let mut next = vec![false; name.len() + 1];
        for name_idx in 0..=name.len() {
            if !reachable[name_idx] {
                continue;
            }
            match wildcard {
                '*' | '%' => {
                    next[name_idx] = true;
                    let mut end_idx = name_idx;
                    while end_idx < name.len() && (*wildcard == '*' || name[end_idx] != '/') {
                        end_idx += 1;
                        next[end_idx] = true;
                    }
                }
                literal => {
                    if name_idx < name.len() && name[name_idx] == *literal {
                        next[name_idx + 1] = true;
                    }
                }
            }
        }
        reachable = next;
    }
    reachable[name.len()]
}

/// SASL PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`. Proxy login is not
/// offered, so an authorization identity other than the user is refused.
fn decode_plain(message: &[u8]) -> Option<(String, Secret)> {
    let mut parts = message.splitn(3, |&byte| byte == 0);
    let (authzid, authcid, password) = (parts.next()?, parts.next()?, parts.next()?);
    if authcid.is_empty()
        || password.is_empty()
        || password.contains(&0)
        || password.len() > PASSWORD_BYTES_MAX
    {
        return None;
    }
    if !authzid.is_empty() && authzid != authcid {
        return None;
    }
    let user = std::str::from_utf8(authcid).ok()?;
    Some((user.to_owned(), Secret(password.to_vec())))
}

#[cfg(test)]
mod tests;
