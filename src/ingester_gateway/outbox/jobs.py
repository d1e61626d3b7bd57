"""Durable work for later, as tagged structs: what the journal and Redis hold until a
gateway (this one, a sibling, or the next process) has done it."""

from __future__ import annotations

import uuid

import msgspec

from ingester_gateway.admin.wire import FileEvent, FileRegistration


def new_job_id() -> str:
    return uuid.uuid4().hex


# The tag stays "compensation": journals and Redis items written before still decode.
class DeleteFile(msgspec.Struct, tag="compensation", frozen=True, kw_only=True):
    """A delete owed to a node: a failed upload's copy, or a finalized file's source
    once its safety margin is over (`not_before`)."""

    id: str
    node_id: str
    node_url: str
    file_id: str
    reason: str
    created_at: float
    not_before: float = 0.0  # unix time; 0: as soon as possible


class RegisterFile(msgspec.Struct, tag="registration", frozen=True, kw_only=True):
    """A stored file the Admin Module's registry has not taken yet."""

    id: str
    registration: FileRegistration
    node_id: str  # where the file is: removed from there if the Admin refuses it for good
    node_url: str
    created_at: float
    upload_id: str | None = None


class AnnounceFile(msgspec.Struct, tag="announcement", frozen=True, kw_only=True):
    """A `file:created` event not on the stream yet (no Admin Module announces it)."""

    id: str
    event: FileEvent
    created_at: float


class FinalizeFile(msgspec.Struct, tag="finalize", frozen=True, kw_only=True):
    """A finalize transaction to drive to its end (its state is kept apart, see
    finalize/transactions.py); the job's id is the transaction's."""

    id: str
    file_id: str
    created_at: float


class StoreUpload(msgspec.Struct, tag="resumable", frozen=True, kw_only=True):
    """A resumable upload to store into artStore (its state is kept apart, see
    resumable/state.py). An upload may have more than one such job (one started while
    it is received, one when its last byte came): they never store it at once."""

    id: str
    upload_id: str
    created_at: float


Job = DeleteFile | RegisterFile | AnnounceFile | FinalizeFile | StoreUpload


def kind_of(job: Job | type[Job]) -> str:
    """The job's kind, as metrics and Redis keys name it: its tag."""
    cls = job if isinstance(job, type) else type(job)
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


KINDS: tuple[str, ...] = tuple(
    kind_of(cls) for cls in (DeleteFile, RegisterFile, AnnounceFile, FinalizeFile, StoreUpload)
)
