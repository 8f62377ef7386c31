"""Lightweight model families at CIFAR size, each built from :mod:`lcnn_lab.layers` (li2023 §6, Table 4).

Chapters 01-03 measured single layers; these are whole networks made of them, one per family the
surveys walk through, small enough to train on a 2-core CPU under the book's budgets. Each keeps its
family's defining block and knobs, and states its architecture as a table in torchvision's manner:

=======================  ==================================================  ===============================
name                     defining block                                      knobs
=======================  ==================================================  ===============================
``squeezenet_cifar``     fire module: 1x1 squeeze, then 1x1 and 3x3 expand   width, bypass
``mobilenet_v1_cifar``   depthwise-separable convolution                     width (alpha), resolution (rho)
``mobilenet_v2_cifar``   inverted residual with a linear bottleneck          width
``shufflenet_v2_cifar``  channel split, dense 1x1s, concat, channel shuffle  width
``mobilenet_v3_cifar``   inverted residual + squeeze-excite, hard-swish      width
``ghostnet_cifar``       Ghost bottleneck (two Ghost modules)                width
=======================  ==================================================  ===============================

What changes from the ImageNet originals, and why: the input is 32 x 32, so the stem keeps stride 1
and there are three stride-2 stages instead of five (the last feature map is 4 x 4, as in cifar_net);
stages are shorter and the last 1 x 1 layers narrower, so that a quick-budget epoch (50,000 images)
takes one to a few minutes on 2 CPU cores, not hours;
SqueezeNet gets BatchNorm (the 2016 network had none; the book's one trainer needs it). Every width is
multiplied by ``width`` and rounded to a multiple of 8, as MobileNet's code does.

:func:`mobilenet_v1_imagenet` builds MobileNetV1 at ImageNet size from the paper's Table 1, because
torchvision (whose constructors give the other families' ImageNet counts, :mod:`lcnn_lab.imagenet`)
has no MobileNetV1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .layers import ChannelShuffle, ConvKxK, DepthwiseSeparableConv, GhostModule
from .models import NUM_CLASSES, NetConfig, _round_width, register

__all__ = ["FamilyConfig", "SqueezeNetConfig", "MobileNetV1Config", "MobileNetV2Config",
           "ShuffleNetV2Config", "MobileNetV3Config", "GhostNetConfig", "FAMILIES",
           "SqueezeNetCifar", "MobileNetV1Cifar", "MobileNetV2Cifar", "ShuffleNetV2Cifar",
           "MobileNetV3Cifar", "GhostNetCifar", "mobilenet_v1_imagenet", "FireModule",
           "InvertedResidual", "ShuffleUnit", "SqueezeExcite", "GhostBottleneck", "GUIDELINES",
           "guideline_models", "conv_shares"]

CIFAR_SIZE = 32


# ----------------------------------------------------------------------------------------------
# Configs: one frozen dataclass per family; its fields are the knobs that key the results store

def _check_width(name: str, width: Any) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 4:
        raise ValueError(f"{name} knob width={width!r} must be a number in (0, 4]: the width multiplier "
                         f"alpha multiplies every layer's channel count (1.0 = the table's widths)")
    return float(width)


@dataclass(frozen=True)
class FamilyConfig(NetConfig):
    """Base of the family configs: a width multiplier (alpha in MobileNet's words)."""
    width: float = 1.0       # width multiplier: every channel count x this, rounded to a multiple of 8

    def __post_init__(self):
        object.__setattr__(self, "width", _check_width(self.name, self.width))  # 1 and 1.0: one key

    def ch(self, c: int) -> int:
        """A table's channel count after the width multiplier."""
        return _round_width(c * self.width)


@dataclass(frozen=True)
class SqueezeNetConfig(FamilyConfig):
    """Knobs of ``squeezenet_cifar`` (Iandola et al. 2016)."""
    name: ClassVar[str] = "squeezenet_cifar"
    bypass: bool = False     # the paper's "simple bypass": identity shortcuts around fire modules
                             # whose input and output widths match

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.bypass, bool):
            raise ValueError(f"squeezenet_cifar knob bypass={self.bypass!r} must be True or False")


