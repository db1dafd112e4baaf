//! One POP3 connection: feeds the peer's bytes to the protocol core and carries
//! out its steps against the mail service.

use std::net::IpAddr;

use cm_model::MessageId;
use cm_pop3_proto::{
    Listed, LoginFailure, ProtoError, Response, Session, SessionConfig, Step, Stuffed,
    UpdateOutcome, top_of_message,
};
use cm_repl::{Mail, MailError, MaildropLock};
use cm_types::Address;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{Pop3Config, Pop3Error, plaintext_allowed};

type Pop3Session = Session<MessageId, MaildropLock>;

/// Bytes read from the socket at a time; the parser keeps no more than a line.
const READ_BUFFER_BYTES: usize = 4096;
/// Replies are gathered up to this size before a write, so pipelined commands
/// are answered in few packets.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Message segments at least this long are written straight from the message
/// rather than copied into the write buffer.
const DIRECT_WRITE_BYTES: usize = 16 * 1024;
/// Failed-login delays stop growing after this many failures.
const AUTH_FAILURE_DELAY_STEPS_MAX: u32 = 10;

/// What ended a run of the command loop.
enum Ended {
    Closed,
    /// STLS was accepted: the handshake comes next, on the same socket.
    StartTls,
}

/// Serves one connection from greeting to close.
pub(crate) async fn handle_connection(
    stream: TcpStream,
    peer: IpAddr,
    config: &Pop3Config,
    mail: &Mail,
    shutdown: &CancellationToken,
) -> Result<(), Pop3Error> {
    let session_config = SessionConfig {
        plaintext_allowed: plaintext_allowed(peer, config),
        tls_available: config.tls.is_some(),
    };
    let mut session = Pop3Session::new(session_config);
    let mut stream = stream;
    let mut connection = Connection {
        config,
        mail,
        shutdown,
        out: Vec::with_capacity(WRITE_BUFFER_BYTES),
    };
    Pop3Session::greeting(&config.hostname).encode(&mut connection.out);
    match connection.run(&mut stream, &mut session).await? {
        Ended::Closed => return Ok(()),
        Ended::StartTls => {}
    }
    let tls_config = config
        .tls
        .clone()
        .expect("STLS is offered only with a TLS configuration");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let handshake = tokio::time::timeout(config.limits.idle_timeout, acceptor.accept(stream));
    let mut tls_stream = handshake
        .await
        .map_err(|_| Pop3Error::IdleTimeout)?
        .map_err(Pop3Error::TlsHandshake)?;
    tracing::debug!("tls established");
    session.tls_started();
    match connection.run(&mut tls_stream, &mut session).await? {
        Ended::Closed => Ok(()),
        Ended::StartTls => panic!("the session accepted STLS twice"),
    }
}

struct Connection<'a> {
    config: &'a Pop3Config,
    mail: &'a Mail,
    shutdown: &'a CancellationToken,
    /// Replies not yet written.
    out: Vec<u8>,
}

