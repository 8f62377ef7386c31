"""A fast CIFAR-10 trainer, and accuracy with its standard error.

Result (the baseline ``cifar_net``, 293 k params, CIFAR-10 JPEG mirror, full test set):

    budget  training                       test accuracy                          where
    quick   1 epoch (390 steps of 128)     75.7 % (seed 0; 75.2-75.8 over 3 seeds)  2 CPU threads, 70 s (710 img/s)
    full    16 epochs                      not re-measured with this recipe yet   (GPU default)

Evidence: ``TrainConfig(budget="quick")`` on the 2-core AMD EPYC VM the committed results were measured
on: 75.66 % with 2 threads (the committed baseline checkpoint); 75.47, 75.78 and 75.22 % for seeds 0, 1
and 2 with 1 thread (the thread count changes the order of floating-point sums, so results are
repeatable for the same seed, device and thread count). A run's accuracy does not depend on the
machine's load: no time cap, a fixed number of steps. ``benchmarks/train_speed.py`` times it against
the PyTorch tutorial.

Accuracy is the slowest of the book's four numbers, and many readers have two CPU cores. The trainer
borrows what makes the fastest CIFAR-10 trainers fast (Keller Jordan's airbench, jordan2024airbench;
Page's "How to train your ResNet"). Each trick's gain on the quick budget, measured one at a time
from the previous recipe (69.9 %, seed 0):

* the whole training set lives on the device as one uint8 tensor (150 MB); no DataLoader, no PIL;
* augmentation (random 2-pixel translation, horizontal flip) runs on whole batches as tensor ops;
* channels_last memory layout, which oneDNN on CPUs and cuDNN on GPUs run faster for convolutions;
* label smoothing, Nesterov SGD with a triangular (one-cycle) learning-rate schedule, and a
  large batch with a learning rate scaled to it;
* a frozen first layer that whitens 3x3 patches (:func:`whiten_stem`): +2.6 points alone;
* identity (Dirac) initialisation of the convolutions (:func:`dirac_init`): +2.9 alone, +2.9 with
  whitening (the two overlap: both give the network a good start);
* 4x the learning rate for BatchNorm weights and biases: +0.6 alone, +1.7 on top of the two above;
* a peak learning rate of 0.4 instead of 0.2: +1.1 alone, +1.0 on top of the three above (75.5 %);
* tried and not kept: BatchNorm momentum 0.4 (-0.1), a shorter warm-up (+0.1), batch 64 (-0.7
  with whitening and Dirac, and fewer images per second on a CPU);
* optionally an exponential moving average (EMA) of the weights for evaluation.

Every run goes through a :class:`~lcnn_lab.config.Budget` (``LCNN_BUDGET``): a number of epochs and an
optional subset of the data. A run may also cap its training seconds (the benchmark does); the
schedule is then driven by whichever runs out first, steps or seconds, so a time-capped run still
ends its schedule (learning rate at zero) instead of being cut off mid-way. The budgets have no cap,
so the same config, seed and device give the same accuracy however loaded the machine is.

This module trains and evaluates; :mod:`lcnn_lab.trained` decides when to train and keeps the
results (the results store, checkpoints, fine-tunes).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import config
from .data import data_source, load_cifar10, normalize

# ----------------------------------------------------------------------------------------------
# Configuration and results


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``None`` fields are taken from the budget."""
    budget: str | None = None        # smoke | quick | full; None = $LCNN_BUDGET or the device default
    epochs: float | None = None      # passes over the training images; None = the budget's
    max_seconds: float | None = None  # cap on training wall time (s), evaluation excluded; None = budget's
    train_images: int | None = None  # use a fixed random subset of the 50,000; None = the budget's
    eval_images: int | None = None   # test images for the final accuracy; None = the budget's
    batch_size: int = 128            # images per step; on 2 CPU cores 128 beats 512 in throughput and steps
    lr: float = 0.4                  # peak learning rate at batch 128 (scaled with batch_size); 0.2 -> 0.4: +1.0
    momentum: float = 0.9            # Nesterov momentum
    weight_decay: float = 5e-4       # L2, applied to conv/linear weights only (not BN, not biases)
    label_smoothing: float = 0.2     # airbench uses 0.2
    warmup: float = 0.2              # fraction of the schedule spent ramping the learning rate up
    translate: int = 2               # random translation, pixels (reflect padding)
    flip: bool = True                # random horizontal flip
    ema: float | None = None         # EMA decay per step (e.g. 0.99); None = off
    # the fast trainers' tricks, each measured on its own (see the header of this module)
    whiten: bool = True              # first conv = the images' patch whitening, frozen: +2.6 points
    dirac: bool = True               # first c_in filters of each conv start as the identity: +2.9
    bn_momentum: float | None = None  # BatchNorm statistics momentum; None = the model's 0.1 (0.4: -0.1)
    bias_lr: float = 4.0             # learning-rate multiplier of BatchNorm weights and biases: +1.7
    evals_per_epoch: int = 1         # test-subset evaluations per epoch, for the history
    history_eval_images: int = 2_000  # test images used for the evaluations in the history
    channels_last: bool = True       # memory layout; faster convolutions on CPU (oneDNN) and GPU
    seed: int = 0                    # same seed, same device, no time cap -> same result
    device: str | None = None        # None = best available (see config.get_device)
    threads: int | None = None       # CPU threads; None = $LCNN_THREADS or all cores
    progress: bool = True            # tqdm progress bar with live loss and accuracy

    def resolved(self) -> "TrainConfig":
        """This config with every ``None`` that the budget decides filled in."""
        b = config.get_budget(self.budget)
        return dataclasses.replace(
            self, budget=b.name,
            epochs=self.epochs if self.epochs is not None else b.epochs,
            max_seconds=self.max_seconds if self.max_seconds is not None else b.max_seconds,
            train_images=self.train_images if self.train_images is not None else b.train_images,
            eval_images=self.eval_images if self.eval_images is not None else b.eval_images)

    def key(self) -> dict:
        """The fields that change the trained model (not device, threads or the progress bar)."""
        d = dataclasses.asdict(self.resolved())
        for k in ("device", "threads", "progress"):
            d.pop(k)
        return d


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy on ``n`` images, with its binomial standard error sqrt(p(1-p)/n)."""
    value: float
    se: float
    n: int
    split: str = "test"

    def __str__(self) -> str:
        return f"{100 * self.value:.2f} % ± {100 * self.se:.2f} ({self.split}, n={self.n:,})"


@dataclass(frozen=True)
class EpochStats:
    epoch: float          # epochs completed (fractional with evals_per_epoch > 1)
    seconds: float        # training seconds so far, evaluation excluded
    train_loss: float     # mean loss over the steps since the previous record
    test_accuracy: float  # on `history_eval_images` test images


@dataclass(frozen=True)
class TrainResult:
    accuracy: Accuracy
    history: tuple[EpochStats, ...]
    seconds: float             # training wall time, evaluation excluded
    images_per_second: float   # training throughput
    epochs: float              # epochs actually completed
    data_source: str
    device: str
    threads: int
    budget: str
    config: TrainConfig = field(repr=False)

    def __str__(self) -> str:
        return (f"test accuracy {self.accuracy} after {self.epochs:.2f} epochs, {self.seconds:.1f} s "
                f"({self.images_per_second:,.0f} img/s) on {self.device} ({self.threads} threads), "
                f"budget '{self.budget}', data: {self.data_source}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["config"] = dataclasses.asdict(self.config)
        return d


# ----------------------------------------------------------------------------------------------
# Data on the device


_DATA_CACHE: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def device_data(split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 ``split`` as (uint8 images [N,3,32,32], int64 labels [N]) on ``device``, loaded once."""
    k = (split, str(device))
    if k not in _DATA_CACHE:
        images, labels = load_cifar10(split)
        _DATA_CACHE[k] = (images.to(device), labels.to(device))
    return _DATA_CACHE[k]


