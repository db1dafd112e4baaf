//! Trace and identification headers the server adds to a message it accepts.
//!
//! Pure functions: the shell supplies the clock reading, the peer address and the
//! unique parts; this module only formats them, and the session puts them in front
//! of the body it receives (RFC 5321 §4.4). It also finds the
//! `Authentication-Results` fields a client forged in our name (RFC 8601 §5).

/// The `with` protocol of a `Received:` header: RFC 3848 (ESMTP, S for TLS,
/// A for authenticated) and RFC 6531 §3.7.3 (UTF8SMTP variants); plain `SMTP` after HELO.
pub fn with_protocol(
    extended: bool,
    tls: bool,
    authenticated: bool,
    smtputf8: bool,
) -> &'static str {
    match (extended, smtputf8, tls, authenticated) {
        (false, _, _, _) => "SMTP",
        (true, false, false, false) => "ESMTP",
        (true, false, true, false) => "ESMTPS",
        (true, false, false, true) => "ESMTPA",
        (true, false, true, true) => "ESMTPSA",
        (true, true, false, false) => "UTF8SMTP",
        (true, true, true, false) => "UTF8SMTPS",
        (true, true, false, true) => "UTF8SMTPA",
        (true, true, true, true) => "UTF8SMTPSA",
    }
}

/// The fields of a `Received:` header (RFC 5321 §4.4).
#[derive(Debug, Clone)]
pub struct ReceivedFields<'a> {
    /// What the client said in HELO/EHLO.
    pub helo: &'a str,
    /// The peer's IP address, as text.
    pub peer_ip: &'a str,
    pub hostname: &'a str,
    /// From [`with_protocol`].
    pub protocol: &'a str,
    /// Our identifier for this transaction, to find it in the logs.
    pub id: &'a str,
    /// Named only when the message has a single recipient, so that a copy does not
    /// reveal the other (possibly blind) recipients.
    pub single_recipient: Option<&'a str>,
    /// From [`cm_types::date::rfc5322_date`].
    pub date: &'a str,
}

/// `Received: from helo ([ip]) by host with P id I [for <rcpt>]; date`, folded.
pub fn received(fields: &ReceivedFields<'_>) -> String {
    let helo = sanitize(fields.helo);
    let mut header = format!(
        "Received: from {helo} ([{}])\r\n\tby {} with {} id {}",
        fields.peer_ip,
        sanitize(fields.hostname),
        fields.protocol,
        fields.id
    );
    if let Some(recipient) = fields.single_recipient {
        header.push_str(&format!("\r\n\tfor <{}>", sanitize(recipient)));
    }
    header.push_str(&format!(";\r\n\t{}\r\n", fields.date));
    header
}

/// RFC 5321 §4.4: the reverse-path, added by the final delivery.
pub fn return_path(reverse_path: &str) -> String {
    format!("Return-Path: <{}>\r\n", sanitize(reverse_path))
}

/// A `Message-ID:` header (RFC 5322 §3.6.4) for a message that had none.
pub fn message_id(unique: &str, hostname: &str) -> String {
    format!(
        "Message-ID: <{}@{}>\r\n",
        sanitize(unique),
        sanitize(hostname)
    )
}

/// RFC 8601: what this node verified about the sender, for the receiving side
/// (RFC 7001 §2.7.4's `auth` method): `pass` with the login when the session
/// authenticated, `none` when it did not try.
pub fn authentication_results(hostname: &str, login: Option<&str>) -> String {
    match login {
        Some(login) => format!(
            "Authentication-Results: {};\r\n\tauth=pass smtp.auth={}\r\n",
            sanitize(hostname),
            sanitize(login)
        ),
        None => format!(
            "Authentication-Results: {}; auth=none\r\n",
            sanitize(hostname)
        ),
    }
}

/// The byte ranges of the header fields in `message`'s header section, each
/// with its continuation lines and line end. The section ends at the first empty
/// line; a line is a continuation when it starts with a space or a tab.
fn header_fields(message: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut fields: Vec<std::ops::Range<usize>> = Vec::new();
    let mut line_start = 0;
    while line_start < message.len() {
        let line_end = message[line_start..]
            .iter()
            .position(|&byte| byte == b'\n')
            .map_or(message.len(), |idx| line_start + idx + 1);
        let line = &message[line_start..line_end];
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.is_empty() {
            break;
        }
        match fields.last_mut() {
            Some(field) if matches!(content[0], b' ' | b'\t') => field.end = line_end,
            _ => fields.push(line_start..line_end),
        }
        line_start = line_end;
    }
    fields
}

