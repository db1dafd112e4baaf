//! Trace and identification headers the server adds to a message it accepts.
//!
//! Pure functions: the shell supplies the clock reading, the peer address and the
//! unique parts; this module only formats them, and the session puts them in front
//! of the body it receives (RFC 5321 §4.4).

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
