"""Chapter 05's model families: shapes, counts against fvcore and against the papers' formulas, the
family knobs' errors in the learner's words, and a few training steps of each."""
import math

import pytest
import torch
from torch import nn

from lcnn_lab import families as F
from lcnn_lab import models as M
from lcnn_lab import profile as P

NAMES = list(F.FAMILIES)


@pytest.mark.parametrize("width", [0.5, 1.0])
@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_counts_equal_fvcore(name, width):
    net = M.create_model(name, width=width)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    counted = P.count_macs(net)
    assert counted.uncounted == {}
    assert counted.total == P.formula_macs(net) > 0        # fvcore == the conv/linear formulas, by hooks
    assert P.count_params(net) == sum(p.numel() for p in net.parameters())
    assert M.model_knobs(net)["width"] == width


@pytest.mark.parametrize("name", NAMES)
def test_width_multiplier_shrinks_every_family(name):
    small, full = (P.count_macs(M.create_model(name, width=w)).total for w in (0.5, 1.0))
    assert small < 0.6 * full      # about alpha^2 = 1/4 for the convs that scale on both sides


def test_mobilenet_v1_imagenet_matches_the_paper():
    """Howard et al. 2017, Table 8: 1.0 MobileNet-224 has 569 million mult-adds and 4.2 million params;
    its comparison of smaller models: 0.50 MobileNet-160 has 76 million mult-adds and 1.32 million params."""
    net = F.mobilenet_v1_imagenet()
    assert P.count_params(net) == 4_231_976
    assert round(P.count_macs(net, (1, 3, 224, 224)).total / 1e6) == 569
    half = F.mobilenet_v1_imagenet(0.5)
    assert round(P.count_macs(half, (1, 3, 160, 160)).total / 1e6) == 77   # the paper rounds to 76
    assert round(P.count_params(half) / 1e4) == 133


def mobilenet_v1_formula(alpha: float, size: int) -> int:
    """The paper's cost written out layer by layer from Table 1: a 3x3 stride-2 stem conv, then per
    block D_K^2 * aM * D_F^2 (depthwise) + aM * aN * D_F^2 (pointwise), D_F the block's output size."""
    c = int(32 * alpha)
    hw = math.ceil(size / 2)
    total = P.conv2d_macs(3, c, 3, hw, hw)
    for c_out, n, s in F.MOBILENET_V1_IMAGENET:
        for i in range(n):
            if i == 0 and s == 2:
                hw = math.ceil(hw / 2)
            m, n_out = c, int(c_out * alpha)
            total += 9 * m * hw * hw + m * n_out * hw * hw
            c = n_out
    return total + P.linear_macs(c, 1000)


@pytest.mark.parametrize("alpha, size, rel", [(1.0, 224, 0), (0.75, 192, 0.05), (0.5, 160, 0.06),
                                               (0.25, 128, 0.2)])
def test_mobilenet_v1_cost_formula(alpha, size, rel):
    net = F.mobilenet_v1_imagenet(alpha)
    assert P.count_macs(net, (1, 3, size, size)).total == mobilenet_v1_formula(alpha, size)
    # about alpha^2 rho^2 of the full network: not exactly, the stem and the classifier scale otherwise
    ratio = mobilenet_v1_formula(alpha, size) / mobilenet_v1_formula(1.0, 224)
    assert ratio == pytest.approx(alpha ** 2 * (size / 224) ** 2, rel=rel)
    assert rel == 0 or ratio > alpha ** 2 * (size / 224) ** 2   # the stem scales only as alpha


def test_mobilenet_v1_resolution_knob():
    net = M.create_model("mobilenet_v1_cifar", width=1.0, resolution=0.75)
    assert net.config.input_size == 24
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    full = P.count_macs(M.create_model("mobilenet_v1_cifar")).total
    small = P.count_macs(net).total
    assert small / full == pytest.approx(0.75 ** 2, rel=0.02)
    assert M.model_knobs(net) == {"width": 1.0, "resolution": 0.75}


