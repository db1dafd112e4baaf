#!/usr/bin/env python3
"""summarize.py RESULTS.tsv — medians per system and step, and ratios to the peers
(Postfix for SMTP, Dovecot for POP3), from compare.sh's results.tsv."""
import collections, statistics, sys

rows = list(__import__("csv").DictReader(open(sys.argv[1]), delimiter="\t"))
by = collections.defaultdict(list)
for r in rows:
    by[(r["system"], r["step"])].append(r)
NAMES = {"peers": None, "one": "chordmail 1 node", "ring": "chordmail 3-node ring, 3 copies (W=2)"}
PEER = {"smtp": "Postfix", "pop": "Dovecot"}

def med(rs, f):
    return statistics.median(float(r[f]) for r in rs)

def cpu_us(rs):  # server CPU per message, microseconds
    return statistics.median(1e6 * float(r["server_cpu_s"]) / float(r["msgs"]) for r in rs)

def spread(rs, f):
    v = [float(r[f]) for r in rs]
    return f"{min(v):.0f}–{max(v):.0f}" if len(v) > 1 else "-"

systems = [s for s in ("peers", "one", "ring") if any(k[0] == s for k in by)]
steps = sorted({k[1] for k in by}, key=lambda s: (not s.startswith("smtp"), s))
for kind in ("smtp", "pop"):
    print(f"\n### {'SMTP ingest' if kind == 'smtp' else 'POP3 retrieval'} (medians of n runs)\n")
    if kind == "smtp":
        print("| step | system | runs | msg/s (median) | min–max | ratio to Postfix | server CPU µs/msg | CPU ratio | load1 (median) |")
        print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    else:
        print("| step | system | runs | msg/s (median) | min–max | MB/s | ratio to Dovecot | server CPU µs/msg | CPU ratio | load1 (median) |")
        print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for step in steps:
        if not step.startswith(kind):
            continue
        peer = by.get(("peers", step))
        for s in systems:
            rs = by.get((s, step))
            if not rs:
                continue
            name = NAMES[s] or PEER[kind]
            rate, cpu = med(rs, "msg_per_s"), cpu_us(rs)
            ratio = f"{rate / med(peer, 'msg_per_s'):.2f}×" if peer and s != "peers" else "1"
            cratio = f"{cpu / cpu_us(peer):.2f}×" if peer and s != "peers" and cpu_us(peer) > 0 else "1"
            if kind == "smtp":
                print(f"| {step} | {name} | {len(rs)} | {rate:.0f} | {spread(rs, 'msg_per_s')} | {ratio} | {cpu:.0f} | {cratio} | {med(rs, 'load1'):.1f} |")
            else:
                print(f"| {step} | {name} | {len(rs)} | {rate:.0f} | {spread(rs, 'msg_per_s')} | {med(rs, 'MB_per_s'):.2f} | {ratio} | {cpu:.0f} | {cratio} | {med(rs, 'load1'):.1f} |")
# same-round ratios (each round's chordmail over the same round's peer), their median
print("\n### Same-round ratios (chordmail / peer within each round; median, min–max)\n")
print("| step | system | ratios per round | median |")
print("|---|---|---|---:|")
for step in steps:
    for s in ("one", "ring"):
        rat = []
        for r in sorted({x["round"] for x in rows}):
            a = [x for x in by.get((s, step), []) if x["round"] == r]
            b = [x for x in by.get(("peers", step), []) if x["round"] == r]
            if a and b:
                rat.append(float(a[0]["msg_per_s"]) / float(b[0]["msg_per_s"]))
        if rat:
            print(f"| {step} | {NAMES[s]} | {', '.join(f'{x:.2f}' for x in rat)} | {statistics.median(rat):.2f}× |")
