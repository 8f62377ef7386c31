"""Neural architecture search on CIFAR-10, small enough for a laptop (chapter 06, long2024 §3).

A NAS method has three parts (Elsken et al. 2019; long2024 §3), and this module has one section each:

* **The search space**: :class:`SearchSpace`, a set of named decisions. :data:`SPACE` is the book's:
  for each of ``nas_net``'s three stages an operation (the convolutions of chapters 01-03), a kernel
  size, a width multiplier and a depth, 90**3 = 729,000 networks. ``cifar_net`` is one of them.
* **The evaluation of a candidate**: training at a low fidelity (:func:`evaluate`, a tenth of the
  training images; every training goes through the results store), zero-cost proxies computed at
  initialisation (:func:`synflow`, :func:`naswot`), and a per-stage latency lookup table
  (:class:`LatencyTable`, as ProxylessNAS and FBNet) instead of timing each network.
* **The search strategy**: :func:`random_search` (the baseline), :func:`regularized_evolution` (Real et
  al. 2019), :func:`reinforce` (a policy-gradient controller after Zoph & Le 2017), :func:`darts` (a
  differentiable supernet after Liu et al. 2019) and :func:`optuna_search` (Optuna's TPE, and NSGA-II
  for accuracy against measured latency), whose study lives in a database that several worker
  processes can share (``python -m lcnn_lab nas-worker``).

Every strategy takes the space and an ``objective(arch) -> Evaluation`` and returns a
:class:`SearchResult`; :func:`search` runs one under the budget and keeps it in the results store.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import config
from .layers import ConvKxK, make_conv
from .models import CIFAR_NET_WIDTHS, HEAD_SCALE, NUM_CLASSES, NetConfig, _round_width, create_model, register
from .profile import count_macs, count_params, measure_latency
from .results import ResultsStore, make_key
from .data import normalize
from .train import TrainConfig, device_data, fixed_subset

__all__ = ["NASNetConfig", "NASNet", "OPS", "SearchSpace", "SPACE", "BASELINE", "Evaluation", "Objective",
           "evaluate", "fidelity_config", "FIDELITIES", "synflow", "naswot", "kendall_tau", "LatencyTable",
           "Trial", "SearchResult", "random_search", "regularized_evolution", "reinforce", "optuna_search",
           "darts", "darts_search", "sample_architectures", "CHAPTER_SEARCHES", "describe_arch", "DARTS_CANDIDATES", "search", "STRATEGIES", "mnas_reward", "pareto_front"]


# ----------------------------------------------------------------------------------------------
# The network the search builds: nas_net, cifar_net with one choice per stage

# operation name -> make_conv arguments (chapters 01-03)
OPS: dict[str, dict[str, Any]] = {
    "conv": dict(design="single", groups=1),                    # a standard k x k convolution
    "sep": dict(design="single", groups="depthwise"),            # depthwise-separable (MobileNet)
    "shuffle": dict(design="single", groups=4, shuffle=True),    # 4 groups + channel shuffle (ShuffleNet)
    "bottleneck": dict(design="bottleneck", groups=1),           # 1 x 1 reduce, k x k, 1 x 1 expand
    "ghost": dict(design="ghost2", groups=1),                    # Ghost module, ratio 2 (GhostNet)
}
KERNELS = (3, 5, 7)
WIDTHS = (0.5, 1.0, 1.5)
DEPTHS = (1, 2)


@dataclass(frozen=True)
class NASNetConfig(NetConfig):
    """Knobs of ``nas_net``: stage i (1-3) has an operation ``op{i}``, a kernel size ``k{i}``, a width
    multiplier ``w{i}`` (of cifar_net's 32/64/128 channels) and a depth ``d{i}`` (1 or 2 convolutions).
    The defaults are cifar_net's baseline."""
    name: ClassVar[str] = "nas_net"
    op1: str = "conv"
    k1: int = 3
    w1: float = 1.0
    d1: int = 2
    op2: str = "conv"
    k2: int = 3
    w2: float = 1.0
    d2: int = 2
    op3: str = "conv"
    k3: int = 3
    w3: float = 1.0
    d3: int = 2

    def __post_init__(self):
        for i in (1, 2, 3):
            op, k, w, d = (getattr(self, f"{n}{i}") for n in ("op", "k", "w", "d"))
            if op not in OPS:
                raise ValueError(f"nas_net knob op{i}={op!r} must be one of {', '.join(map(repr, OPS))}")
            if k not in KERNELS:
                raise ValueError(f"nas_net knob k{i}={k!r} must be one of {', '.join(map(str, KERNELS))}")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 4:
                raise ValueError(f"nas_net knob w{i}={w!r} must be a width multiplier in (0, 4]")
            if d not in DEPTHS or isinstance(d, bool):
                raise ValueError(f"nas_net knob d{i}={d!r} must be 1 or 2 (convolutions in stage {i})")
            object.__setattr__(self, f"w{i}", float(w))

    def stage(self, i: int) -> tuple[str, int, float, int]:
        """Stage ``i``'s ``(op, k, w, d)``."""
        return tuple(getattr(self, f"{n}{i}") for n in ("op", "k", "w", "d"))

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of the stem (fixed) and of stages 1-3 after their multipliers."""
        w0, *ws = CIFAR_NET_WIDTHS
        return (w0, *(_round_width(c * self.stage(i)[2]) for i, c in enumerate(ws, start=1)))


def _stage(c_in: int, c_out: int, op: str, k: int, depth: int) -> nn.Sequential:
    """One stage as in cifar_net: conv -> maxpool 2 -> BN -> GELU [-> conv -> BN -> GELU]."""
    def conv(a: int, b: int) -> nn.Module:
        return make_conv(a, b, k, **OPS[op], norm_layer=nn.BatchNorm2d, act_layer=nn.GELU)
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=conv(c_in, c_out), pool=nn.MaxPool2d(2), norm1=nn.BatchNorm2d(c_out), act1=nn.GELU())
    if depth == 2:
        layers.update(conv2=conv(c_out, c_out), norm2=nn.BatchNorm2d(c_out), act2=nn.GELU())
    return nn.Sequential(layers)


class NASNet(nn.Module):
    """cifar_net's skeleton (stem, three conv-pool stages, global max-pool, linear) with each stage
    chosen separately: the network every search strategy of chapter 06 builds."""

    def __init__(self, config: NASNetConfig = NASNetConfig()):
        super().__init__()
        self.config = config
        w0, *ws = config.widths
        self.stem = nn.Sequential(ConvKxK(3, w0, 3), nn.BatchNorm2d(w0), nn.GELU())
        c_in = w0
        for i, c_out in enumerate(ws, start=1):
            op, k, _, d = config.stage(i)
            self.add_module(f"stage{i}", _stage(c_in, c_out, op, k, d))
            c_in = c_out
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c_in, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))   # (B, w3, 4, 4)
        return self.head(self.pool(x).flatten(1)) * HEAD_SCALE     # (B, 10)


register("nas_net", NASNetConfig, NASNet)


# ----------------------------------------------------------------------------------------------
# The search space

Arch = dict  # decision name -> chosen value


class SearchSpace:
    """Named decisions, each with a tuple of values: ``SearchSpace({"op1": ("conv", "sep"), ...})``.

    An architecture is a dict ``{decision: value}``. ``model`` (a :func:`lcnn_lab.models.create_model`
    name) lets :meth:`build` turn one into a network; a space without it (a toy space in the tests)
    can still be searched with any objective.
    """

    def __init__(self, decisions: Mapping[str, Sequence], model: str | None = None):
        if not decisions:
            raise ValueError("a search space needs at least one decision")
        for name, values in decisions.items():
            if len(values) < 1 or len(set(map(repr, values))) != len(values):
                raise ValueError(f"decision {name!r} needs distinct values, got {values!r}")
        self.decisions = {name: tuple(values) for name, values in decisions.items()}
        self.model = model

    @property
    def size(self) -> int:
        """How many architectures the space holds: the product of the decisions' sizes."""
        return math.prod(len(v) for v in self.decisions.values())

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {len(v)}" for n, v in self.decisions.items())
        return f"SearchSpace({parts}; {self.size:,} architectures)"

    def check(self, arch: Mapping[str, Any]) -> Arch:
        """``arch`` as a dict in decision order, or ``ValueError`` naming what is wrong with it."""
        missing = [n for n in self.decisions if n not in arch]
        extra = [n for n in arch if n not in self.decisions]
        if missing or extra:
            raise ValueError(f"architecture {dict(arch)} does not fit the space: "
                             + "; ".join(s for s in (f"missing {', '.join(missing)}" if missing else "",
                                                     f"unknown {', '.join(extra)}" if extra else "") if s))
        for n, values in self.decisions.items():
            if arch[n] not in values:
                raise ValueError(f"{n}={arch[n]!r} is not a choice of this space ({', '.join(map(repr, values))})")
        return {n: arch[n] for n in self.decisions}

    def sample(self, rng: random.Random) -> Arch:
        """A uniformly random architecture."""
        return {n: rng.choice(v) for n, v in self.decisions.items()}

    def mutate(self, arch: Mapping[str, Any], rng: random.Random) -> Arch:
        """A copy of ``arch`` with one decision (chosen at random) changed to another of its values."""
        child = dict(self.check(arch))
        name = rng.choice([n for n, v in self.decisions.items() if len(v) > 1])
        child[name] = rng.choice([v for v in self.decisions[name] if v != arch[name]])
        return child

    def encode(self, arch: Mapping[str, Any]) -> list[int]:
        """The index of each chosen value, in decision order (what a controller samples)."""
        arch = self.check(arch)
        return [self.decisions[n].index(arch[n]) for n in self.decisions]

    def decode(self, indices: Sequence[int]) -> Arch:
        """The architecture of :meth:`encode`'s indices."""
        if len(indices) != len(self.decisions):
            raise ValueError(f"{len(indices)} indices for {len(self.decisions)} decisions")
        return {n: v[int(i)] for (n, v), i in zip(self.decisions.items(), indices)}

    def build(self, arch: Mapping[str, Any]) -> nn.Module:
        """The network of ``arch`` (needs ``model``)."""
        if self.model is None:
            raise ValueError("this space has no model to build (SearchSpace(..., model=name))")
        return create_model(self.model, **self.check(arch))

    def signature(self) -> dict:
        """What identifies the space in a results-store key."""
        return {"model": self.model, "decisions": self.decisions}


def _nas_decisions() -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for i in (1, 2, 3):
        out.update({f"op{i}": tuple(OPS), f"k{i}": KERNELS, f"w{i}": WIDTHS, f"d{i}": DEPTHS})
    return out


SPACE = SearchSpace(_nas_decisions(), model="nas_net")
BASELINE: Arch = NASNetConfig().knobs()   # cifar_net, as a point of SPACE


def describe_arch(arch: Mapping[str, Any]) -> str:
    """``"conv3×1.0×2 | sep5×0.5×1 | ..."``: each stage's op, kernel, width and depth."""
    try:
        return " | ".join(f"{arch[f'op{i}']}{arch[f'k{i}']}·w{arch[f'w{i}']:g}·d{arch[f'd{i}']}" for i in (1, 2, 3))
    except KeyError:
        return ", ".join(f"{k}={v}" for k, v in arch.items())


def sample_architectures(n: int, seed: int = 0, space: SearchSpace | None = None) -> list[Arch]:
    """``n`` distinct architectures drawn uniformly from ``space`` (default :data:`SPACE`): the sample on
    which chapter 06 compares fidelities and proxies with the accuracy after training."""
    space = space or SPACE
    n = config.check_positive_int("n", n)
    if n > space.size:
        raise ValueError(f"the space holds only {space.size} architectures, not {n}")
    rng, out, seen = random.Random(seed), [], set()
    while len(out) < n:
        a = space.sample(rng)
        if tuple(a.values()) not in seen:
            seen.add(tuple(a.values()))
            out.append(a)
    return out


# ----------------------------------------------------------------------------------------------
# Evaluating a candidate: trained at a fidelity (through the results store), its cost, its latency

# fidelity -> share of the budget's training images, trained for the budget's epochs
FIDELITIES = {"low": 0.1, "high": 1.0}
LOW_FIDELITY_EVAL_IMAGES = 2_000   # a low-fidelity score needs fewer test images: se about 1 point


def fidelity_config(fidelity: str = "low", budget: str | None = None) -> TrainConfig:
    """The training of one candidate at ``fidelity`` under ``budget`` (default ``$LCNN_BUDGET``).

    ``"high"`` is the budget's own training (quick: one epoch on all 50,000 images); ``"low"`` is one
    tenth of its training images (quick: 5,000), scored on 2,000 test images.
    """
    if fidelity not in FIDELITIES:
        raise ValueError(f"fidelity={fidelity!r} must be one of {', '.join(map(repr, FIDELITIES))}")
    b = config.get_budget(budget)
    if fidelity == "high":
        return TrainConfig(budget=b.name, progress=False).resolved()
    n = b.train_images or 50_000
    eval_n = min(b.eval_images or 10_000, LOW_FIDELITY_EVAL_IMAGES)
    return TrainConfig(budget=b.name, train_images=max(256, int(n * FIDELITIES[fidelity])),
                       eval_images=eval_n, progress=False).resolved()


@dataclass(frozen=True)
class Evaluation:
    """What a strategy learns about one architecture."""
    accuracy: float          # test accuracy after training at the fidelity
    seconds: float           # training seconds (as stored with the training: a store hit costs nothing now)
    params: int
    macs: int                # per image
    latency_ms: float | None = None   # median, batch 1, measured on this machine (None: not measured)
    cached: bool = False     # True when the training came from the results store


def evaluate(arch: Mapping[str, Any], fidelity: str = "low", budget: str | None = None,
             store: ResultsStore | None = None, latency: bool = False, threads: int = 1,
             space: SearchSpace = SPACE) -> Evaluation:
    """Train ``arch`` at ``fidelity`` (or read it from the results store) and count its cost.

    ``latency=True`` also times it (batch 1, ``threads`` threads, median of blocked runs).
    """
    from .trained import trained_accuracy   # trained imports models; keep this module importable alone
    arch = space.check(arch)
    cfg = fidelity_config(fidelity, budget)
    store = store if store is not None else ResultsStore()
    hit = trained_accuracy(space.model, cfg, store=store, compute=False, **arch)
    metrics = hit or trained_accuracy(space.model, cfg, store=store, **arch)
    model = space.build(arch)
    lat = measure_latency(model, threads=threads, min_run_time=0.1).median_ms if latency else None
    return Evaluation(accuracy=metrics["accuracy"], seconds=metrics["seconds"], params=count_params(model),
                      macs=count_macs(model).total, latency_ms=lat, cached=hit is not None)


def mnas_reward(accuracy: float, latency_ms: float, target_ms: float, w: float = -0.07) -> float:
    """MnasNet's soft latency objective (Tan et al. 2019, Eq. 2): ``ACC × (LAT / T) ** w``, w = -0.07.

    A network twice as slow as the target ``T`` loses 2**-0.07 = 4.7 % of its reward; one twice as fast
    gains 5 %."""
    if latency_ms <= 0 or target_ms <= 0:
        raise ValueError("latencies must be positive")
    return accuracy * (latency_ms / target_ms) ** w


class Objective:
    """``objective(arch)`` -> :class:`Evaluation`, plus the score(s) a strategy maximises.

    ``kind="accuracy"``: the low-fidelity accuracy. ``kind="latency"``: MnasNet's reward with the
    baseline's measured latency as its target (:func:`mnas_reward`); NSGA-II gets (accuracy, latency)
    as two objectives instead. Evaluations are memoised, so a strategy that proposes an architecture
    twice pays once.
    """

    def __init__(self, kind: str = "accuracy", fidelity: str = "low", budget: str | None = None,
                 store: ResultsStore | None = None, space: SearchSpace = SPACE, threads: int = 1,
                 evaluate_fn: Callable[..., Evaluation] = evaluate, target: Mapping[str, Any] | None = None):
        if kind not in ("accuracy", "latency"):
            raise ValueError(f"objective kind={kind!r} must be 'accuracy' or 'latency' (accuracy and latency)")
        self.kind, self.fidelity, self.budget, self.store, self.space = kind, fidelity, budget, store, space
        self.threads, self.evaluate_fn = threads, evaluate_fn
        self.cache: dict[tuple, Evaluation] = {}
        # the latency target T of MnasNet's reward: the baseline's (cifar_net's) measured latency
        self.target = dict(target) if target is not None else BASELINE if space is SPACE else \
            {n: v[0] for n, v in space.decisions.items()}
        self.target_ms: float | None = None

    def __call__(self, arch: Mapping[str, Any]) -> Evaluation:
        key = tuple(self.space.check(arch).values())
        if key not in self.cache:
            self.cache[key] = self.evaluate_fn(arch, fidelity=self.fidelity, budget=self.budget,
                                               store=self.store, latency=self.kind == "latency",
                                               threads=self.threads, space=self.space)
        return self.cache[key]

    def score(self, e: Evaluation) -> float:
        """The single number a scalar strategy maximises."""
        if self.kind == "accuracy":
            return e.accuracy
        if self.target_ms is None:
            self.target_ms = self(self.target).latency_ms
        return mnas_reward(e.accuracy, e.latency_ms, self.target_ms)


# ----------------------------------------------------------------------------------------------
# Zero-cost proxies: a score at initialisation, no training

def synflow(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32)) -> float:
    """SynFlow (Tanaka et al. 2020; as a NAS proxy, Abdelfattah et al. 2021): ``log Σ |θ ⊙ ∂R/∂θ|``.

    ``R = 1ᵀ (Π_l |W_l|) 1`` is the network's output for an all-ones input after every weight is
    replaced by its absolute value (BatchNorm in eval mode, in float64, so nothing depends on data). The
    sum runs over conv and linear weights; the log keeps the number readable (it is huge)."""
    net = _copy_for_proxy(model).double()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad()
    out = net(torch.ones(tuple(input_size), dtype=torch.float64))
    out.sum().backward()
    total = sum((m.weight * m.weight.grad).abs().sum().item() for m in net.modules()
                if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.grad is not None)
    return math.log(total) if total > 0 else float("-inf")


