"""Explorers: knobs that change a model, and what it costs, live in Jupyter or static in the book.

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
This module owns the knobs, the Explorer's state and scheduling, the Train button and the live UI;
the numbers come from :mod:`lcnn_lab.profile` (one :class:`~lcnn_lab.profile.Measurement` per
combination of knob values), and :mod:`lcnn_lab.render` draws them.

* Params, MACs and size are counted on every change (tens of ms).
* Latency is measured once a knob has rested for ``debounce`` seconds (``min_run_time`` seconds of
  timed runs, on the kernel's thread between messages); the panel says "measuring latency…" until then.
* ``accuracy="live"``: ``model_fn`` returns an already trained (e.g. pruned or quantised) model; it is
  evaluated on a fixed subset of ``eval_images`` test images, about a second on 2 CPU cores.
* ``accuracy="train"``: accuracy comes from the results store for the current budget
  (``LCNN_BUDGET``); a **Train** button trains a missing combination under the budget, with a progress
  bar, and stores it. ``accuracy=None``: no accuracy row.
* A combination the model builder rejects (``ValueError``, e.g. ``groups=3`` with 16 channels) shows
  the builder's one-line explanation instead of numbers.
* Every combination is computed once and cached.

``model_fn`` may also return a dict ``{"model": m, "bits": 8, "input_size": (1, 3, 224, 224),
"accuracy": acc}``: ``bits`` is the bit width the size is counted at (quantisation), ``input_size``
the input latency is measured at (MACs are per image), ``accuracy`` an
:class:`~lcnn_lab.train.Accuracy` measured elsewhere. ``fixed={"width": 0.5}`` passes knobs that do
not move to ``model_fn`` (and to training).

**Two modes** (``LCNN_WIDGETS``, see :mod:`lcnn_lab.config`). ``live`` (default) shows ipywidgets
controls and needs a running kernel (JupyterLab, Notebook 7, VS Code, Colab with its custom widget
manager enabled). ``static`` (set by ``make book``) computes every combination of knob values first
and shows a self-contained HTML view whose controls swap precomputed panels: no kernel, no network.

From Python: ``ex.value`` (current knobs), ``ex.set(kernel_size=5)``, ``ex.measurement`` (the numbers
shown, a :class:`~lcnn_lab.profile.Measurement`), ``ex.error`` (why the current combination cannot be
built, or None), ``ex.measurement_for(kernel_size=5, groups=2)`` and ``ex.static_html()``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from torch import nn
from tqdm.auto import tqdm

from . import config, render
from .models import model_knobs
from .profile import Measurement, measure_latency, profile
from .results import ResultsStore
from .train import Accuracy, TrainConfig, evaluate
from .trained import train_model, trained_accuracy

__all__ = ["Knob", "Slider", "Dropdown", "Toggle", "Explorer"]


class _Unset:
    def __repr__(self) -> str:
        return "unset"


_UNSET = _Unset()


# ----------------------------------------------------------------------------------------------
# Knobs

# ----------------------------------------------------------------------------------------------
# Knobs

@dataclass(frozen=True)
class Knob:
    """One control: a knob ``name`` (the keyword passed to ``model_fn``) and the values it offers."""
    name: str
    values: tuple
    label: str | None = None     # shown next to the control; default: the name
    value: Any = _UNSET          # initial value; default: the baseline's, else the first value
    kind = "dropdown"            # how it is drawn: "slider", "dropdown" or "toggle" (a class attribute)

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
    kind = "slider"

    def __init__(self, name: str, values: Sequence, label: str | None = None, value: Any = _UNSET):
        super().__init__(name, tuple(values), label, value)


class Dropdown(Knob):
    """Unordered choices in a menu: ``Dropdown("groups", [1, 2, 4, "depthwise"])``."""
    def __init__(self, name: str, values: Sequence, label: str | None = None, value: Any = _UNSET):
        super().__init__(name, tuple(values), label, value)


class Toggle(Knob):
    """An on/off knob (a checkbox): ``Toggle("shuffle", label="channel shuffle")``."""
    kind = "toggle"

    def __init__(self, name: str, label: str | None = None, value: bool = _UNSET):
        super().__init__(name, (False, True), label, value)



# ----------------------------------------------------------------------------------------------
# Explorer

def _short(err: BaseException) -> str:
    """The first line of an exception's message, for the panel (never a traceback)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = text.split(" cannot be built: ", 1)[-1]   # the panel already says that it cannot be built
    return text if len(text) <= 300 else text[:297] + "…"


