"""The repository stands on its own: no merge leftovers in any tracked text file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(rb"^(<{7}|>{7}) |^={7}$", re.MULTILINE)


def test_no_tracked_file_holds_a_merge_conflict_marker() -> None:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc})")
    leftovers = []
    for name in filter(None, listed.split(b"\0")):
        path = ROOT / name.decode()
        if path.suffix in {".png", ".sqlite3"} or not path.is_file():
            continue
        if MARKER.search(path.read_bytes()):
            leftovers.append(name.decode())
    assert not leftovers, f"merge conflict markers in {leftovers}"
