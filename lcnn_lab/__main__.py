"""Command line of the helper package: ``python -m lcnn_lab data`` (what ``make data`` runs),
``python -m lcnn_lab classroom`` (:mod:`lcnn_lab.classroom`) and ``python -m lcnn_lab nas-worker`` (one
worker of an Optuna study shared through a database, :func:`lcnn_lab.nas.optuna_search`).

``python -m lcnn_lab.data`` also works, but prints a RuntimeWarning: ``lcnn_lab/__init__.py`` imports
``data`` before runpy executes it as ``__main__``. Running the package's ``__main__`` avoids that.
"""
from __future__ import annotations

import argparse
import sys


def data_command() -> int:
    """Find CIFAR-10 ($LCNN_DATA, the cache, or the official download), decode it once into the cache and
    report what was found. Exit status 1 with a one-line error when there is no usable copy."""
    import torch

    from .data import SPLITS, DataNotFoundError, data_source, load_cifar10
    try:
        for split in SPLITS:
            images, labels = load_cifar10(split)
            print(f"CIFAR-10 {split}: {len(labels):,} images {tuple(images.shape[1:])}, "
                  f"{len(torch.unique(labels))} classes")
        print(f"source: {data_source()}")
    except (DataNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def nas_worker_command(args) -> int:
    """Join (or start) the Optuna study ``args.study`` in ``args.storage`` and run trials until the study
    has ``args.trials`` finished ones. Start several, on one machine or many, with the same storage."""
    from . import nas
    try:
        obj = nas.Objective(args.objective, "low", args.budget)
        result = nas.optuna_search(nas.SPACE, obj, args.trials, args.sampler, seed=args.seed,
                                   storage=args.storage, study_name=args.study, progress=False)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    mine = sum(1 for t in result.trials if t.info.get("worker") == nas.worker_name())
    print(f"worker {nas.worker_name()}: ran {mine} of the study's {len(result.trials)} finished trials; "
          f"best so far {result.best().score:.4f} ({nas.describe_arch(result.best().arch)})")
    return 0


COMMANDS = {"data": data_command}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["classroom"]:          # its own arguments: `python -m lcnn_lab classroom --help`
        from .classroom import main as classroom_main
        return classroom_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m lcnn_lab", description="lcnn-lab helper commands")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("data", help="find CIFAR-10, decode it once into the cache, report the splits "
                                "(run before a lab session; `make data`)")
    sub.add_parser("classroom", help="release a chapter without solutions, or grade submissions, with "
                                     "nbgrader (`python -m lcnn_lab classroom --help`)")
    w = sub.add_parser("nas-worker", help="one worker of a neural architecture search shared through a "
                                          "database (chapter 06); start several with the same --storage")
    w.add_argument("--storage", required=True, help="an Optuna storage URL, e.g. sqlite:///nas.db or "
                                                     "postgresql://user@host/db for a cluster")
    w.add_argument("--study", default="lcnn-nas", help="the study's name (default: lcnn-nas)")
    w.add_argument("--trials", type=int, default=20, help="stop when the study has this many finished trials")
    w.add_argument("--sampler", choices=("tpe", "nsga2"), default="tpe")
    w.add_argument("--objective", choices=("accuracy", "latency"), default="accuracy")
    w.add_argument("--budget", choices=("smoke", "quick", "full"), default=None,
                   help="the training budget of each candidate (default: $LCNN_BUDGET)")
    w.add_argument("--seed", type=int, default=None, help="the sampler's seed: give each worker its own")
    args = parser.parse_args(argv)
    if args.command == "nas-worker":
        return nas_worker_command(args)
    return COMMANDS[args.command]()


if __name__ == "__main__":
    sys.exit(main())
