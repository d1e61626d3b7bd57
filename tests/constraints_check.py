"""`make lint`: constraints.txt still fits pyproject.toml. Every dependency (runtime and
extras) is pinned there, at a version its specifier accepts; otherwise one line per
problem and exit 1, with the command that fixes it (`make lock`).

    python tests/constraints_check.py pyproject.toml constraints.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def pins(constraints: str) -> dict[str, str]:
    found = {}
    for line in constraints.splitlines():
        match = _PIN.match(line.strip())
        if match:
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def problems(pyproject: dict[str, object], constraints: str) -> list[str]:
    project = pyproject["project"]
    assert isinstance(project, dict)
    declared = [*project.get("dependencies", [])]
    for extra in project.get("optional-dependencies", {}).values():
        declared += extra
    pinned = pins(constraints)
    found = []
    for text in declared:
        requirement = Requirement(text)
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None:
            found.append(f"{requirement.name}: not pinned")
        elif not requirement.specifier.contains(version, prereleases=True):
            found.append(f"{requirement.name}: pinned {version}, wants {requirement.specifier}")
    return found


def main(argv: list[str]) -> int:
    pyproject_path, constraints_path = argv
    pyproject = tomllib.loads(Path(pyproject_path).read_text())
    found = problems(pyproject, Path(constraints_path).read_text())
    for problem in found:
        print(f"{constraints_path}: {problem} (run `make lock`)", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
