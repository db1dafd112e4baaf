//! The incremental command parser: framing of lines and literals, then the grammar.
//!
//! Framing is ours, the grammar is `imap-codec`'s. The parser collects one whole
//! command (its lines and the literals they announce) and only then hands it to
//! `imap-codec`, so the grammar runs once per command whatever the chunking of the
//! input. Every bound is checked before a byte is kept: a line over
//! [`IMAP_LINE_BYTES_MAX`] is dropped up to its LF and answered with its tag; a
//! synchronising literal over its bound is refused before the client sends it; a
//! non-synchronising one (RFC 7888 LITERAL+) over its bound ends the session, since
//! its octets are already on their way and cannot be told apart from commands.
//!
//! The result is an owned [`Command`], so the session holds no borrowed grammar
//! types and `imap-codec` stays an implementation detail of this module.

use std::fmt;
use std::num::NonZeroU32;

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::{AString, IString};
use imap_codec::imap_types::datetime::NaiveDate;
use imap_codec::imap_types::fetch::{
    Macro, MacroOrMessageDataItemNames, MessageDataItemName, Part, Section as CodecSection,
};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::search::SearchKey as CodecSearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_codec::imap_types::status::StatusDataItemName;

use crate::ProtoError;
use crate::limits::{
    IMAP_COMMAND_BYTES_MAX, IMAP_LINE_BYTES_MAX, IMAP_LITERAL_BYTES_MAX,
    IMAP_LITERALS_PER_COMMAND_MAX, IMAP_TAG_BYTES_MAX, MESSAGE_BYTES_MAX,
};

/// Bytes that must never reach a log: a password or SASL payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A sequence set (RFC 9051 §9 `sequence-set`): ranges whose ends are numbers or
/// `*` (`None`), the largest number in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqSet(pub Vec<(Option<u32>, Option<u32>)>);

impl SeqSet {
    /// Whether `value` is in the set when `*` stands for `largest`. A range is
    /// taken in either order (`4:2` is `2:4`, RFC 9051 §9).
    pub fn contains(&self, value: u32, largest: u32) -> bool {
        self.0.iter().any(|(start, end)| {
            let start = start.unwrap_or(largest);
            let end = end.unwrap_or(largest);
            (start.min(end)..=start.max(end)).contains(&value)
        })
    }

    /// The largest explicit number in the set (to check sequence numbers).
    pub fn max_number(&self) -> Option<u32> {
        self.0
            .iter()
            .flat_map(|(start, end)| [*start, *end])
            .flatten()
            .max()
    }

    pub fn has_star(&self) -> bool {
        self.0
            .iter()
            .any(|(start, end)| start.is_none() || end.is_none())
    }
}

/// What FETCH asks for (RFC 9051 §6.4.5), macros expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchItem {
    Flags,
    Uid,
    InternalDate,
    Rfc822Size,
    Envelope,
    /// BODYSTRUCTURE (`extensible` true) or BODY (false).
    BodyStructure {
        extensible: bool,
    },
    /// BODY[section]<partial>, BODY.PEEK[...], and RFC822 / RFC822.HEADER /
    /// RFC822.TEXT (`legacy` set: named as such in the reply).
    Body {
        section: Section,
        partial: Option<(u32, u32)>,
        peek: bool,
        legacy: Option<&'static str>,
    },
}

/// A body section (RFC 9051 §6.4.5): a part path (empty for the whole message) and
/// what of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub part: Vec<u32>,
    pub text: SectionText,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionText {
    Whole,
    Header,
    HeaderFields { names: Vec<String>, not: bool },
    Text,
    Mime,
}

/// SEARCH keys (RFC 9051 §6.4.4), the subset we evaluate. Dates are days since
/// the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    All,
    And(Vec<SearchKey>),
    Or(Box<SearchKey>, Box<SearchKey>),
    Not(Box<SearchKey>),
    SequenceSet(SeqSet),
    Uid(SeqSet),
    /// A flag that must be set (`true`) or not set (`false`).
    Flag(String, bool),
    /// A header field must contain the text (FROM, TO, CC, BCC, SUBJECT, HEADER).
    Header(String, String),
    Body(String),
    Text(String),
    Before(i64),
    On(i64),
    Since(i64),
    Larger(u32),
    Smaller(u32),
}

/// Which folders LIST shows, and how it names its replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    All,
    /// LIST (SUBSCRIBED), RFC 9051 §6.3.9.
    Subscribed,
    /// LSUB, the IMAP4rev1 command (RFC 3501 §6.3.9).
    Lsub,
}

/// ESEARCH result options (RFC 9051 §6.4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchReturn {
    Min,
    Max,
    All,
    Count,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Replace,
    Add,
    Remove,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    Messages,
    UidNext,
    UidValidity,
    Unseen,
    Deleted,
    Recent,
}

/// One client command, validated for syntax but not yet against the session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Capability,
    Noop,
    Logout,
    StartTls,
    /// RFC 9051 §6.2.2 with RFC 4959's initial response, already base64-decoded.
    Authenticate {
        mechanism: String,
        initial_response: Option<Secret>,
    },
    Login {
        user: String,
        password: Secret,
    },
    Enable(Vec<String>),
    /// RFC 2971; the client's parameters are not kept.
    Id,
    /// RFC 2342.
    Namespace,
    Select {
        folder: String,
        read_only: bool,
    },
    Create(String),
    Delete(String),
    Rename {
        from: String,
        to: String,
    },
    Subscribe(String),
    Unsubscribe(String),
    List {
        reference: String,
        pattern: String,
        kind: ListKind,
    },
    Status {
        folder: String,
        items: Vec<StatusItem>,
    },
    Append {
        folder: String,
        flags: Vec<String>,
        /// Seconds since the Unix epoch.
        internal_date_s: Option<i64>,
        message: Vec<u8>,
    },
    Check,
    Close,
    Unselect,
    /// EXPUNGE, or UID EXPUNGE (RFC 4315) when `uids` is set.
    Expunge {
        uids: Option<SeqSet>,
    },
    Search {
        key: SearchKey,
        uid: bool,
        /// RFC 9051 §6.4.4 (RFC 4731) `RETURN (...)`: `Some` asks for an ESEARCH
        /// reply whatever was enabled; an empty list means ALL.
        returns: Option<Vec<SearchReturn>>,
    },
    Fetch {
        set: SeqSet,
        items: Vec<FetchItem>,
        uid: bool,
    },
    Store {
        set: SeqSet,
        mode: StoreMode,
        silent: bool,
        flags: Vec<String>,
        uid: bool,
    },
    /// COPY, or MOVE (RFC 6851) when `remove_source` is set.
    Copy {
        set: SeqSet,
        folder: String,
        uid: bool,
        remove_source: bool,
    },
    Idle,
}

