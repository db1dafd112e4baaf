//! The SMTP server of a chordmail node (docs/DESIGN.md §5): the tokio shell around
//! `cm-smtp-proto`.
//!
//! This crate owns the sockets, the clock and the timers: it accepts connections
//! under a connection limit, runs one task and one `smtp.session` span per
//! connection, reads with the idle timeout, upgrades to TLS on STARTTLS, and
//! answers the protocol core's questions (does this mailbox exist, are these
//! credentials good, store this message) through [`cm_repl::Mail`]. It parses
//! nothing itself and decides no protocol rule: both live in `cm-smtp-proto`.
//!
//! Reading order: [`serve`] (the accept loop), then [`handle_connection`] (one
//! session), then `verdicts` (the one place where mail-service outcomes become
//! protocol verdicts).

mod connection;
mod verdicts;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use cm_smtp_proto::SmtpLimits;
pub use connection::handle_connection;

use cm_repl::Mail;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// The SMTP server's settings.
#[derive(Clone)]
pub struct SmtpConfig {
    /// Our name in the greeting, EHLO reply and trace headers.
    pub hostname: String,
    /// With a configuration, STARTTLS is offered (RFC 3207).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Lowered to the constants of `cm_types::limits` if set higher.
    pub limits: SmtpLimits,
    /// A failed AUTH is answered after `n_failures * auth_failure_delay` (capped at
    /// ten steps), so guessing passwords costs time while a typo costs little.
    pub auth_failure_delay: Duration,
}

impl Default for SmtpConfig {
    fn default() -> SmtpConfig {
        SmtpConfig {
            hostname: "localhost".to_owned(),
            tls: None,
            limits: SmtpLimits::default(),
            auth_failure_delay: Duration::from_secs(1),
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

/// A pause after a failed `accept` (e.g. out of file descriptors), so that the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves SMTP on `listener` until `shutdown` is cancelled, then waits for the
/// open sessions to end (each says 421 at its next read; a delivery in progress
/// completes first).
pub async fn serve(
    listener: TcpListener,
    config: SmtpConfig,
    mail: Mail,
    shutdown: CancellationToken,
) {
    let config = Arc::new(SmtpConfig {
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
                tracing::warn!(%error, "smtp accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse_over_limit(&stream, &config.hostname, peer);
            continue;
        };
        let (config, mail, shutdown) = (config.clone(), mail.clone(), shutdown.clone());
        let session_id = format!("{:016x}", rand::random::<u64>());
        let span = tracing::info_span!("smtp.session", session_id = %session_id, peer = %peer);
        tokio::spawn(
            async move {
                let _permit = permit;
                tracing::debug!("connected");
                match handle_connection(stream, peer.ip(), &session_id, &config, &mail, &shutdown)
                    .await
                {
                    Ok(()) => tracing::debug!("disconnected"),
                    Err(error) => tracing::debug!(%error, "connection ended"),
                }
            }
            .instrument(span),
        );
    }
    tracing::info!("smtp listener stopped, waiting for open sessions");
    let n_permits = u32::try_from(n_connections_max).expect("connection limit fits in u32");
    let _all_closed = permits.acquire_many(n_permits).await;
}

/// RFC 5321 §3.1: a server may answer 421 at connection time when it cannot serve.
/// A fresh socket's send buffer is empty, so a non-blocking write suffices and
/// the accept loop never waits on a peer it is turning away.
fn refuse_over_limit(stream: &tokio::net::TcpStream, hostname: &str, peer: SocketAddr) {
    tracing::warn!(%peer, "smtp connection limit reached, refusing");
    let _ = stream.try_write(&cm_smtp_proto::reply::too_many_connections(hostname).to_bytes());
}
