"""The services one gateway process holds, built once from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp

from ingester_gateway.auth import (
    JwksKeySource,
    KeySource,
    StaticKeySource,
    TokenVerifier,
)
from ingester_gateway.config import Settings
from ingester_gateway.credentials import ServiceAccount, UpstreamCredentials
from ingester_gateway.models import CodecName, RetentionPolicy
from ingester_gateway.observability import Metrics, get_logger
from ingester_gateway.pipeline.codecs import CompressionCodec, build_codecs
from ingester_gateway.progress import ProgressBook
from ingester_gateway.registry import NodeRecord, NodeRegistry
from ingester_gateway.registry.selection import select_node
from ingester_gateway.registry.static import StaticRegistry
from ingester_gateway.upstream import StorageClient


class Gateway:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.log = get_logger("ingester_gateway")
        self.codecs: dict[CodecName, CompressionCodec] = build_codecs(
            settings.zstd_level, settings.brotli_quality, settings.gzip_level, settings.zstd_threads
        )
        # Hashing and compression release the GIL: a few threads use the second core.
        self.executor = ThreadPoolExecutor(
            max_workers=max(2, (os.cpu_count() or 2) * 2), thread_name_prefix="encode"
        )
        shared = settings.runtime_dir if settings.workers > 1 else None
        self.progress = ProgressBook(shared_dir=Path(shared) / "progress" if shared else None)
        self._mirror: asyncio.Task[None] | None = None
        self.active_uploads = 0
        self._cores = os.cpu_count() or 1
        self.rng = random.Random()
        self._reserved: dict[str, int] = defaultdict(int)
        self._session: aiohttp.ClientSession | None = None
        keys: KeySource
        if settings.auth_public_key_file:
            keys = StaticKeySource.from_file(settings.auth_public_key_file)
        else:
            assert settings.auth_jwks_url is not None
            keys = JwksKeySource(
                settings.auth_jwks_url, self.session, max_age=settings.auth_jwks_refresh_seconds
            )
        self.verifier = TokenVerifier(
            keys,
            min_role=settings.auth_min_role,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            leeway=settings.auth_leeway_seconds,
            max_token_bytes=settings.auth_max_token_bytes,
            cache_size=settings.auth_token_cache_size,
        )
        self.storage: StorageClient
        self.credentials: UpstreamCredentials
        self.registry: NodeRegistry

    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "gateway not started"
        return self._session

    async def start(self) -> None:
        s = self.settings
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, raise_for_status=False
        )
        service = None
        if s.service_token_url and s.service_client_id and s.service_client_secret:
            service = ServiceAccount(
                s.service_token_url, s.service_client_id, s.service_client_secret, self.session
            )
        self.credentials = UpstreamCredentials(service, forward=s.upstream_credentials == "forward")
        self.storage = StorageClient(
            self._session, s.upstream_connect_timeout_seconds, s.upstream_response_timeout_seconds
        )
        self.registry = StaticRegistry(
            s.storage_elements, self.storage.capacity, s.health_check_interval_seconds
        )
        await self.registry.start()
        self.update_node_metrics()
        if s.workers > 1:
            self._mirror = asyncio.create_task(self._mirror_progress(), name="progress-mirror")

    async def _mirror_progress(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(0.5)
            self.progress.mirror_running()
            rounds += 1
            if rounds % 120 == 0:
                self.progress.sweep_shared()

    async def stop(self) -> None:
        if self._mirror is not None:
            self._mirror.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mirror
        await self.registry.stop()
        if self._session is not None:
            await self._session.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def select_node(self, policy: RetentionPolicy, expected_size: int) -> NodeRecord | None:
        return select_node(
            self.registry.nodes(), policy, expected_size, self.rng, reserved=self._reserved
        )

    # About four blocks of an upload are alive at once: filling, encoding, queued, sending.
    BLOCKS_PER_UPLOAD = 4
    MIN_BLOCK = 64 * 1024

    def block_size(self) -> int:
        """The configured block size, shrunk so that the uploads in flight together
        hold about `INGESTER_BUFFER_BUDGET_BYTES` of blocks."""
        share = self.settings.buffer_budget_bytes // (
            self.BLOCKS_PER_UPLOAD * max(1, self.active_uploads)
        )
        return max(self.MIN_BLOCK, min(self.settings.block_size, share))

    def cores_idle(self) -> bool:
        """Fewer uploads than cores: one may spread its compression over the others."""
        return self.active_uploads < self._cores

    def reserve(self, node_id: str, size: int) -> None:
        self._reserved[node_id] += size

    def release(self, node_id: str, size: int) -> None:
        self._reserved[node_id] -= size

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready when a writable SE answered its health check recently."""
        horizon = time.time() - 3 * self.settings.health_check_interval_seconds
        nodes = self.registry.nodes()
        fresh = [
            n
            for n in nodes
            if n.writable
            and n.status == "ok"
            and n.last_seen is not None
            and n.last_seen >= horizon
        ]
        details: dict[str, object] = {
            "writable_nodes_ok": len(fresh),
            "registry_stale": self.registry.is_stale(),
            "nodes": {n.id: {"mode": n.mode, "status": n.status} for n in nodes},
        }
        return bool(fresh), details

    def update_node_metrics(self) -> None:
        for node in self.registry.nodes():
            self.metrics.node_healthy.labels(node.id).set(1 if node.status == "ok" else 0)
