"""Fixtures that run real `chordmail node` processes on loopback for the tests.

The launcher, the admin API helper, the ring checks and the namespaces are the
shared ones of `tools/chordlab`. Every process a test starts is killed when the test
ends, pass or fail; each node writes its log to `<tmp>/node-<port>.log`, quoted when
a start-up fails.
"""
import subprocess
from pathlib import Path

import pytest

from tools import chordlab

ROOT = Path(__file__).resolve().parent.parent
BIN = chordlab.default_binary()


class Node(chordlab.Node):
    """A node of the test's binary, serving `localhost` and `example.org`, with
    --replicas 1 unless told otherwise."""

    def __init__(self, workdir, domains=("localhost", "example.org"), **kwargs):
        super().__init__(BIN, workdir, domains=domains, **kwargs)


@pytest.fixture
def make_node(tmp_path):
    """A factory of started nodes; every node is killed at the end of the test."""
    nodes = []

    def make(start=True, **kwargs):
        node = Node(tmp_path, **kwargs)
        nodes.append(node)
        return node.start() if start else node

    yield make
    for node in nodes:
        node.kill()


@pytest.fixture
def node(make_node):
    """One started node serving `localhost` and `example.org`, with --replicas 1."""
    return make_node()


def run_cli(*args, input=None, timeout=60):
    """Runs the chordmail binary to completion: (exit status, stdout, stderr)."""
    result = subprocess.run([BIN, *args], input=input, capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout, result.stderr
