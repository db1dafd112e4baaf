//! Whole conversations against the state machine, without I/O.

use super::*;
use crate::command::CommandReader;

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.test".into(),
        limits: SmtpLimits::default(),
        tls_available: true,
        plaintext_allowed: true,
        sender_login_match: true,
        peer_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)),
        session_id: "s1".into(),
    }
}

/// A session under `limits` past EHLO and MAIL FROM:<a@example.net>, with the
/// recipients `local_parts` (at example.org) accepted.
fn in_transaction(limits: SmtpLimits, local_parts: &[&str]) -> Session {
    let mut session = Session::new(SessionConfig { limits, ..config() });
    assert_eq!(say(&mut session, "EHLO client.test\r\n"), 250);
    assert_eq!(say(&mut session, "MAIL FROM:<a@example.net>\r\n"), 250);
    for local_part in local_parts {
        let rcpt = format!("RCPT TO:<{local_part}@example.org>\r\n");
        assert_eq!(say(&mut session, &rcpt), 250, "{rcpt}");
    }
    session
}

const ARRIVAL: Arrival = Arrival {
    unix_seconds: 951_782_400,
    nonce: 0xabc,
};

/// Sends DATA, starts receiving and feeds `wire` (the dot-stuffed message with
/// its terminator) split at `split_idx`; the step at the end of data.
fn send_message(session: &mut Session, wire: &[u8], split_idx: usize) -> Step {
    assert_eq!(say(session, "DATA\r\n"), 354);
    session.begin_data(ARRIVAL);
    let mut step = None;
    for mut piece in [&wire[..split_idx], &wire[split_idx..]] {
        if step.is_none() {
            step = session.feed_data(&mut piece);
        }
        assert!(piece.is_empty(), "nothing follows the terminating dot");
    }
    step.expect("the terminating dot was fed")
}

/// Parses `line` and gives the session the command; answers the shell's questions
/// (the served domain is "example.org", where every local part but "nobody"
/// exists) and returns the code of the reply the client would see.
fn say(session: &mut Session, line: &str) -> u16 {
    let mut reader = CommandReader::new(session.limits());
    let mut input = line.as_bytes();
    let step = match session.input_mode() {
        InputMode::Command => {
            session.command(reader.next_command(&mut input).expect("a whole line"))
        }
        InputMode::SaslResponse => {
            session.sasl_response(reader.next_sasl_line(&mut input).expect("a whole line"))
        }
        InputMode::Data => panic!("feed data with send_message"),
    };
    resolve(session, step)
}

fn resolve(session: &mut Session, step: Step) -> u16 {
    let step = match step {
        Step::VerifySender(from, address) => {
            let verdict = if address.domain() == "example.org" {
                SenderVerdict::DomainServed
            } else {
                SenderVerdict::DomainNotServed
            };
            session.sender_verdict(from, address, verdict)
        }
        Step::VerifyRecipient(address) => {
            let verdict = if address.domain() != "example.org" {
                RecipientVerdict::DomainNotServed
            } else if address.local_part() == "nobody" {
                RecipientVerdict::UnknownUser
            } else {
                RecipientVerdict::Accepted
            };
            session.recipient_verdict(address, verdict)
        }
        Step::Authenticate(credentials) => {
            let verdict = if credentials.password == b"right" {
                AuthVerdict::Accepted(Address::parse(&credentials.identity).unwrap())
            } else {
                AuthVerdict::Rejected
            };
            session.auth_verdict(verdict)
        }
        other => other,
    };
    match step {
        Step::Reply(reply)
        | Step::Close(reply)
        | Step::StartData(reply)
        | Step::StartTls(reply) => reply.code,
        other => panic!("unresolved step {other:?}"),
    }
}

