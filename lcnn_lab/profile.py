"""Honest cost measurements: parameters, MACs/FLOPs, model size and latency.

The survey reports a model's cost as parameters, MACs or FLOPs, and speed (long2024 §1-2, li2023 §6
Table 4). Each number here says which one it is:

* **params**: learnable parameter elements (``nn.Parameter``), not buffers such as BatchNorm's
  running statistics.
* **MACs**: multiply-accumulates for one forward pass, counted by tracing the model with fvcore
  (which calls them "flops") and cross-checked against the formulas below in the tests.
  **FLOPs = 2 x MACs** (one multiplication plus one addition).
* **size**: bytes to store the parameters densely at a given bit width.
* **latency**: wall-clock time of a forward pass, median and spread over many timed runs, with
  the thread count, device and torch version it was measured with.

:func:`measure` gathers a model's numbers into one :class:`Measurement` (its :class:`Profile`, a
:class:`Latency` and an accuracy), what an Explorer shows; :func:`compare_latency` times several models
in interleaved rounds, so that their ratios survive a machine whose speed drifts.

What counts as a MAC is a choice, so it is written down: convolutions and linear layers (and
matrix products) are counted, everything in :data:`ZERO_MAC_OPS` counts 0, and any other operator is
listed in ``MacCount.uncounted`` instead of being dropped silently. BatchNorm counts 0 because at
inference it folds into the preceding convolution's weights and bias (the "fused" model of the
reparameterisation chapter), so the MACs that remain are exactly the ones the conv formulas teach.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import statistics
import timeit
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

# torch.utils.benchmark imports torch.utils.cpp_extension, which logs "No CUDA runtime is found" on
# every CPU-only machine. That line means nothing to a reader of a notebook, so silence it here.
_cpp_log = logging.getLogger("torch.utils.cpp_extension")
_level = _cpp_log.level
_cpp_log.setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402
_cpp_log.setLevel(_level)

from .config import check_positive_int, get_device, get_threads
from .train import Accuracy, evaluate
from .units import format_bytes, format_count, format_latency, format_macs

__all__ = [
    # formulas
    "conv2d_params", "conv2d_macs", "linear_params", "linear_macs",
    "depthwise_separable_params", "depthwise_separable_macs", "stacked3x3_params", "stacked3x3_macs",
    "factorized_params", "factorized_macs", "bottleneck_params", "bottleneck_macs",
    "ghost_params", "ghost_macs", "ghost_speedup", "adder_ops",
    "conv_variant_params", "conv_variant_macs", "receptive_field", "layer_times",
    # measurements
    "ZERO_MAC_OPS", "MacCount", "Latency", "Profile", "Measurement", "LatencyComparison",
    "count_params", "count_macs", "formula_macs", "model_size_bytes", "measure_latency", "profile",
    "measure", "compare_latency", "count_adder_ops",
]

Size = int | Sequence[int]


# ----------------------------------------------------------------------------------------------
# Formulas (long2024 §2.1-2.2): what the notebooks derive, checked against fvcore in the tests

def _pair(k: Size) -> tuple[int, int]:
    return (k, k) if isinstance(k, int) else (int(k[0]), int(k[1]))


def _check_groups(c_in: int, c_out: int, groups: int) -> None:
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide in_channels={c_in} and out_channels={c_out}")


def conv2d_params(c_in: int, c_out: int, k: Size, groups: int = 1, bias: bool = False) -> int:
    """Weights of a 2-D convolution: ``c_out * (c_in / g) * kh * kw`` (+ ``c_out`` biases).

    Each of the c_out filters sees only the c_in/g channels of its group (long2024 §2.2).
    """
    _check_groups(c_in, c_out, groups)
    kh, kw = _pair(k)
    return c_out * (c_in // groups) * kh * kw + (c_out if bias else 0)


def conv2d_macs(c_in: int, c_out: int, k: Size, h_out: int, w_out: int, groups: int = 1) -> int:
    """MACs of a 2-D convolution: ``h_out * w_out * c_out * (c_in / g) * kh * kw``.

    One MAC per weight per output pixel (the bias add is not a MAC). Stride and padding enter only
    through the output size ``h_out x w_out``.
    """
    return conv2d_params(c_in, c_out, k, groups) * h_out * w_out


def linear_params(in_features: int, out_features: int, bias: bool = True) -> int:
    """Weights of a linear layer: ``in * out`` (+ ``out`` biases)."""
    return in_features * out_features + (out_features if bias else 0)


def linear_macs(in_features: int, out_features: int) -> int:
    """MACs of a linear layer for one input vector: ``in * out``."""
    return in_features * out_features


def depthwise_separable_params(c_in: int, c_out: int, k: Size) -> int:
    """Depthwise ``k x k`` (``c_in * k^2``) plus pointwise 1 x 1 (``c_in * c_out``) (Howard et al. 2017)."""
    return conv2d_params(c_in, c_in, k, groups=c_in) + conv2d_params(c_in, c_out, 1)


def depthwise_separable_macs(c_in: int, c_out: int, k: Size, h: int, w: int) -> int:
    """``h * w * (c_in * k^2 + c_in * c_out)``: ``1/c_out + 1/k^2`` of a standard conv (long2024 §2.2)."""
    return conv2d_macs(c_in, c_in, k, h, w, groups=c_in) + conv2d_macs(c_in, c_out, 1, h, w)


def stacked3x3_params(c_in: int, c_out: int, k: int, groups: int = 1) -> int:
    """(k-1)/2 stacked 3 x 3 convs: ``9*c_in*c_out/g + ((k-1)/2 - 1) * 9*c_out^2/g`` (Szegedy et al. 2016)."""
    n = (k - 1) // 2
    return conv2d_params(c_in, c_out, 3, groups) + (n - 1) * conv2d_params(c_out, c_out, 3, groups)


def stacked3x3_macs(c_in: int, c_out: int, k: int, h: int, w: int, groups: int = 1) -> int:
    """``h * w`` times :func:`stacked3x3_params` (stride 1: every layer keeps the ``h x w`` size)."""
    return stacked3x3_params(c_in, c_out, k, groups) * h * w


def factorized_params(c_in: int, c_out: int, k: int, groups: int = 1) -> int:
    """1 x k then k x 1: ``k*c_in*c_out/g + k*c_out^2/g``.

    2/k of a k x k conv when c_in = c_out (Peng et al. 2017; long2024 §2.1).
    """
    return conv2d_params(c_in, c_out, (1, k), groups) + conv2d_params(c_out, c_out, (k, 1), groups)


def factorized_macs(c_in: int, c_out: int, k: int, h: int, w: int, groups: int = 1) -> int:
    """``h * w`` times :func:`factorized_params`."""
    return factorized_params(c_in, c_out, k, groups) * h * w


def bottleneck_params(c_in: int, c_out: int, k: int, reduction: int = 4, groups: int = 1) -> int:
    """1 x 1 reduce to m = c_out // reduction, k x k on m channels, 1 x 1 expand (He et al. 2016):
    ``c_in*m + k^2*m^2/g + m*c_out``."""
    m = c_out // reduction
    return conv2d_params(c_in, m, 1) + conv2d_params(m, m, k, groups) + conv2d_params(m, c_out, 1)


def bottleneck_macs(c_in: int, c_out: int, k: int, h: int, w: int, reduction: int = 4,
                    groups: int = 1) -> int:
    """``h * w`` times :func:`bottleneck_params`."""
    return bottleneck_params(c_in, c_out, k, reduction, groups) * h * w


def ghost_params(c_in: int, c_out: int, k: int, ratio: int = 2, dw_kernel: int = 3) -> int:
    """A Ghost module (Han et al. 2020): a k x k conv to m = ceil(c_out / s) intrinsic maps, then s - 1
    depthwise d x d filters per intrinsic map: ``k^2*c_in*m + d^2*m*(s-1)``."""
    m = -(-c_out // ratio)
    return conv2d_params(c_in, m, k) + conv2d_params(m, m * (ratio - 1), dw_kernel, groups=m)


def ghost_macs(c_in: int, c_out: int, k: int, h: int, w: int, ratio: int = 2, dw_kernel: int = 3) -> int:
    """``h * w`` times :func:`ghost_params` (every part keeps h x w)."""
    return ghost_params(c_in, c_out, k, ratio, dw_kernel) * h * w


def ghost_speedup(c_in: int, k: int, ratio: int = 2, dw_kernel: int = 3) -> float:
    """The GhostNet paper's theoretical speed-up of a Ghost module over the convolution it replaces
    (Han et al. 2020, eq. 4), for ``c_out`` divisible by ``ratio``: ``s*c*k^2 / (c*k^2 + (s-1)*d^2)``,
    which tends to s when ``c*k^2 >> d^2``."""
    s, d = ratio, dw_kernel
    return s * c_in * k * k / (c_in * k * k + (s - 1) * d * d)


def adder_ops(c_in: int, c_out: int, k: int, h: int, w: int) -> int:
    """Operations of an adder layer (Chen et al. 2020) on an ``h x w`` output: for every output value
    and every one of its c_in*k^2 inputs, one subtraction, one absolute value and one addition, where
    a convolution does one multiply-accumulate. Returns that count, ``c_in*k^2*c_out*h*w``: the same
    number as a convolution's MACs, with no multiplication among them."""
    return conv2d_macs(c_in, c_out, k, h, w)


