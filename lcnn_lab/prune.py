"""Pruning: zero or remove the weights a network needs least (li2023 §2, long2024 §4.1).

The surveys split pruning by what is removed:

* **Unstructured** (fine-grained) pruning zeroes single weights, the smallest in magnitude first
  (Han et al. 2015, "Learning both weights and connections"; li2023 §2.2). Every tensor keeps its
  shape, so dense storage and dense kernels gain nothing: only a sparse format (values + indices,
  :func:`storage_bytes`) or sparse hardware can profit (li2023 §2.2, long2024 §4.1).
* **Structured** (filter) pruning removes whole output channels of a convolution, and with them
  the following BatchNorm's channels and the next layer's input channels (Li et al. 2017, "Pruning
  Filters for Efficient ConvNets"; li2023 §2.1). The network physically shrinks: fewer parameters,
  fewer MACs, a smaller file and a faster forward pass on ordinary hardware.

Which weights or filters matter least is a *criterion*, written as a small strategy object (after
Torch-Pruning's ``Importance``), so a notebook can try its own in a few lines::

    class RandomImportance(lab.prune.Importance):
        def __call__(self, group):                 # one score per filter of group.conv
            return torch.rand(group.conv.out_channels)

    smaller = lab.prune.prune_filters(model, 0.5, importance=RandomImportance())

Pruned weights stay pruned during fine-tuning: :func:`prune_unstructured` masks them with
``torch.nn.utils.prune``, which keeps the dense parameter ``weight_orig`` and a 0/1 buffer
``weight_mask`` and recomputes ``weight = weight_orig * weight_mask`` before every forward pass, so
no optimizer step can bring a pruned weight back. :func:`remove_masks` makes the zeros permanent.
"""
from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import prune as torch_prune

__all__ = [
    # criteria
    "Importance", "MagnitudeImportance", "BNScaleImportance",
    # unstructured
    "prune_unstructured", "remove_masks", "masked_weight", "copy_mask", "sparsity", "sparsity_report",
    "LayerSparsity", "SparsityReport",
    # structured
    "FilterGroup", "filter_groups", "prune_filters", "slim",
    # analysis
    "sensitivity_scan", "storage_bytes", "break_even_sparsity", "STORAGE_FORMATS",
]

SCOPES = ("layer", "global")


# ----------------------------------------------------------------------------------------------
# Checks, in the learner's words

def _check_amount(amount: float, what: str = "weights") -> float:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount <= 1:
        raise ValueError(f"amount={amount!r} must be a fraction in [0, 1]: the share of {what} to prune "
                         f"(0.5 = half of them)")
    return float(amount)


def _check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} must be 'layer' (prune the same fraction of every layer) "
                         f"or 'global' (rank all layers together)")
    return scope


