//! Process-wide counters, gauges and histograms, rendered in the Prometheus text
//! format by the admin API.
//!
//! Plain atomics in statics: every piece increments what it owns without threading
//! a registry through its constructors, and reading them never blocks a writer.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
pub static SMTP_CONNECTIONS_OPEN: Metric = Metric::gauge(
    "chordmail_smtp_connections_open",
    "SMTP connections being served now",
);
pub static POP3_CONNECTIONS_OPEN: Metric = Metric::gauge(
    "chordmail_pop3_connections_open",
    "POP3 connections being served now",
);
pub static IMAP_CONNECTIONS_OPEN: Metric = Metric::gauge(
    "chordmail_imap_connections_open",
    "IMAP connections being served now",
);
pub static IMAP_CONNECTIONS: Metric = Metric::counter(
    "chordmail_imap_connections_total",
    "IMAP connections accepted",
);

/// The counter of accepted connections and the gauge of open ones of a protocol,
/// by the lower-case name its shell gives `cm-serve`'s accept loop, which knows no
/// protocol of its own.
pub fn connections(protocol: &str) -> Option<(&'static Metric, &'static Metric)> {
    match protocol {
        "smtp" => Some((&SMTP_CONNECTIONS, &SMTP_CONNECTIONS_OPEN)),
        "pop3" => Some((&POP3_CONNECTIONS, &POP3_CONNECTIONS_OPEN)),
        "imap" => Some((&IMAP_CONNECTIONS, &IMAP_CONNECTIONS_OPEN)),
        _ => None,
    }
}

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
    &IMAP_CONNECTIONS,
    &SMTP_CONNECTIONS_OPEN,
    &POP3_CONNECTIONS_OPEN,
    &IMAP_CONNECTIONS_OPEN,
];

/// Upper bounds a histogram may have, `+Inf` not counted; the bucket array is
/// fixed so that a histogram can be a `static` built by a `const fn`.
pub const HISTOGRAM_BUCKETS_MAX: usize = 16;

