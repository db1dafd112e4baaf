//! Whole conversations against the state machine, without I/O.

use super::*;
use crate::command::CommandReader;

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.test".into(),
        limits: SmtpLimits::default(),
        tls_available: true,
    }
}

/// Parses `line` and gives the session the command; answers the shell's questions
/// with `accept` (recipients in domain "example.org" whose local part is not
/// "nobody" exist) and returns the code of the reply the client would see.
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
        InputMode::Data => panic!("feed data with DataReceiver"),
    };
    resolve(session, step)
}

fn resolve(session: &mut Session, step: Step) -> u16 {
    let step = match step {
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
            ("MAIL FROM:<a@example.org>\r\n", 250),
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
            ("MAIL FROM:<a@example.org>\r\n", 503),
            ("DATA\r\n", 503),
            ("NOOP\r\n", 250),
            ("HELO c\r\n", 250),
            ("DATA\r\n", 503),
        ],
        &[
            ("EHLO c\r\n", 250),
            ("MAIL FROM:<a@example.org>\r\n", 250),
            ("MAIL FROM:<a@example.org>\r\n", 503),
            ("DATA\r\n", 554),
        ],
        // Policy.
        &[
            ("EHLO c\r\n", 250),
            ("MAIL FROM:<a@example.org> SIZE=99999999999\r\n", 552),
            ("MAIL FROM:<a@example.org> SIZE=1000\r\n", 250),
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
            ("MAIL FROM:<jürgen@example.org>\r\n", 553),
            ("MAIL FROM:<jürgen@example.org> SMTPUTF8\r\n", 250),
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
            ("RCPT TO:<x@elsewhere.net>\r\n", 550),
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
    let mut session = Session::new(SessionConfig { limits, ..config() });
    say(&mut session, "EHLO c\r\n");
    say(&mut session, "MAIL FROM:<a@example.org>\r\n");
    assert_eq!(say(&mut session, "RCPT TO:<r1@example.org>\r\n"), 250);
    assert_eq!(say(&mut session, "RCPT TO:<r2@example.org>\r\n"), 250);
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

#[test]
fn data_end_hands_over_the_envelope() {
    let mut session = Session::new(config());
    say(&mut session, "EHLO client.test\r\n");
    say(&mut session, "MAIL FROM:<a@example.org> SMTPUTF8\r\n");
    say(&mut session, "RCPT TO:<b@example.org>\r\n");
    say(&mut session, "RCPT TO:<c@example.org>\r\n");
    say(&mut session, "DATA\r\n");
    assert_eq!(session.input_mode(), InputMode::Data);
    let Step::Deliver(delivery) = session.data_end(Ok(())) else {
        panic!("deliver expected")
    };
    assert_eq!(
        delivery,
        Delivery {
            reverse_path: "a@example.org".into(),
            recipients: vec![
                Address::parse("b@example.org").unwrap(),
                Address::parse("c@example.org").unwrap()
            ],
            helo: "client.test".into(),
            protocol: "UTF8SMTP",
        }
    );
    assert!(
        matches!(session.delivery_verdict(DeliveryVerdict::TemporaryFailure), Step::Reply(ref reply) if reply.code == 451)
    );
    assert_eq!(
        say(&mut session, "RCPT TO:<b@example.org>\r\n"),
        503,
        "the transaction is over"
    );

    say(&mut session, "MAIL FROM:<a@example.org>\r\n");
    say(&mut session, "RCPT TO:<b@example.org>\r\n");
    say(&mut session, "DATA\r\n");
    assert!(
        matches!(session.data_end(Err(SmtpError::MessageTooLarge)), Step::Reply(ref reply) if reply.code == 552)
    );
    assert_eq!(session.input_mode(), InputMode::Command);
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
    assert_eq!(say(&mut session, "MAIL FROM:<a@example.org>\r\n"), 503);
    let Step::Reply(ehlo) = session.command(Ok(Command::Ehlo("c".into()))) else {
        panic!()
    };
    assert!(!ehlo.lines.iter().any(|line| line == "STARTTLS"));
    assert_eq!(say(&mut session, "STARTTLS\r\n"), 503);
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
