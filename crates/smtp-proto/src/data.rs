//! The DATA receiver: dot-unstuffing, the text-line limit and the size limit.
//!
//! RFC 5321 §4.5.2: the data end with `CRLF . CRLF`; a line that starts with a
//! period had one period added by the client, which we remove. Only CR LF ends a
//! line here: a bare LF followed by a period is data, never the end of data, so a
//! message cannot smuggle a second transaction past us ("SMTP smuggling").
//!
//! Once a limit is broken the receiver keeps reading up to the terminating dot,
//! but stores nothing more, so an oversized message costs no memory.

use bytes::BufMut;

use crate::SmtpError;
use crate::limits::SmtpLimits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Right after CR LF (or at the very start: the DATA line's CR LF counts).
    LineStart,
    /// A period at the start of a line, not yet known to be stuffing or the end.
    Dot,
    /// `.` CR at the start of a line: LF now ends the data.
    DotCr,
    InLine,
    /// A CR inside a line: LF now ends the line.
    Cr,
}

/// Receives one message body. Create one per DATA command.
#[derive(Debug)]
pub struct DataReceiver {
    position: Position,
    line_bytes: usize,
    message_bytes: usize,
    text_line_bytes_max: usize,
    message_bytes_max: usize,
    /// The first limit broken; from then on nothing more is stored.
    failure: Option<SmtpError>,
}

impl DataReceiver {
    pub fn new(limits: &SmtpLimits) -> DataReceiver {
        DataReceiver {
            position: Position::LineStart,
            line_bytes: 0,
            message_bytes: 0,
            text_line_bytes_max: limits.text_line_bytes_max,
            message_bytes_max: limits.message_bytes_max,
            failure: None,
        }
    }

    /// Takes bytes from the front of `input`, appending the unstuffed message to
    /// `body` (the session's buffer, behind the trace headers; a `Vec` in tests). `None`: `input` is used up before the end of data. Otherwise the data
    /// ended: `Ok` with `body` complete, or the limit that was broken (and `body`
    /// holds a truncated message the caller must drop). Bytes after the terminating
    /// dot are left in `input`: they are the next pipelined command.
    pub fn feed(
        &mut self,
        input: &mut &[u8],
        body: &mut impl BufMut,
    ) -> Option<Result<(), SmtpError>> {
        let mut consumed_idx = 0;
        let mut ended = false;
        while consumed_idx < input.len() {
            // Fast path: the bulk of a line, up to its next CR, is copied as is.
            if self.position == Position::InLine {
                let rest = &input[consumed_idx..];
                let n_plain = rest
                    .iter()
                    .position(|&byte| byte == b'\r')
                    .unwrap_or(rest.len());
                self.emit_run(&rest[..n_plain], body);
                consumed_idx += n_plain;
                if consumed_idx == input.len() {
                    break;
                }
            }
            let byte = input[consumed_idx];
            consumed_idx += 1;
            self.count_line_byte();
            match (self.position, byte) {
                (Position::LineStart, b'.') => self.position = Position::Dot,
                (Position::Dot, b'\r') => self.position = Position::DotCr,
                (Position::DotCr, b'\n') => {
                    ended = true;
                    break;
                }
                (Position::DotCr, _) => {
                    // `.` CR x: the period was stuffing and the CR is data.
                    self.emit(b"\r", body);
                    self.position = Position::Cr;
                    self.step_in_line(byte, body);
                }
                // A period at the start of a line followed by anything else is stuffing.
                (Position::LineStart | Position::Dot | Position::InLine | Position::Cr, _) => {
                    if self.position == Position::Dot {
                        self.position = Position::InLine;
                    }
                    self.step_in_line(byte, body);
                }
            }
        }
        *input = &input[consumed_idx..];
        if !ended {
            return None;
        }
        self.position = Position::LineStart;
        Some(match self.failure.take() {
            Some(error) => Err(error),
            None => Ok(()),
        })
    }

