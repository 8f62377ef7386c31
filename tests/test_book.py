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
    env = dict(os.environ, LCNN_BUDGET="smoke", LCNN_WIDGETS="static")  # as `make book` does, at the smoke budget
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


# ----------------------------------------------------------------------------------------------
# The built book in a real browser (headless Chromium, see conftest.py)

SCREENSHOTS = ROOT / "_build" / "screenshots"  # copies are committed in book/_static/screenshots/


@pytest.fixture(scope="session")
def served_book(built_book):
    """The built site over HTTP on 127.0.0.1, as a reader's browser would load it."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built_book))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _page(f: str) -> str:
    return f.removesuffix(".ipynb").removesuffix(".md") + ".html"


def test_every_page_renders_with_its_figures_and_static_widgets(chrome, served_book):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for f in toc_files():
        chrome.get(f"{served_book}/{_page(f)}")
        heading = chrome.execute_script("const h = document.querySelector('article h1'); return h ? h.textContent : ''")
        assert heading.strip(), f"{f}: no title rendered"
        broken = chrome.execute_script(
            "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
        assert not broken, f"{f}: images that did not load: {broken}"
        if f.startswith("notebooks/"):
            assert chrome.find_elements("css selector", "main div.lcnn-explorer"), f"{f}: no static explorer"
            assert chrome.find_elements("css selector", "main img"), f"{f}: no figure"
            errors = chrome.find_elements("css selector", "main .output.error, main .output.traceback")
            assert not errors, f"{f}: a cell printed a traceback"
        if f in ("book/intro", "notebooks/01_kernel_size"):
            chrome.set_window_size(1280, 1600)
            assert chrome.save_screenshot(str(SCREENSHOTS / f"{Path(f).name}.png"))


def test_static_slider_in_a_built_chapter_changes_the_numbers(chrome, served_book):
    from selenium.webdriver.common.keys import Keys

    chrome.get(f"{served_book}/notebooks/01_kernel_size.html")
    explorer = chrome.find_element("css selector", "main div.lcnn-explorer")
    chrome.execute_script("arguments[0].scrollIntoView()", explorer)

    def shown(metric):
        return explorer.find_element("css selector", f"[data-view] [data-metric='{metric}']").text

    before = shown("params"), shown("macs")
    explorer.find_element("css selector", "input[type=range]").send_keys(Keys.ARROW_RIGHT)  # k = 3 -> 5
    after = shown("params"), shown("macs")
    assert after != before and all(after)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    chrome.set_window_size(1280, 1300)
    chrome.execute_script("arguments[0].scrollIntoView()", explorer)
    assert chrome.save_screenshot(str(SCREENSHOTS / "01_kernel_size_explorer.png"))
    assert "measured" in explorer.text.lower() or "threads" in explorer.text
