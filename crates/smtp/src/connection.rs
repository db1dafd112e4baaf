//! One SMTP session over one stream: read, feed the protocol core, act, write.

use std::net::IpAddr;
use std::time::Duration;

use cm_repl::{Mail, MailError};
use cm_serve::UpgradableStream;
use cm_smtp_proto::limits::SMTP_READ_CHUNK_BYTES;
use cm_smtp_proto::{
    Arrival, CommandReader, Delivery, InputMode, Reply, Session, SessionConfig, Step, reply,
};
use cm_types::Address;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use crate::{SmtpConfig, SmtpServerError, verdicts};

/// Runs one session on `stream` until QUIT, EOF, the idle timeout, too many
/// errors, an I/O error or `shutdown`. Generic over the stream so that tests can
/// drive it through `tokio::io::duplex` without sockets.
pub async fn handle_connection<S>(
    stream: S,
    peer_ip: IpAddr,
    session_id: &str,
    config: &SmtpConfig,
    mail: &Mail,
    shutdown: &CancellationToken,
) -> Result<(), SmtpServerError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let limits = config.limits.clamped();
    let session = Session::new(SessionConfig {
        hostname: config.hostname.clone(),
        limits: limits.clone(),
        tls_available: config.tls.is_some(),
        plaintext_allowed: crate::plaintext_allowed(peer_ip),
        sender_login_match: config.sender_login_match,
        peer_ip,
        session_id: session_id.to_owned(),
    });
    let mut connection = Connection {
        stream: UpgradableStream::new(stream),
        commands: CommandReader::new(&limits),
        out: session.greeting().to_bytes(),
        session,
        config,
        mail,
    };
    connection.run(shutdown).await
}

/// What the read loop does after a step has been carried out.
enum Flow {
    Continue,
    Close,
    StartTls,
}

