"""Trained models: every accuracy the book shows, trained once and kept.

:mod:`lcnn_lab.train` trains a model; this module decides *when* to train and keeps the outcome, so
that a number is never computed twice and every stored number says where it came from:

* :func:`train_model` trains ``create_model(name, **knobs)`` under a budget and records its accuracy
  in the results store; :func:`trained_accuracy` reads that record (training first if asked).
* :func:`pretrained` returns trained weights: trained once under a budget, saved as a checkpoint
  with their provenance (``results/checkpoints/``), loaded from disk afterwards.
* :func:`finetune` changes a trained model (prunes it, quantizes it, ...) and fine-tunes the result,
  storing the accuracy before and after. It is keyed by the base model's **content hash**
  (:func:`state_hash`), so a retrained baseline gets new fine-tunes, never stale ones.

Keys carry the measurement format of their kind (:data:`lcnn_lab.results.MEASUREMENT_FORMATS`), not
the package version, so a release keeps every committed result.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

import torch
from torch import nn

from . import config, prune, quant
from .data import data_source
from .models import create_model, model_knobs
from .profile import count_params
from .results import ResultsStore, key_hash, make_key, measurement_format, trace_read
from .train import Accuracy, TrainConfig, TrainResult, evaluate, initialize, train

__all__ = ["train_model", "trained_accuracy", "pretrained", "checkpoint_path", "load_checkpoint",
           "save_checkpoint", "state_hash", "finetune", "FineTune", "RECIPES", "remeasure"]


# ----------------------------------------------------------------------------------------------
# Trained from scratch: the results store

def _train_key(name: str, knobs: dict, cfg: TrainConfig, dev: torch.device) -> dict:
    return make_key("train", model=name, knobs=knobs, train=cfg.key(), data=data_source().kind,
                    device=dev.type)


def _provenance(r: TrainResult) -> dict:
    """What a training run records besides its key: the machine, its data's checksum, the run."""
    return {**config.provenance(r.budget, r.threads, r.device), "device": r.device, "threads": r.threads}


def _metrics(r: TrainResult) -> dict:
    return {"accuracy": r.accuracy.value, "accuracy_se": r.accuracy.se, "eval_images": r.accuracy.n,
            "epochs": r.epochs, "seconds": r.seconds, "images_per_second": r.images_per_second,
            "history": [dataclasses.asdict(h) for h in r.history]}


def train_model(name: str, cfg: TrainConfig | None = None, store: ResultsStore | None = None,
                on_progress: Callable[[float, str], None] | None = None,
                **knobs) -> tuple[nn.Module, TrainResult]:
    """Build ``create_model(name, **knobs)``, train it under ``cfg`` and record the result in ``store``
    (default: the results store). Returns the trained model and its :class:`~lcnn_lab.train.TrainResult`.

    ``on_progress(fraction, text)`` is passed to :func:`lcnn_lab.train.train` (a widget's progress bar).
    """
    cfg = (cfg or TrainConfig()).resolved()
    config.seed_everything(cfg.seed)  # the initial weights come from the seed too
    model = initialize(create_model(name, **knobs), cfg)   # whitened stem, identity-started convs
    result = train(model, cfg, on_progress=on_progress)
    store = store if store is not None else ResultsStore()
    key = _train_key(name, model_knobs(model), cfg, config.get_device(cfg.device))
    store.put(key, _metrics(result), _provenance(result))
    return model, result


def trained_accuracy(name: str, cfg: TrainConfig | None = None, store: ResultsStore | None = None,
                     compute: bool = True, **knobs) -> dict | None:
    """The stored training metrics for a model and knobs under ``cfg``'s budget, training it first if
    ``compute`` and nothing is stored. Returns ``{"accuracy", "accuracy_se", "seconds", ...}`` (with
    the provenance) or None."""
    cfg = (cfg or TrainConfig()).resolved()
    store = store if store is not None else ResultsStore()
    # key by every knob, defaults included, so that kernel_size=3 and "the default" are one entry
    key = _train_key(name, model_knobs(create_model(name, **knobs)), cfg, config.get_device(cfg.device))
    entry = store.get(key)
    if entry is None and compute:
        train_model(name, cfg, store=store, **knobs)
        entry = store.get(key)
    return None if entry is None else {**entry["metrics"], **entry["provenance"]}


# ----------------------------------------------------------------------------------------------
# Checkpoints

