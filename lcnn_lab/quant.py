"""Quantization: fewer bits per number (li2023 §3, long2024 §4.2).

A float32 weight takes 32 bits; quantization stores it as a small integer ``q`` plus a shared float
scale ``S`` and integer zero point ``Z`` (affine quantization, Jacob et al. 2018)::

    q = clamp(round(r / S) + Z, q_min, q_max)        r ~ S * (q - Z)

so 8 bits cut the size by 4x and let the CPU multiply int8 numbers (li2023 §3, long2024 §4.2).
This module has the pieces in the order the chapter builds them:

1. li2023's equations (1)-(5), as printed, and the integer zero point they need (:func:`zero_point`);
2. :func:`quantize`, :func:`dequantize` and :func:`fake_quantize` (with the straight-through
   estimator) for 2-16 bits, per tensor or per channel, symmetric or asymmetric;
3. the extremes: :func:`binarize` (BWN/XNOR-Net) and :func:`ternarize` (TWN);
4. error measures: :func:`sqnr_db`, :func:`quantization_error`, :func:`quantization_noise`;
5. whole models: :func:`quantize_weights` (accuracy vs bit width), :func:`to_int8` (real int8
   inference, post-training quantization) and :func:`qat_finetune` (quantization-aware training).
"""
from __future__ import annotations

import copy
import io
import math
import platform
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .data import load_cifar10, normalize
from .prune import copy_mask, masked_weight, remove_masks
from .train import TrainConfig, fixed_subset, train

__all__ = [
    # li2023's equations
    "scale", "zero_point_as_printed", "zero_point", "quantize_as_printed", "dequantize_as_printed",
    # tensors
    "qrange", "quant_params", "quantize", "dequantize", "fake_quantize", "binarize", "ternarize",
    # errors
    "sqnr_db", "QuantError", "quantization_error", "quantization_noise",
    # models
    "quantize_weights", "quantized_size_bytes", "saved_size_bytes",
    "to_int8", "is_int8", "to_float16", "FakeQuantConv2d", "FakeQuantLinear", "add_fake_quant", "qat_finetune",
]

Number = float | torch.Tensor


def _round(x: Number) -> Number:
    # torch.round and Python's round both round half to even, as the int8 kernels do (nearbyint)
    return torch.round(x) if isinstance(x, torch.Tensor) else float(round(x))


# ----------------------------------------------------------------------------------------------
# li2023 §3, equations (1)-(5): as printed, checked, and corrected

def scale(rmin: Number, rmax: Number, qmin: int, qmax: int) -> Number:
    """li2023 Eq. (1): the scale S, the real-valued width of one integer step.

        S = (R_max - R_min) / (Q_max - Q_min)                                   (1)

    "S is the scale factor of quantization ... the data type of S is FP32" (li2023 §3).
    Works on numbers or (per-channel) tensors.
    """
    return (rmax - rmin) / (qmax - qmin)


def zero_point_as_printed(rmin: Number, rmax: Number, qmin: int, qmax: int) -> Number:
    """li2023 Eq. (2), repeated as Eq. (5), exactly as printed: a real number, not an integer.

        Z = Q_max - R_max / S                                                   (2), (5)

    "Z denotes the quantization fixed-point value corresponding to the zero floating-point value
    ... the data type of Z is INT8" (li2023 §3). The formula itself is right: with Eq. (1),
    ``(R_max - R_min) / S = Q_max - Q_min``, hence ``Q_max - R_max/S = Q_min - R_min/S``, and Eq. (3)
    maps R_max to Q_max and R_min to Q_min. But R_max/S is almost never an integer, so this Z is not
    an INT8; see :func:`zero_point` for why that matters and for the fix.
    """
    return qmax - rmax / scale(rmin, rmax, qmin, qmax)


