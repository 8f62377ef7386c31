"""Numbers as a reader should see them: every count, size and time says what it is, in one style.

Every printed figure of the package (``Profile``, ``Latency``, the Explorer's panel) and of the
notebooks goes through these functions, so the book writes ``85.8 M MACs (171.6 M FLOPs)``,
``4.67 MB`` and ``1.23 ms ± 0.05`` the same way everywhere, with about three significant digits.

    >>> format_count(1_170_000), format_macs(85_800_000), format_bytes(4_670_000)
    ('1.17 M', '85.8 M MACs (171.6 M FLOPs)', '4.67 MB')
    >>> format_ms(1.2345), format_change(25, 100), scaled(21_680_000, "M")
    ('1.23', '×0.25 (−75 %)', 21.68)

Decimal prefixes throughout (k = 10^3, M = 10^6, G = 10^9, also for bytes: MB, not MiB), as the
surveys' tables use them; :func:`format_bytes` says MiB only when asked to.
"""
from __future__ import annotations

__all__ = ["MINUS", "SCALES", "scaled", "format_count", "format_macs", "format_bytes", "format_ms",
           "format_latency", "format_change", "format_signed", "format_percent"]

MINUS = "\u2212"   # a real minus sign: "−75 %", not "-75 %"
SCALES = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}


def scaled(n: float, unit: str) -> float:
    """``n`` in ``unit`` (``"k"``, ``"M"`` or ``"G"``), for a table column headed "MACs (M)"."""
    if unit not in SCALES:
        raise ValueError(f"unit {unit!r} must be one of {', '.join(repr(u) for u in SCALES if u)}")
    return n / SCALES[unit]


def _decimals(x: float) -> int:
    """Decimals for about three significant digits: 1.17, 85.8, 293."""
    return 2 if abs(x) < 10 else 1 if abs(x) < 100 else 0


def _digits(x: float) -> str:
    return f"{x:.{_decimals(x)}f}"


def _prefix(n: float) -> tuple[str, float]:
    for unit in ("G", "M", "k"):
        if abs(n) >= SCALES[unit]:
            return unit, SCALES[unit]
    return "", 1.0


def format_count(n: float) -> str:
    """``1_170_000 -> "1.17 M"``, ``85_800_000 -> "85.8 M"``, ``950 -> "950"``."""
    unit, scale = _prefix(n)
    return f"{_digits(n / scale)} {unit}" if unit else f"{n:,.0f}"


def format_macs(macs: float) -> str:
    """``"85.8 M MACs (171.6 M FLOPs)"``: FLOPs = 2 x MACs, written with the MACs' precision."""
    unit, scale = _prefix(macs)
    funit, _ = _prefix(2 * macs)
    flops = f"{2 * macs / scale:.{_decimals(macs / scale)}f} {unit}" if unit and funit == unit \
        else format_count(2 * macs)
    return f"{format_count(macs)} MACs ({flops} FLOPs)"


def format_bytes(n: float, binary: bool = False) -> str:
    """``4_670_000 -> "4.67 MB"`` (decimal units); ``binary=True`` gives MiB/KiB (2^20, 2^10)."""
    units = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)) if binary else \
        (("GB", 1e9), ("MB", 1e6), ("kB", 1e3))
    for unit, scale in units:
        if abs(n) >= scale:
            return f"{_digits(n / scale)} {unit}"
    return f"{n:,.0f} B"


def format_ms(ms: float) -> str:
    """Milliseconds with about three significant digits, keeping trailing zeros: ``2.00``, ``13.5``."""
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 0.1 else f"{ms:.3f}"


def format_latency(median_ms: float, spread_ms: float | None = None) -> str:
    """``"1.23 ms ± 0.05"``: the spread written with the median's decimals."""
    text = format_ms(median_ms)
    if spread_ms is None:
        return f"{text} ms"
    decimals = len(text.partition(".")[2])
    return f"{text} ms ± {spread_ms:.{decimals}f}"


def format_signed(x: float, decimals: int = 0) -> str:
    """``+3.2``, ``−75``, ``±0``: a sign always shown, with a real minus sign."""
    text = f"{abs(x):.{decimals}f}"
    return ("+" if x > 0 else MINUS if x < 0 else "±") + text


def format_percent(fraction: float, decimals: int = 1) -> str:
    """``0.7016 -> "70.2 %"``."""
    return f"{100 * fraction:.{decimals}f} %"


def format_change(value: float | None, base: float | None) -> str:
    """A cost against its baseline: ``"×0.25 (−75 %)"``; ``""`` when either is missing."""
    if value is None or not base:
        return ""
    r = value / base
    if abs(r - 1) < 5e-4:
        return "= baseline"
    ratio = f"{r:.3f}" if r < 0.1 else f"{r:.2f}" if r < 10 else f"{r:.1f}" if r < 100 else f"{r:.0f}"
    return f"×{ratio} ({format_signed(100 * (r - 1), 0)} %)"
