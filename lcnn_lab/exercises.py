"""Self-check cells for the exercises: a clear pass or fail, and a hint, never the answer.

A check cell must not show its answer: no formula, no call that returns it. So the checks take what
the answer is *about* and work the expected value out themselves, out of sight:

* a module: :func:`check_count` counts its parameters, MACs or size, :func:`check_fraction` compares
  two modules, :func:`check_fused` folds it into one convolution;
* a measurement this run made (a dict or pandas Series): :func:`check_largest`, :func:`check_smallest`
  and :func:`check_closest` read it, :func:`check_prediction` compares a prediction with it;
* a fixed answer of a derivation: :func:`check_hashed` compares a digest of it (made once by the
  chapter's author with :func:`digest`).

:func:`check_close` and :func:`check_choice` take the expected value directly; chapters use them only
where the value passed is not the answer in plain sight. Solutions live in ``tests/solutions.yml``,
and the tests run every check cell with them (PASS) and with wrong answers (FAIL).

    lab.exercises.check_count("parameters of a Ghost module", my_answer, GhostModule(64, 128, 3, ratio=4))
"""
from __future__ import annotations

import hashlib
import math
import os
from typing import Any


class ExerciseFailed(AssertionError):
    """A check that did not pass, raised only while grading (``LCNN_GRADING=1``): nbgrader scores a
    test cell by whether it raises. A student's notebook prints FAIL and a hint instead."""


def grading() -> bool:
    """True while :mod:`lcnn_lab.classroom` grades submissions (it sets ``LCNN_GRADING=1``)."""
    return os.environ.get("LCNN_GRADING", "").strip() == "1"


def _report(title: str, ok: bool, hint: str, graded: bool = True) -> None:
    # Printed, not returned: a returned True/False would show up as a stray output line in the notebook.
    if ok:
        print(f"PASS  {title}")
        return
    print(f"FAIL  {title}: not yet. Hint: {hint}")
    if graded and grading():
        raise ExerciseFailed(f"{title}: not yet")


PLACEHOLDER = "replace the ... (or None) with your answer, then run this cell again"


def _number(title: str, answer: Any, what: str = "answer", placeholder: str = PLACEHOLDER,
            graded: bool = True) -> float | None:
    """``answer`` as a float, or None after reporting why it is not one (the blank, not a number, NaN)."""
    if answer is None or answer is ...:
        _report(title, False, placeholder, graded)
        return None
    try:
        value = float(answer)
    except (TypeError, ValueError):
        _report(title, False, f"the {what} should be a number, got {type(answer).__name__}", graded)
        return None
    if math.isnan(value):
        _report(title, False, f"the {what} is NaN", graded)
        return None
    return value


def check_close(title: str, answer: Any, expected: float, rel_tol: float = 0.02, hint: str = "") -> None:
    """Pass when ``answer`` is a number within ``rel_tol`` (relative) of ``expected``."""
    value = _number(title, answer)
    if value is not None:
        _report(title, math.isclose(value, expected, rel_tol=rel_tol), hint)


def check_choice(title: str, answer: Any, expected: Any, options: tuple | list | None = None,
                 hint: str = "") -> None:
    """Pass when ``answer`` equals ``expected`` (strings compared without case or surrounding spaces)."""
    if answer is None or answer is ...:
        return _report(title, False, PLACEHOLDER)
    norm = (lambda v: v.strip().lower() if isinstance(v, str) else v)
    if options is not None and norm(answer) not in [norm(o) for o in options]:
        return _report(title, False, f"choose one of: {', '.join(map(str, options))}")
    return _report(title, norm(answer) == norm(expected), hint)


def _count(module: Any, what: str, input_size: tuple) -> float:
    from . import profile   # the checks stay importable without the measuring code's dependencies
    counters = {"params": lambda: profile.count_params(module),
                "macs": lambda: profile.count_macs(module, input_size).total,
                "adder_ops": lambda: profile.count_adder_ops(module, input_size),
                "size_mib": lambda: profile.model_size_bytes(module, 32) / 2**20}
    if what not in counters:
        raise ValueError(f"what={what!r} must be one of {', '.join(counters)}")
    return counters[what]()


def check_count(title: str, answer: Any, module: Any, what: str = "params",
                input_size: tuple = (1, 3, 32, 32), rel_tol: float = 0.0, hint: str = "") -> None:
    """Pass when ``answer`` equals (within ``rel_tol``) what ``module`` has of ``what``, counted here by
    lcnn_lab: ``"params"``, ``"macs"`` (multiplications, per ``input_size``), ``"adder_ops"`` or
    ``"size_mib"`` (float32 parameters in MiB). The check cell shows the module, never the count."""
    return check_close(title, answer, expected=_count(module, what, input_size), rel_tol=rel_tol, hint=hint)


def check_fraction(title: str, answer: Any, part: Any, whole: Any, what: str = "params",
                   input_size: tuple = (1, 3, 32, 32), rel_tol: float = 0.01, hint: str = "") -> None:
    """Pass when ``answer`` is the fraction ``what(part) / what(whole)`` of two modules (``"params"``
    or ``"macs"`` on ``input_size``), e.g. a depthwise-separable convolution against a standard one."""
    expected = _count(part, what, input_size) / _count(whole, what, input_size)
    return check_close(title, answer, expected=expected, rel_tol=rel_tol, hint=hint)