/// A command line the parser could not take, with its tag when it had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub tag: Option<String>,
    pub error: ProtoError,
}

/// What the next input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Command,
    /// One line answering an AUTHENTICATE challenge (RFC 9051 §6.2.2).
    SaslResponse,
    /// `DONE` ending IDLE (RFC 2177).
    IdleDone,
}

/// One thing the parser found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Command {
        tag: String,
        command: Command,
    },
    Rejected(Rejected),
    /// A synchronising literal was announced and accepted: the session must send a
    /// continuation request before the client sends its octets.
    LiteralAccepted,
    /// A non-synchronising literal over its bound: the session must close.
    Overrun {
        tag: Option<String>,
    },
    SaslResponse(Secret),
    SaslCancel,
    IdleDone,
    /// A line other than `DONE` during IDLE.
    IdleGarbage,
}

#[derive(Debug)]
enum Mode {
    Line,
    Literal {
        n_bytes_left: usize,
    },
    /// The current line is over its bound; bytes are dropped up to the next LF.
    Discarding,
}

/// Assembles commands from arbitrary chunks of input.
#[derive(Debug)]
pub struct Parser {
    /// The current command so far, never longer than [`IMAP_COMMAND_BYTES_MAX`].
    command: Vec<u8>,
    /// Where the current line starts in `command`.
    line_start_idx: usize,
    n_literals: usize,
    mode: Mode,
    expect: Expect,
    /// The tag of a command whose line is being discarded.
    discarded_tag: Option<String>,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new()
    }
}

impl Parser {
    pub fn new() -> Parser {
        Parser {
            command: Vec::new(),
            line_start_idx: 0,
            n_literals: 0,
            mode: Mode::Line,
            expect: Expect::Command,
            discarded_tag: None,
        }
    }

    /// Parses the next input as `expect` until told otherwise.
    pub fn expect(&mut self, expect: Expect) {
        assert!(self.is_idle(), "mode changed in the middle of a command");
        self.expect = expect;
    }

    /// Forgets any partial command, as after STARTTLS: bytes sent before the TLS
    /// handshake must not be taken as commands after it (RFC 9051 §11.1).
    pub fn reset(&mut self) {
        *self = Parser::new();
    }

    /// True when no partial command is buffered.
    pub fn is_idle(&self) -> bool {
        self.command.is_empty() && matches!(self.mode, Mode::Line)
    }

    /// Takes bytes from `input` up to the end of the first thing it completes.
    /// Returns how many bytes were consumed and what was found, if anything.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Parsed>) {
        match self.mode {
            Mode::Literal { n_bytes_left } => {
                let n_taken = n_bytes_left.min(input.len());
                self.command.extend_from_slice(&input[..n_taken]);
                let n_bytes_left = n_bytes_left - n_taken;
                if n_bytes_left == 0 {
                    self.mode = Mode::Line;
                    self.line_start_idx = self.command.len();
                } else {
                    self.mode = Mode::Literal { n_bytes_left };
                }
                (n_taken, None)
            }
            Mode::Discarding => match input.iter().position(|&byte| byte == b'\n') {
                None => (input.len(), None),
                Some(lf_idx) => {
                    let tag = self.discarded_tag.take();
                    self.reset_command();
                    let error = Rejected {
                        tag,
                        error: ProtoError::LineTooLong,
                    };
                    (lf_idx + 1, Some(Parsed::Rejected(error)))
                }
            },
            Mode::Line => self.feed_line(input),
        }
    }

    fn reset_command(&mut self) {
        self.command.clear();
        self.line_start_idx = 0;
        self.n_literals = 0;
        self.mode = Mode::Line;
    }

    fn feed_line(&mut self, input: &[u8]) -> (usize, Option<Parsed>) {
        let line_len = self.command.len() - self.line_start_idx;
        let Some(lf_idx) = input.iter().position(|&byte| byte == b'\n') else {
            // The LF still to come would make the line one byte longer.
            if line_len + input.len() < IMAP_LINE_BYTES_MAX {
                self.command.extend_from_slice(input);
            } else {
                self.start_discarding(input);
            }
            return (input.len(), None);
        };
        let n_consumed = lf_idx + 1;
        if line_len + n_consumed > IMAP_LINE_BYTES_MAX {
            self.start_discarding(input);
            let tag = self.discarded_tag.take();
            self.reset_command();
            let error = Rejected {
                tag,
                error: ProtoError::LineTooLong,
            };
            return (n_consumed, Some(Parsed::Rejected(error)));
        }
        if self.command.len() + n_consumed > IMAP_COMMAND_BYTES_MAX {
            let tag = tag_of(&self.command);
            self.reset_command();
            let error = Rejected {
                tag,
                error: ProtoError::CommandTooLarge,
            };
            return (n_consumed, Some(Parsed::Rejected(error)));
        }
        self.command.extend_from_slice(&input[..n_consumed]);
        let line = &self.command[self.line_start_idx..];
        let parsed = match self.expect {
            Expect::SaslResponse => {
                let text = strip_line_ending(line);
                let parsed = if text == b"*" {
                    Parsed::SaslCancel
                } else {
                    Parsed::SaslResponse(Secret(text.to_vec()))
                };
                self.reset_command();
                parsed
            }
            Expect::IdleDone => {
                let parsed = if strip_line_ending(line).eq_ignore_ascii_case(b"DONE") {
                    Parsed::IdleDone
                } else {
                    Parsed::IdleGarbage
                };
                self.reset_command();
                parsed
            }
            Expect::Command => match literal_announced(line) {
                Some((n_bytes, synchronising)) => {
                    return (n_consumed, self.literal(n_bytes, synchronising));
                }
                None => {
                    let parsed = decode(&self.command);
                    self.reset_command();
                    parsed
                }
            },
        };
        (n_consumed, Some(parsed))
    }

    fn start_discarding(&mut self, input: &[u8]) {
        if self.discarded_tag.is_none() {
            let mut head = self.command[self.line_start_idx..].to_vec();
            head.extend(input.iter().take(IMAP_TAG_BYTES_MAX));
            // Only the first line of a command carries the tag.
            self.discarded_tag = if self.line_start_idx == 0 {
                tag_of(&head)
            } else {
                tag_of(&self.command)
            };
        }
        self.command.clear();
        self.line_start_idx = 0;
        self.mode = Mode::Discarding;
    }

    /// A literal of `n_bytes` was announced at the end of the current line.
    fn literal(&mut self, n_bytes: u64, synchronising: bool) -> Option<Parsed> {
        let is_append = command_name(&self.command).eq_ignore_ascii_case(b"APPEND");
        let literal_bytes_max = if is_append {
            MESSAGE_BYTES_MAX
        } else {
            IMAP_LITERAL_BYTES_MAX
        };
        self.n_literals += 1;
        let over = n_bytes > literal_bytes_max as u64
            || self.command.len() as u64 + n_bytes > IMAP_COMMAND_BYTES_MAX as u64
            || self.n_literals > IMAP_LITERALS_PER_COMMAND_MAX;
        if over {
            let tag = tag_of(&self.command);
            self.reset_command();
            return Some(if synchronising {
                Parsed::Rejected(Rejected {
                    tag,
                    error: ProtoError::LiteralTooLarge,
                })
            } else {
                Parsed::Overrun { tag }
            });
        }
        let n_bytes = n_bytes as usize;
        self.mode = if n_bytes == 0 {
            self.line_start_idx = self.command.len();
            Mode::Line
        } else {
            Mode::Literal {
                n_bytes_left: n_bytes,
            }
        };
        synchronising.then_some(Parsed::LiteralAccepted)
    }
}

