//! The IMAP4rev2 wire protocol (RFC 9051, serving IMAP4rev1 clients of RFC 3501
//! too) as pure data: bytes in, commands out; answers in, replies out.
//!
//! This crate is deliberately *not* a server. It has no tokio, no sockets and no
//! clock, and it knows nothing of how folders, flags and UIDs are stored: message
//! ids are a type parameter it carries without looking inside. The tokio shell
//! reads bytes, feeds them to a [`Session`], and carries out the [`Step`]s it
//! returns: write bytes, close, start TLS, idle, or run a [`Request`] against the
//! store and report the [`Answer`] back. What stays here is everything IMAP: the
//! grammar (through `imap-codec`), literals and their bounds, the state machine,
//! message sequence numbers and UIDs of the selected folder, when untagged updates
//! may be sent (RFC 9051 §7.5.1), FETCH rendering with ENVELOPE and BODYSTRUCTURE
//! (through `mail-parser`), SEARCH evaluation and response encoding.
//!
//! Modules, in reading order:
//! - [`limits`]: the bounds on every input;
//! - [`parser`]: framing of lines and literals, and the command grammar;
//! - [`session`]: the NOT AUTHENTICATED / AUTHENTICATED / SELECTED / LOGOUT machine;
//! - [`selected`]: the selected folder's messages, sequence numbers and updates;
//! - [`fetch`]: FETCH items, body sections, ENVELOPE and BODYSTRUCTURE;
//! - [`search`]: SEARCH keys evaluated against the messages;
//! - [`response`]: quoting, literals and status lines.
//!
//! All errors are one enum, [`ProtoError`]; [`Session`] maps each to its reply.

pub mod fetch;
pub mod limits;
pub mod parser;
pub mod response;
pub mod search;
pub mod selected;
pub mod session;
pub mod utf7;

pub use parser::{Command, Parser, Secret, SeqSet};
pub use selected::{Entry, Snapshot};
pub use session::{
    Action, Answer, Failure, FlagChange, FolderInfo, FolderStatus, LoginFailure, Request, Session,
    SessionConfig, State, Step,
};

/// Everything that can go wrong in an IMAP exchange that is the peer's fault, as
/// opposed to a programmer error (those are assertions). Store failures are
/// [`Failure`]s, reported by the shell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("command line too long")]
    LineTooLong,
    #[error("literal too large")]
    LiteralTooLarge,
    #[error("command too large")]
    CommandTooLarge,
    #[error("syntax error")]
    Syntax,
    #[error("command is not valid in this state")]
    WrongState,
    #[error("invalid message sequence number")]
    InvalidSequence,
    #[error("unsupported authentication mechanism")]
    UnsupportedMechanism,
    #[error("malformed authentication data")]
    MalformedSasl,
    #[error("authentication cancelled")]
    SaslCancelled,
    #[error("plaintext authentication is refused on this connection, use STARTTLS first")]
    PlaintextRefused,
    #[error("TLS is not available")]
    TlsUnavailable,
    #[error("invalid flag")]
    InvalidFlag,
    #[error("folder is read-only")]
    ReadOnly,
    #[error("too many errors, closing")]
    TooManyErrors,
}
