"""Differential fuzzing: our HTTP/2 client `Connection` against h2's client, on the same bytes.

Each example opens the same requests on both clients (stream ids 1, 3, 5, 7), then feeds both
the same server byte stream: responses as a server sends them (HPACK from a real server-side
h2 connection, DATA from its send_data: 1xx heads, heads with and without content-length,
bodies in padded and unpadded pieces, trailers, RST_STREAM; header blocks split into
CONTINUATIONs, some padded or with priority fields) mixed with connection frames (PING,
SETTINGS, WINDOW_UPDATE, PRIORITY, ALTSVC and unknown types, GOAWAY), then mutated: bytes
flipped, frames dropped, duplicated, moved, retyped, re-flagged, moved to another stream,
given a wrong length, hand-built frames inserted, the stream cut short.

Both clients get the bytes one frame at a time (frames as the length fields delimit them), so
a disagreement is pinned to one frame. After every frame:

1. ours never raises: every input becomes events (and what it sends back fits them: an
   RST_STREAM per malformed response, one GOAWAY with the error, PING answered);
2. ours ends the connection exactly when h2 raises a ProtocolError, except where one of
   DIVERGENCES explains why; the first divergence ends the comparison (the two connections no
   longer share a state), and is counted (pytest --hypothesis-show-statistics);
3. every stream both consider sound has the same status, fields, body bytes, and ended or was
   reset alike. When only ours calls a response malformed (RFC 9113 8.1-8.3), an independent
   reading of the RFC (`Reference`) on what h2 delivered must agree, and the other way round.

Then ours alone gets the same bytes again, cut at random points, through the zero-copy
interface and with a small pin budget: it must come to the same result, and the body views it
handed out must still hold their bytes at the end.

Inputs stay inside the zone where both clients should agree: far fewer frames and bytes than
our junk budget (FREE_JUNK_FRAMES, FREE_JUNK_BYTES), bodies far below the stream and
connection windows (so flow control never binds, and acknowledging every DATA at once on both
sides is enough), at most 4 streams, all opened before the first frame arrives.

Beside it: test_each_divergence_is_real shows each divergence once, on a minimal input;
test_flow_control_binds_alike fills a stream window, which the fuzz zone never does; the bugs
this test found in ours stay as tests, once fixed.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import struct
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ingestd.net.http2 import frames
from ingestd.net.http2.connection import (
    CONNECTION_WINDOW,
    FREE_JUNK_BYTES,
    FREE_JUNK_FRAMES,
    MAX_CONTINUATIONS,
    MAX_FRAME_SIZE,
    MAX_HEADER_BLOCK,
    MAX_HEADER_LIST,
    MAX_INFORMATIONAL,
    READ_CHUNK,
    STREAM_WINDOW,
    Connection,
    ConnectionTerminated,
    DataReceived,
    GoAwayReceived,
    PinBudget,
    PingAcknowledged,
    ResponseReceived,
    SettingsReceived,
    StreamEnded,
    StreamMalformed,
    StreamReset,
)

AUTHORITY = "origin.test"
RST = frames.RST_STREAM
MASK31 = 2**31 - 1
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
ALTSVC = 0xA
ENABLE_CONNECT_PROTOCOL = 0x8
# Stream ids frames may name: ours (1, 3, 5, 7: fewer may be open), idle odd ones,
# server-initiated (even) ones, 0 and the largest.
SIDS = (0, 1, 3, 5, 7, 1, 3, 2, 4, 9, 11, MASK31)

# Where ours and h2 part, and why that is no bug in ours. Keys
# are what the comparison reports; test_each_divergence_is_real shows each one happening.
DIVERGENCES = {
    # --- ours stricter or more lenient by design (connection.py says so), or the RFC ---
    "stream-error": "ours makes a malformed response that stream's error, as RFC 9113 8.1.1 says "
    "(StreamMalformed, RST_STREAM); h2 ends the whole connection",
    "gave-up-stream": "ours ignores what comes on a stream it reset (RFC 9113 5.1, 'closed': MUST "
    "ignore); h2 still checks frames there, as the stream is still open to it",
    "h2-lenient-field": "h2 does not check this RFC 9113 8.1-8.3 rule (token field names, te in "
    "a response, a 3-digit :status, 101, the content-length of a response ended by HEADERS, "
    "our MAX_INFORMATIONAL); ours does, and the Reference agrees",
    "content-length-not-a-number": "ours leaves content-length values that are not 1-19 digits "
    "to the response checks above it (_response_head); h2 ends the connection on them",
    "max-continuations": "ours takes at most MAX_CONTINUATIONS CONTINUATION frames per header "
    "block (ENHANCE_YOUR_CALM); h2 takes 64",
    "max-header-block": "ours caps an encoded header block at MAX_HEADER_BLOCK as it arrives; "
    "h2 only bounds the decoded list, at the end of the block",
    "no-send-windows": "ours sends no DATA and keeps no send windows, so it ignores a "
    "WINDOW_UPDATE or SETTINGS that overflows them; h2 resets the stream or the connection",
    "data-after-end": "ours ends the connection on DATA after END_STREAM (RFC 9113 5.1, 'closed': "
    "a connection error STREAM_CLOSED); h2 only resets the stream",
    "rst-on-idle": "ours ends the connection on RST_STREAM for an idle stream (RFC 9113 6.4); "
    "h2 ignores it",
    "reset-stream": "ours ignores what comes on a stream the server reset (RFC 9113 5.1, "
    "'closed': at most a stream error); h2 ends the connection on a 1xx head there (its stream "
    "state machine has no transition for one on a closed stream)",
    "settings-in-order": "ours takes the settings of a frame in order and rejects an invalid "
    "value even when the same setting follows (RFC 9113 6.5); hyperframe keeps the last value "
    "of each only, so h2 never sees the invalid one",
    "push-promise-at-once": "ours rejects a PUSH_PROMISE (push is disabled) at once; h2 first "
    "collects its header block",
    # --- h2 (or hyperframe) stricter than RFC 9113, or parsing extensions ours ignores ---
    "priority-self-dependency": "h2 rejects a stream that depends on itself; ours ignores "
    "priority signals (RFC 9113 5.3.2)",
    "window-update-zero-on-stream": "a zero WINDOW_UPDATE increment on a stream is a stream "
    "error (RFC 9113 6.9); hyperframe makes it a connection error",
    "window-update-reserved-bit": "the reserved bit of a WINDOW_UPDATE increment MUST be ignored "
    "(RFC 9113 6.9); hyperframe counts it",
    "headers-padding-fills-frame": "HEADERS padding that leaves an empty fragment is valid "
    "(RFC 9113 6.2); hyperframe rejects it",
    "headers-padding-over-priority": "HEADERS padding that covers the priority fields is a "
    "PROTOCOL_ERROR (RFC 9113 6.2); hyperframe does not notice",
    "altsvc": "type 0xA is ALTSVC (RFC 7838) to h2, which rejects malformed ones; ours ignores it "
    "as a type it does not know (RFC 9113 5.5)",
    "enable-connect-protocol": "h2 checks SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441); ours "
    "ignores settings it does not use (RFC 9113 6.5.2)",
    "h2-closed-by-goaway": "h2's client takes no frame at all after a GOAWAY, where RFC 9113 6.8 "
    "lets the streams up to last_stream_id finish (the GOAWAY itself is compared)",
    "incomplete-last-frame": "the input ends inside a frame: ours checks a frame's header once "
    "the whole frame is there (except its length), h2 the other way round",
}

# --- the two clients and the server --------------------------------------------------------


def our_client(streams: int, pins: PinBudget | None = None) -> Connection:
    connection = Connection(AUTHORITY, pins)
    for i in range(streams):
        assert connection.send_request(b"GET", b"/v%d" % i, [(b"accept", b"*/*")]) == 2 * i + 1
    connection.data_to_send()
    return connection


def h2_client(streams: int) -> h2.connection.H2Connection:
    """h2's client, set as ours where it matters: frame size, stream window, header list size,
    no push, and a connection window as wide. Ours holds its SETTINGS in force from the start,
    so h2 is told at once that they were acknowledged (else a dropped or moved ACK would change
    its windows). Its MAX_CONCURRENT_STREAMS stays 100: h2 applies it to HEADERS on streams it
    has forgotten, which has nothing to do with streams the server opens."""
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, header_encoding=None, normalize_inbound_headers=False
        )
    )
    client.initiate_connection()
    codes = h2.settings.SettingCodes
    client.update_settings(
        {
            codes.ENABLE_PUSH: 0,
            codes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            codes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
            codes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        }
    )
    client.increment_flow_control_window(CONNECTION_WINDOW - frames.DEFAULT_WINDOW)
    for i in range(streams):
        sid = client.get_next_available_stream_id()
        assert sid == 2 * i + 1
        request = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", AUTHORITY.encode()),
            (b":path", b"/v%d" % i),
        ]
        client.send_headers(sid, request, end_stream=True)
    client.receive_data(frames.settings_ack())
    client.data_to_send()
    return client


def h2_server(streams: int) -> h2.connection.H2Connection:
    """A server that has our SETTINGS and requests (so it keeps to our windows and frame size);
    it checks nothing it sends, as plans ask for invalid fields on purpose."""
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    server.initiate_connection()
    server.receive_data(our_requests(streams))
    return server


def our_requests(streams: int) -> bytes:
    connection = Connection(AUTHORITY)
    for i in range(streams):
        connection.send_request(b"GET", b"/v%d" % i, [])
    return connection.data_to_send()


# --- frames ----------------------------------------------------------------------------------


def pack(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big")
    return head + payload


def split_frames(wire: bytes) -> list[bytes]:
    """The frames as their length fields delimit them (the last one may be cut short)."""
    out, pos = [], 0
    while pos < len(wire):
        end = len(wire)
        if end - pos >= 9:
            end = pos + 9 + int.from_bytes(wire[pos : pos + 3], "big")
        out.append(wire[pos:end])
        pos = end
    return out


@dataclasses.dataclass(frozen=True)
class Frame:
    length: int
    kind: int
    flags: int
    sid: int
    payload: bytes
    complete: bool

    @staticmethod
    def of(chunk: bytes) -> Frame | None:
        if len(chunk) < 9:
            return None
        length = int.from_bytes(chunk[:3], "big")
        sid = int.from_bytes(chunk[5:9], "big") & MASK31
        return Frame(length, chunk[3], chunk[4], sid, chunk[9:], len(chunk) == 9 + length)


def headers_frames(block: bytes, sid: int, end_stream: bool, framing: tuple) -> list[bytes]:
    """A header block as HEADERS (padded, with priority fields, if asked) and CONTINUATIONs."""
    pad, priority, pieces = framing
    room = MAX_FRAME_SIZE - 300
    pieces = max(pieces, -(-len(block) // room))
    step = max(-(-len(block) // pieces), 1)
    fragments = [block[i * step : (i + 1) * step] for i in range(pieces)]
    flags = END_STREAM if end_stream else 0
    first = fragments[0]
    if priority is not None:
        depends, weight, exclusive = priority
        first = struct.pack(">IB", depends | exclusive << 31, weight) + first
        flags |= PRIORITY_FLAG
    if pad is not None:
        first = bytes([pad]) + first + bytes(pad)
        flags |= PADDED
    if pieces == 1:
        flags |= END_HEADERS
    out = [pack(frames.HEADERS, flags, sid, first)]
    for i, fragment in enumerate(fragments[1:], 2):
        last = END_HEADERS if i == pieces else 0
        out.append(pack(frames.CONTINUATION, last, sid, fragment))
    return out


# --- what the server sends: plans --------------------------------------------------------------

GOOD_FIELDS = [
    (b"content-type", b"video/mp4"),
    (b"server", b"fuzz/1.0"),
    (b"etag", b'"5f3c-a1"'),
    (b"cache-control", b"max-age=60, public"),
    (b"date", b"Wed, 02 Dec 2026 02:00:00 GMT"),
    (b"x-request-id", b"1234567890"),
    (b"accept-ranges", b"bytes"),
    (b"set-cookie", b"a=b; Path=/"),
    (b"x-empty", b""),
    (b"x-obs-text", b"caf\xe9 \x80"),  # obs-text is a valid value
    (b"x-ctl", b"a\x01b"),  # RFC 9113 8.2.1 forbids NUL, CR and LF only
    (b"x-inner", b"a b\tc"),
    (b"!#$%&'*+-.^_`|~09az", b"every-token-character"),
]
BAD_FIELDS = [
    (b"Content-Type", b"upper"),
    (b"connection", b"close"),
    (b"keep-alive", b"timeout=5"),
    (b"proxy-connection", b"x"),
    (b"transfer-encoding", b"chunked"),
    (b"upgrade", b"h2c"),
    (b"te", b"trailers"),
    (b"te", b"gzip"),
    (b"x bad", b"1"),
    (b"x(y)", b"1"),
    (b"x:y", b"1"),
    (b"x\x7f", b"1"),
    (b"x\xe9", b"1"),
    (b"", b"empty-name"),
    (b"x-lead", b" v"),
    (b"x-trail", b"v\t"),
    (b"x-lf", b"a\nb"),
    (b"x-cr", b"a\rb"),
    (b"x-nul", b"a\x00b"),
    (b":path", b"/"),
    (b":status", b"200"),
]
S200 = (b":status", b"200")
STATUSES = [b"200", b"206", b"302", b"404", b"500", b"503", b"600", b"204", b"304"]
ODD_STATUSES = [b"101", b"099", b"000", b"1000", b"20", b"2x0", b"", b" 200", b"199"]
PATTERN = bytes(range(251)) * 80  # body bytes: where a piece came from shows in a diff


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in `n` draws, or less: hypothesis favours the first choice (False)."""
    return st.sampled_from([False] * (n - 1) + [True])


