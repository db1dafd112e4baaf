//! The queue worker over a real (one-node) mail service and a scripted destination:
//! what a scan writes back — outcomes, attempts, the next schedule, the DSN to the
//! sender and the removal — and that nothing is delivered before it is due.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use cm_relay::RelayConfig;
use cm_relay::queue::scan;
use cm_repl::{Mail, now_ms};
use cm_types::Address;
use common::{FakeDns, Script, start};

fn address(text: &str) -> Address {
    Address::parse(text).unwrap()
}

fn routed_to(addr: std::net::SocketAddr) -> RelayConfig {
    let mut config = RelayConfig {
        hostname: "relay.example.org".to_string(),
        command_timeout_s: 2,
        data_timeout_s: 2,
        connect_timeout_s: 2,
        retry_first_s: 60,
        ..RelayConfig::default()
    };
    config.routes.insert("b.test".to_string(), addr.to_string());
    config.validate().unwrap();
    config
}

const MESSAGE: &[u8] =
    b"From: alice@example.org\r\nTo: bob@b.test\r\nSubject: out\r\n\r\nhello\r\n";

/// Goal: one scan delivers what the destination takes, bounces what it refuses for
/// good (one DSN in the sender's mailbox), defers the rest with a schedule one
/// retry period away, and a later scan after a retry finishes and removes the
/// entry. Method: a server that refuses `gone@` with 550 and defers `later@` with
/// 451 until told otherwise; scans called directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_delivers_bounces_defers_and_finally_removes() {
    let accept_later = Arc::new(AtomicBool::new(false));
    let accept_later_in_script = accept_later.clone();
    let script = Script {
        rcpt_reply: Arc::new(move |recipient| {
            Some(match recipient {
                "gone@b.test" => "550 5.1.1 <gone@b.test>: user unknown".to_string(),
                "later@b.test" if !accept_later_in_script.load(Ordering::Acquire) => {
                    "451 4.2.0 mailbox busy".to_string()
                }
                _ => "250 2.1.5 ok".to_string(),
            })
        }),
        ..Script::default()
    };
    let server = start("127.0.0.1", 0, script).await;
    let config = routed_to(server.addr);
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::open_for_tests(dir.path());
    let alice = address("alice@example.org");
    mail.create_account(&alice, "a long enough secret")
        .await
        .unwrap();
    let recipients = [
        address("bob@b.test"),
        address("gone@b.test"),
        address("later@b.test"),
    ];
    let id = mail
        .enqueue(Some(&alice), &recipients, Bytes::from_static(MESSAGE))
        .await
        .unwrap();

    scan(&mail, &config, &FakeDns::default()).await.unwrap();
    let delivered = server.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].accepted_rcpts, vec!["bob@b.test"]);
    assert_eq!(delivered[0].data.as_deref(), Some(MESSAGE));
    let held = mail.outbound_held(10).await.unwrap();
    assert_eq!(held.len(), 1, "the entry is gone while later@ waits");
    let entry = &held[0];
    assert_eq!(entry.pending().collect::<Vec<_>>(), vec!["later@b.test"]);
    assert!(
        entry.last_error().unwrap().contains("451"),
        "{:?}",
        entry.last_error()
    );
    assert!(
        entry.next_attempt.1 >= now_ms() + 50_000,
        "not deferred by the retry period"
    );

    scan(&mail, &config, &FakeDns::default()).await.unwrap();
    assert_eq!(server.delivered().len(), 1, "tried again before it was due");

    accept_later.store(true, Ordering::Release);
    assert!(mail.retry_outbound(id).await.unwrap());
    scan(&mail, &config, &FakeDns::default()).await.unwrap();
    let delivered = server.delivered();
    assert_eq!(delivered.len(), 2);
    assert_eq!(delivered[1].accepted_rcpts, vec!["later@b.test"]);
    assert!(
        mail.outbound_held(10).await.unwrap().is_empty(),
        "a settled entry stays queued"
    );

    let lock = mail.lock_maildrop(&alice).await.unwrap();
    let inbox = mail.list(&lock).await.unwrap();
    assert_eq!(
        inbox.len(),
        1,
        "exactly one DSN for the one failed recipient"
    );
    let bounce = mail.retrieve(&lock, inbox[0].id).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&bounce);
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; gone@b.test"),
        "{text}"
    );
    assert!(!text.contains("later@b.test\r\nAction: failed"), "{text}");
}

/// Goal: an entry that outlives its lifetime is bounced with 4.4.7 and removed,
/// and a message from `<>` is never bounced. Method: a destination that always
/// defers, a lifetime of one second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_entry_is_bounced_once_and_the_null_sender_never() {
    let script = Script {
        rcpt_reply: Arc::new(|_| Some("451 4.3.0 try later".to_string())),
        ..Script::default()
    };
    let server = start("127.0.0.1", 0, script).await;
    let mut config = routed_to(server.addr);
    config.lifetime_s = 1;
    config.retry_first_s = 1;
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::open_for_tests(dir.path());
    let alice = address("alice@example.org");
    let bob = address("bob@b.test");
    mail.enqueue(
        Some(&alice),
        std::slice::from_ref(&bob),
        Bytes::from_static(MESSAGE),
    )
    .await
    .unwrap();
    mail.enqueue(
        None,
        std::slice::from_ref(&bob),
        Bytes::from_static(MESSAGE),
    )
    .await
    .unwrap();
    scan(&mail, &config, &FakeDns::default()).await.unwrap();
    assert_eq!(mail.outbound_held(10).await.unwrap().len(), 2);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    scan(&mail, &config, &FakeDns::default()).await.unwrap();
    assert!(
        mail.outbound_held(10).await.unwrap().is_empty(),
        "expired entries stay queued"
    );

    let lock = mail.lock_maildrop(&alice).await.unwrap();
    let inbox = mail.list(&lock).await.unwrap();
    assert_eq!(inbox.len(), 1, "one DSN for alice, none for <>");
    let bounce = mail.retrieve(&lock, inbox[0].id).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&bounce).contains("4.4.7"));
}