@dataclass
class _Combo:
    """What the Explorer knows of one combination of knob values (filled stage by stage)."""
    knobs: dict[str, Any]
    measurement: Measurement | None = None   # None until its cost is counted, or when it cannot be built
    error: str | None = None                 # why it cannot be built (one line)
    status: dict[str, str] = field(default_factory=dict)   # stage -> "measuring latency…", "not measured (…)"
    done: set[str] = field(default_factory=set)            # stages measured, or tried and given up
    bits: int = 32                           # bit width the size is counted at
    input_size: tuple[int, ...] | None = None  # input latency is measured at (None: the Explorer's)
    given_accuracy: Accuracy | None = None   # an accuracy model_fn returned with the model


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
        plot: ``"bars"``, ``"<x>_vs_<y>"`` with x, y in :data:`lcnn_lab.render.PLOT_AXES` (e.g.
            ``"macs_vs_latency"``), ``None`` for no plot, or ``"auto"``.
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
        max_grid: the most combinations a static view may precompute.
    """

    def __init__(self, knobs: Sequence[Knob], model_fn: Callable[..., Any], *, accuracy: str | None = None,
                 train_name: str | None = None, train_config: TrainConfig | None = None,
                 baseline: Mapping[str, Any] | None = None, fixed: Mapping[str, Any] | None = None,
                 title: str = "", plot: str | None = "auto", latency: bool = True, min_run_time: float = 0.25,
                 eval_images: int | None = 1000, debounce: float = 0.25,
                 input_size: Sequence[int] = (1, 3, 32, 32), store: ResultsStore | None = None,
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
        self.stages = ("cost",) + (("latency",) if latency else ()) + (("accuracy",) if accuracy else ())
        if plot == "auto":
            plot = "macs_vs_latency" if latency else "macs_vs_accuracy" if accuracy else "bars"
        if plot is not None and plot != "bars":
            axes = plot.split("_vs_")
            if len(axes) != 2 or any(a not in render.PLOT_AXES for a in axes) or axes[0] == axes[1]:
                raise ValueError(f"plot={plot!r} must be 'bars', None or '<x>_vs_<y>' with two of "
                                 f"{', '.join(render.PLOT_AXES)}")
            if "latency" in axes and not latency:
                raise ValueError(f"plot={plot!r} needs latency=True")
            if "accuracy" in axes and not accuracy:
                raise ValueError(f"plot={plot!r} needs accuracy='train' or 'live'")
        self.plot = plot
        self._value = {k.name: (k.value if k.value is not _UNSET else baseline.get(k.name, k.values[0]))
                       for k in self.knobs}
        self.baseline = {k.name: baseline.get(k.name, self._value[k.name]) for k in self.knobs}
        self._combos: dict[tuple, _Combo] = {}               # knob tuple -> what is known of it
        self._models: OrderedDict[tuple, nn.Module] = OrderedDict()  # a few recent models
        self._gen = 0                                        # bumped on every change: stale work stops
        self._ui: dict[str, Any] | None = None
        self._training: tuple | None = None
        self._holding = False                                # True while set() moves several controls
        self.last_error: BaseException | None = None         # for debugging; the panel shows one line

    # ---- keys and knob text -------------------------------------------------------------------

    def _key(self, values: Mapping[str, Any]) -> tuple:
        return tuple(k.values[k.index(values[k.name])] for k in self.knobs)

    def _knobs_of(self, key: tuple) -> dict[str, Any]:
        return {k.name: v for k, v in zip(self.knobs, key)}

    def _describe(self, key: tuple) -> str:
        return " · ".join(f"{k.text} = {k.format(v)}" for k, v in zip(self.knobs, key))

    def _combo(self, key: tuple) -> _Combo:
        if key not in self._combos:
            self._combos[key] = _Combo(self._knobs_of(key))
        return self._combos[key]

    @property
    def value(self) -> dict[str, Any]:
        """The current knob values."""
        return dict(self._value)

    @property
    def baseline_key(self) -> tuple:
        return self._key(self.baseline)

    # ---- computing (cached) ---------------------------------------------------------------------

    def _model(self, key: tuple) -> nn.Module:
        """``model_fn`` for ``key``, keeping the last few models (the baseline and the current one)."""
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        out = self.model_fn(**self.fixed, **self._knobs_of(key))
        combo = self._combo(key)
        if isinstance(out, Mapping):
            extra = dict(out)
            out = extra.pop("model", None)
            combo.bits = int(extra.pop("bits", 32))
            # a model_fn may choose the input it is measured at (e.g. a resolution knob)
            combo.input_size = tuple(extra.pop("input_size", self.input_size))
            combo.given_accuracy = extra.pop("accuracy", None)
            if extra:
                raise TypeError(f"model_fn returned {', '.join(map(repr, extra))}; a dict may hold 'model', "
                                "'bits', 'input_size' and 'accuracy'")
        if not isinstance(out, nn.Module):
            raise TypeError(f"model_fn must return an nn.Module or a dict with 'model', got {type(out).__name__}")
        self._models[key] = out
        while len(self._models) > 4:
            self._models.popitem(last=False)
        return out

    def _measure(self, key: tuple, stage: str, train: bool) -> Measurement | None:
        """The combination's measurement with ``stage`` added (None: nothing to add yet)."""
        combo = self._combo(key)
        if stage == "cost":
            model = self._model(key)
            size = combo.input_size or self.input_size
            return Measurement(profile(model, size, threads=self.threads, latency=False, bits=combo.bits))
        m = combo.measurement
        if stage == "latency":
            lat = measure_latency(self._model(key), combo.input_size or self.input_size, threads=self.threads,
                                  min_run_time=self.min_run_time)
            return dataclasses.replace(m, latency=lat)
        if self.accuracy == "train":
            return self._stored_accuracy(key, m, train)
        if combo.given_accuracy is not None:
            return dataclasses.replace(m, accuracy=combo.given_accuracy, accuracy_note="given with the model")
        acc = evaluate(self._model(key), n=self.eval_images, batch_size=100)
        return dataclasses.replace(m, accuracy=acc, accuracy_note=f"{acc.n:,} test images")

    def _compute(self, key: tuple, stage: str, train: bool = False) -> _Combo:
        """Fill ``stage`` of ``key`` (once). ``ValueError`` from ``model_fn`` marks the combination
        invalid; a measurement that fails leaves "not measured (why)" in its place."""
        combo = self._combo(key)
        if combo.error or stage in combo.done:
            return combo
        if stage != "cost" and combo.measurement is None:
            self._compute(key, "cost")
            if combo.error:
                return combo
        new = None
        try:
            new = self._measure(key, stage, train)
        except ValueError as err:
            if stage == "cost":                       # model_fn rejected the combination
                combo.error = _short(err)
            else:
                combo.status[stage] = f"not measured ({_short(err)})"
        except Exception as err:  # noqa: BLE001 - one line in the panel; the explorer keeps working
            if stage == "cost":
                raise
            self.last_error = err
            combo.status[stage] = f"not measured ({type(err).__name__}: {_short(err)})"
        if new is not None:
            combo.measurement = new
            combo.status.pop(stage, None)
        # an accuracy not in the store yet is looked up again next time (a Train may store it)
        if not (stage == "accuracy" and self.accuracy == "train" and new is None and not train):
            combo.done.add(stage)
        return combo

    def _train_target(self, key: tuple) -> tuple[str, dict]:
        if self.train_name:
            return self.train_name, {**self.fixed, **self._knobs_of(key)}
        cfg = getattr(self._model(key), "config", None)
        if cfg is None or not getattr(cfg, "name", ""):
            raise TypeError("accuracy='train' needs train_name=... or a model_fn that returns a model "
                            "built by lcnn_lab.models.create_model")
        return cfg.name, model_knobs(self._model(key))

    def _train_cfg(self, progress: bool) -> TrainConfig:
        return dataclasses.replace(self.train_config or TrainConfig(), progress=progress).resolved()

    def _store(self) -> ResultsStore:
        return self.store if self.store is not None else ResultsStore()

    def _stored_accuracy(self, key: tuple, m: Measurement, train: bool) -> Measurement | None:
        """``m`` with the accuracy of ``key`` from the results store at the current budget (None if
        not stored); trains it first if ``train``."""
        name, knobs = self._train_target(key)
        cfg = self._train_cfg(progress=False)
        try:
            entry = trained_accuracy(name, cfg, store=self._store(), compute=train, **knobs)
        except ValueError:
            raise
        except Exception as err:  # noqa: BLE001 - a static view shows "not measured" rather than fail
            if not train:
                raise
            self.last_error = err
            entry = None
        if entry is None:
            self._combo(key).status["accuracy"] = "not measured" if train else \
                f"not trained at budget {cfg.budget} yet: press Train"
            return None
        saved = str(entry.get("saved", ""))[:10]
        n = entry.get("eval_images") or 0
        return dataclasses.replace(
            m, accuracy=Accuracy(entry["accuracy"], entry.get("accuracy_se") or 0.0, n),
            accuracy_note=f"{n:,} test images, budget {entry.get('budget')}, "
                          f"trained on {entry.get('device', '?')} {saved}".rstrip())

    def measurement_for(self, **knobs: Any) -> Measurement:
        """Every number for one combination of knobs (missing knobs: the current values), computed
        once and cached; ``ValueError`` (with the reason) for a combination that cannot be built.
        Accuracy ``"train"`` reads the results store and never trains here."""
        key = self._key({**self._value, **knobs})
        for stage in self.stages:
            self._compute(key, stage)
        combo = self._combos[key]
        if combo.error:
            raise ValueError(combo.error)
        return combo.measurement

    @property
    def measurement(self) -> Measurement | None:
        """The numbers of the current knobs as shown (None when the combination cannot be built;
        :attr:`error` says why). Numbers still being measured are None inside it."""
        key = self._key(self._value)
        if key not in self._combos or "cost" not in self._combos[key].done:
            if self._ui is None:
                self.set(**self._value)
            else:
                self._show()
        return self._combos[key].measurement

    @property
    def error(self) -> str | None:
        """Why the current combination of knobs cannot be built, in one line; None when it can."""
        self.measurement   # noqa: B018 - computes the cost, which is where an error shows up
        return self._combos[self._key(self._value)].error

    # ---- rendering ------------------------------------------------------------------------------

    def _footer(self, budget: str | None = None) -> str:
        p = config.provenance(budget, self.threads, data=False)
        sizes = {c.input_size or self.input_size for c in self._combos.values()} or {self.input_size}
        image = "×".join(map(str, self.input_size[2:])) + " image" if sizes == {self.input_size} else \
            "image at the input size chosen above"
        return (f"Measured on {p['machine']} · {p['threads']} threads · torch {p['torch']} · budget "
                f"{p['budget']} · {p['date']}. Params: learnable parameter elements; MACs per "
                f"{image}, FLOPs = 2 × MACs; size at the bit width shown.")

    def _points(self) -> list[tuple[str, Measurement]]:
        return [(self._describe(k), c.measurement) for k, c in self._combos.items() if c.measurement is not None]

    def _plot(self, key: tuple, points: Sequence[tuple[str, Measurement]]) -> render.Plot | None:
        if not self.plot:
            return None
        combo, base = self._combo(key), self._combos.get(self.baseline_key)
        return render.plot(self.plot, points, combo.measurement, base.measurement if base else None,
                           self.latency)

    def _render(self, key: tuple, plot: render.Plot | None, static: bool = False,
                background: bool = True) -> str:
        combo, bkey = self._combo(key), self.baseline_key
        base = self._combos.get(bkey)
        status = dict(combo.status)
        if static:  # nothing is pending in a precomputed view
            status = {s: status.get(s, "not measured") for s in render.STAGES}
        budget = self._train_cfg(False).budget if self.accuracy == "train" else None
        return render.panel(self.title, self._describe(key), self._describe(bkey), combo.measurement,
                            base.measurement if base else None, error=combo.error, status=status,
                            plot_svg=plot.svg(background) if plot else "", footer=self._footer(budget),
                            rows=self.stages, nonzero=self.show_nonzero, is_baseline=key == bkey)

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
        points = [(self._describe(k), self._combos[k].measurement) for k in keys
                  if self._combos[k].measurement is not None]
        current = self._key(self._value)
        plots = {key: self._plot(key, points) for key in keys}
        # The scatter's background (axes, every grid point) is the same in every view: keep it once.
        backgrounds = {p.background for p in plots.values() if p is not None}
        shared = backgrounds.pop() if len(backgrounds) == 1 and None not in plots.values() else None
        views = {",".join(str(k.index(v)) for k, v in zip(self.knobs, key)):
                 self._render(key, plots[key], static=True, background=shared is None) for key in keys}
        return render.static_page(f"lcnn-ex-{uuid.uuid4().hex[:10]}",
                                  render.static_controls(self.knobs, current),
                                  self._render(current, plots[current], static=True), views, shared)

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
                self._combos[k] = _Combo(self._knobs_of(k), error=f"{type(err).__name__}: {_short(err)}",
                                         done=set(self.stages))
        for k, s in self._todo():
            note = self._combo(k).status.get(s, "")
            if not note or note.endswith("…"):
                self._combo(k).status[s] = self._pending(s)
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
                if not self._combo(k).error and s not in self._combo(k).done]

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
        if self._ui is None:
            return
        self._ui["view"].value = self._render(key, self._plot(key, self._points()))
        combo = self._combo(key)
        trained = combo.measurement is not None and combo.measurement.accuracy is not None
        b = self._ui["button"]
        if self.accuracy == "train" and self._training is None:
            b.disabled = bool(combo.error) or trained
            b.description = "Trained" if trained else "Train"
            if not self._ui["label"].value.startswith("training failed"):
                self._ui["label"].value = "" if b.disabled else \
                    f"train {self._describe(key)} at budget {self._train_cfg(False).budget}"

    def _start_training(self) -> None:
        """The Train button: train the current combination now, on the kernel's thread (see above),
        with the progress bar and the panel showing how far it is; then show its accuracy."""
        key = self._key(self._value)
        if self._training is not None or self._combo(key).error:
            return
        self._training = key
        ui = self._ui
        ui["button"].disabled, ui["button"].description = True, "Training…"
        ui["bar"].value = 0.0

        def report(frac: float, text: str) -> None:
            ui["bar"].value, ui["label"].value = frac, text
            self._combo(key).status["accuracy"] = text.split(" (")[0]
            self._show()

        report(0.0, "training… 0 %")
        try:
            name, knobs = self._train_target(key)
            cfg = self._train_cfg(progress=False)  # the widget's own bar shows progress, via on_progress
            train_model(name, cfg, store=self._store(), on_progress=report, **knobs)
            ui["label"].value = "done"
            self._combo(key).done.discard("accuracy")
            self._combo(key).status.pop("accuracy", None)
            self._compute(key, "accuracy")
        except Exception as err:  # noqa: BLE001 - one line in the panel, the widget keeps working
            self.last_error = err
            self._combo(key).status["accuracy"] = "not measured (training failed)"
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
        kernel is next idle (what a notebook cell that reads ``ex.measurement`` right away needs)."""
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
