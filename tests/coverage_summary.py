"""Branch coverage of src/ingester_gateway by package, from `coverage json`'s report.

`make test` runs it after combining the data of every process the suite ran (pytest and
the gateways, SEs, token services and CLIs it started). Its last line repeats pytest's
count (from junit.xml), so that `make test` still ends on the test result. Usage:
    python tests/coverage_summary.py [build/coverage]
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

FIELDS = ("num_statements", "covered_lines", "num_branches", "covered_branches")


def package_of(filename: str) -> str:
    """`ingester_gateway/upload/saga.py` -> `upload`; a top-level module -> `(top level)`."""
    parts = Path(filename).parts
    inner = parts[parts.index("ingester_gateway") + 1 : -1]
    return "/".join(inner) or "(top level)"


def percent(totals: dict[str, int]) -> float:
    """coverage.py's figure: covered lines and branches over all lines and branches."""
    possible = totals["num_statements"] + totals["num_branches"]
    done = totals["covered_lines"] + totals["covered_branches"]
    return 100.0 * done / possible if possible else 100.0


def main(directory: Path) -> int:
    report = directory / "coverage.json"
    files = json.loads(report.read_text())["files"]
    packages: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    for filename, data in files.items():
        for field in FIELDS:
            packages[package_of(filename)][field] += data["summary"][field]
    total = {field: sum(p[field] for p in packages.values()) for field in FIELDS}
    head = f"{'package':<26}{'lines':>8}{'missed':>8}{'branches':>10}{'missed':>8}{'cover':>8}"
    print(f"\nbranch coverage of src/ingester_gateway, all test processes\n{head}")
    for name, totals in sorted(packages.items(), key=lambda item: percent(item[1])):
        print(row(name, totals))
    print("-" * len(head))
    print(row("TOTAL", total))
    print(f"(per file: {directory / 'html' / 'index.html'}, {directory / 'coverage.xml'})")
    junit = directory / "junit.xml"
    if junit.exists():
        suite = ET.parse(junit).getroot().find("testsuite")
        if suite is not None:
            count = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
            failed = count["failures"] + count["errors"]
            passed = count["tests"] - failed - count["skipped"]
            print(f"tests: {passed} passed, {failed} failed")
    return 0


def row(name: str, totals: dict[str, int]) -> str:
    missed_lines = totals["num_statements"] - totals["covered_lines"]
    missed_branches = totals["num_branches"] - totals["covered_branches"]
    return (
        f"{name:<26}{totals['num_statements']:>8}{missed_lines:>8}"
        f"{totals['num_branches']:>10}{missed_branches:>8}{percent(totals):>7.1f}%"
    )


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "build/coverage")))
