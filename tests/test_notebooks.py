"""Every notebook runs top to bottom in a fresh kernel at the smoke budget, and shows no hidden failure."""
import re
from pathlib import Path

import nbformat
import pytest

from lcnn_lab import exercises

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

# nbclient raises when a cell raises, but not when a traceback is only printed (logging.exception, a
# callback, an ipywidgets.Output that swallows the exception and shows it) or when a self-check says FAIL.
# lcnn_lab.exercises' self-checks: every public check_* function there
CHECK_CALL = re.compile(r"\b(?:%s)\s*\(" % "|".join(sorted((n for n in dir(exercises) if n.startswith("check_")),
                                                             key=len, reverse=True)))
SELF_CHECK_LINE = re.compile(r"^(?:PASS|FAIL)  \S")              # the one line each of them prints
PLACEHOLDER = "replace the ... (or None) with your answer"       # the FAIL of an unanswered exercise
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")                     # IPython colours its tracebacks
DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+")  # an embedded image may spell anything
STYLE = re.compile(r"<style.*?</style>", re.S)                   # CSS (highlighted code names Generic.Traceback)
TEXT_OUTPUT = re.compile(r"^text/|json$|javascript$")            # MIME types of readable outputs


def _clean(text: str) -> str:
    return STYLE.sub("", DATA_URI.sub("", ANSI.sub("", text)))


def _output_texts(output) -> list[str]:
    if output.get("output_type") == "stream":
        return [output.get("text", "")]
    if output.get("output_type") == "error":
        return ["Traceback: " + output.get("ename", "") + "\n" + "\n".join(output.get("traceback", []))]
    return [v if isinstance(v, str) else str(v) for mime, v in output.get("data", {}).items()
            if TEXT_OUTPUT.search(mime)]


