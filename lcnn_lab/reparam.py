"""Structural re-parameterization: train one network, deploy an equivalent plainer one (long2024 §2.4).

Linear maps compose into one linear map. The survey's example is two stacked fully connected layers
without a nonlinearity between them: ``y = B(Ax) = Cx`` with ``C = BA`` (long2024 §2.4). The same
algebra folds more than matrices:

=================================  ==============================================  ======================
what is trained                    what is deployed                                function
=================================  ==============================================  ======================
``Linear(n, m)``, ``Linear(m, p)``  one ``Linear(n, p)``                             :func:`merge_linear`
conv -> BatchNorm (eval mode)      one conv with a bias: W' = (γ/σ) W,              :func:`fuse_conv_bn`
                                   b' = β + (b - μ) γ/σ
3x3 + 1x1 + identity branches,     one 3x3 conv: the 1x1 kernel padded to 3x3,      :class:`RepVGGBlock`
each with a BatchNorm (RepVGG)     the identity as a 3x3 Dirac kernel, summed       (``to_conv``)
x + depthwise(x) (RepGhost)        one depthwise conv (kernel + Dirac)              :class:`FeatureReuse`
=================================  ==============================================  ======================

:func:`reparameterize` returns a copy of a model with every foldable block replaced by its one
convolution (Ding et al. 2021, RepVGG; Chen et al. 2022, RepGhost). The copy computes what the model
computes **in eval mode** (BatchNorm with its running statistics); in training mode a BatchNorm
normalises with each batch's own statistics, which is no fixed linear map, so there is nothing to fold.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_positive_int

__all__ = ["LinearMerge", "merge_linear", "merge_break_even", "fuse_conv_bn", "RepVGGBlock",
           "FeatureReuse", "equivalent_conv", "reparameterize"]


# ----------------------------------------------------------------------------------------------
# Two linear layers are one (long2024 §2.4)

@dataclass(frozen=True)
class LinearMerge:
    """Two stacked linear layers merged into one, with the parameter counts before and after."""
    layer: nn.Linear       # C = B A, c = B a + b: computes y = B(Ax + a) + b in one step
    params_before: int     # weights and biases of the two layers
    params_after: int      # weights and biases of the merged layer

    @property
    def saved(self) -> int:
        """Parameters saved by merging; negative when the merged layer is the larger one."""
        return self.params_before - self.params_after


def merge_linear(a: nn.Linear, b: nn.Linear) -> LinearMerge:
    """Merge ``b(a(x))`` (no nonlinearity between them) into one ``nn.Linear``: ``y = B(Ax) = Cx``.

    With biases, ``B(Ax + a) + b = (BA)x + (Ba + b)``. The merged layer has ``n*p`` weights against
    ``m*(n + p)`` for the pair (n inputs, m in the middle, p outputs), so merging saves parameters
    only when the middle layer is wide: ``m > n*p / (n + p)`` (``n*p / (n + p + 1)`` with biases,
    :func:`merge_break_even`). A narrow middle is a low-rank factorization of ``C``, which has fewer
    parameters than ``C`` itself; merging it would undo the compression (long2024 §2.4, §4.3).
    """
    if not (isinstance(a, nn.Linear) and isinstance(b, nn.Linear)):
        raise ValueError(f"merge_linear needs two nn.Linear layers, got {type(a).__name__} and "
                         f"{type(b).__name__}")
    if a.out_features != b.in_features:
        raise ValueError(f"the first layer has {a.out_features} outputs but the second takes "
                         f"{b.in_features} inputs: they cannot be stacked, so there is nothing to merge")
    has_bias = a.bias is not None or b.bias is not None
    with torch.no_grad():
        A, B = a.weight.double(), b.weight.double()            # (m, n), (p, m)
        C = B @ A                                               # (p, n)
        c = torch.zeros(b.out_features, dtype=torch.float64, device=A.device)
        if a.bias is not None:
            c += B @ a.bias.double()
        if b.bias is not None:
            c += b.bias.double()
        merged = nn.Linear(a.in_features, b.out_features, bias=has_bias, device=a.weight.device,
                           dtype=a.weight.dtype)
        merged.weight.copy_(C)
        if has_bias:
            merged.bias.copy_(c)
    count = lambda m: sum(p.numel() for p in m.parameters())   # noqa: E731
    return LinearMerge(merged, count(a) + count(b), count(merged))


def merge_break_even(in_features: int, out_features: int, bias: bool = True) -> float:
    """The middle width m above which merging ``Linear(n, m)`` and ``Linear(m, p)`` saves parameters.

    Before: ``m*n + p*m`` weights (``+ m + p`` biases); after: ``p*n`` (``+ p``). Merging saves
    parameters exactly when ``m > n*p / (n + p)``, or ``n*p / (n + p + 1)`` with biases: half the
    harmonic mean of n and p, so below both n and p.
    """
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    n, p = in_features, out_features
    return n * p / (n + p + (1 if bias else 0))


# ----------------------------------------------------------------------------------------------
# BatchNorm folded into the convolution before it

def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution that computes ``bn(conv(x))`` with the BatchNorm in eval mode.

    In eval mode a BatchNorm is a fixed affine map per channel: ``γ (z - μ) / σ + β`` with the running
    mean μ, ``σ = sqrt(running_var + eps)``, scale γ and shift β. Applied to a convolution's output
    ``z = W * x + b`` it scales each output channel's filter and moves its bias (Ioffe & Szegedy 2015;
    the folding every inference engine does, Jacob et al. 2018):

        W' = (γ / σ) W          b' = β + (b - μ) γ / σ

    The arithmetic runs in float64 and is cast back once, so folding adds no rounding of its own
    beyond that of the result's dtype. Returns a new ``nn.Conv2d`` with a bias, on ``conv``'s device.
    """
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"fuse_conv_bn needs an nn.Conv2d first, got {type(conv).__name__}")
    if not isinstance(bn, nn.BatchNorm2d):
        raise ValueError(f"fuse_conv_bn needs an nn.BatchNorm2d second, got {type(bn).__name__}")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"the BatchNorm normalises {bn.num_features} channels but the convolution has "
                         f"{conv.out_channels} output channels: it does not follow this convolution")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("this BatchNorm keeps no running statistics (track_running_stats=False): it "
                         "normalises every batch with that batch's own mean and variance, which is not "
                         "a fixed linear map, so it cannot be folded into the weights")
    with torch.no_grad():
        W = conv.weight.double()                                         # (c_out, c_in/g, kh, kw)
        b = conv.bias.double() if conv.bias is not None else torch.zeros_like(bn.running_mean).double()
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(b)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(b)
        sigma = torch.sqrt(bn.running_var.double() + bn.eps)             # (c_out,)
        scale = gamma / sigma
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                          padding_mode=conv.padding_mode, device=conv.weight.device,
                          dtype=conv.weight.dtype)
        fused.weight.copy_(W * scale.reshape(-1, 1, 1, 1))               # W' = (γ/σ) W
        fused.bias.copy_(beta + (b - bn.running_mean.double()) * scale)  # b' = β + (b - μ) γ/σ
    return fused