def conv_variant_params(c_in: int, c_out: int, k: int, design: str = "single",
                        groups: int | str = 1) -> int:
    """Parameters of ``layers.make_conv(c_in, c_out, k, design, groups)``, from the formulas above."""
    if groups == "depthwise":
        return depthwise_separable_params(c_in, c_out, k)
    ghosts = {f"ghost{s}": s for s in (2, 3, 4)}
    if design in ghosts:
        return ghost_params(c_in, c_out, k, ghosts[design])
    formulas = {"single": lambda: conv2d_params(c_in, c_out, k, groups),
                "adder": lambda: conv2d_params(c_in, c_out, k),   # the weights of a conv, used differently
                "stacked": lambda: stacked3x3_params(c_in, c_out, k, groups),
                "factorized": lambda: factorized_params(c_in, c_out, k, groups),
                "bottleneck": lambda: bottleneck_params(c_in, c_out, k, groups=groups)}
    if design not in formulas:
        raise ValueError(f"design={design!r} is unknown; choose one of {', '.join(map(repr, formulas))}")
    return formulas[design]()


def conv_variant_macs(c_in: int, c_out: int, k: int, h: int, w: int, design: str = "single",
                      groups: int | str = 1) -> int:
    """MACs of ``layers.make_conv(c_in, c_out, k, design, groups)`` on an ``h x w`` map (stride 1).

    An adder layer has no multiplications: 0 MACs (its operations are :func:`adder_ops`)."""
    if design == "adder":
        conv_variant_params(c_in, c_out, k, design, groups)   # validates the arguments
        return 0
    # Every variant keeps h x w at every layer, so MACs are its weight count times h * w.
    return conv_variant_params(c_in, c_out, k, design, groups) * h * w