struct Connection<'a, S> {
    stream: UpgradableStream<S>,
    session: Session,
    commands: CommandReader,
    /// Replies not yet written. PIPELINING (RFC 2920): replies to a batch of
    /// commands go out together, just before the next read.
    out: Vec<u8>,
    config: &'a SmtpConfig,
    mail: &'a Mail,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<'_, S> {
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), SmtpServerError> {
        let idle_timeout = self.session.limits().idle_timeout;
        let mut chunk = vec![0u8; SMTP_READ_CHUNK_BYTES];
        loop {
            self.flush().await?;
            let read = tokio::select! {
                _ = shutdown.cancelled() => {
                    return self.close_with(reply::shutting_down(&self.config.hostname)).await;
                }
                read = tokio::time::timeout(idle_timeout, self.stream.read(&mut chunk)) => read,
            };
            let n_read = match read {
                Err(_elapsed) => {
                    tracing::debug!("idle timeout");
                    return self
                        .close_with(reply::idle_timeout(&self.config.hostname))
                        .await;
                }
                Ok(Ok(0)) => {
                    if self.commands.has_partial_line()
                        || self.session.input_mode() == InputMode::Data
                    {
                        tracing::debug!("peer closed mid-command or mid-message");
                    }
                    return Ok(());
                }
                Ok(Ok(n_read)) => n_read,
                Ok(Err(error)) => return Err(error.into()),
            };
            let mut input = &chunk[..n_read];
            while !input.is_empty() {
                let Some(step) = self.next_step(&mut input) else {
                    break;
                };
                match self.carry_out(step).await {
                    Flow::Continue => {}
                    Flow::Close => {
                        self.flush().await?;
                        return Ok(());
                    }
                    Flow::StartTls => {
                        // RFC 3207 §4.2 (and CVE-2011-0411): input pipelined behind
                        // STARTTLS was sent in clear text and is dropped unread.
                        input = &[];
                        self.commands.reset();
                        self.flush().await?;
                        self.start_tls(idle_timeout).await?;
                    }
                }
            }
        }
    }

    /// Feeds `input` to whichever reader the session state calls for; `None` when
    /// `input` ran out before a whole command, SASL line or message.
    fn next_step(&mut self, input: &mut &[u8]) -> Option<Step> {
        match self.session.input_mode() {
            InputMode::Command => {
                let command = self.commands.next_command(input)?;
                match &command {
                    Ok(command) => tracing::debug!(command = command_name(command), "command"),
                    Err(error) => tracing::debug!(%error, "bad command"),
                }
                Some(self.session.command(command))
            }
            InputMode::SaslResponse => {
                let line = self.commands.next_sasl_line(input)?;
                Some(self.session.sasl_response(line))
            }
            InputMode::Data => self.session.feed_data(input),
        }
    }

    /// Carries out a step, answering the session's questions until it has a reply.
    async fn carry_out(&mut self, mut step: Step) -> Flow {
        loop {
            step = match step {
                Step::Reply(reply) => {
                    self.queue(&reply);
                    return Flow::Continue;
                }
                Step::Close(reply) => {
                    self.queue(&reply);
                    return Flow::Close;
                }
                Step::StartData(reply) => {
                    self.queue(&reply);
                    self.session.begin_data(arrival_now());
                    return Flow::Continue;
                }
                Step::StartTls(reply) => {
                    self.queue(&reply);
                    return Flow::StartTls;
                }
                Step::VerifySender(from, sender) => {
                    let verdict = verdicts::sender(self.mail, &sender);
                    tracing::debug!(%sender, ?verdict, "sender");
                    self.session.sender_verdict(from, sender, verdict)
                }
                Step::VerifyRecipient(recipient) => {
                    let verdict = verdicts::recipient(self.mail, &recipient).await;
                    tracing::debug!(%recipient, ?verdict, "recipient");
                    self.session.recipient_verdict(recipient, verdict)
                }
                Step::Authenticate(credentials) => {
                    let verdict = verdicts::credentials(self.mail, &credentials).await;
                    tracing::debug!(identity = %credentials.identity, ?verdict, "auth");
                    if verdict == cm_smtp_proto::AuthVerdict::Rejected {
                        let n_failures = self.session.n_auth_failures() + 1;
                        let delay = cm_serve::auth_failure_delay(
                            self.config.auth_failure_delay,
                            n_failures,
                        );
                        tokio::time::sleep(delay).await;
                    }
                    self.session.auth_verdict(verdict)
                }
                Step::Deliver(delivery) => {
                    let verdict = self.deliver(delivery).await;
                    self.session.delivery_verdict(verdict)
                }
            };
        }
    }

    /// Stores the message once for all recipients: the `Bytes` the core handed
    /// over travel to every replica without a copy.
    /// Stores the message for the recipients of served domains and queues it for
    /// the others (only an authenticated session has those); 250 only when both are
    /// durable.
    async fn deliver(&self, delivery: Delivery) -> cm_smtp_proto::DeliveryVerdict {
        let started = std::time::Instant::now();
        let n_recipients = delivery.recipients.len();
        let n_bytes = delivery.message.len();
        let (local, remote): (Vec<Address>, Vec<Address>) = delivery
            .recipients
            .into_iter()
            .partition(|recipient| self.mail.serves_domain(recipient.domain()));
        let message = delivery.message;
        let outcome = async {
            let mut ids = Vec::with_capacity(n_recipients);
            if !local.is_empty() {
                ids.extend(self.mail.deliver(&local, message.clone()).await?);
            }
            if !remote.is_empty() {
                let sender = Address::parse(&delivery.reverse_path).ok();
                ids.push(self.mail.enqueue(sender.as_ref(), &remote, message).await?);
            }
            Ok::<_, MailError>(ids)
        }
        .await;
        let verdict = verdicts::delivery(outcome);
        cm_types::metrics::SMTP_ACCEPT_SECONDS.observe_duration(started.elapsed());
        // The copies the 250 rests on: the write quorum returns as soon as `W`
        // members have each write durable, for every local recipient's message
        // and for the outbound entry of the remote ones. The other members get
        // theirs moments later or by anti-entropy; a refusal rests on none.
        let n_stored_items = local.len() + usize::from(!remote.is_empty());
        let (outcome, queue_id, n_copies_acknowledged) = match &verdict {
            cm_smtp_proto::DeliveryVerdict::Stored { queue_id } => {
                cm_types::metrics::SMTP_MESSAGES_ACCEPTED.increment();
                let n_copies = n_stored_items * self.mail.config().quorum();
                ("stored", queue_id.as_str(), n_copies)
            }
            cm_smtp_proto::DeliveryVerdict::TemporaryFailure => {
                cm_types::metrics::SMTP_MESSAGES_REFUSED.increment();
                ("deferred", "", 0)
            }
            cm_smtp_proto::DeliveryVerdict::PermanentFailure => {
                cm_types::metrics::SMTP_MESSAGES_REFUSED.increment();
                ("refused", "", 0)
            }
        };
        // One line per message in the shape operators grep for (Postfix's
        // `queue_id: from=<...>, nrcpt=N, size=N`): envelope facts only, never the
        // recipients' list, a header or a byte of the body.
        tracing::info!(
            queue_id,
            sender = %delivery.reverse_path,
            n_recipients,
            n_local = local.len(),
            n_remote = remote.len(),
            n_bytes,
            outcome,
            n_copies_acknowledged,
            "delivery"
        );
        verdict
    }

    async fn start_tls(&mut self, handshake_timeout: Duration) -> Result<(), SmtpServerError> {
        let tls_config = self
            .config
            .tls
            .clone()
            .expect("STARTTLS is only offered with a TLS configuration");
        self.stream
            .start_tls(tls_config, handshake_timeout)
            .await
            .map_err(SmtpServerError::TlsHandshake)?;
        self.session.tls_started();
        tracing::debug!("tls established");
        Ok(())
    }

    fn queue(&mut self, reply: &Reply) {
        if reply.is_error() {
            tracing::debug!(code = reply.code, status = reply.status, "error reply");
        }
        reply.encode(&mut self.out);
    }

    async fn flush(&mut self) -> Result<(), SmtpServerError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn close_with(&mut self, reply: Reply) -> Result<(), SmtpServerError> {
        self.queue(&reply);
        self.flush().await
    }
}

/// The clock reading and random bits the core needs for the trace headers.
fn arrival_now() -> Arrival {
    Arrival {
        unix_seconds: cm_types::date::unix_seconds_now(),
        nonce: rand::random(),
    }
}

/// The verb, for logs: arguments are left out, since they can hold credentials.
fn command_name(command: &cm_smtp_proto::Command) -> &'static str {
    use cm_smtp_proto::Command;
    match command {
        Command::Ehlo(_) => "EHLO",
        Command::Helo(_) => "HELO",
        Command::Mail(_) => "MAIL",
        Command::Rcpt(_) => "RCPT",
        Command::Data => "DATA",
        Command::Rset => "RSET",
        Command::Noop => "NOOP",
        Command::Quit => "QUIT",
        Command::Vrfy => "VRFY",
        Command::Help => "HELP",
        Command::StartTls => "STARTTLS",
        Command::Auth(_) => "AUTH",
    }
}
