"""``python3 -m facade.cli README.md``: rewrite the README's CLI reference from the parser."""

import sys

from .console import EXIT_INVALID
from .main import build_parser, render_reference, update_readme

if len(sys.argv) != 2:
    print("usage: python3 -m facade.cli README.md", file=sys.stderr)
    sys.exit(EXIT_INVALID)
updated = update_readme(sys.argv[1], render_reference(build_parser()))
with open(sys.argv[1], "w", encoding="utf-8") as fh:
    fh.write(updated)
