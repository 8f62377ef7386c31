"""The Explorer, driven headlessly through its real ipywidgets controls: its numbers are lcnn_lab.profile's,
it survives invalid combinations, caches, evaluates and trains, and its static view is self-contained."""
from __future__ import annotations

import asyncio
import copy
import re

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import lcnn_lab.train as T
import lcnn_lab.trained as TR
import lcnn_lab.widgets as W
from lcnn_lab import config
from lcnn_lab import profile as P
from lcnn_lab.models import create_model
from lcnn_lab.results import ResultsStore
from lcnn_lab.profile import Measurement
from lcnn_lab.render import format_measurement
from lcnn_lab.widgets import Dropdown, Explorer, Slider, Toggle

SMALL = {"width": 0.25}   # channels (8, 8, 16, 32): every model here builds and trains in seconds


def cifar(**knobs) -> nn.Module:
    return create_model("cifar_net", **knobs)


def arch_explorer(model_fn=cifar, **kwargs) -> Explorer:
    kwargs = {"title": "Kernel size and groups", "min_run_time": 0.02, "debounce": 0, **kwargs}
    return Explorer(knobs=[Slider("kernel_size", [1, 3, 5], label="kernel size k"),
                           Dropdown("groups", [1, 2, 3, "depthwise"], label="group count"),
                           Toggle("shuffle", label="channel shuffle")],
                    model_fn=model_fn, fixed=SMALL, baseline={"kernel_size": 3, "groups": 1}, **kwargs)


def assert_profile_numbers(m: Measurement, model: nn.Module) -> None:
    macs = P.count_macs(model)
    assert m.value("params") == P.count_params(model)
    assert m.value("macs") == macs.total and m.value("flops") == 2 * macs.total == macs.flops
    assert m.value("size_bytes") == P.model_size_bytes(model, 32)


# ----------------------------------------------------------------------------------------------
# Live widget

def test_controls_update_numbers_that_equal_profile():
    ex = arch_explorer()
    ex.widget
    ex.wait()
    seen = {ex.measurement.value("macs")}
    base = ex.measurement
    assert "the baseline" in ex.view.value
    for knob, value in [("kernel_size", 5), ("groups", 2), ("shuffle", True), ("shuffle", False),
                        ("groups", "depthwise"), ("kernel_size", 1)]:
        ex.controls[knob].value = value          # what a reader's click does
        ex.wait()
        m = ex.measurement
        assert ex.value[knob] == value
        assert_profile_numbers(m, cifar(**SMALL, **ex.value))
        assert m.latency.median_ms > 0 and m.latency.iqr_ms >= 0 and m.latency.threads >= 1
        shown = ex.view.value
        for text in format_measurement(m).values():  # "… params", "… MACs (… FLOPs)", "… MB", "… ms ± …"
            assert text in shown
        assert "MACs" in shown and "FLOPs" in shown and "FLOPs = 2 × MACs" in shown
        ratio = m.value("macs") / base.value("macs")
        assert f"×{ratio:.2f}" in shown or f"×{ratio:.3f}" in shown or f"×{ratio:.1f}" in shown
        assert "<svg" in shown
        seen.add(m.value("macs"))
    assert len(seen) >= 5    # the numbers really moved
    ex.set(kernel_size=5, groups=2)               # from Python, for notebooks
    assert ex.controls["kernel_size"].value == 5 and ex.controls["groups"].value == 2
    assert_profile_numbers(ex.measurement, cifar(**SMALL, kernel_size=5, groups=2))
    with pytest.raises(ValueError, match="kernel_size=4 is not one of"):
        ex.set(kernel_size=4)


def test_invalid_combination_explains_and_the_widget_keeps_working():
    ex = arch_explorer(latency=False, plot="bars")
    ex.widget
    ex.controls["groups"].value = 3               # 8 stem channels are not divisible into 3 groups
    ex.wait()
    assert "groups=3 must divide" in ex.error and ex.measurement is None
    shown = ex.view.value
    assert "cannot be built" in shown and "groups=3 must divide" in shown
    assert "Traceback" not in shown and 'File "' not in shown
    ex.controls["groups"].value = 1
    ex.controls["shuffle"].value = True           # shuffle needs groups > 1: another rule
    ex.wait()
    assert "groups > 1" in ex.error
    ex.controls["groups"].value = 2               # valid again: numbers are back
    ex.wait()
    assert ex.error is None
    assert_profile_numbers(ex.measurement, cifar(**SMALL, kernel_size=3, groups=2, shuffle=True))
    assert "cannot be built" not in ex.view.value


