"""Request decoding that turns undecodable bytes into precise field violations.

protobuf refuses a proto3 ``string`` holding invalid UTF-8 with a bare DecodeError, which grpc would surface as
an opaque INTERNAL error. The request deserializer here catches that, walks the wire format once more against
the message descriptor and names every string field (``run_id``, ``action.name``, ``labels``, ``action.args``)
that holds invalid UTF-8, so the client gets INVALID_ARGUMENT with a BadRequest like any other bad input.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from gateway.errors import FieldViolation

M = TypeVar("M", bound=Message)

# Well-known JSON-like types: a violation inside them is reported at the field that holds them.
_OPAQUE = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes did not decode; carries the violations found."""

    violations: list[FieldViolation]


class _Malformed(Exception):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


_MAX_WIRE_DEPTH = 60  # below protobuf's own recursion limit (100), so we can name the field ourselves


def _walk(data: bytes, descriptor: Descriptor, path: str, out: list[tuple[str, str]], depth: int, inside: str) -> None:
    """Records (field, problem) for invalid UTF-8 and excessive nesting; ``inside`` names an opaque ancestor."""
    if depth > _MAX_WIRE_DEPTH:
        out.append((inside or path or "request", "is nested too deeply"))
        return
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            _, pos = _varint(data, pos)
            continue
        if wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
            continue
        if wire_type != 2:
            raise _Malformed
        length, pos = _varint(data, pos)
        payload, pos = data[pos : pos + length], pos + length
        if pos > len(data):
            raise _Malformed
        field = descriptor.fields_by_number.get(number)
        if field is None:
            continue
        name = f"{path}.{field.name}" if path else field.name
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                out.append((inside or name, "is not valid UTF-8"))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = field.message_type
            assert sub is not None
            # Problems inside a map or a Struct are reported at that field: inner paths would name protobuf
            # internals (fields, struct_value, ...), not the caller's data.
            opaque = inside or (name if sub.GetOptions().map_entry or sub.full_name in _OPAQUE else "")
            _walk(payload, sub, name, out, depth + 1, opaque)


def diagnose(data: bytes, descriptor: Descriptor) -> list[FieldViolation]:
    """Explains why ``data`` does not decode as ``descriptor``."""
    found: list[tuple[str, str]] = []
    try:
        _walk(data, descriptor, "", found, 0, "")
    except _Malformed:
        found = []
    if not found:
        return [FieldViolation("request", "is not a valid protobuf message")]
    return [FieldViolation(name, problem) for name, problem in dict.fromkeys(found)]


def top_level_varint(data: bytes, number: int) -> int | None:
    """The last value of varint field ``number`` at the top level of ``data`` (undecodable elsewhere), or None.

    Lets a stream name the message a request answers (its id) even when the rest of it does not decode.
    """
    pos, found = 0, None
    try:
        while pos < len(data):
            tag, pos = _varint(data, pos)
            field, wire_type = tag >> 3, tag & 7
            if wire_type == 0:
                value, pos = _varint(data, pos)
                if field == number:
                    found = value
            elif wire_type in (1, 5):
                pos += 8 if wire_type == 1 else 4
            elif wire_type == 2:
                length, pos = _varint(data, pos)
                pos += length
            else:
                return found
    except _Malformed:
        return found
    return found


def length_delimited_fields(data: bytes, number: int) -> list[bytes] | None:
    """The payloads of length-delimited field ``number`` at the top level of ``data``, in order; None when the
    top level itself does not parse (or field ``number`` is not length-delimited there).

    Lets a batch of messages be decoded one element at a time when the whole does not decode.
    """
    pos, found = 0, []
    try:
        while pos < len(data):
            tag, pos = _varint(data, pos)
            field, wire_type = tag >> 3, tag & 7
            if wire_type == 0:
                _, pos = _varint(data, pos)
            elif wire_type in (1, 5):
                pos += 8 if wire_type == 1 else 4
            elif wire_type == 2:
                length, pos = _varint(data, pos)
                if pos + length > len(data):
                    return None
                if field == number:
                    found.append(data[pos : pos + length])
                pos += length
            else:
                return None
            if field == number and wire_type != 2:
                return None
    except _Malformed:
        return None
    return found if pos == len(data) else None


def deserializer(message_type: type[M]) -> Callable[[bytes], M | Undecodable]:
    """A grpc request deserializer that never raises: undecodable bytes become :class:`Undecodable`."""

    def decode(data: bytes) -> M | Undecodable:
        try:
            return message_type.FromString(data)
        except DecodeError:
            return Undecodable(diagnose(data, typing.cast(Descriptor, message_type.DESCRIPTOR)))

    return decode
