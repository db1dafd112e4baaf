"""The middleware (docs/DESIGN.md §7, issue 7): request/reply between programs over mail.

Method: start real `chordmail node` processes, create accounts over the admin API,
run `chordmail rpc serve` (or, until the binary carries the subcommand, the same CLI
module built as the `rpc_cli` example of crates/rpc) and call it with `rpc call` or
with the `rpc_load` example, which checks that every reply carries its own request's
body. Mailboxes are inspected with Python's smtplib and poplib, independent of the
crate under test.

Tests marked "needs replication" use a 3-node ring and pass once any node serves
any mailbox (crates/repl); before that an account lives only on the node that
created it.
"""
import hashlib
import json
import os
import poplib
import signal
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, ROOT
from tools.chordlab import wait_until
from tools.chordlab.node import target_dir

PASSWORD = "rpc secret"
SERVICE = "svc@localhost"
CALLER = "me@localhost"
EXAMPLES = Path(os.environ.get("CM_RPC_EXAMPLES", target_dir() / "debug" / "examples"))
# A reply travels SMTP -> poll -> handler -> SMTP -> poll; on a loaded 2-core machine
# a few seconds each is plenty.
CALL_TIMEOUT_S = 60
RING_READY_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def rpc_cli():
    """The argv prefix of `chordmail rpc`: the binary's subcommand when it has one."""
    if subprocess.run([BIN, "rpc", "--help"], capture_output=True).returncode == 0:
        return [BIN, "rpc"]
    build_examples()
    return [str(EXAMPLES / "rpc_cli")]


@pytest.fixture(scope="session")
def rpc_load():
    build_examples()
    return str(EXAMPLES / "rpc_load")


_built = []


def build_examples():
    if _built:
        return
    if not os.environ.get("CM_RPC_EXAMPLES"):
        subprocess.run(["cargo", "build", "-q", "-p", "cm-rpc", "--examples"], cwd=ROOT, check=True, timeout=1200)
    _built.append(True)


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    return str(path)


class Runner:
    """One `rpc serve` process, killed at the end of the test."""

    def __init__(self, argv, log_path):
        self.argv = argv
        self.log_path = log_path
        self.process = None

    def start(self):
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def serve(rpc_cli, password_file, tmp_path):
    """serve(servers, command, account=SERVICE, state=..., extra=[]) -> started Runner."""
    runners = []

    def start(servers, command, account=SERVICE, state=None, extra=()):
        argv = [*rpc_cli, "serve", "--account", account, "--password-file", password_file]
        for server in servers:
            argv += ["--server", server]
        argv += ["--state", str(state or tmp_path / f"state-{account}"), *extra, "--", *command]
        runner = Runner(argv, tmp_path / f"serve-{len(runners)}.log").start()
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        runner.kill()


def smtp_server(node):
    return f"127.0.0.1:{node.smtp_port}/{node.pop3_port}"


def call_argv(rpc_cli, password_file, servers, to=SERVICE, method="echo", timeout=CALL_TIMEOUT_S, account=CALLER):
    argv = [*rpc_cli, "call", "--account", account, "--password-file", password_file, "--to", to]
    for server in servers:
        argv += ["--server", server]
    return argv + ["--method", method, "--timeout", str(timeout)]


def call(rpc_cli, password_file, servers, body=b"", **kwargs):
    result = subprocess.run(
        call_argv(rpc_cli, password_file, servers, **kwargs), input=body, capture_output=True, timeout=CALL_TIMEOUT_S + 30
    )
    return result.returncode, result.stdout, result.stderr.decode(errors="replace")


def mailbox(node, account):
    """(uidl, raw message) of every mail in the account's mailbox, read with poplib."""
    def attempt():
        client = poplib.POP3("127.0.0.1", node.pop3_port, timeout=30)
        try:
            client.user(account)
            client.pass_(PASSWORD)
            mails = []
            for line in client.uidl()[1]:
                number, uidl = line.decode().split()
                mails.append((uidl, b"\r\n".join(client.retr(int(number))[1])))
            return mails
        finally:
            client.quit()
    # A poller of the account may hold the maildrop lock for a moment.
    return wait_until(lambda: (attempt(),), 20, f"the mailbox of {account}")[0]


