"""Explorers: sliders that change a model and show what it costs, live in Jupyter or static in the book.

A notebook builds an :class:`Explorer` from its knobs and a function from knobs to a model::

    import lcnn_lab as lab
    from lcnn_lab.widgets import Explorer, Slider, Dropdown, Toggle

    ex = Explorer(
        knobs=[Slider("kernel_size", [1, 3, 5, 7], label="kernel size k"),
               Dropdown("groups", [1, 2, 4, 8, "depthwise"], label="group count")],
        model_fn=lambda **k: lab.models.create_model("cifar_net", **k),
        accuracy="train", train_name="cifar_net",
        baseline={"kernel_size": 3, "groups": 1},
        title="Kernel size and groups", plot="macs_vs_latency")
    ex                      # the last expression of a cell shows it

Each view shows, against the baseline: **params**, **MACs** (with FLOPs = 2 x MACs), **size**, measured
**latency** (median ± IQR/2) and **accuracy** (± its standard error), plus one plot that updates in place.

* Params, MACs and size are counted with :mod:`lcnn_lab.profile` on every change (tens of ms).
* Latency is measured once a knob has rested for ``debounce`` seconds (``min_run_time`` seconds of
  timed runs, on the kernel's thread between messages); the panel says "measuring latency…" until then.
* ``accuracy="live"``: ``model_fn`` returns an already trained (e.g. pruned or quantised) model; it is
  evaluated on a fixed subset of ``eval_images`` test images, about a second on 2 CPU cores.
* ``accuracy="train"``: accuracy comes from the results store for the current budget
  (``LCNN_BUDGET``); a **Train** button trains a missing combination under the budget, with a progress
  bar, and stores it. ``accuracy=None``: no accuracy row.
* A combination the model builder rejects (``ValueError``, e.g. ``groups=3`` with 16 channels) shows
  the builder's one-line explanation instead of numbers.
* Every combination is computed once and cached (a dict keyed by the tuple of knob values).

``model_fn`` may also return a dict ``{"model": m, "bits": 8}``: ``bits`` is the bit width the size is
counted at (quantisation); other entries are shown as given (e.g. an accuracy measured elsewhere).
``fixed={"width": 0.5}`` passes knobs that do not move to ``model_fn`` (and to training).

**Two modes** (``LCNN_WIDGETS``, see :mod:`lcnn_lab.config`). ``live`` (default) shows ipywidgets
controls and needs a running kernel (JupyterLab, Notebook 7, VS Code, Colab with its custom widget
manager enabled). ``static`` (set by ``make book``) computes every combination of knob values first
and shows a self-contained HTML view whose controls swap precomputed panels: no kernel, no network.
Both modes draw the panel and the plot with the same function, so they look the same.

From Python: ``ex.value`` (current knobs), ``ex.set(kernel_size=5)``, ``ex.metrics`` (the numbers
shown), ``ex.metrics_for(kernel_size=5, groups=2)`` and ``ex.static_html()``.
"""
from __future__ import annotations

import asyncio
import html
import itertools
import math
import platform
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from . import config
from . import profile as P

__all__ = ["Knob", "Slider", "Dropdown", "Toggle", "Explorer", "measure_model", "format_metrics",
           "render_view", "render_plot", "PLOT_AXES"]

MINUS = "\u2212"            # a real minus sign: "−75 %", not "-75 %"
ACCENT = "#e8590c"          # the current model in plots
CHEAPER, COSTLIER = "#2b8a3e", "#c92a2a"


class _Unset:
    def __repr__(self) -> str:
        return "unset"


_UNSET = _Unset()


# ----------------------------------------------------------------------------------------------
# Knobs

@dataclass(frozen=True)
class Knob:
    """One control: a knob ``name`` (the keyword passed to ``model_fn``) and the values it offers."""
    name: str
    values: tuple
    label: str | None = None     # shown next to the control; default: the name
    value: Any = _UNSET          # initial value; default: the baseline's, else the first value

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            raise ValueError(f"knob {self.name!r} needs at least one value")
        if len(set(map(self._id, self.values))) != len(self.values):
            raise ValueError(f"knob {self.name!r} lists a value twice: {self.values}")
        if self.value is not _UNSET:
            self.index(self.value)

    @staticmethod
    def _id(v: Any) -> tuple:
        return type(v).__name__, v      # True and 1 are different knob values

    @property
    def text(self) -> str:
        return self.label or self.name

    def index(self, value: Any) -> int:
        """Position of ``value`` in ``values``; ``ValueError`` naming the allowed values otherwise."""
        for i, v in enumerate(self.values):
            if self._id(v) == self._id(value) or (type(v) in (int, float) and type(value) in (int, float)
                                                  and v == value):
                return i
        raise ValueError(f"{self.name}={value!r} is not one of its values: "
                         f"{', '.join(map(self.format, self.values))}")

    def format(self, value: Any) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)


class Slider(Knob):
    """Ordered values on a slider: ``Slider("kernel_size", [1, 3, 5, 7], label="kernel size k")``."""
    def __init__(self, name: str, values: Sequence, label: str | None = None, value: Any = _UNSET):
        super().__init__(name, tuple(values), label, value)


class Dropdown(Knob):
    """Unordered choices in a menu: ``Dropdown("groups", [1, 2, 4, "depthwise"])``."""
    def __init__(self, name: str, values: Sequence, label: str | None = None, value: Any = _UNSET):
        super().__init__(name, tuple(values), label, value)


class Toggle(Knob):
    """An on/off knob (a checkbox): ``Toggle("shuffle", label="channel shuffle")``."""
    def __init__(self, name: str, label: str | None = None, value: bool = _UNSET):
        super().__init__(name, (False, True), label, value)


# ----------------------------------------------------------------------------------------------
# Measurements: one pure function from a model to the numbers an Explorer shows

STAGES = ("cost", "latency", "accuracy")


def measure_model(model: nn.Module, parts: Sequence[str] = STAGES, *, bits: int = 32,
                  input_size: Sequence[int] = (1, 3, 32, 32), min_run_time: float = 0.25,
                  threads: int | None = None, eval_images: int | None = 1000,
                  eval_batch: int = 100) -> dict[str, Any]:
    """The numbers of ``parts`` (``"cost"``, ``"latency"``, ``"accuracy"``) for ``model``, as a dict.

    Every number comes from :mod:`lcnn_lab.profile` or :func:`lcnn_lab.train.evaluate`; nothing is
    counted here. ``cost``: params (and nonzero params), MACs and FLOPs per image, size at ``bits``.
    ``latency``: median and spread (IQR/2) at ``input_size`` (batch included). ``accuracy``: top-1 on a
    fixed subset of ``eval_images`` test images, with its standard error.
    """
    out: dict[str, Any] = {}
    if "cost" in parts:
        macs = P.count_macs(model, (1, *tuple(input_size)[1:]))
        out.update(params=P.count_params(model), nonzero_params=P.count_params(model, nonzero=True),
                   macs=macs.total, flops=macs.flops, size_bytes=P.model_size_bytes(model, bits), bits=bits,
                   uncounted=dict(macs.uncounted))
    if "latency" in parts:
        lat = P.measure_latency(model, input_size, threads=threads, min_run_time=min_run_time)
        out.update(latency_ms=lat.median_ms, latency_spread_ms=lat.iqr_ms / 2, latency_batch=lat.batch,
                   latency_threads=lat.threads, latency_device=lat.device)
    if "accuracy" in parts:
        from .train import evaluate
        acc = evaluate(model, n=eval_images, batch_size=eval_batch)
        out.update(accuracy=acc.value, accuracy_se=acc.se, accuracy_n=acc.n,
                   accuracy_note=f"{acc.n:,} test images")
    return out