def naswot(model: nn.Module, images: torch.Tensor) -> float:
    """NASWOT (Mellor et al. 2021): how differently the untrained network's activations split a batch.

    Every GELU's input is turned into a binary code (``> 0``) per image; ``K[i, j]`` counts the units
    where images i and j agree (``N_A`` minus the Hamming distance). The score is ``log |det K|``:
    large when the images get distinct codes, which Mellor et al. found in networks that train well."""
    net = _copy_for_proxy(model)
    codes: list[torch.Tensor] = []

    def hook(_m, inputs, _out) -> None:
        codes.append((inputs[0].flatten(1) > 0).double())

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.GELU, nn.ReLU))]
    with torch.no_grad():
        net(images)
    for h in handles:
        h.remove()
    if not codes:
        raise ValueError("naswot needs a network with GELU or ReLU activations")
    c = torch.cat(codes, dim=1)                       # (B, N_A) in {0, 1}
    k = c @ c.T + (1 - c) @ (1 - c).T                 # agreements = N_A - Hamming distance
    return torch.linalg.slogdet(k).logabsdet.item()


def _copy_for_proxy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu().float().eval()   # BatchNorm uses its (initial) running statistics


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's rank correlation τ-b (SciPy): +1 same order, 0 unrelated, -1 reversed."""
    from scipy.stats import kendalltau
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"kendall_tau needs two equally long sequences of at least 2 (got {len(x)}, {len(y)})")
    return float(kendalltau(x, y).statistic)


