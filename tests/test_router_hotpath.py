"""The router's per-request shortcuts give the same answers as the long way: the metadata-derived spec
cache, the request-id source, and the cached Prometheus children."""

from __future__ import annotations

import pytest

from serving.router.errors import BadRequest
from serving.router.metrics import Recorder
from serving.router.state import RequestIds
from serving.router.tensor_checks import ModelSpec, SpecCache, TensorIn, check_request

META = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [-1, 1]},
                   {"name": "HINT", "datatype": "BYTES", "shape": [-1, 1], "optional": True}],
        "outputs": [{"name": "LABEL"}, {"name": "PROBABILITIES"}]}


def test_spec_is_derived_once_per_metadata_dict():
    cache = SpecCache()
    spec = cache.get(META)
    assert spec is cache.get(META)
    assert spec == ModelSpec.from_metadata(META)
    assert spec.required == ("TEXT",) and spec.outputs == {"LABEL", "PROBABILITIES"}
    assert spec.inputs["TEXT"].shape == (-1, 1)


def test_an_equal_looking_new_dict_gets_its_own_spec():
    cache = SpecCache(size=2)
    first = cache.get(META)
    other = {"inputs": [{"name": "IDS", "datatype": "INT64", "shape": ["-1", "8"]}], "outputs": []}  # gRPC strings
    assert cache.get(other).inputs["IDS"].shape == (-1, 8)
    cache.get({"inputs": [], "outputs": []})  # over size: starts over, still right
    assert cache.get(META) == first


def test_checks_read_the_cached_spec():
    text = TensorIn("TEXT", "BYTES", (2, 1), 2)
    for _ in range(2):  # the second call takes the cached spec
        check_request([text], ["LABEL"], {}, META)
    with pytest.raises(BadRequest, match=r"missing input\(s\) \['TEXT'\]"):
        check_request([TensorIn("HINT", "BYTES", (1, 1), 1)], [], {}, META)
    with pytest.raises(BadRequest, match=r"shape \[2, 3\] does not match the model's \[-1, 1\]"):
        check_request([TensorIn("TEXT", "BYTES", (2, 3), 6)], [], {}, META)
    with pytest.raises(BadRequest, match=r"unknown requested output\(s\) \['SCORE'\]"):
        check_request([text], ["SCORE"], {}, META)


def test_request_ids_are_unique_within_and_across_sources():
    a, b = RequestIds(), RequestIds()
    ids = [a.new() for _ in range(1000)] + [b.new() for _ in range(1000)]
    assert len(set(ids)) == 2000
    assert a.new().split("-")[0] != b.new().split("-")[0]
    assert all(i.isascii() and i.isprintable() and len(i) <= 256 for i in ids)


def test_cached_metric_children_count_every_request():
    rec = Recorder("exp")
    for i, arm in enumerate(("a", "a", "b")):
        rec.served(f"id-{i}", arm, 0.002, ("positive",))
    sample = rec.registry.get_sample_value
    assert sample("router_requests_total", {"experiment": "exp", "arm": "a"}) == 2
    assert sample("router_requests_total", {"experiment": "exp", "arm": "b"}) == 1
    assert sample("router_predicted_labels_total", {"experiment": "exp", "arm": "a", "label": "positive"}) == 2
    assert sample("router_request_latency_seconds_count", {"experiment": "exp", "arm": "a"}) == 2
    rec.inflight.inc()
    assert sample("router_inflight_requests", {"experiment": "exp"}) == 1
