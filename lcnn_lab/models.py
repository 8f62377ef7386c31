"""Small CIFAR-10 networks, each built from one frozen config of "knobs".

``create_model(name, **knobs)`` is the only way the book builds a network, so every model carries
its config as ``model.config`` and results can be keyed by ``(name, knobs)``:

>>> model = create_model("cifar_net", kernel_size=5, groups="depthwise")
>>> model_knobs(model)
{'kernel_size': 5, 'design': 'single', 'groups': 'depthwise', 'shuffle': False, 'width': 1.0}

``cifar_net`` is the book's baseline, after airbench94 (Jordan 2024): a 3 x 3 stem and three
conv-pool stages, small enough to train on a 2-core CPU. Its knobs swap every stage convolution for
one of the variants of :mod:`lcnn_lab.layers` (long2024 §2.1-2.3), so one widget can compare them;
the stem and the classifier stay as they are (AdderNet, too, keeps its first and last layers).
``repvgg_net`` is cifar_net's shape built from RepVGG blocks (long2024 §2.4): three branches while
training, one 3 x 3 convolution each after :func:`lcnn_lab.reparam.reparameterize`.
``lenet`` is the classic PyTorch tutorial network (after LeCun et al. 1998), a reference point.
``vgg_cifar`` is a VGG-style network with VGG's large fully-connected classifier (chapter 09).
All models take a normalised float batch ``(B, 3, 32, 32)`` and return logits ``(B, 10)``.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from .config import is_positive_int
from .layers import ConvKxK, check_design, check_kernel_size, make_conv
from .reparam import RepVGGBlock

__all__ = ["NetConfig", "CifarNetConfig", "RepVGGNetConfig", "LeNetConfig", "VGGCifarConfig", "CifarNet",
           "RepVGGNet", "LeNet", "VGGCifar", "create_model", "from_config", "list_models", "register", "model_knobs", "CIFAR_NET_WIDTHS"]

NUM_CLASSES = 10

# cifar_net channel widths at width=1.0: stem, then stages 1-3 (each stage halves H and W).
# Half of airbench94's widths, so that a 2-core CPU trains it to 85 % in about five minutes
# (benchmarks/train_speed.py); width=2.0 gives airbench-like widths for a GPU.
#                   stem  stage1  stage2  stage3
CIFAR_NET_WIDTHS = (16,   32,     64,     128)
# Logits are divided by this: with a global max-pool the raw logits start large, and a smaller
# initial output lets a high learning rate work from the first step (airbench uses 1/9 too).
HEAD_SCALE = 1 / 9


# ----------------------------------------------------------------------------------------------
# Configs

@dataclass(frozen=True)
class NetConfig:
    """Base of every model config: a model ``name`` and its knobs (the dataclass fields)."""
    name: ClassVar[str] = ""

    def knobs(self) -> dict[str, Any]:
        """The knobs as a plain dict, in field order (defaults included)."""
        return dataclasses.asdict(self)

    def key(self) -> tuple:
        """A hashable ``(name, ((knob, value), ...))`` key for a results store."""
        return self.name, tuple(self.knobs().items())

    def __str__(self) -> str:
        knobs = ", ".join(f"{k}={v!r}" for k, v in self.knobs().items())
        return f"{self.name}({knobs})"


@dataclass(frozen=True)
class CifarNetConfig(NetConfig):
    """Knobs of ``cifar_net``. The stem is always a standard 3 x 3 conv (it sees only 3 channels)."""
    name: ClassVar[str] = "cifar_net"
    kernel_size: int = 3     # k of every stage convolution: 1, 3, 5, 7 or 9
    design: str = "single"   # "single" | "stacked" | "factorized" | "bottleneck" | "ghost2" | "ghost3"
                             # | "ghost4" | "adder" (see layers.DESIGNS)
    groups: int | str = 1    # group count g of the stage convs, or "depthwise" (depthwise-separable)
    shuffle: bool = False    # channel shuffle after each grouped conv (needs int groups > 1)
    width: float = 1.0       # width multiplier: every width x this, rounded to a multiple of 8

    def __post_init__(self):
        # Channel-independent rules are checked here; whether groups divides every layer's
        # channels is checked when the model is built, where the channel counts are known.
        _knob_check("design", self.design, check_design)
        _knob_check("kernel_size", self.kernel_size, lambda k: check_kernel_size(k, self.design))
        if not (self.groups == "depthwise" or is_positive_int(self.groups)):
            raise ValueError(f"cifar_net knob groups={self.groups!r} must be a positive int "
                             f"or 'depthwise'")
        if not isinstance(self.shuffle, bool):
            raise ValueError(f"cifar_net knob shuffle={self.shuffle!r} must be True or False")
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)) \
                or not 0 < self.width <= 4:
            raise ValueError(f"cifar_net knob width={self.width!r} must be a number in (0, 4]: it "
                             f"multiplies every layer's channel count (1.0 = the baseline)")
        object.__setattr__(self, "width", float(self.width))  # 1 and 1.0 must give the same key

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel widths (stem, stage 1, stage 2, stage 3) after the width multiplier."""
        return tuple(_round_width(c * self.width) for c in CIFAR_NET_WIDTHS)


