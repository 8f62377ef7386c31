"""The exercises' self-checks: one PASS or FAIL line with a hint, and never the expected answer."""
import math

import pytest

from lcnn_lab.exercises import check_choice, check_close

EXPECTED = 0.7321  # digits that cannot appear in a title or hint by chance
OPTIONS = ("single", "stacked", "factorized", "bottleneck")


def printed(capsys) -> list[str]:
    out, err = capsys.readouterr()
    assert err == "", "a check prints to stdout only"
    return out.splitlines()


def assert_one_line(lines: list[str], verdict: str, title: str) -> str:
    assert len(lines) == 1, f"a check prints exactly one line, got {lines}"
    assert lines[0].startswith(f"{verdict}  {title}"), lines[0]
    return lines[0]


def assert_expected_not_shown(line: str, *expected) -> None:
    for value in expected:
        texts = {str(value), repr(value)}
        if isinstance(value, float):  # rounded or as a percentage, too
            texts |= {f"{value:g}", f"{value:.2f}", f"{value:.3g}", f"{100 * value:.1f}"}
        for text in texts:
            assert text.lower() not in line.lower(), f"the check gave the answer away: {line!r}"


# ----------------------------------------------------------------------------------------------
# check_close

@pytest.mark.parametrize("answer, expected", [(EXPECTED, EXPECTED), (EXPECTED * 1.019, EXPECTED),
                                              (EXPECTED * 0.981, EXPECTED), (1, 1.0), (1.0, 1), (256, 256)])
def test_check_close_passes_within_the_tolerance(answer, expected, capsys):
    check_close("size", answer, expected=expected, rel_tol=0.02, hint="think")
    assert_expected_not_shown(assert_one_line(printed(capsys), "PASS", "size"), expected)


@pytest.mark.parametrize("answer", [EXPECTED * 1.021, EXPECTED * 0.979, -EXPECTED, 0, 73.21, math.inf])
def test_check_close_fails_outside_the_tolerance_with_the_hint(answer, capsys):
    check_close("size", answer, expected=EXPECTED, rel_tol=0.02, hint="4 bytes per parameter")
    line = assert_one_line(printed(capsys), "FAIL", "size")
    assert line.endswith("Hint: 4 bytes per parameter")
    assert_expected_not_shown(line, EXPECTED)


def test_check_close_rel_tol_zero_means_exact(capsys):
    check_close("zero point", 85, expected=85, rel_tol=0.0)
    check_close("zero point", 86, expected=85, rel_tol=0.0)
    check_close("zero point", 85.0000001, expected=85, rel_tol=0.0)
    assert [line.split()[0] for line in printed(capsys)] == ["PASS", "FAIL", "FAIL"]


@pytest.mark.parametrize("answer", [..., None])
def test_check_close_asks_to_replace_the_placeholder(answer, capsys):
    check_close("size", answer, expected=EXPECTED, hint="not this hint")
    line = assert_one_line(printed(capsys), "FAIL", "size")
    assert "replace the ..." in line and "not this hint" not in line
    assert_expected_not_shown(line, EXPECTED)


@pytest.mark.parametrize("answer, kind", [("about 0.7", "str"), ([EXPECTED], "list"), ({"a": 1}, "dict"),
                                          (object(), "object")])
def test_check_close_wants_a_number(answer, kind, capsys):
    check_close("size", answer, expected=EXPECTED, hint="not this hint")
    line = assert_one_line(printed(capsys), "FAIL", "size")
    assert "should be a number" in line and f"got {kind}" in line and "not this hint" not in line
    assert_expected_not_shown(line, EXPECTED)


@pytest.mark.parametrize("answer", [math.nan, float("nan"), "nan"])
def test_check_close_rejects_nan(answer, capsys):
    check_close("size", answer, expected=EXPECTED, hint="not this hint")
    line = assert_one_line(printed(capsys), "FAIL", "size")
    assert "NaN" in line and "not this hint" not in line