def proxy_images(n: int = 64, seed: int = 0) -> torch.Tensor:
    """A fixed batch of ``n`` normalised training images for :func:`naswot`."""
    images, _ = device_data("train", torch.device("cpu"))
    idx = fixed_subset(len(images), n, seed)
    return normalize(images[idx])


# ----------------------------------------------------------------------------------------------
# A latency lookup table: the time of each stage, measured once, summed (ProxylessNAS, FBNet)

class LatencyTable:
    """Per-stage latencies measured once and summed to predict a network's (Cai et al. 2019; Wu et al.
    2019). An entry is one stage of ``nas_net`` at its input: (op, k, channels in, out, depth, H);
    the stem and the head are one more entry. Batch 1, ``threads`` threads, median."""

    def __init__(self, threads: int = 1, min_run_time: float = 0.1):
        self.threads, self.min_run_time = threads, min_run_time
        self.entries: dict[tuple, float] = {}

    def _time(self, key: tuple, module: nn.Module, shape: tuple) -> float:
        if key not in self.entries:
            self.entries[key] = measure_latency(module, shape, threads=self.threads,
                                                min_run_time=self.min_run_time).median_ms
        return self.entries[key]

    def stage_ms(self, stage: int, c_in: int, c_out: int, op: str, k: int, depth: int) -> float:
        h = 32 // 2 ** (stage - 1)
        return self._time(("stage", op, k, c_in, c_out, depth, h), _stage(c_in, c_out, op, k, depth),
                          (1, c_in, h, h))

    def fixed_ms(self, c_last: int) -> float:
        """The stem (3 -> 16, 32 x 32) and the head (max-pool, linear from the last stage's channels)."""
        w0 = CIFAR_NET_WIDTHS[0]
        stem = nn.Sequential(ConvKxK(3, w0, 3), nn.BatchNorm2d(w0), nn.GELU())
        head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c_last, NUM_CLASSES))
        return (self._time(("stem",), stem, (1, 3, 32, 32))
                + self._time(("head", c_last), head, (1, c_last, 4, 4)))

    def predict(self, arch: Mapping[str, Any]) -> float:
        """The predicted latency (ms) of ``nas_net`` with ``arch``: the sum of its entries."""
        cfg = NASNetConfig(**SPACE.check(arch))
        widths = cfg.widths
        total = self.fixed_ms(widths[-1])
        for i in (1, 2, 3):
            op, k, _, d = cfg.stage(i)
            total += self.stage_ms(i, widths[i - 1], widths[i], op, k, d)
        return total


