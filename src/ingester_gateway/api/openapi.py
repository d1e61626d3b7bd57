"""`/openapi.json`: the public API, with schemas generated from the msgspec structs."""

from __future__ import annotations

from typing import Any

import msgspec

from ingester_gateway import __version__, errors
from ingester_gateway.api.openapi_tus import TUS_PROBLEMS, tus_paths
from ingester_gateway.errors import ErrorEnvelope, Problem
from ingester_gateway.finalize.service import FinalizeReply, FinalizeStatus
from ingester_gateway.finalize.transactions import FinalizeRequest
from ingester_gateway.models import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    RESERVED_METADATA_KEY,
    UploadOptions,
    UploadProgress,
    UploadResult,
)
from ingester_gateway.resumable.state import ResumableStatus

_REF = "#/components/schemas/{name}"


def _option_schemas() -> dict[str, dict[str, Any]]:
    """The upload options as they travel, one string each (a query parameter, a form
    field): the struct's schema without its `null` alternatives (absent is the default),
    `metadata` as JSON text, and the `storage_mode` alias."""
    _, components = msgspec.json.schema_components([UploadOptions], ref_template=_REF)
    schemas: dict[str, dict[str, Any]] = {}
    for name, prop in components["UploadOptions"]["properties"].items():
        branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
        schema = {k: v for k, v in branches[0].items() if k != "anyOf"}
        if prop.get("default") is not None:
            schema["default"] = prop["default"]
        schemas[name] = schema
    schemas["ttl_days"]["description"] = (
        "days a temporary file is kept: only with retention_policy=temporary"
        " (or storage_mode=edit); permanent files have none"
    )
    schemas["metadata"] = {
        "type": "string",
        "contentMediaType": "application/json",
        "description": f"a JSON object, at most {MAX_METADATA_BYTES} characters, nested at"
        f" most {MAX_METADATA_DEPTH} levels; the key {RESERVED_METADATA_KEY!r} is reserved",
    }
    schemas["storage_mode"] = {"enum": ["edit", "rw"], "description": "alias of retention_policy"}
    return schemas


# The retention rules across the options (a form's fields; a query cannot say it):
# ttl_days only for a temporary file, and storage_mode must agree with retention_policy.
_RETENTION_RULES: dict[str, Any] = {
    "anyOf": [
        {
            "description": "temporary, named by either spelling; ttl_days allowed",
            "properties": {
                "retention_policy": {"const": "temporary"},
                "storage_mode": {"const": "edit"},
            },
            "anyOf": [{"required": ["retention_policy"]}, {"required": ["storage_mode"]}],
        },
        {
            "description": "permanent (the default); no ttl_days",
            "properties": {
                "retention_policy": {"const": "permanent"},
                "storage_mode": {"const": "rw"},
                "ttl_days": False,  # never present
            },
        },
    ]
}


def _query_parameters() -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in _option_schemas().items()
    ]


def _errors(problems: list[Problem]) -> dict[str, Any]:
    """One response per status, from the error catalogue: the codes it may carry."""
    responses: dict[str, Any] = {}
    for problem in sorted(problems, key=lambda p: (p.status, p.code)):
        entry = responses.setdefault(
            str(problem.status),
            {
                "description": "",
                "content": {
                    "application/json": {"schema": {"$ref": _REF.format(name="ErrorEnvelope")}}
                },
            },
        )
        line = f"`{problem.code}`: {problem.description}"
        entry["description"] = f"{entry['description']}\n\n{line}" if entry["description"] else line
        if problem.headers:
            entry["headers"] = {
                name.decode().title(): {"schema": {"type": "string"}} for name, _ in problem.headers
            }
    return responses


