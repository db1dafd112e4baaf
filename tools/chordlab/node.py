"""One `chordmail node` process, on loopback or inside a network namespace.

The launcher always passes `--addr`, `--smtp`, `--pop3`, `--imap`, `--http`, `--data`,
`--replicas` and `--domain` (the layout of `ports`), so a node started here never
depends on the binary's defaults; extra flags go in `args`. Each node appends its
output to its log file, which start-up failures quote.
"""
import os
import signal
import subprocess
import time
from pathlib import Path

from . import admin
from .ports import (DEFAULT_HTTP_OFFSET, DEFAULT_IMAP_OFFSET, DEFAULT_POP3_OFFSET, DEFAULT_SMTP_OFFSET, HTTP_OFFSET,
                    IMAP_OFFSET, POP3_OFFSET, SMTP_OFFSET, free_ring_port)

READY_TIMEOUT_S = 30.0
REPO = Path(__file__).resolve().parents[2]

# Ring and replication timing for runs that should converge fast: anti-entropy every
# 500 ms, ring calls time out after 300 ms (`write_config` puts it in a --config file).
FAST_TIMING = {
    "anti_entropy_ms": 500,
    "stabilize_ms": 100,
    "fix_fingers_ms": 100,
    "fix_successors_ms": 200,
    "check_predecessor_ms": 200,
    "probe_ms": 500,
    "rpc_timeout_ms": 300,
}


def target_dir():
    """Where cargo builds: $CARGO_TARGET_DIR, else target/ of this checkout."""
    return Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")


def default_binary():
    """$CHORDMAIL_BIN, else the debug build of this checkout."""
    return os.environ.get("CHORDMAIL_BIN", str(target_dir() / "debug" / "chordmail"))


class ClusterCa:
    """A cluster CA made by `chordmail cert ca` in `directory`, and node certificates
    made from it on demand: what a ring of non-loopback nodes needs (docs/DESIGN.md
    §10), and what the tests use to run rings with mutual TLS."""

    def __init__(self, binary, directory):
        self.binary = str(binary)
        self.directory = Path(directory)
        if not (self.directory / "ca.key").exists():
            subprocess.run([self.binary, "cert", "ca", "--dir", str(self.directory)], check=True,
                           capture_output=True)

    def node_args(self, addr, out):
        """The --cluster-* flags of the node at ring address `addr`, with its
        certificate in `out` (made once)."""
        out = Path(out)
        if not (out / "node.key").exists():
            subprocess.run([self.binary, "cert", "node", "--ca-dir", str(self.directory), "--addr", addr,
                            "--out", str(out)], check=True, capture_output=True)
        return ["--cluster-ca", str(self.directory / "ca.crt"), "--cluster-cert", str(out / "node.crt"),
                "--cluster-key", str(out / "node.key")]


def write_config(path, options):
    """Writes `options` ({name: number}) as a node's TOML --config file; returns the path."""
    path = Path(path)
    path.write_text("".join(f"{key} = {value}\n" for key, value in options.items()))
    return path


class WaitTimeout(AssertionError):
    """A condition polled by `wait_until` did not hold in time."""


class NodeError(AssertionError):
    """A node exited or did not become ready; the message quotes its log."""


def wait_until(predicate, timeout, what, interval=0.1):
    """Polls `predicate` until it returns a truthy value (returned) or `timeout`
    seconds pass (WaitTimeout, naming `what` and the last exception the predicate
    raised: exceptions count as "not yet")."""
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
    raise WaitTimeout(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})")


