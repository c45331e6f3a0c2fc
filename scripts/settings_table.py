"""Print README's settings table, generated from ``gateway.settings.Settings``; ``--write`` puts it into README.md.

Run from the repository root: ``.venv/bin/python scripts/settings_table.py [--write]``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.settings import settings_markdown  # noqa: E402

START = "<!-- settings-table:start -->\n"
END = "<!-- settings-table:end -->"


def main() -> None:
    """Print the table, or replace the one between README's settings-table markers with it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args()
    table = settings_markdown()
    if not args.write:
        sys.stdout.write(table)
        return
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + START + table + END + tail)


if __name__ == "__main__":
    main()
