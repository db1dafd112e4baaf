"""The checker: docs/DESIGN.md §9.1 and §9.2 over a recorded history. Pure, no I/O.

A history is a list of operations (plain dicts, JSON-serialisable):

  {"op": "deliver", "id", "account", "token", "body", "node", "outcome", "t0", "t1"}
      outcome: "ok" (250 to the end of DATA), "refused" (an error reply, or no DATA
      sent) or "unknown" (timeout / connection lost after the data went out).
  {"op": "pop", "id", "account", "node", "outcome", "t0", "t_login",
   "listing": [uidl...], "retrieved": {uidl: text}, "deleted": [uidl...],
   "quit": None | "ok" | "refused" | "unknown", "t_quit0", "t_quit1"}
      `listing` is the UIDL answer right after login (None if the session failed
      before it); `deleted` the UIDLs marked with DELE (+OK) before QUIT.
  {"op": "nemesis", "t0", "text"}: a fault event (injected, healed, restarted).
  {"op": "disk_loss"} ... {"op": "rereplicated"}: a window with a lost disk.
  {"op": "quiet", "t0"}: the cluster converged after the faults (one correct ring,
      every copy in place); the workload runs on, and nothing after this marker is
      excused by earlier faults.

Final reads, one per (node, account) after healing and convergence:

  {"node", "account", "ok": bool, "messages": {uidl: text}}

Rules (a message is named by the token in its body, a copy by its UIDL):
  lost         an acknowledged token that a final read (of any node) does not show,
               although no session deleted any copy of it with QUIT +OK or an unknown
               QUIT outcome; or a retrieved copy whose body differs from what was sent.
  resurrected  a UIDL deleted with QUIT +OK that a final read shows, or that a later
               session (started after the +OK) lists while the cluster was quiet: no
               fault event within QUIET_S before the deletion up to the session's end,
               and outside a disk-loss window. During faults the design keeps both
               sides of a partition readable and writable (§4): a session on the far
               side of a cut, or reading a replica set that changed before anti-entropy
               carried the tombstone over, can list a message deleted elsewhere. That
               is counted and reported (resurrected_during_faults), not fatal; the
               tombstone must still win everywhere once the cluster converged.
  stale        a session that started after a token's 250 and listed none of its
               copies, with no deletion of it in flight (R + W > replicas, §4), while
               the cluster was quiet: no fault event ("nemesis" ops) within
               QUIET_S before the delivery up to the session's end, and outside a
               disk-loss window. During faults the design keeps both sides of a
               partition writable (§4), so a stale read then is only noted.
  duplicates   extra UIDLs of one token (a retried delivery); reported, not fatal.
  unknown      deliveries that were refused or timed out (may be present or absent).
"""
import re

TOKEN_RE = re.compile(r"FT-\d+-\d+")
QUIET_S = 15.0


def split_message(text):
    """(headers, body) of a message, line endings normalised to \\n."""
    text = text.replace("\r\n", "\n")
    head, sep, body = text.partition("\n\n")
    return head, body if sep else ""


def normalise_body(body):
    return body.replace("\r\n", "\n").rstrip("\n")


def token_of(text):
    _, body = split_message(text)
    match = TOKEN_RE.search(body) or TOKEN_RE.search(text)
    return match.group(0) if match else None