# ----------------------------------------------------------------------------------------------
# Search results

@dataclass
class Trial:
    """One evaluated architecture."""
    number: int
    arch: Arch
    score: float                  # what the strategy maximised (accuracy, or MnasNet's reward)
    accuracy: float
    seconds: float                # training seconds of this evaluation
    params: int
    macs: int
    latency_ms: float | None = None
    info: dict = field(default_factory=dict)   # e.g. the Optuna worker that ran it


@dataclass
class SearchResult:
    """The trials of one search, in the order they ran."""
    strategy: str
    objective: str
    trials: list[Trial]
    seconds: float = 0.0          # wall time of the search (training from the store counts as read)
    info: dict = field(default_factory=dict)

    def best(self, n: int | None = None) -> Trial:
        """The best-scoring trial among the first ``n`` (default: all)."""
        trials = self.trials[:n] if n else self.trials
        if not trials:
            raise ValueError("this search has no trials")
        return max(trials, key=lambda t: t.score)

    def running_best(self) -> list[float]:
        """The best score after each trial: the curve NAS papers plot against the search budget."""
        out, best = [], -math.inf
        for t in self.trials:
            best = max(best, t.score)
            out.append(best)
        return out

    def front(self, n: int | None = None, cost: str = "latency_ms") -> list[Trial]:
        """The Pareto front of accuracy against ``cost`` ("latency_ms", "macs" or "params")."""
        return pareto_front(self.trials[:n] if n else self.trials, cost)

    @property
    def training_seconds(self) -> float:
        """Training seconds of the distinct architectures evaluated (what the search cost to compute)."""
        seen: dict[tuple, float] = {}
        for t in self.trials:
            seen.setdefault(tuple(t.arch.items()), t.seconds)
        return sum(seen.values())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SearchResult":
        d = dict(d)
        d["trials"] = [Trial(**t) for t in d["trials"]]
        return cls(**d)