def _weight_layers(model: nn.Module, layers: Iterable[str] | None = None) -> list[tuple[str, nn.Module]]:
    """(name, module) of every conv and linear layer, or of the named ones, in model order."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if layers is None:
        return found
    if isinstance(layers, str):
        layers = [layers]
    wanted, known = list(layers), dict(found)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"no conv or linear layer named {', '.join(map(repr, unknown))}; "
                         f"the model has {', '.join(known) or 'none'}")
    return [(n, known[n]) for n in wanted]


# ----------------------------------------------------------------------------------------------
# Importance criteria (strategy objects, after Torch-Pruning)

@dataclass(frozen=True, eq=False)
class FilterGroup:
    """The layers one convolution's output channels tie together (a "dependency group").

    Removing filter i of ``conv`` removes channel i of every BatchNorm in ``norms`` and input
    channel i of every layer in ``consumers`` (li2023 §2.1: "when one channel is pruned, the
    corresponding channels are also removed").
    """
    name: str                                      # qualified name of the conv whose filters are ranked
    conv: nn.Conv2d                                # output channel i = filter i
    norms: tuple[nn.BatchNorm2d, ...]              # BatchNorms on that output
    consumers: tuple[tuple[str, nn.Module], ...]   # (name, conv or linear) reading that output

    def __repr__(self) -> str:
        used_by = ", ".join(n for n, _ in self.consumers)
        return (f"FilterGroup({self.name}: {self.conv.out_channels} filters, "
                f"{len(self.norms)} BatchNorm, read by {used_by})")


class Importance:
    """A pruning criterion. Low scores are pruned first.

    * ``importance(group) -> Tensor[c_out]``: one score per filter of ``group.conv`` (structured);
    * ``importance.weights(module) -> Tensor`` shaped like ``module.weight``: one score per weight
      (unstructured). Criteria without a per-weight meaning may leave it unimplemented.

    Read a layer's weights with :func:`masked_weight`: for a layer pruned before, that is the current
    masked weight, whereas ``module.weight`` is only refreshed by a forward pass.
    """

    def __call__(self, group: FilterGroup) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not score filters")

    def weights(self, module: nn.Module) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not score single weights; "
                                  f"use it with prune_filters")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MagnitudeImportance(Importance):
    """Magnitude: ``||filter||_p`` per filter (Li et al. 2017 use p=1), ``|w|`` per weight (Han et al. 2015).

    Li et al. 2017 rank the filters of each layer by "the sum of the absolute weights" (li2023 §2.1),
    i.e. the L1 norm over ``(c_in/g, kh, kw)``. Raw norms grow with a layer's fan-in, so across
    layers (``scope="global"``) they favour pruning the layers with few inputs; ``normalize=True``
    divides each layer's scores by their mean, so a global ranking compares *relative* importance.
    For single weights every p gives the same ranking, so ``weights`` is just ``|w|``.
    """

    def __init__(self, p: float = 1, normalize: bool = False):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or p <= 0:
            raise ValueError(f"p={p!r} must be a positive number: 1 for the L1 norm, 2 for L2")
        self.p, self.normalize = p, normalize

    def __call__(self, group: FilterGroup) -> torch.Tensor:
        w = masked_weight(group.conv).detach().float().flatten(1)   # (c_out, c_in/g * kh * kw)
        score = torch.linalg.vector_norm(w, ord=self.p, dim=1)  # (c_out,)
        return score / score.mean().clamp_min(1e-12) if self.normalize else score

    def weights(self, module: nn.Module) -> torch.Tensor:
        return masked_weight(module).detach().abs()

    def __repr__(self) -> str:
        return f"MagnitudeImportance(p={self.p}{', normalize=True' if self.normalize else ''})"


class BNScaleImportance(Importance):
    """Network slimming: ``|gamma|`` of the BatchNorm after the conv (Liu et al. 2017; li2023 §2.1).

    BatchNorm multiplies channel i by gamma_i, so a channel with gamma near 0 contributes little to
    what follows. Liu et al. train with an L1 penalty on gamma to push many of them to 0, then prune
    the smallest globally. The scale is comparable across layers, so ``scope="global"`` fits it.
    """

    def __call__(self, group: FilterGroup) -> torch.Tensor:
        if not group.norms:
            raise ValueError(f"{group.name} has no BatchNorm after it, so BNScaleImportance has no "
                             f"gamma to rank its filters by; use MagnitudeImportance for this layer")
        return group.norms[0].weight.detach().float().abs()


def _scores(importance: Importance, group: FilterGroup) -> torch.Tensor:
    s = importance(group)
    if not isinstance(s, torch.Tensor) or s.shape != (group.conv.out_channels,):
        raise ValueError(f"{importance!r} returned {getattr(s, 'shape', type(s).__name__)} for "
                         f"{group.name}; it must return one score per filter, shape "
                         f"({group.conv.out_channels},)")
    return s.detach().float().cpu()


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` lowest scores; ties go to the earlier index (a stable sort), so pruning
    the same model twice prunes the same weights."""
    return torch.sort(scores, stable=True).indices[:k]


# ----------------------------------------------------------------------------------------------
# Unstructured pruning: masks that stay applied (torch.nn.utils.prune)

def _mask(module: nn.Module) -> torch.Tensor | None:
    """The 0/1 mask torch.nn.utils.prune keeps for ``module.weight``, or None if it has none."""
    return getattr(module, "weight_mask", None)


def masked_weight(module: nn.Module) -> torch.Tensor:
    """The weight a layer computes with: ``weight_orig * weight_mask`` if it is pruned, else ``weight``.

    torch.nn.utils.prune recomputes ``module.weight`` only before each forward pass, so right after
    an optimizer step or ``load_state_dict`` it still holds the previous values; this function
    computes it from the current ones. The result keeps its autograd history (``.detach()`` it to
    only read it).
    """
    mask = _mask(module)
    if mask is None:
        return module.weight
    return module.weight_orig * mask.to(module.weight_orig.dtype)


def _detach_weight(module: nn.Module, inputs: Any, output: Any) -> None:
    # Forward hook. torch's pruning leaves `weight` (= weight_orig * weight_mask) in the module as a
    # tensor with autograd history, which copy.deepcopy refuses to copy. Autograd keeps its own
    # reference for the backward pass, so between passes a detached tensor is enough.
    if _mask(module) is not None:
        module.weight = module.weight.detach()


def _set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Prune ``module.weight`` with a 0/1 ``mask`` through torch.nn.utils.prune (in place).

    On a layer that is already pruned, torch multiplies the new mask into the old one.
    """
    w = masked_weight(module)
    torch_prune.custom_from_mask(module, "weight", mask.to(device=w.device, dtype=w.dtype))
    _detach_weight(module, None, None)
    if _detach_weight not in module._forward_hooks.values():
        module.register_forward_hook(_detach_weight)


def _unmask(module: nn.Module) -> None:
    """Drop ``module``'s mask and hooks; ``module.weight`` becomes a parameter holding the zeros."""
    torch_prune.remove(module, "weight")   # weight = weight_orig * weight_mask, made permanent
    for key, hook in list(module._forward_hooks.items()):
        if hook is _detach_weight:
            del module._forward_hooks[key]


def copy_mask(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Prune ``dst.weight`` with the mask of ``src``, if ``src`` is pruned (in place; returns ``dst``).

    For code that replaces a pruned layer by a new one with the same weight shape, as
    :mod:`lcnn_lab.quant` does with its fake-quantized layers: the new layer gets a copy of the mask,
    so its pruned weights stay zero while it trains.
    """
    mask = _mask(src)
    if mask is None:
        return dst
    if dst.weight.shape != mask.shape:
        raise ValueError(f"cannot copy a mask of shape {tuple(mask.shape)} onto a weight of shape "
                         f"{tuple(dst.weight.shape)}: both layers must have the same weight shape")
    _set_mask(dst, mask.detach().clone())
    return dst


def remove_masks(model: nn.Module) -> nn.Module:
    """Make the pruning permanent (in place): drop the masks and hooks, keep the zeros.

    Calls ``torch.nn.utils.prune.remove`` on every pruned layer, so ``weight`` is an ordinary
    parameter again, equal to ``weight_orig * weight_mask``. The model's state dict then loads into
    an unpruned model, but further training can make the pruned weights nonzero again.
    """
    for module in model.modules():
        if _mask(module) is not None:
            _unmask(module)
    return model


def prune_unstructured(model: nn.Module, amount: float, scope: str = "layer",
                       layers: Iterable[str] | None = None,
                       importance: Importance | None = None) -> nn.Module:
    """A copy of ``model`` with the smallest-magnitude weights zeroed (Han et al. 2015; li2023 §2.2).

    Args:
        amount: the sparsity to reach, a fraction in [0, 1]: exactly ``round(amount * n)`` of the
            ``n`` chosen weights end up zero (ties broken by position, so the result is repeatable).
        scope: ``"layer"`` prunes that fraction of every layer; ``"global"`` ranks the weights of
            all chosen layers together, so layers with many small weights lose more.
        layers: names of the conv/linear layers to prune (default: all of them, head included).
            Only weights are pruned; biases and BatchNorm parameters are kept.
        importance: the criterion, scoring each weight (default :class:`MagnitudeImportance`: |w|).

    The pruned weights are held at zero by ``torch.nn.utils.prune`` (see the module docstring), so
    fine-tuning with :func:`lcnn_lab.train.train` keeps them zero. Pruning a pruned model again only
    adds zeros: its masked weights are always pruned first, and an ``amount`` below a layer's
    current masked fraction raises ``ValueError``. The original model is untouched.
    """
    amount = _check_amount(amount)
    _check_scope(scope)
    importance = importance or MagnitudeImportance()
    model = copy.deepcopy(model)
    targets = _weight_layers(model, layers)
    if not targets:
        raise ValueError(f"{type(model).__name__} has no conv or linear layer to prune")
    scores = []
    for name, m in targets:
        s = importance.weights(m).detach().float().flatten().cpu()
        if s.numel() != m.weight.numel():
            raise ValueError(f"{importance!r} scored {s.numel()} weights of {name}, which has "
                             f"{m.weight.numel()}")
        old = _mask(m)
        if old is not None:   # already pruned: rank first, so pruning never un-prunes
            s = torch.where(old.flatten().cpu() == 0, torch.tensor(-math.inf), s)
        scores.append(s)

    def k_of(n: int) -> int:
        return round(amount * n)

    if scope == "layer":
        chunks = [(s, k_of(s.numel())) for s in scores]
        for (name, m), (s, k) in zip(targets, chunks):
            _check_not_unpruning(name, int(torch.isinf(s).sum()), k, s.numel(), amount)
    else:
        flat = torch.cat(scores)
        k = k_of(flat.numel())
        _check_not_unpruning("the chosen layers", int(torch.isinf(flat).sum()), k, flat.numel(), amount)
        chunks = [(flat, k)]

    masks = []
    for s, k in chunks:
        mask = torch.ones_like(s)
        mask[_lowest(s, k)] = 0
        masks.append(mask)
    if scope == "global":
        masks = list(torch.split(masks[0], [s.numel() for s in scores]))
    for (_, m), mask in zip(targets, masks):
        _set_mask(m, mask.view_as(m.weight))
    return model


def _check_not_unpruning(where: str, masked: int, k: int, n: int, amount: float) -> None:
    if masked > k:
        raise ValueError(f"{where} is already {masked / n:.1%} pruned; amount={amount} asks for "
                         f"{k / n:.1%}, and pruning only adds zeros (start from the unpruned model)")


@dataclass(frozen=True)
class LayerSparsity:
    """Zero weights of one conv or linear layer."""
    name: str
    zeros: int      # weights exactly 0
    total: int      # weights in the layer (biases not included)

    @property
    def sparsity(self) -> float:
        """Fraction of the layer's weights that are zero."""
        return self.zeros / self.total if self.total else 0.0


@dataclass(frozen=True)
class SparsityReport:
    """Per-layer and overall sparsity of a model's conv and linear weights."""
    layers: tuple[LayerSparsity, ...]

    @property
    def zeros(self) -> int:
        return sum(layer.zeros for layer in self.layers)

    @property
    def total(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """Zero weights / all weights of the listed layers (biases and BatchNorm not counted)."""
        return self.zeros / self.total if self.total else 0.0

    def by_layer(self) -> dict[str, float]:
        """Layer name -> sparsity, e.g. for a bar chart."""
        return {layer.name: layer.sparsity for layer in self.layers}

    def __str__(self) -> str:
        width = max([len(layer.name) for layer in self.layers] + [5])
        rows = [f"{'layer':<{width}}  {'weights':>9}  {'zeros':>9}  sparsity"]
        rows += [f"{layer.name:<{width}}  {layer.total:>9,}  {layer.zeros:>9,}  {layer.sparsity:8.1%}"
                 for layer in self.layers]
        rows.append(f"{'total':<{width}}  {self.total:>9,}  {self.zeros:>9,}  {self.sparsity:8.1%}")
        return "\n".join(rows)


def sparsity_report(model: nn.Module, layers: Iterable[str] | None = None) -> SparsityReport:
    """Zeros per conv/linear weight tensor (all layers, or the named ones)."""
    return SparsityReport(tuple(
        LayerSparsity(name, int((masked_weight(m) == 0).sum()), m.weight.numel())
        for name, m in _weight_layers(model, layers)))


def sparsity(model: nn.Module, layers: Iterable[str] | None = None) -> float:
    """Fraction of conv and linear *weights* that are exactly zero (biases and BatchNorm excluded).

    The share of all parameters that are zero is ``1 - count_params(model, nonzero=True) /
    count_params(model)`` (:mod:`lcnn_lab.profile`).
    """
    return sparsity_report(model, layers).sparsity


# ----------------------------------------------------------------------------------------------
# Structured pruning: find which layers a conv's channels tie together

# Layers that keep the channel count and treat channels independently: channel i of their output
# depends only on channel i of their input, so a removed channel can simply be skipped.
_CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh,
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool2d,
)
_CHANNELWISE_FUNCTIONS = {
    torch.flatten, torch.relu, F.relu, F.gelu, F.silu, F.max_pool2d, F.avg_pool2d,
    F.adaptive_max_pool2d, F.adaptive_avg_pool2d, operator.mul, operator.truediv, torch.mul,
}
_CHANNELWISE_METHODS = {"flatten", "relu", "contiguous", "mul", "div"}


class _LeafTracer(fx.Tracer):
    # Every module without children (ConvKxK, ChannelShuffle, ...) is one node of the graph: the
    # dependency analysis needs modules, not the operations inside them.
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return next(iter(m.children()), None) is None


def _trace(model: nn.Module) -> fx.Graph:
    try:
        return _LeafTracer().trace(model)
    except Exception as err:  # fx fails on data-dependent control flow; say what that means
        raise ValueError(f"filter pruning needs to follow {type(model).__name__}'s data flow with "
                         f"torch.fx, which failed ({type(err).__name__}: {err})") from None


def _only_node_input(node: fx.Node) -> bool:
    """True if ``node`` has exactly one tensor input (the others are plain numbers or settings)."""
    return len(node.all_input_nodes) == 1


def _follow(node: fx.Node, channels: int, modules: dict[str, nn.Module]):
    """Where the ``channels`` output channels of ``node`` go: (norms, consumers), or a reason string."""
    norms: list[nn.BatchNorm2d] = []
    consumers: list[tuple[str, nn.Module]] = []
    todo, seen = list(node.users), set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_module":
            m = modules[n.target]
            if isinstance(m, nn.BatchNorm2d) and m.num_features == channels:
                norms.append(m)
                todo += n.users
            elif isinstance(m, _CHANNELWISE_MODULES):
                todo += n.users
            elif isinstance(m, nn.Conv2d) and m.in_channels == channels:
                if m.groups != 1:
                    return f"{n.target} is a group convolution (groups={m.groups})"
                consumers.append((n.target, m))
            elif isinstance(m, nn.Linear) and m.in_features == channels:
                consumers.append((n.target, m))   # after global pooling: one feature per channel
            else:
                return f"it flows into {n.target} ({type(m).__name__})"
        elif n.op == "call_function" and n.target in _CHANNELWISE_FUNCTIONS and _only_node_input(n):
            todo += n.users
        elif n.op == "call_method" and n.target in _CHANNELWISE_METHODS and _only_node_input(n):
            todo += n.users
        else:
            return f"it flows into {n.op} {getattr(n.target, '__name__', n.target)}"
    if not consumers:
        return "nothing reads its output"
    return tuple(norms), tuple(consumers)


def _conv_groups_report(model: nn.Module) -> list[str]:
    return [f"{name} (groups={m.groups})" for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups != 1]


def filter_groups(model: nn.Module) -> list[FilterGroup]:
    """The convolutions whose filters can be removed, each with the layers tied to it.

    Follows the model's data flow (traced with ``torch.fx``) from each conv's output through
    channel-wise layers (BatchNorm, activations, pooling, flatten) to the layers that read it. A conv
    qualifies when it is a standard convolution (groups=1) and every reader is a standard conv or,
    after global pooling, a linear layer. For ``cifar_net`` with groups=1 that is every conv,
    whatever the ``design``; group convolutions, channel shuffles and additions are not handled.
    """
    graph = _trace(model)
    modules = dict(model.named_modules())
    groups = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d):
            continue
        conv = modules[node.target]
        if conv.groups != 1:
            continue
        found = _follow(node, conv.out_channels, modules)
        if isinstance(found, tuple):
            groups.append(FilterGroup(node.target, conv, *found))
    return groups


# ----------------------------------------------------------------------------------------------
# Structured pruning: remove the channels

def _slice(module: nn.Module, name: str, keep: torch.Tensor, dim: int) -> None:
    t = getattr(module, name, None)
    if t is None:
        return
    new = t.detach().index_select(dim, keep.to(t.device)).clone()
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        setattr(module, name, new)   # a buffer: module.__setattr__ keeps it registered


def _slice_weight(layer: nn.Module, keep: torch.Tensor, dim: int) -> None:
    """Keep only entries ``keep`` of ``layer.weight`` along ``dim``, and of its pruning mask if any."""
    mask = _mask(layer)
    if mask is None:
        _slice(layer, "weight", keep, dim)
        return
    _unmask(layer)   # slice the plain weight, then mask it again with the sliced mask
    _slice(layer, "weight", keep, dim)
    _set_mask(layer, mask.index_select(dim, keep.to(mask.device)))


def _remove_channels(group: FilterGroup, keep: torch.Tensor) -> None:
    """Keep only filters ``keep`` of ``group.conv``, and the matching channels of the rest."""
    conv = group.conv
    _slice_weight(conv, keep, 0)
    _slice(conv, "bias", keep, 0)
    conv.out_channels = len(keep)
    for bn in group.norms:
        for name in ("weight", "bias", "running_mean", "running_var"):
            _slice(bn, name, keep, 0)
        bn.num_features = len(keep)
    for _, layer in group.consumers:
        _slice_weight(layer, keep, 1)
        if isinstance(layer, nn.Conv2d):
            layer.in_channels = len(keep)
        else:
            layer.in_features = len(keep)


def prune_filters(model: nn.Module, amount: float, importance: Importance | None = None,
                  scope: str = "layer", layers: Iterable[str] | None = None) -> nn.Module:
    """A smaller copy of ``model`` with the least important filters physically removed.

    Pruning Filters for Efficient ConvNets (Li et al. 2017; li2023 §2.1, long2024 §4.1): each
    removed filter takes its BatchNorm channel and the next layer's input channel with it (see
    :func:`filter_groups`), so the weight tensors really shrink, and so do params, MACs, the saved
    file and (usually) latency. The copy still runs on the same inputs and gives logits (B, 10).

    Args:
        amount: fraction of filters to remove, in [0, 1]; ``round(amount * c_out)`` per layer with
            ``scope="layer"``, ``round(amount * total)`` over all chosen layers with
            ``scope="global"``. Every layer keeps at least one filter.
        importance: the criterion (default ``MagnitudeImportance(p=1)``: the L1 norm of each filter,
            as Li et al.); ``BNScaleImportance()`` gives network slimming (see :func:`slim`).
        scope: ``"layer"`` or ``"global"`` (then use a criterion comparable across layers).
        layers: names of the convs to prune (default: every prunable one, :func:`filter_groups`).

    Models with group or depthwise convolutions raise ``ValueError``: removing one filter of a group
    conv would leave its groups unequal. The original model is untouched. The copy keeps the
    original's ``config``, which now describes the architecture it was pruned *from*.
    """
    amount = _check_amount(amount, "filters")
    _check_scope(scope)
    importance = importance or MagnitudeImportance(p=1)
    grouped = _conv_groups_report(model)
    if grouped:
        config = getattr(model, "config", None)
        raise ValueError(f"filter pruning here supports standard convolutions (groups=1); this model "
                         f"{f'({config}) ' if config is not None else ''}uses group convolutions in "
                         f"{', '.join(grouped[:3])}{' ...' if len(grouped) > 3 else ''}: removing one "
                         f"filter would leave its groups unequal. Prune a groups=1 model, or prune "
                         f"weights with prune_unstructured")
    model = copy.deepcopy(model)
    groups = filter_groups(model)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no convolution whose filters can be removed "
                         f"(each needs a conv or, after global pooling, a linear layer reading it)")
    if layers is not None:
        layers = [layers] if isinstance(layers, str) else list(layers)
        by_name = {g.name: g for g in groups}
        unknown = [n for n in layers if n not in by_name]
        if unknown:
            raise ValueError(f"cannot prune filters of {', '.join(map(repr, unknown))}; the prunable "
                             f"convolutions are {', '.join(by_name)}")
        groups = [by_name[n] for n in layers]

    scores = [_scores(importance, g) for g in groups]   # all scored before anything is removed
    sizes = [len(s) for s in scores]
    if scope == "layer":
        removed = [_lowest(s, min(round(amount * len(s)), len(s) - 1)) for s in scores]
    else:
        flat = torch.cat(scores)
        owner = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor(sizes))
        offset = torch.tensor([0, *sizes]).cumsum(0)
        left, removed_idx = list(sizes), [[] for _ in groups]
        budget = round(amount * len(flat))
        for i in _lowest(flat, len(flat)).tolist():
            if budget == 0:
                break
            g = int(owner[i])
            if left[g] > 1:   # never remove a layer's last filter: the network would be cut in two
                left[g] -= 1
                removed_idx[g].append(i - int(offset[g]))
                budget -= 1
        removed = [torch.tensor(r, dtype=torch.long) for r in removed_idx]
    for g, size, r in zip(groups, sizes, removed):
        drop = torch.zeros(size, dtype=torch.bool)
        drop[r] = True
        _remove_channels(g, torch.nonzero(~drop).flatten())
    return model


