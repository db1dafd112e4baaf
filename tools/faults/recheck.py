#!/usr/bin/env python3
"""Runs the current checker again over kept seeds (history.json and final_reads.json
under run.py's --keep-dir), e.g. after a change of the rules:

    python3 -m tools.faults.recheck target/faults-failures/seed-*

Prints one line of counts per seed and exits 1 if any still violates.
"""
import json
import sys
from pathlib import Path

from tools.faults import checker


def main(paths):
    bad = 0
    for path in map(Path, paths):
        history = json.loads((path / "history.json").read_text())
        reads = json.loads((path / "final_reads.json").read_text())
        report = checker.check(history, reads)
        counts = " ".join(f"{key}={value}" for key, value in report.counts().items())
        print(f"{path.name}: {'VIOLATION' if report.violations else 'ok'} {counts}")
        bad += report.violations
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
