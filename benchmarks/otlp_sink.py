"""Where the traced gateways of `scenarios/tracing.py` send their spans: an OTLP/HTTP
endpoint (`POST /v1/traces`, protobuf) that counts the spans of each export and keeps
nothing. `GET /count` says how many it got, so a run can tell that no span was dropped
(a dropped span would cost the gateway nothing and flatter the figure).

    python benchmarks/otlp_sink.py --port 4318
"""

from __future__ import annotations

import argparse

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

_EMPTY_REPLY = b""  # an ExportTraceServiceResponse with nothing in it


def build_app() -> web.Application:
    app = web.Application(client_max_size=64 * 2**20)
    counts = {"spans": 0, "exports": 0}

    async def traces(request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        counts["spans"] += sum(
            len(scope.spans) for resource in export.resource_spans for scope in resource.scope_spans
        )
        counts["exports"] += 1
        return web.Response(body=_EMPTY_REPLY, content_type="application/x-protobuf")

    async def count(request: web.Request) -> web.Response:
        return web.json_response(counts)

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/count", count)
    app.router.add_get("/health/ready", ready)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
