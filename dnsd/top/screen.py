"""What ``dnsd top`` shows, as rich renderables built from plain values (pure: no I/O, no clock).

One screen, top to bottom: a header (the server, query rate and rcodes, latency, the forward cache,
the sources), the upstreams, then the four heavy-hitter tables of the chosen window side by side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from dnsd.top.scrape import Stats
from dnsd.top.talkers import Entry, Talkers, Window

# (table in /debug/top, title, what its keys are)
TABLES = (("clients", "Top clients", "client"), ("names", "Top names", "name"),
          ("nxdomain", "Top NXDOMAIN names", "name"), ("forwarded", "Top forwarded names", "name"))


@dataclass(frozen=True)
class View:
    """Everything one frame shows; ``error`` set while /metrics cannot be read (the last data stays)."""

    target: str  # the base URL asked
    interval: float
    window: str  # "1m" | "15m"
    limit: int
    stats: Stats | None = None
    talkers: Talkers | None = None
    error: str | None = None
    talkers_note: str | None = None  # why there are no tables (/debug/top absent or broken)
    updated: float | None = None  # unix time of the last good scrape
    live: bool = True  # refreshed on a terminal (keys, retries), not one frame printed to a pipe


def per_second(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}/s"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.2f} ms"


def _clock(unix: float | None) -> str:
    return "never" if unix is None else time.strftime("%H:%M:%S", time.localtime(unix))


def header(view: View) -> Panel:
    lines = [Text.assemble(("dnsd top ", "bold"), view.target, f"   every {view.interval:g}s   window {view.window}",
                           f"   workers {view.talkers.workers}" if view.talkers else "",
                           f"   updated {_clock(view.updated)}", ("   q quit  w window" if view.live else "", "dim"))]
    if view.error:
        retry = f"; retrying every {view.interval:g}s" if view.live else ""
        lines.append(Text(view.error + retry, style="bold red"))
    s = view.stats
    if s is None:
        if not view.error:
            lines.append(Text("waiting for the first scrape of /metrics ...", style="dim"))
        return Panel(Group(*lines), box=box.SQUARE)
    rcodes = "  ".join(f"{rc} {percent(share)}" for rc, share in list(s.rcodes.items())[:5]) or "no replies"
    lines.append(Text.assemble(("queries  ", "bold"), (f"qps {per_second(s.qps)}", "bold cyan"), "   ", rcodes,
                               f"   latency p50 {duration(s.p50)}  p99 {duration(s.p99)}"))
    if s.forwarding:
        interval = f" over {s.seconds:.1f}s" if s.seconds else ""
        lines.append(Text.assemble(
            ("cache    ", "bold"), f"hit ratio {percent(s.cache_ratio)}{interval} ({percent(s.cache_ratio_total)} since start)",
            f"   entries {s.cache_entries:,.0f}   stale {per_second(s.stale_per_s)}   shed {per_second(s.shed_per_s)}"))
    else:
        lines.append(Text.assemble(("cache    ", "bold"), "forwarding off (--upstream none): no forward cache"))
    sources = "  ".join(f"{src.origin} {'synced' if src.synced else 'NOT SYNCED'}{'' if src.healthy else ' UNHEALTHY'}"
                        for src in s.sources)
    lines.append(Text.assemble(("zones    ", "bold"), f"{s.records:,.0f} records, {s.services:,.0f} services",
                               f"   sources: {sources}" if sources else ""))
    return Panel(Group(*lines), box=box.SQUARE)


def upstream_table(stats: Stats | None) -> RenderableType:
    if stats is None or not stats.forwarding:
        return Text("")
    table = Table(title="Upstreams", title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("upstream", "left"), ("queries", "right"), ("failed", "right"), ("mean", "right"),
                          ("p50", "right"), ("p99", "right"), ("failed checks", "right"), ("state", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for up in stats.upstreams:
        style = {"down": "bold red", "idle": "dim"}.get(up.state, "green")
        table.add_row(up.to, per_second(up.qps) if stats.seconds else "-", percent(up.failed), duration(up.mean),
                      duration(up.p50), duration(up.p99), f"{up.checks_failed:,.0f} ({up.checks_failed_total:,.0f} in all)",
                      Text(up.state, style=style))
    if not stats.upstreams:
        table.add_row("(none asked yet)", *[""] * 7)
    return table


def talker_table(title: str, what: str, entries: tuple[Entry, ...], window: Window, limit: int) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, expand=True, pad_edge=False)
    table.add_column("#", justify="right", width=3)
    # folded, not cut: the end of a long name is what tells a search-path expansion from the name meant
    table.add_column(what, ratio=1, overflow="fold")
    table.add_column("count", justify="right")
    table.add_column("/s", justify="right")
    table.add_column("share", justify="right")
    table.add_column("±", justify="right", style="dim")  # the true count is in [count - error, count]
    for rank, entry in enumerate(entries[:limit], 1):
        share = entry.count / window.queries if window.queries else None
        table.add_row(str(rank), entry.key, f"{entry.count:,}", f"{entry.count / window.seconds:,.1f}"
                      if window.seconds else "-", percent(share), f"{entry.error:,}" if entry.error else "")
    if not entries:
        table.add_row("", Text("(none)", style="dim"), "", "", "", "")
    return table


def talker_tables(view: View) -> RenderableType:
    if view.talkers is None:
        return Text(view.talkers_note or "waiting for /debug/top ...", style="yellow")
    window = view.talkers.windows.get(view.window)
    if window is None:
        return Text(f"/debug/top has no window {view.window} (it has: {', '.join(view.talkers.windows) or 'none'})",
                    style="yellow")
    tables = {name: talker_table(title, what, window.tables.get(name, ()), window, view.limit)
              for name, title, what in TABLES}
    about = Text.assemble((f"last {view.window}: ", "bold"), f"{window.queries:,} queries ({window.qps:,.1f}/s)",
                          (f"   counts are upper bounds: the true count is within ± below (sketches of "
                           f"{view.talkers.capacity:,} counters)", "dim"))
    grid = Table.grid(expand=True, padding=(0, 2))
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(tables["clients"], tables["names"])
    grid.add_row(tables["nxdomain"], tables["forwarded"])
    return Group(about, grid)


def screen(view: View) -> Group:
    return Group(header(view), upstream_table(view.stats), talker_tables(view))
