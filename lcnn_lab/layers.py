"""Convolution variants for lightweight CNNs, one small module each (long2024 §2.1-2.2, li2023 §6).

Every variant maps ``(B, c_in, H, W) -> (B, c_out, H, W)`` at stride 1 ("same" padding), so any of
them can replace a standard k x k convolution inside a network. All convolutions are bias-free:
in our models a BatchNorm follows, and its shift makes a conv bias redundant.

==============================  =======================================  ==========================
variant                         what it replaces a k x k conv with       cost vs. one k x k conv
==============================  =======================================  ==========================
``ConvKxK(groups=g)``           g independent convs on c/g channels      params, MACs: 1/g
``StackedConv3x3``              (k-1)/2 stacked 3 x 3 convs              5x5: 18/25, 7x7: 27/49
``FactorizedConv``              a 1 x k conv then a k x 1 conv           2/k
``DepthwiseSeparableConv``      depthwise k x k, then pointwise 1 x 1    1/c_out + 1/k^2
``Bottleneck1x1(reduction=r)``  1 x 1 reduce, k x k, 1 x 1 expand        1/r^2 + 2/(r k^2)
``GhostModule(ratio=s)``        k x k conv to c_out/s maps, cheap         about 1/s
                                depthwise ops make the rest
``AdderConv2d``                 -sum |x - w| over each window             no multiplications at all
==============================  =======================================  ==========================

(The ratios hold for c_in = c_out; :mod:`lcnn_lab.profile` has the exact formulas and the tests
check every one against fvcore.) ``make_conv`` picks a variant from plain arguments, so a model or
a widget can sweep kernel size x design x groups without knowing the classes.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .config import check_positive_int, is_positive_int

__all__ = [
    "KERNEL_SIZES", "DESIGNS", "GHOST_RATIOS",
    "ConvKxK", "StackedConv3x3", "FactorizedConv", "DepthwiseSeparableConv", "Bottleneck1x1",
    "GhostModule", "AdderConv2d", "channel_shuffle", "ChannelShuffle", "make_conv",
    "check_kernel_size", "check_design", "check_groups",
]

# Odd sizes only: an odd kernel has a centre pixel, so padding k // 2 keeps H x W unchanged.
KERNEL_SIZES = (1, 3, 5, 7, 9)
# design name -> what it means (make_conv's ``design`` argument)
DESIGNS = {
    "single": "one k x k convolution",
    "stacked": "(k-1)/2 stacked 3 x 3 convolutions with the receptive field of one k x k",
    "factorized": "a 1 x k convolution followed by a k x 1 convolution",
    "bottleneck": "1 x 1 reduce -> k x k -> 1 x 1 expand",
    # cheaper operations (long2024 §2.3): the ratio s of a Ghost module is part of the design's name
    "ghost2": "a Ghost module with ratio s=2: a k x k conv makes 1/2 of the maps, cheap 3 x 3 "
              "depthwise ops the rest",
    "ghost3": "a Ghost module with ratio s=3 (1/3 of the maps from the k x k conv)",
    "ghost4": "a Ghost module with ratio s=4 (1/4 of the maps from the k x k conv)",
    "adder": "an adder convolution: -sum |x - w| over each window instead of sum x * w",
}
GHOST_RATIOS = {"ghost2": 2, "ghost3": 3, "ghost4": 4}   # design name -> ratio s

NormLayer = Callable[[int], nn.Module]   # e.g. nn.BatchNorm2d: called with the channel count
ActLayer = Callable[[], nn.Module]       # e.g. nn.ReLU or nn.GELU: called with no arguments


# ----------------------------------------------------------------------------------------------
# Validation, in the learner's words

def check_kernel_size(k: int, design: str = "single") -> int:
    """Return ``k`` if it is a supported kernel size for ``design``, else raise ``ValueError``."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"kernel size k={k!r} must be an int, one of {', '.join(map(str, KERNEL_SIZES))}")
    if k % 2 == 0:
        raise ValueError(f"kernel size k={k} is even; it must be odd (one of "
                         f"{', '.join(map(str, KERNEL_SIZES))}) so the kernel has a centre pixel "
                         f"and padding k//2 keeps the feature map size")
    if k not in KERNEL_SIZES:
        raise ValueError(f"kernel size k={k} is not supported; choose one of "
                         f"{', '.join(map(str, KERNEL_SIZES))}")
    if design in ("stacked", "factorized") and k < 3:
        raise ValueError(f"design={design!r} needs kernel size k >= 3 (got k={k}): it replaces one "
                         f"k x k convolution by smaller ones, and a 1 x 1 has nothing to replace")
    return k


