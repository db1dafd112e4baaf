//! Response encoding (RFC 9051 §7): status lines, quoted strings and literals.
//!
//! Replies are written straight into the session's output buffer. Strings go out
//! quoted when they can be and as literals otherwise, so no peer-supplied text can
//! break out of its place in a response.

use std::fmt;

/// RFC 9051 §7.1: the status of a tagged or untagged reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
        })
    }
}

/// Appends `tag STATUS [code] text` (RFC 9051 §7.1). `code` is the bracketed
/// response code's inside, as in `"TRYCREATE"` or `"UIDNEXT 5"`.
pub fn push_status(out: &mut Vec<u8>, tag: &str, status: Status, code: Option<&str>, text: &str) {
    assert!(
        !tag.contains(['\r', '\n', ' ']) && !text.contains(['\r', '\n']),
        "a status line holds a line break"
    );
    out.extend_from_slice(tag.as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.to_string().as_bytes());
    if let Some(code) = code {
        assert!(
            !code.contains(['\r', '\n', ']']),
            "a response code holds a break"
        );
        out.extend_from_slice(b" [");
        out.extend_from_slice(code.as_bytes());
        out.push(b']');
    }
    out.push(b' ');
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends an untagged line, `* ` then `text` then CRLF. `text` is written by the
/// session itself, never taken from the peer unquoted.
pub fn push_untagged(out: &mut Vec<u8>, text: &str) {
    assert!(
        !text.contains(['\r', '\n']),
        "an untagged line holds a line break"
    );
    out.extend_from_slice(b"* ");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Whether `bytes` fits a quoted string (RFC 9051 §9 `quoted`): 7-bit text
/// without CR, LF or NUL, and short enough to read on one line.
fn quotable(bytes: &[u8]) -> bool {
    const QUOTED_BYTES_MAX: usize = 1024;
    bytes.len() <= QUOTED_BYTES_MAX
        && bytes
            .iter()
            .all(|&byte| byte != 0 && byte != b'\r' && byte != b'\n' && byte < 0x80)
}

/// Appends `bytes` as an IMAP string: quoted if it can be, else a literal.
pub fn push_string(out: &mut Vec<u8>, bytes: &[u8]) {
    if quotable(bytes) {
        out.push(b'"');
        for &byte in bytes {
            if byte == b'"' || byte == b'\\' {
                out.push(b'\\');
            }
            out.push(byte);
        }
        out.push(b'"');
    } else {
        push_literal(out, bytes);
    }
}

/// Appends `NIL` or the string.
pub fn push_nstring(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => push_string(out, bytes),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// Appends a literal, `{n}` CRLF and the octets (RFC 9051 §4.3).
pub fn push_literal(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
}

/// A string for the text of a status line: printable ASCII only.
pub fn sanitize_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(bytes: &[u8]) -> String {
        let mut out = Vec::new();
        push_string(&mut out, bytes);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn strings_are_quoted_or_literal() {
        let table: [(&[u8], &str); 5] = [
            (b"plain", "\"plain\""),
            (b"", "\"\""),
            (b"say \"hi\" \\o/", "\"say \\\"hi\\\" \\\\o/\""),
            (b"two\r\nlines", "{10}\r\ntwo\r\nlines"),
            ("caf\u{e9}".as_bytes(), "{5}\r\ncaf\u{e9}"),
        ];
        for (bytes, wire) in table {
            assert_eq!(string(bytes), wire);
        }
    }

    #[test]
    fn status_lines() {
        let mut out = Vec::new();
        push_status(
            &mut out,
            "a1",
            Status::No,
            Some("TRYCREATE"),
            "no such folder",
        );
        push_status(&mut out, "*", Status::Ok, None, "hi");
        assert_eq!(out, b"a1 NO [TRYCREATE] no such folder\r\n* OK hi\r\n");
    }
}
