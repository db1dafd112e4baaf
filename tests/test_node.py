"""The node binary, its configuration and the admin API (the foundation issue).

Method: start real `chordmail node` processes on loopback, drive them with the CLI
and plain HTTP, and check exit codes, messages and what survives a kill -9.
"""
import poplib
import socket
import subprocess

from conftest import Node, run_cli
from tools.chordlab import private_file


def token_of(node):
    """The CLI flags that hand `node`'s admin token to `chordmail user`/`ring`."""
    return ["--token-file", str(node.token_file)]


def pop3_login_works(node, address, password):
    client = poplib.POP3("127.0.0.1", node.pop3_port, timeout=10)
    try:
        client.user(address)
        client.pass_(password)
        return True
    except poplib.error_proto:
        return False
    finally:
        client.close()


def test_account_survives_kill_9_right_after_creation(node, tmp_path):
    """Goal: 201 means durable. Method: user add, SIGKILL at once, restart, log in."""
    password_file = private_file(tmp_path / "pw", "durable secret\n")
    status, out, err = run_cli("user", "add", "dora@example.org", "--node", node.http, "--password-file", str(password_file), *token_of(node))
    assert status == 0, err
    node.kill()
    node.start()
    status, out, err = run_cli("user", "list", "--node", node.http, *token_of(node))
    assert status == 0 and "dora@example.org" in out.split(), (out, err)
    assert pop3_login_works(node, "dora@example.org", "durable secret")
    assert not pop3_login_works(node, "dora@example.org", "wrong secret")


def test_user_commands_and_their_errors(node, tmp_path):
    password_file = private_file(tmp_path / "pw", "pw1\n")
    token = token_of(node)
    ok = run_cli("user", "add", "ed@localhost", "--node", node.http, "--password-file", str(password_file), *token)
    assert ok[0] == 0, ok
    again = run_cli("user", "add", "ed@localhost", "--node", node.http, "--password-file", str(password_file), *token)
    assert again[0] == 1 and "already exists" in again[2], again
    changed = run_cli("user", "passwd", "ed@localhost", "--node", node.http, "--password-file", "-", *token, input="pw2\n")
    assert changed[0] == 0, changed
    deleted = run_cli("user", "del", "ed@localhost", "--node", node.http, *token)
    assert deleted[0] == 0, deleted
    missing = run_cli("user", "del", "ed@localhost", "--node", node.http, *token)
    assert missing[0] == 1 and "no such account" in missing[2], missing
    unreachable = run_cli("user", "list", "--node", "http://127.0.0.1:1", *token)
    assert unreachable[0] == 1 and "127.0.0.1:1" in unreachable[2], unreachable
    no_password = run_cli("user", "add", "fay@localhost", "--node", node.http, *token)
    assert no_password[0] == 2 and "--password-file" in no_password[2], no_password


def test_admin_api_status_codes(node):
    assert node.api("POST", "/api/users", {"address": "gus@example.org", "password": "pw"})[0] == 201
    status, body = node.api("POST", "/api/users", {"address": "gus@example.org", "password": "other"})
    assert status == 409 and "exists" in body["error"]
    status, body = node.api("POST", "/api/users", {"address": "not-an-address", "password": "pw"})
    assert status == 400 and "local@domain" in body["error"]
    status, body = node.api("POST", "/api/users", {"address": "gus@unserved.test", "password": "pw"})
    assert status == 400 and "not served" in body["error"]
    status, body = node.api("POST", "/api/users", {"address": "hal@example.org", "password": ""})
    assert status == 400 and "empty" in body["error"]
    assert node.api("POST", "/api/users", {"address": "hal@example.org"})[0] in (400, 422)
    assert node.api("DELETE", "/api/users/nobody@example.org")[0] == 404
    assert node.api("PUT", "/api/users/nobody@example.org/password", {"password": "x"})[0] == 404
    assert node.api("PUT", "/api/users/gus@example.org/password", {"password": "new"})[0] == 204
    assert node.api("GET", "/api/users") == (200, {"users": ["gus@example.org"]})
    assert node.api("DELETE", "/api/users/gus@example.org")[0] == 204
    assert node.api("GET", "/api/users") == (200, {"users": []})
    assert node.api("GET", "/healthz")[0] == 200
    status, metrics = node.api("GET", "/metrics")
    assert status == 200 and "chordmail_store_commits_total" in metrics