# ----------------------------------------------------------------------------------------------
# Formatting: every number says what it is

def _decimals(x: float) -> int:
    """Decimals for about three significant digits: 1.17, 85.8, 293."""
    return 2 if abs(x) < 10 else 1 if abs(x) < 100 else 0


def _digits(x: float) -> str:
    return f"{x:.{_decimals(x)}f}"


def _unit(n: float) -> tuple[str, float]:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return unit, scale
    return "", 1.0


def format_count(n: float) -> str:
    """``1_170_000 -> "1.17 M"``, ``85_800_000 -> "85.8 M"``, ``950 -> "950"``."""
    unit, scale = _unit(n)
    return f"{_digits(n / scale)} {unit}" if unit else f"{n:,.0f}"


def format_macs(macs: float) -> str:
    """``"85.8 M MACs (171.6 M FLOPs)"``: FLOPs = 2 x MACs, written with the MACs' precision."""
    unit, scale = _unit(macs)
    funit, fscale = _unit(2 * macs)
    flops = f"{2 * macs / scale:.{_decimals(macs / scale)}f} {unit}" if unit and funit == unit \
        else format_count(2 * macs)
    return f"{format_count(macs)} MACs ({flops} FLOPs)"


def format_bytes(n: float) -> str:
    """Decimal units, as :class:`lcnn_lab.profile.Profile` prints them: ``"4.67 MB"``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{_digits(n / scale)} {unit}"
    return f"{n:,.0f} B"


def _ms_decimals(x: float) -> int:
    return 0 if x >= 100 else 1 if x >= 1 else 2 if x >= 0.1 else 3


def _signed(x: float, decimals: int) -> str:
    text = f"{abs(x):.{decimals}f}"
    return ("+" if x > 0 else MINUS if x < 0 else "±") + text


def format_change(value: float | None, base: float | None) -> str:
    """Change of a cost against the baseline: ``"×0.25 (−75 %)"``."""
    if value is None or not base:
        return ""
    r = value / base
    if abs(r - 1) < 5e-4:
        return "= baseline"
    ratio = f"{r:.3f}" if r < 0.1 else f"{r:.2f}" if r < 10 else f"{r:.1f}" if r < 100 else f"{r:.0f}"
    return f"×{ratio} ({_signed(100 * (r - 1), 0)} %)"


def format_metrics(m: Mapping[str, Any], nonzero: bool = False) -> dict[str, str]:
    """Display strings of the numbers in ``m`` (missing numbers are left out). ``nonzero`` adds the
    nonzero params and the sparsity (for pruned models: an untrained net has exact zeros too, its
    BatchNorm shifts, which are not sparsity worth a mention)."""
    out = {}
    if m.get("params") is not None:
        text = f"{format_count(m['params'])} params"
        nz = m.get("nonzero_params")
        if nonzero and nz is not None and nz < m["params"]:
            text += f" ({format_count(nz)} nonzero, {100 * (1 - nz / m['params']):.1f} % sparse)"
        out["params"] = text
    if m.get("macs") is not None:
        out["macs"] = format_macs(m["macs"])
    if m.get("size_bytes") is not None:
        out["size"] = f"{format_bytes(m['size_bytes'])} at {m.get('bits', 32)} bits"
    if m.get("latency_ms") is not None:
        d = _ms_decimals(m["latency_ms"])
        out["latency"] = f"{m['latency_ms']:.{d}f} ms ± {m.get('latency_spread_ms') or 0:.{d}f}"
    if m.get("accuracy") is not None:
        se = m.get("accuracy_se")
        out["accuracy"] = f"{100 * m['accuracy']:.1f} %" + (f" ± {100 * se:.1f}" if se is not None else "")
    return out


def provenance(budget: str | None = None, threads: int | None = None) -> dict[str, str]:
    """Where and when numbers are measured: platform and CPU, threads, torch, budget and date."""
    return {"machine": f"{platform.system()} {platform.machine()}, {config.cpu_name()}",
            "threads": str(config.get_threads(threads)), "torch": torch.__version__,
            "budget": budget or config.get_budget().name, "date": time.strftime("%Y-%m-%d")}


# ----------------------------------------------------------------------------------------------
# Rendering: one function draws a view (panel + plot) for the live widget and the static page alike.
# Inline styles only (no <style> block, no classes to clash with a notebook's or the book theme's CSS);
# currentColor for text and axes, so light and dark themes both work.

PLOT_AXES = {  # axis name -> (metrics key, axis title, log scale allowed)
    "params": ("params", "params", True),
    "nonzero": ("nonzero_params", "nonzero params", True),
    "macs": ("macs", "MACs per image", True),
    "size": ("size_bytes", "size (bytes)", True),
    "latency": ("latency_ms", "latency (ms)", True),
    "accuracy": ("accuracy", "accuracy (%)", False),
}
_W, _H = 380, 250                       # plot size in px
_L, _R, _T, _B = 62, 14, 14, 42         # plot margins: left, right, top, bottom


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _tick_labels(axis: str, ticks: list[float]) -> list[str]:
    """Short tick labels ("2M", "0.5", "70"), with as few decimals as keep them distinct."""
    if axis in ("params", "nonzero", "macs", "size"):
        texts = [format_bytes(t) if axis == "size" else format_count(t) for t in ticks]
        return [f"{float(n.replace(',', '')):g}{u}" for n, _, u in (t.partition(" ") for t in texts)]
    values = [100 * t if axis == "accuracy" else t for t in ticks]
    for d in range(4):
        labels = [f"{v:.{d}f}" for v in values]
        if len(set(labels)) == len(labels) and all(abs(float(t) - v) <= 0.05 * abs(v) for t, v in zip(labels, values)):
            return labels
    return labels


def _scale(values: list[float], log: bool) -> tuple[float, float, bool]:
    lo, hi = min(values), max(values)
    log = log and lo > 0 and hi / lo > 3
    if log:
        return lo / 1.35, hi * 1.35, True
    pad = (hi - lo) * 0.12 or abs(hi) * 0.05 or 1.0
    return lo - pad, hi + pad, False


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        ticks = [m * 10 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                 for m in (1, 2, 5) if lo <= m * 10 ** e <= hi]
        if len(ticks) > 5:
            ticks = [t for t in ticks if f"{t:e}".startswith(("1", "5"))] if len(ticks) <= 8 else \
                [t for t in ticks if f"{t:e}".startswith("1")]
        return ticks if len(ticks) >= 2 else _ticks(lo, hi, False)
    step = 10 ** math.floor(math.log10((hi - lo) / 4))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (m * step) <= 5:
            step *= m
            break
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def _pos(v: float, lo: float, hi: float, log: bool, a: float, b: float) -> float:
    t = (math.log(v / lo) / math.log(hi / lo)) if log else (v - lo) / (hi - lo)
    return round(a + t * (b - a), 1)


def _svg(body: str) -> str:
    return (f"<svg viewBox='0 0 {_W} {_H}' width='{_W}' height='{_H}' "
            f"style='max-width:100%;height:auto;font-size:11px;font-family:inherit' role='img'>{body}</svg>")


def render_plot(kind: str, points: Sequence[tuple[str, Mapping]], current: Mapping | None,
                baseline: Mapping | None, latency: bool = True) -> str:
    """An inline SVG: ``"bars"`` (each cost as a ratio to the baseline; latency too if ``latency``) or
    ``"<x>_vs_<y>"`` (every point in ``points``, a list of ``(label, metrics)``, with the baseline
    ringed and the current model in colour). Axis names are the keys of :data:`PLOT_AXES`."""
    if kind == "bars":
        return _bars(current, baseline, latency)
    x, y = kind.split("_vs_")
    (xk, xt, xlog), (yk, yt, ylog) = PLOT_AXES[x], PLOT_AXES[y]
    usable = [(label, m) for label, m in points if m.get(xk) is not None and m.get(yk) is not None]
    frame = f"<rect x='{_L}' y='{_T}' width='{_W - _L - _R}' height='{_H - _T - _B}' fill='none' " \
            f"stroke='currentColor' stroke-opacity='.35'/>"
    if not usable:
        return _svg(frame + f"<text x='{(_W + _L) // 2}' y='{_H // 2}' text-anchor='middle' fill='currentColor' "
                            f"opacity='.6'>waiting for {_esc(yt)}…</text>")
    x0, x1, xlog = _scale([m[xk] for _, m in usable], xlog)
    y0, y1, ylog = _scale([m[yk] for _, m in usable], ylog)
    px = lambda v: _pos(v, x0, x1, xlog, _L, _W - _R)   # noqa: E731
    py = lambda v: _pos(v, y0, y1, ylog, _H - _B, _T)   # noqa: E731
    parts = [frame]
    xt_, yt_ = _ticks(x0, x1, xlog), _ticks(y0, y1, ylog)
    for t, label in zip(xt_, _tick_labels(x, xt_)):
        parts.append(f"<line x1='{px(t)}' x2='{px(t)}' y1='{_T}' y2='{_H - _B}' stroke='currentColor' "
                     f"stroke-opacity='.12'/><text x='{px(t)}' y='{_H - _B + 14}' text-anchor='middle' "
                     f"fill='currentColor'>{label}</text>")
    for t, label in zip(yt_, _tick_labels(y, yt_)):
        parts.append(f"<line x1='{_L}' x2='{_W - _R}' y1='{py(t)}' y2='{py(t)}' stroke='currentColor' "
                     f"stroke-opacity='.12'/><text x='{_L - 5}' y='{py(t) + 4}' text-anchor='end' "
                     f"fill='currentColor'>{label}</text>")
    parts.append(f"<text x='{(_W + _L) // 2}' y='{_H - 8}' text-anchor='middle' fill='currentColor'>"
                 f"{_esc(xt)}{' (log scale)' if xlog else ''}</text>"
                 f"<text transform='translate(13 {(_H - _B + _T) // 2}) rotate(-90)' text-anchor='middle' "
                 f"fill='currentColor'>{_esc(yt)}{' (log)' if ylog else ''}</text>")
    parts.append("<g fill='#8c96a3' fill-opacity='.8'>" + "".join(
        f"<circle cx='{px(m[xk])}' cy='{py(m[yk])}' r='3.5'><title>{_esc(label)}</title></circle>"
        for label, m in usable) + "</g>")
    # Everything so far is the same for every model of a static grid: it is stored once there.
    parts = [f"<g data-layer='bg'>{''.join(parts)}</g>"]
    if baseline is not None and baseline.get(xk) is not None and baseline.get(yk) is not None:
        bx, by = px(baseline[xk]), py(baseline[yk])
        parts.append(f"<circle cx='{bx}' cy='{by}' r='7.5' fill='none' stroke='currentColor' stroke-width='1.5'/>"
                     f"<text x='{bx + 10}' y='{by - 8}' fill='currentColor' opacity='.8'>baseline</text>")
    if current is not None and current.get(xk) is not None and current.get(yk) is not None:
        cx, cy = px(current[xk]), py(current[yk])
        spread = current.get({"latency": "latency_spread_ms", "accuracy": "accuracy_se"}.get(y, ""), None)
        if spread:
            lo_, hi_ = max(current[yk] - spread, y0 if not ylog else y0 * 1.0001), current[yk] + spread
            parts.append(f"<line x1='{cx}' x2='{cx}' y1='{py(min(hi_, y1))}' y2='{py(lo_)}' stroke='{ACCENT}' "
                         f"stroke-width='2'/>")
        parts.append(f"<circle cx='{cx}' cy='{cy}' r='6' fill='{ACCENT}' stroke='white' stroke-width='1'>"
                     f"<title>this model</title></circle>")
    return _svg("".join(parts))


def _bars(current: Mapping | None, baseline: Mapping | None, latency: bool = True) -> str:
    """Each cost as a ratio to the baseline on a log2 axis from ×1/16 to ×16 (longer = bigger change)."""
    rows = [("params", "params"), ("MACs", "macs"), ("size", "size_bytes")] + \
        ([("latency", "latency_ms")] if latency else [])
    mid, half, top = (_L + 20 + _W - _R) / 2, (_W - _R - _L - 20) / 2, _T + 16
    parts = [f"<line x1='{mid}' x2='{mid}' y1='{_T}' y2='{_H - _B}' stroke='currentColor' stroke-opacity='.5'/>"
             f"<text x='{mid}' y='{_H - _B + 14}' text-anchor='middle' fill='currentColor'>×1 (baseline)</text>"
             f"<text x='{mid - half}' y='{_H - _B + 14}' text-anchor='start' fill='currentColor' opacity='.7'>"
             f"×1/16</text><text x='{mid + half}' y='{_H - _B + 14}' text-anchor='end' fill='currentColor' "
             f"opacity='.7'>×16</text><text x='{mid}' y='{_H - 8}' text-anchor='middle' fill='currentColor'>"
             f"change against the baseline (log scale)</text>"]
    step = (_H - _B - top) / len(rows)
    for i, (name, key) in enumerate(rows):
        y = round(top + i * step, 1)
        parts.append(f"<text x='{_L + 14}' y='{y + 4}' text-anchor='end' fill='currentColor'>{name}</text>")
        cur = current.get(key) if current else None
        base = baseline.get(key) if baseline else None
        if cur is None or not base:
            parts.append(f"<text x='{mid + 6}' y='{y + 4}' fill='currentColor' opacity='.6'>…</text>")
            continue
        r = cur / base
        t = math.log2(max(r, 1e-9)) / 4
        w = max(-1.0, min(1.0, t)) * half
        x, width = (mid + w, -w) if w < 0 else (mid, w)
        label = "×1" if abs(r - 1) < 5e-4 else format_change(cur, base).split(" ")[0]
        parts.append(f"<rect x='{round(x, 1)}' y='{y - 8}' width='{round(max(width, 1.5), 1)}' height='16' "
                     f"rx='2' fill='{'#8c96a3' if abs(r - 1) < 5e-4 else CHEAPER if r < 1 else COSTLIER}' "
                     f"fill-opacity='.85'/>")
        if abs(t) > 0.6:   # a long bar: its label goes inside, at the end (a clipped bar is off the scale)
            parts.append(f"<text x='{round(mid + w + (-5 if w > 0 else 5), 1)}' y='{y + 4}' fill='white' "
                         f"text-anchor='{'end' if w > 0 else 'start'}'>{'‹ ' if t < -1 else ''}{label}"
                         f"{' ›' if t > 1 else ''}</text>")
        else:
            parts.append(f"<text x='{round(mid + w + (4 if w >= 0 else -4), 1)}' y='{y + 4}' "
                         f"text-anchor='{'start' if w >= 0 else 'end'}' fill='currentColor'>{label}</text>")
    return _svg("".join(parts))


def _row(label: str, metric: str, value: str, note: str, change: str, good: bool | None) -> str:
    color = "" if good is None else f"color:{CHEAPER if good else COSTLIER};"
    return (f"<div style='font-weight:600'>{_esc(label)}</div>"
            f"<div><span data-metric='{metric}'>{_esc(value)}</span>"
            + (f"<div style='font-size:11.5px;opacity:.7'>{_esc(note)}</div>" if note else "") + "</div>"
            f"<div data-change='{metric}' style='{color}white-space:nowrap'>{_esc(change)}</div>")


def render_view(title: str, knob_text: str, baseline_text: str, metrics: Mapping[str, Any],
                baseline: Mapping[str, Any] | None, status: Mapping[str, str], plot_svg: str,
                footer: str, rows: Sequence[str] = STAGES, nonzero: bool = False) -> str:
    """The panel (numbers, each with its change against the baseline) and the plot, as HTML.

    ``status`` holds the text shown where a number is not there yet ("measuring latency…").
    ``rows`` picks the stages shown (``"cost"``, ``"latency"``, ``"accuracy"``); ``nonzero`` adds
    nonzero params and sparsity to the params row.
    """
    f = format_metrics(metrics, nonzero)
    base = baseline or {}
    is_base = metrics is baseline
    change = (lambda k: "baseline") if is_base else (lambda k: format_change(metrics.get(k), base.get(k)))

    def good(k: str) -> bool | None:
        if is_base or metrics.get(k) is None or not base.get(k) or abs(metrics[k] / base[k] - 1) < 5e-4:
            return None
        return metrics[k] < base[k]

    head = (f"<div style='font-weight:600;font-size:15px'>{_esc(title)}</div>" if title else "") + \
        f"<div style='font-size:12.5px;opacity:.8'>this model: <b>{_esc(knob_text)}</b>" \
        f"{' (the baseline)' if is_base else f' &nbsp;·&nbsp; baseline: {_esc(baseline_text)}'}</div>"
    if metrics.get("error"):
        table = (f"<div data-metric='error' style='border-left:4px solid {COSTLIER};padding:6px 10px;"
                 f"background:rgba(201,42,42,.08)'><b>This combination cannot be built.</b> "
                 f"{_esc(metrics['error'])}</div>")
    else:
        cells = []
        if "cost" in rows:
            cells.append(_row("params", "params", f.get("params", "…"), "", change("params"), good("params")))
            cells.append(_row("MACs", "macs", f.get("macs", "…"), "per image; FLOPs = 2 × MACs",
                              change("macs"), good("macs")))
            cells.append(_row("size", "size", f.get("size", "…"), "parameters stored densely",
                              change("size_bytes"), good("size_bytes")))
        if "latency" in rows:
            note = (f"median ± IQR/2, batch {metrics.get('latency_batch', 1)}, "
                    f"{metrics.get('latency_threads', '?')} threads") if "latency" in f else ""
            cells.append(_row("latency", "latency", f.get("latency", status.get("latency", "…")), note,
                              change("latency_ms"), good("latency_ms")))
        if "accuracy" in rows:
            acc_change = ""
            if not is_base and metrics.get("accuracy") is not None and base.get("accuracy") is not None:
                d = 100 * (metrics["accuracy"] - base["accuracy"])
                acc_change = f"{_signed(d, 1)} points"
            cells.append(_row("accuracy", "accuracy", f.get("accuracy", status.get("accuracy", "…")),
                              metrics.get("accuracy_note", "") if "accuracy" in f else "", acc_change,
                              None if not acc_change or acc_change.startswith("±") else acc_change[0] == "+"))
        table = ("<div style='display:grid;grid-template-columns:max-content minmax(0,max-content) max-content;"
                 "gap:5px 14px;align-items:baseline'>" + "".join(cells) + "</div>")
    return ("<div style='font-family:system-ui,-apple-system,\"Segoe UI\",sans-serif;font-size:14px;"
            "line-height:1.35;border:1px solid rgba(128,128,128,.35);border-radius:8px;padding:10px 14px;"
            "max-width:860px;box-sizing:border-box'>" + head +
            "<div style='display:flex;flex-wrap:wrap;gap:10px 18px;align-items:center;margin-top:8px'>"
            f"<div style='flex:1 1 340px;min-width:0'>{table}</div>"
            f"<div data-plot style='flex:0 1 {_W}px'>{plot_svg}</div></div>"
            f"<div data-provenance style='font-size:11.5px;opacity:.7;margin-top:6px'>{_esc(footer)}</div></div>")


# ----------------------------------------------------------------------------------------------
# Explorer

def _short(err: BaseException) -> str:
    """The first line of an exception's message, for the panel (never a traceback)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = text.split(" cannot be built: ", 1)[-1]   # the panel already says that it cannot be built
    return text if len(text) <= 300 else text[:297] + "…"


