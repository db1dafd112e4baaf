"""chordlab: what the tests, the fault harness and the benchmarks share.

- `ports`: the port layout of a node started here (ring port P; SMTP P + 10000,
  POP3 P + 20000, admin HTTP P + 3000, always passed explicitly), and free ports.
- `admin`: `request(method, url, body=None, timeout, token_file=None, token=...)`,
  the one HTTP helper of the admin API (it sends `Authorization: Bearer` when the
  token file exists, or the token it is given); `private_file`, `new_token_file`.
- `node`: `Node`, one `chordmail node` process (on loopback or inside a network
  namespace): start, wait until ready, kill -9, SIGTERM, SIGSTOP, `api()`;
  `wait_until`, the polling loop with a deadline; `write_config` and FAST_TIMING;
  `ClusterCa`, a cluster CA and node certificates for rings with mutual TLS.
- `netns`: `Network`, a private bridge with one network namespace per node, and
  partitions by iptables.
- `ring`: `key_of`, `replica_set` (placement as the node computes it),
  `ring_problems` / `wait_for_ring` (is this the one correct ring?).
"""
from .admin import ApiError, new_token_file, private_file, read_token, request
from .node import FAST_TIMING, ClusterCa, Node, NodeError, WaitTimeout, default_binary, wait_until, write_config
from .ports import free_port_block, free_ring_port, port_is_free
from .ring import fetcher, key_of, replica_set, ring_problems, wait_for_ring

__all__ = [
    "FAST_TIMING", "write_config", "ApiError", "ClusterCa", "Node", "new_token_file", "private_file", "NodeError", "WaitTimeout", "default_binary", "fetcher", "free_port_block",
    "free_ring_port", "key_of", "port_is_free", "read_token", "replica_set", "request", "ring_problems",
    "wait_for_ring", "wait_until",
]
