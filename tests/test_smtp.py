"""SMTP (docs/DESIGN.md §5, issue 3) against a running `chordmail node`, with real clients.

Goal: what Python's smtplib and swaks send is stored byte for byte (after
dot-unstuffing) behind our trace headers, and every refused input leaves the
mailboxes unchanged. Method: one node per test (the `node` fixture); mail goes in
over SMTP and is read back over POP3 (poplib), the way a user would see it.
"""
import poplib
import smtplib
import socket
import ssl
import subprocess

import pytest

from tools.chordlab import wait_until

ALICE, BOB, ZOE = "alice@example.org", "bob@localhost", "zoë@example.org"
PASSWORD = "correct horse battery"


@pytest.fixture
def mail_node(node):
    for address in (ALICE, BOB, ZOE):
        node.add_user(address, PASSWORD)
    return node


def fetch_all(node, address):
    """Every message of `address`, as stored (POP3 byte-unstuffing undone by poplib)."""
    pop = poplib.POP3("127.0.0.1", node.pop3_port, timeout=60)
    try:
        pop.user(address)
        pop.pass_(PASSWORD)
        count, _ = pop.stat()
        messages = []
        for number in range(1, count + 1):
            _, lines, _ = pop.retr(number)
            messages.append(b"".join(line + b"\r\n" for line in lines))
        return messages
    finally:
        pop.quit()


def trace_of(stored, sent):
    """The header lines the server put in front of what the client sent."""
    assert stored.endswith(sent), "the client's message is stored unchanged at the end"
    return stored[: len(stored) - len(sent)].decode()


def assert_nothing_stored(node):
    for address in (ALICE, BOB, ZOE):
        assert fetch_all(node, address) == [], f"{address} received mail"


def smtp(node):
    return smtplib.SMTP("127.0.0.1", node.smtp_port, local_hostname="client.test", timeout=60)


def insecure_tls():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the node's self-signed certificate
    return context


def test_several_recipients_with_trace_headers(mail_node):
    body = b"Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n"
    with smtp(mail_node) as client:
        client.ehlo()
        for keyword in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "auth", "starttls", "help"):
            assert client.has_extn(keyword), keyword
        assert client.esmtp_features["size"] == str(25 * 1024 * 1024)
        refused = client.sendmail("Sender@Elsewhere.example", [ALICE, BOB], body)
        assert refused == {}
    for address in (ALICE, BOB):
        [stored] = fetch_all(mail_node, address)
        trace = trace_of(stored, body)
        assert trace.startswith("Return-Path: <Sender@Elsewhere.example>\r\nReceived: from client.test ([127.0.0.1])\r\n")
        assert " with ESMTP id " in trace
        assert "Message-ID: <" in trace


def test_pipelining_in_one_write(mail_node):
    body = b"Message-ID: <pipelined@client.test>\r\n\r\nhello\r\n"
    with socket.create_connection(("127.0.0.1", mail_node.smtp_port), timeout=60) as sock:
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"220")
        sock.sendall(
            f"EHLO p\r\nMAIL FROM:<x@y.example>\r\nRCPT TO:<{ALICE}>\r\nRCPT TO:<nobody@example.org>\r\nDATA\r\n".encode()
        )
        codes = []
        while len(codes) < 5:
            line = stream.readline()
            if line[3:4] == b" ":
                codes.append(int(line[:3]))
        assert codes == [250, 250, 250, 550, 354]
        sock.sendall(body + b".\r\nQUIT\r\n")
        assert stream.readline().startswith(b"250 2.0.0")
        assert stream.readline().startswith(b"221")
    [stored] = fetch_all(mail_node, ALICE)
    trace = trace_of(stored, body)
    assert "Message-ID" not in trace, "the client's Message-ID is kept"
    assert f"for <{ALICE}>" in trace