# What each route may answer besides its success: everything upload-related, except
# what only other routes say.
_NOT_UPLOAD = {
    errors.NOT_FOUND,
    errors.METHOD_NOT_ALLOWED,
    errors.FINALIZE_IN_PROGRESS,
    errors.ALREADY_PERMANENT,
    *TUS_PROBLEMS,
}
UPLOAD_PROBLEMS = [p for p in errors.CATALOGUE if p not in _NOT_UPLOAD]
PROGRESS_PROBLEMS = [errors.UNAUTHORIZED, errors.FORBIDDEN, errors.NOT_FOUND, errors.INTERNAL_ERROR]
FINALIZE_PROBLEMS = [
    errors.BAD_REQUEST,
    errors.INVALID_PARAMETER,
    errors.UNAUTHORIZED,
    errors.FORBIDDEN,
    errors.NOT_FOUND,
    errors.FINALIZE_IN_PROGRESS,
    errors.ALREADY_PERMANENT,
    errors.PAYLOAD_TOO_LARGE,
    errors.INTERNAL_ERROR,
    errors.STORAGE_FAILED,
    errors.STORAGE_CREDENTIALS,
    errors.NO_STORAGE_AVAILABLE,
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _path_parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def build_openapi() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [
            UploadResult,
            UploadProgress,
            ErrorEnvelope,
            UploadOptions,
            FinalizeRequest,
            FinalizeReply,
            FinalizeStatus,
            ResumableStatus,
        ],
        ref_template=_REF,
    )
    created = {
        "201": {
            "description": "stored",
            "content": {"application/json": {"schema": {"$ref": _REF.format(name="UploadResult")}}},
        },
        **_errors(UPLOAD_PROBLEMS),
    }
    form_fields = _option_schemas()
    return {
        "openapi": "3.1.0",
        "info": {"title": "ingester-gateway", "version": __version__},
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/files/upload": {
                "post": {
                    "summary": "Upload as multipart/form-data (control fields before 'file')",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "description": "control fields first, then 'file'",
                                    "required": ["file"],
                                    "properties": {
                                        **form_fields,
                                        "file": {"type": "string", "format": "binary"},
                                    },
                                    "additionalProperties": False,
                                    **_RETENTION_RULES,
                                }
                            }
                        },
                    },
                    "responses": created,
                }
            },
            "/api/v1/files/{filename}": {
                "put": {
                    "summary": "Upload a raw body (Content-Length or chunked)",
                    "parameters": [
                        {
                            "name": "filename",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        *_query_parameters(),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "responses": created,
                }
            },
            "/api/v1/finalize/{file_id}": {
                "post": {
                    "summary": "Move a temporary file to an rw SE (uploader or admin)",
                    "parameters": [_path_parameter("file_id")],
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": _ref("FinalizeRequest")}},
                    },
                    "responses": {
                        "202": {
                            "description": "transaction opened",
                            "content": {"application/json": {"schema": _ref("FinalizeReply")}},
                        },
                        **_errors(FINALIZE_PROBLEMS),
                    },
                }
            },
            "/api/v1/finalize/{transaction_id}/status": {
                "get": {
                    "summary": "A finalize transaction's status",
                    "parameters": [_path_parameter("transaction_id")],
                    "responses": {
                        "200": {
                            "description": "status",
                            "content": {"application/json": {"schema": _ref("FinalizeStatus")}},
                        },
                        **_errors(PROGRESS_PROBLEMS),
                    },
                }
            },
            "/api/v1/uploads/{upload_id}": {
                "get": {
                    "summary": "Progress of an upload (visible to its uploader only)",
                    "parameters": [
                        {
                            "name": "upload_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "progress",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": _REF.format(name="UploadProgress")}
                                }
                            },
                        },
                        **_errors(PROGRESS_PROBLEMS),
                    },
                }
            },
            **tus_paths(_errors),
            "/health/live": {
                "get": {
                    "summary": "Liveness",
                    "security": [],
                    "responses": {"200": {"description": "alive"}},
                }
            },
            "/health/ready": {
                "get": {
                    "summary": "Readiness: a writable storage element answered recently",
                    "security": [],
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": [],
                    "responses": {"200": {"description": "metrics"}},
                }
            },
        },
    }
