//! The POP3 server of a chordmail node (docs/DESIGN.md §6): the tokio shell around
//! `cm-pop3-proto`.
//!
//! This crate owns the sockets, the clock and the timers: it accepts connections
//! under a connection limit, runs one task and one `pop3.session` span per
//! connection, reads with the RFC 1939 autologout timer, upgrades to TLS on STLS,
//! and carries out what the protocol core asks for (check credentials, lock and
//! list the maildrop, fetch a message, remove the deleted ones) through
//! [`cm_repl::Mail`]. It parses nothing and decides no protocol rule itself: both
//! live in `cm-pop3-proto`.
//!
//! Reading order: [`serve`] (the accept loop), then `connection` (one session, and
//! the one place where mail-service outcomes become protocol outcomes).
//!
//! Invariant: the maildrop lock is owned by the session's TRANSACTION state, so it
//! is released exactly when the session ends, whichever way it ends (QUIT, a
//! dropped connection, the idle timeout, shutdown). A session that did not reach
//! QUIT removes nothing.

mod connection;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cm_pop3_proto::{ProtoError, Response};
use cm_repl::Mail;
use cm_types::limits::{CONNECTIONS_MAX, POP3_IDLE_TIMEOUT};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// The POP3 server's settings.
#[derive(Clone)]
pub struct Pop3Config {
    /// Our name, in the greeting.
    pub hostname: String,
    /// With a configuration, STLS is offered (RFC 2595).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Allow USER/PASS and AUTH PLAIN without TLS from peers that are not on
    /// loopback. Off by default: passwords should not cross a network in clear.
    pub allow_plaintext: bool,
    /// Lowered to the constants of `cm_types::limits` if set higher.
    pub limits: Pop3Limits,
    /// A failed login is answered after `n_failures * auth_failure_delay`, so
    /// guessing passwords costs time while a typo costs little.
    pub auth_failure_delay: Duration,
}

impl Default for Pop3Config {
    fn default() -> Pop3Config {
        Pop3Config {
            hostname: "localhost".to_owned(),
            tls: None,
            allow_plaintext: false,
            limits: Pop3Limits::default(),
            auth_failure_delay: Duration::from_secs(1),
        }
    }
}

impl std::fmt::Debug for Pop3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pop3Config")
            .field("hostname", &self.hostname)
            .field("tls", &self.tls.is_some())
            .field("allow_plaintext", &self.allow_plaintext)
            .field("limits", &self.limits)
            .field("auth_failure_delay", &self.auth_failure_delay)
            .finish()
    }
}

/// The bounds of the shell; the protocol's own (line and argument lengths) are
/// constants of `cm-pop3-proto`.
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

/// Why a connection ended other than by QUIT or the peer closing it.
#[derive(Debug, thiserror::Error)]
pub enum Pop3Error {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls handshake failed: {0}")]
    TlsHandshake(std::io::Error),
    #[error("idle timeout, autologout")]
    IdleTimeout,
    #[error("peer did not read a reply in time")]
    WriteTimeout,
}

/// How long to wait after a failed `accept` (e.g. out of file descriptors) before
/// trying again, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts POP3 connections on `listener` until `shutdown` is cancelled, then
/// waits for the open sessions to end (each ends at its next read).
pub async fn serve(
    listener: TcpListener,
    config: Pop3Config,
    mail: Mail,
    shutdown: CancellationToken,
) {
    let config = Arc::new(Pop3Config {
        limits: config.limits.clamped(),
        ..config
    });
    let n_connections_max = config.limits.connections_max;
    let permits = Arc::new(Semaphore::new(n_connections_max));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "pop3 accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse_over_limit(&stream, peer);
            continue;
        };
        let (config, mail, shutdown) = (config.clone(), mail.clone(), shutdown.clone());
        let session_id = format!("{:016x}", rand::random::<u64>());
        let span = tracing::info_span!("pop3.session", session_id = %session_id, peer = %peer);
        tokio::spawn(
            async move {
                let _permit = permit;
                tracing::debug!("connected");
                match connection::handle_connection(stream, peer.ip(), &config, &mail, &shutdown)
                    .await
                {
                    Ok(()) => tracing::debug!("disconnected"),
                    Err(error) => tracing::debug!(%error, "connection ended"),
                }
            }
            .instrument(span),
        );
    }
    tracing::info!("pop3 listener stopped, waiting for open sessions");
    let n_permits = u32::try_from(n_connections_max).expect("connection limit fits in u32");
    let _all_closed = permits.acquire_many(n_permits).await;
}

/// Best effort: one non-blocking write of the refusal, then the socket is dropped.
fn refuse_over_limit(stream: &TcpStream, peer: SocketAddr) {
    tracing::warn!(%peer, "pop3 connection refused: connection limit reached");
    let _ = stream.try_write(&Response::from_error(&ProtoError::TooManyConnections).to_bytes());
}

/// Whether USER/PASS and AUTH PLAIN may be used before STLS: on loopback the
/// password never leaves the host; elsewhere only if the operator said so.
pub fn plaintext_allowed(peer: IpAddr, config: &Pop3Config) -> bool {
    config.allow_plaintext || peer.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_on_loopback_unless_allowed() {
        let strict = Pop3Config::default();
        let lenient = Pop3Config {
            allow_plaintext: true,
            ..Pop3Config::default()
        };
        let table: [(&str, bool, bool); 5] = [
            ("127.0.0.1", true, true),
            ("127.3.4.5", true, true),
            ("::1", true, true),
            ("::ffff:127.0.0.1", true, true),
            ("192.0.2.7", false, true),
        ];
        for (peer, strict_allowed, lenient_allowed) in table {
            let peer: IpAddr = peer.parse().unwrap();
            assert_eq!(plaintext_allowed(peer, &strict), strict_allowed, "{peer}");
            assert_eq!(plaintext_allowed(peer, &lenient), lenient_allowed, "{peer}");
        }
    }

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