def body_bytes(sid: int, offset: int, size: int) -> bytes:
    start = (sid * 17 + offset) % 251
    return PATTERN[start : start + size]


@st.composite
def fields(draw: st.DrawFn, odd: bool) -> list[tuple[bytes, bytes]]:
    """Response fields; when `odd`, sometimes one that RFC 9113 8.2 forbids."""
    out = draw(st.lists(st.sampled_from(GOOD_FIELDS), max_size=3))
    if odd and draw(one_in(2)):
        out.insert(draw(st.integers(0, len(out))), draw(st.sampled_from(BAD_FIELDS)))
    return out


@st.composite
def framing(draw: st.DrawFn, sid: int, streams: int, odd: bool) -> tuple:
    """How a header block goes out: padding, priority fields, how many pieces (when `odd`,
    more than MAX_CONTINUATIONS, or depending on its own stream)."""
    shape = draw(st.integers(0, 15))
    pad = draw(st.integers(0, 40)) if shape & 1 else None
    priority = None
    if shape & 2:
        depends = draw(st.sampled_from([0, *range(1, 2 * streams, 2), 9]))
        if depends == sid and not odd:
            depends = 0
        priority = (depends, 15, bool(shape & 4))
    pieces = 1
    if shape & 8:
        pieces = draw(st.integers(2, MAX_CONTINUATIONS + (3 if odd else 1)))
    return pad, priority, pieces


