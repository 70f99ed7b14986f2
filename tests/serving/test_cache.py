"""The result cache: identical answers, TTL expiry, bounds."""

from __future__ import annotations

import numpy as np

from shipyard.serving.cache import ResultCache, cache_key
from shipyard.serving.types import (
    CacheLookups,
    CacheSnapshot,
    InferRequest,
    InferResponse,
    ModelKey,
    Tensor,
)
from shipyard.transports.codec import encode_response


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


M1 = ModelKey("m", 1)


def key(values: list[float], version: ModelKey = M1) -> bytes:
    return cache_key(version, {"x": np.array(values)}, None)


def test_key_depends_on_version_values_dtype_shape_and_outputs() -> None:
    base = cache_key(M1, {"x": np.array([[1.0, 2.0]])}, None)
    assert base == cache_key(M1, {"x": np.array([[1.0, 2.0]])}, None)
    assert base != cache_key(ModelKey("m", 2), {"x": np.array([[1.0, 2.0]])}, None)
    assert base != cache_key(M1, {"x": np.array([[1.0, 3.0]])}, None)
    assert base != cache_key(M1, {"x": np.array([[1.0, 2.0]], dtype=np.float32)}, None)
    assert base != cache_key(M1, {"x": np.array([1.0, 2.0])}, None)
    assert base != cache_key(M1, {"x": np.array([[1.0, 2.0]])}, ["predict"])
    words = cache_key(M1, {"w": np.array(["ab", "c"], dtype=object)}, None)
    assert words != cache_key(M1, {"w": np.array(["a", "bc"], dtype=object)}, None)


def test_a_hit_encodes_to_the_same_bytes_as_the_fresh_answer() -> None:
    cache = ResultCache(max_entries=10, max_bytes=10_000, ttl_seconds=60)
    fresh = {"predict": np.array([1, 0]), "proba": np.array([[0.1, 0.9], [0.8, 0.2]])}
    cache.put(key([1, 2]), fresh)
    hit = cache.get(key([1, 2]), M1)
    assert hit is not None
    request = InferRequest(inputs=[])

    def encoded(outputs: dict[str, np.ndarray]) -> bytes:
        tensors = [
            Tensor(n, "FP64" if a.dtype.kind == "f" else "INT64", a) for n, a in outputs.items()
        ]
        return encode_response(InferResponse("m", "1", tensors, id="r"), request)[0]

    assert encoded(hit) == encoded(fresh)
    assert (cache.hits, cache.misses) == (1, 0)


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = ResultCache(max_entries=10, max_bytes=10_000, ttl_seconds=5, clock=clock)
    cache.put(key([1]), {"y": np.array([1.0])})
    clock.now = 4.9
    assert cache.get(key([1]), M1) is not None
    clock.now = 5.0
    assert cache.get(key([1]), M1) is None
    assert len(cache) == 0 and cache.bytes == 0
    assert cache.hit_ratio == 0.5


def test_bounds_on_entries_and_bytes_evict_least_recently_used() -> None:
    cache = ResultCache(max_entries=2, max_bytes=10_000, ttl_seconds=60)
    for i in range(3):
        cache.put(key([i]), {"y": np.array([float(i)])})
        cache.get(key([0]), M1)  # keep 0 warm
    assert cache.get(key([0]), M1) is not None
    assert cache.get(key([1]), M1) is None  # evicted
    assert len(cache) == 2

    small = ResultCache(max_entries=100, max_bytes=32 + 8 * 10, ttl_seconds=60)
    small.put(key([1]), {"y": np.zeros(10)})
    small.put(key([2]), {"y": np.zeros(10)})
    assert len(small) == 1 and small.bytes <= small.max_bytes
    small.put(key([3]), {"y": np.zeros(1000)})  # larger than the whole cache: not kept
    assert small.get(key([3]), M1) is None


def test_snapshot_counts_lookups_per_version() -> None:
    cache = ResultCache(max_entries=10, max_bytes=10_000, ttl_seconds=60)
    cache.put(key([1]), {"y": np.array([1.0])})
    m1, m2 = ModelKey("m", 1), ModelKey("m", 2)
    cache.get(key([1]), m1)
    cache.get(key([2]), m1)
    cache.get(key([1]), m1)
    cache.get(key([1], m2), m2)
    assert cache.snapshot() == CacheSnapshot(
        entries=1,
        bytes=cache.bytes,
        lookups=(CacheLookups(m1, hits=2, misses=1), CacheLookups(m2, hits=0, misses=1)),
    )
    assert (cache.hits, cache.misses) == (2, 2)


def test_served_cache_hit_is_byte_identical(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from tests import fixtures
    from tests.server import running_shipyard

    model = fixtures.write_sklearn_model(tmp_path)
    env = {"SHIPYARD_HOME": str(tmp_path / "home"), "SHIPYARD_MODELS": '{"model": {"cache": true}}'}
    rows, _ = fixtures.training_data(rows=2)
    body = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64",
                        "data": rows.tolist()}]}  # fmt: skip
    with running_shipyard(env, "serve", str(model)) as server:
        url = f"{server.url}/v2/models/model/infer"
        first = httpx.post(url, json=body, timeout=30)
        second = httpx.post(url, json=body, timeout=30)
        other = httpx.post(url, json={**body, "id": "x"}, timeout=30)
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert first.headers["x-shipyard-cache"] == "miss"
    assert second.headers["x-shipyard-cache"] == "hit"
    assert second.content == first.content
    assert other.headers["x-shipyard-cache"] == "hit"
    assert other.json()["id"] == "x"
    assert 'shipyard_cache_lookups_total{model="model",result="hit",version="1"} 2.0' in metrics
    assert 'shipyard_cache_lookups_total{model="model",result="miss",version="1"} 1.0' in metrics
    hit_ratio = 'shipyard_cache_hit_ratio{model="model",version="1"} 0.666'
    assert hit_ratio in metrics


def test_cache_is_opt_in_per_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from tests import fixtures
    from tests.server import running_shipyard

    model = fixtures.write_sklearn_model(tmp_path)
    env = {"SHIPYARD_HOME": str(tmp_path / "home"), "SHIPYARD_MODELS": '{"other": {"cache": true}}'}
    rows, _ = fixtures.training_data(rows=1)
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                        "data": rows.tolist()}]}  # fmt: skip
    with running_shipyard(env, "serve", str(model)) as server:
        url = f"{server.url}/v2/models/model/infer"
        answers = [httpx.post(url, json=body, timeout=30) for _ in range(2)]
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert [a.headers["x-shipyard-cache"] for a in answers] == ["miss", "miss"]
    assert "shipyard_cache_lookups_total{" not in metrics
    assert 'shipyard_batches_total{model="model",version="1"} 2.0' in metrics
