"""Render the README's support matrix (the classification in crossgate/adapters/support.py and the
family cases in tests/families.py, with counts per bucket); `--write` updates README.md in place."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- support-matrix:start -->", "<!-- support-matrix:end -->"


def readme_with_matrix(readme: str, matrix: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _m: f"{START}\n{matrix}\n{END}", readme)


def main() -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from families import render_support_matrix

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="update README.md")
    args = parser.parse_args()
    matrix = render_support_matrix()
    if args.write:
        path = ROOT / "README.md"
        path.write_text(readme_with_matrix(path.read_text(), matrix))
    else:
        print(matrix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
