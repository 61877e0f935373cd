"""Update-source names (gateway/lifecycle/names.py): the DNS messages against scapy's
independent encoder, CNAME chains, negative answers, truncation falling back to TCP against a
real loopback server, the TTL table with the clock passed in, and the resolver thread's
callback. The lab test with a real BIND is tests/lifecycle/test_names_lab.py."""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRRSOA

from gateway.config import parse_config
from gateway.lifecycle.names import (
    GRACE_S,
    Answer,
    DnsError,
    NameResolver,
    NameTable,
    RRType,
    build_query,
    parse_response,
    query,
    resolv_conf_servers,
    resolver_servers,
    update_source_names,
)
from gateway.lifecycle.state import Endpoint, HostMode, HostPolicy

NAME = "updates.lab.test"


def reply(qid: int, name: str = NAME, qtype: str = "A", **kw: object) -> bytes:
    return bytes(DNS(id=qid, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype=qtype), **kw))


def test_query_is_what_scapy_reads() -> None:
    wire = build_query(NAME, RRType.AAAA, 0x1234)
    parsed = DNS(wire)
    assert parsed.id == 0x1234 and parsed.rd == 1 and parsed.qr == 0
    assert parsed.qd[0].qname == b"updates.lab.test." and parsed.qd[0].qtype == 28


def test_addresses_and_the_smallest_ttl_along_a_cname_chain() -> None:
    an = [
        DNSRR(rrname=NAME, type="CNAME", ttl=300, rdata="cdn.lab.test"),
        DNSRR(rrname="cdn.lab.test", type="A", ttl=30, rdata="198.18.0.10"),
        DNSRR(rrname="cdn.lab.test", type="A", ttl=20, rdata="198.18.0.11"),
        DNSRR(rrname="other.lab.test", type="A", ttl=1, rdata="198.18.0.99"),
    ]
    answer, truncated = parse_response(reply(7, an=an), 7, NAME, RRType.A)
    assert not truncated
    assert answer == Answer(("198.18.0.10", "198.18.0.11"), 20)


def test_negative_answer_uses_the_soa_minimum() -> None:
    soa = DNSRRSOA(rrname="lab.test", ttl=300, mname="ns.lab.test", rname="h.lab.test",
                   minimum=60)  # fmt: skip
    answer, _ = parse_response(reply(9, rcode=3, ns=[soa]), 9, NAME, RRType.A)
    assert answer == Answer((), 60)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x00\x01", "shorter than a DNS header"),
        (reply(8), "not the answer to our query"),  # another id
        (reply(7, name="evil.lab.test"), "answer for another question"),
    ],
)
def test_foreign_or_broken_answers_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_response(data, 7, NAME, RRType.A)


def test_servfail_is_a_dns_error() -> None:
    with pytest.raises(DnsError, match="rcode 2"):
        parse_response(reply(7, rcode=2), 7, NAME, RRType.A)


class _Dns(socketserver.BaseRequestHandler):
    """Answers A queries with 40 addresses: too many for the UDP answer we mark truncated."""

    def answer(self, data: bytes, tcp: bool) -> bytes:
        q = DNS(data)
        if not tcp:
            return bytes(DNS(id=q.id, qr=1, tc=1, qd=q.qd))
        an = [DNSRR(rrname=q.qd[0].qname, type="A", ttl=42, rdata=f"198.18.1.{i}")
              for i in range(40)]  # fmt: skip
        return bytes(DNS(id=q.id, qr=1, qd=q.qd, an=an))


class _Udp(_Dns):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(self.answer(data, tcp=False), self.client_address)


class _Tcp(_Dns):
    def handle(self) -> None:
        size = struct.unpack("!H", self.request.recv(2))[0]
        out = self.answer(self.request.recv(size), tcp=True)
        self.request.sendall(struct.pack("!H", len(out)) + out)


@pytest.fixture
def loopback_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A DNS server on 127.0.0.1:<port> (UDP and TCP); the client's port 53 is redirected."""
    udp = socketserver.UDPServer(("127.0.0.1", 0), _Udp)
    port = udp.server_address[1]
    tcp = socketserver.TCPServer(("127.0.0.1", port), _Tcp)
    for server in (udp, tcp):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr("gateway.lifecycle.names.DNS_PORT", port)
    try:
        yield "127.0.0.1"
    finally:
        for server in (udp, tcp):
            server.shutdown()
            server.server_close()


