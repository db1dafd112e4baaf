//! The incremental command parser: bytes in, one [`Command`] (or one error) out per
//! line, or "need more".
//!
//! The parser owns the bytes of the line it is assembling and never holds more than
//! the line limit of its current mode. A line over the limit is not buffered: the
//! parser drops bytes up to the next LF and then reports [`ProtoError::LineTooLong`]
//! once, so the reply to it stays in order with the replies to the lines around it
//! and the session goes on (RFC 2449 §4).

use std::fmt;

use crate::ProtoError;
use crate::limits::{POP3_ARG_BYTES_MAX, POP3_COMMAND_LINE_BYTES_MAX, POP3_SASL_LINE_BYTES_MAX};

/// One client command, validated for syntax but not yet against the session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// RFC 1939 §7. The name may be a full address, so it is bounded by the line
    /// limit, not by [`POP3_ARG_BYTES_MAX`].
    User(String),
    /// RFC 1939 §7: "the server may treat spaces in the argument as part of the
    /// password", so the argument is the whole rest of the line.
    Pass(Secret),
    /// RFC 5034 §4. `initial_response` is the base64 text as sent (`=` for empty).
    Auth {
        mechanism: String,
        initial_response: Option<Secret>,
    },
    /// `AUTH` without a mechanism: the list of mechanisms (the RFC 1734 form that
    /// some clients still probe with).
    AuthList,
    /// RFC 5034 §4: a base64 line answering a `+` challenge.
    SaslResponse(Secret),
    /// RFC 5034 §4: a line of just `*` answering a challenge.
    SaslCancel,
    Capa,
    Stls,
    Stat,
    List(Option<u32>),
    Retr(u32),
    Dele(u32),
    Noop,
    Rset,
    Quit,
    /// RFC 1939 §7: TOP msg n; a line count too large for a `u64` means all lines.
    Top {
        msg: u32,
        n_lines: u64,
    },
    Uidl(Option<u32>),
}

/// Bytes that must never reach a log: a password or SASL payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What the next line is: a command, or the answer to a SASL challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Command,
    SaslResponse,
}

impl Expect {
    fn line_bytes_max(self) -> usize {
        match self {
            Expect::Command => POP3_COMMAND_LINE_BYTES_MAX,
            Expect::SaslResponse => POP3_SASL_LINE_BYTES_MAX,
        }
    }
}

/// Assembles lines from arbitrary chunks of input and parses each one.
#[derive(Debug)]
pub struct Parser {
    /// The current line so far, never longer than the current mode's limit.
    line: Vec<u8>,
    /// The current line went over the limit; bytes are dropped up to the next LF.
    discarding: bool,
    expect: Expect,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new()
    }
}

impl Parser {
    pub fn new() -> Parser {
        Parser {
            line: Vec::with_capacity(POP3_COMMAND_LINE_BYTES_MAX),
            discarding: false,
            expect: Expect::Command,
        }
    }

    /// Parses the next line as `expect`; the mode goes back to [`Expect::Command`]
    /// after that one line (or its error).
    pub fn expect(&mut self, expect: Expect) {
        assert!(
            self.line.is_empty() && !self.discarding,
            "mode changed in the middle of a line"
        );
        self.expect = expect;
    }

    /// Forgets any partial line, as after STLS: bytes sent before the TLS
    /// handshake must not be taken as commands after it (RFC 2595 §4, the
    /// "command injection" attack).
    pub fn reset(&mut self) {
        self.line.clear();
        self.discarding = false;
        self.expect = Expect::Command;
    }

    /// True when no partial line is buffered.
    pub fn is_idle(&self) -> bool {
        self.line.is_empty() && !self.discarding
    }

