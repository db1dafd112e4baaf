//! Delivery status notifications (RFC 3464) for recipients that failed for good,
//! and the check that keeps a notification from ever causing another.

use cm_types::{Address, hash64};

use crate::limits::{DIAGNOSTIC_BYTES_MAX, DSN_ORIGINAL_HEADERS_BYTES_MAX, HOST_BYTES_MAX};

/// One recipient to report as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DsnFailure<'a> {
    pub recipient: &'a Address,
    /// The RFC 3463 status, `5.1.1` for an unknown user, `4.4.7` for an expired entry.
    pub status: &'a str,
    /// The remote reply (`550 5.1.1 ...`, reported as `smtp;`) or our own reason.
    pub diagnostic: &'a str,
}

/// Everything a DSN says. The caller supplies the dates (RFC 5322 format) so that the
/// message depends on no clock and two replicas that bounce the same entry after a
/// takeover produce the same bytes, Message-ID included.
#[derive(Debug, Clone, Copy)]
pub struct DsnReport<'a> {
    /// Our host name: `Reporting-MTA` and the domain of `MAILER-DAEMON@`.
    pub reporting_host: &'a str,
    /// When the DSN is written (its `Date:`).
    pub date: &'a str,
    /// When the original message was accepted (`Arrival-Date`), when known.
    pub arrival_date: Option<&'a str>,
    /// The original sender, to whom the DSN goes. Never `<>`: see [`should_bounce`].
    pub sender: &'a Address,
    pub failures: &'a [DsnFailure<'a>],
    /// The original message; only its header block is returned (RFC 3462
    /// `text/rfc822-headers`), so a bounce never carries a large body back.
    pub original_message: &'a [u8],
}

/// Whether a failure for a message from `sender` may produce a DSN: never for the null
/// sender (RFC 5321 §4.5.5) and never for a message that is itself a DSN, so that two
/// servers cannot bounce bounces between them for ever.
pub fn should_bounce(sender: Option<&Address>, message: &[u8]) -> bool {
    sender.is_some() && !is_bounce(message)
}

/// Whether `message` is a delivery status notification: its top-level Content-Type is
/// `multipart/report` with `report-type=delivery-status`.
pub fn is_bounce(message: &[u8]) -> bool {
    let headers = header_block(message);
    let Some(content_type) = header_value(headers, "content-type") else {
        return false;
    };
    let content_type = content_type
        .to_ascii_lowercase()
        .replace([' ', '\t', '"'], "");
    content_type.starts_with("multipart/report")
        && content_type
            .split(';')
            .any(|parameter| parameter == "report-type=delivery-status")
}

/// Writes the DSN: `multipart/report; report-type=delivery-status` with a text part
/// for people, the `message/delivery-status` part and the original headers, from
/// `MAILER-DAEMON@reporting_host`, marked `Auto-Submitted: auto-replied` (RFC 3834).
/// Lines end in CRLF; the result is ready for DATA.
///
/// # Panics
/// When `failures` is empty: there is nothing to report.
pub fn dsn(report: &DsnReport<'_>) -> Vec<u8> {
    assert!(!report.failures.is_empty(), "a DSN without failures");
    let host = sanitized(report.reporting_host, HOST_BYTES_MAX);
    let date = sanitized(report.date, 100);
    let original_headers = original_headers(report.original_message);

    let mut human = format!(
        "This is the mail system at {host}.\r\n\r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         The delivery report and the headers of your message are attached.\r\n\r\n"
    );
    for failure in report.failures {
        let diagnostic = sanitized(failure.diagnostic, DIAGNOSTIC_BYTES_MAX);
        human.push_str(&format!(
            "<{}>: {diagnostic}\r\n",
            sanitized(failure.recipient.as_str(), 256)
        ));
    }

    let mut status = format!("Reporting-MTA: dns; {host}\r\n");
    if let Some(arrival_date) = report.arrival_date {
        status.push_str(&format!(
            "Arrival-Date: {}\r\n",
            sanitized(arrival_date, 100)
        ));
    }
    for failure in report.failures {
        let diagnostic = sanitized(failure.diagnostic, DIAGNOSTIC_BYTES_MAX);
        // A remote reply starts with its three-digit code; anything else is ours.
        let diagnostic_type = if is_smtp_reply(&diagnostic) {
            "smtp"
        } else {
            "X-chordmail"
        };
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\nDiagnostic-Code: {diagnostic_type}; {diagnostic}\r\n",
            sanitized(failure.recipient.as_str(), 256),
            sanitized(failure.status, 16),
        ));
    }

    let mut identity = Vec::new();
    for part in [
        report.reporting_host,
        report.date,
        report.sender.as_str(),
        &status,
    ] {
        identity.extend_from_slice(part.as_bytes());
        identity.push(0);
    }
    identity.extend_from_slice(report.original_message);
    let identity_hash = hash64(&identity);
    let boundary = (0u64..1000)
        .map(|salt| {
            format!(
                "=_chordmail_dsn_{:016x}",
                identity_hash ^ hash64(&salt.to_be_bytes())
            )
        })
        .find(|boundary| {
            let needle = boundary.as_bytes();
            ![human.as_bytes(), status.as_bytes(), original_headers]
                .iter()
                .any(|part| part.windows(needle.len()).any(|window| window == needle))
        })
        .expect("a boundary absent from finite text is found within a thousand tries");

    let mut out = Vec::with_capacity(human.len() + status.len() + original_headers.len() + 1024);
    let headers_transfer = if original_headers.is_ascii() {
        "7bit"
    } else {
        "8bit"
    };
    out.extend_from_slice(
        format!(
            "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
             To: <{sender}>\r\n\
             Subject: Undelivered Mail Returned to Sender\r\n\
             Date: {date}\r\n\
             Message-ID: <dsn.{identity_hash:016x}@{host}>\r\n\
             Auto-Submitted: auto-replied\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status;\r\n\
             \tboundary=\"{boundary}\"\r\n\
             \r\n\
             This is a MIME-encapsulated message.\r\n\
             \r\n\
             --{boundary}\r\n\
             Content-Description: Notification\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\
             \r\n\
             {human}\
             \r\n\
             --{boundary}\r\n\
             Content-Description: Delivery report\r\n\
             Content-Type: message/delivery-status\r\n\
             \r\n\
             {status}\
             \r\n\
             --{boundary}\r\n\
             Content-Description: Undelivered Message Headers\r\n\
             Content-Type: text/rfc822-headers\r\n\
             Content-Transfer-Encoding: {headers_transfer}\r\n\
             \r\n",
            sender = sanitized(report.sender.as_str(), 256),
        )
        .as_bytes(),
    );
    out.extend_from_slice(original_headers);
    if !original_headers.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn is_smtp_reply(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 4 && bytes[..3].iter().all(u8::is_ascii_digit) && matches!(bytes[3], b' ' | b'-')
}

