"""/metrics (docs/DESIGN.md §13, issue 17) read by a real Prometheus text parser.

Method: start one node, scrape /metrics, parse it with `prometheus_client`'s parser
(the Python reference client's), then drive a delivery over SMTP and logins over POP3
and IMAP and scrape again: every latency histogram those paths observe must have
moved, and each must keep the format's invariants (cumulative buckets ending in
+Inf, `_count` equal to the +Inf bucket).
"""
import imaplib
import poplib
import smtplib

from prometheus_client.parser import text_string_to_metric_families

from tools.chordlab import wait_until

ALICE = "alice@example.org"
PASSWORD = "metrics secret"

# Histograms a delivery, a POP3 login and an IMAP login must move on a lone node.
MOVED_BY_TRAFFIC = (
    "chordmail_smtp_accept_seconds",
    "chordmail_pop3_login_seconds",
    "chordmail_imap_login_seconds",
    "chordmail_replica_local_write_seconds",
    "chordmail_store_commit_seconds",
    "chordmail_store_commit_batch_writes",
)
# Histograms that must be exported even before anything observed them.
EXPORTED = MOVED_BY_TRAFFIC + (
    "chordmail_replica_remote_write_seconds",
    "chordmail_ring_lookup_seconds",
    "chordmail_ring_lookup_hops",
    "chordmail_anti_entropy_round_seconds",
    "chordmail_anti_entropy_round_repaired_items",
)


def scrape(node):
    """{family name: family} of the node's /metrics, parsed by prometheus_client."""
    status, text = node.api("GET", "/metrics", token=None)
    assert status == 200, text
    return {family.name: family for family in text_string_to_metric_families(text)}


def histogram_count(family):
    """The family's `_count`, after checking the histogram's invariants."""
    assert family.type == "histogram", family
    buckets = [s for s in family.samples if s.name == family.name + "_bucket"]
    bounds = [float(s.labels["le"]) for s in buckets]
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), bounds
    assert bounds[-1] == float("inf"), bounds
    counts = [s.value for s in buckets]
    assert counts == sorted(counts), counts
    (count,) = [s.value for s in family.samples if s.name == family.name + "_count"]
    (total,) = [s.value for s in family.samples if s.name == family.name + "_sum"]
    assert count == counts[-1] and total >= 0, family
    return count


def gauge(families, name):
    family = families[name]
    assert family.type == "gauge", family
    return family.samples[0].value


def test_histograms_are_exported_and_move_with_traffic(node):
    before = scrape(node)
    for name in EXPORTED:
        histogram_count(before[name])
    node.add_user(ALICE, PASSWORD)

    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=30) as smtp:
        smtp.sendmail("bob@elsewhere.test", [ALICE], b"Subject: m\r\n\r\nhello\r\n")
    imap = imaplib.IMAP4("127.0.0.1", node.imap_port, timeout=30)
    imap.login(ALICE, PASSWORD)
    pop = poplib.POP3("127.0.0.1", node.pop3_port, timeout=30)
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    during = scrape(node)
    # The IMAP and POP3 sessions are open now; SMTP's has ended.
    assert gauge(during, "chordmail_pop3_connections_open") == 1
    assert gauge(during, "chordmail_imap_connections_open") == 1
    pop.quit()
    imap.logout()

    after = scrape(node)
    for name in MOVED_BY_TRAFFIC:
        assert histogram_count(after[name]) > histogram_count(before[name]), name
    assert after["chordmail_smtp_messages_accepted"].samples[0].value == 1
    assert after["chordmail_smtp_connections"].samples[0].value == 1
    wait_until(lambda: gauge(scrape(node), "chordmail_pop3_connections_open") == 0, 10, "the POP3 session to close")
    wait_until(lambda: gauge(scrape(node), "chordmail_imap_connections_open") == 0, 10, "the IMAP session to close")