def receptive_field(n_layers: int, k: int = 3) -> int:
    """Receptive field of ``n_layers`` stacked stride-1 ``k x k`` convs: ``n * (k - 1) + 1``.

    Two 3 x 3 see 5 x 5, three see 7 x 7 (Simonyan & Zisserman 2015; long2024 §2.1).
    """
    return n_layers * (k - 1) + 1


def measured_receptive_field(module: nn.Module, channels: int, size: int = 33) -> tuple[int, int]:
    """Receptive field of ``module`` measured with autograd: (height, width) of the input region that
    the centre output value depends on.

    The gradient of one output value with respect to the input is nonzero exactly on the pixels that
    value can see. Weights are made positive for the measurement (on a copy), so that no gradient
    cancels by chance, and nonlinearities between layers do not matter.
    """
    net = copy.deepcopy(module).eval().double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p.abs() + 0.1)
    x = torch.ones(1, channels, size, size, dtype=torch.float64, requires_grad=True)
    y = net(x)
    y[0, :, y.shape[2] // 2, y.shape[3] // 2].sum().backward()
    rows = (x.grad[0].abs().sum(0).sum(1) > 0).nonzero()
    cols = (x.grad[0].abs().sum(0).sum(0) > 0).nonzero()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def conv2d_arithmetic_intensity(c_in: int, c_out: int, k: Size, h: int, w: int, groups: int = 1,
                                bytes_per_value: int = 4) -> float:
    """MACs per byte a convolution must move at least once: its input, weights and output.

    A processor can only run at its peak MAC rate when each byte fetched from memory feeds enough MACs
    (the roofline model, Williams et al. 2009). A standard convolution reuses every input value
    ``k^2 c_out`` times; a depthwise one only ``k^2`` times, so it is starved by memory traffic long
    before it is limited by arithmetic: its MACs fall much faster than its latency.
    """
    macs = conv2d_macs(c_in, c_out, k, h, w, groups)
    values = c_in * h * w + conv2d_params(c_in, c_out, k, groups) + c_out * h * w
    return macs / (values * bytes_per_value)


# ----------------------------------------------------------------------------------------------
# Parameters and size

def _effective_parameters(model: nn.Module) -> Iterator[torch.Tensor]:
    """Each parameter once; for modules pruned with ``torch.nn.utils.prune``, the masked weight.

    torch's pruning keeps the dense original as the parameter ``weight_orig`` and recomputes
    ``weight = weight_orig * weight_mask``; counting ``weight_orig`` would ignore the pruning.
    """
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            masked = getattr(module, name[:-len("_orig")], None) if name.endswith("_orig") else None
            yield masked if isinstance(masked, torch.Tensor) else p


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameter elements; with ``nonzero=True`` only those that are not exactly 0.

    Counts ``nn.Parameter`` elements (shared ones once), not buffers: BatchNorm's running mean and
    variance are statistics, not learned weights. ``nonzero=True`` measures what pruning left
    (li2023 §2), and sees through ``torch.nn.utils.prune`` masks.
    """
    if nonzero:
        return sum(int(torch.count_nonzero(p.detach())) for p in _effective_parameters(model))
    return sum(p.numel() for p in _effective_parameters(model))


def model_size_bytes(model: nn.Module, bits: int = 32) -> int:
    """Bytes to store every parameter densely at ``bits`` bits: ``ceil(params * bits / 8)``.

    32 = float32, 16 = float16, 8 = int8 quantisation (li2023 §3). It ignores buffers, the file
    format's overhead, quantisation scales, and the index cost of storing a pruned model sparsely,
    so it is the size of the numbers themselves, not of a checkpoint file.
    """
    check_positive_int("bits", bits, "(32 for float32, 8 for int8, ...)")
    return math.ceil(count_params(model) * bits / 8)


# ----------------------------------------------------------------------------------------------
# MACs

# Operators deliberately counted as 0 MACs; anything else fvcore cannot count goes to `uncounted`.
ZERO_MAC_OPS: tuple[str, ...] = (
    # normalisation: folds into the preceding conv at inference (see the module docstring)
    "aten::batch_norm",
    # activations: one elementwise operation per value, no multiply-accumulate
    "aten::relu", "aten::relu_", "aten::gelu", "aten::silu", "aten::silu_", "aten::sigmoid",
    "aten::hardswish", "aten::hardswish_", "aten::hardsigmoid", "aten::hardtanh", "aten::hardtanh_",
    # pooling: comparisons (max) or additions (average), no products with weights
    "aten::max_pool2d", "aten::avg_pool2d", "aten::adaptive_max_pool2d", "aten::adaptive_avg_pool2d",
    # elementwise arithmetic: residual adds, scaling of logits
    "aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::div",
    # data movement: reshapes of channel shuffle and flatten, dropout (identity at inference)
    "aten::view", "aten::reshape", "aten::transpose", "aten::permute", "aten::contiguous",
    "aten::flatten", "aten::size", "aten::Int", "aten::cat", "aten::chunk", "aten::dropout",
    "aten::dropout_",
    # global average pooling written as a mean (ShuffleNetV2), and index arithmetic on shapes
    "aten::mean", "aten::floor_divide",
    # a dtype cast: torch.nn.utils.prune's hook casts each mask before multiplying it in
    "aten::to",
    # a Ghost module cuts its concatenated maps to c_out; an adder layer unfolds its input windows
    # (im2col, also what a convolution does internally), broadcasts its filters and negates
    "aten::slice", "aten::im2col", "aten::unsqueeze", "aten::expand", "aten::neg",
)


@dataclass(frozen=True)
class MacCount:
    """MACs of one forward pass on an input of ``input_size``, counted by fvcore."""
    total: int                          # multiply-accumulates (fvcore's "flops")
    by_module: dict[str, int]           # module name -> MACs (all modules, children included in parents)
    by_operator: dict[str, int]         # "conv", "linear", ... -> MACs
    zero_mac_ops: dict[str, int]        # op in ZERO_MAC_OPS -> number of calls counted as 0 MACs
    uncounted: dict[str, int]           # any other op fvcore skipped -> number of calls (should be {})
    input_size: tuple[int, ...]         # (B, C, H, W) the model was traced with

    @property
    def flops(self) -> int:
        """FLOPs = 2 x MACs (a multiplication and an addition each)."""
        return 2 * self.total

    def __str__(self) -> str:
        text = f"{format_macs(self.total)} for input {self.input_size}"
        if self.uncounted:
            text += f"; NOT counted: {', '.join(f'{k} x{v}' for k, v in self.uncounted.items())}"
        return text


def _fvcore():
    # Importing fvcore.nn scripts a focal loss with torch.jit.script, which new torch versions
    # flag as deprecated; that warning is about fvcore's import, not about anything we count.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        from fvcore.nn import jit_analysis, jit_handles
    return jit_analysis, jit_handles


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's own mode (not just the root's)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Set torch's intra-op thread count inside the block, then restore the caller's."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def count_macs(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32),
               extra_zero_mac_ops: Sequence[str] = ()) -> MacCount:
    """Count MACs of ``model`` on an input of ``input_size`` (batch included) with fvcore.

    fvcore traces the model and counts one fused multiply-add as one "flop"; we call that a MAC.
    Convolutions, linear layers and matrix products are counted, :data:`ZERO_MAC_OPS` (plus
    ``extra_zero_mac_ops``, e.g. ``("aten::sub",)``, for a model that needs them) count 0, and
    every other operator is reported in ``uncounted`` (long2024 §2, li2023 §6). The model is traced
    in eval mode (BatchNorm uses its running statistics); each module's mode is restored after.
    """
    jit_analysis, h = _fvcore()
    input_size = tuple(int(s) for s in input_size)
    zero_calls: Counter[str] = Counter()

    def zero(op: str):
        def handle(inputs, outputs) -> int:
            zero_calls[op] += 1
            return 0
        return handle

    x = torch.zeros(input_size, device=_model_device(model))  # values do not change the count
    # Tracing runs one forward pass. One thread is plenty for it, and on a busy machine a second
    # thread waiting for a core made a 2 ms pass take ~1 s: counting must stay widget-fast.
    with _eval_mode(model), torch.no_grad(), _torch_threads(1):
        analysis = jit_analysis.JitModelAnalysis(model, x)
        analysis.set_op_handle(**{
            "aten::_convolution": h.conv_flop_jit, "aten::linear": h.linear_flop_jit,
            "aten::addmm": h.addmm_flop_jit, "aten::mm": h.matmul_flop_jit,
            "aten::matmul": h.matmul_flop_jit, "aten::bmm": h.bmm_flop_jit,
            "aten::einsum": h.einsum_flop_jit,
        })
        analysis.set_op_handle(**{op: zero(op) for op in (*ZERO_MAC_OPS, *extra_zero_mac_ops)})
        # fvcore silently skips its own list of ops (aten::max, aten::cat, ...). Emptying that
        # (private) set makes every op without a handle show up in unsupported_ops() instead.
        analysis._ignored_ops = set()
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        total = int(analysis.total())
        per_module = analysis.by_module()
        by_operator = {op: int(n) for op, n in analysis.by_operator().items()}
        uncounted = dict(analysis.unsupported_ops())
    return MacCount(
        total=total,
        by_module={name: int(per_module.get(name, 0)) for name, _ in model.named_modules() if name},
        by_operator=by_operator,
        zero_mac_ops=dict(zero_calls),
        uncounted=uncounted,
        input_size=input_size,
    )


def formula_macs(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32)) -> int:
    """MACs from the textbook formulas: :func:`conv2d_macs` for every ``nn.Conv2d`` and
    :func:`linear_macs` for every ``nn.Linear``, with output sizes read by forward hooks.

    An independent check of :func:`count_macs` (it does not trace); it knows only these two layer
    types, so models with other weighted layers are undercounted.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, inputs, out: torch.Tensor) -> None:
        nonlocal total
        b, _, h_out, w_out = out.shape
        total += b * conv2d_macs(m.in_channels, m.out_channels, m.kernel_size, h_out, w_out, m.groups)

    def linear_hook(m: nn.Linear, inputs, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() // m.out_features * linear_macs(m.in_features, m.out_features)

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with _eval_mode(model), torch.no_grad(), _torch_threads(1):  # one pass: see count_macs
            model(torch.zeros(tuple(input_size), device=_model_device(model)))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def count_adder_ops(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32)) -> int:
    """Subtract-abs-accumulate operations of every :class:`~lcnn_lab.layers.AdderConv2d` in ``model``
    (:func:`adder_ops` per layer, output sizes read by forward hooks): what fvcore cannot count."""
    from .layers import AdderConv2d   # layers does not import profile; keep it that way
    total = 0

    def hook(m: AdderConv2d, inputs, out: torch.Tensor) -> None:
        nonlocal total
        b, _, h_out, w_out = out.shape
        total += b * adder_ops(m.in_channels, m.out_channels, m.kernel_size, h_out, w_out)

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, AdderConv2d)]
    try:
        with _eval_mode(model), torch.no_grad(), _torch_threads(1):
            model(torch.zeros(tuple(input_size), device=_model_device(model)))
    finally:
        for h in hooks:
            h.remove()
    return total