def inject(node, sender, recipient, message, password=None):
    """Sends `message` over SMTP, logged in as `sender` when a password is given: a
    sender in a served domain needs that (docs/DESIGN.md §10)."""
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=30) as smtp:
        if password is not None:
            smtp.login(sender, password)
        smtp.sendmail(sender, [recipient], message.encode())


def one_node_with_accounts(node, *accounts):
    for account in accounts:
        node.add_user(account, PASSWORD)
    return node


# --- one node --------------------------------------------------------------------------


def test_round_trip_text_binary_status_and_environment(node, serve, rpc_cli, password_file):
    """Goal: a call returns the command's stdout and exit status, text and binary
    bodies arrive unchanged, and the command sees method, sender and request id.
    Method: a shell command that prints its environment, then its stdin, and exits
    with the status named by the method."""
    one_node_with_accounts(node, SERVICE, CALLER)
    script = (
        'printf "%s|%s|%s\\n" "$CHORDMAIL_RPC_METHOD" "$CHORDMAIL_RPC_SENDER" "$CHORDMAIL_RPC_REQUEST_ID"; '
        'cat; case "$CHORDMAIL_RPC_METHOD" in exit3) exit 3;; esac'
    )
    serve([smtp_server(node)], ["sh", "-c", script])
    status, stdout, stderr = call(rpc_cli, password_file, [smtp_server(node)], b"hello\n.\nworld", method="greet")
    assert status == 0, stderr
    header, rest = stdout.split(b"\n", 1)
    method, sender, request_id = header.decode().split("|")
    assert (method, sender) == ("greet", CALLER)
    assert request_id.endswith(".rpc@localhost") and len(request_id) > 32
    assert rest == b"hello\n.\nworld"

    binary = bytes(range(256)) * 40 + b"\r\n\x00"
    status, stdout, stderr = call(rpc_cli, password_file, [smtp_server(node)], binary, method="exit3")
    assert status == 3, stderr
    assert stdout.split(b"\n", 1)[1] == binary
    assert mailbox(node, CALLER) == [], "the caller deletes its replies"
    wait_until(lambda: mailbox(node, SERVICE) == [], 20, "the service to delete answered requests")


