//! Every bound on an input, with its unit last. Configuration may lower a limit but
//! never raise it past these constants.

use std::time::Duration;

/// RFC 5321 §4.5.3.1.4: a command line, CRLF included.
pub const SMTP_COMMAND_LINE_BYTES_MAX: usize = 512;
/// RFC 5321 §4.5.3.1.6: a text line of DATA, CRLF included.
pub const SMTP_TEXT_LINE_BYTES_MAX: usize = 1000;
/// The largest message accepted, advertised in the SIZE extension (25 MiB).
pub const MESSAGE_BYTES_MAX: usize = 25 * 1024 * 1024;
/// RFC 5321 §4.5.3.1.8 asks servers to accept at least 100 recipients.
pub const SMTP_RECIPIENTS_MAX: usize = 100;
/// RFC 5321 §4.5.3.2.7: the server timeout is at least five minutes.
pub const SMTP_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Consecutive rejected commands after which an SMTP session is closed.
pub const SMTP_BAD_COMMANDS_MAX: u32 = 10;
/// RFC 2449 §4: a POP3 command line may be up to 255 octets, CRLF included.
pub const POP3_COMMAND_LINE_BYTES_MAX: usize = 255;
/// RFC 1939 §3: an argument is at most 40 characters.
pub const POP3_ARG_BYTES_MAX: usize = 40;
/// RFC 1939 §3: the autologout timer is at least ten minutes.
pub const POP3_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Concurrent client connections per listener and node.
pub const CONNECTIONS_MAX: usize = 1024;
/// A mail address, as RFC 5321 §4.5.3.1.3 bounds a path.
pub const ADDRESS_BYTES_MAX: usize = 256;
/// Passwords are hashed with argon2id; longer inputs are refused, not truncated.
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// A request body on the admin HTTP API.
pub const ADMIN_BODY_BYTES_MAX: usize = 64 * 1024;

const _: () = assert!(SMTP_TEXT_LINE_BYTES_MAX >= SMTP_COMMAND_LINE_BYTES_MAX);
const _: () = assert!(POP3_ARG_BYTES_MAX < POP3_COMMAND_LINE_BYTES_MAX);
const _: () = assert!(ADDRESS_BYTES_MAX < SMTP_COMMAND_LINE_BYTES_MAX);
