"""POP3 (docs/DESIGN.md §6, issue 4) against a running node with real clients.

Method: start one `chordmail node`, create an account over the admin API, put mail
in with smtplib through the node's SMTP server, and take it out with Python's
poplib and with fetchmail. Bodies must come out as SMTP accepted them (after the
trace header the node adds).
"""
import email
import email.policy
from shutil import which as shutil_which
import os
import poplib
import smtplib
import ssl
import stat
import subprocess
import sys

import pytest

from tools.chordlab import wait_until

ALICE = "alice@example.org"
PASSWORD = "pop3 secret"
LOCK_RELEASE_TIMEOUT_S = 10.0


def make_message(subject, body_lines):
    lines = ["From: bob@example.org", f"To: {ALICE}", f"Subject: {subject}", "Message-ID: <%s@test>" % subject, ""]
    return "\r\n".join(lines + body_lines) + "\r\n"


def send(node, message):
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=30) as smtp:
        smtp.sendmail("bob@elsewhere.example", [ALICE], message.encode())


def body_of(raw):
    """Subject and body of a message as a client sees it, line endings normalised."""
    parsed = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.compat32)
    return parsed["Subject"], parsed.get_payload().replace("\r\n", "\n")


def connect(node):
    return poplib.POP3("127.0.0.1", node.pop3_port, timeout=30)


def login(node):
    client = connect(node)
    client.user(ALICE)
    client.pass_(PASSWORD)
    return client


def login_when_free(node):
    def attempt():
        client = connect(node)
        try:
            client.user(ALICE)
            client.pass_(PASSWORD)
            return client
        except poplib.error_proto as error:
            client.close()
            assert b"[IN-USE]" in error.args[0], error
            return None
    return wait_until(attempt, LOCK_RELEASE_TIMEOUT_S, "the maildrop lock to be released")


@pytest.fixture
def mailbox(node):
    """The node with ALICE's account and three messages delivered through SMTP."""
    node.add_user(ALICE, PASSWORD)
    messages = [
        make_message("first", ["hello", "world"]),
        make_message("dots", [".leading dot", "..two dots", ".", "end"]),
        make_message("long", [f"line {i}" for i in range(200)]),
    ]
    for message in messages:
        send(node, message)
    return node, messages


