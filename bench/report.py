"""Results: rows of samples per server, their summary, and the three outputs
(a terminal table, ``bench/results/<timestamp>.json``, ``bench/RESULTS.md``)."""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["Target", "Row", "Results", "machine_info", "write_outputs", "print_table",
           "summary", "SERVERS"]

BENCH_DIR = Path(__file__).resolve().parent
SERVERS = ("pacsnode", "before", "orthanc", "storescp")


@dataclass(frozen=True)
class Target:
    """What pacsnode should reach, as a ratio of its median to another
    server's: at least ``x`` when higher is better, at most ``x`` when lower is."""

    orthanc: float | None = None
    storescp: float | None = None
    #: How the issue words it, for the table ("≥1.5× Orthanc").
    text: str = ""
    #: Another row whose pacsnode median this row's is divided by (at least
    #: ``baseline_ratio`` when higher is better): pacsnode against itself.
    baseline: str | None = None
    baseline_ratio: float | None = None
    #: A bound on pacsnode's median itself, in the row's unit (at most when
    #: lower is better, at least when higher is).
    limit: float | None = None


#: Level of the interval beside each pacsnode/before ratio, and the draws
#: that make it (Row.ratio_interval).
RATIO_LEVEL = 0.90
RATIO_DRAWS = 2000


@dataclass
class Row:
    key: str
    title: str
    unit: str
    higher_is_better: bool
    target: Target | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    #: Free-form facts: result counts, loaded scale, errors.
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def median(self, server: str) -> float | None:
        values = self.samples.get(server)
        return statistics.median(values) if values else None

    def spread(self, server: str) -> float | None:
        """Half the interquartile range (the half range for fewer than four
        samples), as a fraction of the median."""
        values = sorted(self.samples.get(server) or [])
        med = self.median(server)
        if len(values) < 2 or not med:
            return None
        if len(values) < 4:
            low, high = values[0], values[-1]
        else:
            q = statistics.quantiles(values, n=4, method="inclusive")
            low, high = q[0], q[2]
        return (high - low) / 2 / abs(med)

    def ratio(self, other: str) -> float | None:
        ours, theirs = self.median("pacsnode"), self.median(other)
        if ours is None or not theirs:
            return None
        return ours / theirs

    def ratio_interval(self, other: str, level: float = RATIO_LEVEL,
                       draws: int = RATIO_DRAWS) -> tuple[float, float] | None:
        """A bootstrap interval of ``ratio(other)`` at ``level``: each side's
        samples drawn again with replacement, ``draws`` times, and the ratio
        of the two medians taken each time.  Seeded by the row's key, so the
        same samples give the same interval.  None below two samples a side.
        (Written out: numpy's or scipy's bootstrap would be a dependency of
        the bench for twenty lines.)"""
        ours, theirs = self.samples.get("pacsnode") or [], self.samples.get(other) or []
        if len(ours) < 2 or len(theirs) < 2:
            return None
        rng = random.Random(self.key)
        ratios = []
        for _ in range(draws):
            base = statistics.median(rng.choices(theirs, k=len(theirs)))
            if base:
                ratios.append(statistics.median(rng.choices(ours, k=len(ours))) / base)
        if not ratios:
            return None
        ratios.sort()
        tail = (1 - level) / 2
        return (ratios[int(tail * (len(ratios) - 1))],
                ratios[int((1 - tail) * (len(ratios) - 1))])

    def baseline_ratio(self, rows: dict[str, "Row"]) -> float | None:
        """pacsnode's median over its median in the target's baseline row."""
        if self.target is None or self.target.baseline not in rows:
            return None
        ours = self.median("pacsnode")
        base = rows[self.target.baseline].median("pacsnode")
        return ours / base if ours is not None and base else None

    def verdict(self, rows: dict[str, "Row"] | None = None) -> bool | None:
        """True when every target this row has is met, None when unknown."""
        if self.target is None:
            return None
        checks: list[bool] = []
        if self.target.baseline is not None and self.target.baseline_ratio is not None:
            got = self.baseline_ratio(rows or {})
            if got is None:
                return None
            want = self.target.baseline_ratio
            checks.append(got >= want if self.higher_is_better else got <= want)
        if self.target.limit is not None:
            ours = self.median("pacsnode")
            if ours is None:
                return None
            limit = self.target.limit
            checks.append(ours >= limit if self.higher_is_better else ours <= limit)
        for other, wanted in (("orthanc", self.target.orthanc),
                              ("storescp", self.target.storescp)):
            if wanted is None:
                continue
            got = self.ratio(other)
            if got is None:
                return None
            checks.append(got >= wanted if self.higher_is_better else got <= wanted)
        return all(checks) if checks else None