def pareto_front(trials: Iterable[Trial], cost: str = "latency_ms") -> list[Trial]:
    """The trials no other trial beats on both accuracy (higher) and ``cost`` (lower), cheapest first."""
    if cost not in ("latency_ms", "macs", "params"):
        raise ValueError(f"cost={cost!r} must be 'latency_ms', 'macs' or 'params'")
    pts = sorted((t for t in trials if getattr(t, cost) is not None),
                 key=lambda t: (getattr(t, cost), -t.accuracy))
    front, best = [], -math.inf
    seen = set()
    for t in pts:
        key = tuple(t.arch.items())
        if t.accuracy > best and key not in seen:
            front.append(t)
            best = t.accuracy
            seen.add(key)
    return front


def _trial(number: int, arch: Arch, e: Evaluation, score: float, **info) -> Trial:
    return Trial(number=number, arch=dict(arch), score=float(score), accuracy=e.accuracy, seconds=e.seconds,
                 params=e.params, macs=e.macs, latency_ms=e.latency_ms, info=info)


def _bar(n: int, desc: str, progress: bool):
    return tqdm(total=n, desc=desc, unit="trial", disable=not progress, leave=False)


def _check_trials(n_trials: Any) -> int:
    return config.check_positive_int("n_trials", n_trials, " (how many architectures the search may evaluate)")


# ----------------------------------------------------------------------------------------------
# Strategies: each takes the space and an objective, evaluates at most n_trials architectures

def random_search(space: SearchSpace, objective: Objective, n_trials: int, seed: int = 0,
                  progress: bool = True) -> SearchResult:
    """Sample ``n_trials`` architectures uniformly and keep the best: the baseline every NAS method must
    beat (Li & Talwalkar 2019 found it hard to beat in DARTS's own space)."""
    n_trials, rng = _check_trials(n_trials), random.Random(seed)
    trials, t0 = [], time.perf_counter()
    with _bar(n_trials, "random search", progress) as bar:
        for i in range(n_trials):
            arch = space.sample(rng)
            e = objective(arch)
            trials.append(_trial(i, arch, e, objective.score(e)))
            bar.update(1)
    return SearchResult("random", objective.kind, trials, time.perf_counter() - t0)


def regularized_evolution(space: SearchSpace, objective: Objective, n_trials: int, population: int = 8,
                          sample: int = 4, seed: int = 0, progress: bool = True) -> SearchResult:
    """Aging evolution (Real et al. 2019, AmoebaNet): a population of ``population`` random architectures;
    then, on every step, the best of ``sample`` random members is mutated (one decision changes) and the
    child replaces the *oldest* member, so no architecture survives by luck for long."""
    n_trials, rng = _check_trials(n_trials), random.Random(seed)
    if not 1 <= sample <= population:
        raise ValueError(f"sample={sample} must be between 1 and population={population}")
    trials: list[Trial] = []
    alive: list[Trial] = []
    t0 = time.perf_counter()
    with _bar(n_trials, "evolution", progress) as bar:
        for i in range(n_trials):
            if i < population:
                arch, parent = space.sample(rng), None
            else:
                parent = max(rng.sample(alive, sample), key=lambda t: t.score)
                arch = space.mutate(parent.arch, rng)
            e = objective(arch)
            trial = _trial(i, arch, e, objective.score(e),
                           **({"parent": parent.number} if parent is not None else {}))
            trials.append(trial)
            alive.append(trial)
            if len(alive) > population:
                alive.pop(0)          # the oldest dies, however good it was
            bar.update(1)
    return SearchResult("evolution", objective.kind, trials, time.perf_counter() - t0,
                        {"population": population, "sample": sample})


