"""Quantization: the survey's equations checked, our codes against torch's, real int8 inference."""
import ast
import copy
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import lcnn_lab.train as T
from lcnn_lab import prune as P
from lcnn_lab import quant as Q
from lcnn_lab.config import seed_everything
from lcnn_lab.data import load_cifar10, normalize
from lcnn_lab.models import create_model
from lcnn_lab.profile import model_size_bytes

BITS = [2, 3, 4, 8, 16]


@pytest.fixture(autouse=True)
def _no_deprecation_noise():
    # torch 2.14 flags its quantized dtypes as deprecated on every use; the tests use them on purpose
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        yield


def gaussian(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# li2023 §3, equations (1)-(5)

def test_eq1_scale():
    # uint8 over [-1, 3]: 256 codes, 255 steps of 4/255
    assert Q.scale(-1.0, 3.0, 0, 255) == pytest.approx(4 / 255)
    assert Q.scale(-1.0, 1.0, -127, 127) == pytest.approx(1 / 127)


def test_printed_zero_point_maps_the_range_ends_but_is_no_integer():
    rmin, rmax, qmin, qmax = -1.0, 3.0, 0, 255
    S = Q.scale(rmin, rmax, qmin, qmax)
    Z = Q.zero_point_as_printed(rmin, rmax, qmin, qmax)           # Eq. (2) = Eq. (5)
    # the printed sign is right: unrounded Eq. (3) sends R_min to Q_min and R_max to Q_max ...
    assert Q.quantize_as_printed(rmin, S, Z) == pytest.approx(qmin, abs=1e-9)
    assert Q.quantize_as_printed(rmax, S, Z) == pytest.approx(qmax, abs=1e-9)
    assert Z == pytest.approx(qmin - rmin / S)                      # = Jacob et al.'s form
    # ... but Z = 63.75 is no INT8, so real 0 has no exact code: it comes back as (64 - 63.75) * S
    assert Z == pytest.approx(63.75)
    zero_back = Q.dequantize_as_printed(round(Q.quantize_as_printed(0.0, S, Z)), S, Z)
    assert zero_back == pytest.approx(0.25 * S) and zero_back != 0


def test_corrected_zero_point_is_an_integer_and_makes_zero_exact():
    rmin, rmax, qmin, qmax = -1.0, 3.0, 0, 255
    S, Z = Q.scale(rmin, rmax, qmin, qmax), Q.zero_point(rmin, rmax, qmin, qmax)
    assert Z == 64 == round(Q.zero_point_as_printed(rmin, rmax, qmin, qmax))
    q, _, _ = Q.quantize(torch.tensor([0.0, rmin, rmax]), 8, symmetric=False, scale=S, zero_point=Z)
    assert q.tolist() == [64, 0, 255]                               # 0 -> Z exactly; ends -> q_min, q_max
    assert Q.dequantize(q, S, Z)[0] == 0


def test_corrected_zero_point_is_the_rounded_printed_one_over_many_ranges():
    g = torch.Generator().manual_seed(0)
    rmin = -torch.rand(1000, generator=g) * 5
    rmax = torch.rand(1000, generator=g) * 5
    for qmin, qmax in [(0, 255), (-128, 127), (0, 15)]:
        printed = Q.zero_point_as_printed(rmin.double(), rmax.double(), qmin, qmax)
        corrected = Q.zero_point(rmin.double(), rmax.double(), qmin, qmax)
        assert torch.equal(corrected, torch.round(printed))
        assert not torch.equal(printed, torch.round(printed))        # most printed Z are fractional


# ----------------------------------------------------------------------------------------------
# quantize / dequantize

@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("per_channel", [False, True])
def test_round_trip_is_within_half_a_step(bits, symmetric, per_channel):
    x = gaussian(16, 8, 3, 3) * torch.linspace(0.1, 3, 16).view(16, 1, 1, 1)   # channels differ in range
    q, S, Z = Q.quantize(x, bits, symmetric, per_channel)
    qmin, qmax = Q.qrange(bits, symmetric)
    assert q.min() >= qmin and q.max() <= qmax and not q.dtype.is_floating_point
    assert S.shape == ((16,) if per_channel else ())
    err = (Q.dequantize(q, S, Z) - x).abs()
    half_step = (S.view(16, 1, 1, 1) if per_channel else S) / 2
    # plus float32's own rounding of x/S and S*(q-Z), which matters at 16 bits (|x|/S up to 32767)
    assert torch.all(err <= half_step + 4 * torch.finfo(torch.float32).eps * x.abs())
    assert err.max() > 0.25 * half_step.min()     # the bound is tight, not vacuous


def test_per_channel_beats_per_tensor_when_channels_differ():
    x = gaussian(16, 64) * torch.logspace(-2, 0, 16).view(16, 1)
    assert Q.quantization_error(x, 8, per_channel=True).sqnr_db > \
        Q.quantization_error(x, 8, per_channel=False).sqnr_db + 5


def test_code_dtypes_and_range_widened_to_zero():
    assert Q.quantize(gaussian(10), 8, True)[0].dtype == torch.int8
    assert Q.quantize(gaussian(10), 8, False)[0].dtype == torch.uint8
    assert Q.quantize(gaussian(10), 12, True)[0].dtype == torch.int16
    positive = torch.rand(100) + 1                       # range [1, 2] widened to [0, 2]
    q, S, Z = Q.quantize(positive, 8, symmetric=False)
    assert int(Z) == 0 and float(S) == pytest.approx(float(positive.max()) / 255)
    q, S, Z = Q.quantize(torch.zeros(5), 8, symmetric=False)   # all zero: no division by zero
    assert torch.equal(Q.dequantize(q, S, Z), torch.zeros(5))
    with pytest.raises(ValueError, match="bits=1 must be an int from 2 to 16"):
        Q.quantize(positive, 1)


@pytest.mark.parametrize("symmetric,dtype", [(True, torch.qint8), (False, torch.quint8)])
def test_codes_agree_with_torch_quantize_per_tensor(symmetric, dtype):
    x = gaussian(1000) * 3
    q, S, Z = Q.quantize(x, 8, symmetric)
    ref = torch.quantize_per_tensor(x, float(S), int(Z), dtype)
    assert torch.equal(ref.int_repr(), q)
    torch.testing.assert_close(ref.dequantize(), Q.dequantize(q, S, Z), rtol=0, atol=0)


@pytest.mark.parametrize("symmetric,dtype", [(True, torch.qint8), (False, torch.quint8)])
@pytest.mark.parametrize("axis", [0, 1])
def test_codes_agree_with_torch_quantize_per_channel(symmetric, dtype, axis):
    x = gaussian(8, 6, 3, 3)
    q, S, Z = Q.quantize(x, 8, symmetric, per_channel=True, axis=axis)
    ref = torch.quantize_per_channel(x, S.double(), Z, axis, dtype)
    assert torch.equal(ref.int_repr(), q)


def test_fake_quantize_matches_torch_values_and_straight_through_gradients():
    x = (gaussian(500) * 2).requires_grad_()
    ours = Q.fake_quantize(x, 4, symmetric=False, scale=0.1, zero_point=8)   # clamps outside [-0.8, 0.7]
    ours.sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    ref = torch.fake_quantize_per_tensor_affine(x_ref, 0.1, 8, 0, 15)
    ref.sum().backward()
    assert torch.equal(ours, ref) and torch.equal(x.grad, x_ref.grad)
    assert 0 < x.grad.sum() < len(x)        # gradient 1 inside the range, 0 where clamped


def test_sqnr_grows_about_6_db_per_bit():
    x = gaussian(100_000)
    sqnr = [Q.sqnr_db(x, Q.fake_quantize(x, b, symmetric=False)) for b in range(4, 13)]
    gains = [b - a for a, b in zip(sqnr, sqnr[1:])]
    assert all(5.5 < g < 6.5 for g in gains), gains
    assert Q.sqnr_db(x, x) == math.inf
    noise = Q.quantization_noise(x, 8, in_steps=True)
    assert noise.abs().max() <= 0.5 + 1e-4 and noise.std() == pytest.approx(1 / math.sqrt(12), rel=0.05)


# ----------------------------------------------------------------------------------------------
# Binary and ternary weights

def test_binary_weights_take_two_values_per_channel():
    w = gaussian(32, 16, 3, 3).requires_grad_()
    b = Q.binarize(w)
    for c in range(32):
        values = torch.unique(b[c].detach())
        alpha = w[c].detach().abs().mean()
        assert len(values) == 2 and torch.allclose(values, torch.stack([-alpha, alpha]))
    b.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))      # straight-through


