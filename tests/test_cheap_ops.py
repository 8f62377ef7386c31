"""Chapter 03's layers: the Ghost module's formulas against fvcore, the adder layer against a slow
reference written with plain loops, forward and backward."""
import math

import pytest
import torch

from lcnn_lab import layers as L
from lcnn_lab import models as M
from lcnn_lab import profile as P


# ----------------------------------------------------------------------------------------------
# Ghost module

@pytest.mark.parametrize("ratio", [2, 3, 4])
@pytest.mark.parametrize("c_in, c_out, k, h, w", [(16, 32, 3, 8, 8), (32, 30, 5, 5, 7), (8, 16, 1, 4, 4)])
def test_ghost_formulas_equal_fvcore(ratio, c_in, c_out, k, h, w):
    layer = L.GhostModule(c_in, c_out, k, ratio=ratio)
    counted = P.count_macs(layer, (1, c_in, h, w))
    assert counted.uncounted == {}
    assert counted.total == P.ghost_macs(c_in, c_out, k, h, w, ratio)
    assert P.count_params(layer) == P.ghost_params(c_in, c_out, k, ratio)
    assert layer(torch.randn(2, c_in, h, w)).shape == (2, c_out, h, w)
    assert P.conv_variant_macs(c_in, c_out, k, h, w, f"ghost{ratio}") == counted.total


@pytest.mark.parametrize("ratio", [2, 3, 4])
def test_ghost_speedup_matches_the_papers_ratio(ratio):
    c, k = 64, 3
    measured = P.conv2d_macs(c, c * ratio, k, 8, 8) / P.ghost_macs(c, c * ratio, k, 8, 8, ratio)
    assert measured == pytest.approx(P.ghost_speedup(c, k, ratio))
    assert ratio * 0.95 < measured < ratio            # "approximately s" (Han et al. 2020, eq. 4)


def test_ghost_maps_are_the_intrinsic_maps_and_their_cheap_copies():
    layer = L.GhostModule(4, 8, 3, ratio=2).eval()
    x = torch.randn(1, 4, 6, 6)
    y = layer(x)
    torch.testing.assert_close(y[:, :4], layer.primary(x))
    torch.testing.assert_close(y[:, 4:], layer.cheap(layer.primary(x)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(ratio=1), "ratio=1 must be an int >= 2"),
    (dict(ratio=2.5), "ratio=2.5 must be an int >= 2"),
    (dict(k=4), "kernel size k=4 is even"),
])
def test_ghost_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        L.GhostModule(8, 16, **{"k": 3, **kwargs})


# ----------------------------------------------------------------------------------------------
# Adder layer against loops

def reference_adder(x, weight, padding):
    """Y[b,o,y,x] = -sum_{c,i,j} |X[b,c,y+i,x+j] - W[o,c,i,j]|, one output value at a time."""
    xp = torch.nn.functional.pad(x, [padding] * 4)
    b, c, h, w = xp.shape
    o, _, k, _ = weight.shape
    out = torch.zeros(b, o, h - k + 1, w - k + 1, dtype=x.dtype)
    for n in range(b):
        for f in range(o):
            for i in range(h - k + 1):
                for j in range(w - k + 1):
                    out[n, f, i, j] = -(xp[n, :, i:i + k, j:j + k] - weight[f]).abs().sum()
    return out


def reference_adder_grads(x, weight, padding, grad_out, eta):
    """The paper's gradients written out: dY/dW = X - W (eq. 5), dY/dX = HardTanh(W - X) (eq. 7),
    then the filter gradient scaled to norm eta*sqrt(numel) (eq. 12)."""
    xp = torch.nn.functional.pad(x, [padding] * 4)
    b, c, h, w = xp.shape
    o, _, k, _ = weight.shape
    gw, gxp = torch.zeros_like(weight), torch.zeros_like(xp)
    for n in range(b):
        for f in range(o):
            for i in range(h - k + 1):
                for j in range(w - k + 1):
                    g = grad_out[n, f, i, j]
                    window = xp[n, :, i:i + k, j:j + k]
                    gw[f] += g * (window - weight[f])
                    gxp[n, :, i:i + k, j:j + k] += g * (weight[f] - window).clamp(-1, 1)
    if eta is not None:
        gw = gw * eta * math.sqrt(weight.numel()) / gw.norm()
    gx = gxp[:, :, padding:h - padding, padding:w - padding] if padding else gxp
    return gx, gw


