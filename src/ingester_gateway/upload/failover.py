"""Failover of one upload over Storage Elements. Pure: the clock's readings, the
randomness and the retry policy are passed in; the driver does the I/O.

One table says, for each kind of failure, whether it counts against the node, whether
another node (or another try) may help, and what the client is told when no node is
left. A failure the request causes (a refusal any SE would give it, or a 5xx that a
healthy node answers) is tried at most once more, never counts against a node, and
is answered 502 with the SE's reason: a bad request must not open the circuit of a
good node for everyone, nor be told "no storage available".

The walk keeps the reservation ledger: the upload's bytes are reserved on exactly one
node at a time, the one being tried.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ingester_gateway import errors
from ingester_gateway.errors import ApiError, Problem
from ingester_gateway.registry import NodeRecord
from ingester_gateway.resilience import RetryPolicy
from ingester_gateway.upstream.client import FailureKind, UpstreamError


@dataclass(frozen=True, slots=True)
class FailureRule:
    node_fault: bool  # counts against the node's circuit breaker
    next_node_helps: bool  # another node, or a later try, may succeed
    final: Problem  # the answer when no node is left (or none can help)
    # Caused by the request when the node answers its health probe: then no node fault.
    ask_the_probe: bool = False
    request_caused: bool = False  # whatever the node's health


FAILURES: dict[FailureKind, FailureRule] = {
    "connect": FailureRule(True, True, errors.NO_STORAGE_AVAILABLE),
    "timeout": FailureRule(True, True, errors.NO_STORAGE_AVAILABLE),
    "dropped": FailureRule(True, True, errors.NO_STORAGE_AVAILABLE),
    "unavailable": FailureRule(True, True, errors.NO_STORAGE_AVAILABLE),
    "protocol": FailureRule(True, True, errors.NO_STORAGE_AVAILABLE),
    "server": FailureRule(True, True, errors.NO_STORAGE_AVAILABLE, ask_the_probe=True),
    "refused": FailureRule(False, True, errors.NO_STORAGE_AVAILABLE),  # mode not writable
    "full": FailureRule(False, True, errors.INSUFFICIENT_STORAGE),
    "too_large": FailureRule(False, False, errors.PAYLOAD_TOO_LARGE),
    "unauthorized": FailureRule(False, False, errors.STORAGE_FAILED),
    "rejected": FailureRule(False, True, errors.STORAGE_FAILED, request_caused=True),
}


def request_caused(kind: FailureKind, node_healthy: bool) -> bool:
    """Would any node refuse this request the same way?"""
    rule = FAILURES[kind]
    return rule.request_caused or (rule.ask_the_probe and node_healthy)


def final_error(failure: UpstreamError, caused_by_request: bool = False) -> ApiError:
    if caused_by_request:
        return errors.STORAGE_FAILED(f"the storage element refused the upload: {failure.message}")
    problem = FAILURES[failure.kind].final
    if problem is errors.NO_STORAGE_AVAILABLE:
        return problem(f"no storage element could take the upload: {failure.message}")
    return problem(failure.message)


def must_compensate(committed: bool, failure: FailureKind | None) -> bool:
    """After a try failed (`failure`, or None when it was cancelled): may the SE hold
    the file, so that it must be deleted? Yes once the body was committed (the closing
    boundary, or the whole body at once, went out), unless the SE was never reached."""
    return committed and failure != "connect"


def no_node_error(any_usable: bool, fits_anywhere: bool, size: int) -> ApiError:
    """507 when writable nodes are up but none could hold the upload even with nothing
    else in flight (waiting will not help); else 503, retry later."""
    if size and any_usable and not fits_anywhere:
        return errors.INSUFFICIENT_STORAGE(f"no storage element has room for {size} bytes")
    return errors.NO_STORAGE_AVAILABLE("no writable storage element is available")


@dataclass(slots=True)
class Attempt:
    """One try on one node, under a file id of its own: a delete owed for a failed try
    (maybe done late, from the backlog) can never hit a later try's file."""

    node: NodeRecord
    file_id: str
    committed: bool = False  # the SE may hold the file: the body's end went out