def test_ternary_weights_take_three_values_per_channel():
    w = gaussian(32, 16, 3, 3)
    t = Q.ternarize(w)
    for c in range(32):
        a = w[c].abs()
        delta = 0.7 * a.mean()
        alpha = a[a > delta].mean()
        assert torch.allclose(torch.unique(t[c]), torch.stack([-alpha, torch.tensor(0.0), alpha]))
        assert torch.equal(t[c] == 0, a <= delta)
    assert len(torch.unique(Q.ternarize(w, per_channel=False))) == 3


# ----------------------------------------------------------------------------------------------
# Whole models

def test_quantize_weights_puts_every_filter_on_a_grid():
    model = create_model("cifar_net", width=0.25)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 Q.quantize_weights(model, 32).state_dict().values()))
    four = Q.quantize_weights(model, 4)
    for m in four.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert all(len(torch.unique(m.weight[c])) <= 15 for c in range(m.weight.shape[0]))
    one = Q.quantize_weights(model, 1)
    assert all(len(torch.unique(m.weight[c])) == 2 for m in one.modules() if isinstance(m, nn.Conv2d)
               for c in range(m.weight.shape[0]))
    half = Q.quantize_weights(model, 16, fp16=True)
    assert torch.equal(half.head.weight, model.head.weight.half().float())
    assert not torch.equal(four.head.weight, model.head.weight)   # the original is untouched


