//! Routing with a fake resolver: routes, smarthost, MX preference, the implicit MX,
//! null MX and DNS failures (RFC 5321 §5.1, RFC 7505). No network.

mod common;

use cm_relay::{
    DnsFailure, Envelope, HostPort, OutboundMessage, RecipientOutcome, RelayConfig, deliver_batch,
    route,
};
use cm_types::Address;
use common::FakeDns;

fn hops(hosts: &[&str]) -> Vec<HostPort> {
    hosts
        .iter()
        .map(|host| HostPort {
            host: host.to_string(),
            port: 25,
        })
        .collect()
}

fn failed_with(outcome: Result<Vec<HostPort>, RecipientOutcome>, expected_status: &str) {
    match outcome {
        Err(RecipientOutcome::Failed { status, .. }) => assert_eq!(status, expected_status),
        other => panic!("expected a failure {expected_status}, got {other:?}"),
    }
}

/// Goal: MX records are tried by preference, duplicates once, and a route or the
/// smarthost wins over DNS.
#[tokio::test]
async fn mx_by_preference_and_configured_routes_first() {
    let dns = FakeDns::default().with_mx(
        "b.test",
        &[
            (30, "mx3.b.test"),
            (10, "MX1.b.test"),
            (20, "mx2.b.test"),
            (40, "mx1.b.test"),
        ],
    );
    let config = RelayConfig::default();
    let found = route(&config, &dns, "b.test").await.unwrap();
    assert_eq!(found, hops(&["mx1.b.test", "mx2.b.test", "mx3.b.test"]));

    let mut config = RelayConfig {
        smarthost: Some("relay.test:587".to_string()),
        ..RelayConfig::default()
    };
    let found = route(&config, &dns, "b.test").await.unwrap();
    assert_eq!(
        found,
        vec![HostPort {
            host: "relay.test".to_string(),
            port: 587
        }]
    );

    config
        .routes
        .insert("b.test".to_string(), "127.0.0.1:2525".to_string());
    config.validate().unwrap();
    let found = route(&config, &dns, "B.Test").await.unwrap();
    assert_eq!(
        found,
        vec![HostPort {
            host: "127.0.0.1".to_string(),
            port: 2525
        }]
    );
}

/// Goal: a domain without MX but with an address is its own MX; a domain with
/// neither, or that does not exist, fails; a null MX fails with 5.1.10; a DNS
/// timeout defers.
#[tokio::test]
async fn implicit_mx_null_mx_and_dns_failures() {
    let config = RelayConfig::default();
    let dns = FakeDns::default()
        .with_ip("plain.test", "192.0.2.1")
        .with_mx("null.test", &[(0, "")])
        .with_mx("empty.test", &[]);
    assert_eq!(
        route(&config, &dns, "plain.test").await.unwrap(),
        hops(&["plain.test"])
    );
    failed_with(route(&config, &dns, "null.test").await, "5.1.10");
    failed_with(route(&config, &dns, "missing.test").await, "5.1.2");
    failed_with(route(&config, &dns, "empty.test").await, "5.1.2");

    let mut dns = FakeDns::default();
    dns.mx.insert(
        "slow.test".to_string(),
        Err(DnsFailure::Temporary("timed out".to_string())),
    );
    match route(&config, &dns, "slow.test").await {
        Err(RecipientOutcome::Deferred { reason }) => {
            assert!(reason.contains("timed out"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

/// Goal: a null MX fails every recipient of the batch without any connection, and an
/// MX host without addresses leaves them deferred.
#[tokio::test]
async fn deliver_batch_applies_the_route_outcome_to_every_recipient() {
    let config = RelayConfig::default();
    let envelope = Envelope {
        sender: Some(Address::parse("alice@a.test").unwrap()),
        recipients: vec![
            Address::parse("x@null.test").unwrap(),
            Address::parse("y@null.test").unwrap(),
        ],
    };
    let batch = [OutboundMessage {
        envelope: &envelope,
        message: b"Subject: x\r\n\r\nhi\r\n",
    }];
    let dns = FakeDns::default().with_mx("null.test", &[(0, "")]);
    let outcomes = deliver_batch(&config, &dns, "null.test", &batch).await;
    assert_eq!(outcomes[0].len(), 2);
    for outcome in &outcomes[0] {
        assert!(
            matches!(outcome, RecipientOutcome::Failed { status, .. } if status == "5.1.10"),
            "{outcome:?}"
        );
    }

    let dns = FakeDns::default().with_mx("null.test", &[(10, "nowhere.null.test")]);
    let outcomes = deliver_batch(&config, &dns, "null.test", &batch).await;
    for outcome in &outcomes[0] {
        match outcome {
            RecipientOutcome::Deferred { reason } => {
                assert!(reason.contains("nowhere.null.test"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Goal: when we are an MX host of the domain ourselves, only better hosts are tried,
/// and with none better the message fails as a loop (RFC 5321 §5.1) instead of
/// coming back to us.
#[tokio::test]
async fn our_own_mx_record_cuts_the_list() {
    let config = RelayConfig {
        hostname: "mx2.b.test".to_string(),
        ..RelayConfig::default()
    };
    let dns = FakeDns::default()
        .with_mx(
            "b.test",
            &[(10, "mx1.b.test"), (20, "MX2.b.test"), (30, "mx3.b.test")],
        )
        .with_mx("c.test", &[(10, "mx2.b.test"), (20, "mx1.b.test")]);
    assert_eq!(
        route(&config, &dns, "b.test").await.unwrap(),
        hops(&["mx1.b.test"])
    );
    failed_with(route(&config, &dns, "c.test").await, "5.4.6");
}
