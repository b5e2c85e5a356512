"""The terminal loop of ``dnsd top``: a thread polls the HTTP port, the main thread reads keys and draws.

Polling runs in its own thread so that ``q`` answers at once even while a remote address hangs
until its timeout. Nothing here computes: scrape.py, talkers.py and screen.py do.
"""

from __future__ import annotations

import http.client
import os
import select
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from types import FrameType, TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live

from dnsd.top import scrape, talkers
from dnsd.top.screen import View, screen

WINDOWS = ("1m", "15m")
# /debug/top answers 400 to a limit above its sketches' capacity: ask for at most this until an answer
# tells the real capacity (128 is what dnsd keeps, docs/observability.md).
CAPACITY = 128
DEFAULT_LIMIT = 10
# Straight to the address given: a proxy from the environment has no business between top and dnsd.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Unreachable(Exception):
    """A request that got no usable answer; the message says why, for the screen."""

    def __init__(self, why: str, status: int | None = None) -> None:
        super().__init__(why)
        self.status = status  # the HTTP status, when there was an answer


def get(url: str, timeout: float) -> bytes:
    try:
        with _OPENER.open(url, timeout=timeout) as reply:
            body: bytes = reply.read()
            return body
    except urllib.error.HTTPError as exc:
        raise Unreachable(f"HTTP {exc.code} from {url}", exc.code) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        why = (reason.strerror or str(reason)) if isinstance(reason, OSError) else str(reason)
        raise Unreachable(f"cannot reach {url}: {why.lower()}") from None
    except TimeoutError:
        raise Unreachable(f"cannot reach {url}: no answer within {timeout:g}s") from None
    except (http.client.HTTPException, OSError) as exc:
        raise Unreachable(f"cannot reach {url}: {exc or type(exc).__name__}") from None


@dataclass(frozen=True)
class Polled:
    """What the poller last learnt; the data of the last good scrape stays while errors come."""

    stats: scrape.Stats | None = None
    talkers: talkers.Talkers | None = None
    error: str | None = None
    talkers_note: str | None = None
    updated: float | None = None


class Poller(threading.Thread):
    def __init__(self, base: str, interval: float, limit: int) -> None:
        super().__init__(name="dnsd-top-poll", daemon=True)
        self.base, self.interval, self.limit = base, interval, limit
        self.capacity = CAPACITY  # then what the last /debug/top said
        self.timeout = max(2.0, interval)
        self.changed = threading.Event()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._polled = Polled()
        self._before: scrape.Scrape | None = None

    @property
    def polled(self) -> Polled:
        with self._lock:
            return self._polled

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            self.poll()
            self._halt.wait(max(0.0, started + self.interval - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()

    def poll(self) -> None:
        """One round: /metrics, then /debug/top."""
        url = self.base + "/metrics"
        try:
            after = scrape.parse(get(url, self.timeout).decode("utf-8", "replace"), time.monotonic())
        except (Unreachable, ValueError) as exc:
            why = str(exc) if isinstance(exc, Unreachable) else f"{url} is not Prometheus text: {exc}"
            self._publish(replace(self.polled, error=why))
            return
        stats = scrape.compare(self._before, after)
        self._before = after
        heavy, note = None, None
        top_url = f"{self.base}/debug/top?limit={max(1, min(self.limit, self.capacity))}"
        try:
            heavy = talkers.parse(get(top_url, self.timeout))
            self.capacity = heavy.capacity
        except Unreachable as exc:
            note = str(exc)
            if exc.status == 404:
                note = "this dnsd has no /debug/top (top talkers off, or a version before them)"
            elif exc.status == 400 and self.capacity > DEFAULT_LIMIT:
                self.capacity = DEFAULT_LIMIT  # a smaller capacity than thought: the default is always valid
        except ValueError as exc:
            note = f"{top_url}: unexpected answer: {exc}"
        self._publish(Polled(stats, heavy, None, note, time.time()))

    def _publish(self, polled: Polled) -> None:
        with self._lock:
            self._polled = polled
        self.changed.set()


class Keys:
    """Single key presses from a terminal's stdin (cbreak mode: Ctrl-C still raises KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
        self._saved: list[Any] | None = None  # termios attributes, restored on exit

    def __enter__(self) -> Keys:
        if self.fd is not None:
            import termios
            import tty

            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.fd is not None and self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def read(self, timeout: float) -> str | None:
        """A key, None when none came within ``timeout``, "" once the terminal is gone (hung up)."""
        if self.fd is None:
            time.sleep(timeout)
            return None
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return None
        try:
            return os.read(self.fd, 1).decode(errors="replace")
        except OSError:
            return ""


def _view(base: str, interval: float, window: str, limit: int, polled: Polled, live: bool = True) -> View:
    return View(base, interval, window, limit, polled.stats, polled.talkers, polled.error, polled.talkers_note,
                polled.updated, live)


def _quit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # unwinds through Live and Keys, so the terminal is given back as it was


def run(base: str, interval: float = 1.0, limit: int = 10, window: str = "1m") -> int:
    """Until q, Ctrl-C or SIGTERM; 0 then. Not on a terminal: one frame after two scrapes."""
    console = Console()
    if not console.is_terminal:
        return once(base, interval, limit, window)
    signal.signal(signal.SIGTERM, _quit)
    poller = Poller(base, interval, limit)
    poller.start()
    try:
        with Keys() as keys, Live(console=console, screen=True, auto_refresh=False) as live:
            live.update(screen(_view(base, interval, window, limit, poller.polled)), refresh=True)
            while True:
                key = keys.read(0.1)
                if key in ("q", "Q", ""):
                    break
                if key in ("w", "W"):
                    window = WINDOWS[(WINDOWS.index(window) + 1) % len(WINDOWS)] if window in WINDOWS else WINDOWS[0]
                elif not poller.changed.is_set():
                    continue
                poller.changed.clear()
                live.update(screen(_view(base, interval, window, limit, poller.polled)), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        poller.stop()
    return 0


def once(base: str, interval: float, limit: int, window: str) -> int:
    """For a pipe or a file: two scrapes ``interval`` apart (so rates exist), one frame; 1 if unreachable."""
    poller = Poller(base, interval, limit)
    try:
        poller.poll()
        if poller.polled.error is None:
            time.sleep(interval)
            poller.poll()
    except KeyboardInterrupt:
        return 130  # as a shell reports Ctrl-C, without a traceback
    polled = poller.polled
    # rich reads COLUMNS; without it a pipe would get 80 columns, too narrow for two tables side by side
    console = Console(width=None if "COLUMNS" in os.environ else 160)
    console.print(screen(_view(base, interval, window, limit, polled, live=False)))
    return 1 if polled.error else 0
