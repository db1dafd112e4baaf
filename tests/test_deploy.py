"""deploy/ (issue 17): the Prometheus scrape example and the Grafana dashboard.

Method: load both files with real parsers (PyYAML, Python's json), check their
shapes, then scrape a running node's /metrics and check that every metric name the
dashboard's queries use is one the node exports (a renamed metric would otherwise
leave a silently empty panel).
"""
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana-chordmail.json"
SCRAPE = ROOT / "deploy" / "prometheus.yml"

# Panels the dashboard must have, by a word of their title.
REQUIRED_PANELS = ("SMTP accept latency", "Deliveries", "Replica write latency", "out of sync",
                   "Outbound queue", "Connections open")


def exported_sample_names(node):
    """Names of every sample line of the node's /metrics (`_bucket`, `_total`, ...)."""
    status, text = node.api("GET", "/metrics", token=None)
    assert status == 200, text
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def dashboard_exprs():
    dashboard = json.loads(DASHBOARD.read_text())
    return dashboard, [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_is_valid_json_with_the_panels_operators_need():
    dashboard, exprs = dashboard_exprs()
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids), ids
    for panel in panels:
        assert panel["targets"] and {"x", "y", "w", "h"} <= panel["gridPos"].keys(), panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
    titles = " | ".join(panel["title"] for panel in panels)
    for word in REQUIRED_PANELS:
        assert word.lower() in titles.lower(), (word, titles)
    # The p50 and p99 of SMTP accept latency come from the histogram's buckets.
    assert any("histogram_quantile(0.5," in e and "chordmail_smtp_accept_seconds_bucket" in e for e in exprs)
    assert any("histogram_quantile(0.99," in e and "chordmail_smtp_accept_seconds_bucket" in e for e in exprs)


def test_every_metric_the_dashboard_uses_is_exported(node):
    exported = exported_sample_names(node)
    _, exprs = dashboard_exprs()
    used = {name for expr in exprs for name in re.findall(r"\bchordmail_[a-z0-9_]+", expr)}
    assert len(used) >= 10, used
    missing = sorted(used - exported)
    assert not missing, f"the dashboard queries metrics the node does not export: {missing}"


def test_scrape_example_points_at_the_admin_port_without_credentials():
    config = yaml.safe_load(SCRAPE.read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    # /metrics is open (docs/DESIGN.md §8): the example must not suggest a token.
    assert not {"authorization", "bearer_token", "bearer_token_file", "basic_auth"} & job.keys()
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    # The admin port of ring port 5000 (ring port + 3000).
    assert targets and all(t.endswith(":8000") for t in targets), targets
    assert "no token" in SCRAPE.read_text()
