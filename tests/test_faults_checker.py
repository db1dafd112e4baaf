"""The fault checker must fail on broken histories: a harness that cannot fail is
worthless. Goal: feed the checker (tools/faults/checker.py) hand-made histories (no processes) with
a lost acknowledged message, a resurrected delete, a corrupted body, and a clean one,
and check what it flags."""
from tools.faults import checker

ACCOUNT = "user0@example.org"


def message(token, body=None):
    body = body if body is not None else f"token {token}\nhello"
    return f"Received: by node\r\nSubject: {token}\r\n\r\n" + body.replace("\n", "\r\n")


def deliver(id, token, outcome="ok", t0=1.0, t1=1.1):
    return {"op": "deliver", "id": id, "account": ACCOUNT, "token": token, "body": f"token {token}\nhello",
            "node": 0, "outcome": outcome, "t0": t0, "t1": t1}


def pop(id, retrieved, deleted=(), quit="ok", t0=2.0):
    return {"op": "pop", "id": id, "account": ACCOUNT, "node": 1, "outcome": "ok", "t0": t0, "t_pass": t0 + 0.05,
            "t_login": t0 + 0.1, "listing": list(retrieved), "retrieved": dict(retrieved), "deleted": list(deleted),
            "quit": quit, "t_quit0": t0 + 0.2, "t_quit1": t0 + 0.3, "t1": t0 + 0.3}


def final(messages, node=0, ok=True):
    return {"node": node, "account": ACCOUNT, "ok": ok, "messages": dict(messages)}


def deleted_then_listed(t_delete, t_list):
    """A message delivered, deleted by a session at `t_delete` and listed again by a
    session at `t_list`."""
    return [
        deliver(0, "FT-1-1"),
        pop(1, {"u1": message("FT-1-1")}, deleted=["u1"], t0=t_delete),
        pop(2, {"u1": message("FT-1-1")}, t0=t_list),
    ]


def test_a_clean_history_passes():
    history = [
        deliver(0, "FT-1-1"),
        deliver(1, "FT-1-2"),
        deliver(2, "FT-1-3", outcome="unknown"),
        pop(3, {"u1": message("FT-1-1"), "u2": message("FT-1-2")}, deleted=["u1"]),
    ]
    report = checker.check(history, [final({"u2": message("FT-1-2")}), final({"u2": message("FT-1-2")}, node=1)])
    assert not report.violations, report.describe()
    assert report.counts()["lost"] == 0
    assert report.counts()["unknown"] == 1
    assert report.acknowledged == 2


def test_a_lost_acknowledged_message_is_flagged():
    history = [deliver(0, "FT-1-1"), deliver(1, "FT-1-2")]
    report = checker.check(history, [final({"u1": message("FT-1-1")})])
    assert report.violations
    assert report.counts()["lost"] == 1
    assert "LOST FT-1-2" in report.describe()[0]


def test_missing_on_one_node_only_is_still_lost():
    history = [deliver(0, "FT-1-1")]
    report = checker.check(history, [final({"u1": message("FT-1-1")}), final({}, node=1)])
    assert report.counts()["lost"] == 1


def test_a_refused_delete_does_not_excuse_a_missing_message():
    history = [deliver(0, "FT-1-1"), pop(1, {"u1": message("FT-1-1")}, deleted=["u1"], quit="refused")]
    report = checker.check(history, [final({})])
    assert report.counts()["lost"] == 1


def test_an_unknown_quit_excuses_a_missing_message():
    history = [deliver(0, "FT-1-1"), pop(1, {"u1": message("FT-1-1")}, deleted=["u1"], quit="unknown")]
    report = checker.check(history, [final({})])
    assert not report.violations, report.describe()


def test_a_resurrected_delete_is_flagged():
    history = [deliver(0, "FT-1-1"), pop(1, {"u1": message("FT-1-1")}, deleted=["u1"])]
    report = checker.check(history, [final({"u1": message("FT-1-1")})])
    assert report.violations
    assert report.counts()["resurrected"] == 1
    assert any(line.startswith("RESURRECTED u1") for line in report.describe())


def test_a_delete_undone_during_the_run_is_flagged():
    history = deleted_then_listed(2.0, 5.0)
    report = checker.check(history, [final({})])
    assert report.counts()["resurrected"] == 1


def test_a_corrupted_body_is_flagged():
    history = [deliver(0, "FT-1-1")]
    report = checker.check(history, [final({"u1": message("FT-1-1", body="token FT-1-1\nhellO")})])
    assert report.violations
    assert report.corrupt


def test_duplicates_are_counted_not_fatal():
    history = [deliver(0, "FT-1-1")]
    report = checker.check(history, [final({"u1": message("FT-1-1"), "u2": message("FT-1-1")})])
    assert report.duplicates == 1
    assert not report.violations


def test_a_message_nobody_sent_is_flagged():
    report = checker.check([], [final({"u9": message("FT-9-9")})])
    assert report.phantom and report.violations


def test_an_unreadable_mailbox_is_flagged():
    report = checker.check([deliver(0, "FT-1-1")], [final({}, ok=False)])
    assert report.unreadable == [ACCOUNT]


def test_a_stale_read_in_a_quiet_cluster_is_flagged_but_not_during_faults():
    history = [deliver(0, "FT-1-1", t0=1.0, t1=1.1), pop(1, {}, t0=30.0)]
    report = checker.check(history, [final({"u1": message("FT-1-1")})])
    assert len(report.stale) == 1 and report.violations
    history.append({"op": "nemesis", "id": 2, "t0": 10.0, "text": "partition"})
    report = checker.check(history, [final({"u1": message("FT-1-1")})])
    assert not report.stale and len(report.stale_during_faults) == 1
    assert not report.violations


def test_a_delete_listed_again_is_flagged_when_quiet_but_only_noted_right_after_a_fault():
    history = deleted_then_listed(20.0, 25.0)
    report = checker.check(history, [final({})])
    assert report.violations and report.counts()["resurrected"] == 1
    # A partition healed between the deletion and the later session: the design keeps
    # both sides readable, so the far side may list it until anti-entropy ran.
    history.append({"op": "nemesis", "id": 3, "t0": 22.0, "text": "heal partition"})
    report = checker.check(history, [final({})])
    assert not report.violations, report.describe()
    assert report.counts()["resurrected_during_faults"] == 1
    # Still fatal once the cluster converged.
    report = checker.check(history, [final({"u1": message("FT-1-1")})])
    assert report.violations and report.counts()["resurrected_final"] == 1


def test_nothing_after_the_quiet_marker_is_excused_by_earlier_faults():
    history = [
        deliver(0, "FT-1-1"),
        pop(1, {"u1": message("FT-1-1")}, deleted=["u1"], t0=20.0),
        {"op": "nemesis", "id": 2, "t0": 22.0, "text": "heal partition"},
        {"op": "quiet", "id": 3, "t0": 24.0},
        pop(4, {"u1": message("FT-1-1")}, t0=25.0),
        deliver(5, "FT-1-2", t0=25.4, t1=25.5),
        pop(6, {}, t0=26.0),
    ]
    report = checker.check(history, [final({"u2": message("FT-1-2")})])
    assert report.counts()["resurrected"] == 1, report.describe()
    assert report.counts()["stale"] == 1, report.describe()
    assert report.violations