/// Goal: each command gets the RFC's reply in each state. Method: scripts of
/// (line, expected code), each run on a fresh session.
#[test]
fn scripted_conversations() {
    let scripts: &[&[(&str, u16)]] = &[
        // The happy path, and RSET mid-transaction.
        &[
            ("EHLO c\r\n", 250),
            ("MAIL FROM:<a@example.net>\r\n", 250),
            ("RCPT TO:<b@example.org>\r\n", 250),
            ("RSET\r\n", 250),
            ("RCPT TO:<b@example.org>\r\n", 503),
            ("MAIL FROM:<>\r\n", 250),
            ("RCPT TO:<b@example.org>\r\n", 250),
            ("RCPT TO:<B@example.org>\r\n", 250),
            ("DATA\r\n", 354),
        ],
        // Order of commands.
        &[
            ("MAIL FROM:<a@example.net>\r\n", 503),
            ("DATA\r\n", 503),
            ("NOOP\r\n", 250),
            ("HELO c\r\n", 250),
            ("DATA\r\n", 503),
        ],
        &[
            ("EHLO c\r\n", 250),
            ("MAIL FROM:<a@example.net>\r\n", 250),
            ("MAIL FROM:<a@example.net>\r\n", 503),
            ("DATA\r\n", 554),
        ],
        // Policy.
        &[
            ("EHLO c\r\n", 250),
            ("MAIL FROM:<a@example.net> SIZE=99999999999\r\n", 552),
            ("MAIL FROM:<a@example.net> SIZE=1000\r\n", 250),
            ("RCPT TO:<nobody@example.org>\r\n", 550),
            ("RCPT TO:<b@elsewhere.net>\r\n", 550),
            ("RCPT TO:<bad address>\r\n", 553),
            ("RCPT TO:<jürgen@example.org>\r\n", 553),
            ("VRFY b\r\n", 252),
            ("HELP\r\n", 214),
            ("STARTTLS\r\n", 503),
        ],
        &[
            ("EHLO c\r\n", 250),
            ("MAIL FROM:<jürgen@example.net>\r\n", 553),
            ("MAIL FROM:<jürgen@example.net> SMTPUTF8\r\n", 250),
            ("RCPT TO:<jürgen@example.org>\r\n", 250),
        ],
        // Authentication.
        &[
            ("AUTH PLAIN AGJAZXhhbXBsZS5vcmcAcmlnaHQ=\r\n", 503),
            ("EHLO c\r\n", 250),
            ("AUTH CRAM-MD5\r\n", 504),
            ("AUTH PLAIN AGJAZXhhbXBsZS5vcmcAd3Jvbmc=\r\n", 535),
            ("AUTH PLAIN\r\n", 334),
            ("*\r\n", 501),
            ("AUTH LOGIN\r\n", 334),
            ("YkBleGFtcGxlLm9yZw==\r\n", 334),
            ("cmlnaHQ=\r\n", 235),
            ("AUTH PLAIN AGJAZXhhbXBsZS5vcmcAcmlnaHQ=\r\n", 503),
            ("MAIL FROM:<b@example.org>\r\n", 250),
            // Authenticated: another domain is accepted, to be relayed (the
            // unauthenticated case is refused under "Policy" above).
            ("RCPT TO:<x@elsewhere.net>\r\n", 250),
            ("QUIT\r\n", 221),
        ],
        &[("EHLO c\r\n", 250), ("STARTTLS\r\n", 220)],
    ];
    for (script_idx, script) in scripts.iter().enumerate() {
        let mut session = Session::new(config());
        for &(line, code_expected) in script.iter() {
            assert_eq!(
                say(&mut session, line),
                code_expected,
                "script {script_idx}: {line:?}"
            );
        }
    }
}

#[test]
fn too_many_recipients_is_temporary() {
    let limits = SmtpLimits {
        recipients_max: 2,
        ..SmtpLimits::default()
    };
    let mut session = in_transaction(limits, &["r1", "r2"]);
    assert_eq!(say(&mut session, "RCPT TO:<r3@example.org>\r\n"), 452);
    assert_eq!(
        say(&mut session, "RCPT TO:<r1@example.org>\r\n"),
        250,
        "a duplicate is no new recipient"
    );
}

#[test]
fn bad_commands_in_a_row_close_the_session() {
    let mut session = Session::new(config());
    for _ in 1..SmtpLimits::default().bad_commands_max {
        assert_eq!(say(&mut session, "BOGUS\r\n"), 500);
    }
    assert_eq!(
        say(&mut session, "NOOP\r\n"),
        250,
        "a good command resets the count"
    );
    for _ in 1..SmtpLimits::default().bad_commands_max {
        say(&mut session, "BOGUS\r\n");
    }
    let step = session.command(Err(SmtpError::UnknownCommand));
    assert!(
        matches!(step, Step::Close(ref reply) if reply.code == 421),
        "{step:?}"
    );
}

