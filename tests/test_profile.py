"""The teaching formulas against fvcore, and the measurements' bookkeeping (never absolute timings)."""
import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from lcnn_lab import layers as L
from lcnn_lab import models as M
from lcnn_lab import profile as P


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------
# Formulas == fvcore, layer by layer

LAYERS = {  # name -> (build(c_in, c_out, k, g), params formula, MACs formula)
    "single": (lambda ci, co, k, g: L.ConvKxK(ci, co, k, groups=g),
               lambda ci, co, k, g: P.conv2d_params(ci, co, k, g),
               lambda ci, co, k, g, h, w: P.conv2d_macs(ci, co, k, h, w, g)),
    "stacked": (lambda ci, co, k, g: L.StackedConv3x3(ci, co, k, groups=g),
                P.stacked3x3_params,
                lambda ci, co, k, g, h, w: P.stacked3x3_macs(ci, co, k, h, w, g)),
    "factorized": (lambda ci, co, k, g: L.FactorizedConv(ci, co, k, groups=g),
                   P.factorized_params,
                   lambda ci, co, k, g, h, w: P.factorized_macs(ci, co, k, h, w, g)),
    "bottleneck": (lambda ci, co, k, g: L.Bottleneck1x1(ci, co, k, groups=g),
                   lambda ci, co, k, g: P.bottleneck_params(ci, co, k, groups=g),
                   lambda ci, co, k, g, h, w: P.bottleneck_macs(ci, co, k, h, w, groups=g)),
    "depthwise": (lambda ci, co, k, g: L.DepthwiseSeparableConv(ci, co, k),
                  lambda ci, co, k, g: P.depthwise_separable_params(ci, co, k),
                  lambda ci, co, k, g, h, w: P.depthwise_separable_macs(ci, co, k, h, w)),
}


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("k, g", [(3, 1), (5, 2), (7, 4), (9, 1)])
@pytest.mark.parametrize("c_in, c_out, h, w", [(16, 32, 8, 8), (32, 32, 5, 7)])
def test_layer_formulas_equal_fvcore(name, k, g, c_in, c_out, h, w):
    build, params, macs = LAYERS[name]
    layer = build(c_in, c_out, k, g)
    counted = P.count_macs(layer, (1, c_in, h, w))
    assert counted.total == macs(c_in, c_out, k, g, h, w)
    assert P.count_params(layer) == params(c_in, c_out, k, g)
    assert counted.uncounted == {}
    # the make_conv dispatchers agree with the per-variant formulas
    design, groups = ("single", "depthwise") if name == "depthwise" else (name, g)
    assert P.conv_variant_macs(c_in, c_out, k, h, w, design, groups) == counted.total
    assert P.conv_variant_params(c_in, c_out, k, design, groups) == P.count_params(layer)


@pytest.mark.parametrize("k, stride, groups, bias", [(3, 1, 1, False), ((1, 5), 1, 4, True),
                                                     ((3, 1), 2, 2, True), (7, 2, 8, False)])
def test_conv2d_formulas_with_stride_and_rectangular_kernels(k, stride, groups, bias):
    conv = nn.Conv2d(16, 24, k, stride=stride, groups=groups, bias=bias)
    out = conv(torch.zeros(1, 16, 13, 11))
    assert P.count_macs(conv, (1, 16, 13, 11)).total == P.conv2d_macs(16, 24, k, *out.shape[2:], groups)
    assert P.count_params(conv) == P.conv2d_params(16, 24, k, groups, bias)


def test_linear_formulas():
    fc = nn.Linear(400, 120)
    assert P.count_macs(fc, (5, 400)).total == 5 * P.linear_macs(400, 120)
    assert P.count_params(fc) == P.linear_params(400, 120) == 400 * 120 + 120


def test_receptive_field():
    assert [P.receptive_field(n) for n in (1, 2, 3)] == [3, 5, 7]
    assert P.receptive_field(2, k=5) == 9


def test_formulas_reject_bad_groups():
    with pytest.raises(ValueError, match="groups=3 must divide in_channels=32"):
        P.conv2d_macs(32, 64, 3, 8, 8, groups=3)


# ----------------------------------------------------------------------------------------------
# Formulas == fvcore on whole models

def cifar_net_formula(cfg: M.CifarNetConfig, hw: int = 32) -> int:
    """MACs of cifar_net written out from the architecture table, not from the module tree."""
    w0, *widths = cfg.widths
    total = P.conv2d_macs(3, w0, 3, hw, hw)                       # stem at full resolution
    c_in = w0
    for c_out in widths:
        total += P.conv_variant_macs(c_in, c_out, cfg.kernel_size, hw, hw, cfg.design, cfg.groups)
        hw //= 2                                                  # max-pool between the convs
        total += P.conv_variant_macs(c_out, c_out, cfg.kernel_size, hw, hw, cfg.design, cfg.groups)
        c_in = c_out
    return total + P.linear_macs(c_in, M.NUM_CLASSES)