@dataclass(frozen=True)
class RepVGGNetConfig(NetConfig):
    """Knobs of ``repvgg_net``: the branches of its training-time blocks (RepVGG, long2024 §2.4).

    Every block (the stem too) gets the same branches; the identity branch appears only where a
    block keeps its shape (stride 1, as many output as input channels). The deployed form is
    ``lcnn_lab.reparam.reparameterize(model)``, not a knob: it is the same trained function.
    """
    name: ClassVar[str] = "repvgg_net"
    conv3x3: bool = True     # a 3 x 3 conv + BN branch in every block
    conv1x1: bool = True     # a 1 x 1 conv + BN branch in every block
    identity: bool = True    # a BN-only identity branch in every block whose shape allows it

    def __post_init__(self):
        for knob in ("conv3x3", "conv1x1", "identity"):
            if not isinstance(getattr(self, knob), bool):
                raise ValueError(f"repvgg_net knob {knob}={getattr(self, knob)!r} must be True or False")
        if not (self.conv3x3 or self.conv1x1):
            raise ValueError("repvgg_net needs conv3x3 or conv1x1: the stem and the first block of each "
                             "stage change the channel count or the resolution, where an identity branch "
                             "cannot exist, so those blocks would have no branch at all")


@dataclass(frozen=True)
class LeNetConfig(NetConfig):
    """``lenet`` has no knobs."""
    name: ClassVar[str] = "lenet"


@dataclass(frozen=True)
class VGGCifarConfig(NetConfig):
    """Knobs of ``vgg_cifar``: a width multiplier for its convolutions (the classifier stays 512 wide)."""
    name: ClassVar[str] = "vgg_cifar"
    width: float = 1.0       # multiplies every convolution's channel count, rounded to a multiple of 8

    def __post_init__(self):
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)) or not 0 < self.width <= 4:
            raise ValueError(f"vgg_cifar knob width={self.width!r} must be a number in (0, 4]: it "
                             f"multiplies every convolution's channel count (1.0 = the baseline)")
        object.__setattr__(self, "width", float(self.width))


def _knob_check(knob: str, value: Any, check: Callable[[Any], Any]) -> None:
    try:
        check(value)
    except ValueError as err:
        raise ValueError(f"cifar_net knob {knob}={value!r}: {err}") from None


def _round_width(c: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of 8 (at least 8), as MobileNet does.

    Multiples of 8 keep the vectorised kernels of CPUs and GPUs fully used (Sandler et al. 2018).
    """
    return max(divisor, int(round(c / divisor)) * divisor)


# ----------------------------------------------------------------------------------------------
# cifar_net

class _StemStagesHead(nn.Module):
    """The forward pass shared by cifar_net and repvgg_net: stem, three stages, global max-pool, linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)                 # (B, w0, 32, 32)
        x = self.stage1(x)               # (B, w1, 16, 16)
        x = self.stage2(x)               # (B, w2, 8, 8)
        x = self.stage3(x)               # (B, w3, 4, 4)
        x = self.pool(x).flatten(1)      # (B, w3)
        return self.head(x) * HEAD_SCALE  # (B, 10)


