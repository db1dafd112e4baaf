"""One fault scenario: a cluster in namespaces, the workload, seeded faults, healing,
the convergence wait and the checker.

Faults (drawn from the scenario's seeded PRNG; the schedule is printed on a violation):
  crash      kill -9 a node, restart it on the same --data after a while
  pause      SIGSTOP a node, SIGCONT it after a while
  partition  split the nodes into two groups that drop each other's packets
  oneway     packets from one group no longer reach the other (the reverse still do)
  wipe       kill -9 a node and restart it on an empty --data (a disk loss)
  replace    kill -9 a node for good and join a fresh node (a disk loss)
  slow       node-to-node traffic of some nodes through the fault proxy (delay,
             jitter, stalls, resets) for a while (see proxy.py)
Disk losses stay within docs/DESIGN.md §9.1: at most W - 1 at once (W = majority of
--replicas), and a further one only after everything was healed and re-replication
finished (out_of_sync == 0 everywhere and every key with `replicas` full copies).
"""
import json
import shutil
import signal
import threading
import time
from pathlib import Path

from tools.chordlab import ApiError, ClusterCa, Node, NodeError, netns, new_token_file, replica_set, ring_problems
from tools.faults import checker, proxy, workload

RING_PORT = workload.RING_PORT
READY_TIMEOUT_S = 30.0
CONVERGE_TIMEOUT_S = 120.0
STABLE_CONFIRM_S = 2.5  # one anti-entropy period (2 s) and a bit: out_of_sync is per round
FINAL_READ_TIMEOUT_S = 40.0
ACCOUNTS = 6
QUIET_PHASE_S = 5.0  # workload on the converged cluster after the faults
DOWN_MAX = 2  # nodes killed or paused at once, so that the workload still makes progress

# Registry of live scenarios, for the SIGINT/SIGTERM handler of run.py.
ACTIVE = set()


class NodeProc(Node):
    """Node `index` of a scenario, in its own namespace, with the harness's state."""

    def __init__(self, scenario, index):
        args = ["--config", str(scenario.config_path)] if scenario.config_path else []
        # The nodes' ring addresses are not loopback: mutual TLS and one admin token,
        # as a real cluster runs (docs/DESIGN.md §10).
        addr = f"{scenario.net.node_ip(index)}:{RING_PORT}"
        args += [*scenario.ca.node_args(addr, scenario.workdir / f"cert-{index}"),
                 "--admin-token-file", str(scenario.token_file)]
        super().__init__(scenario.binary, scenario.workdir, ring_port=RING_PORT, host=scenario.net.node_ip(index),
                         data=scenario.workdir / f"data-{index}", log_path=scenario.workdir / f"node-{index}.log",
                         args=args, replicas=scenario.replicas, domains=(workload.DOMAIN,),
                         netns=scenario.net.ns(index), rust_log="info,cm_repl::antientropy=debug")
        self.scenario = scenario
        self.index = index
        self.ip = self.host
        self.state = "new"  # running | killed | paused | gone
        self.started_at = None
        self.entry = None
        self.has_data = False  # set once it served: its --data then holds its identity

    def start(self, entry=None):
        self.entry = entry
        super().start(entry, wait=False, note=f"faults: start t={self.scenario.history.now()} entry={entry}")
        self.state = "running"
        self.started_at = time.monotonic()

    def ready(self):
        return self.is_ready(timeout=1.0)

    def wait_ready(self, timeout=READY_TIMEOUT_S):
        try:
            super().wait_ready(timeout)
        except NodeError:
            return False
        self.has_data = True
        return True

    def call(self, path, method="GET", body=None, timeout=3.0):
        return self.api(method, path, body, timeout=timeout)


