"""The classroom kit: hand a chapter out without its solutions, and grade what students hand in.

Built on nbgrader, the Jupyter project's grading tool: it runs on the instructor's own machine (no
Docker, no server), keeps a gradebook in one SQLite file, scores self-check cells automatically and
opens the written answers for grading by hand in its formgrader. Two commands, from a clone of the
repository (the solutions are in ``tests/solutions.yml``, which the web book does not publish)::

    python -m lcnn_lab classroom release 07 --course ~/course    # -> ~/course/release/07_pruning/
    python -m lcnn_lab classroom grade 07 --course ~/course      # scores ~/course/submitted/*/07_pruning/

``release`` writes nbgrader's *source* version of the chapter (each exercise split into an answer cell
holding the solution and a locked test cell holding the book's check), then runs ``nbgrader
generate_assignment``, which strips the solutions and outputs. ``grade`` runs ``nbgrader autograde``
with ``LCNN_GRADING=1`` (a failing check then raises, which is how nbgrader scores a test cell) and
prints one row per student and one column per exercise. The written explanations of the
predict-measure-explain exercises are marked by hand: ``nbgrader formgrader``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .config import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
SOLUTIONS = REPO_ROOT / "tests" / "solutions.yml"

ANSWER = re.compile(r"^(?P<name>\w+) = \.\.\.", re.M)     # an exercise's blank: `name = ...  # hint`
CHECK_CALL = re.compile(r"\bcheck_\w+\s*\(")                 # a call of a lcnn_lab.exercises check
EXPLANATION = ("**Your explanation** (marked by your instructor): what your prediction missed, and why, "
               "in a sentence or two.")

NBGRADER_CONFIG = '''\
# nbgrader's configuration for an lcnn-lab course, written by `python -m lcnn_lab classroom`.
c = get_config()
c.CourseDirectory.course_id = "lcnn-lab"
# A released answer cell keeps the book's own blank (`name = ...`) and nothing else.
c.ClearSolutions.code_stub = {"python": ""}
# Chapters train or look up models under LCNN_BUDGET: no time limit per cell.
c.Execute.timeout = None
'''


class ClassroomError(ValueError):
    """A classroom command cannot go on: the message says what to do."""


# ----------------------------------------------------------------------------------------------
# The exercises of a notebook, and their solutions

def exercise_cells(nb) -> list[tuple[int, list[str]]]:
    """``(cell index, exercise variables)`` of every self-check cell with blanks to fill."""
    return [(i, ANSWER.findall(c.source)) for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and CHECK_CALL.search(c.source) and ANSWER.search(c.source)]


def load_solutions(notebook: str, path: Path = SOLUTIONS) -> dict[str, dict]:
    """``{variable: {"solution": expr or None, "wrong": expr}}`` for one notebook (its file stem)."""
    import yaml
    if not path.is_file():
        raise ClassroomError(f"no solutions file at {path}: the classroom commands run from a clone of "
                             f"the lcnn-lab repository, which has tests/solutions.yml")
    return (yaml.safe_load(path.read_text()) or {}).get(notebook, {}) or {}


def chapter_notebook(chapter: str) -> Path:
    """The notebook of a chapter given as ``"07"``, ``"7"`` or ``"07_pruning"``."""
    books = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    text = str(chapter).strip().removesuffix(".ipynb")
    number = text.zfill(2) if text.isdigit() else None
    for path in books:
        if path.stem == text or (number is not None and path.stem.startswith(number + "_")):
            return path
    raise ClassroomError(f"no chapter {chapter!r}: choose one of " + ", ".join(p.stem for p in books))


def _nbgrader(cell, grade_id: str, *, solution: bool, grade: bool, locked: bool, points: float = 0):
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
            "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    cell.metadata["nbgrader"] = meta
    return cell


def source_notebook(chapter: str):
    """nbgrader's source version of a chapter: every exercise with a single right answer becomes an
    answer cell (the book's blank, then the solution between nbgrader's markers) and a locked test
    cell (the book's check, 1 point), after a locked cell with the exercise's set-up if it has one; every prediction is left as it is, followed by a written
    explanation marked by hand (1 point)."""
    import nbformat
    path = chapter_notebook(chapter)
    nb = nbformat.read(path, as_version=4)
    known = load_solutions(path.stem)
    exercises = dict(exercise_cells(nb))
    missing = [n for names in exercises.values() for n in names if n not in known]
    if missing:
        raise ClassroomError(f"{path.name}: no solution for {', '.join(missing)} in {SOLUTIONS}")
    cells = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.update(outputs=[], execution_count=None)
        if i not in exercises:
            cells.append(cell)
            continue
        names = exercises[i]
        if any(known[n]["solution"] is None for n in names):     # a prediction: no single right answer
            cells.append(cell)
            cells.append(_nbgrader(nbformat.v4.new_markdown_cell(EXPLANATION), f"explain_{names[0]}",
                                   solution=True, grade=True, locked=False, points=1))
            continue
        # [what the exercise sets up] [the blanks] [the check]: three cells, so that an answer can use
        # what the set-up defines and the check (locked, graded) can be restored as the book has it
        lines = cell.source.splitlines()
        first = next(k for k, line in enumerate(lines) if ANSWER.match(line))
        setup = "\n".join(lines[:first]).strip("\n")
        blanks = [line for line in lines[first:] if ANSWER.match(line)]
        rest = "\n".join(line for line in lines[first:] if not ANSWER.match(line)).strip("\n")
        answer = "\n".join([*blanks, "### BEGIN SOLUTION",
                            *(f"{n} = ({known[n]['solution']})" for n in names), "### END SOLUTION"])
        if setup:
            cells.append(_nbgrader(nbformat.v4.new_code_cell(setup), f"setup_{names[0]}",
                                   solution=False, grade=False, locked=True))
        cells.append(_nbgrader(nbformat.v4.new_code_cell(answer), f"answer_{names[0]}",
                               solution=True, grade=False, locked=False))
        cells.append(_nbgrader(nbformat.v4.new_code_cell(rest), f"check_{names[0]}",
                               solution=False, grade=True, locked=True, points=1))
    nb.cells = cells
    return nb


# ----------------------------------------------------------------------------------------------
# The two commands

def _run_nbgrader(course: Path, *args: str, env: dict | None = None) -> None:
    command = [sys.executable, "-m", "nbgrader", *args]
    print("$ nbgrader " + " ".join(args), flush=True)
    env = dict(os.environ if env is None else env)
    # nbgrader runs `alembic` (its gradebook migrations) from PATH: that of this Python's environment
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    done = subprocess.run(command, cwd=course, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise ClassroomError(f"nbgrader {args[0]} failed (exit {done.returncode}):\n"
                             + (done.stderr or done.stdout)[-3000:])


def _check_nbgrader() -> None:
    import importlib.util
    if importlib.util.find_spec("nbgrader") is None:
        raise ClassroomError("nbgrader is not installed: pip install 'lcnn-lab[classroom]' "
                             "(or pip install nbgrader)")


def release(chapter: str, course: str | Path) -> Path:
    """Write the chapter's source version into ``course/source/`` and run ``nbgrader
    generate_assignment``; returns the folder of the student version (``course/release/<chapter>``)."""
    import nbformat
    _check_nbgrader()
    course = Path(course).expanduser().resolve()
    course.mkdir(parents=True, exist_ok=True)
    config = course / "nbgrader_config.py"
    if not config.exists():
        config.write_text(NBGRADER_CONFIG)
    name = chapter_notebook(chapter).stem
    source = course / "source" / name
    source.mkdir(parents=True, exist_ok=True)
    nbformat.write(source_notebook(name), source / f"{name}.ipynb")
    _run_nbgrader(course, "generate_assignment", name, "--force")
    released = course / "release" / name
    print(f"student version: {released / (name + '.ipynb')}\n"
          f"hand it out; collect submissions as {course}/submitted/<student>/{name}/{name}.ipynb "
          f"(`nbgrader zip_collect` unpacks an LMS download into that layout)")
    return released


def grade(chapter: str, course: str | Path, budget: str | None = None):
    """Run ``nbgrader autograde`` on every submission of a chapter and return the scores: a pandas
    DataFrame, one row per student, one column per exercise (points), written to
    ``course/grades-<chapter>.csv``. Submissions run under ``budget`` (default ``$LCNN_BUDGET`` or
    quick, which finds the book's committed results instead of training)."""
    import pandas as pd
    from nbgrader.api import Gradebook
    _check_nbgrader()
    course = Path(course).expanduser().resolve()
    name = chapter_notebook(chapter).stem
    if not (course / "source" / name).is_dir():
        raise ClassroomError(f"{course} has no released {name}: run `python -m lcnn_lab classroom release "
                             f"{chapter} --course {course}` first")
    submitted = sorted(p.parent.parent.name for p in (course / "submitted").glob(f"*/{name}/{name}.ipynb"))
    if not submitted:
        raise ClassroomError(f"no submissions: put each student's notebook at "
                             f"{course}/submitted/<student>/{name}/{name}.ipynb")
    env = {**os.environ, "LCNN_GRADING": "1", "LCNN_BUDGET": budget or os.environ.get("LCNN_BUDGET", "quick")}
    _run_nbgrader(course, "autograde", name, "--force", env=env)
    order = [c.metadata["nbgrader"]["grade_id"] for c in source_notebook(name).cells
             if c.metadata.get("nbgrader", {}).get("grade")]          # the exercises in the book's order
    rows = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for student in submitted:
            notebook = gb.find_submission_notebook(name, name, student)
            scores = {g.name: g.score for g in notebook.grades}
            row = {g: scores.get(g) for g in order}
            row["auto score"] = sum(g.auto_score or 0 for g in notebook.grades)
            row["to mark by hand"] = sum(bool(g.needs_manual_grade) for g in notebook.grades)
            row["max score"] = notebook.max_score
            rows[student] = row
    table = pd.DataFrame(rows).T
    table.index.name = "student"
    table.to_csv(course / f"grades-{name}.csv")
    return table


def main(argv: list[str]) -> int:
    """``python -m lcnn_lab classroom {release,grade} CHAPTER --course DIR``."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m lcnn_lab classroom",
                                     description="hand out a chapter without solutions; grade submissions")
    parser.add_argument("action", choices=("release", "grade"))
    parser.add_argument("chapter", help="chapter number or notebook name, e.g. 07 or 07_pruning")
    parser.add_argument("--course", default="course", help="nbgrader course folder (default ./course)")
    parser.add_argument("--budget", choices=("smoke", "quick", "full"), default=None,
                        help="budget the submissions run under when graded (default $LCNN_BUDGET or quick)")
    args = parser.parse_args(argv)
    try:
        if args.action == "release":
            release(args.chapter, args.course)
        else:
            import pandas as pd
            with pd.option_context("display.width", 200, "display.max_columns", 50):
                print(grade(args.chapter, args.course, args.budget))
    except ClassroomError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


__all__ = ["ClassroomError", "chapter_notebook", "exercise_cells", "grade", "load_solutions", "release",
           "source_notebook"]