def test_ring_views_of_a_lone_node(node):
    status, view = node.api("GET", "/api/ring")
    assert status == 200
    assert view["addr"] == node.addr
    assert view["successors"][0] == {"id": view["id"], "addr": node.addr}
    status, cluster = node.api("GET", "/api/cluster")
    assert status == 200 and cluster == {"nodes": [{"id": view["id"], "addr": node.addr}]}
    code, out, err = run_cli("ring", "--node", node.http, *token_of(node))
    assert code == 0 and node.addr in out, (out, err)
    code, out, err = run_cli("ring", "--node", node.http, "--json", *token_of(node))
    assert code == 0 and '"nodes"' in out


def test_start_up_logs_one_line_per_listener(node):
    log = node.log()
    for port in (node.smtp_port, node.pop3_port, node.http_port):
        assert f"127.0.0.1:{port}" in log, log


def test_bad_usage_exits_2_naming_the_flag(tmp_path):
    cases = [
        (["--addr", "127.0.0.1:5000", "--bits", "0"], "--bits"),
        (["--addr", "127.0.0.1:5000", "--bits", "65"], "--bits"),
        (["--addr", "127.0.0.1:5000", "--bits", "3", "--id", "8"], "--id"),
        (["-addr", "127.0.0.1:5000", "-bits", "3", "-id", "9"], "--id"),
        (["--addr", "nonsense"], "--addr"),
        (["--addr", "127.0.0.1:5000", "--frobnicate"], "--frobnicate"),
        ([], "--addr"),
    ]
    for args, flag in cases:
        code, out, err = run_cli("node", "--data", str(tmp_path / "unused"), *args)
        assert code == 2, (args, code, err)
        assert flag in err, (args, err)


def test_port_in_use_exits_1_naming_the_port(tmp_path):
    node = Node(tmp_path)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", node.http_port))
        blocker.listen()
        result = subprocess.run(node.command(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert str(node.http_port) in result.stderr, result.stderr


def test_unusable_data_dir_exits_1_naming_the_path(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    node = Node(tmp_path, data=not_a_dir / "data")
    result = subprocess.run(node.command(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert str(not_a_dir / "data") in result.stderr, result.stderr


def test_corrupt_store_is_refused_naming_the_file(tmp_path):
    node = Node(tmp_path)
    node.data.mkdir(parents=True)
    (node.data / "chordmail.redb").write_bytes(b"\x5a" * 65536)
    result = subprocess.run(node.command(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "chordmail.redb" in result.stderr, result.stderr


def test_restart_keeps_the_node_id_and_refuses_a_different_one(make_node, tmp_path):
    first = make_node(args=["--bits", "16"])
    node_id = first.api("GET", "/api/ring")[1]["id"]
    first.stop()
    first.start()
    assert first.api("GET", "/api/ring")[1]["id"] == node_id
    first.stop()
    other_id = (node_id + 1) % 65536
    result = subprocess.run(first.command() + ["--id", str(other_id)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and str(node_id) in result.stderr, result.stderr


def test_config_file_supplies_options_and_flags_win(tmp_path):
    node = Node(tmp_path)
    config = tmp_path / "node.toml"
    config.write_text(f'addr = "127.0.0.1:1"\nbits = 12\ndomain = ["conf.test"]\ndata = "{node.data}"\n')
    node.args = ["--config", str(config)]
    node.domains = ()
    node.start()
    try:
        view = node.api("GET", "/api/ring")[1]
        assert view["addr"] == node.addr and view["id"] < 4096
        assert node.api("POST", "/api/users", {"address": "a@conf.test", "password": "pw"})[0] == 201
    finally:
        node.kill()


def test_sigterm_stops_cleanly(node):
    assert node.stop() == 0
