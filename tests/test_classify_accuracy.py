"""Accuracy of the built-in classification rules on the labelled series of
tests/data/classify_series.json (written from vendor conventions before
the rules): precision and recall per class, printed and kept in a file;
any built-in class under 0.95 fails."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from classify_data import instance_headers, labelled_series
from pacsnode.classify import BUILTIN_CLASSES, classify_series, load_rules, series_facts

THRESHOLD = 0.95


def _table(rows: list[tuple[str, int, int, int]]) -> str:
    lines = [f"{'class':<18} {'series':>6} {'TP':>4} {'FP':>4} {'FN':>4} "
             f"{'precision':>9} {'recall':>7}"]
    for name, tp, fp, fn in rows:
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        lines.append(f"{name:<18} {tp + fn:>6} {tp:>4} {fp:>4} {fn:>4} "
                     f"{precision:>9.3f} {recall:>7.3f}")
    return "\n".join(lines)


def test_builtin_rules_precision_and_recall(tmp_path: Path) -> None:
    rules = load_rules()
    series = labelled_series()
    assert len(series) >= 150
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    mistakes = []
    for entry in series:
        headers = list(instance_headers(entry))
        assert len(headers) == entry["instances"]
        got = set(classify_series(headers[0], series_facts(headers), rules))
        want = set(entry["classes"])
        assert got <= set(BUILTIN_CLASSES)
        for name in got & want:
            tp[name] += 1
        for name in got - want:
            fp[name] += 1
        for name in want - got:
            fn[name] += 1
        if got != want:
            mistakes.append(f"{entry['id']}: want {sorted(want)}, got {sorted(got)}")
    rows = [(name, tp[name], fp[name], fn[name]) for name in BUILTIN_CLASSES]
    exact = len(series) - len(mistakes)
    report = (f"{_table(rows)}\n\n{len(series)} series, {exact} with exactly the labelled "
              f"classes\n" + "".join(f"  {m}\n" for m in mistakes))
    (tmp_path / "classification-accuracy.txt").write_text(report)
    print("\n" + report)
    low = [name for name, t, f, n in rows
           if (t + f and t / (t + f) < THRESHOLD) or (t + n and t / (t + n) < THRESHOLD)]
    assert not low, f"classes under {THRESHOLD}: {low}\n{report}"
    # every built-in class is in the labelled set, with hard cases beside it
    assert all(tp[name] + fn[name] >= 5 for name in BUILTIN_CLASSES), report
