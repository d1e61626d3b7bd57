"""schemathesis hooks for tests/integration/test_openapi_conformance.py (loaded by the
CLI through SCHEMATHESIS_HOOKS): the client keeps the multipart route's documented
order, control fields first and then `file` (OpenAPI cannot say it); the resumable
routes' PATCH bodies (tus's and the draft's media types) are sent as raw bytes."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict) and "file" in body:
        return {**{k: v for k, v in body.items() if k != "file"}, "file": body["file"]}
    return body


# Raw bytes, as application/octet-stream is sent.
schemathesis.serializer.alias(
    ["application/offset+octet-stream", "application/partial-upload"], "application/octet-stream"
)