class Report:
    def __init__(self):
        self.acknowledged = 0
        self.unknown = 0
        self.duplicates = 0
        self.lost = []  # (token, why, op)
        self.resurrected = []  # (uidl, why, deleting session, seen where)
        self.stale = []  # (token, session)
        self.corrupt = []  # (uidl, token, where)
        self.phantom = []  # (uidl, where): a message no client sent
        self.unreadable = []  # accounts no node could serve at the end
        self.extra = []  # violations added by the scenario (ring, replicas, convergence)
        # Not fatal, reported: stale reads within a disk-loss window (a wiped replica
        # can answer a read before re-replication refilled it), and sessions that held
        # one maildrop at the same time (the lock is a lease; faults can expire it).
        self.stale_after_disk_loss = []
        self.stale_during_faults = []
        self.resurrected_during_faults = []  # (uidl, deleting session, listing session)
        self.concurrent_sessions = []

    @property
    def violations(self):
        return bool(self.lost or self.resurrected or self.stale or self.corrupt or self.phantom
                    or self.unreadable or self.extra)

    def counts(self):
        return {
            "acknowledged": self.acknowledged,
            "lost": len({t for t, *_ in self.lost}) + len(self.corrupt),
            "resurrected": len({u for u, *_ in self.resurrected}),
            "resurrected_final": len({u for u, why, *_ in self.resurrected if why == "visible after convergence"}),
            "duplicates": self.duplicates,
            "unknown": self.unknown,
            "stale": len(self.stale),
            "stale_after_disk_loss": len(self.stale_after_disk_loss),
            "stale_during_faults": len(self.stale_during_faults),
            "resurrected_during_faults": len({u for u, *_ in self.resurrected_during_faults}),
            "concurrent_sessions": len(self.concurrent_sessions),
        }

    def describe(self, limit=10):
        """The first offending operations, one per line."""
        lines = []
        for token, why, op in self.lost[:limit]:
            lines.append(f"LOST {token}: {why}; delivery {brief(op)}")
        for uidl, token, where in self.corrupt[:limit]:
            lines.append(f"CORRUPT {uidl} ({token}) seen {where}")
        for uidl, why, deleter, where in self.resurrected[:limit]:
            lines.append(f"RESURRECTED {uidl}: {why}; deleted by {brief(deleter)}; seen {where}")
        for token, session in self.stale[:limit]:
            lines.append(f"STALE {token}: not listed by {brief(session)}")
        for uidl, where in self.phantom[:limit]:
            lines.append(f"PHANTOM {uidl} seen {where}")
        for account in self.unreadable[:limit]:
            lines.append(f"UNREADABLE {account}: no node served it after convergence")
        for text in self.extra[:limit]:
            lines.append(f"VIOLATION {text}")
        for token, session in self.stale_after_disk_loss[:limit]:
            lines.append(f"note: stale read within a disk-loss window: {token} not listed by {brief(session)}")
        for token, session in self.stale_during_faults[:limit]:
            lines.append(f"note: stale read during faults: {token} not listed by {brief(session)}")
        for uidl, deleter, session in self.resurrected_during_faults[:limit]:
            lines.append(f"note: deleted message listed again during faults: {uidl} deleted by {brief(deleter)}; "
                         f"listed by {brief(session)}")
        for first, second in self.concurrent_sessions[:limit]:
            lines.append(f"note: two sessions held one maildrop: {brief(first)} and {brief(second)}")
        return lines


def brief(op):
    if op is None:
        return "-"
    keys = ("op", "id", "account", "node", "outcome", "quit", "t0", "t1", "t_login", "t_quit0", "t_quit1", "detail")
    return "{" + ", ".join(f"{k}={op[k]!r}" for k in keys if k in op and op[k] is not None) + "}"


def in_disk_loss_window(history, t):
    """Whether `t` falls after a disk loss and before the re-replication after it."""
    start = None
    for op in history:
        if op["op"] == "disk_loss" and op["t0"] <= t:
            start = op["t0"]
        if op["op"] == "rereplicated" and start is not None and op["t0"] <= t:
            start = None
    return start is not None


def faults_between(history, start, end):
    """Whether a fault event falls in [start, end], or `start` lies in a disk-loss
    window. A "quiet" marker (the cluster converged after the faults) before `end`
    moves `start` up to it: what happened before it was repaired."""
    start = max([start] + [e["t0"] for e in history if e["op"] == "quiet" and e["t0"] <= end])
    return (in_disk_loss_window(history, start)
            or any(e["op"] == "nemesis" and start <= e["t0"] <= end for e in history))


