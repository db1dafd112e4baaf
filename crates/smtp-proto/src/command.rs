//! Command lines: framing with a hard length limit, then the RFC 5321 grammar.
//!
//! [`LineReader`] cuts lines out of arbitrary chunks of input and never holds more
//! than the limit of one line: a longer line is dropped byte by byte up to its LF,
//! and reported once it has ended, so that the next line parses again (the resync).
//! [`CommandReader`] hands each complete line to the `smtp-proto` grammar and turns
//! the result into a [`Command`], refusing parameters of extensions we do not offer.

use cm_types::Address;
use smtp_proto::Request;

use crate::SmtpError;
use crate::limits::{SMTP_AUTH_LINE_BYTES_MAX, SmtpLimits};

/// A command, checked for syntax but not yet against the session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail(MailFrom),
    Rcpt(RcptTo),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth(AuthStart),
}

/// `MAIL FROM:<reverse-path> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom {
    /// As the client spelled it (case kept, RFC 5321 §2.4); empty for the null
    /// reverse-path `<>` of bounces. A non-empty one is a valid [`Address`].
    pub reverse_path: String,
    /// RFC 1870: the size the client declares. Only compared, never used to allocate.
    pub size_declared: Option<usize>,
    /// RFC 6152: `BODY=8BITMIME`.
    pub body_8bit: bool,
    /// RFC 6531: the envelope or headers may hold UTF-8.
    pub smtputf8: bool,
}

/// `RCPT TO:<forward-path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    pub forward_path: Address,
}

/// `AUTH mechanism [initial-response]` (RFC 4954 §4).
#[derive(Clone, PartialEq, Eq)]
pub struct AuthStart {
    pub mechanism: Mechanism,
    /// Base64 as sent; `=` stands for an empty response.
    pub initial_response: Option<String>,
}

impl std::fmt::Debug for AuthStart {
    /// Credentials never reach a log, not even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthStart")
            .field("mechanism", &self.mechanism)
            .field(
                "initial_response",
                &self.initial_response.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    /// A mechanism we do not offer (RFC 4954 §4: 504).
    Other,
}

/// Cuts complete lines out of a byte stream, holding at most one line's limit.
#[derive(Debug, Default)]
pub struct LineReader {
    partial: Vec<u8>,
    /// Inside a line that is already over the limit: drop up to the next LF.
    discarding: bool,
}

impl LineReader {
    /// Takes bytes from the front of `input` until a line (ending in LF, CR optional)
    /// is complete. `None`: `input` is used up and the line is not. A line of more
    /// than `max_for_line(prefix)` bytes, line end included, is dropped and reported
    /// as [`SmtpError::LineTooLong`] when its LF arrives. `max_for_line` sees the first
    /// bytes of the line, so a command can have a longer limit than the others.
    pub fn next_line(
        &mut self,
        input: &mut &[u8],
        max_for_line: impl Fn(&[u8]) -> usize,
    ) -> Option<Result<Vec<u8>, SmtpError>> {
        while !input.is_empty() {
            let newline_idx = input.iter().position(|&byte| byte == b'\n');
            let n_taken = newline_idx.map_or(input.len(), |idx| idx + 1);
            let (segment, rest) = input.split_at(n_taken);
            *input = rest;
            if !self.discarding {
                let line_bytes = self.partial.len() + segment.len();
                let mut prefix = [0u8; 8];
                let n_prefix = prefix.len().min(line_bytes);
                for (idx, byte) in self
                    .partial
                    .iter()
                    .chain(segment)
                    .take(n_prefix)
                    .enumerate()
                {
                    prefix[idx] = *byte;
                }
                if line_bytes > max_for_line(&prefix[..n_prefix]) {
                    self.discarding = true;
                    self.partial = Vec::new();
                } else {
                    self.partial.extend_from_slice(segment);
                }
            }
            if newline_idx.is_some() {
                if self.discarding {
                    self.discarding = false;
                    return Some(Err(SmtpError::LineTooLong));
                }
                return Some(Ok(std::mem::take(&mut self.partial)));
            }
        }
        None
    }

    /// Bytes of an unfinished line are held (or being dropped).
    pub fn has_partial_line(&self) -> bool {
        self.discarding || !self.partial.is_empty()
    }
}

/// Parses commands out of a byte stream: [`LineReader`] plus the grammar.
#[derive(Debug)]
pub struct CommandReader {
    lines: LineReader,
    command_line_bytes_max: usize,
}

impl CommandReader {
    pub fn new(limits: &SmtpLimits) -> CommandReader {
        CommandReader {
            lines: LineReader::default(),
            command_line_bytes_max: limits.command_line_bytes_max,
        }
    }

