//! Process-wide counters, rendered in the Prometheus text format by the admin API.
//!
//! Plain atomics in statics: every piece increments what it owns without threading
//! a registry through its constructors, and reading them never blocks a writer.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing count (a Prometheus `counter`) or a level (`gauge`).
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    value: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Metric {
    pub const fn counter(name: &'static str, help: &'static str) -> Metric {
        Metric {
            name,
            help,
            kind: Kind::Counter,
            value: AtomicU64::new(0),
        }
    }

    pub const fn gauge(name: &'static str, help: &'static str) -> Metric {
        Metric {
            name,
            help,
            kind: Kind::Gauge,
            value: AtomicU64::new(0),
        }
    }

    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    pub fn increment(&self) {
        self.add(1);
    }

    pub fn decrement(&self) {
        assert_eq!(self.kind, Kind::Gauge, "only gauges go down");
        self.value.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn set(&self, value: u64) {
        assert_eq!(self.kind, Kind::Gauge, "only gauges are set");
        self.value.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

pub static SMTP_CONNECTIONS: Metric = Metric::counter(
    "chordmail_smtp_connections_total",
    "SMTP connections accepted",
);
pub static SMTP_MESSAGES_ACCEPTED: Metric = Metric::counter(
    "chordmail_smtp_messages_accepted_total",
    "Messages answered 250 after DATA",
);
pub static SMTP_MESSAGES_REFUSED: Metric = Metric::counter(
    "chordmail_smtp_messages_refused_total",
    "Messages refused after DATA (4xx or 5xx)",
);
pub static POP3_CONNECTIONS: Metric = Metric::counter(
    "chordmail_pop3_connections_total",
    "POP3 connections accepted",
);
pub static POP3_MESSAGES_RETRIEVED: Metric = Metric::counter(
    "chordmail_pop3_messages_retrieved_total",
    "Messages sent in answer to RETR",
);
pub static POP3_MESSAGES_DELETED: Metric = Metric::counter(
    "chordmail_pop3_messages_deleted_total",
    "Messages deleted at QUIT",
);
pub static AUTH_FAILURES: Metric = Metric::counter(
    "chordmail_auth_failures_total",
    "Failed SMTP AUTH and POP3 logins",
);
pub static STORE_COMMITS: Metric = Metric::counter(
    "chordmail_store_commits_total",
    "Store transactions committed (one fsync each)",
);
pub static STORE_WRITES: Metric = Metric::counter(
    "chordmail_store_writes_total",
    "Writes applied to the store, all batches together",
);

pub static REPLICA_WRITES_SENT: Metric = Metric::counter(
    "chordmail_replica_writes_sent_total",
    "Writes sent to other replicas (quorum writes and repairs)",
);
pub static REPLICA_WRITES_RECEIVED: Metric = Metric::counter(
    "chordmail_replica_writes_received_total",
    "Writes received from other replicas",
);
pub static QUORUM_FAILURES: Metric = Metric::counter(
    "chordmail_quorum_failures_total",
    "Reads or writes refused because a quorum was not reached",
);
pub static REPAIRS: Metric = Metric::counter(
    "chordmail_repairs_total",
    "Messages, tombstones and accounts copied to a replica by anti-entropy",
);
pub static READ_REPAIRS: Metric = Metric::counter(
    "chordmail_read_repairs_total",
    "Tombstones copied to a replica that lacked them, found by a mailbox read",
);
pub static ANTI_ENTROPY_ROUNDS: Metric = Metric::counter(
    "chordmail_anti_entropy_rounds_total",
    "Anti-entropy rounds completed",
);
pub static ADDRESSES_OUT_OF_SYNC: Metric = Metric::gauge(
    "chordmail_addresses_out_of_sync",
    "Addresses whose replicas differed in the last anti-entropy round (0: every copy is in place)",
);
pub static REPLICAS_RESTORE_MS_LAST: Metric = Metric::gauge(
    "chordmail_replicas_restore_ms_last",
    "Milliseconds from the first anti-entropy round that found missing copies to the first that found none, last time",
);
pub static OUTBOUND_QUEUE_DEPTH: Metric = Metric::gauge(
    "chordmail_outbound_queue_depth",
    "Outbound entries this node coordinates that are not delivered or bounced yet",
);
pub static OUTBOUND_OLDEST_AGE_SECONDS: Metric = Metric::gauge(
    "chordmail_outbound_oldest_entry_age_seconds",
    "Age of the oldest outbound entry this node coordinates",
);
pub static OUTBOUND_DELIVERIES: Metric = Metric::counter(
    "chordmail_outbound_deliveries_total",
    "Recipients of outbound mail accepted by the destination",
);
pub static OUTBOUND_DEFERRALS: Metric = Metric::counter(
    "chordmail_outbound_deferrals_total",
    "Recipients of outbound mail deferred for a later attempt",
);
pub static OUTBOUND_BOUNCES: Metric = Metric::counter(
    "chordmail_outbound_bounces_total",
    "Recipients of outbound mail that failed for good (5xx or lifetime expiry)",
);
pub static ADMIN_UNAUTHORIZED: Metric = Metric::counter(
    "chordmail_admin_unauthorized_total",
    "Admin API requests refused for a missing or wrong token",
);
pub static REPLICA_WRITES_REFUSED: Metric = Metric::counter(
    "chordmail_replica_writes_refused_total",
    "Write batches from peers refused by the checks on replica data",
);

/// Every metric above, in the order they are rendered.
pub static ALL: &[&Metric] = &[
    &SMTP_CONNECTIONS,
    &SMTP_MESSAGES_ACCEPTED,
    &SMTP_MESSAGES_REFUSED,
    &POP3_CONNECTIONS,
    &POP3_MESSAGES_RETRIEVED,
    &POP3_MESSAGES_DELETED,
    &AUTH_FAILURES,
    &STORE_COMMITS,
    &STORE_WRITES,
    &REPLICA_WRITES_SENT,
    &REPLICA_WRITES_RECEIVED,
    &QUORUM_FAILURES,
    &REPAIRS,
    &READ_REPAIRS,
    &ANTI_ENTROPY_ROUNDS,
    &ADDRESSES_OUT_OF_SYNC,
    &REPLICAS_RESTORE_MS_LAST,
    &OUTBOUND_QUEUE_DEPTH,
    &OUTBOUND_OLDEST_AGE_SECONDS,
    &OUTBOUND_DELIVERIES,
    &OUTBOUND_DEFERRALS,
    &OUTBOUND_BOUNCES,
    &ADMIN_UNAUTHORIZED,
    &REPLICA_WRITES_REFUSED,
];

/// The Prometheus text exposition (version 0.0.4) of `metrics`.
pub fn render(metrics: &[&Metric]) -> String {
    let mut text = String::new();
    for metric in metrics {
        let kind = match metric.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(text, "# HELP {} {}", metric.name, metric.help);
        let _ = writeln!(text, "# TYPE {} {kind}", metric.name);
        let _ = writeln!(text, "{} {}", metric.name, metric.get());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        static EXAMPLE: Metric = Metric::counter("example_total", "An example");
        EXAMPLE.add(3);
        assert_eq!(
            render(&[&EXAMPLE]),
            "# HELP example_total An example\n# TYPE example_total counter\nexample_total 3\n"
        );
    }
}
