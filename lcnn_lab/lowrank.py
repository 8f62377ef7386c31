"""Low-rank factorization: a layer's weight replaced by a product of smaller ones (li2023 §4,
long2024 §4.3).

A linear layer's weight is an ``out x in`` matrix; a convolution's is an ``out x in x kh x kw``
tensor. Both are usually close to low rank, and a product of thinner factors costs less:

* **Truncated SVD** of a linear layer (long2024 §4.3): ``W ≈ U_d S_d V_dᵀ`` keeps the ``d`` largest
  singular values, and the layer becomes two, ``in -> d`` and ``d -> out``: ``d (in + out)`` weights
  instead of ``in · out``. By Eckart–Young no rank-``d`` matrix is closer to ``W``: the squared error
  is the sum of the discarded squared singular values (:func:`svd_linear`).
* **Channel SVD** of a convolution (Jaderberg et al. 2014, Zhang et al. 2016): the same SVD of the
  ``out x (in·kh·kw)`` matrix; a ``kh x kw`` convolution with ``d`` filters, then a ``1 x 1`` one.
* **Tucker-2** (Kim et al. 2016): ``W ≈ core ×₀ U_out ×₁ U_in``, decomposed along the two channel
  modes only: ``1 x 1`` (in -> r_in), ``kh x kw`` core (r_in -> r_out), ``1 x 1`` (r_out -> out).
* **CP** (Lebedev et al. 2015): ``W`` as a sum of ``R`` rank-one tensors ``a_r ⊗ b_r ⊗ c_r ⊗ d_r``:
  ``1 x 1`` (in -> R), a depthwise ``kh x 1`` and a depthwise ``1 x kw`` (R channels), ``1 x 1``
  (R -> out).

The matrix SVDs use ``torch.linalg.svd``; Tucker and CP use TensorLy (``partial_tucker``, higher-order
orthogonal iteration, and ``parafac``, alternating least squares), the field's library for them.
Every factorized layer is a :class:`Factorized` module that records its method, rank and the relative
error of the weight it reconstructs. :func:`factorized_params` and :func:`factorized_macs` are the
counting formulas the chapter teaches; the tests hold the real layers to them.
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

METHODS = ("svd", "tucker", "cp")   # for convolutions; a linear layer is always factorized by SVD


# ----------------------------------------------------------------------------------------------
# Counting: the formulas of the chapter

def factorized_params(method: str, c_in: int, c_out: int, k: int | Sequence[int], rank) -> int:
    """Weights (no bias) of a factorized layer: ``method`` is ``"linear"`` (truncated SVD of an
    ``out x in`` matrix, k ignored), ``"svd"`` (channel SVD), ``"tucker"`` (rank ``(r_out, r_in)`` or
    one int for both) or ``"cp"``, for a ``k x k`` (or ``(kh, kw)``) convolution."""
    kh, kw = (k, k) if isinstance(k, int) else k
    if method == "linear":
        return rank * (c_in + c_out)
    if method == "svd":
        return rank * (c_in * kh * kw + c_out)
    if method == "tucker":
        r_out, r_in = (rank, rank) if isinstance(rank, int) else rank
        return c_in * r_in + r_in * r_out * kh * kw + r_out * c_out
    if method == "cp":
        return rank * (c_in + kh + kw + c_out)
    raise ValueError(f"method={method!r} must be 'linear', 'svd', 'tucker' or 'cp'")


def factorized_macs(method: str, c_in: int, c_out: int, k: int | Sequence[int], rank,
                    h_in: int = 1, w_in: int = 1, stride: int = 1) -> int:
    """Multiply-accumulates of a factorized layer for one ``h_in x w_in`` input ("same" padding).

    Each factor's weights are used once per output position of that factor: the first ``1 x 1`` of
    Tucker and CP runs at the input resolution, the rest at the output resolution (stride applied in
    the spatial factor); the channel SVD's ``k x k`` factor has the stride, so both its factors run at
    the output resolution. CP's ``kh x 1`` factor strides rows, its ``1 x kw`` factor columns."""
    kh, kw = (k, k) if isinstance(k, int) else k
    h_out, w_out = -(-h_in // stride), -(-w_in // stride)
    out_px, in_px = h_out * w_out, h_in * w_in
    if method == "linear":
        return factorized_params("linear", c_in, c_out, k, rank)
    if method == "svd":
        return factorized_params("svd", c_in, c_out, k, rank) * out_px
    if method == "tucker":
        r_out, r_in = (rank, rank) if isinstance(rank, int) else rank
        return c_in * r_in * in_px + (r_in * r_out * kh * kw + r_out * c_out) * out_px
    if method == "cp":
        return rank * (c_in * in_px + kh * h_out * w_in + kw * out_px + c_out * out_px)
    raise ValueError(f"method={method!r} must be 'linear', 'svd', 'tucker' or 'cp'")


# ----------------------------------------------------------------------------------------------
# Ranks

def energy_kept(singular_values: torch.Tensor, rank: int) -> float:
    """Share of the squared singular values (the weight's squared Frobenius norm) the first ``rank``
    keep: ``1 - energy`` is the squared relative error of the best rank-``rank`` approximation."""
    s2 = singular_values.double() ** 2
    return float(s2[:rank].sum() / s2.sum())


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep at least ``energy`` of the squared norm."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy={energy!r} must be a share in (0, 1], e.g. 0.9 to keep 90 % of the "
                         f"weight's squared singular values")
    s2 = singular_values.double() ** 2
    share = torch.cumsum(s2, 0) / s2.sum()
    return min(int(torch.searchsorted(share, torch.tensor(energy - 1e-12, dtype=share.dtype))) + 1, len(s2))