def _dirac(channels: int, k: int, groups: int, like: torch.Tensor) -> torch.Tensor:
    """The k x k kernel of the identity map: 1 at the centre, from input channel i to output channel i.

    Shape ``(channels, channels / groups, k, k)``; in a group convolution, output channel i sees only
    its group's inputs, where channel i is input ``i % (channels / groups)``.
    """
    kernel = torch.zeros(channels, channels // groups, k, k, dtype=like.dtype, device=like.device)
    nn.init.dirac_(kernel, groups=groups)
    return kernel


def _conv_bn(c_in: int, c_out: int, k: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        bn=nn.BatchNorm2d(c_out)))


# ----------------------------------------------------------------------------------------------
# RepVGG: three branches while training, one 3x3 convolution when deployed

class RepVGGBlock(nn.Module):
    """The training-time block of RepVGG (Ding et al. 2021; long2024 §2.4): the sum of up to three
    branches, each ending in its own BatchNorm,

        y = BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x)

    with the identity branch only where the shapes allow it (``stride=1`` and ``in_channels ==
    out_channels``; RepVGG drops it in the first block of each stage too). The block is linear; the
    network adds the activation after it. :meth:`to_conv` folds the block into the one convolution that
    computes the same function in eval mode: a 3x3 (a 1x1 when there is no 3x3 branch) with a bias;
    :meth:`branch_kernels` shows each branch's share of it.

    ``conv3x3``, ``conv1x1`` and ``identity`` switch the branches, for experiments (RepVGG's ablation
    trains blocks with some branches removed); a block needs at least one branch.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
                 conv3x3: bool = True, conv1x1: bool = True, identity: bool = True):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("stride", stride), ("groups", groups)):
            check_positive_int(name, value)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.in_channels, self.out_channels, self.stride, self.groups = in_channels, out_channels, stride, groups
        has_identity = identity and stride == 1 and in_channels == out_channels
        if not (conv3x3 or conv1x1 or has_identity):
            why = "" if not identity else (f"; an identity branch needs stride 1 and as many output as "
                                           f"input channels (here stride={stride}, {in_channels} -> "
                                           f"{out_channels} channels)")
            raise ValueError(f"RepVGGBlock({in_channels}, {out_channels}, stride={stride}) would have no "
                             f"branch: turn on conv3x3 or conv1x1{why}")
        self.branch3x3 = _conv_bn(in_channels, out_channels, 3, stride, groups) if conv3x3 else None
        self.branch1x1 = _conv_bn(in_channels, out_channels, 1, stride, groups) if conv1x1 else None
        self.identity = nn.BatchNorm2d(in_channels) if has_identity else None

    @property
    def branches(self) -> tuple[str, ...]:
        """The branches this block has, e.g. ``("3x3", "1x1", "identity")``."""
        return tuple(name for name, b in (("3x3", self.branch3x3), ("1x1", self.branch1x1),
                                          ("identity", self.identity)) if b is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [b(x) for b in (self.branch3x3, self.branch1x1, self.identity) if b is not None]
        y = out[0]                                   # (B, out_channels, H / stride, W / stride)
        for z in out[1:]:
            y = y + z
        return y

    def branch_kernels(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each branch as the kernel and bias of one convolution, in eval mode: ``{"3x3": (K, b), ...}``.

        Every kernel has the block's kernel size (3x3; 1x1 when there is no 3x3 branch), so that they
        can be added. A 1x1 kernel is a 3x3 kernel that is zero except at its centre: it is zero-padded.
        The identity is a convolution whose kernel is the Dirac delta (1 at the centre, from channel i
        to channel i); its BatchNorm then folds like any other (:func:`fuse_conv_bn`).
        """
        k = 3 if self.branch3x3 is not None else 1
        like = next(self.parameters())
        out = {}
        for name, branch in (("3x3", self.branch3x3), ("1x1", self.branch1x1)):
            if branch is not None:
                fused = fuse_conv_bn(branch.conv, branch.bn)
                pad = (k - fused.kernel_size[0]) // 2            # 1 for a 1x1 kernel inside a 3x3
                out[name] = F.pad(fused.weight.detach(), [pad] * 4), fused.bias.detach()
        if self.identity is not None:
            dirac = nn.Conv2d(self.in_channels, self.in_channels, k, padding=k // 2, groups=self.groups,
                              bias=False, device=like.device, dtype=like.dtype)
            with torch.no_grad():
                dirac.weight.copy_(_dirac(self.in_channels, k, self.groups, like))
            fused = fuse_conv_bn(dirac, self.identity)
            out["identity"] = fused.weight.detach(), fused.bias.detach()
        return out

    def to_conv(self) -> nn.Conv2d:
        """The one convolution that computes this block in eval mode (RepVGG's re-parameterization).

        Convolution is linear in its kernel: ``K1 * x + K2 * x = (K1 + K2) * x``. So the sum of the
        branches' outputs is the output of one convolution whose kernel is the sum of the branches'
        kernels and whose bias is the sum of their biases (:meth:`branch_kernels`).
        """
        kernels = self.branch_kernels()
        kernel = sum(k for k, _ in kernels.values())             # (out, in / groups, 3, 3)
        bias = sum(b for _, b in kernels.values())                # (out,)
        conv = nn.Conv2d(self.in_channels, self.out_channels, kernel.shape[-1], stride=self.stride,
                         padding=kernel.shape[-1] // 2, groups=self.groups, bias=True,
                         device=kernel.device, dtype=kernel.dtype)
        with torch.no_grad():
            conv.weight.copy_(kernel)
            conv.bias.copy_(bias)
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, groups={self.groups}, "
                f"branches={'+'.join(self.branches)}")


