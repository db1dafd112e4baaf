#!/usr/bin/env python3
"""Seconds from a kill -9 to `replicas` copies of every key again (issue 6, DESIGN.md §9.3).

Starts a ring of N `chordmail node` processes on loopback (--replicas 3, default
timing unless --fast), creates the accounts, loads M small messages over them with
concurrent smtplib clients, waits until every address's replica set (the first
`replicas` live ids clockwise from hash(address), computed here as the node does) holds
every message, then kill -9 one node and polls, on the live nodes, until

  copies:       every member of every address's new replica set lists all its messages
                in `GET /api/replicas/{address}` (the figure reported), and
  out_of_sync:  every live node's `GET /api/ring` reports out_of_sync == 0.

Everything runs in a scratch directory, and every process started here is killed at
the end. Example:

    cargo build --release -p chordmail
    tools/bench-rereplication.py --bin target/release/chordmail
"""
import argparse
import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMTP_OFFSET, POP3_OFFSET, HTTP_OFFSET = 10_000, 20_000, 3_000
# One admin token for every node of the run (DESIGN.md §8), written 0600 to the
# workdir and passed with --admin-token-file.
ADMIN_TOKEN = os.urandom(32).hex()
FAST_TIMING = {
    "anti_entropy_ms": 500,
    "stabilize_ms": 100,
    "fix_fingers_ms": 100,
    "fix_successors_ms": 200,
    "check_predecessor_ms": 200,
    "probe_ms": 500,
    "rpc_timeout_ms": 300,
}


def http_get(url, timeout=30):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def http_post(url, body, timeout=30):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def port_group_is_free(port):
    for candidate in (port, port + SMTP_OFFSET, port + POP3_OFFSET, port + HTTP_OFFSET):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


def wait_for(predicate, timeout, what, interval=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last = error
        time.sleep(interval)
    sys.exit(f"timed out after {timeout} s waiting for {what} (last error: {last!r})")


def key_of(address, bits=64):
    key = int.from_bytes(hashlib.sha256(address.lower().encode()).digest()[:8], "big")
    return key if bits == 64 else key & ((1 << bits) - 1)


class Node:
    def __init__(self, binary, workdir, port, replicas, extra):
        self.port = port
        self.addr = f"127.0.0.1:{port}"
        self.smtp_port = port + SMTP_OFFSET
        self.http = f"http://127.0.0.1:{port + HTTP_OFFSET}"
        token_file = workdir / "admin.token"
        token_file.touch(mode=0o600)
        token_file.chmod(0o600)
        token_file.write_text(ADMIN_TOKEN + "\n")
        self.command = [binary, "node", "--addr", self.addr, "--data", str(workdir / f"data-{port}"),
                        "--replicas", str(replicas), "--domain", "example.org",
                        "--admin-token-file", str(token_file), *extra]
        self.log = workdir / f"node-{port}.log"
        self.process = None
        self.id = None

    def start(self):
        with open(self.log, "ab") as log:
            env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: self.process.poll() is None and http_get(self.http + "/healthz", 2)[0] == 200, 30,
                 f"{self.addr} to be ready")
        self.id = http_get(self.http + "/api/ring")[1]["id"]

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def replica_set(live, address, replicas):
    ordered = sorted(live, key=lambda node: node.id)
    key = key_of(address)
    start = next((index for index, node in enumerate(ordered) if node.id >= key), 0)
    return [ordered[(start + offset) % len(ordered)] for offset in range(min(replicas, len(ordered)))]


def ring_is_correct(live):
    ordered = sorted(live, key=lambda node: node.id)
    for index, node in enumerate(ordered):
        want = [member.addr for member in ordered[index:] + ordered[:index]]
        status, cluster = http_get(node.http + "/api/cluster", 5)
        if status != 200 or [entry["addr"] for entry in cluster["nodes"]] != want:
            return False
        status, view = http_get(node.http + "/api/ring", 5)
        if status != 200 or [entry["addr"] for entry in view["successors"]][: len(want) - 1] != want[1:]:
            return False
        if len(want) > 1 and (view["predecessor"] or {}).get("addr") != want[-1]:
            return False
    return True


def missing_copies(live, counts, replicas):
    """(address, member) pairs whose member lacks some of the address's messages."""
    missing = 0
    for address, count in counts.items():
        for member in replica_set(live, address, replicas):
            status, copy = http_get(f"{member.http}/api/replicas/{address}", 30)
            if status != 200 or copy["visible"] < count:
                missing += 1
    return missing


def all_in_sync(live):
    return all(http_get(node.http + "/api/ring", 5)[1]["out_of_sync"] == 0 for node in live)


