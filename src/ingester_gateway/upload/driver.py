"""One upload, step by step, each step with its compensation.

    select a node and reserve room  -> release the reservation
    stream blocks to the node       -> abort the request (the SE drops the partial)
    commit (closing boundary)       -> delete the stored file (now, or from the backlog)
    verify the SE's checksum        -> (a mismatch compensates the commit)
    announce `file.uploaded`        -> (a failure compensates the commit)

The closing boundary of the upstream multipart body is held back until the whole
client body has been read and checked (length, digest, form shape). Until then the
SE cannot have stored anything, so most failures need only an abort.

A node that fails is left for the next one (circuit breakers, backoff with jitter,
one deadline): transparently while the stored bytes sent so far are still held for
replay (INGESTER_REPLAY_BUFFER_BYTES), else with a 503 that says to retry.
"""

from __future__ import annotations

import asyncio
import re
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from ingester_gateway.auth.credentials import CredentialError
from ingester_gateway.auth.verify import Principal
from ingester_gateway.errors import ApiError, unavailable
from ingester_gateway.models import (
    CodecName,
    StorageUploadReply,
    UploadOptions,
    UploadProgress,
    UploadResult,
    iso_utc,
)
from ingester_gateway.outbox.events import EventsUnavailable
from ingester_gateway.pipeline.blocks import BlockReader
from ingester_gateway.pipeline.codecs import CompressionCodec
from ingester_gateway.pipeline.encode import BlockEncoder
from ingester_gateway.pipeline.relay import Relay
from ingester_gateway.pipeline.sniff import (
    PROBE_BYTES,
    Sniffed,
    content_type_allowed,
    incompressible,
    resolve_content_type,
    sniff,
)
from ingester_gateway.registry import NodeRecord
from ingester_gateway.upstream.client import MultipartFraming, UpstreamError

if TYPE_CHECKING:
    from ingester_gateway.gateway import Gateway

SNIFF_BYTES = 8192
# The first block is cut early: enough to classify the data, and the SE request (and
# the SE's first byte) need not wait for a whole block from a slow client.
FIRST_BLOCK_BYTES = 64 * 1024
# Smaller than this, a zstd stream is not worth spreading over several cores.
PARALLEL_MIN_BYTES = 8 * 2**20


@dataclass(slots=True)
class UploadRequest:
    upload_id: str
    request_id: str
    principal: Principal
    filename: str
    declared_content_type: str | None
    options: UploadOptions
    expected_size: int | None = None  # an upper bound: what is reserved on the node
    exact_size: int | None = None  # the file's size, when the request says it exactly
    claimed_sha256: bytes | None = None


def choose_codec(
    options: UploadOptions,
    sniffed: Sniffed,
    default: CodecName,
    head: bytes = b"",
) -> CodecName:
    """`compress=false` stores as is, `compress=true` compresses whatever it is; left to
    us, data that is already compressed (by its format, or by a trial on its first
    bytes when the client named no algorithm either) is stored as is."""
    if options.compress is False:
        return "none"
    algorithm = options.compression_algorithm or default
    if options.compress is True:
        return (
            "zstd" if algorithm == "none" and options.compression_algorithm is None else algorithm
        )
    if algorithm == "none" or sniffed.compressed:
        return "none"
    if options.compression_algorithm is None and incompressible(head):
        return "none"
    return algorithm


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_PLAIN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)?")  # already safe


def safe_filename(name: str) -> str:
    """An ASCII basename the SE can store and serve back (the original stays ours)."""
    if _PLAIN.fullmatch(name):
        return name
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, _, extension = base.rpartition(".")
    if not stem.strip("."):  # ".hidden", "..": no extension to keep apart
        stem, extension = base, ""
    stem = _ascii_word(stem)[:180] or "file"
    extension = _ascii_word(extension)[:16]
    return f"{stem}.{extension}" if extension else stem


