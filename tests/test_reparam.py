"""Chapter 04: every re-parameterization computes exactly what it replaces (long2024 §2.4).

Each fold is checked by running both forms on the same input in eval mode, with BatchNorm statistics
that are far from the identity (a BN with mean 0 and variance 1 would hide a wrong formula), to float32
tolerance (``torch.testing.assert_close``'s defaults) and, in float64, to 1e-12: the algebra is exact.
"""
import itertools

import pytest
import torch
from torch import nn

from lcnn_lab import models as M
from lcnn_lab import profile as P
from lcnn_lab import reparam as R
from lcnn_lab.train import dirac_init, whiten_stem


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm a scale, shift, running mean and running variance far from (1, 0, 0, 1)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            if m.affine:
                m.weight.copy_(torch.rand(c, generator=g) * 2 + 0.2)         # gamma in [0.2, 2.2]
                m.bias.copy_(torch.randn(c, generator=g))                    # beta
            m.running_mean.copy_(torch.randn(c, generator=g) * 2)            # mu
            m.running_var.copy_(torch.rand(c, generator=g) * 3 + 0.05)       # sigma^2 in [0.05, 3.05]
    return model


def both_forms(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model(x), R.reparameterize(model)(x)


# ----------------------------------------------------------------------------------------------
# Two linear layers (the survey's example)

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n, m, p", [(20, 30, 10), (64, 8, 64), (5, 5, 5)])
def test_merge_linear_computes_b_of_a(n, m, p, bias):
    torch.manual_seed(0)
    a, b = nn.Linear(n, m, bias=bias), nn.Linear(m, p, bias=bias)
    merged = R.merge_linear(a, b)
    x = torch.randn(7, n)
    with torch.no_grad():
        torch.testing.assert_close(merged.layer(x), b(a(x)))
    assert merged.params_before == P.count_params(a) + P.count_params(b)
    assert merged.params_after == P.count_params(merged.layer) == n * p + (p if bias else 0)
    assert merged.saved == merged.params_before - merged.params_after


def test_merge_linear_keeps_a_bias_of_either_layer():
    torch.manual_seed(0)
    a, b = nn.Linear(6, 4, bias=True), nn.Linear(4, 3, bias=False)
    merged = R.merge_linear(a, b)
    assert merged.layer.bias is not None
    x = torch.randn(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(merged.layer(x), b(a(x)))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n, p", [(128, 128), (100, 10), (3, 1000)])
def test_merging_saves_parameters_exactly_above_the_break_even_width(n, p, bias):
    even = R.merge_break_even(n, p, bias=bias)
    assert even < min(n, p)
    for m in range(1, 2 * max(n, p) if max(n, p) < 200 else 300):
        saved = R.merge_linear(nn.Linear(n, m, bias=bias), nn.Linear(m, p, bias=bias)).saved
        assert (saved > 0) == (m > even), (m, even, saved)


def test_merge_linear_rejects_layers_that_do_not_stack():
    with pytest.raises(ValueError, match="the first layer has 4 outputs but the second takes 5 inputs"):
        R.merge_linear(nn.Linear(3, 4), nn.Linear(5, 2))
    with pytest.raises(ValueError, match="two nn.Linear"):
        R.merge_linear(nn.Linear(3, 4), nn.Conv2d(4, 2, 1))


# ----------------------------------------------------------------------------------------------
# BatchNorm folding

@pytest.mark.parametrize("conv_bias", [False, True])
@pytest.mark.parametrize("k, stride, groups", [(3, 1, 1), (3, 2, 1), (1, 1, 1), (3, 1, 4), (5, 2, 2)])
def test_fuse_conv_bn_equals_conv_then_bn(k, stride, groups, conv_bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, k, stride=stride, padding=k // 2, groups=groups, bias=conv_bias)
    bn = nn.BatchNorm2d(16, eps=1e-3)
    reference = randomize_bn(nn.Sequential(conv, bn)).eval()
    fused = R.fuse_conv_bn(conv, bn)
    x = torch.randn(3, 8, 11, 11)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), reference(x))
    assert isinstance(fused, nn.Conv2d) and fused.bias is not None
    assert (fused.stride, fused.padding, fused.groups) == (conv.stride, conv.padding, conv.groups)


def test_fuse_conv_bn_follows_the_formula_and_is_exact_in_float64():
    torch.manual_seed(1)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1).double(), nn.BatchNorm2d(6).double()
    randomize_bn(nn.Sequential(conv, bn))
    fused = R.fuse_conv_bn(conv, bn)
    sigma = (bn.running_var + bn.eps).sqrt()
    with torch.no_grad():
        torch.testing.assert_close(fused.weight, conv.weight * (bn.weight / sigma)[:, None, None, None])
        torch.testing.assert_close(fused.bias, bn.bias + (conv.bias - bn.running_mean) * bn.weight / sigma)
        x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
        torch.testing.assert_close(fused(x), bn.eval()(conv(x)), rtol=1e-12, atol=1e-12)


