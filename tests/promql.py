"""What PromQL expressions name (metrics, label matchers, grouping labels), read with a
real PromQL parser (promql-parser, the Rust crate's bindings), and the check of those
names against one scrape of a live /metrics. Used for deploy/prometheus/alerts.yml and
deploy/grafana/ingester-gateway.json."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import promql_parser

from tests.kit import Metrics

# Labels Prometheus adds when it scrapes (never in /metrics itself).
TARGET_LABELS = frozenset({"instance", "job"})
# Grafana's own variables, as some value PromQL accepts, before parsing a panel's query.
_GRAFANA_RANGES = re.compile(r"\$__(rate_interval|interval|range)\b")
_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # "=", "!=", "=~", "!~"
    value: str


@dataclass
class Names:
    """Everything one expression names."""

    selectors: list[tuple[str, list[Matcher]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)  # by/without/on/ignoring/group_x labels


_OPS = (
    (promql_parser.MatchOp.Equal, "="),
    (promql_parser.MatchOp.NotEqual, "!="),
    (promql_parser.MatchOp.Re, "=~"),
    (promql_parser.MatchOp.NotRe, "!~"),
)


def _op(op: Any) -> str:
    return next(text for known, text in _OPS if op == known)


def names_in(expr: str) -> Names:
    names = Names()
    _walk(promql_parser.parse(expr), names)
    return names


def grafana_expr(expr: str) -> str:
    """A Grafana panel query as plain PromQL: its variables replaced."""
    return _GRAFANA_VARIABLE.sub("x", _GRAFANA_RANGES.sub("5m", expr))


def _walk(node: Any, names: Names) -> None:
    if isinstance(node, promql_parser.VectorSelector):
        if node.name is None:
            raise AssertionError(f"a selector without a metric name: {node}")
        matchers = [
            Matcher(m.name, _op(m.op), m.value)
            for m in node.matchers.matchers
            if m.name != "__name__"
        ]
        names.selectors.append((node.name, matchers))
    elif isinstance(node, promql_parser.MatrixSelector):
        _walk(node.vector_selector, names)
    elif isinstance(node, promql_parser.AggregateExpr):
        if node.modifier is not None:
            names.grouping.update(node.modifier.labels)
        _walk(node.expr, names)
        if node.param is not None:
            _walk(node.param, names)
    elif isinstance(node, promql_parser.BinaryExpr):
        modifier = node.modifier
        if modifier is not None:
            if modifier.matching is not None:
                names.grouping.update(modifier.matching.labels)
            names.grouping.update(modifier.group_labels or ())
        _walk(node.lhs, names)
        _walk(node.rhs, names)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            _walk(arg, names)
    elif isinstance(
        node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr
    ):
        _walk(node.expr, names)
    elif not isinstance(node, promql_parser.NumberLiteral | promql_parser.StringLiteral):
        raise AssertionError(f"unexpected PromQL node {type(node).__name__}: {node}")


def missing_names(expr: str, live: Metrics) -> list[str]:
    """What `expr` names that the live exposition does not have: a metric no sample
    carries, a label no sample of that metric carries, an `=` value no sample has, a
    grouping label none of the expression's metrics carries. Empty when all is there."""
    labels: dict[str, list[dict[str, str]]] = {}
    for name, label_items in live.samples:
        labels.setdefault(name, []).append(dict(label_items))
    names = names_in(expr)
    problems: list[str] = []
    seen: set[str] = set(TARGET_LABELS)
    for metric, matchers in names.selectors:
        samples = labels.get(metric)
        if samples is None:
            problems.append(f"no metric {metric}")
            continue
        carried = {key for sample in samples for key in sample}
        seen |= carried
        for m in matchers:
            if m.label in TARGET_LABELS:
                continue
            if m.label not in carried:
                problems.append(f"{metric} has no label {m.label!r}")
            elif m.op == "=" and not any(s.get(m.label) == m.value for s in samples):
                problems.append(f"{metric} has no sample with {m.label}={m.value!r}")
    problems += [f"no label {label!r} to group by" for label in sorted(names.grouping - seen)]
    return problems
