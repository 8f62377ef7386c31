"""The trainer learns, is deterministic under a seed, evaluates subsets, and caches checkpoints safely."""
import warnings

import pytest
import torch

import lcnn_lab.train as T
from lcnn_lab.config import seed_everything
from lcnn_lab.models import create_model
from lcnn_lab.results import ResultsStore

# A small model and a small slice of real CIFAR-10 keep each training run to a few seconds.
SMALL = dict(width=0.25)
FAST = T.TrainConfig(budget="smoke", epochs=2, train_images=2_000, eval_images=1_000, max_seconds=None,
                     batch_size=128, progress=False, history_eval_images=500)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("LCNN_RESULTS", str(tmp_path / "results"))
    return ResultsStore()


def test_smoke_training_beats_chance():
    model = create_model("cifar_net", **SMALL)
    before = T.evaluate(model, n=1_000)
    result = T.train(model, FAST)
    # chance is 10 %; with n=1000 the standard error is about 1.5 points, so 20 % is far above noise
    assert result.accuracy.value > 0.20 > before.value - 0.05
    assert result.accuracy.n == 1_000 and result.seconds > 0 and result.images_per_second > 0
    assert len(result.history) == 2 and result.history[-1].epoch == pytest.approx(2.0)
    assert "mirror" in result.data_source or "official" in result.data_source.lower()
    assert result.budget == "smoke" and result.device == "cpu"


def test_same_seed_same_model():
    cfg = T.TrainConfig(budget="smoke", epochs=1, train_images=512, eval_images=200, max_seconds=None,
                        batch_size=128, progress=False, history_eval_images=200)
    seed_everything(0)
    a = create_model("cifar_net", **SMALL)
    seed_everything(0)
    b = create_model("cifar_net", **SMALL)
    torch.manual_seed(123)  # the global RNG state at the call must not matter
    ra = T.train(a, cfg)
    rb = T.train(b, cfg)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=f"{name} differs")
    assert ra.accuracy == rb.accuracy
    seed_everything(0)
    c = create_model("cifar_net", **SMALL)
    T.train(c, cfg, seed=1)  # same start, different batches and augmentation
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


def test_evaluate_subset_is_fixed_and_has_standard_error():
    model = create_model("cifar_net", **SMALL)
    a, b = T.evaluate(model, n=300), T.evaluate(model, n=300)
    assert a == b and a.n == 300
    assert a.se == pytest.approx((max(a.value * (1 - a.value), 1e-12) / 300) ** 0.5)
    assert T.evaluate(model, n=None, split="test").n == 10_000
    with pytest.raises(ValueError, match="split"):
        T.evaluate(model, split="validation")


def test_augmentation_shapes_and_content():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.uint8).reshape(2, 3, 32, 32)
    y = T.batch_translate(x, 2, g)
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert torch.equal(T.batch_translate(x, 0, g), x)
    f = T.batch_flip(torch.stack([x[0]] * 64), g)
    flipped = sum(torch.equal(fi, x[0].flip(-1)) for fi in f)
    assert 10 < flipped < 54  # about half


def test_train_model_records_in_store(store):
    model, result = T.train_model("cifar_net", FAST, store=store, **SMALL)
    got = T.trained_accuracy("cifar_net", FAST, store=store, compute=False, **SMALL)
    assert got["accuracy"] == result.accuracy.value and got["budget"] == "smoke"
    assert got["data_source"] == result.data_source and got["device"] == "cpu"
    assert T.trained_accuracy("cifar_net", FAST, store=store, compute=False, width=0.5) is None


def test_pretrained_caches_with_provenance_and_rejects_bad_checkpoints(store, monkeypatch):
    monkeypatch.setenv("LCNN_BUDGET", "smoke")
    calls = []
    real_train = T.train
    monkeypatch.setattr(T, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    m1 = T.pretrained("cifar_net", **SMALL)
    prov = m1.provenance
    for field in ("data_source", "budget", "device", "seconds", "accuracy", "lcnn_lab", "torch"):
        assert field in prov
    assert prov["budget"] == "smoke" and len(calls) == 1
    path = T.checkpoint_path("cifar_net", "smoke", SMALL)
    assert path.exists()

    m2 = T.pretrained("cifar_net", **SMALL)  # loaded, not retrained
    assert len(calls) == 1 and m2.provenance == prov
    for pa, pb in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(pa.cpu(), pb.cpu())

    path.write_bytes(path.read_bytes()[:100])  # truncated: retrained with a warning
    with pytest.warns(UserWarning, match="cannot be used"):
        T.pretrained("cifar_net", **SMALL)
    assert len(calls) == 2

    ckpt = torch.load(path, weights_only=True)  # from another package version: retrained
    ckpt["lcnn_lab"] = "0.0.1"
    torch.save(ckpt, path)
    with pytest.warns(UserWarning, match="another|0.0.1"):
        T.pretrained("cifar_net", **SMALL)
    assert len(calls) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        T.pretrained("cifar_net", **SMALL)  # the retrained file is good again
    assert len(calls) == 3
