"""Knowledge distillation: a small student learns from a trained teacher (li2023 §5, long2024 §4.4).

Three kinds of knowledge, after li2023 §5's division, each a small :class:`DistillLoss` strategy that a
notebook can subclass in a few lines (as :class:`lcnn_lab.prune.Importance` is for pruning):

* **response-based**, :class:`ResponseKD`: the teacher's softened class probabilities (Hinton et al.
  2015), built on :func:`soft_targets`, li2023's Eq. (6), ``softmax(z / T)``;
* **feature-based**, :class:`FitNet`: an intermediate feature map of the student, through a small
  learned 1×1 regressor, imitates the teacher's (Romero et al. 2015, "hints");
* **relation-based**, :class:`RKD`: the student's embeddings keep the teacher's *distances and angles*
  between the images of a batch (Park et al. 2019).

:func:`distill` trains a student with one of them on top of :func:`lcnn_lab.train.train` (same budget,
data path and recipe; the teacher's outputs are computed once per batch, on the same augmented images,
without gradients) and keeps the result in the results store, keyed by the teacher's weights (its
:func:`~lcnn_lab.trained.state_hash`), the student's model and knobs, the loss and the training config.

    teacher = lab.trained.pretrained("cifar_net", width=2.0)
    result = lab.distill.distill("cifar_net", teacher, lab.distill.ResponseKD(T=4, alpha=0.9), width=0.5)
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import config
from .data import data_source
from .models import create_model, model_knobs
from .results import ResultsStore, key_hash, make_key
from .train import TrainConfig, TrainResult, initialize, train
from .trained import _metrics, _provenance, load_checkpoint, save_checkpoint, state_hash


# ----------------------------------------------------------------------------------------------
# Response-based: the softened softmax and Hinton's loss

def soft_targets(logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """li2023 Eq. (6): ``p_i = exp(z_i / T) / sum_j exp(z_j / T)``. T = 1 is the ordinary softmax; a
    larger T flattens it, so the small probabilities of the wrong classes (how much a cat looks like a
    dog) carry weight: Hinton et al.'s "dark knowledge"."""
    if not T > 0:
        raise ValueError(f"the temperature T={T} must be positive")
    return F.softmax(logits / T, dim=-1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Hinton et al.'s distillation loss, averaged over the batch:

        alpha * T^2 * KL(soft_targets(teacher, T) || soft_targets(student, T))
        + (1 - alpha) * cross_entropy(student, labels)

    ``alpha`` weights the soft (teacher) term, ``1 - alpha`` the hard (label) term. The soft term's
    gradient with respect to the logits scales as 1/T^2; the T^2 factor undoes that, so changing T
    does not silently change the balance with the hard term (Hinton et al. 2015, §2). li2023's
    Eq. (6) defines the softened softmax only and writes no loss, so it has no such factor; nor does
    long2024 §4.4, which describes the loss in words. KL differs from the cross-entropy with the soft
    targets by the teacher's entropy, a constant for the student: the same gradients.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be between 0 (labels only) and 1 (teacher only)")
    if not T > 0:
        raise ValueError(f"the temperature T={T} must be positive")
    hard = F.cross_entropy(student_logits, labels) if alpha < 1 else student_logits.new_zeros(())
    if alpha == 0:
        return hard
    soft = F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.log_softmax(teacher_logits / T, dim=-1),
                    reduction="batchmean", log_target=True)
    return alpha * T * T * soft + (1 - alpha) * hard


# ----------------------------------------------------------------------------------------------
# The strategies

class Outputs(NamedTuple):
    """What a network gave for one batch: its logits, and the feature map a loss asked for (or None)."""
    logits: torch.Tensor
    features: torch.Tensor | None = None


class DistillLoss(nn.Module):
    """A distillation loss: ``loss(student: Outputs, teacher: Outputs, labels) -> scalar``.

    A subclass sets ``layer`` (a module name of the networks, e.g. ``"stage2"``, whose output is
    passed as ``Outputs.features``; None for logits only) and ``forward``. If it has parts to learn (a
    regressor), it builds them in :meth:`setup`, which sees one batch of both networks' outputs; they
    are trained with the student. :meth:`key` names it in the results store: its class and fields.
    """
    layer: str | None = None

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        """Build learnable parts from the shapes of one batch (default: none)."""

    def key(self) -> dict:
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "training"
                  and isinstance(v, (int, float, str, bool, type(None)))}
        return {"loss": type(self).__name__, **fields}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.key().items() if k != 'loss')})"


