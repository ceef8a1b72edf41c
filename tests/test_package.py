"""What ``import pacsnode`` loads into a process."""

from __future__ import annotations

import subprocess
import sys


def test_import_holds_requests_out_of_pydicom_but_leaves_it_importable():
    # pydicom would import requests (~5 MiB per server process) only for its
    # test-data downloader; pacsnode keeps it out of that one import.
    code = ("import sys, pacsnode, pydicom.data.download as download\n"
            "print('requests' in sys.modules, download.HAVE_REQUESTS)\n"
            "import requests\n"
            "print(requests.get.__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "requests.api"]


def test_requests_imported_first_is_left_alone():
    code = ("import requests, pacsnode, pydicom.data.download as download\n"
            "print(download.HAVE_REQUESTS, download.requests is requests)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