def test_check_close_accepts_numpy_and_torch_scalars(capsys):
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    check_close("size", np.float32(EXPECTED), expected=EXPECTED, rel_tol=1e-6)
    check_close("size", torch.tensor(EXPECTED), expected=EXPECTED, rel_tol=1e-6)
    assert [line.split()[0] for line in printed(capsys)] == ["PASS", "PASS"]


def test_check_close_returns_nothing(capsys):
    # a returned True/False would show up as a stray output line under the notebook cell
    assert check_close("size", EXPECTED, expected=EXPECTED) is None
    assert check_close("size", 1.0, expected=EXPECTED) is None
    assert check_close("size", ..., expected=EXPECTED) is None


# ----------------------------------------------------------------------------------------------
# check_choice

@pytest.mark.parametrize("answer", ["stacked", "Stacked", "  STACKED\n", "\tstacked "])
def test_check_choice_ignores_case_and_surrounding_space(answer, capsys):
    check_choice("fastest", answer, expected="stacked", options=OPTIONS, hint="sort by latency")
    assert_one_line(printed(capsys), "PASS", "fastest")


def test_check_choice_normalizes_the_expected_value_and_the_options_too(capsys):
    check_choice("fastest", "stacked", expected=" Stacked ", options=[o.upper() for o in OPTIONS])
    assert_one_line(printed(capsys), "PASS", "fastest")


@pytest.mark.parametrize("answer", ["single", "factorized", "bottleneck", " Single "])
def test_check_choice_fails_on_another_option_with_the_hint(answer, capsys):
    check_choice("fastest", answer, expected="stacked", options=OPTIONS, hint="sort by latency")
    line = assert_one_line(printed(capsys), "FAIL", "fastest")
    assert line.endswith("Hint: sort by latency")
    assert_expected_not_shown(line, "stacked")


@pytest.mark.parametrize("answer", ["inception", "stacked 3x3", "", 3])
def test_check_choice_lists_the_options_for_an_answer_outside_them(answer, capsys):
    check_choice("fastest", answer, expected="stacked", options=OPTIONS, hint="not this hint")
    line = assert_one_line(printed(capsys), "FAIL", "fastest")
    assert "choose one of: single, stacked, factorized, bottleneck" in line and "not this hint" not in line


@pytest.mark.parametrize("answer", [..., None])
def test_check_choice_asks_to_replace_the_placeholder(answer, capsys):
    check_choice("fastest", answer, expected="stacked", options=OPTIONS, hint="not this hint")
    line = assert_one_line(printed(capsys), "FAIL", "fastest")
    assert "replace the ..." in line and "not this hint" not in line
    assert "choose one of" not in line  # the placeholder is not an answer outside the options


def test_check_choice_without_options(capsys):
    check_choice("layer", "stage2.conv1", expected="stage2.conv1")
    check_choice("layer", " STAGE2.CONV1 ", expected="stage2.conv1")
    check_choice("layer", "stage3.conv1", expected="stage2.conv1", hint="lowest curve")
    check_choice("count", 7, expected=7)
    check_choice("count", 8, expected=7)
    lines = printed(capsys)
    assert [line.split()[0] for line in lines] == ["PASS", "PASS", "FAIL", "PASS", "FAIL"]
    assert_expected_not_shown(lines[2], "stage2.conv1", "stage2")
    assert_expected_not_shown(lines[4], 7)


def test_check_choice_returns_nothing(capsys):
    assert check_choice("fastest", "stacked", expected="stacked", options=OPTIONS) is None
    assert check_choice("fastest", "single", expected="stacked", options=OPTIONS) is None
    assert check_choice("fastest", "other", expected="stacked", options=OPTIONS) is None
    assert check_choice("fastest", None, expected="stacked", options=OPTIONS) is None


# ----------------------------------------------------------------------------------------------
# Checks that measure the object they are given (chapter 03)

