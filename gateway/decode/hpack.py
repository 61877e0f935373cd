"""HPACK header block decoder (RFC 7541) for the client-to-server direction of HTTP/2.

`HpackDecoder.decode(block)` turns one complete header block (the fragments of a HEADERS frame
and its CONTINUATION frames, joined) into its header fields, as (name, value) byte strings in
order, and keeps the dynamic table (section 2.3.2) in step with the client's encoder: every
block of a connection must be decoded, in order, whatever is done with its fields.

Why our own decoder rather than python-hyper's `hpack` (what mitmproxy uses): the gateway's decoders
are dependency-free sans-I/O state machines whose every bound is a named limit with an event
(docs/rules.md, HTTP/2 cleartext), and each of those bounds had to be checked and wrapped anyway
(hpack raises its own exceptions, bounds the header list but not the number of table size updates or
fields in a block). The decoder is small: integers (section 5.1), string literals with the Huffman
code of Appendix B (section 5.2), the static table of Appendix A, the four field representations
(section 6) and dynamic table size updates (section 6.3).

What it guarantees:
- Only HpackError (a DecodeError) escapes; after one the connection's table is unknown and
  the decoder refuses every later block (sticky, as the server ends the connection with
  COMPRESSION_ERROR, RFC 9113 section 4.3).
- Bounded whatever the input (an "HPACK bomb" is refused, not expanded): the dynamic table
  holds at most `max_table_size` bytes (RFC 7541 sizes: name + value + 32 per entry), a size
  update above it is refused; one block yields at most `max_fields` fields whose RFC 7541
  size adds up to at most `max_list_size` bytes (checked before a field is kept, so a few
  bytes referring to a large table entry many times cost nothing); a block holds at most
  MAX_SIZE_UPDATES size updates; integers are at most 2**32 (MAX_INTEGER).
- Lenient where a server may be: a size update anywhere in a block (RFC 7541 section 4.2 wants
  it first), Huffman padding of any bits (section 5.2 wants at most 7 one bits). Being more
  lenient than a server costs nothing (the server refuses what it cannot read); being
  stricter would leave a request the server acts on undecoded.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from gateway.errors import DecodeError

__all__ = [
    "MAX_FIELDS",
    "MAX_HEADER_LIST_SIZE",
    "MAX_INTEGER",
    "MAX_SIZE_UPDATES",
    "MAX_TABLE_SIZE",
    "HpackDecoder",
    "HpackError",
    "huffman_decode",
]

# The client's encoder may use at most the table size the server allows (SETTINGS_HEADER_TABLE_
# SIZE, 4096 unless the server says more; nginx, Apache mod_http2 and Tomcat say 4096). The
# gateway does not see the server's SETTINGS, so it allows more: a client that uses a bigger
# table than its server allows is refused by the server.
MAX_TABLE_SIZE: Final = 64 * 1024
# As HTTP/1's MAX_HEAD_BYTES (gateway/decode/http.py): more than any server takes (Apache: 100
# fields of 8190 bytes; nginx and Tomcat less).
MAX_HEADER_LIST_SIZE: Final = 1024 * 1024
MAX_FIELDS: Final = 1024  # as HTTP/1's MAX_HEADERS
MAX_SIZE_UPDATES: Final = 16  # per block (RFC 7541 section 4.2 needs at most two)
MAX_INTEGER: Final = 1 << 32
ENTRY_OVERHEAD: Final = 32  # RFC 7541 section 4.1

Field = tuple[bytes, bytes]


class HpackError(DecodeError):
    """The client's header block cannot be decoded (the server answers COMPRESSION_ERROR)."""