def test_fuse_conv_bn_without_affine_parameters():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5, affine=False)
    randomize_bn(bn)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(R.fuse_conv_bn(conv, bn)(x), bn.eval()(conv(x)))


def test_fuse_conv_bn_explains_what_it_cannot_fold():
    with pytest.raises(ValueError, match="normalises 8 channels but the convolution has 16 output channels"):
        R.fuse_conv_bn(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(8))
    with pytest.raises(ValueError, match="keeps no running statistics"):
        R.fuse_conv_bn(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, track_running_stats=False))
    with pytest.raises(ValueError, match="needs an nn.Conv2d first"):
        R.fuse_conv_bn(nn.Linear(3, 8), nn.BatchNorm2d(8))


def test_a_folded_bn_is_wrong_in_training_mode():
    # the fold uses the running statistics: in training mode BN uses the batch's, and the two differ
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
    randomize_bn(bn)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(R.fuse_conv_bn(conv, bn)(x), bn.train()(conv(x)), atol=1e-3)


# ----------------------------------------------------------------------------------------------
# RepVGG blocks

BRANCHES = [dict(conv3x3=a, conv1x1=b, identity=c) for a, b, c in itertools.product([True, False], repeat=3)
            if a or b]


@pytest.mark.parametrize("branches", BRANCHES, ids=lambda b: "+".join(k for k, v in b.items() if v))
@pytest.mark.parametrize("c_in, c_out, stride", [(16, 16, 1), (16, 16, 2), (8, 16, 1), (16, 8, 2)],
                         ids=["equal-s1", "equal-s2", "unequal-s1", "unequal-s2"])
def test_repvgg_block_equals_its_one_convolution(c_in, c_out, stride, branches):
    torch.manual_seed(0)
    block = randomize_bn(R.RepVGGBlock(c_in, c_out, stride, **branches))
    x = torch.randn(2, c_in, 9, 10)                 # odd and even sizes: stride-2 alignment matters
    y, y_deployed = both_forms(block, x)
    torch.testing.assert_close(y_deployed, y)       # float32 tolerance
    deployed = R.reparameterize(block)
    assert type(deployed) is nn.Conv2d
    assert deployed.kernel_size == ((3, 3) if branches["conv3x3"] else (1, 1))
    assert deployed.stride == (stride, stride)
    assert P.count_params(deployed) < P.count_params(block)


@pytest.mark.parametrize("groups", [1, 2, 16])
@pytest.mark.parametrize("stride", [1, 2])
def test_repvgg_block_is_exact_in_float64_with_groups(groups, stride):
    torch.manual_seed(0)
    block = randomize_bn(R.RepVGGBlock(16, 16, stride, groups=groups)).double()
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    y, y_deployed = both_forms(block, x)
    torch.testing.assert_close(y_deployed, y, rtol=1e-12, atol=1e-12)


def test_repvgg_block_has_an_identity_only_where_shapes_allow():
    assert R.RepVGGBlock(16, 16).branches == ("3x3", "1x1", "identity")
    assert R.RepVGGBlock(16, 16, stride=2).branches == ("3x3", "1x1")
    assert R.RepVGGBlock(8, 16).branches == ("3x3", "1x1")
    assert R.RepVGGBlock(16, 16, conv1x1=False, identity=False).branches == ("3x3",)


def test_repvgg_block_params_before_and_after():
    c = 64
    block = R.RepVGGBlock(c, c)
    bn = 2 * c                                     # gamma and beta; running statistics are buffers
    assert P.count_params(block) == 9 * c * c + c * c + 3 * bn
    assert P.count_params(R.reparameterize(block)) == 9 * c * c + c


def test_repvgg_block_explains_a_block_without_branches():
    with pytest.raises(ValueError, match=r"would have no branch: turn on conv3x3 or conv1x1; an identity "
                                         r"branch needs stride 1 .*stride=2, 16 -> 16"):
        R.RepVGGBlock(16, 16, stride=2, conv3x3=False, conv1x1=False)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        R.RepVGGBlock(16, 16, groups=3)
    with pytest.raises(ValueError, match="stride=0 must be a positive int"):
        R.RepVGGBlock(16, 16, stride=0)


# ----------------------------------------------------------------------------------------------
# RepGhost's feature reuse

def test_feature_reuse_concat_and_add_count_the_same():
    c = 32
    concat, add = R.FeatureReuse(c, "concat"), R.FeatureReuse(c, "add")
    assert P.count_params(concat) == P.count_params(add) == 9 * c
    for block in (concat, add):
        counted = P.count_macs(block, (1, c, 16, 16))
        assert counted.uncounted == {}
        assert counted.total == 9 * c * 16 * 16
    x = torch.randn(2, c, 16, 16)
    assert concat(x).shape == (2, 2 * c, 16, 16) and add(x).shape == (2, c, 16, 16)


