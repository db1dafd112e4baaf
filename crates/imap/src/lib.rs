//! The IMAP server of a chordmail node (docs/DESIGN.md §11): the tokio shell around
//! `cm-imap-proto`.
//!
//! This crate owns the clock, the timers and the socket of a session: it serves
//! connections through the accept loop of `cm-serve` in `imap.session` spans,
//! reads with the RFC 9051 §5.4 autologout timer, upgrades to TLS on STARTTLS,
//! waits during IDLE for the selected folder to change (a wake-up from this node's
//! replica, or the fallback poll), and carries out the requests of the protocol
//! core against [`cm_repl::Mail`]. It parses nothing and decides no protocol rule:
//! both live in `cm-imap-proto`; folders, flags and UIDs are `cm-repl`'s.
//!
//! Reading order: [`serve`] (the accept loop's IMAP side), then
//! [`handle_connection`] (one session, over any stream), then `verdicts` (the one
//! place where mail-service outcomes become IMAP answers). Every limit is in
//! `limits` ([`ImapLimits`]) and `cm_imap_proto::limits`.
//!
//! Invariant: the account a session acts for is set only by a successful login,
//! and every request after it names that account; the core asks for no folder data
//! before it.

mod connection;
pub mod limits;
mod verdicts;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use connection::handle_connection;
pub use limits::ImapLimits;

use cm_repl::Mail;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The IMAP server's settings.
#[derive(Clone)]
pub struct ImapConfig {
    /// With a configuration, STARTTLS is offered.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Allow LOGIN and AUTHENTICATE PLAIN without TLS from peers that are not on
    /// loopback. Off by default: passwords should not cross a network in clear.
    pub allow_plaintext: bool,
    /// Lowered to the constants of `limits` if set higher.
    pub limits: ImapLimits,
    /// A failed login is answered after [`cm_serve::auth_failure_delay`] of this
    /// step, so guessing passwords costs time while a typo costs little.
    pub auth_failure_delay: Duration,
    /// Connections one client address may hold at once, trusted networks exempt
    /// (docs/DESIGN.md §10, "Budgets"); past it, the same refusal as past
    /// `limits.connections_max`.
    pub client_budget: cm_serve::ClientBudget,
}

impl Default for ImapConfig {
    fn default() -> ImapConfig {
        ImapConfig {
            tls: None,
            allow_plaintext: false,
            limits: ImapLimits::default(),
            auth_failure_delay: Duration::from_secs(1),
            client_budget: cm_serve::ClientBudget::default(),
        }
    }
}

impl std::fmt::Debug for ImapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapConfig")
            .field("tls", &self.tls.is_some())
            .field("allow_plaintext", &self.allow_plaintext)
            .field("limits", &self.limits)
            .field("auth_failure_delay", &self.auth_failure_delay)
            .field("client_budget", &self.client_budget)
            .finish()
    }
}

/// Why a connection ended other than by LOGOUT, EOF or shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ImapServerError {
    #[error("connection i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls handshake failed: {0}")]
    TlsHandshake(std::io::Error),
    #[error("idle timeout, autologout")]
    IdleTimeout,
    #[error("peer did not read a reply in time")]
    WriteTimeout,
}

/// Serves IMAP on `listener` until `shutdown` is cancelled, then waits for the
/// open sessions to end (each says BYE at its next read or wake-up).
pub async fn serve(
    listener: TcpListener,
    config: ImapConfig,
    mail: Mail,
    shutdown: CancellationToken,
) {
    let config = ImapConfig {
        limits: config.limits.clamped(),
        ..config
    };
    cm_serve::serve(listener, Arc::new(ImapShell { config, mail }), shutdown).await;
}

/// The IMAP side of the shared accept loop.
struct ImapShell {
    config: ImapConfig,
    mail: Mail,
}

impl cm_serve::Shell for ImapShell {
    type Error = ImapServerError;
    const PROTOCOL: &'static str = "imap";

    fn connections_max(&self) -> usize {
        self.config.limits.connections_max
    }

    /// RFC 9051 §7.1.5: BYE instead of a greeting, with RFC 5530's UNAVAILABLE.
    fn refusal(&self) -> Vec<u8> {
        b"* BYE [UNAVAILABLE] too many connections, try again later\r\n".to_vec()
    }

    fn client_budget(&self) -> cm_serve::ClientBudget {
        self.config.client_budget.clone()
    }

    fn span(&self, session_id: &str, peer: SocketAddr) -> tracing::Span {
        tracing::info_span!("imap.session", session_id, %peer)
    }

    async fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        _session_id: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), ImapServerError> {
        handle_connection(stream, peer.ip(), &self.config, &self.mail, shutdown).await
    }
}

/// Whether LOGIN and AUTHENTICATE PLAIN may be used before STARTTLS: on loopback
/// the password never leaves the host; elsewhere only if the operator said so.
pub fn plaintext_allowed(peer: IpAddr, config: &ImapConfig) -> bool {
    config.allow_plaintext || peer.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_on_loopback_unless_allowed() {
        let strict = ImapConfig::default();
        let lenient = ImapConfig {
            allow_plaintext: true,
            ..ImapConfig::default()
        };
        let table: [(&str, bool, bool); 4] = [
            ("127.0.0.1", true, true),
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
