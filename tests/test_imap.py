"""IMAP (issue 15, docs/DESIGN.md §11) on a real ring, with Python's imaplib as the client.

Method: a ring of 3 `chordmail node` processes on loopback with `--replicas 3` and the
fast timing of test_replication; mail goes in with smtplib through one node, IMAP
sessions run on the others, POP3 checks what IMAP changed. Every node serves IMAP on
its ring port + 9000 (docs/DESIGN.md §2). Waits poll against a deadline; the IDLE latency
is printed with an `[imap timing]` prefix (run with `-s`).

With 3 nodes and 3 replicas every node holds a replica of every mailbox, so IDLE is
woken by the node's own replica (the write applied there). On a 4-node ring a node
outside the replica set is woken by a notification from the members it subscribed
with; the fallback poll (2 s) only makes up for a lost notification.
"""
import imaplib
import poplib
import re
import socket
import time

from tools.chordlab import wait_until
from test_replication import PASSWORD, add_users, message, replica_set, send, start_ring

IMAP_OFFSET = 9_000
# A delivery reaches an IDLE session within this (docs/DESIGN.md §11: 1 s; the fallback
# poll, were it the path taken, would still fit).
IDLE_BOUND_S = 3.0
# Below the fallback poll's 2 s: a wake-up this fast came from a notification.
NOTIFIED_BOUND_S = 1.0


def imap_port(node):
    return node.ring_port + IMAP_OFFSET


def imap_login(node, address):
    client = imaplib.IMAP4("127.0.0.1", imap_port(node), timeout=30)
    typ, _ = client.login(address, PASSWORD)
    assert typ == "OK"
    return client


def pop_messages(node, address):
    """The octets of every message POP3 lists through `node`, in listing order."""
    client = poplib.POP3("127.0.0.1", node.pop3_port, timeout=30)
    try:
        client.user(address)
        client.pass_(PASSWORD)
        count, _ = client.stat()
        messages = []
        for number in range(1, count + 1):
            _, lines, _ = client.retr(number)
            messages.append(b"".join(line + b"\r\n" for line in lines))
        client.quit()
        return messages
    finally:
        client.close()


def pop_messages_when_free(node, address):
    """pop_messages, retried while another node's POP3 session still holds the lease."""
    def attempt():
        try:
            return (pop_messages(node, address),)
        except poplib.error_proto as error:
            assert b"[IN-USE]" in error.args[0], error
            return None
    return wait_until(attempt, 10.0, f"the maildrop of {address} through {node.addr}")[0]


def fetch_body(client, number):
    typ, data = client.fetch(str(number), "(BODY.PEEK[])")
    assert typ == "OK", data
    return data[0][1]


def fetch_flags(client, number):
    typ, data = client.fetch(str(number), "(FLAGS)")
    assert typ == "OK", data
    return data[0].decode()


def test_imap_session_across_the_ring(make_node, tmp_path):
    """Goal: one mailbox served by IMAP on every node, on the same replicated data as
    SMTP and POP3. Method: deliver through node A; on node B select INBOX, fetch the
    message (byte-exact against POP3's RETR through node C, and ending with what SMTP
    was given), set \\Seen; see the flag through node C; CREATE, APPEND and LIST
    through C and read the folder through A; EXPUNGE in INBOX through B, after which
    POP3 lists nothing."""
    a, b, c = start_ring(make_node, tmp_path, 3)
    address = "reader@example.org"
    add_users(a, [address])
    sent = message("imap-one")
    send(a, [address], sent)

    on_b = imap_login(b, address)
    typ, data = on_b.select("INBOX")
    assert typ == "OK" and data == [b"1"], data
    fetched = fetch_body(on_b, 1)
    assert fetched.endswith(sent), fetched
    assert [fetched] == pop_messages_when_free(c, address), "IMAP and POP3 serve different octets"

    typ, _ = on_b.store("1", "+FLAGS", "(\\Seen)")
    assert typ == "OK"
    on_c = imap_login(c, address)
    assert on_c.select("INBOX", readonly=True)[0] == "OK"
    assert "\\Seen" in fetch_flags(on_c, 1)
    on_c.close()

    assert on_c.create("Work")[0] == "OK"
    appended = b"From: me@example.org\r\nSubject: draft\r\n\r\nkept in Work\r\n"
    typ, data = on_c.append("Work", "(\\Flagged)", None, appended)
    assert typ == "OK" and b"APPENDUID" in data[0], data
    typ, listing = on_c.list()
    assert typ == "OK"
    names = [line.decode().rsplit(" ", 1)[-1].strip('"') for line in listing]
    assert "INBOX" in names and "Work" in names, listing

    on_a = imap_login(a, address)
    typ, data = on_a.select("Work")
    assert typ == "OK" and data == [b"1"], data
    assert fetch_body(on_a, 1) == appended
    assert "\\Flagged" in fetch_flags(on_a, 1)
    typ, data = on_a.status("Work", "(MESSAGES UIDNEXT UNSEEN)")
    assert typ == "OK" and b"MESSAGES 1" in data[0] and b"UIDNEXT 2" in data[0], data

    assert on_b.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
    typ, data = on_b.expunge()
    assert typ == "OK" and data == [b"1"], data
    assert pop_messages_when_free(a, address) == []
    for client in (on_a, on_b, on_c):
        client.logout()


