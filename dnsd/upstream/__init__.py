"""Everything outside the served zones: upstream servers, forwarding, the answer cache, serve-stale.

The zone code never learns that upstreams exist: the Responder only says "not mine"
(a ``Pending`` query) and the listeners hand that to ``Forwarder.answer``.
"""
