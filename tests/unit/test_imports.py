"""The tests' import rule: helpers come from tests/kit.py, tests/stack.py or
tests/faults.py, never from a `test_*` module or from a conftest (pytest imports those
itself; a helper kept there is found by nobody, and importing a test module drags its
tests and fixtures along)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("tests", "benchmarks")


def is_forbidden(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return last == "conftest" or last.startswith("test_")


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in `source`, a module of `package`, with
    relative imports resolved; for `from package import name`, `package.name` too
    (the name may be a module)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def test_no_module_imports_a_test_module_or_a_conftest() -> None:
    offenders = []
    for top in CHECKED:
        for path in sorted((ROOT / top).rglob("*.py")):
            package = ".".join(path.relative_to(ROOT).parent.parts)
            for line, module in imported_modules(path.read_text(), package):
                if is_forbidden(module):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert offenders == [], "take helpers from tests/kit.py or tests/stack.py:\n" + "\n".join(
        offenders
    )


@pytest.mark.parametrize(
    ("source", "forbidden"),
    [
        ("from tests.conftest import DevKeys", True),
        ("import tests.integration.test_failures", True),
        ("from tests.integration.test_registry_write import eventually", True),
        ("from tests.unit import test_codecs", True),
        ("from .test_codecs import decompress", True),
        ("from . import conftest", True),
        ("from ..conftest import keys", True),
        ("from tests.kit import eventually", False),
        ("from tests.stack import Stack", False),
        ("from . import kit", False),
        ("import pytest", False),
    ],
)
def test_the_rule_sees_every_way_of_breaking_it(source: str, forbidden: bool) -> None:
    found = [m for _, m in imported_modules(source, "tests.unit") if is_forbidden(m)]
    assert bool(found) is forbidden, found
