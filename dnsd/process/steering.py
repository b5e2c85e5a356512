"""Steer each UDP question to one worker by its name, so the workers' reply tables split the names.

By default the kernel spreads a SO_REUSEPORT group by the sender's address and port, so
every worker soon sees every name and each keeps a rendering of all of them: N workers,
N copies of the hot answers. A classic BPF program attached to the group
(SO_ATTACH_REUSEPORT_CBPF, Linux 4.5+) picks the socket from a hash of the question name
instead (its first ``HASHED`` bytes, letters folded to lowercase as the table keys are),
so each name is rendered and kept by one worker only. Which worker owns which name does
not matter for correctness: after a worker is replaced the group's order changes, and
its names simply get rendered again where they now land. TCP is not steered (a SYN
carries no question); TCP answers are few.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import socket
import struct

log = logging.getLogger(__name__)

SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 52
HASHED = 24  # name bytes hashed: the first label or two, where names differ
QNAME = 13  # the first byte after the question's first length byte

# struct sock_filter: code (u16), jt (u8), jf (u8), k (u32)
LD_W_LEN, LD_MEM, ST, LDI = 0x80, 0x60, 0x02, 0x00
LDB_ABS = 0x30
JGT_K, JEQ_K, JA = 0x25, 0x15, 0x05
OR_K, MUL_K, ADD_X, MOD_K = 0x44, 0x24, 0x0C, 0x94
TAX, RET_A, RET_K = 0x07, 0x16, 0x06


def program(workers: int, hashed: int = HASHED) -> list[tuple[int, int, int, int]]:
    """The filter: hash = hash * 31 + (byte | 0x20) over the name's bytes; socket = hash % workers.

    It stops at the packet's end or the name's first zero byte (the root label), so the
    question type and any EDNS record never change where a name goes. Conditional jumps
    reach only 255 instructions ahead: each one lands on a ``ja`` to the end.
    """
    ins: list[tuple[int, int, int, int]] = [(LD_W_LEN, 0, 0, 0), (ST, 0, 0, 1), (LDI, 0, 0, 0), (ST, 0, 0, 0)]
    exits: list[int] = []  # positions of the "ja done" instructions, patched at the end
    for i in range(hashed):
        offset = QNAME + i
        ins += [(LD_MEM, 0, 0, 1), (JGT_K, 1, 0, offset)]  # len > offset: the byte exists
        exits.append(len(ins))
        ins.append((JA, 0, 0, 0))
        ins += [(LDB_ABS, 0, 0, offset), (JEQ_K, 0, 1, 0)]  # a zero byte: the name ended
        exits.append(len(ins))
        ins.append((JA, 0, 0, 0))
        ins += [(OR_K, 0, 0, 0x20), (TAX, 0, 0, 0), (LD_MEM, 0, 0, 0), (MUL_K, 0, 0, 31), (ADD_X, 0, 0, 0),
                (ST, 0, 0, 0)]
    done = len(ins)
    for at in exits:
        ins[at] = (JA, 0, 0, done - at - 1)
    ins += [(LD_MEM, 0, 0, 0), (MOD_K, 0, 0, workers), (RET_A, 0, 0, 0)]
    return ins


def _attach(sock: socket.socket, ins: list[tuple[int, int, int, int]]) -> None:
    raw = b"".join(struct.pack("HBBI", *i) for i in ins)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(ins), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def steer(sock: socket.socket, workers: int) -> bool:
    """Attach the program to ``sock``'s reuseport group; False (and default spreading) where unsupported.

    Only while this dnsd's sockets are the whole group: the program picks a socket by its place in
    the group, and during a handover the other dnsd's sockets hold places too (process/handover.py)."""
    try:
        _attach(sock, program(workers))
    except OSError as exc:
        log.warning("cannot steer queries to workers by name (%s): each worker may keep every hot answer", exc)
        return False
    return True


def unsteer(sock: socket.socket) -> None:
    """Take the program off ``sock``'s group: the kernel picks by sender again, and so skips the
    sockets a draining dnsd has sealed (net/reuseport.py), which a program would still choose."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return  # no program on the group
        # Before Linux 5.3: a program whose every choice is past the group's end, so the kernel hashes.
        with contextlib.suppress(OSError):
            _attach(sock, [(RET_K, 0, 0, 0xFFFFFFFF)])


def worker_of(question: bytes, workers: int, hashed: int = HASHED) -> int:
    """What the program computes, for tests: the worker for a DNS message's bytes."""
    h = 0
    for offset in range(QNAME, QNAME + hashed):
        if offset >= len(question) or question[offset] == 0:
            break
        h = (h * 31 + (question[offset] | 0x20)) & 0xFFFFFFFF
    return h % workers
