"""``python -m bench``: run the side-by-side benchmarks and report.

    python -m bench                 # the issue's sizes (make bench, < 20 min on 2 cores)
    python -m bench --quick         # a ~2-minute smoke run with small counts
    python -m bench --only cfind qido --runs 5
    python -m bench --before b385fa7  # the rows that compare servers also at that revision

A full run (no --quick, no --only) rewrites bench/RESULTS.md; every run
writes bench/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from .data import CACHE
from .report import machine_info, print_table, write_outputs
from .rows import GROUPS, Bench, Plan, run_groups
from .servers import ORTHANC, spread_folders, tool_version


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small counts and few runs: a ~2-minute smoke run")
    parser.add_argument("--only", nargs="+", choices=GROUPS, metavar="ROW",
                        help=f"run only these row groups: {', '.join(GROUPS)}")
    parser.add_argument("--runs", type=int, help="runs of each throughput measurement")
    parser.add_argument("--reps", type=int, help="repetitions of each latency measurement")
    parser.add_argument("--ct", type=int, help="CT instances for ingestion")
    parser.add_argument("--small", type=int, help="small instances for ingestion")
    parser.add_argument("--scales", type=int, nargs="+", metavar="N",
                        help="index sizes of the C-FIND/QIDO rows")
    parser.add_argument("--orthanc-cap", type=int,
                        help="most scale instances uploaded to Orthanc (default: all that "
                             "fit the time budget)")
    parser.add_argument("--budget", type=float, metavar="MINUTES",
                        help="time budget of the whole run (default 19, --quick 4)")
    parser.add_argument("--before", metavar="REV",
                        help="also run pacsnode at this git revision (its src/, with this "
                             "venv) beside the current code in every row that compares "
                             "servers: a 'before' column and pacsnode/before ratios, from "
                             "runs interleaved in one sitting")
    parser.add_argument("--no-markdown", action="store_true",
                        help="do not rewrite bench/RESULTS.md")
    return parser.parse_args(argv)


def _plan(args: argparse.Namespace) -> Plan:
    plan = Plan.quick() if args.quick else Plan()
    changes: dict[str, Any] = {name: value for name, value in (
        ("runs", args.runs), ("latency_reps", args.reps), ("ct_count", args.ct),
        ("small_count", args.small), ("orthanc_scale_cap", args.orthanc_cap),
        ("total_budget_s", args.budget * 60 if args.budget else None),
        ("scales", tuple(args.scales) if args.scales else None),
        ("before", args.before)) if value is not None}
    return dataclasses.replace(plan, **changes)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so every `finally` stops its servers.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    plan = _plan(args)
    groups = list(args.only or GROUPS)
    signal.signal(signal.SIGTERM, _on_sigterm)
    versions = {
        "orthanc": tool_version([ORTHANC, "--version"]).replace(ORTHANC, "Orthanc"),
        "dicomweb": _dicomweb_version(),
        "dcmtk": tool_version(["storescu", "--version"]).strip("$ ").replace("dcmtk: ", ""),
    }
    root = Path(tempfile.mkdtemp(prefix="pacsnode-bench-"))
    spread_folders(root)
    bench = Bench(plan, root, before_src=_before_source(plan.before) if plan.before else None)
    began = time.perf_counter()
    try:
        bench.log(f"plan: {dataclasses.asdict(plan)}; groups: {' '.join(groups)}; "
                  f"temp root {root}")
        if "cstore" in groups or set(groups) & {"wado", "metadata", "stow", "cmove", "cget"}:
            start = time.perf_counter()
            bench.log(f"data: {bench.ct.count} CT ({bench.ct.total_bytes / 1e6:.0f} MB), "
                      f"{bench.small.count} small instances in {CACHE} "
                      f"({time.perf_counter() - start:.1f}s)")
        run_groups(bench, groups)
    except KeyboardInterrupt:
        bench.log("interrupted: servers stopped")
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)
    total = time.perf_counter() - began
    bench.results.timings["total"] = round(total, 1)
    info = machine_info(versions)
    full = not args.quick and not args.only and not args.no_markdown
    plan_info = {**dataclasses.asdict(plan), "groups": " ".join(groups),
                 "duration": f"{total / 60:.1f} min"}
    print_table(bench.results, info)
    for note in bench.results.notes:
        print(f"note: {note}")
    json_path, md_path = write_outputs(bench.results, info, plan_info, markdown=full)
    print(f"wrote {json_path}" + (f" and {md_path}" if md_path else "")
          + f" — {total / 60:.1f} min")
    return 0


def _before_source(rev: str) -> Path:
    """The ``src`` folder of pacsnode at git revision ``rev``, extracted once
    into the bench cache (``git archive``: no worktree to clean up)."""
    repo = Path(__file__).resolve().parent.parent
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                           cwd=repo, capture_output=True, text=True)
    if found.returncode != 0:
        raise SystemExit(f"--before {rev}: not a commit of this repository")
    sha = found.stdout.strip()
    dest = CACHE / "before" / sha
    if not (dest / "src" / "pacsnode" / "__init__.py").exists():
        scratch = Path(tempfile.mkdtemp(prefix="before-", dir=CACHE))
        try:
            archive = subprocess.run(["git", "archive", sha, "src"], cwd=repo,
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            scratch.rename(dest)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return dest / "src"


def _dicomweb_version() -> str:
    """The Debian package version of Orthanc's DICOMweb plugin, if known."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "orthanc-dicomweb"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
