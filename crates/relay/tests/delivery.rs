//! Delivery against a scripted SMTP server on loopback: per-recipient outcomes, one
//! connection for a batch, exact bytes, STARTTLS and its plain-text fallback, the
//! next MX host after a failure, and timeouts.

mod common;

use std::sync::Arc;

use cm_relay::{Envelope, OutboundMessage, RecipientOutcome, RelayConfig, deliver_batch};
use cm_types::Address;
use common::{FakeDns, Script, start, start_pair, tls_config};

fn address(text: &str) -> Address {
    Address::parse(text).unwrap()
}

fn envelope(sender: Option<&str>, recipients: &[&str]) -> Envelope {
    Envelope {
        sender: sender.map(address),
        recipients: recipients.iter().map(|text| address(text)).collect(),
    }
}

/// A configuration that routes `b.test` to `addr` with short timeouts.
fn routed_to(addr: std::net::SocketAddr) -> RelayConfig {
    let mut config = RelayConfig {
        hostname: "relay.a.test".to_string(),
        command_timeout_s: 2,
        data_timeout_s: 2,
        connect_timeout_s: 2,
        ..RelayConfig::default()
    };
    config.routes.insert("b.test".to_string(), addr.to_string());
    config.validate().unwrap();
    config
}

fn is_deferred(outcome: &RecipientOutcome) -> bool {
    matches!(outcome, RecipientOutcome::Deferred { .. })
}

const MESSAGE_WITH_DOTS: &[u8] = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: dots\r\n\r\n.\r\n..two\r\n.leading\r\nmiddle . dot\r\n\r\n.\r\n";

/// Goal: one connection carries several messages, each recipient gets its own
/// outcome (250, 550, 451), and the bytes arrive exactly.
/// Method: a server that refuses `gone@` with 550 and defers `later@` with 451; two
/// messages, the first with lines that start with dots, the second from `<>`.
#[tokio::test]
async fn batch_over_one_connection_with_per_recipient_outcomes() {
    let script = Script {
        rcpt_reply: Arc::new(|recipient| {
            Some(match recipient {
                "gone@b.test" => "550 5.1.1 <gone@b.test>: user unknown".to_string(),
                "later@b.test" => "451 4.2.0 mailbox busy".to_string(),
                _ => "250 2.1.5 ok".to_string(),
            })
        }),
        ..Script::default()
    };
    let server = start("127.0.0.1", 0, script).await;
    let config = routed_to(server.addr);
    let first = envelope(
        Some("alice@a.test"),
        &["bob@b.test", "gone@b.test", "later@b.test"],
    );
    let second = envelope(None, &["carol@b.test"]);
    let second_message = b"Subject: second\r\n\r\nno final line end";
    let batch = [
        OutboundMessage {
            envelope: &first,
            message: MESSAGE_WITH_DOTS,
        },
        OutboundMessage {
            envelope: &second,
            message: second_message,
        },
    ];

    let outcomes = deliver_batch(&config, &FakeDns::default(), "b.test", &batch).await;

    assert_eq!(outcomes.len(), 2);
    assert_eq!(
        outcomes[0][0],
        RecipientOutcome::Delivered {
            reply: "250 2.0.0 queued as 42".to_string()
        }
    );
    assert_eq!(
        outcomes[0][1],
        RecipientOutcome::Failed {
            reason: "550 5.1.1 <gone@b.test>: user unknown".to_string(),
            status: "5.1.1".to_string()
        }
    );
    assert_eq!(
        outcomes[0][2],
        RecipientOutcome::Deferred {
            reason: "451 4.2.0 mailbox busy".to_string()
        }
    );
    assert!(matches!(outcomes[1][0], RecipientOutcome::Delivered { .. }));

    let connections = server.connections();
    assert_eq!(connections.len(), 1, "both messages over one connection");
    let commands = &connections[0].commands;
    assert_eq!(commands[0], "EHLO relay.a.test");
    assert!(commands.contains(&"RSET".to_string()), "{commands:?}");
    assert_eq!(commands.last().unwrap(), "QUIT");
    let rcpts: Vec<&String> = commands
        .iter()
        .filter(|command| command.starts_with("RCPT"))
        .collect();
    assert_eq!(rcpts.len(), 4, "one RCPT per recipient: {rcpts:?}");

    let delivered = server.delivered();
    assert_eq!(delivered.len(), 2);
    assert_eq!(delivered[0].mail_from, "MAIL FROM:<alice@a.test>");
    assert_eq!(delivered[0].accepted_rcpts, vec!["bob@b.test"]);
    assert_eq!(
        delivered[0].data.as_deref(),
        Some(MESSAGE_WITH_DOTS),
        "bytes arrive exactly"
    );
    assert_eq!(delivered[1].mail_from, "MAIL FROM:<>");
    assert_eq!(
        delivered[1].data.as_deref(),
        Some(&b"Subject: second\r\n\r\nno final line end\r\n"[..])
    );
}

