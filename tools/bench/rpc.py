#!/usr/bin/env python3
"""Round-trip latency and throughput of request/reply over mail through a local ring.

Not a test: it prints a Markdown table for BENCHMARKS.md. It starts `chordmail up`
(3 nodes, 3 copies of every key), creates a service and a caller account, runs
`rpc serve -- cat` (an echo service) through node 2 and the `rpc_load` example through
node 1, once with 1 concurrent call and once with 16.

    python3 -m tools.bench.rpc [--calls-1 50] [--calls-16 320] [--poll-ms 100]

Binaries: CHORDMAIL_BIN (default target/debug/chordmail) and CM_RPC_EXAMPLES (default
target/debug/examples, built with `cargo build -p cm-rpc --examples`).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.chordlab import Node, default_binary, wait_until
from tools.chordlab.node import target_dir

BIN = default_binary()
EXAMPLES = Path(os.environ.get("CM_RPC_EXAMPLES", target_dir() / "debug" / "examples"))
PASSWORD = "bench secret"


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-port", type=int, default=6100)
    parser.add_argument("--calls-1", type=int, default=50)
    parser.add_argument("--calls-16", type=int, default=320)
    parser.add_argument("--poll-ms", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rpc-bench-"))
    up = subprocess.Popen([BIN, "up", "--nodes", "3", "--base-port", str(args.base_port), "--data", str(work / "ring")],
                          stdout=open(work / "up.log", "wb"), stderr=subprocess.STDOUT)
    runner = None
    try:
        # Handles on the nodes of `up` (node i: ring port base + i, its data in ring/node-i,
        # one admin token for all in ring/admin.token).
        nodes = [Node(BIN, work, ring_port=args.base_port + idx, data=work / "ring" / f"node-{idx}",
                      token_file=work / "ring" / "admin.token").with_default_ports() for idx in range(3)]
        for handle in nodes:
            wait_until(handle.is_ready, 60, f"{handle.http}/healthz", interval=0.2)
        time.sleep(3)  # Lets `up` create its demo account and the ring settle.
        nodes[0].add_user("bench-svc@localhost", PASSWORD)
        nodes[0].add_user("bench-caller@localhost", PASSWORD)
        (work / "password").write_text(PASSWORD + "\n")
        node = lambda idx: f"127.0.0.1:{nodes[idx].smtp_port}"  # noqa: E731
        runner = subprocess.Popen(
            [BIN, "rpc", "serve", "--server", node(1), "--server", node(2),
             "--account", "bench-svc@localhost", "--password-file", str(work / "password"),
             "--state", str(work / "state"), "--poll-ms", str(args.poll_ms), "--concurrency", "16", "--", "cat"],
            stdout=open(work / "serve.log", "wb"), stderr=subprocess.STDOUT)
        rows = []
        for concurrency, n_calls in [(1, args.calls_1), (16, args.calls_16)]:
            result = subprocess.run(
                [str(EXAMPLES / "rpc_load"), "--server", node(0), "--server", node(2),
                 "--account", "bench-caller@localhost", "--password", PASSWORD, "--to", "bench-svc@localhost",
                 "--calls", str(n_calls), "--concurrency", str(concurrency), "--poll-ms", str(args.poll_ms)],
                capture_output=True, text=True, timeout=1200)
            summary = json.loads(result.stdout)
            latencies = summary["latencies_ms"]
            rows.append((concurrency, summary["calls"], summary["ok"], percentile(latencies, 0.5),
                         percentile(latencies, 0.99), summary["calls"] / summary["elapsed_s"]))
        print(f"poll interval {args.poll_ms} ms (client and service), 3-node ring, 3 copies, echo body ~50 bytes")
        print()
        print("| concurrent callers | calls | ok | p50 ms | p99 ms | calls/s |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for concurrency, n_calls, n_ok, p50, p99, rate in rows:
            print(f"| {concurrency} | {n_calls} | {n_ok} | {p50:.0f} | {p99:.0f} | {rate:.1f} |")
    finally:
        if runner:
            runner.kill()
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