    /// One byte that is data (not part of a dot sequence), in any line position.
    fn step_in_line(&mut self, byte: u8, body: &mut impl BufMut) {
        self.emit(&[byte], body);
        self.position = match (self.position, byte) {
            (_, b'\r') => Position::Cr,
            (Position::Cr, b'\n') => {
                self.line_bytes = 0;
                Position::LineStart
            }
            _ => Position::InLine,
        };
    }

    fn count_line_byte(&mut self) {
        self.line_bytes += 1;
        if self.line_bytes > self.text_line_bytes_max && self.failure.is_none() {
            self.failure = Some(SmtpError::TextLineTooLong);
        }
    }

    /// Bytes in the middle of a line that are not CR; counted, then stored.
    fn emit_run(&mut self, run: &[u8], body: &mut impl BufMut) {
        debug_assert!(!run.contains(&b'\r'));
        self.line_bytes += run.len();
        if self.line_bytes > self.text_line_bytes_max && self.failure.is_none() {
            self.failure = Some(SmtpError::TextLineTooLong);
        }
        self.emit(run, body);
    }

    fn emit(&mut self, bytes: &[u8], body: &mut impl BufMut) {
        self.message_bytes += bytes.len();
        if self.message_bytes > self.message_bytes_max && self.failure.is_none() {
            self.failure = Some(SmtpError::MessageTooLarge);
        }
        if self.failure.is_none() {
            body.put_slice(bytes);
        }
    }
}

