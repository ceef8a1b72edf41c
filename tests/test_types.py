"""The type checker over ``src/pacsnode`` is clean.

mypy runs with the configuration in ``pyproject.toml`` (``[tool.mypy]``:
which files, how strict, which modules are excused and why), as a
subprocess of the interpreter running the tests, so ``make test`` checks the
types with the mypy pinned in the ``test`` extra.  A failure shows mypy's
own report: file, line, message and error code.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_reports_no_error_in_src() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-color-output"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = (run.stdout + run.stderr).strip()
    assert run.returncode == 0, f"mypy found errors in src/pacsnode:\n{report}"
    # The summary names how many files were read: a configuration that lost
    # its ``files`` would pass on nothing.
    match = re.search(r"^Success: no issues found in (\d+) source files$", report, re.M)
    assert match, f"mypy passed without its summary line:\n{report}"
    assert int(match.group(1)) >= 100, f"mypy checked too few files:\n{report}"
