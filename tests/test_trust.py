"""Who may talk to a node (docs/DESIGN.md §8, §10): the admin token, mutual TLS on the ring
port, secure defaults and private files.

Method: real `chordmail node` and `chordmail up` processes on 127.0.0.0/8; attacks
made with Python's `ssl` and `urllib`, each checked for its refusal and for "nothing
changed" (the ring view, the account list, a login). Every positive control (the
right token, a member certificate) is run beside the attack, so that a test fails if
the refusal comes from something else.
"""
import os
import poplib
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN, Node, run_cli
from tools.chordlab import free_ring_port, private_file, wait_until
from tools.chordlab import request as http
from tools.chordlab.ports import DEFAULT_HTTP_OFFSET

FAST_CONFIG = "stabilize_ms = 100\nfix_fingers_ms = 100\nfix_successors_ms = 100\ncheck_predecessor_ms = 200\nprobe_ms = 500\nrpc_timeout_ms = 500\n"
# The client preface of HTTP/2 (RFC 9113 §3.4) and an empty SETTINGS frame: what a
# gRPC client sends first. A server that accepts the connection answers with its
# own SETTINGS frame (type 0x4).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
ADMIN_ROUTES = [
    ("GET", "/api/ring", None),
    ("GET", "/api/cluster", None),
    ("GET", "/api/users", None),
    ("POST", "/api/users", {"address": "mallory@example.org", "password": "pw"}),
    ("PUT", "/api/users/alice@example.org/password", {"password": "taken over"}),
    ("DELETE", "/api/users/alice@example.org", None),
    ("GET", "/api/replicas/alice@example.org", None),
]


def mode(path):
    return Path(path).stat().st_mode & 0o777


def pop3_login(node, address, password):
    client = poplib.POP3("127.0.0.1", node.pop3_port, timeout=10)
    try:
        client.user(address)
        client.pass_(password)
        return True
    except poplib.error_proto:
        return False
    finally:
        client.close()


def make_cert(ca_dir, addr, out):
    code, _, err = run_cli("cert", "node", "--ca-dir", str(ca_dir), "--addr", addr, "--out", str(out))
    assert code == 0, err
    return out


def cluster_args(ca_dir, cert_dir):
    return ["--cluster-ca", str(ca_dir / "ca.crt"), "--cluster-cert", str(cert_dir / "node.crt"), "--cluster-key", str(cert_dir / "node.key")]


