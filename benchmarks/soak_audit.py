"""The soak's end-of-run accounting (`soak.py`): what every Storage Element holds (read
from its data directory: `files/<id>` beside `files/<id>.attr.json`, partials in
`tmp/`), what the Admin Module's file registry knows (`GET /api/v1/files`, paged), and
what the clients were told (every 201 and every tus `stored` result), set against each
other. `account()` is pure; the readers do the I/O."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingester_gateway.reference.processes import SERVICE_CLIENT, ServerProcess

PAGE = 1000  # the registry's largest page
ATTRS = ".attr.json"


@dataclass
class SeHoldings:
    element_id: str
    files: set[str]  # ids with data and attributes: stored, visible
    bare: set[str]  # data without attributes, or attributes without data
    partials: int  # files in tmp/: uploads in progress (or never cleaned)


def read_se(element_id: str, data_dir: Path) -> SeHoldings:
    names = {p.name for p in (data_dir / "files").iterdir()}
    with_attrs = {n[: -len(ATTRS)] for n in names if n.endswith(ATTRS)}
    data = {n for n in names if not n.endswith(ATTRS)}
    tmp = data_dir / "tmp"
    partials = sum(1 for _ in tmp.iterdir()) if tmp.is_dir() else 0
    return SeHoldings(element_id, with_attrs & data, with_attrs ^ data, partials)


def service_token(admin: ServerProcess) -> str:
    client_id, secret = SERVICE_CLIENT
    body = json.dumps(
        {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    ).encode()
    request = urllib.request.Request(
        f"{admin.url}/api/v1/auth/token",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(json.loads(resp.read())["access_token"])


def read_registry(admin: ServerProcess) -> dict[str, str]:
    """file_id -> storage_element_id of every file the registry holds (not deleted)."""
    headers = {"Authorization": f"Bearer {service_token(admin)}"}
    records: dict[str, str] = {}
    offset = 0
    while True:
        request = urllib.request.Request(
            f"{admin.url}/api/v1/files?limit={PAGE}&offset={offset}", headers=headers
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            page = json.loads(resp.read())
        for record in page["files"]:
            records[record["file_id"]] = record["storage_element_id"]
        offset += len(page["files"])
        if not page["files"] or offset >= page["total"]:
            return records


@dataclass
class Accounting:
    """Each list names file ids; every one of them is a defect except `unclaimed` ones
    that belong to uploads whose client gave up waiting (counted as failed anyway)."""

    told: int  # distinct file ids the clients were given (201s, tus results)
    stored: int  # distinct file ids on the SEs
    registered: int  # records in the registry
    orphans: list[str] = field(default_factory=list)  # stored, neither told nor registered
    unregistered: list[str] = field(default_factory=list)  # told, not in the registry
    missing: list[str] = field(default_factory=list)  # told, on no SE
    unclaimed: list[str] = field(default_factory=list)  # stored and registered, never told
    dangling: list[str] = field(default_factory=list)  # registered, on no SE
    misplaced: list[str] = field(default_factory=list)  # on another SE than told/registered
    duplicated: list[str] = field(default_factory=list)  # on more than one SE
    bare: list[str] = field(default_factory=list)  # data without attributes or the reverse

    def as_json(self) -> dict[str, Any]:
        counts = {
            name: len(getattr(self, name))
            for name in (
                "orphans",
                "unregistered",
                "missing",
                "unclaimed",
                "dangling",
                "misplaced",
                "duplicated",
                "bare",
            )
        }
        lists = {f"{name}_ids": getattr(self, name)[:50] for name in counts}
        return {
            "told": self.told,
            "stored": self.stored,
            "registered": self.registered,
            **counts,
            **lists,
        }


def account(
    told: Mapping[str, str | None],
    holdings: Iterable[SeHoldings],
    registry: Mapping[str, str],
) -> Accounting:
    """`told`: file_id -> storage_element_id the client was given."""
    where: dict[str, list[str]] = {}
    bare: list[str] = []
    for se in holdings:
        for file_id in se.files:
            where.setdefault(file_id, []).append(se.element_id)
        bare += sorted(se.bare)
    result = Accounting(told=len(told), stored=len(where), registered=len(registry), bare=bare)
    for file_id, elements in sorted(where.items()):
        if len(elements) > 1:
            result.duplicated.append(file_id)
        if file_id not in told and file_id not in registry:
            result.orphans.append(file_id)
        elif file_id not in told:
            result.unclaimed.append(file_id)
        expected = {told.get(file_id), registry.get(file_id)} - {None}
        if not expected <= set(elements):
            result.misplaced.append(file_id)
    for file_id in sorted(told):
        if file_id not in registry:
            result.unregistered.append(file_id)
        if file_id not in where:
            result.missing.append(file_id)
    result.dangling = sorted(f for f in registry if f not in where)
    return result
