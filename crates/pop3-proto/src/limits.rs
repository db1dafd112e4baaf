//! Bounds on every POP3 input, with the unit last. The shared ones come from
//! `cm_types::limits`; the ones only POP3 has are defined here.

pub use cm_types::limits::{
    MESSAGE_BYTES_MAX, PASSWORD_BYTES_MAX, POP3_ARG_BYTES_MAX, POP3_COMMAND_LINE_BYTES_MAX,
    POP3_IDLE_TIMEOUT,
};

/// A client line answering a SASL challenge, CRLF included.
///
/// RFC 5034 §4 keeps the AUTH command itself (initial response included) within
/// RFC 2449's 255 octets: a client whose initial response would not fit sends it
/// after the empty challenge instead. That continuation line is therefore given
/// its own, larger bound: the base64 of `authzid NUL authcid NUL password` for the
/// longest address and password we accept, 4/3 of (256 + 1 + 256 + 1 + 1024).
pub const POP3_SASL_LINE_BYTES_MAX: usize = 2048 + 64;

/// Consecutive rejected commands after which the session is closed.
pub const POP3_BAD_COMMANDS_MAX: u32 = 10;

/// Failed logins after which the session is closed (the peer may reconnect, but
/// each failure is also answered only after a growing delay).
pub const POP3_LOGIN_FAILURES_MAX: u32 = 5;

const _: () = assert!(POP3_SASL_LINE_BYTES_MAX > POP3_COMMAND_LINE_BYTES_MAX);
const _: () =
    assert!((PASSWORD_BYTES_MAX + 2 * 257).div_ceil(3) * 4 + 2 <= POP3_SASL_LINE_BYTES_MAX);
const _: () = assert!(POP3_BAD_COMMANDS_MAX > 1 && POP3_LOGIN_FAILURES_MAX > 1);