def test_in_a_kernel_a_drag_is_measured_where_the_knob_rests(monkeypatch):
    """In a kernel, the slow numbers are callbacks on its event loop, run once a knob has rested."""
    timed = []
    real_latency = P.measure_latency
    monkeypatch.setattr(W, "measure_latency",
                        lambda model, *a, **k: timed.append(model.config.kernel_size) or real_latency(model, *a, **k))
    ex = arch_explorer(debounce=0.1)

    async def reader():
        ex.widget                                 # shown inside the kernel's loop
        assert ex.measurement.value("params") and "measuring latency…" in ex.view.value
        for k in (5, 1, 5):                       # a quick drag over the slider
            ex.controls["kernel_size"].value = k
            assert ex.measurement.value("params") == P.count_params(cifar(**SMALL, kernel_size=k))   # at once
            assert ex.measurement.latency is None and "measuring latency…" in ex.view.value
            await asyncio.sleep(0.02)
        for _ in range(1000):                     # the loop runs the scheduled measurements
            await asyncio.sleep(0.01)
            if len(timed) >= 2:
                break
        await asyncio.sleep(0.3)                  # and nothing else comes after them

    asyncio.run(reader())
    assert sorted(timed) == [3, 5]                # the baseline and where the knob rested; never k=1
    assert ex.measurement.value("latency_ms") > 0 and "measuring" not in ex.view.value


def test_each_combination_is_computed_once(monkeypatch):
    built, timed = [], []
    real_latency = P.measure_latency
    monkeypatch.setattr(W, "measure_latency", lambda *a, **k: timed.append(1) or real_latency(*a, **k))
    ex = arch_explorer(model_fn=lambda **k: built.append(dict(k)) or cifar(**k))
    ex.widget
    ex.wait()
    for k in (5, 3, 5, 1, 5, 3, 1):
        ex.controls["kernel_size"].value = k
        ex.wait()
    assert [b["kernel_size"] for b in built] == [3, 5, 1]
    assert len(timed) == 3
    assert ex.measurement_for(kernel_size=5).value("macs") == P.count_macs(cifar(**SMALL, kernel_size=5)).total
    assert len(built) == 3 and len(timed) == 3
    controls = list(ex.controls.values())
    ex.close()                                    # the worker stops, the widgets go
    assert all(c.comm is None for c in controls)


# ----------------------------------------------------------------------------------------------
# Accuracy

@pytest.fixture(scope="module")
def small_trained() -> nn.Module:
    model = cifar(**SMALL)
    T.train(model, T.TrainConfig(budget="smoke", epochs=1, train_images=1_000, eval_images=200,
                                 max_seconds=None, progress=False, history_eval_images=200))
    # training leaves channels_last weights; torch's pruning needs contiguous ones
    return model.to(memory_format=torch.contiguous_format).eval()


