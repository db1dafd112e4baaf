"""The fault harness (see README.md in this directory):
`python3 -m tools.faults.run --seeds K`."""
