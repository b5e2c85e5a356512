"""What watches the answered queries of one serving process: top talkers, the query log, dnstap.

The listeners hand over what they answered in batches (``take`` then ``batch``) or one at a time
(``one``: TCP, forwarded replies); nothing else on the hit path knows these exist. With all three
off no Tap is built, and a listener's only cost is a check that its tap is None.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from dnsd.observe.querylog import QueryLog
from dnsd.observe.talkers import Talkers

if TYPE_CHECKING:
    from dnsd.config import Config
    from dnsd.observe.dnstap import Dnstap

Answered = tuple[bytes, Any, bytes, float]  # query, client address, reply, seconds it took


class Tap:
    def __init__(self, talkers: Talkers | None, log: QueryLog | None, dnstap: Dnstap | None = None) -> None:
        self.talkers = talkers
        self.log = log
        self.dnstap = dnstap
        # The log and dnstap want every query; top talkers may sample a busy process.
        self.always = log is not None or dnstap is not None

    @classmethod
    def from_config(cls, config: Config) -> Tap | None:
        talkers = Talkers() if config.top_talkers else None
        log = QueryLog(config.log_queries, config.log_queries_rate) if config.log_queries else None
        dnstap = None
        if config.dnstap:
            from dnsd.observe.dnstap import Dnstap  # protobuf loads only when asked for

            dnstap = Dnstap(config.dnstap, identity=config.dnstap_identity.encode())
        if talkers is None and log is None and dnstap is None:
            return None
        return cls(talkers, log, dnstap)

    def start(self) -> None:
        if self.dnstap is not None:
            self.dnstap.start()

    def stop(self) -> None:
        if self.dnstap is not None:
            self.dnstap.stop()

    def take(self, queries: int) -> int:
        """Before a batch of about ``queries``: the weight top talkers give each of its queries (0: they skip
        it). The listener collects the batch's answers when this is not 0, or when ``always``."""
        return self.talkers.take(queries) if self.talkers is not None else 0

    def batch(self, answered: list[Answered], tcp: bool = False, weight: int = 1) -> None:
        if self.talkers is not None and weight:
            self.talkers.count(answered, weight)
        if self.log is not None:
            self.log.write_all(answered, tcp)
        if self.dnstap is not None:
            now = time.time()
            tap = self.dnstap
            for query, client, reply, seconds in answered:
                tap.client_query(query, client, tcp, now - seconds)
                tap.client_response(query, reply, client, tcp, now - seconds, now)

    def one(self, query: bytes, client: Any, reply: bytes, seconds: float, tcp: bool) -> None:
        """One answer (TCP, a forwarded reply), counted as a batch of one."""
        weight = self.take(1)
        if weight or self.always:
            self.batch([(query, client, reply, seconds)], tcp, weight)

    def forwarded(self, upstream: tuple[str, int], query: bytes, reply: bytes, sent: float, tcp: bool) -> None:
        """An upstream's reply to ``query``, sent at perf_counter ``sent``: dnstap's FORWARDER_* pair."""
        if self.dnstap is not None:
            now = time.time()
            asked = now - (time.perf_counter() - sent)
            self.dnstap.forwarder_query(query, upstream, tcp, asked)
            self.dnstap.forwarder_response(query, reply, upstream, tcp, asked, now)

    def upstream(self, name: str) -> None:
        """A name asked upstream (a forwarded query that the cache did not answer)."""
        if self.talkers is not None:
            self.talkers.sent_upstream(name)

    def drain(self) -> dict[str, Any] | None:
        """Top talkers counted since the last drain (talkers.py), for the main process's windows."""
        return self.talkers.drain() if self.talkers is not None else None

    def snapshot(self) -> dict[str, Any]:
        """Counters for the metrics (cumulative: a scrape takes nothing away)."""
        out: dict[str, Any] = {}
        if self.log is not None:
            out["log_written"], out["log_dropped"] = self.log.written, self.log.dropped
        if self.dnstap is not None:
            out["dnstap_sent"], out["dnstap_dropped"] = self.dnstap.sent, self.dnstap.dropped
        return out


__all__ = ["Answered", "Tap"]