class Node:
    """One `chordmail node` process listening on `host` (127.0.0.1 by default).

    `netns`: the network namespace to run it in (`ip netns exec`), None for this one.
    `rust_log`: RUST_LOG when the environment sets none. `cwd`: the process's working
    directory (None: ours). `token_file`: where its admin token is (None: as the node
    picks it, see `token_file`)."""

    def __init__(self, binary, workdir, ring_port=None, host="127.0.0.1", data=None, log_path=None, args=(),
                 replicas=1, domains=("localhost",), netns=None, rust_log="info", cwd=None,
                 token_file=None):
        self.binary = str(binary)
        self.host = host
        self.ring_port = ring_port or free_ring_port()
        self.addr = f"{host}:{self.ring_port}"
        self.smtp_port = self.ring_port + SMTP_OFFSET
        self.pop3_port = self.ring_port + POP3_OFFSET
        self.imap_port = self.ring_port + IMAP_OFFSET
        self.http_port = self.ring_port + HTTP_OFFSET
        self.http = f"http://{host}:{self.http_port}"
        self.data = Path(data) if data else Path(workdir) / f"data-{self.ring_port}"
        self.log_path = Path(log_path) if log_path else Path(workdir) / f"node-{self.ring_port}.log"
        self.args = list(args)
        self.replicas = replicas
        self.domains = domains
        self.netns = netns
        self.rust_log = rust_log
        self.cwd = cwd
        self._token_file = Path(token_file) if token_file else None
        self.process = None
        self._id = None

    def with_default_ports(self):
        """Takes the service ports the binary picks by itself when no --smtp, --pop3 or
        --http is given (`chordmail up`, command lines given verbatim)."""
        self.smtp_port = self.ring_port + DEFAULT_SMTP_OFFSET
        self.pop3_port = self.ring_port + DEFAULT_POP3_OFFSET
        self.imap_port = self.ring_port + DEFAULT_IMAP_OFFSET
        self.http_port = self.ring_port + DEFAULT_HTTP_OFFSET
        self.http = f"http://{self.host}:{self.http_port}"
        return self

    # The process ----------------------------------------------------------------

    def command(self, entry=None):
        """The command line; `entry` adds `--entry-addr`."""
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        command = prefix + [
            self.binary, "node", "--addr", self.addr,
            "--smtp", f"{self.host}:{self.smtp_port}", "--pop3", f"{self.host}:{self.pop3_port}",
            "--imap", f"{self.host}:{self.imap_port}", "--http", f"{self.host}:{self.http_port}",
            "--data", str(self.data), "--replicas", str(self.replicas),
        ]
        for domain in self.domains:
            command += ["--domain", domain]
        if entry:
            command += ["--entry-addr", entry]
        return command + self.args

    def start(self, entry=None, wait=True, note=None):
        """Starts the process (joining through `entry` if given); with `wait`, returns
        once it serves /healthz. `note` is a line written to the log first."""
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", self.rust_log), RUST_BACKTRACE="1")
        with open(self.log_path, "ab") as log:
            if note:
                log.write(f"\n=== {note}\n".encode())
                log.flush()
            self.process = subprocess.Popen(self.command(entry), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL, cwd=self.cwd)
        if wait:
            self.wait_ready()
        return self

    def is_ready(self, timeout=1.0):
        """Whether /healthz answers 200 now."""
        try:
            return admin.request("GET", self.http + "/healthz", timeout=timeout)[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout=READY_TIMEOUT_S):
        """Returns once /healthz answers 200; NodeError (quoting the log) if the
        process exits first or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = None if self.process is None else self.process.returncode
                raise NodeError(f"node {self.addr} exited with {code}:\n{self.log_tail()}")
            if self.is_ready(timeout=2.0):
                return
            time.sleep(0.1)
        raise NodeError(f"node {self.addr} not ready within {timeout}s:\n{self.log_tail()}")

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def signal(self, sig):
        if self.alive():
            try:
                os.kill(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self, timeout=30):
        """SIGKILL (after SIGCONT, in case it is stopped): no shutdown code runs, as in
        a crash."""
        if self.alive():
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass

    def stop(self, timeout=30):
        """SIGTERM and wait for a clean exit; returns the exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise NodeError(f"node {self.addr} ignored SIGTERM for {timeout}s")
        return self.process.returncode

    def restart(self):
        self.kill()
        return self.start()

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, size=3000):
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""

    # The admin API --------------------------------------------------------------

    @property
    def token_file(self):
        """Where the node keeps its admin token: as given, else `--admin-token-file`,
        else DATA/admin.token."""
        if self._token_file:
            return self._token_file
        if "--admin-token-file" in self.args[:-1]:
            return Path(self.args[self.args.index("--admin-token-file") + 1])
        return self.data / "admin.token"

    def api(self, method, path, body=None, timeout=30.0, token=...):
        """(status, parsed body) of one admin API call to this node, with its token
        unless `token` says otherwise (see `admin.request`)."""
        return admin.request(method, self.http + path, body, timeout=timeout, token_file=self.token_file,
                             token=token)

    def get(self, path, timeout=5.0):
        """The body of a GET that must answer 200 (ApiError otherwise)."""
        return admin.get_ok(self.http + path, timeout=timeout, token_file=self.token_file)

    def add_user(self, address, password):
        status, body = self.api("POST", "/api/users", {"address": address, "password": password})
        assert status == 201, f"creating {address}: {status} {body}"

    def member(self):
        """{"id", "addr"} of this node in the ring (the id is asked once: it stays
        with the node's --data)."""
        if self._id is None:
            self._id = self.get("/api/ring")["id"]
        return {"id": self._id, "addr": self.addr}
