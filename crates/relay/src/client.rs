//! A small SMTP client (RFC 5321) for relaying: one session on one connection,
//! with a bound on every reply and a timeout on every wait.
//!
//! It is written here rather than taken from mail-send or lettre: lettre sends a
//! whole message and gives up on the first refused recipient, and mail-send pulls
//! in a platform certificate verifier we never use and has one timeout for every
//! command. What we need is small: replies of bounded lines, EHLO keywords,
//! STARTTLS without verification, and one outcome per command.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HostPort, RelayConfig};
use crate::limits::{DIAGNOSTIC_BYTES_MAX, QUIT_TIMEOUT, REPLY_LINE_BYTES_MAX, REPLY_LINES_MAX};

/// The byte stream under a session: plain TCP, or TLS over it after STARTTLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A server reply: its code and the text of its lines (without code and separator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// 2 for success, 3 for "go on", 4 for a transient and 5 for a permanent failure.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// The reply as one line, as it goes into a queue entry or a DSN's
    /// `Diagnostic-Code`, shortened to [`DIAGNOSTIC_BYTES_MAX`].
    pub fn diagnostic(&self) -> String {
        let mut text = format!("{} {}", self.code, self.lines.join(" "));
        truncate_at_char(&mut text, DIAGNOSTIC_BYTES_MAX);
        text
    }

    /// The enhanced status code (RFC 3463) at the start of the text, or the
    /// reply's class with `.0.0` when the server gave none.
    pub fn status(&self) -> String {
        let first = self.lines.first().map(String::as_str).unwrap_or("");
        let candidate = first.split(' ').next().unwrap_or("");
        let parts: Vec<&str> = candidate.split('.').collect();
        let enhanced = parts.len() == 3
            && parts[0] == (self.class()).to_string()
            && parts[1..].iter().all(|part| {
                (1..=3).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
            });
        if enhanced {
            candidate.to_string()
        } else {
            format!("{}.0.0", self.class())
        }
    }
}

pub(crate) fn truncate_at_char(text: &mut String, bytes_max: usize) {
    if text.len() > bytes_max {
        let mut end = bytes_max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// What the server announced in its EHLO reply that changes how we send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extensions {
    pub starttls: bool,
    /// `SIZE n` (RFC 1870); `Some(0)` means announced without a fixed limit.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtp_utf8: bool,
}

impl Extensions {
    fn from_ehlo(reply: &Reply) -> Extensions {
        let mut extensions = Extensions::default();
        // The first line is the server's name and greeting, not a keyword.
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "STARTTLS" => extensions.starttls = true,
                "SIZE" => {
                    extensions.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0))
                }
                "8BITMIME" => extensions.eight_bit_mime = true,
                "SMTPUTF8" => extensions.smtp_utf8 = true,
                _ => {}
            }
        }
        extensions
    }
}

/// Why a session cannot go on; the text becomes a deferral reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Broken(pub String);

/// Why opening a session failed, and whether TLS was the cause, in which case the
/// same address is tried once more without it.
#[derive(Debug)]
pub(crate) struct OpenFailure {
    pub reason: String,
    pub tls_failed: bool,
}

/// One SMTP session after a successful greeting and EHLO (or HELO).
pub(crate) struct Session {
    io: Box<dyn Io>,
    /// Bytes read but not yet consumed as reply lines.
    unread: Vec<u8>,
    pub extensions: Extensions,
    pub tls: bool,
    /// `host[address]`, for reasons and logs.
    pub peer: String,
    command_timeout: Duration,
    data_timeout: Duration,
}