/// The authserv-id of an `Authentication-Results` field (RFC 8601 §2.2: the
/// first token or quoted string after the colon, past comments and folding);
/// `None` for any other field or one without an id.
fn authserv_id(field: &[u8]) -> Option<Vec<u8>> {
    let colon_idx = field.iter().position(|&byte| byte == b':')?;
    if !field[..colon_idx]
        .trim_ascii_end()
        .eq_ignore_ascii_case(b"Authentication-Results")
    {
        return None;
    }
    let mut rest = &field[colon_idx + 1..];
    // Skips white space, line breaks of folding and (nested) comments.
    loop {
        rest = rest.trim_ascii_start();
        if rest.first() != Some(&b'(') {
            break;
        }
        let mut depth = 0usize;
        let mut idx = 0;
        while idx < rest.len() {
            match rest[idx] {
                b'\\' => idx += 1,
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            idx += 1;
        }
        rest = rest.get(idx + 1..).unwrap_or(&[]);
    }
    let id = if let Some(quoted) = rest.strip_prefix(b"\"") {
        let end_idx = quoted.iter().position(|&byte| byte == b'"')?;
        quoted[..end_idx].to_vec()
    } else {
        let end_idx = rest
            .iter()
            .position(|byte| byte.is_ascii_whitespace() || b";()".contains(byte))
            .unwrap_or(rest.len());
        rest[..end_idx].to_vec()
    };
    (!id.is_empty()).then_some(id)
}

/// RFC 8601 §5: removes every `Authentication-Results` field in the header
/// section of `buffer[start..]` that claims to come from `hostname`, since only
/// this node may say what it verified. Returns how many were removed.
///
/// A removal moves the rest of the message, body included, forward in place:
/// the one case where the body is copied. A message without such a field (every
/// honest one) is only scanned.
pub fn remove_forged_authentication_results(
    buffer: &mut bytes::BytesMut,
    start: usize,
    hostname: &str,
) -> usize {
    let forged: Vec<std::ops::Range<usize>> = header_fields(&buffer[start..])
        .into_iter()
        .filter(|field| {
            authserv_id(&buffer[start + field.start..start + field.end])
                .is_some_and(|id| id.eq_ignore_ascii_case(hostname.as_bytes()))
        })
        .map(|field| start + field.start..start + field.end)
        .collect();
    let mut write_idx = forged.first().map_or(buffer.len(), |field| field.start);
    for (forged_idx, field) in forged.iter().enumerate() {
        let kept_end = forged
            .get(forged_idx + 1)
            .map_or(buffer.len(), |next| next.start);
        buffer.copy_within(field.end..kept_end, write_idx);
        write_idx += kept_end - field.end;
    }
    buffer.truncate(write_idx);
    forged.len()
}

/// Whether the header section of `message` has a field called `name`
/// (case-insensitive). The header section ends at the first empty line.
pub fn has_header(message: &[u8], name: &str) -> bool {
    for line in message.split(|&byte| byte == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return false;
        }
        let Some(colon_idx) = line.iter().position(|&byte| byte == b':') else {
            continue;
        };
        if line[..colon_idx]
            .trim_ascii_end()
            .eq_ignore_ascii_case(name.as_bytes())
        {
            return true;
        }
    }
    false
}