@dataclass(frozen=True)
class MobileNetV1Config(FamilyConfig):
    """Knobs of ``mobilenet_v1_cifar`` (Howard et al. 2017): width alpha and resolution rho."""
    name: ClassVar[str] = "mobilenet_v1_cifar"
    resolution: float = 1.0  # resolution multiplier rho: the 32 x 32 image is resampled to round(32 rho)

    def __post_init__(self):
        super().__post_init__()
        r = self.resolution
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
            raise ValueError(f"mobilenet_v1_cifar knob resolution={r!r} must be a number in (0, 1]: the "
                             f"resolution multiplier rho shrinks the 32 x 32 input to round(32 rho) pixels")
        if round(CIFAR_SIZE * r) < 8:
            raise ValueError(f"mobilenet_v1_cifar knob resolution={r!r} gives a {round(CIFAR_SIZE * r)} x "
                             f"{round(CIFAR_SIZE * r)} input; three stride-2 stages need at least 8 x 8 "
                             f"(resolution >= 0.25)")
        object.__setattr__(self, "resolution", float(r))

    @property
    def input_size(self) -> int:
        """Side of the image the network actually sees: round(32 rho)."""
        return round(CIFAR_SIZE * self.resolution)


@dataclass(frozen=True)
class MobileNetV2Config(FamilyConfig):
    """Knobs of ``mobilenet_v2_cifar`` (Sandler et al. 2018)."""
    name: ClassVar[str] = "mobilenet_v2_cifar"


@dataclass(frozen=True)
class ShuffleNetV2Config(FamilyConfig):
    """Knobs of ``shufflenet_v2_cifar`` (Ma et al. 2018)."""
    name: ClassVar[str] = "shufflenet_v2_cifar"


@dataclass(frozen=True)
class MobileNetV3Config(FamilyConfig):
    """Knobs of ``mobilenet_v3_cifar`` (Howard et al. 2019)."""
    name: ClassVar[str] = "mobilenet_v3_cifar"


@dataclass(frozen=True)
class GhostNetConfig(FamilyConfig):
    """Knobs of ``ghostnet_cifar`` (Han et al. 2020)."""
    name: ClassVar[str] = "ghostnet_cifar"


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
             act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """conv k x k -> BN -> activation (none when ``act`` is None): the unit every family stacks."""
    layers: list[nn.Module] = [ConvKxK(c_in, c_out, k, groups=groups, stride=stride), nn.BatchNorm2d(c_out)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _Head(nn.Module):
    """Global average pool -> linear: the classifier of every family but SqueezeNet."""

    def __init__(self, c_in: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))   # (B, C, H, W) -> (B, 10)


# ----------------------------------------------------------------------------------------------
# SqueezeNet: fire modules (Iandola et al. 2016; li2023 §6, Table 4)