def check_design(design: str) -> str:
    """Return ``design`` if it names a variant in :data:`DESIGNS`, else raise ``ValueError``."""
    if design not in DESIGNS:
        raise ValueError(f"design={design!r} is unknown; choose one of "
                         f"{', '.join(repr(d) for d in DESIGNS)}")
    return design


def check_groups(groups: int, c_in: int, c_out: int) -> int:
    """Return ``groups`` if it splits both channel counts evenly, else raise ``ValueError``."""
    check_positive_int("groups", groups, "(or 'depthwise' in make_conv)")
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide in_channels={c_in} and out_channels={c_out}: "
                         f"each group convolves c_in/groups input channels into c_out/groups "
                         f"output channels")
    return groups


def _check_channels(c_in: int, c_out: int) -> None:
    for name, c in (("in_channels", c_in), ("out_channels", c_out)):
        check_positive_int(name, c)


def _between(c: int, norm_layer: NormLayer | None, act_layer: ActLayer | None) -> list[nn.Module]:
    """The optional norm and activation placed *between* the layers of a multi-layer variant."""
    layers = []
    if norm_layer is not None:
        layers.append(norm_layer(c))
    if act_layer is not None:
        layers.append(act_layer())
    return layers


# ----------------------------------------------------------------------------------------------
# Standard and group convolution

class ConvKxK(nn.Conv2d):
    """A standard k x k convolution with "same" padding and no bias; ``groups=g`` makes it a group conv.

    With ``groups=g`` each of the g groups sees only c_in/g input channels, so the layer has 1/g of
    the parameters and MACs of the standard one (group convolution, Krizhevsky et al. 2012, AlexNet;
    long2024 §2.2). ``groups = c_in = c_out`` is a depthwise convolution.
    """

    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 1, stride: int = 1):
        _check_channels(c_in, c_out)
        check_kernel_size(k)
        check_groups(groups, c_in, c_out)
        check_positive_int("stride", stride)
        super().__init__(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=False)


# ----------------------------------------------------------------------------------------------
# Smaller kernels instead of a large one (long2024 §2.1)