CONTENT_LENGTH_MODES = ["more", "less", "nondigit", "plus", "twenty-digits", "same", "conflict"]


def content_length(mode: str, size: int) -> list[tuple[bytes, bytes]]:
    values = {
        "none": [],
        "exact": [b"%d" % size],
        "more": [b"%d" % (size + 7)],
        "less": [b"%d" % max(size - 3, 0)],
        "nondigit": [b"1e3"],
        "plus": [b"+%d" % size],
        "twenty-digits": [b"%020d" % size],
        "same": [b"%d" % size, b"%d" % size],
        "conflict": [b"%d" % size, b"%d" % (size + 1)],
    }[mode]
    return [(b"content-length", v) for v in values]


@st.composite
def stream_steps(draw: st.DrawFn, sid: int, streams: int, odd: bool) -> list[tuple]:
    """One response as the steps that send it: ("headers", sid, fields, end, framing),
    ("data", sid, size, pad, end) and ("rst", sid, code). When `odd`, it may break rules."""
    steps: list[tuple] = []
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        block = [(b":status", draw(st.sampled_from([b"100", b"103"]))), *draw(fields(odd))]
        steps.append(("headers", sid, block, False, draw(framing(sid, streams, odd))))
    status = draw(st.sampled_from(STATUSES + ODD_STATUSES if odd else STATUSES))
    sizes: list[int] = []
    if odd or status not in (b"204", b"304"):  # odd: content where there is none
        piece = st.one_of(st.integers(0, 40), st.integers(1000, 3000), st.just(MAX_FRAME_SIZE - 1))
        sizes = draw(st.lists(piece, max_size=4))
    pads = [draw(st.none() | st.integers(0, min(255, MAX_FRAME_SIZE - 1 - size))) for size in sizes]
    modes = ["none", "exact", "exact", "exact"]
    mode = draw(st.sampled_from(modes + CONTENT_LENGTH_MODES if odd else modes))
    if sid == 1 and draw(one_in(20)):
        # One field at the header list limit, or one byte over (RFC 7541 sizes).
        room = MAX_HEADER_LIST - (32 + 7 + len(status)) - (32 + 5)
        extra = [(b"x-big", b"v" * draw(st.sampled_from([12_000, room, room + 1])))]
    else:
        extra = draw(fields(odd))
    at = draw(st.integers(0, len(extra)))
    head = [(b":status", status), *extra[:at], *content_length(mode, sum(sizes)), *extra[at:]]
    ending = draw(st.sampled_from(["end", "end", "end", "trailers", "open", "reset"]))
    end = not sizes and ending == "end"
    steps.append(("headers", sid, head, end, draw(framing(sid, streams, odd))))
    for i, (size, pad) in enumerate(zip(sizes, pads, strict=True)):
        steps.append(("data", sid, size, pad, ending == "end" and i == len(sizes) - 1))
    if ending == "trailers":
        trailers = [(b"x-checksum", b"sha256=abc"), *draw(fields(odd))]
        steps.append(("headers", sid, trailers, True, draw(framing(sid, streams, odd))))
    if ending == "reset":
        cut = draw(st.integers(0, len(steps)))
        steps = [*steps[:cut], ("rst", sid, draw(st.sampled_from([0, 1, 2, 7, 8, 0xFF])))]
    return steps


SETTING_VALUES = {
    1: st.integers(0, 8192),  # HEADER_TABLE_SIZE
    2: st.just(0),  # ENABLE_PUSH
    3: st.integers(0, 200),  # MAX_CONCURRENT_STREAMS
    4: st.integers(0, 2**20),  # INITIAL_WINDOW_SIZE
    5: st.integers(MAX_FRAME_SIZE, 2**24 - 1),  # MAX_FRAME_SIZE
    6: st.integers(0, 2**20),  # MAX_HEADER_LIST_SIZE
    ENABLE_CONNECT_PROTOCOL: st.integers(0, 1),
    0x10: st.integers(0, 2**32 - 1),  # unknown
}


@st.composite
def settings_payload(draw: st.DrawFn, valid: bool) -> bytes:
    out = b""
    for _ in range(draw(st.integers(1 if valid else 0, 3))):
        key = draw(st.sampled_from(sorted(SETTING_VALUES)))
        if valid:
            value = draw(SETTING_VALUES[key])
        else:
            value = draw(st.sampled_from([0, 1, 2, 2**14 - 1, 2**24, 2**31, 2**32 - 1]))
        out += struct.pack(">HI", key, value)
    return out


@st.composite
def connection_frame(draw: st.DrawFn, streams: int) -> bytes:
    """A valid frame a server may send at any time."""
    opened = list(range(1, 2 * streams, 2))
    kind = draw(st.sampled_from(["ping", "ping-ack", "settings", "window", "priority", "other"]))
    if kind in ("ping", "ping-ack"):
        return frames.ping(draw(st.binary(min_size=8, max_size=8)), ack=kind == "ping-ack")
    if kind == "settings":
        return pack(frames.SETTINGS, 0, 0, draw(settings_payload(valid=True)))
    if kind == "window":
        sid = draw(st.sampled_from([0, *opened]))
        return frames.window_update(sid, draw(st.integers(1, 2**16)))
    if kind == "priority":
        sid = draw(st.sampled_from([*opened, 9, 11]))
        depends = draw(st.sampled_from([d for d in [0, *opened] if d != sid]))
        return pack(frames.PRIORITY, 0, sid, struct.pack(">IB", depends, draw(st.integers(0, 255))))
    if draw(one_in(4)):  # an ALTSVC (RFC 7838) on stream 0
        origin = b"https://origin.test"
        value = b'h2="alt.origin.test:443"'
        return pack(ALTSVC, 0, 0, struct.pack(">H", len(origin)) + origin + value)
    return pack(
        draw(st.integers(0xB, 0xFF)),
        draw(st.integers(0, 255)),
        draw(st.sampled_from(SIDS)),
        draw(st.binary(max_size=20)),
    )


@st.composite
def hand_built_frame(draw: st.DrawFn) -> bytes:
    """A frame a correct server would not send, or not there."""
    kind = draw(st.integers(0, 0xC))
    flags = draw(st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x24, 0xFF]) | st.integers(0, 255))
    sid = draw(st.sampled_from(SIDS))
    if kind == frames.SETTINGS and draw(st.booleans()):
        return pack(kind, flags & ~ACK, 0, draw(settings_payload(valid=False)))
    if kind == frames.WINDOW_UPDATE and draw(st.booleans()):
        increment = draw(st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**31 + 5, 2**32 - 1]))
        return pack(kind, 0, sid, increment.to_bytes(4, "big"))
    if kind == frames.PRIORITY and draw(st.booleans()):
        return pack(kind, 0, sid, struct.pack(">IB", sid | draw(st.sampled_from([0, 2**31])), 7))
    if kind == frames.GOAWAY and draw(st.booleans()):
        last = draw(st.sampled_from([0, 1, 3, 5, 2**31 | 1, MASK31]))
        payload = struct.pack(">II", last, draw(st.sampled_from([0, 1, 2, 0xB, 0x1234])))
        return pack(kind, 0, 0, payload + draw(st.binary(max_size=8)))
    sizes = {frames.PING: 8, frames.RST_STREAM: 4, frames.WINDOW_UPDATE: 4, frames.PRIORITY: 5}
    size = sizes.get(kind, 8 if kind == frames.GOAWAY else draw(st.integers(0, 24)))
    if draw(one_in(4)):
        size = draw(st.integers(0, 24))
    return pack(kind, flags, sid, draw(st.binary(min_size=size, max_size=size)))


