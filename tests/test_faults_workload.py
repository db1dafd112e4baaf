"""The fault workload must record what the client actually learnt. Goal: a QUIT
whose connection closes without a reply is recorded as unknown, never as refused
(soak seed 329: the node was killed after writing the deletion but before answering,
and a refused QUIT does not excuse the deleted messages, so the checker reported
them lost). Method: a scripted POP3 server on loopback that answers the session and
closes the connection at QUIT, or answers QUIT with -ERR."""
import socket
import sys
import threading
from pathlib import Path

import poplib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "faults"))

import workload  # noqa: E402

MESSAGE = b"Subject: x\r\n\r\ntoken FT-1-1\r\n"


def scripted_server(quit_reply):
    """A one-connection POP3 server with one message; `quit_reply` None closes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        connection, _ = listener.accept()
        reader = connection.makefile("rb")
        connection.sendall(b"+OK ready\r\n")
        for line in reader:
            command = line.split()[0].upper()
            if command == b"UIDL":
                connection.sendall(b"+OK\r\n1 u1\r\n.\r\n")
            elif command == b"RETR":
                connection.sendall(b"+OK\r\n" + MESSAGE + b".\r\n")
            elif command == b"QUIT":
                if quit_reply is not None:
                    connection.sendall(quit_reply)
                break
            else:
                connection.sendall(b"+OK\r\n")
        connection.close()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


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