class ResponseKD(DistillLoss):
    """Hinton et al.'s loss on the logits: :func:`kd_loss` with temperature ``T`` and weight ``alpha``."""

    def __init__(self, T: float = 4.0, alpha: float = 0.9):
        super().__init__()
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), T, alpha)  # checks
        self.T, self.alpha = float(T), float(alpha)

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        return kd_loss(student.logits, teacher.logits, labels, self.T, self.alpha)


class FitNet(DistillLoss):
    """Feature-based (Romero et al. 2015): cross-entropy with the labels plus ``beta`` times the mean
    squared error between the teacher's feature map at ``layer`` and the student's, mapped to the
    teacher's channels by a learned 1×1 convolution (the "regressor"; the maps must have the same
    height and width). FitNets trains the hint first and then distils; one stage with both terms is the
    common simplification, and the one here."""

    def __init__(self, beta: float = 1.0, layer: str = "stage2"):
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"beta={beta} must be zero or positive")
        self.beta, self.layer = float(beta), layer
        self.register_module("regressor", None)     # built by setup(), from the feature maps' widths

    def setup(self, student: Outputs, teacher: Outputs) -> None:
        s, t = student.features, teacher.features
        if s.shape[2:] != t.shape[2:]:
            raise ValueError(f"FitNet needs feature maps of the same size at {self.layer!r}: the student's "
                             f"is {tuple(s.shape[2:])}, the teacher's {tuple(t.shape[2:])}")
        self.regressor = nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False).to(s.device)

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        hint = F.mse_loss(self.regressor(student.features), teacher.features)
        return F.cross_entropy(student.logits, labels) + self.beta * hint


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e)
    positive = d[d > 0]
    return d / (positive.mean() if positive.numel() else 1.0)     # normalised by the mean distance


def _angles(e: torch.Tensor) -> torch.Tensor:
    """Cosine of the angle at j between images i and k, for every triple (i, j, k) of the batch."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)    # diff[j, i] = unit(e_i - e_j)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


class RKD(DistillLoss):
    """Relation-based (Park et al. 2019): cross-entropy with the labels plus ``distance`` times the
    Huber loss between the two networks' normalised pairwise distances of the batch's embeddings,
    plus ``angle`` times the same for the angles of every triple. The embeddings are the outputs of
    ``layer`` (default the global pool, before the classifier), flattened; the two networks' widths
    may differ, since only relations are compared. Park et al.'s weights: 25 and 50."""

    def __init__(self, distance: float = 25.0, angle: float = 50.0, layer: str = "pool"):
        super().__init__()
        if distance < 0 or angle < 0 or distance + angle == 0:
            raise ValueError(f"distance={distance} and angle={angle} must be zero or positive, not both zero")
        self.distance, self.angle, self.layer = float(distance), float(angle), layer

    def forward(self, student: Outputs, teacher: Outputs, labels: torch.Tensor) -> torch.Tensor:
        s, t = student.features.flatten(1), teacher.features.flatten(1).detach()
        loss = F.cross_entropy(student.logits, labels)
        if self.distance:
            loss = loss + self.distance * F.smooth_l1_loss(_pairwise_distances(s), _pairwise_distances(t))
        if self.angle:
            loss = loss + self.angle * F.smooth_l1_loss(_angles(s), _angles(t))
        return loss


# ----------------------------------------------------------------------------------------------
# Training a student

class _Tap:
    """Keeps the output of one named module at each forward pass (a forward hook)."""

    def __init__(self, model: nn.Module, layer: str | None):
        self.value, self.handle = None, None
        if layer is not None:
            modules = dict(model.named_modules())
            if layer not in modules:
                raise ValueError(f"the network has no module {layer!r}; top-level ones: "
                                 + ", ".join(n for n, _ in model.named_children()))
            self.handle = modules[layer].register_forward_hook(lambda m, i, out: setattr(self, "value", out))

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()


class _StudentAndLoss(nn.Module):
    """The student with the loss's learnable parts, so that the trainer's optimiser updates both; its
    forward is the student's, so evaluation sees the student alone."""

    def __init__(self, student: nn.Module, loss: DistillLoss):
        super().__init__()
        self.student, self.loss = student, loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