# ----------------------------------------------------------------------------------------------
# RepGhost: feature reuse by addition, which folds, instead of concatenation, which does not

class FeatureReuse(nn.Module):
    """A feature map and a cheap depthwise 3x3 copy of it, kept side by side or added.

    ``combine="concat"`` is the Ghost module's reuse (Han et al. 2020): ``cat([x, dw(x)])``, 2C
    channels. ``combine="add"`` is RepGhost's (Chen et al. 2022): ``x + dw(x)``, C channels, which
    folds into one depthwise convolution (its kernel plus a Dirac kernel; :func:`reparameterize`), so
    the reuse costs nothing at inference. Both have the same parameters (9C) and the same MACs (9C
    per pixel): a concatenation and an addition count as zero of either.
    """

    def __init__(self, channels: int, combine: str = "concat"):
        super().__init__()
        check_positive_int("channels", channels)
        if combine not in ("concat", "add"):
            raise ValueError(f"combine={combine!r} must be 'concat' (Ghost) or 'add' (RepGhost)")
        self.channels, self.combine = channels, combine
        self.cheap = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cheap(x)                                          # (B, C, H, W)
        if self.combine == "concat":
            return torch.cat([x, y], dim=1)                        # (B, 2C, H, W)
        return x + y                                               # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"{self.channels}, combine={self.combine!r}"


