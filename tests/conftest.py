"""Fixtures that run real `chordmail node` processes on loopback for the tests.

Every process a test starts is killed when the test ends, pass or fail; each node
writes its log to `<tmp>/node-<port>.log`, printed when a start-up fails.
"""
import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("CHORDMAIL_BIN", str(ROOT / "target" / "debug" / "chordmail"))
READY_TIMEOUT_S = 30.0
SMTP_OFFSET, POP3_OFFSET, HTTP_OFFSET = 10_000, 20_000, 3_000

# The admin token file of each admin listener ("host:port"), read by `http` for every
# /api/ call (DESIGN.md §8). A node makes DATA/admin.token on its first start, so
# the file is read at call time, not when the node is registered.
_token_files = {}


def register_token_file(http_url, path):
    """Makes `http` send the token in `path` to the admin API at `http_url`."""
    _token_files[urllib.parse.urlsplit(http_url).netloc] = Path(path)


def token_for(url):
    """The admin token of the node serving `url`, or None when none is known yet."""
    path = _token_files.get(urllib.parse.urlsplit(url).netloc)
    try:
        return path.read_text().strip() if path else None
    except FileNotFoundError:
        return None


def port_is_free(port):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_taken = set()


def free_ring_port():
    """A ring port whose SMTP, POP3 and HTTP companions (DESIGN.md §2) are free too."""
    for _ in range(1000):
        port = random.randrange(20_000, 35_000)
        group = [port, port + SMTP_OFFSET, port + POP3_OFFSET, port + HTTP_OFFSET]
        if port in _taken or not all(port_is_free(p) for p in group):
            continue
        _taken.add(port)
        return port
    raise RuntimeError("no free group of loopback ports")


def http(method, url, body=None, timeout=30, token=...):
    """(status, parsed JSON or text) of one admin API call. The node's admin token is
    sent (see `register_token_file`) unless `token` says otherwise: None sends no
    Authorization header, a string sends that token."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is ...:
        token = token_for(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_until(predicate, timeout, what, interval=0.1):
    """Polls `predicate` until it returns a truthy value or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})")


class Node:
    """One `chordmail node` process on 127.0.0.1."""

    def __init__(self, workdir, ring_port=None, data=None, args=(), replicas=1, domains=("localhost", "example.org"), token_file=None):
        self.ring_port = ring_port or free_ring_port()
        self.addr = f"127.0.0.1:{self.ring_port}"
        self.smtp_port = self.ring_port + SMTP_OFFSET
        self.pop3_port = self.ring_port + POP3_OFFSET
        self.http_port = self.ring_port + HTTP_OFFSET
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.data = Path(data) if data else Path(workdir) / f"data-{self.ring_port}"
        self.token_file = Path(token_file) if token_file else self.data / "admin.token"
        register_token_file(self.http, self.token_file)
        self.log_path = Path(workdir) / f"node-{self.ring_port}.log"
        self.args = list(args)
        self.replicas = replicas
        self.domains = domains
        self.process = None

    def command(self):
        command = [BIN, "node", "--addr", self.addr, "--data", str(self.data), "--replicas", str(self.replicas)]
        for domain in self.domains:
            command += ["--domain", domain]
        return command + self.args

    def start(self, wait=True):
        log = open(self.log_path, "ab")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), RUST_BACKTRACE="1")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=READY_TIMEOUT_S):
        def ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}:\n{self.log()}")
            return http("GET", self.http + "/healthz", timeout=2)[0] == 200
        try:
            wait_until(ready, timeout, f"node {self.addr} to serve /healthz")
        except AssertionError:
            raise AssertionError(f"node {self.addr} not ready:\n{self.log()}") from None

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def kill(self):
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout=30):
        """SIGTERM and wait for a clean exit; returns the exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"node {self.addr} ignored SIGTERM for {timeout}s")
        return self.process.returncode

    def restart(self):
        self.kill()
        return self.start()

    def api(self, method, path, body=None, **kwargs):
        return http(method, self.http + path, body, **kwargs)

    def add_user(self, address, password):
        status, body = self.api("POST", "/api/users", {"address": address, "password": password})
        assert status == 201, f"creating {address}: {status} {body}"


@pytest.fixture
def make_node(tmp_path):
    """A factory of started nodes; every node is killed at the end of the test."""
    nodes = []

    def make(start=True, **kwargs):
        node = Node(tmp_path, **kwargs)
        nodes.append(node)
        return node.start() if start else node

    yield make
    for node in nodes:
        node.kill()


@pytest.fixture
def node(make_node):
    """One started node serving `localhost` and `example.org`, with --replicas 1."""
    return make_node()


def private_file(path, text):
    """Writes a secret file (a password, a token) readable by its owner only, as the
    chordmail commands demand."""
    path = Path(path)
    path.write_text(text)
    path.chmod(0o600)
    return path


def run_cli(*args, input=None, timeout=60, env=None):
    """Runs the chordmail binary to completion: (exit status, stdout, stderr)."""
    result = subprocess.run([BIN, *args], input=input, capture_output=True, text=True, timeout=timeout, env=env)
    return result.returncode, result.stdout, result.stderr
