"""A watch stream's lines as urllib3 hands them over: a plain body read as it is, a gzip one decoded."""

from __future__ import annotations

import gzip
import io
import threading

import pytest
import urllib3

from dnsd.cluster.sources.kubernetes.stream import event_lines

pytestmark = pytest.mark.unit

BODY = b'{"type":"ADDED","object":{"metadata":{"name":"a"}}}\n{"type":"ADDED","object":{"metadata":{"name":"b"}}}\n'


def lines_of(response: urllib3.HTTPResponse) -> list[bytes]:
    return [line for batch in event_lines(response, threading.Event()) for line in batch]


@pytest.mark.parametrize(("body", "headers"), [
    (BODY, {}),
    (BODY, {"content-encoding": "identity"}),
    (gzip.compress(BODY), {"content-encoding": "gzip"}),
], ids=["plain", "identity", "gzip"])
def test_every_line_whatever_the_encoding(body: bytes, headers: dict[str, str]) -> None:
    response = urllib3.HTTPResponse(body=io.BytesIO(body), headers=headers, preload_content=False)
    assert lines_of(response) == BODY.split(b"\n")[:2]


def test_a_line_split_across_reads_is_whole() -> None:
    class Trickle(io.RawIOBase):
        """Three bytes a read, as a slow server sends them."""

        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            piece, self.data = self.data[:3], self.data[3:]
            buffer[: len(piece)] = piece
            return len(piece)

    response = urllib3.HTTPResponse(body=io.BufferedReader(Trickle(BODY), buffer_size=3), preload_content=False)
    assert lines_of(response) == BODY.split(b"\n")[:2]
