"""The alert rules and the Grafana dashboard name only what a running gateway exports,
and the rules are valid Prometheus rules that fire when they should (promtool)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingester_gateway.reference.processes import find_binary
from tests.kit import Metrics, eventually, scrape
from tests.promql import grafana_expr, missing_names
from tests.stack import Stack

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "ingester-gateway.json"
TEXT = b"a line the dashboard will count\n" * 4000


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {
        rule["alert"]: rule["expr"]
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def dashboard_exprs() -> dict[str, str]:
    """Every query of the dashboard (panels, and the variables' label_values), as PromQL."""
    board = json.loads(DASHBOARD.read_text())
    found: dict[str, str] = {}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = grafana_expr(target["expr"])
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            inner = query["query"]
            assert inner.startswith("label_values(") and inner.endswith(")"), inner
            metric, label = (part.strip() for part in inner[len("label_values(") : -1].split(","))
            found[f"variable {variable['name']}"] = f"count by ({label}) ({metric})"
    return found


@pytest.fixture(scope="module")
def live(stack: Stack) -> Metrics:
    """A scrape after uploads that give the labelled series values: one stored, one
    refused, and a first outbox round (its gauges are set once a round)."""
    stored = stack.put(TEXT, "dashboard.log")
    assert stored.status == 201, stored.body
    refused = stack.put(b"x", "dashboard.log", auth={"Authorization": "Bearer nope"})
    assert refused.status == 401

    def outbox_reported() -> Metrics | None:
        metrics = scrape(stack.gw)
        reported = metrics.get("ingester_outbox_jobs", kind="registration") is not None
        return metrics if reported else None

    return eventually(outbox_reported, 10, "the outbox gauges")


@pytest.mark.parametrize("name", sorted(alert_exprs()))
def test_every_alert_names_metrics_and_labels_the_gateway_exports(name: str, live: Metrics) -> None:
    assert missing_names(alert_exprs()[name], live) == []


@pytest.mark.parametrize("name", sorted(dashboard_exprs()))
def test_every_dashboard_query_names_metrics_and_labels_the_gateway_exports(
    name: str, live: Metrics
) -> None:
    assert missing_names(dashboard_exprs()[name], live) == []


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(ingester_uploads_totl[5m])", "no metric ingester_uploads_totl"),
        ('ingester_outbox_jobs{kind="registrations"}', "no sample with kind='registrations'"),
        ('ingester_node_healthy{nod="se-1"}', "has no label 'nod'"),
        ("sum by (codec) (ingester_outbox_jobs)", "no label 'codec' to group by"),
        ("ingester_draining == 1 and on (job, nodes) ingester_uploads_in_flight", "'nodes'"),
    ],
)
def test_the_check_finds_a_misspelled_metric_label_or_value(
    expr: str, problem: str, live: Metrics
) -> None:
    problems = missing_names(expr, live)
    assert any(problem in p for p in problems), problems


def test_the_dashboard_has_the_panels_operators_need() -> None:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    rows = {panel["title"] for panel in board["panels"] if panel["type"] == "row"}
    assert rows == {
        "Throughput",
        "Latency",
        "Errors",
        "Storage elements",
        "Outbox and registration",
        "Compression",
        "Process",
    }
    queries = " ".join(dashboard_exprs().values())
    for metric in (
        "ingester_upload_duration_seconds_bucket",
        "ingester_node_circuit_state",
        "ingester_outbox_oldest_seconds",
        "ingester_registrations_total",
        "ingester_compression_ratio_sum",
        "process_resident_memory_bytes",
        "process_open_fds",
    ):
        assert metric in queries, metric


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    promtool = find_binary("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in check.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"],
        cwd=ALERTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