def zero_point(rmin: Number, rmax: Number, qmin: int, qmax: int) -> Number:
    """The zero point as the integer it must be: ``Z = Q_min - round(R_min / S)`` (Jacob et al. 2018).

    Derivation of the correction to li2023 Eq. (2)/(5):

    1. In exact arithmetic Eq. (1) gives ``(R_max - R_min)/S = Q_max - Q_min``, so the printed
       ``Q_max - R_max/S`` equals ``Q_min - R_min/S``: the printed sign and form are fine, and
       unrounded they map the range's ends to ``Q_min`` and ``Q_max`` exactly.
    2. But Z is stored as an integer ("the data type of Z is INT8"), and ``R_min/S`` is in general
       not one. Real 0 then has no exact code: Eq. (3), rounded, sends ``R = 0`` to ``round(Z)``,
       and Eq. (4) brings it back as ``(round(Z) - Z) * S``, an error of up to S/2 on every zero
       (zero padding, post-ReLU zeros, pruned weights). Jacob et al. 2018 (§2.1) require "the real
       value 0 [to be] exactly representable", so the rounding must happen *in* Z:
       ``Z = Q_min - round(R_min / S)``. Because the two printed forms differ by the integer
       ``Q_max - Q_min``, this equals ``round(Q_max - R_max / S)`` (except at exact .5 ties).
    3. For Z to fit in ``[Q_min, Q_max]`` the range must contain 0: :func:`quant_params` widens it
       to ``[min(R_min, 0), max(R_max, 0)]`` first, as PyTorch's observers do.

    The price: the grid shifts by up to S/2, so R_min and R_max themselves are now only within S/2
    of a code, which is why Eq. (3) also needs its round and clamp (:func:`quantize`). The result is
    clamped to ``[qmin, qmax]``, which only matters when the range does not contain 0.
    """
    z = qmin - _round(rmin / scale(rmin, rmax, qmin, qmax))
    return torch.clamp(z, qmin, qmax) if isinstance(z, torch.Tensor) else int(min(max(z, qmin), qmax))


def quantize_as_printed(r: Number, S: Number, Z: Number) -> Number:
    """li2023 Eq. (3) as printed: ``Q = R / S + Z``: no rounding to an integer, no clamping to the range.

    The text adds that values exceeding the representable range "need to be rounded"; the standard
    form is ``Q = clamp(round(R / S) + Z, Q_min, Q_max)`` (:func:`quantize`).
    """
    return r / S + Z


def dequantize_as_printed(q: Number, S: Number, Z: Number) -> Number:
    """li2023 Eq. (4): ``R = (Q - Z) * S``, the inverse mapping, which is also the standard one."""
    return (q - Z) * S


# ----------------------------------------------------------------------------------------------
# Affine quantization of tensors

def _check_bits(bits: int, low: int = 2, high: int = 16) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(f"bits={bits!r} must be an int from {low} to {high} (the integer bit width)")
    return bits


def qrange(bits: int, symmetric: bool = True) -> tuple[int, int]:
    """``(q_min, q_max)`` of a ``bits``-bit integer code.

    Symmetric: signed and sign-symmetric, ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (int8: -127..127; the
    code -128 is left unused so that r and -r quantize to q and -q; Nagel et al. 2021 §2.2).
    Asymmetric: unsigned, ``[0, 2^b - 1]`` (uint8: 0..255), li2023's "symmetric (int-8) or
    asymmetric (uint-8)" (Algorithm 1, step 2).
    """
    _check_bits(bits)
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


def _int_dtype(qmin: int, qmax: int) -> torch.dtype:
    for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= qmin and qmax <= info.max:
            return dtype
    raise ValueError(f"no integer dtype holds [{qmin}, {qmax}]")


def _reduce_dims(x: torch.Tensor, per_channel: bool, axis: int) -> tuple[int, ...]:
    if not per_channel:
        return tuple(range(x.ndim))
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis={axis} is not a dimension of a tensor shaped {tuple(x.shape)}")
    axis %= x.ndim
    return tuple(d for d in range(x.ndim) if d != axis)


