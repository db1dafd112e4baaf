//! Reply encoding: status lines with RFC 2449 response codes, multi-line replies
//! with byte-stuffing (RFC 1939 §3), and the part of a message that TOP returns.
//!
//! Every [`ProtoError`] maps to its reply in [`Response::from_error`], and nowhere else.

use std::fmt;

use crate::ProtoError;

/// RFC 2449 §8 response codes, and RFC 3206's SYS/TEMP, SYS/PERM and AUTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseCode {
    /// RFC 2449 §8.1.1: the maildrop is locked by another session.
    InUse,
    /// RFC 3206 §5: the credentials are wrong (as opposed to a system problem).
    Auth,
    /// RFC 3206 §4: a transient system failure; trying later may work.
    SysTemp,
    /// RFC 3206 §4: a permanent system failure.
    SysPerm,
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResponseCode::InUse => "[IN-USE]",
            ResponseCode::Auth => "[AUTH]",
            ResponseCode::SysTemp => "[SYS/TEMP]",
            ResponseCode::SysPerm => "[SYS/PERM]",
        })
    }
}

/// One reply, before encoding. Message bodies are not replies: they are streamed
/// with [`Stuffed`] after an [`Response::Ok`] status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Ok(String),
    Err {
        code: Option<ResponseCode>,
        text: String,
    },
    /// RFC 5034 §4: a server challenge, `+ ` and base64 (empty for PLAIN).
    Challenge,
    /// A `+OK` status line and then lines of text, each byte-stuffed on encoding.
    MultiLine {
        status: String,
        lines: Vec<String>,
    },
}

impl Response {
    pub fn ok(text: impl Into<String>) -> Response {
        Response::Ok(text.into())
    }

    pub fn err(code: Option<ResponseCode>, text: impl Into<String>) -> Response {
        Response::Err {
            code,
            text: text.into(),
        }
    }

    pub fn is_ok(&self) -> bool {
        !matches!(self, Response::Err { .. })
    }

    /// The one place where errors become wire replies.
    pub fn from_error(error: &ProtoError) -> Response {
        let code = match error {
            ProtoError::BadCredentials
            | ProtoError::MalformedSasl
            | ProtoError::SaslCancelled
            | ProtoError::PassWithoutUser => Some(ResponseCode::Auth),
            ProtoError::MaildropInUse => Some(ResponseCode::InUse),
            ProtoError::Unavailable | ProtoError::TooManyConnections | ProtoError::ShuttingDown => {
                Some(ResponseCode::SysTemp)
            }
            ProtoError::PlaintextRefused | ProtoError::TlsUnavailable => {
                Some(ResponseCode::SysPerm)
            }
            ProtoError::LineTooLong
            | ProtoError::ArgumentTooLong
            | ProtoError::UnknownCommand
            | ProtoError::WrongArguments
            | ProtoError::InvalidNumber
            | ProtoError::WrongState
            | ProtoError::NoSuchMessage
            | ProtoError::AlreadyDeleted
            | ProtoError::UnsupportedMechanism
            | ProtoError::TooManyErrors => None,
        };
        Response::err(code, error.to_string())
    }

    /// Appends the reply's octets to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Response::Ok(text) => push_status(out, "+OK", None, text),
            Response::Err { code, text } => push_status(out, "-ERR", *code, text),
            Response::Challenge => out.extend_from_slice(b"+ \r\n"),
            Response::MultiLine { status, lines } => {
                push_status(out, "+OK", None, status);
                for line in lines {
                    assert!(
                        !line.contains(['\r', '\n']),
                        "a reply line holds a line break"
                    );
                    // RFC 1939 §3: a line starting with the termination octet is stuffed.
                    if line.starts_with('.') {
                        out.push(b'.');
                    }
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b".\r\n");
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

fn push_status(out: &mut Vec<u8>, indicator: &str, code: Option<ResponseCode>, text: &str) {
    assert!(
        !text.contains(['\r', '\n']),
        "a status line holds a line break"
    );
    out.extend_from_slice(indicator.as_bytes());
    if let Some(code) = code {
        out.push(b' ');
        out.extend_from_slice(code.to_string().as_bytes());
    }
    if !text.is_empty() {
        out.push(b' ');
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// The body of a multi-line reply carrying a message, as a series of slices to
/// write one after another: the message's own bytes, a `.` before every line that
/// starts with `.` (RFC 1939 §3), a CRLF if the message does not end with a line
/// break, and the terminating `.CRLF`. Nothing of the message is copied.
///
/// A line starts after every LF, bare or not, so that a client splitting on either
/// never mistakes a message line for the terminator.
#[derive(Debug, Clone)]
pub struct Stuffed<'a> {
    rest: &'a [u8],
    at_line_start: bool,
    ends_with_lf: bool,
    finished: bool,
}

impl<'a> Stuffed<'a> {
    pub fn new(message: &'a [u8]) -> Stuffed<'a> {
        Stuffed {
            rest: message,
            at_line_start: true,
            ends_with_lf: message.is_empty() || message.ends_with(b"\n"),
            finished: false,
        }
    }

    /// The whole multi-line body in one buffer; for tests and small replies.
    pub fn to_vec(self) -> Vec<u8> {
        self.flat_map(|segment| segment.iter().copied()).collect()
    }
}

impl<'a> Iterator for Stuffed<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            if self.finished {
                return None;
            }
            self.finished = true;
            return Some(if self.ends_with_lf {
                b".\r\n"
            } else {
                b"\r\n.\r\n"
            });
        }
        if self.at_line_start && self.rest[0] == b'.' {
            self.at_line_start = false;
            return Some(b".");
        }
        // Everything up to and including the LF that precedes the next dot-line.
        let segment_len = self
            .rest
            .windows(2)
            .position(|pair| pair == b"\n.")
            .map_or(self.rest.len(), |lf_idx| lf_idx + 1);
        let (segment, rest) = self.rest.split_at(segment_len);
        self.rest = rest;
        self.at_line_start = segment.ends_with(b"\n");
        Some(segment)
    }
}

