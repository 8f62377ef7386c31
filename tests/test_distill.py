"""Knowledge distillation: Hinton's loss against a direct computation, the strategies, and a student
distilled at the smoke budget into the results store."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lcnn_lab import distill as D
from lcnn_lab.models import create_model
from lcnn_lab.results import ResultsStore
from lcnn_lab.train import TrainConfig


def batch(seed=0, n=8, k=10):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 3, torch.randn(n, k, generator=g) * 3,
            torch.randint(0, k, (n,), generator=g))


def direct_kd(s, t, y, T, alpha):
    """Hinton et al.'s loss written out: soft cross-entropy minus the teacher's entropy (= KL), times
    T^2, and the hard cross-entropy, with logs and sums spelled out per image."""
    total = 0.0
    for i in range(len(y)):
        p = [math.exp(v / T) for v in t[i].tolist()]
        q = [math.exp(v / T) for v in s[i].tolist()]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        kl = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
        z = s[i].tolist()
        ce = -(z[y[i]] - math.log(sum(math.exp(v) for v in z)))
        total += alpha * T * T * kl + (1 - alpha) * ce
    return total / len(y)


@pytest.mark.parametrize("T, alpha", [(1.0, 0.5), (4.0, 0.9), (8.0, 0.3), (2.0, 0.0), (3.0, 1.0)])
def test_kd_loss_equals_the_direct_computation(T, alpha):
    s, t, y = batch()
    assert D.kd_loss(s, t, y, T, alpha).item() == pytest.approx(direct_kd(s, t, y, T, alpha), rel=1e-5)


def test_kd_loss_limits_and_the_t_squared_factor():
    s, t, y = batch(1)
    assert D.kd_loss(s, t, y, T=4, alpha=0).item() == pytest.approx(F.cross_entropy(s, y).item())
    soft = F.kl_div(F.log_softmax(s / 4, -1), F.softmax(t / 4, -1), reduction="batchmean").item()
    assert D.kd_loss(s, t, y, T=4, alpha=1).item() == pytest.approx(16 * soft, rel=1e-5)
    assert D.kd_loss(t, t, y, T=4, alpha=1).item() == pytest.approx(0, abs=1e-6)   # the teacher itself
    # the T^2 factor keeps the soft term's gradient on the same scale across temperatures
    grads = []
    for T in (2.0, 8.0):
        x = s.clone().requires_grad_()
        D.kd_loss(x, t * 0.05, y, T=T, alpha=1).backward()   # near-uniform teacher: the high-T regime
        grads.append(x.grad.norm().item())
    assert 0.5 < grads[0] / grads[1] < 2, grads


def test_soft_targets_is_the_surveys_equation_6():
    z = torch.tensor([[2.0, 1.0, 0.0]])
    assert torch.allclose(D.soft_targets(z, 1), torch.softmax(z, -1))
    p = D.soft_targets(z, 4.0)[0]
    expected = [math.exp(v / 4) for v in (2.0, 1.0, 0.0)]
    assert p.tolist() == pytest.approx([v / sum(expected) for v in expected])
    assert p.max() < torch.softmax(z, -1).max()        # a higher temperature flattens the distribution


@pytest.mark.parametrize("kwargs, message", [
    (dict(T=0), "temperature"), (dict(T=-1), "temperature"), (dict(alpha=1.5), "alpha"), (dict(alpha=-0.1), "alpha")])
def test_bad_settings_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        D.ResponseKD(**kwargs)
    with pytest.raises(ValueError, match="beta"):
        D.FitNet(beta=-1)
    with pytest.raises(ValueError, match="not both zero"):
        D.RKD(distance=0, angle=0)


def test_rkd_is_zero_for_the_same_relations_and_ignores_scale_and_width():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(6, 16, generator=g)
    y = torch.zeros(6, dtype=torch.long)
    logits = torch.zeros(6, 10)
    rkd = D.RKD(distance=1, angle=1)
    base = F.cross_entropy(logits, y).item()
    # the same embedding, scaled, and padded with zero channels (another width): the same relations
    wider = torch.cat([3 * e, torch.zeros(6, 8)], 1)
    assert rkd(D.Outputs(logits, e), D.Outputs(logits, wider), y).item() == pytest.approx(base, abs=1e-5)
    other = torch.randn(6, 16, generator=g)
    assert rkd(D.Outputs(logits, e), D.Outputs(logits, other), y).item() > base + 1e-3


def test_fitnet_builds_a_regressor_to_the_teachers_channels():
    fit = D.FitNet(beta=2.0, layer="stage2")
    s, t = torch.randn(2, 32, 8, 8), torch.randn(2, 64, 8, 8)
    fit.setup(D.Outputs(torch.zeros(2, 10), s), D.Outputs(torch.zeros(2, 10), t))
    assert fit.regressor.weight.shape == (64, 32, 1, 1)
    with pytest.raises(ValueError, match="same size"):
        fit.setup(D.Outputs(torch.zeros(2, 10), s), D.Outputs(torch.zeros(2, 10), torch.randn(2, 64, 4, 4)))


def test_strategy_keys_name_the_loss_and_its_settings():
    assert D.ResponseKD(T=2, alpha=0.5).key() == {"loss": "ResponseKD", "T": 2.0, "alpha": 0.5}
    assert D.FitNet().key() == {"loss": "FitNet", "beta": 1.0, "layer": "stage2"}
    assert "RKD(distance=25.0" in repr(D.RKD())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A small 'teacher': cifar_net trained for a few smoke steps (enough to have non-uniform logits)."""
    from lcnn_lab.trained import train_model
    model, _ = train_model("cifar_net", TrainConfig(budget="smoke", progress=False, epochs=0.5),
                           store=ResultsStore(tmp_path_factory.mktemp("teacher")))
    return model.eval()


@pytest.mark.parametrize("loss", [D.ResponseKD(T=4, alpha=0.9), D.FitNet(beta=1.0), D.RKD()],
                         ids=["response", "feature", "relation"])
def test_distill_trains_a_student_and_stores_it(teacher, loss, tmp_path):
    store = ResultsStore(tmp_path)
    cfg = TrainConfig(budget="smoke", progress=False, epochs=0.25, eval_images=200)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    got = D.distill("cifar_net", teacher, loss, cfg, store=store, width=0.5)
    assert 0 <= got["accuracy"] <= 1 and got["seconds"] > 0 and got["budget"] == "smoke"
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()), "the teacher is frozen"
    entries = list(store.root.glob("distill/*.json"))
    assert len(entries) == 1
    again = D.distill("cifar_net", teacher, loss, cfg, store=store, compute=False, width=0.5)
    assert again["accuracy"] == got["accuracy"]                       # read back, not retrained
    other = D.distill("cifar_net", teacher, D.ResponseKD(T=1, alpha=0.9), cfg, store=store, compute=False,
                      width=0.5)
    assert other is None                                             # another loss is another entry
    student = D.distilled("cifar_net", teacher, loss, cfg, store=store, width=0.5)   # its weights, kept
    assert not student.training and student.provenance["budget"] == "smoke"
    assert len(list(store.root.glob("distill/*.json"))) == 1, "loaded, not distilled again"
    assert list(store.root.glob("students/cifar_net-*.pt")) and not (store.root / "checkpoints").exists()


def test_distill_names_a_missing_layer(teacher, tmp_path):
    with pytest.raises(ValueError, match="no module 'stage9'.*stem, stage1"):
        D.distill("cifar_net", teacher, D.FitNet(layer="stage9"), TrainConfig(budget="smoke", progress=False),
                  store=ResultsStore(tmp_path), width=0.5)
