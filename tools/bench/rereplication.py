#!/usr/bin/env python3
"""Seconds from a kill -9 to `replicas` copies of every key again (issue 6, docs/DESIGN.md §9.3).

Starts a ring of N `chordmail node` processes on loopback (--replicas 3, default
timing unless --fast), creates the accounts, loads M small messages over them with
concurrent smtplib clients, waits until every address's replica set (the first
`replicas` live ids clockwise from hash(address), computed here as the node does) holds
every message, then kill -9 one node and polls, on the live nodes, until

  copies:       every member of every address's new replica set lists all its messages
                in `GET /api/replicas/{address}` (the figure reported), and
  out_of_sync:  every live node's `GET /api/ring` reports out_of_sync == 0.

Everything runs in a scratch directory, and every process started here is killed at
the end. Example, from the repository root:

    cargo build --release -p chordmail
    python3 -m tools.bench.rereplication --bin target/release/chordmail
"""
import argparse
import concurrent.futures
import random
import shutil
import smtplib
import sys
import tempfile
import threading
import time
from pathlib import Path

from tools.chordlab import (FAST_TIMING, ApiError, Node, NodeError, fetcher, free_ring_port, replica_set,
                            ring_problems, wait_until, write_config)
from tools.chordlab.node import REPO


def ring_is_correct(live):
    try:
        return not ring_problems(fetcher(live), [node.member() for node in live])
    except (OSError, ApiError):
        return False


def missing_copies(live, counts, replicas):
    """(address, member) pairs whose member lacks some of the address's messages."""
    missing = 0
    for address, count in counts.items():
        for member in replica_set(live, address, replicas, id_of=lambda node: node.member()["id"]):
            status, copy = member.api("GET", f"/api/replicas/{address}", timeout=30)
            if status != 200 or copy["visible"] < count:
                missing += 1
    return missing


def all_in_sync(live):
    try:
        return all(node.get("/api/ring")["out_of_sync"] == 0 for node in live)
    except (OSError, ApiError):
        return False


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
    parser.add_argument("--bin", default=str(REPO / "target" / "debug" / "chordmail"), help="chordmail binary (debug or release)")
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
        extra = ["--config", str(write_config(workdir / "fast.toml", FAST_TIMING))]
    nodes = []
    try:
        for index in range(args.nodes):
            node = Node(args.bin, workdir, ring_port=free_ring_port(), replicas=args.replicas, domains=("example.org",),
                        args=extra, rust_log="warn")
            nodes.append(node)
            node.start(entry=nodes[0].addr if index else None)
        first = nodes[0]
        wait_for(lambda: ring_is_correct(nodes), 60, "the ring")
        addresses = [f"bench{number}@example.org" for number in range(args.accounts)]
        for address in addresses:
            first.add_user(address, "bench")
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
    except NodeError as error:
        sys.exit(str(error))
    finally:
        for node in nodes:
            node.kill()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def wait_for(predicate, timeout, what, interval=0.1):
    try:
        wait_until(predicate, timeout, what, interval)
    except AssertionError as error:
        sys.exit(str(error))


if __name__ == "__main__":
    main()
