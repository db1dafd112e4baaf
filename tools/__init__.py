"""The repository's Python tools, one import root for the tests, the fault harness and
the benchmarks.

Everything runs from the repository root: pytest finds this package through
`pytest.ini` (`pythonpath = .`), and the scripts are modules run with `python3 -m`:

    python3 -m tools.faults.run --seeds 4          # the fault harness
    python3 -m tools.faults.recheck DIR...         # its checker over kept seeds
    python3 -m tools.chordlab.netns                # leftovers of a killed harness run
    python3 -m tools.bench.rereplication --bin ... # re-replication after a kill -9
    python3 -m tools.bench.rpc                     # request/reply over mail

`tools.chordlab` is the shared library (nodes, admin API, namespaces, ring checks);
`tools.faults` is the fault harness; `tools.bench` holds the benchmarks.
"""
