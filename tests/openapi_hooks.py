"""schemathesis hooks for tests/integration/test_openapi_conformance.py (loaded by the
CLI through SCHEMATHESIS_HOOKS): the client keeps the multipart route's documented
order, control fields first and then `file` (OpenAPI cannot say it)."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict) and "file" in body:
        return {**{k: v for k, v in body.items() if k != "file"}, "file": body["file"]}
    return body