def mutations() -> st.SearchStrategy[tuple]:
    where = st.integers(0, 10_000)  # frames and bytes are picked modulo what there is
    return st.one_of(
        st.tuples(st.just("flip"), where, where, st.integers(1, 255)),
        st.tuples(st.just("drop"), where),
        st.tuples(st.just("duplicate"), where, where),
        st.tuples(st.just("move"), where, where),
        st.tuples(st.just("flags"), where, st.sampled_from([1, 4, 8, 0x20, 0x80])),
        st.tuples(st.just("stream"), where, st.sampled_from(SIDS)),
        st.tuples(st.just("length"), where, st.sampled_from([-9, -1, 1, 5, -MAX_FRAME_SIZE - 1])),
        st.tuples(st.just("type"), where, st.integers(0, 0xC)),
        st.tuples(st.just("insert"), where, hand_built_frame()),
        st.tuples(st.just("cut"), where),
    )


def mutate(pieces: list[bytes], changes: tuple[tuple, ...]) -> list[bytes]:
    pieces = list(pieces)
    for op, where, *args in changes:
        if not pieces:
            break
        i = where % len(pieces)
        frame = bytearray(pieces[i])
        if len(frame) < 9 and op in ("flip", "flags", "stream", "type", "length"):
            continue  # the stream was cut inside a frame header
        if op == "flip":
            frame[args[0] % len(frame)] ^= args[1]
        elif op == "flags":
            frame[4] ^= args[0]
        elif op == "stream":
            frame[5:9] = args[0].to_bytes(4, "big")
        elif op == "type":
            frame[3] = args[0]
        elif op == "length":  # negative past the frame size: that length, over the limit
            length = int.from_bytes(frame[:3], "big") + args[0]
            length = -args[0] if args[0] < -MAX_FRAME_SIZE else max(length, 0)
            frame[:3] = length.to_bytes(3, "big")
        if op in ("flip", "flags", "stream", "type", "length"):
            pieces[i] = bytes(frame)
        elif op == "drop":
            del pieces[i]
        elif op == "duplicate":
            pieces.insert(args[0] % (len(pieces) + 1), pieces[i])
        elif op == "move":
            moved = pieces.pop(i)
            pieces.insert(args[0] % (len(pieces) + 1), moved)
        elif op == "insert":
            pieces.insert(i, args[0])
        else:
            wire = b"".join(pieces)
            pieces = [wire[: where % (len(wire) + 1)]] if wire else []
    return pieces