class CifarNet(_StemStagesHead):
    """The book's baseline: stem + 3 stages + global max-pool + linear (after airbench94, Jordan 2024).

    ========  ==========================================================  =====================
    part      layers                                                      output (B, C, H, W)
    ========  ==========================================================  =====================
    stem      conv 3x3 -> BN -> GELU                                      (B, w0, 32, 32)
    stage i   conv_k -> maxpool 2 -> BN -> GELU -> conv_k -> BN -> GELU    (B, wi, 32/2^i, ...)
    head      global max-pool -> linear                                   (B, 10)
    ========  ==========================================================  =====================

    ``conv_k`` is ``make_conv(..., kernel_size, design, groups, shuffle)``; its inner layers (if any)
    get BN + GELU between them. Pooling before the norm, as airbench does, runs BN and GELU on a
    quarter of the pixels.
    """

    def __init__(self, config: CifarNetConfig = CifarNetConfig()):
        super().__init__()
        self.config = config
        w0, *stage_widths = config.widths
        self.stem = nn.Sequential(ConvKxK(3, w0, 3), nn.BatchNorm2d(w0), nn.GELU())
        c_in = w0
        for i, c_out in enumerate(stage_widths, start=1):
            self.add_module(f"stage{i}", nn.Sequential(OrderedDict(
                conv1=self._conv(c_in, c_out, i),
                pool=nn.MaxPool2d(2),
                norm1=nn.BatchNorm2d(c_out),
                act1=nn.GELU(),
                conv2=self._conv(c_out, c_out, i),
                norm2=nn.BatchNorm2d(c_out),
                act2=nn.GELU(),
            )))
            c_in = c_out
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c_in, NUM_CLASSES)

    def _conv(self, c_in: int, c_out: int, stage: int) -> nn.Module:
        cfg = self.config
        try:
            return make_conv(c_in, c_out, cfg.kernel_size, design=cfg.design, groups=cfg.groups,
                             shuffle=cfg.shuffle, norm_layer=nn.BatchNorm2d, act_layer=nn.GELU)
        except ValueError as err:
            raise ValueError(f"{cfg} cannot be built: in stage {stage} ({c_in} -> {c_out} channels, "
                             f"width={cfg.width}): {err}") from None


# ----------------------------------------------------------------------------------------------
# repvgg_net

class RepVGGNet(_StemStagesHead):
    """cifar_net's widths and depth built from RepVGG blocks (Ding et al. 2021; long2024 §2.4).

    ========  ===============================================  =====================
    part      layers                                           output (B, C, H, W)
    ========  ===============================================  =====================
    stem      block (3 -> w0) -> GELU                          (B, w0, 32, 32)
    stage i   block (stride 2) -> GELU -> block -> GELU        (B, wi, 32/2^i, ...)
    head      global max-pool -> linear                        (B, 10)
    ========  ===============================================  =====================

    Each block is a :class:`lcnn_lab.reparam.RepVGGBlock` with the config's branches. As in RepVGG,
    each stage starts with a stride-2 block (where cifar_net pools), so only the second block of a
    stage can have an identity branch. Deployed (:func:`lcnn_lab.reparam.reparameterize`), the network
    is seven 3 x 3 convolutions with biases and GELUs, the plain VGG-like chain of RepVGG; GELU rather
    than RepVGG's ReLU keeps the activation of cifar_net, which the trainer is tuned for.
    """

    def __init__(self, config: RepVGGNetConfig = RepVGGNetConfig()):
        super().__init__()
        self.config = config
        w0, *stage_widths = CIFAR_NET_WIDTHS
        self.stem = nn.Sequential(OrderedDict(block=self._block(3, w0, 1), act=nn.GELU()))
        c_in = w0
        for i, c_out in enumerate(stage_widths, start=1):
            self.add_module(f"stage{i}", nn.Sequential(OrderedDict(
                block1=self._block(c_in, c_out, 2), act1=nn.GELU(),
                block2=self._block(c_out, c_out, 1), act2=nn.GELU())))
            c_in = c_out
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c_in, NUM_CLASSES)

    def _block(self, c_in: int, c_out: int, stride: int) -> RepVGGBlock:
        cfg = self.config
        return RepVGGBlock(c_in, c_out, stride, conv3x3=cfg.conv3x3, conv1x1=cfg.conv1x1,
                           identity=cfg.identity)


# ----------------------------------------------------------------------------------------------
# lenet

class LeNet(nn.Module):
    """The PyTorch CIFAR-10 tutorial network, a LeNet-5 variant (LeCun et al. 1998; long2024 §2.1).

    Two 5 x 5 convolutions with biases and no padding, ReLU and max-pooling, then three linear layers.
    """

    def __init__(self, config: LeNetConfig = LeNetConfig()):
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, NUM_CLASSES)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))   # (B, 6, 14, 14)
        x = self.pool(self.relu(self.conv2(x)))   # (B, 16, 5, 5)
        x = torch.flatten(x, 1)                   # (B, 400)
        x = self.relu(self.fc1(x))                # (B, 120)
        x = self.relu(self.fc2(x))                # (B, 84)
        return self.fc3(x)                        # (B, 10)


