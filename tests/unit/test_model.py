"""Model records kept as parallel tuples: hostnames line up with their addresses, equal objects
compare equal (the store decides what changed by comparing), and records survive pickling."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from dnsd.cluster.addresses import pack, packed_ip
from dnsd.cluster.model import EndpointSet, Service, Subset, from_object, subset
from dnsd.cluster.store import Replace, Store, Upsert
from dnsd.dns.const import A
from dnsd.zone.records import service_records

Z = "cluster.local"
SERVICE: dict[str, Any] = {
    "kind": "Service", "metadata": {"name": "db", "namespace": "shop"},
    "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "ports": [{"name": "pg", "port": 5432}]},
}


def slice_(*endpoints: tuple[str, bool, str]) -> dict[str, Any]:
    """An EndpointSlice of (address, ready, hostname) endpoints."""
    return {
        "kind": "EndpointSlice", "addressType": "IPv4", "ports": [{"name": "pg", "port": 5432}],
        "metadata": {"name": "db-x1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "db"}},
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready}, **({"hostname": host} if host else {})}
            for ip, ready, host in endpoints
        ],
    }


def names(store: Store) -> dict[str, str]:
    """name -> address of every A record the store's one Service owns."""
    key = ("shop", "db")
    records = service_records(store.services[key], store.endpoint_sets(key), (Z,))
    return {name: str(data) for name, rtype, data in records if rtype == A and name != f"db.shop.svc.{Z}"}


def test_hostnames_stay_with_their_addresses_ready_or_not() -> None:
    store = Store()
    # Only a not-ready endpoint has a hostname: the ready one before it keeps its dashed label.
    store.apply([Replace("f", (from_object(SERVICE), from_object(slice_(
        ("10.0.0.1", True, ""), ("10.0.0.2", False, "db-1"), ("10.0.0.3", True, "db-2")))))])
    assert names(store) == {
        f"10-0-0-1.db.shop.svc.{Z}": "10.0.0.1", f"db-2.db.shop.svc.{Z}": "10.0.0.3", f"db-1.db.shop.svc.{Z}": "10.0.0.2",
    }


def test_a_hostname_change_is_a_change() -> None:
    store = Store()
    store.apply([Replace("f", (from_object(SERVICE), from_object(slice_(("10.0.0.1", True, ""), ("10.0.0.2", False, "db-1")))))])
    same = from_object(slice_(("10.0.0.1", True, ""), ("10.0.0.2", False, "db-1")))
    assert store.apply([Upsert("f", same)]) == (set(), set(), set(), {})  # equal: nothing to rebuild
    gone = from_object(slice_(("10.0.0.1", True, ""), ("10.0.0.2", False, "")))
    assert store.apply([Upsert("f", gone)]) == ({("shop", "db")}, set(), set(), {})  # the Service itself is as it was
    assert names(store) == {f"10-0-0-1.db.shop.svc.{Z}": "10.0.0.1", f"10-0-0-2.db.shop.svc.{Z}": "10.0.0.2"}
    # Without any hostname, one form whatever built it: no ("", "") to compare unequal to ().
    (sub,) = gone.subsets
    packed = Subset(sub.ports, pack([packed_ip("10.0.0.1")]), pack([packed_ip("10.0.0.2")]))
    assert sub == subset(sub.ports, [("10.0.0.1", "")], [("10.0.0.2", "")]) == packed


def test_records_survive_pickling() -> None:
    objects = (from_object(SERVICE), from_object(slice_(("10.0.0.1", True, ""), ("10.0.0.2", False, "db-1"))))
    copies = pickle.loads(pickle.dumps(objects, pickle.HIGHEST_PROTOCOL))
    assert copies == objects and [type(c) for c in copies] == [Service, EndpointSet]
    assert list(copies[1].subsets[0].endpoints(not_ready=True)) == [("10.0.0.1", ""), ("10.0.0.2", "db-1")]


def test_subset_with_only_not_ready_endpoints() -> None:
    sub = subset((), [], [("10.0.0.2", "db-1"), ("fd00::1", "")])
    assert list(sub.endpoints()) == []
    assert list(sub.endpoints(not_ready=True)) == [("10.0.0.2", "db-1"), ("fd00::1", "")]


@pytest.mark.parametrize("text", ["10.0.0.1", "0.0.0.0", "255.255.255.255", "010.0.0.1", "1.2.3", "1.2.3.256",
                                  " 1.2.3.4", "1.2.3.4 ", "0x1.2.3.4", "1..3.4", "1.2.3.04", "fd00::0:1", "::ffff:1.2.3.4"])
def test_canonical_ip_takes_what_ipaddress_takes_and_writes_it_as_ipaddress_does(text: str) -> None:
    """IPv4 text inet_pton takes is returned as it came: it must be canonical already."""
    import ipaddress

    from dnsd.cluster.addresses import canonical_ip

    try:
        want: str | None = str(ipaddress.ip_address(text.strip()))
    except ValueError:
        want = None
    try:
        got: str | None = canonical_ip(text)
    except ValueError:
        got = None
    assert got == want
