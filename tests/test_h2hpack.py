"""The proxy's HPACK encoder against hpack's own decoder: the same headers come out."""

from __future__ import annotations

import random

from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKError, OversizedHeaderListError

from proxy.h2hpack import MeshDecoder, MeshEncoder

Headers = list[tuple[bytes, bytes]]


def decoded(decoder: Decoder, block: bytes) -> list[HeaderTuple]:
    return list(decoder.decode(block, raw=True))


def test_random_blocks_decode_to_what_was_encoded() -> None:
    """Static and dynamic hits, literals long and short, eviction, table size changes."""
    rng = random.Random(7)
    names = [b":method", b":path", b":status", b"user-agent", b"x-request-id", b"date",
             b"cookie", b"authorization", b"x-custom", b"accept", b"x-" + b"y" * 300]
    values = [b"", b"GET", b"200", b"*/*", b"z" * 200, b"w" * 3000]
    encoder, decoder = MeshEncoder(), Decoder()
    decoder.max_header_list_size = 1 << 30
    for i in range(3000):
        block: Headers = []
        for _ in range(rng.randint(1, 12)):
            value = rng.choice(values) or b"v%d" % rng.randint(0, 60)
            block.append((rng.choice(names), value))
        if i % 300 == 299:
            encoder.header_table_size = rng.choice([0, 64, 1000, 4096])  # the peer's SETTINGS
        assert [tuple(h) for h in decoded(decoder, encoder.encode(block))] == block


def test_repeated_headers_are_indexed_per_request_ones_are_not() -> None:
    encoder, decoder = MeshEncoder(), Decoder()
    block = [(b":status", b"200"), (b"server", b"app"), (b"content-type", b"text/plain")]
    first = encoder.encode([*block, (b"x-request-id", b"a" * 36)])
    second = encoder.encode([*block, (b"x-request-id", b"b" * 36)])
    decoded(decoder, first)
    assert [tuple(h) for h in decoded(decoder, second)][:3] == block
    assert len(second) == 3 + len(b"\x00\x0cx-request-id\x24") + 36  # then a literal
    assert len(decoder.header_table.dynamic_entries) == 2  # server, content-type only


def test_connection_headers_dropped_credentials_never_indexed() -> None:
    """What h2's outbound normalisation did, which the connections turn off."""
    encoder, decoder = MeshEncoder(), Decoder()
    block = decoded(decoder, encoder.encode([
        (b":status", b"200"), (b"connection", b"close"), (b"keep-alive", b"5"),
        (b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c"),
        (b"proxy-connection", b"x"), (b"authorization", b"Basic dTpw"),
        (b"cookie", b"short=1"), (b"cookie", b"a-long-cookie=" + b"c" * 20),
        NeverIndexedHeaderTuple(b"x-secret", b"s"), (b"x-plain", b"p")]))
    assert [bytes(h[0]) for h in block] == [b":status", b"authorization", b"cookie", b"cookie",
                                            b"x-secret", b"x-plain"]
    never = [bytes(h[0]) for h in block if isinstance(h, NeverIndexedHeaderTuple)]
    assert never == [b"authorization", b"cookie", b"x-secret"]
    assert [e[0] for e in decoder.header_table.dynamic_entries] == [b"x-plain", b"cookie"]


_DECODE_ERRORS = (HPACKError, IndexError, TypeError, UnicodeDecodeError)  # (h2 maps these)


def outcome(decoder: Decoder, block: bytes) -> object:
    try:
        headers = [(bytes(h[0]), bytes(h[1]), isinstance(h, NeverIndexedHeaderTuple))
                   for h in decoder.decode(block, raw=True)]
    except _DECODE_ERRORS as exc:
        return ("error", isinstance(exc, OversizedHeaderListError))
    return headers, list(decoder.header_table.dynamic_entries)


def test_decoder_agrees_with_hpacks_on_real_and_broken_blocks() -> None:
    """Blocks from hpack's encoder (Huffman or not, indexed or not, never-indexed, table size
    changes) and those blocks cut short or with bytes flipped: the same headers and table, or
    an error from both (a header list over the limit from both)."""
    rng = random.Random(11)
    names = [b":method", b":path", b"user-agent", b"cookie", b"x-long", b"x-" + b"n" * 200]
    encoder = Encoder()
    ours, theirs = MeshDecoder(), Decoder()
    for decoder in (ours, theirs):
        decoder.max_header_list_size = 3000
    for i in range(1500):
        block = [(rng.choice(names), b"v" * rng.choice([0, 1, 5, 126, 127, 128, 400]),
                  rng.random() < 0.1) for _ in range(rng.randint(1, 8))]
        if i % 500 == 250:
            encoder.header_table_size = rng.choice([0, 256, 4096])
        data = encoder.encode(block, huffman=rng.random() < 0.5)
        assert outcome(ours, data) == outcome(theirs, data)
        broken = bytearray(data[:rng.randint(0, len(data))])
        if broken and rng.random() < 0.5:
            broken[rng.randrange(len(broken))] = rng.randrange(256)
        scratch_ours, scratch_theirs = MeshDecoder(), Decoder()
        assert outcome(scratch_ours, bytes(broken)) == outcome(scratch_theirs, bytes(broken))
