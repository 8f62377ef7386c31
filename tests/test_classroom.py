"""The classroom kit: nbgrader's source version of every chapter, a release without solutions, and a
submission graded end to end (passed, failed and blank exercises, and an explanation left to mark)."""
from __future__ import annotations

import re
import shutil

import nbformat
import pytest

from lcnn_lab import classroom
from lcnn_lab.classroom import ANSWER, CHECK_CALL, ClassroomError

CHAPTERS = sorted(p.stem for p in classroom.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
GRADED = "04_reparameterization"   # small and quick at smoke: the chapter the end-to-end test grades


def nbgrader_cells(nb) -> dict[str, nbformat.NotebookNode]:
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells if "nbgrader" in c.metadata}


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_source_version_splits_every_exercise(chapter):
    book = nbformat.read(classroom.NOTEBOOKS / f"{chapter}.ipynb", as_version=4)
    known = classroom.load_solutions(chapter)
    exercises = classroom.exercise_cells(book)
    assert exercises, f"{chapter} has no exercises"
    source = classroom.source_notebook(chapter)
    cells = nbgrader_cells(source)
    for _, names in exercises:
        first = names[0]
        if known[first]["solution"] is None:          # a prediction, then an explanation marked by hand
            explain = cells[f"explain_{first}"].metadata["nbgrader"]
            assert explain["solution"] and explain["grade"] and explain["points"] == 1
            continue
        answer, check = cells[f"answer_{first}"], cells[f"check_{first}"]
        for name in names:
            assert re.search(rf"^{name} = \.\.\.", answer.source, re.M), "the book's blank stays in"
            assert f"{name} = ({known[name]['solution']})" in answer.source
        assert "### BEGIN SOLUTION" in answer.source and not CHECK_CALL.search(answer.source)
        assert check.metadata["nbgrader"] == {**check.metadata["nbgrader"], "grade": True, "locked": True,
                                              "points": 1, "solution": False}
        assert CHECK_CALL.search(check.source) and not ANSWER.search(check.source)
    # nothing of the book is lost: every other cell is there, in order
    kept = [c.source for c in source.cells if "nbgrader" not in c.metadata]
    split = {i for i, names in exercises if known[names[0]]["solution"] is not None}
    assert kept == [c.source for i, c in enumerate(book.cells) if i not in split]
    assert all(not c.get("outputs") for c in source.cells if c.cell_type == "code")


def test_unknown_chapter_names_the_chapters():
    with pytest.raises(ClassroomError, match="choose one of 00_why_lightweight"):
        classroom.chapter_notebook("99")
    assert classroom.chapter_notebook("7").stem == "07_pruning"
    assert classroom.chapter_notebook("07_pruning").stem == "07_pruning"


def test_grade_before_release_says_what_to_run(tmp_path):
    with pytest.raises(ClassroomError, match="classroom release 04"):
        classroom.grade("04", tmp_path)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A course folder with chapter 04 released by nbgrader."""
    pytest.importorskip("nbgrader")
    course = tmp_path_factory.mktemp("course")
    classroom.release(GRADED, course)
    return course


def test_release_has_the_blanks_and_no_solution(course):
    released = nbformat.read(course / "release" / GRADED / f"{GRADED}.ipynb", as_version=4)
    text = "\n".join(c.source for c in released.cells)
    known = classroom.load_solutions(GRADED)
    assert "BEGIN SOLUTION" not in text
    for name, answers in known.items():
        assert re.search(rf"^{name} = \.\.\.", text, re.M)
        if answers["solution"] is not None:
            assert answers["solution"] not in text, f"the release shows the solution of {name}"
    assert all(not c.get("outputs") for c in released.cells if c.cell_type == "code")


def test_grading_scores_passed_failed_and_blank_exercises(course, capsys):
    """One student's submission, run by nbgrader autograde at the smoke budget: the first exercise
    solved (1 point), the second answered wrongly (0), the third solved (1), the rest left blank (0);
    the written explanation of the prediction waits for the instructor (an untouched one scores 0)."""
    released = nbformat.read(course / "release" / GRADED / f"{GRADED}.ipynb", as_version=4)
    known = classroom.load_solutions(GRADED)
    fill = {"folded_weight": "solution", "folded_bias": "solution",
            "identity_weight": "wrong", "identity_bias": "wrong",
            "training_params": "solution", "deployed_params": "solution"}
    for cell in released.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "explain_predicted_deploy_ratio":
            cell.source = "The 1x1 and identity branches fold away, but the 3x3 kernel holds most weights."
        cell.source = ANSWER.sub(lambda m: f"{m['name']} = ({known[m['name']][fill[m['name']]]})"
                                 if m["name"] in fill else m[0], cell.source)
    submitted = course / "submitted" / "ada" / GRADED
    submitted.mkdir(parents=True)
    nbformat.write(released, submitted / f"{GRADED}.ipynb")

    table = classroom.grade(GRADED, course, budget="smoke")

    ada = table.loc["ada"]
    assert ada["check_folded_weight"] == 1
    assert ada["check_identity_weight"] == 0
    assert ada["check_training_params"] == 1
    assert ada["check_costlier_reuse"] == 0
    assert ada["auto score"] == 2
    assert ada["to mark by hand"] == 1                 # the explanation, in nbgrader's formgrader
    assert ada["max score"] == 5
    assert (course / f"grades-{GRADED}.csv").is_file()
    graded = nbformat.read(course / "autograded" / "ada" / GRADED / f"{GRADED}.ipynb", as_version=4)
    failed = nbgrader_cells(graded)["check_identity_weight"]
    assert any(o.get("ename") == "ExerciseFailed" for o in failed.outputs), "the feedback says why"
    shutil.rmtree(course / "submitted")