class FireModule(nn.Module):
    """Squeeze with 1 x 1 convs to ``s`` channels, then expand with ``e/2`` 1 x 1 and ``e/2`` 3 x 3 convs,
    concatenated (Iandola et al. 2016). The squeeze layer is the paper's "reducing the number of input
    channels for 3x3 convolution", the 1 x 1 expand filters its "1x1 convolution instead of 3x3"."""

    def __init__(self, c_in: int, squeeze: int, expand: int, bypass: bool = False):
        super().__init__()
        if expand % 2:
            raise ValueError(f"a fire module's expand width {expand} must be even: half 1x1, half 3x3")
        self.squeeze = _conv_bn(c_in, squeeze, 1)
        self.expand1x1 = _conv_bn(squeeze, expand // 2, 1)
        self.expand3x3 = _conv_bn(squeeze, expand // 2, 3)
        self.bypass = bypass and c_in == expand       # a simple bypass needs equal widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)                                              # (B, s, H, W)
        y = torch.cat([self.expand1x1(s), self.expand3x3(s)], dim=1)     # (B, e, H, W)
        return y + x if self.bypass else y


class SqueezeNetCifar(nn.Module):
    """SqueezeNet for CIFAR-10: fire modules between max-pools, a 1 x 1 conv classifier, no linear layer.

    ========  ==============================================  ===============
    stage     layers (# squeeze s, expand e, n)               output H x W
    ========  ==============================================  ===============
    stem      conv 3x3, 32 -> max-pool 2                      16 x 16
    fire 1-2  (16, 64, 2) -> max-pool 2                       8 x 8
    fire 3-4  (32, 128, 2) -> max-pool 2                      4 x 4
    fire 5-6  (48, 192, 1), (64, 256, 1)                      4 x 4
    head      conv 1x1 -> 10, global average pool             1 x 1
    ========  ==============================================  ===============

    ``bypass=True`` adds the paper's simple bypass: an identity shortcut around each fire module whose
    input and output widths are equal (the second of each pair), as around fire 3, 5, 7, 9 in the paper.
    """
    # s, e, n, pool after the stage
    TABLE = ((16, 64, 2, True), (32, 128, 2, True), (48, 192, 1, False), (64, 256, 1, False))

    def __init__(self, config: SqueezeNetConfig = SqueezeNetConfig()):
        super().__init__()
        self.config = cfg = config
        c = cfg.ch(32)
        layers: list[nn.Module] = [_conv_bn(3, c, 3), nn.MaxPool2d(2)]
        for s, e, n, pool in self.TABLE:
            for _ in range(n):
                layers.append(FireModule(c, cfg.ch(s), cfg.ch(e), bypass=cfg.bypass))
                c = cfg.ch(e)
            if pool:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(c, NUM_CLASSES, 1)     # SqueezeNet has no fully connected layer
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)                              # (B, c, 4, 4)
        return self.pool(self.classifier(x)).flatten(1)   # (B, 10)


# ----------------------------------------------------------------------------------------------
# MobileNetV1: depthwise-separable convolutions, width alpha and resolution rho (Howard et al. 2017)

# c, n, s: output channels, repeats, stride of the first repeat (depthwise-separable blocks)
MOBILENET_V1_CIFAR = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2))
# The paper's Table 1 (ImageNet, 224 x 224, stem stride 2): 13 depthwise-separable blocks
MOBILENET_V1_IMAGENET = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2))


