"""Requests checked field by field, and refused the way FastAPI refuses them.

The real Admin Module is FastAPI + pydantic v2: an error is `{"detail": "..."}`, and a
bad body is answered 422 `{"detail": [{"type", "loc", "msg", "input"}, ...]}` listing
every bad field, with pydantic's types and messages. Clients (and our gateway) read
those shapes, so the reference answers them too. Types are JSON's own: no coercion of
"7" into 7. Pure code: no I/O, tested without a socket.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

Kind = Literal["str", "int", "bool", "uuid", "datetime", "object", "str_list", "choice"]
MISSING: Any = msgspec.UNSET  # a field the body did not carry (not the same as null)


class FieldError(msgspec.Struct, omit_defaults=True):
    """One item of FastAPI's `detail` list."""

    type: str
    loc: list[str | int]
    msg: str
    input: Any
    ctx: dict[str, Any] | None = None


class HttpError(Exception):
    """An answer `{"detail": detail}` with this status (and headers)."""

    def __init__(
        self, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or []


class ValidationFailed(Exception):
    """A 422: the body (or a path or query parameter) does not fit."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.loc}: {e.msg}" for e in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Rule:
    """What one field may hold. `nullable` fields take JSON null; a `required` one
    must be present."""

    kind: Kind
    required: bool = False
    nullable: bool = True
    min_length: int | None = None
    max_length: int | None = None
    ge: int | None = None
    le: int | None = None
    choices: tuple[str, ...] = ()
    hex_only: bool = False


def decode_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a ValidationFailed as FastAPI words it."""
    if not raw.strip():
        raise ValidationFailed([FieldError("missing", ["body"], "Field required", None)])
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        error = FieldError(
            "json_invalid", ["body", 0], "JSON decode error", {}, {"error": str(exc)}
        )
        raise ValidationFailed([error]) from None
    if not isinstance(body, dict):
        message = "Input should be a valid dictionary or object to extract fields from"
        raise ValidationFailed([FieldError("model_attributes_type", ["body"], message, body)])
    return body


def check_fields(
    body: Mapping[str, Any],
    rules: Mapping[str, Rule],
    *,
    partial: bool = False,
    where: str = "body",
) -> dict[str, Any]:
    """The normalized value of every field `rules` names (fields it does not name are
    ignored, as pydantic does). Absent fields are MISSING; with `partial` (an update),
    absence is never an error. Raises ValidationFailed listing every bad field."""
    values: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, rule in rules.items():
        if name not in body:
            if rule.required and not partial:
                errors.append(FieldError("missing", [where, name], "Field required", dict(body)))
            values[name] = MISSING
            continue
        value = body[name]
        if value is None and rule.nullable:
            values[name] = None
            continue
        try:
            values[name] = _check(rule, value)
        except _Bad as bad:
            errors.append(FieldError(bad.type, [where, name], bad.msg, value, bad.ctx))
    if errors:
        raise ValidationFailed(errors)
    return values


def query_int(query: Mapping[str, str], name: str, rule: Rule, default: int) -> int:
    """An integer query parameter (FastAPI parses the text, then checks the bounds)."""
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        message = "Input should be a valid integer, unable to parse string as an integer"
        raise ValidationFailed(
            [FieldError("int_parsing", ["query", name], message, text)]
        ) from None
    checked: int = check_fields({name: value}, {name: rule}, where="query")[name]
    return checked


def value_error(message: str, loc: list[str | int], value: Any) -> ValidationFailed:
    """A rule over several fields failed (pydantic's model validator)."""
    return ValidationFailed([FieldError("value_error", loc, f"Value error, {message}", value)])


def parse_uuid(text: Any, loc: list[str | int]) -> str:
    """A UUID in its canonical spelling (a path parameter, or a field)."""
    try:
        canonical: str = _check(Rule("uuid"), text)
    except _Bad as bad:
        raise ValidationFailed([FieldError(bad.type, loc, bad.msg, text)]) from None
    return canonical


def format_datetime(moment: dt.datetime) -> str:
    """ISO 8601 as pydantic writes it: UTC as `Z`."""
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def utc_timestamp() -> str:
    """Now, as the records, events and documents carry it."""
    return format_datetime(dt.datetime.now(dt.UTC))


class _Bad(Exception):
    def __init__(self, type_: str, msg: str, ctx: dict[str, Any] | None = None) -> None:
        super().__init__(msg)
        self.type = type_
        self.msg = msg
        self.ctx = ctx


def _check(rule: Rule, value: Any) -> Any:
    match rule.kind:
        case "str":
            return _string(rule, value)
        case "int":
            return _integer(rule, value)
        case "bool":
            if not isinstance(value, bool):
                raise _Bad("bool_type", "Input should be a valid boolean")
            return value
        case "uuid":
            if not isinstance(value, str):
                raise _Bad("uuid_type", "UUID input should be a string, bytes or UUID object")
            try:
                return str(uuid.UUID(value))
            except ValueError:
                raise _Bad("uuid_parsing", "Input should be a valid UUID") from None
        case "datetime":
            if not isinstance(value, str):
                raise _Bad("datetime_type", "Input should be a valid datetime")
            try:
                return format_datetime(dt.datetime.fromisoformat(value))
            except ValueError:
                raise _Bad("datetime_parsing", "Input should be a valid datetime") from None
        case "object":
            if not isinstance(value, dict):
                raise _Bad("dict_type", "Input should be a valid dictionary")
            return value
        case "str_list":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _Bad("list_type", "Input should be a valid list of strings")
            return value
        case "choice":
            if value not in rule.choices:
                expected = " or ".join(f"'{c}'" for c in rule.choices)
                raise _Bad("enum", f"Input should be {expected}", {"expected": expected})
            return value
    raise AssertionError(rule.kind)


def _string(rule: Rule, value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad("string_type", "Input should be a valid string")
    if rule.min_length is not None and len(value) < rule.min_length:
        n = rule.min_length
        raise _Bad(
            "string_too_short",
            f"String should have at least {n} character{'s' if n != 1 else ''}",
            {"min_length": n},
        )
    if rule.max_length is not None and len(value) > rule.max_length:
        n = rule.max_length
        raise _Bad(
            "string_too_long",
            f"String should have at most {n} character{'s' if n != 1 else ''}",
            {"max_length": n},
        )
    if rule.hex_only:
        if any(c not in "0123456789abcdefABCDEF" for c in value):
            raise _Bad("value_error", "Value error, Checksum must be valid hexadecimal string")
        return value.lower()
    return value


def _integer(rule: Rule, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Bad("int_type", "Input should be a valid integer")
    if rule.ge is not None and value < rule.ge:
        raise _Bad(
            "greater_than_equal",
            f"Input should be greater than or equal to {rule.ge}",
            {"ge": rule.ge},
        )
    if rule.le is not None and value > rule.le:
        raise _Bad(
            "less_than_equal", f"Input should be less than or equal to {rule.le}", {"le": rule.le}
        )
    return value