def reinforce(space: SearchSpace, objective: Objective, n_trials: int, lr: float = 0.15,
              baseline_decay: float = 0.8, seed: int = 0, progress: bool = True) -> SearchResult:
    """A REINFORCE controller (Williams 1992; as NAS, Zoph & Le 2017): a policy over each decision's
    values, nudged towards the choices of architectures that scored above a running baseline.

    Zoph & Le's controller is an RNN, so a choice can depend on the previous ones; ours keeps one
    independent softmax per decision, which is enough for a space whose decisions are stage-wise."""
    n_trials = _check_trials(n_trials)
    gen = torch.Generator().manual_seed(seed)
    logits = [torch.zeros(len(v), requires_grad=True) for v in space.decisions.values()]
    opt = torch.optim.Adam(logits, lr=lr)
    baseline: float | None = None
    scale: float | None = None
    trials: list[Trial] = []
    t0 = time.perf_counter()
    with _bar(n_trials, "REINFORCE", progress) as bar:
        for i in range(n_trials):
            probs = [F.softmax(l, dim=0) for l in logits]
            idx = [int(torch.multinomial(p.detach(), 1, generator=gen)) for p in probs]
            arch = space.decode(idx)
            e = objective(arch)
            score = objective.score(e)
            baseline = score if baseline is None else baseline_decay * baseline + (1 - baseline_decay) * score
            advantage = score - baseline
            # divided by the advantages' running scale, so the step size does not depend on the reward's
            # units (accuracies differ by a few points at low fidelity; a toy space's by tenths)
            scale = abs(advantage) if scale is None else baseline_decay * scale + (1 - baseline_decay) * abs(advantage)
            log_prob = sum(torch.log(p[j]) for p, j in zip(probs, idx))
            opt.zero_grad()
            (-(advantage / (scale + 1e-8)) * log_prob).backward()
            opt.step()
            trials.append(_trial(i, arch, e, score, advantage=advantage))
            bar.update(1)
    policy = {n: dict(zip(map(str, v), F.softmax(l.detach(), 0).tolist()))
              for (n, v), l in zip(space.decisions.items(), logits)}
    return SearchResult("reinforce", objective.kind, trials, time.perf_counter() - t0, {"policy": policy})


def optuna_search(space: SearchSpace, objective: Objective, n_trials: int, sampler: str = "tpe",
                  seed: int | None = 0, storage: str | None = None, study_name: str = "lcnn-nas",
                  progress: bool = True) -> SearchResult:
    """The same search with Optuna, the production engine: ``sampler="tpe"`` (Bergstra et al. 2011,
    Optuna's default) maximises the objective's score; ``sampler="nsga2"`` (Deb et al. 2002) searches
    accuracy (max) and measured latency (min) at once and keeps their Pareto front.

    ``storage`` (e.g. ``"sqlite:///nas.db"``, or a PostgreSQL/MySQL URL for a cluster) keeps the study in
    a database: a run that is interrupted resumes where it stopped (finished trials are kept, and only
    ``n_trials`` minus those are run), and several processes given the same storage and study name
    search it together (``python -m lcnn_lab nas-worker``)."""
    import optuna
    n_trials = _check_trials(n_trials)
    if sampler not in ("tpe", "nsga2"):
        raise ValueError(f"sampler={sampler!r} must be 'tpe' or 'nsga2'")
    multi = sampler == "nsga2"
    if multi and objective.kind != "latency":
        raise ValueError("NSGA-II searches accuracy and latency together: use Objective('latency')")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    samp = (optuna.samplers.TPESampler(seed=seed) if not multi
            else optuna.samplers.NSGAIISampler(seed=seed, population_size=8))
    study = optuna.create_study(study_name=study_name, storage=storage, sampler=samp, load_if_exists=True,
                                directions=["maximize", "minimize"] if multi else ["maximize"])
    if len(study.directions) != (2 if multi else 1):
        raise ValueError(f"the study {study_name!r} in this storage was created with "
                         f"{len(study.directions)} objective(s); sampler={sampler!r} needs {2 if multi else 1}: "
                         f"use another study name")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    todo = max(0, n_trials - len(done))
    worker = worker_name()

    def run(trial: "optuna.Trial"):
        arch = {n: trial.suggest_categorical(n, list(v)) for n, v in space.decisions.items()}
        e = objective(arch)
        trial.set_user_attr("evaluation", dataclasses.asdict(e))
        trial.set_user_attr("score", objective.score(e))
        trial.set_user_attr("worker", worker)
        return (e.accuracy, e.latency_ms) if multi else objective.score(e)

    t0 = time.perf_counter()
    # several workers share the study: each stops once the study (not the worker) has n_trials finished
    stop = optuna.study.MaxTrialsCallback(n_trials, states=(optuna.trial.TrialState.COMPLETE,))
    with _bar(todo, f"optuna {sampler}", progress) as bar:
        study.optimize(run, n_trials=todo, callbacks=[lambda s, t: bar.update(1), stop])
    return _from_study(study, space, "optuna-" + sampler, objective.kind, time.perf_counter() - t0)


