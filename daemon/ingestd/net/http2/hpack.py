"""HPACK (RFC 7541) for a download client: the request encoder and the response decoder.

Requests are encoded with static-table indexes and plain literals only (RequestEncoder): the
server's table for us stays empty, and every distinct field is encoded once.

Responses are decoded by Decoder. Why not hpack's Decoder: it was 10 % of the event loop on
5,000 small files, most of it decoding Huffman strings bit by bit. A CDN sends the same strings
again and again (server, content type, content length, date within a second), so each distinct
coded string is decoded once, by hpack's own Huffman decoder, and then looked up. The rest is
the RFC's plain algorithm: static and dynamic tables, literals with and without indexing, table
size updates. Everything in a block is untrusted: every index, length and size is checked, and
any violation raises HeaderBlockError (a COMPRESSION_ERROR for the connection). The tests
compare this decoder with hpack's, block by block, on hpack-encoded and randomly damaged input.

Invariants: the decoder's table never exceeds the size our SETTINGS allow (4096) nor the last
size update; a decoded header list never exceeds `max_header_list_size` (RFC 7541 sizes); the
Huffman cache holds at most 512 strings of at most 256 bytes.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import hpack
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

_STATIC = tuple(HeaderTable.STATIC_TABLE)  # index 1..61
_STATIC_COUNT = len(_STATIC)
_ENTRY_OVERHEAD = 32  # RFC 7541 4.1
_HUFFMAN_CACHE_ENTRIES = 512
_HUFFMAN_CACHE_MAX_STRING = 256  # longer strings (rare, often unique) are not kept
_MAX_INTEGER_BYTES = 5  # a prefix integer never needs more than 32 bits here


class HeaderBlockError(Exception):
    """The header block cannot be decoded; the connection's HPACK state is now unknown."""


