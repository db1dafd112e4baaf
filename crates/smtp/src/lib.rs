//! The SMTP server of a chordmail node (docs/DESIGN.md §5): the tokio shell around
//! `cm-smtp-proto`.
//!
//! This crate owns the clock and the timers of a session: it serves connections
//! through the accept loop of `cm-serve` in `smtp.session` spans, reads with the
//! idle timeout, upgrades to TLS on STARTTLS, passes the time and unique values
//! in, and answers the protocol core's questions (does this mailbox exist, are
//! these credentials good, store this message) through [`cm_repl::Mail`]. It
//! parses nothing itself and decides no protocol rule, not even the trace headers:
//! those live in `cm-smtp-proto`, whose session hands over the message as one
//! `Bytes` that goes to every replica uncopied.
//!
//! Reading order: [`serve`] (the accept loop's SMTP side), then
//! [`handle_connection`] (one session, over any stream), then `verdicts` (the one
//! place where mail-service outcomes become protocol verdicts). Every limit is in
//! [`SmtpLimits`] and `cm_smtp_proto::limits`.

mod connection;
mod verdicts;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use cm_smtp_proto::SmtpLimits;
pub use connection::handle_connection;

use cm_repl::Mail;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The SMTP server's settings.
#[derive(Clone)]
pub struct SmtpConfig {
    /// Our name in the greeting, EHLO reply and trace headers.
    pub hostname: String,
    /// With a configuration, STARTTLS is offered (RFC 3207).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Lowered to the constants of `cm_types::limits` if set higher.
    pub limits: SmtpLimits,
    /// A failed AUTH is answered after [`cm_serve::auth_failure_delay`] of this
    /// step, so guessing passwords costs time while a typo costs little.
    pub auth_failure_delay: Duration,
    /// A MAIL FROM address in a served domain needs a session authenticated as
    /// that address (docs/DESIGN.md §10). `false` relaxes it, for operators whose
    /// users submit through gateways that cannot log in as each sender.
    pub sender_login_match: bool,
    /// Connections one client address may hold at once, trusted networks exempt
    /// (docs/DESIGN.md §10, "Budgets").
    pub client_budget: cm_serve::ClientBudget,
}

impl Default for SmtpConfig {
    fn default() -> SmtpConfig {
        SmtpConfig {
            hostname: "localhost".to_owned(),
            tls: None,
            limits: SmtpLimits::default(),
            auth_failure_delay: Duration::from_secs(1),
            sender_login_match: true,
            client_budget: cm_serve::ClientBudget::default(),
        }
    }
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("hostname", &self.hostname)
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .field("auth_failure_delay", &self.auth_failure_delay)
            .field("sender_login_match", &self.sender_login_match)
            .field("client_budget", &self.client_budget)
            .finish()
    }
}

/// Why a connection ended other than by QUIT, EOF, timeout or shutdown.
#[derive(Debug, thiserror::Error)]
pub enum SmtpServerError {
    #[error("connection i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls handshake failed: {0}")]
    TlsHandshake(std::io::Error),
}

/// Serves SMTP on `listener` until `shutdown` is cancelled, then waits for the
/// open sessions to end (each says 421 at its next read; a delivery in progress
/// completes first).
pub async fn serve(
    listener: TcpListener,
    config: SmtpConfig,
    mail: Mail,
    shutdown: CancellationToken,
) {
    let config = SmtpConfig {
        limits: config.limits.clamped(),
        ..config
    };
    cm_serve::serve(listener, Arc::new(SmtpShell { config, mail }), shutdown).await;
}

/// The SMTP side of the shared accept loop.
struct SmtpShell {
    config: SmtpConfig,
    mail: Mail,
}

impl cm_serve::Shell for SmtpShell {
    type Error = SmtpServerError;
    const PROTOCOL: &'static str = "smtp";

    fn connections_max(&self) -> usize {
        self.config.limits.connections_max
    }

    /// RFC 5321 §3.1: a server may answer 421 at connection time when it cannot serve.
    fn refusal(&self) -> Vec<u8> {
        cm_smtp_proto::reply::too_many_connections(&self.config.hostname).to_bytes()
    }

    fn client_budget(&self) -> cm_serve::ClientBudget {
        self.config.client_budget.clone()
    }

    fn client_refusal(&self) -> Vec<u8> {
        cm_smtp_proto::reply::too_many_connections_from_client(&self.config.hostname).to_bytes()
    }

    fn span(&self, session_id: &str, peer: SocketAddr) -> tracing::Span {
        tracing::info_span!("smtp.session", session_id, %peer)
    }

    async fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        session_id: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), SmtpServerError> {
        handle_connection(
            stream,
            peer.ip(),
            session_id,
            &self.config,
            &self.mail,
            shutdown,
        )
        .await
    }
}

/// Whether AUTH may be offered and used before STARTTLS: on loopback the password
/// never leaves the host (docs/DESIGN.md §10, as `cm_pop3::plaintext_allowed`).
pub fn plaintext_allowed(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_on_loopback() {
        let table: [(&str, bool); 6] = [
            ("127.0.0.1", true),
            ("127.3.4.5", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("192.0.2.7", false),
            ("::ffff:192.0.2.7", false),
        ];
        for (peer, allowed) in table {
            let peer: IpAddr = peer.parse().unwrap();
            assert_eq!(plaintext_allowed(peer), allowed, "{peer}");
        }
    }
}
