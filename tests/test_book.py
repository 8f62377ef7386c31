"""The book builds: Jupyter Book 1.x, warnings are errors, notebooks executed at the smoke budget."""
import os
import re
import shutil
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
def built_book(tmp_path_factory, executed_notebooks) -> Path:
    """The book built as `make book` builds it, at the smoke budget, from the notebooks the notebook tests
    executed (each notebook runs once per test run): a copy of the sources with those executed
    notebooks in place, and execution switched off in its _config.yml."""
    import nbformat
    src, out = tmp_path_factory.mktemp("book-src") / "lcnn-lab", tmp_path_factory.mktemp("book")
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "_build", "results", "tests",
                                                             "benchmarks", ".ci", ".ipynb_checkpoints"))
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb, error = executed_notebooks.get(path)
        assert error is None, f"{path.name} stopped with an error, so the book cannot be built:\n{error[-4000:]}"
        nbformat.write(nb, src / "notebooks" / path.name)
    cfg = yaml.safe_load((src / "_config.yml").read_text())
    cfg["execute"]["execute_notebooks"] = "off"
    (src / "_config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = dict(os.environ, LCNN_BUDGET="smoke", LCNN_WIDGETS="static")  # as `make book` does, at the smoke budget
    proc = subprocess.run(
        [str(JB), "build", str(src), "--path-output", str(out), "--warningiserror", "--nitpick", "--keep-going"],
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
# Publishing: the Pages workflow, and the repository address kept in one place (_config.yml)

def repository() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]


def test_launch_buttons_open_the_repository_named_in_config(built_book):
    repo = repository()
    owner_name = repo["url"].removeprefix("https://github.com/").strip("/")
    for f in toc_files():
        if not f.startswith("notebooks/"):
            continue
        html = (built_book / _page(f)).read_text(errors="replace")
        notebook = f if f.endswith(".ipynb") else f + ".ipynb"
        colab = f"https://colab.research.google.com/github/{owner_name}/blob/{repo['branch']}/{notebook}"
        assert f'href="{colab}"' in html, f"{f}: no Colab button opening {colab}"
        assert f'href="{repo["url"]}"' in html, f"{f}: no repository button for {repo['url']}"
        others = set(re.findall(r'https://github\.com/([\w.-]+/[\w.-]+)', html)) - {owner_name}
        assert not others, f"{f}: links to other repositories {others}; the address belongs in _config.yml only"


def test_pages_workflow_builds_the_book_with_make_and_deploys_it():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))            # YAML 1.1 reads the key `on` as true
    assert "main" in triggers["push"]["branches"]
    assert workflow["permissions"]["pages"] == "write" and workflow["permissions"]["id-token"] == "write"
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    uses = {step.get("uses", "").split("@")[0]: step for step in build["steps"]}
    assert str(uses["actions/setup-python"]["with"]["python-version"]) == "3.11"
    assert any(step.get("run", "").strip() == "make book" for step in build["steps"]), "the book is built with make book"
    assert uses["actions/upload-pages-artifact"]["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    assert any(step.get("uses", "").startswith("actions/deploy-pages@") for step in deploy["steps"])
    assert "LCNN_DATA" not in str(build.get("env", {})), "the runner has no data mirror: make data downloads it"


# ----------------------------------------------------------------------------------------------
# The built book works offline: nothing on any page is fetched from another host

def built_pages(book: Path) -> list[Path]:
    """Every HTML page of the built book (the theme's templates and the copied sources are no pages)."""
    return sorted(p for p in book.rglob("*.html") if p.relative_to(book).parts[0] not in ("_static", "_sources"))


REMOTE_ASSET = re.compile(r'<(?:script|img|iframe|source)\b[^>]*\bsrc="((?:https?:)?//[^"]+)"'
                          r'|<link\b[^>]*\brel="(?:stylesheet|preload|modulepreload|icon)"[^>]*\bhref="((?:https?:)?//[^"]+)"')


def test_no_page_loads_a_script_or_stylesheet_from_another_host(built_book):
    """The HTML itself: no CDN script (MathJax, require.js, the widget manager), style sheet or image."""
    remote = {f"{page.relative_to(built_book)}: {a or b}"
              for page in built_pages(built_book)
              for a, b in REMOTE_ASSET.findall(page.read_text(errors="replace"))}
    assert not remote, "pages that load files from other hosts:\n" + "\n".join(sorted(remote)[:20])
    assert (built_book / "_static" / "mathjax" / "tex-chtml-full.js").is_file(), "MathJax was not copied"


# ----------------------------------------------------------------------------------------------
# The built book in a real browser (headless Chromium, see conftest.py), opened from disk with the
# network switched off, as in a classroom without internet

SCREENSHOTS = ROOT / "_build" / "screenshots"  # copies are committed in book/_static/screenshots/
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "chrome-error:", "devtools:")


@pytest.fixture()
def offline(chrome):
    """The shared browser with its network off (DevTools network emulation), back online afterwards."""
    def emulate(offline: bool):
        chrome.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    chrome.execute_cdp_cmd("Network.enable", {})
    emulate(True)
    chrome.set_script_timeout(60)
    try:
        yield chrome
    finally:
        emulate(False)


