"""The services one gateway process holds, built once from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp

from ingester_gateway.admin.client import AdminClient
from ingester_gateway.admin.transport import KeepAliveTransport
from ingester_gateway.auth.credentials import (
    CredentialError,
    ServiceAccount,
    ServiceCredentials,
    UpstreamCredentials,
)
from ingester_gateway.auth.verify import (
    JwksKeySource,
    KeySource,
    StaticKeySource,
    TokenVerifier,
)
from ingester_gateway.config import Settings
from ingester_gateway.fair_use.gate import FairUseGate
from ingester_gateway.fair_use.limits import FairUsePolicy
from ingester_gateway.fair_use.local import LocalLedger
from ingester_gateway.fair_use.redis_ledger import RedisLedger
from ingester_gateway.finalize.service import Finalizer, FinalizeSetup
from ingester_gateway.finalize.transactions import TransactionStore
from ingester_gateway.models import CodecName
from ingester_gateway.observability import COMPENSATION_FAILURES, Metrics, get_logger
from ingester_gateway.outbox.compensations import Compensations
from ingester_gateway.outbox.events import FileAnnouncer
from ingester_gateway.outbox.jobs import DeleteFile, StoreUpload
from ingester_gateway.outbox.journal import Journal
from ingester_gateway.outbox.queue import Outbox
from ingester_gateway.outbox.records import FileRecorder
from ingester_gateway.pipeline.codecs import CompressionCodec, build_codecs
from ingester_gateway.registry import NodeRecord, NodeRegistry, artstore
from ingester_gateway.registry import redis as redis_registry
from ingester_gateway.registry.directory import NodeDirectory
from ingester_gateway.registry.health import HealthProber
from ingester_gateway.registry.static import StaticRegistry
from ingester_gateway.registry.watch import RedisWatchedRegistry
from ingester_gateway.resilience import BreakerPolicy, BreakerState, RetryPolicy
from ingester_gateway.resumable.files import FileStagingArea, FileStateStore
from ingester_gateway.resumable.locks import LocalLocker, RedisLocker
from ingester_gateway.resumable.ports import Locker, StateStore
from ingester_gateway.resumable.redis_store import RedisStateStore
from ingester_gateway.resumable.service import ResumableSetup, ResumableUploads
from ingester_gateway.resumable.storing import Signals, StoreSetup, UploadStorer
from ingester_gateway.runtime.drain import Drain
from ingester_gateway.runtime.redis_io import redis_client
from ingester_gateway.runtime.redis_pipeline import PipelinedRedis
from ingester_gateway.tracing import tracing_from_environment
from ingester_gateway.upload.budget import UploadBudget
from ingester_gateway.upload.driver import UploadServices
from ingester_gateway.upload.plan import PlanRules
from ingester_gateway.upload.progress import ProgressBook
from ingester_gateway.upstream.client import DeleteOutcome, StorageClient, use_vectored_writes

CIRCUIT_LEVEL = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class Gateway:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.log = get_logger("ingester_gateway")
        # NO_TRACING unless INGESTER_OTEL_ENABLED / OTEL_TRACES_EXPORTER ask for it.
        self.tracing = tracing_from_environment(os.environ, settings.otel_enabled)
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
        self.budget = UploadBudget(
            settings.buffer_budget_bytes, settings.block_size, settings.replay_buffer_bytes
        )
        self.drain = Drain(settings.shutdown_grace, on_change=self._draining)
        self._session: aiohttp.ClientSession | None = None
        # One client for the registry, events and the backlog; every command is bounded
        # by INGESTER_REDIS_TIMEOUT_SECONDS, so no upload waits long on Redis.
        self.redis = (
            redis_client(settings.redis_url, settings.redis_timeout_seconds)
            if settings.redis_url
            else None
        )
        self._fair_redis: PipelinedRedis | None = None
        self.fair_use = self._build_fair_use()
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
            roles=settings.auth_upload_roles,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            leeway=settings.auth_leeway_seconds,
            max_token_bytes=settings.auth_max_token_bytes,
            cache_size=settings.auth_token_cache_size,
        )
        self.storage: StorageClient
        self.credentials: UpstreamCredentials
        self.nodes: NodeDirectory
        self.uploads: UploadServices  # once started
        self.rng = random.Random()
        self.retry_policy = RetryPolicy(
            max_attempts=settings.retry_attempts, deadline_seconds=settings.retry_deadline_seconds
        )
        self.plan_rules = PlanRules(
            default_codec=settings.default_compression,
            allowed_content_types=tuple(settings.allowed_content_types),
            compression_min_bytes=settings.compression_min_bytes,
            default_ttl_days=settings.default_ttl_days,
            # artStore's registry and search index hold no empty file.
            refuse_empty=settings.admin_url is not None or self.redis is not None,
        )
        self.journal = Journal(settings.state_dir)
        self.outbox = Outbox(self.redis, self.journal, self.metrics, tracing=self.tracing)
        self.outbox.handle(DeleteFile, Compensations(self._background_delete, self.metrics))
        # Without an Admin Module to announce stored files, the gateway does.
        self.announcer = (
            FileAnnouncer(self.redis, settings.events_stream, settings.events_maxlen)
            if self.redis is not None and settings.admin_url is None
            else None
        )
        self.records: FileRecorder  # once started (the Admin client needs the session)
        self.finalizer: Finalizer | None = None  # once started, with a service account
        self.resumable: ResumableUploads  # once started
        self.clock = time.time
        self._admin_transport: KeepAliveTransport | None = None

    def _build_fair_use(self) -> FairUseGate:
        """Limits shared through Redis when it is configured, else this process's own."""
        s = self.settings
        policy = FairUsePolicy(
            concurrent_uploads=s.fair_use_concurrent_uploads if s.fair_use else {},
            requests_per_minute=s.fair_use_requests_per_minute if s.fair_use else {},
            bytes_per_window=s.fair_use_bytes_per_window if s.fair_use else {},
            window=s.fair_use_window_seconds,
            token_rate_limit=s.fair_use and s.fair_use_token_rate_limit,
        )
        if self.redis is None or not s.fair_use:
            return FairUseGate(policy, LocalLedger(), self.metrics, self.log)
        self._fair_redis = PipelinedRedis(self.redis, s.redis_timeout_seconds)
        return FairUseGate(
            policy,
            RedisLedger(self._fair_redis, s.fair_use_lease_seconds),
            self.metrics,
            self.log,
            lease=s.fair_use_lease_seconds,
            fallback=LocalLedger(),
        )

    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "gateway not started"
        return self._session

    async def start(self) -> None:
        s = self.settings
        use_vectored_writes()
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            raise_for_status=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        service = None
        if s.service_token_url and s.service_client_id and s.service_client_secret:
            service = ServiceAccount(
                s.service_token_url, s.service_client_id, s.service_client_secret, self.session
            )
        self.credentials = UpstreamCredentials(service, forward=s.upstream_credentials == "forward")
        admin = None
        if s.admin_url is not None:
            assert service is not None  # the settings require it
            self._admin_transport = KeepAliveTransport(
                s.admin_url, timeout=s.upstream_connect_timeout_seconds
            )
            admin = AdminClient(self._admin_transport, service, self.tracing)
        self.records = FileRecorder(
            self.outbox,
            admin,
            self.announcer,
            time.time,
            registered=self.progress.registered,
            tracing=self.tracing,
        )
        self._admin = admin
        self._service = service
        self.storage = StorageClient(
            self._session, s.upstream_connect_timeout_seconds, s.upstream_response_timeout_seconds
        )
        self.nodes = NodeDirectory(
            self._build_registry(),
            HealthProber(self.storage.capacity, s.health_check_interval_seconds),
            BreakerPolicy(
                failure_threshold=s.breaker_failures,
                failure_rate=s.breaker_failure_rate,
                min_calls=s.breaker_min_calls,
                window_seconds=s.breaker_window_seconds,
                cooldown_seconds=s.breaker_cooldown_seconds,
            ),
        )
        await self.nodes.start()
        self.uploads = UploadServices(
            nodes=self.nodes,
            storage=self.storage,
            credentials=self.credentials,
            compensations=self.outbox,
            records=self.records,
            budget=self.budget,
            codecs=self.codecs,
            executor=self.executor,
            rules=self.plan_rules,
            retry=self.retry_policy,
            stall_timeout=s.upstream_response_timeout_seconds,
            metrics=self.metrics,
            log=self.log,
            rng=self.rng,
            tracing=self.tracing,
        )
        self.finalizer = self._build_finalizer()
        self.resumable = self._build_resumable()
        self.update_node_metrics()
        self.journal.open()
        await self.resumable.start()
        await self.outbox.start()
        await self.fair_use.start()
        if service is None and self._rw_nodes_possible():
            self.log.warning(
                "no_service_account",
                problem="uploads to rw nodes cannot be compensated: an rw SE deletes only"
                " through its gc route, for a service-account token",
                hint="set INGESTER_SERVICE_CLIENT_ID and INGESTER_SERVICE_CLIENT_SECRET"
                " (and INGESTER_ADMIN_URL or INGESTER_SERVICE_TOKEN_URL)",
            )
        if s.workers > 1:
            self._mirror = asyncio.create_task(self._mirror_progress(), name="progress-mirror")

    def _build_registry(self) -> NodeRegistry:
        s = self.settings
        if s.registry == "static":
            return StaticRegistry(s.storage_elements)
        assert self.redis is not None
        if s.registry == "redis":
            load, channel = redis_registry.load_nodes, redis_registry.CHANNEL
        else:
            load, channel = artstore.load_nodes, artstore.CHANNEL
        return RedisWatchedRegistry(
            self.redis, load, channel, refresh_interval=s.registry_refresh_seconds, name=s.registry
        )

    async def _mirror_progress(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(0.5)
            self.progress.mirror_running()
            rounds += 1
            if rounds % 120 == 0:
                self.progress.sweep_shared()

    def _build_finalizer(self) -> Finalizer | None:
        """Finalize works in the background, for no client: it needs the service
        account (without one, the API says so)."""
        if self._service is None:
            return None
        service = self._service

        async def service_headers() -> dict[str, str]:
            return {"Authorization": f"Bearer {await service.token()}"}

        s = self.settings
        return Finalizer(
            FinalizeSetup(
                services=dataclasses.replace(self.uploads, credentials=ServiceCredentials(service)),
                nodes=self.nodes,
                storage=self.storage,
                session=self.session,
                service_headers=service_headers,
                admin=self._admin,
                outbox=self.outbox,
                store=TransactionStore(self.redis, s.state_dir),
                progress=self.progress,
                safety_margin=s.finalize_safety_margin,
                download_timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=s.upstream_connect_timeout_seconds,
                    sock_read=s.upstream_response_timeout_seconds,
                ),
            )
        )

    def _build_resumable(self) -> ResumableUploads:
        """tus and the IETF draft: staging files in INGESTER_TUS_DIR, state and locks in
        Redis when there is one (shared by every gateway), else beside the files."""
        s = self.settings
        assert s.tus_dir is not None  # the settings default it
        staging = FileStagingArea(s.tus_dir, self.executor)
        staging.open()
        store: StateStore
        locker: Locker
        if self.redis is not None:
            store, locker = RedisStateStore(self.redis), RedisLocker(self.redis)
        else:
            local = FileStateStore(s.tus_dir)
            local.open()
            store, locker = local, LocalLocker()
            if s.workers > 1:
                self.log.warning(
                    "resumable_uploads_unsafe",
                    problem="without Redis, resumable uploads' locks are per process: two"
                    " workers could write one upload at once",
                    hint="set INGESTER_REDIS_URL, or INGESTER_WORKERS=1",
                )
        tokens: dict[str, str] = {}
        signals = Signals()
        services = self.uploads
        if self._service is not None:  # the store acts for no client, as finalize does
            services = dataclasses.replace(services, credentials=ServiceCredentials(self._service))
        storer = UploadStorer(
            StoreSetup(
                store=store,
                staging=staging,
                locker=locker,
                services=services,
                has_service_account=self._service is not None,
                tokens=tokens,
                signals=signals,
                expiry=s.tus_expiry_seconds,
            )
        )
        self.outbox.handle(StoreUpload, storer.work, background=True)
        return ResumableUploads(
            ResumableSetup(
                store=store,
                staging=staging,
                locker=locker,
                outbox=self.outbox,
                storer=storer,
                signals=signals,
                tokens=tokens,
                expiry=s.tus_expiry_seconds,
                max_size=s.max_upload_bytes,
                refuse_empty=self.plan_rules.refuse_empty,
                eager=s.tus_store_while_receiving,
            )
        )

    def _rw_nodes_possible(self) -> bool:
        """Can an upload land on an rw node: a configured one, or any from Redis?"""
        if self.settings.registry != "static":
            return True
        return any(se.mode == "rw" for se in self.settings.storage_elements)

    async def _background_delete(self, node: NodeRecord, file_id: str) -> DeleteOutcome:
        try:
            headers = await self.credentials.for_backlog()
        except CredentialError:
            return "failed"
        return await self.storage.delete(node, file_id, headers)

    async def stop(self) -> None:
        await self.fair_use.stop()
        if self._fair_redis is not None:
            await self._fair_redis.close()
        await self.outbox.stop()
        await self.resumable.stop()
        if self._admin_transport is not None:
            await self._admin_transport.close()
        self.journal.close()
        if self._mirror is not None:
            self._mirror.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mirror
        await self.nodes.stop()
        if self.redis is not None:
            await self.redis.aclose()
        if self._session is not None:
            await self._session.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.tracing.shutdown()  # the spans still batched go out

    def _draining(self, on: bool) -> None:
        self.metrics.draining.set(1 if on else 0)
        self.log.warning("draining", grace_seconds=self.drain.grace, in_flight=self.drain.in_flight)

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready when a writable SE answered its health check (or heartbeat) recently,
        and not shutting down."""
        if self.drain.draining:
            return False, {"draining": True}
        interval = max(self.settings.health_check_interval_seconds, 1.0)
        return self.nodes.readiness(time.time() - 3 * interval)

    def update_node_metrics(self) -> None:
        m = self.metrics
        states = self.nodes.breaker_states()
        for node in self.nodes.view():
            m.node_healthy.labels(node.id).set(1 if node.status == "ok" else 0)
            state = states.get(node.id, BreakerState.CLOSED)
            m.circuit_state.labels(node.id).set(CIRCUIT_LEVEL[state])
            for reason in COMPENSATION_FAILURES:
                # Every node's series from 0, so increase() sees its first failure.
                m.child(m.compensation_failures, node.id, reason)
        m.registry_stale.set(1 if self.nodes.registry.is_stale() else 0)
        _, details = self.readiness()
        writable = details.get("writable_nodes_ok", 0)
        m.writable_nodes.set(writable if isinstance(writable, int) else 0)
