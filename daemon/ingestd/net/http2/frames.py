"""HTTP/2 frames (RFC 9113 section 4 and 6): types, flags, error codes, settings, and packing.

Only what a client that sends header-only requests needs to write: its preface, SETTINGS and
their ACK, HEADERS/CONTINUATION, WINDOW_UPDATE, PING ACK, RST_STREAM and GOAWAY. Parsing lives
in connection.py, next to the state each frame changes.
"""

from __future__ import annotations

import enum
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADER_SIZE = 9
LAST_STREAM_ID = 2**31 - 1
MAX_WINDOW = 2**31 - 1
DEFAULT_MAX_FRAME_SIZE = 16_384  # RFC 9113 6.5.2: what every peer must accept
MAX_ALLOWED_FRAME_SIZE = 2**24 - 1
DEFAULT_WINDOW = 65_535

HEADER = struct.Struct(">HBBBI")  # 24-bit length (16 + 8 bits), type, flags, stream id
SETTING = struct.Struct(">HI")


class FrameType(enum.IntEnum):
    """RFC 9113 section 6."""

    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


# Frame types as plain ints, for the parser's hot path.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20


class ErrorCode(enum.IntEnum):
    """RFC 9113 section 7."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


def error_name(code: int) -> str:
    """An error code's name, or its hex value when it is not one RFC 9113 defines."""
    return ErrorCode(code).name if code in ErrorCode._value2member_map_ else hex(code)


class Setting(enum.IntEnum):
    """SETTINGS identifiers (RFC 9113 6.5.2)."""

    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


def pack(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame."""
    size = len(payload)
    return HEADER.pack(size >> 8, size & 0xFF, kind, flags, stream_id) + payload


def settings(values: dict[Setting, int]) -> bytes:
    """A SETTINGS frame carrying `values`."""
    return pack(SETTINGS, 0, 0, b"".join(SETTING.pack(k, v) for k, v in values.items()))


def settings_ack() -> bytes:
    """The acknowledgement of the peer's SETTINGS."""
    return pack(SETTINGS, ACK, 0)


def window_update(stream_id: int, increment: int) -> bytes:
    """Let the peer send `increment` more bytes on a stream (0: on the connection)."""
    return pack(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))


def rst_stream(stream_id: int, code: int) -> bytes:
    """End one stream with an error code."""
    return pack(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))


def goaway(last_stream_id: int, code: int) -> bytes:
    """End the connection, saying which of the peer's streams were processed (none, here)."""
    return pack(GOAWAY, 0, 0, last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big"))


def ping(payload: bytes, *, ack: bool = False) -> bytes:
    """A PING (8 opaque bytes), or the answer to one."""
    return pack(PING, ACK if ack else 0, 0, payload)
