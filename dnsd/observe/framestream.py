"""Frame Streams (https://farsightsec.github.io/fstrm/) as a sender over one blocking socket.

The bidirectional handshake of a writer: READY (our content type) -> the reader's ACCEPT naming it ->
START -> data frames ... -> STOP -> the reader's FINISH. Frames are encoded and decoded by the ``fstrm``
package (a codec only: it has no transport, and its README drives the handshake from asyncio
protocols); the sequencing, the socket, its timeouts and the partial writes are here, because the
dnstap writer is a plain thread that must never touch the event loop of the process it observes.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import fstrm

_SEND_SLICE = 0.1  # a blocked send wakes this often to see whether the writer was told to give up


class ProtocolError(Exception):
    """The reader broke the Frame Streams protocol (wrong frame, another content type)."""


@dataclass(frozen=True)
class Target:
    """Where the reader listens: ``path`` for a unix socket, else ``host``/``port`` over TCP."""

    path: str | None = None
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"tcp:[{self.host}]:{self.port}" if ":" in self.host else f"tcp:{self.host}:{self.port}"


def parse_target(target: str) -> Target:
    """``unix:/path/to.sock``, ``tcp:HOST:PORT`` or ``tcp:[IPv6]:PORT``; ValueError says what is wrong."""
    kind, sep, rest = target.partition(":")
    if not sep or kind not in ("unix", "tcp"):
        raise ValueError(f"dnstap target {target!r}: expected unix:PATH or tcp:HOST:PORT")
    if kind == "unix":
        if not rest:
            raise ValueError(f"dnstap target {target!r}: the unix socket path is empty")
        if "\0" in rest:
            raise ValueError(f"dnstap target {target!r}: the unix socket path has a NUL byte")
        return Target(path=rest)
    if rest.startswith("["):
        host, bracket, port = rest[1:].partition("]")
        if not bracket or not port.startswith(":"):
            raise ValueError(f"dnstap target {target!r}: expected tcp:[IPv6]:PORT")
        port = port[1:]
        if ":" not in host:
            raise ValueError(f"dnstap target {target!r}: brackets are for IPv6 addresses")
    else:
        host, _, port = rest.rpartition(":")
        if ":" in host:
            raise ValueError(f"dnstap target {target!r}: an IPv6 address needs brackets, as tcp:[::1]:6000")
    if not host:
        raise ValueError(f"dnstap target {target!r}: the host is empty")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"dnstap target {target!r}: the port must be a number from 1 to 65535")
    return Target(host=host, port=int(port))


class Sender:
    """One connection to a Frame Streams reader, after a completed handshake (``Sender.open``)."""

    def __init__(self, sock: socket.socket, content_type: bytes) -> None:
        self.sock = sock
        self.content_type = content_type
        self._codec = fstrm.FstrmCodec()

    @classmethod
    def open(cls, target: Target, content_type: bytes, timeout: float) -> Sender:
        """Connect and handshake within ``timeout`` seconds; OSError or ProtocolError when that fails."""
        sock: socket.socket
        if target.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(target.path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((target.host, target.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # frames go out in batches already
        return cls.handshake(sock, content_type, timeout)

    @classmethod
    def handshake(cls, sock: socket.socket, content_type: bytes, timeout: float) -> Sender:
        """READY -> ACCEPT -> START on a connected socket, closed when that fails."""
        sender = cls(sock, content_type)
        try:
            sock.settimeout(timeout)
            sock.sendall(sender._codec.encode_ctrlready(content_type))
            ctrl, types = sender._read_control(time.monotonic() + timeout)
            if ctrl != fstrm.FSTRM_CONTROL_ACCEPT:
                raise ProtocolError(f"expected ACCEPT, got control frame {ctrl}")
            if content_type not in types:
                raise ProtocolError(f"the reader accepts {types!r}, not {content_type!r}")
            sock.sendall(sender._codec.encode_ctrlstart(content_type))
        except BaseException:
            sock.close()
            raise
        return sender

    def frame(self, payload: bytes) -> bytes:
        """One data frame, to be joined with others and written by ``send``."""
        return bytes(self._codec.encode_data(payload))

    def send(self, data: bytes, give_up: Callable[[], bool]) -> None:
        """Write all of ``data``; a slow reader only slows this thread. Raises TimeoutError once
        ``give_up()`` is true with bytes still unwritten (the stream is then cut mid-frame: close it)."""
        view = memoryview(data)
        self.sock.settimeout(_SEND_SLICE)
        while view:
            try:
                view = view[self.sock.send(view):]
            except TimeoutError:
                if give_up():
                    raise
        self.sock.settimeout(None)

    def idle(self, seconds: float) -> None:
        """Wait up to ``seconds`` with nothing to send; ConnectionError if the reader closed meanwhile.
        (A reader sends nothing between ACCEPT and FINISH, so readable here means it went away.)"""
        readable, _, _ = select.select([self.sock], [], [], seconds)
        if readable and not self.sock.recv(4096, socket.MSG_PEEK):
            raise ConnectionError("the reader closed the connection")

    def finish(self, timeout: float) -> None:
        """STOP, then wait (at most ``timeout``) for the reader's FINISH."""
        self.sock.settimeout(timeout)
        self.sock.sendall(self._codec.encode(ctrl=fstrm.FSTRM_CONTROL_STOP))
        ctrl, _ = self._read_control(time.monotonic() + timeout)
        if ctrl != fstrm.FSTRM_CONTROL_FINISH:
            raise ProtocolError(f"expected FINISH, got control frame {ctrl}")

    def close(self) -> None:
        self.sock.close()

    def _read_control(self, deadline: float) -> tuple[int, list[bytes]]:
        """The next frame from the reader, which must be a control frame: (type, content types)."""
        codec = self._codec
        done = codec.process()  # a frame may already be buffered from the last read
        while not done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the reader did not answer the handshake in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the reader closed the connection during the handshake")
            if len(codec.buf) + len(chunk) > 1 << 16:  # a control frame is a few dozen bytes
                raise ProtocolError("oversized control frame")
            done = codec.append_and_process(chunk)
        if codec.df_length != 0:
            raise ProtocolError("expected a control frame, got a data frame")
        try:
            ctrl, types, _ = codec.decode()
        except Exception as e:  # fstrm raises bare Exception on a malformed field
            raise ProtocolError(f"malformed control frame: {e}") from None
        return int(ctrl), [bytes(t) for t in types]
