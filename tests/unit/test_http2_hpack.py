"""net.http2.hpack against hpack as the reference: our response decoder against its decoder,
and our request encoder's blocks through its decoder.

hpack's encoder makes the blocks: Huffman or not, fields added to the dynamic table or not,
never-indexed fields, table size changes, evictions. Both decoders must agree on every block,
and on randomly damaged blocks must agree on whether there is an error at all.
"""

import random

import hpack
import pytest

from ingestd.net.http2.hpack import Decoder, HeaderBlockError, RequestEncoder

NAMES = [b"server", b"date", b"content-type", b"content-length", b"etag", b"x-cache", b"via"]
VALUES = [b"nginx", b"video/mp4", b"65536", b'"5f2b-10000"', b"HIT", b"", b"\xff\xfe binary"]


def random_fields(rng: random.Random) -> list[tuple[bytes, bytes] | hpack.HeaderTuple]:
    fields: list[tuple[bytes, bytes] | hpack.HeaderTuple] = [(b":status", b"200")]
    for _ in range(rng.randint(0, 9)):
        name = rng.choice(NAMES) if rng.random() < 0.7 else b"x-" + rng.randbytes(3).hex().encode()
        value = rng.choice(VALUES) if rng.random() < 0.5 else rng.randbytes(rng.randint(0, 90))
        if rng.random() < 0.1:
            fields.append(hpack.NeverIndexedHeaderTuple(name, value))
        else:
            fields.append((name, value))
    return fields


def test_agrees_with_hpack_over_a_long_connection() -> None:
    rng = random.Random(7)
    encoder = hpack.Encoder()
    reference = hpack.Decoder(max_header_list_size=1 << 20)
    ours = Decoder(max_header_list_size=1 << 20)
    for n in range(3000):
        if rng.random() < 0.02:
            encoder.header_table_size = rng.choice([0, 64, 256, 1024, 4096])
        block = encoder.encode(random_fields(rng), huffman=rng.random() < 0.8)
        expected = [(bytes(k), bytes(v)) for k, v in reference.decode(block, raw=True)]
        assert ours.decode(block) == expected, n
        assert ours.table_size == reference.header_table._current_size


def test_damaged_blocks_fail_exactly_when_hpack_fails() -> None:
    rng = random.Random(11)
    checked = failed = 0
    for _ in range(1500):
        encoder = hpack.Encoder()
        reference = hpack.Decoder(max_header_list_size=1 << 20)
        ours = Decoder(max_header_list_size=1 << 20)
        warmup = encoder.encode(random_fields(rng))  # fill the dynamic tables
        reference.decode(warmup, raw=True)
        ours.decode(warmup)
        block = bytearray(encoder.encode(random_fields(rng), huffman=rng.random() < 0.8))
        for _ in range(rng.randint(1, 3)):
            action = rng.random()
            if action < 0.5 and block:
                block[rng.randrange(len(block))] = rng.randrange(256)
            elif action < 0.8 and block:
                del block[rng.randrange(len(block)) :]
            else:
                block.insert(rng.randrange(len(block) + 1), rng.randrange(256))
        try:
            expected = [(bytes(k), bytes(v)) for k, v in reference.decode(bytes(block), raw=True)]
        except hpack.HPACKError:
            expected = None
        try:
            got: list[tuple[bytes, bytes]] | None = ours.decode(bytes(block))
        except HeaderBlockError:
            got = None
        checked += 1
        failed += got is None
        assert got == expected, bytes(block).hex()
    assert 0.1 < failed / checked < 0.95  # the damage did produce both outcomes


@pytest.mark.parametrize(
    ("block", "why"),
    [
        (b"\x80", "no table entry 0"),
        (b"\xbe", "no table entry 62"),  # the dynamic table is empty
        (b"\x82\x20", "size update after a field"),
        (b"\x3f\xe2\x1f", "over our limit"),  # size 4097
        (b"\x40\x85ab", "runs past the block"),
        (b"\x40", "ends before a string"),
        (b"\xff\xff\xff\xff\xff\xff\xff", "integer too long"),
        (b"\xff\x80", "ends inside an integer"),
        (b"\x00\x81\xff\x00", "bad Huffman"),  # EOS padding longer than 7 bits
    ],
)
def test_rejections_say_why(block: bytes, why: str) -> None:
    with pytest.raises(HeaderBlockError, match=why):
        Decoder(max_header_list_size=1 << 16).decode(block)


def test_the_header_list_size_is_bounded() -> None:
    block = hpack.Encoder().encode([(b"x-big", b"v" * 5000)] * 4)
    assert len(Decoder(max_header_list_size=1 << 16).decode(block)) == 4
    with pytest.raises(HeaderBlockError, match="header list over"):
        Decoder(max_header_list_size=10_000).decode(block)


def test_an_entry_larger_than_the_table_empties_it() -> None:
    encoder = hpack.Encoder()
    ours = Decoder(max_header_list_size=1 << 16)
    ours.decode(encoder.encode([(b"x-a", b"1")]))
    assert ours.table_size == 3 + 1 + 32
    ours.decode(encoder.encode([(b"x-huge", b"v" * 5000)]))  # hpack indexes it: too big
    assert ours.table_size == 0
    # The huffman cache does not change results: the same coded string, decoded twice.
    block = encoder.encode([(b"server", b"nginx")], huffman=True)
    assert ours.decode(block) == [(b"server", b"nginx")]
    block = encoder.encode([(b"server", b"nginx")], huffman=True)
    assert ours.decode(block) == [(b"server", b"nginx")]


def test_request_encoder_round_trips_through_a_real_hpack_decoder() -> None:
    encoder = RequestEncoder()
    decoder = hpack.Decoder()
    fields = [
        (b":method", b"GET"),  # whole field in the static table: one byte
        (b":scheme", b"https"),
        (b":authority", b"cdn.example:8443"),  # name in the static table
        (b":path", b"/v/1.mp4?expire=4102444800&sig=" + b"a" * 300),  # long: multi-byte length
        (b"user-agent", b"ingestd/1"),
        (b"x-custom", b"\xe2\x82\xac"),  # neither: literal name
        (b"x-long-name-" + b"n" * 200, b""),  # a name length over one byte too
    ]
    for _ in range(3):  # the second and third blocks come from the cache
        block = encoder.encode(fields)
        assert [(bytes(k), bytes(v)) for k, v in decoder.decode(block, raw=True)] == fields
    assert decoder.header_table_size == 4096 and len(decoder.header_table.dynamic_entries) == 0
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"
    encoder.resize(8192)  # larger: nothing to signal, we never use the table anyway
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"
    # The server lowered its table size: the next block starts with the size update, once.
    encoder.resize(0)
    block = encoder.encode([(b":method", b"GET")])
    assert block == b"\x20\x82"
    assert list(decoder.decode(block, raw=True)) == [(b":method", b"GET")]
    assert decoder.header_table_size == 0
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"