def test_8bit_and_utf8(mail_node):
    body = "From: Jürgen <jürgen@bücher.example>\r\nSubject: Grüße\r\n\r\nÜmlaute, 日本語, emoji 📬\r\n".encode()
    with smtp(mail_node) as client:
        refused = client.sendmail("jürgen@bücher.example", [ZOE, ALICE], body, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        assert refused == {}
        code, _ = client.mail("jürgen@bücher.example")  # no SMTPUTF8 parameter
        assert code == 553
    for address in (ZOE, ALICE):
        [stored] = fetch_all(mail_node, address)
        assert "with UTF8SMTP" in trace_of(stored, body)


def test_ten_mebibyte_message(mail_node):
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.......\r\n"
    body = b"Subject: big\r\n\r\n" + line * (10 * 1024 * 1024 // len(line))
    with smtp(mail_node) as client:
        assert client.sendmail("big@elsewhere.example", [ALICE], body) == {}
    [stored] = fetch_all(mail_node, ALICE)
    trace_of(stored, body)


def test_starttls_then_auth_plain_and_login(mail_node):
    body = b"Subject: secure\r\n\r\nover TLS\r\n"
    for mechanism in ("PLAIN", "LOGIN"):
        with smtp(mail_node) as client:
            client.starttls(context=insecure_tls())
            client.ehlo()
            assert not client.has_extn("starttls")
            client.user, client.password = BOB, "wrong"
            with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
                client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"), initial_response_ok=False)
            assert failure.value.smtp_code == 535
            client.user, client.password = BOB, PASSWORD
            code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
            assert code == 235
            # Authenticated, another domain is accepted and queued (docs/DESIGN.md §12).
            assert client.sendmail(BOB, ["someone@elsewhere.example"], body) == {}
            assert client.sendmail(BOB, [ALICE], body) == {}
    stored = fetch_all(mail_node, ALICE)
    assert len(stored) == 2
    for message in stored:
        assert " with ESMTPSA id " in trace_of(message, body)
    # Each relayed copy is in the outbound queue, or already came back to Bob as a
    # DSN if this machine's DNS said at once that elsewhere.example does not exist.
    def relayed_copies():
        status, queue = mail_node.api("GET", "/api/queue")
        assert status == 200
        assert all(entry["recipients"] == ["someone@elsewhere.example"] for entry in queue["entries"])
        bounced = [m for m in fetch_all(mail_node, BOB) if b"Final-Recipient: rfc822; someone@elsewhere.example" in m]
        return len(queue["entries"]) + len(bounced) >= 2
    wait_until(relayed_copies, 30, "both relayed copies queued or bounced")


def test_rset_mid_transaction(mail_node):
    with smtp(mail_node) as client:
        client.login(BOB, PASSWORD)  # in clear text: allowed on loopback
        assert client.mail(BOB)[0] == 250
        assert client.rcpt(ALICE)[0] == 250
        assert client.rset()[0] == 250
        assert client.docmd("DATA")[0] == 503
        assert client.sendmail(BOB, [BOB], b"Subject: after rset\r\n\r\nx\r\n") == {}
    assert fetch_all(mail_node, ALICE) == []
    assert len(fetch_all(mail_node, BOB)) == 1


def test_swaks_plain_and_tls_auth(mail_node, tmp_path):
    message = b"From: bob@localhost\r\nTo: alice@example.org\r\nSubject: swaks\r\n\r\n.dot line\r\nbody\r\n"
    data_file = tmp_path / "message.eml"
    # swaks sends the file, then CRLF . CRLF itself: the file has no final line end.
    data_file.write_bytes(message[:-2])
    server = f"127.0.0.1:{mail_node.smtp_port}"
    anonymous = ["swaks", "--server", server, "--from", "x@y.example", "--to", ALICE, "--data", f"@{data_file}"]
    as_bob = ["swaks", "--server", server, "--from", BOB, "--to", ALICE, "--data", f"@{data_file}",
              "--auth-user", BOB, "--auth-password", PASSWORD]
    # On loopback AUTH is offered without TLS too (docs/DESIGN.md §10).
    plain_auth = as_bob + ["--auth", "PLAIN"]
    tls_auth = as_bob + ["--tls", "--auth", "LOGIN"]
    for command in (anonymous, plain_auth, tls_auth):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    stored = fetch_all(mail_node, ALICE)
    assert len(stored) == 3
    assert " with ESMTP id " in trace_of(stored[0], message)
    assert " with ESMTPA id " in trace_of(stored[1], message)
    assert " with ESMTPSA id " in trace_of(stored[2], message)


def test_senders_in_served_domains_need_their_login(mail_node):
    """Goal: nobody sends as a served address without logging in as it
    (docs/DESIGN.md §10): 553 5.7.1 without a login and with another one, nothing
    stored; the owner, logged in, is served. Method: smtplib on loopback."""
    with smtp(mail_node) as client:
        client.ehlo()
        code, text = client.mail(BOB)
        assert (code, text.split(b" ")[0]) == (553, b"5.7.1"), text
        assert b"authenticate" in text, text
        assert client.rcpt(ALICE)[0] == 503
        client.login(ALICE, PASSWORD)
        code, text = client.mail(BOB)
        assert code == 553 and b"not owned by the authenticated user" in text, text
        assert client.rcpt(ALICE)[0] == 503
    assert_nothing_stored(mail_node)
    with smtp(mail_node) as client:
        client.login(BOB, PASSWORD)
        assert client.sendmail(BOB, [ALICE], b"Subject: mine\r\n\r\nhi\r\n") == {}
    assert len(fetch_all(mail_node, ALICE)) == 1


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(
            [("MAIL FROM:<x@y.example>", "250"), ("RCPT TO:<nobody@example.org>", "550 5.1.1"), ("DATA", "554")],
            id="unknown-user",
        ),
        pytest.param(
            [("MAIL FROM:<x@y.example>", "250"), ("RCPT TO:<victim@elsewhere.example>", "550 5.7.1"), ("DATA", "554")],
            id="relay",
        ),
        pytest.param([("NOOP " + "x" * 600, "500 5.5.2"), ("NOOP", "250")], id="line-too-long"),
        pytest.param(
            [("MAIL FROM:<x@y.example> SIZE=26214401", "552 5.3.4"), ("RCPT TO:<alice@example.org>", "503")],
            id="declared-size",
        ),
        pytest.param([("RCPT TO:<alice@example.org>", "503"), ("DATA", "503")], id="no-mail"),
        pytest.param([("AUTH PLAIN AGJvYkBsb2NhbGhvc3QAd3Jvbmc=", "535 5.7.8")], id="wrong-password"),
    ],
)
def test_refused_input_stores_nothing(mail_node, script):
    with smtp(mail_node) as client:
        client.ehlo()
        for line, expected in script:
            code, text = client.docmd(line)
            assert f"{code} {text.decode()}".startswith(expected), f"{line[:40]!r} -> {code} {text!r}"
    assert_nothing_stored(mail_node)