def _ascii_word(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _UNSAFE.sub("_", text).strip("._")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_filename(name: str) -> str:
    if not name or len(name) > 1024:
        raise ApiError(400, "invalid_filename", "filename must be 1 to 1024 characters")
    if _CONTROL.search(name):
        raise ApiError(400, "invalid_filename", "filename contains control characters")
    return name


def _final_error(exc: UpstreamError) -> ApiError:
    if exc.kind in ("connect", "refused", "server", "timeout", "protocol"):
        return unavailable(f"no storage element could take the upload: {exc.message}")
    if exc.kind == "full":
        return ApiError(507, "insufficient_storage", exc.message)
    if exc.kind == "too_large":
        return ApiError(413, "payload_too_large", exc.message)
    return ApiError(502, "storage_failed", exc.message)


# Failures that say something about the node's health (its breaker counts them), and
# failures after which another node may well succeed.
_UNHEALTHY = frozenset({"connect", "timeout", "server", "protocol"})
_NEXT_NODE_HELPS = _UNHEALTHY | {"refused", "full"}


def _not_replayable() -> ApiError:
    return unavailable(
        "a storage element failed mid-upload and the upload is too large to replay on"
        " another node; retry it, or use resumable upload for large files",
        code="storage_failed_mid_upload",
    )


@dataclass(slots=True)
class _Attempt:
    """One try of the upload on one node, under an id of its own: a delete owed for a
    failed try (maybe done late, from the backlog) can never hit a later try's file."""

    node: NodeRecord
    file_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    committed: bool = False  # the closing boundary went out: the SE may hold the file


@dataclass(slots=True)
class _Transfer:
    """What all attempts of one upload share."""

    framing: MultipartFraming
    preamble: Callable[[str], bytes]  # the body's opening, for an attempt's file id
    first_node: NodeRecord
    reservation: int
    producing: bool = True
    sender_failed: bool = False
    node: NodeRecord | None = None  # the node that has stored it


class UploadSaga:
    def __init__(self, gateway: Gateway, request: UploadRequest) -> None:
        self.gw = gateway
        self.req = request
        self.progress = UploadProgress(
            upload_id=request.upload_id,
            state="receiving",
            filename=request.filename,
            expected_bytes=request.expected_size,
            started_at=iso_utc(time.time()),
        )
        self._stored: tuple[NodeRecord, str] | None = None

    async def run(
        self, pieces: AsyncIterator[bytes], after_data: Callable[[], Awaitable[None]]
    ) -> UploadResult:
        """Store the upload. `pieces` is the file data; `after_data` checks what follows
        it in the request (nothing, for a raw body) before anything is committed."""
        gw, req = self.gw, self.req
        blocks = BlockReader(pieces, gw.block_size, FIRST_BLOCK_BYTES)
        first = await blocks.read()
        head = (first or b"")[:SNIFF_BYTES]
        sniffed = sniff(head)
        content_type = resolve_content_type(sniffed, req.declared_content_type)
        if not content_type_allowed(content_type, gw.settings.allowed_content_types):
            raise ApiError(
                415, "unsupported_media_type", f"content type {content_type} is not accepted"
            )
        probe = (first or b"")[:PROBE_BYTES]
        codec = gw.codecs[
            choose_codec(req.options, sniffed, gw.settings.default_compression, probe)
        ]
        if req.exact_size is None and blocks.ended:
            req.exact_size = len(first or b"")  # the whole file came in the first block
        node = gw.nodes.select(req.options.retention_policy, req.expected_size or 0)
        if node is None:
            raise self._no_node_error()
        return await self._store(node, codec, content_type, first, blocks, after_data)

    def _no_node_error(self) -> ApiError:
        """507 when writable nodes are up but none could hold the upload even with
        nothing else in flight (waiting will not help); else 503, retry later."""
        policy, size = self.req.options.retention_policy, self.req.expected_size or 0
        nodes = self.gw.nodes
        if size and nodes.any_usable(policy) and not nodes.could_fit_anywhere(policy, size):
            return ApiError(
                507, "insufficient_storage", f"no storage element has room for {size} bytes"
            )
        return unavailable("no writable storage element is available")

    async def _store(
        self,
        node: NodeRecord,
        codec: CompressionCodec,
        content_type: str,
        first: bytes | None,
        blocks: BlockReader,
        after_data: Callable[[], Awaitable[None]],
    ) -> UploadResult:
        gw, req = self.gw, self.req
        big = req.exact_size is None or req.exact_size >= PARALLEL_MIN_BYTES
        encoder = BlockEncoder(
            codec, gw.executor, size_hint=req.exact_size, parallel=big and gw.cores_idle()
        )
        framing = MultipartFraming()
        storage_name = safe_filename(req.filename) + codec.extension
        transfer = _Transfer(
            framing=framing,
            preamble=lambda file_id: self._preamble(
                framing, file_id, codec, content_type, storage_name
            ),
            first_node=node,
            reservation=req.expected_size or 0,
        )
        try:
            if blocks.ended:
                reply = await self._send_whole(transfer, encoder, first, after_data)
            else:
                reply = await self._send_streaming(transfer, encoder, first, blocks, after_data)
        finally:
            encoder.close()
        assert transfer.node is not None
        stored_on = transfer.node
        if reply.checksum.lower() != encoder.stored_hex or (
            reply.file_size is not None and reply.file_size != encoder.stored_size
        ):
            removed = await self._compensate(stored_on, reply.file_id, "checksum_mismatch")
            raise ApiError(
                502,
                "checksum_mismatch",
                "the storage element stored different bytes than were sent; the copy "
                + ("was removed" if removed else "will be removed (queued for deletion)"),
            )
        self._stored = (stored_on, reply.file_id)
        result = self._result(
            stored_on, reply.file_id, encoder, codec.name, content_type, storage_name
        )
        try:
            await gw.events.file_uploaded(result, req.principal.sub)
        except EventsUnavailable as exc:
            await self._compensate(stored_on, reply.file_id, "event_not_recorded")
            raise unavailable(f"the upload could not be recorded: {exc}") from None
        return result

    def _preamble(
        self,
        framing: MultipartFraming,
        file_id: str,
        codec: CompressionCodec,
        content_type: str,
        storage_name: str,
    ) -> bytes:
        req = self.req
        return b"".join(
            [
                framing.field("file_id", file_id),
                framing.field("description", req.options.description),
                framing.field("version", "1"),
                framing.field("retention_policy", req.options.retention_policy),
                framing.field("content_type", content_type),
                framing.field("compression_algorithm", codec.name),
                framing.field("uploaded_by", req.principal.sub),
                # The client's metadata travels with the file (an SE keeps unknown fields).
                *(
                    [framing.field("metadata", msgspec.json.encode(req.options.metadata).decode())]
                    if req.options.metadata
                    else []
                ),
                framing.file_header(
                    storage_name, codec.media_type if codec.name != "none" else content_type
                ),
            ]
        )

    async def _seal(
        self,
        encoder: BlockEncoder,
        after_data: Callable[[], Awaitable[None]],
        framing: MultipartFraming,
    ) -> bytes:
        """The body is all in: check the rest of the request and the client's digest,
        and return the bytes that close the upstream body (and commit it on the SE)."""
        await after_data()
        self._check_claimed_digest(encoder)
        self.progress.state = "storing"
        return (
            framing.file_end()
            + framing.field("original_size", str(encoder.original_size))
            + framing.field("original_checksum", encoder.original_hex)
            + framing.closing()
        )

    # -- sending: the whole body at once, or streamed ------------------------------

    async def _send_whole(
        self,
        transfer: _Transfer,
        encoder: BlockEncoder,
        first: bytes | None,
        after_data: Callable[[], Awaitable[None]],
    ) -> StorageUploadReply:
        """The file came whole in its first block: check everything first, then one
        request with a Content-Length body (no streaming machinery), as often as
        failover needs."""
        parts = []
        if first:
            parts.append(await encoder.submit(first))
        parts.append(encoder.finish())
        parts.append(await self._seal(encoder, after_data, transfer.framing))
        rest = b"".join(parts)
        self.progress.bytes_sent = encoder.stored_size
        return await self._deliver(
            transfer,
            lambda attempt: transfer.preamble(attempt.file_id) + rest,
            replayable=lambda: True,
        )

    async def _send_streaming(
        self,
        transfer: _Transfer,
        encoder: BlockEncoder,
        first: bytes | None,
        blocks: BlockReader,
        after_data: Callable[[], Awaitable[None]],
    ) -> StorageUploadReply:
        """Produce (client -> codec -> relay) in this task while a sender task delivers
        the relay to an SE; the closing boundary goes out only after `_seal`."""
        relay = Relay(replay_limit=self.gw.replay_limit)

        def body(attempt: _Attempt) -> AsyncIterator[bytes]:
            async def chunks() -> AsyncIterator[bytes]:
                yield transfer.preamble(attempt.file_id)
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

        def sender_done(task: asyncio.Task[StorageUploadReply]) -> None:
            # No node could take it while we still produce: stop reading the client.
            if transfer.producing and not task.cancelled() and task.exception() is not None:
                transfer.sender_failed = True
                producer.cancel()

        sender.add_done_callback(sender_done)
        try:
            try:
                await self._produce(encoder, first, blocks, relay)
                transfer.producing = False
                relay.finish(await self._seal(encoder, after_data, transfer.framing))
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

    # -- delivering to a node, and failing over ----------------------------------

    async def _deliver(
        self,
        transfer: _Transfer,
        body: Callable[[_Attempt], bytes | AsyncIterator[bytes]],
        replayable: Callable[[], bool],
    ) -> StorageUploadReply:
        """Try nodes until one stores the upload: the first choice, then others (or the
        same again) with backoff and jitter, within the retry attempts and deadline."""
        gw, req = self.gw, self.req
        policy = gw.retry_policy
        loop = asyncio.get_running_loop()
        started = loop.time()
        node: NodeRecord | None = transfer.first_node
        tried: list[str] = []
        last: UpstreamError | None = None
        reserved_on: str | None = None
        try:
            for number in range(1, policy.max_attempts + 1):
                if node is None:
                    break
                if reserved_on != node.id:
                    if reserved_on is not None:
                        gw.nodes.release(reserved_on, transfer.reservation)
                    gw.nodes.reserve(node.id, transfer.reservation)
                    reserved_on = node.id
                self.progress.storage_element_id = node.id
                attempt = _Attempt(node)
                self.progress.file_id = attempt.file_id
                if gw.nodes.acquire(node.id):
                    try:
                        reply = await self._attempt(transfer, attempt, body(attempt))
                    except UpstreamError as exc:
                        last = exc
                        if exc.kind in _UNHEALTHY:
                            gw.nodes.failed(node.id)
                        else:
                            gw.nodes.breaker(node.id).release()
                        gw.metrics.node_uploads.labels(node.id, "failed_over").inc()
                        if exc.kind not in _NEXT_NODE_HELPS:
                            raise _final_error(exc) from None
                        if not replayable():
                            raise _not_replayable() from None
                        gw.log.warning(
                            "upload_attempt_failed",
                            upload_id=req.upload_id,
                            node=node.id,
                            kind=exc.kind,
                            error=exc.message,
                        )
                    except BaseException:
                        gw.nodes.breaker(node.id).release()
                        raise
                    else:
                        gw.nodes.succeeded(node.id)
                        transfer.node = node
                        return reply
                tried.append(node.id)
                delay = policy.next_delay(number, loop.time() - started, gw.rng)
                if delay is None:
                    break
                await asyncio.sleep(delay)
                node = gw.nodes.select(
                    req.options.retention_policy, req.expected_size or 0, exclude=tried
                ) or gw.nodes.select(req.options.retention_policy, req.expected_size or 0)
        finally:
            if reserved_on is not None:
                gw.nodes.release(reserved_on, transfer.reservation)
        if last is None:
            raise unavailable("no storage element could take the upload (all circuits open)")
        raise _final_error(last)

    async def _attempt(
        self,
        transfer: _Transfer,
        attempt: _Attempt,
        body: bytes | AsyncIterator[bytes],
    ) -> StorageUploadReply:
        gw, req = self.gw, self.req
        try:
            credential = await gw.credentials.for_upload(req.principal)
        except CredentialError as exc:
            raise ApiError(502, "storage_credentials", str(exc)) from None
        headers = {"X-Request-ID": req.request_id, **credential}
        try:
            return await gw.storage.upload(
                attempt.node, body, transfer.framing.content_type, headers
            )
        except UpstreamError as exc:
            if isinstance(body, bytes) and exc.kind != "connect":
                attempt.committed = True  # the whole body may have reached the SE
            if attempt.committed:  # the SE may have stored it before failing
                await self._compensate(attempt.node, attempt.file_id, f"upstream_{exc.kind}")
            raise
        except BaseException:
            if attempt.committed:  # cancelled after the closing boundary went out
                await self._compensate(attempt.node, attempt.file_id, "aborted_after_commit")
            raise

    # -- producing ---------------------------------------------------------------

    async def _produce(
        self,
        encoder: BlockEncoder,
        first: bytes | None,
        blocks: BlockReader,
        relay: Relay,
    ) -> None:
        """Encode block N in worker threads while block N+1 is read from the client
        and block N-1 is written to the SE by aiohttp's writer task."""
        block = first
        while block is not None:
            encoded = encoder.submit(block)
            following = await blocks.read()
            out = await encoded
            self.progress.bytes_received = encoder.original_size
            if out:
                await self._hand_over(relay, out)
            block = following
        tail = encoder.finish()
        if tail:
            await self._hand_over(relay, tail)

    async def _hand_over(self, relay: Relay, chunk: bytes) -> None:
        """Pass `chunk` on to the SE. An SE that takes nothing for the response
        timeout is stuck; waiting on, we would read nothing from the client, never see
        it leave, and hold the upload open for as long as the SE stalls."""
        timeout = self.gw.settings.upstream_response_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                await relay.put(chunk)
        except TimeoutError:
            raise ApiError(
                502, "storage_timeout", f"the storage element took no data for {timeout:g} s"
            ) from None

    def _check_claimed_digest(self, encoder: BlockEncoder) -> None:
        claimed = self.req.claimed_sha256
        if claimed is not None and claimed != encoder.original_digest:
            raise ApiError(
                422,
                "digest_mismatch",
                f"the body's sha256 is {encoder.original_hex}, not what the client declared",
            )

    # -- compensation ---------------------------------------------------------------

    async def undo(self) -> None:
        """Remove the stored upload: its success can no longer be reported."""
        assert self._stored is not None
        node, file_id = self._stored
        await self._compensate(node, file_id, "client_gone")

    async def _compensate(self, node: NodeRecord, file_id: str, reason: str) -> bool:
        """Delete a stored (or maybe stored) file now (True), or leave it to the durable
        backlog, which retries until it succeeds (False)."""
        headers = await self.gw.credentials.for_delete(self.req.principal)
        if await self.gw.storage.delete(node, file_id, headers):
            return True
        self.gw.metrics.compensation_failures.labels(node.id).inc()
        self.gw.log.warning(
            "compensation_deferred",
            node=node.id,
            file_id=file_id,
            upload_id=self.req.upload_id,
            reason=reason,
        )
        await self.gw.backlog.add(node, file_id, reason)
        return False

    def _result(
        self,
        node: NodeRecord,
        file_id: str,
        encoder: BlockEncoder,
        codec_name: CodecName,
        content_type: str,
        storage_name: str,
    ) -> UploadResult:
        now = time.time()
        ttl_days = self.req.options.ttl_days
        return UploadResult(
            file_id=file_id,
            original_filename=self.req.filename,
            storage_filename=storage_name,
            content_type=content_type,
            file_size=encoder.original_size,
            stored_size=encoder.stored_size,
            compressed=codec_name != "none",
            compression_algorithm=codec_name,
            compression_ratio=round(encoder.original_size / encoder.stored_size, 4)
            if encoder.stored_size
            else 1.0,
            checksum=encoder.original_hex,
            stored_checksum=encoder.stored_hex,
            uploaded_at=iso_utc(now),
            storage_element_id=node.id,
            storage_element_url=node.url,
            retention_policy=self.req.options.retention_policy,
            ttl_expires_at=iso_utc(now + ttl_days * 86400) if ttl_days else None,
            upload_id=self.req.upload_id,
        )