/// Goal: the core hands over the envelope and the message with its trace headers
/// in front (RFC 5321 §4.4) and its own Authentication-Results (RFC 8601), adding
/// a Message-ID only when the body has none and dropping an
/// Authentication-Results forged in its name, whatever the reads were. Method:
/// the same transaction split at every offset, with and without a Message-ID,
/// with and without a forged field.
#[test]
fn data_end_hands_over_the_message_with_trace_headers() {
    let trace = "Return-Path: <a@example.net>\r\n\
                 Received: from client.test ([192.0.2.7])\r\n\
                 \tby mx.test with UTF8SMTP id s1;\r\n\
                 \tTue, 29 Feb 2000 00:00:00 +0000\r\n\
                 Authentication-Results: mx.test; auth=none\r\n";
    let added_id = "Message-ID: <951782400.0000000000000abc@mx.test>\r\n";
    let table: [(&[u8], String); 3] = [
        (
            b"Subject: x\r\n\r\n.dot\r\n",
            format!("{trace}{added_id}Subject: x\r\n\r\n.dot\r\n"),
        ),
        (
            b"Message-ID: <mine@c>\r\n\r\nhi\r\n",
            format!("{trace}Message-ID: <mine@c>\r\n\r\nhi\r\n"),
        ),
        (
            b"Authentication-Results: mx.test;\r\n\tauth=pass smtp.auth=b@example.org\r\n\
              Subject: forged\r\n\r\nhi\r\n",
            format!("{trace}{added_id}Subject: forged\r\n\r\nhi\r\n"),
        ),
    ];
    for (body, expected) in table {
        let wire = crate::data::dot_stuff(body);
        for split_idx in 0..=wire.len() {
            let mut session = Session::new(config());
            say(&mut session, "EHLO client.test\r\n");
            say(&mut session, "MAIL FROM:<a@example.net> SMTPUTF8\r\n");
            say(&mut session, "RCPT TO:<b@example.org>\r\n");
            say(&mut session, "RCPT TO:<c@example.org>\r\n");
            let Step::Deliver(delivery) = send_message(&mut session, &wire, split_idx) else {
                panic!("deliver expected")
            };
            assert_eq!(delivery.reverse_path, "a@example.net");
            assert_eq!(
                delivery.recipients,
                [
                    Address::parse("b@example.org").unwrap(),
                    Address::parse("c@example.org").unwrap()
                ]
            );
            assert_eq!(
                String::from_utf8(delivery.message.to_vec()).unwrap(),
                expected,
                "split at {split_idx}"
            );
        }
    }
}

/// Goal: a single recipient is named in the Received header; after a delivery the
/// transaction is over; a broken limit is refused and the session goes on.
#[test]
fn after_the_end_of_data() {
    let mut session = Session::new(config());
    say(&mut session, "HELO client.test\r\n");
    say(&mut session, "MAIL FROM:<>\r\n");
    say(&mut session, "RCPT TO:<b@example.org>\r\n");
    let Step::Deliver(delivery) = send_message(&mut session, b"hi\r\n.\r\n", 0) else {
        panic!("deliver expected")
    };
    let message = String::from_utf8(delivery.message.to_vec()).unwrap();
    assert!(
        message.starts_with("Return-Path: <>\r\nReceived: from client.test ([192.0.2.7])\r\n\tby mx.test with SMTP id s1\r\n\tfor <b@example.org>;"),
        "{message}"
    );
    assert!(
        matches!(session.delivery_verdict(DeliveryVerdict::TemporaryFailure), Step::Reply(ref reply) if reply.code == 451)
    );
    assert_eq!(
        say(&mut session, "RCPT TO:<b@example.org>\r\n"),
        503,
        "the transaction is over"
    );

    let limits = SmtpLimits {
        message_bytes_max: 4,
        ..SmtpLimits::default()
    };
    let mut session = in_transaction(limits, &["b"]);
    assert!(
        matches!(send_message(&mut session, b"too long\r\n.\r\n", 3), Step::Reply(ref reply) if reply.code == 552)
    );
    assert_eq!(session.input_mode(), InputMode::Command);
    assert_eq!(say(&mut session, "NOOP\r\n"), 250);
}

#[test]
fn starttls_forgets_ehlo_and_auth() {
    let mut session = Session::new(config());
    say(&mut session, "EHLO c\r\n");
    say(&mut session, "AUTH PLAIN AGJAZXhhbXBsZS5vcmcAcmlnaHQ=\r\n");
    assert!(session.authenticated().is_some());
    assert_eq!(say(&mut session, "STARTTLS\r\n"), 220);
    session.tls_started();
    assert!(session.authenticated().is_none());
    assert_eq!(say(&mut session, "MAIL FROM:<a@example.net>\r\n"), 503);
    let Step::Reply(ehlo) = session.command(Ok(Command::Ehlo("c".into()))) else {
        panic!()
    };
    assert!(!ehlo.lines.iter().any(|line| line == "STARTTLS"));
    assert_eq!(say(&mut session, "STARTTLS\r\n"), 503);
}