# RFC 7541 Appendix A: the static table, index 1..61.
STATIC_TABLE: Final[tuple[Field, ...]] = tuple(
    (name.encode(), value.encode())
    for name, value in (
        (":authority", ""),
        (":method", "GET"),
        (":method", "POST"),
        (":path", "/"),
        (":path", "/index.html"),
        (":scheme", "http"),
        (":scheme", "https"),
        (":status", "200"),
        (":status", "204"),
        (":status", "206"),
        (":status", "304"),
        (":status", "400"),
        (":status", "404"),
        (":status", "500"),
        ("accept-charset", ""),
        ("accept-encoding", "gzip, deflate"),
        ("accept-language", ""),
        ("accept-ranges", ""),
        ("accept", ""),
        ("access-control-allow-origin", ""),
        ("age", ""),
        ("allow", ""),
        ("authorization", ""),
        ("cache-control", ""),
        ("content-disposition", ""),
        ("content-encoding", ""),
        ("content-language", ""),
        ("content-length", ""),
        ("content-location", ""),
        ("content-range", ""),
        ("content-type", ""),
        ("cookie", ""),
        ("date", ""),
        ("etag", ""),
        ("expect", ""),
        ("expires", ""),
        ("from", ""),
        ("host", ""),
        ("if-match", ""),
        ("if-modified-since", ""),
        ("if-none-match", ""),
        ("if-range", ""),
        ("if-unmodified-since", ""),
        ("last-modified", ""),
        ("link", ""),
        ("location", ""),
        ("max-forwards", ""),
        ("proxy-authenticate", ""),
        ("proxy-authorization", ""),
        ("range", ""),
        ("referer", ""),
        ("refresh", ""),
        ("retry-after", ""),
        ("server", ""),
        ("set-cookie", ""),
        ("strict-transport-security", ""),
        ("transfer-encoding", ""),
        ("user-agent", ""),
        ("vary", ""),
        ("via", ""),
        ("www-authenticate", ""),
    )
)

# RFC 7541 Appendix B: the code length in bits of symbols 0..255 and EOS (256), as characters
# chr(48 + length). The code is canonical (codes of one length are consecutive, in symbol
# order, after the shorter ones), so the lengths give the codes (tests check them against
# the appendix's examples).
_HUFFMAN_LENGTHS: Final = (
    "=GLLLLLLLHNLLNLLLLLLLLNLLLLLLLLL6::<=68;::8;8666555666666678?6<:=67777777777777777777777878"
    "=C=>6?56565666577666567655677777?;>=LDFDDFFFGFGGGGGHGHHFGHGGGGEFGFGGHFEDFFGGEGFFHEFGGEEFEGF"
    "GGDFFFGFFGJJDCFGFIJJJKKJHICEJKKJKHEEJJLKKKDHDEFEEGFFIIHHJGJKJJKKKKKLKKKKKJN"
)
EOS: Final = 256


def huffman_codes() -> list[tuple[int, int]]:
    """(code, length in bits) of every symbol 0..256, from the canonical lengths."""
    lengths = [ord(c) - 48 for c in _HUFFMAN_LENGTHS]
    codes = [(0, 0)] * len(lengths)
    code = 0
    previous = 0
    for symbol in sorted(range(len(lengths)), key=lambda s: (lengths[s], s)):
        code <<= lengths[symbol] - previous
        previous = lengths[symbol]
        codes[symbol] = (code, previous)
        code += 1
    return codes


def _build_nibble_table() -> tuple[list[int], frozenset[int]]:
    """The decoding automaton, four bits at a time: internal tree nodes are states; entry
    state * 16 + nibble is (next state << 9) | (emitted symbol + 1, 0 for none) or -1 (EOS
    decoded: an error). Also the states reachable from the root by at most 7 one bits, where a
    well-padded string ends."""
    children: list[list[int]] = [[-1, -1]]  # internal node -> [child 0, child 1]; leaf: ~symbol
    for symbol, (code, length) in enumerate(huffman_codes()):
        node = 0
        for i in range(length - 1, -1, -1):
            bit = (code >> i) & 1
            if i == 0:
                children[node][bit] = ~symbol
            else:
                if children[node][bit] == -1:
                    children[node][bit] = len(children)
                    children.append([-1, -1])
                node = children[node][bit]
    table: list[int] = []
    for state in range(len(children)):
        for nibble in range(16):
            node, emitted, failed = state, 0, False
            for i in (3, 2, 1, 0):
                nxt = children[node][(nibble >> i) & 1]
                if nxt < 0:
                    if ~nxt == EOS:
                        failed = True
                        break
                    emitted = ~nxt + 1
                    nxt = 0
                node = nxt
            table.append(-1 if failed else (node << 9) | emitted)
    padded = {0}
    node = 0
    for _ in range(7):
        node = children[node][1]
        padded.add(node)
    return table, frozenset(padded)


_NIBBLES, _PADDED_STATES = _build_nibble_table()


def huffman_decode(data: bytes) -> bytes:
    """The octets a Huffman-coded string literal stands for (RFC 7541 section 5.2); an EOS
    symbol in it is an HpackError. Padding is not checked (see the module comment)."""
    table = _NIBBLES
    out = bytearray()
    state = 0
    for byte in data:
        entry = table[(state << 4) | (byte >> 4)]
        if entry < 0:
            raise HpackError("Huffman-coded string holds the EOS symbol")
        if entry & 0x1FF:
            out.append((entry & 0x1FF) - 1)
        entry = table[((entry >> 9) << 4) | (byte & 0x0F)]
        if entry < 0:
            raise HpackError("Huffman-coded string holds the EOS symbol")
        if entry & 0x1FF:
            out.append((entry & 0x1FF) - 1)
        state = entry >> 9
    return bytes(out)