def fixed_subset(n_total: int, n: int | None, seed: int = 0) -> torch.Tensor | None:
    """Indices of a fixed random subset of size ``n`` (the same on every call), or None for all."""
    if n is None or n >= n_total:
        return None
    if n < 1:
        raise ValueError(f"a subset needs at least 1 image, got n={n}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n]


def batch_translate(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift every image by its own random (dy, dx) in [-pad, pad], filling with reflection.

    Whole-batch tensor ops: for each possible shift, one masked slice (2 × (2·pad+1) copies in all),
    instead of a Python loop over images.
    """
    if pad == 0:
        return images
    n, _, h, w = images.shape  # (B, C, H, W)
    padded = F.pad(images, (pad,) * 4, mode="reflect") if images.is_floating_point() else \
        F.pad(images.float(), (pad,) * 4, mode="reflect").to(images.dtype)
    sy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
    sx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
    rows = torch.empty((n, images.shape[1], h, w + 2 * pad), dtype=images.dtype, device=images.device)
    for s in range(2 * pad + 1):
        m = sy == s
        rows[m] = padded[m, :, s:s + h, :]
    out = torch.empty_like(images)
    for s in range(2 * pad + 1):
        m = sx == s
        out[m] = rows[m, :, :, s:s + w]
    return out


def batch_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    m = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(m[:, None, None, None], images.flip(-1), images)


# ----------------------------------------------------------------------------------------------
# Evaluation


@torch.inference_mode()
def evaluate(model: nn.Module, split: str = "test", n: int | None = None, batch_size: int = 1000,
             device: str | torch.device | None = None, seed: int = 0) -> Accuracy:
    """Top-1 accuracy of ``model`` on CIFAR-10 ``split``, with its standard error.

    ``n`` evaluates a fixed random subset of that many images, the same subset on every call, which is
    how widgets get a quick, comparable number; ``None`` uses the whole split.
    """
    if device is not None:
        dev = config.get_device(device)
    else:  # where the model lives; a model with no float parameters (e.g. fully int8) runs on the CPU
        first = next(model.parameters(), None)
        dev = first.device if first is not None else torch.device("cpu")
    images, labels = device_data(split, dev)
    idx = fixed_subset(len(labels), n, seed)
    if idx is not None:
        images, labels = images[idx.to(dev)], labels[idx.to(dev)]
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, len(labels), batch_size):
            x = normalize(images[i:i + batch_size])
            if dev.type != "mps":
                x = x.contiguous(memory_format=torch.channels_last)
            correct += (model(x).argmax(1) == labels[i:i + batch_size]).sum().item()
    finally:
        model.train(was_training)
    p, total = correct / len(labels), len(labels)
    return Accuracy(p, math.sqrt(max(p * (1 - p), 1e-12) / total), total, split)


# ----------------------------------------------------------------------------------------------
# Training


def _param_groups(model: nn.Module, lr: float, weight_decay: float, bias_lr: float) -> list[dict]:
    decay, no_decay = [], []
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            # Weight decay on conv/linear weights only: decaying BN scales and biases hurts small nets.
            # (A layer pruned with torch.nn.utils.prune keeps its weight as "weight_orig".)
            is_weight = name in ("weight", "weight_orig") and isinstance(mod, (nn.Conv2d, nn.Linear))
            (decay if is_weight else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr": lr, "base_lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr * bias_lr, "base_lr": lr * bias_lr}]


# ----------------------------------------------------------------------------------------------
# Initialisation of a fresh model (never of a trained one: a fine-tune keeps its weights)

def _stem_conv(model: nn.Module) -> nn.Conv2d | None:
    """The first convolution, if it reads the 3 colour channels densely (groups=1)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv if conv is not None and conv.in_channels == 3 and conv.groups == 1 else None


@torch.no_grad()
def whiten_stem(model: nn.Module, images: torch.Tensor, eps: float = 5e-4) -> bool:
    """Set the first convolution to the whitening of the training images' patches, and freeze it.

    Its filters become the top eigenvectors of the covariance of k x k x 3 patches, each scaled by
    1/sqrt(eigenvalue) and used twice, with both signs (the nonlinearity that follows keeps either
    half): the next layers start from decorrelated, equally scaled inputs (airbench's whitening
    layer, jordan2024airbench). Returns False (and changes nothing) for a model without such a conv.
    """
    conv = _stem_conv(model)
    if conv is None:
        return False
    kh, kw = conv.kernel_size
    x = normalize(images[:5000].to(conv.weight.device))
    patches = F.unfold(x, (kh, kw)).transpose(1, 2).reshape(-1, 3 * kh * kw).double()   # (N*L, 27)
    patches = patches - patches.mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))   # ascending
    n = min(conv.out_channels // 2, eigenvectors.shape[1])
    filters = (eigenvectors[:, -n:] / (eigenvalues[-n:] + eps).sqrt()).T.flip(0)        # largest first
    w = conv.weight
    w[:2 * n] = torch.cat([filters, -filters]).reshape(2 * n, 3, kh, kw).to(w.dtype)
    w.requires_grad_(False)
    return True


@torch.no_grad()
def dirac_init(model: nn.Module) -> int:
    """Start the first c_in filters of every dense convolution with c_out >= c_in as the identity
    (``nn.init.dirac_``), so that a deep stack begins close to passing its input through (airbench).
    Returns how many convolutions were changed."""
    changed = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1 and m.out_channels >= m.in_channels > 3 \
                and m.weight.requires_grad:
            nn.init.dirac_(m.weight[:m.in_channels])
            changed += 1
    return changed


def initialize(model: nn.Module, cfg: "TrainConfig | None" = None) -> nn.Module:
    """Prepare a freshly built model for training from scratch under ``cfg`` (``whiten``, ``dirac``);
    returns it. :func:`lcnn_lab.trained.train_model` calls it; a fine-tune must not."""
    cfg = (cfg or TrainConfig()).resolved()
    if cfg.whiten:
        images, _ = device_data("train", config.get_device(cfg.device))
        idx = fixed_subset(len(images), cfg.train_images, cfg.seed)
        whiten_stem(model, images if idx is None else images[idx.to(images.device)])
    if cfg.dirac:
        dirac_init(model)
    return model


def _lr_factor(progress: float, warmup: float) -> float:
    """Triangular schedule: linear ramp 0 -> 1 over ``warmup``, then linear decay to 0 at progress 1."""
    if progress < warmup:
        return progress / warmup
    return max(0.0, (1 - progress) / (1 - warmup))


def train(model: nn.Module, cfg: TrainConfig | None = None, on_progress=None, criterion=None,
          **overrides) -> TrainResult:
    """Train ``model`` on CIFAR-10 in place under ``cfg`` (fields may also be given as keywords).

    ``on_progress(fraction, text)``, if given, is called after every step with the fraction of the
    schedule done and a short status line (a widget's progress bar uses it). ``criterion(model, x,
    labels)``, if given, replaces the loss of a step (default: label-smoothed cross-entropy of
    ``model(x)``); :mod:`lcnn_lab.distill` passes one that asks a teacher too.

    Returns a :class:`TrainResult` with the final test accuracy (and standard error), the per-epoch
    history, the training seconds (evaluation excluded) and where it ran.
    """
    cfg = dataclasses.replace(cfg or TrainConfig(), **overrides).resolved()
    if cfg.epochs <= 0:
        raise ValueError(f"epochs={cfg.epochs} must be positive")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size={cfg.batch_size} must be at least 1")
    dev = config.get_device(cfg.device)
    threads = config.set_threads(cfg.threads)
    config.seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # drives shuffling and augmentation, on the CPU

    images, labels = device_data("train", dev)
    idx = fixed_subset(len(labels), cfg.train_images, cfg.seed)
    if idx is not None:
        images, labels = images[idx.to(dev)], labels[idx.to(dev)]
    n_train = len(labels)
    steps_per_epoch = max(1, n_train // cfg.batch_size)  # drop the ragged last batch: fixed batch size
    total_steps = max(1, round(cfg.epochs * steps_per_epoch))
    eval_every = max(1, steps_per_epoch // max(1, cfg.evals_per_epoch))

    model.to(dev)
    if cfg.channels_last and dev.type != "mps":
        model.to(memory_format=torch.channels_last)
    lr = cfg.lr * cfg.batch_size / 128
    opt = torch.optim.SGD(_param_groups(model, lr, cfg.weight_decay, cfg.bias_lr), lr=lr,
                          momentum=cfg.momentum, nesterov=True)
    if cfg.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.bn_momentum
    ema = copy.deepcopy(model).eval() if cfg.ema else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    history: list[EpochStats] = []
    seconds, step, loss_sum, loss_count = 0.0, 0, 0.0, 0
    perm = torch.empty(0, dtype=torch.long)
    bar = tqdm(total=total_steps, desc=f"train ({cfg.budget})", unit="step", disable=not cfg.progress,
               leave=False)
    model.train()
    done = False
    while not done:
        if len(perm) < cfg.batch_size:  # a new epoch: a fresh shuffle
            perm = torch.randperm(n_train, generator=gen)
        batch, perm = perm[:cfg.batch_size].to(dev), perm[cfg.batch_size:]
        t0 = time.perf_counter()
        x = images[batch]                                   # (B, 3, 32, 32) uint8
        x = batch_translate(x, cfg.translate, gen)
        x = batch_flip(x, gen) if cfg.flip else x
        x = normalize(x)
        if cfg.channels_last and dev.type != "mps":
            x = x.contiguous(memory_format=torch.channels_last)
        progress = max(step / total_steps, seconds / cfg.max_seconds if cfg.max_seconds else 0.0)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * _lr_factor(progress, cfg.warmup)
        loss = loss_fn(model(x), labels[batch]) if criterion is None else criterion(model, x, labels[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for pe, pm in zip(ema.state_dict().values(), model.state_dict().values()):
                    if pe.dtype.is_floating_point:
                        pe.lerp_(pm, 1 - cfg.ema)
                    else:
                        pe.copy_(pm)
        loss_value = loss.item()  # also synchronises a GPU, so the timing below is honest
        seconds += time.perf_counter() - t0
        step += 1
        loss_sum, loss_count = loss_sum + loss_value, loss_count + 1
        # the bar shows progress through the schedule: steps, or seconds when the time cap binds first
        done_frac = max(step / total_steps, seconds / cfg.max_seconds if cfg.max_seconds else 0.0)
        bar.update(min(total_steps, round(done_frac * total_steps)) - bar.n)
        if on_progress is not None:
            last = f" (loss {history[-1].train_loss:.3f}, acc {100 * history[-1].test_accuracy:.1f} %)" if history else ""
            on_progress(min(done_frac, 1.0), f"training… {100 * min(done_frac, 1.0):.0f} %{last}")
        done = step >= total_steps or (cfg.max_seconds is not None and seconds >= cfg.max_seconds)
        if step % eval_every == 0 or done:
            acc = evaluate(ema or model, "test", n=cfg.history_eval_images, device=dev).value
            history.append(EpochStats(step / steps_per_epoch, seconds, loss_sum / loss_count, acc))
            loss_sum, loss_count = 0.0, 0
            bar.set_postfix(loss=f"{history[-1].train_loss:.3f}", acc=f"{100 * acc:.1f}%")
    bar.close()
    final_model = ema or model
    if ema is not None:
        model.load_state_dict(ema.state_dict())
    accuracy = evaluate(final_model, "test", n=cfg.eval_images, device=dev)
    return TrainResult(
        accuracy=accuracy, history=tuple(history), seconds=seconds,
        images_per_second=step * cfg.batch_size / max(seconds, 1e-9), epochs=step / steps_per_epoch,
        data_source=str(data_source()), device=str(dev), threads=threads, budget=cfg.budget, config=cfg)