# ----------------------------------------------------------------------------------------------
# Latency

@dataclass(frozen=True)
class Latency:
    """Wall-clock time of one forward pass (of a whole batch), from ``torch.utils.benchmark``."""
    median_ms: float   # median over the timed blocks, milliseconds per forward pass
    iqr_ms: float      # interquartile range over the blocks: the spread
    mean_ms: float     # mean over the blocks
    n: int             # number of timed blocks (each the average of `calls // n` forward passes)
    calls: int         # forward passes timed in total (warm-up not included)
    batch: int         # images per forward pass
    threads: int       # intra-op CPU threads
    device: str        # "cpu", "cuda", ...

    @property
    def per_image_ms(self) -> float:
        """Median time per image (``median_ms / batch``): throughput's view, not latency's."""
        return self.median_ms / self.batch

    def __str__(self) -> str:
        return (f"{format_latency(self.median_ms, self.iqr_ms / 2)} (median ± IQR/2, batch {self.batch}, "
                f"{self.threads} thread{'s' if self.threads != 1 else ''}, {self.device})")


def _mps_clock() -> float:
    """A clock that first waits for the Mac GPU's queued work (``mps``), as CUDA's timer does."""
    torch.mps.synchronize()
    return timeit.default_timer()


def measure_latency(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32),
                    batch: int | None = None, threads: int | None = None,
                    device: str | torch.device | None = None, warmup: int = 5,
                    min_run_time: float = 0.5) -> Latency:
    """Time ``model`` on a random input with ``torch.utils.benchmark.Timer``.

    Args:
        input_size: ``(B, C, H, W)``; ``batch``, if given, replaces B.
        threads: intra-op CPU threads (default: ``config.get_threads()``), set only for the
            measurement: torch's global thread count is left as it was.
        device: default ``config.get_device()``. If the model lives elsewhere, a copy is moved
            there, so the caller's model is never moved.
        warmup: untimed forward passes first (lazy initialisation, caches, oneDNN kernel choice).
        min_run_time: seconds of timed runs; the default keeps a widget responsive (about 0.6 s in
            all), benchmarks should use more.

    The model runs in eval mode under ``torch.inference_mode()``; each module's mode is restored
    after. On a GPU (CUDA or a Mac's mps) the clock waits for the device before it is read, so
    queued kernels are not missed.
    """
    threads = get_threads(threads)
    dev = get_device(device)
    shape = tuple(int(s) for s in input_size)
    if batch is not None:
        check_positive_int("batch", batch)
        shape = (batch, *shape[1:])
    net = model if _model_device(model) == dev else copy.deepcopy(model).to(dev)
    x = torch.randn(shape, device=dev)

    def forward() -> None:
        with torch.inference_mode():
            net(x)

    # The Timer's default clock synchronises a CUDA GPU (needed: kernels run asynchronously); for a
    # CPU measurement on a machine that has a GPU, that synchronisation would only add noise. A Mac's
    # GPU (mps) is asynchronous too, and the default clock does not wait for it: ours does.
    clock = {"cpu": {"timer": timeit.default_timer}, "mps": {"timer": _mps_clock}}.get(dev.type, {})
    with _eval_mode(net):
        with _torch_threads(threads):   # warm up with the thread count we measure with
            for _ in range(warmup):
                forward()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            elif dev.type == "mps":
                torch.mps.synchronize()
        timer = benchmark.Timer(stmt="forward()", globals={"forward": forward},
                                num_threads=threads, **clock)
        m = timer.blocked_autorange(min_run_time=min_run_time)
    return Latency(median_ms=m.median * 1e3, iqr_ms=m.iqr * 1e3, mean_ms=m.mean * 1e3,
                   n=len(m.times), calls=len(m.times) * m.number_per_run, batch=shape[0],
                   threads=threads, device=str(dev))