def test_truncated_udp_answer_is_asked_again_over_tcp(loopback_dns: str) -> None:
    answer = query(NAME, RRType.A, [loopback_dns], 2.0)
    assert len(answer.addresses) == 40 and answer.ttl == 42


def test_no_server_answering_names_each_one(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))  # bound, never answering
        monkeypatch.setattr("gateway.lifecycle.names.DNS_PORT", s.getsockname()[1])
        with pytest.raises(DnsError, match="no answer .*127.0.0.1: timed out"):
            query(NAME, RRType.A, ["127.0.0.1"], 0.2)


def test_table_follows_ttls_bounded_and_keeps_old_answers_until_they_expire() -> None:
    table = NameTable(min_ttl=5, max_ttl=60)
    table.want([NAME])
    assert table.due(0) == [(NAME, RRType.A), (NAME, RRType.AAAA)]
    assert table.record(NAME, RRType.A, Answer(("198.18.0.10",), 2), 0) == [
        ("198.18.0.10", 5 + GRACE_S)
    ]  # a TTL below min_ttl: asked again after min_ttl
    table.record(NAME, RRType.AAAA, Answer((), 3600), 0)
    assert table.due(4.9) == [] and table.due(5) == [(NAME, RRType.A)]
    assert table.next_due() == 5
    table.record(NAME, RRType.A, Answer(("198.18.0.11",), 600), 5)  # the answer changes
    assert table.due(64) == [(NAME, RRType.AAAA)]  # 3600 capped to max_ttl 60
    assert table.resolved(6) == {NAME: [("198.18.0.10", 1), ("198.18.0.11", 61)]}
    assert table.resolved(7) == {NAME: [("198.18.0.11", 60)]}  # the old answer expired
    table.fail(NAME, RRType.A, 65)  # no server: nothing is extended
    assert table.resolved(67.5) == {}
    table.want([])
    assert table.entries == {}


def test_resolver_hands_answers_to_the_kernel_callback() -> None:
    now = [100.0]
    applied: list[dict[str, list[tuple[str, int]]]] = []
    answers = {RRType.A: Answer(("198.18.0.10",), 30), RRType.AAAA: Answer((), 30)}

    def ask(name: str, rrtype: RRType, _servers: object, _timeout: float) -> Answer:
        if name == "down.lab.test":
            raise DnsError(f"{name} {rrtype.name}: no answer")
        return answers[rrtype]

    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    res = NameResolver(["198.18.0.53"], applied.append, 5, 60, 1.0, ask=ask, clock=clock)
    res.want([NAME, "down.lab.test"])
    assert res.step() == 105.0  # the failed name is asked again after RETRY_S
    assert applied == [{NAME: [("198.18.0.10", 30 + GRACE_S)]}]
    assert res.errors == 2 and "down.lab.test" in res.last_error
    assert res.resolved() == {NAME: [("198.18.0.10", 32)]}


def test_names_of_setup_hosts_and_servers_from_config(tmp_path: Path) -> None:
    named = Endpoint.parse(f"{NAME}:tcp/80", "t", names=True)
    hosts = [
        HostPolicy("198.18.0.20", HostMode.SETUP, update_sources=(named,)),
        HostPolicy("198.18.0.21", HostMode.NORMAL, update_sources=(
            Endpoint.parse("other.lab.test:tcp/80", "t", names=True),)),
    ]  # fmt: skip
    assert update_source_names(hosts) == [NAME]
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nnameserver 198.18.0.53\nnameserver fe80::1%eth0\nnameserver ::1\n")
    assert resolv_conf_servers(conf) == ["198.18.0.53", "::1"]
    config = parse_config("resolver: {servers: [198.18.0.53, '2001:2::53']}\n")
    assert resolver_servers(config.resolver) == ["198.18.0.53", "2001:2::53"]
    with pytest.raises(Exception, match="resolver.servers.0: 198.18.0.0/24 is a network"):
        parse_config("resolver: {servers: [198.18.0.0/24]}\n")