def test_feature_reuse_by_addition_folds_into_one_depthwise_conv():
    torch.manual_seed(0)
    add = R.FeatureReuse(24, "add")
    x = torch.randn(2, 24, 7, 7)
    y, y_deployed = both_forms(add, x)
    torch.testing.assert_close(y_deployed, y)
    deployed = R.reparameterize(add)
    assert type(deployed) is nn.Conv2d and deployed.groups == 24
    assert P.count_params(deployed) == P.count_params(add)


def test_feature_reuse_by_concatenation_is_left_as_it_is():
    concat = R.FeatureReuse(8, "concat")
    assert isinstance(R.reparameterize(concat), R.FeatureReuse)
    with pytest.raises(ValueError, match="needs the addition"):
        R.equivalent_conv(concat)
    with pytest.raises(ValueError, match="combine='sum' must be 'concat'"):
        R.FeatureReuse(8, "sum")


def test_equivalent_conv_of_a_conv_bn_pair():
    torch.manual_seed(0)
    pair = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(R.equivalent_conv(pair)(x), pair(x))
    with pytest.raises(ValueError, match="has no known equivalent convolution"):
        R.equivalent_conv(nn.ReLU())


# ----------------------------------------------------------------------------------------------
# repvgg_net, whole

VALID = [b for b in BRANCHES if b["conv3x3"] or b["conv1x1"]]


@pytest.mark.parametrize("knobs", VALID, ids=lambda b: "+".join(k for k, v in b.items() if v))
def test_repvgg_net_deployed_computes_the_same_function(knobs):
    torch.manual_seed(0)
    net = randomize_bn(M.create_model("repvgg_net", **knobs)).train()
    x = torch.randn(4, 3, 32, 32)
    deployed = R.reparameterize(net)
    assert net.training, "reparameterize must not change the model it copies"
    assert any(isinstance(m, R.RepVGGBlock) for m in net.modules())
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), net(x))
    assert not any(isinstance(m, (R.RepVGGBlock, nn.BatchNorm2d)) for m in deployed.modules())
    convs = [m for m in deployed.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 7 and all(c.kernel_size == ((3, 3) if knobs["conv3x3"] else (1, 1)) for c in convs)
    assert P.count_params(deployed) < P.count_params(net)
    assert deployed.config == net.config            # the same trained function: the same results key
    counted = P.count_macs(deployed)
    assert counted.uncounted == {} and counted.total == P.formula_macs(deployed)


def test_repvgg_net_deployed_is_cifar_net_shaped():
    # seven 3x3 convolutions with cifar_net's widths: cifar_net's conv weights plus one bias per channel
    deployed = R.reparameterize(M.create_model("repvgg_net"))
    cifar = M.create_model("cifar_net")
    conv_params = lambda net: sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.Conv2d))  # noqa: E731
    assert conv_params(deployed) == conv_params(cifar)


def test_repvgg_net_knobs():
    assert M.model_knobs(M.create_model("repvgg_net")) == {"conv3x3": True, "conv1x1": True, "identity": True}
    with pytest.raises(ValueError, match="repvgg_net needs conv3x3 or conv1x1"):
        M.create_model("repvgg_net", conv3x3=False, conv1x1=False)
    with pytest.raises(ValueError, match="knob identity=1 must be True or False"):
        M.create_model("repvgg_net", identity=1)


def test_the_trainer_initialises_repvgg_net_and_the_result_still_folds():
    torch.manual_seed(0)
    net = M.create_model("repvgg_net")
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    assert whiten_stem(net, images)                  # the stem's 3x3 branch is the whitening layer
    assert not net.stem.block.branch3x3.conv.weight.requires_grad
    assert dirac_init(net) > 0
    randomize_bn(net).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = net(x)
        # the whitening filters are large (1/sqrt of small eigenvalues), and so are the logits: float32
        # rounding, relative to the scale of the output rather than to each logit
        torch.testing.assert_close(R.reparameterize(net)(x), y, rtol=1e-5, atol=1e-5 * y.abs().max().item())


def test_branch_kernels_are_the_branches_and_add_up_to_the_block():
    torch.manual_seed(0)
    block = randomize_bn(R.RepVGGBlock(6, 6)).eval()
    kernels = block.branch_kernels()
    assert list(kernels) == ["3x3", "1x1", "identity"]
    assert all(k.shape == (6, 6, 3, 3) for k, _ in kernels.values())
    one_by_one, _ = kernels["1x1"]
    assert one_by_one[:, :, [0, 2]].abs().sum() == 0 and one_by_one[:, :, :, [0, 2]].abs().sum() == 0
    identity, _ = kernels["identity"]
    bn = block.identity
    expected = torch.zeros(6, 6, 3, 3)
    expected[range(6), range(6), 1, 1] = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach()
    torch.testing.assert_close(identity, expected)       # the Dirac kernel, scaled by gamma / sigma
    conv = block.to_conv()
    torch.testing.assert_close(conv.weight.detach(), sum(k for k, _ in kernels.values()))
    torch.testing.assert_close(conv.bias.detach(), sum(b for _, b in kernels.values()))