def pruned(model: nn.Module, ratio: float) -> nn.Module:
    """Global magnitude pruning of every conv and linear weight (a model transform, as a notebook does)."""
    m = copy.deepcopy(model)
    if ratio:
        weights = [(mod, "weight") for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
        prune.global_unstructured(weights, pruning_method=prune.L1Unstructured, amount=ratio)
    return m


def test_live_accuracy_is_evaluate_on_a_fixed_subset(small_trained):
    ex = Explorer([Slider("ratio", [0.0, 0.5, 0.9], label="pruning ratio")],
                  model_fn=lambda ratio: pruned(small_trained, ratio), accuracy="live", eval_images=300,
                  latency=False, debounce=0, plot="nonzero_vs_accuracy")
    ex.widget
    for ratio in (0.5, 0.9, 0.0):
        ex.controls["ratio"].value = ratio
        ex.wait()
        m = ex.measurement
        expected = T.evaluate(pruned(small_trained, ratio), n=300)
        assert (m.accuracy.value, m.accuracy.se, m.accuracy.n) == (expected.value, expected.se, 300)
        assert format_measurement(m)["accuracy"] == f"{100 * expected.value:.1f} % ± {100 * expected.se:.1f}"
        assert format_measurement(m)["accuracy"] in ex.view.value
        nonzero = P.count_params(pruned(small_trained, ratio), nonzero=True)
        assert m.value("nonzero_params") == nonzero and m.value("params") == P.count_params(small_trained)
    ex.controls["ratio"].value = 0.9
    ex.wait()
    assert "points" in ex.view.value and "sparse" in ex.view.value   # accuracy change vs the baseline


def test_train_button_trains_stores_and_shows(tmp_path, monkeypatch):
    monkeypatch.setenv("LCNN_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LCNN_BUDGET", "smoke")

    def make() -> Explorer:
        return Explorer([Slider("kernel_size", [3, 5, 7], label="kernel size k")], model_fn=cifar, fixed=SMALL,
                        accuracy="train", train_name="cifar_net", latency=False, debounce=0,
                        plot="macs_vs_accuracy", title="trained")

    ex = make()
    ex.widget
    ex.wait()
    assert ex.measurement.accuracy is None and "press Train" in ex.view.value
    assert not ex.train_button.disabled
    progress, panels = [], []
    ex.progress.observe(lambda change: progress.append(change["new"]), names="value")
    ex.view.observe(lambda change: panels.append(change["new"]), names="value")
    ex.train_button.click()                      # trains now, on the kernel's thread, showing progress
    stored = TR.trained_accuracy("cifar_net", store=ResultsStore(), compute=False, kernel_size=3, **SMALL)
    assert stored is not None and stored["budget"] == "smoke"
    m = ex.measurement
    assert (m.accuracy.value, m.accuracy.se) == (stored["accuracy"], stored["accuracy_se"])
    assert format_measurement(m)["accuracy"] in ex.view.value and "budget smoke" in ex.view.value
    assert ex.train_button.disabled and ex.train_button.description == "Trained"
    assert any(re.search(r"training… \d+ %", panel) for panel in panels)   # progress shown while it trains
    assert progress[-1] == 1.0

    # A fresh explorer reads the store without training; the static view trains what is missing
    # (here: it fails) and says "not measured" for it.
    def no_training(*args, **kwargs):
        raise RuntimeError("no training in this part of the test")
    monkeypatch.setattr(TR, "train", no_training)
    again = make()
    assert again.measurement_for(kernel_size=3).value("accuracy") == stored["accuracy"]
    assert again.measurement_for(kernel_size=5).accuracy is None
    html = again.static_html()
    views = dict(re.findall(r"<template data-key='(\d)'>(.*?)</template>", html))
    assert format_measurement(again.measurement_for(kernel_size=3))["accuracy"] in views["0"]
    assert "not measured" in views["1"] and "not measured" in views["2"]


def test_in_a_kernel_a_missing_stored_accuracy_does_not_hold_up_latency(tmp_path, monkeypatch):
    monkeypatch.setenv("LCNN_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LCNN_BUDGET", "smoke")
    ex = Explorer([Slider("kernel_size", [3, 5])], model_fn=cifar, fixed=SMALL, accuracy="train",
                  train_name="cifar_net", min_run_time=0.02, debounce=0.05)

    async def reader():
        ex.widget
        for _ in range(1000):
            await asyncio.sleep(0.01)
            if ex.measurement.latency is not None:
                return

    asyncio.run(reader())
    assert ex.measurement.value("latency_ms") > 0 and "press Train" in ex.view.value


# ----------------------------------------------------------------------------------------------
# Static view

def test_static_html_is_self_contained_complete_and_labelled(monkeypatch):
    ex = arch_explorer()
    html = ex.static_html()
    keys = re.findall(r"<template data-key='([^']*)'>", html)
    assert len(keys) == len(set(keys)) == 3 * 4 * 2       # one view per grid point
    assert not re.search(r"https?:|//[a-z]", html, re.I)   # no URL at all: nothing to fetch
    assert not re.search(r"<(script|img|link|iframe)[^>]*\b(src|href)\s*=", html, re.I)
    assert len(html) < 150_000 and html.count("<template data-bg>") == 1   # the scatter's points: once
    p = config.provenance(data=False)
    for label in (p["machine"], f"{p['threads']} threads", f"budget {config.get_budget().name}", p["date"],
                  f"torch {torch.__version__}"):
        assert label in html
    views = dict(re.findall(r"<template data-key='([^']*)'>(.*?)</template>", html))
    m = ex.measurement_for(kernel_size=5, groups=2, shuffle=True)
    assert_profile_numbers(m, cifar(**SMALL, kernel_size=5, groups=2, shuffle=True))
    for text in format_measurement(m).values():
        assert text in views["2,1,1"]
    assert "cannot be built" in views["0,2,0"] and "Traceback" not in html   # groups=3
    ids = set(re.findall(r"id='(lcnn-ex-[0-9a-f]+)'", html + ex.static_html()))
    assert len(ids) == 2                                   # two views on one page never clash

    monkeypatch.setenv("LCNN_WIDGETS", "static")           # what the book build sets
    bundle = ex._repr_mimebundle_()
    assert set(bundle) == {"text/html", "text/plain"} and "<template" in bundle["text/html"]
    assert ex._ui is None                                  # no ipywidget made: the page loads no widget JS


def test_knob_specs_fail_loudly():
    with pytest.raises(ValueError, match="groups=5 is not one of"):
        Explorer([Dropdown("groups", [1, 2])], model_fn=cifar, baseline={"groups": 5})
    with pytest.raises(ValueError, match="not a knob"):
        Explorer([Dropdown("groups", [1, 2])], model_fn=cifar, baseline={"width": 1.0})
    with pytest.raises(ValueError, match="needs latency=True"):
        Explorer([Dropdown("groups", [1, 2])], model_fn=cifar, latency=False, plot="macs_vs_latency")
    with pytest.raises(ValueError, match="plot="):
        Explorer([Dropdown("groups", [1, 2])], model_fn=cifar, plot="macs_vs_colour")
    with pytest.raises(ValueError, match="accuracy="):
        Explorer([Dropdown("groups", [1, 2])], model_fn=cifar, accuracy="test")
    with pytest.raises(ValueError, match="max_grid"):
        Explorer([Slider("a", range(20)), Slider("b", range(20))], model_fn=cifar, max_grid=100).static_html()