@pytest.fixture(params=["compiled", "eager"])
def kernels(request, monkeypatch):
    """Run each adder test with the fused kernels and with the fallback used where nothing compiles."""
    if request.param == "eager":
        monkeypatch.setattr(L._AdderKernels, "compiled", False)
    return request.param


@pytest.mark.parametrize("k, padding, eta", [(3, 1, 0.2), (1, 0, None), (3, 0, 0.2)])
def test_adder_forward_and_backward_equal_the_reference(kernels, k, padding, eta):
    torch.manual_seed(0)
    layer = L.AdderConv2d(3, 4, k, padding=padding, eta=eta).double()
    x = (2 * torch.randn(2, 3, 5, 5, dtype=torch.double)).requires_grad_()   # some |W - X| > 1: clipped
    y = layer(x)
    torch.testing.assert_close(y, reference_adder(x.detach(), layer.weight.detach(), padding))
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    gx, gw = reference_adder_grads(x.detach(), layer.weight.detach(), padding, grad_out, eta)
    torch.testing.assert_close(x.grad, gx)
    torch.testing.assert_close(layer.weight.grad, gw)


def test_adder_inference_path_equals_the_training_path():
    layer = L.AdderConv2d(8, 16, 3, padding=1)
    x = torch.randn(3, 8, 6, 6)
    with torch.no_grad():
        fast = layer(x)
    torch.testing.assert_close(fast, layer(x.requires_grad_()).detach())


def test_adder_net_counts_what_fvcore_cannot():
    net = M.create_model("cifar_net", design="adder")
    counted = P.count_macs(net)
    assert counted.uncounted == {"aten::cdist": 6}       # the six adder layers, reported not dropped
    conv = M.create_model("cifar_net")
    # the multiplications left are the stem's and the head's; the adder layers do as many
    # subtract-abs-add operations as the convolutions they replace did MACs
    assert counted.total == P.count_macs(conv.stem).total + P.count_macs(conv.head, (1, 128)).total
    assert P.count_adder_ops(net) == P.count_macs(conv).total - counted.total
    assert P.count_params(net) == P.count_params(conv)


def test_adder_net_trains_a_step():
    net = M.create_model("cifar_net", design="adder")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("design", ["ghost2", "adder"])
def test_cheap_designs_take_no_groups(design):
    with pytest.raises(ValueError, match="takes no groups or shuffle"):
        M.create_model("cifar_net", design=design, groups=2)


# ----------------------------------------------------------------------------------------------
# Feature-map redundancy (the observation behind the Ghost module)

def test_ghost_fit_finds_a_map_made_by_a_cheap_operation():
    from lcnn_lab import features
    torch.manual_seed(0)
    source = torch.randn(20, 1, 12, 12)
    filt = torch.randn(1, 1, 3, 3)
    ghost = torch.nn.functional.conv2d(source, filt, padding=1) + 0.5   # a 3x3 filter plus a bias
    noise = torch.randn(20, 1, 12, 12)
    fit = features.ghost_fit(torch.cat([source, ghost, noise], dim=1))
    assert fit.r2[0, 1] == pytest.approx(1.0, abs=1e-4)          # channel 1 is a ghost of channel 0
    assert fit.best_source[1] == 0
    assert fit.best_r2[2] < 0.05                                  # independent noise is no one's ghost
    sim = features.channel_similarity(torch.cat([source, 2 * source + 1, noise], dim=1))
    assert sim[0, 1] == pytest.approx(1.0, abs=1e-5) and abs(sim[0, 2]) < 0.1


def test_feature_maps_names_the_layers_it_knows():
    from lcnn_lab import features
    net = M.create_model("cifar_net")
    maps = features.feature_maps(net, "stage1.act1", torch.randn(2, 3, 32, 32))
    assert maps.shape == (2, 32, 16, 16)
    with pytest.raises(ValueError, match="no submodule 'stage9'.*stage1.act1"):
        features.feature_maps(net, "stage9", torch.randn(2, 3, 32, 32))
