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
