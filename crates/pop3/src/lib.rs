//! The POP3 server of a chordmail node (docs/DESIGN.md §6): the tokio shell around
//! `cm-pop3-proto`.
//!
//! This crate owns the clock and the timers of a session: it serves connections
//! through the accept loop of `cm-serve` in `pop3.session` spans, reads with the
//! RFC 1939 autologout timer, upgrades to TLS on STLS, and carries out what the
//! protocol core asks for (check credentials, lock and list the maildrop, fetch a
//! message, remove the deleted ones) through [`cm_repl::Mail`]. It parses nothing
//! and decides no protocol rule itself: both live in `cm-pop3-proto`.
//!
//! Reading order: [`serve`] (the accept loop's POP3 side), then
//! [`handle_connection`] (one session, over any stream), then `verdicts` (the one
//! place where mail-service outcomes become protocol outcomes). Every limit is in
//! [`Pop3Limits`] and `cm_pop3_proto::limits`.
//!
//! Invariant: the maildrop lock is owned by the session's TRANSACTION state, so it
//! is released exactly when the session ends, whichever way it ends (QUIT, a
//! dropped connection, the idle timeout, shutdown). A session that did not reach
//! QUIT removes nothing.

mod connection;
mod verdicts;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use cm_pop3_proto::Pop3Limits;
pub use connection::handle_connection;

use cm_pop3_proto::{ProtoError, Response};
use cm_repl::Mail;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

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
    /// A failed login is answered after [`cm_serve::auth_failure_delay`] of this
    /// step, so guessing passwords costs time while a typo costs little.
    pub auth_failure_delay: Duration,
    /// Connections one client address may hold at once, trusted networks exempt
    /// (docs/DESIGN.md §10, "Budgets"); past it, the same refusal as past
    /// `limits.connections_max`.
    pub client_budget: cm_serve::ClientBudget,
}

impl Default for Pop3Config {
    fn default() -> Pop3Config {
        Pop3Config {
            hostname: "localhost".to_owned(),
            tls: None,
            allow_plaintext: false,
            limits: Pop3Limits::default(),
            auth_failure_delay: Duration::from_secs(1),
            client_budget: cm_serve::ClientBudget::default(),
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
            .field("client_budget", &self.client_budget)
            .finish()
    }
}

/// Why a connection ended other than by QUIT, EOF or shutdown.
#[derive(Debug, thiserror::Error)]
pub enum Pop3ServerError {
    #[error("connection i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls handshake failed: {0}")]
    TlsHandshake(std::io::Error),
    #[error("idle timeout, autologout")]
    IdleTimeout,
    #[error("peer did not read a reply in time")]
    WriteTimeout,
}

/// Serves POP3 on `listener` until `shutdown` is cancelled, then waits for the
/// open sessions to end (each ends at its next read; an UPDATE in progress
/// completes first).
pub async fn serve(
    listener: TcpListener,
    config: Pop3Config,
    mail: Mail,
    shutdown: CancellationToken,
) {
    let config = Pop3Config {
        limits: config.limits.clamped(),
        ..config
    };
    cm_serve::serve(listener, Arc::new(Pop3Shell { config, mail }), shutdown).await;
}

/// The POP3 side of the shared accept loop.
struct Pop3Shell {
    config: Pop3Config,
    mail: Mail,
}

impl cm_serve::Shell for Pop3Shell {
    type Error = Pop3ServerError;
    const PROTOCOL: &'static str = "pop3";

    fn connections_max(&self) -> usize {
        self.config.limits.connections_max
    }

    /// RFC 2449 §8.1.2: `[SYS/TEMP]`, the server cannot serve now.
    fn refusal(&self) -> Vec<u8> {
        Response::from_error(&ProtoError::TooManyConnections).to_bytes()
    }

    fn client_budget(&self) -> cm_serve::ClientBudget {
        self.config.client_budget.clone()
    }

    fn span(&self, session_id: &str, peer: SocketAddr) -> tracing::Span {
        tracing::info_span!("pop3.session", session_id, %peer)
    }

    async fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        _session_id: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), Pop3ServerError> {
        handle_connection(stream, peer.ip(), &self.config, &self.mail, shutdown).await
    }
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
}
