"""gateway/decode/hpack.py: RFC 7541's examples, the Huffman code, and the bounds."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decode.hpack import (
    MAX_SIZE_UPDATES,
    HpackDecoder,
    HpackError,
    huffman_codes,
    huffman_decode,
)
from gateway.testing.h2c import HpackEncoder, huffman_encode


def test_huffman_code_matches_rfc_7541_appendix_b() -> None:
    codes = huffman_codes()
    assert codes[ord("0")] == (0x0, 5)
    assert codes[ord(" ")] == (0x14, 6)
    assert codes[ord("a")] == (0x3, 5)
    assert codes[0] == (0x1FF8, 13)
    assert codes[10] == (0x3FFFFFFC, 30)
    assert codes[256] == (0x3FFFFFFF, 30)  # EOS
    assert huffman_decode(bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ff")) == b"www.example.com"


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_huffman_round_trip(data: bytes) -> None:
    assert huffman_decode(huffman_encode(data)) == data


def test_huffman_eos_inside_a_string_is_refused() -> None:
    with pytest.raises(HpackError, match="EOS"):
        huffman_decode(b"\xff\xff\xff\xff")


# RFC 7541 C.4 (requests, Huffman) and C.6 (responses, Huffman, table of 256 bytes)
C4 = [
    ("828684418cf1e3c2e5f23a6ba0ab90f4ff", 57),
    ("828684be5886a8eb10649cbf", 110),
    ("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf", 164),
]
C6 = [
    "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
    "4883640effc1c0bf",
    "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
]


def test_rfc_7541_c4_requests_keep_the_dynamic_table() -> None:
    decoder = HpackDecoder()
    fields = []
    for block, size in C4:
        fields = decoder.decode(bytes.fromhex(block))
        assert decoder.table_size == size
    assert fields == [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/index.html"),
        (b":authority", b"www.example.com"),
        (b"custom-key", b"custom-value"),
    ]


def test_rfc_7541_c6_eviction() -> None:
    decoder = HpackDecoder()
    decoder.table_limit = 256
    sizes = []
    fields = []
    for block in C6:
        fields = decoder.decode(bytes.fromhex(block))
        sizes.append(decoder.table_size)
    assert sizes == [222, 222, 215]
    assert fields[-1] == (
        b"set-cookie",
        b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
    )


def test_encoder_of_the_tests_round_trips_through_the_decoder() -> None:
    encoder, decoder = HpackEncoder(), HpackDecoder()
    fields = [(b":method", b"GET"), (b"x-a", b"v" * 100), (b"cookie", b"k=1")]
    for _ in range(3):
        assert decoder.decode(encoder.encode(fields)) == fields


def test_hpack_bomb_is_refused_before_it_expands() -> None:
    """One 4 KiB table entry referenced by 1-byte indexes: 300 references would expand to
    1.2 MiB; the list bound refuses the block first."""
    decoder = HpackDecoder()
    # a literal with incremental indexing: name "a", a raw value of 4000 bytes
    big = b"\x40\x01a\x7f" + bytes([(4000 - 127) & 0x7F | 0x80, (4000 - 127) >> 7]) + b"x" * 4000
    decoder.decode(big)
    with pytest.raises(HpackError, match="header list larger"):
        decoder.decode(b"\xbe" * 300)


def test_size_update_over_the_limit_and_too_many_updates_are_refused() -> None:
    with pytest.raises(HpackError, match="table size update"):
        HpackDecoder().decode(b"\x3f\xe1\xff\x07")  # 131072: over 64 KiB
    with pytest.raises(HpackError, match="size updates"):
        HpackDecoder().decode(b"\x20" * (MAX_SIZE_UPDATES + 1))


def test_size_update_zero_empties_the_table() -> None:
    decoder = HpackDecoder()
    decoder.decode(bytes.fromhex(C4[0][0]))
    decoder.decode(b"\x20")
    assert decoder.table_size == 0
    with pytest.raises(HpackError, match="index 62"):
        decoder.decode(b"\xbe")


def test_errors_are_sticky_and_bounded_integers() -> None:
    decoder = HpackDecoder()
    with pytest.raises(HpackError, match="integer larger"):
        decoder.decode(b"\xff" + b"\xff" * 6 + b"\x01")
    with pytest.raises(HpackError, match="earlier error"):
        decoder.decode(b"\x82")


def test_too_many_fields_are_refused() -> None:
    with pytest.raises(HpackError, match="header fields"):
        HpackDecoder(max_fields=10).decode(b"\x82" * 11)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_input_raises_only_hpack_error(data: bytes) -> None:
    with contextlib.suppress(HpackError):
        HpackDecoder().decode(data)