def h2_answer(port, tls_context=None):
    """The bytes the ring port answers to an HTTP/2 preface (over TLS with
    `tls_context`), or None when the connection is refused, reset or closed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            stream = tls_context.wrap_socket(raw) if tls_context else raw
            with stream:
                stream.sendall(H2_PREFACE)
                data = stream.recv(64)
                return data or None
    except (ssl.SSLError, ConnectionError, socket.timeout, OSError):
        return None


def is_h2_settings(data):
    return data is not None and len(data) >= 9 and data[3] == 0x04


def client_context(cert_dir=None):
    """A TLS client that trusts any server (the test attacks the server's checks) and
    presents `cert_dir`'s node certificate if given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    if cert_dir is not None:
        context.load_cert_chain(str(cert_dir / "node.crt"), str(cert_dir / "node.key"))
    return context


def cluster_of(node):
    status, body = node.api("GET", "/api/cluster", timeout=5)
    assert status == 200, (status, body)
    return sorted(member["addr"] for member in body["nodes"])


@pytest.fixture
def tls_ring(make_node, tmp_path):
    """Two nodes with certificates of one CA (fast timing), in one ring."""
    ca = tmp_path / "ca"
    code, _, err = run_cli("cert", "ca", "--dir", str(ca))
    assert code == 0, err
    config = tmp_path / "fast.toml"
    config.write_text(FAST_CONFIG)
    a_port, b_port = free_ring_port(), free_ring_port()
    a_cert = make_cert(ca, f"127.0.0.1:{a_port}", tmp_path / "cert-a")
    b_cert = make_cert(ca, f"127.0.0.1:{b_port}", tmp_path / "cert-b")
    a = make_node(ring_port=a_port, replicas=2, args=["--config", str(config), *cluster_args(ca, a_cert)])
    b = make_node(ring_port=b_port, replicas=2, args=["--config", str(config), "--entry-addr", a.addr, *cluster_args(ca, b_cert)])
    wait_until(lambda: cluster_of(a) == sorted([a.addr, b.addr]) == cluster_of(b), 30, "a TLS ring of 2")
    return {"ca": ca, "config": config, "a": a, "b": b, "a_cert": a_cert, "b_cert": b_cert}


def test_admin_api_refuses_every_route_without_the_token(node, tmp_path):
    """Goal: /api/* needs the token; /healthz and /metrics do not. Method: every route
    without a header, with a wrong token and with a Basic header (401 and
    WWW-Authenticate: Bearer), then the account list, the ring view and a POP3 login
    are as before; the same routes with the token work."""
    node.add_user("alice@example.org", "secret")
    users_before = node.api("GET", "/api/users")
    ring_before = node.api("GET", "/api/ring")[1]
    token = node.token_file.read_text().strip()
    assert mode(node.token_file) == 0o600 and len(token) == 64
    for method, path, body in ADMIN_ROUTES:
        for bad in (None, "0" * 64, token[:-1], token + "0"):
            status, answer = node.api(method, path, body, token=bad)
            assert status == 401, (method, path, bad, status, answer)
        request = urllib.request.Request(node.http + path, method=method, headers={"Authorization": f"Basic {token}"})
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError(f"{method} {path} with Basic auth was answered")
        except urllib.error.HTTPError as error:
            assert error.code == 401 and error.headers["WWW-Authenticate"] == "Bearer"
    assert node.api("GET", "/api/users") == users_before
    assert node.api("GET", "/api/ring")[1]["id"] == ring_before["id"]
    assert pop3_login(node, "alice@example.org", "secret")
    for path in ("/healthz", "/metrics"):
        assert http("GET", node.http + path, token=None)[0] == 200
    status, page = http("GET", node.http + "/", token=None)
    assert status == 200 and node.addr not in page
    assert node.api("PUT", "/api/users/alice@example.org/password", {"password": "new"})[0] == 204
    assert pop3_login(node, "alice@example.org", "new")


def test_cli_needs_the_token_and_says_where_to_find_it(node, tmp_path):
    """Goal: `chordmail user`/`ring` send the token from --token-file or CHORDMAIL_TOKEN
    and fail clearly without it. Method: run them from an empty cwd (no
    chordmail-data/up/admin.token there) without, with a wrong and with the token."""
    env = {key: value for key, value in os.environ.items() if key != "CHORDMAIL_TOKEN"}
    cwd = tmp_path / "empty"
    cwd.mkdir()

    def cli(*args, extra_env=None):
        result = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env={**env, **(extra_env or {})})
        return result.returncode, result.stdout, result.stderr

    code, _, err = cli("ring", "--node", node.http)
    assert code == 1 and "--token-file" in err and "CHORDMAIL_TOKEN" in err, err
    code, _, err = cli("user", "list", "--node", node.http, extra_env={"CHORDMAIL_TOKEN": "f" * 64})
    assert code == 1 and "401" in err, err
    token = node.token_file.read_text().strip()
    code, out, err = cli("ring", "--node", node.http, extra_env={"CHORDMAIL_TOKEN": token})
    assert code == 0 and node.addr in out, err
    password = private_file(tmp_path / "pw", "pw\n")
    code, _, err = cli("user", "add", "bob@example.org", "--password-file", str(password), "--node", node.http, "--token-file", str(node.token_file))
    assert code == 0, err
    readable = tmp_path / "readable-pw"
    readable.write_text("pw\n")
    readable.chmod(0o644)
    code, _, err = cli("user", "add", "carl@example.org", "--password-file", str(readable), "--node", node.http, "--token-file", str(node.token_file))
    assert code == 1 and "chmod 600" in err, err
    assert node.api("GET", "/api/users")[1] == {"users": ["bob@example.org"]}


