"""Finalize a temporary file: stream its stored bytes from the edit SE that holds them
through the upload core into an rw SE (as they are: no second compression), check the
copy's checksum, point the registry record at the new SE (permanent, TTL cleared),
and leave the source's deletion to the outbox, after INGESTER_FINALIZE_SAFETY_MARGIN.

    copying -> copied -> verifying -> completed
          \\-> failed (nothing was kept)    \\-> rolled_back (the copy was removed)

A transaction is an outbox job (any gateway may work it, one at a time) whose state
is durable (transactions.py): a gateway killed mid-copy leaves it to the next one,
which removes what the interrupted copy may have left and copies again; a copy
already checked and only waiting for the registry is not copied twice.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import msgspec

from ingester_gateway import errors
from ingester_gateway.admin.client import AdminClient, AdminRefused, AdminUnavailable
from ingester_gateway.admin.wire import GATEWAY_METADATA_KEY, FileRecord, FileUpdate
from ingester_gateway.auth.verify import Principal
from ingester_gateway.errors import ApiError
from ingester_gateway.finalize.transactions import (
    FinalizeRequest,
    SourceFile,
    Transaction,
    TransactionStore,
)
from ingester_gateway.models import CODEC_NAMES, CodecName, UploadOptions, UploadProgress, iso_utc
from ingester_gateway.observability import get_logger
from ingester_gateway.outbox.jobs import FinalizeFile
from ingester_gateway.outbox.queue import Outbox, OutboxUnavailable
from ingester_gateway.pipeline.codecs import MEDIA_TYPES
from ingester_gateway.registry import NodeRecord
from ingester_gateway.registry.directory import NodeDirectory
from ingester_gateway.tracing import Attributes
from ingester_gateway.upload.driver import UploadDriver, UploadServices, new_progress
from ingester_gateway.upload.plan import Stored, UploadPlan, UploadRequest
from ingester_gateway.upload.progress import ProgressBook
from ingester_gateway.upload.sources import SeDownload, SourceFailed
from ingester_gateway.upstream.client import StorageClient
from ingester_gateway.upstream.wire import StoredFileInfo

_log = get_logger("ingester_gateway.finalize")
MAX_ATTEMPTS = 5  # copies tried while no rw node can take the file, before giving up
_FILE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_PROGRESS = {"copying": 0, "copied": 90, "verifying": 95, "completed": 100}


class FinalizeReply(msgspec.Struct):
    """The 202 of `POST /api/v1/finalize/{file_id}`."""

    transaction_id: str
    file_id: str
    status: str
    source_storage_element_id: str
    target_storage_element_id: str | None
    checksum_verified: bool
    finalized_at: str | None
    new_storage_path: str | None
    cleanup_scheduled_at: str | None
    error_message: str | None


class FinalizeStatus(msgspec.Struct):
    """`GET /api/v1/finalize/{transaction_id}/status`."""

    transaction_id: str
    file_id: str
    status: str
    progress_percent: float
    created_at: str
    completed_at: str | None
    error_message: str | None


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else iso_utc(timestamp)


def reply_of(tx: Transaction) -> FinalizeReply:
    return FinalizeReply(
        transaction_id=tx.transaction_id,
        file_id=tx.source.file_id,
        status=tx.status,
        source_storage_element_id=tx.source.node_id,
        target_storage_element_id=tx.target_storage_element_id,
        checksum_verified=tx.checksum_verified,
        finalized_at=_iso(tx.finalized_at),
        new_storage_path=tx.new_storage_path,
        cleanup_scheduled_at=_iso(tx.cleanup_scheduled_at),
        error_message=tx.error_message,
    )


def copy_plan(source: SourceFile) -> UploadPlan:
    """The stored bytes go as they are, under their stored name (pure)."""
    return UploadPlan(
        content_type=source.content_type,
        codec=source.codec,
        storage_name=source.storage_filename,
        stored_type=MEDIA_TYPES[source.codec] if source.codec != "none" else source.content_type,
        exact_size=source.file_size,
        reservation=source.file_size,
        whole=False,
        parallel_worthy=False,
        ttl_days=None,
        recode=False,
    )


def source_of_record(record: FileRecord, node: NodeRecord) -> SourceFile:
    """The registry's record as a finalize source (pure)."""
    facts = (record.user_metadata or {}).get(GATEWAY_METADATA_KEY, {})
    facts = facts if isinstance(facts, dict) else {}
    codec = record.compression_algorithm if record.compressed else "none"
    user = {k: v for k, v in (record.user_metadata or {}).items() if k != GATEWAY_METADATA_KEY}
    return SourceFile(
        file_id=record.file_id,
        node_id=node.id,
        node_url=node.url,
        storage_filename=record.storage_filename,
        original_filename=record.original_filename,
        content_type=record.content_type,
        file_size=record.file_size,
        checksum_sha256=record.checksum_sha256,
        codec=codec if codec in CODEC_NAMES else "none",
        original_size=int(facts.get("original_size", record.original_size or record.file_size)),
        original_sha256=str(facts.get("original_sha256", record.checksum_sha256)),
        uploaded_by=record.uploaded_by,
        description=record.description,
        user_metadata=user,
    )