class Results:
    """Rows in the order they were first declared."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.notes: list[str] = []
        self.timings: dict[str, float] = {}

    def row(self, key: str, title: str, unit: str, *, higher_is_better: bool,
            target: Target | None = None) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key, title, unit, higher_is_better, target)
        return self.rows[key]

    def add(self, key: str, server: str, value: float) -> None:
        self.rows[key].samples.setdefault(server, []).append(value)

    def note(self, text: str) -> None:
        self.notes.append(text)


# ------------------------------------------------------------------ machine

def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=BENCH_DIR.parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def machine_info(versions: dict[str, str]) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kib = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                    if line.startswith("MemTotal:")), 0)
    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--untracked-files=no", "src"):
        commit += " (+ uncommitted changes in src/)"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count() or 0,
        "cpu": cpu,
        "memory_gib": round(mem_kib / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pacsnode_commit": commit,
        **versions,
    }


# ------------------------------------------------------------------ summary

def _fmt_value(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(row: Row, server: str) -> str:
    med = row.median(server)
    if med is None:
        return "—"
    spread = row.spread(server)
    return _fmt_value(med) + (f" ±{spread * 100:.0f}%" if spread is not None else "")


def _ratio(row: Row, other: str) -> str:
    got = row.ratio(other)
    return "—" if got is None else f"{got:.2f}"


#: How much worse than ``--before`` a row may be before its ratio is marked.
BEFORE_TOLERANCE = 0.05


def before_verdict(row: Row) -> str:
    """How pacsnode stands against ``--before`` on this row: "worse" when
    the whole interval of the ratio (``Row.ratio_interval``) lies more than
    BEFORE_TOLERANCE on the worse side; "unclear" when the ratio itself
    does but the interval reaches back within it (this sitting's runs
    cannot tell); "" otherwise.  One sitting's ratio alone moved by
    ±10-30% with the same code on both sides, so a mark on the ratio alone
    flipped from one full run to the next."""
    return _verdict(row, row.ratio_interval("before"))


def _verdict(row: Row, interval: tuple[float, float] | None) -> str:
    """``before_verdict`` with the row's interval already drawn (2,000
    draws: a second draw per row cost a full report ~1 s)."""
    got = row.ratio("before")
    if got is None:
        return ""
    low, high = interval or (got, got)
    if row.higher_is_better:
        line = 1 - BEFORE_TOLERANCE
        past, all_past = got < line, high < line
    else:
        line = 1 + BEFORE_TOLERANCE
        past, all_past = got > line, low > line
    return "worse" if all_past else "unclear" if past else ""


def _against_before(row: Row) -> str:
    """pacsnode over pacsnode ``--before``, its interval, and its verdict
    (✗ worse, ? unclear; see ``before_verdict``)."""
    got = row.ratio("before")
    if got is None:
        return "—"
    interval = row.ratio_interval("before")
    text = f"{got:.2f}" + (f" [{interval[0]:.2f}–{interval[1]:.2f}]" if interval else "")
    return text + {"worse": " ✗", "unclear": " ?", "": ""}[_verdict(row, interval)]


def summary(results: Results) -> list[dict[str, str]]:
    """One dict of display strings per row (the table's cells); the
    ``--before`` columns only when some row has that server."""
    out = []
    before = any("before" in row.samples for row in results.rows.values())
    for row in results.rows.values():
        verdict = row.verdict(results.rows)
        target = row.target.text if row.target else ""
        if row.target is not None and row.target.baseline is not None:
            got = row.baseline_ratio(results.rows)
            target += f" (got {got:.2f}×)" if got is not None else ""
        cells = {
            "Measurement": row.title,
            "Unit": row.unit,
            "pacsnode": _cell(row, "pacsnode"),
        }
        if before:
            cells["before"] = _cell(row, "before")
            cells["pacsnode/before"] = _against_before(row)
        out.append({
            **cells,
            "Orthanc": _cell(row, "orthanc"),
            "storescp": _cell(row, "storescp"),
            "pacsnode/Orthanc": _ratio(row, "orthanc"),
            "pacsnode/storescp": _ratio(row, "storescp") if "storescp" in row.samples else "",
            "Target": target,
            "Met": {True: "✓", False: "✗", None: ""}[verdict],
        })
    return out


def print_table(results: Results, info: dict[str, Any]) -> None:
    cells = summary(results)
    header = (f"pacsnode bench — {info['date']} — {info['nproc']} CPU × {info['cpu']}, "
              f"{info['memory_gib']} GiB")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(header)
        print(_markdown_table(cells))
        return
    table = Table(title=header, show_lines=False)
    for name in cells[0] if cells else ():
        table.add_column(name, justify="left" if name in ("Measurement", "Unit", "Target")
                         else "right")
    for c in cells:
        style = {"✓": "green", "✗": "red"}.get(c["Met"], "")
        table.add_row(*c.values(), style=style or None)
    table.caption = LEGEND
    Console(width=200).print(table)


def _markdown_table(cells: list[dict[str, str]]) -> str:
    if not cells:
        return "(no rows)\n"
    names = list(cells[0])
    lines = ["| " + " | ".join(names) + " |",
             "| " + " | ".join("---" if n in ("Measurement", "Unit", "Target") else "---:"
                               for n in names) + " |"]
    for c in cells:
        lines.append("| " + " | ".join(c[n].replace("|", "\\|") for n in names) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ outputs

def _json(results: Results, info: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for row in results.rows.values():
        data = asdict(row)
        data["target"] = asdict(row.target) if row.target else None
        data["median"] = {s: row.median(s) for s in row.samples}
        data["spread"] = {s: row.spread(s) for s in row.samples}
        data["ratio_orthanc"] = row.ratio("orthanc")
        data["ratio_storescp"] = row.ratio("storescp")
        data["ratio_before"] = row.ratio("before")
        interval = row.ratio_interval("before")
        data["ratio_before_interval"] = interval
        data["before_verdict"] = _verdict(row, interval) if "before" in row.samples else None
        data["ratio_baseline"] = row.baseline_ratio(results.rows)
        data["met"] = row.verdict(results.rows)
        rows.append(data)
    return {"machine": info, "plan": plan, "rows": rows, "notes": results.notes,
            "phase_seconds": results.timings}


LEGEND = ("Ratios divide pacsnode's median by the other server's. inst/s and MB/s: "
          "higher is better; ms and MiB: lower is better. ✓/✗: the issue's target met or not. "
          "before (with --before): pacsnode at that revision, run in turn with the current "
          "code; [low–high]: a 90% bootstrap interval of that ratio; ✗: more than 5% worse "
          "over the whole interval; ?: the ratio is more than 5% worse but the interval "
          "reaches within 5%, which this sitting's runs cannot tell apart.")

METHOD = """\
How the figures are made (see `bench/rows.py`): every server runs on
127.0.0.1 with default settings in fresh temp folders; DCMTK tools run with
`TCP_NODELAY=1`. Each cell is the median of the runs (throughput) or of the
repeated requests (latency), ± half the interquartile range (half the range
below four samples) as a percentage of the median. Servers take turns run
by run (request by request for latency), in orders that change each round
(a Williams design: over a full cycle each server takes each place, and
comes right after each other server, equally often): whichever went first
measured up to ~10% slower than the one after it. With `--before REV`,
pacsnode at that revision ("before") takes its turn beside the current
code, in a copy of the same index for the scale rows. One sitting of three
runs moves a `pacsnode/before` ratio by ±10-30% on this VM (the same code
on both sides: 0.61-1.46 for WADO-RS); compare several sittings, or more
runs (`--runs`, `--reps`), before reading a 5% difference into it. Beside
each such ratio, a 90% bootstrap interval (each side's runs drawn again
with replacement, the ratio of the medians taken 2,000 times) says how far
this sitting's own runs move it; ✗ marks a ratio whose whole interval is
more than 5% worse, ? one that is worse but whose interval reaches back
within 5%. Latency repetitions of one query follow one another, so their
interval is narrower than the spread from one sitting to the next.

- **C-STORE**: a fresh server per run; one `storescu` sending every file, or
  4 `storescu` at once each sending a contiguous quarter; wall time from the
  first launch to the last exit. MB/s counts file bytes. Each server's
  folder is made in a block group of its own (`chattr +T` on the bench's
  temp root): on this VM's journal-less ext4, a file created in the groups
  where the previous run's thousands of files were just deleted cost
  0.2-0.8 ms of kernel CPU instead of 0.04 ms (`recently_deleted()` in the
  inode allocator), which slowed whichever server ran next (storescp most:
  ~700 small inst/s then, ~2,000 with its own group). Every server is
  started after a `sync`, so none pays for writing back what the one before
  left dirty (storescp does not fsync: after its CT run ~1 GB is written
  back 30 s later, during whatever then runs).
- **C-STORE into a full archive**: the small set, in three parts, each
  sent by one `storescu` into each server holding the largest query
  scale's instances (pacsnode's loaded in bulk, Orthanc's uploaded), after
  the queries; the target compares pacsnode with the same parts sent into
  fresh, empty pacsnodes between those runs (each part just before its
  run, the last also just after; this VM's speed drifts too much over the
  minutes between phases for the first C-STORE rows to be the baseline).
- **CPU per instance**: the user and system CPU time the server's
  processes (every thread) used during a C-STORE run, over the instances
  sent; and, for the 4-parallel runs, what the `storescu` senders used.
  Kernel work done for a server on other threads (its fsyncs' and the
  writeback's kernel workers, network softirqs) is in neither: on 2 cores
  the three together bound how fast the 4-sender rows can go.
- **Peak RSS**: `VmHWM` after each 4-parallel ingestion run, summed over the
  server's processes (pacsnode's DIMSE workers included; shared pages count
  once per process, so this is an upper bound).
- **1 GiB multi-frame instance**: one instance of 2,048 CT frames (1 GiB of
  Pixel Data, made once into `bench/.cache/`) sent by one `storescu` to a
  fresh server; the peak is `VmHWM` of the server's processes summed as
  above, the growth is that peak less their `VmRSS` summed just before the
  send (what receiving the instance cost), and MB/s counts the file's bytes
  over storescu's wall time.
- **C-FIND**: Study Root, at STUDY and SERIES level, returning a handful of
  keys; one `findscu -S --repeat` association per query and server, each
  C-FIND timed from findscu's own log (microsecond stamps) between sending
  the request and receiving the final response, the first one a warm-up.
  (findscu's process start and association, about 20 ms here, are the same
  for every server and left out; so is the dump of each match, which
  findscu's log filter drops: writing it cost findscu 30-60 µs per match.)
  **QIDO-RS**: the same queries over one
  kept-alive HTTP connection. The index is filled
  by a bulk SQL loader for pacsnode (`bench/loader.py`) and by `POST
  /instances` (4 in parallel) for Orthanc, with identical attribute values
  (10 instances per study); the number of matches is checked against the
  generator. Orthanc gets fewer instances than the row's scale only when
  uploading more would overrun the run's time budget, and the row says so.
- **WADO-RS**: one series of 50 CT instances as `multipart/related`
  (`transfer-syntax=*`), fetched by `curl` into `/dev/null` 25 times per
  server (the servers alternating, after a warm-up), timed by curl
  (`time_total`). (Through httpx both servers stopped near the same rate,
  the client's.) **Metadata**: the same
  series' `/metadata`. **STOW-RS**: one study (2 series × 50 CT instances),
  one request per series; the study is deleted between runs.
- **C-MOVE**: `movescu` of that study to a `storescp` declared on both
  servers; **C-GET**: `getscu` of it into a temp folder. Each takes ~0.15 s,
  so after a warm-up the servers alternate for as many runs as a latency
  row has (9), and every run's instance count is checked.
"""


def _markdown(results: Results, info: dict[str, Any], plan: dict[str, Any]) -> str:
    lines = [
        "# pacsnode benchmarks",
        "",
        "Generated by `make bench` (`python -m bench`); do not edit by hand.",
        "",
        f"- Date: {info['date']}",
        f"- Machine: {info['nproc']} CPU ({info['cpu']}), {info['memory_gib']} GiB RAM, "
        f"Linux {info['kernel']}, Python {info['python']}",
        f"- pacsnode: commit {info.get('pacsnode_commit') or 'unknown'}"
        + (f"; before: commit {plan['before']}" if plan.get("before") else ""),
        f"- Orthanc: {info.get('orthanc', '?')} (DICOMweb plugin {info.get('dicomweb', '?')}), "
        f"DCMTK: {info.get('dcmtk', '?')}",
        f"- Plan: {', '.join(f'{k}={v}' for k, v in plan.items())}",
        "",
        LEGEND,
        "",
        _markdown_table(summary(results)),
    ]
    if results.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in results.notes] + [""]
    lines += ["## Method", "", METHOD]
    return "\n".join(lines)


def write_outputs(results: Results, info: dict[str, Any], plan: dict[str, Any], *,
                  markdown: bool = True) -> tuple[Path, Path | None]:
    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    json_path = out_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(_json(results, info, plan), indent=2))
    md_path = None
    if markdown:
        md_path = BENCH_DIR / "RESULTS.md"
        md_path.write_text(_markdown(results, info, plan))
    return json_path, md_path