/// The EHLO reply's keyword lines, without the greeting line.
fn ehlo_keywords(session: &mut Session) -> Vec<String> {
    let Step::Reply(ehlo) = session.command(Ok(Command::Ehlo("c".into()))) else {
        panic!("EHLO is answered")
    };
    ehlo.lines[1..].to_vec()
}

/// Goal: off loopback, AUTH is neither advertised nor accepted before STARTTLS
/// (538 5.7.11, RFC 4954 §6), and both are after it; the password sent too early
/// authenticates nobody. Method: one session through STARTTLS.
#[test]
fn auth_needs_tls_where_plaintext_is_not_allowed() {
    let mut session = Session::new(SessionConfig {
        plaintext_allowed: false,
        ..config()
    });
    let keywords = ehlo_keywords(&mut session);
    assert!(
        !keywords.iter().any(|keyword| keyword.starts_with("AUTH")),
        "{keywords:?}"
    );
    assert!(keywords.iter().any(|keyword| keyword == "STARTTLS"));
    let Step::Reply(refusal) = session.command(Ok(Command::Auth(AuthStart {
        mechanism: Mechanism::Plain,
        initial_response: Some("AGJAZXhhbXBsZS5vcmcAcmlnaHQ=".into()),
    }))) else {
        panic!("AUTH before STARTTLS is refused")
    };
    assert_eq!(
        refusal.to_bytes(),
        b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    );
    for line in ["AUTH LOGIN\r\n", "AUTH CRAM-MD5\r\n"] {
        assert_eq!(say(&mut session, line), 538, "{line:?}");
    }
    assert!(session.authenticated().is_none());
    assert_eq!(session.input_mode(), InputMode::Command);
    assert_eq!(say(&mut session, "STARTTLS\r\n"), 220);
    session.tls_started();
    let keywords = ehlo_keywords(&mut session);
    assert!(keywords.iter().any(|keyword| keyword == "AUTH PLAIN LOGIN"));
    assert_eq!(
        say(&mut session, "AUTH PLAIN AGJAZXhhbXBsZS5vcmcAcmlnaHQ=\r\n"),
        235
    );
    assert_eq!(
        session.authenticated().map(Address::as_str),
        Some("b@example.org")
    );
}

#[test]
fn ehlo_advertises_the_extensions() {
    let mut session = Session::new(SessionConfig {
        tls_available: false,
        ..config()
    });
    let Step::Reply(ehlo) = session.command(Ok(Command::Ehlo("c".into()))) else {
        panic!()
    };
    let text = String::from_utf8(ehlo.to_bytes()).unwrap();
    assert_eq!(
        text,
        "250-mx.test greets c\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
         250-ENHANCEDSTATUSCODES\r\n250-AUTH PLAIN LOGIN\r\n250 HELP\r\n"
    );
    assert_eq!(say(&mut session, "STARTTLS\r\n"), 454);
}

/// Goal: the delivered message is the receive buffer itself, not a copy of it,
/// with and without an added Message-ID. Method: note where the buffer's bytes
/// are before the terminating dot (which appends nothing), and compare with where
/// the delivered `Bytes` point.
#[test]
fn the_body_is_not_copied_at_the_end_of_data() {
    for (body, has_message_id) in [
        (&b"Message-ID: <m@c>\r\n\r\nhi\r\n"[..], true),
        (&b"Subject: s\r\n\r\nhi\r\n"[..], false),
    ] {
        let mut session = in_transaction(SmtpLimits::default(), &["b"]);
        assert_eq!(say(&mut session, "DATA\r\n"), 354);
        session.begin_data(ARRIVAL);
        assert!(session.feed_data(&mut &body[..]).is_none());
        let Phase::Data {
            incoming: Some(incoming),
            ..
        } = &session.phase
        else {
            panic!("receiving")
        };
        let buffer_start = incoming.buffer.as_ptr() as usize;
        let room_bytes = incoming.message_id_field.len();
        let Some(Step::Deliver(delivery)) = session.feed_data(&mut &b".\r\n"[..]) else {
            panic!("deliver expected")
        };
        let message_start = delivery.message.as_ptr() as usize;
        let expected_start = if has_message_id {
            buffer_start + room_bytes
        } else {
            buffer_start
        };
        assert_eq!(message_start, expected_start, "{body:?}");
        assert!(delivery.message.ends_with(body));
    }
}

