"""The short fault-injection suite CI runs every time.

Goal: docs/DESIGN.md §9.1-9.3 under faults, on a real cluster. Method: the fault harness
(`python3 -m tools.faults.run`, tools/faults/) with a handful of seeds, 5 nodes in network namespaces, a seeded SMTP/POP3 workload
and seeded crashes, pauses, partitions, one-way partitions, slow links (fault proxy)
and disk losses within §9.1 for a few seconds each; then healing, a bounded
convergence wait and the history checker. The summary line goes to the CI log
whatever pytest's capture settings. Needs root (namespaces, iptables).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.chordlab import default_binary

ROOT = Path(__file__).resolve().parent.parent
BIN = default_binary()
SEEDS = int(os.environ.get("FAULTS_CI_SEEDS", "4"))
FIRST_SEED = int(os.environ.get("FAULTS_CI_FIRST_SEED", "1"))


def missing_requirements():
    if os.geteuid() != 0:
        return "needs root: the fault harness creates network namespaces and iptables rules"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"needs {tool} (tools/install-test-deps.sh installs it)"
    if not Path(BIN).exists():
        return f"no chordmail binary at {BIN}: run cargo build -p chordmail"
    return None


@pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements()))
def test_fault_scenarios_lose_nothing(capsys):
    command = [sys.executable, "-m", "tools.faults.run", "--seeds", str(SEEDS), "--first-seed", str(FIRST_SEED),
               "--duration", "15", "--bin", BIN]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60 * 15, cwd=ROOT)
    summary = [line for line in result.stdout.splitlines() if line.startswith("faults: scenarios=")]
    with capsys.disabled():
        sys.stderr.write("\n" + result.stdout[-20000:] + result.stderr[-5000:])
        sys.stderr.write((summary[-1] if summary else "faults: no summary line") + "\n")
    assert summary, f"no summary line:\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"fault scenarios found violations (see above):\n{result.stdout[-5000:]}"
    assert " lost=0 " in summary[-1] and " resurrected=0 " in summary[-1]
