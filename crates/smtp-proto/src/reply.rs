//! Server replies: their encoding, and every reply the session sends, in one place.
//!
//! Codes follow RFC 5321 §4.2 and the enhanced status codes RFC 3463 / RFC 5248,
//! which RFC 2034 §3 puts on every reply except the greeting and the HELO/EHLO reply.

use std::fmt::Write as _;

use crate::SmtpError;

/// One (possibly multi-line) reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The RFC 3463 enhanced status code, e.g. `"5.1.1"`.
    pub status: Option<&'static str>,
    /// At least one line; none contains CR or LF.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Reply {
        Reply::build(code, Some(status), vec![text.into()])
    }

    fn build(code: u16, status: Option<&'static str>, lines: Vec<String>) -> Reply {
        assert!(
            (200..600).contains(&code),
            "reply code out of range: {code}"
        );
        assert!(!lines.is_empty());
        assert!(
            lines.iter().all(|line| !line.contains(['\r', '\n'])),
            "reply text holds a line break"
        );
        if let Some(status) = status {
            assert_eq!(
                status.as_bytes()[0],
                b'0' + (code / 100) as u8,
                "status class must match the code"
            );
        }
        Reply {
            code,
            status,
            lines,
        }
    }

    /// A 2yz/3yz reply is positive; 4yz and 5yz tell the client something failed.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Appends the wire form to `out`: `code-text` for all but the last line,
    /// `code text` for the last (RFC 5321 §4.2.1).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut text = String::new();
        for (line_idx, line) in self.lines.iter().enumerate() {
            let separator = if line_idx + 1 == self.lines.len() {
                ' '
            } else {
                '-'
            };
            write!(text, "{}{}", self.code, separator).expect("writing to a string");
            if let Some(status) = self.status {
                text.push_str(status);
                if !line.is_empty() {
                    text.push(' ');
                }
            }
            text.push_str(line);
            text.push_str("\r\n");
        }
        out.extend_from_slice(text.as_bytes());
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

// The catalogue. Names say when the reply is sent, not what its code is.

pub fn greeting(hostname: &str) -> Reply {
    Reply::build(220, None, vec![format!("{hostname} ESMTP chordmail ready")])
}

pub fn helo(hostname: &str, client: &str) -> Reply {
    Reply::build(250, None, vec![format!("{hostname} greets {client}")])
}

/// The EHLO reply: the greeting line, then one keyword per line (RFC 5321 §4.1.1.1).
pub fn ehlo(hostname: &str, client: &str, keywords: Vec<String>) -> Reply {
    let mut lines = vec![format!("{hostname} greets {client}")];
    lines.extend(keywords);
    Reply::build(250, None, lines)
}

pub fn ok() -> Reply {
    Reply::new(250, "2.0.0", "OK")
}

pub fn sender_ok() -> Reply {
    Reply::new(250, "2.1.0", "sender OK")
}

pub fn recipient_ok() -> Reply {
    Reply::new(250, "2.1.5", "recipient OK")
}

pub fn delivered(queue_id: &str) -> Reply {
    Reply::new(250, "2.0.0", format!("OK, stored as {queue_id}"))
}

pub fn bye(hostname: &str) -> Reply {
    Reply::new(221, "2.0.0", format!("{hostname} closing connection"))
}

pub fn help() -> Reply {
    Reply::new(
        214,
        "2.0.0",
        "commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP AUTH STARTTLS",
    )
}

/// RFC 5321 §3.5.3: 252 when the server will not say whether a mailbox exists.
pub fn cannot_vrfy() -> Reply {
    Reply::new(
        252,
        "2.5.0",
        "cannot VRFY user, but will accept the message and attempt delivery",
    )
}

pub fn start_data() -> Reply {
    Reply::build(
        354,
        None,
        vec!["end data with <CR><LF>.<CR><LF>".to_owned()],
    )
}

pub fn ready_for_tls() -> Reply {
    Reply::new(220, "2.0.0", "ready to start TLS")
}

/// RFC 4954 §4: a server challenge, base64 text (possibly empty).
pub fn auth_challenge(challenge_base64: &str) -> Reply {
    Reply::build(334, None, vec![challenge_base64.to_owned()])
}

pub fn auth_succeeded() -> Reply {
    Reply::new(235, "2.7.0", "authentication succeeded")
}

/// RFC 4954 §6: 535 5.7.8 for wrong credentials.
pub fn auth_failed() -> Reply {
    Reply::new(535, "5.7.8", "authentication credentials invalid")
}

/// RFC 4954 §6: AUTH before STARTTLS on a connection where passwords may not go
/// in clear text.
pub fn encryption_required() -> Reply {
    Reply::new(
        538,
        "5.7.11",
        "Encryption required for requested authentication mechanism",
    )
}

/// docs/DESIGN.md §10: a sender in a served domain that is not the login
/// (RFC 3463 5.7.1, "delivery not authorized").
pub fn sender_not_owned() -> Reply {
    Reply::new(
        553,
        "5.7.1",
        "Sender address rejected: not owned by the authenticated user",
    )
}

