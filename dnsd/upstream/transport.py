"""Upstream queries: building and checking them, and one exchange over TCP (or TLS).

Every query gets a fresh random ID (here) and its own socket on a random source port
(UDP: sockets.py); a reply counts only with the same ID and the same question byte for
byte (case included), and by UDP only from the address the query went to. Anything else
is dropped and counted: a spoofed packet cannot end the exchange early.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
from collections.abc import Callable

from dnsd.dns.const import DEFAULT_PAYLOAD, OPT
from dnsd.servers import Upstream
from dnsd.upstream.message import Reply, parse

EDNS_PAYLOAD = DEFAULT_PAYLOAD  # what we advertise upstream: big answers come by UDP up to this, then by TCP
_OPT = b"\x00" + struct.pack("!HHIH", OPT, EDNS_PAYLOAD, 0, 0)


def default_tls(ca_file: str | None = None) -> ssl.SSLContext:
    """Certificates checked against the system's CAs (or ``ca_file``), TLS 1.2 at least."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


Done = Callable[[Reply | None, str], None]  # a callback exchange's end: the reply, or None and why


async def awaited(loop: asyncio.AbstractEventLoop, send: Callable[[Done], None]) -> Reply:
    """A callback exchange (``send(done)``) as a coroutine: the reply, or UpstreamError with the reason."""
    future: asyncio.Future[Reply] = loop.create_future()

    def done(reply: Reply | None, why: str) -> None:
        if future.done():
            return
        if reply is None:
            future.set_exception(UpstreamError(why))
        else:
            future.set_result(reply)

    send(done)
    return await future


class UpstreamError(Exception):
    """The upstream did not give a usable reply (timeout, refused connection, malformed reply)."""


def build_query(question: bytes) -> tuple[bytes, bytes]:
    """(query, its ID): RD set, one question, our OPT."""
    qid = os.urandom(2)
    return query_with_id(question, qid), qid


def query_with_id(question: bytes, qid: bytes) -> bytes:
    return qid + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01" + question + _OPT


def query_of(reply: bytes, qend: int) -> bytes:
    """The query ``reply`` answers, as build_query made it (its ID, its question): for dnstap."""
    return reply[:2] + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01" + reply[12:qend] + _OPT


def check(data: bytes, qid: bytes, question: bytes) -> str | None:
    """Why ``data`` is not the reply to our query, or None when it is (its body is parsed later)."""
    if len(data) < 12 + len(question) or not data[2] & 0x80:
        return "garbage"
    if data[:2] != qid:
        return "id"
    if data[4:6] != b"\x00\x01" or data[12 : 12 + len(question)] != question:
        return "question"
    return None


def reply_to(data: bytes, qid: bytes, question: bytes) -> tuple[Reply | None, str]:
    """(the parsed reply, "") when ``data`` answers our query, else (None, why): check() then parse()."""
    reason = check(data, qid, question)
    if reason is not None:
        return None, reason
    try:
        return parse(data), ""
    except ValueError:
        return None, "garbage"


async def tcp(upstream: Upstream, question: bytes, timeout: float, dropped: Callable[[str], None],
              tls: ssl.SSLContext | None = None) -> Reply:
    """Over TCP; with ``tls`` (an upstream with a ``tls_name``) over TLS, the certificate checked
    against that name (DNS over TLS, RFC 7858). One connection per query: simple, and a failed
    upstream cannot leave a half-read stream behind."""
    query, qid = build_query(question)
    tls_args: dict = {}
    if upstream.tls_name:
        tls_args = {"ssl": tls or default_tls(), "server_hostname": upstream.tls_name}
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(upstream.host, upstream.port, **tls_args)
            try:
                writer.write(len(query).to_bytes(2, "big") + query)
                size = int.from_bytes(await reader.readexactly(2), "big")
                data = await reader.readexactly(size)
            finally:
                writer.close()
    except TimeoutError:
        raise UpstreamError("timeout") from None
    except (OSError, asyncio.IncompleteReadError) as exc:  # ssl.SSLError (a bad certificate) is an OSError
        raise UpstreamError(f"{'TLS' if upstream.tls_name else 'TCP'}: {exc}") from None
    reason = check(data, qid, question)
    if reason is None:
        try:
            return parse(data)
        except ValueError:
            reason = "garbage"
    dropped(reason)
    raise UpstreamError(f"TCP reply rejected ({reason})")