impl Session {
    /// Connects, reads the greeting, says EHLO (HELO when EHLO is refused) and, when
    /// `try_tls` and the server offers it, upgrades with STARTTLS and says EHLO again.
    pub async fn open(
        config: &RelayConfig,
        hop: &HostPort,
        address: SocketAddr,
        try_tls: bool,
    ) -> Result<Session, OpenFailure> {
        let peer = format!("{}[{}]", hop.host, address.ip());
        let plain = |reason: String| OpenFailure {
            reason,
            tls_failed: false,
        };
        let stream =
            match tokio::time::timeout(config.connect_timeout(), TcpStream::connect(address)).await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => return Err(plain(format!("connect to {peer}: {err}"))),
                Err(_) => return Err(plain(format!("connect to {peer}: timed out"))),
            };
        let _ = stream.set_nodelay(true);
        let mut session = Session {
            io: Box::new(stream),
            unread: Vec::new(),
            extensions: Extensions::default(),
            tls: false,
            peer,
            command_timeout: config.command_timeout(),
            data_timeout: config.data_timeout(),
        };
        let greeting = session
            .read_reply(session.command_timeout)
            .await
            .map_err(|Broken(reason)| plain(reason))?;
        if greeting.class() != 2 {
            // Like Postfix's smtp_skip_5xx_greeting: a server that will not talk to us
            // now says nothing about the recipients, so the next host is tried.
            return Err(plain(format!(
                "{} greeted with {}",
                session.peer,
                greeting.diagnostic()
            )));
        }
        session
            .hello(&config.hostname)
            .await
            .map_err(|Broken(reason)| plain(reason))?;
        if !(try_tls && session.extensions.starttls) {
            return Ok(session);
        }
        let reply = session
            .command(b"STARTTLS\r\n")
            .await
            .map_err(|Broken(reason)| plain(reason))?;
        if reply.class() != 2 {
            // A refused STARTTLS (454) leaves a usable plain session (RFC 3207 §4).
            return Ok(session);
        }
        let tls_failure = |reason: String| OpenFailure {
            reason,
            tls_failed: true,
        };
        if !session.unread.is_empty() {
            // Bytes sent before the handshake would be taken as protected later
            // (the STARTTLS command injection of CVE-2011-0411).
            return Err(tls_failure(format!(
                "{} sent data before the TLS handshake",
                session.peer
            )));
        }
        let server_name = ServerName::try_from(hop.host.clone())
            .map_err(|err| tls_failure(format!("{}: {err}", hop.host)))?;
        let connector = tokio_rustls::TlsConnector::from(tls_client_config());
        let io = std::mem::replace(
            &mut session.io,
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
        );
        let handshake =
            tokio::time::timeout(session.command_timeout, connector.connect(server_name, io)).await;
        match handshake {
            Ok(Ok(tls_stream)) => session.io = Box::new(tls_stream),
            Ok(Err(err)) => {
                return Err(tls_failure(format!(
                    "TLS handshake with {}: {err}",
                    session.peer
                )));
            }
            Err(_) => {
                return Err(tls_failure(format!(
                    "TLS handshake with {}: timed out",
                    session.peer
                )));
            }
        }
        session.tls = true;
        // RFC 3207 §4.2: everything learnt before the handshake is forgotten.
        session
            .hello(&config.hostname)
            .await
            .map_err(|Broken(reason)| tls_failure(reason))?;
        Ok(session)
    }

    async fn hello(&mut self, hostname: &str) -> Result<(), Broken> {
        let reply = self
            .command(format!("EHLO {hostname}\r\n").as_bytes())
            .await?;
        if reply.class() == 2 {
            self.extensions = Extensions::from_ehlo(&reply);
            return Ok(());
        }
        if reply.class() == 5 {
            // An old server that does not know EHLO (RFC 5321 §3.2).
            let reply = self
                .command(format!("HELO {hostname}\r\n").as_bytes())
                .await?;
            if reply.class() == 2 {
                self.extensions = Extensions::default();
                return Ok(());
            }
            return Err(Broken(format!(
                "{} refused HELO: {}",
                self.peer,
                reply.diagnostic()
            )));
        }
        Err(Broken(format!(
            "{} refused EHLO: {}",
            self.peer,
            reply.diagnostic()
        )))
    }

    /// Sends one command line and reads its reply, both within the command timeout.
    pub async fn command(&mut self, line: &[u8]) -> Result<Reply, Broken> {
        debug_assert!(line.ends_with(b"\r\n"));
        self.write(line, self.command_timeout).await?;
        self.read_reply(self.command_timeout).await
    }

    /// Sends the message with dot-stuffing and the final dot, then reads the reply,
    /// each step within the DATA timeout.
    pub async fn send_data(&mut self, message: &[u8]) -> Result<Reply, Broken> {
        let stuffed = dot_stuffed(message);
        self.write(&stuffed, self.data_timeout).await?;
        self.read_reply(self.data_timeout).await
    }

    /// Says QUIT and waits briefly for the reply; the outcomes are known already, so
    /// a server that does not answer changes nothing.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(QUIT_TIMEOUT, async {
            if self.write(b"QUIT\r\n", QUIT_TIMEOUT).await.is_ok() {
                let _ = self.read_reply(QUIT_TIMEOUT).await;
            }
            let _ = self.io.shutdown().await;
        })
        .await;
    }

    async fn write(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), Broken> {
        let write = async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(Broken(format!("write to {}: {err}", self.peer))),
            Err(_) => Err(Broken(format!("write to {}: timed out", self.peer))),
        }
    }

    /// Reads one whole reply (all its lines) within `timeout`.
    async fn read_reply(&mut self, timeout: Duration) -> Result<Reply, Broken> {
        match tokio::time::timeout(timeout, self.read_reply_untimed()).await {
            Ok(result) => result,
            Err(_) => Err(Broken(format!(
                "{} did not answer within {}s",
                self.peer,
                timeout.as_secs()
            ))),
        }
    }

    async fn read_reply_untimed(&mut self) -> Result<Reply, Broken> {
        let mut reply: Option<Reply> = None;
        loop {
            let line = self.read_line().await?;
            let (code, last, text) = parse_reply_line(&line)
                .ok_or_else(|| Broken(format!("{} sent a malformed reply line", self.peer)))?;
            let reply_so_far = reply.get_or_insert_with(|| Reply {
                code,
                lines: Vec::new(),
            });
            if reply_so_far.code != code {
                return Err(Broken(format!(
                    "{} changed the reply code within a reply",
                    self.peer
                )));
            }
            if reply_so_far.lines.len() == REPLY_LINES_MAX {
                return Err(Broken(format!(
                    "{} sent more than {REPLY_LINES_MAX} reply lines",
                    self.peer
                )));
            }
            reply_so_far.lines.push(text);
            if last {
                return Ok(reply.expect("set above"));
            }
        }
    }

    /// One line without its line ending, refusing lines longer than
    /// [`REPLY_LINE_BYTES_MAX`] before buffering more of them.
    async fn read_line(&mut self) -> Result<Vec<u8>, Broken> {
        loop {
            if let Some(newline_idx) = self.unread.iter().position(|&b| b == b'\n') {
                if newline_idx + 1 > REPLY_LINE_BYTES_MAX {
                    break;
                }
                let mut line: Vec<u8> = self.unread.drain(..=newline_idx).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.unread.len() >= REPLY_LINE_BYTES_MAX {
                break;
            }
            let mut chunk = [0u8; REPLY_LINE_BYTES_MAX];
            let n_read = self
                .io
                .read(&mut chunk)
                .await
                .map_err(|err| Broken(format!("read from {}: {err}", self.peer)))?;
            if n_read == 0 {
                return Err(Broken(format!("{} closed the connection", self.peer)));
            }
            self.unread.extend_from_slice(&chunk[..n_read]);
        }
        Err(Broken(format!(
            "{} sent a reply line longer than {REPLY_LINE_BYTES_MAX} bytes",
            self.peer
        )))
    }
}