def test_quantized_weights_keep_pruned_zeros():
    pruned = P.prune_unstructured(create_model("cifar_net", width=0.25), 0.5)
    for bits in (8, 3):
        for symmetric in (True, False):
            assert P.sparsity(Q.quantize_weights(pruned, bits, symmetric)) >= P.sparsity(pruned)


def pruned_small(amount: float = 0.5) -> nn.Module:
    seed_everything(0)
    return P.prune_unstructured(create_model("cifar_net", width=0.25), amount)


def masked_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if hasattr(m, "weight_mask")}


def sgd_step(model: nn.Module) -> None:
    """One optimizer step, and no forward pass after it (torch's pruning then has a stale `weight`)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    model(torch.randn(4, 3, 32, 32)).square().mean().backward()
    opt.step()


def test_quant_uses_only_the_public_api_of_prune():
    source = Path(Q.__file__).read_text()
    imported = [alias.name for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.ImportFrom) and node.module and node.module.endswith("prune")
                for alias in node.names]
    assert imported and all(name in P.__all__ for name in imported), imported


def test_quantized_weights_of_a_pruned_model_stay_pruned_and_current():
    pruned = pruned_small()
    sgd_step(pruned)
    quantized = Q.quantize_weights(pruned, 4)
    old = masked_layers(pruned)
    assert list(masked_layers(quantized)) == list(old)
    for name, m in masked_layers(quantized).items():
        assert torch.equal(m.weight_mask, old[name].weight_mask), name
        current = P.masked_weight(old[name]).detach()          # not the stale old[name].weight
        assert torch.equal(P.masked_weight(m), Q.fake_quantize(current, 4, per_channel=True, axis=0)), name
        assert not m.weight[m.weight_mask == 0].any(), name


def test_quantized_size_counts_pruned_weights_at_the_asked_bits():
    assert Q.quantized_size_bytes(pruned_small(), 8) == Q.quantized_size_bytes(
        create_model("cifar_net", width=0.25), 8)


def test_fake_quant_layers_share_a_pruned_layers_parameter_and_keep_its_mask():
    model = pruned_small()
    params = {n: m.weight_orig for n, m in masked_layers(model).items()}
    Q.add_fake_quant(model, 4)
    layers = masked_layers(model)
    assert list(layers) == list(params)
    for name, m in layers.items():
        assert isinstance(m, (Q.FakeQuantConv2d, Q.FakeQuantLinear)) and m.weight_orig is params[name]
    sgd_step(model)
    head = model.head   # quantizes the weights as they are now, masked
    expected = Q.fake_quantize(P.masked_weight(head), 4, per_channel=True, axis=0)
    assert torch.equal(head.quantized_weight(), expected)
    assert not head.quantized_weight()[head.weight_mask == 0].any()


def test_quantized_size_counts_codes_and_scales():
    model = create_model("cifar_net", width=0.25)
    assert Q.quantized_size_bytes(model, 32) == model_size_bytes(model)
    eight = Q.quantized_size_bytes(model, 8)
    assert model_size_bytes(model, 8) < eight < 0.3 * model_size_bytes(model)


# ----------------------------------------------------------------------------------------------
# Real int8 inference and QAT (a small model, trained for a few seconds on real images)

@pytest.fixture(scope="module")
def trained():
    # trained well past chance (as the book's models are): on a near-random net, whose logits are near
    # ties, int8 rounding would flip many predictions and the agreement check below would mean nothing
    seed_everything(0)
    cfg = T.TrainConfig(budget="smoke", epochs=3, train_images=2_000, eval_images=200, progress=False,
                        history_eval_images=200)
    model = T.initialize(create_model("cifar_net", width=0.5), cfg)
    T.train(model, cfg)
    return model.eval()


@pytest.fixture(scope="module")
def test_batch():
    images, _ = load_cifar10("test")
    return normalize(images[:256])


def test_int8_model_runs_int8_kernels_and_agrees_with_fp32(trained, test_batch):
    images, _ = load_cifar10("train")
    int8 = Q.to_int8(trained, normalize(images[:256]))
    assert Q.is_int8(int8) and not Q.is_int8(trained)
    from torch.ao.nn import quantized as nnq
    convs = [m for m in int8.modules() if isinstance(m, nnq.Conv2d)]
    assert len(convs) == 7 and all(m.weight().int_repr().dtype == torch.int8 for m in convs)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = int8(test_batch.contiguous(memory_format=torch.channels_last))   # what evaluate() feeds
    ops = {e.key for e in prof.key_averages()}
    assert "quantized::conv2d" in ops and "aten::convolution" not in ops, sorted(ops)
    with torch.no_grad():
        ref = trained(test_batch)
    assert out.shape == ref.shape == (256, 10) and out.dtype == torch.float32
    agree = (out.argmax(1) == ref.argmax(1)).float().mean()
    assert agree > 0.9, f"int8 and fp32 predictions agree on only {agree:.0%}"
    assert Q.saved_size_bytes(int8) < Q.saved_size_bytes(trained) / 2.5
    assert abs(T.evaluate(int8, n=500).value - T.evaluate(trained, n=500).value) < 0.05


# ---- the int8 engine a student's laptop has -----------------------------------------------------

X86_BUILD = ["none", "onednn", "x86", "fbgemm", "qnnpack"]     # torch's Linux/Windows x86 wheels
ARM_BUILD = ["qnnpack", "none"]                                # macOS arm64, Linux aarch64 wheels


@pytest.mark.parametrize("machine, supported, expected", [
    ("x86_64", X86_BUILD, "x86"),             # Linux, Intel or AMD
    ("AMD64", X86_BUILD, "x86"),              # Windows
    ("x86_64", ["none", "fbgemm", "qnnpack"], "fbgemm"),   # an older x86 build
    ("arm64", ARM_BUILD, "qnnpack"),          # Apple silicon
    ("aarch64", ARM_BUILD, "qnnpack"),        # Raspberry Pi 4/5 (64-bit), ARM servers
    ("armv7l", ARM_BUILD, "qnnpack"),         # Raspberry Pi (32-bit)
])
def test_int8_engine_is_the_one_the_processor_has(machine, supported, expected):
    assert Q.int8_engine(supported, machine) == expected


def test_int8_engine_missing_says_what_is_needed():
    with pytest.raises(RuntimeError, match="no int8 engine for a arm64 processor.*needs qnnpack"):
        Q.int8_engine(["none"], "arm64")


def test_to_int8_on_an_arm_laptop_builds_for_qnnpack(trained, test_batch, monkeypatch):
    """With the processor reported as ARM, to_int8 picks qnnpack by itself; this x86 build has
    qnnpack too, so the ARM model is built and run here for real."""
    before = torch.backends.quantized.engine
    monkeypatch.setattr(Q.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(Q, "supported_int8_engines", lambda: ARM_BUILD)
    try:
        int8 = Q.to_int8(trained, 64)
        assert torch.backends.quantized.engine == "qnnpack"
        agree = (int8(test_batch).argmax(1) == trained(test_batch).argmax(1)).float().mean()
        assert agree > 0.9
    finally:
        torch.backends.quantized.engine = before


def test_default_budget_and_device_on_a_mac(monkeypatch):
    """A Mac with Apple silicon: its GPU (mps) is picked for training, the budget stays quick (full is
    for CUDA GPUs), and an explicit LCNN_DEVICE=cpu still wins."""
    from lcnn_lab import config
    monkeypatch.delenv("LCNN_BUDGET", raising=False)
    monkeypatch.delenv("LCNN_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert config.get_device().type == "mps"
    assert config.get_budget().name == "quick"
    monkeypatch.setenv("LCNN_DEVICE", "cpu")
    assert config.get_device().type == "cpu"
    monkeypatch.delenv("LCNN_DEVICE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.get_device().type == "cuda" and config.get_budget().name == "full"


def test_int8_of_a_filter_pruned_model(trained, test_batch):
    int8 = Q.to_int8(P.prune_filters(trained, 0.5), 64)   # 64 training images as calibration
    assert Q.is_int8(int8) and int8(test_batch[:4]).shape == (4, 10)


def test_qat_fine_tune_trains_weights_on_the_grid(trained):
    model, result = Q.qat_finetune(trained, 3, T.TrainConfig(budget="smoke", epochs=1, train_images=512,
                                                             eval_images=200, progress=False,
                                                             history_eval_images=200))
    assert result.accuracy.n == 200
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(type(m) is nn.Conv2d for m in convs)               # plain layers again
    for m in convs:
        assert max(len(torch.unique(m.weight[c])) for c in range(m.out_channels)) <= 7   # 3 bits: -3..3
    torch.testing.assert_close(Q.quantize_weights(model, 3).head.weight, model.head.weight)
    assert not isinstance(trained.stem[0], Q.FakeQuantConv2d)      # the original is untouched


def test_qat_fine_tune_of_a_pruned_model_keeps_its_zeros():
    pruned = pruned_small(0.6)
    original = copy.deepcopy(pruned)
    model, _ = Q.qat_finetune(pruned, 3, T.TrainConfig(budget="smoke", epochs=1, train_images=256,
                                                       eval_images=100, ema=0.9, progress=False,
                                                       history_eval_images=100))
    assert torch_prune.is_pruned(model)
    old = masked_layers(pruned)
    assert list(masked_layers(model)) == list(old)
    for name, m in masked_layers(model).items():
        assert type(m) in (nn.Conv2d, nn.Linear), name                     # plain layers again
        assert torch.equal(m.weight_mask, old[name].weight_mask), name
        assert not m.weight[m.weight_mask == 0].any(), name
        assert max(len(torch.unique(m.weight[c])) for c in range(m.weight.shape[0])) <= 7   # 3 bits
    assert P.sparsity(model) >= 0.6
    for a, b in zip(pruned.state_dict().values(), original.state_dict().values()):
        assert torch.equal(a, b)                                          # the original is untouched


def test_float16_copy_takes_and_returns_float32():
    from lcnn_lab.models import create_model
    from lcnn_lab.quant import to_float16
    from lcnn_lab.profile import count_params, model_size_bytes
    model = create_model("cifar_net").eval()
    half = to_float16(model)
    assert all(p.dtype == torch.float16 for p in half.parameters())
    assert next(model.parameters()).dtype == torch.float32          # the original is left alone
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        y, y16 = model(x), half(x)
    assert y16.dtype == torch.float32
    torch.testing.assert_close(y16, y, rtol=0.02, atol=2e-3 * y.abs().max().item())
    assert count_params(half) == count_params(model)                 # same parameters, half the bytes
    assert model_size_bytes(half, 16) * 2 == model_size_bytes(model, 32)