/// Drops the CRLF (or a bare LF) ending a line.
fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `{N}` or `{N+}` (RFC 7888) at the end of a line: the literal's length and
/// whether it is synchronising. A length beyond `u64` counts as `u64::MAX`.
fn literal_announced(line: &[u8]) -> Option<(u64, bool)> {
    let text = strip_line_ending(line).strip_suffix(b"}")?;
    let open_idx = text.iter().rposition(|&byte| byte == b'{')?;
    let inside = &text[open_idx + 1..];
    let (digits, synchronising) = match inside.strip_suffix(b"+") {
        Some(digits) => (digits, false),
        None => (inside, true),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n_bytes = digits.iter().fold(0u64, |value, digit| {
        value
            .saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
    });
    Some((n_bytes, synchronising))
}

/// The tag at the start of a command, if it is a valid one (RFC 9051 §9 `tag`).
fn tag_of(command: &[u8]) -> Option<String> {
    let end_idx = command
        .iter()
        .position(|&byte| byte == b' ')
        .filter(|&idx| idx > 0 && idx <= IMAP_TAG_BYTES_MAX)?;
    let tag = &command[..end_idx];
    let is_tag_char = |byte: &u8| byte.is_ascii_graphic() && !b"(){%*\"\\+".contains(byte);
    tag.iter()
        .all(is_tag_char)
        .then(|| String::from_utf8_lossy(tag).into_owned())
}

/// The command name after the tag, skipping `UID`.
fn command_name(command: &[u8]) -> &[u8] {
    let mut words = command.split(|&byte| byte == b' ' || byte == b'\r' || byte == b'\n');
    let _tag = words.next();
    match words.next() {
        Some(word) if word.eq_ignore_ascii_case(b"UID") => words.next().unwrap_or_default(),
        Some(word) => word,
        None => &[],
    }
}

/// Parses one whole command.
fn decode(command: &[u8]) -> Parsed {
    let rejected = |error| {
        Parsed::Rejected(Rejected {
            tag: tag_of(command),
            error,
        })
    };
    if let Some(parsed) = decode_extension(command) {
        return parsed;
    }
    let (command, extended) = match rewrite_extended(command) {
        Ok(Some((rewritten, extended))) => (rewritten, Some(extended)),
        Ok(None) => (command.to_vec(), None),
        Err(()) => return rejected(ProtoError::Syntax),
    };
    match CommandCodec::default().decode(&command) {
        Ok((b"", decoded)) => {
            let tag = decoded.tag.inner().to_owned();
            match convert(decoded.body) {
                Ok(command) => Parsed::Command {
                    tag,
                    command: apply_extended(command, extended),
                },
                Err(error) => Parsed::Rejected(Rejected {
                    tag: Some(tag),
                    error,
                }),
            }
        }
        _ => rejected(ProtoError::Syntax),
    }
}

/// What [`rewrite_extended`] took out of a command.
#[derive(Debug)]
enum Extended {
    SearchReturn(Vec<SearchReturn>),
    /// LIST-EXTENDED selection options (RFC 9051 §6.3.9): only SUBSCRIBED
    /// changes which folders are listed; return options change nothing, since
    /// every LIST reply carries the children and special-use attributes.
    List {
        subscribed_only: bool,
    },
}

/// IMAP4rev2 forms that `imap-codec` 1.0 (an IMAP4rev1 grammar) does not parse:
/// `SEARCH RETURN (...)` and LIST with selection or return options. They are cut
/// out of the command, which then parses as its IMAP4rev1 form. `Err` is a
/// malformed option list.
fn rewrite_extended(command: &[u8]) -> Result<Option<(Vec<u8>, Extended)>, ()> {
    let Some(tag) = tag_of(command) else {
        return Ok(None);
    };
    let mut head_end_idx = tag.len() + 1;
    let after_tag = &command[head_end_idx..];
    let starts_with = |bytes: &[u8], prefix: &[u8]| {
        bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    if starts_with(after_tag, b"UID ") {
        head_end_idx += 4;
    }
    let rest = &command[head_end_idx..];
    if starts_with(rest, b"SEARCH RETURN (") {
        let options_start_idx = head_end_idx + b"SEARCH RETURN (".len();
        let close_idx = options_start_idx
            + command[options_start_idx..]
                .iter()
                .position(|&byte| byte == b')')
                .ok_or(())?;
        let options =
            std::str::from_utf8(&command[options_start_idx..close_idx]).map_err(|_| ())?;
        let returns = options
            .split_ascii_whitespace()
            .map(|option| match option.to_ascii_uppercase().as_str() {
                "MIN" => Ok(SearchReturn::Min),
                "MAX" => Ok(SearchReturn::Max),
                "ALL" => Ok(SearchReturn::All),
                "COUNT" => Ok(SearchReturn::Count),
                _ => Err(()),
            })
            .collect::<Result<Vec<_>, ()>>()?;
        let mut rewritten = command[..head_end_idx + b"SEARCH".len()].to_vec();
        rewritten.extend_from_slice(&command[close_idx + 1..]);
        return Ok(Some((rewritten, Extended::SearchReturn(returns))));
    }
    if !starts_with(after_tag, b"LIST ") {
        return Ok(None);
    }
    let list_end_idx = tag.len() + 1 + b"LIST ".len();
    let mut subscribed_only = false;
    let mut body = command[list_end_idx..].to_vec();
    let mut extended = false;
    if body.first() == Some(&b'(') {
        let close_idx = body.iter().position(|&byte| byte == b')').ok_or(())?;
        let options = std::str::from_utf8(&body[1..close_idx]).map_err(|_| ())?;
        for option in options.split_ascii_whitespace() {
            match option.to_ascii_uppercase().as_str() {
                "SUBSCRIBED" => subscribed_only = true,
                "REMOTE" | "RECURSIVEMATCH" | "SPECIAL-USE" => {}
                _ => return Err(()),
            }
        }
        body.drain(..=close_idx);
        if body.first() != Some(&b' ') {
            return Err(());
        }
        body.remove(0);
        extended = true;
    }
    let upper = body.to_ascii_uppercase();
    if let Some(return_idx) = upper.windows(9).rposition(|window| window == b" RETURN (") {
        let line_end_idx = body.len() - (body.len() - strip_line_ending(&body).len());
        if body[..line_end_idx].ends_with(b")") {
            body.drain(return_idx..line_end_idx);
            extended = true;
        }
    }
    if !extended {
        return Ok(None);
    }
    let mut rewritten = command[..list_end_idx].to_vec();
    rewritten.extend_from_slice(&body);
    Ok(Some((rewritten, Extended::List { subscribed_only })))
}

fn apply_extended(command: Command, extended: Option<Extended>) -> Command {
    match (command, extended) {
        (Command::Search { key, uid, .. }, Some(Extended::SearchReturn(returns))) => {
            Command::Search {
                key,
                uid,
                returns: Some(returns),
            }
        }
        (
            Command::List {
                reference, pattern, ..
            },
            Some(Extended::List { subscribed_only }),
        ) => Command::List {
            reference,
            pattern,
            kind: if subscribed_only {
                ListKind::Subscribed
            } else {
                ListKind::All
            },
        },
        (command, _) => command,
    }
}

/// The commands `imap-codec` 1.0 does not know: ID (RFC 2971), NAMESPACE (RFC
/// 2342) and UID EXPUNGE (RFC 4315). Each fits on one line.
fn decode_extension(command: &[u8]) -> Option<Parsed> {
    let tag = tag_of(command)?;
    let text = strip_line_ending(command);
    let rest = text.get(tag.len() + 1..)?;
    let text = std::str::from_utf8(rest).ok()?;
    let upper = text.to_ascii_uppercase();
    let command = if upper == "NAMESPACE" {
        Command::Namespace
    } else if upper == "ID NIL" || (upper.starts_with("ID (") && upper.ends_with(')')) {
        Command::Id
    } else if let Some(set) = upper.strip_prefix("UID EXPUNGE ") {
        match parse_seq_set(set) {
            Some(set) => Command::Expunge { uids: Some(set) },
            None => {
                return Some(Parsed::Rejected(Rejected {
                    tag: Some(tag),
                    error: ProtoError::Syntax,
                }));
            }
        }
    } else {
        return None;
    };
    Some(Parsed::Command { tag, command })
}

/// RFC 9051 §9 `sequence-set`, for UID EXPUNGE.
fn parse_seq_set(text: &str) -> Option<SeqSet> {
    let number = |text: &str| -> Option<Option<u32>> {
        if text == "*" {
            return Some(None);
        }
        if !text.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        text.parse::<NonZeroU32>()
            .ok()
            .map(|value| Some(value.get()))
    };
    let ranges = text
        .split(',')
        .map(|range| match range.split_once(':') {
            Some((start, end)) => Some((number(start)?, number(end)?)),
            None => number(range).map(|value| (value, value)),
        })
        .collect::<Option<Vec<_>>>()?;
    Some(SeqSet(ranges))
}

fn astring(value: &AString<'_>) -> Result<String, ProtoError> {
    String::from_utf8(value.as_ref().to_vec()).map_err(|_| ProtoError::Syntax)
}

/// A folder name as the client gave it; INBOX in any case is INBOX.
fn folder(mailbox: &Mailbox<'_>) -> Result<String, ProtoError> {
    match mailbox {
        Mailbox::Inbox => Ok("INBOX".to_owned()),
        Mailbox::Other(other) => astring(other.inner()),
    }
}

fn seq_set(set: &SequenceSet) -> SeqSet {
    let bound = |value: &SeqOrUid| match value {
        SeqOrUid::Value(value) => Some(value.get()),
        SeqOrUid::Asterisk => None,
    };
    SeqSet(
        set.0
            .as_ref()
            .iter()
            .map(|sequence| match sequence {
                Sequence::Single(value) => (bound(value), bound(value)),
                Sequence::Range(start, end) => (bound(start), bound(end)),
            })
            .collect(),
    )
}

fn flag_name(flag: &Flag<'_>) -> String {
    flag.to_string()
}

fn days(date: &NaiveDate) -> i64 {
    let date: &chrono::NaiveDate = date.as_ref();
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    (*date - epoch).num_days()
}

fn convert(body: CommandBody<'_>) -> Result<Command, ProtoError> {
    let command = match body {
        CommandBody::Capability => Command::Capability,
        CommandBody::Noop => Command::Noop,
        CommandBody::Logout => Command::Logout,
        CommandBody::StartTLS => Command::StartTls,
        CommandBody::Authenticate {
            mechanism,
            initial_response,
        } => Command::Authenticate {
            mechanism: mechanism.to_string().to_ascii_uppercase(),
            initial_response: initial_response
                .map(|response| Secret(response.declassify().as_ref().to_vec())),
        },
        CommandBody::Login { username, password } => Command::Login {
            user: astring(&username)?,
            password: Secret(password.declassify().as_ref().to_vec()),
        },
        CommandBody::Enable { capabilities } => Command::Enable(
            capabilities
                .as_ref()
                .iter()
                .map(|capability| capability.to_string().to_ascii_uppercase())
                .collect(),
        ),
        CommandBody::Select { mailbox } => Command::Select {
            folder: folder(&mailbox)?,
            read_only: false,
        },
        CommandBody::Examine { mailbox } => Command::Select {
            folder: folder(&mailbox)?,
            read_only: true,
        },
        CommandBody::Create { mailbox } => Command::Create(folder(&mailbox)?),
        CommandBody::Delete { mailbox } => Command::Delete(folder(&mailbox)?),
        CommandBody::Rename { from, to } => Command::Rename {
            from: folder(&from)?,
            to: folder(&to)?,
        },
        CommandBody::Subscribe { mailbox } => Command::Subscribe(folder(&mailbox)?),
        CommandBody::Unsubscribe { mailbox } => Command::Unsubscribe(folder(&mailbox)?),
        CommandBody::List {
            reference,
            mailbox_wildcard,
        } => Command::List {
            reference: folder(&reference)?,
            pattern: list_pattern(&mailbox_wildcard)?,
            kind: ListKind::All,
        },
        CommandBody::Lsub {
            reference,
            mailbox_wildcard,
        } => Command::List {
            reference: folder(&reference)?,
            pattern: list_pattern(&mailbox_wildcard)?,
            kind: ListKind::Lsub,
        },
        CommandBody::Status {
            mailbox,
            item_names,
        } => Command::Status {
            folder: folder(&mailbox)?,
            items: item_names
                .iter()
                .filter_map(|item| match item {
                    StatusDataItemName::Messages => Some(StatusItem::Messages),
                    StatusDataItemName::UidNext => Some(StatusItem::UidNext),
                    StatusDataItemName::UidValidity => Some(StatusItem::UidValidity),
                    StatusDataItemName::Unseen => Some(StatusItem::Unseen),
                    StatusDataItemName::Deleted => Some(StatusItem::Deleted),
                    StatusDataItemName::Recent => Some(StatusItem::Recent),
                    _ => None,
                })
                .collect(),
        },
        CommandBody::Append {
            mailbox,
            flags,
            date,
            message,
        } => Command::Append {
            folder: folder(&mailbox)?,
            flags: flags.iter().map(flag_name).collect(),
            internal_date_s: date.map(|date| date.as_ref().timestamp()),
            message: message.data().to_vec(),
        },
        CommandBody::Check => Command::Check,
        CommandBody::Close => Command::Close,
        CommandBody::Unselect => Command::Unselect,
        CommandBody::Expunge => Command::Expunge { uids: None },
        CommandBody::Search { criteria, uid, .. } => Command::Search {
            key: search_key(&criteria, 0)?,
            uid,
            returns: None,
        },
        CommandBody::Fetch {
            sequence_set,
            macro_or_item_names,
            uid,
        } => Command::Fetch {
            set: seq_set(&sequence_set),
            items: fetch_items(&macro_or_item_names)?,
            uid,
        },
        CommandBody::Store {
            sequence_set,
            kind,
            response,
            flags,
            uid,
        } => Command::Store {
            set: seq_set(&sequence_set),
            mode: match kind {
                StoreType::Replace => StoreMode::Replace,
                StoreType::Add => StoreMode::Add,
                StoreType::Remove => StoreMode::Remove,
            },
            silent: response == StoreResponse::Silent,
            flags: flags.iter().map(flag_name).collect(),
            uid,
        },
        CommandBody::Copy {
            sequence_set,
            mailbox,
            uid,
        } => Command::Copy {
            set: seq_set(&sequence_set),
            folder: folder(&mailbox)?,
            uid,
            remove_source: false,
        },
        CommandBody::Move {
            sequence_set,
            mailbox,
            uid,
        } => Command::Copy {
            set: seq_set(&sequence_set),
            folder: folder(&mailbox)?,
            uid,
            remove_source: true,
        },
        CommandBody::Idle => Command::Idle,
        // Not offered: COMPRESS, QUOTA.
        _ => return Err(ProtoError::Syntax),
    };
    Ok(command)
}

fn list_pattern(pattern: &ListMailbox<'_>) -> Result<String, ProtoError> {
    let bytes: &[u8] = match pattern {
        ListMailbox::Token(token) => token.as_ref(),
        ListMailbox::String(IString::Quoted(quoted)) => quoted.inner().as_bytes(),
        ListMailbox::String(IString::Literal(literal)) => literal.data(),
    };
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::Syntax)
}

fn section_text(part: &Option<Part>) -> Vec<u32> {
    part.as_ref()
        .map(|part| part.0.as_ref().iter().map(|number| number.get()).collect())
        .unwrap_or_default()
}

fn section(section: &Option<CodecSection<'_>>) -> Result<Section, ProtoError> {
    let names = |names: &imap_codec::imap_types::core::NonEmptyVec<AString<'_>>| {
        names
            .as_ref()
            .iter()
            .map(astring)
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match section {
        None => Section {
            part: Vec::new(),
            text: SectionText::Whole,
        },
        Some(CodecSection::Part(part)) => Section {
            part: section_text(&Some(part.clone())),
            text: SectionText::Whole,
        },
        Some(CodecSection::Header(part)) => Section {
            part: section_text(part),
            text: SectionText::Header,
        },
        Some(CodecSection::HeaderFields(part, fields)) => Section {
            part: section_text(part),
            text: SectionText::HeaderFields {
                names: names(fields)?,
                not: false,
            },
        },
        Some(CodecSection::HeaderFieldsNot(part, fields)) => Section {
            part: section_text(part),
            text: SectionText::HeaderFields {
                names: names(fields)?,
                not: true,
            },
        },
        Some(CodecSection::Text(part)) => Section {
            part: section_text(part),
            text: SectionText::Text,
        },
        Some(CodecSection::Mime(part)) => Section {
            part: section_text(&Some(part.clone())),
            text: SectionText::Mime,
        },
    })
}