def test_ring_port_refuses_peers_without_a_cluster_certificate(tls_ring, tmp_path):
    """Goal: only a certificate of the cluster's CA opens the ring port. Method: speak
    HTTP/2 to node A's ring port with no TLS, with TLS but no client certificate, and
    with a certificate of another CA (all refused), and with a member's certificate
    (answered: the positive control); the ring is unchanged afterwards."""
    a, b = tls_ring["a"], tls_ring["b"]
    other_ca = tmp_path / "other-ca"
    assert run_cli("cert", "ca", "--dir", str(other_ca))[0] == 0
    stranger = make_cert(other_ca, a.addr, tmp_path / "stranger")
    assert not is_h2_settings(h2_answer(a.ring_port))
    assert not is_h2_settings(h2_answer(a.ring_port, client_context()))
    assert not is_h2_settings(h2_answer(a.ring_port, client_context(stranger)))
    assert is_h2_settings(h2_answer(a.ring_port, client_context(tls_ring["b_cert"])))
    assert a.alive() and b.alive()
    assert cluster_of(a) == cluster_of(b) == sorted([a.addr, b.addr])


def test_a_member_certificate_cannot_claim_another_ring_address(tls_ring, make_node, tmp_path):
    """Goal: a valid member certificate used on another ring address gets nowhere.
    Method: start node C on a new port with A's certificate and key, joining through A;
    for 5 s (25 stabilize periods) the ring stays {A, B} and a node logs the refusal."""
    a, b = tls_ring["a"], tls_ring["b"]
    impostor = make_node(
        replicas=2, start=False,
        args=["--config", str(tls_ring["config"]), "--entry-addr", a.addr, *cluster_args(tls_ring["ca"], tls_ring["a_cert"])],
    )
    impostor.start(wait=False)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert cluster_of(a) == cluster_of(b) == sorted([a.addr, b.addr])
        time.sleep(0.2)
    logs = a.log() + b.log() + impostor.log()
    assert "does not cover" in logs or "another ring address" in logs, logs[-3000:]


