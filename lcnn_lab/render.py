"""Drawing an Explorer: pure functions from measured numbers to HTML and SVG.

Nothing here measures or keeps state: every function takes :class:`~lcnn_lab.profile.Measurement`
objects (and strings) and returns markup, so the live widget (``ipywidgets.HTML``) and the static
page of the web book draw exactly the same panel and plot.

* :func:`panel`: the numbers, each with its change against the baseline, beside the plot;
* :func:`plot`: a scatter of two numbers over every model of the grid, or bars of each cost as a
  ratio to the baseline. It returns a :class:`Plot` whose ``background`` (frame, axes, every grid
  point) is the same for all the models of one Explorer, and whose ``marks`` (the baseline ring and
  the current model) move, so a static page stores the background once;
* :func:`static_page`: the self-contained view of a precomputed grid, with its controls and a few
  lines of script that swap the precomputed panels (no kernel, no network).

Inline styles only (no ``<style>`` block, no classes to clash with a notebook's or the book theme's
CSS); ``currentColor`` for text and axes, so light and dark themes both work.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .profile import Measurement
from .units import format_bytes, format_change, format_count, format_latency, format_macs, format_signed

__all__ = ["PLOT_AXES", "STAGES", "Plot", "plot", "panel", "format_measurement", "static_controls",
           "static_page"]

STAGES = ("cost", "latency", "accuracy")   # the rows of a panel, in the order they are measured
ACCENT = "#e8590c"                          # the current model in plots
CHEAPER, COSTLIER = "#2b8a3e", "#c92a2a"

PLOT_AXES = {  # axis name -> (Measurement.value name, axis title, log scale allowed)
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


def _value(m: Measurement | None, name: str) -> float | None:
    return None if m is None else m.value(name)


# ----------------------------------------------------------------------------------------------
# Numbers as text

def format_measurement(m: Measurement, nonzero: bool = False) -> dict[str, str]:
    """Display strings of the numbers in ``m`` (``params``, ``macs``, ``size``, and ``latency`` and
    ``accuracy`` when measured). ``nonzero`` adds the nonzero params and the sparsity (for pruned
    models: an untrained net has exact zeros too, its BatchNorm shifts, which are no sparsity worth
    a mention)."""
    p = m.profile
    text = f"{format_count(p.params)} params"
    if nonzero and p.nonzero_params < p.params:
        text += f" ({format_count(p.nonzero_params)} nonzero, {100 * (1 - p.nonzero_params / p.params):.1f} % sparse)"
    out = {"params": text, "macs": format_macs(p.macs), "size": f"{format_bytes(p.size_bytes)} at {p.bits} bits"}
    if m.latency is not None:
        out["latency"] = format_latency(m.latency.median_ms, m.latency.iqr_ms / 2)
    if m.accuracy is not None:
        out["accuracy"] = f"{100 * m.accuracy.value:.1f} % ± {100 * m.accuracy.se:.1f}"
    return out


# ----------------------------------------------------------------------------------------------
# Plots

@dataclass(frozen=True)
class Plot:
    """An SVG plot in two layers: ``background`` (the same for every model of a grid) and ``marks``."""
    background: str
    marks: str

    def svg(self, background: bool = True) -> str:
        """The whole ``<svg>``; ``background=False`` leaves its layer empty, for a page that stores it
        once and fills it in (see :func:`static_page`)."""
        return _svg(f"<g data-layer='bg'>{self.background if background else ''}</g>{self.marks}")


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


def plot(kind: str, points: Sequence[tuple[str, Measurement]], current: Measurement | None,
         baseline: Measurement | None, latency: bool = True) -> Plot:
    """``"bars"`` (each cost as a ratio to the baseline; latency too if ``latency``) or
    ``"<x>_vs_<y>"``: every point of ``points`` (``(label, measurement)`` pairs) in grey, the baseline
    ringed and the current model in colour. Axis names are the keys of :data:`PLOT_AXES`."""
    if kind == "bars":
        return _bars(current, baseline, latency)
    x, y = kind.split("_vs_")
    (xk, xt, xlog), (yk, yt, ylog) = PLOT_AXES[x], PLOT_AXES[y]
    usable = [(label, m) for label, m in points if m.value(xk) is not None and m.value(yk) is not None]
    frame = f"<rect x='{_L}' y='{_T}' width='{_W - _L - _R}' height='{_H - _T - _B}' fill='none' " \
            f"stroke='currentColor' stroke-opacity='.35'/>"
    if not usable:
        return Plot(frame, f"<text x='{(_W + _L) // 2}' y='{_H // 2}' text-anchor='middle' fill='currentColor' "
                           f"opacity='.6'>waiting for {_esc(yt)}…</text>")
    x0, x1, xlog = _scale([m.value(xk) for _, m in usable], xlog)
    y0, y1, ylog = _scale([m.value(yk) for _, m in usable], ylog)
    px = lambda v: _pos(v, x0, x1, xlog, _L, _W - _R)   # noqa: E731
    py = lambda v: _pos(v, y0, y1, ylog, _H - _B, _T)   # noqa: E731
    bg = [frame]
    xt_, yt_ = _ticks(x0, x1, xlog), _ticks(y0, y1, ylog)
    for t, label in zip(xt_, _tick_labels(x, xt_)):
        bg.append(f"<line x1='{px(t)}' x2='{px(t)}' y1='{_T}' y2='{_H - _B}' stroke='currentColor' "
                  f"stroke-opacity='.12'/><text x='{px(t)}' y='{_H - _B + 14}' text-anchor='middle' "
                  f"fill='currentColor'>{label}</text>")
    for t, label in zip(yt_, _tick_labels(y, yt_)):
        bg.append(f"<line x1='{_L}' x2='{_W - _R}' y1='{py(t)}' y2='{py(t)}' stroke='currentColor' "
                  f"stroke-opacity='.12'/><text x='{_L - 5}' y='{py(t) + 4}' text-anchor='end' "
                  f"fill='currentColor'>{label}</text>")
    bg.append(f"<text x='{(_W + _L) // 2}' y='{_H - 8}' text-anchor='middle' fill='currentColor'>"
              f"{_esc(xt)}{' (log scale)' if xlog else ''}</text>"
              f"<text transform='translate(13 {(_H - _B + _T) // 2}) rotate(-90)' text-anchor='middle' "
              f"fill='currentColor'>{_esc(yt)}{' (log)' if ylog else ''}</text>")
    bg.append("<g fill='#8c96a3' fill-opacity='.8'>" + "".join(
        f"<circle cx='{px(m.value(xk))}' cy='{py(m.value(yk))}' r='3.5'><title>{_esc(label)}</title></circle>"
        for label, m in usable) + "</g>")
    marks = []
    if _value(baseline, xk) is not None and _value(baseline, yk) is not None:
        bx, by = px(baseline.value(xk)), py(baseline.value(yk))
        marks.append(f"<circle cx='{bx}' cy='{by}' r='7.5' fill='none' stroke='currentColor' stroke-width='1.5'/>"
                     f"<text x='{bx + 10}' y='{by - 8}' fill='currentColor' opacity='.8'>baseline</text>")
    if _value(current, xk) is not None and _value(current, yk) is not None:
        cx, cy, cv = px(current.value(xk)), py(current.value(yk)), current.value(yk)
        spread = current.spread(yk)
        if spread:
            lo_, hi_ = max(cv - spread, y0 if not ylog else y0 * 1.0001), cv + spread
            marks.append(f"<line x1='{cx}' x2='{cx}' y1='{py(min(hi_, y1))}' y2='{py(lo_)}' stroke='{ACCENT}' "
                         f"stroke-width='2'/>")
        marks.append(f"<circle cx='{cx}' cy='{cy}' r='6' fill='{ACCENT}' stroke='white' stroke-width='1'>"
                     f"<title>this model</title></circle>")
    return Plot("".join(bg), "".join(marks))


def _bars(current: Measurement | None, baseline: Measurement | None, latency: bool = True) -> Plot:
    """Each cost as a ratio to the baseline on a log2 axis from ×1/16 to ×16 (longer = bigger change)."""
    rows = [("params", "params"), ("MACs", "macs"), ("size", "size_bytes")] + \
        ([("latency", "latency_ms")] if latency else [])
    mid, half, top = (_L + 20 + _W - _R) / 2, (_W - _R - _L - 20) / 2, _T + 16
    bg = [f"<line x1='{mid}' x2='{mid}' y1='{_T}' y2='{_H - _B}' stroke='currentColor' stroke-opacity='.5'/>"
          f"<text x='{mid}' y='{_H - _B + 14}' text-anchor='middle' fill='currentColor'>×1 (baseline)</text>"
          f"<text x='{mid - half}' y='{_H - _B + 14}' text-anchor='start' fill='currentColor' opacity='.7'>"
          f"×1/16</text><text x='{mid + half}' y='{_H - _B + 14}' text-anchor='end' fill='currentColor' "
          f"opacity='.7'>×16</text><text x='{mid}' y='{_H - 8}' text-anchor='middle' fill='currentColor'>"
          f"change against the baseline (log scale)</text>"]
    marks = []
    step = (_H - _B - top) / len(rows)
    for i, (name, key) in enumerate(rows):
        y = round(top + i * step, 1)
        bg.append(f"<text x='{_L + 14}' y='{y + 4}' text-anchor='end' fill='currentColor'>{name}</text>")
        cur, base = _value(current, key), _value(baseline, key)
        if cur is None or not base:
            marks.append(f"<text x='{mid + 6}' y='{y + 4}' fill='currentColor' opacity='.6'>…</text>")
            continue
        r = cur / base
        t = math.log2(max(r, 1e-9)) / 4
        w = max(-1.0, min(1.0, t)) * half
        x, width = (mid + w, -w) if w < 0 else (mid, w)
        label = "×1" if abs(r - 1) < 5e-4 else format_change(cur, base).split(" ")[0]
        marks.append(f"<rect x='{round(x, 1)}' y='{y - 8}' width='{round(max(width, 1.5), 1)}' height='16' "
                     f"rx='2' fill='{'#8c96a3' if abs(r - 1) < 5e-4 else CHEAPER if r < 1 else COSTLIER}' "
                     f"fill-opacity='.85'/>")
        if abs(t) > 0.6:   # a long bar: its label goes inside, at the end (a clipped bar is off the scale)
            marks.append(f"<text x='{round(mid + w + (-5 if w > 0 else 5), 1)}' y='{y + 4}' fill='white' "
                         f"text-anchor='{'end' if w > 0 else 'start'}'>{'‹ ' if t < -1 else ''}{label}"
                         f"{' ›' if t > 1 else ''}</text>")
        else:
            marks.append(f"<text x='{round(mid + w + (4 if w >= 0 else -4), 1)}' y='{y + 4}' "
                         f"text-anchor='{'start' if w >= 0 else 'end'}' fill='currentColor'>{label}</text>")
    return Plot("".join(bg), "".join(marks))


# ----------------------------------------------------------------------------------------------
# The panel

def _row(label: str, metric: str, value: str, note: str, change: str, good: bool | None) -> str:
    color = "" if good is None else f"color:{CHEAPER if good else COSTLIER};"
    return (f"<div style='font-weight:600'>{_esc(label)}</div>"
            f"<div><span data-metric='{metric}'>{_esc(value)}</span>"
            + (f"<div style='font-size:11.5px;opacity:.7'>{_esc(note)}</div>" if note else "") + "</div>"
            f"<div data-change='{metric}' style='{color}white-space:nowrap'>{_esc(change)}</div>")


def panel(title: str, knob_text: str, baseline_text: str, current: Measurement | None,
          baseline: Measurement | None, *, error: str | None = None, status: Mapping[str, str] | None = None,
          plot_svg: str = "", footer: str = "", rows: Sequence[str] = STAGES, nonzero: bool = False,
          is_baseline: bool = False) -> str:
    """The numbers of ``current`` (each with its change against ``baseline``) beside ``plot_svg``.

    ``error``: why this combination cannot be built (shown instead of numbers). ``status``: what to
    show where a number is not there yet (``{"latency": "measuring latency…"}``). ``rows`` picks the
    stages shown (``"cost"``, ``"latency"``, ``"accuracy"``); ``nonzero`` adds nonzero params and
    sparsity to the params row; ``is_baseline`` says that ``current`` is the baseline itself.
    """
    status = status or {}
    f = format_measurement(current, nonzero) if current is not None else {}

    def change(k: str) -> str:
        return "baseline" if is_baseline else format_change(_value(current, k), _value(baseline, k))

    def good(k: str) -> bool | None:
        v, b = _value(current, k), _value(baseline, k)
        if is_baseline or v is None or not b or abs(v / b - 1) < 5e-4:
            return None
        return v < b

    head = (f"<div style='font-weight:600;font-size:15px'>{_esc(title)}</div>" if title else "") + \
        f"<div style='font-size:12.5px;opacity:.8'>this model: <b>{_esc(knob_text)}</b>" \
        f"{' (the baseline)' if is_baseline else f' &nbsp;·&nbsp; baseline: {_esc(baseline_text)}'}</div>"
    if error:
        table = (f"<div data-metric='error' style='border-left:4px solid {COSTLIER};padding:6px 10px;"
                 f"background:rgba(201,42,42,.08)'><b>This combination cannot be built.</b> "
                 f"{_esc(error)}</div>")
    else:
        cells = []
        if "cost" in rows:
            cells.append(_row("params", "params", f.get("params", "…"), "", change("params"), good("params")))
            uncounted = current.profile.uncounted if current is not None else {}
            macs_note = "per image; FLOPs = 2 × MACs" + (
                f"; NOT counted: {', '.join(f'{op} ×{n}' for op, n in uncounted.items())}"
                if uncounted else "")
            cells.append(_row("MACs", "macs", f.get("macs", "…"), macs_note, change("macs"), good("macs")))
            cells.append(_row("size", "size", f.get("size", "…"), "parameters stored densely",
                              change("size_bytes"), good("size_bytes")))
        if "latency" in rows:
            lat = current.latency if current is not None else None
            note = f"median ± IQR/2, batch {lat.batch}, {lat.threads} threads" if lat is not None else ""
            cells.append(_row("latency", "latency", f.get("latency", status.get("latency", "…")), note,
                              change("latency_ms"), good("latency_ms")))
        if "accuracy" in rows:
            acc_change = ""
            a, b = _value(current, "accuracy"), _value(baseline, "accuracy")
            if not is_baseline and a is not None and b is not None:
                acc_change = f"{format_signed(100 * (a - b), 1)} points"
            cells.append(_row("accuracy", "accuracy", f.get("accuracy", status.get("accuracy", "…")),
                              current.accuracy_note if "accuracy" in f else "", acc_change,
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
# The static page

def static_controls(knobs: Sequence, current: Sequence) -> str:
    """HTML controls for ``knobs`` (objects with ``kind`` "slider" | "dropdown" | "toggle", ``text``,
    ``values``, ``index()`` and ``format()``, as :mod:`lcnn_lab.widgets`' knobs), set to ``current``."""
    out = []
    for i, (k, v) in enumerate(zip(knobs, current)):
        idx, label = k.index(v), _esc(k.text)
        if k.kind == "toggle":
            out.append(f"<label style='display:flex;align-items:center;gap:6px'><input type='checkbox' "
                       f"data-knob='{i}'{' checked' if v else ''}> {label}</label>")
        elif k.kind == "slider":
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


def static_page(uid: str, controls: str, shown: str, views: Mapping[str, str],
                background: str | None = None) -> str:
    """A self-contained view: ``controls``, the view ``shown`` (complete, so the page reads well
    even before its script runs), every view of ``views``
    (key: the knobs' value indices joined by commas, e.g. ``"1,0"``) in a ``<template>``, and a script
    that shows the view matching the controls. ``background``: a plot layer the views share, stored
    once (their plots then carry an empty ``<g data-layer='bg'>``, filled in when shown).

    No external file or URL; scoped to the element ``uid``, so several views on a page never touch
    each other."""
    shared = f"<template data-bg><svg>{background}</svg></template>" if background is not None else ""
    templates = "".join(f"<template data-key='{k}'>{v}</template>" for k, v in views.items())
    return (f"<div id='{uid}' class='lcnn-explorer' style='margin:8px 0'>{controls}"
            f"<div data-view>{shown}</div>{shared}{templates}"
            f"<script>{_STATIC_JS.replace('@UID@', uid)}</script></div>")


# The static view's script: read the controls, show the matching precomputed view, fill in the
# shared plot background (inside an <svg> in its template, so that it parses as SVG).
_STATIC_JS = """(function(){var root=document.getElementById('@UID@');if(!root)return;
var view=root.querySelector('[data-view]');var ctl=root.querySelectorAll('[data-knob]');
function fill(){var bg=root.querySelector('template[data-bg]'),g=view.querySelector("g[data-layer='bg']");
if(bg&&g&&!g.firstChild)g.innerHTML=bg.content.firstElementChild.innerHTML;}
function update(){var key=[];for(var i=0;i<ctl.length;i++){var c=ctl[i];
key.push(c.type==='checkbox'?(c.checked?1:0):c.value);
if(c.type==='range'){var out=c.parentNode.querySelector('output');
if(out)out.textContent=c.getAttribute('data-labels').split('|')[+c.value];}}
var t=root.querySelector("template[data-key='"+key.join(',')+"']");
view.innerHTML=t?t.innerHTML:'<p>not computed</p>';fill();}
fill();root.addEventListener('input',update);root.addEventListener('change',update);})();"""
