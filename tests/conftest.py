"""Shared fixtures: a headless Chromium for the tests that look at pages as a reader's browser does."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from lcnn_lab.classroom import ANSWER, SOLUTIONS, exercise_cells, load_solutions  # noqa: F401 - shared with the tests

# Debian's packages (`make browser`); the driver path is passed explicitly, so Selenium Manager is
# never asked to find or download anything (it would need the internet).
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                "--window-size=1200,1400", "--hide-scrollbars")


def pytest_configure(config):
    """Tests write into a copy of the committed results store, never into results/ itself.

    The copy starts with what is committed (so the notebooks find the stored measurements, as in the
    book) and collects what the smoke-budget runs add; kernels and the book build inherit the variable.
    """
    import tempfile
    root = Path(__file__).resolve().parent.parent
    copy = Path(tempfile.mkdtemp(prefix="lcnn-test-results-"))
    if (root / "results").is_dir():
        shutil.copytree(root / "results", copy, dirs_exist_ok=True)
    os.environ["LCNN_RESULTS"] = str(copy)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def chrome(tmp_path_factory):
    """A headless Chromium driven by selenium, shared by every browser test of the session.

    Skipped (with the reason) when Chromium is not installed, except in CI (``CI=true``), where a
    missing browser is a failure: the browser tests must run there.
    """
    if not CHROMIUM.exists():
        message = f"headless Chromium not found at {CHROMIUM}: run `make browser` to install it"
        if in_ci():
            pytest.fail(f"{message} (CI is set, so the browser tests may not be skipped)")
        pytest.skip(message)
    if not CHROMEDRIVER.exists():
        pytest.fail(f"{CHROMIUM} is installed but chromedriver is not at {CHROMEDRIVER}: run `make browser`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}"):
        options.add_argument(flag)
    # DevTools' network events (Network.requestWillBeSent ...) in the performance log: the offline book
    # test counts every request a page makes.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


# ----------------------------------------------------------------------------------------------
# Every notebook executed once per test run, shared by the notebook tests and the book build

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


SOLUTION_TAG = "lcnn-answer-check"


def solutions(notebook: str) -> dict[str, dict]:
    return load_solutions(notebook)


def answer_cells(nb, notebook: str):
    """For every check cell, a copy with its blanks filled by the solutions and one with the wrong
    answers (tests/solutions.yml), to run after the notebook in the same kernel."""
    import nbformat
    known = solutions(notebook)
    cells = []
    for index, names in exercise_cells(nb):
        if not all(n in known for n in names):
            continue                          # test_every_exercise_has_a_solution reports it
        for kind in ("solution", "wrong"):
            answers = {n: known[n][kind] for n in names}
            if any(a is None for a in answers.values()):
                continue                      # a prediction: no single right answer
            source = ANSWER.sub(lambda m: f"{m['name']} = ({answers[m['name']]})", nb.cells[index].source)
            cell = nbformat.v4.new_code_cell(source)
            cell.metadata[SOLUTION_TAG] = {"cell": index, "variables": names, "kind": kind}
            cell.metadata["tags"] = ["raises-exception"]   # a failing solution is reported by its test
            cells.append(cell)
    return cells


class ExecutedNotebooks:
    """Each notebook run top to bottom in a fresh kernel, once per test run, as `make book` runs it (the
    smoke budget, static Explorers, the notebook's folder as working directory). test_notebooks checks
    their outputs; test_book builds the book from them without executing anything again.

    In the same kernel, after the last cell, every exercise's check cell runs twice more: with the
    solutions and with wrong answers (tests/solutions.yml). Those runs are kept apart (``answers``)
    and are not part of the executed notebook the book is built from."""

    def __init__(self):
        self._done: dict[str, tuple[object, str | None]] = {}
        self.answers: dict[str, list] = {}

    def get(self, path: Path):
        """``(executed notebook, error or None)``: the error is one string, the notebook what ran."""
        if path.name not in self._done:
            import nbformat
            from nbclient import NotebookClient
            nb = nbformat.read(path, as_version=4)
            extra = answer_cells(nb, path.stem)
            n_cells = len(nb.cells)
            nb.cells += extra
            saved = {k: os.environ.get(k) for k in ("LCNN_BUDGET", "LCNN_WIDGETS")}
            os.environ.update(LCNN_BUDGET="smoke", LCNN_WIDGETS="static")   # the kernel inherits them
            try:
                NotebookClient(nb, timeout=900, kernel_name="python3",
                               resources={"metadata": {"path": str(path.parent)}}).execute()
                error = None
            except Exception as err:  # noqa: BLE001 - reported by the test of this notebook
                error = f"{type(err).__name__}: {err}"
            finally:
                for k, v in saved.items():
                    os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
            self.answers[path.name] = nb.cells[n_cells:]
            nb.cells = nb.cells[:n_cells]
            self._done[path.name] = (nb, error)
        return self._done[path.name]


@pytest.fixture(scope="session")
def executed_notebooks() -> ExecutedNotebooks:
    return ExecutedNotebooks()