class StackedConv3x3(nn.Sequential):
    """(k-1)/2 stacked 3 x 3 convolutions: the receptive field of one k x k with fewer weights.

    Each stride-1 3 x 3 layer widens the receptive field by 2, so n layers see 2n+1 pixels. With
    c_in = c_out = c, two 3 x 3 cost 2*9*c^2 = 18c^2 against 25c^2 for one 5 x 5 (28 % fewer), three
    cost 27c^2 against 49c^2 for a 7 x 7 (45 % fewer): Szegedy et al. 2016 (Inception-v3), Simonyan &
    Zisserman 2015 (VGG); long2024 §2.1. The first layer maps c_in -> c_out, the others c_out -> c_out.

    Without ``norm_layer``/``act_layer`` the stack is linear (exactly a constrained k x k conv); with
    them, a norm and activation sit between the layers (not after the last, which the model adds).
    """

    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 1,
                 norm_layer: NormLayer | None = None, act_layer: ActLayer | None = None):
        _check_channels(c_in, c_out)
        check_kernel_size(k, "stacked")
        check_groups(groups, c_in, c_out)
        layers: list[nn.Module] = []
        for i in range((k - 1) // 2):
            if i > 0:
                layers += _between(c_out, norm_layer, act_layer)
            layers.append(ConvKxK(c_in if i == 0 else c_out, c_out, 3, groups=groups))
        super().__init__(*layers)


class FactorizedConv(nn.Sequential):
    """A 1 x k convolution (c_in -> c_out) followed by a k x 1 convolution (c_out -> c_out).

    Together they see a k x k window, but with c_in = c_out = c they cost 2*k*c^2 instead of k^2*c^2,
    i.e. 2/k of the k x k conv (Peng et al. 2017, "Large kernel matters"; Szegedy et al. 2016;
    long2024 §2.1). Optional norm/activation between the two.
    """

    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 1,
                 norm_layer: NormLayer | None = None, act_layer: ActLayer | None = None):
        _check_channels(c_in, c_out)
        check_kernel_size(k, "factorized")
        check_groups(groups, c_in, c_out)
        super().__init__(
            nn.Conv2d(c_in, c_out, (1, k), padding=(0, k // 2), groups=groups, bias=False),  # 1 x k
            *_between(c_out, norm_layer, act_layer),
            nn.Conv2d(c_out, c_out, (k, 1), padding=(k // 2, 0), groups=groups, bias=False),  # k x 1
        )


# ----------------------------------------------------------------------------------------------
# Cheaper convolution structures (long2024 §2.2)

class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise k x k convolution (one filter per input channel) then pointwise 1 x 1 (channel mixer).

    MobileNet's building block (Howard et al. 2017; long2024 §2.2, li2023 §6). Per output pixel the
    depthwise part costs k^2*c_in MACs and the pointwise part c_in*c_out, against k^2*c_in*c_out for a
    standard conv, a ratio of exactly 1/c_out + 1/k^2. The survey quotes "1/k^2": the 1/c_out term is
    small for wide layers, but not for the narrow ones of a CIFAR network.
    """

    def __init__(self, c_in: int, c_out: int, k: int,
                 norm_layer: NormLayer | None = None, act_layer: ActLayer | None = None):
        _check_channels(c_in, c_out)
        check_kernel_size(k)
        super().__init__(
            ConvKxK(c_in, c_in, k, groups=c_in),          # depthwise: spatial filtering per channel
            *_between(c_in, norm_layer, act_layer),
            ConvKxK(c_in, c_out, 1),                      # pointwise: mixes the channels
        )


class Bottleneck1x1(nn.Sequential):
    """1 x 1 reduce -> k x k -> 1 x 1 expand: the "1 x 1 kernel" trick of GoogLeNet and ResNet.

    The k x k convolution runs on only ``c_out // reduction`` channels; the two 1 x 1 convolutions
    change the channel count without touching the spatial size (Szegedy et al. 2015; He et al. 2016;
    long2024 §2.1). ``groups`` applies to the middle k x k (as in ResNeXt). Unlike ResNet's block this
    has no residual connection: it is a drop-in replacement for one convolution.
    """

    def __init__(self, c_in: int, c_out: int, k: int, reduction: int = 4, groups: int = 1,
                 norm_layer: NormLayer | None = None, act_layer: ActLayer | None = None):
        _check_channels(c_in, c_out)
        check_kernel_size(k, "bottleneck")
        check_positive_int("reduction", reduction)
        mid = c_out // reduction
        if mid < 1:
            raise ValueError(f"reduction={reduction} leaves no channels for the bottleneck: "
                             f"out_channels={c_out} // reduction={reduction} = 0")
        if not is_positive_int(groups) or mid % groups:
            raise ValueError(f"groups={groups!r} must divide the bottleneck width {mid} "
                             f"(out_channels={c_out} // reduction={reduction}), because the grouped "
                             f"k x k conv runs on those channels")
        self.mid_channels = mid
        super().__init__(
            ConvKxK(c_in, mid, 1),                        # reduce
            *_between(mid, norm_layer, act_layer),
            ConvKxK(mid, mid, k, groups=groups),          # spatial, on few channels
            *_between(mid, norm_layer, act_layer),
            ConvKxK(mid, c_out, 1),                       # expand
        )


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups so the next group conv sees every group.

    ShuffleNet (Zhang et al. 2018; long2024 §2.2, li2023 §6): with channels [a1 a2 b1 b2] from two
    groups, the result is [a1 b1 a2 b2]. It is a fixed permutation: no parameters, no MACs.
    """
    batch, channels, height, width = x.size()
    if not is_positive_int(groups) or channels % groups:
        raise ValueError(f"groups={groups!r} must be a positive int dividing the {channels} channels")
    # -1 (= C/g) rather than channels // groups: a traced model then records no shape arithmetic
    x = x.view(batch, groups, -1, height, width)                   # (B, g, C/g, H, W)
    x = torch.transpose(x, 1, 2).contiguous()                      # (B, C/g, g, H, W)
    return x.view(batch, channels, height, width)                  # (B, C, H, W), interleaved


class ChannelShuffle(nn.Module):
    """:func:`channel_shuffle` as a module, to place after a group convolution (Zhang et al. 2018)."""

    def __init__(self, groups: int):
        super().__init__()
        check_positive_int("groups", groups)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


# ----------------------------------------------------------------------------------------------
# Cheaper operations (long2024 §2.3)

class GhostModule(nn.Module):
    """A k x k convolution makes ``ceil(c_out / ratio)`` "intrinsic" maps; cheap depthwise
    ``dw_kernel x dw_kernel`` convolutions make ``ratio - 1`` "ghost" maps from each (GhostNet, Han et
    al. 2020; long2024 §2.3, li2023 §6).

    With m = ceil(c_out / s) intrinsic maps, the module costs k^2*c_in*m + d^2*(s-1)*m weights, against
    k^2*c_in*c_out for the convolution it replaces: about 1/s when c_in*k^2 >> d^2 (the paper's
    speed-up ratio r_s ~ s). The two parts are concatenated and cut to ``c_out`` maps (when s does not
    divide c_out, the last ghost maps are computed and dropped, as in GhostNet's code).

    As in the paper's equations (Y' = X * f', then y_ij = Phi_ij(y'_i)) both parts are linear;
    GhostNet's released code adds BN + ReLU after each part. With ``norm_layer``/``act_layer`` the
    cheap operation sees normalised, activated intrinsic maps (the norm and activation that follow the
    whole module are the model's, as for every variant here).
    """

    def __init__(self, c_in: int, c_out: int, k: int = 1, ratio: int = 2, dw_kernel: int = 3,
                 norm_layer: NormLayer | None = None, act_layer: ActLayer | None = None):
        super().__init__()
        _check_channels(c_in, c_out)
        check_kernel_size(k)
        if not is_positive_int(ratio) or ratio < 2:
            raise ValueError(f"ratio={ratio!r} must be an int >= 2: a Ghost module makes 1/ratio of its "
                             f"maps with the full convolution and the rest with cheap operations")
        check_kernel_size(dw_kernel)
        self.c_out, self.ratio = c_out, ratio
        self.intrinsic_channels = m = -(-c_out // ratio)         # ceil(c_out / ratio)
        self.primary = ConvKxK(c_in, m, k)                        # the expensive part, few maps
        self.cheap = nn.Sequential(                               # one depthwise filter per ghost map
            *_between(m, norm_layer, act_layer),
            nn.Conv2d(m, m * (ratio - 1), dw_kernel, padding=dw_kernel // 2, groups=m, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary(x)                                # (B, m, H, W)
        ghosts = self.cheap(intrinsic)                             # (B, m*(s-1), H, W)
        return torch.cat([intrinsic, ghosts], dim=1)[:, :self.c_out]  # (B, c_out, H, W)


class _AdderKernels:
    """The two loops an adder layer needs, fused by ``torch.compile`` when this machine can compile.

    ``distance(X, W)[b, l, o] = sum_j |X[b, l, j] - W[o, j]|`` and ``grad_x(G, W, X)[b, l, j] =
    sum_o G[b, l, o] * clamp(W[o, j] - X[b, l, j], -1, 1)``. Written with broadcasting, each would
    materialise a (B, L, c_out, c_in*k*k) tensor, gigabytes for one batch; compiled, each becomes one
    loop over that index space without storing it (measured ~0.07 s and ~0.2 s for 0.6 G operations on
    one core, against ~14 s each written eagerly in chunks). Without a working compiler (a Windows
    laptop, say) ``torch.cdist`` computes the distance and ``grad_x`` runs in chunks: slow, same numbers.
    """
    compiled: bool | None = None     # None: not tried yet
    _distance = _grad_x = None

    @staticmethod
    def _distance_eager(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        return torch.cdist(X, W.unsqueeze(0).expand(X.shape[0], -1, -1), p=1)

    @staticmethod
    def _grad_x_eager(G: torch.Tensor, W: torch.Tensor, X: torch.Tensor, chunk: int = 1 << 24
                      ) -> torch.Tensor:
        rows = X.reshape(-1, X.shape[-1])                         # (B*L, J)
        g = G.reshape(-1, G.shape[-1])                             # (B*L, O)
        step = max(1, chunk // (W.numel()))
        out = torch.empty_like(rows)
        for i in range(0, rows.shape[0], step):
            d = (W.unsqueeze(0) - rows[i:i + step].unsqueeze(1)).clamp_(-1, 1)   # (n, O, J)
            out[i:i + step] = torch.einsum("no,noj->nj", g[i:i + step], d)
        return out.view_as(X)

    @staticmethod
    def _distance_fused(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        return (X.unsqueeze(2) - W.unsqueeze(0).unsqueeze(0)).abs().sum(-1)

    @staticmethod
    def _grad_x_fused(G: torch.Tensor, W: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        return (G.unsqueeze(-1) * (W.unsqueeze(0).unsqueeze(0) - X.unsqueeze(2)).clamp(-1, 1)).sum(2)

    @classmethod
    def _run(cls, name: str, *args: torch.Tensor) -> torch.Tensor:
        if cls.compiled is None:
            cls.compiled = False
            try:
                cls._distance = torch.compile(cls._distance_fused, dynamic=True)
                cls._grad_x = torch.compile(cls._grad_x_fused, dynamic=True)
                cls.compiled = True
            except Exception:   # no torch.compile support here: the eager versions below
                pass
        if cls.compiled:
            try:
                return getattr(cls, name)(*args)
            except Exception as err:   # typically no C++ compiler: say so once, then go on eagerly
                import warnings
                warnings.warn(f"torch.compile could not build the adder kernels ({type(err).__name__}); "
                              f"falling back to slow eager code", RuntimeWarning, stacklevel=3)
                cls.compiled = False
        return getattr(cls, name + "_eager")(*args)

    @classmethod
    def distance(cls, X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        return cls._run("_distance", X, W)

    @classmethod
    def grad_x(cls, G: torch.Tensor, W: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        return cls._run("_grad_x", G, W, X)


class _AdderFunction(torch.autograd.Function):
    """Y = -sum_j |X_j - W_j| with AdderNet's gradients (Chen et al. 2020, eqs. 5, 7 and 12).

    X: (B, L, J) unfolded input windows, W: (O, J) flattened filters; returns (B, L, O).
    * dY/dW = X - W, the full-precision gradient, instead of the exact sign(X - W);
    * dY/dX = HardTanh(W - X) = clamp(W - X, -1, 1), instead of sign(W - X);
    * the filter gradient is rescaled to norm eta * sqrt(W.numel()): the adaptive learning rate that
      gives every adder layer steps of the same size, whatever its gradients' magnitude.
    """

    @staticmethod
    def forward(ctx, X: torch.Tensor, W: torch.Tensor, eta: float) -> torch.Tensor:
        ctx.save_for_backward(X, W)
        ctx.eta = eta
        return -_AdderKernels.distance(X, W)

    @staticmethod
    def backward(ctx, G: torch.Tensor):
        X, W = ctx.saved_tensors
        G = G.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _AdderKernels.grad_x(G, W, X)
        if ctx.needs_input_grad[1]:
            # sum_{b,l} G[b,l,o] * (X[b,l,j] - W[o,j]): a matrix product minus a rank-one correction
            g2, x2 = G.reshape(-1, G.shape[-1]), X.reshape(-1, X.shape[-1])
            grad_w = g2.t() @ x2 - W * g2.sum(0).unsqueeze(1)
            if ctx.eta is not None:
                grad_w = grad_w * (ctx.eta * math.sqrt(W.numel()) / grad_w.norm().clamp(min=1e-12))
        return grad_x, grad_w, None


class AdderConv2d(nn.Module):
    """An adder layer: each output is minus the L1 distance between a filter and an input window.

    ``Y[b, o, y, x] = -sum_{c, i, j} |X[b, c, y+i, x+j] - W[o, c, i, j]|`` (AdderNet, Chen et al. 2020;
    long2024 §2.3): the multiplications of a convolution become subtractions, absolute values and
    additions. Arguments and ``.weight`` shape are those of ``nn.Conv2d`` (no groups, no bias: a
    BatchNorm follows). Training uses the paper's gradients and adaptive learning rate (see
    :class:`_AdderFunction`; ``eta=None`` turns the rescaling off, ``eta=0.2`` is the official code's).

    fvcore cannot count this layer: it appears in ``count_macs(...).uncounted`` as ``aten::cdist``,
    and :func:`lcnn_lab.profile.count_adder_ops` counts its operations instead.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, eta: float | None = 0.2):
        super().__init__()
        _check_channels(in_channels, out_channels)
        check_positive_int("kernel_size", kernel_size)
        check_positive_int("stride", stride)
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding={padding!r} must be an int >= 0")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.eta = kernel_size, stride, padding, eta
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))   # nn.Conv2d's default initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        k, s, p = self.kernel_size, self.stride, self.padding
        if not (s == 1 and 2 * p == k - 1):   # "same" padding needs no arithmetic (none for fvcore to see)
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        windows = nn.functional.unfold(x, k, padding=p, stride=s).transpose(1, 2)   # (B, L, c_in*k*k)
        filters = self.weight.flatten(1)                                             # (c_out, c_in*k*k)
        if torch.jit.is_tracing():        # a traceable op, so that fvcore sees (and reports) it
            y = -torch.cdist(windows, filters.unsqueeze(0).expand(b, -1, -1), p=1)
        elif torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            y = _AdderFunction.apply(windows.contiguous(), filters, self.eta)
        else:
            y = -_AdderKernels.distance(windows.contiguous(), filters)
        return y.transpose(1, 2).reshape(b, self.out_channels, h, w)                 # (B, c_out, H', W')

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, eta={self.eta}")


# ----------------------------------------------------------------------------------------------
# Factory

def make_conv(c_in: int, c_out: int, k: int, design: str = "single", groups: int | str = 1,
              shuffle: bool = False, norm_layer: NormLayer | None = None,
              act_layer: ActLayer | None = None) -> nn.Module:
    """Build the convolution variant named by ``design`` and ``groups`` (long2024 §2.1-2.2).

    Args:
        c_in, c_out: input and output channels.
        k: kernel size, one of :data:`KERNEL_SIZES`; "stacked" and "factorized" need k >= 3.
        design: one of :data:`DESIGNS` ("single", "stacked", "factorized", "bottleneck", "ghost2",
            "ghost3", "ghost4", "adder"); the last four take no groups or shuffle.
        groups: an int g (group convolution, g must divide c_in and c_out) or ``"depthwise"``
            (a :class:`DepthwiseSeparableConv`, only with design "single").
        shuffle: append a :class:`ChannelShuffle` so information crosses groups (needs int groups > 1,
            and a design whose last layer is grouped: not "bottleneck").
        norm_layer, act_layer: placed *between* the layers of a multi-layer variant, never after the
            last one (the caller adds those); a single convolution ignores them.
    """
    check_design(design)
    check_kernel_size(k, design)
    if groups == "depthwise":
        if design != "single":
            raise ValueError(f"groups='depthwise' needs design='single' (got design={design!r}): "
                             f"a depthwise-separable conv already splits the k x k conv into a "
                             f"depthwise and a pointwise part")
        if shuffle:
            raise ValueError("channel shuffle needs int groups > 1; with groups='depthwise' the "
                             "pointwise 1 x 1 conv already mixes all channels")
        return DepthwiseSeparableConv(c_in, c_out, k, norm_layer=norm_layer, act_layer=act_layer)
    if isinstance(groups, str):
        raise ValueError(f"groups={groups!r} must be a positive int or 'depthwise'")
    if design in GHOST_RATIOS or design == "adder":
        if groups != 1 or shuffle:
            raise ValueError(f"design={design!r} takes no groups or shuffle (got groups={groups!r}, "
                             f"shuffle={shuffle}): it replaces the whole convolution by cheaper operations")
        if design == "adder":
            return AdderConv2d(c_in, c_out, k, padding=k // 2)
        return GhostModule(c_in, c_out, k, ratio=GHOST_RATIOS[design], norm_layer=norm_layer,
                           act_layer=act_layer)
    if shuffle and groups == 1:
        raise ValueError("channel shuffle needs groups > 1: with groups=1 every output channel already "
                         "sees every input channel, so shuffling would only permute them")
    if shuffle and design == "bottleneck":
        raise ValueError("channel shuffle does nothing useful after design='bottleneck': its last "
                         "1 x 1 conv is dense and already mixes the groups of the middle k x k conv")

    if design == "single":
        conv: nn.Module = ConvKxK(c_in, c_out, k, groups=groups)
    elif design == "stacked":
        conv = StackedConv3x3(c_in, c_out, k, groups=groups, norm_layer=norm_layer, act_layer=act_layer)
    elif design == "factorized":
        conv = FactorizedConv(c_in, c_out, k, groups=groups, norm_layer=norm_layer, act_layer=act_layer)
    else:  # "bottleneck"
        conv = Bottleneck1x1(c_in, c_out, k, groups=groups, norm_layer=norm_layer, act_layer=act_layer)
    if shuffle:
        return nn.Sequential(conv, ChannelShuffle(groups))  # groups already divides c_out
    return conv