def state_hash(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of a model's weights and buffers: names, shapes, dtypes and values.

    Two models have the same hash exactly when their ``state_dict`` is the same, wherever they were
    trained or loaded: it identifies the base of a fine-tune better than its accuracy could.
    """
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def checkpoint_path(name: str, budget: str, knobs: dict | None = None) -> Path:
    """Where :func:`pretrained` keeps ``name``'s weights trained under ``budget``."""
    key = make_key("checkpoint", model=name, knobs=model_knobs(create_model(name, **(knobs or {}))),
                   budget=budget)
    return config.results_dir() / "checkpoints" / f"{name}-{budget}-{key_hash(key)}.pt"


def save_checkpoint(path: Path, model: nn.Module, name: str, knobs: dict, provenance: dict) -> None:
    """Save ``model``'s weights (on the CPU) with their provenance, atomically."""
    buf = io.BytesIO()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"format": measurement_format("checkpoint"), "model": name, "knobs": knobs,
                "state_dict": state, "provenance": provenance}, buf)
    config.atomic_write(path, buf.getvalue())


def load_checkpoint(path: Path, model: nn.Module) -> dict | None:
    """Load weights saved by :func:`pretrained` into ``model``; return their provenance, or None (with
    a warning) when the file is unreadable, of another format, or does not fit the model."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("format") != measurement_format("checkpoint"):
            raise ValueError(f"checkpoint format {ckpt.get('format')}, this lcnn_lab reads format "
                             f"{measurement_format('checkpoint')}")
        model.load_state_dict(ckpt["state_dict"])
        trace_read(path, True, seconds=ckpt["provenance"].get("seconds"))
        return ckpt["provenance"]
    except FileNotFoundError:
        return None
    except Exception as e:  # corrupt zip, wrong keys or shapes, old format: retrain, never half-load
        warnings.warn(f"checkpoint {path.name} cannot be used ({e}); training again", stacklevel=3)
        return None


def pretrained(name: str = "cifar_net", budget: str | None = None, device: str | None = None,
               **knobs) -> nn.Module:
    """A trained ``create_model(name, **knobs)``: trained once under ``budget``, then loaded from disk.

    The weights are saved with their provenance (data kind and checksum, budget, device, seconds,
    accuracy, package and torch versions), available afterwards as ``model.provenance``. A checkpoint
    that is corrupt or of another measurement format is retrained, not loaded.
    """
    b = config.get_budget(budget)
    dev = config.get_device(device)
    path = checkpoint_path(name, b.name, knobs)
    model = create_model(name, **knobs)
    provenance = load_checkpoint(path, model)
    if provenance is None:
        model, result = train_model(name, TrainConfig(budget=b.name, device=str(dev)), **knobs)
        provenance = {**_provenance(result), "accuracy": result.accuracy.value,
                      "accuracy_se": result.accuracy.se, "seconds": result.seconds}
        save_checkpoint(path, model, name, knobs, provenance)
    model.to(dev).eval()
    model.provenance = provenance
    model.checkpoint = {"name": name, "budget": b.name, "knobs": dict(knobs)}   # what remeasure() rebuilds
    return model


# ----------------------------------------------------------------------------------------------
# Fine-tunes of a trained model

@dataclass(frozen=True)
class FineTune:
    """Accuracy of a changed model before and after fine-tuning, as stored by :func:`finetune`."""
    before: Accuracy             # the changed model, before fine-tuning
    after: Accuracy              # after fine-tuning
    params: int                  # parameter elements of the changed model
    nonzero_params: int          # of which not exactly zero, after fine-tuning (pruning keeps its zeros)
    seconds: float               # fine-tuning wall time, evaluation excluded
    provenance: dict[str, Any]   # where and when it was measured (from the results store)

    def __str__(self) -> str:
        return f"{self.before} before fine-tuning, {self.after} after ({self.seconds:.1f} s)"


def _prune(model: nn.Module, granularity: str, scope: str, amount: float) -> nn.Module:
    """Chapter 07's pruning: weights by magnitude, or whole filters by their L1 norm."""
    if granularity == "weight":
        return prune.prune_unstructured(model, amount, scope=scope)
    return prune.prune_filters(model, amount, scope=scope,
                               importance=prune.MagnitudeImportance(p=1, normalize=scope == "global"))


def _fake_quant(model: nn.Module, bits: int) -> nn.Module:
    """Chapter 08's quantization-aware fine-tune: weights fake-quantized to ``bits`` (32: none, a control)."""
    return model if bits == 32 else quant.add_fake_quant(model, bits)


