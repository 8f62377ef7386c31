"""MathJax served from the book itself, so that math renders with no network (a classroom, a train, the
browser test), in the text and in the navigation.

``mathjax_path`` in ``_config.yml`` names a MathJax 3 component relative to ``_static`` (for example
``mathjax/tex-chtml-full.js``). This extension copies that one file, and for the CHTML output the web fonts
it loads (``output/chtml/fonts/woff-v2``), from the pinned PyPI package ``sphinx-mathjax-offline``
(MathJax 3.2.2, byte for byte the ``es5/`` folder of npm's ``mathjax@3.2.2``) into ``_static/mathjax``.
The package's own Sphinx extension is not used: it copies the whole 24 MB distribution into every build.

It also asks Sphinx to put MathJax on every page, not only on pages with equations: the navigation shows
chapter titles that contain math (``The \\(1\\times 1\\) convolution``) on pages that have none.
"""
from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path, PurePosixPath

from sphinx.application import Sphinx
from sphinx.errors import ConfigError, ExtensionError

PACKAGE = "sphinx-mathjax-offline"
PREFIX = "mathjax/"            # mathjax_path is relative to _static; the files go to _static/mathjax/
CHTML_FONTS = "output/chtml/fonts/woff-v2"


def mathjax_root() -> Path:
    """The installed package's copy of MathJax's ``es5/`` folder."""
    try:
        files = metadata.files(PACKAGE) or []
    except metadata.PackageNotFoundError as err:
        raise ExtensionError(f"{PACKAGE} is not installed (it is in requirements.txt: run `make env`)") from err
    for f in files:
        if f.as_posix().endswith("static/mathjax/startup.js"):
            return Path(f.locate()).parent
    raise ExtensionError(f"{PACKAGE} is installed but holds no static/mathjax/ folder")


def needed_files(component: str) -> list[str]:
    """The files, relative to MathJax's root, that one combined component needs to render offline."""
    files = [component]
    if "chtml" in component:  # the CHTML output loads its fonts from [mathjax]/output/chtml/fonts/woff-v2
        root = mathjax_root()
        files += sorted(p.relative_to(root).as_posix() for p in (root / CHTML_FONTS).glob("*.woff"))
    return files


def check_config(app: Sphinx, config) -> None:
    path = str(config.mathjax_path)
    if "://" in path or path.startswith("//") or not path.startswith(PREFIX):
        raise ConfigError(f"mathjax_path = {path!r}: the book loads MathJax from its own _static folder; set "
                          f"it to a component of the offline copy, e.g. '{PREFIX}tex-chtml-full.js'")
    component = path.removeprefix(PREFIX)
    if not (mathjax_root() / component).is_file():
        raise ConfigError(f"mathjax_path = {path!r}: {PACKAGE} has no MathJax component {component!r}")
    # MathJax on every page: titles in the navigation contain math even where the page has none.
    app.set_html_assets_policy("always")


def copy_mathjax(app: Sphinx, exc: Exception | None) -> None:
    if exc is not None or app.builder.format != "html":
        return
    root, out = mathjax_root(), Path(app.outdir) / "_static" / PREFIX
    for name in needed_files(str(app.config.mathjax_path).removeprefix(PREFIX)):
        target = out / PurePosixPath(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, target)


def setup(app: Sphinx) -> dict:
    app.setup_extension("sphinx.ext.mathjax")
    app.connect("config-inited", check_config)
    app.connect("build-finished", copy_mathjax)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