def matricize(layer: nn.Module) -> torch.Tensor:
    """The weight as the matrix an SVD factorizes: ``out x in`` (linear) or ``out x (in·kh·kw)``."""
    w = layer.weight.detach().double()
    return w.reshape(w.shape[0], -1)


def singular_values(layer: nn.Module) -> torch.Tensor:
    """Singular values of :func:`matricize` ``(layer)``, largest first (the spectrum the chapter plots)."""
    return torch.linalg.svdvals(matricize(layer))


def max_rank(layer: nn.Module, method: str = "svd") -> int | tuple[int, int]:
    """The largest useful rank: ``min(out, in·kh·kw)`` for SVD, ``(out, in)`` for Tucker-2; CP has
    none (any R is allowed), and :func:`decompose_conv` caps it at ``out · in``."""
    if method == "tucker":
        return layer.weight.shape[0], layer.weight.shape[1]
    if method == "cp":
        return layer.weight.shape[0] * layer.weight.shape[1]
    return min(matricize(layer).shape)


def rank_for_compression(layer: nn.Module, method: str, ratio: float) -> int:
    """The largest rank whose factorized ``layer`` has at most ``1 / ratio`` of its weights (Tucker-2:
    the same rank for both channel modes; a linear layer: its SVD whatever ``method`` says). At least 1."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio < 1:
        raise ValueError(f"ratio={ratio!r} must be a number >= 1: how many times fewer weights to keep")
    if isinstance(layer, nn.Linear):
        method, c_out, c_in, k = "linear", layer.out_features, layer.in_features, 1
    else:
        c_out, c_in, k = layer.out_channels, layer.in_channels, layer.kernel_size
    budget = layer.weight.numel() / ratio
    top = {"linear": min(c_in, c_out), "svd": min(c_out, c_in * layer.weight[0].numel()),
           "tucker": min(c_in, c_out), "cp": c_in * c_out}[method]
    best = 1
    for r in range(1, top + 1):          # the counts grow with the rank: stop at the first too large
        if factorized_params(method, c_in, c_out, k, r) > budget:
            break
        best = r
    return best


# ----------------------------------------------------------------------------------------------
# Factorized layers

class Factorized(nn.Sequential):
    """A layer replaced by a product of smaller ones, applied in sequence.

    Attributes: ``method`` (``"linear"``, ``"svd"``, ``"tucker"``, ``"cp"``), ``rank`` (an int, or
    ``(r_out, r_in)`` for Tucker-2), ``error`` (relative Frobenius error of the reconstructed weight,
    ``‖W - Ŵ‖ / ‖W‖``) and ``original`` (the replaced layer's repr)."""

    def __init__(self, *layers: nn.Module, method: str, rank, error: float, original: str):
        super().__init__(*layers)
        self.method, self.rank, self.error, self.original = method, rank, float(error), original

    def extra_repr(self) -> str:
        return f"method={self.method!r}, rank={self.rank}, error={self.error:.3f}"


def _check_rank(rank: Any, what: str) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank={rank!r} must be a positive whole number (the {what})")
    return rank


def _rank(layer: nn.Module, rank: int | None, energy: float | None, what: str) -> int:
    if (rank is None) == (energy is None):
        raise ValueError("give either rank=... (how many components to keep) or energy=... (the share "
                         "of the squared singular values to keep), not both and not neither")
    if energy is not None:
        return rank_for_energy(singular_values(layer), energy)
    return min(_check_rank(rank, what), max_rank(layer))


def svd_linear(linear: nn.Linear, rank: int | None = None, energy: float | None = None) -> Factorized:
    """Truncated SVD of a linear layer: ``in -> rank`` (no bias), then ``rank -> out`` (the bias).

    The singular values are split evenly between the factors (``√S`` on each side), which keeps the
    two weights on the same scale for a fine-tune. Give ``rank`` or ``energy``."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"svd_linear needs an nn.Linear, got {type(linear).__name__}")
    d = _rank(linear, rank, energy, "number of singular values kept")
    u, s, vh = torch.linalg.svd(matricize(linear), full_matrices=False)
    root = s[:d].sqrt()
    first = nn.Linear(linear.in_features, d, bias=False)
    second = nn.Linear(d, linear.out_features, bias=linear.bias is not None)
    dtype, device = linear.weight.dtype, linear.weight.device
    first.weight.data = (root[:, None] * vh[:d]).to(dtype=dtype, device=device)
    second.weight.data = (u[:, :d] * root).to(dtype=dtype, device=device)
    if linear.bias is not None:
        second.bias.data = linear.bias.detach().clone()
    error = math.sqrt(max(0.0, 1 - energy_kept(s, d)))
    return Factorized(first, second, method="linear", rank=d, error=error, original=repr(linear))


def _check_conv(conv: nn.Module) -> None:
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"decompose_conv needs an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(f"this convolution has groups={conv.groups}: a grouped or depthwise convolution is "
                         f"already factorized along its channels; decompose only groups=1 convolutions")
    if conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError("decompose_conv handles dilation 1 and numeric zero padding only")


def _conv(c_in: int, c_out: int, kernel, stride=1, padding=0, groups: int = 1, bias: bool = False,
          weight: torch.Tensor | None = None, like: nn.Conv2d | None = None) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, groups=groups, bias=bias)
    if weight is not None:
        conv.weight.data = weight.reshape(conv.weight.shape).to(dtype=like.weight.dtype, device=like.weight.device)
    return conv


def _rel_error(w: torch.Tensor, approx: torch.Tensor) -> float:
    return float(torch.linalg.norm(w - approx) / torch.linalg.norm(w))


def decompose_conv(conv: nn.Conv2d, rank=None, method: str = "tucker", energy: float | None = None,
                   seed: int = 0, n_iter: int = 25) -> Factorized:
    """Factorize a ``groups=1`` convolution (see the module docstring for the three methods).

    ``rank``: an int (for Tucker-2 both ranks, or ``(r_out, r_in)``); or ``energy``, the share of the
    squared singular values to keep (for Tucker-2, of each channel mode's unfolding: the ranks a
    truncated higher-order SVD would keep). CP has no singular values to read a rank from: give ``rank``.
    The last factor carries the bias. ``seed`` fixes CP's random restarts (it starts from an SVD);
    ``n_iter`` caps CP's alternating-least-squares sweeps (more: a smaller error, slowly)."""
    _check_conv(conv)
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {', '.join(METHODS)}")
    w = conv.weight.detach().double()
    c_out, c_in, kh, kw = w.shape
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    bias = conv.bias is not None
    if method == "svd":
        d = _rank(conv, rank, energy, "number of filters of the k x k factor")
        u, s, vh = torch.linalg.svd(w.reshape(c_out, -1), full_matrices=False)
        root = s[:d].sqrt()
        first = _conv(c_in, d, (kh, kw), conv.stride, conv.padding, weight=root[:, None] * vh[:d], like=conv)
        last = _conv(d, c_out, 1, bias=bias, weight=u[:, :d] * root, like=conv)
        layers, error, rank = (first, last), math.sqrt(max(0.0, 1 - energy_kept(s, d))), d
    elif method == "tucker":
        import tensorly as tl
        from tensorly.decomposition import partial_tucker
        if energy is not None and rank is None:
            r_out = rank_for_energy(torch.linalg.svdvals(w.reshape(c_out, -1)), energy)
            r_in = rank_for_energy(torch.linalg.svdvals(w.transpose(0, 1).reshape(c_in, -1)), energy)
        elif energy is None and rank is not None:
            r_out, r_in = (rank, rank) if not isinstance(rank, (tuple, list)) else rank
            r_out = min(_check_rank(r_out, "output rank of the Tucker core"), c_out)
            r_in = min(_check_rank(r_in, "input rank of the Tucker core"), c_in)
        else:
            raise ValueError("give either rank=... or energy=..., not both and not neither")
        with tl.backend_context("pytorch"):
            (core, (u_out, u_in)), _ = partial_tucker(w, rank=[r_out, r_in], modes=[0, 1], init="svd",
                                                      n_iter_max=20, random_state=seed)
        first = _conv(c_in, r_in, 1, weight=u_in.T, like=conv)
        middle = _conv(r_in, r_out, (kh, kw), conv.stride, conv.padding, weight=core, like=conv)
        last = _conv(r_out, c_out, 1, bias=bias, weight=u_out, like=conv)
        approx = torch.einsum("abhw,oa,ib->oihw", core, u_out, u_in)
        layers, error, rank = (first, middle, last), _rel_error(w, approx), (r_out, r_in)
    else:
        import tensorly as tl
        from tensorly.decomposition import parafac
        if energy is not None or rank is None:
            raise ValueError("a CP decomposition needs rank=R (the number of rank-one terms); it has no "
                             "singular values to read a rank from an energy")
        r = min(_check_rank(rank, "number of rank-one terms"), c_out * c_in)
        # float32 and a capped number of ALS sweeps: CP's cost grows with R, and at the ranks that
        # compress a 256-channel layer 3x (R ~ 400) one sweep takes about a second on one CPU core
        with tl.backend_context("pytorch"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an SVD start wider than a 3-long mode is trimmed
            cp = parafac(w.float(), rank=r, init="svd", n_iter_max=n_iter, tol=1e-6, random_state=seed)
        a, b, c, d = (f.double() for f in cp.factors)
        a = a * cp.weights.double()                              # fold the weights into the output factor
        first = _conv(c_in, r, 1, weight=b.T, like=conv)
        rows = _conv(r, r, (kh, 1), (sh, 1), (ph, 0), groups=r, weight=c.T, like=conv)
        cols = _conv(r, r, (1, kw), (1, sw), (0, pw), groups=r, weight=d.T, like=conv)
        last = _conv(r, c_out, 1, bias=bias, weight=a, like=conv)
        approx = torch.einsum("or,ir,hr,wr->oihw", a, b, c, d)
        layers, error, rank = (first, rows, cols, last), _rel_error(w, approx), r
    if bias:
        layers[-1].bias.data = conv.bias.detach().clone()
    return Factorized(*layers, method=method, rank=rank, error=error, original=repr(conv))


# ----------------------------------------------------------------------------------------------
# A whole model

def _params(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def decompose(model: nn.Module, method: str = "tucker", rank=None, energy: float | None = None,
              layers: str | Sequence[str] = "all", only_if_smaller: bool = True, seed: int = 0,
              ratio: float | None = None) -> nn.Module:
    """A copy of ``model`` with its layers factorized; the model itself is left as it is.

    ``layers``: ``"all"``, ``"conv"`` or ``"linear"`` (every eligible layer of that kind), or a list of
    module names. Eligible: ``groups=1`` convolutions larger than ``1 x 1`` (a ``1 x 1`` convolution is
    already a matrix product: only its channel SVD would apply, which is ``"linear"``'s case) and linear
    layers. Convolutions use ``method``; linear layers always the truncated SVD.
    ``rank``: one int for every layer, or ``{name: rank}``; or ``energy`` for a per-layer rank; or
    ``ratio``, each layer's rank chosen to keep at most ``1 / ratio`` of its weights
    (:func:`rank_for_compression`).
    ``only_if_smaller``: leave a layer as it is when its factorized form would not have fewer weights.

    The copy's ``.lowrank`` lists one dict per eligible layer: name, kind, method, rank, params
    before and after, relative weight error, and whether it was replaced."""
    if isinstance(layers, str) and layers not in ("all", "conv", "linear"):
        raise ValueError(f"layers={layers!r} must be 'all', 'conv', 'linear' or a list of layer names")
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {', '.join(METHODS)}")
    if sum(x is not None for x in (rank, energy, ratio)) != 1:
        raise ValueError("give one of rank=..., energy=... or ratio=... (how many times fewer weights)")
    names = dict(model.named_modules())
    if not isinstance(layers, str):
        missing = [n for n in layers if n not in names]
        if missing:
            raise ValueError(f"no layer named {', '.join(map(repr, missing))} in {type(model).__name__}")
    out = copy.deepcopy(model)
    report = []
    for name, module in list(out.named_modules()):
        is_conv = isinstance(module, nn.Conv2d) and module.groups == 1 and module.kernel_size != (1, 1)
        is_linear = isinstance(module, nn.Linear)
        wanted = (layers == "all" and (is_conv or is_linear)) or (layers == "conv" and is_conv) or \
                 (layers == "linear" and is_linear) or (not isinstance(layers, str) and name in layers)
        if not wanted:
            continue
        if not (is_conv or is_linear):
            raise ValueError(f"layer {name!r} is a {type(module).__name__}: only groups=1 convolutions larger "
                             f"than 1 x 1 and linear layers can be decomposed here")
        r = rank.get(name) if isinstance(rank, Mapping) else rank
        if ratio is not None:
            r = rank_for_compression(module, method, ratio)
        if isinstance(rank, Mapping) and r is None:
            continue                                  # a {name: rank} dict names the layers it wants
        new = svd_linear(module, r, energy) if is_linear else decompose_conv(module, r, method, energy, seed)
        before, after = _params(module), _params(new)
        replace = after < before or not only_if_smaller
        if replace:
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, new)
        report.append({"layer": name, "kind": "linear" if is_linear else f"conv {module.kernel_size[0]}x"
                                                                            f"{module.kernel_size[1]}",
                       "method": new.method, "rank": new.rank, "params before": before, "params after": after,
                       "weight error": new.error, "replaced": replace})
    out.lowrank = report
    return out


__all__ = ["Factorized", "METHODS", "decompose", "decompose_conv", "energy_kept", "factorized_macs",
           "factorized_params", "matricize", "max_rank", "rank_for_compression", "rank_for_energy",
           "singular_values", "svd_linear"]
