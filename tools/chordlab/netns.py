"""Network namespaces for a cluster: one bridge, one namespace per node (the fault
harness and the partition tests).

Layout (names carry a random per-run prefix, `cf` or `ct` and 4 hex digits, so that
runs never collide and leftovers are easy to spot):

    root namespace:  bridge <p>br with 10.A.B.1/24  (the harness talks from here)
    node i:          namespace <p>n<i>, veth <p>v<i> (bridge side) <-> eth0 (inside),
                     address 10.A.B.(10+i)/24, lo up

Partitions are iptables DROP rules inside the node namespaces (INPUT, by source), so
the harness address 10.A.B.1 is never cut off. Every object created is remembered and
removed by `Network.destroy()`, which is idempotent and safe to call from a signal
handler or a `finally`. `python3 -m tools.chordlab.netns` removes the leftovers of
runs that were killed with -9.
"""
import ipaddress
import os
import random
import subprocess
import threading

HARNESS_HOST = 1
NODE_HOST_BASE = 10


def sh(*args, check=True, ns=None, timeout=30):
    """Runs one command (inside namespace `ns` if given); returns its stdout."""
    command = list(args)
    if ns is not None:
        command = ["ip", "netns", "exec", ns] + command
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def pick_subnet(rng):
    """A 10.x.y.0/24 that no route of the root namespace overlaps."""
    routes = sh("ip", "-o", "-4", "route", "show", "table", "all", check=False)
    addrs = sh("ip", "-o", "-4", "addr", "show", check=False)
    used = []
    for word in (routes + " " + addrs).split():
        try:
            used.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{rng.randrange(100, 250)}.{rng.randrange(1, 255)}.0/24")
        if not any(net.overlaps(other) for other in used if other.prefixlen > 0):
            return net
    raise RuntimeError("no free 10.x.y.0/24 subnet")


PREFIXES = ("cf", "ct")  # the fault harness, the tests


class Network:
    def __init__(self, prefix=None, kind="cf"):
        rng = random.SystemRandom()
        self.prefix = prefix or "%s%04x" % (kind, rng.randrange(0x10000))
        self.subnet = pick_subnet(rng)
        self.bridge = f"{self.prefix}br"
        self.namespaces = {}  # index -> namespace name
        self.links = []  # host-side links to delete (veths and the bridge)
        self.forward_rule = None
        self.blocked = set()  # (src, dst) node pairs cut off, for the fault proxy
        self.lock = threading.Lock()
        self.destroyed = False

    def host(self, n):
        return str(self.subnet.network_address + n)

    @property
    def harness_ip(self):
        return self.host(HARNESS_HOST)

    def node_ip(self, index):
        assert 0 <= index < 200
        return self.host(NODE_HOST_BASE + index)

    def ns(self, index):
        return self.namespaces[index]

    def create(self):
        with self.lock:
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            self.links.append(self.bridge)
            sh("ip", "addr", "add", f"{self.harness_ip}/24", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")
            # With br_netfilter, bridged frames traverse the root FORWARD chain: make
            # sure a restrictive host policy cannot cut the nodes off each other.
            policy = sh("iptables", "-S", "FORWARD", check=False)
            if "-P FORWARD ACCEPT" not in policy:
                rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
                sh("iptables", "-I", *rule)
                self.forward_rule = rule

    def add_node(self, index):
        """Creates namespace `index` wired to the bridge; returns its name."""
        with self.lock:
            if self.destroyed:
                raise RuntimeError("network already destroyed")
            name = f"{self.prefix}n{index}"
            veth = f"{self.prefix}v{index}"
            sh("ip", "netns", "add", name)
            self.namespaces[index] = name
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
            self.links.append(veth)
            sh("ip", "link", "set", f"{veth}p", "netns", name)
            sh("ip", "link", "set", veth, "master", self.bridge)
            sh("ip", "link", "set", veth, "up")
            sh("ip", "link", "set", "lo", "up", ns=name)
            sh("ip", "link", "set", f"{veth}p", "name", "eth0", ns=name)
            sh("ip", "addr", "add", f"{self.node_ip(index)}/24", "dev", "eth0", ns=name)
            sh("ip", "link", "set", "eth0", "up", ns=name)
            return name

    # Partitions -------------------------------------------------------------

    def drop_from(self, dst_index, src_index):
        """Packets from node `src_index` no longer reach node `dst_index` (one way)."""
        self.blocked.add((src_index, dst_index))
        sh("iptables", "-A", "INPUT", "-s", self.node_ip(src_index), "-j", "DROP", ns=self.ns(dst_index))

    def heal(self, index):
        """Removes the partitions of traffic towards node `index`."""
        self.blocked = {(s, d) for s, d in self.blocked if d != index}
        sh("iptables", "-F", "INPUT", ns=self.ns(index), check=False)

    def heal_all(self):
        for index in list(self.namespaces):
            self.heal(index)

    # Cleanup ----------------------------------------------------------------

    def destroy(self):
        """Removes every namespace, veth and the bridge; never raises."""
        with self.lock:
            if self.destroyed:
                return
            self.destroyed = True
            for name in self.namespaces.values():
                # Processes still inside keep a namespace alive; the caller kills them first.
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
            for link in reversed(self.links):
                subprocess.run(["ip", "link", "del", link], capture_output=True)
            if self.forward_rule:
                subprocess.run(["iptables", "-D", *self.forward_rule], capture_output=True)


def leftovers(prefixes=PREFIXES):
    """Namespaces and links named like ours (from a run that was killed with -9);
    `prefixes` may also be one full run prefix."""
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    names = [line.split()[0] for line in sh("ip", "netns", "list", check=False).splitlines() if line.strip()]
    links = [line.split(":")[1].strip().split("@")[0] for line in sh("ip", "-o", "link", check=False).splitlines()]
    match = lambda n: (any(n.startswith(p) for p in prefixes) and len(n) >= 7
                       and all(c in "0123456789abcdef" for c in n[2:6]))
    return [n for n in names if match(n)], [l for l in links if match(l)]


if __name__ == "__main__":
    # `python3 -m tools.chordlab.netns`: removes leftovers of killed runs.
    namespaces, links = leftovers()
    for name in namespaces:
        subprocess.run(["ip", "netns", "pids", name], capture_output=True)
        for pid in sh("ip", "netns", "pids", name, check=False).split():
            try:
                os.kill(int(pid), 9)
            except OSError:
                pass
        subprocess.run(["ip", "netns", "del", name])
    for link in links:
        subprocess.run(["ip", "link", "del", link], capture_output=True)
    print(f"removed {len(namespaces)} namespaces, {len(links)} links")
