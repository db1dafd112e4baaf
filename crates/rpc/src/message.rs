//! The wire format: building and parsing request and reply mails (see the crate doc).
//! Pure functions, no I/O.

use base64::Engine as _;
use cm_types::date::{rfc5322_date, unix_seconds_now};

use crate::{Reply, Request};

/// Marks a mail as part of this protocol, with its version.
pub const HEADER_RPC: &str = "X-Chordmail-Rpc";
pub const HEADER_METHOD: &str = "X-Chordmail-Method";
pub const HEADER_STATUS: &str = "X-Chordmail-Status";
/// The exact length in bytes of the decoded body, so that the line end a text body
/// must end with on the wire, and any truncation, can be told apart from the body.
pub const HEADER_LENGTH: &str = "X-Chordmail-Length";
pub const PROTOCOL_VERSION: &str = "1";
/// Methods are tokens, so that they fit a header without encoding.
pub const METHOD_BYTES_MAX: usize = 64;
/// RFC 5322 §2.1.1: at most 998 octets per line; text bodies with longer lines go in base64.
const TEXT_LINE_BYTES_MAX: usize = 998;
const BASE64_LINE_CHARS: usize = 76;
/// Headers of a request or reply are small; a bigger header section is refused.
pub const HEADER_SECTION_BYTES_MAX: usize = 64 * 1024;

pub fn method_is_valid(method: &str) -> bool {
    !method.is_empty()
        && method.len() <= METHOD_BYTES_MAX
        && method
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-/:".contains(&byte))
}

/// A plain `local@domain` address without spaces, brackets or controls, since it
/// goes into SMTP commands and headers verbatim.
pub fn address_is_valid(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && address.len() <= 254
        && address
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && !"<>()[],;\\\"".contains(c))
}

/// A fresh globally unique Message-ID (without angle brackets): 128 random bits.
pub fn new_message_id(account: &str) -> String {
    let domain = account
        .rsplit_once('@')
        .map_or("localhost", |(_, domain)| domain);
    format!("{}.rpc@{domain}", hex::encode(rand::random::<[u8; 16]>()))
}

/// A body on the wire: its content headers, the encoded bytes, whether they are 8-bit.
struct EncodedBody {
    headers: String,
    wire: Vec<u8>,
    eight_bit: bool,
}