def source_of_se(info: StoredFileInfo, node: NodeRecord) -> SourceFile:
    """What an edit SE says of a file it holds, as a finalize source (pure): the
    gateway's own form fields tell the codec and the original."""
    meta: dict[str, object] = {}
    raw = info.fields.get("metadata")
    if raw:
        try:
            decoded = msgspec.json.decode(raw)
            meta = decoded if isinstance(decoded, dict) else {}
        except msgspec.DecodeError:
            meta = {}
    codec_name = str(
        info.fields.get("compression_algorithm") or meta.get("compression_algorithm") or "none"
    )
    codec: CodecName = codec_name if codec_name in CODEC_NAMES else "none"
    user = meta.get("user_metadata")
    return SourceFile(
        file_id=info.file_id,
        node_id=node.id,
        node_url=node.url,
        storage_filename=info.original_filename or info.file_id,
        original_filename=str(
            meta.get("original_filename") or info.original_filename or info.file_id
        ),
        content_type=info.fields.get("content_type")
        or info.content_type
        or "application/octet-stream",
        file_size=info.file_size,
        checksum_sha256=info.checksum,
        codec=codec,
        original_size=int(str(meta.get("original_size", info.file_size))),
        original_sha256=str(meta.get("original_sha256", info.checksum)),
        uploaded_by=info.uploaded_by or "",
        description=info.description,
        user_metadata=user if isinstance(user, dict) else {},
    )


@dataclass
class FinalizeSetup:
    services: UploadServices  # with the service account's credentials
    nodes: NodeDirectory
    storage: StorageClient
    session: Callable[[], aiohttp.ClientSession]
    service_headers: Callable[[], Awaitable[dict[str, str]]]
    admin: AdminClient | None
    outbox: Outbox
    store: TransactionStore
    progress: ProgressBook
    safety_margin: float
    download_timeout: aiohttp.ClientTimeout