    /// Takes bytes from `input` up to the end of the first line in it. Returns how
    /// many bytes were consumed and, if a line ended, its command or error. `None`
    /// means every byte was consumed and more are needed.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Result<Command, ProtoError>>) {
        let line_bytes_max = self.expect.line_bytes_max();
        let Some(lf_idx) = input.iter().position(|&byte| byte == b'\n') else {
            // The LF still to come would make the line one byte longer.
            if !self.discarding && self.line.len() + input.len() < line_bytes_max {
                self.line.extend_from_slice(input);
            } else {
                self.line.clear();
                self.discarding = true;
            }
            return (input.len(), None);
        };
        let n_consumed = lf_idx + 1;
        let expect = std::mem::replace(&mut self.expect, Expect::Command);
        if self.discarding || self.line.len() + n_consumed > line_bytes_max {
            self.line.clear();
            self.discarding = false;
            return (n_consumed, Some(Err(ProtoError::LineTooLong)));
        }
        self.line.extend_from_slice(&input[..n_consumed]);
        debug_assert!(self.line.len() <= line_bytes_max);
        let text = strip_line_ending(&self.line);
        let parsed = match expect {
            Expect::Command => parse_command(text),
            Expect::SaslResponse => Ok(parse_sasl_response(text)),
        };
        self.line.clear();
        (n_consumed, Some(parsed))
    }
}

/// Drops the CRLF (or a bare LF, which lenient clients send) ending a line.
fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn parse_sasl_response(text: &[u8]) -> Command {
    if text == b"*" {
        Command::SaslCancel
    } else {
        Command::SaslResponse(Secret(text.to_vec()))
    }
}

/// RFC 1939 §3: a case-insensitive keyword, then arguments separated by spaces.
fn parse_command(text: &[u8]) -> Result<Command, ProtoError> {
    let (keyword, rest) = match text.iter().position(|&byte| byte == b' ') {
        Some(space_idx) => (&text[..space_idx], Some(&text[space_idx + 1..])),
        None => (text, None),
    };
    if keyword.len() > 4 {
        return Err(ProtoError::UnknownCommand);
    }
    let mut keyword_upper = [0u8; 4];
    keyword_upper[..keyword.len()].copy_from_slice(keyword);
    keyword_upper.make_ascii_uppercase();
    let keyword_upper = &keyword_upper[..keyword.len()];

    // USER and PASS take the rest of the line; every other argument is a bounded token.
    match keyword_upper {
        b"USER" => {
            let name = rest
                .filter(|name| !name.is_empty())
                .ok_or(ProtoError::WrongArguments)?;
            let name = std::str::from_utf8(name).map_err(|_| ProtoError::WrongArguments)?;
            if name.contains(' ') {
                return Err(ProtoError::WrongArguments);
            }
            return Ok(Command::User(name.to_owned()));
        }
        b"PASS" => {
            let password = rest.filter(|password| !password.is_empty());
            return Ok(Command::Pass(Secret(
                password.ok_or(ProtoError::WrongArguments)?.to_vec(),
            )));
        }
        _ => {}
    }

    let mut args = rest
        .unwrap_or_default()
        .split(|&byte| byte == b' ')
        .filter(|arg| !arg.is_empty());
    let mut arg_texts: [&[u8]; 2] = [&[], &[]];
    let mut n_args = 0;
    for arg in args.by_ref().take(arg_texts.len()) {
        arg_texts[n_args] = arg;
        n_args += 1;
    }
    if args.next().is_some() {
        return Err(ProtoError::WrongArguments);
    }
    let args = &arg_texts[..n_args];
    // RFC 5034 §4 lets the AUTH initial response exceed RFC 1939's 40 octets; it is
    // still bounded by the 255-octet line.
    let is_auth = keyword_upper == b"AUTH";
    for (arg_idx, arg) in args.iter().enumerate() {
        if arg.len() > POP3_ARG_BYTES_MAX && !(is_auth && arg_idx == 1) {
            return Err(ProtoError::ArgumentTooLong);
        }
    }

    let command = match (keyword_upper, args) {
        (b"AUTH", []) => Command::AuthList,
        (b"AUTH", [mechanism]) => Command::Auth {
            mechanism: ascii_upper(mechanism)?,
            initial_response: None,
        },
        (b"AUTH", [mechanism, initial]) => Command::Auth {
            mechanism: ascii_upper(mechanism)?,
            initial_response: Some(Secret(initial.to_vec())),
        },
        (b"CAPA", []) => Command::Capa,
        (b"STLS", []) => Command::Stls,
        (b"STAT", []) => Command::Stat,
        (b"LIST", []) => Command::List(None),
        (b"LIST", [msg]) => Command::List(Some(parse_msg(msg)?)),
        (b"RETR", [msg]) => Command::Retr(parse_msg(msg)?),
        (b"DELE", [msg]) => Command::Dele(parse_msg(msg)?),
        (b"NOOP", []) => Command::Noop,
        (b"RSET", []) => Command::Rset,
        (b"QUIT", []) => Command::Quit,
        (b"TOP", [msg, n_lines]) => Command::Top {
            msg: parse_msg(msg)?,
            n_lines: parse_line_count(n_lines)?,
        },
        (b"UIDL", []) => Command::Uidl(None),
        (b"UIDL", [msg]) => Command::Uidl(Some(parse_msg(msg)?)),
        (
            b"AUTH" | b"CAPA" | b"STLS" | b"STAT" | b"LIST" | b"RETR" | b"DELE" | b"NOOP" | b"RSET"
            | b"QUIT" | b"TOP" | b"UIDL",
            _,
        ) => return Err(ProtoError::WrongArguments),
        _ => return Err(ProtoError::UnknownCommand),
    };
    Ok(command)
}