def slim(model: nn.Module, amount: float) -> nn.Module:
    """Network slimming's pruning step: remove the filters with the smallest BatchNorm ``|gamma|``,
    ranked globally (Liu et al. 2017; li2023 §2.1). The paper first trains with an L1 penalty on
    gamma; without it, this is simply global pruning by ``BNScaleImportance``."""
    return prune_filters(model, amount, importance=BNScaleImportance(), scope="global")


# ----------------------------------------------------------------------------------------------
# Sensitivity: which layers can lose how much?

def _as_number(result: Any) -> float:
    value = getattr(result, "value", result)   # lcnn_lab.train.Accuracy, or a plain number
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"evaluate_fn returned {result!r}; it must return a number or an object "
                         f"with .value (like lcnn_lab.train.evaluate's Accuracy)")
    return float(value)


def sensitivity_scan(model: nn.Module, amounts: Sequence[float],
                     evaluate_fn: Callable[[nn.Module], Any], granularity: str = "weight",
                     layers: Iterable[str] | None = None,
                     importance: Importance | None = None) -> dict[str, list[tuple[float, float]]]:
    """Prune one layer at a time (on a copy) at each amount and evaluate: layer -> [(amount, score)].

    The layer-by-layer sensitivity analysis of Li et al. 2017 and Han et al. 2015 (li2023 §2): layers
    whose accuracy falls early are sensitive and should be pruned less. ``granularity`` is
    ``"weight"`` (:func:`prune_unstructured`) or ``"filter"`` (:func:`prune_filters`);
    ``evaluate_fn(model)`` returns a number or an ``Accuracy`` (e.g.
    ``lambda m: lab.train.evaluate(m, n=1000)``). ``model`` itself is never modified.
    """
    if granularity not in ("weight", "filter"):
        raise ValueError(f"granularity={granularity!r} must be 'weight' (unstructured) or 'filter'")
    for a in amounts:
        _check_amount(a)
    if layers is None:
        layers = ([n for n, _ in _weight_layers(model)] if granularity == "weight"
                  else [g.name for g in filter_groups(model)])
    results: dict[str, list[tuple[float, float]]] = {}
    for name in ([layers] if isinstance(layers, str) else layers):
        curve = []
        for a in amounts:
            if granularity == "weight":
                pruned = prune_unstructured(model, a, layers=[name], importance=importance)
            else:
                pruned = prune_filters(model, a, importance=importance, layers=[name])
            curve.append((float(a), _as_number(evaluate_fn(pruned))))
        results[name] = curve
    return results