/// Text (UTF-8, no NUL, no CR, lines of at most 998 bytes) goes as-is with LF turned
/// into CRLF; anything else goes in base64 as an application/octet-stream part.
fn encode_body(body: &[u8]) -> EncodedBody {
    let is_text = std::str::from_utf8(body).is_ok()
        && !body.contains(&0)
        && !body.contains(&b'\r')
        && body
            .split(|byte| *byte == b'\n')
            .all(|line| line.len() <= TEXT_LINE_BYTES_MAX);
    if is_text {
        let mut wire = Vec::with_capacity(body.len() + body.len() / 32 + 2);
        for byte in body {
            if *byte == b'\n' {
                wire.push(b'\r');
            }
            wire.push(*byte);
        }
        if !body.is_empty() && !body.ends_with(b"\n") {
            wire.extend_from_slice(b"\r\n");
        }
        let eight_bit = !body.is_ascii();
        let transfer = if eight_bit { "8bit" } else { "7bit" };
        EncodedBody {
            headers: format!(
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {transfer}\r\n"
            ),
            wire,
            eight_bit,
        }
    } else {
        let encoded = base64::engine::general_purpose::STANDARD.encode(body);
        let mut wire =
            Vec::with_capacity(encoded.len() + encoded.len() / BASE64_LINE_CHARS * 2 + 2);
        for chunk in encoded.as_bytes().chunks(BASE64_LINE_CHARS) {
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        EncodedBody {
            headers:
                "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
                    .to_owned(),
            wire,
            eight_bit: false,
        }
    }
}

/// A mail ready for SMTP: CRLF line ends, and whether it needs BODY=8BITMIME.
pub struct Mail {
    pub bytes: Vec<u8>,
    pub eight_bit: bool,
}

fn assemble(headers: String, body: &[u8]) -> Mail {
    let encoded = encode_body(body);
    let mut bytes =
        Vec::with_capacity(headers.len() + encoded.headers.len() + encoded.wire.len() + 64);
    bytes.extend_from_slice(headers.as_bytes());
    bytes.extend_from_slice(b"MIME-Version: 1.0\r\n");
    bytes.extend_from_slice(encoded.headers.as_bytes());
    bytes.extend_from_slice(format!("{HEADER_LENGTH}: {}\r\n\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(&encoded.wire);
    Mail {
        bytes,
        eight_bit: encoded.eight_bit,
    }
}

pub fn build_request(from: &str, to: &str, request_id: &str, method: &str, body: &[u8]) -> Mail {
    assert!(method_is_valid(method), "method checked by the caller");
    let headers = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nDate: {date}\r\nMessage-ID: <{request_id}>\r\nSubject: rpc {method}\r\n\
         {HEADER_RPC}: {PROTOCOL_VERSION}\r\n{HEADER_METHOD}: {method}\r\n",
        date = rfc5322_date(unix_seconds_now()),
    );
    assemble(headers, body)
}

pub fn build_reply(from: &str, request: &Request, reply: &Reply) -> Mail {
    let headers = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nDate: {date}\r\nMessage-ID: <{reply_id}>\r\nIn-Reply-To: <{id}>\r\n\
         References: <{id}>\r\nSubject: Re: rpc {method}\r\n{HEADER_RPC}: {PROTOCOL_VERSION}\r\n\
         {HEADER_STATUS}: {status}\r\n",
        to = request.sender,
        date = rfc5322_date(unix_seconds_now()),
        reply_id = new_message_id(from),
        id = request.id,
        method = request.method,
        status = reply.status,
    );
    assemble(headers, &reply.body)
}

/// Header fields in order, names as sent, values unfolded (RFC 5322 §2.2.3).
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Splits a mail at the first empty line into (header section, body).
pub fn split(mail: &[u8]) -> (&[u8], &[u8]) {
    let mut line_start = 0;
    while line_start < mail.len() {
        let line_end = mail[line_start..]
            .iter()
            .position(|byte| *byte == b'\n')
            .map_or(mail.len(), |idx| line_start + idx + 1);
        let line = &mail[line_start..line_end];
        if line == b"\r\n" || line == b"\n" {
            return (&mail[..line_start], &mail[line_end..]);
        }
        line_start = line_end;
    }
    (mail, &[])
}

pub fn parse_headers(section: &[u8]) -> Headers {
    let text = String::from_utf8_lossy(section);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    Headers(fields)
}

/// `<id>` to `id`; `None` unless exactly one bracketed id without spaces.
pub fn parse_message_id(value: &str) -> Option<String> {
    let inner = value.trim().strip_prefix('<')?.strip_suffix('>')?;
    (!inner.is_empty() && !inner.contains(['<', '>', ' ', '\t'])).then(|| inner.to_owned())
}

/// The address in a From/Reply-To value: the bracketed part, or the bare value.
fn parse_mailbox(value: &str) -> Option<String> {
    let address = match (value.find('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        _ => value.trim(),
    };
    address_is_valid(address).then(|| address.to_owned())
}

fn decode_body(headers: &Headers, wire: &[u8]) -> Result<Vec<u8>, &'static str> {
    let length: usize = headers
        .get(HEADER_LENGTH)
        .ok_or("no length header")?
        .parse()
        .map_err(|_| "bad length header")?;
    let encoding = headers
        .get("Content-Transfer-Encoding")
        .unwrap_or("7bit")
        .to_ascii_lowercase();
    let mut body = if encoding == "base64" {
        let compact: Vec<u8> = wire
            .iter()
            .copied()
            .filter(|byte| !byte.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|_| "bad base64 body")?
    } else {
        let mut text = Vec::with_capacity(wire.len());
        let mut idx = 0;
        while idx < wire.len() {
            if wire[idx] == b'\r' && wire.get(idx + 1) == Some(&b'\n') {
                idx += 1;
                continue;
            }
            text.push(wire[idx]);
            idx += 1;
        }
        // The encoder ends a text body with a line end; drop it if it was added.
        if text.len() == length + 1 && text.ends_with(b"\n") {
            text.pop();
        }
        text
    };
    if body.len() != length {
        return Err("body length differs from its header");
    }
    body.shrink_to_fit();
    Ok(body)
}

/// Why a mail was not taken as a request or reply; logged, never answered.
pub type Malformed = &'static str;

pub fn parse_request(mail: &[u8]) -> Result<Request, Malformed> {
    let (section, wire) = split(mail);
    let headers = parse_headers(section);
    if headers.get(HEADER_RPC) != Some(PROTOCOL_VERSION) {
        return Err("not an rpc mail");
    }
    let id = headers
        .get("Message-ID")
        .and_then(parse_message_id)
        .ok_or("no valid Message-ID")?;
    let method = headers.get(HEADER_METHOD).ok_or("no method header")?;
    if !method_is_valid(method) {
        return Err("invalid method");
    }
    let sender = headers
        .get("Reply-To")
        .or_else(|| headers.get("From"))
        .and_then(parse_mailbox)
        .ok_or("no valid sender")?;
    let body = decode_body(&headers, wire)?;
    Ok(Request {
        id,
        method: method.to_owned(),
        sender,
        body,
    })
}

/// What a client needs to know from a reply's headers alone (from TOP n 0).
pub fn reply_target(section: &[u8]) -> Result<String, Malformed> {
    let headers = parse_headers(section);
    if headers.get(HEADER_RPC) != Some(PROTOCOL_VERSION) {
        return Err("not an rpc mail");
    }
    if headers.get(HEADER_STATUS).is_none() {
        return Err("no status header");
    }
    headers
        .get("In-Reply-To")
        .and_then(parse_message_id)
        .ok_or("no valid In-Reply-To")
}

/// (the request id it answers, the reply).
pub fn parse_reply(mail: &[u8]) -> Result<(String, Reply), Malformed> {
    let (section, wire) = split(mail);
    let in_reply_to = reply_target(section)?;
    let headers = parse_headers(section);
    let status: u8 = headers
        .get(HEADER_STATUS)
        .and_then(|status| status.parse().ok())
        .ok_or("status is not 0..=255")?;
    let body = decode_body(&headers, wire)?;
    Ok((in_reply_to, Reply { status, body }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        let long_line = "x".repeat(2000);
        let bodies: [&[u8]; 9] = [
            b"",
            b"hello",
            b"hello\n",
            b"a\n\nb\n\n",
            b".leading dot\n.\n",
            "caf\u{e9}\n".as_bytes(),
            b"crlf\r\nstays\r\n",
            b"\x00\x01\xff binary",
            long_line.as_bytes(),
        ];
        for body in bodies {
            let mail = build_request("me@x", "svc@x", "id1.rpc@x", "echo", body);
            let request = parse_request(&mail.bytes).unwrap();
            assert_eq!(request.body, body);
            assert_eq!(
                (
                    request.id.as_str(),
                    request.method.as_str(),
                    request.sender.as_str()
                ),
                ("id1.rpc@x", "echo", "me@x")
            );
            let reply = Reply {
                status: 7,
                body: body.to_vec(),
            };
            let mail = build_reply("svc@x", &request, &reply);
            let (section, _) = split(&mail.bytes);
            assert_eq!(reply_target(section).unwrap(), "id1.rpc@x");
            assert_eq!(
                parse_reply(&mail.bytes).unwrap(),
                ("id1.rpc@x".to_owned(), reply)
            );
        }
    }

    #[test]
    fn text_is_sent_as_is_and_binary_as_base64() {
        let text = build_request("me@x", "svc@x", "i@x", "m", b"hello world\n");
        assert!(text.bytes.ends_with(b"\r\n\r\nhello world\r\n"));
        assert!(!text.eight_bit);
        let binary = build_request("me@x", "svc@x", "i@x", "m", b"\x00\x01");
        assert!(
            String::from_utf8_lossy(&binary.bytes).contains("Content-Transfer-Encoding: base64")
        );
    }

    #[test]
    fn malformed_mails_are_refused() {
        let good = build_request("me@x", "svc@x", "i@x", "m", b"body").bytes;
        let good = String::from_utf8(good).unwrap();
        let table = [
            good.replace("X-Chordmail-Rpc: 1", "X-Other: 1"),
            good.replace("Message-ID: <i@x>", "Message-ID: i@x"),
            good.replace("X-Chordmail-Method: m", "X-Chordmail-Method: a b"),
            good.replace("X-Chordmail-Length: 4", "X-Chordmail-Length: 9"),
            good.replace("From: <me@x>", "From: nobody"),
            "garbage without headers".to_owned(),
        ];
        for mail in table {
            assert!(parse_request(mail.as_bytes()).is_err(), "{mail}");
        }
        assert!(
            parse_reply(good.as_bytes()).is_err(),
            "a request is no reply"
        );
    }

    #[test]
    fn headers_unfold_and_ids_parse() {
        let headers = parse_headers(b"Subject: a\r\n  b\r\nin-reply-to: <x@y>\r\n");
        assert_eq!(headers.get("subject"), Some("a b"));
        assert_eq!(
            headers
                .get("In-Reply-To")
                .and_then(parse_message_id)
                .as_deref(),
            Some("x@y")
        );
        assert_eq!(parse_message_id("<a b>"), None);
        assert_eq!(parse_message_id("x@y"), None);
    }

    #[test]
    fn methods_and_addresses() {
        assert!(method_is_valid("kv.get"));
        assert!(!method_is_valid(""));
        assert!(!method_is_valid("a\r\nBcc: x"));
        assert!(!method_is_valid(&"m".repeat(65)));
        assert!(address_is_valid("svc@example.org"));
        assert!(!address_is_valid("svc@"));
        assert!(!address_is_valid("a b@x"));
        assert!(!address_is_valid("a>@x"));
    }
}
