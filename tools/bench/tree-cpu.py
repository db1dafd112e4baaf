#!/usr/bin/env python3
"""tree-cpu.py — exact CPU seconds burned by process trees, for per-message CPU.

Usage: tree-cpu.py ROOT_PID...   prints one number: total CPU seconds (user+sys)
of the roots and all their live descendants, plus the CPU of descendants that
already exited and were reaped (cutime+cstime of their parents). Take it before
and after a run; the difference is the servers' CPU during the run. Unlike
cpu-profile.py (which sums by process name over the whole machine), this counts
only the named trees, so other chordmail/postfix processes on a shared machine
are not mixed in, and Dovecot's short-lived per-login processes are not lost.
"""
import os, sys

HZ = os.sysconf("SC_CLK_TCK")

def procs():
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                s = f.read().decode(errors="replace")
        except OSError:
            continue
        f = s[s.rfind(")") + 2:].split()
        # f[1]=ppid, f[11]=utime f[12]=stime f[13]=cutime f[14]=cstime
        out[int(d)] = (int(f[1]), sum(int(x) for x in f[11:15]))
    return out

def main():
    roots = {int(a) for a in sys.argv[1:]}
    if not roots:
        sys.exit(__doc__)
    p = procs()
    total = 0
    for pid, (ppid, ticks) in p.items():
        q, seen = pid, 0
        while q and seen < 64:
            if q in roots:
                total += ticks
                break
            q = p.get(q, (0, 0))[0]; seen += 1
    print(f"{total / HZ:.2f}")

if __name__ == "__main__":
    main()
