"""Endpoint addresses packed in a Subset: what comes back out is what canonical_ip gives, in order."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dnsd.cluster.addresses import canonical_ip, pack, packed_ip, unpack
from dnsd.cluster.model import subset

_ADDRESSES = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
    st.sampled_from(["::", "::1", "::ffff:1.2.3.4", "fd00::0:1", "FD00::1", "64:ff9b::10.0.0.1", " 10.0.0.7 "]),
)


@given(st.lists(_ADDRESSES, max_size=12))
def test_unpack_gives_back_the_canonical_text_in_order(texts: list[str]) -> None:
    packed = pack([packed_ip(t) for t in texts])
    assert unpack(packed) == [canonical_ip(t) for t in texts]
    assert bool(packed) == bool(texts)  # no endpoint: falsy, as has_endpoints() reads it


def test_one_family_costs_its_bytes_and_one_more() -> None:
    v4 = [f"10.0.{i}.{i}" for i in range(10)]
    assert len(pack([packed_ip(t) for t in v4])) == 1 + 4 * 10
    v6 = [f"fd00::{i + 1}" for i in range(3)]
    assert len(pack([packed_ip(t) for t in v6])) == 1 + 16 * 3
    # Four IPv4 addresses are 16 bytes, as one IPv6 address is: the first byte tells them apart.
    assert unpack(pack([packed_ip(t) for t in v4[:4]])) == v4[:4]
    assert unpack(pack([packed_ip("fd00::1")])) == ["fd00::1"]
    mixed = ["10.0.0.1", "fd00::1", "10.0.0.2"]
    assert unpack(pack([packed_ip(t) for t in mixed])) == mixed


@pytest.mark.parametrize(("text", "reason"), [
    ("10.0.0.256", "bad IP address '10.0.0.256'"),
    ("", "bad IP address ''"),
    ("fe80::1%eth0", "bad IP address 'fe80::1%eth0': an endpoint's address has no scope"),
])
def test_packed_ip_refuses_with_the_value_and_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        packed_ip(text)
    assert str(caught.value) == reason


def test_a_subset_reads_back_its_endpoints_and_hostnames() -> None:
    sub = subset((), [("10.0.0.1", ""), ("fd00::1", "db-0")], [("10.0.0.2", "db-1")])
    assert list(sub.endpoints()) == [("10.0.0.1", ""), ("fd00::1", "db-0")]
    assert list(sub.endpoints(not_ready=True)) == [("10.0.0.1", ""), ("fd00::1", "db-0"), ("10.0.0.2", "db-1")]