@dataclasses.dataclass(frozen=True)
class Plan:
    streams: int
    steps: tuple[tuple, ...]  # stream steps and ("frame", bytes), in the order they go out
    changes: tuple[tuple, ...]  # mutations
    cuts: tuple[int, ...]  # where the second run cuts the bytes (positions modulo length)
    pin_limit: int | None  # the second run's pin budget (None: the default)

    def __repr__(self) -> str:
        """Readable when hypothesis shows a failing plan: long byte strings shortened."""

        def short(value: object) -> str:
            if isinstance(value, bytes) and len(value) > 80:
                return f"{value[:40]!r}...({len(value)} bytes)"
            if isinstance(value, list):
                return "[" + ", ".join(map(short, value)) + "]"
            if isinstance(value, tuple):
                return "(" + ", ".join(map(short, value)) + ("," if len(value) == 1 else "") + ")"
            return repr(value)

        steps = "".join(f"\n        {short(step)}," for step in self.steps)
        return (
            f"Plan(\n    {self.streams},\n    ({steps}\n    ),\n    {short(self.changes)},"
            f"\n    {self.cuts},\n    {self.pin_limit},\n)"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    streams = draw(st.integers(1, 4))
    odd = draw(one_in(4))  # responses that break rules; else mutations only
    pending = [
        collections.deque(draw(stream_steps(2 * i + 1, streams, odd))) for i in range(streams)
    ]
    order: list[tuple] = []
    while live := [q for q in pending if q]:
        order.append(live[draw(st.integers(0, len(live) - 1))].popleft())
    for frame in draw(st.lists(connection_frame(streams), max_size=4)):
        order.insert(draw(st.integers(0, len(order))), ("frame", frame))
    if draw(one_in(8)):  # a GOAWAY, most often last
        last = draw(st.sampled_from([0, *range(1, 2 * streams, 2)]))
        goaway = ("frame", frames.goaway(last, draw(st.sampled_from([0, 0, 2, 0xB]))))
        order.insert(draw(st.sampled_from([len(order)] * 3 + [0, len(order) // 2])), goaway)
    changes = draw(st.lists(mutations(), min_size=1, max_size=4)) if draw(st.booleans()) else []
    cuts = draw(st.lists(st.integers(0, 2**20), max_size=12))
    pin_limit = draw(st.sampled_from([None, 0, READ_CHUNK, 2 * READ_CHUNK]))
    return Plan(streams, tuple(order), tuple(changes), tuple(cuts), pin_limit)


def server_frames(plan: Plan) -> list[bytes]:
    """What the plan's server sends, as frames, before mutation. Header blocks are HPACK-coded
    by the server's encoder (so its dynamic table evolves as a server's does) and framed here."""
    server = h2_server(plan.streams)
    out = split_frames(server.data_to_send())  # its SETTINGS and the ACK of ours
    sent: dict[int, int] = collections.Counter()
    for step in plan.steps:
        if step[0] == "frame":
            out.append(step[1])
        elif step[0] == "headers":
            _, sid, block, end, how = step
            # Huffman codes for most; not for huge blocks, as the Python coder is slow.
            huffman = sum(len(v) for _, v in block) < 4096
            out += headers_frames(server.encoder.encode(block, huffman), sid, end, how)
        elif step[0] == "data":
            _, sid, size, pad, end = step
            server.send_data(sid, body_bytes(sid, sent[sid], size), end_stream=end, pad_length=pad)
            sent[sid] += size
            out += split_frames(server.data_to_send())
        else:
            server.reset_stream(step[1], step[2])
            out += split_frames(server.data_to_send())
    return out


def wire_of(plan: Plan) -> bytes:
    wire = b"".join(mutate(server_frames(plan), plan.changes))
    # The zone where both should agree: our junk budget can never bind.
    assert len(wire) < FREE_JUNK_BYTES and len(split_frames(wire)) < FREE_JUNK_FRAMES // 4
    return wire


# --- an independent reading of RFC 9113 8.1-8.3 (and our documented limits) ---------------

TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")  # RFC 9110 5.6.2
CONNECTION_SPECIFIC = frozenset(  # RFC 9113 8.2.2 (te is for requests only)
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"]
)


def field_problem(name: bytes, value: bytes) -> str:
    if not name or not set(name) <= TCHAR:
        return "field name is not a lower-case token"
    if name in CONNECTION_SPECIFIC:
        return "connection-specific field"
    if any(c in b"\0\r\n" for c in value) or {value[:1], value[-1:]} & {b" ", b"\t"}:
        return "invalid field value"
    return ""


def a_length(value: bytes) -> bool:
    """A content-length value ours reads as a length (others it leaves to the layer above)."""
    return value.isdigit() and len(value) <= 19


@dataclasses.dataclass
class Reference:
    """Whether what h2 delivered for one stream makes a malformed response."""

    informational: int = 0
    status: bytes | None = None  # of the final response
    expected: int | None = None
    received: int = 0
    problem: str = ""

    def head(self, block: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        pseudo = [name for name, _ in block if name[:1] == b":"]
        if pseudo != [b":status"] or block[0][0] != b":status":
            return self.fail("pseudo-header fields")
        status = block[0][1]
        if len(status) != 3 or not status.isdigit() or status[:1] == b"0":
            return self.fail(f"status {status!r} is not 3 digits from 100 on (RFC 9110 15)")
        for name, value in block[1:]:
            if problem := field_problem(name, value):
                return self.fail(problem)
        if status[:1] == b"1":
            self.informational += 1
            if status == b"101" or end_stream or self.informational > MAX_INFORMATIONAL:
                return self.fail("informational response")  # 101: RFC 9113 8.6
            return None
        self.status = status
        lengths = {value for name, value in block if name == b"content-length"}
        if lengths and all(a_length(v) for v in lengths):
            if len({int(v) for v in lengths}) > 1:
                return self.fail("conflicting content-length")
            self.expected = int(lengths.pop())
        if end_stream:
            self.end()
        return None

    def trailers(self, block: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        if not end_stream:
            return self.fail("trailers without END_STREAM")
        for name, value in block:
            if name[:1] == b":" or field_problem(name, value):
                return self.fail("trailer fields")
        return self.end()

    def data(self, size: int) -> None:
        self.received += size
        if self.status in (b"204", b"304") and self.received:
            self.fail("content in a 204 or 304 (RFC 9110 6.4.1)")
        if self.expected is not None and self.received > self.expected:
            self.fail("a body longer than its content-length")

    def end(self) -> None:
        if self.expected is None or self.received == self.expected:
            return
        if self.status in (b"204", b"304") and not self.received:
            return  # RFC 9113 8.1.1: no content, whatever the content-length (RFC 9110 6.4.1)
        self.fail("a body shorter than its content-length")

    def fail(self, problem: str) -> None:
        self.problem = self.problem or problem


# --- what each client made of it ----------------------------------------------------------------


@dataclasses.dataclass
class Stream:
    status: int | bytes | None = None
    fields: tuple[tuple[bytes, bytes], ...] | None = None
    body: bytearray = dataclasses.field(default_factory=bytearray)
    end: str | None = None  # "ended", "reset <code>" or "malformed"

    def summary(self) -> tuple:
        return self.status, self.fields, bytes(self.body), self.end


@dataclasses.dataclass
class View:
    streams: dict[int, Stream]
    goaway: tuple[int, int] | None = None
    pings: list[bytes] = dataclasses.field(default_factory=list)
    terminated: tuple[int, str] | None = None

    @staticmethod
    def of(streams: int) -> View:
        return View({2 * i + 1: Stream() for i in range(streams)})

    def summary(self) -> tuple:
        streams = tuple((sid, s.summary()) for sid, s in sorted(self.streams.items()))
        return streams, self.goaway, tuple(self.pings), self.terminated


def apply_ours(view: View, events: list, connection: Connection, keep: list | None = None) -> None:
    """Our events into `view`, checking they make sense one after the other."""
    for e in events:
        if isinstance(e, ResponseReceived):
            stream = view.streams[e.stream_id]
            assert stream.status is None and stream.end is None, (stream, e)
            stream.status, stream.fields = e.status, tuple(e.headers)
        elif isinstance(e, DataReceived):
            stream = view.streams[e.stream_id]
            assert stream.status is not None and stream.end is None, (stream, e)
            assert e.size == sum(len(c) for c in e.chunks) > 0, e
            stream.body += b"".join(bytes(c) for c in e.chunks)
            if keep is not None:
                keep += [(e.stream_id, c) for c in e.chunks]
            connection.acknowledge(e.stream_id, e.size)
        elif isinstance(e, StreamEnded | StreamReset | StreamMalformed):
            stream = view.streams[e.stream_id]
            assert stream.end is None, (stream, e)
            if isinstance(e, StreamEnded):
                stream.end = "ended"
            elif isinstance(e, StreamReset):
                stream.end = f"reset {e.code}"
            else:
                stream.end = "malformed"
        elif isinstance(e, GoAwayReceived):
            view.goaway = (e.last_stream_id, e.code)
        elif isinstance(e, PingAcknowledged):
            view.pings.append(e.payload)
        elif isinstance(e, ConnectionTerminated):
            assert view.terminated is None and e is events[-1], events
            view.terminated = (e.code, e.message)
        else:
            assert isinstance(e, SettingsReceived), e


H2_OTHER_EVENTS = (
    h2.events.RemoteSettingsChanged,
    h2.events.SettingsAcknowledged,
    h2.events.PingReceived,
    h2.events.WindowUpdated,
    h2.events.PriorityUpdated,
    h2.events.UnknownFrameReceived,
    h2.events.AlternativeServiceAvailable,
)


def check_output(out: bytes, events: list, chunk: bytes, was_terminated: bool) -> None:
    """What ours sends back after a frame: an RST_STREAM PROTOCOL_ERROR per malformed
    response, one GOAWAY with the error last when it ends the connection and nothing after,
    a PING answered."""
    if was_terminated:
        assert not out and not events, (out, events)
        return
    sent = [f for f in map(Frame.of, split_frames(out)) if f is not None]
    resets = {(f.sid, int.from_bytes(f.payload, "big")) for f in sent if f.kind == RST}
    for e in events:
        if isinstance(e, StreamMalformed):
            assert (e.stream_id, frames.ErrorCode.PROTOCOL_ERROR) in resets, (e, sent)
        elif isinstance(e, ConnectionTerminated):
            goaways = [f for f in sent if f.kind == frames.GOAWAY]
            assert len(goaways) == 1 and goaways[0] is sent[-1], sent
            assert int.from_bytes(goaways[0].payload[4:8], "big") == e.code, (e, sent)
    frame = Frame.of(chunk)
    ended = any(isinstance(e, ConnectionTerminated) for e in events)
    pinged = frame and frame.complete and frame.kind == frames.PING and not frame.flags & ACK
    if pinged and not ended:  # a valid PING (else the connection ended): answered
        assert frames.ping(frame.payload, ack=True) in out, out


# --- the differential run ---------------------------------------------------------------------


class Divergence(Exception):
    """A documented divergence (a key of DIVERGENCES): the comparison ends there."""

    def __init__(self, key: str) -> None:
        assert key in DIVERGENCES, key
        super().__init__(key)
        self.key = key


class Run:
    """Ours and h2 on the same bytes, one frame at a time."""

    def __init__(self, streams: int, wire: bytes) -> None:
        self.streams, self.wire = streams, wire
        self.ours, self.client = our_client(streams), h2_client(streams)
        self.mine, self.theirs = View.of(streams), View.of(streams)
        self.reference = {sid: Reference() for sid in self.mine.streams}
        self.excluded: dict[int, str] = {}  # streams no longer compared, and why
        self.notes: list[str] = []  # the divergences met, for hypothesis's statistics
        # The header block being received, as framed: its first frame, CONTINUATIONs, size.
        self.block: tuple[Frame, int, int] | None = None

    def run(self) -> str | None:
        """Returns what ended the comparison: a divergence, "both terminated", or None."""
        chunks = split_frames(self.wire)
        ended = None
        for k, chunk in enumerate(chunks):
            if ended is not None:
                self.feed_ours(chunk)  # ours alone, to the end of the bytes
                continue
            try:
                self.step(chunk, last=k == len(chunks) - 1)
            except Divergence as exc:
                ended = exc.key
                self.notes.append(f"divergence: {ended}")
            if ended is None and self.mine.terminated and self.theirs.terminated:
                ended = "both terminated"
        return ended

    def feed_ours(self, chunk: bytes) -> list:
        was_terminated = self.mine.terminated is not None
        try:
            events = self.ours.receive_data(chunk)
        except Exception as exc:
            raise AssertionError(f"Connection raised on {chunk[:60]!r}") from exc
        apply_ours(self.mine, events, self.ours)
        check_output(self.ours.data_to_send(), events, chunk, was_terminated)
        return events

    def step(self, chunk: bytes, last: bool) -> None:
        frame = Frame.of(chunk)
        before = {sid: stream.end for sid, stream in self.mine.streams.items()}
        block = self.track_block(frame)
        events = self.feed_ours(chunk)
        if frame is None or not frame.complete:
            assert last
            if bool(self.mine.terminated) != self.h2_raises(chunk):
                raise Divergence("incomplete-last-frame")
            return
        try:
            theirs = self.client.receive_data(chunk)
        except h2.exceptions.ProtocolError as exc:
            self.theirs.terminated = (int(exc.error_code), str(exc))
            if self.mine.terminated is None:
                self.h2_only(frame, block, exc, events, before)
            return
        if self.mine.terminated is not None:
            self.ours_only(frame, block, before)
        self.apply_h2(theirs)
        if self.mine.goaway or self.theirs.goaway:
            assert self.mine.goaway == self.theirs.goaway, (self.mine.goaway, self.theirs.goaway)
            # Ours: the streams above last_stream_id that were still going are over, and may
            # be sent again; the others carry on (h2 cannot say).
            last = self.mine.goaway[0]
            refused = {e.stream_id for e in events if isinstance(e, StreamReset) and e.retry_safe}
            assert refused == {sid for sid, end in before.items() if sid > last and end is None}
            raise Divergence("h2-closed-by-goaway")
        self.compare(events)

    def h2_raises(self, chunk: bytes) -> bool:
        try:
            self.client.receive_data(chunk)
        except h2.exceptions.ProtocolError:
            return True
        return False

    def track_block(self, frame: Frame | None) -> tuple[Frame, int, int] | None:
        """The header block `frame` is part of (HEADERS or PUSH_PROMISE, CONTINUATIONs)."""
        if frame is None or not frame.complete:
            return self.block
        if frame.kind in (frames.HEADERS, frames.PUSH_PROMISE) and self.block is None:
            self.block = (frame, 0, frame.length)
        elif frame.kind == frames.CONTINUATION and self.block is not None:
            first, continuations, size = self.block
            self.block = (first, continuations + 1, size + frame.length)
        else:
            return self.block
        current = self.block
        if frame.flags & END_HEADERS or frame.sid != current[0].sid:
            self.block = None
        return current

    # --- one side ended the connection, the other did not: documented, or a failure ---

    def h2_only(self, frame: Frame, block, exc: Exception, events: list, before: dict) -> None:
        sid = frame.sid
        if any(isinstance(e, StreamMalformed) and e.stream_id == sid for e in events):
            raise Divergence("stream-error")
        if sid and before.get(sid) == "malformed":
            raise Divergence("gave-up-stream")
        reset = (before.get(sid) or "").startswith("reset")
        if reset and frame.kind in (frames.HEADERS, frames.CONTINUATION):
            raise Divergence("reset-stream")
        if sid in self.excluded:
            raise Divergence(self.excluded[sid])
        if "Invalid content-length header" in str(exc):
            raise Divergence("content-length-not-a-number")
        if isinstance(exc, h2.exceptions.InvalidBodyLengthError):
            fields = self.mine.streams[sid].fields or ()
            if any(n == b"content-length" and not a_length(v) for n, v in fields):
                raise Divergence("content-length-not-a-number")
        if frame.kind == ALTSVC:
            raise Divergence("altsvc")
        if frame.kind == frames.PRIORITY and frame.length == 5 and depends_on(frame.payload) == sid:
            raise Divergence("priority-self-dependency")
        if block is not None and frame.flags & END_HEADERS and self_dependent(block[0]):
            raise Divergence("priority-self-dependency")
        if headers_padding(frame) == "fills":
            raise Divergence("headers-padding-fills-frame")
        if frame.kind == frames.WINDOW_UPDATE and frame.length == 4:
            increment = int.from_bytes(frame.payload, "big")
            if sid and not increment & MASK31:
                raise Divergence("window-update-zero-on-stream")
            if increment > MASK31:
                raise Divergence("window-update-reserved-bit")
            if isinstance(exc, h2.exceptions.FlowControlError):
                raise Divergence("no-send-windows")
        if frame.kind == frames.SETTINGS and not frame.flags & ACK and frame.length % 6 == 0:
            if isinstance(exc, h2.exceptions.FlowControlError):
                raise Divergence("no-send-windows")  # INITIAL_WINDOW_SIZE overflows a window
            for key, value in struct.iter_unpack(">HI", frame.payload):
                if key == ENABLE_CONNECT_PROTOCOL and value > 1:
                    raise Divergence("enable-connect-protocol")
        raise AssertionError(f"h2 ended the connection ({exc!r}), ours did not: {frame}, {events}")

    def ours_only(self, frame: Frame, block, before: dict) -> None:
        sid = frame.sid
        if sid in self.excluded and self.mine.streams[sid].end != "malformed":
            raise Divergence(self.excluded[sid])  # a stream ours still takes for live
        if block is not None:
            first, continuations, size = block
            if continuations > MAX_CONTINUATIONS:
                raise Divergence("max-continuations")
            if size > MAX_HEADER_BLOCK:
                raise Divergence("max-header-block")
            if first.kind == frames.PUSH_PROMISE and not frame.flags & END_HEADERS:
                raise Divergence("push-promise-at-once")
        if headers_padding(frame) == "over-priority":
            raise Divergence("headers-padding-over-priority")
        if frame.kind == frames.DATA and before.get(sid) == "ended":
            raise Divergence("data-after-end")
        idle = sid % 2 == 0 or sid > 2 * self.streams
        if frame.kind == frames.RST_STREAM and sid and idle:
            raise Divergence("rst-on-idle")
        if frame.kind == frames.SETTINGS and frame.length % 6 == 0:
            keys = [key for key, _ in struct.iter_unpack(">HI", frame.payload)]
            if len(set(keys)) < len(keys):
                raise Divergence("settings-in-order")
        raise AssertionError(f"ours ended the connection ({self.mine.terminated}), h2 not: {frame}")

    # --- both carry on: the streams must agree ---

    def apply_h2(self, events: list) -> None:
        for e in events:
            sid = getattr(e, "stream_id", None)
            stream, reference = self.theirs.streams.get(sid), self.reference.get(sid)
            if isinstance(e, h2.events.InformationalResponseReceived):
                reference.head(list(e.headers), end_stream=False)
            elif isinstance(e, h2.events.ResponseReceived):
                block = list(e.headers)
                reference.head(block, end_stream=e.stream_ended is not None)
                status = block[0][1]  # h2 checked it is the first field
                stream.status = int(status) if len(status) == 3 and status.isdigit() else status
                stream.fields = tuple((n, v) for n, v in block if n[:1] != b":")
            elif isinstance(e, h2.events.TrailersReceived):
                reference.trailers(list(e.headers), end_stream=e.stream_ended is not None)
            elif isinstance(e, h2.events.DataReceived):
                stream.body += e.data
                reference.data(len(e.data))
                self.client.acknowledge_received_data(e.flow_controlled_length, sid)
            elif isinstance(e, h2.events.StreamEnded):
                stream.end = "ended"
                reference.end()
            elif isinstance(e, h2.events.StreamReset):
                if e.remote_reset:
                    stream.end = f"reset {int(e.error_code)}"
                else:  # the server overflowed h2's send window for the stream
                    assert e.error_code == h2.errors.ErrorCodes.FLOW_CONTROL_ERROR, e
                    self.exclude(sid, "no-send-windows")
            elif isinstance(e, h2.events.ConnectionTerminated):
                # hyperframe keeps the reserved bit of last_stream_id; it MUST be ignored.
                self.theirs.goaway = (e.last_stream_id & MASK31, int(e.error_code))
            elif isinstance(e, h2.events.PingAckReceived):
                self.theirs.pings.append(e.ping_data)
            else:
                assert isinstance(e, H2_OTHER_EVENTS), e

    def exclude(self, sid: int, key: str) -> None:
        assert key in DIVERGENCES, key
        self.notes.append(f"stream divergence: {key}")
        self.excluded.setdefault(sid, key)

    def compare(self, events: list) -> None:
        malformed = {e.stream_id for e in events if isinstance(e, StreamMalformed)}
        for sid, mine in self.mine.streams.items():
            if sid in self.excluded:
                continue
            theirs, reference = self.theirs.streams[sid], self.reference[sid]
            if sid in malformed:
                if reference.problem:
                    self.exclude(sid, "h2-lenient-field")
                else:
                    raise AssertionError(f"ours: stream {sid} malformed; h2: {theirs.summary()}")
            else:
                assert not reference.problem, (sid, reference.problem, mine.summary())
                assert mine.summary() == theirs.summary(), (sid, mine.summary(), theirs.summary())
        assert self.mine.pings == self.theirs.pings, (self.mine.pings, self.theirs.pings)


def depends_on(priority: bytes) -> int:
    return int.from_bytes(priority[:4], "big") & MASK31


def self_dependent(first: Frame) -> bool:
    if first.kind != frames.HEADERS or not first.flags & PRIORITY_FLAG:
        return False
    start = 1 if first.flags & PADDED else 0
    return len(first.payload) >= start + 5 and depends_on(first.payload[start:]) == first.sid


def headers_padding(frame: Frame) -> str:
    """Where RFC 9113 6.2 and hyperframe part on a HEADERS frame's padding: "fills" (valid,
    hyperframe rejects it), "over-priority" (invalid, hyperframe misses it), or ""."""
    if frame.kind != frames.HEADERS or not frame.flags & PADDED or not frame.length:
        return ""
    length, pad = frame.length, frame.payload[0]
    priority = 5 if frame.flags & PRIORITY_FLAG else 0
    rfc = pad > length - 1 - priority
    hyperframe = (priority and length - 1 < 5) or (pad and pad >= length - 1)
    if hyperframe and not rfc:
        return "fills"
    return "over-priority" if rfc and not hyperframe else ""


def run_cut(plan: Plan, wire: bytes) -> View:
    """Ours alone on the same bytes, cut where the plan says, through the zero-copy interface,
    keeping every body chunk it hands out to the end."""
    budget = PinBudget() if plan.pin_limit is None else PinBudget(plan.pin_limit)
    connection = our_client(plan.streams, budget)
    view, kept = View.of(plan.streams), []
    cuts = sorted({c % (len(wire) + 1) for c in plan.cuts} | {0, len(wire)})
    for start, end in itertools.pairwise(cuts):
        piece = memoryview(wire)[start:end]
        while piece and view.terminated is None:
            with connection.receive_buffer() as target:
                n = min(len(target), len(piece))
                target[:n] = piece[:n]
            apply_ours(view, connection.received(n), connection, kept)
            piece = piece[n:]
            assert budget.pinned <= budget.limit, (budget.pinned, budget.limit)
        connection.data_to_send()
    bodies: dict[int, bytearray] = collections.defaultdict(bytearray)
    for sid, chunk in kept:  # views handed out long ago still hold their bytes
        bodies[sid] += chunk
    assert {sid: bytes(bodies[sid]) for sid in view.streams} == {
        sid: bytes(stream.body) for sid, stream in view.streams.items()
    }
    kept.clear()
    connection.forget_buffers()
    assert budget.pinned == 0, budget.pinned
    return view


@settings(
    max_examples=800,
    deadline=None,
    derandomize=True,
    database=None,
)
@given(plans())
def test_connection_agrees_with_h2(plan: Plan) -> None:
    wire = wire_of(plan)
    run = Run(plan.streams, wire)
    event(f"ended by: {run.run()}")
    for note in run.notes:
        event(note)
    assert run_cut(plan, wire).summary() == run.mine.summary()


def test_plain_responses_agree() -> None:
    """Not vacuous: plain responses come through whole, and the same, on both clients."""
    plan = Plan(
        2,
        (
            ("headers", 1, [S200, (b"content-length", b"5")], False, (None, None, 1)),
            ("headers", 3, [(b":status", b"404"), (b"server", b"x")], False, (3, None, 4)),
            ("data", 1, 5, 2, True),
            ("frame", frames.ping(b"12345678")),
            ("data", 3, 0, None, True),
        ),
        (),
        (7, 100, 101),
        0,
    )
    run = Run(plan.streams, wire_of(plan))
    assert run.run() is None
    assert run.mine.summary() == run.theirs.summary()
    assert run.mine.streams[1].summary() == (
        200,
        ((b"content-length", b"5"),),
        body_bytes(1, 0, 5),
        "ended",
    )
    assert run.mine.streams[3].summary() == (404, ((b"server", b"x"),), b"", "ended")
    assert run_cut(plan, run.wire).summary() == run.mine.summary()


# --- each divergence, shown once: it is real, and the run names it -----------------------------


def headers(sid: int, block: bytes, flags: int = 0) -> bytes:
    return pack(frames.HEADERS, END_HEADERS | flags, sid, block)


Encode = Callable[..., bytes]  # fields -> a header block, from the server's encoder
DIVERGENCE_CASES: dict[str, Callable[[Encode], list[bytes]]] = {
    "stream-error": lambda hb: [headers(1, hb(S200, (b"connection", b"close")))],
    "gave-up-stream": lambda hb: [
        headers(1, hb(S200, (b"te", b"trailers"), (b"content-length", b"5"))),
        pack(frames.DATA, END_STREAM, 1, b"abc"),
    ],
    "h2-lenient-field": lambda hb: [headers(1, hb(S200, (b"x(y)", b"1")), END_STREAM)],
    "content-length-not-a-number": lambda hb: [headers(1, hb(S200, (b"content-length", b"1e3")))],
    "max-continuations": lambda hb: headers_frames(
        hb(S200, (b"server", b"x" * 40)), 1, True, (None, None, MAX_CONTINUATIONS + 2)
    ),
    "max-header-block": lambda hb: [
        pack(frames.HEADERS, 0, 1, bytes(16_000)),
        *[pack(frames.CONTINUATION, 0, 1, bytes(16_000))] * 4,
    ],
    "no-send-windows": lambda hb: [frames.window_update(0, MASK31)],
    "data-after-end": lambda hb: [headers(1, hb(S200), END_STREAM), pack(frames.DATA, 0, 1, b"x")],
    "rst-on-idle": lambda hb: [frames.rst_stream(3, frames.ErrorCode.CANCEL)],
    "reset-stream": lambda hb: [
        frames.rst_stream(1, frames.ErrorCode.CANCEL),
        headers(1, hb((b":status", b"103"))),
    ],
    "settings-in-order": lambda hb: [pack(frames.SETTINGS, 0, 0, struct.pack(">HIHI", 2, 5, 2, 0))],
    "push-promise-at-once": lambda hb: [
        pack(frames.PUSH_PROMISE, 0, 1, struct.pack(">I", 2) + hb((b":method", b"GET")))
    ],
    "priority-self-dependency": lambda hb: [pack(frames.PRIORITY, 0, 1, struct.pack(">IB", 1, 15))],
    "window-update-zero-on-stream": lambda hb: [
        headers(1, hb(S200), END_STREAM),
        pack(frames.WINDOW_UPDATE, 0, 1, bytes(4)),
    ],
    "window-update-reserved-bit": lambda hb: [
        pack(frames.WINDOW_UPDATE, 0, 0, (2**31 + 5).to_bytes(4, "big"))
    ],
    "headers-padding-fills-frame": lambda hb: [pack(frames.HEADERS, PADDED, 1, b"\x03\0\0\0")],
    "headers-padding-over-priority": lambda hb: [
        pack(frames.HEADERS, PADDED | PRIORITY_FLAG, 1, b"\x03" + struct.pack(">IB", 0, 15) + b"xx")
    ],
    "altsvc": lambda hb: [pack(ALTSVC, 0, 0, b"\x00")],
    "enable-connect-protocol": lambda hb: [
        pack(frames.SETTINGS, 0, 0, struct.pack(">HI", ENABLE_CONNECT_PROTOCOL, 2))
    ],
    "h2-closed-by-goaway": lambda hb: [headers(1, hb(S200)), frames.goaway(1, 0)],
    "incomplete-last-frame": lambda hb: [pack(frames.PING, 0, 1, bytes(8))[:12]],
}


def case_wire(build: Callable[[Encode], list[bytes]]) -> bytes:
    server = h2_server(1)
    preface = server.data_to_send()
    return preface + b"".join(build(lambda *block: server.encoder.encode(list(block))))


@pytest.mark.parametrize("key", sorted(DIVERGENCES))
def test_each_divergence_is_real(key: str) -> None:
    """Each divergence the comparison allows happens as DIVERGENCES says, and is named so:
    if h2 changes (or ours does), this says which entry to revisit."""
    run = Run(1, case_wire(DIVERGENCE_CASES[key]))
    ended = run.run()
    assert ended == key or (ended is None and f"stream divergence: {key}" in run.notes), (
        ended,
        run.notes,
    )


@pytest.mark.parametrize("acknowledged", [False, True])
def test_flow_control_binds_alike(acknowledged: bool) -> None:
    """Outside the fuzz zone: a stream window filled by full frames. Both end the connection
    on the first byte past STREAM_WINDOW, and neither does when the body is acknowledged."""
    server = h2_server(1)
    head = server.data_to_send() + headers(1, server.encoder.encode([S200]))
    full = pack(frames.DATA, 0, 1, bytes(MAX_FRAME_SIZE))
    ours, client = our_client(1), h2_client(1)
    ours.receive_data(head)
    client.receive_data(head)
    for n in range(STREAM_WINDOW // MAX_FRAME_SIZE + 1):
        mine = ours.receive_data(full)
        try:
            client.receive_data(full)
        except h2.exceptions.FlowControlError:
            assert not acknowledged and n == STREAM_WINDOW // MAX_FRAME_SIZE, n
            assert isinstance(mine[-1], ConnectionTerminated), mine
            assert mine[-1].code == frames.ErrorCode.FLOW_CONTROL_ERROR
            return
        assert not any(isinstance(e, ConnectionTerminated) for e in mine), (n, mine)
        if acknowledged:
            ours.acknowledge(1, MAX_FRAME_SIZE)
            client.acknowledge_received_data(MAX_FRAME_SIZE, 1)
    assert acknowledged


# --- bugs this test found in ours, fixed: each stays as a test ---------------------------------


def both_on(build: Callable[[Encode], list[bytes]]) -> tuple[list, list | Exception]:
    """Our events, and h2's (or the ProtocolError it raised), for the server's preface and
    what `build` makes, on stream 1."""
    wire = case_wire(build)
    ours, client = our_client(1), h2_client(1)
    mine = ours.receive_data(wire)
    try:
        return mine, client.receive_data(wire)
    except h2.exceptions.ProtocolError as exc:
        return mine, exc


@pytest.mark.parametrize("status", [b"204", b"304"])
def test_no_content_with_a_content_length(status: bytes) -> None:
    """Found and fixed: a response without content (RFC 9110 6.4.1) may have a non-zero
    content-length (RFC 9113 8.1.1)."""
    block = [(b":status", status), (b"content-length", b"1234")]
    mine, theirs = both_on(lambda hb: [headers(1, hb(*block), END_STREAM)])
    assert [type(e) for e in theirs[-2:]] == [h2.events.ResponseReceived, h2.events.StreamEnded]
    assert [type(e) for e in mine[-2:]] == [ResponseReceived, StreamEnded], mine


def test_a_status_below_100_is_malformed_not_informational() -> None:
    """Found and fixed: ours took a :status of 000-099 for a 1xx (it checked status < 200),
    then ended the connection on the body ("DATA before the head"). It is no valid status
    (RFC 9110 15): that stream is malformed, the connection goes on; h2 takes it for final."""
    mine, theirs = both_on(
        lambda hb: [headers(1, hb((b":status", b"099"))), pack(frames.DATA, END_STREAM, 1, b"body")]
    )
    assert isinstance(theirs, list) and h2.events.ResponseReceived in map(type, theirs)
    assert [type(e) for e in mine if not isinstance(e, SettingsReceived)] == [StreamMalformed]
    assert mine[-1].stream_id == 1


@pytest.mark.parametrize("sid", [2, 9])
def test_a_window_update_on_an_idle_stream_ends_the_connection(sid: int) -> None:
    """Found and fixed: ours ignored it; RFC 9113 5.1 makes it a connection error."""
    mine, theirs = both_on(lambda hb: [frames.window_update(sid, 100)])
    assert isinstance(theirs, h2.exceptions.ProtocolError), theirs
    assert isinstance(mine[-1], ConnectionTerminated), mine
    assert mine[-1].code == frames.ErrorCode.PROTOCOL_ERROR


def test_content_in_a_no_content_response_is_malformed() -> None:
    """Found and fixed: ours delivered DATA on a 204 as a body. RFC 9113 8.1.1 spares a 204
    or 304 its content-length only when no content comes: ours resets that stream, h2 ends
    the connection (the stream-error divergence)."""
    mine, theirs = both_on(
        lambda hb: [
            headers(1, hb((b":status", b"204"), (b"content-length", b"0"))),
            pack(frames.DATA, END_STREAM, 1, b"abc"),
        ]
    )
    assert isinstance(theirs, h2.exceptions.InvalidBodyLengthError), theirs
    assert not any(isinstance(e, DataReceived) for e in mine), mine
    assert isinstance(mine[-1], StreamMalformed) and mine[-1].stream_id == 1
