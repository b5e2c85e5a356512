"""Identical questions in flight are asked upstream once: everyone who asks meanwhile waits for that one.

Two shapes: ``Inflight`` for the forwarded questions, whose askers are callbacks (a listener's send,
no task per query), and ``shared`` for the autopath walks, which are coroutines.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from dnsd.dns.reply import Entry

log = logging.getLogger(__name__)
Deliver = Callable[[Entry], None]
T = TypeVar("T")


class Inflight(dict[bytes, list[Deliver]]):
    """Question (name, type, class in wire form) -> who waits for its reply.

    A plain dict underneath: joining a question in flight and counting them (how many are
    in flight decides shedding and --max-concurrent) stay one dict operation per query.
    """

    __slots__ = ()

    def finish(self, key: bytes, entry: Entry) -> None:
        """Hand ``entry`` to everyone waiting for ``key``; the question is no longer in flight."""
        for deliver in self.pop(key, ()):
            try:
                deliver(entry)
            except Exception:  # one asker's failure (a closed socket) must not cost the others
                log.exception("delivering a forwarded reply failed")


async def shared(table: dict[bytes, asyncio.Future[T]], key: bytes, work: Callable[[], Awaitable[T]]) -> T:
    """``work()``'s outcome, computed once for every caller with the same ``key`` at the same time.

    A later caller that is cancelled leaves the others waiting (``shield``); the first caller's
    cancellation cancels them all, its exception reaches them all.
    """
    future = table.get(key)
    if future is not None:
        return await asyncio.shield(future)
    future = table[key] = asyncio.get_running_loop().create_future()
    try:
        result = await work()
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)
            future.exception()  # retrieved: no warning when nobody else waits
        raise
    finally:
        table.pop(key, None)
    future.set_result(result)
    return result


__all__ = ["Deliver", "Inflight", "shared"]
