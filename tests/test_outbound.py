"""Mail to other domains (docs/DESIGN.md §12): two rings, `a.test` and `b.test`, each
one node on loopback, whose `[relay] routes` point at each other's SMTP port.

What is checked: an authenticated sender's message to the other ring arrives there
byte-exact behind the trace headers; an unauthenticated one is refused and queues
nothing; a destination that is down keeps the entry queued (`chordmail queue list`
shows it with its error) until it is back and the entry is retried; a recipient the
other ring does not know comes back to the sender as a DSN; an operator can delete
an entry.
"""
import poplib
import smtplib
import ssl
import time

import pytest

from conftest import run_cli
from tools.chordlab import wait_until

PASSWORD = "correct horse battery"
DELIVERY_BOUND_S = 30


def insecure_tls():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the node's self-signed certificate
    return context


def pop_messages(node, address):
    """Every message in `address`'s maildrop on `node`, as bytes."""
    client = poplib.POP3("127.0.0.1", node.pop3_port, timeout=30)
    try:
        client.user(address)
        client.pass_(PASSWORD)
        count, _ = client.stat()
        return [b"\r\n".join(client.retr(number)[1]) + b"\r\n" for number in range(1, count + 1)]
    finally:
        client.quit()


def send(node, sender, recipients, message, login=True):
    """Sends over SMTP (STARTTLS, then AUTH as `sender` when `login`); returns the
    refused recipients as smtplib reports them."""
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=30) as client:
        client.starttls(context=insecure_tls())
        if login:
            client.login(sender, PASSWORD)
        return client.sendmail(sender, recipients, message)


def queue_of(node):
    status, body = node.api("GET", "/api/queue")
    assert status == 200, (status, body)
    return body["entries"]


@pytest.fixture
def rings(make_node, tmp_path):
    """Ring B (`b.test`) and ring A (`a.test`), each routing the other's domain to
    it, with retries every second or two; alice@a.test and bob@b.test exist."""
    b = make_node(start=False, domains=("b.test",))
    a = make_node(start=False, domains=("a.test",))
    for here, there, domain in ((a, b, "b.test"), (b, a, "a.test")):
        config = tmp_path / f"relay-{here.ring_port}.toml"
        config.write_text(
            "[relay]\n"
            f'routes = {{ "{domain}" = "127.0.0.1:{there.smtp_port}" }}\n'
            "retry_first_s = 1\nretry_max_s = 2\nconnect_timeout_s = 2\ncommand_timeout_s = 5\n"
        )
        here.args += ["--config", str(config)]
    b.start()
    a.start()
    a.add_user("alice@a.test", PASSWORD)
    b.add_user("bob@b.test", PASSWORD)
    return a, b


def test_a_message_crosses_to_the_other_ring_and_an_unauthenticated_one_does_not(rings):
    """Goal: authenticated mail to another domain is queued with the write quorum
    and delivered there byte-exact; without AUTH the ring is no relay and queues
    nothing. Method: smtplib to ring A, then POP3 on ring B."""
    a, b = rings
    message = (b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: across\r\nMessage-ID: <across@a.test>\r\n"
               b"\r\nhello from a\r\n.a line with a dot\r\n")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(a, "stranger@elsewhere.test", ["bob@b.test"], message, login=False)
    assert refused.value.recipients["bob@b.test"][0] == 550
    assert queue_of(a) == [], "an unauthenticated relay attempt was queued"

    assert send(a, "alice@a.test", ["bob@b.test"], message) == {}
    delivered = wait_until(lambda: pop_messages(b, "bob@b.test"), DELIVERY_BOUND_S, "the message on ring B")
    assert len(delivered) == 1
    assert delivered[0].endswith(message), delivered[0]
    headers = delivered[0][: -len(message)].decode()
    assert headers.count("Received: ") == 2, f"one Received per ring:\n{headers}"
    wait_until(lambda: queue_of(a) == [], 10, "ring A's queue to empty")


def test_a_destination_that_is_down_keeps_the_entry_until_it_is_back(rings):
    """Goal: a message for a ring that is down is deferred, shown by `chordmail
    queue list` with its error, and delivered once the ring is back and an operator
    retries it. Method: kill ring B, send, read the queue, restart B, retry."""
    a, b = rings
    b.kill()
    message = b"Subject: later\r\n\r\nwhile you were down\r\n"
    assert send(a, "alice@a.test", ["bob@b.test"], message) == {}

    def deferred():
        entries = queue_of(a)
        return entries if entries and entries[0]["attempts"] >= 1 and entries[0]["last_error"] else None
    [entry] = wait_until(deferred, DELIVERY_BOUND_S, "a deferred entry")
    assert entry["recipients"] == ["bob@b.test"] and entry["sender"] == "alice@a.test"
    code, out, err = run_cli("queue", "list", "--node", a.http, "--token-file", str(a.token_file))
    assert code == 0 and entry["id"] in out and "bob@b.test" in out, (out, err)

    b.start()
    code, out, err = run_cli("queue", "retry", entry["id"], "--node", a.http, "--token-file", str(a.token_file))
    assert code == 0, err
    delivered = wait_until(lambda: pop_messages(b, "bob@b.test"), DELIVERY_BOUND_S, "the deferred message on ring B")
    assert len(delivered) == 1 and delivered[0].endswith(message)
    wait_until(lambda: queue_of(a) == [], 10, "ring A's queue to empty")


def test_an_unknown_recipient_comes_back_as_a_dsn_and_an_operator_can_delete(rings):
    """Goal: a 550 from the other ring produces one RFC 3464 report in the sender's
    mailbox and no entry is left; `chordmail queue delete` removes an entry for
    good. Method: send to nobody@b.test; then queue one for a dead ring and delete it."""
    a, b = rings
    assert send(a, "alice@a.test", ["nobody@b.test"], b"Subject: lost\r\n\r\nto no one\r\n") == {}
    reports = wait_until(lambda: pop_messages(a, "alice@a.test"), DELIVERY_BOUND_S, "the DSN in alice's mailbox")
    assert len(reports) == 1
    report = reports[0].decode()
    assert "report-type=delivery-status" in report
    assert "Final-Recipient: rfc822; nobody@b.test" in report and "Status: 5.1.1" in report, report
    assert "Subject: lost" in report, "the original headers are returned"
    wait_until(lambda: queue_of(a) == [], 10, "ring A's queue to empty")

    b.kill()
    assert send(a, "alice@a.test", ["bob@b.test"], b"Subject: never\r\n\r\nx\r\n") == {}
    [entry] = wait_until(lambda: queue_of(a), 10, "an entry")
    code, _, err = run_cli("queue", "delete", entry["id"], "--node", a.http, "--token-file", str(a.token_file))
    assert code == 0, err
    assert queue_of(a) == []
    code, _, err = run_cli("queue", "delete", entry["id"], "--node", a.http, "--token-file", str(a.token_file))
    assert code == 1 and "no queue entry" in err, err
    b.start()
    # Nothing to poll for: an absence is checked after two retry periods, in which a
    # deleted entry would have been delivered.
    time.sleep(3)
    assert pop_messages(b, "bob@b.test") == []
