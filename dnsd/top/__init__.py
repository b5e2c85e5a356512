"""``dnsd top``: a live terminal view of a running dnsd, read from its HTTP port only.

A client of ``/metrics`` and ``/debug/top`` like any scraper: it imports none of the serving
stages, so it runs against a remote dnsd as well as a local one (import-linter checks this).

- ``scrape.py``: /metrics text -> samples; two samples -> rates, ratios, latency quantiles (pure)
- ``talkers.py``: the JSON of /debug/top -> typed windows of heavy hitters (pure)
- ``screen.py``: what the terminal shows, as rich renderables (pure)
- ``app.py``: the HTTP polling thread, the keyboard and the rich.live loop
"""
