"""Command line of the helper package: ``python -m lcnn_lab data`` (what ``make data`` runs) and
``python -m lcnn_lab classroom`` (:mod:`lcnn_lab.classroom`).

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
    args = parser.parse_args(argv)
    return COMMANDS[args.command]()


if __name__ == "__main__":
    sys.exit(main())