# ----------------------------------------------------------------------------------------------
# vgg_cifar

# VGG-11's convolutions at half width ("M": 2 x 2 max-pool), one stage fewer for a 32 x 32 image
VGG_CIFAR = (32, "M", 64, "M", 128, 128, "M", 256, 256, "M")
VGG_CIFAR_HIDDEN = 512   # the classifier's hidden width (VGG's 4096 scaled to CIFAR-10)


class VGGCifar(nn.Module):
    """A VGG-style network with VGG's large fully-connected classifier (Simonyan and Zisserman 2015):
    the model of chapter 09, where a real classifier makes the fully-connected layers' share of the
    parameters, and their truncated SVD, worth measuring.

    ==========  ===================================================  ===============
    part        layers (VGG_CIFAR, width 1)                          output
    ==========  ===================================================  ===============
    features    conv 3x3 + BN + ReLU: 32, M, 64, M, 128, 128, M,      256 x 2 x 2
                256, 256, M (M: 2 x 2 max-pool)
    classifier  linear 1024 -> 512, ReLU, 512 -> 512, ReLU, 512 -> 10  10
    ==========  ===================================================  ===============

    No dropout: the book trains for an epoch or a few, where dropout only slows learning.
    """

    def __init__(self, config: VGGCifarConfig = VGGCifarConfig()):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c = 3
        for v in VGG_CIFAR:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            c_out = _round_width(v * config.width)
            layers += [nn.Conv2d(c, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(c * 2 * 2, VGG_CIFAR_HIDDEN), nn.ReLU(inplace=True),
            nn.Linear(VGG_CIFAR_HIDDEN, VGG_CIFAR_HIDDEN), nn.ReLU(inplace=True),
            nn.Linear(VGG_CIFAR_HIDDEN, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# ----------------------------------------------------------------------------------------------
# Registry

# model name -> (config class, builder)
_MODELS: dict[str, tuple[type[NetConfig], Callable[[Any], nn.Module]]] = {
    "cifar_net": (CifarNetConfig, CifarNet),
    "lenet": (LeNetConfig, LeNet),
    "repvgg_net": (RepVGGNetConfig, RepVGGNet),
    "vgg_cifar": (VGGCifarConfig, VGGCifar),
}


def register(name: str, config_cls: type[NetConfig], builder: Callable[[Any], nn.Module]) -> None:
    """Add a model to the registry (:mod:`lcnn_lab.families` adds the lightweight families this way)."""
    if config_cls.name != name:
        raise ValueError(f"config {config_cls.__name__} is named {config_cls.name!r}, not {name!r}")
    _MODELS[name] = (config_cls, builder)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return list(_MODELS)


def create_model(name: str, **knobs: Any) -> nn.Module:
    """Build model ``name`` with the given knobs; the config is kept as ``model.config``.

    Unknown names or knobs, and knob values the layers reject, raise ``ValueError``.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(map(repr, _MODELS))}")
    config_cls, _ = _MODELS[name]
    valid = [f.name for f in dataclasses.fields(config_cls)]
    unknown = [k for k in knobs if k not in valid]
    if unknown:
        if not valid:
            raise ValueError(f"{name} has no knobs (got {', '.join(map(repr, unknown))})")
        raise ValueError(f"{name} has no knob {', '.join(map(repr, unknown))}; "
                         f"its knobs are {', '.join(valid)}")
    return from_config(config_cls(**knobs))


def from_config(config: NetConfig) -> nn.Module:
    """Build the model a config describes (for configs read back from a results store)."""
    if config.name not in _MODELS:
        raise ValueError(f"config {config!r} names no known model; choose one of {', '.join(_MODELS)}")
    return _MODELS[config.name][1](config)


def model_knobs(model: nn.Module) -> dict[str, Any]:
    """The knobs ``model`` was built with (defaults included), e.g. to key a results store."""
    config = getattr(model, "config", None)
    if not isinstance(config, NetConfig):
        raise ValueError(f"{type(model).__name__} has no .config: build it with "
                         f"lcnn_lab.models.create_model(...) so its knobs are recorded")
    return config.knobs()

