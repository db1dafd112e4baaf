//! One IMAP session over one stream: feeds the peer's bytes to the protocol core,
//! carries out its requests against the mail service, and waits during IDLE.

use std::net::IpAddr;

use cm_imap_proto::{Action, Session, SessionConfig, Step};
use cm_model::{FolderId, MessageId};
use cm_repl::Mail;
use cm_serve::UpgradableStream;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use crate::limits::{IMAP_READ_CHUNK_BYTES, IMAP_WRITE_BUFFER_BYTES};
use crate::verdicts::{self, Account};
use crate::{ImapConfig, ImapServerError, plaintext_allowed};

type ImapSession = Session<MessageId>;

/// Runs one session on `stream` from greeting to close: LOGOUT, EOF, the
/// autologout timer, too many errors, an I/O error or `shutdown`. Generic over the
/// stream so that tests can drive it through `tokio::io::duplex` without sockets.
pub async fn handle_connection<S>(
    stream: S,
    peer_ip: IpAddr,
    config: &ImapConfig,
    mail: &Mail,
    shutdown: &CancellationToken,
) -> Result<(), ImapServerError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut session = ImapSession::new(SessionConfig {
        plaintext_allowed: plaintext_allowed(peer_ip, config),
        tls_available: config.tls.is_some(),
    });
    let mut connection = Connection {
        stream: UpgradableStream::new(stream),
        config,
        mail,
        out: session.greeting(),
        account: Account::default(),
    };
    connection.run(&mut session, shutdown).await
}

struct Connection<'a, S> {
    stream: UpgradableStream<S>,
    config: &'a ImapConfig,
    mail: &'a Mail,
    /// Replies not yet written: they go out just before the next read or wait,
    /// or as soon as they pass [`IMAP_WRITE_BUFFER_BYTES`].
    out: Vec<u8>,
    account: Account,
}

/// What the loop does once a step and the requests it led to are carried out.
enum Next {
    Read,
    Idle,
    StartTls,
    Close,
}

/// An IDLE in progress: the selected folder's wake-ups (from this node's replica,
/// or from the replica set through a subscription), when the folder is known.
struct Idling {
    changes: Option<cm_repl::imap::FolderWatch>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<'_, S> {
    async fn run(
        &mut self,
        session: &mut ImapSession,
        shutdown: &CancellationToken,
    ) -> Result<(), ImapServerError> {
        let limits = self.config.limits;
        let mut chunk = vec![0u8; IMAP_READ_CHUNK_BYTES];
        let mut idling: Option<Idling> = None;
        // RFC 9051 §5.4: the autologout counts from the peer's last input, so
        // that IDLE's polls do not keep a silent client forever (RFC 2177 §3:
        // clients re-issue IDLE within 29 minutes).
        let mut input_deadline = tokio::time::Instant::now() + limits.idle_timeout;
        loop {
            self.flush().await?;
            let n_read = tokio::select! {
                _ = shutdown.cancelled() => {
                    // RFC 9051 §7.1.5: BYE before closing at the server's initiative.
                    self.out.extend_from_slice(b"* BYE [UNAVAILABLE] server shutting down\r\n");
                    return self.flush().await;
                }
                read = tokio::time::timeout_at(input_deadline, self.stream.read(&mut chunk)) => {
                    input_deadline = tokio::time::Instant::now() + limits.idle_timeout;
                    match read {
                        Ok(read) => read?,
                        Err(_) => {
                            // RFC 9051 §7.1.5: BYE before the server closes.
                            self.out.extend_from_slice(b"* BYE [UNAVAILABLE] autologout\r\n");
                            let _ = self.flush().await;
                            return Err(ImapServerError::IdleTimeout);
                        }
                    }
                }
                woken = wait_for_change(&mut idling, limits.idle_poll_interval) => {
                    tracing::trace!(woken, "idle poll");
                    let step = session.idle_poll();
                    match self.carry_out(session, step).await? {
                        Next::Idle => continue,
                        Next::Read => idling = None,
                        Next::Close => return self.flush().await,
                        Next::StartTls => unreachable!("a poll never starts TLS"),
                    }
                    continue;
                }
            };
            if n_read == 0 {
                return Ok(());
            }
            let mut input = &chunk[..n_read];
            while !input.is_empty() {
                let (n_consumed, step) = session.feed(input);
                input = &input[n_consumed..];
                let Some(step) = step else { continue };
                match self.carry_out(session, step).await? {
                    Next::Read => idling = None,
                    Next::Idle => {
                        if idling.is_none() {
                            idling = Some(self.start_idling());
                        }
                    }
                    Next::Close => return self.flush().await,
                    Next::StartTls => {
                        // RFC 9051 §6.2.1: whatever the peer pipelined behind
                        // STARTTLS was sent in clear text and is dropped unread.
                        input = &[];
                        self.flush().await?;
                        self.start_tls().await?;
                        session.tls_started();
                    }
                }
            }
        }
    }

