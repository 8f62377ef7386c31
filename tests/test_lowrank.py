"""Low-rank factorization: Eckart–Young for the truncated SVD, every decomposed layer against its
counting formula and fvcore, exact reconstruction at full rank, whole-model decomposition, vgg_cifar."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from lcnn_lab import lowrank as L
from lcnn_lab import models as M
from lcnn_lab import profile as P


def conv(c_in=16, c_out=24, k=3, stride=1, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=bias).eval()


def weights(layer) -> int:
    return sum(p.numel() for name, p in layer.named_parameters() if name.endswith("weight"))


@pytest.mark.parametrize("rank", [1, 5, 17, 40])
def test_truncated_svd_error_is_the_discarded_singular_values(rank):
    """Eckart–Young: the squared Frobenius error of the rank-d SVD is the sum of the discarded s_i^2,
    and no other rank-d matrix (here: random ones, and a perturbed optimum) does better."""
    torch.manual_seed(rank)
    lin = nn.Linear(60, 40)
    f = L.svd_linear(lin, rank)
    w = lin.weight.detach().double()
    approx = f[1].weight.detach().double() @ f[0].weight.detach().double()
    s = torch.linalg.svdvals(w)
    assert torch.linalg.matrix_rank(approx) == min(rank, 40)
    assert torch.linalg.norm(w - approx) ** 2 == pytest.approx(float((s[rank:] ** 2).sum()), rel=1e-6, abs=1e-9)
    assert f.error == pytest.approx(math.sqrt(1 - L.energy_kept(s, rank)), abs=1e-9)
    other = approx + 1e-2 * torch.randn(40, rank, dtype=torch.double) @ torch.randn(rank, 60, dtype=torch.double)
    assert torch.linalg.norm(w - other) > torch.linalg.norm(w - approx)
    x = torch.randn(3, 60)
    expected = x.double() @ approx.T + lin.bias.detach().double()
    assert torch.allclose(f(x).double(), expected, atol=1e-5)        # the two layers compute W_d x + b


def test_rank_for_energy_is_the_smallest_rank_keeping_it():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])                           # squares 16, 4, 1, 1 of 22
    assert [L.rank_for_energy(s, e) for e in (0.5, 16 / 22, 0.8, 20 / 22, 0.99, 1.0)] == [1, 1, 2, 2, 4, 4]
    with pytest.raises(ValueError, match="share in"):
        L.rank_for_energy(s, 1.5)


@pytest.mark.parametrize("method, rank", [("svd", 7), ("tucker", (10, 6)), ("tucker", 4), ("cp", 12)])
@pytest.mark.parametrize("stride", [1, 2])
def test_each_decomposed_conv_has_the_params_and_macs_its_formula_says(method, rank, stride):
    c = conv(stride=stride)
    f = L.decompose_conv(c, rank, method)
    assert f(torch.randn(2, 16, 12, 12)).shape == c(torch.randn(2, 16, 12, 12)).shape
    assert weights(f) == L.factorized_params(method, 16, 24, 3, rank)
    counted = P.count_macs(f, (1, 16, 12, 12))
    assert counted.uncounted == {}
    assert counted.total == L.factorized_macs(method, 16, 24, 3, rank, 12, 12, stride)
    assert torch.equal(f[-1].bias, c.bias)                             # the bias moves to the last factor


@pytest.mark.parametrize("method, rank", [("svd", 24), ("tucker", (24, 16))])
def test_full_rank_reproduces_the_convolution(method, rank):
    c, x = conv(stride=2), torch.randn(2, 16, 9, 9)
    f = L.decompose_conv(c, rank, method)
    assert f.error < 1e-6
    assert torch.allclose(f(x), c(x), atol=1e-4)


def test_errors_fall_with_rank_and_cp_fits_a_cp_tensor():
    c = conv(bias=False)
    for method, ranks in (("svd", (2, 8, 20)), ("tucker", (2, 8, 14)), ("cp", (4, 32, 128))):
        errors = [L.decompose_conv(c, r, method).error for r in ranks]
        assert errors == sorted(errors, reverse=True) and errors[0] < 1, (method, errors)
    # a weight that is exactly a sum of 3 rank-one terms: CP at rank 3 recovers it
    g = torch.Generator().manual_seed(1)
    a, b, h, w = (torch.randn(n, 3, generator=g) for n in (24, 16, 3, 3))
    c.weight.data = torch.einsum("or,ir,hr,wr->oihw", a, b, h, w)
    f = L.decompose_conv(c, 3, "cp")
    assert f.error < 1e-3
    x = torch.randn(1, 16, 8, 8)
    assert torch.allclose(f(x), c(x), atol=1e-3 * c(x).abs().max().item())


def test_energy_picks_the_rank_and_bad_input_is_explained():
    c = conv()
    f = L.decompose_conv(c, method="svd", energy=0.9)
    assert f.rank == L.rank_for_energy(L.singular_values(c), 0.9)
    assert 1 - f.error ** 2 >= 0.9 - 1e-9
    t = L.decompose_conv(c, method="tucker", energy=0.9)
    assert t.rank[0] <= 24 and t.rank[1] <= 16
    with pytest.raises(ValueError, match="needs rank=R"):
        L.decompose_conv(c, method="cp", energy=0.9)
    with pytest.raises(ValueError, match="either rank"):
        L.decompose_conv(c, 4, method="svd", energy=0.9)
    with pytest.raises(ValueError, match="positive whole number"):
        L.decompose_conv(c, 0, method="svd")
    with pytest.raises(ValueError, match="groups=4"):
        L.decompose_conv(nn.Conv2d(16, 16, 3, groups=4), 4)
    with pytest.raises(ValueError, match="method="):
        L.decompose_conv(c, 4, method="qr")


def test_a_1x1_convolution_gains_nothing_from_tucker():
    """li2023 §4: a 1 x 1 convolution "is not conducive" to low-rank decomposition. Its channel
    matrix is all there is: Tucker-2 adds a core (r x r) to the two channel factors."""
    c_in = c_out = 64
    for r in (8, 16, 32, 48):
        assert L.factorized_params("tucker", c_in, c_out, 1, r) > L.factorized_params("svd", c_in, c_out, 1, r)
    assert L.factorized_params("tucker", c_in, c_out, 1, 48) > c_in * c_out


def test_decompose_replaces_layers_in_a_copy_and_reports_them():
    torch.manual_seed(0)
    net = M.create_model("vgg_cifar", width=0.25).eval()
    before = P.count_params(net)
    x = torch.randn(2, 3, 32, 32)
    small = L.decompose(net, "tucker", energy=0.8)
    assert P.count_params(net) == before                             # the original is untouched
    assert P.count_params(small) < before and small(x).shape == (2, 10)
    rows = {r["layer"]: r for r in small.lowrank}
    assert set(rows) == {n for n, m in net.named_modules()
                         if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))}
    for name, r in rows.items():
        assert isinstance(small.get_submodule(name), L.Factorized) == r["replaced"]
        assert r["replaced"] == (r["params after"] < r["params before"])
    full = L.decompose(net, "svd", rank=10_000, layers="linear", only_if_smaller=False)
    assert torch.allclose(full(x), net(x), atol=1e-4)                # full rank: the same function
    one = L.decompose(net, "cp", rank={"features.4": 8})
    assert [r["layer"] for r in one.lowrank] == ["features.4"] and one.lowrank[0]["method"] == "cp"
    for method in ("svd", "tucker", "cp"):
        third = L.decompose(net, method, ratio=3, layers="conv")
        for r in third.lowrank:
            if r["replaced"]:
                assert r["params after"] <= r["params before"] / 3      # vgg_cifar convs have no bias
    assert L.rank_for_compression(nn.Linear(1024, 512), "cp", 3) == 113  # 113 * 1536 <= 1024 * 512 / 3 < 114 * 1536
    with pytest.raises(ValueError, match="one of rank"):
        L.decompose(net, rank=4, ratio=2)
    with pytest.raises(ValueError, match="no layer named 'fc9'"):
        L.decompose(net, layers=["fc9"], rank=4)
    with pytest.raises(ValueError, match="BatchNorm2d"):
        L.decompose(net, layers=["features.1"], rank=4)


@pytest.mark.parametrize("width", [0.5, 1.0])
def test_vgg_cifar_counts_equal_fvcore_and_its_classifier_is_large(width):
    net = M.create_model("vgg_cifar", width=width)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    counted = P.count_macs(net)
    assert counted.uncounted == {} and counted.total == P.formula_macs(net)
    fc = sum(p.numel() for p in net.classifier.parameters())
    assert fc == (M._round_width(256 * width) * 4 + 1) * 512 + 513 * 512 + 513 * 10
    assert M.model_knobs(net) == {"width": width}
    with pytest.raises(ValueError, match="vgg_cifar knob width"):
        M.create_model("vgg_cifar", width=0)


def test_vgg_cifar_trains_at_smoke():
    from lcnn_lab.train import TrainConfig, initialize, train
    cfg = TrainConfig(budget="smoke", eval_images=200, history_eval_images=200, progress=False, threads=1)
    result = train(initialize(M.create_model("vgg_cifar", width=0.5), cfg), cfg)
    assert result.accuracy.n == 200 and math.isfinite(result.history[-1].train_loss)