# ----------------------------------------------------------------------------------------------
# Whole models

def equivalent_conv(module: nn.Module) -> nn.Conv2d:
    """The one convolution that computes what ``module`` computes in eval mode.

    ``module`` is a :class:`RepVGGBlock`, a :class:`FeatureReuse` that adds, or an ``nn.Sequential``
    of a convolution and the BatchNorm that follows it. ``ValueError`` for anything else.
    """
    if isinstance(module, RepVGGBlock):
        return module.to_conv()
    if isinstance(module, FeatureReuse):
        if module.combine != "add":
            raise ValueError("FeatureReuse(combine='concat') keeps x and its copy side by side (2C "
                             "channels): RepGhost's folding into one C-channel convolution needs the "
                             "addition, combine='add'")
        cheap = module.cheap
        conv = nn.Conv2d(module.channels, module.channels, 3, padding=1, groups=module.channels,
                         bias=False, device=cheap.weight.device, dtype=cheap.weight.dtype)
        with torch.no_grad():                                      # x + dw(x) = (dw + identity)(x)
            conv.weight.copy_(cheap.weight + _dirac(module.channels, 3, module.channels, cheap.weight))
        return conv
    if isinstance(module, nn.Sequential) and len(module) == 2:
        return fuse_conv_bn(module[0], module[1])
    raise ValueError(f"{type(module).__name__} has no known equivalent convolution: give a RepVGGBlock, "
                     f"a FeatureReuse(combine='add') or nn.Sequential(conv, batchnorm)")


def _foldable(module: nn.Module) -> bool:
    return isinstance(module, RepVGGBlock) or (isinstance(module, FeatureReuse) and module.combine == "add")


def reparameterize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference, in which every :class:`RepVGGBlock` and every adding
    :class:`FeatureReuse` is its one equivalent convolution (:func:`equivalent_conv`).

    The copy is in eval mode and computes what ``model`` computes in eval mode, with fewer parameters
    and one convolution per block. ``model`` itself is not changed. A model built by
    :func:`lcnn_lab.models.create_model` keeps its ``.config``: the deployed copy is the same trained
    function, so the accuracy stored for the model is the copy's accuracy too.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"reparameterize needs an nn.Module, got {type(model).__name__}")
    deployed = copy.deepcopy(model)
    if _foldable(deployed):
        return equivalent_conv(deployed).eval()

    def swap(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if _foldable(child):
                setattr(parent, name, equivalent_conv(child))
            else:
                swap(child)

    swap(deployed)
    return deployed.eval()