def requests_made(chrome) -> list[str]:
    """The URLs requested since the last call, from DevTools' Network.requestWillBeSent events."""
    import json
    urls = []
    for entry in chrome.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def open_page(chrome, page: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait
    chrome.get(page.as_uri())
    # index.html only redirects (meta refresh) to the first page: wait for the page it leads to
    WebDriverWait(chrome, 30).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && !document.querySelector('meta[http-equiv=refresh i]')"))


# Waits for MathJax to finish typesetting and for the fonts it asked for, then reports: every element
# holding math, how many hold MathJax's output, and any TeX left in the text a reader sees.
MATH_REPORT = r"""
const done = arguments[arguments.length - 1];
const mj = window.MathJax;
const typeset = mj && mj.startup && mj.startup.promise ? mj.startup.promise : Promise.resolve();
typeset.then(() => document.fonts.ready).then(() => {
  const math = Array.from(document.querySelectorAll('.math'));
  const raw = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!el || el.closest('pre, code, script, style, textarea, template, mjx-container')) continue;
    if (!el.getClientRects().length) continue;                   // not displayed
    if (/\\\(|\\\[|\\begin\{|\$\$/.test(node.data)) raw.push(node.data.trim().slice(0, 100));
  }
  done({version: (mj && mj.version) || null, math: math.length,
        rendered: math.filter(m => m.querySelector('mjx-container')).length,
        output: document.querySelectorAll('mjx-container').length, raw: raw,
        fontErrors: Array.from(document.fonts).filter(f => f.status === 'error').map(f => f.family)});
}, err => done({error: String(err)}));
"""

BROKEN_IMAGES = "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"


def check_sliders_are_live(chrome, where: str) -> int:
    """Moves every static Explorer slider on the page one step; its view must change. Returns the count."""
    from selenium.webdriver.common.keys import Keys
    moved = 0
    for explorer in chrome.find_elements("css selector", "main div.lcnn-explorer"):
        view = explorer.find_element("css selector", "[data-view]")
        for slider in explorer.find_elements("css selector", "input[type=range]"):
            chrome.execute_script("arguments[0].scrollIntoView({block: 'center'})", slider)
            at_end = chrome.execute_script("return arguments[0].value === arguments[0].max", slider)
            before = view.get_attribute("innerHTML")
            slider.send_keys(Keys.ARROW_LEFT if at_end else Keys.ARROW_RIGHT)
            assert view.get_attribute("innerHTML") != before, \
                f"{where}: moving the slider {slider.get_attribute('data-knob')!r} did not change its view"
            moved += 1
    return moved


def test_every_page_renders_offline_with_its_math_figures_and_sliders(offline, built_book):
    """Every built page, opened from disk with no network: no request leaves the page, the math is typeset
    (in the text and in the navigation), every image loads, every static slider works."""
    chrome = offline
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pages = built_pages(built_book)
    chapters = {built_book / _page(f) for f in toc_files()}
    assert chapters <= set(pages)
    requests_made(chrome)                                   # drop what earlier tests left in the log
    typeset = sliders = 0
    for page in pages:
        where = str(page.relative_to(built_book))
        open_page(chrome, page)
        math = chrome.execute_async_script(MATH_REPORT)
        assert "error" not in math, f"{where}: MathJax failed: {math}"
        elsewhere = [u for u in requests_made(chrome) if not u.startswith(LOCAL_SCHEMES)]
        assert not elsewhere, f"{where}: requests to other hosts: {elsewhere}"
        assert not math["raw"], f"{where}: math shown as TeX source: {math['raw'][:5]}"
        if math["math"]:
            assert math["version"], f"{where}: has math but MathJax did not load"
            assert math["rendered"] == math["math"], f"{where}: {math['math'] - math['rendered']} math elements " \
                                                     f"without MathJax output"
        assert not math["fontErrors"], f"{where}: fonts that did not load: {math['fontErrors']}"
        typeset += math["output"]
        broken = chrome.execute_script(BROKEN_IMAGES)
        assert not broken, f"{where}: images that did not load: {broken}"
        if page in chapters:
            heading = chrome.execute_script(
                "const h = document.querySelector('article h1'); return h ? h.textContent : ''")
            assert heading.strip(), f"{where}: no title rendered"
        if where.startswith("notebooks/"):
            assert chrome.find_elements("css selector", "main div.lcnn-explorer"), f"{where}: no static explorer"
            assert chrome.find_elements("css selector", "main img"), f"{where}: no figure"
            errors = chrome.find_elements("css selector", "main .output.error, main .output.traceback")
            assert not errors, f"{where}: a cell printed a traceback"
            sliders += check_sliders_are_live(chrome, where)
        if where in ("book/intro.html", "notebooks/01_kernel_size.html"):
            chrome.set_window_size(1280, 1600)
            chrome.execute_script("window.scrollTo(0, 0)")
            assert chrome.save_screenshot(str(SCREENSHOTS / f"{Path(where).stem}.png"))
        late = [u for u in requests_made(chrome) if not u.startswith(LOCAL_SCHEMES)]
        assert not late, f"{where}: requests to other hosts after the page loaded: {late}"
    assert typeset > 100 and sliders >= 5, f"only {typeset} formulas typeset and {sliders} sliders moved in the book"


def _page(f: str) -> str:
    return f.removesuffix(".ipynb").removesuffix(".md") + ".html"


def test_static_slider_in_a_built_chapter_changes_the_numbers(offline, built_book):
    from selenium.webdriver.common.keys import Keys

    chrome = offline
    open_page(chrome, built_book / "notebooks" / "01_kernel_size.html")
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