def test_check_count_counts_the_module_itself(capsys):
    import torch
    from lcnn_lab.exercises import check_count
    conv = torch.nn.Conv2d(4, 8, 3, bias=False)          # 288 params, 288*30*30 MACs on 32x32
    check_count("params", 288, conv, "params")
    check_count("params", 289, conv, "params", hint="k*k*c_in*c_out")
    check_count("macs", 288 * 30 * 30, conv, "macs", input_size=(1, 4, 32, 32))
    lines = printed(capsys)
    assert [line.split()[0] for line in lines] == ["PASS", "FAIL", "PASS"]
    assert_expected_not_shown(lines[1], 288)
    with pytest.raises(ValueError, match="what='flops' must be one of params, macs, adder_ops"):
        check_count("x", 1, conv, "flops")


def test_check_prediction_says_how_far_off(capsys):
    from lcnn_lab.exercises import check_prediction
    check_prediction("ratio", 0.5, measured=0.55, rel_tol=0.2)
    check_prediction("ratio", 0.5, measured=1.5, rel_tol=0.2, hint="MACs are not time")
    check_prediction("ratio", ..., measured=1.5)
    check_prediction("ratio", -1, measured=1.5)
    lines = printed(capsys)
    assert [line.split()[0] for line in lines] == ["PASS", "FAIL", "FAIL", "FAIL"]
    assert "3.00x off" in lines[1] and lines[1].endswith("Hint: MACs are not time")
    assert "before looking at the measurement" in lines[2]


def test_check_largest_reads_the_measurement(capsys):
    from lcnn_lab.exercises import check_largest
    shares = {"primary": 0.87, "cheap": 9.1}
    check_largest("slow part", "cheap", shares)
    check_largest("slow part", "primary", shares, hint="compare the columns")
    check_largest("slow part", "depthwise", shares)
    lines = printed(capsys)
    assert [line.split()[0] for line in lines] == ["PASS", "FAIL", "FAIL"]
    assert lines[2].endswith("choose one of: primary, cheap")
    assert_expected_not_shown(lines[1], "cheap")


def test_check_fused_compares_with_the_folded_convolution(capsys):
    import torch
    from torch import nn

    from lcnn_lab.exercises import check_fused
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3, eps=1e-3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bn.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.running_var.copy_(torch.tensor([0.3, 1.2, 0.7]))
    pair = nn.Sequential(conv, bn)
    sigma = (bn.running_var + bn.eps).sqrt()
    w = (conv.weight * (bn.weight / sigma)[:, None, None, None]).detach()
    b = (bn.bias - bn.running_mean * bn.weight / sigma).detach()
    no_eps = bn.running_var.sqrt()
    check_fused("fold", w, b, pair)                                                   # the solution
    check_fused("fold", w.double(), b.double(), pair)                                 # any float dtype
    check_fused("fold", (conv.weight * (bn.weight / no_eps)[:, None, None, None]).detach(),
                (bn.bias - bn.running_mean * bn.weight / no_eps).detach(), pair, hint="eps")  # eps forgotten
    check_fused("fold", w, bn.bias.detach(), pair, hint="the mean")                   # mean forgotten
    check_fused("fold", w[:, :1], b, pair)                                             # wrong shape
    check_fused("fold", ..., b, pair)
    check_fused("fold", w.tolist(), b, pair)
    lines = printed(capsys)
    assert [line.split()[0] for line in lines] == ["PASS", "PASS", "FAIL", "FAIL", "FAIL", "FAIL", "FAIL"]
    assert lines[2].endswith("Hint: eps") and lines[3].endswith("Hint: the mean")
    assert "should have shape (3, 2, 3, 3)" in lines[4]
    assert "replace the ..." in lines[5] and "should be tensors" in lines[6]
    for line in lines:
        assert_expected_not_shown(line, *[round(v, 4) for v in b.tolist()])


def test_check_fraction_compares_two_modules(capsys):
    import torch
    from lcnn_lab.exercises import check_fraction
    small, big = torch.nn.Conv2d(8, 8, 3, bias=False), torch.nn.Conv2d(8, 16, 3, bias=False)
    check_fraction("fraction", 0.5, small, big)
    check_fraction("fraction", 0.25, small, big, hint="count both")
    check_fraction("fraction", 0.5, small, big, "macs", input_size=(1, 8, 10, 10))
    lines = printed(capsys)
    assert [line.split()[0] for line in lines] == ["PASS", "FAIL", "PASS"]
    assert_expected_not_shown(lines[1], 0.5)


