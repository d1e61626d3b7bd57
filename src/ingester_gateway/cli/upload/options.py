"""The upload options of `ingester-gateway upload` as tus `Upload-Metadata` fields, checked
with the gateway's own rules (`parse_upload_options`, `check_filename`): a bad option
fails here, with the server's message, before a byte of the file is read."""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass

from ingester_gateway.errors import ApiError
from ingester_gateway.models import parse_upload_options
from ingester_gateway.resumable.headers import format_metadata
from ingester_gateway.upload.plan import check_filename


class OptionError(ValueError):
    """An upload option the gateway would refuse (its message is the gateway's)."""


@dataclass(frozen=True, slots=True)
class UploadChoices:
    """What the command line asks for; None: not given (the gateway's default)."""

    filename: str
    filetype: str | None = None
    description: str | None = None
    retention_policy: str | None = None
    ttl_days: int | None = None
    compress: bool | None = None
    compression_algorithm: str | None = None
    metadata: str | None = None  # a JSON object, as text


def guess_filetype(filename: str) -> str | None:
    """The content type a file name suggests (the gateway still judges the bytes)."""
    return mimetypes.guess_type(filename, strict=False)[0]


def metadata_fields(choices: UploadChoices) -> dict[str, str]:
    """The `Upload-Metadata` fields of `choices`; OptionError when the gateway would
    answer 400."""
    try:
        fields = {"filename": check_filename(choices.filename)}
        if choices.filetype:
            fields["filetype"] = choices.filetype
        if choices.description is not None:
            fields["description"] = choices.description
        if choices.retention_policy is not None:
            fields["retention_policy"] = choices.retention_policy
        if choices.ttl_days is not None:
            fields["ttl_days"] = str(choices.ttl_days)
        if choices.compress is not None:
            fields["compress"] = "true" if choices.compress else "false"
        if choices.compression_algorithm is not None:
            fields["compression_algorithm"] = choices.compression_algorithm
        if choices.metadata is not None:
            fields["metadata"] = choices.metadata
        parse_upload_options(fields)
    except ApiError as exc:
        raise OptionError(exc.message) from None
    return fields


def upload_metadata(fields: dict[str, str]) -> str:
    """The header value: `key base64,key base64` (the gateway's own encoder)."""
    return format_metadata(fields)