def _sweep():
    grid = itertools.product([1, 3, 5, 7], ["single", "stacked", "factorized", "bottleneck",
                                            "ghost2", "ghost3", "ghost4"],
                             [1, 2, 8, "depthwise"], [False, True], [0.5, 1.0])
    out = []
    for k, design, groups, shuffle, width in grid:
        knobs = dict(kernel_size=k, design=design, groups=groups, shuffle=shuffle, width=width)
        try:
            M.create_model("cifar_net", **knobs)
        except ValueError:
            continue  # invalid combination, tested in test_layers_models
        out.append(knobs)
    return out[::2]  # every second valid combination keeps this fast and still covers each knob


SWEEP = _sweep()


@pytest.mark.parametrize("knobs", SWEEP, ids=lambda kn: "-".join(str(v) for v in kn.values()))
def test_cifar_net_formulas_equal_fvcore(knobs):
    net = M.create_model("cifar_net", **knobs)
    counted = P.count_macs(net)
    assert counted.uncounted == {}
    assert counted.total == P.formula_macs(net) == cifar_net_formula(net.config)


def test_sweep_covers_every_knob_value():
    # the adder design has its own test (tests/test_cheap_ops.py): fvcore cannot count its layers
    for knob, values in dict(kernel_size={1, 3, 5, 7}, design=set(L.DESIGNS) - {"adder"},
                             groups={1, 2, 8, "depthwise"}, shuffle={False, True}).items():
        assert {kn[knob] for kn in SWEEP} == values, knob


@pytest.mark.parametrize("name", M.list_models())
def test_every_op_of_our_models_is_handled(name):
    counted = P.count_macs(M.create_model(name), (2, 3, 32, 32))
    assert counted.uncounted == {}
    assert counted.total == P.formula_macs(M.create_model(name), (2, 3, 32, 32))


def test_unknown_ops_are_reported_not_dropped():
    class SneakyMax(nn.Module):  # aten::max is on fvcore's own silent-ignore list
        def forward(self, x):
            return x.max(dim=1).values

    counted = P.count_macs(SneakyMax(), (1, 4, 2, 2))
    assert counted.uncounted == {"aten::max": 1}
    assert "NOT counted: aten::max" in str(counted)
    declared = P.count_macs(SneakyMax(), (1, 4, 2, 2), extra_zero_mac_ops=("aten::max",))
    assert declared.uncounted == {} and declared.zero_mac_ops == {"aten::max": 1}


def test_batchnorm_counts_zero_and_modules_add_up():
    counted = P.count_macs(M.create_model("cifar_net"))
    assert set(counted.by_operator) == {"conv", "linear"}
    assert counted.zero_mac_ops["aten::batch_norm"] == 7 and counted.zero_mac_ops["aten::gelu"] == 7
    top = {k: v for k, v in counted.by_module.items() if "." not in k}
    assert list(top) == ["stem", "stage1", "stage2", "stage3", "pool", "head"]
    assert sum(top.values()) == counted.total
    assert counted.by_module["stage1.conv1"] == P.conv2d_macs(16, 32, 3, 32, 32)
    assert counted.flops == 2 * counted.total


def test_count_macs_restores_each_modules_mode():
    net = M.create_model("cifar_net").train()
    net.stage2.eval()  # a mixed state, e.g. frozen BN statistics
    before = [m.training for m in net.modules()]
    threads = torch.get_num_threads()
    P.count_macs(net)
    P.formula_macs(net)
    assert [m.training for m in net.modules()] == before
    assert torch.get_num_threads() == threads


def test_count_macs_scales_with_batch():
    net = M.create_model("lenet")
    assert P.count_macs(net, (4, 3, 32, 32)).total == 4 * P.count_macs(net).total


# ----------------------------------------------------------------------------------------------
# Params and size