def check_prediction(title: str, prediction: Any, measured: float, rel_tol: float = 0.25,
                     hint: str = "") -> None:
    """Predict, then measure: pass when ``prediction`` is within ``rel_tol`` of ``measured`` (a number
    this run measured and has already shown). Either way the line says how far off it was, because
    the point is the next step: explaining the difference. Never graded (:func:`grading`): an honest
    prediction may be far off, and the explanation that follows is what an instructor marks."""
    value = _number(title, prediction, "prediction",
                    placeholder="replace the ... (or None) with your answer: your prediction, written "
                                "before looking at the measurement; then run this cell again", graded=False)
    if value is None:
        return
    if not math.isfinite(value) or value <= 0:
        return _report(title, False, "the prediction should be a positive number", graded=False)
    factor = max(value / measured, measured / value)
    ok = math.isclose(value, measured, rel_tol=rel_tol)
    verdict = f"{title} (your prediction {value:g} is within {factor:.2f}x of the measurement)" if ok else \
        f"{title}: your prediction {value:g} is {factor:.2f}x off the measurement"
    print(f"PASS  {verdict}" if ok else f"FAIL  {verdict}. Hint: {hint}")


def _check_extreme(title: str, answer: Any, values: Any, pick, hint: str) -> None:
    items = dict(values.items())
    if not items:
        raise ValueError("the check needs at least one measured value")
    best = pick(items.values())
    winners = [k for k, v in items.items() if v == best]       # a tie: any of them is right
    expected = answer if answer in winners else winners[0]
    return check_choice(title, answer, expected=expected, options=tuple(items), hint=hint)


def check_largest(title: str, answer: Any, values: Any, hint: str = "") -> None:
    """Pass when ``answer`` names the entry of ``values`` (a dict or pandas Series of numbers this run
    measured) with the largest value: reading a measurement, not recalling a formula."""
    return _check_extreme(title, answer, values, max, hint)


def check_smallest(title: str, answer: Any, values: Any, hint: str = "") -> None:
    """Pass when ``answer`` names the entry of ``values`` with the smallest value (any of a tie)."""
    return _check_extreme(title, answer, values, min, hint)


def check_closest(title: str, answer: Any, values: Any, target: float, hint: str = "") -> None:
    """Pass when ``answer`` names the entry of ``values`` closest to ``target`` (e.g. which of our
    readings a published figure is)."""
    distances = {k: abs(float(v) - target) for k, v in dict(values.items()).items()}
    return _check_extreme(title, answer, distances, min, hint)


def digest(answer: Any, decimals: int | None = None) -> str:
    """The digest :func:`check_hashed` compares: of the answer as an int, or rounded to ``decimals``.
    A chapter's author runs this once on the right answer and pastes the result into the check cell."""
    value = float(answer)
    text = str(int(round(value))) if decimals is None else f"{round(value, decimals):.{decimals}f}"
    return "sha256:" + hashlib.sha256(f"lcnn-lab:{text}".encode()).hexdigest()[:16]


def check_hashed(title: str, answer: Any, expected_digest: str, decimals: int | None = None,
                 hint: str = "") -> None:
    """Pass when ``answer``, as an int (``decimals=None``) or rounded to ``decimals``, has the digest
    ``expected_digest``: for the fixed result of a derivation, which the cell must not show."""
    value = _number(title, answer)
    if value is None:
        return
    if not math.isfinite(value):
        return _report(title, False, "the answer is not a finite number")
    if decimals is None and abs(value - round(value)) > 1e-9:
        return _report(title, False, "the answer is a whole number")
    return _report(title, digest(value, decimals) == expected_digest, hint)


def check_fused(title: str, weight: Any, bias: Any, module: Any, hint: str = "") -> None:
    """Pass when ``weight`` and ``bias`` are the kernel and bias of the one convolution that computes
    what ``module`` computes in eval mode (``nn.Sequential(conv, batchnorm)``, a
    :class:`~lcnn_lab.reparam.RepVGGBlock`, ...), as :func:`lcnn_lab.reparam.equivalent_conv` folds it,
    to float32 rounding. The check cell shows the module, never the folded numbers."""
    import torch                      # the checks stay importable without torch
    from .reparam import equivalent_conv
    if any(v is None or v is ... for v in (weight, bias)):
        return _report(title, False, PLACEHOLDER)
    if not (isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)):
        return _report(title, False, f"the weight and the bias should be tensors, got "
                                     f"{type(weight).__name__} and {type(bias).__name__}")
    conv = equivalent_conv(module)
    for name, got, want in (("weight", weight, conv.weight), ("bias", bias, conv.bias)):
        if tuple(got.shape) != tuple(want.shape):
            return _report(title, False, f"the {name} should have shape {tuple(want.shape)}, "
                                         f"got {tuple(got.shape)}")
    ok = all(torch.allclose(got.detach().double().cpu(), want.detach().double().cpu(), rtol=1e-4, atol=1e-6)
             for got, want in ((weight, conv.weight), (bias, conv.bias)))
    return _report(title, ok, hint)