/// The reply to `line` (a command) with the shell's questions answered as in
/// [`say`].
fn reply_to(session: &mut Session, line: &str) -> Reply {
    let mut reader = CommandReader::new(session.limits());
    let step = session.command(
        reader
            .next_command(&mut line.as_bytes())
            .expect("a whole line"),
    );
    match step {
        Step::VerifySender(from, address) => {
            let verdict = if address.domain() == "example.org" {
                SenderVerdict::DomainServed
            } else {
                SenderVerdict::DomainNotServed
            };
            match session.sender_verdict(from, address, verdict) {
                Step::Reply(reply) => reply,
                other => panic!("sender verdict answered {other:?}"),
            }
        }
        Step::Reply(reply) => reply,
        other => panic!("unexpected step {other:?}"),
    }
}

/// Goal: a MAIL FROM address in a served domain is accepted only from a session
/// authenticated as that very address (docs/DESIGN.md §10); `<>` and other
/// domains from anyone; a refused MAIL starts no transaction; the setting turns
/// the rule off. Method: a table of (logged in as, sender, expected reply), each
/// on a fresh session, then RCPT to see whether a transaction started.
#[test]
fn senders_in_served_domains_are_bound_to_the_login() {
    let needs_login = "553 5.7.1 Sender address rejected: not owned by the authenticated user; \
                       authenticate (AUTH) to send as this address\r\n";
    let not_owned = "553 5.7.1 Sender address rejected: not owned by the authenticated user\r\n";
    let sender_ok = "250 2.1.0 sender OK\r\n";
    let table: [(Option<&str>, &str, &str); 8] = [
        (None, "<b@example.org>", needs_login),
        (None, "<>", sender_ok),
        (None, "<b@example.net>", sender_ok),
        (Some("b@example.org"), "<b@example.org>", sender_ok),
        (Some("b@example.org"), "<B@Example.ORG> SIZE=10", sender_ok),
        (Some("b@example.org"), "<c@example.org>", not_owned),
        (Some("b@example.org"), "<>", sender_ok),
        (Some("b@example.org"), "<c@example.net>", sender_ok),
    ];
    for (login, sender, expected) in table {
        let mut session = Session::new(config());
        say(&mut session, "EHLO c\r\n");
        if let Some(login) = login {
            let token = format!("\0{login}\0right");
            let line = format!(
                "AUTH PLAIN {}\r\n",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, token)
            );
            assert_eq!(say(&mut session, &line), 235);
        }
        let reply = reply_to(&mut session, &format!("MAIL FROM:{sender}\r\n"));
        assert_eq!(
            String::from_utf8(reply.to_bytes()).unwrap(),
            expected,
            "{login:?} {sender}"
        );
        let rcpt_expected = if reply.code == 250 { 250 } else { 503 };
        assert_eq!(
            say(&mut session, "RCPT TO:<b@example.org>\r\n"),
            rcpt_expected,
            "{login:?} {sender}: a refused MAIL starts no transaction"
        );
    }

    let mut relaxed = Session::new(SessionConfig {
        sender_login_match: false,
        ..config()
    });
    say(&mut relaxed, "EHLO c\r\n");
    assert_eq!(
        reply_to(&mut relaxed, "MAIL FROM:<b@example.org>\r\n").code,
        250
    );
}

/// Goal: a session that logged in gets `auth=pass` with its login in
/// Authentication-Results; one from another host stays. Method: one delivery
/// after AUTH.
#[test]
fn authentication_results_name_the_login() {
    let mut session = Session::new(config());
    say(&mut session, "EHLO client.test\r\n");
    say(&mut session, "AUTH PLAIN AGJAZXhhbXBsZS5vcmcAcmlnaHQ=\r\n");
    say(&mut session, "MAIL FROM:<b@example.org>\r\n");
    say(&mut session, "RCPT TO:<c@example.org>\r\n");
    let body = b"Authentication-Results: other.test; auth=pass smtp.auth=x@y\r\n\r\nhi\r\n";
    let Step::Deliver(delivery) = send_message(&mut session, &crate::data::dot_stuff(body), 0)
    else {
        panic!("deliver expected")
    };
    let message = String::from_utf8(delivery.message.to_vec()).unwrap();
    assert!(
        message.contains(
            "+0000\r\nAuthentication-Results: mx.test;\r\n\tauth=pass smtp.auth=b@example.org\r\nMessage-ID: <"
        ),
        "{message}"
    );
    assert!(
        message.ends_with(std::str::from_utf8(body).unwrap()),
        "{message}"
    );
}