def test_poplib_walks_every_command(mailbox):
    """Goal: every RFC 1939 command through a standard client. Method: poplib's
    capa, stat, list, uidl, top, retr, dele, rset and quit, checking each answer."""
    node, messages = mailbox
    client = connect(node)
    capabilities = client.capa()
    for name in ["TOP", "UIDL", "USER", "SASL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "IMPLEMENTATION"]:
        assert name in capabilities, capabilities
    assert capabilities["SASL"] == ["PLAIN"]
    client.user(ALICE)
    client.pass_(PASSWORD)
    # In TRANSACTION a login is no longer offered (RFC 2449 §5).
    assert "USER" not in client.capa()
    count, total = client.stat()
    assert count == 3
    status, listing, _ = client.list()
    sizes = [int(line.split()[1]) for line in listing]
    assert sum(sizes) == total and len(sizes) == 3
    status, uidls, _ = client.uidl()
    uids = [line.split()[1] for line in uidls]
    assert len(set(uids)) == 3 and all(len(uid) == 32 for uid in uids), uids
    assert client.uidl(2).split()[2] == uids[1]

    for msg, message in enumerate(messages, start=1):
        status, lines, octets = client.retr(msg)
        assert status.startswith(b"+OK %d octets" % sizes[msg - 1])
        raw = b"\r\n".join(lines) + b"\r\n"
        assert len(raw) == sizes[msg - 1], "RETR size differs from LIST"
        assert raw.endswith(message.encode()), "the body is not what SMTP accepted"
        assert body_of(raw) == body_of(message.encode())

    status, lines, _ = client.top(3, 5)
    header_end = lines.index(b"")
    assert lines[header_end + 1:] == [b"line 0", b"line 1", b"line 2", b"line 3", b"line 4"]
    status, lines, _ = client.top(3, 0)
    assert lines[-1] == b""

    assert client.dele(1).startswith(b"+OK")
    assert client.stat() == (2, total - sizes[0])
    with pytest.raises(poplib.error_proto):
        client.retr(1)
    assert client.rset().startswith(b"+OK")
    assert client.stat() == (3, total)
    client.dele(2)
    assert client.quit().startswith(b"+OK")

    client = login_when_free(node)
    assert client.stat() == (2, total - sizes[1])
    status, uidls_after, _ = client.uidl()
    assert [line.split()[1] for line in uidls_after] == [uids[0], uids[2]], "UIDLs changed across sessions"
    client.quit()


def test_lock_in_use_and_released(mailbox):
    """Goal: one session per maildrop. Method: a second login gets [IN-USE]; the
    lock is free again after QUIT and after the first client simply disconnects."""
    node, _ = mailbox
    first = login(node)
    second = connect(node)
    second.user(ALICE)
    with pytest.raises(poplib.error_proto) as refused:
        second.pass_(PASSWORD)
    assert refused.value.args[0].startswith(b"-ERR [IN-USE]")
    second.close()
    first.quit()
    again = login_when_free(node)
    again.dele(1)
    again.close()  # A dropped connection: no QUIT, so nothing is removed.
    after_drop = login_when_free(node)
    assert after_drop.stat()[0] == 3
    after_drop.quit()


def test_bad_credentials_and_long_lines(mailbox):
    """Goal: bad input gets a clear error and the session survives. Method: a wrong
    password ([AUTH]), then a 300-octet line, then a good login."""
    node, _ = mailbox
    client = connect(node)
    client.user(ALICE)
    with pytest.raises(poplib.error_proto) as refused:
        client.pass_("wrong")
    assert refused.value.args[0].startswith(b"-ERR [AUTH]")
    client._putcmd("NOOP " + "x" * 300)
    assert client._getline()[0] == b"-ERR command line too long"
    client.user(ALICE)
    client.pass_(PASSWORD)
    assert client.stat()[0] == 3
    client.quit()


def test_stls_then_login(mailbox):
    """Goal: STLS with the node's certificate. Method: poplib.stls trusting the
    self-signed certificate in --data/tls, then a login and a RETR over TLS."""
    node, messages = mailbox
    cert = node.data / "tls" / "self-signed.crt"
    client = connect(node)
    assert "STLS" in client.capa()
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False  # The certificate names localhost; we dial 127.0.0.1.
    client.stls(context)
    assert "STLS" not in client.capa()
    client.user(ALICE)
    client.pass_(PASSWORD)
    status, lines, _ = client.retr(1)
    assert (b"\r\n".join(lines) + b"\r\n").endswith(messages[0].encode())
    client.quit()


MDA_SCRIPT = """
import sys, uuid, pathlib
pathlib.Path(sys.argv[1], uuid.uuid4().hex + ".eml").write_bytes(sys.stdin.buffer.read())
"""


def run_fetchmail(node, tmp_path, tls):
    """Runs fetchmail once against the node; returns the messages it delivered."""
    out_dir = tmp_path / ("fetched-tls" if tls else "fetched")
    out_dir.mkdir()
    mda = tmp_path / "mda.py"
    mda.write_text(MDA_SCRIPT)
    if tls:
        cert = node.data / "tls" / "self-signed.crt"
        security = f"sslproto 'tls1.2+' sslcertck sslcertfile '{cert}'"
        host = "localhost"
    else:
        security = "sslproto ''"
        host = "127.0.0.1"
    rc = tmp_path / ("fetchmailrc-tls" if tls else "fetchmailrc")
    rc.write_text(
        "set no bouncemail\n"
        f"poll {host} protocol pop3 port {node.pop3_port} timeout 30\n"
        f'  user "{ALICE}" there with password "{PASSWORD}" is "tester" here\n'
        f'  {security} mda "{sys.executable} {mda} {out_dir}"\n'
    )
    rc.chmod(stat.S_IRUSR | stat.S_IWUSR)
    env = dict(os.environ, HOME=str(tmp_path), FETCHMAILHOME=str(tmp_path))
    assert shutil_which("fetchmail"), "fetchmail is missing: apt-get install -y fetchmail"
    result = subprocess.run(
        ["fetchmail", "-f", str(rc), "--nodetach", "--nosyslog", "-v", "--pidfile", str(tmp_path / "fetchmail.pid")],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, f"fetchmail failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return [path.read_bytes() for path in out_dir.iterdir()]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "stls"])
def test_fetchmail_fetches_what_smtp_accepted(mailbox, tmp_path, tls):
    """Goal: a real mail client gets exactly what SMTP accepted and removes it.
    Method: fetchmail (plain on loopback, and with STLS verifying the node's
    certificate) into files; compare subjects and bodies; the maildrop is empty."""
    node, messages = mailbox
    fetched = run_fetchmail(node, tmp_path, tls)
    assert sorted(body_of(raw) for raw in fetched) == sorted(body_of(m.encode()) for m in messages)
    client = login_when_free(node)
    assert client.stat() == (0, 0), "fetchmail's deletions were not applied at QUIT"
    client.quit()
