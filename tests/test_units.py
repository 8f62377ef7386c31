"""Every printed number goes through lcnn_lab.units: three significant digits, the unit named,
FLOPs = 2 x MACs, a real minus sign."""
from __future__ import annotations

import pytest

from lcnn_lab import units as U


@pytest.mark.parametrize("n, text", [(950, "950"), (1_170_000, "1.17 M"), (85_800_000, "85.8 M"),
                                     (293_000, "293 k"), (4_089_184_256, "4.09 G"), (12_345, "12.3 k")])
def test_format_count(n, text):
    assert U.format_count(n) == text


def test_format_macs_writes_flops_as_twice_the_macs():
    assert U.format_macs(85_800_000) == "85.8 M MACs (171.6 M FLOPs)"
    assert U.format_macs(21_680_000) == "21.7 M MACs (43.4 M FLOPs)"
    assert U.format_macs(600_000_000) == "600 M MACs (1.20 G FLOPs)"     # FLOPs cross into G
    assert U.format_macs(500) == "500 MACs (1.00 k FLOPs)"


def test_format_bytes_decimal_and_binary():
    assert U.format_bytes(4_670_000) == "4.67 MB" and U.format_bytes(999) == "999 B"
    assert U.format_bytes(1_171_816) == "1.17 MB"
    assert U.format_bytes(1_171_816, binary=True) == "1.12 MiB" and U.format_bytes(2048, binary=True) == "2.00 KiB"


def test_milliseconds_keep_three_digits_and_the_spread_the_same_decimals():
    assert [U.format_ms(x) for x in (0.01234, 0.5, 2.0, 13.54, 123.4)] == ["0.012", "0.50", "2.00", "13.5", "123"]
    assert U.format_latency(1.2345, 0.051) == "1.23 ms ± 0.05"
    assert U.format_latency(13.54, 2.26) == "13.5 ms ± 2.3" and U.format_latency(2.0) == "2.00 ms"


def test_changes_against_a_baseline():
    assert U.format_change(25, 100) == "×0.25 (\u221275 %)"
    assert U.format_change(300, 100) == "×3.00 (+200 %)"
    assert U.format_change(100.01, 100) == "= baseline"
    assert U.format_change(None, 100) == "" and U.format_change(5, 0) == ""
    assert U.format_signed(-3.21, 1) == "\u22123.2" and U.format_signed(0) == "±0"
    assert U.format_percent(0.7016) == "70.2 %"


def test_scaled_names_its_unit():
    assert U.scaled(21_680_000, "M") == pytest.approx(21.68) and U.scaled(2_000, "k") == 2
    with pytest.raises(ValueError, match="unit 'm' must be one of"):
        U.scaled(1, "m")
