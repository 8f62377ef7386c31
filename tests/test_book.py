"""The book builds: Jupyter Book 1.x, warnings are errors, notebooks executed at the smoke budget."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
JB = Path(sys.executable).with_name("jupyter-book")


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [ch["file"] for ch in part.get("chapters", [])]
    return files


def test_every_notebook_is_in_the_toc():
    listed = {f.removesuffix(".ipynb") for f in toc_files()}
    notebooks = {str(p.relative_to(ROOT).with_suffix("")) for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert notebooks <= listed, f"notebooks missing from _toc.yml: {sorted(notebooks - listed)}"


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    env = dict(os.environ, LCNN_BUDGET="smoke")
    proc = subprocess.run(
        [str(JB), "build", str(ROOT), "--path-output", str(out), "--warningiserror", "--nitpick", "--keep-going"],
        env=env, capture_output=True, text=True, timeout=1800)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "build succeeded" in log, f"book build failed:\n{log[-6000:]}"
    return out / "_build" / "html"


def test_book_builds_every_toc_page(built_book):
    assert (built_book / "index.html").exists()
    for f in toc_files():
        page = built_book / (f.removesuffix(".ipynb").removesuffix(".md") + ".html")
        assert page.exists(), f"{f} is in _toc.yml but {page.name} was not built"


def test_internal_links_resolve(built_book):
    broken = []
    for page in built_book.rglob("*.html"):
        if page.relative_to(built_book).parts[0] in ("_static", "_sources"):  # theme templates, not pages
            continue
        for href in re.findall(r'href="([^"#?]+)', page.read_text(errors="replace")):
            if "://" in href or href.startswith(("mailto:", "javascript:", "data:")):
                continue
            if not (page.parent / href).resolve().exists():
                broken.append(f"{page.relative_to(built_book)} -> {href}")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:20])
