#!/usr/bin/env python3
"""Fault-injection runs against a real chordmail cluster (needs root: namespaces).

    python3 -m tools.faults.run --seeds K [--first-seed S] [--nodes N] [--duration SEC] [--long]

Each seed is one scenario (scenario.py): N nodes in network namespaces on a private
bridge, a seeded workload and seeded faults for --duration seconds, then healing, a
bounded convergence wait and the checker (checker.py). Prints one summary line:

    faults: scenarios=.. faults=.. ops=.. acknowledged=.. lost=.. resurrected=.. duplicates=.. unknown=.. convergence_max_s=..

and exits 1 on any violation; for each violating seed it prints the seed, the fault
schedule and the first offending operations, and keeps the logs under --keep-dir.
`--long` runs longer scenarios (90 s of faults each). Leftovers of a run killed with
-9 are removed by `python3 -m tools.chordlab.netns`.
"""
import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from tools.chordlab.node import REPO, default_binary
from tools.faults import checker
from tools.faults import scenario as scenario_mod


class Totals:
    def __init__(self):
        self.scenarios = self.faults = self.ops = self.acknowledged = 0
        self.lost = self.resurrected = self.duplicates = self.unknown = self.stale = 0
        self.stale_after_disk_loss = self.concurrent_sessions = self.out_of_sync_stuck = 0
        self.resurrected_final = self.resurrected_during_faults = 0
        self.convergence_max_s = 0.0
        self.failed_seeds = []

    def add(self, scenario, report):
        counts = report.counts()
        self.scenarios += 1
        self.faults += scenario.faults
        self.ops += sum(op["op"] in ("deliver", "pop") for op in scenario.history.ops)
        self.acknowledged += counts["acknowledged"]
        self.lost += counts["lost"]
        self.resurrected += counts["resurrected"]
        self.resurrected_final += counts["resurrected_final"]
        self.resurrected_during_faults += counts["resurrected_during_faults"]
        self.duplicates += counts["duplicates"]
        self.unknown += counts["unknown"]
        self.stale += counts["stale"]
        self.stale_after_disk_loss += counts["stale_after_disk_loss"] + counts["stale_during_faults"]
        self.concurrent_sessions += counts["concurrent_sessions"]
        self.out_of_sync_stuck += bool(scenario.out_of_sync_stuck)
        if scenario.convergence:
            self.convergence_max_s = max(self.convergence_max_s, max(scenario.convergence))

    def line(self):
        return (f"faults: scenarios={self.scenarios} faults={self.faults} ops={self.ops} "
                f"acknowledged={self.acknowledged} lost={self.lost} resurrected={self.resurrected} "
                f"duplicates={self.duplicates} unknown={self.unknown} "
                f"convergence_max_s={self.convergence_max_s:.1f} stale={self.stale} "
                f"violating_seeds={len(self.failed_seeds)} (notes: resurrected_after_convergence={self.resurrected_final} "
                f"resurrected_during_faults={self.resurrected_during_faults} stale_reads_during_faults={self.stale_after_disk_loss} "
                f"concurrent_sessions={self.concurrent_sessions} out_of_sync_stuck_scenarios={self.out_of_sync_stuck})")


def terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_one(seed, args, binary, totals, out):
    scenario = scenario_mod.Scenario(
        seed, binary, nodes=args.nodes, duration=args.duration, replicas=args.replicas, clients=args.clients,
        workroot=args.workdir, keep_root=args.keep_dir, proxy=not args.no_proxy,
        log=(lambda text: print(text, file=out, flush=True)) if args.verbose else None,
        strict_out_of_sync=args.strict_out_of_sync)
    started = time.monotonic()
    report = None
    try:
        try:
            scenario.setup()
            scenario.run()
            report = scenario.check()
        except KeyboardInterrupt:
            raise
        except Exception as error:  # noqa: BLE001 - a harness or cluster failure is reported, not hidden
            report = checker.Report()
            report.extra.extend(scenario.extra)
            report.extra.append(f"scenario aborted: {type(error).__name__}: {error}")
    finally:
        scenario.cleanup()
    totals.add(scenario, report)
    bad = report.violations
    status = "VIOLATION" if bad else "ok"
    counts = report.counts()
    print(f"seed {seed}: {status} faults={scenario.faults} ops={sum(op['op'] in ('deliver', 'pop') for op in scenario.history.ops)} "
          f"acknowledged={counts['acknowledged']} unknown={counts['unknown']} duplicates={counts['duplicates']} "
          f"convergence_s={max(scenario.convergence, default=0):.1f} stale_during_faults={counts['stale_after_disk_loss'] + counts['stale_during_faults']} "
          f"resurrected_during_faults={counts['resurrected_during_faults']} "
          f"concurrent_sessions={counts['concurrent_sessions']} took={time.monotonic() - started:.0f}s",
          file=out, flush=True)
    if args.keep_all and not bad:
        scenario.keep(report)
    if bad:
        totals.failed_seeds.append(seed)
        kept = scenario.keep(report)
        print(f"--- seed {seed}: violations (rerun: python3 -m tools.faults.run --seeds 1 --first-seed {seed} "
              f"--nodes {args.nodes} --duration {args.duration:g})", file=out)
        for line in report.describe(limit=8):
            print("  " + line, file=out)
        print("  fault schedule:", file=out)
        for t, text in scenario.schedule:
            print(f"    {t:8.2f} {text}", file=out)
        print(f"  logs, history and schedule kept in {kept}", file=out, flush=True)
    scenario.remove_workdir()
    return not bad


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1, help="number of scenarios")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--duration", type=float, default=None, help="seconds of faults per scenario")
    parser.add_argument("--long", action="store_true", help="90 s of faults per scenario")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3, help="concurrent client threads")
    parser.add_argument("--no-proxy", action="store_true", help="no userspace fault proxy (no slow faults)")
    parser.add_argument("--strict-out-of-sync", action="store_true",
                        help="a node whose out_of_sync stays > 0 after the replica sets agree is a violation")
    parser.add_argument("--bin", default=default_binary())
    parser.add_argument("--workdir", default=None, help="where nodes keep data and logs while running")
    parser.add_argument("--keep-dir", default=str(REPO / "target" / "faults-failures"),
                        help="where the logs of violating seeds are kept")
    parser.add_argument("--keep-all", action="store_true",
                        help="keep logs, history and schedule of every seed, not only of violating ones")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the fault schedule as it happens")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 90.0 if args.long else 25.0
    if os.geteuid() != 0:
        print("faults: needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    if not 2 <= args.nodes <= 9:
        parser.error("--nodes must be 2..9")
    # Snapshot the binary: other people rebuild target/debug while a soak runs.
    snapshot_dir = Path(tempfile.mkdtemp(prefix="chordmail-faults-bin-"))
    binary = snapshot_dir / "chordmail"
    shutil.copy2(args.bin, binary)
    signal.signal(signal.SIGTERM, terminate)
    totals = Totals()
    out = sys.stdout
    try:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run_one(seed, args, binary, totals, out)
    except KeyboardInterrupt:
        print("faults: interrupted", file=sys.stderr)
        for active in list(scenario_mod.ACTIVE):
            active.cleanup()
        print(totals.line(), flush=True)
        return 130
    finally:
        shutil.rmtree(snapshot_dir, ignore_errors=True)
    print(totals.line(), flush=True)
    if totals.failed_seeds:
        print(f"faults: violating seeds: {' '.join(map(str, totals.failed_seeds))}", flush=True)
    return 1 if totals.failed_seeds else 0


if __name__ == "__main__":
    sys.exit(main())