def test_a_node_of_another_ca_never_joins_and_says_why(tls_ring, make_node, tmp_path):
    """Goal: a node whose certificate comes from another CA cannot join. Method: start
    it with --entry-addr A; it exits 1 naming the certificate; the ring is unchanged."""
    a, b = tls_ring["a"], tls_ring["b"]
    other_ca = tmp_path / "other-ca"
    assert run_cli("cert", "ca", "--dir", str(other_ca))[0] == 0
    port = free_ring_port()
    cert = make_cert(other_ca, f"127.0.0.1:{port}", tmp_path / "stranger")
    stranger = Node(tmp_path, ring_port=port, args=["--config", str(tls_ring["config"]), "--entry-addr", a.addr, *cluster_args(other_ca, cert)])
    result = subprocess.run(stranger.command(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "certificate" in result.stderr and a.addr in result.stderr, result.stderr
    assert cluster_of(a) == cluster_of(b) == sorted([a.addr, b.addr])


def test_up_runs_its_ring_with_mutual_tls_and_one_token(tmp_path):
    """Goal: `chordmail up` makes a CA, node certificates and one admin token, and its
    ring port refuses a client without a certificate; `chordmail ring` finds the token
    at ./chordmail-data/up/admin.token by itself. Method: `up --nodes 1` in a scratch
    cwd with the default --data; check file modes, the ring port, the CLI; SIGINT."""
    port = free_ring_port()
    log_path = tmp_path / "up.log"
    env = {key: value for key, value in os.environ.items() if key != "CHORDMAIL_TOKEN"}
    with open(log_path, "wb") as log:
        up = subprocess.Popen([BIN, "up", "--nodes", "1", "--base-port", str(port)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: "Ctrl-C" in log_path.read_text(errors="replace") or up.poll() is not None, 60, "`up` to start")
        assert up.poll() is None, log_path.read_text()
        data = tmp_path / "chordmail-data" / "up"
        assert mode(data) == 0o700
        for secret in (data / "admin.token", data / "ca" / "ca.key", data / "node-0" / "cluster" / "node.key", data / "node-0" / "chordmail.redb"):
            assert mode(secret) == 0o600, secret
        assert not is_h2_settings(h2_answer(port, client_context()))
        assert not is_h2_settings(h2_answer(port))
        assert is_h2_settings(h2_answer(port, client_context(data / "node-0" / "cluster")))
        result = subprocess.run([BIN, "ring", "--node", f"http://127.0.0.1:{port + DEFAULT_HTTP_OFFSET}"], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0 and f"127.0.0.1:{port}" in result.stdout, result.stderr
        assert http("GET", f"http://127.0.0.1:{port + DEFAULT_HTTP_OFFSET}/api/users", token=None)[0] == 401
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0, log_path.read_text()


def test_a_node_off_loopback_needs_certificates_before_touching_anything(tmp_path):
    """Goal: secure by default. Method: a non-loopback --addr without cluster files exits
    2 naming `chordmail cert` and --insecure-ring, and neither binds nor creates --data
    (10.0.0.1 need not exist here: the refusal comes first)."""
    data = tmp_path / "data"
    code, _, err = run_cli("node", "--addr", "10.0.0.1:5000", "--data", str(data))
    assert code == 2, err
    assert "chordmail cert" in err and "--insecure-ring" in err, err
    assert not data.exists()
    partial = run_cli("node", "--addr", "127.0.0.1:5000", "--data", str(data), "--cluster-ca", "ca.crt")
    assert partial[0] == 2 and "--cluster-cert" in partial[2], partial


def test_cert_commands_write_private_files(tmp_path):
    """Goal: `chordmail cert` writes keys 0600 in 0700 directories and never overwrites
    a CA. Method: make a CA and a node certificate; check modes; make the CA again."""
    ca, out = tmp_path / "ca", tmp_path / "node"
    assert run_cli("cert", "ca", "--dir", str(ca))[0] == 0
    make_cert(ca, "127.0.0.1:5000", out)
    assert (mode(ca), mode(out)) == (0o700, 0o700)
    for path in (ca / "ca.key", ca / "ca.crt", out / "node.key", out / "node.crt"):
        assert mode(path) == 0o600, path
    key = (ca / "ca.key").read_bytes()
    code, _, err = run_cli("cert", "ca", "--dir", str(ca))
    assert code == 2 and "exists" in err, err
    assert (ca / "ca.key").read_bytes() == key
    code, _, err = run_cli("cert", "node", "--ca-dir", str(ca), "--addr", "no-port", "--out", str(tmp_path / "x"))
    assert code == 2 and "no-port" in err, err


def test_readable_secrets_are_refused_and_data_is_private(make_node, tmp_path):
    """Goal: a node refuses a token or key file others may read (exit 2, naming the
    file), and keeps --data 0700 with its files 0600. Method: start nodes with a 0644
    token file and a 0640 cluster key; then a good node, and check the modes."""
    token = tmp_path / "token"
    token.write_text("a" * 64 + "\n")
    token.chmod(0o644)
    node = Node(tmp_path, args=["--admin-token-file", str(token)])
    result = subprocess.run(node.command(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and str(token) in result.stderr and "chmod 600" in result.stderr, result.stderr

    ca = tmp_path / "ca"
    assert run_cli("cert", "ca", "--dir", str(ca))[0] == 0
    port = free_ring_port()
    cert = make_cert(ca, f"127.0.0.1:{port}", tmp_path / "cert")
    (cert / "node.key").chmod(0o640)
    node = Node(tmp_path, ring_port=port, args=cluster_args(ca, cert))
    result = subprocess.run(node.command(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "node.key" in result.stderr, result.stderr

    token.chmod(0o600)
    good = make_node(args=["--admin-token-file", str(token)])
    assert good.api("GET", "/api/users", token="a" * 64)[0] == 200
    assert mode(good.data) == 0o700
    for path in good.data.rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert mode(path) == expected, path
