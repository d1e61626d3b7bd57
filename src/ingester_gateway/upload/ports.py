"""What the upload driver needs from the rest of the gateway, as small Protocols (tusd's
lesson): the driver never reaches into the whole gateway, and a test can hand it an
in-memory Storage Element or a node pool of its own."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Collection
from typing import Literal, Protocol

from ingester_gateway.auth.verify import Principal
from ingester_gateway.models import RetentionPolicy, UploadResult
from ingester_gateway.registry import NodeRecord
from ingester_gateway.upload.plan import UploadRequest
from ingester_gateway.upstream.client import DeleteOutcome
from ingester_gateway.upstream.wire import StoredFile


class BodySource(Protocol):
    """Where an upload's bytes come from: a client's request body (raw or a form's file
    part), a staged resumable upload, another Storage Element's download."""

    def pieces(self) -> AsyncIterator[bytes]:
        """The data, in pieces of any size, once."""
        ...

    async def finish(self) -> None:
        """Every piece was read: check what follows the data (raise an ApiError to
        refuse). Nothing is committed on a Storage Element before this returns."""
        ...


class NodePool(Protocol):
    """Choosing nodes, the bytes reserved on them, and their circuit breakers."""

    def select(
        self,
        policy: RetentionPolicy,
        size: int,
        exclude: Collection[str] = (),
        strict: bool = False,
    ) -> NodeRecord | None:
        """A node for the upload; `strict`: only nodes of the policy's mode."""
        ...

    def any_usable(self, policy: RetentionPolicy) -> bool: ...

    def could_fit_anywhere(self, policy: RetentionPolicy, size: int) -> bool: ...

    def reserve(self, node_id: str, size: int) -> None: ...

    def release(self, node_id: str, size: int) -> None: ...

    def acquire(self, node_id: str) -> bool:
        """May a request go to this node now (its breaker)?"""
        ...

    def succeeded(self, node_id: str) -> None: ...

    def failed(self, node_id: str) -> None:
        """The node failed: its breaker counts it."""
        ...

    def abandoned(self, node_id: str) -> None:
        """The acquired request says nothing about the node's health."""
        ...

    async def healthy(self, node: NodeRecord) -> bool:
        """Does the node answer its health probe right now?"""
        ...


class StorageNodes(Protocol):
    """Store and delete on a Storage Element."""

    async def upload(
        self,
        node: NodeRecord,
        body: bytes | AsyncIterable[bytes],
        content_type: str,
        headers: dict[str, str],
    ) -> StoredFile: ...

    async def delete(
        self, node: NodeRecord, file_id: str, headers: dict[str, str]
    ) -> DeleteOutcome:
        """ "deleted" once the file is gone (or never was there)."""
        ...


class Credentials(Protocol):
    """Authorization headers for requests to Storage Elements."""

    async def for_upload(self, principal: Principal) -> dict[str, str]: ...

    async def for_delete(self, principal: Principal) -> dict[str, str]: ...


class CompensationSink(Protocol):
    """Durable record of a delete still owed to a node, retried until done."""

    async def owe_delete(
        self, node: NodeRecord, file_id: str, reason: str, not_before: float = 0.0
    ) -> None: ...


class RecordUnavailable(Exception):
    """A stored file could not be recorded (nor durably queued for it)."""


class RecordRefused(Exception):
    """artStore refused to record the stored file, for good (its reason)."""


# Is the file in the Admin's registry: yes, on its way (durably queued), or no registry.
RecordState = Literal["registered", "pending", "not_configured"]


class RecordSink(Protocol):
    """Makes a stored file known to the rest of artStore (a registration, an event)."""

    async def stored(self, result: UploadResult, request: UploadRequest) -> RecordState:
        """Record it, or queue it durably; raise RecordUnavailable when neither works,
        RecordRefused when artStore will not have it."""
        ...


class BufferBudget(Protocol):
    """How much memory one upload may use now (uvicorn's flow_control lesson: one
    small policy decides it; the driver only asks)."""

    def block_size(self) -> int: ...

    def replay_limit(self) -> int: ...

    def cores_idle(self) -> bool:
        """May one upload spread its compression over several cores?"""
        ...
