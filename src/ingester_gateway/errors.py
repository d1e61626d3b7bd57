"""The one error type handlers raise, and its JSON envelope."""

from __future__ import annotations

import msgspec


class ApiError(Exception):
    """An error answered to the client as `{"error": {code, message, request_id}}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []


class ErrorDetail(msgspec.Struct):
    code: str
    message: str
    request_id: str


class ErrorEnvelope(msgspec.Struct):
    error: ErrorDetail


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


def unavailable(message: str, retry_after: int = 5, code: str = "no_storage_available") -> ApiError:
    return ApiError(503, code, message, [(b"retry-after", str(retry_after).encode())])