def worker_name() -> str:
    """``host:pid``, recorded with every Optuna trial so a shared study shows who ran what."""
    return f"{os.uname().nodename}:{os.getpid()}"


def _from_study(study, space: SearchSpace, strategy: str, objective: str, seconds: float) -> SearchResult:
    import optuna
    trials = []
    for t in sorted(study.trials, key=lambda t: t.number):
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        e = Evaluation(**t.user_attrs["evaluation"])
        arch = space.check({n: t.params[n] for n in space.decisions})
        trials.append(_trial(len(trials), arch, e, t.user_attrs["score"], worker=t.user_attrs.get("worker"),
                             optuna_number=t.number))
    return SearchResult(strategy, objective, trials, seconds, {"study": study.study_name})


# ----------------------------------------------------------------------------------------------
# A differentiable search: DARTS's mixed operation on nas_net's skeleton

# (op, k) candidates of the supernet's stages; each stage keeps two convolutions at width 1.0
DARTS_CANDIDATES: tuple[tuple[str, int], ...] = (("conv", 3), ("conv", 5), ("sep", 3), ("sep", 5), ("ghost", 3))


class MixedOp(nn.Module):
    """Σ_i softmax(α)_i · op_i(x): every candidate runs, weighted by the stage's architecture weights α
    (DARTS, Liu et al. 2019, Eq. 2). α is shared by the stage's convolutions and lives in the supernet."""

    def __init__(self, c_in: int, c_out: int, alpha: nn.Parameter):
        super().__init__()
        self.alpha = alpha
        self.ops = nn.ModuleList(make_conv(c_in, c_out, k, **OPS[op], norm_layer=nn.BatchNorm2d,
                                           act_layer=nn.GELU) for op, k in DARTS_CANDIDATES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.softmax(self.alpha, dim=0)
        return sum(wi * op(x) for wi, op in zip(w, self.ops))


class SuperNet(nn.Module):
    """nas_net's skeleton at width 1.0 and depth 2 with a :class:`MixedOp` for every convolution."""

    def __init__(self):
        super().__init__()
        w0, *ws = CIFAR_NET_WIDTHS
        self.alphas = nn.ParameterList(nn.Parameter(1e-3 * torch.randn(len(DARTS_CANDIDATES))) for _ in ws)
        self.stem = nn.Sequential(ConvKxK(3, w0, 3), nn.BatchNorm2d(w0), nn.GELU())
        c_in = w0
        for i, c_out in enumerate(ws, start=1):
            a = self.alphas[i - 1]
            self.add_module(f"stage{i}", nn.Sequential(OrderedDict(
                conv1=MixedOp(c_in, c_out, a), pool=nn.MaxPool2d(2), norm1=nn.BatchNorm2d(c_out), act1=nn.GELU(),
                conv2=MixedOp(c_out, c_out, a), norm2=nn.BatchNorm2d(c_out), act2=nn.GELU())))
            c_in = c_out
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c_in, NUM_CLASSES)

    forward = NASNet.forward

    def weights(self) -> list[nn.Parameter]:
        alpha_ids = {id(a) for a in self.alphas}
        return [p for p in self.parameters() if id(p) not in alpha_ids]

    def derived(self) -> Arch:
        """The discrete architecture: each stage's strongest candidate (width 1.0, depth 2)."""
        arch = dict(BASELINE)
        for i, a in enumerate(self.alphas, start=1):
            arch[f"op{i}"], arch[f"k{i}"] = DARTS_CANDIDATES[int(a.argmax())]
        return arch