/// Keeps peer-supplied text from breaking the header: no line breaks, no
/// parentheses (comments), nothing outside printable characters.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|character| {
            if character.is_control() || character.is_whitespace() || "()\\".contains(character) {
                '_'
            } else {
                character
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols() {
        assert_eq!(with_protocol(true, true, true, false), "ESMTPSA");
        assert_eq!(with_protocol(true, false, false, false), "ESMTP");
        assert_eq!(with_protocol(true, true, false, true), "UTF8SMTPS");
        assert_eq!(with_protocol(false, true, true, true), "SMTP");
    }

    #[test]
    fn received_header_is_folded_and_safe() {
        let header = received(&ReceivedFields {
            helo: "evil\r\nX-Injected: 1 (comment)",
            peer_ip: "127.0.0.1",
            hostname: "mx.example.org",
            protocol: "ESMTPS",
            id: "abc",
            single_recipient: Some("bob@example.org"),
            date: "Thu, 01 Jan 1970 00:00:00 +0000",
        });
        assert_eq!(
            header,
            "Received: from evil__X-Injected:_1__comment_ ([127.0.0.1])\r\n\tby mx.example.org with ESMTPS id abc\r\n\tfor <bob@example.org>;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
        assert_eq!(return_path(""), "Return-Path: <>\r\n");
        assert_eq!(message_id("u1", "mx"), "Message-ID: <u1@mx>\r\n");
    }

    #[test]
    fn authentication_results_fields() {
        assert_eq!(
            authentication_results("mx.test", Some("bob@example.org")),
            "Authentication-Results: mx.test;\r\n\tauth=pass smtp.auth=bob@example.org\r\n"
        );
        assert_eq!(
            authentication_results("mx.test", None),
            "Authentication-Results: mx.test; auth=none\r\n"
        );
    }

    /// Goal: exactly the fields that claim this node's name go, folded lines and
    /// all; those of other hosts, look-alikes and anything in the body stay, and the
    /// bytes before `start` are untouched. Method: a table of (message, expected).
    #[test]
    fn removes_only_authentication_results_claiming_our_name() {
        let table: &[(&str, &str)] = &[
            (
                "Subject: a\r\nAuthentication-Results: mx.test; auth=pass smtp.auth=x@y\r\n\r\nbody\r\n",
                "Subject: a\r\n\r\nbody\r\n",
            ),
            (
                "authentication-results : (forged) MX.Test\r\n\t1; auth=pass\r\nSubject: a\r\n\r\nb\r\n",
                "Subject: a\r\n\r\nb\r\n",
            ),
            (
                "Authentication-Results: \"mx.test\"; none\r\nA: 1\r\nAuthentication-Results: mx.test;\r\n auth=pass\r\nB: 2\r\n\r\n",
                "A: 1\r\nB: 2\r\n\r\n",
            ),
            (
                "Authentication-Results: other.test; auth=pass\r\nAuthentication-Results: mx.test.evil; none\r\nX-Authentication-Results: mx.test; none\r\n\r\n",
                "Authentication-Results: other.test; auth=pass\r\nAuthentication-Results: mx.test.evil; none\r\nX-Authentication-Results: mx.test; none\r\n\r\n",
            ),
            (
                "Subject: a\r\n\r\nAuthentication-Results: mx.test; none\r\n",
                "Subject: a\r\n\r\nAuthentication-Results: mx.test; none\r\n",
            ),
            ("Authentication-Results: mx.test; none", ""),
            (
                "Authentication-Results:\r\n\r\n",
                "Authentication-Results:\r\n\r\n",
            ),
            ("", ""),
        ];
        for &(message, expected) in table {
            let mut buffer = bytes::BytesMut::from(&b"Received: x\r\n"[..]);
            buffer.extend_from_slice(message.as_bytes());
            let n_removed = remove_forged_authentication_results(&mut buffer, 13, "mx.test");
            assert_eq!(
                String::from_utf8(buffer.to_vec()).unwrap(),
                format!("Received: x\r\n{expected}"),
                "{message:?}"
            );
            let claims = |text: &str| text.to_lowercase().matches("mx.test").count();
            assert_eq!(n_removed, claims(message) - claims(expected), "{message:?}");
        }
    }

    #[test]
    fn finds_headers_only_in_the_header_section() {
        let table: &[(&[u8], bool)] = &[
            (b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody", true),
            (b"message-id : <a@b>\r\n\r\n", true),
            (b"Subject: x\r\n\r\nMessage-ID: <a@b>\r\n", false),
            (b"\r\nMessage-ID: <a@b>\r\n", false),
            (b"X-Message-ID: <a@b>\r\n\r\n", false),
            (b"", false),
        ];
        for &(message, expected) in table {
            assert_eq!(
                has_header(message, "Message-ID"),
                expected,
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
    }
}
