"""The fault workload must record what the client actually learnt. Goal: a QUIT
whose connection closes without a reply is recorded as unknown, never as refused
(soak seed 329: the node was killed after writing the deletion but before answering,
and a refused QUIT does not excuse the deleted messages, so the checker reported
them lost); a 451 after DATA is a refusal, not an acknowledgement (smtplib's data()
returns the reply instead of raising it). Method: scripted POP3 and SMTP servers on
loopback."""
import socket
import sys
import threading
from pathlib import Path

import poplib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "faults"))

import workload  # noqa: E402

MESSAGE = b"Subject: x\r\n\r\ntoken FT-1-1\r\n"


def serve_once(script):
    """Runs `script(connection, lines)` for the first connection to a loopback
    listener, then closes both; returns the listener's port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        connection, _ = listener.accept()
        try:
            script(connection, connection.makefile("rb"))
        finally:
            connection.close()
            listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def scripted_server(quit_reply):
    """A one-connection POP3 server with one message; `quit_reply` None closes."""
    def script(connection, lines):
        connection.sendall(b"+OK ready\r\n")
        for line in lines:
            command = line.split()[0].upper()
            if command == b"UIDL":
                connection.sendall(b"+OK\r\n1 u1\r\n.\r\n")
            elif command == b"RETR":
                connection.sendall(b"+OK\r\n" + MESSAGE + b".\r\n")
            elif command == b"QUIT":
                if quit_reply is not None:
                    connection.sendall(quit_reply)
                return
            else:
                connection.sendall(b"+OK\r\n")

    return serve_once(script)


def session(quit_reply, monkeypatch):
    port = scripted_server(quit_reply)
    monkeypatch.setattr(workload, "pop3_connect", lambda ip, timeout: poplib.POP3(ip, port, timeout=timeout))
    history = workload.History()
    return workload.pop_session(history, AlwaysDelete(), 0, "127.0.0.1", "user0@example.org", delete_fraction=1.0)


class AlwaysDelete:
    """The PRNG of a session that deletes every message."""

    def random(self):
        return 0.0


def test_a_quit_that_gets_no_reply_is_unknown(monkeypatch):
    op = session(None, monkeypatch)
    assert op["deleted"] == ["u1"]
    assert op["quit"] == "unknown" and op["outcome"] == "unknown", op


def test_a_quit_answered_err_is_refused(monkeypatch):
    op = session(b"-ERR [SYS/TEMP] not removed\r\n", monkeypatch)
    assert op["quit"] == "refused" and op["outcome"] == "refused", op


def test_a_quit_answered_ok_is_ok(monkeypatch):
    op = session(b"+OK bye\r\n", monkeypatch)
    assert op["quit"] == "ok" and op["outcome"] == "ok", op


def scripted_smtp_server(final_reply):
    """A one-connection SMTP server that answers the end of DATA with `final_reply`
    (None: closes the connection instead)."""
    def script(connection, lines):
        connection.sendall(b"220 scripted ESMTP\r\n")
        in_data = False
        for line in lines:
            if in_data:
                if line == b".\r\n":
                    if final_reply is None:
                        return
                    connection.sendall(final_reply)
                    in_data = False
                continue
            command = line[:4].upper()
            if command == b"EHLO":
                connection.sendall(b"250 scripted\r\n")
            elif command == b"DATA":
                connection.sendall(b"354 go on\r\n")
                in_data = True
            elif command == b"QUIT":
                connection.sendall(b"221 bye\r\n")
                return
            else:
                connection.sendall(b"250 ok\r\n")

    return serve_once(script)


def delivery(final_reply, monkeypatch):
    port = scripted_smtp_server(final_reply)
    real_smtp = workload.smtplib.SMTP
    monkeypatch.setattr(workload.smtplib, "SMTP", lambda ip, _port, **kwargs: real_smtp(ip, port, **kwargs))
    history = workload.History()
    workload.deliver(history, workload.random.Random(1), 0, "127.0.0.1", "user0@example.org", "FT-1-1")
    return history.ops[-1]


def test_a_451_after_data_is_refused(monkeypatch):
    op = delivery(b"451 4.3.0 quorum not reached\r\n", monkeypatch)
    assert op["outcome"] == "refused", op


def test_a_connection_lost_after_data_is_unknown(monkeypatch):
    op = delivery(None, monkeypatch)
    assert op["outcome"] == "unknown", op


def test_a_250_after_data_is_acknowledged(monkeypatch):
    op = delivery(b"250 2.0.0 queued\r\n", monkeypatch)
    assert op["outcome"] == "ok", op
