"""golang-dnstap's reader (``dnstap -y``) in a test: what it decoded, as parsed YAML documents."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import wait_for

Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Reader:
    """``dnstap -y`` reading ``target`` ("unix:PATH" or "tcp:HOST:PORT"), its YAML in a file."""

    def __init__(self, target: str, workdir: Path) -> None:
        self.target = target
        kind, _, where = target.partition(":")
        self.out = workdir / f"dnstap-{time.monotonic_ns()}.yaml"
        self.err = self.out.with_suffix(".log")
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(["dnstap", "-u" if kind == "unix" else "-l", where, "-y"], stdout=out, stderr=err)
        if kind == "unix":
            wait_for(lambda: "opened input socket" in self.err.read_text() or self.proc.poll() is not None, timeout=10)
        else:
            host, _, port = where.rpartition(":")
            wait_for(lambda: self._listening(host.strip("[]"), int(port)), timeout=10)
        assert self.proc.poll() is None, self.err.read_text()

    def _listening(self, host: str, port: int) -> bool:
        try:
            socket.create_connection((host, port), timeout=0.5).close()  # the reader logs it and goes on
            return True
        except OSError:
            return False

    def text(self) -> str:
        """Whole documents only: the reader may be writing the next one."""
        text = self.out.read_text()
        return text[: text.rfind("---\n") + 4] if "---\n" in text else ""

    def count(self) -> int:
        return self.text().count("\n---\n") + self.text().startswith("---\n")

    def messages(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait for ``n`` decoded messages, then parse them (and check that no more came)."""
        wait_for(lambda: self.count() >= n, timeout=timeout)
        docs = [d for d in yaml.load_all(self.text(), Loader=Loader) if d]
        assert len(docs) == n, f"{len(docs)} messages, expected {n}"
        return docs

    def query_ids(self) -> list[int]:
        return [int(i) for i in re.findall(r"query_message: \|\n\s+;; opcode: QUERY, status: \w+, id: (\d+)", self.text())]

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)
