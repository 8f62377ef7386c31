"""The convolution variants and models: shapes, the survey's cost ratios, and learner-facing errors."""
from dataclasses import FrozenInstanceError
from fractions import Fraction

import pytest
import torch
from torch import nn

from lcnn_lab import layers as L
from lcnn_lab import models as M
from lcnn_lab.profile import count_macs, count_params


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def macs(module: nn.Module, c_in: int, hw: int = 8) -> int:
    return count_macs(module, (1, c_in, hw, hw)).total


# ----------------------------------------------------------------------------------------------
# Layers: shapes

VARIANTS = {
    "single": lambda c_in, c_out, k, g: L.ConvKxK(c_in, c_out, k, groups=g),
    "stacked": lambda c_in, c_out, k, g: L.StackedConv3x3(c_in, c_out, k, groups=g),
    "factorized": lambda c_in, c_out, k, g: L.FactorizedConv(c_in, c_out, k, groups=g),
    "bottleneck": lambda c_in, c_out, k, g: L.Bottleneck1x1(c_in, c_out, k, groups=g),
    "depthwise": lambda c_in, c_out, k, g: L.DepthwiseSeparableConv(c_in, c_out, k),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("k", [3, 5, 7, 9])
def test_variants_keep_spatial_size(variant, k):
    layer = VARIANTS[variant](16, 32, k, 2)
    assert layer(torch.randn(2, 16, 11, 9)).shape == (2, 32, 11, 9)


def test_conv_kxk_is_bias_free_with_same_padding():
    for k in L.KERNEL_SIZES:
        conv = L.ConvKxK(4, 8, k)
        assert conv.bias is None and conv.padding == (k // 2, k // 2)
        assert conv(torch.randn(1, 4, 10, 10)).shape == (1, 8, 10, 10)
    assert L.ConvKxK(4, 8, 3, stride=2)(torch.randn(1, 4, 10, 10)).shape == (1, 8, 5, 5)


def test_norm_and_act_sit_between_layers_only():
    stack = L.StackedConv3x3(8, 8, 7, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU)
    kinds = [type(m) for m in stack]
    assert kinds == [L.ConvKxK, nn.BatchNorm2d, nn.ReLU, L.ConvKxK, nn.BatchNorm2d, nn.ReLU, L.ConvKxK]
    assert [type(m) for m in L.StackedConv3x3(8, 8, 7)] == [L.ConvKxK] * 3


@pytest.mark.parametrize("variant", ["single", "stacked", "factorized"])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_receptive_field_is_k_by_k(variant, k):
    # The gradient of one output pixel w.r.t. the input is nonzero exactly on its receptive field.
    layer = VARIANTS[variant](2, 2, k, 1)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)  # positive weights: no accidental cancellation
    x = torch.ones(1, 2, 15, 15, requires_grad=True)
    layer(x)[0, 0, 7, 7].backward()
    rows, cols = torch.nonzero(x.grad[0].abs().sum(0), as_tuple=True)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (k, k)


# ----------------------------------------------------------------------------------------------
# Layers: the survey's ratios (long2024 §2.1-2.2), exact

@pytest.mark.parametrize("g", [2, 4, 8, 16, 32])
def test_group_conv_costs_one_over_g(g):
    std, grouped = L.ConvKxK(32, 64, 3), L.ConvKxK(32, 64, 3, groups=g)
    assert Fraction(n_params(grouped), n_params(std)) == Fraction(1, g)
    assert Fraction(macs(grouped, 32), macs(std, 32)) == Fraction(1, g)


@pytest.mark.parametrize("c_in, c_out", [(32, 32), (32, 64), (64, 16)])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_depthwise_separable_costs_one_over_cout_plus_one_over_k2(c_in, c_out, k):
    separable, standard = L.DepthwiseSeparableConv(c_in, c_out, k), L.ConvKxK(c_in, c_out, k)
    ratio = Fraction(macs(separable, c_in), macs(standard, c_in))
    assert ratio == Fraction(1, c_out) + Fraction(1, k * k)
    assert ratio > Fraction(1, k * k)  # the survey's "1/k^2" is a lower bound, reached only as c_out grows


@pytest.mark.parametrize("c", [8, 24, 64])
@pytest.mark.parametrize("k, n_layers, szegedy_ratio, percent_fewer", [
    (5, 2, Fraction(18, 25), 28.0),   # two 3x3 instead of one 5x5: 18c^2 vs 25c^2, 28 % fewer
    (7, 3, Fraction(27, 49), 44.9),   # three 3x3 instead of one 7x7: 27c^2 vs 49c^2, 44.9 % fewer
])
def test_stacked_3x3_ratios_of_szegedy(c, k, n_layers, szegedy_ratio, percent_fewer):
    """Szegedy et al. 2016 (long2024 §2.1), for c_in = c_out: counted on the real layers, not recomputed."""
    single, stacked = L.ConvKxK(c, c, k), L.StackedConv3x3(c, c, k)
    convs = [m for m in stacked.modules() if isinstance(m, nn.Conv2d)]
    assert [conv.kernel_size for conv in convs] == [(3, 3)] * n_layers
    param_counts = (count_params(stacked), count_params(single))
    mac_counts = (count_macs(stacked, (1, c, 8, 8)).total, count_macs(single, (1, c, 8, 8)).total)
    assert param_counts == (n_layers * 9 * c * c, k * k * c * c)
    assert mac_counts == (64 * param_counts[0], 64 * param_counts[1])  # 8 x 8 output pixels, stride 1
    param_ratio, mac_ratio = Fraction(*param_counts), Fraction(*mac_counts)
    assert param_ratio == mac_ratio == szegedy_ratio
    assert round(float(100 * (1 - param_ratio)), 1) == percent_fewer
    assert round(float(100 * (1 - mac_ratio)), 1) == percent_fewer


@pytest.mark.parametrize("k", [3, 5, 7, 9])
def test_factorized_costs_two_over_k(k):
    c = 16
    assert Fraction(n_params(L.FactorizedConv(c, c, k)), n_params(L.ConvKxK(c, c, k))) == Fraction(2, k)
    assert Fraction(macs(L.FactorizedConv(c, c, k), c), macs(L.ConvKxK(c, c, k), c)) == Fraction(2, k)


def test_bottleneck_runs_kxk_on_reduced_width():
    b = L.Bottleneck1x1(64, 64, 3, reduction=4)
    assert b.mid_channels == 16 and n_params(b) == 64 * 16 + 9 * 16 * 16 + 16 * 64


@pytest.mark.parametrize("k, r", [(3, 4), (5, 2), (7, 8)])
def test_bottleneck_costs_one_over_r2_plus_two_over_rk2(k, r):
    c = 64
    ratio = Fraction(macs(L.Bottleneck1x1(c, c, k, reduction=r), c), macs(L.ConvKxK(c, c, k), c))
    assert ratio == Fraction(1, r * r) + Fraction(2, r * k * k)


# ----------------------------------------------------------------------------------------------
# Channel shuffle

def test_channel_shuffle_known_mapping():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert L.channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert L.channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


@pytest.mark.parametrize("c, g", [(8, 2), (12, 3), (16, 4), (6, 6)])
def test_channel_shuffle_is_a_permutation_undone_by_c_over_g(c, g):
    x = torch.randn(2, c, 3, 3)
    y = L.channel_shuffle(x, g)
    assert torch.equal(y.sort(dim=1).values, x.sort(dim=1).values)
    assert torch.equal(L.channel_shuffle(y, c // g), x)
    assert torch.equal(L.ChannelShuffle(g)(x), y)
    if 1 < g < c:
        assert not torch.equal(y, x)


def test_channel_shuffle_rejects_bad_groups():
    with pytest.raises(ValueError, match="dividing the 6 channels"):
        L.channel_shuffle(torch.zeros(1, 6, 2, 2), 4)


# ----------------------------------------------------------------------------------------------
# make_conv and its errors

def test_make_conv_picks_the_variant():
    assert type(L.make_conv(8, 16, 3)) is L.ConvKxK
    assert type(L.make_conv(8, 16, 5, design="stacked")) is L.StackedConv3x3
    assert type(L.make_conv(8, 16, 5, design="factorized")) is L.FactorizedConv
    assert type(L.make_conv(8, 16, 5, design="bottleneck")) is L.Bottleneck1x1
    assert type(L.make_conv(8, 16, 3, groups="depthwise")) is L.DepthwiseSeparableConv
    shuffled = L.make_conv(8, 16, 3, groups=4, shuffle=True)
    assert isinstance(shuffled[1], L.ChannelShuffle) and shuffled[1].groups == 4
    assert shuffled[0].groups == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(c_in=32, c_out=64, k=3, groups=3), "groups=3 must divide in_channels=32 and out_channels=64"),
    (dict(c_in=32, c_out=64, k=4), "k=4 is even"),
    (dict(c_in=32, c_out=64, k=11), "k=11 is not supported; choose one of 1, 3, 5, 7, 9"),
    (dict(c_in=32, c_out=64, k=1, design="stacked"), "needs kernel size k >= 3"),
    (dict(c_in=32, c_out=64, k=1, design="factorized"), "needs kernel size k >= 3"),
    (dict(c_in=32, c_out=64, k=3, design="inception"), "'single', 'stacked', 'factorized', 'bottleneck'"),
    (dict(c_in=32, c_out=64, k=3, shuffle=True), "channel shuffle needs groups > 1"),
    (dict(c_in=32, c_out=64, k=3, groups="depthwise", shuffle=True), "channel shuffle needs int groups > 1"),
    (dict(c_in=32, c_out=64, k=3, groups=4, design="bottleneck", shuffle=True), "dense"),
    (dict(c_in=32, c_out=64, k=5, groups="depthwise", design="stacked"), "needs design='single'"),
    (dict(c_in=32, c_out=64, k=3, groups="pointwise"), "positive int or 'depthwise'"),
    (dict(c_in=32, c_out=64, k=3, groups=0), "positive int"),
    (dict(c_in=32, c_out=64, k=3, groups=32, design="bottleneck"), "bottleneck width 16"),
])
def test_make_conv_errors_explain_the_rule(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        L.make_conv(**kwargs)


# ----------------------------------------------------------------------------------------------
# Models

def test_list_models():
    assert M.list_models()[:4] == ["cifar_net", "lenet", "repvgg_net", "vgg_cifar"]
    assert set(M.list_models()[4:]) == {"squeezenet_cifar", "mobilenet_v1_cifar", "mobilenet_v2_cifar",
                                        "shufflenet_v2_cifar", "mobilenet_v3_cifar", "ghostnet_cifar",
                                        "nas_net"}   # chapter 06's search space (lcnn_lab.nas)


def test_lenet_matches_the_pytorch_tutorial():
    net = M.create_model("lenet")
    assert net(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    assert n_params(net) == 62006  # the tutorial network's well-known count


@pytest.mark.parametrize("knobs", [
    {}, dict(kernel_size=5), dict(kernel_size=7, groups="depthwise"), dict(kernel_size=1),
    dict(design="stacked", kernel_size=7), dict(design="factorized", kernel_size=5, groups=4, shuffle=True),
    dict(design="bottleneck", groups=2), dict(groups=8, shuffle=True), dict(width=0.25), dict(width=1.5),
])
def test_cifar_net_forward_shape(knobs):
    net = M.create_model("cifar_net", **knobs)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert M.model_knobs(net) == {**M.model_knobs(M.create_model("cifar_net")), **knobs,
                                  "width": float(knobs.get("width", 1.0))}


def test_width_multiplier_rounds_to_multiples_of_8():
    assert M.CifarNetConfig().widths == M.CIFAR_NET_WIDTHS == (16, 32, 64, 128)
    assert M.CifarNetConfig(width=2.0).widths == (32, 64, 128, 256)
    assert M.CifarNetConfig(width=0.75).widths == (16, 24, 48, 96)   # 12 rounds to 16
    assert M.CifarNetConfig(width=0.2).widths == (8, 8, 16, 24)
    net = M.create_model("cifar_net", width=2)
    assert net.stem[0].out_channels == 32 and net.head.in_features == 256


def test_config_is_frozen_and_keys_results():
    net = M.create_model("cifar_net", kernel_size=5, width=1)
    assert isinstance(net.config, M.CifarNetConfig)
    with pytest.raises(FrozenInstanceError):
        net.config.kernel_size = 3
    assert net.config.key() == M.create_model("cifar_net", kernel_size=5, width=1.0).config.key()
    assert hash(net.config.key())
    rebuilt = M.create_model(net.config.name, **M.model_knobs(net))
    assert rebuilt.config == net.config
    assert M.from_config(net.config).config == net.config
    assert M.model_knobs(M.create_model("lenet")) == {}


def test_model_knobs_needs_a_config():
    with pytest.raises(ValueError, match="create_model"):
        M.model_knobs(nn.Linear(2, 2))


@pytest.mark.parametrize("name, knobs, message", [
    ("resnet18", {}, "unknown model 'resnet18'; choose one of 'cifar_net', 'lenet'"),
    ("cifar_net", dict(kernal_size=3), "no knob 'kernal_size'; its knobs are kernel_size, design"),
    ("lenet", dict(width=2.0), "lenet has no knobs"),
    ("cifar_net", dict(groups=3), "groups=3 must divide in_channels=16 and out_channels=32"),
    ("cifar_net", dict(groups=64), "groups=64 must divide in_channels=16"),
    ("cifar_net", dict(kernel_size=4), "knob kernel_size=4"),
    ("cifar_net", dict(kernel_size=11), "knob kernel_size=11"),
    ("cifar_net", dict(design="ghost"), "knob design='ghost'"),
    ("cifar_net", dict(shuffle=True), "channel shuffle needs groups > 1"),
    ("cifar_net", dict(groups="depthwise", design="stacked"), "needs design='single'"),
    ("cifar_net", dict(groups=2.0), "knob groups=2.0"),
    ("cifar_net", dict(width=0), "knob width=0"),
    ("cifar_net", dict(width=0.25, groups=16), "groups=16 must divide in_channels=8"),
])
def test_invalid_models_and_knobs_raise_value_error(name, knobs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        M.create_model(name, **knobs)