/// The same refusal for a session that did not log in at all, saying how to.
pub fn sender_needs_login() -> Reply {
    Reply::new(
        553,
        "5.7.1",
        "Sender address rejected: not owned by the authenticated user; authenticate (AUTH) to send as this address",
    )
}

pub fn auth_unavailable() -> Reply {
    Reply::new(454, "4.7.0", "temporary authentication failure")
}

pub fn unknown_user() -> Reply {
    Reply::new(550, "5.1.1", "no such user here")
}

/// No open relay: a domain the ring does not serve is refused, authenticated or not.
pub fn relay_denied() -> Reply {
    Reply::new(550, "5.7.1", "relaying denied: domain not served here")
}

/// RFC 5321 §4.5.3.1.8: 452 for too many recipients, so the client sends the rest later.
pub fn too_many_recipients() -> Reply {
    Reply::new(452, "4.5.3", "too many recipients")
}

/// RFC 1870 §6: SIZE= above our limit at MAIL, or a body that grew past it.
pub fn message_too_large() -> Reply {
    Reply::new(
        552,
        "5.3.4",
        "message size exceeds fixed maximum message size",
    )
}

pub fn temporary_failure() -> Reply {
    Reply::new(451, "4.3.0", "temporary failure, please try again later")
}

pub fn permanent_failure() -> Reply {
    Reply::new(554, "5.3.0", "message could not be stored")
}

pub fn bad_sequence(text: &str) -> Reply {
    Reply::new(503, "5.5.1", text.to_owned())
}

pub fn no_valid_recipients() -> Reply {
    Reply::new(554, "5.5.1", "no valid recipients")
}

pub fn tls_unavailable() -> Reply {
    Reply::new(454, "4.7.0", "TLS not available")
}

pub fn mechanism_unsupported() -> Reply {
    Reply::new(504, "5.5.4", "unrecognised authentication mechanism")
}

/// RFC 6531 §3.7.4.2: a non-ASCII address without the SMTPUTF8 parameter.
pub fn utf8_not_permitted() -> Reply {
    Reply::new(553, "5.6.7", "non-ASCII address requires SMTPUTF8")
}

/// RFC 5321 §4.2.2: 421 closes the session.
pub fn too_many_errors() -> Reply {
    Reply::new(421, "4.7.0", "too many errors, closing connection")
}

pub fn idle_timeout(hostname: &str) -> Reply {
    Reply::new(
        421,
        "4.4.2",
        format!("{hostname} idle timeout, closing connection"),
    )
}

pub fn too_many_connections(hostname: &str) -> Reply {
    Reply::new(
        421,
        "4.3.2",
        format!("{hostname} too many connections, try again later"),
    )
}

/// docs/DESIGN.md §10: past the per-client connection budget; 4.7.0 (a security
/// policy, RFC 3463) where the node's own limit says 4.3.2.
pub fn too_many_connections_from_client(hostname: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!("{hostname} too many connections from your address, try again later"),
    )
}

pub fn shutting_down(hostname: &str) -> Reply {
    Reply::new(421, "4.3.2", format!("{hostname} shutting down"))
}

/// The reply for each input error (RFC 5321 §4.2.4, §4.5.3.1.10; RFC 4954 §4).
pub fn for_error(error: &SmtpError) -> Reply {
    match error {
        SmtpError::LineTooLong | SmtpError::TextLineTooLong => {
            Reply::new(500, "5.5.2", "line too long")
        }
        SmtpError::MessageTooLarge => message_too_large(),
        SmtpError::UnknownCommand => Reply::new(500, "5.5.2", "command unrecognised"),
        SmtpError::NotImplemented => Reply::new(502, "5.5.1", "command not implemented"),
        SmtpError::Syntax(expected) => Reply::new(501, "5.5.4", format!("syntax: {expected}")),
        SmtpError::BadAddress => Reply::new(553, "5.1.3", "bad address syntax"),
        SmtpError::UnsupportedParameter => {
            Reply::new(555, "5.5.4", "parameter not recognised or not implemented")
        }
        SmtpError::NotUtf8 => Reply::new(501, "5.5.2", "command line is not valid UTF-8"),
        SmtpError::AuthCancelled => Reply::new(501, "5.0.0", "authentication cancelled"),
        SmtpError::AuthMalformed => Reply::new(501, "5.5.2", "malformed authentication response"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_single_and_multi_line() {
        assert_eq!(
            unknown_user().to_bytes(),
            b"550 5.1.1 no such user here\r\n"
        );
        assert_eq!(
            start_data().to_bytes(),
            b"354 end data with <CR><LF>.<CR><LF>\r\n"
        );
        assert_eq!(auth_challenge("").to_bytes(), b"334 \r\n");
        let reply = ehlo("mx", "client", vec!["PIPELINING".into(), "SIZE 10".into()]);
        assert_eq!(
            reply.to_bytes(),
            b"250-mx greets client\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }
}