class Decoder:
    """Decodes the header blocks of one connection, in order."""

    def __init__(self, max_header_list_size: int, max_table_size: int = 4096) -> None:
        self._limit = max_table_size  # what our SETTINGS allow (4096: we do not change it)
        self._max = max_table_size  # what the encoder's last size update chose
        self._entries: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._size = 0
        self._max_list = max_header_list_size
        self._huffman: dict[bytes, bytes] = {}

    @property
    def table_size(self) -> int:
        """Bytes in the dynamic table, as RFC 7541 counts them."""
        return self._size

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The header list of one complete block. Raises HeaderBlockError."""
        fields: list[tuple[bytes, bytes]] = []
        list_size = 0
        i, end = 0, len(block)
        while i < end:
            first = block[i]
            if first & 0x80:  # indexed field
                index, i = _decode_integer(block, i, 7)
                fields.append(self._field(index))
            elif first & 0x40:  # literal, added to the table
                index, i = _decode_integer(block, i, 6)
                field, i = self._literal(block, i, index)
                fields.append(field)
                self._add(field)
            elif first & 0x20:  # dynamic table size update: only before the first field
                if fields:
                    raise HeaderBlockError("table size update after a field")
                size, i = _decode_integer(block, i, 5)
                if size > self._limit:
                    raise HeaderBlockError(f"table size {size} over our limit {self._limit}")
                self._max = size
                self._evict()
                continue
            else:  # literal not indexed (0000) or never indexed (0001): same to a client
                index, i = _decode_integer(block, i, 4)
                field, i = self._literal(block, i, index)
                fields.append(field)
            list_size += len(fields[-1][0]) + len(fields[-1][1]) + _ENTRY_OVERHEAD
            if list_size > self._max_list:
                raise HeaderBlockError(f"header list over {self._max_list} bytes")
        return fields

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_COUNT:
            return _STATIC[index - 1]
        dynamic = index - _STATIC_COUNT - 1
        if index == 0 or dynamic >= len(self._entries):
            raise HeaderBlockError(f"no table entry {index}")
        return self._entries[dynamic]

    def _literal(self, block: bytes, i: int, index: int) -> tuple[tuple[bytes, bytes], int]:
        if index:
            name = self._field(index)[0]
        else:
            name, i = self._string(block, i)
        value, i = self._string(block, i)
        return (name, value), i

    def _string(self, block: bytes, i: int) -> tuple[bytes, int]:
        if i >= len(block):
            raise HeaderBlockError("block ends before a string")
        huffman = block[i] & 0x80
        length, i = _decode_integer(block, i, 7)
        end = i + length
        if end > len(block):
            raise HeaderBlockError("string runs past the block")
        raw = block[i:end]
        if not huffman:
            return raw, end
        text = self._huffman.get(raw)
        if text is None:
            try:
                text = decode_huffman(raw)
            except hpack.HPACKDecodingError as exc:
                raise HeaderBlockError(f"bad Huffman string: {exc}") from None
            if length <= _HUFFMAN_CACHE_MAX_STRING:
                if len(self._huffman) >= _HUFFMAN_CACHE_ENTRIES:
                    self._huffman.clear()  # crude, bounded; a CDN's strings come straight back
                self._huffman[raw] = text
        return text, end

    def _add(self, field: tuple[bytes, bytes]) -> None:
        size = len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
        if size > self._max:  # RFC 7541 4.4: an entry too big empties the table
            self._entries.clear()
            self._size = 0
            return
        self._entries.appendleft(field)
        self._size += size
        self._evict()

    def _evict(self) -> None:
        while self._size > self._max:
            name, value = self._entries.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD


def _decode_integer(block: bytes, i: int, prefix_bits: int) -> tuple[int, int]:
    """A prefix integer (RFC 7541 5.1) starting at `i`; returns it and the next offset."""
    limit = (1 << prefix_bits) - 1
    value = block[i] & limit
    i += 1
    if value < limit:
        return value, i
    shift = 0
    for _ in range(_MAX_INTEGER_BYTES):
        if i >= len(block):
            raise HeaderBlockError("block ends inside an integer")
        byte = block[i]
        i += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
    raise HeaderBlockError("integer too long")


_STATIC_FIELDS = {pair: i for i, pair in enumerate(HeaderTable.STATIC_TABLE, 1)}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_NAMES.setdefault(_name, _index)


def _encode_integer(value: int, prefix_bits: int) -> bytearray:
    """An HPACK integer (RFC 7541 5.1), the first byte's free high bits left zero."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytearray([value])
    out = bytearray([limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return out


def _literal(name: bytes, value: bytes) -> bytes:
    """One field: indexed when the static table has it whole, else a literal that is not added
    to the dynamic table (RFC 7541 6.1 / 6.2.2), its name indexed when the static table has it."""
    index = _STATIC_FIELDS.get((name, value))
    if index is not None:
        head = _encode_integer(index, 7)
        head[0] |= 0x80
        return bytes(head)
    name_index = _STATIC_NAMES.get(name, 0)
    parts = [bytes(_encode_integer(name_index, 4))]
    if not name_index:
        parts += [bytes(_encode_integer(len(name), 7)), name]
    parts += [bytes(_encode_integer(len(value), 7)), value]
    return b"".join(parts)


class RequestEncoder:
    """HPACK for requests with neither the dynamic table nor Huffman coding: every field is a
    fixed string, computed once (re-encoding the same fields with Huffman codes cost ~7 % of the
    event loop on small files, to save a few dozen bytes). Since nothing is ever inserted, the
    server's table for us stays empty; a smaller table size it asks for is still acknowledged
    by a size update at the start of the next block, as RFC 7541 4.2 requires."""

    def __init__(self) -> None:
        self._fields: dict[tuple[bytes, bytes], bytes] = {}
        self._table_size = 4096
        self._size_update: int | None = None

    def resize(self, size: int) -> None:
        """The server's SETTINGS_HEADER_TABLE_SIZE."""
        if size < self._table_size:
            self._table_size = size
            self._size_update = size

    def encode(self, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
        """One header block for `headers`, in order."""
        block = []
        if self._size_update is not None:
            head = _encode_integer(self._size_update, 5)
            head[0] |= 0x20
            block.append(bytes(head))
            self._size_update = None
        for name, value in headers:
            encoded = self._fields.get((name, value))
            if encoded is None:
                encoded = _literal(name, value)
                if name != b":path" and len(self._fields) < 256:
                    self._fields[(name, value)] = encoded
            block.append(encoded)
        return b"".join(block)
