//! One POP3 session over one stream: feeds the peer's bytes to the protocol core
//! and carries out its steps against the mail service.

use std::net::IpAddr;

use cm_model::MessageId;
use cm_pop3_proto::limits::{
    POP3_DIRECT_WRITE_BYTES, POP3_READ_CHUNK_BYTES, POP3_WRITE_BUFFER_BYTES,
};
use cm_pop3_proto::{
    LoginFailure, ProtoError, Response, Session, SessionConfig, Step, Stuffed, top_of_message,
};
use cm_repl::{Mail, MaildropLock};
use cm_serve::UpgradableStream;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use crate::{Pop3Config, Pop3ServerError, plaintext_allowed, verdicts};

type Pop3Session = Session<MessageId, MaildropLock>;

/// Runs one session on `stream` from greeting to close: QUIT, EOF, the autologout
/// timer, too many errors, an I/O error or `shutdown`. Generic over the stream so
/// that tests can drive it through `tokio::io::duplex` without sockets.
pub async fn handle_connection<S>(
    stream: S,
    peer_ip: IpAddr,
    config: &Pop3Config,
    mail: &Mail,
    shutdown: &CancellationToken,
) -> Result<(), Pop3ServerError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut session = Pop3Session::new(SessionConfig {
        plaintext_allowed: plaintext_allowed(peer_ip, config),
        tls_available: config.tls.is_some(),
    });
    let mut connection = Connection {
        stream: UpgradableStream::new(stream),
        config,
        mail,
        out: Vec::with_capacity(POP3_WRITE_BUFFER_BYTES),
    };
    Pop3Session::greeting(&config.hostname).encode(&mut connection.out);
    connection.run(&mut session, shutdown).await
}

struct Connection<'a, S> {
    stream: UpgradableStream<S>,
    config: &'a Pop3Config,
    mail: &'a Mail,
    /// Replies not yet written: replies to pipelined commands go out together,
    /// just before the next read.
    out: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<'_, S> {
    /// The command loop: answers every buffered command, writes the replies, reads.
    async fn run(
        &mut self,
        session: &mut Pop3Session,
        shutdown: &CancellationToken,
    ) -> Result<(), Pop3ServerError> {
        let idle_timeout = self.config.limits.idle_timeout;
        let mut chunk = vec![0u8; POP3_READ_CHUNK_BYTES];
        loop {
            self.flush().await?;
            let read = tokio::select! {
                _ = shutdown.cancelled() => {
                    return self.close_with(Response::from_error(&ProtoError::ShuttingDown)).await;
                }
                read = tokio::time::timeout(idle_timeout, self.stream.read(&mut chunk)) => read,
            };
            // RFC 1939 §3: the autologout closes the connection without a reply
            // and without entering UPDATE, so nothing is removed.
            let n_read = read.map_err(|_| Pop3ServerError::IdleTimeout)??;
            if n_read == 0 {
                return Ok(());
            }
            let mut input = &chunk[..n_read];
            while !input.is_empty() {
                let (n_consumed, step) = session.feed(input);
                input = &input[n_consumed..];
                let Some(step) = step else { continue };
                match step {
                    Step::Reply(response) => response.encode(&mut self.out),
                    Step::Close(response) => return self.close_with(response).await,
                    Step::StartTls(response) => {
                        // RFC 2595 §4: whatever the peer pipelined behind STLS was
                        // sent in clear text and is dropped unread.
                        input = &[];
                        response.encode(&mut self.out);
                        self.flush().await?;
                        self.start_tls().await?;
                        session.tls_started();
                    }
                    Step::Login { user, password } => {
                        tracing::debug!(%user, "login");
                        let started = std::time::Instant::now();
                        let verdict = verdicts::login(self.mail, &user, &password.0).await;
                        // Measured before the failure delay: the metric is the
                        // service's latency, not the deliberate pause.
                        cm_types::metrics::POP3_LOGIN_SECONDS.observe_duration(started.elapsed());
                        let response = match verdict {
                            Ok((lock, listing)) => session.login_succeeded(lock, listing),
                            Err(failure) => {
                                if failure == LoginFailure::BadCredentials {
                                    let delay = cm_serve::auth_failure_delay(
                                        self.config.auth_failure_delay,
                                        session.n_login_failures() + 1,
                                    );
                                    tokio::time::sleep(delay).await;
                                }
                                match session.login_failed(failure) {
                                    Step::Reply(response) => response,
                                    Step::Close(response) => {
                                        return self.close_with(response).await;
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
                        match verdicts::retrieve(self.mail, lock, id).await {
                            Some(message) => {
                                let part = match n_body_lines {
                                    Some(n_lines) => top_of_message(&message, n_lines),
                                    None => &message[..],
                                };
                                Pop3Session::retrieve_status(n_body_lines, part.len())
                                    .encode(&mut self.out);
                                self.write_message(part).await?;
                            }
                            None => Pop3Session::retrieve_failed().encode(&mut self.out),
                        }
                    }
                    Step::Update { lock, deleted } => {
                        let outcome = verdicts::update(self.mail, &lock, &deleted).await;
                        drop(lock);
                        return self.close_with(Pop3Session::update_reply(outcome)).await;
                    }
                }
            }
        }
    }

    /// RFC 2595 §4: the handshake, bounded by the autologout timer.
    async fn start_tls(&mut self) -> Result<(), Pop3ServerError> {
        let tls_config = self
            .config
            .tls
            .clone()
            .expect("STLS is offered only with a TLS configuration");
        self.stream
            .start_tls(tls_config, self.config.limits.idle_timeout)
            .await
            .map_err(Pop3ServerError::TlsHandshake)?;
        tracing::debug!("tls established");
        Ok(())
    }

    /// Writes a byte-stuffed message, copying only short segments.
    async fn write_message(&mut self, message: &[u8]) -> Result<(), Pop3ServerError> {
        for segment in Stuffed::new(message) {
            if segment.len() >= POP3_DIRECT_WRITE_BYTES {
                self.flush().await?;
                self.write_all(segment).await?;
            } else {
                self.out.extend_from_slice(segment);
                if self.out.len() >= POP3_WRITE_BUFFER_BYTES {
                    self.flush().await?;
                }
            }
        }
        Ok(())
    }

    async fn close_with(&mut self, response: Response) -> Result<(), Pop3ServerError> {
        response.encode(&mut self.out);
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), Pop3ServerError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let written = self.write_all(&out).await;
        self.out = out;
        self.out.clear();
        written
    }

    /// A write to a peer that does not read is bounded by the autologout timer.
    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Pop3ServerError> {
        let stream = &mut self.stream;
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        tokio::time::timeout(self.config.limits.idle_timeout, write)
            .await
            .map_err(|_| Pop3ServerError::WriteTimeout)??;
        Ok(())
    }
}