class MobileNetV1Cifar(nn.Module):
    """MobileNetV1: a 3 x 3 stem, then depthwise-separable blocks, each dw 3x3 -> BN -> ReLU -> pw 1x1
    -> BN -> ReLU (Howard et al. 2017; li2023 §6, Table 4: "Two hyperparameters, α and ρ").

    ======  =============================================  ======================
    part    layers (# c, n, s: MOBILENET_V1_CIFAR)         output H x W (rho = 1)
    ======  =============================================  ======================
    resize  area resize to round(32 rho) pixels (rho < 1)  32 x 32
    stem    conv 3x3, 32 channels, stride 1                32 x 32
    blocks  (64, 1, 1)                                     32 x 32
    blocks  (128, 2, 2)                                    16 x 16
    blocks  (256, 2, 2)                                    8 x 8
    blocks  (512, 2, 2)                                    4 x 4
    head    global average pool -> linear (512 -> 10)      1 x 1
    ======  =============================================  ======================

    The width multiplier alpha multiplies every width; the resolution multiplier rho resamples the
    input to round(32 rho) pixels with an area (average-pool) resize, so the whole network runs on a
    smaller image: MACs fall about as alpha^2 rho^2. With ``table=MOBILENET_V1_IMAGENET``,
    ``stem_stride=2`` and 1000 classes it is the paper's ImageNet network (:func:`mobilenet_v1_imagenet`).
    """

    def __init__(self, config: MobileNetV1Config = MobileNetV1Config(), table=MOBILENET_V1_CIFAR,
                 stem_stride: int = 1, num_classes: int = NUM_CLASSES, divisor: int = 8):
        super().__init__()
        self.config = cfg = config
        ch = (lambda c: _round_width(c * cfg.width, divisor))
        # rho < 1: an area resize, which fvcore counts as the pooling it is (no MACs)
        self.resize = nn.AdaptiveAvgPool2d(cfg.input_size) if cfg.resolution < 1 else nn.Identity()
        c = ch(32)
        layers: list[nn.Module] = [_conv_bn(3, c, 3, stride=stem_stride)]
        for c_out, n, s in table:
            for i in range(n):
                layers.append(self._block(c, ch(c_out), s if i == 0 else 1))
                c = ch(c_out)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    @staticmethod
    def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        if stride == 1:   # the package's layer, with BN + ReLU between its two convs
            return nn.Sequential(DepthwiseSeparableConv(c_in, c_out, 3, norm_layer=nn.BatchNorm2d,
                                                        act_layer=nn.ReLU),
                                 nn.BatchNorm2d(c_out), nn.ReLU())
        # the stride-2 version: DepthwiseSeparableConv keeps H x W, so its two convs are spelled out
        return nn.Sequential(_conv_bn(c_in, c_in, 3, stride, groups=c_in), _conv_bn(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resize(x)                       # (B, 3, 32 rho, 32 rho)
        x = self.features(x)                     # (B, 512 alpha, 4, 4) on CIFAR
        return self.fc(self.pool(x).flatten(1))  # (B, classes)


def mobilenet_v1_imagenet(width: float = 1.0, resolution: float = 1.0) -> MobileNetV1Cifar:
    """MobileNetV1 at ImageNet size, from the paper's Table 1 (stem stride 2, 13 blocks, 1000 classes).

    Feed it ``round(224 * resolution)`` pixels; widths are alpha x the table's, not rounded to 8 (the
    paper's 0.25, 0.5 and 0.75 give whole numbers). The paper's own counts for 1.0 MobileNet-224:
    569 million mult-adds and 4.2 million parameters (Howard et al. 2017, Table 8)."""
    cfg = MobileNetV1Config(width=width)     # resolution is the input the caller feeds, not a resize
    return MobileNetV1Cifar(cfg, MOBILENET_V1_IMAGENET, stem_stride=2, num_classes=1000, divisor=1)


# ----------------------------------------------------------------------------------------------
# MobileNetV2: inverted residuals with linear bottlenecks (Sandler et al. 2018)

class InvertedResidual(nn.Module):
    """1x1 expand (x t) -> BN -> ReLU6 -> dw 3x3 (stride s) -> BN -> ReLU6 -> [SE] -> 1x1 project -> BN,
    with no activation after the projection (the "linear bottleneck") and a residual connection
    when the shape allows (Sandler et al. 2018). ``se`` and ``act`` make it MobileNetV3's block."""

    def __init__(self, c_in: int, c_out: int, expand: int, stride: int, k: int = 3, se: bool = False,
                 act: type[nn.Module] = nn.ReLU6):
        super().__init__()
        layers: list[nn.Module] = []
        if expand != c_in:
            layers.append(_conv_bn(c_in, expand, 1, act=act))
        layers.append(_conv_bn(expand, expand, k, stride, groups=expand, act=act))
        if se:
            layers.append(SqueezeExcite(expand))
        layers.append(_conv_bn(expand, c_out, 1, act=None))    # linear: no activation
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 for CIFAR-10 (Sandler et al. 2018; li2023 §6, Table 4: "Linear bottleneck structure").

    Stem conv 3x3 to 32 channels (stride 1), then inverted residual blocks, a 1x1 conv to 320 channels
    (not scaled down for width < 1, as in the paper), global average pool and a linear layer.
    """
    # t, c, n, s  (expansion, output channels, repeats, stride of the first)
    TABLE = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1))
    LAST = 320

    def __init__(self, config: MobileNetV2Config = MobileNetV2Config()):
        super().__init__()
        self.config = cfg = config
        c = cfg.ch(32)
        layers: list[nn.Module] = [_conv_bn(3, c, 3, act=nn.ReLU6)]
        for t, c_out, n, s in self.TABLE:
            for i in range(n):
                layers.append(InvertedResidual(c, cfg.ch(c_out), c * t, s if i == 0 else 1))
                c = cfg.ch(c_out)
        last = max(self.LAST, cfg.ch(self.LAST))
        layers.append(_conv_bn(c, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.head = _Head(last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))       # (B, 3, 32, 32) -> (B, 320, 4, 4) -> (B, 10)


# ----------------------------------------------------------------------------------------------
# ShuffleNetV2: channel split, dense 1x1s, concatenation, channel shuffle (Ma et al. 2018)

class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit (Ma et al. 2018, Fig. 3c/d). Stride 1: split the channels in two halves, pass
    one through untouched and the other through 1x1 -> dw 3x3 -> 1x1 (equal widths: guideline G1, dense
    1x1s: G2), concatenate (no add: G4) and shuffle the two halves together. Stride 2: no split; both
    branches see the whole input and halve the resolution, so the width doubles."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"a ShuffleNetV2 unit's width {c_out} must be even: it is two halves")
        half = c_out // 2
        self.stride = stride
        if stride == 1 and c_in != c_out:
            raise ValueError(f"a stride-1 ShuffleNetV2 unit keeps its width (got {c_in} -> {c_out})")
        b_in = c_in if stride > 1 else half
        self.branch = nn.Sequential(
            _conv_bn(b_in, half, 1),
            _conv_bn(half, half, 3, stride, groups=half, act=None),
            _conv_bn(half, half, 1))
        self.short = nn.Sequential(
            _conv_bn(c_in, c_in, 3, stride, groups=c_in, act=None),
            _conv_bn(c_in, half, 1)) if stride > 1 else nn.Identity()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            keep, x = x.chunk(2, dim=1)                                   # channel split: (B, C/2, H, W) x 2
            y = torch.cat([keep, self.branch(x)], dim=1)
        else:
            y = torch.cat([self.short(x), self.branch(x)], dim=1)        # (B, C_out, H/2, W/2)
        return self.shuffle(y)


class ShuffleNetV2Cifar(nn.Module):
    """ShuffleNetV2 for CIFAR-10 (Ma et al. 2018; li2023 §6, Table 4).

    =======  =====================================  ============
    part     layers (# c, n, s)                     output H x W
    =======  =====================================  ============
    stem     conv 3x3, 24 channels, stride 1        32 x 32
    stage 2  (48, 2, 2)                             16 x 16
    stage 3  (96, 3, 2)                             8 x 8
    stage 4  (192, 2, 2)                            4 x 4
    head     conv 1x1 -> 256, average pool, linear  1 x 1
    =======  =====================================  ============

    The stage widths are those of ShuffleNetV2 0.5x; the repeats (4, 8, 4 on ImageNet) are shortened.
    """
    # c, n, s
    TABLE = ((48, 2, 2), (96, 3, 2), (192, 2, 2))
    LAST = 256

    def __init__(self, config: ShuffleNetV2Config = ShuffleNetV2Config()):
        super().__init__()
        self.config = cfg = config
        c = cfg.ch(24)
        layers: list[nn.Module] = [_conv_bn(3, c, 3)]
        for c_out, n, s in self.TABLE:
            for i in range(n):
                layers.append(ShuffleUnit(c, cfg.ch(c_out), s if i == 0 else 1))
                c = cfg.ch(c_out)
        layers.append(_conv_bn(c, self.LAST, 1))
        self.features = nn.Sequential(*layers)
        self.head = _Head(self.LAST)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))       # (B, 3, 32, 32) -> (B, 256, 4, 4) -> (B, 10)


# ----------------------------------------------------------------------------------------------
# MobileNetV3 and GhostNet: the same skeleton, different blocks (Howard et al. 2019; Han et al. 2020)

class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global pool -> 1x1 reduce (/4) -> ReLU -> 1x1 expand -> hard sigmoid,
    then scale each channel (Hu et al. 2018, as used by MobileNetV3 and GhostNet)."""

    def __init__(self, c: int):
        super().__init__()
        mid = _round_width(c / 4)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, mid, 1), nn.ReLU(),
                                  nn.Conv2d(mid, c, 1), nn.Hardsigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)                  # (B, C, H, W) * (B, C, 1, 1)


# k, exp, c, se, s: kernel, expansion width, output channels, squeeze-excite, stride. GhostNet's table
# is MobileNetV3-Large's with Ghost bottlenecks (Han et al. 2020); both are shortened here
# to one repeat fewer per stage, and the first stride-2 block of ImageNet's stem stage is dropped.
BOTTLENECKS = ((3, 16, 16, False, 1), (3, 48, 24, False, 2), (3, 72, 24, False, 1),
               (5, 72, 40, True, 2), (5, 120, 40, True, 1), (3, 240, 80, False, 2),
               (3, 184, 80, False, 1), (3, 480, 112, True, 1))


class MobileNetV3Cifar(nn.Module):
    """MobileNetV3 for CIFAR-10 (Howard et al. 2019): inverted residuals with squeeze-excite, ReLU in the
    first half and hard-swish in the second, a 3x3 stem to 16 channels (stride 1), a 1x1 conv to
    320 channels, pool and linear. Table (# k, exp, c, se, s): :data:`BOTTLENECKS`."""
    LAST = 320

    def __init__(self, config: MobileNetV3Config = MobileNetV3Config()):
        super().__init__()
        self.config = cfg = config
        c = cfg.ch(16)
        layers: list[nn.Module] = [_conv_bn(3, c, 3, act=nn.Hardswish)]
        for i, (k, exp, c_out, se, s) in enumerate(BOTTLENECKS):
            act = nn.ReLU if i < 5 else nn.Hardswish      # hard-swish in the deeper half, as in V3
            layers.append(InvertedResidual(c, cfg.ch(c_out), cfg.ch(exp), s, k=k, se=se, act=act))
            c = cfg.ch(c_out)
        layers.append(_conv_bn(c, self.LAST, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.head = _Head(self.LAST)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))       # (B, 3, 32, 32) -> (B, 320, 4, 4) -> (B, 10)


class GhostBottleneck(nn.Module):
    """Ghost module (expand) -> BN -> ReLU -> [dw k x k, stride 2 -> BN] -> [SE] -> Ghost module (project)
    -> BN, plus a shortcut: the identity, or dw 3x3 -> BN -> 1x1 -> BN when the shape changes
    (Han et al. 2020, Fig. 3; long2024 §2.3). Both Ghost modules are :class:`lcnn_lab.layers.GhostModule`
    with ratio 2 and 1x1 primary convolutions."""

    def __init__(self, c_in: int, exp: int, c_out: int, k: int, se: bool, stride: int):
        super().__init__()
        layers: list[nn.Module] = [GhostModule(c_in, exp, 1, ratio=2, norm_layer=nn.BatchNorm2d,
                                               act_layer=nn.ReLU), nn.BatchNorm2d(exp), nn.ReLU()]
        if stride > 1:
            layers.append(_conv_bn(exp, exp, k, stride, groups=exp, act=None))
        if se:
            layers.append(SqueezeExcite(exp))
        layers += [GhostModule(exp, c_out, 1, ratio=2, norm_layer=nn.BatchNorm2d), nn.BatchNorm2d(c_out)]
        self.block = nn.Sequential(*layers)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            _conv_bn(c_in, c_in, 3, stride, groups=c_in, act=None), _conv_bn(c_in, c_out, 1, act=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.shortcut(x)


class GhostNetCifar(nn.Module):
    """GhostNet for CIFAR-10 (Han et al. 2020; li2023 §6): MobileNetV3's skeleton (:data:`BOTTLENECKS`,
    # k, exp, c, se, s) with Ghost bottlenecks, a 3x3 stem to 16 channels, a 1x1 conv to 320 channels,
    pool and linear. A depthwise k x k convolution appears only in the stride-2 blocks, as in GhostNet."""
    LAST = 320

    def __init__(self, config: GhostNetConfig = GhostNetConfig()):
        super().__init__()
        self.config = cfg = config
        c = cfg.ch(16)
        layers: list[nn.Module] = [_conv_bn(3, c, 3)]
        for k, exp, c_out, se, s in BOTTLENECKS:
            layers.append(GhostBottleneck(c, cfg.ch(exp), cfg.ch(c_out), k, se, s))
            c = cfg.ch(c_out)
        layers.append(_conv_bn(c, self.LAST, 1))
        self.features = nn.Sequential(*layers)
        self.head = _Head(self.LAST)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))       # (B, 3, 32, 32) -> (B, 320, 4, 4) -> (B, 10)


