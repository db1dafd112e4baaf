"""The fault workload must record what the client actually learnt. Goal: a QUIT
whose connection closes without a reply is recorded as unknown, never as refused
(soak seed 329: the node was killed after writing the deletion but before answering,
and a refused QUIT does not excuse the deleted messages, so the checker reported
them lost); a 451 after DATA is a refusal, not an acknowledgement (smtplib's data()
returns the reply instead of raising it). Method: scripted POP3 and SMTP servers on
loopback."""
import poplib
import socket
import threading

from tools.faults import workload

MESSAGE = b"Subject: x\r\n\r\ntoken FT-1-1\r\n"


def scripted_server(greeting, answer):
    """A loopback server for one connection: it sends `greeting`, then for each line
    received sends what `answer(line)` returns, a (reply, go_on) pair (reply None:
    nothing), and closes both sockets when go_on is false or the client leaves.
    Returns the listener's port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        connection, _ = listener.accept()
        try:
            connection.sendall(greeting)
            for line in connection.makefile("rb"):
                reply, go_on = answer(line)
                if reply is not None:
                    connection.sendall(reply)
                if not go_on:
                    return
        finally:
            connection.close()
            listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def scripted_pop3_server(quit_reply):
    """A one-connection POP3 server with one message; `quit_reply` None closes."""
    replies = {b"UIDL": b"+OK\r\n1 u1\r\n.\r\n", b"RETR": b"+OK\r\n" + MESSAGE + b".\r\n"}

    def answer(line):
        command = line.split()[0].upper()
        if command == b"QUIT":
            return quit_reply, False
        return replies.get(command, b"+OK\r\n"), True

    return scripted_server(b"+OK ready\r\n", answer)


def session(quit_reply, monkeypatch):
    port = scripted_pop3_server(quit_reply)
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
    in_data = False

    def answer(line):
        nonlocal in_data
        if in_data:
            if line != b".\r\n":
                return None, True
            in_data = False
            return final_reply, final_reply is not None
        command = line[:4].upper()
        if command == b"DATA":
            in_data = True
            return b"354 go on\r\n", True
        if command == b"QUIT":
            return b"221 bye\r\n", False
        return (b"250 scripted\r\n" if command == b"EHLO" else b"250 ok\r\n"), True

    return scripted_server(b"220 scripted ESMTP\r\n", answer)


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