/// RFC 1939 §7 TOP: the header, the blank line that ends it, and then at most
/// `n_body_lines` lines of the body. A message without a blank line is all header.
pub fn top_of_message(message: &[u8], n_body_lines: u64) -> &[u8] {
    let mut line_start_idx = 0;
    let mut in_header = true;
    let mut n_lines_left = n_body_lines;
    while line_start_idx < message.len() {
        if !in_header && n_lines_left == 0 {
            return &message[..line_start_idx];
        }
        let line_end_idx = message[line_start_idx..]
            .iter()
            .position(|&byte| byte == b'\n')
            .map_or(message.len(), |lf_idx| line_start_idx + lf_idx + 1);
        let line = &message[line_start_idx..line_end_idx];
        if in_header {
            in_header = !(line == b"\r\n" || line == b"\n");
        } else {
            n_lines_left -= 1;
        }
        line_start_idx = line_end_idx;
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let table = [
            (Response::ok("2 320"), "+OK 2 320\r\n"),
            (Response::ok(""), "+OK\r\n"),
            (
                Response::err(Some(ResponseCode::InUse), "locked"),
                "-ERR [IN-USE] locked\r\n",
            ),
            (
                Response::err(Some(ResponseCode::SysTemp), "later"),
                "-ERR [SYS/TEMP] later\r\n",
            ),
            (Response::err(None, "no"), "-ERR no\r\n"),
            (Response::Challenge, "+ \r\n"),
            (
                Response::MultiLine {
                    status: "list".into(),
                    lines: vec!["1 20".into(), ".x".into()],
                },
                "+OK list\r\n1 20\r\n..x\r\n.\r\n",
            ),
        ];
        for (response, wire) in table {
            assert_eq!(String::from_utf8(response.to_bytes()).unwrap(), wire);
        }
        let auth = Response::from_error(&ProtoError::BadCredentials).to_bytes();
        assert!(auth.starts_with(b"-ERR [AUTH] "), "{auth:?}");
    }

    /// Undoes RFC 1939 §3 stuffing the way a client does: split on CRLF, stop at a
    /// lone `.`, drop one leading `.` from other lines.
    fn unstuff(wire: &[u8]) -> Vec<u8> {
        let mut message = Vec::new();
        let mut rest = wire;
        loop {
            let lf_idx = rest
                .iter()
                .position(|&byte| byte == b'\n')
                .expect("terminated");
            let line = &rest[..=lf_idx];
            rest = &rest[lf_idx + 1..];
            if line == b".\r\n" {
                assert!(rest.is_empty(), "bytes after the terminator");
                return message;
            }
            message.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
    }

    #[test]
    fn stuffing_round_trips() {
        let table: [(&[u8], &[u8]); 8] = [
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"..x\r\n..\r\n", b"...x\r\n...\r\n.\r\n"),
            (b"no final newline", b"no final newline\r\n.\r\n"),
            (b"x\r\n.", b"x\r\n..\r\n.\r\n"),
            (b"a.b\r\n .c\r\n", b"a.b\r\n .c\r\n.\r\n"),
        ];
        for (message, wire) in table {
            let stuffed = Stuffed::new(message).to_vec();
            assert_eq!(stuffed, wire, "{:?}", String::from_utf8_lossy(message));
            if message.is_empty() || message.ends_with(b"\r\n") {
                assert_eq!(unstuff(&stuffed), message);
            }
        }
    }

    #[test]
    fn stuffing_does_not_split_ordinary_lines() {
        let message = "line\r\n".repeat(10_000);
        assert_eq!(Stuffed::new(message.as_bytes()).count(), 2);
    }

    #[test]
    fn top_counts_body_lines() {
        let message = b"Subject: hi\r\nFrom: a@b\r\n\r\none\r\ntwo\r\n\r\nfour\r\n";
        let table: [(u64, &[u8]); 6] = [
            (0, b"Subject: hi\r\nFrom: a@b\r\n\r\n"),
            (1, b"Subject: hi\r\nFrom: a@b\r\n\r\none\r\n"),
            (2, b"Subject: hi\r\nFrom: a@b\r\n\r\none\r\ntwo\r\n"),
            (3, b"Subject: hi\r\nFrom: a@b\r\n\r\none\r\ntwo\r\n\r\n"),
            (4, message),
            (u64::MAX, message),
        ];
        for (n_lines, expected) in table {
            assert_eq!(top_of_message(message, n_lines), expected, "{n_lines}");
        }
        assert_eq!(
            top_of_message(b"Subject: only headers\r\n", 0),
            b"Subject: only headers\r\n"
        );
        assert_eq!(top_of_message(b"", 5), b"");
        assert_eq!(
            top_of_message(b"A: b\n\nbody\nmore\n", 1),
            b"A: b\n\nbody\n"
        );
    }
}
