"""The static Explorer view in a real (headless) browser: its controls swap in the precomputed numbers and
plot, two views on one page stay independent, and the page renders to a non-trivial screenshot."""
from __future__ import annotations

from pathlib import Path

import pytest

from lcnn_lab.models import create_model
from lcnn_lab.render import format_measurement
from lcnn_lab.widgets import Dropdown, Explorer, Slider, Toggle


def cifar(**knobs):
    return create_model("cifar_net", **knobs)


@pytest.fixture(scope="module")
def explorers() -> tuple[Explorer, Explorer]:
    kernel = Explorer([Slider("kernel_size", [1, 3, 5, 7], label="kernel size k"),
                       Dropdown("groups", [1, 2, 3, "depthwise"], label="group count")],
                      model_fn=cifar, fixed={"width": 0.25}, baseline={"kernel_size": 3, "groups": 1},
                      latency=False, plot="macs_vs_params", title="Kernel size and groups")
    width = Explorer([Slider("width", [0.25, 0.5, 1.0], label="width multiplier"),
                      Toggle("shuffle", label="channel shuffle")],
                     model_fn=cifar, fixed={"groups": 2}, baseline={"width": 0.5}, latency=False,
                     plot="bars", title="Width")
    return kernel, width


@pytest.fixture(scope="module")
def page(explorers, tmp_path_factory) -> Path:
    """Both static views on one minimal page, opened through file:// (no server, no network)."""
    body = "\n<p>Some text between the two explorers.</p>\n".join(ex.static_html() for ex in explorers)
    path = tmp_path_factory.mktemp("static") / "explorers.html"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>explorers</title></head>"
                    f"<body style='margin:24px'>{body}</body></html>", encoding="utf-8")
    return path


def shown(root, metric: str) -> str:
    return root.find_element("css selector", f"[data-view] [data-metric='{metric}']").text


def plot(root) -> str:
    return root.find_element("css selector", "[data-view] [data-plot]").get_attribute("innerHTML")


def expected(ex: Explorer, **knobs) -> dict[str, str]:
    return format_measurement(ex.measurement_for(**knobs))


def test_static_controls_swap_in_the_precomputed_views(chrome, page, explorers, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    kernel, width = explorers
    chrome.get(page.as_uri())
    roots = chrome.find_elements("css selector", "div.lcnn-explorer")
    assert len(roots) == 2 and roots[0].get_attribute("id") != roots[1].get_attribute("id")
    k_root, w_root = roots

    # Initial views are the baselines.
    assert shown(k_root, "params") == expected(kernel, kernel_size=3, groups=1)["params"]
    assert shown(w_root, "macs") == expected(width, width=0.5, shuffle=False)["macs"]
    k_plot, w_plot, w_params = plot(k_root), plot(w_root), shown(w_root, "params")

    # A reader moves the kernel-size slider one step right, with the keyboard: k = 3 -> 5.
    k_root.find_element("css selector", "input[type=range]").send_keys(Keys.ARROW_RIGHT)
    want = expected(kernel, kernel_size=5, groups=1)
    assert shown(k_root, "params") == want["params"] and shown(k_root, "macs") == want["macs"]
    assert k_root.find_element("css selector", "output").text == "5"
    assert "kernel size k = 5" in k_root.find_element("css selector", "[data-view]").text
    assert plot(k_root) != k_plot
    # every grid point is drawn again (the static page stores that shared layer once and copies it in)
    assert len(k_root.find_elements("css selector", "[data-view] [data-plot] circle")) >= 12
    assert shown(w_root, "params") == w_params and plot(w_root) == w_plot     # the other one is untouched

    # ... then picks a group count from the menu, including one that cannot be built.
    select = Select(k_root.find_element("css selector", "select"))
    select.select_by_visible_text("depthwise")
    assert shown(k_root, "macs") == expected(kernel, kernel_size=5, groups="depthwise")["macs"]
    select.select_by_visible_text("3")
    assert "cannot be built" in k_root.find_element("css selector", "[data-view]").text
    select.select_by_visible_text("2")
    assert shown(k_root, "params") == expected(kernel, kernel_size=5, groups=2)["params"]

    # The second explorer: its checkbox and slider work on their own.
    k_text = k_root.find_element("css selector", "[data-view]").text
    w_root.find_element("css selector", "input[type=checkbox]").click()
    w_root.find_element("css selector", "input[type=range]").send_keys(Keys.ARROW_RIGHT)   # 0.5 -> 1.0
    want = expected(width, width=1.0, shuffle=True)
    assert shown(w_root, "params") == want["params"] and shown(w_root, "macs") == want["macs"]
    assert "×" in w_root.find_element("css selector", "[data-change='macs']").text
    assert plot(w_root) != w_plot
    assert k_root.find_element("css selector", "[data-view]").text == k_text

    # Provenance is on the page, and the page renders to a real picture.
    assert "threads" in k_root.find_element("css selector", "[data-view] [data-provenance]").text
    shot = tmp_path / "explorers.png"
    chrome.set_window_size(1200, 1400)
    assert chrome.save_screenshot(str(shot))
    with Image.open(shot) as image:
        colours = image.convert("RGB").resize((120, 140)).getcolors(maxcolors=1_000_000)
    assert shot.stat().st_size > 20_000 and len(colours) > 50   # text, plots and controls, not a blank page