# ----------------------------------------------------------------------------------------------
# Storage: what zeros are worth

# format -> how it stores one weight matrix W (rows = filters, columns = c_in/g * kh * kw)
STORAGE_FORMATS = {
    "dense": "every value: n values",
    "csr": "nonzero values + their column index + one row pointer per row (+1)",
    "coo": "nonzero values + their (row, column) index pair",
    "bitmask": "one bit per weight saying zero or not + the nonzero values",
}


def _matrix_bits(w: torch.Tensor, fmt: str, bits: int, index_bits: int) -> int:
    n, nnz = w.numel(), int(torch.count_nonzero(w))
    rows = w.shape[0] if w.ndim > 1 else 1
    return {"dense": n * bits,
            "csr": nnz * (bits + index_bits) + (rows + 1) * index_bits,
            "coo": nnz * (bits + 2 * index_bits),
            "bitmask": n + nnz * bits}[fmt]


def storage_bytes(model: nn.Module, format: str = "dense", bits: int = 32, index_bits: int = 32) -> int:
    """Bytes to store the model's parameters with conv/linear weights in ``format``.

    A sparse format stores only the nonzero values, but each needs an address (Han et al. 2016,
    Deep Compression, stores 4-8-bit relative indices; long2024 §4): with ``bits``-bit values and
    ``index_bits``-bit indices, each weight tensor, viewed as a matrix with one row per filter, costs

    ========  ==================================================
    dense     n * bits
    csr       nnz * (bits + index_bits) + (rows + 1) * index_bits
    coo       nnz * (bits + 2 * index_bits)
    bitmask   n * 1 + nnz * bits
    ========  ==================================================

    so CSR with 32-bit values and indices only beats dense beyond 50 % sparsity
    (:func:`break_even_sparsity`). Biases and BatchNorm parameters are stored densely. ``dense`` at
    32 bits equals :func:`lcnn_lab.profile.model_size_bytes`. ``torch.Tensor.to_sparse_csr`` uses
    64-bit indices (``index_bits=64``).
    """
    if format not in STORAGE_FORMATS:
        raise ValueError(f"format={format!r} is unknown; choose one of "
                         f"{', '.join(map(repr, STORAGE_FORMATS))}")
    for what, b in (("bits", bits), ("index_bits", index_bits)):
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"{what}={b!r} must be a positive int")
    total, weights = 0, set()
    for _, m in _weight_layers(model):
        w = masked_weight(m).detach()
        total += _matrix_bits(w.flatten(1) if w.ndim > 1 else w, format, bits, index_bits)
        weights.add(id(m.weight_orig if _mask(m) is not None else m.weight))   # the parameter behind it
    total += sum(p.numel() * bits for p in model.parameters() if id(p) not in weights)
    return math.ceil(total / 8)


def break_even_sparsity(format: str = "csr", bits: int = 32, index_bits: int = 32) -> float:
    """Sparsity above which ``format`` is smaller than dense (ignoring CSR's row pointers).

    CSR/COO pay ``index_bits`` (COO: twice) per nonzero: dense ``n b`` = sparse ``nnz (b + i)`` at
    sparsity ``i / (b + i)``; a bitmask pays one bit per weight: break-even at ``1 / b``.
    """
    if format not in STORAGE_FORMATS or format == "dense":
        raise ValueError(f"format={format!r} must be one of 'csr', 'coo', 'bitmask'")
    index = {"csr": index_bits, "coo": 2 * index_bits}.get(format)
    return 1 / bits if format == "bitmask" else index / (bits + index)
