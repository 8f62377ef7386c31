"""The results store: measured numbers kept on disk, so nothing is computed twice.

Each entry is one small JSON file, named by a hash of its *key*: what was measured (model name and knobs,
train config, budget, data kind, device kind) and the *measurement format* of its kind (see below). It
holds the metrics and their provenance (when, where, on which data, how long). The design choices, and
why:

* **One file per entry.** Two notebooks writing at the same time touch different files, or replace the
  same file whole; there is no shared index to corrupt.
* **Atomic writes** (:func:`lcnn_lab.config.atomic_write`): a run interrupted by Ctrl-C or a kernel
  restart leaves either the old entry or the new one, never half an entry.
* **Unreadable entries are skipped with a warning**, never fatal: the number is simply computed again.
* **Plain JSON in ``results/``**, so the store can be committed and the published book is reproducible.
* **Results survive a release.** A key carries the measurement format of its kind
  (:data:`MEASUREMENT_FORMATS`), not the package version: a new release keeps every committed result,
  and changing *how* something is measured (the trainer, the MAC counter) bumps that kind's number,
  so its old results are no longer found and are measured again (``make results``).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from . import config

FORMAT = 1  # the layout of an entry file; entries of another layout are ignored

# Bump a kind's number when the code that measures it changes what it measures: its stored results
# then no longer match and are computed again. Kinds not listed here are at 1.
MEASUREMENT_FORMATS: dict[str, int] = {
    "train": 2,        # lcnn_lab.train.train under a budget (2: whitening, dirac, bias lr, no time cap)
    "checkpoint": 2,   # weights saved by lcnn_lab.trained.pretrained (2: trained by format-2 training)
    "finetune": 2,     # lcnn_lab.trained.finetune (2: of a format-2 checkpoint, with the format-2 trainer)
    "imagenet": 1,     # lcnn_lab.imagenet.imagenet_stats (fvcore counts, torchvision metadata)
    "distill": 1,      # lcnn_lab.distill.distill (1: the format-2 trainer; bump with "train")
    "nas": 1,          # lcnn_lab.nas.search / darts_search (1: the format-2 trainer; bump with "train")
    "deepcompress": 1,  # lcnn_lab.deepcompress.deep_compression (1: the format-2 trainer; bump with "train")
    "atlas": 1,        # lcnn_lab.runtime.atlas_row (latency per machine and runtime versions)
}


def measurement_format(kind: str) -> int:
    """The measurement format of ``kind``: part of every key of that kind."""
    return MEASUREMENT_FORMATS.get(kind, 1)


def _canonical(obj: Any) -> Any:
    """Make a key JSON-stable: dataclasses become dicts, tuples lists, dict keys sorted by json.dumps."""
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _canonical(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)  # so that width=1 and width=1.0 name the same entry
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def make_key(kind: str, **parts: Any) -> dict:
    """A store key: ``kind`` (e.g. "train", "finetune") plus whatever identifies the measurement,
    with the kind's :func:`measurement_format` added."""
    return _canonical({"kind": kind, "format": measurement_format(kind), **parts})


def key_hash(key: dict) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def trace_read(path: Path, hit: bool, **extra) -> None:
    """Append one read of the store (an entry, or a checkpoint with ``extra``) to ``$LCNN_STORE_TRACE``,
    if set: benchmarks/chapter_times.py records what a chapter reads."""
    if os.environ.get("LCNN_STORE_TRACE"):
        with open(os.environ["LCNN_STORE_TRACE"], "a") as trace:
            trace.write(json.dumps({"entry": f"{path.parent.name}/{path.name}", "hit": hit,
                                    "store": str(path.parent.parent.resolve()), **extra}) + "\n")


class ResultsStore:
    """An on-disk store of measured results. ``ResultsStore()`` opens the default one (``results/``)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else config.results_dir()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.root)!r})"

    def path(self, key: dict) -> Path:
        return self.root / key.get("kind", "misc") / f"{key_hash(key)}.json"

    def _read(self, path: Path) -> dict | None:
        try:
            entry = json.loads(path.read_text())
            if not isinstance(entry, dict) or entry.get("format") != FORMAT \
                    or not isinstance(entry.get("metrics"), dict):
                raise ValueError("not an entry of this format")
            return entry
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
            warnings.warn(f"results store: skipping unreadable entry {path} ({e}); it will be recomputed",
                          stacklevel=3)
            return None

    def get(self, key: dict) -> dict | None:
        """The stored entry ``{"key", "metrics", "provenance"}`` for ``key``, or None."""
        path = self.path(key)
        entry = self._read(path)
        if entry is not None and entry.get("key") != key:  # a hash collision, or a hand-edited file
            entry = None
        trace_read(path, entry is not None)
        return entry

    def put(self, key: dict, metrics: dict, provenance: dict | None = None) -> dict:
        """Store ``metrics`` (JSON-serialisable) under ``key``, atomically; returns the entry.

        ``provenance`` is added to :func:`lcnn_lab.config.provenance`'s record of this machine (without
        the budget and the data, which the caller knows better: a training passes both)."""
        machine = {k: v for k, v in config.provenance(data=False).items() if k not in ("budget", "date")}
        entry = {"format": FORMAT, "key": key, "metrics": _canonical(metrics),
                 "provenance": _canonical({**machine, "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
                                           **(provenance or {})})}
        config.atomic_write(self.path(key), json.dumps(entry, indent=1, sort_keys=True).encode())
        return entry

    def get_or_compute(self, key: dict, compute: Callable[[], tuple[dict, dict] | dict]) -> dict:
        """The stored entry for ``key``; if missing, run ``compute()`` (returning metrics, or
        ``(metrics, provenance)``), store its result and return the new entry."""
        entry = self.get(key)
        if entry is None:
            out = compute()
            metrics, provenance = out if isinstance(out, tuple) else (out, {})
            entry = self.put(key, metrics, provenance)
        return entry

    def entries(self, kind: str | None = None) -> Iterator[dict]:
        """Every readable entry (of one ``kind``), skipping unreadable ones with a warning."""
        folders = [self.root / kind] if kind else [p for p in self.root.iterdir() if p.is_dir()]
        for folder in folders:
            for path in sorted(folder.glob("*.json")):
                entry = self._read(path)
                if entry is not None:
                    yield entry

    def __len__(self) -> int:
        return sum(1 for _ in self.entries())
