"""The upload driver against in-memory Storage Elements that answer as scripted
(tusd's patch_test lesson): every compensation and every answer, with no socket.

The SEs parse the real multipart body the driver sends (with the gateway's own form
reader), store the file part, and may then fail as a script says."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import os
import random
import threading
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import zstandard
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from ingester_gateway.auth.verify import Principal
from ingester_gateway.config import StorageElementConfig
from ingester_gateway.errors import ApiError
from ingester_gateway.models import UploadOptions, UploadResult
from ingester_gateway.observability import Metrics, get_logger
from ingester_gateway.pipeline.body import ClientDisconnected
from ingester_gateway.pipeline.codecs import build_codecs
from ingester_gateway.pipeline.multipart import MultipartReader, boundary_from
from ingester_gateway.registry import NodeRecord
from ingester_gateway.registry.directory import NodeDirectory
from ingester_gateway.registry.health import HealthProber
from ingester_gateway.registry.static import StaticRegistry
from ingester_gateway.resilience import Backoff, BreakerPolicy, BreakerState, RetryPolicy
from ingester_gateway.tracing.otel import OtelTracing
from ingester_gateway.upload.budget import UploadBudget
from ingester_gateway.upload.driver import UploadDriver, UploadServices, new_progress
from ingester_gateway.upload.plan import PlanRules, UploadRequest
from ingester_gateway.upload.ports import RecordRefused, RecordState, RecordUnavailable
from ingester_gateway.upload.sources import ClientStream
from ingester_gateway.upstream.client import DeleteOutcome, UpstreamError
from ingester_gateway.upstream.wire import CapacityReply, StoredFile
from tests.kit import pieces_of, run

MiB = 2**20
PRINCIPAL = Principal(
    sub="alice", role="user", token_type="access", name=None, client_id=None, expires_at=2**40
)

# What one SE does with the next upload it gets: "store", "store_then_500", "500",
# "refuse", "connect", "too_large", "full", "wrong_checksum", "fail_after:<bytes>".
Step = str


@dataclass
class Upload:
    node: str
    fields: dict[str, str]
    data: bytes
    whole: bool  # the body came as one bytes object (Content-Length)


@dataclass
class ScriptedSE:
    """In-memory Storage Elements keyed by node id; each pops its next step per upload."""

    scripts: dict[str, list[Step]]
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)
    delete_works: bool = True
    headers: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (call, headers)

    async def upload(
        self,
        node: NodeRecord,
        body: bytes | AsyncIterable[bytes],
        content_type: str,
        headers: dict[str, str],
    ) -> StoredFile:
        step = self.scripts[node.id].pop(0) if self.scripts[node.id] else "store"
        self.headers.append(("upload", headers))
        if step == "connect":
            raise UpstreamError("connect", f"cannot connect to {node.id}")
        if step == "refuse":
            raise UpstreamError("refused", "storage element answered 400: mode ro", 400)
        if step == "reject":
            raise UpstreamError("rejected", "storage element answered 422: invalid field", 422)
        if step == "too_large":
            raise UpstreamError("too_large", "storage element answered 413: too big", 413)
        if step == "full":
            raise UpstreamError("full", "storage element answered 507: full", 507)
        limit = int(step.split(":")[1]) if step.startswith("fail_after:") else None
        fields, data = await self._read(body, boundary_from(content_type), limit)
        if limit is not None:
            raise UpstreamError("dropped", f"{node.id} connection failed mid-body")
        self.uploads.append(Upload(node.id, fields, data, isinstance(body, bytes)))
        file_id = fields["file_id"]
        self.files[(node.id, file_id)] = data
        if step == "store_then_500":
            raise UpstreamError("server", "storage element answered 500: boom", 500)
        if step == "500":  # as the real SE answers a 0-byte file: nothing stored
            self.files.pop((node.id, file_id))
            raise UpstreamError("server", "storage element answered 500: empty file", 500)
        checksum = hashlib.sha256(data).hexdigest()
        if step == "wrong_checksum":
            checksum = "0" * 64
        return StoredFile(file_id=file_id, checksum=checksum, file_size=len(data))

    async def delete(
        self, node: NodeRecord, file_id: str, headers: dict[str, str]
    ) -> DeleteOutcome:
        self.deletes.append((node.id, file_id))
        self.headers.append(("delete", headers))
        if not self.delete_works:
            return "forbidden"
        self.files.pop((node.id, file_id), None)
        return "deleted"

    @staticmethod
    async def _read(
        body: bytes | AsyncIterable[bytes], boundary: bytes, limit: int | None
    ) -> tuple[dict[str, str], bytes]:
        pieces = pieces_of([body]) if isinstance(body, bytes) else body
        taken = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal taken
            async for piece in pieces:
                taken += len(piece)
                yield piece
                if limit is not None and taken >= limit:
                    return

        reader = MultipartReader(counted(), boundary)
        fields: dict[str, str] = {}
        data = bytearray()
        try:
            while (part := await reader.next_part()) is not None:
                if part.name == "file":
                    async for chunk in reader.iter_data():
                        data += chunk
                else:
                    fields[part.name] = await reader.read_value()
        except ApiError:
            if limit is None:
                raise
        return fields, bytes(data)


@dataclass
class Recorder:
    """Compensation and record sinks that remember what they were given."""

    owed: list[tuple[str, str, str]] = field(default_factory=list)
    recorded: list[UploadResult] = field(default_factory=list)
    record_works: bool = True
    refusal: str | None = None  # the registry's reason for refusing every file

    async def owe_delete(
        self, node: NodeRecord, file_id: str, reason: str, not_before: float = 0.0
    ) -> None:
        self.owed.append((node.id, file_id, reason))

    async def stored(self, result: UploadResult, request: UploadRequest) -> RecordState:
        if not self.record_works:
            raise RecordUnavailable("Redis and the journal are gone")
        if self.refusal is not None:
            raise RecordRefused(self.refusal)
        self.recorded.append(result)
        return "registered"


class Credentials:
    async def for_upload(self, principal: Principal) -> dict[str, str]:
        return {"Authorization": "Bearer upload"}

    async def for_delete(self, principal: Principal) -> dict[str, str]:
        return {"Authorization": "Bearer service"}


def upload_request(
    options: UploadOptions | None = None,
    filename: str = "report.bin",
    claimed_sha256: bytes | None = None,
) -> UploadRequest:
    return UploadRequest(
        upload_id="upload-1",
        request_id="req-1",
        principal=PRINCIPAL,
        filename=filename,
        declared_content_type=None,
        options=options or UploadOptions(compress=False),
        claimed_sha256=claimed_sha256,
    )


@dataclass
class Harness:
    se: ScriptedSE
    sinks: Recorder
    nodes: NodeDirectory
    services: UploadServices
    metrics: Metrics
    down: set[str]  # nodes whose health probe gets no answer

    def upload(
        self,
        data: bytes | list[bytes],
        options: UploadOptions | None = None,
        claimed_sha256: bytes | None = None,
    ) -> UploadResult:
        pieces = data if isinstance(data, list) else [data]
        request = upload_request(options, claimed_sha256=claimed_sha256)
        driver = UploadDriver(self.services, request, new_progress(request))

        async def go() -> UploadResult:
            return await driver.run(ClientStream(pieces_of(pieces)))

        return run(go())

    def reserved(self) -> dict[str, int]:
        return {k: v for k, v in self.nodes._reserved.items() if v}


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    executor = ThreadPoolExecutor(2)

    def make(
        scripts: dict[str, list[Step]],
        replay_bytes: int = 8 * MiB,
        block_size: int = MiB,
    ) -> Harness:
        se = ScriptedSE({node: list(steps) for node, steps in scripts.items()})
        sinks = Recorder()
        configured = [StorageElementConfig(id=n, url=f"http://{n}", mode="rw") for n in scripts]

        down: set[str] = set()

        async def probe(node: NodeRecord) -> CapacityReply | None:
            return None if node.id in down else CapacityReply(health="healthy")

        nodes = NodeDirectory(
            StaticRegistry(configured),
            HealthProber(probe),
            BreakerPolicy(failure_threshold=2),
            rng=random.Random(1),
        )
        metrics = Metrics()
        services = UploadServices(
            nodes=nodes,
            storage=se,
            credentials=Credentials(),
            compensations=sinks,
            records=sinks,
            budget=UploadBudget(256 * MiB, block_size, replay_bytes),
            codecs=build_codecs(),
            executor=executor,
            rules=PlanRules(default_codec="zstd"),
            retry=RetryPolicy(max_attempts=4, backoff=Backoff(base=0.001, cap=0.002)),
            stall_timeout=5.0,
            metrics=metrics,
            log=get_logger("test"),
            rng=random.Random(2),
        )
        return Harness(se, sinks, nodes, services, metrics, down)

    yield make
    executor.shutdown()


def blocks(total: int, size: int = MiB) -> list[bytes]:
    data = os.urandom(total)
    return [data[i : i + size] for i in range(0, total, size)]


def failed_calls(h: Harness, node: str) -> int:
    return sum(1 for _, ok in h.nodes.breaker(node)._calls if not ok)


def error_of(call: Callable[[], object]) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def test_a_small_upload_is_stored_in_one_request_with_its_digests(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": ["store"]})
    result = h.upload(b"hello world")
    (upload,) = h.se.uploads
    assert upload.whole and upload.data == b"hello world"
    assert result.checksum == result.stored_checksum == hashlib.sha256(b"hello world").hexdigest()
    assert (result.storage_element_id, result.file_id) == ("a", upload.fields["file_id"])
    assert upload.fields["original_checksum"] == result.checksum
    assert h.sinks.recorded == [result]
    assert h.reserved() == {}


def test_a_streamed_upload_is_compressed_on_the_way_and_verified(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": ["store"]})
    text = [b"a line of a log that repeats itself\n" * 30_000 for _ in range(3)]
    result = h.upload(text, UploadOptions(compression_algorithm="zstd"))
    (upload,) = h.se.uploads
    assert not upload.whole
    assert zstandard.ZstdDecompressor().decompressobj().decompress(upload.data) == b"".join(text)
    assert result.compressed and result.stored_size < result.file_size
    assert result.stored_checksum == hashlib.sha256(upload.data).hexdigest()


def test_stored_then_500_owes_a_delete_and_the_next_node_stores_it(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": ["store_then_500"], "b": ["store"]})
    h.down.add("a")  # the node's fault: its probe fails too
    data = blocks(3 * MiB)
    result = h.upload(data)
    first = h.se.uploads[0]
    assert ("a", first.fields["file_id"]) in h.se.deletes
    assert ("a", first.fields["file_id"]) not in h.se.files
    assert result.storage_element_id == "b" and result.file_id != first.fields["file_id"]
    assert h.se.files == {("b", result.file_id): b"".join(data)}
    assert failed_calls(h, "a") == 1
    assert h.reserved() == {}


def test_a_delete_that_fails_goes_to_the_durable_backlog(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": ["store_then_500"], "b": ["store"]})
    h.down.add("a")
    h.se.delete_works = False
    h.upload(blocks(2 * MiB))
    first = h.se.uploads[0]
    assert h.sinks.owed == [("a", first.fields["file_id"], "upstream_server")]
    assert h.metrics.compensation_failures.labels("a", "forbidden")._value.get() == 1


def test_a_refusal_goes_to_the_next_node_without_counting_against_the_first(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": ["refuse"], "b": ["store"]})
    result = h.upload(blocks(2 * MiB))
    assert result.storage_element_id == "b"
    assert failed_calls(h, "a") == 0
    assert h.se.deletes == []  # the refusal came before any commit


def test_a_failure_past_the_replay_limit_is_503_and_nothing_is_kept(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": [f"fail_after:{3 * MiB}"], "b": ["store"]}, replay_bytes=MiB)
    error = error_of(lambda: h.upload(blocks(8 * MiB)))
    assert (error.status, error.code) == (503, "storage_failed_mid_upload")
    assert h.se.files == {} and h.se.uploads == []
    assert failed_calls(h, "a") == 1
    assert h.reserved() == {}


def test_within_the_replay_limit_a_failure_mid_body_is_replayed_on_the_next_node(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": [f"fail_after:{MiB}"], "b": ["store"]}, replay_bytes=16 * MiB)
    data = blocks(6 * MiB)
    result = h.upload(data)
    assert result.storage_element_id == "b"
    assert h.se.files == {("b", result.file_id): b"".join(data)}


def test_a_checksum_mismatch_is_502_and_the_copy_is_removed(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": ["wrong_checksum"]})
    error = error_of(lambda: h.upload(blocks(2 * MiB)))
    assert (error.status, error.code) == (502, "checksum_mismatch")
    assert "was removed" in error.message
    assert h.se.files == {}
    assert h.sinks.recorded == []


def test_an_upload_that_cannot_be_recorded_is_removed_and_answered_503(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": ["store"]})
    h.sinks.record_works = False
    error = error_of(lambda: h.upload(b"x" * 1000))
    assert (error.status, error.code) == (503, "no_storage_available")
    assert "could not be recorded" in error.message
    assert h.se.files == {}


def test_a_body_that_does_not_match_the_clients_digest_is_never_committed(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": ["store"]})
    error = error_of(lambda: h.upload(blocks(3 * MiB), claimed_sha256=b"\x00" * 32))
    assert (error.status, error.code) == (422, "digest_mismatch")
    assert h.se.files == {} and h.se.uploads == []


def test_an_upload_too_large_for_the_se_is_413_without_trying_elsewhere(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": ["too_large"], "b": ["too_large"]})
    error = error_of(lambda: h.upload(blocks(2 * MiB)))
    assert error.status == 413
    assert h.se.scripts["b"] == ["too_large"]  # b was never asked


def test_when_every_node_is_unreachable_the_answer_is_503_and_the_breakers_count_it(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": ["connect"] * 4, "b": ["connect"] * 4})
    error = error_of(lambda: h.upload(b"data"))
    assert (error.status, error.code) == (503, "no_storage_available")
    assert (b"retry-after", b"5") in error.headers
    assert failed_calls(h, "a") + failed_calls(h, "b") == 4
    assert h.se.deletes == []  # never connected: nothing can be stored
    assert h.reserved() == {}


def test_an_open_circuit_is_skipped(harness: Callable[..., Harness]) -> None:
    h = harness({"a": ["store"], "b": ["store"]})
    for _ in range(2):
        h.nodes.failed("a")
    assert h.nodes.breaker("a").state is BreakerState.OPEN
    result = h.upload(b"data")
    assert result.storage_element_id == "b"


def test_a_full_node_passes_the_upload_to_the_next_one(harness: Callable[..., Harness]) -> None:
    h = harness({"a": ["full"], "b": ["store"]})
    result = h.upload(blocks(2 * MiB))
    assert result.storage_element_id == "b"
    assert failed_calls(h, "a") == 0


def test_a_lone_node_failing_after_storing_is_503_and_every_copy_is_removed(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": ["store_then_500"] * 4})
    h.down.add("a")
    error = error_of(lambda: h.upload(blocks(2 * MiB)))
    assert (error.status, error.code) == (503, "no_storage_available")
    assert len(h.se.uploads) == 1  # its failed probe took it out of the choice at once
    assert h.se.files == {}
    assert sorted(h.se.deletes) == sorted(("a", u.fields["file_id"]) for u in h.se.uploads)


def test_a_5xx_a_healthy_node_repeats_is_the_requests_502_and_no_circuit_opens(
    harness: Callable[..., Harness],
) -> None:
    """The real SE answers 500 to every 0-byte file: that is this request's failure,
    not the node's; it must not be answered "no storage" nor open the node's circuit."""
    h = harness({"a": ["500", "500", "500", "500"]})
    error = error_of(lambda: h.upload(b""))
    assert (error.status, error.code) == (502, "storage_failed")
    assert "empty file" in error.message
    assert len(h.se.uploads) == 2  # tried once more, not four times
    assert h.nodes.breaker("a").state is BreakerState.CLOSED
    assert failed_calls(h, "a") == 0
    h.se.scripts["a"] = ["store"]
    assert h.upload(b"next").storage_element_id == "a"


def test_a_request_any_se_rejects_is_tried_once_more_and_answered_502(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": ["reject", "store"], "b": ["reject", "store"]})
    error = error_of(lambda: h.upload(blocks(2 * MiB)))
    assert (error.status, error.code) == (502, "storage_failed")
    assert "invalid field" in error.message
    assert h.se.scripts == {"a": ["store"], "b": ["store"]}  # not tried a third time
    assert failed_calls(h, "a") + failed_calls(h, "b") == 0


def test_a_file_artstore_refuses_to_register_is_502_with_its_reason_and_removed(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": ["store"]})
    h.sinks.refusal = "the Admin Module answered 422: ttl_days must be at most 365"
    error = error_of(lambda: h.upload(b"x" * 5000))
    assert (error.status, error.code) == (502, "registration_refused")
    assert "ttl_days must be at most 365" in error.message
    assert h.se.files == {}


def test_the_201_says_the_file_is_registered(harness: Callable[..., Harness]) -> None:
    h = harness({"a": ["store"]})
    assert h.upload(b"x" * 5000).registration == "registered"


# -- an upload cut short while its blocks are encoded; progress --------------------------


class HeldCompressor:
    """A compressor whose work on a block waits until the test lets it go, and which
    records whether it was closed while a worker thread still used it."""

    def __init__(self, codec: HeldCodec) -> None:
        self._codec = codec

    def compress(self, data: object) -> bytes:
        self._codec.busy = True
        self._codec.compressing.set()
        self._codec.release.wait(10)
        self._codec.busy = False
        return b"c"

    def flush(self) -> bytes:
        return b""

    def close(self) -> None:
        self._codec.closed_while_busy.append(self._codec.busy)


class HeldCodec:
    name = "zstd"

    def __init__(self) -> None:
        self.compressing = threading.Event()
        self.release = threading.Event()
        self.busy = False
        self.closed_while_busy: list[bool] = []

    def compressor(self, size_hint: int | None = None, parallel: bool = False) -> HeldCompressor:
        return HeldCompressor(self)


def test_an_upload_aborted_while_a_block_compresses_waits_for_the_job_before_closing(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": ["store"]})
    codec = HeldCodec()
    services = dataclasses.replace(h.services, codecs={**h.services.codecs, "zstd": codec})
    request = upload_request(UploadOptions(compress=True, compression_algorithm="zstd"))
    driver = UploadDriver(services, request, new_progress(request))

    async def client_leaves_mid_block() -> AsyncIterator[bytes]:
        yield b"a" * 64 * 1024  # the first block: encoded in place
        yield b"b" * MiB  # the second: in a worker thread, held there
        while not codec.compressing.is_set():
            await asyncio.sleep(0.01)
        threading.Timer(0.2, codec.release.set).start()
        raise ClientDisconnected()

    async def go() -> None:
        with pytest.raises(ClientDisconnected):
            await driver.run(ClientStream(client_leaves_mid_block()))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(go())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    # The job was awaited: the compressor was closed (given back) only once it was idle.
    assert codec.closed_while_busy == [False]


def test_progress_follows_the_bytes_received_not_the_last_whole_block(
    harness: Callable[..., Harness],
) -> None:
    h = harness({"a": ["store"]})
    request = upload_request(filename="slow.bin")
    progress = new_progress(request)
    driver = UploadDriver(h.services, request, progress)
    piece = 10_000
    seen: list[tuple[int, int]] = []

    async def slow_client() -> AsyncIterator[bytes]:
        for sent in range(1, 31):  # 300 KB: a 64 KiB first block, then one unfinished MiB
            yield b"p" * piece
            seen.append((sent * piece, progress.bytes_received))

    async def go() -> UploadResult:
        return await driver.run(ClientStream(slow_client()))

    result = run(go())
    assert result.file_size == 30 * piece
    assert seen == [(sent, sent) for sent, _ in seen]
    assert progress.bytes_received == 30 * piece


def test_each_step_is_a_span_of_the_uploads_trace_and_each_request_carries_its_own(
    harness: Callable[..., Harness],
) -> None:
    """Stored then 500 on a (its probe fails: the node's fault), stored on b: both
    attempts and the compensation of a's copy are spans under the upload's (the plan is
    told on the upload's span); every request to an SE carries its own span's
    traceparent."""
    h = harness({"a": ["store_then_500"], "b": ["store"]})
    h.down.add("a")
    exporter = InMemorySpanExporter()
    tracing = OtelTracing([SimpleSpanProcessor(exporter)])
    services = dataclasses.replace(h.services, tracing=tracing)
    request = upload_request()

    async def go() -> UploadResult:
        with tracing.incoming("upload", None, None):
            driver = UploadDriver(services, request, new_progress(request))
            return await driver.run(ClientStream(pieces_of(blocks(3 * MiB))))

    result = run(go())
    spans = {
        (s.name, (s.attributes or {}).get("ingester.node")): s
        for s in exporter.get_finished_spans()
    }
    assert sorted(spans) == sorted(
        [
            ("upload", None),
            ("upload.attempt", "a"),
            ("upload.compensate", "a"),
            ("upload.attempt", "b"),
        ]
    )
    upload = spans[("upload", None)]
    # The plan and the node selections are told, not spans of their own.
    assert (upload.attributes or {}).get("ingester.whole") is False
    assert (upload.attributes or {}).get("ingester.codec") == "none"
    trace_ids = {s.context.trace_id for s in spans.values()}
    assert trace_ids == {upload.context.trace_id}
    failed, compensation = spans[("upload.attempt", "a")], spans[("upload.compensate", "a")]
    assert compensation.parent is not None and compensation.parent.span_id == failed.context.span_id
    for key in [k for k in spans if k[0] != "upload" and k != ("upload.compensate", "a")]:
        parent = spans[key].parent
        assert parent is not None and parent.span_id == upload.context.span_id, key
    assert failed.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {}).get("ingester.failure") == "server"
    assert (compensation.attributes or {}).get("ingester.outcome") == "deleted"
    assert (spans[("upload.attempt", "b")].attributes or {}).get("ingester.file_id") == (
        result.file_id
    )

    def traceparent_of(name: str, node: str) -> str:
        context = spans[(name, node)].context
        flags = format(int(context.trace_flags), "02x")
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags}"

    assert [(call, sent.get("traceparent")) for call, sent in h.se.headers] == [
        ("upload", traceparent_of("upload.attempt", "a")),
        ("delete", traceparent_of("upload.compensate", "a")),
        ("upload", traceparent_of("upload.attempt", "b")),
    ]
