"""`--log-format json` (docs/DESIGN.md §13, issue 17): the log read line by line.

Method: start a node with `--log-format json`, deliver one message to two accounts
over SMTP, then parse every line the node wrote with Python's json module. The
delivery's line must carry the fields operators grep for, inside the connection's
span; neither the body nor a password may appear anywhere in the log.
"""
import json
import smtplib

from tools.chordlab import wait_until

ALICE = "alice@example.org"
CAROL = "carol@example.org"
PASSWORD = "log-secret-password-3141"
BODY_MARKER = "body-marker-that-must-not-be-logged-2718"


def log_records(node):
    """Every line of the node's log, parsed; a line that is no JSON object fails."""
    records = []
    for line in node.log().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)
    return records


def test_json_log_lines_parse_and_the_delivery_line_has_its_fields(make_node):
    node = make_node(args=("--log-format", "json"))
    node.add_user(ALICE, PASSWORD)
    node.add_user(CAROL, PASSWORD)
    message = f"Subject: logs\r\nMessage-ID: <logs@test>\r\n\r\n{BODY_MARKER}\r\n".encode()
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=30) as smtp:
        smtp.sendmail("bob@elsewhere.test", [ALICE, CAROL], message)

    def delivery_lines():
        return [r for r in log_records(node) if r.get("message") == "delivery"]

    wait_until(lambda: delivery_lines(), 10, "the delivery line in the log")
    records = log_records(node)
    assert all({"timestamp", "level", "target"} <= record.keys() for record in records), records[:3]
    (line,) = delivery_lines()
    assert line["level"] == "INFO"
    assert line["outcome"] == "stored"
    assert line["sender"] == "bob@elsewhere.test"
    assert line["n_recipients"] == 2 and line["n_local"] == 2 and line["n_remote"] == 0
    # --replicas 1: each recipient's copy is acknowledged by the one replica.
    assert line["n_copies_acknowledged"] == 2
    # The trace headers come in front of what the client sent.
    assert line["n_bytes"] > len(message)
    assert len(line["queue_id"]) == 32 and int(line["queue_id"], 16) >= 0, line
    assert line["span"]["name"] == "smtp.session"
    assert line["span"]["peer"].startswith("127.0.0.1:")
    assert len(line["span"]["session_id"]) == 16
    text = node.log()
    assert BODY_MARKER not in text and PASSWORD not in text
    # Recipients are counted, not listed: the line is about the message.
    assert ALICE not in json.dumps(line) and CAROL not in json.dumps(line)
