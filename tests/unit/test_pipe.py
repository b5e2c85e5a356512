"""tcp:// upstreams (dnsd/upstream/pipe.py) against a scripted TCP server in the same event loop: one
connection for many queries, replies in any order, a stray ID ignored, unanswered queries sent again
once when the server closes, a refused connection failing at once; and the flag values."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import pytest

from dnsd.servers import Upstream, parse_cluster_dns, parse_server, parse_stub_domain, parse_upstream
from dnsd.upstream.pipe import Pipe
from dnsd.upstream.transport import UpstreamError
from tests.helpers import free_port


def question(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00" + struct.pack("!HH", 1, 1)


def reply_to(query: bytes, address: bytes = b"\x0a\x00\x00\x01") -> bytes:
    end = query.index(b"\x00", 12) + 5
    return (query[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + query[12:end]
            + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04" + address)


class Server:
    """Collects ``batch`` queries per connection, then answers them as ``respond`` says."""

    def __init__(self, batch: int, respond: Callable[[list[bytes], asyncio.StreamWriter], None]) -> None:
        self.batch, self.respond = batch, respond
        self.connections = 0
        self.port = free_port()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        queries = []
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                queries.append(await reader.readexactly(size))
                if len(queries) == self.batch:
                    self.respond(queries, writer)
                    queries = []
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


def frame(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


def pipe_to(port: int) -> Pipe:
    dropped: list[str] = []
    pipe = Pipe(Upstream("127.0.0.1", port, tcp=True), asyncio.get_running_loop(), dropped.append)
    pipe.dropped_reasons = dropped  # type: ignore[attr-defined]
    return pipe


def test_replies_out_of_order_on_one_connection() -> None:
    async def main() -> None:
        def backwards(queries: list[bytes], writer: asyncio.StreamWriter) -> None:
            stray = bytearray(reply_to(queries[0]))
            stray[:2] = ((int.from_bytes(stray[:2], "big") + 1) % 65536).to_bytes(2, "big")
            writer.write(frame(bytes(stray)))  # an ID nobody asked with: ignored
            for q in reversed(queries):
                writer.write(frame(reply_to(q, bytes([10, 0, 0, q[12 + 2] - ord("0")]))))

        async with Server(5, backwards) as server:
            pipe = pipe_to(server.port)
            names = [f"n{i}.example" for i in range(5)]
            replies = await asyncio.gather(*(pipe.exchange(question(n), 2) for n in names))
            assert [r.wire[-1] for r in replies] == [0, 1, 2, 3, 4]  # each matched to its own question
            assert server.connections == pipe.connections == 1
            assert pipe.dropped_reasons == ["id"]  # type: ignore[attr-defined]
            pipe.close()

    asyncio.run(main())


def test_unanswered_queries_go_again_on_a_new_connection() -> None:
    async def main() -> None:
        closes = []

        def close_first(queries: list[bytes], writer: asyncio.StreamWriter) -> None:
            if not closes:  # the first connection closes with both unanswered (a server restarting)
                closes.append(1)
                writer.close()
                return
            for q in queries:
                writer.write(frame(reply_to(q)))

        async with Server(2, close_first) as server:
            pipe = pipe_to(server.port)
            replies = await asyncio.gather(*(pipe.exchange(question(f"n{i}.example"), 2) for i in range(2)))
            assert len(replies) == 2 and server.connections == 2
            pipe.close()

    asyncio.run(main())


def test_a_refused_connection_fails_at_once_and_a_silent_server_times_out() -> None:
    async def main() -> None:
        pipe = pipe_to(free_port())
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamError, match="connect"):
            await pipe.exchange(question("a.example"), 2)
        assert loop.time() - started < 0.5
        async with Server(100, lambda q, w: None) as server:
            pipe = pipe_to(server.port)
            with pytest.raises(UpstreamError, match="timeout"):
                await pipe.exchange(question("a.example"), 0.2)
            assert not pipe.waiting
            pipe.close()

    asyncio.run(main())


def test_server_values() -> None:
    assert parse_server("tcp://10.96.0.10") == Upstream("10.96.0.10", 53, None, True)
    assert str(parse_server("tcp://[fd00::a]:5353")) == "tcp://[fd00::a]:5353"
    assert parse_upstream("tcp://10.0.0.1:53") == (Upstream("10.0.0.1", 53, None, True),)
    assert parse_stub_domain("cluster.local=tcp://10.96.0.10").servers == (Upstream("10.96.0.10", tcp=True),)
    assert parse_cluster_dns("10.96.0.10") == parse_cluster_dns("tcp://10.96.0.10:53")
    for bad in ("tcp://", "tcp://tls://1.2.3.4", "tcp://name.example"):
        with pytest.raises(ValueError, match="tcp://IP"):
            parse_server(bad)
    for bad in ("tls://10.0.0.1", "/etc/resolv.conf"):
        with pytest.raises(ValueError, match="over TCP"):
            parse_cluster_dns(bad)


def test_cluster_dns_config() -> None:
    from dnsd.cli import build_parser, config_from_args

    def config(*argv: str) -> object:
        return config_from_args(build_parser().parse_args(["serve", "--upstream", "none", *argv]))

    node = config("--cluster-dns", "10.96.0.10", "--domain", "cluster.local", "--stub-domain", "ip6.arpa=10.0.0.9")
    stubs = {s.zone: s.servers for s in node.stub_domains}  # type: ignore[attr-defined]
    assert stubs == {"cluster.local": (Upstream("10.96.0.10", tcp=True),),
                     "in-addr.arpa": (Upstream("10.96.0.10", tcp=True),),
                     "ip6.arpa": (Upstream("10.0.0.9"),)}  # a stub domain given for a zone wins
    assert node.sources() == ((), False)  # type: ignore[attr-defined]
    assert node.shed_after == 0  # type: ignore[attr-defined]
    assert config("--cluster-dns", "10.96.0.10", "--shed-after", "3").shed_after == 0.003  # type: ignore[attr-defined]
    assert config().shed_after == 0.002  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="--autopath cannot go with it"):
        config("--cluster-dns", "10.96.0.10", "--autopath")
