//! Bounds on every IMAP input, with the unit last. The shared ones come from
//! `cm_types::limits`; the ones only IMAP has are defined here.

use std::time::Duration;

pub use cm_types::limits::{MESSAGE_BYTES_MAX, PASSWORD_BYTES_MAX};

/// One line of a command, CRLF included, not counting literals. RFC 7162 §4
/// asks clients to keep lines within 8192 octets and servers to accept that much.
pub const IMAP_LINE_BYTES_MAX: usize = 8192;

/// One literal in any command but APPEND (a password, a search string, a folder
/// name). APPEND's message literal is bounded by [`MESSAGE_BYTES_MAX`] instead.
pub const IMAP_LITERAL_BYTES_MAX: usize = 64 * 1024;

/// A whole command: its lines and literals. Room for one message and the rest.
pub const IMAP_COMMAND_BYTES_MAX: usize = MESSAGE_BYTES_MAX + 4 * IMAP_LITERAL_BYTES_MAX;

/// Literals in one command; a client needing more is not one we serve.
pub const IMAP_LITERALS_PER_COMMAND_MAX: usize = 64;

/// Consecutive rejected commands (BAD) after which the session is closed with BYE.
pub const IMAP_BAD_COMMANDS_MAX: u32 = 10;

/// Failed logins after which the session is closed.
pub const IMAP_LOGIN_FAILURES_MAX: u32 = 5;

/// Messages whose bodies one step asks the shell for (FETCH, SEARCH of text), so
/// that a FETCH of a whole folder never holds more than this many bodies at once.
pub const IMAP_BODIES_PER_STEP_MAX: usize = 64;

/// Messages one selected folder may show; a larger snapshot is cut to its first
/// messages by UID, and the shell is expected to never offer more.
pub const IMAP_SELECTED_MESSAGES_MAX: usize = 1_000_000;

/// RFC 9051 §5.4: an inactivity autologout timer must be at least 30 minutes.
pub const IMAP_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The first bytes of a command line kept while the rest of an over-long line is
/// dropped: enough to answer with the command's tag.
pub const IMAP_TAG_BYTES_MAX: usize = 64;

const _: () = assert!(IMAP_LITERAL_BYTES_MAX < MESSAGE_BYTES_MAX);
const _: () = assert!(IMAP_LINE_BYTES_MAX <= IMAP_LITERAL_BYTES_MAX);
const _: () = assert!(IMAP_COMMAND_BYTES_MAX > MESSAGE_BYTES_MAX + IMAP_LINE_BYTES_MAX);
const _: () = assert!(IMAP_TAG_BYTES_MAX < IMAP_LINE_BYTES_MAX);
const _: () = assert!(IMAP_BAD_COMMANDS_MAX > 1 && IMAP_LOGIN_FAILURES_MAX > 1);
const _: () = assert!(PASSWORD_BYTES_MAX < IMAP_LITERAL_BYTES_MAX);
const _: () = assert!(IMAP_IDLE_TIMEOUT.as_secs() >= 30 * 60);