    /// Writes the step's output and carries out the requests it and its
    /// successors ask for, until the core waits for input (or closes).
    async fn carry_out(
        &mut self,
        session: &mut ImapSession,
        mut step: Step<MessageId>,
    ) -> Result<Next, ImapServerError> {
        loop {
            self.out.extend_from_slice(&step.output);
            if self.out.len() >= IMAP_WRITE_BUFFER_BYTES {
                self.flush().await?;
            }
            let request = match step.action {
                Action::Read => return Ok(Next::Read),
                Action::Idle => return Ok(Next::Idle),
                Action::StartTls => return Ok(Next::StartTls),
                Action::Close => return Ok(Next::Close),
                Action::Request(request) => request,
            };
            let is_login = matches!(request, cm_imap_proto::Request::Login { .. });
            let answer = verdicts::answer(self.mail, &mut self.account, request).await;
            if is_login
                && matches!(
                    answer,
                    cm_imap_proto::Answer::Login(Err(cm_imap_proto::LoginFailure::BadCredentials))
                )
            {
                let delay = cm_serve::auth_failure_delay(
                    self.config.auth_failure_delay,
                    session.n_login_failures() + 1,
                );
                tokio::time::sleep(delay).await;
            }
            step = session.answer(answer);
        }
    }

    /// IDLE on the selected folder: wake-ups from this node's replica of it, if
    /// the folder is known, else only the fallback poll.
    fn start_idling(&self) -> Idling {
        let changes = match (&self.account.address, &self.account.selected) {
            (Some(address), Some(view)) => Some(self.mail.watch_folder(address, view.id)),
            (Some(address), None) => Some(self.mail.watch_folder(address, FolderId::INBOX)),
            _ => None,
        };
        tracing::debug!(notified = changes.is_some(), "idle");
        Idling { changes }
    }

    /// RFC 9051 §6.2.1: the handshake, bounded by the autologout timer.
    async fn start_tls(&mut self) -> Result<(), ImapServerError> {
        let tls_config = self
            .config
            .tls
            .clone()
            .expect("STARTTLS is offered only with a TLS configuration");
        self.stream
            .start_tls(tls_config, self.config.limits.idle_timeout)
            .await
            .map_err(ImapServerError::TlsHandshake)?;
        tracing::debug!("tls established");
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ImapServerError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let stream = &mut self.stream;
        let write = async {
            stream.write_all(&out).await?;
            stream.flush().await
        };
        let written = tokio::time::timeout(self.config.limits.idle_timeout, write).await;
        self.out = out;
        self.out.clear();
        written.map_err(|_| ImapServerError::WriteTimeout)??;
        Ok(())
    }
}

/// Returns when an IDLE session should look at its folder again: a wake-up
/// (`true`) or the fallback poll (`false`). Never returns while not idling.
async fn wait_for_change(idling: &mut Option<Idling>, poll_interval: std::time::Duration) -> bool {
    let Some(idling) = idling else {
        return std::future::pending().await;
    };
    let changed = async {
        match &mut idling.changes {
            Some(changes) => changes.changed().await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = changed => true,
        _ = tokio::time::sleep(poll_interval) => false,
    }
}