/// `(code, is_last_line, text)` of one reply line (RFC 5321 §4.2): three digits,
/// then `-` before more lines, or a space or nothing on the last.
fn parse_reply_line(line: &[u8]) -> Option<(u16, bool, String)> {
    if line.len() < 3
        || !line[..3].iter().all(u8::is_ascii_digit)
        || !(b'2'..=b'5').contains(&line[0])
    {
        return None;
    }
    let code = u16::from(line[0] - b'0') * 100
        + u16::from(line[1] - b'0') * 10
        + u16::from(line[2] - b'0');
    let (last, text) = match line.get(3) {
        None => (true, &[][..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return None,
    };
    Some((code, last, String::from_utf8_lossy(text).into_owned()))
}

/// The message as it goes after DATA (RFC 5321 §4.5.2): a dot doubled at the start
/// of every line, a CRLF added when the message does not end with one, then `.` CRLF.
///
/// The bytes are otherwise sent as they are. A "line" starts after every LF and after
/// a CR not followed by LF, not only after CRLF: a receiver that takes a bare LF or CR
/// as a line end must never see an unstuffed dot there, or a message could smuggle a
/// second one past us (the SMTP smuggling of CVE-2023-51764).
pub(crate) fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut stuffed = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    for (byte_idx, &byte) in message.iter().enumerate() {
        if at_line_start && byte == b'.' {
            stuffed.push(b'.');
        }
        stuffed.push(byte);
        at_line_start =
            byte == b'\n' || (byte == b'\r' && message.get(byte_idx + 1) != Some(&b'\n'));
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        stuffed.extend_from_slice(b"\r\n");
    }
    stuffed.extend_from_slice(b".\r\n");
    stuffed
}

/// The TLS configuration of opportunistic STARTTLS: any certificate is accepted, as
/// Postfix's `may` level, because an unverified TLS session still beats plain text
/// against a passive listener, and most receivers' certificates do not match their
/// MX names. Handshake signatures are still checked, with the ring provider.
fn tls_client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_terminates() {
        let cases: [(&[u8], &[u8]); 7] = [
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".a\r\n", b"..a\r\n.\r\n"),
            (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n..b\r\n", b"a\r\n...b\r\n.\r\n"),
            (b"no newline", b"no newline\r\n.\r\n"),
            (
                b"bare\n.\r\nMAIL FROM:<>\r\n",
                b"bare\n..\r\nMAIL FROM:<>\r\n.\r\n",
            ),
            (b"bare\r.\r\n", b"bare\r..\r\n.\r\n"),
        ];
        for (message, expected) in cases {
            assert_eq!(
                dot_stuffed(message),
                expected,
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
    }

    /// Undoes the stuffing as a strict receiver does (RFC 5321 §4.5.2): lines end in
    /// CRLF, a lone dot ends the data, a leading dot is dropped.
    fn unstuffed(wire: &[u8]) -> Option<Vec<u8>> {
        let mut data = Vec::new();
        let mut rest = wire;
        while let Some(end_idx) = rest.windows(2).position(|window| window == b"\r\n") {
            let line = &rest[..end_idx + 2];
            rest = &rest[end_idx + 2..];
            if line == b".\r\n" {
                return rest.is_empty().then_some(data);
            }
            data.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        None
    }

    proptest::proptest! {
        /// Goal: whatever the message, a strict receiver gets back exactly its lines,
        /// and no lenient one (bare CR or LF as line end) sees an early end of data.
        #[test]
        fn dot_stuffing_round_trips_and_never_ends_early(
            lines in proptest::collection::vec("[.a]{0,4}", 0..12),
            noise in proptest::collection::vec(proptest::sample::select(&b".\r\na"[..]), 0..64),
        ) {
            let message: Vec<u8> = lines.iter().flat_map(|line| format!("{line}\r\n").into_bytes()).collect();
            proptest::prop_assert_eq!(unstuffed(&dot_stuffed(&message)), Some(message));

            let wire = dot_stuffed(&noise);
            let body = &wire[..wire.len() - 3];
            for terminator in [&b"\n.\r"[..], b"\n.\n", b"\r.\r", b"\r.\n"] {
                let early = body.windows(terminator.len()).any(|window| window == terminator);
                proptest::prop_assert!(!early, "{:?} in {:?}", terminator, wire);
            }
            proptest::prop_assert!(!body.starts_with(b".\r") && !body.starts_with(b".\n"));
        }
    }

    #[test]
    fn reply_lines_parse_and_status_prefers_the_enhanced_code() {
        assert_eq!(
            parse_reply_line(b"250-SIZE 100"),
            Some((250, false, "SIZE 100".into()))
        );
        assert_eq!(parse_reply_line(b"250 ok"), Some((250, true, "ok".into())));
        assert_eq!(parse_reply_line(b"354"), Some((354, true, String::new())));
        for bad in [&b"25"[..], b"abc ok", b"250xok", b"650 ok", b"150 ok"] {
            assert_eq!(parse_reply_line(bad), None);
        }
        let reply = |code, text: &str| Reply {
            code,
            lines: vec![text.to_string()],
        };
        assert_eq!(reply(550, "5.1.1 <b@x>: unknown").status(), "5.1.1");
        assert_eq!(reply(550, "no such user").status(), "5.0.0");
        assert_eq!(reply(451, "4.3.0 try later").status(), "4.3.0");
        assert_eq!(reply(550, "4.3.0 class mismatch").status(), "5.0.0");
        assert_eq!(reply(550, "5.1.1 x").diagnostic(), "550 5.1.1 x");
    }

    /// A session over one end of an in-memory pipe; the test plays the server on the
    /// other end.
    fn piped_session() -> (Session, tokio::io::DuplexStream) {
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let session = Session {
            io: Box::new(client_end),
            unread: Vec::new(),
            extensions: Extensions::default(),
            tls: false,
            peer: "mx.test[127.0.0.1]".to_string(),
            command_timeout: Duration::from_secs(5),
            data_timeout: Duration::from_secs(5),
        };
        (session, server_end)
    }

    /// Goal: every way a reply can overrun its bounds ends the session with a reason
    /// instead of buffering without end or waiting for ever.
    /// Method: each case writes a hostile reply into a pipe; time is paused so the
    /// stalled case times out at once and deterministically.
    #[tokio::test(start_paused = true)]
    async fn hostile_replies_are_cut_off() {
        let too_long = format!("250 {}\r\n", "x".repeat(REPLY_LINE_BYTES_MAX));
        let too_many = "250-x\r\n".repeat(REPLY_LINES_MAX) + "250 x\r\n";
        let cases: [(&str, &[u8]); 5] = [
            ("longer than 512", too_long.as_bytes()),
            ("more than 64 reply lines", too_many.as_bytes()),
            ("changed the reply code", b"250-a\r\n251 b\r\n"),
            ("malformed", b"hello\r\n"),
            ("did not answer", b"250 half a line without its end"),
        ];
        for (expected, bytes) in cases {
            let (mut session, mut server_end) = piped_session();
            server_end.write_all(bytes).await.unwrap();
            let Broken(reason) = session
                .read_reply(Duration::from_secs(300))
                .await
                .unwrap_err();
            assert!(reason.contains(expected), "{expected}: {reason}");
        }

        let (mut session, mut server_end) = piped_session();
        let exact = format!("250-{}\r\n250 ok\n", "y".repeat(REPLY_LINE_BYTES_MAX - 6));
        server_end.write_all(exact.as_bytes()).await.unwrap();
        let reply = session.read_reply(Duration::from_secs(1)).await.unwrap();
        assert_eq!((reply.code, reply.lines.len()), (250, 2));
        drop(server_end);
        let Broken(reason) = session
            .read_reply(Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(reason.contains("closed the connection"), "{reason}");
    }

    #[test]
    fn ehlo_keywords_are_read_after_the_first_line() {
        let reply = Reply {
            code: 250,
            lines: [
                "mx.test hello",
                "PIPELINING",
                "SIZE 10240000",
                "starttls",
                "8BITMIME",
                "SMTPUTF8",
            ]
            .map(String::from)
            .to_vec(),
        };
        let extensions = Extensions::from_ehlo(&reply);
        assert_eq!(
            extensions,
            Extensions {
                starttls: true,
                size: Some(10_240_000),
                eight_bit_mime: true,
                smtp_utf8: true
            }
        );
        let bare = Reply {
            code: 250,
            lines: vec!["STARTTLS".into()],
        };
        assert_eq!(Extensions::from_ehlo(&bare), Extensions::default());
    }
}
