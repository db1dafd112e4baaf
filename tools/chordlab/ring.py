"""Placement as the node computes it, and the check that a set of nodes forms the one
correct ring."""
import hashlib
import time

from . import admin
from .node import wait_until

# The successor list length of the ring crate's default (max(8, --replicas); the
# tools run --replicas <= 8).
SUCCESSOR_LIST_LEN = 8


def key_of(address, bits=64):
    """cm_types::key_of_address: SHA-256 of the lower-cased address, first 8 bytes
    big-endian, masked to `bits`."""
    key = int.from_bytes(hashlib.sha256(address.lower().encode()).digest()[:8], "big")
    return key if bits == 64 else key & ((1 << bits) - 1)


def replica_set(members, address, replicas, id_of=lambda member: member["id"], bits=64):
    """The first `replicas` of `members` clockwise from the address's key, its
    coordinator first."""
    ordered = sorted(members, key=id_of)
    key = key_of(address, bits)
    start = next((index for index, member in enumerate(ordered) if id_of(member) >= key), 0)
    return [ordered[(start + offset) % len(ordered)] for offset in range(min(replicas, len(ordered)))]


def ref(entry):
    """The {"id", "addr"} part of a node entry (the API may add fields)."""
    return {"id": entry["id"], "addr": entry["addr"]}


def names(entries):
    return [f"{entry['id']}@{entry['addr']}" for entry in entries]


def ring_problems(fetch, members, successors="list", successor_list_len=SUCCESSOR_LIST_LEN):
    """What is wrong with the ring that `members` (each {"id", "addr"}) should form;
    an empty list when nothing is.

    `fetch(member, path)` returns the parsed JSON of one admin API GET on that member
    (and raises when it cannot). Every member must walk the whole ring in ring order
    from itself (`/api/cluster`), name itself, have the previous member as its
    predecessor, and have as successors the next min(N - 1, successor_list_len)
    members in order (`successors="list"`) or at least the next one first
    (`successors="first"`)."""
    members = sorted((ref(member) for member in members), key=lambda member: member["id"])
    if len({member["id"] for member in members}) != len(members):
        return [f"duplicate ids {names(members)}"]
    problems = []
    for index, member in enumerate(members):
        order = members[index:] + members[:index]
        cluster = [ref(node) for node in fetch(member, "/api/cluster")["nodes"]]
        if cluster != order:
            problems.append(f"{member['id']}: cluster {names(cluster)}, want {names(order)}")
        view = fetch(member, "/api/ring")
        if ref(view) != member:
            problems.append(f"{member['addr']}: is {ref(view)}, want {member}")
        listed = [ref(node) for node in view["successors"]]
        want = order[1: 1 + successor_list_len] if len(order) > 1 else [member]
        if successors == "first":
            listed, want = listed[:1], want[:1]
        if listed != want:
            problems.append(f"{member['id']}: successors {names(listed)}, want {names(want)}")
        predecessor = view["predecessor"] and ref(view["predecessor"])
        want_predecessor = order[-1] if len(order) > 1 else None
        if predecessor != want_predecessor and not (len(order) == 1 and predecessor in (None, member)):
            problems.append(f"{member['id']}: predecessor {predecessor}, want {want_predecessor}")
    return problems


def wait_for_ring(fetch, members, timeout, what, interval=0.1, **check):
    """Polls until `members` form the correct ring (`ring_problems` finds nothing);
    returns the seconds it took."""
    started = time.monotonic()

    def correct():
        problems = ring_problems(fetch, members, **check)
        if problems:
            raise AssertionError("; ".join(problems))
        return True

    wait_until(correct, timeout, what, interval=interval)
    return time.monotonic() - started


def fetcher(nodes, timeout=5.0):
    """A `fetch` for `ring_problems` over `chordlab.Node`s, found by ring address."""
    by_addr = {node.addr: node for node in nodes}

    def fetch(member, path):
        node = by_addr[member["addr"]]
        return admin.get_ok(node.http + path, timeout=timeout, token_file=node.token_file)

    return fetch
