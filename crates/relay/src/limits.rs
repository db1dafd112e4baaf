//! Bounds on everything the relay reads from its configuration, from DNS and from
//! remote SMTP servers, as named constants with the unit last.

use std::time::Duration;

/// The longest reply line we accept from a remote server, CRLF included
/// (RFC 5321 §4.5.3.1.5).
pub const REPLY_LINE_BYTES_MAX: usize = 512;

/// The most lines one reply may have. EHLO replies are the longest in practice
/// (Postfix sends about ten); a peer that keeps sending continuation lines is cut off.
pub const REPLY_LINES_MAX: usize = 64;

/// The most MX hosts tried for one domain; the rest of a longer list is ignored.
pub const MX_HOSTS_MAX: usize = 16;

/// The most addresses tried for one host name (A and AAAA together).
pub const ADDRESSES_PER_HOST_MAX: usize = 4;

/// The most TCP connections one `deliver_batch` opens, whatever the number of hosts
/// and addresses, so that a domain with many dead MX hosts cannot hold a worker long.
pub const CONNECTIONS_PER_BATCH_MAX: usize = 8;

/// The most entries in `[relay] routes`.
pub const ROUTES_MAX: usize = 1024;

/// The longest host name or `HOST:PORT` in the configuration (RFC 1035: 255).
pub const HOST_BYTES_MAX: usize = 255;

/// The most messages one `deliver_batch` carries over a connection.
pub const BATCH_MESSAGES_MAX: usize = 100;

/// The longest diagnostic text kept from a remote reply for a DSN or a queue entry.
pub const DIAGNOSTIC_BYTES_MAX: usize = 400;

/// The most bytes of the original header block copied into a DSN.
pub const DSN_ORIGINAL_HEADERS_BYTES_MAX: usize = 64 * 1024;

/// The longest retry delay a configuration may ask for (one day).
pub const RETRY_S_MAX: u64 = 24 * 60 * 60;

/// The longest queue lifetime a configuration may ask for (30 days).
pub const LIFETIME_S_MAX: u64 = 30 * 24 * 60 * 60;

/// The longest timeout a configuration may ask for: RFC 5321 §4.5.3.2.6 asks for
/// 10 minutes after the final dot, the longest of its timeouts.
pub const TIMEOUT_S_MAX: u64 = 10 * 60;

/// At most this share of a retry delay (in percent) is taken away by jitter, so
/// that entries queued together do not retry together.
pub const RETRY_JITTER_PERCENT_MAX: u64 = 10;

/// How long `QUIT` may take before we drop the connection anyway.
pub const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

const _: () = assert!(REPLY_LINE_BYTES_MAX >= 512);
const _: () = assert!(RETRY_S_MAX <= LIFETIME_S_MAX);
const _: () = assert!(RETRY_JITTER_PERCENT_MAX < 100);
const _: () = assert!(BATCH_MESSAGES_MAX >= 1 && MX_HOSTS_MAX >= 1);