class Finalizer:
    def __init__(self, setup: FinalizeSetup, clock: Callable[[], float] = time.time) -> None:
        self._s = setup
        self._clock = clock
        setup.outbox.handle(FinalizeFile, self.work, background=True)

    # -- the API -------------------------------------------------------------------

    async def start(
        self, file_id: str, principal: Principal, request: FinalizeRequest
    ) -> FinalizeReply:
        """Open a transaction for `file_id` (202); its work runs in the background."""
        s = self._s
        if not _FILE_ID.match(file_id):
            raise errors.NOT_FOUND("no such file")
        headers = await self._headers()
        source = await self._find(file_id, headers)
        if principal.sub != source.uploaded_by and not principal.is_admin:
            raise errors.FORBIDDEN("only the uploader or an admin may finalize this file")
        target = request.target_storage_element_id
        if target is not None and not any(
            n.id == target and n.mode == "rw" for n in s.nodes.view()
        ):
            raise errors.INVALID_PARAMETER(
                f"target_storage_element_id {errors.quoted(target)}: no such rw node"
            )
        now = self._clock()
        tx = Transaction(
            transaction_id=uuid.uuid4().hex,
            owner=principal.sub,
            status="copying",
            source=source,
            target_storage_element_id=target,
            created_at=now,
            description=request.description,
            metadata=request.metadata,
        )
        busy = await s.store.claim_file(file_id, tx.transaction_id)
        if busy is not None:
            raise errors.FINALIZE_IN_PROGRESS(f"transaction {busy} is finalizing this file")
        await s.store.put(tx)
        try:
            await s.outbox.add(FinalizeFile(id=tx.transaction_id, file_id=file_id, created_at=now))
        except OutboxUnavailable as exc:
            raise errors.NO_STORAGE_AVAILABLE(
                f"the transaction could not be recorded: {exc}"
            ) from None
        s.outbox.nudge()
        return reply_of(tx)

    async def status(self, transaction_id: str, principal: Principal) -> FinalizeStatus:
        tx = await self._s.store.get(transaction_id)
        mine = principal.sub in (tx.owner, tx.source.uploaded_by) if tx else False
        if tx is None or not (mine or principal.is_admin):
            raise errors.NOT_FOUND("no such transaction")
        percent = float(_PROGRESS.get(tx.status, 0))
        running = self._s.progress.get(transaction_id, tx.owner)
        if tx.status == "copying" and running is not None and tx.source.file_size:
            percent = round(90.0 * running.bytes_sent / tx.source.file_size, 1)
        return FinalizeStatus(
            transaction_id=tx.transaction_id,
            file_id=tx.source.file_id,
            status=tx.status,
            progress_percent=percent,
            created_at=iso_utc(tx.created_at),
            completed_at=_iso(tx.completed_at),
            error_message=tx.error_message,
        )

    async def _find(self, file_id: str, headers: dict[str, str]) -> SourceFile:
        s = self._s
        view = {n.id: n for n in s.nodes.view()}
        if s.admin is not None:
            try:
                record = await s.admin.get(file_id)
            except AdminUnavailable as exc:
                raise errors.NO_STORAGE_AVAILABLE(
                    f"the file registry cannot be read: {exc}"
                ) from None
            except AdminRefused as exc:
                raise errors.STORAGE_FAILED(str(exc)) from None
            if record is None:
                raise errors.NOT_FOUND("no such file in artStore's registry")
            self._check_temporary(record.retention_policy)
            node = view.get(record.storage_element_id)
            if node is None:
                raise errors.NO_STORAGE_AVAILABLE(
                    f"the file's storage element {record.storage_element_id} is not known here"
                )
            return source_of_record(record, node)
        for node in view.values():
            if node.mode != "edit":
                continue
            info = await s.storage.file_info(node, file_id, headers)
            if info is not None:
                self._check_temporary(info.retention_policy or "temporary")
                return source_of_se(info, node)
        raise errors.NOT_FOUND("no edit-mode storage element holds this file")

    @staticmethod
    def _check_temporary(policy: str) -> None:
        if policy != "temporary":
            raise errors.ALREADY_PERMANENT("the file is already permanent")

    async def _headers(self) -> dict[str, str]:
        try:
            return await self._s.service_headers()
        except Exception as exc:  # no token: the work cannot be done now
            raise errors.STORAGE_CREDENTIALS(f"no service-account token: {exc}") from None

    # -- the work (an outbox job) ----------------------------------------------------

    async def work(self, job: FinalizeFile) -> bool:
        s = self._s
        tx = await s.store.get(job.id)
        if tx is None or tx.done:
            return True
        if tx.checksum_verified and tx.target_url is not None:
            return await self._commit(tx)  # copied and checked: only the record is left
        if tx.attempts:
            await self._clear_partial(tx)  # an earlier copy did not end: it may have left bytes
        tx.attempts += 1
        tx.status = "copying"
        await s.store.put(tx)
        progress = new_progress(self._copy_request(tx))
        try:
            node, stored = await self._copy(tx, progress)
        except ApiError as exc:
            if progress.storage_element_id is not None:
                # A copy began and failed: the upload core removed what it may have left.
                return await self._end(tx, "rolled_back", exc.message)
            if exc.status == 503 and tx.attempts < MAX_ATTEMPTS:
                tx.error_message = exc.message
                await s.store.put(tx)
                return False  # no rw node now: try again later
            return await self._end(tx, "failed", exc.message)
        except SourceFailed as exc:
            status = "rolled_back" if progress.storage_element_id is not None else "failed"
            return await self._end(tx, status, str(exc))
        tx.status, tx.target_storage_element_id, tx.target_url = "copied", node.id, node.url
        await s.store.put(tx)
        tx.status = "verifying"
        await s.store.put(tx)
        with s.services.tracing.span("finalize.verify") as span:
            same = (
                stored.stored_sha256 == tx.source.checksum_sha256
                and stored.stored_size == tx.source.file_size
            )
            span.set("ingester.checksum_verified", same)
        if not same:
            await self._remove_copy(tx)
            return await self._end(
                tx, "rolled_back", "the copy's checksum differs from the source's"
            )
        tx.checksum_verified = True
        await s.store.put(tx)
        return await self._commit(tx)

    def _copy_request(self, tx: Transaction) -> UploadRequest:
        s, source = self._s, tx.source
        rw_nodes = [n.id for n in s.nodes.view() if n.mode == "rw"]
        exclude = [source.node_id]
        if tx.target_storage_element_id is not None:
            exclude += [n for n in rw_nodes if n != tx.target_storage_element_id]
        description = tx.description if tx.description is not None else source.description
        metadata = tx.metadata if tx.metadata is not None else source.user_metadata
        return UploadRequest(
            upload_id=tx.transaction_id,
            request_id=tx.transaction_id,
            principal=Principal(
                sub=source.uploaded_by or tx.owner,
                role="user",
                token_type="service_account",
                name=None,
                client_id=None,
                expires_at=0,
            ),
            filename=source.original_filename,
            declared_content_type=source.content_type,
            options=UploadOptions(
                description=(description or "")[:1000],
                retention_policy="permanent",
                metadata=dict(metadata),
            ),
            expected_size=source.file_size,
            exact_size=source.file_size,
            file_id=source.file_id,
            strict_mode=True,
            exclude_nodes=tuple(exclude),
            original=(source.original_size, source.original_sha256),
        )

    async def _copy(self, tx: Transaction, progress: UploadProgress) -> tuple[NodeRecord, Stored]:
        attributes: Attributes = {
            "ingester.transaction_id": tx.transaction_id,
            "ingester.file_id": tx.source.file_id,
            "ingester.source_node": tx.source.node_id,
        }
        with self._s.services.tracing.span("finalize.copy", attributes) as span:
            node, stored = await self._copy_traced(tx, progress)
            span.set("ingester.node", node.id)
            return node, stored

    async def _copy_traced(
        self, tx: Transaction, progress: UploadProgress
    ) -> tuple[NodeRecord, Stored]:
        s, source = self._s, tx.source
        request = self._copy_request(tx)
        headers = await self._headers()
        s.services.tracing.inject(headers)  # the source SE's download joins the trace
        download = SeDownload(
            s.session(),
            NodeRecord(id=source.node_id, url=source.node_url, mode="edit"),
            source.file_id,
            headers,
            source.file_size,
            s.download_timeout,
        )
        s.progress.open(tx.transaction_id, tx.owner, progress, named=True)
        try:
            node, stored = await UploadDriver(s.services, request, progress).copy(
                download, copy_plan(source)
            )
            progress.state = "stored"
            return node, stored
        except BaseException:
            progress.state = "failed"
            raise
        finally:
            progress.finished_at = iso_utc(self._clock())
            s.progress.close(tx.transaction_id, tx.owner)

    async def _commit(self, tx: Transaction) -> bool:
        attributes: Attributes = {"ingester.transaction_id": tx.transaction_id}
        with self._s.services.tracing.span("finalize.commit", attributes):
            return await self._commit_traced(tx)

    async def _commit_traced(self, tx: Transaction) -> bool:
        """Point the registry at the copy, then leave the source to the outbox."""
        s, source = self._s, tx.source
        assert tx.target_storage_element_id is not None and tx.target_url is not None
        path = f"/files/{source.file_id}"
        if s.admin is not None:
            update = FileUpdate(
                storage_element_id=tx.target_storage_element_id,
                storage_path=path,
                storage_filename=source.storage_filename,
                retention_policy="permanent",
            )
            try:
                await s.admin.update(source.file_id, update)
            except AdminUnavailable as exc:
                tx.error_message = f"waiting for the file registry: {exc}"
                await s.store.put(tx)
                return False
            except AdminRefused as exc:
                await self._remove_copy(tx)
                return await self._end(tx, "rolled_back", f"the registry refused the move: {exc}")
        now = self._clock()
        source_node = NodeRecord(id=source.node_id, url=source.node_url, mode="edit")
        await s.outbox.owe_delete(
            source_node, source.file_id, "finalized", not_before=now + s.safety_margin
        )
        tx.cleanup_scheduled_at = now + s.safety_margin
        tx.new_storage_path = path
        tx.finalized_at = now
        _log.info(
            "finalize_completed",
            transaction_id=tx.transaction_id,
            file_id=source.file_id,
            source=source.node_id,
            target=tx.target_storage_element_id,
        )
        return await self._end(tx, "completed", None)

    async def _end(self, tx: Transaction, status: str, error: str | None) -> bool:
        tx.status = status  # type: ignore[assignment]
        tx.error_message = error
        tx.completed_at = self._clock()
        await self._s.store.put(tx)
        if error is not None:
            _log.warning(
                "finalize_ended",
                transaction_id=tx.transaction_id,
                file_id=tx.source.file_id,
                status=status,
                error=error,
            )
        return True

    async def _remove_copy(self, tx: Transaction) -> None:
        assert tx.target_storage_element_id is not None and tx.target_url is not None
        node = NodeRecord(id=tx.target_storage_element_id, url=tx.target_url, mode="rw")
        await self._delete_or_owe(node, tx.source.file_id, "finalize_rolled_back")

    async def _clear_partial(self, tx: Transaction) -> None:
        """An interrupted copy may have stored the file on any rw node but the
        source's: its id is this file's alone, so remove it there."""
        for node in self._s.nodes.view():
            if node.mode == "rw" and node.id != tx.source.node_id:
                await self._delete_or_owe(node, tx.source.file_id, "finalize_interrupted")

    async def _delete_or_owe(self, node: NodeRecord, file_id: str, reason: str) -> None:
        s, tracing = self._s, self._s.services.tracing
        attributes: Attributes = {
            "ingester.node": node.id,
            "ingester.file_id": file_id,
            "ingester.reason": reason,
        }
        with tracing.span("finalize.compensate", attributes, kind="client") as span:
            headers = await self._headers()
            tracing.inject(headers)
            outcome = await s.storage.delete(node, file_id, headers)
            span.set("ingester.outcome", outcome)
        if outcome != "deleted":
            await s.outbox.owe_delete(node, file_id, reason)