class Scenario:
    def __init__(self, seed, binary, nodes=5, duration=30.0, replicas=3, clients=4, workroot=None,
                 keep_root=None, proxy=True, log=None, strict_out_of_sync=False):
        import random
        self.seed = seed
        self.rng = random.Random(seed)
        self.binary = binary
        self.n_nodes = nodes
        self.duration = duration
        self.replicas = replicas
        self.quorum = replicas // 2 + 1
        self.clients = clients
        self.net = netns.Network()
        self.workdir = Path(workroot or "/tmp") / f"chordmail-faults-{self.net.prefix}-seed{seed}"
        self.keep_root = Path(keep_root) if keep_root else None
        self.use_proxy = proxy
        self.strict_out_of_sync = strict_out_of_sync
        self.proxy = None
        self.config_path = None
        self.log = log or (lambda text: None)
        self.history = workload.History()
        self.nodes = {}
        self.next_index = 0
        self.schedule = []  # (t, text)
        self.faults = 0
        self.disk_losses_pending = 0  # disk losses since the last complete re-replication
        self.accounts = []
        self.extra = []  # violations found outside the checker
        self.convergence = []  # seconds of every convergence wait
        self.dumps = {}
        self.last_out_of_sync = {}
        self.out_of_sync_stuck = []  # (what, {node: out_of_sync}) after the replica sets agreed
        self.lock = threading.Lock()
        self.cleaned = False

    # Bookkeeping ------------------------------------------------------------

    def note(self, text, fault_event=True):
        if fault_event:
            self.history.new(op="nemesis", text=text)
        entry = (self.history.now(), text)
        self.schedule.append(entry)
        self.log(f"  [seed {self.seed} t={entry[0]:7.2f}] {text}")

    def running(self):
        return [n for n in self.nodes.values() if n.state == "running"]

    def members(self):
        """Nodes that belong to the cluster (everything not removed for good)."""
        return [n for n in self.nodes.values() if n.state != "gone"]

    def endpoints(self):
        with self.lock:
            return {n.index: n.ip for n in self.members()}

    def add_node(self, entry=None):
        index = self.next_index
        self.next_index += 1
        self.net.add_node(index)
        node = NodeProc(self, index)
        self.nodes[index] = node
        if self.proxy:
            self.proxy.add_node(index)
        node.start(entry)
        return node

    # Set-up -----------------------------------------------------------------

    def setup(self):
        ACTIVE.add(self)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca = ClusterCa(self.binary, self.workdir / "ca")
        self.token_file = new_token_file(self.workdir / "admin.token")
        self.net.create()
        if self.use_proxy:
            self.proxy = proxy.FaultProxy(self.net, RING_PORT, seed=self.seed)
            self.proxy.start()
        first = self.add_node()
        if not first.wait_ready():
            raise RuntimeError(f"node 0 did not start:\n{first.log_tail()}")
        for _ in range(1, self.n_nodes):
            node = self.add_node(entry=first.addr)
            if not node.wait_ready():
                raise RuntimeError(f"node {node.index} did not start:\n{node.log_tail()}")
        self.wait_converged("initial ring", check_replicas=False)
        deadline = time.monotonic() + 60
        for i in range(ACCOUNTS):
            account = workload.account_name(i)
            op = self.history.new(op="create", account=account, node=None, outcome=None)
            while True:
                node = self.rng.choice(self.running())
                op["node"] = node.index
                try:
                    status, body = node.call("/api/users", "POST",
                                             {"address": account, "password": workload.password_of(account)},
                                             timeout=10)
                except OSError as error:
                    status, body = None, str(error)
                if status in (201, 409):
                    op["outcome"] = "ok" if status == 201 else "exists"
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cannot create {account}: {status} {body}")
                time.sleep(0.5)
            op["t1"] = self.history.now()
            self.accounts.append(account)
        self.wait_converged("accounts created")

    # Convergence --------------------------------------------------------------

    def ring_state(self, check_replicas=True):
        """None when the cluster is one correct ring with every key fully replicated,
        else why not."""
        members = self.members()
        if any(n.state != "running" or not n.alive() for n in members):
            return "not every member runs"
        views = {}
        for node in members:
            try:
                views[node.addr] = node.get("/api/ring", timeout=3.0)
            except (OSError, ApiError) as error:
                return f"node {node.index}: {error}"
        by_addr = {node.addr: node for node in members}

        def fetch(member, path):
            if path == "/api/ring":
                return views[member["addr"]]
            return by_addr[member["addr"]].get(path, timeout=5.0)

        try:
            problems = ring_problems(fetch, [{"id": view["id"], "addr": addr} for addr, view in views.items()],
                                     successors="first")
        except (OSError, ApiError) as error:
            return str(error)
        if problems:
            return problems[0]
        for node in members:
            self.last_out_of_sync[node.index] = views[node.addr].get("out_of_sync", 0)
        if check_replicas:
            for account in self.accounts:
                reason = self.replica_state(account, members, {n.index: views[n.addr]["id"] for n in members})
                if reason:
                    return reason
        return None

    def replica_state(self, account, members, ids):
        copies = {}
        for node in members:
            try:
                status, body = node.call(f"/api/replicas/{account}")
            except OSError as error:
                return f"node {node.index}: /api/replicas {error}"
            if status != 200:
                return f"node {node.index}: /api/replicas/{account} {status}"
            if body.get("account") is None and not body.get("messages"):
                continue
            version = body["account"] and body["account"]["version"]
            copies[node.index] = ({m["id"] for m in body["messages"] if not m["deleted"]}, set(body["tombstones"]),
                                  version and (version["wall_ms"], version["counter"], version["node"]))
        every_tomb = set().union(*(c[1] for c in copies.values())) if copies else set()
        every_id = set().union(*(c[0] for c in copies.values())) - every_tomb if copies else set()
        newest = max((c[2] for c in copies.values() if c[2]), default=None)
        # A full copy: the newest account version, every visible message (a copy
        # that holds a tombstone needs no body) and every tombstone.
        full = {i for i, (ids_, tombs, version) in copies.items()
                if version == newest and ids_ | tombs >= every_id and tombs >= every_tomb}
        wanted = self.replica_set(account, members, ids)
        if not wanted <= full:
            return (f"{account}: replica set {sorted(wanted)} but full copies on {sorted(full)} "
                    f"(holders {sorted(copies)}: messages {({i: len(c[0]) for i, c in copies.items()})} of {len(every_id)})")
        return None

    def replica_set(self, account, members, ids):
        """Indexes of the first `replicas` members clockwise from the account's key."""
        return {n.index for n in replica_set(members, account, self.replicas, id_of=lambda n: ids[n.index])}

    def wait_converged(self, what, check_replicas=True, timeout=CONVERGE_TIMEOUT_S):
        """Waits for one correct ring (and full replication); records the time taken
        or a liveness violation."""
        start = time.monotonic()
        deadline = start + timeout
        reason = "never polled"
        while time.monotonic() < deadline:
            reason = self.ring_state(check_replicas)
            if reason is None:
                took = time.monotonic() - start
                time.sleep(STABLE_CONFIRM_S)
                reason = self.ring_state(check_replicas)
                if reason is None:
                    self.convergence.append(took)
                    self.note(f"converged ({what}) in {took:.1f}s", fault_event=False)
                    self.check_out_of_sync(what)
                    return True
            time.sleep(0.5)
        self.extra.append(f"no convergence within {timeout:.0f}s after {what}: {reason}")
        self.note(f"NOT converged ({what}) within {timeout:.0f}s: {reason}")
        self.dump_state(f"not-converged-{len(self.convergence)}")
        return False

    def check_out_of_sync(self, what, timeout=3 * STABLE_CONFIRM_S):
        """The replica sets agree: `out_of_sync` should reach 0 on every node within
        a few anti-entropy rounds. Stale copies on former replicas keep it up (see
        the report); noted, fatal only with strict_out_of_sync."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            values = {}
            for node in self.members():
                try:
                    values[node.index] = node.call("/api/ring")[1].get("out_of_sync", 0)
                except (OSError, AttributeError):
                    values[node.index] = None
            if all(v == 0 for v in values.values()):
                return
            time.sleep(0.5)
        self.out_of_sync_stuck.append((what, values))
        self.note(f"out_of_sync still {values} although every replica set holds full copies ({what})")
        if self.strict_out_of_sync:
            self.extra.append(f"out_of_sync stuck at {values} after {what}")
            self.dump_state(f"out-of-sync-{len(self.convergence)}")

    def dump_state(self, name):
        """Every node's ring view and local copy of every account, for the report."""
        state = {}
        for node in self.members():
            entry = state[node.index] = {"addr": node.addr, "state": node.state}
            for path in ["/api/ring", "/api/cluster", "/metrics"] + [f"/api/replicas/{a}" for a in self.accounts]:
                try:
                    entry[path] = node.call(path, timeout=3)
                except OSError as error:
                    entry[path] = str(error)
        self.dumps[name] = state
        (self.workdir / f"state-{name}.json").write_text(json.dumps(state, indent=1))

    # Faults -----------------------------------------------------------------

    def heal_all(self, why):
        self.net.heal_all()
        if self.proxy:
            self.proxy.heal_all()
        for node in list(self.nodes.values()):
            if node.state == "paused":
                node.signal(signal.SIGCONT)
                node.state = "running"
            elif node.state == "killed":
                self.restart(node)
        self.pending = []
        self.note(f"heal everything ({why})")

    def restart(self, node):
        """Same --data: without an entry half the time (remembered peers bring it
        back). Empty --data: through a random running node."""
        node.kill()
        candidates = [n for n in self.running() if n is not node]
        entry = None
        if candidates and (not has_identity(node) or self.rng.random() < 0.5):
            entry = self.rng.choice(candidates).addr
        node.start(entry)

    def pick_fault(self):
        weights = {"crash": 3, "pause": 2, "partition": 3, "oneway": 2, "wipe": 1, "replace": 1}
        if self.proxy:
            weights["slow"] = 2
        kinds = sorted(weights)
        return self.rng.choices(kinds, [weights[k] for k in kinds])[0]

    def inject(self, now):
        kind = self.pick_fault()
        members = self.members()
        down = [n for n in members if n.state in ("killed", "paused")]
        up = [n for n in members if n.state == "running"]
        if kind in ("crash", "pause", "wipe", "replace") and (len(down) >= DOWN_MAX or len(up) <= 1):
            kind = "partition"
        if kind in ("wipe", "replace"):
            if self.disk_losses_pending >= self.quorum - 1:
                # §9.1: another disk loss only after re-replication has run.
                self.heal_all("before a further disk loss")
                if not self.wait_converged("re-replication before a further disk loss"):
                    return
                self.disk_losses_pending = 0
                self.history.new(op="rereplicated")
                up = self.running()
        self.faults += 1
        if kind == "crash":
            node = self.rng.choice(up)
            node.kill()
            node.state = "killed"
            self.pending.append((now + self.rng.uniform(0.5, 6), "restart", node))
            self.note(f"crash: kill -9 node {node.index}")
        elif kind == "pause":
            node = self.rng.choice(up)
            node.signal(signal.SIGSTOP)
            node.state = "paused"
            self.pending.append((now + self.rng.uniform(0.5, 8), "resume", node))
            self.note(f"pause: SIGSTOP node {node.index}")
        elif kind in ("partition", "oneway"):
            indexes = [n.index for n in members]
            self.rng.shuffle(indexes)
            cut = self.rng.randrange(1, len(indexes))
            left, right = sorted(indexes[:cut]), sorted(indexes[cut:])
            for a in left:
                for b in right:
                    self.net.drop_from(b, a)
                    if kind == "partition":
                        self.net.drop_from(a, b)
            self.pending.append((now + self.rng.uniform(1, 10), "heal", tuple(left + right)))
            arrow = "<-/->" if kind == "partition" else "-/->"
            self.note(f"{kind}: {left} {arrow} {right}")
        elif kind == "slow":
            chosen = self.rng.sample([n.index for n in members], self.rng.randrange(1, len(members) + 1))
            profile = self.proxy.random_profile(self.rng)
            for index in chosen:
                self.proxy.set_fault(index, profile)
            self.pending.append((now + self.rng.uniform(2, 10), "unslow", tuple(chosen)))
            self.note(f"slow: traffic from nodes {sorted(chosen)} through the proxy with {profile}")
        elif kind == "wipe":
            node = self.rng.choice(up)
            node.kill()
            shutil.rmtree(node.data, ignore_errors=True)
            node.has_data = False
            self.disk_losses_pending += 1
            self.history.new(op="disk_loss", node=node.index)
            node.state = "killed"
            self.pending.append((now + self.rng.uniform(0.5, 4), "restart", node))
            self.note(f"wipe: kill -9 node {node.index}, delete its --data (disk loss {self.disk_losses_pending})")
        elif kind == "replace":
            node = self.rng.choice(up)
            node.kill()
            node.state = "gone"
            self.disk_losses_pending += 1
            self.history.new(op="disk_loss", node=node.index)
            entry = self.rng.choice([n for n in self.running() if n is not node])
            fresh = self.add_node(entry=entry.addr)
            self.note(f"replace: node {node.index} gone for good (disk loss {self.disk_losses_pending}); "
                      f"fresh node {fresh.index} joins via node {entry.index}")

    def due(self, now):
        remaining = []
        for item in self.pending:
            at, action, target = item
            if at > now:
                remaining.append(item)
                continue
            if action == "restart" and target.state == "killed":
                empty = not has_identity(target)
                self.restart(target)
                self.note(f"restart node {target.index}" + (" on an empty --data" if empty else "")
                          + (f" via {target.entry}" if target.entry else " (no entry: remembered peers)"))
            elif action == "resume" and target.state == "paused":
                target.signal(signal.SIGCONT)
                target.state = "running"
                self.note(f"SIGCONT node {target.index}")
            elif action == "heal":
                for index in target:
                    self.net.heal(index)
                self.note(f"heal partition of {list(target)}")
            elif action == "unslow":
                for index in target:
                    self.proxy.set_fault(index, None)
                self.note(f"proxy clean again for {list(target)}")
        self.pending = remaining

    def watch_processes(self):
        """Restarts nodes that exited on their own (a failed join is retried through
        another entry); a panic is a violation."""
        for node in list(self.nodes.values()):
            if node.state == "running" and not node.has_data and node.alive() and node.ready():
                node.has_data = True
            if node.state not in ("running", "paused") or node.alive():
                continue
            code = node.process.returncode
            if code == 101 or "panicked" in node.log_tail(4000):
                self.extra.append(f"node {node.index} panicked (exit {code}); see its log")
            self.note(f"node {node.index} exited by itself with {code}; starting it again")
            others = [n for n in self.running() if n is not node and n.alive()]
            entry = self.rng.choice(others).addr if others and not has_identity(node) else None
            node.start(entry)

    # The run ----------------------------------------------------------------

    def run(self):
        self.pending = []
        load = workload.Workload(self.seed, self.history, self.accounts, self.endpoints, clients=self.clients)
        load.start()
        start = time.monotonic()
        next_fault = start + self.rng.uniform(1, 3)
        try:
            while time.monotonic() - start < self.duration:
                now = time.monotonic()
                self.due(now)
                self.watch_processes()
                if now >= next_fault:
                    self.inject(now)
                    next_fault = time.monotonic() + self.rng.uniform(1.5, 5)
                time.sleep(0.1)
            self.heal_all("end of the fault phase")
            # Let the clients see the healed cluster for a moment, then stop them.
            time.sleep(2)
        finally:
            load.stop()
            for error in load.errors[:5]:
                self.extra.append(f"harness: a client failed unexpectedly: {error}")
        self.note(f"workload stopped: {len(self.history.ops)} operations", fault_event=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.watch_processes()
            if all(n.alive() and n.ready() for n in self.members()):
                break
            time.sleep(0.5)
        if not self.wait_converged("healing"):
            return
        self.history.new(op="rereplicated")
        # The quiet phase: the same workload on the converged cluster, without faults.
        # Every read must now be exact: the checker excuses nothing that happens here
        # (a stale read or a deletion listed again is a violation).
        self.history.new(op="quiet")
        self.note("quiet phase: the workload on the converged cluster", fault_event=False)
        n_errors_before = len(load.errors)
        load.start(phase=1)
        try:
            time.sleep(QUIET_PHASE_S)
        finally:
            load.stop()
            for error in load.errors[n_errors_before:][:5]:
                self.extra.append(f"harness: a client failed unexpectedly: {error}")
        self.note(f"quiet phase over: {len(self.history.ops)} operations", fault_event=False)
        self.wait_converged("the quiet phase")

    def final_reads(self):
        reads = []
        overall = time.monotonic() + 2 * FINAL_READ_TIMEOUT_S
        for node in self.members():
            for account in self.accounts:
                deadline = min(time.monotonic() + FINAL_READ_TIMEOUT_S, max(overall, time.monotonic() + 3))
                read = {"node": node.index, "account": account, "ok": False, "messages": {}, "error": None}
                while time.monotonic() < deadline:
                    try:
                        read["messages"] = workload.read_mailbox(node.ip, account)
                        read["ok"] = True
                        break
                    except Exception as error:  # noqa: BLE001 - retried until the deadline
                        read["error"] = f"{type(error).__name__}: {error}"
                        time.sleep(0.5)
                reads.append(read)
        return reads

    def check(self):
        reads = self.final_reads()
        report = checker.check(self.history.ops, reads)
        report.extra.extend(self.extra)
        for read in reads:
            if not read["ok"]:
                report.extra.append(f"final read of {read['account']} via node {read['node']} failed: {read['error']}")
        self.reads = reads
        return report

    def keep(self, report):
        """Copies logs, history and schedule to keep_root/seed-N; returns the path."""
        if self.keep_root is None:
            return None
        target = self.keep_root / f"seed-{self.seed}"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for path in list(self.workdir.glob("node-*.log")) + list(self.workdir.glob("state-*.json")):
            shutil.copy(path, target / path.name)
        (target / "history.json").write_text(json.dumps(self.history.ops, indent=1))
        (target / "final_reads.json").write_text(json.dumps(getattr(self, "reads", []), indent=1))
        (target / "schedule.txt").write_text("".join(f"{t:8.2f} {text}\n" for t, text in self.schedule))
        (target / "violations.txt").write_text("\n".join(report.describe(limit=1000)) + "\n")
        return target

    def cleanup(self):
        if self.cleaned:
            return
        self.cleaned = True
        for node in self.nodes.values():
            node.kill()
        if self.proxy:
            self.proxy.stop()
        self.net.destroy()
        ACTIVE.discard(self)

    def remove_workdir(self):
        shutil.rmtree(self.workdir, ignore_errors=True)


def has_identity(node):
    """Whether the node's --data holds its identity (it served since the data was
    created), so that a restart without an entry rejoins through remembered peers."""
    return node.has_data

