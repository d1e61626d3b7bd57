"""`POST /api/v1/finalize/{file_id}` and `GET /api/v1/finalize/{transaction_id}/status`."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ingester_gateway import errors
from ingester_gateway.auth.verify import Principal
from ingester_gateway.finalize.service import Finalizer
from ingester_gateway.finalize.transactions import FinalizeRequest
from ingester_gateway.gateway import Gateway
from ingester_gateway.models import MAX_METADATA_DEPTH, json_nesting_within

MAX_BODY = 64 * 1024
_request = msgspec.json.Decoder(FinalizeRequest)
_encoder = msgspec.json.Encoder()


class FinalizeRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def start(self, request: Request) -> Response:
        principal = await self._principal(request)
        finalizer = self._finalizer()
        body = await self._body(request)
        reply = await finalizer.start(request.path_params["file_id"], principal, body)
        return Response(_encoder.encode(reply), 202, media_type="application/json")

    async def status(self, request: Request) -> Response:
        principal = await self._principal(request)
        finalizer = self._finalizer()
        status = await finalizer.status(request.path_params["transaction_id"], principal)
        return Response(_encoder.encode(status), 200, media_type="application/json")

    async def _principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "").encode("latin-1")
        return await self.gw.verifier.verify_header(header or None)

    def _finalizer(self) -> Finalizer:
        if self.gw.finalizer is None:
            raise errors.NO_STORAGE_AVAILABLE(
                "finalize needs the gateway's service account (INGESTER_SERVICE_CLIENT_ID)"
            )
        return self.gw.finalizer

    @staticmethod
    async def _body(request: Request) -> FinalizeRequest:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise errors.PAYLOAD_TOO_LARGE(f"a finalize request is at most {MAX_BODY} bytes")
        if not raw.strip():
            return FinalizeRequest()
        if not json_nesting_within(raw, MAX_METADATA_DEPTH + 1):  # the request holds it
            raise errors.INVALID_PARAMETER(
                f"metadata nests deeper than {MAX_METADATA_DEPTH} levels"
            )
        try:
            return _request.decode(raw)
        except msgspec.ValidationError as exc:
            raise errors.INVALID_PARAMETER(
                f"finalize request: {errors.without_values(str(exc))}"
            ) from None
        except msgspec.DecodeError:
            raise errors.BAD_REQUEST("the finalize request is not JSON") from None