@pytest.mark.parametrize("check, right, wrong", [("check_smallest", "b", "a"), ("check_largest", "a", "b")])
def test_check_smallest_and_largest_accept_any_of_a_tie(check, right, wrong, capsys):
    import lcnn_lab.exercises as E
    values = {"a": 3.0, "b": 1.0, "c": 2.0}
    getattr(E, check)("pick", right, values)
    getattr(E, check)("pick", wrong, values)
    E.check_smallest("tie", "y", {"x": 1.0, "y": 1.0, "z": 2.0})
    E.check_smallest("tie", "x", {"x": 1.0, "y": 1.0, "z": 2.0})
    assert [line.split()[0] for line in printed(capsys)] == ["PASS", "FAIL", "PASS", "PASS"]


def test_check_closest_reads_which_value_matches(capsys):
    from lcnn_lab.exercises import check_closest
    readings = {"MACs@224": 15.47, "FLOPs@224": 30.9, "MACs@512": 80.8}
    check_closest("reading", "MACs@224", readings, target=15.5)
    check_closest("reading", "FLOPs@224", readings, target=15.5, hint="compare")
    lines = printed(capsys)
    assert [line.split()[0] for line in lines] == ["PASS", "FAIL"]
    assert_expected_not_shown(lines[1], "MACs@224")


def test_check_hashed_never_needs_the_answer_in_the_cell(capsys):
    from lcnn_lab.exercises import check_hashed, digest
    assert digest(64) == digest(64.0) != digest(63)
    assert digest(24.08, decimals=0) == digest(23.9, decimals=0) != digest(23.4, decimals=0)
    check_hashed("zero point", 64, digest(64))
    check_hashed("zero point", 63, digest(64), hint="round Z")
    check_hashed("zero point", 64.5, digest(64))
    check_hashed("intensity", 1.0511, digest(1.051, 2), decimals=2)
    check_hashed("intensity", ..., digest(1.051, 2), decimals=2)
    lines = printed(capsys)
    assert [line.split()[0] for line in lines] == ["PASS", "FAIL", "FAIL", "PASS", "FAIL"]
    assert lines[1].endswith("Hint: round Z") and "whole number" in lines[2]
    assert "replace the ... (or None)" in lines[4]
    for line in lines:
        assert_expected_not_shown(line, 64, 1.051)


# ---- grading (lcnn_lab.classroom sets LCNN_GRADING=1 while nbgrader runs a submission) --------------

def test_while_grading_a_failed_check_raises_after_its_line(capsys, monkeypatch):
    from lcnn_lab.exercises import ExerciseFailed
    monkeypatch.setenv("LCNN_GRADING", "1")
    with pytest.raises(ExerciseFailed):
        check_close("a ratio", 0.5, EXPECTED, hint="look again")
    assert_expected_not_shown(assert_one_line(printed(capsys), "FAIL", "a ratio"), EXPECTED)
    with pytest.raises(ExerciseFailed):
        check_close("a ratio", ..., EXPECTED)                 # a blank scores nothing either
    printed(capsys)
    check_close("a ratio", EXPECTED, EXPECTED)                # a right answer does not raise
    assert_one_line(printed(capsys), "PASS", "a ratio")


def test_a_prediction_is_never_graded(capsys, monkeypatch):
    from lcnn_lab.exercises import check_prediction
    monkeypatch.setenv("LCNN_GRADING", "1")
    check_prediction("a latency ratio", 10.0, measured=1.0)   # far off: reported, not raised
    assert_one_line(printed(capsys), "FAIL", "a latency ratio")
    check_prediction("a latency ratio", ..., measured=1.0)    # blank: the explanation is marked by hand
    assert_one_line(printed(capsys), "FAIL", "a latency ratio")


def test_outside_grading_a_failed_check_only_prints(capsys, monkeypatch):
    monkeypatch.delenv("LCNN_GRADING", raising=False)
    check_close("a ratio", 0.5, EXPECTED)
    assert_one_line(printed(capsys), "FAIL", "a ratio")