/// One line of printable ASCII at most `bytes_max` long: a remote reply or an address
/// must not break a header line, start a new one or smuggle in a MIME boundary line.
fn sanitized(text: &str, bytes_max: usize) -> String {
    text.chars()
        .take(bytes_max)
        .map(|c| match c {
            ' '..='~' => c,
            '\t' => ' ',
            _ => '?',
        })
        .collect()
}

/// The header block of `message` (without the empty line that ends it), cut at a
/// line boundary to at most [`DSN_ORIGINAL_HEADERS_BYTES_MAX`].
fn original_headers(message: &[u8]) -> &[u8] {
    let headers = header_block(message);
    if headers.len() <= DSN_ORIGINAL_HEADERS_BYTES_MAX {
        return headers;
    }
    let cut = &headers[..DSN_ORIGINAL_HEADERS_BYTES_MAX];
    match cut.iter().rposition(|&b| b == b'\n') {
        Some(newline_idx) => &cut[..=newline_idx],
        None => &[],
    }
}

/// The bytes before the first empty line (the whole message when there is none).
fn header_block(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") || message.starts_with(b"\n") {
        return &[];
    }
    let end = message
        .windows(2)
        .position(|window| window == b"\n\n")
        .map(|idx| idx + 1)
        .into_iter()
        .chain(
            message
                .windows(4)
                .position(|window| window == b"\r\n\r\n")
                .map(|idx| idx + 2),
        )
        .min()
        .unwrap_or(message.len());
    &message[..end]
}

/// The unfolded value of the first header called `name` (lower case), if any.
fn header_value(headers: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(headers);
    let mut lines = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .peekable();
    while let Some(line) = lines.next() {
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        if !field.trim_end().eq_ignore_ascii_case(name) {
            continue;
        }
        let mut value = value.trim().to_string();
        while let Some(continuation) = lines.next_if(|next| next.starts_with([' ', '\t'])) {
            value.push(' ');
            value.push_str(continuation.trim());
        }
        return Some(value);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_block_ends_at_the_first_empty_line() {
        assert_eq!(
            header_block(b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\n"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_block(b"A: 1\nB: 2\n\nbody"), b"A: 1\nB: 2\n");
        assert_eq!(header_block(b"A: 1\r\n"), b"A: 1\r\n");
        assert_eq!(header_block(b"\r\nbody"), b"");
    }

    #[test]
    fn is_bounce_reads_folded_and_quoted_content_types() {
        let folded = b"Subject: x\r\nContent-Type: multipart/report;\r\n\treport-type=\"delivery-status\";\r\n boundary=b\r\n\r\n";
        assert!(is_bounce(folded));
        assert!(is_bounce(
            b"content-type: Multipart/Report; Report-Type=Delivery-Status\r\n\r\n"
        ));
        assert!(!is_bounce(
            b"Content-Type: multipart/report; report-type=disposition-notification\r\n\r\n"
        ));
        assert!(!is_bounce(b"Content-Type: text/plain\r\n\r\nContent-Type: multipart/report; report-type=delivery-status\r\n"));
        assert!(!is_bounce(b"Subject: no content type\r\n\r\n"));
    }

    #[test]
    fn sanitized_keeps_one_printable_line() {
        assert_eq!(
            sanitized("550 bad\r\nBcc: x\tz\u{e9}", 100),
            "550 bad??Bcc: x z?"
        );
        assert_eq!(sanitized("abcdef", 3), "abc");
    }
}