def distill_key(name: str, knobs: dict, teacher: nn.Module, loss: DistillLoss, cfg: TrainConfig,
                device: torch.device) -> dict:
    return make_key("distill", student=name, knobs=knobs, teacher=state_hash(teacher),
                    teacher_model=str(getattr(teacher, "config", type(teacher).__name__)),
                    loss=loss.key(), train=cfg.key(), data=data_source().kind, device=device.type)


def train_student(student: nn.Module, teacher: nn.Module, loss: DistillLoss,
                  cfg: TrainConfig | None = None, on_progress=None) -> TrainResult:
    """Train ``student`` in place with ``loss`` against ``teacher`` (frozen, in eval mode) under
    ``cfg``; the trainer's recipe otherwise (augmentation, schedule, initialisation)."""
    cfg = (cfg or TrainConfig()).resolved()
    dev = config.get_device(cfg.device)
    teacher = teacher.to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if cfg.channels_last and dev.type != "mps":
        teacher.to(memory_format=torch.channels_last)
    taps = _Tap(student, loss.layer), _Tap(teacher, loss.layer)     # a missing layer fails here, at once
    initialize(student, cfg)

    def criterion(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():             # the teacher: once per batch, on the same augmented images
            t_out = Outputs(teacher(x), taps[1].value)
        s_out = Outputs(model(x), taps[0].value)
        return loss(s_out, t_out, labels)

    try:
        with torch.no_grad():             # one batch's shapes build the loss's learnable parts, if any,
            student.to(dev).eval()        # before the trainer's optimiser collects the parameters
            x = torch.zeros(2, 3, 32, 32, device=dev)
            loss.setup(Outputs(student(x), taps[0].value), Outputs(teacher(x), taps[1].value))
        return train(_StudentAndLoss(student, loss.to(dev)), cfg, on_progress=on_progress, criterion=criterion)
    finally:
        for tap in taps:
            tap.remove()


def student_path(store: ResultsStore, key: dict) -> Path:
    """Where a distilled student's weights are kept: ``<store>/students/`` (not ``checkpoints/``,
    whose files :func:`lcnn_lab.trained.remeasure` rebuilds as plain trainings)."""
    return store.root / "students" / f"{key['student']}-{key_hash(key)}.pt"


def distill(name: str, teacher: nn.Module, loss: DistillLoss, cfg: TrainConfig | None = None,
            store: ResultsStore | None = None, compute: bool = True, **knobs) -> dict | None:
    """The stored result of distilling ``create_model(name, **knobs)`` from ``teacher`` with ``loss``
    under ``cfg``'s budget, training it first if ``compute`` and nothing is stored (the student's
    weights are kept too: :func:`distilled`). Returns the metrics (``accuracy``, ``accuracy_se``,
    ``seconds``, ...) with their provenance, or None."""
    cfg = (cfg or TrainConfig()).resolved()
    store = store if store is not None else ResultsStore()
    config.seed_everything(cfg.seed)      # the student's initial weights come from the seed too
    student = create_model(name, **knobs)
    key = distill_key(name, model_knobs(student), teacher, loss, cfg, config.get_device(cfg.device))
    entry = store.get(key)
    if entry is None and compute:
        r = train_student(student, teacher, loss, cfg)
        entry = store.put(key, _metrics(r), _provenance(r))
        save_checkpoint(student_path(store, key), student, name, model_knobs(student), entry["provenance"])
    return None if entry is None else {**entry["metrics"], **entry["provenance"]}


def distilled(name: str, teacher: nn.Module, loss: DistillLoss, cfg: TrainConfig | None = None,
              store: ResultsStore | None = None, **knobs) -> nn.Module:
    """The distilled student itself (eval mode, on the CPU), loaded from the store's ``students/``;
    distilled first (:func:`distill`) if its weights are not there. ``.provenance`` holds its record."""
    cfg = (cfg or TrainConfig()).resolved()
    store = store if store is not None else ResultsStore()
    student = create_model(name, **knobs)
    key = distill_key(name, model_knobs(student), teacher, loss, cfg, config.get_device(cfg.device))
    provenance = load_checkpoint(student_path(store, key), student)
    if provenance is None:
        if store.get(key) is not None:        # metrics without weights: train again, replacing both
            store.path(key).unlink()
        distill(name, teacher, loss, cfg, store=store, **knobs)
        provenance = load_checkpoint(student_path(store, key), student)
    student.provenance = provenance
    return student.eval()


__all__ = ["DistillLoss", "FitNet", "Outputs", "RKD", "ResponseKD", "distill", "distill_key", "distilled",
           "kd_loss", "soft_targets", "student_path", "train_student"]