def idle_until_exists(client, tag, deadline_s):
    """Reads IDLE's untagged lines until `* N EXISTS`; returns N."""
    client.sock.settimeout(deadline_s)
    while True:
        line = client.readline()
        assert line, "the server closed the connection during IDLE"
        found = re.match(rb"\* (\d+) EXISTS", line)
        if found:
            return int(found.group(1))


def idle_rounds(client, writer, address, n_rounds, first_exists):
    """IDLE `n_rounds` times; each time deliver through `writer` and time the
    `EXISTS`; DONE ends each IDLE with a tagged OK. Returns the latencies."""
    latencies = []
    for round_idx in range(n_rounds):
        tag = client._new_tag().decode()
        client.send(f"{tag} IDLE\r\n".encode())
        assert client.readline().startswith(b"+"), "no IDLE continuation"
        started = time.monotonic()
        send(writer, [address], message(f"pushed-{round_idx}"))
        n_exists = idle_until_exists(client, tag, IDLE_BOUND_S)
        latencies.append(time.monotonic() - started)
        assert n_exists == first_exists + round_idx
        client.send(b"DONE\r\n")
        client.sock.settimeout(30)
        while True:
            line = client.readline()
            if line.startswith(tag.encode()):
                assert b" OK " in line, line
                break
    return latencies


def test_idle_hears_a_delivery_through_another_node(make_node, tmp_path):
    """Goal: an IDLE session learns of a delivery made through another node at once
    (docs/DESIGN.md §11: within 1 s). Method: IDLE on node B (a replica of the mailbox, as
    every node of a 3-node ring with 3 copies is, so its own replica wakes it);
    deliver through node A and time `* N EXISTS` from before the SMTP session;
    end IDLE with DONE; three rounds."""
    a, b, _ = start_ring(make_node, tmp_path, 3)
    address = "idler@example.org"
    add_users(a, [address])
    send(a, [address], message("before-idle"))
    client = imap_login(b, address)
    assert client.select("INBOX") == ("OK", [b"1"])
    latencies = idle_rounds(client, a, address, 3, first_exists=2)
    print(f"[imap timing] replica's own wake-up, SMTP through A to EXISTS on B: {[round(s, 3) for s in latencies]} s")
    assert max(latencies) < NOTIFIED_BOUND_S
    client.logout()


def test_idle_on_a_node_outside_the_replica_set(make_node, tmp_path):
    """Goal: IDLE across the ring: a node that holds no replica of the mailbox hears
    of a delivery by a notification from the replica set, not by its fallback poll.
    Method: a 4-node ring with 3 copies; IDLE on the one node outside the address's
    replica set, deliver through the coordinator. The first IDLE registers the
    node's subscription with the members (a delivery racing it may need the poll,
    so it gets IDLE_BOUND_S); the next rounds must be faster than the 2 s poll."""
    nodes = start_ring(make_node, tmp_path, 4)
    address = "far@example.org"
    members = replica_set(nodes, address)
    outsider = next(node for node in nodes if node not in members)
    add_users(members[0], [address])
    client = imap_login(outsider, address)
    assert client.select("INBOX") == ("OK", [b"0"])
    latencies = idle_rounds(client, members[0], address, 4, first_exists=1)
    print(f"[imap timing] notification across the ring, SMTP through the coordinator to EXISTS on a non-replica: {[round(s, 3) for s in latencies]} s")
    assert max(latencies[1:]) < NOTIFIED_BOUND_S, latencies
    client.logout()


def test_plaintext_login_is_offered_on_loopback_with_starttls(node):
    """Goal: the node's IMAP listener greets with its capabilities, offers STARTTLS
    and IDLE, and allows LOGIN from loopback. Method: one imaplib session on a
    one-node ring."""
    node.add_user("solo@example.org", PASSWORD)
    client = imaplib.IMAP4("127.0.0.1", imap_port(node), timeout=30)
    for capability in ("IMAP4REV1", "IMAP4REV2", "STARTTLS", "IDLE", "UIDPLUS", "MOVE"):
        assert capability in client.capabilities, client.capabilities
    assert client.login("solo@example.org", PASSWORD)[0] == "OK"
    assert client.select("INBOX") == ("OK", [b"0"])
    client.logout()
    sock = socket.create_connection(("127.0.0.1", imap_port(node)), timeout=10)
    assert sock.recv(1024).startswith(b"* OK")
    sock.close()