/// Goal: a 5xx to MAIL FROM fails every recipient; a 4xx to DATA defers them; a
/// 5xx to the final dot fails the accepted ones.
/// Method: three servers, each refusing at one step.
#[tokio::test]
async fn refusals_of_mail_data_and_final_dot_apply_to_the_whole_message() {
    let one = envelope(Some("alice@a.test"), &["bob@b.test", "carol@b.test"]);
    let batch = [OutboundMessage {
        envelope: &one,
        message: b"Subject: x\r\n\r\nhi\r\n",
    }];
    let cases = [
        (
            Script {
                mail_reply: "553 5.7.1 sender refused".to_string(),
                ..Script::default()
            },
            "5.7.1",
            true,
        ),
        (
            Script {
                data_reply: "451 4.3.0 try later".to_string(),
                ..Script::default()
            },
            "",
            false,
        ),
        (
            Script {
                final_reply: Some("554 5.6.0 content refused".to_string()),
                ..Script::default()
            },
            "5.6.0",
            true,
        ),
    ];
    for (script, status, failed) in cases {
        let server = start("127.0.0.1", 0, script).await;
        let outcomes = deliver_batch(
            &routed_to(server.addr),
            &FakeDns::default(),
            "b.test",
            &batch,
        )
        .await;
        for outcome in &outcomes[0] {
            match outcome {
                RecipientOutcome::Failed { status: found, .. } if failed => {
                    assert_eq!(found, status)
                }
                RecipientOutcome::Deferred { .. } if !failed => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(server.delivered().is_empty());
    }
}

/// Goal: STARTTLS is used when offered, with a certificate nobody can verify.
/// Method: a server with a throwaway rcgen certificate; the message must arrive over
/// the TLS session.
#[tokio::test]
async fn starttls_is_used_when_offered() {
    let script = Script {
        tls: Some(tls_config()),
        ..Script::default()
    };
    let server = start("127.0.0.1", 0, script).await;
    let one = envelope(Some("alice@a.test"), &["bob@b.test"]);
    let batch = [OutboundMessage {
        envelope: &one,
        message: MESSAGE_WITH_DOTS,
    }];

    let outcomes = deliver_batch(
        &routed_to(server.addr),
        &FakeDns::default(),
        "b.test",
        &batch,
    )
    .await;

    assert!(
        matches!(outcomes[0][0], RecipientOutcome::Delivered { .. }),
        "{outcomes:?}"
    );
    let connections = server.connections();
    assert_eq!(connections.len(), 1);
    assert!(connections[0].tls);
    assert_eq!(
        connections[0]
            .commands
            .iter()
            .filter(|c| c.starts_with("EHLO"))
            .count(),
        2
    );
    assert_eq!(
        server.delivered()[0].data.as_deref(),
        Some(MESSAGE_WITH_DOTS)
    );
}

/// Goal: a failed TLS handshake is retried once in plain text on the same host.
/// Method: a server that closes the connection after its 220 to STARTTLS.
#[tokio::test]
async fn failed_tls_handshake_retries_in_plain_text_once() {
    let script = Script {
        tls: Some(tls_config()),
        break_tls: true,
        ..Script::default()
    };
    let server = start("127.0.0.1", 0, script).await;
    let one = envelope(Some("alice@a.test"), &["bob@b.test"]);
    let batch = [OutboundMessage {
        envelope: &one,
        message: b"Subject: x\r\n\r\nhi\r\n",
    }];

    let outcomes = deliver_batch(
        &routed_to(server.addr),
        &FakeDns::default(),
        "b.test",
        &batch,
    )
    .await;

    assert!(
        matches!(outcomes[0][0], RecipientOutcome::Delivered { .. }),
        "{outcomes:?}"
    );
    let connections = server.connections();
    assert_eq!(connections.len(), 2);
    assert!(connections[0].commands.contains(&"STARTTLS".to_string()));
    assert!(!connections[1].commands.contains(&"STARTTLS".to_string()));
    assert!(!connections[1].tls);
}

/// Goal: a server that does not know EHLO still gets the mail through HELO; a SIZE
/// limit and a missing SMTPUTF8 fail the message before anything of it is sent.
#[tokio::test]
async fn helo_fallback_and_size_limit() {
    let server = start(
        "127.0.0.1",
        0,
        Script {
            ehlo_keywords: None,
            ..Script::default()
        },
    )
    .await;
    let one = envelope(Some("alice@a.test"), &["bob@b.test"]);
    let batch = [OutboundMessage {
        envelope: &one,
        message: b"Subject: x\r\n\r\nhi\r\n",
    }];
    let outcomes = deliver_batch(
        &routed_to(server.addr),
        &FakeDns::default(),
        "b.test",
        &batch,
    )
    .await;
    assert!(
        matches!(outcomes[0][0], RecipientOutcome::Delivered { .. }),
        "{outcomes:?}"
    );
    assert_eq!(
        server.connections()[0].commands[..2],
        ["EHLO relay.a.test", "HELO relay.a.test"]
    );

    let small = Script {
        ehlo_keywords: Some(vec!["SIZE 10".to_string()]),
        ..Script::default()
    };
    let server = start("127.0.0.1", 0, small).await;
    let outcomes = deliver_batch(
        &routed_to(server.addr),
        &FakeDns::default(),
        "b.test",
        &batch,
    )
    .await;
    assert!(
        matches!(&outcomes[0][0], RecipientOutcome::Failed { status, .. } if status == "5.3.4"),
        "{outcomes:?}"
    );
    assert!(
        !server.connections()[0]
            .commands
            .iter()
            .any(|command| command.starts_with("MAIL"))
    );

    // A non-ASCII address needs SMTPUTF8 (RFC 6531 §3.2), which this server lacks.
    let server = start("127.0.0.1", 0, Script::default()).await;
    let utf8 = envelope(Some("alice@a.test"), &["j\u{f6}rg@b.test"]);
    let batch = [OutboundMessage {
        envelope: &utf8,
        message: b"Subject: x\r\n\r\nhi\r\n",
    }];
    let outcomes = deliver_batch(
        &routed_to(server.addr),
        &FakeDns::default(),
        "b.test",
        &batch,
    )
    .await;
    assert!(
        matches!(&outcomes[0][0], RecipientOutcome::Failed { status, .. } if status == "5.6.7"),
        "{outcomes:?}"
    );
}

/// Goal: MX hosts are tried by preference, and a failure on the better one (a 4xx
/// greeting, a connection dropped in the middle of a transaction) moves the
/// unsettled recipients to the next, while settled ones stay settled.
/// Method: two scripted servers on 127.0.0.1 and 127.0.0.2 (one port), the fake DNS
/// lists the worse MX first.
#[tokio::test]
async fn next_mx_host_after_a_refused_greeting_or_a_dropped_connection() {
    let dns = FakeDns::default()
        .with_mx("b.test", &[(20, "mx2.b.test"), (10, "mx1.b.test")])
        .with_ip("mx1.b.test", "127.0.0.1")
        .with_ip("mx2.b.test", "127.0.0.2");
    let one = envelope(Some("alice@a.test"), &["gone@b.test", "bob@b.test"]);
    let batch = [OutboundMessage {
        envelope: &one,
        message: MESSAGE_WITH_DOTS,
    }];

    let busy = Script {
        greeting: "421 4.3.2 busy".to_string(),
        ..Script::default()
    };
    let (mx1, mx2) = start_pair(busy, Script::default()).await;
    let config = RelayConfig {
        mx_port: mx1.addr.port(),
        ..routed_to(mx1.addr)
    };
    let config = RelayConfig {
        routes: Default::default(),
        ..config
    };
    let outcomes = deliver_batch(&config, &dns, "b.test", &batch).await;
    assert!(
        outcomes[0]
            .iter()
            .all(|o| matches!(o, RecipientOutcome::Delivered { .. })),
        "{outcomes:?}"
    );
    assert_eq!(
        mx1.connections().len(),
        1,
        "the preferred host was tried first"
    );
    assert_eq!(mx2.delivered().len(), 1);

    // The first host refuses gone@ for good, then drops the connection at bob@.
    let dropping = Script {
        rcpt_reply: Arc::new(|recipient| match recipient {
            "gone@b.test" => Some("550 5.1.1 unknown".to_string()),
            _ => None,
        }),
        ..Script::default()
    };
    let (mx1, mx2) = start_pair(dropping, Script::default()).await;
    let config = RelayConfig {
        mx_port: mx1.addr.port(),
        ..config
    };
    let outcomes = deliver_batch(&config, &dns, "b.test", &batch).await;
    assert!(
        matches!(&outcomes[0][0], RecipientOutcome::Failed { status, .. } if status == "5.1.1")
    );
    assert!(
        matches!(outcomes[0][1], RecipientOutcome::Delivered { .. }),
        "{outcomes:?}"
    );
    assert_eq!(
        mx2.delivered()[0].accepted_rcpts,
        vec!["bob@b.test"],
        "only the unsettled recipient moved"
    );
    assert_eq!(mx2.delivered()[0].data.as_deref(), Some(MESSAGE_WITH_DOTS));
    assert_eq!(mx1.connections().len(), 1);
}

/// Goal: a connection lost after the final dot defers without trying another host
/// (the receiver may hold the message); a silent server and a closed port defer.
#[tokio::test]
async fn lost_connections_and_silence_defer() {
    let one = envelope(Some("alice@a.test"), &["bob@b.test"]);
    let batch = [OutboundMessage {
        envelope: &one,
        message: b"Subject: x\r\n\r\nhi\r\n",
    }];

    let server = start(
        "127.0.0.1",
        0,
        Script {
            final_reply: None,
            ..Script::default()
        },
    )
    .await;
    let outcomes = deliver_batch(
        &routed_to(server.addr),
        &FakeDns::default(),
        "b.test",
        &batch,
    )
    .await;
    match &outcomes[0][0] {
        RecipientOutcome::Deferred { reason } => {
            assert!(reason.contains("after the message was sent"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        server.connections().len(),
        1,
        "no second attempt in the same batch"
    );

    let server = start(
        "127.0.0.1",
        0,
        Script {
            silent: true,
            ..Script::default()
        },
    )
    .await;
    let config = RelayConfig {
        command_timeout_s: 1,
        ..routed_to(server.addr)
    };
    let started = std::time::Instant::now();
    let outcomes = deliver_batch(&config, &FakeDns::default(), "b.test", &batch).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    match &outcomes[0][0] {
        RecipientOutcome::Deferred { reason } => {
            assert!(reason.contains("did not answer"), "{reason}")
        }
        other => panic!("{other:?}"),
    }

    // A port nobody listens on: bind, note the port, close.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let outcomes = deliver_batch(&routed_to(closed), &FakeDns::default(), "b.test", &batch).await;
    assert!(is_deferred(&outcomes[0][0]), "{outcomes:?}");
}
