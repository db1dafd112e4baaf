"""Benchmarks: `compare.sh` (chordmail beside Postfix and Dovecot, with the peers'
scripts in `peers/`), `python3 -m tools.bench.rereplication` and
`python3 -m tools.bench.rpc` (see README.md)."""