fn fetch_items(items: &MacroOrMessageDataItemNames<'_>) -> Result<Vec<FetchItem>, ProtoError> {
    let whole = |text| Section {
        part: Vec::new(),
        text,
    };
    // RFC 9051 §6.4.5: the macros.
    let fast = [
        FetchItem::Flags,
        FetchItem::InternalDate,
        FetchItem::Rfc822Size,
    ];
    let items = match items {
        MacroOrMessageDataItemNames::Macro(Macro::Fast) => fast.to_vec(),
        MacroOrMessageDataItemNames::Macro(Macro::All) => {
            let mut items = fast.to_vec();
            items.push(FetchItem::Envelope);
            items
        }
        MacroOrMessageDataItemNames::Macro(Macro::Full) => {
            let mut items = fast.to_vec();
            items.push(FetchItem::Envelope);
            items.push(FetchItem::BodyStructure { extensible: false });
            items
        }
        MacroOrMessageDataItemNames::MessageDataItemNames(names) => names
            .iter()
            .map(|name| {
                Ok(match name {
                    MessageDataItemName::Flags => FetchItem::Flags,
                    MessageDataItemName::Uid => FetchItem::Uid,
                    MessageDataItemName::InternalDate => FetchItem::InternalDate,
                    MessageDataItemName::Rfc822Size => FetchItem::Rfc822Size,
                    MessageDataItemName::Envelope => FetchItem::Envelope,
                    MessageDataItemName::Body => FetchItem::BodyStructure { extensible: false },
                    MessageDataItemName::BodyStructure => {
                        FetchItem::BodyStructure { extensible: true }
                    }
                    MessageDataItemName::BodyExt {
                        section: body_section,
                        partial,
                        peek,
                    } => FetchItem::Body {
                        section: section(body_section)?,
                        partial: partial.map(|(start, len)| (start, len.get())),
                        peek: *peek,
                        legacy: None,
                    },
                    MessageDataItemName::Rfc822 => FetchItem::Body {
                        section: whole(SectionText::Whole),
                        partial: None,
                        peek: false,
                        legacy: Some("RFC822"),
                    },
                    MessageDataItemName::Rfc822Header => FetchItem::Body {
                        section: whole(SectionText::Header),
                        partial: None,
                        peek: true,
                        legacy: Some("RFC822.HEADER"),
                    },
                    MessageDataItemName::Rfc822Text => FetchItem::Body {
                        section: whole(SectionText::Text),
                        partial: None,
                        peek: false,
                        legacy: Some("RFC822.TEXT"),
                    },
                })
            })
            .collect::<Result<Vec<_>, ProtoError>>()?,
        _ => return Err(ProtoError::Syntax),
    };
    Ok(items)
}