def test_ten_bad_commands_close_the_session(mail_node):
    with socket.create_connection(("127.0.0.1", mail_node.smtp_port), timeout=60) as sock:
        stream = sock.makefile("rb")
        stream.readline()
        sock.sendall(b"BOGUS\r\n" * 10)
        replies = [stream.readline() for _ in range(10)]
        assert all(reply.startswith(b"500") for reply in replies[:9])
        assert replies[9].startswith(b"421")
        assert stream.readline() == b""
    assert_nothing_stored(mail_node)


def test_authentication_results_are_ours_alone(mail_node):
    """Goal: the node writes Authentication-Results (RFC 8601) naming who logged in,
    and drops one a client forged in its name (§5); another host's stays. Method: a
    logged-in and an anonymous smtplib delivery, each with a forged field, read back
    over POP3."""
    kept = b"Authentication-Results: mx.elsewhere.example; auth=pass\r\nSubject: forged\r\n\r\nhi\r\n"
    forged = b"Authentication-Results: localhost;\r\n auth=pass smtp.auth=alice@example.org\r\n"
    with smtp(mail_node) as client:
        client.login(BOB, PASSWORD)
        assert client.sendmail(BOB, [ALICE], forged + kept) == {}
    with smtp(mail_node) as client:
        assert client.sendmail("x@y.example", [ALICE], forged + kept) == {}
    logged_in, anonymous = fetch_all(mail_node, ALICE)
    for stored, ours in [(logged_in, f"Authentication-Results: localhost;\r\n\tauth=pass smtp.auth={BOB}\r\n"),
                         (anonymous, "Authentication-Results: localhost; auth=none\r\n")]:
        trace = trace_of(stored, kept)
        assert ours in trace, trace
        assert trace.count("Authentication-Results") == 1, f"the forged field is gone: {trace}"
