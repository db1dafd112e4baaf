"""The userspace fault proxy for node-to-node traffic (this kernel has no netem).

Every node's connections to another node's ring port are DNATed, inside the node's
namespace, to the proxy in the root namespace: 10.A.B.1:(PORT_BASE + j) forwards to
node j's ring port. One asyncio loop (a thread of the harness) serves them all. The
proxy knows both ends (the source address survives DNAT), so it can:
  - apply a fault profile to the traffic of chosen nodes: a delay per chunk (with
    jitter, so that calls on different connections overtake each other: reordering),
    stalls, and connection resets (TCP cannot lose bytes inside a stream, so loss
    shows as retransmission stalls and dropped connections);
  - honour the partitions of netns.Network (`blocked` pairs): bytes of a blocked
    direction wait, as TCP segments would be retransmitted, until the heal. (The
    iptables rules inside the namespaces cannot see through the proxy, whose
    connections come from the harness address.)
"""
import asyncio
import random
import socket
import threading

from tools.chordlab import netns

PORT_BASE = 9000
NODES_MAX = 32
CHUNK_BYTES = 64 * 1024


class FaultProxy:
    def __init__(self, net, ring_port, seed=0):
        self.net = net
        self.ring_port = ring_port
        self.rng = random.Random(seed ^ 0x5EED)
        self.faults = {}  # node index -> profile dict
        self.loop = None
        self.thread = None
        self.servers = {}
        self.writers = set()
        self.ready = threading.Event()

    # Control, from the harness thread -----------------------------------------

    def start(self):
        self.thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.ready.set()
        self.loop.run_forever()

    def call(self, coroutine, timeout=10):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def add_node(self, index):
        """Listens for node `index` and redirects, in its namespace, its traffic to
        every other (present or future) node through the proxy."""
        assert index < NODES_MAX
        self.call(self._listen(index))
        ns = self.net.ns(index)
        for other in range(NODES_MAX):
            if other == index:
                continue
            netns.sh("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", self.net.node_ip(other),
                     "--dport", str(self.ring_port), "-j", "DNAT",
                     "--to-destination", f"{self.net.harness_ip}:{PORT_BASE + other}", ns=ns)

    async def _listen(self, index):
        server = await asyncio.start_server(lambda r, w: self._serve(index, r, w), self.net.harness_ip,
                                            PORT_BASE + index, reuse_address=True)
        self.servers[index] = server

    def set_fault(self, index, profile):
        if profile is None:
            self.faults.pop(index, None)
        else:
            self.faults[index] = profile

    def heal_all(self):
        self.faults.clear()

    @staticmethod
    def random_profile(rng):
        return {
            "delay_ms": rng.choice([(0, 5), (5, 50), (20, 200), (100, 600)]),
            "stall_p": rng.choice([0.0, 0.01, 0.05]),
            "stall_ms": rng.choice([(200, 1000), (500, 3000)]),
            "reset_p": rng.choice([0.0, 0.005, 0.02]),
        }

    def stop(self):
        if self.loop is None:
            return
        async def shutdown():
            for server in self.servers.values():
                server.close()
            for writer in list(self.writers):
                writer.transport.abort()
        try:
            self.call(shutdown(), timeout=5)
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop = None

    # Data path -----------------------------------------------------------------

    def index_of(self, ip):
        for index in list(self.net.namespaces):
            if self.net.node_ip(index) == ip:
                return index
        return None

    async def _serve(self, dst, client_reader, client_writer):
        peer = client_writer.get_extra_info("peername")
        src = self.index_of(peer[0]) if peer else None
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(self.net.node_ip(dst), self.ring_port), timeout=5)
        except (OSError, asyncio.TimeoutError):
            client_writer.transport.abort()
            return
        for writer in (client_writer, upstream_writer):
            self.writers.add(writer)
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        done = asyncio.Event()
        pipes = [
            asyncio.ensure_future(self._pipe(src, dst, client_reader, upstream_writer, done)),
            asyncio.ensure_future(self._pipe(dst, src, upstream_reader, client_writer, done)),
        ]
        await done.wait()
        for writer in (client_writer, upstream_writer):
            writer.transport.abort()
            self.writers.discard(writer)
        for pipe in pipes:
            pipe.cancel()

    async def _pipe(self, src, dst, reader, writer, done):
        """Copies src -> dst, applying the faults of either end and partitions."""
        try:
            while True:
                data = await reader.read(CHUNK_BYTES)
                if not data:
                    break
                while (src, dst) in self.net.blocked:
                    await asyncio.sleep(0.1)
                profile = self.faults.get(src) or self.faults.get(dst)
                if profile:
                    if self.rng.random() < profile["reset_p"]:
                        break
                    delay = self.rng.uniform(*profile["delay_ms"])
                    if self.rng.random() < profile["stall_p"]:
                        delay += self.rng.uniform(*profile["stall_ms"])
                    await asyncio.sleep(delay / 1000)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            done.set()
