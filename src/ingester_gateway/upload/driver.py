"""The I/O of one upload, step by step, each step with its compensation:

    select a node and reserve room  -> release the reservation
    stream blocks to the node       -> abort the request (the SE drops the partial)
    commit (closing boundary)       -> delete the stored file (now, or from the backlog)
    verify the SE's checksum        -> (a mismatch compensates the commit)
    record the stored file          -> (a failure compensates the commit)

The decisions are pure and live elsewhere: the plan (`plan.py`), the failover walk and
its table of failures (`failover.py`), the SE form (`upstream/form.py`). The driver
only moves bytes between a `BodySource` and Storage Elements, through the small
Protocols of `ports.py`.

The closing boundary of the upstream body is held back until the whole source has
been read and checked (length, digest, form shape). Until then the SE cannot have
stored anything, so most failures need only an abort.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

from structlog.typing import FilteringBoundLogger

from ingester_gateway import errors
from ingester_gateway.auth.credentials import CredentialError
from ingester_gateway.models import CodecName, UploadProgress, UploadResult, iso_utc
from ingester_gateway.observability import Metrics
from ingester_gateway.pipeline.blocks import BlockReader
from ingester_gateway.pipeline.codecs import CompressionCodec
from ingester_gateway.pipeline.encode import BlockEncoder, settle
from ingester_gateway.pipeline.relay import Relay
from ingester_gateway.registry import NodeRecord
from ingester_gateway.resilience import RetryPolicy
from ingester_gateway.tracing import NO_TRACING, Attributes, Tracing
from ingester_gateway.upload.failover import (
    FAILURES,
    Attempt,
    Decision,
    Failover,
    GiveUp,
    must_compensate,
    no_node_error,
)
from ingester_gateway.upload.plan import (
    FIRST_BLOCK_BYTES,
    PlanRules,
    Stored,
    UploadPlan,
    UploadRequest,
    plan_upload,
    se_closing_fields,
    se_fields,
    stored_as_sent,
    upload_result,
)
from ingester_gateway.upload.ports import (
    BodySource,
    BufferBudget,
    CompensationSink,
    Credentials,
    NodePool,
    RecordRefused,
    RecordSink,
    RecordUnavailable,
    StorageNodes,
)
from ingester_gateway.upstream.client import UpstreamError
from ingester_gateway.upstream.form import SeForm
from ingester_gateway.upstream.wire import StoredFile


@dataclass(frozen=True, slots=True)
class UploadServices:
    """Everything the driver uses, built once per process."""

    nodes: NodePool
    storage: StorageNodes
    credentials: Credentials
    compensations: CompensationSink
    records: RecordSink
    budget: BufferBudget
    codecs: Mapping[CodecName, CompressionCodec]
    executor: Executor
    rules: PlanRules
    retry: RetryPolicy
    stall_timeout: float  # an SE that takes no data this long is stuck
    metrics: Metrics
    log: FilteringBoundLogger
    rng: random.Random
    clock: Callable[[], float] = time.monotonic
    # A span per step (never per body piece); NO_TRACING: each call a no-op.
    tracing: Tracing = NO_TRACING


@dataclass(slots=True)
class _Transfer:
    """What all attempts of one upload share."""

    plan: UploadPlan
    form: SeForm
    first_node: NodeRecord
    started: float  # unix time: the TTL counts from here
    producing: bool = True
    sender_failed: bool = False

    def preamble(self, request: UploadRequest, file_id: str) -> bytes:
        plan = self.plan
        fields = se_fields(request, plan, file_id, self.started)
        return self.form.preamble(fields, plan.storage_name, plan.stored_type)


def new_progress(request: UploadRequest) -> UploadProgress:
    return UploadProgress(
        upload_id=request.upload_id,
        state="receiving",
        filename=request.filename,
        expected_bytes=request.expected_size,
        started_at=iso_utc(time.time()),
    )


class UploadDriver:
    """Stores one upload; `progress` is updated as it goes."""

    def __init__(
        self, services: UploadServices, request: UploadRequest, progress: UploadProgress
    ) -> None:
        self.svc = services
        self.req = request
        self.progress = progress
        self._stored: tuple[NodeRecord, str] | None = None

    async def run(self, source: BodySource) -> UploadResult:
        """Store what `source` yields; the result once it is stored and recorded."""
        svc, req = self.svc, self.req
        blocks = self._blocks(source)
        first = await blocks.read() or b""
        plan = plan_upload(req, first, blocks.ended, svc.rules)
        if svc.tracing.enabled:  # the plan is microseconds of pure code: told, not a span
            svc.tracing.annotate(
                {
                    "ingester.codec": plan.codec if plan.recode else "none",
                    "ingester.whole": plan.whole,
                    "ingester.reservation": plan.reservation,
                    "ingester.policy": req.options.retention_policy,
                }
            )
        node, stored, plan = await self._store(source, blocks, first, plan)
        result = upload_result(req, plan, stored, time.time())
        registrations = svc.metrics.registrations
        try:
            result.registration = await svc.records.stored(result, req)
        except RecordRefused as exc:
            svc.metrics.child(registrations, "refused").inc()
            await self._compensate(node, stored.file_id, "registration_refused")
            raise errors.REGISTRATION_REFUSED(f"artStore refused the file: {exc}") from None
        except RecordUnavailable as exc:
            svc.metrics.child(registrations, "unavailable").inc()
            await self._compensate(node, stored.file_id, "not_recorded")
            raise errors.NO_STORAGE_AVAILABLE(f"the upload could not be recorded: {exc}") from None
        svc.metrics.child(registrations, result.registration).inc()
        self.progress.registration = result.registration
        return result

    async def copy(self, source: BodySource, plan: UploadPlan) -> tuple[NodeRecord, Stored]:
        """Store what `source` yields as it is, under the request's file id (a stored
        file's bytes moving to another node: finalize). No record step: the caller
        updates the record once it has checked the copy."""
        assert self.req.file_id is not None and not plan.recode
        blocks = self._blocks(source)
        first = await blocks.read() or b""
        node, stored, _ = await self._store(
            source, blocks, first, dataclasses.replace(plan, whole=blocks.ended)
        )
        return node, stored

    def _blocks(self, source: BodySource) -> BlockReader:
        progress = self.progress

        def received(size: int) -> None:
            progress.bytes_received += size

        return BlockReader(source.pieces(), self.svc.budget.block_size, FIRST_BLOCK_BYTES, received)

    async def _store(
        self, source: BodySource, blocks: BlockReader, first: bytes, plan: UploadPlan
    ) -> tuple[NodeRecord, Stored, UploadPlan]:
        """Select, send (failing over), verify: where it is stored, and the plan as it
        ended up (a whole body that would not shrink is stored as it is)."""
        svc, req = self.svc, self.req
        policy = req.options.retention_policy
        # Each try's span names its node; the selection itself is not a span.
        node = svc.nodes.select(
            policy, plan.reservation, exclude=req.exclude_nodes, strict=req.strict_mode
        )
        if node is None:
            raise no_node_error(
                svc.nodes.any_usable(policy),
                svc.nodes.could_fit_anywhere(policy, plan.reservation),
                plan.reservation,
            )
        transfer = _Transfer(plan, SeForm(), node, time.time())
        encoder = self._encoder(plan)
        try:
            if plan.whole:
                encoder, encoded = await self._encode_whole(transfer, encoder, first)
                node, reply = await self._send_whole(transfer, encoder, encoded, source)
            else:
                node, reply = await self._send_streaming(transfer, encoder, first, blocks, source)
        finally:
            encoder.close()
        plan = transfer.plan
        if not stored_as_sent(reply, encoder.stored_hex, encoder.stored_size):
            removed = await self._compensate(node, reply.file_id, "checksum_mismatch")
            raise errors.CHECKSUM_MISMATCH(
                "the storage element stored different bytes than were sent; the copy "
                + ("was removed" if removed else "will be removed (queued for deletion)")
            )
        self._stored = (node, reply.file_id)
        original_size, original_sha256 = req.original or (
            encoder.original_size,
            encoder.original_hex,
        )
        stored = Stored(
            file_id=reply.file_id,
            node_id=node.id,
            node_url=node.url,
            storage_filename=reply.original_filename or plan.storage_name,
            original_size=original_size,
            original_sha256=original_sha256,
            stored_size=encoder.stored_size,
            stored_sha256=encoder.stored_hex,
        )
        return node, stored, plan

    async def undo(self) -> None:
        """Remove the stored upload: its success can no longer be reported."""
        assert self._stored is not None
        node, file_id = self._stored
        await self._compensate(node, file_id, "client_gone")

    def _encoder(self, plan: UploadPlan) -> BlockEncoder:
        return BlockEncoder(
            self.svc.codecs[plan.codec if plan.recode else "none"],
            self.svc.executor,
            size_hint=plan.exact_size,
            parallel=plan.parallel_worthy and self.svc.budget.cores_idle(),
        )

    async def _seal(self, encoder: BlockEncoder, source: BodySource, transfer: _Transfer) -> bytes:
        """The source is all in: check the rest of it and the client's digest, and
        return the bytes that close the upstream body (and commit it on the SE)."""
        await source.finish()
        claimed = self.req.claimed_sha256
        if claimed is not None and claimed != encoder.original_digest:
            raise errors.DIGEST_MISMATCH(
                f"the body's sha256 is {encoder.original_hex}, not what the client declared"
            )
        self.progress.state = "storing"
        fields = se_closing_fields(
            self.req,
            transfer.plan,
            (encoder.original_size, encoder.original_hex),
            (encoder.stored_size, encoder.stored_hex),
        )
        return transfer.form.closing(fields)

    # -- sending: the whole body at once, or streamed ------------------------------

    async def _encode_whole(
        self, transfer: _Transfer, encoder: BlockEncoder, first: bytes
    ) -> tuple[BlockEncoder, bytes]:
        """Encode a body that came whole; stored as it is when compression would not
        have made it smaller (unless the client asked for compression)."""
        encoded = (await encoder.submit(first) if first else b"") + encoder.finish()
        plan = transfer.plan
        if (
            plan.recode
            and plan.codec != "none"
            and not self.req.options.compress
            and encoder.stored_size >= encoder.original_size
        ):
            encoder.close()
            transfer.plan = plan.stored_as_is(self.req.filename)
            encoder = self._encoder(transfer.plan)
            encoded = encoder.encode(first) + encoder.finish()
        return encoder, encoded

    async def _send_whole(
        self, transfer: _Transfer, encoder: BlockEncoder, encoded: bytes, source: BodySource
    ) -> tuple[NodeRecord, StoredFile]:
        """The data came whole in its first block: check everything first, then one
        request with a Content-Length body (no streaming machinery), as often as
        failover needs."""
        rest = encoded + await self._seal(encoder, source, transfer)
        self.progress.bytes_sent = encoder.stored_size

        def body(attempt: Attempt) -> bytes:
            attempt.committed = True  # the whole body goes in one write
            return transfer.preamble(self.req, attempt.file_id) + rest

        return await self._deliver(transfer, body, replayable=lambda: True)

    async def _send_streaming(
        self,
        transfer: _Transfer,
        encoder: BlockEncoder,
        first: bytes,
        blocks: BlockReader,
        source: BodySource,
    ) -> tuple[NodeRecord, StoredFile]:
        """Produce (source -> codec -> relay) in this task while a sender task delivers
        the relay to an SE; the closing boundary goes out only after `_seal`."""
        relay = Relay(replay_limit=self.svc.budget.replay_limit)

        def body(attempt: Attempt) -> AsyncIterator[bytes]:
            async def chunks() -> AsyncIterator[bytes]:
                yield transfer.preamble(self.req, attempt.file_id)
                async for chunk in relay.chunks():
                    self.progress.bytes_sent = relay.bytes_taken
                    yield chunk
                attempt.committed = True
                yield relay.trailer

            return chunks()

        sender = asyncio.create_task(
            self._deliver(transfer, body, replayable=lambda: relay.replayable)
        )
        producer = asyncio.current_task()
        assert producer is not None

        def sender_done(task: asyncio.Task[tuple[NodeRecord, StoredFile]]) -> None:
            # No node could take it while we still produce: stop reading the source.
            if transfer.producing and not task.cancelled() and task.exception() is not None:
                transfer.sender_failed = True
                producer.cancel()

        sender.add_done_callback(sender_done)
        try:
            try:
                await self._produce(encoder, first, blocks, relay)
                transfer.producing = False
                relay.finish(await self._seal(encoder, source, transfer))
            except asyncio.CancelledError:
                if not transfer.sender_failed:
                    raise
                producer.uncancel()
            transfer.producing = False
            return await sender
        except BaseException:
            transfer.producing = False
            if not sender.done():  # a finished sender has compensated by itself
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            raise

    async def _produce(
        self, encoder: BlockEncoder, first: bytes, blocks: BlockReader, relay: Relay
    ) -> None:
        """Encode block N in worker threads while block N+1 is read from the source
        and block N-1 is written to the SE by aiohttp's writer task."""
        block: bytes | None = first
        while block is not None:
            encoded = encoder.submit(block)
            try:
                following = await blocks.read()
            except BaseException:
                await settle(encoded)
                raise
            out = await encoded
            if out:
                await self._hand_over(relay, out)
            block = following
        tail = encoder.finish()
        if tail:
            await self._hand_over(relay, tail)

    async def _hand_over(self, relay: Relay, chunk: bytes) -> None:
        """Pass `chunk` on to the SE. An SE that takes nothing for the stall timeout is
        stuck; waiting on, we would read nothing from the source, never see a client
        leave, and hold the upload open for as long as the SE stalls."""
        timeout = self.svc.stall_timeout
        try:
            async with asyncio.timeout(timeout):
                await relay.put(chunk)
        except TimeoutError:
            raise errors.STORAGE_TIMEOUT(
                f"the storage element took no data for {timeout:g} s"
            ) from None

    # -- delivering to a node, and failing over ----------------------------------

    async def _deliver(
        self,
        transfer: _Transfer,
        body: Callable[[Attempt], bytes | AsyncIterator[bytes]],
        replayable: Callable[[], bool],
    ) -> tuple[NodeRecord, StoredFile]:
        """Try nodes until one stores the upload, as the failover walk decides."""
        svc, req = self.svc, self.req
        walk = Failover(svc.retry, svc.rng, svc.clock(), transfer.plan.reservation)
        fixed_id = req.file_id
        if fixed_id is not None:  # a copy keeps its id
            walk.new_file_id = lambda: fixed_id
        node: NodeRecord | None = transfer.first_node
        try:
            while node is not None:
                attempt, moves = walk.begin(node)
                self._reserve(moves)
                self.progress.storage_element_id = node.id
                self.progress.file_id = attempt.file_id
                if not svc.nodes.acquire(node.id):
                    decision = walk.skipped(node, svc.clock())
                else:
                    attributes: Attributes = {
                        "ingester.node": node.id,
                        "ingester.file_id": attempt.file_id,
                        "ingester.attempt": walk.tries,
                    }
                    with svc.tracing.span("upload.attempt", attributes, kind="client") as span:
                        try:
                            reply = await self._attempt(transfer, attempt, body(attempt))
                        except UpstreamError as exc:
                            span.set("ingester.failure", exc.kind)
                            span.fail(exc.message)
                            decision = await self._failed(walk, attempt, exc, replayable())
                        except BaseException:
                            svc.nodes.abandoned(node.id)
                            raise
                        else:
                            svc.nodes.succeeded(node.id)
                            return node, reply
                if isinstance(decision, GiveUp):
                    raise decision.error
                await asyncio.sleep(decision.delay)
                node = self._next_node(walk.tried, transfer.plan.reservation)
        finally:
            self._reserve(walk.end())
        raise walk.exhausted()

    async def _failed(
        self, walk: Failover, attempt: Attempt, exc: UpstreamError, replayable: bool
    ) -> Decision:
        """A try failed: count it against the node (or not), and what comes next."""
        svc, node = self.svc, attempt.node
        # A 5xx is this request's doing if the node is otherwise fine.
        healthy = FAILURES[exc.kind].ask_the_probe and await svc.nodes.healthy(node)
        verdict = walk.failed(attempt, exc, replayable, svc.clock(), healthy)
        if verdict.node_fault:
            svc.nodes.failed(node.id)
        else:
            svc.nodes.abandoned(node.id)
        svc.metrics.child(svc.metrics.node_uploads, node.id, "failed_over").inc()
        if not isinstance(verdict.decision, GiveUp):
            svc.log.warning(
                "upload_attempt_failed",
                upload_id=self.req.upload_id,
                node=node.id,
                kind=exc.kind,
                error=exc.message,
            )
        return verdict.decision

    def _next_node(self, tried: list[str], size: int) -> NodeRecord | None:
        """Another node, or (when none is left) one tried before. A copy never goes back
        to a node it was tried on: a delete owed there may still come for its id."""
        req, nodes = self.req, self.svc.nodes
        policy, strict = req.options.retention_policy, req.strict_mode
        node = nodes.select(policy, size, exclude=[*tried, *req.exclude_nodes], strict=strict)
        if node is None and req.file_id is None:
            node = nodes.select(policy, size, exclude=req.exclude_nodes, strict=strict)
        return node

    def _reserve(self, moves: list[tuple[str, int]]) -> None:
        for node_id, size in moves:
            if size >= 0:
                self.svc.nodes.reserve(node_id, size)
            else:
                self.svc.nodes.release(node_id, -size)

    async def _attempt(
        self, transfer: _Transfer, attempt: Attempt, body: bytes | AsyncIterator[bytes]
    ) -> StoredFile:
        svc, req = self.svc, self.req
        try:
            credential = await svc.credentials.for_upload(req.principal)
        except CredentialError as exc:
            raise errors.STORAGE_CREDENTIALS(str(exc)) from None
        headers = {"X-Request-ID": req.request_id, **credential}
        svc.tracing.inject(headers)
        try:
            return await svc.storage.upload(attempt.node, body, transfer.form.content_type, headers)
        except UpstreamError as exc:
            if must_compensate(attempt.committed, exc.kind):  # the SE may have stored it
                await self._compensate(attempt.node, attempt.file_id, f"upstream_{exc.kind}")
            raise
        except BaseException:
            if must_compensate(attempt.committed, None):  # cancelled after the commit
                await self._compensate(attempt.node, attempt.file_id, "aborted_after_commit")
            raise

    # -- compensation ---------------------------------------------------------------

    async def _compensate(self, node: NodeRecord, file_id: str, reason: str) -> bool:
        """Delete a stored (or maybe stored) file now (True), or leave it to the durable
        backlog, which retries until it succeeds (False)."""
        svc = self.svc
        attributes: Attributes = {
            "ingester.node": node.id,
            "ingester.file_id": file_id,
            "ingester.reason": reason,
        }
        with svc.tracing.span("upload.compensate", attributes, kind="client") as span:
            headers = await svc.credentials.for_delete(self.req.principal)
            svc.tracing.inject(headers)
            outcome = await svc.storage.delete(node, file_id, headers)
            span.set("ingester.outcome", outcome)
            if outcome != "deleted":
                span.fail(f"the delete {outcome}: owed to the outbox")
        if outcome == "deleted":
            return True
        svc.metrics.compensation_failures.labels(node.id, outcome).inc()
        svc.log.warning(
            "compensation_deferred",
            node=node.id,
            file_id=file_id,
            upload_id=self.req.upload_id,
            reason=reason,
            outcome=outcome,
        )
        await svc.compensations.owe_delete(node, file_id, reason)
        return False