def load(nodes, addresses, n_messages, concurrency, size):
    """Sends n_messages over `concurrency` SMTP connections; returns {address: count}."""
    counts = {address: 0 for address in addresses}
    lock = threading.Lock()
    filler = b"x" * max(0, size - 120)

    def worker(worker_id):
        node = nodes[worker_id % len(nodes)]
        sent = {}
        client = smtplib.SMTP("127.0.0.1", node.smtp_port, local_hostname="bench.test", timeout=120)
        try:
            for number in range(worker_id, n_messages, concurrency):
                address = addresses[number % len(addresses)]
                body = b"Subject: bench %d\r\n\r\n%s\r\n" % (number, filler)
                for attempt in range(20):
                    try:
                        client.sendmail("bench@elsewhere.example", [address], body)
                        break
                    except smtplib.SMTPResponseException as error:
                        if error.smtp_code // 100 != 4 or attempt == 19:
                            raise
                        time.sleep(0.1)
                sent[address] = sent.get(address, 0) + 1
        finally:
            client.quit()
        with lock:
            for address, count in sent.items():
                counts[address] += count

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker, worker_id) for worker_id in range(concurrency)]:
            future.result()
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=str(ROOT / "target" / "debug" / "chordmail"), help="chordmail binary (debug or release)")
    parser.add_argument("--nodes", type=int, default=4, help="ring size (default 4: 3 copies stay possible after the kill)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--size", type=int, default=500, help="approximate message size in octets")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent SMTP clients while loading")
    parser.add_argument("--fast", action="store_true", help="fast ring timing (anti-entropy 500 ms) instead of the defaults")
    parser.add_argument("--seed", type=int, default=1, help="picks the node to kill")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, data)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-rereplication-"))
    extra = []
    if args.fast:
        config = workdir / "fast.toml"
        config.write_text("".join(f"{key} = {value}\n" for key, value in FAST_TIMING.items()))
        extra = ["--config", str(config)]
    ports = []
    while len(ports) < args.nodes:
        port = random.randrange(20_000, 35_000)
        if port not in ports and port_group_is_free(port):
            ports.append(port)
    nodes = []
    try:
        first = Node(args.bin, workdir, ports[0], args.replicas, extra)
        nodes.append(first)
        first.start()
        for port in ports[1:]:
            node = Node(args.bin, workdir, port, args.replicas, extra + ["--entry-addr", first.addr])
            nodes.append(node)
            node.start()
        wait_for(lambda: ring_is_correct(nodes), 60, "the ring")
        addresses = [f"bench{number}@example.org" for number in range(args.accounts)]
        for address in addresses:
            status = http_post(first.http + "/api/users", {"address": address, "password": "bench"})
            assert status == 201, status
        started = time.monotonic()
        counts = load(nodes, addresses, args.messages, args.concurrency, args.size)
        load_s = time.monotonic() - started
        print(f"loaded {sum(counts.values())} messages of ~{args.size} octets over {len(addresses)} accounts "
              f"into {args.nodes} nodes (replicas {args.replicas}) in {load_s:.1f} s "
              f"({sum(counts.values()) / load_s:.0f} messages/s, {args.concurrency} clients)")
        wait_for(lambda: missing_copies(nodes, counts, args.replicas) == 0 and all_in_sync(nodes), 600,
                 "full replication before the kill", interval=0.5)

        victim = random.Random(args.seed).choice(nodes[1:])
        live = [node for node in nodes if node is not victim]
        victim.kill()
        killed_at = time.monotonic()
        times = {}
        deadline = killed_at + 600
        while time.monotonic() < deadline and len(times) < 3:
            now = time.monotonic() - killed_at
            if "ring" not in times and ring_is_correct(live):
                times["ring"] = now
            if "copies" not in times and missing_copies(live, counts, args.replicas) == 0:
                times["copies"] = time.monotonic() - killed_at
            if "copies" in times and "out_of_sync" not in times and all_in_sync(live):
                times["out_of_sync"] = time.monotonic() - killed_at
            time.sleep(0.05)
        timing = "fast (anti_entropy_ms 500, stabilize_ms 100, rpc_timeout_ms 300)" if args.fast else "default"
        print(f"kill -9 of 1 of {args.nodes} nodes ({timing} timing, binary {args.bin}):")
        for what, label in [("ring", "ring correct again"),
                            ("copies", f"every key on {min(args.replicas, len(live))} live replicas (/api/replicas)"),
                            ("out_of_sync", "out_of_sync == 0 on every live node")]:
            value = f"{times[what]:.2f} s" if what in times else "not reached within 600 s"
            print(f"  {label}: {value}")
        if len(times) < 3:
            sys.exit(1)
    finally:
        for node in nodes:
            node.kill()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
