//! The one error type of this crate: every way peer input can be wrong.

/// What was wrong with the bytes a peer sent. Each variant maps to exactly one
/// reply in [`crate::reply`]; none of them ends the session by itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmtpError {
    /// RFC 5321 §4.5.3.1.4: a command line longer than the limit, CRLF included.
    #[error("command line too long")]
    LineTooLong,
    /// RFC 5321 §4.5.3.1.6: a text line of DATA longer than the limit.
    #[error("text line too long")]
    TextLineTooLong,
    /// The message body grew past the size limit while it was being received.
    #[error("message too large")]
    MessageTooLarge,
    #[error("unrecognised command")]
    UnknownCommand,
    /// A command we recognise but do not implement (EXPN, BDAT, ETRN, ...).
    #[error("command not implemented")]
    NotImplemented,
    #[error("syntax error, expected {0}")]
    Syntax(&'static str),
    #[error("bad address syntax")]
    BadAddress,
    /// A MAIL or RCPT parameter whose extension we did not advertise.
    #[error("parameter not supported")]
    UnsupportedParameter,
    #[error("command line is not valid utf-8")]
    NotUtf8,
    /// RFC 4954 §4: the client answered a challenge with `*`.
    #[error("authentication cancelled")]
    AuthCancelled,
    #[error("malformed authentication response")]
    AuthMalformed,
}