def check(history, final_reads):
    report = Report()
    deliveries = [op for op in history if op["op"] == "deliver"]
    sessions = [op for op in history if op["op"] == "pop"]
    sent = {op["token"]: op for op in deliveries}
    report.acknowledged = sum(op["outcome"] == "ok" for op in deliveries)
    report.unknown = sum(op["outcome"] != "ok" for op in deliveries)

    # Every copy anyone saw: its token, and whether its body is exactly what was sent.
    uidl_token = {}
    token_uidls = {}

    def saw(uidl, text, where):
        token = token_of(text)
        if token is None or token not in sent:
            if uidl not in uidl_token:
                report.phantom.append((uidl, where))
            uidl_token.setdefault(uidl, None)
            return
        known = uidl_token.get(uidl)
        if known is not None and known != token:
            report.corrupt.append((uidl, token, f"{where} (the UIDL earlier held {known})"))
        uidl_token[uidl] = token
        token_uidls.setdefault(token, set()).add(uidl)
        _, body = split_message(text)
        if normalise_body(body) != normalise_body(sent[token]["body"]):
            report.corrupt.append((uidl, token, where))

    for session in sessions:
        for uidl, text in (session.get("retrieved") or {}).items():
            saw(uidl, text, f"in session {session['id']} via node {session['node']}")
    for read in final_reads:
        if read["ok"]:
            for uidl, text in read["messages"].items():
                saw(uidl, text, f"in the final read via node {read['node']}")
    report.duplicates = sum(len(uidls) - 1 for uidls in token_uidls.values())

    # Deletions: by UIDL, with the QUIT outcome of the session that made them.
    deleted_ok = {}  # uidl -> session
    deleted_maybe = set()  # tokens that some session may have deleted
    for session in sessions:
        for uidl in session.get("deleted") or []:
            token = uidl_token.get(uidl)
            if session.get("quit") == "ok":
                deleted_ok.setdefault(uidl, session)
            if session.get("quit") in ("ok", "unknown") and token is not None:
                deleted_maybe.add(token)

    # Final state.
    by_account = {}
    for read in final_reads:
        by_account.setdefault(read["account"], []).append(read)
    for account, reads in sorted(by_account.items()):
        if not any(read["ok"] for read in reads):
            report.unreadable.append(account)
    lost_tokens = set()
    for read in final_reads:
        if not read["ok"]:
            continue
        visible_tokens = {uidl_token.get(uidl) for uidl in read["messages"]}
        for uidl in read["messages"]:
            if uidl in deleted_ok:
                report.resurrected.append((uidl, "visible after convergence", deleted_ok[uidl],
                                           f"final read via node {read['node']}"))
        for op in deliveries:
            token = op["token"]
            if (op["account"] == read["account"] and op["outcome"] == "ok" and token not in visible_tokens
                    and token not in deleted_maybe and token not in lost_tokens):
                lost_tokens.add(token)
                report.lost.append((token, f"acknowledged, never deleted, absent from the final read via node {read['node']}", op))

    # During the run: a session that starts after a 250 sees the message; one that
    # starts after a deletion's +OK does not.
    for session in sessions:
        listing = session.get("listing")
        if listing is None or session.get("t_login") is None:
            continue
        listed = set(listing)
        for uidl in listed:
            deleter = deleted_ok.get(uidl)
            if deleter is not None and deleter.get("t_quit1") is not None and deleter["t_quit1"] < session["t0"]:
                if faults_between(history, deleter["t_quit0"] - QUIET_S, session["t1"]):
                    report.resurrected_during_faults.append((uidl, deleter, session))
                else:
                    report.resurrected.append((uidl, "listed by a session that started after the deletion's +OK",
                                               deleter, f"session {brief(session)}"))
        listed_tokens = {uidl_token.get(uidl) for uidl in listed}
        if len(session.get("retrieved") or {}) < len(listed):
            # Some listed copies were not retrieved: their tokens are unknown, so a
            # missing token may hide behind one of them.
            continue
        for op in deliveries:
            token = op["token"]
            if op["account"] != session["account"] or op["outcome"] != "ok" or op["t1"] >= session["t0"]:
                continue
            if token in listed_tokens:
                continue
            in_flight = any(
                other is not session and token_deleted_by(other, token, uidl_token)
                and other.get("quit") in ("ok", "unknown") and other.get("t_quit0") is not None
                and other["t_quit0"] < session["t_login"]
                for other in sessions
            )
            if not in_flight:
                if in_disk_loss_window(history, session["t0"]):
                    report.stale_after_disk_loss.append((token, session))
                elif faults_between(history, op["t0"] - QUIET_S, session["t1"]):
                    report.stale_during_faults.append((token, session))
                else:
                    report.stale.append((token, session))

    # Two sessions logged in to one maildrop at once.
    logged = [s for s in sessions if s.get("t_pass") is not None]
    for first in logged:
        for second in logged:
            if (first is not second and first["account"] == second["account"]
                    and first["t_pass"] < second["t0"] and second["t_pass"] is not None
                    and first.get("t_quit0") is not None and second["t_pass"] < first["t_quit0"]):
                report.concurrent_sessions.append((first, second))
    return report


def token_deleted_by(session, token, uidl_token):
    return any(uidl_token.get(uidl) == token for uidl in session.get("deleted") or [])
