"""profile.measure (one Measurement per model), profile.compare_latency (interleaved rounds) and the
ImageNet-size counts of torchvision networks (lcnn_lab.imagenet)."""
from __future__ import annotations

import statistics

import pytest
import torchvision

from lcnn_lab import imagenet
from lcnn_lab import profile as P
from lcnn_lab.models import create_model
from lcnn_lab.results import ResultsStore
from lcnn_lab.train import evaluate


def test_measure_holds_the_profile_latency_and_accuracy():
    model = create_model("cifar_net", width=0.25)
    m = P.measure(model, accuracy=True, eval_images=200, min_run_time=0.02, threads=1, bits=8)
    assert m.profile.params == P.count_params(model) and m.profile.macs == P.count_macs(model).total
    assert m.profile.size_bytes == P.model_size_bytes(model, 8) and m.profile.latency is None
    assert m.latency.threads == 1 and m.latency.median_ms > 0
    assert m.accuracy == evaluate(model, n=200) and m.accuracy_note == "200 test images"
    assert m.value("flops") == 2 * m.value("macs") and m.spread("accuracy") == m.accuracy.se
    assert "MACs" in str(m) and "accuracy" in str(m)
    counted = P.measure(model, latency=False)
    assert counted.latency is None and counted.accuracy is None and counted.value("latency_ms") is None
    with pytest.raises(ValueError, match="not a measured number"):
        counted.value("speed")


def test_compare_latency_interleaves_rounds_and_keeps_the_median(monkeypatch):
    calls, fake = [], iter(range(1, 1000))

    def timed(model, input_size=(1, 3, 32, 32), batch=None, **kwargs):
        calls.append((model.tag, batch))
        ms = float(next(fake))
        return P.Latency(ms, 0.0, ms, 1, 1, batch, kwargs.get("threads") or 1, "cpu")

    monkeypatch.setattr(P, "measure_latency", timed)
    a, b = create_model("lenet"), create_model("lenet")
    a.tag, b.tag = "a", "b"
    c = P.compare_latency({"a": a, "b": b}, batches=(1, 8), rounds=3, threads=1, progress=False)
    assert calls == [("a", 1), ("a", 8), ("b", 1), ("b", 8)] * 3      # every round times every model once
    assert c.times["a", 1] == (1.0, 5.0, 9.0) and c.median_ms("a", 1) == statistics.median((1, 5, 9))
    assert c.spread_ms("b", 8) == (12.0 - 4.0) / 2
    assert c.ratio("b", "a", 1) == pytest.approx(7.0 / 5.0)
    table = c.table()
    assert list(table.index) == ["a", "b"] and table.loc["a", "batch 8: vs a"] == 1.0
    with pytest.raises(ValueError, match="was not timed"):
        c.median_ms("a", 32)
    with pytest.raises(ValueError, match="at least one model"):
        P.compare_latency({})
    with pytest.raises(ValueError, match="rounds=0"):
        P.compare_latency({"a": a}, rounds=0)


def test_imagenet_stats_count_torchvision_networks_once(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    s = imagenet.imagenet_stats("resnet18", input_size=224, store=store)
    model = torchvision.models.resnet18()
    assert s["params"] == P.count_params(model) == 11_689_512          # torchvision's own figure
    assert s["macs"] == P.count_macs(model, (1, 3, 224, 224)).total and s["flops"] == 2 * s["macs"]
    assert abs(s["macs"] / 1e9 - s["tv_ops_g"]) < 0.02                  # torchvision's "GFLOPS" are MACs
    assert s["size_mib"] == pytest.approx(s["params"] * 4 / 2**20) and s["uncounted"] == {}
    assert 60 < s["top1_v1"] <= s["top1"] < 100
    monkeypatch.setattr(imagenet.profile, "count_macs", lambda *a, **k: pytest.fail("counted twice"))
    assert imagenet.imagenet_stats("resnet18", input_size=224, store=store) == s
    with pytest.raises(ValueError, match="no model called 'resnet_19'"):
        imagenet.imagenet_stats("resnet_19", store=store)