# ----------------------------------------------------------------------------------------------
# Everything at once

@dataclass(frozen=True)
class Profile:
    """A model's cost in one record: what the book's tables and the results store show."""
    model: str                  # the model's config, e.g. "cifar_net(kernel_size=3, ...)", or class name
    params: int                 # parameter elements
    nonzero_params: int         # parameter elements that are not exactly zero (after pruning)
    macs: int                   # multiply-accumulates per image (batch 1)
    size_bytes: int             # dense parameter storage at `bits` bits
    bits: int                   # bit width used for size_bytes
    latency: Latency | None     # None when not measured
    image_size: tuple[int, ...]  # (C, H, W) of one input image
    device: str                 # device latency is (or would be) measured on
    threads: int                # CPU threads for latency
    torch_version: str
    uncounted: dict[str, int] = field(default_factory=dict)  # ops fvcore could not count (should be {})

    @property
    def flops(self) -> int:
        """FLOPs = 2 x MACs."""
        return 2 * self.macs

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (nested for latency), with ``flops`` added, for a results store or a DataFrame."""
        return {**dataclasses.asdict(self), "flops": self.flops}

    def __str__(self) -> str:
        lines = [
            self.model,
            f"  params   {self.params:,} ({self.nonzero_params:,} nonzero)",
            f"  MACs     {format_macs(self.macs)} per image (FLOPs = 2 x MACs)",
            f"  size     {format_bytes(self.size_bytes)} of parameters at {self.bits} bits",
            f"  latency  {self.latency if self.latency is not None else 'not measured'}",
            f"  torch {self.torch_version}, {self.device}, {self.threads} threads",
        ]
        if self.uncounted:
            lines.append(f"  MACs do NOT include: {', '.join(self.uncounted)}")
        return "\n".join(lines)


def _traced_macs(model: nn.Module, input_size: tuple[int, ...]) -> MacCount:
    """:func:`count_macs`, with a failure to run or trace the model turned into one clear ValueError."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"profile needs a torch.nn.Module, got {type(model).__name__}: build the model first "
                         f"(e.g. torchvision.models.resnet18() or lcnn_lab.models.create_model('cifar_net'))")
    try:
        return count_macs(model, input_size)
    except Exception as err:  # noqa: BLE001 - any failure inside the user's forward() or the tracer
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ValueError(f"could not run and trace {type(model).__name__} on one input of shape {input_size}: "
                         f"{first}. Pass the input_size the model expects, e.g. (1, 3, 224, 224) for an "
                         f"ImageNet network; a forward() that takes several inputs, or returns something "
                         f"other than tensors, cannot be profiled") from None


