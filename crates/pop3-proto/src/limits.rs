//! Bounds on every POP3 input, with the unit last. The shared ones come from
//! `cm_types::limits`; the ones only POP3 has are defined here.

use std::time::Duration;

pub use cm_types::limits::{
    CONNECTIONS_MAX, MESSAGE_BYTES_MAX, PASSWORD_BYTES_MAX, POP3_ARG_BYTES_MAX,
    POP3_COMMAND_LINE_BYTES_MAX, POP3_IDLE_TIMEOUT,
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

/// Bytes the shell reads from the peer at a time; the parser keeps no more than
/// a line of them.
pub const POP3_READ_CHUNK_BYTES: usize = 4096;
/// Replies are gathered up to this size before a write, so pipelined commands are
/// answered in few packets.
pub const POP3_WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Message segments at least this long are written straight from the message
/// rather than copied into the write buffer.
pub const POP3_DIRECT_WRITE_BYTES: usize = 16 * 1024;

const _: () = assert!(POP3_DIRECT_WRITE_BYTES < POP3_WRITE_BUFFER_BYTES);
const _: () = assert!(POP3_SASL_LINE_BYTES_MAX > POP3_COMMAND_LINE_BYTES_MAX);
const _: () =
    assert!((PASSWORD_BYTES_MAX + 2 * 257).div_ceil(3) * 4 + 2 <= POP3_SASL_LINE_BYTES_MAX);
const _: () = assert!(POP3_BAD_COMMANDS_MAX > 1 && POP3_LOGIN_FAILURES_MAX > 1);

/// The bounds of a session that configuration may lower (never raise): the
/// autologout timer and the connections served at once. The protocol's own
/// bounds (line and argument lengths) are the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pop3Limits {
    /// RFC 1939 §3 autologout: a session idle this long is closed, removing nothing.
    /// Also bounds a TLS handshake and a write to a peer that does not read.
    pub idle_timeout: Duration,
    pub connections_max: usize,
}

impl Default for Pop3Limits {
    fn default() -> Pop3Limits {
        Pop3Limits {
            idle_timeout: POP3_IDLE_TIMEOUT,
            connections_max: CONNECTIONS_MAX,
        }
    }
}

impl Pop3Limits {
    /// Configuration may lower a limit but never raise it past the constant.
    pub fn clamped(self) -> Pop3Limits {
        Pop3Limits {
            idle_timeout: self.idle_timeout.min(POP3_IDLE_TIMEOUT),
            connections_max: self.connections_max.clamp(1, CONNECTIONS_MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_clamped_to_the_constants() {
        let raised = Pop3Limits {
            idle_timeout: POP3_IDLE_TIMEOUT * 2,
            connections_max: CONNECTIONS_MAX + 1,
        };
        assert_eq!(raised.clamped(), Pop3Limits::default());
        let lowered = Pop3Limits {
            idle_timeout: Duration::from_secs(1),
            connections_max: 2,
        };
        assert_eq!(lowered.clamped(), lowered);
    }
}