    /// The next command from `input`; `None` when more bytes are needed.
    pub fn next_command(&mut self, input: &mut &[u8]) -> Option<Result<Command, SmtpError>> {
        let command_max = self.command_line_bytes_max;
        let line = self.lines.next_line(input, |prefix| {
            // RFC 4954 §4: AUTH lines carry base64 credentials and may be longer.
            if prefix.len() >= 5 && prefix[..5].eq_ignore_ascii_case(b"AUTH ") {
                SMTP_AUTH_LINE_BYTES_MAX
            } else {
                command_max
            }
        })?;
        Some(line.and_then(|line| parse_command(&line)))
    }

    /// The next raw line, for a SASL response (RFC 4954 §4), CRLF stripped.
    pub fn next_sasl_line(&mut self, input: &mut &[u8]) -> Option<Result<Vec<u8>, SmtpError>> {
        let line = self.lines.next_line(input, |_| SMTP_AUTH_LINE_BYTES_MAX)?;
        Some(line.map(|mut line| {
            line.truncate(line.len() - trailing_line_end(&line));
            line
        }))
    }

    pub fn has_partial_line(&self) -> bool {
        self.lines.has_partial_line()
    }

    /// Forgets any buffered partial line. RFC 3207 §4.2: nothing sent before the
    /// TLS handshake may be acted on after it.
    pub fn reset(&mut self) {
        self.lines = LineReader::default();
    }
}

fn trailing_line_end(line: &[u8]) -> usize {
    match line {
        [.., b'\r', b'\n'] => 2,
        [.., b'\n'] => 1,
        _ => 0,
    }
}

/// Parses one complete line, line end included.
pub fn parse_command(line: &[u8]) -> Result<Command, SmtpError> {
    debug_assert!(line.ends_with(b"\n"));
    if std::str::from_utf8(line).is_err() {
        return Err(SmtpError::NotUtf8);
    }
    let request = Request::parse(&mut line.iter()).map_err(grammar_error)?;
    let command = match request {
        Request::Ehlo { host } => Command::Ehlo(host.into_owned()),
        Request::Helo { host } => Command::Helo(host.into_owned()),
        Request::Mail { from } => Command::Mail(mail_from(from)?),
        Request::Rcpt { to } => {
            let no_dsn = to.orcpt.is_none() && to.rrvs == 0 && to.flags == 0;
            if !no_dsn {
                return Err(SmtpError::UnsupportedParameter);
            }
            let forward_path = Address::parse(&to.address).map_err(|_| SmtpError::BadAddress)?;
            Command::Rcpt(RcptTo { forward_path })
        }
        Request::Data => Command::Data,
        Request::Rset => Command::Rset,
        Request::Noop { .. } => Command::Noop,
        Request::Quit => Command::Quit,
        Request::Vrfy { .. } => Command::Vrfy,
        Request::Help { .. } => Command::Help,
        Request::StartTls => Command::StartTls,
        Request::Auth {
            mechanism,
            initial_response,
        } => {
            let mechanism = match mechanism {
                smtp_proto::AUTH_PLAIN => Mechanism::Plain,
                smtp_proto::AUTH_LOGIN => Mechanism::Login,
                _ => Mechanism::Other,
            };
            let initial_response =
                Some(initial_response.into_owned()).filter(|text| !text.is_empty());
            Command::Auth(AuthStart {
                mechanism,
                initial_response,
            })
        }
        Request::Lhlo { .. } => return Err(SmtpError::UnknownCommand),
        Request::Expn { .. }
        | Request::Bdat { .. }
        | Request::Etrn { .. }
        | Request::Atrn { .. }
        | Request::Burl { .. } => return Err(SmtpError::NotImplemented),
    };
    Ok(command)
}

fn mail_from(from: smtp_proto::MailFrom<std::borrow::Cow<'_, str>>) -> Result<MailFrom, SmtpError> {
    use smtp_proto::{MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8};
    let offered_flags = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8;
    // RFC 4954 §5 lets a server ignore `AUTH=`, so it is the one foreign parameter
    // accepted; DSN, DELIVERBY, FUTURERELEASE and the like were not advertised.
    let only_offered = from.flags & !offered_flags == 0
        && from.trans_id.is_none()
        && from.by == 0
        && from.env_id.is_none()
        && from.solicit.is_none()
        && from.mtrk.is_none()
        && from.hold_for == 0
        && from.hold_until == 0
        && from.mt_priority == 0;
    if !only_offered {
        return Err(SmtpError::UnsupportedParameter);
    }
    let reverse_path = from.address.into_owned();
    if !reverse_path.is_empty() {
        Address::parse(&reverse_path).map_err(|_| SmtpError::BadAddress)?;
    }
    Ok(MailFrom {
        reverse_path,
        size_declared: Some(from.size).filter(|&size| size > 0),
        body_8bit: from.flags & MAIL_BODY_8BITMIME != 0,
        smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
    })
}

fn grammar_error(error: smtp_proto::Error) -> SmtpError {
    match error {
        smtp_proto::Error::UnknownCommand => SmtpError::UnknownCommand,
        smtp_proto::Error::InvalidSenderAddress | smtp_proto::Error::InvalidRecipientAddress => {
            SmtpError::BadAddress
        }
        smtp_proto::Error::SyntaxError { syntax } => SmtpError::Syntax(syntax),
        smtp_proto::Error::InvalidParameter { .. } => SmtpError::Syntax("a valid parameter value"),
        smtp_proto::Error::UnsupportedParameter { .. } => SmtpError::UnsupportedParameter,
        _ => SmtpError::Syntax("a command"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> Address {
        Address::parse(text).unwrap()
    }

    type Outcomes = Vec<Result<Command, SmtpError>>;

    /// Feeds `input` in two pieces split at `split_idx` and collects every outcome.
    fn commands_split_at(input: &[u8], split_idx: usize) -> Outcomes {
        let mut reader = CommandReader::new(&SmtpLimits::default());
        let mut outcomes = Vec::new();
        for mut piece in [&input[..split_idx], &input[split_idx..]] {
            while let Some(outcome) = reader.next_command(&mut piece) {
                outcomes.push(outcome);
            }
            assert!(piece.is_empty());
        }
        outcomes
    }

    /// Goal: every input parses to the same outcomes whichever byte boundary the
    /// network happened to cut it at. Method: a table, each row fed split at every offset.
    #[test]
    fn parses_commands_split_at_every_offset() {
        let long_line = format!("NOOP {}\r\nNOOP\r\n", "x".repeat(600));
        let long_auth = format!("AUTH PLAIN {}\r\n", "A".repeat(1000));
        let mail_plain = MailFrom {
            reverse_path: "Alice@Example.org".into(),
            size_declared: None,
            body_8bit: false,
            smtputf8: false,
        };
        let table: Vec<(&[u8], Outcomes)> = vec![
            (
                b"EHLO client.example\r\n",
                vec![Ok(Command::Ehlo("client.example".into()))],
            ),
            (b"helo x\n", vec![Ok(Command::Helo("x".into()))]),
            (
                b"MAIL FROM:<Alice@Example.org>\r\n",
                vec![Ok(Command::Mail(mail_plain))],
            ),
            (
                b"MAIL FROM:<> SIZE=1000 BODY=8BITMIME SMTPUTF8\r\n",
                vec![Ok(Command::Mail(MailFrom {
                    reverse_path: String::new(),
                    size_declared: Some(1000),
                    body_8bit: true,
                    smtputf8: true,
                }))],
            ),
            (
                "RCPT TO:<jürgen@example.org>\r\n".as_bytes(),
                vec![Ok(Command::Rcpt(RcptTo {
                    forward_path: address("jürgen@example.org"),
                }))],
            ),
            (
                b"DATA\r\nRSET\r\nNOOP\r\nQUIT\r\n",
                vec![
                    Ok(Command::Data),
                    Ok(Command::Rset),
                    Ok(Command::Noop),
                    Ok(Command::Quit),
                ],
            ),
            (
                b"VRFY bob\r\nHELP\r\nSTARTTLS\r\n",
                vec![Ok(Command::Vrfy), Ok(Command::Help), Ok(Command::StartTls)],
            ),
            (
                b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n",
                vec![Ok(Command::Auth(AuthStart {
                    mechanism: Mechanism::Plain,
                    initial_response: Some("AGJvYgBzZWNyZXQ=".into()),
                }))],
            ),
            (
                b"AUTH LOGIN\r\n",
                vec![Ok(Command::Auth(AuthStart {
                    mechanism: Mechanism::Login,
                    initial_response: None,
                }))],
            ),
            (
                b"AUTH CRAM-MD5\r\n",
                vec![Ok(Command::Auth(AuthStart {
                    mechanism: Mechanism::Other,
                    initial_response: None,
                }))],
            ),
            (
                long_auth.as_bytes(),
                vec![Ok(Command::Auth(AuthStart {
                    mechanism: Mechanism::Plain,
                    initial_response: Some("A".repeat(1000)),
                }))],
            ),
            (
                b"FOO bar\r\nNOOP\r\n",
                vec![Err(SmtpError::UnknownCommand), Ok(Command::Noop)],
            ),
            (b"EXPN list\r\n", vec![Err(SmtpError::NotImplemented)]),
            (
                b"MAIL FROM:<a@example.org> RET=FULL\r\n",
                vec![Err(SmtpError::UnsupportedParameter)],
            ),
            (
                b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n",
                vec![Err(SmtpError::UnsupportedParameter)],
            ),
            (
                b"RCPT TO:<a@example.org> NOTIFY=NEVER\r\n",
                vec![Err(SmtpError::UnsupportedParameter)],
            ),
            (
                b"RCPT TO:<no-at-sign>\r\n",
                vec![Err(SmtpError::BadAddress)],
            ),
            (b"MAIL FROM:<a@@b>\r\n", vec![Err(SmtpError::BadAddress)]),
            (
                b"\xff\xfe\r\nNOOP\r\n",
                vec![Err(SmtpError::NotUtf8), Ok(Command::Noop)],
            ),
            // The resync: an over-long line is one error, and the next line parses.
            (
                long_line.as_bytes(),
                vec![Err(SmtpError::LineTooLong), Ok(Command::Noop)],
            ),
        ];
        for (input, expected) in table {
            for split_idx in 0..=input.len() {
                let outcomes = commands_split_at(input, split_idx);
                let shown = String::from_utf8_lossy(input);
                assert_eq!(
                    outcomes.len(),
                    expected.len(),
                    "{shown:?} split at {split_idx}: {outcomes:?}"
                );
                for (outcome, expected) in outcomes.iter().zip(&expected) {
                    match (outcome, expected) {
                        (Err(SmtpError::Syntax(_)), Err(SmtpError::Syntax(_))) => {}
                        _ => assert_eq!(outcome, expected, "{shown:?} split at {split_idx}"),
                    }
                }
            }
        }
    }

    #[test]
    fn line_limit_counts_the_line_end() {
        let limits = SmtpLimits::default();
        let exactly = format!("NOOP {}\r\n", "x".repeat(limits.command_line_bytes_max - 7));
        assert_eq!(exactly.len(), limits.command_line_bytes_max);
        let one_over = format!("NOOP {}\r\n", "x".repeat(limits.command_line_bytes_max - 6));
        let mut reader = CommandReader::new(&limits);
        assert_eq!(
            reader.next_command(&mut exactly.as_bytes()),
            Some(Ok(Command::Noop))
        );
        assert_eq!(
            reader.next_command(&mut one_over.as_bytes()),
            Some(Err(SmtpError::LineTooLong))
        );
    }

    #[test]
    fn an_endless_line_holds_no_more_than_the_limit() {
        let mut reader = CommandReader::new(&SmtpLimits::default());
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..16 {
            assert_eq!(reader.next_command(&mut chunk.as_slice()), None);
            assert!(
                reader.lines.partial.capacity() <= SmtpLimits::default().command_line_bytes_max
            );
        }
        assert_eq!(
            reader.next_command(&mut &b"\r\nQUIT\r\n"[..]),
            Some(Err(SmtpError::LineTooLong))
        );
    }

    #[test]
    fn sasl_lines_lose_their_line_end() {
        let mut reader = CommandReader::new(&SmtpLimits::default());
        let mut input: &[u8] = b"dXNlcg==\r\n*\n";
        assert_eq!(
            reader.next_sasl_line(&mut input),
            Some(Ok(b"dXNlcg==".to_vec()))
        );
        assert_eq!(reader.next_sasl_line(&mut input), Some(Ok(b"*".to_vec())));
        assert_eq!(reader.next_sasl_line(&mut input), None);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Random bytes, in random chunks, never panic and never make the reader
            /// hold more than one line's limit.
            #[test]
            fn random_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..2048), split_idx in 0usize..2048) {
                let split_idx = split_idx.min(input.len());
                let _ = commands_split_at(&input, split_idx);
            }

            /// Every prefix of a valid pipeline parses to a prefix of its commands.
            #[test]
            fn truncated_commands_never_panic(cut_idx in 0usize..200) {
                let pipeline = b"EHLO x\r\nMAIL FROM:<a@example.org> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<b@example.org>\r\nAUTH PLAIN AGEAYg==\r\nDATA\r\n";
                let cut_idx = cut_idx.min(pipeline.len());
                let outcomes = commands_split_at(&pipeline[..cut_idx], cut_idx / 2);
                prop_assert!(outcomes.iter().all(Result::is_ok));
            }

            #[test]
            fn command_like_lines_never_panic(verb in "(MAIL FROM:|RCPT TO:|EHLO |AUTH |HELO |VRFY )", rest in "[ -~<>@=\\x80-\\xff]{0,80}") {
                let line = format!("{verb}{rest}\r\n");
                let _ = parse_command(line.as_bytes());
            }
        }
    }
}
