"""YAML for kubectl / GitOps, and writing a whole export at once or not at all.

Output is deterministic: documents sorted by kind then name (by the exporters), keys in the order
the exporters build them, no timestamps, so a regenerated export diffs only where routing changed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

__all__ = ["MARKER", "render_yaml", "write_tree"]

MARKER = ".facade-export"  # marks a directory this command wrote (and may therefore replace)


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]  # (PyYAML ships no types)
    """Block style everywhere; never emits anchors/aliases for repeated values."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_yaml(docs: Sequence[Mapping[str, Any]], header: str = "") -> str:
    """A multi-document stream (``---`` separated) as ``kubectl apply -f`` expects it."""
    body: str = yaml.dump_all(
        [dict(d) for d in docs], Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
        explicit_start=True, width=4096,
    )
    lines = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return lines + body


def write_tree(directory: str, files: Mapping[str, str]) -> None:
    """Write ``files`` (relative path -> text) as the whole content of ``directory``, atomically.

    Everything goes to a temporary sibling first, then replaces ``directory`` with one rename, so
    a failure leaves the old content (or nothing) in place. A directory that exists is replaced
    only when it is empty or was written by this command (it holds ``MARKER``): never a folder of
    someone else's files. Raises ``OSError`` / ``FileExistsError`` with a message naming the path.
    """
    target = os.path.abspath(directory)
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise FileExistsError(f"{directory} exists and is not a directory")
        if os.listdir(target) and not os.path.exists(os.path.join(target, MARKER)):
            raise FileExistsError(f"{directory} is not empty and was not written by facade export; "
                                  "choose another -o directory or empty it")
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", dir=parent)
    try:
        for rel, text in {MARKER: "written by `facade export`; the whole folder is replaced on the next run\n",
                          **files}.items():
            path = os.path.join(staging, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(text)
        if os.path.exists(target):
            # Swap: the old tree steps aside, the new one takes its name, then the old one goes.
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old.", dir=parent)
            os.rmdir(old)
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