@dataclass(frozen=True, slots=True)
class Retry:
    delay: float  # seconds to wait before the next node is chosen


@dataclass(frozen=True, slots=True)
class GiveUp:
    error: ApiError


Decision = Retry | GiveUp


@dataclass(frozen=True, slots=True)
class Verdict:
    node_fault: bool  # the node's breaker counts this failure
    decision: Decision


def _new_file_id() -> str:
    """A random (version 4) UUID, as SEs and the Admin's registry want file ids; built
    from os.urandom directly (uuid.uuid4() costs several times as much)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(slots=True)
class Failover:
    """The walk of one upload over nodes: `begin` a try, then `failed` or `skipped`
    says what comes next. `started` and every `now` are readings of one monotonic
    clock."""

    retry: RetryPolicy
    rng: random.Random
    started: float
    reservation: int
    new_file_id: Callable[[], str] = _new_file_id
    tries: int = 0
    tried: list[str] = field(default_factory=list)
    reserved_on: str | None = None
    last_failure: UpstreamError | None = None
    last_caused_by_request: bool = False
    request_failures: int = 0  # failures the request caused, on any node

    def begin(self, node: NodeRecord) -> tuple[Attempt, list[tuple[str, int]]]:
        """Start a try on `node`; also the reservation changes to apply, as
        (node id, +bytes to reserve | -bytes to release)."""
        self.tries += 1
        moves: list[tuple[str, int]] = []
        if self.reserved_on != node.id:
            if self.reserved_on is not None:
                moves.append((self.reserved_on, -self.reservation))
            moves.append((node.id, self.reservation))
            self.reserved_on = node.id
        return Attempt(node, self.new_file_id()), moves

    def end(self) -> list[tuple[str, int]]:
        """The upload is over: the reservation to release."""
        if self.reserved_on is None:
            return []
        node_id, self.reserved_on = self.reserved_on, None
        return [(node_id, -self.reservation)]

    def failed(
        self,
        attempt: Attempt,
        failure: UpstreamError,
        replayable: bool,
        now: float,
        node_healthy: bool = False,
    ) -> Verdict:
        """The try on `attempt.node` failed with `failure`; `replayable` says the bytes
        sent so far can still be sent again; `node_healthy` what the node's health
        probe says now (asked only for failures that need it)."""
        caused = request_caused(failure.kind, node_healthy)
        self.last_failure, self.last_caused_by_request = failure, caused
        node_fault = FAILURES[failure.kind].node_fault and not caused
        if caused:
            self.request_failures += 1
            if self.request_failures > 1:  # the second time: it is the request
                return Verdict(False, GiveUp(final_error(failure, caused_by_request=True)))
        if not FAILURES[failure.kind].next_node_helps:
            return Verdict(node_fault, GiveUp(final_error(failure)))
        if not replayable:
            return Verdict(
                node_fault,
                GiveUp(
                    errors.STORAGE_FAILED_MID_UPLOAD(
                        "a storage element failed mid-upload and the upload is too large to"
                        " replay on another node; retry it, or use resumable upload for"
                        " large files"
                    )
                ),
            )
        return Verdict(node_fault, self._next(attempt.node, now))

    def skipped(self, node: NodeRecord, now: float) -> Decision:
        """The node's circuit refused the try before it was sent."""
        return self._next(node, now)

    def _next(self, node: NodeRecord, now: float) -> Decision:
        self.tried.append(node.id)
        delay = self.retry.next_delay(self.tries, now - self.started, self.rng)
        if delay is None:
            return GiveUp(self.exhausted())
        return Retry(delay)

    def exhausted(self) -> ApiError:
        if self.last_failure is None:
            return errors.NO_STORAGE_AVAILABLE(
                "no storage element could take the upload (all circuits open)"
            )
        return final_error(self.last_failure, self.last_caused_by_request)
