"""The forward cache: upstream replies by question, TTLs counting down, RFC 2308 negatives,
prefetch of hot entries and RFC 8767 serve-stale.

Storage is a cachetools ``TLRUCache``: size-bounded (LRU), and an entry leaves once it is
older than its TTL plus the serve-stale window (until then it can still answer, stale,
when every upstream fails). A hit hands the listener a ``wire.Entry`` rendered for the
entry's current age in whole seconds, so a cached reply goes out through the same
precomputed-bytes splice as a cluster name: no parsing, no await.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

from cachetools import Cache, TLRUCache

from dnsd.dns.const import AAAA, ANY, CNAME, DEFAULT_PAYLOAD, IN, NOERROR, NS, PTR, SOA, SRV, TXT, A
from dnsd.dns.names import name_wire
from dnsd.dns.reply import Entry, make_entry
from dnsd.upstream.message import Reply, aged, cache_ttl, ttl_offset

STALE_TTL = 30  # RFC 8767 4: the TTL of a stale answer
PREFETCH_PERCENT = 10  # refresh when less than this share of the TTL is left (CoreDNS prefetch default)
FORGET_TYPES = (PTR, A, AAAA, ANY, CNAME, TXT, SRV, NS, SOA)


class Item:
    """One cached reply (normalised: ID 0, RD clear, no OPT), with its rendering for one age."""

    __slots__ = ("age", "entry", "expires", "hits", "negative", "offsets", "origin", "payload", "refreshing", "reply",
                 "rotate", "stale", "stat", "stored", "ttl")

    def __init__(self, reply: Reply, ttl: int, stored: float, stat: tuple[int, int], payload: int,
                 rotate: bool = False) -> None:
        self.rotate = rotate  # loadbalance: each reply rotates the answer's addresses
        self.reply = reply
        self.payload = payload
        self.offsets = tuple(ttl_offset(reply.wire, r) for r in reply.records)
        self.ttl = ttl
        self.stored = stored
        self.expires = stored + ttl
        self.stat = stat
        self.age = -1
        self.entry: Entry | None = None
        self.stale: Entry | None = None
        self.hits = 0
        self.refreshing = False
        self.origin: Any = None  # a derived reply (autopath): the continuation it came from, to refresh it
        self.negative = reply.rcode != NOERROR or not any(r.section == 0 for r in reply.records)

    def render(self, age: int) -> Entry:
        if age != self.age or self.entry is None:
            wire = aged(self.reply, self.offsets, age, cap=self.ttl)
            self.entry = make_entry(wire, self.reply.qend, 0, self.stat, self.payload, self.rotate)
            self.age = age
        return self.entry

    def render_stale(self) -> Entry:
        if self.stale is None:
            self.stale = make_entry(aged(self.reply, self.offsets, None, STALE_TTL), self.reply.qend, 0, self.stat,
                                    self.payload, self.rotate)
        return self.stale


class ForwardCache:
    def __init__(self, maxsize: int, max_ttl: int, serve_stale: int, prefetch: int, payload: int = DEFAULT_PAYLOAD,
                 clock: Callable[[], float] = time.monotonic, loadbalance: bool = False) -> None:
        self.payload = payload
        self.loadbalance = loadbalance  # each reply rotates the answer's addresses (CoreDNS's loadbalance)
        self.max_ttl = max_ttl
        self.serve_stale = serve_stale
        self.prefetch = prefetch  # hits after which an entry is refreshed before it expires; 0: never
        self.clock = clock
        self._items: TLRUCache[bytes, Item] = TLRUCache(
            maxsize, ttu=lambda _key, item, _now: item.expires + serve_stale, timer=clock)
        self.on_prefetch: Callable[[bytes], None] | None = None  # the forwarder schedules the refresh
        self.hits = [0, 0]  # success, denial
        self.stale_served = 0
        self.prefetches = 0
        self._counted = (-1e9, 0)
        # key -> (entry, valid until, item): the entries hit in the current second. A plain dict in
        # front of the TLRUCache because the fast path runs this for every cached external name, and
        # TLRUCache.get measured 4.6 us against 0.07 us for dict.get (loaded 2-CPU machine); the
        # TLRUCache still sees each key once a second (LRU order, expiry), and the dict is emptied
        # every second, so it holds at most one second's worth of hot keys.
        self._hot: dict[bytes, tuple[Entry, float, Item, float]] = {}  # (entry, until, item, prefetch at)
        self._hot_until = 0.0
        # Replies derived from our own data too (autopath, upstream/steps.py): which keys each of
        # our names was used for, and each such key's current walk (only it may store). Plain dicts
        # kept in step with forget(); past ``maxsize`` keys they, and the replies, are all dropped.
        self.maxsize = maxsize
        self._derived: dict[str, set[bytes]] = {}
        self._reserved: dict[bytes, object] = {}

    def __len__(self) -> int:
        return len(self._items)

    def entry(self, key: bytes) -> Entry | None:
        """A fresh entry for the lowercased question ``key`` (name, type, class in wire form), else None.
        Runs on the fast path of every query that misses the cluster table."""
        now = self.clock()
        hot = self._hot.get(key)
        if hot is None or now >= hot[1]:
            if now >= self._hot_until:
                self._hot.clear()
                self._hot_until = now + 1.0
            if not _has(self._items, key):  # a miss without TLRUCache's expiry and LRU machinery (~9 us)
                return None
            item = self._items.get(key)
            if item is None or now >= item.expires:
                return None
            age = int(now - item.stored)
            prefetch_at = item.expires - item.ttl * PREFETCH_PERCENT / 100 if self.prefetch else item.expires
            hot = self._hot[key] = (item.render(age), min(item.stored + age + 1, item.expires), item, prefetch_at)
        item = hot[2]
        item.hits += 1
        self.hits[item.negative] += 1
        if now >= hot[3] and item.hits >= self.prefetch and not item.refreshing and self.on_prefetch is not None:
            item.refreshing = True
            self.prefetches += 1
            self.on_prefetch(key)
        return hot[0]

    def stale(self, key: bytes) -> Entry | None:
        """An expired entry still inside the serve-stale window, with TTL 30 (RFC 8767)."""
        if not self.serve_stale:
            return None
        item = self._items.get(key)
        if item is None or self.clock() >= item.expires + self.serve_stale:
            return None
        self.stale_served += 1
        return item.render_stale()

    def put(self, key: bytes, reply: Reply, stat: tuple[int, int]) -> Entry:
        """Cache ``reply`` if it may be cached; its entry at age 0 either way."""
        item, entry = self.prepare(reply, stat)
        self.store(key, item)
        return entry

    def prepare(self, reply: Reply, stat: tuple[int, int]) -> tuple[Item, Entry]:
        """``put`` in two halves, so the asker's reply can go out before the cache insertion."""
        item = Item(reply, cache_ttl(reply, self.max_ttl), self.clock(), stat, self.payload, self.loadbalance)
        return item, item.render(0)

    def store(self, key: bytes, item: Item) -> None:
        self._hot.pop(key, None)
        if item.ttl > 0:
            self._items[key] = item
        else:
            self._items.pop(key, None)  # an uncacheable answer replaces an older one (stale included)

    def fresh_item(self, key: bytes, entry: Entry) -> Item | None:
        """The cached item ``entry`` was rendered from, while it is fresh; None for a stale entry,
        an uncacheable reply or an error (``entry`` is not a cached item's current rendering)."""
        item = _peek(self._items, key)
        if item is None or entry is not item.entry or self.clock() >= item.expires:
            return None
        return item

    def reserve(self, key: bytes, depends: Iterable[str]) -> object:
        """Before deriving the reply for ``key`` from our names ``depends``: a token that stays valid
        until one of those names changes (forget), so a reply derived from old data is not kept."""
        if len(self._reserved) >= self.maxsize:
            self.forget_derived()
        token = self._reserved[key] = object()
        for name in depends:
            self._derived.setdefault(name, set()).add(key)
        return token

    def put_derived(self, key: bytes, reply: Reply, stored: float, ttl: int, stat: tuple[int, int],
                    token: object, origin: Any) -> Entry:
        """Keep a derived reply (``stored``: when its TTLs were as in ``reply``) if ``token`` still holds;
        its entry as of now either way. ``origin``: what prefetch hands back to refresh it (its own
        question is never asked upstream)."""
        item = Item(reply, max(ttl, 0), stored, stat, self.payload, self.loadbalance)
        item.origin = origin
        self._hot.pop(key, None)
        if ttl > 0 and self._reserved.get(key) is token:
            self._items[key] = item
        return item.render(max(0, int(self.clock() - stored)))

    def forget_derived(self) -> None:
        """Drop every reply derived from our data (our data changed too much to say which)."""
        for key in self._reserved:
            self._items.pop(key, None)
            self._hot.pop(key, None)
        self._reserved.clear()
        self._derived.clear()

    def peek(self, key: bytes) -> Item | None:
        """The item for ``key``, fresh or not, without touching its LRU place or expiry."""
        return _peek(self._items, key)

    def done_refreshing(self, key: bytes) -> None:
        item = self._items.get(key)
        if item is not None:
            item.refreshing = False

    def forget(self, names: Iterable[str]) -> None:
        """Drop cached replies derived from names of ours that changed, and those for reverse names
        that dnsd now answers itself."""
        items = self._items
        if self._derived:
            names = tuple(names)
            for name in names:
                for key in self._derived.pop(name, ()):
                    items.pop(key, None)
                    self._hot.pop(key, None)
                    self._reserved.pop(key, None)
        if not items:
            return
        for name in names:
            if name.endswith(".arpa"):
                wire = name_wire(name)
                for qtype in FORGET_TYPES:
                    key = wire + struct.pack("!HH", qtype, IN)
                    items.pop(key, None)
                    self._hot.pop(key, None)

    def counts(self) -> tuple[int, int]:
        """Entries: (success, denial). Walking 100k+ entries costs ~30 ms and workers report every
        second, so the split is recounted at most every 30 s; the total is always exact."""
        now = self.clock()
        if now - self._counted[0] >= 30:
            denial = 0
            for key in list(Cache.__iter__(self._items)):  # the base class's: no LRU/expiry side effects
                item = _peek(self._items, key)
                denial += item is not None and item.negative
            self._counted = (now, denial)
        denial = min(self._counted[1], len(self._items))
        return len(self._items) - denial, denial


_has = Cache.__contains__  # the base class's: a dict membership test, no expiry check


def _peek(cache: TLRUCache, key: bytes) -> Item | None:
    try:
        item: Item = Cache.__getitem__(cache, key)
    except KeyError:
        return None
    return item
