"""Self-check cells for the exercises: a clear pass or fail, and a hint, never the answer.

The expected value is computed by the notebook from its own measurements, so a check stays right
when the code or the machine changes; it is compared here and never printed.

    from lcnn_lab.exercises import check_close, check_choice
    check_close("float32 size in MiB", my_answer, expected=size_mib, rel_tol=0.01,
                hint="4 bytes per parameter; 1 MiB is 2**20 bytes")
"""
from __future__ import annotations

import math
from typing import Any


def _report(title: str, ok: bool, hint: str) -> None:
    # Printed, not returned: a returned True/False would show up as a stray output line in the notebook.
    if ok:
        print(f"PASS  {title}")
    else:
        print(f"FAIL  {title}: not yet. Hint: {hint}")


def check_close(title: str, answer: Any, expected: float, rel_tol: float = 0.02, hint: str = "") -> None:
    """Pass when ``answer`` is a number within ``rel_tol`` (relative) of ``expected``."""
    if answer is None or answer is ...:
        return _report(title, False, "replace the ... (or None) with your answer, then run this cell again")
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return _report(title, False, f"the answer should be a number, got {type(answer).__name__}")
    if math.isnan(value):
        return _report(title, False, "the answer is NaN")
    return _report(title, math.isclose(value, expected, rel_tol=rel_tol), hint)


def check_choice(title: str, answer: Any, expected: Any, options: tuple | list | None = None,
                 hint: str = "") -> None:
    """Pass when ``answer`` equals ``expected`` (strings compared without case or surrounding spaces)."""
    if answer is None or answer is ...:
        return _report(title, False, "replace the ... (or None) with your answer, then run this cell again")
    norm = (lambda v: v.strip().lower() if isinstance(v, str) else v)
    if options is not None and norm(answer) not in [norm(o) for o in options]:
        return _report(title, False, f"choose one of: {', '.join(map(str, options))}")
    return _report(title, norm(answer) == norm(expected), hint)


def check_count(title: str, answer: Any, module: Any, what: str = "params",
                input_size: tuple = (1, 3, 32, 32), hint: str = "") -> None:
    """Pass when ``answer`` equals what ``module`` has of ``what``, counted here by lcnn_lab:
    ``"params"``, ``"macs"`` (multiplications, per ``input_size``) or ``"adder_ops"``. The check cell
    shows the module, never the count or the formula."""
    from . import profile   # the checks stay importable without the measuring code's dependencies
    counters = {"params": lambda: profile.count_params(module),
                "macs": lambda: profile.count_macs(module, input_size).total,
                "adder_ops": lambda: profile.count_adder_ops(module, input_size)}
    if what not in counters:
        raise ValueError(f"what={what!r} must be one of {', '.join(counters)}")
    return check_close(title, answer, expected=counters[what](), rel_tol=0.0, hint=hint)


def check_prediction(title: str, prediction: Any, measured: float, rel_tol: float = 0.25,
                     hint: str = "") -> None:
    """Predict, then measure: pass when ``prediction`` is within ``rel_tol`` of ``measured`` (a number
    this run measured and has already shown). Either way the line says how far off it was, because
    the point is the next step: explaining the difference."""
    if prediction is None or prediction is ...:
        return _report(title, False, "replace the ... (or None) with your answer: your prediction, "
                                     "written before looking at the measurement; then run this cell again")
    try:
        value = float(prediction)
    except (TypeError, ValueError):
        return _report(title, False, f"the prediction should be a number, got {type(prediction).__name__}")
    if not math.isfinite(value) or value <= 0:
        return _report(title, False, "a ratio of two latencies is a positive number")
    factor = max(value / measured, measured / value)
    ok = math.isclose(value, measured, rel_tol=rel_tol)
    verdict = f"{title} (your prediction {value:g} is within {factor:.2f}x of the measurement)" if ok else \
        f"{title}: your prediction {value:g} is {factor:.2f}x off the measurement"
    print(f"PASS  {verdict}" if ok else f"FAIL  {verdict}. Hint: {hint}")


def check_largest(title: str, answer: Any, values: Any, hint: str = "") -> None:
    """Pass when ``answer`` names the entry of ``values`` (a dict or pandas Series of numbers this run
    measured) with the largest value: reading a measurement, not recalling a formula."""
    items = dict(values.items())
    if not items:
        raise ValueError("check_largest needs at least one measured value")
    best = max(items, key=lambda k: items[k])
    return check_choice(title, answer, expected=best, options=tuple(items), hint=hint)


def check_fused(title: str, weight: Any, bias: Any, module: Any, hint: str = "") -> None:
    """Pass when ``weight`` and ``bias`` are the kernel and bias of the one convolution that computes
    what ``module`` computes in eval mode (``nn.Sequential(conv, batchnorm)``, a
    :class:`~lcnn_lab.reparam.RepVGGBlock`, ...), as :func:`lcnn_lab.reparam.equivalent_conv` folds it,
    to float32 rounding. The check cell shows the module, never the folded numbers."""
    import torch                      # the checks stay importable without torch
    from .reparam import equivalent_conv
    if any(v is None or v is ... for v in (weight, bias)):
        return _report(title, False, "replace the ... (or None) with your answer, then run this cell again")
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