def _lowrank(model: nn.Module, **args) -> nn.Module:
    from .lowrank import decompose
    return decompose(model, **args)


# Named changes a fine-tune can start from: a stored fine-tune that names its recipe can be measured
# again from its key alone (``make results``); a notebook can still pass any function instead.
RECIPES: dict[str, Callable[..., nn.Module]] = {"prune": _prune, "fake_quant": _fake_quant, "lowrank": _lowrank}


def _finetune_key(base: nn.Module, what: dict | str, cfg: TrainConfig, eval_images: int | None) -> dict:
    cfg = cfg.resolved()
    return make_key("finetune", base=state_hash(base), what=what, train=cfg.key(), eval_images=eval_images,
                    data=data_source().kind, device=config.get_device(cfg.device).type)


def finetune(base: nn.Module, transform: str | Callable[[nn.Module], nn.Module], cfg: TrainConfig,
             what: dict | str | None = None, *, eval_images: int | None = None,
             store: ResultsStore | None = None) -> FineTune:
    """Change a copy of the trained ``base`` with ``transform``, fine-tune it under ``cfg``, and keep
    the accuracy before and after in the results store.

    ``transform`` is the name of a recipe in :data:`RECIPES` with its arguments in ``what``
    (``finetune(base, "prune", cfg, {"granularity": "weight", "scope": "global", "amount": 0.9})``), or
    any function of a model, with ``what`` naming what it does for the store's key (a function
    cannot be compared between sessions, its description can). The key also holds the base's
    :func:`state_hash`, the fine-tune's config and ``eval_images``, the test images both accuracies
    are measured on (a fixed subset; None = all 10,000). ``transform`` receives a deep copy, so
    ``base`` is never changed, and returns the model to fine-tune. A stored result is returned
    without running anything.
    """
    if isinstance(transform, str):
        if transform not in RECIPES:
            raise ValueError(f"there is no fine-tune recipe {transform!r}; the recipes are "
                             f"{', '.join(RECIPES)}, or pass a function of the model")
        recipe, args = transform, dict(what or {})
        transform = lambda m: RECIPES[recipe](m, **args)   # noqa: E731
        what = {"recipe": recipe, **args}
    elif what is None:
        raise ValueError("a fine-tune by a function needs what=..., a description of the change for the "
                         "results store's key (e.g. what={'prune': 'weight', 'amount': 0.9})")
    cfg = cfg.resolved()
    store = store if store is not None else ResultsStore()
    dev = config.get_device(cfg.device)
    key = _finetune_key(base, what, cfg, eval_images)

    def compute() -> tuple[dict, dict]:
        model = transform(copy.deepcopy(base))
        if not isinstance(model, nn.Module):
            raise TypeError(f"transform must return the nn.Module to fine-tune, got {type(model).__name__}")
        before = evaluate(model.to(dev), n=eval_images)
        result = train(model, cfg)
        after = evaluate(model, n=eval_images)
        return ({"before": before.value, "before_se": before.se, "after": after.value, "after_se": after.se,
                 "eval_images": after.n, "params": count_params(model),
                 "nonzero_params": count_params(model, nonzero=True), "seconds": result.seconds},
                {**_provenance(result), "base": getattr(base, "checkpoint", None)})

    entry = store.get_or_compute(key, compute)
    m = entry["metrics"]
    return FineTune(before=Accuracy(m["before"], m["before_se"], m["eval_images"]),
                    after=Accuracy(m["after"], m["after_se"], m["eval_images"]),
                    params=m["params"], nonzero_params=m["nonzero_params"], seconds=m["seconds"],
                    provenance=entry["provenance"])


# ----------------------------------------------------------------------------------------------
# Measuring the whole store again (`make results`)

