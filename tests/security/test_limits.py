"""The pure parts of bounding unauthenticated work: addresses, buckets, counted refusals."""

from __future__ import annotations

import pytest

from shipyard.errors import RateLimited
from shipyard.registry.audit import EventTally
from shipyard.registry.service import Registry
from shipyard.scaling.membership import rate_share
from shipyard.security.gate import Gatekeeper
from shipyard.security.keys import KeyStore, Principal
from shipyard.security.limits import Buckets, TokenBucket, client_host


def test_client_host_is_the_address_of_any_transports_peer() -> None:
    assert client_host("127.0.0.1:52311") == "127.0.0.1"  # REST (ASGI scope's client)
    assert client_host("::1:52311") == "::1"
    assert client_host("ipv4:10.0.0.7:50051") == "10.0.0.7"  # gRPC peers
    assert client_host("ipv6:[2001:db8::1]:50051") == "2001:db8::1"
    assert client_host("") == "?"


def test_a_bucket_gives_back_what_did_not_count() -> None:
    bucket = TokenBucket(rate=0.001, burst=2)
    assert (bucket.take(), bucket.take()) == (0.0, 0.0)
    assert bucket.take() > 0  # empty: about 1,000 s to the next token
    bucket.give_back()
    assert bucket.take() == 0.0


def test_buckets_forget_the_least_recently_used_name() -> None:
    buckets = Buckets(most=2)
    first = buckets.get("a", rate=0.001, burst=1)
    assert first.take() == 0.0 and first.take() > 0
    buckets.get("b", rate=0.001, burst=1)
    buckets.get("c", rate=0.001, burst=1)  # "a" is the least recently used: forgotten
    assert len(buckets) == 2
    assert buckets.get("a", rate=0.001, burst=1).take() == 0.0  # a fresh bucket


def test_refused_logins_are_written_as_one_counted_event_per_group(registry: Registry) -> None:
    tally = EventTally(registry.audit, window_seconds=1e9, max_groups=2)  # ends in 2033
    for _ in range(3):
        tally.add("auth.failed", "key:abc", "10.0.0.7")
    tally.add("auth.failed", "key:?", "10.0.0.8")
    tally.add("auth.failed", "key:?", "10.0.0.9")  # a third group: counted under (others)
    assert tally.flush() == 0  # its window is not over
    assert tally.flush(everything=True) == 3
    events = registry.audit.events()
    assert [(e.action, e.target, e.source, e.actor, (e.after or {})["count"]) for e in events] == [
        ("auth.failed", "key:abc", "10.0.0.7", "anonymous", 3),
        ("auth.failed", "key:?", "10.0.0.8", "anonymous", 1),
        ("auth.failed", "(others)", "(others)", "anonymous", 1),
    ]
    assert tally.flush(everything=True) == 0  # written once


def test_each_process_holds_its_share_of_a_keys_rate(registry: Registry) -> None:
    # Shares by hand: three live replicas of two HTTP processes each enforce a sixth.
    assert rate_share(live_replicas=3, http_processes=2) == 1 / 6
    assert rate_share(live_replicas=0, http_processes=1) == 1.0  # no heartbeat yet: all
    gate = Gatekeeper(KeyStore(registry.sessions), registry.audit)
    try:
        caller = Principal("ci", "predictor", key_id="k1", rate_per_second=8.0)
        gate.share = rate_share(live_replicas=2, http_processes=1)
        # A bucket of half the key's second: 4 requests at once, the 5th refused (the
        # next token is 1/4 s away, far longer than these calls take).
        for _ in range(4):
            gate._limit(caller)
        with pytest.raises(RateLimited, match="rate of 8 requests/s"):
            gate._limit(caller)
    finally:
        gate.close()