def layer_times(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32), threads: int | None = None,
                repeats: int = 20, warmup: int = 3) -> pd.DataFrame:
    """Where a forward pass spends its time: one row per leaf module (a layer with no children), with
    its type, output shape, params, MACs (fvcore, per forward pass of ``input_size``) and median
    time over ``repeats`` passes, plus a row "(between layers)" for what no layer accounts for
    (functional calls such as ``torch.cat`` or ``flatten`` inside ``forward``, and Python overhead).

    Each layer is timed by hooks around its own call, so the hooks' overhead (a few microseconds a
    layer) is in the times; the total is the median time of the whole pass with the hooks on.
    """
    check_positive_int("repeats", repeats)
    shape = tuple(int(s) for s in input_size)
    macs = _traced_macs(model, shape)
    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    times: dict[str, list[float]] = {n: [] for n, _ in leaves}
    outputs: dict[str, tuple] = {}
    started: dict[str, float] = {}
    handles = []
    def before(name: str):
        def hook(_module, _args) -> None:
            started[name] = timeit.default_timer()
        return hook

    def after(name: str):
        def hook(_module, _args, out) -> None:    # returns None: the output is left as it is
            times[name].append(timeit.default_timer() - started[name])
            outputs.setdefault(name, tuple(out.shape) if torch.is_tensor(out) else ())
        return hook

    for name, module in leaves:
        handles += [module.register_forward_pre_hook(before(name)), module.register_forward_hook(after(name))]
    x = torch.randn(shape, device=_model_device(model))
    totals = []
    try:
        with _eval_mode(model), torch.inference_mode(), _torch_threads(get_threads(threads)):
            for i in range(warmup + repeats):
                if i == warmup:
                    for v in times.values():
                        v.clear()
                t0 = timeit.default_timer()
                model(x)
                if i >= warmup:
                    totals.append(timeit.default_timer() - t0)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name, module in leaves:
        if not times[name]:
            continue                     # defined but not called in forward()
        calls = len(times[name]) // repeats or 1
        per_pass = [sum(times[name][i * calls:(i + 1) * calls]) for i in range(repeats)]
        rows.append({"layer": name, "type": type(module).__name__, "output": outputs.get(name, ()),
                     "params": sum(p.numel() for p in module.parameters(recurse=False)),
                     "MACs": macs.by_module.get(name, 0), "time (ms)": 1e3 * statistics.median(per_pass)})
    table = pd.DataFrame(rows)
    total_ms = 1e3 * statistics.median(totals)
    other = max(0.0, total_ms - table["time (ms)"].sum()) if len(table) else total_ms
    table = pd.concat([table, pd.DataFrame([{"layer": "(between layers)", "type": "", "output": (), "params": 0,
                                             "MACs": macs.total - int(table["MACs"].sum()) if len(table) else macs.total,
                                             "time (ms)": other}])], ignore_index=True)
    table["time share"] = table["time (ms)"] / table["time (ms)"].sum()
    table["MACs share"] = table["MACs"] / max(1, macs.total)
    table.attrs.update(total_ms=total_ms, threads=get_threads(threads), input_size=shape)
    return table.set_index("layer")