class HpackDecoder:
    """The decoding context of one direction of one HTTP/2 connection (see the module comment)."""

    __slots__ = (
        "_dynamic",
        "_failed",
        "_size",
        "max_fields",
        "max_list_size",
        "max_table_size",
        "table_limit",
    )

    def __init__(
        self,
        max_table_size: int = MAX_TABLE_SIZE,
        max_list_size: int = MAX_HEADER_LIST_SIZE,
        max_fields: int = MAX_FIELDS,
    ) -> None:
        self.max_table_size = max_table_size
        self.max_list_size = max_list_size
        self.max_fields = max_fields
        self.table_limit = 4096  # the table's current maximum size (SETTINGS default)
        self._dynamic: deque[Field] = deque()  # newest first (index 62 is _dynamic[0])
        self._size = 0
        self._failed: str | None = None

    @property
    def table_size(self) -> int:
        """The dynamic table's size in RFC 7541 bytes."""
        return self._size

    def decode(self, block: bytes) -> list[Field]:
        """The header fields of one complete header block (see the module comment)."""
        if self._failed is not None:
            raise HpackError(f"HPACK context unusable after an earlier error ({self._failed})")
        try:
            return self._decode(block)
        except HpackError as err:
            self._failed = str(err)[:80]
            raise

    def _decode(self, block: bytes) -> list[Field]:
        fields: list[Field] = []
        list_size = 0
        updates = 0
        pos = 0
        end = len(block)
        while pos < end:
            byte = block[pos]
            if byte & 0x80:  # indexed field (section 6.1)
                index, pos = _integer(block, pos, 7)
                field = self._entry(index)
            elif byte & 0xE0 == 0x20:  # dynamic table size update (section 6.3)
                size, pos = _integer(block, pos, 5)
                updates += 1
                if updates > MAX_SIZE_UPDATES:
                    raise HpackError(f"more than {MAX_SIZE_UPDATES} table size updates in a block")
                if size > self.max_table_size:
                    raise HpackError(
                        f"table size update to {size} (gateway limit {self.max_table_size})"
                    )
                self.table_limit = size
                self._evict(size)
                continue
            else:
                # literal with incremental indexing (6.2.1, 01xxxxxx), without indexing (6.2.2,
                # 0000xxxx) or never indexed (6.2.3, 0001xxxx)
                indexing = bool(byte & 0x40)
                index, pos = _integer(block, pos, 6 if indexing else 4)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = _string(block, pos)
                value, pos = _string(block, pos)
                field = (name, value)
                if indexing:
                    self._add(field)
            list_size += len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
            if list_size > self.max_list_size:
                raise HpackError(f"header list larger than {self.max_list_size} bytes")
            if len(fields) >= self.max_fields:
                raise HpackError(f"more than {self.max_fields} header fields in a block")
            fields.append(field)
        return fields

    def _entry(self, index: int) -> Field:
        if 0 < index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        dynamic = index - len(STATIC_TABLE) - 1
        if index == 0 or dynamic >= len(self._dynamic):
            raise HpackError(f"header table index {index} out of range")
        return self._dynamic[dynamic]

    def _add(self, field: Field) -> None:
        size = len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
        if size > self.table_limit:  # a larger entry empties the table, is not added (4.4)
            self._evict(0)
            return
        self._evict(self.table_limit - size)
        self._dynamic.appendleft(field)
        self._size += size

    def _evict(self, limit: int) -> None:
        """Drop the oldest entries until the table holds at most `limit` bytes (section 4.4)."""
        dynamic = self._dynamic
        while dynamic and self._size > limit:
            name, value = dynamic.pop()
            self._size -= len(name) + len(value) + ENTRY_OVERHEAD


def _integer(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """(value, next position) of the integer whose `prefix`-bit prefix starts at data[pos]."""
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data):
            raise HpackError("header block ends inside an integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if value > MAX_INTEGER:
            raise HpackError(f"integer larger than {MAX_INTEGER} in a header block")
        if not byte & 0x80:
            return value, pos


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    """(octets, next position) of the string literal at data[pos] (section 5.2)."""
    if pos >= len(data):
        raise HpackError("header block ends before a string literal")
    huffman = data[pos] & 0x80
    length, pos = _integer(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HpackError(f"string literal of {length} bytes runs past the header block")
    raw = data[pos:end]
    return (huffman_decode(raw) if huffman else raw), end
