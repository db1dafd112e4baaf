//! The POP3 wire protocol (RFC 1939, RFC 2449 CAPA and response codes, RFC 5034
//! AUTH, RFC 2595 STLS) as pure data: bytes in, commands and replies out.
//!
//! This crate is deliberately *not* a server. It has no tokio, no sockets and no
//! clock, and it knows nothing about how mail is stored: message ids and the
//! maildrop lock are type parameters it carries without looking inside. The tokio
//! shell (`cm-pop3`) reads bytes, feeds them to a [`Session`] and carries out the
//! [`Step`]s it returns (check a password, fetch a message, remove messages).
//!
//! Modules, in reading order:
//! - [`limits`]: the bounds on every input, with their RFC sections, and
//!   [`Pop3Limits`], the ones configuration may lower;
//! - [`parser`]: the incremental, bounded [`Parser`] turning lines into [`Command`]s;
//! - [`session`]: the AUTHORIZATION / TRANSACTION / UPDATE state machine;
//! - [`response`]: reply encoding, RFC 2449 response codes, byte-stuffing and TOP;
//! - [`sasl`]: decoding of the SASL PLAIN message (RFC 4616).
//!
//! All errors are one enum, [`ProtoError`]; every one of them maps to exactly one
//! reply in [`Response::from_error`].

pub mod limits;
pub mod parser;
pub mod response;
pub mod sasl;
pub mod session;

pub use limits::Pop3Limits;
pub use parser::{Command, Expect, Parser, Secret};
pub use response::{Response, ResponseCode, Stuffed, top_of_message};
pub use session::{Listed, LoginFailure, Session, SessionConfig, State, Step, UpdateOutcome};

/// Everything that can go wrong in a POP3 exchange that is the peer's fault or the
/// storage layer's, as opposed to a programmer error (those are assertions).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("command line too long")]
    LineTooLong,
    #[error("argument too long")]
    ArgumentTooLong,
    #[error("unknown command")]
    UnknownCommand,
    #[error("wrong number of arguments")]
    WrongArguments,
    #[error("invalid number")]
    InvalidNumber,
    #[error("command is not valid in this state")]
    WrongState,
    #[error("no such message")]
    NoSuchMessage,
    #[error("message already deleted")]
    AlreadyDeleted,
    #[error("unsupported authentication mechanism")]
    UnsupportedMechanism,
    #[error("malformed authentication data")]
    MalformedSasl,
    #[error("authentication cancelled")]
    SaslCancelled,
    #[error("plaintext authentication is refused on this connection, use STLS first")]
    PlaintextRefused,
    #[error("TLS is not available")]
    TlsUnavailable,
    #[error("no USER given before PASS")]
    PassWithoutUser,
    #[error("invalid user name or password")]
    BadCredentials,
    #[error("maildrop is already locked by another session")]
    MaildropInUse,
    #[error("maildrop is temporarily unavailable")]
    Unavailable,
    #[error("too many errors, closing")]
    TooManyErrors,
    #[error("too many connections, try again later")]
    TooManyConnections,
    #[error("server shutting down")]
    ShuttingDown,
}