def _along(t: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """Reshape per-channel ``t`` (one value per slice of ``x`` along ``axis``) to broadcast with x."""
    if t.ndim == 0:
        return t
    shape = [1] * x.ndim
    shape[axis % x.ndim] = -1
    return t.reshape(shape)


def quant_params(x: torch.Tensor, bits: int = 8, symmetric: bool = True, per_channel: bool = False,
                 axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale S (float32) and zero point Z (int64) from the range of ``x`` (li2023 Algorithm 1, steps 1-3).

    The range is min/max of ``x`` (per tensor, or per slice along ``axis`` with ``per_channel``),
    widened to contain 0. Asymmetric: S from Eq. (1), Z from :func:`zero_point`. Symmetric:
    ``S = max|r| / q_max`` and Z = 0. Returns 0-d tensors per tensor, 1-d tensors per channel.
    """
    qmin, qmax = qrange(bits, symmetric)
    x = x.detach().float()
    dims = _reduce_dims(x, per_channel, axis)
    rmin = torch.amin(x, dim=dims).clamp(max=0)
    rmax = torch.amax(x, dim=dims).clamp(min=0)
    tiny = torch.finfo(torch.float32).eps   # an all-zero tensor still gets a usable scale
    if symmetric:
        S = (torch.maximum(-rmin, rmax) / qmax).clamp(min=tiny)
        Z = torch.zeros_like(S, dtype=torch.int64)
    else:
        S = scale(rmin, rmax, qmin, qmax).clamp(min=tiny)
        Z = torch.clamp(qmin - torch.round(rmin / S), qmin, qmax).to(torch.int64)   # zero_point()
    return S, Z


def quantize(x: torch.Tensor, bits: int = 8, symmetric: bool = True, per_channel: bool = False,
             axis: int = 0, scale: torch.Tensor | float | None = None,
             zero_point: torch.Tensor | int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer codes ``q = clamp(round(x / S) + Z, q_min, q_max)`` and their ``(scale, zero_point)``.

    li2023 Eq. (3) with the rounding and clamping it needs (Jacob et al. 2018). S and Z come from
    :func:`quant_params` unless given (e.g. from a calibration run). ``q`` has the smallest integer
    dtype holding the code range (int8 for 8-bit symmetric, uint8 for 8-bit asymmetric, ...).
    Rounds half to even, like ``torch.quantize_per_tensor``.
    """
    qmin, qmax = qrange(bits, symmetric)
    if scale is None:
        if zero_point is not None:
            raise ValueError("zero_point was given without scale; give both, or neither")
        S, Z = quant_params(x, bits, symmetric, per_channel, axis)
    else:
        S = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
        Z = torch.as_tensor(0 if zero_point is None else zero_point, dtype=torch.int64, device=x.device)
    q = torch.clamp(torch.round(x.detach().float() / _along(S, x, axis)) + _along(Z, x, axis), qmin, qmax)
    return q.to(_int_dtype(qmin, qmax)), S, Z


def dequantize(q: torch.Tensor, scale: torch.Tensor | float, zero_point: torch.Tensor | int = 0,
               axis: int = 0) -> torch.Tensor:
    """Real values ``r = S * (q - Z)`` (li2023 Eq. (4)), per tensor or per channel along ``axis``."""
    S = torch.as_tensor(scale, dtype=torch.float32, device=q.device)
    Z = torch.as_tensor(zero_point, dtype=torch.int64, device=q.device)
    return (q.to(torch.float32) - _along(Z, q, axis)) * _along(S, q, axis)


class _RoundSTE(torch.autograd.Function):
    """Forward: quantize and dequantize. Backward: the straight-through estimator (Bengio et al. 2013)."""

    @staticmethod
    def forward(ctx, x, S, Z, qmin, qmax):
        code = torch.round(x / S) + Z
        inside = (code >= qmin) & (code <= qmax)
        ctx.save_for_backward(inside)
        return (torch.clamp(code, qmin, qmax) - Z) * S

    @staticmethod
    def backward(ctx, grad):
        # round() has zero gradient almost everywhere; STE pretends it is the identity, but passes
        # no gradient where clamp cut the value off (as torch.fake_quantize_per_tensor_affine does).
        inside, = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize(x: torch.Tensor, bits: int = 8, symmetric: bool = True, per_channel: bool = False,
                  axis: int = 0, scale: torch.Tensor | float | None = None,
                  zero_point: torch.Tensor | int | None = None) -> torch.Tensor:
    """Quantize then dequantize, in float: the values int8 (or ``bits``-bit) arithmetic would see.

    Differentiable with the straight-through estimator: the forward pass rounds, the backward pass
    lets the gradient through unchanged inside the clamp range and zeroes it outside. This is how
    quantization-aware training (li2023 §3.1; Jacob et al. 2018) trains through the rounding.
    S and Z are computed from ``x`` without gradient unless given.
    """
    qmin, qmax = qrange(bits, symmetric)
    if scale is None:
        S, Z = quant_params(x, bits, symmetric, per_channel, axis)
    else:
        S = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
        Z = torch.as_tensor(0 if zero_point is None else zero_point, dtype=torch.int64, device=x.device)
    return _RoundSTE.apply(x, _along(S, x, axis).to(x.dtype), _along(Z, x, axis).to(x.dtype), qmin, qmax)


# ----------------------------------------------------------------------------------------------
# Binary and ternary weights (long2024 §4.2)

def _channel_mean(t: torch.Tensor, per_channel: bool) -> torch.Tensor:
    dims = tuple(range(1, t.ndim)) if per_channel and t.ndim > 1 else tuple(range(t.ndim))
    return t.mean(dim=dims, keepdim=True)


def binarize(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """Binary weights ``alpha * sign(w)``, ``alpha = mean |w|`` per output channel (1 bit per weight).

    Binary-Weight-Networks of XNOR-Net (Rastegari et al. 2016): alpha = ||W||_1 / n minimises
    ``||W - alpha * sign(W)||^2`` for each filter; BinaryConnect / Binarized Neural Networks
    (Courbariaux et al. 2015; Hubara et al. 2016) use alpha = 1. long2024 §4.2. ``sign(0)`` is taken
    as +1, so each channel holds exactly two values, ``-alpha`` and ``+alpha``. Gradients pass
    straight through (STE), so the function can be used for training.
    """
    alpha = _channel_mean(w.detach().abs(), per_channel)
    b = alpha * torch.where(w.detach() >= 0, 1.0, -1.0).to(w.dtype)
    return b + (w - w.detach())   # exactly b forward; gradient 1 to w (STE)


def ternarize(w: torch.Tensor, per_channel: bool = True, delta_factor: float = 0.7) -> torch.Tensor:
    """Ternary weights ``alpha * {-1, 0, +1}`` (TWN, Li, Zhang & Liu 2016; long2024 §4.2).

    TWN's approximate solution of ``min ||W - alpha * T||^2``: threshold ``Delta = 0.7 * mean|w|``;
    weights with ``|w| <= Delta`` become 0, the others ``alpha * sign(w)`` with
    ``alpha = mean(|w|)`` over the weights above Delta. TWN uses one Delta and alpha per layer;
    ``per_channel=True`` (default) uses one per output channel. Each channel holds at most three
    values (2 bits per weight). Gradients pass straight through (STE). long2024 cites the 2023
    ICASSP version of TWN (Liu, Li, Wang, Zhang & Yan).
    """
    a = w.detach().abs()
    delta = delta_factor * _channel_mean(a, per_channel)
    keep = (a > delta).to(w.dtype)
    dims = tuple(range(1, w.ndim)) if per_channel and w.ndim > 1 else tuple(range(w.ndim))
    alpha = (a * keep).sum(dim=dims, keepdim=True) / keep.sum(dim=dims, keepdim=True).clamp(min=1)
    t = alpha * torch.sign(w.detach()) * keep
    return t + (w - w.detach())   # exactly t forward; gradient 1 to w (STE)


# ----------------------------------------------------------------------------------------------
# How much was lost

def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - x_hat)^2)`` in decibels.

    Each extra bit halves the step S, quartering the noise power (about S^2/12 for rounding noise),
    so SQNR grows by about 6.02 dB per bit. ``inf`` when ``x_hat == x``.
    """
    if x.shape != x_hat.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} must have the same shape")
    x, x_hat = x.detach().double(), x_hat.detach().double()
    noise = float(((x - x_hat) ** 2).sum())
    signal = float((x ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise) if signal > 0 else -math.inf


@dataclass(frozen=True)
class QuantError:
    """How far ``dequantize(quantize(x))`` is from ``x``."""
    bits: int
    symmetric: bool
    per_channel: bool
    sqnr_db: float        # signal-to-quantization-noise ratio, dB
    mse: float            # mean squared error
    max_abs_error: float  # largest |x_hat - x|; at most max_step / 2 (nothing is clipped)
    max_step: float       # the largest scale S (per channel, the coarsest channel's)

    def __str__(self) -> str:
        kind = f"{self.bits}-bit {'symmetric' if self.symmetric else 'asymmetric'} " \
               f"{'per-channel' if self.per_channel else 'per-tensor'}"
        return (f"{kind}: SQNR {self.sqnr_db:.1f} dB, MSE {self.mse:.3g}, max |error| "
                f"{self.max_abs_error:.3g} (step S up to {self.max_step:.3g})")


def quantization_error(x: torch.Tensor, bits: int = 8, symmetric: bool = True,
                       per_channel: bool = False, axis: int = 0) -> QuantError:
    """Round-trip error of :func:`quantize` + :func:`dequantize` on ``x``, summarised."""
    q, S, Z = quantize(x, bits, symmetric, per_channel, axis)
    x = x.detach().float()
    x_hat = dequantize(q, S, Z, axis)
    err = x_hat - x
    return QuantError(bits, symmetric, per_channel, sqnr_db(x, x_hat), float((err ** 2).mean()),
                      float(err.abs().max()), float(S.max()))


def quantization_noise(x: torch.Tensor, bits: int = 8, symmetric: bool = True,
                       per_channel: bool = False, axis: int = 0, in_steps: bool = False) -> torch.Tensor:
    """Every element's rounding error ``x_hat - x`` (flattened), for a histogram.

    With ``in_steps=True`` it is divided by its scale S: rounding noise is then spread evenly over
    ``[-1/2, 1/2]`` (the textbook model behind the 6 dB per bit rule).
    """
    q, S, Z = quantize(x, bits, symmetric, per_channel, axis)
    x = x.detach().float()
    err = dequantize(q, S, Z, axis) - x
    if in_steps:
        err = err / _along(S, x, axis)
    return err.flatten()


# ----------------------------------------------------------------------------------------------
# Whole models: weights at b bits

def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _check_model_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not (1 <= bits <= 16 or bits == 32):
        raise ValueError(f"bits={bits!r} must be 32 (float32, unchanged), 16 to 2 (integers), or 1 "
                         f"(binary weights)")
    return bits


def quantize_weights(model: nn.Module, bits: int, symmetric: bool = True, per_channel: bool = True,
                     fp16: bool = False) -> nn.Module:
    """A copy of ``model`` whose conv and linear weights are fake-quantized to ``bits`` bits.

    To measure accuracy against bit width (li2023 §3, long2024 §4.2): weights are rounded to the
    ``bits``-bit grid and stored back as floats, so the copy runs anywhere, with float activations
    (weight-only quantization). Biases and BatchNorm stay float32. A pruned model stays pruned:
    its zeros quantize to exactly 0 and each layer keeps its mask.

    * ``bits=32``: unchanged (float32).
    * ``bits=16``: a 16-bit integer grid (like every other bit width); ``fp16=True`` rounds to IEEE
      half precision instead (float16, what GPUs use), which has a relative, not a uniform, step.
    * ``bits=2..15``: integer grid, per output channel by default (one scale per filter).
    * ``bits=1``: :func:`binarize` (sign times the mean |w| of each filter).
    """
    _check_model_bits(bits)
    if fp16 and bits != 16:
        raise ValueError(f"fp16=True means 16-bit floats; it needs bits=16 (got bits={bits})")
    if bits == 32:
        return copy.deepcopy(model)
    quantized = remove_masks(copy.deepcopy(model))   # plain weights, holding the pruned zeros
    with torch.no_grad():
        for _, m in _weight_layers(quantized):
            w = m.weight
            if fp16:
                new = w.half().float()
            elif bits == 1:
                new = binarize(w, per_channel)
            else:
                new = fake_quantize(w, bits, symmetric, per_channel and w.ndim > 1, axis=0)
            w.copy_(new)
    for (_, src), (_, dst) in zip(_weight_layers(model), _weight_layers(quantized)):
        copy_mask(src, dst)
    return quantized


def quantized_size_bytes(model: nn.Module, bits: int, symmetric: bool = True,
                         per_channel: bool = True) -> int:
    """Bytes of the parameters with conv/linear weights at ``bits`` bits, scales included.

    Each quantized weight tensor stores its codes (``bits`` each) plus one float32 scale per output
    channel (or per tensor), and, if asymmetric, one 32-bit zero point each; other parameters
    (biases, BatchNorm) stay float32. At ``bits=32`` this equals
    :func:`lcnn_lab.profile.model_size_bytes`, which instead prices *every* parameter at its
    ``bits`` and ignores the scales: the ideal the real figure approaches for big layers.
    """
    _check_model_bits(bits)
    # the parameter behind each weight (torch.nn.utils.prune keeps a pruned one as weight_orig)
    weights = {id(getattr(m, "weight_orig", m.weight)) for _, m in _weight_layers(model)}
    total = 0
    for p in model.parameters():
        if bits == 32 or id(p) not in weights:
            total += p.numel() * 32
            continue
        n_scales = p.shape[0] if per_channel and p.ndim > 1 else 1
        total += p.numel() * bits + n_scales * 32 * (1 if symmetric or bits == 1 else 2)
    return math.ceil(total / 8)


def saved_size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the real checkpoint size, format overhead included.

    Works for float models and for :func:`to_int8` models (whose packed int8 weights serialise as
    int8 tensors plus scales).
    """
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


# ----------------------------------------------------------------------------------------------
# Real int8 inference: post-training static quantization (li2023 §3.2)

@contextmanager
def _quiet_ao() -> Iterator[None]:
    # torch.ao.quantization warns on every call that it is deprecated in favour of torchao (a
    # separate package); in torch 2.14.1 it still works and still runs the int8 kernels, and the
    # warnings would bury a notebook's output. Silence only those.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(deprecated|reduce_range|quantized tensor).*")
        yield


def _plain_layers(model: nn.Module) -> nn.Module:
    """Swap subclasses of nn.Conv2d that add nothing to ``forward`` (like ``layers.ConvKxK``) for plain
    nn.Conv2d sharing the same parameters, in place.

    The FX quantizer treats only torch's own classes as layers: it would trace *into* a subclass,
    quantize it as a bare function, and miss the conv + BatchNorm fusion.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Conv2d and isinstance(child, nn.Conv2d) \
                    and type(child).forward is nn.Conv2d.forward:
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                 child.padding, child.dilation, child.groups, child.bias is not None,
                                 child.padding_mode)
                conv.weight, conv.bias = child.weight, child.bias
                conv.train(child.training)
                setattr(parent, name, conv)
    return model


def _calibration_batches(images: torch.Tensor | int, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(images, int) and not isinstance(images, bool):
        if images < 1:
            raise ValueError(f"calibration_images={images} must be at least 1 image")
        train_images, _ = load_cifar10("train")
        idx = fixed_subset(len(train_images), images, seed=0)
        images = train_images if idx is None else train_images[idx]
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0:
        raise ValueError("calibration_images must be a number of training images or a non-empty "
                         "batch (N, 3, H, W), uint8 or already normalised")
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        yield normalize(x) if x.dtype == torch.uint8 else x.float()


# torch's int8 CPU engines, best first for each processor family: ``x86`` (FBGEMM and oneDNN kernels;
# ``fbgemm`` in older builds) on Intel and AMD; ``qnnpack`` on ARM (Apple silicon, Raspberry Pi, phones),
# where the x86 engines do not exist.
INT8_ENGINES = {"x86": ("x86", "fbgemm", "onednn", "qnnpack"), "arm": ("qnnpack",)}


def supported_int8_engines() -> list[str]:
    """The int8 engines this torch build has (``torch.backends.quantized.supported_engines``)."""
    return list(torch.backends.quantized.supported_engines)


def int8_engine(supported: list[str] | None = None, machine: str | None = None) -> str:
    """The int8 engine for this processor: ``x86`` on Intel/AMD, ``qnnpack`` on ARM, whichever of those
    this torch build has (``supported``, default :func:`supported_int8_engines`; ``machine``, default
    ``platform.machine()``: arguments for tests)."""
    supported = supported_int8_engines() if supported is None else list(supported)
    machine = (machine or platform.machine() or "unknown").lower()
    family = "arm" if machine.startswith(("arm", "aarch64")) else "x86"
    for engine in INT8_ENGINES[family]:
        if engine in supported:
            return engine
    raise RuntimeError(f"this torch build has no int8 engine for a {machine} processor (it has: "
                       f"{', '.join(supported) or 'none'}); int8 inference needs "
                       f"{' or '.join(INT8_ENGINES[family])}")


def to_int8(model: nn.Module, calibration_images: torch.Tensor | int = 512, batch_size: int = 128,
            engine: str | None = None) -> nn.Module:
    """An int8 copy of ``model`` for the CPU: post-training static quantization (li2023 §3.2).

    Steps (li2023 Algorithm 1; Jacob et al. 2018): fold each BatchNorm that directly follows a conv
    into it; run ``calibration_images`` through observers that record the range of every activation
    (a histogram observer, which picks the range that minimises the quantization error; torch's x86
    default uses 7 of the 8 bits, ``reduce_range``, so the AVX2 kernels cannot overflow) and weight
    (per output channel, symmetric int8); then replace every conv and linear layer by one that
    multiplies uint8 activations with int8 weights and accumulates in int32 (``quantized::conv2d``,
    FBGEMM/oneDNN kernels under the ``x86`` engine). Uses torch's FX graph mode quantization
    (``prepare_fx``/``convert_fx``), which works on any traceable model.

    What stays float: torch's quantizer has no int8 pattern for GELU, so each GELU runs in float
    between a dequantize and a quantize (torch does have an int8 GELU kernel, ``F.gelu`` on a
    quantized tensor, but rewriting the graph to use it gave no measurable speed-up here and
    reuses the input's range for the output, so we keep torch's standard graph). The global
    max-pool has no int8 kernel either: the network dequantizes before it and quantizes again for
    the int8 linear head. A BatchNorm that follows a max-pool (``norm1`` in cifar_net) cannot fold
    into a conv and runs as an int8 BatchNorm; the others fold into the conv before it.

    Args:
        calibration_images: a batch ``(N, 3, 32, 32)`` (uint8, normalised here, or already
            normalised floats) or a number N of training images (a fixed random subset).
        engine: ``torch.backends.quantized.engine`` to build for (default: :func:`int8_engine`,
            ``x86`` on Intel/AMD CPUs, ``qnnpack`` on ARM). Setting it changes torch's global engine.

    The result takes the same float input (any memory format, ``channels_last`` included) and
    returns float logits; it runs on the CPU only. ``lcnn_lab.profile.measure_latency`` accepts it,
    and so does ``lcnn_lab.train.evaluate``, which finds the device from the model's parameters: an
    int8 model with no float parameter left (cifar_net keeps its int8 BatchNorms' ones; lenet keeps
    none) needs ``evaluate(model, device="cpu")``. torch 2.14 marks ``torch.ao.quantization`` as
    deprecated in favour of the separate ``torchao`` package; its warnings are silenced here.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engine = engine or int8_engine()
    if engine not in supported_int8_engines():
        raise ValueError(f"engine={engine!r} is not available in this torch build; choose one of "
                         f"{', '.join(e for e in supported_int8_engines() if e != 'none')}")
    if torch.backends.quantized.engine != engine:
        torch.backends.quantized.engine = engine
    float_model = _plain_layers(remove_masks(copy.deepcopy(model).cpu().eval()))
    batches = list(_calibration_batches(calibration_images, batch_size))
    # Our own parameter-free layers (ChannelShuffle) use Python control flow that torch.fx cannot
    # trace; kept whole, they run in float between a dequantize and a quantize.
    custom = PrepareCustomConfig().set_non_traceable_module_classes(sorted({
        type(m) for m in float_model.modules()
        if not type(m).__module__.startswith("torch.") and next(iter(m.children()), None) is None
        and not isinstance(m, (nn.Conv2d, nn.Linear))}, key=lambda c: c.__name__))
    with _quiet_ao(), torch.no_grad():
        try:
            prepared = prepare_fx(float_model, get_default_qconfig_mapping(engine), (batches[0][:1],),
                                  prepare_custom_config=custom)
        except Exception as err:   # a tracing failure: say what it means
            raise ValueError(f"to_int8 follows the model's data flow with torch.fx, which failed for "
                             f"{type(model).__name__} ({type(err).__name__}: {err})") from None
        for x in batches:
            prepared(x)
        quantized = convert_fx(prepared)
    quantized.config = getattr(model, "config", None)
    return quantized


def is_int8(model: nn.Module) -> bool:
    """True if every conv and linear layer of ``model`` is a quantized module with int8 weights."""
    from torch.ao.nn import quantized as nnq
    float_layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    int8_layers = [m for m in model.modules() if isinstance(m, (nnq.Conv2d, nnq.Linear))]
    return not float_layers and bool(int8_layers) and all(
        m.weight().dtype == torch.qint8 for m in int8_layers)


class Float16(nn.Module):
    """A float16 copy of a model that takes and returns float32 tensors: the input is cast to float16 on
    the way in and the output back to float32 on the way out, as a deployed FP16 model would be fed."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).half().eval()
        self.config = getattr(model, "config", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def to_float16(model: nn.Module) -> Float16:
    """FP16 inference, the other bit width long2024 §4.2 names beside int8: every parameter and
    activation in IEEE half precision (16 bits). It halves the size; whether it is faster depends on
    the processor having float16 arithmetic (GPUs, recent ARM cores), which many x86 CPUs lack."""
    return Float16(model)


# ----------------------------------------------------------------------------------------------
# Quantization-aware training (li2023 §3.1)

class _FakeQuantMixin:
    bits: int
    symmetric: bool
    per_channel: bool

    def quantized_weight(self) -> torch.Tensor:
        """The weight as ``bits``-bit arithmetic sees it (binary for bits=1), with STE gradients.

        For a pruned layer that is the masked weight, recomputed now (see
        :func:`lcnn_lab.prune.masked_weight`).
        """
        w = masked_weight(self)
        if self.bits == 1:
            return binarize(w, self.per_channel)
        return fake_quantize(w, self.bits, self.symmetric, self.per_channel, axis=0)

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        return f"{super().extra_repr()}, bits={self.bits} ({kind}, " \
               f"{'per channel' if self.per_channel else 'per tensor'})"

    @classmethod
    def from_float(cls, layer: nn.Module, bits: int, symmetric: bool = True, per_channel: bool = True):
        """Wrap ``layer``: the new layer shares its parameters and copies its pruning mask, if any."""
        if cls is FakeQuantConv2d:
            new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                      layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                      layer.padding_mode, device=layer.weight.device)
        else:
            new = cls(layer.in_features, layer.out_features, layer.bias is not None,
                      device=layer.weight.device)
        # share the parameters; a pruned layer's weight parameter is weight_orig (torch.nn.utils.prune)
        new.weight, new.bias = getattr(layer, "weight_orig", layer.weight), layer.bias
        new.bits, new.symmetric, new.per_channel = _check_model_bits(bits), symmetric, per_channel
        new.train(layer.training)
        return copy_mask(layer, new)


class FakeQuantConv2d(_FakeQuantMixin, nn.Conv2d):
    """A conv whose forward pass uses its fake-quantized weight (QAT; Jacob et al. 2018, li2023 §3.1).

    The float weight is kept and updated by the optimizer ("it is important to perform this
    calculation after the weight updates in floating-point precision", li2023 §3.1); each forward
    pass rounds it to the ``bits``-bit grid, and the straight-through estimator carries gradients back.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class FakeQuantLinear(_FakeQuantMixin, nn.Linear):
    """A linear layer whose forward pass uses its fake-quantized weight (see :class:`FakeQuantConv2d`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.quantized_weight(), self.bias)


def _swap_layers(model: nn.Module, make) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = make(child)
            if new is not None:
                setattr(parent, name, new)
    return model


def add_fake_quant(model: nn.Module, bits: int, symmetric: bool = True,
                   per_channel: bool = True) -> nn.Module:
    """Replace (in place) every conv and linear layer by its fake-quantized version; returns ``model``."""
    _check_model_bits(bits)
    if bits == 32:
        raise ValueError("bits=32 is float32: there is nothing to fake-quantize")

    def make(layer: nn.Module):
        if isinstance(layer, (FakeQuantConv2d, FakeQuantLinear)):
            return None
        if isinstance(layer, nn.Conv2d):
            return FakeQuantConv2d.from_float(layer, bits, symmetric, per_channel)
        if isinstance(layer, nn.Linear):
            return FakeQuantLinear.from_float(layer, bits, symmetric, per_channel)
        return None
    return _swap_layers(model, make)


def _strip_fake_quant(model: nn.Module) -> nn.Module:
    """Back to plain nn.Conv2d / nn.Linear, with the quantized weights baked in (in place)."""
    def make(layer: nn.Module):
        if not isinstance(layer, (FakeQuantConv2d, FakeQuantLinear)):
            return None
        if isinstance(layer, FakeQuantConv2d):
            plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                              layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                              layer.padding_mode, device=layer.weight.device)
        else:
            plain = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None,
                              device=layer.weight.device)
        with torch.no_grad():
            plain.weight = nn.Parameter(layer.quantized_weight().detach().clone())
        plain.bias = layer.bias
        plain.train(layer.training)
        return copy_mask(layer, plain)   # a pruned layer stays pruned
    return _swap_layers(model, make)


def qat_finetune(model: nn.Module, bits: int, cfg=None, symmetric: bool = True,
                 per_channel: bool = True, **overrides):
    """Quantization-aware fine-tuning of a copy of ``model``: returns ``(quantized model, TrainResult)``.

    li2023 §3.1 (Jacob et al. 2018): the trained model is fine-tuned with its conv and linear weights
    fake-quantized to ``bits`` bits in every forward pass (STE gradients, float master weights), so
    it learns weights that survive the rounding. Compare its accuracy with the post-training
    :func:`quantize_weights` at the same bit width. Only weights are quantized (activations stay
    float, as in :func:`quantize_weights`); ``bits=1`` trains binary weights (:func:`binarize`).

    ``cfg`` is a :class:`lcnn_lab.train.TrainConfig` (keywords override its fields); the default is
    one epoch at a tenth of the usual peak learning rate (``lr=0.02``), a fine-tune rather than a
    fresh training run. The returned model is an ordinary float model whose weights lie exactly on
    the ``bits``-bit grid; the original model is untouched.
    """
    _check_model_bits(bits)
    cfg = cfg if cfg is not None else TrainConfig(epochs=1, lr=0.02)
    qat = add_fake_quant(copy.deepcopy(model), bits, symmetric, per_channel)
    result = train(qat, cfg, **overrides)
    return _strip_fake_quant(qat), result