def start_loads(rpc_load, server, callers):
    """One `rpc_load` process per caller through `server`: 10 calls, 10 at once, each
    reply checked against its request."""
    return [
        subprocess.Popen(
            [rpc_load, "--server", server, "--account", caller, "--password", PASSWORD, "--to", SERVICE,
             "--calls", "10", "--concurrency", "10", "--timeout-s", str(CALL_TIMEOUT_S)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for caller in callers
    ]


def load_summaries(loads):
    """(JSON summary, stderr) of each `rpc_load` process, once it ended."""
    for process in loads:
        stdout, stderr = process.communicate(timeout=CALL_TIMEOUT_S * 3)
        yield json.loads(stdout), stderr.decode()


def test_100_concurrent_calls_from_10_callers_get_their_own_replies(node, serve, rpc_load, rpc_cli, password_file):
    """Goal: 100 concurrent calls from 10 callers each get their own reply, none lost
    or swapped; concurrent callers sharing one account leave each other's replies alone.
    Method: an echo service (`cat`, 16 at once); 10 `rpc_load` processes of 10
    concurrent calls each with unique bodies, checking every reply against its
    request; plus 4 concurrent `rpc call` processes on one account."""
    callers = [f"caller{idx}@localhost" for idx in range(10)]
    one_node_with_accounts(node, SERVICE, CALLER, *callers)
    serve([smtp_server(node)], ["cat"], extra=["--concurrency", "16"])
    loads = start_loads(rpc_load, smtp_server(node), callers)
    shared = [
        subprocess.Popen(call_argv(rpc_cli, password_file, [smtp_server(node)]), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    outputs = [process.communicate(input=f"shared {idx}\n".encode(), timeout=CALL_TIMEOUT_S + 30)
               for idx, process in enumerate(shared)]
    for idx, (process, (stdout, stderr)) in enumerate(zip(shared, outputs)):
        assert process.returncode == 0, stderr
        assert stdout == f"shared {idx}\n".encode()
    n_ok = 0
    for summary, stderr in load_summaries(loads):
        assert (summary["mismatched"], summary["failed"]) == (0, 0), stderr
        n_ok += summary["ok"]
    assert n_ok == 100
    for caller in callers:
        assert mailbox(node, caller) == [], f"no stray reply left for {caller}"


def test_runner_killed_mid_request_answers_once_after_restart(node, serve, rpc_cli, password_file, tmp_path):
    """Goal: kill -9 of the runner while the command runs; after a restart the
    request is answered and exactly one reply reaches the caller.
    Method: the command logs each run to a file, sleeps, then echoes; the runner is
    killed once the first run started and restarted with the same state directory."""
    one_node_with_accounts(node, SERVICE, CALLER)
    runs = tmp_path / "runs"
    command = ["sh", "-c", f'echo "$CHORDMAIL_RPC_REQUEST_ID" >> {runs}; sleep 2; cat']
    state = tmp_path / "state"
    runner = serve([smtp_server(node)], command, state=state)
    caller = subprocess.Popen(call_argv(rpc_cli, password_file, [smtp_server(node)]), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    caller.stdin.write(b"survive the crash\n")
    caller.stdin.close()
    caller.stdin = None  # so that communicate() does not flush it again
    wait_until(lambda: runs.exists() and runs.read_text().strip(), 30, "the command to start")
    runner.kill()
    serve([smtp_server(node)], command, state=state)
    stdout, stderr = caller.communicate(timeout=CALL_TIMEOUT_S + 30)
    assert caller.returncode == 0, stderr
    assert stdout == b"survive the crash\n"
    run_ids = runs.read_text().split()
    assert 1 <= len(run_ids) <= 2 and len(set(run_ids)) == 1, run_ids
    # The killed run's orphaned command may still finish; give a second reply time to show.
    time.sleep(3)
    assert mailbox(node, CALLER) == [], "exactly one reply: no second one arrived"
    wait_until(lambda: mailbox(node, SERVICE) == [], 20, "the request to be deleted")


def request_mail(request_id, method="echo", body="from the past\n"):
    """A request as the wire format describes it, written by hand."""
    headers = [f"From: <{CALLER}>", f"To: <{SERVICE}>", f"Message-ID: <{request_id}>", "X-Chordmail-Rpc: 1",
               f"X-Chordmail-Method: {method}", f"X-Chordmail-Length: {len(body)}"]
    return "\r\n".join(headers) + "\r\n\r\n" + body.replace("\n", "\r\n")


def record_file(state, request_id):
    return state / hashlib.sha256(request_id.encode()).hexdigest()[:32]


def test_recorded_reply_is_resent_and_answered_request_is_not(node, serve, tmp_path):
    """Goal: idempotency by Message-ID: a request whose reply is recorded gets that
    reply without running the command; one whose reply was accepted is deleted
    without a second reply.
    Method: write the state records a crashed runner would have left, put the two
    requests in the service mailbox with smtplib, start the runner, read the caller's
    mailbox with poplib."""
    one_node_with_accounts(node, SERVICE, CALLER)
    state = tmp_path / "state"
    state.mkdir()
    pending_id, sent_id = "pending1.rpc@localhost", "sent1.rpc@localhost"
    record_file(state, pending_id).write_bytes(f"chordmail-rpc-record 1\n{pending_id}\npending 7\nrecorded".encode())
    record_file(state, sent_id).write_bytes(f"chordmail-rpc-record 1\n{sent_id}\nsent 0\n".encode())
    inject(node, CALLER, SERVICE, request_mail(pending_id), password=PASSWORD)
    inject(node, CALLER, SERVICE, request_mail(sent_id), password=PASSWORD)
    marker = tmp_path / "ran"
    serve([smtp_server(node)], ["sh", "-c", f"touch {marker}; cat"], state=state)
    wait_until(lambda: mailbox(node, SERVICE) == [], 30, "both requests to be deleted")
    replies = mailbox(node, CALLER)
    assert len(replies) == 1, replies
    reply = replies[0][1]
    assert f"In-Reply-To: <{pending_id}>".encode() in reply
    assert b"X-Chordmail-Status: 7" in reply
    assert reply.endswith(b"\r\n\r\nrecorded"), reply
    assert not marker.exists(), "the command never ran"


def test_unknown_service_address_is_a_clear_smtp_error(node, rpc_cli, password_file):
    """Goal: a call to an address the ring does not know fails at once with the SMTP
    error. (An address in another domain is no longer refused: the caller is
    authenticated, so the request is relayed there, docs/DESIGN.md §12.)"""
    one_node_with_accounts(node, CALLER)
    for address, words in [("nobody@localhost", "550 5.1.1")]:
        started = time.monotonic()
        status, stdout, stderr = call(rpc_cli, password_file, [smtp_server(node)], b"x", to=address)
        assert status == 1 and stdout == b""
        assert words in stderr and address in stderr, stderr
        assert time.monotonic() - started < 20


def test_malformed_replies_and_replies_to_unknown_requests_are_left_alone(node, serve, rpc_cli, password_file):
    """Goal: junk in either mailbox is ignored (and logged), calls still work and
    the client deletes nothing but its own reply.
    Method: smtplib puts a malformed reply, a reply to an unknown request and a
    plain mail in the caller's mailbox and a malformed request in the service's."""
    one_node_with_accounts(node, SERVICE, CALLER)
    junk = [
        "From: <x@localhost>\r\nX-Chordmail-Rpc: 1\r\nIn-Reply-To: <a@b>\r\n\r\nno status\r\n",
        "From: <x@localhost>\r\nX-Chordmail-Rpc: 1\r\nIn-Reply-To: <unknown.rpc@localhost>\r\n"
        "X-Chordmail-Status: 0\r\nX-Chordmail-Length: 3\r\n\r\nhi\r\n",
        "From: <x@localhost>\r\nSubject: just mail\r\n\r\nhello\r\n",
    ]
    for message in junk:
        inject(node, "x@elsewhere.example", CALLER, message)
    inject(node, "x@elsewhere.example", SERVICE, "From: <x@localhost>\r\nX-Chordmail-Rpc: 1\r\nMessage-ID: <m@x>\r\n\r\nno method\r\n")
    runner = serve([smtp_server(node)], ["cat"])
    status, stdout, stderr = call(rpc_cli, password_file, [smtp_server(node)], b"still works\n")
    assert (status, stdout) == (0, b"still works\n"), stderr
    assert len(mailbox(node, CALLER)) == 3, "the junk stays for whoever owns it"
    wait_until(lambda: "no valid request; ignored" in runner.log(), 20, "the runner to log the malformed request")
    # The answered request is deleted in the runner's next POP3 session, after the
    # caller already has its reply; the malformed one stays for ever.
    wait_until(lambda: len(mailbox(node, SERVICE)) == 1, 20, "only the malformed request to remain")


def test_oversized_body_is_refused_with_a_clear_error(node, rpc_cli, password_file):
    """Goal: a body over the 25 MiB message limit, raw or once base64-encoded, is
    refused before anything is sent."""
    one_node_with_accounts(node, SERVICE, CALLER)
    for body in [b"a" * (26 * 1024 * 1024), os.urandom(20 * 1024 * 1024)]:
        status, stdout, stderr = call(rpc_cli, password_file, [smtp_server(node)], body)
        assert status == 1, stderr
        assert "message size limit" in stderr, stderr
    assert mailbox(node, SERVICE) == []


def test_timeout_exits_1_with_a_message(node, rpc_cli, password_file):
    """Goal: with no service running, the call ends after --timeout with exit 1 and
    says what happened."""
    one_node_with_accounts(node, SERVICE, CALLER)
    started = time.monotonic()
    status, stdout, stderr = call(rpc_cli, password_file, [smtp_server(node)], b"anyone?", timeout=2)
    elapsed = time.monotonic() - started
    assert status == 1 and stdout == b""
    assert "no reply to request" in stderr and "within 2 s" in stderr, stderr
    assert elapsed < 15


def test_bad_usage_exits_2(rpc_cli, password_file):
    """Goal: a missing or malformed option is a usage error naming it."""
    result = subprocess.run([*rpc_cli, "call", "--account", CALLER, "--password-file", password_file, "--to", SERVICE],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--server" in result.stderr
    status, _, stderr = call(rpc_cli, password_file, ["127.0.0.1:99999"], b"x")
    assert status == 1 and "invalid server" in stderr


# --- a 3-node ring (needs replication) ---------------------------------------------------


def ring_of_three(make_node):
    first = make_node(replicas=3)
    others = [make_node(replicas=3, args=["--entry-addr", first.addr]) for _ in range(2)]
    nodes = [first, *others]

    def converged():
        return all(len(node.get("/api/cluster")["nodes"]) == 3 for node in nodes)
    wait_until(converged, RING_READY_TIMEOUT_S, "a ring of 3 nodes")
    return nodes


def test_ring_round_trip_call_through_a_service_through_b(make_node, serve, rpc_load, rpc_cli, password_file):
    """Goal (needs replication): a call through node A reaches a service polling
    through node B; 100 concurrent calls from 10 callers all get their own reply.
    Method: accounts created through A; the runner uses B only, callers A only."""
    node_a, node_b, _ = ring_of_three(make_node)
    callers = [f"caller{idx}@localhost" for idx in range(10)]
    for account in [SERVICE, CALLER, *callers]:
        node_a.add_user(account, PASSWORD)
    serve([smtp_server(node_b)], ["cat"])
    status, stdout, stderr = call(rpc_cli, password_file, [smtp_server(node_a)], b"across the ring\n")
    assert (status, stdout) == (0, b"across the ring\n"), stderr
    loads = start_loads(rpc_load, smtp_server(node_a), callers)
    for summary, stderr in load_summaries(loads):
        assert (summary["ok"], summary["mismatched"], summary["failed"]) == (10, 0, 0), stderr


def test_ring_caller_node_killed_mid_call_fails_over(make_node, serve, rpc_cli, password_file, tmp_path):
    """Goal (needs replication): kill -9 the node the caller uses while it waits;
    the call fails over to its next --server and completes.
    Method: the runner (through B and C) sleeps in the command; once it started, A
    dies; the caller was given A then C."""
    node_a, node_b, node_c = ring_of_three(make_node)
    for account in [SERVICE, CALLER]:
        node_a.add_user(account, PASSWORD)
    started = tmp_path / "started"
    serve([smtp_server(node_b), smtp_server(node_c)], ["sh", "-c", f"touch {started}; sleep 3; cat"])
    caller = subprocess.Popen(call_argv(rpc_cli, password_file, [smtp_server(node_a), smtp_server(node_c)]),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    caller.stdin.write(b"fail over\n")
    caller.stdin.close()
    caller.stdin = None  # so that communicate() does not flush it again
    wait_until(started.exists, 30, "the service to start the request")
    node_a.kill()
    stdout, stderr = caller.communicate(timeout=CALL_TIMEOUT_S + 30)
    assert caller.returncode == 0, stderr
    assert stdout == b"fail over\n"
