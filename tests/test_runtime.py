"""ONNX Runtime (lcnn_lab.runtime): every CIFAR model of the book exports to ONNX and gives PyTorch's
outputs on real images, at any batch size; the int8 file agrees with the float one; latency comes back
as the same Latency that PyTorch's measurement returns."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from lcnn_lab import deepcompress as D
from lcnn_lab import families  # noqa: F401 - registers the chapter-05 families with models
from lcnn_lab import models as M
from lcnn_lab import prune as P
from lcnn_lab import runtime as R
from lcnn_lab.data import normalize
from lcnn_lab.profile import Latency
from lcnn_lab.train import device_data
from lcnn_lab.trained import checkpoint_path, pretrained

VARIANTS = [{"groups": "depthwise"}, {"design": "ghost2"}, {"design": "bottleneck"},
            {"groups": 4, "shuffle": True}, {"kernel_size": 5}, {"design": "adder"}]
CASES = [(name, {}) for name in M.list_models()] + [("cifar_net", knobs) for knobs in VARIANTS]


def images(n: int, start: int = 0) -> torch.Tensor:
    x, _ = device_data("test", torch.device("cpu"))
    return normalize(x[start:start + n])


def assert_matches(onnx_out: torch.Tensor, torch_out: torch.Tensor) -> None:
    scale = torch_out.abs().max().item()     # untrained logits are small: compare relative to their size
    torch.testing.assert_close(onnx_out, torch_out, rtol=1e-4, atol=1e-4 * scale)


def test_every_cifar_model_is_tested():
    assert len(M.list_models()) >= 10 and {"cifar_net", "ghostnet_cifar", "mobilenet_v1_cifar"} <= set(M.list_models())


@pytest.mark.parametrize("name,knobs", CASES, ids=[f"{n}-{k}" if k else n for n, k in CASES])
def test_export_matches_pytorch(name, knobs, tmp_path):
    # a fixed batch of 4: tracing a dynamic batch takes about a third longer, and is tested below
    torch.manual_seed(0)
    model = M.create_model(name, **knobs).eval()
    path = R.export_onnx(model, tmp_path / "m.onnx", input_size=(4, 3, 32, 32), dynamic_batch=False)
    x = images(4)
    with torch.no_grad():
        expected = model(x)
    sess = R.session(path, threads=1)
    assert_matches(R.run(sess, x), expected)
    with pytest.raises(ValueError, match=r"takes input of shape \(4, 3, 32, 32\), got \(8, 3, 32, 32\)"):
        R.run(sess, images(8))


@pytest.fixture(scope="module")
def trained():
    """cifar_net's committed quick-budget weights and its ONNX file (any batch size)."""
    assert checkpoint_path("cifar_net", "quick").is_file()   # loaded from results/, never trained here
    model = pretrained("cifar_net", budget="quick", device="cpu")
    folder = tempfile.mkdtemp(prefix="lcnn-onnx-")
    yield model, R.export_onnx(model, Path(folder) / "cifar_net.onnx")
    shutil.rmtree(folder, ignore_errors=True)


def test_dynamic_batch(trained):
    model, path = trained
    sess = R.session(path, threads=1)
    for b in (1, 8):
        x = images(b, start=100)
        with torch.no_grad():
            assert_matches(R.run(sess, x), model(x))


def test_pruned_and_shared_models_export_as_plain_weights(tmp_path):
    torch.manual_seed(0)
    shared = D.share_weights(P.prune_unstructured(M.create_model("cifar_net").eval(), 0.8), bits=4)
    path = R.export_onnx(shared, tmp_path / "shared.onnx", input_size=(4, 3, 32, 32), dynamic_batch=False)
    x = images(4)
    with torch.no_grad():
        assert_matches(R.run(R.session(path, threads=1), x), shared(x))
    assert len(D.shared_layers(shared)) == 8               # exporting baked a copy, not the model


def test_export_fails_loudly(tmp_path):
    with pytest.raises(ValueError, match="cannot run on an input of size"):
        R.export_onnx(M.create_model("cifar_net"), tmp_path / "m.onnx", input_size=(1, 1, 32, 32))
    with pytest.raises(ValueError, match="four positive ints"):
        R.export_onnx(M.create_model("cifar_net"), tmp_path / "m.onnx", input_size=(3, 32, 32))

    class DataDependent(nn.Module):       # Python control flow on the values: no graph to export
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ValueError, match="torch.onnx could not export DataDependent"):
        R.export_onnx(DataDependent(), tmp_path / "d.onnx")
    with pytest.raises(ValueError, match="no ONNX file"):
        R.session(tmp_path / "missing.onnx")


def test_int8_agrees_with_float(trained, tmp_path):
    model, fp32 = trained
    int8 = R.quantize_int8(fp32, tmp_path / "int8.onnx", calibration=256)
    x = images(200, start=1000)
    with torch.no_grad():
        expected = model(x)
    assert_matches(R.run(R.session(fp32, threads=1), x), expected)
    agree = (R.run(R.session(int8, threads=1), x).argmax(1) == expected.argmax(1)).float().mean().item()
    assert agree >= 0.9
    assert R.size_bytes(int8) < 0.35 * R.size_bytes(fp32)     # int8 weights: about a quarter


def test_latency_is_a_latency(trained):
    _, path = trained
    lat = R.measure_latency_onnx(path, (1, 3, 32, 32), batch=2, threads=1, warmup=2, min_run_time=0.1)
    assert isinstance(lat, Latency)
    assert lat.batch == 2 and lat.threads == 1 and lat.device == "cpu"
    assert 0 < lat.median_ms < 1000 and lat.iqr_ms >= 0 and lat.calls >= lat.n >= 1
    sess = R.session(path, threads=1)
    assert R.measure_latency_onnx(sess, min_run_time=0.05).threads == 1
    with pytest.raises(ValueError, match="opened with 1 intra-op threads"):
        R.measure_latency_onnx(sess, threads=2)
