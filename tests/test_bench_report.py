"""The bench's pacsnode/before verdict (bench/report.py): a row is marked
worse only when its whole bootstrap interval is past the 5% line."""

from __future__ import annotations

from bench.report import Row, _against_before, before_verdict


def _row(ours: list[float], before: list[float], higher_is_better: bool = True) -> Row:
    return Row("r", "a row", "inst/s", higher_is_better,
               samples={"pacsnode": ours, "before": before})


def test_the_same_samples_on_both_sides_are_not_marked() -> None:
    row = _row([100.0, 104.0, 98.0], [100.0, 104.0, 98.0])
    low, high = row.ratio_interval("before")
    assert low <= 1.0 <= high
    assert before_verdict(row) == ""
    assert _against_before(row).startswith("1.00 [")


def test_a_row_worse_in_every_run_is_marked_worse() -> None:
    row = _row([80.0, 81.0, 82.0, 80.5, 81.5], [100.0, 101.0, 99.0, 100.5, 99.5])
    low, high = row.ratio_interval("before")
    assert high < 0.95 and low > 0.75
    assert before_verdict(row) == "worse"
    assert _against_before(row).endswith(" ✗")


def test_latency_rows_are_worse_when_higher() -> None:
    row = _row([1.30, 1.31, 1.29, 1.30], [1.00, 1.01, 0.99, 1.00], higher_is_better=False)
    assert before_verdict(row) == "worse"
    assert before_verdict(_row([0.7, 0.71, 0.69], [1.0, 1.01, 0.99], False)) == ""


def test_a_ratio_past_the_line_within_the_noise_is_unclear() -> None:
    # The median ratio is 0.90, but one run of each side crosses the other's.
    row = _row([90.0, 60.0, 120.0], [100.0, 70.0, 130.0])
    assert row.ratio("before") < 0.95
    assert before_verdict(row) == "unclear"
    assert _against_before(row).endswith(" ?")


def test_the_interval_is_the_same_for_the_same_samples() -> None:
    a = _row([90.0, 60.0, 120.0, 100.0], [100.0, 70.0, 130.0, 95.0])
    b = _row([90.0, 60.0, 120.0, 100.0], [100.0, 70.0, 130.0, 95.0])
    assert a.ratio_interval("before") == b.ratio_interval("before")


def test_one_sample_a_side_has_no_interval() -> None:
    row = _row([90.0], [100.0])
    assert row.ratio_interval("before") is None
    assert before_verdict(row) == "worse"  # nothing says otherwise: the ratio alone
    assert _against_before(row) == "0.90 ✗"