def profile(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32), batch: int | None = None,
            threads: int | None = None, device: str | torch.device | None = None,
            latency: bool = True, bits: int = 32, **latency_kwargs: Any) -> Profile:
    """Params, nonzero params, MACs (per image), FLOPs, size and (optionally) latency of ``model``.

    MACs are counted for one image of ``input_size[1:]``; latency is measured at ``batch`` (default
    ``input_size[0]``). Extra keyword arguments go to :func:`measure_latency` (e.g. ``min_run_time``).
    """
    image = tuple(int(s) for s in input_size[1:])
    macs = _traced_macs(model, (1, *image))
    config = getattr(model, "config", None)
    return Profile(
        model=str(config) if config is not None else type(model).__name__,
        params=count_params(model),
        nonzero_params=count_params(model, nonzero=True),
        macs=macs.total,
        size_bytes=model_size_bytes(model, bits),
        bits=bits,
        latency=measure_latency(model, input_size, batch=batch, threads=threads, device=device,
                                **latency_kwargs) if latency else None,
        image_size=image,
        device=str(get_device(device)),
        threads=get_threads(threads),
        torch_version=torch.__version__,
        uncounted=macs.uncounted,
    )


# ----------------------------------------------------------------------------------------------
# A measurement: what an Explorer shows for one model

@dataclass(frozen=True)
class Measurement:
    """A model's four numbers: its cost (a :class:`Profile`), and its latency and accuracy when they
    were measured (None otherwise).

    The profile's own ``latency`` is left None: latency lives here, so that an Explorer can show the
    counts at once and add the slow numbers when they arrive (``dataclasses.replace``).
    """
    profile: Profile
    latency: Latency | None = None
    accuracy: Accuracy | None = None
    accuracy_note: str = ""     # where the accuracy comes from: "1,000 test images", a budget, ...

    def value(self, name: str) -> float | None:
        """One number by name: ``params``, ``nonzero_params``, ``macs``, ``flops``, ``size_bytes``,
        ``latency_ms`` (median) or ``accuracy`` (a fraction); None when not measured."""
        p, lat, acc = self.profile, self.latency, self.accuracy
        values = {"params": p.params, "nonzero_params": p.nonzero_params, "macs": p.macs, "flops": p.flops,
                  "size_bytes": p.size_bytes, "latency_ms": lat.median_ms if lat else None,
                  "accuracy": acc.value if acc else None}
        if name not in values:
            raise ValueError(f"{name!r} is not a measured number; choose one of {', '.join(values)}")
        return values[name]

    def spread(self, name: str) -> float | None:
        """The uncertainty shown with a number: IQR/2 for latency, the standard error for accuracy."""
        if name == "latency_ms" and self.latency is not None:
            return self.latency.iqr_ms / 2
        if name == "accuracy" and self.accuracy is not None:
            return self.accuracy.se
        return None

    def __str__(self) -> str:
        text = (f"{format_count(self.profile.params)} params, {format_macs(self.profile.macs)}, "
                f"{format_bytes(self.profile.size_bytes)} at {self.profile.bits} bits")
        if self.latency is not None:
            text += f", {self.latency}"
        if self.accuracy is not None:
            text += f", accuracy {self.accuracy}"
        return text