class Explorer:
    """Knobs in, a model's params, MACs/FLOPs, size, latency and accuracy out; see the module docstring.

    Args:
        knobs: :class:`Slider`, :class:`Dropdown` and :class:`Toggle` specs.
        model_fn: ``model_fn(**knobs)`` returns an ``nn.Module`` (or ``{"model": m, "bits": 8, ...}``),
            raising ``ValueError`` for a combination that cannot be built.
        accuracy: ``"train"`` (results store + Train button), ``"live"`` (evaluate the returned, already
            trained model on ``eval_images`` test images) or ``None`` (no accuracy row).
        train_name: for ``"train"``, the :func:`lcnn_lab.models.create_model` name the knobs (plus
            ``fixed``) are passed to; default: read from the returned model's ``.config``.
        train_config: how to train (default ``TrainConfig()``: the ``LCNN_BUDGET`` budget).
        baseline: knob values every number is compared against (default: the initial values).
        fixed: knobs passed to ``model_fn`` (and training) that have no control.
        title: shown above the numbers.
        plot: ``"bars"``, ``"<x>_vs_<y>"`` with x, y in :data:`PLOT_AXES` (e.g. ``"macs_vs_latency"``),
            ``None`` for no plot, or ``"auto"``.
        latency: measure latency (``False`` keeps tests fast).
        min_run_time: seconds of timed forward passes per latency measurement.
        eval_images: test images for ``accuracy="live"`` (a fixed subset, the same for every model).
        show_nonzero: show nonzero params and sparsity (default: with ``accuracy="live"``, whose models
            are trained and possibly pruned).
        debounce: seconds a knob must rest before latency and accuracy are measured.
        input_size: ``(B, C, H, W)`` for latency; MACs are per image. A ``model_fn`` that returns
            ``{"model": m, "input_size": (1, 3, 224, 224)}`` overrides it for that model.
        threads: CPU threads for latency (default: ``config.get_threads()``).
        store: a :class:`lcnn_lab.results.ResultsStore` (default: the results store, opened when needed).
    """

    def __init__(self, knobs: Sequence[Knob], model_fn: Callable[..., Any], *, accuracy: str | None = None,
                 train_name: str | None = None, train_config=None, baseline: Mapping[str, Any] | None = None,
                 fixed: Mapping[str, Any] | None = None, title: str = "", plot: str | None = "auto",
                 latency: bool = True, min_run_time: float = 0.25, eval_images: int | None = 1000,
                 debounce: float = 0.25, input_size: Sequence[int] = (1, 3, 32, 32), store=None,
                 max_grid: int = 256, show_nonzero: bool | None = None, threads: int | None = None):
        self.knobs = list(knobs)
        names = [k.name for k in self.knobs]
        if not self.knobs or len(set(names)) != len(names):
            raise ValueError(f"an Explorer needs knobs with distinct names, got {names}")
        if accuracy not in (None, "live", "train"):
            raise ValueError(f"accuracy={accuracy!r} must be 'train', 'live' or None")
        baseline = dict(baseline or {})
        unknown = set(baseline) - set(names)
        if unknown:
            raise ValueError(f"baseline names {', '.join(sorted(unknown))}, which is not a knob ({', '.join(names)})")
        for k in self.knobs:
            if k.name in baseline:
                k.index(baseline[k.name])
        self.model_fn, self.accuracy, self.train_name = model_fn, accuracy, train_name
        self.train_config, self.fixed, self.title = train_config, dict(fixed or {}), title
        self.latency, self.min_run_time, self.eval_images = latency, min_run_time, eval_images
        self.debounce, self.input_size, self.store, self.max_grid = debounce, tuple(input_size), store, max_grid
        self.threads = threads  # CPU threads for latency; None = config.get_threads()
        self.show_nonzero = accuracy == "live" if show_nonzero is None else show_nonzero
        stages = ["cost"] + (["latency"] if latency else []) + (["accuracy"] if accuracy else [])
        self.stages = tuple(stages)
        if plot == "auto":
            plot = "macs_vs_latency" if latency else "macs_vs_accuracy" if accuracy else "bars"
        if plot is not None and plot != "bars":
            axes = plot.split("_vs_")
            if len(axes) != 2 or any(a not in PLOT_AXES for a in axes) or axes[0] == axes[1]:
                raise ValueError(f"plot={plot!r} must be 'bars', None or '<x>_vs_<y>' with two of "
                                 f"{', '.join(PLOT_AXES)}")
            if "latency" in axes and not latency:
                raise ValueError(f"plot={plot!r} needs latency=True")
            if "accuracy" in axes and not accuracy:
                raise ValueError(f"plot={plot!r} needs accuracy='train' or 'live'")
        self.plot = plot
        self._value = {k.name: (k.value if k.value is not _UNSET else baseline.get(k.name, k.values[0]))
                       for k in self.knobs}
        self.baseline = {k.name: baseline.get(k.name, self._value[k.name]) for k in self.knobs}
        self._cache: dict[tuple, dict] = {}                   # knob tuple -> metrics (filled stage by stage)
        self._status: dict[tuple, dict[str, str]] = {}       # knob tuple -> {"latency": "measuring…"}
        self._models: OrderedDict[tuple, tuple[nn.Module, int]] = OrderedDict()  # a few recent models
        self._gen = 0                                        # bumped on every change: stale work stops
        self._ui: dict[str, Any] | None = None
        self._training: tuple | None = None
        self._shown: dict[str, Any] | None = None
        self._holding = False                                # True while set() moves several controls
        self.last_error: BaseException | None = None         # for debugging; the panel shows one line

    # ---- keys and knob text -------------------------------------------------------------------

    def _key(self, values: Mapping[str, Any]) -> tuple:
        return tuple(k.values[k.index(values[k.name])] for k in self.knobs)

    def _knobs_of(self, key: tuple) -> dict[str, Any]:
        return {k.name: v for k, v in zip(self.knobs, key)}

    def _describe(self, key: tuple) -> str:
        return " · ".join(f"{k.text} = {k.format(v)}" for k, v in zip(self.knobs, key))

    @property
    def value(self) -> dict[str, Any]:
        """The current knob values."""
        return dict(self._value)

    @property
    def baseline_key(self) -> tuple:
        return self._key(self.baseline)

    # ---- computing (cached) ---------------------------------------------------------------------

    def _model(self, key: tuple) -> tuple[nn.Module, int]:
        """``model_fn`` for ``key``, keeping the last few models (the baseline and the current one)."""
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        out = self.model_fn(**self.fixed, **self._knobs_of(key))
        extra: dict = {}
        if isinstance(out, Mapping):
            extra = dict(out)
            out = extra.pop("model", None)
        if not isinstance(out, nn.Module):
            raise TypeError(f"model_fn must return an nn.Module or a dict with 'model', got {type(out).__name__}")
        bits = int(extra.pop("bits", 32))
        # a model_fn may choose the input it is measured at (e.g. a resolution knob); MACs are per image
        extra["_input_size"] = tuple(extra.pop("input_size", self.input_size))
        self._models[key] = (out, bits)
        while len(self._models) > 4:
            self._models.popitem(last=False)
        self._cache.setdefault(key, {"knobs": self._knobs_of(key)}).update(extra)
        return out, bits

    def _compute(self, key: tuple, stage: str, train: bool = False) -> dict:
        """Fill ``stage`` of ``key``'s metrics (once) and return them. ``ValueError`` from ``model_fn``
        marks the combination invalid; a measurement that fails leaves "not measured (why)"."""
        m = self._cache.setdefault(key, {"knobs": self._knobs_of(key)})
        if m.get("error") or stage in m.get("_done", ()):
            return m
        done = True
        try:
            if stage == "accuracy" and self.accuracy == "train":
                new = self._stored_accuracy(key, train=train)
                done = bool(new) or train   # not stored yet: look again next time (a Train may store it)
            elif stage == "accuracy" and "accuracy" in m:   # model_fn gave it
                new = {}
            else:
                model, bits = self._model(key)
                new = measure_model(model, (stage,), bits=bits, input_size=m.get("_input_size", self.input_size),
                                    threads=self.threads, min_run_time=self.min_run_time,
                                    eval_images=self.eval_images)
        except ValueError as err:
            if stage == "cost" or "params" not in m:    # model_fn rejected the combination
                new = {"error": _short(err)}
            else:
                self._note(key, stage, f"not measured ({_short(err)})")
                new = {}
        except Exception as err:  # noqa: BLE001 - one line in the panel; the explorer keeps working
            if stage == "cost":
                raise
            self.last_error = err
            self._note(key, stage, f"not measured ({type(err).__name__}: {_short(err)})")
            new = {}
        m.update(new)
        if done:
            m.setdefault("_done", set()).add(stage)
        if new:
            self._status.get(key, {}).pop(stage, None)
        return m

    def _train_target(self, key: tuple) -> tuple[str, dict]:
        if self.train_name:
            return self.train_name, {**self.fixed, **self._knobs_of(key)}
        from .models import model_knobs
        model, _ = self._model(key)
        cfg = getattr(model, "config", None)
        if cfg is None or not getattr(cfg, "name", ""):
            raise TypeError("accuracy='train' needs train_name=... or a model_fn that returns a model "
                            "built by lcnn_lab.models.create_model")
        return cfg.name, model_knobs(model)

    def _train_cfg(self, progress: bool):
        import dataclasses

        from .train import TrainConfig
        return dataclasses.replace(self.train_config or TrainConfig(), progress=progress).resolved()

    def _stored_accuracy(self, key: tuple, train: bool = False) -> dict:
        """Accuracy of ``key`` from the results store at the current budget; trains it first if ``train``."""
        from .results import ResultsStore
        from .train import trained_accuracy
        name, knobs = self._train_target(key)
        cfg = self._train_cfg(progress=False)
        store = self.store if self.store is not None else ResultsStore()
        try:
            entry = trained_accuracy(name, cfg, store=store, compute=train, **knobs)
        except ValueError:
            raise
        except Exception as err:  # noqa: BLE001 - a static view shows "not measured" rather than fail
            if not train:
                raise
            self.last_error = err
            entry = None
        if entry is None:
            self._note(key, "accuracy", "not measured" if train else
                       f"not trained at budget {cfg.budget} yet: press Train")
            return {}
        saved = str(entry.get("saved", ""))[:10]
        return {"accuracy": entry["accuracy"], "accuracy_se": entry.get("accuracy_se"),
                "accuracy_n": entry.get("eval_images"),
                "accuracy_note": f"{entry.get('eval_images', 0):,} test images, budget {entry.get('budget')}, "
                                 f"trained on {entry.get('device', '?')} {saved}".rstrip()}

    def _note(self, key: tuple, stage: str, text: str) -> None:
        self._status.setdefault(key, {})[stage] = text

    def metrics_for(self, **knobs: Any) -> dict[str, Any]:
        """Every number for one combination of knobs (missing knobs: the current values), computed
        once and cached. Accuracy ``"train"`` reads the results store and never trains here."""
        key = self._key({**self._value, **knobs})
        for stage in self.stages:
            self._compute(key, stage)
        return self._public(self._cache[key])

    @staticmethod
    def _public(m: Mapping) -> dict:
        return {k: v for k, v in m.items() if not k.startswith("_")}

    # ---- rendering ------------------------------------------------------------------------------

    def _footer(self, budget: str | None = None) -> str:
        p = provenance(budget, self.threads)
        sizes = {m.get("_input_size", self.input_size) for m in self._cache.values()} or {self.input_size}
        image = "×".join(map(str, self.input_size[2:])) + " image" if sizes == {self.input_size} else \
            "image at the input size chosen above"
        return (f"Measured on {p['machine']} · {p['threads']} threads · torch {p['torch']} · budget "
                f"{p['budget']} · {p['date']}. Params: learnable parameter elements; MACs per "
                f"{image}, FLOPs = 2 × MACs; size at the bit width shown.")

    def _render(self, key: tuple, points: Sequence[tuple] | None = None, static: bool = False) -> str:
        m = self._cache.get(key, {"knobs": self._knobs_of(key)})
        bkey = self.baseline_key
        base = self._cache.get(bkey)
        status = dict(self._status.get(key, {}))
        if points is None:
            points = [(self._describe(k), v) for k, v in self._cache.items() if not v.get("error")]
        if static:  # nothing is pending in a precomputed view
            status = {s: status.get(s, "not measured") for s in STAGES}
        plot = render_plot(self.plot, points, None if m.get("error") else m, base, self.latency) \
            if self.plot else ""
        budget = self._train_cfg(False).budget if self.accuracy == "train" else None
        return render_view(self.title, self._describe(key), self._describe(bkey), m,
                           m if key == bkey else base, status, plot, self._footer(budget), self.stages,
                           self.show_nonzero)

    # ---- static mode --------------------------------------------------------------------------

    def _grid(self) -> list[tuple]:
        keys = list(itertools.product(*(k.values for k in self.knobs)))
        if len(keys) > self.max_grid:
            raise ValueError(f"the static view would precompute {len(keys)} combinations (max_grid="
                             f"{self.max_grid}); offer fewer knob values or raise max_grid")
        return keys

    def static_html(self, progress: Callable[[str], None] | None = None) -> str:
        """A self-contained view of every combination of knob values: inline HTML, SVG and a few lines
        of script (no external files or URLs), its controls swapping precomputed panels.

        Progress goes to a ``tqdm.auto`` bar, or as text lines to ``progress`` when given.
        """
        keys = self._grid()
        from tqdm.auto import tqdm
        # In static mode (the book build) a tqdm.auto bar would be an ipywidget saved into the page,
        # and the page would then load the widget manager from a CDN: no bar there unless `progress`.
        quiet = progress is None and config.widget_mode() == "static"
        started, desc = time.perf_counter(), f"precomputing {self.title or 'explorer'}"
        bar = tqdm(total=len(keys), desc=desc, leave=False, disable=quiet or progress is not None)
        try:
            ordered = [self.baseline_key] + [k for k in keys if k != self.baseline_key]
            for i, key in enumerate(ordered):
                bar.set_postfix_str(self._describe(key))
                if progress is not None:
                    progress(tqdm.format_meter(i, len(keys), time.perf_counter() - started, prefix=desc,
                                               postfix=self._describe(key)))
                for stage in self.stages:
                    self._compute(key, stage, train=True)
                bar.update(1)
        finally:
            bar.close()
        points = [(self._describe(k), self._cache[k]) for k in keys if not self._cache[k].get("error")]
        uid = f"lcnn-ex-{uuid.uuid4().hex[:10]}"
        current = self._key(self._value)
        views = {",".join(str(k.index(v)) for k, v in zip(self.knobs, key)): self._render(key, points, static=True)
                 for key in keys}
        # The scatter's background (axes, every grid point) is the same in every view: keep it once.
        layers = {m.group(0) for v in views.values() for m in [_BG.search(v)] if m}
        shared = ""
        if len(layers) == 1 and all(_BG.search(v) for v in views.values()):
            (layer,) = layers
            views = {k: v.replace(layer, "<g data-layer='bg'></g>") for k, v in views.items()}
            # inside an <svg>, so the template parses it as SVG (outside one, <line/> would not close)
            shared = f"<template data-bg><svg>{_BG.match(layer).group(1)}</svg></template>"
        templates = "".join(f"<template data-key='{k}'>{v}</template>" for k, v in views.items())
        return (f"<div id='{uid}' class='lcnn-explorer' style='margin:8px 0'>"
                f"{self._static_controls(current)}"
                f"<div data-view>{self._render(current, points, static=True)}</div>{shared}{templates}"
                f"<script>{_STATIC_JS.replace('@UID@', uid)}</script></div>")

    def _static_controls(self, current: tuple) -> str:
        out = []
        for i, (k, v) in enumerate(zip(self.knobs, current)):
            idx, label = k.index(v), _esc(k.text)
            if isinstance(k, Toggle):
                out.append(f"<label style='display:flex;align-items:center;gap:6px'><input type='checkbox' "
                           f"data-knob='{i}'{' checked' if v else ''}> {label}</label>")
            elif isinstance(k, Slider):
                labels = _esc("|".join(k.format(x) for x in k.values))
                out.append(f"<label style='display:flex;align-items:center;gap:8px'>{label} <input type='range' "
                           f"min='0' max='{len(k.values) - 1}' step='1' value='{idx}' data-knob='{i}' "
                           f"data-labels='{labels}' style='width:{min(60 + 40 * len(k.values), 260)}px'>"
                           f"<output style='min-width:2.5em;font-weight:600'>{_esc(k.format(v))}</output></label>")
            else:
                options = "".join(f"<option value='{j}'{' selected' if j == idx else ''}>{_esc(k.format(x))}"
                                  f"</option>" for j, x in enumerate(k.values))
                out.append(f"<label style='display:flex;align-items:center;gap:6px'>{label} "
                           f"<select data-knob='{i}'>{options}</select></label>")
        return ("<div style='display:flex;flex-wrap:wrap;gap:6px 22px;margin:4px 0 8px;font-family:system-ui,"
                "sans-serif;font-size:14px'>" + "".join(out) + "</div>")

    # ---- live mode ----------------------------------------------------------------------------

    def _build_ui(self) -> dict[str, Any]:
        try:
            import ipywidgets as W
        except ImportError as err:
            raise ImportError("a live Explorer needs ipywidgets (pip install ipywidgets); without a "
                              "kernel, set LCNN_WIDGETS=static for the precomputed HTML view") from err
        controls = {}
        for k in self.knobs:
            v = self._value[k.name]
            style = {"description_width": "initial"}
            if isinstance(k, Toggle):
                c = W.Checkbox(value=bool(v), description=k.text, indent=False)
            elif isinstance(k, Slider):
                c = W.SelectionSlider(options=[(k.format(x), x) for x in k.values], value=v, description=k.text,
                                      continuous_update=True, style=style, layout=W.Layout(width="340px"))
            else:
                c = W.Dropdown(options=[(k.format(x), x) for x in k.values], value=v, description=k.text,
                               style=style, layout=W.Layout(width="auto"))
            c.observe(self._on_change, names="value")
            controls[k.name] = c
        view = W.HTML()
        button = W.Button(description="Train", icon="play", button_style="primary",
                          tooltip="train this combination under the budget and store its accuracy")
        bar = W.FloatProgress(value=0.0, min=0.0, max=1.0, layout=W.Layout(width="220px"))
        label = W.Label()
        button.on_click(lambda _: self._start_training())
        train_row = W.HBox([button, bar, label], layout=W.Layout(align_items="center"))
        if self.accuracy != "train":
            train_row.layout.display = "none"
        root = W.VBox([W.HBox(list(controls.values()), layout=W.Layout(flex_flow="row wrap")), view, train_row])
        self._ui = dict(controls=controls, view=view, button=button, bar=bar, label=label, root=root)
        self._refresh()
        return self._ui

    @property
    def widget(self):
        """The live ipywidgets view (built on first use)."""
        return (self._ui or self._build_ui())["root"]

    @property
    def controls(self) -> dict[str, Any]:
        """The ipywidgets controls by knob name; setting their ``.value`` is what a reader does."""
        return (self._ui or self._build_ui())["controls"]

    @property
    def view(self):
        """The ``ipywidgets.HTML`` that shows the panel and the plot."""
        return (self._ui or self._build_ui())["view"]

    @property
    def train_button(self):
        return (self._ui or self._build_ui())["button"]

    @property
    def progress(self):
        """The training progress bar (``FloatProgress``, 0 to 1)."""
        return (self._ui or self._build_ui())["bar"]

    def _on_change(self, change) -> None:
        if self._ui is None or self._holding:
            return
        self._value = {name: c.value for name, c in self._ui["controls"].items()}
        self._refresh()

    # Every measurement runs on the kernel's own thread. Torch work in a second thread makes both
    # threads' OpenMP teams compete for the cores: on 2 CPU cores a 1.0 ms forward pass then measured
    # 3.5 ms, in either thread, for the rest of the session. So the slow numbers are not computed in
    # a background thread but as callbacks on the kernel's event loop, one stage at a time, after the
    # knob has rested for `debounce` seconds; a knob moved meanwhile makes the pending ones stale.

    def _refresh(self) -> None:
        """Count params and MACs now (fast), show them, and schedule the slow numbers."""
        key = self._key(self._value)
        self._gen += 1
        for k in dict.fromkeys((key, self.baseline_key)):
            try:
                self._compute(k, "cost")
            except Exception as err:  # noqa: BLE001 - a bug in model_fn: one line, not a traceback
                self.last_error = err
                self._cache[k] = {"knobs": self._knobs_of(k), "error": f"{type(err).__name__}: {_short(err)}"}
        for k, s in self._todo():
            note = self._status.get(k, {}).get(s, "")
            if not note or note.endswith("…"):
                self._note(k, s, self._pending(s))
        self._show()
        try:
            loop = asyncio.get_running_loop()   # the kernel's loop, when a reader moved a control
        except RuntimeError:
            loop = None
        if loop is None:                        # plain Python (a script, a test): measure right away
            self.wait()
        elif self._todo():
            loop.call_later(self.debounce, self._step, self._gen, self._todo())

    def _todo(self) -> list[tuple[tuple, str]]:
        """The slow (key, stage) pairs still missing for the current knobs and the baseline, in order."""
        slow = [s for s in self.stages if s != "cost"]
        if self.accuracy == "train":  # a store lookup is quick: before latency
            slow = sorted(slow, key=lambda s: s != "accuracy")
        keys = dict.fromkeys((self._key(self._value), self.baseline_key))
        return [(k, s) for k in keys for s in slow
                if not self._cache[k].get("error") and s not in self._cache[k].get("_done", ())]

    def _pending(self, stage: str) -> str:
        """What the panel says while ``stage`` is on its way."""
        if stage == "latency":
            return "measuring latency…"
        return "evaluating accuracy…" if self.accuracy == "live" else "reading the results store…"

    def _step(self, gen: int, todo: list[tuple[tuple, str]]) -> None:
        """The first of ``todo``, then yield to the kernel: a knob moved meanwhile cancels the rest.
        (Each is tried once: an accuracy not in the store stays missing until the Train button.)"""
        if gen != self._gen or self._training is not None or not todo:
            return
        self._compute(*todo[0])
        self._show()
        if len(todo) > 1:
            asyncio.get_running_loop().call_soon(self._step, gen, todo[1:])

    def _show(self) -> None:
        key = self._key(self._value)
        self._shown = self._public(self._cache.get(key, {}))
        if self._ui is None:
            return
        self._ui["view"].value = self._render(key)
        m = self._cache.get(key, {})
        b = self._ui["button"]
        if self.accuracy == "train" and self._training is None:
            b.disabled = bool(m.get("error")) or m.get("accuracy") is not None
            b.description = "Trained" if m.get("accuracy") is not None else "Train"
            if not self._ui["label"].value.startswith("training failed"):
                self._ui["label"].value = "" if b.disabled else \
                    f"train {self._describe(key)} at budget {self._train_cfg(False).budget}"

    def _start_training(self) -> None:
        """The Train button: train the current combination now, on the kernel's thread (see above),
        with the progress bar and the panel showing how far it is; then show its accuracy."""
        from .results import ResultsStore
        from .train import train_model
        key = self._key(self._value)
        if self._training is not None or self._cache.get(key, {}).get("error"):
            return
        self._training = key
        ui = self._ui
        ui["button"].disabled, ui["button"].description = True, "Training…"
        ui["bar"].value = 0.0

        def report(frac: float, text: str) -> None:
            ui["bar"].value, ui["label"].value = frac, text
            self._note(key, "accuracy", text.split(" (")[0])
            self._show()

        report(0.0, "training… 0 %")
        try:
            name, knobs = self._train_target(key)
            cfg = self._train_cfg(progress=False)  # the widget's own bar shows progress, via on_progress
            train_model(name, cfg, store=self.store if self.store is not None else ResultsStore(),
                        on_progress=report, **knobs)
            ui["label"].value = "done"
            self._cache[key].get("_done", set()).discard("accuracy")
            self._status.get(key, {}).pop("accuracy", None)
            self._compute(key, "accuracy")
        except Exception as err:  # noqa: BLE001 - one line in the panel, the widget keeps working
            self.last_error = err
            self._note(key, "accuracy", "not measured (training failed)")
            ui["label"].value = f"training failed: {type(err).__name__}: {_short(err)}"
        finally:
            ui["bar"].value = 1.0
            self._training = None
            self._show()

    # ---- from Python ----------------------------------------------------------------------------

    def set(self, wait: bool = True, **knobs: Any) -> None:
        """Set knobs from Python as a reader would (through the controls when they exist); the slow
        numbers are computed right away unless ``wait=False`` (then: when the kernel is next idle)."""
        unknown = set(knobs) - set(self._value)
        if unknown:
            raise ValueError(f"{', '.join(sorted(unknown))} is not a knob of this Explorer "
                             f"({', '.join(self._value)})")
        new = dict(self._value, **knobs)
        self._key(new)   # a value not on offer raises ValueError naming the allowed ones
        if self._ui is None:
            self._value = new
            key = self._key(new)
            for stage in self.stages:
                self._compute(key, stage)
            self._shown = self._public(self._cache[key])
            return
        self._holding = True
        try:
            for name, v in knobs.items():
                self._ui["controls"][name].value = v
        finally:
            self._holding = False
        self._value = new
        self._refresh()
        if wait:
            self.wait()

    def wait(self) -> None:
        """Compute the slow numbers still missing for the current knobs now, instead of when the
        kernel is next idle (what a notebook cell that reads ``ex.metrics`` right away needs)."""
        for key, stage in self._todo():
            self._compute(key, stage)
        self._show()

    def close(self) -> None:
        """Close the widgets; measurements still scheduled see they are stale and do nothing."""
        self._gen += 1
        if self._ui is not None:
            def close(w) -> None:               # this explorer's widgets only, leaves first
                for child in getattr(w, "children", ()):
                    close(child)
                w.close()
            close(self._ui["root"])
            self._ui = None

    @property
    def metrics(self) -> dict[str, Any]:
        """The numbers currently shown (a copy)."""
        if self._shown is None:
            if self._ui is None:
                self.set(**self._value)
            else:
                self._show()
        return dict(self._shown)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        if config.widget_mode() == "static":
            return {"text/html": self.static_html(), "text/plain": f"<{self!r}: static view>"}
        return self.widget._repr_mimebundle_(include=include, exclude=exclude)

    def _ipython_display_(self) -> None:
        from IPython.display import display
        if config.widget_mode() != "static":
            display(self._repr_mimebundle_(), raw=True)
            return
        # One output, updated in place: progress text while the grid is computed, then the view.
        # The saved notebook (and so the book page) keeps only the view, not the progress.
        handle = display({"text/plain": f"precomputing {self!r}…"}, raw=True, display_id=True)
        html = self.static_html(progress=lambda text: handle.update({"text/plain": text}, raw=True))
        handle.update({"text/html": html, "text/plain": f"<{self!r}: static view>"}, raw=True)

    def __repr__(self) -> str:
        return f"Explorer({self.title or ', '.join(k.name for k in self.knobs)!r})"


_BG = re.compile(r"<g data-layer='bg'>(.*?</g>)</g>")   # the scatter's shared layer (ends with the points' <g>)

# The static view's script: read the controls, pick the matching precomputed view. Scoped to one
# root element by id, so several Explorers on a page never touch each other.
_STATIC_JS = """(function(){var root=document.getElementById('@UID@');if(!root)return;
var view=root.querySelector('[data-view]');var ctl=root.querySelectorAll('[data-knob]');
function update(){var key=[];for(var i=0;i<ctl.length;i++){var c=ctl[i];
key.push(c.type==='checkbox'?(c.checked?1:0):c.value);
if(c.type==='range'){var out=c.parentNode.querySelector('output');
if(out)out.textContent=c.getAttribute('data-labels').split('|')[+c.value];}}
var t=root.querySelector("template[data-key='"+key.join(',')+"']");
view.innerHTML=t?t.innerHTML:'<p>not computed</p>';
var bg=root.querySelector('template[data-bg]'),g=view.querySelector("g[data-layer='bg']");
if(bg&&g&&!g.firstChild)g.innerHTML=bg.content.firstElementChild.innerHTML;}
root.addEventListener('input',update);root.addEventListener('change',update);})();"""