impl Connection<'_> {
    /// The command loop: answers every buffered command, writes the replies, reads.
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        session: &mut Pop3Session,
    ) -> Result<Ended, Pop3Error> {
        let mut read_buffer = vec![0u8; READ_BUFFER_BYTES];
        loop {
            self.flush(stream).await?;
            let read = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    Response::from_error(&ProtoError::ShuttingDown).encode(&mut self.out);
                    self.flush(stream).await?;
                    return Ok(Ended::Closed);
                }
                read = tokio::time::timeout(self.config.limits.idle_timeout, stream.read(&mut read_buffer)) => read,
            };
            // RFC 1939 §3: the autologout closes the connection without a reply
            // and without entering UPDATE, so nothing is removed.
            let n_read = read.map_err(|_| Pop3Error::IdleTimeout)??;
            if n_read == 0 {
                return Ok(Ended::Closed);
            }
            let mut input = &read_buffer[..n_read];
            while !input.is_empty() {
                let (n_consumed, step) = session.feed(input);
                input = &input[n_consumed..];
                let Some(step) = step else { continue };
                match step {
                    Step::Reply(response) => response.encode(&mut self.out),
                    Step::Close(response) => {
                        response.encode(&mut self.out);
                        self.flush(stream).await?;
                        return Ok(Ended::Closed);
                    }
                    Step::StartTls(response) => {
                        // Whatever the peer pipelined behind STLS is dropped with
                        // `read_buffer` (RFC 2595 §4).
                        response.encode(&mut self.out);
                        self.flush(stream).await?;
                        return Ok(Ended::StartTls);
                    }
                    Step::Login { user, password } => {
                        tracing::debug!(%user, "login");
                        let response = match self.login(&user, &password.0).await {
                            Ok((lock, listing)) => session.login_succeeded(lock, listing),
                            Err(failure) => {
                                if failure == LoginFailure::BadCredentials {
                                    let n_failures = session.n_login_failures() + 1;
                                    let delay = self.config.auth_failure_delay
                                        * n_failures.min(AUTH_FAILURE_DELAY_STEPS_MAX);
                                    tokio::time::sleep(delay).await;
                                }
                                match session.login_failed(failure) {
                                    Step::Reply(response) => response,
                                    Step::Close(response) => {
                                        response.encode(&mut self.out);
                                        self.flush(stream).await?;
                                        return Ok(Ended::Closed);
                                    }
                                    other => panic!("login_failed returned {other:?}"),
                                }
                            }
                        };
                        response.encode(&mut self.out);
                    }
                    Step::Retrieve {
                        lock,
                        msg,
                        id,
                        n_body_lines,
                    } => {
                        tracing::debug!(msg, %id, top = n_body_lines.is_some(), "retrieve");
                        match self.mail.retrieve(lock, id).await {
                            Ok(Some(message)) => {
                                let part = match n_body_lines {
                                    Some(n_lines) => top_of_message(&message, n_lines),
                                    None => &message[..],
                                };
                                Pop3Session::retrieve_status(n_body_lines, part.len())
                                    .encode(&mut self.out);
                                self.write_message(stream, part).await?;
                            }
                            Ok(None) => {
                                tracing::warn!(%id, "listed message is gone from the store");
                                Pop3Session::retrieve_failed().encode(&mut self.out);
                            }
                            Err(error) => {
                                tracing::warn!(%error, %id, "retrieve failed");
                                Pop3Session::retrieve_failed().encode(&mut self.out);
                            }
                        }
                    }
                    Step::Update { lock, deleted } => {
                        let outcome = self.update(&lock, &deleted).await;
                        Pop3Session::update_reply(outcome).encode(&mut self.out);
                        drop(lock);
                        self.flush(stream).await?;
                        return Ok(Ended::Closed);
                    }
                }
            }
        }
    }

    /// Checks the credentials, then locks and lists the maildrop. This and
    /// [`Connection::update`] are the one place where mail-service errors become
    /// protocol outcomes.
    async fn login(
        &self,
        user: &str,
        password: &[u8],
    ) -> Result<(MaildropLock, Vec<Listed<MessageId>>), LoginFailure> {
        let address = match user_address(user, &self.mail.config().domains) {
            Some(address) => address,
            None => return Err(LoginFailure::BadCredentials),
        };
        match self.mail.authenticate(&address, password).await {
            Ok(true) => {}
            Ok(false) => return Err(LoginFailure::BadCredentials),
            Err(error) => {
                tracing::warn!(%error, "authentication failed to run");
                return Err(LoginFailure::Unavailable);
            }
        }
        let lock = match self.mail.lock_maildrop(&address).await {
            Ok(lock) => lock,
            Err(MailError::InUse) => return Err(LoginFailure::InUse),
            Err(error) => {
                tracing::warn!(%error, "maildrop lock failed");
                return Err(LoginFailure::Unavailable);
            }
        };
        match self.mail.list(&lock).await {
            Ok(infos) => {
                tracing::debug!(%address, n_messages = infos.len(), "maildrop locked");
                Ok((
                    lock,
                    infos
                        .into_iter()
                        .map(|info| Listed {
                            id: info.id,
                            size: info.size,
                        })
                        .collect(),
                ))
            }
            Err(error) => {
                tracing::warn!(%error, "maildrop listing failed");
                Err(LoginFailure::Unavailable)
            }
        }
    }

    /// RFC 1939 §6 UPDATE: removes the deleted messages, all or none.
    async fn update(&self, lock: &MaildropLock, deleted: &[MessageId]) -> UpdateOutcome {
        if deleted.is_empty() {
            return UpdateOutcome::Removed;
        }
        match self.mail.delete(lock, deleted).await {
            Ok(()) => {
                tracing::debug!(n_deleted = deleted.len(), "messages removed");
                UpdateOutcome::Removed
            }
            Err(error) => {
                tracing::warn!(%error, n_deleted = deleted.len(), "removing messages failed");
                UpdateOutcome::Failed
            }
        }
    }

    /// Writes a byte-stuffed message, copying only short segments.
    async fn write_message<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        message: &[u8],
    ) -> Result<(), Pop3Error> {
        for segment in Stuffed::new(message) {
            if segment.len() >= DIRECT_WRITE_BYTES {
                self.flush(stream).await?;
                self.write_all(stream, segment).await?;
            } else {
                self.out.extend_from_slice(segment);
                if self.out.len() >= WRITE_BUFFER_BYTES {
                    self.flush(stream).await?;
                }
            }
        }
        Ok(())
    }

    async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> Result<(), Pop3Error> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let written = self.write_all(stream, &out).await;
        self.out = out;
        self.out.clear();
        written
    }

    async fn write_all<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        bytes: &[u8],
    ) -> Result<(), Pop3Error> {
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        tokio::time::timeout(self.config.limits.idle_timeout, write)
            .await
            .map_err(|_| Pop3Error::WriteTimeout)??;
        Ok(())
    }
}

/// The account a USER name (or SASL authcid) names: a full address, or a bare
/// local part in the first domain the ring serves. `None` if it is no address.
fn user_address(user: &str, domains: &[String]) -> Option<Address> {
    if user.contains('@') {
        return Address::parse(user).ok();
    }
    let domain = domains.first()?;
    Address::parse(&format!("{user}@{domain}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_become_addresses() {
        let domains = vec!["example.org".to_owned(), "localhost".to_owned()];
        let table: [(&str, Option<&str>); 4] = [
            ("Alice@Example.org", Some("alice@example.org")),
            ("bob", Some("bob@example.org")),
            ("bad@", None),
            ("a b", None),
        ];
        for (user, expected) in table {
            assert_eq!(
                user_address(user, &domains).as_ref().map(Address::as_str),
                expected,
                "{user}"
            );
        }
        assert_eq!(user_address("bob", &[]), None);
    }
}