/// Search keys nest; `imap-codec` bounds its own recursion, and this bound keeps
/// the conversion from going deeper than the grammar allowed.
const SEARCH_DEPTH_MAX: usize = 32;

fn search_key(key: &CodecSearchKey<'_>, depth: usize) -> Result<SearchKey, ProtoError> {
    if depth > SEARCH_DEPTH_MAX {
        return Err(ProtoError::Syntax);
    }
    let text = |value: &AString<'_>| astring(value);
    let header = |name: &str, value: &AString<'_>| -> Result<SearchKey, ProtoError> {
        Ok(SearchKey::Header(name.to_owned(), text(value)?))
    };
    let flag = |name: &str, set: bool| SearchKey::Flag(name.to_owned(), set);
    let key = match key {
        CodecSearchKey::All => SearchKey::All,
        CodecSearchKey::And(keys) => SearchKey::And(
            keys.as_ref()
                .iter()
                .map(|key| search_key(key, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        CodecSearchKey::Or(left, right) => SearchKey::Or(
            Box::new(search_key(left, depth + 1)?),
            Box::new(search_key(right, depth + 1)?),
        ),
        CodecSearchKey::Not(key) => SearchKey::Not(Box::new(search_key(key, depth + 1)?)),
        CodecSearchKey::SequenceSet(set) => SearchKey::SequenceSet(seq_set(set)),
        CodecSearchKey::Uid(set) => SearchKey::Uid(seq_set(set)),
        CodecSearchKey::Answered => flag("\\Answered", true),
        CodecSearchKey::Unanswered => flag("\\Answered", false),
        CodecSearchKey::Deleted => flag("\\Deleted", true),
        CodecSearchKey::Undeleted => flag("\\Deleted", false),
        CodecSearchKey::Draft => flag("\\Draft", true),
        CodecSearchKey::Undraft => flag("\\Draft", false),
        CodecSearchKey::Flagged => flag("\\Flagged", true),
        CodecSearchKey::Unflagged => flag("\\Flagged", false),
        CodecSearchKey::Seen => flag("\\Seen", true),
        CodecSearchKey::Unseen => flag("\\Seen", false),
        CodecSearchKey::Keyword(atom) => flag(atom.inner(), true),
        CodecSearchKey::Unkeyword(atom) => flag(atom.inner(), false),
        // No message is \Recent in IMAP4rev2, so NEW is UNSEEN-and-nothing.
        CodecSearchKey::Recent | CodecSearchKey::New => SearchKey::Not(Box::new(SearchKey::All)),
        CodecSearchKey::Old => SearchKey::All,
        CodecSearchKey::Bcc(value) => header("Bcc", value)?,
        CodecSearchKey::Cc(value) => header("Cc", value)?,
        CodecSearchKey::From(value) => header("From", value)?,
        CodecSearchKey::To(value) => header("To", value)?,
        CodecSearchKey::Subject(value) => header("Subject", value)?,
        CodecSearchKey::Header(name, value) => SearchKey::Header(text(name)?, text(value)?),
        CodecSearchKey::Body(value) => SearchKey::Body(text(value)?),
        CodecSearchKey::Text(value) => SearchKey::Text(text(value)?),
        CodecSearchKey::Before(date) | CodecSearchKey::SentBefore(date) => {
            SearchKey::Before(days(date))
        }
        CodecSearchKey::On(date) | CodecSearchKey::SentOn(date) => SearchKey::On(days(date)),
        CodecSearchKey::Since(date) | CodecSearchKey::SentSince(date) => {
            SearchKey::Since(days(date))
        }
        CodecSearchKey::Larger(size) => SearchKey::Larger(*size),
        CodecSearchKey::Smaller(size) => SearchKey::Smaller(*size),
    };
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in two pieces split at `split_idx` and collects every result.
    fn parse_all_split(input: &[u8], split_idx: usize) -> Vec<Parsed> {
        let mut parser = Parser::new();
        let mut results = Vec::new();
        for mut chunk in [&input[..split_idx], &input[split_idx..]] {
            while !chunk.is_empty() {
                let (n_consumed, parsed) = parser.feed(chunk);
                assert!(n_consumed <= chunk.len());
                chunk = &chunk[n_consumed..];
                assert!(n_consumed > 0 || parsed.is_some(), "no progress");
                results.extend(parsed);
            }
        }
        results
    }

    /// Parses `input` whole and split at every byte offset; all must agree.
    fn parse_everywhere(input: &[u8]) -> Vec<Parsed> {
        let whole = parse_all_split(input, input.len());
        for split_idx in 0..input.len() {
            assert_eq!(
                parse_all_split(input, split_idx),
                whole,
                "{input:?} split at {split_idx}"
            );
        }
        whole
    }

    fn command(tag: &str, command: Command) -> Parsed {
        Parsed::Command {
            tag: tag.to_owned(),
            command,
        }
    }

    fn rejected(tag: Option<&str>, error: ProtoError) -> Parsed {
        Parsed::Rejected(Rejected {
            tag: tag.map(str::to_owned),
            error,
        })
    }

    #[test]
    fn commands_parse() {
        let whole = |text| Section {
            part: Vec::new(),
            text,
        };
        let table: Vec<(&str, Vec<Parsed>)> = vec![
            (
                "a1 CAPABILITY\r\n",
                vec![command("a1", Command::Capability)],
            ),
            ("a1 noop\r\n", vec![command("a1", Command::Noop)]),
            ("a1 NAMESPACE\r\n", vec![command("a1", Command::Namespace)]),
            ("a1 ID NIL\r\n", vec![command("a1", Command::Id)]),
            (
                "a1 ID (\"name\" \"mutt\")\r\n",
                vec![command("a1", Command::Id)],
            ),
            (
                "a1 LOGIN \"al ice\" {3}\r\npw!\r\n",
                vec![
                    Parsed::LiteralAccepted,
                    command(
                        "a1",
                        Command::Login {
                            user: "al ice".into(),
                            password: Secret(b"pw!".to_vec()),
                        },
                    ),
                ],
            ),
            (
                "a1 LOGIN alice {3+}\r\npw!\r\n",
                vec![command(
                    "a1",
                    Command::Login {
                        user: "alice".into(),
                        password: Secret(b"pw!".to_vec()),
                    },
                )],
            ),
            (
                "a1 AUTHENTICATE PLAIN AGEAYg==\r\n",
                vec![command(
                    "a1",
                    Command::Authenticate {
                        mechanism: "PLAIN".into(),
                        initial_response: Some(Secret(b"\0a\0b".to_vec())),
                    },
                )],
            ),
            (
                "a1 select inbox\r\n",
                vec![command(
                    "a1",
                    Command::Select {
                        folder: "INBOX".into(),
                        read_only: false,
                    },
                )],
            ),
            (
                "a1 EXAMINE \"Sent\"\r\n",
                vec![command(
                    "a1",
                    Command::Select {
                        folder: "Sent".into(),
                        read_only: true,
                    },
                )],
            ),
            (
                "a1 UID FETCH 1:*,7 (FLAGS BODY.PEEK[1.2.HEADER.FIELDS.NOT (X-A)]<0.10>)\r\n",
                vec![command(
                    "a1",
                    Command::Fetch {
                        set: SeqSet(vec![(Some(1), None), (Some(7), Some(7))]),
                        items: vec![
                            FetchItem::Flags,
                            FetchItem::Body {
                                section: Section {
                                    part: vec![1, 2],
                                    text: SectionText::HeaderFields {
                                        names: vec!["X-A".into()],
                                        not: true,
                                    },
                                },
                                partial: Some((0, 10)),
                                peek: true,
                                legacy: None,
                            },
                        ],
                        uid: true,
                    },
                )],
            ),
            (
                "a1 FETCH 2 FAST\r\n",
                vec![command(
                    "a1",
                    Command::Fetch {
                        set: SeqSet(vec![(Some(2), Some(2))]),
                        items: vec![
                            FetchItem::Flags,
                            FetchItem::InternalDate,
                            FetchItem::Rfc822Size,
                        ],
                        uid: false,
                    },
                )],
            ),
            (
                "a1 FETCH 2 RFC822\r\n",
                vec![command(
                    "a1",
                    Command::Fetch {
                        set: SeqSet(vec![(Some(2), Some(2))]),
                        items: vec![FetchItem::Body {
                            section: whole(SectionText::Whole),
                            partial: None,
                            peek: false,
                            legacy: Some("RFC822"),
                        }],
                        uid: false,
                    },
                )],
            ),
            (
                "a1 UID EXPUNGE 3:5,9\r\n",
                vec![command(
                    "a1",
                    Command::Expunge {
                        uids: Some(SeqSet(vec![(Some(3), Some(5)), (Some(9), Some(9))])),
                    },
                )],
            ),
            (
                "a1 UID EXPUNGE x\r\n",
                vec![rejected(Some("a1"), ProtoError::Syntax)],
            ),
            (
                "a1 UID MOVE 4 Trash\r\n",
                vec![command(
                    "a1",
                    Command::Copy {
                        set: SeqSet(vec![(Some(4), Some(4))]),
                        folder: "Trash".into(),
                        uid: true,
                        remove_source: true,
                    },
                )],
            ),
            (
                "a1 SEARCH NOT SEEN OR FROM ann SINCE 2-Jan-1970\r\n",
                vec![command(
                    "a1",
                    Command::Search {
                        key: SearchKey::And(vec![
                            SearchKey::Not(Box::new(SearchKey::Flag("\\Seen".into(), true))),
                            SearchKey::Or(
                                Box::new(SearchKey::Header("From".into(), "ann".into())),
                                Box::new(SearchKey::Since(1)),
                            ),
                        ]),
                        uid: false,
                        returns: None,
                    },
                )],
            ),
            (
                "a1 UID SEARCH RETURN (MIN count) DELETED\r\n",
                vec![command(
                    "a1",
                    Command::Search {
                        key: SearchKey::Flag("\\Deleted".into(), true),
                        uid: true,
                        returns: Some(vec![SearchReturn::Min, SearchReturn::Count]),
                    },
                )],
            ),
            (
                "a1 SEARCH RETURN (FOO) ALL\r\n",
                vec![rejected(Some("a1"), ProtoError::Syntax)],
            ),
            (
                "a1 LIST (SUBSCRIBED) \"\" \"*\" RETURN (CHILDREN STATUS (MESSAGES))\r\n",
                vec![command(
                    "a1",
                    Command::List {
                        reference: String::new(),
                        pattern: "*".into(),
                        kind: ListKind::Subscribed,
                    },
                )],
            ),
            (
                "a1 LIST \"\" % RETURN (SPECIAL-USE)\r\n",
                vec![command(
                    "a1",
                    Command::List {
                        reference: String::new(),
                        pattern: "%".into(),
                        kind: ListKind::All,
                    },
                )],
            ),
            (
                "a1 APPEND INBOX (\\Seen) {2}\r\nhi\r\n",
                vec![
                    Parsed::LiteralAccepted,
                    command(
                        "a1",
                        Command::Append {
                            folder: "INBOX".into(),
                            flags: vec!["\\Seen".into()],
                            internal_date_s: None,
                            message: b"hi".to_vec(),
                        },
                    ),
                ],
            ),
            (
                "a1 STARTTLS\r\na2 IDLE\r\n",
                vec![
                    command("a1", Command::StartTls),
                    command("a2", Command::Idle),
                ],
            ),
            (
                "a1 FROB\r\n",
                vec![rejected(Some("a1"), ProtoError::Syntax)],
            ),
            (
                "a1 FETCH 0 FLAGS\r\n",
                vec![rejected(Some("a1"), ProtoError::Syntax)],
            ),
            ("\r\n", vec![rejected(None, ProtoError::Syntax)]),
            ("{5}\r\n", vec![Parsed::LiteralAccepted]),
            (
                "a1 LOGIN a {70000}\r\n",
                vec![rejected(Some("a1"), ProtoError::LiteralTooLarge)],
            ),
            (
                "a1 LOGIN a {70000+}\r\n",
                vec![Parsed::Overrun {
                    tag: Some("a1".into()),
                }],
            ),
        ];
        for (input, expected) in table {
            assert_eq!(parse_everywhere(input.as_bytes()), expected, "{input:?}");
        }
    }

    #[test]
    fn a_long_line_is_dropped_and_answered_with_its_tag() {
        let input = format!(
            "t9 LIST \"\" {}\r\nt10 NOOP\r\n",
            "x".repeat(IMAP_LINE_BYTES_MAX)
        );
        assert_eq!(
            parse_everywhere(input.as_bytes()),
            [
                rejected(Some("t9"), ProtoError::LineTooLong),
                command("t10", Command::Noop)
            ]
        );
        // Nothing of the long line is kept while it is dropped.
        let mut parser = Parser::new();
        parser.feed(&input.as_bytes()[..IMAP_LINE_BYTES_MAX + 10]);
        assert!(parser.command.capacity() <= IMAP_LINE_BYTES_MAX + IMAP_TAG_BYTES_MAX);
    }

    #[test]
    fn sasl_and_idle_lines() {
        let mut parser = Parser::new();
        parser.expect(Expect::SaslResponse);
        assert_eq!(
            parser.feed(b"AGEAYg==\r\n"),
            (10, Some(Parsed::SaslResponse(Secret(b"AGEAYg==".to_vec()))))
        );
        assert_eq!(parser.feed(b"*\r\n"), (3, Some(Parsed::SaslCancel)));
        parser.expect(Expect::IdleDone);
        assert_eq!(parser.feed(b"done\r\n"), (6, Some(Parsed::IdleDone)));
        assert_eq!(parser.feed(b"a NOOP\r\n"), (8, Some(Parsed::IdleGarbage)));
    }

    #[test]
    fn sequence_sets() {
        let set = parse_seq_set("3:1,7,9:*").unwrap();
        let members: Vec<u32> = (1..=12).filter(|value| set.contains(*value, 10)).collect();
        assert_eq!(members, [1, 2, 3, 7, 9, 10]);
        assert!(
            parse_seq_set("0").is_none()
                && parse_seq_set("1:").is_none()
                && parse_seq_set("+1").is_none()
        );
    }
}