def measure(model: nn.Module, *, latency: bool = True, accuracy: bool = False, bits: int = 32,
            input_size: Sequence[int] = (1, 3, 32, 32), threads: int | None = None,
            device: str | torch.device | None = None, min_run_time: float = 0.25,
            eval_images: int | None = 1000) -> Measurement:
    """Count ``model``'s cost, and measure its latency and (trained models) its accuracy.

    MACs are per image; latency is at ``input_size`` (batch included; see :func:`measure_latency`);
    accuracy is top-1 on a fixed subset of ``eval_images`` CIFAR-10 test images (None: all 10,000)
    with its standard error (:func:`lcnn_lab.train.evaluate`).
    """
    cost = profile(model, input_size, threads=threads, device=device, latency=False, bits=bits)
    lat = measure_latency(model, input_size, threads=threads, device=device,
                          min_run_time=min_run_time) if latency else None
    acc = evaluate(model, n=eval_images) if accuracy else None
    return Measurement(cost, lat, acc, f"{acc.n:,} test images" if acc else "")


# ----------------------------------------------------------------------------------------------
# Latency of several models, compared fairly

@dataclass(frozen=True)
class LatencyComparison:
    """Several models timed in interleaved rounds (see :func:`compare_latency`)."""
    times: dict[tuple[str, int], tuple[float, ...]]   # (model, batch) -> its median in each round, ms
    models: tuple[str, ...]
    batches: tuple[int, ...]
    threads: int
    device: str

    def median_ms(self, model: str, batch: int = 1) -> float:
        """The median of the model's round medians: robust to a slow spell of the machine."""
        return statistics.median(self._times(model, batch))

    def spread_ms(self, model: str, batch: int = 1) -> float:
        """Half the range of the round medians: how much the rounds disagreed."""
        t = self._times(model, batch)
        return (max(t) - min(t)) / 2

    def ratio(self, model: str, baseline: str, batch: int = 1) -> float:
        """``model``'s latency as a fraction of ``baseline``'s, at the same batch."""
        return self.median_ms(model, batch) / self.median_ms(baseline, batch)

    def _times(self, model: str, batch: int) -> tuple[float, ...]:
        if (model, batch) not in self.times:
            raise ValueError(f"({model!r}, batch {batch}) was not timed; timed: {', '.join(self.models)} "
                             f"at batch {', '.join(map(str, self.batches))}")
        return self.times[model, batch]

    def table(self, baseline: str | None = None) -> pd.DataFrame:
        """One row per model, for each batch the median (ms), its spread and the ratio to ``baseline``
        (default: the first model)."""
        baseline = baseline or self.models[0]
        rows = []
        for name in self.models:
            row = {"model": name}
            for b in self.batches:
                row[f"batch {b}: ms"] = self.median_ms(name, b)
                row[f"batch {b}: ± ms"] = self.spread_ms(name, b)
                row[f"batch {b}: vs {baseline}"] = self.ratio(name, baseline, b)
            rows.append(row)
        return pd.DataFrame(rows).set_index("model")

    def __str__(self) -> str:
        rounds = len(next(iter(self.times.values())))
        return (f"{len(self.models)} models timed in {rounds} interleaved rounds on {self.device}, "
                f"{self.threads} thread{'s' if self.threads != 1 else ''}, batch {', '.join(map(str, self.batches))}")


def compare_latency(models: Mapping[str, nn.Module], batches: Sequence[int] = (1,), rounds: int = 3,
                    threads: int | None = None, device: str | torch.device | None = None,
                    min_run_time: float = 0.5, input_size: Sequence[int] = (1, 3, 32, 32),
                    progress: bool = True) -> LatencyComparison:
    """Time several models fairly against each other: in ``rounds`` interleaved rounds.

    On a shared or throttled machine the speed drifts within seconds. Timing model A for a minute
    and then model B compares two moments of the machine, not two models. Here every round times
    every model at every batch once (``min_run_time`` seconds each, :func:`measure_latency`), and each
    (model, batch) keeps the median of its round medians, so a slow spell hits all of them alike and
    a ratio between two models stays meaningful. Chapters 02, 07 and 08 and ``benchmarks/latency.py``
    use it.
    """
    if not models:
        raise ValueError("compare_latency needs at least one model, as {name: model}")
    check_positive_int("rounds", rounds)
    threads, dev, batches = get_threads(threads), get_device(device), tuple(batches)
    times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in models for b in batches}
    with tqdm(total=rounds * len(times), desc="timing", leave=False, disable=not progress) as bar:
        for _ in range(rounds):
            for (name, b) in times:
                lat = measure_latency(models[name], input_size, batch=b, threads=threads, device=dev,
                                      min_run_time=min_run_time)
                times[name, b].append(lat.median_ms)
                bar.update(1)
    return LatencyComparison({k: tuple(v) for k, v in times.items()}, tuple(models), batches, threads, str(dev))
