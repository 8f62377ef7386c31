"""How long each chapter takes a class: reading it, and running it with the results store hit or missed.

Executes every chapter of the table of contents top to bottom in a fresh kernel (nbclient), as a student's
"Run all" does (live widgets: an Explorer measures only the setting it shows), against the committed
results store, and records which stored entries the run read (``LCNN_STORE_TRACE``). Prints a table
and writes it to ``book/_chapter_times.md``, which the instructors' page includes:

* **reading**: words of the chapter's text cells at 200 words a minute (code and outputs not counted);
* **run, store hit**: the measured wall time of the run (counts, latency timings, look-ups);
* **training it reads**: the training seconds recorded in the stored entries and checkpoints the run
  read, on the machine and threads that stored them (their provenance);
* **run, store miss**: the two added up: what a student waits who starts without the store, at the same
  budget, on the machine that trained the entries.

    python benchmarks/chapter_times.py                    # every chapter at quick: ~15 min on 2 cores
    python benchmarks/chapter_times.py --chapters 01 07   # some chapters
    python benchmarks/chapter_times.py --no-write         # print only

Timings belong to the machine: run it on an idle one, and on the machines your class will use.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "book" / "_chapter_times.md"
WORDS_PER_MINUTE = 200


def toc_chapters() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    return [ROOT / f"{f}.ipynb" for f in files if f.startswith("notebooks/")]


def reading_minutes(nb) -> float:
    words = sum(len(re.findall(r"\w+", c.source)) for c in nb.cells if c.cell_type == "markdown")
    return words / WORDS_PER_MINUTE


def run(path: Path, budget: str) -> tuple[float, list[dict]]:
    """Wall seconds of one top-to-bottom run, and the store entries it asked for."""
    nb = nbformat.read(path, as_version=4)
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as trace:
        env = {"LCNN_BUDGET": budget, "LCNN_STORE_TRACE": trace.name}
        saved = {k: os.environ.get(k) for k in (*env, "LCNN_WIDGETS")}
        os.environ.update(env)
        os.environ.pop("LCNN_WIDGETS", None)          # live, as in a student's kernel
        try:
            start = time.perf_counter()
            NotebookClient(nb, timeout=None, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
            seconds = time.perf_counter() - start
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        reads = [json.loads(line) for line in trace.read().splitlines() if line.strip()]
    # only the book's store: chapter 06's worker processes train into a scratch store of their own
    from lcnn_lab import config
    store = str(config.results_dir().resolve())
    reads = [r for r in reads if r.get("store", store) == store]
    return seconds, reads


def recorded_seconds(reads: list[dict], results: Path) -> tuple[float, int, set]:
    """Training seconds recorded in the distinct entries and checkpoints read, their number, and where
    they were made. A checkpoint counts when its record has the seconds of its own training (those of
    lcnn_lab.trained.pretrained; a distilled student's weights come from the training its entry counts)
    and that training is not also an entry the run read (pretrained stores both from one training)."""
    seconds, n, where = 0.0, 0, set()
    counted = set()                                   # the seconds of each training counted (one run, one value)
    hits = sorted({r["entry"] for r in reads if r["hit"]}, key=lambda e: (e.endswith(".pt"), e))
    checkpoints = {r["entry"]: r.get("seconds") for r in reads if r["entry"].endswith(".pt")}
    for entry in hits:                                # the entries first, then the checkpoints
        if entry.endswith(".pt"):
            if checkpoints[entry] and checkpoints[entry] not in counted:
                seconds += checkpoints[entry]
                n += 1
            continue
        data = json.loads((results / entry).read_text())
        if "seconds" in data["metrics"]:
            seconds += data["metrics"]["seconds"]
            counted.add(data["metrics"]["seconds"])
            n += 1
            p = data["provenance"]
            threads = p.get("threads", "?")
            where.add(f"{p.get('machine', '?')}, {p.get('device', '?')}, {threads} thread{'' if threads == 1 else 's'}")
    return seconds, n, where


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="quick", choices=("smoke", "quick", "full"))
    parser.add_argument("--chapters", nargs="*", help="chapter numbers (default: every chapter in _toc.yml)")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {OUT.relative_to(ROOT)}")
    args = parser.parse_args()

    from lcnn_lab import config
    chapters = [p for p in toc_chapters() if not args.chapters or p.stem[:2] in {c.zfill(2) for c in args.chapters}]
    results = config.results_dir()
    rows, where_all, misses = [], set(), 0
    for path in chapters:
        print(f"running {path.stem} at {args.budget} ...", file=sys.stderr, flush=True)
        nb = nbformat.read(path, as_version=4)
        seconds, reads = run(path, args.budget)
        trained, n, where = recorded_seconds(reads, results)
        where_all |= where
        missed = sorted({r["entry"] for r in reads if not r["hit"]})
        misses += len(missed)
        rows.append((path.stem, reading_minutes(nb), seconds / 60, trained / 60, n, (seconds + trained) / 60))
        print(f"  {seconds:.0f} s, read {len({r['entry'] for r in reads})} entries ({n} trainings, "
              f"{trained / 60:.1f} min recorded)" + (f"; not in the store, computed: {', '.join(missed)}" if missed else ""),
              file=sys.stderr, flush=True)

    head = ["chapter", "reading (min)", "run, store hit (min)", "training it reads (min, trainings)",
            "run, store miss (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stem, read, hit, trained, n, miss in rows:
        lines.append(f"| {stem} | {read:.0f} | {hit:.1f} | {trained:.1f} ({n}) | {miss:.1f} |")
    total = [sum(r[i] for r in rows) for i in (1, 2, 3, 5)]
    lines.append(f"| **all** | **{total[0]:.0f}** | **{total[1]:.1f}** | **{total[2]:.1f}** | **{total[3]:.1f}** |")
    prov = config.provenance(data=False)
    note = (f"Measured by `benchmarks/chapter_times.py` on {time.strftime('%Y-%m-%d')}: budget `{args.budget}`, "
            f"{prov['machine']}, {config.get_threads()} CPU threads, torch {prov['torch']}; every chapter run top to "
            f"bottom in a fresh kernel with live widgets. Training times as recorded by the entries "
            f"({'; '.join(sorted(where_all)) or 'none read'}). "
            + (f"{misses} look-ups missed the store during the run (computed then)." if misses else
               "Every look-up found its entry."))
    table = "\n".join(lines) + "\n\n" + note + "\n"
    print(table)
    if not args.no_write:
        OUT.write_text("<!-- written by benchmarks/chapter_times.py; do not edit by hand -->\n" + table)
        print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