def _strings(value) -> list[str]:
    """Every string inside a JSON-like value (the saved state of the notebook's widgets)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def output_problems(nb) -> list[str]:
    """What is wrong in an executed notebook's outputs: a traceback or a FAIL anywhere, except the
    self-checks' own PASS/FAIL lines, and an exercise check cell that did not print one line per check.

    The committed notebooks leave every exercise answer as ``...``, so their checks print "FAIL ...
    replace the ..." by design: that line is allowed, in the cell that calls the check, and only there.
    A check given an answer (a solution committed by mistake, or on purpose) must PASS.
    """
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        where = f"cell {i} ({(cell.source.strip().splitlines() or ['empty'])[0][:60]})"
        texts = [_clean(t) for o in cell.get("outputs", []) for t in _output_texts(o)]
        checks = len(CHECK_CALL.findall(cell.source))
        if checks:
            stdout = "".join(_clean(o.get("text", "")) for o in cell.get("outputs", [])
                             if o.get("output_type") == "stream" and o.get("name") == "stdout")
            verdicts = [line for line in stdout.splitlines() if SELF_CHECK_LINE.match(line)]
            if len(verdicts) != checks:
                problems.append(f"{where} calls {checks} self-check(s) but printed {len(verdicts)} "
                                f"PASS/FAIL line(s): {verdicts}")
            problems += [f"{where}: a self-check fails, and not as an unanswered `...`: {v}" for v in verdicts
                         if v.startswith("FAIL") and PLACEHOLDER not in v]
            texts = ["\n".join(line for line in t.splitlines() if not SELF_CHECK_LINE.match(line))
                     for t in texts]
        for text in texts:
            for word in ("Traceback", "FAIL"):
                if word in text:
                    line = next(line for line in text.splitlines() if word in line)
                    problems.append(f"{where} shows {word!r}: {line.strip()[:200]}")
    widgets = nb.metadata.get("widgets", {})
    for text in map(_clean, _strings(widgets)):
        for word in ("Traceback", "FAIL"):
            if word in text:
                problems.append(f"a widget's saved state shows {word!r}: {text[text.index(word):][:200]}")
    return problems


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks in notebooks/ yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, executed_notebooks):
    nb, error = executed_notebooks.get(path)   # run once per test run (conftest.py); the book reuses it
    assert error is None, f"{path.name} stopped with an error:\n{error[-4000:]}"
    problems = output_problems(nb)
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------------------------
# Every exercise's check, with its solution and with a wrong answer (solutions in tests/solutions.yml)

@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks in notebooks/ yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_exercise_has_a_solution_and_a_wrong_answer(path):
    from conftest import exercise_cells, solutions
    nb = nbformat.read(path, as_version=4)
    blanks = [n for _, names in exercise_cells(nb) for n in names]
    known = solutions(path.stem)
    assert blanks, f"{path.name} has no exercise with a self-check (CHAPTER.md asks for at least three)"
    assert not set(blanks) - set(known), f"no entry in tests/solutions.yml for {sorted(set(blanks) - set(known))}"
    assert not set(known) - set(blanks), f"tests/solutions.yml names unknown blanks {sorted(set(known) - set(blanks))}"
    for name in blanks:
        assert set(known[name]) == {"solution", "wrong"}, f"{name}: give a solution and a wrong answer"
        assert known[name]["wrong"] is not None, f"{name}: a wrong answer is always needed"


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks in notebooks/ yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_checks_pass_with_the_solutions_and_fail_with_wrong_answers(path, executed_notebooks):
    from conftest import SOLUTION_TAG
    _, error = executed_notebooks.get(path)
    assert error is None, f"{path.name} stopped with an error (see test_notebook_runs)"
    runs = executed_notebooks.answers[path.name]
    assert runs, f"{path.name}: no check was run with answers"
    problems = []
    for cell in runs:
        meta = cell.metadata[SOLUTION_TAG]
        where = f"cell {meta['cell']} ({', '.join(meta['variables'])}) with the {meta['kind']}"
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors:
            problems.append(f"{where} raised {errors[0].get('ename')}: {errors[0].get('evalue')}")
            continue
        stdout = "".join(_clean(o.get("text", "")) for o in cell.get("outputs", [])
                         if o.get("output_type") == "stream" and o.get("name") == "stdout")
        verdicts = [line for line in stdout.splitlines() if SELF_CHECK_LINE.match(line)]
        if len(verdicts) != len(CHECK_CALL.findall(cell.source)):
            problems.append(f"{where} printed {len(verdicts)} verdicts for "
                            f"{len(CHECK_CALL.findall(cell.source))} checks: {verdicts}")
        want = "PASS" if meta["kind"] == "solution" else "FAIL"
        problems += [f"{where}: {v}" for v in verdicts if not v.startswith(want) or PLACEHOLDER in v]
    assert not problems, "\n".join(problems)


def _cell(source: str, *outputs) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.outputs = list(outputs)
    return cell


def _stdout(text: str, name: str = "stdout") -> nbformat.NotebookNode:
    return nbformat.v4.new_output("stream", name=name, text=text)


CHECK = 'answer = ...\nlab.exercises.check_close("size", answer, expected=size, hint="4 bytes")'
REPLACE = "FAIL  size: not yet. Hint: replace the ... (or None) with your answer, then run this cell again\n"


def test_output_problems_allows_the_self_checks_of_unanswered_exercises():
    nb = nbformat.v4.new_notebook(cells=[
        _cell("print('ready')", _stdout("ready\n"), _stdout("a warning: PASS on\n", "stderr")),
        _cell(CHECK, _stdout(REPLACE)),
        _cell(CHECK.replace("...", "97.5"), _stdout("PASS  size\n")),
        _cell(CHECK + "\n" + CHECK.replace("size", "MACs"),
              _stdout(REPLACE), _stdout(REPLACE.replace("size", "MACs"))),
        _cell("show()", nbformat.v4.new_output("display_data", data={
            "text/plain": "<Figure>", "image/png": "iVBORFAILTraceback0KGgo=",
            "text/html": '<img src="data:image/png;base64,AAAAFAILAAAA"> PASS'})),
    ])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {
        "1": {"model_name": "HTMLModel", "state": {"value": "<b>accuracy 61 %</b>"}}}}}
    assert output_problems(nb) == []


RED = "\x1b[0;31m"
TRACEBACK = "Traceback (most recent call last):\n  File ...\nValueError: x\n"
BROKEN = {  # name: (cell, what the problem says)
    "traceback on stderr": (_cell("run()", _stdout(TRACEBACK, "stderr")), "shows 'Traceback'"),
    "ANSI-coloured traceback": (_cell("run()", _stdout(f"{RED}ValueError{RED}  Traceback{RED} (most recent")),
                                "shows 'Traceback'"),
    "traceback in HTML": (_cell("df", nbformat.v4.new_output("execute_result", execution_count=1, data={
        "text/plain": "table", "text/html": f"<pre>{TRACEBACK}</pre>"})), "shows 'Traceback'"),
    "an error output": (_cell("1/0", nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="",
                                                            traceback=[])), "shows 'Traceback'"),
    "FAIL outside a check cell": (_cell("run()", _stdout("FAIL  size: not yet. Hint: 4 bytes\n")),
                                  "shows 'FAIL'"),
    "FAIL in a figure's text": (_cell("plot()", nbformat.v4.new_output("display_data", data={
        "text/plain": "<Figure: FAILED to measure>", "image/png": "iVBOR"})), "shows 'FAIL'"),
    "check that prints nothing": (_cell(CHECK), "printed 0 PASS/FAIL"),
    "check that returns instead of printing": (_cell(CHECK, nbformat.v4.new_output(
        "execute_result", execution_count=1, data={"text/plain": "False"})), "printed 0 PASS/FAIL"),
    "check that prints on stderr": (_cell(CHECK, _stdout(REPLACE, "stderr")), "printed 0 PASS/FAIL"),
    "check that prints two lines": (_cell(CHECK, _stdout(REPLACE + REPLACE)), "printed 2 PASS/FAIL"),
    "two checks, one line": (_cell(CHECK + "\n" + CHECK, _stdout(REPLACE)), "printed 1 PASS/FAIL"),
    "a given answer that fails": (_cell(CHECK.replace("...", "3"), _stdout("FAIL  size: not yet. Hint: 4\n")),
                                  "not as an unanswered"),
    "FAIL beside the check's line": (_cell(CHECK, _stdout(REPLACE + "measuring: FAIL\n")), "shows 'FAIL'"),
    "traceback beside the check's line": (_cell(CHECK, _stdout(REPLACE), _stdout(TRACEBACK, "stderr")),
                                          "shows 'Traceback'"),
}


@pytest.mark.parametrize("broken", BROKEN, ids=list(BROKEN))
def test_output_problems_finds_what_nbclient_lets_through(broken):
    cell, problem = BROKEN[broken]
    nb = nbformat.v4.new_notebook(cells=[_cell("print('ready')", _stdout("ready\n")), cell])
    problems = output_problems(nb)
    assert len(problems) == 1 and problems[0].startswith("cell 1 ") and problem in problems[0], problems


def test_output_problems_reads_the_widgets_saved_state():
    # an exception inside `with ipywidgets.Output():` is shown in the widget and swallowed there
    nb = nbformat.v4.new_notebook(cells=[_cell("explorer", _stdout("ready\n"))])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {
        "1": {"model_name": "OutputModel", "state": {"outputs": [
            {"output_type": "error", "ename": "ValueError", "evalue": "bad",
             "traceback": [f"{RED}ValueError{RED}   Traceback (most recent call last)"]}]}}}}}
    assert output_problems(nb)


def _repository_url() -> str:
    import yaml
    return yaml.safe_load((NOTEBOOKS[0].parent.parent / "_config.yml").read_text())["repository"]["url"]


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks in notebooks/ yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_first_code_cell_makes_the_notebook_work_in_colab(path):
    """The first code cell installs lcnn_lab from the repository named in _config.yml (the one place the
    repository is configured), only in Colab, and enables Colab's widget manager."""
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code").source
    assert 'if "google.colab" in sys.modules:' in first
    assert f"git+{_repository_url()}" in first, "the install URL differs from repository.url in _config.yml"
    assert "enable_custom_widget_manager()" in first
    assert "torch" not in first.replace("PyTorch", ""), "installing torch in Colab would replace Colab's build"


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks in notebooks/ yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "strip outputs before committing: the book executes notebooks itself"
