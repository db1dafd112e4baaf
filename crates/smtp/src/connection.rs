//! One SMTP session over one stream: read, feed the protocol core, act, write.

use std::io;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cm_repl::Mail;
use cm_smtp_proto::session::Delivery;
use cm_smtp_proto::{
    CommandReader, DataReceiver, InputMode, Reply, Session, SessionConfig, Step, headers, reply,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::{SmtpConfig, SmtpServerError, verdicts};

/// Bytes read from the peer at a time. Lines and bodies are assembled by the
/// protocol core under its own limits; this only bounds one read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// The growing AUTH failure delay stops growing after this many steps.
const AUTH_DELAY_STEPS_MAX: u32 = 10;

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
    });
    let mut connection = Connection {
        stream: Stream::Plain(stream),
        commands: CommandReader::new(&limits),
        data: None,
        out: session.greeting().to_bytes(),
        session,
        peer_ip,
        session_id,
        config,
        mail,
    };
    connection.run(shutdown).await
}

/// The stream before and after STARTTLS.
enum Stream<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// Only while the handshake owns the plain stream.
    Upgrading,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream<S> {
    async fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.read(buffer).await,
            Stream::Tls(stream) => stream.read(buffer).await,
            Stream::Upgrading => unreachable!("no reads during the handshake"),
        }
    }

    async fn write_all_and_flush(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
            Stream::Tls(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
            Stream::Upgrading => unreachable!("no writes during the handshake"),
        }
    }
}

/// What the read loop does after a step has been carried out.
enum Flow {
    Continue,
    Close,
    StartTls,
}

struct Connection<'a, S> {
    stream: Stream<S>,
    session: Session,
    commands: CommandReader,
    /// Present between 354 and the terminating dot: the receiver and the body so far.
    data: Option<(DataReceiver, Vec<u8>)>,
    /// Replies not yet written. PIPELINING (RFC 2920): replies to a batch of
    /// commands go out together, just before the next read.
    out: Vec<u8>,
    peer_ip: IpAddr,
    session_id: &'a str,
    config: &'a SmtpConfig,
    mail: &'a Mail,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<'_, S> {
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), SmtpServerError> {
        let idle_timeout = self.session.limits().idle_timeout;
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
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
                    if self.commands.has_partial_line() || self.data.is_some() {
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
            InputMode::Data => {
                let (receiver, body) = self.data.as_mut().expect("a receiver exists in DATA mode");
                let outcome = receiver.feed(input, body)?;
                let step = self.session.data_end(outcome);
                if !matches!(step, Step::Deliver(_)) {
                    self.data = None;
                }
                Some(step)
            }
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
                    self.data = Some((DataReceiver::new(self.session.limits()), Vec::new()));
                    return Flow::Continue;
                }
                Step::StartTls(reply) => {
                    self.queue(&reply);
                    return Flow::StartTls;
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
                        let n_steps =
                            (self.session.n_auth_failures() + 1).min(AUTH_DELAY_STEPS_MAX);
                        tokio::time::sleep(self.config.auth_failure_delay * n_steps).await;
                    }
                    self.session.auth_verdict(verdict)
                }
                Step::Deliver(delivery) => {
                    let (_, body) = self.data.take().expect("the body of a finished DATA");
                    let verdict = self.deliver(&delivery, body).await;
                    self.session.delivery_verdict(verdict)
                }
            };
        }
    }

    /// Adds the trace headers and stores the message once for all recipients.
    async fn deliver(&self, delivery: &Delivery, body: Vec<u8>) -> cm_smtp_proto::DeliveryVerdict {
        let unix_seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let date = headers::rfc5322_date(i64::try_from(unix_seconds).unwrap_or(i64::MAX));
        let single_recipient = match delivery.recipients.as_slice() {
            [only] => Some(only.as_str()),
            _ => None,
        };
        let peer_ip = self.peer_ip.to_string();
        let mut trace = headers::return_path(&delivery.reverse_path);
        trace.push_str(&headers::received(&headers::ReceivedFields {
            helo: &delivery.helo,
            peer_ip: &peer_ip,
            hostname: &self.config.hostname,
            protocol: delivery.protocol,
            id: self.session_id,
            single_recipient,
            date: &date,
        }));
        if !headers::has_header(&body, "Message-ID") {
            let unique = format!("{unix_seconds}.{:016x}", rand::random::<u64>());
            trace.push_str(&headers::message_id(&unique, &self.config.hostname));
        }
        let mut message = Vec::with_capacity(trace.len() + body.len());
        message.extend_from_slice(trace.as_bytes());
        message.extend_from_slice(&body);
        drop(body);
        let n_bytes = message.len();
        let outcome = self
            .mail
            .deliver(&delivery.recipients, Bytes::from(message))
            .await;
        let verdict = verdicts::delivery(outcome);
        tracing::debug!(
            n_recipients = delivery.recipients.len(),
            n_bytes,
            ?verdict,
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
        let Stream::Plain(plain) = std::mem::replace(&mut self.stream, Stream::Upgrading) else {
            unreachable!("the session refuses a second STARTTLS");
        };
        let handshake = TlsAcceptor::from(tls_config).accept(plain);
        let tls = match tokio::time::timeout(handshake_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => return Err(SmtpServerError::TlsHandshake(error)),
            Err(_elapsed) => {
                return Err(SmtpServerError::TlsHandshake(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake timed out",
                )));
            }
        };
        self.stream = Stream::Tls(Box::new(tls));
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
            self.stream.write_all_and_flush(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn close_with(&mut self, reply: Reply) -> Result<(), SmtpServerError> {
        self.queue(&reply);
        self.flush().await
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