def darts(budget: str | None = None, epochs: int = 2, arch_lr: float = 3e-3, lr: float = 0.05,
          latency_weight: float = 0.0, table: LatencyTable | None = None, seed: int = 0,
          progress: bool = True) -> dict:
    """First-order DARTS (Liu et al. 2019) on :class:`SuperNet`: alternate a step on the weights (SGD, one
    half of the training subset) with a step on the architecture weights α (Adam, the other half).

    The training subset is the low fidelity's (quick: 5,000 images, split in two). ``latency_weight``
    > 0 adds FBNet's hardware term (Wu et al. 2019): ``λ · log`` of the expected latency
    ``Σ_stages Σ_i softmax(α)_i · LUT_i``, with the entries measured by ``table``.
    Returns ``{"arch", "alphas" (per stage, softmaxed), "history", "seconds"}``.
    """
    cfg = fidelity_config("low", budget)
    config.seed_everything(seed)
    threads = config.set_threads(None)
    gen = torch.Generator().manual_seed(seed)
    images, labels = device_data("train", torch.device("cpu"))
    idx = fixed_subset(len(labels), cfg.train_images, seed)
    half = len(idx) // 2
    parts = (idx[:half], idx[half:])
    net = SuperNet()
    opt_w = torch.optim.SGD(net.weights(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt_a = torch.optim.Adam(net.alphas.parameters(), lr=arch_lr, betas=(0.5, 0.999), weight_decay=1e-3)
    lat = None
    if latency_weight > 0:
        table = table or LatencyTable()
        w0, *ws = CIFAR_NET_WIDTHS
        ins = (w0, *ws[:-1])
        lat = torch.tensor([[table.stage_ms(i, ins[i - 1], ws[i - 1], op, k, 2) for op, k in DARTS_CANDIDATES]
                            for i in (1, 2, 3)])
    batch = 64
    steps = max(1, half // batch) * epochs
    history = []
    t0 = time.perf_counter()
    net.train()
    with tqdm(total=steps, desc="DARTS", unit="step", disable=not progress, leave=False) as bar:
        for step in range(steps):
            xs = []
            for part in parts:
                b = part[torch.randint(len(part), (batch,), generator=gen)]
                xs.append((normalize(images[b]), labels[b]))
            (xw, yw), (xa, ya) = xs
            for g in opt_w.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            opt_w.zero_grad()
            F.cross_entropy(net(xw), yw).backward()
            nn.utils.clip_grad_norm_(net.weights(), 5.0)
            opt_w.step()
            opt_a.zero_grad()
            loss_a = F.cross_entropy(net(xa), ya)
            if lat is not None:
                probs = torch.stack([F.softmax(a, 0) for a in net.alphas])
                loss_a = loss_a + latency_weight * torch.log((probs * lat).sum())
            loss_a.backward()
            opt_a.step()
            if step % max(1, steps // 20) == 0 or step == steps - 1:
                history.append({"step": step, "loss": loss_a.item(),
                                "alphas": [F.softmax(a.detach(), 0).tolist() for a in net.alphas]})
            bar.update(1)
    return {"arch": net.derived(), "alphas": [F.softmax(a.detach(), 0).tolist() for a in net.alphas],
            "candidates": [f"{op}{k}" for op, k in DARTS_CANDIDATES], "history": history,
            "seconds": time.perf_counter() - t0, "threads": threads, "train_images": int(cfg.train_images),
            "latency_weight": latency_weight}


# ----------------------------------------------------------------------------------------------
# Running a search under the budget, kept in the results store

STRATEGIES: dict[str, Callable[..., SearchResult]] = {
    "random": random_search,
    "evolution": regularized_evolution,
    "reinforce": reinforce,
    "optuna-tpe": lambda space, obj, n, seed=0, progress=True: optuna_search(space, obj, n, "tpe", seed,
                                                                             progress=progress),
    "optuna-nsga2": lambda space, obj, n, seed=0, progress=True: optuna_search(space, obj, n, "nsga2", seed,
                                                                               progress=progress),
}


def darts_search(budget: str | None = None, epochs: int = 2, latency_weight: float = 0.0, seed: int = 0,
                 store: ResultsStore | None = None, progress: bool = True) -> dict:
    """:func:`darts` under ``budget``, kept in the results store (its key: the budget's low-fidelity
    training, the epochs, the latency weight and the seed). The derived architecture still has to be
    trained on its own: ``evaluate(result["arch"], "high")``."""
    store = store if store is not None else ResultsStore()
    cfg = fidelity_config("low", budget)
    from .data import data_source
    key = make_key("nas", strategy="darts", epochs=epochs, latency_weight=latency_weight, train=cfg.key(),
                   seed=seed, candidates=[list(c) for c in DARTS_CANDIDATES], data=data_source().kind,
                   device=config.get_device().type)

    def compute() -> tuple[dict, dict]:
        out = darts(cfg.budget, epochs=epochs, latency_weight=latency_weight, seed=seed, progress=progress)
        return out, config.provenance(cfg.budget, out["threads"])

    entry = store.get_or_compute(key, compute)
    return {**entry["metrics"], "provenance": entry["provenance"]}


# The searches chapter 06 runs (strategy, objective), each for the same number of trials
CHAPTER_SEARCHES: tuple[tuple[str, str], ...] = (
    ("random", "accuracy"), ("evolution", "accuracy"), ("reinforce", "accuracy"), ("optuna-tpe", "accuracy"),
    ("random", "latency"), ("evolution", "latency"), ("optuna-tpe", "latency"), ("optuna-nsga2", "latency"))


def search(strategy: str, n_trials: int, objective: str = "accuracy", fidelity: str = "low",
           budget: str | None = None, seed: int = 0, store: ResultsStore | None = None,
           progress: bool = True) -> SearchResult:
    """Run ``strategy`` ("random", "evolution", "reinforce", "optuna-tpe", "optuna-nsga2") for
    ``n_trials`` architectures of :data:`SPACE`, or read the search from the results store.

    ``objective``: "accuracy", or "latency" (MnasNet's accuracy-and-latency reward; NSGA-II's two
    objectives). Each candidate is trained at ``fidelity`` through the store, so two searches that
    propose the same architecture train it once.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} must be one of {', '.join(map(repr, STRATEGIES))}")
    if strategy == "optuna-nsga2" and objective != "latency":
        raise ValueError("optuna-nsga2 searches accuracy and latency together: use objective='latency'")
    n_trials = _check_trials(n_trials)
    store = store if store is not None else ResultsStore()
    cfg = fidelity_config(fidelity, budget)
    from .data import data_source
    key = make_key("nas", strategy=strategy, n_trials=n_trials, objective=objective, fidelity=fidelity,
                   train=cfg.key(), seed=seed, space=SPACE.signature(), data=data_source().kind,
                   device=config.get_device().type)

    def compute() -> tuple[dict, dict]:
        obj = Objective(objective, fidelity, cfg.budget, store)
        t0 = time.perf_counter()
        result = STRATEGIES[strategy](SPACE, obj, n_trials, seed=seed, progress=progress)
        result.seconds = time.perf_counter() - t0
        if obj.target_ms is not None:
            result.info["target_ms"] = obj.target_ms
        return result.to_dict(), {**config.provenance(cfg.budget, 1), "latency_threads": 1}

    entry = store.get_or_compute(key, compute)
    result = SearchResult.from_dict(entry["metrics"])
    result.info["provenance"] = entry["provenance"]
    return result