def test_depthwise_separable_block_formula():
    """A stride-1 MobileNetV1 block counts what the formula says (the package's DepthwiseSeparableConv)."""
    block = F.MobileNetV1Cifar._block(64, 128, 1)
    assert P.count_macs(block, (1, 64, 8, 8)).total == P.depthwise_separable_macs(64, 128, 3, 8, 8)


def test_fire_module_counts():
    fire = F.FireModule(64, 16, 64)
    s, e = 16, 64
    expected = P.conv2d_params(64, s, 1) + P.conv2d_params(s, e // 2, 1) + P.conv2d_params(s, e // 2, 3)
    bn = 2 * (s + e)                                          # BatchNorm scales and shifts
    assert P.count_params(fire) == expected + bn
    assert P.count_macs(fire, (1, 64, 8, 8)).total == 64 * expected
    # the paper's point: a 1x1 filter has 1/9 of a 3x3 filter's weights
    assert P.conv2d_params(s, 1, 3) == 9 * P.conv2d_params(s, 1, 1)


def test_squeezenet_bypass_adds_no_parameters_and_is_an_identity_path():
    plain, bypass = M.create_model("squeezenet_cifar"), M.create_model("squeezenet_cifar", bypass=True)
    assert P.count_params(plain) == P.count_params(bypass)
    fires = [m for m in bypass.modules() if isinstance(m, F.FireModule)]
    assert [f.bypass for f in fires] == [False, True, False, True, False, False]
    fire = fires[1].eval()
    x = torch.randn(1, fire.squeeze[0].in_channels, 4, 4)
    fire.bypass = False
    y_plain = fire(x)
    fire.bypass = True
    torch.testing.assert_close(fire(x), y_plain + x)


def test_shuffle_unit_keeps_shape_and_shuffles():
    unit = F.ShuffleUnit(48, 48, 1).eval()
    x = torch.randn(1, 48, 8, 8)
    y = unit(x)
    assert y.shape == x.shape
    # the untouched half lands on the even channels after the shuffle
    torch.testing.assert_close(y[:, 0::2], x[:, :24])
    assert F.ShuffleUnit(48, 96, 2)(x).shape == (1, 96, 4, 4)


def test_ghost_bottleneck_uses_ghost_modules():
    net = M.create_model("ghostnet_cifar")
    ghosts = [m for m in net.modules() if isinstance(m, F.GhostModule)]
    assert len(ghosts) == 2 * len(F.BOTTLENECKS)


@pytest.mark.parametrize("name, knobs, message", [
    ("mobilenet_v1_cifar", dict(width=0), "mobilenet_v1_cifar knob width=0 must be a number in (0, 4]"),
    ("ghostnet_cifar", dict(width="wide"), "ghostnet_cifar knob width='wide'"),
    ("mobilenet_v1_cifar", dict(resolution=1.5), "resolution=1.5 must be a number in (0, 1]"),
    ("mobilenet_v1_cifar", dict(resolution=0.2), "need at least 8 x 8"),
    ("squeezenet_cifar", dict(bypass="yes"), "bypass='yes' must be True or False"),
    ("shufflenet_v2_cifar", dict(groups=3), "shufflenet_v2_cifar has no knob 'groups'; its knobs are width"),
    ("mobilenet_v2_cifar", dict(resolution=0.5), "has no knob 'resolution'"),
])
def test_bad_knobs_raise_value_error_in_the_learners_words(name, knobs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        M.create_model(name, **knobs)


def test_configs_key_the_results_store():
    a = M.create_model("mobilenet_v1_cifar", width=1, resolution=1)
    b = M.create_model("mobilenet_v1_cifar")
    assert a.config.key() == b.config.key()
    assert M.from_config(a.config).config == a.config


@pytest.mark.parametrize("name", NAMES)
def test_each_family_trains_a_few_steps(name):
    """Three SGD steps on a fixed batch lower the loss, with the trainer's initialisation applied."""
    from lcnn_lab.train import dirac_init
    torch.manual_seed(0)
    net = M.create_model(name, width=0.5)
    dirac_init(net)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(4):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
        opt.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < losses[0]


@pytest.mark.parametrize("name", NAMES)
def test_each_family_trains_at_smoke(name):
    """The book's own trainer, at the smoke budget (2,000 images, one epoch), on a smaller test subset."""
    from lcnn_lab.train import TrainConfig, initialize, train
    cfg = TrainConfig(budget="smoke", eval_images=200, history_eval_images=200, progress=False, threads=1)
    result = train(initialize(M.create_model(name, width=0.5), cfg), cfg)
    assert result.epochs == pytest.approx(1.0) and result.accuracy.n == 200
    assert math.isfinite(result.history[-1].train_loss)


@pytest.mark.parametrize("guideline", list(F.GUIDELINES))
def test_guideline_variants_have_nearly_equal_macs(guideline):
    """Ma et al.'s experiments compare at equal FLOPs: every variant within 6 % of the first one's MACs."""
    models, size = F.guideline_models(guideline)
    counts = {k: P.count_macs(m, size) for k, m in models.items()}
    assert all(c.uncounted == {} for c in counts.values())
    first = next(iter(counts.values())).total
    assert all(abs(c.total / first - 1) < 0.06 for c in counts.values()), {k: c.total for k, c in counts.items()}
    for m in models.values():
        assert m(torch.randn(size)).shape[0] == 1


def test_guideline_g4_differs_only_in_zero_mac_operations():
    models, size = F.guideline_models("G4")
    assert len({P.count_macs(m, size).total for m in models.values()}) == 1
    with pytest.raises(ValueError, match="guideline='G5' is not one of ShuffleNetV2's G1, G2, G3, G4"):
        F.guideline_models("G5")


def test_conv_shares_match_mobilenets_table_2():
    """Howard et al. 2017, Table 2: 1x1 convolutions hold 94.86 % of the mult-adds and 74.59 % of the
    parameters of MobileNetV1 (the fully connected layer 24.33 % of the parameters)."""
    shares = F.conv_shares(F.mobilenet_v1_imagenet(), (1, 3, 224, 224))
    assert round(100 * shares["macs"]["pointwise 1x1"], 2) == 94.86
    assert round(100 * shares["params"]["pointwise 1x1"], 1) == 74.6
    assert sum(shares["params"].values()) == pytest.approx(1.0)
    assert max(shares["params"], key=shares["params"].get) == "pointwise 1x1"


# ----------------------------------------------------------------------------------------------
# Chapter 05's exercises: the solution passes, a wrong answer fails

def test_exercise_mobilenet_v1_prediction(capsys):
    from lcnn_lab.exercises import check_prediction
    measured = P.count_macs(F.mobilenet_v1_imagenet(0.5), (1, 3, 160, 160)).total / 1e6
    full = P.count_macs(F.mobilenet_v1_imagenet(1.0), (1, 3, 224, 224)).total / 1e6
    check_prediction("v1", full * 0.5 ** 2 * (160 / 224) ** 2, measured=measured, rel_tol=0.1)   # alpha^2 rho^2
    check_prediction("v1", full * 0.5 * (160 / 224), measured=measured, rel_tol=0.1)             # alpha rho: wrong
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["PASS", "FAIL"]


def test_exercise_fire_module_params(capsys):
    from lcnn_lab.exercises import check_count
    solution = 128 * 32 + 32 * 64 + 32 * 64 * 9 + 2 * (32 + 64 + 64)
    check_count("fire", solution, F.FireModule(128, 32, 128), "params")
    check_count("fire", solution - 2 * (32 + 64 + 64), F.FireModule(128, 32, 128), "params")  # BN forgotten
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["PASS", "FAIL"]


def test_exercise_largest_share(capsys):
    from lcnn_lab.exercises import check_largest
    shares = F.conv_shares(F.mobilenet_v1_imagenet(), (1, 3, 224, 224))["params"]
    check_largest("share", "pointwise 1x1", shares)
    check_largest("share", "linear", shares)
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["PASS", "FAIL"]
