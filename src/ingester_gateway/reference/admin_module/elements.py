"""The storage-elements document of artStore's service discovery.

Every `interval` the module asks each configured SE for `GET /api/v1/info` and writes
Redis key `artstore:storage_elements`:

    {"version", "timestamp", "count", "storage_elements": [{"id" (stable database int),
     "name", "api_url", "mode", "storage_type", "status" ("online" | "offline"),
     "capacity_bytes", "used_bytes", "file_count", "priority", "element_id",
     "is_writable", "is_available"}]}

and, when the list changed, bumps `version` and publishes on `artstore:service_discovery`
(gateways reload at once). The key is rewritten every round, so a Redis that lost it
has it back within one interval. Mode, priority and capacity are what the SE reports;
while it does not answer, the last values it reported (or the configured mode).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import msgspec
import redis.asyncio as aioredis

from ingester_gateway.models import NODE_MODES, WRITABLE_MODES
from ingester_gateway.observability import get_logger
from ingester_gateway.registry.artstore import CHANNEL, DOCUMENT_KEY
from ingester_gateway.runtime.redis_io import REDIS_ERRORS
from ingester_gateway.runtime.stopping import StopSignal, stop_tasks
from ingester_gateway.upstream.wire import ElementInfo

_log = get_logger("ingester_gateway.reference.admin_module")
_encode = msgspec.json.Encoder().encode
_info = msgspec.json.Decoder(ElementInfo)
PROBE_TIMEOUT = 2.0  # seconds an SE has to answer /api/v1/info before it is listed offline


@dataclass(frozen=True, slots=True)
class StorageElementSpec:
    """`--storage-element NAME=URL[,mode=MODE]`: the element's name in the document, the
    URL gateways reach it at, and the mode to list until it reports its own."""

    name: str
    api_url: str
    mode: str = "rw"

    @classmethod
    def parse(cls, spec: str) -> StorageElementSpec:
        name, eq, rest = spec.partition("=")
        url, *options = rest.split(",")
        if not eq or not name or not url.startswith(("http://", "https://")):
            raise ValueError(
                f"storage element must be NAME=http(s)://HOST:PORT[,mode=MODE]: {spec!r}"
            )
        mode = "rw"
        for option in options:
            key, _, value = option.partition("=")
            if key != "mode" or value not in NODE_MODES:
                raise ValueError(
                    f"storage element option must be mode={'|'.join(NODE_MODES)}: {option!r}"
                )
            mode = value
        return cls(name, url.rstrip("/"), mode)


class ElementEntry(msgspec.Struct):
    id: int
    name: str
    api_url: str
    mode: str
    storage_type: str
    status: str
    capacity_bytes: int
    used_bytes: int
    file_count: int
    priority: int
    element_id: str
    is_writable: bool
    is_available: bool


class ElementsDocument(msgspec.Struct):
    version: int
    timestamp: str
    count: int
    storage_elements: list[ElementEntry]


def element_entry(
    spec: StorageElementSpec, db_id: int, info: ElementInfo | None, online: bool
) -> ElementEntry:
    """One SE's entry (pure): `info` is what it last reported (None: never yet),
    `online` whether it answered this round."""
    mode = info.mode if info is not None else spec.mode
    return ElementEntry(
        id=db_id,
        name=spec.name,
        api_url=spec.api_url,
        mode=mode,
        storage_type="local",
        status="online" if online else "offline",
        capacity_bytes=info.capacity_bytes if info is not None else 0,
        used_bytes=info.used_bytes if info is not None else 0,
        file_count=info.file_count if info is not None else 0,
        priority=info.priority if info is not None else 100,
        element_id=info.element_id if info is not None else spec.name,
        is_writable=online and mode in WRITABLE_MODES,
        is_available=online,
    )


class ElementsPublisher:
    def __init__(
        self,
        client: aioredis.Redis,
        specs: list[StorageElementSpec],
        ids: dict[str, int],
        clock: Callable[[], str],
        *,
        interval: float = 5.0,
    ) -> None:
        self._redis = client
        self._specs = specs
        self._ids = ids
        self._clock = clock
        self._interval = interval
        self._last_info: dict[str, ElementInfo] = {}
        self._online: dict[str, bool] = {}
        self._entries: list[ElementEntry] | None = None
        self._version = 0
        self._announced = False  # the current version reached the channel
        self._redis_failing = False
        self._stop = StopSignal()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._tasks = [asyncio.create_task(self._loop(), name="storage-elements")]

    async def stop(self) -> None:
        await stop_tasks(self._tasks, self._stop)
        self._tasks = []
        if self._session is not None:
            await self._session.close()

    async def run_once(self) -> None:
        """Probe every SE, then write the document (and announce it when it changed)."""
        infos = await asyncio.gather(*(self._probe(spec) for spec in self._specs))
        entries = []
        for spec, info in zip(self._specs, infos, strict=True):
            self._note(spec, info)
            last = self._last_info.get(spec.name)
            entries.append(element_entry(spec, self._ids[spec.name], last, info is not None))
        if entries != self._entries:
            self._entries = entries
            self._version += 1
            self._announced = False
        await self._write(entries)

    async def _loop(self) -> None:
        while not self._stop.is_set:
            await self.run_once()
            await self._stop.sleep(self._interval)

    async def _probe(self, spec: StorageElementSpec) -> ElementInfo | None:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, msgspec.DecodeError):
            async with self._session.get(f"{spec.api_url}/api/v1/info", timeout=timeout) as resp:
                if resp.status == 200:
                    return _info.decode(await resp.read())
        return None

    def _note(self, spec: StorageElementSpec, info: ElementInfo | None) -> None:
        online = info is not None
        if info is not None:
            self._last_info[spec.name] = info
        if self._online.get(spec.name) != online:
            self._online[spec.name] = online
            log = _log.info if online else _log.warning
            log("storage_element_" + ("online" if online else "offline"), name=spec.name)

    async def _write(self, entries: list[ElementEntry]) -> None:
        timestamp = self._clock()
        document = ElementsDocument(self._version, timestamp, len(entries), entries)
        try:
            await self._redis.set(DOCUMENT_KEY, _encode(document))
            if not self._announced:
                notice = {
                    "event": "storage_element_config_updated",
                    "timestamp": timestamp,
                    "action": "updated",
                    "version": self._version,
                    "count": len(entries),
                }
                await self._redis.publish(CHANNEL, _encode(notice))
                self._announced = True
        except REDIS_ERRORS as exc:
            if not self._redis_failing:
                _log.warning("storage_elements_unwritten", key=DOCUMENT_KEY, error=str(exc))
            self._redis_failing = True
            return
        if self._redis_failing:
            _log.info("storage_elements_written", key=DOCUMENT_KEY, version=self._version)
        self._redis_failing = False
