//! Request/reply between programs over mail: the chordmail middleware (docs/DESIGN.md §7).
//!
//! A [`Client`] mails a request to a service's address and polls its own mailbox for
//! the answer; a [`Service`] polls the service's mailbox, runs a handler per request
//! and mails the reply back. Both speak only SMTP (submission, AUTH PLAIN) and POP3
//! (AUTH PLAIN, UIDL, TOP, RETR, DELE), so any standards-conformant mail server
//! works; nothing here knows about the ring, the store or replication. It is not a
//! general mail client: no TLS (it is meant for loopback or a trusted network), no
//! MIME beyond the single part it writes itself, one recipient per mail.
//!
//! # Wire format (protocol version 1)
//!
//! A request is a mail from the caller's account to the service address with
//! `Message-ID: <128 random bits in hex.rpc@caller-domain>` (the request id),
//! `X-Chordmail-Rpc: 1`, `X-Chordmail-Method: M` (1 to 64 of `A-Za-z0-9._-/:`) and
//! `X-Chordmail-Length: N`, the body's exact length in bytes. A body that is UTF-8
//! without NUL or CR and with lines of at most 998 bytes goes as-is
//! (`text/plain; charset=utf-8`, LF sent as CRLF, a final line end added if missing);
//! anything else goes base64-encoded as an `application/octet-stream` part. A reply
//! is a mail from the service to the request's `Reply-To` or `From` with
//! `In-Reply-To: <request id>`, `X-Chordmail-Rpc: 1`, `X-Chordmail-Status: S`
//! (0..=255, an exit status) and the result as its body, encoded the same way.
//!
//! # Guarantees
//!
//! The service deletes a request only after the server accepted (250) its reply:
//! at-least-once. Before sending, the reply is recorded durably in a state directory
//! keyed by request id ([`state`]), so a request seen again after a crash gets the
//! recorded reply instead of a second run, and a request whose reply was already
//! accepted is deleted without a second reply. A client takes from its mailbox only
//! replies to its own pending calls and leaves every other mail alone.
//!
//! Modules in reading order: [`message`] (the wire format, pure), [`client`],
//! [`service`], [`state`], [`server`] (addresses). The `chordmail rpc` command line
//! lives in the binary; this library parses no arguments and installs no tracing
//! subscriber.

pub mod client;
mod io;
pub mod message;
mod pop3;
pub mod server;
pub mod service;
mod smtp;
pub mod state;

use std::path::PathBuf;

pub use client::{Client, ClientConfig};
pub use server::Server;
pub use service::{Service, ServiceConfig};

/// The largest mail we send, as the SMTP SIZE limit of a chordmail node (25 MiB).
pub const MESSAGE_BYTES_MAX: usize = 25 * 1024 * 1024;

/// An answer: the handler's status (an exit status, 0 = success) and its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u8,
    pub body: Vec<u8>,
}

/// A request as the service's handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The request's Message-ID without angle brackets.
    pub id: String,
    pub method: String,
    /// Where the reply goes: the request's `Reply-To`, else its `From`.
    pub sender: String,
    pub body: Vec<u8>,
}

/// An account on the mail servers. `Debug` is written by hand so that the password
/// never reaches a log.
#[derive(Clone)]
pub struct Credentials {
    pub account: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(
        "invalid server {0:?}: use HOST, HOST:SMTP_PORT (POP3 at SMTP_PORT + 10000) or HOST:SMTP_PORT/POP3_PORT"
    )]
    InvalidServer(String),
    #[error("invalid address {0:?}: use local@domain")]
    InvalidAddress(String),
    #[error("invalid method {0:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ - / :")]
    InvalidMethod(String),
    #[error(
        "request of {encoded_bytes} bytes on the wire exceeds the {bytes_max}-byte message size limit; send less"
    )]
    TooLarge {
        encoded_bytes: usize,
        bytes_max: usize,
    },
    #[error("{peer}: {detail}")]
    Io { peer: String, detail: String },
    #[error("{peer}: {detail}")]
    Protocol { peer: String, detail: String },
    /// A 5xx: retrying elsewhere would get the same answer (e.g. an unknown recipient).
    #[error("{peer} refused the {stage}: {code} {text}")]
    Rejected {
        peer: String,
        stage: String,
        code: u16,
        text: String,
    },
    /// A 4xx: the server may accept later, or another server may accept now.
    #[error("{peer} deferred the {stage}: {code} {text}")]
    Deferred {
        peer: String,
        stage: String,
        code: u16,
        text: String,
    },
    #[error("{peer} refused the login of {account}: {text}; check the account and password")]
    Auth {
        peer: String,
        account: String,
        text: String,
    },
    #[error("{peer}: the mailbox of {account} is in use by another session")]
    InUse { peer: String, account: String },
    #[error("no server reachable ({n_servers} tried), last error: {last}")]
    Unreachable {
        n_servers: usize,
        last: Box<RpcError>,
    },
    #[error("no reply to request {request_id} within {} s; is a service running for that address?", timeout.as_secs_f64())]
    Timeout {
        request_id: String,
        timeout: std::time::Duration,
    },
    #[error("state directory {}: {source}", path.display())]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl RpcError {
    fn io(peer: &str, error: std::io::Error) -> RpcError {
        RpcError::Io {
            peer: peer.to_owned(),
            detail: error.to_string(),
        }
    }

    /// Whether the same step may succeed later (every server failed for now).
    pub fn is_retryable(&self) -> bool {
        match self {
            RpcError::Unreachable { last, .. } => last.is_retryable(),
            RpcError::InUse { .. } => true,
            other => other.is_transient(),
        }
    }

    /// Whether another server may succeed where this one failed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RpcError::Io { .. } | RpcError::Protocol { .. } | RpcError::Deferred { .. }
        )
    }
}

/// Tries `attempt` on each server from `first_idx` on, wrapping around, until one
/// succeeds or fails for a reason another server would share. Returns the index
/// of the server that answered, so callers can stick to it.
async fn with_failover<'s, T, F, Fut>(
    servers: &'s [Server],
    first_idx: usize,
    mut attempt: F,
) -> Result<(usize, T), RpcError>
where
    F: FnMut(&'s Server) -> Fut,
    Fut: Future<Output = Result<T, RpcError>>,
{
    assert!(
        !servers.is_empty(),
        "configurations are checked to have a server"
    );
    let mut last = None;
    for offset in 0..servers.len() {
        let server_idx = (first_idx + offset) % servers.len();
        match attempt(&servers[server_idx]).await {
            Ok(value) => return Ok((server_idx, value)),
            Err(error) if error.is_transient() => {
                tracing::debug!(server = %servers[server_idx], %error, "server failed, trying the next");
                last = Some(error);
            }
            Err(error) => return Err(error),
        }
    }
    let last = last.expect("at least one server was tried");
    if servers.len() == 1 {
        return Err(last);
    }
    Err(RpcError::Unreachable {
        n_servers: servers.len(),
        last: Box::new(last),
    })
}