# ----------------------------------------------------------------------------------------------
# ShuffleNetV2's four guidelines as latency experiments at (nearly) equal MACs (Ma et al. 2018, §2)

class _Pointwise(nn.Sequential):
    """``blocks`` pairs of 1x1 convs c1 -> c2 -> c1 (Ma et al.'s G1 and G2 benchmark), each + ReLU. It
    reads the first c1 channels of its input, so that variants of different widths share one input."""

    def __init__(self, c1: int, c2: int, blocks: int = 10, groups: int = 1):
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers += [ConvKxK(c1, c2, 1, groups=groups), nn.ReLU(), ConvKxK(c2, c1, 1, groups=groups), nn.ReLU()]
        super().__init__(*layers)
        self.c1 = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, :self.c1])    # (B, c1, H, W): a view, no copy


class _Fragmented(nn.Module):
    """A block of ``fragments`` 1x1 convs, repeated ``blocks`` times, with the MACs of one c -> c conv:
    in parallel, each c -> c/fragments and concatenated; in series, c -> m -> ... -> m -> c with the
    inner width m chosen to keep the MACs (Ma et al.'s G3 benchmark)."""

    def __init__(self, c: int, fragments: int, parallel: bool, inner: int | None = None, blocks: int = 10):
        super().__init__()
        self.parallel = parallel
        if parallel or fragments == 1:
            self.blocks = nn.ModuleList(nn.ModuleList(ConvKxK(c, c // fragments, 1) for _ in range(fragments))
                                        for _ in range(blocks))
        else:
            widths = [c] + [inner] * (fragments - 1) + [c]
            self.blocks = nn.ModuleList(nn.Sequential(*[ConvKxK(a, b, 1) for a, b in zip(widths, widths[1:])])
                                        for _ in range(blocks))
            self.parallel = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if isinstance(block, nn.ModuleList):
                x = torch.relu(torch.cat([conv(x) for conv in block], dim=1))   # (B, c, H, W)
            else:
                x = torch.relu(block(x))
        return x


class _ElementWise(nn.Module):
    """A ResNet bottleneck (1x1 -> 3x3 -> 1x1, c/4 inside) repeated ``blocks`` times, with or without
    its ReLUs and its shortcut add: element-wise operations that cost no MACs (Ma et al.'s G4)."""

    def __init__(self, c: int, relu: bool, shortcut: bool, blocks: int = 10):
        super().__init__()
        mid = c // 4
        self.relu, self.shortcut = relu, shortcut
        self.blocks = nn.ModuleList(nn.ModuleList([ConvKxK(c, mid, 1), ConvKxK(mid, mid, 3), ConvKxK(mid, c, 1)])
                                    for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for convs in self.blocks:
            y = x
            for conv in convs:
                y = conv(y)
                y = torch.relu(y) if self.relu else y
            x = x + y if self.shortcut else y
        return x


GUIDELINES = {
    "G1": "equal channel width minimizes memory access cost (MAC)",
    "G2": "excessive group convolution increases MAC",
    "G3": "network fragmentation reduces the degree of parallelism",
    "G4": "element-wise operations are non-negligible",
}


def guideline_models(guideline: str) -> tuple[dict[str, nn.Module], tuple[int, int, int, int]]:
    """The networks that test one of ShuffleNetV2's guidelines (Ma et al. 2018, §2, Tables 1-4), at
    (nearly) equal MACs, and the input size to time them at: ``({variant: model}, (1, C, H, W))``.

    * G1: ten pairs of 1x1 convs c1 -> c2 -> c1 with c1:c2 = 1:1, 1:2, 1:6, 1:12 (their Table 1 widths);
    * G2: the same with groups g = 1, 2, 4, 8 and widths grown to keep the MACs (their Table 2);
    * G3: 1, 2 or 4 fragments per block, in series or in parallel (their Table 3);
    * G4: ResNet bottlenecks with and without ReLU and shortcut (their Table 4).
    The maps are 28 x 28 for G1-G3 and 14 x 14 for G4, small enough for a CPU to time them quickly.
    """
    if guideline == "G1":
        widths = {"1:1": (128, 128), "1:2": (90, 180), "1:6": (52, 312), "1:12": (36, 432)}
        return {k: _Pointwise(c1, c2) for k, (c1, c2) in widths.items()}, (1, 128, 28, 28)   # c1 <= 128
    if guideline == "G2":
        widths = {"g=1": (128, 1), "g=2": (180, 2), "g=4": (256, 4), "g=8": (360, 8)}
        return {k: _Pointwise(c, c, groups=g) for k, (c, g) in widths.items()}, (1, 360, 28, 28)
    if guideline == "G3":
        c = 128
        # inner widths: 2*128*m = 128^2 gives m = 64; 2*128*m + 2*m^2 = 128^2 gives m = 47
        variants = {"1 fragment": _Fragmented(c, 1, False), "2 in series": _Fragmented(c, 2, False, 64),
                    "4 in series": _Fragmented(c, 4, False, 47), "2 in parallel": _Fragmented(c, 2, True),
                    "4 in parallel": _Fragmented(c, 4, True)}
        return variants, (1, c, 28, 28)
    if guideline == "G4":
        c = 256
        variants = {"ReLU + shortcut": _ElementWise(c, True, True), "no shortcut": _ElementWise(c, True, False),
                    "no ReLU": _ElementWise(c, False, True), "neither": _ElementWise(c, False, False)}
        return variants, (1, c, 14, 14)
    raise ValueError(f"guideline={guideline!r} is not one of ShuffleNetV2's {', '.join(GUIDELINES)}")


def conv_shares(model: nn.Module, input_size=(1, 3, 32, 32)) -> "dict[str, dict[str, float]]":
    """Each kind of layer's share of ``model``'s parameters and MACs: ``{"params": {kind: share},
    "macs": {kind: share}}``, kinds ``"pointwise 1x1"``, ``"depthwise"``, ``"other conv"`` (stem, 3x3,
    grouped) and ``"linear"``. BatchNorm's parameters are left out: they fold into the convolutions.
    (li2023 §6: "point-wise convolution used the highest number of parameters".)"""
    from .profile import count_macs   # profile imports models, which imports nothing of this module's
    by_module = count_macs(model, input_size).by_module
    params: dict[str, float] = {"pointwise 1x1": 0, "depthwise": 0, "other conv": 0, "linear": 0}
    macs = dict(params)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            kind = "depthwise" if m.groups == m.in_channels > 1 else \
                "pointwise 1x1" if m.kernel_size == (1, 1) and m.groups == 1 else "other conv"
        elif isinstance(m, nn.Linear):
            kind = "linear"
        else:
            continue
        params[kind] += sum(p.numel() for p in m.parameters())
        macs[kind] += by_module.get(name, 0)
    total_p, total_m = sum(params.values()), sum(macs.values())
    return {"params": {k: v / total_p for k, v in params.items()},
            "macs": {k: v / total_m for k, v in macs.items()}}


# ----------------------------------------------------------------------------------------------
# Registry

FAMILIES = {
    "squeezenet_cifar": (SqueezeNetConfig, SqueezeNetCifar),
    "mobilenet_v1_cifar": (MobileNetV1Config, MobileNetV1Cifar),
    "mobilenet_v2_cifar": (MobileNetV2Config, MobileNetV2Cifar),
    "shufflenet_v2_cifar": (ShuffleNetV2Config, ShuffleNetV2Cifar),
    "mobilenet_v3_cifar": (MobileNetV3Config, MobileNetV3Cifar),
    "ghostnet_cifar": (GhostNetConfig, GhostNetCifar),
}
for _name, (_cfg, _builder) in FAMILIES.items():
    register(_name, _cfg, _builder)
