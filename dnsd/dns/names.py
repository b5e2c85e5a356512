"""Domain names between text and wire form: the one encoder, decoder and reader of each shape."""

from __future__ import annotations

from collections.abc import Iterable


def name_wire(name: str) -> bytes:
    """Uncompressed wire form of a lowercase text name ("" is the root)."""
    return b"".join(bytes((len(lb),)) + lb for lb in name.encode().split(b".") if lb) + b"\x00"


def wire_labels(wire: bytes) -> tuple[bytes, ...]:
    """The labels of an uncompressed wire name."""
    labels, i = [], 0
    while wire[i]:
        labels.append(wire[i + 1 : i + 1 + wire[i]])
        i += 1 + wire[i]
    return tuple(labels)


def labels_to_text(labels: Iterable[bytes]) -> str:
    """Index key of a question name; a label holding a dot is escaped so it can never match."""
    return ".".join(lb.decode("latin-1").replace(".", "\\.") for lb in labels)


def wire_text(wire: bytes) -> str:
    """Text of an uncompressed wire name, labels joined as they are (no escaping)."""
    return ".".join(lb.decode("latin-1") for lb in wire_labels(wire))


def label_tuple(name: str) -> tuple[bytes, ...]:
    """A text name as dnslib's label tuple ("" is the root)."""
    return tuple(name.encode().split(b".")) if name else ()


def read_name(wire: bytes, i: int) -> tuple[bytes, int]:
    """The name at ``i`` of a message, uncompressed (wire form, case kept), and where its bytes end."""
    out, end, hops = bytearray(), -1, 0
    while True:
        length = wire[i]
        if length & 0xC0 == 0xC0:
            hops += 1
            if hops > 64:
                raise ValueError("compression loop")
            if end < 0:
                end = i + 2
            i = ((length & 0x3F) << 8) | wire[i + 1]
            continue
        if length & 0xC0:
            raise ValueError("bad label type")
        out += wire[i : i + 1 + length]
        if len(out) > 255:
            raise ValueError("name too long")
        if not length:
            return bytes(out), end if end >= 0 else i + 1
        i += 1 + length


def skip_name(wire: bytes, i: int) -> int:
    """Offset just past the (possibly compressed) name at ``i``; ValueError if it is cut short."""
    for _ in range(128):
        length = wire[i]
        if length == 0:
            return i + 1
        if length & 0xC0 == 0xC0:
            if i + 2 > len(wire):
                raise ValueError("name cut short")
            return i + 2
        if length & 0xC0:
            raise ValueError("bad label type")
        i += 1 + length
        if i >= len(wire):
            raise ValueError("name cut short")
    raise ValueError("name too long")


__all__ = ["label_tuple", "labels_to_text", "name_wire", "read_name", "skip_name", "wire_labels", "wire_text"]