@contextlib.contextmanager
def _results_at(root: Path):
    """Point the default results store (and the checkpoints) at ``root`` inside the block."""
    previous = os.environ.get("LCNN_RESULTS")
    os.environ["LCNN_RESULTS"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LCNN_RESULTS", None)
        else:
            os.environ["LCNN_RESULTS"] = previous


def _json(d: dict) -> str:
    return json.dumps(d, sort_keys=True)


# TrainConfig fields a stored training keeps when `make results` trains it again; the others take the
# trainer's defaults of the day (that is the point of re-measuring)
CHOSEN_TRAIN_FIELDS = ("epochs", "train_images", "eval_images", "seed")


def remeasure(store: ResultsStore | None = None, progress: bool = True) -> dict[str, int]:
    """Measure every committed training, checkpoint and fine-tune again under the current code.

    After a change to the trainer (its measurement format bumped), the stored numbers no longer
    match the code that would measure them. This retrains each checkpoint (:func:`pretrained`), each
    stored (model, knobs, budget) under today's :class:`~lcnn_lab.train.TrainConfig` defaults, and each
    fine-tune made by a recipe (from its new base), with one progress bar; then it deletes the
    entries and checkpoint files that the current code would no longer find. Entries already
    measured by the current code are kept, not measured twice. Returns counts of what it did.
    """
    store = store if store is not None else ResultsStore()
    # only what is listed now may be deleted at the end: entries written meanwhile (another process
    # training a new chapter's grid) are not this run's to judge
    listed = {kind: {p.stem for p in (store.root / kind).glob("*.json")} for kind in ("train", "finetune")}
    trains = [e["key"] for e in store.entries("train")]
    finetunes = [e for e in store.entries("finetune")]
    ckpt_dir = store.root / "checkpoints"
    checkpoints = []
    for path in sorted(ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else []:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        checkpoints.append((path, ckpt["model"], ckpt["provenance"]["budget"], ckpt.get("knobs", {})))
    done = {"trainings": 0, "checkpoints": 0, "finetunes": 0, "deleted": 0}
    keep_keys, keep_files = set(), set()
    bar = tqdm(total=len(checkpoints) + len(trains) + len(finetunes), desc="re-measuring results/",
               disable=not progress)
    bases = {}
    with _results_at(store.root):
        for path, name, budget, knobs in checkpoints:
            bar.set_postfix_str(f"checkpoint {name} {budget}")
            new_path = checkpoint_path(name, budget, knobs)
            existed = load_checkpoint(new_path, create_model(name, **knobs)) is not None
            model = pretrained(name, budget, **knobs)
            bases[_json(model.checkpoint)] = model
            keep_files.add(new_path)
            done["checkpoints"] += not existed
            bar.update(1)
        for key in trains:
            bar.set_postfix_str(f"train {key['model']} {key['knobs']}")
            # today's defaults, except what a chapter chose on purpose: how much it trains and evaluates
            # (chapter 06's low fidelity is a tenth of the images, scored on 2,000)
            cfg = TrainConfig(budget=key["train"]["budget"], progress=False,
                              **{k: key["train"][k] for k in CHOSEN_TRAIN_FIELDS if k in key["train"]})
            new_key = _train_key(key["model"], key["knobs"], cfg.resolved(), config.get_device(cfg.device))
            if store.get(new_key) is None:
                train_model(key["model"], cfg, store=store, **key["knobs"])
                done["trainings"] += 1
            keep_keys.add(key_hash(new_key))
            bar.update(1)
        for entry in finetunes:
            key, origin = entry["key"], entry["provenance"].get("base")
            what = dict(key["what"]) if isinstance(key["what"], dict) else {}
            bar.set_postfix_str(f"fine-tune {what}")
            if "recipe" in what and origin:
                base = bases.get(_json(origin)) or pretrained(origin["name"], origin["budget"],
                                                                 **origin["knobs"])
                fields = {f.name for f in dataclasses.fields(TrainConfig)}
                cfg = TrainConfig(**{k: v for k, v in key["train"].items() if k in fields and k != "max_seconds"},
                                  progress=False)
                new_key = _finetune_key(base, what, cfg, key["eval_images"])
                if store.get(new_key) is None:
                    args = {k: v for k, v in what.items() if k != "recipe"}
                    finetune(base, what["recipe"], cfg, args, eval_images=key["eval_images"], store=store)
                    done["finetunes"] += 1
                keep_keys.add(key_hash(new_key))
            else:                       # made by a notebook's own function: only a notebook can redo it
                keep_keys.add(key_hash(key))
            bar.update(1)
    bar.close()
    for kind in ("train", "finetune"):
        for path in sorted((store.root / kind).glob("*.json")):
            if path.stem in listed[kind] and path.stem not in keep_keys:
                path.unlink()
                done["deleted"] += 1
    for path in sorted(ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else []:
        if path in [p for p, *_ in checkpoints] and path not in keep_files:
            path.unlink()
            done["deleted"] += 1
    return done