/// Dot-stuffs `body` for sending (RFC 5321 §4.5.2) and appends the terminator; the
/// inverse of [`DataReceiver`], for clients and tests.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut at_line_start = true;
    for &byte in body {
        if at_line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        at_line_start = byte == b'\n' && out.len() >= 2 && out[out.len() - 2] == b'\r';
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive_split_at(
        input: &[u8],
        split_idx: usize,
        limits: &SmtpLimits,
    ) -> (Option<Result<(), SmtpError>>, Vec<u8>, Vec<u8>) {
        let mut receiver = DataReceiver::new(limits);
        let mut body = Vec::new();
        let mut outcome = None;
        let mut left = Vec::new();
        for mut piece in [&input[..split_idx], &input[split_idx..]] {
            if outcome.is_none() {
                outcome = receiver.feed(&mut piece, &mut body);
            }
            left.extend_from_slice(piece);
        }
        (outcome, body, left)
    }

    /// Goal: unstuffing, termination and limits do not depend on how the bytes were
    /// cut into reads. Method: a table of (wire bytes, stored body, bytes left after
    /// the end), each fed split at every offset.
    #[test]
    fn unstuffs_split_at_every_offset() {
        let table: &[(&[u8], &[u8], &[u8])] = &[
            (b".\r\n", b"", b""),
            (b"hello\r\n.\r\n", b"hello\r\n", b""),
            (
                b"..leading dot\r\n.\r\nQUIT\r\n",
                b".leading dot\r\n",
                b"QUIT\r\n",
            ),
            (b"a\r\n..\r\n...\r\n.\r\n", b"a\r\n.\r\n..\r\n", b""),
            // A period not at a line start, and a bare LF before a period, are data.
            (b"a.b\r\nx\n.\r\n.\r\n", b"a.b\r\nx\n.\r\n", b""),
            // RFC 5321 §4.5.2: a period that starts a line is removed whatever follows.
            (b".x\r\n.\r\n", b"x\r\n", b""),
            // `.` CR without LF is no terminator.
            (b".\rz\r\n.\r\n", b"\rz\r\n", b""),
            (b"\r\r\n.\r\n", b"\r\r\n", b""),
            (
                "8-bit: ünïcödé\r\n.\r\n".as_bytes(),
                "8-bit: ünïcödé\r\n".as_bytes(),
                b"",
            ),
        ];
        for &(input, body_expected, left_expected) in table {
            for split_idx in 0..=input.len() {
                let (outcome, body, left) =
                    receive_split_at(input, split_idx, &SmtpLimits::default());
                let shown = String::from_utf8_lossy(input);
                assert_eq!(outcome, Some(Ok(())), "{shown:?} split at {split_idx}");
                assert_eq!(body, body_expected, "{shown:?} split at {split_idx}");
                assert_eq!(left, left_expected, "{shown:?} split at {split_idx}");
            }
        }
    }

    #[test]
    fn incomplete_data_needs_more() {
        for input in [
            &b""[..],
            b"abc",
            b"abc\r\n",
            b"abc\r\n.",
            b"abc\r\n.\r",
            b"abc\n.\r\n",
        ] {
            let (outcome, _, _) = receive_split_at(input, 0, &SmtpLimits::default());
            assert_eq!(outcome, None, "{input:?}");
        }
    }

    /// Goal: over a limit the receiver drains to the dot, stores nothing more, and
    /// leaves the next command in place.
    #[test]
    fn limits_drain_to_the_dot() {
        let limits = SmtpLimits {
            message_bytes_max: 16,
            text_line_bytes_max: 10,
            ..SmtpLimits::default()
        };
        let table: &[(&[u8], SmtpError)] = &[
            (
                b"123456\r\n123456\r\n123456\r\n.\r\nQUIT\r\n",
                SmtpError::MessageTooLarge,
            ),
            (
                b"0123456789ABC\r\n.\r\nQUIT\r\n",
                SmtpError::TextLineTooLong,
            ),
        ];
        for &(input, ref error) in table {
            for split_idx in 0..=input.len() {
                let (outcome, body, left) = receive_split_at(input, split_idx, &limits);
                assert_eq!(outcome, Some(Err(error.clone())), "split at {split_idx}");
                assert!(body.len() <= 16);
                assert_eq!(left, b"QUIT\r\n");
            }
        }
        let exactly = b"123456\r\n123456\r\n.\r\n";
        assert_eq!(receive_split_at(exactly, 3, &limits).0, Some(Ok(())));
    }

    #[test]
    fn large_message_body_is_not_buffered_past_the_limit() {
        let limits = SmtpLimits {
            message_bytes_max: 1024,
            ..SmtpLimits::default()
        };
        let mut receiver = DataReceiver::new(&limits);
        let mut body = Vec::new();
        let line = [b"x".repeat(98), b"\r\n".to_vec()].concat();
        for _ in 0..10_000 {
            assert_eq!(receiver.feed(&mut line.as_slice(), &mut body), None);
        }
        assert!(body.len() <= 1024);
        assert_eq!(
            receiver.feed(&mut &b".\r\n"[..], &mut body),
            Some(Err(SmtpError::MessageTooLarge))
        );
    }

    #[test]
    fn stuffing_round_trips() {
        let bodies: &[&[u8]] = &[b"", b"a\r\n", b".\r\n", b"..x\r\n.y\r\nz", b"x\n.\r\n"];
        for &body in bodies {
            let wire = dot_stuff(body);
            let (outcome, received, left) =
                receive_split_at(&wire, wire.len() / 2, &SmtpLimits::default());
            assert_eq!(outcome, Some(Ok(())));
            assert!(left.is_empty());
            let mut expected = body.to_vec();
            if !expected.is_empty() && !expected.ends_with(b"\r\n") {
                expected.extend_from_slice(b"\r\n");
            }
            assert_eq!(received, expected, "{body:?}");
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn random_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..4096), split_idx in 0usize..4096) {
                let limits = SmtpLimits { message_bytes_max: 512, text_line_bytes_max: 100, ..SmtpLimits::default() };
                let split_idx = split_idx.min(input.len());
                let (_, body, _) = receive_split_at(&input, split_idx, &limits);
                prop_assert!(body.len() <= 512);
            }

            #[test]
            fn stuffed_bodies_round_trip(lines in proptest::collection::vec("[.a-z\\r]{0,20}", 0..20)) {
                let body: Vec<u8> = lines.iter().flat_map(|line| [line.as_bytes(), b"\r\n"].concat()).collect();
                let wire = dot_stuff(&body);
                let (outcome, received, left) = receive_split_at(&wire, wire.len() / 3, &SmtpLimits::default());
                prop_assert_eq!(outcome, Some(Ok(())));
                prop_assert!(left.is_empty());
                prop_assert_eq!(received, body);
            }
        }
    }
}