def test_count_params_nonzero_after_zeroing_weights():
    torch.manual_seed(0)  # a random float32 weight is exactly 0 with probability ~2^-24: keep it fixed
    net = M.create_model("cifar_net")
    total = P.count_params(net)
    bn_shifts = sum(m.bias.numel() for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert total == n_params(net)
    assert P.count_params(net, nonzero=True) == total - bn_shifts  # BN shifts start at exactly 0
    with torch.no_grad():
        net.stage1.conv1.weight[:10].zero_()                       # 10 of the 32 filters, 16 x 3 x 3 each
    assert P.count_params(net) == total
    assert P.count_params(net, nonzero=True) == total - bn_shifts - 10 * 16 * 9


def test_count_params_sees_through_torch_prune_masks():
    conv = nn.Conv2d(8, 8, 3, bias=False)
    prune.l1_unstructured(conv, "weight", amount=0.25)
    assert P.count_params(conv) == 8 * 8 * 9
    assert P.count_params(conv, nonzero=True) == 8 * 8 * 9 - round(0.25 * 8 * 8 * 9)


def test_model_size_bytes():
    net = M.create_model("lenet")
    assert P.model_size_bytes(net) == 4 * 62006
    assert P.model_size_bytes(net, bits=8) == 62006
    assert P.model_size_bytes(net, bits=3) == math.ceil(62006 * 3 / 8)
    with pytest.raises(ValueError, match="bits=0"):
        P.model_size_bytes(net, bits=0)


# ----------------------------------------------------------------------------------------------
# Latency and profile: bookkeeping only, never absolute times

def test_measure_latency_is_sane_and_leaves_state_alone():
    net = M.create_model("lenet").train()
    threads_before = torch.get_num_threads()
    lat = P.measure_latency(net, threads=1, device="cpu", batch=3, warmup=1, min_run_time=0.05)
    assert lat.median_ms > 0 and lat.mean_ms > 0 and lat.iqr_ms >= 0
    assert lat.threads == 1 and lat.batch == 3 and lat.device == "cpu"
    assert lat.n >= 1 and lat.calls >= lat.n
    assert lat.per_image_ms == pytest.approx(lat.median_ms / 3)
    assert net.training and all(m.training for m in net.modules())
    assert torch.get_num_threads() == threads_before
    assert "median ± IQR/2, batch 3, 1 thread, cpu" in str(lat)


def test_measure_latency_rejects_bad_batch():
    with pytest.raises(ValueError, match="batch=0"):
        P.measure_latency(M.create_model("lenet"), batch=0, device="cpu")


def test_profile_fields_are_consistent():
    net = M.create_model("cifar_net", width=0.5)
    prof = P.profile(net, threads=1, device="cpu", min_run_time=0.05, warmup=1)
    assert prof.flops == 2 * prof.macs
    assert prof.macs == P.count_macs(net).total
    assert prof.params == P.count_params(net) and prof.nonzero_params <= prof.params
    assert prof.size_bytes == 4 * prof.params and prof.bits == 32
    assert prof.latency is not None and prof.latency.threads == prof.threads == 1
    assert prof.device == "cpu" and prof.torch_version == torch.__version__
    assert prof.model.startswith("cifar_net(") and prof.uncounted == {}
    d = prof.to_dict()
    assert d["flops"] == 2 * d["macs"] and d["latency"]["batch"] == 1
    text = str(prof)
    assert "MACs" in text and "FLOPs" in text and "median ± IQR/2" in text


def test_profile_without_latency_counts_macs_per_image():
    net = M.create_model("lenet")
    prof = P.profile(net, input_size=(8, 3, 32, 32), latency=False, bits=8)
    assert prof.latency is None and "not measured" in str(prof)
    assert prof.macs == P.count_macs(net).total and prof.image_size == (3, 32, 32)
    assert prof.size_bytes == prof.params


@pytest.mark.parametrize("k", [3, 5, 7])
def test_measured_receptive_field_matches_formula_for_every_design(k):
    expected = (P.receptive_field((k - 1) // 2), ) * 2
    for layer in (L.ConvKxK(8, 8, k), L.FactorizedConv(8, 8, k),
                  L.StackedConv3x3(8, 8, k, norm_layer=nn.BatchNorm2d, act_layer=nn.GELU)):
        assert P.measured_receptive_field(layer, 8) == expected == (k, k)


def test_arithmetic_intensity_of_depthwise_is_far_lower():
    standard = P.conv2d_arithmetic_intensity(64, 64, 3, 16, 16)
    depthwise = P.conv2d_arithmetic_intensity(64, 64, 3, 16, 16, groups=64)
    # MACs fall 64x, but the bytes moved hardly change (activations dominate): intensity falls ~30x
    assert standard / depthwise > 20
    macs = P.conv2d_macs(64, 64, 3, 16, 16)
    values = 64 * 16 * 16 * 2 + 64 * 64 * 9
    assert standard == pytest.approx(macs / (4 * values))


def test_layer_times_cover_every_layer_and_add_up():
    from lcnn_lab.profile import layer_times
    model = M.create_model("cifar_net")
    table = layer_times(model, threads=1, repeats=5)
    leaves = [n for n, m in model.named_modules() if n and not list(m.children())]
    assert list(table.index[:-1]) == leaves and table.index[-1] == "(between layers)"
    assert table["MACs"].sum() == P.count_macs(model).total
    assert table["time share"].sum() == pytest.approx(1.0)
    assert (table["time (ms)"] >= 0).all()
    assert table.loc["head", "output"] == (1, 10)


def test_profile_explains_a_module_it_cannot_run():
    from lcnn_lab.profile import profile

    class TwoInputs(torch.nn.Module):
        def forward(self, a, b):
            return a + b

    with pytest.raises(ValueError, match="could not run and trace TwoInputs"):
        profile(TwoInputs(), latency=False)
    with pytest.raises(ValueError, match=r"input_size the model expects"):
        profile(torch.nn.Linear(10, 3), latency=False)
    with pytest.raises(ValueError, match="needs a torch.nn.Module"):
        profile("resnet18", latency=False)