/// Nanoseconds in a second: time histograms count nanoseconds and are rendered in
/// seconds, the base unit.
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Latency bounds shared by every `_seconds` histogram, in nanoseconds: from half a
/// millisecond (a local store read) to ten seconds (past every client timeout we
/// set), so a p99 anywhere between falls between two bounds.
pub const LATENCY_BOUNDS_NANOS: &[u64] = &[
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Bounds for small counts (ring lookup hops), up to the 64 bits of the ring's key
/// space, the most fingers a lookup can follow.
pub const HOPS_BOUNDS: &[u64] = &[0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64];

/// Bounds for counts of items in one batch or round (store commits, repairs).
pub const ITEMS_BOUNDS: &[u64] = &[0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// A Prometheus `histogram` with fixed buckets.
///
/// Each observation increments one bucket and adds to the sum, all lock-free. The
/// rendered buckets are cumulative and `_count` is the `+Inf` bucket, so the two
/// always agree as the format requires; a scrape during an observation may see the
/// sum without its bucket, or the reverse, which a rate over minutes does not notice.
pub struct Histogram {
    pub name: &'static str,
    pub help: &'static str,
    /// Upper bounds in the recorded unit (nanoseconds or items), increasing.
    bounds: &'static [u64],
    /// What one recorded unit is in the base unit rendered: 1e9 for nanoseconds
    /// rendered as seconds, 1 for counts.
    units_per_base: u64,
    /// Observations per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; HISTOGRAM_BUCKETS_MAX + 1],
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram of durations, rendered in seconds; `name` ends in `_seconds`.
    pub const fn seconds(name: &'static str, help: &'static str) -> Histogram {
        Histogram::new(name, help, LATENCY_BOUNDS_NANOS, NANOS_PER_SECOND)
    }

    /// A histogram of counts (hops, items) with the given increasing `bounds`.
    pub const fn counts(
        name: &'static str,
        help: &'static str,
        bounds: &'static [u64],
    ) -> Histogram {
        Histogram::new(name, help, bounds, 1)
    }

    const fn new(
        name: &'static str,
        help: &'static str,
        bounds: &'static [u64],
        units_per_base: u64,
    ) -> Histogram {
        assert!(!bounds.is_empty() && bounds.len() <= HISTOGRAM_BUCKETS_MAX);
        let mut i = 1;
        while i < bounds.len() {
            assert!(bounds[i - 1] < bounds[i], "histogram bounds increase");
            i += 1;
        }
        Histogram {
            name,
            help,
            bounds,
            units_per_base,
            buckets: [const { AtomicU64::new(0) }; HISTOGRAM_BUCKETS_MAX + 1],
            sum: AtomicU64::new(0),
        }
    }

    /// Records `value` in the recorded unit (nanoseconds or items).
    pub fn observe(&self, value: u64) {
        // The first bound at or above `value` (a bucket is `le`, less or equal).
        let i = self.bounds.partition_point(|bound| *bound < value);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Records a duration; saturates at 584 years of nanoseconds.
    pub fn observe_duration(&self, elapsed: Duration) {
        debug_assert_eq!(self.units_per_base, NANOS_PER_SECOND, "a seconds histogram");
        self.observe(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Observations so far (the `_count`).
    pub fn count(&self) -> u64 {
        let n_buckets = self.bounds.len() + 1;
        self.buckets[..n_buckets]
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .sum()
    }

    fn render_into(&self, text: &mut String) {
        let base = self.units_per_base as f64;
        let _ = writeln!(text, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(text, "# TYPE {} histogram", self.name);
        let mut n_cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            n_cumulative += self.buckets[i].load(Ordering::Relaxed);
            // A quotient of two exact integers rounds once, so 5e6 ns prints as 0.005.
            let le = *bound as f64 / base;
            let _ = writeln!(text, "{}_bucket{{le=\"{le}\"}} {n_cumulative}", self.name);
        }
        n_cumulative += self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(text, "{}_bucket{{le=\"+Inf\"}} {n_cumulative}", self.name);
        let sum = self.sum.load(Ordering::Relaxed) as f64 / base;
        let _ = writeln!(text, "{}_sum {sum}", self.name);
        let _ = writeln!(text, "{}_count {n_cumulative}", self.name);
    }
}

pub static SMTP_ACCEPT_SECONDS: Histogram = Histogram::seconds(
    "chordmail_smtp_accept_seconds",
    "Seconds from the end of DATA to the reply being decided (250 or a refusal)",
);
pub static POP3_LOGIN_SECONDS: Histogram = Histogram::seconds(
    "chordmail_pop3_login_seconds",
    "Seconds a POP3 login (USER/PASS, APOP or AUTH) took to succeed or fail",
);
pub static IMAP_LOGIN_SECONDS: Histogram = Histogram::seconds(
    "chordmail_imap_login_seconds",
    "Seconds an IMAP login (LOGIN or AUTHENTICATE) took to succeed or fail",
);
pub static REPLICA_LOCAL_WRITE_SECONDS: Histogram = Histogram::seconds(
    "chordmail_replica_local_write_seconds",
    "Seconds to apply a write batch to this node's replica, fsync included",
);
pub static REPLICA_REMOTE_WRITE_SECONDS: Histogram = Histogram::seconds(
    "chordmail_replica_remote_write_seconds",
    "Seconds for another node to apply a write batch sent to it, answer or failure",
);
pub static RING_LOOKUP_SECONDS: Histogram = Histogram::seconds(
    "chordmail_ring_lookup_seconds",
    "Seconds a ring lookup (find_successor) took",
);
pub static RING_LOOKUP_HOPS: Histogram = Histogram::counts(
    "chordmail_ring_lookup_hops",
    "Nodes asked by one ring lookup",
    HOPS_BOUNDS,
);
pub static ANTI_ENTROPY_ROUND_SECONDS: Histogram = Histogram::seconds(
    "chordmail_anti_entropy_round_seconds",
    "Seconds one anti-entropy round took",
);
pub static ANTI_ENTROPY_ROUND_REPAIRED_ITEMS: Histogram = Histogram::counts(
    "chordmail_anti_entropy_round_repaired_items",
    "Messages, tombstones and accounts copied to replicas in one anti-entropy round",
    ITEMS_BOUNDS,
);
pub static STORE_COMMIT_SECONDS: Histogram = Histogram::seconds(
    "chordmail_store_commit_seconds",
    "Seconds one store transaction took, fsync included",
);
pub static STORE_COMMIT_BATCH_WRITES: Histogram = Histogram::counts(
    "chordmail_store_commit_batch_writes",
    "Writes folded into one store transaction by the group committer",
    ITEMS_BOUNDS,
);

/// Every histogram above, in the order they are rendered.
pub static ALL_HISTOGRAMS: &[&Histogram] = &[
    &SMTP_ACCEPT_SECONDS,
    &POP3_LOGIN_SECONDS,
    &IMAP_LOGIN_SECONDS,
    &REPLICA_LOCAL_WRITE_SECONDS,
    &REPLICA_REMOTE_WRITE_SECONDS,
    &RING_LOOKUP_SECONDS,
    &RING_LOOKUP_HOPS,
    &ANTI_ENTROPY_ROUND_SECONDS,
    &ANTI_ENTROPY_ROUND_REPAIRED_ITEMS,
    &STORE_COMMIT_SECONDS,
    &STORE_COMMIT_BATCH_WRITES,
];

/// The Prometheus text of `histograms`, to follow [`render`]'s.
pub fn render_histograms(histograms: &[&Histogram]) -> String {
    let mut text = String::new();
    for histogram in histograms {
        histogram.render_into(&mut text);
    }
    text
}

/// Every metric of the process: [`ALL`], then [`ALL_HISTOGRAMS`].
pub fn render_all() -> String {
    render(ALL) + &render_histograms(ALL_HISTOGRAMS)
}

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

    #[test]
    fn histogram_renders_cumulative_buckets_in_seconds() {
        static LATENCY: Histogram = Histogram::seconds("example_seconds", "Example latency");
        LATENCY.observe_duration(Duration::from_micros(300)); // 0.0005 and up
        LATENCY.observe_duration(Duration::from_millis(5)); // exactly on 0.005: le is inclusive
        LATENCY.observe_duration(Duration::from_millis(70)); // 0.1 and up
        LATENCY.observe_duration(Duration::from_secs(11)); // only +Inf
        let text = render_histograms(&[&LATENCY]);
        let expected = "\
# HELP example_seconds Example latency
# TYPE example_seconds histogram
example_seconds_bucket{le=\"0.0005\"} 1
example_seconds_bucket{le=\"0.001\"} 1
example_seconds_bucket{le=\"0.0025\"} 1
example_seconds_bucket{le=\"0.005\"} 2
example_seconds_bucket{le=\"0.01\"} 2
example_seconds_bucket{le=\"0.025\"} 2
example_seconds_bucket{le=\"0.05\"} 2
example_seconds_bucket{le=\"0.1\"} 3
example_seconds_bucket{le=\"0.25\"} 3
example_seconds_bucket{le=\"0.5\"} 3
example_seconds_bucket{le=\"1\"} 3
example_seconds_bucket{le=\"2.5\"} 3
example_seconds_bucket{le=\"5\"} 3
example_seconds_bucket{le=\"10\"} 3
example_seconds_bucket{le=\"+Inf\"} 4
example_seconds_sum 11.0753
example_seconds_count 4
";
        assert_eq!(text, expected);
        assert_eq!(LATENCY.count(), 4);
    }

    #[test]
    fn histogram_of_counts_renders_integer_bounds() {
        static HOPS: Histogram = Histogram::counts("example_hops", "Example hops", &[0, 1, 4]);
        HOPS.observe(0);
        HOPS.observe(2);
        HOPS.observe(2);
        HOPS.observe(9);
        assert_eq!(
            render_histograms(&[&HOPS]),
            "# HELP example_hops Example hops\n# TYPE example_hops histogram\n\
             example_hops_bucket{le=\"0\"} 1\nexample_hops_bucket{le=\"1\"} 1\n\
             example_hops_bucket{le=\"4\"} 3\nexample_hops_bucket{le=\"+Inf\"} 4\n\
             example_hops_sum 13\nexample_hops_count 4\n"
        );
    }

    /// The exposition format's rules for a histogram, checked on every one the node
    /// exports: names of the base metric with the `_bucket`/`_sum`/`_count` suffixes,
    /// `le` strictly increasing and ending in `+Inf`, cumulative counts that never
    /// fall, `_count` equal to the `+Inf` bucket, help without a raw newline or
    /// backslash (those would need escaping).
    #[test]
    fn every_exported_histogram_follows_the_exposition_rules() {
        for histogram in ALL_HISTOGRAMS {
            histogram.observe(1);
        }
        let text = render_histograms(ALL_HISTOGRAMS);
        let mut names = std::collections::HashSet::new();
        for histogram in ALL_HISTOGRAMS {
            let name = histogram.name;
            assert!(names.insert(name), "{name} exported twice");
            assert!(name.starts_with("chordmail_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            assert!(
                !name.ends_with("_total") && !name.ends_with("_bucket"),
                "{name}"
            );
            assert!(!histogram.help.contains(['\n', '\\']), "{name}");
            let lines: Vec<&str> = text
                .lines()
                .filter(|line| {
                    line.split([' ', '{'])
                        .find(|word| {
                            !word.is_empty() && *word != "#" && *word != "HELP" && *word != "TYPE"
                        })
                        .is_some_and(|word| {
                            word == name
                                || word.strip_prefix(name).is_some_and(|suffix| {
                                    ["_bucket", "_sum", "_count"].contains(&suffix)
                                })
                        })
                })
                .collect();
            assert_eq!(lines[0], format!("# HELP {name} {}", histogram.help));
            assert_eq!(lines[1], format!("# TYPE {name} histogram"));
            let mut previous_le = f64::NEG_INFINITY;
            let mut previous_count = 0u64;
            let bucket_prefix = format!("{name}_bucket{{le=\"");
            let buckets = &lines[2..lines.len() - 2];
            assert_eq!(buckets.len(), histogram.bounds.len() + 1, "{name}");
            for line in buckets {
                let rest = line.strip_prefix(&bucket_prefix).expect(line);
                let (le, count) = rest.split_once("\"} ").expect(line);
                let le: f64 = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect(line)
                };
                let count: u64 = count.parse().expect(line);
                assert!(le > previous_le, "{line}");
                assert!(count >= previous_count, "{line}");
                (previous_le, previous_count) = (le, count);
            }
            assert_eq!(previous_le, f64::INFINITY, "{name} ends with +Inf");
            let sum = lines[lines.len() - 2]
                .strip_prefix(&format!("{name}_sum "))
                .expect(name);
            assert!(sum.parse::<f64>().is_ok_and(|sum| sum > 0.0), "{name}");
            let count = lines[lines.len() - 1]
                .strip_prefix(&format!("{name}_count "))
                .expect(name);
            assert_eq!(count.parse::<u64>().unwrap(), previous_count, "{name}");
        }
    }
}
