//! The DSN (RFC 3464) read back part by part, and the bounce-loop guard.

use cm_relay::{DsnFailure, DsnReport, dsn, is_bounce, should_bounce};
use cm_types::Address;

const ORIGINAL: &[u8] = b"From: Alice <alice@a.test>\r\nTo: gone@b.test\r\nSubject: hello\r\nMessage-ID: <1@a.test>\r\n\r\nThe body stays at home.\r\n";

/// The header block of a MIME entity and its body.
fn split_entity(entity: &str) -> (&str, &str) {
    entity
        .split_once("\r\n\r\n")
        .expect("an empty line after the headers")
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.split("\r\n").find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Goal: the DSN is a `multipart/report` whose three parts are the text for people,
/// the `message/delivery-status` fields per recipient and the original headers
/// without the body, from MAILER-DAEMON, auto-replied, with CRLF line ends only.
/// Method: write one for two failures and split it at its boundary.
#[test]
fn dsn_has_the_three_parts_of_rfc_3464() {
    let sender = Address::parse("alice@a.test").unwrap();
    let gone = Address::parse("gone@b.test").unwrap();
    let late = Address::parse("late@b.test").unwrap();
    let failures = [
        DsnFailure {
            recipient: &gone,
            status: "5.1.1",
            diagnostic: "550 5.1.1 <gone@b.test>: user unknown",
        },
        DsnFailure {
            recipient: &late,
            status: "4.4.7",
            diagnostic: "delivery time expired\r\nInjected: header",
        },
    ];
    let report = DsnReport {
        reporting_host: "relay.a.test",
        date: "Sun, 29 Nov 2026 16:00:00 +0000",
        arrival_date: Some("Sat, 28 Nov 2026 16:00:00 +0000"),
        sender: &sender,
        failures: &failures,
        original_message: ORIGINAL,
    };
    let bytes = dsn(&report);
    assert_eq!(bytes, dsn(&report), "the same report gives the same bytes");
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(!text.replace("\r\n", "").contains('\n') && !text.replace("\r\n", "").contains('\r'));
    assert!(text.split("\r\n").all(|line| line.len() <= 998));

    let (headers, body) = split_entity(&text);
    let unfolded = headers.replace("\r\n\t", " ");
    assert_eq!(
        header(&unfolded, "From"),
        Some("Mail Delivery System <MAILER-DAEMON@relay.a.test>")
    );
    assert_eq!(header(&unfolded, "To"), Some("<alice@a.test>"));
    assert_eq!(header(&unfolded, "Auto-Submitted"), Some("auto-replied"));
    assert_eq!(
        header(&unfolded, "Date"),
        Some("Sun, 29 Nov 2026 16:00:00 +0000")
    );
    assert!(
        header(&unfolded, "Message-ID")
            .unwrap()
            .ends_with("@relay.a.test>")
    );
    let content_type = header(&unfolded, "Content-Type").unwrap();
    assert!(
        content_type.starts_with("multipart/report; report-type=delivery-status;"),
        "{content_type}"
    );
    let boundary = content_type
        .split("boundary=\"")
        .nth(1)
        .unwrap()
        .trim_end_matches('"');

    let after_close = body
        .split(&format!("\r\n--{boundary}--\r\n"))
        .collect::<Vec<_>>();
    assert_eq!(after_close.len(), 2, "one closing boundary");
    assert_eq!(after_close[1], "", "nothing after the closing boundary");
    let parts: Vec<&str> = after_close[0]
        .split(&format!("--{boundary}\r\n"))
        .skip(1)
        .collect();
    assert_eq!(parts.len(), 3);

    let (human_headers, human) = split_entity(parts[0]);
    assert_eq!(
        header(human_headers, "Content-Type"),
        Some("text/plain; charset=us-ascii")
    );
    assert!(human.contains("<gone@b.test>: 550 5.1.1 <gone@b.test>: user unknown"));

    let (status_headers, status) = split_entity(parts[1]);
    assert_eq!(
        header(status_headers, "Content-Type"),
        Some("message/delivery-status")
    );
    let groups: Vec<&str> = status.trim_end().split("\r\n\r\n").collect();
    assert_eq!(
        groups.len(),
        3,
        "per-message fields, then one group per recipient"
    );
    assert_eq!(
        header(groups[0], "Reporting-MTA"),
        Some("dns; relay.a.test")
    );
    assert_eq!(
        header(groups[0], "Arrival-Date"),
        Some("Sat, 28 Nov 2026 16:00:00 +0000")
    );
    assert_eq!(
        header(groups[1], "Final-Recipient"),
        Some("rfc822; gone@b.test")
    );
    assert_eq!(header(groups[1], "Action"), Some("failed"));
    assert_eq!(header(groups[1], "Status"), Some("5.1.1"));
    assert_eq!(
        header(groups[1], "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 <gone@b.test>: user unknown")
    );
    assert_eq!(
        header(groups[2], "Final-Recipient"),
        Some("rfc822; late@b.test")
    );
    assert_eq!(header(groups[2], "Status"), Some("4.4.7"));
    assert_eq!(
        header(groups[2], "Diagnostic-Code"),
        Some("X-chordmail; delivery time expired??Injected: header")
    );
    assert_eq!(
        header(groups[2], "Injected"),
        None,
        "a diagnostic cannot add a field"
    );

    let (original_headers, original) = split_entity(parts[2]);
    assert_eq!(
        header(original_headers, "Content-Type"),
        Some("text/rfc822-headers")
    );
    assert!(
        original.starts_with("From: Alice <alice@a.test>\r\nTo: gone@b.test\r\nSubject: hello\r\n")
    );
    assert!(
        !text.contains("The body stays at home."),
        "the body is not returned"
    );

    assert!(is_bounce(&bytes));
    assert!(
        !should_bounce(Some(&sender), &bytes),
        "a DSN is never bounced"
    );
}

/// Goal: only a message with a sender that is not itself a DSN may be bounced.
#[test]
fn bounces_go_only_to_real_senders_of_ordinary_mail() {
    let sender = Address::parse("alice@a.test").unwrap();
    assert!(should_bounce(Some(&sender), ORIGINAL));
    assert!(!should_bounce(None, ORIGINAL), "never to <>");
    assert!(!is_bounce(ORIGINAL));
}