fn ascii_upper(token: &[u8]) -> Result<String, ProtoError> {
    if !token.iter().all(|byte| byte.is_ascii_graphic()) {
        return Err(ProtoError::WrongArguments);
    }
    Ok(String::from_utf8(token.to_ascii_uppercase()).expect("ascii is utf-8"))
}

/// A message number: decimal digits only (no sign), at least 1 (RFC 1939 §3).
fn parse_msg(token: &[u8]) -> Result<u32, ProtoError> {
    match parse_decimal(token)? {
        Some(msg) if (1..=u64::from(u32::MAX)).contains(&msg) => Ok(msg as u32),
        _ => Err(ProtoError::InvalidNumber),
    }
}

/// TOP's line count: a non-negative number; larger than `u64` means "all lines".
fn parse_line_count(token: &[u8]) -> Result<u64, ProtoError> {
    Ok(parse_decimal(token)?.unwrap_or(u64::MAX))
}

/// `Ok(None)` when the digits overflow a `u64`.
fn parse_decimal(token: &[u8]) -> Result<Option<u64>, ProtoError> {
    if token.is_empty() || !token.iter().all(u8::is_ascii_digit) {
        return Err(ProtoError::InvalidNumber);
    }
    let mut value: u64 = 0;
    for digit in token {
        let Some(next) = value
            .checked_mul(10)
            .and_then(|value| value.checked_add(u64::from(digit - b'0')))
        else {
            return Ok(None);
        };
        value = next;
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in two pieces split at `split_idx` and collects every result.
    fn parse_all_split(
        input: &[u8],
        split_idx: usize,
        expect: Expect,
    ) -> Vec<Result<Command, ProtoError>> {
        let mut parser = Parser::new();
        parser.expect(expect);
        let mut results = Vec::new();
        for mut chunk in [&input[..split_idx], &input[split_idx..]] {
            while !chunk.is_empty() {
                let (n_consumed, parsed) = parser.feed(chunk);
                assert!(n_consumed > 0 && n_consumed <= chunk.len());
                chunk = &chunk[n_consumed..];
                results.extend(parsed);
            }
        }
        results
    }

    /// Parses `input` whole and split at every byte offset; all must agree.
    fn parse_everywhere(input: &[u8], expect: Expect) -> Vec<Result<Command, ProtoError>> {
        let whole = parse_all_split(input, input.len(), expect);
        for split_idx in 0..input.len() {
            assert_eq!(
                parse_all_split(input, split_idx, expect),
                whole,
                "input {input:?} split at {split_idx}"
            );
        }
        whole
    }

    fn secret(text: &str) -> Secret {
        Secret(text.as_bytes().to_vec())
    }

    #[test]
    fn commands_parse() {
        let table: Vec<(&str, Result<Command, ProtoError>)> = vec![
            (
                "USER alice@example.org\r\n",
                Ok(Command::User("alice@example.org".into())),
            ),
            ("user Alice\n", Ok(Command::User("Alice".into()))),
            ("USER\r\n", Err(ProtoError::WrongArguments)),
            ("USER a b\r\n", Err(ProtoError::WrongArguments)),
            (
                "PASS secret with spaces \r\n",
                Ok(Command::Pass(secret("secret with spaces "))),
            ),
            ("PASS\r\n", Err(ProtoError::WrongArguments)),
            ("AUTH\r\n", Ok(Command::AuthList)),
            (
                "AUTH plain\r\n",
                Ok(Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: None,
                }),
            ),
            (
                "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
                Ok(Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: Some(secret("AGFsaWNlAHNlY3JldA==")),
                }),
            ),
            ("AUTH PLAIN a b\r\n", Err(ProtoError::WrongArguments)),
            ("CAPA\r\n", Ok(Command::Capa)),
            ("capa x\r\n", Err(ProtoError::WrongArguments)),
            ("STLS\r\n", Ok(Command::Stls)),
            ("STAT\r\n", Ok(Command::Stat)),
            ("LIST\r\n", Ok(Command::List(None))),
            ("LIST 7\r\n", Ok(Command::List(Some(7)))),
            ("LIST 0\r\n", Err(ProtoError::InvalidNumber)),
            ("LIST -1\r\n", Err(ProtoError::InvalidNumber)),
            ("LIST +1\r\n", Err(ProtoError::InvalidNumber)),
            ("LIST 4294967296\r\n", Err(ProtoError::InvalidNumber)),
            ("LIST 1 2\r\n", Err(ProtoError::WrongArguments)),
            ("RETR 1\r\n", Ok(Command::Retr(1))),
            ("RETR\r\n", Err(ProtoError::WrongArguments)),
            ("DELE 12\r\n", Ok(Command::Dele(12))),
            ("NOOP\r\n", Ok(Command::Noop)),
            ("RSET\r\n", Ok(Command::Rset)),
            ("QUIT\r\n", Ok(Command::Quit)),
            ("quit\n", Ok(Command::Quit)),
            ("TOP 1 0\r\n", Ok(Command::Top { msg: 1, n_lines: 0 })),
            (
                "TOP 2 99999999999999999999999\r\n",
                Ok(Command::Top {
                    msg: 2,
                    n_lines: u64::MAX,
                }),
            ),
            ("TOP 1\r\n", Err(ProtoError::WrongArguments)),
            ("TOP 1 x\r\n", Err(ProtoError::InvalidNumber)),
            ("UIDL\r\n", Ok(Command::Uidl(None))),
            ("UIDL 3\r\n", Ok(Command::Uidl(Some(3)))),
            ("APOP alice 0123\r\n", Err(ProtoError::UnknownCommand)),
            ("\r\n", Err(ProtoError::UnknownCommand)),
            ("XYZZY\r\n", Err(ProtoError::UnknownCommand)),
            ("\u{e9}t\u{e9}\r\n", Err(ProtoError::UnknownCommand)),
            ("LIST 1 2 3 4 5\r\n", Err(ProtoError::WrongArguments)),
        ];
        for (input, expected) in table {
            assert_eq!(
                parse_everywhere(input.as_bytes(), Expect::Command),
                vec![expected],
                "{input:?}"
            );
        }
    }

    #[test]
    fn arguments_are_bounded() {
        let forty = format!("{}1", "0".repeat(POP3_ARG_BYTES_MAX - 1));
        let table: Vec<(String, Result<Command, ProtoError>)> = vec![
            (format!("LIST {forty}\r\n"), Ok(Command::List(Some(1)))),
            (
                format!("LIST 0{forty}\r\n"),
                Err(ProtoError::ArgumentTooLong),
            ),
            (
                format!("AUTH {}\r\n", "P".repeat(POP3_ARG_BYTES_MAX + 1)),
                Err(ProtoError::ArgumentTooLong),
            ),
        ];
        for (input, expected) in table {
            assert_eq!(
                parse_everywhere(input.as_bytes(), Expect::Command),
                vec![expected],
                "{input:?}"
            );
        }
        let initial = "A".repeat(200);
        let auth = format!("AUTH PLAIN {initial}\r\n");
        assert_eq!(
            parse_everywhere(auth.as_bytes(), Expect::Command),
            vec![Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some(secret(&initial))
            })]
        );
    }

    #[test]
    fn line_limit_is_255_octets_with_crlf_and_the_session_resyncs() {
        let max_line = format!("USER {}\r\n", "a".repeat(POP3_COMMAND_LINE_BYTES_MAX - 7));
        assert_eq!(max_line.len(), POP3_COMMAND_LINE_BYTES_MAX);
        let max_name = "a".repeat(POP3_COMMAND_LINE_BYTES_MAX - 7);
        assert_eq!(
            parse_everywhere(max_line.as_bytes(), Expect::Command),
            vec![Ok(Command::User(max_name))]
        );

        let long_line = format!(
            "USER {}\r\nNOOP\r\n",
            "a".repeat(POP3_COMMAND_LINE_BYTES_MAX - 6)
        );
        assert_eq!(
            parse_everywhere(long_line.as_bytes(), Expect::Command),
            vec![Err(ProtoError::LineTooLong), Ok(Command::Noop)]
        );
        // Split at every offset, so kept short; `never_buffers_more_than_the_limit` feeds 1 MB.
        let huge = format!("{}\nSTAT\r\n", "x".repeat(4 * POP3_COMMAND_LINE_BYTES_MAX));
        assert_eq!(
            parse_everywhere(huge.as_bytes(), Expect::Command),
            vec![Err(ProtoError::LineTooLong), Ok(Command::Stat)]
        );
    }

    #[test]
    fn never_buffers_more_than_the_limit() {
        let mut parser = Parser::new();
        for _ in 0..1000 {
            let (n_consumed, parsed) = parser.feed(&[b'x'; 1000]);
            assert_eq!((n_consumed, parsed), (1000, None));
            assert!(parser.line.capacity() <= POP3_COMMAND_LINE_BYTES_MAX);
        }
        assert_eq!(
            parser.feed(b"\r\nNOOP\r\n"),
            (2, Some(Err(ProtoError::LineTooLong)))
        );
        assert_eq!(parser.feed(b"NOOP\r\n"), (6, Some(Ok(Command::Noop))));
    }

    #[test]
    fn pipelined_commands_come_out_one_at_a_time() {
        let input = b"STAT\r\nLIST\r\nRETR 1\r\nQUIT\r\n";
        assert_eq!(
            parse_everywhere(input, Expect::Command),
            vec![
                Ok(Command::Stat),
                Ok(Command::List(None)),
                Ok(Command::Retr(1)),
                Ok(Command::Quit)
            ]
        );
    }

    #[test]
    fn sasl_responses() {
        let table: Vec<(String, Result<Command, ProtoError>)> = vec![
            ("*\r\n".into(), Ok(Command::SaslCancel)),
            (
                "AGEAYg==\r\n".into(),
                Ok(Command::SaslResponse(secret("AGEAYg=="))),
            ),
            ("=\r\n".into(), Ok(Command::SaslResponse(secret("=")))),
            (
                format!("{}\r\n", "A".repeat(2000)),
                Ok(Command::SaslResponse(secret(&"A".repeat(2000)))),
            ),
            (
                format!("{}\r\n", "A".repeat(POP3_SASL_LINE_BYTES_MAX)),
                Err(ProtoError::LineTooLong),
            ),
        ];
        for (input, expected) in table {
            assert_eq!(
                parse_everywhere(input.as_bytes(), Expect::SaslResponse),
                vec![expected],
                "{input:?}"
            );
        }
        // The mode lasts one line only.
        assert_eq!(
            parse_everywhere(b"*\r\n*\r\n", Expect::SaslResponse),
            vec![Ok(Command::SaslCancel), Err(ProtoError::UnknownCommand)]
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let command = Command::Pass(secret("hunter2"));
        assert!(!format!("{command:?}").contains("hunter2"));
    }
}
